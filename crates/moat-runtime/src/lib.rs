//! Container runtimes for moat, behind [`moat_core::runtime::Runtime`].
//!
//! [`docker::DockerRuntime`] drives Docker Engine through bollard. Apple containers (the
//! `container` CLI on macOS 15+ with Apple silicon) are detected by [`detect`] but not yet
//! implemented: asking for them is a clear error, never a silent fallback.
//!
//! This crate knows nothing about HTTP proxies, credentials or terminals: it turns a
//! [`moat_core::runtime::ContainerSpec`] into a hardened container and streams its output.
//! It never reads environment variables; callers pass the engine endpoint in.

#![warn(missing_docs)]

pub mod docker;

use moat_core::config::RuntimeKind;
use moat_core::runtime::RuntimeError;

/// Default Docker Engine socket on Linux and macOS.
pub const DEFAULT_DOCKER_SOCKET: &str = "unix:///var/run/docker.sock";

/// Chooses a runtime kind: an explicit choice wins; otherwise Docker (the only runtime this
/// build can drive).
pub fn detect(explicit: Option<RuntimeKind>) -> Result<RuntimeKind, RuntimeError> {
    match explicit {
        Some(RuntimeKind::Apple) => Err(RuntimeError::Unsupported {
            runtime: "apple",
            reason:
                "Apple containers are not supported by this version of moat; use `--runtime docker`"
                    .into(),
        }),
        Some(RuntimeKind::Docker) | None => Ok(RuntimeKind::Docker),
    }
}
