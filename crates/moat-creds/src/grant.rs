//! The grant flow: find a value, confirm it, validate it, save it.
//!
//! Terminal interaction goes through [`Prompter`] and the `gh` CLI through [`GhCli`], so the
//! flow is tested with fakes and the CLI supplies the real terminal. The library never
//! prints: progress messages go to [`Prompter::info`].

use std::io::Read as _;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use chrono::Utc;
use moat_core::Secret;
use zeroize::Zeroizing;

use crate::provider::ProviderError;
use crate::provider::ProviderRegistry;
use crate::store::CredentialStore;
use crate::store::GrantMeta;
use crate::store::GrantRecord;
use crate::store::GrantSource;
use crate::store::StoreError;
use crate::validate::ValidationError;
use crate::validate::Validator;

/// The terminal, as the grant flow sees it. The CLI implements it; `is_terminal` should be
/// false when stdin is not a terminal or `MOAT_NO_PROMPT` is set.
pub trait Prompter: Send {
    /// Whether questions can be asked.
    fn is_terminal(&self) -> bool;

    /// Asks a yes/no question.
    fn confirm(&mut self, question: &str) -> Result<bool, PromptError>;

    /// Reads a line without echoing it.
    fn hidden_input(&mut self, prompt: &str) -> Result<Secret, PromptError>;

    /// A progress or status message for the user (the CLI prints it to stderr).
    fn info(&mut self, message: &str);
}

/// The terminal could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PromptError {
    /// Reading from or writing to the terminal failed.
    #[error("cannot use the terminal: {source}; set the token variable instead")]
    Io {
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The user cancelled (Ctrl-C, Ctrl-D).
    #[error("cancelled; nothing was saved")]
    Cancelled,
}

/// The GitHub CLI's stored login.
pub trait GhCli: Send + Sync {
    /// The token `gh auth token` prints.
    fn auth_token(&self) -> Result<Secret, GhError>;
}

/// Why no token came from `gh`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GhError {
    /// The program does not exist.
    #[error("the gh CLI ({}) is not installed", program.display())]
    NotInstalled {
        /// The program path.
        program: PathBuf,
    },
    /// `gh auth token` failed, typically because gh is not logged in.
    #[error("`{} auth token` failed ({status}): {stderr}", program.display())]
    Failed {
        /// The program path.
        program: PathBuf,
        /// The exit status.
        status: String,
        /// The first line of its error output.
        stderr: String,
    },
    /// `gh auth token` printed nothing usable.
    #[error("`{} auth token` printed no token", program.display())]
    Empty {
        /// The program path.
        program: PathBuf,
    },
    /// `gh auth token` did not finish in time.
    #[error("`{} auth token` did not finish within {seconds} seconds", program.display())]
    TimedOut {
        /// The program path.
        program: PathBuf,
        /// The limit.
        seconds: u64,
    },
    /// Running the program failed.
    #[error("cannot run {}: {source}", program.display())]
    Io {
        /// The program path.
        program: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Runs `<program> auth token`.
#[derive(Debug, Clone)]
pub struct CommandGhCli {
    program: PathBuf,
    timeout: Duration,
}

impl CommandGhCli {
    /// Uses `program` (a path, or `gh` to search `PATH`).
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            timeout: Duration::from_secs(20),
        }
    }

    /// Changes how long `gh` may take (default 20 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl GhCli for CommandGhCli {
    fn auth_token(&self) -> Result<Secret, GhError> {
        let program = &self.program;
        let io = |source: std::io::Error| GhError::Io {
            program: program.clone(),
            source,
        };
        let mut child = match Command::new(program)
            .args(["auth", "token"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(GhError::NotInstalled {
                    program: program.clone(),
                });
            }
            Err(e) => return Err(io(e)),
        };
        // Drain both pipes on threads so a chatty child cannot block on a full pipe.
        let stdout = child.stdout.take().map(|mut out| {
            std::thread::spawn(move || {
                let mut buf = Zeroizing::new(Vec::new());
                let _ = out.by_ref().take(64 * 1024).read_to_end(&mut buf);
                buf
            })
        });
        let stderr = child.stderr.take().map(|mut err| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = err.by_ref().take(64 * 1024).read_to_end(&mut buf);
                buf
            })
        });
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait().map_err(io)? {
                Some(status) => break status,
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(GhError::TimedOut {
                        program: program.clone(),
                        seconds: self.timeout.as_secs(),
                    });
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let out = stdout
            .and_then(|h| h.join().ok())
            .unwrap_or_else(|| Zeroizing::new(Vec::new()));
        let err = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
        if !status.success() {
            let stderr = String::from_utf8_lossy(&err)
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("no error output")
                .chars()
                .take(200)
                .collect();
            return Err(GhError::Failed {
                program: program.clone(),
                status: status.to_string(),
                stderr,
            });
        }
        let token = std::str::from_utf8(&out).unwrap_or_default().trim();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(GhError::Empty {
                program: program.clone(),
            });
        }
        Ok(Secret::new(token))
    }
}

/// What to grant.
#[derive(Debug, Clone)]
pub struct GrantRequest {
    /// The provider name (`github`, `anthropic`, `openai` or a custom one).
    pub provider: String,
    /// Values of the provider's [`crate::Provider::token_vars`] found in the caller's
    /// environment, in any order; empty values are ignored.
    pub env: Vec<(String, Secret)>,
    /// Whether to check the value with the provider before saving (default in the CLI).
    pub validate: bool,
}

/// What a successful grant saved.
#[derive(Debug, Clone)]
pub struct GrantOutcome {
    /// The saved metadata.
    pub meta: GrantMeta,
    /// Whether an earlier value of the grant was replaced.
    pub replaced: bool,
    /// Whether the provider validated the value.
    pub validated: bool,
}

/// Why a grant failed. Nothing is written when a grant fails.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// The provider is unknown or its file is broken.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// No value in the environment and no terminal to ask on.
    #[error(
        "no {provider} credential found and no terminal to prompt on; set {}{}",
        variables.join(" or "),
        if *gh { ", or run `moat grant github` on a terminal to use the gh CLI login" } else { "" }
    )]
    NoValue {
        /// The provider.
        provider: String,
        /// Variables that would have been used.
        variables: Vec<String>,
        /// Whether the gh CLI would be offered on a terminal.
        gh: bool,
    },
    /// The prompt was answered with nothing.
    #[error("no {provider} credential was entered; paste the token at the prompt, or set {}", variables.join(" or "))]
    EmptyValue {
        /// The provider.
        provider: String,
        /// Variables that would have been used.
        variables: Vec<String>,
    },
    /// Nothing is stored for the grant.
    #[error("no credential stored for grant `{grant}`; run `moat grant {grant}` first")]
    NotGranted {
        /// The grant.
        grant: String,
    },
    /// The value contains line breaks or other control characters.
    #[error(
        "the {provider} credential contains line breaks or control characters; paste it on a single line"
    )]
    InvalidValue {
        /// The provider.
        provider: String,
    },
    /// The terminal failed.
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// The provider rejected the value or could not be reached.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// Saving failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs grant flows against one store.
pub struct Granter<'a> {
    store: &'a CredentialStore,
    providers: &'a ProviderRegistry,
    validator: &'a dyn Validator,
    gh: &'a dyn GhCli,
}

impl<'a> Granter<'a> {
    /// A granter over these collaborators.
    pub fn new(
        store: &'a CredentialStore,
        providers: &'a ProviderRegistry,
        validator: &'a dyn Validator,
        gh: &'a dyn GhCli,
    ) -> Self {
        Self {
            store,
            providers,
            validator,
            gh,
        }
    }

    /// Checks a stored grant with its provider again and records the result
    /// (`last_validated_at`, account). A rejected value stays stored, and the error says so.
    pub async fn revalidate(&self, grant: &str) -> Result<GrantMeta, GrantError> {
        let provider = self.providers.get(grant)?;
        let mut record = self
            .store
            .load(grant)?
            .ok_or_else(|| GrantError::NotGranted {
                grant: grant.to_owned(),
            })?;
        if let Some(v) = self.validator.validate(&provider, &record.value).await? {
            record.meta.last_validated_at = Some(Utc::now());
            if v.account.is_some() {
                record.meta.account = v.account;
            }
            self.store.save(&record)?;
        }
        Ok(record.meta)
    }

    /// Finds a value (environment, then `gh` with confirmation, then a hidden prompt),
    /// validates it and saves it.
    pub async fn grant(
        &self,
        request: &GrantRequest,
        prompter: &mut dyn Prompter,
    ) -> Result<GrantOutcome, GrantError> {
        let provider = self.providers.get(&request.provider)?;
        let name = provider.name().to_owned();
        let vars = provider.token_vars().to_vec();

        let from_env = vars.iter().find_map(|var| {
            request
                .env
                .iter()
                .find(|(k, v)| k == var && !v.expose().trim().is_empty())
                .map(|(_, v)| (Secret::new(v.expose().trim()), var.clone()))
        });
        let (value, source) = if let Some((value, var)) = from_env {
            prompter.info(&format!("using {var} from the environment"));
            (value, GrantSource::Env { variable: var })
        } else if !prompter.is_terminal() {
            return Err(GrantError::NoValue {
                provider: name,
                variables: vars,
                gh: provider.uses_gh_cli(),
            });
        } else {
            let mut found = None;
            if provider.uses_gh_cli() {
                match self.gh.auth_token() {
                    Ok(token) => {
                        prompter.info("Found gh CLI authentication");
                        if prompter.confirm("Use token from gh CLI?")? {
                            found = Some((token, GrantSource::GhCli));
                        }
                    }
                    Err(e) => prompter.info(&format!("not using the gh CLI: {e}")),
                }
            }
            match found {
                Some(found) => found,
                None => {
                    let typed = prompter
                        .hidden_input(&format!("Paste the {name} token (input hidden): "))?;
                    let trimmed = typed.expose().trim();
                    if trimmed.is_empty() {
                        return Err(GrantError::EmptyValue {
                            provider: name,
                            variables: vars,
                        });
                    }
                    (Secret::new(trimmed), GrantSource::Prompt)
                }
            }
        };

        // The value ends up in an HTTP header: line breaks or control characters there would
        // be rejected at best and a header injection at worst.
        if value.expose().chars().any(char::is_control) {
            return Err(GrantError::InvalidValue { provider: name });
        }
        let mut meta = GrantMeta {
            name: name.clone(),
            source,
            created_at: Utc::now(),
            last_validated_at: None,
            account: None,
        };
        let mut validated = false;
        if request.validate {
            if let Some(spec) = provider.validation_for(&value) {
                prompter.info(&format!(
                    "Validating token with {}...",
                    spec.url.host_str().unwrap_or("the provider")
                ));
            }
            match self.validator.validate(&provider, &value).await? {
                Some(v) => {
                    validated = true;
                    meta.last_validated_at = Some(Utc::now());
                    match &v.account {
                        Some(account) => prompter.info(&format!("Authenticated as: {account}")),
                        None => prompter.info(&format!("{name} accepted the token")),
                    }
                    meta.account = v.account;
                }
                None => prompter.info(&format!(
                    "{name} has no validation call; saving without validation"
                )),
            }
        }
        let replaced = self.store.path_for(&name).exists();
        self.store.save(&GrantRecord {
            meta: meta.clone(),
            value,
        })?;
        prompter.info(&format!(
            "{} credential saved to {}",
            display_name(&name),
            self.store.path_for(&name).display()
        ));
        Ok(GrantOutcome {
            meta,
            replaced,
            validated,
        })
    }
}

/// How a provider is named in messages.
fn display_name(provider: &str) -> &str {
    match provider {
        "github" => "GitHub",
        "anthropic" => "Anthropic",
        "openai" => "OpenAI",
        other => other,
    }
}
