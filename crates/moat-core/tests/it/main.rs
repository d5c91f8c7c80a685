//! Integration tests of moat-core: the orchestrator driven through an in-memory runtime, and
//! the run store on a real file system.
#![expect(clippy::unwrap_used, reason = "tests")]

mod fake;
mod orchestrator;
mod schema;
mod store;
