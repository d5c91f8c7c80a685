//! Host patterns used by network policy and credential grants.
//!
//! A pattern is an exact host (`api.github.com`, compared case-insensitively), or a wildcard
//! `*.suffix` that matches any depth of subdomain but never the apex itself, optionally
//! followed by `:port`. Without a port a pattern matches ports 80 and 443.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use serde::Serialize;

/// A parsed host pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    host: HostMatch,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HostMatch {
    Exact(String),
    /// Stored with the leading dot: `*.example.com` keeps `.example.com`.
    Suffix(String),
}

/// Why a host pattern could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostPatternError {
    /// The pattern was empty.
    #[error("host pattern is empty; write a host such as `api.github.com` or `*.github.com`")]
    Empty,
    /// The port part was not a number from 1 to 65535.
    #[error("host pattern `{pattern}` has an invalid port; use a number from 1 to 65535")]
    BadPort {
        /// The whole pattern.
        pattern: String,
    },
    /// A `*` appeared anywhere but as a whole leading label.
    #[error(
        "host pattern `{pattern}` uses `*` wrongly; only a leading `*.` is allowed, as in `*.example.com`"
    )]
    BadWildcard {
        /// The whole pattern.
        pattern: String,
    },
    /// The host contained characters that never appear in a host name.
    #[error(
        "host pattern `{pattern}` contains invalid characters; use letters, digits, `-` and `.`"
    )]
    BadHost {
        /// The whole pattern.
        pattern: String,
    },
}

impl HostPattern {
    /// Parses a pattern such as `api.github.com`, `*.github.com` or `example.com:8443`.
    pub fn parse(pattern: &str) -> Result<Self, HostPatternError> {
        let trimmed = pattern.trim();
        if trimmed.is_empty() {
            return Err(HostPatternError::Empty);
        }
        let (host, port) = split_host_port(trimmed).ok_or_else(|| HostPatternError::BadPort {
            pattern: pattern.to_owned(),
        })?;
        let host = host.to_ascii_lowercase();
        if host.is_empty() {
            return Err(HostPatternError::Empty);
        }
        let host_match = if let Some(rest) = host.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') {
                return Err(HostPatternError::BadWildcard {
                    pattern: pattern.to_owned(),
                });
            }
            check_host_chars(rest, pattern)?;
            HostMatch::Suffix(format!(".{rest}"))
        } else {
            if host.contains('*') {
                return Err(HostPatternError::BadWildcard {
                    pattern: pattern.to_owned(),
                });
            }
            check_host_chars(&host, pattern)?;
            HostMatch::Exact(host)
        };
        Ok(Self {
            host: host_match,
            port,
        })
    }

    /// Whether `host:port` is matched. `host` is compared case-insensitively; a trailing dot
    /// (fully-qualified form) is ignored.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let port_ok = match self.port {
            Some(p) => p == port,
            None => port == 80 || port == 443,
        };
        port_ok && self.matches_host(host)
    }

    /// Whether the host part matches, whatever the port.
    pub fn matches_host(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        match &self.host {
            HostMatch::Exact(h) => h.eq_ignore_ascii_case(host),
            HostMatch::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host
                        .get(host.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
            }
        }
    }

    /// The explicit port, if the pattern has one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Whether this is a `*.suffix` pattern.
    pub fn is_wildcard(&self) -> bool {
        matches!(self.host, HostMatch::Suffix(_))
    }
}

fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    // Bracketed IPv6 literal, e.g. `[::1]:8080`.
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = rest.get(..end)?;
        let after = rest.get(end + 1..)?;
        return match after.strip_prefix(':') {
            Some(p) => parse_port(p).map(|p| (host, Some(p))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => parse_port(p).map(|p| (h, Some(p))),
        Some(_) => Some((s, None)), // bare IPv6 literal
        None => Some((s, None)),
    }
}

fn parse_port(p: &str) -> Option<u16> {
    p.parse::<u16>().ok().filter(|p| *p != 0)
}

fn check_host_chars(host: &str, pattern: &str) -> Result<(), HostPatternError> {
    let ok = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'));
    if ok && !host.starts_with('.') && !host.contains("..") {
        Ok(())
    } else {
        Err(HostPatternError::BadHost {
            pattern: pattern.to_owned(),
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostMatch::Exact(h) if h.contains(':') => write!(f, "[{h}]")?,
            HostMatch::Exact(h) => f.write_str(h)?,
            HostMatch::Suffix(s) => write!(f, "*{s}")?,
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

impl FromStr for HostPattern {
    type Err = HostPatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for HostPattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn exact_is_case_insensitive_and_defaults_to_web_ports() {
        let pat = p("API.GitHub.com");
        assert!(pat.matches("api.github.com", 443));
        assert!(pat.matches("api.GITHUB.com.", 80));
        assert!(!pat.matches("api.github.com", 8443));
        assert!(!pat.matches("xapi.github.com", 443));
    }

    #[test]
    fn wildcard_matches_any_depth_but_not_apex() {
        let pat = p("*.github.com");
        assert!(pat.matches("api.github.com", 443));
        assert!(pat.matches("a.b.github.com", 443));
        assert!(!pat.matches("github.com", 443));
        assert!(!pat.matches("evilgithub.com", 443));
    }

    #[test]
    fn explicit_port() {
        let pat = p("example.com:8443");
        assert!(pat.matches("example.com", 8443));
        assert!(!pat.matches("example.com", 443));
        assert_eq!(pat.to_string(), "example.com:8443");
        assert!(p("[::1]:22").matches("::1", 22));
    }

    #[test]
    fn rejects_malformed_patterns() {
        for bad in [
            "",
            "a.*.com",
            "*",
            "*.",
            "host:0",
            "host:99999",
            "ho st",
            "..com",
            "x:y",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad} should fail");
        }
    }
}
