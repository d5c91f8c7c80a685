//! End-to-end suites: the real `moat` binary against a real Docker engine.
#![expect(clippy::unwrap_used, reason = "tests")]

mod audit;
mod conformance;
mod errors;
mod grant;
mod lifecycle;
mod network;
mod run;
mod ssh;
