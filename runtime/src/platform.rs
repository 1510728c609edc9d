//! The function platform: calls on warm instances, chaining, async calls, timeouts, metrics.
//!
//! ```text
//!   invoke(user, function, input)
//!     └─ an idle instance of the function (or a new one: the first runs the init phase and
//!        captures the initial state; later ones adopt it) ─► Instance::call ─► reset ─► idle again
//!   submit(...) → call id   (a thread runs the call; status / await read its record)
//! ```
//! A ticker thread advances the engine's epoch so that calls past their time limit are
//! interrupted. A policy thread moves idle instances along their timeline (see [`crate::policy`]):
//! warm ones offload their cold segments, semi-warm ones drain to the memnode, expired ones are
//! freed; it stops offloading while the memnode does not answer.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::exec::{CallOutcome, Entry, Executor, Function, Idle, Services, Stdout};
use crate::pager::{MemoryHandle, PageState, Pager, PagerError};
use crate::policy::{Phase, PolicyConfig, PolicyFile, PolicyKind, ReuseStats};
use crate::registry::{FunctionKey, Registry, StateStore, UploadError};

const PAGE: u64 = ebb_memnode::PAGE_SIZE as u64;

/// Platform settings.
#[derive(Clone, Debug)]
pub struct PlatformConfig {
    /// Where functions are stored. Default `./ebb-data`.
    pub data_dir: PathBuf,
    /// Largest call input accepted, in bytes. Default 16 MiB.
    pub max_input: usize,
    /// A call running longer is interrupted and fails; its instance is discarded. Default 60 s
    /// (as Faasm).
    pub call_timeout: Duration,
    /// Idle instances kept per function; more are freed when their call ends. Default 16.
    pub max_idle: usize,
    /// Keep-alive and offload policy, global and per function (see [`crate::policy`]).
    pub policy: PolicyFile,
    /// How often the policy looks at idle instances. Default 100 ms.
    pub policy_tick: Duration,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            data_dir: PathBuf::from("ebb-data"),
            max_input: 16 << 20,
            call_timeout: Duration::from_secs(60),
            max_idle: 16,
            policy: PolicyFile::default(),
            policy_tick: Duration::from_millis(100),
        }
    }
}

/// Why a call could not produce an outcome.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("Function {0} is not uploaded: PUT /f/{0} first")]
    UnknownFunction(FunctionKey),
    #[error("{0}")]
    BadName(String),
    #[error("Input of {size} bytes is over the {limit}-byte limit")]
    InputTooLarge { size: usize, limit: usize },
    #[error("Call of {function} failed: {message}")]
    Failed { function: String, message: String },
}

/// A call's record, for status polling and awaiting.
#[derive(Debug, Clone)]
pub enum CallStatus {
    Running,
    Done(CallOutcome),
    Failed(String),
}

#[derive(Debug)]
struct CallRecord {
    user: String,
    function: String,
    status: CallStatus,
}

#[derive(Debug, Default)]
struct FunctionMetrics {
    ok: u64,
    error: u64,
    /// Call latency histogram: counts per bucket of [`BUCKETS`] (seconds), then +Inf.
    buckets: [u64; BUCKETS.len() + 1],
    sum_seconds: f64,
    /// Pages that faults brought in during calls (with their read-around).
    faults: u64,
    /// Calls that found an instance idle in each phase, or none (`cold_starts`).
    warm_starts: u64,
    semi_warm_starts: u64,
    cold_starts: u64,
    /// Pages installed from the recorded working set before calls.
    prefetched: u64,
    /// Prefetched pages seen touched by their call (written: reads of resident pages cannot be
    /// seen from user space, so this is a lower bound).
    prefetch_hits: u64,
    /// Pages with content that calls still faulted on after a prefetch.
    prefetch_misses: u64,
    /// Pages the policy sent to the memnode, and pages it dropped because the memnode already
    /// held them unchanged.
    written_back: u64,
    dropped_clean: u64,
    reuse: ReuseStats,
    last_call: Option<Instant>,
    /// Calls since the policy dropped the function's local image.
    calls_since_image_drop: u64,
}

const BUCKETS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0];

/// The platform.
pub struct Platform {
    exec: Executor,
    registry: Registry,
    state: StateStore,
    config: PlatformConfig,
    next_id: AtomicU32,
    calls: Mutex<HashMap<u32, CallRecord>>,
    call_done: Condvar,
    metrics: Mutex<HashMap<String, FunctionMetrics>>,
    instances_created: AtomicU64,
    /// Whether the memnode answered at the last policy tick (offloading pauses while it does not).
    memnode_up: std::sync::atomic::AtomicBool,
    me: Weak<Platform>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Platform {
    /// Opens the registry under the data directory and starts the epoch ticker and the reaper.
    pub fn start(config: PlatformConfig, pager: Arc<Pager>) -> anyhow::Result<Arc<Platform>> {
        let exec = Executor::new(pager)?;
        let registry = Registry::open(&config.data_dir, &exec)?;
        let platform = Arc::new_cyclic(|me| Platform {
            exec,
            registry,
            state: StateStore::default(),
            config,
            next_id: AtomicU32::new(1),
            calls: Mutex::new(HashMap::new()),
            call_done: Condvar::new(),
            metrics: Mutex::new(HashMap::new()),
            instances_created: AtomicU64::new(0),
            memnode_up: std::sync::atomic::AtomicBool::new(true),
            me: me.clone(),
        });
        let weak = Arc::downgrade(&platform);
        std::thread::Builder::new().name("ebb-epoch".into()).spawn(move || {
            // Every 10 ms: a call overruns its limit by at most that much, and each store's
            // epoch check costs a callback per tick.
            while let Some(p) = weak.upgrade() {
                p.exec.engine().increment_epoch();
                drop(p);
                std::thread::sleep(Duration::from_millis(10));
            }
        })?;
        let weak = Arc::downgrade(&platform);
        std::thread::Builder::new().name("ebb-policy".into()).spawn(move || {
            while let Some(p) = weak.upgrade() {
                let tick = p.config.policy_tick;
                p.policy_tick(Instant::now());
                drop(p);
                std::thread::sleep(tick);
            }
        })?;
        Ok(platform)
    }

    pub fn config(&self) -> &PlatformConfig {
        &self.config
    }

    pub fn state(&self) -> &StateStore {
        &self.state
    }

    pub fn pager(&self) -> &Arc<Pager> {
        self.exec.pager()
    }

    /// Validates, precompiles and stores a function.
    pub fn upload(&self, user: &str, function: &str, wasm: &[u8]) -> Result<(), UploadError> {
        let key = FunctionKey::new(user, function).map_err(UploadError::BadName)?;
        self.registry.upload(&self.exec, key, wasm).map(drop)
    }

    fn function(&self, user: &str, function: &str) -> Result<Arc<Function>, CallError> {
        let key = FunctionKey::new(user, function).map_err(CallError::BadName)?;
        self.registry.get(&key).ok_or(CallError::UnknownFunction(key))
    }

    /// Runs one call to completion on this thread.
    pub fn invoke(&self, user: &str, function: &str, input: &[u8]) -> Result<CallOutcome, CallError> {
        let f = self.function(user, function)?;
        self.invoke_function(user, &f, input, Entry::Start)
    }

    fn invoke_function(&self, user: &str, f: &Arc<Function>, input: &[u8], entry: Entry) -> Result<CallOutcome, CallError> {
        if input.len() > self.config.max_input {
            return Err(CallError::InputTooLarge { size: input.len(), limit: self.config.max_input });
        }
        let start = Instant::now();
        let result = self.run_call(user, f, input, entry);
        let mut metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        let m = metrics.entry(f.name.clone()).or_default();
        let secs = start.elapsed().as_secs_f64();
        let bucket = BUCKETS.iter().position(|&b| secs <= b).unwrap_or(BUCKETS.len());
        m.buckets[bucket] += 1;
        m.sum_seconds += secs;
        if result.is_ok() {
            m.ok += 1;
        } else {
            m.error += 1;
        }
        result.map_err(|message| CallError::Failed { function: f.name.clone(), message })
    }

    fn policy_of(&self, f: &Function) -> &PolicyConfig {
        self.config.policy.get(&f.name)
    }

    fn run_call(&self, user: &str, f: &Arc<Function>, input: &[u8], entry: Entry) -> Result<CallOutcome, String> {
        let policy = self.policy_of(f).clone();
        let start = Instant::now();
        let idle = f.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let (mut instance, phase) = match idle {
            Some(idle) => (idle.instance, Some(idle.phase)),
            None => {
                let services: Arc<dyn Services> = self.me.upgrade().ok_or("the platform is shutting down")?;
                self.instances_created.fetch_add(1, Ordering::Relaxed);
                let instance = self
                    .exec
                    .function_instance(f, Stdout::Log, Some((services, user)))
                    .map_err(|e| format!("could not start an instance: {e:#}"))?;
                (instance, None)
            }
        };
        // An instance that is new, semi-warm or fully offloaded gets the recorded working set
        // in bulk first; the pages its call still faults on join the working set. (Installing
        // it from a second thread while the call runs was measured slower on these 2-core
        // machines: the guest, the installer and the transport compete for the cores.)
        let mut prefetched = Vec::new();
        let restoring = match (instance.memory(), f.snapshot()) {
            (Some(m), Some(snap)) if phase != Some(Phase::Warm) || m.count(PageState::Resident) == 0 => {
                let ws = snap.working_set();
                if policy.kind.prefetches() && !ws.is_empty() {
                    prefetched = ws.into_iter().filter(|&p| m.page_state(p) == PageState::Image).collect();
                    if let Err(e) = m.prefetch(&prefetched) {
                        tracing::warn!("prefetching {} pages of {} failed (the call will fault them): {e}", prefetched.len(), f.name);
                        prefetched.clear();
                    }
                }
                true
            }
            _ => false,
        };
        instance.record_resident = restoring;
        let handle = instance.memory().cloned();
        if let Some(h) = &handle {
            f.running.lock().unwrap_or_else(|e| e.into_inner()).push(h.clone());
        }
        f.busy.fetch_add(1, Ordering::Relaxed);
        let result = instance.call(input, entry, Some(self.config.call_timeout));
        f.busy.fetch_sub(1, Ordering::Relaxed);
        if let Some(h) = &handle {
            f.running.lock().unwrap_or_else(|e| e.into_inner()).retain(|m| !m.is(h));
        }
        let end = Instant::now();
        let touched = instance.last_call.touched();
        let refaulted = instance.segments.observe_call(&touched, end, |p| f.initial_segment(p));
        let mut misses = 0;
        if let Some(snap) = f.snapshot() {
            snap.note_written(&instance.last_call.written);
            misses = instance.last_call.faulted.iter().filter(|&&p| snap.holds(p)).count();
            if restoring && result.is_ok() {
                let resident = std::mem::take(&mut instance.last_call.resident);
                if prefetched.is_empty() {
                    snap.record_working_set(resident);
                } else {
                    snap.extend_working_set(&resident);
                }
            }
        }
        let hits = if prefetched.is_empty() {
            0
        } else {
            instance.last_call.written.iter().filter(|p| prefetched.binary_search(p).is_ok()).count()
        };
        {
            let mut metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
            let m = metrics.entry(f.name.clone()).or_default();
            m.reuse.record(start);
            m.last_call = Some(end);
            m.calls_since_image_drop += 1;
            m.faults += instance.last_call.faulted.len() as u64;
            match phase {
                None => m.cold_starts += 1,
                Some(Phase::Warm) => m.warm_starts += 1,
                Some(_) => m.semi_warm_starts += 1,
            }
            m.prefetched += prefetched.len() as u64;
            m.prefetch_hits += hits as u64;
            if restoring && !prefetched.is_empty() {
                m.prefetch_misses += misses as u64;
            }
            if refaulted > 0 {
                tracing::debug!("{}: {refaulted} offloaded pages faulted back and are hot now", f.name);
            }
        }
        if policy.kind == PolicyKind::Cold {
            // No keep-alive: the instance goes, and with it the local copy of the initial state;
            // the next call restores from the memnode.
            if let Some(snap) = f.snapshot()
                && f.busy.load(Ordering::Relaxed) == 0
                && self.memnode_up.load(Ordering::Relaxed)
            {
                snap.drop_local();
            }
        } else if !instance.must_discard() {
            let mut idle = f.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < self.config.max_idle {
                idle.push(Idle::new(instance, end));
            }
        }
        result.map_err(|e| {
            if e.downcast_ref::<crate::exec::Timeout>().is_some() {
                format!("the call ran past the {}-second limit and was interrupted", self.config.call_timeout.as_secs())
            } else {
                format!("{e:#}")
            }
        })
    }

    /// One look at every function's idle instances: frees expired ones, offloads cold segments
    /// of warm ones, drains semi-warm ones at the configured rate, and drops the local copy of
    /// the initial state of functions idle past their semi-warm threshold. Offloads only while
    /// the memnode answers (a down memnode leaves everything resident).
    fn policy_tick(&self, now: Instant) {
        let up = self.pager().transport().stats().is_ok();
        let was_up = self.memnode_up.swap(up, Ordering::Relaxed);
        if up != was_up {
            if up {
                tracing::warn!("the memnode answers again: offloading resumes");
            } else {
                tracing::warn!("the memnode does not answer: offloading paused, idle instances stay resident");
            }
        }
        for (key, f) in self.registry.all() {
            let policy = self.policy_of(&f).clone();
            let (semi_warm_after, last_call, calls_since_drop, calls) = {
                let metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
                metrics.get(&f.name).map_or((policy.semi_warm_min, None, 0, 0), |m| {
                    (m.reuse.semi_warm_after(&policy), m.last_call, m.calls_since_image_drop, m.ok + m.error)
                })
            };
            let mut moved = Moved::default();
            {
                let mut idle = f.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle.retain(|i| crate::policy::phase(&policy, semi_warm_after, now.saturating_duration_since(i.since)) != Phase::Expired);
                for i in idle.iter_mut() {
                    i.phase = crate::policy::phase(&policy, semi_warm_after, now.saturating_duration_since(i.since));
                    if !up || !policy.kind.offloads() {
                        continue;
                    }
                    if let Err(e) = self.advance(&policy, i, now, &mut moved) {
                        tracing::warn!("offloading an idle instance of {key} failed: {e}");
                    }
                }
                idle.retain(|i| !i.instance.must_discard());
            }
            let mut image_dropped = false;
            if let Some(snap) = f.snapshot().filter(|_| up && policy.kind.offloads()) {
                let idle_for = last_call.map(|t| now.saturating_duration_since(t));
                if snap.is_local() && f.busy.load(Ordering::Relaxed) == 0 && idle_for.is_some_and(|d| d >= semi_warm_after) {
                    // Semi-warm: the local copy of the initial state goes too.
                    moved.dropped_clean += snap.drop_local() as u64 / PAGE;
                    image_dropped = true;
                } else if idle_for.is_some_and(|d| d < semi_warm_after) {
                    // Warm: once the calls have shown which pages they write (FaaSMem's init
                    // rule, `init_idle_calls`), the local image keeps only those — what resets
                    // restore — and fetches back any it lacks (warm again after a drop: from the
                    // second call on), off the calls' path.
                    if calls >= u64::from(policy.init_idle_calls) {
                        match snap.trim_local() {
                            Ok(bytes) => moved.dropped_clean += bytes as u64 / PAGE,
                            Err(e) => tracing::warn!("could not trim the local image of {key}: {e}"),
                        }
                    }
                    if (snap.is_local() || calls_since_drop >= 2)
                        && let Err(e) = snap.restore_local()
                    {
                        tracing::warn!("could not fetch the initial state of {key} back: {e}");
                    }
                }
            }
            if moved.written_back + moved.dropped_clean > 0 || image_dropped {
                let mut metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
                let m = metrics.entry(f.name.clone()).or_default();
                m.written_back += moved.written_back;
                m.dropped_clean += moved.dropped_clean;
                if image_dropped {
                    m.calls_since_image_drop = 0;
                }
            }
        }
    }

    /// Offloads what the policy says one idle instance should no longer keep.
    fn advance(&self, policy: &PolicyConfig, i: &mut Idle, now: Instant, moved: &mut Moved) -> Result<(), PagerError> {
        let Some(memory) = i.instance.memory().cloned() else { return Ok(()) };
        let pages = match i.phase {
            Phase::Warm if !i.warm_offloaded => {
                i.warm_offloaded = true;
                i.instance.segments.warm_offload(&memory.resident_pages(), policy, now)
            }
            Phase::SemiWarm if !i.drained => {
                let budget = i.drain.pages(policy.drain_rate, now);
                let resident = memory.resident_pages();
                let floor = usize::try_from(policy.floor / PAGE).unwrap_or(usize::MAX);
                if resident.len() <= floor {
                    i.drained = true;
                    return Ok(());
                }
                let mut order = i.instance.segments.drain_order(&resident);
                order.truncate(budget.min(resident.len() - floor));
                order.sort_unstable();
                order
            }
            _ => return Ok(()),
        };
        if pages.is_empty() {
            return Ok(());
        }
        offload(&memory, &pages, policy.kind.dirty_tracking(), moved)?;
        i.instance.segments.note_offloaded(&pages);
        Ok(())
    }

    /// Starts a call on its own thread; returns its id.
    pub fn submit(&self, user: &str, function: &str, input: Vec<u8>) -> u32 {
        let f = self.function(user, function);
        self.spawn_call(user, function, f, input, Entry::Start)
    }

    fn spawn_call(&self, user: &str, name: &str, f: Result<Arc<Function>, CallError>, input: Vec<u8>, entry: Entry) -> u32 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let record = CallRecord { user: user.to_string(), function: name.to_string(), status: CallStatus::Running };
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).insert(id, record);
        let me = self.me.clone();
        let user = user.to_string();
        let spawned = std::thread::Builder::new().name(format!("ebb-call-{id}")).spawn(move || {
            let Some(p) = me.upgrade() else { return };
            let status = match f.and_then(|f| p.invoke_function(&user, &f, &input, entry)) {
                Ok(outcome) => CallStatus::Done(outcome),
                Err(e) => CallStatus::Failed(e.to_string()),
            };
            p.finish(id, status);
        });
        if let Err(e) = spawned {
            self.finish(id, CallStatus::Failed(format!("could not start a thread for the call: {e}")));
        }
        id
    }

    fn finish(&self, id: u32, status: CallStatus) {
        if let Some(r) = self.calls.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&id) {
            r.status = status;
        }
        self.call_done.notify_all();
    }

    /// The status of call `id`, if it exists and belongs to `user` (None for anyone else).
    pub fn status(&self, user: Option<&str>, id: u32) -> Option<(String, CallStatus)> {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let r = calls.get(&id)?;
        if user.is_some_and(|u| u != r.user) {
            return None;
        }
        Some((r.function.clone(), r.status.clone()))
    }

    /// Evicts every idle instance of a function to its initial state on the memnode and drops the
    /// function's local image: the next calls fault back what they touch. Returns the bytes that
    /// left this host's memory.
    pub fn offload(&self, user: &str, function: &str) -> Result<u64, CallError> {
        let f = self.function(user, function)?;
        let mut bytes = 0u64;
        for Idle { instance, .. } in f.idle.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if let Some(m) = instance.memory() {
                let pages = m.evict().map_err(|e| CallError::Failed { function: f.name.clone(), message: e.to_string() })?;
                bytes += (pages * ebb_memnode::PAGE_SIZE) as u64;
            }
        }
        if let Some(snap) = f.snapshot() {
            bytes += snap.drop_local() as u64;
        }
        Ok(bytes)
    }

    /// Prometheus text exposition of the platform's and the pager's counters.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        let metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# TYPE ebb_calls_total counter");
        for (f, m) in metrics.iter() {
            let _ = writeln!(out, "ebb_calls_total{{function=\"{f}\",outcome=\"ok\"}} {}", m.ok);
            let _ = writeln!(out, "ebb_calls_total{{function=\"{f}\",outcome=\"error\"}} {}", m.error);
        }
        let _ = writeln!(out, "# TYPE ebb_call_seconds histogram");
        for (f, m) in metrics.iter() {
            let mut cumulative = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cumulative += m.buckets[i];
                let _ = writeln!(out, "ebb_call_seconds_bucket{{function=\"{f}\",le=\"{b}\"}} {cumulative}");
            }
            cumulative += m.buckets[BUCKETS.len()];
            let _ = writeln!(out, "ebb_call_seconds_bucket{{function=\"{f}\",le=\"+Inf\"}} {cumulative}");
            let _ = writeln!(out, "ebb_call_seconds_sum{{function=\"{f}\"}} {}", m.sum_seconds);
            let _ = writeln!(out, "ebb_call_seconds_count{{function=\"{f}\"}} {cumulative}");
        }
        type Counter = (&'static str, fn(&FunctionMetrics) -> u64);
        let counters: [Counter; 9] = [
            ("ebb_call_fault_pages_total", |m| m.faults),
            ("ebb_cold_starts_total", |m| m.cold_starts),
            ("ebb_warm_starts_total", |m| m.warm_starts),
            ("ebb_semi_warm_starts_total", |m| m.semi_warm_starts),
            ("ebb_prefetch_pages_total", |m| m.prefetched),
            ("ebb_prefetch_hits_total", |m| m.prefetch_hits),
            ("ebb_prefetch_misses_total", |m| m.prefetch_misses),
            ("ebb_pages_written_back_total", |m| m.written_back),
            ("ebb_pages_dropped_clean_total", |m| m.dropped_clean),
        ];
        for (name, get) in counters {
            let _ = writeln!(out, "# TYPE {name} counter");
            for (f, m) in metrics.iter() {
                let _ = writeln!(out, "{name}{{function=\"{f}\"}} {}", get(m));
            }
        }
        drop(metrics);
        let mut total = Footprint::default();
        let mut lines: Vec<(String, Footprint, [usize; 3])> = Vec::new();
        for (key, f) in self.registry.all() {
            let mut fp = Footprint::default();
            let mut states = [0usize; 3];
            {
                let idle = f.idle.lock().unwrap_or_else(|e| e.into_inner());
                for i in idle.iter() {
                    states[usize::from(i.phase == Phase::SemiWarm)] += 1;
                    if let Some(m) = i.instance.memory() {
                        fp.add_instance(m);
                    }
                }
            }
            for m in f.running.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                fp.add_instance(m);
            }
            states[2] = f.busy.load(Ordering::Relaxed);
            if let Some(s) = f.snapshot() {
                fp.memnode += s.nonzero_pages() as u64 * PAGE;
                fp.resident += s.local_bytes() as u64;
            }
            total.resident += fp.resident;
            total.memnode += fp.memnode;
            lines.push((key.to_string(), fp, states));
        }
        let _ = writeln!(out, "# TYPE ebb_instances gauge");
        for (key, _, states) in &lines {
            for (state, n) in ["warm", "semi_warm", "busy"].iter().zip(states) {
                let _ = writeln!(out, "ebb_instances{{function=\"{key}\",state=\"{state}\"}} {n}");
            }
        }
        let _ = writeln!(out, "# TYPE ebb_function_resident_bytes gauge");
        for (key, fp, _) in &lines {
            let _ = writeln!(out, "ebb_function_resident_bytes{{function=\"{key}\"}} {}", fp.resident);
        }
        let _ = writeln!(out, "# TYPE ebb_function_memnode_bytes gauge");
        for (key, fp, _) in &lines {
            let _ = writeln!(out, "ebb_function_memnode_bytes{{function=\"{key}\"}} {}", fp.memnode);
        }
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
        let _ = writeln!(out, "# TYPE ebb_pages_fetched_total counter\nebb_pages_fetched_total {}", s.pages_fetched);
        let _ = writeln!(out, "# TYPE ebb_pages_offloaded_total counter\nebb_pages_offloaded_total {}", s.pages_offloaded);
        let _ = writeln!(out, "# TYPE ebb_pager_pages_dropped_clean_total counter\nebb_pager_pages_dropped_clean_total {}", s.pages_dropped_clean);
        let _ = writeln!(out, "# TYPE ebb_pages_prefetched_total counter\nebb_pages_prefetched_total {}", s.pages_prefetched);
        let _ = writeln!(out, "# TYPE ebb_memnode_bytes_in_total counter\nebb_memnode_bytes_in_total {}", s.bytes_in);
        let _ = writeln!(out, "# TYPE ebb_memnode_bytes_out_total counter\nebb_memnode_bytes_out_total {}", s.bytes_out);
        let up = self.memnode_up.load(Ordering::Relaxed) && self.pager().transport().stats().is_ok();
        let _ = writeln!(out, "# TYPE ebb_memnode_up gauge\nebb_memnode_up {}", u8::from(up));
        let _ = writeln!(
            out,
            "# TYPE ebb_instances_created_total counter\nebb_instances_created_total {}",
            self.instances_created.load(Ordering::Relaxed)
        );
        out
    }
}

/// Pages the policy moved out of one function's instances.
#[derive(Debug, Default)]
struct Moved {
    written_back: u64,
    dropped_clean: u64,
}

/// Takes `pages` (ascending) out of an idle instance's memory. With dirty tracking, pages the
/// memnode already holds unchanged are dropped without a write-back — after a reset that is every
/// resident page (each equals its initial state, or its copy in the memory's region). Without it
/// every non-zero page is written back to the memory's own region (FaaSMem's swap).
fn offload(memory: &MemoryHandle, pages: &[usize], dirty_tracking: bool, moved: &mut Moved) -> Result<(), PagerError> {
    if dirty_tracking {
        moved.dropped_clean += memory.evict_pages(Some(pages))? as u64;
    } else {
        moved.written_back += memory.offload_pages(Some(pages), false)?.pages_sent;
    }
    Ok(())
}

/// One function's memory: resident here, and held by the memnode.
#[derive(Debug, Default)]
struct Footprint {
    resident: u64,
    memnode: u64,
}

impl Footprint {
    fn add_instance(&mut self, m: &MemoryHandle) {
        self.resident += m.count(PageState::Resident) as u64 * PAGE;
        self.memnode += m.count(PageState::Remote) as u64 * PAGE;
    }
}

impl Services for Platform {
    fn chain(&self, user: &str, function: &str, input: Vec<u8>) -> u32 {
        let f = self.function(user, function);
        self.spawn_call(user, function, f, input, Entry::Start)
    }

    fn chain_ptr(&self, user: &str, function: Arc<Function>, index: u32, input: Vec<u8>) -> u32 {
        let name = function.name.clone();
        self.spawn_call(user, &name, Ok(function), input, Entry::Table(index))
    }

    fn await_call(&self, user: &str, id: u32) -> Result<CallOutcome, String> {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match calls.get(&id) {
                None => return Err(format!("there is no call {id}")),
                Some(r) if r.user != user => return Err(format!("call {id} belongs to another user")),
                Some(r) => match &r.status {
                    CallStatus::Running => {}
                    CallStatus::Done(o) => return Ok(o.clone()),
                    CallStatus::Failed(why) => return Err(why.clone()),
                },
            }
            calls = self.call_done.wait(calls).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn state(&self) -> &StateStore {
        &self.state
    }
}
