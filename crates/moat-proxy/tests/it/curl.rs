//! System curl through the proxy, trusting only the run CA.

use moat_core::egress::EgressPolicy;

use crate::support::*;

async fn curl(h: &Harness, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &h.ca_pem).unwrap();
    let proxy = h.proxy.proxy_url(&h.token);
    let out = tokio::time::timeout(
        T,
        tokio::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "--proxy",
                proxy.expose(),
                "--cacert",
            ])
            .arg(&ca)
            .args(args)
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output(),
    )
    .await
    .unwrap()
    .expect("system curl must be on PATH for this test");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn curl_gets_the_credential_injected_over_both_protocols() {
    let (h, state) =
        upstream_harness(&[API, OTHER], &[b"h2", b"http/1.1"], vec![github_rule()]).await;
    for proto in ["--http1.1", "--http2"] {
        let (code, out, err) = curl(
            &h,
            &[
                proto,
                "-H",
                &format!("Authorization: Bearer {PLACEHOLDER}"),
                &format!("https://{API}/echo"),
            ],
        )
        .await;
        assert_eq!(code, 0, "{proto}: {err}");
        assert!(!out.contains(REAL), "{proto}: {out}");
        assert_eq!(state.seen_auth(), Some(format!("Bearer {REAL}")), "{proto}");
        // The reflected token comes back scrubbed.
        let (code, out, err) = curl(
            &h,
            &[
                proto,
                "--compressed",
                &format!("https://{API}/reflect?mode=gzip"),
            ],
        )
        .await;
        assert_eq!(code, 0, "{proto}: {err}");
        assert!(!out.contains(REAL), "{proto}: {out}");
        assert!(out.contains(PLACEHOLDER), "{proto}: {out}");
    }
    // Another host gets nothing.
    let (code, out, err) = curl(&h, &[&format!("https://{OTHER}/echo")]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.to_ascii_lowercase().contains("authorization"), "{out}");
    assert_eq!(state.seen_auth(), None);
    assert!(state.hits.load(std::sync::atomic::Ordering::SeqCst) >= 5);
    // Domain fronting with curl: tunnel to API, Host header says OTHER.
    let (code, out, err) = curl(
        &h,
        &[
            "-H",
            &format!("Host: {OTHER}"),
            "-i",
            &format!("https://{API}/echo"),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.to_ascii_lowercase()
            .contains("x-moat-blocked: authority-mismatch"),
        "{out}"
    );
}

#[tokio::test]
async fn curl_sees_denials_with_a_reason() {
    let h = harness(
        EgressPolicy {
            mode: moat_core::egress::PolicyMode::Strict,
            allow: vec![],
        },
        vec![],
        Default::default(),
    )
    .await;
    let (code, _out, err) = curl(&h, &["https://blocked.example.test/"]).await;
    // curl reports the refused CONNECT (exit 56) and shows the status.
    assert_ne!(code, 0);
    assert!(err.contains("403"), "{err}");
}

/// Python's standard library (urllib) through `HTTPS_PROXY` with userinfo and the run CA in
/// `SSL_CERT_FILE`, as a container would use it: no flags.
#[tokio::test]
async fn python_urllib_works_through_the_proxy_environment() {
    let (h, state) = upstream_harness(&[API], &[b"http/1.1"], vec![github_rule()]).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &h.ca_pem).unwrap();
    let script = format!(
        "import urllib.request\n\
         req = urllib.request.Request('https://{API}/echo', headers={{'Authorization': 'Bearer {PLACEHOLDER}'}})\n\
         print(urllib.request.urlopen(req, timeout=20).read().decode())\n"
    );
    let out = tokio::time::timeout(
        T,
        tokio::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .env("HTTPS_PROXY", h.proxy.proxy_url(&h.token).expose())
            .env("SSL_CERT_FILE", &ca_path)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env_remove("https_proxy")
            .output(),
    )
    .await
    .unwrap()
    .expect("python3 must be on PATH for this test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("body-len: 0"), "{stdout}");
    assert!(!stdout.contains(REAL), "{stdout}");
    assert_eq!(state.seen_auth(), Some(format!("Bearer {REAL}")));
}
