//! `/metrics`: the platform's and the pager's counters as Prometheus text.
//!
//! A tenant sees only its own functions' lines; the operator (an `operator` token, or anyone on a
//! server without tokens) sees every function and the runtime-wide counters. Nothing here takes a
//! lock a call holds for longer than a copy of a few handles: counters are atomics, and resident
//! bytes come from the pager's O(1) page counts.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::functions::{BUCKETS, FunctionMetrics, Pooled};
use super::{PAGE, Platform};
use crate::pager::PageState;

/// Who is looking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer<'a> {
    /// Everything.
    Operator,
    /// One tenant's functions only.
    User(&'a str),
}

impl Viewer<'_> {
    fn sees(&self, user: &str) -> bool {
        match self {
            Viewer::Operator => true,
            Viewer::User(u) => *u == user,
        }
    }
}

/// One function's memory: resident here, and held by the memnode.
#[derive(Debug, Default, Clone, Copy)]
struct Footprint {
    resident: u64,
    memnode: u64,
}

impl Platform {
    /// Prometheus text exposition for `viewer`.
    pub fn metrics_text(&self, viewer: Viewer<'_>) -> String {
        let mut out = String::new();
        let pools: Vec<(String, std::sync::Arc<Pooled>)> = self
            .pools()
            .into_iter()
            .filter(|(key, _)| viewer.sees(&key.user))
            .map(|(key, p)| (key.to_string(), p))
            .collect();
        let _ = writeln!(out, "# TYPE ebb_calls_total counter");
        for (f, p) in &pools {
            let m = &p.metrics;
            let _ = writeln!(out, "ebb_calls_total{{function=\"{f}\",outcome=\"ok\"}} {}", FunctionMetrics::get(&m.ok));
            let _ = writeln!(out, "ebb_calls_total{{function=\"{f}\",outcome=\"error\"}} {}", FunctionMetrics::get(&m.error));
        }
        let _ = writeln!(out, "# TYPE ebb_call_seconds histogram");
        for (f, p) in &pools {
            let m = &p.metrics;
            let mut cumulative = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cumulative += FunctionMetrics::get(&m.buckets[i]);
                let _ = writeln!(out, "ebb_call_seconds_bucket{{function=\"{f}\",le=\"{b}\"}} {cumulative}");
            }
            cumulative += FunctionMetrics::get(&m.buckets[BUCKETS.len()]);
            let _ = writeln!(out, "ebb_call_seconds_bucket{{function=\"{f}\",le=\"+Inf\"}} {cumulative}");
            #[expect(clippy::cast_precision_loss, reason = "a sum of seconds for display")]
            let sum = FunctionMetrics::get(&m.sum_micros) as f64 / 1e6;
            let _ = writeln!(out, "ebb_call_seconds_sum{{function=\"{f}\"}} {sum}");
            let _ = writeln!(out, "ebb_call_seconds_count{{function=\"{f}\"}} {cumulative}");
        }
        type Counter = (&'static str, fn(&FunctionMetrics) -> &AtomicU64);
        let counters: [Counter; 10] = [
            ("ebb_call_fault_pages_total", |m| &m.faults),
            ("ebb_cold_starts_total", |m| &m.cold_starts),
            ("ebb_warm_starts_total", |m| &m.warm_starts),
            ("ebb_semi_warm_starts_total", |m| &m.semi_warm_starts),
            ("ebb_prefetch_pages_total", |m| &m.prefetched),
            ("ebb_prefetch_hits_total", |m| &m.prefetch_hits),
            ("ebb_prefetch_misses_total", |m| &m.prefetch_misses),
            ("ebb_working_set_probes_total", |m| &m.ws_probes),
            ("ebb_pages_written_back_total", |m| &m.written_back),
            ("ebb_pages_dropped_clean_total", |m| &m.dropped_clean),
        ];
        for (name, get) in counters {
            let _ = writeln!(out, "# TYPE {name} counter");
            for (f, p) in &pools {
                let _ = writeln!(out, "{name}{{function=\"{f}\"}} {}", FunctionMetrics::get(get(&p.metrics)));
            }
        }
        let mut total = Footprint::default();
        let mut lines = Vec::with_capacity(pools.len());
        for (f, p) in &pools {
            let mut fp = Footprint::default();
            for m in p.memories() {
                fp.resident += m.private_pages() as u64 * PAGE;
                fp.memnode += m.count(PageState::Remote) as u64 * PAGE;
            }
            if let Some(s) = p.function.snapshot() {
                fp.memnode += s.nonzero_pages() as u64 * PAGE;
                fp.resident += s.local_bytes() as u64;
            }
            total.resident += fp.resident;
            total.memnode += fp.memnode;
            let (warm, semi) = p.phase_counts();
            lines.push((f, fp, [warm, semi, p.busy.load(Ordering::Relaxed)]));
        }
        let _ = writeln!(out, "# TYPE ebb_instances gauge");
        for (f, _, states) in &lines {
            for (state, n) in ["warm", "semi_warm", "busy"].iter().zip(states) {
                let _ = writeln!(out, "ebb_instances{{function=\"{f}\",state=\"{state}\"}} {n}");
            }
        }
        let _ = writeln!(out, "# TYPE ebb_function_resident_bytes gauge");
        for (f, fp, _) in &lines {
            let _ = writeln!(out, "ebb_function_resident_bytes{{function=\"{f}\"}} {}", fp.resident);
        }
        let _ = writeln!(out, "# TYPE ebb_function_memnode_bytes gauge");
        for (f, fp, _) in &lines {
            let _ = writeln!(out, "ebb_function_memnode_bytes{{function=\"{f}\"}} {}", fp.memnode);
        }
        let _ = writeln!(out, "# TYPE ebb_function_working_set_bytes gauge");
        for (f, p) in &pools {
            let ws = p.function.snapshot().map_or(0, |s| s.working_set_len() as u64 * PAGE);
            let _ = writeln!(out, "ebb_function_working_set_bytes{{function=\"{f}\"}} {ws}");
        }
        if viewer != Viewer::Operator {
            return out;
        }
        // Runtime-wide lines: only for the operator (they tell of every tenant's activity).
        let _ = writeln!(out, "# TYPE ebb_resident_bytes gauge\nebb_resident_bytes {}", total.resident);
        let _ = writeln!(out, "# TYPE ebb_remote_bytes gauge\nebb_remote_bytes {}", total.memnode);
        let s = self.pager().stats();
        let _ = writeln!(out, "# TYPE ebb_faults_total counter");
        for (kind, n) in [
            ("zero", s.faults_zero),
            ("remote", s.faults_remote),
            ("image", s.faults_image),
            ("spurious", s.faults_spurious),
            ("failed", s.faults_failed),
        ] {
            let _ = writeln!(out, "ebb_faults_total{{kind=\"{kind}\"}} {n}");
        }
        let single: [(&str, &str, u64); 11] = [
            ("ebb_policy_ticks_total", "counter", self.policy_ticks.load(Ordering::Relaxed)),
            ("ebb_pages_fetched_total", "counter", s.pages_fetched),
            ("ebb_pages_offloaded_total", "counter", s.pages_offloaded),
            ("ebb_pager_pages_dropped_clean_total", "counter", s.pages_dropped_clean),
            ("ebb_pages_prefetched_total", "counter", s.pages_prefetched),
            ("ebb_memnode_bytes_in_total", "counter", s.bytes_in),
            ("ebb_memnode_bytes_out_total", "counter", s.bytes_out),
            ("ebb_fault_handler_failures_total", "counter", s.handler_failures),
            ("ebb_readaround_fenced_total", "counter", s.readaround_fenced),
            ("ebb_memnode_up", "gauge", u64::from(self.memnode_up.load(Ordering::Relaxed))),
            ("ebb_instances_created_total", "counter", self.instances_created.load(Ordering::Relaxed)),
        ];
        for (name, kind, v) in single {
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {v}");
        }
        let n = &self.ndp;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(out, "# TYPE ebb_ndp_offloads_total counter");
        for (outcome, v) in [("offloaded", &n.offloaded), ("refused", &n.refused), ("forbidden", &n.forbidden), ("failed", &n.failed)] {
            let _ = writeln!(out, "ebb_ndp_offloads_total{{outcome=\"{outcome}\"}} {}", get(v));
        }
        let _ = writeln!(out, "# TYPE ebb_ndp_served_total counter");
        for (outcome, v) in [("accepted", &n.accepted), ("busy", &n.busy)] {
            let _ = writeln!(out, "ebb_ndp_served_total{{outcome=\"{outcome}\"}} {}", get(v));
        }
        let _ = writeln!(out, "# TYPE ebb_ndp_link_bytes_total counter");
        for (direction, v) in [("to_storage", &n.bytes_to_storage), ("from_storage", &n.bytes_from_storage)] {
            let _ = writeln!(out, "ebb_ndp_link_bytes_total{{direction=\"{direction}\"}} {}", get(v));
        }
        let _ = writeln!(out, "# TYPE ebb_ndp_pages_returned_total counter\nebb_ndp_pages_returned_total {}", get(&n.pages_returned));
        let _ = writeln!(out, "# TYPE ebb_ndp_pages_faulted_back_total counter\nebb_ndp_pages_faulted_back_total {}", s.lent_faulted_back);
        let (running, queued) = self.pool.load();
        let (records, record_bytes) = self.calls.held();
        let single: [(&str, u64); 6] = [
            ("ebb_calls_running", running as u64),
            ("ebb_calls_queued", queued as u64),
            ("ebb_call_records", records as u64),
            ("ebb_call_record_bytes", record_bytes as u64),
            ("ebb_state_lock_waiters", self.state.waiting() as u64),
            ("ebb_thread_restarts_total", self.thread_restarts.load(Ordering::Relaxed)),
        ];
        for (name, v) in single {
            let _ = writeln!(out, "# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}
