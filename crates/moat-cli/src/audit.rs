//! Wiring of the tamper-evident audit log into runs: the `AuditSink` adapter, the per-run log
//! in `runs/<id>/audit.db`, and the installation key in `$MOAT_HOME/audit/signing.key`.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use moat_audit::AuditKey;
use moat_audit::AuditLog;
use moat_audit::LogOptions;
use moat_core::audit::AuditSink;
use moat_core::audit::AuditSinkError;
use moat_core::run::RunId;

use crate::context::Context;
use crate::error::CliError;
use crate::error::CliResult;
use crate::error::EXIT_PRE_RUN;

/// The run's audit log file (JSON Lines, `moat-audit-log/1`; the name follows SPEC §2.2).
pub(crate) const LOG_FILE: &str = "audit.db";
/// The closing checkpoint, kept beside the log as a witness against rollback.
pub(crate) const WITNESS_FILE: &str = "audit.witness.json";

/// The installation signing key path.
pub(crate) fn key_path(ctx: &Context) -> PathBuf {
    ctx.home.join("audit").join("signing.key")
}

/// The installation's public key, read without creating a key: checking or archiving evidence
/// must never mint a new signer (every log would then look foreign).
pub(crate) fn installation_public_key(
    ctx: &Context,
) -> Result<moat_audit::PublicKey, moat_audit::KeyError> {
    AuditKey::load(&key_path(ctx)).map(|k| k.public_key())
}

/// A run's audit log as the orchestrator's sink.
pub(crate) struct RunAudit {
    log: AuditLog,
    witness: PathBuf,
}

impl RunAudit {
    /// Creates the run's log, signed with the installation key (created on first use).
    pub(crate) fn create(ctx: &Context, run_dir: &Path, run_id: &RunId) -> CliResult<Arc<Self>> {
        let key = AuditKey::load_or_create(&key_path(ctx)).map_err(|e| {
            CliError::from_error(EXIT_PRE_RUN, &e)
                .hint("the audit signing key lives in $MOAT_HOME/audit/signing.key (mode 0600)")
        })?;
        let log = AuditLog::create(
            &run_dir.join(LOG_FILE),
            run_id.as_str(),
            key,
            LogOptions::default(),
        )
        .map_err(|e| CliError::from_error(EXIT_PRE_RUN, &e))?;
        Ok(Arc::new(Self {
            log,
            witness: run_dir.join(WITNESS_FILE),
        }))
    }

    /// Writes time-based checkpoints during quiet periods until the log is closed.
    pub(crate) fn spawn_checkpoint_timer(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let Some(audit) = weak.upgrade() else { return };
                if audit.log.checkpoint_if_due().is_err() {
                    return;
                }
            }
        });
    }
}

impl AuditSink for RunAudit {
    fn append(&self, event_type: &str, data: serde_json::Value) -> Result<(), AuditSinkError> {
        self.log
            .append(event_type, data)
            .map(drop)
            .map_err(|e| AuditSinkError {
                source: Box::new(e),
            })
    }

    fn close(&self) -> Result<(), AuditSinkError> {
        let checkpoint = self.log.close().map_err(|e| AuditSinkError {
            source: Box::new(e),
        })?;
        let bytes = serde_json::to_vec_pretty(&checkpoint).map_err(|e| AuditSinkError {
            source: Box::new(e),
        })?;
        moat_core::store::write_atomic(&self.witness, &bytes).map_err(|e| AuditSinkError {
            source: Box::new(e),
        })
    }
}
