//! Local upstreams, clients and a proxy harness. Everything binds to 127.0.0.1.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http::Response;
use http::StatusCode;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use moat_core::Secret;
use moat_core::creds::InjectionFormat;
use moat_core::creds::InjectionRule;
use moat_core::egress::EgressPolicy;
use moat_core::egress::NetworkEventSink;
use moat_core::egress::NetworkRecord;
use moat_core::host::HostPattern;
use moat_proxy::CertificateAuthority;
use moat_proxy::Proxy;
use moat_proxy::ProxyBuilder;
use moat_proxy::RunContext;
use moat_proxy::StaticCredentials;
use moat_proxy::UpstreamSettings;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::Notify;

pub(crate) const API: &str = "api.example.test";
pub(crate) const OTHER: &str = "other.example.test";
pub(crate) const REAL: &str = "ghp_REALsecretVALUE0123456789";
pub(crate) const PLACEHOLDER: &str = "ghp_PLACEHOLDERvalue000000000";
pub(crate) const T: Duration = Duration::from_secs(30);

pub(crate) fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Collects records in memory.
#[derive(Default)]
pub(crate) struct MemorySink(pub Mutex<Vec<NetworkRecord>>);

impl NetworkEventSink for MemorySink {
    fn record(&self, record: NetworkRecord) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
    }
}

impl MemorySink {
    pub(crate) fn all(&self) -> Vec<NetworkRecord> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until a record with `url` appears (records are emitted when bodies end).
    pub(crate) async fn wait_for(&self, url: &str) -> NetworkRecord {
        for _ in 0..300 {
            if let Some(r) = self.all().into_iter().find(|r| r.url == url) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "no record for {url}; have {:?}",
            self.all().iter().map(|r| &r.url).collect::<Vec<_>>()
        );
    }
}

/// A private CA for test upstreams.
pub(crate) struct TestCa {
    pub(crate) cert: CertificateDer<'static>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub(crate) fn new() -> Self {
        let key = ok(rcgen::KeyPair::generate());
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test upstream ca");
        let cert = ok(params.self_signed(&key));
        Self {
            cert: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    pub(crate) fn server_config(
        &self,
        names: &[&str],
        alpn: &[&[u8]],
    ) -> Arc<rustls::ServerConfig> {
        let key = ok(rcgen::KeyPair::generate());
        let params = ok(rcgen::CertificateParams::new(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        ));
        let cert = ok(params.signed_by(&key, &self.issuer));
        let config = ok(rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions())
        .with_no_client_auth();
        let mut config = ok(config.with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        ));
        config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Arc::new(config)
    }
}

/// Shared state of a test upstream.
#[derive(Default)]
pub(crate) struct UpstreamState {
    pub(crate) hits: AtomicU64,
    pub(crate) produced: AtomicU64,
    pub(crate) release: Notify,
    pub(crate) last_version: Mutex<Option<http::Version>>,
    pub(crate) last_headers: Mutex<http::HeaderMap>,
}

impl UpstreamState {
    /// The `authorization` header of the last request, as the upstream saw it.
    pub(crate) fn seen_auth(&self) -> Option<String> {
        self.last_headers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get("authorization")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
}

/// Starts a TLS upstream offering `alpn`, valid for `names`.
pub(crate) async fn tls_upstream(
    ca: &TestCa,
    names: &[&str],
    alpn: &[&[u8]],
) -> (SocketAddr, Arc<UpstreamState>) {
    let config = ca.server_config(names, alpn);
    let listener = ok(TcpListener::bind("127.0.0.1:0").await);
    let addr = ok(listener.local_addr());
    let state = Arc::new(UpstreamState::default());
    let st = state.clone();
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let st = st.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                serve(TokioIo::new(tls), st).await;
            });
        }
    });
    (addr, state)
}

/// Starts a plain HTTP/1.1 upstream.
pub(crate) async fn plain_upstream() -> (SocketAddr, Arc<UpstreamState>) {
    let listener = ok(TcpListener::bind("127.0.0.1:0").await);
    let addr = ok(listener.local_addr());
    let state = Arc::new(UpstreamState::default());
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let st = st.clone();
            tokio::spawn(async move { serve(TokioIo::new(tcp), st).await });
        }
    });
    (addr, state)
}

async fn serve<I>(io: I, st: Arc<UpstreamState>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let st = st.clone();
        async move { Ok::<_, Infallible>(route(req, st).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(io, svc)
        .await;
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn text(s: impl Into<Bytes>) -> Response<Body> {
    Response::new(Full::new(s.into()).boxed())
}

fn stream_body(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Body {
    futures_stream(rx).boxed()
}

fn futures_stream(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> impl hyper::body::Body<Data = Bytes, Error = Infallible> + Send + Sync + 'static {
    // A tiny body over a channel; avoids a futures dependency.
    struct ChanBody(tokio::sync::mpsc::Receiver<Bytes>);
    impl hyper::body::Body for ChanBody {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
        }
    }
    let (tx, rx2) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if tx.send(b).await.is_err() {
                return;
            }
        }
    });
    ChanBody(rx2)
}

async fn route(req: Request<Incoming>, st: Arc<UpstreamState>) -> Response<Body> {
    st.hits.fetch_add(1, Ordering::SeqCst);
    *st.last_version.lock().unwrap_or_else(|e| e.into_inner()) = Some(req.version());
    *st.last_headers.lock().unwrap_or_else(|e| e.into_inner()) = req.headers().clone();
    let path = req.uri().path().to_owned();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    match path.as_str() {
        "/echo" => {
            let mut out = String::new();
            if let Some(a) = req.uri().authority() {
                out.push_str(&format!(":authority: {a}\n"));
            }
            for (k, v) in req.headers() {
                out.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
            }
            let body = ok(req.into_body().collect().await).to_bytes();
            out.push_str(&format!("body-len: {}\n", body.len()));
            text(out)
        }
        "/reflect" => {
            let auth = req
                .headers()
                .get("authorization")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            let token = auth.rsplit(' ').next().unwrap_or_default().to_owned();
            let mode = query.get("mode").cloned().unwrap_or_default();
            match mode.as_str() {
                "split" => {
                    let (tx, rx) = tokio::sync::mpsc::channel(4);
                    let mid = token.len() / 2;
                    let (a, b) = token.split_at(mid);
                    let (a, b) = (format!("token={a}"), format!("{b};end"));
                    tokio::spawn(async move {
                        let _ = tx.send(Bytes::from(a)).await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let _ = tx.send(Bytes::from(b)).await;
                    });
                    let mut r = Response::new(stream_body(rx));
                    r.headers_mut().insert("x-echo", ok(token.parse()));
                    r
                }
                "gzip" => {
                    let mut enc =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    ok(enc.write_all(format!("gz token={token};end").as_bytes()));
                    let data = ok(enc.finish());
                    let mut r = text(data);
                    r.headers_mut()
                        .insert("content-encoding", ok("gzip".parse()));
                    r
                }
                "br" => {
                    let mut r = text(format!("pretend-br {token}"));
                    r.headers_mut().insert("content-encoding", ok("br".parse()));
                    r
                }
                _ => {
                    let mut r = text(format!("token={token};end"));
                    r.headers_mut().insert("x-echo", ok(token.parse()));
                    r
                }
            }
        }
        "/sse" => {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let st = st.clone();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"data: first\n\n")).await;
                st.release.notified().await;
                let _ = tx.send(Bytes::from_static(b"data: last\n\n")).await;
            });
            let mut r = Response::new(stream_body(rx));
            r.headers_mut()
                .insert("content-type", ok("text/event-stream".parse()));
            r
        }
        "/infinite" => {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let st = st.clone();
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                loop {
                    if tx.send(chunk.clone()).await.is_err() {
                        return;
                    }
                    st.produced.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
            });
            Response::new(stream_body(rx))
        }
        "/ws" => {
            let mut req = req;
            let on = hyper::upgrade::on(&mut req);
            // `?leak=1`: first send back the bearer token the upstream received, as raw bytes.
            let leak = query.contains_key("leak").then(|| {
                req.headers()
                    .get("authorization")
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .unwrap_or_default()
            });
            tokio::spawn(async move {
                let Ok(up) = on.await else { return };
                let mut io = TokioIo::new(up);
                if let Some(token) = leak {
                    let token = token.rsplit(' ').next().unwrap_or_default().to_owned();
                    for part in [&token[..5], &token[5..], ";"] {
                        if io.write_all(part.as_bytes()).await.is_err() {
                            return;
                        }
                        let _ = io.flush().await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                let mut buf = [0u8; 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if io
                                .write_all(buf.get(..n).unwrap_or_default())
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            });
            let mut r = Response::new(Full::new(Bytes::new()).boxed());
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut().insert("upgrade", ok("websocket".parse()));
            r.headers_mut().insert("connection", ok("upgrade".parse()));
            // RFC 6455 accept for the key received; `?bad_accept=1` answers a wrong one.
            if let Some(key) = req.headers().get("sec-websocket-key") {
                let accept = if query.contains_key("bad_accept") {
                    ws_accept(b"not the key")
                } else {
                    ws_accept(key.as_bytes())
                };
                r.headers_mut()
                    .insert("sec-websocket-accept", ok(accept.parse()));
            }
            // `?leak_header=1`: reflect the credential into the 101's headers; `?deflate=1`:
            // turn on compression whether or not it was offered.
            if query.contains_key("leak_header")
                && let Some(auth) = req.headers().get("authorization")
            {
                r.headers_mut().insert("x-echo", auth.clone());
            }
            if query.contains_key("deflate") {
                r.headers_mut()
                    .insert("sec-websocket-extensions", ok("permessage-deflate".parse()));
            }
            // The first subprotocol offered is chosen.
            if let Some(first) = req
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
            {
                r.headers_mut()
                    .insert("sec-websocket-protocol", ok(first.trim().parse()));
            }
            r
        }
        _ => {
            let mut r = text("not found");
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2).
pub(crate) fn ws_accept(key: &[u8]) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut sha = sha1::Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// A running proxy with one run.
pub(crate) struct Harness {
    pub(crate) proxy: Proxy,
    pub(crate) token: Secret,
    pub(crate) sink: Arc<MemorySink>,
    pub(crate) ca_pem: String,
    pub(crate) ca_der: CertificateDer<'static>,
}

pub(crate) fn github_rule() -> InjectionRule {
    InjectionRule {
        grant: "github".into(),
        hosts: vec![ok(HostPattern::parse(API))],
        header: "authorization".into(),
        format: InjectionFormat::Bearer,
        value: Secret::new(REAL),
        placeholder: PLACEHOLDER.into(),
    }
}

/// A TLS upstream serving `hosts` on `alpn`, and a proxy with `rules` that reaches it.
pub(crate) async fn upstream_harness(
    hosts: &[&str],
    alpn: &[&[u8]],
    rules: Vec<InjectionRule>,
) -> (Harness, Arc<UpstreamState>) {
    let ca = TestCa::new();
    let (addr, state) = tls_upstream(&ca, hosts, alpn).await;
    let h = harness(
        EgressPolicy::default(),
        rules,
        upstream_settings(&ca, hosts, addr),
    )
    .await;
    (h, state)
}

pub(crate) async fn harness(
    policy: EgressPolicy,
    rules: Vec<InjectionRule>,
    upstream: UpstreamSettings,
) -> Harness {
    harness_with(policy, rules, upstream, moat_proxy::Limits::default()).await
}

pub(crate) async fn harness_with(
    policy: EgressPolicy,
    rules: Vec<InjectionRule>,
    upstream: UpstreamSettings,
    limits: moat_proxy::Limits,
) -> Harness {
    let ca = Arc::new(ok(CertificateAuthority::generate()));
    let token = moat_proxy::generate_token();
    let sink = Arc::new(MemorySink::default());
    let run = RunContext::new(token.clone(), ca.clone(), sink.clone())
        .with_policy(policy)
        .with_credentials(Arc::new(StaticCredentials::new(rules)));
    let proxy = ok(ProxyBuilder::new(ok("127.0.0.1:0".parse()))
        .upstream(upstream)
        .limits(limits)
        .run(run)
        .start()
        .await);
    Harness {
        proxy,
        token,
        sink,
        ca_pem: ca.cert_pem().to_owned(),
        ca_der: ca.cert_der().clone(),
    }
}

/// Upstream settings trusting `ca` and sending `names` (port 443) to `addr`.
pub(crate) fn upstream_settings(ca: &TestCa, names: &[&str], addr: SocketAddr) -> UpstreamSettings {
    let mut s = UpstreamSettings {
        extra_roots: vec![ca.cert.clone()],
        webpki_roots: false,
        ..UpstreamSettings::default()
    };
    for n in names {
        s = s.resolve(n, 443, addr);
    }
    s
}

impl Harness {
    pub(crate) fn auth(&self) -> String {
        format!(
            "Basic {}",
            moat_core::creds::base64_encode(format!("moat:{}", self.token.expose()).as_bytes())
        )
    }

    /// Opens a CONNECT tunnel; returns the status line's code and the stream.
    pub(crate) async fn connect(&self, authority: &str) -> (u16, TcpStream, String) {
        let mut tcp = ok(TcpStream::connect(self.proxy.local_addr()).await);
        let req = format!(
            "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: {}\r\n\r\n",
            self.auth()
        );
        ok(tcp.write_all(req.as_bytes()).await);
        let head = read_head(&mut tcp).await;
        let code = status_code(&head);
        (code, tcp, head)
    }

    /// Opens a tunnel and a TLS session with `alpn`.
    pub(crate) async fn tls(
        &self,
        authority: &str,
        sni: &str,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let (code, tcp, head) = self.connect(authority).await;
        assert_eq!(code, 200, "{head}");
        ok(tls_connect(tcp, sni, &self.ca_der, alpn).await)
    }

    /// One request through a fresh tunnel, HTTP/1.1 or HTTP/2 by `alpn`.
    pub(crate) async fn request(
        &self,
        authority: &str,
        alpn: &[u8],
        req: Request<Full<Bytes>>,
    ) -> Response<Incoming> {
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        let tls = self.tls(authority, host, &[alpn]).await;
        send_over(tls, alpn == b"h2", req).await
    }
}

pub(crate) async fn send_over<I>(io: I, h2: bool, req: Request<Full<Bytes>>) -> Response<Incoming>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    if h2 {
        let (mut send, conn) =
            ok(hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await);
        tokio::spawn(conn);
        ok(tokio::time::timeout(T, send.send_request(req))
            .await
            .map_err(|_| "timeout")
            .and_then(|r| r.map_err(|_| "send failed")))
    } else {
        let (mut send, conn) = ok(hyper::client::conn::http1::handshake(io).await);
        tokio::spawn(conn.with_upgrades());
        ok(tokio::time::timeout(T, send.send_request(req))
            .await
            .map_err(|_| "timeout")
            .and_then(|r| r.map_err(|_| "send failed")))
    }
}

pub(crate) async fn tls_connect(
    tcp: TcpStream,
    sni: &str,
    ca: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(std::io::Error::other)?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let name = ServerName::try_from(sni.to_owned()).map_err(std::io::Error::other)?;
    tokio::time::timeout(
        T,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("tls timeout"))?
}

pub(crate) fn get(uri: &str, host: &str) -> Request<Full<Bytes>> {
    ok(Request::get(uri)
        .header("host", host)
        .body(Full::new(Bytes::new())))
}

pub(crate) async fn body_text(resp: Response<Incoming>) -> String {
    let bytes = ok(ok(tokio::time::timeout(T, resp.into_body().collect()).await)).to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Reads an HTTP/1 response head byte by byte (so nothing after it is consumed).
pub(crate) async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(T, tcp.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

pub(crate) fn status_code(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
