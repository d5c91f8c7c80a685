//! The container runtime seam.
//!
//! [`Runtime`] is everything the orchestrator needs from a container engine. `moat-runtime`
//! implements it for Docker; tests implement it with an in-memory fake.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::DateTime;
use chrono::Utc;
use futures_util::stream::BoxStream;
use tokio::io::AsyncWrite;

use crate::store::LogStream;

/// Label every runtime object of a run carries, with the run ID as value.
pub const LABEL_RUN_ID: &str = "dev.moat.run-id";
/// Label marking objects managed by moat.
pub const LABEL_MANAGED: &str = "dev.moat.managed";

/// A per-run network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    /// Network name.
    pub name: String,
    /// Labels (include [`LABEL_RUN_ID`]).
    pub labels: BTreeMap<String, String>,
    /// No route outside the network (strict policy).
    pub internal: bool,
}

/// Where a container's network comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkAttachment {
    /// A network created for the run.
    Network(String),
    /// No network at all.
    None,
}

/// A bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host path.
    pub source: String,
    /// Container path.
    pub target: String,
    /// Read-only.
    pub readonly: bool,
}

/// Everything needed to create a run's container. Hardening (dropped capabilities,
/// `no-new-privileges`, init, pids limit, loopback-only ports, no host networking) is applied
/// by every runtime and cannot be turned off here.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Command; `None` keeps the image default.
    pub command: Option<Vec<String>>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub workdir: String,
    /// `uid:gid`.
    pub user: String,
    /// Bind mounts (the workspace first).
    pub mounts: Vec<BindMount>,
    /// Network.
    pub network: NetworkAttachment,
    /// Published ports: (host port on 127.0.0.1, container port).
    pub ports: Vec<(u16, u16)>,
    /// Labels (include [`LABEL_RUN_ID`]).
    pub labels: BTreeMap<String, String>,
    /// Allocate a TTY.
    pub tty: bool,
    /// Keep standard input open for attach.
    pub stdin: bool,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit.
    pub cpus: Option<f64>,
    /// Maximum number of processes.
    pub pids_limit: i64,
    /// Capabilities added back after dropping all (only what a user switch needs).
    pub cap_add: Vec<String>,
    /// DNS servers; `Some(vec![])` keeps the runtime default, `None` too. Strict runs point
    /// DNS at an address that answers nothing.
    pub dns: Option<Vec<String>>,
}

/// One piece of container output with its source timestamp, as the runtime recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// When the container wrote it.
    pub ts: DateTime<Utc>,
    /// Which stream.
    pub stream: LogStream,
    /// The bytes; a chunk not ending in `\n` continues in the next chunk of its stream.
    pub bytes: Bytes,
}

/// Raw output of an attach session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    /// Which stream (`Tty` for terminals).
    pub stream: LogStream,
    /// The bytes.
    pub bytes: Bytes,
}

/// An attach session: bytes written to `input` reach the container's standard input.
pub struct AttachSession {
    /// Container standard input.
    pub input: Pin<Box<dyn AsyncWrite + Send>>,
    /// Container output.
    pub output: BoxStream<'static, Result<OutputChunk, RuntimeError>>,
}

impl std::fmt::Debug for AttachSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttachSession")
    }
}

/// The state of a container, as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited with this code.
    Exited(i64),
    /// The runtime does not know the container.
    Missing,
}

/// Image pull progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullProgress {
    /// Bytes downloaded so far over all layers.
    pub current: u64,
    /// Total bytes over all layers seen so far.
    pub total: u64,
    /// The last status line.
    pub status: String,
}

/// Errors from a container runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The engine does not answer.
    #[error("cannot reach the {runtime} engine at {endpoint}")]
    Unreachable {
        /// `docker`, ….
        runtime: &'static str,
        /// Socket or URL tried.
        endpoint: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The image is not present and could not be pulled.
    #[error("cannot pull image `{image}`: {message}")]
    PullFailed {
        /// The image.
        image: String,
        /// What the registry or engine said.
        message: String,
    },
    /// The runtime is not supported on this platform or build.
    #[error("the {runtime} runtime is not available here: {reason}")]
    Unsupported {
        /// The runtime.
        runtime: &'static str,
        /// Why.
        reason: String,
    },
    /// An engine operation failed.
    #[error("{operation} failed: {source}")]
    Api {
        /// What was being done (`create container`, …).
        operation: &'static str,
        /// The engine's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A container engine.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// Short name (`docker`).
    fn name(&self) -> &'static str;

    /// Checks that the engine answers.
    async fn ping(&self) -> Result<(), RuntimeError>;

    /// The image ID if the image is present locally.
    async fn image_id(&self, image: &str) -> Result<Option<String>, RuntimeError>;

    /// Pulls an image, reporting progress.
    async fn pull_image(
        &self,
        image: &str,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<(), RuntimeError>;

    /// Creates a network and returns its ID.
    async fn create_network(&self, spec: &NetworkSpec) -> Result<String, RuntimeError>;

    /// Removes a network; a missing network is not an error.
    async fn remove_network(&self, id: &str) -> Result<(), RuntimeError>;

    /// Creates a container and returns its ID.
    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, RuntimeError>;

    /// Attaches to a container's streams; call before `start` to miss nothing. With `output`
    /// false only standard input is attached (output is then read through [`Runtime::logs`]);
    /// the returned output stream is then empty.
    async fn attach(
        &self,
        id: &str,
        stdin: bool,
        output: bool,
        detach_keys: Option<&str>,
    ) -> Result<AttachSession, RuntimeError>;

    /// Starts a created container.
    async fn start(&self, id: &str) -> Result<(), RuntimeError>;

    /// The container's output with source timestamps, from the beginning or from the whole
    /// second of `since`; with `follow` the stream ends when the container stops.
    async fn logs(
        &self,
        id: &str,
        follow: bool,
        since: Option<DateTime<Utc>>,
    ) -> Result<BoxStream<'static, Result<LogChunk, RuntimeError>>, RuntimeError>;

    /// Waits for the container to exit and returns its exit code (128+N for signal N).
    async fn wait(&self, id: &str) -> Result<i64, RuntimeError>;

    /// Asks the container to stop (SIGTERM), killing it after `grace`.
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;

    /// Removes a container (forcibly); a missing container is not an error.
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError>;

    /// Resizes the container's TTY.
    async fn resize(&self, id: &str, rows: u16, cols: u16) -> Result<(), RuntimeError>;

    /// The container's state.
    async fn status(&self, id: &str) -> Result<ContainerStatus, RuntimeError>;

    /// The gateway address of a network: the host's address on it.
    async fn network_gateway(&self, id: &str) -> Result<std::net::IpAddr, RuntimeError>;

    /// Reads a file from a created container's filesystem; `None` if it does not exist.
    async fn read_file(&self, id: &str, path: &str) -> Result<Option<Vec<u8>>, RuntimeError>;

    /// Writes files (absolute path, contents, mode) into a created container's filesystem,
    /// owned by root.
    async fn write_files(
        &self,
        id: &str,
        files: &[(String, Vec<u8>, u32)],
    ) -> Result<(), RuntimeError>;

    /// Firewalls the host from a network's containers: they may reach the host only at the
    /// `allow` addresses (the run's proxy and relays). Fails when the host cannot be
    /// firewalled, so strict runs fail closed.
    async fn restrict_host_access(
        &self,
        network_id: &str,
        allow: &[std::net::SocketAddr],
    ) -> Result<(), RuntimeError>;

    /// Removes what [`Runtime::restrict_host_access`] added; missing rules are not an error.
    async fn release_host_access(&self, network_id: &str) -> Result<(), RuntimeError>;

    /// IDs of containers and networks labelled with `run_id` (for cleanup after a crash).
    async fn objects_of_run(&self, run_id: &str) -> Result<RunObjects, RuntimeError>;
}

/// Runtime objects that belong to one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunObjects {
    /// Container IDs.
    pub containers: Vec<String>,
    /// Network IDs.
    pub networks: Vec<String>,
}

/// Default grace period between SIGTERM and SIGKILL when stopping.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
