//! File system helpers shared by the key file and the store: private directories, atomic
//! writes and the writer lock.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

/// File name of the lock file that serializes writers inside the credentials directory.
pub const LOCK_FILE_NAME: &str = ".lock";

/// How long a writer waits for the store lock before giving up.
const LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// A file system operation on the credentials directory failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// Reading, writing or renaming a file failed.
    #[error("cannot {action} {}: {source}; check that the directory exists and is writable", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The directory can be written by other users, who could replace the key file.
    #[error("directory {} is writable by other users (mode {mode:o}); run `chmod 700 {}`", path.display(), path.display())]
    InsecureDirectory {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The store lock could not be taken in time.
    #[error("timed out waiting for the lock {}; another moat process may be stuck, check `ps` and retry", path.display())]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
    },
    /// The system random generator failed.
    #[error("the system random number generator failed: {source}")]
    Random {
        /// The underlying error.
        source: getrandom::Error,
    },
}

impl FsError {
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

/// An exclusive lock on `<dir>/.lock`, released on drop.
pub(crate) struct StoreLock {
    file: fs::File,
}

impl StoreLock {
    /// Blocks (polling, bounded by a generous timeout) until the lock is held.
    pub(crate) fn acquire(dir: &Path) -> Result<Self, FsError> {
        let path = dir.join(LOCK_FILE_NAME);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(FsError::io("open the lock file", &path))?;
        let deadline = Instant::now() + LOCK_TIMEOUT;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self { file }),
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(fs::TryLockError::WouldBlock) => return Err(FsError::LockTimeout { path }),
                Err(fs::TryLockError::Error(source)) => {
                    return Err(FsError::Io {
                        action: "lock",
                        path,
                        source,
                    });
                }
            }
        }
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        // Closing the descriptor releases the lock as well; unlocking first is only tidier.
        let _ = self.file.unlock();
    }
}

/// Creates `dir` (and parents) with mode 0700 when missing; refuses an existing directory
/// that other users can write to (even sticky ones such as `/tmp`, where another user could
/// plant a key file before us).
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), FsError> {
    if let Ok(meta) = fs::metadata(dir)
        && meta.is_dir()
    {
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(FsError::InsecureDirectory {
                path: dir.to_owned(),
                mode,
            });
        }
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(FsError::io("create the directory", dir))
}

/// Writes `bytes` to `dir/name` atomically: a 0600 temp file in the same directory, fsync,
/// rename over the target, fsync the directory. Callers hold the [`StoreLock`].
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), FsError> {
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|source| FsError::Random { source })?;
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        hex::encode(suffix)
    ));
    let target = dir.join(name);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(FsError::io("create", &tmp))?;
        file.write_all(bytes).map_err(FsError::io("write", &tmp))?;
        file.sync_all().map_err(FsError::io("flush", &tmp))?;
        fs::rename(&tmp, &target).map_err(FsError::io("replace", &target))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes temp files a crashed writer left in `dir`. Callers hold the [`StoreLock`]: every
/// writer creates its temp file under the lock, so any temp file seen now is stale.
pub(crate) fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.starts_with('.') && n.contains(".tmp-"))
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Flushes a directory entry change (rename, unlink) to disk.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), FsError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(FsError::io("flush the directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        write_atomic(dir.path(), "a.enc", b"one")?;
        write_atomic(dir.path(), "a.enc", b"two")?;
        assert_eq!(fs::read(dir.path().join("a.enc"))?, b"two");
        let mode = fs::metadata(dir.path().join("a.enc"))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.enc")]);
        Ok(())
    }

    #[test]
    fn private_dir_is_0700() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let sub = dir.path().join("x/credentials");
        ensure_private_dir(&sub)?;
        assert_eq!(fs::metadata(&sub)?.permissions().mode() & 0o777, 0o700);
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o777))?;
        assert!(matches!(
            ensure_private_dir(&sub),
            Err(FsError::InsecureDirectory { mode: 0o777, .. })
        ));
        Ok(())
    }

    #[test]
    fn lock_excludes_a_second_holder() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let held = StoreLock::acquire(dir.path())?;
        let other = fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(LOCK_FILE_NAME))?;
        assert!(matches!(
            other.try_lock(),
            Err(fs::TryLockError::WouldBlock)
        ));
        drop(held);
        assert!(other.try_lock().is_ok());
        Ok(())
    }
}
