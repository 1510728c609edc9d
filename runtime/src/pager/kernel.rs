//! The kernel fault path (`--fault-path kmod`): a memory is a shared mapping of one region of
//! Ebb's kernel module ([`super::kmod`]), whose faults the module fills in the kernel — no
//! signal, no handler thread, no return to user space. The module's store is its DRAM backend,
//! or, when the pager's memnode is reached over `rdma`, a memnode region of this memory's own
//! that the module reads and writes with its own queue pair (the RDMA backend): then what a
//! drained memory holds leaves the host, and a fault is one RDMA READ issued in the kernel.
//!
//! ```text
//!   reservation [0, capacity) ── mmap(MAP_SHARED) of /dev/ebb ── a fault: the module copies the
//!   page from its store (or zeros where the store has none) and maps it; nothing here runs
//!
//!   the pager's page table, kept as on the other paths:
//!     faults        seen after the fact: the module's accessed set, read and reset at each
//!                   operation (`sync`), marks those pages Resident (and counts the faults)
//!     writes        the module's dirty set (a reset, an offload)
//!     a page drop   the store first gets the bytes of the page's new state if it holds others
//!                   (`Held`), then the module evicts the page without a write-back
//! ```
//!
//! So the store holds, for every page that is not resident, what the page must read as next: its
//! initial state (Image), what an offload sent (Remote; the memnode gets it too and stays the
//! durable copy — the DRAM store is the module's local copy of it), or zeros. And a resident page
//! the dirty set does not list equals its store copy: it was filled from the store, or installed
//! into it, and every reset of the dirty set (a snapshot's tracking, a reset) comes with a store
//! write or an eviction of the pages it clears.
//!
//! Copy-on-write images (the default, `PagerConfig::cow_images`): the function's image is an
//! image region of the module and each memory's region takes it as its *base*. A page whose
//! initial state the base holds needs no copy in the memory's store (`Held::Base`): the module
//! maps the image's page itself for a read and copies it at the first write, so every instance
//! shares one copy of what it only reads, counted once (the image's). The base follows the
//! function's image at the same points as a mapped image does on the other paths
//! ([`MemoryHandle::sync_image`]); pages that read the old base get their bytes into the store
//! first where the new one lacks them. With `--copy-images` each store holds its own copy.
//!
//! Not on this path yet: a borrowed memory that follows by pages (a borrower's store reads the
//! lent pages when it borrows: `share.rs`). On the RDMA backend an offloaded page is on the
//! memnode twice (the memory's region and the store's).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ebb_memnode::rdma::RemoteQp;
use ebb_memnode::{PAGE_SIZE, RegionId, Transport};

use super::image::LocalImage;
use super::kmod::{Backend, Device, Kind, KmodError};
use super::{MemoryHandle, PageState, PagerError, Poison, ZEROS};

/// What the module's store holds of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// Nothing, or zeros.
    Zero,
    /// The page's initial state (its snapshot's bytes).
    Initial,
    /// What an offload sent (the memory's region holds the same).
    Sent,
    /// Other bytes, which no state's content is known to equal.
    Other,
    /// Nothing, and the base (the function's image) holds the page's initial state: it reads
    /// as that, as `Initial` does.
    Base,
}

/// A memory's region of the module.
#[derive(Debug)]
pub(super) struct KernelMemory {
    dev: Device,
    /// Per page (grown on demand), what the store holds.
    held: Mutex<Vec<Held>>,
    /// Held by [`MemoryHandle::sync_faults`], and by the owner from marking pages dropped until
    /// the module has evicted them ([`MemoryHandle::kernel_drop_guard`]): the pager's own reads
    /// of those pages (an offload's) set their accessed bits, which the eviction clears, and a
    /// sync in between (another thread's `Pager::stats`) would mark them Resident again.
    syncing: Mutex<()>,
    /// The RDMA backend's memnode side, if on it.
    remote: Option<RemoteStore>,
    /// The image the region has as its base (copy-on-write images), if any.
    base: Mutex<Option<Arc<LocalImage>>>,
}

/// The memnode region holding a memory's store on the RDMA backend, and the memnode's end of
/// the module's queue pair.
#[derive(Debug)]
struct RemoteStore {
    transport: Arc<dyn Transport>,
    /// The region and its size in bytes: allocated at the first store write, grown (doubling,
    /// up to the memory's capacity) as writes reach further.
    region: Mutex<Option<(RegionId, u64)>>,
    capacity: usize,
    _qp: RemoteQp,
    /// The module's `fills_backend` and `written_back` counts already added to the pager's
    /// bytes in and out (the module's own transfers with the memnode; changed under `syncing`).
    counted: Mutex<(u64, u64)>,
    /// Bytes the store ioctls wrote to the memnode since the last sync (added to bytes out there).
    stored: AtomicU64,
}

impl Drop for RemoteStore {
    fn drop(&mut self) {
        if let Some((region, _)) = self.region.get_mut().unwrap_or_else(|e| e.into_inner()).take()
            && let Err(e) = self.transport.free(region)
        {
            tracing::warn!("could not free the module store's memnode region {region} (its lease will): {e}");
        }
    }
}

/// The smallest store region (1 MiB): growth doubles from here.
const REMOTE_STORE_MIN_PAGES: usize = 256;

fn kmod_err(e: KmodError) -> PagerError {
    PagerError::Kernel(e)
}

impl KernelMemory {
    /// A region of `pages` pages whose faults fill `readaround` more pages beside the faulting
    /// one: on the RDMA backend when `transport` is an `rdma` one, else on the DRAM backend;
    /// with `based`, one that takes the function's image as its base.
    pub(super) fn new(pages: usize, readaround: usize, based: bool, transport: &Arc<dyn Transport>) -> Result<KernelMemory, PagerError> {
        let dev = Device::open().map_err(kmod_err)?;
        let readaround = u32::try_from(readaround).unwrap_or(u32::MAX).min(super::kmod::uapi::MAX_READAROUND);
        let kind = if based { Kind::Based } else { Kind::Plain };
        let memory = |dev, remote| KernelMemory { dev, held: Mutex::new(Vec::new()), syncing: Mutex::new(()), remote, base: Mutex::new(None) };
        let Some(rdma) = transport.as_rdma() else {
            dev.create_kind(pages as u64, Backend::Dram, readaround, kind).map_err(kmod_err)?;
            return Ok(memory(dev, None));
        };
        dev.create_kind(pages as u64, Backend::Rdma, readaround, kind).map_err(kmod_err)?;
        // The module's queue pair, on the device and port the transport's own use.
        let local = dev.rdma_qp(rdma.device(), 1).map_err(kmod_err)?;
        let qp = rdma.connect_remote_qp(&local)?;
        dev.rdma_connect(&qp.info, rdma.control().timeout()).map_err(kmod_err)?;
        let remote = RemoteStore { transport: transport.clone(), region: Mutex::new(None), capacity: pages, _qp: qp, counted: Mutex::new((0, 0)), stored: Default::default() };
        Ok(memory(dev, Some(remote)))
    }

    /// On the RDMA backend, makes the store's memnode region cover pages `..end` (allocating or
    /// growing it, and telling the module its new key).
    fn cover(&self, end: usize) -> Result<(), PagerError> {
        let Some(remote) = &self.remote else { return Ok(()) };
        let mut region = remote.region.lock().unwrap_or_else(|e| e.into_inner());
        let page = PAGE_SIZE as u64;
        let (end, capacity) = (end as u64 * page, remote.capacity as u64 * page);
        let size = |have: u64| end.max(have * 2).max(REMOTE_STORE_MIN_PAGES as u64 * page).min(capacity.max(end));
        let (id, changed) = super::offload::cover_region(&*remote.transport, &mut region, end, size)?;
        if !changed {
            return Ok(());
        }
        let rdma = remote.transport.as_rdma().ok_or(PagerError::Config("the RDMA backend needs an rdma transport".into()))?;
        let key = rdma.region_key(id)?;
        self.dev.rdma_remote(&key, false).map_err(kmod_err)
    }

    /// Whether the store is a memnode region (the RDMA backend), not the module's DRAM.
    pub(super) fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Checks that this host can run the kmod path: the module is loaded and speaks our ABI.
    pub(super) fn probe() -> Result<(), PagerError> {
        let dev = Device::open().map_err(kmod_err)?;
        let version = dev.version().map_err(kmod_err)?;
        if version != super::kmod::uapi::ABI_VERSION {
            return Err(PagerError::Config(format!(
                "/dev/ebb speaks ABI {version}, this runtime ABI {}: load the ebb.ko built from this tree",
                super::kmod::uapi::ABI_VERSION
            )));
        }
        Ok(())
    }

    /// Maps the region over the first `capacity` bytes of `reservation`, of which the first
    /// `accessible` are readable and writable (the rest PROT_NONE until the memory grows).
    pub(super) fn map_over(&self, reservation: &super::sys::Reservation, capacity: usize, accessible: usize) -> std::io::Result<()> {
        reservation.map_shared_at(0, capacity, self.dev.as_fd(), 0)?;
        reservation.make_inaccessible(accessible, capacity - accessible)
    }

    /// Evicts the first `pages` pages without a write-back (the memory is idle).
    pub(super) fn evict_all(&self, pages: usize) -> Result<(), PagerError> {
        self.dev.evict(0, pages as u64, false).map_err(kmod_err)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Vec<Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_held(&self, pages: std::ops::Range<usize>, what: Held) {
        let mut held = self.held();
        if held.len() < pages.end {
            held.resize(pages.end, Held::Zero);
        }
        held[pages].fill(what);
    }

    /// Whether page `p` reads as `what` when not resident (`Initial` also where the base holds it).
    fn is_held(&self, p: usize, what: Held) -> bool {
        let held = self.held().get(p).copied().unwrap_or(Held::Zero);
        held == what || (what == Held::Initial && held == Held::Base)
    }

    /// The image the region has as its base.
    fn base(&self) -> Option<Arc<LocalImage>> {
        self.base.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the base holds page `p`.
    fn base_holds(&self, p: usize) -> bool {
        self.base.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|b| b.holds(p))
    }

    /// Makes `pages` (ascending, all held by the base, each in its initial state) read as the
    /// base's: the module drops the store's copies and any page it holds of them.
    fn to_base(&self, pages: &[usize]) -> Result<(), PagerError> {
        for run in runs(pages) {
            self.dev.forget(run[0] as u64, run.len() as u64).map_err(kmod_err)?;
            self.set_held(run[0]..run[0] + run.len(), Held::Base);
        }
        Ok(())
    }

    /// Whether the region's base is `image` (or it has none and `image` is none).
    pub(super) fn base_is(&self, image: Option<&Arc<LocalImage>>) -> bool {
        match (self.base().as_ref(), image) {
            (Some(b), Some(i)) => Arc::ptr_eq(b, i),
            (None, None) => true,
            _ => false,
        }
    }

    /// The resident pages the region holds itself, and with `shared` the base's it maps too.
    pub(super) fn private_pages(&self, shared: bool) -> Result<usize, PagerError> {
        let c = self.dev.counters().map_err(kmod_err)?;
        let n = if shared { c.resident } else { c.resident.saturating_sub(c.shared) };
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Writes whole pages from `first` into the store, and notes what they are.
    fn store(&self, first: usize, bytes: &[u8], what: Held) -> Result<(), PagerError> {
        self.cover(first + bytes.len() / PAGE_SIZE)?;
        self.dev.store_write(first as u64, bytes).map_err(kmod_err)?;
        if let Some(remote) = &self.remote {
            remote.stored.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        self.set_held(first..first + bytes.len() / PAGE_SIZE, what);
        Ok(())
    }

    /// Installs whole pages from `first` (in state `previous`) as resident and clean: the bytes
    /// go into the store, and the module makes them resident from it.
    pub(super) fn install(&self, first: usize, bytes: &[u8], previous: PageState) -> Result<(), PagerError> {
        let what = match previous {
            PageState::Image => Held::Initial,
            PageState::Remote => Held::Sent,
            PageState::Zero | PageState::Resident => Held::Other,
        };
        self.store(first, bytes, what)?;
        // A copy the module filled earlier (by read-around) goes first: prefetch keeps what it holds.
        let n = (bytes.len() / PAGE_SIZE) as u64;
        self.dev.evict(first as u64, n, false).map_err(kmod_err)?;
        self.dev.prefetch(first as u64, n).map_err(kmod_err)
    }

    /// Notes that the memory's region now holds `bytes` for pages `first..` (an offload sent
    /// them): the store gets them too, so their next touch is served in the kernel.
    pub(super) fn sent(&self, first: usize, bytes: &[u8]) -> Result<(), PagerError> {
        self.store(first, bytes, Held::Sent)
    }
}

/// A bitmap ioctl's page indexes as `usize`s (a region has at most `MAX_PAGES`).
fn indexes(pages: Vec<u64>) -> Vec<usize> {
    pages.into_iter().map(|p| usize::try_from(p).expect("a page index of a region")).collect()
}

/// The runs of consecutive pages in `pages` (ascending).
fn runs(pages: &[usize]) -> impl Iterator<Item = &[usize]> {
    pages.chunk_by(|a, b| *b == *a + 1)
}

impl MemoryHandle {
    /// Marks Resident the pages the guest touched since the last call (the module's accessed
    /// set, reset so the next call sees only new touches), counting those that were faults, and
    /// logs them while the fault log is on. No-op on the other paths.
    pub(super) fn sync_faults(&self) -> Result<(), PagerError> {
        let Some(k) = self.kernel() else { return Ok(()) };
        let state = &self.state;
        let pages = state.accessible_pages();
        if pages == 0 {
            return Ok(());
        }
        let _syncing = k.syncing.lock().unwrap_or_else(|e| e.into_inner());
        let touched = indexes(k.dev.accessed(0, pages as u64, true).map_err(kmod_err)?);
        let stats = &self.shared.stats;
        let (mut faulted, mut seen) = (Vec::new(), Vec::new());
        for &p in &touched {
            if state.table.get(p) == PageState::Resident {
                seen.push(p);
            } else {
                faulted.push(p);
            }
            match state.table.get(p) {
                PageState::Resident => continue,
                PageState::Zero => stats.faults_zero.fetch_add(1, Ordering::Relaxed),
                PageState::Image => stats.faults_image.fetch_add(1, Ordering::Relaxed),
                PageState::Remote => {
                    stats.pages_fetched.fetch_add(1, Ordering::Relaxed);
                    stats.faults_remote.fetch_add(1, Ordering::Relaxed)
                }
            };
            // Pages that came from the memory's own offload stay backed (clean until written).
            if state.table.get(p) == PageState::Remote {
                state.table.set_backed(p, PageState::Resident);
            } else {
                state.table.set(p, PageState::Resident);
            }
        }
        if let Some(remote) = &k.remote {
            // What the module's READs brought (faults, read-around, prefetch), and what its
            // write-backs and the store writes sent, in the pager's byte counts as the other
            // paths' transfers are.
            let c = k.dev.counters().map_err(kmod_err)?;
            let mut counted = remote.counted.lock().unwrap_or_else(|e| e.into_inner());
            let page = PAGE_SIZE as u64;
            stats.bytes_in.fetch_add(c.fills_backend.saturating_sub(counted.0) * page, Ordering::Relaxed);
            let stored = remote.stored.swap(0, Ordering::Relaxed);
            stats.bytes_out.fetch_add(c.written_back.saturating_sub(counted.1) * page + stored, Ordering::Relaxed);
            *counted = (c.fills_backend, c.written_back);
        }
        if state.logging.load(Ordering::Relaxed) {
            // The faults, as on the other paths; and, which only the module can see, the pages
            // the call touched that were resident already (its reads of them too).
            state.fault_log.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&faulted);
            state.read_log.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&seen);
        }
        Ok(())
    }

    pub(super) fn kernel(&self) -> Option<&KernelMemory> {
        self.state.kernel.as_ref()
    }

    /// On the kmod path, keeps faults from being synced while the owner drops pages (see
    /// `KernelMemory::syncing`); take it after any sync of the same operation.
    pub(super) fn kernel_drop_guard(&self) -> Option<std::sync::MutexGuard<'_, ()>> {
        self.kernel().map(|k| k.syncing.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// [`MemoryHandle::sync_faults`], for callers that cannot fail: a failure poisons the memory.
    pub(super) fn sync_or_poison(&self) {
        if let Err(e) = self.sync_faults() {
            self.state.poison(Poison::Handler(format!("reading the module's accessed set: {}", super::error_chain(&e))));
        }
    }

    /// Resident pages written since they were filled or last tracked (ascending): the module's
    /// dirty set, which its evictions clear page by page, so it is never reset here but by
    /// [`MemoryHandle::kernel_track`] (a page it lists and a call drops is gone from it; a page
    /// it lists and a call keeps stays listed until dropped).
    pub(super) fn kernel_written(&self, k: &KernelMemory) -> Result<Vec<usize>, PagerError> {
        self.sync_faults()?;
        let pages = self.state.accessible_pages() as u64;
        if pages == 0 {
            return Ok(Vec::new());
        }
        Ok(indexes(k.dev.dirty(0, pages, false).map_err(kmod_err)?))
    }

    /// Starts write tracking for a snapshot: every page of the memory is now its initial state.
    /// The store gets what it lacks of it — non-zero pages from the snapshot's image (a capture
    /// has just made it) or, for pages not resident (an adoption), from its memnode region; zeros
    /// over other bytes — and the dirty set starts empty.
    pub(super) fn kernel_track(&self, k: &KernelMemory, snap: &super::Snapshot) -> Result<(), PagerError> {
        let pages = self.state.accessible_pages();
        self.sync_image()?;
        // Pages whose initial state the base holds read it from there: the store's copies go, and
        // the module's copies of those the memory holds (each equal to its initial state now)
        // come back as the base's own pages, shared.
        let held = k.held().clone();
        let on_base: Vec<usize> =
            (0..pages).filter(|&p| snap.holds(p) && held.get(p) != Some(&Held::Base) && k.base_holds(p)).collect();
        let resident: Vec<usize> = on_base.iter().copied().filter(|&p| self.state.table.get(p) == PageState::Resident).collect();
        k.to_base(&on_base)?;
        for run in runs(&resident) {
            k.dev.prefetch(run[0] as u64, run.len() as u64).map_err(kmod_err)?;
        }
        let todo: Vec<usize> = (0..pages).filter(|&p| snap.holds(p) && !k.is_held(p, Held::Initial)).collect();
        let image = snap.local();
        let (local, rest): (Vec<usize>, Vec<usize>) = todo.iter().partition(|&&p| image.as_ref().is_some_and(|i| i.holds(p)));
        if let Some(image) = &image {
            for run in runs(&local) {
                k.store(run[0], image.pages(run[0], run.len()), Held::Initial)?;
            }
        }
        if rest.iter().any(|&p| self.state.table.get(p) == PageState::Resident) {
            return Err(PagerError::Snapshot("a resident page's initial state is neither local nor fetchable"));
        }
        self.kernel_settle(k, &rest)?;
        for p in (0..pages).filter(|&p| !snap.holds(p) && !k.is_held(p, Held::Zero)) {
            k.store(p, &ZEROS, Held::Zero)?;
        }
        if pages > 0 {
            k.dev.dirty(0, pages as u64, true).map_err(kmod_err)?;
        }
        Ok(())
    }

    /// Brings the store in step with the page table for `pages` (ascending, none Resident): each
    /// gets the bytes of its state where the store holds others — zeros, its initial state (from
    /// the snapshot's image, or its memnode region), or what the memory's region holds — and the
    /// module drops any copy it holds of those: pages the table does not list as resident can
    /// still be the module's, filled by read-around beside a faulting page from what the store
    /// held then.
    fn kernel_settle(&self, k: &KernelMemory, pages: &[usize]) -> Result<(), PagerError> {
        let mut zero = Vec::new();
        let mut initial = Vec::new();
        let mut sent = Vec::new();
        for &p in pages {
            match self.state.table.get(p) {
                PageState::Zero if !k.is_held(p, Held::Zero) => zero.push(p),
                PageState::Image if !k.is_held(p, Held::Initial) => initial.push(p),
                PageState::Remote if !k.is_held(p, Held::Sent) => sent.push(p),
                _ => {}
            }
        }
        for &p in &zero {
            k.store(p, &ZEROS, Held::Zero)?;
        }
        if !initial.is_empty() {
            let (on_base, rest): (Vec<usize>, Vec<usize>) = initial.iter().partition(|&&p| k.base_holds(p));
            k.to_base(&on_base)?;
            initial = rest;
        }
        if !initial.is_empty() {
            let snap = self.state.snapshot.get().ok_or(PagerError::Snapshot("an initial-state page needs a snapshot"))?;
            let image = snap.local();
            let (local, fetch): (Vec<usize>, Vec<usize>) = initial.iter().partition(|&&p| image.as_ref().is_some_and(|i| i.holds(p)));
            if let Some(image) = &image {
                for run in runs(&local) {
                    k.store(run[0], image.pages(run[0], run.len()), Held::Initial)?;
                }
            }
            self.kernel_fetch_into_store(k, snap.region(), &fetch, Held::Initial)?;
        }
        if !sent.is_empty() {
            let region = self.state.region().ok_or(PagerError::Snapshot("an offloaded page needs the memory's region"))?;
            self.kernel_fetch_into_store(k, region, &sent, Held::Sent)?;
        }
        let mut rewritten = [zero, initial, sent].concat();
        rewritten.sort_unstable();
        for run in runs(&rewritten) {
            k.dev.evict(run[0] as u64, run.len() as u64, false).map_err(kmod_err)?;
        }
        Ok(())
    }

    /// [`MemoryHandle::sync_image`] on the kmod path: with copy-on-write images the region's base
    /// follows the function's current image, `want`. The memory is idle and reset (every page equals its
    /// initial state). The old base's pages the module maps become copies of the memory's own
    /// (`EBB_BASE_KEEP`: a semi-warm instance keeps its pages, to drain them at the policy's
    /// rate); the other pages that read the old base and that the new one lacks get their bytes
    /// into the store first; initial-state copies in the store that the new base makes needless
    /// go. A kept page the new base lacks has no copy in the store (`Held::Other`): dropping it
    /// settles the store first, as every drop does.
    pub(super) fn kernel_sync_image(&self, k: &KernelMemory, want: Option<Arc<LocalImage>>) -> Result<(), PagerError> {
        let state = &self.state;
        let have = k.base();
        if k.base_is(want.as_ref()) {
            return Ok(());
        }
        let device = match &want {
            Some(w) => Some(w.device().ok_or(PagerError::Snapshot("a kmod memory's base must be an image region"))?),
            None => None,
        };
        let new_holds = |p: usize| want.as_ref().is_some_and(|w| w.holds(p));
        let based: Vec<usize> = k.held().iter().enumerate().filter(|&(_, h)| *h == Held::Base).map(|(p, _)| p).collect();
        let (kept, rest): (Vec<usize>, Vec<usize>) = based.into_iter().partition(|&p| state.table.get(p) == PageState::Resident);
        let moving: Vec<usize> = rest.into_iter().filter(|&p| !new_holds(p)).collect();
        if let Some(old) = &have {
            for run in runs(&moving) {
                k.store(run[0], old.pages(run[0], run.len()), Held::Initial)?;
            }
        }
        k.dev.set_base(device, true).map_err(kmod_err)?;
        *k.base.lock().unwrap_or_else(|e| e.into_inner()) = want.clone();
        // Held::Base stays right where the new base holds the page too; elsewhere the kept page
        // is the only copy of its bytes.
        let lacking: Vec<usize> = kept.into_iter().filter(|&p| !new_holds(p)).collect();
        for run in runs(&lacking) {
            k.set_held(run[0]..run[0] + run.len(), Held::Other);
        }
        let held = k.held().clone();
        let to_base: Vec<usize> = (0..state.accessible_pages().min(held.len()))
            .filter(|&p| held[p] == Held::Initial && state.table.get(p) == PageState::Image && new_holds(p))
            .collect();
        k.to_base(&to_base)
    }

    /// `pages` (ascending, all Remote) whose bytes in the memory's region another node wrote
    /// (a borrower's): the store's copies of them no longer hold, and it takes the region's now;
    /// the module drops what it holds of them (the table's resident pages too), so their next
    /// touch reads the new bytes.
    pub(super) fn kernel_rewritten(&self, k: &KernelMemory, pages: &[usize]) -> Result<(), PagerError> {
        for run in runs(pages) {
            k.set_held(run[0]..run[0] + run.len(), Held::Other);
        }
        self.kernel_settle(k, pages)
    }

    /// Reads `pages` (ascending) of a memnode region into the store.
    fn kernel_fetch_into_store(&self, k: &KernelMemory, region: ebb_memnode::RegionId, pages: &[usize], what: Held) -> Result<(), PagerError> {
        const BATCH: usize = 1024;
        let mut buf = vec![0u8; pages.len().min(BATCH) * PAGE_SIZE];
        for chunk in pages.chunks(BATCH) {
            let indexes: Vec<u64> = chunk.iter().map(|&p| p as u64).collect();
            let bytes = &mut buf[..chunk.len() * PAGE_SIZE];
            self.shared.transport.read_pages(region, &indexes, bytes)?;
            let stats = &self.shared.stats;
            stats.bytes_in.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            let mut at = 0;
            for run in runs(chunk) {
                k.store(run[0], &bytes[at * PAGE_SIZE..(at + run.len()) * PAGE_SIZE], what)?;
                at += run.len();
            }
        }
        Ok(())
    }

    /// The kmod path's page drop: the store is brought in step with the pages' (already set) new
    /// states, then the module evicts them without a write-back, so their next touch reads it.
    pub(super) fn kernel_discard(&self, k: &KernelMemory, pages: &[usize]) -> Result<(), PagerError> {
        self.kernel_settle(k, pages)?;
        for run in runs(pages) {
            k.dev.evict(run[0] as u64, run.len() as u64, false).map_err(kmod_err)?;
        }
        Ok(())
    }

    /// Makes those of `pages` (ascending) in their initial state resident ahead of a call: the
    /// store holds them (see the module doc), so the module fills them without a transfer.
    pub(super) fn kernel_prefetch(&self, k: &KernelMemory, pages: &[usize]) -> Result<usize, PagerError> {
        let state = &self.state;
        self.sync_faults()?;
        let limit = state.accessible_pages();
        let want: Vec<usize> = pages.iter().copied().filter(|&p| p < limit && state.table.get(p) == PageState::Image).collect();
        self.kernel_settle(k, &want)?;
        for run in runs(&want) {
            k.dev.prefetch(run[0] as u64, run.len() as u64).map_err(kmod_err)?;
            for &p in run {
                state.table.set(p, PageState::Resident);
            }
        }
        self.shared.stats.pages_prefetched.fetch_add(want.len() as u64, Ordering::Relaxed);
        Ok(want.len())
    }

    /// Makes `pages` (ascending, just dropped to their initial state, which the store holds)
    /// resident again from the store, without a fault.
    pub(super) fn kernel_refill(&self, k: &KernelMemory, pages: &[usize]) -> Result<(), PagerError> {
        for run in runs(pages) {
            k.dev.prefetch(run[0] as u64, run.len() as u64).map_err(kmod_err)?;
            for &p in run {
                self.state.table.set(p, PageState::Resident);
            }
        }
        Ok(())
    }

    /// Maps the region back over `[offset, offset + len)` (undoing a file mapped there).
    pub(super) fn kernel_remap(&self, k: &KernelMemory, offset: usize, len: usize) -> std::io::Result<()> {
        self.state.reservation.map_shared_at(offset, len, k.dev.as_fd(), offset as u64)
    }
}
