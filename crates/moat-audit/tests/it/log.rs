//! Writer behaviour: checkpoints, closing, single writer, limits, verification of good logs.

use std::time::Duration;

use moat_audit::AuditLog;
use moat_audit::LogError;
use moat_audit::LogOptions;
use moat_audit::Verdict;
use moat_audit::verify_log;
use serde_json::json;

use crate::common::*;

#[test]
fn audit_log_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<AuditLog>();
    assert_send_sync::<LogError>();
}

#[test]
fn closed_log_verifies_intact_with_checkpoints_every_n() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_log(dir.path(), 12, 5);
    let report = verify_log(&path, &key().public_key()).expect("readable");
    assert_eq!(report.verdict, Verdict::Intact, "{}", report.message);
    assert!(!report.is_tampered());
    assert_eq!(report.entries, 12);
    assert_eq!(report.verified_entries, 12);
    assert!(report.finished_cleanly);
    assert!(report.last_checkpoint_covers_all);
    assert_eq!(report.unsealed_entries, 0);
    let sizes: Vec<u64> = report.checkpoints.iter().map(|c| c.tree_size).collect();
    assert_eq!(sizes, [5, 10, 12]);
    assert!(report.checkpoints.iter().all(|c| c.signature_valid));
    assert!(
        report
            .checkpoints
            .iter()
            .all(|c| c.matches_entries == Some(true))
    );
    assert_eq!(report.checkpoints.iter().filter(|c| c.is_final).count(), 1);
    let key_report = report.key.as_ref().expect("key");
    assert_eq!(key_report.fingerprint, key().public_key().fingerprint());
    assert!(key_report.pinned);
    assert_eq!(
        report.checkpoints.last().map(|c| c.root),
        Some(report.merkle_root)
    );
    assert_eq!(report.event_types.get("network.request"), Some(&4));
    assert_eq!(report.event_types.values().sum::<u64>(), 12);
    assert!(report.first_ts.as_deref() < report.last_ts.as_deref());
    let text = report.to_string();
    assert!(text.starts_with(&format!("run {RUN}: intact\n")), "{text}");
    assert!(text.contains("last checkpoint: closing"), "{text}");
    assert!(text.contains("covers every entry"), "{text}");
    // The report serializes for --json.
    let json = serde_json::to_value(&report).expect("serialize");
    assert_eq!(json["verdict"], "intact");
    assert_eq!(json["checkpoints"][2]["final"], true);
}

#[test]
fn empty_log_closes_and_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_log(dir.path(), 0, 5);
    let report = verify_log(&path, &key().public_key()).expect("readable");
    assert_eq!(report.verdict, Verdict::Intact, "{}", report.message);
    assert_eq!(report.entries, 0);
    assert_eq!(report.merkle_root, moat_audit::empty_root());
}

#[test]
fn interval_checkpoints_use_the_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new();
    let options = LogOptions {
        checkpoint_every: 0,
        checkpoint_interval: Duration::from_secs(10),
        clock: clock.clone(),
    };
    let log = AuditLog::create(&dir.path().join("a.log"), RUN, key(), options).expect("create");
    log.append("a", json!(1)).expect("append");
    assert_eq!(log.checkpoint_if_due().expect("ok"), None);
    clock.advance(Duration::from_secs(11));
    let cp = log.checkpoint_if_due().expect("ok").expect("due");
    assert_eq!(cp.tree_size, 1);
    assert!(!cp.is_final);
    clock.advance(Duration::from_secs(11));
    // Nothing new to seal.
    assert_eq!(log.checkpoint_if_due().expect("ok"), None);
    // The next append notices the elapsed interval by itself.
    log.append("b", json!(2)).expect("append");
    log.append("c", json!(3)).expect("append");
    let final_cp = log.close().expect("close");
    assert_eq!(final_cp.tree_size, 3);
    let report = verify_log(log.path(), &key().public_key()).expect("readable");
    let sizes: Vec<u64> = report.checkpoints.iter().map(|c| c.tree_size).collect();
    assert_eq!(sizes, [1, 2, 3]);
    assert_eq!(report.verdict, Verdict::Intact, "{}", report.message);
}

#[test]
fn close_is_idempotent_and_seals_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log =
        AuditLog::create(&dir.path().join("a.log"), RUN, key(), options(100)).expect("create");
    log.append("run.created", json!({"image": "alpine"}))
        .expect("append");
    let first = log.close().expect("close");
    let second = log.close().expect("close again");
    assert_eq!(first, second);
    assert!(first.is_final);
    assert!(matches!(
        log.append("late", json!(null)),
        Err(LogError::Closed { .. })
    ));
    assert!(matches!(log.checkpoint(), Err(LogError::Closed { .. })));
}

#[test]
fn only_one_writer_per_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.log");
    let _log = AuditLog::create(&path, RUN, key(), options(100)).expect("create");
    let err = AuditLog::create(&path, RUN, key(), options(100)).expect_err("second writer");
    assert!(matches!(err, LogError::Exists { .. }), "{err}");
}

#[test]
fn invalid_input_is_rejected_with_specific_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = AuditLog::create(&dir.path().join("x"), "run\nfinal true", key(), options(1))
        .expect_err("bad run id");
    assert!(matches!(err, LogError::InvalidRunId { .. }));
    assert!(err.to_string().contains("use 1 to 128 characters"));
    let log =
        AuditLog::create(&dir.path().join("a.log"), RUN, key(), options(100)).expect("create");
    assert!(matches!(
        log.append("", json!(1)),
        Err(LogError::InvalidEventType { .. })
    ));
    let big = "x".repeat(moat_audit::MAX_ENTRY_BYTES);
    assert!(matches!(
        log.append("blob", json!(big)),
        Err(LogError::EntryTooLarge { .. })
    ));
    // Rejections do not consume a seq or break the log.
    assert_eq!(log.append("ok", json!(1)).expect("append"), 0);
    log.close().expect("close");
    let report = verify_log(log.path(), &key().public_key()).expect("readable");
    assert_eq!(report.verdict, Verdict::Intact, "{}", report.message);
}

#[test]
fn entries_are_canonical_json_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log =
        AuditLog::create(&dir.path().join("a.log"), RUN, key(), options(100)).expect("create");
    log.append(
        "secret.resolved",
        json!({"z": 1, "a": {"c": [1, 2], "b": "é\n"}}),
    )
    .expect("append");
    log.close().expect("close");
    let lines = lines(log.path());
    assert!(lines[0].starts_with(r#"{"header":{"format":"moat-audit-log/1","#));
    assert_eq!(
        lines[1],
        format!(
            r#"{{"entry":{{"data":{{"a":{{"b":"é\n","c":[1,2]}},"z":1}},"run_id":"{RUN}","seq":0,"ts":"2026-01-02T03:04:05.000002Z","type":"secret.resolved"}},"hash":"{}"}}"#,
            lines[1].rsplit('"').nth(1).expect("hash")
        )
    );
    assert!(lines[2].starts_with(r#"{"checkpoint":{"#));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(log.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn wrong_key_is_reported_as_key_mismatch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_log(dir.path(), 3, 5);
    let report = verify_log(&path, &foreign_key().public_key()).expect("readable");
    assert!(report.is_tampered());
    assert!(matches!(
        report.problem,
        Some(moat_audit::Problem::KeyMismatch { .. })
    ));
}

#[test]
fn missing_file_is_a_read_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = verify_log(&dir.path().join("nope"), &key().public_key()).expect_err("missing");
    assert!(err.to_string().contains("cannot read audit log"));
}

#[test]
fn concurrent_appends_from_many_threads_form_one_intact_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = std::sync::Arc::new(
        AuditLog::create(&dir.path().join("a.log"), RUN, key(), options(64)).expect("create"),
    );
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..250)
                    .map(|i| log.append("network.request", json!({"t": t, "i": i})))
                    .collect::<Result<Vec<u64>, _>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread").expect("appends"))
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..1000).collect::<Vec<u64>>());
    log.close().expect("close");
    let report = verify_log(log.path(), &key().public_key()).expect("readable");
    assert_eq!(report.verdict, Verdict::Intact, "{}", report.message);
    assert_eq!(report.entries, 1000);
}

#[test]
fn errors_fit_the_audit_sink_error_box() {
    // moat-core's AuditSinkError wraps `Box<dyn Error + Send + Sync>`.
    fn boxed(e: LogError) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        Box::new(e)
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let log = AuditLog::create(&dir.path().join("a.log"), RUN, key(), options(1)).expect("create");
    log.close().expect("close");
    let err = boxed(log.append("x", json!(null)).expect_err("closed"));
    assert!(err.to_string().contains("is closed"), "{err}");
}

#[test]
fn verify_file_tells_logs_and_bundles_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_log(dir.path(), 4, 2);
    let pk = key().public_key();
    let bundle_path = dir.path().join("run.bundle.json");
    moat_audit::export_bundle_to(&path, &bundle_path, &pk).expect("export");
    for file in [&path, &bundle_path] {
        let report = moat_audit::verify_file(file, Some(&pk)).expect("readable");
        assert_eq!(report.verdict, Verdict::Intact, "{}", report.message);
        assert_eq!(report.entries, 4);
    }
    let unpinned = moat_audit::verify_file(&bundle_path, None).expect("readable");
    assert_eq!(unpinned.verdict, Verdict::Intact, "{}", unpinned.message);
    let err = moat_audit::verify_file(&path, None).expect_err("a log needs a key");
    assert!(
        matches!(err, moat_audit::ReadError::KeyRequired { .. }),
        "{err}"
    );
}
