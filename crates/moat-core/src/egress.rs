//! Network policy and the records of proxied requests.
//!
//! These types are shared by the orchestrator, which builds a policy from moat.yaml and the
//! command line, and by any egress implementation (the `moat-proxy` crate), which enforces it
//! and reports one [`NetworkRecord`] per request through a [`NetworkEventSink`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::DateTime;
use chrono::Utc;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::Serialize;

use crate::host::HostPattern;

/// How a run's container may reach the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Per-run bridge network; proxy variables are set and direct egress is allowed.
    #[default]
    Permissive,
    /// Per-run internal network; the run's proxy is the only reachable address and it allows
    /// only listed hosts plus the hosts of granted credentials.
    Strict,
    /// No network at all.
    None,
}

impl fmt::Display for PolicyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Permissive => "permissive",
            Self::Strict => "strict",
            Self::None => "none",
        })
    }
}

impl FromStr for PolicyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "permissive" => Ok(Self::Permissive),
            "strict" => Ok(Self::Strict),
            "none" => Ok(Self::None),
            other => Err(format!(
                "unknown network policy `{other}`; use `permissive`, `strict` or `none`"
            )),
        }
    }
}

/// Whether a path rule allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Let matching requests through.
    Allow,
    /// Refuse matching requests.
    Deny,
}

/// One `allow|deny METHOD /path/glob` rule for a host.
///
/// `METHOD` is an HTTP method or `*`. In the glob, `*` matches within one path segment and
/// `**` matches across segments; a query string is ignored when matching.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathRule {
    /// Allow or deny.
    pub action: RuleAction,
    /// Upper-case method, or `None` for any method.
    pub method: Option<String>,
    /// The path glob, always starting with `/`.
    pub path: String,
}

/// Why a path rule could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid rule `{rule}`: {problem}; write rules as `allow GET /repos/**` or `deny * /admin/*`"
)]
pub struct PathRuleError {
    /// The rule as written.
    pub rule: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl PathRule {
    /// Parses `allow GET /path/glob`.
    pub fn parse(rule: &str) -> Result<Self, PathRuleError> {
        let err = |problem| PathRuleError {
            rule: rule.to_owned(),
            problem,
        };
        let mut parts = rule.split_whitespace();
        let action = match parts.next() {
            Some(a) if a.eq_ignore_ascii_case("allow") => RuleAction::Allow,
            Some(a) if a.eq_ignore_ascii_case("deny") => RuleAction::Deny,
            _ => return Err(err("it must start with `allow` or `deny`")),
        };
        let method = match parts.next() {
            Some("*") => None,
            Some(m) if !m.is_empty() && m.chars().all(|c| c.is_ascii_alphabetic()) => {
                Some(m.to_ascii_uppercase())
            }
            Some(_) => return Err(err("the method must be a word such as GET, or `*`")),
            None => return Err(err("a method is missing")),
        };
        let path = match parts.next() {
            Some(p) if p.starts_with('/') => p.to_owned(),
            Some(_) => return Err(err("the path must start with `/`")),
            None => return Err(err("a path is missing")),
        };
        if parts.next().is_some() {
            return Err(err("it has more than three words"));
        }
        Ok(Self {
            action,
            method,
            path,
        })
    }

    /// Whether the rule applies to `method` and `path` (query string ignored).
    pub fn matches(&self, method: &str, path: &str) -> bool {
        if let Some(m) = &self.method
            && !m.eq_ignore_ascii_case(method)
        {
            return false;
        }
        let path = path.split(['?', '#']).next().unwrap_or(path);
        glob_match(self.path.as_bytes(), path.as_bytes())
    }
}

impl fmt::Display for PathRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            RuleAction::Allow => "allow",
            RuleAction::Deny => "deny",
        };
        let method = self.method.as_deref().unwrap_or("*");
        write!(f, "{action} {method} {}", self.path)
    }
}

/// Glob match where `*` stops at `/` and `**` does not. Iterative, so hostile input cannot
/// blow the stack.
fn glob_match(pat: &[u8], text: &[u8]) -> bool {
    // Memoised dynamic programming over (pattern index, text index); bounded by the product of
    // the lengths, which callers bound by header-size limits.
    let (n, m) = (pat.len(), text.len());
    let mut reach = vec![false; m + 1];
    reach[0] = true;
    let mut i = 0;
    while i < n {
        let mut next = vec![false; m + 1];
        if pat[i] == b'*' {
            let double = pat.get(i + 1) == Some(&b'*');
            // A `*` can absorb zero or more characters (not `/` unless doubled).
            let mut carry = false;
            for j in 0..=m {
                carry = reach[j] || (carry && j > 0 && (double || text[j - 1] != b'/'));
                next[j] = carry;
            }
            i += if double { 2 } else { 1 };
        } else {
            for j in 1..=m {
                next[j] = reach[j - 1] && pat[i] == text[j - 1];
            }
            i += 1;
        }
        reach = next;
    }
    reach[m]
}

/// Rules for one host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRules {
    /// Which hosts these rules apply to.
    pub pattern: HostPattern,
    /// Method and path rules; empty means every request to the host is allowed.
    pub rules: Vec<PathRule>,
}

impl HostRules {
    /// Rules allowing every request to `pattern`.
    pub fn any(pattern: HostPattern) -> Self {
        Self {
            pattern,
            rules: Vec::new(),
        }
    }
}

/// The effective network policy of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Permissive, strict or none.
    pub mode: PolicyMode,
    /// Hosts (with optional per-path rules) the run may reach. Under `strict` these are the only
    /// reachable hosts; under `permissive` their path rules still apply.
    pub allow: Vec<HostRules>,
}

/// The outcome of a policy check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The request may proceed.
    Allow,
    /// The request is refused.
    Deny(DenyReason),
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DenyReason {
    /// Strict policy and the host is not listed.
    HostNotAllowed {
        /// The host that was asked for.
        host: String,
        /// The port that was asked for.
        port: u16,
    },
    /// A path rule denied the request, or no allow rule matched it.
    PathNotAllowed {
        /// The host.
        host: String,
        /// The method.
        method: String,
        /// The path.
        path: String,
        /// The rule that denied it, if one matched.
        rule: Option<String>,
    },
}

impl DenyReason {
    /// A short machine-readable reason, used in `X-Moat-Blocked` and network records.
    pub fn code(&self) -> &'static str {
        match self {
            Self::HostNotAllowed { .. } => "host-not-allowed",
            Self::PathNotAllowed { .. } => "path-not-allowed",
        }
    }

    /// The moat.yaml entry that would allow the request.
    pub fn suggestion(&self) -> String {
        match self {
            Self::HostNotAllowed { host, port } if *port == 80 || *port == 443 => {
                format!("network:\n  allow:\n    - \"{host}\"")
            }
            Self::HostNotAllowed { host, port } => {
                format!("network:\n  allow:\n    - \"{host}:{port}\"")
            }
            Self::PathNotAllowed {
                host, method, path, ..
            } => format!(
                "network:\n  allow:\n    - \"{host}\":\n        - \"allow {method} {path}\""
            ),
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HostNotAllowed { host, port } => {
                write!(f, "{host}:{port} is not in the run's network allow list")
            }
            Self::PathNotAllowed {
                host,
                method,
                path,
                rule: Some(rule),
            } => write!(f, "{method} {host}{path} is denied by rule `{rule}`"),
            Self::PathNotAllowed {
                host, method, path, ..
            } => write!(f, "{method} {host}{path} matches no allow rule for {host}"),
        }
    }
}

impl EgressPolicy {
    /// Decides whether a connection to `host:port` may be opened at all (the CONNECT check).
    pub fn decide_host(&self, host: &str, port: u16) -> Decision {
        match self.mode {
            PolicyMode::Permissive => Decision::Allow,
            PolicyMode::Strict | PolicyMode::None => {
                if self.allow.iter().any(|r| r.pattern.matches(host, port)) {
                    Decision::Allow
                } else {
                    Decision::Deny(DenyReason::HostNotAllowed {
                        host: host.to_owned(),
                        port,
                    })
                }
            }
        }
    }

    /// Decides a single request: the host check, then the first matching path rule of the
    /// first host entry that matches. When no rule matches, the request is allowed unless the
    /// host's list contains an `allow` rule (then the list is an allow list).
    pub fn decide_request(&self, host: &str, port: u16, method: &str, path: &str) -> Decision {
        if let Decision::Deny(reason) = self.decide_host(host, port) {
            return Decision::Deny(reason);
        }
        let Some(entry) = self
            .allow
            .iter()
            .find(|r| r.pattern.matches(host, port) && !r.rules.is_empty())
        else {
            return Decision::Allow;
        };
        for rule in &entry.rules {
            if rule.matches(method, path) {
                return match rule.action {
                    RuleAction::Allow => Decision::Allow,
                    RuleAction::Deny => Decision::Deny(DenyReason::PathNotAllowed {
                        host: host.to_owned(),
                        method: method.to_owned(),
                        path: path.to_owned(),
                        rule: Some(rule.to_string()),
                    }),
                };
            }
        }
        if entry.rules.iter().any(|r| r.action == RuleAction::Allow) {
            Decision::Deny(DenyReason::PathNotAllowed {
                host: host.to_owned(),
                method: method.to_owned(),
                path: path.to_owned(),
                rule: None,
            })
        } else {
            Decision::Allow
        }
    }
}

/// Whether a proxied request was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordDecision {
    /// Forwarded upstream.
    Allowed,
    /// Refused by policy, authentication or the destination guard.
    Denied,
}

/// One proxied request, as written to `network.jsonl`.
///
/// Header values that carry credentials, cookies or proxy authentication are stored as
/// `[REDACTED]` by the producer; consumers can rely on that.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// When the request arrived at the proxy.
    pub ts: DateTime<Utc>,
    /// Unique request ID within the run.
    pub id: String,
    /// HTTP method (`CONNECT` for refused tunnels).
    pub method: String,
    /// Full URL, without userinfo.
    pub url: String,
    /// Target host.
    pub host: String,
    /// Status returned to the client; `None` when the connection failed before a response.
    pub status: Option<u16>,
    /// Time from request to the end of the response body, in milliseconds.
    pub duration_ms: f64,
    /// Request body bytes sent upstream.
    pub req_bytes: u64,
    /// Response body bytes returned to the client.
    pub resp_bytes: u64,
    /// The grant whose credential was injected, if any.
    pub grant: Option<String>,
    /// Allowed or denied.
    pub decision: RecordDecision,
    /// Why it was denied or failed, if it was.
    pub reason: Option<String>,
    /// Request headers (redacted).
    pub req_headers: BTreeMap<String, String>,
    /// Response headers (redacted).
    pub resp_headers: BTreeMap<String, String>,
}

/// Receives request records as they happen. Implementations must not block for long: the proxy
/// calls this on its request path.
pub trait NetworkEventSink: Send + Sync {
    /// Records one request.
    fn record(&self, record: NetworkRecord);
}

/// Header names whose values are always redacted in records.
pub const REDACTED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "private-token",
];

/// Environment variables that belong to moat in a proxied run (proxy, CA trust, Node
/// preload): a run's own environment cannot set them.
pub const RESERVED_ENV: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "NODE_EXTRA_CA_CERTS",
];

/// The text that replaces redacted header values.
pub const REDACTED: &str = "[REDACTED]";

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(host: &str, rules: &[&str]) -> HostRules {
        HostRules {
            pattern: HostPattern::parse(host).unwrap_or_else(|e| panic!("{e}")),
            rules: rules
                .iter()
                .map(|r| PathRule::parse(r).unwrap_or_else(|e| panic!("{e}")))
                .collect(),
        }
    }

    #[test]
    fn glob_semantics() {
        assert!(glob_match(b"/repos/*", b"/repos/x"));
        assert!(!glob_match(b"/repos/*", b"/repos/x/y"));
        assert!(glob_match(b"/repos/**", b"/repos/x/y"));
        assert!(glob_match(b"/*/issues", b"/a/issues"));
        assert!(!glob_match(b"/a", b"/ab"));
        assert!(glob_match(b"/**", b"/"));
    }

    #[test]
    fn strict_allows_only_listed_hosts() {
        let policy = EgressPolicy {
            mode: PolicyMode::Strict,
            allow: vec![rules("api.github.com", &[])],
        };
        assert_eq!(policy.decide_host("api.github.com", 443), Decision::Allow);
        assert!(matches!(
            policy.decide_host("example.com", 443),
            Decision::Deny(DenyReason::HostNotAllowed { .. })
        ));
        assert!(matches!(
            policy.decide_host("api.github.com", 22),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn path_rules_first_match_wins() {
        let policy = EgressPolicy {
            mode: PolicyMode::Permissive,
            allow: vec![rules(
                "api.github.com",
                &["deny DELETE /**", "allow GET /repos/**"],
            )],
        };
        assert_eq!(
            policy.decide_request("api.github.com", 443, "GET", "/repos/a/b?x=1"),
            Decision::Allow
        );
        assert!(matches!(
            policy.decide_request("api.github.com", 443, "DELETE", "/repos/a"),
            Decision::Deny(DenyReason::PathNotAllowed { rule: Some(_), .. })
        ));
        // An allow list: anything unmatched is denied.
        assert!(matches!(
            policy.decide_request("api.github.com", 443, "POST", "/user"),
            Decision::Deny(DenyReason::PathNotAllowed { rule: None, .. })
        ));
        // Other hosts are unaffected under permissive policy.
        assert_eq!(
            policy.decide_request("example.com", 443, "POST", "/"),
            Decision::Allow
        );
    }

    #[test]
    fn rule_parsing_errors_say_what_is_wrong() {
        assert!(PathRule::parse("permit GET /").is_err());
        assert!(PathRule::parse("allow GET repos").is_err());
        assert!(PathRule::parse("allow G3T /").is_err());
        assert!(PathRule::parse("allow GET / extra").is_err());
        let r = PathRule::parse("ALLOW get /x").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.to_string(), "allow GET /x");
    }
}

/// An allow-list entry as stored with a run: a host pattern and its rules, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowSpec {
    /// Host pattern.
    pub host: String,
    /// `allow|deny METHOD /path` rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
}

impl AllowSpec {
    /// From parsed rules.
    pub fn from_rules(rules: &HostRules) -> Self {
        Self {
            host: rules.pattern.to_string(),
            rules: rules.rules.iter().map(ToString::to_string).collect(),
        }
    }

    /// Parses back into rules.
    pub fn to_rules(&self) -> Result<HostRules, String> {
        let pattern = HostPattern::parse(&self.host).map_err(|e| e.to_string())?;
        let rules = self
            .rules
            .iter()
            .map(|r| PathRule::parse(r).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HostRules { pattern, rules })
    }
}

/// What an egress implementation needs to serve one run.
pub struct EgressRequest {
    /// Address to listen on (the run network's gateway); the port is chosen by the egress.
    pub bind: std::net::IpAddr,
    /// The run's policy.
    pub policy: EgressPolicy,
    /// Credentials to inject.
    pub rules: Vec<crate::creds::InjectionRule>,
    /// Where request records go.
    pub sink: std::sync::Arc<dyn NetworkEventSink>,
    /// Raw TCP relays to open, one per destination (`host`, `port`): how SSH to granted hosts
    /// leaves a strict run. Each listens on `bind` and forwards to its destination.
    pub tunnels: Vec<(String, u16)>,
}

impl fmt::Debug for EgressRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressRequest")
            .field("bind", &self.bind)
            .field("policy", &self.policy)
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// A running egress for one run.
pub struct EgressHandle {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// `http://moat:<token>@addr` for the container's proxy variables.
    pub proxy_url: crate::Secret,
    /// PEM of the CA the container must trust (public part only).
    pub ca_pem: String,
    /// Where each requested tunnel listens: (`host`, `port`, listening address).
    pub tunnels: Vec<(String, u16, std::net::SocketAddr)>,
    /// Stops it.
    pub stop: Box<dyn EgressStop>,
}

impl fmt::Debug for EgressHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Stops a running egress.
#[async_trait::async_trait]
pub trait EgressStop: Send + Sync {
    /// Stops accepting, lets in-flight requests finish briefly, and releases the port.
    async fn shutdown(self: Box<Self>);
}

/// Why an egress could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the run's egress proxy")]
pub struct EgressError {
    /// The underlying error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Starts a run's egress proxy (implemented by `moat-proxy` in the CLI).
#[async_trait::async_trait]
pub trait Egress: Send + Sync {
    /// Starts serving one run.
    async fn start(&self, request: EgressRequest) -> Result<EgressHandle, EgressError>;
}
