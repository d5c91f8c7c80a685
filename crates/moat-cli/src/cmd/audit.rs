//! `moat audit`: verify, export, prove; `moat audit verify FILE`; `moat audit key`.

use moat_audit::Checkpoint;
use moat_audit::Evidence;
use moat_audit::PublicKey;
use moat_audit::Report;
use moat_audit::Verdict;

use crate::audit::LOG_FILE;
use crate::audit::WITNESS_FILE;
use crate::audit::key_path;
use crate::cli::AuditArgs;
use crate::cli::AuditCommand;
use crate::context::Context;
use crate::error::CliError;
use crate::error::CliResult;
use crate::error::EXIT_FAILURE;
use crate::output;

/// Exit code when the evidence was modified.
const EXIT_TAMPERED: i32 = 1;

pub(crate) async fn audit(ctx: &Context, args: AuditArgs) -> CliResult<i32> {
    match args.command {
        Some(AuditCommand::Verify { file, key }) => verify_file(ctx, &file, key.as_deref()),
        Some(AuditCommand::Key) => key(ctx),
        None => run_audit(ctx, args.run.as_deref(), args.export.as_deref(), args.prove),
    }
}

fn installation_key(ctx: &Context) -> CliResult<PublicKey> {
    crate::audit::installation_public_key(ctx).map_err(|e| {
        CliError::from_error(EXIT_FAILURE, &e).hint(format!(
            "runs are signed with {}, created by the first run; without it, logs cannot be \
             checked here (`moat audit verify FILE --key PUBKEY` checks a bundle against a key \
             you have)",
            key_path(ctx).display()
        ))
    })
}

fn run_audit(
    ctx: &Context,
    reference: Option<&str>,
    export: Option<&std::path::Path>,
    prove: Option<u64>,
) -> CliResult<i32> {
    let store = ctx.store();
    let (runs, _) = store
        .list()
        .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?;
    let run = moat_core::store::RunStore::resolve(&runs, reference, |_| true, "")
        .map_err(|e| CliError::from_error(EXIT_FAILURE, &e).hint("`moat list` shows every run"))?;
    let dir = store.dir(&run.id);
    let log = dir.join(LOG_FILE);
    if !log.exists() {
        return Err(CliError::new(
            EXIT_FAILURE,
            format!("run {} has no audit log ({} is missing)", run.id, log.display()),
        )
        .hint("runs created before the audit log existed, or whose log was deleted, cannot be verified"));
    }
    let key = installation_key(ctx)?;
    if let Some(seq) = prove {
        let evidence =
            Evidence::from_log_file(&log).map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?;
        let receipt = evidence
            .prove_inclusion(seq)
            .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?;
        receipt
            .verify(&key)
            .map_err(|e| CliError::from_error(EXIT_TAMPERED, &e))?;
        output::json(&receipt);
        output::info(
            ctx,
            format_args!("entry {seq} is included in the signed tree; the proof verifies"),
        );
        return Ok(0);
    }
    let witness_path = dir.join(WITNESS_FILE);
    let witness = match std::fs::read(&witness_path) {
        Ok(bytes) => Some(serde_json::from_slice::<Checkpoint>(&bytes).map_err(|e| {
            CliError::new(
                EXIT_TAMPERED,
                format!(
                    "TAMPERED: the closing checkpoint kept in {} is not a checkpoint ({e}): it was altered",
                    witness_path.display()
                ),
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(CliError::new(
                EXIT_FAILURE,
                format!("cannot read {}: {e}", witness_path.display()),
            ));
        }
    };
    let report = match &witness {
        Some(w) => moat_audit::verify_log_with_witness(&log, &key, w),
        None => moat_audit::verify_log(&log, &key),
    }
    .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?;
    if witness.is_none() && report.verdict == Verdict::Unfinished {
        output::warn(format_args!(
            "{} is missing, so a log cut back to an earlier checkpoint would also look unfinished; \
             a rollback cannot be ruled out for this run",
            witness_path.display()
        ));
    }
    if let Some(out) = export {
        moat_audit::export_bundle_to(&log, out, &key)
            .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?;
        output::info(ctx, format_args!("bundle written to {}", out.display()));
    }
    print_report(ctx, &report);
    Ok(exit_code(&report))
}

fn verify_file(ctx: &Context, file: &std::path::Path, key: Option<&str>) -> CliResult<i32> {
    let pinned = match key {
        Some(k) => Some(read_key(k)?),
        None => None,
    };
    let report = moat_audit::verify_file(file, pinned.as_ref())
        .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?;
    print_report(ctx, &report);
    if pinned.is_none() && !report.is_tampered() {
        output::warn(format_args!(
            "no --key given: the bundle is self-consistent, but anyone could have signed it; pin the signer with `--key PUBKEY`"
        ));
    }
    Ok(exit_code(&report))
}

/// A key given as a file (PEM or hex) or as hex text.
fn read_key(k: &str) -> CliResult<PublicKey> {
    let path = std::path::Path::new(k);
    let parsed = if path.exists() {
        PublicKey::read(path)
    } else {
        PublicKey::parse(k)
    };
    parsed.map_err(|e| {
        CliError::from_error(EXIT_FAILURE, &e)
            .hint("pass the signer's public key as a file (PEM or hex) or as 64 hex digits; `moat audit key` prints it")
    })
}

fn print_report(ctx: &Context, report: &Report) {
    if ctx.args.json {
        output::json(report);
    } else {
        output::data(&format!("{report}\n"));
    }
}

fn exit_code(report: &Report) -> i32 {
    match report.verdict {
        Verdict::Tampered => EXIT_TAMPERED,
        _ => 0,
    }
}

fn key(ctx: &Context) -> CliResult<i32> {
    ctx.ensure_home()?;
    let info = moat_audit::AuditKey::load_or_create(&key_path(ctx))
        .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?
        .public_key()
        .info();
    if ctx.args.json {
        output::json(&info);
    } else {
        output::data(&format!(
            "fingerprint {}\nkey id      {}\npublic key  {}\n{}",
            info.fingerprint, info.key_id, info.public_key_hex, info.public_key_pem
        ));
    }
    Ok(0)
}
