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
//!   at table index `fn` (with its arguments) on the storage node that holds object `key`, on
//!   this instance's memory lent by pages, and returns what it returns (`ndp::offload`). It runs
//!   here, in the calling instance, when the call said `forbid_ndp`, when the object is here or
//!   nowhere known, when the memory lives on the embedded memnode, or when the node refuses.

use std::time::Instant;

use anyhow::anyhow;
use wasmtime::{Caller, Extern, Linker, format_err};

use super::{WASM_PAGE, bytes, ctx, grow_and_map, guest_alloc, memory, u32_arg, write_bytes};
use crate::exec::lent::call_table_entry;
use crate::exec::{Host, Timeout, global_names};
use crate::ndp::offload::{self, OffloadError};
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

/// The function at table index `index` with `args`, run in the calling instance.
fn run_here(caller: &mut Caller<'_, Host>, index: u32, args: &[i32]) -> wasmtime::Result<i32> {
    let table = caller.get_export("__indirect_function_table").and_then(Extern::into_table);
    call_table_entry(&mut *caller, table, index, args)
}

/// `__faasmndp_storageCallAndAwait*`: the function at table index `index` runs on the storage
/// node holding the object `key`, on this instance's memory lent by pages; here when it may not
/// (see `ndp::offload`) or when that node refuses.
fn storage_call(caller: &mut Caller<'_, Host>, key_ptr: i32, key_len: i32, index: i32, args: &[i32]) -> wasmtime::Result<i32> {
    let index = index.cast_unsigned();
    let Some(c) = caller.data().ctx.clone() else { return run_here(caller, index, args) };
    let key = key(caller, key_ptr, key_len)?;
    let (Some(node), Some(memory)) = (c.services.offload_node(&c, &key), caller.data().memory.clone()) else {
        return run_here(caller, index, args);
    };
    let lent = match memory.lend() {
        Ok(lent) => lent,
        Err(e) => {
            tracing::info!("{} runs its storage call here: its memory cannot be lent ({})", c.function.name, crate::pager::error_chain(&e));
            return run_here(caller, index, args);
        }
    };
    let mut globals = Vec::new();
    for name in global_names(&c.function) {
        if let Some(g) = caller.get_export(&name).and_then(Extern::into_global) {
            globals.push((name, g.get(&mut *caller)));
        }
    }
    let deadline = caller.data().deadline;
    let (_, function) = c.function.name.split_once('/').unwrap_or(("", &c.function.name));
    let request = offload::Request {
        user: c.user.clone(),
        function: function.to_string(),
        digest: c.function.digest().to_string(),
        key,
        index,
        args: args.to_vec(),
        globals: offload::globals_out(&globals).map_err(|e| format_err!("{e}"))?,
        memory: (&lent).into(),
        timeout_ms: deadline.map_or(u64::MAX, |d| u64::try_from(d.saturating_duration_since(Instant::now()).as_millis()).unwrap_or(u64::MAX)),
    };
    match c.services.offload(&c, &node, &request, deadline) {
        Ok(reply) => {
            let applied = take_back(caller, &memory, &reply);
            memory.end_lend(&lent);
            applied.inspect_err(|_| memory.abandon_lend(&lent))
        }
        Err(OffloadError::Refused(why) | OffloadError::NeedsFunction(why)) => {
            memory.end_lend(&lent);
            tracing::info!("{} runs its storage call here: {why}", c.function.name);
            run_here(caller, index, args)
        }
        Err(OffloadError::Failed(why)) => {
            memory.abandon_lend(&lent);
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(wasmtime::Error::new(Timeout));
            }
            Err(format_err!("__faasmndp_storageCallAndAwait: {why}"))
        }
    }
}

/// Applies an offloaded call's reply: the memory grows to the storage side's size, the pages it
/// changed are dropped to fault back, the globals take its values; its return value.
fn take_back(caller: &mut Caller<'_, Host>, handle: &crate::pager::MemoryHandle, reply: &offload::Reply) -> wasmtime::Result<i32> {
    let mem = memory(caller)?;
    let have = mem.data_size(&*caller);
    if reply.size < have || !(reply.size - have).is_multiple_of(WASM_PAGE) {
        return Err(format_err!("the storage node answered a memory of {} bytes for one of {have}", reply.size));
    }
    mem.grow(&mut *caller, ((reply.size - have) / WASM_PAGE) as u64).map_err(|e| format_err!("cannot grow the memory as the offloaded call did: {e}"))?;
    let changed = offload::pages_of(&reply.changed, reply.size / ebb_memnode::PAGE_SIZE)
        .ok_or_else(|| format_err!("the storage node answered changed pages beyond the memory"))?;
    handle.take_back(&changed).map_err(|e| format_err!("cannot take back the offloaded call's pages: {}", crate::pager::error_chain(&e)))?;
    for (name, value) in offload::globals_in(&reply.globals).map_err(|e| format_err!("{e}"))? {
        let g = caller.get_export(&name).and_then(Extern::into_global).ok_or_else(|| format_err!("the storage node answered an unknown global {name}"))?;
        g.set(&mut *caller, value)?;
    }
    caller.data_mut().output.extend_from_slice(&reply.output);
    Ok(reply.rc)
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
        .func_wrap("env", "__faasmndp_storageCallAndAwait", |mut caller: Caller<'_, Host>, key: i32, len: i32, f: i32| {
            storage_call(&mut caller, key, len, f, &[])
        })
        .map_err(err)?;
    linker
        .func_wrap("env", "__faasmndp_storageCallAndAwait1", |mut caller: Caller<'_, Host>, key: i32, len: i32, f: i32, a: i32| {
            storage_call(&mut caller, key, len, f, &[a])
        })
        .map_err(err)?;
    linker
        .func_wrap(
            "env",
            "__faasmndp_storageCallAndAwait2",
            |mut caller: Caller<'_, Host>, key: i32, len: i32, f: i32, a: i32, b: i32| storage_call(&mut caller, key, len, f, &[a, b]),
        )
        .map_err(err)?;
    Ok(())
}
