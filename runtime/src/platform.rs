//! The function platform: calls on warm instances, chaining, async calls, timeouts, metrics.
//!
//! ```text
//!   invoke(user, function, input)
//!     └─ an idle instance of the function (or a new one: the first runs the init phase and
//!        captures the initial state; later ones adopt it) ─► Instance::call ─► reset ─► idle again
//!   submit(...) → call id   (a thread runs the call; status / await read its record)
//! ```
//! A ticker thread advances the engine's epoch so that calls past their time limit are
//! interrupted; a reaper frees instances idle for longer than the idle timeout.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::exec::{CallOutcome, Entry, Executor, Function, Services, Stdout};
use crate::pager::{PageState, Pager};
use crate::registry::{FunctionKey, Registry, StateStore, UploadError};

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
    /// Idle instances older than this are freed. Default 600 s.
    pub idle_timeout: Duration,
    /// Idle instances kept per function; more are freed when their call ends. Default 16.
    pub max_idle: usize,
    /// Before a call on an instance with nothing resident (new, or offloaded), install the
    /// function's recorded working set in bulk instead of faulting it in page by page. Default on.
    pub prefetch: bool,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            data_dir: PathBuf::from("ebb-data"),
            max_input: 16 << 20,
            call_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(600),
            max_idle: 16,
            prefetch: true,
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
            me: me.clone(),
        });
        let weak = Arc::downgrade(&platform);
        std::thread::Builder::new().name("ebb-epoch".into()).spawn(move || {
            // Every 10 ms: a call overruns its limit by at most that much, and each store's
            // epoch check costs a callback per tick.
            while let Some(p) = weak.upgrade() {
                p.exec.engine().increment_epoch();
                p.reap_due();
                drop(p);
                std::thread::sleep(Duration::from_millis(10));
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

    /// Frees idle instances past the idle timeout.
    fn reap_due(&self) {
        for (_, f) in self.registry.all() {
            let mut idle = f.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.retain(|(_, since)| since.elapsed() < self.config.idle_timeout);
        }
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

    fn run_call(&self, user: &str, f: &Arc<Function>, input: &[u8], entry: Entry) -> Result<CallOutcome, String> {
        let idle = f.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut instance = match idle {
            Some((instance, _)) => instance,
            None => {
                let services: Arc<dyn Services> = self.me.upgrade().ok_or("the platform is shutting down")?;
                self.instances_created.fetch_add(1, Ordering::Relaxed);
                self.exec
                    .function_instance(f, Stdout::Log, Some((services, user)))
                    .map_err(|e| format!("could not start an instance: {e:#}"))?
            }
        };
        // A cold instance (nothing resident) gets the recorded working set first, and records
        // what its call touches for the next cold one.
        let cold = match (instance.memory(), f.snapshot()) {
            (Some(m), Some(snap)) if m.count(PageState::Resident) == 0 => {
                let ws = snap.working_set();
                if self.config.prefetch
                    && !ws.is_empty()
                    && let Err(e) = m.prefetch(&ws)
                {
                    tracing::warn!("prefetching {} pages of {} failed (the call will fault them): {e}", ws.len(), f.name);
                }
                true
            }
            _ => false,
        };
        instance.record_touched = cold;
        f.busy.fetch_add(1, Ordering::Relaxed);
        let result = instance.call(input, entry, Some(self.config.call_timeout));
        f.busy.fetch_sub(1, Ordering::Relaxed);
        if cold
            && result.is_ok()
            && let Some(snap) = f.snapshot()
        {
            snap.record_working_set(std::mem::take(&mut instance.touched));
        }
        if !instance.must_discard() {
            let mut idle = f.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < self.config.max_idle {
                idle.push((instance, Instant::now()));
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
        for (instance, _) in f.idle.lock().unwrap_or_else(|e| e.into_inner()).iter() {
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
        drop(metrics);
        let _ = writeln!(out, "# TYPE ebb_instances gauge");
        let (mut resident, mut remote) = (0u64, 0u64);
        for (key, f) in self.registry.all() {
            let idle = f.idle.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(out, "ebb_instances{{function=\"{key}\",state=\"idle\"}} {}", idle.len());
            let _ = writeln!(out, "ebb_instances{{function=\"{key}\",state=\"busy\"}} {}", f.busy.load(Ordering::Relaxed));
            for (i, _) in idle.iter() {
                if let Some(m) = i.memory() {
                    resident += (m.count(PageState::Resident) * ebb_memnode::PAGE_SIZE) as u64;
                }
            }
            if let Some(s) = f.snapshot() {
                remote += (s.nonzero_pages() * ebb_memnode::PAGE_SIZE) as u64;
                if s.is_local() {
                    resident += (s.nonzero_pages() * ebb_memnode::PAGE_SIZE) as u64;
                }
            }
        }
        let _ = writeln!(out, "# TYPE ebb_resident_bytes gauge\nebb_resident_bytes {resident}");
        let _ = writeln!(out, "# TYPE ebb_remote_bytes gauge\nebb_remote_bytes {remote}");
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
        let _ = writeln!(out, "# TYPE ebb_pages_evicted_total counter\nebb_pages_evicted_total {}", s.pages_evicted);
        let _ = writeln!(out, "# TYPE ebb_pages_prefetched_total counter\nebb_pages_prefetched_total {}", s.pages_prefetched);
        let _ = writeln!(out, "# TYPE ebb_memnode_bytes_in_total counter\nebb_memnode_bytes_in_total {}", s.bytes_in);
        let _ = writeln!(out, "# TYPE ebb_memnode_bytes_out_total counter\nebb_memnode_bytes_out_total {}", s.bytes_out);
        let up = self.pager().transport().stats().is_ok();
        let _ = writeln!(out, "# TYPE ebb_memnode_up gauge\nebb_memnode_up {}", u8::from(up));
        let _ = writeln!(
            out,
            "# TYPE ebb_instances_created_total counter\nebb_instances_created_total {}",
            self.instances_created.load(Ordering::Relaxed)
        );
        out
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
