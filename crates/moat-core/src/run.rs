//! The run model: IDs, states and the metadata stored for every run.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use chrono::DateTime;
use chrono::Utc;
use rand::Rng;
use serde::Deserialize;
use serde::Serialize;

use crate::config::RuntimeKind;
use crate::egress::PolicyMode;

/// A run ID: `run_` followed by 12 lower-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(String);

/// Why a string is not a run ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a run ID; run IDs look like `run_0123456789ab`")]
pub struct RunIdError(pub String);

impl RunId {
    /// A fresh random ID.
    pub fn generate() -> Self {
        let bytes: [u8; 6] = rand::rng().random();
        Self(format!("run_{}", hex::encode(bytes)))
    }

    /// Whether `s` has the shape of a run ID.
    pub fn is_valid(s: &str) -> bool {
        s.len() == 16
            && s.starts_with("run_")
            && s[4..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    /// The ID text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RunId {
    type Err = RunIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if Self::is_valid(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(RunIdError(s.to_owned()))
        }
    }
}

impl TryFrom<String> for RunId {
    type Error = RunIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<RunId> for String {
    fn from(id: RunId) -> Self {
        id.0
    }
}

/// The life-cycle state of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// The run directory exists; nothing has been created in the runtime yet.
    Created,
    /// Network and container are being created.
    Starting,
    /// The container is running under its supervisor.
    Running,
    /// A stop was requested and is in progress.
    Stopping,
    /// Stopped on request (`moat stop`, Ctrl-C); artifacts kept.
    Stopped,
    /// The container exited by itself; `exit_code` is set.
    Exited,
    /// The run could not start, or its supervisor died; `error` says why.
    Failed,
}

impl RunState {
    /// Whether a supervisor should still be looking after the run.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Self::Created | Self::Starting | Self::Running | Self::Stopping
        )
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Created => "created",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Exited => "exited",
            Self::Failed => "failed",
        })
    }
}

/// What the container runs and how; fixed when the run is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Command; `None` runs the image's default.
    pub command: Option<Vec<String>>,
    /// Container environment (no secrets: placeholders only).
    pub env: Vec<(String, String)>,
    /// Allocate a TTY.
    pub tty: bool,
    /// Keep standard input open.
    pub stdin: bool,
    /// Keep the container after it exits.
    pub keep: bool,
    /// `uid:gid` the container runs as.
    pub user: String,
    /// Extra mounts: (host path, container path, read-only).
    pub mounts: Vec<(PathBuf, String, bool)>,
    /// Published ports: (host port on 127.0.0.1, container port).
    pub ports: Vec<(u16, u16)>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit.
    pub cpus: Option<f64>,
    /// Started with `-d`.
    pub detached: bool,
    /// Hosts the run may reach besides its grants' hosts (`network.allow` and `--allow`).
    #[serde(default)]
    pub network_allow: Vec<crate::egress::AllowSpec>,
}

/// Everything known about a run, stored as `metadata.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMetadata {
    /// The run ID.
    pub id: RunId,
    /// Human-friendly name (not unique).
    pub name: String,
    /// Current state.
    pub state: RunState,
    /// Absolute host path of the workspace.
    pub workspace: PathBuf,
    /// Image reference.
    pub image: String,
    /// Runtime used.
    pub runtime: RuntimeKind,
    /// Granted credentials (names only).
    pub grants: Vec<String>,
    /// Network policy.
    pub policy: PolicyMode,
    /// When the run was created.
    pub created_at: DateTime<Utc>,
    /// When the container started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the run ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// Container exit code (128+N for signal N).
    pub exit_code: Option<i64>,
    /// Why the run failed, if it did.
    pub error: Option<String>,
    /// Version of moat that created the run.
    pub moat_version: String,
    /// Runtime container ID, once created.
    pub container_id: Option<String>,
    /// Runtime network ID, once created.
    pub network_id: Option<String>,
    /// Process ID of the supervisor.
    pub supervisor_pid: Option<u32>,
    /// How the container runs.
    pub spec: RunSpec,
}

impl RunMetadata {
    /// Whether an ID or name refers to this run (full ID, exact name, or an ID prefix of at
    /// least 3 hex digits, with or without `run_`).
    pub fn matches_ref(&self, reference: &str) -> RefMatch {
        if self.id.as_str() == reference {
            RefMatch::Id
        } else if self.name == reference {
            RefMatch::Name
        } else if (reference.len() >= "run_".len() + 3 && self.id.as_str().starts_with(reference))
            || (reference.len() >= 3
                && reference.bytes().all(|b| b.is_ascii_hexdigit())
                && self
                    .id
                    .as_str()
                    .get(4..)
                    .is_some_and(|h| h.starts_with(reference)))
        {
            RefMatch::Prefix
        } else {
            RefMatch::None
        }
    }
}

/// How a reference matched a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefMatch {
    /// Full ID.
    Id,
    /// Exact name.
    Name,
    /// Unique ID prefix.
    Prefix,
    /// No match.
    None,
}
