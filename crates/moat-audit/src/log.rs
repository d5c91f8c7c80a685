//! The append-only log file and its single writer.

use std::fmt;
use std::fs;
use std::fs::File;
use std::io;
use std::io::Write as _;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use chrono::DateTime;
use chrono::SecondsFormat;
use chrono::Utc;
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::Digest as _;
use sha2::Sha256;

use crate::canonical::write_entry;
use crate::checkpoint::Checkpoint;
use crate::checkpoint::origin;
use crate::keys::AuditKey;
use crate::keys::sync_parent;
use crate::merkle::Frontier;
use crate::merkle::Hash32;
use crate::merkle::leaf_hash;

/// The `format` value in the header of a log file.
pub const LOG_FORMAT: &str = "moat-audit-log/1";

/// The largest canonical entry the writer accepts, in bytes.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;

/// A source of wall-clock time, so tests can control timestamps and checkpoint timing.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// When the writer signs checkpoints on its own.
///
/// The default is every 1000 entries or 10 seconds, with the system clock. Each checkpoint
/// costs one signature and one `fsync`.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// Sign a checkpoint after this many entries since the last one (0: never by count).
    pub checkpoint_every: u64,
    /// Sign a checkpoint when an entry is appended (or [`AuditLog::checkpoint_if_due`] is
    /// called) this long after the last checkpoint.
    pub checkpoint_interval: Duration,
    /// Where timestamps come from.
    pub clock: Arc<dyn Clock>,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(10),
            clock: Arc::new(SystemClock),
        }
    }
}

/// The tamper-evident audit log of one run, open for appending.
///
/// There is exactly one writer per log: the file is created exclusively, and the writer holds
/// an exclusive file lock while it is open, so readers can tell a live log from one whose
/// writer died ([`crate::Report::writer_active`]). Every append is
/// one `write(2)` of a whole line, so entries survive the writer being killed; checkpoints and
/// [`AuditLog::close`] also `fsync`, so everything up to the last checkpoint survives a machine
/// crash. `AuditLog` is `Send + Sync`; calls are serialized by an internal mutex.
pub struct AuditLog {
    path: PathBuf,
    run_id: String,
    state: Mutex<State>,
}

impl AuditLog {
    /// Creates a new log file at `path` for `run_id` (which must be 1–128 characters of
    /// `A-Z a-z 0-9 . _ -`). Fails if the file exists.
    pub fn create(
        path: &Path,
        run_id: &str,
        key: AuditKey,
        options: LogOptions,
    ) -> Result<Self, LogError> {
        validate_run_id(run_id)?;
        let io_err = |source| LogError::Io {
            path: path.to_owned(),
            source,
        };
        let mut open = fs::OpenOptions::new();
        open.append(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        let mut file = open.open(path).map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                LogError::Exists {
                    path: path.to_owned(),
                }
            } else {
                io_err(source)
            }
        })?;
        // The file is new, so only a reader's momentary probe can hold a lock: wait it out.
        if let Err(source) = file.lock() {
            let _ = fs::remove_file(path);
            return Err(LogError::Lock {
                path: path.to_owned(),
                source,
            });
        }
        let header = LineWire {
            header: Some(Header {
                format: LOG_FORMAT.into(),
                key_id: key.public_key().key_id(),
                origin: origin(run_id),
                run_id: run_id.into(),
            }),
            ..LineWire::default()
        };
        let written = serde_json::to_vec(&header)
            .map_err(io::Error::from)
            .and_then(|mut line| {
                line.push(b'\n');
                file.write_all(&line)?;
                file.sync_all()?;
                sync_parent(path)
            });
        if let Err(source) = written {
            // Leave no headerless file behind that would block a retry.
            let _ = fs::remove_file(path);
            return Err(io_err(source));
        }
        let now = options.clock.now();
        Ok(Self {
            path: path.to_owned(),
            run_id: run_id.to_owned(),
            state: Mutex::new(State {
                file,
                key,
                options,
                chain: Hash32::ZERO,
                frontier: Frontier::new(),
                last_checkpoint: None,
                last_checkpoint_at: now,
                status: Status::Open,
                buf: Vec::with_capacity(512),
            }),
        })
    }

    /// Appends one event and returns its `seq`. May sign a checkpoint (see [`LogOptions`]).
    pub fn append(&self, event_type: &str, data: Value) -> Result<u64, LogError> {
        self.with_state(|state, run_id| state.append(run_id, event_type, &data))
    }

    /// Signs a checkpoint covering every entry so far, and fsyncs.
    pub fn checkpoint(&self) -> Result<Checkpoint, LogError> {
        self.with_state(|state, run_id| {
            state.ensure_open()?;
            state.write_checkpoint(run_id, false)
        })
    }

    /// Signs a checkpoint if there are unsigned entries and the checkpoint interval has passed;
    /// for a supervisor that calls it on a timer, so a quiet run still gets sealed promptly.
    pub fn checkpoint_if_due(&self) -> Result<Option<Checkpoint>, LogError> {
        self.with_state(|state, run_id| {
            state.ensure_open()?;
            if state.unsealed() > 0 && state.interval_elapsed() {
                state.write_checkpoint(run_id, false).map(Some)
            } else {
                Ok(None)
            }
        })
    }

    /// Signs the final checkpoint, fsyncs and closes the log. Later appends fail with
    /// [`LogError::Closed`]; closing again returns the same final checkpoint.
    pub fn close(&self) -> Result<Checkpoint, LogError> {
        self.with_state(|state, run_id| {
            if let (Status::Closed, Some(cp)) = (state.status, &state.last_checkpoint) {
                return Ok(cp.clone());
            }
            state.ensure_open()?;
            let cp = state.write_checkpoint(run_id, true)?;
            state.status = Status::Closed;
            Ok(cp)
        })
    }

    /// The most recent checkpoint written, if any.
    pub fn last_checkpoint(&self) -> Option<Checkpoint> {
        self.state.lock().ok()?.last_checkpoint.clone()
    }

    /// Number of entries appended.
    pub fn len(&self) -> u64 {
        self.state.lock().map(|s| s.frontier.size()).unwrap_or(0)
    }

    /// Whether no entry was appended yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The run this log belongs to.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    fn with_state<T>(
        &self,
        f: impl FnOnce(&mut State, &str) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        let mut state = self.state.lock().map_err(|_| LogError::Failed {
            path: self.path.clone(),
        })?;
        let result = f(&mut state, &self.run_id);
        if let Err(LogError::Io { .. }) = &result {
            // A failed write may have left a partial line; appending more would corrupt the log.
            state.status = Status::Failed;
        }
        result.map_err(|e| e.with_path(&self.path))
    }
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

/// Why the log could not be created or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The run ID cannot be used in a log.
    #[error("invalid run id {run_id:?}: use 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' or '-'")]
    InvalidRunId {
        /// The rejected ID.
        run_id: String,
    },
    /// The event type is empty or too long.
    #[error(
        "invalid audit event type {event_type:?}: use a non-empty name of at most 128 bytes such as \"run.created\""
    )]
    InvalidEventType {
        /// The rejected type.
        event_type: String,
    },
    /// The entry is larger than [`MAX_ENTRY_BYTES`].
    #[error(
        "audit entry of {size} bytes exceeds the {max}-byte limit; record a digest of large data instead"
    )]
    EntryTooLarge {
        /// The entry's canonical size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A log file already exists at the path.
    #[error("audit log {} already exists; each run has exactly one log and one writer", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The writer lock could not be taken.
    #[error("cannot take the writer lock on audit log {}: {source}; keep run data on a local filesystem that supports file locks", path.display())]
    Lock {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The log was closed.
    #[error("audit log {} is closed; nothing can be appended after the final checkpoint", path.display())]
    Closed {
        /// The file.
        path: PathBuf,
    },
    /// An earlier write failed, so the log refuses further writes.
    #[error("audit log {} stopped accepting writes after an earlier failure; check the disk and verify the log", path.display())]
    Failed {
        /// The file.
        path: PathBuf,
    },
    /// Writing or syncing failed.
    #[error("cannot write audit log {}: {source}; check free space and permissions", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

impl LogError {
    fn with_path(self, path: &Path) -> Self {
        match self {
            Self::Closed { .. } => Self::Closed {
                path: path.to_owned(),
            },
            Self::Failed { .. } => Self::Failed {
                path: path.to_owned(),
            },
            Self::Io { source, .. } => Self::Io {
                path: path.to_owned(),
                source,
            },
            other => other,
        }
    }
}

/// One line of a log file. Exactly one of `header`, `entry` (with `hash`) or `checkpoint` is
/// present.
#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LineWire<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) header: Option<Header>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    pub(crate) entry: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hash: Option<Hash32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) checkpoint: Option<Checkpoint>,
}

/// The first line of a log file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Header {
    pub(crate) format: String,
    pub(crate) key_id: String,
    pub(crate) origin: String,
    pub(crate) run_id: String,
}

pub(crate) fn validate_run_id(run_id: &str) -> Result<(), LogError> {
    let ok = (1..=128).contains(&run_id.len())
        && run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(LogError::InvalidRunId {
            run_id: run_id.into(),
        })
    }
}

/// The chain step `SHA-256(previous || entry)`.
pub(crate) fn chain_hash(previous: &Hash32, entry: &[u8]) -> Hash32 {
    let mut h = Sha256::new();
    h.update(previous.0);
    h.update(entry);
    Hash32(h.finalize().into())
}

pub(crate) fn format_ts(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Open,
    Closed,
    Failed,
}

struct State {
    file: File,
    key: AuditKey,
    options: LogOptions,
    chain: Hash32,
    frontier: Frontier,
    last_checkpoint: Option<Checkpoint>,
    last_checkpoint_at: DateTime<Utc>,
    status: Status,
    buf: Vec<u8>,
}

impl State {
    fn ensure_open(&self) -> Result<(), LogError> {
        // Paths are filled in by `AuditLog::with_state`.
        match self.status {
            Status::Open => Ok(()),
            Status::Closed => Err(LogError::Closed {
                path: PathBuf::new(),
            }),
            Status::Failed => Err(LogError::Failed {
                path: PathBuf::new(),
            }),
        }
    }

    fn unsealed(&self) -> u64 {
        let sealed = self.last_checkpoint.as_ref().map_or(0, |c| c.tree_size);
        self.frontier.size() - sealed
    }

    fn interval_elapsed(&self) -> bool {
        let elapsed = self.options.clock.now() - self.last_checkpoint_at;
        elapsed
            .to_std()
            .is_ok_and(|d| d >= self.options.checkpoint_interval)
    }

    fn append(&mut self, run_id: &str, event_type: &str, data: &Value) -> Result<u64, LogError> {
        self.ensure_open()?;
        if event_type.is_empty() || event_type.len() > 128 {
            return Err(LogError::InvalidEventType {
                event_type: event_type.chars().take(160).collect(),
            });
        }
        let seq = self.frontier.size();
        let ts = format_ts(self.options.clock.now());
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend_from_slice(b"{\"entry\":");
        let start = buf.len();
        write_entry(&mut buf, seq, &ts, run_id, event_type, data);
        let entry = buf.get(start..).unwrap_or_default();
        if entry.len() > MAX_ENTRY_BYTES {
            let size = entry.len();
            self.buf = buf;
            return Err(LogError::EntryTooLarge {
                size,
                max: MAX_ENTRY_BYTES,
            });
        }
        let chain = chain_hash(&self.chain, entry);
        let leaf = leaf_hash(entry);
        buf.extend_from_slice(b",\"hash\":\"");
        let hex_start = buf.len();
        buf.resize(hex_start + 64, 0);
        if let Some(slot) = buf.get_mut(hex_start..) {
            // Cannot fail: the slot is exactly 64 bytes.
            let _ = hex::encode_to_slice(chain.0, slot);
        }
        buf.extend_from_slice(b"\"}\n");
        let written = self.file.write_all(&buf);
        self.buf = buf;
        written.map_err(|source| LogError::Io {
            path: PathBuf::new(),
            source,
        })?;
        self.chain = chain;
        self.frontier.push(leaf);
        let every = self.options.checkpoint_every;
        if (every > 0 && self.unsealed() >= every) || self.interval_elapsed() {
            self.write_checkpoint(run_id, false)?;
        }
        Ok(seq)
    }

    fn write_checkpoint(&mut self, run_id: &str, is_final: bool) -> Result<Checkpoint, LogError> {
        let now = self.options.clock.now();
        let cp = Checkpoint::sign(
            &self.key,
            run_id,
            self.frontier.size(),
            self.frontier.root(),
            self.chain,
            format_ts(now),
            is_final,
        );
        let line = LineWire {
            checkpoint: Some(cp.clone()),
            ..LineWire::default()
        };
        let io_err = |source| LogError::Io {
            path: PathBuf::new(),
            source,
        };
        let mut bytes = serde_json::to_vec(&line).map_err(|e| io_err(e.into()))?;
        bytes.push(b'\n');
        self.file.write_all(&bytes).map_err(io_err)?;
        self.file.sync_data().map_err(io_err)?;
        self.last_checkpoint = Some(cp.clone());
        self.last_checkpoint_at = now;
        Ok(cp)
    }
}
