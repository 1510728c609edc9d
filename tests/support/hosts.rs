//! Several hosts on one machine (shared/notes/network.md): a network namespace per host, veth
//! links between them with addresses from 10.77.0.0/16 (used only inside these namespaces), `tc`
//! shaping on a link, processes started inside a host, and test code run from inside one. Every
//! namespace (and with it every link) is removed on drop. Needs root.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Why these hosts cannot be made here (not root, no `ip netns`), or None when they can.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("`ip netns` fails: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Some(format!("no `ip` command (install iproute2): {e}")),
    }
}

/// One end of a link: its host, device and address.
#[derive(Debug, Clone)]
pub struct End {
    pub host: String,
    pub dev: String,
    pub addr: String,
}

/// The hosts of one test.
#[derive(Debug)]
pub struct Hosts {
    prefix: String,
    hosts: Vec<String>,
    links: u32,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
}

impl Hosts {
    /// Namespaces for `names` (loopback up in each). Panics if they cannot be made: ask
    /// [`unavailable`] first.
    pub fn new(names: &[&str]) -> Hosts {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!("ebb{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let mut hosts = Hosts { prefix, hosts: Vec::new(), links: 0 };
        for name in names {
            let ns = hosts.ns(name);
            ip(&["netns", "add", &ns]);
            hosts.hosts.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        hosts
    }

    /// The namespace of host `name`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// A veth link between hosts `a` and `b` on its own /24; its two ends.
    pub fn link(&mut self, a: &str, b: &str) -> (End, End) {
        self.links += 1;
        let n = self.links;
        assert!(n < 250, "too many links");
        // Device names are at most 15 bytes; unique within their namespace is enough.
        let (da, db) = (format!("v{n}{b}"), format!("v{n}{a}"));
        let (da, db) = (da[..da.len().min(15)].to_string(), db[..db.len().min(15)].to_string());
        let tmp_a = format!("{}a{n}", self.prefix);
        let tmp_b = format!("{}b{n}", self.prefix);
        let (tmp_a, tmp_b) = (tmp_a[tmp_a.len().saturating_sub(15)..].to_string(), tmp_b[tmp_b.len().saturating_sub(15)..].to_string());
        ip(&["link", "add", &tmp_a, "type", "veth", "peer", "name", &tmp_b]);
        let mut ends = Vec::new();
        for (tmp, dev, host, last) in [(&tmp_a, &da, a, 1), (&tmp_b, &db, b, 2)] {
            let ns = self.ns(host);
            ip(&["link", "set", tmp, "netns", &ns]);
            ip(&["-n", &ns, "link", "set", tmp, "name", dev]);
            let addr = format!("10.77.{n}.{last}");
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", &ns, "link", "set", dev, "up"]);
            ends.push(End { host: host.to_string(), dev: dev.clone(), addr });
        }
        let b_end = ends.pop().expect("two ends");
        (ends.pop().expect("two ends"), b_end)
    }

    /// Shapes what `end` sends to `rate` (e.g. `1gbit`) with a token bucket.
    pub fn shape(&self, end: &End, rate: &str) {
        let ns = self.ns(&end.host);
        ip(&["-n", &ns, "link", "set", &end.dev, "txqueuelen", "1000"]);
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "tc", "qdisc", "replace", "dev", &end.dev, "root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms"])
            .output()
            .expect("run tc");
        assert!(out.status.success(), "tc on {}: {}", end.dev, String::from_utf8_lossy(&out.stderr).trim());
    }

    /// Removes the shaping of `end` (if any).
    pub fn unshape(&self, end: &End) {
        let _ = Command::new("ip").args(["netns", "exec", &self.ns(&end.host), "tc", "qdisc", "del", "dev", &end.dev, "root"]).output();
    }

    /// Takes a link end down or up.
    pub fn set_up(&self, end: &End, up: bool) {
        ip(&["-n", &self.ns(&end.host), "link", "set", &end.dev, if up { "up" } else { "down" }]);
    }

    /// Bytes `end` has received and sent.
    pub fn bytes(&self, end: &End) -> (u64, u64) {
        let out = Command::new("ip").args(["-n", &self.ns(&end.host), "-s", "-j", "link", "show", "dev", &end.dev]).output().expect("run ip");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        let stats = &v[0]["stats64"];
        (stats["rx"]["bytes"].as_u64().unwrap_or(0), stats["tx"]["bytes"].as_u64().unwrap_or(0))
    }

    /// `cmd` to be run inside host `name`.
    pub fn command(&self, name: &str, program: &std::path::Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(name)]).arg(program).stdin(Stdio::null());
        cmd
    }

    /// Starts a process inside host `name` that prints `prefix ADDR` when it listens.
    pub fn spawn_listening(&self, cmd: Command, prefix: &str) -> anyhow::Result<Child> {
        ebb_runtime::replay::spawn_listening(cmd, prefix).map(|(child, _)| child)
    }

    /// Runs `f` on a thread inside host `name`'s network (its sockets are that host's).
    pub fn within<T: Send>(&self, name: &str, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter(name);
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Moves the calling thread into host `name`'s network for good (a bench's main thread).
    pub fn enter(&self, name: &str) {
        let path = format!("/var/run/netns/{}", self.ns(name));
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on a namespace file descriptor we hold; it changes only this thread's
        // network namespace.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns into {path}: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Ebb's near-data setup as separate hosts: a memnode, a compute runtime and two storage
/// runtimes, each in its own namespace, the compute node linked to each storage node and every
/// runtime to the memnode. Tokens: `ops` (operator) and `alice`, plus a cluster secret.
#[derive(Debug)]
pub struct NdpHosts {
    children: Vec<Child>,
    pub hosts: Hosts,
    /// The compute node's URL, reached from inside host "compute".
    pub compute: String,
    pub storage: Vec<String>,
    /// The compute↔storage links (compute end, storage end).
    pub storage_links: Vec<(End, End)>,
    _dir: crate::TempDir,
}

pub const OPERATOR: &str = "ops-token-0123456789";
pub const ALICE: &str = "alice-token-0123456789";
pub const CLUSTER: &str = "a-long-random-cluster-secret";

impl NdpHosts {
    /// Starts everything; `storage_args` and `compute_args` go to those runtimes.
    pub fn start(tag: &str, storage_args: &[&str], compute_args: &[&str]) -> anyhow::Result<NdpHosts> {
        let dir = crate::TempDir::new(tag);
        let tokens = dir.0.join("tokens.txt");
        std::fs::write(&tokens, format!("ops {OPERATOR} operator\nalice {ALICE}\n"))?;
        let secret = dir.0.join("cluster.txt");
        std::fs::write(&secret, CLUSTER)?;
        let mut hosts = Hosts::new(&["mem", "compute", "st0", "st1"]);
        let (_, mem_c) = hosts.link("compute", "mem");
        let mem_s: Vec<End> = (0..2).map(|i| hosts.link(&format!("st{i}"), "mem").1).collect();
        let storage_links: Vec<(End, End)> = (0..2).map(|i| hosts.link("compute", &format!("st{i}"))).collect();
        let mut children = Vec::new();
        let mut memnode = hosts.command("mem", &crate::binary("memnode"));
        memnode.args(["--listen", "0.0.0.0:7070", "--capacity", "4G"]).stderr(Stdio::null());
        children.push(hosts.spawn_listening(memnode, "memnode listening on ")?);
        let storage: Vec<String> = storage_links.iter().map(|(_, s)| format!("http://{}:8080", s.addr)).collect();
        let common = |cmd: &mut Command, data: &std::path::Path, memnode: &str| {
            cmd.args(["serve", "--listen", "0.0.0.0:8080", "--tokens"])
                .arg(&tokens)
                .arg("--cluster-token-file")
                .arg(&secret)
                .arg("--data-dir")
                .arg(data)
                .args(["--memnode", &format!("tcp://{memnode}:7070")]);
        };
        for (i, url) in storage.iter().enumerate() {
            let mut cmd = hosts.command(&format!("st{i}"), &crate::binary("runtime"));
            common(&mut cmd, &dir.0.join(format!("st{i}")), &mem_s[i].addr);
            cmd.args(["--storage", "--storage-nodes", &storage.join(","), "--advertise", url]).args(storage_args);
            children.push(hosts.spawn_listening(cmd, "runtime listening on ")?);
        }
        let mut cmd = hosts.command("compute", &crate::binary("runtime"));
        common(&mut cmd, &dir.0.join("compute"), &mem_c.addr);
        cmd.args(["--storage-nodes", &storage.join(",")]).args(compute_args);
        children.push(hosts.spawn_listening(cmd, "runtime listening on ")?);
        let compute = "http://127.0.0.1:8080".to_string();
        Ok(NdpHosts { children, hosts, compute, storage, storage_links, _dir: dir })
    }

    /// Kills storage node `i` (SIGKILL).
    pub fn kill_storage(&mut self, i: usize) {
        let c = &mut self.children[1 + i];
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Shapes both directions of every compute↔storage link to `rate`, or unshapes them (None).
    pub fn shape_storage_links(&self, rate: Option<&str>) {
        for (c, s) in &self.storage_links {
            for end in [c, s] {
                match rate {
                    Some(r) => self.hosts.shape(end, r),
                    None => self.hosts.unshape(end),
                }
            }
        }
    }

    /// Bytes that crossed the compute↔storage links so far, both ways, all storage nodes.
    pub fn storage_link_bytes(&self) -> u64 {
        self.storage_links.iter().map(|(c, _)| self.hosts.bytes(c)).map(|(rx, tx)| rx + tx).sum()
    }
}

impl Drop for NdpHosts {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
