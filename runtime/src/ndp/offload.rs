//! Offloaded calls: `storageCallAndAwait` run on the object's storage node, its memory following
//! by pages through the memnode (see `pager::share` and `exec::lent`).
//!
//! ```text
//!   compute node                         storage node (--storage)
//!   guest: storageCallAndAwait(key, fn)
//!   lend memory (dirty pages → memnode)
//!   POST /ndp/call  {descriptor} ───────► admission (CPU, memory, in flight) ── 503 busy
//!                                         function by digest ── 409 missing: the compute node
//!                                           PUTs /f/USER/FUNCTION and asks once more
//!                                         borrow memory (tickets) ── 403 refused
//!                                         run table entry; changed pages → memnode
//!   take back changed pages ◄──────────── {rc, globals, size, changed}
//!   restore globals, continue
//! ```
//! A refusal (busy, no such function after the push, tickets refused, node unreachable before the
//! request was sent) runs the function here instead: nothing ran there. A failure after the
//! request was sent (the node died, timed out, the guest trapped there) fails the call with the
//! node's error and discards the instance: the memnode may hold half of what it wrote.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ebb_memnode::tokens::Secret;
use ebb_memnode::{RegionId, Ticket};
use serde::{Deserialize, Serialize};
use wasmtime::Val;

use super::remote::marked;
use crate::pager::{LentMemory, PageRun, PageSource};

/// The path a storage node takes offloaded calls at.
pub const CALL_PATH: &str = "/ndp/call";

/// An offloaded call, as the compute node sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub user: String,
    /// The function's name (without the user).
    pub function: String,
    /// Hex SHA-256 of the function's wasm: the storage node runs exactly this version.
    pub digest: String,
    /// The object the offloaded part reads.
    pub key: String,
    /// The function-table entry to run, and its arguments.
    pub index: u32,
    pub args: Vec<i32>,
    pub globals: Vec<Global>,
    pub memory: Memory,
    /// What is left of the call's time.
    pub timeout_ms: u64,
}

/// A global's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Global {
    pub name: String,
    /// `i32`, `i64`, `f32` or `f64`.
    #[serde(rename = "type")]
    pub ty: String,
    /// The value's bits.
    pub bits: u64,
}

/// A lent memory (see [`LentMemory`]): page runs are `[start, len, source]` with source 1 for
/// the snapshot's region and 2 for the memory's own; tickets in hex.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Memory {
    pub pages: usize,
    pub region: u64,
    pub region_ticket: String,
    pub snapshot: u64,
    pub snapshot_ticket: String,
    pub runs: Vec<[usize; 3]>,
}

/// What the storage node answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub rc: i32,
    /// What the offloaded part passed to `__faasm_write_output`.
    pub output: Vec<u8>,
    pub globals: Vec<Global>,
    /// The memory's size afterwards, in bytes.
    pub size: usize,
    /// Runs `[start, len]` of the pages it changed (now in the memory's region).
    pub changed: Vec<[usize; 2]>,
}

/// Why an offload did not give a reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OffloadError {
    /// Nothing ran there: run the function here.
    #[error("{0}")]
    Refused(String),
    /// The storage node lacks this function version: send it, and ask again.
    #[error("{0}")]
    NeedsFunction(String),
    /// It may have run part way: the call fails.
    #[error("{0}")]
    Failed(String),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex_ticket(s: &str) -> Option<Ticket> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut t = [0u8; 16];
    for (i, b) in t.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(t)
}

impl From<&LentMemory> for Memory {
    fn from(m: &LentMemory) -> Memory {
        let runs = m
            .runs
            .iter()
            .map(|r| [r.start, r.len, if r.source == PageSource::Snapshot { 1 } else { 2 }])
            .collect();
        Memory {
            pages: m.pages,
            region: m.region.0,
            region_ticket: hex(&m.region_ticket),
            snapshot: m.snapshot.0,
            snapshot_ticket: hex(&m.snapshot_ticket),
            runs,
        }
    }
}

impl Memory {
    /// The lent memory this describes, or what is wrong with it.
    pub fn lent(&self) -> Result<LentMemory, String> {
        let ticket = |t: &str| unhex_ticket(t).ok_or_else(|| "a ticket must be 32 hex digits".to_string());
        let runs = self
            .runs
            .iter()
            .map(|&[start, len, source]| {
                let source = match source {
                    1 => PageSource::Snapshot,
                    2 => PageSource::Region,
                    _ => return Err(format!("unknown page source {source}")),
                };
                Ok(PageRun { start, len, source })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(LentMemory {
            pages: self.pages,
            region: RegionId(self.region),
            region_ticket: ticket(&self.region_ticket)?,
            snapshot: RegionId(self.snapshot),
            snapshot_ticket: ticket(&self.snapshot_ticket)?,
            runs,
        })
    }
}

/// Globals as they travel (only numbers: a call's state has no references).
pub fn globals_out(globals: &[(String, Val)]) -> Result<Vec<Global>, String> {
    globals
        .iter()
        .map(|(name, v)| {
            let (ty, bits) = match *v {
                Val::I32(x) => ("i32", u64::from(x.cast_unsigned())),
                Val::I64(x) => ("i64", x.cast_unsigned()),
                Val::F32(x) => ("f32", u64::from(x)),
                Val::F64(x) => ("f64", x),
                _ => return Err(format!("global {name} is not a number")),
            };
            Ok(Global { name: name.clone(), ty: ty.into(), bits })
        })
        .collect()
}

/// Globals as an instance takes them.
pub fn globals_in(globals: &[Global]) -> Result<Vec<(String, Val)>, String> {
    globals
        .iter()
        .map(|g| {
            let narrow = || u32::try_from(g.bits).map_err(|_| format!("global {} does not fit {}", g.name, g.ty));
            let v = match g.ty.as_str() {
                "i32" => Val::I32(narrow()?.cast_signed()),
                "i64" => Val::I64(g.bits.cast_signed()),
                "f32" => Val::F32(narrow()?),
                "f64" => Val::F64(g.bits),
                other => return Err(format!("global {} has unknown type {other}", g.name)),
            };
            Ok((g.name.clone(), v))
        })
        .collect()
}

/// Runs of consecutive pages as `[start, len]`.
pub fn page_runs(pages: &[usize]) -> Vec<[usize; 2]> {
    pages.chunk_by(|a, b| *b == *a + 1).map(|r| [r[0], r.len()]).collect()
}

/// The pages of `[start, len]` runs, or None when a run is absurd for `limit` pages.
pub fn pages_of(runs: &[[usize; 2]], limit: usize) -> Option<Vec<usize>> {
    let mut pages = Vec::new();
    for &[start, len] in runs {
        let end = start.checked_add(len).filter(|&e| e <= limit)?;
        pages.extend(start..end);
    }
    Some(pages)
}

/// Bytes an offload moved over the compute↔storage link: (sent, received).
pub type LinkBytes = (u64, u64);

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5).min(timeout)))
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// Whether a request error happened before the request can have reached the node.
fn before_sending(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::AddrNotAvailable
                | std::io::ErrorKind::NetworkUnreachable
                | std::io::ErrorKind::HostUnreachable
        ),
        _ => false,
    }
}

/// Sends `request` to the storage node `node`, waiting at most `timeout`.
pub fn send(node: &str, cluster: Option<&Secret>, request: &Request, timeout: Duration) -> (Result<Reply, OffloadError>, LinkBytes) {
    let body = match serde_json::to_vec(request) {
        Ok(b) => b,
        Err(e) => return (Err(OffloadError::Refused(format!("cannot encode the call: {e}"))), (0, 0)),
    };
    let url = format!("{}{CALL_PATH}", node.trim_end_matches('/'));
    let sent = body.len() as u64;
    let reply = marked(agent(timeout).post(&url), cluster, &request.user).header("content-type", "application/json").send(&body[..]);
    let mut reply = match reply {
        Ok(r) => r,
        Err(e) if before_sending(&e) => return (Err(OffloadError::Refused(format!("storage node {node} is unreachable: {e}"))), (sent, 0)),
        Err(e) => return (Err(OffloadError::Failed(format!("storage node {node} failed during the offloaded call: {e}"))), (sent, 0)),
    };
    let status = reply.status().as_u16();
    let text = match reply.body_mut().with_config().limit(64 << 20).read_to_vec() {
        Ok(t) => t,
        Err(e) => return (Err(OffloadError::Failed(format!("storage node {node} failed during the offloaded call: {e}"))), (sent, 0)),
    };
    let bytes = (sent, text.len() as u64);
    let says = || String::from_utf8_lossy(&text).trim().to_string();
    let result = match status {
        200 => serde_json::from_slice(&text).map_err(|e| OffloadError::Failed(format!("storage node {node} answered an unreadable reply: {e}"))),
        409 => Err(OffloadError::NeedsFunction(says())),
        400..=499 | 503 => Err(OffloadError::Refused(format!("storage node {node} refused the offload ({status}): {}", says()))),
        _ => Err(OffloadError::Failed(format!("the offloaded call failed on storage node {node} ({status}): {}", says()))),
    };
    (result, bytes)
}

/// Sends a function's wasm to a storage node (as its user), so it can run offloaded calls of it.
pub fn push_function(node: &str, cluster: Option<&Secret>, user: &str, function: &str, wasm: &[u8], timeout: Duration) -> Result<(), String> {
    let url = format!("{}/f/{user}/{function}", node.trim_end_matches('/'));
    let mut reply = marked(agent(timeout).put(&url), cluster, user).send(wasm).map_err(|e| format!("storage node {node}: {e}"))?;
    let status = reply.status().as_u16();
    if status == 200 {
        return Ok(());
    }
    Err(format!("storage node {node} refused function {user}/{function} ({status}): {}", reply.body_mut().read_to_string().unwrap_or_default().trim()))
}

/// When a storage node takes offloaded calls: AutoNDP refuses above 0.8 of CPU, memory or its
/// in-flight limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdmissionLimits {
    /// Busy fraction of all CPUs (over the last sample) above which offloads are refused.
    pub cpu: f64,
    /// Used fraction of the machine's memory (1 − MemAvailable/MemTotal) above which they are.
    pub memory: f64,
    /// Offloaded calls running at once.
    pub in_flight: usize,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits { cpu: 0.8, memory: 0.8, in_flight: 8 }
    }
}

/// A storage node's admission control and offload counters.
#[derive(Debug, Default)]
pub struct Admission {
    pub limits: AdmissionLimits,
    in_flight: AtomicUsize,
    /// The previous /proc/stat reading: when, busy and total jiffies, and the fraction then.
    cpu: Mutex<Option<(Instant, u64, u64, f64)>>,
}

/// One admitted offload; leaving ends it.
#[derive(Debug)]
pub struct Admitted<'a>(&'a Admission);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// (busy, total) jiffies of all CPUs.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait are not busy.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Used fraction of memory, from /proc/meminfo.
fn memory_used() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    let (total, available) = (field("MemTotal:")?, field("MemAvailable:")?);
    (total > 0.0).then(|| 1.0 - available / total)
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Admission {
        Admission { limits, ..Default::default() }
    }

    /// Busy fraction of the CPUs since the previous look (a fresh 50 ms sample when that was
    /// more than a second ago).
    fn cpu_busy(&self) -> f64 {
        let mut last = self.cpu.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let Some((busy, total)) = cpu_jiffies() else { return 0.0 };
        let (b0, t0) = match *last {
            Some((at, _, _, f)) if now.duration_since(at) < Duration::from_millis(100) => return f,
            Some((at, b, t, _)) if now.duration_since(at) < Duration::from_secs(1) => (b, t),
            _ => {
                std::thread::sleep(Duration::from_millis(50));
                let Some((b1, t1)) = cpu_jiffies() else { return 0.0 };
                let f = if t1 > total { (b1 - busy) as f64 / (t1 - total) as f64 } else { 0.0 };
                *last = Some((Instant::now(), b1, t1, f));
                return f;
            }
        };
        let f = if total > t0 { busy.saturating_sub(b0) as f64 / (total - t0) as f64 } else { 0.0 };
        *last = Some((now, busy, total, f));
        f
    }

    /// Forgets the CPU reading, so the next look takes a fresh sample: what this node just did
    /// for an offload (compiling a function sent for it) is not load to refuse that offload for.
    pub fn resample_cpu(&self) {
        *self.cpu.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Admits one offload, or says why not.
    pub fn admit(&self) -> Result<Admitted<'_>, String> {
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let admitted = Admitted(self);
        if n >= self.limits.in_flight {
            return Err(format!("{n} offloaded calls are running here, the most allowed (--ndp-max-in-flight)"));
        }
        if let Some(used) = memory_used().filter(|&u| u > self.limits.memory) {
            return Err(format!("{:.0} % of memory is in use, above the {:.0} % limit", used * 100.0, self.limits.memory * 100.0));
        }
        let busy = self.cpu_busy();
        if busy > self.limits.cpu {
            return Err(format!("the CPUs are {:.0} % busy, above the {:.0} % limit", busy * 100.0, self.limits.cpu * 100.0));
        }
        Ok(admitted)
    }
}

/// Offload counters of one runtime (both roles), for `/metrics`.
#[derive(Debug, Default)]
pub struct NdpCounters {
    /// Compute side: offloads that ran on a storage node.
    pub offloaded: AtomicU64,
    /// Compute side: refused by the storage node (or it was unreachable), run here instead.
    pub refused: AtomicU64,
    /// Compute side: the call said `forbid_ndp`.
    pub forbidden: AtomicU64,
    /// Compute side: failed part way there (the call failed).
    pub failed: AtomicU64,
    /// Storage side: offloads admitted (run, whatever their outcome) / refused by admission.
    pub accepted: AtomicU64,
    pub busy: AtomicU64,
    /// Compute side: bytes sent to and received from storage nodes for offloads.
    pub bytes_to_storage: AtomicU64,
    pub bytes_from_storage: AtomicU64,
    /// Compute side: pages the storage side changed, dropped here to fault back on touch.
    pub pages_returned: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lent_memory_and_globals_survive_the_wire() {
        let lent = LentMemory {
            pages: 100,
            region: RegionId(7),
            region_ticket: [0xab; 16],
            snapshot: RegionId(3),
            snapshot_ticket: [1; 16],
            runs: vec![PageRun { start: 0, len: 4, source: PageSource::Snapshot }, PageRun { start: 9, len: 2, source: PageSource::Region }],
        };
        let wire: Memory = serde_json::from_str(&serde_json::to_string(&Memory::from(&lent)).unwrap()).unwrap();
        assert_eq!(wire.lent().unwrap(), lent);
        let mut bad = wire.clone();
        bad.region_ticket = "zz".repeat(16);
        assert!(bad.lent().is_err());
        bad = wire;
        bad.runs[0][2] = 7;
        assert!(bad.lent().is_err());
        let globals = vec![
            ("sp".to_string(), Val::I32(-16)),
            ("big".to_string(), Val::I64(i64::MIN)),
            ("f".to_string(), Val::F32(1.5f32.to_bits())),
            ("d".to_string(), Val::F64(2.25f64.to_bits())),
        ];
        let back = globals_in(&globals_out(&globals).unwrap()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{globals:?}"));
        assert!(globals_in(&[Global { name: "x".into(), ty: "i32".into(), bits: 1 << 40 }]).is_err());
    }

    #[test]
    fn page_runs_round_trip_and_absurd_runs_are_refused() {
        let pages = vec![1, 2, 3, 7, 9, 10];
        let runs = page_runs(&pages);
        assert_eq!(runs, vec![[1, 3], [7, 1], [9, 2]]);
        assert_eq!(pages_of(&runs, 11), Some(pages));
        assert_eq!(pages_of(&runs, 10), None);
        assert_eq!(pages_of(&[[usize::MAX, 2]], usize::MAX), None);
    }

    #[test]
    fn admission_bounds_offloads_in_flight() {
        let a = Admission::new(AdmissionLimits { cpu: 1.0, memory: 1.0, in_flight: 2 });
        let first = a.admit().unwrap();
        let second = a.admit().unwrap();
        assert!(a.admit().unwrap_err().contains("--ndp-max-in-flight"));
        drop(first);
        let third = a.admit().unwrap();
        drop((second, third));
        let none = Admission::new(AdmissionLimits { cpu: 1.0, memory: 0.0, in_flight: 2 });
        assert!(none.admit().unwrap_err().contains("memory"), "any use of memory is above 0");
    }
}
