use moat_core::egress::REDACTED;
use moat_core::egress::RecordDecision;

use crate::support::*;

async fn setup(alpn: &[&[u8]]) -> (Harness, std::sync::Arc<UpstreamState>) {
    upstream_harness(&[API, OTHER], alpn, vec![github_rule()]).await
}

fn with_auth(
    uri: &str,
    host: &str,
    auth: Option<&str>,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut r = get(uri, host);
    if let Some(a) = auth {
        r.headers_mut().insert("authorization", a.parse().unwrap());
    }
    r
}

async fn matrix(client_alpn: &[u8], upstream_alpn: &[&[u8]]) {
    let (h, state) = setup(upstream_alpn).await;
    let authority = format!("{API}:443");
    // Placeholder → replaced. (The upstream echoes headers; the proxy scrubs the real value
    // from the echo, so the upstream's own view is what is checked.)
    let resp = h
        .request(
            &authority,
            client_alpn,
            with_auth("/echo", API, Some(&format!("Bearer {PLACEHOLDER}"))),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body = body_text(resp).await;
    assert_eq!(state.seen_auth(), Some(format!("Bearer {REAL}")));
    assert!(!body.contains(REAL), "{body}");
    // No header → injected.
    let _ = body_text(
        h.request(&authority, client_alpn, with_auth("/echo", API, None))
            .await,
    )
    .await;
    assert_eq!(state.seen_auth(), Some(format!("Bearer {REAL}")));
    // Another real value → untouched.
    let body = body_text(
        h.request(
            &authority,
            client_alpn,
            with_auth("/echo", API, Some("Bearer ghp_userOwnToken")),
        )
        .await,
    )
    .await;
    assert!(
        body.contains("authorization: Bearer ghp_userOwnToken"),
        "{body}"
    );
    assert_eq!(
        state.seen_auth(),
        Some("Bearer ghp_userOwnToken".to_owned())
    );
    // Basic with the placeholder inside.
    let basic = format!(
        "Basic {}",
        moat_core::creds::base64_encode(format!("x-access-token:{PLACEHOLDER}").as_bytes())
    );
    let _ = body_text(
        h.request(
            &authority,
            client_alpn,
            with_auth("/echo", API, Some(&basic)),
        )
        .await,
    )
    .await;
    let want = format!(
        "Basic {}",
        moat_core::creds::base64_encode(format!("x-access-token:{REAL}").as_bytes())
    );
    assert_eq!(state.seen_auth(), Some(want));
    // A host without a grant gets nothing, not even with the placeholder.
    let other = format!("{OTHER}:443");
    let _ = body_text(
        h.request(
            &other,
            client_alpn,
            with_auth("/echo", OTHER, Some(&format!("Bearer {PLACEHOLDER}"))),
        )
        .await,
    )
    .await;
    assert_eq!(state.seen_auth(), Some(format!("Bearer {PLACEHOLDER}")));
    let _ = body_text(
        h.request(&other, client_alpn, with_auth("/echo", OTHER, None))
            .await,
    )
    .await;
    assert_eq!(state.seen_auth(), None);
    assert!(state.hits.load(std::sync::atomic::Ordering::SeqCst) >= 5);

    // Records: one per request, credential headers redacted, grant named.
    let rec = h.sink.wait_for(&format!("https://{API}/echo")).await;
    assert_eq!(rec.method, "GET");
    assert_eq!(rec.host, API);
    assert_eq!(rec.status, Some(200));
    assert_eq!(rec.decision, RecordDecision::Allowed);
    assert_eq!(rec.grant.as_deref(), Some("github"));
    assert_eq!(
        rec.req_headers.get("authorization").map(String::as_str),
        Some(REDACTED)
    );
    assert!(rec.resp_bytes > 0);
    let all = h.sink.all();
    let json = serde_json::to_string(&all).unwrap();
    assert!(!json.contains(REAL), "records leak the secret: {json}");
    assert!(
        !json.contains(h.token.expose()),
        "records leak the proxy token"
    );
}

#[tokio::test]
async fn injection_matrix_h1_client_h1_upstream() {
    matrix(b"http/1.1", &[b"http/1.1"]).await;
}

#[tokio::test]
async fn injection_matrix_h2_client_h2_upstream() {
    matrix(b"h2", &[b"h2"]).await;
}

#[tokio::test]
async fn injection_matrix_h2_client_h1_upstream() {
    matrix(b"h2", &[b"http/1.1"]).await;
}

#[tokio::test]
async fn injection_matrix_h1_client_h2_upstream() {
    matrix(b"http/1.1", &[b"h2", b"http/1.1"]).await;
}

#[tokio::test]
async fn upstream_protocol_is_negotiated_independently() {
    let (h, state) = setup(&[b"h2"]).await;
    let resp = h
        .request(&format!("{API}:443"), b"http/1.1", get("/echo", API))
        .await;
    assert_eq!(resp.status(), 200);
    let _ = body_text(resp).await;
    assert_eq!(
        *state.last_version.lock().unwrap(),
        Some(http::Version::HTTP_2)
    );
}

#[tokio::test]
async fn domain_fronting_is_refused_and_nothing_is_injected() {
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let (h, state) = setup(&[b"http/1.1"]).await;
        // Tunnel to the granted host, inner Host names another one.
        let resp = h
            .request(&format!("{API}:443"), alpn, get("/echo", OTHER))
            .await;
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()["x-moat-blocked"], "authority-mismatch");
        assert_eq!(state.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
        // Tunnel to a non-granted host, inner Host names the granted one.
        let resp = h
            .request(&format!("{OTHER}:443"), alpn, get("/echo", API))
            .await;
        assert_eq!(resp.status(), 403);
        assert_eq!(state.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
        // A different port in Host is a different authority too.
        let resp = h
            .request(
                &format!("{API}:443"),
                alpn,
                get("/echo", &format!("{API}:8443")),
            )
            .await;
        assert_eq!(resp.status(), 403);
        assert_eq!(state.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
        let rec = h.sink.wait_for(&format!("https://{API}/echo")).await;
        assert_eq!(rec.decision, RecordDecision::Denied);
        assert_eq!(rec.reason.as_deref(), Some("authority-mismatch"));
    }
}

#[tokio::test]
async fn h2_authority_must_match() {
    let (h, state) = setup(&[b"http/1.1"]).await;
    let req = http::Request::get(format!("https://{OTHER}/echo"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = h.request(&format!("{API}:443"), b"h2", req).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(state.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn sni_mismatch_aborts_the_handshake() {
    let (h, state) = setup(&[b"http/1.1"]).await;
    let (code, tcp, _) = h.connect(&format!("{API}:443")).await;
    assert_eq!(code, 200);
    assert!(
        tls_connect(tcp, OTHER, &h.ca_der, &[b"http/1.1"])
            .await
            .is_err()
    );
    assert_eq!(state.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn keep_alive_serves_many_requests_per_tunnel() {
    let (h, state) = setup(&[b"h2", b"http/1.1"]).await;
    let tls = h.tls(&format!("{API}:443"), API, &[b"http/1.1"]).await;
    let io = hyper_util::rt::TokioIo::new(tls);
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    for _ in 0..20 {
        let resp = send.send_request(get("/echo", API)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let _ = body_text(resp).await;
        assert_eq!(state.seen_auth(), Some(format!("Bearer {REAL}")));
    }
}

#[tokio::test]
async fn several_runs_share_one_proxy() {
    let (h, _state) = setup(&[b"http/1.1"]).await;
    let ca2 = std::sync::Arc::new(moat_proxy::CertificateAuthority::generate().unwrap());
    let token2 = moat_proxy::generate_token();
    let sink2 = std::sync::Arc::new(MemorySink::default());
    h.proxy
        .add_run(moat_proxy::RunContext::new(
            token2.clone(),
            ca2.clone(),
            sink2.clone(),
        ))
        .unwrap();
    assert!(
        h.proxy
            .add_run(moat_proxy::RunContext::new(
                token2.clone(),
                ca2.clone(),
                sink2.clone()
            ))
            .is_err()
    );
    // The second run has no credentials: nothing is injected, and its records are its own.
    let h2 = Harness {
        proxy: h.proxy,
        token: token2.clone(),
        sink: sink2.clone(),
        ca_pem: ca2.cert_pem().to_owned(),
        ca_der: ca2.cert_der().clone(),
    };
    let body = body_text(
        h2.request(&format!("{API}:443"), b"http/1.1", get("/echo", API))
            .await,
    )
    .await;
    assert!(!body.contains(REAL), "{body}");
    let rec = sink2.wait_for(&format!("https://{API}/echo")).await;
    assert_eq!(rec.grant, None);
    assert!(h.sink.all().is_empty());
    // An open tunnel of a removed run stops serving at once.
    let tls = h2.tls(&format!("{API}:443"), API, &[b"http/1.1"]).await;
    let io = hyper_util::rt::TokioIo::new(tls);
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let resp = send.send_request(get("/echo", API)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = body_text(resp).await;
    assert!(h2.proxy.remove_run(&token2));
    let resp = send.send_request(get("/echo", API)).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-moat-blocked"], "run-ended");
    let (code, _, _) = h2.connect(&format!("{API}:443")).await;
    assert_eq!(code, 407);
    h2.proxy.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_dedicated_proxy_thread_serves_and_shuts_down() {
    let ca = TestCa::new();
    let (addr, state) = tls_upstream(&ca, &[API], &[b"h2", b"http/1.1"]).await;
    let run_ca = std::sync::Arc::new(moat_proxy::CertificateAuthority::generate().unwrap());
    let token = moat_proxy::generate_token();
    let sink = std::sync::Arc::new(MemorySink::default());
    let run = moat_proxy::RunContext::new(token.clone(), run_ca.clone(), sink.clone())
        .with_credentials(std::sync::Arc::new(moat_proxy::StaticCredentials::new(
            vec![github_rule()],
        )));
    let proxy = moat_proxy::ProxyBuilder::new("127.0.0.1:0".parse().unwrap())
        .upstream(upstream_settings(&ca, &[API], addr))
        .run(run)
        .start_dedicated()
        .await
        .unwrap();
    let h = Harness {
        proxy,
        token,
        sink,
        ca_pem: run_ca.cert_pem().to_owned(),
        ca_der: run_ca.cert_der().clone(),
    };
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let resp = h
            .request(&format!("{API}:443"), alpn, get("/echo", API))
            .await;
        assert_eq!(resp.status(), 200);
        let _ = body_text(resp).await;
        assert_eq!(state.seen_auth(), Some(format!("Bearer {REAL}")));
    }
    let addr = h.proxy.local_addr();
    tokio::time::timeout(T, h.proxy.shutdown(std::time::Duration::from_secs(5)))
        .await
        .unwrap();
    // Nothing is served any more.
    if let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await {
        use tokio::io::AsyncReadExt;
        use tokio::io::AsyncWriteExt;
        let _ = tcp.write_all(b"CONNECT a:443 HTTP/1.1\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(T, tcp.read_to_end(&mut out)).await;
        assert!(out.is_empty());
    }
}
