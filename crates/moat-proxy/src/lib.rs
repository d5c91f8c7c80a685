//! moat-proxy is the TLS-intercepting forward proxy that keeps credentials outside a sandbox.
//!
//! A container authenticates with placeholders; this proxy, running on the host, authenticates
//! clients with a per-run token, enforces the run's [`EgressPolicy`](moat_core::egress::EgressPolicy)
//! at CONNECT and per request, intercepts TLS with leaves minted by a per-run in-memory
//! [`CertificateAuthority`], injects the real credential (SPEC §4.2) only over verified TLS to
//! the hosts of its grant, scrubs real values from responses, refuses internal destinations,
//! and reports one [`NetworkRecord`](moat_core::egress::NetworkRecord) per request to a
//! [`NetworkEventSink`](moat_core::egress::NetworkEventSink).
//!
//! The `moat` CLI embeds it through [`ProxyBuilder`]; a custom orchestrator can use it alone.
//! It deliberately does not read environment variables or files, print, write the CA key
//! anywhere, re-sign AWS requests (SigV4), or terminate non-TLS protocols inside a CONNECT
//! tunnel: such tunnels are closed.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use moat_core::egress::{NetworkEventSink, NetworkRecord};
//! use moat_proxy::{CertificateAuthority, ProxyBuilder, RunContext, StaticCredentials};
//!
//! struct Log;
//! impl NetworkEventSink for Log {
//!     fn record(&self, _record: NetworkRecord) {}
//! }
//!
//! # async fn run(rules: Vec<moat_core::creds::InjectionRule>) -> Result<(), Box<dyn std::error::Error>> {
//! let ca = Arc::new(CertificateAuthority::generate()?);
//! let token = moat_proxy::generate_token();
//! let run = RunContext::new(token.clone(), ca.clone(), Arc::new(Log))
//!     .with_credentials(Arc::new(StaticCredentials::new(rules)));
//! let proxy = ProxyBuilder::new("127.0.0.1:0".parse()?).run(run).start().await?;
//! // Give the container `HTTPS_PROXY=<proxy_url>` and trust `ca.cert_pem()`.
//! let _url = proxy.proxy_url(&token);
//! let _ca_pem = ca.cert_pem();
//! proxy.shutdown(Duration::from_secs(5)).await;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod answer;
mod body;
pub mod ca;
mod guard;
mod inject;
mod proxy;
mod scrub;
mod upstream;

pub use answer::BLOCKED_HEADER;
pub use answer::ERROR_HEADER;
pub use ca::CaError;
pub use ca::CertificateAuthority;
pub use guard::IpRange;
pub use guard::IpRangeError;
pub use inject::CredentialSource;
pub use inject::StaticCredentials;
pub use proxy::Limits;
pub use proxy::Proxy;
pub use proxy::ProxyBuilder;
pub use proxy::ProxyError;
pub use proxy::RunContext;
pub use proxy::generate_token;
/// DER certificate type used for extra upstream roots and the CA certificate.
pub use rustls::pki_types::CertificateDer;
pub use upstream::SettingsError;
pub use upstream::UpstreamError;
pub use upstream::UpstreamSettings;
