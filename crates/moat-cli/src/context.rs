//! Resolution of the environment: `$MOAT_HOME`, config.yaml and the runtime connection.
//! This is the only place that reads environment variables.

use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use moat_core::config::GlobalConfig;
use moat_core::config::RuntimeKind;
use moat_core::orchestrator::Orchestrator;
use moat_core::runtime::Runtime;
use moat_core::runtime::RuntimeError;
use moat_core::store::RunStore;
use moat_runtime::docker::DockerRuntime;

use crate::cli::GlobalArgs;
use crate::error::CliError;
use crate::error::CliResult;
use crate::error::EXIT_FAILURE;

/// The version recorded in runs.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Everything a command needs to know about its surroundings.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) home: PathBuf,
    pub(crate) global: GlobalConfig,
    pub(crate) args: GlobalArgs,
}

impl Context {
    /// Resolves `$MOAT_HOME` (default `~/.moat`) and reads config.yaml.
    pub(crate) fn load(args: GlobalArgs) -> CliResult<Self> {
        let home = match std::env::var_os("MOAT_HOME").filter(|v| !v.is_empty()) {
            Some(h) => PathBuf::from(h),
            None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
                Some(h) => PathBuf::from(h).join(".moat"),
                None => {
                    return Err(CliError::new(
                        EXIT_FAILURE,
                        "cannot find a home directory for moat's data",
                    )
                    .hint("set MOAT_HOME to a directory moat may use"));
                }
            },
        };
        let global = GlobalConfig::load(&home.join("config.yaml")).map_err(|e| {
            let hint = e.hint().map(str::to_owned);
            let mut err = CliError::new(EXIT_FAILURE, &e);
            if let Some(h) = hint {
                err = err.hint(h);
            }
            err
        })?;
        Ok(Self { home, global, args })
    }

    /// Creates `$MOAT_HOME` with mode 0700 if needed.
    pub(crate) fn ensure_home(&self) -> CliResult<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.home)
            .map_err(|e| {
                CliError::new(
                    EXIT_FAILURE,
                    format!("cannot create {}: {e}", self.home.display()),
                )
                .hint("set MOAT_HOME to a writable directory")
            })?;
        if let Ok(meta) = std::fs::metadata(&self.home)
            && meta.permissions().mode() & 0o077 != 0
        {
            let _ = std::fs::set_permissions(&self.home, std::fs::Permissions::from_mode(0o700));
        }
        Ok(())
    }

    pub(crate) fn store(&self) -> RunStore {
        RunStore::new(self.home.join("runs"))
    }

    /// The image used when neither the command line nor moat.yaml names one.
    pub(crate) fn default_image(&self) -> String {
        std::env::var("MOAT_DEFAULT_IMAGE")
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| self.global.default_image.clone())
            .unwrap_or_else(|| "debian:bookworm-slim".to_owned())
    }

    /// The runtime asked for by `MOAT_RUNTIME` or config.yaml.
    pub(crate) fn configured_runtime(&self) -> CliResult<Option<RuntimeKind>> {
        match std::env::var("MOAT_RUNTIME").ok().filter(|v| !v.is_empty()) {
            Some(v) if v == "docker" => Ok(Some(RuntimeKind::Docker)),
            Some(v) if v == "apple" => Ok(Some(RuntimeKind::Apple)),
            Some(v) => Err(CliError::new(
                EXIT_FAILURE,
                format!("MOAT_RUNTIME is `{v}`, which is not a runtime"),
            )
            .hint("set MOAT_RUNTIME to `docker` or `apple`, or unset it")),
            None => Ok(self.global.runtime),
        }
    }

    /// The Docker endpoint: `DOCKER_HOST`, config.yaml, or the default socket.
    pub(crate) fn docker_endpoint(&self) -> String {
        std::env::var("DOCKER_HOST")
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| self.global.docker_host.clone())
            .unwrap_or_else(|| moat_runtime::DEFAULT_DOCKER_SOCKET.to_owned())
    }

    /// Connects to the runtime.
    pub(crate) async fn runtime(&self, kind: RuntimeKind) -> CliResult<Arc<dyn Runtime>> {
        let kind = moat_runtime::detect(Some(kind)).map_err(|e| runtime_error(&e))?;
        match kind {
            RuntimeKind::Docker => {
                let rt = DockerRuntime::connect(&self.docker_endpoint())
                    .await
                    .map_err(|e| runtime_error(&e))?;
                Ok(Arc::new(rt))
            }
            RuntimeKind::Apple => Err(CliError::new(
                EXIT_FAILURE,
                "the apple runtime is not supported by this version of moat",
            )
            .hint("use `--runtime docker`")),
        }
    }

    pub(crate) async fn orchestrator(&self, kind: RuntimeKind) -> CliResult<Orchestrator> {
        Ok(
            Orchestrator::new(self.runtime(kind).await?, self.store(), VERSION)
                .with_cache_dir(self.home.join("cache")),
        )
    }
}

impl Context {
    /// The credential store, with its key from `MOAT_KEYRING`/`MOAT_PASSPHRASE` or
    /// config.yaml `keyring`.
    pub(crate) fn credential_store(&self) -> CliResult<moat_creds::CredentialStore> {
        let mode_text = std::env::var("MOAT_KEYRING")
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| self.global.keyring.clone())
            .unwrap_or_else(|| "auto".to_owned());
        let mode: moat_creds::KeyringMode = mode_text.parse().map_err(|e| {
            CliError::from_error(EXIT_FAILURE, &e)
                .hint("set MOAT_KEYRING to `auto`, `os` or `file`")
        })?;
        let passphrase = std::env::var("MOAT_PASSPHRASE")
            .ok()
            .filter(|v| !v.is_empty())
            .map(moat_core::Secret::new);
        let dir = self.credentials_dir();
        let os = os_keyring();
        let key = moat_creds::StoreKey::resolve(mode, &dir, passphrase, os.as_ref()).map_err(|e| {
            CliError::from_error(EXIT_FAILURE, &e)
                .hint("MOAT_KEYRING=file keeps the key in $MOAT_HOME/credentials/.key; MOAT_PASSPHRASE derives it from a passphrase")
        })?;
        moat_creds::CredentialStore::open(&dir, key)
            .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))
    }

    /// `$MOAT_HOME/credentials`: the encrypted store and the SSH grants.
    pub(crate) fn credentials_dir(&self) -> PathBuf {
        self.home.join("credentials")
    }

    /// Custom and built-in providers.
    pub(crate) fn providers(&self) -> moat_creds::ProviderRegistry {
        moat_creds::ProviderRegistry::new(Some(self.home.join("providers")))
    }

    /// `MOAT_RESOLVE` and `MOAT_UPSTREAM_CA` (or their config.yaml equivalents).
    pub(crate) fn upstream_overrides(&self) -> CliResult<moat_creds::UpstreamOverrides> {
        let resolve_text = std::env::var("MOAT_RESOLVE")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| self.global.proxy.resolve.join(","));
        let resolve = moat_creds::ResolveOverride::parse_list(&resolve_text).map_err(|e| {
            CliError::from_error(EXIT_FAILURE, &e)
                .hint("write MOAT_RESOLVE as comma-separated `host:port=ip:port` items")
        })?;
        let ca_path = std::env::var_os("MOAT_UPSTREAM_CA")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| self.global.proxy.upstream_ca.clone());
        let extra_roots_pem = match ca_path {
            Some(p) => std::fs::read(&p).map_err(|e| {
                CliError::new(
                    EXIT_FAILURE,
                    format!("cannot read MOAT_UPSTREAM_CA {}: {e}", p.display()),
                )
                .hint("point MOAT_UPSTREAM_CA at a PEM file of CA certificates")
            })?,
            None => Vec::new(),
        };
        Ok(moat_creds::UpstreamOverrides {
            resolve,
            extra_roots_pem,
        })
    }
}

fn os_keyring() -> Box<dyn moat_creds::OsKeyring> {
    Box::new(moat_creds::SystemOsKeyring::new("moat", "credentials-key"))
}

/// A runtime error with the hints a user needs.
pub(crate) fn runtime_error(e: &RuntimeError) -> CliError {
    let err = CliError::from_error(EXIT_FAILURE, e);
    match e {
        RuntimeError::Unreachable { endpoint, .. } => err
            .hint(format!("is Docker running? moat tried {endpoint}"))
            .hint("start the engine (e.g. `sudo systemctl start docker` or `sudo dockerd &`), or point DOCKER_HOST at a running engine"),
        RuntimeError::PullFailed { image, .. } => err
            .hint(format!("check the image name `{image}`, or build or load it locally first"))
            .hint("pass another image with `--image IMAGE` or set `image:` in moat.yaml"),
        RuntimeError::Unsupported { .. } => err.hint("use `--runtime docker`"),
        _ => err,
    }
}
