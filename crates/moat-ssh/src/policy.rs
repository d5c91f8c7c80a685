//! The signing policy: which keys a run may see and when a signature is allowed.
//!
//! A connection's sessions are bound with `session-bind@openssh.com` (OpenSSH 8.9+): the SSH
//! client proves to the agent, with the server's signature over the session identifier, which
//! host it is talking to. A sign request is allowed only when
//!
//! 1. the key is granted to the run,
//! 2. the connection's last binding is a verified, non-forwarding binding to a host key of a
//!    host the key is granted for, or to a host certificate from one of that host's
//!    certificate authorities naming the host as a principal (every earlier, forwarding
//!    binding must also be to a host the key is granted for), and
//! 3. the data is an SSH user-authentication request (RFC 4252 §7) for that very session
//!    (same session identifier), that very key and, for `publickey-hostbound-v00@openssh.com`,
//!    that very host key, so the signature is useless for any other session or host.
//!
//! Unbound connections (clients before OpenSSH 8.9) are refused unless the embedder opted in
//! with [`PolicyOptions::dangerous_allow_unbound_sessions`] and the key is granted for exactly
//! one host.

use std::collections::BTreeSet;

use crate::grants::SshGrant;
use crate::key::Fingerprint;
use crate::key::PublicKeyBlob;
use crate::key::VerifyError;
use crate::known_hosts::SshHost;
use crate::protocol::SessionBind;
use crate::protocol::SignRequest;
use crate::wire::Reader;

/// The most bindings one connection may record; OpenSSH's `AGENT_MAX_SESSION_IDS`.
pub const MAX_BINDINGS: usize = 16;

/// Knobs of the signing policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicyOptions {
    /// Sign for connections that never sent `session-bind@openssh.com` (OpenSSH before 8.9
    /// and other clients), when the key is granted for exactly one host. The signature is then
    /// NOT bound to that host: whoever controls the container could use it to log in to any
    /// server that trusts the key.
    pub dangerous_allow_unbound_sessions: bool,
}

/// The policy of one run: its SSH grants and options.
#[derive(Debug, Clone)]
pub struct Policy {
    grants: Vec<SshGrant>,
    options: PolicyOptions,
}

/// A granted signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignAllowed {
    /// The host the signature is for.
    pub host: SshHost,
    /// Whether the session was bound (false only with the dangerous opt-in).
    pub bound: bool,
}

/// Why a sign request was denied. The message is shown in audit records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignDenial {
    /// The key is not granted to the run.
    #[error(
        "key {key} is not granted to this run; grant it with `moat grant ssh --host HOST --key {key}`"
    )]
    KeyNotGranted {
        /// The key asked for.
        key: Fingerprint,
    },
    /// The client never bound the session to a host.
    #[error(
        "the ssh client did not bind the session to a host (session-bind@openssh.com); use OpenSSH 8.9 or newer in the container"
    )]
    Unbound,
    /// Unbound sessions are allowed, but the key is granted for several hosts, so the
    /// destination cannot be known.
    #[error("the ssh client did not bind the session and key {key} is granted for several hosts ({}); use OpenSSH 8.9 or newer in the container", join(.hosts))]
    UnboundAmbiguous {
        /// The key asked for.
        key: Fingerprint,
        /// The hosts it is granted for.
        hosts: Vec<SshHost>,
    },
    /// A binding on this connection was refused earlier.
    #[error("an earlier session binding on this connection was refused; nothing is signed on it")]
    Poisoned,
    /// The session is bound to a host key of no host the key is granted for.
    #[error("the session is bound to host key {host_key}, which belongs to no host key {key} is granted for ({}); grant the host or refresh its known_hosts entry", join(.granted))]
    HostNotGranted {
        /// The key asked for.
        key: Fingerprint,
        /// The bound host key.
        host_key: Fingerprint,
        /// The hosts the key is granted for.
        granted: Vec<SshHost>,
    },
    /// The last binding forwards the agent onwards; signing there is for a further hop.
    #[error(
        "the connection is an agent forwarding to host key {host_key}; signing on it is refused until the next hop binds its session"
    )]
    ForwardingSession {
        /// The bound host key.
        host_key: Fingerprint,
    },
    /// The agent was forwarded through a host the key is not granted for.
    #[error(
        "the agent was forwarded through host key {host_key}, which belongs to no host key {key} is granted for"
    )]
    ForwardedThroughUngranted {
        /// The key asked for.
        key: Fingerprint,
        /// The forwarding hop's host key.
        host_key: Fingerprint,
    },
    /// The data is not an SSH user-authentication request.
    #[error(
        "only ssh user authentication is signed; the data to sign is not a publickey userauth request"
    )]
    NotUserAuth,
    /// The data is for another session.
    #[error("the data to sign is for a different ssh session than the one bound")]
    SessionMismatch,
    /// The data names another key than the one asked to sign.
    #[error("the data to sign names a different public key than the one asked to sign")]
    KeyMismatch,
    /// The data names another host key than the bound one.
    #[error("the data to sign names a different host key than the one the session is bound to")]
    HostKeyMismatch,
}

impl SignDenial {
    /// A stable machine-readable code for audit queries, e.g. `host_not_granted`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::KeyNotGranted { .. } => "key_not_granted",
            Self::Unbound => "unbound",
            Self::UnboundAmbiguous { .. } => "unbound_ambiguous",
            Self::Poisoned => "poisoned",
            Self::HostNotGranted { .. } => "host_not_granted",
            Self::ForwardingSession { .. } => "forwarding_session",
            Self::ForwardedThroughUngranted { .. } => "forwarded_through_ungranted",
            Self::NotUserAuth => "not_userauth",
            Self::SessionMismatch => "session_mismatch",
            Self::KeyMismatch => "key_mismatch",
            Self::HostKeyMismatch => "host_key_mismatch",
        }
    }
}

/// Why a session binding was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindRefusal {
    /// The host key blob is malformed.
    #[error("session-bind host key is malformed")]
    BadHostKey,
    /// The host key's signature over the session identifier does not verify.
    #[error("session-bind signature does not verify: {source}")]
    BadSignature {
        /// The underlying error.
        source: VerifyError,
    },
    /// An earlier binding on this connection was refused.
    #[error(
        "an earlier session binding on this connection was refused; open a new agent connection"
    )]
    Poisoned,
    /// The host key is a certificate that cannot be trusted.
    #[error("session-bind host certificate refused: {reason}")]
    BadCertificate {
        /// Why.
        reason: &'static str,
    },
    /// Too many bindings on one connection.
    #[error("more than {MAX_BINDINGS} session bindings on one connection")]
    TooMany,
    /// A new session was bound after a final (non-forwarding) binding.
    #[error(
        "the connection is already bound to a session; open a new agent connection for a new session"
    )]
    AlreadyBound,
    /// The agent would be forwarded to a host no grant names.
    #[error("agent forwarding to host key {host_key} is refused: it belongs to no granted host")]
    ForwardingToUngranted {
        /// The destination host key.
        host_key: Fingerprint,
    },
}

/// The binding state of one client connection.
#[derive(Debug, Clone, Default)]
pub struct Session {
    bindings: Vec<Binding>,
    poisoned: bool,
}

#[derive(Debug, Clone)]
struct Binding {
    host_key: PublicKeyBlob,
    session_id: Vec<u8>,
    forwarding: bool,
    /// The granted hosts whose keys or certificate authorities vouch for `host_key`.
    hosts: Vec<SshHost>,
}

impl Session {
    /// Whether the connection has bound any session.
    pub fn is_bound(&self) -> bool {
        !self.bindings.is_empty()
    }

    /// The fingerprint of the most recently bound host key.
    pub fn bound_host_key(&self) -> Option<Fingerprint> {
        self.bindings.last().map(|b| b.host_key.fingerprint())
    }
}

impl Policy {
    /// The policy for a run with these grants.
    pub fn new(grants: Vec<SshGrant>, options: PolicyOptions) -> Self {
        Self { grants, options }
    }

    /// The run's grants.
    pub fn grants(&self) -> &[SshGrant] {
        &self.grants
    }

    /// Whether a key is granted to the run (and so may be listed).
    pub fn is_granted(&self, key: &Fingerprint) -> bool {
        self.grants.iter().any(|g| &g.key.fingerprint == key)
    }

    /// The names (`ssh:<host>`) of the grants of a key, sorted; empty when not granted.
    pub fn grant_names(&self, key: &Fingerprint) -> Vec<String> {
        self.hosts_for_key(key)
            .iter()
            .map(crate::grants::grant_name)
            .collect()
    }

    /// Records a session binding after verifying the host's signature over the session
    /// identifier. Any refusal poisons the connection: nothing is signed on it afterwards.
    pub fn bind(&self, session: &mut Session, bind: &SessionBind) -> Result<(), BindRefusal> {
        let result = self.check_bind(session, bind);
        match &result {
            Ok(Some(binding)) => session.bindings.push(binding.clone()),
            Ok(None) => {}
            Err(_) => session.poisoned = true,
        }
        result.map(|_| ())
    }

    /// Decides a sign request on a connection.
    pub fn authorize(
        &self,
        session: &Session,
        request: &SignRequest,
    ) -> Result<SignAllowed, SignDenial> {
        let key = Fingerprint::of(&request.key);
        if !self.is_granted(&key) {
            return Err(SignDenial::KeyNotGranted { key });
        }
        if session.poisoned {
            return Err(SignDenial::Poisoned);
        }
        let auth = UserAuth::parse(&request.data).ok_or(SignDenial::NotUserAuth)?;
        if auth.key != request.key.as_slice() {
            return Err(SignDenial::KeyMismatch);
        }
        let granted_hosts = self.hosts_for_key(&key);
        let Some((last, earlier)) = session.bindings.split_last() else {
            if !self.options.dangerous_allow_unbound_sessions {
                return Err(SignDenial::Unbound);
            }
            return match granted_hosts.as_slice() {
                [only] => Ok(SignAllowed {
                    host: only.clone(),
                    bound: false,
                }),
                _ => Err(SignDenial::UnboundAmbiguous {
                    key,
                    hosts: granted_hosts,
                }),
            };
        };
        if last.forwarding {
            return Err(SignDenial::ForwardingSession {
                host_key: last.host_key.fingerprint(),
            });
        }
        for hop in earlier {
            if self.host_for(&key, hop).is_none() {
                return Err(SignDenial::ForwardedThroughUngranted {
                    key,
                    host_key: hop.host_key.fingerprint(),
                });
            }
        }
        let Some(host) = self.host_for(&key, last) else {
            return Err(SignDenial::HostNotGranted {
                key,
                host_key: last.host_key.fingerprint(),
                granted: granted_hosts,
            });
        };
        if auth.session_id != last.session_id.as_slice() {
            return Err(SignDenial::SessionMismatch);
        }
        if auth
            .host_key
            .is_some_and(|hk| hk != last.host_key.as_bytes())
        {
            return Err(SignDenial::HostKeyMismatch);
        }
        Ok(SignAllowed { host, bound: true })
    }

    /// A granted host whose host keys include the connection's last bound host key, for
    /// reporting denials.
    pub fn bound_host(&self, session: &Session) -> Option<SshHost> {
        session.bindings.last()?.hosts.first().cloned()
    }

    fn check_bind(
        &self,
        session: &Session,
        bind: &SessionBind,
    ) -> Result<Option<Binding>, BindRefusal> {
        if session.poisoned {
            return Err(BindRefusal::Poisoned);
        }
        let host_key = PublicKeyBlob::from_bytes(bind.host_key.clone())
            .map_err(|_| BindRefusal::BadHostKey)?;
        let hosts = if host_key.algorithm().ends_with(CERT_SUFFIX) {
            let cert = self.check_host_certificate(&host_key)?;
            cert.key
                .verify(&bind.session_id, &bind.signature)
                .map_err(|source| BindRefusal::BadSignature { source })?;
            self.hosts_trusting(&cert)
        } else {
            host_key
                .verify(&bind.session_id, &bind.signature)
                .map_err(|source| BindRefusal::BadSignature { source })?;
            let hosts = self
                .grants
                .iter()
                .filter(|g| g.host_keys.contains(&host_key))
                .map(|g| g.host.clone());
            sorted_unique(hosts)
        };
        // OpenSSH sends the same binding again on re-authentication; accept it idempotently.
        if session.bindings.iter().any(|b| {
            b.session_id == bind.session_id
                && b.host_key == host_key
                && b.forwarding == bind.is_forwarding
        }) {
            return Ok(None);
        }
        if session.bindings.last().is_some_and(|b| !b.forwarding) {
            return Err(BindRefusal::AlreadyBound);
        }
        if session.bindings.len() >= MAX_BINDINGS {
            return Err(BindRefusal::TooMany);
        }
        if bind.is_forwarding && hosts.is_empty() {
            return Err(BindRefusal::ForwardingToUngranted {
                host_key: host_key.fingerprint(),
            });
        }
        Ok(Some(Binding {
            host_key,
            session_id: bind.session_id.clone(),
            forwarding: bind.is_forwarding,
            hosts,
        }))
    }

    /// Checks a host certificate the way `ssh` does before trusting it: a host (not user)
    /// certificate, signed by a certificate authority of one of the run's grants, valid now,
    /// with no critical options. Which hosts it vouches for is decided by
    /// [`Policy::hosts_trusting`] (principals, revocation).
    fn check_host_certificate(&self, blob: &PublicKeyBlob) -> Result<HostCertificate, BindRefusal> {
        let bad = |reason| BindRefusal::BadCertificate { reason };
        let cert = ssh_key::Certificate::from_bytes(blob.as_bytes())
            .map_err(|_| bad("it is malformed or of an unsupported type"))?;
        if cert.cert_type() != ssh_key::certificate::CertType::Host {
            return Err(bad("it is a user certificate, not a host certificate"));
        }
        if !cert.critical_options().is_empty() {
            return Err(bad(
                "it has critical options, which host certificates never carry",
            ));
        }
        let authorities: Vec<ssh_key::Fingerprint> = self
            .grants
            .iter()
            .flat_map(|g| &g.cert_authorities)
            .filter_map(|ca| ssh_key::PublicKey::from_bytes(ca.as_bytes()).ok())
            .map(|ca| ca.fingerprint(ssh_key::HashAlg::Sha256))
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        cert.validate_at(now, &authorities)
            .map_err(|_| bad("it is not signed by a certificate authority of a granted host, or it is expired or not yet valid"))?;
        let encode = |data: &ssh_key::public::KeyData| {
            ssh_key::PublicKey::from(data.clone())
                .to_bytes()
                .ok()
                .and_then(|bytes| PublicKeyBlob::from_bytes(bytes).ok())
        };
        let (Some(key), Some(authority)) =
            (encode(cert.public_key()), encode(cert.signature_key()))
        else {
            return Err(bad("its keys cannot be encoded"));
        };
        Ok(HostCertificate {
            key,
            authority,
            principals: cert.valid_principals().to_vec(),
        })
    }

    /// The granted hosts a verified host certificate vouches for: the grant trusts its
    /// authority, its principals name the host, and neither key is revoked.
    fn hosts_trusting(&self, cert: &HostCertificate) -> Vec<SshHost> {
        let hosts = self
            .grants
            .iter()
            .filter(|g| g.cert_authorities.contains(&cert.authority))
            .filter(|g| {
                cert.principals
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(g.host.host()))
            })
            .filter(|g| {
                !g.revoked_keys.contains(&cert.key) && !g.revoked_keys.contains(&cert.authority)
            })
            .map(|g| g.host.clone());
        sorted_unique(hosts)
    }

    fn hosts_for_key(&self, key: &Fingerprint) -> Vec<SshHost> {
        let set: BTreeSet<&SshHost> = self
            .grants
            .iter()
            .filter(|g| &g.key.fingerprint == key)
            .map(|g| &g.host)
            .collect();
        set.into_iter().cloned().collect()
    }

    fn host_for(&self, key: &Fingerprint, binding: &Binding) -> Option<SshHost> {
        self.grants
            .iter()
            .find(|g| &g.key.fingerprint == key && binding.hosts.contains(&g.host))
            .map(|g| g.host.clone())
    }
}

/// The user name a sign request's data asks to log in as (`git` for `git@github.com`), if the
/// data is a publickey user-authentication request; at most 64 characters, for audit records.
pub fn userauth_user(data: &[u8]) -> Option<String> {
    let auth = UserAuth::parse(data)?;
    Some(
        String::from_utf8_lossy(auth.user)
            .chars()
            .take(64)
            .collect(),
    )
}

/// Host key algorithms ending in this are OpenSSH certificates (`PROTOCOL.certkeys`).
const CERT_SUFFIX: &str = "-cert-v01@openssh.com";

/// The parts of a verified host certificate the policy needs.
#[derive(Debug)]
struct HostCertificate {
    /// The certified host key, which signs the session identifier.
    key: PublicKeyBlob,
    /// The certificate authority that signed the certificate.
    authority: PublicKeyBlob,
    /// The host names the certificate is valid for.
    principals: Vec<String>,
}

fn sorted_unique(hosts: impl Iterator<Item = SshHost>) -> Vec<SshHost> {
    hosts.collect::<BTreeSet<_>>().into_iter().collect()
}

/// The fields of a publickey `SSH_MSG_USERAUTH_REQUEST` signature payload (RFC 4252 §7,
/// OpenSSH `PROTOCOL` §2.5 for the host-bound variant) that the policy checks.
#[derive(Debug)]
struct UserAuth<'a> {
    session_id: &'a [u8],
    user: &'a [u8],
    key: &'a [u8],
    host_key: Option<&'a [u8]>,
}

const USERAUTH_REQUEST: u8 = 50;
const PUBLICKEY: &[u8] = b"publickey";
const PUBLICKEY_HOSTBOUND: &[u8] = b"publickey-hostbound-v00@openssh.com";

impl<'a> UserAuth<'a> {
    fn parse(data: &'a [u8]) -> Option<Self> {
        let mut r = Reader::new(data);
        let session_id = r.string("session id").ok()?;
        if r.u8("message").ok()? != USERAUTH_REQUEST {
            return None;
        }
        let user = r.string("user").ok()?;
        let _service = r.string("service").ok()?;
        let method = r.string("method").ok()?;
        if !r.bool("has signature").ok()? {
            return None;
        }
        let _algorithm = r.string("algorithm").ok()?;
        let key = r.string("key").ok()?;
        let host_key = match method {
            PUBLICKEY => None,
            PUBLICKEY_HOSTBOUND => Some(r.string("host key").ok()?),
            _ => return None,
        };
        r.finish("userauth request").ok()?;
        // Never sign something that parses as a userauth request only by accident of a
        // zero-length session identifier.
        if session_id.is_empty() {
            return None;
        }
        Some(Self {
            session_id,
            user,
            key,
            host_key,
        })
    }
}

fn join(hosts: &[SshHost]) -> String {
    hosts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
pub(crate) mod tests {
    use chrono::Utc;
    use signature::Signer;
    use ssh_key::private::Ed25519Keypair;

    use super::*;
    use crate::grants::GrantedKey;
    use crate::wire::put_bool;
    use crate::wire::put_string;

    /// A deterministic Ed25519 key for tests.
    pub(crate) struct TestKey(Ed25519Keypair);

    impl TestKey {
        pub(crate) fn new(seed: u8) -> Self {
            Self(Ed25519Keypair::from_seed(&[seed; 32]))
        }

        pub(crate) fn blob(&self) -> PublicKeyBlob {
            let public = ssh_key::PublicKey::from(ssh_key::public::Ed25519PublicKey::from(&self.0));
            PublicKeyBlob::from_bytes(public.to_bytes().expect("encode")).expect("blob")
        }

        pub(crate) fn sign(&self, data: &[u8]) -> Vec<u8> {
            let sig: ssh_key::Signature = self.0.sign(data);
            let mut out = Vec::new();
            put_string(&mut out, b"ssh-ed25519");
            put_string(&mut out, sig.as_bytes());
            out
        }

        pub(crate) fn bind(&self, session_id: &[u8], is_forwarding: bool) -> SessionBind {
            SessionBind {
                host_key: self.blob().as_bytes().to_vec(),
                session_id: session_id.to_vec(),
                signature: self.sign(session_id),
                is_forwarding,
            }
        }
    }

    pub(crate) fn grant(host: &str, user_key: &TestKey, host_keys: &[&TestKey]) -> SshGrant {
        SshGrant {
            host: host.parse().expect("host"),
            key: GrantedKey {
                fingerprint: user_key.blob().fingerprint(),
                public_key: user_key.blob(),
                comment: String::new(),
            },
            host_keys: host_keys.iter().map(|k| k.blob()).collect(),
            cert_authorities: Vec::new(),
            revoked_keys: Vec::new(),
            created_at: Utc::now(),
        }
    }

    pub(crate) fn userauth(
        session_id: &[u8],
        key: &PublicKeyBlob,
        hostbound: Option<&PublicKeyBlob>,
    ) -> Vec<u8> {
        let mut data = Vec::new();
        put_string(&mut data, session_id);
        data.push(USERAUTH_REQUEST);
        put_string(&mut data, b"git");
        put_string(&mut data, b"ssh-connection");
        put_string(
            &mut data,
            if hostbound.is_some() {
                PUBLICKEY_HOSTBOUND
            } else {
                PUBLICKEY
            },
        );
        put_bool(&mut data, true);
        put_string(&mut data, key.algorithm().as_bytes());
        put_string(&mut data, key.as_bytes());
        if let Some(hk) = hostbound {
            put_string(&mut data, hk.as_bytes());
        }
        data
    }

    fn sign_req(key: &TestKey, data: Vec<u8>) -> SignRequest {
        SignRequest {
            key: key.blob().as_bytes().to_vec(),
            data,
            flags: 0,
        }
    }

    struct World {
        user: TestKey,
        other_user: TestKey,
        github: TestKey,
        gitlab: TestKey,
    }

    fn world() -> World {
        World {
            user: TestKey::new(1),
            other_user: TestKey::new(2),
            github: TestKey::new(3),
            gitlab: TestKey::new(4),
        }
    }

    fn policy(w: &World, options: PolicyOptions) -> Policy {
        Policy::new(vec![grant("github.com", &w.user, &[&w.github])], options)
    }

    #[test]
    fn bound_session_to_granted_host_is_allowed() {
        let w = world();
        let p = policy(&w, PolicyOptions::default());
        let mut s = Session::default();
        p.bind(&mut s, &w.github.bind(b"sid-1", false))
            .expect("bind");
        let req = sign_req(&w.user, userauth(b"sid-1", &w.user.blob(), None));
        let allowed = p.authorize(&s, &req).expect("allowed");
        assert_eq!(allowed.host.host(), "github.com");
        assert!(allowed.bound);
        // The host-bound userauth variant naming the bound host key is allowed too.
        let req = sign_req(
            &w.user,
            userauth(b"sid-1", &w.user.blob(), Some(&w.github.blob())),
        );
        assert!(p.authorize(&s, &req).is_ok());
    }

    #[test]
    fn bound_to_another_host_is_denied_with_the_host_key() {
        let w = world();
        let p = policy(&w, PolicyOptions::default());
        let mut s = Session::default();
        p.bind(&mut s, &w.gitlab.bind(b"sid", false))
            .expect("bind is genuine");
        let req = sign_req(&w.user, userauth(b"sid", &w.user.blob(), None));
        let denial = p.authorize(&s, &req).expect_err("denied");
        assert!(
            matches!(&denial, SignDenial::HostNotGranted { host_key, .. } if *host_key == w.gitlab.blob().fingerprint())
        );
        assert!(denial.to_string().contains("github.com"));
    }

    #[test]
    fn forged_binding_is_refused_and_poisons_the_connection() {
        let w = world();
        let p = policy(
            &w,
            PolicyOptions {
                dangerous_allow_unbound_sessions: true,
            },
        );
        let mut s = Session::default();
        // Claims github's host key but the signature is by gitlab's key.
        let mut forged = w.github.bind(b"sid", false);
        forged.signature = w.gitlab.sign(b"sid");
        assert!(matches!(
            p.bind(&mut s, &forged),
            Err(BindRefusal::BadSignature { .. })
        ));
        let req = sign_req(&w.user, userauth(b"sid", &w.user.blob(), None));
        // Even with unbound sessions allowed, a connection that failed to bind gets nothing.
        assert_eq!(p.authorize(&s, &req), Err(SignDenial::Poisoned));
    }

    #[test]
    fn signature_over_other_session_id_is_refused() {
        let w = world();
        let p = policy(&w, PolicyOptions::default());
        let mut s = Session::default();
        let mut bind = w.github.bind(b"sid-a", false);
        bind.session_id = b"sid-b".to_vec();
        assert!(p.bind(&mut s, &bind).is_err());
    }

    #[test]
    fn userauth_for_another_session_is_refused() {
        // The attack session binding defeats: bind to github.com, then ask for a signature
        // usable in a session with another server that trusts the same key.
        let w = world();
        let p = policy(&w, PolicyOptions::default());
        let mut s = Session::default();
        p.bind(&mut s, &w.github.bind(b"github-session", false))
            .expect("bind");
        let req = sign_req(&w.user, userauth(b"gitlab-session", &w.user.blob(), None));
        assert_eq!(p.authorize(&s, &req), Err(SignDenial::SessionMismatch));
        let req = sign_req(
            &w.user,
            userauth(b"github-session", &w.user.blob(), Some(&w.gitlab.blob())),
        );
        assert_eq!(p.authorize(&s, &req), Err(SignDenial::HostKeyMismatch));
    }

    #[test]
    fn non_userauth_data_and_mismatched_keys_are_refused() {
        let w = world();
        let p = policy(&w, PolicyOptions::default());
        let mut s = Session::default();
        p.bind(&mut s, &w.github.bind(b"sid", false)).expect("bind");
        assert_eq!(
            p.authorize(&s, &sign_req(&w.user, b"arbitrary bytes".to_vec())),
            Err(SignDenial::NotUserAuth)
        );
        let mut data = userauth(b"sid", &w.user.blob(), None);
        data.push(0);
        assert_eq!(
            p.authorize(&s, &sign_req(&w.user, data)),
            Err(SignDenial::NotUserAuth)
        );
        let req = sign_req(&w.user, userauth(b"sid", &w.other_user.blob(), None));
        assert_eq!(p.authorize(&s, &req), Err(SignDenial::KeyMismatch));
        // Every truncation of a valid payload is refused, never a panic.
        let data = userauth(b"sid", &w.user.blob(), None);
        for len in 0..data.len() {
            let req = sign_req(&w.user, data.get(..len).expect("prefix").to_vec());
            assert_eq!(p.authorize(&s, &req), Err(SignDenial::NotUserAuth));
        }
    }

    #[test]
    fn ungranted_key_is_refused_even_when_bound() {
        let w = world();
        let p = policy(&w, PolicyOptions::default());
        let mut s = Session::default();
        p.bind(&mut s, &w.github.bind(b"sid", false)).expect("bind");
        let req = sign_req(&w.other_user, userauth(b"sid", &w.other_user.blob(), None));
        assert!(matches!(
            p.authorize(&s, &req),
            Err(SignDenial::KeyNotGranted { .. })
        ));
    }

    #[test]
    fn unbound_sessions_need_opt_in_and_a_single_host() {
        let w = world();
        let req = sign_req(&w.user, userauth(b"sid", &w.user.blob(), None));
        let strict = policy(&w, PolicyOptions::default());
        assert_eq!(
            strict.authorize(&Session::default(), &req),
            Err(SignDenial::Unbound)
        );
        let lax = policy(
            &w,
            PolicyOptions {
                dangerous_allow_unbound_sessions: true,
            },
        );
        let allowed = lax.authorize(&Session::default(), &req).expect("allowed");
        assert_eq!((allowed.host.host(), allowed.bound), ("github.com", false));
        let two_hosts = Policy::new(
            vec![
                grant("github.com", &w.user, &[&w.github]),
                grant("gitlab.com", &w.user, &[&w.gitlab]),
            ],
            PolicyOptions {
                dangerous_allow_unbound_sessions: true,
            },
        );
        assert!(matches!(
            two_hosts.authorize(&Session::default(), &req),
            Err(SignDenial::UnboundAmbiguous { hosts, .. }) if hosts.len() == 2
        ));
    }

    #[test]
    fn forwarding_rules() {
        let w = world();
        let both = Policy::new(
            vec![
                grant("github.com", &w.user, &[&w.github]),
                grant("gitlab.com", &w.user, &[&w.gitlab]),
            ],
            PolicyOptions::default(),
        );
        // Forwarded through gitlab (granted) and then logging in to github: allowed.
        let mut s = Session::default();
        both.bind(&mut s, &w.gitlab.bind(b"hop", true))
            .expect("forward to granted host");
        let req = sign_req(&w.user, userauth(b"hop", &w.user.blob(), None));
        assert!(matches!(
            both.authorize(&s, &req),
            Err(SignDenial::ForwardingSession { .. })
        ));
        both.bind(&mut s, &w.github.bind(b"final", false))
            .expect("bind final");
        let req = sign_req(&w.user, userauth(b"final", &w.user.blob(), None));
        assert!(both.authorize(&s, &req).is_ok());
        // After a final binding no further session may be bound on the connection.
        assert_eq!(
            both.bind(&mut s, &w.gitlab.bind(b"another", false)),
            Err(BindRefusal::AlreadyBound)
        );

        // Forwarding to a host no grant names is refused and poisons the connection.
        let one = policy(&w, PolicyOptions::default());
        let mut s = Session::default();
        assert!(matches!(
            one.bind(&mut s, &w.gitlab.bind(b"hop", true)),
            Err(BindRefusal::ForwardingToUngranted { .. })
        ));
        one.bind(&mut s, &w.github.bind(b"final", false))
            .expect_err("connection already failed once");
        let req = sign_req(&w.user, userauth(b"final", &w.user.blob(), None));
        assert_eq!(one.authorize(&s, &req), Err(SignDenial::Poisoned));
    }

    #[test]
    fn forwarded_through_host_granted_only_for_another_key() {
        let w = world();
        let p = Policy::new(
            vec![
                grant("github.com", &w.user, &[&w.github]),
                grant("gitlab.com", &w.other_user, &[&w.gitlab]),
            ],
            PolicyOptions::default(),
        );
        let mut s = Session::default();
        p.bind(&mut s, &w.gitlab.bind(b"hop", true))
            .expect("gitlab is granted (for other key)");
        p.bind(&mut s, &w.github.bind(b"final", false))
            .expect("bind");
        let req = sign_req(&w.user, userauth(b"final", &w.user.blob(), None));
        assert!(matches!(
            p.authorize(&s, &req),
            Err(SignDenial::ForwardedThroughUngranted { .. })
        ));
    }

    #[test]
    fn rebinding_the_same_session_is_idempotent_and_bindings_are_limited() {
        let w = world();
        let p = policy(&w, PolicyOptions::default());
        let mut s = Session::default();
        p.bind(&mut s, &w.github.bind(b"sid", false)).expect("bind");
        p.bind(&mut s, &w.github.bind(b"sid", false))
            .expect("same binding again");
        assert_eq!(s.bindings.len(), 1);

        let mut s = Session::default();
        for i in 0..MAX_BINDINGS {
            p.bind(
                &mut s,
                &w.github.bind(&[u8::try_from(i).expect("small"); 8], true),
            )
            .expect("hop");
        }
        assert_eq!(
            p.bind(&mut s, &w.github.bind(b"one too many", true)),
            Err(BindRefusal::TooMany)
        );
    }

    #[test]
    fn malformed_host_key_is_refused() {
        let w = world();
        let p = policy(&w, PolicyOptions::default());
        let mut s = Session::default();
        let mut bind = w.github.bind(b"sid", false);
        bind.host_key = vec![0, 0, 0, 9, 1];
        assert_eq!(p.bind(&mut s, &bind), Err(BindRefusal::BadHostKey));
        let mut s = Session::default();
        let mut bind = w.github.bind(b"sid", false);
        bind.signature = vec![0xff; 3];
        assert!(matches!(
            p.bind(&mut s, &bind),
            Err(BindRefusal::BadSignature { .. })
        ));
    }

    /// xorshift64*: deterministic pseudo-random bytes without a dependency.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn bytes(&mut self, max: u64) -> Vec<u8> {
            let len = self.next() % max;
            (0..len).map(|_| self.next().to_le_bytes()[0]).collect()
        }
    }

    /// Mutates valid messages (bit flips, truncation, random length fields) and feeds them
    /// to every parser that sees container or agent bytes: nothing may panic.
    #[test]
    fn random_and_mutated_input_never_panics() {
        use crate::protocol::Request;
        use crate::protocol::Response;

        let w = world();
        let p = policy(
            &w,
            PolicyOptions {
                dangerous_allow_unbound_sessions: true,
            },
        );
        let valid: Vec<Vec<u8>> = vec![
            w.github.bind(b"sid", false).encode(),
            sign_req(
                &w.user,
                userauth(b"sid", &w.user.blob(), Some(&w.github.blob())),
            )
            .encode(),
            Response::Identities(vec![crate::protocol::Identity {
                key: w.user.blob(),
                comment: b"c".to_vec(),
            }])
            .encode(),
            Response::Signature(w.user.sign(b"x")).encode(),
        ];
        let mut bound = Session::default();
        p.bind(&mut bound, &w.github.bind(b"sid", false))
            .expect("bind");
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        for round in 0..3_000_u32 {
            let mut msg = match valid.get(usize::try_from(round).unwrap_or(0) % (valid.len() + 1)) {
                Some(v) => v.clone(),
                None => noise.bytes(300),
            };
            for _ in 0..(noise.next() % 4) {
                if msg.is_empty() {
                    break;
                }
                let len = u64::try_from(msg.len()).unwrap_or(1);
                let at = usize::try_from(noise.next() % len).unwrap_or(0);
                match noise.next() % 3 {
                    0 => msg.truncate(at),
                    1 => {
                        if let Some(b) = msg.get_mut(at) {
                            *b ^= 1 << (noise.next() % 8);
                        }
                    }
                    _ => {
                        if let Some(b) = msg.get_mut(at) {
                            *b = 0xff;
                        }
                    }
                }
            }
            let _ = Response::parse(&msg);
            match Request::parse(&msg) {
                Ok(Request::SessionBind(bind)) => {
                    let _ = p.bind(&mut Session::default(), &bind);
                }
                Ok(Request::Sign(sign)) => {
                    let _ = p.authorize(&bound, &sign);
                    let _ = p.authorize(&Session::default(), &sign);
                }
                _ => {}
            }
            let text = String::from_utf8_lossy(&msg);
            let _ = crate::known_hosts::KnownHosts::parse(&text);
            let _ = PublicKeyBlob::from_bytes(msg.clone()).map(|k| k.verify(b"m", &msg));
        }
    }
}
