//! The `runtime` command line. The binary only calls [`main`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ebb_memnode::{LocalTransport, TcpConfig, Transport, parse_size};

use crate::exec::{Executor, Stdout};
use crate::pager::{Pager, PagerConfig, PagerSnapshot};

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
}

/// Where pages go and how they come back.
#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// Memnode to page to (HOST:PORT or tcp://HOST:PORT). Without it an embedded, in-process
    /// memnode is used.
    #[arg(long)]
    pub memnode: Option<String>,
    /// Token for the memnode (its token file's secret). Default: a random per-process token.
    #[arg(long, env = "EBB_MEMNODE_TOKEN")]
    pub token: Option<String>,
    /// Milliseconds before a memnode that does not answer turns into an error.
    #[arg(long, default_value_t = 1000)]
    pub memnode_timeout_ms: u64,
    /// Capacity of the embedded memnode (when --memnode is not given).
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    pub embedded_capacity: u64,
    /// Fault-handler threads.
    #[arg(long, default_value_t = 2)]
    pub fault_threads: usize,
    /// Following remote pages fetched with a faulting one.
    #[arg(long, default_value_t = 15)]
    pub readaround: usize,
    /// Microseconds an idle fault-handler thread polls for the next fault before blocking.
    #[arg(long, default_value_t = 100)]
    pub fault_spin_us: u64,
}

impl MemoryArgs {
    /// Connects to the memnode (or makes the embedded one) and starts a pager on it.
    pub fn pager(&self) -> anyhow::Result<Arc<Pager>> {
        let transport: Arc<dyn Transport> = match &self.memnode {
            Some(addr) => {
                let mut config = TcpConfig { timeout: Duration::from_millis(self.memnode_timeout_ms), ..Default::default() };
                if let Some(token) = &self.token {
                    config.token = token.clone();
                }
                ebb_memnode::connect(addr, config)?
            }
            None => Arc::new(LocalTransport::embedded(self.embedded_capacity)),
        };
        let config = PagerConfig {
            fault_threads: self.fault_threads,
            readaround: self.readaround,
            spin: Duration::from_micros(self.fault_spin_us),
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
    }
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
    let pager = args.memory.pager()?;
    let exec = Executor::new(pager.clone())?;
    let module = exec.compile(&bytes)?;
    let mut argv = vec![args.file.display().to_string()];
    argv.extend(args.args.iter().cloned());
    let mut instance = exec.instantiate(&module, &argv, Stdout::Inherit)?;
    if args.stats {
        print_stats("init", &pager.stats());
    }
    let mut last = 0;
    for i in 0..args.repeat {
        if i > 0 && args.offload_every_call {
            let memory = instance.memory().context("the module exports no memory to offload")?;
            let report = memory.offload()?;
            eprintln!(
                "[offload] {} pages sent to the {} memnode, {} zero pages dropped",
                report.pages_sent,
                pager.transport().kind(),
                report.zero_pages_dropped
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
