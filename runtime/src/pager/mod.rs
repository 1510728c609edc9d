//! Paged linear memory: wasm memories whose pages can live on a memnode and come back on touch.
//!
//! ```text
//!   wasmtime ──MemoryCreator──► PagedMemory ──owns──► Arc<MemoryState>
//!                                                       │ reservation (PROT_NONE + RW prefix)
//!                                                       │ userfaultfd (MISSING mode, whole reservation)
//!                                                       │ PageTable: Zero | Resident | Remote
//!                                                       │ memnode region (allocated at first offload)
//!   a fault, delivered by the memory's fault path (FaultPath):
//!     uffd         epoll over every memory's uffd (one-shot) ──► N handler threads  (thread.rs)
//!     uffd-sigbus  SIGBUS in the faulting thread ──► its own signal handler        (sigbus.rs)
//!     kmod         the memory is a mapping of Ebb's kernel module, which fills the page itself
//!                  from its store; the pager sees the fault afterwards               (kernel.rs)
//!   └─► resolve (fault.rs)
//!            a fault on a Zero page   → UFFDIO_ZEROPAGE
//!            a fault on a Remote page → one batched read of the page + up to `readaround`
//!                                       following Remote pages → one UFFDIO_COPY
//! ```
//!
//! Either way one thread at a time resolves a given memory's faults (its faults come from one
//! guest thread; on the thread path each memory's uffd is armed one-shot, on the sigbus path the
//! memory's scratch buffer is its lock) while different memories are served in parallel.
//! Page-table entries are therefore changed only by that thread, or by the memory's owner while
//! the instance is idle ([`MemoryHandle::offload`]), after fencing the fault path (see [`fault`]).
//! Nothing outside `thread` and `sigbus` asks which path a memory is on.
//!
//! Rooms: [`fault`] (resolving a fault), `thread` and `sigbus` (the fault paths),
//! [`image`] (local images of initial states, mapped copy-on-write into memories),
//! [`offload`] (pages to the memnode),
//! [`share`] (a memory lent to another node for an offloaded call),
//! `snapshot` (initial states: capture, adopt, reset, prefetch, evict), `table` (the page table),
//! `sys` (raw syscalls).

mod fault;
mod image;
mod kernel;
pub mod kmod;
mod offload;
mod share;
mod sigbus;
mod snapshot;
mod sys;
mod table;
mod thread;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use ebb_memnode::{RegionId, Transport, TransportError, PAGE_SIZE};
use userfaultfd::{FeatureFlags, RegisterMode, Uffd, UffdBuilder};
use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

pub use offload::OffloadReport;
pub use share::{LentMemory, PageRun, PageSource};
pub use snapshot::{ResetReport, Snapshot};
pub use table::PageState;
use table::PageTable;

const STOP_KEY: u64 = 0;

/// One page of zeros, the source of zero-filled private pages.
static ZEROS: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// Most pages a fault's read-around may fetch after the faulting one (4 MiB per fault): each
/// handler thread (uffd path) or each memory (sigbus path) holds a buffer of the configured
/// read-around, made before its first fault.
pub const MAX_READAROUND: usize = 1023;

/// How a paged memory's faults reach the pager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FaultPath {
    /// userfaultfd events read by the pager's handler threads; the faulting thread sleeps in the
    /// kernel until its page is installed.
    Uffd,
    /// userfaultfd with `UFFD_FEATURE_SIGBUS`: the faulting thread resolves its own fault in its
    /// SIGBUS handler; no other thread wakes up.
    #[default]
    UffdSigbus,
    /// Ebb's kernel module (`kmod/ebb.ko`, `/dev/ebb`): the memory is a mapping of one of its
    /// regions and the module fills faulting pages in the kernel; see `kernel`.
    Kmod,
}

impl FaultPath {
    /// The environment variable that sets the default path ([`PagerConfig::default`], and the
    /// CLI's `--fault-path`): how the test suite runs everything on both paths.
    pub const ENV: &'static str = "EBB_FAULT_PATH";

    pub fn name(self) -> &'static str {
        match self {
            FaultPath::Uffd => "uffd",
            FaultPath::UffdSigbus => "uffd-sigbus",
            FaultPath::Kmod => "kmod",
        }
    }

    /// The path `EBB_FAULT_PATH` names, or the built-in default when it is unset. Panics on a
    /// value that names no path (a typo must not silently test the other path).
    pub fn from_env() -> FaultPath {
        match std::env::var(Self::ENV) {
            Ok(v) => v.parse().unwrap_or_else(|e| panic!("{}: {e}", Self::ENV)),
            Err(_) => FaultPath::default(),
        }
    }
}

impl std::fmt::Display for FaultPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for FaultPath {
    type Err = String;

    fn from_str(s: &str) -> Result<FaultPath, String> {
        match s {
            "uffd" => Ok(FaultPath::Uffd),
            "uffd-sigbus" => Ok(FaultPath::UffdSigbus),
            "kmod" => Ok(FaultPath::Kmod),
            _ => Err(format!("unknown fault path {s:?}: use uffd, uffd-sigbus or kmod")),
        }
    }
}

/// How the pager behaves.
#[derive(Clone, Debug)]
pub struct PagerConfig {
    /// How faults are delivered. Default: `EBB_FAULT_PATH` if set, else uffd-sigbus.
    pub fault_path: FaultPath,
    /// Fault-handler threads shared by all memories (the uffd path; the sigbus path has none).
    /// Default 2. Each memory is served by one thread at a time, so more threads help only with
    /// more concurrently faulting instances.
    pub fault_threads: usize,
    /// Remote pages fetched after a faulting one in the same batch (only contiguous Remote pages).
    /// Default 15 (64 KiB per fault). 0 fetches only the faulting page; at most
    /// [`MAX_READAROUND`].
    pub readaround: usize,
    /// How long an idle handler thread polls for the next fault before it blocks. Waking a blocked
    /// thread costs tens of µs on these VMs (shared/notes/kernel.md), more than the rest of a
    /// fault; polling costs a CPU while faults keep coming. Default 100 µs; zero never polls.
    pub spin: Duration,
    /// Copy-on-write initial states (default on): a function's local image is a memfd that its
    /// memories map privately, so resets, adoptions and restores cost page-cache hits, and the
    /// pages instances only read are held once (see `image`). Off, the image is copied into each
    /// memory page by page (`UFFDIO_COPY`) and a reset copies written pages back.
    pub cow_images: bool,
}

impl Default for PagerConfig {
    fn default() -> Self {
        PagerConfig {
            fault_path: FaultPath::from_env(),
            fault_threads: 2,
            readaround: 15,
            spin: Duration::from_micros(100),
            cow_images: true,
        }
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
    /// Pages fetched from the memnode, including read-around (on the kmod path: offloaded pages
    /// the module filled back from its store, which holds a copy of what the memnode holds).
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
    /// Fault handlers that panicked or could not wait for events (each poisoned what it served).
    pub handler_failures: AtomicU64,
    /// Read-arounds whose later frames arrived after the memory was reset, evicted or offloaded,
    /// and were dropped.
    pub readaround_fenced: AtomicU64,
    /// Pages a borrower changed that the lender's call then touched (faulted back), counted at
    /// the reset.
    pub lent_faulted_back: AtomicU64,
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
    pub handler_failures: u64,
    pub readaround_fenced: u64,
    pub lent_faulted_back: u64,
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
            handler_failures: l(&self.handler_failures),
            readaround_fenced: l(&self.readaround_fenced),
            lent_faulted_back: l(&self.lent_faulted_back),
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
    #[error("This memory lost a page it could not fetch; the instance must be discarded")]
    Poisoned(#[source] Poison),
    #[error("Snapshot operation refused: {0}")]
    Snapshot(&'static str),
    #[error("Invalid pager setting: {0}")]
    Config(String),
    #[error(
        "Ebb's kernel module failed (the kmod fault path needs kmod/ebb.ko loaded: `insmod ebb.ko`, as \
         scripts/softroce.sh does in its guest; or choose --fault-path uffd-sigbus)"
    )]
    Kernel(#[source] kmod::KmodError),
}

/// Why a memory was poisoned: its contents can no longer be trusted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Poison {
    #[error("the memnode failed while pages were fetched")]
    Transport(#[source] Arc<TransportError>),
    #[error("installing pages failed")]
    Install(#[source] Arc<std::io::Error>),
    #[error("{0}")]
    Handler(String),
    #[error("{0}")]
    Inconsistent(&'static str),
    /// The kernel module (`--fault-path kmod`, RDMA backend) could not read a page from the
    /// memnode (failed, or no answer within the bound): the page's address.
    #[error("the kernel module could not fill the page at {0:#x}: its transfer with the memnode failed")]
    KernelFill(usize),
}

impl Poison {
    /// The memnode did not answer, or the connection to it failed (not a refusal by a healthy
    /// memnode, nor a local failure).
    pub fn memnode_unavailable(&self) -> bool {
        matches!(self, Poison::Transport(e) if !e.is_refusal()) || matches!(self, Poison::KernelFill(_))
    }
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

fn new_uffd(path: FaultPath) -> Result<Uffd, userfaultfd::Error> {
    let mut features = FeatureFlags::from_bits_retain(sys::UFFD_FEATURE_WP_ASYNC);
    if path == FaultPath::UffdSigbus {
        features |= FeatureFlags::SIGBUS;
    }
    UffdBuilder::new().close_on_exec(true).non_blocking(true).user_mode_only(false).require_features(features).create()
}

impl Pager {
    /// Starts a pager moving pages through `transport`. Fails with a message saying what to change
    /// when this process cannot use userfaultfd.
    pub fn new(config: PagerConfig, transport: Arc<dyn Transport>) -> Result<Arc<Pager>, PagerError> {
        if config.readaround > MAX_READAROUND {
            return Err(PagerError::Config(format!("read-around of {} pages: allowed 0 to {MAX_READAROUND}", config.readaround)));
        }
        // Every memory holds a userfaultfd, also on the kmod path (unregistered there: the module
        // serves the faults), so that the rest of the pager needs no case for its absence.
        new_uffd(config.fault_path).map_err(PagerError::Unavailable)?;
        match config.fault_path {
            FaultPath::UffdSigbus => sigbus::install_handler()?,
            FaultPath::Uffd => {}
            FaultPath::Kmod => {
                kernel::KernelMemory::probe()?;
                // A fill the module cannot make (its memnode gone) is a SIGBUS: see `sigbus`.
                sigbus::install_handler()?;
            }
        }
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
        let fault_threads = match config.fault_path {
            FaultPath::Uffd => config.fault_threads.max(1),
            FaultPath::UffdSigbus | FaultPath::Kmod => 0,
        };
        for i in 0..fault_threads {
            let s = shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("ebb-fault-{i}"))
                .spawn(move || thread::handler_thread(s))
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
        if self.fault_path() == FaultPath::Kmod {
            // The module's faults are counted as they are seen.
            let memories: Vec<_> = self.shared.memories.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
            for state in memories {
                MemoryHandle { state, shared: self.shared.clone() }.sync_or_poison();
            }
        }
        self.shared.stats.snapshot()
    }

    /// How this pager's memories fault.
    pub fn fault_path(&self) -> FaultPath {
        self.shared.config.fault_path
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
    /// On the kmod path, the module's region mapped over the reservation (see `kernel`). Dropped
    /// after the reservation (fields drop in order), though the mapping holds the file anyway.
    kernel: Option<kernel::KernelMemory>,
    table: PageTable,
    region: Mutex<Option<(RegionId, u64)>>,
    poisoned: AtomicBool,
    poison: Mutex<Option<Poison>>,
    /// The fence generation, under the lock every fault-path install holds (see [`fault`]).
    installs: Mutex<u64>,
    /// The initial state this memory resets to (see `snapshot`); set once captured or adopted.
    snapshot: OnceLock<Arc<snapshot::Snapshot>>,
    /// Set by the first offload of a memory without a snapshot: from then on its writes are
    /// tracked too, so the next offload sends only pages written since.
    write_tracking: AtomicBool,
    /// While on, the pages every fault installed (with its read-around) are logged here.
    logging: AtomicBool,
    fault_log: Mutex<Vec<usize>>,
    /// On the kmod path, while logging: pages the call touched that were resident already.
    read_log: Mutex<Vec<usize>>,
    /// Ranges (byte offset, length) mapped from shared files for the running call
    /// ([`MemoryHandle::map_shared`]), undone when it ends.
    shared_maps: Mutex<Vec<(usize, usize)>>,
    /// Pages whose region copy the running call (lent to another node) made: restored by the
    /// reset (see `share`).
    lent_dirty: Mutex<Vec<usize>>,
    /// Of those, the pages a borrower changed (to count how many the call faulted back).
    returned: Mutex<Vec<usize>>,
    /// The region is another node's, borrowed (see `share`): never freed here.
    region_borrowed: AtomicBool,
    /// Set on the sigbus path: the memory's handler slot and scratch.
    in_thread: OnceLock<sigbus::InThread>,
    /// The local image mapped copy-on-write over the first `image_pages` pages (see `image`);
    /// changed only while the memory is idle (or its guest stopped in a host call).
    image: RwLock<Option<Arc<image::LocalImage>>>,
    image_pages: AtomicUsize,
    /// Pages [`MemoryHandle::unmap_image`] is moving from the image into private memory: held
    /// throughout, so they count as this memory's while the move is under way.
    moving: AtomicUsize,
}

impl Drop for MemoryState {
    fn drop(&mut self) {
        if let Some(registered) = self.in_thread.get() {
            sigbus::unregister(registered);
        }
    }
}

impl MemoryState {
    /// True once writes are tracked (the memory has a snapshot, or was offloaded): installs then
    /// write-protect pages (asynchronous mode: the kernel only notes the write) so that only
    /// written pages count as dirty.
    fn tracked(&self) -> bool {
        self.snapshot.get().is_some() || self.write_tracking.load(Ordering::Relaxed)
    }

    /// Whether `addr` lies in a file mapped into the memory for the running call.
    fn in_file_map(&self, addr: usize) -> bool {
        let offset = addr.wrapping_sub(self.base());
        self.shared_maps.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|&(o, l)| offset >= o && offset < o + l)
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
        if let Some(k) = &self.kernel {
            let result = k.install(first, bytes, previous).map_err(|e| std::io::Error::other(error_chain(&e)));
            if result.is_err() {
                for p in pages {
                    self.table.set(p, previous);
                }
            }
            return result;
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

    fn poison(&self, why: Poison) {
        let mut p = self.poison.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            tracing::error!("paged memory poisoned: {}", error_chain(&why));
            *p = Some(why);
        }
        self.poisoned.store(true, Ordering::Release);
    }

    fn installs(&self) -> std::sync::MutexGuard<'_, u64> {
        self.installs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current fence generation (a fault takes it before it looks at the page table).
    fn generation(&self) -> u64 {
        *self.installs()
    }

    /// Fences the fault path before the owner changes the page table (reset, evict, offload,
    /// adopt): installs of fills that began before this are refused from now on. Waits at most
    /// for one install in progress, never for a transfer.
    fn fence(&self) {
        *self.installs() += 1;
    }

    /// [`MemoryState::install_pages`] if no fence happened since `generation`; `Ok(false)` if one did
    /// (nothing is installed or changed).
    fn install_if_current(&self, generation: u64, first: usize, bytes: &[u8], previous: PageState) -> std::io::Result<bool> {
        let current = self.installs();
        if *current != generation {
            return Ok(false);
        }
        self.install_pages(first, bytes, previous)?;
        drop(current);
        Ok(true)
    }
}

/// An error and its sources, one line (what logs, status polls and awaiting guests are told).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
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
        let path = pager.shared.config.fault_path;
        let uffd = new_uffd(path).map_err(PagerError::Unavailable)?;
        let kernel = if path == FaultPath::Kmod {
            let config = &pager.shared.config;
            let k = kernel::KernelMemory::new(capacity / PAGE_SIZE, config.readaround, config.cow_images, &pager.shared.transport)?;
            k.map_over(&reservation, capacity, minimum).map_err(setup)?;
            Some(k)
        } else {
            uffd.register_with_mode(reservation.base() as *mut _, capacity, RegisterMode::MISSING | RegisterMode::WRITE_PROTECT)
                .map_err(|e| setup(std::io::Error::other(e.to_string())))?;
            None
        };
        let shared = pager.shared.clone();
        let key = shared.next_key.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(MemoryState {
            key,
            reservation,
            capacity,
            accessible: AtomicUsize::new(minimum),
            uffd,
            kernel,
            table: PageTable::new(capacity / PAGE_SIZE),
            region: Mutex::new(None),
            poisoned: AtomicBool::new(false),
            poison: Mutex::new(None),
            installs: Mutex::new(0),
            snapshot: OnceLock::new(),
            write_tracking: AtomicBool::new(false),
            logging: AtomicBool::new(false),
            fault_log: Mutex::new(Vec::new()),
            read_log: Mutex::new(Vec::new()),
            shared_maps: Mutex::new(Vec::new()),
            lent_dirty: Mutex::new(Vec::new()),
            returned: Mutex::new(Vec::new()),
            region_borrowed: AtomicBool::new(false),
            in_thread: OnceLock::new(),
            image: RwLock::new(None),
            image_pages: AtomicUsize::new(0),
            moving: AtomicUsize::new(0),
        });
        match path {
            FaultPath::Uffd => shared.epoll.add_oneshot(&state.uffd, key).map_err(setup)?,
            FaultPath::UffdSigbus | FaultPath::Kmod => sigbus::register(&state, shared.clone())?,
        }
        shared.memories.write().unwrap_or_else(|e| e.into_inner()).insert(key, state.clone());
        Ok(PagedMemory { state, shared, _pager: pager.clone() })
    }
}

impl Drop for PagedMemory {
    fn drop(&mut self) {
        if self.shared.config.fault_path == FaultPath::Uffd {
            let _ = self.shared.epoll.remove(&self.state.uffd);
        }
        self.shared.memories.write().unwrap_or_else(|e| e.into_inner()).remove(&self.state.key);
        let region = self.state.region.lock().unwrap_or_else(|e| e.into_inner()).take();
        let region = region.filter(|_| !self.state.region_borrowed.load(Ordering::Relaxed));
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
    /// Why this memory was poisoned, if it was: its contents can no longer be trusted.
    pub fn poisoned(&self) -> Option<Poison> {
        if !self.state.poisoned.load(Ordering::Acquire) {
            return None;
        }
        self.state.poison.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Where page `p` is; on the kmod path, as of the memory's last operation or count (those
    /// read the module's faults; this one is asked page by page, so it does not).
    pub fn page_state(&self, p: usize) -> PageState {
        self.state.table.get(p)
    }

    /// Pages in `state` within the accessible size, in O(1) (pages beyond it are never touched:
    /// a memory does not shrink).
    pub fn count(&self, state: PageState) -> usize {
        self.sync_or_poison();
        match state {
            PageState::Zero => {
                let table = &self.state.table;
                let other = table.total(PageState::Resident) + table.total(PageState::Remote) + table.total(PageState::Image);
                self.state.accessible_pages().saturating_sub(other)
            }
            _ => self.state.table.total(state),
        }
    }

    /// Whether both handles refer to the same memory.
    pub fn is(&self, other: &MemoryHandle) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    /// Current size in bytes.
    pub fn size(&self) -> usize {
        self.state.accessible.load(Ordering::Acquire)
    }

    /// Starts logging the page of every fault this memory takes (clearing the log).
    pub fn start_fault_log(&self) {
        // Touches before now are not the logged call's.
        self.sync_or_poison();
        let mut log = self.state.fault_log.lock().unwrap_or_else(|e| e.into_inner());
        log.clear();
        // Room for every page once (and a read-around more), so that logging a fault does not
        // allocate (faults may be served in a signal handler).
        log.reserve(self.state.accessible_pages() + MAX_READAROUND + 1);
        drop(log);
        self.state.read_log.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.state.logging.store(true, Ordering::Relaxed);
    }

    /// Maps the first `len` bytes of the shared file `fd` (a state value's pages) at byte `offset`
    /// of this memory, for the running call: the guest then reads and writes the file's pages
    /// themselves. The range must be page-aligned, accessible and never touched (memory grown
    /// for the call), and the caller must hold the guest still (in a host call) and no slice of
    /// the range. [`MemoryHandle::unmap_shared`] undoes it before the memory is reset.
    pub fn map_shared(&self, offset: usize, len: usize, fd: std::os::fd::BorrowedFd<'_>) -> Result<(), PagerError> {
        self.map_file(offset, len, fd, None)
    }

    /// [`MemoryHandle::map_shared`], but copy-on-write from `file_offset` of the file (an
    /// object read in place: the guest's writes stay its own, the file never changes).
    pub fn map_private(&self, offset: usize, len: usize, fd: std::os::fd::BorrowedFd<'_>, file_offset: u64) -> Result<(), PagerError> {
        self.map_file(offset, len, fd, Some(file_offset))
    }

    /// Turns the [`MemoryHandle::map_shared`] mapping at `[offset, offset + len)` of `fd` into a
    /// copy-on-write one of the same file: the guest reads the same bytes, its later writes stay
    /// its own, and the memory no longer holds the file writable (so it can be sealed). Undone
    /// with the others by [`MemoryHandle::unmap_shared`].
    pub fn make_private(&self, offset: usize, len: usize, fd: std::os::fd::BorrowedFd<'_>) -> Result<(), PagerError> {
        let maps = self.state.shared_maps.lock().unwrap_or_else(|e| e.into_inner());
        if !maps.contains(&(offset, len)) {
            return Err(PagerError::Snapshot("only a whole shared mapping can be made private"));
        }
        self.state.reservation.map_private(offset, len, fd, 0).map_err(|source| PagerError::Setup { len, source })
    }

    fn map_file(&self, offset: usize, len: usize, fd: std::os::fd::BorrowedFd<'_>, private: Option<u64>) -> Result<(), PagerError> {
        let refuse = |why| Err(PagerError::Snapshot(why));
        if !offset.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) || len == 0 {
            return refuse("a shared mapping must be whole pages");
        }
        if offset.checked_add(len).is_none_or(|end| end > self.size()) {
            return refuse("a shared mapping must lie inside the memory's accessible size");
        }
        let pages = offset / PAGE_SIZE..(offset + len) / PAGE_SIZE;
        self.sync_faults()?;
        if pages.clone().any(|p| self.state.table.get(p) != PageState::Zero) {
            return refuse("a shared mapping may only cover pages never touched");
        }
        let mut maps = self.state.shared_maps.lock().unwrap_or_else(|e| e.into_inner());
        if maps.iter().any(|&(o, l)| offset < o + l && o < offset + len) {
            return refuse("shared mappings may not overlap");
        }
        match private {
            None => self.state.reservation.map_shared(offset, len, fd),
            Some(at) => self.state.reservation.map_private(offset, len, fd, at),
        }
        .map_err(|source| PagerError::Setup { len, source })?;
        maps.push((offset, len));
        Ok(())
    }

    /// Undoes every [`MemoryHandle::map_shared`]: the ranges become never-touched paged memory
    /// again (zero, served by userfaultfd), as the reset expects. Returns how many there were. A
    /// failure poisons the memory (it must be discarded).
    pub fn unmap_shared(&self) -> Result<usize, PagerError> {
        let maps = std::mem::take(&mut *self.state.shared_maps.lock().unwrap_or_else(|e| e.into_inner()));
        for &(offset, len) in &maps {
            if let Some(k) = self.kernel() {
                if let Err(source) = self.kernel_remap(k, offset, len) {
                    self.state.poison(Poison::Inconsistent("a shared mapping could not be undone"));
                    return Err(PagerError::Setup { len, source });
                }
                continue;
            }
            let restored = self.state.reservation.map_anonymous(offset, len).and_then(|()| {
                let addr = (self.state.base() + offset) as *mut libc::c_void;
                self.state
                    .uffd
                    .register_with_mode(addr, len, RegisterMode::MISSING | RegisterMode::WRITE_PROTECT)
                    .map(drop)
                    .map_err(|e| std::io::Error::other(e.to_string()))
            });
            if let Err(source) = restored {
                self.state.poison(Poison::Inconsistent("a shared mapping could not be undone"));
                return Err(PagerError::Setup { len, source });
            }
        }
        Ok(maps.len())
    }

    /// Stops logging faults; returns the pages logged since [`MemoryHandle::start_fault_log`], in
    /// fault order.
    pub fn take_fault_log(&self) -> Vec<usize> {
        self.sync_or_poison();
        self.state.logging.store(false, Ordering::Relaxed);
        std::mem::take(&mut *self.state.fault_log.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The pages logged since [`MemoryHandle::start_fault_log`] that the call touched while they
    /// were resident (no fault of their own): seen on the kmod path only, where the module's
    /// accessed set shows reads; empty elsewhere. Call after [`MemoryHandle::take_fault_log`].
    pub fn take_read_log(&self) -> Vec<usize> {
        std::mem::take(&mut *self.state.read_log.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
