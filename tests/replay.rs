//! `runtime replay` of a short trace against four real servers (one per policy) paging to a real
//! memnode process; asserts on the counts it reports, not on timings.

use std::process::Command;

use ebb::{TempDir, binary, function_wasm};

/// 12 calls of 3 functions over 3 seconds of trace (Azure 2021 format), with a gap long enough
/// for the short semi-warm threshold below.
const TRACE: &str = "app,func,end_timestamp,duration
a,hot,0.10,0.05
a,hot,0.30,0.05
b,rare,0.40,0.10
a,hot,0.60,0.05
c,other,0.70,0.10
a,hot,0.90,0.05
a,hot,1.20,0.05
a,hot,2.60,0.05
b,rare,2.70,0.10
c,other,2.80,0.10
a,hot,2.90,0.05
b,rare,3.00,0.10
";

fn column(header: &str, row: &str, name: &str) -> f64 {
    let i = header.split(',').position(|c| c == name).unwrap_or_else(|| panic!("no column {name}"));
    row.split(',').nth(i).unwrap().parse().unwrap()
}

#[test]
fn short_trace_under_four_policies() {
    let dir = TempDir::new("replay");
    let trace = dir.0.join("trace.csv");
    std::fs::write(&trace, TRACE).unwrap();
    let functions = function_wasm("workloads", "matmul").parent().unwrap().to_path_buf();
    let out = dir.0.join("out");
    let run = Command::new(binary("runtime"))
        .arg("replay")
        .arg(&trace)
        .arg("--functions")
        .arg(&functions)
        .args(["--workloads", "matmul:48,json:2000,linpack:60", "--quiet", "--sample-ms", "50"])
        .args(["--server-arg=--semi-warm-min=700ms", "--server-arg=--drain-rate=1G", "--server-arg=--policy-tick-ms=20"])
        // Copied initial states, so that a reset instance's pages are its own: with copy-on-write
        // images they are the function's image's, and whether FaaSMem's drain then finds pages to
        // write back depended on whether the policy dropped the function's image before that
        // drain (the same tick decides both): 1 page in one run, 3608 in the next, 0 once in a
        // full test run.
        .arg("--server-arg=--copy-images")
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "replay failed:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    for policy in ["keep-alive", "faasmem", "ebb", "cold"] {
        assert!(stdout.lines().any(|l| l.starts_with(policy)), "no table row for {policy}:\n{stdout}");
    }

    let summary = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let mut lines = summary.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 4, "{summary}");
    let row = |p: &str| *rows.iter().find(|r| r.starts_with(&format!("{p},"))).unwrap();
    for p in ["keep-alive", "faasmem", "ebb", "cold"] {
        assert_eq!(column(header, row(p), "calls"), 12.0, "{p}");
        assert_eq!(column(header, row(p), "errors"), 0.0, "{p}");
    }
    let get = |p: &str, c: &str| column(header, row(p), c);
    // Cold: a new instance for every call; the others reuse the warmed-up ones.
    assert_eq!(get("cold", "cold_starts"), 12.0);
    assert_eq!(get("keep-alive", "cold_starts"), 0.0);
    // Keep-alive never moves a page; ebb drops clean pages and never writes back; faasmem
    // writes back and never prefetches.
    assert_eq!(get("keep-alive", "pages_written_back") + get("keep-alive", "pages_dropped_clean"), 0.0);
    assert_eq!(get("ebb", "pages_written_back"), 0.0);
    assert!(get("ebb", "pages_dropped_clean") > 0.0);
    assert!(get("faasmem", "pages_written_back") > 0.0);
    assert_eq!(get("faasmem", "prefetch_pages"), 0.0);
    // The 1.4 s gap makes instances semi-warm under the offloading policies only.
    assert!(get("ebb", "semi_warm_starts") > 0.0 && get("faasmem", "semi_warm_starts") > 0.0);
    assert_eq!(get("keep-alive", "semi_warm_starts"), 0.0);

    let calls = std::fs::read_to_string(out.join("calls.csv")).unwrap();
    assert_eq!(calls.lines().count(), 1 + 4 * 12);
    let memory = std::fs::read_to_string(out.join("memory.csv")).unwrap();
    for p in ["keep-alive", "faasmem", "ebb", "cold"] {
        assert!(memory.lines().filter(|l| l.split(',').nth(1) == Some(p)).count() >= 2, "samples of {p}");
    }
    for svg in ["memory.svg", "latency.svg"] {
        let text = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(text.contains("<svg") && text.contains("polyline"), "{svg} has no lines");
    }
}
