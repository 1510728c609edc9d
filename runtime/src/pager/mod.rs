//! Paged linear memory: wasm memories whose pages can live on a memnode and come back on touch.
//!
//! ```text
//!   wasmtime ──MemoryCreator──► PagedMemory ──owns──► Arc<MemoryState>
//!                                                       │ reservation (PROT_NONE + RW prefix)
//!                                                       │ userfaultfd (MISSING mode, whole reservation)
//!                                                       │ PageTable: Zero | Resident | Remote
//!                                                       │ memnode region (allocated at first offload)
//!   Pager ── epoll over every memory's uffd (one-shot) ──► N handler threads
//!            a fault on a Zero page   → UFFDIO_ZEROPAGE
//!            a fault on a Remote page → one batched read of the page + up to `readaround`
//!                                       following Remote pages → one UFFDIO_COPY
//! ```
//!
//! Each memory's uffd is armed one-shot in a shared epoll set, so at most one handler thread
//! serves a given memory at a time (its faults come from one guest thread anyway) while different
//! memories are served in parallel. Page-table entries are therefore changed only by that thread,
//! or by the memory's owner while the instance is idle ([`MemoryHandle::offload`]).
//!
//! A fetch that fails (memnode gone, timeout, bad checksum) never installs the remote bytes: the
//! faulting thread is released with a zero page, the memory is *poisoned* — every later fault on it
//! is answered with zeros at once and [`MemoryHandle::poisoned`] reports the error — and the
//! pager's interrupt hook fires so the executor can stop the guest; the call then ends in an error.

mod snapshot;
mod sys;
mod table;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use ebb_memnode::{RegionId, Transport, TransportError, PAGE_SIZE};
use userfaultfd::{Event, FeatureFlags, ReadWrite, RegisterMode, Uffd, UffdBuilder};
use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

pub use snapshot::{ResetReport, Snapshot};
pub use table::PageState;
use table::PageTable;

const STOP_KEY: u64 = 0;

/// One page of zeros, the source of zero-filled private pages.
static ZEROS: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// How the pager behaves.
#[derive(Clone, Debug)]
pub struct PagerConfig {
    /// Fault-handler threads shared by all memories. Default 2. Each memory is served by one
    /// thread at a time, so more threads help only with more concurrently faulting instances.
    pub fault_threads: usize,
    /// Remote pages fetched after a faulting one in the same batch (only contiguous Remote pages).
    /// Default 15 (64 KiB per fault). 0 fetches only the faulting page.
    pub readaround: usize,
    /// How long an idle handler thread polls for the next fault before it blocks. Waking a blocked
    /// thread costs tens of µs on these VMs (shared/notes/kernel.md), more than the rest of a
    /// fault; polling costs a CPU while faults keep coming. Default 100 µs; zero never polls.
    pub spin: Duration,
}

impl Default for PagerConfig {
    fn default() -> Self {
        PagerConfig { fault_threads: 2, readaround: 15, spin: Duration::from_micros(100) }
    }
}

/// Counters of one pager (all its memories), relaxed atomics.
#[derive(Debug, Default)]
pub struct PagerStats {
    /// Faults on never-touched (or known-zero) pages, served with the zero page.
    pub faults_zero: AtomicU64,
    /// Faults on pages held by the memnode, served by a fetch.
    pub faults_remote: AtomicU64,
    /// Faults on initial-state pages served from the function's local image (no network).
    pub faults_image: AtomicU64,
    /// Fault events for pages already mapped (raced with another install).
    pub faults_spurious: AtomicU64,
    /// Faults whose fetch failed; the memory was poisoned.
    pub faults_failed: AtomicU64,
    /// Pages fetched from the memnode, including read-around.
    pub pages_fetched: AtomicU64,
    /// Non-zero pages sent to the memnode by offloads.
    pub pages_offloaded: AtomicU64,
    /// All-zero pages dropped by offloads without being sent.
    pub pages_zero_dropped: AtomicU64,
    /// Resident pages dropped without a write-back because the memnode already holds them
    /// unchanged (evictions to the initial state, and clean pages of offloads).
    pub pages_dropped_clean: AtomicU64,
    /// Pages installed ahead of a call from a recorded working set.
    pub pages_prefetched: AtomicU64,
    /// Bytes read from / written to the memnode.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagerSnapshot {
    pub faults_zero: u64,
    pub faults_remote: u64,
    pub faults_image: u64,
    pub faults_spurious: u64,
    pub faults_failed: u64,
    pub pages_fetched: u64,
    pub pages_offloaded: u64,
    pub pages_zero_dropped: u64,
    pub pages_dropped_clean: u64,
    pub pages_prefetched: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl PagerStats {
    pub fn snapshot(&self) -> PagerSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PagerSnapshot {
            faults_zero: l(&self.faults_zero),
            faults_remote: l(&self.faults_remote),
            faults_image: l(&self.faults_image),
            faults_spurious: l(&self.faults_spurious),
            faults_failed: l(&self.faults_failed),
            pages_fetched: l(&self.pages_fetched),
            pages_offloaded: l(&self.pages_offloaded),
            pages_zero_dropped: l(&self.pages_zero_dropped),
            pages_dropped_clean: l(&self.pages_dropped_clean),
            pages_prefetched: l(&self.pages_prefetched),
            bytes_in: l(&self.bytes_in),
            bytes_out: l(&self.bytes_out),
        }
    }
}

/// Why the pager or one of its memories failed.
#[derive(Debug, thiserror::Error)]
pub enum PagerError {
    #[error(
        "userfaultfd is not available to this process: run as root, or give this user read/write access to \
         /dev/userfaultfd (e.g. `setfacl -m u:$USER:rw /dev/userfaultfd`), or set \
         `sysctl vm.unprivileged_userfaultfd=1`"
    )]
    Unavailable(#[source] userfaultfd::Error),
    #[error("Failed to set up a {len}-byte paged memory")]
    Setup { len: usize, #[source] source: std::io::Error },
    #[error("Failed to start a fault-handler thread")]
    Thread(#[source] std::io::Error),
    #[error("The memnode failed while moving pages")]
    Transport(#[from] TransportError),
    #[error("This memory lost a page it could not fetch ({0}); the instance must be discarded")]
    Poisoned(String),
    #[error("Snapshot operation refused: {0}")]
    Snapshot(&'static str),
}

struct Shared {
    transport: Arc<dyn Transport>,
    config: PagerConfig,
    stats: PagerStats,
    epoll: sys::Epoll,
    stop: sys::EventFd,
    memories: RwLock<HashMap<u64, Arc<MemoryState>>>,
    next_key: AtomicU64,
    interrupt: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// The paging service of one runtime: handler threads, the transport to the memnode, counters.
pub struct Pager {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Pager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pager")
            .field("transport", &self.shared.transport)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

fn new_uffd() -> Result<Uffd, userfaultfd::Error> {
    UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(false)
        .require_features(FeatureFlags::from_bits_retain(sys::UFFD_FEATURE_WP_ASYNC))
        .create()
}

impl Pager {
    /// Starts a pager moving pages through `transport`. Fails with a message saying what to change
    /// when this process cannot use userfaultfd.
    pub fn new(config: PagerConfig, transport: Arc<dyn Transport>) -> Result<Arc<Pager>, PagerError> {
        new_uffd().map_err(PagerError::Unavailable)?;
        let setup = |source| PagerError::Setup { len: 0, source };
        let shared = Arc::new(Shared {
            transport,
            config: config.clone(),
            stats: PagerStats::default(),
            epoll: sys::Epoll::new().map_err(setup)?,
            stop: sys::EventFd::new().map_err(setup)?,
            memories: RwLock::new(HashMap::new()),
            next_key: AtomicU64::new(STOP_KEY + 1),
            interrupt: OnceLock::new(),
        });
        shared.epoll.add_level(&shared.stop, STOP_KEY).map_err(setup)?;
        let mut threads = Vec::new();
        for i in 0..config.fault_threads.max(1) {
            let s = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("ebb-fault-{i}"))
                .spawn(move || s.handler_loop())
                .map_err(PagerError::Thread)?;
            threads.push(t);
        }
        Ok(Arc::new(Pager { shared, threads: Mutex::new(threads) }))
    }

    /// The wasmtime memory creator that makes paged memories served by this pager.
    pub fn creator(self: &Arc<Self>) -> Arc<dyn MemoryCreator> {
        Arc::new(PagedMemoryCreator { pager: self.clone() })
    }

    pub fn stats(&self) -> PagerSnapshot {
        self.shared.stats.snapshot()
    }

    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.shared.transport
    }

    /// Sets the hook called when a memory is poisoned (e.g. bump the engine's epoch so the guest
    /// stops at its next check). Only the first call has an effect.
    pub fn set_interrupt(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.shared.interrupt.set(Box::new(f));
    }

    /// The paged memory whose accessible range starts at `base` (a wasmtime `Memory::data_ptr`).
    pub fn memory_at(&self, base: *const u8) -> Option<MemoryHandle> {
        let memories = self.shared.memories.read().unwrap_or_else(|e| e.into_inner());
        memories
            .values()
            .find(|m| m.reservation.base() == base as usize)
            .map(|m| MemoryHandle { state: m.clone(), shared: self.shared.clone() })
    }
}

impl Drop for Pager {
    fn drop(&mut self) {
        self.shared.stop.signal();
        for t in self.threads.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = t.join();
        }
    }
}

/// One paged linear memory's state, shared by its owner, its handle and the fault handlers.
struct MemoryState {
    key: u64,
    reservation: sys::Reservation,
    /// Bytes reserved for the memory itself (without the guard): its maximum size.
    capacity: usize,
    accessible: AtomicUsize,
    uffd: Uffd,
    table: PageTable,
    region: Mutex<Option<(RegionId, u64)>>,
    poisoned: AtomicBool,
    poison: Mutex<Option<String>>,
    /// The initial state this memory resets to (see `snapshot`); set once captured or adopted.
    snapshot: OnceLock<Arc<snapshot::Snapshot>>,
    /// Set by the first offload of a memory without a snapshot: from then on its writes are
    /// tracked too, so the next offload sends only pages written since.
    write_tracking: AtomicBool,
    /// While on, the pages every fault installed (with its read-around) are logged here.
    logging: AtomicBool,
    fault_log: Mutex<Vec<usize>>,
}

impl MemoryState {
    /// True once writes are tracked (the memory has a snapshot, or was offloaded): installs then
    /// write-protect pages (asynchronous mode: the kernel only notes the write) so that only
    /// written pages count as dirty.
    fn tracked(&self) -> bool {
        self.snapshot.get().is_some() || self.write_tracking.load(Ordering::Relaxed)
    }

    fn log_faults(&self, pages: std::ops::Range<usize>) {
        if self.logging.load(Ordering::Relaxed) {
            self.fault_log.lock().unwrap_or_else(|e| e.into_inner()).extend(pages);
        }
    }

    fn base(&self) -> usize {
        self.reservation.base()
    }

    fn accessible_pages(&self) -> usize {
        self.accessible.load(Ordering::Acquire) / PAGE_SIZE
    }

    /// Marks pages `first..` Resident and installs `bytes` there (write-protected when tracked),
    /// waking any thread waiting on them. The pages must be in state `previous`, which they get
    /// back if the install fails. Pages fetched from the memory's own region stay backed by it.
    fn install_pages(&self, first: usize, bytes: &[u8], previous: PageState) -> std::io::Result<()> {
        let pages = first..first + bytes.len() / PAGE_SIZE;
        // Marked before the install wakes the guest, so whoever it wakes sees them.
        for p in pages.clone() {
            if previous == PageState::Remote {
                self.table.set_backed(p, PageState::Resident);
            } else {
                self.table.set(p, PageState::Resident);
            }
        }
        let fill = if self.tracked() { sys::Fill::CopyClean(bytes.as_ptr()) } else { sys::Fill::Copy(bytes.as_ptr()) };
        // SAFETY: the pages `first..` lie in this memory's registered reservation (callers take
        // them from its page table) and `bytes` is exactly their length.
        let result = unsafe { sys::install(&self.uffd, fill, self.base() + first * PAGE_SIZE, bytes.len()) };
        if result.is_err() {
            for p in pages {
                if previous == PageState::Remote {
                    self.table.set_backed(p, previous);
                } else {
                    self.table.set(p, previous);
                }
            }
        }
        result.map(drop)
    }

    fn region(&self) -> Option<RegionId> {
        self.region.lock().unwrap_or_else(|e| e.into_inner()).map(|(r, _)| r)
    }

    fn poison(&self, why: String) {
        let mut p = self.poison.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            tracing::error!("paged memory poisoned: {why}");
            *p = Some(why);
        }
        self.poisoned.store(true, Ordering::Release);
    }
}

impl Shared {
    fn handler_loop(self: Arc<Self>) {
        let mut buf = vec![0u8; (self.config.readaround + 1) * PAGE_SIZE];
        loop {
            let key = match self.epoll.wait_one(self.config.spin) {
                Ok(STOP_KEY) => return,
                Ok(key) => key,
                Err(e) => {
                    tracing::error!("fault handler cannot wait for events: {e}");
                    return;
                }
            };
            let Some(mem) = self.memories.read().unwrap_or_else(|e| e.into_inner()).get(&key).cloned() else {
                continue; // The memory was dropped after the event fired.
            };
            loop {
                match mem.uffd.read_event() {
                    Ok(Some(Event::Pagefault { addr, rw, .. })) => {
                        let addr = addr as usize;
                        let write = rw == ReadWrite::Write;
                        let served =
                            std::panic::catch_unwind(AssertUnwindSafe(|| self.resolve(&mem, addr, write, &mut buf)));
                        if served.is_err() {
                            // A crashed handler must never leave the guest hanging: release it.
                            mem.poison("the fault handler panicked".into());
                            self.fire_interrupt();
                            self.release_with_zero(&mem, addr);
                        }
                    }
                    Ok(Some(_)) => {} // Only page faults are requested.
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!("cannot read userfaultfd events: {e}");
                        break;
                    }
                }
            }
            if let Err(e) = self.epoll.rearm(&mem.uffd, key) {
                // Only fails once the memory's uffd is gone, i.e. the memory was dropped.
                tracing::debug!("not re-arming a dropped memory: {e}");
            }
        }
    }

    fn fire_interrupt(&self) {
        if let Some(f) = self.interrupt.get() {
            f();
        }
    }

    fn release_with_zero(&self, mem: &MemoryState, addr: usize) {
        let page_addr = addr & !(PAGE_SIZE - 1);
        // SAFETY: `page_addr` is a page of `mem`'s reservation, registered with its uffd.
        if let Err(e) = unsafe { sys::install(&mem.uffd, sys::Fill::ZeroPage, page_addr, PAGE_SIZE) } {
            tracing::error!("cannot release a faulting thread at {page_addr:#x}: {e}");
        }
        mem.table.set((page_addr - mem.base()) / PAGE_SIZE, PageState::Resident);
    }

    fn resolve(&self, mem: &MemoryState, addr: usize, write: bool, buf: &mut [u8]) {
        let page = (addr - mem.base()) / PAGE_SIZE;
        let page_addr = mem.base() + page * PAGE_SIZE;
        if mem.poisoned.load(Ordering::Acquire) {
            self.release_with_zero(mem, addr);
            return;
        }
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
                let fill = match (write, mem.tracked()) {
                    (true, _) => sys::Fill::Copy(ZEROS.as_ptr()),
                    (false, true) => sys::Fill::CopyClean(ZEROS.as_ptr()),
                    (false, false) => sys::Fill::ZeroPage,
                };
                // SAFETY: the page is inside the registered reservation; ZEROS is one page long.
                if let Err(e) = unsafe { sys::install(&mem.uffd, fill, page_addr, PAGE_SIZE) } {
                    mem.poison(format!("installing a zero page at {page_addr:#x} failed: {e}"));
                    self.fire_interrupt();
                }
            }
            state @ (PageState::Remote | PageState::Image) => {
                // Read-around: the following pages in the same state, up to the configured count.
                let limit = (page + 1 + self.config.readaround).min(mem.accessible_pages());
                let mut run = 1;
                while page + run < limit && mem.table.get(page + run) == state {
                    run += 1;
                }
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
                                let source = Source::Local(image.pages(page, held));
                                self.fill_run(mem, page, held, state, source, addr, buf);
                            }
                            None => self.fill_run(mem, page, run, state, Source::Region(snap.region()), addr, buf),
                        }
                    }
                    (PageState::Image, None) => {
                        let why = "the page table says image but the memory has no snapshot";
                        self.fill_run(mem, page, run, state, Source::Missing(why), addr, buf);
                    }
                    _ => {
                        let source = match mem.region() {
                            Some(region) => Source::Region(region),
                            None => Source::Missing("the page table says remote but the memory has no region"),
                        };
                        self.fill_run(mem, page, run, state, source, addr, buf);
                    }
                }
            }
        }
    }

    /// Fills `run` pages from `page` (all Remote or all Image) from `source`, installing them as
    /// they arrive; on any failure the memory is poisoned and the faulting thread released.
    #[expect(clippy::too_many_arguments, reason = "one call site per source; a struct would only rename them")]
    fn fill_run(
        &self,
        mem: &MemoryState,
        page: usize,
        run: usize,
        previous: PageState,
        source: Source<'_>,
        addr: usize,
        buf: &mut [u8],
    ) {
        let mut installed = 0;
        let mut install_failed = None;
        // Counted and marked before the install wakes the guest, so whoever it wakes sees them.
        let mut install = |range: std::ops::Range<usize>, bytes: &[u8]| {
            if install_failed.is_some() {
                return;
            }
            match mem.install_pages(page + range.start, bytes, previous) {
                Ok(()) => installed = range.end,
                Err(e) => install_failed = Some(format!("installing pages failed: {e}")),
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
                let pages: Vec<u64> = (page..page + run).map(|p| p as u64).collect();
                let buf = &mut buf[..run * PAGE_SIZE];
                let mut ready = |range: std::ops::Range<usize>, bytes: &[u8]| {
                    self.stats.pages_fetched.fetch_add(range.len() as u64, Ordering::Relaxed);
                    self.stats.bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    install(range, bytes);
                };
                // Pages are installed frame by frame as they arrive: the faulting page's frame
                // first, so the guest resumes while the rest of the read-around is in flight.
                self.transport.read_pages_streaming(region, &pages, buf, &mut ready).map_err(|e| e.to_string())
            }
            Source::Missing(why) => Err(why.to_string()),
        };
        // The read-around counts as touched: the guest reads on in order far more often than not,
        // and a policy that cannot see reads of resident pages must not take those pages for cold.
        mem.log_faults(page..page + installed);
        if let Some(why) = fetched.err().or(install_failed) {
            // Pages not installed keep their state; the faulting page, if it was not installed,
            // is released with zeros in a poisoned memory.
            for p in page + installed..page + run {
                if previous == PageState::Remote {
                    mem.table.set_backed(p, previous);
                } else {
                    mem.table.set(p, previous);
                }
            }
            self.stats.faults_failed.fetch_add(1, Ordering::Relaxed);
            mem.poison(why);
            self.fire_interrupt();
            if installed == 0 {
                self.release_with_zero(mem, addr);
            }
        }
    }
}

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

/// The memory creator given to wasmtime (`Config::with_host_memory`).
struct PagedMemoryCreator {
    pager: Arc<Pager>,
}

// SAFETY: every memory it returns is a fresh, zero-filled reservation of `reserved + guard` bytes
// owned by the returned `PagedMemory`, whose base never moves and whose guard stays PROT_NONE.
unsafe impl MemoryCreator for PagedMemoryCreator {
    fn new_memory(
        &self,
        ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        reserved: Option<usize>,
        guard: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        if ty.is_shared() || ty.is_64() {
            return Err("paged memory supports unshared 32-bit wasm memories only".into());
        }
        // Without a reservation hint, reserve up to the declared maximum, or 4 GiB.
        let capacity = reserved.unwrap_or_else(|| maximum.unwrap_or(1 << 32));
        PagedMemory::new(&self.pager, minimum, capacity, guard)
            .map(|m| Box::new(m) as Box<dyn LinearMemory>)
            .map_err(|e| format!("{e}: {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()))
    }
}

/// A wasmtime linear memory backed by the pager.
struct PagedMemory {
    state: Arc<MemoryState>,
    shared: Arc<Shared>,
    // Keeps the handler threads alive as long as any memory can fault.
    _pager: Arc<Pager>,
}

impl PagedMemory {
    fn new(pager: &Arc<Pager>, minimum: usize, capacity: usize, guard: usize) -> Result<PagedMemory, PagerError> {
        let total = capacity + guard;
        let setup = |source| PagerError::Setup { len: total, source };
        let reservation = sys::Reservation::new(total).map_err(setup)?;
        reservation.make_accessible(0, minimum).map_err(setup)?;
        let uffd = new_uffd().map_err(PagerError::Unavailable)?;
        uffd.register_with_mode(reservation.base() as *mut _, capacity, RegisterMode::MISSING | RegisterMode::WRITE_PROTECT)
            .map_err(|e| setup(std::io::Error::other(e.to_string())))?;
        let shared = pager.shared.clone();
        let key = shared.next_key.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(MemoryState {
            key,
            reservation,
            capacity,
            accessible: AtomicUsize::new(minimum),
            uffd,
            table: PageTable::new(capacity / PAGE_SIZE),
            region: Mutex::new(None),
            poisoned: AtomicBool::new(false),
            poison: Mutex::new(None),
            snapshot: OnceLock::new(),
            write_tracking: AtomicBool::new(false),
            logging: AtomicBool::new(false),
            fault_log: Mutex::new(Vec::new()),
        });
        shared.memories.write().unwrap_or_else(|e| e.into_inner()).insert(key, state.clone());
        shared.epoll.add_oneshot(&state.uffd, key).map_err(setup)?;
        Ok(PagedMemory { state, shared, _pager: pager.clone() })
    }
}

impl Drop for PagedMemory {
    fn drop(&mut self) {
        let _ = self.shared.epoll.remove(&self.state.uffd);
        self.shared.memories.write().unwrap_or_else(|e| e.into_inner()).remove(&self.state.key);
        let region = self.state.region.lock().unwrap_or_else(|e| e.into_inner()).take();
        // Freed even when poisoned: the memnode may well be healthy (a checksum, a timeout that
        // passed). When it is not, the region's session lease frees it on the memnode's side.
        if let Some((region, _)) = region
            && let Err(e) = self.shared.transport.free(region)
        {
            if self.state.poisoned.load(Ordering::Acquire) {
                tracing::debug!("could not free memnode region {region} of a poisoned memory (its lease will): {e}");
            } else {
                tracing::warn!("could not free memnode region {region} (its lease will): {e}");
            }
        }
    }
}

// SAFETY: `as_ptr` is the fixed base of a reservation owned by this value; `byte_size` bytes from
// it are readable and writable (missing pages are filled by the fault handlers), and
// `byte_capacity` bytes plus the guard are reserved, so growth never moves the base.
unsafe impl LinearMemory for PagedMemory {
    fn byte_size(&self) -> usize {
        self.state.accessible.load(Ordering::Acquire)
    }

    fn byte_capacity(&self) -> usize {
        self.state.capacity
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        let old = self.byte_size();
        if new_size > self.state.capacity {
            wasmtime::bail!("cannot grow a paged memory to {new_size} bytes: its reservation is {}", self.state.capacity);
        }
        if new_size > old {
            self.state.reservation.make_accessible(old, new_size - old)?;
            self.state.accessible.store(new_size, Ordering::Release);
        }
        Ok(())
    }

    fn as_ptr(&self) -> *mut u8 {
        self.state.base() as *mut u8
    }
}

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

/// Operations on one paged memory from outside wasmtime (by the executor, while the instance is
/// idle).
#[derive(Clone)]
pub struct MemoryHandle {
    state: Arc<MemoryState>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryHandle").field("base", &format_args!("{:#x}", self.state.base())).finish_non_exhaustive()
    }
}

/// Pages sent per transport call by an offload (8 MiB).
pub(crate) const OFFLOAD_BATCH: usize = 2048;

impl MemoryHandle {
    /// The error that poisoned this memory, if any: its contents can no longer be trusted.
    pub fn poisoned(&self) -> Option<String> {
        if !self.state.poisoned.load(Ordering::Acquire) {
            return None;
        }
        self.state.poison.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Where page `p` is.
    pub fn page_state(&self, p: usize) -> PageState {
        self.state.table.get(p)
    }

    /// Pages in `state` within the accessible size.
    pub fn count(&self, state: PageState) -> usize {
        self.state.table.count(0..self.state.accessible_pages(), state)
    }

    /// Whether both handles refer to the same memory.
    pub fn is(&self, other: &MemoryHandle) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    /// Current size in bytes.
    pub fn size(&self) -> usize {
        self.state.accessible.load(Ordering::Acquire)
    }

    fn ensure_region(&self) -> Result<RegionId, PagerError> {
        let size = (self.state.accessible_pages() * PAGE_SIZE) as u64;
        let mut region = self.state.region.lock().unwrap_or_else(|e| e.into_inner());
        match *region {
            Some((id, have)) if have >= size => Ok(id),
            Some((id, _)) => {
                self.shared.transport.resize(id, size)?;
                *region = Some((id, size));
                Ok(id)
            }
            None => {
                let id = self.shared.transport.alloc(size)?;
                *region = Some((id, size));
                Ok(id)
            }
        }
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
        let state = &self.state;
        let limit = state.accessible_pages();
        let mut resident = Vec::new();
        match pages {
            None => state.table.for_each_in(0..limit, PageState::Resident, |p| resident.push(p)),
            Some(pages) => {
                resident.extend(pages.iter().copied().filter(|&p| p < limit && state.table.get(p) == PageState::Resident));
            }
        }
        if resident.is_empty() {
            return Ok(OffloadReport::default());
        }
        // Written since it was last installed: PAGEMAP_SCAN on a tracked memory (re-protecting
        // what it reports). Untracked memories have never been offloaded, so nothing is backed.
        let mut written = std::collections::HashSet::new();
        if dirty_tracking && state.tracked() {
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
            // Mark first, then drop: a fault after the drop must find the new state.
            for &p in sent.iter().chain(&clean) {
                state.table.set_backed(p, PageState::Remote);
            }
            for &p in &zeros {
                state.table.set(p, PageState::Zero);
            }
            self.discard_pages(&sent);
            self.discard_pages(&zeros);
            self.discard_pages(&clean);
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

    /// Starts logging the page of every fault this memory takes (clearing the log).
    pub fn start_fault_log(&self) {
        self.state.fault_log.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.state.logging.store(true, Ordering::Relaxed);
    }

    /// Stops logging faults; returns the pages logged since [`MemoryHandle::start_fault_log`], in
    /// fault order.
    pub fn take_fault_log(&self) -> Vec<usize> {
        self.state.logging.store(false, Ordering::Relaxed);
        std::mem::take(&mut *self.state.fault_log.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
