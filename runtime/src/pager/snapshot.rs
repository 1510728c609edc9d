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

use super::image::LocalImage;
use super::{MemoryHandle, OFFLOAD_BATCH, PageState, PagerError, sys};

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
    /// Memories map the local image copy-on-write (`PagerConfig::cow_images`): images then only
    /// grow, and are never trimmed (instances hold no copies of the pages they read).
    cow: bool,
    /// The images are image regions of the kernel module (copy-on-write on the kmod path).
    kernel: bool,
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
        Snapshot::new(size, nonzero, region, None, transport, false, false)
    }

    /// A snapshot of `size` bytes whose `nonzero` pages are in `region` (and in `local`, if given).
    fn new(
        size: usize,
        nonzero: Vec<bool>,
        region: RegionId,
        local: Option<LocalImage>,
        transport: Arc<dyn Transport>,
        owned: bool,
        cow: bool,
    ) -> Snapshot {
        // Later images are of the same kind as the first.
        let kernel = local.as_ref().is_some_and(|l| l.device().is_some());
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
            cow,
            kernel,
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
        self.local.read().unwrap_or_else(|e| e.into_inner()).as_ref().map_or(0, |l| l.count() * PAGE_SIZE)
    }

    /// Drops the local image: later faults on initial-state pages fetch from the memnode.
    /// Returns the bytes released (with copy-on-write images, once no memory maps it: each
    /// moves off it at its next reset or eviction, or at [`MemoryHandle::sync_image`]).
    pub fn drop_local(&self) -> usize {
        let image = self.local.write().unwrap_or_else(|e| e.into_inner()).take();
        image.map_or(0, |l| l.count() * PAGE_SIZE)
    }

    /// The local image, made (empty) if there is none: where a copy-on-write restore fetches.
    pub(super) fn ensure_local(&self) -> Result<Arc<LocalImage>, PagerError> {
        let mut local = self.local.write().unwrap_or_else(|e| e.into_inner());
        if let Some(image) = &*local {
            return Ok(image.clone());
        }
        let image = Arc::new(LocalImage::empty(self.size, self.kernel)?);
        *local = Some(image.clone());
        Ok(image)
    }

    /// Reads `pages` (ascending, all non-zero) from the memnode into `image`, in large batches,
    /// each frame written into the image as it arrives. Returns the pages fetched.
    pub(super) fn fetch_into(&self, image: &LocalImage, pages: &[usize]) -> Result<usize, PagerError> {
        let mut buf = vec![0u8; pages.len().min(PREFETCH_BATCH) * PAGE_SIZE];
        for chunk in pages.chunks(PREFETCH_BATCH) {
            let indexes: Vec<u64> = chunk.iter().map(|&p| p as u64).collect();
            let mut failed = None;
            let mut ready = |range: std::ops::Range<usize>, bytes: &[u8]| {
                for (run, at) in runs_of(&chunk[range.clone()]) {
                    let from = at * PAGE_SIZE;
                    if failed.is_none()
                        && let Err(e) = image.put(run.start, &bytes[from..from + run.len() * PAGE_SIZE])
                    {
                        failed = Some(e);
                    }
                }
            };
            self.transport.read_pages_streaming(self.region, &indexes, &mut buf[..chunk.len() * PAGE_SIZE], &mut ready)?;
            if let Some(source) = failed {
                return Err(PagerError::Setup { len: chunk.len() * PAGE_SIZE, source });
            }
        }
        Ok(pages.len())
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
    /// With copy-on-write images nothing is trimmed: instances read the image's pages instead of
    /// holding copies, so dropping them would free nothing that is not needed.
    pub fn trim_local(&self) -> Result<usize, PagerError> {
        if self.cow {
            return Ok(0);
        }
        let keep = self.write_set.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(old) = self.local() else { return Ok(0) };
        let kept: Vec<usize> = (0..self.nonzero.len()).filter(|&p| old.holds(p) && keep[p]).collect();
        if kept.len() == old.count() {
            return Ok(0);
        }
        let image = LocalImage::build(self.size, self.kernel, &kept, |p| old.pages(p, 1))?;
        let released = (old.count() - kept.len()) * PAGE_SIZE;
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
    /// instead of faulting them back one by one. With copy-on-write images the working set's
    /// pages are fetched too (instances read them from the image), into the image itself.
    /// Returns the bytes fetched.
    pub fn restore_local(&self) -> Result<usize, PagerError> {
        if self.cow {
            let image = self.ensure_local()?;
            let mut want = self.written_nonzero();
            want.extend(self.working_set());
            want.sort_unstable();
            want.dedup();
            let lacking: Vec<usize> = want.into_iter().filter(|&p| !image.holds(p)).collect();
            return Ok(self.fetch_into(&image, &lacking)? * PAGE_SIZE);
        }
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
            all.extend((0..self.nonzero.len()).filter(|&p| old.holds(p)));
        }
        all.sort_unstable();
        let image = LocalImage::build(self.size, self.kernel, &all, |p| match want.binary_search(&p) {
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

    /// Pages in the recorded working set.
    pub fn working_set_len(&self) -> usize {
        self.working_set.lock().unwrap_or_else(|e| e.into_inner()).len()
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
    pub(super) fn initial(&self, p: usize) -> PageState {
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

/// The runs of consecutive pages in `pages` (ascending): each run and its index in `pages`.
fn runs_of(pages: &[usize]) -> impl Iterator<Item = (std::ops::Range<usize>, usize)> + '_ {
    let mut at = 0;
    pages.chunk_by(|a, b| *b == *a + 1).map(move |run| {
        let item = (run[0]..run[0] + run.len(), at);
        at += run.len();
        item
    })
}

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
    /// On the kmod path the store first gets each page's new state (see `kernel`): a failure
    /// there poisons the memory, whose pages could then read wrong bytes.
    pub(super) fn discard_pages(&self, pages: &[usize]) {
        if let Some(k) = self.kernel() {
            if let Err(e) = self.kernel_discard(k, pages) {
                self.state.poison(super::Poison::Handler(format!("dropping pages: {}", super::error_chain(&e))));
            }
            return;
        }
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
        self.sync_faults()?;
        let pages = state.accessible_pages();
        if state.snapshot.get().is_some() || state.table.count(0..pages, PageState::Remote) > 0 {
            return Err(PagerError::Snapshot("capture needs a memory with no snapshot and no offloaded pages"));
        }
        let size = pages * PAGE_SIZE;
        let transport = self.shared.transport.clone();
        let region = transport.alloc(size.max(PAGE_SIZE) as u64)?;
        // Copy-on-write on the kmod path: the image is a region of the module (memories take it
        // as their base).
        let cow = self.shared.config.cow_images;
        let kernel = cow && self.kernel().is_some();
        let image = LocalImage::empty(size, kernel)?;
        let mut nonzero = vec![false; pages];
        let mut resident = Vec::new();
        state.table.for_each_in(0..pages, PageState::Resident, |p| resident.push(p));
        let mut batch: Vec<usize> = Vec::with_capacity(OFFLOAD_BATCH);
        let mut staged = vec![0u8; OFFLOAD_BATCH.min(resident.len()) * PAGE_SIZE];
        // Each batch goes to the region and into the image, run by run.
        let write = |batch: &mut Vec<usize>, staged: &[u8]| -> Result<(), PagerError> {
            for (run, at) in runs_of(batch) {
                let bytes = &staged[at * PAGE_SIZE..(at + run.len()) * PAGE_SIZE];
                let indexes: Vec<u64> = run.clone().map(|p| p as u64).collect();
                transport.write_pages(region, &indexes, bytes)?;
                image.put(run.start, bytes).map_err(|source| PagerError::Setup { len: bytes.len(), source })?;
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
                let i = batch.len();
                staged[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].copy_from_slice(bytes);
                nonzero[p] = true;
                batch.push(p);
                if batch.len() == OFFLOAD_BATCH {
                    write(&mut batch, &staged)?;
                }
            }
            write(&mut batch, &staged)
        })();
        if let Err(e) = result {
            let _ = self.shared.transport.free(region);
            return Err(e);
        }
        let nonzero_count = nonzero.iter().filter(|&&n| n).count();
        let snap = Arc::new(Snapshot::new(size, nonzero, region, Some(image), self.shared.transport.clone(), true, cow));
        self.track(&snap)?;
        self.shared.stats.bytes_out.fetch_add((nonzero_count * PAGE_SIZE) as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(snap)
    }

    /// Starts tracking writes against `snap`: every resident page is write-protected, so only
    /// pages written from now on show up at the next reset.
    pub(super) fn track(&self, snap: &Arc<Snapshot>) -> Result<(), PagerError> {
        let state = &self.state;
        state.snapshot.set(snap.clone()).map_err(|_| PagerError::Snapshot("the memory already has a snapshot"))?;
        if let Some(k) = self.kernel() {
            return self.kernel_track(k, snap);
        }
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
        self.sync_faults()?;
        let _dropping = self.kernel_drop_guard();
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
        self.track(snap)?;
        if let Some(k) = self.kernel() {
            // The store holds the initial state now (`track`); the pages the module still holds
            // (read-around beside the instantiation's writes) go, so every page reads it next.
            k.evict_all(pages)?;
        }
        // Copy-on-write: the memory maps the function's image if it has one. Without one it stays
        // anonymous memory whose faults install what they fetch in one step (`UFFDIO_COPY`),
        // cheaper than fetching into an image and mapping from it (docs/PERFORMANCE.md); the
        // policy fetches the image back off the calls' path and later resets map it.
        self.sync_image()
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
        if state.mapped_image().is_some() {
            let report = self.reset_mapped(snap, len)?;
            self.sync_image()?;
            return Ok(report);
        }
        // Pages a lent call changed through the memory's region count as written: resident ones
        // lose their region copy (it is the call's), the others take their initial state again.
        // (On the kmod path the table learns what the call faulted back first.)
        self.sync_faults()?;
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
        // (Not on the kmod path: there a dropped page is refilled from the module's store, which
        // holds the initial state, without a copy here.)
        if let Some(image) = snap.local().filter(|_| !report.grown && self.kernel().is_none()) {
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
                self.sync_image()?;
                return Ok(report);
            }
        }
        let written = scan(true)?;
        let _dropping = self.kernel_drop_guard();
        for &p in &written {
            state.table.set(p, snap.initial(p));
        }
        self.discard_pages(&written);
        if let Some(k) = self.kernel().filter(|_| !report.grown && written.len() <= RESTORE_IN_PLACE_MAX) {
            // The kmod path's restore in place: the module refills the pages from its store,
            // which holds the initial state, so the next call takes no fault of its own on them.
            self.kernel_refill(k, &written)?;
        }
        report.written = written;
        self.sync_image()?;
        Ok(report)
    }

    /// [`MemoryHandle::reset`] of a memory that maps its image: the call's private pages are
    /// exactly the pages it wrote; dropping them brings back the image's (a page-cache hit at the
    /// next touch). Pages beyond the image (the memory grew) are tracked as in anonymous memory.
    fn reset_mapped(&self, snap: &Snapshot, len: usize) -> Result<ResetReport, PagerError> {
        let state = &self.state;
        let mut written = self.written_in_image()?;
        let image_end = state.image_pages() * PAGE_SIZE;
        if len > image_end {
            let mut ranges = Vec::new();
            sys::scan_written(state.base() + image_end, state.base() + len, true, &mut ranges)
                .map_err(|source| PagerError::Setup { len, source })?;
            for r in ranges {
                let (start, end) = ((r.start - state.base()) / PAGE_SIZE, (r.end - state.base()) / PAGE_SIZE);
                written.extend((start..end).filter(|&p| state.table.get(p) == PageState::Resident));
            }
        }
        for &p in &written {
            state.table.set(p, snap.initial(p));
        }
        // Zero pages the calls write (a stack, a heap) join the image as zeros: the next call
        // finds them in the page cache instead of taking a userfaultfd fault for a zero page.
        if let Some(image) = state.mapped_image() {
            let image_pages = state.image_pages();
            for &p in written.iter().filter(|&&p| p < image_pages && !snap.holds(p) && !image.holds(p)) {
                image.put(p, &super::ZEROS).map_err(|source| PagerError::Setup { len: PAGE_SIZE, source })?;
            }
        }
        self.discard_pages(&written);
        Ok(ResetReport { written, grown: len > snap.size })
    }

    /// Pages resident now (ascending): with a mapped image, every page of it mapped (read or
    /// written since it was last dropped), and the private pages beyond it.
    pub fn resident_pages(&self) -> Vec<usize> {
        self.sync_or_poison();
        let state = &self.state;
        let from = state.image_pages();
        let mut pages = if from > 0 {
            self.present_in_image().unwrap_or_else(|e| {
                tracing::warn!("PAGEMAP_SCAN failed; counting only private pages: {e}");
                let mut pages = Vec::new();
                state.table.for_each_in(0..from, PageState::Resident, |p| pages.push(p));
                pages
            })
        } else {
            Vec::new()
        };
        state.table.for_each_in(from..state.accessible_pages(), PageState::Resident, |p| pages.push(p));
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
        if let Some(k) = self.kernel() {
            return self.kernel_prefetch(k, pages);
        }
        let limit = state.accessible_pages();
        let want: Vec<usize> =
            pages.iter().copied().filter(|&p| p < limit && state.table.get(p) == PageState::Image).collect();
        if let Some(image) = snap.local().filter(|_| snap.cow && snap.size > 0) {
            // Copy-on-write, and the function has an image: what it lacks goes into it in large
            // batches, and the memory maps it. (Without an image the pages are installed into
            // the memory directly, below: one copy per page instead of two.)
            self.sync_image()?;
            let lacking: Vec<usize> = want.iter().copied().filter(|&p| !image.holds(p)).collect();
            let fetched = snap.fetch_into(&image, &lacking)?;
            let stats = &self.shared.stats;
            stats.pages_fetched.fetch_add(fetched as u64, std::sync::atomic::Ordering::Relaxed);
            stats.bytes_in.fetch_add((fetched * PAGE_SIZE) as u64, std::sync::atomic::Ordering::Relaxed);
            if state.mapped_image().is_some_and(|m| Arc::ptr_eq(&m, &image)) {
                self.populate(&want);
                stats.pages_prefetched.fetch_add(want.len() as u64, std::sync::atomic::Ordering::Relaxed);
                return Ok(want.len());
            }
        }
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
        let _dropping = self.kernel_drop_guard();
        for &p in &resident {
            if state.table.is_backed(p) {
                state.table.set_backed(p, PageState::Remote);
            } else if state.table.get(p) == PageState::Resident {
                state.table.set(p, snap.initial(p));
            }
        }
        self.discard_pages(&resident);
        self.shared.stats.pages_dropped_clean.fetch_add(resident.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.sync_image()?;
        Ok(resident.len())
    }
}
