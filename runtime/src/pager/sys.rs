//! The raw system calls of the pager: mappings, epoll and eventfd, and the one helper that
//! classifies userfaultfd ioctl results. Kept here so the rest of the pager holds no `unsafe` but
//! the page installs.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use userfaultfd::Uffd;

/// Feature bit of UFFDIO_API (Linux 6.7+): write-protect faults are resolved by the kernel
/// itself, leaving a "written" mark that PAGEMAP_SCAN reports. Not named by the userfaultfd crate.
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;

/// An anonymous reservation: `len` bytes of PROT_NONE address space, unmapped on drop.
#[derive(Debug)]
pub struct Reservation {
    base: usize,
    len: usize,
}

impl Reservation {
    pub fn new(len: usize) -> io::Result<Reservation> {
        // SAFETY: a fresh anonymous mapping at an address chosen by the kernel aliases nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Reservation { base: p as usize, len })
    }

    pub fn base(&self) -> usize {
        self.base
    }

    /// Makes `[offset, offset + len)` readable and writable.
    pub fn make_accessible(&self, offset: usize, len: usize) -> io::Result<()> {
        assert!(offset + len <= self.len, "range inside the reservation");
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the range lies inside this reservation, which this value owns; changing its
        // protection cannot affect memory outside it.
        let r = unsafe { libc::mprotect((self.base + offset) as *mut _, len, libc::PROT_READ | libc::PROT_WRITE) };
        if r != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Maps the first `len` bytes of the shared file `fd` over `[offset, offset + len)`: the
    /// range's accesses then reach the file's pages directly (no userfaultfd, which the new
    /// mapping does not carry). Callers hold the memory still (its guest is in a host call).
    pub fn map_shared(&self, offset: usize, len: usize, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.map_fixed(offset, len, libc::MAP_SHARED, fd.as_raw_fd(), 0)
    }

    /// Maps `len` bytes of the file `fd` from `file_offset` (page-aligned) over
    /// `[offset, offset + len)` copy-on-write: the range reads the file's pages, and writes stay
    /// private to this mapping (the file never changes). As [`Reservation::map_shared`] otherwise.
    pub fn map_private(&self, offset: usize, len: usize, fd: BorrowedFd<'_>, file_offset: u64) -> io::Result<()> {
        let file_offset = libc::off_t::try_from(file_offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.map_fixed(offset, len, libc::MAP_PRIVATE, fd.as_raw_fd(), file_offset)
    }

    /// Maps `len` bytes of the shared file `fd` from `file_offset` over `[offset, offset + len)`
    /// (a region of Ebb's kernel module: the kmod fault path's memory, see `pager::kernel`).
    pub fn map_shared_at(&self, offset: usize, len: usize, fd: BorrowedFd<'_>, file_offset: u64) -> io::Result<()> {
        let file_offset = libc::off_t::try_from(file_offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        self.map_fixed(offset, len, libc::MAP_SHARED, fd.as_raw_fd(), file_offset)
    }

    /// Makes `[offset, offset + len)` inaccessible again (PROT_NONE), keeping what is mapped there.
    pub fn make_inaccessible(&self, offset: usize, len: usize) -> io::Result<()> {
        assert!(offset + len <= self.len, "range inside the reservation");
        if len == 0 {
            return Ok(());
        }
        // SAFETY: as in `make_accessible`: only this reservation's own range changes protection.
        let r = unsafe { libc::mprotect((self.base + offset) as *mut _, len, libc::PROT_NONE) };
        if r != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Puts fresh private anonymous memory (read/write, zero) over `[offset, offset + len)`,
    /// undoing [`Reservation::map_shared`]; the range needs registering with userfaultfd again.
    pub fn map_anonymous(&self, offset: usize, len: usize) -> io::Result<()> {
        self.map_fixed(offset, len, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE, -1, 0)
    }

    fn map_fixed(&self, offset: usize, len: usize, flags: libc::c_int, fd: libc::c_int, file_offset: libc::off_t) -> io::Result<()> {
        assert!(offset + len <= self.len && offset.is_multiple_of(PAGE) && len.is_multiple_of(PAGE), "page-aligned range inside the reservation");
        // SAFETY: MAP_FIXED replaces only `[offset, offset + len)`, inside this reservation, which
        // this value owns; nothing else maps there, and callers hold no references into it.
        let p = unsafe {
            libc::mmap((self.base + offset) as *mut _, len, libc::PROT_READ | libc::PROT_WRITE, flags | libc::MAP_FIXED, fd, file_offset)
        };
        if p == libc::MAP_FAILED { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Drops the pages of `[offset, offset + len)`: the next access faults (to userfaultfd).
    pub fn discard(&self, offset: usize, len: usize) -> io::Result<()> {
        assert!(offset + len <= self.len, "range inside the reservation");
        // SAFETY: the range lies inside this reservation; MADV_DONTNEED on a private anonymous
        // mapping only drops its pages, and callers hold the memory idle (no guest runs on it).
        let r = unsafe { libc::madvise((self.base + offset) as *mut _, len, libc::MADV_DONTNEED) };
        if r != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: this value owns the mapping; nothing refers to it once the memory is dropped.
        unsafe { libc::munmap(self.base as *mut _, self.len) };
    }
}

/// The outcome of a page install that did not fail.
#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    /// The pages are now mapped.
    Done,
    /// Something mapped them first (EEXIST): the page is served, the waiter must still be woken.
    AlreadyThere,
}

/// How a page is installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// Map the shared zero page (UFFDIO_ZEROPAGE): cheapest, for reads of untracked memory.
    ZeroPage,
    /// Copy from a source buffer (UFFDIO_COPY).
    Copy(*const u8),
    /// Copy and write-protect (UFFDIO_COPY_MODE_WP): the page counts as clean until written, which
    /// the asynchronous write-protect mode records for [`scan_written`].
    CopyClean(*const u8),
}

/// Installs `len` bytes at `dst` as `fill` says, waking the faulting threads. The one place where
/// uffd errnos are classified: EAGAIN (the mm changed under us, or a partial copy) is retried from
/// where it stopped; EEXIST means the first page left was already served (by a fault handler
/// racing a prefetch): its waiters are woken and the install goes on after it.
///
/// # Safety
/// `dst..dst+len` must be inside a range registered with `uffd`, page aligned, and a source
/// buffer must be valid for `len` bytes of reads.
pub unsafe fn install(uffd: &Uffd, fill: Fill, dst: usize, len: usize) -> io::Result<Installed> {
    let mut done = 0;
    let mut already = false;
    loop {
        let (d, n) = (dst + done, len - done);
        let result: Result<usize, nix::errno::Errno> = match fill {
            // SAFETY: forwarded from this function's contract.
            Fill::ZeroPage => match unsafe { uffd.zeropage(d as *mut _, n, true) } {
                Ok(n) => Ok(n),
                Err(userfaultfd::Error::ZeropageFailed(e)) => Err(e),
                Err(e) => return Err(io::Error::other(e.to_string())),
            },
            Fill::Copy(src) | Fill::CopyClean(src) => {
                let wp = matches!(fill, Fill::CopyClean(_));
                let mut copy = userfaultfd_sys::uffdio_copy {
                    dst: d as u64,
                    // SAFETY (pointer arithmetic only): `done < len`, inside the source buffer.
                    src: src.wrapping_add(done) as u64,
                    len: n as u64,
                    mode: if wp { userfaultfd_sys::UFFDIO_COPY_MODE_WP } else { 0 },
                    copy: 0,
                };
                // SAFETY: `copy` describes a source valid for `n` bytes and a destination inside
                // the registered range (this function's contract); the kernel writes only `copy`.
                let r = unsafe { libc::ioctl(uffd.as_raw_fd(), userfaultfd_sys::UFFDIO_COPY as _, &mut copy) };
                if r == 0 {
                    Ok(n)
                } else if copy.copy > 0 {
                    // Partly copied: continue after what was installed.
                    done += usize::try_from(copy.copy).expect("positive");
                    continue;
                } else {
                    Err(nix::errno::Errno::last())
                }
            }
        };
        match result {
            Ok(_) => return Ok(if already { Installed::AlreadyThere } else { Installed::Done }),
            Err(nix::errno::Errno::EEXIST) => {
                // Wake whoever waits: the page exists but a waiter may still be queued.
                let _ = uffd.wake(d as *mut _, PAGE);
                already = true;
                done += PAGE;
                if done >= len {
                    return Ok(Installed::AlreadyThere);
                }
            }
            Err(nix::errno::Errno::EAGAIN) => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
        }
    }
}

const PAGE: usize = ebb_memnode::PAGE_SIZE;

// PAGEMAP_SCAN (Linux 6.7+, `linux/fs.h`); not in the libc crate yet, so its ABI is mirrored here.
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610; // _IOWR('f', 16, struct pm_scan_arg)
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_PFNZERO: u64 = 1 << 5;

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}
const _: () = assert!(size_of::<PmScanArg>() == 96);

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

fn pagemap() -> io::Result<&'static std::fs::File> {
    static PAGEMAP: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    if let Some(f) = PAGEMAP.get() {
        return Ok(f);
    }
    let f = std::fs::File::open("/proc/self/pagemap")?;
    Ok(PAGEMAP.get_or_init(|| f))
}

/// Which pages a PAGEMAP_SCAN reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// Written since they were last write-protected (needs a range registered in uffd
    /// write-protect mode with UFFD_FEATURE_WP_ASYNC); with `reprotect`, write-protected again in
    /// the same atomic pass.
    Written { reprotect: bool },
    /// Present private anonymous pages that are not the shared zero page: in a private file
    /// mapping, exactly the pages written (copied on write) since they were last dropped.
    Private,
    /// Present pages, of any kind.
    Present,
}

/// Appends to `out` the address ranges in `[start, end)` that `which` selects, stopping after
/// `max` pages.
pub fn scan_pages(start: usize, end: usize, which: Scan, max: usize, out: &mut Vec<std::ops::Range<usize>>) -> io::Result<()> {
    let (flags, inverted, mask) = match which {
        Scan::Written { reprotect } => (if reprotect { PM_SCAN_WP_MATCHING } else { 0 }, 0, PAGE_IS_WRITTEN),
        Scan::Private => (0, PAGE_IS_FILE | PAGE_IS_PFNZERO, PAGE_IS_PRESENT | PAGE_IS_FILE | PAGE_IS_PFNZERO),
        Scan::Present => (0, 0, PAGE_IS_PRESENT),
    };
    let mut regions = [PageRegion::default(); 64];
    let mut from = start;
    let mut found = 0;
    while from < end && found < max {
        let mut arg = PmScanArg {
            size: size_of::<PmScanArg>() as u64,
            flags,
            start: from as u64,
            end: end as u64,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            max_pages: if max == usize::MAX { 0 } else { (max - found) as u64 },
            category_inverted: inverted,
            category_mask: mask,
            return_mask: mask,
            ..Default::default()
        };
        // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points at `regions.len()` writable
        // page_region entries that outlive the call; the pagemap fd is our own process's.
        let n = unsafe { libc::ioctl(pagemap()?.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = usize::try_from(n).expect("non-negative");
        for r in &regions[..n] {
            let r = usize::try_from(r.start).expect("address")..usize::try_from(r.end).expect("address");
            found += (r.end - r.start) / PAGE;
            out.push(r);
        }
        let walked = usize::try_from(arg.walk_end).expect("address");
        if walked <= from {
            break;
        }
        from = walked;
    }
    Ok(())
}

/// [`scan_pages`] of the pages written since they were last write-protected.
pub fn scan_written(start: usize, end: usize, reprotect: bool, out: &mut Vec<std::ops::Range<usize>>) -> io::Result<()> {
    scan_pages(start, end, Scan::Written { reprotect }, usize::MAX, out)
}

/// Maps `[addr, addr + len)` of a file mapping now, from the page cache (MADV_POPULATE_READ).
pub fn populate_read(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: only faults pages in; callers pass a range of a memory they own whose pages are
    // all in the page cache (no userfaultfd event can be raised).
    let r = unsafe { libc::madvise(addr as *mut _, len, libc::MADV_POPULATE_READ) };
    if r != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll(OwnedFd);

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall; the returned descriptor is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: libc::c_int, fd: &impl AsRawFd, events: u32, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: both descriptors are live for the call and `ev` is a valid event.
        let r = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd.as_raw_fd(), &mut ev) };
        if r != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Watches `fd` for input, once: after an event the fd must be re-armed with [`Epoll::rearm`].
    pub fn add_oneshot(&self, fd: &impl AsRawFd, data: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, (libc::EPOLLIN | libc::EPOLLONESHOT) as u32, data)
    }

    pub fn rearm(&self, fd: &impl AsRawFd, data: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, (libc::EPOLLIN | libc::EPOLLONESHOT) as u32, data)
    }

    /// Watches `fd` for input, level-triggered (the stop eventfd: every thread must see it).
    pub fn add_level(&self, fd: &impl AsRawFd, data: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, data)
    }

    pub fn remove(&self, fd: &impl AsRawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits for one event and returns its data: first polling without blocking for up to
    /// `spin`, then blocking.
    pub fn wait_one(&self, spin: std::time::Duration) -> io::Result<u64> {
        let start = std::time::Instant::now();
        loop {
            let timeout = if start.elapsed() < spin { 0 } else { -1 };
            let mut ev = libc::epoll_event { events: 0, u64: 0 };
            // SAFETY: `ev` is a valid buffer for one event; the epoll fd is live.
            let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), &mut ev, 1, timeout) };
            if n == 1 {
                return Ok(ev.u64);
            }
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
            std::hint::spin_loop();
        }
    }
}

/// An eventfd used to stop the handler threads.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain syscall; the returned descriptor is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to a live eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// True when every byte of `page` is zero.
pub fn is_zero(page: &[u8]) -> bool {
    // Word-wise: the compiler vectorises this; a byte loop is several times slower on 4 KiB.
    let (head, words, tail) = {
        // SAFETY: any byte pattern is a valid u64; align_to only reinterprets the aligned middle.
        unsafe { page.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().fold(0, |acc, &w| acc | w) == 0 && tail.iter().all(|&b| b == 0)
}
