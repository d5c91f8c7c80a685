//! The credential seam: what a grant turns into for one run.
//!
//! A [`CredentialProvider`] (implemented by `moat-creds`) turns grant names such as `github`
//! into [`InjectionRule`]s for the egress proxy and placeholder environment variables for the
//! container. The real values stay in [`Secret`]s and never reach the container.

use async_trait::async_trait;

use crate::host::HostPattern;
use crate::secret::Secret;

/// How the real value is written into the credential header.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InjectionFormat {
    /// `Bearer <value>`.
    Bearer,
    /// `Basic base64(<username>:<value>)`, as git smart HTTP expects.
    Basic {
        /// The user name half of the pair, e.g. `x-access-token`.
        username: String,
    },
    /// The value as is.
    Raw,
    /// `<prefix><value>`, e.g. `token ` for older APIs.
    Prefix(String),
}

impl InjectionFormat {
    /// Formats a header value around `value` (which may be the real value or a placeholder).
    pub fn render(&self, value: &str) -> String {
        match self {
            Self::Bearer => format!("Bearer {value}"),
            Self::Basic { username } => {
                format!(
                    "Basic {}",
                    base64_encode(format!("{username}:{value}").as_bytes())
                )
            }
            Self::Raw => value.to_owned(),
            Self::Prefix(prefix) => format!("{prefix}{value}"),
        }
    }
}

/// One credential for a set of hosts.
#[derive(Debug, Clone)]
pub struct InjectionRule {
    /// The grant this rule came from (`github`, `anthropic`, a custom provider name, …).
    pub grant: String,
    /// Hosts that receive the credential.
    pub hosts: Vec<HostPattern>,
    /// Header name, lower-case (`authorization`, `x-api-key`).
    pub header: String,
    /// How the value is formatted in the header.
    pub format: InjectionFormat,
    /// The real value.
    pub value: Secret,
    /// The placeholder the container sees instead of the real value.
    pub placeholder: String,
}

/// Everything the grants of one run resolve to.
#[derive(Debug, Clone, Default)]
pub struct ResolvedGrants {
    /// Rules for the egress proxy.
    pub rules: Vec<InjectionRule>,
    /// Environment variables for the container (placeholders only), in a stable order.
    pub env: Vec<(String, String)>,
}

/// Why grants could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The provider is known but nothing is stored for it.
    #[error("no credential stored for grant `{grant}`; run `moat grant {grant}` first")]
    Missing {
        /// The grant name.
        grant: String,
    },
    /// No provider of that name exists.
    #[error("unknown grant provider `{name}`; known providers: {}", known.join(", "))]
    UnknownProvider {
        /// The name asked for.
        name: String,
        /// The providers that exist.
        known: Vec<String>,
    },
    /// The store could not be read or decrypted.
    #[error("cannot read the credential for grant `{grant}`")]
    Store {
        /// The grant name.
        grant: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Resolves grant names to injection rules and placeholder environment.
#[async_trait]
pub trait CredentialProvider: Send + Sync {
    /// Resolves every grant in `grants`, or fails on the first one that cannot be resolved.
    async fn resolve(&self, grants: &[String]) -> Result<ResolvedGrants, CredentialError>;
}

/// Standard base64 with padding (RFC 4648 §4), as HTTP Basic authentication uses it.
pub fn base64_encode(input: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_rfc4648_vectors() {
        // RFC 4648 §10 test vectors.
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), want);
        }
    }

    #[test]
    fn formats() {
        assert_eq!(InjectionFormat::Bearer.render("t"), "Bearer t");
        assert_eq!(
            InjectionFormat::Basic {
                username: "x-access-token".into()
            }
            .render("t"),
            format!("Basic {}", base64_encode(b"x-access-token:t"))
        );
        assert_eq!(
            InjectionFormat::Prefix("token ".into()).render("t"),
            "token t"
        );
    }
}
