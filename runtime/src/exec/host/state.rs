//! Faasm's state calls (`__faasm_*_state*`), over the platform's [`StateStore`].
//!
//! A value a call asks a pointer to (`__faasm_read_state_ptr`, `…_offset_ptr`) becomes a *view*:
//! the value's bytes placed in the guest's memory (in a block of its own heap when it exports
//! `malloc`, else in memory grown for it), the same pointer for the rest of the call. Within the
//! call the view is the value: reads and writes of the key go through it. Other calls see its
//! writes once pushed — whole (`push_state`), the flagged ranges (`push_state_partial`, after
//! `flag_state_*dirty`) or the bytes a mask selects (`push_state_partial_mask`); `pull_state`
//! refreshes it. Views end with the call (its memory is reset), so no call sees another's.
//!
//! The view is a copy of the value made when it is first mapped. (Mapping the value's own pages
//! into linear memory is the next step: see docs/platform.md.)

use std::collections::HashMap;

use anyhow::anyhow;
use wasmtime::{Caller, Linker, format_err};

use super::{Timeout, bytes, cstr, ctx, guest_alloc, u32_arg, write_bytes};
use crate::exec::Host;
use crate::state::StateError;

/// One key's view in the guest's memory.
#[derive(Debug, Clone)]
pub struct View {
    addr: usize,
    len: usize,
    /// Ranges (offset, length) flagged as written since the last partial push.
    dirty: Vec<(usize, usize)>,
}

/// The views of the running call, by key.
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

/// The key's view, made (the value created zero-filled, or extended, to `total` bytes) if the
/// call has none yet.
fn map(caller: &mut Caller<'_, Host>, key: &str, total: usize) -> wasmtime::Result<View> {
    if let Some(v) = view(caller, key) {
        if total > v.len {
            return Err(format_err!("state key {key} is mapped with {} bytes in this call; {total} were asked for", v.len));
        }
        return Ok(v);
    }
    let c = ctx(caller, "mapping state")?;
    let store = c.services.state();
    let mut value = store.get(&c.user, key).unwrap_or_default();
    if value.len() < total {
        store.write_at(&c.user, key, total, 0, &[]).map_err(state_err)?;
        value.resize(total, 0);
    }
    let addr = guest_alloc(caller, value.len().max(1))?;
    write_bytes(caller, addr, &value)?;
    let v = View { addr, len: value.len(), dirty: Vec::new() };
    caller.data_mut().views.insert(key.to_string(), v.clone());
    Ok(v)
}

/// Writes `data` at `offset` of the key's view, if the call has one (clipped to the view).
fn update_view(caller: &mut Caller<'_, Host>, key: &str, offset: usize, data: &[u8]) -> wasmtime::Result<()> {
    let Some(v) = view(caller, key) else { return Ok(()) };
    if offset >= v.len {
        return Ok(());
    }
    let n = data.len().min(v.len - offset);
    write_bytes(caller, v.addr + offset, &data[..n])
}

/// Bytes `offset..offset+len` of the key: from its view when the call has one, else the store.
fn read_value(caller: &mut Caller<'_, Host>, key: &str, offset: usize, len: Option<usize>) -> wasmtime::Result<Option<Vec<u8>>> {
    if let Some(v) = view(caller, key) {
        let len = len.unwrap_or(v.len.saturating_sub(offset));
        if offset.checked_add(len).is_none_or(|end| end > v.len) {
            return Err(state_err(StateError::Range { key: key.to_string(), offset, len, total: v.len }));
        }
        return bytes_at(caller, v.addr + offset, len).map(Some);
    }
    let c = ctx(caller, "reading state")?;
    match len {
        None => Ok(c.services.state().get(&c.user, key)),
        Some(len) => c.services.state().read_at(&c.user, key, offset, len).map(Some).map_err(state_err),
    }
}

fn bytes_at(caller: &mut Caller<'_, Host>, addr: usize, len: usize) -> wasmtime::Result<Vec<u8>> {
    let (addr, len) = (i32::try_from(addr)?, i32::try_from(len)?);
    bytes(caller, addr, len)
}

/// Writes the view's ranges to the store (one write per range).
fn push_ranges(caller: &mut Caller<'_, Host>, key: &str, v: &View, ranges: &[(usize, usize)]) -> wasmtime::Result<()> {
    let c = ctx(caller, "pushing state")?;
    for &(offset, len) in ranges {
        let data = bytes_at(caller, v.addr + offset, len)?;
        c.services.state().write_at(&c.user, key, v.len, offset, &data).map_err(state_err)?;
    }
    Ok(())
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
            let key = cstr(&mut caller, key)?;
            let value = read_value(&mut caller, &key, 0, None)?.unwrap_or_default();
            let n = u32_arg(len).min(value.len());
            write_bytes(&mut caller, u32_arg(buf), &value[..n])?;
            i32::try_from(value.len()).map_err(|_| format_err!("state value larger than 2 GiB"))
        })
        .map_err(err)?;
    linker
        .func_wrap("env", "__faasm_write_state", |mut caller: Caller<'_, Host>, key: i32, data: i32, len: i32| -> wasmtime::Result<()> {
            let c = ctx(&caller, "__faasm_write_state")?;
            let key = cstr(&mut caller, key)?;
            let data = bytes(&mut caller, data, len)?;
            c.services.state().set(&c.user, &key, &data).map_err(state_err)?;
            update_view(&mut caller, &key, 0, &data)
        })
        .map_err(err)?;
    linker
        .func_wrap(
            "env",
            "__faasm_read_state_offset",
            |mut caller: Caller<'_, Host>, key: i32, _total: i32, offset: i32, buf: i32, len: i32| -> wasmtime::Result<()> {
                let key = cstr(&mut caller, key)?;
                let value = read_value(&mut caller, &key, u32_arg(offset), Some(u32_arg(len)))?.unwrap_or_default();
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
                c.services.state().write_at(&c.user, &key, u32_arg(total), u32_arg(offset), &data).map_err(state_err)?;
                update_view(&mut caller, &key, u32_arg(offset), &data)
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
            let key = cstr(&mut caller, key)?;
            match view(&caller, &key) {
                Some(v) => push_ranges(&mut caller, &key, &v, &[(0, v.len)]),
                // Without a view the value is the store's already.
                None => ctx(&caller, "__faasm_push_state").map(drop),
            }
        })
        .map_err(err)?;
    linker
        .func_wrap("env", "__faasm_push_state_partial", |mut caller: Caller<'_, Host>, key: i32| -> wasmtime::Result<()> {
            let key = cstr(&mut caller, key)?;
            let Some(v) = caller.data_mut().views.get_mut(&key) else { return ctx(&caller, "__faasm_push_state_partial").map(drop) };
            // The flagged ranges go once: a failed push ends the call (a trap) anyway.
            let dirty = merge(std::mem::take(&mut v.dirty));
            let v = v.clone();
            push_ranges(&mut caller, &key, &v, &dirty)
        })
        .map_err(err)?;
    // void __faasm_push_state_partial_mask(const char *key, const char *maskKey): sends the bytes
    // of the view whose byte in the mask key's value is non-zero.
    linker
        .func_wrap("env", "__faasm_push_state_partial_mask", |mut caller: Caller<'_, Host>, key: i32, mask: i32| -> wasmtime::Result<()> {
            let key = cstr(&mut caller, key)?;
            let mask = cstr(&mut caller, mask)?;
            let Some(v) = view(&caller, &key) else { return ctx(&caller, "__faasm_push_state_partial_mask").map(drop) };
            let mask = read_value(&mut caller, &mask, 0, None)?.unwrap_or_default();
            push_ranges(&mut caller, &key, &v, &mask_runs(&mask, v.len))
        })
        .map_err(err)?;
    // void __faasm_pull_state(const char *key, long stateLen): refreshes the view from the store.
    linker
        .func_wrap("env", "__faasm_pull_state", |mut caller: Caller<'_, Host>, key: i32, _len: i32| -> wasmtime::Result<()> {
            let c = ctx(&caller, "__faasm_pull_state")?;
            let key = cstr(&mut caller, key)?;
            if view(&caller, &key).is_some() {
                let value = c.services.state().get(&c.user, &key).unwrap_or_default();
                update_view(&mut caller, &key, 0, &value)?;
            }
            Ok(())
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
            let file = crate::exec::host_path(&caller.data().wasi_spec.dirs, &path)
                .ok_or_else(|| format_err!("__faasm_write_state_from_file: no file {path} in the function's filesystem"))?;
            let limit = c.services.state().limits().max_value;
            let size = std::fs::metadata(&file).map_err(|e| format_err!("cannot read {path}: {e}"))?.len();
            if size > limit as u64 {
                return Err(state_err(StateError::TooLarge { key, size: usize::try_from(size).unwrap_or(usize::MAX), limit }));
            }
            let data = std::fs::read(&file).map_err(|e| format_err!("cannot read {path}: {e}"))?;
            c.services.state().set(&c.user, &key, &data).map_err(state_err)?;
            update_view(&mut caller, &key, 0, &data)?;
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
