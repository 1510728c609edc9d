//! Near-data offloading across hosts: a memnode, a compute runtime and two storage runtimes, each
//! in its own network namespace, joined by veth links (created and removed here; needs root, as the
//! whole suite does). Objects spread over both storage nodes by the placement rule; offloaded
//! scans give what local ones give while only descriptors cross the compute↔storage links, and a
//! link that goes down ends the calls that need it within the bound.

use std::time::{Duration, Instant};

use ebb::hosts::{ALICE, NdpHosts, OPERATOR};
use ebb::http::{find_metric, send};
use sha2::{Digest, Sha256};

fn hosts(tag: &str, compute_args: &[&str]) -> NdpHosts {
    if let Some(why) = ebb::hosts::unavailable() {
        panic!("this test needs network namespaces ({why}): run the suite as root with iproute2 (scripts/setup.sh installs it)");
    }
    NdpHosts::start(tag, &["--ndp-max-cpu", "1", "--ndp-max-memory", "1"], compute_args).expect("start the hosts")
}

fn call(url: &str, function: &str, input: &str, forbid: bool) -> (u16, String) {
    let message = serde_json::json!({"user": "alice", "function": function, "input_data": input, "forbid_ndp": forbid});
    let r = send("POST", &format!("{url}/f/"), Some(ALICE), message.to_string().as_bytes());
    (r.status, r.body)
}

fn metric(url: &str, name: &str) -> f64 {
    let text = send("GET", &format!("{url}/metrics"), Some(OPERATOR), b"").body;
    find_metric(&text, name).unwrap_or_else(|| panic!("{name} missing from {url}/metrics"))
}

fn text(n: usize, seed: usize) -> String {
    let words = ["memory", "page", "fault", "node", "remote", "warm", "cold", "call", "near", "data", "needle"];
    (0..n).map(|i| format!("{}{}", words[(i * 7 + i / 13 + seed) % words.len()], if i % 11 == 0 { "\n" } else { " " })).collect()
}

#[test]
fn offloaded_scans_on_two_storage_hosts_match_local_ones_and_leave_the_data_where_it_is() {
    let h = hosts("ndp-hosts", &[]);
    let (url, nodes) = (h.compute.clone(), h.storage.clone());
    h.hosts.within("compute", || {
        for f in ["wordcount", "grep", "sha256sum", "get"] {
            let wasm = std::fs::read(ebb::function_wasm("ndp", f)).unwrap();
            assert_eq!(ebb::http::upload_wasm(&url, "alice", f, &wasm, Some(ALICE)).status, 200, "{f}");
        }
        // Objects on both storage hosts, as the placement rule says.
        let keys: Vec<String> = (0..8).map(|k| format!("part-{k}")).collect();
        let homes: Vec<usize> = keys.iter().map(|k| ebb_runtime::ndp::node_for(&nodes, "alice", k).unwrap()).collect();
        assert!(homes.contains(&0) && homes.contains(&1), "{homes:?}");
        let texts: Vec<String> = (0..keys.len()).map(|k| text(60_000 + k * 1000, k)).collect();
        for (k, t) in keys.iter().zip(&texts) {
            assert_eq!(send("PUT", &format!("{url}/o/alice/{k}"), Some(ALICE), t.as_bytes()).status, 200);
        }
        let stored: usize = texts.iter().map(String::len).sum();
        let scans = |round: &str| {
            for (k, t) in keys.iter().zip(&texts) {
                assert_eq!(call(&url, "wordcount", k, false), (200, ebb::wordcount_of(t)), "wordcount {k} offloaded, {round}");
                let lines: Vec<&str> = t.lines().filter(|l| l.contains("needle")).collect();
                assert_eq!(call(&url, "grep", &format!("{k} needle"), false), (200, format!("{}\n{}\n", lines.len(), lines.join("\n"))));
                assert_eq!(call(&url, "sha256sum", k, false), (200, format!("{:x}", Sha256::digest(t.as_bytes()))));
            }
        };
        // The first round sends each storage host the functions it lacks.
        scans("first");
        let before = h.storage_link_bytes();
        scans("second");
        let offloaded = h.storage_link_bytes() - before;
        // 24 offloaded scans of ~120 KB objects: descriptors and replies cross, not the objects.
        eprintln!("{offloaded} bytes crossed the compute-storage links for 24 offloaded scans of {stored} bytes");
        assert!((offloaded as f64) < 0.05 * stored as f64, "{offloaded} bytes crossed for {stored} bytes scanned");
        assert_eq!(metric(&url, "ebb_ndp_offloads_total{outcome=\"offloaded\"}"), 48.0);
        for node in &nodes {
            assert!(metric(node, "ebb_ndp_served_total{outcome=\"accepted\"}") >= 1.0, "{node} ran some");
        }
        // The same scans run here: the objects cross.
        let before = h.storage_link_bytes();
        for (k, t) in keys.iter().zip(&texts) {
            assert_eq!(call(&url, "wordcount", k, true), (200, ebb::wordcount_of(t)), "wordcount {k} local");
        }
        let local = h.storage_link_bytes() - before;
        assert!(local as f64 > stored as f64, "{local} bytes crossed for {stored} bytes read here");
        assert_eq!(call(&url, "get", &keys[3], false), (200, texts[3].clone()));
    });
}

#[test]
fn a_storage_link_that_goes_down_ends_the_calls_that_need_it_within_the_bound() {
    let h = hosts("ndp-hosts-down", &["--call-timeout-s", "8"]);
    let (url, nodes) = (h.compute.clone(), h.storage.clone());
    h.hosts.within("compute", || {
        let wasm = std::fs::read(ebb::function_wasm("ndp", "wordcount")).unwrap();
        assert_eq!(ebb::http::upload_wasm(&url, "alice", "wordcount", &wasm, Some(ALICE)).status, 200);
        let keys: Vec<String> = (0..8).map(|k| format!("k{k}")).collect();
        let on = |n: usize| keys.iter().find(|k| ebb_runtime::ndp::node_for(&nodes, "alice", k) == Some(n)).unwrap().clone();
        let (k0, k1) = (on(0), on(1));
        let t = text(20_000, 1);
        for k in [&k0, &k1] {
            assert_eq!(send("PUT", &format!("{url}/o/alice/{k}"), Some(ALICE), t.as_bytes()).status, 200);
            assert_eq!(call(&url, "wordcount", k, false), (200, ebb::wordcount_of(&t)));
        }
        h.hosts.set_up(&h.storage_links[0].0, false);
        let start = Instant::now();
        let (status, body) = call(&url, "wordcount", &k0, false);
        assert!(status >= 500, "{status} {body}");
        assert!(start.elapsed() < Duration::from_secs(20), "bounded: {:?}", start.elapsed());
        // The other storage host is not affected.
        assert_eq!(call(&url, "wordcount", &k1, false), (200, ebb::wordcount_of(&t)));
        h.hosts.set_up(&h.storage_links[0].0, true);
        assert_eq!(call(&url, "wordcount", &k0, false), (200, ebb::wordcount_of(&t)), "back when the link is");
    });
}
