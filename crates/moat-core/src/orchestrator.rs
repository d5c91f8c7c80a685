//! The orchestrator: drives one run through a [`Runtime`], the [`RunStore`] and an
//! [`AuditSink`].
//!
//! The process that calls [`Orchestrator::supervise`] is the run's supervisor: it holds the
//! run's supervisor lock, is the single writer of `metadata.json`, `logs.jsonl` and the audit
//! log, and cleans up the runtime objects when the container exits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use sha2::Digest;
use sha2::Sha256;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditSink;
use crate::audit::AuditSinkError;
use crate::audit::event;
use crate::config::RuntimeKind;
use crate::creds::CredentialError;
use crate::creds::CredentialProvider;
use crate::creds::ResolvedGrants;
use crate::egress::Egress;
use crate::egress::EgressError;
use crate::egress::EgressHandle;
use crate::egress::EgressPolicy;
use crate::egress::EgressRequest;
use crate::egress::HostRules;
use crate::egress::NetworkEventSink;
use crate::egress::NetworkRecord;
use crate::egress::PolicyMode;
use crate::run::RunId;
use crate::run::RunMetadata;
use crate::run::RunSpec;
use crate::run::RunState;
use crate::runtime::BindMount;
use crate::runtime::ContainerSpec;
use crate::runtime::ContainerStatus;
use crate::runtime::LABEL_MANAGED;
use crate::runtime::LABEL_RUN_ID;
use crate::runtime::NetworkAttachment;
use crate::runtime::NetworkSpec;
use crate::runtime::PullProgress;
use crate::runtime::Runtime;
use crate::runtime::RuntimeError;
use crate::runtime::STOP_GRACE;
use crate::store::LogRecord;
use crate::store::LogStream;
use crate::store::LogWriter;
use crate::store::RunStore;
use crate::store::StoreError;

/// What to run; turned into a run by [`Orchestrator::create_run`].
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Run name.
    pub name: String,
    /// Absolute workspace path.
    pub workspace: PathBuf,
    /// Image reference.
    pub image: String,
    /// Runtime kind (recorded in metadata).
    pub runtime: RuntimeKind,
    /// Grant names.
    pub grants: Vec<String>,
    /// Network policy.
    pub policy: PolicyMode,
    /// How the container runs.
    pub spec: RunSpec,
}

/// The supervisor's connection to the user: where output goes, where input comes from, and
/// how a stop is requested.
pub struct RunIo {
    /// Receives container standard output (or the TTY).
    pub stdout: Box<dyn AsyncWrite + Send + Unpin>,
    /// Receives container standard error.
    pub stderr: Box<dyn AsyncWrite + Send + Unpin>,
    /// Forwarded to container standard input when the run has `stdin`.
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Terminal size changes (rows, cols) for TTY runs.
    pub resize: Option<mpsc::UnboundedReceiver<(u16, u16)>>,
    /// Cancelled to stop the run (Ctrl-C, `moat stop`).
    pub cancel: CancellationToken,
    /// Told once the container has started (or dropped if it never does).
    pub started: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for RunIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunIo")
    }
}

/// The collaborators a run is driven through besides the runtime.
#[derive(Clone)]
pub struct RunServices {
    /// Where audit events go.
    pub audit: Arc<dyn AuditSink>,
    /// Resolves the run's credential grants (`None`: a run with grants fails).
    pub credentials: Option<Arc<dyn CredentialProvider>>,
    /// Starts the run's egress proxy (`None`: no proxy; containers reach the network directly
    /// under `permissive` and not at all under `strict`).
    pub egress: Option<Arc<dyn Egress>>,
    /// Leave removing the container and network (and the host firewall rules) to the caller,
    /// who calls [`Orchestrator::teardown`] — e.g. from a background process, so a foreground
    /// `moat run` returns as soon as the run's record is complete.
    pub defer_teardown: bool,
}

impl std::fmt::Debug for RunServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunServices")
            .field("credentials", &self.credentials.is_some())
            .field("egress", &self.egress.is_some())
            .finish()
    }
}

impl RunServices {
    /// Only an audit sink: no credentials, no egress proxy.
    pub fn audit_only(audit: Arc<dyn AuditSink>) -> Self {
        Self {
            audit,
            credentials: None,
            egress: None,
            defer_teardown: false,
        }
    }
}

/// How a supervised run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// The container's exit code.
    pub exit_code: i64,
    /// `Exited`, or `Stopped` when the stop came from us.
    pub state: RunState,
}

/// Errors while driving a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The run store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log failed.
    #[error(transparent)]
    Audit(#[from] AuditSinkError),
    /// Writing container output to the caller failed.
    #[error("cannot write container output: {0}")]
    Output(#[source] std::io::Error),
    /// Credential grants could not be resolved.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// The egress proxy could not start.
    #[error(transparent)]
    Egress(#[from] EgressError),
    /// The run has grants but nothing can inject them.
    #[error("the run has credential grants ({grants}) but no egress proxy to inject them")]
    NoInjection {
        /// The grants.
        grants: String,
    },
}

/// Drives runs.
#[derive(Clone)]
pub struct Orchestrator {
    runtime: Arc<dyn Runtime>,
    store: RunStore,
    moat_version: String,
    cache_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("runtime", &self.runtime.name())
            .field("store", &self.store)
            .finish()
    }
}

impl Orchestrator {
    /// An orchestrator over `runtime` and `store`; `moat_version` is recorded in every run.
    pub fn new(
        runtime: Arc<dyn Runtime>,
        store: RunStore,
        moat_version: impl Into<String>,
    ) -> Self {
        Self {
            runtime,
            store,
            moat_version: moat_version.into(),
            cache_dir: None,
        }
    }

    /// A directory for derived data that may be rebuilt at any time (images' CA bundles), so
    /// later runs of the same image skip work.
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// The store.
    pub fn store(&self) -> &RunStore {
        &self.store
    }

    /// Checks that the engine answers and the image is present, pulling it if not. Returns the
    /// image ID. Call before [`Orchestrator::create_run`] so bad input leaves no run behind.
    pub async fn ensure_image(
        &self,
        image: &str,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<String, RuntimeError> {
        self.runtime.ping().await?;
        if let Some(id) = self.runtime.image_id(image).await? {
            return Ok(id);
        }
        self.runtime.pull_image(image, progress).await?;
        self.runtime
            .image_id(image)
            .await?
            .ok_or_else(|| RuntimeError::PullFailed {
                image: image.to_owned(),
                message: "the engine reported success but the image is not present".into(),
            })
    }

    /// Creates the run directory and metadata (state `created`).
    pub fn create_run(&self, request: RunRequest) -> Result<RunMetadata, StoreError> {
        let meta = RunMetadata {
            id: RunId::generate(),
            name: request.name,
            state: RunState::Created,
            workspace: request.workspace,
            image: request.image,
            runtime: request.runtime,
            grants: request.grants,
            policy: request.policy,
            created_at: Utc::now(),
            started_at: None,
            ended_at: None,
            exit_code: None,
            error: None,
            moat_version: self.moat_version.clone(),
            container_id: None,
            network_id: None,
            supervisor_pid: None,
            spec: request.spec,
        };
        self.store.create(&meta)?;
        Ok(meta)
    }

    /// Supervises a created run until its container exits or `io.cancel` fires. Takes the
    /// supervisor lock for the duration. On error the run is marked `failed` and its runtime
    /// objects are removed.
    pub async fn supervise(
        &self,
        id: &RunId,
        io: RunIo,
        services: RunServices,
        supervisor_pid: u32,
    ) -> Result<RunOutcome, RunError> {
        let audit = services.audit.clone();
        let _lock = self.store.lock_supervisor(id)?;
        let meta = self.store.update(id, |m| {
            m.supervisor_pid = Some(supervisor_pid);
            m.state = RunState::Starting;
        })?;
        let config_hash = hex::encode(Sha256::digest(
            serde_json::to_vec(&meta.spec).unwrap_or_default(),
        ));
        // The image digest pins exactly what ran, whatever the tag points at later.
        let image_digest = self.runtime.image_id(&meta.image).await.ok().flatten();
        audit.append(
            event::RUN_CREATED,
            serde_json::json!({
                "run_id": meta.id,
                "name": meta.name,
                "image": meta.image,
                "runtime": meta.runtime,
                "policy": meta.policy,
                "grants": meta.grants,
                "config_hash": config_hash,
                "image_digest": image_digest,
                "moat_version": meta.moat_version,
            }),
        )?;
        let result = self.drive(&meta, io, &services).await;
        let result = match result {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                let message = error_chain(&e);
                let _ = self.store.update(id, |m| {
                    m.state = RunState::Failed;
                    m.error = Some(message.clone());
                    m.ended_at = Some(Utc::now());
                });
                Err(e)
            }
        };
        let meta = self.store.load(id)?;
        if !services.defer_teardown {
            self.cleanup(&meta).await;
        }
        audit.append(
            event::RUN_FINISHED,
            serde_json::json!({
                "state": meta.state,
                "exit_code": meta.exit_code,
                "error": meta.error,
            }),
        )?;
        audit.close()?;
        result
    }

    async fn drive(
        &self,
        meta: &RunMetadata,
        mut io: RunIo,
        services: &RunServices,
    ) -> Result<RunOutcome, RunError> {
        let rt = &self.runtime;
        let labels = run_labels(&meta.id);
        let network = if meta.policy == PolicyMode::None {
            NetworkAttachment::None
        } else {
            let net = rt
                .create_network(&NetworkSpec {
                    name: format!("moat-{}", meta.id),
                    labels: labels.clone(),
                    internal: meta.policy == PolicyMode::Strict,
                })
                .await?;
            self.store
                .update(&meta.id, |m| m.network_id = Some(net.clone()))?;
            NetworkAttachment::Network(net)
        };
        let egress = self.start_egress(meta, &network, services).await?;
        let mut spec = container_spec(meta, network, labels);
        if let Some(e) = &egress {
            let overridden: Vec<&str> = e.env.iter().map(|(k, _)| k.as_str()).collect();
            spec.env.retain(|(k, _)| {
                !overridden.contains(&k.as_str())
                    && !crate::egress::RESERVED_ENV.contains(&k.as_str())
            });
            spec.env.extend(e.env.iter().cloned());
        }
        if meta.policy == PolicyMode::Strict {
            // Nothing to resolve names with: the proxy resolves for the container.
            spec.dns = Some(vec!["127.0.0.1".to_owned()]);
        }
        let result = self
            .run_container(meta, &mut io, services, spec, egress.as_ref())
            .await;
        if let Some(e) = egress {
            e.handle.stop.shutdown().await;
            e.log.finish().await;
            if meta.policy == PolicyMode::Strict
                && !services.defer_teardown
                && let NetworkAttachment::Network(net) = &e.network
            {
                let _ = self.runtime.release_host_access(net).await;
            }
        }
        result
    }

    /// Starts the run's egress proxy when there is a network and an egress implementation.
    async fn start_egress(
        &self,
        meta: &RunMetadata,
        network: &NetworkAttachment,
        services: &RunServices,
    ) -> Result<Option<RunEgress>, RunError> {
        let provider_grants: Vec<String> = meta
            .grants
            .iter()
            .filter(|g| !g.starts_with("ssh:"))
            .cloned()
            .collect();
        let (NetworkAttachment::Network(net), Some(egress)) = (network, &services.egress) else {
            if provider_grants.is_empty() {
                return Ok(None);
            }
            return Err(RunError::NoInjection {
                grants: provider_grants.join(", "),
            });
        };
        let resolved = if provider_grants.is_empty() {
            ResolvedGrants::default()
        } else {
            match &services.credentials {
                Some(c) => c.resolve(&provider_grants).await?,
                None => {
                    return Err(RunError::NoInjection {
                        grants: provider_grants.join(", "),
                    });
                }
            }
        };
        let mut allow: Vec<HostRules> = meta
            .spec
            .network_allow
            .iter()
            .filter_map(|a| a.to_rules().ok())
            .collect();
        for rule in &resolved.rules {
            for host in &rule.hosts {
                if !allow.iter().any(|a| &a.pattern == host) {
                    allow.push(HostRules::any(host.clone()));
                }
            }
        }
        let gateway = self.runtime.network_gateway(net).await?;
        let log = NetworkLog::start(
            self.store.network_log_writer(&meta.id)?,
            services.audit.clone(),
        );
        let handle = egress
            .start(EgressRequest {
                bind: gateway,
                policy: EgressPolicy {
                    mode: meta.policy,
                    allow,
                },
                rules: resolved.rules,
                sink: log.sink(),
                tunnels: if meta.policy == PolicyMode::Strict {
                    ssh_destinations(&meta.grants)
                } else {
                    Vec::new()
                },
            })
            .await?;
        let mut reachable = vec![handle.addr];
        reachable.extend(handle.tunnels.iter().map(|(_, _, addr)| *addr));
        if meta.policy == PolicyMode::Strict
            && let Err(e) = self.runtime.restrict_host_access(net, &reachable).await
        {
            handle.stop.shutdown().await;
            log.finish().await;
            return Err(e.into());
        }
        crate::store::write_atomic(
            &self.store.dir(&meta.id).join("ca.crt"),
            handle.ca_pem.as_bytes(),
        )?;
        let url = handle.proxy_url.expose().to_owned();
        let mut env: Vec<(String, String)> = Vec::new();
        for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            env.push((k.to_owned(), url.clone()));
        }
        for k in ["NO_PROXY", "no_proxy"] {
            env.push((k.to_owned(), "localhost,127.0.0.1,::1".to_owned()));
        }
        for k in [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "GIT_SSL_CAINFO",
        ] {
            env.push((k.to_owned(), SYSTEM_BUNDLE.to_owned()));
        }
        env.push(("NODE_EXTRA_CA_CERTS".to_owned(), MOAT_CA_PATH.to_owned()));
        let node_options = meta
            .spec
            .env
            .iter()
            .find(|(k, _)| k == "NODE_OPTIONS")
            .map(|(_, v)| format!("{v} "))
            .unwrap_or_default();
        env.push((
            "NODE_OPTIONS".to_owned(),
            format!("{node_options}--require {NODE_PROXY_PATH}"),
        ));
        env.extend(resolved.env);
        Ok(Some(RunEgress {
            handle,
            log,
            env,
            network: network.clone(),
        }))
    }

    async fn run_container(
        &self,
        meta: &RunMetadata,
        io: &mut RunIo,
        services: &RunServices,
        spec: ContainerSpec,
        egress: Option<&RunEgress>,
    ) -> Result<RunOutcome, RunError> {
        let rt = &self.runtime;
        let audit = services.audit.as_ref();
        let mut spec = spec;
        let cached = match egress {
            Some(e) => self.mount_trust_from_cache(meta, e, &mut spec).await?,
            None => false,
        };
        let container = rt.create_container(&spec).await?;
        self.store
            .update(&meta.id, |m| m.container_id = Some(container.clone()))?;
        if let (Some(e), false) = (egress, cached) {
            // Add the run CA to the image's own trust store, so tools trust it without flags.
            let mut bundle = rt
                .read_file(&container, SYSTEM_BUNDLE)
                .await?
                .unwrap_or_default();
            if let Some(path) = self.bundle_cache_path(&spec.image).await {
                // Best effort: a failed cache write only costs the next run this read.
                if let Some(parent) = path.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                let _ = crate::store::write_atomic_mode(&path, &bundle, 0o644);
            }
            if !bundle.is_empty() && !bundle.ends_with(b"\n") {
                bundle.push(b'\n');
            }
            bundle.extend_from_slice(e.handle.ca_pem.as_bytes());
            rt.write_files(
                &container,
                &[
                    (SYSTEM_BUNDLE.to_owned(), bundle, 0o644),
                    (
                        MOAT_CA_PATH.to_owned(),
                        e.handle.ca_pem.clone().into_bytes(),
                        0o644,
                    ),
                    (
                        NODE_PROXY_PATH.to_owned(),
                        NODE_PROXY_JS.as_bytes().to_vec(),
                        0o644,
                    ),
                ],
            )
            .await?;
            if !e.handle.tunnels.is_empty() {
                rt.write_files(
                    &container,
                    &[(
                        SSH_CONFIG_PATH.to_owned(),
                        ssh_config(&e.handle.tunnels).into_bytes(),
                        0o644,
                    )],
                )
                .await?;
            }
        }

        let attach = if meta.spec.stdin || meta.spec.tty {
            Some(
                rt.attach(&container, meta.spec.stdin, meta.spec.tty, None)
                    .await?,
            )
        } else {
            None
        };
        if io.cancel.is_cancelled() {
            self.store.update(&meta.id, |m| {
                m.state = RunState::Stopped;
                m.ended_at = Some(Utc::now());
            })?;
            return Ok(RunOutcome {
                exit_code: 130,
                state: RunState::Stopped,
            });
        }
        rt.start(&container).await?;
        self.store.update(&meta.id, |m| {
            m.state = RunState::Running;
            m.started_at = Some(Utc::now());
        })?;
        audit.append(
            event::CONTAINER_STARTED,
            serde_json::json!({ "container_id": container, "image": meta.image }),
        )?;
        if let Some(tx) = io.started.take() {
            let _ = tx.send(());
        }

        // Output: the log stream is the record (source timestamps) and, without a TTY, also
        // what the user sees. With a TTY the user sees the attach stream.
        let passthrough = !meta.spec.tty;
        let logs = rt.logs(&container, true, None).await?;
        let writer = self.store.log_writer(&meta.id)?;
        let stdout = std::mem::replace(&mut io.stdout, Box::new(tokio::io::sink()));
        let stderr = std::mem::replace(&mut io.stderr, Box::new(tokio::io::sink()));
        let (log_stdout, log_stderr, tty_out) = if passthrough {
            (Some(stdout), Some(stderr), None)
        } else {
            (None, None, Some(stdout))
        };
        let mut pump = LogPump {
            writer,
            assembler: LineAssembler::default(),
            stdout: log_stdout,
            stderr: log_stderr,
            output_failed: false,
            cursor: None,
        };
        let log_stop = CancellationToken::new();
        let mut log_task = {
            let stop = log_stop.clone();
            tokio::spawn(async move {
                let result = pump.feed(logs, false, Some(&stop)).await;
                (pump, result)
            })
        };

        let mut io_tasks = Vec::new();
        if let Some(session) = attach {
            let mut input = session.input;
            if let Some(mut stdin) = io.stdin.take() {
                io_tasks.push(tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut stdin, &mut input).await;
                    let _ = input.shutdown().await;
                }));
            }
            if let Some(mut out) = tty_out {
                let mut output = session.output;
                io_tasks.push(tokio::spawn(async move {
                    while let Some(Ok(chunk)) = output.next().await {
                        if out.write_all(&chunk.bytes).await.is_err() {
                            break;
                        }
                        let _ = out.flush().await;
                    }
                }));
            }
        }
        if let (true, Some(mut resize)) = (meta.spec.tty, io.resize.take()) {
            let rt = Arc::clone(rt);
            let container = container.clone();
            io_tasks.push(tokio::spawn(async move {
                while let Some((rows, cols)) = resize.recv().await {
                    let _ = rt.resize(&container, rows, cols).await;
                }
            }));
        }

        let mut stopped_by_us = false;
        let exit_code = tokio::select! {
            code = rt.wait(&container) => code?,
            () = io.cancel.cancelled() => {
                stopped_by_us = true;
                self.store.update(&meta.id, |m| m.state = RunState::Stopping)?;
                rt.stop(&container, STOP_GRACE).await?;
                rt.wait(&container).await?
            }
        };
        // The network is not needed once the container has exited; tear it down while the
        // logs drain instead of after.
        let network_teardown = match (&spec.network, meta.spec.keep || services.defer_teardown) {
            (NetworkAttachment::Network(net), false) => {
                let rt = Arc::clone(rt);
                let net = net.clone();
                Some(tokio::spawn(async move { rt.remove_network(&net).await }))
            }
            _ => None,
        };
        // The follow stream ends once the container has stopped; bound the wait anyway (then
        // stop following, keeping what was recorded). The engine may also end it before its
        // last (unterminated) line is written. Either way, catch up with a final read from
        // where the stream stopped, so nothing is lost.
        let joined = match tokio::time::timeout(LOG_DRAIN, &mut log_task).await {
            Ok(joined) => joined,
            Err(_) => {
                log_stop.cancel();
                log_task.await
            }
        };
        let log_result = match joined {
            Ok((mut pump, result)) => match result {
                Ok(()) => match rt
                    .logs(&container, false, pump.cursor.map(|(ts, _)| ts))
                    .await
                {
                    Ok(rest) => pump
                        .feed(rest, true, None)
                        .await
                        .and_then(|()| pump.finish()),
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e),
            },
            Err(join) => Err(RunError::Output(std::io::Error::other(join))),
        };
        for task in io_tasks {
            task.abort();
        }
        if let Some(task) = network_teardown {
            let _ = task.await;
        }
        let state = if stopped_by_us {
            RunState::Stopped
        } else {
            RunState::Exited
        };
        self.store.update(&meta.id, |m| {
            m.state = state;
            m.exit_code = Some(exit_code);
            m.ended_at = Some(Utc::now());
        })?;
        audit.append(
            event::CONTAINER_EXITED,
            serde_json::json!({ "container_id": container, "exit_code": exit_code }),
        )?;
        log_result?;
        Ok(RunOutcome { exit_code, state })
    }

    /// Where the CA bundle of `image` is cached, keyed by image ID.
    async fn bundle_cache_path(&self, image: &str) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let id = self.runtime.image_id(image).await.ok().flatten()?;
        let key: String = id.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        (!key.is_empty()).then(|| dir.join("ca-bundles").join(format!("{key}.pem")))
    }

    /// With the image's CA bundle cached, prepares the trust files in the run directory and
    /// bind-mounts them read-only, instead of copying them in through the engine after the
    /// container is created. Returns whether it did.
    async fn mount_trust_from_cache(
        &self,
        meta: &RunMetadata,
        egress: &RunEgress,
        spec: &mut ContainerSpec,
    ) -> Result<bool, RunError> {
        let Some(path) = self.bundle_cache_path(&meta.image).await else {
            return Ok(false);
        };
        let Ok(mut bundle) = std::fs::read(&path) else {
            return Ok(false);
        };
        if !bundle.is_empty() && !bundle.ends_with(b"\n") {
            bundle.push(b'\n');
        }
        bundle.extend_from_slice(egress.handle.ca_pem.as_bytes());
        let trust = self.store.dir(&meta.id).join("trust");
        let moat_dir = trust.join("moat");
        std::fs::create_dir_all(&moat_dir).map_err(|source| {
            RunError::Store(StoreError::Io {
                action: "create",
                path: moat_dir.clone(),
                source,
            })
        })?;
        let write = crate::store::write_atomic_mode;
        write(&trust.join("ca-certificates.crt"), &bundle, 0o644)?;
        write(
            &moat_dir.join("ca.crt"),
            egress.handle.ca_pem.as_bytes(),
            0o644,
        )?;
        write(
            &moat_dir.join("node-proxy.cjs"),
            NODE_PROXY_JS.as_bytes(),
            0o644,
        )?;
        let mut mounts = vec![
            (trust.join("ca-certificates.crt"), SYSTEM_BUNDLE.to_owned()),
            (moat_dir, "/etc/moat".to_owned()),
        ];
        if !egress.handle.tunnels.is_empty() {
            let conf = trust.join("ssh-moat.conf");
            write(&conf, ssh_config(&egress.handle.tunnels).as_bytes(), 0o644)?;
            mounts.push((conf, SSH_CONFIG_PATH.to_owned()));
        }
        for (source, target) in mounts {
            spec.mounts.push(BindMount {
                source: source.display().to_string(),
                target,
                readonly: true,
            });
        }
        Ok(true)
    }

    /// Everything a deferred teardown leaves: the host firewall rules of a strict run, then
    /// the container and network (see [`Orchestrator::cleanup`]).
    pub async fn teardown(&self, meta: &RunMetadata) {
        if let Some(net) = &meta.network_id {
            let _ = self.runtime.release_host_access(net).await;
        }
        self.cleanup(meta).await;
    }

    /// Removes the run's container and network, unless the run keeps its container (then both
    /// stay, so the container can be inspected or restarted; `destroy` removes them). Errors
    /// are ignored: cleanup is best effort and repeated by `reconcile` and `destroy`.
    pub async fn cleanup(&self, meta: &RunMetadata) {
        if meta.spec.keep {
            return;
        }
        if let Some(c) = &meta.container_id {
            let _ = self.runtime.remove_container(c).await;
        }
        // Usually already removed when the container exited; removing twice is harmless.
        if let Some(n) = &meta.network_id {
            let _ = self.runtime.remove_network(n).await;
        }
    }

    /// Brings an unsupervised active run (its supervisor died) to a final state: a still
    /// running container is stopped, so no orphan keeps running without its supervisor, and
    /// runtime objects are removed. Returns the updated metadata; runs that are supervised or
    /// already final are returned unchanged.
    pub async fn reconcile(&self, meta: &RunMetadata) -> Result<RunMetadata, RunError> {
        if !meta.state.is_active() || self.store.is_supervised(&meta.id) {
            return Ok(meta.clone());
        }
        let status = match &meta.container_id {
            Some(c) => self.runtime.status(c).await?,
            None => ContainerStatus::Missing,
        };
        let exit_code = match status {
            ContainerStatus::Running | ContainerStatus::Created => {
                if let Some(c) = &meta.container_id {
                    self.runtime.stop(c, STOP_GRACE).await?;
                    Some(self.runtime.wait(c).await?)
                } else {
                    None
                }
            }
            ContainerStatus::Exited(code) => Some(code),
            ContainerStatus::Missing => None,
        };
        let pid = meta
            .supervisor_pid
            .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        let updated = self.store.update(&meta.id, |m| {
            m.state = RunState::Failed;
            m.exit_code = m.exit_code.or(exit_code);
            m.ended_at = Some(Utc::now());
            m.error = Some(format!(
                "the run's supervisor (pid {pid}) exited without finishing the run; the container was stopped and cleaned up"
            ));
        })?;
        self.teardown(&updated).await;
        if !updated.spec.keep {
            // Also objects created but not yet recorded (a crash between create and save).
            let _ = self.remove_objects(&updated).await;
        }
        Ok(updated)
    }

    /// Removes everything the runtime holds for a run, whether recorded in its metadata or
    /// found by its labels (created before a crash could record them): the host firewall
    /// rules of its network (best effort: a permissive run has none), its containers and its
    /// networks. `kept` containers go too; this is `moat destroy`.
    pub async fn remove_objects(&self, meta: &RunMetadata) -> Result<(), RuntimeError> {
        let objects = self.runtime.objects_of_run(meta.id.as_str()).await?;
        let networks: Vec<&String> = objects.networks.iter().chain(&meta.network_id).collect();
        for n in &networks {
            let _ = self.runtime.release_host_access(n).await;
        }
        for c in objects.containers.iter().chain(&meta.container_id) {
            self.runtime.remove_container(c).await?;
        }
        for n in networks {
            self.runtime.remove_network(n).await?;
        }
        Ok(())
    }
}

/// How long the log follow stream may go on after the container has exited before moat stops
/// following and catches up with a plain read instead.
const LOG_DRAIN: Duration = Duration::from_secs(30);

/// The image's system trust store (Debian/Ubuntu layout; other images get the file created).
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The run CA alone, for tools that add extra roots (`NODE_EXTRA_CA_CERTS`).
const MOAT_CA_PATH: &str = "/etc/moat/ca.crt";

/// OpenSSH client configuration routing granted SSH hosts through their relays (read by
/// Debian/Ubuntu's `/etc/ssh/ssh_config` through its `Include`).
const SSH_CONFIG_PATH: &str = "/etc/ssh/ssh_config.d/moat.conf";

/// SSH destinations of `ssh:<host>[:port]` grants.
fn ssh_destinations(grants: &[String]) -> Vec<(String, u16)> {
    grants
        .iter()
        .filter_map(|g| g.strip_prefix("ssh:"))
        .filter_map(|dest| {
            if let Some(rest) = dest.strip_prefix('[') {
                let (host, port) = rest.split_once("]:")?;
                return Some((host.to_owned(), port.parse().ok()?));
            }
            match dest.rsplit_once(':') {
                Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
                None => Some((dest.to_owned(), 22)),
            }
        })
        .collect()
}

/// `Host` blocks sending each granted destination to its relay, keeping its host key name.
fn ssh_config(tunnels: &[(String, u16, std::net::SocketAddr)]) -> String {
    let mut text =
        String::from("# Written by moat: SSH to granted hosts goes through the run's relays.\n");
    for (host, port, addr) in tunnels {
        let alias = if *port == 22 {
            host.clone()
        } else {
            format!("[{host}]:{port}")
        };
        text.push_str(&format!(
            "Host {host}\n    HostName {}\n    Port {}\n    HostKeyAlias {alias}\n",
            addr.ip(),
            addr.port()
        ));
    }
    text
}

/// Preload that routes Node.js `https` through the proxy (Node ignores `HTTPS_PROXY`).
const NODE_PROXY_PATH: &str = "/etc/moat/node-proxy.cjs";
const NODE_PROXY_JS: &str = include_str!("node_proxy.cjs");

/// A started egress and what the container needs to use it.
struct RunEgress {
    handle: EgressHandle,
    log: NetworkLog,
    env: Vec<(String, String)>,
    network: NetworkAttachment,
}

/// Writes request records to `network.jsonl` (live, one line per request) and to the audit
/// log, off the proxy's request path.
struct NetworkLog {
    tx: mpsc::UnboundedSender<NetworkRecord>,
    task: tokio::task::JoinHandle<()>,
}

struct NetworkLogSink(mpsc::UnboundedSender<NetworkRecord>);

impl NetworkEventSink for NetworkLogSink {
    fn record(&self, record: NetworkRecord) {
        let _ = self.0.send(record);
    }
}

impl NetworkLog {
    fn start(mut writer: crate::store::JsonlWriter, audit: Arc<dyn AuditSink>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<NetworkRecord>();
        let task = tokio::spawn(async move {
            while let Some(record) = rx.recv().await {
                let _ = writer.append(&record);
                let _ = audit.append(
                    event::NETWORK_REQUEST,
                    serde_json::json!({
                        "id": record.id,
                        "method": record.method,
                        "url": record.url,
                        "host": record.host,
                        "status": record.status,
                        "decision": record.decision,
                        "reason": record.reason,
                        "grant": record.grant,
                    }),
                );
                if let Some(grant) = &record.grant {
                    let _ = audit.append(
                        event::CREDENTIAL_INJECTED,
                        serde_json::json!({
                            "grant": grant,
                            "host": record.host,
                            "request_id": record.id,
                        }),
                    );
                }
            }
            let _ = writer.sync();
        });
        Self { tx, task }
    }

    fn sink(&self) -> Arc<dyn NetworkEventSink> {
        Arc::new(NetworkLogSink(self.tx.clone()))
    }

    /// Waits for every record sent so far to be written. The proxy must be stopped first, so
    /// no sender is left.
    async fn finish(self) {
        drop(self.tx);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// Labels for every runtime object of a run.
pub fn run_labels(id: &RunId) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_RUN_ID.to_owned(), id.to_string()),
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
    ])
}

fn container_spec(
    meta: &RunMetadata,
    network: NetworkAttachment,
    labels: BTreeMap<String, String>,
) -> ContainerSpec {
    let mut mounts = vec![BindMount {
        source: meta.workspace.display().to_string(),
        target: "/workspace".into(),
        readonly: false,
    }];
    mounts.extend(meta.spec.mounts.iter().map(|(s, t, ro)| BindMount {
        source: s.display().to_string(),
        target: t.clone(),
        readonly: *ro,
    }));
    ContainerSpec {
        name: format!("moat-{}", meta.id),
        image: meta.image.clone(),
        command: meta.spec.command.clone(),
        env: meta.spec.env.clone(),
        workdir: "/workspace".into(),
        user: meta.spec.user.clone(),
        mounts,
        network,
        ports: meta.spec.ports.clone(),
        labels,
        tty: meta.spec.tty,
        stdin: meta.spec.stdin,
        memory_bytes: meta.spec.memory_bytes,
        cpus: meta.spec.cpus,
        pids_limit: 4096,
        cap_add: Vec::new(),
        dns: None,
    }
}

/// Reassembles runtime chunks into lines, writes them to `logs.jsonl` as they complete and
/// passes the raw bytes through to the caller. Remembers how far it got, so a final catch-up
/// read after the container exits can add what a follow stream missed, without duplicates.
struct LogPump {
    writer: LogWriter,
    assembler: LineAssembler,
    stdout: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    stderr: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    output_failed: bool,
    /// Timestamp of the last chunk processed, and how many chunks carried exactly it.
    cursor: Option<(chrono::DateTime<Utc>, usize)>,
}

type LogStreamBox =
    futures_util::stream::BoxStream<'static, Result<crate::runtime::LogChunk, RuntimeError>>;

impl LogPump {
    /// Processes `logs`; with `catch_up`, chunks at or before the cursor are skipped.
    /// Records (and passes through) `logs` until the stream ends or `stop` is cancelled.
    async fn feed(
        &mut self,
        mut logs: LogStreamBox,
        catch_up: bool,
        stop: Option<&CancellationToken>,
    ) -> Result<(), RunError> {
        let mut skip_at_cursor = if catch_up {
            self.cursor.map_or(0, |(_, n)| n)
        } else {
            0
        };
        loop {
            let next = match stop {
                Some(stop) => tokio::select! {
                    chunk = logs.next() => chunk,
                    () = stop.cancelled() => None,
                },
                None => logs.next().await,
            };
            let Some(chunk) = next else { break };
            let chunk = chunk?;
            if catch_up && let Some((ts, _)) = self.cursor {
                if chunk.ts < ts {
                    continue;
                }
                if chunk.ts == ts && skip_at_cursor > 0 {
                    skip_at_cursor -= 1;
                    continue;
                }
            }
            self.cursor = match self.cursor {
                Some((ts, n)) if ts == chunk.ts => Some((ts, n + 1)),
                _ => Some((chunk.ts, 1)),
            };
            let out = match chunk.stream {
                LogStream::Stderr => self.stderr.as_mut(),
                LogStream::Stdout | LogStream::Tty => self.stdout.as_mut(),
            };
            if let (Some(out), false) = (out, self.output_failed) {
                // A closed terminal or pipe must not stop the recording.
                self.output_failed =
                    out.write_all(&chunk.bytes).await.is_err() || out.flush().await.is_err();
            }
            for record in self.assembler.push(chunk.ts, chunk.stream, &chunk.bytes) {
                self.writer.append(&record)?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), RunError> {
        for record in self.assembler.finish() {
            self.writer.append(&record)?;
        }
        self.writer.sync()?;
        Ok(())
    }
}

/// Turns timestamped chunks into complete lines per stream, keeping the timestamp of the
/// chunk that started each line. Lines of any length are kept whole.
#[derive(Debug, Default)]
pub struct LineAssembler {
    partial: BTreeMap<LogStreamKey, (chrono::DateTime<Utc>, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum LogStreamKey {
    Stdout,
    Stderr,
    Tty,
}

impl From<LogStream> for LogStreamKey {
    fn from(s: LogStream) -> Self {
        match s {
            LogStream::Stdout => Self::Stdout,
            LogStream::Stderr => Self::Stderr,
            LogStream::Tty => Self::Tty,
        }
    }
}

impl From<LogStreamKey> for LogStream {
    fn from(s: LogStreamKey) -> Self {
        match s {
            LogStreamKey::Stdout => Self::Stdout,
            LogStreamKey::Stderr => Self::Stderr,
            LogStreamKey::Tty => Self::Tty,
        }
    }
}

impl LineAssembler {
    /// Adds a chunk; returns the lines it completes.
    pub fn push(
        &mut self,
        ts: chrono::DateTime<Utc>,
        stream: LogStream,
        bytes: &[u8],
    ) -> Vec<LogRecord> {
        let key = LogStreamKey::from(stream);
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let entry = self.partial.entry(key).or_insert_with(|| (ts, Vec::new()));
            match rest.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    entry.1.extend_from_slice(&rest[..i]);
                    let (start, line) = self.partial.remove(&key).unwrap_or((ts, Vec::new()));
                    out.push(make_record(start, stream, line));
                    rest = &rest[i + 1..];
                }
                None => {
                    entry.1.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
        out
    }

    /// Flushes unterminated lines at the end of the stream.
    pub fn finish(&mut self) -> Vec<LogRecord> {
        std::mem::take(&mut self.partial)
            .into_iter()
            .map(|(key, (ts, line))| make_record(ts, key.into(), line))
            .collect()
    }
}

fn make_record(ts: chrono::DateTime<Utc>, stream: LogStream, mut line: Vec<u8>) -> LogRecord {
    if stream == LogStream::Tty && line.last() == Some(&b'\r') {
        line.pop();
    }
    LogRecord {
        ts,
        stream,
        line: String::from_utf8_lossy(&line).into_owned(),
    }
}

/// An error with its sources, joined by `: `.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let text = src.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = src.source();
    }
    s
}
