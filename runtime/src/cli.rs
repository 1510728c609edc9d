//! The `runtime` command line. The binary only calls [`main`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ebb_memnode::{LocalTransport, TcpConfig, Transport, parse_size};

use crate::exec::{Executor, Stdout};
use crate::pager::{FaultPath, Pager, PagerConfig, PagerSnapshot};

#[derive(Debug, Parser)]
#[command(name = "runtime", version, about = "Ebb's compute-host runtime: wasm functions on paged memory")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a WASI command module on paged memory (like `wasmtime run`).
    Run(RunArgs),
    /// Serve the Faasm-compatible HTTP API.
    Serve(Box<ServeArgs>),
    /// Replay an invocation trace against one server per policy, side by side; writes CSVs and
    /// SVG plots and prints a table.
    Replay(ReplayArgs),
    /// Upload a function to a server.
    Upload {
        user: String,
        function: String,
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Invoke a function on a server; prints its output.
    Invoke {
        user: String,
        function: String,
        /// The call's input.
        #[arg(long, default_value = "")]
        input: String,
        /// Return the call id at once instead of waiting (poll with `runtime status ID`).
        #[arg(long = "async")]
        is_async: bool,
        /// Run its near-data parts on the compute node (Faasm's `forbid_ndp`).
        #[arg(long)]
        forbid_ndp: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Store a file as an object (on the storage node that holds it).
    PutObject {
        user: String,
        key: String,
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The status of an async call: RUNNING, its result, or FAILED.
    Status {
        id: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Offload a function's idle instances to the memnode; prints the bytes that left the host.
    Offload {
        user: String,
        function: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a server's metrics (Prometheus text).
    Metrics {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Workflows (DataFlower's `workflow_info.yaml`): upload, invoke, show, poll.
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Compile a module read from stdin to loadable code on stdout (what `serve` runs in a child
    /// process, under CPU and memory limits, for every upload).
    #[command(hide = true)]
    Compile,
}

#[derive(Debug, Subcommand)]
enum WorkflowCommand {
    /// Upload a workflow file (its blocks' functions must be uploaded first).
    Upload {
        user: String,
        workflow: String,
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Invoke a workflow; prints its result and per-block timings (JSON).
    Invoke {
        user: String,
        workflow: String,
        /// A global input, `KEY=VALUE` (`$USER.KEY` in the file); repeatable.
        #[arg(long = "input", value_parser = key_value)]
        inputs: Vec<(String, String)>,
        /// A global input read from a file, `KEY=PATH`; repeatable.
        #[arg(long = "input-file", value_parser = key_value)]
        input_files: Vec<(String, String)>,
        /// Return the call id at once (poll with `runtime workflow status`).
        #[arg(long = "async")]
        is_async: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print an uploaded workflow's parsed DAG (JSON).
    Show {
        user: String,
        workflow: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The status of an async workflow call: RUNNING, its result, or FAILED.
    Status {
        user: String,
        workflow: String,
        id: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?}: write KEY=VALUE"))
}

#[derive(Debug, Args)]
struct ClientArgs {
    /// The runtime's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "EBB_SERVER")]
    server: String,
    /// Bearer token of the user (`--tokens` file of the server).
    #[arg(long, env = "EBB_TOKEN")]
    token: Option<ebb_memnode::tokens::Secret>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    #[command(flatten)]
    memory: MemoryArgs,
    /// Where uploaded functions are stored (and found again after a restart).
    #[arg(long, default_value = "ebb-data")]
    data_dir: PathBuf,
    /// File of `USER TOKEN` lines. Without it the server binds to loopback only.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Allow a non-loopback address without tokens (anyone who can connect can run code).
    #[arg(long)]
    insecure: bool,
    /// Seconds before a running call is interrupted.
    #[arg(long, default_value_t = 60)]
    call_timeout_s: u64,
    /// Seconds before a running workflow call fails (each of its blocks is a call, bounded by
    /// --call-timeout-s too).
    #[arg(long, default_value_t = 120)]
    workflow_timeout_s: u64,
    /// Largest call input, e.g. 16M.
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    max_input: u64,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    policy: PolicyArgs,
}

/// What calls, tenants and uploads may use (docs/platform.md lists every limit).
#[derive(Debug, Args)]
struct LimitArgs {
    /// Calls running at once (worker threads).
    #[arg(long, default_value_t = 16)]
    call_threads: usize,
    /// Calls of one user running at once (default: half the call threads).
    #[arg(long)]
    max_calls_per_user: Option<usize>,
    /// Calls waiting for a thread, over all users; a call beyond gets 503.
    #[arg(long, default_value_t = 1024)]
    max_queued: usize,
    /// Calls of one user waiting for a thread; a call beyond gets 503.
    #[arg(long, default_value_t = 256)]
    max_queued_per_user: usize,
    /// How long a finished async call's record (and output) is kept for polling, e.g. 10m.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    call_record_ttl: Duration,
    /// Most finished call records kept.
    #[arg(long, default_value_t = 10_000)]
    call_records: usize,
    /// Most bytes of outputs kept in finished call records, e.g. 256M.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    call_record_bytes: u64,
    /// Largest state value, e.g. 256M.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    max_state_value: u64,
    /// Most state one user may hold (values, and the pages of values mapped on this node), e.g. 1G.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    max_state_per_user: u64,
    /// Most state keys of one user mapped on this node by pointer (each holds a file descriptor).
    #[arg(long, default_value_t = 256)]
    max_mapped_state_keys: usize,
    /// Most disk one user's functions may take in their directories (allocated bytes), e.g. 1G.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    max_files_per_user: u64,
    /// Most files, directories and links one user's functions may keep in their directories.
    #[arg(long, default_value_t = 10_000)]
    max_file_entries_per_user: u64,
    /// Be a storage node: keep objects (`PUT|GET|DELETE /o/USER/KEY`) under DATA_DIR/objects.
    #[arg(long)]
    storage: bool,
    /// Largest object a storage node keeps, e.g. 1G.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    max_object: u64,
    /// Most bytes of objects one user may keep on a storage node, e.g. 16G.
    #[arg(long, default_value = "16G", value_parser = parse_size)]
    max_objects_per_user: u64,
    /// The storage nodes' URLs, comma-separated, the same list on every runtime: object requests
    /// go to the node that holds the object (docs/platform.md, "Objects").
    #[arg(long, value_delimiter = ',')]
    storage_nodes: Vec<String>,
    /// This storage node's URL as --storage-nodes lists it.
    #[arg(long)]
    advertise: Option<String>,
    /// A file holding the secret the cluster's runtimes present to each other when a guest reads
    /// or writes an object another node holds (the same file on every runtime; with --tokens).
    #[arg(long)]
    cluster_token_file: Option<PathBuf>,
    /// A storage node refuses offloaded calls while its CPUs are busier than this fraction
    /// (AutoNDP's default); the caller runs them itself.
    #[arg(long, default_value_t = 0.8)]
    ndp_max_cpu: f64,
    /// ... or while more than this fraction of its memory is in use.
    #[arg(long, default_value_t = 0.8)]
    ndp_max_memory: f64,
    /// ... or while this many offloaded calls run on it. Default: 0.8 of --call-threads.
    #[arg(long)]
    ndp_max_in_flight: Option<usize>,
    /// Largest module an upload may send, e.g. 64M.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    max_module: u64,
    /// CPU time one upload's compile may use, e.g. 60s.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    compile_cpu: Duration,
    /// Memory one upload's compile may use, e.g. 4G.
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    compile_memory: u64,
}

impl LimitArgs {
    fn apply(&self, config: &mut crate::platform::PlatformConfig) -> anyhow::Result<()> {
        let range = |name: &str, v: u64, lo: u64, hi: u64| -> anyhow::Result<()> {
            if (lo..=hi).contains(&v) { Ok(()) } else { anyhow::bail!("--{name} {v} is out of range: allowed {lo} to {hi}") }
        };
        range("call-threads", self.call_threads as u64, 1, 4096)?;
        let per_user = self.max_calls_per_user.unwrap_or((self.call_threads / 2).max(1));
        range("max-calls-per-user", per_user as u64, 1, self.call_threads as u64)?;
        range("max-queued", self.max_queued as u64, 0, 1 << 20)?;
        range("max-queued-per-user", self.max_queued_per_user as u64, 0, self.max_queued as u64)?;
        range("call-records", self.call_records as u64, 0, 10_000_000)?;
        config.pool = crate::platform::PoolConfig {
            workers: self.call_threads,
            max_running_per_user: per_user,
            max_queued: self.max_queued,
            max_queued_per_user: self.max_queued_per_user,
        };
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        config.records = crate::platform::RecordLimits {
            ttl: self.call_record_ttl,
            max_finished: self.call_records,
            max_output_bytes: size(self.call_record_bytes),
        };
        config.state = crate::state::StateLimits {
            max_value: size(self.max_state_value),
            max_per_user: size(self.max_state_per_user),
            max_replicas_per_user: self.max_mapped_state_keys,
        };
        config.files = crate::platform::FileLimits {
            max_bytes_per_user: self.max_files_per_user,
            max_entries_per_user: self.max_file_entries_per_user,
        };
        config.objects = self
            .storage
            .then_some(crate::ndp::ObjectLimits { max_object: self.max_object, max_per_user: self.max_objects_per_user });
        if let Some(me) = &self.advertise
            && !self.storage_nodes.contains(me)
        {
            anyhow::bail!("--advertise {me} is not one of --storage-nodes: list this node's URL exactly as the other runtimes do");
        }
        if self.advertise.is_some() && !self.storage {
            anyhow::bail!("--advertise names a storage node's own URL: add --storage");
        }
        if let Some(path) = &self.cluster_token_file {
            let secret = std::fs::read_to_string(path).with_context(|| format!("cannot read --cluster-token-file {}", path.display()))?;
            let secret = secret.trim();
            if secret.len() < 16 {
                anyhow::bail!("the cluster token in {} is shorter than 16 bytes: use a long random secret", path.display());
            }
            config.cluster_token = Some(ebb_memnode::tokens::Secret(secret.to_string()));
        }
        config.storage_nodes = self.storage_nodes.clone();
        config.advertise = self.advertise.clone();
        for (name, v) in [("ndp-max-cpu", self.ndp_max_cpu), ("ndp-max-memory", self.ndp_max_memory)] {
            if !(0.0..=1.0).contains(&v) {
                anyhow::bail!("--{name} {v} is out of range: a fraction from 0 to 1");
            }
        }
        #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss, reason = "0.8 of a thread count")]
        let in_flight = self.ndp_max_in_flight.unwrap_or(((self.call_threads as f64 * 0.8) as usize).max(1));
        config.admission = crate::ndp::offload::AdmissionLimits { cpu: self.ndp_max_cpu, memory: self.ndp_max_memory, in_flight };
        config.compile.max_module = size(self.max_module);
        config.compile.cpu = self.compile_cpu;
        // Wall time is a backstop for a compile that waits rather than computes; on a loaded machine
        // CPU time is the bound that matters.
        config.compile.wall = self.compile_cpu * 3 + Duration::from_secs(5);
        config.compile.memory = self.compile_memory;
        Ok(())
    }
}

/// Keep-alive and offload policy (docs/platform.md lists every setting and its range).
#[derive(Debug, Args)]
struct PolicyArgs {
    /// keep-alive (never offload), faasmem (segments + semi-warm, every page written back), ebb
    /// (faasmem + working-set prefetch + dirty tracking; the default) or cold (no keep-alive).
    #[arg(long)]
    policy: Option<String>,
    /// Idle time before an instance turns semi-warm and drains, e.g. 30s; `auto` (the default):
    /// the function's P99 reuse interval, at least --semi-warm-min.
    #[arg(long)]
    semi_warm_after: Option<String>,
    /// Least automatic semi-warm threshold (default 60s).
    #[arg(long)]
    semi_warm_min: Option<String>,
    /// Bytes per second a semi-warm instance drains (default 64M).
    #[arg(long)]
    drain_rate: Option<String>,
    /// Bytes a semi-warm instance keeps resident (default 0).
    #[arg(long)]
    floor: Option<String>,
    /// Bytes of the function's working set a semi-warm instance keeps on top of --floor
    /// (default 0: off).
    #[arg(long)]
    hot_floor: Option<String>,
    /// Every this many restores, one runs without prefetch and re-records the working set
    /// (default 8; 0: never).
    #[arg(long)]
    ws_probe_every: Option<String>,
    /// Idle time after which an instance is freed (default 10m).
    #[arg(long)]
    keep_alive: Option<String>,
    /// A warm instance offloads init pages no call touched for this many calls (default 4)...
    #[arg(long)]
    init_idle_calls: Option<String>,
    /// ...or for this long (default 60s).
    #[arg(long)]
    init_idle: Option<String>,
    /// File of per-function settings: lines `default KEY=VALUE...` and `USER/FUNCTION KEY=VALUE...`.
    #[arg(long)]
    policy_file: Option<PathBuf>,
    /// Milliseconds between two looks of the policy at idle instances.
    #[arg(long, default_value_t = 100)]
    policy_tick_ms: u64,
}

impl PolicyArgs {
    fn policy(&self) -> anyhow::Result<crate::policy::PolicyFile> {
        let mut config = crate::policy::PolicyConfig::default();
        let flags = [
            ("policy", &self.policy),
            ("semi-warm-after", &self.semi_warm_after),
            ("semi-warm-min", &self.semi_warm_min),
            ("drain-rate", &self.drain_rate),
            ("floor", &self.floor),
            ("hot-floor", &self.hot_floor),
            ("ws-probe-every", &self.ws_probe_every),
            ("keep-alive", &self.keep_alive),
            ("init-idle-calls", &self.init_idle_calls),
            ("init-idle", &self.init_idle),
        ];
        for (key, value) in flags {
            if let Some(value) = value {
                config.set(key, value).map_err(|e| anyhow::anyhow!("--{key}: {e}"))?;
            }
        }
        config.check()?;
        Ok(match &self.policy_file {
            Some(path) => crate::policy::PolicyFile::load(path, config)?,
            None => crate::policy::PolicyFile { default: config, ..Default::default() },
        })
    }
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// Trace CSV: Azure Functions 2021 (app,func,end_timestamp,duration) or 2019 (per-minute
    /// counts).
    trace: PathBuf,
    /// Policies to start a server for (each with an embedded memnode).
    #[arg(long, default_value = "keep-alive,faasmem,ebb,cold", value_delimiter = ',')]
    policies: Vec<String>,
    /// Replay against running servers instead (NAME=URL, repeatable); --policies is ignored.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Extra arguments for the servers started (e.g. --server-arg=--semi-warm-min=10s).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Directory of the workload functions (`NAME.wasm`).
    #[arg(long, default_value = "functions/build/workloads")]
    functions: PathBuf,
    /// Workloads the trace's functions map to, round robin: NAME:INPUT,...
    #[arg(long, default_value = crate::replay::DEFAULT_WORKLOADS)]
    workloads: String,
    /// Replay only the first MINUTES of the trace.
    #[arg(long)]
    minutes: Option<f64>,
    /// Trace time runs this many times faster.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Milliseconds between two memory samples.
    #[arg(long, default_value_t = 250)]
    sample_ms: u64,
    /// Output directory: summary.csv, calls.csv, memory.csv, memory.svg, latency.svg.
    #[arg(long, default_value = "replay-out")]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    if !(args.speed > 0.0 && args.speed <= 1000.0) {
        anyhow::bail!("--speed {} is out of range: allowed above 0 up to 1000", args.speed);
    }
    let mut trace = crate::replay::load_trace(&args.trace)?;
    if let Some(m) = args.minutes {
        trace.retain(|c| c.at.as_secs_f64() < m * 60.0);
    }
    let data = args.out.join("servers");
    let mut memnode = None;
    let targets = if args.targets.is_empty() {
        let m = memnode.insert(crate::replay::MemnodeProcess::spawn()?);
        let mut targets = Vec::new();
        for p in &args.policies {
            p.parse::<crate::policy::PolicyKind>()?;
            let dir = data.join(p);
            let _ = std::fs::remove_dir_all(&dir);
            targets.push(crate::replay::Target::spawn(p, &dir, &m.addr, &args.server_args)?);
        }
        targets
    } else {
        args.targets
            .iter()
            .map(|t| {
                let (name, url) = t.split_once('=').with_context(|| format!("--target {t}: expected NAME=URL"))?;
                Ok(crate::replay::Target::remote(name, url))
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let functions: std::collections::HashSet<&str> = trace.iter().map(|c| c.function.as_str()).collect();
    eprintln!(
        "replaying {} calls of {} functions ({:.1} min of trace at {}x) against {}",
        trace.len(),
        functions.len(),
        trace.last().map_or(0.0, |c| c.at.as_secs_f64() / 60.0),
        args.speed,
        targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    let config = crate::replay::ReplayConfig {
        functions: args.functions.clone(),
        workloads: crate::replay::parse_workloads(&args.workloads)?,
        speed: args.speed,
        sample: Duration::from_millis(args.sample_ms.max(10)),
        out: args.out.clone(),
        progress: !args.quiet,
    };
    let summaries = crate::replay::replay(&trace, &targets, &config)?;
    drop(targets);
    drop(memnode);
    let _ = std::fs::remove_dir_all(&data);
    crate::replay::print_table(&summaries);
    println!("wrote {}/{{summary,calls,memory}}.csv and {{memory,latency}}.svg", args.out.display());
    Ok(())
}

/// Where pages go and how they come back.
#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// Memnode to page to: HOST:PORT or tcp://HOST:PORT (pages over TCP), rdma://HOST:PORT
    /// (control over TCP at HOST:PORT, pages by one-sided RDMA). Without it an embedded,
    /// in-process memnode is used.
    #[arg(long)]
    pub memnode: Option<String>,
    /// Local RDMA device for an rdma:// memnode (default: the first one).
    #[arg(long)]
    pub rdma_device: Option<String>,
    /// Token for the memnode (its token file's secret). Default: `runtime serve` keeps a random
    /// one in DATA_DIR/memnode-identity (so a restarted runtime is the same identity); `runtime
    /// run` makes a random one per process.
    #[arg(long, env = "EBB_MEMNODE_TOKEN")]
    pub token: Option<ebb_memnode::tokens::Secret>,
    /// The memnode session this runtime's regions belong to. A restarted runtime with the same
    /// session (and token) frees what its previous run left at once, instead of after the lease
    /// and grace period. Two live runtimes must not share one. Default: `runtime serve` keeps one
    /// in DATA_DIR/memnode-identity; `runtime run` uses a random one.
    #[arg(long, env = "EBB_MEMNODE_SESSION")]
    pub memnode_session: Option<String>,
    /// Milliseconds before a memnode that does not answer turns into an error.
    #[arg(long, default_value_t = 1000)]
    pub memnode_timeout_ms: u64,
    /// Capacity of the embedded memnode (when --memnode is not given).
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    pub embedded_capacity: u64,
    /// How faults reach the pager: `uffd-sigbus` (the faulting thread resolves its own fault in
    /// its SIGBUS handler) or `uffd` (handler threads read userfaultfd events).
    #[arg(long, env = FaultPath::ENV, default_value_t = FaultPath::default())]
    pub fault_path: FaultPath,
    /// Fault-handler threads (the uffd path).
    #[arg(long, default_value_t = 2)]
    pub fault_threads: usize,
    /// Following remote pages fetched with a faulting one (0 to 1023).
    #[arg(long, default_value_t = 15)]
    pub readaround: usize,
    /// Microseconds an idle fault-handler thread polls for the next fault before blocking.
    #[arg(long, default_value_t = 100)]
    pub fault_spin_us: u64,
    /// Copy a function's initial state into each instance's memory page by page, instead of
    /// mapping its image copy-on-write (the default): the older, slower path, for comparison.
    #[arg(long)]
    pub copy_images: bool,
}

/// The file under a data directory that holds the runtime's stable memnode identity.
const IDENTITY_FILE: &str = "memnode-identity";

/// The token and session name kept in `DIR/memnode-identity` (`TOKEN SESSION`), made on first use
/// (random, mode 0600): what makes a restarted `runtime serve` the same memnode client.
fn stable_identity(dir: &std::path::Path) -> anyhow::Result<(String, String)> {
    let path = dir.join(IDENTITY_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let mut parts = text.split_whitespace();
        if let (Some(token), Some(session), None) = (parts.next(), parts.next(), parts.next()) {
            return Ok((token.to_string(), session.to_string()));
        }
        anyhow::bail!("{} is not `TOKEN SESSION`: fix or delete it (a new identity is then made)", path.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let (token, session) = (ebb_memnode::client::random_token(), format!("rt-{}", &ebb_memnode::client::random_token()[..16]));
    crate::registry::write_atomically(&path, format!("{token} {session}\n").as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok((token, session))
}

impl MemoryArgs {
    /// Connects to the memnode (or makes the embedded one) and starts a pager on it. With
    /// `data_dir`, the memnode token and session default to the ones kept there.
    pub fn pager(&self, data_dir: Option<&std::path::Path>) -> anyhow::Result<Arc<Pager>> {
        let transport: Arc<dyn Transport> = match &self.memnode {
            Some(addr) => {
                let mut config = TcpConfig {
                    timeout: Duration::from_millis(self.memnode_timeout_ms),
                    rdma_device: self.rdma_device.clone(),
                    ..Default::default()
                };
                let kept = match (data_dir, &self.token, &self.memnode_session) {
                    (Some(dir), None, _) | (Some(dir), _, None) => Some(stable_identity(dir)?),
                    _ => None,
                };
                if let Some(token) = self.token.as_ref().map(|t| t.expose().to_string()).or_else(|| kept.as_ref().map(|k| k.0.clone())) {
                    config.token = token;
                }
                config.session = self.memnode_session.clone().or_else(|| kept.map(|k| k.1));
                ebb_memnode::connect(addr, config)?
            }
            None => Arc::new(LocalTransport::embedded(self.embedded_capacity)),
        };
        let config = PagerConfig {
            fault_path: self.fault_path,
            fault_threads: self.fault_threads,
            readaround: self.readaround,
            spin: Duration::from_micros(self.fault_spin_us),
            cow_images: !self.copy_images,
        };
        Ok(Pager::new(config, transport)?)
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The module (.wasm or .wat).
    file: PathBuf,
    #[command(flatten)]
    memory: MemoryArgs,
    /// Run `_start` this many times on one instance.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Offload all of the instance's memory to the memnode before each run after the first.
    #[arg(long)]
    offload_every_call: bool,
    /// Print the pager's counters (to stderr) after each run.
    #[arg(long)]
    stats: bool,
    /// Arguments passed to the module (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

/// Entry point of the `runtime` binary.
pub fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run(args) => run(args),
        Command::Serve(args) => serve(*args),
        Command::Replay(args) => replay(args),
        Command::Upload { user, function, file, client } => {
            let wasm = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let (status, body) = client.request("PUT", &format!("/f/{user}/{function}"), &wasm)?;
            finish(status, &body)
        }
        Command::PutObject { user, key, file, client } => {
            let data = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let (status, body) = client.request("PUT", &crate::ndp::remote::object_path(&user, &key), &data)?;
            finish(status, &body)
        }
        Command::Invoke { user, function, input, is_async, forbid_ndp, client } => {
            let msg = serde_json::json!({"user": user, "function": function, "input_data": input, "async": is_async, "forbid_ndp": forbid_ndp});
            let (status, body) = client.request("POST", "/f/", msg.to_string().as_bytes())?;
            finish(status, &body)
        }
        Command::Offload { user, function, client } => {
            let (status, body) = client.request("POST", &format!("/f/{user}/{function}/offload"), &[])?;
            finish(status, &body)
        }
        Command::Metrics { client } => {
            let (status, body) = client.request("GET", "/metrics", &[])?;
            finish(status, &body)
        }
        Command::Status { id, client } => {
            let msg = serde_json::json!({"status": true, "id": id});
            let (status, body) = client.request("POST", "/f/", msg.to_string().as_bytes())?;
            finish(status, &body)
        }
        Command::Workflow(w) => workflow(w),
        Command::Compile => compile(),
    }
}

/// `runtime workflow ...`: the `/w/` routes.
fn workflow(command: WorkflowCommand) -> anyhow::Result<()> {
    let (status, body) = match command {
        WorkflowCommand::Upload { user, workflow, file, client } => {
            let yaml = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            client.request("PUT", &format!("/w/{user}/{workflow}"), &yaml)?
        }
        WorkflowCommand::Invoke { user, workflow, inputs, input_files, is_async, client } => {
            let mut object = serde_json::Map::new();
            for (k, v) in inputs {
                object.insert(k, serde_json::Value::String(v));
            }
            for (k, path) in input_files {
                let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path} (input {k})"))?;
                object.insert(k, serde_json::Value::String(text));
            }
            if is_async {
                object.insert("async".into(), serde_json::Value::Bool(true));
            }
            client.request("POST", &format!("/w/{user}/{workflow}"), serde_json::Value::Object(object).to_string().as_bytes())?
        }
        WorkflowCommand::Show { user, workflow, client } => client.request("GET", &format!("/w/{user}/{workflow}"), &[])?,
        WorkflowCommand::Status { user, workflow, id, client } => client.request("GET", &format!("/w/{user}/{workflow}/{id}"), &[])?,
    };
    finish(status, &body)
}

/// `runtime compile`: wasm (or WAT) on stdin, loadable code on stdout.
fn compile() -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut wasm = Vec::new();
    std::io::stdin().read_to_end(&mut wasm)?;
    let code = crate::exec::compile_to_bytes(&wasm)?;
    std::io::stdout().write_all(&code)?;
    Ok(())
}

/// Prints a response body; a non-2xx status is an error exit.
fn finish(status: u16, body: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out.write_all(body).and_then(|()| if body.ends_with(b"\n") { Ok(()) } else { out.write_all(b"\n") }).and_then(|()| out.flush());
    // A reader that stopped early (`| head`) is not an error of the call.
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    if !(200..300).contains(&status) {
        std::process::exit(1);
    }
    Ok(())
}

impl ClientArgs {
    fn request(&self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let url = format!("{}{path}", self.server.trim_end_matches('/'));
        crate::api::client::request(method, &url, self.token.as_ref().map(|t| t.expose()), body, None)
            .with_context(|| format!("cannot reach the runtime at {}: is `runtime serve` running?", self.server))
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = args
        .listen
        .parse()
        .with_context(|| format!("--listen {} is not an address like 127.0.0.1:8080", args.listen))?;
    let tokens = match &args.tokens {
        Some(path) => Some(Arc::new(crate::registry::load_tokens(path)?)),
        None => None,
    };
    if tokens.is_none() {
        if !addr.ip().is_loopback() && !args.insecure {
            anyhow::bail!(
                "refusing to serve {addr} without authentication: give --tokens FILE (lines `USER TOKEN`), \
                 or listen on a loopback address, or pass --insecure"
            );
        }
        eprintln!("no --tokens file: serving without authentication{}", if addr.ip().is_loopback() { " on loopback only" } else { " (--insecure)" });
    }
    let policy = args.policy.policy()?;
    if !(1..=60_000).contains(&args.policy.policy_tick_ms) {
        anyhow::bail!("--policy-tick-ms {} is out of range: allowed 1 to 60000", args.policy.policy_tick_ms);
    }
    let mut config = crate::platform::PlatformConfig {
        data_dir: args.data_dir.clone(),
        max_input: usize::try_from(args.max_input).unwrap_or(usize::MAX),
        call_timeout: Duration::from_secs(args.call_timeout_s),
        workflow_timeout: Duration::from_secs(args.workflow_timeout_s),
        policy,
        policy_tick: Duration::from_millis(args.policy.policy_tick_ms),
        // Uploads are compiled by this binary in bounded child processes.
        compiler_exe: Some(std::env::current_exe().context("cannot find the runtime binary to compile uploads with")?),
        ..Default::default()
    };
    args.limits.apply(&mut config)?;
    if let (Some(cluster), Some(tokens)) = (&config.cluster_token, &tokens)
        && tokens.entry(cluster.expose().as_bytes()).is_some()
    {
        anyhow::bail!("the cluster token is also a user's token in --tokens: give the cluster its own secret");
    }
    if !(1..=86_400).contains(&args.workflow_timeout_s) {
        anyhow::bail!("--workflow-timeout-s {} is out of range: allowed 1 to 86400", args.workflow_timeout_s);
    }
    if !(1..=86_400).contains(&args.call_timeout_s) {
        anyhow::bail!("--call-timeout-s {} is out of range: allowed 1 to 86400", args.call_timeout_s);
    }
    let pager = args.memory.pager(Some(&args.data_dir))?;
    let pager_path = pager.fault_path();
    let platform = crate::platform::Platform::start(config, pager)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        let memnode = args.memory.memnode.as_deref().unwrap_or("embedded");
        // Tests and scripts wait for this line.
        println!("runtime listening on {local} (memnode: {memnode}, fault path: {}, data: {})", pager_path, args.data_dir.display());
        let app = crate::api::router(crate::api::ApiState::new(platform, tokens));
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        anyhow::Ok(())
    })
}

fn print_stats(label: &str, s: &PagerSnapshot) {
    eprintln!(
        "[{label}] faults: zero={} remote={} spurious={} failed={} | pages fetched={} offloaded={} zero-dropped={} | bytes in={} out={}",
        s.faults_zero,
        s.faults_remote,
        s.faults_spurious,
        s.faults_failed,
        s.pages_fetched,
        s.pages_offloaded,
        s.pages_zero_dropped,
        s.bytes_in,
        s.bytes_out
    );
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let pager = args.memory.pager(None)?;
    let exec = Executor::new(pager.clone())?;
    let module = exec.compile(&bytes)?;
    let mut argv = vec![args.file.display().to_string()];
    argv.extend(args.args.iter().cloned());
    let mut instance = exec.instantiate(&module, &argv, Stdout::Inherit)?;
    if args.stats {
        eprintln!("[init] fault path: {}", pager.fault_path());
        print_stats("init", &pager.stats());
    }
    let mut last = 0;
    for i in 0..args.repeat {
        if i > 0 && args.offload_every_call {
            let memory = instance.memory().context("the module exports no memory to offload")?;
            let report = memory.offload()?;
            eprintln!(
                "[offload] {} pages sent to the {} memnode, {} zero pages dropped, {} clean pages dropped",
                report.pages_sent,
                pager.transport().kind(),
                report.zero_pages_dropped,
                report.clean_pages_dropped
            );
        }
        last = instance.run().with_context(|| format!("run {} of {}", i + 1, args.repeat))?;
        if args.stats {
            print_stats(&format!("run {}", i + 1), &pager.stats());
        }
        if last != 0 {
            break;
        }
    }
    drop(instance);
    std::process::exit(last);
}
