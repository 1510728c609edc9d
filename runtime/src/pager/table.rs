//! The per-memory page table: where each 4 KiB page of a linear memory is.
//!
//! One byte per page, allocated lazily in chunks so a 4 GiB reservation costs a few pointers until
//! pages are actually used. Only the memory's fault handler (one thread at a time, see
//! `pager::handler`) and the memory's owner while the instance is idle change entries, so plain
//! relaxed atomics suffice.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// Where a page is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PageState {
    /// Never touched, or known to be all zero: served with UFFDIO_ZEROPAGE, never sent.
    Zero = 0,
    /// Mapped in this process.
    Resident = 1,
    /// On the memnode, at the same page index of the memory's region.
    Remote = 2,
    /// Equal to the same page of the memory's snapshot (its initial state): filled from the
    /// function's local image while it is warm, else from the snapshot's memnode region.
    Image = 3,
}

/// Set beside the state when the memnode holds a current copy of the page (in the memory's own
/// region): the page was fetched from there and, unless written since, can be dropped without a
/// write-back.
const BACKED: u8 = 0b100;
const STATE: u8 = 0b011;

const CHUNK_PAGES: usize = 4096; // 16 MiB of memory per chunk

#[derive(Debug)]
pub struct PageTable {
    chunks: Box<[OnceLock<Box<[AtomicU8]>>]>,
    /// Pages in each state (indexed by the state's value; Zero's entry is unused), kept as entries
    /// change so that counting is O(1).
    counts: [AtomicUsize; 4],
}

impl PageTable {
    /// A table for `pages` pages, all [`PageState::Zero`].
    pub fn new(pages: usize) -> PageTable {
        let chunks = (0..pages.div_ceil(CHUNK_PAGES)).map(|_| OnceLock::new()).collect();
        PageTable { chunks, counts: Default::default() }
    }

    pub fn get(&self, page: usize) -> PageState {
        match self.chunks[page / CHUNK_PAGES].get() {
            None => PageState::Zero,
            Some(chunk) => match chunk[page % CHUNK_PAGES].load(Ordering::Relaxed) & STATE {
                1 => PageState::Resident,
                2 => PageState::Remote,
                3 => PageState::Image,
                _ => PageState::Zero,
            },
        }
    }

    /// Sets a page's state; the memnode copy, if any, is no longer known to be current.
    pub fn set(&self, page: usize, state: PageState) {
        self.store(page, state as u8);
    }

    /// Sets a page's state, noting that the memnode holds a current copy of it.
    pub fn set_backed(&self, page: usize, state: PageState) {
        self.store(page, state as u8 | BACKED);
    }

    /// Whether the memnode holds a current copy of the page (see [`PageTable::set_backed`]).
    pub fn is_backed(&self, page: usize) -> bool {
        self.chunks[page / CHUNK_PAGES].get().is_some_and(|c| c[page % CHUNK_PAGES].load(Ordering::Relaxed) & BACKED != 0)
    }

    fn store(&self, page: usize, value: u8) {
        let chunk = &self.chunks[page / CHUNK_PAGES];
        if value == PageState::Zero as u8 && chunk.get().is_none() {
            return;
        }
        let chunk = chunk.get_or_init(|| (0..CHUNK_PAGES).map(|_| AtomicU8::new(0)).collect());
        let old = chunk[page % CHUNK_PAGES].swap(value, Ordering::Relaxed) & STATE;
        let new = value & STATE;
        if old != new {
            self.counts[usize::from(old)].fetch_sub(1, Ordering::Relaxed);
            self.counts[usize::from(new)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Pages in `state` in the whole table, in O(1). (Zero is not counted: use the size.)
    pub fn total(&self, state: PageState) -> usize {
        assert!(state != PageState::Zero, "zero pages are the rest of the memory");
        self.counts[state as usize].load(Ordering::Relaxed)
    }

    /// Calls `f(page)` for every page in `range` in `state`, skipping chunks never touched.
    pub fn for_each_in(&self, range: std::ops::Range<usize>, state: PageState, mut f: impl FnMut(usize)) {
        let mut page = range.start;
        while page < range.end {
            let c = page / CHUNK_PAGES;
            let chunk_end = ((c + 1) * CHUNK_PAGES).min(range.end);
            match self.chunks[c].get() {
                None if state != PageState::Zero => page = chunk_end,
                _ => {
                    for p in page..chunk_end {
                        if self.get(p) == state {
                            f(p);
                        }
                    }
                    page = chunk_end;
                }
            }
        }
    }

    /// Counts pages in `state` within `range`.
    pub fn count(&self, range: std::ops::Range<usize>, state: PageState) -> usize {
        let mut n = 0;
        self.for_each_in(range, state, |_| n += 1);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_lazy_chunks() {
        let t = PageTable::new(3 * CHUNK_PAGES + 5);
        assert_eq!(t.get(10), PageState::Zero);
        t.set(10, PageState::Remote);
        t.set(2 * CHUNK_PAGES + 1, PageState::Resident);
        t.set(3 * CHUNK_PAGES + 4, PageState::Zero); // no chunk allocated for this
        assert!(t.chunks[3].get().is_none());
        assert_eq!(t.get(10), PageState::Remote);
        assert_eq!(t.count(0..3 * CHUNK_PAGES + 5, PageState::Resident), 1);
        assert_eq!((t.total(PageState::Resident), t.total(PageState::Remote)), (1, 1));
        assert_eq!(t.count(0..3 * CHUNK_PAGES + 5, PageState::Remote), 1);
        let mut seen = vec![];
        t.for_each_in(0..3 * CHUNK_PAGES + 5, PageState::Remote, |p| seen.push(p));
        assert_eq!(seen, vec![10]);
        assert!(!t.is_backed(10));
        t.set_backed(10, PageState::Resident);
        assert_eq!(t.get(10), PageState::Resident);
        assert!(t.is_backed(10));
        t.set(10, PageState::Remote);
        assert!(!t.is_backed(10));
        assert_eq!((t.total(PageState::Resident), t.total(PageState::Remote), t.total(PageState::Image)), (1, 1, 0));
    }
}
