//! Faasm compatibility: functions of the kinds Faasm's own demo set has (functions/compat, written
//! here against Faasm's SDK and built with Ebb's toolchain) run through the HTTP API of a real
//! `runtime serve` with Faasm's results; what Ebb does not support is refused at upload, naming
//! the import.

use ebb::http::{invoke, send, upload_wasm};
use ebb::{Runtime, TempDir, function_wasm};

fn runtime_with_compat(name: &str) -> (TempDir, Runtime) {
    let data = TempDir::new(name);
    let rt = Runtime::start(&data.0, &[]).unwrap();
    for f in ["io", "chain", "state", "counter", "files", "memory", "runtime", "fds"] {
        let wasm = std::fs::read(function_wasm("compat", f)).unwrap();
        let r = upload_wasm(&rt.url, "faasm", f, &wasm, None);
        assert_eq!(r.status, 200, "upload compat/{f}: {}", r.body);
    }
    (data, rt)
}

fn ok(rt: &Runtime, f: &str, input: &str) -> String {
    let r = invoke(rt, "faasm", f, input);
    assert_eq!(r.status, 200, "compat/{f}: {}", r.body);
    r.body
}

fn state(rt: &Runtime, key: &str) -> Vec<u8> {
    let r = ebb_runtime::api::client::request("GET", &format!("{}/s/faasm/{key}", rt.url), None, b"", None).unwrap();
    assert_eq!(r.0, 200, "state {key}: {}", String::from_utf8_lossy(&r.1));
    r.1
}

#[test]
fn faasm_functions_run_with_faasms_results() {
    let (_data, rt) = runtime_with_compat("compat");
    // Input and output, both output forms.
    assert_eq!(ok(&rt, "io", "abc"), "in=abc len=3");
    assert_eq!(ok(&rt, "io", "bytes"), "in=bytes len=5");
    // Chaining by name and by pointer, a batch, a failing chained call.
    assert_eq!(ok(&rt, "chain", ""), "name=in=chained len=7 ptr=144 batch=0 bad=1");

    // State: values, offsets, pointers, partial and masked pushes, appends, arrays.
    let words = ok(&rt, "state", "");
    assert_eq!(words, "size=6 plain2=9 off3=9 same=1 seen=17 readptr=13 offptr=14 appended=321");
    assert_eq!(state(&rt, "plain"), [1, 2, 9, 9, 5, 6]);
    assert_eq!(state(&rt, "shared"), (10..18).collect::<Vec<u8>>(), "written through the pointer, pushed");
    assert_eq!(state(&rt, "partial"), [0, 0, 0, 8], "only the flagged byte was pushed");
    assert_eq!(state(&rt, "masked"), [0, 21, 22, 0], "only the masked bytes were pushed");
    let arr: Vec<i32> = state(&rt, "arr").chunks(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(arr, [0, 0, 42, 0]);
    // A second call gives the same results (its appends start from a cleared list).
    assert_eq!(ok(&rt, "state", ""), words);

    // A value mapped by pointer is the node's pages of it, shared by the user's calls here (each
    // call a fresh instance, since mapping grows its memory): the next call sees an increment
    // never pushed, the global value only what was pushed, and a write through the API reaches
    // the mapped pages too.
    assert_eq!(ok(&rt, "counter", ""), "1");
    assert_eq!(ok(&rt, "counter", ""), "2", "the previous call's write through the pointer, not pushed");
    assert_eq!(state(&rt, "counter"), [0, 0, 0, 0], "nothing pushed yet");
    assert_eq!(ok(&rt, "counter", "push"), "3");
    assert_eq!(state(&rt, "counter"), [3, 0, 0, 0]);
    let r = ebb_runtime::api::client::request("PUT", &format!("{}/s/faasm/counter", rt.url), None, &[10, 0, 0, 0], None).unwrap();
    assert_eq!(r.0, 200, "{}", String::from_utf8_lossy(&r.1));
    assert_eq!(ok(&rt, "counter", ""), "11");

    // Files: the function's own root (with Faasm's /etc/hosts), the shared area, state from a file.
    assert_eq!(ok(&rt, "files", ""), "own=own file hosts=127.0.0.1 shared=shared file state=8");
    assert_eq!(state(&rt, "from_file"), b"own file");

    // A 2 MiB stack array, mmap/munmap, a 64 MiB heap block, long-double printf.
    assert_eq!(ok(&rt, "memory", ""), "stack=512 mmap=7 heap=3 ld=0.33333333333333333333");
    // Time, random, Faasm's environment and argv, conf flags.
    let plain = "mono=1 epoch=1 clock=1 rand=1 env=/ argv0=function.wasm on=1 off=0 args=";
    assert_eq!(ok(&rt, "runtime", ""), plain);
    // Faasm's `cmdline` message field: the words after argv[0], for that call only.
    let msg = serde_json::json!({"user": "faasm", "function": "runtime", "cmdline": "alpha B_eta  G$mma d3-lt4"});
    let r = send("POST", &format!("{}/f/", rt.url), None, msg.to_string().as_bytes());
    assert_eq!((r.status, r.body.as_str()), (200, format!("{plain}alpha,B_eta,G$mma,d3-lt4").as_str()));
    assert_eq!(ok(&rt, "runtime", ""), plain, "the next call has no command line");
    // A throw cannot unwind on this wasm32 libc++: the call ends with an error, the runtime lives.
    let r = invoke(&rt, "faasm", "runtime", "throw");
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("__cxa_throw"), "{}", r.body);
    assert_eq!(ok(&rt, "io", "after"), "in=after len=5");
}

#[test]
fn open_files_are_the_calls_and_bounded() {
    let (_data, rt) = runtime_with_compat("compat-fds");
    // A call that leaves a file open: the next gets the same descriptor (nothing was left open).
    let first = ok(&rt, "fds", "leak");
    assert!(first.starts_with("fd="), "{first}");
    for _ in 0..3 {
        assert_eq!(ok(&rt, "fds", "leak"), first);
    }
    // A call opening files without end is stopped at the bound with a clear error (each is a
    // descriptor of the runtime process); the runtime and the function go on.
    let r = invoke(&rt, "faasm", "fds", "many");
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("more than 256 files, directories and streams open at once"), "{}", r.body);
    assert_eq!(ok(&rt, "fds", "leak"), first);
}

#[test]
fn tenants_do_not_share_files() {
    let (data, rt) = runtime_with_compat("compat-files");
    assert_eq!(ok(&rt, "files", ""), "own=own file hosts=127.0.0.1 shared=shared file state=8");
    let files = data.0.join("files");
    assert_eq!(std::fs::read(files.join("faasm/functions/files/notes.txt")).unwrap(), b"own file");
    assert_eq!(std::fs::read(files.join("faasm/shared/dir/shared.txt")).unwrap(), b"shared file");
    // Another user's function of the same name starts with a root of its own.
    let wasm = std::fs::read(function_wasm("compat", "files")).unwrap();
    assert_eq!(upload_wasm(&rt.url, "other", "files", &wasm, None).status, 200);
    std::fs::write(files.join("faasm/functions/files/etc/hosts"), "10.0.0.1\tsecret\n").unwrap();
    let r = ebb::http::invoke(&rt, "other", "files", "");
    assert_eq!((r.status, r.body.as_str()), (200, "own=own file hosts=127.0.0.1 shared=shared file state=8"));
    assert_eq!(std::fs::read(files.join("other/shared/dir/shared.txt")).unwrap(), b"shared file");
}

/// A module importing `module.name` with signature `(param i32) (result i32)` (or a memory).
fn importing(module: &str, name: &str) -> Vec<u8> {
    let import = if name == "memory" {
        format!(r#"(import "{module}" "memory" (memory 1 1))"#)
    } else {
        format!(r#"(import "{module}" "{name}" (func (param i32) (result i32))) (memory (export "memory") 1)"#)
    };
    wat::parse_str(format!(r#"(module {import} (func (export "_start")))"#)).unwrap()
}

#[test]
fn what_ebb_does_not_support_is_refused_at_upload_naming_the_import() {
    let data = TempDir::new("compat-refused");
    let rt = Runtime::start(&data.0, &[]).unwrap();
    for (module, name, family) in [
        ("env", "MPI_Init", "MPI is not supported"),
        ("env", "omp_get_num_threads", "OpenMP is not supported"),
        ("env", "__faasm_sm_reduce", "OpenMP is not supported"),
        ("env", "__faasm_chain_py", "Python functions are not supported"),
        ("env", "__faasm_s3_get_num_buckets", "Faasm's S3 calls are not supported"),
        ("wasi", "thread-spawn", "wasm threads are not supported"),
        ("env", "memory", "an imported memory"),
        ("env", "dup", "not in Ebb's host interface"),
    ] {
        let r = upload_wasm(&rt.url, "faasm", "refused", &importing(module, name), None);
        assert_eq!(r.status, 400, "{module}.{name}: {}", r.body);
        assert!(r.body.contains(&format!("{module}.{name} ({family}")), "{module}.{name}: {}", r.body);
    }
    // So is a shared memory, defined or imported (wasm threads).
    for m in [r#"(memory (export "memory") 1 1 shared)"#, r#"(import "env" "memory" (memory 1 1 shared))"#] {
        let wasm = wat::parse_str(format!(r#"(module {m} (func (export "_start")))"#)).unwrap();
        let r = upload_wasm(&rt.url, "faasm", "refused", &wasm, None);
        assert_eq!(r.status, 400, "{m}: {}", r.body);
        assert!(r.body.contains("wasm threads are not supported"), "{m}: {}", r.body);
    }
    // A supported import with the wrong signature is refused too.
    let r = upload_wasm(&rt.url, "faasm", "refused", &importing("env", "__faasm_write_output"), None);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("do not match Ebb's host interface"), "{}", r.body);
    assert_eq!(send("GET", &format!("{}/ping", rt.url), None, b"").body, "PONG");
}

#[test]
fn what_a_users_functions_write_to_disk_is_bounded() {
    let data = TempDir::new("compat-disk");
    let rt = Runtime::start(&data.0, &["--max-files-per-user", "1M", "--max-file-entries-per-user", "24"]).unwrap();
    for user in ["faasm", "other"] {
        let wasm = std::fs::read(function_wasm("compat", "disk")).unwrap();
        assert_eq!(upload_wasm(&rt.url, user, "disk", &wasm, None).status, 200);
    }
    let call = |user: &str, input: &str| {
        let r = invoke(&rt, user, "disk", input);
        assert_eq!(r.status, 200, "{input}: {}", r.body);
        let words: Vec<u64> = r.body.split(' ').map(|w| w.split_once('=').unwrap().1.parse().unwrap()).collect();
        (words[0], words[1] == 1)
    };
    let used = || {
        let files = data.0.join("files").join("faasm").join("functions").join("disk").join("tmp").join("blob");
        std::fs::metadata(files).map_or(0, |m| m.len())
    };
    assert_eq!(call("faasm", "write 512"), (512, false));
    // The next write passes the bound part way: refused with EDQUOT, what was written stays.
    let (done, refused) = call("faasm", "write 2048");
    assert!(refused && done < 1024 - 512 + 64, "{done} KiB written past a 1 MiB bound holding 512 KiB");
    assert_eq!(used(), done * 1024, "the file holds exactly the writes that were let through");
    // Another tenant has its own bound; deleting gives room back.
    assert_eq!(call("other", "write 900"), (900, false));
    assert_eq!(call("faasm", "clean"), (0, false));
    assert_eq!(used(), 0);
    assert_eq!(call("faasm", "write 900"), (900, false));
    // Entries are bounded too (the function's system files and directories count).
    let (made, refused) = call("faasm", "files 100");
    assert!(refused && (5..24).contains(&made), "{made} files made under a 24-entry bound");
    call("faasm", "clean");
    assert_eq!(call("faasm", "files 5"), (5, false));
}

#[test]
fn a_state_pointer_taken_in_the_init_phase_is_refused() {
    let data = TempDir::new("compat-zygote");
    let rt = Runtime::start(&data.0, &[]).unwrap();
    let wat = r#"(module
        (import "env" "__faasm_read_state_ptr" (func $ptr (param i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 16) "k\00")
        (func (export "_faasm_zygote") (result i32) (drop (call $ptr (i32.const 16) (i32.const 8))) (i32.const 0))
        (func (export "_start")))"#;
    assert_eq!(upload_wasm(&rt.url, "faasm", "zygote_ptr", wat.as_bytes(), None).status, 200);
    let r = invoke(&rt, "faasm", "zygote_ptr", "");
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("_faasm_zygote took a state pointer"), "{}", r.body);
    // The runtime serves on.
    assert_eq!(invoke(&rt, "faasm", "zygote_ptr", "").status, 500);
    assert_eq!(ebb_runtime::api::client::request("GET", &format!("{}/ping", rt.url), None, b"", None).unwrap().0, 200);
}
