//! The run's egress: moat-proxy behind moat-core's `Egress` seam, and the credential provider
//! behind `CredentialProvider`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use moat_core::creds::CredentialProvider;
use moat_core::egress::Egress;
use moat_core::egress::EgressError;
use moat_core::egress::EgressHandle;
use moat_core::egress::EgressRequest;
use moat_core::egress::EgressStop;
use moat_core::egress::NetworkEventSink;
use moat_core::egress::NetworkRecord;
use moat_core::egress::RecordDecision;
use moat_core::run::RunMetadata;
use moat_proxy::CertificateAuthority;
use moat_proxy::Proxy;
use moat_proxy::ProxyBuilder;
use moat_proxy::RunContext;
use moat_proxy::StaticCredentials;
use moat_proxy::UpstreamSettings;

use crate::context::Context;
use crate::error::CliError;
use crate::error::CliResult;
use crate::error::EXIT_PRE_RUN;

/// moat-proxy as a run's egress.
pub(crate) struct ProxyEgress {
    upstream: UpstreamSettings,
}

impl ProxyEgress {
    /// Upstream settings from `MOAT_RESOLVE` and `MOAT_UPSTREAM_CA` (or config.yaml).
    pub(crate) fn new(ctx: &Context) -> CliResult<Self> {
        let overrides = ctx.upstream_overrides().map_err(|e| CliError {
            code: EXIT_PRE_RUN,
            ..e
        })?;
        let mut upstream = UpstreamSettings::default();
        if !overrides.extra_roots_pem.is_empty() {
            upstream
                .add_pem_roots(&String::from_utf8_lossy(&overrides.extra_roots_pem))
                .map_err(|e| {
                    CliError::from_error(EXIT_PRE_RUN, &e)
                        .hint("MOAT_UPSTREAM_CA must be a PEM file of CA certificates")
                })?;
        }
        for o in &overrides.resolve {
            upstream = upstream.resolve(&o.host, o.port, o.addr);
        }
        Ok(Self { upstream })
    }
}

#[async_trait]
impl Egress for ProxyEgress {
    async fn start(&self, request: EgressRequest) -> Result<EgressHandle, EgressError> {
        let boxed = |e: Box<dyn std::error::Error + Send + Sync>| EgressError { source: e };
        let ca = Arc::new(CertificateAuthority::generate().map_err(|e| boxed(Box::new(e)))?);
        let token = moat_proxy::generate_token();
        let mut tunnels = Vec::new();
        let mut relays = Vec::new();
        for (host, port) in &request.tunnels {
            let listener = tokio::net::TcpListener::bind(SocketAddr::new(request.bind, 0))
                .await
                .map_err(|e| boxed(Box::new(e)))?;
            let addr = listener.local_addr().map_err(|e| boxed(Box::new(e)))?;
            let dest = self.upstream.resolved(host, *port);
            relays.push(tokio::spawn(relay(
                listener,
                host.clone(),
                *port,
                dest,
                request.sink.clone(),
            )));
            tunnels.push((host.clone(), *port, addr));
        }
        let run = RunContext::new(token.clone(), ca.clone(), request.sink)
            .with_policy(request.policy)
            .with_credentials(Arc::new(StaticCredentials::new(request.rules)));
        let proxy = ProxyBuilder::new(SocketAddr::new(request.bind, 0))
            .upstream(self.upstream.clone())
            .run(run)
            // Its own thread and single-threaded runtime: no cross-thread wake-ups on the
            // request path, and the supervisor's log writing cannot slow requests down.
            .start_dedicated()
            .await
            .map_err(|e| boxed(Box::new(e)))?;
        Ok(EgressHandle {
            addr: proxy.local_addr(),
            proxy_url: proxy.proxy_url(&token),
            ca_pem: ca.cert_pem().to_owned(),
            tunnels,
            stop: Box::new(Stopper { proxy, relays }),
        })
    }
}

struct Stopper {
    proxy: Proxy,
    relays: Vec<tokio::task::JoinHandle<()>>,
}

#[async_trait]
impl EgressStop for Stopper {
    async fn shutdown(self: Box<Self>) {
        for relay in &self.relays {
            relay.abort();
        }
        self.proxy.shutdown(Duration::from_secs(2)).await;
    }
}

/// Relays raw TCP connections (SSH) from the run to one granted destination, recording each
/// connection like a proxied request.
async fn relay(
    listener: tokio::net::TcpListener,
    host: String,
    port: u16,
    dest: Option<SocketAddr>,
    sink: Arc<dyn NetworkEventSink>,
) {
    let mut n = 0u64;
    while let Ok((mut inbound, _)) = listener.accept().await {
        n += 1;
        let (host, sink) = (host.clone(), sink.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let ts = chrono::Utc::now();
            let outbound = match dest {
                Some(addr) => tokio::net::TcpStream::connect(addr).await,
                None => tokio::net::TcpStream::connect((host.as_str(), port)).await,
            };
            let (status, reason, sent, received) = match outbound {
                Ok(mut out) => match tokio::io::copy_bidirectional(&mut inbound, &mut out).await {
                    Ok((up, down)) => (Some(200), None, up, down),
                    Err(e) => (Some(200), Some(format!("relay ended: {e}")), 0, 0),
                },
                Err(e) => (None, Some(format!("connect-failed: {e}")), 0, 0),
            };
            sink.record(NetworkRecord {
                ts,
                id: format!("ssh-{n}"),
                method: "SSH".to_owned(),
                url: format!("ssh://{host}:{port}"),
                host,
                status,
                duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                req_bytes: sent,
                resp_bytes: received,
                grant: None,
                decision: RecordDecision::Allowed,
                reason,
                req_headers: Default::default(),
                resp_headers: Default::default(),
            });
        });
    }
}

/// The credential provider for a run's grants, if it has any besides `ssh:` ones.
pub(crate) fn credentials(
    ctx: &Context,
    meta: &RunMetadata,
) -> CliResult<Option<Arc<dyn CredentialProvider>>> {
    if !meta.grants.iter().any(|g| !g.starts_with("ssh:")) {
        return Ok(None);
    }
    let store = ctx.credential_store().map_err(|e| CliError {
        code: EXIT_PRE_RUN,
        ..e
    })?;
    Ok(Some(Arc::new(moat_creds::StoreCredentialProvider::new(
        store,
        ctx.providers(),
    ))))
}

/// Checks before a run is created that every credential grant is known and stored, listing
/// every `moat grant` command still to run.
pub(crate) fn check_grants(ctx: &Context, grants: &[String]) -> CliResult<()> {
    let provider_grants: Vec<&String> = grants.iter().filter(|g| !g.starts_with("ssh:")).collect();
    if provider_grants.is_empty() {
        return Ok(());
    }
    let providers = ctx.providers();
    for g in &provider_grants {
        providers
            .get(g)
            .map_err(|e| CliError::from_error(EXIT_PRE_RUN, &e))?;
    }
    let store = ctx.credential_store().map_err(|e| CliError {
        code: EXIT_PRE_RUN,
        ..e
    })?;
    let mut missing = Vec::new();
    for g in &provider_grants {
        match store.load(g) {
            Ok(Some(_)) => {}
            Ok(None) => missing.push((*g).clone()),
            Err(e) => {
                return Err(CliError::from_error(EXIT_PRE_RUN, &e).hint(format!(
                    "`moat revoke {g}` then `moat grant {g}` replaces a damaged credential"
                )));
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let mut err = CliError::new(
        EXIT_PRE_RUN,
        format!("no credential stored for {}", missing.join(", ")),
    );
    for g in &missing {
        err = err.hint(format!("run `moat grant {g}`"));
    }
    Err(err)
}
