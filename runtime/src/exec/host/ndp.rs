//! AutoNDP's guest calls (`__faasmndp_*`, the names and wasm32 signatures of its `ndpapi.h`).
//!
//! - `__faasmndp_getMmap(key, keyLen, offset, maxLen, outLen) -> ptr`: the object's bytes from
//!   `offset`, at most `maxLen`, appear in memory grown for the call — the object's file mapped
//!   copy-on-write (read in place: no copy, and the guest's writes never reach the object) when
//!   this node holds it, else fetched from the node that does. NULL when there is no such object.
//! - `__faasmndp_put(key, keyLen, data, dataLen) -> 0 | negative`: stores an object, durably.
//! - `__faasmndp_unmap(ptr, len) -> 0`: the mapping goes with the call (its memory grew, so the
//!   instance is not reused).
//! - `__faasmndp_storageCallAndAwait{,1,2}(key, keyLen, fn[, a[, b]]) -> int`: runs the function
//!   at table index `fn` (with its arguments) and returns what it returns. It runs here, in the
//!   calling instance — what AutoNDP does when the storage node refuses; running it on the
//!   object's storage node with the memory following by pages is issue 12's next step.

use anyhow::anyhow;
use wasmtime::{Caller, Linker, format_err};

use super::{bytes, ctx, grow_and_map, guest_alloc, u32_arg, write_bytes};
use crate::exec::Host;
use crate::ndp::{ObjectBytes, ObjectError};

/// `__faasmndp_put`'s negative returns.
const PUT_REFUSED: i32 = -1;
const PUT_FAILED: i32 = -2;

fn key(caller: &mut Caller<'_, Host>, ptr: i32, len: i32) -> wasmtime::Result<String> {
    let raw = bytes(caller, ptr, len)?;
    String::from_utf8(raw).map_err(|_| format_err!("an object key must be UTF-8"))
}

/// Maps `len` bytes of the object from `offset` into memory grown for the call; the guest address.
fn map_object(caller: &mut Caller<'_, Host>, file: &std::fs::File, offset: u64, len: usize) -> wasmtime::Result<usize> {
    use std::os::fd::AsFd;
    let page = ebb_memnode::PAGE_SIZE as u64;
    let (file_page, lead) = (offset / page * page, usize::try_from(offset % page)?);
    let bytes = (lead + len).next_multiple_of(ebb_memnode::PAGE_SIZE);
    let at = grow_and_map(caller, bytes, "an object", |m, at| m.map_private(at, bytes, file.as_fd(), file_page))?;
    Ok(at + lead)
}

/// Calls the guest's function at table index `index` with `args` (all i32, returning i32).
fn call_table(caller: &mut Caller<'_, Host>, index: i32, args: &[i32]) -> wasmtime::Result<i32> {
    let table = caller
        .get_export("__indirect_function_table")
        .and_then(|e| e.into_table())
        .ok_or_else(|| format_err!("__faasmndp_storageCallAndAwait needs the function table exported (`__indirect_function_table`)"))?;
    let func = table
        .get(&mut *caller, u64::from(index.cast_unsigned()))
        .and_then(|r| r.as_func().flatten().copied())
        .ok_or_else(|| format_err!("no function at table index {index}"))?;
    let bad = |e: wasmtime::Error| format_err!("the function at table index {index} must take {} int(s) and return int: {e}", args.len());
    match *args {
        [] => func.typed::<(), i32>(&*caller).map_err(bad)?.call(&mut *caller, ()),
        [a] => func.typed::<i32, i32>(&*caller).map_err(bad)?.call(&mut *caller, a),
        [a, b] => func.typed::<(i32, i32), i32>(&*caller).map_err(bad)?.call(&mut *caller, (a, b)),
        _ => Err(format_err!("at most two arguments")),
    }
}

pub fn add_to_linker(linker: &mut Linker<Host>) -> anyhow::Result<()> {
    let err = |e: wasmtime::Error| anyhow!("{e}");
    linker
        .func_wrap(
            "env",
            "__faasmndp_getMmap",
            |mut caller: Caller<'_, Host>, key_ptr: i32, key_len: i32, offset: i64, max_len: i64, out_len: i32| -> wasmtime::Result<i32> {
                let c = ctx(&caller, "__faasmndp_getMmap")?;
                let key = key(&mut caller, key_ptr, key_len)?;
                let (offset, max_len) = (
                    u64::try_from(offset).map_err(|_| format_err!("__faasmndp_getMmap: negative offset {offset}"))?,
                    u64::try_from(max_len.max(0)).unwrap_or(0).min(u64::from(u32::MAX)),
                );
                let found = match c.services.object(&c.user, &key, offset, max_len) {
                    Ok(found) => found,
                    Err(e @ (ObjectError::NotFound { .. } | ObjectError::NotHere(_) | ObjectError::BadKey(_))) => {
                        tracing::info!("__faasmndp_getMmap of {}: {e}", c.function.name);
                        write_bytes(&mut caller, u32_arg(out_len), &0u32.to_le_bytes())?;
                        return Ok(0);
                    }
                    Err(e) => return Err(format_err!("__faasmndp_getMmap: {}", crate::pager::error_chain(&e))),
                };
                let (at, len) = match found {
                    ObjectBytes::Local(file, size) => {
                        let offset = offset.min(size);
                        let len = usize::try_from(max_len.min(size - offset))?;
                        (if len == 0 { guest_alloc(&mut caller, 1)? } else { map_object(&mut caller, &file, offset, len)? }, len)
                    }
                    // Another node's object: its bytes, copied into memory grown for the call.
                    ObjectBytes::Fetched(bytes) => {
                        let at = guest_alloc(&mut caller, bytes.len().max(1))?;
                        write_bytes(&mut caller, at, &bytes)?;
                        (at, bytes.len())
                    }
                };
                write_bytes(&mut caller, u32_arg(out_len), &u32::try_from(len)?.to_le_bytes())?;
                Ok(i32::try_from(at)?)
            },
        )
        .map_err(err)?;
    linker
        .func_wrap(
            "env",
            "__faasmndp_put",
            |mut caller: Caller<'_, Host>, key_ptr: i32, key_len: i32, data: i32, len: i32| -> wasmtime::Result<i32> {
                let c = ctx(&caller, "__faasmndp_put")?;
                let key = key(&mut caller, key_ptr, key_len)?;
                let data = bytes(&mut caller, data, len)?;
                match c.services.put_object(&c.user, &key, &data) {
                    Ok(_) => Ok(0),
                    Err(ObjectError::Io(e)) => {
                        tracing::error!("__faasmndp_put of {}: {e}", c.function.name);
                        Ok(PUT_FAILED)
                    }
                    Err(e) => {
                        tracing::info!("__faasmndp_put of {}: {e}", c.function.name);
                        Ok(PUT_REFUSED)
                    }
                }
            },
        )
        .map_err(err)?;
    linker
        .func_wrap("env", "__faasmndp_unmap", |caller: Caller<'_, Host>, _ptr: i32, _len: i32| -> wasmtime::Result<i32> {
            ctx(&caller, "__faasmndp_unmap").map(|_| 0)
        })
        .map_err(err)?;
    linker
        .func_wrap("env", "__faasmndp_storageCallAndAwait", |mut caller: Caller<'_, Host>, _key: i32, _len: i32, f: i32| {
            call_table(&mut caller, f, &[])
        })
        .map_err(err)?;
    linker
        .func_wrap("env", "__faasmndp_storageCallAndAwait1", |mut caller: Caller<'_, Host>, _key: i32, _len: i32, f: i32, a: i32| {
            call_table(&mut caller, f, &[a])
        })
        .map_err(err)?;
    linker
        .func_wrap(
            "env",
            "__faasmndp_storageCallAndAwait2",
            |mut caller: Caller<'_, Host>, _key: i32, _len: i32, f: i32, a: i32, b: i32| call_table(&mut caller, f, &[a, b]),
        )
        .map_err(err)?;
    Ok(())
}
