//! The run store on a real file system.

use std::os::unix::fs::PermissionsExt;

use chrono::Utc;
use moat_core::config::RuntimeKind;
use moat_core::egress::PolicyMode;
use moat_core::run::RunId;
use moat_core::run::RunMetadata;
use moat_core::run::RunSpec;
use moat_core::run::RunState;
use moat_core::store::LogRecord;
use moat_core::store::LogStream;
use moat_core::store::RunStore;
use moat_core::store::StoreError;

fn meta(id: &str, name: &str, secs: i64) -> RunMetadata {
    RunMetadata {
        id: id.parse().unwrap(),
        name: name.into(),
        state: RunState::Exited,
        workspace: "/w".into(),
        image: "img".into(),
        runtime: RuntimeKind::Docker,
        grants: Vec::new(),
        policy: PolicyMode::Permissive,
        created_at: chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap(),
        started_at: None,
        ended_at: None,
        exit_code: None,
        error: None,
        moat_version: "test".into(),
        container_id: None,
        network_id: None,
        supervisor_pid: None,
        spec: RunSpec {
            command: None,
            env: Vec::new(),
            tty: false,
            stdin: false,
            keep: false,
            user: "0:0".into(),
            mounts: Vec::new(),
            ports: Vec::new(),
            memory_bytes: None,
            cpus: None,
            detached: false,
            network_allow: Vec::new(),
        },
    }
}

#[test]
fn ids_are_well_formed_and_unique() {
    let a = RunId::generate();
    assert!(RunId::is_valid(a.as_str()), "{a}");
    assert_ne!(a, RunId::generate());
    for bad in [
        "run_",
        "run_0123456789aG",
        "run_0123456789abc",
        "xun_0123456789ab",
    ] {
        assert!(bad.parse::<RunId>().is_err(), "{bad}");
    }
}

#[test]
fn create_save_load_list() {
    let dir = tempfile::tempdir().unwrap();
    let store = RunStore::new(dir.path().join("runs"));
    let a = meta("run_aaaaaaaaaaaa", "one", 1);
    let b = meta("run_abbbbbbbbbbb", "two", 2);
    store.create(&b).unwrap();
    store.create(&a).unwrap();
    let mode = std::fs::metadata(store.dir(&a.id))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    assert!(store.create(&a).is_err(), "a run directory is never reused");
    let updated = store
        .update(&a.id, |m| m.state = RunState::Running)
        .unwrap();
    assert_eq!(store.load(&a.id).unwrap(), updated);
    let (runs, errors) = store.list().unwrap();
    assert!(errors.is_empty());
    assert_eq!(
        runs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["one", "two"]
    );
    // No temporary files are left behind by atomic writes.
    let leftovers: Vec<_> = std::fs::read_dir(store.dir(&a.id))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn corrupt_metadata_is_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let store = RunStore::new(dir.path().join("runs"));
    let good = meta("run_aaaaaaaaaaaa", "good", 1);
    let bad = meta("run_bbbbbbbbbbbb", "bad", 2);
    store.create(&good).unwrap();
    store.create(&bad).unwrap();
    std::fs::write(store.dir(&bad.id).join("metadata.json"), "{ truncated").unwrap();
    let (runs, errors) = store.list().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(errors.len(), 1);
    assert!(matches!(errors[0], StoreError::Corrupt { .. }));
    assert!(errors[0].to_string().contains("metadata.json"));
}

#[test]
fn resolve_by_id_prefix_name_and_default() {
    let runs = vec![
        meta("run_aaaa11111111", "web", 1),
        meta("run_aaaa22222222", "api", 2),
        meta("run_bbbb33333333", "web", 3),
    ];
    let pick =
        |r: Option<&str>| RunStore::resolve(&runs, r, |_| true, "").map(|m| m.id.to_string());
    assert_eq!(pick(Some("run_aaaa11111111")).unwrap(), "run_aaaa11111111");
    assert_eq!(pick(Some("api")).unwrap(), "run_aaaa22222222");
    assert_eq!(pick(Some("bbbb")).unwrap(), "run_bbbb33333333");
    assert_eq!(pick(Some("run_bbb")).unwrap(), "run_bbbb33333333");
    assert_eq!(pick(None).unwrap(), "run_bbbb33333333");
    match pick(Some("web")) {
        Err(StoreError::Ambiguous { matches, .. }) => assert_eq!(matches.len(), 2),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        pick(Some("aaaa")),
        Err(StoreError::Ambiguous { .. })
    ));
    assert!(matches!(
        pick(Some("nope")),
        Err(StoreError::NotFound { .. })
    ));
    // Prefixes need at least 3 hex digits, with or without `run_`.
    for short in ["run_b", "run_bb", "bb"] {
        assert!(
            matches!(pick(Some(short)), Err(StoreError::NotFound { .. })),
            "{short}"
        );
    }
    let none = RunStore::resolve(&runs, None, |r| r.state == RunState::Running, "running");
    assert!(matches!(none, Err(StoreError::NoRuns { what: "running" })));
}

#[test]
fn supervisor_lock_is_exclusive_and_released_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let store = RunStore::new(dir.path().join("runs"));
    let m = meta("run_aaaaaaaaaaaa", "x", 1);
    store.create(&m).unwrap();
    assert!(!store.is_supervised(&m.id));
    let lock = store.lock_supervisor(&m.id).unwrap();
    assert!(store.is_supervised(&m.id));
    assert!(matches!(
        store.lock_supervisor(&m.id),
        Err(StoreError::AlreadySupervised { .. })
    ));
    drop(lock);
    assert!(!store.is_supervised(&m.id));
}

#[test]
fn logs_append_and_a_torn_tail_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = RunStore::new(dir.path().join("runs"));
    let m = meta("run_aaaaaaaaaaaa", "x", 1);
    store.create(&m).unwrap();
    let mut w = store.log_writer(&m.id).unwrap();
    for i in 0..3 {
        w.append(&LogRecord {
            ts: Utc::now(),
            stream: LogStream::Stdout,
            line: format!("line {i} \u{1F600}"),
        })
        .unwrap();
    }
    w.sync().unwrap();
    // A crash mid-write leaves a partial last line.
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(store.log_path(&m.id))
        .unwrap()
        .write_all(b"{\"ts\":\"20")
        .unwrap();
    let logs = store.read_logs(&m.id).unwrap();
    assert_eq!(logs.len(), 3);
    assert_eq!(logs[2].line, "line 2 \u{1F600}");
}
