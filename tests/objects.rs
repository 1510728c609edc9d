//! Objects on a storage node (`runtime serve --storage`), through the HTTP API of a real runtime
//! process: streamed round trips, limits, tenants, and puts that survive — or die cleanly with —
//! a SIGKILL of the runtime.

use std::io::Write;
use std::time::Duration;

use ebb::{Runtime, TempDir};
use ebb_runtime::api::client::request;
use sha2::{Digest, Sha256};

fn obj(rt: &Runtime, method: &str, user: &str, key: &str, token: Option<&str>, body: &[u8]) -> (u16, Vec<u8>) {
    request(method, &format!("{}/o/{user}/{key}", rt.url), token, body, Some(Duration::from_secs(60))).unwrap()
}

/// A put that announces `len` bytes and sends none of them: the reply to its headers alone.
fn put_announcing(rt: &Runtime, user: &str, key: &str, len: usize) -> (u16, String) {
    use std::io::Read;
    let addr = rt.url.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(conn, "PUT /o/{user}/{key} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {len}\r\n\r\n").unwrap();
    let mut reply = String::new();
    let _ = conn.read_to_string(&mut reply);
    let status = reply.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, reply)
}

/// `len` bytes that differ in every 4 KiB (so a misplaced chunk shows).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i / 4096).to_le_bytes()[0] ^ i.to_le_bytes()[0].wrapping_mul(31) ^ seed).collect()
}

#[test]
fn objects_round_trip_streamed_and_are_bounded_per_object_and_user() {
    let data = TempDir::new("objects");
    let rt = Runtime::start(&data.0, &["--storage", "--max-object", "16M", "--max-objects-per-user", "24M"]).unwrap();
    let big = pattern(8 << 20, 1);
    assert_eq!(obj(&rt, "PUT", "alice", "big.bin", None, &big), (200, format!("{}\n", big.len()).into_bytes()));
    let (status, got) = obj(&rt, "GET", "alice", "big.bin", None, b"");
    assert_eq!(status, 200);
    assert_eq!(Sha256::digest(&got), Sha256::digest(&big), "the object comes back byte for byte");
    // Replacing is whole; another user has its own namespace.
    let small = pattern(1000, 2);
    assert_eq!(obj(&rt, "PUT", "alice", "big.bin", None, &small).0, 200);
    assert_eq!(obj(&rt, "GET", "alice", "big.bin", None, b""), (200, small.clone()));
    assert_eq!(obj(&rt, "GET", "bob", "big.bin", None, b"").0, 404);
    // Over the object limit: refused on its headers, before a byte is stored; the old object
    // untouched.
    let (status, reply) = put_announcing(&rt, "alice", "big.bin", 17 << 20);
    assert_eq!(status, 413, "{reply}");
    assert_eq!(obj(&rt, "GET", "alice", "big.bin", None, b""), (200, small.clone()));
    // A chunked body that says no size is cut at the limit as it streams in: nothing is kept.
    {
        let addr = rt.url.trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        write!(conn, "PUT /o/alice/chunked HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        let chunk = pattern(1 << 20, 8);
        for _ in 0..17 {
            if write!(conn, "{:x}\r\n", chunk.len()).and_then(|()| conn.write_all(&chunk)).and_then(|()| conn.write_all(b"\r\n")).is_err() {
                break; // the server answered and closed
            }
        }
        let _ = conn.write_all(b"0\r\n\r\n");
        let mut reply = String::new();
        conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = std::io::Read::read_to_string(&mut conn, &mut reply);
        assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    }
    assert_eq!(obj(&rt, "GET", "alice", "chunked", None, b"").0, 404);
    // Over the user's room: refused; other users are not affected; deleting gives room back.
    assert_eq!(obj(&rt, "PUT", "alice", "a", None, &pattern(12 << 20, 4)).0, 200);
    let (status, reply) = put_announcing(&rt, "alice", "b", 12 << 20);
    assert_eq!(status, 413, "{reply}");
    assert!(reply.contains("delete objects first"), "{reply}");
    assert_eq!(obj(&rt, "GET", "alice", "b", None, b"").0, 404, "nothing of a refused put is kept");
    assert_eq!(obj(&rt, "PUT", "bob", "b", None, &pattern(12 << 20, 5)).0, 200);
    assert_eq!(obj(&rt, "DELETE", "alice", "a", None, b"").0, 200);
    assert_eq!(obj(&rt, "DELETE", "alice", "a", None, b"").0, 404);
    assert_eq!(obj(&rt, "PUT", "alice", "b", None, &pattern(12 << 20, 5)).0, 200);
    // Keys are names, not paths.
    assert_eq!(obj(&rt, "GET", "alice", "..", None, b"").0, 404);
    assert_eq!(obj(&rt, "PUT", "alice", "%2E%2E%2Fx", None, b"x").0, 400, "a key with '/'");
    assert_eq!(obj(&rt, "PUT", "alice", &"k".repeat(81), None, b"x").0, 400);
    let keys: Vec<String> = std::fs::read_dir(data.0.join("objects/alice")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(keys.iter().all(|k| !k.starts_with('.')), "no temporary or hidden file left: {keys:?}");
}

#[test]
fn a_runtime_that_is_not_a_storage_node_says_where_objects_live() {
    let data = TempDir::new("objects-none");
    let rt = Runtime::start(&data.0, &[]).unwrap();
    let (status, body) = obj(&rt, "PUT", "alice", "k", None, b"x");
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("--storage"), "{}", String::from_utf8_lossy(&body));
}

#[test]
fn a_tenant_reaches_only_its_own_objects() {
    let data = TempDir::new("objects-tenants");
    let tokens = data.0.join("tokens.txt");
    std::fs::write(&tokens, "alice alice-t\nbob bob-t\n").unwrap();
    let rt = Runtime::start(&data.0, &["--storage", "--tokens", tokens.to_str().unwrap()]).unwrap();
    assert_eq!(obj(&rt, "PUT", "alice", "k", Some("alice-t"), b"mine").0, 200);
    for method in ["GET", "PUT", "DELETE"] {
        assert_eq!(obj(&rt, method, "alice", "k", Some("bob-t"), b"theirs").0, 403, "{method} by another tenant");
        assert_eq!(obj(&rt, method, "alice", "k", None, b"theirs").0, 401, "{method} without a token");
    }
    assert_eq!(obj(&rt, "GET", "alice", "k", Some("alice-t"), b""), (200, b"mine".to_vec()));
}

#[test]
fn an_acknowledged_put_survives_a_kill_and_a_killed_put_leaves_the_old_object() {
    let data = TempDir::new("objects-kill");
    let mut rt = Runtime::start(&data.0, &["--storage"]).unwrap();
    let old = pattern(3 << 20, 6);
    assert_eq!(obj(&rt, "PUT", "alice", "k", None, &old).0, 200);
    // A second put of the same key is half sent when the runtime is killed.
    let addr = rt.url.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(conn, "PUT /o/alice/k HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n", 4 << 20).unwrap();
    conn.write_all(&pattern(2 << 20, 7)).unwrap();
    conn.flush().unwrap();
    // The half put has reached the disk: its temporary file is growing.
    let dir = data.0.join("objects/alice");
    assert!(
        ebb::wait_until(Duration::from_secs(20), || std::fs::read_dir(&dir).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with(".put-"))),
        "the put never started"
    );
    rt.kill();
    drop(conn);
    let rt = Runtime::start(&data.0, &["--storage"]).unwrap();
    let (status, got) = obj(&rt, "GET", "alice", "k", None, b"");
    assert_eq!(status, 200);
    assert_eq!(Sha256::digest(&got), Sha256::digest(&old), "the acknowledged object, whole, not a mix");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 1, "the dead put's file was removed at start: {left:?}");
}

#[test]
fn any_runtime_reaches_the_storage_node_that_holds_an_object() {
    let (d1, d2, dc) = (TempDir::new("objects-node1"), TempDir::new("objects-node2"), TempDir::new("objects-compute"));
    let tokens = dc.0.join("tokens.txt");
    std::fs::write(&tokens, "alice alice-t\nbob bob-t\n").unwrap();
    let t = tokens.to_str().unwrap();
    let s1 = Runtime::start(&d1.0, &["--storage", "--tokens", t]).unwrap();
    let mut s2 = Runtime::start(&d2.0, &["--storage", "--tokens", t]).unwrap();
    let nodes = vec![s1.url.clone(), s2.url.clone()];
    let compute = Runtime::start(&dc.0, &["--storage-nodes", &nodes.join(","), "--tokens", t]).unwrap();
    let dirs = [&d1, &d2];
    let keys: Vec<String> = (0..16).map(|k| format!("part-{k}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let body = pattern(100_000 + i, i.to_le_bytes()[0]);
        assert_eq!(obj(&compute, "PUT", "alice", k, Some("alice-t"), &body).0, 200, "{k}");
        // Stored on the node the placement rule names, and only there.
        let home = ebb_runtime::ndp::node_for(&nodes, "alice", k).unwrap();
        for (n, d) in dirs.iter().enumerate() {
            assert_eq!(d.0.join("objects/alice").join(k).exists(), n == home, "{k} on node {n}");
        }
        assert_eq!(obj(&compute, "GET", "alice", k, Some("alice-t"), b""), (200, body), "{k} through the compute runtime");
    }
    // Streamed through: 24 MiB in both directions.
    let big = pattern(24 << 20, 9);
    assert_eq!(obj(&compute, "PUT", "alice", "big", Some("alice-t"), &big).0, 200);
    let (status, got) = obj(&compute, "GET", "alice", "big", Some("alice-t"), b"");
    assert_eq!((status, Sha256::digest(&got)), (200, Sha256::digest(&big)));
    let homes: Vec<usize> = keys.iter().map(|k| ebb_runtime::ndp::node_for(&nodes, "alice", k).unwrap()).collect();
    assert!(homes.contains(&0) && homes.contains(&1), "both nodes hold objects: {homes:?}");
    // The caller's token travels with the request; another tenant is refused where it asks.
    assert_eq!(obj(&compute, "GET", "alice", &keys[0], Some("bob-t"), b"").0, 403);
    assert_eq!(obj(&compute, "GET", "alice", &keys[0], None, b"").0, 401);
    let k0 = &keys[0];
    assert_eq!(obj(&compute, "DELETE", "alice", k0, Some("alice-t"), b"").0, 200);
    assert_eq!(obj(&compute, "GET", "alice", k0, Some("alice-t"), b"").0, 404);
    // A storage node that is down fails its objects' requests with a clear error; the other
    // node's objects are still served.
    s2.kill();
    let on2 = keys.iter().zip(&homes).find(|(_, h)| **h == 1).unwrap().0;
    let on1 = keys.iter().zip(&homes).skip(1).find(|(_, h)| **h == 0).unwrap().0;
    let (status, body) = obj(&compute, "GET", "alice", on2, Some("alice-t"), b"");
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains(&nodes[1]), "{}", String::from_utf8_lossy(&body));
    assert_eq!(obj(&compute, "GET", "alice", on1, Some("alice-t"), b"").0, 200);
}

#[test]
fn an_ndp_function_reads_its_object_in_place_with_the_same_result_forbidden_or_not() {
    let data = TempDir::new("objects-ndp");
    let rt = Runtime::start(&data.0, &["--storage"]).unwrap();
    let words = ["memory", "page", "fault", "node", "remote", "warm", "cold", "call"];
    let text: String = (0..40_000usize).map(|i| format!("{}{}", words[(i * 7 + i / 13) % words.len()], if i % 11 == 0 { "\n" } else { " " })).collect();
    assert_eq!(obj(&rt, "PUT", "alice", "corpus.txt", None, text.as_bytes()).0, 200);
    let wasm = std::fs::read(ebb::function_wasm("ndp", "wordcount")).unwrap();
    assert_eq!(ebb::http::upload_wasm(&rt.url, "alice", "wordcount", &wasm, None).status, 200);
    let mut counts = std::collections::BTreeMap::<&str, u32>::new();
    for w in text.split_ascii_whitespace() {
        *counts.entry(w).or_default() += 1;
    }
    let want: String = counts.iter().map(|(w, c)| format!("{w}\t{c}\n")).collect();
    let r = ebb::http::invoke(&rt, "alice", "wordcount", "corpus.txt");
    assert_eq!((r.status, &r.body), (200, &want));
    let message = serde_json::json!({"user": "alice", "function": "wordcount", "input_data": "corpus.txt", "forbid_ndp": true});
    let r = ebb::http::send("POST", &format!("{}/f/", rt.url), None, message.to_string().as_bytes());
    assert_eq!((r.status, &r.body), (200, &want), "forbid_ndp gives the same output");
    // No such object: the guest gets NULL and says so.
    let r = ebb::http::invoke(&rt, "alice", "wordcount", "missing.txt");
    assert_eq!((r.status, r.body.as_str()), (500, "no such object"));
    // Another tenant's object is not reachable by name.
    assert_eq!(ebb::http::upload_wasm(&rt.url, "bob", "wordcount", &wasm, None).status, 200);
    assert_eq!(ebb::http::invoke(&rt, "bob", "wordcount", "corpus.txt").body, "no such object");
    // The object is as it was.
    assert_eq!(obj(&rt, "GET", "alice", "corpus.txt", None, b""), (200, text.into_bytes()));
}

/// Calls `function` with `input` as a Faasm message, with and without `forbid_ndp`: both must give
/// the same status and output, which are returned.
fn both_ways(rt: &Runtime, user: &str, function: &str, input: &str) -> (u16, String) {
    let mut seen = Vec::new();
    for forbid in [false, true] {
        let message = serde_json::json!({"user": user, "function": function, "input_data": input, "forbid_ndp": forbid});
        let r = ebb::http::send("POST", &format!("{}/f/", rt.url), None, message.to_string().as_bytes());
        seen.push((r.status, r.body));
    }
    assert_eq!(seen[0], seen[1], "{function} {input}: offloaded and forbidden differ");
    seen.remove(0)
}

#[test]
fn the_ndp_samples_give_their_results_offloaded_or_forbidden() {
    let data = TempDir::new("objects-samples");
    let rt = Runtime::start(&data.0, &["--storage"]).unwrap();
    for f in ["put", "substr", "grep", "sha256sum", "wordcount"] {
        let wasm = std::fs::read(ebb::function_wasm("ndp", f)).unwrap();
        assert_eq!(ebb::http::upload_wasm(&rt.url, "alice", f, &wasm, None).status, 200, "{f}");
    }
    // put: an object made by a function, read back over HTTP.
    assert_eq!(both_ways(&rt, "alice", "put", "note hello near data"), (200, "stored 15".into()));
    assert_eq!(obj(&rt, "GET", "alice", "note", None, b""), (200, b"hello near data".to_vec()));
    // A 300 KiB text object for the scans.
    let text: String = (0..6000).map(|i| format!("line {i}: {}\n", if i % 7 == 0 { "needle here" } else { "hay" })).collect();
    assert_eq!(obj(&rt, "PUT", "alice", "log", None, text.as_bytes()).0, 200);
    // substr: unaligned offsets, within a page, across pages, clipped at the end.
    for (offset, len) in [(0usize, 10usize), (4095, 2), (5000, 10_000), (text.len() - 5, 100)] {
        let want = &text[offset..(offset + len).min(text.len())];
        assert_eq!(both_ways(&rt, "alice", "substr", &format!("log {offset} {len}")), (200, want.to_string()), "substr {offset} {len}");
    }
    // grep.
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("needle")).collect();
    let want = format!("{}\n{}\n", lines.len(), lines.join("\n"));
    assert_eq!(both_ways(&rt, "alice", "grep", "log needle"), (200, want));
    // sha256sum, against the sha2 crate; and of an empty object.
    assert_eq!(both_ways(&rt, "alice", "sha256sum", "log"), (200, format!("{:x}", Sha256::digest(text.as_bytes()))));
    assert_eq!(obj(&rt, "PUT", "alice", "empty", None, b"").0, 200);
    assert_eq!(both_ways(&rt, "alice", "sha256sum", "empty"), (200, format!("{:x}", Sha256::digest(b""))));
    // A missing object is the function's error, the same both ways.
    assert_eq!(both_ways(&rt, "alice", "sha256sum", "nothing").0, 500);
}

#[test]
fn a_function_on_a_compute_node_fetches_and_stores_objects_on_their_storage_node() {
    let (ds, dc) = (TempDir::new("objects-remote-storage"), TempDir::new("objects-remote-compute"));
    let tokens = dc.0.join("tokens.txt");
    std::fs::write(&tokens, "alice alice-t\nbob bob-t\n").unwrap();
    let cluster = dc.0.join("cluster.txt");
    std::fs::write(&cluster, "a-long-random-cluster-secret\n").unwrap();
    let (t, c) = (tokens.to_str().unwrap(), cluster.to_str().unwrap());
    let storage = Runtime::start(&ds.0, &["--storage", "--tokens", t, "--cluster-token-file", c]).unwrap();
    let compute = Runtime::start(&dc.0, &["--storage-nodes", &storage.url, "--tokens", t, "--cluster-token-file", c]).unwrap();
    for f in ["wordcount", "substr", "put"] {
        let wasm = std::fs::read(ebb::function_wasm("ndp", f)).unwrap();
        assert_eq!(ebb::http::upload_wasm(&compute.url, "alice", f, &wasm, Some("alice-t")).status, 200);
    }
    let text = "near data near code far data\n".repeat(5000);
    assert_eq!(obj(&compute, "PUT", "alice", "words", Some("alice-t"), text.as_bytes()).0, 200);
    assert!(ds.0.join("objects/alice/words").exists(), "kept by the storage node");
    let call = |f: &str, input: &str| {
        let message = serde_json::json!({"user": "alice", "function": f, "input_data": input});
        let r = ebb::http::send("POST", &format!("{}/f/", compute.url), Some("alice-t"), message.to_string().as_bytes());
        (r.status, r.body)
    };
    assert_eq!(call("wordcount", "words"), (200, "code\t5000\ndata\t10000\nfar\t5000\nnear\t10000\n".to_string()));
    // A ranged fetch: only the part asked for crosses.
    assert_eq!(call("substr", "words 5 10"), (200, text[5..15].to_string()));
    // A function's put lands on the storage node.
    assert_eq!(call("put", "made-here from compute"), (200, "stored 12".to_string()));
    assert_eq!(std::fs::read(ds.0.join("objects/alice/made-here")).unwrap(), b"from compute");
    assert_eq!(call("wordcount", "missing"), (500, "no such object".to_string()));
    // The cluster secret must name a user, and then acts only as that user.
    let secret = "a-long-random-cluster-secret";
    let url = format!("{}/o/alice/words", storage.url);
    assert_eq!(request("GET", &url, Some(secret), b"", None).unwrap().0, 401);
    let as_user = |user: &str| {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        agent.get(&url).header("authorization", &format!("Bearer {secret}")).header("x-ebb-user", user).call().unwrap().status().as_u16()
    };
    assert_eq!((as_user("alice"), as_user("bob")), (200, 403));
}

#[test]
fn a_cluster_secret_that_is_also_a_users_token_is_refused_at_start() {
    let data = TempDir::new("objects-cluster-token");
    let tokens = data.0.join("tokens.txt");
    std::fs::write(&tokens, "alice alice-token-0123456789\n").unwrap();
    let cluster = data.0.join("cluster.txt");
    let refused = |secret: &str| {
        std::fs::write(&cluster, secret).unwrap();
        let out = std::process::Command::new(ebb::binary("runtime"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data.0)
            .arg("--tokens")
            .arg(&tokens)
            .arg("--cluster-token-file")
            .arg(&cluster)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let why = refused("alice-token-0123456789\n");
    assert!(why.contains("give the cluster its own secret"), "{why}");
    let why = refused("short\n");
    assert!(why.contains("shorter than 16 bytes"), "{why}");
}
