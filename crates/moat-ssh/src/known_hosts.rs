//! `known_hosts` parsing and lookup, as OpenSSH's `sshd(8)` manual describes the format.
//!
//! Supported: plain host patterns with `*`, `?` and `!` negation, comma-separated lists,
//! `[host]:port` names, hashed names (`|1|base64(salt)|base64(HMAC-SHA1(salt, name))`),
//! and the `@revoked` marker (a revoked key is removed from every lookup result, even when
//! another line lists it), and `@cert-authority` lines (CA keys that vouch for host
//! certificates). Revocation is global, stricter than OpenSSH: a key listed as `@revoked`
//! for any host is revoked for all. Lines that do not parse are skipped, as OpenSSH does,
//! and reported.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::Hmac;
use hmac::Mac;
use sha1::Sha1;

use crate::key::PublicKeyBlob;

/// An SSH destination: a host name or address and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SshHost {
    host: String,
    port: u16,
}

/// Why a destination could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SshHostError {
    /// The host part is empty or contains characters that never appear in a host name.
    #[error(
        "`{text}` is not a valid ssh host; write a name such as `github.com` or `[git.example.com]:2222`"
    )]
    BadHost {
        /// The text given.
        text: String,
    },
    /// The port is not a number from 1 to 65535.
    #[error("`{text}` has an invalid port; use a number from 1 to 65535, as in `[host]:2222`")]
    BadPort {
        /// The text given.
        text: String,
    },
}

impl SshHost {
    /// The default SSH port.
    pub const DEFAULT_PORT: u16 = 22;

    /// A destination from its parts; the host is lowercased.
    pub fn new(host: &str, port: u16) -> Result<Self, SshHostError> {
        let valid = !host.is_empty()
            && port != 0
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        if !valid {
            return Err(SshHostError::BadHost {
                text: host.to_owned(),
            });
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The name `known_hosts` files use: `host` on port 22, `[host]:port` otherwise.
    pub fn known_hosts_name(&self) -> String {
        if self.port == Self::DEFAULT_PORT {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for SshHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.known_hosts_name())
    }
}

impl FromStr for SshHost {
    type Err = SshHostError;

    /// Parses `host`, `host:port` (names only) or `[host]:port` (any host, including IPv6).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad_port = || SshHostError::BadPort {
            text: text.to_owned(),
        };
        let bad_host = || SshHostError::BadHost {
            text: text.to_owned(),
        };
        if let Some(rest) = text.strip_prefix('[') {
            let (host, port) = rest.split_once("]:").ok_or_else(bad_host)?;
            let port = port.parse::<u16>().map_err(|_| bad_port())?;
            return Self::new(host, port)
                .map_err(|_| if port == 0 { bad_port() } else { bad_host() });
        }
        let (host, port) = match text.split_once(':') {
            // Two or more colons: a bare IPv6 address on the default port.
            Some((_, rest)) if rest.contains(':') => (text, Self::DEFAULT_PORT),
            Some((host, port)) => (host, port.parse::<u16>().map_err(|_| bad_port())?),
            None => (text, Self::DEFAULT_PORT),
        };
        Self::new(host, port).map_err(|_| if port == 0 { bad_port() } else { bad_host() })
    }
}

impl serde::Serialize for SshHost {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SshHost {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A parsed `known_hosts` file.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    entries: Vec<Entry>,
    skipped: Vec<SkippedLine>,
}

/// A line that was not understood and therefore ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLine {
    /// 1-based line number.
    pub line: usize,
    /// Why it was skipped.
    pub reason: &'static str,
}

/// The host keys found for one destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostKeyLookup {
    /// Usable host keys, in file order, without duplicates.
    pub keys: Vec<PublicKeyBlob>,
    /// Keys of `@cert-authority` lines that match the host, without revoked ones.
    pub cert_authorities: Vec<PublicKeyBlob>,
    /// Keys and CA keys that matched the host but are revoked and were left out.
    pub revoked: usize,
    /// Every `@revoked` key in the file, to check host certificates' keys against.
    pub revoked_keys: Vec<PublicKeyBlob>,
}

impl KnownHosts {
    /// Parses the text of a `known_hosts` file. Never fails: lines that do not parse are
    /// skipped and listed in [`KnownHosts::skipped`].
    pub fn parse(text: &str) -> Self {
        let mut known = Self::default();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            match Entry::parse(trimmed) {
                Ok(entry) => known.entries.push(entry),
                Err(reason) => known.skipped.push(SkippedLine { line, reason }),
            }
        }
        known
    }

    /// Lines that were ignored.
    pub fn skipped(&self) -> &[SkippedLine] {
        &self.skipped
    }

    /// The host keys `known_hosts` records for `host`.
    pub fn lookup(&self, host: &SshHost) -> HostKeyLookup {
        let name = host.known_hosts_name();
        let matching = || self.entries.iter().filter(|e| e.hosts.matches(&name));
        let mut result = HostKeyLookup::default();
        for entry in self.entries.iter().filter(|e| e.marker == Marker::Revoked) {
            push_unique(&mut result.revoked_keys, &entry.key);
        }
        for entry in matching() {
            let list = match entry.marker {
                Marker::Revoked => continue,
                _ if result.revoked_keys.contains(&entry.key) => {
                    result.revoked += 1;
                    continue;
                }
                Marker::CertAuthority => &mut result.cert_authorities,
                Marker::None => &mut result.keys,
            };
            push_unique(list, &entry.key);
        }
        result
    }
}

/// Renders `known_hosts` lines that pin `keys` and trust `cert_authorities` for `host`,
/// e.g. for the container's `~/.ssh/known_hosts`.
pub fn render_known_hosts_lines(
    host: &SshHost,
    keys: &[PublicKeyBlob],
    cert_authorities: &[PublicKeyBlob],
) -> String {
    let name = host.known_hosts_name();
    let plain = keys
        .iter()
        .map(|key| format!("{name} {}\n", key.to_openssh()));
    let cas = cert_authorities
        .iter()
        .map(|key| format!("@cert-authority {name} {}\n", key.to_openssh()));
    plain.chain(cas).collect()
}

fn push_unique(list: &mut Vec<PublicKeyBlob>, key: &PublicKeyBlob) {
    if !list.contains(key) {
        list.push(key.clone());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    None,
    CertAuthority,
    Revoked,
}

#[derive(Debug, Clone)]
struct Entry {
    marker: Marker,
    hosts: Hosts,
    key: PublicKeyBlob,
}

#[derive(Debug, Clone)]
enum Hosts {
    Patterns(String),
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
}

impl Entry {
    fn parse(line: &str) -> Result<Self, &'static str> {
        let mut fields = line.split_ascii_whitespace();
        let mut first = fields.next().ok_or("empty line")?;
        let marker = match first {
            "@cert-authority" => Marker::CertAuthority,
            "@revoked" => Marker::Revoked,
            other if other.starts_with('@') => return Err("unknown marker"),
            _ => Marker::None,
        };
        if marker != Marker::None {
            first = fields.next().ok_or("marker without host names")?;
        }
        let hosts = Hosts::parse(first)?;
        let algorithm = fields.next().ok_or("missing key type")?;
        let b64 = fields.next().ok_or("missing key")?;
        let key = PublicKeyBlob::from_openssh(&format!("{algorithm} {b64}"))
            .map_err(|_| "invalid public key")?;
        Ok(Self { marker, hosts, key })
    }
}

impl Hosts {
    fn parse(field: &str) -> Result<Self, &'static str> {
        let Some(hashed) = field.strip_prefix("|1|") else {
            return Ok(Self::Patterns(field.to_ascii_lowercase()));
        };
        let (salt, hash) = hashed.split_once('|').ok_or("malformed hashed host name")?;
        let salt = STANDARD
            .decode(salt)
            .map_err(|_| "malformed hashed host salt")?;
        let hash = STANDARD
            .decode(hash)
            .map_err(|_| "malformed hashed host hash")?;
        if hash.len() != 20 {
            return Err("hashed host name is not a sha1 hmac");
        }
        Ok(Self::Hashed { salt, hash })
    }

    /// `name` is lowercased, in `known_hosts` form (`host` or `[host]:port`).
    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Hashed { salt, hash } => {
                let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(name.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
            Self::Patterns(list) => {
                // OpenSSH match_hostname(): a matching negated pattern vetoes the line.
                let mut matched = false;
                for pattern in list.split(',') {
                    if let Some(negated) = pattern.strip_prefix('!') {
                        if wildcard_match(negated.as_bytes(), name.as_bytes()) {
                            return false;
                        }
                    } else if wildcard_match(pattern.as_bytes(), name.as_bytes()) {
                        matched = true;
                    }
                }
                matched
            }
        }
    }
}

/// Glob matching with `*` (any run) and `?` (one byte), iterative so hostile patterns cannot
/// exhaust the stack.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0_usize, 0_usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || Some(&c) == text.get(t) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH1IMXoHzQMUTl9zfSaG7XPX1XM7AJ4XOmdU+cx55xHW";

    fn host(s: &str) -> SshHost {
        s.parse().expect("host")
    }

    fn key() -> PublicKeyBlob {
        PublicKeyBlob::from_openssh(ED).expect("key")
    }

    #[test]
    fn parses_hosts_and_ports() {
        assert_eq!(
            host("GitHub.com"),
            SshHost::new("github.com", 22).expect("h")
        );
        assert_eq!(host("git.example.com:2222").port(), 2222);
        assert_eq!(
            host("[git.example.com]:2222").known_hosts_name(),
            "[git.example.com]:2222"
        );
        assert_eq!(host("[::1]:2200").host(), "::1");
        assert_eq!(host("::1").port(), 22);
        assert!("".parse::<SshHost>().is_err());
        assert!("a b".parse::<SshHost>().is_err());
        assert!(matches!(
            "h:0".parse::<SshHost>(),
            Err(SshHostError::BadPort { .. })
        ));
        assert!(matches!(
            "h:99999".parse::<SshHost>(),
            Err(SshHostError::BadPort { .. })
        ));
        assert_eq!(host("h:22").to_string(), "h");
    }

    #[test]
    fn plain_patterns_wildcards_and_negation() {
        let text = format!(
            "# comment\n\
             github.com,140.82.121.4 {ED}\n\
             *.example.com,!bad.example.com {ED}\n\
             [git.example.org]:2222 {ED}\n"
        );
        let kh = KnownHosts::parse(&text);
        assert!(kh.skipped().is_empty());
        assert_eq!(kh.lookup(&host("github.com")).keys, vec![key()]);
        assert_eq!(kh.lookup(&host("GITHUB.COM")).keys, vec![key()]);
        assert_eq!(kh.lookup(&host("a.example.com")).keys, vec![key()]);
        assert!(kh.lookup(&host("bad.example.com")).keys.is_empty());
        assert!(kh.lookup(&host("example.com")).keys.is_empty());
        assert!(kh.lookup(&host("github.com:2222")).keys.is_empty());
        assert_eq!(kh.lookup(&host("[git.example.org]:2222")).keys, vec![key()]);
        assert!(kh.lookup(&host("git.example.org")).keys.is_empty());
    }

    // Known answer from OpenSSH 9.2: `ssh-keygen -H -f known_hosts` turned the line
    // `github.com <key>` into the hashed line below.
    const HASHED_GITHUB: &str = "|1|rcSJGwjOOXDiXsMgyk/C7630cmI=|wEUk8EjkjdnV6WTIF+rICfUXfQ0=";

    #[test]
    fn hashed_names_match_by_hmac_sha1() {
        let kh = KnownHosts::parse(&format!("{HASHED_GITHUB} {ED}\n"));
        assert!(kh.skipped().is_empty());
        assert_eq!(kh.lookup(&host("github.com")).keys, vec![key()]);
        assert!(kh.lookup(&host("gitlab.com")).keys.is_empty());
    }

    #[test]
    fn revoked_keys_are_excluded_and_cert_authorities_counted() {
        let text = format!(
            "github.com {ED}\n\
             @revoked * {ED}\n\
             @cert-authority *.github.com {ED}\n"
        );
        let kh = KnownHosts::parse(&text);
        let found = kh.lookup(&host("github.com"));
        assert!(found.keys.is_empty());
        assert_eq!(found.revoked, 1);
        assert_eq!(found.revoked_keys, vec![key()]);
        // The CA key is the revoked key too, so it is left out.
        let sub = kh.lookup(&host("a.github.com"));
        assert!(sub.cert_authorities.is_empty());
        assert_eq!(sub.revoked, 1);
        let ca_only = KnownHosts::parse(&format!("@cert-authority *.github.com {ED}\n"));
        assert_eq!(
            ca_only.lookup(&host("a.github.com")).cert_authorities,
            vec![key()]
        );
        assert!(
            ca_only
                .lookup(&host("github.com"))
                .cert_authorities
                .is_empty()
        );
    }

    #[test]
    fn bad_lines_are_skipped_with_reasons() {
        let text = format!(
            "@weird host {ED}\n\
             hostonly\n\
             host ssh-ed25519 !!!\n\
             |1|bad {ED}\n\
             ok {ED}\n"
        );
        let kh = KnownHosts::parse(&text);
        let lines: Vec<usize> = kh.skipped().iter().map(|s| s.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 4]);
        assert_eq!(kh.lookup(&host("ok")).keys, vec![key()]);
    }

    #[test]
    fn wildcard_matching() {
        assert!(wildcard_match(b"*", b"anything"));
        assert!(wildcard_match(b"a*c", b"abbbc"));
        assert!(wildcard_match(b"a?c", b"abc"));
        assert!(!wildcard_match(b"a?c", b"ac"));
        assert!(wildcard_match(b"*.x.com", b"a.b.x.com"));
        assert!(!wildcard_match(b"*.x.com", b"x.com"));
        assert!(wildcard_match(b"", b""));
        assert!(!wildcard_match(b"", b"a"));
        // Pathological pattern completes quickly.
        let long = vec![b'a'; 4000];
        assert!(!wildcard_match(b"*a*a*a*a*a*a*a*b", &long));
    }

    #[test]
    fn renders_pinned_lines() {
        let lines = render_known_hosts_lines(&host("[h]:2222"), &[key()], &[key()]);
        assert_eq!(
            lines,
            format!("[h]:2222 {ED}\n@cert-authority [h]:2222 {ED}\n")
        );
        let reparsed = KnownHosts::parse(&lines).lookup(&host("h:2222"));
        assert_eq!(reparsed.keys, vec![key()]);
        assert_eq!(reparsed.cert_authorities, vec![key()]);
    }
}
