//! The orchestrator against the fake runtime.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use moat_core::audit::AuditSink;
use moat_core::audit::AuditSinkError;
use moat_core::config::RuntimeKind;
use moat_core::egress::PolicyMode;
use moat_core::orchestrator::Orchestrator;
use moat_core::orchestrator::RunIo;
use moat_core::orchestrator::RunRequest;
use moat_core::orchestrator::RunServices;
use moat_core::run::RunMetadata;
use moat_core::run::RunSpec;
use moat_core::run::RunState;
use moat_core::runtime::NetworkAttachment;
use moat_core::store::LogStream;
use moat_core::store::RunStore;
use tokio_util::sync::CancellationToken;

use crate::fake::FakeRuntime;
use crate::fake::Script;

#[derive(Default)]
struct RecordingAudit(Mutex<Vec<(String, serde_json::Value)>>);

impl AuditSink for RecordingAudit {
    fn append(&self, event_type: &str, data: serde_json::Value) -> Result<(), AuditSinkError> {
        self.0.lock().unwrap().push((event_type.to_owned(), data));
        Ok(())
    }

    fn close(&self) -> Result<(), AuditSinkError> {
        self.0
            .lock()
            .unwrap()
            .push(("<closed>".to_owned(), serde_json::Value::Null));
        Ok(())
    }
}

fn spec() -> RunSpec {
    RunSpec {
        command: Some(vec!["true".into()]),
        env: vec![("A".into(), "1".into())],
        tty: false,
        stdin: false,
        keep: false,
        user: "1000:1000".into(),
        mounts: Vec::new(),
        ports: vec![(8080, 80)],
        memory_bytes: None,
        cpus: None,
        detached: false,
        network_allow: Vec::new(),
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    store: RunStore,
    rt: FakeRuntime,
    orch: Orchestrator,
}

fn setup(script: Script) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = RunStore::new(dir.path().join("runs"));
    let rt = FakeRuntime::new(script);
    let orch = Orchestrator::new(Arc::new(rt.clone()), store.clone(), "test");
    Setup {
        _dir: dir,
        store,
        rt,
        orch,
    }
}

fn create(s: &Setup, policy: PolicyMode, spec: RunSpec) -> RunMetadata {
    s.orch
        .create_run(RunRequest {
            name: "t".into(),
            workspace: "/tmp".into(),
            image: "img".into(),
            runtime: RuntimeKind::Docker,
            grants: Vec::new(),
            policy,
            spec,
        })
        .unwrap()
}

fn io(cancel: CancellationToken) -> (RunIo, Arc<Mutex<Vec<u8>>>) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let io = RunIo {
        stdout: Box::new(SharedWriter(out.clone())),
        stderr: Box::new(tokio::io::sink()),
        stdin: None,
        resize: None,
        cancel,
        started: None,
    };
    (io, out)
}

struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl tokio::io::AsyncWrite for SharedWriter {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn a_run_is_driven_to_completion_and_cleaned_up() {
    let s = setup(Script {
        chunks: vec![
            (LogStream::Stdout, "hello "),
            (LogStream::Stderr, "warn\n"),
            (LogStream::Stdout, "world\nsecond"),
        ],
        late_chunks: vec![(LogStream::Stdout, " line\n")],
        exit_code: Some(7),
        ..Script::default()
    });
    let meta = create(&s, PolicyMode::Permissive, spec());
    let audit = Arc::new(RecordingAudit::default());
    let (io, out) = io(CancellationToken::new());
    let outcome = s
        .orch
        .supervise(&meta.id, io, RunServices::audit_only(audit.clone()), 42)
        .await
        .unwrap();
    assert_eq!(outcome.exit_code, 7);
    assert_eq!(outcome.state, RunState::Exited);

    let meta = s.store.load(&meta.id).unwrap();
    assert_eq!(meta.state, RunState::Exited);
    assert_eq!(meta.exit_code, Some(7));
    assert_eq!(meta.supervisor_pid, Some(42));
    assert!(meta.started_at.is_some() && meta.ended_at.is_some());

    // Lines are reassembled across chunks, the late chunk is caught up exactly once, and each
    // line keeps the timestamp of the chunk that started it.
    let logs = s.store.read_logs(&meta.id).unwrap();
    let lines: Vec<(LogStream, &str)> = logs.iter().map(|r| (r.stream, r.line.as_str())).collect();
    assert_eq!(
        lines,
        [
            (LogStream::Stderr, "warn"),
            (LogStream::Stdout, "hello world"),
            (LogStream::Stdout, "second line"),
        ]
    );
    // The fake runtime stamps chunk i at 1_800_000_000 + i seconds.
    let at = |i: i64| chrono::DateTime::from_timestamp(1_800_000_000 + i, 0).unwrap();
    assert_eq!(
        [logs[0].ts, logs[1].ts, logs[2].ts],
        [at(1), at(0), at(2)],
        "warn (chunk 1), hello world (from chunk 0), second line (from chunk 2)"
    );
    assert_eq!(&*out.lock().unwrap(), b"hello world\nsecond line\n");

    // Hardened, labelled container on a per-run network; both removed afterwards.
    let state = s.rt.state.lock().unwrap();
    assert!(state.containers.is_empty() && state.networks.is_empty());
    drop(state);
    let calls = s.rt.calls();
    assert_eq!(&calls[..3], ["create_network", "create_container", "start"]);
    assert!(calls.contains(&"remove_container".to_owned()));
    assert!(calls.contains(&"remove_network".to_owned()));

    let events: Vec<String> = audit
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.0.clone())
        .collect();
    assert_eq!(
        events,
        [
            "run.created",
            "container.started",
            "container.exited",
            "run.finished",
            "<closed>"
        ]
    );
    assert_eq!(audit.0.lock().unwrap()[2].1["exit_code"], 7);
    // The supervisor lock is released.
    assert!(!s.store.is_supervised(&meta.id));
}

#[tokio::test(start_paused = true)]
async fn a_follow_stream_that_never_ends_loses_no_output() {
    let s = setup(Script {
        chunks: vec![(LogStream::Stdout, "first\n")],
        late_chunks: vec![(LogStream::Stdout, "second\n")],
        exit_code: Some(0),
        follow_hangs: true,
        ..Script::default()
    });
    let meta = create(&s, PolicyMode::Permissive, spec());
    let (io, out) = io(CancellationToken::new());
    let outcome = s.orch.supervise(&meta.id, io, services(), 1).await.unwrap();
    assert_eq!(outcome.exit_code, 0);
    let lines: Vec<String> = s
        .store
        .read_logs(&meta.id)
        .unwrap()
        .into_iter()
        .map(|r| r.line)
        .collect();
    assert_eq!(lines, ["first", "second"]);
    assert_eq!(&*out.lock().unwrap(), b"first\nsecond\n");
}

/// Services that only record audit events, which the test does not look at.
fn services() -> RunServices {
    RunServices::audit_only(Arc::new(RecordingAudit::default()))
}

/// A kept run (container and network stay) under `policy`, supervised to its exit.
async fn supervise_kept(policy: PolicyMode) -> (Setup, RunMetadata) {
    let s = setup(Script {
        exit_code: Some(0),
        ..Script::default()
    });
    let mut sp = spec();
    sp.keep = true;
    let meta = create(&s, policy, sp);
    let (io, _) = io(CancellationToken::new());
    s.orch.supervise(&meta.id, io, services(), 1).await.unwrap();
    (s, meta)
}

#[tokio::test]
async fn container_spec_is_hardened() {
    let (s, meta) = supervise_kept(PolicyMode::Strict).await;
    let state = s.rt.state.lock().unwrap();
    // --keep keeps container and network.
    let (spec, _) = state.containers.values().next().unwrap();
    assert_eq!(spec.cap_add, Vec::<String>::new());
    assert!(spec.pids_limit > 0);
    assert_eq!(spec.user, "1000:1000");
    assert_eq!(spec.workdir, "/workspace");
    assert_eq!(spec.mounts[0].target, "/workspace");
    assert_eq!(spec.labels["dev.moat.run-id"], meta.id.as_str());
    let net = state.networks.values().next().unwrap();
    assert!(net.internal, "strict policy uses an internal network");
    assert_eq!(net.labels["dev.moat.run-id"], meta.id.as_str());
}

#[tokio::test]
async fn removing_a_kept_strict_run_takes_its_firewall_rules_container_and_network() {
    let (s, meta) = supervise_kept(PolicyMode::Strict).await;
    let meta = s.store.load(&meta.id).unwrap();
    s.rt.state.lock().unwrap().calls.clear();
    s.orch.remove_objects(&meta).await.unwrap();
    let state = s.rt.state.lock().unwrap();
    assert!(state.containers.is_empty() && state.networks.is_empty());
    assert!(
        state.calls.iter().any(|c| c == "release_host_access"),
        "{:?}",
        state.calls
    );
}

#[tokio::test]
async fn policy_none_has_no_network() {
    let (s, _) = supervise_kept(PolicyMode::None).await;
    let state = s.rt.state.lock().unwrap();
    assert!(state.networks.is_empty());
    let (spec, _) = state.containers.values().next().unwrap();
    assert_eq!(spec.network, NetworkAttachment::None);
}

#[tokio::test]
async fn cancel_stops_the_container() {
    let s = setup(Script::default()); // runs until stopped
    let meta = create(&s, PolicyMode::Permissive, spec());
    let cancel = CancellationToken::new();
    let (io, _) = io(cancel.clone());
    let orch = s.orch.clone();
    let id = meta.id.clone();
    let task = tokio::spawn(async move { orch.supervise(&id, io, services(), 1).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(s.store.is_supervised(&meta.id));
    assert_eq!(s.store.load(&meta.id).unwrap().state, RunState::Running);
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome.state, RunState::Stopped);
    assert_eq!(outcome.exit_code, 143);
    assert!(s.rt.calls().contains(&"stop".to_owned()));
    assert_eq!(s.store.load(&meta.id).unwrap().state, RunState::Stopped);
}

#[tokio::test]
async fn a_failed_start_is_recorded_and_cleaned_up() {
    let s = setup(Script {
        fail_create: true,
        ..Script::default()
    });
    let meta = create(&s, PolicyMode::Permissive, spec());
    let audit = Arc::new(RecordingAudit::default());
    let (io, _) = io(CancellationToken::new());
    let err = s
        .orch
        .supervise(&meta.id, io, RunServices::audit_only(audit.clone()), 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("create container"), "{err}");
    let meta = s.store.load(&meta.id).unwrap();
    assert_eq!(meta.state, RunState::Failed);
    assert!(meta.error.unwrap().contains("no space left"));
    assert!(
        s.rt.state.lock().unwrap().networks.is_empty(),
        "network removed"
    );
    let events = audit.0.lock().unwrap();
    assert_eq!(events.last().unwrap().0, "<closed>");
}

#[tokio::test]
async fn reconcile_stops_an_orphaned_container() {
    let s = setup(Script::default());
    let meta = create(&s, PolicyMode::Permissive, spec());
    // Simulate a supervisor that died after starting the container.
    let cancel = CancellationToken::new();
    let (io, _) = io(cancel.clone());
    let orch = s.orch.clone();
    let id = meta.id.clone();
    let task = tokio::spawn(async move { orch.supervise(&id, io, services(), 1).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    task.abort();
    let _ = task.await;
    let stale = s.store.load(&meta.id).unwrap();
    assert_eq!(stale.state, RunState::Running);
    assert!(
        !s.store.is_supervised(&meta.id),
        "the dead supervisor's lock is gone"
    );

    let fixed = s.orch.reconcile(&stale).await.unwrap();
    assert_eq!(fixed.state, RunState::Failed);
    assert_eq!(fixed.exit_code, Some(143));
    assert!(fixed.error.unwrap().contains("supervisor"));
    let state = s.rt.state.lock().unwrap();
    assert!(state.containers.is_empty() && state.networks.is_empty());
}

#[tokio::test]
async fn a_second_supervisor_is_refused() {
    let s = setup(Script::default());
    let meta = create(&s, PolicyMode::Permissive, spec());
    let _lock = s.store.lock_supervisor(&meta.id).unwrap();
    let (io, _) = io(CancellationToken::new());
    let err = s
        .orch
        .supervise(&meta.id, io, services(), 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already supervised"), "{err}");
    assert!(s.rt.calls().is_empty());
}
