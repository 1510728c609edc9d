//! The raw system calls of the pager: mappings, epoll and eventfd, and the one helper that
//! classifies userfaultfd ioctl results. Kept here so the rest of the pager holds no `unsafe` but
//! the page installs.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use userfaultfd::Uffd;

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

/// Installs `len` bytes from `src` at `dst` with UFFDIO_COPY (or UFFDIO_ZEROPAGE when `src` is
/// `None`), waking the faulting threads. The one place where uffd errnos are classified: EAGAIN
/// (the mm changed under us) is retried, EEXIST means served.
///
/// # Safety
/// `dst..dst+len` must be inside a range registered with `uffd`, page aligned, and `src` must be
/// valid for `len` bytes of reads.
pub unsafe fn install(uffd: &Uffd, src: Option<*const u8>, dst: usize, len: usize) -> io::Result<Installed> {
    loop {
        let result = match src {
            // SAFETY: forwarded from this function's contract.
            Some(src) => unsafe { uffd.copy(src.cast(), dst as *mut _, len, true) },
            // SAFETY: forwarded from this function's contract.
            None => unsafe { uffd.zeropage(dst as *mut _, len, true) },
        };
        match result {
            Ok(_) => return Ok(Installed::Done),
            Err(userfaultfd::Error::PartiallyCopied(_)) => continue,
            Err(userfaultfd::Error::CopyFailed(e) | userfaultfd::Error::ZeropageFailed(e)) => {
                if e == nix::errno::Errno::EEXIST {
                    // Wake whoever waits: the page exists but a waiter may still be queued.
                    let _ = uffd.wake(dst as *mut _, len);
                    return Ok(Installed::AlreadyThere);
                }
                if e == nix::errno::Errno::EAGAIN {
                    continue;
                }
                return Err(io::Error::from_raw_os_error(e as i32));
            }
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
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
