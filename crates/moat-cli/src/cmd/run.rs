//! `moat run` and the detached supervisor.

use std::io::BufRead;
use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use indicatif::ProgressBar;
use indicatif::ProgressStyle;
use moat_core::audit::AuditSink;
use moat_core::config::EnvName;
use moat_core::config::MoatConfig;
use moat_core::config::RunName;
use moat_core::config::RuntimeKind;
use moat_core::egress::AllowSpec;
use moat_core::egress::HostRules;
use moat_core::egress::PolicyMode;
use moat_core::host::HostPattern;
use moat_core::orchestrator::Orchestrator;
use moat_core::orchestrator::RunIo;
use moat_core::orchestrator::RunRequest;
use moat_core::orchestrator::RunServices;
use moat_core::run::RunId;
use moat_core::run::RunMetadata;
use moat_core::run::RunSpec;
use moat_core::runtime::PullProgress;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::audit::RunAudit;
use crate::cli::PolicyArg;
use crate::cli::RunArgs;
use crate::cli::RuntimeArg;
use crate::context::Context;
use crate::context::runtime_error;
use crate::error::CliError;
use crate::error::CliResult;
use crate::error::EXIT_PRE_RUN;
use crate::output;
use crate::term;

/// `moat run`: returns the process exit code.
pub(crate) async fn run(ctx: &Context, args: RunArgs) -> CliResult<i32> {
    let pre = |e: CliError| CliError {
        code: EXIT_PRE_RUN,
        ..e
    };
    let plan = plan(ctx, &args).map_err(pre)?;
    ctx.ensure_home().map_err(pre)?;
    let orch = ctx.orchestrator(plan.runtime).await.map_err(pre)?;
    pull_with_progress(ctx, &orch, &plan.request.image)
        .await
        .map_err(pre)?;
    crate::ssh::check_run_grants(ctx, &plan.request.grants).map_err(pre)?;
    crate::egress::check_grants(ctx, &plan.request.grants).map_err(pre)?;
    let mut meta = orch
        .create_run(plan.request)
        .map_err(|e| CliError::from_error(EXIT_PRE_RUN, &e))?;
    if !crate::ssh::ssh_grant_names(&meta.grants).is_empty() {
        // The run exists from here on: a failure is recorded in it, not left as `created`.
        meta = crate::ssh::prepare_run(ctx, &meta)
            .map_err(|e| fail_run(&orch, &meta, None, pre(e)))?;
    }
    if args.detach {
        return spawn_detached(ctx, &meta);
    }
    output::info(ctx, format_args!("run {} ({}) started", meta.id, meta.name));
    supervise_foreground(ctx, &orch, &meta).await
}

/// The resolved inputs of a run.
struct Plan {
    request: RunRequest,
    runtime: RuntimeKind,
}

fn plan(ctx: &Context, args: &RunArgs) -> CliResult<Plan> {
    let workspace = resolve_workspace(&args.path)?;
    let (config, config_path) = MoatConfig::load_from_dir(&workspace).map_err(|e| {
        let hint = e.hint().map(str::to_owned);
        let err = CliError::new(EXIT_PRE_RUN, &e);
        match hint {
            Some(h) => err.hint(h),
            None => err,
        }
    })?;
    if let Some(p) = &config_path {
        output::debug(ctx, format_args!("using {}", p.display()));
    }
    let mut grants = config.grants.clone();
    for g in &args.grants {
        if !grants.contains(g) {
            grants.push(g.clone());
        }
    }
    refuse_unavailable(&config)?;
    let runtime = match args.runtime {
        Some(RuntimeArg::Docker) => RuntimeKind::Docker,
        Some(RuntimeArg::Apple) => RuntimeKind::Apple,
        None => match config.runtime {
            Some(r) => r,
            None => ctx.configured_runtime()?.unwrap_or(RuntimeKind::Docker),
        },
    };
    let image = args
        .image
        .clone()
        .or_else(|| config.image.clone())
        .unwrap_or_else(|| ctx.default_image());
    let name = match &args.name {
        Some(n) => RunName::new(n)
            .map_err(|e| CliError::new(EXIT_PRE_RUN, e).hint("pass a valid name with `-n`"))?,
        None => config
            .name
            .clone()
            .or_else(|| {
                workspace
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(RunName::sanitize)
            })
            .unwrap_or_default(),
    };
    let command = if args.command.is_empty() {
        config.command.as_ref().map(|c| c.to_argv())
    } else {
        Some(args.command.clone())
    };
    let meta = std::fs::metadata(&workspace).map_err(|e| {
        CliError::new(
            EXIT_PRE_RUN,
            format!("cannot read workspace {}: {e}", workspace.display()),
        )
    })?;
    let (uid, gid) = (meta.uid(), meta.gid());
    let mut env: Vec<(String, String)> = config
        .env
        .iter()
        .map(|(k, v)| (k.0.clone(), v.0.clone()))
        .collect();
    for item in &args.env {
        let (k, v) = item.split_once('=').ok_or_else(|| {
            CliError::new(EXIT_PRE_RUN, format!("invalid `-e {item}`"))
                .hint("write environment variables as `-e KEY=VALUE`")
        })?;
        if !EnvName::is_valid(k) {
            return Err(CliError::new(
                EXIT_PRE_RUN,
                format!("invalid environment variable name `{k}` in `-e {item}`"),
            )
            .hint("use letters, digits and `_`, not starting with a digit"));
        }
        env.retain(|(existing, _)| existing != k);
        env.push((k.to_owned(), v.to_owned()));
    }
    if uid != 0 && !env.iter().any(|(k, _)| k == "HOME") {
        // The workspace owner usually has no passwd entry in the image; give tools a
        // writable home.
        env.push(("HOME".into(), "/tmp".into()));
    }
    let interactive = args.interactive || config.interactive;
    // Detached interactive runs always get a TTY, for `moat attach`.
    let tty = interactive && (args.detach || std::io::stdin().is_terminal());
    let mut mounts = Vec::new();
    for m in &config.mounts {
        let source = if m.source.is_absolute() {
            m.source.clone()
        } else {
            workspace.join(&m.source)
        };
        if !source.exists() {
            return Err(CliError::new(
                EXIT_PRE_RUN,
                format!("mount source {} does not exist", source.display()),
            )
            .hint("create it or fix `mounts:` in moat.yaml"));
        }
        mounts.push((source, m.target.clone(), m.readonly));
    }
    let policy = match args.policy {
        Some(PolicyArg::Permissive) => PolicyMode::Permissive,
        Some(PolicyArg::Strict) => PolicyMode::Strict,
        Some(PolicyArg::None) => PolicyMode::None,
        None => config.network.policy,
    };
    if policy == PolicyMode::None && grants.iter().any(|g| !g.starts_with("ssh:")) {
        return Err(CliError::new(
            EXIT_PRE_RUN,
            "credential grants need network access, but the network policy is `none`",
        )
        .hint("use `--policy strict` to reach only the granted hosts"));
    }
    let mut network_allow: Vec<AllowSpec> = config
        .allow_rules()
        .iter()
        .map(AllowSpec::from_rules)
        .collect();
    for host in &args.allow {
        let pattern = HostPattern::parse(host)
            .map_err(|e| CliError::new(EXIT_PRE_RUN, format!("invalid `--allow {host}`: {e}")))?;
        network_allow.push(AllowSpec::from_rules(&HostRules::any(pattern)));
    }
    if policy != PolicyMode::None {
        // The proxy variables are moat's; a run cannot point them elsewhere.
        env.retain(|(k, _)| {
            let reserved = moat_core::egress::RESERVED_ENV.contains(&k.as_str());
            if reserved {
                output::warn(format_args!(
                    "ignoring `{k}` from the run's environment: moat sets it to the run's proxy"
                ));
            }
            !reserved
        });
    }
    let spec = RunSpec {
        command,
        env,
        tty,
        stdin: interactive,
        keep: args.keep,
        user: format!("{uid}:{gid}"),
        mounts,
        ports: config.ports.iter().map(|p| (p.host, p.container)).collect(),
        memory_bytes: config.container.memory.map(|m| m.0),
        cpus: config.container.cpus.map(|c| c.0),
        detached: args.detach,
        network_allow,
    };
    Ok(Plan {
        request: RunRequest {
            name: name.to_string(),
            workspace,
            image,
            runtime,
            grants,
            policy,
            spec,
        },
        runtime,
    })
}

/// Refuses moat.yaml features this version cannot honour yet, rather than silently running
/// without them.
fn refuse_unavailable(config: &MoatConfig) -> CliResult<()> {
    if !config.secrets.is_empty() {
        return Err(CliError::new(
            EXIT_PRE_RUN,
            "moat.yaml has `secrets:`, but secret resolution is not available in this version",
        )
        .hint("remove `secrets:` from moat.yaml, or pass values with `-e KEY=VALUE`"));
    }
    if !config.dependencies.is_empty() {
        output::warn(format_args!(
            "moat.yaml `dependencies` ({}) are not installed by this version; use an image that has them",
            config.dependencies.join(", ")
        ));
    }
    Ok(())
}

fn resolve_workspace(path: &Path) -> CliResult<std::path::PathBuf> {
    let canonical = std::fs::canonicalize(path).map_err(|e| {
        CliError::new(
            EXIT_PRE_RUN,
            format!("workspace {} does not exist ({e})", path.display()),
        )
        .hint("pass an existing directory: `moat run PATH -- COMMAND`")
    })?;
    if !canonical.is_dir() {
        return Err(CliError::new(
            EXIT_PRE_RUN,
            format!("workspace {} is not a directory", path.display()),
        )
        .hint("pass a directory: `moat run PATH -- COMMAND`"));
    }
    Ok(canonical)
}

async fn pull_with_progress(ctx: &Context, orch: &Orchestrator, image: &str) -> CliResult<()> {
    let bar = if !ctx.args.quiet && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(format!("pulling {image}"));
        Some(bar)
    } else {
        None
    };
    let progress_bar = bar.clone();
    let report = move |p: PullProgress| {
        if let Some(bar) = &progress_bar {
            bar.set_length(p.total);
            bar.set_position(p.current);
        }
    };
    let result = orch.ensure_image(image, &report).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result.map(|_| ()).map_err(|e| runtime_error(&e))
}

async fn supervise_foreground(
    ctx: &Context,
    orch: &Orchestrator,
    meta: &RunMetadata,
) -> CliResult<i32> {
    let cancel = CancellationToken::new();
    term::cancel_on_signals(cancel.clone(), !meta.spec.tty);
    let (resize, _raw) = if meta.spec.tty {
        let raw = term::RawMode::enable();
        let (tx, rx) = mpsc::unbounded_channel();
        term::forward_resizes(tx);
        (Some(rx), raw)
    } else {
        (None, None)
    };
    let io = RunIo {
        stdout: Box::new(tokio::io::stdout()),
        stderr: Box::new(tokio::io::stderr()),
        stdin: meta
            .spec
            .stdin
            .then(|| Box::new(tokio::io::stdin()) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        resize,
        cancel,
        started: None,
    };
    // The user waits for this process: the container and network are removed from a
    // background process once the run's record is complete.
    let outcome = supervise_run(ctx, orch, meta, io, true).await;
    spawn_teardown(ctx, orch, meta).await;
    drop(_raw);
    match outcome? {
        Ok(outcome) => {
            output::debug(
                ctx,
                format_args!(
                    "run {} {} with code {}",
                    meta.id, outcome.state, outcome.exit_code
                ),
            );
            Ok(i32::try_from(outcome.exit_code).unwrap_or(1))
        }
        Err(e) => {
            // 125 only when the container never ran (SPEC §3); a failure after it started
            // (recording its output, say) is an ordinary failure.
            let started = orch
                .store()
                .load(&meta.id)
                .is_ok_and(|m| m.started_at.is_some());
            let code = if started {
                crate::error::EXIT_FAILURE
            } else {
                EXIT_PRE_RUN
            };
            Err(CliError::from_error(code, &e).hint(format!(
                "details are in `moat logs {}` and `moat list`",
                meta.id
            )))
        }
    }
}

/// Supervises a created run in this process: opens its audit log, starts its SSH agent and
/// egress services, and drives it. Setup failures mark the run failed (before any container
/// exists) and are the outer error; the inner result is the orchestrator's.
async fn supervise_run(
    ctx: &Context,
    orch: &Orchestrator,
    meta: &RunMetadata,
    io: RunIo,
    defer_teardown: bool,
) -> CliResult<Result<moat_core::orchestrator::RunOutcome, moat_core::orchestrator::RunError>> {
    let audit: Arc<dyn AuditSink> = RunAudit::create(ctx, &orch.store().dir(&meta.id), &meta.id)
        .map(|audit| {
            audit.spawn_checkpoint_timer();
            audit as Arc<dyn AuditSink>
        })
        .map_err(|e| fail_run(orch, meta, None, e))?;
    let agent = crate::ssh::start_agent(ctx, meta, audit.clone())
        .await
        .map_err(|e| fail_run(orch, meta, Some(&audit), e))?;
    let services = run_services(ctx, meta, audit.clone(), defer_teardown)
        .map_err(|e| fail_run(orch, meta, Some(&audit), e))?;
    let outcome = orch
        .supervise(&meta.id, io, services, std::process::id())
        .await;
    if let Some(agent) = agent {
        agent.shutdown().await;
    }
    Ok(outcome)
}

/// Records why a run failed before its container existed, closing its audit log if open.
fn fail_run(
    orch: &Orchestrator,
    meta: &RunMetadata,
    audit: Option<&Arc<dyn AuditSink>>,
    e: CliError,
) -> CliError {
    let message = e.message.clone();
    let _ = orch.store().update(&meta.id, |m| {
        m.state = moat_core::run::RunState::Failed;
        m.error = Some(message);
        m.ended_at = Some(chrono::Utc::now());
    });
    if let Some(audit) = audit {
        let _ = audit.close();
    }
    e
}

/// The run's collaborators: audit log, credential provider and egress proxy.
fn run_services(
    ctx: &Context,
    meta: &RunMetadata,
    audit: Arc<dyn AuditSink>,
    defer_teardown: bool,
) -> CliResult<RunServices> {
    let egress: Option<Arc<dyn moat_core::egress::Egress>> = if meta.policy == PolicyMode::None {
        None
    } else {
        Some(Arc::new(crate::egress::ProxyEgress::new(ctx)?))
    };
    Ok(RunServices {
        audit,
        credentials: crate::egress::credentials(ctx, meta)?,
        egress,
        defer_teardown,
    })
}

/// Removes a finished run's container and network from a background process (or inline if
/// none can be started), so `moat run` returns without waiting for the engine.
async fn spawn_teardown(ctx: &Context, orch: &Orchestrator, meta: &RunMetadata) {
    let spawned = std::env::current_exe().ok().and_then(|exe| {
        std::process::Command::new(exe)
            .arg("__teardown")
            .arg(meta.id.as_str())
            .env("MOAT_HOME", &ctx.home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()
    });
    if spawned.is_none()
        && let Ok(latest) = orch.store().load(&meta.id)
    {
        orch.teardown(&latest).await;
    }
}

/// `moat __teardown RUN`: removes a finished run's runtime objects.
pub(crate) async fn teardown(ctx: &Context, run_id: &str) -> CliResult<i32> {
    let _ = nix::unistd::setsid();
    let id: RunId = run_id.parse().map_err(|e| CliError::new(EXIT_PRE_RUN, e))?;
    let meta = ctx
        .store()
        .load(&id)
        .map_err(|e| CliError::from_error(EXIT_PRE_RUN, &e))?;
    let orch = ctx.orchestrator(meta.runtime).await?;
    orch.teardown(&meta).await;
    Ok(0)
}

/// Starts the supervisor in the background and prints the run ID once the container runs.
fn spawn_detached(ctx: &Context, meta: &RunMetadata) -> CliResult<i32> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new(EXIT_PRE_RUN, format!("cannot find the moat binary: {e}")))?;
    let log_path = ctx.store().dir(&meta.id).join("supervisor.log");
    let log = std::fs::File::create(&log_path).map_err(|e| {
        CliError::new(
            EXIT_PRE_RUN,
            format!("cannot create {}: {e}", log_path.display()),
        )
    })?;
    let mut child = std::process::Command::new(exe)
        .arg("__supervise")
        .arg(meta.id.as_str())
        .env("MOAT_HOME", &ctx.home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| CliError::new(EXIT_PRE_RUN, format!("cannot start the supervisor: {e}")))?;
    let Some(stdout) = child.stdout.take() else {
        return Err(CliError::new(EXIT_PRE_RUN, "cannot talk to the supervisor"));
    };
    let mut first = String::new();
    let _ = std::io::BufReader::new(stdout).read_line(&mut first);
    if first.trim() == "ready" {
        output::data_line(meta.id.as_str());
        output::info(
            ctx,
            format_args!(
                "run {} ({}) is running in the background; `moat logs -f {}` follows it",
                meta.id, meta.name, meta.id
            ),
        );
        Ok(0)
    } else {
        let _ = child.wait();
        let reason = first
            .trim()
            .strip_prefix("error: ")
            .map(str::to_owned)
            .unwrap_or_else(|| {
                std::fs::read_to_string(&log_path)
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            });
        Err(CliError::new(
            EXIT_PRE_RUN,
            format!("run {} failed to start: {reason}", meta.id),
        ))
    }
}

/// `moat __supervise RUN`: the detached supervisor.
pub(crate) async fn supervise_detached(ctx: &Context, run_id: &str) -> CliResult<i32> {
    // Leave the terminal's session so its signals and hang-ups do not reach us.
    let _ = nix::unistd::setsid();
    let id: RunId = run_id.parse().map_err(|e| CliError::new(EXIT_PRE_RUN, e))?;
    let store = ctx.store();
    let meta = store
        .load(&id)
        .map_err(|e| CliError::from_error(EXIT_PRE_RUN, &e))?;
    let orch = match ctx.orchestrator(meta.runtime).await {
        Ok(o) => o,
        Err(e) => {
            output::data_line(&format!("error: {}", e.message));
            return Err(e);
        }
    };
    let cancel = CancellationToken::new();
    term::cancel_on_signals(cancel.clone(), true);
    let (started_tx, started_rx) = oneshot::channel();
    let io = RunIo {
        stdout: Box::new(tokio::io::sink()),
        stderr: Box::new(tokio::io::sink()),
        stdin: None,
        resize: None,
        cancel,
        started: Some(started_tx),
    };
    tokio::spawn(async move {
        if started_rx.await.is_ok() {
            output::data_line("ready");
        }
    });
    let result = match supervise_run(ctx, &orch, &meta, io, false).await {
        Ok(result) => result,
        Err(e) => {
            output::data_line(&format!("error: {}", e.message));
            return Err(e);
        }
    };
    match result {
        Ok(outcome) => Ok(i32::try_from(outcome.exit_code).unwrap_or(1)),
        Err(e) => {
            let err = CliError::from_error(EXIT_PRE_RUN, &e);
            output::data_line(&format!("error: {}", err.message));
            Err(err)
        }
    }
}
