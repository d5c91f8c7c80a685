//! The filtering agent proxy: a Unix socket that speaks the SSH agent protocol to the
//! container and forwards only what the run's grants allow to the user's agent.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::net::UnixStream;
use tokio::sync::Semaphore;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::task::JoinSet;

use crate::client::AgentClient;
use crate::client::AgentError;
use crate::event::Decision;
use crate::event::ListEvent;
use crate::event::RefusedEvent;
use crate::event::SignEvent;
use crate::event::SshEvent;
use crate::event::SshEventSink;
use crate::grants::SshGrant;
use crate::key::Fingerprint;
use crate::policy::Policy;
use crate::policy::PolicyOptions;
use crate::policy::Session;
use crate::protocol::Identity;
use crate::protocol::Mutation;
use crate::protocol::Request;
use crate::protocol::Response;
use crate::protocol::SessionBind;
use crate::protocol::SignRequest;
use crate::protocol::signature_algorithm;
use crate::wire::FrameError;
use crate::wire::MAX_MESSAGE_LEN;
use crate::wire::read_frame;
use crate::wire::write_frame;

/// After this many `SSH_AGENT_FAILURE` replies on one connection the proxy hangs up, so a
/// hostile client cannot flood the audit log through a single connection.
pub const MAX_FAILURES_PER_CONNECTION: usize = 16;

/// The longest socket path a Unix socket address holds: `sun_path` is 108 bytes on Linux and
/// 104 on macOS and the BSDs, including the terminating NUL.
const MAX_SOCKET_PATH: usize = if cfg!(target_os = "linux") { 107 } else { 103 };

/// Everything the proxy of one run needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentProxyConfig {
    /// Where to create the proxy socket. Must not exist yet; its directory should be private
    /// to the run.
    pub socket_path: PathBuf,
    /// Permission bits of the socket: `0o600`, or `0o660` when the container user is only in
    /// the owner's group. World bits are refused.
    pub socket_mode: u32,
    /// The user's agent socket (`SSH_AUTH_SOCK` as resolved by the caller).
    pub upstream: PathBuf,
    /// The run's SSH grants.
    pub grants: Vec<SshGrant>,
    /// Policy knobs.
    pub options: PolicyOptions,
    /// How long to wait for the user's agent (signing may wait for a confirmation prompt).
    pub upstream_timeout: Duration,
    /// Most simultaneous client connections; more are closed at once.
    pub max_connections: usize,
}

impl AgentProxyConfig {
    /// A configuration with mode 0600, a 60 s upstream timeout and 32 connections.
    pub fn new(
        socket_path: impl Into<PathBuf>,
        upstream: impl Into<PathBuf>,
        grants: Vec<SshGrant>,
    ) -> Self {
        Self {
            socket_path: socket_path.into(),
            socket_mode: 0o600,
            upstream: upstream.into(),
            grants,
            options: PolicyOptions::default(),
            upstream_timeout: Duration::from_secs(60),
            max_connections: 32,
        }
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The user's agent is missing, dead or not speaking the protocol.
    #[error(transparent)]
    Upstream(#[from] AgentError),
    /// Something already exists at the socket path.
    #[error("{} already exists; remove it or choose another socket path", path.display())]
    SocketExists {
        /// The socket path.
        path: PathBuf,
    },
    /// Binding the socket failed.
    #[error("cannot create the ssh agent socket {}: {source}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Setting the socket's permissions failed.
    #[error("cannot set permissions on {}: {source}", path.display())]
    Permissions {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The socket path does not fit in a Unix socket address.
    #[error("socket path {} is {len} bytes, longer than the {MAX_SOCKET_PATH} a unix socket allows; use a shorter run directory", path.display())]
    SocketPathTooLong {
        /// The socket path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// The requested mode is not a plain permission mode or gives access to everyone.
    #[error("socket mode {mode:#o} is not allowed; use 0o600 or 0o660")]
    InvalidMode {
        /// The mode asked for.
        mode: u32,
    },
}

/// A running proxy. Dropping it stops the proxy and removes the socket.
#[derive(Debug)]
pub struct AgentProxy {
    socket_path: PathBuf,
    missing_keys: Vec<Fingerprint>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl AgentProxy {
    /// Checks that the user's agent answers, creates the socket and starts serving.
    ///
    /// Must be called within a tokio runtime.
    pub async fn start(
        config: AgentProxyConfig,
        sink: Arc<dyn SshEventSink>,
    ) -> Result<Self, StartError> {
        if config.socket_mode & !0o770 != 0 {
            return Err(StartError::InvalidMode {
                mode: config.socket_mode,
            });
        }
        let len = config.socket_path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(StartError::SocketPathTooLong {
                path: config.socket_path,
                len,
            });
        }
        let mut probe = AgentClient::connect(&config.upstream, config.upstream_timeout).await?;
        let held: Vec<Fingerprint> = probe
            .list_identities()
            .await?
            .iter()
            .map(|id| id.key.fingerprint())
            .collect();
        drop(probe);
        let mut missing_keys: Vec<Fingerprint> = config
            .grants
            .iter()
            .map(|g| g.key.fingerprint.clone())
            .filter(|fp| !held.contains(fp))
            .collect();
        missing_keys.sort();
        missing_keys.dedup();

        let path = config.socket_path.clone();
        if std::fs::symlink_metadata(&path).is_ok() {
            return Err(StartError::SocketExists { path });
        }
        let listener = UnixListener::bind(&path).map_err(|source| StartError::Bind {
            path: path.clone(),
            source,
        })?;
        if let Err(source) =
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(config.socket_mode))
        {
            let _ = std::fs::remove_file(&path);
            return Err(StartError::Permissions { path, source });
        }

        let shared = Arc::new(Shared {
            policy: Policy::new(config.grants, config.options),
            upstream: config.upstream,
            upstream_timeout: config.upstream_timeout,
            sink,
            next_connection: AtomicU64::new(1),
        });
        let (stop, stopped) = oneshot::channel();
        let limit = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let task = tokio::spawn(accept_loop(listener, shared, limit, stopped));
        Ok(Self {
            socket_path: path,
            missing_keys,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The socket the container should use as `SSH_AUTH_SOCK`.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Granted keys the user's agent did not hold at start; signing with them will fail until
    /// they are added with `ssh-add`.
    pub fn missing_keys(&self) -> &[Fingerprint] {
        &self.missing_keys
    }

    /// Stops accepting, closes every client connection and removes the socket.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        remove_socket(&self.socket_path);
    }
}

impl Drop for AgentProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        remove_socket(&self.socket_path);
    }
}

struct Shared {
    policy: Policy,
    upstream: PathBuf,
    upstream_timeout: Duration,
    sink: Arc<dyn SshEventSink>,
    next_connection: AtomicU64,
}

fn remove_socket(path: &Path) {
    // Only remove what we created: a socket, never a file someone put there meanwhile.
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

async fn accept_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    mut stopped: oneshot::Receiver<()>,
) {
    // Dropping the set when the loop ends aborts every connection task.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Transient accept errors (e.g. out of file descriptors): back off briefly.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
                match Arc::clone(&limit).try_acquire_owned() {
                    Ok(permit) => {
                        let shared = Arc::clone(&shared);
                        connections.spawn(async move {
                            Connection::new(id, shared).serve(stream).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        refuse(&shared, id, "too_many_connections", "too many simultaneous agent connections");
                        drop(stream);
                    }
                }
            }
        }
    }
}

fn refuse(shared: &Shared, connection: u64, request: &str, reason: &str) {
    let event = SshEvent::Refused(RefusedEvent {
        connection,
        request: request.to_owned(),
        reason: reason.to_owned(),
    });
    // The request is refused whether or not the event could be recorded.
    let _ = shared.sink.record(&event);
}

struct Connection {
    id: u64,
    shared: Arc<Shared>,
    session: Session,
    upstream: Option<AgentClient>,
    failures: usize,
}

impl Connection {
    fn new(id: u64, shared: Arc<Shared>) -> Self {
        Self {
            id,
            shared,
            session: Session::default(),
            upstream: None,
            failures: 0,
        }
    }

    async fn serve(mut self, mut stream: UnixStream) {
        loop {
            let body = match read_frame(&mut stream, MAX_MESSAGE_LEN).await {
                Ok(Some(body)) => body,
                Ok(None) | Err(FrameError::Io { .. }) => return,
                Err(e @ FrameError::Truncated) => {
                    // The client hung up mid-message; there is nobody to answer.
                    self.refuse("malformed", &e.to_string());
                    return;
                }
                Err(e @ FrameError::TooLong { .. }) => {
                    self.refuse("malformed", &e.to_string());
                    // The stream cannot be resynchronised; say no once and hang up.
                    let _ = write_frame(&mut stream, &Response::Failure.encode()).await;
                    return;
                }
            };
            let reply = self.handle(&body).await;
            if write_frame(&mut stream, &reply).await.is_err() {
                return;
            }
            if reply == Response::Failure.encode() {
                self.failures += 1;
                if self.failures >= MAX_FAILURES_PER_CONNECTION {
                    // A real client gives up long before this; a hostile one must not fill
                    // the audit log through one connection.
                    self.refuse(
                        "too_many_failures",
                        "too many refused requests on one connection; closing it",
                    );
                    return;
                }
            }
        }
    }

    async fn handle(&mut self, body: &[u8]) -> Vec<u8> {
        let failure = Response::Failure.encode();
        let request = match Request::parse(body) {
            Ok(request) => request,
            Err(e) => {
                self.refuse("malformed", &e.to_string());
                return failure;
            }
        };
        match request {
            Request::RequestIdentities => self.list().await.unwrap_or(failure),
            Request::Sign(sign) => self.sign(body, &sign).await.unwrap_or(failure),
            Request::SessionBind(bind) => self.bind(body, &bind).await,
            Request::Extension { name } => {
                self.refuse(
                    &format!("extension:{name}"),
                    "agent extensions other than session-bind are not supported",
                );
                failure
            }
            Request::Mutation(mutation) => {
                self.refuse(
                    mutation_name(mutation),
                    "the moat agent proxy is read-only; manage keys in your own agent",
                );
                failure
            }
            Request::Unknown { number } => {
                self.refuse(
                    &format!("message:{number}"),
                    "unknown or obsolete agent message",
                );
                failure
            }
        }
    }

    async fn list(&mut self) -> Option<Vec<u8>> {
        let upstream = self
            .upstream_call(&crate::protocol::request_identities())
            .await;
        let identities = match upstream.map(|reply| Response::parse(&reply)) {
            Ok(Ok(Response::Identities(ids))) => ids,
            Ok(Ok(_)) => {
                return self.list_failed("the user's ssh agent refused to list keys".to_owned());
            }
            Ok(Err(e)) => {
                return self
                    .list_failed(format!("the user's ssh agent sent a malformed list: {e}"));
            }
            Err(e) => return self.list_failed(e.to_string()),
        };
        let total = identities.len();
        // The container sees the grant names instead of the user's comments (file paths,
        // user@host), which it has no need to know.
        let visible: Vec<Identity> = identities
            .into_iter()
            .filter_map(|id| {
                let names = self.shared.policy.grant_names(&id.key.fingerprint());
                (!names.is_empty()).then(|| Identity {
                    key: id.key,
                    comment: format!("moat {}", names.join(",")).into_bytes(),
                })
            })
            .collect();
        let event = SshEvent::List(ListEvent {
            connection: self.id,
            decision: Decision::Allowed,
            listed: visible.iter().map(|id| id.key.fingerprint()).collect(),
            hidden: total - visible.len(),
            reason: None,
        });
        self.shared.sink.record(&event).ok()?;
        Some(Response::Identities(visible).encode())
    }

    fn list_failed(&self, reason: String) -> Option<Vec<u8>> {
        let event = SshEvent::List(ListEvent {
            connection: self.id,
            decision: Decision::Denied,
            listed: Vec::new(),
            hidden: 0,
            reason: Some(reason),
        });
        let _ = self.shared.sink.record(&event);
        None
    }

    async fn sign(&mut self, body: &[u8], request: &SignRequest) -> Option<Vec<u8>> {
        let mut event = SignEvent {
            connection: self.id,
            decision: Decision::Denied,
            key: Fingerprint::of(&request.key),
            host: None,
            host_key: self.session.bound_host_key(),
            bound: self.session.is_bound(),
            flags: request.flags,
            user: crate::policy::userauth_user(&request.data),
            signature_algorithm: None,
            reason: None,
            denial: None,
        };
        let allowed = match self.shared.policy.authorize(&self.session, request) {
            Ok(allowed) => allowed,
            Err(denial) => {
                event.host = self.shared.policy.bound_host(&self.session);
                event.reason = Some(denial.to_string());
                event.denial = Some(denial.code());
                let _ = self.shared.sink.record(&SshEvent::Sign(event));
                return None;
            }
        };
        event.host = Some(allowed.host);
        // Forward the client's bytes unchanged, so flags (rsa-sha2-256/512) are preserved.
        let reply = match self.upstream_call(body).await {
            Ok(reply) => reply,
            Err(e) => {
                event.reason = Some(e.to_string());
                event.denial = Some("upstream_failed");
                let _ = self.shared.sink.record(&SshEvent::Sign(event));
                return None;
            }
        };
        match Response::parse(&reply) {
            Ok(Response::Signature(sig)) => {
                event.decision = Decision::Allowed;
                event.signature_algorithm = signature_algorithm(&sig).map(str::to_owned);
                // Fail closed: no audit record, no signature.
                self.shared.sink.record(&SshEvent::Sign(event)).ok()?;
                Some(reply)
            }
            _ => {
                event.reason = Some("the user's ssh agent refused to sign (locked, key removed or confirmation declined)".to_owned());
                event.denial = Some("upstream_failed");
                let _ = self.shared.sink.record(&SshEvent::Sign(event));
                None
            }
        }
    }

    async fn bind(&mut self, body: &[u8], bind: &SessionBind) -> Vec<u8> {
        if let Err(refusal) = self.shared.policy.bind(&mut self.session, bind) {
            self.refuse("session_bind", &refusal.to_string());
            return Response::Failure.encode();
        }
        // Also tell the user's agent, so destination constraints set with `ssh-add -h` keep
        // working. Agents without session binding answer FAILURE; our own check stands.
        let _ = self.upstream_call(body).await;
        Response::Success.encode()
    }

    async fn upstream_call(&mut self, body: &[u8]) -> Result<Vec<u8>, AgentError> {
        let mut client = match self.upstream.take() {
            Some(client) => client,
            None => {
                AgentClient::connect(&self.shared.upstream, self.shared.upstream_timeout).await?
            }
        };
        let reply = client.call(body).await?;
        // Keep the connection only after a complete exchange; on error it is dropped and the
        // next request reconnects.
        self.upstream = Some(client);
        Ok(reply)
    }

    fn refuse(&self, request: &str, reason: &str) {
        refuse(&self.shared, self.id, request, reason);
    }
}

fn mutation_name(mutation: Mutation) -> &'static str {
    match mutation {
        Mutation::AddIdentity => "add_identity",
        Mutation::RemoveIdentity => "remove_identity",
        Mutation::RemoveAllIdentities => "remove_all_identities",
        Mutation::Smartcard => "smartcard",
        Mutation::Lock => "lock",
        Mutation::Unlock => "unlock",
    }
}
