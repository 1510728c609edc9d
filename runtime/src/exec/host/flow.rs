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
//! ```

use std::sync::Arc;

use anyhow::anyhow;
use wasmtime::{Caller, Linker, format_err};

use super::{Host, cstr, memory, u32_arg};

/// One block's data for one call: its inputs and what it posts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowData {
    /// Each input's elements (a NORMAL input has one).
    pub inputs: Vec<(String, Vec<Arc<[u8]>>)>,
    /// The block's outputs, and whether each is a list (FOREACH).
    pub outputs: Vec<(String, bool)>,
    /// What the call posted, per output, in the order of `outputs` (empty: never posted; a list
    /// output holds its elements, another output at most one value). Shared: a value reaches
    /// every destination without another copy.
    pub posted: Vec<Vec<Arc<[u8]>>>,
    /// Bytes a call may post in all (the platform's input limit).
    pub limit: usize,
    /// When the guest ran (entered, returned), set by the call.
    pub ran: Option<(std::time::Instant, std::time::Instant)>,
    /// Given the data with the posts the moment the guest returns 0, before its instance is reset
    /// (the next block need not wait for that); the call's outcome then carries no data.
    pub on_return: Option<FlowReturn>,
}

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
    fn input(&self, name: &str) -> Option<&[Arc<[u8]>]> {
        self.inputs.iter().find(|(n, _)| n == name).map(|(_, v)| &v[..])
    }

    fn posted_bytes(&self) -> usize {
        self.posted.iter().flatten().map(|v| v.len()).sum()
    }
}

fn flow<'a>(caller: &'a mut Caller<'_, Host>, call: &str) -> wasmtime::Result<&'a mut FlowData> {
    caller.data_mut().flow.as_mut().ok_or_else(|| format_err!("{call}: this call is not a workflow block (invoke it through /w/)"))
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
        .func_wrap("env", "__ebb_flow_fetch", |mut caller: Caller<'_, Host>, name: i32, index: i32, buf: i32, len: i32| -> wasmtime::Result<i32> {
            let name = cstr(&mut caller, name)?;
            let f = flow(&mut caller, "__ebb_flow_fetch")?;
            let Some(value) = f.input(&name).and_then(|v| usize::try_from(index).ok().and_then(|i| v.get(i))).cloned() else {
                return Ok(-1);
            };
            let size = i32::try_from(value.len()).map_err(|_| format_err!("__ebb_flow_fetch: a value over 2 GiB"))?;
            let len = u32_arg(len);
            if len == 0 {
                return Ok(size);
            }
            let n = len.min(value.len());
            let mem = memory(&mut caller)?;
            let dst = mem
                .data_mut(&mut caller)
                .get_mut(u32_arg(buf)..u32_arg(buf) + n)
                .ok_or_else(|| format_err!("__ebb_flow_fetch: buffer {buf:#x}+{n} is outside memory"))?;
            dst.copy_from_slice(&value[..n]);
            Ok(i32::try_from(n).unwrap_or(i32::MAX))
        })
        .map_err(err)?;
    linker
        .func_wrap("env", "__ebb_flow_post", |mut caller: Caller<'_, Host>, name: i32, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let name = cstr(&mut caller, name)?;
            let mem = memory(&mut caller)?;
            let (data, host) = mem.data_and_store_mut(&mut caller);
            let f = host.flow.as_mut().ok_or_else(|| format_err!("__ebb_flow_post: this call is not a workflow block (invoke it through /w/)"))?;
            let Some(i) = f.outputs.iter().position(|(n, _)| *n == name) else { return Ok(-1) };
            let src = data
                .get(u32_arg(ptr)..u32_arg(ptr) + u32_arg(len))
                .ok_or_else(|| format_err!("__ebb_flow_post: {ptr:#x}+{len} is outside memory"))?;
            if f.posted_bytes() + src.len() > f.limit {
                return Err(format_err!("__ebb_flow_post: the block's outputs exceed {} bytes, the most a call may post", f.limit));
            }
            let list = f.outputs[i].1;
            let slot = &mut f.posted[i];
            if !list {
                slot.clear();
            }
            slot.push(Arc::from(src));
            Ok(0)
        })
        .map_err(err)?;
    Ok(())
}
