//! Helpers that drive the real OpenSSH tools (`ssh-agent`, `ssh-add`, `ssh-keygen`).

use std::path::Path;
use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use moat_ssh::AgentClient;
use moat_ssh::AgentProxy;
use moat_ssh::AgentProxyConfig;
use moat_ssh::PublicKeyBlob;
use moat_ssh::SshGrant;
use moat_ssh::event::MemoryEventSink;
use moat_ssh::protocol::SessionBind;
use moat_ssh::protocol::SignRequest;
use moat_ssh::wire::put_bool;
use moat_ssh::wire::put_string;
use tokio::process::Child;
use tokio::process::Command;

pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);

/// A real `ssh-agent -D` on a socket in a temporary directory; killed on drop.
pub(crate) struct RealAgent {
    pub(crate) socket: PathBuf,
    _child: Child,
}

impl RealAgent {
    pub(crate) async fn start(dir: &Path, name: &str) -> Self {
        let socket = dir.join(name);
        let child = Command::new("/usr/bin/ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("/usr/bin/ssh-agent must be installed to run these tests");
        let deadline = Instant::now() + TIMEOUT;
        while AgentClient::connect(&socket, TIMEOUT).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "ssh-agent did not create {}",
                socket.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            socket,
            _child: child,
        }
    }

    pub(crate) async fn add(&self, key: &KeyFile) {
        let out = ssh_add(&self.socket, &[key.private.as_os_str()]).await;
        assert!(
            out.status.success(),
            "ssh-add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub(crate) async fn client(&self) -> AgentClient {
        AgentClient::connect(&self.socket, TIMEOUT)
            .await
            .expect("connect to ssh-agent")
    }
}

/// A key pair written by `ssh-keygen`.
pub(crate) struct KeyFile {
    pub(crate) private: PathBuf,
    pub(crate) public: PublicKeyBlob,
}

impl KeyFile {
    /// `kind` is an `ssh-keygen -t` type, or `ecdsa384` / `ecdsa521` for those curves.
    pub(crate) async fn generate(dir: &Path, name: &str, kind: &str) -> Self {
        let private = dir.join(name);
        let mut cmd = Command::new("/usr/bin/ssh-keygen");
        cmd.args(["-q", "-N", "", "-C", name]);
        let type_args: &[&str] = match kind {
            "rsa" => &["-t", "rsa", "-b", "2048"],
            "ecdsa384" => &["-t", "ecdsa", "-b", "384"],
            "ecdsa521" => &["-t", "ecdsa", "-b", "521"],
            other => &["-t", other],
        };
        cmd.args(type_args);
        let out = cmd
            .arg("-f")
            .arg(&private)
            .output()
            .await
            .expect("/usr/bin/ssh-keygen must be installed");
        assert!(
            out.status.success(),
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(private.with_extension("pub")).expect("read .pub");
        let public = PublicKeyBlob::from_openssh(&text).expect("parse .pub");
        Self { private, public }
    }

    pub(crate) fn openssh(&self) -> String {
        self.public.to_openssh()
    }
}

pub(crate) async fn ssh_add(socket: &Path, args: &[&std::ffi::OsStr]) -> Output {
    let run = Command::new("/usr/bin/ssh-add")
        .args(args)
        .env("SSH_AUTH_SOCK", socket)
        .env_remove("SSH_ASKPASS")
        .env_remove("DISPLAY")
        .stdin(std::process::Stdio::null())
        .output();
    tokio::time::timeout(TIMEOUT, run)
        .await
        .expect("ssh-add timed out")
        .expect("/usr/bin/ssh-add must be installed")
}

/// Signs `session_id` with a host key held by `host_agent`, as an SSH server does during key
/// exchange, and returns the session-bind request body a client would send.
pub(crate) async fn session_bind(
    host_agent: &RealAgent,
    host_key: &KeyFile,
    session_id: &[u8],
    forwarding: bool,
) -> Vec<u8> {
    session_bind_with_flags(host_agent, host_key, session_id, forwarding, 0).await
}

/// Like [`session_bind`], with signature flags for RSA host keys (`ssh-rsa` SHA-1 when 0).
pub(crate) async fn session_bind_with_flags(
    host_agent: &RealAgent,
    host_key: &KeyFile,
    session_id: &[u8],
    forwarding: bool,
    flags: u32,
) -> Vec<u8> {
    let mut client = host_agent.client().await;
    let signature = client
        .sign(&SignRequest {
            key: host_key.public.as_bytes().to_vec(),
            data: session_id.to_vec(),
            flags,
        })
        .await
        .expect("host key signs the session id");
    SessionBind {
        host_key: host_key.public.as_bytes().to_vec(),
        session_id: session_id.to_vec(),
        signature,
        is_forwarding: forwarding,
    }
    .encode()
}

/// The data an SSH client signs for publickey user authentication (RFC 4252 §7).
pub(crate) fn userauth(session_id: &[u8], key: &PublicKeyBlob, algorithm: &str) -> Vec<u8> {
    let mut data = Vec::new();
    put_string(&mut data, session_id);
    data.push(50);
    put_string(&mut data, b"git");
    put_string(&mut data, b"ssh-connection");
    put_string(&mut data, b"publickey");
    put_bool(&mut data, true);
    put_string(&mut data, algorithm.as_bytes());
    put_string(&mut data, key.as_bytes());
    data
}

pub(crate) fn random_session_id(tag: u8) -> Vec<u8> {
    // Distinct per test and per call; uniqueness is all that matters here.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut id = nanos.to_be_bytes().to_vec();
    id.push(tag);
    id.resize(32, tag);
    id
}

pub(crate) async fn start_proxy(
    dir: &Path,
    upstream: &Path,
    grants: Vec<SshGrant>,
) -> (AgentProxy, Arc<MemoryEventSink>) {
    let sink = Arc::new(MemoryEventSink::new());
    let config = AgentProxyConfig::new(dir.join("proxy.sock"), upstream, grants);
    let proxy = AgentProxy::start(config, sink.clone())
        .await
        .expect("proxy starts");
    (proxy, sink)
}
