//! Offloaded calls (`__faasmndp_storageCallAndAwait`) between real processes: a memnode, a storage
//! runtime and a compute runtime on loopback. The offloaded part runs on the storage node, on the
//! caller's memory lent by pages through the memnode; results must be byte-identical to running
//! it on the compute node (`forbid_ndp`), and every refusal and failure must end cleanly.

use std::time::{Duration, Instant};

use ebb::http::{find_metric, send};
use ebb::{Memnode, Runtime, TempDir};
use sha2::{Digest, Sha256};

const OPERATOR: &str = "ops-token-0123456789";
const ALICE: &str = "alice-token-0123456789";
const CLUSTER: &str = "a-long-random-cluster-secret";

/// A memnode, a storage node and a compute node that knows it, sharing tokens and the cluster
/// secret. `storage_args` go to the storage node.
struct Cluster {
    _dirs: (TempDir, TempDir),
    memnode: Memnode,
    storage: Runtime,
    compute: Runtime,
}

fn cluster(tag: &str, storage_args: &[&str], compute_args: &[&str]) -> Cluster {
    let (ds, dc) = (TempDir::new(&format!("{tag}-storage")), TempDir::new(&format!("{tag}-compute")));
    let tokens = dc.0.join("tokens.txt");
    std::fs::write(&tokens, format!("ops {OPERATOR} operator\nalice {ALICE}\nbob bob-token-0123456789\n")).unwrap();
    let secret = dc.0.join("cluster.txt");
    std::fs::write(&secret, CLUSTER).unwrap();
    let memnode = Memnode::start(&["--capacity", "1G"]).unwrap();
    let m = memnode.url.clone();
    let (t, c) = (tokens.to_str().unwrap(), secret.to_str().unwrap());
    // Admission by CPU and memory is off (these machines are shared: the load is the other
    // tests'); the in-flight bound is tested on its own.
    let mut args = vec!["--storage", "--tokens", t, "--cluster-token-file", c, "--memnode", &m, "--ndp-max-cpu", "1", "--ndp-max-memory", "1"];
    args.extend_from_slice(storage_args);
    let storage = Runtime::start(&ds.0, &args).unwrap();
    let mut args = vec!["--storage-nodes", &storage.url, "--tokens", t, "--cluster-token-file", c, "--memnode", &m];
    args.extend_from_slice(compute_args);
    let compute = Runtime::start(&dc.0, &args).unwrap();
    Cluster { _dirs: (ds, dc), memnode, storage, compute }
}

fn metrics(rt: &Runtime) -> String {
    send("GET", &format!("{}/metrics", rt.url), Some(OPERATOR), b"").body
}

fn m(text: &str, name: &str) -> f64 {
    find_metric(text, name).unwrap_or_else(|| panic!("metric {name} missing"))
}

fn call(rt: &Runtime, function: &str, input: &str, forbid: bool) -> (u16, String) {
    let message = serde_json::json!({"user": "alice", "function": function, "input_data": input, "forbid_ndp": forbid});
    let r = send("POST", &format!("{}/f/", rt.url), Some(ALICE), message.to_string().as_bytes());
    (r.status, r.body)
}

/// Offloaded and local (forbid_ndp) must agree; returns what they gave.
fn both_ways(rt: &Runtime, function: &str, input: &str) -> (u16, String) {
    let offloaded = call(rt, function, input, false);
    let local = call(rt, function, input, true);
    assert_eq!(offloaded, local, "{function} {input}: offloaded and local differ");
    offloaded
}

fn upload(rt: &Runtime, functions: &[&str]) {
    for f in functions {
        let wasm = std::fs::read(ebb::function_wasm("ndp", f)).unwrap();
        assert_eq!(ebb::http::upload_wasm(&rt.url, "alice", f, &wasm, Some(ALICE)).status, 200, "{f}");
    }
}

fn put(rt: &Runtime, key: &str, body: &[u8]) {
    assert_eq!(send("PUT", &format!("{}/o/alice/{key}", rt.url), Some(ALICE), body).status, 200, "{key}");
}

fn words(n: usize) -> String {
    let words = ["memory", "page", "fault", "node", "remote", "warm", "cold", "call", "near", "data"];
    (0..n).map(|i| format!("{}{}", words[(i * 7 + i / 13) % words.len()], if i % 11 == 0 { "\n" } else { " " })).collect()
}

#[test]
fn the_samples_run_on_the_storage_node_by_pages_and_match_running_here() {
    let c = cluster("ndp-samples", &[], &[]);
    // Uploaded to the compute node only: the storage node is sent the function when it lacks it.
    upload(&c.compute, &["put", "get", "substr", "grep", "sha256sum", "wordcount"]);
    let text = words(400_000);
    put(&c.compute, "corpus", text.as_bytes());
    let log: String = (0..6000).map(|i| format!("line {i}: {}\n", if i % 7 == 0 { "needle here" } else { "hay" })).collect();
    put(&c.compute, "log", log.as_bytes());
    assert_eq!(both_ways(&c.compute, "wordcount", "corpus"), (200, ebb::wordcount_of(&text)));
    for (offset, len) in [(0usize, 10usize), (4095, 2), (5000, 10_000), (log.len() - 5, 100)] {
        let want = &log[offset..(offset + len).min(log.len())];
        assert_eq!(both_ways(&c.compute, "substr", &format!("log {offset} {len}")), (200, want.to_string()), "substr {offset} {len}");
    }
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("needle")).collect();
    assert_eq!(both_ways(&c.compute, "grep", "log needle"), (200, format!("{}\n{}\n", lines.len(), lines.join("\n"))));
    assert_eq!(both_ways(&c.compute, "sha256sum", "log"), (200, format!("{:x}", Sha256::digest(log.as_bytes()))));
    assert_eq!(both_ways(&c.compute, "sha256sum", "nothing").0, 500, "a missing object is the function's error, both ways");
    assert_eq!(both_ways(&c.compute, "put", "note hello near data"), (200, "stored 15".into()));
    assert_eq!(both_ways(&c.compute, "get", "note"), (200, "hello near data".into()));
    assert_eq!(both_ways(&c.compute, "get", "log"), (200, log.clone()));
    assert_eq!(both_ways(&c.compute, "get", "nothing"), (500, "no such object".into()));
    let before = (metrics(&c.compute), metrics(&c.storage));
    // Another offloaded scan: what crossed the compute↔storage link for it.
    assert_eq!(call(&c.compute, "wordcount", "corpus", false), (200, ebb::wordcount_of(&text)));
    let after = (metrics(&c.compute), metrics(&c.storage));
    let delta = |name: &str| m(&after.0, name) - m(&before.0, name);
    assert_eq!(delta("ebb_ndp_offloads_total{outcome=\"offloaded\"}"), 1.0);
    let link = delta("ebb_ndp_link_bytes_total{direction=\"to_storage\"}") + delta("ebb_ndp_link_bytes_total{direction=\"from_storage\"}");
    assert!(link > 0.0 && link <= 0.02 * text.len() as f64, "{link} bytes crossed for a {}-byte object", text.len());
    assert_eq!(m(&after.1, "ebb_ndp_served_total{outcome=\"accepted\"}") - m(&before.1, "ebb_ndp_served_total{outcome=\"accepted\"}"), 1.0);
    // Every scan was offloaded (the one whose object is missing too: it ran there and found
    // nothing) but the eight forbidden ones; none failed.
    assert_eq!(m(&after.0, "ebb_ndp_offloads_total{outcome=\"offloaded\"}"), 9.0, "{}", after.0);
    assert_eq!(m(&after.0, "ebb_ndp_offloads_total{outcome=\"forbidden\"}"), 8.0);
    assert_eq!(m(&after.0, "ebb_ndp_offloads_total{outcome=\"failed\"}"), 0.0);
    assert!(m(&after.0, "ebb_ndp_pages_returned_total") > 0.0, "the storage side's changes came back by pages");
    let back = m(&after.0, "ebb_ndp_pages_faulted_back_total");
    assert!(back > 0.0 && back <= m(&after.0, "ebb_ndp_pages_returned_total"), "{back} faulted back");
    // The offloaded part's writes (wordcount's map, grep's lines) came back: instances were
    // reused for the calls after, which still gave the right answers — nothing leaked between
    // calls through the lent pages.
    assert_eq!(both_ways(&c.compute, "wordcount", "log"), (200, ebb::wordcount_of(&log)));
}

#[test]
fn a_busy_storage_node_refuses_and_the_caller_runs_it_here() {
    let c = cluster("ndp-busy", &["--ndp-max-in-flight", "0"], &[]);
    upload(&c.compute, &["wordcount"]);
    let text = words(20_000);
    put(&c.compute, "corpus", text.as_bytes());
    assert_eq!(call(&c.compute, "wordcount", "corpus", false), (200, ebb::wordcount_of(&text)));
    let (compute, storage) = (metrics(&c.compute), metrics(&c.storage));
    assert_eq!(m(&compute, "ebb_ndp_offloads_total{outcome=\"refused\"}"), 1.0);
    assert_eq!(m(&compute, "ebb_ndp_offloads_total{outcome=\"offloaded\"}"), 0.0);
    assert!(m(&storage, "ebb_ndp_served_total{outcome=\"busy\"}") >= 1.0);
    assert_eq!(m(&storage, "ebb_ndp_served_total{outcome=\"accepted\"}"), 0.0);
}

#[test]
fn a_storage_node_that_stops_or_dies_mid_offload_fails_the_call_within_the_bound() {
    let mut c = cluster("ndp-dies", &[], &["--call-timeout-s", "4"]);
    upload(&c.compute, &["wordcount"]);
    let text = words(20_000);
    put(&c.compute, "corpus", text.as_bytes());
    assert_eq!(call(&c.compute, "wordcount", "corpus", false), (200, ebb::wordcount_of(&text)));
    // Silent (SIGSTOP): the request is accepted by the kernel and never answered.
    let pid = i32::try_from(c.storage.child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let start = Instant::now();
    let (status, body) = call(&c.compute, "wordcount", "corpus", false);
    assert_eq!(status, 504, "{body}");
    assert!(start.elapsed() < Duration::from_secs(15), "bounded by the call timeout: {:?}", start.elapsed());
    // Killed while a request waits in its socket: the connection breaks, the call fails at once
    // with the node named.
    let compute_url = c.compute.url.clone();
    let pending = std::thread::spawn(move || {
        let message = serde_json::json!({"user": "alice", "function": "wordcount", "input_data": "corpus"});
        let r = send("POST", &format!("{compute_url}/f/"), Some(ALICE), message.to_string().as_bytes());
        (r.status, r.body)
    });
    std::thread::sleep(Duration::from_millis(1500));
    c.storage.kill();
    let (status, body) = pending.join().unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("storage node") && body.contains(&c.storage.url), "{body}");
    let text_m = metrics(&c.compute);
    assert!(m(&text_m, "ebb_ndp_offloads_total{outcome=\"failed\"}") >= 2.0, "{text_m}");
    // The compute node serves on: a call that reads nothing from the dead node still runs, on an
    // instance whose memory the failed offloads left intact.
    assert_eq!(call(&c.compute, "wordcount", "corpus", true).0, 500, "the object's node is gone");
    let _ = &c.memnode;
}

#[test]
fn a_storage_node_takes_offloaded_calls_only_from_the_cluster_and_only_with_tickets() {
    let c = cluster("ndp-refuse", &[], &[]);
    upload(&c.compute, &["wordcount"]);
    let text = words(5_000);
    put(&c.compute, "corpus", text.as_bytes());
    // The first offload sends the function to the storage node.
    assert_eq!(call(&c.compute, "wordcount", "corpus", false), (200, ebb::wordcount_of(&text)));
    let wasm = std::fs::read(ebb::function_wasm("ndp", "wordcount")).unwrap();
    let digest: String = Sha256::digest(&wasm).iter().map(|b| format!("{b:02x}")).collect();
    let descriptor = |region: u64| {
        serde_json::json!({
            "user": "alice", "function": "wordcount", "digest": digest, "key": "corpus", "index": 1, "args": [],
            "globals": [], "timeout_ms": 5000,
            "memory": {"pages": 16384, "region": region, "region_ticket": "00".repeat(16), "snapshot": region,
                       "snapshot_ticket": "00".repeat(16), "runs": [[0, 16384, 2]]},
        })
        .to_string()
    };
    let url = format!("{}/ndp/call", c.storage.url);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let post = |token: &str, user: &str, body: &str| {
        let mut r = agent.post(&url).header("authorization", &format!("Bearer {token}")).header("x-ebb-user", user).send(body).unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default())
    };
    // A user's own token is not the cluster's.
    assert_eq!(post(ALICE, "alice", &descriptor(1)).0, 403);
    // The cluster acting for one user may not send another's call.
    assert_eq!(post(CLUSTER, "bob", &descriptor(1)).0, 403);
    // Tickets that do not open the region: refused before anything runs.
    for region in [1, 2, 999_999] {
        let (status, body) = post(CLUSTER, "alice", &descriptor(region));
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("cannot be read"), "{body}");
    }
    let (status, body) = post(CLUSTER, "alice", "{\"user\": \"alice\"}");
    assert_eq!(status, 400, "{body}");
    // The node still takes real offloads.
    assert_eq!(call(&c.compute, "wordcount", "corpus", false), (200, ebb::wordcount_of(&text)));
}
