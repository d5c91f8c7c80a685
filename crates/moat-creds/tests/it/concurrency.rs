//! Twenty writer processes at once leave a readable store.
//!
//! The parent test re-executes this test binary, filtered to `writer_process`, with
//! `MOAT_CREDS_IT_WRITER=<dir>:<index>`; each child creates the key file if needed (racing
//! the others) and writes a shared grant and its own grant several times.

use std::path::Path;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use chrono::Utc;
use moat_core::Secret;
use moat_creds::CredentialStore;
use moat_creds::GrantMeta;
use moat_creds::GrantRecord;
use moat_creds::GrantSource;
use moat_creds::StoreKey;

use crate::support::TestResult;
use crate::support::key_file_store;

const WRITER_ENV: &str = "MOAT_CREDS_IT_WRITER";
const WRITERS: usize = 20;
const ROUNDS: usize = 5;

fn write_as(dir: &Path, index: usize) -> TestResult {
    let store = key_file_store(dir)?;
    for round in 0..ROUNDS {
        for name in ["shared".to_owned(), format!("own-{index}")] {
            store.save(&GrantRecord {
                meta: GrantMeta {
                    name: name.clone(),
                    source: GrantSource::Provided,
                    created_at: Utc::now(),
                    last_validated_at: None,
                    account: None,
                },
                value: Secret::new(format!("value-{index}-{round}")),
            })?;
        }
    }
    Ok(())
}

/// A writer when started by [`twenty_writer_processes_leave_a_readable_store`]; run
/// directly, it writes to a store of its own and checks the result.
#[test]
fn writer_process() -> TestResult {
    if let Ok(spec) = std::env::var(WRITER_ENV) {
        let (dir, index) = spec.rsplit_once(':').ok_or("bad writer spec")?;
        return write_as(Path::new(dir), index.parse()?);
    }
    let dir = tempfile::tempdir()?;
    write_as(dir.path(), 7)?;
    let key = StoreKey::from_key_file(dir.path())?;
    let store = CredentialStore::open(dir.path(), key)?;
    let last = format!("value-7-{}", ROUNDS - 1);
    assert_eq!(store.load("own-7")?.ok_or("missing")?.value.expose(), last);
    Ok(())
}

#[test]
fn twenty_writer_processes_leave_a_readable_store() -> TestResult {
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for index in 0..WRITERS {
        let child = Command::new(&exe)
            .args([
                "concurrency::writer_process",
                "--exact",
                "--test-threads=1",
                "--quiet",
            ])
            .env(WRITER_ENV, format!("{}:{index}", dir.path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        children.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    for (index, mut child) in children.into_iter().enumerate() {
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("writer {index} did not finish").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            use std::io::Read as _;
            let mut output = String::new();
            if let Some(mut out) = child.stdout.take() {
                let _ = out.read_to_string(&mut output);
            }
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut output);
            }
            return Err(format!("writer {index} failed: {status}: {output}").into());
        }
    }

    let key = StoreKey::from_key_file(dir.path())?;
    let store = CredentialStore::open(dir.path(), key)?;
    let shared = store.load("shared")?.ok_or("shared grant missing")?;
    assert!(
        shared.value.expose().starts_with("value-")
            && shared.value.expose().ends_with(&format!("-{}", ROUNDS - 1)),
        "shared holds a stale or foreign value: {}",
        shared.value.expose()
    );
    for index in 0..WRITERS {
        let own = store
            .load(&format!("own-{index}"))?
            .ok_or("own grant missing")?;
        assert_eq!(own.value.expose(), format!("value-{index}-{}", ROUNDS - 1));
    }
    let listing = store.list()?;
    assert_eq!(listing.len(), WRITERS + 1);
    assert!(listing.iter().all(|l| l.meta.is_ok()));
    let stray: Vec<_> = std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(stray.is_empty(), "temp files left behind: {stray:?}");
    Ok(())
}
