//! Commands over existing runs: `list`, `logs`, `attach`, `stop`, `destroy`.

use std::io::IsTerminal;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use moat_core::orchestrator::Orchestrator;
use moat_core::run::RunMetadata;
use moat_core::run::RunState;
use moat_core::runtime::ContainerStatus;
use moat_core::store::LogRecord;
use moat_core::store::LogStream;
use moat_core::store::RunStore;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use std::os::unix::fs::DirBuilderExt;

use crate::cli::DestroyArgs;
use crate::cli::LogsArgs;
use crate::cli::RunRef;
use crate::context::Context;
use crate::error::CliError;
use crate::error::CliResult;
use crate::error::EXIT_FAILURE;
use crate::output;
use crate::term;

/// Loads every run, reporting unreadable ones as warnings.
fn load_runs(store: &RunStore) -> CliResult<Vec<RunMetadata>> {
    let (runs, errors) = store
        .list()
        .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?;
    for e in errors {
        output::warn(format_args!("{e}"));
    }
    Ok(runs)
}

/// Resolves a run reference, with hints on failure.
fn resolve(
    runs: &[RunMetadata],
    reference: Option<&str>,
    filter: impl Fn(&RunMetadata) -> bool,
    what: &'static str,
) -> CliResult<RunMetadata> {
    RunStore::resolve(runs, reference, filter, what)
        .cloned()
        .map_err(|e| {
            let err = CliError::from_error(EXIT_FAILURE, &e);
            match e {
                moat_core::store::StoreError::Ambiguous { .. } => err.hint("use the full run ID"),
                _ => err.hint("`moat list` shows every run"),
            }
        })
}

/// Brings runs whose supervisor died to their real state. Needs the runtime only when such
/// runs exist; if it cannot be reached, the stored state is kept and a warning printed.
async fn reconcile_all(ctx: &Context, runs: &mut [RunMetadata]) {
    let store = ctx.store();
    let stale: Vec<usize> = runs
        .iter()
        .enumerate()
        .filter(|(_, r)| r.state.is_active() && !store.is_supervised(&r.id))
        .map(|(i, _)| i)
        .collect();
    if stale.is_empty() {
        return;
    }
    for i in stale {
        let Some(run) = runs.get(i).cloned() else {
            continue;
        };
        match ctx.orchestrator(run.runtime).await {
            Ok(orch) => match orch.reconcile(&run).await {
                Ok(updated) => {
                    if let Some(slot) = runs.get_mut(i) {
                        *slot = updated;
                    }
                }
                Err(e) => output::warn(format_args!(
                    "cannot reconcile run {}: {}",
                    run.id,
                    moat_core::orchestrator::error_chain(&e)
                )),
            },
            Err(e) => {
                output::warn(format_args!(
                    "run {} lost its supervisor and the runtime cannot be reached to clean it up: {}",
                    run.id, e.message
                ));
            }
        }
    }
}

/// `moat list`.
pub(crate) async fn list(ctx: &Context) -> CliResult<i32> {
    let mut runs = load_runs(&ctx.store())?;
    reconcile_all(ctx, &mut runs).await;
    if ctx.args.json {
        output::json(&runs);
        return Ok(0);
    }
    if runs.is_empty() {
        output::info(ctx, format_args!("no runs yet; start one with `moat run`"));
        return Ok(0);
    }
    let mut table = vec![[
        "NAME".to_owned(),
        "ID".to_owned(),
        "STATE".to_owned(),
        "AGE".to_owned(),
        "IMAGE".to_owned(),
        "EXIT".to_owned(),
    ]];
    for r in runs.iter().rev() {
        table.push([
            r.name.clone(),
            r.id.to_string(),
            r.state.to_string(),
            age(r.created_at),
            r.image.clone(),
            r.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| table.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in &table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    output::data(&text);
    Ok(0)
}

fn age(t: chrono::DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn format_record(r: &LogRecord) -> String {
    let ts = r.ts.format("%Y-%m-%dT%H:%M:%S%.3fZ");
    match r.stream {
        LogStream::Stderr => format!("{ts} stderr {}", r.line),
        LogStream::Stdout => format!("{ts} stdout {}", r.line),
        LogStream::Tty => format!("{ts} tty    {}", r.line),
    }
}

fn print_records(ctx: &Context, records: &[LogRecord]) {
    let mut text = String::new();
    for r in records {
        if ctx.args.json {
            text.push_str(&serde_json::to_string(r).unwrap_or_default());
        } else {
            text.push_str(&format_record(r));
        }
        text.push('\n');
    }
    output::data(&text);
}

/// `moat logs`.
pub(crate) async fn logs(ctx: &Context, args: LogsArgs) -> CliResult<i32> {
    let store = ctx.store();
    let runs = load_runs(&store)?;
    let run = resolve(&runs, args.run.as_deref(), |_| true, "")?;
    let records = store
        .read_logs(&run.id)
        .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?;
    let start = args.lines.map_or(0, |n| records.len().saturating_sub(n));
    print_records(ctx, records.get(start..).unwrap_or_default());
    if !args.follow {
        return Ok(0);
    }
    follow(
        &store,
        &run.id,
        records.len(),
        |id| store.read_logs(id),
        |new| print_records(ctx, new),
    )
    .await
}

/// Prints what a live run appends to one of its JSON Lines files (`read` reads it whole) until
/// its supervisor is gone; `seen` records were already printed.
pub(crate) async fn follow<T>(
    store: &RunStore,
    id: &moat_core::run::RunId,
    mut seen: usize,
    read: impl Fn(&moat_core::run::RunId) -> Result<Vec<T>, moat_core::store::StoreError>,
    print: impl Fn(&[T]),
) -> CliResult<i32> {
    loop {
        // Checked before reading, so the last records of a run that just ended are printed.
        let live = store.is_supervised(id);
        let records = read(id).map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?;
        if records.len() > seen {
            print(records.get(seen..).unwrap_or_default());
            seen = records.len();
        }
        if !live {
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `moat attach`.
pub(crate) async fn attach(ctx: &Context, args: RunRef) -> CliResult<i32> {
    let runs = load_runs(&ctx.store())?;
    let run = resolve(
        &runs,
        args.run.as_deref(),
        |r| r.state == RunState::Running,
        "running",
    )?;
    if run.state != RunState::Running {
        return Err(CliError::new(
            EXIT_FAILURE,
            format!("run {} is {}, not running", run.id, run.state),
        )
        .hint(format!("`moat logs {}` shows its output", run.id)));
    }
    let Some(container) = run.container_id.clone() else {
        return Err(CliError::new(
            EXIT_FAILURE,
            format!("run {} has no container", run.id),
        ));
    };
    let orch = ctx.orchestrator(run.runtime).await?;
    let rt = orch.runtime().clone();
    let tty = run.spec.tty && std::io::stdin().is_terminal();
    let session = rt
        .attach(&container, run.spec.stdin, true, Some("ctrl-p,ctrl-q"))
        .await
        .map_err(|e| crate::context::runtime_error(&e))?;
    if tty {
        output::info(
            ctx,
            format_args!("attached to {}; detach with ctrl-p ctrl-q", run.id),
        );
    } else {
        output::info(
            ctx,
            format_args!("attached to {}; press ctrl-c to detach", run.id),
        );
    }
    let raw = if tty { term::RawMode::enable() } else { None };
    if run.spec.tty {
        let (tx, mut rx) = mpsc::unbounded_channel();
        term::forward_resizes(tx);
        let rt = rt.clone();
        let container = container.clone();
        tokio::spawn(async move {
            while let Some((rows, cols)) = rx.recv().await {
                let _ = rt.resize(&container, rows, cols).await;
            }
        });
    }
    if run.spec.stdin {
        let mut input = session.input;
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let _ = tokio::io::copy(&mut stdin, &mut input).await;
        });
    }
    let interrupted = tokio_util::sync::CancellationToken::new();
    if !tty {
        term::cancel_on_signals(interrupted.clone(), true);
    }
    let mut output = session.output;
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    loop {
        tokio::select! {
            item = output.next() => match item {
                Some(Ok(chunk)) => {
                    let result = match chunk.stream {
                        LogStream::Stderr => stderr.write_all(&chunk.bytes).await,
                        _ => stdout.write_all(&chunk.bytes).await,
                    };
                    let _ = stdout.flush().await;
                    if result.is_err() {
                        break;
                    }
                }
                _ => break,
            },
            () = interrupted.cancelled() => break,
        }
    }
    drop(raw);
    // Either the container ended (report its code) or we detached (0). The engine may take a
    // moment to report the exit after the stream closes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match rt.status(&container).await {
            Ok(ContainerStatus::Exited(code)) => return Ok(i32::try_from(code).unwrap_or(1)),
            Ok(ContainerStatus::Missing) => return Ok(0),
            _ if tokio::time::Instant::now() >= deadline || interrupted.is_cancelled() => {
                output::info(ctx, format_args!("\ndetached from {}", run.id));
                return Ok(0);
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Asks a run's supervisor to stop the run and waits until it has; runs without a live
/// supervisor are reconciled directly.
async fn stop_run(ctx: &Context, orch: &Orchestrator, run: &RunMetadata) -> CliResult<RunMetadata> {
    let store = ctx.store();
    if store.is_supervised(&run.id) {
        let Some(pid) = run
            .supervisor_pid
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| *p > 0)
        else {
            return Err(CliError::new(
                EXIT_FAILURE,
                format!("run {} is supervised but its supervisor is unknown", run.id),
            ));
        };
        nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM).map_err(|e| {
            CliError::new(
                EXIT_FAILURE,
                format!(
                    "cannot signal the supervisor of {} (pid {pid}): {e}",
                    run.id
                ),
            )
        })?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while store.is_supervised(&run.id) {
            if tokio::time::Instant::now() > deadline {
                return Err(CliError::new(
                    EXIT_FAILURE,
                    format!("run {} did not stop within 60 seconds", run.id),
                )
                .hint(format!(
                    "try again, or `kill -9 {pid}` and then `moat stop {}`",
                    run.id
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        return store
            .load(&run.id)
            .map_err(|e| CliError::from_error(EXIT_FAILURE, &e));
    }
    orch.reconcile(run)
        .await
        .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))
}

/// `moat stop`.
pub(crate) async fn stop(ctx: &Context, args: RunRef) -> CliResult<i32> {
    let runs = load_runs(&ctx.store())?;
    let run = resolve(
        &runs,
        args.run.as_deref(),
        |r| r.state.is_active(),
        "running",
    )?;
    if !run.state.is_active() {
        if ctx.args.json {
            output::json(&run);
        } else {
            output::info(ctx, format_args!("run {} is already {}", run.id, run.state));
        }
        return Ok(0);
    }
    let orch = ctx.orchestrator(run.runtime).await?;
    let updated = stop_run(ctx, &orch, &run).await?;
    if ctx.args.json {
        output::json(&updated);
    } else {
        output::info(
            ctx,
            format_args!("stopped {} ({})", updated.id, updated.name),
        );
    }
    Ok(0)
}

/// `moat destroy`.
pub(crate) async fn destroy(ctx: &Context, args: DestroyArgs) -> CliResult<i32> {
    let store = ctx.store();
    let runs = load_runs(&store)?;
    let run = resolve(&runs, args.run.as_deref(), |_| true, "")?;
    let orch = ctx.orchestrator(run.runtime).await?;
    if run.state.is_active() {
        stop_run(ctx, &orch, &run).await?;
    }
    orch.remove_objects(&run)
        .await
        .map_err(|e| crate::context::runtime_error(&e))?;
    let archived = if args.purge {
        None
    } else {
        archive_evidence(ctx, &run)?
    };
    store
        .remove(&run.id)
        .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?;
    if let Some(path) = &archived {
        output::info(
            ctx,
            format_args!("audit evidence archived to {}", path.display()),
        );
    }
    if ctx.args.json {
        output::json(&serde_json::json!({ "destroyed": run.id, "evidence": archived }));
    } else {
        output::info(ctx, format_args!("destroyed {} ({})", run.id, run.name));
    }
    Ok(0)
}

/// Exports the run's signed audit log as a bundle into `$MOAT_HOME/evidence/` before the run
/// directory goes. A run without a log has nothing to archive; a log that cannot be exported
/// stops the destroy, so evidence is never lost silently.
fn archive_evidence(ctx: &Context, run: &RunMetadata) -> CliResult<Option<std::path::PathBuf>> {
    let log = ctx.store().dir(&run.id).join(crate::audit::LOG_FILE);
    if !log.exists() {
        return Ok(None);
    }
    let key = crate::audit::installation_public_key(ctx).map_err(|e| {
            CliError::from_error(EXIT_FAILURE, &e).hint(format!(
                "the audit key is missing, so the evidence of {} cannot be archived; `moat destroy --purge` deletes it anyway",
                run.id
            ))
        })?;
    let dir = ctx.home.join("evidence");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| {
            CliError::new(
                EXIT_FAILURE,
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
    let out = dir.join(format!("{}.bundle.json", run.id));
    moat_audit::export_bundle_to(&log, &out, &key).map_err(|e| {
        CliError::from_error(EXIT_FAILURE, &e).hint(format!(
            "the run directory was kept; `moat destroy --purge {}` deletes it without archiving",
            run.id
        ))
    })?;
    Ok(Some(out))
}
