//! Ebb's kernel module from user space: the device ABI of `kmod/include/uapi/ebb.h`, mirrored once
//! (the header is the source of truth; `uapi_matches_the_header` compiles it and checks every
//! size and constant here), and [`Device`], one open region of `/dev/ebb` and its mappings.
//!
//! ```text
//!   Device::open() ─► create(pages, Backend::Dram, readaround) ─► map(first, pages): mmap shared
//!   store_write(first, bytes)   the backend's copy     evict(first, n, writeback)
//!   prefetch(first, n)          resident, not mapped   accessed(first, n, reset) / dirty(...)
//!   the mapping's faults are filled in the kernel (no signal, no handler thread)
//! ```
//! The kernel fault path of the runtime (`--fault-path kmod`) is built on this.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use ebb_memnode::proto::{QpInfo, RegionKey};

/// The mirror of `kmod/include/uapi/ebb.h`.
pub mod uapi {
    pub const DEVICE: &str = "/dev/ebb";
    pub const ABI_VERSION: u32 = 3;
    pub const PAGE_SIZE: usize = 4096;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const MAX_READAROUND: u32 = 64;
    pub const BACKEND_DRAM: u32 = 1;
    pub const BACKEND_RDMA: u32 = 2;
    pub const EVICT_WRITEBACK: u32 = 1;
    pub const EVICT_FORGET: u32 = 2;
    pub const CREATE_IMAGE: u32 = 1;
    pub const CREATE_BASED: u32 = 2;
    pub const BASE_KEEP: u32 = 1;
    pub const BITMAP_RESET: u32 = 1;
    pub const RDMA_POPULATED: u32 = 1;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Create {
        pub pages: u64,
        pub backend: u32,
        pub readaround: u32,
        pub flags: u32,
        pub reserved0: u32,
        pub reserved: [u64; 3],
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Base {
        pub fd: i32,
        pub flags: u32,
        pub reserved: u64,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Range {
        pub first: u64,
        pub count: u64,
        pub flags: u32,
        pub reserved: u32,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct PagesIo {
        pub first: u64,
        pub count: u64,
        pub buf: u64,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Bitmap {
        pub first: u64,
        pub count: u64,
        pub bitmap: u64,
        pub flags: u32,
        pub reserved: u32,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Counters {
        pub faults: u64,
        pub faults_mapped: u64,
        pub fills_zero: u64,
        pub fills_backend: u64,
        pub readaround: u64,
        pub prefetched: u64,
        pub evicted: u64,
        pub written_back: u64,
        pub sigbus: u64,
        pub resident: u64,
        pub stored: u64,
        pub module_pages: u64,
        pub module_regions: u64,
        pub backend_errors: u64,
        pub shared: u64,
        pub fills_base: u64,
        pub copied: u64,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct RdmaQp {
        pub device: [u8; 64],
        pub port: u32,
        pub qpn: u32,
        pub psn: u32,
        pub lid: u16,
        pub mtu: u16,
        pub gid: [u8; 16],
        pub reserved: u64,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct RdmaPeer {
        pub qpn: u32,
        pub psn: u32,
        pub lid: u16,
        pub mtu: u16,
        pub timeout_ms: u32,
        pub gid: [u8; 16],
        pub reserved: u64,
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct RdmaRemote {
        pub addr: u64,
        pub len: u64,
        pub rkey: u32,
        pub flags: u32,
    }

    const MAGIC: u64 = 0xEB;

    /// Linux's `_IOC(dir, type, nr, size)` on x86-64 (and the other common architectures).
    const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
        (dir << 30) | ((size as u64) << 16) | (MAGIC << 8) | nr
    }
    const fn iow<T>(nr: u64) -> u64 {
        ioc(1, nr, std::mem::size_of::<T>())
    }
    const fn ior<T>(nr: u64) -> u64 {
        ioc(2, nr, std::mem::size_of::<T>())
    }
    const fn iowr<T>(nr: u64) -> u64 {
        ioc(3, nr, std::mem::size_of::<T>())
    }

    pub const IOC_VERSION: u64 = ior::<u32>(0);
    pub const IOC_CREATE: u64 = iow::<Create>(1);
    pub const IOC_STORE_WRITE: u64 = iow::<PagesIo>(2);
    pub const IOC_STORE_READ: u64 = iow::<PagesIo>(3);
    pub const IOC_EVICT: u64 = iow::<Range>(4);
    pub const IOC_PREFETCH: u64 = iow::<Range>(5);
    pub const IOC_ACCESSED: u64 = iow::<Bitmap>(6);
    pub const IOC_DIRTY: u64 = iow::<Bitmap>(7);
    pub const IOC_COUNTERS: u64 = ior::<Counters>(8);
    pub const IOC_RDMA_QP: u64 = iowr::<RdmaQp>(9);
    pub const IOC_RDMA_CONNECT: u64 = iow::<RdmaPeer>(10);
    pub const IOC_RDMA_REMOTE: u64 = iow::<RdmaRemote>(11);
    pub const IOC_SET_BASE: u64 = iow::<Base>(12);
}

/// What a region is for, beyond its backend (`EBB_CREATE_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    /// A region of its own.
    #[default]
    Plain,
    /// An image: its store is written once per page, its mapping is read-only and shows those
    /// pages themselves, and based regions share them.
    Image,
    /// A region that may take an image as its base (copy-on-write of the base's pages).
    Based,
}

/// Where a region's pages live when not resident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The module's own page store.
    Dram,
    /// The memnode's registered region over kernel verbs.
    Rdma,
}

/// A failed device operation: which one, and the kernel's answer.
#[derive(Debug, thiserror::Error)]
#[error("/dev/ebb {op}: {source}{}", hint(.source))]
pub struct KmodError {
    pub op: &'static str,
    #[source]
    pub source: std::io::Error,
}

impl KmodError {
    /// The errno, for tests and callers that tell cases apart.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// What an errno means that the kernel's text does not say (the RDMA backend's failures).
fn hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EIO | libc::ETIMEDOUT) => " (a transfer with the memnode failed or timed out: the module's connection to it is broken)",
        Some(libc::ENOTCONN) => " (the module's connection to the memnode is not up, or broke earlier)",
        _ => "",
    }
}

fn check(op: &'static str, rc: libc::c_int) -> Result<(), KmodError> {
    if rc < 0 { Err(KmodError { op, source: std::io::Error::last_os_error() }) } else { Ok(()) }
}

/// An open `/dev/ebb` file: a region once created.
#[derive(Debug)]
pub struct Device {
    file: File,
}

impl Device {
    /// Opens the device. A machine without the module answers `ENOENT`: load `ebb.ko` first
    /// (`scripts/softroce.sh` does, in its guest).
    pub fn open() -> Result<Device, KmodError> {
        Self::open_at(Path::new(uapi::DEVICE))
    }

    pub fn open_at(path: &Path) -> Result<Device, KmodError> {
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(|source| KmodError { op: "open", source })?;
        Ok(Device { file })
    }

    /// Whether the module is loaded here.
    pub fn available() -> bool {
        Path::new(uapi::DEVICE).exists()
    }

    /// One ioctl with a pointer argument.
    ///
    /// # Safety
    /// `arg` must be the struct `request` takes, and every user address inside it valid for what
    /// the request does with it.
    pub unsafe fn ioctl<T>(&self, op: &'static str, request: u64, arg: *mut T) -> Result<(), KmodError> {
        // SAFETY: the caller vouches for `arg`; the fd is ours and open.
        check(op, unsafe { libc::ioctl(self.file.as_raw_fd(), request as _, arg) })
    }

    /// The open file, to map the region with (see [`Device::map`]).
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.file)
    }

    pub fn version(&self) -> Result<u32, KmodError> {
        let mut v = 0u32;
        // SAFETY: EBB_IOC_VERSION writes one u32.
        unsafe { self.ioctl("version", uapi::IOC_VERSION, &mut v) }?;
        Ok(v)
    }

    pub fn create(&self, pages: u64, backend: Backend, readaround: u32) -> Result<(), KmodError> {
        self.create_kind(pages, backend, readaround, Kind::Plain)
    }

    pub fn create_kind(&self, pages: u64, backend: Backend, readaround: u32, kind: Kind) -> Result<(), KmodError> {
        let backend = match backend {
            Backend::Dram => uapi::BACKEND_DRAM,
            Backend::Rdma => uapi::BACKEND_RDMA,
        };
        let flags = match kind {
            Kind::Plain => 0,
            Kind::Image => uapi::CREATE_IMAGE,
            Kind::Based => uapi::CREATE_BASED,
        };
        let mut c = uapi::Create { pages, backend, readaround, flags, ..Default::default() };
        // SAFETY: EBB_IOC_CREATE reads one `Create`.
        unsafe { self.ioctl("create", uapi::IOC_CREATE, &mut c) }
    }

    /// Makes the image region `base` this (based) region's base, or none; the old base's pages
    /// this region maps are dropped, or with `keep` replaced by copies of its own.
    pub fn set_base(&self, base: Option<&Device>, keep: bool) -> Result<(), KmodError> {
        let flags = if keep { uapi::BASE_KEEP } else { 0 };
        let mut b = uapi::Base { fd: base.map_or(-1, |d| d.file.as_raw_fd()), flags, reserved: 0 };
        // SAFETY: EBB_IOC_SET_BASE reads one `Base`.
        unsafe { self.ioctl("set base", uapi::IOC_SET_BASE, &mut b) }
    }

    pub fn counters(&self) -> Result<uapi::Counters, KmodError> {
        let mut c = uapi::Counters::default();
        // SAFETY: EBB_IOC_COUNTERS writes one `Counters`.
        unsafe { self.ioctl("counters", uapi::IOC_COUNTERS, &mut c) }?;
        Ok(c)
    }

    /// Writes whole pages (`bytes.len()` a multiple of the page size) to the backend's copy.
    pub fn store_write(&self, first: u64, bytes: &[u8]) -> Result<(), KmodError> {
        let mut io = uapi::PagesIo { first, count: (bytes.len() / uapi::PAGE_SIZE) as u64, buf: bytes.as_ptr() as u64 };
        // SAFETY: the module reads `count` pages from `buf`, which `bytes` holds.
        unsafe { self.ioctl("store write", uapi::IOC_STORE_WRITE, &mut io) }
    }

    /// Reads whole pages of the backend's copy into `bytes`.
    pub fn store_read(&self, first: u64, bytes: &mut [u8]) -> Result<(), KmodError> {
        let mut io = uapi::PagesIo { first, count: (bytes.len() / uapi::PAGE_SIZE) as u64, buf: bytes.as_mut_ptr() as u64 };
        // SAFETY: the module writes `count` pages to `buf`, which `bytes` holds.
        unsafe { self.ioctl("store read", uapi::IOC_STORE_READ, &mut io) }
    }

    /// Drops the resident pages of a range; with `writeback` dirty ones go to the backend first.
    pub fn evict(&self, first: u64, count: u64, writeback: bool) -> Result<(), KmodError> {
        self.evict_flags(first, count, if writeback { uapi::EVICT_WRITEBACK } else { 0 })
    }

    /// Drops the resident pages of a range and the backend's copies of them: they read as the
    /// base's pages (or zeros) next.
    pub fn forget(&self, first: u64, count: u64) -> Result<(), KmodError> {
        self.evict_flags(first, count, uapi::EVICT_FORGET)
    }

    fn evict_flags(&self, first: u64, count: u64, flags: u32) -> Result<(), KmodError> {
        let mut r = uapi::Range { first, count, flags, reserved: 0 };
        // SAFETY: EBB_IOC_EVICT reads one `Range`.
        unsafe { self.ioctl("evict", uapi::IOC_EVICT, &mut r) }
    }

    /// Makes a range resident from the backend (not mapped: the first touch is a cheap fault).
    pub fn prefetch(&self, first: u64, count: u64) -> Result<(), KmodError> {
        let mut r = uapi::Range { first, count, flags: 0, reserved: 0 };
        // SAFETY: EBB_IOC_PREFETCH reads one `Range`.
        unsafe { self.ioctl("prefetch", uapi::IOC_PREFETCH, &mut r) }
    }

    fn bitmap(&self, op: &'static str, request: u64, first: u64, count: u64, reset: bool) -> Result<Vec<u64>, KmodError> {
        let mut words = vec![0u64; usize::try_from(count.div_ceil(64)).unwrap_or(usize::MAX).max(1)];
        let flags = if reset { uapi::BITMAP_RESET } else { 0 };
        let mut b = uapi::Bitmap { first, count, bitmap: words.as_mut_ptr() as u64, flags, reserved: 0 };
        // SAFETY: the module writes ceil(count / 64) words to `bitmap`, which `words` holds.
        unsafe { self.ioctl(op, request, &mut b) }?;
        Ok(words)
    }

    /// Pages of a range accessed (faulted in) since the set was last reset, ascending.
    pub fn accessed(&self, first: u64, count: u64, reset: bool) -> Result<Vec<u64>, KmodError> {
        Ok(pages_of(first, &self.bitmap("accessed", uapi::IOC_ACCESSED, first, count, reset)?))
    }

    /// Pages of a range written since the set was last reset, ascending.
    pub fn dirty(&self, first: u64, count: u64, reset: bool) -> Result<Vec<u64>, KmodError> {
        Ok(pages_of(first, &self.bitmap("dirty", uapi::IOC_DIRTY, first, count, reset)?))
    }

    /// Creates the region's queue pair (RDMA backend) on `port` of RDMA device `device` and
    /// returns its description, for the memnode's `RdmaConnect`.
    pub fn rdma_qp(&self, device: &str, port: u32) -> Result<QpInfo, KmodError> {
        let mut qp = uapi::RdmaQp { device: [0; 64], port, qpn: 0, psn: 0, lid: 0, mtu: 0, gid: [0; 16], reserved: 0 };
        let name = device.as_bytes();
        if name.len() >= qp.device.len() || name.contains(&0) {
            return Err(KmodError { op: "rdma qp", source: std::io::Error::from_raw_os_error(libc::EINVAL) });
        }
        qp.device[..name.len()].copy_from_slice(name);
        // SAFETY: EBB_IOC_RDMA_QP reads and writes one `RdmaQp`.
        unsafe { self.ioctl("rdma qp", uapi::IOC_RDMA_QP, &mut qp) }?;
        Ok(QpInfo { qpn: qp.qpn.into(), psn: qp.psn.into(), lid: qp.lid.into(), mtu: qp.mtu.into(), gid: qp.gid, reserved: 0.into() })
    }

    /// Connects the region's queue pair to the memnode's; one transfer may take at most `timeout`.
    pub fn rdma_connect(&self, peer: &QpInfo, timeout: std::time::Duration) -> Result<(), KmodError> {
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX).max(1);
        let mut p = uapi::RdmaPeer { qpn: peer.qpn.get(), psn: peer.psn.get(), lid: peer.lid.get(), mtu: peer.mtu.get(), timeout_ms, gid: peer.gid, reserved: 0 };
        // SAFETY: EBB_IOC_RDMA_CONNECT reads one `RdmaPeer`.
        unsafe { self.ioctl("rdma connect", uapi::IOC_RDMA_CONNECT, &mut p) }
    }

    /// Where the region's pages are on the memnode; with `populated`, every page there holds data.
    pub fn rdma_remote(&self, key: &RegionKey, populated: bool) -> Result<(), KmodError> {
        let flags = if populated { uapi::RDMA_POPULATED } else { 0 };
        let mut r = uapi::RdmaRemote { addr: key.addr.get(), len: key.len.get(), rkey: key.rkey.get(), flags };
        // SAFETY: EBB_IOC_RDMA_REMOTE reads one `RdmaRemote`.
        unsafe { self.ioctl("rdma remote", uapi::IOC_RDMA_REMOTE, &mut r) }
    }

    /// Maps `pages` pages of an image region from page `first`, read-only (shared): its stored
    /// pages themselves; touching one it does not hold is SIGBUS.
    pub fn map_image(&self, first: u64, pages: usize) -> Result<memmap2::Mmap, KmodError> {
        // SAFETY: a read-only shared mapping of an image region, whose stored pages never change
        // or go while the file is open (the mapping holds it).
        unsafe { memmap2::MmapOptions::new().offset(first * uapi::PAGE_SIZE as u64).len(pages * uapi::PAGE_SIZE).map(&self.file) }
            .map_err(|source| KmodError { op: "mmap", source })
    }

    /// Maps `pages` pages of the region from page `first`, shared.
    pub fn map(&self, first: u64, pages: usize) -> Result<memmap2::MmapMut, KmodError> {
        // SAFETY: a shared mapping of the device; the module keeps its pages valid while mapped,
        // and nothing else in this process maps the same region's file with other assumptions.
        unsafe { memmap2::MmapOptions::new().offset(first * uapi::PAGE_SIZE as u64).len(pages * uapi::PAGE_SIZE).map_mut(&self.file) }
            .map_err(|source| KmodError { op: "mmap", source })
    }
}

fn pages_of(first: u64, words: &[u64]) -> Vec<u64> {
    let mut out = Vec::new();
    for (w, &bits) in words.iter().enumerate() {
        let mut b = bits;
        while b != 0 {
            let i = u64::from(b.trailing_zeros());
            out.push(first + w as u64 * 64 + i);
            b &= b - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests;
