//! The proxy in front of a real OpenSSH `ssh-agent`, driven by the real `ssh-add` and by
//! hand-built session bindings signed with real host keys.

use std::ffi::OsStr;

use moat_ssh::AgentClient;
use moat_ssh::KnownHosts;
use moat_ssh::SshEvent;
use moat_ssh::SshGrant;
use moat_ssh::event::Decision;
use moat_ssh::grants::KeySelector;
use moat_ssh::grants::build_grant;
use moat_ssh::protocol::Response;
use moat_ssh::protocol::SignRequest;
use moat_ssh::protocol::sign_flags;
use moat_ssh::protocol::signature_algorithm;

use crate::support::KeyFile;
use crate::support::RealAgent;
use crate::support::TIMEOUT;
use crate::support::random_session_id;
use crate::support::session_bind;
use crate::support::session_bind_with_flags;
use crate::support::ssh_add;
use crate::support::start_proxy;
use crate::support::userauth;

struct Fixture {
    dir: tempfile::TempDir,
    user_agent: RealAgent,
    host_agent: RealAgent,
    user_ed: KeyFile,
    user_rsa: KeyFile,
    github_host: KeyFile,
    other_host: KeyFile,
    known_hosts: KnownHosts,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let user_agent = RealAgent::start(dir.path(), "user-agent.sock").await;
    let host_agent = RealAgent::start(dir.path(), "host-agent.sock").await;
    let user_ed = KeyFile::generate(dir.path(), "user_ed25519", "ed25519").await;
    let user_rsa = KeyFile::generate(dir.path(), "user_rsa", "rsa").await;
    let github_host = KeyFile::generate(dir.path(), "github_host", "ed25519").await;
    let other_host = KeyFile::generate(dir.path(), "other_host", "ed25519").await;
    user_agent.add(&user_ed).await;
    user_agent.add(&user_rsa).await;
    host_agent.add(&github_host).await;
    host_agent.add(&other_host).await;
    let known_hosts = KnownHosts::parse(&format!(
        "github.test {}\nother.test {}\n",
        github_host.openssh(),
        other_host.openssh()
    ));
    Fixture {
        dir,
        user_agent,
        host_agent,
        user_ed,
        user_rsa,
        github_host,
        other_host,
        known_hosts,
    }
}

async fn grant(f: &Fixture, host: &str, key: &KeyFile) -> SshGrant {
    let identities = f
        .user_agent
        .client()
        .await
        .list_identities()
        .await
        .expect("list");
    assert_eq!(identities.len(), 2, "the user's agent holds both keys");
    let selector = KeySelector::Fingerprint(key.public.fingerprint());
    build_grant(
        host.parse().expect("host"),
        &identities,
        Some(&selector),
        &f.known_hosts,
    )
    .expect("grant")
}

fn sign_events(events: &[SshEvent]) -> Vec<(Decision, Option<String>)> {
    events
        .iter()
        .filter_map(|e| match e {
            SshEvent::Sign(s) => Some((s.decision, s.host.as_ref().map(ToString::to_string))),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn ssh_add_lists_only_the_granted_key() {
    let f = fixture().await;
    let grants = vec![grant(&f, "github.test", &f.user_ed).await];
    let (proxy, sink) = start_proxy(f.dir.path(), &f.user_agent.socket, grants).await;
    assert!(proxy.missing_keys().is_empty());

    let out = ssh_add(proxy.socket_path(), &[OsStr::new("-l")]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ssh-add -l failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().count(),
        1,
        "exactly one key listed: {stdout}"
    );
    assert!(
        stdout.contains(f.user_ed.public.fingerprint().as_str()),
        "{stdout}"
    );
    assert!(
        !stdout.contains(f.user_rsa.public.fingerprint().as_str()),
        "{stdout}"
    );
    assert!(
        stdout.contains("moat ssh:github.test"),
        "grant name as comment: {stdout}"
    );
    assert!(
        !stdout.contains("user_ed25519"),
        "the user's comment is not shown: {stdout}"
    );

    let events = sink.events();
    let SshEvent::List(list) = events.first().expect("one event") else {
        panic!("not a list: {events:?}")
    };
    assert_eq!(list.decision, Decision::Allowed);
    assert_eq!(list.listed, vec![f.user_ed.public.fingerprint()]);
    assert_eq!(list.hidden, 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn bound_session_signs_and_other_host_is_refused() {
    let f = fixture().await;
    let grants = vec![grant(&f, "github.test", &f.user_ed).await];
    let (proxy, sink) = start_proxy(f.dir.path(), &f.user_agent.socket, grants).await;

    // A session bound to github.test's host key: the signature is returned and verifies.
    let sid = random_session_id(1);
    let mut conn = bound_client(&proxy, &f.host_agent, &f.github_host, &sid).await;
    let data = userauth(&sid, &f.user_ed.public, "ssh-ed25519");
    let request = SignRequest {
        key: f.user_ed.public.as_bytes().to_vec(),
        data: data.clone(),
        flags: 0,
    };
    let signature = conn
        .sign(&request)
        .await
        .expect("signed for the granted host");
    f.user_ed
        .public
        .verify(&data, &signature)
        .expect("signature verifies with the user's public key");

    // The same key, bound to another host's (genuine) host key: refused.
    let sid = random_session_id(2);
    let mut conn = bound_client(&proxy, &f.host_agent, &f.other_host, &sid).await;
    let request = SignRequest {
        key: f.user_ed.public.as_bytes().to_vec(),
        data: userauth(&sid, &f.user_ed.public, "ssh-ed25519"),
        flags: 0,
    };
    let refused = conn
        .sign(&request)
        .await
        .expect_err("refused for another host");
    assert!(
        matches!(refused, moat_ssh::AgentError::Refused { .. }),
        "{refused:?}"
    );

    // A binding whose signature is not by the claimed host key is refused outright.
    let sid = random_session_id(3);
    let mut conn = moat_ssh::AgentClient::connect(proxy.socket_path(), TIMEOUT)
        .await
        .expect("connect");
    let mut forged = session_bind(&f.host_agent, &f.other_host, &sid, false).await;
    let genuine_key = f.other_host.public.as_bytes();
    let claimed_key = f.github_host.public.as_bytes();
    let at = forged
        .windows(genuine_key.len())
        .position(|w| w == genuine_key)
        .expect("host key in bind");
    forged.splice(at..at + genuine_key.len(), claimed_key.iter().copied());
    assert_eq!(
        Response::parse(&conn.call(&forged).await.expect("bind")),
        Ok(Response::Failure)
    );

    // Never bound (an old client): refused by default.
    let mut conn = moat_ssh::AgentClient::connect(proxy.socket_path(), TIMEOUT)
        .await
        .expect("connect");
    let request = SignRequest {
        key: f.user_ed.public.as_bytes().to_vec(),
        data: userauth(&random_session_id(4), &f.user_ed.public, "ssh-ed25519"),
        flags: 0,
    };
    conn.sign(&request)
        .await
        .expect_err("unbound session refused");

    // The ungranted RSA key cannot sign even on a session bound to the granted host.
    let sid = random_session_id(5);
    let mut conn = bound_client(&proxy, &f.host_agent, &f.github_host, &sid).await;
    let request = SignRequest {
        key: f.user_rsa.public.as_bytes().to_vec(),
        data: userauth(&sid, &f.user_rsa.public, "rsa-sha2-256"),
        flags: sign_flags::RSA_SHA2_256,
    };
    conn.sign(&request)
        .await
        .expect_err("ungranted key refused");

    let events = sink.events();
    assert_eq!(
        sign_events(&events),
        vec![
            (Decision::Allowed, Some("github.test".to_owned())),
            (Decision::Denied, None),
            (Decision::Denied, None),
            (Decision::Denied, Some("github.test".to_owned())),
        ]
    );
    let denied_other = events
        .iter()
        .find_map(|e| match e {
            SshEvent::Sign(s) if s.decision == Decision::Denied && s.bound => Some(s.clone()),
            _ => None,
        })
        .expect("denied bound sign");
    assert_eq!(
        denied_other.host_key,
        Some(f.other_host.public.fingerprint())
    );
    assert_eq!(denied_other.denial, Some("host_not_granted"));
    assert!(
        denied_other
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("github.test")),
        "{denied_other:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, SshEvent::Refused(r) if r.request == "session_bind")),
        "forged binding is an event"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn rsa_signature_flags_are_preserved() {
    let f = fixture().await;
    let grants = vec![grant(&f, "github.test", &f.user_rsa).await];
    let (proxy, sink) = start_proxy(f.dir.path(), &f.user_agent.socket, grants).await;
    let sid = random_session_id(6);
    let mut conn = bound_client(&proxy, &f.host_agent, &f.github_host, &sid).await;

    for (flags, algorithm) in [
        (sign_flags::RSA_SHA2_256, "rsa-sha2-256"),
        (sign_flags::RSA_SHA2_512, "rsa-sha2-512"),
    ] {
        let data = userauth(&sid, &f.user_rsa.public, algorithm);
        let request = SignRequest {
            key: f.user_rsa.public.as_bytes().to_vec(),
            data: data.clone(),
            flags,
        };
        let signature = conn.sign(&request).await.expect("rsa signs");
        assert_eq!(signature_algorithm(&signature), Some(algorithm));
        f.user_rsa
            .public
            .verify(&data, &signature)
            .expect("rsa signature verifies");
    }
    let algorithms: Vec<Option<String>> = sink
        .events()
        .iter()
        .filter_map(|e| match e {
            SshEvent::Sign(s) => Some(s.signature_algorithm.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        algorithms,
        vec![
            Some("rsa-sha2-256".to_owned()),
            Some("rsa-sha2-512".to_owned())
        ]
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn add_remove_and_lock_are_refused_and_never_reach_the_agent() {
    let f = fixture().await;
    let grants = vec![grant(&f, "github.test", &f.user_ed).await];
    let (proxy, sink) = start_proxy(f.dir.path(), &f.user_agent.socket, grants).await;
    let extra = KeyFile::generate(f.dir.path(), "extra", "ed25519").await;

    let add = ssh_add(proxy.socket_path(), &[extra.private.as_os_str()]).await;
    assert!(
        !add.status.success(),
        "ssh-add KEY must fail through the proxy"
    );
    let pub_path = f.user_ed.private.with_extension("pub");
    let remove = ssh_add(
        proxy.socket_path(),
        &[OsStr::new("-d"), pub_path.as_os_str()],
    )
    .await;
    assert!(
        !remove.status.success(),
        "ssh-add -d must fail through the proxy"
    );
    let remove_all = ssh_add(proxy.socket_path(), &[OsStr::new("-D")]).await;
    assert!(
        !remove_all.status.success(),
        "ssh-add -D must fail through the proxy"
    );

    // Lock and unlock carry a passphrase; ssh-add would prompt for it, so send them raw.
    let mut conn = moat_ssh::AgentClient::connect(proxy.socket_path(), TIMEOUT)
        .await
        .expect("connect");
    for number in [22_u8, 23] {
        let mut body = vec![number];
        moat_ssh::wire::put_string(&mut body, b"passphrase");
        assert_eq!(
            Response::parse(&conn.call(&body).await.expect("call")),
            Ok(Response::Failure)
        );
    }
    // An unknown extension is refused too.
    let mut query = vec![27];
    moat_ssh::wire::put_string(&mut query, b"query");
    assert_eq!(
        Response::parse(&conn.call(&query).await.expect("call")),
        Ok(Response::Failure)
    );

    // The user's agent is untouched: still unlocked, still exactly the two original keys.
    let held = f
        .user_agent
        .client()
        .await
        .list_identities()
        .await
        .expect("agent still answers");
    let mut held: Vec<_> = held.iter().map(|id| id.key.fingerprint()).collect();
    held.sort();
    let mut expected = vec![
        f.user_ed.public.fingerprint(),
        f.user_rsa.public.fingerprint(),
    ];
    expected.sort();
    assert_eq!(held, expected);

    let refused: Vec<String> = sink
        .events()
        .iter()
        .filter_map(|e| match e {
            SshEvent::Refused(r) => Some(r.request.clone()),
            _ => None,
        })
        .collect();
    for request in [
        "add_identity",
        "remove_identity",
        "remove_all_identities",
        "lock",
        "unlock",
        "extension:query",
    ] {
        assert!(
            refused.iter().any(|r| r == request),
            "no refused event for {request}: {refused:?}"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn bindings_verify_for_every_host_key_type() {
    let f = fixture().await;
    let mut hosts = Vec::new();
    for (name, kind) in [
        ("rsa", "rsa"),
        ("p256", "ecdsa"),
        ("p384", "ecdsa384"),
        ("p521", "ecdsa521"),
    ] {
        let key = KeyFile::generate(f.dir.path(), &format!("host_{name}"), kind).await;
        f.host_agent.add(&key).await;
        hosts.push((format!("{name}.test"), key));
    }
    let known_text: String = hosts
        .iter()
        .map(|(host, key)| format!("{host} {}\n", key.openssh()))
        .collect();
    let known = KnownHosts::parse(&known_text);
    let identities = f
        .user_agent
        .client()
        .await
        .list_identities()
        .await
        .expect("list");
    let selector = KeySelector::Fingerprint(f.user_ed.public.fingerprint());
    let grants = hosts
        .iter()
        .map(|(host, _)| {
            build_grant(
                host.parse().expect("host"),
                &identities,
                Some(&selector),
                &known,
            )
            .expect("grant")
        })
        .collect();
    let (proxy, sink) = start_proxy(f.dir.path(), &f.user_agent.socket, grants).await;

    // RSA host keys sign with rsa-sha2-512 as OpenSSH servers do; the rest ignore flags.
    for (index, (host, key)) in hosts.iter().enumerate() {
        let sid = random_session_id(10 + u8::try_from(index).expect("small"));
        let mut conn = AgentClient::connect(proxy.socket_path(), TIMEOUT)
            .await
            .expect("connect");
        let bind =
            session_bind_with_flags(&f.host_agent, key, &sid, false, sign_flags::RSA_SHA2_512)
                .await;
        let reply = Response::parse(&conn.call(&bind).await.expect("bind"));
        assert_eq!(
            reply,
            Ok(Response::Success),
            "binding with a {host} host key"
        );
        let data = userauth(&sid, &f.user_ed.public, "ssh-ed25519");
        let request = SignRequest {
            key: f.user_ed.public.as_bytes().to_vec(),
            data: data.clone(),
            flags: 0,
        };
        let signature = conn.sign(&request).await.expect("signed");
        f.user_ed
            .public
            .verify(&data, &signature)
            .expect("verifies");
    }
    let allowed: Vec<String> = sink
        .events()
        .iter()
        .filter_map(|e| match e {
            SshEvent::Sign(s) if s.decision == Decision::Allowed => {
                s.host.as_ref().map(ToString::to_string)
            }
            _ => None,
        })
        .collect();
    assert_eq!(allowed, ["rsa.test", "p256.test", "p384.test", "p521.test"]);

    // Legacy ssh-rsa (SHA-1) host signatures are not accepted as proof of the host.
    let sid = random_session_id(20);
    let mut conn = AgentClient::connect(proxy.socket_path(), TIMEOUT)
        .await
        .expect("connect");
    let (_, rsa_host) = hosts.first().expect("rsa host");
    let bind = session_bind_with_flags(&f.host_agent, rsa_host, &sid, false, 0).await;
    assert_eq!(
        Response::parse(&conn.call(&bind).await.expect("bind")),
        Ok(Response::Failure)
    );
    assert!(
        sink.events().iter().any(|e| matches!(
            e,
            SshEvent::Refused(r) if r.request == "session_bind" && r.reason.contains("SHA-1")
        )),
        "{:?}",
        sink.events()
    );
    proxy.shutdown().await;
}

/// A sink whose log is unavailable.
struct BrokenSink;

impl moat_ssh::SshEventSink for BrokenSink {
    fn record(&self, _event: &SshEvent) -> Result<(), moat_ssh::event::SshSinkError> {
        Err(moat_ssh::event::SshSinkError {
            source: "audit log is read-only".into(),
        })
    }
}

#[tokio::test]
async fn nothing_is_listed_or_signed_when_events_cannot_be_recorded() {
    let f = fixture().await;
    let grants = vec![grant(&f, "github.test", &f.user_ed).await];
    let config = moat_ssh::AgentProxyConfig::new(
        f.dir.path().join("proxy.sock"),
        &f.user_agent.socket,
        grants,
    );
    let proxy = moat_ssh::AgentProxy::start(config, std::sync::Arc::new(BrokenSink))
        .await
        .expect("start");
    let mut conn = AgentClient::connect(proxy.socket_path(), TIMEOUT)
        .await
        .expect("connect");
    let listed = conn.list_identities().await;
    assert!(
        matches!(listed, Err(moat_ssh::AgentError::Refused { .. })),
        "{listed:?}"
    );
    let sid = random_session_id(30);
    let bind = session_bind(&f.host_agent, &f.github_host, &sid, false).await;
    assert_eq!(
        Response::parse(&conn.call(&bind).await.expect("bind")),
        Ok(Response::Success)
    );
    let request = SignRequest {
        key: f.user_ed.public.as_bytes().to_vec(),
        data: userauth(&sid, &f.user_ed.public, "ssh-ed25519"),
        flags: 0,
    };
    let signed = conn.sign(&request).await;
    assert!(
        matches!(signed, Err(moat_ssh::AgentError::Refused { .. })),
        "{signed:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn unbound_sessions_only_with_the_dangerous_opt_in() {
    let f = fixture().await;
    let grants = vec![grant(&f, "github.test", &f.user_ed).await];
    let sid = random_session_id(40);
    let data = userauth(&sid, &f.user_ed.public, "ssh-ed25519");
    let request = SignRequest {
        key: f.user_ed.public.as_bytes().to_vec(),
        data: data.clone(),
        flags: 0,
    };

    let (strict, _) = start_proxy(f.dir.path(), &f.user_agent.socket, grants.clone()).await;
    let mut conn = AgentClient::connect(strict.socket_path(), TIMEOUT)
        .await
        .expect("connect");
    conn.sign(&request)
        .await
        .expect_err("unbound refused by default");
    strict.shutdown().await;

    let sink = std::sync::Arc::new(moat_ssh::event::MemoryEventSink::new());
    let mut config = moat_ssh::AgentProxyConfig::new(
        f.dir.path().join("lax.sock"),
        &f.user_agent.socket,
        grants,
    );
    config.options.dangerous_allow_unbound_sessions = true;
    let lax = moat_ssh::AgentProxy::start(config, sink.clone())
        .await
        .expect("start");
    let mut conn = AgentClient::connect(lax.socket_path(), TIMEOUT)
        .await
        .expect("connect");
    let signature = conn
        .sign(&request)
        .await
        .expect("unbound allowed after opt-in");
    f.user_ed
        .public
        .verify(&data, &signature)
        .expect("verifies");
    let events = sink.events();
    let Some(SshEvent::Sign(sign)) = events.first() else {
        panic!("{events:?}")
    };
    assert_eq!((sign.decision, sign.bound), (Decision::Allowed, false));
    assert_eq!(
        sign.host.as_ref().map(ToString::to_string).as_deref(),
        Some("github.test")
    );
    lax.shutdown().await;
}

/// Makes a host key and a host certificate for it with `ssh-keygen -s`; returns the key
/// (held by the host agent) and the certificate blob the server would present.
async fn certified_host(
    f: &Fixture,
    name: &str,
    ca: &KeyFile,
    principal: &str,
    validity: &str,
) -> (KeyFile, moat_ssh::PublicKeyBlob) {
    let key = KeyFile::generate(f.dir.path(), name, "ed25519").await;
    let out = tokio::process::Command::new("/usr/bin/ssh-keygen")
        .arg("-q")
        .arg("-s")
        .arg(&ca.private)
        .args(["-I", name, "-h", "-n", principal, "-V", validity])
        .arg(key.private.with_extension("pub"))
        .output()
        .await
        .expect("ssh-keygen -s");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert_path = f.dir.path().join(format!("{name}-cert.pub"));
    let text = std::fs::read_to_string(cert_path).expect("certificate");
    let cert = moat_ssh::PublicKeyBlob::from_openssh(&text).expect("certificate blob");
    assert_eq!(cert.algorithm(), "ssh-ed25519-cert-v01@openssh.com");
    f.host_agent.add(&key).await;
    (key, cert)
}

/// A session-bind whose host key is `cert`, signed by the certified key.
async fn cert_bind(
    f: &Fixture,
    key: &KeyFile,
    cert: &moat_ssh::PublicKeyBlob,
    sid: &[u8],
) -> Vec<u8> {
    let signature = f
        .host_agent
        .client()
        .await
        .sign(&SignRequest {
            key: key.public.as_bytes().to_vec(),
            data: sid.to_vec(),
            flags: 0,
        })
        .await
        .expect("host key signs");
    moat_ssh::protocol::SessionBind {
        host_key: cert.as_bytes().to_vec(),
        session_id: sid.to_vec(),
        signature,
        is_forwarding: false,
    }
    .encode()
}

#[tokio::test]
async fn host_certificates_from_a_granted_authority() {
    let f = fixture().await;
    let ca = KeyFile::generate(f.dir.path(), "host_ca", "ed25519").await;
    let other_ca = KeyFile::generate(f.dir.path(), "other_ca", "ed25519").await;
    let now = "-5m:+1h";
    let good = certified_host(&f, "cert_good", &ca, "github.test", now).await;
    let wrong_name = certified_host(&f, "cert_wrong_name", &ca, "other.test", now).await;
    let expired = certified_host(&f, "cert_expired", &ca, "github.test", "20200101:20200102").await;
    let foreign = certified_host(&f, "cert_foreign", &other_ca, "github.test", now).await;

    let known = KnownHosts::parse(&format!("@cert-authority *.test {}\n", ca.openssh()));
    let identities = f
        .user_agent
        .client()
        .await
        .list_identities()
        .await
        .expect("list");
    let selector = KeySelector::Fingerprint(f.user_ed.public.fingerprint());
    let grant = build_grant(
        "github.test".parse().expect("host"),
        &identities,
        Some(&selector),
        &known,
    )
    .expect("a CA alone is enough to grant");
    assert!(grant.host_keys.is_empty());
    assert_eq!(grant.cert_authorities, vec![ca.public.clone()]);
    let pinned = moat_ssh::grants::known_hosts_for(std::slice::from_ref(&grant));
    assert_eq!(
        pinned,
        format!("@cert-authority github.test {}\n", ca.openssh())
    );
    let (proxy, sink) = start_proxy(f.dir.path(), &f.user_agent.socket, vec![grant]).await;

    let socket = proxy.socket_path().to_path_buf();
    assert_eq!(
        attempt(&f, &socket, &good, 50).await,
        (Ok(Response::Success), true),
        "valid certificate"
    );
    assert_eq!(
        attempt(&f, &socket, &wrong_name, 51).await,
        (Ok(Response::Success), false),
        "other principal"
    );
    assert_eq!(
        attempt(&f, &socket, &expired, 52).await,
        (Ok(Response::Failure), false),
        "expired"
    );
    assert_eq!(
        attempt(&f, &socket, &foreign, 53).await,
        (Ok(Response::Failure), false),
        "untrusted CA"
    );

    let reasons: Vec<String> = sink
        .events()
        .iter()
        .filter_map(|e| match e {
            SshEvent::Refused(r) if r.request == "session_bind" => Some(r.reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().all(|r| r.contains("certificate")),
        "{reasons:?}"
    );
    proxy.shutdown().await;
}

/// Binds a new connection with a host certificate, then asks for a user signature: returns
/// the bind reply and whether the signature was given.
async fn attempt(
    f: &Fixture,
    socket: &std::path::Path,
    (key, cert): &(KeyFile, moat_ssh::PublicKeyBlob),
    tag: u8,
) -> (Result<Response, moat_ssh::protocol::ProtocolError>, bool) {
    let sid = random_session_id(tag);
    let mut conn = AgentClient::connect(socket, TIMEOUT)
        .await
        .expect("connect");
    let bind = cert_bind(f, key, cert, &sid).await;
    let bound = Response::parse(&conn.call(&bind).await.expect("bind"));
    let request = SignRequest {
        key: f.user_ed.public.as_bytes().to_vec(),
        data: userauth(&sid, &f.user_ed.public, "ssh-ed25519"),
        flags: 0,
    };
    (bound, conn.sign(&request).await.is_ok())
}

/// A client of the proxy whose session is bound (and accepted) to `host`'s key.
async fn bound_client(
    proxy: &moat_ssh::AgentProxy,
    host_agent: &RealAgent,
    host: &KeyFile,
    sid: &[u8],
) -> moat_ssh::AgentClient {
    let mut conn = moat_ssh::AgentClient::connect(proxy.socket_path(), TIMEOUT)
        .await
        .expect("connect");
    let bind = session_bind(host_agent, host, sid, false).await;
    assert_eq!(
        Response::parse(&conn.call(&bind).await.expect("bind")),
        Ok(Response::Success)
    );
    conn
}
