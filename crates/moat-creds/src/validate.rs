//! Validating a credential with its provider before it is saved.
//!
//! Calls go through the same upstream overrides as the proxy: `host:port → address` resolve
//! overrides (`MOAT_RESOLVE`) and extra PEM roots (`MOAT_UPSTREAM_CA`), both passed in by
//! the caller. No system proxy is used and redirects are not followed, so the credential is
//! only ever sent to the validation URL's host.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use moat_core::Secret;
use reqwest::header::HeaderName;
use reqwest::header::HeaderValue;

use crate::provider::Provider;
use crate::provider::ValidationSpec;

/// Longest error body read from a provider.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Longest provider message kept in an error.
const MAX_MESSAGE_CHARS: usize = 300;

/// One `host:port=ip:port` override, like curl `--resolve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveOverride {
    /// Host name, lower-case.
    pub host: String,
    /// Port of the URL.
    pub port: u16,
    /// Where to connect instead.
    pub addr: SocketAddr,
}

/// A malformed resolve override.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid resolve override `{value}`; write host:port=ip:port, e.g. api.github.com:443=127.0.0.1:8443"
)]
pub struct ResolveOverrideError {
    /// The text given.
    pub value: String,
}

impl ResolveOverride {
    /// Parses a comma-separated list (`MOAT_RESOLVE`); empty items are skipped.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, ResolveOverrideError> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect()
    }
}

impl FromStr for ResolveOverride {
    type Err = ResolveOverrideError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ResolveOverrideError {
            value: s.to_owned(),
        };
        let (from, to) = s.trim().split_once('=').ok_or_else(err)?;
        let (host, port) = from.rsplit_once(':').ok_or_else(err)?;
        let port: u16 = port.parse().map_err(|_| err())?;
        let addr: SocketAddr = to.trim().parse().map_err(|_| err())?;
        let host = host.trim().to_ascii_lowercase();
        if host.is_empty() || port == 0 {
            return Err(err());
        }
        Ok(Self { host, port, addr })
    }
}

impl fmt::Display for ResolveOverride {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}={}", self.host, self.port, self.addr)
    }
}

/// How validation calls reach upstream.
#[derive(Debug, Clone, Default)]
pub struct UpstreamOverrides {
    /// Resolve overrides.
    pub resolve: Vec<ResolveOverride>,
    /// Extra trusted roots, a PEM bundle (may be empty).
    pub extra_roots_pem: Vec<u8>,
}

/// What a successful validation learned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validated {
    /// The account the provider reported (GitHub login), if any.
    pub account: Option<String>,
}

/// Why a credential was not validated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// The provider answered with a non-success status.
    #[error(
        "{provider} rejected the credential: HTTP {status}: {message}; nothing was saved, check the value or create a new one"
    )]
    Rejected {
        /// The provider.
        provider: String,
        /// The HTTP status.
        status: u16,
        /// The provider's message (the credential itself is scrubbed from it).
        message: String,
    },
    /// The provider could not be reached.
    #[error(
        "cannot reach {url} to validate the {provider} credential: {detail}; check the network, MOAT_RESOLVE and MOAT_UPSTREAM_CA"
    )]
    Unreachable {
        /// The provider.
        provider: String,
        /// The validation URL.
        url: String,
        /// The error and its causes.
        detail: String,
    },
    /// The extra root certificates are not valid PEM.
    #[error(
        "the extra upstream CA bundle (MOAT_UPSTREAM_CA) is not valid PEM: {detail}; point it at a PEM file of CA certificates"
    )]
    BadRootCertificate {
        /// The parser's error.
        detail: String,
    },
    /// The value cannot be sent in an HTTP header.
    #[error(
        "the {provider} credential contains characters that cannot appear in an HTTP header; check for stray spaces or line breaks"
    )]
    BadValue {
        /// The provider.
        provider: String,
    },
}

/// Checks a credential with its provider.
#[async_trait]
pub trait Validator: Send + Sync {
    /// `Ok(None)` when the provider has no validation call; `Ok(Some(_))` when it accepted
    /// the value.
    async fn validate(
        &self,
        provider: &Provider,
        value: &Secret,
    ) -> Result<Option<Validated>, ValidationError>;
}

/// The real validator: HTTPS with rustls, the Mozilla root set (webpki-roots, as the proxy) plus the extra roots.
#[derive(Debug, Clone)]
pub struct HttpValidator {
    resolve: Vec<ResolveOverride>,
    roots: Vec<reqwest::Certificate>,
    timeout: Duration,
}

impl HttpValidator {
    /// A validator using `overrides`; fails when the extra roots are not valid PEM.
    pub fn new(overrides: &UpstreamOverrides) -> Result<Self, ValidationError> {
        let roots = if overrides
            .extra_roots_pem
            .iter()
            .all(u8::is_ascii_whitespace)
        {
            Vec::new()
        } else {
            reqwest::Certificate::from_pem_bundle(&overrides.extra_roots_pem).map_err(|e| {
                ValidationError::BadRootCertificate {
                    detail: error_chain(&e),
                }
            })?
        };
        if roots.is_empty()
            && !overrides
                .extra_roots_pem
                .iter()
                .all(u8::is_ascii_whitespace)
        {
            return Err(ValidationError::BadRootCertificate {
                detail: "no certificate found".to_owned(),
            });
        }
        Ok(Self {
            resolve: overrides.resolve.clone(),
            roots,
            timeout: Duration::from_secs(30),
        })
    }

    /// Changes the overall request timeout (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn call(
        &self,
        provider: &Provider,
        spec: &ValidationSpec,
        value: &Secret,
    ) -> Result<Validated, ValidationError> {
        let unreachable = |e: &reqwest::Error| ValidationError::Unreachable {
            provider: provider.name().to_owned(),
            url: spec.url.to_string(),
            detail: error_chain(e),
        };
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(self.timeout)
            .user_agent(concat!("moat/", env!("CARGO_PKG_VERSION")));
        for root in &self.roots {
            builder = builder.add_root_certificate(root.clone());
        }
        if let (Some(host), Some(port)) = (spec.url.host_str(), spec.url.port_or_known_default())
            && let Some(o) = self
                .resolve
                .iter()
                .find(|o| o.port == port && o.host.eq_ignore_ascii_case(host))
        {
            builder = builder.resolve(host, o.addr);
        }
        let client = builder.build().map_err(|e| unreachable(&e))?;

        let bad_value = || ValidationError::BadValue {
            provider: provider.name().to_owned(),
        };
        let name = HeaderName::from_bytes(spec.header.as_bytes()).map_err(|_| bad_value())?;
        let mut header =
            HeaderValue::from_str(&spec.format.render(value.expose())).map_err(|_| bad_value())?;
        header.set_sensitive(true);
        let mut request = client.get(spec.url.clone()).header(name, header);
        for (k, v) in &spec.extra_headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let mut response = request.send().await.map_err(|e| unreachable(&e))?;
        let status = response.status();
        let mut body = Vec::new();
        while body.len() < MAX_ERROR_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) if status.is_success() => return Err(unreachable(&e)),
                Err(_) => break,
            }
        }
        if !status.is_success() {
            return Err(ValidationError::Rejected {
                provider: provider.name().to_owned(),
                status: status.as_u16(),
                message: provider_message(&body, status, value),
            });
        }
        let account = spec.account_field.as_deref().and_then(|field| {
            serde_json::from_slice::<serde_json::Value>(&body)
                .ok()?
                .get(field)?
                .as_str()
                .map(|s| sanitize(s, value))
        });
        Ok(Validated { account })
    }
}

#[async_trait]
impl Validator for HttpValidator {
    async fn validate(
        &self,
        provider: &Provider,
        value: &Secret,
    ) -> Result<Option<Validated>, ValidationError> {
        match provider.validation_for(value) {
            Some(spec) => self.call(provider, spec, value).await.map(Some),
            None => Ok(None),
        }
    }
}

/// The provider's own message: `message`, `error.message` or `error` of a JSON body, else
/// the start of the body text, else the status reason.
fn provider_message(body: &[u8], status: reqwest::StatusCode, value: &Secret) -> String {
    let from_json = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|json| {
            let direct = json.get("message").and_then(|m| m.as_str());
            let nested = json
                .get("error")
                .and_then(|e| e.get("message").or(Some(e)))
                .and_then(|m| m.as_str());
            direct.or(nested).map(str::to_owned)
        });
    let text = from_json
        .or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            (!text.is_empty()).then(|| text.to_owned())
        })
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("no message").to_owned());
    sanitize(&text, value)
}

/// Removes the credential, control characters and excess length from provider text.
fn sanitize(text: &str, value: &Secret) -> String {
    let mut text = text.to_owned();
    if !value.is_empty() {
        text = text.replace(value.expose(), "[REDACTED]");
    }
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if text.chars().count() > MAX_MESSAGE_CHARS {
        out.push('…');
    }
    out
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_overrides_parse() {
        let list = ResolveOverride::parse_list("API.github.com:443=127.0.0.1:8443, x:80=[::1]:81,")
            .unwrap_or_default();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].host, "api.github.com");
        assert_eq!(list[0].port, 443);
        assert_eq!(list[0].addr, SocketAddr::from(([127, 0, 0, 1], 8443)));
        assert_eq!(list[1].to_string(), "x:80=[::1]:81");
        for bad in [
            "a",
            "a:443",
            "a:443=b",
            "a:x=1.2.3.4:5",
            ":443=1.2.3.4:5",
            "a:0=1.2.3.4:5",
        ] {
            assert!(bad.parse::<ResolveOverride>().is_err(), "{bad}");
        }
    }

    #[test]
    fn messages_are_extracted_and_scrubbed() {
        let v = Secret::new("sk-secret123");
        let s = reqwest::StatusCode::UNAUTHORIZED;
        assert_eq!(
            provider_message(br#"{"message":"Bad credentials","status":"401"}"#, s, &v),
            "Bad credentials"
        );
        assert_eq!(
            provider_message(
                br#"{"error":{"message":"Incorrect API key provided: sk-secret123.","type":"x"}}"#,
                s,
                &v
            ),
            "Incorrect API key provided: [REDACTED]."
        );
        assert_eq!(
            provider_message(
                br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
                s,
                &v
            ),
            "invalid x-api-key"
        );
        assert_eq!(provider_message(b"", s, &v), "Unauthorized");
        assert_eq!(provider_message(b"oops\n\x1b[31m", s, &v), "oops  [31m");
        let long = "x".repeat(1000);
        assert_eq!(
            provider_message(long.as_bytes(), s, &v).chars().count(),
            301
        );
    }

    #[test]
    fn bad_pem_is_rejected() {
        let bad = UpstreamOverrides {
            resolve: Vec::new(),
            extra_roots_pem: b"not a certificate".to_vec(),
        };
        assert!(matches!(
            HttpValidator::new(&bad),
            Err(ValidationError::BadRootCertificate { .. })
        ));
        assert!(HttpValidator::new(&UpstreamOverrides::default()).is_ok());
    }
}
