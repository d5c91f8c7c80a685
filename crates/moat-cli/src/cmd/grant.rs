//! `moat grant`, `moat grant list`, `moat revoke`.

use std::io::BufRead;
use std::io::IsTerminal;
use std::io::Write;

use moat_core::Secret;
use moat_creds::CommandGhCli;
use moat_creds::GrantError;
use moat_creds::GrantRequest;
use moat_creds::Granter;
use moat_creds::HttpValidator;
use moat_creds::PromptError;
use moat_creds::Prompter;
use serde::Serialize;

use crate::cli::GrantArgs;
use crate::context::Context;
use crate::error::CliError;
use crate::error::CliResult;
use crate::error::EXIT_FAILURE;
use crate::output;

/// `moat grant <provider>` and `moat grant list`.
pub(crate) async fn grant(ctx: &Context, args: GrantArgs) -> CliResult<i32> {
    if args.provider == "list" {
        return list(ctx);
    }
    if args.provider == "ssh" {
        let Some(host) = args.host.as_deref() else {
            return Err(
                CliError::new(EXIT_FAILURE, "`moat grant ssh` needs `--host HOST`")
                    .hint("e.g. `moat grant ssh --host github.com`"),
            );
        };
        return crate::ssh::grant(ctx, host, args.key.as_deref(), args.known_hosts.as_deref())
            .await;
    }
    if args.host.is_some() || args.key.is_some() || args.known_hosts.is_some() {
        return Err(CliError::new(
            EXIT_FAILURE,
            "`--host`, `--key` and `--known-hosts` apply to `moat grant ssh` only",
        ));
    }
    ctx.ensure_home()?;
    let store = ctx.credential_store()?;
    let providers = ctx.providers();
    let provider = providers.get(&args.provider).map_err(|e| {
        CliError::from_error(EXIT_FAILURE, &e)
            .hint("`moat grant list` shows what is granted; custom providers live in $MOAT_HOME/providers/<name>.yaml")
    })?;
    let env = provider
        .token_vars()
        .iter()
        .filter_map(|v| {
            std::env::var(v)
                .ok()
                .filter(|x| !x.is_empty())
                .map(|x| (v.clone(), Secret::new(x)))
        })
        .collect();
    let validator = HttpValidator::new(&ctx.upstream_overrides()?)
        .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?;
    let gh = CommandGhCli::new("gh");
    let granter = Granter::new(&store, &providers, &validator, &gh);
    let request = GrantRequest {
        provider: args.provider.clone(),
        env,
        validate: !args.no_validate,
    };
    let mut terminal = TerminalPrompter::new(ctx);
    let outcome = granter
        .grant(&request, &mut terminal)
        .await
        .map_err(|e| grant_error(&args.provider, &e))?;
    if ctx.args.json {
        output::json(&serde_json::json!({
            "grant": outcome.meta,
            "replaced": outcome.replaced,
            "validated": outcome.validated,
            "path": store.path_for(&outcome.meta.name),
        }));
    }
    Ok(0)
}

fn grant_error(provider: &str, e: &GrantError) -> CliError {
    let err = CliError::from_error(EXIT_FAILURE, e);
    match e {
        GrantError::Validation(_) => err
            .hint("nothing was saved; check the token and try again")
            .hint("`--no-validate` saves without asking the provider"),
        GrantError::Store(_) => err.hint(format!(
            "if the file is damaged, `moat revoke {provider}` then `moat grant {provider}` replaces it"
        )),
        _ => err,
    }
}

#[derive(Serialize)]
struct ListedGrant {
    name: String,
    source: Option<String>,
    created_at: Option<chrono::DateTime<chrono::Utc>>,
    last_validated_at: Option<chrono::DateTime<chrono::Utc>>,
    account: Option<String>,
    error: Option<String>,
}

fn list(ctx: &Context) -> CliResult<i32> {
    let store = ctx.credential_store()?;
    let listing = store
        .list()
        .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?;
    let ssh_rows = crate::ssh::list(ctx)?.into_iter().map(|g| ListedGrant {
        name: g.name(),
        source: Some(format!("ssh-agent key {}", g.key.fingerprint)),
        created_at: None,
        last_validated_at: None,
        account: None,
        error: None,
    });
    let rows: Vec<ListedGrant> = listing
        .into_iter()
        .map(|entry| match entry.meta {
            Ok(meta) => ListedGrant {
                name: meta.name,
                source: Some(meta.source.to_string()),
                created_at: Some(meta.created_at),
                last_validated_at: meta.last_validated_at,
                account: meta.account,
                error: None,
            },
            Err(e) => ListedGrant {
                name: entry.name,
                source: None,
                created_at: None,
                last_validated_at: None,
                account: None,
                error: Some(moat_core::orchestrator::error_chain(&e)),
            },
        })
        .chain(ssh_rows)
        .collect();
    if ctx.args.json {
        output::json(&rows);
        return Ok(0);
    }
    if rows.is_empty() {
        output::info(
            ctx,
            format_args!("no grants yet; add one with `moat grant github`"),
        );
        return Ok(0);
    }
    let mut text = String::new();
    for r in &rows {
        match &r.error {
            Some(e) => text.push_str(&format!("{:<12} unreadable: {e}\n", r.name)),
            None if r.created_at.is_none() => text.push_str(&format!(
                "{:<12} {}\n",
                r.name,
                r.source.as_deref().unwrap_or("-")
            )),
            None => text.push_str(&format!(
                "{:<12} {:<22} created {}  validated {}{}\n",
                r.name,
                r.source.as_deref().unwrap_or("-"),
                r.created_at
                    .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_default(),
                r.last_validated_at
                    .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_else(|| "never".into()),
                r.account
                    .as_deref()
                    .map(|a| format!("  as {a}"))
                    .unwrap_or_default(),
            )),
        }
    }
    output::data(&text);
    Ok(0)
}

/// `moat revoke <provider>`.
pub(crate) fn revoke(ctx: &Context, provider: &str) -> CliResult<i32> {
    let dir = ctx.credentials_dir();
    let removed = if provider.starts_with("ssh:") {
        crate::ssh::revoke(ctx, provider)?
    } else {
        moat_creds::store::revoke_grant(&dir, provider)
            .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?
    };
    if removed {
        output::info(ctx, format_args!("revoked {provider}"));
        Ok(0)
    } else {
        Err(
            CliError::new(EXIT_FAILURE, format!("no grant `{provider}` is stored"))
                .hint("`moat grant list` shows what is granted"),
        )
    }
}

/// The terminal as the grant flow's prompter: questions and messages on stderr, answers from
/// stdin, hidden input without echo.
struct TerminalPrompter {
    interactive: bool,
    quiet: bool,
}

impl TerminalPrompter {
    fn new(ctx: &Context) -> Self {
        let no_prompt =
            std::env::var_os("MOAT_NO_PROMPT").is_some_and(|v| !v.is_empty() && v != "0");
        Self {
            interactive: !no_prompt
                && std::io::stdin().is_terminal()
                && std::io::stderr().is_terminal(),
            quiet: ctx.args.quiet,
        }
    }
}

impl Prompter for TerminalPrompter {
    fn is_terminal(&self) -> bool {
        self.interactive
    }

    fn confirm(&mut self, question: &str) -> Result<bool, PromptError> {
        let mut err = std::io::stderr();
        let _ = write!(err, "{question} [Y/n]: ");
        let _ = err.flush();
        let mut line = String::new();
        let n = std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|source| PromptError::Io { source })?;
        if n == 0 {
            return Err(PromptError::Cancelled);
        }
        let answer = line.trim().to_ascii_lowercase();
        Ok(answer.is_empty() || answer == "y" || answer == "yes")
    }

    fn hidden_input(&mut self, prompt: &str) -> Result<Secret, PromptError> {
        rpassword::prompt_password(prompt)
            .map(Secret::new)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::Interrupted => {
                    PromptError::Cancelled
                }
                _ => PromptError::Io { source },
            })
    }

    fn info(&mut self, message: &str) {
        if !self.quiet {
            let mut err = std::io::stderr();
            let _ = writeln!(err, "{message}");
        }
    }
}
