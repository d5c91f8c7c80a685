//! End to end with the real OpenSSH client: `ssh` uses the proxy as its agent and logs in to a
//! local SSH server (russh; this machine has no `sshd`). The client binds its session to the
//! server's host key by itself, so this shows the binding works with a stock client, not only
//! with hand-built messages.

use std::path::Path;
use std::path::PathBuf;
use std::process::Stdio;
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
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::process::Command;

use crate::support::KeyFile;
use crate::support::RealAgent;
use crate::support::TIMEOUT;
use crate::support::start_proxy;

/// A minimal SSH server: one host key, one authorized user key. `git-receive-pack` runs the
/// real git against the server's bare repository; any other command answers `ok`, exit 0.
struct TestServer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Handler {
    authorized: PublicKeyBlob,
    repo: Option<PathBuf>,
    git_stdin: Option<tokio::process::ChildStdin>,
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

    async fn data(
        &mut self,
        _channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(stdin) = &mut self.git_stdin {
            stdin.write_all(data).await.map_err(russh::Error::from)?;
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Closing git's stdin tells it the client has sent everything.
        self.git_stdin = None;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let (Some(repo), true) = (&self.repo, data.starts_with(b"git-receive-pack ")) {
            let mut child = Command::new("git-receive-pack")
                .arg(repo)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(russh::Error::from)?;
            self.git_stdin = child.stdin.take();
            let mut stdout = child.stdout.take().ok_or(russh::Error::Disconnect)?;
            let handle = session.handle();
            tokio::spawn(async move {
                let mut buf = vec![0_u8; 32 * 1024];
                while let Ok(n @ 1..) = stdout.read(&mut buf).await {
                    if handle.data(channel, buf[..n].to_vec()).await.is_err() {
                        return;
                    }
                }
                let code = child.wait().await.ok().and_then(|s| s.code()).unwrap_or(1);
                let _ = handle
                    .exit_status_request(channel, u32::try_from(code).unwrap_or(1))
                    .await;
                let _ = handle.eof(channel).await;
                let _ = handle.close(channel).await;
            });
            session.channel_success(channel)?;
            return Ok(());
        }
        session.channel_success(channel)?;
        session.data(channel, &b"ok\n"[..])?;
        session.exit_status_request(channel, 0)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

async fn start_server(host_key: &Path, authorized: PublicKeyBlob) -> TestServer {
    start_server_with_repo(host_key, authorized, None).await
}

async fn start_server_with_repo(
    host_key: &Path,
    authorized: PublicKeyBlob,
    repo: Option<PathBuf>,
) -> TestServer {
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
                repo: repo.clone(),
                git_stdin: None,
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

/// `ssh` options that use the proxy as the only agent and nothing else: no config file, no
/// default identity files, strict host key checking against `known_hosts` under `alias`.
fn ssh_options(dir: &Path, agent: &Path, known_hosts: &Path, alias: &str) -> Vec<String> {
    let mut args: Vec<String> = ["-F", "/dev/null", "-T"].map(String::from).to_vec();
    for option in [
        "BatchMode=yes".to_owned(),
        "StrictHostKeyChecking=yes".to_owned(),
        "UpdateHostKeys=no".to_owned(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "GlobalKnownHostsFile=/dev/null".to_owned(),
        format!("HostKeyAlias={alias}"),
        format!("IdentityAgent={}", agent.display()),
        format!("IdentityFile={}", dir.join("no-such-identity").display()),
        "PreferredAuthentications=publickey".to_owned(),
        "ControlPath=none".to_owned(),
        "ConnectTimeout=20".to_owned(),
        "LogLevel=ERROR".to_owned(),
    ] {
        args.push("-o".to_owned());
        args.push(option);
    }
    args
}

/// Runs `ssh -p PORT git@127.0.0.1 true` with [`ssh_options`].
async fn ssh(
    dir: &Path,
    agent: &Path,
    known_hosts: &Path,
    alias: &str,
    port: u16,
) -> std::process::Output {
    let run = Command::new("/usr/bin/ssh")
        .args(ssh_options(dir, agent, known_hosts, alias))
        .args(["-p", &port.to_string(), "git@127.0.0.1", "true"])
        .stdin(Stdio::null())
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
    assert_eq!(sign.user.as_deref(), Some("git"));
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

/// Runs git with a clean configuration in `dir`.
async fn git(dir: &Path, args: &[&str], ssh_command: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .args([
            "-c",
            "user.name=moat",
            "-c",
            "user.email=moat@example.invalid",
        ])
        .args(["-c", "init.defaultBranch=main", "-c", "protocol.version=0"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(command) = ssh_command {
        cmd.env("GIT_SSH_COMMAND", command)
            .env("GIT_SSH_VARIANT", "ssh");
    }
    tokio::time::timeout(TIMEOUT, cmd.output())
        .await
        .expect("git timed out")
        .expect("git must be installed")
}

#[tokio::test]
async fn git_push_over_ssh_reaches_only_the_granted_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let user_agent = RealAgent::start(d, "user-agent.sock").await;
    let user = KeyFile::generate(d, "user_ed25519", "ed25519").await;
    user_agent.add(&user).await;
    let github_host = KeyFile::generate(d, "github_host", "ed25519").await;
    let other_host = KeyFile::generate(d, "other_host", "ed25519").await;

    for repo in ["github.git", "other.git", "work"] {
        let bare = if repo == "work" { "--quiet" } else { "--bare" };
        let out = git(d, &["init", "--quiet", bare, repo], None).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let work = d.join("work");
    let out = git(
        &work,
        &["commit", "--quiet", "--allow-empty", "-m", "agent's work"],
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = git(&work, &["rev-parse", "HEAD"], None).await;
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();

    let github = start_server_with_repo(
        &github_host.private,
        user.public.clone(),
        Some(d.join("github.git")),
    )
    .await;
    let other = start_server_with_repo(
        &other_host.private,
        user.public.clone(),
        Some(d.join("other.git")),
    )
    .await;
    let known_text = format!(
        "github.test {}\nother.test {}\n",
        github_host.openssh(),
        other_host.openssh()
    );
    let known_hosts = d.join("known_hosts");
    std::fs::write(&known_hosts, &known_text).expect("write known_hosts");
    let identities = user_agent
        .client()
        .await
        .list_identities()
        .await
        .expect("list");
    let grant = build_grant(
        "github.test".parse().expect("host"),
        &identities,
        None,
        &KnownHosts::parse(&known_text),
    )
    .expect("grant");
    let (proxy, sink) = start_proxy(d, &user_agent.socket, vec![grant]).await;

    let push = |alias: &'static str, port: u16, repo: &'static str| {
        let command = format!(
            "/usr/bin/ssh {}",
            ssh_options(d, proxy.socket_path(), &known_hosts, alias).join(" ")
        );
        let work = work.clone();
        async move {
            let url = format!("ssh://git@127.0.0.1:{port}/{repo}");
            git(
                &work,
                &["push", "--quiet", &url, "HEAD:refs/heads/main"],
                Some(&command),
            )
            .await
        }
    };
    let out = push("github.test", github.port, "github.git").await;
    assert!(
        out.status.success(),
        "git push to the granted host failed: {}\nevents: {:?}",
        String::from_utf8_lossy(&out.stderr),
        sink.events()
    );
    let pushed = git(
        &d.join("github.git"),
        &["rev-parse", "refs/heads/main"],
        None,
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&pushed.stdout).trim(),
        head,
        "the commit arrived"
    );

    let out = push("other.test", other.port, "other.git").await;
    assert!(
        !out.status.success(),
        "git push to an ungranted host must fail"
    );
    let absent = git(
        &d.join("other.git"),
        &["rev-parse", "--verify", "--quiet", "refs/heads/main"],
        None,
    )
    .await;
    assert!(
        !absent.status.success(),
        "nothing arrived at the ungranted host"
    );
    let decisions: Vec<(Decision, Option<String>)> = signs(&sink.events())
        .into_iter()
        .map(|s| (s.decision, s.host.map(|h| h.to_string())))
        .collect();
    assert_eq!(
        decisions.first(),
        Some(&(Decision::Allowed, Some("github.test".to_owned()))),
        "{decisions:?}"
    );
    assert!(
        decisions
            .iter()
            .skip(1)
            .all(|(d, _)| *d == Decision::Denied),
        "{decisions:?}"
    );
    proxy.shutdown().await;
}
