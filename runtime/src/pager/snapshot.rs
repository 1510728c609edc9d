//! Initial states: what every call of a function starts from.
//!
//! After a function's init phase its memory is *captured*: the non-zero pages are written once to
//! a memnode region and kept in a local image while the function is warm. From then on the memory
//! is **tracked**: pages are installed write-protected (asynchronous mode, resolved by the kernel)
//! so a PAGEMAP_SCAN after a call lists exactly the pages the call wrote.
//!
//! ```text
//!   capture ─► Snapshot { size, non-zero pages, memnode region, local image (while warm) }
//!   call    ─► guest writes some pages (each leaves a "written" mark)
//!   reset   ─► PAGEMAP_SCAN(written, re-protect) → drop those pages → state Image (or Zero)
//!   next touch of an Image page ─► copied from the local image, or fetched from the region
//!   adopt   ─► another instance's memory starts as the same snapshot (nothing copied)
//!   evict   ─► an idle instance drops every resident page (all equal the snapshot)
//! ```
//!
//! So a snapshot is never copied per instance: it is pages that each instance maps lazily.

use std::sync::{Arc, RwLock};

use ebb_memnode::{PAGE_SIZE, RegionId, Transport};
use memmap2::MmapMut;

use super::{MemoryHandle, OFFLOAD_BATCH, PageState, PagerError, sys};

/// This host's copy of (some of) the initial state's pages: a mapping of the memory's size, of
/// which only the pages `held` are filled (the others cost nothing). Immutable once made: a
/// trimmed or completed image is a new one, swapped in, so readers (faults, resets, prefetches)
/// hold an `Arc` and no lock while they touch instance memory.
pub(super) struct LocalImage {
    map: MmapMut,
    held: Vec<bool>,
    count: usize,
}

impl LocalImage {
    /// Whether page `p` is in the image.
    pub(super) fn holds(&self, p: usize) -> bool {
        self.held.get(p).copied().unwrap_or(false)
    }

    /// The bytes of pages `first..first + n` (all held).
    pub(super) fn pages(&self, first: usize, n: usize) -> &[u8] {
        &self.map[first * PAGE_SIZE..(first + n) * PAGE_SIZE]
    }

    /// An image of `size` bytes holding `pages` (ascending) with the bytes `fill(p)` gives.
    fn build<'a>(size: usize, len: usize, pages: &[usize], fill: impl Fn(usize) -> &'a [u8]) -> Result<LocalImage, PagerError> {
        let mut map = MmapMut::map_anon(size.max(PAGE_SIZE)).map_err(|source| PagerError::Setup { len: size, source })?;
        let mut held = vec![false; len];
        for &p in pages {
            map[p * PAGE_SIZE..(p + 1) * PAGE_SIZE].copy_from_slice(fill(p));
            held[p] = true;
        }
        Ok(LocalImage { map, held, count: pages.len() })
    }
}

/// The initial state of a function's memory.
pub struct Snapshot {
    /// Pages the last call on a cold instance touched: prefetched before the next such call.
    working_set: std::sync::Mutex<Vec<usize>>,
    /// Pages calls have written: what a reset must restore, so what a trimmed local image keeps.
    write_set: std::sync::Mutex<Vec<bool>>,
    size: usize,
    nonzero: Vec<bool>,
    nonzero_count: usize,
    region: RegionId,
    local: RwLock<Option<Arc<LocalImage>>>,
    transport: Arc<dyn Transport>,
    /// The region is this runtime's (freed with the snapshot), not a lender's.
    owned: bool,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("size", &self.size)
            .field("nonzero_pages", &self.nonzero_count)
            .field("region", &self.region)
            .field("local", &self.is_local())
            .finish()
    }
}

impl Snapshot {
    /// Another node's initial state, read from its region `region` (a borrowed memory's, see
    /// `share`): `nonzero` pages of `size` bytes, no local image, the region never freed here.
    pub(super) fn borrowed(size: usize, nonzero: Vec<bool>, region: RegionId, transport: Arc<dyn Transport>) -> Snapshot {
        Snapshot::new(size, nonzero, region, None, transport, false)
    }

    /// A snapshot of `size` bytes whose `nonzero` pages are in `region` (and in `local`, if given).
    fn new(size: usize, nonzero: Vec<bool>, region: RegionId, local: Option<LocalImage>, transport: Arc<dyn Transport>, owned: bool) -> Snapshot {
        let nonzero_count = nonzero.iter().filter(|&&n| n).count();
        Snapshot {
            working_set: std::sync::Mutex::new(Vec::new()),
            write_set: std::sync::Mutex::new(vec![false; nonzero.len()]),
            size,
            nonzero,
            nonzero_count,
            region,
            local: RwLock::new(local.map(Arc::new)),
            transport,
            owned,
        }
    }

    /// Memory size in bytes at capture.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Pages with non-zero content (the ones held by the memnode and the local image).
    pub fn nonzero_pages(&self) -> usize {
        self.nonzero_count
    }

    /// Whether a local image is held (the function is warm).
    pub fn is_local(&self) -> bool {
        self.local.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Bytes of the initial state held locally.
    pub fn local_bytes(&self) -> usize {
        self.local.read().unwrap_or_else(|e| e.into_inner()).as_ref().map_or(0, |l| l.count * PAGE_SIZE)
    }

    /// Drops the local image: later faults on initial-state pages fetch from the memnode.
    /// Returns the bytes released.
    pub fn drop_local(&self) -> usize {
        let image = self.local.write().unwrap_or_else(|e| e.into_inner()).take();
        image.map_or(0, |l| l.count * PAGE_SIZE)
    }

    /// Notes pages a call wrote (they join the write set).
    pub fn note_written(&self, pages: &[usize]) {
        let mut ws = self.write_set.lock().unwrap_or_else(|e| e.into_inner());
        for &p in pages {
            if let Some(w) = ws.get_mut(p) {
                *w = true;
            }
        }
    }

    /// Non-zero pages of the write set, ascending.
    fn written_nonzero(&self) -> Vec<usize> {
        let ws = self.write_set.lock().unwrap_or_else(|e| e.into_inner());
        (0..self.nonzero.len()).filter(|&p| self.nonzero[p] && ws[p]).collect()
    }

    /// Keeps in the local image only the pages calls have written: resets need only the write
    /// set, and instances already hold what they read (new instances fetch from the memnode).
    /// Returns the bytes released.
    pub fn trim_local(&self) -> Result<usize, PagerError> {
        let keep = self.write_set.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(old) = self.local() else { return Ok(0) };
        let kept: Vec<usize> = (0..old.held.len()).filter(|&p| old.held[p] && keep[p]).collect();
        if kept.len() == old.count {
            return Ok(0);
        }
        let image = LocalImage::build(self.size, self.nonzero.len(), &kept, |p| old.pages(p, 1))?;
        let released = (old.count - kept.len()) * PAGE_SIZE;
        let mut local = self.local.write().unwrap_or_else(|e| e.into_inner());
        // Swapped only if nothing else replaced or dropped the image meanwhile.
        if local.as_ref().is_some_and(|l| Arc::ptr_eq(l, &old)) {
            *local = Some(Arc::new(image));
            return Ok(released);
        }
        Ok(0)
    }

    /// Fetches the write set's pages the local image lacks from the memnode (the function is
    /// warm again, or its calls wrote new pages): resets then restore them from local memory
    /// instead of faulting them back one by one. Returns the bytes fetched.
    pub fn restore_local(&self) -> Result<usize, PagerError> {
        let old = self.local();
        let want: Vec<usize> =
            self.written_nonzero().into_iter().filter(|&p| !old.as_ref().is_some_and(|l| l.holds(p))).collect();
        if want.is_empty() && old.is_some() {
            return Ok(0);
        }
        let mut fetched = vec![0u8; want.len() * PAGE_SIZE];
        let pages: Vec<u64> = want.iter().map(|&p| p as u64).collect();
        for (i, chunk) in pages.chunks(PREFETCH_BATCH).enumerate() {
            let start = i * PREFETCH_BATCH * PAGE_SIZE;
            self.transport.read_pages(self.region, chunk, &mut fetched[start..start + chunk.len() * PAGE_SIZE])?;
        }
        let mut all: Vec<usize> = want.clone();
        if let Some(old) = &old {
            all.extend((0..old.held.len()).filter(|&p| old.held[p]));
        }
        all.sort_unstable();
        let image = LocalImage::build(self.size, self.nonzero.len(), &all, |p| match want.binary_search(&p) {
            Ok(i) => &fetched[i * PAGE_SIZE..(i + 1) * PAGE_SIZE],
            Err(_) => old.as_ref().expect("held by the old image").pages(p, 1),
        })?;
        let mut local = self.local.write().unwrap_or_else(|e| e.into_inner());
        let unchanged = match (&*local, &old) {
            (Some(now), Some(old)) => Arc::ptr_eq(now, old),
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            *local = Some(Arc::new(image));
        }
        Ok(want.len() * PAGE_SIZE)
    }

    /// The recorded working set (ascending page indexes).
    pub fn working_set(&self) -> Vec<usize> {
        self.working_set.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records the pages a call touched, to prefetch before the next call of a cold instance.
    /// Only pages the initial state holds are kept (the others have nothing to fetch).
    pub fn record_working_set(&self, mut pages: Vec<usize>) {
        pages.retain(|&p| self.holds(p));
        pages.sort_unstable();
        pages.dedup();
        *self.working_set.lock().unwrap_or_else(|e| e.into_inner()) = pages;
    }

    /// Adds pages to the recorded working set (those a prefetched call still faulted on).
    pub fn extend_working_set(&self, pages: &[usize]) {
        let mut ws = self.working_set.lock().unwrap_or_else(|e| e.into_inner());
        ws.extend(pages.iter().copied().filter(|&p| self.holds(p)));
        ws.sort_unstable();
        ws.dedup();
    }

    /// Whether page `p` of the initial state has content (is held by the memnode).
    pub fn holds(&self, p: usize) -> bool {
        self.nonzero.get(p).copied().unwrap_or(false)
    }

    pub(super) fn region(&self) -> RegionId {
        self.region
    }

    /// The local image, if held (a reference: no lock is held while it is used).
    pub(super) fn local(&self) -> Option<Arc<LocalImage>> {
        self.local.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What page `p` holds in the initial state.
    fn initial(&self, p: usize) -> PageState {
        if self.nonzero.get(p).copied().unwrap_or(false) { PageState::Image } else { PageState::Zero }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Err(e) = self.transport.free(self.region) {
            tracing::warn!("could not free snapshot region {}: {e}", self.region);
        }
    }
}

/// Most pages a reset restores in place from the local image (16 MiB); a call that wrote more
/// has its written pages dropped instead, so large scratch areas do not stay resident.
pub const RESTORE_IN_PLACE_MAX: usize = 4096;

/// Pages per transport call when prefetching (4 MiB).
const PREFETCH_BATCH: usize = 1024;

/// What a reset did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResetReport {
    /// Pages the call wrote (ascending), dropped back to their initial state.
    pub written: Vec<usize>,
    /// The call grew the memory beyond its initial size (wasm memories cannot shrink: the
    /// instance should be discarded rather than reused).
    pub grown: bool,
}

impl MemoryHandle {
    /// The snapshot this memory resets to, if captured or adopted.
    pub fn snapshot(&self) -> Option<&Arc<Snapshot>> {
        self.state.snapshot.get()
    }

    /// Drops the given pages (ascending), one MADV_DONTNEED per run of consecutive pages.
    pub(super) fn discard_pages(&self, pages: &[usize]) {
        for run in pages.chunk_by(|a, b| *b == *a + 1) {
            self.discard_range(run[0], run.len());
        }
    }

    fn discard_range(&self, start: usize, count: usize) {
        if let Err(e) = self.state.reservation.discard(start * PAGE_SIZE, count * PAGE_SIZE) {
            tracing::error!("MADV_DONTNEED failed on pages {start}..{}: {e}", start + count);
        }
    }

    /// Captures the memory's current content as its initial state: non-zero pages are written
    /// once to a new memnode region and copied to a local image; from now on writes are tracked.
    /// The memory must be idle, have no snapshot yet and no offloaded pages.
    pub fn capture(&self) -> Result<Arc<Snapshot>, PagerError> {
        if let Some(why) = self.poisoned() {
            return Err(PagerError::Poisoned(why));
        }
        let state = &self.state;
        state.fence();
        let pages = state.accessible_pages();
        if state.snapshot.get().is_some() || state.table.count(0..pages, PageState::Remote) > 0 {
            return Err(PagerError::Snapshot("capture needs a memory with no snapshot and no offloaded pages"));
        }
        let size = pages * PAGE_SIZE;
        let transport = self.shared.transport.clone();
        let region = transport.alloc(size.max(PAGE_SIZE) as u64)?;
        let mut image = MmapMut::map_anon(size.max(PAGE_SIZE)).map_err(|source| PagerError::Setup { len: size, source })?;
        let mut nonzero = vec![false; pages];
        let mut resident = Vec::new();
        state.table.for_each_in(0..pages, PageState::Resident, |p| resident.push(p));
        let mut batch: Vec<u64> = Vec::with_capacity(OFFLOAD_BATCH);
        let write = |batch: &mut Vec<u64>, image: &MmapMut| -> Result<(), PagerError> {
            for run in batch.chunk_by(|a, b| *b == *a + 1) {
                let start = usize::try_from(run[0]).expect("page index") * PAGE_SIZE;
                transport.write_pages(region, run, &image[start..start + run.len() * PAGE_SIZE])?;
            }
            batch.clear();
            Ok(())
        };
        let result = (|| {
            for &p in &resident {
                // SAFETY: page `p` is accessible and resident; the memory is idle.
                let bytes = unsafe { std::slice::from_raw_parts((state.base() + p * PAGE_SIZE) as *const u8, PAGE_SIZE) };
                if sys::is_zero(bytes) {
                    continue;
                }
                image[p * PAGE_SIZE..(p + 1) * PAGE_SIZE].copy_from_slice(bytes);
                nonzero[p] = true;
                batch.push(p as u64);
                if batch.len() == OFFLOAD_BATCH {
                    write(&mut batch, &image)?;
                }
            }
            write(&mut batch, &image)
        })();
        if let Err(e) = result {
            let _ = self.shared.transport.free(region);
            return Err(e);
        }
        let nonzero_count = nonzero.iter().filter(|&&n| n).count();
        let image = LocalImage { map: image, held: nonzero.clone(), count: nonzero_count };
        let snap = Arc::new(Snapshot::new(size, nonzero, region, Some(image), self.shared.transport.clone(), true));
        self.track(&snap)?;
        self.shared.stats.bytes_out.fetch_add((nonzero_count * PAGE_SIZE) as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(snap)
    }

    /// Starts tracking writes against `snap`: every resident page is write-protected, so only
    /// pages written from now on show up at the next reset.
    pub(super) fn track(&self, snap: &Arc<Snapshot>) -> Result<(), PagerError> {
        let state = &self.state;
        state.snapshot.set(snap.clone()).map_err(|_| PagerError::Snapshot("the memory already has a snapshot"))?;
        let len = state.accessible_pages() * PAGE_SIZE;
        if len > 0 {
            state
                .uffd
                .write_protect(state.base() as *mut _, len)
                .map_err(|e| PagerError::Setup { len, source: std::io::Error::other(e.to_string()) })?;
        }
        Ok(())
    }

    /// Makes this (freshly instantiated, idle) memory start from `snap` without copying: every
    /// resident page is dropped and each page takes its initial state, to be filled on touch.
    /// The memory must already have the snapshot's size.
    pub fn adopt(&self, snap: &Arc<Snapshot>) -> Result<(), PagerError> {
        let state = &self.state;
        state.fence();
        let pages = state.accessible_pages();
        if pages * PAGE_SIZE != snap.size {
            return Err(PagerError::Snapshot("adopt needs a memory of the snapshot's size"));
        }
        let mut resident = Vec::new();
        state.table.for_each_in(0..pages, PageState::Resident, |p| resident.push(p));
        for &p in &resident {
            state.table.set(p, PageState::Zero);
        }
        self.discard_pages(&resident);
        for (p, &nz) in snap.nonzero.iter().enumerate() {
            if nz {
                state.table.set(p, PageState::Image);
            }
        }
        self.track(snap)
    }

    /// Returns the memory to its initial state after a call: the pages the call wrote (and only
    /// those) take their initial content again. While the function's local image is held and the
    /// call wrote at most [`RESTORE_IN_PLACE_MAX`] pages, they are restored in place (a copy per
    /// page, then write-protected again: no fault at the next touch); otherwise they are dropped
    /// and fault back from the image or the memnode when touched.
    pub fn reset(&self) -> Result<ResetReport, PagerError> {
        let state = &self.state;
        let snap = state.snapshot.get().ok_or(PagerError::Snapshot("reset needs a captured or adopted snapshot"))?;
        // A read-around still arriving for the call that just ended must not land from now on.
        state.fence();
        let len = state.accessible_pages() * PAGE_SIZE;
        // Pages a lent call changed through the memory's region count as written: resident ones
        // lose their region copy (it is the call's), the others take their initial state again.
        let lent_dirty = self.take_lent_dirty();
        let scan = |reprotect| -> Result<Vec<usize>, PagerError> {
            let mut pages = self.written_resident(reprotect)?;
            for &p in &lent_dirty {
                match state.table.get(p) {
                    PageState::Resident => {
                        state.table.set(p, PageState::Resident);
                        pages.push(p);
                    }
                    PageState::Remote => state.table.set(p, snap.initial(p)),
                    PageState::Zero | PageState::Image => {}
                }
            }
            pages.sort_unstable();
            pages.dedup();
            Ok(pages)
        };
        let mut report = ResetReport { written: Vec::new(), grown: len > snap.size };
        // With the image and a memory that did not grow: look first, without re-protecting.
        if let Some(image) = snap.local().filter(|_| !report.grown) {
            let written = scan(false)?;
            if written.len() <= RESTORE_IN_PLACE_MAX {
                let mut lacking = Vec::new();
                for &p in &written {
                    // SAFETY: page `p` is mapped (Resident, and just written) inside the
                    // accessible part of this memory, whose instance is idle.
                    let page = unsafe { std::slice::from_raw_parts_mut((state.base() + p * PAGE_SIZE) as *mut u8, PAGE_SIZE) };
                    if !snap.holds(p) {
                        page.fill(0);
                    } else if image.holds(p) {
                        page.copy_from_slice(image.pages(p, 1));
                    } else {
                        // Not in a trimmed image: dropped below, fetched when touched.
                        lacking.push(p);
                    }
                }
                // Protected after the copy, so the copy itself does not count as a write.
                for run in written.chunk_by(|a, b| *b == *a + 1) {
                    let (addr, bytes) = (state.base() + run[0] * PAGE_SIZE, run.len() * PAGE_SIZE);
                    state
                        .uffd
                        .write_protect(addr as *mut _, bytes)
                        .map_err(|e| PagerError::Setup { len: bytes, source: std::io::Error::other(e.to_string()) })?;
                }
                for &p in &lacking {
                    state.table.set(p, PageState::Image);
                }
                self.discard_pages(&lacking);
                report.written = written;
                return Ok(report);
            }
        }
        let written = scan(true)?;
        for &p in &written {
            state.table.set(p, snap.initial(p));
        }
        self.discard_pages(&written);
        report.written = written;
        Ok(report)
    }

    /// Pages resident now (ascending).
    pub fn resident_pages(&self) -> Vec<usize> {
        let mut pages = Vec::new();
        self.state.table.for_each_in(0..self.state.accessible_pages(), PageState::Resident, |p| pages.push(p));
        pages
    }

    /// Installs those of `pages` that hold their initial image and are not resident, in large
    /// batches — from the local image, or from the memnode with transfers and installs overlapped
    /// frame by frame — so that a call touching them takes no fault. It may run beside a call on
    /// the memory (not beside a reset, evict or offload): a page the guest faults on first is
    /// installed by the fault handler, and this install skips it.
    /// Returns the pages installed.
    pub fn prefetch(&self, pages: &[usize]) -> Result<usize, PagerError> {
        let state = &self.state;
        let snap = state.snapshot.get().ok_or(PagerError::Snapshot("prefetch needs a snapshot"))?;
        let limit = state.accessible_pages();
        let want: Vec<usize> =
            pages.iter().copied().filter(|&p| p < limit && state.table.get(p) == PageState::Image).collect();
        let local = snap.local();
        let mut buf = Vec::new();
        let mut done = 0;
        for run in want.chunk_by(|a, b| *b == *a + 1) {
            for chunk in run.chunks(PREFETCH_BATCH) {
                let first = chunk[0];
                match local.as_ref().filter(|l| chunk.iter().all(|&p| l.holds(p))) {
                    Some(image) => {
                        let bytes = image.pages(first, chunk.len());
                        state
                            .install_pages(first, bytes, PageState::Image)
                            .map_err(|source| PagerError::Setup { len: bytes.len(), source })?;
                    }
                    None => {
                        let indexes: Vec<u64> = chunk.iter().map(|&p| p as u64).collect();
                        buf.resize(chunk.len() * PAGE_SIZE, 0);
                        let mut failed = None;
                        let mut ready = |range: std::ops::Range<usize>, bytes: &[u8]| {
                            if failed.is_none()
                                && let Err(e) = state.install_pages(first + range.start, bytes, PageState::Image)
                            {
                                failed = Some(e);
                            }
                        };
                        let fetched = self.shared.transport.read_pages_streaming(snap.region(), &indexes, &mut buf, &mut ready);
                        if let Some(source) = failed {
                            return Err(PagerError::Setup { len: chunk.len() * PAGE_SIZE, source });
                        }
                        // Pages not installed kept their initial-image state: they fault later.
                        fetched?;
                        self.shared.stats.pages_fetched.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        self.shared.stats.bytes_in.fetch_add((chunk.len() * PAGE_SIZE) as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                done += chunk.len();
            }
        }
        self.shared.stats.pages_prefetched.fetch_add(done as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(done)
    }

    /// Drops every resident page of an idle, reset memory (they all equal the snapshot); the next
    /// call faults back what it touches. Returns the pages dropped.
    pub fn evict(&self) -> Result<usize, PagerError> {
        self.evict_pages(None)
    }

    /// [`MemoryHandle::evict`] of only those of `pages` (ascending) that are resident. No page
    /// travels: after a reset every resident page equals its initial state, which the memnode
    /// holds (dirty tracking at its simplest). Pages the memory's own region holds (offloaded
    /// by [`MemoryHandle::offload_pages`] and fetched back) go back to that state.
    pub fn evict_pages(&self, pages: Option<&[usize]>) -> Result<usize, PagerError> {
        let state = &self.state;
        let snap = state.snapshot.get().ok_or(PagerError::Snapshot("evict needs a snapshot"))?;
        state.fence();
        let resident = self.resident_among(pages);
        for &p in &resident {
            if state.table.is_backed(p) {
                state.table.set_backed(p, PageState::Remote);
            } else {
                state.table.set(p, snap.initial(p));
            }
        }
        self.discard_pages(&resident);
        self.shared.stats.pages_dropped_clean.fetch_add(resident.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(resident.len())
    }
}
