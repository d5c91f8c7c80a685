use crate::support::*;

async fn setup() -> Harness {
    upstream_harness(&[API], &[b"h2", b"http/1.1"], vec![github_rule()])
        .await
        .0
}

fn req(
    path: &str,
    accept_encoding: Option<&str>,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut r = get(path, API);
    if let Some(ae) = accept_encoding {
        r.headers_mut()
            .insert("accept-encoding", ae.parse().unwrap());
    }
    r
}

#[tokio::test]
async fn reflected_token_is_scrubbed_from_headers_and_bodies() {
    let h = setup().await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        for (path, ae) in [
            ("/reflect", None),
            ("/reflect?mode=split", None),
            ("/reflect?mode=gzip", Some("gzip, br")),
        ] {
            let resp = h.request(&format!("{API}:443"), alpn, req(path, ae)).await;
            assert_eq!(resp.status(), 200, "{path}");
            assert!(
                resp.headers().get("content-encoding").is_none(),
                "{path}: decoded for the client"
            );
            for (k, v) in resp.headers() {
                assert!(
                    !String::from_utf8_lossy(v.as_bytes()).contains(REAL),
                    "{path}: header {k} leaks"
                );
            }
            let body = body_text(resp).await;
            assert!(!body.contains(REAL), "{path}: body leaks: {body}");
            assert!(
                body.contains(&format!("token={PLACEHOLDER};end")),
                "{path}: {body}"
            );
        }
    }
}

#[tokio::test]
async fn unreadable_encodings_are_refused_for_credentialed_hosts() {
    let h = setup().await;
    let resp = h
        .request(
            &format!("{API}:443"),
            b"http/1.1",
            req("/reflect?mode=br", Some("br")),
        )
        .await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-moat-error"], "unscrubbable-encoding");
    assert!(!body_text(resp).await.contains(REAL));
}

#[tokio::test]
async fn accept_encoding_is_restricted_for_credentialed_hosts() {
    let h = setup().await;
    let body = body_text(
        h.request(
            &format!("{API}:443"),
            b"http/1.1",
            req("/echo", Some("br, zstd, gzip")),
        )
        .await,
    )
    .await;
    assert!(body.contains("accept-encoding: gzip\n"), "{body}");
    let body = body_text(
        h.request(&format!("{API}:443"), b"h2", req("/echo", Some("br")))
            .await,
    )
    .await;
    assert!(body.contains("accept-encoding: identity\n"), "{body}");
}

#[tokio::test]
async fn basic_encoded_credentials_are_scrubbed_too() {
    let mut rule = github_rule();
    rule.format = moat_core::creds::InjectionFormat::Basic {
        username: "x-access-token".into(),
    };
    let (h, state) = upstream_harness(&[API], &[b"http/1.1"], vec![rule]).await;
    // The upstream echoes every request header, including the injected Basic credential.
    let body = body_text(
        h.request(&format!("{API}:443"), b"h2", get("/echo", API))
            .await,
    )
    .await;
    let real_b64 = moat_core::creds::base64_encode(format!("x-access-token:{REAL}").as_bytes());
    let ph_b64 =
        moat_core::creds::base64_encode(format!("x-access-token:{PLACEHOLDER}").as_bytes());
    assert_eq!(state.seen_auth(), Some(format!("Basic {real_b64}")));
    assert!(!body.contains(&real_b64), "{body}");
    assert!(
        body.contains(&format!("authorization: Basic {ph_b64}")),
        "{body}"
    );
}

#[tokio::test]
async fn scrubbed_bodies_carry_their_new_length() {
    // A placeholder shorter than the real value: a scrubbed body of known length must not be
    // sent with the upstream's Content-Length, on either client protocol.
    let mut rule = github_rule();
    rule.placeholder = "short-ph".into();
    let (h, _) = upstream_harness(&[API], &[b"h2", b"http/1.1"], vec![rule]).await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let resp = h
            .request(&format!("{API}:443"), alpn, get("/reflect", API))
            .await;
        assert_eq!(resp.status(), 200);
        let length = resp
            .headers()
            .get("content-length")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = body_text(resp).await;
        assert_eq!(body, "token=short-ph;end");
        assert_eq!(length, Some(body.len().to_string()));
    }
}
