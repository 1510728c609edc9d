//! The uAPI mirror against the header (runs everywhere a C compiler is), and the module's own
//! behaviour and misuse (only where `/dev/ebb` exists: the kmod guest of `scripts/softroce.sh`
//! runs them with `--include-ignored`; elsewhere they are reported ignored, never passed).

use super::uapi::*;
use super::*;
use std::collections::HashMap;



#[test]
fn uapi_matches_the_header() {
    let dir = std::env::temp_dir().join(format!("ebb-uapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("probe.c");
    let exe = dir.join("probe");
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kmod/include");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <stddef.h>
#include "uapi/ebb.h"
#define P(name, v) printf("%s %llu\n", name, (unsigned long long)(v))
int main(void) {
    P("ABI_VERSION", EBB_ABI_VERSION); P("PAGE_SIZE", EBB_PAGE_SIZE); P("MAX_PAGES", EBB_MAX_PAGES);
    P("MAX_READAROUND", EBB_MAX_READAROUND); P("BACKEND_DRAM", EBB_BACKEND_DRAM); P("BACKEND_RDMA", EBB_BACKEND_RDMA);
    P("EVICT_WRITEBACK", EBB_EVICT_WRITEBACK); P("BITMAP_RESET", EBB_BITMAP_RESET);
    P("sizeof create", sizeof(struct ebb_create)); P("sizeof range", sizeof(struct ebb_range));
    P("sizeof pages_io", sizeof(struct ebb_pages_io)); P("sizeof bitmap", sizeof(struct ebb_bitmap));
    P("sizeof counters", sizeof(struct ebb_counters));
    P("offset create.readaround", offsetof(struct ebb_create, readaround));
    P("offset bitmap.flags", offsetof(struct ebb_bitmap, flags));
    P("offset counters.module_regions", offsetof(struct ebb_counters, module_regions));
    P("IOC_VERSION", EBB_IOC_VERSION); P("IOC_CREATE", EBB_IOC_CREATE); P("IOC_STORE_WRITE", EBB_IOC_STORE_WRITE);
    P("IOC_STORE_READ", EBB_IOC_STORE_READ); P("IOC_EVICT", EBB_IOC_EVICT); P("IOC_PREFETCH", EBB_IOC_PREFETCH);
    P("IOC_ACCESSED", EBB_IOC_ACCESSED); P("IOC_DIRTY", EBB_IOC_DIRTY); P("IOC_COUNTERS", EBB_IOC_COUNTERS);
    P("RDMA_POPULATED", EBB_RDMA_POPULATED); P("offset counters.backend_errors", offsetof(struct ebb_counters, backend_errors));
    P("sizeof rdma_qp", sizeof(struct ebb_rdma_qp)); P("sizeof rdma_peer", sizeof(struct ebb_rdma_peer));
    P("sizeof rdma_remote", sizeof(struct ebb_rdma_remote)); P("offset rdma_qp.gid", offsetof(struct ebb_rdma_qp, gid));
    P("offset rdma_peer.gid", offsetof(struct ebb_rdma_peer, gid)); P("offset rdma_remote.rkey", offsetof(struct ebb_rdma_remote, rkey));
    P("IOC_RDMA_QP", EBB_IOC_RDMA_QP); P("IOC_RDMA_CONNECT", EBB_IOC_RDMA_CONNECT); P("IOC_RDMA_REMOTE", EBB_IOC_RDMA_REMOTE);
    P("EVICT_FORGET", EBB_EVICT_FORGET); P("CREATE_IMAGE", EBB_CREATE_IMAGE); P("CREATE_BASED", EBB_CREATE_BASED);
    P("offset create.flags", offsetof(struct ebb_create, flags)); P("sizeof base", sizeof(struct ebb_base));
    P("offset counters.copied", offsetof(struct ebb_counters, copied)); P("IOC_SET_BASE", EBB_IOC_SET_BASE);
    P("BASE_KEEP", EBB_BASE_KEEP);
    printf("DEVICE /dev/%s\n", EBB_DEVICE_NAME);
    return 0;
}
"#,
    )
    .unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = std::process::Command::new(&cc)
        .args(["-Wall", "-Werror", "-I"])
        .arg(&include)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("{cc}: {e} (a C compiler checks the header: scripts/setup.sh installs clang)"));
    assert!(built.status.success(), "the header does not compile: {}", String::from_utf8_lossy(&built.stderr));
    let out = std::process::Command::new(&exe).output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let header: HashMap<&str, &str> = text.lines().filter_map(|l| l.rsplit_once(' ')).collect();
    let n = |k: &str| header.get(k).unwrap_or_else(|| panic!("{k} missing")).parse::<u64>().unwrap();
    use std::mem::{offset_of, size_of};
    let want: [(&str, u64); 44] = [
        ("ABI_VERSION", ABI_VERSION.into()),
        ("PAGE_SIZE", PAGE_SIZE as u64),
        ("MAX_PAGES", MAX_PAGES),
        ("MAX_READAROUND", MAX_READAROUND.into()),
        ("BACKEND_DRAM", BACKEND_DRAM.into()),
        ("BACKEND_RDMA", BACKEND_RDMA.into()),
        ("EVICT_WRITEBACK", EVICT_WRITEBACK.into()),
        ("BITMAP_RESET", BITMAP_RESET.into()),
        ("sizeof create", size_of::<Create>() as u64),
        ("sizeof range", size_of::<Range>() as u64),
        ("sizeof pages_io", size_of::<PagesIo>() as u64),
        ("sizeof bitmap", size_of::<Bitmap>() as u64),
        ("sizeof counters", size_of::<Counters>() as u64),
        ("offset create.readaround", offset_of!(Create, readaround) as u64),
        ("offset bitmap.flags", offset_of!(Bitmap, flags) as u64),
        ("offset counters.module_regions", offset_of!(Counters, module_regions) as u64),
        ("IOC_VERSION", IOC_VERSION),
        ("IOC_CREATE", IOC_CREATE),
        ("IOC_STORE_WRITE", IOC_STORE_WRITE),
        ("IOC_STORE_READ", IOC_STORE_READ),
        ("IOC_EVICT", IOC_EVICT),
        ("IOC_PREFETCH", IOC_PREFETCH),
        ("IOC_ACCESSED", IOC_ACCESSED),
        ("IOC_DIRTY", IOC_DIRTY),
        ("IOC_COUNTERS", IOC_COUNTERS),
        ("RDMA_POPULATED", RDMA_POPULATED.into()),
        ("offset counters.backend_errors", offset_of!(Counters, backend_errors) as u64),
        ("sizeof rdma_qp", size_of::<RdmaQp>() as u64),
        ("sizeof rdma_peer", size_of::<RdmaPeer>() as u64),
        ("sizeof rdma_remote", size_of::<RdmaRemote>() as u64),
        ("offset rdma_qp.gid", offset_of!(RdmaQp, gid) as u64),
        ("offset rdma_peer.gid", offset_of!(RdmaPeer, gid) as u64),
        ("offset rdma_remote.rkey", offset_of!(RdmaRemote, rkey) as u64),
        ("IOC_RDMA_QP", IOC_RDMA_QP),
        ("IOC_RDMA_CONNECT", IOC_RDMA_CONNECT),
        ("IOC_RDMA_REMOTE", IOC_RDMA_REMOTE),
        ("EVICT_FORGET", EVICT_FORGET.into()),
        ("CREATE_IMAGE", CREATE_IMAGE.into()),
        ("CREATE_BASED", CREATE_BASED.into()),
        ("offset create.flags", offset_of!(Create, flags) as u64),
        ("sizeof base", size_of::<Base>() as u64),
        ("offset counters.copied", offset_of!(Counters, copied) as u64),
        ("IOC_SET_BASE", IOC_SET_BASE),
        ("BASE_KEEP", BASE_KEEP.into()),
    ];
    for (k, v) in want {
        assert_eq!(n(k), v, "{k}: header {} against the mirror {v}", n(k));
    }
    assert_eq!(header["DEVICE"], DEVICE);
}

fn region(pages: u64, readaround: u32) -> Device {
    let d = Device::open().expect("open /dev/ebb");
    d.create(pages, Backend::Dram, readaround).unwrap();
    d
}

/// An image region holding `bytes` from page 0.
fn image_of(bytes: &[u8]) -> Device {
    let d = Device::open().expect("open /dev/ebb");
    d.create_kind((bytes.len() / PAGE_SIZE) as u64 * 2, Backend::Dram, 0, Kind::Image).unwrap();
    d.store_write(0, bytes).unwrap();
    d
}

/// A based DRAM region whose base is `image`.
fn based(pages: u64, readaround: u32, image: &Device) -> Device {
    let d = Device::open().expect("open /dev/ebb");
    d.create_kind(pages, Backend::Dram, readaround, Kind::Based).unwrap();
    d.set_base(Some(image), false).unwrap();
    d
}

/// Pages `0..n` whose bytes are their index + 1.
fn numbered(n: usize) -> Vec<u8> {
    (1..=n).flat_map(|p| page_of(u8::try_from(p).expect("at most 255 pages"))).collect()
}

#[test]
#[ignore = "needs /dev/ebb (ebb.ko loaded): scripts/softroce.sh runs these in its guest"]
fn kmod_based_regions_share_their_image_and_copy_on_write() {
    let before = Device::open().unwrap();
    before.create(1, Backend::Dram, 0).unwrap();
    let pages_at_start = before.counters().unwrap().module_pages;
    {
        // The image: 32 numbered pages (its size is 64), written once each.
        let image = image_of(&numbered(32));
        image.store_write(0, &page_of(0xFF)).unwrap();
        let mut back = page_of(0);
        image.store_read(0, &mut back).unwrap();
        assert_eq!(back[0], 1, "an image's page keeps its first bytes");
        let im = image.map_image(0, 64).unwrap();
        assert_eq!((im[0], im[31 * PAGE_SIZE + 7]), (1, 32));
        assert_eq!(errno(image.map(0, 1)), libc::EACCES, "an image is never mapped writable");

        let a = based(64, 3, &image);
        let b = based(64, 0, &image);
        let (mut ma, mb) = (a.map(0, 64).unwrap(), b.map(0, 64).unwrap());
        let held = |d: &Device| d.counters().unwrap().module_pages;
        let module_pages = held(&a);
        // Reads map the image's pages themselves: no page is allocated for them.
        let sum: u64 = (0..32).map(|p| u64::from(ma[p * PAGE_SIZE]) + u64::from(mb[p * PAGE_SIZE + 9])).sum();
        assert_eq!(sum, 2 * (1..=32).sum::<u64>());
        assert_eq!(held(&a), module_pages, "shared, not copied");
        let c = a.counters().unwrap();
        assert_eq!((c.shared, c.resident, c.fills_base, c.copied, c.faults), (32, 32, 32, 0, 8));
        assert_eq!(b.counters().unwrap().shared, 32);

        // A write copies the page first: the image and the other region still read the original.
        ma[5 * PAGE_SIZE] = 0xAA;
        ma[10 * PAGE_SIZE + 1] = 0xBB;
        ma[40 * PAGE_SIZE] = 0xCC; // the image lacks it: a zero page of the region's own
        assert_eq!((mb[5 * PAGE_SIZE], mb[10 * PAGE_SIZE + 1], im[5 * PAGE_SIZE], im[10 * PAGE_SIZE + 1]), (6, 11, 6, 11));
        assert_eq!((ma[5 * PAGE_SIZE], ma[5 * PAGE_SIZE + 1], ma[10 * PAGE_SIZE]), (0xAA, 6, 11));
        let c = a.counters().unwrap();
        assert_eq!((c.shared, c.copied), (30, 2));
        assert_eq!(held(&a), module_pages + 2 + 4, "two copies, and page 40 with its read-around");
        assert_eq!(a.dirty(0, 64, false).unwrap(), vec![5, 10, 40]);
        assert!(b.dirty(0, 64, false).unwrap().is_empty());

        // An eviction without write-back is a reset to the image's pages.
        a.evict(0, 64, false).unwrap();
        assert_eq!(a.counters().unwrap().resident, 0);
        assert_eq!((ma[5 * PAGE_SIZE], ma[10 * PAGE_SIZE + 1], ma[40 * PAGE_SIZE]), (6, 11, 0));
        // The region's own store comes first; forgetting its copy goes back to the image's.
        a.store_write(7, &page_of(0x77)).unwrap();
        a.evict(7, 1, false).unwrap();
        assert_eq!(ma[7 * PAGE_SIZE], 0x77);
        a.forget(7, 1).unwrap();
        assert_eq!(a.counters().unwrap().stored, 0);
        assert_eq!(ma[7 * PAGE_SIZE], 8);
        let mut back = page_of(0);
        a.store_read(3, &mut back).unwrap();
        assert_eq!(back[100], 4, "the store reads through to the image");
        // Write-back of a written copy goes to the region's own store, not the image.
        ma[12 * PAGE_SIZE] = 0x12;
        a.evict(0, 64, true).unwrap();
        assert_eq!((ma[12 * PAGE_SIZE], mb[12 * PAGE_SIZE], im[12 * PAGE_SIZE]), (0x12, 13, 13));

        // Without a base the image's pages go: what the region does not hold reads as zeros.
        assert_eq!(ma[3 * PAGE_SIZE], 4);
        a.set_base(None, false).unwrap();
        let c = a.counters().unwrap();
        assert_eq!(c.shared, 0);
        assert_eq!((ma[3 * PAGE_SIZE], ma[12 * PAGE_SIZE]), (0, 0x12));
        // The image outlives its own file while a region still has it as base.
        drop(im);
        drop(image);
        assert_eq!(mb[20 * PAGE_SIZE], 21);
        // Kept: the image's pages the other region maps become copies of its own, resident.
        let before = b.counters().unwrap();
        assert!(before.shared >= 32);
        b.set_base(None, true).unwrap();
        let c = b.counters().unwrap();
        assert_eq!((c.shared, c.copied, c.resident), (0, before.copied + before.shared, before.resident));
        assert_eq!((mb[20 * PAGE_SIZE], mb[31 * PAGE_SIZE + 9], mb[40 * PAGE_SIZE]), (21, 32, 0));
    }
    assert_eq!(before.counters().unwrap().module_pages, pages_at_start, "every page freed");
}

#[test]
#[ignore = "needs /dev/ebb (ebb.ko loaded): scripts/softroce.sh runs these in its guest"]
fn kmod_image_misuse_is_refused_with_an_error() {
    let image = image_of(&numbered(4));
    let plain = region(8, 0);
    let other = image_of(&numbered(1));
    assert_eq!(errno(plain.set_base(Some(&image), false)), libc::EINVAL, "only a based region takes a base");
    let b = Device::open().unwrap();
    assert_eq!(errno(b.create_kind(8, Backend::Rdma, 0, Kind::Image)), libc::EINVAL, "an image is a DRAM store");
    let mut c = Create { pages: 8, backend: BACKEND_DRAM, flags: CREATE_IMAGE | CREATE_BASED, ..Create::default() };
    // SAFETY: EBB_IOC_CREATE reads one `Create`.
    assert_eq!(errno(unsafe { b.ioctl("create", IOC_CREATE, &mut c) }), libc::EINVAL, "an image has no base");
    let mut c = Create { pages: 8, backend: BACKEND_DRAM, flags: 0x100, ..Create::default() };
    // SAFETY: as above.
    assert_eq!(errno(unsafe { b.ioctl("create", IOC_CREATE, &mut c) }), libc::EINVAL, "unknown flags");
    b.create_kind(8, Backend::Dram, 0, Kind::Based).unwrap();
    assert_eq!(errno(b.set_base(Some(&plain), false)), libc::EINVAL, "a base must be an image");
    let null = Device::open_at(Path::new("/dev/null")).unwrap();
    assert_eq!(errno(b.set_base(Some(&null), false)), libc::EINVAL, "a base must be a region");
    let mut bad = Base { fd: 1 << 20, flags: 0, reserved: 0 };
    // SAFETY: EBB_IOC_SET_BASE reads one `Base`.
    assert_eq!(errno(unsafe { b.ioctl("set base", IOC_SET_BASE, &mut bad) }), libc::EBADF);
    let mut bad = Base { fd: -1, flags: 2, reserved: 0 };
    // SAFETY: as above.
    assert_eq!(errno(unsafe { b.ioctl("set base", IOC_SET_BASE, &mut bad) }), libc::EINVAL, "flags must be zero");
    assert_eq!(errno(image.evict(0, 1, false)), libc::EINVAL, "an image's pages never go");
    assert_eq!(errno(image.forget(0, 1)), libc::EINVAL);
    assert_eq!(errno(image.prefetch(0, 1)), libc::EINVAL);
    let mut r = Range { first: 0, count: 1, flags: EVICT_WRITEBACK | EVICT_FORGET, reserved: 0 };
    // SAFETY: EBB_IOC_EVICT reads one `Range`.
    assert_eq!(errno(unsafe { b.ioctl("evict", IOC_EVICT, &mut r) }), libc::EINVAL, "write back and forget at once");
    // Bases may change, and the region works with the new one.
    b.set_base(Some(&image), false).unwrap();
    let m = b.map(0, 8).unwrap();
    assert_eq!(m[PAGE_SIZE], 2);
    b.set_base(Some(&other), false).unwrap();
    assert_eq!((m[0], m[PAGE_SIZE]), (1, 0));
}

fn page_of(byte: u8) -> Vec<u8> {
    vec![byte; PAGE_SIZE]
}

#[test]
#[ignore = "needs /dev/ebb (ebb.ko loaded): scripts/softroce.sh runs these in its guest"]
fn kmod_faults_fill_from_the_store_and_evict_writes_back() {
    let d = region(64, 0);
    assert_eq!(d.version().unwrap(), ABI_VERSION);
    // The backend holds pages 8.. with their index as content; the rest read as zeros.
    let mut image = Vec::new();
    for p in 8..16u8 {
        image.extend(page_of(p));
    }
    d.store_write(8, &image).unwrap();
    let mut m = d.map(0, 64).unwrap();
    assert!(m[..8 * PAGE_SIZE].iter().all(|&b| b == 0));
    for p in 8..16 {
        assert!(m[p * PAGE_SIZE..(p + 1) * PAGE_SIZE].iter().all(|&b| usize::from(b) == p), "page {p}");
    }
    let c = d.counters().unwrap();
    assert_eq!((c.faults, c.fills_zero, c.fills_backend, c.resident, c.stored), (16, 8, 8, 16, 8));
    assert_eq!(d.accessed(0, 64, false).unwrap(), (0..16).collect::<Vec<u64>>());
    assert!(d.dirty(0, 64, false).unwrap().is_empty(), "reads dirty nothing");

    // Writes: seen dirty; an evict without write-back is a reset to the store's copy.
    m[9 * PAGE_SIZE] = 0xAA;
    m[20 * PAGE_SIZE + 5] = 0xBB;
    assert_eq!(d.dirty(0, 64, false).unwrap(), vec![9, 20]);
    d.evict(0, 64, false).unwrap();
    assert_eq!(d.counters().unwrap().resident, 0);
    assert!(d.dirty(0, 64, false).unwrap().is_empty());
    assert!(d.accessed(0, 64, false).unwrap().is_empty(), "an evicted page leaves the accessed set");
    assert_eq!((m[9 * PAGE_SIZE], m[20 * PAGE_SIZE + 5]), (9, 0), "reset to the backend's copy");

    // With write-back the written bytes survive the eviction, in the store and on refault.
    m[10 * PAGE_SIZE + 1] = 0xCC;
    m[30 * PAGE_SIZE] = 0xDD;
    d.evict(0, 64, true).unwrap();
    let c = d.counters().unwrap();
    assert_eq!((c.written_back, c.resident, c.stored), (2, 0, 9));
    let mut back = vec![0u8; PAGE_SIZE];
    d.store_read(30, &mut back).unwrap();
    assert_eq!(back[0], 0xDD);
    assert_eq!((m[10 * PAGE_SIZE + 1], m[10 * PAGE_SIZE], m[30 * PAGE_SIZE]), (0xCC, 10, 0xDD));
}

#[test]
#[ignore = "needs /dev/ebb (ebb.ko loaded): scripts/softroce.sh runs these in its guest"]
fn kmod_readaround_prefetch_and_a_reset_accessed_set_see_every_later_touch() {
    let d = region(256, 7);
    d.store_write(0, &page_of(1).repeat(32)).unwrap();
    let m = d.map(0, 256).unwrap();
    // One fault makes 8 pages resident; the 7 beside it take cheap faults of their own.
    assert_eq!(m[0], 1);
    let c = d.counters().unwrap();
    assert_eq!((c.faults, c.readaround, c.resident), (1, 7, 8));
    let sum: u64 = (0..8).map(|p| u64::from(m[p * PAGE_SIZE])).sum();
    assert_eq!(sum, 8);
    let c = d.counters().unwrap();
    assert_eq!((c.faults, c.faults_mapped), (1, 7));
    assert_eq!(d.accessed(0, 256, true).unwrap(), (0..8).collect::<Vec<u64>>(), "read and reset");
    // After the reset the resident pages are unmapped: touching two is seen, nothing else is.
    assert_eq!(m[3 * PAGE_SIZE] + m[5 * PAGE_SIZE], 2);
    assert_eq!(d.accessed(0, 256, false).unwrap(), vec![3, 5]);
    // Prefetch: resident without a fault of the handler's own filling.
    d.prefetch(100, 50).unwrap();
    let before = d.counters().unwrap();
    assert_eq!(before.prefetched, 50);
    let zeros: u64 = (100..150).map(|p| u64::from(m[p * PAGE_SIZE])).sum();
    assert_eq!(zeros, 0);
    let after = d.counters().unwrap();
    assert_eq!((after.faults, after.faults_mapped - before.faults_mapped), (before.faults, 50));
}

#[track_caller]
fn errno<T: std::fmt::Debug>(r: Result<T, KmodError>) -> i32 {
    r.expect_err("must fail").errno().unwrap()
}

#[test]
#[ignore = "needs /dev/ebb (ebb.ko loaded): scripts/softroce.sh runs these in its guest"]
fn kmod_misuse_is_refused_with_an_error() {
    let d = Device::open().unwrap();
    // Before create: no mapping, no page operation.
    assert_eq!(errno(d.map(0, 1)), libc::EBADFD);
    assert_eq!(errno(d.evict(0, 1, false)), libc::EBADFD);
    assert_eq!(errno(d.create(0, Backend::Dram, 0)), libc::EINVAL);
    assert_eq!(errno(d.create(MAX_PAGES + 1, Backend::Dram, 0)), libc::EINVAL);
    assert_eq!(errno(d.create(16, Backend::Dram, MAX_READAROUND + 1)), libc::EINVAL);
    // RDMA requests on a region that is not created, then not RDMA.
    assert_eq!(errno(d.rdma_qp("rxe0", 1)), libc::EBADFD);
    let mut c = Create { pages: 16, backend: BACKEND_DRAM, reserved: [0, 1, 0], ..Create::default() };
    // SAFETY: EBB_IOC_CREATE reads one `Create`.
    assert_eq!(errno(unsafe { d.ioctl("create", IOC_CREATE, &mut c) }), libc::EINVAL, "reserved fields must be zero");
    let mut c = Create { backend: 9, ..Create { pages: 16, ..Create::default() } };
    // SAFETY: as above.
    assert_eq!(errno(unsafe { d.ioctl("create", IOC_CREATE, &mut c) }), libc::EINVAL, "unknown backend");
    d.create(16, Backend::Dram, 0).unwrap();
    assert_eq!(errno(d.create(16, Backend::Dram, 0)), libc::EBUSY, "created once");
    assert_eq!(errno(d.rdma_qp("rxe0", 1)), libc::EINVAL, "a DRAM region has no queue pair");
    // Ranges past the region, and overflowing ones.
    assert_eq!(errno(d.map(0, 17)), libc::EINVAL);
    assert_eq!(errno(d.map(16, 1)), libc::EINVAL);
    assert_eq!(errno(d.evict(10, 7, false)), libc::EINVAL);
    assert_eq!(errno(d.evict(u64::MAX, 2, false)), libc::EINVAL);
    assert_eq!(errno(d.prefetch(1, u64::MAX)), libc::EINVAL);
    assert_eq!(errno(d.accessed(8, 9, false)), libc::EINVAL);
    assert_eq!(errno(d.store_write(15, &page_of(0).repeat(2))), libc::EINVAL);
    let mut r = Range { first: 0, count: 1, flags: 0x80, reserved: 0 };
    // SAFETY: EBB_IOC_EVICT reads one `Range`.
    assert_eq!(errno(unsafe { d.ioctl("evict", IOC_EVICT, &mut r) }), libc::EINVAL, "unknown flags");
    // Bad user addresses are EFAULT, never a kernel fault.
    let mut io = PagesIo { first: 0, count: 1, buf: 8 };
    // SAFETY: the module must refuse the bad address itself; nothing here is written.
    assert_eq!(errno(unsafe { d.ioctl("store write", IOC_STORE_WRITE, &mut io) }), libc::EFAULT);
    // SAFETY: as above.
    assert_eq!(errno(unsafe { d.ioctl("store read", IOC_STORE_READ, &mut io) }), libc::EFAULT);
    // SAFETY: a null argument: the module must answer EFAULT.
    assert_eq!(errno(unsafe { d.ioctl::<Counters>("counters", IOC_COUNTERS, std::ptr::null_mut()) }), libc::EFAULT);
    // Unknown requests.
    // SAFETY: an unknown request with no argument.
    assert_eq!(errno(unsafe { d.ioctl::<u8>("unknown", 0xEB99, std::ptr::null_mut()) }), libc::ENOTTY);
    // A private mapping would copy pages out of the region's tracking: refused.
    // SAFETY: mapping the device privately; the module must refuse it.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), PAGE_SIZE, libc::PROT_READ, libc::MAP_PRIVATE, d.file.as_raw_fd(), 0) };
    assert_eq!(p, libc::MAP_FAILED);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EINVAL));
    // The region still works after all of that.
    let m = d.map(0, 16).unwrap();
    assert_eq!(m[15 * PAGE_SIZE], 0);
}

#[test]
#[ignore = "needs /dev/ebb (ebb.ko loaded): scripts/softroce.sh runs these in its guest"]
fn kmod_concurrent_faults_and_evictions_lose_no_write() {
    lose_no_write(region(PAGES as u64, 3));
}

const PAGES: usize = 32;

#[test]
#[ignore = "needs /dev/ebb (ebb.ko loaded): scripts/softroce.sh runs these in its guest"]
fn kmod_concurrent_copies_on_write_and_evictions_lose_no_write() {
    // Every page starts as the base's (zeros it holds): each first write copies it, evictions
    // drop the copies (written back to the region's own store, which then comes first).
    let image = image_of(&[0u8; PAGE_SIZE].repeat(PAGES));
    let d = based(PAGES as u64, 3, &image);
    lose_no_write(d);
    let c = image.counters().unwrap();
    assert_eq!(c.stored, PAGES as u64, "the image is untouched");
}

fn lose_no_write(d: Device) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const ROUNDS: u64 = 2000;
    // Evictions that must have overlapped the writes: the writers go on past ROUNDS until the
    // evictor has done this many (under TCG a thread can wait its turn until the others are done,
    // and a fixed amount of writing then raced nothing).
    const EVICTIONS: u64 = 50;
    let d = std::sync::Arc::new(d);
    let m = d.map(0, PAGES).unwrap();
    let base = m.as_ptr() as usize;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let evicted = std::sync::Arc::new(AtomicU64::new(0));
    // One evicting thread (with write-back, so nothing written may be lost) against writers that
    // each own a word of every page, check it and count it up.
    let evictor = {
        let (d, stop, evicted) = (d.clone(), stop.clone(), evicted.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                d.evict(0, PAGES as u64, true).unwrap();
                evicted.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let evicted = evicted.clone();
            std::thread::spawn(move || {
                let mut round = 0u64;
                while round < ROUNDS || evicted.load(Ordering::Relaxed) < EVICTIONS {
                    round += 1;
                    for p in 0..PAGES {
                        let word = (base + p * PAGE_SIZE + w * 8) as *mut u64;
                        // SAFETY: inside the mapping, which lives until the threads are joined; each
                        // writer owns its word of every page.
                        unsafe {
                            assert_eq!(word.read_volatile(), round - 1, "writer {w} page {p}");
                            word.write_volatile(round);
                        }
                    }
                }
                round
            })
        })
        .collect();
    let rounds: Vec<u64> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    evictor.join().unwrap();
    assert!(evicted.load(Ordering::Relaxed) >= EVICTIONS);
    for p in 0..PAGES {
        for (w, &n) in rounds.iter().enumerate() {
            assert_eq!(u64::from_ne_bytes(m[p * PAGE_SIZE + w * 8..][..8].try_into().unwrap()), n, "writer {w} page {p}");
        }
    }
}

/// Set by the parent test: the child maps, touches and waits to be killed.
const CHILD: &str = "EBB_KMOD_CHILD";

#[test]
#[ignore = "needs /dev/ebb (ebb.ko loaded): scripts/softroce.sh runs these in its guest"]
fn kmod_child_holds_pages() {
    if std::env::var_os(CHILD).is_none() {
        return; // only meaningful as the child of the next test
    }
    let d = region(1024, 0);
    d.store_write(0, &page_of(7).repeat(64)).unwrap();
    let mut m = d.map(0, 1024).unwrap();
    for p in 0..1024 {
        m[p * PAGE_SIZE] = 1;
    }
    println!("EBB-CHILD-READY");
    std::thread::sleep(std::time::Duration::from_secs(600));
}

#[test]
#[ignore = "needs /dev/ebb (ebb.ko loaded): scripts/softroce.sh runs these in its guest"]
fn kmod_a_killed_process_leaves_no_page_behind() {
    use std::io::BufRead;
    let probe = Device::open().unwrap();
    let before = probe.counters().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "pager::kmod::tests::kmod_child_holds_pages", "--include-ignored", "--nocapture"])
        .env(CHILD, "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let ready = std::io::BufReader::new(out).lines().map_while(Result::ok).any(|l| l.contains("EBB-CHILD-READY"));
    assert!(ready, "the child never got its pages");
    let held = probe.counters().unwrap();
    assert_eq!(held.module_pages - before.module_pages, 1024 + 64, "resident and stored pages");
    assert_eq!(held.module_regions, before.module_regions + 1);
    child.kill().unwrap();
    child.wait().unwrap();
    let after = probe.counters().unwrap();
    assert_eq!((after.module_pages, after.module_regions), (before.module_pages, before.module_regions));
}

// ---- The RDMA backend: a region's pages on a real memnode (in this process, on the guest's
// soft-RoCE device), read and written by the module's own queue pair.

use ebb_memnode::client::{TcpConfig, Transport};
use ebb_memnode::proto::RegionKey;
use ebb_memnode::rdma::{device_names, Fabric, RdmaTransport, RemoteQp};
use ebb_memnode::server::{Server, ServerConfig, ServerHandle, Tokens};
use ebb_memnode::{RegionId, Store};
use std::sync::Arc;
use std::time::Duration;

fn rdma_device() -> String {
    std::env::var("EBB_RDMA_DEVICE").ok().or_else(|| device_names().into_iter().next()).expect("an RDMA device")
}

fn rdma_memnode() -> ServerHandle {
    let fabric = Arc::new(Fabric::open(&rdma_device()).expect("open the RDMA device"));
    let tokens = Tokens::from_pairs([("alice", "a-secret"), ("bob", "b-secret")]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    Server::new(Arc::new(Store::new(256 << 20)), ServerConfig { rdma: Some(fabric), tokens: Some(tokens), ..Default::default() })
        .spawn(listener)
        .unwrap()
}

fn rdma_client(s: &ServerHandle, token: &str, timeout: Duration) -> RdmaTransport {
    let config = TcpConfig { token: token.into(), rdma_device: Some(rdma_device()), timeout, ..Default::default() };
    RdmaTransport::connect(&s.local_addr().to_string(), config).expect("rdma connect")
}

/// A module region of `pages` on the RDMA backend, connected to the memnode as `client`.
fn rdma_region(client: &RdmaTransport, pages: u64, readaround: u32, timeout: Duration) -> (Device, RemoteQp) {
    let d = Device::open().unwrap();
    d.create(pages, Backend::Rdma, readaround).unwrap();
    let local = d.rdma_qp(&rdma_device(), 1).unwrap();
    let qp = client.connect_remote_qp(&local).unwrap();
    d.rdma_connect(&qp.info, timeout).unwrap();
    (d, qp)
}

fn remote(client: &RdmaTransport, pages: u64) -> (RegionId, RegionKey) {
    let region = client.alloc(pages * PAGE_SIZE as u64).unwrap();
    (region, client.region_key(region).unwrap())
}

#[allow(clippy::cast_possible_truncation, reason = "a byte pattern")]
fn rdma_pattern(pages: usize, seed: u8) -> Vec<u8> {
    (0..pages * PAGE_SIZE).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i / PAGE_SIZE) as u8).collect()
}

#[test]
#[ignore = "needs /dev/ebb and an RDMA device: scripts/softroce.sh runs these in its guest"]
fn kmod_rdma_faults_read_the_memnode_and_evictions_write_back() {
    let s = rdma_memnode();
    let alice = rdma_client(&s, "a-secret", Duration::from_secs(10));
    let base = Device::open().unwrap().counters().unwrap();
    let (region, key) = remote(&alice, 256);
    let data = rdma_pattern(256, 3);
    alice.write_pages(region, &(0..256).collect::<Vec<_>>(), &data).unwrap();
    {
        let (d, _qp) = rdma_region(&alice, 256, 8, Duration::from_secs(10));
        assert_eq!(errno(d.rdma_qp(&rdma_device(), 1)), libc::EBUSY, "one queue pair per region");
        d.rdma_remote(&key, true).unwrap();
        let mut m = d.map(0, 256).unwrap();
        // Every byte the memnode holds comes back through the kernel's fault handler.
        assert!(m[..] == data[..], "pages faulted in over RDMA differ from the memnode's");
        let c = d.counters().unwrap();
        assert_eq!((c.fills_backend, c.fills_zero, c.resident, c.stored, c.backend_errors), (256, 0, 256, 256, 0));
        assert_eq!(c.faults + c.faults_mapped, 256, "{c:?}");
        assert!(c.readaround >= 200 && c.faults <= 56, "read-around batches neighbours into one transfer: {c:?}");
        // A written page goes back to the memnode on eviction; a clean one is only dropped.
        m[5 * PAGE_SIZE..6 * PAGE_SIZE].copy_from_slice(&page_of(0xAB));
        d.evict(0, 256, true).unwrap();
        let mut out = vec![0u8; PAGE_SIZE];
        alice.read_pages(region, &[5], &mut out).unwrap();
        assert_eq!(out, page_of(0xAB), "the evicted dirty page is on the memnode");
        alice.read_pages(region, &[6], &mut out).unwrap();
        assert!(out[..] == data[6 * PAGE_SIZE..7 * PAGE_SIZE]);
        let c = d.counters().unwrap();
        assert_eq!((c.written_back, c.evicted, c.resident), (1, 256, 0));
        // The store ioctls reach the memnode too.
        d.store_write(10, &page_of(0x5A).repeat(20)).unwrap();
        let mut back = vec![0u8; 20 * PAGE_SIZE];
        d.store_read(10, &mut back).unwrap();
        assert_eq!(back, page_of(0x5A).repeat(20));
        alice.read_pages(region, &[29], &mut out).unwrap();
        assert_eq!(out, page_of(0x5A));
        // And a touch refaults the memnode's bytes, the write-back included.
        assert_eq!((m[5 * PAGE_SIZE], m[10 * PAGE_SIZE], m[100 * PAGE_SIZE]), (0xAB, 0x5A, data[100 * PAGE_SIZE]));
        drop(m);
    }
    // A region the memnode holds nothing of yet reads zeros without a transfer, and its writes
    // land once evicted.
    {
        let (fresh, _) = remote(&alice, 16);
        let (d, _qp) = rdma_region(&alice, 16, 0, Duration::from_secs(10));
        d.rdma_remote(&alice.region_key(fresh).unwrap(), false).unwrap();
        let mut m = d.map(0, 16).unwrap();
        assert!(m.iter().all(|&b| b == 0));
        let c = d.counters().unwrap();
        assert_eq!((c.fills_zero, c.fills_backend, c.stored), (16, 0, 0));
        m[3 * PAGE_SIZE] = 9;
        d.evict(0, 16, true).unwrap();
        let mut out = vec![0u8; PAGE_SIZE];
        alice.read_pages(fresh, &[3], &mut out).unwrap();
        assert_eq!(out[0], 9);
        assert_eq!(m[3 * PAGE_SIZE], 9, "a held page is read back from the memnode");
        assert_eq!(d.counters().unwrap().stored, 1);
        drop(m);
    }
    let after = Device::open().unwrap().counters().unwrap();
    assert_eq!(after.module_pages, base.module_pages, "every page of the closed regions is freed");
}

#[test]
#[ignore = "needs /dev/ebb and an RDMA device: scripts/softroce.sh runs these in its guest"]
fn kmod_rdma_misuse_is_refused_with_an_error() {
    let s = rdma_memnode();
    let alice = rdma_client(&s, "a-secret", Duration::from_secs(10));
    let d = Device::open().unwrap();
    d.create(16, Backend::Rdma, 0).unwrap();
    let (_, key) = remote(&alice, 16);
    assert_eq!(errno(d.rdma_remote(&key, true)), libc::ENOTCONN, "no queue pair yet");
    // Nothing that needs the memnode works without a queue pair (and nothing breaks).
    assert_eq!(errno(d.store_write(0, &page_of(1))), libc::ENOTCONN);
    {
        let mut m = d.map(0, 16).unwrap();
        m[0] = 1; // a zero page (the memnode holds none yet), now dirty
        assert_eq!(errno(d.evict(0, 16, true)), libc::ENOTCONN, "its write-back cannot go anywhere");
        assert_eq!(m[0], 1, "the page stayed resident: nothing is lost");
    }
    assert_eq!(errno(d.rdma_qp("nosuch0", 1)), libc::ENODEV);
    assert_eq!(errno(d.rdma_qp(&rdma_device(), 0)), libc::EINVAL, "ports count from 1");
    assert_eq!(errno(d.rdma_qp(&rdma_device(), 9)), libc::EINVAL, "no such port");
    let mut q = RdmaQp { device: [b'x'; 64], port: 1, qpn: 0, psn: 0, lid: 0, mtu: 0, gid: [0; 16], reserved: 0 };
    // SAFETY: EBB_IOC_RDMA_QP reads and writes one `RdmaQp`.
    assert_eq!(errno(unsafe { d.ioctl("rdma qp", IOC_RDMA_QP, &mut q) }), libc::EINVAL, "a name without its NUL");
    let local = d.rdma_qp(&rdma_device(), 1).unwrap();
    let qp = alice.connect_remote_qp(&local).unwrap();
    let mut bad = qp.info;
    bad.mtu = 9.into();
    assert_eq!(errno(d.rdma_connect(&bad, Duration::from_secs(1))), libc::EINVAL, "an MTU code past 4096");
    // A remote whose length is not whole pages, or unknown flags.
    let mut r = RdmaRemote { addr: key.addr.get(), len: 100, rkey: key.rkey.get(), flags: 0 };
    // SAFETY: EBB_IOC_RDMA_REMOTE reads one `RdmaRemote`.
    assert_eq!(errno(unsafe { d.ioctl("rdma remote", IOC_RDMA_REMOTE, &mut r) }), libc::EINVAL);
    r.len = 16 * PAGE_SIZE as u64;
    r.flags = 0x10;
    // SAFETY: as above.
    assert_eq!(errno(unsafe { d.ioctl("rdma remote", IOC_RDMA_REMOTE, &mut r) }), libc::EINVAL);
    // Held pages before the connection: a transfer is refused, never attempted.
    d.rdma_remote(&key, true).unwrap();
    assert_eq!(errno(d.prefetch(1, 1)), libc::ENOTCONN);
    d.rdma_connect(&qp.info, Duration::from_secs(10)).unwrap();
    assert_eq!(errno(d.rdma_connect(&qp.info, Duration::from_secs(10))), libc::EISCONN);
    d.prefetch(0, 16).unwrap();
    assert_eq!(d.counters().unwrap().fills_backend, 15, "page 0 stayed resident, the rest came from the memnode");
}

const RDMA_CHILD: &str = "EBB_KMOD_RDMA_CHILD";

/// The child of the next test: a region on the memnode whose pages become unreachable (the
/// memnode's queue pair gone, or another identity's region), then a touch. It must die of
/// SIGBUS; anything else (a hang, a read of wrong bytes) fails the test.
#[test]
#[ignore = "needs /dev/ebb and an RDMA device: scripts/softroce.sh runs these in its guest"]
fn kmod_rdma_child_touches_an_unreachable_page() {
    let Ok(case) = std::env::var(RDMA_CHILD) else {
        return; // only meaningful as the child of the next test
    };
    let s = rdma_memnode();
    let alice = rdma_client(&s, "a-secret", Duration::from_secs(10));
    let bob = rdma_client(&s, "b-secret", Duration::from_secs(10));
    let (_, key) = remote(&alice, 8);
    let (d, qp) = rdma_region(&bob, 8, 0, Duration::from_secs(2));
    match case.as_str() {
        // Bob's queue pair asks for Alice's region with her key: the memnode's device refuses.
        "foreign" => d.rdma_remote(&key, true).unwrap(),
        // The memnode destroys its end: nothing answers any more.
        _ => {
            let (_, own) = remote(&bob, 8);
            d.rdma_remote(&own, true).unwrap();
            let before = bob.stats().unwrap().connections.get();
            drop(qp);
            // The memnode destroys its end once it sees that connection close (then counts it
            // gone): until then a READ would still be answered.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while bob.stats().unwrap().connections.get() >= before {
                assert!(std::time::Instant::now() < deadline, "the memnode never closed its end");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    let m = d.map(0, 8).unwrap();
    println!("EBB-CHILD-TOUCH");
    let byte = std::hint::black_box(m[0]);
    println!("EBB-CHILD-READ {byte}");
}

#[test]
#[ignore = "needs /dev/ebb and an RDMA device: scripts/softroce.sh runs these in its guest"]
fn kmod_rdma_an_unreachable_memnode_is_sigbus_and_leaks_nothing() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let probe = Device::open().unwrap();
    let before = probe.counters().unwrap();
    for case in ["foreign", "vanished"] {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "pager::kmod::tests::kmod_rdma_child_touches_an_unreachable_page", "--include-ignored", "--nocapture"])
            .env(RDMA_CHILD, case)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let lines: Vec<String> = out.lines().map_while(Result::ok).collect();
        let status = child.wait().unwrap();
        assert!(lines.iter().any(|l| l.contains("EBB-CHILD-TOUCH")), "{case}: the child never touched its page: {lines:?}");
        assert!(!lines.iter().any(|l| l.contains("EBB-CHILD-READ")), "{case}: an unreachable page was read: {lines:?}");
        assert_eq!(status.signal(), Some(libc::SIGBUS), "{case}: {status:?}");
    }
    let after = probe.counters().unwrap();
    assert_eq!((after.module_pages, after.module_regions), (before.module_pages, before.module_regions), "the dead children's regions are freed");
}
