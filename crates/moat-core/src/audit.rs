//! The audit seam: where the orchestrator sends security-relevant events.
//!
//! `moat-audit` provides the tamper-evident implementation; the orchestrator only knows this
//! trait. Event types follow SPEC §4.4 (`run.created`, `container.started`, …).

/// Well-known audit event types.
pub mod event {
    /// A run was created (config hash, image, runtime, moat version).
    pub const RUN_CREATED: &str = "run.created";
    /// The container started.
    pub const CONTAINER_STARTED: &str = "container.started";
    /// The container exited (exit code).
    pub const CONTAINER_EXITED: &str = "container.exited";
    /// A request went through the proxy.
    pub const NETWORK_REQUEST: &str = "network.request";
    /// A credential was injected into a request.
    pub const CREDENTIAL_INJECTED: &str = "credential.injected";
    /// SSH agent identities were listed.
    pub const SSH_LIST: &str = "ssh.list";
    /// An SSH signature was requested (allowed or denied).
    pub const SSH_SIGN: &str = "ssh.sign";
    /// An SSH agent request was refused (unbound session, forwarding, unknown key).
    pub const SSH_REFUSED: &str = "ssh.refused";
    /// The run finished.
    pub const RUN_FINISHED: &str = "run.finished";
}

/// Why an audit event could not be recorded.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the audit log")]
pub struct AuditSinkError {
    /// The underlying error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Receives audit events. Calls are synchronous and expected to be quick (a local append).
pub trait AuditSink: Send + Sync {
    /// Appends one event.
    fn append(&self, event_type: &str, data: serde_json::Value) -> Result<(), AuditSinkError>;

    /// Writes a signed checkpoint covering everything appended so far and closes the log.
    fn close(&self) -> Result<(), AuditSinkError>;
}

/// An audit sink that records nothing, for embedders that do not want an audit log.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoAudit;

impl AuditSink for NoAudit {
    fn append(&self, _event_type: &str, _data: serde_json::Value) -> Result<(), AuditSinkError> {
        Ok(())
    }

    fn close(&self) -> Result<(), AuditSinkError> {
        Ok(())
    }
}
