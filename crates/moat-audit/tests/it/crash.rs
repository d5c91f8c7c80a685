//! A writer process killed with SIGKILL leaves a log that verifies as unfinished, not tampered.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use moat_audit::AuditLog;
use moat_audit::LogOptions;
use moat_audit::Verdict;
use moat_audit::verify_log;
use serde_json::json;

use crate::common::*;

const CHILD_ENV: &str = "MOAT_AUDIT_TEST_CHILD_LOG";

/// In the child process started by the test below: append until killed. Run directly: the
/// same writer, stopped by dropping it on another thread, leaves an unfinished intact log.
#[test]
fn child_writer_entry_point() {
    let Some(path) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.db");
        let log = AuditLog::create(&path, RUN, key(), options(50)).expect("create");
        std::thread::spawn(move || {
            for i in 0..120u64 {
                log.append("network.request", json!({"i": i}))
                    .expect("append");
            }
        })
        .join()
        .expect("writer thread");
        let report = verify_log(&path, &key().public_key()).expect("readable");
        assert_eq!(report.verdict, Verdict::Unfinished, "{}", report.message);
        assert_eq!((report.entries, report.unsealed_entries), (120, 20));
        return;
    };
    let options = LogOptions {
        checkpoint_every: 50,
        ..LogOptions::default()
    };
    let log = AuditLog::create(&path, RUN, key(), options).expect("create");
    // Append, then wait to be killed; both are bounded so a lost child cannot run away.
    for i in 0..100_000u64 {
        log.append("network.request", json!({"i": i, "pad": "x".repeat(64)}))
            .expect("append");
    }
    std::thread::sleep(Duration::from_secs(120));
}

/// Kills the child writer however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn killed_writer_process_leaves_an_unfinished_intact_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = KillOnDrop(
        Command::new(exe)
            .args([
                "crash::child_writer_entry_point",
                "--exact",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn child writer"),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len > 200_000 {
            break;
        }
        if Instant::now() > deadline {
            panic!("child writer produced only {len} bytes in 120 s");
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("child writer exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let live = verify_log(&path, &key().public_key()).expect("readable");
    assert_eq!(live.verdict, Verdict::Unfinished, "{}", live.message);
    assert!(live.writer_active, "the child holds the writer lock");
    child.0.kill().expect("SIGKILL the writer");
    child.0.wait().expect("reap");
    let report = verify_log(&path, &key().public_key()).expect("readable");
    assert_eq!(report.verdict, Verdict::Unfinished, "{}", report.message);
    assert!(!report.is_tampered());
    assert!(
        !report.writer_active,
        "the kernel drops the lock of a killed writer"
    );
    assert!(report.entries > 100);
    assert_eq!(report.verified_entries, report.entries);
    assert!(
        report
            .checkpoints
            .iter()
            .all(|c| c.signature_valid && !c.is_final)
    );
    assert!(report.message.contains("did not finish cleanly"));
}
