use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::BodyExt;
use moat_core::egress::EgressPolicy;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use crate::support::*;

async fn setup(alpn: &[&[u8]], rules: bool) -> (Harness, std::sync::Arc<UpstreamState>) {
    let ca = TestCa::new();
    let (addr, state) = tls_upstream(&ca, &[API], alpn).await;
    let rules = if rules { vec![github_rule()] } else { vec![] };
    let h = harness(
        EgressPolicy::default(),
        rules,
        upstream_settings(&ca, &[API], addr),
    )
    .await;
    (h, state)
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
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(T, tls.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "eof in head: {}", String::from_utf8_lossy(&head));
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"hello"[..], b"second frame", &[0u8, 1, 2, 255]] {
        tls.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(T, tls.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg);
    }
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
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(T, tls.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1);
        head.push(b[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"));
    // Compression was not offered upstream, and the credential was injected.
    assert!(
        state
            .last_headers
            .lock()
            .unwrap()
            .get("sec-websocket-extensions")
            .is_none()
    );
    assert_eq!(state.seen_auth(), Some(format!("Bearer {REAL}")));
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
