//! Workflows: DataFlower's `workflow_info.yaml` DAGs of a user's functions, run on the worker
//! that receives the call, each block starting when its inputs are present.
//!
//! Rooms: [`spec`] (the file format, parsed and checked at upload), [`run`] (one workflow call,
//! scheduled as its data arrives), [`store`] (uploaded workflows, asynchronous calls), `yaml`
//! (a YAML tree with line numbers, for errors that name the line). The guest side is `exec::host::flow` (`functions/include/ebb/flow.h`).

pub mod run;
pub mod spec;
pub mod store;
pub mod value;
mod yaml;

pub use run::{Outcome, Run};
pub use spec::{SpecError, Workflow};
pub use store::Workflows;
