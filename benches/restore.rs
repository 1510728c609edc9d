//! Bulk movement of a 64 MiB memory over the tcp transport, in one run: the transport's own
//! stream (a batched read of every page, no faults), an offload, and the fault-back of a fully
//! offloaded memory touched page by page, without and with read-around. Needs root.
//!
//! cargo bench --bench restore

use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ebb::{PagedBuffer, loopback_memnode};
use ebb_runtime::pager::{Pager, PagerConfig};

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

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("restore");
    g.sample_size(10).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes(SIZE as u64));

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
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
