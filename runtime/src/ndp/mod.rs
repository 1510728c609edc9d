//! Near-data offloading (AutoNDP's model, on pages): storage nodes keep objects, and the I/O-heavy
//! part of a function runs where its object is.
//!
//! Built so far: the storage role's object store ([`objects`]), served at `/o/USER/KEY` by a
//! runtime started with `--storage`. Still to come (issue 12): placement of objects over several
//! storage nodes, the guest ABI (`__faasmndp_*`) and offloaded calls whose memory follows by pages.

pub mod objects;

pub use objects::{ObjectError, ObjectLimits, ObjectStore};
