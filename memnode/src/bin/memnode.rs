//! `memnode`: serve a memory pool to Ebb runtimes.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ebb_memnode::rdma::Fabric;
use ebb_memnode::server::{Server, ServerConfig, Tokens};
use ebb_memnode::{parse_size, Store};

/// Ebb's memory node: holds the pages that runtimes offload and serves them back.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:7070 or 0.0.0.0:7070.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    /// Memory to hand out to regions, e.g. 512M, 16G.
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    capacity: u64,
    /// File of `TENANT TOKEN` lines. Without it any client token is accepted and each token is its
    /// own identity (clients are still isolated from each other).
    #[arg(long)]
    token_file: Option<PathBuf>,
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
    let args = Args::parse();
    let tokens = args.token_file.as_deref().map(Tokens::load).transpose()?;
    if tokens.is_none() {
        tracing::warn!("no --token-file: any client token is accepted (each token sees only its own regions)");
    }
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}: is another memnode running there?", args.listen))?;
    let rdma = match &args.rdma_device {
        Some(dev) => Some(Arc::new(Fabric::open(dev).with_context(|| format!("--rdma-device {dev}"))?)),
        None => None,
    };
    let config = ServerConfig { tokens, spin: Duration::from_micros(args.spin_us), rdma, ..Default::default() };
    let server = Server::new(Arc::new(Store::new(args.capacity)), config);
    let handle = server.spawn(listener)?;
    // Tests and scripts wait for this line.
    let rdma = args.rdma_device.as_deref().map(|d| format!(", RDMA on {d}")).unwrap_or_default();
    println!("memnode listening on {} with {} bytes{rdma}", handle.local_addr(), args.capacity);
    handle.join();
    Ok(())
}
