use moat_core::egress::EgressPolicy;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

async fn raw(h: &Harness, bytes: &[u8]) -> String {
    let mut tcp = TcpStream::connect(h.proxy.local_addr()).await.unwrap();
    let _ = tcp.write_all(bytes).await;
    // The proxy closes the connection after refusing malformed input, so this ends promptly.
    let mut out = Vec::new();
    let r = tokio::time::timeout(T, tcp.read_to_end(&mut out)).await;
    assert!(
        r.is_ok(),
        "connection left open after: {}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

async fn still_serves(h: &Harness) {
    let (code, _, head) = h.connect(&format!("{API}:443")).await;
    assert_eq!(code, 200, "{head}");
}

#[tokio::test]
async fn garbage_and_oversized_requests_are_answered_without_a_panic() {
    let h = harness(EgressPolicy::default(), vec![], Default::default()).await;
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let out = raw(&h, &garbage).await;
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out}");
    let out = raw(&h, b"\x16\x03\x01\x00\x05hello").await;
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out}");

    let big = format!(
        "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let out = raw(&h, big.as_bytes()).await;
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "{}",
        &out[..out.len().min(200)]
    );

    for target in [
        "example.com",
        "example.com:0",
        "exa mple.com:443",
        "[::1",
        ":443",
        "user@host:443",
        "host:99999",
    ] {
        let req = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {}\r\n\r\n",
            h.auth()
        );
        let out = raw(&h, req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{target}: {out}");
    }
    // Origin-form and https absolute-form requests are not proxy requests.
    for line in ["GET / HTTP/1.1", "GET https://example.com/ HTTP/1.1"] {
        let req = format!(
            "{line}\r\nHost: example.com\r\nProxy-Authorization: {}\r\n\r\n",
            h.auth()
        );
        let out = raw(&h, req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{line}: {out}");
    }
    still_serves(&h).await;
}

#[tokio::test]
async fn garbage_inside_a_tunnel_is_dropped() {
    let (h, state) = upstream_harness(&[API], &[b"http/1.1"], vec![github_rule()]).await;
    // Not TLS at all.
    let (code, mut tcp, _) = h.connect(&format!("{API}:443")).await;
    assert_eq!(code, 200);
    let _ = tcp
        .write_all(b"GET / HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(T, tcp.read_to_end(&mut out)).await;
    assert!(!String::from_utf8_lossy(&out).contains(REAL));
    // Garbage after a good handshake.
    let mut tls = h.tls(&format!("{API}:443"), API, &[b"http/1.1"]).await;
    let _ = tls.write_all(b"\x00\x01\x02 NOT HTTP\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(T, tls.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out}");
    // Oversized header inside the tunnel.
    let mut tls = h.tls(&format!("{API}:443"), API, &[b"http/1.1"]).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: {API}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let _ = tls.write_all(big.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(T, tls.read_to_end(&mut out)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431"));
    assert_eq!(state.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    still_serves(&h).await;
}

#[tokio::test]
async fn graceful_shutdown_stops_accepting() {
    let h = harness(EgressPolicy::default(), vec![], Default::default()).await;
    let addr = h.proxy.local_addr();
    h.proxy.shutdown(std::time::Duration::from_secs(5)).await;
    // Either refused, or accepted by a dying socket and closed without an answer.
    if let Ok(mut tcp) = TcpStream::connect(addr).await {
        let _ = tcp.write_all(b"CONNECT a:443 HTTP/1.1\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(T, tcp.read_to_end(&mut out)).await;
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    }
}

fn limits() -> moat_proxy::Limits {
    moat_proxy::Limits {
        max_connections: 2,
        handshake_timeout: std::time::Duration::from_secs(1),
        header_read_timeout: std::time::Duration::from_secs(1),
        idle_timeout: std::time::Duration::from_secs(1),
        ..Default::default()
    }
}

#[tokio::test]
async fn idle_clients_are_disconnected_by_timeouts() {
    let h = harness_with(
        EgressPolicy::default(),
        vec![],
        Default::default(),
        limits(),
    )
    .await;
    // A tunnel whose client never starts TLS.
    let (code, mut tcp, _) = h.connect(&format!("{API}:443")).await;
    assert_eq!(code, 200);
    let mut out = Vec::new();
    let r = tokio::time::timeout(T, tcp.read_to_end(&mut out)).await;
    assert!(
        r.is_ok(),
        "a silent tunnel must be closed by the handshake timeout"
    );
    drop(tcp);
    // An intercepted HTTP/1.1 session that goes quiet after its handshake.
    let ca = TestCa::new();
    let (addr, _) = tls_upstream(&ca, &[API], &[b"http/1.1"]).await;
    let h2 = harness_with(
        EgressPolicy::default(),
        vec![],
        upstream_settings(&ca, &[API], addr),
        limits(),
    )
    .await;
    let mut tls = h2.tls(&format!("{API}:443"), API, &[b"http/1.1"]).await;
    let mut out = Vec::new();
    let r = tokio::time::timeout(T, tls.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "an idle intercepted session must be closed");
    // An intercepted HTTP/2 session that never sends anything after its handshake.
    let mut quiet = h2.tls(&format!("{API}:443"), API, &[b"h2"]).await;
    let mut out = Vec::new();
    let r = tokio::time::timeout(T, quiet.read_to_end(&mut out)).await;
    assert!(
        r.is_ok(),
        "an idle HTTP/2 session must be closed by the idle timeout"
    );
    // A client that never finishes its request head.
    let mut tcp = TcpStream::connect(h.proxy.local_addr()).await.unwrap();
    tcp.write_all(b"CONNECT api.exa").await.unwrap();
    let mut out = Vec::new();
    let r = tokio::time::timeout(T, tcp.read_to_end(&mut out)).await;
    assert!(
        r.is_ok(),
        "a slow request head must be cut off by the header timeout"
    );
}

#[tokio::test]
async fn connection_cap_makes_extra_clients_wait() {
    let limits = moat_proxy::Limits {
        handshake_timeout: std::time::Duration::from_secs(60),
        header_read_timeout: std::time::Duration::from_secs(60),
        idle_timeout: std::time::Duration::from_secs(60),
        ..limits()
    };
    let h = harness_with(EgressPolicy::default(), vec![], Default::default(), limits).await;
    let (c1, first, _) = h.connect(&format!("{API}:443")).await;
    let (c2, _second, _) = h.connect(&format!("{API}:443")).await;
    assert_eq!((c1, c2), (200, 200));
    // The third client is accepted by the kernel but not served while two tunnels are open.
    let mut third = TcpStream::connect(h.proxy.local_addr()).await.unwrap();
    let req = format!(
        "CONNECT {API}:443 HTTP/1.1\r\nHost: {API}:443\r\nProxy-Authorization: {}\r\n\r\n",
        h.auth()
    );
    third.write_all(req.as_bytes()).await.unwrap();
    let mut b = [0u8; 1];
    let early =
        tokio::time::timeout(std::time::Duration::from_millis(500), third.read(&mut b)).await;
    assert!(early.is_err(), "third client served beyond the cap");
    // Closing one tunnel frees a slot.
    drop(first);
    let head = read_head(&mut third).await;
    assert_eq!(status_code(&head), 200, "{head}");
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let (h, state) = upstream_harness(&[API], &[b"http/1.1"], vec![]).await;
    let resp = h
        .request(&format!("{API}:443"), b"http/1.1", get("/sse", API))
        .await;
    assert_eq!(resp.status(), 200);
    let Harness { proxy, .. } = h;
    let shutdown = tokio::spawn(proxy.shutdown(std::time::Duration::from_secs(20)));
    // The streaming response is still delivered in full.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    state.release.notify_one();
    let body = body_text(resp).await;
    assert_eq!(body, "data: first\n\ndata: last\n\n");
    tokio::time::timeout(T, shutdown).await.unwrap().unwrap();
}
