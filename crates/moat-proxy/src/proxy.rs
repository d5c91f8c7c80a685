//! The proxy server: listener, proxy authentication, CONNECT and interception, plain HTTP
//! forwarding, and the per-request pipeline (authority check, policy, injection, upstream,
//! scrubbing, record).

use std::convert::Infallible;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::PoisonError;
use std::sync::RwLock;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use flate2::write::MultiGzDecoder;
use http::HeaderMap;
use http::HeaderName;
use http::HeaderValue;
use http::Method;
use http::Request;
use http::Response;
use http::StatusCode;
use http::Uri;
use http::Version;
use http::header;
use http::uri::PathAndQuery;
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use moat_core::Secret;
use moat_core::creds::InjectionRule;
use moat_core::egress::Decision;
use moat_core::egress::DenyReason;
use moat_core::egress::EgressPolicy;
use moat_core::egress::NetworkEventSink;
use moat_core::egress::NetworkRecord;
use moat_core::egress::RecordDecision;
use rustls::pki_types::DnsName;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::LazyConfigAcceptor;

use crate::answer;
use crate::body::Counting;
use crate::body::Decode;
use crate::body::PendingRecord;
use crate::body::ProxyBody;
use crate::body::ResponseBody;
use crate::body::empty;
use crate::body::redact_headers;
use crate::ca::CertificateAuthority;
use crate::guard::Guard;
use crate::inject;
use crate::inject::CompiledRules;
use crate::inject::CredentialSource;
use crate::inject::Injection;
use crate::inject::StaticCredentials;
use crate::scrub::Scrubber;
use crate::scrub::scrub_all;
use crate::scrub::scrub_headers;
use crate::upstream::Connector;
use crate::upstream::UpstreamError;
use crate::upstream::UpstreamSettings;
use crate::upstream::find_upstream_error;

mod ws_h2;

/// Bounds on what one client can make the proxy hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open client connections (tunnels included); further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Largest request head accepted (HTTP/1.1 buffer and HTTP/2 header list), in bytes.
    /// Larger heads are answered with `431`.
    pub max_header_bytes: usize,
    /// Time allowed for a client's TLS handshake inside a tunnel.
    pub handshake_timeout: Duration,
    /// Time allowed to receive a request head on an HTTP/1.1 connection, including the idle
    /// wait between keep-alive requests.
    pub header_read_timeout: Duration,
    /// Concurrent HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    /// An intercepted client session with no bytes in either direction for this long is
    /// closed: it is asked to finish gracefully and dropped if it has not within ten more
    /// seconds (so a response that sends nothing for this long is cut). WebSocket sessions over
    /// HTTP/1.1 are not affected; over HTTP/2 their bytes count as their connection's activity.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_header_bytes: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(120),
            max_concurrent_streams: 256,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// Everything the proxy needs to serve one run: its token, CA, policy, credentials and sink.
///
/// One proxy can serve several runs; the proxy token in `Proxy-Authorization` selects the run.
pub struct RunContext {
    token: Secret,
    ca: Arc<CertificateAuthority>,
    policy: EgressPolicy,
    credentials: Arc<dyn CredentialSource>,
    sink: Arc<dyn NetworkEventSink>,
    next_id: AtomicU64,
    compiled: std::sync::Mutex<Option<Arc<CompiledRules>>>,
    /// Cleared by [`Proxy::remove_run`]: open tunnels stop serving the run at once.
    active: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for RunContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunContext")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl RunContext {
    /// A run with a permissive policy and no credentials.
    pub fn new(
        token: Secret,
        ca: Arc<CertificateAuthority>,
        sink: Arc<dyn NetworkEventSink>,
    ) -> Self {
        Self {
            token,
            ca,
            policy: EgressPolicy::default(),
            credentials: Arc::new(StaticCredentials::default()),
            sink,
            next_id: AtomicU64::new(1),
            compiled: std::sync::Mutex::new(None),
            active: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Sets the network policy. Under `strict`, the hosts of the credentials are reachable
    /// too, as SPEC §1 promise 3 says.
    pub fn with_policy(mut self, policy: EgressPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets where credential rules come from.
    pub fn with_credentials(mut self, credentials: Arc<dyn CredentialSource>) -> Self {
        self.credentials = credentials;
        self
    }

    /// The run's CA.
    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }

    /// The current rules, compiled once per snapshot the credential source hands out.
    fn rules(&self) -> Arc<CompiledRules> {
        let rules = self.credentials.rules();
        let mut cache = self.compiled.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cache.as_ref()
            && Arc::ptr_eq(&c.rules, &rules)
        {
            return c.clone();
        }
        let compiled = Arc::new(CompiledRules::new(rules));
        *cache = Some(compiled.clone());
        compiled
    }

    fn next_id(&self) -> String {
        format!("req-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn decide_host(&self, rules: &[InjectionRule], host: &str, port: u16) -> Decision {
        match self.policy.decide_host(host, port) {
            Decision::Deny(_) if inject::covers(rules, host, port) => Decision::Allow,
            d => d,
        }
    }

    fn decide_request(
        &self,
        rules: &[InjectionRule],
        host: &str,
        port: u16,
        method: &str,
        path: &str,
    ) -> Decision {
        match self.policy.decide_request(host, port, method, path) {
            Decision::Deny(DenyReason::HostNotAllowed { .. })
                if inject::covers(rules, host, port) =>
            {
                Decision::Allow
            }
            d => d,
        }
    }
}

/// Generates a random proxy token (32 bytes, hex).
pub fn generate_token() -> Secret {
    let bytes: [u8; 32] = rand::random();
    let mut s = String::with_capacity(64);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Secret::new(s)
}

/// Why the proxy could not start or take a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}; pick another address or port")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The upstream TLS configuration could not be built (usually an invalid extra root).
    #[error("invalid upstream tls settings: {source}; check the extra root certificates")]
    UpstreamTls {
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// A run with the same token is already registered.
    #[error("a run with this proxy token is already registered; generate a fresh token per run")]
    DuplicateToken,
    /// A token is empty.
    #[error("the proxy token is empty; use `generate_token()`")]
    EmptyToken,
    /// The dedicated proxy thread or its runtime could not be started.
    #[error("cannot start the proxy thread: {source}; the system may be out of threads or memory")]
    Runtime {
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The dedicated proxy thread ended before reporting whether the proxy started.
    #[error("the proxy thread ended unexpectedly while starting; this is a bug in moat-proxy")]
    ThreadDied,
}

/// Configures and starts a [`Proxy`].
#[derive(Debug)]
pub struct ProxyBuilder {
    bind: SocketAddr,
    upstream: UpstreamSettings,
    limits: Limits,
    runs: Vec<RunContext>,
    unauthenticated: Option<SinkHandle>,
}

impl ProxyBuilder {
    /// A proxy that will listen on `bind` (port 0 picks a free port).
    pub fn new(bind: SocketAddr) -> Self {
        Self {
            bind,
            upstream: UpstreamSettings::default(),
            limits: Limits::default(),
            runs: Vec::new(),
            unauthenticated: None,
        }
    }

    /// Sets how upstream servers are reached.
    pub fn upstream(mut self, upstream: UpstreamSettings) -> Self {
        self.upstream = upstream;
        self
    }

    /// Sets resource limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Where requests without a valid proxy token are recorded (they belong to no run).
    /// Without a sink they are refused silently.
    pub fn unauthenticated_sink(mut self, sink: Arc<dyn NetworkEventSink>) -> Self {
        self.unauthenticated = Some(SinkHandle(sink));
        self
    }

    /// Adds a run to serve from the start.
    pub fn run(mut self, run: RunContext) -> Self {
        self.runs.push(run);
        self
    }

    /// Binds the listener and starts serving in the background on the current tokio runtime.
    pub async fn start(self) -> Result<Proxy, ProxyError> {
        let listener = TcpListener::bind(self.bind)
            .await
            .map_err(|source| ProxyError::Bind {
                addr: self.bind,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ProxyError::Bind {
            addr: self.bind,
            source,
        })?;
        let mut own: Vec<IpAddr> = if_addrs::get_if_addrs()
            .map(|ifs| ifs.into_iter().map(|i| i.ip()).collect())
            .unwrap_or_default();
        own.extend(self.upstream.own_addresses.iter().copied());
        own.push(local_addr.ip());
        let guard = Guard::new(own, self.upstream.allowed_destinations.clone());
        let tls_err = |source| ProxyError::UpstreamTls { source };
        let connector = Connector::new(&self.upstream, guard.clone(), &[b"h2", b"http/1.1"])
            .map_err(tls_err)?;
        let h1_connector =
            Connector::new(&self.upstream, guard, &[b"http/1.1"]).map_err(tls_err)?;
        let client = client_builder(&self.upstream).build(connector);
        let upgrade_client = client_builder(&self.upstream).build(h1_connector);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let max_connections = self
            .limits
            .max_connections
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let shared = Arc::new(Shared {
            runs: RwLock::new(Vec::new()),
            client,
            upgrade_client,
            response_timeout: self.upstream.response_timeout,
            limits: self.limits,
            shutdown: shutdown_rx,
            connections: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            unauthenticated: self.unauthenticated,
            unauthenticated_ids: AtomicU64::new(1),
        });
        for run in self.runs {
            shared.add_run(run)?;
        }
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Proxy {
            local_addr,
            shared,
            shutdown_tx,
            accept_task,
        })
    }
}

impl ProxyBuilder {
    /// Like [`ProxyBuilder::start`], but serves on a dedicated OS thread with its own
    /// single-threaded tokio runtime. This isolates the proxy from the caller's other work and
    /// avoids cross-thread wake-ups on the request path (lower latency); one core serves tens of
    /// thousands of requests per second. The thread ends after shutdown once every connection
    /// has finished (or after at most a minute).
    pub async fn start_dedicated(self) -> Result<Proxy, ProxyError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("moat-proxy".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(source) => {
                        let _ = tx.send(Err(ProxyError::Runtime { source }));
                        return;
                    }
                };
                rt.block_on(async move {
                    let proxy = match self.start().await {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let mut shutdown = proxy.shared.shutdown.clone();
                    let connections = proxy.shared.connections.clone();
                    let all = u32::try_from(proxy.shared.max_connections).unwrap_or(u32::MAX);
                    if tx.send(Ok(proxy)).is_err() {
                        return;
                    }
                    shutdown_signal(&mut shutdown).await;
                    let _ = tokio::time::timeout(
                        Duration::from_secs(60),
                        connections.acquire_many(all),
                    )
                    .await;
                });
            })
            .map_err(|source| ProxyError::Runtime { source })?;
        rx.await.unwrap_or(Err(ProxyError::ThreadDied))
    }
}

/// A running proxy. Dropping it stops accepting new clients and asks open connections to
/// finish their in-flight requests, without waiting for them; [`Proxy::shutdown`] also waits.
#[derive(Debug)]
pub struct Proxy {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
}

impl Proxy {
    /// The address the proxy listens on (with the actual port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The proxy URL a run's container uses: `http://moat:<token>@<addr>`.
    pub fn proxy_url(&self, token: &Secret) -> Secret {
        Secret::new(format!(
            "http://moat:{}@{}",
            token.expose(),
            self.local_addr
        ))
    }

    /// Starts serving another run.
    pub fn add_run(&self, run: RunContext) -> Result<(), ProxyError> {
        self.shared.add_run(run)
    }

    /// Stops serving the run with `token`: new clients are refused, and requests on its open
    /// tunnels are answered with `403` (`X-Moat-Blocked: run-ended`) without reaching the
    /// upstream. Requests already in flight finish. Returns whether a run was removed.
    pub fn remove_run(&self, token: &Secret) -> bool {
        let mut runs = self
            .shared
            .runs
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let before = runs.len();
        runs.retain(|r| {
            let matches = ct_eq(r.token.expose().as_bytes(), token.expose().as_bytes());
            if matches {
                r.active.store(false, Ordering::SeqCst);
            }
            !matches
        });
        runs.len() != before
    }

    /// Stops accepting, asks every connection to finish its in-flight requests, and waits up
    /// to `grace` for them.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown_tx.send(true);
        self.accept_task.abort();
        let all = u32::try_from(self.shared.max_connections).unwrap_or(u32::MAX);
        let connections = self.shared.connections.clone();
        drop(self);
        let _ = tokio::time::timeout(grace, connections.acquire_many(all)).await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        let _ = self.shutdown_tx.send(true);
    }
}

#[derive(Debug)]
struct Shared {
    runs: RwLock<Vec<Arc<RunContext>>>,
    client: Client<Connector, ProxyBody>,
    upgrade_client: Client<Connector, ProxyBody>,
    response_timeout: Duration,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
    connections: Arc<Semaphore>,
    max_connections: usize,
    unauthenticated: Option<SinkHandle>,
    unauthenticated_ids: AtomicU64,
}

/// A sink, shown in `Debug` output by name only.
struct SinkHandle(Arc<dyn NetworkEventSink>);

impl std::fmt::Debug for SinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetworkEventSink")
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

impl Shared {
    fn add_run(&self, run: RunContext) -> Result<(), ProxyError> {
        if run.token.is_empty() {
            return Err(ProxyError::EmptyToken);
        }
        let mut runs = self.runs.write().unwrap_or_else(PoisonError::into_inner);
        if runs
            .iter()
            .any(|r| ct_eq(r.token.expose().as_bytes(), run.token.expose().as_bytes()))
        {
            return Err(ProxyError::DuplicateToken);
        }
        runs.push(Arc::new(run));
        Ok(())
    }

    /// The run whose token is in `Proxy-Authorization: Basic base64(moat:<token>)`.
    fn authenticate(&self, headers: &HeaderMap) -> Option<Arc<RunContext>> {
        let value = headers.get(header::PROXY_AUTHORIZATION)?.to_str().ok()?;
        let (scheme, rest) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = inject::base64_decode(rest.trim())?;
        let (user, token) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        if user != "moat" {
            return None;
        }
        let runs = self.runs.read().unwrap_or_else(PoisonError::into_inner);
        let mut found = None;
        // Compare against every run so timing does not reveal which prefix matched.
        for run in runs.iter() {
            if ct_eq(run.token.expose().as_bytes(), token.as_bytes()) {
                found = Some(run.clone());
            }
        }
        found
    }
}

fn client_builder(settings: &UpstreamSettings) -> hyper_util::client::legacy::Builder {
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .http2_adaptive_window(true)
        .http2_keep_alive_interval(Some(Duration::from_secs(30)))
        .set_host(true);
    b
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok(permit) = shared.connections.clone().acquire_owned().await else {
            return;
        };
        let (stream, _peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                // Out of file descriptors and similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(serve_client(stream, shared, Arc::new(permit)));
    }
}

async fn serve_client(stream: TcpStream, shared: Arc<Shared>, permit: Arc<OwnedSemaphorePermit>) {
    let _ = stream.set_nodelay(true);
    let svc_shared = shared.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let shared = svc_shared.clone();
        let permit = permit.clone();
        async move { Ok::<_, Infallible>(handle_outer(shared, permit, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header_read_timeout)
        .max_buf_size(shared.limits.max_header_bytes.max(8192));
    let conn = builder
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let mut shutdown = shared.shutdown.clone();
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown_signal(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn handle_outer(
    shared: Arc<Shared>,
    permit: Arc<OwnedSemaphorePermit>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some(run) = shared.authenticate(req.headers()) else {
        let resp = answer::proxy_auth_required();
        if let Some(SinkHandle(sink)) = &shared.unauthenticated {
            let n = shared.unauthenticated_ids.fetch_add(1, Ordering::Relaxed);
            let url = req.uri().to_string();
            let host = req
                .uri()
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            sink.record(NetworkRecord {
                ts: Utc::now(),
                id: format!("unauthenticated-{n}"),
                method: req.method().as_str().to_owned(),
                url,
                host,
                status: Some(resp.status().as_u16()),
                duration_ms: 0.0,
                req_bytes: 0,
                resp_bytes: 0,
                grant: None,
                decision: RecordDecision::Denied,
                reason: Some("proxy-auth-required".into()),
                req_headers: redact_headers(req.headers(), &[], &[]),
                resp_headers: redact_headers(resp.headers(), &[], &[]),
            });
        }
        return resp;
    };
    let mut resp = if req.method() == Method::CONNECT {
        handle_connect(shared, run, permit, req)
    } else {
        handle_plain(shared, run, req).await
    };
    if resp.status() == StatusCode::BAD_REQUEST {
        // A client that sent something malformed gets no second chance on this connection.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A host and port taken from a CONNECT target or a URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Target {
    /// `host` or `host:port` as it appears in a URL (IPv6 bracketed, default port omitted).
    fn authority(&self, default_port: u16) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Parses a `host:port` authority into a validated, lower-case target. The port is required
/// unless `default_port` is given.
pub(crate) fn parse_authority(authority: &str, default_port: Option<u16>) -> Option<Target> {
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        h.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return None,
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u16>().ok().filter(|p| *p != 0)?
        }
        Some(_) => return None,
        None => default_port?,
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    if host.parse::<IpAddr>().is_err() && DnsName::try_from(host.as_str()).is_err() {
        return None;
    }
    Some(Target { host, port })
}

fn handle_connect(
    shared: Arc<Shared>,
    run: Arc<RunContext>,
    permit: Arc<OwnedSemaphorePermit>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let Some(target) = parse_authority(&raw, None) else {
        let resp = answer::error(
            StatusCode::BAD_REQUEST,
            "bad-connect-target",
            "the CONNECT target must be host:port",
        );
        return record_now(
            &run,
            start,
            "CONNECT",
            &raw,
            &raw,
            resp,
            RecordDecision::Denied,
        );
    };
    let compiled = run.rules();
    if let Decision::Deny(reason) = run.decide_host(&compiled.rules, &target.host, target.port) {
        let resp = deny_response(&reason);
        let url = format!("https://{}", target.authority(443));
        return record_now(
            &run,
            start,
            "CONNECT",
            &url,
            &target.host,
            resp,
            RecordDecision::Denied,
        );
    }
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => intercept(shared, run, target, upgraded, permit).await,
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    Response::new(empty())
}

/// Drives one pinned, intercepted connection until it ends, the proxy shuts down, or it has
/// been idle for `idle`; the last two ask it to finish its in-flight requests first. (A macro
/// rather than a generic function: the HTTP/1.1 and HTTP/2 connection types share no trait
/// for graceful shutdown, and a generic async function over them trips the compiler's `Send`
/// inference for the spawned task.)
macro_rules! serve_session {
    ($conn:ident, $shutdown:ident, $activity:ident, $idle:expr) => {{
        let idle = $idle;
        let mut shutdown = $shutdown;
        tokio::select! {
            _ = $conn.as_mut() => {}
            () = shutdown_signal(&mut shutdown) => {
                $conn.as_mut().graceful_shutdown();
                let _ = $conn.await;
            }
            () = $activity.idle_for(idle) => {
                // A silent peer may never acknowledge an HTTP/2 GOAWAY: bound the goodbye.
                $conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(idle.min(Duration::from_secs(10)), $conn).await;
            }
        }
    }};
}

async fn intercept(
    shared: Arc<Shared>,
    run: Arc<RunContext>,
    target: Target,
    upgraded: hyper::upgrade::Upgraded,
    permit: Arc<OwnedSemaphorePermit>,
) {
    let timeout = shared.limits.handshake_timeout;
    let acceptor =
        LazyConfigAcceptor::new(rustls::server::Acceptor::default(), TokioIo::new(upgraded));
    let start = match tokio::time::timeout(timeout, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, host = %target.host, "client hello rejected");
            return;
        }
        Err(_) => return,
    };
    if let Some(sni) = start.client_hello().server_name()
        && !sni.trim_end_matches('.').eq_ignore_ascii_case(&target.host)
    {
        let url = format!("https://{}", target.authority(443));
        let resp = answer::blocked(
            "sni-mismatch",
            &format!(
                "TLS server name `{sni}` does not match the CONNECT host `{}`",
                target.host
            ),
            "clients must send the same host in CONNECT and in TLS SNI",
        );
        let _ = record_now(
            &run,
            Instant::now(),
            "CONNECT",
            &url,
            &target.host,
            resp,
            RecordDecision::Denied,
        );
        return;
    }
    let config = match run.ca.server_config(&target.host).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot mint leaf");
            return;
        }
    };
    let tls = match tokio::time::timeout(timeout, start.into_stream(config)).await {
        Ok(Ok(tls)) => tls,
        outcome => {
            // Usually a client that does not trust the run CA: worth a record, since the
            // client's own error message rarely says why.
            let reason = if outcome.is_err() {
                "client-tls-timeout"
            } else {
                "client-tls-failed"
            };
            let mut record = new_record(
                &run,
                "CONNECT",
                &format!("https://{}", target.authority(443)),
                &target.host,
            );
            record.reason = Some(reason.to_owned());
            run.sink.record(record);
            return;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let authority = target.authority(443);
    let tunnel = Arc::new(Tunnel {
        shared: shared.clone(),
        run,
        uri_authority: http::uri::Authority::from_maybe_shared(Bytes::from(authority.clone())).ok(),
        authority,
        target,
        permit,
    });
    let svc = service_fn(move |req: Request<Incoming>| {
        let tunnel = tunnel.clone();
        async move { Ok::<_, Infallible>(tunnel.handle(req).await) }
    });
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: tls,
        activity: activity.clone(),
    });
    let shutdown = shared.shutdown.clone();
    let limits = &shared.limits;
    if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(limits.max_concurrent_streams)
            .keep_alive_interval(Some(Duration::from_secs(60)))
            .adaptive_window(true)
            // SETTINGS_ENABLE_CONNECT_PROTOCOL, for WebSocket over HTTP/2 (RFC 8441).
            .enable_connect_protocol();
        let conn = builder.serve_connection(io, svc);
        tokio::pin!(conn);
        serve_session!(conn, shutdown, activity, limits.idle_timeout);
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192));
        let conn = builder.serve_connection(io, svc).with_upgrades();
        tokio::pin!(conn);
        serve_session!(conn, shutdown, activity, limits.idle_timeout);
    }
}

/// Whether an intercepted session moved bytes lately. Marking it is a plain store, so the
/// request path reads no clock; the idle check samples it a few times per timeout.
struct Activity {
    moved: AtomicBool,
}

/// Response bodies up to this size with a known length are scrubbed whole.
const SMALL_BODY: usize = 64 * 1024;

/// Samples per idle timeout: a session is closed between `timeout` and `timeout * (1 + 1/N)`
/// after its last byte.
const IDLE_SAMPLES: u32 = 4;

impl Activity {
    fn new() -> Self {
        Self {
            moved: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        self.moved.store(true, Ordering::Relaxed);
    }

    /// Completes once no bytes have moved for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        let step = (timeout / IDLE_SAMPLES).max(Duration::from_millis(1));
        let mut quiet = Duration::ZERO;
        loop {
            tokio::time::sleep(step).await;
            if self.moved.swap(false, Ordering::Relaxed) {
                quiet = Duration::ZERO;
            } else {
                quiet += step;
                if quiet >= timeout.saturating_sub(step / 2) {
                    return;
                }
            }
        }
    }
}

/// An IO that reports activity on every successful read or write.
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Tracked<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        res
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Tracked<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let res = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(res, std::task::Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        res
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let res = std::pin::Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(res, std::task::Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// One intercepted tunnel: every request inside it goes to `target`.
struct Tunnel {
    shared: Arc<Shared>,
    run: Arc<RunContext>,
    target: Target,
    /// `target` as it appears in a URL, computed once per tunnel.
    authority: String,
    /// The same, parsed for upstream request URIs.
    uri_authority: Option<http::uri::Authority>,
    /// The client's connection slot, held by upgraded streams too.
    permit: Arc<OwnedSemaphorePermit>,
}

impl Tunnel {
    async fn handle(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        if ws_h2::is_extended_connect(&req) {
            return self.websocket_h2(req).await;
        }
        let start = Instant::now();
        let run = &self.run;
        let method = req.method().clone();
        let (path, mut record) = self.open_record(&req, method.as_str());
        let compiled = run.rules();
        let rules = &compiled.rules;
        if let Some((reason, resp)) = self.refusal(&req, rules, method.as_str()) {
            record.decision = RecordDecision::Denied;
            record.reason = Some(reason);
            return finish_now(run, record, start, &req, resp);
        }

        let upgrade = is_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers, upgrade);
        let covered = self.prepare_headers(&compiled, &mut parts.headers, &mut record);
        let secrets = &compiled.scrub_pairs;
        record.req_headers = redact_headers(&parts.headers, &compiled.headers, secrets);
        parts.uri = match self.upstream_uri(path, &mut record) {
            Ok(u) => u,
            Err(resp) => return finish_parts(run, record, start, *resp, None),
        };
        parts.version = Version::HTTP_11;
        let req_bytes = Arc::new(AtomicU64::new(0));
        let upstream_req =
            Request::from_parts(parts, Counting::new(body, req_bytes.clone()).boxed_unsync());
        let client = if upgrade {
            self.shared.client_for_upgrade()
        } else {
            &self.shared.client
        };
        let resp = match send(
            client,
            upstream_req,
            self.shared.response_timeout,
            &mut record,
        )
        .await
        {
            Ok(resp) => resp,
            Err(answer) => return finish_parts(run, record, start, answer, Some(req_bytes)),
        };
        let (mut rparts, rbody) = resp.into_parts();
        if upgrade && rparts.status == StatusCode::SWITCHING_PROTOCOLS {
            if covered {
                if unoffered_compression(&rparts.headers) {
                    let resp = answer::error(
                        StatusCode::BAD_GATEWAY,
                        "websocket-handshake-failed",
                        "the upstream enabled a WebSocket extension moat did not offer",
                    );
                    record.reason = Some("websocket-handshake-failed".into());
                    return finish_parts(run, record, start, resp, Some(req_bytes));
                }
                scrub_headers(secrets, &mut rparts.headers);
            }
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade =
                    hyper::upgrade::on(Response::from_parts(rparts.clone(), rbody));
                self.spawn_splice(client_upgrade, upstream_upgrade, covered, secrets);
            }
            return finish_parts(
                run,
                record,
                start,
                Response::from_parts(rparts, empty()),
                Some(req_bytes),
            );
        }
        let pending = PendingRecord {
            sink: run.sink.clone(),
            record,
            start,
            req_bytes: Some(req_bytes),
        };
        self.answer_client(
            pending,
            &compiled,
            covered,
            method == Method::HEAD,
            Response::from_parts(rparts, rbody),
        )
        .await
    }

    /// Joins an upgraded client connection to the upstream's, scrubbing what the upstream sends
    /// for credentialed hosts; the pair holds the client's connection slot until both close.
    fn spawn_splice(
        &self,
        client: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        covered: bool,
        secrets: &[crate::inject::ScrubPair],
    ) {
        let scrubber = covered.then(|| Scrubber::new(masks(secrets)));
        let permit = self.permit.clone();
        tokio::spawn(async move {
            splice(client, upstream, scrubber).await;
            drop(permit);
        });
    }

    /// What every request sent upstream gets, after hop-by-hop removal: no `Host` (the URI
    /// names the host), the credential injected (noted in `record`), and for hosts a grant
    /// covers, only encodings the scrubber reads and no WebSocket compression. Returns whether
    /// a grant covers the host.
    fn prepare_headers(
        &self,
        compiled: &CompiledRules,
        headers: &mut HeaderMap,
        record: &mut NetworkRecord,
    ) -> bool {
        let (host, port) = (&self.target.host, self.target.port);
        headers.remove(header::HOST);
        if let Injection::Injected(grant) = inject::apply(compiled, host, port, headers) {
            record.grant = Some(grant);
        }
        let covered = inject::covers(&compiled.rules, host, port);
        if covered {
            restrict_accept_encoding(headers);
            // Compressed WebSocket frames could hide a reflected credential from the scrubber.
            headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        }
        covered
    }

    /// The request's path (for the upstream URI) and its record, as `method`.
    fn open_record(&self, req: &Request<Incoming>, method: &str) -> (PathAndQuery, NetworkRecord) {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let url = format!("https://{}{path}", self.authority);
        let record = new_record(&self.run, method, &url, &self.target.host);
        (path, record)
    }

    /// `https://<tunnel authority><path>`, the URI the upstream is asked for; an invalid one
    /// is answered `400` and noted in `record`.
    fn upstream_uri(
        &self,
        path: PathAndQuery,
        record: &mut NetworkRecord,
    ) -> Result<Uri, Box<Response<ProxyBody>>> {
        let uri = self.uri_authority.as_ref().and_then(|authority| {
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(http::uri::Scheme::HTTPS);
            uri.authority = Some(authority.clone());
            uri.path_and_query = Some(path);
            Uri::from_parts(uri).ok()
        });
        uri.ok_or_else(|| {
            record.reason = Some("bad-request".into());
            Box::new(answer::error(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "invalid request target",
            ))
        })
    }

    /// The checks every inner request passes before anything reaches the upstream: the run is
    /// still active, the request names the tunnel's host, and policy allows `method` on its
    /// path. Returns the refusal's reason code and answer.
    fn refusal(
        &self,
        req: &Request<Incoming>,
        rules: &[InjectionRule],
        method: &str,
    ) -> Option<(String, Response<ProxyBody>)> {
        if !self.run.active.load(Ordering::SeqCst) {
            let resp = answer::blocked(
                "run-ended",
                "the run this tunnel belonged to has ended",
                "start a new run to make further requests",
            );
            return Some(("run-ended".into(), resp));
        }
        if let Err(what) = check_authority(req, &self.target, &self.authority) {
            let resp = answer::blocked(
                "authority-mismatch",
                &what,
                "the Host header and :authority must name the host given in CONNECT; \
                 moat refuses domain fronting",
            );
            return Some(("authority-mismatch".into(), resp));
        }
        let path = normalize_path(req.uri().path());
        let (host, port) = (&self.target.host, self.target.port);
        match self.run.decide_request(rules, host, port, method, &path) {
            Decision::Allow => None,
            Decision::Deny(reason) => Some((reason.code().into(), deny_response(&reason))),
        }
    }

    /// Hands an upstream answer to the client: hop-by-hop headers removed and, for credentialed
    /// hosts, real values scrubbed from headers and body (small bodies of known length whole,
    /// keeping a `Content-Length`; others streamed). The record is emitted when the body ends.
    async fn answer_client(
        &self,
        mut pending: PendingRecord,
        compiled: &CompiledRules,
        covered: bool,
        head_request: bool,
        resp: Response<Incoming>,
    ) -> Response<ProxyBody> {
        let (mut rparts, rbody) = resp.into_parts();
        let secrets = &compiled.scrub_pairs;
        let run = &self.run;
        strip_hop_by_hop(&mut rparts.headers, false);
        let mut scrub = None;
        let mut rbody = rbody.map_err(Into::into).boxed_unsync();
        if covered && !secrets.is_empty() {
            scrub_headers(secrets, &mut rparts.headers);
            let bodiless = head_request
                || rparts.status == StatusCode::NO_CONTENT
                || rparts.status == StatusCode::NOT_MODIFIED;
            if !bodiless {
                let decode = match content_encoding(&rparts.headers) {
                    Encoding::Identity => Some(Decode::Identity),
                    Encoding::Gzip => Some(Decode::Gzip(Box::new(MultiGzDecoder::new(Vec::new())))),
                    Encoding::Other => None,
                };
                let Some(decode) = decode else {
                    let resp = answer::error(
                        StatusCode::BAD_GATEWAY,
                        "unscrubbable-encoding",
                        "the upstream answered with a content encoding moat cannot inspect for \
                         leaked credentials",
                    );
                    pending.record.reason = Some("unscrubbable-encoding".into());
                    return finish_parts(
                        run,
                        pending.record,
                        pending.start,
                        resp,
                        pending.req_bytes,
                    );
                };
                if matches!(decode, Decode::Identity)
                    && rbody
                        .size_hint()
                        .exact()
                        .is_some_and(|n| n <= SMALL_BODY as u64)
                {
                    match self.small_body(rbody, secrets).await {
                        Ok((len, body)) => {
                            rparts
                                .headers
                                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                            rbody = body;
                        }
                        Err(answer) => {
                            pending.record.reason = answer
                                .headers()
                                .get(answer::ERROR_HEADER)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            return finish_parts(
                                run,
                                pending.record,
                                pending.start,
                                answer,
                                pending.req_bytes,
                            );
                        }
                    }
                } else {
                    rparts.headers.remove(header::CONTENT_ENCODING);
                    rparts.headers.remove(header::CONTENT_LENGTH);
                    scrub = Some((decode, Scrubber::new(secrets.clone())));
                }
            }
        }
        pending.record.status = Some(rparts.status.as_u16());
        pending.record.resp_headers = redact_headers(&rparts.headers, &compiled.headers, secrets);
        let body = ResponseBody::new(rbody, scrub, Some(pending));
        Response::from_parts(rparts, body.boxed_unsync())
    }
}

impl Tunnel {
    /// Reads a small response body whole and scrubs it (trailers too); returns its new length
    /// and the body to forward, or the answer to give when the upstream fails mid-body.
    async fn small_body(
        &self,
        body: ProxyBody,
        secrets: &[crate::inject::ScrubPair],
    ) -> Result<(usize, ProxyBody), Response<ProxyBody>> {
        let collected =
            match tokio::time::timeout(self.shared.response_timeout, body.collect()).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "upstream body failed");
                    return Err(answer::error(
                        StatusCode::BAD_GATEWAY,
                        "upstream-body-failed",
                        "the upstream connection failed while sending the response body",
                    ));
                }
                Err(_) => {
                    return Err(answer::error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream-timeout",
                        "the upstream did not finish the response body in time",
                    ));
                }
            };
        let mut trailers = collected.trailers().cloned();
        let data = collected.to_bytes();
        let data = scrub_all(secrets, &data).map_or(data, Bytes::from);
        let len = data.len();
        let body = crate::body::full(data);
        Ok(match trailers.as_mut() {
            None => (len, body),
            Some(t) => {
                scrub_headers(secrets, t);
                let t = trailers.take().map(Ok);
                (
                    len,
                    body.with_trailers(std::future::ready(t)).boxed_unsync(),
                )
            }
        })
    }
}

impl Shared {
    fn client_for_upgrade(&self) -> &Client<Connector, ProxyBody> {
        &self.upgrade_client
    }
}

async fn handle_plain(
    shared: Arc<Shared>,
    run: Arc<RunContext>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let uri = req.uri().clone();
    let method = req.method().as_str().to_owned();
    let target = match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(a)) => parse_authority(a.as_str(), Some(80)),
        _ => None,
    };
    let Some(target) = target else {
        let resp = answer::error(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "send absolute-form http:// requests, or CONNECT for https",
        );
        let url = uri.to_string();
        let host = uri.host().unwrap_or_default().to_owned();
        return record_now(
            &run,
            start,
            &method,
            &url,
            &host,
            resp,
            RecordDecision::Denied,
        );
    };
    let path = uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let url = format!("http://{}{path}", target.authority(80));
    let mut record = new_record(&run, &method, &url, &target.host);
    let compiled = run.rules();
    if let Decision::Deny(reason) = run.decide_request(
        &compiled.rules,
        &target.host,
        target.port,
        &method,
        &normalize_path(uri.path()),
    ) {
        let resp = deny_response(&reason);
        record.decision = RecordDecision::Denied;
        record.reason = Some(reason.code().into());
        return finish_now(&run, record, start, &req, resp);
    }
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    parts.headers.remove(header::HOST);
    record.req_headers = redact_headers(&parts.headers, &compiled.headers, &compiled.scrub_pairs);
    parts.version = Version::HTTP_11;
    let req_bytes = Arc::new(AtomicU64::new(0));
    let upstream_req =
        Request::from_parts(parts, Counting::new(body, req_bytes.clone()).boxed_unsync());
    let resp = match send(
        &shared.client,
        upstream_req,
        shared.response_timeout,
        &mut record,
    )
    .await
    {
        Ok(resp) => resp,
        Err(answer) => {
            return finish_parts(&run, record, start, answer, Some(req_bytes));
        }
    };
    let (mut rparts, rbody) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers, false);
    record.status = Some(rparts.status.as_u16());
    record.resp_headers = redact_headers(&rparts.headers, &compiled.headers, &compiled.scrub_pairs);
    let pending = PendingRecord {
        sink: run.sink.clone(),
        record,
        start,
        req_bytes: Some(req_bytes),
    };
    let body = ResponseBody::new(
        rbody.map_err(Into::into).boxed_unsync(),
        None,
        Some(pending),
    );
    Response::from_parts(rparts, body.boxed_unsync())
}

/// Sends `req` upstream. A failure becomes the client's answer (`502`/`504`, or `403` from the
/// destination guard) and is noted in `record`.
async fn send(
    client: &Client<Connector, ProxyBody>,
    req: Request<ProxyBody>,
    timeout: Duration,
    record: &mut NetworkRecord,
) -> Result<Response<Incoming>, Response<ProxyBody>> {
    let answer = match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) => return Ok(resp),
        Ok(Err(e)) => upstream_failure(&e),
        Err(_) => answer::error(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream-timeout",
            "the upstream did not answer in time",
        ),
    };
    record.reason = answer
        .headers()
        .get(answer::ERROR_HEADER)
        .or_else(|| answer.headers().get(answer::BLOCKED_HEADER))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if answer.status() == StatusCode::FORBIDDEN {
        record.decision = RecordDecision::Denied;
    }
    Err(answer)
}

fn upstream_failure(e: &hyper_util::client::legacy::Error) -> Response<ProxyBody> {
    match find_upstream_error(e) {
        Some(u @ UpstreamError::Blocked { .. }) => answer::blocked(
            u.code(),
            &u.to_string(),
            "internal addresses (loopback, link-local, private, this host's own) are refused \
             whatever moat.yaml allows; to reach a server there on purpose, name it with a \
             resolve override: MOAT_RESOLVE=host:port=ip:port, or `proxy.resolve` in \
             $MOAT_HOME/config.yaml",
        ),
        Some(u @ (UpstreamError::ConnectTimeout { .. } | UpstreamError::TlsTimeout { .. })) => {
            answer::error(StatusCode::GATEWAY_TIMEOUT, u.code(), &u.to_string())
        }
        Some(u) => answer::error(StatusCode::BAD_GATEWAY, u.code(), &u.to_string()),
        None => answer::error(
            StatusCode::BAD_GATEWAY,
            "upstream-failed",
            &format!("the upstream connection failed: {e}"),
        ),
    }
}

async fn shutdown_signal(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.is_ok();
}

/// Joins an upgraded client and upstream. With a scrubber, the upstream-to-client direction
/// replaces secrets by same-length masks, so WebSocket frame lengths stay valid (compression
/// extensions are not negotiated for credentialed hosts, so frames carry plain bytes).
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    scrubber: Option<Scrubber>,
) {
    let (Ok(c), Ok(u)) = tokio::join!(client, upstream) else {
        return;
    };
    let mut c = TokioIo::new(c);
    let mut u = TokioIo::new(u);
    let Some(mut scrubber) = scrubber else {
        let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
        return;
    };
    let (mut c_read, mut c_write) = tokio::io::split(c);
    let (mut u_read, mut u_write) = tokio::io::split(u);
    let up = async {
        let _ = tokio::io::copy(&mut c_read, &mut u_write).await;
        let _ = u_write.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match u_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let out = scrubber.push(Bytes::copy_from_slice(buf.get(..n).unwrap_or_default()));
            if c_write.write_all(&out).await.is_err() {
                return;
            }
        }
        let _ = c_write.write_all(&scrubber.finish()).await;
        let _ = c_write.shutdown().await;
    };
    tokio::join!(up, down);
}

/// The scrub pairs with each replacement padded or cut to the secret's length.
/// Whether a WebSocket answer from a credentialed host turned on an extension: moat never
/// offers one there, since compressed frames would hide a reflected credential from the
/// scrubber.
pub(crate) fn unoffered_compression(headers: &HeaderMap) -> bool {
    headers.contains_key(header::SEC_WEBSOCKET_EXTENSIONS)
}

fn masks(pairs: &[crate::inject::ScrubPair]) -> Arc<[crate::inject::ScrubPair]> {
    pairs
        .iter()
        .map(|(secret, replacement)| {
            let mut mask: Vec<u8> = replacement.iter().copied().take(secret.len()).collect();
            mask.resize(secret.len(), b'*');
            (secret.clone(), mask)
        })
        .collect()
}

fn deny_response(reason: &DenyReason) -> Response<ProxyBody> {
    answer::blocked(
        reason.code(),
        &reason.to_string(),
        &format!("to allow it, add to moat.yaml:\n{}", reason.suggestion()),
    )
}

/// The path as policy sees it: percent-encoded unreserved characters decoded, dot segments
/// removed and repeated slashes collapsed, so `/a/../admin` or `/%61dmin` cannot slip past a
/// rule written for `/admin`. The request is forwarded with its original path.
pub(crate) fn normalize_path(path: &str) -> String {
    let mut decoded = String::with_capacity(path.len());
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(h), Some(l)) = (hex_val(*h), hex_val(*l))
        {
            let c = h * 16 + l;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                decoded.push(char::from(c));
            } else {
                decoded.push('%');
                decoded.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                decoded.push(char::from(bytes[i + 2].to_ascii_uppercase()));
            }
            i += 3;
            continue;
        }
        if b == b'%' {
            // A stray `%` is spelled `%25` so that normalising twice changes nothing.
            decoded.push_str("%25");
            i += 1;
            continue;
        }
        decoded.push(char::from(b));
        i += 1;
    }
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for seg in &segments {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() || (decoded.ends_with('/') && !segments.is_empty()) {
        out.push('/');
    }
    out
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The inner request's `Host` and `:authority` must name the CONNECT target, whose URL form is
/// `authority`.
fn check_authority(
    req: &Request<Incoming>,
    target: &Target,
    authority: &str,
) -> Result<(), String> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err("the request has more than one Host header".into());
    }
    let names = [
        host_header.map(HeaderValue::as_bytes),
        req.uri().authority().map(|a| a.as_str().as_bytes()),
    ];
    for name in names.into_iter().flatten() {
        // The usual spelling matches byte for byte; anything else is parsed.
        if name.eq_ignore_ascii_case(authority.as_bytes()) {
            continue;
        }
        let name = String::from_utf8_lossy(name);
        match parse_authority(&name, Some(443)) {
            Some(t) if t == *target => {}
            _ => {
                return Err(format!(
                    "the request names `{name}` but the tunnel was opened to `{authority}`"
                ));
            }
        }
    }
    Ok(())
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Removes connection-specific headers; keeps `Upgrade`/`Connection: upgrade` for upgrades.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<String> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty() && t != "upgrade")
            .collect();
        for name in named {
            headers.remove(name.as_str());
        }
    }
    const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    for name in [
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    if headers
        .get(header::TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// For credentialed hosts, only ask for encodings the scrubber can read.
fn restrict_accept_encoding(headers: &mut HeaderMap) {
    let gzip_ok = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .any(|t| {
            let mut it = t.split(';');
            let name = it.next().unwrap_or_default().trim();
            let q_zero = it.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
            });
            name.eq_ignore_ascii_case("gzip") && !q_zero
        });
    if gzip_ok {
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
    } else {
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
}

enum Encoding {
    Identity,
    Gzip,
    Other,
}

fn content_encoding(headers: &HeaderMap) -> Encoding {
    let mut codings = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| {
            v.to_str()
                .map(|s| s.split(',').map(str::trim).collect::<Vec<_>>())
                .unwrap_or_else(|_| vec!["?"])
        })
        .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>();
    match codings.len() {
        0 => Encoding::Identity,
        1 if matches!(codings.pop().as_deref(), Some("gzip" | "x-gzip")) => Encoding::Gzip,
        _ => Encoding::Other,
    }
}

fn new_record(run: &RunContext, method: &str, url: &str, host: &str) -> NetworkRecord {
    NetworkRecord {
        ts: Utc::now(),
        id: run.next_id(),
        method: method.to_owned(),
        url: url.to_owned(),
        host: host.to_owned(),
        status: None,
        duration_ms: 0.0,
        req_bytes: 0,
        resp_bytes: 0,
        grant: None,
        decision: RecordDecision::Allowed,
        reason: None,
        req_headers: Default::default(),
        resp_headers: Default::default(),
    }
}

/// Records a proxy-generated answer to a request that never went upstream.
fn finish_now(
    run: &RunContext,
    mut record: NetworkRecord,
    start: Instant,
    req: &Request<Incoming>,
    resp: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let compiled = run.rules();
    record.req_headers = redact_headers(req.headers(), &compiled.headers, &compiled.scrub_pairs);
    finish_parts(run, record, start, resp, None)
}

fn finish_parts(
    run: &RunContext,
    mut record: NetworkRecord,
    start: Instant,
    resp: Response<ProxyBody>,
    req_bytes: Option<Arc<AtomicU64>>,
) -> Response<ProxyBody> {
    record.status = Some(resp.status().as_u16());
    let compiled = run.rules();
    record.resp_headers = redact_headers(resp.headers(), &compiled.headers, &compiled.scrub_pairs);
    let (parts, body) = resp.into_parts();
    let pending = PendingRecord {
        sink: run.sink.clone(),
        record,
        start,
        req_bytes,
    };
    Response::from_parts(
        parts,
        ResponseBody::new(body, None, Some(pending)).boxed_unsync(),
    )
}

fn record_now(
    run: &RunContext,
    start: Instant,
    method: &str,
    url: &str,
    host: &str,
    resp: Response<ProxyBody>,
    decision: RecordDecision,
) -> Response<ProxyBody> {
    let mut record = new_record(run, method, url, host);
    record.decision = decision;
    record.reason = resp
        .headers()
        .get(answer::BLOCKED_HEADER)
        .or_else(|| resp.headers().get(answer::ERROR_HEADER))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    finish_parts(run, record, start, resp, None)
}

/// Constant-time equality for tokens.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_parsing() {
        let t = |h: &str, p| {
            Some(Target {
                host: h.into(),
                port: p,
            })
        };
        assert_eq!(
            parse_authority("Example.COM:443", None),
            t("example.com", 443)
        );
        assert_eq!(
            parse_authority("example.com.:8443", None),
            t("example.com", 8443)
        );
        assert_eq!(parse_authority("[::1]:22", None), t("::1", 22));
        assert_eq!(parse_authority("1.2.3.4", Some(80)), t("1.2.3.4", 80));
        for bad in [
            "",
            "example.com",
            "example.com:",
            "example.com:0",
            "example.com:70000",
            "user@example.com:443",
            "exa mple.com:443",
            ":443",
            "[::1:443",
            "[zz]:443",
            "example.com:+443",
            "a..b:443",
        ] {
            assert_eq!(parse_authority(bad, None), None, "{bad:?}");
        }
    }

    #[test]
    fn paths_are_normalised_for_policy() {
        for (raw, want) in [
            ("/", "/"),
            ("", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/repos/../admin/x", "/admin/x"),
            ("/%61dmin", "/admin"),
            ("//admin///x", "/admin/x"),
            ("/./admin/./x", "/admin/x"),
            ("/../../admin", "/admin"),
            ("/a%2fb", "/a%2Fb"),
            ("/%2e%2e/admin", "/admin"),
            ("/%zz", "/%25zz"),
            ("/%", "/%25"),
        ] {
            assert_eq!(normalize_path(raw), want, "{raw:?}");
        }
    }

    mod props {
        use moat_core::egress::EgressPolicy;
        use moat_core::egress::HostRules;
        use moat_core::egress::PathRule;
        use moat_core::egress::PolicyMode;
        use moat_core::host::HostPattern;
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #[test]
            fn authority_parsing_never_panics_and_round_trips(s in "\\PC{0,40}") {
                if let Some(t) = parse_authority(&s, None) {
                    let again = parse_authority(&t.authority(0), None);
                    prop_assert_eq!(again, Some(t));
                }
            }

            #[test]
            fn normalised_paths_are_stable_and_have_no_dot_segments(s in "[/a.%2eE0-9]{0,30}") {
                let n = normalize_path(&s);
                prop_assert!(n.starts_with('/'));
                prop_assert!(!n.split('/').any(|seg| seg == ".." || seg == "."));
                prop_assert_eq!(normalize_path(&n), n.clone());
            }

            #[test]
            fn deny_rules_cannot_be_bypassed_by_path_tricks(prefix in "(/[a-z]{1,3}/\\.\\.)*", dots in "(/\\.)*", tail in "[a-z]{0,5}") {
                let policy = EgressPolicy {
                    mode: PolicyMode::Permissive,
                    allow: vec![HostRules {
                        pattern: HostPattern::parse("h.test").unwrap_or_else(|e| panic!("{e}")),
                        rules: vec![PathRule::parse("deny * /admin/**").unwrap_or_else(|e| panic!("{e}"))],
                    }],
                };
                let path = format!("{prefix}{dots}/%61dmin/{tail}");
                let decision = policy.decide_request("h.test", 443, "GET", &normalize_path(&path));
                prop_assert!(matches!(decision, Decision::Deny(_)), "{path} allowed");
            }

            #[test]
            fn policy_decisions_never_panic(method in "[A-Z]{0,8}", path in "\\PC{0,60}", host in "[a-z.]{0,20}", port: u16) {
                let policy = EgressPolicy {
                    mode: PolicyMode::Strict,
                    allow: vec![HostRules {
                        pattern: HostPattern::parse("*.test").unwrap_or_else(|e| panic!("{e}")),
                        rules: vec![
                            PathRule::parse("allow GET /**").unwrap_or_else(|e| panic!("{e}")),
                            PathRule::parse("deny * /a/*/b").unwrap_or_else(|e| panic!("{e}")),
                        ],
                    }],
                };
                let _ = policy.decide_request(&host, port, &method, &normalize_path(&path));
            }
        }
    }

    #[test]
    fn accept_encoding_is_restricted() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip;q=0.5, zstd"),
        );
        restrict_accept_encoding(&mut h);
        assert_eq!(h[header::ACCEPT_ENCODING], "gzip");
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip;q=0"),
        );
        restrict_accept_encoding(&mut h);
        assert_eq!(h[header::ACCEPT_ENCODING], "identity");
    }

    #[test]
    fn websocket_masks_keep_the_secret_length() {
        let pairs = [
            (zeroize::Zeroizing::new(b"SECRET".to_vec()), b"PH".to_vec()),
            (zeroize::Zeroizing::new(b"AB".to_vec()), b"LONGER".to_vec()),
        ];
        let m = masks(&pairs);
        assert_eq!(m[0].1, b"PH****");
        assert_eq!(m[1].1, b"LO");
    }

    #[test]
    fn token_comparison() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert_eq!(generate_token().expose().len(), 64);
    }
}
