//! Ebb's memory node: a capacity-bounded store of page regions, the server that exposes it, and the
//! client transports a runtime uses to reach it.
//!
//! - [`proto`] — the wire protocol, the single source of truth for both ends.
//! - [`store`] — regions of pages owned by client identities.
//! - [`server`] — the TCP server (`memnode` binary).
//! - [`client`] — the [`client::Transport`] seam with `local` and `tcp` backends.

pub mod client;
pub mod lease;
mod net;
pub mod proto;
pub mod rdma;
pub mod server;
pub mod store;
pub mod tokens;

pub use client::{connect, LocalTransport, TcpConfig, TcpTransport, Transport, TransportError};
pub use proto::PAGE_SIZE;
pub use store::{parse_size, Identity, Owner, RegionId, Store, StoreConfig, Ticket};

#[cfg(test)]
mod test_support {
    use std::time::{Duration, Instant};

    /// Polls `cond` every millisecond until it holds or `timeout` passes.
    pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        cond()
    }
}
