//! Events the agent proxy reports: every identity listing, every sign request (allowed or
//! denied, with the bound host) and every refused request.
//!
//! The embedder adapts [`SshEventSink`] to its audit log; the proxy fails closed: when the sink
//! cannot record an event, the client gets `SSH_AGENT_FAILURE` instead of the answer.

use std::sync::Arc;
use std::sync::Mutex;

use moat_core::audit::AuditSink;

use crate::key::Fingerprint;
use crate::known_hosts::SshHost;

pub use moat_core::audit::event::SSH_LIST;
pub use moat_core::audit::event::SSH_REFUSED;
pub use moat_core::audit::event::SSH_SIGN;

/// Receives proxy events. Calls are synchronous and expected to be quick (a local append).
pub trait SshEventSink: Send + Sync {
    /// Records one event. An error makes the proxy refuse the request the event describes.
    fn record(&self, event: &SshEvent) -> Result<(), SshSinkError>;
}

/// Why a sink could not record an event.
#[derive(Debug, thiserror::Error)]
#[error("cannot record the ssh agent event")]
pub struct SshSinkError {
    /// The underlying error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Whether a request was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Decision {
    /// Served.
    Allowed,
    /// Refused.
    Denied,
}

/// One proxy event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum SshEvent {
    /// The client listed identities (`ssh.list`).
    List(ListEvent),
    /// The client asked for a signature (`ssh.sign`).
    Sign(SignEvent),
    /// The client sent a request the proxy refuses outright (`ssh.refused`): adding,
    /// removing or locking keys, unknown extensions, invalid session bindings, malformed
    /// messages.
    Refused(RefusedEvent),
}

impl SshEvent {
    /// The audit event type: `ssh.list`, `ssh.sign` or `ssh.refused`.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::List(_) => SSH_LIST,
            Self::Sign(_) => SSH_SIGN,
            Self::Refused(_) => SSH_REFUSED,
        }
    }

    /// The event as a JSON object, for audit logs.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Whether the request was served.
    pub fn decision(&self) -> Decision {
        match self {
            Self::List(e) => e.decision,
            Self::Sign(e) => e.decision,
            Self::Refused(_) => Decision::Denied,
        }
    }
}

/// An identity listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ListEvent {
    /// Connection number, unique within one proxy.
    pub connection: u64,
    /// `allowed` when a (filtered) list was returned.
    pub decision: Decision,
    /// Keys shown to the client.
    pub listed: Vec<Fingerprint>,
    /// How many of the agent's keys were hidden because no grant of the run names them.
    pub hidden: usize,
    /// Why the list failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A sign request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SignEvent {
    /// Connection number, unique within one proxy.
    pub connection: u64,
    /// Whether a signature was returned.
    pub decision: Decision,
    /// The key asked for.
    pub key: Fingerprint,
    /// The host the session is bound to: the granted host when allowed; when denied, the
    /// granted host whose host key the session was bound to, if any.
    pub host: Option<SshHost>,
    /// Fingerprint of the host key the session was bound to, if it was bound.
    pub host_key: Option<Fingerprint>,
    /// Whether the session was bound with `session-bind@openssh.com`.
    pub bound: bool,
    /// Signature flags the client asked for (`2` = rsa-sha2-256, `4` = rsa-sha2-512).
    pub flags: u32,
    /// The remote user the client logs in as (`git` for `git@github.com`), when the data is a
    /// user-authentication request; at most 64 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The algorithm of the returned signature, e.g. `rsa-sha2-512`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_algorithm: Option<String>,
    /// Why it was denied, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A stable code for the denial (see [`crate::policy::SignDenial::code`]), or
    /// `upstream_failed` when the user's agent did not sign.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denial: Option<&'static str>,
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RefusedEvent {
    /// Connection number, unique within one proxy.
    pub connection: u64,
    /// What was asked: `add_identity`, `lock`, `extension:<name>`, `session_bind`,
    /// `message:<number>`, `malformed`, `too_many_connections`.
    pub request: String,
    /// Why it was refused.
    pub reason: String,
}

/// Records proxy events in a moat audit log: type [`SshEvent::event_type`], data
/// [`SshEvent::to_json`].
#[derive(Debug)]
pub struct AuditEventSink<A: ?Sized> {
    audit: Arc<A>,
}

impl<A: AuditSink + ?Sized> AuditEventSink<A> {
    /// Wraps the run's audit sink.
    pub fn new(audit: Arc<A>) -> Self {
        Self { audit }
    }
}

impl<A: AuditSink + ?Sized> SshEventSink for AuditEventSink<A> {
    fn record(&self, event: &SshEvent) -> Result<(), SshSinkError> {
        self.audit
            .append(event.event_type(), event.to_json())
            .map_err(|e| SshSinkError {
                source: Box::new(e),
            })
    }
}

/// A sink that keeps events in memory, for tests and embedders that poll.
#[derive(Debug, Default)]
pub struct MemoryEventSink {
    events: Mutex<Vec<SshEvent>>,
}

impl MemoryEventSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the events recorded so far.
    pub fn events(&self) -> Vec<SshEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl SshEventSink for MemoryEventSink {
    fn record(&self, event: &SshEvent) -> Result<(), SshSinkError> {
        let mut events = self.events.lock().map_err(|_| SshSinkError {
            source: "event sink mutex poisoned".into(),
        })?;
        events.push(event.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_event_json_shape() {
        let event = SshEvent::Sign(SignEvent {
            connection: 3,
            decision: Decision::Denied,
            key: Fingerprint::of(b"k"),
            host: Some("github.com".parse().expect("host")),
            host_key: None,
            bound: false,
            flags: 4,
            user: Some("git".to_owned()),
            signature_algorithm: None,
            reason: Some("session not bound".to_owned()),
            denial: Some("unbound"),
        });
        assert_eq!(event.event_type(), "ssh.sign");
        let json = event.to_json();
        assert_eq!(json["decision"], "denied");
        assert_eq!(json["host"], "github.com");
        assert_eq!(json["flags"], 4);
        assert_eq!(json["user"], "git");
        assert_eq!(json["reason"], "session not bound");
        assert_eq!(json["denial"], "unbound");
        assert!(json.get("signature_algorithm").is_none());
    }

    #[derive(Default)]
    struct RecordingAudit(Mutex<Vec<(String, serde_json::Value)>>);

    impl AuditSink for RecordingAudit {
        fn append(
            &self,
            event_type: &str,
            data: serde_json::Value,
        ) -> Result<(), moat_core::audit::AuditSinkError> {
            self.0
                .lock()
                .expect("lock")
                .push((event_type.to_owned(), data));
            Ok(())
        }

        fn close(&self) -> Result<(), moat_core::audit::AuditSinkError> {
            Ok(())
        }
    }

    #[test]
    fn audit_adapter_appends_type_and_data() {
        let audit = Arc::new(RecordingAudit::default());
        let dyn_audit: Arc<dyn AuditSink> = audit.clone();
        let sink = AuditEventSink::new(dyn_audit);
        let event = SshEvent::List(ListEvent {
            connection: 1,
            decision: Decision::Allowed,
            listed: vec![Fingerprint::of(b"k")],
            hidden: 2,
            reason: None,
        });
        sink.record(&event).expect("record");
        let recorded = audit.0.lock().expect("lock").clone();
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].0, "ssh.list");
        assert_eq!(recorded[0].1["hidden"], 2);
        assert_eq!(recorded[0].1["decision"], "allowed");
    }

    #[test]
    fn memory_sink_keeps_order() {
        let sink = MemoryEventSink::new();
        for connection in 0..3 {
            let event = SshEvent::Refused(RefusedEvent {
                connection,
                request: "lock".to_owned(),
                reason: "r".to_owned(),
            });
            sink.record(&event).expect("record");
        }
        let seen: Vec<u64> = sink
            .events()
            .iter()
            .map(|e| match e {
                SshEvent::Refused(r) => r.connection,
                _ => u64::MAX,
            })
            .collect();
        assert_eq!(seen, vec![0, 1, 2]);
    }
}
