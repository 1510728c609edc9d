//! Resolving a fault, whichever path delivered it: the page table says where the page is, and
//! the fill puts it there. The paths — handler threads reading uffd events (`thread`), the
//! faulting thread's own SIGBUS handler (`sigbus`) — only deliver faults here; nothing else in
//! the pager knows which one runs.
//!
//! ```text
//!     Zero page     → UFFDIO_ZEROPAGE / a zero-filled copy
//!     Image page    → a run from the local image, or a fetch from the snapshot's region
//!     Remote page   → a fetch of the page and its read-around from the memory's region,
//!                     installed frame by frame as the frames arrive
//! ```
//! A fetch that fails (memnode gone, timeout, bad checksum) never installs the remote bytes: the
//! faulting thread is released with a zero page, the memory is *poisoned* — every later fault on it
//! is answered with zeros at once and [`super::MemoryHandle::poisoned`] reports why — and the
//! pager's interrupt hook fires so the executor can stop the guest; the call then ends in an error.
//!
//! A fault's read-around may still be arriving when the guest, resumed by the first frame, has
//! finished its call and the memory is reset, evicted or offloaded. Those operations *fence* the
//! memory first (a generation number under the install lock); a frame whose fault began before the
//! fence is not installed. So nothing a fetch brought in can land after the memory has moved on.
//!
//! Locks taken here (the install lock, the fault log, the transport's pool) are never held by
//! code that touches linear memory, so neither a handler thread nor an interrupted faulting
//! thread can wait on itself; and serving a fault allocates nothing on its common paths.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ebb_memnode::{PAGE_SIZE, RegionId};

use super::{MemoryState, PageState, Poison, Shared, ZEROS, sys};

/// Where the content of non-resident pages comes from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// A memnode region: the memory's own (offloaded pages) or its snapshot's (initial image).
    Region(RegionId),
    /// The snapshot's local copy of the initial image: the run's bytes.
    Local(&'a [u8]),
    /// An inconsistency: fail the fault with this reason.
    Missing(&'static str),
}

/// The scratch space of one fault: the page list and the bytes of the largest fetch (the
/// faulting page and its read-around). Made before any fault, so that serving one allocates
/// nothing (the in-thread path serves from inside a signal handler).
pub(super) struct FaultBuf {
    pages: Vec<u64>,
    bytes: Vec<u8>,
}

impl FaultBuf {
    pub(super) fn new(readaround: usize) -> FaultBuf {
        FaultBuf { pages: Vec::with_capacity(readaround + 1), bytes: vec![0; (readaround + 1) * PAGE_SIZE] }
    }
}

impl Shared {
    pub(super) fn fire_interrupt(&self) {
        if let Some(f) = self.interrupt.get() {
            f();
        }
    }

    pub(super) fn release_with_zero(&self, mem: &MemoryState, addr: usize) {
        let page_addr = addr & !(PAGE_SIZE - 1);
        if mem.kernel.is_some() {
            // The module's page cannot be had: a private one goes over it (the memory is poisoned,
            // never used again).
            if let Err(e) = mem.reservation.map_anonymous(page_addr - mem.base(), PAGE_SIZE) {
                tracing::error!("cannot release a faulting thread at {page_addr:#x}: {e}");
            }
            return;
        }
        // A copy, not the zero page: UFFDIO_ZEROPAGE refuses (EEXIST) a page whose entry holds a
        // write-protect marker (tracked memory that was write-protected while empty), and the
        // faulting thread would fault on it for ever.
        // SAFETY: `page_addr` is a page of `mem`'s reservation, registered with its uffd.
        if let Err(e) = unsafe { sys::install(&mem.uffd, sys::Fill::Copy(ZEROS.as_ptr()), page_addr, PAGE_SIZE) } {
            tracing::error!("cannot release a faulting thread at {page_addr:#x}: {e}");
        }
        mem.table.set((page_addr - mem.base()) / PAGE_SIZE, PageState::Resident);
    }

    pub(super) fn fail(&self, mem: &MemoryState, why: Poison) {
        self.stats.faults_failed.fetch_add(1, Ordering::Relaxed);
        mem.poison(why);
        self.fire_interrupt();
    }

    /// Resolves a fault at `addr` of `mem` (a write if `write`): on return the page is mapped, or
    /// the memory is poisoned and the page is zero.
    pub(super) fn resolve(&self, mem: &MemoryState, addr: usize, write: bool, buf: &mut FaultBuf) {
        let page = (addr - mem.base()) / PAGE_SIZE;
        let page_addr = mem.base() + page * PAGE_SIZE;
        if mem.poisoned.load(Ordering::Acquire) {
            self.release_with_zero(mem, addr);
            return;
        }
        // Taken before the page's state is read: a fence after this makes the fill stand down.
        let generation = mem.generation();
        match mem.table.get(page) {
            PageState::Resident => {
                self.stats.faults_spurious.fetch_add(1, Ordering::Relaxed);
                let _ = mem.uffd.wake(page_addr as *mut _, PAGE_SIZE);
            }
            PageState::Zero => {
                self.stats.faults_zero.fetch_add(1, Ordering::Relaxed);
                mem.log_faults(page..page + 1);
                mem.table.set(page, PageState::Resident);
                // A read maps the shared zero page; a write gets a private zero-filled page at
                // once, saving the copy-on-write fault that would follow the zero page. In
                // tracked memory a read installs a clean (write-protected) private page instead,
                // so that a later write is noticed.
                // Under a mapped image, writes are told apart by the page's kind (private, not the
                // zero page), so a read maps the zero page there.
                let fill = match (write, mem.tracked() && !mem.in_image(page)) {
                    (true, _) => sys::Fill::Copy(ZEROS.as_ptr()),
                    (false, true) => sys::Fill::CopyClean(ZEROS.as_ptr()),
                    (false, false) => sys::Fill::ZeroPage,
                };
                // SAFETY: the page is inside the registered reservation; ZEROS is one page long.
                if let Err(e) = unsafe { sys::install(&mem.uffd, fill, page_addr, PAGE_SIZE) } {
                    self.fail(mem, Poison::Install(Arc::new(e)));
                }
            }
            PageState::Image if mem.in_image(page) => self.fill_image(mem, page, buf),
            state @ (PageState::Remote | PageState::Image) => {
                // Read-around: the following pages in the same state, up to the configured count.
                let limit = (page + 1 + self.config.readaround).min(mem.accessible_pages());
                let mut run = 1;
                while page + run < limit && mem.table.get(page + run) == state {
                    run += 1;
                }
                let fill = Fill { mem, page, previous: state, generation, addr };
                match (state, mem.snapshot.get()) {
                    (PageState::Image, Some(snap)) => {
                        // A reference held while installing, so a drop cannot free the image under us.
                        let local = snap.local();
                        match local.as_ref().filter(|l| l.holds(page)) {
                            Some(image) => {
                                // From the local image: the run of pages it holds.
                                let mut held = 1;
                                while held < run && image.holds(page + held) {
                                    held += 1;
                                }
                                self.fill_run(&fill, held, Source::Local(image.pages(page, held)), buf);
                            }
                            None => self.fill_run(&fill, run, Source::Region(snap.region()), buf),
                        }
                    }
                    (PageState::Image, None) => {
                        let why = "the page table says image but the memory has no snapshot";
                        self.fill_run(&fill, run, Source::Missing(why), buf);
                    }
                    _ => {
                        let source = match mem.region() {
                            Some(region) => Source::Region(region),
                            None => Source::Missing("the page table says remote but the memory has no region"),
                        };
                        self.fill_run(&fill, run, source, buf);
                    }
                }
            }
        }
    }

    /// A fault on a hole of the image a memory maps (a non-zero initial page the image lacks):
    /// the page and its read-around — the following pages the image lacks too — are fetched from
    /// the snapshot's region into the image, frame by frame, and the access, retried, hits the
    /// page cache. The image only ever gets the initial state's bytes, so no fence is needed: a
    /// late frame lands in an image, never in a memory that moved on.
    fn fill_image(&self, mem: &MemoryState, page: usize, buf: &mut FaultBuf) {
        let page_addr = mem.base() + page * PAGE_SIZE;
        let (Some(image), Some(snap)) = (mem.mapped_image(), mem.snapshot.get()) else {
            self.fail(mem, Poison::Inconsistent("a fault under a mapped image, but no image or snapshot"));
            self.release_with_zero(mem, page_addr);
            return;
        };
        if image.holds(page) {
            // Filled meanwhile (by another memory of the function): the retry finds it.
            self.stats.faults_spurious.fetch_add(1, Ordering::Relaxed);
            let _ = mem.uffd.wake(page_addr as *mut _, PAGE_SIZE);
            return;
        }
        let limit = (page + 1 + self.config.readaround).min(mem.image_pages());
        let mut run = 1;
        while page + run < limit && mem.table.get(page + run) == PageState::Image && !image.holds(page + run) {
            run += 1;
        }
        self.stats.faults_remote.fetch_add(1, Ordering::Relaxed);
        let FaultBuf { pages, bytes } = buf;
        pages.clear();
        pages.extend((page..page + run).map(|p| p as u64));
        let bytes = &mut bytes[..run * PAGE_SIZE];
        let mut failed: Option<Poison> = None;
        let mut filled = 0;
        let mut ready = |range: std::ops::Range<usize>, bytes: &[u8]| {
            self.stats.pages_fetched.fetch_add(range.len() as u64, Ordering::Relaxed);
            self.stats.bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            if failed.is_some() {
                return;
            }
            match image.put(page + range.start, bytes) {
                Ok(()) => {
                    filled = range.end;
                    // The thread path's faulting thread waits to be woken; the sigbus path's retries.
                    let _ = mem.uffd.wake((page_addr + range.start * PAGE_SIZE) as *mut _, bytes.len());
                }
                Err(e) => failed = Some(Poison::Install(Arc::new(e))),
            }
        };
        let fetched = self.transport.read_pages_streaming(snap.region(), pages, bytes, &mut ready).map_err(|e| Poison::Transport(Arc::new(e)));
        mem.log_faults(page..page + filled);
        if let Some(why) = fetched.err().or(failed) {
            // Pages filled stay filled (they are the initial state's); the call ends in an error.
            self.fail(mem, why);
            if filled == 0 {
                self.release_with_zero(mem, page_addr);
            }
        }
    }

    /// Fills `run` pages from `fill.page` (all in state `fill.previous`) from `source`, installing
    /// them frame by frame as they arrive; on any failure the memory is poisoned and the faulting
    /// thread released. Frames arriving after the memory was fenced are dropped.
    fn fill_run(&self, fill: &Fill<'_>, run: usize, source: Source<'_>, buf: &mut FaultBuf) {
        let Fill { mem, page, previous, generation, addr } = *fill;
        let mut installed = 0;
        let mut failed: Option<Poison> = None;
        let mut fenced = false;
        let mut install = |range: std::ops::Range<usize>, bytes: &[u8]| {
            if failed.is_some() || fenced {
                return;
            }
            match mem.install_if_current(generation, page + range.start, bytes, previous) {
                Ok(true) => installed = range.end,
                Ok(false) if range.start == 0 => {
                    // The faulting page itself: the memory was reset under a guest still waiting
                    // on it, which breaks the owner's contract. Fail rather than guess.
                    failed = Some(Poison::Inconsistent("the memory was reset while a fault on it was being served"));
                }
                Ok(false) => fenced = true,
                Err(e) => failed = Some(Poison::Install(Arc::new(e))),
            }
        };
        let fetched = match source {
            Source::Local(bytes) => {
                // The function's warm initial image, in this process: no network.
                self.stats.faults_image.fetch_add(1, Ordering::Relaxed);
                install(0..run, bytes);
                Ok(())
            }
            Source::Region(region) => {
                self.stats.faults_remote.fetch_add(1, Ordering::Relaxed);
                let FaultBuf { pages, bytes } = buf;
                pages.clear();
                pages.extend((page..page + run).map(|p| p as u64));
                let bytes = &mut bytes[..run * PAGE_SIZE];
                let mut ready = |range: std::ops::Range<usize>, bytes: &[u8]| {
                    self.stats.pages_fetched.fetch_add(range.len() as u64, Ordering::Relaxed);
                    self.stats.bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    install(range, bytes);
                };
                // Pages are installed frame by frame as they arrive, the faulting page's frame
                // first: on the thread path that wakes the guest while the rest of the read-around
                // is in flight; on the sigbus path the guest is the fetcher and resumes after it.
                self.transport.read_pages_streaming(region, pages, bytes, &mut ready).map_err(|e| Poison::Transport(Arc::new(e)))
            }
            Source::Missing(why) => Err(Poison::Inconsistent(why)),
        };
        if fenced {
            self.stats.readaround_fenced.fetch_add(1, Ordering::Relaxed);
        }
        // The read-around counts as touched: the guest reads on in order far more often than not,
        // and a policy that cannot see reads of resident pages must not take those pages for cold.
        mem.log_faults(page..page + installed);
        // Pages not installed keep their state (an install that fails restores its own).
        if let Some(why) = fetched.err().or(failed) {
            if installed == 0 || !fenced {
                self.fail(mem, why);
            }
            if installed == 0 {
                self.release_with_zero(mem, addr);
            }
        }
    }
}

/// One fault's fill: the memory, the faulting page and its state, the generation the fault saw.
#[derive(Clone, Copy)]
struct Fill<'a> {
    mem: &'a MemoryState,
    page: usize,
    previous: PageState,
    generation: u64,
    addr: usize,
}
