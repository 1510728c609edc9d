//! Offload: a memory's pages go to its own memnode region and leave this host.
//!
//! Only resident pages travel, and only those with content: all-zero pages are dropped (they come
//! back as zero pages), and pages the memory's region already holds unchanged (fetched from it and
//! not written since, as the write-protect tracking tells) are dropped without a write-back.

use std::sync::atomic::Ordering;

use ebb_memnode::{PAGE_SIZE, RegionId, Transport, TransportError};

use super::{MemoryHandle, OFFLOAD_BATCH, PageState, PagerError, sys};

/// What an offload moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadReport {
    /// Non-zero pages written to the memnode and dropped locally.
    pub pages_sent: u64,
    /// All-zero pages dropped locally without being sent.
    pub zero_pages_dropped: u64,
    /// Pages the memnode already held unchanged, dropped locally without being sent.
    pub clean_pages_dropped: u64,
}


impl MemoryHandle {
    /// Those of `pages` (ascending) that are resident, or every resident page for `None`.
    pub(super) fn resident_among(&self, pages: Option<&[usize]>) -> Vec<usize> {
        let state = &self.state;
        self.sync_or_poison();
        if state.image_pages() > 0 {
            // With a mapped image the page table does not see the image's pages: the mapping does.
            let mapped = self.resident_pages();
            return match pages {
                None => mapped,
                Some(pages) => pages.iter().copied().filter(|p| mapped.binary_search(p).is_ok()).collect(),
            };
        }
        let limit = state.accessible_pages();
        let mut resident = Vec::new();
        match pages {
            None => state.table.for_each_in(0..limit, PageState::Resident, |p| resident.push(p)),
            Some(pages) => {
                resident.extend(pages.iter().copied().filter(|&p| p < limit && state.table.get(p) == PageState::Resident));
            }
        }
        resident
    }

    pub(super) fn ensure_region(&self) -> Result<RegionId, PagerError> {
        let size = (self.state.accessible_pages() * PAGE_SIZE) as u64;
        let mut region = self.state.region.lock().unwrap_or_else(|e| e.into_inner());
        Ok(cover_region(&*self.shared.transport, &mut region, size, |_| size)?.0)
    }

    /// Sends every resident non-zero page to the memnode and drops all resident pages locally;
    /// they fault back on the next touch. All-zero pages are dropped without being sent, and so
    /// are pages fetched back from the memnode and not written since (dirty tracking).
    ///
    /// The instance must be idle: no guest or host code may touch the memory during the call.
    pub fn offload(&self) -> Result<OffloadReport, PagerError> {
        self.offload_pages(None, true)
    }

    /// [`MemoryHandle::offload`] of only those of `pages` (ascending) that are resident, or of
    /// every resident page for `None`. Without `dirty_tracking` every non-zero page is sent, as a
    /// swap device that cannot tell clean pages would (the FaaSMem baseline).
    pub fn offload_pages(&self, pages: Option<&[usize]>, dirty_tracking: bool) -> Result<OffloadReport, PagerError> {
        if let Some(why) = self.poisoned() {
            return Err(PagerError::Poisoned(why));
        }
        // Pages go to the memnode only from anonymous memory (see `image`).
        self.unmap_image()?;
        let state = &self.state;
        state.fence();
        let limit = state.accessible_pages();
        let resident = self.resident_among(pages);
        if resident.is_empty() {
            return Ok(OffloadReport::default());
        }
        // Written since it was last installed: PAGEMAP_SCAN on a tracked memory (re-protecting
        // what it reports). Untracked memories have never been offloaded, so nothing is backed.
        let mut written = std::collections::HashSet::new();
        if let Some(k) = self.kernel() {
            // The module's dirty set (its evictions below clear it page by page).
            written.extend(self.kernel_written(k)?);
        } else if dirty_tracking && state.tracked() {
            let mut ranges = Vec::new();
            let len = limit * PAGE_SIZE;
            sys::scan_written(state.base(), state.base() + len, true, &mut ranges)
                .map_err(|source| PagerError::Setup { len, source })?;
            for r in ranges {
                written.extend((r.start - state.base()) / PAGE_SIZE..(r.end - state.base()) / PAGE_SIZE);
            }
        }
        let region = self.ensure_region()?;
        let mut report = OffloadReport::default();
        let mut buf = vec![0u8; OFFLOAD_BATCH.min(resident.len()) * PAGE_SIZE];
        for batch in resident.chunks(OFFLOAD_BATCH) {
            let mut sent = Vec::with_capacity(batch.len());
            let mut zeros = Vec::new();
            let mut clean = Vec::new();
            for &p in batch {
                if dirty_tracking && state.table.is_backed(p) && !written.contains(&p) {
                    clean.push(p);
                    continue;
                }
                // SAFETY: page `p` is inside the accessible part of the reservation and resident;
                // the instance is idle, so nothing writes it while it is read.
                let bytes = unsafe { std::slice::from_raw_parts((state.base() + p * PAGE_SIZE) as *const u8, PAGE_SIZE) };
                if sys::is_zero(bytes) {
                    zeros.push(p);
                } else {
                    let i = sent.len();
                    buf[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].copy_from_slice(bytes);
                    sent.push(p);
                }
            }
            let indexes: Vec<u64> = sent.iter().map(|&p| p as u64).collect();
            if !indexes.is_empty() {
                self.shared.transport.write_pages(region, &indexes, &buf[..sent.len() * PAGE_SIZE])?;
            }
            if let Some(k) = self.kernel() {
                let mut at = 0;
                for run in sent.chunk_by(|a, b| *b == *a + 1) {
                    k.sent(run[0], &buf[at * PAGE_SIZE..(at + run.len()) * PAGE_SIZE])?;
                    at += run.len();
                }
            }
            // Mark first, then drop: a fault after the drop must find the new state.
            let dropping = self.kernel_drop_guard();
            for &p in sent.iter().chain(&clean) {
                state.table.set_backed(p, PageState::Remote);
            }
            for &p in &zeros {
                state.table.set(p, PageState::Zero);
            }
            self.discard_pages(&sent);
            self.discard_pages(&zeros);
            self.discard_pages(&clean);
            drop(dropping);
            report.pages_sent += sent.len() as u64;
            report.zero_pages_dropped += zeros.len() as u64;
            report.clean_pages_dropped += clean.len() as u64;
        }
        // From now on, pages installed here are write-protected so the next offload sees which
        // ones were written.
        state.write_tracking.store(true, Ordering::Relaxed);
        let stats = &self.shared.stats;
        stats.pages_offloaded.fetch_add(report.pages_sent, Ordering::Relaxed);
        stats.pages_zero_dropped.fetch_add(report.zero_pages_dropped, Ordering::Relaxed);
        stats.pages_dropped_clean.fetch_add(report.clean_pages_dropped, Ordering::Relaxed);
        stats.bytes_out.fetch_add(report.pages_sent * PAGE_SIZE as u64, Ordering::Relaxed);
        Ok(report)
    }

}

/// Makes a memnode region — `region`: its id and size in bytes, or None before its first use —
/// hold at least `need` bytes: allocates it, or resizes it, to `size(have)` bytes (`have` is 0
/// before the allocation). Returns its id and whether it was allocated or resized (which re-keys
/// an RDMA region).
pub(super) fn cover_region(
    transport: &dyn Transport,
    region: &mut Option<(RegionId, u64)>,
    need: u64,
    size: impl FnOnce(u64) -> u64,
) -> Result<(RegionId, bool), TransportError> {
    match *region {
        Some((id, have)) if have >= need => Ok((id, false)),
        Some((id, have)) => {
            let bytes = size(have);
            transport.resize(id, bytes)?;
            *region = Some((id, bytes));
            Ok((id, true))
        }
        None => {
            let bytes = size(0);
            let id = transport.alloc(bytes)?;
            *region = Some((id, bytes));
            Ok((id, true))
        }
    }
}
