//! Calls through the platform, in one run: a no-op call in process and over HTTP loopback, the
//! 64 MiB demo/bigtable warm and right after an offload, a 64 MiB state value read through a
//! pointer (its pages mapped) against copied in, and instantiation on paged memory against
//! wasmtime's own allocator. Needs root (userfaultfd) and the demo functions' toolchain.
//!
//! cargo bench --bench invoke

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ebb::{TempDir, function_wasm};
use ebb_memnode::LocalTransport;
use ebb_runtime::exec::{Executor, Stdout};
use ebb_runtime::pager::{Pager, PagerConfig};
use ebb_runtime::platform::{Platform, PlatformConfig};
use ebb_runtime::policy::{PolicyFile, PolicyKind};

const NOOP: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

fn bench(c: &mut Criterion) {
    let data = TempDir::new("bench-invoke");
    let pager = Pager::new(PagerConfig::default(), Arc::new(LocalTransport::embedded(4 << 30))).expect("pager (run as root)");
    let config = PlatformConfig { data_dir: data.0.clone(), ..Default::default() };
    let platform = Platform::start(config, pager.clone()).expect("platform");
    platform.upload("bench", "noop", NOOP.as_bytes()).expect("upload noop");
    let bigtable = std::fs::read(function_wasm("demo", "bigtable")).expect("bigtable.wasm");
    platform.upload("bench", "bigtable", &bigtable).expect("upload bigtable");
    let lazy_data = TempDir::new("bench-invoke-lazy");
    // The faasmem policy restores without a working-set prefetch.
    let mut policy = PolicyFile::default();
    policy.default.kind = PolicyKind::Faasmem;
    let lazy_config = PlatformConfig { data_dir: lazy_data.0.clone(), policy, ..Default::default() };
    let lazy = Platform::start(lazy_config, pager.clone()).expect("platform");
    lazy.upload("bench", "bigtable", &bigtable).expect("upload bigtable");

    // The HTTP API on a loopback socket, served by its own tokio runtime.
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = ebb_runtime::api::router(ebb_runtime::api::ApiState::new(platform.clone(), None));
    rt.spawn(async move { axum::serve(listener, app).await });
    let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
    let url = format!("http://{addr}/f/bench/noop");

    let mut g = c.benchmark_group("invoke");
    g.sample_size(20).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    g.bench_function("noop_in_process", |b| b.iter(|| platform.invoke("bench", "noop", b"").expect("noop")));
    g.bench_function("noop_http", |b| {
        b.iter(|| {
            let mut r = agent.post(&url).send(&[] as &[u8]).expect("http noop");
            r.body_mut().read_to_vec().expect("body")
        })
    });
    platform.invoke("bench", "bigtable", b"").expect("bigtable init");
    g.bench_function("bigtable_warm", |b| b.iter(|| platform.invoke("bench", "bigtable", b"").expect("bigtable")));
    // After an offload the first call restores the table: with the recorded working set
    // prefetched in bulk (the default), and lazily by faults (prefetch off), in the same run.
    for (id, p) in [("bigtable_after_offload", &platform), ("bigtable_after_offload_lazy", &lazy)] {
        p.invoke("bench", "bigtable", b"").expect("bigtable init");
        g.bench_function(id, |b| {
            b.iter_batched(
                || p.offload("bench", "bigtable").expect("offload"),
                |_| p.invoke("bench", "bigtable", b"").expect("bigtable"),
                BatchSize::PerIteration,
            )
        });
    }

    // A 64 MiB state value, one byte per page read: mapped by pointer vs copied into the heap.
    let statescan = std::fs::read(function_wasm("demo", "statescan")).expect("statescan.wasm");
    platform.upload("bench", "statescan", &statescan).expect("upload statescan");
    let big: Vec<u8> = (0..64usize << 20).map(|i| (i / 4096).to_le_bytes()[0]).collect();
    let want = (0..(64usize << 20) / 4096).map(|p| p % 256).sum::<usize>().to_string();
    platform.state().set("bench", "big", &big).expect("state");
    for (id, input) in [("state_64m_pointer", "ptr"), ("state_64m_copy", "copy")] {
        let out = platform.invoke("bench", "statescan", input.as_bytes()).expect("statescan");
        assert_eq!(String::from_utf8_lossy(&out.output), want, "{id}");
        g.bench_function(id, |b| b.iter(|| platform.invoke("bench", "statescan", input.as_bytes()).expect("statescan")));
    }

    // Instantiation of the same small WASI module: paged memory vs wasmtime's default allocator.
    let exec = Executor::new(pager).expect("executor");
    let paged_module = exec.compile(NOOP.as_bytes()).expect("compile");
    g.bench_function("instantiate_paged", |b| {
        b.iter(|| exec.instantiate(&paged_module, &[], Stdout::Inherit).expect("instantiate"))
    });
    let engine = wasmtime::Engine::default();
    let mut linker: wasmtime::Linker<wasmtime_wasi::p1::WasiP1Ctx> = wasmtime::Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |c| c).expect("wasi");
    let module = wasmtime::Module::new(&engine, NOOP).expect("compile");
    g.bench_function("instantiate_default", |b| {
        b.iter(|| {
            let mut store = wasmtime::Store::new(&engine, wasmtime_wasi::WasiCtxBuilder::new().build_p1());
            let instance = linker.instantiate(&mut store, &module).expect("instantiate");
            (store, instance)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
