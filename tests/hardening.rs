//! What no hostile client, crashed process or misbehaving guest may do to the platform: real
//! `runtime serve` (and `memnode`) processes, guests written in WAT for the misbehaviour.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use ebb::http::{Resp, send, upload};
use ebb::{Memnode, Runtime, TempDir, binary, wait_until};

/// A guest that takes the write lock of state key `key`, then, by the first byte of its input:
/// `t` traps, `s` spins for ever, anything else returns 0.
const LOCKER: &str = r#"(module
  (import "env" "__faasm_lock_state_write" (func $lock (param i32)))
  (import "env" "__faasm_read_input" (func $input (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "key\00")
  (func (export "_start")
    (call $lock (i32.const 16))
    (drop (call $input (i32.const 64) (i32.const 1)))
    (if (i32.eq (i32.load8_u (i32.const 64)) (i32.const 116)) (then unreachable))
    (if (i32.eq (i32.load8_u (i32.const 64)) (i32.const 115)) (then (loop (br 0))))))"#;

/// A guest that awaits the call whose id is its 4-byte input and outputs what the await gave.
const AWAITER: &str = r#"(module
  (import "env" "__faasm_read_input" (func $input (param i32 i32) (result i32)))
  (import "env" "__faasm_await_call_output" (func $await (param i32 i32 i32) (result i32)))
  (import "env" "__faasm_write_output" (func $out (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $input (i32.const 0) (i32.const 4)))
    (drop (call $await (i32.load (i32.const 0)) (i32.const 8) (i32.const 12)))
    (call $out (i32.load (i32.const 8)) (i32.load (i32.const 12)))))"#;

const SPIN: &str = r#"(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))"#;
const ECHO: &str = r#"(module
  (import "env" "__faasm_read_input" (func $input (param i32 i32) (result i32)))
  (import "env" "__faasm_write_output" (func $out (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $out (i32.const 0) (call $input (i32.const 0) (i32.const 1024)))))"#;

fn put(rt: &Runtime, user: &str, name: &str, wat: &str, token: Option<&str>) {
    let r = send("PUT", &format!("{}/f/{user}/{name}", rt.url), token, wat.as_bytes());
    assert_eq!(r.status, 200, "upload {user}/{name}: {}", r.body);
}

fn call(rt: &Runtime, user: &str, name: &str, input: &[u8], token: Option<&str>) -> Resp {
    send("POST", &format!("{}/f/{user}/{name}", rt.url), token, input)
}

fn submit(rt: &Runtime, user: &str, name: &str, input: &str, token: Option<&str>) -> Resp {
    let msg = serde_json::json!({"user": user, "function": name, "input_data": input, "async": true});
    send("POST", &format!("{}/f/", rt.url), token, msg.to_string().as_bytes())
}

fn status(rt: &Runtime, id: &str, token: Option<&str>) -> Resp {
    send("POST", &format!("{}/f/", rt.url), token, format!(r#"{{"status": true, "id": {id}}}"#).as_bytes())
}

fn finished(rt: &Runtime, id: &str, token: Option<&str>, within: Duration) -> Resp {
    let mut last = None;
    assert!(
        wait_until(within, || {
            let r = status(rt, id, token);
            let done = r.body != "RUNNING";
            last = Some(r);
            done
        }),
        "call {id} still running after {within:?}"
    );
    last.unwrap()
}

/// Whether exactly one call runs and none waits. (A synchronous call's answer comes just before
/// its worker frees its slot: "one running" alone may still be that earlier call, with the call
/// a test just submitted queued behind it.)
fn only_one_running(rt: &Runtime) -> bool {
    let m = send("GET", &format!("{}/metrics", rt.url), None, b"").body;
    m.lines().any(|l| l == "ebb_calls_running 1") && m.lines().any(|l| l == "ebb_calls_queued 0")
}

#[test]
fn state_locks_belong_to_their_call_and_waits_are_bounded() {
    let data = TempDir::new("hard-locks");
    let rt = Runtime::start(&data.0, &["--call-timeout-s", "2"]).unwrap();
    put(&rt, "demo", "locker", LOCKER, None);
    // A call that traps while holding the write lock: the lock goes with it.
    let r = call(&rt, "demo", "locker", b"t", None);
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("unreachable"), "{}", r.body);
    let r = call(&rt, "demo", "locker", b"w", None);
    assert_eq!(r.status, 200, "the lock of a trapped call was never released: {}", r.body);
    // A call that holds the lock past its deadline: it times out, the lock goes; a call waiting
    // for that lock is bounded by its own deadline and ends too.
    let holder = submit(&rt, "demo", "locker", "s", None).body;
    assert!(wait_until(Duration::from_secs(5), || only_one_running(&rt)));
    let waiter = submit(&rt, "demo", "locker", "w", None).body;
    let h = finished(&rt, &holder, None, Duration::from_secs(20));
    assert_eq!(h.status, 504, "{}", h.body);
    assert!(h.body.contains("limit"), "{}", h.body);
    let w = finished(&rt, &waiter, None, Duration::from_secs(20));
    assert!(w.status == 200 || w.status == 504, "the waiter neither got the lock nor timed out: {} {}", w.status, w.body);
    let r = call(&rt, "demo", "locker", b"w", None);
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn one_tenants_parked_calls_cannot_take_the_api_down() {
    let data = TempDir::new("hard-park");
    let tokens = data.0.join("tokens.txt");
    std::fs::write(&tokens, "alice alice-t\nbob bob-t\nops ops-t operator\n").unwrap();
    let args = ["--tokens", tokens.to_str().unwrap(), "--call-timeout-s", "6", "--call-threads", "4", "--max-queued-per-user", "64"];
    let rt = Runtime::start(&data.0, &args).unwrap();
    put(&rt, "alice", "locker", LOCKER, Some("alice-t"));
    put(&rt, "bob", "echo", ECHO, Some("bob-t"));
    // Alice: one call holds a lock and spins, forty wait for it, parked in a host call.
    let holder = submit(&rt, "alice", "locker", "s", Some("alice-t")).body;
    let waiters: Vec<String> = (0..40).map(|_| submit(&rt, "alice", "locker", "w", Some("alice-t")).body).collect();
    assert!(waiters.iter().all(|id| id.parse::<u32>().is_ok()), "{waiters:?}");
    // Bob and every other route are served meanwhile.
    let r = call(&rt, "bob", "echo", b"still here", Some("bob-t"));
    assert_eq!((r.status, r.body.as_str()), (200, "still here"));
    assert_eq!(send("GET", &format!("{}/ping", rt.url), None, b"").body, "PONG");
    let m = send("GET", &format!("{}/metrics", rt.url), Some("ops-t"), b"");
    assert_eq!(m.status, 200);
    put(&rt, "bob", "echo2", ECHO, Some("bob-t"));
    assert_eq!(status(&rt, &holder, Some("alice-t")).body, "RUNNING", "bob was served while alice's calls were parked");
    // Alice's calls end within their deadlines: none hangs.
    for id in waiters.iter().chain([&holder]) {
        let r = finished(&rt, id, Some("alice-t"), Duration::from_secs(60));
        assert!(r.status == 200 || r.status == 504, "{} {}", r.status, r.body);
    }
}

#[test]
fn every_phase_of_a_guest_is_bounded_and_queues_are_too() {
    let data = TempDir::new("hard-phases");
    let rt = Runtime::start(&data.0, &["--call-timeout-s", "1", "--call-threads", "1", "--max-queued", "2", "--max-queued-per-user", "2"]).unwrap();
    let zygote = r#"(module (memory (export "memory") 1)
        (func (export "_faasm_zygote") (result i32) (loop (br 0)) (i32.const 0))
        (func (export "_start")))"#;
    let start = r#"(module (memory (export "memory") 1) (func $s (loop (br 0))) (start $s) (func (export "_start")))"#;
    put(&rt, "demo", "zygote", zygote, None);
    put(&rt, "demo", "start", start, None);
    put(&rt, "demo", "spin", SPIN, None);
    put(&rt, "demo", "echo", ECHO, None);
    for f in ["zygote", "start"] {
        let r = call(&rt, "demo", f, b"", None);
        assert_eq!(r.status, 504, "{f}: {}", r.body);
    }
    // One thread: a spinning call runs, two wait, the next is refused at once with 503.
    let running = submit(&rt, "demo", "spin", "", None);
    assert_eq!(running.status, 200);
    assert!(wait_until(Duration::from_secs(5), || only_one_running(&rt)));
    let queued: Vec<Resp> = (0..2).map(|_| submit(&rt, "demo", "spin", "", None)).collect();
    assert!(queued.iter().all(|r| r.status == 200), "{queued:?}");
    let refused = submit(&rt, "demo", "echo", "x", None);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.body.contains("retry later"), "{}", refused.body);
    let refused = call(&rt, "demo", "echo", b"x", None);
    assert_eq!(refused.status, 503, "a full queue refuses sync calls too: {}", refused.body);
    for r in queued.iter().chain([&running]) {
        assert_eq!(finished(&rt, &r.body, None, Duration::from_secs(20)).status, 504);
    }
    assert_eq!(call(&rt, "demo", "echo", b"ok", None).body, "ok");
}

#[test]
fn finished_call_records_expire() {
    let data = TempDir::new("hard-records");
    let rt = Runtime::start(&data.0, &["--call-record-ttl", "3s", "--call-records", "3"]).unwrap();
    put(&rt, "demo", "echo", ECHO, None);
    // One after the other: records are forgotten in the order the calls finished, and calls
    // submitted together may finish in any order.
    let ids: Vec<String> = (0..5)
        .map(|i| {
            let id = submit(&rt, "demo", "echo", &format!("out-{i}"), None).body;
            let done = finished(&rt, &id, None, Duration::from_secs(10));
            assert!(done.body.contains(&format!("out-{i}")), "{}", done.body);
            id
        })
        .collect();
    // Only three finished records are kept: the oldest are gone.
    assert!(wait_until(Duration::from_secs(10), || status(&rt, &ids[0], None).status == 404));
    // And after the TTL, the rest too.
    assert!(wait_until(Duration::from_secs(10), || status(&rt, &ids[4], None).status == 404), "a record outlived its TTL");
}

#[test]
fn tokens_are_checked_before_bodies_and_bodies_are_bounded() {
    let data = TempDir::new("hard-bodies");
    let tokens = data.0.join("tokens.txt");
    std::fs::write(&tokens, "alice alice-t\n").unwrap();
    let rt = Runtime::start(&data.0, &["--tokens", tokens.to_str().unwrap(), "--max-state-value", "1K", "--max-module", "64K"]).unwrap();
    // 250 MB announced, not a byte sent: an unauthenticated request is answered at once.
    let addr = rt.url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"PUT /f/alice/big HTTP/1.1\r\nHost: x\r\nContent-Length: 262144000\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).expect("a response without the body");
    assert_eq!(&head[9..12], b"401");
    // Authenticated, but over the route's limit: 413.
    let r = send("PUT", &format!("{}/s/alice/k", rt.url), Some("alice-t"), &[1u8; 2048]);
    assert_eq!(r.status, 413, "{}", r.body);
    let r = send("PUT", &format!("{}/f/alice/big", rt.url), Some("alice-t"), &vec![0u8; 100 << 10]);
    assert_eq!(r.status, 413, "{}", r.body);
    let r = send("PUT", &format!("{}/s/alice/k", rt.url), Some("alice-t"), b"small");
    assert_eq!(r.status, 200);
}

#[test]
fn state_is_bounded_per_value_and_per_user() {
    let data = TempDir::new("hard-state");
    let rt = Runtime::start(&data.0, &["--max-state-value", "1M", "--max-state-per-user", "2M"]).unwrap();
    // write_state_offset with a 4 GiB total: refused with a clear error, nothing allocated.
    let huge = r#"(module
      (import "env" "__faasm_write_state_offset" (func $w (param i32 i32 i32 i32 i32)))
      (memory (export "memory") 1)
      (data (i32.const 16) "big\00")
      (func (export "_start") (call $w (i32.const 16) (i32.const -1) (i32.const 0) (i32.const 64) (i32.const 8))))"#;
    put(&rt, "demo", "huge", huge, None);
    let r = call(&rt, "demo", "huge", b"", None);
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("limit per value"), "{}", r.body);
    for k in ["a", "b"] {
        assert_eq!(send("PUT", &format!("{}/s/demo/{k}", rt.url), None, &vec![1u8; 1 << 20]).status, 200);
    }
    let r = send("PUT", &format!("{}/s/demo/c", rt.url), None, b"x");
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("limit per user"), "{}", r.body);
    assert_eq!(send("PUT", &format!("{}/s/other/c", rt.url), None, b"x").status, 200, "other users are unaffected");
}

/// A module with `n` one-byte data segments (what makes wasmtime's compile explode).
fn many_segments(n: u32) -> Vec<u8> {
    let mut body = String::from("(module (memory (export \"memory\") 16) (func (export \"_start\"))");
    for i in 0..n {
        body.push_str(&format!("(data (i32.const {}) \"x\")", i * 7 % 1_000_000));
    }
    body.push(')');
    wat::parse_str(&body).unwrap()
}

/// A module whose one function is `adds` × `local0 += 1` (about 3.5 s of CPU to compile for
/// 400 000, within every static limit).
fn one_big_function(adds: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = u8::try_from(n & 0x7f).unwrap();
            n >>= 7;
            out.push(if n > 0 { b | 0x80 } else { b });
            if n == 0 {
                return;
            }
        }
    }
    fn section(id: u8, payload: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(payload.len(), out);
        out.extend_from_slice(payload);
    }
    let mut body = vec![1, 1, 0x7f]; // one local of type i32
    for _ in 0..adds {
        body.extend_from_slice(&[0x20, 0x00, 0x41, 0x01, 0x6a, 0x21, 0x00]);
    }
    body.push(0x0b);
    let mut code = vec![1];
    leb(body.len(), &mut code);
    code.extend_from_slice(&body);
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 0], &mut m);
    section(3, &[1, 0], &mut m);
    section(5, &[1, 0, 1], &mut m);
    section(7, &[2, 6, b'_', b's', b't', b'a', b'r', b't', 0, 0, 6, b'm', b'e', b'm', b'o', b'r', b'y', 2, 0], &mut m);
    section(10, &code, &mut m);
    m
}

#[test]
fn uploads_are_compiled_within_bounds() {
    let data = TempDir::new("hard-compile");
    let rt = Runtime::start(&data.0, &[]).unwrap();
    // 100 000 one-byte data segments: minutes and gigabytes to compile; refused at once.
    let start = Instant::now();
    let r = send("PUT", &format!("{}/f/demo/bomb", rt.url), None, &many_segments(100_000));
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("data segments"), "{}", r.body);
    assert!(start.elapsed() < Duration::from_secs(30), "took {:?}", start.elapsed());
    // A module within the static limits whose compile runs past the CPU limit is stopped.
    let rt2 = Runtime::start(&TempDir::new("hard-compile2").0, &["--compile-cpu", "1s"]).unwrap();
    let r = send("PUT", &format!("{}/f/demo/slow", rt2.url), None, &one_big_function(400_000));
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("CPU time limit"), "{}", r.body);
    put(&rt, "demo", "echo", ECHO, None);
    assert_eq!(call(&rt, "demo", "echo", b"fine", None).body, "fine");
}

#[test]
fn metrics_and_call_ids_are_tenant_private() {
    let data = TempDir::new("hard-private");
    let tokens = data.0.join("tokens.txt");
    std::fs::write(&tokens, "alice alice-t\nbob bob-t\nops ops-t operator\n").unwrap();
    let rt = Runtime::start(&data.0, &["--tokens", tokens.to_str().unwrap()]).unwrap();
    put(&rt, "alice", "echo", ECHO, Some("alice-t"));
    put(&rt, "bob", "awaiter", AWAITER, Some("bob-t"));
    assert_eq!(call(&rt, "alice", "echo", b"a", Some("alice-t")).body, "a");
    let m = |t| send("GET", &format!("{}/metrics", rt.url), Some(t), b"").body;
    let bob = m("bob-t");
    assert!(bob.contains("bob/awaiter") && !bob.contains("alice/"), "bob sees alice's functions:\n{bob}");
    assert!(!bob.contains("ebb_faults_total"), "runtime-wide counters are the operator's");
    let ops = m("ops-t");
    assert!(ops.contains("alice/echo") && ops.contains("bob/awaiter") && ops.contains("ebb_faults_total"));
    // Bob awaits alice's call id: the answer is the one for an id that never existed.
    let alice_id: u32 = submit(&rt, "alice", "echo", "secret", Some("alice-t")).body.parse().unwrap();
    finished(&rt, &alice_id.to_string(), Some("alice-t"), Duration::from_secs(10));
    let theirs = call(&rt, "bob", "awaiter", &alice_id.to_le_bytes(), Some("bob-t")).body;
    let unknown_id = alice_id ^ 0x5555;
    let unknown = call(&rt, "bob", "awaiter", &unknown_id.to_le_bytes(), Some("bob-t")).body;
    assert_eq!(theirs.replace(&alice_id.to_string(), "N"), unknown.replace(&unknown_id.to_string(), "N"));
    assert!(!theirs.contains("secret"));
    // Ids are not sequential.
    let ids: Vec<u32> = (0..4).map(|_| submit(&rt, "alice", "echo", "x", Some("alice-t")).body.parse().unwrap()).collect();
    assert!(ids.windows(2).any(|w| w[1] != w[0] + 1), "{ids:?}");
}

#[test]
fn the_registry_never_serves_a_torn_or_mixed_function() {
    let data = TempDir::new("hard-registry");
    let a = r#"(module (import "env" "__faasm_write_output" (func $o (param i32 i32))) (memory (export "memory") 1)
        (data (i32.const 0) "AAAA") (func (export "_start") (call $o (i32.const 0) (i32.const 4))))"#;
    let b = a.replace("AAAA", "BBBB");
    let mut rt = Runtime::start(&data.0, &[]).unwrap();
    // Concurrent uploads of two versions: whichever is served, disk and memory agree on it.
    std::thread::scope(|s| {
        for i in 0..8 {
            let (rt, a, b) = (&rt, a, b.as_str());
            s.spawn(move || put(rt, "demo", "v", if i % 2 == 0 { a } else { b }, None));
        }
    });
    let served = call(&rt, "demo", "v", b"", None).body;
    assert!(served == "AAAA" || served == "BBBB", "{served}");
    rt.kill();
    let rt2 = Runtime::start(&data.0, &[]).unwrap();
    assert_eq!(call(&rt2, "demo", "v", b"", None).body, served, "a restart serves another version");
    drop(rt2);
    // A crash between writing the code and the wasm of an upload: the wasm on disk is B, the code
    // beside it A's. A restart must serve B (its own code), never A's code under B's name.
    let dir = data.0.join("functions/demo/v");
    let rt3 = Runtime::start(&data.0, &[]).unwrap();
    put(&rt3, "demo", "v", a, None);
    drop(rt3);
    std::fs::write(dir.join("function.wasm"), wat::parse_str(&b).unwrap()).unwrap();
    let rt4 = Runtime::start(&data.0, &[]).unwrap();
    assert_eq!(call(&rt4, "demo", "v", b"", None).body, "BBBB");
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).filter(|n| n.to_string_lossy().ends_with(".tmp")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_duplicate_token_is_refused_at_start_with_its_line() {
    let data = TempDir::new("hard-dup");
    let tokens = data.0.join("tokens.txt");
    std::fs::write(&tokens, "alice same-token\n# bob\nbob same-token\n").unwrap();
    let out = std::process::Command::new(binary("runtime"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data.0)
        .args(["--tokens", tokens.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("line 3") && stderr.contains("line 1"), "{stderr}");
    let out = std::process::Command::new(binary("memnode")).args(["--listen", "127.0.0.1:0", "--token-file", tokens.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3"));
}

/// The operator's view of a memnode: regions per session.
fn memnode_regions(addr: &str, token: &str) -> Vec<(String, u64)> {
    let t = ebb_memnode::TcpTransport::connect(addr, ebb_memnode::TcpConfig { token: token.into(), ..Default::default() }).unwrap();
    t.usage()
        .unwrap()
        .into_iter()
        .filter(|e| e.regions.get() > 0)
        .map(|e| {
            let end = e.name.iter().position(|&b| b == 0).unwrap_or(e.name.len());
            (String::from_utf8_lossy(&e.name[..end]).into_owned(), e.regions.get())
        })
        .collect()
}

#[test]
fn crashed_runtimes_leave_no_regions_behind() {
    let tokens = TempDir::new("hard-crash-tokens");
    let file = tokens.0.join("memnode-tokens.txt");
    std::fs::write(&file, "rt rt-token\nops ops-token operator\n").unwrap();
    let memnode = Memnode::start(&["--token-file", file.to_str().unwrap(), "--lease", "500ms", "--grace", "1500ms"]).unwrap();
    let data = TempDir::new("hard-crash");
    let args = ["--memnode", memnode.url.as_str(), "--token", "rt-token"];
    let mut rt = Runtime::start(&data.0, &args).unwrap();
    assert_eq!(upload(&rt, "demo", "bigtable", None).status, 200);
    assert_eq!(call(&rt, "demo", "bigtable", b"", None).status, 200);
    assert!(!memnode_regions(&memnode.addr, "ops-token").is_empty());
    // SIGKILL: nothing is freed by the runtime. A restart with the same data directory (the same
    // memnode session) frees what its previous run left at once...
    rt.kill();
    let rt = Runtime::start(&data.0, &args).unwrap();
    assert!(memnode_regions(&memnode.addr, "ops-token").is_empty(), "{:?}", memnode_regions(&memnode.addr, "ops-token"));
    assert_eq!(call(&rt, "demo", "bigtable", b"", None).status, 200);
    let mut rt = rt;
    rt.kill();
    // ...and without a restart, the lease and grace period free it.
    assert!(!memnode_regions(&memnode.addr, "ops-token").is_empty());
    assert!(wait_until(Duration::from_secs(10), || memnode_regions(&memnode.addr, "ops-token").is_empty()), "{:?}", memnode_regions(&memnode.addr, "ops-token"));
}

#[test]
fn declared_memory_does_not_fill_the_memnode() {
    let memnode = Memnode::start(&["--capacity", "1G"]).unwrap();
    let data = TempDir::new("hard-declared");
    let rt = Runtime::start(&data.0, &["--memnode", memnode.url.as_str()]).unwrap();
    // Five tiny modules declaring 250 MiB memories each: far more than the memnode holds.
    let tiny = r#"(module (memory (export "memory") 4000) (data (i32.const 0) "tiny") (func (export "_start")))"#;
    for i in 0..5 {
        put(&rt, "greedy", &format!("tiny{i}"), tiny, None);
        assert_eq!(call(&rt, "greedy", &format!("tiny{i}"), b"", None).status, 200);
    }
    // Another tenant's 64 MiB still fits.
    // (Held to the end: a temporary would remove the directory before the runtime fills it.)
    let other_data = TempDir::new("hard-declared2");
    let other = Runtime::start(&other_data.0, &["--memnode", memnode.url.as_str()]).unwrap();
    assert_eq!(upload(&other, "demo", "bigtable", None).status, 200);
    let r = call(&other, "demo", "bigtable", b"", None);
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Page writes, once armed, wait until the test releases them: a memnode slow to take a drain.
#[derive(Debug)]
struct Stalling {
    armed: std::sync::atomic::AtomicBool,
    /// (a write is waiting, writes are released)
    state: std::sync::Mutex<(bool, bool)>,
    changed: std::sync::Condvar,
}

impl ebb::Hooks for Stalling {
    fn before_write(&self) {
        if self.armed.load(std::sync::atomic::Ordering::Relaxed) {
            let mut s = self.state.lock().unwrap();
            s.0 = true;
            self.changed.notify_all();
            while !s.1 {
                s = self.changed.wait(s).unwrap();
            }
        }
    }
}

#[test]
fn calls_never_wait_behind_the_policys_network_io() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    let hooked = Arc::new(ebb::Hooked::new(Stalling { armed: false.into(), state: std::sync::Mutex::new((false, false)), changed: std::sync::Condvar::new() }));
    let stalling = &hooked.hooks;
    let pager = ebb_runtime::pager::Pager::new(ebb_runtime::pager::PagerConfig::default(), hooked.clone()).unwrap();
    let data = TempDir::new("hard-policy-io");
    let mut policy = ebb_runtime::policy::PolicyFile::default();
    for (k, v) in [("policy", "faasmem"), ("semi-warm-after", "200ms"), ("drain-rate", "1G")] {
        policy.default.set(k, v).unwrap();
    }
    let config = ebb_runtime::platform::PlatformConfig {
        data_dir: data.0.clone(),
        policy,
        policy_tick: Duration::from_millis(20),
        ..Default::default()
    };
    let platform = ebb_runtime::platform::Platform::start(config, pager).unwrap();
    // 4 MiB written by the init phase: what a semi-warm drain writes back.
    let table = r#"(module (memory (export "memory") 64)
      (func (export "_faasm_zygote") (result i32) (local $i i32)
        (loop $l (i32.store (local.get $i) (i32.add (local.get $i) (i32.const 1)))
          (local.set $i (i32.add (local.get $i) (i32.const 4096)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const 4194304))))
        (i32.const 0))
      (func (export "_start")))"#;
    platform.upload("demo", "table", table.as_bytes()).unwrap();
    platform.invoke("demo", "table", b"").unwrap();
    // From now on the memnode takes writes only when released; wait until the policy's drain is
    // stuck in one, holding the instance it works on.
    stalling.armed.store(true, Ordering::Relaxed);
    assert!(wait_until(Duration::from_secs(10), || stalling.state.lock().unwrap().0), "the policy never drained");
    // A call meanwhile runs at once (on another instance), not after the write.
    let (tx, rx) = std::sync::mpsc::channel();
    let p = platform.clone();
    std::thread::spawn(move || tx.send(p.invoke("demo", "table", b"").map(|o| o.rc)).unwrap());
    let result = rx.recv_timeout(Duration::from_secs(20));
    let still_stalled = !stalling.state.lock().unwrap().1;
    {
        let mut s = stalling.state.lock().unwrap();
        s.1 = true;
        stalling.changed.notify_all();
    }
    assert!(matches!(result, Ok(Ok(0))), "the call waited for the policy's write: {result:?}");
    assert!(still_stalled, "the call finished only after the write was released");
    // /metrics answers too while a write stalls (nothing it reads is held by the policy).
    stalling.armed.store(false, Ordering::Relaxed);
    assert!(platform.metrics_text(ebb_runtime::platform::Viewer::Operator).contains("ebb_calls_total"));
}

#[test]
fn an_await_runs_a_queued_call_rather_than_deadlock_the_pool() {
    // One call thread: the chaining call holds it while it awaits; the chained calls are queued
    // behind it and would never run if the await only waited.
    let data = TempDir::new("hard-inline");
    let rt = Runtime::start(&data.0, &["--call-threads", "1", "--call-timeout-s", "20"]).unwrap();
    for f in ["chain", "echo"] {
        assert_eq!(upload(&rt, "demo", f, None).status, 200);
    }
    let r = call(&rt, "demo", "chain", b"", None);
    assert_eq!((r.status, r.body.as_str()), (200, "chain: shout(a) + b"));
}
