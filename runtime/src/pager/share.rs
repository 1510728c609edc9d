//! Lending a memory to another node: offloaded calls whose memory follows by pages.
//!
//! ```text
//!   compute node (lender), guest stopped in a host call
//!     lend   ─► written pages → the memory's own region R (marked backed, kept resident)
//!                tickets: R writable, the snapshot's region S read-only
//!                page map: runs of Zero | Snapshot (S) | Region (R)   ─► the descriptor
//!   storage node (borrower), a fresh instance of the same function
//!     borrow ─► attach both tickets; every page takes its source's state (Image from S,
//!                Remote from R, Zero) and faults in on touch like any paged memory
//!     call   ─► …
//!     give_back ─► the pages it wrote (not files mapped in) → R; their list ─► the reply
//!   lender
//!     take_back ─► those pages become Remote (dropped here, they fault back from R on touch)
//!     end_lend  ─► tickets revoked
//! ```
//! A page the lent call or the borrower changed is *lent dirty*: R holds a version the initial
//! state does not, so the next reset restores it (whether it faulted back or not) and never takes
//! it for a clean copy.
//!
//! On `--fault-path kmod` the module serves every fault from its store, so what the store holds
//! must follow: a borrower's store takes the lent pages when it borrows (read at once, not on
//! touch), and the lender's takes the pages the borrower changed when they are taken back.

use ebb_memnode::{PAGE_SIZE, RegionId, Ticket};

use super::snapshot::Snapshot;
use super::{MemoryHandle, OFFLOAD_BATCH, PageState, PagerError, sys};

/// Where a page of a lent memory is, for the node that borrows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSource {
    /// All zero.
    Zero,
    /// The initial state's page, in the snapshot's region.
    Snapshot,
    /// In the memory's own region.
    Region,
}

/// Consecutive pages with one source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRun {
    pub start: usize,
    pub len: usize,
    pub source: PageSource,
}

/// A memory as another node borrows it: its size, where each page is, and the tickets that let
/// the borrower read the snapshot's region and read and write the memory's own.
#[derive(Clone, PartialEq, Eq)]
pub struct LentMemory {
    pub pages: usize,
    pub region: RegionId,
    pub region_ticket: Ticket,
    pub snapshot: RegionId,
    pub snapshot_ticket: Ticket,
    /// Runs of non-zero pages (ascending, not overlapping); every other page is zero.
    pub runs: Vec<PageRun>,
}

impl std::fmt::Debug for LentMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tickets.
        f.debug_struct("LentMemory")
            .field("pages", &self.pages)
            .field("region", &self.region)
            .field("snapshot", &self.snapshot)
            .field("runs", &self.runs.len())
            .finish_non_exhaustive()
    }
}

impl MemoryHandle {
    /// Resident pages written since they were last protected (ascending); with `reprotect`, they
    /// are protected again.
    pub(super) fn written_resident(&self, reprotect: bool) -> Result<Vec<usize>, PagerError> {
        let state = &self.state;
        if let Some(k) = self.kernel() {
            return self.kernel_written(k);
        }
        let len = state.accessible_pages() * PAGE_SIZE;
        let mut ranges = Vec::new();
        sys::scan_written(state.base(), state.base() + len, reprotect, &mut ranges).map_err(|source| PagerError::Setup { len, source })?;
        let mut pages = Vec::new();
        for r in ranges {
            let (start, end) = ((r.start - state.base()) / PAGE_SIZE, (r.end - state.base()) / PAGE_SIZE);
            pages.extend((start..end).filter(|&p| state.table.get(p) == PageState::Resident));
        }
        Ok(pages)
    }

    fn note_lent_dirty(&self, pages: &[usize]) {
        self.state.lent_dirty.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(pages);
    }

    /// Lends this memory, in the middle of a call whose guest is stopped in a host call: the
    /// pages the call wrote go to the memory's region (and stay resident), and the returned
    /// description — with tickets to both regions — lets another node run on the same memory.
    /// Refused for a memory without an initial state, or with a file mapped in.
    pub fn lend(&self) -> Result<LentMemory, PagerError> {
        if let Some(why) = self.poisoned() {
            return Err(PagerError::Poisoned(why));
        }
        let state = &self.state;
        let snap = state.snapshot.get().ok_or(PagerError::Snapshot("lending a memory needs its initial state (a captured snapshot)"))?;
        if !state.shared_maps.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            return Err(PagerError::Snapshot("a memory with a state value or object mapped in cannot be lent"));
        }
        // A lent memory's pages move through its region: anonymous memory only (see `image`).
        self.unmap_image()?;
        // A read-around still arriving must not land while the page map is made.
        state.fence();
        let pages = state.accessible_pages();
        let written = self.written_resident(false)?;
        let region = self.ensure_region()?;
        let mut to_region = vec![false; pages];
        let mut zero = vec![false; pages];
        let mut buf = vec![0u8; OFFLOAD_BATCH.min(written.len()) * PAGE_SIZE];
        for batch in written.chunks(OFFLOAD_BATCH) {
            let mut sent = Vec::with_capacity(batch.len());
            for &p in batch {
                // SAFETY: page `p` is resident inside the accessible part of the memory, and the
                // guest is stopped, so nothing writes it while it is read.
                let bytes = unsafe { std::slice::from_raw_parts((state.base() + p * PAGE_SIZE) as *const u8, PAGE_SIZE) };
                if sys::is_zero(bytes) {
                    zero[p] = true;
                } else {
                    buf[sent.len() * PAGE_SIZE..(sent.len() + 1) * PAGE_SIZE].copy_from_slice(bytes);
                    sent.push(p as u64);
                    to_region[p] = true;
                }
            }
            if !sent.is_empty() {
                self.shared.transport.write_pages(region, &sent, &buf[..sent.len() * PAGE_SIZE])?;
                let stats = &self.shared.stats;
                stats.pages_offloaded.fetch_add(sent.len() as u64, std::sync::atomic::Ordering::Relaxed);
                stats.bytes_out.fetch_add((sent.len() * PAGE_SIZE) as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        // Written pages stay written (the reset finds them) and are lent dirty: the region's
        // copy is the call's, not the initial state.
        for &p in &written {
            if to_region[p] {
                state.table.set_backed(p, PageState::Resident);
            }
        }
        self.note_lent_dirty(&written);
        let source = |p: usize| match state.table.get(p) {
            PageState::Zero => PageSource::Zero,
            PageState::Image => PageSource::Snapshot,
            PageState::Remote => PageSource::Region,
            PageState::Resident if to_region[p] => PageSource::Region,
            PageState::Resident if zero[p] => PageSource::Zero,
            // Not written since installed: what it was filled from.
            PageState::Resident if state.table.is_backed(p) => PageSource::Region,
            PageState::Resident if snap.holds(p) => PageSource::Snapshot,
            PageState::Resident => PageSource::Zero,
        };
        let mut runs: Vec<PageRun> = Vec::new();
        for p in 0..pages {
            let s = source(p);
            if s == PageSource::Zero {
                continue;
            }
            match runs.last_mut() {
                Some(r) if r.source == s && r.start + r.len == p => r.len += 1,
                _ => runs.push(PageRun { start: p, len: 1, source: s }),
            }
        }
        let transport = &self.shared.transport;
        let region_ticket = transport.grant(region, true)?;
        let snapshot_ticket = match transport.grant(snap.region(), false) {
            Ok(t) => t,
            Err(e) => {
                let _ = transport.revoke(region, &region_ticket);
                return Err(e.into());
            }
        };
        Ok(LentMemory { pages, region, region_ticket, snapshot: snap.region(), snapshot_ticket, runs })
    }

    /// After the borrower returned: `changed` pages (which it wrote to the memory's region) are
    /// dropped here and fault back from the region on touch. The memory must already have the
    /// borrower's size (grown by the caller), and the guest still be stopped.
    pub fn take_back(&self, changed: &[usize]) -> Result<(), PagerError> {
        let state = &self.state;
        state.fence();
        let pages = state.accessible_pages();
        if changed.iter().any(|&p| p >= pages) {
            return Err(PagerError::Snapshot("the borrower changed a page beyond the memory's size"));
        }
        // The borrower may have grown the region: the owner's view of its size (and an RDMA
        // registration) is renewed.
        self.ensure_region()?;
        // On the kmod path the table learns what was faulted in since (a page the module holds
        // must be dropped like any resident one).
        self.sync_faults()?;
        let _dropping = self.kernel_drop_guard();
        let mut resident = Vec::new();
        for &p in changed {
            if state.table.get(p) == PageState::Resident {
                resident.push(p);
            }
            state.table.set_backed(p, PageState::Remote);
        }
        if let Some(k) = self.kernel() {
            // The module's store holds the region's old copies of them: it takes the new ones.
            self.kernel_rewritten(k, changed)?;
        }
        self.discard_pages(&resident);
        self.note_lent_dirty(changed);
        self.state.returned.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(changed);
        Ok(())
    }

    /// Withdraws the tickets of `lent` (after the borrower returned or failed).
    pub fn end_lend(&self, lent: &LentMemory) {
        let transport = &self.shared.transport;
        for (region, ticket) in [(lent.region, &lent.region_ticket), (lent.snapshot, &lent.snapshot_ticket)] {
            if let Err(e) = transport.revoke(region, ticket) {
                tracing::warn!("could not revoke the ticket to memnode region {region} (it ends with the region): {e}");
            }
        }
    }

    /// After a borrower failed part way (it may have written any page of the region before its
    /// tickets were revoked): withdraws the tickets, and makes every page whose region copy could
    /// be taken for current lent dirty, so the reset restores it and nothing reads it back.
    pub fn abandon_lend(&self, lent: &LentMemory) {
        self.end_lend(lent);
        let state = &self.state;
        let mut suspect = Vec::new();
        for p in 0..state.accessible_pages() {
            match state.table.get(p) {
                PageState::Remote => suspect.push(p),
                PageState::Resident if state.table.is_backed(p) => suspect.push(p),
                _ => {}
            }
        }
        self.note_lent_dirty(&suspect);
    }

    /// Makes this fresh, idle memory (already of `lent.pages` pages) the borrowed memory `lent`:
    /// each page faults in from where the lender said it is. The regions stay the lender's (never
    /// freed here). Fails — before anything is read — when the tickets do not open them.
    pub fn borrow(&self, lent: &LentMemory) -> Result<(), PagerError> {
        let state = &self.state;
        if state.accessible_pages() != lent.pages {
            return Err(PagerError::Snapshot("a borrowed memory must have the lent memory's size"));
        }
        if state.snapshot.get().is_some() || state.region().is_some() {
            return Err(PagerError::Snapshot("only a fresh memory can borrow"));
        }
        let transport = &self.shared.transport;
        transport.attach(lent.snapshot, &lent.snapshot_ticket)?;
        if !transport.attach(lent.region, &lent.region_ticket)? {
            return Err(PagerError::Snapshot("the lent memory's region was granted read-only"));
        }
        state.fence();
        // On the kmod path the table learns first what instantiation wrote (data segments): the
        // module holds those pages, and they must go like any resident one.
        self.sync_faults()?;
        let _dropping = self.kernel_drop_guard();
        let mut resident = Vec::new();
        state.table.for_each_in(0..lent.pages, PageState::Resident, |p| resident.push(p));
        for &p in &resident {
            state.table.set(p, PageState::Zero);
        }
        self.discard_pages(&resident);
        let mut in_snapshot = vec![false; lent.pages];
        for r in &lent.runs {
            if r.start.checked_add(r.len).is_none_or(|end| end > lent.pages) {
                return Err(PagerError::Snapshot("a page run lies beyond the lent memory"));
            }
            for (p, held) in in_snapshot.iter_mut().enumerate().skip(r.start).take(r.len) {
                match r.source {
                    PageSource::Snapshot => {
                        *held = true;
                        state.table.set(p, PageState::Image);
                    }
                    PageSource::Region => state.table.set(p, PageState::Remote),
                    PageSource::Zero => {}
                }
            }
        }
        state.region_borrowed.store(true, std::sync::atomic::Ordering::Relaxed);
        *state.region.lock().unwrap_or_else(|e| e.into_inner()) = Some((lent.region, (lent.pages * PAGE_SIZE) as u64));
        let snap = Snapshot::borrowed(lent.pages * PAGE_SIZE, in_snapshot, lent.snapshot, transport.clone());
        self.track(&std::sync::Arc::new(snap))?;
        if let Some(k) = self.kernel() {
            // The module serves every fault from its store, which tracking filled with the
            // initial state: the pages the lender's region holds go in too (read now, not on
            // touch), and the pages the module still holds (read-around beside the
            // instantiation's writes) go, so that every page reads the lent memory next.
            let mut remote = Vec::new();
            state.table.for_each_in(0..lent.pages, PageState::Remote, |p| remote.push(p));
            self.kernel_rewritten(k, &remote)?;
            k.evict_all(lent.pages)?;
        }
        Ok(())
    }

    /// On the borrower, after the call: writes the pages the call wrote (not files it mapped in)
    /// to the lender's region, growing it when the memory grew, and returns their list.
    pub fn give_back(&self) -> Result<Vec<usize>, PagerError> {
        if let Some(why) = self.poisoned() {
            return Err(PagerError::Poisoned(why));
        }
        let state = &self.state;
        if !state.region_borrowed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(PagerError::Snapshot("give_back is for a borrowed memory"));
        }
        state.fence();
        let written = self.written_resident(false)?;
        let size = (state.accessible_pages() * PAGE_SIZE) as u64;
        let region = {
            let mut r = state.region.lock().unwrap_or_else(|e| e.into_inner());
            let (id, have) = r.ok_or(PagerError::Snapshot("a borrowed memory without a region"))?;
            if size > have {
                self.shared.transport.resize(id, size)?;
                *r = Some((id, size));
            }
            id
        };
        let mut buf = vec![0u8; OFFLOAD_BATCH.min(written.len()) * PAGE_SIZE];
        for batch in written.chunks(OFFLOAD_BATCH) {
            for (i, &p) in batch.iter().enumerate() {
                // SAFETY: page `p` is resident inside the accessible memory; the call is over.
                let bytes = unsafe { std::slice::from_raw_parts((state.base() + p * PAGE_SIZE) as *const u8, PAGE_SIZE) };
                buf[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].copy_from_slice(bytes);
            }
            let indexes: Vec<u64> = batch.iter().map(|&p| p as u64).collect();
            self.shared.transport.write_pages(region, &indexes, &buf[..batch.len() * PAGE_SIZE])?;
        }
        let stats = &self.shared.stats;
        stats.pages_offloaded.fetch_add(written.len() as u64, std::sync::atomic::Ordering::Relaxed);
        stats.bytes_out.fetch_add((written.len() * PAGE_SIZE) as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(written)
    }

    /// Takes the pages lent dirty since the last reset (see the module doc), counting the
    /// borrower's pages the call faulted back.
    pub(super) fn take_lent_dirty(&self) -> Vec<usize> {
        let returned = std::mem::take(&mut *self.state.returned.lock().unwrap_or_else(|e| e.into_inner()));
        let back = returned.iter().filter(|&&p| self.state.table.get(p) == PageState::Resident).count();
        self.shared.stats.lent_faulted_back.fetch_add(back as u64, std::sync::atomic::Ordering::Relaxed);
        std::mem::take(&mut *self.state.lent_dirty.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
