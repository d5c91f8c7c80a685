//! Load generator: keep-alive HTTPS through a CONNECT proxy against a local TLS upstream.
//!
//! Measures the same upstream directly, through moat-proxy (with credential injection, in a
//! child process so its memory can be read), and through mitmproxy with an equivalent
//! header-injecting addon when `mitmdump` is available (`--mitmdump PATH`, or on `PATH`).
//!
//! ```text
//! cargo run --release -p moat-proxy --example loadgen -- [--seconds 5] [--connections 64] [--mitmdump PATH]
//! ```
//!
//! Prints a table and the lines `throughput ratio proxy/direct: X.XX` and
//! `throughput ratio proxy/mitmproxy: Y.YY`.

#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark program reports on the terminal"
)]
#![expect(clippy::unwrap_used, reason = "a benchmark program fails loudly")]

use std::convert::Infallible;
use std::io::BufRead;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use http::Request;
use http::Response;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use moat_core::Secret;
use moat_core::creds::InjectionFormat;
use moat_core::creds::InjectionRule;
use moat_core::egress::NetworkEventSink;
use moat_core::egress::NetworkRecord;
use moat_core::host::HostPattern;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;

const PLACEHOLDER: &str = "ghp_PLACEHOLDER000000000000000000000";
const REAL: &str = "ghp_REALVALUE11111111111111111111111";

struct Args {
    seconds: u64,
    connections: usize,
    mitmdump: Option<PathBuf>,
    upstream_h1_only: bool,
    proxy_threads: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        seconds: 5,
        connections: 64,
        mitmdump: None,
        upstream_h1_only: false,
        proxy_threads: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => args.seconds = it.next().and_then(|v| v.parse().ok()).unwrap_or(5),
            "--connections" => {
                args.connections = it.next().and_then(|v| v.parse().ok()).unwrap_or(64)
            }
            "--mitmdump" => args.mitmdump = it.next().map(PathBuf::from),
            "--upstream-h1-only" => args.upstream_h1_only = true,
            "--proxy-threads" => {
                args.proxy_threads = it.next().and_then(|v| v.parse().ok()).unwrap_or(2)
            }
            other => {
                eprintln!(
                    "unknown argument `{other}`; use --seconds N, --connections N, \
                     --mitmdump PATH, --upstream-h1-only, --proxy-threads N (0: current-thread)"
                );
                std::process::exit(2);
            }
        }
    }
    if args.mitmdump.is_none() {
        args.mitmdump = find_on_path("mitmdump");
    }
    args
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--proxy-child") {
        proxy_child(&argv[2..]);
        return;
    }
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(args));
}

/// The moat-proxy child: `--proxy-child <upstream-port> <upstream-ca.der> <ca-out.pem>
/// <threads>`. Prints its
/// address, token and CA path, then serves until stdin closes.
fn proxy_child(args: &[String]) {
    let port: u16 = args[0].parse().unwrap();
    let ca_der = CertificateDer::from(std::fs::read(&args[1]).unwrap());
    let ca_out = PathBuf::from(&args[2]);
    let threads: usize = args[3].parse().unwrap();
    let rt = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap()
    };
    rt.block_on(async move {
        let ca = Arc::new(moat_proxy::CertificateAuthority::generate().unwrap());
        std::fs::write(&ca_out, ca.cert_pem()).unwrap();
        let token = moat_proxy::generate_token();
        let rule = InjectionRule {
            grant: "bench".into(),
            hosts: vec![HostPattern::parse(&format!("127.0.0.1:{port}")).unwrap()],
            header: "authorization".into(),
            format: InjectionFormat::Bearer,
            value: Secret::new(REAL),
            placeholder: PLACEHOLDER.into(),
        };
        let run = moat_proxy::RunContext::new(token.clone(), ca, Arc::new(CountingSink::default()))
            .with_credentials(Arc::new(moat_proxy::StaticCredentials::new(vec![rule])));
        let upstream = moat_proxy::UpstreamSettings {
            extra_roots: vec![ca_der],
            webpki_roots: false,
            allowed_destinations: vec!["127.0.0.1".parse().unwrap()],
            ..Default::default()
        };
        let proxy = moat_proxy::ProxyBuilder::new("127.0.0.1:0".parse().unwrap())
            .upstream(upstream)
            .run(run)
            .start()
            .await
            .unwrap();
        println!("ADDR {} TOKEN {}", proxy.local_addr(), token.expose());
        std::io::stdout().flush().unwrap();
        // Serve until the parent closes stdin.
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 16];
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        proxy.shutdown(Duration::from_secs(1)).await;
    });
}

#[derive(Default)]
struct CountingSink(std::sync::atomic::AtomicU64);

impl NetworkEventSink for CountingSink {
    fn record(&self, _record: NetworkRecord) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

struct Stats {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_mb: Option<f64>,
}

async fn run(args: Args) {
    let dir = std::env::temp_dir().join(format!("moat-loadgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (upstream_addr, upstream_ca) = start_upstream(args.upstream_h1_only).await;
    let ca_der_path = dir.join("upstream-ca.der");
    std::fs::write(&ca_der_path, upstream_ca.as_ref()).unwrap();
    let ca_pem_path = dir.join("upstream-ca.pem");
    std::fs::write(&ca_pem_path, pem("CERTIFICATE", upstream_ca.as_ref())).unwrap();
    let target = format!("127.0.0.1:{}", upstream_addr.port());
    println!(
        "upstream {target}; throughput: {} connections for {} s; latency: 1 connection; \
         keep-alive HTTP/1.1 GET over TLS",
        args.connections, args.seconds
    );

    let direct = measure(&args, Mode::Direct, &target, &upstream_ca, None).await;
    report("direct", &direct);

    // moat-proxy in a child process.
    let moat_ca_path = dir.join("moat-ca.pem");
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .arg("--proxy-child")
        .arg(upstream_addr.port().to_string())
        .arg(&ca_der_path)
        .arg(&moat_ca_path)
        .arg(args.proxy_threads.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = read_line(&mut child);
    let mut parts = line.split_whitespace();
    let (Some("ADDR"), Some(addr), Some("TOKEN"), Some(token)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("unexpected child output: {line}");
    };
    let proxy_addr: SocketAddr = addr.parse().unwrap();
    let moat_ca = load_pem_cert(&moat_ca_path);
    let auth = auth_header(token);
    let idle_rss = rss_mb(child.id());
    let moat = measure(
        &args,
        Mode::Proxy {
            addr: proxy_addr,
            auth: Some(auth),
        },
        &target,
        &moat_ca,
        Some(child.id()),
    )
    .await;
    report("moat-proxy", &moat);
    if let Some(idle) = idle_rss {
        println!("moat-proxy idle RSS: {idle:.1} MB");
    }
    // Memory with many open, idle, intercepted client connections.
    let mut open = Vec::new();
    for _ in 0..1000 {
        let Ok(conn) = open_tunnel(proxy_addr, &target, &moat_ca, &auth_header(token)).await else {
            break;
        };
        open.push(conn);
    }
    if let Some(rss) = rss_mb(child.id()) {
        println!(
            "moat-proxy RSS with {} open TLS tunnels: {rss:.1} MB",
            open.len()
        );
    }
    drop(open);
    // Memory after TLS handshakes for 10,000 distinct host names (one minted leaf each).
    let t0 = Instant::now();
    let mut handshakes = 0;
    for chunk in (0..10_000).collect::<Vec<u32>>().chunks(50) {
        let mut set = Vec::new();
        for i in chunk {
            let host = format!("h{i}.bench.test");
            let ca = moat_ca.clone();
            let auth = auth_header(token);
            set.push(tokio::spawn(async move {
                handshake_only(proxy_addr, &host, &ca, &auth).await
            }));
        }
        for t in set {
            if matches!(t.await, Ok(Ok(()))) {
                handshakes += 1;
            }
        }
    }
    let elapsed = t0.elapsed();
    if let Some(rss) = rss_mb(child.id()) {
        println!(
            "moat-proxy RSS after {handshakes} handshakes to distinct hosts: {rss:.1} MB ({:.0} handshakes/s)",
            f64::from(handshakes) / elapsed.as_secs_f64()
        );
    }
    drop(child.stdin.take());
    let _ = child.wait();

    let mitm = match &args.mitmdump {
        Some(path) => match start_mitmdump(path, &dir, &ca_pem_path) {
            Some((mut child, addr, ca)) => {
                let stats = measure(
                    &args,
                    Mode::Proxy { addr, auth: None },
                    &target,
                    &ca,
                    Some(child.id()),
                )
                .await;
                report("mitmproxy", &stats);
                let _ = child.kill();
                let _ = child.wait();
                Some(stats)
            }
            None => None,
        },
        None => {
            eprintln!("mitmdump not found; pass --mitmdump PATH to compare with mitmproxy");
            None
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "throughput ratio proxy/direct: {:.2}",
        moat.rps / direct.rps
    );
    println!("added p50 latency: {:.3} ms", moat.p50_ms - direct.p50_ms);
    match mitm {
        Some(m) => println!("throughput ratio proxy/mitmproxy: {:.2}", moat.rps / m.rps),
        None => println!("throughput ratio proxy/mitmproxy: unavailable"),
    }
}

fn auth_header(token: &str) -> String {
    format!(
        "Basic {}",
        moat_core::creds::base64_encode(format!("moat:{token}").as_bytes())
    )
}

/// A CONNECT tunnel with a completed TLS handshake and one request answered, left open.
async fn open_tunnel(
    proxy: SocketAddr,
    target: &str,
    ca: &CertificateDer<'static>,
    auth: &str,
) -> std::io::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let mut tcp = TcpStream::connect(proxy).await?;
    let req = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut b).await? == 0 {
            return Err(std::io::Error::other("tunnel refused"));
        }
        head.push(b[0]);
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(std::io::Error::other)?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let req = Request::get("/bench")
        .header("host", target)
        .body(Full::new(Bytes::new()))
        .map_err(std::io::Error::other)?;
    let resp = send
        .send_request(req)
        .await
        .map_err(std::io::Error::other)?;
    let _ = resp.into_body().collect().await;
    Ok(send)
}

/// CONNECT to `host:443` and complete a TLS handshake (which mints a leaf), then hang up.
async fn handshake_only(
    proxy: SocketAddr,
    host: &str,
    ca: &CertificateDer<'static>,
    auth: &str,
) -> std::io::Result<()> {
    let mut tcp = TcpStream::connect(proxy).await?;
    let req = format!(
        "CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\nProxy-Authorization: {auth}\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut b).await? == 0 {
            return Err(std::io::Error::other("tunnel refused"));
        }
        head.push(b[0]);
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(std::io::Error::other)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?;
    let _tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    Ok(())
}

fn report(name: &str, s: &Stats) {
    let rss = s
        .rss_mb
        .map_or_else(|| "-".to_owned(), |r| format!("{r:.1} MB"));
    println!(
        "{name:<11} {:>10.0} req/s   p50 {:>7.3} ms   p99 {:>7.3} ms   proxy RSS {rss}",
        s.rps, s.p50_ms, s.p99_ms
    );
}

#[derive(Clone)]
enum Mode {
    Direct,
    Proxy {
        addr: SocketAddr,
        auth: Option<String>,
    },
}

/// Throughput with `args.connections` keep-alive connections, then latency with a single
/// connection (so queueing does not inflate it), both after a one-second warm-up.
async fn measure(
    args: &Args,
    mode: Mode,
    target: &str,
    ca: &CertificateDer<'static>,
    pid: Option<u32>,
) -> Stats {
    let (done, rss) = phase(args.connections, args.seconds, &mode, target, ca, pid).await;
    let (mut latencies, _) = phase(1, args.seconds.div_ceil(2), &mode, target, ca, None).await;
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Stats {
        rps: done.len() as f64 / args.seconds as f64,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        rss_mb: rss,
    }
}

async fn phase(
    connections: usize,
    seconds: u64,
    mode: &Mode,
    target: &str,
    ca: &CertificateDer<'static>,
    pid: Option<u32>,
) -> (Vec<Duration>, Option<f64>) {
    let deadline_warm = Instant::now() + Duration::from_secs(1);
    let end = deadline_warm + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mode = mode.clone();
        let target = target.to_owned();
        let ca = ca.clone();
        tasks.push(tokio::spawn(async move {
            worker(mode, &target, ca, deadline_warm, end).await
        }));
    }
    // Sample the proxy's memory in the middle of the run.
    let mut rss = None;
    if let Some(pid) = pid {
        tokio::time::sleep(Duration::from_secs(1) + Duration::from_secs(seconds) / 2).await;
        rss = rss_mb(pid);
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    (latencies, rss)
}

async fn worker(
    mode: Mode,
    target: &str,
    ca: CertificateDer<'static>,
    warm_until: Instant,
    end: Instant,
) -> Vec<Duration> {
    let tcp = match &mode {
        Mode::Direct => TcpStream::connect(target).await.unwrap(),
        Mode::Proxy { addr, auth } => {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
            if let Some(a) = auth {
                req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
            }
            req.push_str("\r\n");
            tcp.write_all(req.as_bytes()).await.unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                let n = tcp.read(&mut b).await.unwrap();
                assert_eq!(n, 1, "proxy closed the tunnel");
                head.push(b[0]);
            }
            assert!(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"));
            tcp
        }
    };
    tcp.set_nodelay(true).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut lat = Vec::new();
    while Instant::now() < end {
        let req = Request::get("/bench")
            .header("host", target)
            .header("authorization", format!("Bearer {PLACEHOLDER}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let t0 = Instant::now();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let _ = resp.into_body().collect().await.unwrap();
        if t0 >= warm_until {
            lat.push(t0.elapsed());
        }
    }
    lat
}

/// A TLS upstream answering every request with a small body; it checks that the credential
/// arrived when one was sent through a proxy.
async fn start_upstream(h1_only: bool) -> (SocketAddr, CertificateDer<'static>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "loadgen upstream ca");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    config.alpn_protocols = if h1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let auth = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    let ok =
                        auth == format!("Bearer {REAL}") || auth == format!("Bearer {PLACEHOLDER}");
                    let mut resp = Response::new(Full::new(Bytes::from_static(
                        b"{\"ok\":true,\"message\":\"hello from the upstream\"}",
                    )));
                    if !ok {
                        *resp.status_mut() = http::StatusCode::UNAUTHORIZED;
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, ca_cert.der().clone())
}

fn start_mitmdump(
    path: &Path,
    dir: &Path,
    upstream_ca: &Path,
) -> Option<(Child, SocketAddr, CertificateDer<'static>)> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
        l.local_addr().ok()?.port()
    };
    let addon = dir.join("inject.py");
    std::fs::write(
        &addon,
        format!(
            "class Inject:\n    def request(self, flow):\n        flow.request.headers['authorization'] = 'Bearer {REAL}'\n\naddons = [Inject()]\n"
        ),
    )
    .ok()?;
    let confdir = dir.join("mitm");
    let child = Command::new(path)
        .arg("--listen-host")
        .arg("127.0.0.1")
        .arg("--listen-port")
        .arg(port.to_string())
        .arg("--set")
        .arg(format!("confdir={}", confdir.display()))
        .arg("--set")
        .arg(format!(
            "ssl_verify_upstream_trusted_ca={}",
            upstream_ca.display()
        ))
        .arg("--set")
        .arg("flow_detail=0")
        .arg("-q")
        .arg("-s")
        .arg(&addon)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    let ca_path = confdir.join("mitmproxy-ca-cert.pem");
    for _ in 0..300 {
        if ca_path.exists() && std::net::TcpStream::connect(addr).is_ok() {
            return Some((child, addr, load_pem_cert(&ca_path)));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("mitmdump did not start within 30 s");
    None
}

fn read_line(child: &mut Child) -> String {
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    line
}

fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

fn load_pem_cert(path: &Path) -> CertificateDer<'static> {
    let text = std::fs::read_to_string(path).unwrap();
    let b64: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    CertificateDer::from(base64_decode(&b64))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = moat_core::creds::base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn base64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
