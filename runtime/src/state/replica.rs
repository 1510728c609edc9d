//! A state value's pages on this node — Faasm's local tier — which calls map into their linear
//! memory (`faasmReadStatePtr`): shared memory (a memfd), so every call of the user on this node
//! maps the same pages, and the guest reads and writes them with no copy in or out.
//!
//! The store's own value is the global tier (what `GET /s/…` returns, and what other nodes will
//! see): a push copies ranges of the replica there, a pull copies the value back, and every
//! write to the store writes through to the replica, so the two differ only by pushes not yet
//! made — Faasm's semantics on one host.
//!
//! The file never shrinks while it exists (a shrink under a call's mapping would turn its next
//! access into a SIGBUS); a shorter value frees the pages past it instead.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::RwLock;

use ebb_memnode::PAGE_SIZE;
use memmap2::MmapRaw;

/// One value's shared pages.
#[derive(Debug)]
pub struct Replica {
    file: File,
    pages: RwLock<Pages>,
}

#[derive(Debug)]
struct Pages {
    /// The host's own mapping of the whole file (its length is the capacity).
    map: MmapRaw,
    /// Bytes of the value (the rest up to the capacity is zero).
    len: usize,
}

/// Bytes a replica of `len` bytes takes: whole pages, at least one.
pub fn capacity_for(len: usize) -> usize {
    len.max(1).next_multiple_of(PAGE_SIZE)
}

impl Replica {
    /// A replica holding `bytes`, with room for `capacity_for(len)` bytes (`len` ≥ the bytes).
    pub(super) fn new(bytes: &[u8], len: usize) -> io::Result<Replica> {
        let fd = nix::sys::memfd::memfd_create(c"ebb-state", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)?;
        let file = File::from(fd);
        let capacity = capacity_for(len.max(bytes.len()));
        file.set_len(capacity as u64)?;
        let map = MmapRaw::map_raw(&file)?;
        let replica = Replica { file, pages: RwLock::new(Pages { map, len: len.max(bytes.len()) }) };
        replica.write(0, bytes);
        Ok(replica)
    }

    /// The shared file a call maps (its first [`Replica::capacity`] bytes).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    pub fn capacity(&self) -> usize {
        self.read_pages().map.len()
    }

    pub fn len(&self) -> usize {
        self.read_pages().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read_pages(&self) -> std::sync::RwLockReadGuard<'_, Pages> {
        self.pages.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_pages(&self) -> std::sync::RwLockWriteGuard<'_, Pages> {
        self.pages.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the value `len` bytes: grows the file when it must (existing mappings stay valid: the
    /// file only grows) or frees the pages past a shorter value (they read as zero).
    pub(super) fn resize(&self, len: usize) -> io::Result<()> {
        let mut pages = self.write_pages();
        let capacity = pages.map.len();
        if len > capacity {
            self.file.set_len(capacity_for(len) as u64)?;
            pages.map = MmapRaw::map_raw(&self.file)?;
        } else if len < pages.len {
            // Zero the rest of the last page by hand, and give whole pages back to the kernel.
            let first_free = len.next_multiple_of(PAGE_SIZE);
            // SAFETY: `len..first_free` lies in the mapping (first_free ≤ capacity); the bytes are
            // plain shared memory that guests may be writing too (no Rust reference exists).
            unsafe { std::ptr::write_bytes(pages.map.as_mut_ptr().add(len), 0, first_free.min(capacity) - len) };
            if first_free < capacity {
                let punch = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
                nix::fcntl::fallocate(
                    std::os::fd::AsRawFd::as_raw_fd(&self.file),
                    punch,
                    first_free as i64,
                    (capacity - first_free) as i64,
                )?;
            }
        }
        pages.len = len;
        Ok(())
    }

    /// `len` bytes at `offset`, clipped to the value.
    pub fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        let pages = self.read_pages();
        let end = offset.saturating_add(len).min(pages.len);
        let n = end.saturating_sub(offset);
        let mut out = vec![0; n];
        // SAFETY: `offset..offset + n` lies within the value, inside the mapping. Guests may write
        // these bytes at the same time; they are copied as plain bytes, never referenced.
        unsafe { std::ptr::copy_nonoverlapping(pages.map.as_ptr().add(offset.min(end)), out.as_mut_ptr(), n) };
        out
    }

    /// Writes `data` at `offset`, clipped to the value.
    pub(super) fn write(&self, offset: usize, data: &[u8]) {
        let pages = self.read_pages();
        let n = pages.len.saturating_sub(offset).min(data.len());
        // SAFETY: `offset..offset + n` lies within the value, inside the mapping (shared memory
        // that only this module and the guests' mappings of the file reach).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), pages.map.as_mut_ptr().add(offset.min(pages.len)), n) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_grows_frees_its_tail_and_clips() {
        let r = Replica::new(b"hello", 8).unwrap();
        assert_eq!((r.len(), r.capacity()), (8, PAGE_SIZE));
        assert_eq!(r.read(0, 100), b"hello\0\0\0");
        r.write(6, b"xyz");
        assert_eq!(r.read(4, 4), b"o\0xy", "clipped to the value");
        r.resize(3 * PAGE_SIZE + 1).unwrap();
        assert_eq!(r.capacity(), 4 * PAGE_SIZE);
        r.write(3 * PAGE_SIZE, b"ab");
        assert_eq!(r.read(3 * PAGE_SIZE, 2), b"a");
        // A second mapping of the file (what a call holds) sees the same pages.
        let other = MmapRaw::map_raw(&r.file).unwrap();
        // SAFETY: the mapping is 4 pages long and nothing writes it meanwhile.
        assert_eq!(unsafe { *other.as_ptr().add(3 * PAGE_SIZE) }, b'a');
        r.resize(2).unwrap();
        assert_eq!(r.capacity(), 4 * PAGE_SIZE, "the file never shrinks");
        r.resize(3 * PAGE_SIZE + 1).unwrap();
        assert_eq!(r.read(0, 4), b"he\0\0", "bytes past a shorter value were freed");
        assert_eq!(r.read(3 * PAGE_SIZE, 1), b"\0");
    }
}
