//! The core of moat: the moat.yaml model, the run model and on-disk run store, the traits a
//! sandboxed run is driven through ([`runtime::Runtime`], [`creds::CredentialProvider`],
//! [`audit::AuditSink`], [`egress::NetworkEventSink`]) and the orchestrator that drives a run
//! through them.
//!
//! Platform teams embed this crate to run sandboxed commands from their own programs; the
//! `moat` CLI is one such program. The crate deliberately knows nothing about Docker, HTTP,
//! TLS or terminals: those live in `moat-runtime`, `moat-proxy` and `moat-cli`. It never reads
//! `$HOME` or environment variables, never prints and never exits the process: callers pass
//! typed values in and get typed errors back.

#![warn(missing_docs)]

pub mod audit;
pub mod creds;
pub mod egress;
pub mod host;
pub mod secret;

pub use secret::Secret;
pub mod config;
pub mod orchestrator;
pub mod run;
pub mod runtime;
pub mod store;
