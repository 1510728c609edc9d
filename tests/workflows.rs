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

#[test]
fn svd_gives_the_singular_values_of_the_whole_matrix() {
    let data = TempDir::new("flow-svd");
    let rt = Runtime::start(&data.0, &[]).unwrap();
    put_blocks(&rt, "svd", &["svd__start", "svd__compute", "svd__merge"]);
    let url = format!("{}/w/alice/svd", rt.url);
    assert_eq!(send("PUT", &url, None, yaml("svd").as_bytes()).status, 200);
    // A = U diag(5, 2, 1) R with U's columns orthonormal (5 rows: three compute blocks of up to
    // two rows) and R a rotation: its singular values are 5, 2 and 1.
    let u = [[0.5, 0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.6], [0.5, -0.5, 0.0], [0.0, 0.0, 0.8]];
    let s = [5.0, 2.0, 1.0];
    let (c, sn) = (0.6_f64, 0.8_f64);
    let r = [[c, -sn, 0.0], [sn, c, 0.0], [0.0, 0.0, 1.0]];
    // U's third column is not orthogonal to the first as written: make it so (Gram-Schmidt).
    let mut u = u;
    let dot = |a: &[[f64; 3]; 5], i: usize, j: usize| (0..5).map(|k| a[k][i] * a[k][j]).sum::<f64>();
    for j in 0..3 {
        for i in 0..j {
            let d = dot(&u, i, j);
            for row in &mut u {
                row[j] -= d * row[i];
            }
        }
        let n = dot(&u, j, j).sqrt();
        for row in &mut u {
            row[j] /= n;
        }
    }
    let mut text = String::from("5 3\n");
    for row in &u {
        let a: Vec<String> = (0..3).map(|col| format!("{}", (0..3).map(|k| row[k] * s[k] * r[k][col]).sum::<f64>())).collect();
        text.push_str(&a.join(" "));
        text.push('\n');
    }
    let r = send("POST", &url, None, serde_json::json!({ "start": text }).to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["result"]["res"], "5.000000 2.000000 1.000000", "{}", r.body);
    assert_eq!(v["blocks"].as_array().unwrap().iter().filter(|b| b["block"] == "svd__compute.block_0").count(), 3);
}

#[test]
fn recognizer_routes_through_its_switch_blocks() {
    let data = TempDir::new("flow-rec");
    let rt = Runtime::start(&data.0, &[]).unwrap();
    let blocks = ["upload", "adult", "violence", "mosaic", "extract", "translate", "censor"].map(|b| format!("recognizer__{b}"));
    put_blocks(&rt, "recognizer", &blocks.iter().map(String::as_str).collect::<Vec<_>>());
    let url = format!("{}/w/alice/recognizer", rt.url);
    assert_eq!(send("PUT", &url, None, yaml("recognizer").as_bytes()).status, 200);
    let call = |img: &str| {
        let r = send("POST", &url, None, serde_json::json!({ "start": img }).to_string().as_bytes());
        assert_eq!(r.status, 200, "{}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let ran: Vec<String> = v["blocks"].as_array().unwrap().iter().map(|b| b["block"].as_str().unwrap().trim_end_matches(".block_0").to_string()).collect();
        (v["result"].clone(), ran)
    };
    // Legal: text extracted, translated, passed by the censor.
    let (result, ran) = call("a photo\ntext:hello world\n");
    assert_eq!(result, serde_json::json!({ "text": "HELLO WORLD" }));
    assert!(!ran.contains(&"recognizer__mosaic".to_string()), "{ran:?}");
    // One check says illegal: masked, and no text is extracted.
    let (result, ran) = call("adult photo text:x");
    assert_eq!(result, serde_json::json!({ "content": "##### ##### ####:#" }));
    assert!(!ran.contains(&"recognizer__extract".to_string()), "{ran:?}");
    // The censor says illegal: masked after the text went through.
    let (result, ran) = call("photo text:forbidden words");
    assert_eq!(result, serde_json::json!({ "content": "##### ####:######### #####" }));
    assert!(ran.contains(&"recognizer__translate".to_string()), "{ran:?}");
}

#[test]
fn a_trapping_block_fails_the_workflow_and_a_slow_one_times_it_out() {
    let data = TempDir::new("flow-fail");
    let rt = Runtime::start(&data.0, &["--workflow-timeout-s", "2"]).unwrap();
    put_blocks(&rt, "wordcount", &WORDCOUNT);
    let url = format!("{}/w/alice/wordcount", rt.url);
    assert_eq!(send("PUT", &url, None, yaml("wordcount").as_bytes()).status, 200);
    // A count block that spins: the workflow ends at its own deadline (2 s), not the call's.
    let spin = wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "_start") (loop (br 0))))"#).unwrap();
    assert_eq!(upload_wasm(&rt.url, "alice", "wordcount__count", &spin, None).status, 200);
    let start = std::time::Instant::now();
    let r = send("POST", &url, None, br#"{"start": "a b\nc"}"#);
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    // A count block that traps: the workflow fails naming it, merge never runs.
    let trap = wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "_start") unreachable))"#).unwrap();
    assert_eq!(upload_wasm(&rt.url, "alice", "wordcount__count", &trap, None).status, 200);
    let r = send("POST", &url, None, br#"{"start": "a b\nc"}"#);
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("wordcount__count.block_0") && r.body.contains("unreachable"), "{}", r.body);
}

#[test]
fn the_cli_uploads_invokes_shows_and_polls_workflows() {
    let data = TempDir::new("flow-cli");
    let rt = Runtime::start(&data.0, &[]).unwrap();
    put_blocks(&rt, "wordcount", &WORDCOUNT);
    let file = data.0.join("wordcount.yaml");
    std::fs::write(&file, yaml("wordcount")).unwrap();
    let text = data.0.join("text.txt");
    std::fs::write(&text, "one two\ntwo three\n").unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(ebb::binary("runtime")).arg("workflow").args(args).args(["--server", &rt.url]).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, out, err) = cli(&["upload", "alice", "wordcount", file.to_str().unwrap()]);
    assert!(ok && out.contains("uploaded workflow alice/wordcount"), "{out} {err}");
    let (ok, out, err) = cli(&["invoke", "alice", "wordcount", "--input-file", &format!("start={}", text.display())]);
    assert!(ok, "{out} {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["result"]["res"], "one\t1\nthree\t1\ntwo\t2\n");
    let (ok, out, _) = cli(&["show", "alice", "wordcount"]);
    assert!(ok && out.contains("\"FOREACH\""), "{out}");
    let (ok, id, _) = cli(&["invoke", "alice", "wordcount", "--input", "start=a a", "--async"]);
    assert!(ok, "{id}");
    let id = id.trim().to_string();
    let mut last = String::new();
    assert!(wait_until(Duration::from_secs(30), || {
        last = cli(&["status", "alice", "wordcount", &id]).1;
        !last.starts_with("RUNNING")
    }));
    assert!(last.contains(r#""res":"a\t2\n""#), "{last}");
    // A refused file: the command fails with the server's reason.
    std::fs::write(&file, "workflow_name: wordcount\ntemplates: [\n").unwrap();
    let (ok, out, err) = cli(&["upload", "alice", "wordcount", file.to_str().unwrap()]);
    assert!(!ok && format!("{out}{err}").contains("line"), "{out} {err}");
}
