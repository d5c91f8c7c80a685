use std::sync::Arc;

use moat_proxy::CertificateAuthority;

use crate::support::*;

#[tokio::test]
async fn ten_thousand_hosts_keep_the_leaf_cache_bounded() {
    let ca = Arc::new(CertificateAuthority::with_cache_capacity(500).unwrap());
    for i in 0..10_000 {
        ca.server_config(&format!("host{i}.example.test"))
            .await
            .unwrap();
        assert!(ca.cached_leaves() <= 500);
    }
    // Evicted hosts are minted again and still usable.
    ca.server_config("host0.example.test").await.unwrap();
}

#[tokio::test]
async fn leaves_verify_against_the_ca_for_names_and_ips() {
    let ca = TestCa::new();
    let (addr, _) = tls_upstream(&ca, &[API], &[b"http/1.1"]).await;
    let h = harness(
        Default::default(),
        vec![],
        upstream_settings(&ca, &[API], addr),
    )
    .await;
    // rustls verification against the run CA succeeds (name SAN).
    let _tls = h.tls(&format!("{API}:443"), API, &[b"http/1.1"]).await;
    // A client trusting a different CA fails.
    let other = Arc::new(CertificateAuthority::generate().unwrap());
    let (code, tcp, _) = h.connect(&format!("{API}:443")).await;
    assert_eq!(code, 200);
    assert!(
        tls_connect(tcp, API, other.cert_der(), &[b"http/1.1"])
            .await
            .is_err()
    );
    // The failed handshake is recorded, so `moat trace` can say why the client gave up.
    let rec = h.sink.wait_for(&format!("https://{API}")).await;
    assert_eq!(rec.reason.as_deref(), Some("client-tls-failed"));
    assert_eq!(rec.status, None);
    assert!(h.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
}
