//! End to end with the real OpenSSH client: `ssh` uses the proxy as its agent and logs in to a
//! local SSH server (russh; this machine has no `sshd`). The client binds its session to the
//! server's host key by itself, so this shows the binding works with a stock client, not only
//! with hand-built messages.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use moat_ssh::KnownHosts;
use moat_ssh::PublicKeyBlob;
use moat_ssh::SshEvent;
use moat_ssh::event::Decision;
use moat_ssh::event::SignEvent;
use moat_ssh::grants::KeySelector;
use moat_ssh::grants::build_grant;
use russh::ChannelId;
use russh::server::Auth;
use russh::server::Msg;
use russh::server::Session;
use tokio::net::TcpListener;
use tokio::process::Command;

use crate::support::KeyFile;
use crate::support::RealAgent;
use crate::support::TIMEOUT;
use crate::support::start_proxy;

/// A minimal SSH server: one host key, one authorized user key, answers any command with
/// `ok` and exit status 0.
struct TestServer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Handler {
    authorized: PublicKeyBlob,
}

impl russh::server::Handler for Handler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let offered = key
            .public_key
            .to_bytes()
            .map_err(|e| russh::Error::from(russh::keys::Error::from(e)))?;
        Ok(if offered == self.authorized.as_bytes() {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn channel_open_session(
        &mut self,
        _channel: russh::Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        session.data(channel, &b"ok\n"[..])?;
        session.exit_status_request(channel, 0)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

async fn start_server(host_key: &Path, authorized: PublicKeyBlob) -> TestServer {
    let config = Arc::new(russh::server::Config {
        keys: vec![russh::keys::load_secret_key(host_key, None).expect("load host key")],
        auth_rejection_time: Duration::from_millis(10),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: Some(TIMEOUT),
        ..Default::default()
    });
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let config = Arc::clone(&config);
            let handler = Handler {
                authorized: authorized.clone(),
            };
            tokio::spawn(async move {
                if let Ok(session) = russh::server::run_stream(config, stream, handler).await {
                    let _ = session.await;
                }
            });
        }
    });
    TestServer { port, task }
}

/// Runs `ssh` with the proxy as its only agent and nothing else: no config file, no default
/// identity files, strict host key checking against `known_hosts`.
async fn ssh(
    dir: &Path,
    agent: &Path,
    known_hosts: &Path,
    alias: &str,
    port: u16,
) -> std::process::Output {
    let run = Command::new("/usr/bin/ssh")
        .args(["-F", "/dev/null", "-T", "-p", &port.to_string()])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "UpdateHostKeys=no",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            &format!("HostKeyAlias={alias}"),
        ])
        .arg("-o")
        .arg(format!("IdentityAgent={}", agent.display()))
        .arg("-o")
        .arg(format!(
            "IdentityFile={}",
            dir.join("no-such-identity").display()
        ))
        .args([
            "-o",
            "PreferredAuthentications=publickey",
            "-o",
            "ControlPath=none",
        ])
        .args(["-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR"])
        .args(["git@127.0.0.1", "true"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(TIMEOUT, run)
        .await
        .expect("ssh timed out")
        .expect("/usr/bin/ssh must be installed")
}

fn signs(events: &[SshEvent]) -> Vec<SignEvent> {
    events
        .iter()
        .filter_map(|e| match e {
            SshEvent::Sign(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn openssh_client_logs_in_only_to_the_granted_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let user_agent = RealAgent::start(dir.path(), "user-agent.sock").await;
    let user = KeyFile::generate(dir.path(), "user_rsa", "rsa").await;
    user_agent.add(&user).await;
    let github_host = KeyFile::generate(dir.path(), "github_host", "ed25519").await;
    let other_host = KeyFile::generate(dir.path(), "other_host", "ed25519").await;

    // Both servers would accept the user's key; only github.test is granted.
    let github = start_server(&github_host.private, user.public.clone()).await;
    let other = start_server(&other_host.private, user.public.clone()).await;

    let known_text = format!(
        "github.test {}\nother.test {}\n",
        github_host.openssh(),
        other_host.openssh()
    );
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, &known_text).expect("write known_hosts");
    let identities = user_agent
        .client()
        .await
        .list_identities()
        .await
        .expect("list");
    let selector = KeySelector::Fingerprint(user.public.fingerprint());
    let grant = build_grant(
        "github.test".parse().expect("host"),
        &identities,
        Some(&selector),
        &KnownHosts::parse(&known_text),
    )
    .expect("grant");
    let (proxy, sink) = start_proxy(dir.path(), &user_agent.socket, vec![grant]).await;

    let out = ssh(
        dir.path(),
        proxy.socket_path(),
        &known_hosts,
        "github.test",
        github.port,
    )
    .await;
    assert!(
        out.status.success(),
        "ssh to the granted host failed: {}\nevents: {:?}",
        String::from_utf8_lossy(&out.stderr),
        sink.events()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    let allowed = signs(&sink.events());
    let [sign] = allowed.as_slice() else {
        panic!("one sign request expected: {allowed:?}")
    };
    assert_eq!(sign.decision, Decision::Allowed);
    assert!(sign.bound, "the stock client bound its session");
    assert_eq!(
        sign.host.as_ref().map(ToString::to_string).as_deref(),
        Some("github.test")
    );
    assert_eq!(sign.host_key, Some(github_host.public.fingerprint()));
    // OpenSSH asks for an RSA SHA-2 signature; the flag and the algorithm survive the proxy.
    assert_ne!(sign.flags, 0);
    assert!(
        sign.signature_algorithm
            .as_deref()
            .is_some_and(|a| a.starts_with("rsa-sha2-")),
        "{sign:?}"
    );

    let out = ssh(
        dir.path(),
        proxy.socket_path(),
        &known_hosts,
        "other.test",
        other.port,
    )
    .await;
    assert!(!out.status.success(), "ssh to an ungranted host must fail");
    let events = sink.events();
    let denied: Vec<SignEvent> = signs(&events)
        .into_iter()
        .filter(|s| s.decision == Decision::Denied)
        .collect();
    assert!(
        !denied.is_empty(),
        "the refused signature is recorded: {events:?}"
    );
    assert!(
        denied
            .iter()
            .all(|s| s.bound && s.host_key == Some(other_host.public.fingerprint())),
        "{denied:?}"
    );
    proxy.shutdown().await;
}
