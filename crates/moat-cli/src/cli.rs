//! Command-line definitions.

use std::path::PathBuf;

use clap::Args;
use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;

/// Run AI coding agents in isolated containers; credentials stay outside.
#[derive(Debug, Parser)]
#[command(name = "moat", version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags accepted by every command.
#[derive(Debug, Args, Clone)]
pub(crate) struct GlobalArgs {
    /// Print more detail about what moat is doing.
    #[arg(short, long, global = true)]
    pub(crate) verbose: bool,
    /// Print only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// Machine-readable JSON output on stdout.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a command in a sandboxed container with the workspace mounted.
    Run(RunArgs),
    /// Attach the terminal to a running run (detach with ctrl-p ctrl-q).
    Attach(RunRef),
    /// List runs.
    #[command(alias = "ls")]
    List,
    /// Show a run's container output.
    Logs(LogsArgs),
    /// Show a run's proxied network requests.
    Trace(TraceArgs),
    /// Stop a running run and keep its artifacts.
    Stop(RunRef),
    /// Remove a run: its container, network and run directory (the signed audit evidence is
    /// archived in $MOAT_HOME/evidence unless --purge).
    Destroy(DestroyArgs),
    /// Verify a run's audit log, export it as a bundle, or prove an entry.
    Audit(AuditArgs),
    /// Store a credential for a provider (github, anthropic, openai, custom), or `grant list`.
    Grant(GrantArgs),
    /// Remove a stored credential.
    Revoke {
        /// The provider whose credential to remove.
        provider: String,
    },
    /// Print moat's version.
    Version,
    /// Print the JSON Schema of moat.yaml.
    Schema,
    /// Print shell completions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Internal: remove a finished run's container and network.
    #[command(name = "__teardown", hide = true)]
    Teardown {
        /// The run ID.
        run_id: String,
    },
    /// Internal: supervise a detached run.
    #[command(name = "__supervise", hide = true)]
    Supervise {
        /// The run ID.
        run_id: String,
    },
}

/// Which container runtime to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum RuntimeArg {
    /// Docker Engine.
    Docker,
    /// Apple containers (macOS 15+, Apple silicon).
    Apple,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Workspace directory, mounted at /workspace.
    #[arg(default_value = ".")]
    pub(crate) path: PathBuf,
    /// Command to run instead of moat.yaml `command` (after `--`).
    #[arg(last = true)]
    pub(crate) command: Vec<String>,
    /// Credential to grant the run (repeatable; merged with moat.yaml `grants`).
    #[arg(short = 'g', long = "grant", value_name = "GRANT")]
    pub(crate) grants: Vec<String>,
    /// Environment variable for the container (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VAL")]
    pub(crate) env: Vec<String>,
    /// Run name.
    #[arg(short, long)]
    pub(crate) name: Option<String>,
    /// Interactive: forward standard input, with a TTY when it is a terminal.
    #[arg(short, long)]
    pub(crate) interactive: bool,
    /// Run in the background and print the run ID.
    #[arg(short, long)]
    pub(crate) detach: bool,
    /// Container image.
    #[arg(long)]
    pub(crate) image: Option<String>,
    /// Keep the container after it exits.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Container runtime.
    #[arg(long, value_enum)]
    pub(crate) runtime: Option<RuntimeArg>,
    /// Network policy (overrides moat.yaml `network.policy`).
    #[arg(long, value_enum)]
    pub(crate) policy: Option<PolicyArg>,
    /// A host the run may reach under `strict` policy (repeatable; adds to `network.allow`).
    #[arg(long = "allow", value_name = "HOST")]
    pub(crate) allow: Vec<String>,
}

/// Network policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PolicyArg {
    /// Proxy variables set, direct egress allowed.
    Permissive,
    /// Only the proxy is reachable; only listed and granted hosts are allowed.
    Strict,
    /// No network at all.
    None,
}

#[derive(Debug, Args)]
pub(crate) struct DestroyArgs {
    /// Run ID, unique ID prefix or name; defaults to the most recent run.
    pub(crate) run: Option<String>,
    /// Also delete the run's signed audit evidence instead of archiving it.
    #[arg(long)]
    pub(crate) purge: bool,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct AuditArgs {
    #[command(subcommand)]
    pub(crate) command: Option<AuditCommand>,
    /// Run ID, unique ID prefix or name; defaults to the most recent run.
    pub(crate) run: Option<String>,
    /// Write the run's evidence as a self-contained bundle for offline verification.
    #[arg(long, value_name = "FILE")]
    pub(crate) export: Option<PathBuf>,
    /// Print an inclusion proof of entry SEQ against the latest signed checkpoint.
    #[arg(long, value_name = "SEQ", conflicts_with = "export")]
    pub(crate) prove: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify an exported bundle (or a log file) offline.
    Verify {
        /// The bundle or log file.
        file: PathBuf,
        /// The signer's public key (file with PEM or hex, or 64 hex digits); without it the
        /// bundle's own key is used, which proves integrity but not origin.
        #[arg(long, value_name = "PUBKEY")]
        key: Option<String>,
    },
    /// Print this installation's audit public key and fingerprint.
    Key,
}

#[derive(Debug, Args)]
pub(crate) struct GrantArgs {
    /// Provider (`github`, `anthropic`, `openai`, or a custom provider), or `list`.
    pub(crate) provider: String,
    /// Save without checking the credential with the provider.
    #[arg(long)]
    pub(crate) no_validate: bool,
    /// `grant ssh`: the SSH destination (`github.com`, `host:2222`).
    #[arg(long, value_name = "HOST")]
    pub(crate) host: Option<String>,
    /// `grant ssh`: the agent key to grant, as a `SHA256:` fingerprint or a key file.
    #[arg(long, value_name = "PATH|FINGERPRINT")]
    pub(crate) key: Option<String>,
    /// `grant ssh`: read host keys from this file instead of ~/.ssh/known_hosts.
    #[arg(long, value_name = "FILE")]
    pub(crate) known_hosts: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct RunRef {
    /// Run ID, unique ID prefix or name; defaults to the most recent run.
    pub(crate) run: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct TraceArgs {
    /// Run ID, unique ID prefix or name; defaults to the most recent run.
    pub(crate) run: Option<String>,
    /// Show network requests (method, URL, status, timing, grant, policy decision); the only
    /// trace there is, so required.
    #[arg(long, required = true)]
    pub(crate) network: bool,
    /// Also show request and response headers (credentials redacted).
    #[arg(short = 'H', long = "headers")]
    pub(crate) verbose_headers: bool,
    /// Keep printing new requests while the run is live.
    #[arg(short, long)]
    pub(crate) follow: bool,
    /// Write an HTTP Archive (HAR 1.2) file instead of printing.
    #[arg(long, value_name = "FILE")]
    pub(crate) har: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// Run ID, unique ID prefix or name; defaults to the most recent run.
    pub(crate) run: Option<String>,
    /// Keep printing new output while the run is live.
    #[arg(short, long)]
    pub(crate) follow: bool,
    /// Show only the last N lines.
    #[arg(short = 'n', long = "lines", value_name = "N")]
    pub(crate) lines: Option<usize>,
}

/// The CLI reference (`docs/cli.md`), generated from the clap definitions.
#[cfg(test)]
pub(crate) fn reference_markdown() -> String {
    use clap::CommandFactory;
    let mut root = Cli::command().term_width(100);
    let mut out = String::from(
        "# moat command-line reference\n\n\
         Generated from the clap definitions by `MOAT_UPDATE_DOCS=1 cargo test -p moat-cli`; \
         a test fails when this file drifts.\n\n",
    );
    out.push_str("## moat\n\n```text\n");
    out.push_str(&root.render_long_help().to_string());
    out.push_str("```\n");
    let names: Vec<String> = root
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_owned())
        .collect();
    for name in names {
        if let Some(sub) = root.find_subcommand_mut(&name) {
            let mut sub = sub.clone().bin_name(format!("moat {name}")).term_width(100);
            out.push_str(&format!("\n## moat {name}\n\n```text\n"));
            out.push_str(&sub.render_long_help().to_string());
            out.push_str("```\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_reference_is_fresh() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/cli.md");
        let generated = super::reference_markdown();
        if std::env::var_os("MOAT_UPDATE_DOCS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/cli.md is stale; regenerate it with `MOAT_UPDATE_DOCS=1 cargo test -p moat-cli` and commit it"
        );
    }

    #[test]
    fn clap_definitions_are_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
