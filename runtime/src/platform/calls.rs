//! Call records: what status polling and awaiting read, with bounded memory.
//!
//! Every async, chained or raw call gets an unguessable id (random, never 0) and a record.
//! Finished records — and the outputs they hold — are kept for a documented time and count and up
//! to a total output size; the oldest go first. A record of another user is answered exactly like
//! an unknown id.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::CallFailure;
use crate::exec::CallOutcome;

/// How long and how many finished calls are remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordLimits {
    /// A finished call's record is dropped this long after it finished. Default 10 minutes.
    pub ttl: Duration,
    /// Most finished records kept. Default 10 000.
    pub max_finished: usize,
    /// Most bytes of outputs kept in finished records. Default 256 MiB.
    pub max_output_bytes: usize,
}

impl Default for RecordLimits {
    fn default() -> Self {
        RecordLimits { ttl: Duration::from_secs(600), max_finished: 10_000, max_output_bytes: 256 << 20 }
    }
}

/// A call's status.
#[derive(Debug, Clone)]
pub enum CallStatus {
    Running,
    Done(CallOutcome),
    Failed(CallFailure),
}

#[derive(Debug)]
struct Record {
    user: String,
    function: String,
    status: CallStatus,
}

#[derive(Debug, Default)]
struct Table {
    map: HashMap<u32, Record>,
    /// Finished records, oldest first, with when they finished and their output size.
    finished: VecDeque<(u32, Instant, usize)>,
    output_bytes: usize,
}

/// Why a wait gave no outcome.
#[derive(Debug, Clone)]
pub enum WaitError {
    /// No such call for this user (never was, another user's, or forgotten).
    Unknown,
    /// The call failed.
    Failed(CallFailure),
    /// The deadline came first.
    Timeout,
}

/// The records of one platform.
#[derive(Debug, Default)]
pub struct CallRecords {
    limits: RecordLimits,
    table: Mutex<Table>,
    done: Condvar,
}

/// A random non-zero call id that fits a guest's `int` (ids travel through `i32` host calls).
fn random_id() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: `b` is a valid, writable 4-byte buffer for the duration of the call.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    assert_eq!(n, 4, "getrandom failed: {}", std::io::Error::last_os_error());
    (u32::from_le_bytes(b) & 0x7fff_ffff).max(1)
}

impl CallRecords {
    pub fn new(limits: RecordLimits) -> CallRecords {
        CallRecords { limits, ..Default::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new running call of `user`; its id.
    pub fn start(&self, user: &str, function: &str) -> u32 {
        let mut t = self.lock();
        let id = loop {
            let id = random_id();
            if !t.map.contains_key(&id) {
                break id;
            }
        };
        t.map.insert(id, Record { user: user.to_string(), function: function.to_string(), status: CallStatus::Running });
        id
    }

    /// Records how call `id` ended, and forgets the oldest finished calls past the limits.
    pub fn finish(&self, id: u32, status: CallStatus) {
        let now = Instant::now();
        let mut t = self.lock();
        let size = match &status {
            CallStatus::Done(o) => o.output.len(),
            _ => 0,
        };
        if let Some(r) = t.map.get_mut(&id) {
            r.status = status;
            t.finished.push_back((id, now, size));
            t.output_bytes += size;
        }
        self.expire(&mut t, now);
        drop(t);
        self.done.notify_all();
    }

    fn expire(&self, t: &mut Table, now: Instant) {
        let l = &self.limits;
        while let Some(&(id, at, size)) = t.finished.front() {
            let old = now.saturating_duration_since(at) >= l.ttl;
            if !(old || t.finished.len() > l.max_finished || t.output_bytes > l.max_output_bytes) {
                break;
            }
            t.finished.pop_front();
            t.output_bytes -= size;
            t.map.remove(&id);
        }
    }

    /// The status of call `id` if it exists and belongs to `user` (None for anyone else, as
    /// for an unknown id). `user` None (a server without tokens) sees every call.
    pub fn status(&self, user: Option<&str>, id: u32) -> Option<(String, CallStatus)> {
        let mut t = self.lock();
        self.expire(&mut t, Instant::now());
        let r = t.map.get(&id)?;
        if user.is_some_and(|u| u != r.user) {
            return None;
        }
        Some((r.function.clone(), r.status.clone()))
    }

    /// Waits until call `id` of `user` ends, or `deadline`.
    pub fn wait(&self, user: &str, id: u32, deadline: Option<Instant>) -> Result<CallOutcome, WaitError> {
        let mut t = self.lock();
        loop {
            match t.map.get(&id) {
                Some(r) if r.user == user => match &r.status {
                    CallStatus::Running => {}
                    CallStatus::Done(o) => return Ok(o.clone()),
                    CallStatus::Failed(f) => return Err(WaitError::Failed(f.clone())),
                },
                _ => return Err(WaitError::Unknown),
            }
            t = match deadline {
                None => self.done.wait(t).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(WaitError::Timeout);
                    }
                    self.done.wait_timeout(t, left).unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
    }

    /// Records held now, and bytes of output they hold.
    pub fn held(&self) -> (usize, usize) {
        let t = self.lock();
        (t.map.len(), t.output_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(bytes: usize) -> CallStatus {
        CallStatus::Done(CallOutcome { rc: 0, output: vec![7; bytes], flow: None })
    }

    #[test]
    fn finished_records_are_bounded_by_count_and_bytes() {
        let r = CallRecords::new(RecordLimits { ttl: Duration::from_secs(3600), max_finished: 3, max_output_bytes: 1000 });
        let ids: Vec<u32> = (0..5).map(|_| r.start("u", "f")).collect();
        for &id in &ids {
            r.finish(id, done(100));
        }
        assert!(r.status(Some("u"), ids[0]).is_none() && r.status(Some("u"), ids[1]).is_none(), "oldest forgotten");
        assert!(r.status(Some("u"), ids[4]).is_some());
        assert_eq!(r.held(), (3, 300));
        let big = r.start("u", "f");
        r.finish(big, done(900));
        assert_eq!(r.held(), (2, 1000), "the output bytes bound: the oldest go first");
        // A running call is never forgotten.
        let running = r.start("u", "f");
        for _ in 0..10 {
            let id = r.start("u", "f");
            r.finish(id, done(10));
        }
        assert!(matches!(r.status(Some("u"), running), Some((_, CallStatus::Running))));
    }

    #[test]
    fn ids_are_private_and_waits_bounded() {
        let r = CallRecords::default();
        let id = r.start("alice", "f");
        assert!(id > 0 && id <= 0x7fff_ffff);
        assert!(r.status(Some("bob"), id).is_none());
        assert!(matches!(r.wait("bob", id, None), Err(WaitError::Unknown)));
        assert!(matches!(r.wait("alice", id, Some(Instant::now() + Duration::from_millis(10))), Err(WaitError::Timeout)));
        r.finish(id, done(1));
        assert_eq!(r.wait("alice", id, None).unwrap().output, vec![7]);
    }
}
