use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use moat_core::egress::EgressPolicy;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use crate::support::*;

async fn setup(alpn: &[&[u8]], rules: bool) -> (Harness, std::sync::Arc<UpstreamState>) {
    let rules = if rules { vec![github_rule()] } else { vec![] };
    upstream_harness(&[API], alpn, rules).await
}

#[tokio::test]
async fn sse_event_arrives_before_the_upstream_finishes() {
    // With credentials (scrubbing active) and without, on both client protocols.
    for (alpn, rules) in [
        (&b"http/1.1"[..], true),
        (b"h2", true),
        (b"http/1.1", false),
    ] {
        let (h, state) = setup(&[b"h2", b"http/1.1"], rules).await;
        let resp = h
            .request(&format!("{API}:443"), alpn, get("/sse", API))
            .await;
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        // The upstream holds the stream open until released: the first event must get through
        // while it is still open.
        let frame = tokio::time::timeout(T, body.frame())
            .await
            .expect("first event in time");
        let data = frame.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&data[..], b"data: first\n\n");
        state.release.notify_one();
        let rest = tokio::time::timeout(T, body.collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(&rest[..], b"data: last\n\n");
    }
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    let (h, _state) = setup(&[b"h2", b"http/1.1"], true).await;
    let mut tls = h.tls(&format!("{API}:443"), API, &[b"http/1.1"]).await;
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {API}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut tls).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    echoes(&mut tls, &[b"hello", b"second frame", &[0u8, 1, 2, 255]]).await;
    let rec = h.sink.wait_for(&format!("https://{API}/ws")).await;
    assert_eq!(rec.status, Some(101));
}

#[tokio::test]
async fn large_downloads_stream_with_bounded_buffering() {
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let (h, state) = setup(&[b"h2", b"http/1.1"], false).await;
        let resp = h
            .request(&format!("{API}:443"), alpn, get("/infinite", API))
            .await;
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut received: u64 = 0;
        while received < 8 * 1024 * 1024 {
            let frame = tokio::time::timeout(T, body.frame())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            received += frame.into_data().map(|d| d.len() as u64).unwrap_or(0);
        }
        // Stop reading. A buffering proxy would keep pulling from the upstream; a streaming one
        // stops once socket buffers and flow-control windows are full.
        let mut last = state.produced.load(Ordering::SeqCst);
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let now = state.produced.load(Ordering::SeqCst);
            if now == last {
                break;
            }
            last = now;
        }
        let produced = state.produced.load(Ordering::SeqCst);
        let in_flight = produced.saturating_sub(received);
        assert!(
            in_flight < 64 * 1024 * 1024,
            "{} MiB buffered between upstream and client",
            in_flight / (1024 * 1024)
        );
        // And the stream is still alive: reading resumes it.
        let frame = tokio::time::timeout(T, body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(frame.is_data());
        drop(body);
    }
}

#[tokio::test]
async fn request_bodies_stream_upstream_and_are_counted() {
    let (h, _state) = setup(&[b"h2", b"http/1.1"], true).await;
    let size = 3 * 1024 * 1024 + 17;
    for (i, alpn) in [&b"http/1.1"[..], b"h2"].into_iter().enumerate() {
        let req = http::Request::post(format!("/echo?n={i}"))
            .header("host", API)
            .body(http_body_util::Full::new(bytes::Bytes::from(vec![
                b'z';
                size
            ])))
            .unwrap();
        let resp = h.request(&format!("{API}:443"), alpn, req).await;
        assert_eq!(resp.status(), 200);
        let body = body_text(resp).await;
        assert!(body.contains(&format!("body-len: {size}\n")), "{body}");
        let rec = h.sink.wait_for(&format!("https://{API}/echo?n={i}")).await;
        assert_eq!(rec.method, "POST");
        assert_eq!(rec.req_bytes, size as u64);
        assert_eq!(rec.resp_bytes, body.len() as u64);
    }
}

#[tokio::test]
async fn websocket_streams_from_credentialed_hosts_are_scrubbed() {
    let (h, state) = setup(&[b"http/1.1"], true).await;
    let mut tls = h.tls(&format!("{API}:443"), API, &[b"http/1.1"]).await;
    let req = format!(
        "GET /ws?leak=1 HTTP/1.1\r\nHost: {API}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Compression was not offered upstream, and the credential was injected.
    assert_no_compression_and_real_credential(&state);
    // The reflected token (sent in pieces) arrives masked, with its length preserved.
    let mut got = vec![0u8; REAL.len() + 1];
    tokio::time::timeout(T, tls.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(!got.contains(REAL), "{got}");
    assert_eq!(got, format!("{};", &PLACEHOLDER[..REAL.len()]));
}

#[tokio::test]
async fn websocket_handshakes_from_credentialed_hosts_leak_nothing_and_stay_uncompressed() {
    let (h, _state) = setup(&[b"http/1.1"], true).await;
    let handshake = |query: &str| {
        format!(
            "GET /ws?{query} HTTP/1.1\r\nHost: {API}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    // The upstream reflects the injected credential into a header of its 101.
    let mut tls = h.tls(&format!("{API}:443"), API, &[b"http/1.1"]).await;
    tls.write_all(handshake("leak_header=1").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(!head.contains(REAL), "{head}");
    assert!(head.contains(PLACEHOLDER), "{head}");
    let rec = h
        .sink
        .wait_for(&format!("https://{API}/ws?leak_header=1"))
        .await;
    assert!(!format!("{rec:?}").contains(REAL), "{rec:?}");
    // An upstream that turns on compression nobody offered is refused.
    let mut tls = h.tls(&format!("{API}:443"), API, &[b"http/1.1"]).await;
    tls.write_all(handshake("deflate=1").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(head.contains("websocket-handshake-failed"), "{head}");
}

async fn read_head(io: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(T, io.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "eof in head: {}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// An HTTP/2 session through a tunnel to `API` and an extended CONNECT (RFC 8441) for `path`
/// whose `:authority` is `authority`. The sender is returned so the session outlives the
/// response.
async fn h2_websocket(
    h: &Harness,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (
    http::Response<hyper::body::Incoming>,
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
) {
    let mut send = h2_connection(h).await;
    let resp = extended_connect(&mut send, authority, path, headers, "websocket").await;
    (resp, send)
}

/// An intercepted HTTP/2 connection to the test API host.
async fn h2_connection(h: &Harness) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tls = h.tls(&format!("{API}:443"), API, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// An extended CONNECT (RFC 8441) for `protocol` on an HTTP/2 connection.
async fn extended_connect(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
    protocol: &'static str,
) -> http::Response<hyper::body::Incoming> {
    let mut req = http::Request::connect(format!("https://{authority}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req.body(Full::new(Bytes::new())).unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static(protocol));
    tokio::time::timeout(T, send.send_request(req))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn websocket_over_h2_checks_the_run_and_the_protocol() {
    let (h, state) = setup(&[b"http/1.1"], true).await;
    let mut send = h2_connection(&h).await;
    let version = [("sec-websocket-version", "13")];
    // Only `websocket` is carried over extended CONNECT.
    let resp = extended_connect(&mut send, API, "/ws", &version, "connect-udp").await;
    assert_eq!(resp.status(), 501);
    assert_eq!(resp.headers()["x-moat-error"], "unsupported-protocol");
    // On a tunnel whose run has ended, nothing more goes through.
    assert!(h.proxy.remove_run(&h.token));
    let resp = extended_connect(&mut send, API, "/ws", &version, "websocket").await;
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-moat-blocked"], "run-ended");
    assert_eq!(state.hits.load(Ordering::SeqCst), 0);
}

/// A masked client text frame (RFC 6455 §5.2) carrying `payload` (under 126 bytes).
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test]
async fn websocket_over_h2_reaches_an_http1_upstream() {
    // The upstream offers h2 too; the WebSocket still goes to it as an HTTP/1.1 upgrade.
    let (h, state) = setup(&[b"h2", b"http/1.1"], false).await;
    let (resp, _send) = h2_websocket(
        &h,
        API,
        "/ws?x=1",
        &[
            ("sec-websocket-version", "13"),
            ("sec-websocket-protocol", "chat, superchat"),
            ("x-custom", "kept"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    assert!(resp.headers().get("x-moat-error").is_none());

    assert_eq!(state.hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        *state.last_version.lock().unwrap(),
        Some(http::Version::HTTP_11)
    );
    let seen = state.last_headers.lock().unwrap().clone();
    assert_eq!(seen["upgrade"], "websocket");
    assert!(
        seen["connection"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("upgrade")
    );
    assert_eq!(seen["sec-websocket-version"], "13");
    assert_eq!(seen["sec-websocket-protocol"], "chat, superchat");
    assert_eq!(seen["x-custom"], "kept");
    assert_eq!(seen["host"], API);
    let key = seen["sec-websocket-key"].to_str().unwrap();
    let raw = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(key)
            .unwrap()
    };
    assert_eq!(raw.len(), 16, "{key}");

    let mut io = TokioIo::new(
        tokio::time::timeout(T, hyper::upgrade::on(resp))
            .await
            .unwrap()
            .unwrap(),
    );
    let frame = masked_text_frame(b"hello over h2");
    echoes(&mut io, &[&frame[..], b"raw bytes", &[0u8, 1, 2, 255]]).await;
    let rec = h.sink.wait_for(&format!("https://{API}/ws?x=1")).await;
    assert_eq!(rec.status, Some(200));
    assert_eq!(rec.method, "GET");
    assert_eq!(rec.decision, moat_core::egress::RecordDecision::Allowed);
}

#[tokio::test]
async fn websocket_over_h2_from_credentialed_hosts_is_scrubbed() {
    let (h, state) = setup(&[b"http/1.1"], true).await;
    let (resp, _send) = h2_websocket(
        &h,
        API,
        "/ws?leak=1",
        &[
            ("sec-websocket-version", "13"),
            ("sec-websocket-extensions", "permessage-deflate"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    assert!(resp.headers().get("sec-websocket-extensions").is_none());
    // Compression was not offered upstream, and the credential was injected.
    assert_no_compression_and_real_credential(&state);
    let mut io = TokioIo::new(
        tokio::time::timeout(T, hyper::upgrade::on(resp))
            .await
            .unwrap()
            .unwrap(),
    );
    // The reflected token (sent in pieces) arrives masked, with its length preserved.
    let mut got = vec![0u8; REAL.len() + 1];
    tokio::time::timeout(T, io.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(!got.contains(REAL), "{got}");
    assert_eq!(got, format!("{};", &PLACEHOLDER[..REAL.len()]));
    // The echo still works after the scrubbed part (data ending in a possible start of the
    // secret, like a `g`, would be held back until more arrives).
    io.write_all(b"hello").await.unwrap();
    let mut got = [0u8; 5];
    tokio::time::timeout(T, io.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"hello");
    let rec = h.sink.wait_for(&format!("https://{API}/ws?leak=1")).await;
    assert_eq!(rec.status, Some(200));
    assert_eq!(rec.grant.as_deref(), Some("github"));
}

#[tokio::test]
async fn websocket_over_h2_naming_another_host_is_refused() {
    let (h, state) = setup(&[b"http/1.1"], true).await;
    let (resp, _send) = h2_websocket(&h, OTHER, "/ws", &[("sec-websocket-version", "13")]).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-moat-blocked"], "authority-mismatch");
    let body = body_text(resp).await;
    assert!(body.contains(OTHER), "{body}");
    assert_eq!(state.hits.load(Ordering::SeqCst), 0);
    let rec = h.sink.wait_for(&format!("https://{API}/ws")).await;
    assert_eq!(rec.status, Some(403));
    assert_eq!(rec.decision, moat_core::egress::RecordDecision::Denied);
    assert_eq!(rec.reason.as_deref(), Some("authority-mismatch"));
}

#[tokio::test]
async fn websocket_over_h2_obeys_path_rules_as_get() {
    use moat_core::egress::HostRules;
    use moat_core::egress::PathRule;
    use moat_core::egress::PolicyMode;
    use moat_core::host::HostPattern;
    let ca = TestCa::new();
    let (addr, state) = tls_upstream(&ca, &[API], &[b"http/1.1"]).await;
    let policy = EgressPolicy {
        mode: PolicyMode::Permissive,
        allow: vec![HostRules {
            pattern: HostPattern::parse(API).unwrap(),
            rules: vec![PathRule::parse("deny GET /ws").unwrap()],
        }],
    };
    let h = harness(policy, vec![], upstream_settings(&ca, &[API], addr)).await;
    let (resp, _send) = h2_websocket(&h, API, "/ws", &[("sec-websocket-version", "13")]).await;
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().contains_key("x-moat-blocked"));
    assert_eq!(state.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn websocket_over_h2_with_a_wrong_accept_is_a_bad_gateway() {
    let (h, state) = setup(&[b"http/1.1"], false).await;
    let (resp, _send) = h2_websocket(
        &h,
        API,
        "/ws?bad_accept=1",
        &[("sec-websocket-version", "13")],
    )
    .await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-moat-error"], "websocket-handshake-failed");
    let body = body_text(resp).await;
    assert!(body.contains("Sec-WebSocket-Accept"), "{body}");
    assert_eq!(state.hits.load(Ordering::SeqCst), 1);
    let rec = h
        .sink
        .wait_for(&format!("https://{API}/ws?bad_accept=1"))
        .await;
    assert_eq!(rec.status, Some(502));
    assert_eq!(rec.reason.as_deref(), Some("websocket-handshake-failed"));
}

#[tokio::test]
async fn websocket_over_h2_relays_refusals_but_never_a_2xx() {
    let (h, state) = setup(&[b"http/1.1"], true).await;
    // A 404 from the upstream reaches the client as is.
    let (resp, _send) = h2_websocket(&h, API, "/nope", &[("sec-websocket-version", "13")]).await;
    assert_eq!(resp.status(), 404);
    assert!(resp.headers().get("x-moat-error").is_none());
    assert_eq!(body_text(resp).await, "not found");
    // A 200 would open a tunnel to nothing on the client's CONNECT stream: a 502 instead.
    let (resp, _send) = h2_websocket(&h, API, "/reflect", &[("sec-websocket-version", "13")]).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-moat-error"], "websocket-handshake-failed");
    let body = body_text(resp).await;
    assert!(!body.contains(REAL), "{body}");
    assert_eq!(state.hits.load(Ordering::SeqCst), 2);
}

/// Each message written to an upgraded stream comes back unchanged from the echoing upstream.
async fn echoes(
    io: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    msgs: &[&[u8]],
) {
    for msg in msgs {
        io.write_all(msg).await.unwrap();
        io.flush().await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(T, io.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, msg);
    }
}

fn assert_no_compression_and_real_credential(state: &UpstreamState) {
    assert!(
        state
            .last_headers
            .lock()
            .unwrap()
            .get("sec-websocket-extensions")
            .is_none()
    );
    assert_eq!(state.seen_auth(), Some(format!("Bearer {REAL}")));
}
