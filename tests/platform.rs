//! The function platform through its HTTP API: a real `runtime serve` process (and a real
//! `memnode` for the remote cases), the C/C++ demo functions built with the repository's script.

use std::time::{Duration, Instant};

use ebb::http::{invoke, metric, send, upload};
use ebb::{Memnode, Runtime, TempDir, wait_until};

#[test]
fn demo_functions_over_http() {
    let data = TempDir::new("demo");
    let rt = Runtime::start(&data.0, &[]).unwrap();
    assert_eq!(upload(&rt, "demo", "chain", None).status, 200);
    // A chain to a function that is not uploaded fails the await with a clear error.
    let r = invoke(&rt, "demo", "chain", "");
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("FAILED: Function demo/echo is not uploaded"), "{}", r.body);
    for f in ["hello", "echo", "chain", "state", "bigtable", "reverse"] {
        let r = upload(&rt, "demo", f, None);
        assert_eq!(r.status, 200, "upload {f}: {}", r.body);
    }
    let ok = |f: &str, input: &str, want: &str| {
        let r = invoke(&rt, "demo", f, input);
        assert_eq!((r.status, r.body.as_str()), (200, want), "demo/{f}");
    };
    ok("hello", "", "Hello from Ebb!");
    ok("echo", "some input", "some input");
    ok("chain", "", "chain: shout(a) + b");
    ok("state", "", "counter=1");
    ok("state", "", "counter=2");
    ok("reverse", "abc", "cba");
    // Raw-body invoke and state over HTTP.
    let r = send("POST", &format!("{}/f/demo/echo", rt.url), None, b"raw body");
    assert_eq!((r.status, r.body.as_str()), (200, "raw body"));
    let r = send("GET", &format!("{}/s/demo/counter", rt.url), None, b"");
    assert_eq!(r.body.as_bytes(), 2u32.to_le_bytes(), "the counter in state");
    send("PUT", &format!("{}/s/demo/greeting", rt.url), None, b"hi");
    assert_eq!(send("GET", &format!("{}/s/demo/greeting", rt.url), None, b"").body, "hi");

    // bigtable: same checksum warm, after a call that scribbles, and after an offload.
    let first = invoke(&rt, "demo", "bigtable", "");
    assert_eq!(first.status, 200);
    assert!(first.body.starts_with("checksum="), "{}", first.body);
    assert_eq!(invoke(&rt, "demo", "bigtable", "scribble").body, first.body);
    assert_eq!(invoke(&rt, "demo", "bigtable", "").body, first.body, "call isolation");
    let moved = send("POST", &format!("{}/f/demo/bigtable/offload", rt.url), None, b"");
    assert_eq!(moved.status, 200);
    let moved: u64 = moved.body.trim().parse().unwrap();
    assert!(moved >= 64 << 20, "offload moved {moved} bytes");
    assert!(metric(&rt, "ebb_pager_pages_dropped_clean_total") >= 16384.0);
    let fetched_before = metric(&rt, "ebb_pages_fetched_total");
    assert_eq!(invoke(&rt, "demo", "bigtable", "").body, first.body, "after offload");
    let fetched = metric(&rt, "ebb_pages_fetched_total") - fetched_before;
    if ebb_runtime::pager::FaultPath::from_env() == ebb_runtime::pager::FaultPath::Kmod {
        // The DRAM backend: the module's store kept the initial state; faults came from there.
        assert_eq!(fetched, 0.0, "nothing fetched from the memnode on the kmod path");
    } else {
        assert!(fetched >= 16384.0, "the table came back from the memnode: {fetched} pages");
    }
    assert_eq!(invoke(&rt, "demo", "bigtable", "scribble").body, first.body);
    assert_eq!(invoke(&rt, "demo", "bigtable", "").body, first.body);
    // The call after the first offload recorded its working set: after a second offload it is
    // prefetched in bulk, and the call takes (almost) no remote fault.
    send("POST", &format!("{}/f/demo/bigtable/offload", rt.url), None, b"");
    let remote_faults = || metric(&rt, "ebb_faults_total{kind=\"remote\"}");
    let (prefetched, faults) = (metric(&rt, "ebb_pages_prefetched_total"), remote_faults());
    assert_eq!(invoke(&rt, "demo", "bigtable", "").body, first.body, "after a prefetched restore");
    // The prefetch runs beside the call: the guest may fault on the first pages before it starts.
    let prefetched = metric(&rt, "ebb_pages_prefetched_total") - prefetched;
    let faults = remote_faults() - faults;
    eprintln!("prefetched {prefetched} pages, {faults} remote faults");
    assert!(prefetched >= 8192.0, "the table was prefetched: {prefetched} pages");
    assert!(faults < 512.0, "{faults} remote faults despite the prefetch (lazily: ~1024)");
    assert_eq!(send("GET", &format!("{}/ping", rt.url), None, b"").body, "PONG");
}

#[test]
fn bad_input_gets_clear_errors() {
    let data = TempDir::new("bad");
    let rt = Runtime::start(&data.0, &["--max-input", "1K", "--call-timeout-s", "1"]).unwrap();
    let r = send("PUT", &format!("{}/f/demo/broken", rt.url), None, b"\0asm\x01\0\0\0garbage");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("does not compile"), "{}", r.body);
    let r = invoke(&rt, "demo", "nope", "");
    assert_eq!(r.status, 404);
    assert!(r.body.contains("demo/nope is not uploaded") && r.body.contains("PUT /f/demo/nope"), "{}", r.body);
    let r = send("POST", &format!("{}/f/", rt.url), None, br#"{"function": "hello"}"#);
    assert_eq!(r.status, 400, "missing user");
    let r = send("POST", &format!("{}/f/", rt.url), None, b"not json");
    assert_eq!(r.status, 400);
    upload(&rt, "demo", "echo", None);
    let r = invoke(&rt, "demo", "echo", &"x".repeat(2000));
    assert_eq!(r.status, 413, "{}", r.body);
    // A trap: 500 with wasmtime's message.
    let trap = r#"(module (memory (export "memory") 1) (func (export "_start") unreachable))"#;
    assert_eq!(send("PUT", &format!("{}/f/demo/trap", rt.url), None, trap.as_bytes()).status, 200);
    let r = invoke(&rt, "demo", "trap", "");
    assert_eq!(r.status, 500);
    assert!(r.body.contains("unreachable"), "{}", r.body);
    // An endless loop is interrupted at the limit; the server keeps serving.
    let spin = r#"(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))"#;
    assert_eq!(send("PUT", &format!("{}/f/demo/spin", rt.url), None, spin.as_bytes()).status, 200);
    let start = Instant::now();
    let r = invoke(&rt, "demo", "spin", "");
    assert_eq!(r.status, 504, "a call timeout is told apart: {}", r.body);
    assert!(r.body.contains("limit and was interrupted"), "{}", r.body);
    assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
    assert_eq!(invoke(&rt, "demo", "echo", "still here").body, "still here");
}

#[test]
fn tokens_reach_only_their_own_user() {
    let data = TempDir::new("tokens");
    let tokens = data.0.join("tokens.txt");
    std::fs::write(&tokens, "alice alice-token\nbob bob-token\n").unwrap();
    let rt = Runtime::start(&data.0, &["--tokens", tokens.to_str().unwrap()]).unwrap();
    assert_eq!(upload(&rt, "alice", "echo", None).status, 401, "no token");
    assert_eq!(upload(&rt, "alice", "echo", Some("wrong")).status, 401, "wrong token");
    assert_eq!(upload(&rt, "alice", "echo", Some("bob-token")).status, 403, "another user's function");
    assert_eq!(upload(&rt, "alice", "echo", Some("alice-token")).status, 200);
    let call = |token| send("POST", &format!("{}/f/alice/echo", rt.url), token, b"x");
    assert_eq!(call(Some("bob-token")).status, 403);
    assert_eq!(call(Some("alice-token")).body, "x");
    let state = |m, token| send(m, &format!("{}/s/alice/k", rt.url), token, b"v").status;
    assert_eq!(state("PUT", Some("bob-token")), 403);
    assert_eq!(state("PUT", Some("alice-token")), 200);
    assert_eq!(state("GET", Some("bob-token")), 403);
    // Async call ids are private to their user.
    let msg = serde_json::json!({"user": "alice", "function": "echo", "input_data": "y", "async": true});
    let id = send("POST", &format!("{}/f/", rt.url), Some("alice-token"), msg.to_string().as_bytes()).body;
    let poll = |token| {
        let msg = format!(r#"{{"status": true, "id": {id}}}"#);
        send("POST", &format!("{}/f/", rt.url), token, msg.as_bytes())
    };
    assert!(wait_until(Duration::from_secs(10), || poll(Some("alice-token")).body != "RUNNING"));
    assert_eq!(poll(Some("bob-token")).status, 404);
    assert!(poll(Some("alice-token")).body.contains(r#""output_data":"y""#));
}

#[test]
fn non_loopback_without_tokens_is_refused() {
    let data = TempDir::new("insecure");
    let out = std::process::Command::new(ebb::binary("runtime"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&data.0)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tokens"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_thousand_concurrent_async_calls() {
    let data = TempDir::new("async");
    let rt = Runtime::start(&data.0, &[]).unwrap();
    upload(&rt, "demo", "echo", None);
    let ids: Vec<(u32, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let rt = &rt;
                s.spawn(move || {
                    (0..125)
                        .map(|i| {
                            let input = format!("call-{t}-{i}");
                            let msg = serde_json::json!({"user": "demo", "function": "echo", "input_data": input, "async": true});
                            let r = send("POST", &format!("{}/f/", rt.url), None, msg.to_string().as_bytes());
                            assert_eq!(r.status, 200);
                            (r.body.trim().parse::<u32>().expect("call id"), input)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(ids.len(), 1000);
    let mut distinct: Vec<u32> = ids.iter().map(|(id, _)| *id).collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 1000, "call ids are unique");
    for (id, input) in &ids {
        let msg = format!(r#"{{"status": true, "id": {id}}}"#);
        let mut last = String::new();
        let done = wait_until(Duration::from_secs(60), || {
            last = send("POST", &format!("{}/f/", rt.url), None, msg.as_bytes()).body;
            last != "RUNNING"
        });
        assert!(done, "call {id} never finished");
        let v: serde_json::Value = serde_json::from_str(&last).unwrap_or_else(|e| panic!("call {id}: {last}: {e}"));
        assert_eq!(v["output_data"], input.as_str(), "call {id}");
        assert_eq!(v["returnValue"], 0);
    }
}

#[test]
fn a_restarted_runtime_keeps_its_functions() {
    let data = TempDir::new("restart");
    let mut rt = Runtime::start(&data.0, &[]).unwrap();
    assert_eq!(upload(&rt, "demo", "hello", None).status, 200);
    rt.kill();
    let rt = Runtime::start(&data.0, &[]).unwrap();
    assert_eq!(invoke(&rt, "demo", "hello", "").body, "Hello from Ebb!");
}

#[test]
fn a_dead_memnode_fails_calls_and_shows_in_metrics() {
    let data = TempDir::new("deadmem");
    let mut memnode = Memnode::start(&["--capacity", "1G"]).unwrap();
    // The default bound, whatever the run sets for the other tests: it is what this one checks.
    let rt = Runtime::start(&data.0, &["--memnode", &memnode.url, "--memnode-timeout-ms", "1000"]).unwrap();
    upload(&rt, "demo", "bigtable", None);
    let first = invoke(&rt, "demo", "bigtable", "");
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(metric(&rt, "ebb_memnode_up"), 1.0);
    send("POST", &format!("{}/f/demo/bigtable/offload", rt.url), None, b"");
    memnode.kill();
    let start = Instant::now();
    let r = invoke(&rt, "demo", "bigtable", "");
    assert_eq!(r.status, 503, "an unavailable memnode is told apart: {}", r.body);
    assert!(r.body.contains("memnode"), "unclear error: {}", r.body);
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    assert_eq!(send("GET", &format!("{}/ping", rt.url), None, b"").body, "PONG");
    assert_eq!(metric(&rt, "ebb_memnode_up"), 0.0);
}

#[test]
fn idle_instances_are_freed_after_the_idle_timeout() {
    let data = TempDir::new("idle");
    let rt = Runtime::start(&data.0, &["--keep-alive", "1s"]).unwrap();
    upload(&rt, "demo", "hello", None);
    assert_eq!(invoke(&rt, "demo", "hello", "").body, "Hello from Ebb!");
    let idle = || metric(&rt, "ebb_instances{function=\"demo/hello\",state=\"warm\"}");
    assert_eq!(idle(), 1.0, "the instance stays warm after its call");
    assert!(wait_until(Duration::from_secs(10), || idle() == 0.0), "the idle instance was never freed");
    assert_eq!(invoke(&rt, "demo", "hello", "").body, "Hello from Ebb!", "a new instance serves the next call");
}
