//! Random request heads against a live proxy: whatever arrives, no task panics and the proxy
//! keeps serving.

use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use moat_core::egress::EgressPolicy;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::Config;
use proptest::test_runner::TestRunner;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

use crate::support::*;

/// Panics on tokio worker threads. Only this test runs a multi-threaded runtime in this
/// binary, so these can only come from the proxy under test.
static WORKER_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_worker_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Worker threads are named `tokio-runtime-worker` or `tokio-rt-worker` depending
            // on the tokio version.
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("tokio-"))
            {
                WORKER_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

fn head() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        Just("CONNECT".to_owned()),
        Just("GET".to_owned()),
        Just("POST".to_owned()),
        "[A-Z]{0,8}",
        "\\PC{0,6}",
    ];
    let target = prop_oneof![
        Just(format!("{API}:443")),
        Just("http://plain.example.test/x".to_owned()),
        "[a-z0-9.:\\[\\]@/%*-]{0,40}",
        "\\PC{0,40}",
    ];
    let version = prop_oneof![
        Just("HTTP/1.1"),
        Just("HTTP/1.0"),
        Just("HTTP/2.0"),
        Just("HTTP/9"),
        Just(""),
    ];
    let header = (
        prop_oneof![
            Just("Host".to_owned()),
            Just("Proxy-Authorization".to_owned()),
            Just("Content-Length".to_owned()),
            Just("Transfer-Encoding".to_owned()),
            Just("Connection".to_owned()),
            "[A-Za-z-]{1,12}",
            "\\PC{0,8}",
        ],
        proptest::collection::vec(any::<u8>(), 0..40),
    );
    (
        method,
        target,
        version,
        proptest::collection::vec(header, 0..6),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(m, t, v, headers, auth, tail)| {
            let mut out = format!("{m} {t} {v}\r\n").into_bytes();
            if auth {
                out.extend_from_slice(b"Proxy-Authorization: AUTH\r\n");
            }
            for (name, value) in headers {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(&value);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&tail);
            out
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_request_heads_never_panic_the_proxy() {
    count_worker_panics();
    let limits = moat_proxy::Limits {
        handshake_timeout: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let h = Arc::new(
        harness_with(
            EgressPolicy::default(),
            vec![github_rule()],
            Default::default(),
            limits,
        )
        .await,
    );
    let auth = h.auth();
    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    let cases: Vec<Vec<u8>> = (0..96)
        .map(|_| head().new_tree(&mut runner).unwrap().current())
        .collect();
    let mut tasks = Vec::new();
    for case in cases {
        let addr = h.proxy.local_addr();
        let case = String::from_utf8_lossy(&case)
            .replace("AUTH", &auth)
            .into_bytes();
        tasks.push(tokio::spawn(async move {
            let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
                return;
            };
            let _ = tcp.write_all(&case).await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        WORKER_PANICS.load(Ordering::SeqCst),
        0,
        "a proxy task panicked"
    );
    let (code, _, head) = h.connect(&format!("{API}:443")).await;
    assert_eq!(code, 200, "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_inside_a_tunnel_never_panic_the_proxy() {
    count_worker_panics();
    let ca = TestCa::new();
    let (addr, _) = tls_upstream(&ca, &[API], &[b"http/1.1"]).await;
    let limits = moat_proxy::Limits {
        header_read_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let h = Arc::new(
        harness_with(
            EgressPolicy::default(),
            vec![github_rule()],
            upstream_settings(&ca, &[API], addr),
            limits,
        )
        .await,
    );
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let case = head().new_tree(&mut runner).unwrap().current();
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let mut tls = h.tls(&format!("{API}:443"), API, &[b"http/1.1"]).await;
            let _ = tls.write_all(&case).await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut sink)).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        WORKER_PANICS.load(Ordering::SeqCst),
        0,
        "a proxy task panicked"
    );
    let resp = h
        .request(&format!("{API}:443"), b"h2", get("/echo", API))
        .await;
    assert_eq!(resp.status(), 200);
}
