//! Workflow overheads on one host, in one run: the hop of a two-block workflow (from the producer's
//! end to the consumer's start, as the runtime's own per-block timings say) with a 1 KiB and a
//! 64 MiB payload; the whole hand-off of 64 MiB (the producer's post, the hop, the consumer's
//! fetch and a read of every page) by pages and copied, beside copying 64 MiB (the baseline a
//! page hand-off must beat by 10×); and the
//! scheduling-and-data overhead on `wordcount`'s critical path (end to end minus start + the
//! slowest count + merge); and wordcount's throughput, 8 calls at a time, as a workflow and as
//! the same work done with chained Faasm calls (`wordcount_chained`): time per call, so
//! calls/s = 1 / that. Needs root (userfaultfd) and the samples' toolchain.
//!
//! cargo bench --bench workflow

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ebb::{TempDir, function_wasm};
use ebb_memnode::LocalTransport;
use ebb_runtime::flow::{Outcome, Run, Workflow};
use ebb_runtime::pager::{Pager, PagerConfig};
use ebb_runtime::platform::{Platform, PlatformConfig};

/// Posts `out`: as many bytes as its input `n` says (a multiple of 4 KiB), written one byte per
/// page at 64 KiB — into an output buffer (`__ebb_flow_buffer`) when `pages`, so that the post
/// hands its pages over, else into ordinary memory, which the post copies. Both blocks' memories
/// are sized for 64 MiB from the start: a memory a call grows is not reused, so growing would make
/// every call's instance a new one and the hop an instance creation.
fn produce(pages: bool) -> String {
    let buffer = if pages { "(drop (call $buffer (i32.const 65536) (local.get $n)))" } else { "" };
    format!(
        r#"(module
  (import "env" "__ebb_flow_fetch" (func $fetch (param i32 i32 i32 i32) (result i32)))
  (import "env" "__ebb_flow_post" (func $post (param i32 i32 i32) (result i32)))
  (import "env" "__ebb_flow_buffer" (func $buffer (param i32 i32) (result i32)))
  (memory (export "memory") 1100)
  (data (i32.const 0) "n\00out\00")
  (func (export "_start") (local $n i32) (local $i i32)
    (drop (call $fetch (i32.const 0) (i32.const 0) (i32.const 64) (i32.const 16)))
    (local.set $n (i32.load (i32.const 64)))
    {buffer}
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $i) (local.get $n)))
      (i32.store8 (i32.add (i32.const 65536) (local.get $i)) (i32.const 1))
      (local.set $i (i32.add (local.get $i) (i32.const 4096)))
      (br $l)))
    (drop (call $post (i32.const 2) (i32.const 65536) (local.get $n)))))"#
    )
}

/// Fetches its input `out` — to page-aligned untouched memory when `pages` (so that the fetch
/// maps it), else 16 bytes off (so that it is copied) — reads one byte per page of it, and posts
/// their sum as `res`.
fn consume(pages: bool) -> String {
    let dst = if pages { 65536 } else { 65536 + 16 };
    format!(
        r#"(module
  (import "env" "__ebb_flow_fetch" (func $fetch (param i32 i32 i32 i32) (result i32)))
  (import "env" "__ebb_flow_post" (func $post (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1100)
  (data (i32.const 0) "out\00res\00")
  (func (export "_start") (local $n i32) (local $i i32) (local $s i32)
    (local.set $n (call $fetch (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
    (drop (call $fetch (i32.const 0) (i32.const 0) (i32.const {dst}) (local.get $n)))
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $s (i32.add (local.get $s) (i32.load8_u (i32.add (i32.const {dst}) (local.get $i)))))
      (local.set $i (i32.add (local.get $i) (i32.const 4096)))
      (br $l)))
    (i32.store (i32.const 64) (local.get $s))
    (drop (call $post (i32.const 4) (i32.const 64) (i32.const 4)))))"#
    )
}

/// The two-block workflow of `{p}__produce` and `{p}__consume`.
fn hop_workflow(p: &str) -> String {
    format!(
        r#"
workflow_name: {p}
global_inputs:
  $USER.n: {{ type: NORMAL, dest: {{ {p}__produce: {{ block_0: {{ n }} }} }} }}
templates:
  {p}__produce:
    blocks:
      block_0:
        type: NORMAL
        input_datas: {{ n: {{ type: NORMAL }} }}
        output_datas:
          out: {{ type: NORMAL, dest: {{ {p}__consume: {{ block_0: {{ out }} }} }} }}
  {p}__consume:
    blocks:
      block_0:
        type: NORMAL
        input_datas: {{ out: {{ type: NORMAL }} }}
        output_datas:
          res: {{ type: NORMAL, dest: {{ $USER }} }}
"#
    )
}

fn run(platform: &Arc<Platform>, w: &Arc<Workflow>, key: &str, value: Vec<u8>) -> Run2 {
    let inputs = BTreeMap::from([(key.to_string(), value)]);
    let begun = Instant::now();
    let r = Run::start(platform.clone(), w.clone(), "bench", &inputs, Duration::from_secs(120)).expect("start");
    let outcome = r.wait();
    assert!(matches!(outcome, Outcome::Done(_)), "{outcome:?}");
    Run2 { total: begun.elapsed(), timings: r.timings(), outcome }
}

struct Run2 {
    total: Duration,
    timings: Vec<ebb_runtime::flow::run::BlockTiming>,
    outcome: Outcome,
}

impl Run2 {
    /// From the end of the block named `from` to the start of `to`.
    fn hop(&self, from: &str, to: &str) -> Duration {
        let end = self.timings.iter().find(|t| t.block == from).expect("producer").end_us;
        let start = self.timings.iter().find(|t| t.block == to).expect("consumer").start_us;
        Duration::from_micros(start.saturating_sub(end))
    }

    /// The hand-off of `from`'s output to `to`: `from`'s time in its data calls (its post), the hop,
    /// and `to`'s whole call (its fetch and a read of every page of the value).
    fn handoff(&self, from: &str, to: &str) -> Duration {
        let producer = self.timings.iter().find(|t| t.block == from).expect("producer");
        let consumer = self.timings.iter().find(|t| t.block == to).expect("consumer");
        Duration::from_micros(producer.data_us + consumer.end_us.saturating_sub(producer.end_us))
    }

    /// End to end minus the blocks on wordcount's critical path.
    fn overhead(&self) -> Duration {
        let span = |name: &str| self.timings.iter().filter(|t| t.block == name).map(|t| t.end_us - t.start_us).max().unwrap_or(0);
        let path = span("wordcount__start.block_0") + span("wordcount__count.block_0") + span("wordcount__merge.block_0");
        self.total.saturating_sub(Duration::from_micros(path))
    }
}

/// Runs `call` `iters` times from 8 threads at once; the wall time.
fn concurrently(iters: u64, call: impl Fn() + Sync) -> Duration {
    let begun = Instant::now();
    std::thread::scope(|s| {
        for t in 0..8 {
            let call = &call;
            s.spawn(move || (0..iters).filter(|i| i % 8 == t).for_each(|_| call()));
        }
    });
    begun.elapsed()
}

fn bench(c: &mut Criterion) {
    let data = TempDir::new("bench-workflow");
    let pager = Pager::new(PagerConfig::default(), Arc::new(LocalTransport::embedded(4 << 30))).expect("pager (run as root)");
    let config = PlatformConfig { data_dir: data.0.clone(), max_input: 80 << 20, ..Default::default() };
    let platform = Platform::start(config, pager).expect("platform");
    for (p, pages) in [("hop", true), ("copy", false)] {
        platform.upload("bench", &format!("{p}__produce"), produce(pages).as_bytes()).expect("upload");
        platform.upload("bench", &format!("{p}__consume"), consume(pages).as_bytes()).expect("upload");
    }
    for f in ["wordcount__start", "wordcount__count", "wordcount__merge", "wordcount_chained"] {
        platform.upload("bench", f, &std::fs::read(function_wasm("wordcount", f)).expect("sample built")).expect("upload");
    }
    let hop = Arc::new(Workflow::parse(&hop_workflow("hop"), |_| true).expect("hop"));
    let copy = Arc::new(Workflow::parse(&hop_workflow("copy"), |_| true).expect("copy"));
    let wordcount = Arc::new(
        Workflow::parse(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/functions/workflows/wordcount/workflow_info.yaml")).expect("yaml"), |_| true)
            .expect("wordcount"),
    );
    let text: String = (0..8).map(|i| format!("line {i} of the text with some words and some more words\n")).collect();

    let mut g = c.benchmark_group("workflow");
    g.sample_size(20).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    for (id, n) in [("hop_1k", 1u32 << 10), ("hop_64m", 64 << 20)] {
        g.bench_function(id, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run(&platform, &hop, "n", n.to_le_bytes().to_vec()).hop("hop__produce.block_0", "hop__consume.block_0")).sum())
        });
    }
    // The whole hand-off of 64 MiB: by pages, and copied (posted from ordinary memory, fetched
    // to an unaligned address); each reads back one byte per page, 16 384 in all.
    let n: u32 = 64 << 20;
    for (id, w, p) in [("handoff_64m_pages", &hop, "hop"), ("handoff_64m_copy", &copy, "copy")] {
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let r = run(&platform, w, "n", n.to_le_bytes().to_vec());
                        let Outcome::Done(res) = &r.outcome else { unreachable!() };
                        assert_eq!(res["res"], (n / 4096).to_le_bytes(), "{id}: every page's byte read back");
                        r.handoff(&format!("{p}__produce.block_0"), &format!("{p}__consume.block_0"))
                    })
                    .sum()
            })
        });
    }
    let src = vec![7u8; 64 << 20];
    let mut dst = vec![0u8; 64 << 20];
    g.bench_function("copy_64m", |b| {
        b.iter(|| {
            dst.copy_from_slice(&src);
            std::hint::black_box(&dst);
        })
    });
    g.bench_function("wordcount_overhead", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| run(&platform, &wordcount, "start", text.clone().into_bytes()).overhead()).sum())
    });
    g.bench_function("wordcount_end_to_end", |b| b.iter_custom(|iters| (0..iters).map(|_| run(&platform, &wordcount, "start", text.clone().into_bytes()).total).sum()));
    let want = platform.invoke("bench", "wordcount_chained", text.as_bytes()).expect("chained wordcount").output;
    assert!(!want.is_empty());
    g.bench_function("wordcount_throughput_workflow", |b| {
        b.iter_custom(|iters| {
            concurrently(iters, || match run(&platform, &wordcount, "start", text.clone().into_bytes()).outcome {
                Outcome::Done(r) => assert_eq!(r["res"], want),
                other => panic!("{other:?}"),
            })
        })
    });
    g.bench_function("wordcount_throughput_chained", |b| {
        b.iter_custom(|iters| concurrently(iters, || assert_eq!(platform.invoke("bench", "wordcount_chained", text.as_bytes()).expect("call").output, want)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
