//! Faasm call semantics on paged memory: every call starts from the function's initial state (the
//! memory and globals after `_faasm_zygote`), whatever earlier calls wrote; later instances adopt
//! the captured state without copying; an evicted instance faults it back from the memnode.

use std::sync::Arc;

use ebb::Memnode;
use ebb_memnode::{LocalTransport, Transport};
use ebb_runtime::exec::{Entry, Executor, Function, Stdout};
use ebb_runtime::pager::{FaultPath, Pager, PagerConfig};

/// Whether the memories are mappings of Ebb's kernel module with its DRAM backend: each memory's
/// region there keeps the initial state in the module's store, so faults never reach the memnode
/// and copy-on-write images are off (`pager::kernel`). Only the assertions about where pages came
/// from differ; every byte is checked the same way.
fn kmod(pager: &Pager) -> bool {
    pager.fault_path() == FaultPath::Kmod
}

const TABLE_WAT: &str = include_str!("modules/table.wat");
const TABLE_PAGES: usize = 16384;

/// The checksum the table module reports for its initial table.
fn expected_checksum() -> u32 {
    (0..0x100_0000u32).fold(0, |acc, w| acc ^ (w.wrapping_mul(0x9E37_79B1) ^ 1))
}

fn parse(output: &[u8]) -> (u32, u32) {
    assert_eq!(output.len(), 8, "output {output:?}");
    let word = |i: usize| u32::from_le_bytes(output[i..i + 4].try_into().unwrap());
    (word(0), word(4))
}

/// Runs on either kind of local image (`cow`: memories map it copy-on-write; else it is copied
/// into them page by page).
fn scenario(transport: Arc<dyn Transport>, cow: bool) {
    let pager = Pager::new(PagerConfig { readaround: 63, cow_images: cow, ..Default::default() }, transport).unwrap();
    let exec = Executor::new(pager.clone()).unwrap();
    let f = Arc::new(Function::new("demo/table", exec.compile(TABLE_WAT.as_bytes()).unwrap()));
    let want = expected_checksum();

    let mut a = exec.function_instance(&f, Stdout::Inherit, None, None).unwrap().0;
    let snap = f.snapshot().expect("captured at the first instance").clone();
    assert_eq!(snap.nonzero_pages(), TABLE_PAGES, "the table's pages, no zero page");
    let out = a.call(b"", Entry::Start, None).unwrap();
    assert_eq!((out.rc, parse(&out.output)), (0, (want, 1)));
    // A call that scribbles over the whole table and the global...
    let out = a.call(b"scribble", Entry::Start, None).unwrap();
    assert_eq!(parse(&out.output), (want, 1));
    // ...is invisible to the next one.
    let out = a.call(b"", Entry::Start, None).unwrap();
    assert_eq!(parse(&out.output), (want, 1), "call isolation: the scribbled table leaked");
    assert!(!a.must_discard());
    // A call that writes only a few pages has them restored in place from the local image: the
    // next call takes no fault at all (a whole-table scribble is dropped instead, see above).
    let faults = |s: ebb_runtime::pager::PagerSnapshot| s.faults_zero + s.faults_image + s.faults_remote;
    let before = pager.stats();
    let out = a.call(b"", Entry::Start, None).unwrap();
    assert_eq!(parse(&out.output), (want, 1));
    assert!(a.last_call.written.len() < 64, "{} pages written", a.last_call.written.len());
    assert_eq!(faults(pager.stats()), faults(before), "pages restored in place faulted again");
    // After an eviction PAGEMAP_SCAN also reports the dropped pages as written: the reset must
    // skip them (nothing mapped to restore) and still restore the few written ones in place.
    a.memory().unwrap().evict().unwrap();
    assert_eq!(parse(&a.call(b"", Entry::Start, None).unwrap().output), (want, 1));
    let before = pager.stats();
    assert_eq!(parse(&a.call(b"", Entry::Start, None).unwrap().output), (want, 1));
    assert_eq!(faults(pager.stats()), faults(before), "a call after an eviction faulted on restored pages");

    // A second instance adopts the initial state without running the zygote again.
    let mut b = exec.function_instance(&f, Stdout::Inherit, None, None).unwrap().0;
    let before = pager.stats();
    let out = b.call(b"", Entry::Start, None).unwrap();
    assert_eq!(parse(&out.output), (want, 1));
    let after = pager.stats();
    if cow && !kmod(&pager) {
        // Mapped from the page cache: not one userfaultfd fault for the image's pages.
        assert_eq!(after.faults_image, before.faults_image, "the image's pages are page-cache hits");
        assert!(snap.local_bytes() >= TABLE_PAGES * 4096, "one image, shared");
    } else {
        assert!(after.faults_image > before.faults_image, "served from the local image");
    }
    assert_eq!(after.pages_fetched, before.pages_fetched, "no network while the image is local");

    // Drop the function's local image and drain both instances (in that order, as the platform
    // does: an eviction moves a memory off a dropped image): the next calls fetch from the memnode.
    let dropped = snap.drop_local();
    assert!(dropped >= TABLE_PAGES * 4096, "the whole table was local ({dropped} bytes)");
    a.memory().unwrap().evict().unwrap();
    b.memory().unwrap().evict().unwrap();
    let before = pager.stats();
    let out = a.call(b"scribble", Entry::Start, None).unwrap();
    assert_eq!(parse(&out.output), (want, 1));
    let after = pager.stats();
    if kmod(&pager) {
        assert!(after.faults_image > before.faults_image, "served from the module's store");
        assert_eq!(after.pages_fetched, before.pages_fetched, "the module's store kept the initial state");
    } else {
        assert!(after.faults_remote > before.faults_remote);
        assert_eq!(after.pages_fetched - before.pages_fetched, TABLE_PAGES as u64, "every table page fetched once");
    }
    let out = b.call(b"", Entry::Start, None).unwrap();
    assert_eq!(parse(&out.output), (want, 1));
    let out = a.call(b"", Entry::Start, None).unwrap();
    assert_eq!(parse(&out.output), (want, 1), "isolation after eviction");
    assert_eq!(pager.stats().faults_failed, 0);
}

#[test]
fn every_call_starts_from_the_initial_state_embedded() {
    scenario(Arc::new(LocalTransport::embedded(1 << 30)), true);
}

#[test]
fn every_call_starts_from_the_initial_state_from_a_memnode_process() {
    let memnode = Memnode::start(&["--capacity", "1G"]).unwrap();
    scenario(memnode.transport(ebb::memnode_config()).unwrap(), true);
}

#[test]
fn every_call_starts_from_the_initial_state_with_copied_images() {
    scenario(Arc::new(LocalTransport::embedded(1 << 30)), false);
}

#[test]
fn every_call_starts_from_the_initial_state_with_copied_images_from_a_memnode_process() {
    let memnode = Memnode::start(&["--capacity", "1G"]).unwrap();
    scenario(memnode.transport(ebb::memnode_config()).unwrap(), false);
}

/// Copy-on-write images: instances of one function share the image's pages, never each other's
/// writes; a reset drops exactly the pages the call wrote; a dropped image keeps serving the
/// memories that map it until they move off it; an offload or a host write under a mapped image
/// keeps every byte.
#[test]
fn instances_share_the_image_and_never_each_others_writes() {
    let pager = Pager::new(PagerConfig { readaround: 63, ..Default::default() }, Arc::new(LocalTransport::embedded(1 << 30))).unwrap();
    let exec = Executor::new(pager.clone()).unwrap();
    let f = Arc::new(Function::new("demo/table", exec.compile(TABLE_WAT.as_bytes()).unwrap()));
    let want = expected_checksum();
    let mut a = exec.function_instance(&f, Stdout::Inherit, None, None).unwrap().0;
    let snap = f.snapshot().unwrap().clone();
    let mut b = exec.function_instance(&f, Stdout::Inherit, None, None).unwrap().0;
    assert_eq!(parse(&a.call(b"", Entry::Start, None).unwrap().output), (want, 1));
    assert_eq!(parse(&b.call(b"", Entry::Start, None).unwrap().output), (want, 1));
    let image = snap.local_bytes();

    // A writes 1 000 table words (one every 64 KiB of the table) outside any call: B's next call
    // sees none of them, and the image did not change (B's checksum is the initial one).
    {
        let mem = a.memory_bytes_mut().unwrap();
        for w in 0..1000 {
            mem[65536 + w * 65536..65536 + w * 65536 + 4].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        }
    }
    assert_eq!(parse(&b.call(b"", Entry::Start, None).unwrap().output), (want, 1), "B saw A's writes");
    // A's call sees its own writes (they are its memory's), and its reset drops exactly those
    // pages (plus the output and stack pages the call wrote).
    let (sum, _) = parse(&a.call(b"", Entry::Start, None).unwrap().output);
    assert_ne!(sum, want, "A's own writes are gone before its call ran");
    let table_written = a.last_call.written.iter().filter(|&&p| p >= 16).count();
    assert_eq!(table_written, 1000, "written table pages {:?}", a.last_call.written);
    assert_eq!(parse(&a.call(b"", Entry::Start, None).unwrap().output), (want, 1), "the reset restored the table");
    assert_eq!(snap.local_bytes(), image, "resets add nothing to the image");

    // The image is dropped while both memories map it: their calls go on from it (no fetch), and
    // their next eviction moves them off it, after which the table comes from the memnode.
    assert!(snap.drop_local() >= TABLE_PAGES * 4096);
    let fetched = pager.stats().pages_fetched;
    assert_eq!(parse(&a.call(b"scribble", Entry::Start, None).unwrap().output), (want, 1));
    assert_eq!(parse(&b.call(b"", Entry::Start, None).unwrap().output), (want, 1));
    assert_eq!(pager.stats().pages_fetched, fetched, "the dropped image still served its memories");
    b.memory().unwrap().evict().unwrap();
    assert_eq!(parse(&b.call(b"", Entry::Start, None).unwrap().output), (want, 1));
    if kmod(&pager) {
        assert_eq!(pager.stats().pages_fetched, fetched, "B's region of the module kept the initial state");
    } else {
        assert!(pager.stats().pages_fetched - fetched >= TABLE_PAGES as u64, "B fetched the table after leaving the image");
    }

    // A still maps the dropped image: an offload turns it into anonymous memory first and keeps
    // a host write made under the image; the next call faults the table back and is correct.
    a.memory_bytes_mut().unwrap()[65536..65540].copy_from_slice(&7u32.to_le_bytes());
    a.memory().unwrap().offload().unwrap();
    assert_eq!(u32::from_le_bytes(a.memory_bytes().unwrap()[65536..65540].try_into().unwrap()), 7, "the host write survived the offload");
    let (sum, _) = parse(&a.call(b"", Entry::Start, None).unwrap().output);
    assert_eq!(sum, want ^ 7 ^ 1, "A's call saw exactly its one changed word"); // word 0 is 0 ^ 1 initially
    assert_eq!(pager.stats().faults_failed, 0);
}
