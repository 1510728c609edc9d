//! Ebb's compute-host runtime: WebAssembly functions whose linear memory is paged to a memnode.
//!
//! - [`pager`] — paged linear memory: wasmtime `MemoryCreator`, userfaultfd fault handlers, page
//!   table, offload.
//! - [`exec`] — the wasmtime engine on paged memory and instances of command modules.
//! - [`registry`] — functions on disk (compiled within bounds), users' tokens.
//! - [`state`] — Faasm state: values, limits, call-owned locks.
//! - [`supervise`] — background threads that survive a panic.
//! - [`platform`] — calls: warm instances, chaining, async calls, timeouts, metrics.
//! - [`policy`] — offload policy: segments, semi-warm timeline, keep-alive.
//! - [`flow`] — workflows: DataFlower's YAML DAGs, parsed and checked.
//! - [`replay`] — trace replay against servers with different policies (`runtime replay`).
//! - [`api`] — the Faasm-compatible HTTP API over the platform.
//! - [`cli`] — the `runtime` command line (the binary is a thin wrapper).

pub mod api;
pub mod cli;
pub mod exec;
pub mod flow;
pub mod ndp;
pub mod pager;
pub mod platform;
pub mod policy;
pub mod registry;
pub mod replay;
pub mod state;
pub mod supervise;
