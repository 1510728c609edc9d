//! Faasm's state calls (`__faasm_*_state*`), over the platform's [`StateStore`].
//!
//! A value a call asks a pointer to (`__faasm_read_state_ptr`, `…_offset_ptr`) is *mapped*: its
//! replica's pages on this node (see `crate::state`) are mapped into memory grown for the call,
//! at the same address for the rest of the call. The guest reads and writes the value's own
//! pages, with no copy in or out, and every call of the user on this node that maps the key
//! shares them (Faasm's local tier). Other nodes and the HTTP API see the writes once pushed —
//! whole (`push_state`), the flagged ranges (`push_state_partial`, after `flag_state_*dirty`) or
//! the bytes a mask selects (`push_state_partial_mask`); `pull_state` overwrites the replica with
//! the global value. The mapping ends with the call (the executor undoes it before the reset, and
//! the grown memory is not reused), so nothing else of a call reaches the next.
//!
//! [`StateStore`]: crate::state::StateStore

use std::collections::HashMap;

use anyhow::anyhow;
use wasmtime::{Caller, Linker, format_err};

use super::{Timeout, bytes, cstr, ctx, grow_and_map, u32_arg, write_bytes};
use crate::exec::Host;
use crate::state::StateError;

/// One key's mapping in the guest's memory.
#[derive(Debug, Clone)]
pub struct View {
    addr: usize,
    len: usize,
    /// Ranges (offset, length) flagged as written since the last partial push.
    dirty: Vec<(usize, usize)>,
}

/// The mappings of the running call, by key.
pub type Views = HashMap<String, View>;

fn state_err(e: StateError) -> wasmtime::Error {
    match e {
        // A lock wait that ran past the deadline ends the call as a timeout.
        StateError::LockTimeout { .. } => wasmtime::Error::new(Timeout),
        e => format_err!("{e}"),
    }
}

fn view(caller: &Caller<'_, Host>, key: &str) -> Option<View> {
    caller.data().views.get(key).cloned()
}

/// The key's mapping, made (the value created zero-filled, or extended, to `total` bytes) if
/// the call has none yet: memory is grown by the replica's pages, which are mapped there.
fn map(caller: &mut Caller<'_, Host>, key: &str, total: usize) -> wasmtime::Result<View> {
    if let Some(v) = view(caller, key) {
        if total > v.len {
            return Err(format_err!("state key {key} is mapped with {} bytes in this call; {total} were asked for", v.len));
        }
        return Ok(v);
    }
    let c = ctx(caller, "mapping state")?;
    let replica = c.services.state().replica(&c.user, key, total).map_err(state_err)?;
    // The file only grows, so mapping the capacity seen now is always within it.
    let (len, bytes) = (replica.len(), replica.capacity());
    let at = grow_and_map(caller, bytes, &format!("state key {key}"), |m, at| m.map_shared(at, bytes, replica.fd()))?;
    let v = View { addr: at, len, dirty: Vec::new() };
    caller.data_mut().views.insert(key.to_string(), v.clone());
    Ok(v)
}

/// Bytes `offset..offset+len` (to the end when `None`) of the key as this call sees it (with
/// writes through pointers on this node); `None` when there is no such key.
fn read_value(caller: &Caller<'_, Host>, key: &str, offset: usize, len: Option<usize>) -> wasmtime::Result<Option<Vec<u8>>> {
    let c = ctx(caller, "reading state")?;
    c.services.state().read_local(&c.user, key, offset, len).map_err(state_err)
}

/// Sorted, merged ranges.
fn merge(mut ranges: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    ranges.sort_unstable();
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for (off, len) in ranges {
        match out.last_mut() {
            Some((o, l)) if off <= *o + *l => *l = (*l).max(off + len - *o),
            _ => out.push((off, len)),
        }
    }
    out
}

/// The runs of non-zero bytes of `mask` (first `len` bytes), as ranges.
fn mask_runs(mask: &[u8], len: usize) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = None;
    for (i, &b) in mask.iter().take(len).chain(std::iter::once(&0)).enumerate() {
        match (b != 0, start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                runs.push((s, i - s));
                start = None;
            }
            _ => {}
        }
    }
    runs
}

pub fn add_to_linker(linker: &mut Linker<Host>) -> anyhow::Result<()> {
    let err = |e: wasmtime::Error| anyhow!("{e}");
    // long __faasm_read_state(const char *key, unsigned char *buf, long len): copies up to len
    // bytes of the value and returns its full size (len 0 only asks the size).
    linker
        .func_wrap("env", "__faasm_read_state", |mut caller: Caller<'_, Host>, key: i32, buf: i32, len: i32| -> wasmtime::Result<i32> {
            let c = ctx(&caller, "__faasm_read_state")?;
            let key = cstr(&mut caller, key)?;
            // Only what fits is read (a size query copies nothing).
            let (value, size) = c.services.state().read_local_prefix(&c.user, &key, u32_arg(len)).unwrap_or_default();
            write_bytes(&mut caller, u32_arg(buf), &value)?;
            i32::try_from(size).map_err(|_| format_err!("state value larger than 2 GiB"))
        })
        .map_err(err)?;
    linker
        .func_wrap("env", "__faasm_write_state", |mut caller: Caller<'_, Host>, key: i32, data: i32, len: i32| -> wasmtime::Result<()> {
            let c = ctx(&caller, "__faasm_write_state")?;
            let key = cstr(&mut caller, key)?;
            let data = bytes(&mut caller, data, len)?;
            // Written through to this node's replica, so a mapping sees it.
            c.services.state().set(&c.user, &key, &data).map_err(state_err)
        })
        .map_err(err)?;
    linker
        .func_wrap(
            "env",
            "__faasm_read_state_offset",
            |mut caller: Caller<'_, Host>, key: i32, _total: i32, offset: i32, buf: i32, len: i32| -> wasmtime::Result<()> {
                let key = cstr(&mut caller, key)?;
                let value = read_value(&caller, &key, u32_arg(offset), Some(u32_arg(len)))?.unwrap_or_default();
                write_bytes(&mut caller, u32_arg(buf), &value)
            },
        )
        .map_err(err)?;
    linker
        .func_wrap(
            "env",
            "__faasm_write_state_offset",
            |mut caller: Caller<'_, Host>, key: i32, total: i32, offset: i32, data: i32, len: i32| -> wasmtime::Result<()> {
                let c = ctx(&caller, "__faasm_write_state_offset")?;
                let key = cstr(&mut caller, key)?;
                let data = bytes(&mut caller, data, len)?;
                c.services.state().write_at(&c.user, &key, u32_arg(total), u32_arg(offset), &data).map_err(state_err)
            },
        )
        .map_err(err)?;
    // unsigned char *__faasm_read_state_ptr(const char *key, long totalLen)
    linker
        .func_wrap("env", "__faasm_read_state_ptr", |mut caller: Caller<'_, Host>, key: i32, total: i32| -> wasmtime::Result<i32> {
            let key = cstr(&mut caller, key)?;
            let v = map(&mut caller, &key, u32_arg(total))?;
            Ok(i32::try_from(v.addr)?)
        })
        .map_err(err)?;
    // unsigned char *__faasm_read_state_offset_ptr(const char *key, long totalLen, long offset, long len)
    linker
        .func_wrap(
            "env",
            "__faasm_read_state_offset_ptr",
            |mut caller: Caller<'_, Host>, key: i32, total: i32, offset: i32, len: i32| -> wasmtime::Result<i32> {
                let key = cstr(&mut caller, key)?;
                let (total, offset, len) = (u32_arg(total), u32_arg(offset), u32_arg(len));
                if offset.checked_add(len).is_none_or(|end| end > total) {
                    return Err(state_err(StateError::Range { key, offset, len, total }));
                }
                let v = map(&mut caller, &key, total)?;
                Ok(i32::try_from(v.addr + offset)?)
            },
        )
        .map_err(err)?;
    // void __faasm_flag_state_dirty(const char *key, long totalLen) and the offset form: ranges
    // of the view that the next partial push sends.
    linker
        .func_wrap("env", "__faasm_flag_state_dirty", |mut caller: Caller<'_, Host>, key: i32, _total: i32| -> wasmtime::Result<()> {
            let key = cstr(&mut caller, key)?;
            if let Some(v) = caller.data_mut().views.get_mut(&key) {
                v.dirty = vec![(0, v.len)];
            }
            Ok(())
        })
        .map_err(err)?;
    linker
        .func_wrap(
            "env",
            "__faasm_flag_state_offset_dirty",
            |mut caller: Caller<'_, Host>, key: i32, _total: i32, offset: i32, len: i32| -> wasmtime::Result<()> {
                let key = cstr(&mut caller, key)?;
                let (offset, len) = (u32_arg(offset), u32_arg(len));
                if let Some(v) = caller.data_mut().views.get_mut(&key) {
                    if offset.checked_add(len).is_none_or(|end| end > v.len) {
                        return Err(state_err(StateError::Range { key, offset, len, total: v.len }));
                    }
                    v.dirty.push((offset, len));
                    if v.dirty.len() > 4096 {
                        v.dirty = merge(std::mem::take(&mut v.dirty));
                    }
                }
                Ok(())
            },
        )
        .map_err(err)?;
    linker
        .func_wrap("env", "__faasm_push_state", |mut caller: Caller<'_, Host>, key: i32| -> wasmtime::Result<()> {
            let c = ctx(&caller, "__faasm_push_state")?;
            let key = cstr(&mut caller, key)?;
            c.services.state().push(&c.user, &key, &[(0, usize::MAX)]).map_err(state_err)
        })
        .map_err(err)?;
    linker
        .func_wrap("env", "__faasm_push_state_partial", |mut caller: Caller<'_, Host>, key: i32| -> wasmtime::Result<()> {
            let c = ctx(&caller, "__faasm_push_state_partial")?;
            let key = cstr(&mut caller, key)?;
            let Some(v) = caller.data_mut().views.get_mut(&key) else { return Ok(()) };
            // The flagged ranges go once: a failed push ends the call (a trap) anyway.
            let dirty = merge(std::mem::take(&mut v.dirty));
            c.services.state().push(&c.user, &key, &dirty).map_err(state_err)
        })
        .map_err(err)?;
    // void __faasm_push_state_partial_mask(const char *key, const char *maskKey): sends the bytes
    // of the view whose byte in the mask key's value is non-zero.
    linker
        .func_wrap("env", "__faasm_push_state_partial_mask", |mut caller: Caller<'_, Host>, key: i32, mask: i32| -> wasmtime::Result<()> {
            let c = ctx(&caller, "__faasm_push_state_partial_mask")?;
            let key = cstr(&mut caller, key)?;
            let mask = cstr(&mut caller, mask)?;
            let mask = read_value(&caller, &mask, 0, None)?.unwrap_or_default();
            c.services.state().push(&c.user, &key, &mask_runs(&mask, mask.len())).map_err(state_err)
        })
        .map_err(err)?;
    // void __faasm_pull_state(const char *key, long stateLen): the global value over this
    // node's replica (writes not pushed are lost).
    linker
        .func_wrap("env", "__faasm_pull_state", |mut caller: Caller<'_, Host>, key: i32, _len: i32| -> wasmtime::Result<()> {
            let c = ctx(&caller, "__faasm_pull_state")?;
            let key = cstr(&mut caller, key)?;
            c.services.state().pull(&c.user, &key).map_err(state_err)
        })
        .map_err(err)?;
    linker
        .func_wrap("env", "__faasm_append_state", |mut caller: Caller<'_, Host>, key: i32, data: i32, len: i32| -> wasmtime::Result<()> {
            let c = ctx(&caller, "__faasm_append_state")?;
            let key = cstr(&mut caller, key)?;
            let data = bytes(&mut caller, data, len)?;
            c.services.state().append(&c.user, &key, &data).map_err(state_err)
        })
        .map_err(err)?;
    // void __faasm_read_appended_state(const char *key, unsigned char *buf, long bufLen, long nElems)
    linker
        .func_wrap(
            "env",
            "__faasm_read_appended_state",
            |mut caller: Caller<'_, Host>, key: i32, buf: i32, len: i32, n: i32| -> wasmtime::Result<()> {
                let c = ctx(&caller, "__faasm_read_appended_state")?;
                let key = cstr(&mut caller, key)?;
                let data = c.services.state().read_appended(&c.user, &key, u32_arg(n)).map_err(state_err)?;
                if data.len() > u32_arg(len) {
                    return Err(format_err!("{n} appended elements of {key} are {} bytes, more than the {len}-byte buffer", data.len()));
                }
                write_bytes(&mut caller, u32_arg(buf), &data)
            },
        )
        .map_err(err)?;
    linker
        .func_wrap("env", "__faasm_clear_appended_state", |mut caller: Caller<'_, Host>, key: i32| -> wasmtime::Result<()> {
            let c = ctx(&caller, "__faasm_clear_appended_state")?;
            let key = cstr(&mut caller, key)?;
            c.services.state().clear_appended(&c.user, &key);
            Ok(())
        })
        .map_err(err)?;
    // unsigned int __faasm_write_state_from_file(const char *key, const char *path): the whole
    // of a file of the function's filesystem becomes the value; returns its size.
    linker
        .func_wrap("env", "__faasm_write_state_from_file", |mut caller: Caller<'_, Host>, key: i32, path: i32| -> wasmtime::Result<i32> {
            let c = ctx(&caller, "__faasm_write_state_from_file")?;
            let key = cstr(&mut caller, key)?;
            let path = cstr(&mut caller, path)?;
            let file = crate::exec::host_path(&caller.data().wasi_spec.files.dirs, &path)
                .ok_or_else(|| format_err!("__faasm_write_state_from_file: no file {path} in the function's filesystem"))?;
            let limit = c.services.state().limits().max_value;
            let size = std::fs::metadata(&file).map_err(|e| format_err!("cannot read {path}: {e}"))?.len();
            if size > limit as u64 {
                return Err(state_err(StateError::TooLarge { key, size: usize::try_from(size).unwrap_or(usize::MAX), limit }));
            }
            let data = std::fs::read(&file).map_err(|e| format_err!("cannot read {path}: {e}"))?;
            c.services.state().set(&c.user, &key, &data).map_err(state_err)?;
            Ok(i32::try_from(data.len())?)
        })
        .map_err(err)?;
    for (name, exclusive, lock) in [
        ("__faasm_lock_state_read", false, true),
        ("__faasm_lock_state_write", true, true),
        ("__faasm_unlock_state_read", false, false),
        ("__faasm_unlock_state_write", true, false),
    ] {
        linker
            .func_wrap("env", name, move |mut caller: Caller<'_, Host>, key: i32| -> wasmtime::Result<()> {
                let c = ctx(&caller, name)?;
                let key = cstr(&mut caller, key)?;
                // Locks belong to the call: the platform releases what it still holds when it ends.
                let holder = c.holder;
                if lock {
                    c.services.state().lock(&c.user, &key, exclusive, holder, caller.data().deadline).map_err(state_err)?;
                } else {
                    c.services.state().unlock(&c.user, &key, exclusive, holder);
                }
                Ok(())
            })
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_ranges_merge_and_masks_select_runs() {
        assert_eq!(merge(vec![(8, 4), (0, 4), (2, 4), (12, 1), (20, 2)]), vec![(0, 6), (8, 5), (20, 2)]);
        assert_eq!(merge(vec![(0, 10), (2, 3)]), vec![(0, 10)]);
        assert_eq!(mask_runs(&[0, 1, 1, 0, 0xff, 0, 0, 1], 8), vec![(1, 2), (4, 1), (7, 1)]);
        assert_eq!(mask_runs(&[1, 1, 1, 1], 2), vec![(0, 2)], "clipped to the view");
        assert_eq!(mask_runs(&[1], 4), vec![(0, 1)], "a short mask selects no more");
    }
}
