//! The `moat` command-line interface: argument parsing, wiring of the library crates and
//! terminal output. All environment and path resolution happens here.

mod audit;
mod cli;
mod cmd;
mod context;
mod egress;
mod error;
mod output;
mod ssh;
mod term;

use clap::CommandFactory;
use clap::Parser;

use crate::cli::Cli;
use crate::cli::Command;
use crate::context::Context;
use crate::error::CliResult;

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::error(&error::CliError::new(
                error::EXIT_PRE_RUN,
                format!("cannot start the async runtime: {e}"),
            ));
            std::process::exit(error::EXIT_PRE_RUN);
        }
    };
    let code = match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            output::error(&e);
            e.code
        }
    };
    // Blocking stdin readers cannot be cancelled; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}

async fn dispatch(cli: Cli) -> CliResult<i32> {
    let json = cli.global.json;
    match cli.command {
        Command::Version => {
            if json {
                output::json(&serde_json::json!({ "version": context::VERSION }));
            } else {
                output::data_line(&format!("moat {}", context::VERSION));
            }
            Ok(0)
        }
        Command::Schema => {
            output::data(&moat_core::config::schema());
            Ok(0)
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, "moat", &mut buf);
            output::data(&String::from_utf8_lossy(&buf));
            Ok(0)
        }
        command => {
            // `moat run` reports every failure before its container ran as 125 (SPEC §3).
            let before_run = matches!(command, Command::Run(_));
            let ctx = Context::load(cli.global).map_err(|e| {
                if before_run {
                    error::CliError {
                        code: error::EXIT_PRE_RUN,
                        ..e
                    }
                } else {
                    e
                }
            })?;
            match command {
                Command::Run(args) => cmd::run::run(&ctx, args).await,
                Command::Supervise { run_id } => cmd::run::supervise_detached(&ctx, &run_id).await,
                Command::Teardown { run_id } => cmd::run::teardown(&ctx, &run_id).await,
                Command::Attach(args) => cmd::runs::attach(&ctx, args).await,
                Command::List => cmd::runs::list(&ctx).await,
                Command::Logs(args) => cmd::runs::logs(&ctx, args).await,
                Command::Trace(args) => cmd::trace::trace(&ctx, args).await,
                Command::Stop(args) => cmd::runs::stop(&ctx, args).await,
                Command::Destroy(args) => cmd::runs::destroy(&ctx, args).await,
                Command::Audit(args) => cmd::audit::audit(&ctx, args).await,
                Command::Grant(args) => cmd::grant::grant(&ctx, args).await,
                Command::Revoke { provider } => cmd::grant::revoke(&ctx, &provider),
                Command::Version | Command::Schema | Command::Completions { .. } => Ok(0),
            }
        }
    }
}
