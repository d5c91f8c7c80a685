use std::sync::atomic::Ordering;

use moat_core::egress::EgressPolicy;
use moat_core::egress::HostRules;
use moat_core::egress::PathRule;
use moat_core::egress::PolicyMode;
use moat_core::egress::RecordDecision;
use moat_core::host::HostPattern;
use tokio::io::AsyncWriteExt;

use crate::support::*;

#[tokio::test]
async fn proxy_authentication_is_required() {
    let h = harness(EgressPolicy::default(), vec![], Default::default()).await;
    let unauth = std::sync::Arc::new(MemorySink::default());
    let other = moat_proxy::ProxyBuilder::new("127.0.0.1:0".parse().unwrap())
        .unauthenticated_sink(unauth.clone())
        .start()
        .await
        .unwrap();
    let mut tcp = tokio::net::TcpStream::connect(other.local_addr())
        .await
        .unwrap();
    tcp.write_all(
        format!(
            "CONNECT {API}:443 HTTP/1.1\r\nProxy-Authorization: Basic bW9hdDp3cm9uZw==\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(status_code(&read_head(&mut tcp).await), 407);
    let rec = unauth
        .all()
        .pop()
        .expect("unauthenticated attempt recorded");
    assert_eq!(rec.method, "CONNECT");
    assert_eq!(rec.host, API);
    assert_eq!(rec.decision, RecordDecision::Denied);
    assert_eq!(
        rec.req_headers
            .get("proxy-authorization")
            .map(String::as_str),
        Some(moat_core::egress::REDACTED)
    );
    for auth in [
        None,
        Some("Basic bW9hdDp3cm9uZw==".to_owned()), // moat:wrong
        Some(format!(
            "Basic {}",
            moat_core::creds::base64_encode(format!("other:{}", h.token.expose()).as_bytes())
        )),
        Some("Bearer x".to_owned()),
        Some("Basic !!!".to_owned()),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(h.proxy.local_addr())
            .await
            .unwrap();
        let mut req = format!("CONNECT {API}:443 HTTP/1.1\r\nHost: {API}:443\r\n");
        if let Some(a) = &auth {
            req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut tcp).await;
        assert_eq!(status_code(&head), 407, "{auth:?}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("proxy-authenticate: basic"),
            "{head}"
        );
    }
}

fn strict(entries: &[(&str, &[&str])]) -> EgressPolicy {
    EgressPolicy {
        mode: PolicyMode::Strict,
        allow: entries
            .iter()
            .map(|(h, rules)| HostRules {
                pattern: HostPattern::parse(h).unwrap(),
                rules: rules.iter().map(|r| PathRule::parse(r).unwrap()).collect(),
            })
            .collect(),
    }
}

#[tokio::test]
async fn strict_policy_refuses_unlisted_hosts_at_connect() {
    let ca = TestCa::new();
    let (addr, state) = tls_upstream(&ca, &[API, OTHER], &[b"http/1.1"]).await;
    let h = harness(
        strict(&[("listed.example.test", &[])]),
        vec![github_rule()],
        upstream_settings(&ca, &[API, OTHER, "listed.example.test"], addr),
    )
    .await;
    let (code, mut tcp, head) = h.connect(&format!("{OTHER}:443")).await;
    assert_eq!(code, 403, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-moat-blocked: host-not-allowed"),
        "{head}"
    );
    let mut body = vec![0u8; 512];
    let n = tokio::time::timeout(T, tokio::io::AsyncReadExt::read(&mut tcp, &mut body))
        .await
        .unwrap()
        .unwrap();
    let body = String::from_utf8_lossy(&body[..n]).into_owned();
    assert!(body.contains(OTHER) && body.contains("allow:"), "{body}");
    let rec = h.sink.wait_for(&format!("https://{OTHER}")).await;
    assert_eq!(rec.method, "CONNECT");
    assert_eq!(rec.decision, RecordDecision::Denied);
    assert_eq!(rec.status, Some(403));
    // The host of a granted credential is reachable under strict policy.
    let resp = h
        .request(&format!("{API}:443"), b"http/1.1", get("/echo", API))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(state.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn path_rules_apply_inside_the_tunnel() {
    let ca = TestCa::new();
    let (addr, state) = tls_upstream(&ca, &[API], &[b"http/1.1"]).await;
    let h = harness(
        strict(&[(API, &["deny * /reflect", "allow GET /echo"])]),
        vec![],
        upstream_settings(&ca, &[API], addr),
    )
    .await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let resp = h
            .request(&format!("{API}:443"), alpn, get("/echo?x=1", API))
            .await;
        assert_eq!(resp.status(), 200);
        let resp = h
            .request(&format!("{API}:443"), alpn, get("/reflect", API))
            .await;
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()["x-moat-blocked"], "path-not-allowed");
        let body = body_text(resp).await;
        assert!(body.contains("deny * /reflect"), "{body}");
        let post = http::Request::post("/echo")
            .header("host", API)
            .body(Default::default())
            .unwrap();
        let resp = h.request(&format!("{API}:443"), alpn, post).await;
        assert_eq!(resp.status(), 403);
        assert!(body_text(resp).await.contains("allow POST /echo"));
    }
    assert_eq!(state.hits.load(Ordering::SeqCst), 2);
    let rec = h.sink.wait_for(&format!("https://{API}/reflect")).await;
    assert_eq!(rec.reason.as_deref(), Some("path-not-allowed"));
}

#[tokio::test]
async fn destination_guard_refuses_internal_addresses() {
    let ca = TestCa::new();
    let (addr, state) = tls_upstream(&ca, &["localhost", "127.0.0.1"], &[b"http/1.1"]).await;
    // No resolve override: `localhost` and 127.0.0.1 must be refused after resolution.
    let settings = moat_proxy::UpstreamSettings {
        extra_roots: vec![ca.cert.clone()],
        webpki_roots: false,
        ..Default::default()
    };
    let h = harness(EgressPolicy::default(), vec![], settings).await;
    for host in ["localhost", "127.0.0.1"] {
        let authority = format!("{host}:{}", addr.port());
        let resp = h
            .request(&authority, b"http/1.1", get("/echo", &authority))
            .await;
        assert_eq!(resp.status(), 403, "{host}");
        assert_eq!(resp.headers()["x-moat-blocked"], "destination-not-allowed");
    }
    // Plain HTTP too.
    let (paddr, pstate) = plain_upstream().await;
    let mut tcp = tokio::net::TcpStream::connect(h.proxy.local_addr())
        .await
        .unwrap();
    let req = format!(
        "GET http://127.0.0.1:{}/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nProxy-Authorization: {}\r\n\r\n",
        paddr.port(),
        h.auth()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert_eq!(status_code(&head), 403, "{head}");
    assert_eq!(state.hits.load(Ordering::SeqCst), 0);
    assert_eq!(pstate.hits.load(Ordering::SeqCst), 0);

    // An explicit allowance lets the same address through.
    let settings = moat_proxy::UpstreamSettings {
        extra_roots: vec![ca.cert.clone()],
        webpki_roots: false,
        allowed_destinations: vec!["127.0.0.0/8".parse().unwrap()],
        ..Default::default()
    };
    let h = harness(EgressPolicy::default(), vec![], settings).await;
    let authority = format!("127.0.0.1:{}", addr.port());
    let resp = h
        .request(&authority, b"http/1.1", get("/echo", &authority))
        .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn credentials_go_only_over_verified_tls() {
    // An impostor with a valid-looking certificate for the host, from a CA the proxy does
    // not trust: no request reaches it, so no credential does.
    let impostor_ca = TestCa::new();
    let (addr, state) = tls_upstream(&impostor_ca, &[API], &[b"h2", b"http/1.1"]).await;
    let trusted_ca = TestCa::new();
    let h = harness(
        EgressPolicy::default(),
        vec![github_rule()],
        upstream_settings(&trusted_ca, &[API], addr),
    )
    .await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let resp = h
            .request(&format!("{API}:443"), alpn, get("/echo", API))
            .await;
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()["x-moat-error"], "upstream-tls");
    }
    assert_eq!(state.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(state.seen_auth(), None);
}

#[tokio::test]
async fn proxy_failures_are_told_apart_from_upstream_answers() {
    let ca = TestCa::new();
    let (addr, _state) = tls_upstream(&ca, &["wrong.example.test"], &[b"http/1.1"]).await;
    let closed = {
        // Bound but never listening: the port stays reserved and connections are refused.
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let a = s.local_addr().unwrap();
        (s, a)
    };
    let (_reserved, closed) = closed;
    let settings = upstream_settings(&ca, &[API], addr).resolve("down.example.test", 443, closed);
    let h = harness(EgressPolicy::default(), vec![], settings).await;
    // Certificate does not name the host.
    let resp = h
        .request(&format!("{API}:443"), b"http/1.1", get("/echo", API))
        .await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-moat-error"], "upstream-tls");
    // Nothing listens.
    let resp = h
        .request(
            "down.example.test:443",
            b"h2",
            get("/echo", "down.example.test"),
        )
        .await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-moat-error"], "connect-failed");
    // An upstream 404 carries no moat header.
    let ca2 = TestCa::new();
    let (addr2, _) = tls_upstream(&ca2, &[API], &[b"http/1.1"]).await;
    let h = harness(
        EgressPolicy::default(),
        vec![],
        upstream_settings(&ca2, &[API], addr2),
    )
    .await;
    let resp = h
        .request(&format!("{API}:443"), b"http/1.1", get("/nope", API))
        .await;
    assert_eq!(resp.status(), 404);
    assert!(resp.headers().get("x-moat-error").is_none());
}

#[tokio::test]
async fn plain_http_is_forwarded_without_credentials() {
    let (paddr, pstate) = plain_upstream().await;
    let mut rule = github_rule();
    rule.hosts
        .push(HostPattern::parse(&format!("plain.example.test:{}", paddr.port())).unwrap());
    rule.hosts
        .push(HostPattern::parse("plain.example.test").unwrap());
    let settings =
        moat_proxy::UpstreamSettings::default().resolve("plain.example.test", paddr.port(), paddr);
    let h = harness(EgressPolicy::default(), vec![rule], settings).await;
    let mut tcp = tokio::net::TcpStream::connect(h.proxy.local_addr())
        .await
        .unwrap();
    let url = format!("http://plain.example.test:{}/echo", paddr.port());
    let req = format!(
        "GET {url} HTTP/1.1\r\nHost: plain.example.test\r\nAuthorization: Bearer {PLACEHOLDER}\r\nProxy-Authorization: {}\r\n\r\n",
        h.auth()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert_eq!(status_code(&head), 200, "{head}");
    let mut body = vec![0u8; 4096];
    let n = tokio::time::timeout(T, tokio::io::AsyncReadExt::read(&mut tcp, &mut body))
        .await
        .unwrap()
        .unwrap();
    let body = String::from_utf8_lossy(&body[..n]).into_owned();
    assert!(!body.contains(REAL), "{body}");
    assert!(body.contains(PLACEHOLDER), "{body}");
    assert!(
        !body.to_ascii_lowercase().contains("proxy-authorization"),
        "{body}"
    );
    assert_eq!(pstate.hits.load(Ordering::SeqCst), 1);
    let rec = h.sink.wait_for(&url).await;
    assert_eq!(rec.grant, None);
    assert_eq!(rec.status, Some(200));
}

#[tokio::test]
async fn silent_upstreams_time_out_with_504() {
    // Accepts TCP connections and never says anything.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let settings = moat_proxy::UpstreamSettings {
        tls_handshake_timeout: std::time::Duration::from_secs(1),
        ..Default::default()
    }
    .resolve(API, 443, addr);
    let h = harness(EgressPolicy::default(), vec![], settings).await;
    let resp = h
        .request(&format!("{API}:443"), b"http/1.1", get("/echo", API))
        .await;
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-moat-error"], "upstream-timeout");
    let rec = h.sink.wait_for(&format!("https://{API}/echo")).await;
    assert_eq!(rec.status, Some(504));
    assert_eq!(rec.reason.as_deref(), Some("upstream-timeout"));
}

#[tokio::test]
async fn plain_http_obeys_strict_policy() {
    let (paddr, pstate) = plain_upstream().await;
    let settings = moat_proxy::UpstreamSettings::default()
        .resolve("plain.example.test", paddr.port(), paddr)
        .resolve("listed.example.test", paddr.port(), paddr);
    let h = harness(
        strict(&[(&format!("listed.example.test:{}", paddr.port()), &[])]),
        vec![],
        settings,
    )
    .await;
    for (host, want) in [("plain.example.test", 403), ("listed.example.test", 200)] {
        let mut tcp = tokio::net::TcpStream::connect(h.proxy.local_addr())
            .await
            .unwrap();
        let req = format!(
            "GET http://{host}:{}/echo HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: {}\r\n\r\n",
            paddr.port(),
            h.auth()
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let head = read_head(&mut tcp).await;
        assert_eq!(status_code(&head), want, "{host}: {head}");
    }
    assert_eq!(pstate.hits.load(Ordering::SeqCst), 1);
}
