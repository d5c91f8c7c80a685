//! The on-disk run store: `<root>/<run-id>/{metadata.json, logs.jsonl, …}`.
//!
//! `metadata.json` is replaced atomically (write, fsync, rename, fsync directory);
//! `logs.jsonl` is append-only. A run's supervisor holds an exclusive lock on
//! `supervisor.lock` for its whole life, so any process can tell whether a run is still
//! supervised without trusting PIDs.

use std::fs;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::io::BufRead;
use std::io::BufReader;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::path::PathBuf;

use chrono::DateTime;
use chrono::Utc;
use serde::Deserialize;
use serde::Serialize;

use crate::run::RefMatch;
use crate::run::RunId;
use crate::run::RunMetadata;

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A terminal (stdout and stderr merged).
    Tty,
}

/// One line of `logs.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// When the container wrote the line (source timestamp from the runtime).
    pub ts: DateTime<Utc>,
    /// Which stream.
    pub stream: LogStream,
    /// The line, without its newline (invalid UTF-8 replaced).
    pub line: String,
}

/// Errors of the run store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file or directory operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// `metadata.json` is not valid.
    #[error("run metadata {} is corrupted: {source}; remove the run directory or restore it from backup", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// No run matches the reference.
    #[error("no run matches `{reference}`")]
    NotFound {
        /// What was asked for.
        reference: String,
    },
    /// There are no runs at all (or none in the wanted state).
    #[error("there are no {what} runs")]
    NoRuns {
        /// `""`, `"running"`, ….
        what: &'static str,
    },
    /// Several runs match the reference.
    #[error("`{reference}` matches several runs: {}", matches.join(", "))]
    Ambiguous {
        /// What was asked for.
        reference: String,
        /// `id (name)` of each match.
        matches: Vec<String>,
    },
    /// Another process supervises the run.
    #[error("run {id} is already supervised by another process")]
    AlreadySupervised {
        /// The run.
        id: RunId,
    },
}

/// The directory holding every run.
#[derive(Debug, Clone)]
pub struct RunStore {
    root: PathBuf,
}

/// Held by a run's supervisor; dropping it releases the lock.
#[derive(Debug)]
pub struct SupervisorLock {
    _file: File,
}

impl RunStore {
    /// A store rooted at `root` (typically `$MOAT_HOME/runs`). Nothing is created yet.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of one run.
    pub fn dir(&self, id: &RunId) -> PathBuf {
        self.root.join(id.as_str())
    }

    /// Creates the run directory (mode 0700) and its first `metadata.json`.
    pub fn create(&self, meta: &RunMetadata) -> Result<PathBuf, StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(io_err("create", &self.root))?;
        let dir = self.dir(&meta.id);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("create", &dir))?;
        self.save(meta)?;
        Ok(dir)
    }

    /// Loads a run's metadata.
    pub fn load(&self, id: &RunId) -> Result<RunMetadata, StoreError> {
        let path = self.dir(id).join("metadata.json");
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt { path, source })
    }

    /// Atomically replaces a run's metadata.
    pub fn save(&self, meta: &RunMetadata) -> Result<(), StoreError> {
        let path = self.dir(&meta.id).join("metadata.json");
        let mut bytes = serde_json::to_vec_pretty(meta).map_err(|source| StoreError::Corrupt {
            path: path.clone(),
            source,
        })?;
        bytes.push(b'\n');
        write_atomic(&path, &bytes)
    }

    /// Loads, changes and saves a run's metadata.
    pub fn update(
        &self,
        id: &RunId,
        change: impl FnOnce(&mut RunMetadata),
    ) -> Result<RunMetadata, StoreError> {
        let lock_path = self.dir(id).join("metadata.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        lock.lock().map_err(io_err("lock", &lock_path))?;
        let mut meta = self.load(id)?;
        change(&mut meta);
        self.save(&meta)?;
        Ok(meta)
    }

    /// Every run that has readable metadata, oldest first, plus the errors of those that do
    /// not.
    pub fn list(&self) -> Result<(Vec<RunMetadata>, Vec<StoreError>), StoreError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
            Err(e) => return Err(io_err("read", &self.root)(e)),
        };
        let mut runs = Vec::new();
        let mut errors = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("read", &self.root))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(id) = name.parse::<RunId>() else {
                continue;
            };
            match self.load(&id) {
                Ok(meta) => runs.push(meta),
                // A run directory whose metadata has not been written yet is skipped.
                Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => errors.push(e),
            }
        }
        runs.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok((runs, errors))
    }

    /// Resolves a run reference (full ID, unique ID prefix, or name) among `runs`; `None`
    /// means the most recently created run that passes `filter`.
    pub fn resolve<'a>(
        runs: &'a [RunMetadata],
        reference: Option<&str>,
        filter: impl Fn(&RunMetadata) -> bool,
        what: &'static str,
    ) -> Result<&'a RunMetadata, StoreError> {
        let Some(reference) = reference else {
            return runs
                .iter()
                .rev()
                .find(|r| filter(r))
                .ok_or(StoreError::NoRuns { what });
        };
        for kind in [RefMatch::Id, RefMatch::Name, RefMatch::Prefix] {
            let found: Vec<&RunMetadata> = runs
                .iter()
                .filter(|r| r.matches_ref(reference) == kind)
                .collect();
            match found.as_slice() {
                [] => continue,
                [one] => return Ok(one),
                many => {
                    return Err(StoreError::Ambiguous {
                        reference: reference.to_owned(),
                        matches: many
                            .iter()
                            .map(|r| format!("{} ({}, {})", r.id, r.name, r.state))
                            .collect(),
                    });
                }
            }
        }
        Err(StoreError::NotFound {
            reference: reference.to_owned(),
        })
    }

    /// Removes a run directory and everything in it.
    pub fn remove(&self, id: &RunId) -> Result<(), StoreError> {
        let dir = self.dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &dir)(e)),
        }
    }

    /// Takes the supervisor lock of a run; fails if another process holds it.
    pub fn lock_supervisor(&self, id: &RunId) -> Result<SupervisorLock, StoreError> {
        let path = self.dir(id).join("supervisor.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("open", &path))?;
        match file.try_lock() {
            Ok(()) => Ok(SupervisorLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => {
                Err(StoreError::AlreadySupervised { id: id.clone() })
            }
            Err(fs::TryLockError::Error(e)) => Err(io_err("lock", &path)(e)),
        }
    }

    /// Whether some process currently holds the run's supervisor lock.
    pub fn is_supervised(&self, id: &RunId) -> bool {
        let path = self.dir(id).join("supervisor.lock");
        let Ok(file) = OpenOptions::new().write(true).open(&path) else {
            return false;
        };
        match file.try_lock() {
            Ok(()) => false,
            Err(fs::TryLockError::WouldBlock) => true,
            Err(fs::TryLockError::Error(_)) => false,
        }
    }

    /// Opens `logs.jsonl` for appending.
    pub fn log_writer(&self, id: &RunId) -> Result<LogWriter, StoreError> {
        JsonlWriter::open(self.log_path(id))
    }

    /// Opens `network.jsonl` for appending.
    pub fn network_log_writer(&self, id: &RunId) -> Result<JsonlWriter, StoreError> {
        JsonlWriter::open(self.network_log_path(id))
    }

    /// The path of `network.jsonl`.
    pub fn network_log_path(&self, id: &RunId) -> PathBuf {
        self.dir(id).join("network.jsonl")
    }

    /// Reads every complete record of `network.jsonl` (a torn last line is ignored).
    pub fn read_network_log(
        &self,
        id: &RunId,
    ) -> Result<Vec<crate::egress::NetworkRecord>, StoreError> {
        read_jsonl(&self.network_log_path(id))
    }

    /// The path of `logs.jsonl`.
    pub fn log_path(&self, id: &RunId) -> PathBuf {
        self.dir(id).join("logs.jsonl")
    }

    /// Reads every complete record of `logs.jsonl` (a torn last line is ignored).
    pub fn read_logs(&self, id: &RunId) -> Result<Vec<LogRecord>, StoreError> {
        read_jsonl(&self.log_path(id))
    }
}

/// Appends records to `logs.jsonl`.
pub type LogWriter = JsonlWriter;

/// Appends JSON records, one line and one `write` each.
#[derive(Debug)]
pub struct JsonlWriter {
    file: File,
    path: PathBuf,
}

impl JsonlWriter {
    /// Opens (creating, mode 0600) a file for appending.
    pub fn open(path: PathBuf) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("open", &path))?;
        Ok(Self { file, path })
    }

    /// Appends one record.
    pub fn append(&mut self, record: &impl Serialize) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(record).map_err(|source| StoreError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(io_err("append to", &self.path))
    }

    /// Flushes appended records to stable storage.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.file.sync_data().map_err(io_err("sync", &self.path))
    }
}

/// Reads every complete record of a JSON Lines file; a missing file is empty and a torn or
/// unreadable line (a crash mid-write) is skipped.
fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(io_err("read", path))?;
        if let Ok(rec) = serde_json::from_str(&line) {
            out.push(rec);
        }
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_atomic_mode(path, bytes, 0o600)
}

/// [`write_atomic`] with an explicit file mode (e.g. 0644 for files bind-mounted into a
/// container whose user differs from moat's).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{file_name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err("write", path)(e)
    })
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}
