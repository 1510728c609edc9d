//! The cost of one 4 KiB page fault by each path, in one run (so ratios are meaningful on a noisy
//! machine): an anonymous first touch (the kernel alone; 4 KiB pages, and beside it the same
//! with transparent huge pages as the kernel's policy gives them); on each fault path (`uffd`: handler
//! threads, `sigbus`: the faulting thread itself) a zero-page fault and a remote fault over tcp
//! with and without read-around; one page read through the tcp transport with no fault (the
//! transport's own round trip); with an RDMA device, the rdma transport's round trip and a remote
//! fault over rdma on each path; with Ebb's module loaded (`/dev/ebb`, the soft-RoCE guest's
//! bench run), a fault the module serves in-kernel from its DRAM store, one it fills with zeros,
//! and one it reads from the memnode with its own queue pair (`kmod_rdma_4k`, beside
//! `remote_rdma_4k`); and copy-on-write images on kmod: a read that maps the image's page, a write
//! that copies it, and a read then a write of the same page (`kmod_based_*`). Needs root
//! (userfaultfd).
//!
//! cargo bench --bench fault_latency
//! scripts/softroce.sh bench            (in the guest: rdma and kmod ids, TCG: ratios only)

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ebb::{PagedBuffer, loopback_memnode, rdma_memnode, rdma_only};
use ebb_memnode::Transport;
use ebb_memnode::rdma::RdmaTransport;
use ebb_runtime::pager::kmod::{Backend, Device, Kind};
use ebb_runtime::pager::{FaultPath, Pager, PagerConfig};

const CHUNK: usize = 16 << 20; // pages touched per setup: 16 MiB

const PATHS: [(FaultPath, &str); 2] = [(FaultPath::Uffd, "uffd"), (FaultPath::UffdSigbus, "sigbus")];

fn pager(fault_path: FaultPath, readaround: usize, transport: &Arc<dyn ebb_memnode::Transport>) -> Arc<Pager> {
    Pager::new(PagerConfig { fault_path, fault_threads: 1, readaround, ..Default::default() }, transport.clone()).expect("pager (run as root)")
}

/// Times `iters` single-page faults, `per_chunk` at a time, re-creating state with `setup`.
fn faults<S>(iters: u64, mut setup: impl FnMut() -> S, mut touch: impl FnMut(&S, usize)) -> Duration {
    let per_chunk = (CHUNK / 4096) as u64;
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(per_chunk);
        let state = setup();
        let start = Instant::now();
        for p in 0..n {
            touch(&state, usize::try_from(p).expect("small"));
        }
        total += start.elapsed();
        drop(state);
        left -= n;
    }
    total
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("fault");
    g.sample_size(20).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));

    // The baseline is one anonymous 4 KiB fault: transparent huge pages are off for its mapping.
    // With them (a kernel whose THP policy is `always`, as Debian's is; the soft-RoCE guest's)
    // one fault zeroes 2 MiB and the next 511 touches take none: `anon_first_touch_thp`, that
    // cost per 4 KiB, is kept beside it for reference (the first kmod figures were against it).
    for (id, huge) in [("anon_first_touch", false), ("anon_first_touch_thp", true)] {
        g.bench_function(id, |b| b.iter_custom(|iters| faults(iters, || anon_chunk(huge), touch_mapped)));
    }
    if !rdma_only() {
        tcp(&mut g);
    }
    let mut kmod_memnode = None;
    if let Some((server, rdma)) = rdma_memnode(4 << 30) {
        let region = rdma.alloc(CHUNK as u64).expect("alloc");
        rdma.write_pages(region, &[0], &[7u8; 4096]).expect("write");
        let mut page = vec![0u8; 4096];
        g.bench_function("rdma_rtt_4k", |b| b.iter(|| rdma.read_pages(region, &[0], &mut page).expect("read")));
        for (path, name) in PATHS {
            let p0 = pager(path, 0, &rdma);
            // The user-space rdma path's historical id is the handler-thread one.
            let id = if path == FaultPath::Uffd { "remote_rdma_4k".to_string() } else { format!("remote_rdma_4k_{name}") };
            g.bench_function(id, |b| {
                b.iter_custom(|iters| faults(iters, || offloaded(&p0), |m, p| {
                    m.touch(p);
                }))
            });
        }
        kmod_memnode = Some(server);
    }
    kmod(&mut g);
    if let Some(server) = &kmod_memnode {
        kmod_rdma(&mut g, server.as_ref());
    }
    g.finish();
}

/// The module's fault paths, where it is loaded: `kmod_dram_4k` (the page is in the module's
/// store: one in-kernel copy) and `kmod_zero_4k` (never stored: a zeroed page), read-around off.
fn kmod(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    if !Device::available() {
        eprintln!("fault/kmod_dram_4k, fault/kmod_zero_4k: skipped (no /dev/ebb: load kmod/ebb.ko)");
        return;
    }
    let pattern = vec![5u8; CHUNK];
    for (id, stored) in [("kmod_dram_4k", true), ("kmod_zero_4k", false)] {
        g.bench_function(id, |b| {
            b.iter_custom(|iters| faults(iters, || kmod_region(stored.then_some(&pattern[..]), None), |(_, m), p| touch_mapped(m, p)))
        });
    }
    // Copy-on-write images on kmod: a based region whose base (an image region, made once) holds
    // every page. A read maps the image's page itself; a write fault copies it; a write after a
    // read takes a second fault (->page_mkwrite), which copies it then.
    let image = Device::open().expect("open /dev/ebb");
    image.create_kind((CHUNK / 4096) as u64, Backend::Dram, 0, Kind::Image).expect("create an image");
    image.store_write(0, &pattern).expect("store write");
    let based = || kmod_region(None, Some(&image));
    g.bench_function("kmod_based_read_4k", |b| b.iter_custom(|iters| faults(iters, based, |(_, m), p| read_mapped(m, p))));
    g.bench_function("kmod_based_write_4k", |b| b.iter_custom(|iters| faults(iters, based, |(_, m), p| touch_mapped(m, p))));
    g.bench_function("kmod_based_read_write_4k", |b| {
        b.iter_custom(|iters| {
            faults(iters, based, |(_, m), p| {
                read_mapped(m, p);
                touch_mapped(m, p);
            })
        })
    });
}

fn read_mapped(m: &memmap2::MmapMut, p: usize) {
    // SAFETY: in bounds of the mapping, which lives for the loop.
    std::hint::black_box(unsafe { m.as_ptr().add(p * 4096).read_volatile() });
}

/// `kmod_rdma_4k`: a fault the module fills by one RDMA READ of its own (read-around off), from
/// the same memnode as `remote_rdma_4k`. One region and queue pair; every page is evicted (not
/// timed) before each chunk of faults.
fn kmod_rdma(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, server: Option<&ebb_memnode::server::ServerHandle>) {
    if !Device::available() {
        eprintln!("fault/kmod_rdma_4k: skipped (no /dev/ebb: load kmod/ebb.ko)");
        return;
    }
    let device = std::env::var("EBB_RDMA_DEVICE").ok().or_else(|| ebb_memnode::rdma::device_names().into_iter().next()).expect("an RDMA device");
    let addr = match (server, std::env::var("EBB_BENCH_RDMA_MEMNODE")) {
        (Some(s), _) => s.local_addr().to_string(),
        (None, Ok(remote)) => remote,
        (None, Err(_)) => unreachable!("rdma_memnode returned a remote memnode"),
    };
    let config = ebb_memnode::TcpConfig { rdma_device: Some(device.clone()), ..Default::default() };
    let timeout = config.timeout;
    let t = RdmaTransport::connect(&addr, config).expect("rdma connect");
    let region = t.alloc(CHUNK as u64).expect("alloc");
    let pages: Vec<u64> = (0..(CHUNK / 4096) as u64).collect();
    t.write_pages(region, &pages, &vec![5u8; CHUNK]).expect("write the region");
    let d = Device::open().expect("open /dev/ebb");
    d.create(pages.len() as u64, Backend::Rdma, 0).expect("create a region");
    let qp = t.connect_remote_qp(&d.rdma_qp(&device, 1).expect("the module's queue pair")).expect("the memnode's queue pair");
    d.rdma_connect(&qp.info, timeout).expect("connect the module's queue pair");
    d.rdma_remote(&t.region_key(region).expect("region key"), true).expect("remote");
    let m = d.map(0, pages.len()).expect("map the region");
    g.bench_function("kmod_rdma_4k", |b| {
        b.iter_custom(|iters| {
            faults(
                iters,
                || {
                    d.evict(0, pages.len() as u64, false).expect("evict");
                    &m
                },
                |m, p| touch_mapped(m, p),
            )
        })
    });
    assert_eq!(d.counters().expect("counters").backend_errors, 0, "a transfer failed during the bench");
}

/// A fresh anonymous mapping of `CHUNK` bytes; without `huge`, its faults are 4 KiB ones.
fn anon_chunk(huge: bool) -> memmap2::MmapMut {
    let m = memmap2::MmapMut::map_anon(CHUNK).expect("mmap");
    if !huge {
        m.advise(memmap2::Advice::NoHugePage).expect("madvise(MADV_NOHUGEPAGE)");
    }
    m
}

/// A fresh DRAM region of `CHUNK` bytes, mapped, its store holding `stored` if given; with
/// `base` (an image region), a based region that reads it.
fn kmod_region(stored: Option<&[u8]>, base: Option<&Device>) -> (Device, memmap2::MmapMut) {
    let d = Device::open().expect("open /dev/ebb");
    let kind = if base.is_some() { Kind::Based } else { Kind::Plain };
    d.create_kind((CHUNK / 4096) as u64, Backend::Dram, 0, kind).expect("create a region");
    if let Some(bytes) = stored {
        d.store_write(0, bytes).expect("store write");
    }
    if base.is_some() {
        d.set_base(base, false).expect("set the base");
    }
    let m = d.map(0, CHUNK / 4096).expect("map the region");
    (d, m)
}

/// Filled, then offloaded: every page faults back.
fn offloaded(p: &Arc<Pager>) -> PagedBuffer {
    let m = PagedBuffer::new(p, CHUNK);
    m.fill_pages(3);
    m.handle.offload().expect("offload");
    m
}

fn touch_mapped(m: &memmap2::MmapMut, p: usize) {
    // SAFETY: in bounds of the mapping, which lives for the loop.
    unsafe { m.as_ptr().cast_mut().add(p * 4096).write_volatile(1) }
}

fn tcp(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let (_server, transport) = loopback_memnode(4 << 30);
    let region = transport.alloc(CHUNK as u64).expect("alloc");
    transport.write_pages(region, &[0], &[7u8; 4096]).expect("write");
    let mut page = vec![0u8; 4096];
    g.bench_function("tcp_rtt_4k", |b| b.iter(|| transport.read_pages(region, &[0], &mut page).expect("read")));

    for (path, name) in PATHS {
        let thread_name = if path == FaultPath::Uffd { "thread" } else { name };
        let p0 = pager(path, 0, &transport);
        g.bench_function(format!("uffd_{thread_name}_zero"), |b| {
            b.iter_custom(|iters| faults(iters, || PagedBuffer::new(&p0, CHUNK), |m, p| {
                m.touch(p);
            }))
        });
        g.bench_function(format!("remote_tcp_4k_{name}"), |b| {
            b.iter_custom(|iters| faults(iters, || offloaded(&p0), |m, p| {
                m.touch(p);
            }))
        });
        let p15 = pager(path, 15, &transport);
        g.bench_function(format!("remote_tcp_readaround_{name}"), |b| {
            b.iter_custom(|iters| faults(iters, || offloaded(&p15), |m, p| {
                m.touch(p);
            }))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
