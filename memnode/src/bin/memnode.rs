//! `memnode`: serve a memory pool to Ebb runtimes, or look at one (`memnode stats`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ebb_memnode::lease::LeaseConfig;
use ebb_memnode::rdma::Fabric;
use ebb_memnode::server::{Server, ServerConfig, Tokens};
use ebb_memnode::{parse_size, Store, StoreConfig, TcpConfig, TcpTransport};

/// Ebb's memory node: holds the pages that runtimes offload and serves them back.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a running memnode's sessions: regions, stored and declared bytes, last renewal, per
    /// identity and session (all of them for an operator token, else the token's own).
    Stats {
        /// The memnode's address.
        #[arg(long, default_value = "127.0.0.1:7070")]
        memnode: String,
        /// A token of the memnode's token file (one marked `operator` sees every identity).
        #[arg(long, env = "EBB_MEMNODE_TOKEN")]
        token: ebb_memnode::tokens::Secret,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:7070 or 0.0.0.0:7070.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    /// Memory to hold pages in, e.g. 512M, 16G (counted by pages stored, not regions declared).
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    capacity: u64,
    /// Bytes one identity may store, unless its token-file line says `quota=SIZE`. Default: the
    /// capacity.
    #[arg(long, value_parser = parse_size)]
    quota: Option<u64>,
    /// File of `TENANT TOKEN [operator] [quota=SIZE]` lines. Without it any client token is
    /// accepted and each token is its own identity (clients are still isolated from each other).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// A session not renewed for this long ends (its client is presumed dead), e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// An ended session's regions are freed this much later, e.g. 60s.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Time from accept to a completed handshake (Hello + Auth).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
    /// An authenticated connection idle this long is closed.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Connections served at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: u64,
    /// Connections one identity may hold at once.
    #[arg(long, default_value_t = 256)]
    max_connections_per_identity: u64,
    /// Microseconds a connection thread busy-polls for the next request before blocking.
    #[arg(long, default_value_t = 50)]
    spin_us: u64,
    /// RDMA device to serve pages through by one-sided verbs (e.g. mlx4_0, rxe0); clients then
    /// use rdma://HOST:PORT. The TCP data path keeps working.
    #[arg(long)]
    rdma_device: Option<String>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Stats { memnode, token }) => stats(&memnode, token.0),
        None => serve(cli.serve),
    }
}

fn check_range(name: &str, d: Duration, min: Duration, max: Duration) -> anyhow::Result<()> {
    if d < min || d > max {
        anyhow::bail!("--{name} {} is out of range: allowed {} to {}", humantime::format_duration(d), humantime::format_duration(min), humantime::format_duration(max));
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let tokens = args.token_file.as_deref().map(Tokens::load).transpose()?;
    if tokens.is_none() {
        tracing::warn!("no --token-file: any client token is accepted (each token sees only its own regions)");
    }
    let ms = Duration::from_millis;
    check_range("lease", args.lease, ms(100), ms(3_600_000))?;
    check_range("grace", args.grace, ms(0), ms(86_400_000))?;
    check_range("handshake-timeout", args.handshake_timeout, ms(100), ms(60_000))?;
    check_range("idle-timeout", args.idle_timeout, ms(1000), ms(86_400_000))?;
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}: is another memnode running there?", args.listen))?;
    let rdma = match &args.rdma_device {
        Some(dev) => Some(Arc::new(Fabric::open(dev).with_context(|| format!("--rdma-device {dev}"))?)),
        None => None,
    };
    let mut store = StoreConfig::new(args.capacity);
    store.default_quota = args.quota.unwrap_or(args.capacity);
    store.quotas = tokens.as_ref().map(Tokens::quotas).unwrap_or_default();
    let config = ServerConfig {
        tokens,
        spin: Duration::from_micros(args.spin_us),
        rdma,
        leases: LeaseConfig { lease: args.lease, grace: args.grace },
        handshake_timeout: args.handshake_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: args.max_connections,
        max_connections_per_identity: args.max_connections_per_identity,
        ..Default::default()
    };
    let server = Server::new(Arc::new(Store::with_config(store)), config);
    let handle = server.spawn(listener)?;
    // Tests and scripts wait for this line.
    let rdma = args.rdma_device.as_deref().map(|d| format!(", RDMA on {d}")).unwrap_or_default();
    println!("memnode listening on {} with {} bytes{rdma}", handle.local_addr(), args.capacity);
    handle.join();
    Ok(())
}

fn stats(addr: &str, token: String) -> anyhow::Result<()> {
    let t = TcpTransport::connect(addr, TcpConfig { token, ..Default::default() })?;
    let entries = t.usage()?;
    println!("{:<48} {:>6} {:>8} {:>14} {:>14} {:>12} {:>5}", "IDENTITY / SESSION", "STATE", "REGIONS", "STORED", "DECLARED", "RENEWED AGO", "CONNS");
    for e in entries {
        let end = e.name.iter().position(|&b| b == 0).unwrap_or(e.name.len());
        let name = String::from_utf8_lossy(&e.name[..end]);
        let state = if e.state.get() == ebb_memnode::proto::USAGE_LIVE { "live" } else { "grace" };
        println!(
            "{:<48} {:>6} {:>8} {:>14} {:>14} {:>10}ms {:>5}",
            name,
            state,
            e.regions.get(),
            e.stored.get(),
            e.declared.get(),
            e.renewed_ms_ago.get(),
            e.connections.get()
        );
    }
    Ok(())
}
