//! Paged linear memory end to end: a real wasm instance whose memory is offloaded to a memnode
//! (embedded, or a real `memnode` process over TCP — or RDMA with `EBB_TEST_RDMA_DEVICE`) and faulted back, verified byte by byte.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ebb::{AREA_A, LEN_OFFSET, Memnode, PATTERN_WAT, SEED_OFFSET, first_mismatch};
use ebb_memnode::{LocalTransport, TcpConfig, Transport};
use ebb_runtime::exec::{Executor, Instance, Stdout};
use ebb_runtime::pager::{FaultPath, PageState, Pager, PagerConfig};

const MIB: usize = 1 << 20;

fn executor(transport: Arc<dyn Transport>, threads: usize) -> Executor {
    let pager = Pager::new(PagerConfig { fault_threads: threads, ..Default::default() }, transport).expect("pager");
    Executor::new(pager).expect("executor")
}

/// A client of `memnode` (over RDMA where the run asks for it, with the run's bound: tests/support).
fn remote(memnode: &Memnode) -> Arc<dyn Transport> {
    memnode.transport(ebb::memnode_config()).expect("connect to memnode")
}

fn pattern_instance(exec: &Executor, seed: u32, len: usize) -> Instance {
    let module = exec.compile(PATTERN_WAT.as_bytes()).expect("compile");
    let mut inst = exec.instantiate(&module, &["pattern".into()], Stdout::Inherit).expect("instantiate");
    let mem = inst.memory_bytes_mut().expect("memory");
    mem[SEED_OFFSET..SEED_OFFSET + 4].copy_from_slice(&seed.to_le_bytes());
    mem[LEN_OFFSET..LEN_OFFSET + 4].copy_from_slice(&u32::try_from(len).unwrap().to_le_bytes());
    inst
}

fn check_area(inst: &mut Instance, start: usize, len: usize, seed: u32) {
    let bytes = inst.memory_bytes().expect("memory");
    assert!(bytes.len() >= start + len, "memory is {} bytes, area ends at {}", bytes.len(), start + len);
    if let Some(at) = first_mismatch(&bytes[start..start + len], seed) {
        let poisoned = inst.memory().and_then(|m| m.poisoned());
        panic!("byte {at} of the area at {start:#x} differs from the pattern (poisoned: {poisoned:?})");
    }
}

/// Fill, offload, fault back (host reads and guest reads), grow after an offload, offload again.
fn fill_offload_grow(exec: &Executor, seed: u32, len: usize, shared_pager: bool) {
    let mut inst = pattern_instance(exec, seed, len);
    assert_eq!(inst.run().unwrap(), 0, "run 1 fills area A");
    let mem = inst.memory().unwrap().clone();
    let report = mem.offload().unwrap();
    // Area A is len/4096 non-zero pages (+ the header page); the rest of memory was never touched.
    assert_eq!(report.pages_sent, (len / 4096) as u64 + 1);
    assert_eq!(mem.count(PageState::Resident), 0);
    assert_eq!(mem.count(PageState::Remote), len / 4096 + 1);
    let before = exec.pager().stats();
    // The host reads fault every page back through the pager.
    check_area(&mut inst, AREA_A, len, seed);
    let after = exec.pager().stats();
    if !shared_pager {
        assert_eq!(after.pages_fetched - before.pages_fetched, (len / 4096) as u64, "each page fetched once");
        assert!(after.faults_remote > before.faults_remote);
        // Bytes in: each page once from the memnode; on the kmod path's DRAM backend the
        // module's store served them and nothing crossed (its RDMA backend READs them).
        let bytes_in = after.bytes_in - before.bytes_in;
        if exec.pager().fault_path() == FaultPath::Kmod && exec.pager().transport().as_rdma().is_none() {
            assert_eq!(bytes_in, 0, "the module's DRAM store served the faults");
        } else {
            assert!(bytes_in >= len as u64, "{bytes_in} bytes in for {len} bytes faulted back");
        }
    }
    mem.offload().unwrap();
    // Run 2 verifies A in the guest (faulting it back), grows the memory and fills area B.
    assert_eq!(inst.run().unwrap(), 0, "run 2: A verified, memory grown, B filled");
    let b = AREA_A + len;
    mem.offload().unwrap();
    assert_eq!(mem.count(PageState::Resident), 0);
    assert_eq!(inst.run().unwrap(), 0, "run 3: A and B verified after a second offload");
    check_area(&mut inst, b, 16 * MIB, seed + 1);
    check_area(&mut inst, AREA_A, len, seed);
    assert!(mem.poisoned().is_none());
}

#[test]
fn fill_64m_offload_fault_back_embedded() {
    let exec = executor(Arc::new(LocalTransport::embedded(1 << 30)), 2);
    fill_offload_grow(&exec, 0x5eed, 64 * MIB, false);
    assert_eq!(exec.pager().stats().faults_failed, 0);
}

#[test]
fn zero_pages_never_travel() {
    // Counted where the pages cross, not by the pager: the transport sees exactly the non-zero
    // pages (area A and the header page), though the module's memory is far larger and its
    // stack and data pages were touched too.
    let counting = Arc::new(ebb_memnode::client::CountingTransport::new(LocalTransport::embedded(1 << 30)));
    let exec = executor(counting.clone(), 2);
    let mut inst = pattern_instance(&exec, 0x77, 8 * MIB);
    assert_eq!(inst.run().unwrap(), 0);
    // Four pages past area A written with zeros: resident, but nothing to send.
    let zeros_at = AREA_A + 8 * MIB + 65536;
    inst.memory_bytes_mut().unwrap()[zeros_at..zeros_at + 4 * 4096].fill(0);
    let before = counting.pages_written.load(std::sync::atomic::Ordering::Relaxed);
    let report = inst.memory().unwrap().offload().unwrap();
    let sent = counting.pages_written.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert_eq!(sent, (8 * MIB / 4096) as u64 + 1, "pages that crossed the transport");
    assert!(report.zero_pages_dropped >= 4, "zeroed pages were dropped, not sent: {report:?}");
    check_area(&mut inst, AREA_A, 8 * MIB, 0x77);
}

#[test]
fn fill_64m_offload_fault_back_from_a_memnode_process() {
    let memnode = Memnode::start(&["--capacity", "1G"]).unwrap();
    let exec = executor(remote(&memnode), 2);
    fill_offload_grow(&exec, 0xabcd, 64 * MIB, false);
}

#[test]
fn sixteen_instances_fault_concurrently_from_a_memnode_process() {
    let memnode = Memnode::start(&["--capacity", "2G"]).unwrap();
    let exec = Arc::new(executor(remote(&memnode), 4));
    let threads: Vec<_> = (0..16u32)
        .map(|i| {
            let exec = exec.clone();
            std::thread::spawn(move || fill_offload_grow(&exec, 1000 + i, 4 * MIB, true))
        })
        .collect();
    for t in threads {
        t.join().expect("an instance failed");
    }
    assert_eq!(exec.pager().stats().faults_failed, 0);
}

/// With `EBB_TEST_RDMA_DEVICE` the memnode serves RDMA on that device and is reached by `rdma://`
/// (tests/support): on the module's RDMA backend (the kmod guest of `scripts/softroce.sh`) the
/// module's failed READ (a SIGBUS) must become the call's error.
fn lost_memnode(stop: impl FnOnce(&mut Memnode)) -> (anyhow::Error, Duration) {
    let mut memnode = Memnode::start(&["--capacity", "1G"]).unwrap();
    // The default bound, whatever the run sets: it is what these tests check.
    let transport = memnode.transport(TcpConfig::default()).expect("connect to memnode");
    let exec = executor(transport, 2);
    let mut inst = pattern_instance(&exec, 7, 16 * MIB);
    assert_eq!(inst.run().unwrap(), 0);
    inst.memory().unwrap().offload().unwrap();
    stop(&mut memnode);
    let start = Instant::now();
    let err = inst.run().expect_err("a call whose pages are gone must fail");
    let took = start.elapsed();
    assert!(inst.memory().unwrap().poisoned().is_some());
    assert!(exec.pager().stats().faults_failed >= 1);
    // Other instances are unaffected: a fresh one on the embedded memnode works in this process.
    let other = executor(Arc::new(LocalTransport::embedded(1 << 30)), 1);
    let mut ok = pattern_instance(&other, 9, 4 * MIB);
    assert_eq!(ok.run().unwrap(), 0);
    ok.memory().unwrap().offload().unwrap();
    assert_eq!(ok.run().unwrap(), 0);
    (err, took)
}

#[test]
fn killed_memnode_fails_the_call_quickly() {
    let (err, took) = lost_memnode(|m| m.kill());
    let msg = format!("{err:#}");
    assert!(msg.contains("lost its memory") && msg.contains("memnode"), "unclear error: {msg}");
    // The default bound is 1 s; a dead peer is noticed at once. Generous margin for a loaded CI.
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn silent_memnode_fails_the_call_within_the_bound() {
    let (err, took) = lost_memnode(|m| m.signal(libc::SIGSTOP));
    let msg = format!("{err:#}");
    assert!(msg.contains("did not answer"), "unclear error: {msg}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn a_poisoned_memory_still_frees_its_region_on_a_healthy_memnode() {
    let mut memnode = Memnode::start(&["--capacity", "1G"]).unwrap();
    let transport = remote(&memnode);
    let exec = executor(transport.clone(), 2);
    let mut inst = pattern_instance(&exec, 11, 4 * MIB);
    assert_eq!(inst.run().unwrap(), 0);
    inst.memory().unwrap().offload().unwrap();
    assert_eq!(transport.stats().unwrap().regions.get(), 1);
    // Silent for longer than the bound: the call fails and the memory is poisoned...
    memnode.signal(libc::SIGSTOP);
    assert!(inst.run().is_err());
    assert!(inst.memory().unwrap().poisoned().is_some());
    // ...but the memnode is back: dropping the instance frees its region there at once.
    memnode.signal(libc::SIGCONT);
    drop(inst);
    assert_eq!(transport.stats().unwrap().regions.get(), 0, "the poisoned memory's region leaked");
}

#[test]
fn instances_dropped_while_others_fault() {
    // Memories come and go (their regions freed, their address ranges reused) while other
    // instances fault over the same connection pool; every surviving byte must still be right.
    let memnode = Memnode::start(&["--capacity", "2G"]).unwrap();
    let exec = Arc::new(executor(remote(&memnode), 4));
    let threads: Vec<_> = (0..16u32)
        .map(|i| {
            let exec = exec.clone();
            std::thread::spawn(move || {
                for round in 0..3 {
                    let seed = i * 100 + round;
                    let mut inst = pattern_instance(&exec, seed, 4 * MIB);
                    assert_eq!(inst.run().unwrap(), 0);
                    inst.memory().unwrap().offload().unwrap();
                    if (i + round) % 3 != 0 {
                        check_area(&mut inst, AREA_A, 4 * MIB, seed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("an instance failed");
    }
}

/// Hands over the first `open` pages of a streaming read at once and the rest only when the test
/// opens the gate: a read-around still in flight after its fault was served.
#[derive(Debug)]
struct Gate {
    open: usize,
    state: std::sync::Mutex<(bool, bool, bool)>, // (waiting at the gate, gate open, done)
    changed: std::sync::Condvar,
}

impl Gate {
    fn set(&self, f: impl FnOnce(&mut (bool, bool, bool))) {
        f(&mut self.state.lock().unwrap());
        self.changed.notify_all();
    }
    fn get(&self) -> (bool, bool, bool) {
        *self.state.lock().unwrap()
    }
}

impl ebb::Hooks for Gate {
    fn stream(&self, pages: usize, deliver: &mut dyn FnMut(std::ops::Range<usize>)) {
        let open = self.open.min(pages);
        deliver(0..open);
        if open < pages {
            self.set(|s| s.0 = true);
            let mut s = self.state.lock().unwrap();
            while !s.1 {
                s = self.changed.wait(s).unwrap();
            }
            drop(s);
            deliver(open..pages);
        }
        self.set(|s| s.2 = true);
    }
}

#[test]
fn a_late_readaround_never_lands_after_the_memory_moved_on() {
    let gated = Arc::new(ebb::Hooked::new(Gate { open: 16, state: std::sync::Mutex::new((false, false, false)), changed: std::sync::Condvar::new() }));
    let pager = Pager::new(PagerConfig { fault_threads: 1, readaround: 255, ..Default::default() }, gated.clone()).unwrap();
    let buf = Arc::new(ebb::PagedBuffer::new(&pager, 4 * MIB));
    buf.fill_pages(3);
    let snap = buf.handle.capture().unwrap();
    // The initial state now lives only on the memnode: faults fetch it, with a 255-page read-around.
    snap.drop_local();
    buf.handle.evict().unwrap();
    // A call touches page 0: its fault is served by the first frame, the rest waits at the gate.
    let toucher = {
        let buf = buf.clone();
        std::thread::spawn(move || buf.touch(0))
    };
    assert!(ebb::wait_until(Duration::from_secs(10), || gated.hooks.get().0), "the fault never reached the transport");
    if pager.fault_path() == FaultPath::UffdSigbus {
        // The faulting thread fetches its fault's whole read-around before it returns into the
        // call, so no frame can arrive after the call: the touch waits at the gate too.
        std::thread::sleep(Duration::from_millis(50));
        assert!(!toucher.is_finished(), "the fault returned before its read-around was installed");
        gated.hooks.set(|s| s.1 = true);
        let first = toucher.join().unwrap();
        assert_eq!(buf.handle.count(PageState::Resident), 256, "the page and its whole read-around");
        buf.handle.evict().unwrap();
        assert_eq!(buf.handle.count(PageState::Resident), 0);
        assert!(buf.handle.poisoned().is_none());
        assert_eq!(buf.touch(0), first);
        assert_eq!(buf.touch(300), 3u8.wrapping_add(300usize.to_le_bytes()[0]) | 1);
        return;
    }
    let first = toucher.join().unwrap();
    // The call is over; its memory is evicted while the read-around is still in flight. The evict
    // must neither wait for the transfer nor let the late frames land afterwards.
    let evicting = {
        let handle = buf.handle.clone();
        std::thread::spawn(move || handle.evict().unwrap())
    };
    assert!(ebb::wait_until(Duration::from_secs(10), || evicting.is_finished()), "evict waited for a transfer");
    evicting.join().unwrap();
    gated.hooks.set(|s| s.1 = true);
    assert!(ebb::wait_until(Duration::from_secs(10), || gated.hooks.get().2), "the transfer never finished");
    // Let the handler finish the fill it was in.
    assert!(ebb::wait_until(Duration::from_secs(10), || pager.stats().readaround_fenced == 1), "{:?}", pager.stats());
    assert_eq!(buf.handle.count(PageState::Resident), 0, "pages of a stale read-around landed after the evict");
    assert!(buf.handle.poisoned().is_none());
    // And everything reads back as the initial state.
    assert_eq!(buf.touch(0), first);
    assert_eq!(buf.touch(100), 3u8.wrapping_add(100) | 1);
}

#[test]
fn readaround_is_bounded() {
    let err = Pager::new(PagerConfig { readaround: 100_000, ..Default::default() }, Arc::new(LocalTransport::embedded(1 << 20))).unwrap_err();
    assert!(err.to_string().contains("allowed 0 to 1023"), "{err}");
}

/// Reads panic while `panicking` is set (a bug in a backend, say).
#[derive(Debug)]
struct Panicky {
    panicking: std::sync::atomic::AtomicBool,
}

impl ebb::Hooks for Panicky {
    fn before_read(&self) {
        assert!(!self.panicking.load(std::sync::atomic::Ordering::Relaxed), "injected transport panic");
    }
}

#[test]
fn a_crashing_fault_handler_poisons_what_it_served_and_serves_on() {
    let t = Arc::new(ebb::Hooked::new(Panicky { panicking: false.into() }));
    // One handler thread: if the crash took it, the second memory's fault would never be served.
    let exec = executor(t.clone(), 1);
    let mut a = pattern_instance(&exec, 5, 4 * MIB);
    let mut b = pattern_instance(&exec, 6, 4 * MIB);
    for inst in [&mut a, &mut b] {
        assert_eq!(inst.run().unwrap(), 0);
        inst.memory().unwrap().offload().unwrap();
    }
    t.hooks.panicking.store(true, std::sync::atomic::Ordering::Relaxed);
    let err = a.run().expect_err("a call whose fault handler crashed must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("lost its memory") && msg.contains("panicked"), "{msg}");
    assert!(a.memory().unwrap().poisoned().is_some());
    assert_eq!(exec.pager().stats().handler_failures, 1);
    t.hooks.panicking.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(b.run().unwrap(), 0, "the other memory is still served, byte for byte");
    check_area(&mut b, AREA_A, 4 * MIB, 6);
}

#[test]
fn a_state_value_maps_into_paged_memory_and_the_range_goes_back_to_paging() {
    let pager = Pager::new(PagerConfig::default(), Arc::new(LocalTransport::embedded(64 << 20))).unwrap();
    let buf = ebb::PagedBuffer::new(&pager, MIB);
    let store = ebb_runtime::state::StateStore::default();
    store.set("u", "k", &[5; 8192]).unwrap();
    let replica = store.replica("u", "k", 8192).unwrap();
    let h = &buf.handle;
    // Refused: not whole pages, past the size, over a touched page.
    assert!(h.map_shared(100, 8192, replica.fd()).is_err());
    assert!(h.map_shared(MIB - 4096, 8192, replica.fd()).is_err());
    buf.touch(0);
    assert!(h.map_shared(0, 8192, replica.fd()).is_err(), "page 0 was touched");
    let at = 65536;
    h.map_shared(at, 8192, replica.fd()).unwrap();
    assert!(h.map_shared(at + 4096, 4096, replica.fd()).is_err(), "overlapping");
    // The memory reaches the value's own pages, both ways, with no fault and no copy.
    let zero_faults = pager.stats().faults_zero;
    assert_eq!(buf.touch(at / 4096 + 1), 5);
    // SAFETY: inside the accessible memory, which this test owns; nothing else writes it.
    unsafe { buf.ptr().add(at + 4096).write_volatile(9) };
    assert_eq!(replica.read(4096, 2), [9, 5], "a write through memory lands in the replica");
    store.write_at("u", "k", 8192, 0, &[7]).unwrap();
    assert_eq!(buf.touch(at / 4096), 7, "a write to the store shows in memory");
    assert_eq!(pager.stats().faults_zero, zero_faults, "served by the file, not the fault path");
    // Undone: the range is paged memory again (zero, faulted in), the value untouched.
    assert_eq!(h.unmap_shared().unwrap(), 1);
    assert_eq!((buf.touch(at / 4096), buf.touch(at / 4096 + 1)), (0, 0));
    assert_eq!(pager.stats().faults_zero, zero_faults + 2, "faults reach the pager again");
    assert_eq!(replica.read(0, 1), [7]);
    assert_eq!(replica.read(4096, 1), [9]);
    assert_eq!(h.unmap_shared().unwrap(), 0);
}

/// Page `p` of `buf` as a slice (faulting it in).
fn page(buf: &ebb::PagedBuffer, p: usize) -> &[u8] {
    assert!(p < buf.len() / 4096);
    // SAFETY: page `p` lies in the buffer's accessible memory, which it owns; nothing else
    // touches it while the slice lives.
    unsafe { std::slice::from_raw_parts(buf.ptr().add(p * 4096), 4096) }
}

fn write_page(buf: &ebb::PagedBuffer, p: usize, byte: u8) {
    assert!(p < buf.len() / 4096);
    // SAFETY: as in `page`.
    unsafe { std::ptr::write_bytes(buf.ptr().add(p * 4096), byte, 4096) };
}

#[test]
fn a_memory_lent_to_another_identity_follows_by_pages_and_resets_to_its_initial_state() {
    // Two runtimes: each its own pager and memnode identity (a random token each).
    let memnode = Memnode::start(&[]).unwrap();
    let pager = |t| Pager::new(PagerConfig::default(), t).expect("pager");
    let (lender, borrower) = (pager(remote(&memnode)), pager(remote(&memnode)));
    const PAGES: usize = 64;
    let a = ebb::PagedBuffer::new(&lender, PAGES * 4096);
    let initial = |p: usize| if p.is_multiple_of(3) { 0 } else { 0x10 + p.to_le_bytes()[0] };
    for p in 0..PAGES {
        write_page(&a, p, initial(p));
    }
    let snap = a.handle.capture().unwrap();
    // The call so far: pages 1 and 3 written.
    write_page(&a, 1, 0xa1);
    write_page(&a, 3, 0xa3);
    let lent = a.handle.lend().unwrap();
    assert_eq!(lent.pages, PAGES);
    let b = ebb::PagedBuffer::new(&borrower, PAGES * 4096);
    b.handle.borrow(&lent).unwrap();
    let seen = |p: usize| match p {
        1 => 0xa1,
        3 => 0xa3,
        _ => initial(p),
    };
    for p in 0..PAGES {
        assert!(page(&b, p).iter().all(|&x| x == seen(p)), "page {p} as the borrower sees it");
    }
    assert!(borrower.stats().pages_fetched > 0, "the borrower faulted the pages in from the memnode");
    // The borrower's part of the call writes pages 3, 7 and 9 (9 back to zero).
    write_page(&b, 3, 0xb3);
    write_page(&b, 7, 0xb7);
    write_page(&b, 9, 0);
    assert_eq!(b.handle.give_back().unwrap(), vec![3, 7, 9]);
    drop(b); // a borrowed region is not the borrower's to free
    a.handle.take_back(&[3, 7, 9]).unwrap();
    a.handle.end_lend(&lent);
    for (p, want) in [(1, 0xa1), (3, 0xb3), (7, 0xb7), (9, 0), (2, initial(2))] {
        assert!(page(&a, p).iter().all(|&x| x == want), "page {p} after the offloaded part");
    }
    // The next call starts from the initial state again, whatever the lent call changed.
    let report = a.handle.reset().unwrap();
    assert_eq!(lender.stats().lent_faulted_back, 3, "the borrower's three pages were faulted back");
    for p in [1, 3, 7, 9] {
        assert!(report.written.contains(&p), "page {p} restored by the reset: {:?}", report.written);
    }
    for p in 0..PAGES {
        assert!(page(&a, p).iter().all(|&x| x == initial(p)), "page {p} after the reset");
    }
    // And an idle offload after it writes back what differs, not the lent call's region copies.
    a.handle.offload().unwrap();
    for p in 0..PAGES {
        assert!(page(&a, p).iter().all(|&x| x == initial(p)), "page {p} after offload and fault back");
    }
    // The tickets are gone: a third client cannot attach them.
    let other = remote(&memnode);
    assert!(other.attach(lent.region, &lent.region_ticket).is_err());
    drop(snap);
}

/// Writes memory [65536, 131072) to stdout with one WASI `fd_write`.
const WRITER_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2 2)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const 65536))
    (if (i32.ne (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)) (i32.const 0))
      (then unreachable))))"#;

/// Reads the last word of its memory, then one past its end.
const OOB_WAT: &str = r#"(module
  (memory (export "memory") 2 2)
  (func (export "_start")
    (drop (i32.load (i32.const 131068)))
    (drop (i32.load (i32.const 131072)))))"#;

#[test]
fn a_wasi_write_from_offloaded_memory_writes_its_bytes() {
    let exec = executor(Arc::new(LocalTransport::embedded(64 << 20)), 2);
    let module = exec.compile(WRITER_WAT.as_bytes()).unwrap();
    let pipe = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(1 << 20);
    let mut inst = exec.instantiate(&module, &["writer".into()], Stdout::Capture(pipe.clone())).unwrap();
    let expected: Vec<u8> = (0..65536u32).map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[2]).collect();
    inst.memory_bytes_mut().unwrap()[65536..].copy_from_slice(&expected);
    let mem = inst.memory().unwrap().clone();
    mem.offload().unwrap();
    assert_eq!(mem.count(PageState::Resident), 0);
    // The host reads the buffer while WASI copies it out: on the sigbus path those reads fault
    // in the calling thread, and nothing hands a missing page to the kernel (no EFAULT).
    assert_eq!(inst.run().unwrap(), 0, "fd_write failed (on {})", exec.pager().fault_path());
    assert!(exec.pager().stats().pages_fetched >= 16, "the buffer came back from the memnode: {:?}", exec.pager().stats());
    let written = pipe.contents();
    assert_eq!(written.len(), expected.len());
    assert!(written[..] == expected[..], "fd_write wrote other bytes than the offloaded buffer holds");
}

#[test]
fn an_out_of_bounds_access_stays_a_trap_on_paged_memory() {
    let exec = executor(Arc::new(LocalTransport::embedded(64 << 20)), 1);
    let module = exec.compile(OOB_WAT.as_bytes()).unwrap();
    let mut inst = exec.instantiate(&module, &["oob".into()], Stdout::Inherit).unwrap();
    inst.memory_bytes_mut().unwrap()[65536..65540].copy_from_slice(b"kept");
    inst.memory().unwrap().offload().unwrap();
    for _ in 0..3 {
        let err = inst.run().unwrap_err();
        assert!(format!("{err:?}").contains("out of bounds"), "not a memory trap: {err:?}");
    }
    let mem = inst.memory().unwrap().clone();
    assert!(mem.poisoned().is_none(), "a trap is not a lost page");
    assert_eq!(&inst.memory_bytes().unwrap()[65536..65540], b"kept");
}
