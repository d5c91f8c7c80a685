//! Load generator: keep-alive HTTPS through a CONNECT proxy against a local TLS upstream.
//!
//! Measures, in interleaved rounds, the same upstream (a child process) directly, through
//! moat-proxy with credential injection (a child process, on a dedicated thread as `moat run`
//! starts it), through mitmproxy with an equivalent header-injecting addon when `mitmdump` is
//! available (`--mitmdump PATH`, or on `PATH`), and with `--floor` through the bare
//! hyper/rustls stack moat-proxy is built on. Reports requests/s, latency, RSS and the CPU time
//! per request of every process.
//!
//! ```text
//! cargo run --release -p moat-proxy --example loadgen -- [--rounds 3] [--seconds 3] [--connections 64] [--floor] [--mitmdump PATH]
//! ```
//!
//! Prints the lines `throughput ratio proxy/direct: X.XX` and
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

use base64::Engine as _;
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
    floor: bool,
    rounds: usize,
    connections: usize,
    mitmdump: Option<PathBuf>,
    upstream_h1_only: bool,
    proxy_threads: Option<usize>,
}

fn parse_args() -> Args {
    let mut args = Args {
        seconds: 3,
        floor: false,
        rounds: 3,
        connections: 64,
        mitmdump: None,
        upstream_h1_only: false,
        proxy_threads: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => args.seconds = it.next().and_then(|v| v.parse().ok()).unwrap_or(3),
            "--rounds" => args.rounds = it.next().and_then(|v| v.parse().ok()).unwrap_or(3).max(1),
            "--connections" => {
                args.connections = it.next().and_then(|v| v.parse().ok()).unwrap_or(64)
            }
            "--mitmdump" => args.mitmdump = it.next().map(PathBuf::from),
            "--upstream-h1-only" => args.upstream_h1_only = true,
            "--floor" => args.floor = true,
            "--proxy-threads" => args.proxy_threads = it.next().and_then(|v| v.parse().ok()),
            other => {
                eprintln!(
                    "unknown argument `{other}`; use --seconds N, --rounds N, --connections N, \
                     --mitmdump PATH, --upstream-h1-only, --floor (also measure the bare \
                     hyper/rustls stack without moat's work), --proxy-threads N (instead of \
                     the dedicated proxy thread moat uses)"
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
    if argv.get(1).map(String::as_str) == Some("--bare-child") {
        bare_child(&argv[2..]);
        return;
    }
    if argv.get(1).map(String::as_str) == Some("--upstream-child") {
        upstream_child(&argv[2..]);
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

/// The upstream child: `--upstream-child <h1-only: 0|1> <ca-out.der>`. A TLS server in its own
/// process, as a real upstream is, with two worker threads. Prints its address, then serves
/// until stdin closes.
fn upstream_child(args: &[String]) {
    let h1_only = args[0] == "1";
    let ca_out = PathBuf::from(&args[1]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (addr, ca) = start_upstream(h1_only).await;
        std::fs::write(&ca_out, ca.as_ref()).unwrap();
        println!("ADDR {addr}");
        std::io::stdout().flush().unwrap();
        until_stdin_closes().await;
    });
}

/// The moat-proxy child: `--proxy-child <upstream-port> <upstream-ca.der> <ca-out.pem>
/// <threads|dedicated>`. Prints its address and token, then serves until stdin closes.
///
/// `dedicated` is how moat itself runs the proxy: [`moat_proxy::ProxyBuilder::start_dedicated`],
/// one OS thread with its own single-threaded runtime.
fn proxy_child(args: &[String]) {
    let port: u16 = args[0].parse().unwrap();
    let ca_der = CertificateDer::from(std::fs::read(&args[1]).unwrap());
    let ca_out = PathBuf::from(&args[2]);
    let threads: Option<usize> = args[3].parse().ok();
    let rt = match threads {
        None | Some(0) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()
            .unwrap(),
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
        let builder = moat_proxy::ProxyBuilder::new("127.0.0.1:0".parse().unwrap())
            .upstream(upstream)
            .run(run);
        let proxy = match threads {
            None => builder.start_dedicated().await.unwrap(),
            Some(_) => builder.start().await.unwrap(),
        };
        println!("ADDR {} TOKEN {}", proxy.local_addr(), token.expose());
        std::io::stdout().flush().unwrap();
        until_stdin_closes().await;
        proxy.shutdown(Duration::from_secs(1)).await;
    });
}

/// The floor: `--bare-child <upstream-port> <upstream-ca.der> <ca-out.pem>`. The same stack as
/// moat-proxy (hyper's HTTP/1.1 server over rustls towards the client, one hyper HTTP/2
/// connection over rustls to the upstream, a dedicated thread with a single-threaded runtime)
/// with none of moat's work: no authentication, policy, records or scrubbing, a header set
/// blindly. It answers what this stack costs by itself on this machine; it is not a proxy
/// anyone should run.
fn bare_child(args: &[String]) {
    let port: u16 = args[0].parse().unwrap();
    let ca_der = CertificateDer::from(std::fs::read(&args[1]).unwrap());
    let ca_out = PathBuf::from(&args[2]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let ca = moat_proxy::CertificateAuthority::generate().unwrap();
        std::fs::write(&ca_out, ca.cert_pem()).unwrap();
        let server = ca.server_config("127.0.0.1").await.unwrap();
        let mut server = (*server).clone();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        // One HTTP/2 connection to the upstream, shared by every request.
        let client = client_config(ca_der, &[b"h2"]);
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = tokio_rustls::TlsConnector::from(client)
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("ADDR {} TOKEN -", listener.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        let authority = format!("127.0.0.1:{port}");
        let serve = async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, sender, authority) =
                    (acceptor.clone(), sender.clone(), authority.clone());
                tokio::spawn(async move {
                    // The CONNECT head, answered without looking at it.
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if tcp.read(&mut b).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(b[0]);
                    }
                    if tcp.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.is_err() {
                        return;
                    }
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let bearer = http::HeaderValue::from_str(&format!("Bearer {REAL}")).unwrap();
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let mut sender = sender.clone();
                        let bearer = bearer.clone();
                        let uri = format!("https://{authority}{}", req.uri().path());
                        async move {
                            let (mut parts, body) = req.into_parts();
                            parts.uri = uri.parse().unwrap();
                            parts.version = http::Version::HTTP_2;
                            parts.headers.remove(http::header::HOST);
                            parts.headers.insert(http::header::AUTHORIZATION, bearer);
                            sender.send_request(Request::from_parts(parts, body)).await
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        };
        tokio::select! {
            () = serve => {}
            () = until_stdin_closes() => {}
        }
    });
}

/// A CONNECT tunnel through `proxy` to `target`, the proxy's `200` read.
async fn connect_tunnel(
    proxy: SocketAddr,
    target: &str,
    auth: Option<&str>,
) -> std::io::Result<TcpStream> {
    let mut tcp = TcpStream::connect(proxy).await?;
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut b).await? == 0 {
            return Err(std::io::Error::other("the proxy closed the tunnel"));
        }
        head.push(b[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
        return Err(std::io::Error::other(format!(
            "tunnel refused: {}",
            String::from_utf8_lossy(&head)
        )));
    }
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// A TLS client configuration trusting only `ca`, offering `alpn`.
fn client_config(ca: CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Children serve until the parent closes their stdin.
async fn until_stdin_closes() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 16];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
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
    /// CPU time per request of the load generator (this process).
    cpu_self_us: f64,
    /// CPU time per request of the upstream process.
    cpu_upstream_us: f64,
    /// CPU time per request of the proxy process, when there is one.
    cpu_proxy_us: Option<f64>,
}

/// One proxy under test, started once and measured in every round.
struct ProxyUnderTest {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
    auth: Option<String>,
    ca: CertificateDer<'static>,
    rounds: Vec<Stats>,
}

impl ProxyUnderTest {
    fn mode(&self) -> Mode {
        Mode::Proxy {
            addr: self.addr,
            auth: self.auth.clone(),
        }
    }
}

async fn run(args: Args) {
    let dir = std::env::temp_dir().join(format!("moat-loadgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_der_path = dir.join("upstream-ca.der");
    let exe = std::env::current_exe().unwrap();
    let mut upstream = Command::new(&exe)
        .arg("--upstream-child")
        .arg(if args.upstream_h1_only { "1" } else { "0" })
        .arg(&ca_der_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = read_line(&mut upstream);
    let upstream_addr: SocketAddr = line
        .strip_prefix("ADDR ")
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected upstream output: {line}"));
    let upstream_ca = CertificateDer::from(std::fs::read(&ca_der_path).unwrap());
    let upstream_pid = upstream.id();
    let ca_pem_path = dir.join("upstream-ca.pem");
    std::fs::write(&ca_pem_path, pem("CERTIFICATE", upstream_ca.as_ref())).unwrap();
    let target = format!("127.0.0.1:{}", upstream_addr.port());
    println!(
        "upstream {target} (own process); throughput: {} connections, {} rounds of {} s each, \
         direct and through each proxy in turn; latency: 1 connection; keep-alive HTTP/1.1 GET \
         over TLS",
        args.connections, args.rounds, args.seconds
    );
    println!(
        "moat-proxy runs {}",
        match args.proxy_threads {
            None => "on a dedicated thread (as in moat)".to_owned(),
            Some(0) => "on a current-thread runtime".to_owned(),
            Some(n) => format!("on a {n}-thread runtime"),
        }
    );

    // moat-proxy in a child process.
    let moat_ca_path = dir.join("moat-ca.pem");
    // LOADGEN_PROXY_WRAPPER runs the proxy child under a profiler, e.g.
    // `valgrind --tool=callgrind`.
    let wrapper = std::env::var("LOADGEN_PROXY_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    let mut child = command
        .arg("--proxy-child")
        .arg(upstream_addr.port().to_string())
        .arg(&ca_der_path)
        .arg(&moat_ca_path)
        .arg(
            args.proxy_threads
                .map_or_else(|| "dedicated".to_owned(), |n| n.to_string()),
        )
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
    let token = token.to_owned();
    let proxy_addr: SocketAddr = addr.parse().unwrap();
    let idle_rss = rss_mb(child.id());
    let mut proxies = vec![ProxyUnderTest {
        name: "moat-proxy",
        child,
        addr: proxy_addr,
        auth: Some(auth_header(&token)),
        ca: load_pem_cert(&moat_ca_path),
        rounds: Vec::new(),
    }];
    match &args.mitmdump {
        Some(path) => {
            if let Some((child, addr, ca)) = start_mitmdump(path, &dir, &ca_pem_path) {
                proxies.push(ProxyUnderTest {
                    name: "mitmproxy",
                    child,
                    addr,
                    auth: None,
                    ca,
                    rounds: Vec::new(),
                });
            }
        }
        None => eprintln!("mitmdump not found; pass --mitmdump PATH to compare with mitmproxy"),
    }
    if args.floor {
        let bare_ca_path = dir.join("bare-ca.pem");
        let mut child = Command::new(&exe)
            .arg("--bare-child")
            .arg(upstream_addr.port().to_string())
            .arg(&ca_der_path)
            .arg(&bare_ca_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let line = read_line(&mut child);
        let addr: SocketAddr = line
            .split_whitespace()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected child output: {line}"));
        proxies.push(ProxyUnderTest {
            name: "bare stack",
            child,
            addr,
            auth: None,
            ca: load_pem_cert(&bare_ca_path),
            rounds: Vec::new(),
        });
    }

    // Interleaved rounds, so that drift in the machine's speed touches every contender alike.
    let mut direct = Vec::new();
    for round in 1..=args.rounds {
        let stats = measure(
            &args,
            &Mode::Direct,
            &target,
            &upstream_ca,
            upstream_pid,
            None,
        )
        .await;
        report(&format!("direct #{round}"), &stats);
        direct.push(stats);
        for p in &mut proxies {
            let stats = measure(
                &args,
                &p.mode(),
                &target,
                &p.ca,
                upstream_pid,
                Some(p.child.id()),
            )
            .await;
            report(&format!("{} #{round}", p.name), &stats);
            p.rounds.push(stats);
        }
    }
    println!();
    summary("direct", &direct);
    for p in &proxies {
        summary(p.name, &p.rounds);
    }
    if let Some(idle) = idle_rss {
        println!("moat-proxy idle RSS: {idle:.1} MB");
    }

    let moat = &proxies[0];
    let moat_ca = moat.ca.clone();
    let moat_pid = moat.child.id();
    // Memory with many open, idle, intercepted client connections.
    let mut open = Vec::new();
    for _ in 0..1000 {
        let Ok(conn) = open_tunnel(proxy_addr, &target, &moat_ca, &auth_header(&token)).await
        else {
            break;
        };
        open.push(conn);
    }
    if let Some(rss) = rss_mb(moat_pid) {
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
            let auth = auth_header(&token);
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
    if let Some(rss) = rss_mb(moat_pid) {
        println!(
            "moat-proxy RSS after {handshakes} handshakes to distinct hosts: {rss:.1} MB ({:.0} handshakes/s)",
            f64::from(handshakes) / elapsed.as_secs_f64()
        );
    }

    let direct_rps = median(direct.iter().map(|s| s.rps));
    let direct_p50 = median(direct.iter().map(|s| s.p50_ms));
    let moat_rps = median(moat.rounds.iter().map(|s| s.rps));
    let per_round: Vec<f64> = moat
        .rounds
        .iter()
        .zip(&direct)
        .map(|(m, d)| m.rps / d.rps)
        .collect();
    println!(
        "per-round ratio proxy/direct: min {:.2} median {:.2} max {:.2}",
        min(per_round.iter().copied()),
        median(per_round.iter().copied()),
        max(per_round.iter().copied())
    );
    println!(
        "throughput ratio proxy/direct: {:.2}",
        moat_rps / direct_rps
    );
    println!(
        "added p50 latency: {:.3} ms",
        median(moat.rounds.iter().map(|s| s.p50_ms)) - direct_p50
    );
    if let Some(bare) = proxies.iter().find(|p| p.name == "bare stack") {
        println!(
            "throughput ratio bare stack/direct: {:.2} (the same hyper/rustls stack without \
             moat's work)",
            median(bare.rounds.iter().map(|s| s.rps)) / direct_rps
        );
    }
    match proxies.iter().find(|p| p.name == "mitmproxy") {
        Some(m) => println!(
            "throughput ratio proxy/mitmproxy: {:.2}",
            moat_rps / median(m.rounds.iter().map(|s| s.rps))
        ),
        None => println!("throughput ratio proxy/mitmproxy: unavailable"),
    }
    for mut p in proxies {
        // Closing stdin asks moat-proxy to shut down; mitmproxy is killed.
        drop(p.child.stdin.take());
        for _ in 0..100 {
            if matches!(p.child.try_wait(), Ok(Some(_))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    drop(upstream.stdin.take());
    let _ = upstream.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn min(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(f64::INFINITY, f64::min)
}

fn max(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(f64::NEG_INFINITY, f64::max)
}

/// Min/median/max over the rounds.
fn summary(name: &str, rounds: &[Stats]) {
    let rps = || rounds.iter().map(|s| s.rps);
    let cpu = rounds
        .iter()
        .filter_map(|s| s.cpu_proxy_us)
        .collect::<Vec<_>>();
    let cpu = if cpu.is_empty() {
        String::new()
    } else {
        format!(", proxy {:.1} us", median(cpu.iter().copied()))
    };
    println!(
        "{name:<11} req/s min {:>8.0} median {:>8.0} max {:>8.0}; p50 {:.3} ms; p99 {:.3} ms; \
         CPU per request: client {:.1} us, upstream {:.1} us{cpu}",
        min(rps()),
        median(rps()),
        max(rps()),
        median(rounds.iter().map(|s| s.p50_ms)),
        median(rounds.iter().map(|s| s.p99_ms)),
        median(rounds.iter().map(|s| s.cpu_self_us)),
        median(rounds.iter().map(|s| s.cpu_upstream_us)),
    );
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
    let tcp = connect_tunnel(proxy, target, Some(auth)).await?;
    let config = client_config(ca.clone(), &[b"http/1.1"]);
    let name = ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?;
    let tls = tokio_rustls::TlsConnector::from(config)
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
    let tcp = connect_tunnel(proxy, &format!("{host}:443"), Some(auth)).await?;
    let config = client_config(ca.clone(), &[]);
    let name = ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?;
    let _tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    Ok(())
}

fn report(name: &str, s: &Stats) {
    let rss = s
        .rss_mb
        .map_or_else(|| "-".to_owned(), |r| format!("{r:.1} MB"));
    let cpu = s
        .cpu_proxy_us
        .map_or_else(|| "-".to_owned(), |c| format!("{c:.1} us/req"));
    println!(
        "{name:<14} {:>10.0} req/s   p50 {:>7.3} ms   p99 {:>7.3} ms   proxy RSS {rss}   proxy CPU {cpu}",
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
    mode: &Mode,
    target: &str,
    ca: &CertificateDer<'static>,
    upstream: u32,
    pid: Option<u32>,
) -> Stats {
    let load = phase(
        args.connections,
        args.seconds,
        mode,
        target,
        ca,
        upstream,
        pid,
    )
    .await;
    let mut latencies = phase(
        1,
        args.seconds.div_ceil(2),
        mode,
        target,
        ca,
        upstream,
        None,
    )
    .await
    .latencies;
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let done = load.latencies.len().max(1) as f64;
    Stats {
        rps: load.latencies.len() as f64 / args.seconds as f64,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        rss_mb: load.rss,
        cpu_self_us: load.cpu_self.as_secs_f64() * 1e6 / done,
        cpu_upstream_us: load.cpu_upstream.as_secs_f64() * 1e6 / done,
        cpu_proxy_us: load.cpu_proxy.map(|c| c.as_secs_f64() * 1e6 / done),
    }
}

struct Phase {
    latencies: Vec<Duration>,
    rss: Option<f64>,
    cpu_self: Duration,
    cpu_upstream: Duration,
    cpu_proxy: Option<Duration>,
}

async fn phase(
    connections: usize,
    seconds: u64,
    mode: &Mode,
    target: &str,
    ca: &CertificateDer<'static>,
    upstream: u32,
    pid: Option<u32>,
) -> Phase {
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
    // CPU time over the measured window; the proxy's memory in its middle.
    let me = std::process::id();
    tokio::time::sleep_until(deadline_warm.into()).await;
    let self_before = cpu_time(me);
    let upstream_before = cpu_time(upstream);
    let proxy_before = pid.and_then(cpu_time);
    tokio::time::sleep(Duration::from_secs(seconds) / 2).await;
    let rss = pid.and_then(rss_mb);
    tokio::time::sleep_until(end.into()).await;
    let self_after = cpu_time(me);
    let upstream_after = cpu_time(upstream);
    let proxy_after = pid.and_then(cpu_time);
    let mut latencies: Vec<Duration> = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let diff = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    Phase {
        latencies,
        rss,
        cpu_self: diff(self_before, self_after).unwrap_or_default(),
        cpu_upstream: diff(upstream_before, upstream_after).unwrap_or_default(),
        cpu_proxy: diff(proxy_before, proxy_after),
    }
}

/// User plus system CPU time a process has used so far.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
    Some(Duration::from_millis((utime + stime) * 10))
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
        Mode::Proxy { addr, auth } => connect_tunnel(*addr, target, auth.as_deref())
            .await
            .unwrap(),
    };
    tcp.set_nodelay(true).unwrap();
    let config = client_config(ca, &[b"http/1.1"]);
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
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
    CertificateDer::from(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
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
