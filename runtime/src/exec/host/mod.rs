//! Faasm's host interface (module `env`), wasm32 signatures as in Faasm's `host_interface.h`.
//!
//! Guest pointers are checked against the memory's bounds by wasmtime's `Memory::read`/`write`,
//! so a bad pointer is a trap with a clear message, never a host crash.

use std::time::Instant;

use anyhow::anyhow;
use wasmtime::{Caller, Extern, Linker, Memory, format_err};

use super::{CallContext, CallOutcome, Host, Timeout};
use crate::state::StateStore;

mod flow;
mod ndp;
mod state;
pub use flow::{FlowData, FlowReturn};
pub use state::Views;

/// Why awaiting a call gave no outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwaitError {
    /// The call failed, does not exist, or belongs to someone else (all answered alike).
    Failed(String),
    /// The awaiting call reached its own deadline first.
    Timeout,
}

/// What the platform provides to guests: chained calls and state. (`runtime run` has none.)
/// Every wait a guest can cause is bounded by its call's `deadline`.
pub trait Services: Send + Sync {
    /// Starts a call of `function` of the caller's user with `input`; returns its id. An unknown
    /// function, or a full call queue, gives an id whose await fails.
    fn chain(&self, caller: &CallContext, function: &str, input: Vec<u8>) -> u32;
    /// Starts a call of the function-table entry `index` of the caller's function, in another
    /// instance.
    fn chain_ptr(&self, caller: &CallContext, index: u32, input: Vec<u8>) -> u32;
    /// Waits for call `id` of the caller's user until `deadline`.
    fn await_call(&self, caller: &CallContext, id: u32, deadline: Option<Instant>) -> Result<CallOutcome, AwaitError>;
    /// The users' state.
    fn state(&self) -> &StateStore;
    /// The directories a function of `user` (named `user/function`) sees; made when missing.
    fn files(&self, user: &str, function: &str) -> anyhow::Result<super::FunctionFiles>;
    /// An object of `user`: open for reading in place when this node holds it, else the bytes
    /// `offset..offset + max_len` (clipped) fetched from the node that does.
    fn object(&self, user: &str, key: &str, offset: u64, max_len: u64) -> Result<crate::ndp::ObjectBytes, crate::ndp::ObjectError>;
    /// Stores an object of `user` (here, or on the node that holds it); returns its size.
    fn put_object(&self, user: &str, key: &str, data: &[u8]) -> Result<u64, crate::ndp::ObjectError>;
    /// The storage node to offload `caller`'s storage call over object `key` to, or None to run
    /// it here (`forbid_ndp`, the object is here, no storage nodes, no shared memnode).
    fn offload_node(&self, caller: &CallContext, key: &str) -> Option<String>;
    /// Sends an offloaded call to `node`, bounded by `deadline`.
    fn offload(
        &self,
        caller: &CallContext,
        node: &str,
        request: &crate::ndp::offload::Request,
        deadline: Option<Instant>,
    ) -> Result<crate::ndp::offload::Reply, crate::ndp::offload::OffloadError>;
}

fn ctx(caller: &Caller<'_, Host>, call: &str) -> wasmtime::Result<CallContext> {
    caller.data().ctx.clone().ok_or_else(|| format_err!("{call} needs the function platform (`runtime serve`)"))
}

fn bytes(caller: &mut Caller<'_, Host>, ptr: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
    let mem = memory(caller)?;
    let (ptr, len) = (u32_arg(ptr), u32_arg(len));
    mem.data(&caller)
        .get(ptr..ptr + len)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| format_err!("guest buffer {ptr:#x}+{len} is outside memory"))
}

/// A NUL-terminated UTF-8 string (a state key, a function name), at most 1 KiB.
fn cstr(caller: &mut Caller<'_, Host>, ptr: i32) -> wasmtime::Result<String> {
    let mem = memory(caller)?;
    let data = mem.data(&caller);
    let start = u32_arg(ptr);
    let tail = data.get(start..).ok_or_else(|| format_err!("string at {start:#x} is outside memory"))?;
    let end = tail.iter().take(1024).position(|&b| b == 0).ok_or_else(|| format_err!("string at {start:#x} is not NUL-terminated within 1 KiB"))?;
    String::from_utf8(tail[..end].to_vec()).map_err(|_| format_err!("string at {start:#x} is not UTF-8"))
}

fn write_bytes(caller: &mut Caller<'_, Host>, ptr: usize, bytes: &[u8]) -> wasmtime::Result<()> {
    let mem = memory(caller)?;
    mem.data_mut(caller)
        .get_mut(ptr..ptr + bytes.len())
        .ok_or_else(|| format_err!("guest buffer {ptr:#x}+{} is outside memory", bytes.len()))?
        .copy_from_slice(bytes);
    Ok(())
}

/// Bytes of a wasm page.
pub(crate) const WASM_PAGE: usize = 65536;

/// Grows the guest's memory by `bytes` (whole host pages) and maps a file there with `map`
/// (given the paged memory and the range's offset); returns the range's guest address. `what`
/// names the file in errors. The mapping goes with the call (see `Instance::call`).
fn grow_and_map(
    caller: &mut Caller<'_, Host>,
    bytes: usize,
    what: &str,
    map: impl FnOnce(&crate::pager::MemoryHandle, usize) -> Result<(), crate::pager::PagerError>,
) -> wasmtime::Result<usize> {
    let handle = caller.data().memory.clone().ok_or_else(|| format_err!("mapping {what} needs the function to export its memory"))?;
    let mem = memory(caller)?;
    let at = mem.data_size(&caller);
    mem.grow(&mut *caller, bytes.div_ceil(WASM_PAGE) as u64)
        .map_err(|e| format_err!("the guest's memory cannot grow by {bytes} bytes to map {what}: {e}"))?;
    map(&handle, at).map_err(|e| format_err!("cannot map {what}: {}", crate::pager::error_chain(&e)))?;
    Ok(at)
}

/// `len` bytes of fresh guest memory (16-byte aligned) for what the host hands the guest
/// (chained calls' outputs), in memory grown for the call: never the guest's own
/// heap, whose `malloc` a command module exports only wrapped in its constructors and
/// destructors. A grown memory is not reused after the call, so nothing outlives it.
fn guest_alloc(caller: &mut Caller<'_, Host>, len: usize) -> wasmtime::Result<usize> {
    let len = len.max(1).next_multiple_of(16);
    let (next, end) = caller.data().host_heap;
    if next + len <= end && end > 0 {
        caller.data_mut().host_heap.0 = next + len;
        return Ok(next);
    }
    let mem = memory(caller)?;
    let at = mem.data_size(&caller);
    // Room for this and the next few: one grow per call in the common case.
    let pages = len.max(1 << 20).div_ceil(WASM_PAGE);
    mem.grow(&mut *caller, pages as u64).map_err(|e| format_err!("the guest's memory cannot grow by {len} bytes for the host: {e}"))?;
    caller.data_mut().host_heap = (at + len, at + pages * WASM_PAGE);
    Ok(at)
}

fn id_arg(v: i32) -> u32 {
    v.cast_unsigned()
}

fn id_ret(id: u32) -> i32 {
    id.cast_signed()
}

fn memory(caller: &mut Caller<'_, Host>) -> wasmtime::Result<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(format_err!("the function exports no `memory`")),
    }
}

fn u32_arg(v: i32) -> usize {
    // wasm32 pointers and lengths are unsigned 32-bit values carried in an i32.
    v.cast_unsigned() as usize
}

/// Links the `env.__faasm_*` functions implemented so far.
pub fn add_to_linker(linker: &mut Linker<Host>) -> anyhow::Result<()> {
    // int __faasm_read_input(unsigned char *buffer, unsigned int len): with len 0 returns the
    // input's size; otherwise copies up to len bytes and returns how many were copied.
    linker
        .func_wrap("env", "__faasm_read_input", |mut caller: Caller<'_, Host>, buf: i32, len: i32| -> wasmtime::Result<i32> {
            let size = caller.data().input.len();
            let len = u32_arg(len);
            if len == 0 {
                return i32::try_from(size).map_err(|_| format_err!("input larger than 2 GiB"));
            }
            let n = len.min(size);
            let mem = memory(&mut caller)?;
            let (data, host) = mem.data_and_store_mut(&mut caller);
            let dst = data
                .get_mut(u32_arg(buf)..u32_arg(buf) + n)
                .ok_or_else(|| format_err!("__faasm_read_input: buffer {buf:#x}+{n} is outside memory"))?;
            dst.copy_from_slice(&host.input[..n]);
            i32::try_from(n).map_err(|_| format_err!("input larger than 2 GiB"))
        })
        .map_err(|e| anyhow!("{e}"))?;
    // void __faasm_write_output(const unsigned char *output, unsigned int len): replaces the
    // call's output.
    linker
        .func_wrap("env", "__faasm_write_output", |mut caller: Caller<'_, Host>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let mem = memory(&mut caller)?;
            let (data, host) = mem.data_and_store_mut(&mut caller);
            let src = data
                .get(u32_arg(ptr)..u32_arg(ptr) + u32_arg(len))
                .ok_or_else(|| format_err!("__faasm_write_output: {ptr:#x}+{len} is outside memory"))?;
            host.output.clear();
            host.output.extend_from_slice(src);
            Ok(())
        })
        .map_err(|e| anyhow!("{e}"))?;
    add_chaining(linker)?;
    add_runtime(linker)?;
    state::add_to_linker(linker)?;
    ndp::add_to_linker(linker)?;
    flow::add_to_linker(linker)?;
    Ok(())
}

fn add_chaining(linker: &mut Linker<Host>) -> anyhow::Result<()> {
    let err = |e: wasmtime::Error| anyhow!("{e}");
    linker
        .func_wrap("env", "__faasm_chain_name", |mut caller: Caller<'_, Host>, name: i32, input: i32, len: i32| -> wasmtime::Result<i32> {
            let c = ctx(&caller, "__faasm_chain_name")?;
            let name = cstr(&mut caller, name)?;
            let input = bytes(&mut caller, input, len)?;
            // A chained call belongs to the caller's user.
            Ok(id_ret(c.services.chain(&c, &name, input)))
        })
        .map_err(err)?;
    linker
        .func_wrap("env", "__faasm_chain_ptr", |mut caller: Caller<'_, Host>, index: i32, input: i32, len: i32| -> wasmtime::Result<i32> {
            let c = ctx(&caller, "__faasm_chain_ptr")?;
            let input = bytes(&mut caller, input, len)?;
            Ok(id_ret(c.services.chain_ptr(&c, id_arg(index), input)))
        })
        .map_err(err)?;
    linker
        .func_wrap("env", "__faasm_await_call", |caller: Caller<'_, Host>, id: i32| -> wasmtime::Result<i32> {
            let c = ctx(&caller, "__faasm_await_call")?;
            Ok(match c.services.await_call(&c, id_arg(id), caller.data().deadline) {
                Ok(outcome) => outcome.rc,
                Err(AwaitError::Timeout) => return Err(wasmtime::Error::new(Timeout)),
                Err(AwaitError::Failed(why)) => {
                    tracing::debug!("chained call {id} of {} failed: {why}", c.user);
                    1
                }
            })
        })
        .map_err(err)?;
    // int __faasm_await_call_output(unsigned int id, char **output, int *outputLen): the host
    // places the output in fresh guest memory and writes its address and length.
    linker
        .func_wrap(
            "env",
            "__faasm_await_call_output",
            |mut caller: Caller<'_, Host>, id: i32, out_ptr: i32, out_len: i32| -> wasmtime::Result<i32> {
                let c = ctx(&caller, "__faasm_await_call_output")?;
                let (rc, output) = match c.services.await_call(&c, id_arg(id), caller.data().deadline) {
                    Ok(outcome) => (outcome.rc, outcome.output),
                    Err(AwaitError::Timeout) => return Err(wasmtime::Error::new(Timeout)),
                    Err(AwaitError::Failed(why)) => (1, format!("FAILED: {why}").into_bytes()),
                };
                let at = guest_alloc(&mut caller, output.len().max(1))?;
                write_bytes(&mut caller, at, &output)?;
                let addr = u32::try_from(at).map_err(|_| format_err!("memory beyond 4 GiB"))?;
                let len = u32::try_from(output.len()).map_err(|_| format_err!("output beyond 4 GiB"))?;
                write_bytes(&mut caller, u32_arg(out_ptr), &addr.to_le_bytes())?;
                write_bytes(&mut caller, u32_arg(out_len), &len.to_le_bytes())?;
                Ok(rc)
            },
        )
        .map_err(err)?;
    Ok(())
}


/// Flags Faasm's `getConfFlag` reads: the two its SDK documents; any other is off.
fn conf_flag(key: &str) -> bool {
    key == "ALWAYS_ON"
}

fn add_runtime(linker: &mut Linker<Host>) -> anyhow::Result<()> {
    let err = |e: wasmtime::Error| anyhow!("{e}");
    linker
        .func_wrap("env", "__faasm_conf_flag", |mut caller: Caller<'_, Host>, key: i32| -> wasmtime::Result<i32> {
            let key = cstr(&mut caller, key)?;
            Ok(i32::from(conf_flag(&key)))
        })
        .map_err(err)?;
    // void __faasm_backtrace(int depth): the call's wasm frames, innermost first, to the log.
    linker
        .func_wrap("env", "__faasm_backtrace", |caller: Caller<'_, Host>, depth: i32| {
            let trace = wasmtime::WasmBacktrace::force_capture(&caller);
            let frames: Vec<String> = trace
                .frames()
                .iter()
                .take(u32_arg(depth).max(1))
                .map(|f| f.func_name().map_or_else(|| format!("func[{}]", f.func_index()), str::to_string))
                .collect();
            let who = caller.data().ctx.as_ref().map_or_else(String::new, |c| format!("{}/{}", c.user, c.function.name));
            tracing::info!("backtrace of {who}: {}", frames.join(" <- "));
        })
        .map_err(err)?;
    Ok(())
}
