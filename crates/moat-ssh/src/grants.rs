//! SSH grants: which agent key may sign for which host, and that host's known host keys.
//!
//! Grants live in one JSON file (`$MOAT_HOME/credentials/ssh.json`; the caller passes the
//! path). The file holds only public material: key fingerprints and public keys. It is
//! rewritten atomically (temporary file, fsync, rename) with mode 0600.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::path::PathBuf;

use chrono::DateTime;
use chrono::Utc;
use nix::fcntl::Flock;
use nix::fcntl::FlockArg;

use crate::key::Fingerprint;
use crate::key::FingerprintError;
use crate::key::KeyError;
use crate::key::PublicKeyBlob;
use crate::known_hosts::KnownHosts;
use crate::known_hosts::SshHost;
use crate::known_hosts::SshHostError;
use crate::known_hosts::render_known_hosts_lines;
use crate::protocol::Identity;

/// The prefix of SSH grant names: `ssh:github.com`.
pub const GRANT_PREFIX: &str = "ssh:";

/// One grant: `key` may sign only for sessions bound to one of `host_keys`, or to a host
/// certificate for this host signed by one of `cert_authorities`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshGrant {
    /// The destination.
    pub host: SshHost,
    /// The agent key granted for it.
    pub key: GrantedKey,
    /// The destination's host keys, from `known_hosts` at grant time.
    pub host_keys: Vec<PublicKeyBlob>,
    /// CA keys trusted to certify the destination's host keys (`@cert-authority`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cert_authorities: Vec<PublicKeyBlob>,
    /// `@revoked` keys at grant time; a host certificate for one of them is not accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_keys: Vec<PublicKeyBlob>,
    /// When the grant was recorded.
    pub created_at: DateTime<Utc>,
}

/// The agent key of a grant (public part only).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantedKey {
    /// `SHA256:` fingerprint of the public key.
    pub fingerprint: Fingerprint,
    /// The public key.
    pub public_key: PublicKeyBlob,
    /// The agent's comment for the key, for display.
    #[serde(default)]
    pub comment: String,
}

impl SshGrant {
    /// The grant's name as runs refer to it: `ssh:<host>`.
    pub fn name(&self) -> String {
        grant_name(&self.host)
    }
}

/// The grant name for a destination: `ssh:<host>` (`ssh:[host]:port` off port 22).
pub fn grant_name(host: &SshHost) -> String {
    format!("{GRANT_PREFIX}{host}")
}

/// `known_hosts` lines pinning the host keys of `grants`, for the container's SSH client
/// (e.g. `/etc/ssh/ssh_known_hosts`), so it trusts exactly the keys the grants were made for.
pub fn known_hosts_for(grants: &[SshGrant]) -> String {
    grants
        .iter()
        .map(|g| render_known_hosts_lines(&g.host, &g.host_keys, &g.cert_authorities))
        .collect()
}

/// Parses a grant name `ssh:<host>` into its destination.
pub fn parse_grant_name(name: &str) -> Result<SshHost, GrantNameError> {
    let host = name
        .strip_prefix(GRANT_PREFIX)
        .ok_or_else(|| GrantNameError::NotSsh {
            name: name.to_owned(),
        })?;
    host.parse()
        .map_err(|source| GrantNameError::BadHost { source })
}

/// Why a grant name is not an SSH grant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantNameError {
    /// The name does not start with `ssh:`.
    #[error("`{name}` is not an ssh grant; ssh grants are named `ssh:<host>`")]
    NotSsh {
        /// The name given.
        name: String,
    },
    /// The host part is invalid.
    #[error(transparent)]
    BadHost {
        /// The underlying error.
        source: SshHostError,
    },
}

/// Which agent key to grant, as the user named it (`--key`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySelector {
    /// A `SHA256:` fingerprint as `ssh-add -l` prints it.
    Fingerprint(Fingerprint),
    /// A public key, e.g. the contents of `~/.ssh/id_ed25519.pub`.
    PublicKey(PublicKeyBlob),
}

/// Why `--key` could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeySelectorError {
    /// Looked like a fingerprint but was not one.
    #[error(transparent)]
    Fingerprint(#[from] FingerprintError),
    /// Looked like a public key but was not one.
    #[error(transparent)]
    PublicKey(#[from] KeyError),
}

impl KeySelector {
    /// Parses a fingerprint (`SHA256:…`) or OpenSSH public key text (a `.pub` file).
    pub fn parse(text: &str) -> Result<Self, KeySelectorError> {
        let text = text.trim();
        if text.starts_with("SHA256:") {
            Ok(Self::Fingerprint(text.parse()?))
        } else {
            Ok(Self::PublicKey(PublicKeyBlob::from_openssh(text)?))
        }
    }

    fn fingerprint(&self) -> Fingerprint {
        match self {
            Self::Fingerprint(fp) => fp.clone(),
            Self::PublicKey(key) => key.fingerprint(),
        }
    }
}

/// Why a grant could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantBuildError {
    /// The user's agent holds no keys.
    #[error("the ssh agent holds no keys; add one with `ssh-add` and try again")]
    NoAgentKeys,
    /// The selected key is not in the agent.
    #[error(
        "key {fingerprint} is not in the ssh agent; add it with `ssh-add` or pick one from `ssh-add -l`"
    )]
    KeyNotInAgent {
        /// The key asked for.
        fingerprint: Fingerprint,
    },
    /// The agent holds several keys and none was selected.
    #[error("the ssh agent holds {} keys ({}); choose one with `--key PATH|FINGERPRINT`", .fingerprints.len(), join(.fingerprints))]
    AmbiguousKey {
        /// The keys the agent holds.
        fingerprints: Vec<Fingerprint>,
    },
    /// `known_hosts` has no usable key for the host.
    #[error("no host key for `{host}` in known_hosts{}; connect once with `ssh {host}` to verify and record it, or pass `--known-hosts FILE`", revoked_note(*.revoked))]
    NoHostKeys {
        /// The destination.
        host: SshHost,
        /// Matching keys left out because they are revoked.
        revoked: usize,
    },
}

/// Builds a grant for `host` from the user's agent identities and `known_hosts`.
///
/// Without a selector the agent must hold exactly one key.
pub fn build_grant(
    host: SshHost,
    identities: &[Identity],
    selector: Option<&KeySelector>,
    known_hosts: &KnownHosts,
) -> Result<SshGrant, GrantBuildError> {
    let identity = match selector {
        Some(selector) => {
            let fingerprint = selector.fingerprint();
            identities
                .iter()
                .find(|id| id.key.fingerprint() == fingerprint)
                .ok_or(GrantBuildError::KeyNotInAgent { fingerprint })?
        }
        None => match identities {
            [] => return Err(GrantBuildError::NoAgentKeys),
            [only] => only,
            many => {
                return Err(GrantBuildError::AmbiguousKey {
                    fingerprints: many.iter().map(|id| id.key.fingerprint()).collect(),
                });
            }
        },
    };
    let lookup = known_hosts.lookup(&host);
    if lookup.keys.is_empty() && lookup.cert_authorities.is_empty() {
        return Err(GrantBuildError::NoHostKeys {
            host,
            revoked: lookup.revoked,
        });
    }
    Ok(SshGrant {
        host,
        key: GrantedKey {
            fingerprint: identity.key.fingerprint(),
            public_key: identity.key.clone(),
            comment: String::from_utf8_lossy(&identity.comment).into_owned(),
        },
        host_keys: lookup.keys,
        cert_authorities: lookup.cert_authorities,
        revoked_keys: lookup.revoked_keys,
        created_at: Utc::now(),
    })
}

/// The grant file.
#[derive(Debug, Clone)]
pub struct SshGrantStore {
    path: PathBuf,
}

/// Why the grant file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrantStoreError {
    /// Reading failed.
    #[error("cannot read ssh grants from {}: {source}; check the file's permissions", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid grant JSON.
    #[error("ssh grant file {} is corrupted ({source}); fix it or remove it and grant again", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The file was written by a newer moat.
    #[error("ssh grant file {} has version {version}, this moat understands version {FILE_VERSION}; upgrade moat", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// Writing failed.
    #[error("cannot write ssh grants to {}: {source}; check that the directory exists and is writable", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The lock file could not be created or locked.
    #[error("cannot lock ssh grants at {}: {source}; check that the directory exists and is writable", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A run asked for a grant that does not exist.
    #[error("no ssh grant for `{host}`; run `moat grant ssh --host {host}` first")]
    Missing {
        /// The destination asked for.
        host: SshHost,
    },
}

const FILE_VERSION: u32 = 1;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantFile {
    version: u32,
    grants: Vec<SshGrant>,
}

impl SshGrantStore {
    /// A store backed by `path` (usually `$MOAT_HOME/credentials/ssh.json`). Nothing is read
    /// until asked.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All grants, sorted by host. A missing file means no grants.
    pub fn list(&self) -> Result<Vec<SshGrant>, GrantStoreError> {
        Ok(self.read()?.grants)
    }

    /// The grant for `host`, if any.
    pub fn get(&self, host: &SshHost) -> Result<Option<SshGrant>, GrantStoreError> {
        Ok(self.read()?.grants.into_iter().find(|g| &g.host == host))
    }

    /// Records `grant`, replacing any grant for the same host; returns the replaced one.
    pub fn upsert(&self, grant: SshGrant) -> Result<Option<SshGrant>, GrantStoreError> {
        let _lock = self.lock()?;
        let mut file = self.read()?;
        let replaced = match file.grants.iter_mut().find(|g| g.host == grant.host) {
            Some(slot) => Some(std::mem::replace(slot, grant)),
            None => {
                file.grants.push(grant);
                None
            }
        };
        self.write(file)?;
        Ok(replaced)
    }

    /// Removes the grant for `host`; returns it, or `None` if there was none.
    pub fn remove(&self, host: &SshHost) -> Result<Option<SshGrant>, GrantStoreError> {
        let _lock = self.lock()?;
        let mut file = self.read()?;
        let Some(index) = file.grants.iter().position(|g| &g.host == host) else {
            return Ok(None);
        };
        let removed = file.grants.remove(index);
        self.write(file)?;
        Ok(Some(removed))
    }

    /// The grants a run asked for, in the order asked; fails on the first missing one.
    pub fn resolve(&self, hosts: &[SshHost]) -> Result<Vec<SshGrant>, GrantStoreError> {
        let grants = self.list()?;
        hosts
            .iter()
            .map(|host| {
                grants
                    .iter()
                    .find(|g| &g.host == host)
                    .cloned()
                    .ok_or_else(|| GrantStoreError::Missing { host: host.clone() })
            })
            .collect()
    }

    /// Serialises read-modify-write cycles between processes (two `moat grant ssh` at once)
    /// with an advisory lock on `<file>.lock`; readers need none because writes are atomic.
    fn lock(&self) -> Result<Flock<fs::File>, GrantStoreError> {
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let lock_err = |source| GrantStoreError::Lock {
            path: lock_path.clone(),
            source,
        };
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(lock_err)?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| lock_err(std::io::Error::from(errno)))
    }

    fn read(&self) -> Result<GrantFile, GrantStoreError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(GrantFile {
                    version: FILE_VERSION,
                    grants: Vec::new(),
                });
            }
            Err(source) => {
                return Err(GrantStoreError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        // Check the version first so a newer file gives a version error, not a schema error.
        #[derive(serde::Deserialize)]
        struct Version {
            version: u32,
        }
        let version: Version =
            serde_json::from_str(&text).map_err(|source| GrantStoreError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        if version.version != FILE_VERSION {
            return Err(GrantStoreError::UnsupportedVersion {
                path: self.path.clone(),
                version: version.version,
            });
        }
        serde_json::from_str(&text).map_err(|source| GrantStoreError::Corrupt {
            path: self.path.clone(),
            source,
        })
    }

    fn write(&self, mut file: GrantFile) -> Result<(), GrantStoreError> {
        file.version = FILE_VERSION;
        file.grants.sort_by(|a, b| a.host.cmp(&b.host));
        let write_err = |source| GrantStoreError::Write {
            path: self.path.clone(),
            source,
        };
        let mut json =
            serde_json::to_vec_pretty(&file).map_err(|e| write_err(std::io::Error::other(e)))?;
        json.push(b'\n');
        moat_core::store::write_atomic(&self.path, &json)
            .map_err(|e| write_err(std::io::Error::other(e)))
    }
}

fn join(fingerprints: &[Fingerprint]) -> String {
    fingerprints
        .iter()
        .map(Fingerprint::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn revoked_note(revoked: usize) -> String {
    if revoked == 0 {
        String::new()
    } else {
        format!(" ({revoked} matching keys are @revoked)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH1IMXoHzQMUTl9zfSaG7XPX1XM7AJ4XOmdU+cx55xHW";
    const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCpi/viFm2szPhBtFvvNni247r6hgxgx0P/3P7siGRXuSWQa7b/I2d4akXJo4O40uSQ0aUzVKgdnbYOwYoDBW3eBj6oUMna/BdWTg6pMJXIC7xZEusWRmd+O9y9s3oweWKeO/tykQaDNkLheNPntlTIIgb5MtelBD5o/1aDyhbZCGy54sdORA4aqjC0LjrPuvACWjEK23loJGWzPVCllurxFm7h3lHN4z4vuYxpNgJ/w6MxGcjNYLD0S2ijgpWAy8e1ZorYILQkD5jrUaMeN5WAS4JZ5tNypqB3N63qLYd9UovBt40AoZ9yKQxuleJUxzo2YaPsX9hPEvhcRjZYiQ4J";
    const RSA_FP: &str = "SHA256:4xWZvBCPyEEfxEqODRTk1ubQZoQejl1uT2+0apc5xI0";

    fn ids() -> Vec<Identity> {
        [ED, RSA]
            .iter()
            .map(|k| Identity {
                key: k.parse().expect("key"),
                comment: b"c".to_vec(),
            })
            .collect()
    }

    fn known() -> KnownHosts {
        KnownHosts::parse(&format!("github.com {ED}\n"))
    }

    fn host(s: &str) -> SshHost {
        s.parse().expect("host")
    }

    #[test]
    fn grant_names_round_trip() {
        assert_eq!(grant_name(&host("github.com")), "ssh:github.com");
        assert_eq!(grant_name(&host("h:2222")), "ssh:[h]:2222");
        assert_eq!(parse_grant_name("ssh:[h]:2222"), Ok(host("h:2222")));
        assert!(matches!(
            parse_grant_name("github"),
            Err(GrantNameError::NotSsh { .. })
        ));
    }

    #[test]
    fn build_selects_key_by_fingerprint_or_public_key() {
        let by_fp = KeySelector::parse(RSA_FP).expect("fp");
        let grant = build_grant(host("github.com"), &ids(), Some(&by_fp), &known()).expect("grant");
        assert_eq!(grant.key.fingerprint.as_str(), RSA_FP);
        assert_eq!(
            grant.host_keys,
            vec![ED.parse::<PublicKeyBlob>().expect("k")]
        );
        let by_pub = KeySelector::parse(&format!("{RSA} me@host\n")).expect("pub");
        let again =
            build_grant(host("github.com"), &ids(), Some(&by_pub), &known()).expect("grant");
        assert_eq!(again.key, grant.key);
    }

    #[test]
    fn build_errors_say_what_to_do() {
        let err = build_grant(host("github.com"), &ids(), None, &known()).expect_err("ambiguous");
        assert!(
            matches!(&err, GrantBuildError::AmbiguousKey { fingerprints } if fingerprints.len() == 2)
        );
        assert!(err.to_string().contains("--key"));
        let err = build_grant(host("github.com"), &[], None, &known()).expect_err("empty");
        assert_eq!(err, GrantBuildError::NoAgentKeys);
        let missing =
            KeySelector::parse("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").expect("fp");
        let err =
            build_grant(host("github.com"), &ids(), Some(&missing), &known()).expect_err("missing");
        assert!(matches!(err, GrantBuildError::KeyNotInAgent { .. }));
        let only = &ids()[..1];
        let err = build_grant(host("gitlab.com"), only, None, &known()).expect_err("no host keys");
        assert!(matches!(err, GrantBuildError::NoHostKeys { .. }));
        assert!(err.to_string().contains("--known-hosts"));
    }

    #[test]
    fn store_upsert_list_remove_resolve() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SshGrantStore::new(dir.path().join("ssh.json"));
        assert!(store.list().expect("empty").is_empty());
        let only = &ids()[..1];
        let grant = build_grant(host("github.com"), only, None, &known()).expect("grant");
        assert_eq!(store.upsert(grant.clone()).expect("add"), None);
        assert_eq!(
            store.upsert(grant.clone()).expect("replace"),
            Some(grant.clone())
        );
        assert_eq!(store.list().expect("list"), vec![grant.clone()]);
        assert_eq!(
            store.resolve(&[host("github.com")]).expect("resolve"),
            vec![grant.clone()]
        );
        assert!(matches!(
            store.resolve(&[host("gitlab.com")]),
            Err(GrantStoreError::Missing { .. })
        ));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(store.path()).expect("meta").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            store.remove(&host("github.com")).expect("remove"),
            Some(grant)
        );
        assert_eq!(
            store.remove(&host("github.com")).expect("remove again"),
            None
        );
        assert!(store.list().expect("list").is_empty());
    }

    #[test]
    fn concurrent_upserts_keep_every_grant() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ssh.json");
        let only = ids().into_iter().take(1).collect::<Vec<_>>();
        let known = KnownHosts::parse(&format!("* {ED}\n"));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let (path, only, known) = (path.clone(), only.clone(), known.clone());
                std::thread::spawn(move || {
                    let grant = build_grant(host(&format!("h{i}.test")), &only, None, &known)
                        .expect("grant");
                    SshGrantStore::new(path).upsert(grant).expect("upsert");
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(SshGrantStore::new(path).list().expect("list").len(), 8);
    }

    #[test]
    fn known_hosts_for_pins_every_grant() {
        let only = &ids()[..1];
        let known = KnownHosts::parse(&format!("github.com,[h]:2222 {ED}\n"));
        let a = build_grant(host("github.com"), only, None, &known).expect("a");
        let b = build_grant(host("h:2222"), only, None, &known).expect("b");
        assert_eq!(
            known_hosts_for(&[a, b]),
            format!("github.com {ED}\n[h]:2222 {ED}\n")
        );
    }

    #[test]
    fn corrupt_and_future_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ssh.json");
        let store = SshGrantStore::new(&path);
        fs::write(&path, "{not json").expect("write");
        assert!(matches!(store.list(), Err(GrantStoreError::Corrupt { .. })));
        fs::write(&path, r#"{"version":2,"grants":[]}"#).expect("write");
        assert!(matches!(
            store.list(),
            Err(GrantStoreError::UnsupportedVersion { version: 2, .. })
        ));
        fs::write(
            &path,
            r#"{"version":1,"grants":[{"host":"h","key":{"fingerprint":"x"}}]}"#,
        )
        .expect("write");
        assert!(matches!(store.list(), Err(GrantStoreError::Corrupt { .. })));
    }

    /// The file format is a contract with older and newer moat versions: pin it.
    #[test]
    fn file_format_is_stable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SshGrantStore::new(dir.path().join("ssh.json"));
        let mut grant =
            build_grant(host("github.com"), &ids()[..1], None, &known()).expect("grant");
        grant.created_at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .expect("time")
            .with_timezone(&Utc);
        store.upsert(grant).expect("write");
        let text = fs::read_to_string(store.path()).expect("read");
        let expected = format!(
            r#"{{
  "version": 1,
  "grants": [
    {{
      "host": "github.com",
      "key": {{
        "fingerprint": "SHA256:NfVuGSTVZRb6lBvL8m9P5DvxWyqUfI0VWL3xruAg6x8",
        "public_key": "{ED}",
        "comment": "c"
      }},
      "host_keys": [
        "{ED}"
      ],
      "created_at": "2026-01-02T03:04:05Z"
    }}
  ]
}}
"#
        );
        assert_eq!(text, expected);
    }
}
