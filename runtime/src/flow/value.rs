//! A value one block posts and others read: bytes, or — from [`PAGES_FROM`] bytes up — the pages
//! of a sealed memfd, which reach a consumer's linear memory by mapping them, not by copying.
//!
//! ```text
//!   producer   ebb_flow_buffer(len)   a fresh memfd mapped SHARED over untouched memory: the
//!                                     guest writes its output straight into the file's pages
//!              ebb_flow_post(buffer)  the range re-mapped PRIVATE over the same file (the same
//!                                     bytes; the producer's later writes stay its own), the file
//!                                     sealed (F_SEAL_WRITE|SHRINK|GROW): no copy
//!              ebb_flow_post(other)   ≥ PAGES_FROM: one copy into a new sealed memfd; below: bytes
//!   consumer   ebb_flow_fetch(buf)    buf page-aligned and untouched: the whole pages mapped
//!                                     PRIVATE (copy-on-write) from the file, the tail copied;
//!                                     otherwise copied
//! ```
//!
//! A sealed file never changes, so no reader sees a later write: a consumer's writes land in its
//! own private copies, and the producer's too once it has posted. Each value is its own file,
//! handed only to the blocks of the workflow call that posted it (one user's), so no function sees
//! another tenant's data. Every mapping goes with the instance's reset (`unmap_shared`), and the
//! file with the last reference to the value.

use std::fs::File;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MemFdCreateFlag, memfd_create};

/// Values of at least this many bytes are held as pages (below, a copy costs less than the
/// mappings a hand-off takes).
pub const PAGES_FROM: usize = 64 << 10;

/// A posted value (cheap to clone: every destination shares it).
#[derive(Clone)]
pub struct Value(Repr);

#[derive(Clone)]
enum Repr {
    Bytes(Arc<[u8]>),
    Pages(Arc<Sealed>),
}

/// A sealed memfd whose first `len` bytes are the value, with a read-only view of them.
struct Sealed {
    file: File,
    view: Mmap,
    len: usize,
}

/// A memfd that may be sealed: where a producer writes an output it posts as pages.
pub fn buffer_file(len: usize) -> std::io::Result<File> {
    let fd = memfd_create(c"ebb-flow-value", MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING)?;
    let file = File::from(fd);
    file.set_len(len as u64)?;
    Ok(file)
}

impl Value {
    /// A copy of `bytes`: into a sealed memfd from [`PAGES_FROM`] bytes up (so that consumers
    /// can map it), else plain bytes — also when making the memfd fails (logged).
    pub fn copy(bytes: &[u8]) -> Value {
        if bytes.len() >= PAGES_FROM {
            let file = buffer_file(bytes.len()).and_then(|f| f.write_all_at(bytes, 0).map(|()| f));
            match file.and_then(|f| Value::seal(f, bytes.len())) {
                Ok(v) => return v,
                Err(e) => tracing::warn!("a {}-byte workflow value is copied, not held as pages: {e}", bytes.len()),
            }
        }
        Value(Repr::Bytes(Arc::from(bytes)))
    }

    /// The first `len` bytes of `file` (a [`buffer_file`] of at least `len` bytes), sealed: it
    /// fails while any writable shared mapping of the file exists.
    pub fn seal(file: File, len: usize) -> std::io::Result<Value> {
        assert!(len > 0, "an empty value is bytes");
        let seals = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
        fcntl(file.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))?;
        // SAFETY: a read-only view of a file sealed against writes, shrinking and growing: its
        // bytes can no longer change and the mapping cannot outrun the file.
        let view = unsafe { MmapOptions::new().len(len).map(&file) }?;
        Ok(Value(Repr::Pages(Arc::new(Sealed { file, view, len }))))
    }

    /// The sealed file whose pages from offset 0 hold this value, if it is held as pages.
    pub fn pages(&self) -> Option<BorrowedFd<'_>> {
        match &self.0 {
            Repr::Pages(s) => Some(s.file.as_fd()),
            Repr::Bytes(_) => None,
        }
    }
}

impl Deref for Value {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Bytes(b) => b,
            Repr::Pages(s) => &s.view[..s.len],
        }
    }
}

impl From<&[u8]> for Value {
    fn from(bytes: &[u8]) -> Value {
        Value::copy(bytes)
    }
}

impl From<Vec<u8>> for Value {
    fn from(bytes: Vec<u8>) -> Value {
        if bytes.len() >= PAGES_FROM { Value::copy(&bytes) } else { Value(Repr::Bytes(bytes.into())) }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        **self == **other
    }
}

impl Eq for Value {}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.pages().is_some() { "pages" } else { "bytes" };
        write!(f, "Value({} {kind})", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_bytes_and_large_ones_sealed_pages() {
        let small = Value::copy(b"hello");
        assert!(small.pages().is_none());
        assert_eq!(&*small, b"hello");

        let data: Vec<u8> = (0..PAGES_FROM + 123).map(|i| u8::try_from(i % 251).unwrap()).collect();
        let large = Value::copy(&data);
        let fd = large.pages().expect("held as pages");
        assert_eq!(&*large, &data[..]);
        // The file is sealed: neither written nor resized.
        let file = File::from(fd.try_clone_to_owned().unwrap());
        assert!(file.write_at(b"x", 0).is_err(), "a sealed value must refuse writes");
        assert!(file.set_len(1).is_err(), "a sealed value must refuse shrinking");
        assert_eq!(&*large, &data[..]);
    }

    #[test]
    fn a_buffer_with_a_writable_mapping_cannot_be_sealed() {
        let file = buffer_file(PAGES_FROM).unwrap();
        // SAFETY: a fresh memfd of ours, mapped writable to hold it open during the seal.
        let mut map = unsafe { MmapOptions::new().len(PAGES_FROM).map_mut(&file) }.unwrap();
        map[0] = 1;
        let again = file.try_clone().unwrap();
        assert!(Value::seal(again, PAGES_FROM).is_err(), "F_SEAL_WRITE must fail while a writable shared mapping exists");
        drop(map);
        let v = Value::seal(file, PAGES_FROM).expect("sealed once unmapped");
        assert_eq!(v[0], 1);
        assert!(v[1..].iter().all(|&b| b == 0));
    }
}
