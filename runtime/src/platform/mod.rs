//! The function platform: calls on warm instances, chaining, async calls, timeouts, metrics. It
//! wires the rooms together — the registry (functions), the executor (instances), the pager
//! (memory), the policy (offload), state — none of which knows the others.
//!
//! ```text
//!   HTTP call / submit / chain ─► CallPool (bounded queues per user, fair turns, N workers)
//!     worker: run_call ─► an idle instance of the function (or a new one: the first runs the
//!             init phase and captures the initial state; later ones adopt it) ─► Instance::call
//!             ─► reset ─► idle again; the call's state locks are released, whatever happened
//!   await_call(id): waits for the record (bounded by the awaiting call's deadline); a call still
//!                   queued is run on the awaiting thread instead
//!   records: unguessable ids, finished ones expire by time, count and output bytes
//! ```
//! Supervised threads: an epoch ticker (every 10 ms; calls past their deadline are interrupted)
//! and the policy driver ([`policy_driver`]). Every phase of a guest — instantiation, the init
//! phase, the call, any wait in a host call — is bounded by the call timeout.

mod calls;
mod files;
mod functions;
mod metrics;
mod ndp;
mod policy_driver;
pub mod pool;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

pub use files::FileLimits;
pub use calls::{CallStatus, RecordLimits};
pub use metrics::Viewer;
pub use pool::PoolConfig;

use crate::exec::{AwaitError, CallContext, CallOutcome, Entry, Executor, LostMemory, Services, Stdout, Timeout};
use crate::pager::{PageState, Pager, PagerError};
use crate::policy::{Phase, PolicyFile, Segment, Segments};
use crate::registry::{CompileLimits, Compiler, FunctionKey, Registry, UploadError};
use crate::ndp::offload::{Admission, AdmissionLimits, NdpCounters, OffloadError, Reply, Request};
use crate::ndp::{ObjectBytes, ObjectError, ObjectLimits, ObjectStore};
pub use ndp::NotRun;
use crate::state::{StateLimits, StateStore};
use calls::{CallRecords, WaitError};
use functions::{Idle, Pooled};
use pool::CallPool;

const PAGE: u64 = ebb_memnode::PAGE_SIZE as u64;

/// How long an offload asked for waits for the idle instances the policy has out (a drain step:
/// milliseconds; a busy or emulated host: more) before it offloads the others without them.
const OFFLOAD_WAIT: Duration = Duration::from_secs(10);

/// Where an object is.
enum Holder<'a> {
    Here(&'a ObjectStore),
    There(String),
}

/// Platform settings.
#[derive(Clone, Debug)]
pub struct PlatformConfig {
    /// Where functions are stored. Default `./ebb-data`.
    pub data_dir: PathBuf,
    /// Largest call input accepted, in bytes. Default 16 MiB.
    pub max_input: usize,
    /// A call (and an instance's instantiation and init phase) running longer is interrupted and
    /// fails; its instance is discarded. Default 60 s (as Faasm).
    pub call_timeout: Duration,
    /// Idle instances kept per function; more are freed when their call ends. Default 16.
    pub max_idle: usize,
    /// A workflow call running longer fails with a timeout (its blocks are each bounded by
    /// `call_timeout` too). Default 120 s.
    pub workflow_timeout: Duration,
    /// Keep-alive and offload policy, global and per function (see [`crate::policy`]).
    pub policy: PolicyFile,
    /// How often the policy looks at idle instances. Default 100 ms.
    pub policy_tick: Duration,
    /// The call pool: workers, per-user limits, queue bounds.
    pub pool: PoolConfig,
    /// How long and how many finished calls are remembered for status polling.
    pub records: RecordLimits,
    /// State limits per value and per user.
    pub state: StateLimits,
    /// Disk one user's functions may take in their directories.
    pub files: FileLimits,
    /// A storage node keeps objects (`/o/USER/KEY`) under `DATA_DIR/objects`, within these
    /// limits; None for a compute-only runtime. Default None.
    pub objects: Option<ObjectLimits>,
    /// The storage nodes' URLs, the same list on every runtime (see [`crate::ndp::placement`]):
    /// object requests are forwarded to the node that holds the object. Empty: objects are this
    /// runtime's own (if it is a storage node). Default empty.
    pub storage_nodes: Vec<String>,
    /// This runtime's URL as `storage_nodes` lists it, on a storage node that is in the list.
    pub advertise: Option<String>,
    /// The secret runtimes of one cluster present to each other (with the user they act for,
    /// `x-ebb-user`) when a guest reads or writes an object another node holds. Needed between
    /// runtimes that check tokens. Default None.
    pub cluster_token: Option<ebb_memnode::tokens::Secret>,
    /// When this storage node refuses offloaded calls.
    pub admission: AdmissionLimits,
    /// What an upload may cost to compile.
    pub compile: CompileLimits,
    /// The `runtime` binary, to compile uploads in bounded child processes. None compiles in this
    /// process (static limits only).
    pub compiler_exe: Option<PathBuf>,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            data_dir: PathBuf::from("ebb-data"),
            max_input: 16 << 20,
            call_timeout: Duration::from_secs(60),
            max_idle: 16,
            workflow_timeout: Duration::from_secs(120),
            policy: PolicyFile::default(),
            policy_tick: Duration::from_millis(100),
            pool: PoolConfig::default(),
            records: RecordLimits::default(),
            state: StateLimits::default(),
            files: FileLimits::default(),
            objects: None,
            storage_nodes: Vec::new(),
            advertise: None,
            cluster_token: None,
            admission: AdmissionLimits::default(),
            compile: CompileLimits::default(),
            compiler_exe: None,
        }
    }
}

/// Why a call request was not accepted (nothing ran).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("Function {0} is not uploaded: PUT /f/{0} first")]
    UnknownFunction(FunctionKey),
    #[error("{0}")]
    BadName(String),
    #[error("Input of {size} bytes is over the {limit}-byte limit")]
    InputTooLarge { size: usize, limit: usize },
    #[error("The call was not queued: {0}")]
    Busy(#[source] pool::PoolFull),
    #[error("Call of {function} failed")]
    Failed { function: String, #[source] failure: CallFailure },
}

/// How a call that ran failed. Cloneable (records keep it); sources are kept.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallFailure {
    /// The guest trapped (or failed to instantiate or initialise): its own error.
    #[error("{0}")]
    Trap(String),
    /// The call ran past its time limit.
    #[error("the call ran past its {} limit and was interrupted", to_millis(.0))]
    Timeout(Duration),
    /// The memnode did not answer or the connection to it failed: pages could not move.
    #[error("the memnode is unavailable")]
    MemnodeUnavailable(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The call could not be queued, or the function is unknown (chained calls and awaits).
    #[error("{0}")]
    Refused(String),
    /// The runtime itself failed (a refusal by the memnode, a local error).
    #[error("the runtime failed")]
    Internal(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

/// A duration for people, to the millisecond.
fn to_millis(d: &Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
}

pub use crate::pager::error_chain as chain;

/// Turns an executor error into what happened, by cause.
fn classify(e: anyhow::Error, limit: Duration) -> CallFailure {
    if e.downcast_ref::<Timeout>().is_some() {
        return CallFailure::Timeout(limit);
    }
    if let Some(LostMemory(p)) = e.downcast_ref::<LostMemory>() {
        let lost: Arc<dyn std::error::Error + Send + Sync> = Arc::new(LostMemory(p.clone()));
        return if p.memnode_unavailable() { CallFailure::MemnodeUnavailable(lost) } else { CallFailure::Internal(lost) };
    }
    if let Some(p) = e.downcast_ref::<PagerError>() {
        let unavailable = matches!(p, PagerError::Transport(t) if !t.is_refusal())
            || matches!(p, PagerError::Poisoned(poison) if poison.memnode_unavailable());
        let source: Arc<dyn std::error::Error + Send + Sync> = Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(e));
        return if unavailable { CallFailure::MemnodeUnavailable(source) } else { CallFailure::Internal(source) };
    }
    CallFailure::Trap(format!("{e:#}"))
}

/// The platform.
pub struct Platform {
    exec: Executor,
    registry: Registry,
    compiler: Compiler,
    state: StateStore,
    files: files::Files,
    objects: Option<ObjectStore>,
    config: PlatformConfig,
    calls: CallRecords,
    pool: CallPool,
    pools: RwLock<HashMap<FunctionKey, Arc<Pooled>>>,
    instances_created: AtomicU64,
    /// Holders of state locks: one per call run.
    next_holder: AtomicU64,
    /// Whether the memnode answered at the last look (offloading pauses while it does not).
    memnode_up: AtomicBool,
    /// Panics of supervised threads (each was restarted).
    thread_restarts: Arc<AtomicU64>,
    /// Looks the policy driver took.
    policy_ticks: AtomicU64,
    /// Offloaded calls, both ways, and this node's admission of them.
    ndp: NdpCounters,
    admission: Admission,
    workflows: crate::flow::Workflows,
    me: Weak<Platform>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Platform {
    /// Opens the registry under the data directory and starts the call pool, the epoch ticker and
    /// the policy driver.
    pub fn start(config: PlatformConfig, pager: Arc<Pager>) -> anyhow::Result<Arc<Platform>> {
        let exec = Executor::new(pager)?;
        let compiler = match &config.compiler_exe {
            Some(exe) => Compiler::subprocess(exe.clone(), config.compile.clone()),
            None => Compiler::in_process(config.compile.clone()),
        };
        let registry = Registry::open(&config.data_dir, &exec, &compiler)?;
        let pool = CallPool::start(config.pool)?;
        let objects = match config.objects {
            Some(limits) => {
                let dir = config.data_dir.join("objects");
                let store = ObjectStore::open(dir.clone(), limits)
                    .map_err(|e| anyhow::anyhow!("cannot open the object store under {}: {e}", dir.display()))?;
                Some(store)
            }
            None => None,
        };
        let admission = Admission::new(config.admission);
        let platform = Arc::new_cyclic(|me| Platform {
            exec,
            registry,
            compiler,
            state: StateStore::new(config.state),
            files: files::Files::new(config.data_dir.clone(), config.files),
            objects,
            calls: CallRecords::new(config.records),
            pool,
            pools: RwLock::new(HashMap::new()),
            workflows: crate::flow::Workflows::new(&config.data_dir),
            config,
            instances_created: AtomicU64::new(0),
            next_holder: AtomicU64::new(1),
            memnode_up: AtomicBool::new(true),
            thread_restarts: Arc::new(AtomicU64::new(0)),
            policy_ticks: AtomicU64::new(0),
            ndp: NdpCounters::default(),
            admission,
            me: me.clone(),
        });
        let weak = Arc::downgrade(&platform);
        crate::supervise::spawn("ebb-epoch", platform.thread_restarts.clone(), move || {
            // Every 10 ms: a call overruns its limit by at most that much, and each store's
            // epoch check costs a callback per tick.
            let Some(p) = weak.upgrade() else { return false };
            p.exec.engine().increment_epoch();
            drop(p);
            std::thread::sleep(Duration::from_millis(10));
            true
        })?;
        let weak = Arc::downgrade(&platform);
        crate::supervise::spawn("ebb-policy", platform.thread_restarts.clone(), move || {
            let Some(p) = weak.upgrade() else { return false };
            let tick = p.config.policy_tick;
            p.policy_tick(Instant::now());
            drop(p);
            std::thread::sleep(tick);
            true
        })?;
        Ok(platform)
    }

    pub fn config(&self) -> &PlatformConfig {
        &self.config
    }

    /// Which node holds `(user, key)` (see [`crate::ndp::placement`]): this one's store, or
    /// another node's URL.
    fn holder(&self, user: &str, key: &str) -> Result<Holder<'_>, ObjectError> {
        let nodes = &self.config.storage_nodes;
        if let Some(i) = crate::ndp::node_for(nodes, user, key)
            && self.config.advertise.as_ref() != Some(&nodes[i])
        {
            return Ok(Holder::There(nodes[i].clone()));
        }
        self.objects
            .as_ref()
            .map(Holder::Here)
            .ok_or_else(|| ObjectError::NotHere("this runtime keeps no objects and knows no storage nodes: start it with --storage or --storage-nodes".into()))
    }

    /// This node's objects, if it is a storage node (`--storage`).
    pub fn objects(&self) -> Option<&ObjectStore> {
        self.objects.as_ref()
    }

    pub fn state(&self) -> &StateStore {
        &self.state
    }

    /// Uploaded workflows and asynchronous workflow calls.
    pub fn workflows(&self) -> &crate::flow::Workflows {
        &self.workflows
    }

    /// Whether `user` has uploaded `function`.
    pub fn has_function(&self, user: &str, function: &str) -> bool {
        FunctionKey::new(user, function).ok().is_some_and(|k| self.registry.get(&k).is_some())
    }

    pub fn pager(&self) -> &Arc<Pager> {
        self.exec.pager()
    }

    /// Validates, compiles (within the compile limits) and stores a function.
    pub fn upload(&self, user: &str, function: &str, wasm: &[u8]) -> Result<(), UploadError> {
        let key = FunctionKey::new(user, function).map_err(UploadError::BadName)?;
        let uploaded = self.registry.upload(&self.exec, &self.compiler, key, wasm).map(drop);
        // A compute node sends a function right before the offload that needs it: the compile's
        // CPU is not the load admission is about.
        self.admission.resample_cpu();
        uploaded
    }

    /// The platform's record of a function (made on first use; a new upload gets a new one).
    fn pooled(&self, user: &str, function: &str) -> Result<Arc<Pooled>, CallError> {
        let key = FunctionKey::new(user, function).map_err(CallError::BadName)?;
        let f = self.registry.get(&key).ok_or_else(|| CallError::UnknownFunction(key.clone()))?;
        if let Some(p) = self.pools.read().unwrap_or_else(|e| e.into_inner()).get(&key)
            && Arc::ptr_eq(&p.function, &f)
        {
            return Ok(p.clone());
        }
        let mut pools = self.pools.write().unwrap_or_else(|e| e.into_inner());
        let p = pools.entry(key).or_insert_with(|| Arc::new(Pooled::new(f.clone())));
        if !Arc::ptr_eq(&p.function, &f) {
            *p = Arc::new(Pooled::new(f));
        }
        Ok(p.clone())
    }

    fn pools(&self) -> Vec<(FunctionKey, Arc<Pooled>)> {
        // Functions uploaded but never called have no pool yet: their gauges are zero.
        for (key, _) in self.registry.all() {
            let _ = self.pooled(&key.user, &key.function);
        }
        let pools = self.pools.read().unwrap_or_else(|e| e.into_inner());
        pools.iter().map(|(k, p)| (k.clone(), p.clone())).collect()
    }

    /// Runs one call to completion on this thread (in-process callers; the HTTP API queues calls
    /// on the pool instead).
    pub fn invoke(&self, user: &str, function: &str, input: &[u8]) -> Result<CallOutcome, CallError> {
        self.check_input(input)?;
        let p = self.pooled(user, function)?;
        self.run_call(user, &p, &CallInput::from(input.to_vec()), Entry::Start, 0, None).map_err(|failure| CallError::Failed { function: p.function.name.clone(), failure })
    }

    fn check_input(&self, input: &[u8]) -> Result<(), CallError> {
        if input.len() > self.config.max_input {
            return Err(CallError::InputTooLarge { size: input.len(), limit: self.config.max_input });
        }
        Ok(())
    }

    /// Queues a call whose outcome is only sent to `done` (a synchronous HTTP call: no record).
    pub fn call_then(
        &self,
        user: &str,
        function: &str,
        input: impl Into<CallInput>,
        done: impl FnOnce(Result<CallOutcome, CallFailure>) + Send + 'static,
    ) -> Result<(), CallError> {
        let input = input.into();
        self.check_input(&input.data)?;
        let p = self.pooled(user, function)?;
        let me = self.me.clone();
        let owner = user.to_string();
        let job = Box::new(move |deadline| {
            let result = match me.upgrade() {
                Some(platform) => platform.run_caught(&owner, &p, &input, Entry::Start, 0, deadline),
                None => Err(CallFailure::Refused("the platform is shutting down".into())),
            };
            done(result);
        });
        self.pool.submit(user, 0, job).map_err(CallError::Busy)
    }

    /// Queues an async call; returns its id (poll it with [`Platform::status`]).
    pub fn submit(&self, user: &str, function: &str, input: impl Into<CallInput>) -> Result<u32, CallError> {
        let input = input.into();
        self.check_input(&input.data)?;
        let p = self.pooled(user, function)?;
        let id = self.calls.start(user, function);
        if let Err(full) = self.queue_recorded(user, p, input, Entry::Start, id) {
            self.calls.finish(id, CallStatus::Failed(CallFailure::Refused(full.to_string())));
            return Err(CallError::Busy(full));
        }
        Ok(id)
    }

    /// Queues call `id` (already recorded) to run and record its outcome.
    fn queue_recorded(&self, user: &str, p: Arc<Pooled>, input: CallInput, entry: Entry, id: u32) -> Result<(), pool::PoolFull> {
        let me = self.me.clone();
        let owner = user.to_string();
        let job = Box::new(move |deadline| {
            let status = match me.upgrade() {
                Some(platform) => match platform.run_caught(&owner, &p, &input, entry, id, deadline) {
                    Ok(o) => CallStatus::Done(o),
                    Err(f) => CallStatus::Failed(f),
                },
                None => CallStatus::Failed(CallFailure::Refused("the platform is shutting down".into())),
            };
            if let Some(platform) = me.upgrade() {
                platform.calls.finish(id, status);
            }
        });
        self.pool.submit(user, id, job)
    }

    /// A chained call (by name or by table index): recorded, queued; a refusal fails its record.
    fn chain_call(&self, user: &str, p: Result<Arc<Pooled>, CallError>, name: &str, input: Vec<u8>, entry: Entry) -> u32 {
        let id = self.calls.start(user, name);
        let queued = match p {
            Ok(p) => self.check_input(&input).and_then(|()| self.queue_recorded(user, p, input.into(), entry, id).map_err(CallError::Busy)),
            Err(e) => Err(e),
        };
        if let Err(e) = queued {
            self.calls.finish(id, CallStatus::Failed(CallFailure::Refused(chain(&e))));
        }
        id
    }

    /// The status of call `id`, if it exists and belongs to `user` (None for anyone else).
    pub fn status(&self, user: Option<&str>, id: u32) -> Option<(String, CallStatus)> {
        self.calls.status(user, id)
    }

    /// Runs a call, turning a panic anywhere in it into a failure (its record must not stay
    /// running for ever).
    fn run_caught(&self, user: &str, p: &Arc<Pooled>, input: &CallInput, entry: Entry, id: u32, deadline: Option<Instant>) -> Result<CallOutcome, CallFailure> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_call(user, p, input, entry, id, deadline))).unwrap_or_else(|_| {
            Err(CallFailure::Internal(Arc::new(std::io::Error::other("the call panicked in the runtime"))))
        })
    }

    /// One call: an idle instance or a new one, the working-set prefetch, the call, the reset,
    /// accounting; state locks the call still holds are released whatever happened. The call's
    /// limit is the call timeout, or less if it must end by `deadline` (run by an awaiting call).
    fn run_call(&self, user: &str, p: &Arc<Pooled>, input: &CallInput, entry: Entry, id: u32, deadline: Option<Instant>) -> Result<CallOutcome, CallFailure> {
        let start = Instant::now();
        let holder = self.next_holder.fetch_add(1, Ordering::Relaxed);
        let limit = deadline.map_or(self.config.call_timeout, |d| d.saturating_duration_since(start).min(self.config.call_timeout));
        let result = self.run_on_instance(user, p, input, entry, id, holder, limit);
        let released = self.state.release_all(holder);
        if released > 0 {
            tracing::debug!("{}: released {released} state locks its call still held", p.function.name);
        }
        if matches!(result, Err(CallFailure::MemnodeUnavailable(_))) {
            self.memnode_up.store(false, Ordering::Relaxed);
        }
        p.metrics.call(start.elapsed().as_secs_f64(), result.is_ok());
        result
    }

    #[expect(clippy::too_many_arguments, reason = "one call's parts, passed through from run_call")]
    fn run_on_instance(
        &self,
        user: &str,
        p: &Arc<Pooled>,
        input: &CallInput,
        entry: Entry,
        id: u32,
        holder: u64,
        limit: Duration,
    ) -> Result<CallOutcome, CallFailure> {
        let f = &p.function;
        let policy = self.config.policy.get(&f.name).clone();
        let start = Instant::now();
        let (mut instance, mut segments, phase) = match p.pop_idle() {
            Some(idle) => (idle.instance, idle.segments, Some(idle.phase)),
            None => {
                let services: Arc<dyn Services> = self.me.upgrade().ok_or_else(|| CallFailure::Refused("the platform is shutting down".into()))?;
                self.instances_created.fetch_add(1, Ordering::Relaxed);
                let (instance, init) = self.exec.function_instance(f, Stdout::Log, Some((services, user, holder)), Some(limit)).map_err(|e| classify(e, limit))?;
                let mut segments = Segments::default();
                if let Some(init) = init {
                    // Segments: what instantiation left resident is the runtime's, what the init
                    // phase added is init's; later instances inherit these labels.
                    segments.label(&init.runtime, Segment::Runtime, start);
                    segments.label(&init.init, Segment::Init, start);
                    let _ = p.initial_segments.set(segments.clone());
                }
                p.adopt_instance(&instance);
                (instance, segments, None)
            }
        };
        // An instance that is new, semi-warm or fully offloaded gets the recorded working set
        // in bulk first; the pages its call still faults on join the working set. Every
        // `ws-probe-every`-th such call runs without it instead, and what it touches replaces
        // the working set (see `policy::probe_working_set`). (Installing
        // it from a second thread while the call runs was measured slower on these 2-core
        // machines: the guest, the installer and the transport compete for the cores.)
        let mut prefetched = Vec::new();
        // A probe's pages resident before it that the working set did not hold: still resident
        // after the call, they are no sign that it touched them.
        let mut stale = Vec::new();
        let restoring = match (instance.memory(), f.snapshot()) {
            (Some(m), Some(snap)) if phase != Some(Phase::Warm) || m.is_drained() => {
                let ws = snap.working_set();
                let prefetching = policy.kind.prefetches() && !ws.is_empty();
                let probe = prefetching && {
                    let restores = p.metrics.restores.fetch_add(1, Ordering::Relaxed) + 1;
                    crate::policy::probe_working_set(&policy, restores)
                };
                if probe {
                    p.metrics.ws_probes.fetch_add(1, Ordering::Relaxed);
                    stale = m.resident_pages();
                    stale.retain(|pg| ws.binary_search(pg).is_err());
                } else if prefetching {
                    prefetched = ws.into_iter().filter(|&pg| m.page_state(pg) == PageState::Image).collect();
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
        instance.set_call(id, holder, input.forbid_ndp);
        p.busy.fetch_add(1, Ordering::Relaxed);
        let result = instance.set_args(&input.argv()).and_then(|()| {
            // Given only once nothing can fail before the call, which takes it back: a block's
            // data never stays for a later call of the instance.
            if let Some(flow) = &input.flow {
                instance.set_flow(crate::exec::FlowData::clone(flow));
            }
            instance.call(&input.data, entry, Some(limit))
        });
        p.busy.fetch_sub(1, Ordering::Relaxed);
        let end = Instant::now();
        let touched = instance.last_call.touched();
        let initial = p.initial_segments.get();
        let refaulted = segments.observe_call(&touched, end, |pg| initial.and_then(|s| s.segment(pg)));
        let mut misses = 0;
        if let Some(snap) = f.snapshot() {
            snap.note_written(&instance.last_call.written);
            misses = instance.last_call.faulted.iter().filter(|&&pg| snap.holds(pg)).count();
            if restoring && result.is_ok() {
                let mut resident = std::mem::take(&mut instance.last_call.resident);
                if !stale.is_empty() {
                    resident.retain(|pg| stale.binary_search(pg).is_err() || touched.binary_search(pg).is_ok());
                }
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
            instance.last_call.written.iter().filter(|pg| prefetched.binary_search(pg).is_ok()).count()
        };
        let m = &p.metrics;
        {
            let mut reuse = m.reuse.lock().unwrap_or_else(|e| e.into_inner());
            reuse.0.record(start);
            reuse.1 = Some(end);
        }
        m.calls_since_image_drop.fetch_add(1, Ordering::Relaxed);
        m.faults.fetch_add(instance.last_call.faulted.len() as u64, Ordering::Relaxed);
        match phase {
            None => &m.cold_starts,
            Some(Phase::Warm) => &m.warm_starts,
            Some(_) => &m.semi_warm_starts,
        }
        .fetch_add(1, Ordering::Relaxed);
        m.prefetched.fetch_add(prefetched.len() as u64, Ordering::Relaxed);
        m.prefetch_hits.fetch_add(hits as u64, Ordering::Relaxed);
        if restoring && !prefetched.is_empty() {
            m.prefetch_misses.fetch_add(misses as u64, Ordering::Relaxed);
        }
        if refaulted > 0 {
            tracing::debug!("{}: {refaulted} offloaded pages faulted back and are hot now", f.name);
        }
        if policy.kind == crate::policy::PolicyKind::Cold {
            // No keep-alive: the instance goes, and with it the local copy of the initial state;
            // the next call restores from the memnode.
            p.forget(&instance);
            if let Some(snap) = f.snapshot()
                && p.busy.load(Ordering::Relaxed) == 0
                && self.memnode_up.load(Ordering::Relaxed)
            {
                snap.drop_local();
            }
        } else if instance.must_discard() {
            p.forget(&instance);
        } else {
            p.push_idle(Idle::new(instance, segments, end), self.config.max_idle);
        }
        result.map_err(|e| classify(e, limit))
    }

    /// Evicts every idle instance of a function to its initial state on the memnode and drops the
    /// function's local image: the next calls fault back what they touch. Returns the bytes that
    /// left this host's memory. The instances are taken out of the idle list while their pages
    /// move (a call meanwhile starts another), and given back after.
    pub fn offload(&self, user: &str, function: &str) -> Result<u64, CallError> {
        let p = self.pooled(user, function)?;
        // The image goes first: each eviction then also moves its memory off it (with
        // copy-on-write images the memories map it).
        let mut bytes = p.function.snapshot().map_or(0, |snap| snap.drop_local() as u64);
        // As when the policy drops it: the image comes back from the second call on (not at the
        // policy's next tick, which would undo the offload before any call asked for it).
        p.metrics.calls_since_image_drop.store(0, Ordering::Relaxed);
        let mut failed = None;
        for i in p.take_all_idle_within(OFFLOAD_WAIT) {
            if let Some(m) = i.instance.memory()
                && failed.is_none()
            {
                match m.evict() {
                    Ok(pages) => bytes += pages as u64 * PAGE,
                    Err(e) => failed = Some(e),
                }
            }
            p.give_back(i, self.config.max_idle);
        }
        if let Some(e) = failed {
            return Err(CallError::Failed { function: p.function.name.clone(), failure: CallFailure::Internal(Arc::new(e)) });
        }
        Ok(bytes)
    }
}

/// What a call is given: its input, and Faasm's command line (`cmdline`: the words after
/// `argv[0]`, split at spaces), if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallInput {
    pub data: Vec<u8>,
    pub cmdline: Option<String>,
    /// Run everything here: `storageCallAndAwait` never offloads (`"forbid_ndp": true`).
    pub forbid_ndp: bool,
    /// A workflow block's inputs and outputs (see `flow`), boxed: most calls have none.
    pub flow: Option<Box<crate::exec::FlowData>>,
}

impl CallInput {
    /// The guest's `argv`: Faasm's `function.wasm` and the command line's words.
    pub fn argv(&self) -> Vec<String> {
        let words = self.cmdline.as_deref().unwrap_or("").split(' ').filter(|w| !w.is_empty());
        std::iter::once(crate::exec::ARGV0).chain(words).map(str::to_string).collect()
    }
}

impl From<Vec<u8>> for CallInput {
    fn from(data: Vec<u8>) -> Self {
        CallInput { data, cmdline: None, forbid_ndp: false, flow: None }
    }
}

impl Services for Platform {
    fn chain(&self, caller: &CallContext, function: &str, input: Vec<u8>) -> u32 {
        let p = self.pooled(&caller.user, function);
        self.chain_call(&caller.user, p, function, input, Entry::Start)
    }

    fn chain_ptr(&self, caller: &CallContext, index: u32, input: Vec<u8>) -> u32 {
        let name = caller.function.name.clone();
        let (user, function) = name.split_once('/').unwrap_or((&caller.user, &name));
        let p = self.pooled(user, function);
        self.chain_call(&caller.user, p, &name, input, Entry::Table(index))
    }

    fn await_call(&self, caller: &CallContext, id: u32, deadline: Option<Instant>) -> Result<CallOutcome, AwaitError> {
        if id == caller.call && id != 0 {
            return Err(AwaitError::Failed(format!("call {id} cannot await itself")));
        }
        // Still queued: run it here rather than wait for a worker (no await can then deadlock
        // the pool), within this call's deadline. A call of another user, or unknown, is simply
        // not found.
        if let Some(job) = self.pool.take(&caller.user, id) {
            job(deadline);
        }
        match self.calls.wait(&caller.user, id, deadline) {
            Ok(o) => Ok(o),
            Err(WaitError::Timeout) => Err(AwaitError::Timeout),
            Err(WaitError::Unknown) => Err(AwaitError::Failed(format!("there is no call {id}"))),
            Err(WaitError::Failed(f)) => Err(AwaitError::Failed(chain(&f))),
        }
    }

    fn state(&self) -> &StateStore {
        &self.state
    }

    fn object(&self, user: &str, key: &str, offset: u64, max_len: u64) -> Result<ObjectBytes, ObjectError> {
        match self.holder(user, key)? {
            Holder::Here(store) => store.open_object(user, key).map(|(f, size)| ObjectBytes::Local(f, size)),
            Holder::There(node) => crate::ndp::remote::get(&node, self.config.cluster_token.as_ref(), user, key, offset, max_len).map(ObjectBytes::Fetched),
        }
    }

    fn put_object(&self, user: &str, key: &str, data: &[u8]) -> Result<u64, ObjectError> {
        match self.holder(user, key)? {
            Holder::Here(store) => {
                let mut put = store.begin_put(user, key, Some(data.len() as u64))?;
                put.write(data)?;
                put.commit()
            }
            Holder::There(node) => crate::ndp::remote::put(&node, self.config.cluster_token.as_ref(), user, key, data),
        }
    }

    fn offload_node(&self, caller: &CallContext, key: &str) -> Option<String> {
        Platform::offload_node(self, caller, key)
    }

    fn offload(&self, caller: &CallContext, node: &str, request: &Request, deadline: Option<Instant>) -> Result<Reply, OffloadError> {
        self.send_offload(caller, node, request, deadline)
    }

    fn files(&self, user: &str, function: &str) -> anyhow::Result<crate::exec::FunctionFiles> {
        self.files
            .of(user, function)
            .map_err(|e| anyhow::anyhow!("cannot make the files of {function} under {}: {e}", self.config.data_dir.display()))
    }
}
