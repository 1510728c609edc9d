//! The workflow data ABI (`functions/include/ebb/flow.h`): a block reads its named inputs and
//! posts its named outputs, as DataFlower's `store.fetch([...])` / `store.post(name, value)` do.
//!
//! ```c
//! int __ebb_flow_count(const char *name);                 // elements of an input: 1 (NORMAL), n (LIST); -1 none
//! int __ebb_flow_fetch(const char *name, int index, unsigned char *buf, int len);
//!                                                         // copies element `index`; len 0: its size; -1 none
//! int __ebb_flow_post(const char *name, const unsigned char *data, int len);
//!                                                         // NORMAL/MERGE: the value (a later post replaces it);
//!                                                         // FOREACH: appends an element; -1 not an output
//! int __ebb_flow_buffer(unsigned char *buf, int len);     // makes [buf, buf+len) (whole, untouched pages)
//!                                                         // an output buffer; 0, or -1 (then posts copy)
//! ```
//!
//! Large values go by pages (`flow::value`): a post of an output buffer seals its pages where they
//! are, and a fetch into a page-aligned, untouched `buf` maps them copy-on-write.

use std::sync::Arc;

use std::fs::File;
use std::os::fd::AsFd;
use std::time::Instant;

use anyhow::anyhow;
use ebb_memnode::PAGE_SIZE;
use wasmtime::{Caller, Linker, format_err};

use super::{Host, cstr, memory, u32_arg, write_bytes};
use crate::flow::value::{PAGES_FROM, Value, buffer_file};

/// One block's data for one call: its inputs and what it posts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowData {
    /// Each input's elements (a NORMAL input has one).
    pub inputs: Vec<(String, Vec<Value>)>,
    /// The block's outputs, and whether each is a list (FOREACH).
    pub outputs: Vec<(String, bool)>,
    /// What the call posted, per output, in the order of `outputs` (empty: never posted; a list
    /// output holds its elements, another output at most one value). Shared: a value reaches
    /// every destination without another copy.
    pub posted: Vec<Vec<Value>>,
    /// Bytes a call may post in all (the platform's input limit).
    pub limit: usize,
    /// When the guest ran (entered, returned), set by the call.
    pub ran: Option<(Instant, Instant)>,
    /// Microseconds the call spent in the data calls (fetch, post, buffer).
    pub data_us: u64,
    /// Bytes of inputs that reached the guest's memory as mapped pages, not copies.
    pub mapped_in: u64,
    /// Bytes of posts handed over as the guest's own pages, not copied.
    pub handed_out: u64,
    /// Given the data with the posts the moment the guest returns 0, before its instance is reset
    /// (the next block need not wait for that); the call's outcome then carries no data.
    pub on_return: Option<FlowReturn>,
    /// The call's output buffers (`__ebb_flow_buffer`).
    buffers: Vec<Buffer>,
}

/// An output buffer: `len` bytes at guest address `at`, with its file until it is posted.
#[derive(Debug, Clone)]
struct Buffer {
    at: usize,
    len: usize,
    file: Option<Arc<File>>,
}

impl PartialEq for Buffer {
    fn eq(&self, other: &Buffer) -> bool {
        (self.at, self.len, self.file.is_some()) == (other.at, other.len, other.file.is_some())
    }
}

impl Eq for Buffer {}

/// See [`FlowData::on_return`].
#[derive(Clone)]
pub struct FlowReturn(pub Arc<dyn Fn(FlowData) + Send + Sync>);

impl std::fmt::Debug for FlowReturn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowReturn")
    }
}

impl PartialEq for FlowReturn {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for FlowReturn {}

impl FlowData {
    /// A block's data for one call, nothing posted yet.
    pub fn new(inputs: Vec<(String, Vec<Value>)>, outputs: Vec<(String, bool)>, limit: usize) -> FlowData {
        FlowData { inputs, outputs, limit, ..FlowData::default() }
    }

    fn input(&self, name: &str) -> Option<&[Value]> {
        self.inputs.iter().find(|(n, _)| n == name).map(|(_, v)| &v[..])
    }

    fn posted_bytes(&self) -> usize {
        self.posted.iter().flatten().map(|v| v.len()).sum()
    }
}

fn flow<'a>(caller: &'a mut Caller<'_, Host>, call: &str) -> wasmtime::Result<&'a mut FlowData> {
    caller.data_mut().flow.as_mut().ok_or_else(|| format_err!("{call}: this call is not a workflow block (invoke it through /w/)"))
}

/// Runs a data call, adding its time to the block's `data_us`.
fn timed<T>(caller: &mut Caller<'_, Host>, call: impl FnOnce(&mut Caller<'_, Host>) -> wasmtime::Result<T>) -> wasmtime::Result<T> {
    let begun = Instant::now();
    let r = call(caller);
    if let Some(f) = caller.data_mut().flow.as_mut() {
        f.data_us += u64::try_from(begun.elapsed().as_micros()).unwrap_or(u64::MAX);
    }
    r
}

/// Copies up to `len` bytes of element `index` of input `name` to `buf` — by mapping its whole
/// pages when the value is held as pages and `buf` is page-aligned, untouched memory.
fn fetch(caller: &mut Caller<'_, Host>, name: i32, index: i32, buf: i32, len: i32) -> wasmtime::Result<i32> {
    let name = cstr(caller, name)?;
    let f = flow(caller, "__ebb_flow_fetch")?;
    let Some(value) = f.input(&name).and_then(|v| usize::try_from(index).ok().and_then(|i| v.get(i))).cloned() else {
        return Ok(-1);
    };
    let size = i32::try_from(value.len()).map_err(|_| format_err!("__ebb_flow_fetch: a value over 2 GiB"))?;
    let len = u32_arg(len);
    if len == 0 {
        return Ok(size);
    }
    let (at, n) = (u32_arg(buf), len.min(value.len()));
    let mem = memory(caller)?;
    if at.checked_add(n).is_none_or(|end| end > mem.data_size(&*caller)) {
        return Err(format_err!("__ebb_flow_fetch: buffer {buf:#x}+{n} is outside memory"));
    }
    let whole = n / PAGE_SIZE * PAGE_SIZE;
    let mut mapped = 0;
    if let (Some(fd), Some(handle)) = (value.pages(), caller.data().memory.as_ref())
        && at.is_multiple_of(PAGE_SIZE)
        && whole >= PAGES_FROM
    {
        match handle.map_private(at, whole, fd, 0) {
            Ok(()) => mapped = whole,
            Err(e) => tracing::debug!("input {name} is copied, not mapped: {}", crate::pager::error_chain(&e)),
        }
    }
    write_bytes(caller, at + mapped, &value[mapped..n])?;
    flow(caller, "__ebb_flow_fetch")?.mapped_in += mapped as u64;
    Ok(i32::try_from(n).unwrap_or(i32::MAX))
}

/// Posts `len` bytes at `ptr` to output `name`: the pages themselves when they are the start of an
/// output buffer not yet posted, else a copy.
fn post(caller: &mut Caller<'_, Host>, name: i32, ptr: i32, len: i32) -> wasmtime::Result<i32> {
    let name = cstr(caller, name)?;
    let mem = memory(caller)?;
    let (at, n) = (u32_arg(ptr), u32_arg(len));
    if at.checked_add(n).is_none_or(|end| end > mem.data_size(&*caller)) {
        return Err(format_err!("__ebb_flow_post: {ptr:#x}+{len} is outside memory"));
    }
    let handle = caller.data().memory.clone();
    let f = flow(caller, "__ebb_flow_post")?;
    let Some(i) = f.outputs.iter().position(|(o, _)| *o == name) else { return Ok(-1) };
    if f.posted_bytes() + n > f.limit {
        return Err(format_err!("__ebb_flow_post: the block's outputs exceed {} bytes, the most a call may post", f.limit));
    }
    let buffer = f.buffers.iter_mut().find(|b| b.at == at && n > 0 && n <= b.len && b.file.is_some());
    let mut value = None;
    if let (Some(b), Some(handle)) = (buffer, handle) {
        let file = b.file.take().expect("an unposted buffer");
        // The guest's own mapping goes private first: sealing needs no writable mapping left.
        let sealed = handle
            .make_private(at, b.len, file.as_fd())
            .map_err(|e| crate::pager::error_chain(&e))
            .and_then(|()| {
                let owned = Arc::try_unwrap(file).or_else(|f| f.try_clone());
                owned.and_then(|f| Value::seal(f, n)).map_err(|e| e.to_string())
            });
        match sealed {
            Ok(v) => value = Some(v),
            Err(e) => tracing::warn!("output {name} is copied, not handed over as pages: {e}"),
        }
    }
    let (value, handed) = match value {
        Some(v) => (v, true),
        None => (Value::copy(&mem.data(&*caller)[at..at + n]), false),
    };
    let f = flow(caller, "__ebb_flow_post")?;
    if handed {
        f.handed_out += n as u64;
    }
    let slot = &mut f.posted[i];
    if !f.outputs[i].1 {
        slot.clear();
    }
    slot.push(value);
    Ok(0)
}

/// Makes `[buf, buf + len)` an output buffer: a fresh file's pages mapped there, shared, so that
/// posting from it hands the pages over. -1 (the guest then writes ordinary memory) unless the
/// range is whole pages of untouched memory.
fn buffer(caller: &mut Caller<'_, Host>, buf: i32, len: i32) -> wasmtime::Result<i32> {
    let (at, n) = (u32_arg(buf), u32_arg(len));
    flow(caller, "__ebb_flow_buffer")?;
    let Some(handle) = caller.data().memory.clone() else { return Ok(-1) };
    if n == 0 || !at.is_multiple_of(PAGE_SIZE) || !n.is_multiple_of(PAGE_SIZE) {
        return Ok(-1);
    }
    let mapped = buffer_file(n).map_err(|e| e.to_string()).and_then(|file| {
        handle.map_shared(at, n, file.as_fd()).map_err(|e| crate::pager::error_chain(&e))?;
        Ok(file)
    });
    match mapped {
        Ok(file) => {
            flow(caller, "__ebb_flow_buffer")?.buffers.push(Buffer { at, len: n, file: Some(Arc::new(file)) });
            Ok(0)
        }
        Err(e) => {
            tracing::debug!("no output buffer at {at:#x}+{n}: {e}");
            Ok(-1)
        }
    }
}

pub fn add_to_linker(linker: &mut Linker<Host>) -> anyhow::Result<()> {
    let err = |e: wasmtime::Error| anyhow!("{e}");
    linker
        .func_wrap("env", "__ebb_flow_count", |mut caller: Caller<'_, Host>, name: i32| -> wasmtime::Result<i32> {
            let name = cstr(&mut caller, name)?;
            let f = flow(&mut caller, "__ebb_flow_count")?;
            Ok(f.input(&name).map_or(-1, |v| i32::try_from(v.len()).unwrap_or(i32::MAX)))
        })
        .map_err(err)?;
    linker
        .func_wrap("env", "__ebb_flow_fetch", |mut caller: Caller<'_, Host>, name: i32, index: i32, buf: i32, len: i32| {
            timed(&mut caller, |c| fetch(c, name, index, buf, len))
        })
        .map_err(err)?;
    linker
        .func_wrap("env", "__ebb_flow_post", |mut caller: Caller<'_, Host>, name: i32, ptr: i32, len: i32| timed(&mut caller, |c| post(c, name, ptr, len)))
        .map_err(err)?;
    linker
        .func_wrap("env", "__ebb_flow_buffer", |mut caller: Caller<'_, Host>, buf: i32, len: i32| timed(&mut caller, |c| buffer(c, buf, len)))
        .map_err(err)?;
    Ok(())
}
