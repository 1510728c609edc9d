//! Helpers shared by the integration tests and benches: real processes, waiting, test modules.
