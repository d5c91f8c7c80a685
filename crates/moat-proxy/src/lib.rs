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
pub use upstream::SettingsError;
pub use upstream::UpstreamError;
pub use upstream::UpstreamSettings;
