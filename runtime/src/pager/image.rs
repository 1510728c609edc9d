//! Local images of initial states, and mapping them copy-on-write into memories.
//!
//! A function's local image is a memfd of the snapshot's size whose pages are (some of) the
//! initial state's; the pages it lacks are holes. With copy-on-write images (the default,
//! [`super::PagerConfig::cow_images`]) each memory of the function maps the image *privately*
//! over `[0, size)`, the way wasmtime maps its own memfd images:
//!
//! ```text
//!   read of a page the image holds  → a page-cache hit: mapped by the kernel, no userfaultfd
//!   write of such a page             → the kernel's copy-on-write: a private anonymous page
//!   touch of a hole                  → userfaultfd (MISSING on the memfd): a zero page where the
//!                                      initial state is zero; where it is not, the page and its
//!                                      read-around are fetched from the memnode INTO the image
//!                                      (pwrite), and the access retried hits the page cache
//!   reset                            → PAGEMAP_SCAN: the private (anonymous, non-zero-pfn) pages
//!                                      are exactly those the call wrote → MADV_DONTNEED them
//! ```
//!
//! A memory maps the image only while the function has one: without it (after an offload, or once
//! the function turned semi-warm) memories are anonymous paged memory, whose faults install what
//! they fetch in one `UFFDIO_COPY` — fetching into an image and then mapping it costs two copies.
//!
//! So resets, adoptions and restores cost page-cache hits, not one `UFFDIO_COPY` per page, every
//! instance shares one copy of the pages it only reads, and the pages a call read are visible
//! (mapped in the page table) — which the policy's working sets use.
//!
//! On the kmod path an image is a region of Ebb's kernel module instead of a memfd (an *image
//! region*, [`super::kmod::Kind::Image`]), and a memory takes it as its region's *base* instead of
//! mapping it: the module maps the image's pages themselves into the memory for reads and copies
//! one at its first write (see `kernel`). Same sharing, same accounting, no userfaultfd.
//!
//! Images only grow: a page, once held, keeps the initial state's bytes (which never change), so
//! readers need no lock; a dropped image stays alive while a memory still maps it, and each memory
//! moves to the function's current image at its next reset, eviction or prefetch (or when the
//! policy asks, [`MemoryHandle::sync_image`]). Pages never live on the memnode (Remote) while the
//! image is mapped: offloading or lending a memory first turns it back into anonymous memory
//! ([`MemoryHandle::unmap_image`]), keeping every page it had.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ebb_memnode::PAGE_SIZE;
use memmap2::{Mmap, MmapOptions};
use userfaultfd::RegisterMode;

use super::kmod::{Backend, Device, Kind};
use super::{MemoryHandle, MemoryState, PageState, PagerError, sys};

/// Where an image's pages are.
#[derive(Debug)]
enum Backing {
    /// A memfd: memories map it privately.
    Memfd(File),
    /// An image region of Ebb's kernel module: memories' regions take it as their base.
    Kernel(Device),
}

/// This host's copy of (some of) an initial state's pages.
pub(super) struct LocalImage {
    backing: Backing,
    map: Mmap,
    held: Box<[AtomicBool]>,
    count: AtomicUsize,
}

impl std::fmt::Debug for LocalImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalImage").field("backing", &self.backing).field("pages", &self.held.len()).field("held", &self.count()).finish()
    }
}

impl LocalImage {
    /// An image of `size` bytes holding nothing yet: a memfd, or with `kernel` an image region
    /// of the kernel module.
    pub(super) fn empty(size: usize, kernel: bool) -> Result<LocalImage, PagerError> {
        let setup = |source| PagerError::Setup { len: size, source };
        let len = size.max(PAGE_SIZE);
        let held = (0..size / PAGE_SIZE).map(|_| AtomicBool::new(false)).collect();
        if kernel {
            let dev = Device::open().map_err(PagerError::Kernel)?;
            let pages = len / PAGE_SIZE;
            dev.create_kind(pages as u64, Backend::Dram, 0, Kind::Image).map_err(PagerError::Kernel)?;
            let map = dev.map_image(0, pages).map_err(PagerError::Kernel)?;
            return Ok(LocalImage { backing: Backing::Kernel(dev), map, held, count: AtomicUsize::new(0) });
        }
        let fd = nix::sys::memfd::memfd_create(c"ebb-image", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
            .map_err(|e| setup(e.into()))?;
        let file = File::from(fd);
        file.set_len(len as u64).map_err(setup)?;
        // SAFETY: a shared read-only view of our own memfd; its pages change only through
        // `put`, which writes the bytes they already have or fills holes nobody reads yet.
        let map = unsafe { MmapOptions::new().len(len).map(&file) }.map_err(setup)?;
        Ok(LocalImage { backing: Backing::Memfd(file), map, held, count: AtomicUsize::new(0) })
    }

    /// The image region, if this image is one of the kernel module's.
    pub(super) fn device(&self) -> Option<&Device> {
        match &self.backing {
            Backing::Kernel(dev) => Some(dev),
            Backing::Memfd(_) => None,
        }
    }

    /// An image of `size` bytes holding `pages` (ascending) with the bytes `fill(p)` gives.
    pub(super) fn build<'a>(size: usize, kernel: bool, pages: &[usize], fill: impl Fn(usize) -> &'a [u8]) -> Result<LocalImage, PagerError> {
        let image = LocalImage::empty(size, kernel)?;
        for &p in pages {
            image.put(p, fill(p)).map_err(|source| PagerError::Setup { len: size, source })?;
        }
        Ok(image)
    }

    /// Whether page `p` is in the image.
    pub(super) fn holds(&self, p: usize) -> bool {
        self.held.get(p).is_some_and(|h| h.load(Ordering::Acquire))
    }

    /// Pages held.
    pub(super) fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The bytes of pages `first..first + n` (all held).
    pub(super) fn pages(&self, first: usize, n: usize) -> &[u8] {
        &self.map[first * PAGE_SIZE..(first + n) * PAGE_SIZE]
    }

    /// Writes pages `first..` (the initial state's bytes) into the image. Allocation- and
    /// lock-free on a memfd: faults fill holes from inside a SIGBUS handler. (The module's image
    /// region keeps the bytes of the pages it holds already: they are the same.)
    pub(super) fn put(&self, first: usize, bytes: &[u8]) -> std::io::Result<()> {
        let n = bytes.len() / PAGE_SIZE;
        assert!(first + n <= self.held.len() && bytes.len().is_multiple_of(PAGE_SIZE), "whole pages inside the image");
        let file = match &self.backing {
            Backing::Memfd(file) => file,
            Backing::Kernel(dev) => {
                dev.store_write(first as u64, bytes).map_err(|e| e.source)?;
                self.mark_held(first, n);
                return Ok(());
            }
        };
        let mut done = 0;
        while done < bytes.len() {
            let offset = libc::off_t::try_from(first * PAGE_SIZE + done).expect("image offset");
            // SAFETY: writes from `bytes[done..]`, valid for reads, to our own memfd.
            let r = unsafe { libc::pwrite(file.as_raw_fd(), bytes[done..].as_ptr().cast(), bytes.len() - done, offset) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            done += usize::try_from(r).expect("non-negative");
        }
        self.mark_held(first, n);
        Ok(())
    }

    /// Marks pages held, after their bytes are in: whoever sees a page held reads its bytes.
    fn mark_held(&self, first: usize, n: usize) {
        let added = self.held[first..first + n].iter().filter(|h| !h.swap(true, Ordering::AcqRel)).count();
        self.count.fetch_add(added, Ordering::Relaxed);
    }

}

impl MemoryState {
    /// Pages `[0, n)` covered by a mapped image (0: none is mapped).
    pub(super) fn image_pages(&self) -> usize {
        self.image_pages.load(Ordering::Acquire)
    }

    /// The image mapped over `[0, image_pages)`, if any.
    pub(super) fn mapped_image(&self) -> Option<Arc<LocalImage>> {
        self.image.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether page `p` lies in the mapped image's range (its faults follow the image's rules).
    pub(super) fn in_image(&self, p: usize) -> bool {
        p < self.image_pages()
    }
}

/// Clears a memory's count of pages being moved when the move ends, on every path.
struct MovingDone<'a>(&'a AtomicUsize);

impl Drop for MovingDone<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// One PAGEMAP_SCAN of a memory's pages `range`, as page indexes.
fn scan(state: &MemoryState, range: std::ops::Range<usize>, which: sys::Scan, max: usize) -> Result<Vec<usize>, PagerError> {
    let (start, end) = (state.base() + range.start * PAGE_SIZE, state.base() + range.end * PAGE_SIZE);
    let mut ranges = Vec::new();
    sys::scan_pages(start, end, which, max, &mut ranges).map_err(|source| PagerError::Setup { len: end - start, source })?;
    Ok(ranges.into_iter().flat_map(|r| (r.start - state.base()) / PAGE_SIZE..(r.end - state.base()) / PAGE_SIZE).collect())
}

impl MemoryHandle {
    /// Pages of the mapped image's range the running or last call wrote (its private pages).
    pub(super) fn written_in_image(&self) -> Result<Vec<usize>, PagerError> {
        scan(&self.state, 0..self.state.image_pages(), sys::Scan::Private, usize::MAX)
    }

    /// Pages of the mapped image's range mapped now (read or written since they were last
    /// dropped), ascending.
    pub(super) fn present_in_image(&self) -> Result<Vec<usize>, PagerError> {
        scan(&self.state, 0..self.state.image_pages(), sys::Scan::Present, usize::MAX)
    }

    /// Pages only this memory holds: with a mapped image, its private pages (the image's own
    /// pages are counted once, in [`super::Snapshot::local_bytes`]); else every resident page.
    /// An image the function has dropped is held alive by its mappings alone (until
    /// [`MemoryHandle::sync_image`] moves the memory off it), so its mapped pages count here.
    pub fn private_pages(&self) -> usize {
        self.sync_or_poison();
        let state = &self.state;
        if let Some(k) = self.kernel() {
            // What the module holds for this memory (its copies, read-around included), not the
            // pages of the function's image it maps — unless the function dropped that image:
            // then they live on for this memory alone (until `sync_image` moves it off them).
            let current = k.base_is(state.snapshot.get().and_then(|s| s.local()).as_ref());
            return k.private_pages(!current).unwrap_or_else(|e| {
                tracing::warn!("reading the module's counters: {e}");
                state.table.count(0..state.accessible_pages(), PageState::Resident)
            });
        }
        let from = state.image_pages();
        let current = |m: &Arc<LocalImage>| state.snapshot.get().and_then(|s| s.local()).is_some_and(|l| Arc::ptr_eq(&l, m));
        let mapped = match state.mapped_image() {
            _ if from == 0 => 0,
            Some(m) if !current(&m) => self.present_in_image().map_or(0, |p| p.len()),
            _ => self.written_in_image().map_or(0, |p| p.len()),
        };
        mapped + state.table.count(from..state.accessible_pages(), PageState::Resident) + state.moving.load(Ordering::Relaxed)
    }

    /// Of `pages` (ascending), those the memory holds of its own: with a mapped image, not the
    /// image's pages it maps unchanged (they cost it nothing: the image is counted once).
    pub fn own_pages(&self, pages: &[usize]) -> Vec<usize> {
        let from = self.state.image_pages();
        if from == 0 {
            return pages.to_vec();
        }
        match self.written_in_image() {
            Ok(private) => pages.iter().copied().filter(|&p| p >= from || private.binary_search(&p).is_ok()).collect(),
            Err(e) => {
                tracing::warn!("PAGEMAP_SCAN failed; taking every page as the memory's own: {e}");
                pages.to_vec()
            }
        }
    }

    /// Whether nothing of the memory is resident (an evicted or never-touched instance): no
    /// private page, and no page of the mapped image mapped.
    pub fn is_drained(&self) -> bool {
        self.sync_or_poison();
        let state = &self.state;
        state.table.total(PageState::Resident) == 0
            && scan(state, 0..state.image_pages(), sys::Scan::Present, 1).is_ok_and(|p| p.is_empty())
    }

    /// Maps the snapshot's current local image over the memory if copy-on-write images are on and
    /// it maps another one (or none), or turns the memory back into anonymous memory if the
    /// function has no image any more. The instance must be idle and reset (every page equal to
    /// its initial state): what was resident is dropped, except that pages of a dropped image that
    /// were mapped are kept, installed privately (a semi-warm instance's hot pages stay).
    /// Memories with pages on the memnode stay as they are until those are back.
    pub fn sync_image(&self) -> Result<(), PagerError> {
        let state = &self.state;
        let Some(snap) = state.snapshot.get() else { return Ok(()) };
        if !self.shared.config.cow_images {
            return Ok(());
        }
        let want = snap.local();
        if let Some(k) = self.kernel() {
            return self.kernel_sync_image(k, want);
        }
        let have = state.mapped_image();
        match (&want, &have) {
            (Some(w), Some(h)) if Arc::ptr_eq(w, h) => Ok(()),
            (None, None) => Ok(()),
            (Some(w), _) => self.map_image(w.clone()),
            (None, Some(_)) => self.unmap_image(),
        }
    }

    /// Maps `image` privately over `[0, snapshot size)`; see [`MemoryHandle::sync_image`].
    fn map_image(&self, image: Arc<LocalImage>) -> Result<(), PagerError> {
        let Backing::Memfd(file) = &image.backing else {
            return Err(PagerError::Config("a kernel image region is a base, never mapped over a memory".into()));
        };
        let state = &self.state;
        let snap = state.snapshot.get().ok_or(PagerError::Snapshot("mapping an image needs a snapshot"))?;
        let pages = snap.size() / PAGE_SIZE;
        if pages == 0 || state.accessible_pages() < pages || state.table.count(0..pages, PageState::Remote) > 0 {
            return Ok(());
        }
        state.fence();
        // What the memory holds of the initial state (mapped from an older image, or private
        // pages of anonymous memory) goes into the new image where it lacks it: kept, not
        // fetched again. Every such page equals its initial state (the memory is reset).
        let present = scan(state, 0..pages, sys::Scan::Present, usize::MAX)?;
        let keep: Vec<usize> = present.iter().copied().filter(|&p| snap.holds(p) && !image.holds(p)).collect();
        for run in keep.chunk_by(|a, b| *b == *a + 1) {
            // SAFETY: the run is mapped (PAGEMAP_SCAN said so) inside the accessible memory, which
            // is idle.
            let bytes = unsafe { std::slice::from_raw_parts((state.base() + run[0] * PAGE_SIZE) as *const u8, run.len() * PAGE_SIZE) };
            image.put(run[0], bytes).map_err(|source| PagerError::Setup { len: bytes.len(), source })?;
        }
        let len = pages * PAGE_SIZE;
        let setup = |source| PagerError::Setup { len, source };
        let mut slot = state.image.write().unwrap_or_else(|e| e.into_inner());
        // From here until the registration the range has no userfaultfd: the memory is idle.
        state.image_pages.store(0, Ordering::Release);
        let mapped = state.reservation.map_private(0, len, file.as_fd(), 0).and_then(|()| {
            state
                .uffd
                .register_with_mode(state.base() as *mut _, len, RegisterMode::MISSING)
                .map(drop)
                .map_err(|e| std::io::Error::other(e.to_string()))
        });
        if let Err(e) = mapped {
            state.poison(super::Poison::Inconsistent("a memory could not map its image"));
            return Err(setup(e));
        }
        for p in 0..pages {
            if state.table.get(p) == PageState::Resident {
                state.table.set(p, snap.initial(p));
            }
        }
        *slot = Some(image.clone());
        state.image_pages.store(pages, Ordering::Release);
        drop(slot);
        // What was resident stays mapped (no fault at the next touch).
        let held: Vec<usize> = present.into_iter().filter(|&p| image.holds(p)).collect();
        self.populate(&held);
        Ok(())
    }

    /// Turns a memory that maps an image back into anonymous paged memory, keeping every page
    /// it has: mapped image pages are installed clean, private pages (a call's writes) as
    /// written, zero pages drop back to zero. Safe in the middle of a call whose guest is stopped
    /// in a host call (lending); needed before pages may go to the memnode.
    pub fn unmap_image(&self) -> Result<(), PagerError> {
        let state = &self.state;
        let Some(image) = state.mapped_image() else { return Ok(()) };
        let snap = state.snapshot.get().ok_or(PagerError::Snapshot("mapping an image needs a snapshot"))?;
        state.fence();
        let pages = state.image_pages();
        let len = pages * PAGE_SIZE;
        let setup = |source| PagerError::Setup { len, source };
        let present = self.present_in_image()?;
        let private = self.written_in_image()?;
        // The private pages' bytes, before the remap drops them.
        let mut saved = vec![0u8; private.len() * PAGE_SIZE];
        for (i, &p) in private.iter().enumerate() {
            // SAFETY: page `p` is mapped (PAGEMAP_SCAN said so) inside the accessible memory, and
            // nothing writes it meanwhile (idle, or the guest stopped in a host call).
            let bytes = unsafe { std::slice::from_raw_parts((state.base() + p * PAGE_SIZE) as *const u8, PAGE_SIZE) };
            saved[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].copy_from_slice(bytes);
        }
        let kept = present.iter().filter(|&&p| private.binary_search(&p).is_err() && image.holds(p)).count();
        state.moving.store(private.len() + kept, Ordering::Relaxed);
        let moved = MovingDone(&state.moving);
        let mut slot = state.image.write().unwrap_or_else(|e| e.into_inner());
        state.image_pages.store(0, Ordering::Release);
        state.reservation.map_anonymous(0, len).map_err(setup)?;
        let registered = state
            .uffd
            .register_with_mode(state.base() as *mut _, len, RegisterMode::MISSING | RegisterMode::WRITE_PROTECT)
            .and_then(|_| state.uffd.write_protect(state.base() as *mut _, len));
        if let Err(e) = registered {
            state.poison(super::Poison::Inconsistent("a memory could not leave its image"));
            return Err(setup(std::io::Error::other(e.to_string())));
        }
        *slot = None;
        drop(slot);
        for p in 0..pages {
            state.table.set(p, snap.initial(p));
        }
        let install = |p: usize, bytes: &[u8], clean: bool| -> Result<(), PagerError> {
            state.table.set(p, PageState::Resident);
            state.moving.fetch_sub(1, Ordering::Relaxed);
            let fill = if clean { sys::Fill::CopyClean(bytes.as_ptr()) } else { sys::Fill::Copy(bytes.as_ptr()) };
            // SAFETY: page `p` is inside the registered range; `bytes` is one page.
            unsafe { sys::install(&state.uffd, fill, state.base() + p * PAGE_SIZE, PAGE_SIZE) }.map(drop).map_err(|source| {
                state.poison(super::Poison::Inconsistent("a memory could not keep its pages while leaving its image"));
                PagerError::Setup { len: PAGE_SIZE, source }
            })
        };
        for (i, &p) in private.iter().enumerate() {
            install(p, &saved[i * PAGE_SIZE..(i + 1) * PAGE_SIZE], false)?;
        }
        for &p in present.iter().filter(|&&p| private.binary_search(&p).is_err() && image.holds(p)) {
            install(p, image.pages(p, 1), true)?;
        }
        drop(moved);
        Ok(())
    }

    /// Maps the given pages of the mapped image (ascending, all held) now, so touching them takes
    /// no fault. Best effort: a page not mapped here is a page-cache hit at its first touch.
    pub(super) fn populate(&self, pages: &[usize]) {
        let state = &self.state;
        for run in pages.chunk_by(|a, b| *b == *a + 1) {
            if let Err(e) = sys::populate_read(state.base() + run[0] * PAGE_SIZE, run.len() * PAGE_SIZE) {
                tracing::debug!("MADV_POPULATE_READ of pages {}..{}: {e}", run[0], run[0] + run.len());
            }
        }
    }
}
