//! Workflows through the HTTP API of a real `runtime serve`: DataFlower's `workflow_info.yaml`
//! uploaded as it is, the C sample blocks built by the repository's script.

use std::time::Duration;

use ebb::http::{send, upload_wasm};
use ebb::{Runtime, TempDir, function_wasm, wait_until, wordcount_of};

fn yaml(name: &str) -> String {
    std::fs::read_to_string(format!("{}/functions/workflows/{name}/workflow_info.yaml", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn put_blocks(rt: &Runtime, dir: &str, names: &[&str]) {
    for n in names {
        let wasm = std::fs::read(function_wasm(dir, n)).expect("sample built");
        let r = upload_wasm(&rt.url, "alice", n, &wasm, None);
        assert_eq!(r.status, 200, "{n}: {}", r.body);
    }
}

const WORDCOUNT: [&str; 3] = ["wordcount__start", "wordcount__count", "wordcount__merge"];

#[test]
fn wordcount_from_its_yaml_over_http() {
    let data = TempDir::new("flow-wc");
    let rt = Runtime::start(&data.0, &[]).unwrap();
    let url = format!("{}/w/alice/wordcount", rt.url);
    // Uploaded before its functions: refused, naming the first block's function and line.
    let r = send("PUT", &url, None, yaml("wordcount").as_bytes());
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("line") && r.body.contains("wordcount__start") && r.body.contains("not uploaded"), "{}", r.body);
    put_blocks(&rt, "wordcount", &WORDCOUNT);
    let r = send("PUT", &url, None, yaml("wordcount").as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);

    let text = "the quick brown fox\njumps over the lazy dog\n\nthe end\n";
    let r = send("POST", &url, None, serde_json::json!({ "start": text }).to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["result"]["res"], wordcount_of(text), "{}", r.body);
    // Three lines: three count blocks between start and merge.
    let blocks = v["blocks"].as_array().unwrap();
    assert_eq!(blocks.iter().filter(|b| b["block"] == "wordcount__count.block_0").count(), 3, "{}", r.body);

    // The DAG as parsed.
    let g = send("GET", &url, None, b"");
    let dag: serde_json::Value = serde_json::from_str(&g.body).unwrap();
    assert_eq!(dag["name"], "wordcount");
    assert_eq!(dag["blocks"].as_array().unwrap().len(), 3);

    // A malformed file changes nothing already uploaded.
    let bad = yaml("wordcount").replace("type: FOREACH", "type: FOREACH\n   oops: [");
    let r = send("PUT", &url, None, bad.as_bytes());
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("line"), "{}", r.body);
    let r = send("POST", &url, None, br#"{"start": "a b a"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(r#""res":"a\t2\nb\t1\n""#), "{}", r.body);

    // Asynchronous, then polled; an empty text is a FOREACH of no elements.
    let id = send("POST", &url, None, br#"{"start": "", "async": true}"#).body;
    assert!(id.parse::<u32>().is_ok(), "{id}");
    let mut last = String::new();
    assert!(wait_until(Duration::from_secs(30), || {
        last = send("GET", &format!("{url}/{id}"), None, b"").body;
        last != "RUNNING"
    }));
    assert!(last.contains(r#""res":"""#), "{last}");

    // Bad requests.
    assert_eq!(send("POST", &url, None, b"[1]").status, 400);
    assert!(send("POST", &url, None, b"{}").body.contains("start"));
    assert_eq!(send("POST", &format!("{}/w/alice/nothing", rt.url), None, b"{}").status, 404);
}
