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
        let run = RunContext::new(token.clone(), ca.clone(), request.sink)
            .with_policy(request.policy)
            .with_credentials(Arc::new(StaticCredentials::new(request.rules)));
        let proxy = ProxyBuilder::new(SocketAddr::new(request.bind, 0))
            .upstream(self.upstream.clone())
            .run(run)
            .start()
            .await
            .map_err(|e| boxed(Box::new(e)))?;
        Ok(EgressHandle {
            addr: proxy.local_addr(),
            proxy_url: proxy.proxy_url(&token),
            ca_pem: ca.cert_pem().to_owned(),
            stop: Box::new(Stopper(proxy)),
        })
    }
}

struct Stopper(Proxy);

#[async_trait]
impl EgressStop for Stopper {
    async fn shutdown(self: Box<Self>) {
        self.0.shutdown(Duration::from_secs(2)).await;
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
