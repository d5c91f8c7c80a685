//! Malformed traffic from the container, and start-up failures.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use moat_ssh::AgentProxy;
use moat_ssh::AgentProxyConfig;
use moat_ssh::SshEvent;
use moat_ssh::event::MemoryEventSink;
use moat_ssh::proxy::StartError;
use moat_ssh::wire::MAX_MESSAGE_LEN;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

use crate::support::KeyFile;
use crate::support::RealAgent;
use crate::support::TIMEOUT;
use crate::support::start_proxy;

async fn raw(proxy: &AgentProxy) -> UnixStream {
    UnixStream::connect(proxy.socket_path())
        .await
        .expect("connect")
}

/// Sends bytes and reads one framed reply body, or `None` if the proxy hung up.
async fn exchange(stream: &mut UnixStream, bytes: &[u8]) -> Option<Vec<u8>> {
    stream.write_all(bytes).await.ok()?;
    let read = async {
        let mut len = [0_u8; 4];
        stream.read_exact(&mut len).await.ok()?;
        let mut body = vec![0_u8; usize::try_from(u32::from_be_bytes(len)).ok()?];
        stream.read_exact(&mut body).await.ok()?;
        Some(body)
    };
    tokio::time::timeout(TIMEOUT, read)
        .await
        .expect("proxy answers in time")
}

async fn is_closed(stream: &mut UnixStream) -> bool {
    let mut byte = [0_u8; 1];
    matches!(
        tokio::time::timeout(TIMEOUT, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

const FAILURE: &[u8] = &[5];

#[tokio::test]
async fn malformed_messages_get_failure_and_the_proxy_survives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = RealAgent::start(dir.path(), "agent.sock").await;
    let (proxy, sink) = start_proxy(dir.path(), &agent.socket, Vec::new()).await;

    let mut s = raw(&proxy).await;
    // Empty message, unknown type, sign request cut short, request-identities with garbage:
    // each gets SSH_AGENT_FAILURE and the connection stays usable.
    assert_eq!(
        exchange(&mut s, &[0, 0, 0, 0]).await.as_deref(),
        Some(FAILURE)
    );
    assert_eq!(
        exchange(&mut s, &[0, 0, 0, 1, 200]).await.as_deref(),
        Some(FAILURE)
    );
    assert_eq!(
        exchange(&mut s, &[0, 0, 0, 6, 13, 0xff, 0xff, 0xff, 0xff, 1])
            .await
            .as_deref(),
        Some(FAILURE)
    );
    assert_eq!(
        exchange(&mut s, &[0, 0, 0, 2, 11, 0]).await.as_deref(),
        Some(FAILURE)
    );
    // A session-bind whose host key is not a key.
    let mut bind = vec![27];
    moat_ssh::wire::put_string(&mut bind, b"session-bind@openssh.com");
    for field in [&b"junk"[..], b"sid", b"sig"] {
        moat_ssh::wire::put_string(&mut bind, field);
    }
    bind.push(0);
    let mut framed = Vec::new();
    moat_ssh::wire::put_string(&mut framed, &bind);
    assert_eq!(exchange(&mut s, &framed).await.as_deref(), Some(FAILURE));
    // Still answering: an empty identity list (no grants).
    assert_eq!(
        exchange(&mut s, &[0, 0, 0, 1, 11]).await,
        Some(vec![12, 0, 0, 0, 0])
    );

    // Oversized: refused from the length prefix alone, then the connection is closed.
    let too_long = u32::try_from(MAX_MESSAGE_LEN + 1)
        .expect("fits")
        .to_be_bytes();
    assert_eq!(exchange(&mut s, &too_long).await.as_deref(), Some(FAILURE));
    assert!(
        is_closed(&mut s).await,
        "connection closed after an oversized message"
    );

    // Truncated: the client hangs up mid-message; the proxy just drops the connection.
    let mut s = raw(&proxy).await;
    s.write_all(&[0, 0, 0, 50, 13, 0, 0]).await.expect("write");
    s.shutdown().await.expect("half-close");
    assert!(is_closed(&mut s).await);

    // The proxy still serves new connections.
    let mut s = raw(&proxy).await;
    assert_eq!(
        exchange(&mut s, &[0, 0, 0, 1, 11]).await,
        Some(vec![12, 0, 0, 0, 0])
    );

    let malformed = sink
        .events()
        .iter()
        .filter(|e| matches!(e, SshEvent::Refused(r) if r.request == "malformed"))
        .count();
    // Empty, cut-short sign, trailing garbage, oversized, truncated.
    assert_eq!(malformed, 5, "{:?}", sink.events());
    proxy.shutdown().await;
}

#[tokio::test]
async fn start_fails_clearly_without_a_live_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(MemoryEventSink::new());
    let missing = AgentProxyConfig::new(
        dir.path().join("p.sock"),
        dir.path().join("no-agent.sock"),
        Vec::new(),
    );
    let err = AgentProxy::start(missing, sink.clone())
        .await
        .expect_err("no agent");
    assert!(
        matches!(
            err,
            StartError::Upstream(moat_ssh::AgentError::NotFound { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("ssh-agent"), "{err}");
    assert!(!dir.path().join("p.sock").exists(), "no socket left behind");

    // A socket file whose agent has exited.
    let dead_path = dir.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead_path).expect("bind"));
    let dead = AgentProxyConfig::new(dir.path().join("p.sock"), &dead_path, Vec::new());
    let err = AgentProxy::start(dead, sink).await.expect_err("dead agent");
    assert!(
        matches!(err, StartError::Upstream(moat_ssh::AgentError::Dead { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn socket_mode_existing_path_and_cleanup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = RealAgent::start(dir.path(), "agent.sock").await;
    let sink = Arc::new(MemoryEventSink::new());
    let path = dir.path().join("run.sock");

    let mut world = AgentProxyConfig::new(&path, &agent.socket, Vec::new());
    world.socket_mode = 0o666;
    assert!(matches!(
        AgentProxy::start(world, sink.clone()).await,
        Err(StartError::InvalidMode { mode: 0o666 })
    ));

    let mut group = AgentProxyConfig::new(&path, &agent.socket, Vec::new());
    group.socket_mode = 0o660;
    let proxy = AgentProxy::start(group, sink.clone()).await.expect("start");
    let mode = std::fs::metadata(&path)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);

    let again = AgentProxyConfig::new(&path, &agent.socket, Vec::new());
    assert!(matches!(
        AgentProxy::start(again, sink.clone()).await,
        Err(StartError::SocketExists { .. })
    ));

    proxy.shutdown().await;
    assert!(!path.exists(), "shutdown removes the socket");

    // Dropping without shutdown also removes it.
    let proxy = AgentProxy::start(
        AgentProxyConfig::new(&path, &agent.socket, Vec::new()),
        sink,
    )
    .await
    .expect("start");
    drop(proxy);
    assert!(!path.exists(), "drop removes the socket");
}

#[tokio::test]
async fn missing_granted_keys_are_reported_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = RealAgent::start(dir.path(), "agent.sock").await;
    let key = KeyFile::generate(dir.path(), "not_added", "ed25519").await;
    let host_key = KeyFile::generate(dir.path(), "host", "ed25519").await;
    let known = moat_ssh::KnownHosts::parse(&format!("h.test {}\n", host_key.openssh()));
    let identity = moat_ssh::protocol::Identity {
        key: key.public.clone(),
        comment: Vec::new(),
    };
    let grant =
        moat_ssh::grants::build_grant("h.test".parse().expect("host"), &[identity], None, &known)
            .expect("grant");
    let (proxy, _sink) = start_proxy(dir.path(), &agent.socket, vec![grant]).await;
    assert_eq!(proxy.missing_keys(), &[key.public.fingerprint()]);
    proxy.shutdown().await;
}

#[tokio::test]
async fn agent_dying_mid_run_gives_failures_not_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = RealAgent::start(dir.path(), "agent.sock").await;
    let (proxy, sink) = start_proxy(dir.path(), &agent.socket, Vec::new()).await;
    let mut s = raw(&proxy).await;
    assert_eq!(
        exchange(&mut s, &[0, 0, 0, 1, 11]).await,
        Some(vec![12, 0, 0, 0, 0])
    );

    drop(agent); // kills ssh-agent; its socket file stays behind, dead
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        // The first request after the kill may still race the process exit; retry until the
        // proxy notices, then it must answer FAILURE on the same connection.
        let reply = exchange(&mut s, &[0, 0, 0, 1, 11]).await;
        if reply.as_deref() == Some(FAILURE) {
            break;
        }
        assert_eq!(
            reply,
            Some(vec![12, 0, 0, 0, 0]),
            "only an empty list or FAILURE"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "proxy never noticed the dead agent"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let denied = sink.events().into_iter().any(|e| {
        matches!(e, SshEvent::List(l) if l.decision == moat_ssh::event::Decision::Denied
            && l.reason.as_deref().is_some_and(|r| r.contains("ssh agent")))
    });
    assert!(denied, "{:?}", sink.events());
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_keeps_failing_is_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = RealAgent::start(dir.path(), "agent.sock").await;
    let (proxy, sink) = start_proxy(dir.path(), &agent.socket, Vec::new()).await;
    let mut s = raw(&proxy).await;
    for _ in 0..moat_ssh::proxy::MAX_FAILURES_PER_CONNECTION {
        assert_eq!(
            exchange(&mut s, &[0, 0, 0, 1, 22]).await.as_deref(),
            Some(FAILURE)
        );
    }
    assert!(is_closed(&mut s).await, "closed after too many failures");
    let refused = sink
        .events()
        .iter()
        .filter(|e| matches!(e, SshEvent::Refused(_)))
        .count();
    // One event per refused lock, plus one for hanging up; nothing more can be added.
    assert_eq!(refused, moat_ssh::proxy::MAX_FAILURES_PER_CONNECTION + 1);
    // Other connections are unaffected.
    let mut s = raw(&proxy).await;
    assert_eq!(
        exchange(&mut s, &[0, 0, 0, 1, 11]).await,
        Some(vec![12, 0, 0, 0, 0])
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn overlong_socket_path_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = RealAgent::start(dir.path(), "agent.sock").await;
    let long = dir.path().join("x".repeat(120));
    let config = AgentProxyConfig::new(&long, &agent.socket, Vec::new());
    let err = AgentProxy::start(config, Arc::new(MemoryEventSink::new()))
        .await
        .expect_err("too long");
    assert!(
        matches!(err, StartError::SocketPathTooLong { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("shorter"), "{err}");
}
