//! The `runtime run` command as a user runs it: a real process, its exit code and its output.

use std::path::PathBuf;
use std::process::{Command, Output};

use ebb::{Memnode, binary};

fn pattern_wat() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/modules/pattern.wat")
}

fn run(extra: &[&str]) -> Output {
    Command::new(binary("runtime"))
        .arg("run")
        .arg(pattern_wat())
        .args(["--repeat", "3", "--offload-every-call", "--stats"])
        .args(extra)
        .output()
        .expect("runtime runs")
}

fn check_offloaded_and_back(out: &Output, memnode_kind: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "runtime failed ({:?}):\n{stderr}", out.status);
    // Run 1 fills 64 MiB (16384 pages) plus the header page: the first offload sends all of it.
    // Run 2 verifies area A (reads only), writes the header and fills the 16 MiB area B (4096
    // pages): dirty tracking sends just those and drops area A's clean pages.
    let sent = |pages: u32, clean: u32| format!("[offload] {pages} pages sent to the {memnode_kind} memnode, 0 zero pages dropped, {clean} clean pages dropped");
    assert!(stderr.contains(&sent(16385, 0)), "{stderr}");
    assert!(stderr.contains(&sent(4097, 16384)), "{stderr}");
    let run3 = stderr.lines().find(|l| l.starts_with("[run 3]")).expect("stats of run 3");
    let fetched: u64 = run3
        .split_whitespace()
        .find_map(|w| w.strip_prefix("fetched="))
        .and_then(|v| v.parse().ok())
        .expect("fetched counter");
    // Runs 2 and 3 verify everything they offloaded, so every sent page came back.
    assert_eq!(fetched, 16385 + 20481, "{run3}");
}

#[test]
fn run_offloads_and_faults_back_on_the_embedded_memnode() {
    check_offloaded_and_back(&run(&[]), "local");
}

#[test]
fn run_offloads_and_faults_back_on_a_memnode_process() {
    let memnode = Memnode::start(&["--capacity", "1G"]).unwrap();
    check_offloaded_and_back(&run(&["--memnode", &memnode.addr]), "tcp");
}

#[test]
fn run_refuses_a_memnode_that_is_not_there() {
    let out = run(&["--memnode", "127.0.0.1:1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Cannot connect to the memnode at 127.0.0.1:1"), "{stderr}");
}

#[test]
fn runtime_without_userfaultfd_says_what_to_change() {
    // As `nobody`, /dev/userfaultfd (root-only) cannot be opened. Switching users needs root, as
    // the whole suite does (scripts/test.sh refuses to run without it): not being root fails here
    // rather than passing without having tested anything.
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (to run the runtime as nobody): run the suite as root");
    // `nobody` may not reach the checkout (e.g. under /root): run copies from a world-readable
    // temp dir.
    let dir = ebb::TempDir::new("nouffd");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (bin, wat) = (dir.0.join("runtime"), dir.0.join("pattern.wat"));
    std::fs::copy(binary("runtime"), &bin).unwrap();
    std::fs::copy(pattern_wat(), &wat).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .arg("run")
        .arg(&wat)
        .output()
        .expect("setpriv runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("userfaultfd is not available") && stderr.contains("/dev/userfaultfd"), "{stderr}");
}

#[test]
fn run_over_rdma_without_the_device_names_what_exists_and_tcp() {
    let out = run(&["--memnode", "rdma://127.0.0.1:9", "--rdma-device", "nosuch0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no RDMA device named nosuch0: this machine has "), "{stderr}");
    assert!(stderr.contains("Use a tcp:// memnode address instead"), "{stderr}");
}

#[test]
fn run_on_the_kmod_path_without_the_module_says_what_to_load() {
    let out = run(&["--fault-path", "kmod"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if std::path::Path::new("/dev/ebb").exists() {
        // The module is loaded here (the kmod guest): the path works like the others.
        check_offloaded_and_back(&out, "local");
        return;
    }
    assert!(!out.status.success(), "ran without the module:\n{stderr}");
    assert!(stderr.contains("insmod ebb.ko") && stderr.contains("/dev/ebb open"), "{stderr}");
}
