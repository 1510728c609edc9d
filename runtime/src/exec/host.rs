//! Faasm's host interface (module `env`), wasm32 signatures as in Faasm's `host_interface.h`.
//!
//! Guest pointers are checked against the memory's bounds by wasmtime's `Memory::read`/`write`,
//! so a bad pointer is a trap with a clear message, never a host crash.

use anyhow::anyhow;
use wasmtime::{Caller, Extern, Linker, Memory, format_err};

use super::Host;

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
    Ok(())
}
