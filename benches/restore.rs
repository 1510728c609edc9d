//! Bulk movement of a 64 MiB memory over the tcp transport, in one run: the transport's own
//! stream (a batched read of every page, no faults), an offload, and the fault-back of a fully
//! offloaded memory touched page by page, without and with read-around. Then the first call of
//! a fully offloaded 64 MiB function instance (demo/bigtable, which reads its whole table),
//! restored lazily by faults (faasmem policy) or with the recorded working set prefetched (ebb
//! policy), beside a warm call of the same function. Last, the reset of a warm instance whose
//! 64 MiB table was overwritten, with copy-on-write images and with images copied page by page:
//! the reset and the first read of every page after it (what the next call pays), and a whole
//! warm call that overwrites the table. Needs root.
//!
//! cargo bench --bench restore

use std::time::{Duration, Instant};

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ebb::{PagedBuffer, TempDir, function_wasm, loopback_memnode, rdma_memnode, rdma_only};
use ebb_memnode::Transport;
use ebb_runtime::exec::{Entry, Executor, Function, Instance, Stdout};
use ebb_runtime::pager::{Pager, PagerConfig};
use ebb_runtime::platform::{Platform, PlatformConfig};
use ebb_runtime::policy::{PolicyFile, PolicyKind};

const SIZE: usize = 64 << 20;
const PAGES: usize = SIZE / 4096;

/// Offloads a filled 64 MiB memory, then times touching every page (each fault fetches).
fn fault_back(pager: &std::sync::Arc<Pager>, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let m = PagedBuffer::new(pager, SIZE);
        m.fill_pages(2);
        m.handle.offload().expect("offload");
        let start = Instant::now();
        for page in 0..PAGES {
            m.touch(page);
        }
        total += start.elapsed();
    }
    total
}

/// The table module: `_faasm_zygote` fills a 64 MiB table (page 16 on); "scribble" overwrites it.
const TABLE_WAT: &str = include_str!("../tests/modules/table.wat");
const TABLE: std::ops::Range<usize> = 65536..65536 + SIZE;

/// A warm instance of the table module whose initial state was captured, on copy-on-write or
/// copied images. The second instance is measured (it adopted the state, as instances do).
fn table_instance(transport: Arc<dyn Transport>, cow: bool) -> Instance {
    let pager = Pager::new(PagerConfig { cow_images: cow, ..Default::default() }, transport).expect("pager (run as root)");
    let exec = Executor::new(pager).expect("executor");
    let f = Arc::new(Function::new("bench/table", exec.compile(TABLE_WAT.as_bytes()).expect("table.wat")));
    let _first = exec.function_instance(&f, Stdout::Inherit, None, None).expect("instance").0;
    let mut i = exec.function_instance(&f, Stdout::Inherit, None, None).expect("instance").0;
    for _ in 0..2 {
        i.call(b"", Entry::Start, None).expect("call");
    }
    i
}

/// Overwrites the table from the host, then times the reset and a read of every table page.
fn reset_overwritten(i: &mut Instance, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for n in 0..iters {
        i.memory_bytes_mut().expect("memory")[TABLE].fill(n.to_le_bytes()[0] | 1);
        let m = i.memory().expect("paged").clone();
        let start = Instant::now();
        m.reset().expect("reset");
        let bytes = i.memory_bytes().expect("memory");
        let mut sum = 0u8;
        for p in (TABLE.start..TABLE.end).step_by(4096) {
            // SAFETY: `p` is inside the memory's bytes; a volatile read makes the access happen.
            sum ^= unsafe { std::ptr::read_volatile(bytes.as_ptr().add(p)) };
        }
        std::hint::black_box(sum);
        total += start.elapsed();
    }
    total
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("restore");
    g.sample_size(10).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes(SIZE as u64));
    if let Some((_server, rdma)) = rdma_memnode(8 << 30) {
        // The rdma transport's own bulk read (the line-rate reference) and a fault-back over it.
        let region = rdma.alloc(SIZE as u64).expect("alloc");
        let pages: Vec<u64> = (0..PAGES as u64).collect();
        rdma.write_pages(region, &pages, &vec![5u8; SIZE]).expect("write");
        let mut out = vec![0u8; SIZE];
        g.bench_function("rdma_stream", |b| b.iter(|| rdma.read_pages(region, &pages, &mut out).expect("read")));
        let p = Pager::new(PagerConfig { fault_threads: 1, readaround: 255, ..Default::default() }, rdma.clone()).expect("pager (run as root)");
        g.bench_function("fault_back_64m_rdma", |b| b.iter_custom(|iters| fault_back(&p, iters)));
    }
    if rdma_only() {
        g.finish();
        return;
    }

    let (_server, transport) = loopback_memnode(8 << 30);
    let region = transport.alloc(SIZE as u64).expect("alloc");
    let pages: Vec<u64> = (0..PAGES as u64).collect();
    let data = vec![5u8; SIZE];
    transport.write_pages(region, &pages, &data).expect("write");
    let mut out = vec![0u8; SIZE];
    g.bench_function("tcp_stream", |b| b.iter(|| transport.read_pages(region, &pages, &mut out).expect("read")));

    let pager = |readaround| Pager::new(PagerConfig { fault_threads: 1, readaround, ..Default::default() }, transport.clone()).expect("pager (run as root)");
    let p0 = pager(0);
    g.bench_function("offload_64m", |b| {
        b.iter_batched(
            || {
                let m = PagedBuffer::new(&p0, SIZE);
                m.fill_pages(1);
                m
            },
            |m| {
                m.handle.offload().expect("offload");
                m
            },
            BatchSize::PerIteration,
        )
    });

    g.bench_function("fault_back_64m", |b| b.iter_custom(|iters| fault_back(&p0, iters)));
    let p_ra = pager(255);
    g.bench_function("fault_back_64m_readaround", |b| b.iter_custom(|iters| fault_back(&p_ra, iters)));

    // First call of a fully offloaded 64 MiB instance vs a warm call, over the same memnode.
    let bigtable = std::fs::read(function_wasm("demo", "bigtable")).expect("bigtable.wasm");
    let platform = |kind: PolicyKind, dir: &TempDir| {
        let mut policy = PolicyFile::default();
        policy.default.kind = kind;
        let config = PlatformConfig { data_dir: dir.0.clone(), policy, ..Default::default() };
        let p = Platform::start(config, pager(PagerConfig::default().readaround)).expect("platform");
        p.upload("bench", "bigtable", &bigtable).expect("upload");
        // The first call initialises; the first after an offload records the working set.
        p.invoke("bench", "bigtable", b"").expect("bigtable");
        p.offload("bench", "bigtable").expect("offload");
        p.invoke("bench", "bigtable", b"").expect("bigtable");
        p
    };
    let (d1, d2) = (TempDir::new("bench-restore-ebb"), TempDir::new("bench-restore-faasmem"));
    let (ebb, faasmem) = (platform(PolicyKind::Ebb, &d1), platform(PolicyKind::Faasmem, &d2));
    g.bench_function("warm_call_64m", |b| b.iter(|| ebb.invoke("bench", "bigtable", b"").expect("bigtable")));
    for (id, p) in [("first_call_offloaded_64m_prefetch", &ebb), ("first_call_offloaded_64m_lazy", &faasmem)] {
        g.bench_function(id, |b| {
            b.iter_batched(
                || p.offload("bench", "bigtable").expect("offload"),
                |_| p.invoke("bench", "bigtable", b"").expect("bigtable"),
                BatchSize::PerIteration,
            )
        });
    }

    // A warm instance's reset after its table was overwritten: copy-on-write images drop the
    // private pages (the next reads are page-cache hits); copied images drop them too (more
    // than RESTORE_IN_PLACE_MAX pages) and the next reads fault them back from the local image.
    for (name, cow) in [("cow", true), ("copy", false)] {
        let mut i = table_instance(transport.clone(), cow);
        g.bench_function(format!("reset_64m_overwritten_{name}"), |b| b.iter_custom(|iters| reset_overwritten(&mut i, iters)));
        g.bench_function(format!("warm_scribble_call_64m_{name}"), |b| b.iter(|| i.call(b"scribble", Entry::Start, None).expect("call")));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
