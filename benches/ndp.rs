//! Near-data offloading across hosts (network namespaces, as `tests/ndp_hosts.rs`): wordcount and
//! grep over 64 MiB and 256 MiB objects, offloaded to the storage host against run on the compute
//! host (`forbid_ndp`), on unshaped links and on compute↔storage links shaped to 1 Gbit/s by `tc`,
//! in one run. Before the timings it prints, per case, the bytes that crossed the compute↔storage
//! links for one call. Needs root and the release binaries:
//!
//! cargo build --release --workspace && cargo bench --bench ndp

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ebb::hosts::{ALICE, NdpHosts};
use ebb::http::send;

fn call(url: &str, function: &str, input: &str, forbid: bool) -> String {
    let message = serde_json::json!({"user": "alice", "function": function, "input_data": input, "forbid_ndp": forbid});
    let r = send("POST", &format!("{url}/f/"), Some(ALICE), message.to_string().as_bytes());
    assert_eq!(r.status, 200, "{function} {input}: {}", r.body);
    r.body
}

/// `mib` MiB of words, with "needle" in one line of 10 007.
fn corpus(mib: usize) -> String {
    let words = ["memory", "page", "fault", "node", "remote", "warm", "cold", "call", "near", "data", "storage", "compute"];
    let mut s = String::with_capacity((mib << 20) + 64);
    let (mut i, mut line) = (0usize, 0usize);
    while s.len() < mib << 20 {
        s.push_str(words[(i * 7 + i / 13) % words.len()]);
        i += 1;
        if i.is_multiple_of(11) {
            if line.is_multiple_of(10_007) {
                s.push_str(" needle");
            }
            line += 1;
            s.push('\n');
        } else {
            s.push(' ');
        }
    }
    s
}

fn grep_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("needle")).collect();
    format!("{}\n{}\n", lines.len(), lines.join("\n"))
}

fn bench(c: &mut Criterion) {
    if let Some(why) = ebb::hosts::unavailable() {
        eprintln!("ndp bench SKIPPED: {why}");
        return;
    }
    let h = NdpHosts::start("bench-ndp", &["--ndp-max-cpu", "1", "--ndp-max-memory", "1"], &["--call-timeout-s", "600"]).expect("hosts");
    let url = h.compute.clone();
    // This thread speaks from the compute host from now on.
    h.hosts.enter("compute");
    {
        for f in ["wordcount", "grep"] {
            let wasm = std::fs::read(ebb::function_wasm("ndp", f)).expect("function built");
            assert_eq!(ebb::http::upload_wasm(&url, "alice", f, &wasm, Some(ALICE)).status, 200);
        }
        let mut g = c.benchmark_group("ndp");
        g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(5));
        for mib in [64, 256] {
            let text = corpus(mib);
            let key = format!("corpus-{mib}m");
            assert_eq!(send("PUT", &format!("{url}/o/alice/{key}"), Some(ALICE), text.as_bytes()).status, 200);
            let want = [("wordcount", ebb::wordcount_of(&text), key.clone()), ("grep", grep_of(&text), format!("{key} needle"))];
            drop(text);
            for shape in [None, Some("1gbit")] {
                h.shape_storage_links(shape);
                let tag = shape.map_or("unshaped".to_string(), |r| format!("shaped_{r}"));
                for (f, out, input) in &want {
                    for (mode, forbid) in [("offloaded", false), ("local", true)] {
                        // One checked call (which also sends the function on its first offload),
                        // then the bytes one more call moves across the compute↔storage links.
                        assert_eq!(&call(&url, f, input, forbid), out, "{f} {mib} MiB {mode}");
                        let before = h.storage_link_bytes();
                        call(&url, f, input, forbid);
                        let moved = h.storage_link_bytes() - before;
                        #[expect(clippy::cast_precision_loss, reason = "a percentage for display")]
                        let share = moved as f64 * 100.0 / (mib << 20) as f64;
                        eprintln!("ndp {f}_{mib}m_{tag}_{mode}: {moved} bytes on the compute-storage links ({share:.4} % of the object)");
                        g.bench_function(format!("{f}_{mib}m_{tag}_{mode}"), |b| b.iter(|| call(&url, f, input, forbid)));
                    }
                }
            }
            h.shape_storage_links(None);
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
