//! A bound on the disk a tenant's functions take through WASI: bytes (allocated blocks) and
//! entries (files, directories, links) under the tenant's files directory, shared by all its
//! functions and calls on this node.
//!
//! Neither wasmtime-wasi nor the kernel (without a filesystem per tenant) bounds a directory
//! tree, so the executor wraps the WASI calls that take disk (`fd_write`, `fd_pwrite` to a file,
//! `path_open` creating one, `path_create_directory`, `path_symlink`, `path_link`): each first
//! takes its room here and is refused with `EDQUOT` when the room is not there. A call that wrote
//! or deleted (`path_unlink_file`, `path_remove_directory`) measures the tree again when it ends
//! (overwrites and deletions give room back), so the count is the disk's, not a running guess.
//!
//! ```text
//!   measured (a walk of the tree) + taken since the walk + in flight (writes not yet done) ≤ bound
//! ```

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Room a request needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Room {
    pub bytes: u64,
    pub entries: u64,
}

impl Room {
    fn add(self, other: Room) -> Room {
        Room { bytes: self.bytes.saturating_add(other.bytes), entries: self.entries.saturating_add(other.entries) }
    }

    fn sub(self, other: Room) -> Room {
        Room { bytes: self.bytes.saturating_sub(other.bytes), entries: self.entries.saturating_sub(other.entries) }
    }

    fn fits(self, bound: Room) -> bool {
        self.bytes <= bound.bytes && self.entries <= bound.entries
    }
}

#[derive(Debug, Default)]
struct Usage {
    /// What the last walk found; `None` before the first.
    measured: Option<Room>,
    /// Room taken by requests done since that walk.
    taken: Room,
    /// Room taken by requests still running.
    in_flight: Room,
}

impl Usage {
    fn total(&self) -> Room {
        self.measured.unwrap_or_default().add(self.taken).add(self.in_flight)
    }
}

/// One tenant's disk bound.
#[derive(Debug)]
pub struct FileQuota {
    root: PathBuf,
    bound: Room,
    usage: Mutex<Usage>,
}

impl FileQuota {
    /// A bound of `bound` on everything under `root` (which may not exist yet).
    pub fn new(root: PathBuf, bound: Room) -> FileQuota {
        FileQuota { root, bound, usage: Mutex::new(Usage::default()) }
    }

    pub fn bound(&self) -> Room {
        self.bound
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the tree holds now, with what running requests took.
    pub fn used(&self) -> Room {
        let mut u = self.usage();
        if u.measured.is_none() {
            u.measured = Some(measure(&self.root));
        }
        u.total()
    }

    /// Takes `room` for a request, or returns false (and takes nothing) when it would pass the
    /// bound. [`FileQuota::done`] must follow a granted request.
    pub fn take(&self, room: Room) -> bool {
        let mut u = self.usage();
        if u.measured.is_none() {
            u.measured = Some(measure(&self.root));
        }
        if !u.total().add(room).fits(self.bound) {
            return false;
        }
        u.in_flight = u.in_flight.add(room);
        true
    }

    /// A request that took `room` is over.
    pub fn done(&self, room: Room) {
        let mut u = self.usage();
        u.in_flight = u.in_flight.sub(room);
        u.taken = u.taken.add(room);
    }

    /// Measures the tree again (after a call that wrote): what requests took is replaced by what
    /// the disk holds.
    pub fn remeasure(&self) {
        let found = measure(&self.root);
        let mut u = self.usage();
        u.measured = Some(found);
        u.taken = Room::default();
    }
}

/// Blocks and entries under `root`, not following symlinks (an unreadable part counts as empty:
/// the guest cannot write there either).
fn measure(root: &Path) -> Room {
    use std::os::unix::fs::MetadataExt;
    let mut room = Room::default();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            room.entries += 1;
            room.bytes += meta.blocks() * 512;
            if meta.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    room
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_bounded_and_the_disk_has_the_last_word() {
        let root = std::env::temp_dir().join(format!("ebb-fsquota-{}", std::process::id()));
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), vec![1; 10_000]).unwrap();
        let q = FileQuota::new(root.clone(), Room { bytes: 64 << 10, entries: 4 });
        let start = q.used();
        assert_eq!(start.entries, 2, "a directory and a file");
        assert!(start.bytes >= 8192, "the file's blocks are counted: {start:?}");
        let room = Room { bytes: q.bound().bytes - start.bytes, entries: 0 };
        assert!(q.take(room));
        assert!(!q.take(Room { bytes: 1, entries: 0 }), "all of it is in flight");
        q.done(room);
        assert!(!q.take(Room { bytes: 1, entries: 0 }), "taken, until measured");
        assert!(q.take(Room { bytes: 0, entries: 2 }));
        assert!(!q.take(Room { bytes: 0, entries: 1 }), "entries are bounded too");
        q.done(Room { bytes: 0, entries: 2 });
        // Nothing was written: the next walk gives the room back.
        q.remeasure();
        assert_eq!(q.used(), start);
        std::fs::remove_file(root.join("d/f")).unwrap();
        q.remeasure();
        assert_eq!(q.used().entries, 1, "a deletion gives room back");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
