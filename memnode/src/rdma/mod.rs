//! RDMA: one-sided verbs between runtimes and the memnode (the `rdma` transport).
//!
//! - [`verbs`] — owned wrappers over the libibverbs objects (rdma-sys bindings).
//! - [`fabric`] — the memnode's side: protection domain per identity, memory region per store
//!   region, queue pair per client connection.
//! - [`client`] — [`RdmaTransport`], the client side behind [`crate::client::Transport`].
//!
//! The control plane stays on the memnode's TCP protocol (`RdmaConnect` exchanges queue pair
//! descriptions, `RdmaRegion` hands out a region's address and key); no rdma_cm.

mod client;
mod fabric;
pub mod verbs;

pub use client::{RdmaTransport, RemoteQp};
pub use fabric::{Fabric, FabricError};
pub use verbs::{device_names, Qp, RdmaError};

#[cfg(test)]
mod tests;
