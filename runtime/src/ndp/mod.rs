//! Near-data offloading (AutoNDP's model, on pages): storage nodes keep objects, and the I/O-heavy
//! part of a function runs where its object is.
//!
//! Built so far: the storage role's object store ([`objects`]), served at `/o/USER/KEY` by a
//! runtime started with `--storage`; the placement of objects over the storage nodes
//! ([`placement`]), by which any runtime forwards an object request to the node that holds it;
//! a guest's object calls for objects of other nodes ([`remote`]); the guest calls themselves
//! are `exec::host::ndp`; offloaded calls whose memory follows by pages, and the storage node's
//! admission ([`offload`]).

pub mod objects;
pub mod offload;
pub mod placement;
pub mod remote;

pub use objects::{ObjectError, ObjectLimits, ObjectStore};

/// An object as a guest gets it.
#[derive(Debug)]
pub enum ObjectBytes {
    /// This node holds it: its file (read in place) and size.
    Local(std::fs::File, u64),
    /// Another node does: the bytes asked for.
    Fetched(Vec<u8>),
}
pub use placement::node_for;
