//! The page store: a capacity-bounded pool of regions, each owned by one client identity.
//!
//! A region is an anonymous private mapping sized to the region, so pages that were never written
//! cost nothing and read back as zeros. Capacity is accounted by region size (what a client may
//! write), not by touched pages, so an allocation that succeeds can always be filled.
//!
//! ```text
//!   Store ── Mutex<regions: id → Arc<Region>>      ids are never reused
//!              Region { owner, RwLock<MmapMut> }   readers share, writers and resizes exclude
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use memmap2::{MmapMut, RemapOptions};

use crate::proto::{PAGE_SIZE, PAGE_SIZE_U64};

/// Who a region belongs to: the tenant name of a token from the token file, or (without a token
/// file) a digest of the client's secret token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity(pub String);

/// A region id. Ids are handed out in increasing order and never reused, so a stale id can never
/// reach a later region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(pub u64);

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Region {0} does not exist or belongs to another client")]
    NoSuchRegion(RegionId),
    #[error("Allocating {requested} bytes would exceed the memnode capacity ({allocated} of {capacity} bytes in use)")]
    OutOfCapacity { requested: u64, allocated: u64, capacity: u64 },
    #[error("Size {size:#x} is not a non-zero multiple of the {PAGE_SIZE}-byte page")]
    BadSize { size: u64 },
    #[error("Page {page} is outside region {region} ({pages} pages)")]
    OutOfRange { region: RegionId, page: u64, pages: u64 },
    #[error("Failed to map {size} bytes for a region")]
    Map { size: u64, #[source] source: std::io::Error },
}

#[derive(Debug)]
struct Region {
    owner: Identity,
    mem: RwLock<MmapMut>,
}

/// Counters of a store, exported by `Stats`.
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub pages_read: AtomicU64,
    pub pages_written: AtomicU64,
}

#[derive(Debug, Default)]
struct Regions {
    next_id: u64,
    allocated: u64,
    map: HashMap<RegionId, Arc<Region>>,
}

/// The memory pool of a memnode (or of the embedded, in-process one).
#[derive(Debug)]
pub struct Store {
    capacity: u64,
    regions: Mutex<Regions>,
    pub counters: StoreCounters,
}

fn check_size(size: u64) -> Result<usize, StoreError> {
    if size == 0 || !size.is_multiple_of(PAGE_SIZE_U64) {
        return Err(StoreError::BadSize { size });
    }
    usize::try_from(size).map_err(|_| StoreError::BadSize { size })
}

fn map_anon(len: usize) -> Result<MmapMut, StoreError> {
    MmapMut::map_anon(len).map_err(|e| StoreError::Map { size: len as u64, source: e })
}

impl Store {
    /// A store that hands out at most `capacity` bytes of regions.
    pub fn new(capacity: u64) -> Store {
        Store { capacity, regions: Mutex::new(Regions { next_id: 1, ..Default::default() }), counters: StoreCounters::default() }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Regions> {
        // A panic while holding this lock leaves only plain bookkeeping behind; keep serving.
        self.regions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// (allocated bytes, region count).
    pub fn usage(&self) -> (u64, u64) {
        let r = self.lock();
        (r.allocated, r.map.len() as u64)
    }

    /// Allocates a zero-filled region of `size` bytes for `owner`.
    pub fn alloc(&self, owner: &Identity, size: u64) -> Result<RegionId, StoreError> {
        let len = check_size(size)?;
        {
            let r = self.lock();
            if r.allocated.saturating_add(size) > self.capacity {
                return Err(StoreError::OutOfCapacity { requested: size, allocated: r.allocated, capacity: self.capacity });
            }
        }
        let mem = map_anon(len)?;
        let mut r = self.lock();
        // Checked again: another client may have allocated while the mapping was made.
        if r.allocated.saturating_add(size) > self.capacity {
            return Err(StoreError::OutOfCapacity { requested: size, allocated: r.allocated, capacity: self.capacity });
        }
        let id = RegionId(r.next_id);
        r.next_id += 1;
        r.allocated += size;
        r.map.insert(id, Arc::new(Region { owner: owner.clone(), mem: RwLock::new(mem) }));
        Ok(id)
    }

    fn region(&self, owner: &Identity, id: RegionId) -> Result<Arc<Region>, StoreError> {
        match self.lock().map.get(&id) {
            Some(region) if &region.owner == owner => Ok(region.clone()),
            _ => Err(StoreError::NoSuchRegion(id)),
        }
    }

    /// The address and length of `owner`'s region `id`, for registering it with an RDMA device.
    /// The mapping stays where it is until the region is freed or resized.
    pub fn region_memory(&self, owner: &Identity, id: RegionId) -> Result<(*mut u8, usize), StoreError> {
        let region = self.region(owner, id)?;
        let mut mem = region.mem.write().unwrap_or_else(|e| e.into_inner());
        Ok((mem.as_mut_ptr(), mem.len()))
    }

    /// Releases a region and its memory.
    pub fn free(&self, owner: &Identity, id: RegionId) -> Result<(), StoreError> {
        let mut r = self.lock();
        match r.map.get(&id) {
            Some(region) if &region.owner == owner => {
                let region = r.map.remove(&id).expect("present: checked above");
                let size = region.mem.read().unwrap_or_else(|e| e.into_inner()).len() as u64;
                r.allocated -= size;
                Ok(())
            }
            _ => Err(StoreError::NoSuchRegion(id)),
        }
    }

    /// Changes a region's size, keeping the contents of the pages both sizes share.
    pub fn resize(&self, owner: &Identity, id: RegionId, size: u64) -> Result<(), StoreError> {
        let new_len = check_size(size)?;
        let region = self.region(owner, id)?;
        let mut mem = region.mem.write().unwrap_or_else(|e| e.into_inner());
        let old = mem.len() as u64;
        {
            let mut r = self.lock();
            if size > old && r.allocated.saturating_add(size - old) > self.capacity {
                return Err(StoreError::OutOfCapacity { requested: size - old, allocated: r.allocated, capacity: self.capacity });
            }
            r.allocated = r.allocated + size - old;
        }
        // SAFETY: the region's write lock is held, so no reference into the old mapping exists
        // while mremap may move it; the mapping is anonymous and private to this store.
        let remapped = unsafe { mem.remap(new_len, RemapOptions::new().may_move(true)) };
        if let Err(e) = remapped {
            let mut r = self.lock();
            r.allocated = r.allocated + old - size;
            return Err(StoreError::Map { size, source: e });
        }
        Ok(())
    }

    fn page_range(region: RegionId, len: usize, page: u64) -> Result<std::ops::Range<usize>, StoreError> {
        let pages = (len / PAGE_SIZE) as u64;
        if page >= pages {
            return Err(StoreError::OutOfRange { region, page, pages });
        }
        // In range of `len`, which is a usize.
        let start = usize::try_from(page).expect("page < pages") * PAGE_SIZE;
        Ok(start..start + PAGE_SIZE)
    }

    /// Calls `f(i, page_bytes)` for each requested page, in order, with the region read-locked.
    /// All indexes are checked before the first call.
    pub fn read_pages_with(
        &self,
        owner: &Identity,
        id: RegionId,
        pages: impl Iterator<Item = u64> + Clone,
        mut f: impl FnMut(usize, &[u8]),
    ) -> Result<(), StoreError> {
        let region = self.region(owner, id)?;
        let mem = region.mem.read().unwrap_or_else(|e| e.into_inner());
        for page in pages.clone() {
            Self::page_range(id, mem.len(), page)?;
        }
        let mut n = 0;
        for (i, page) in pages.enumerate() {
            let range = Self::page_range(id, mem.len(), page)?;
            f(i, &mem[range]);
            n += 1;
        }
        self.counters.pages_read.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Calls `f(range, bytes)` for each run of consecutive page numbers in `pages`, in order, with
    /// `range` the run's positions in `pages` and `bytes` the run's pages, borrowed from the
    /// region (read-locked during the call). All indexes are checked before the first call.
    pub fn read_runs(
        &self,
        owner: &Identity,
        id: RegionId,
        pages: &[u64],
        mut f: impl FnMut(std::ops::Range<usize>, &[u8]),
    ) -> Result<(), StoreError> {
        let region = self.region(owner, id)?;
        let mem = region.mem.read().unwrap_or_else(|e| e.into_inner());
        for &page in pages {
            Self::page_range(id, mem.len(), page)?;
        }
        let mut at = 0;
        for run in pages.chunk_by(|a, b| *b == *a + 1) {
            let start = Self::page_range(id, mem.len(), run[0])?.start;
            f(at..at + run.len(), &mem[start..start + run.len() * PAGE_SIZE]);
            at += run.len();
        }
        self.counters.pages_read.fetch_add(pages.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Copies pages out of a region into `out` (`pages.len()` × page size bytes).
    pub fn read_pages(&self, owner: &Identity, id: RegionId, pages: &[u64], out: &mut [u8]) -> Result<(), StoreError> {
        assert_eq!(out.len(), pages.len() * PAGE_SIZE, "output buffer must hold every page");
        self.read_pages_with(owner, id, pages.iter().copied(), |i, page| {
            out[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].copy_from_slice(page);
        })
    }

    /// Stores pages into a region; `data` holds `pages.len()` pages. All indexes are checked before
    /// anything is written, so a bad request changes nothing.
    pub fn write_pages(&self, owner: &Identity, id: RegionId, pages: &[u64], data: &[u8]) -> Result<(), StoreError> {
        assert_eq!(data.len(), pages.len() * PAGE_SIZE, "data must hold every page");
        let region = self.region(owner, id)?;
        let mut mem = region.mem.write().unwrap_or_else(|e| e.into_inner());
        let ranges = pages.iter().map(|&p| Self::page_range(id, mem.len(), p)).collect::<Result<Vec<_>, _>>()?;
        for (i, range) in ranges.into_iter().enumerate() {
            mem[range].copy_from_slice(&data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]);
        }
        self.counters.pages_written.fetch_add(pages.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Parses a size such as `512M`, `8G`, `4096` or `1T` (binary units; a trailing `iB`/`B` is
/// accepted). Hand-written because the size crates disagree on whether `G` means 10^9 or 2^30, and
/// a memory capacity must mean 2^30.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        Some((i, 'T' | 't')) => (&t[..i], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| format!("`{s}` is not a size: use e.g. 4096, 512M, 8G"))?;
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, reason = "test patterns truncate on purpose")]
mod tests {
    use super::*;

    fn who(s: &str) -> Identity {
        Identity(s.to_string())
    }

    #[test]
    fn alloc_read_write_free() {
        let store = Store::new(1 << 20);
        let a = who("a");
        let id = store.alloc(&a, 8 * 4096).unwrap();
        let data: Vec<u8> = (0..2 * PAGE_SIZE).map(|i| (i % 251) as u8).collect();
        store.write_pages(&a, id, &[3, 7], &data).unwrap();
        let mut out = vec![0xAA; 3 * PAGE_SIZE];
        store.read_pages(&a, id, &[7, 0, 3], &mut out).unwrap();
        assert_eq!(&out[..PAGE_SIZE], &data[PAGE_SIZE..]);
        assert!(out[PAGE_SIZE..2 * PAGE_SIZE].iter().all(|&b| b == 0));
        assert_eq!(&out[2 * PAGE_SIZE..], &data[..PAGE_SIZE]);
        assert_eq!(store.usage(), (8 * 4096, 1));
        store.free(&a, id).unwrap();
        assert_eq!(store.usage(), (0, 0));
        assert!(matches!(store.read_pages(&a, id, &[0], &mut out[..PAGE_SIZE]), Err(StoreError::NoSuchRegion(r)) if r == id));
    }

    #[test]
    fn owners_are_isolated_and_ids_not_reused() {
        let store = Store::new(1 << 20);
        let id = store.alloc(&who("a"), 4096).unwrap();
        let mut out = vec![0; PAGE_SIZE];
        assert!(matches!(store.read_pages(&who("b"), id, &[0], &mut out), Err(StoreError::NoSuchRegion(_))));
        assert!(matches!(store.free(&who("b"), id), Err(StoreError::NoSuchRegion(_))));
        store.free(&who("a"), id).unwrap();
        let id2 = store.alloc(&who("b"), 4096).unwrap();
        assert_ne!(id, id2);
    }

    #[test]
    fn capacity_and_ranges() {
        let store = Store::new(4 * 4096);
        let a = who("a");
        assert!(matches!(store.alloc(&a, 5 * 4096), Err(StoreError::OutOfCapacity { .. })));
        assert!(matches!(store.alloc(&a, 100), Err(StoreError::BadSize { .. })));
        let id = store.alloc(&a, 2 * 4096).unwrap();
        let page = vec![1u8; PAGE_SIZE];
        assert!(matches!(store.write_pages(&a, id, &[2], &page), Err(StoreError::OutOfRange { .. })));
        store.write_pages(&a, id, &[1], &page).unwrap();
        store.resize(&a, id, 4 * 4096).unwrap();
        assert!(matches!(store.resize(&a, id, 5 * 4096), Err(StoreError::OutOfCapacity { .. })));
        let mut out = vec![0; 2 * PAGE_SIZE];
        store.read_pages(&a, id, &[1, 3], &mut out).unwrap();
        assert_eq!(&out[..PAGE_SIZE], &page[..]);
        assert!(out[PAGE_SIZE..].iter().all(|&b| b == 0));
        assert_eq!(store.usage().0, 4 * 4096);
    }

    #[test]
    fn runs_borrow_consecutive_pages() {
        let store = Store::new(1 << 20);
        let a = who("a");
        let id = store.alloc(&a, 8 * 4096).unwrap();
        let data: Vec<u8> = (0..3 * PAGE_SIZE).map(|i| (i / PAGE_SIZE + 1) as u8).collect();
        store.write_pages(&a, id, &[2, 3, 6], &data).unwrap();
        let mut runs = vec![];
        store.read_runs(&a, id, &[2, 3, 6], |r, bytes| runs.push((r, bytes[0], bytes.len()))).unwrap();
        assert_eq!(runs, vec![(0..2, 1, 2 * PAGE_SIZE), (2..3, 3, PAGE_SIZE)]);
        assert!(matches!(store.read_runs(&a, id, &[2, 8], |_, _| panic!("nothing before the check")), Err(StoreError::OutOfRange { .. })));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("8GiB").unwrap(), 8 << 30);
        assert!(parse_size("lots").is_err());
    }
}
