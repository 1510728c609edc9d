//! Near-data offloading (AutoNDP's model, on pages): storage nodes keep objects, and the I/O-heavy
//! part of a function runs where its object is.
//!
//! Built so far: the storage role's object store ([`objects`]), served at `/o/USER/KEY` by a
//! runtime started with `--storage`, and the placement of objects over the storage nodes
//! ([`placement`]) by which any runtime forwards an object request to the node that holds it.
//! Still to come (issue 12): the guest ABI (`__faasmndp_*`) and offloaded calls whose memory
//! follows by pages.

pub mod objects;
pub mod placement;

pub use objects::{ObjectError, ObjectLimits, ObjectStore};
pub use placement::node_for;
