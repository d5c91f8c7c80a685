//! The encrypted credential store: one file per grant, `credentials/<grant>.enc`.
//!
//! See the crate documentation for the file format. Every file is authenticated with its
//! header (format version, key kind, grant name, KDF parameters) as associated data, so a
//! flipped bit, a truncation, a file copied over another grant's name, or a wrong key are all
//! detected and reported as distinct [`StoreError`]s.

use std::fmt;
use std::fs;
use std::path::Path;
use std::path::PathBuf;

use chacha20poly1305::KeyInit as _;
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::XNonce;
use chacha20poly1305::aead::Aead as _;
use chacha20poly1305::aead::Payload;
use chrono::DateTime;
use chrono::Utc;
use moat_core::Secret;
use serde::Deserialize;
use serde::Serialize;
use sha2::Digest as _;
use zeroize::Zeroizing;

use crate::fsutil::FsError;
use crate::fsutil::StoreLock;
use crate::fsutil::ensure_private_dir;
use crate::fsutil::remove_stale_temps;
use crate::fsutil::sync_dir;
use crate::fsutil::write_atomic;
use crate::key::KdfParams;
use crate::key::KeyBytes;
use crate::key::KeyKind;
use crate::key::StoreKey;

/// The first eight bytes of every credential file.
pub const MAGIC: &[u8; 8] = b"MOATCRED";

/// The file format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// File name suffix of credential files.
pub const FILE_SUFFIX: &str = ".enc";

/// Largest credential file read; anything bigger is reported as corrupt.
pub const MAX_FILE_LEN: usize = 1024 * 1024;

/// Longest grant name accepted.
pub const MAX_GRANT_NAME_LEN: usize = 64;

/// How the value of a grant was obtained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum GrantSource {
    /// An environment variable passed in by the caller.
    Env {
        /// The variable's name, e.g. `GITHUB_TOKEN`.
        variable: String,
    },
    /// `gh auth token`.
    GhCli,
    /// Typed at a hidden prompt.
    Prompt,
    /// Handed to the library directly by an embedding program.
    Provided,
    /// A source recorded by a newer moat; kept readable rather than failing the file.
    #[serde(other)]
    Unknown,
}

impl fmt::Display for GrantSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env { variable } => write!(f, "env ({variable})"),
            Self::GhCli => f.write_str("gh"),
            Self::Prompt => f.write_str("prompt"),
            Self::Provided => f.write_str("provided"),
            Self::Unknown => f.write_str("unknown"),
        }
    }
}

/// What `moat grant list` shows about a grant: never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantMeta {
    /// The grant (provider) name.
    pub name: String,
    /// Where the value came from.
    pub source: GrantSource,
    /// When the grant was saved.
    pub created_at: DateTime<Utc>,
    /// When the provider last accepted the value, if it was validated.
    pub last_validated_at: Option<DateTime<Utc>>,
    /// The account the provider reported (GitHub login), if any.
    pub account: Option<String>,
}

/// A stored grant: metadata and the real value.
#[derive(Debug, Clone)]
pub struct GrantRecord {
    /// Metadata.
    pub meta: GrantMeta,
    /// The real credential value.
    pub value: Secret,
}

/// One entry of [`CredentialStore::list`]: a grant file and what could be read from it.
#[derive(Debug)]
pub struct GrantListing {
    /// The grant name (from the file name).
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// The metadata, or why the file could not be read.
    pub meta: Result<GrantMeta, StoreError>,
}

/// Why a credential file is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptReason {
    /// The file does not start with the credential file magic.
    NotACredentialFile,
    /// The file ends before the header or ciphertext does.
    Truncated {
        /// Bytes the file should have at least.
        expected: usize,
        /// Bytes it has.
        actual: usize,
    },
    /// The file is longer than its header says.
    TrailingData {
        /// Bytes the file should have.
        expected: usize,
        /// Bytes it has.
        actual: usize,
    },
    /// A header field holds an impossible value.
    BadHeader {
        /// The field.
        field: &'static str,
    },
    /// The Argon2id parameters in the header are out of bounds.
    BadKdfParams,
    /// The ciphertext or header failed authentication: the file was modified.
    Tampered,
    /// The decrypted content is not a grant record.
    BadPayload,
    /// The file is larger than any credential file.
    TooLarge {
        /// The limit in bytes.
        max: usize,
    },
}

impl fmt::Display for CorruptReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotACredentialFile => f.write_str("not a moat credential file"),
            Self::Truncated { expected, actual } => {
                write!(f, "truncated: {actual} bytes, expected at least {expected}")
            }
            Self::TrailingData { expected, actual } => {
                write!(
                    f,
                    "unexpected trailing data: {actual} bytes, expected {expected}"
                )
            }
            Self::BadHeader { field } => write!(f, "invalid header field `{field}`"),
            Self::BadKdfParams => f.write_str("Argon2id parameters out of bounds"),
            Self::Tampered => f.write_str("authentication failed, the file was modified"),
            Self::BadPayload => f.write_str("decrypted content is not a grant record"),
            Self::TooLarge { max } => write!(f, "larger than {max} bytes"),
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The grant name cannot name a file.
    #[error(
        "invalid grant name `{name}`; use 1 to 64 lowercase letters, digits, `-` or `_`, starting with a letter or digit"
    )]
    InvalidGrantName {
        /// The name given.
        name: String,
    },
    /// The file is damaged.
    #[error("credential file {} is corrupted ({reason}); run `moat revoke {grant}` then `moat grant {grant}`", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The grant it should hold.
        grant: String,
        /// What is wrong.
        reason: CorruptReason,
    },
    /// The file holds another grant: files were swapped or renamed.
    #[error(
        "credential file {} holds grant `{found}`, not `{expected}`; files were swapped or renamed: move it back, or run `moat revoke {expected}` then `moat grant {expected}`",
        path.display()
    )]
    WrongGrant {
        /// The file.
        path: PathBuf,
        /// The grant the file name says.
        expected: String,
        /// The grant the authenticated header says.
        found: String,
    },
    /// The file was written by a newer moat.
    #[error(
        "credential file {} has format version {version}, this moat reads version {FORMAT_VERSION}; upgrade moat, or run `moat revoke {grant}` then `moat grant {grant}`",
        path.display()
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The grant.
        grant: String,
        /// The version found.
        version: u8,
    },
    /// The file was encrypted with another kind of key than the store is using.
    #[error(
        "cannot decrypt {}: it was encrypted with {file} but moat is using {using}; {}, or run `moat revoke {grant}` then `moat grant {grant}`",
        path.display(), file.how_to_select()
    )]
    KeyKindMismatch {
        /// The file.
        path: PathBuf,
        /// The grant.
        grant: String,
        /// The key kind recorded in the file.
        file: KeyKind,
        /// The key kind in use.
        using: KeyKind,
    },
    /// The key (or passphrase) is not the one the file was written with.
    #[error(
        "cannot decrypt {} with the {key}: wrong passphrase or key; use the one the grant was saved with, or run `moat revoke {grant}` then `moat grant {grant}`",
        path.display()
    )]
    CannotDecrypt {
        /// The file.
        path: PathBuf,
        /// The grant.
        grant: String,
        /// Which key was tried, e.g. `passphrase (MOAT_PASSPHRASE)`.
        key: String,
    },
    /// Key derivation failed for new parameters.
    #[error(
        "cannot derive a key from the passphrase with the configured Argon2id parameters: {error}; use the default parameters"
    )]
    Kdf {
        /// The Argon2 error.
        error: argon2::Error,
    },
    /// Encryption failed (the value is absurdly large).
    #[error("cannot encrypt the credential for grant `{grant}`; the value is too large")]
    Encrypt {
        /// The grant.
        grant: String,
    },
    /// A file system operation failed.
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// The encrypted store in one directory (`$MOAT_HOME/credentials`).
#[derive(Debug)]
pub struct CredentialStore {
    dir: PathBuf,
    key: StoreKey,
}

impl CredentialStore {
    /// Opens the store in `dir`, creating the directory with mode 0700 when missing.
    pub fn open(dir: impl Into<PathBuf>, key: StoreKey) -> Result<Self, StoreError> {
        let dir = dir.into();
        ensure_private_dir(&dir)?;
        Ok(Self { dir, key })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key in use.
    pub fn key(&self) -> &StoreKey {
        &self.key
    }

    /// The file that holds `grant`.
    pub fn path_for(&self, grant: &str) -> PathBuf {
        self.dir.join(format!("{grant}{FILE_SUFFIX}"))
    }

    /// Encrypts and writes `record` atomically, replacing any previous value of the grant.
    /// Concurrent writers (threads or processes) are serialized by a lock file.
    pub fn save(&self, record: &GrantRecord) -> Result<(), StoreError> {
        let name = record.meta.name.as_str();
        validate_grant_name(name)?;
        // Sized up front so serialization never reallocates and leaves copies of the value
        // in freed memory.
        let mut plaintext = Zeroizing::new(Vec::with_capacity(
            1024 + 6 * record.value.expose().len()
                + record.meta.account.as_ref().map_or(0, |a| 6 * a.len()),
        ));
        serde_json::to_writer(
            &mut *plaintext,
            &PayloadOut {
                meta: &record.meta,
                value: record.value.expose(),
            },
        )
        .map_err(|_| StoreError::Encrypt {
            grant: name.to_owned(),
        })?;
        let bytes = self.encrypt(name, &plaintext)?;
        let _lock = StoreLock::acquire(&self.dir)?;
        remove_stale_temps(&self.dir);
        write_atomic(&self.dir, &format!("{name}{FILE_SUFFIX}"), &bytes)?;
        Ok(())
    }

    /// Reads and decrypts `grant`; `Ok(None)` when nothing is stored for it.
    pub fn load(&self, grant: &str) -> Result<Option<GrantRecord>, StoreError> {
        validate_grant_name(grant)?;
        let path = self.path_for(grant);
        let bytes = match read_bounded(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(FsError::Io {
                    action: "read",
                    path,
                    source,
                }
                .into());
            }
        };
        if bytes.len() > MAX_FILE_LEN {
            return Err(StoreError::Corrupt {
                path,
                grant: grant.to_owned(),
                reason: CorruptReason::TooLarge { max: MAX_FILE_LEN },
            });
        }
        self.decrypt(grant, &path, &bytes).map(Some)
    }

    /// Every grant file in the store, sorted by name, with its metadata or the error that
    /// prevents reading it (one damaged file does not hide the others).
    pub fn list(&self) -> Result<Vec<GrantListing>, StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(FsError::io("list", &self.dir))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(FsError::io("list", &self.dir))?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(FILE_SUFFIX)) else {
                continue;
            };
            if validate_grant_name(name).is_ok() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names
            .into_iter()
            .map(|name| {
                let path = self.path_for(&name);
                let meta = self.load(&name).and_then(|record| {
                    record.map(|r| r.meta).ok_or_else(|| {
                        StoreError::Fs(FsError::Io {
                            action: "read",
                            path: path.clone(),
                            source: std::io::ErrorKind::NotFound.into(),
                        })
                    })
                });
                GrantListing { name, path, meta }
            })
            .collect())
    }

    /// Removes `grant`; `Ok(false)` when nothing was stored. Works on damaged files too.
    pub fn revoke(&self, grant: &str) -> Result<bool, StoreError> {
        revoke_grant(&self.dir, grant)
    }

    /// The salt of an existing passphrase file written with `params` and the same
    /// passphrase, so that every file shares one salt and reading N grants costs one Argon2id
    /// derivation instead of N. At most one derivation is spent looking.
    fn existing_salt(&self, params: KdfParams) -> Option<[u8; 16]> {
        let entries = fs::read_dir(&self.dir).ok()?;
        for entry in entries.flatten().take(64) {
            let name = entry.file_name();
            if !name.to_str().is_some_and(|n| n.ends_with(FILE_SUFFIX)) {
                continue;
            }
            let Ok(bytes) = read_bounded(&entry.path()) else {
                continue;
            };
            let Ok(header) = parse_header(&bytes) else {
                continue;
            };
            if let Some((p, salt)) = header.kdf
                && p == params
                && header.kind == KeyKind::Passphrase
            {
                let key = self.key.file_key(Some((p, salt))).ok()?;
                return (key_check(&key) == header.check).then_some(salt);
            }
        }
        None
    }

    fn encrypt(&self, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let name_len = u8::try_from(name.len()).map_err(|_| StoreError::InvalidGrantName {
            name: name.to_owned(),
        })?;
        let mut header = Vec::with_capacity(128);
        header.extend_from_slice(MAGIC);
        header.push(FORMAT_VERSION);
        header.push(self.key.kind().to_byte());
        header.push(name_len);
        header.extend_from_slice(name.as_bytes());
        let kdf = match self.key.write_params() {
            Some(params) => {
                let salt = match self.key.cached_salt(params) {
                    Some(salt) => salt,
                    None => match self.existing_salt(params) {
                        Some(salt) => salt,
                        None => random_array()?,
                    },
                };
                header.extend_from_slice(&params.m_cost_kib.to_le_bytes());
                header.extend_from_slice(&params.t_cost.to_le_bytes());
                header.extend_from_slice(&params.p_cost.to_le_bytes());
                header.extend_from_slice(&salt);
                Some((params, salt))
            }
            None => None,
        };
        let file_key = self
            .key
            .file_key(kdf)
            .map_err(|error| StoreError::Kdf { error })?;
        header.extend_from_slice(&key_check(&file_key));
        let nonce: [u8; 24] = random_array()?;
        header.extend_from_slice(&nonce);
        let encrypt_error = || StoreError::Encrypt {
            grant: name.to_owned(),
        };
        let ct_len = u32::try_from(plaintext.len() + TAG_LEN).map_err(|_| encrypt_error())?;
        header.extend_from_slice(&ct_len.to_le_bytes());
        let cipher = XChaCha20Poly1305::new(file_key.expose().into());
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &header,
                },
            )
            .map_err(|_| encrypt_error())?;
        header.extend_from_slice(&ciphertext);
        Ok(header)
    }

    fn decrypt(&self, grant: &str, path: &Path, bytes: &[u8]) -> Result<GrantRecord, StoreError> {
        let corrupt = |reason| StoreError::Corrupt {
            path: path.to_owned(),
            grant: grant.to_owned(),
            reason,
        };
        let header = parse_header(bytes).map_err(|e| match e {
            HeaderError::Corrupt(reason) => corrupt(reason),
            HeaderError::Version(version) => StoreError::UnsupportedVersion {
                path: path.to_owned(),
                grant: grant.to_owned(),
                version,
            },
        })?;
        let Header {
            kind,
            name,
            kdf,
            check,
            nonce,
            ct_len,
            header_len,
        } = header;
        if name != grant {
            return Err(StoreError::WrongGrant {
                path: path.to_owned(),
                expected: grant.to_owned(),
                found: name.to_owned(),
            });
        }
        if kind != self.key.kind() {
            return Err(StoreError::KeyKindMismatch {
                path: path.to_owned(),
                grant: grant.to_owned(),
                file: kind,
                using: self.key.kind(),
            });
        }
        if let Some((params, _)) = kdf
            && !params.is_acceptable()
        {
            return Err(corrupt(CorruptReason::BadKdfParams));
        }
        let expected_len = header_len.saturating_add(ct_len);
        if bytes.len() < expected_len {
            return Err(corrupt(CorruptReason::Truncated {
                expected: expected_len,
                actual: bytes.len(),
            }));
        }
        if bytes.len() > expected_len {
            return Err(corrupt(CorruptReason::TrailingData {
                expected: expected_len,
                actual: bytes.len(),
            }));
        }
        let file_key = self
            .key
            .file_key(kdf)
            .map_err(|_| corrupt(CorruptReason::BadKdfParams))?;
        if key_check(&file_key) != check {
            return Err(StoreError::CannotDecrypt {
                path: path.to_owned(),
                grant: grant.to_owned(),
                key: self.key.describe(),
            });
        }
        let (aad, ciphertext) = bytes.split_at(header_len);
        let cipher = XChaCha20Poly1305::new(file_key.expose().into());
        let plaintext = Zeroizing::new(
            cipher
                .decrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: ciphertext,
                        aad,
                    },
                )
                .map_err(|_| corrupt(CorruptReason::Tampered))?,
        );
        let payload: PayloadIn =
            serde_json::from_slice(&plaintext).map_err(|_| corrupt(CorruptReason::BadPayload))?;
        if payload.meta.name != grant {
            return Err(corrupt(CorruptReason::BadPayload));
        }
        Ok(GrantRecord {
            meta: payload.meta,
            value: Secret::new(payload.value),
        })
    }
}

/// The key kind of the first readable grant file header in `dir` (in name order), if any.
/// Reads headers only; decrypts nothing.
pub(crate) fn existing_key_kind(dir: &Path) -> Option<KeyKind> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| {
            n.strip_suffix(FILE_SUFFIX)
                .is_some_and(|g| validate_grant_name(g).is_ok())
        })
        .collect();
    names.sort();
    names.iter().take(64).find_map(|name| {
        let bytes = read_bounded(&dir.join(name)).ok()?;
        parse_header(&bytes).ok().map(|h| h.kind)
    })
}

/// Removes `grant` from the store in `dir` without needing its key, so a grant whose file
/// is damaged or was written with a lost key can still be revoked. `Ok(false)` when nothing
/// was stored.
pub fn revoke_grant(dir: &Path, grant: &str) -> Result<bool, StoreError> {
    validate_grant_name(grant)?;
    let path = dir.join(format!("{grant}{FILE_SUFFIX}"));
    if !dir.is_dir() {
        return Ok(false);
    }
    let _lock = StoreLock::acquire(dir)?;
    match fs::remove_file(&path) {
        Ok(()) => {
            sync_dir(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(FsError::Io {
            action: "remove",
            path,
            source,
        }
        .into()),
    }
}

/// Checks that `name` is usable as a grant and file name.
pub fn validate_grant_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_GRANT_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidGrantName {
            name: name.to_owned(),
        })
    }
}

const TAG_LEN: usize = 16;

#[derive(Serialize)]
struct PayloadOut<'a> {
    meta: &'a GrantMeta,
    value: &'a str,
}

#[derive(Deserialize)]
struct PayloadIn {
    meta: GrantMeta,
    value: String,
}

/// The parsed header of a credential file.
struct Header<'a> {
    kind: KeyKind,
    name: &'a str,
    kdf: Option<(KdfParams, [u8; 16])>,
    check: [u8; 16],
    nonce: [u8; 24],
    ct_len: usize,
    header_len: usize,
}

enum HeaderError {
    Corrupt(CorruptReason),
    Version(u8),
}

impl From<CorruptReason> for HeaderError {
    fn from(reason: CorruptReason) -> Self {
        Self::Corrupt(reason)
    }
}

fn parse_header(bytes: &[u8]) -> Result<Header<'_>, HeaderError> {
    if bytes.len() < MAGIC.len() {
        return Err(HeaderError::Corrupt(if MAGIC.starts_with(bytes) {
            CorruptReason::Truncated {
                expected: MAGIC.len(),
                actual: bytes.len(),
            }
        } else {
            CorruptReason::NotACredentialFile
        }));
    }
    let mut r = Reader { bytes, pos: 0 };
    if r.take(MAGIC.len())? != MAGIC {
        return Err(CorruptReason::NotACredentialFile.into());
    }
    let version = r.u8()?;
    if version != FORMAT_VERSION {
        return Err(HeaderError::Version(version));
    }
    let kind = KeyKind::from_byte(r.u8()?).ok_or(CorruptReason::BadHeader { field: "key kind" })?;
    let name_len = usize::from(r.u8()?);
    let name = r.take(name_len)?;
    let name = std::str::from_utf8(name)
        .ok()
        .filter(|n| validate_grant_name(n).is_ok())
        .ok_or(CorruptReason::BadHeader {
            field: "grant name",
        })?;
    let kdf = if kind == KeyKind::Passphrase {
        let params = KdfParams {
            m_cost_kib: r.u32()?,
            t_cost: r.u32()?,
            p_cost: r.u32()?,
        };
        let salt: [u8; 16] = r.array()?;
        Some((params, salt))
    } else {
        None
    };
    let check: [u8; 16] = r.array()?;
    let nonce: [u8; 24] = r.array()?;
    let ct_len =
        usize::try_from(r.u32()?).map_err(|_| CorruptReason::BadHeader { field: "length" })?;
    if ct_len < TAG_LEN {
        return Err(CorruptReason::BadHeader { field: "length" }.into());
    }
    Ok(Header {
        kind,
        name,
        kdf,
        check,
        nonce,
        ct_len,
        header_len: r.pos,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CorruptReason> {
        let end = self.pos.saturating_add(n);
        let out = self
            .bytes
            .get(self.pos..end)
            .ok_or(CorruptReason::Truncated {
                expected: end,
                actual: self.bytes.len(),
            })?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CorruptReason> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, CorruptReason> {
        self.array::<1>().map(|[b]| b)
    }

    fn u32(&mut self) -> Result<u32, CorruptReason> {
        self.array().map(u32::from_le_bytes)
    }
}

/// A public fingerprint of the file key, so that a wrong key is told apart from tampering.
/// The key is 256 bits of randomness or an Argon2id output, so its hash reveals nothing.
fn key_check(key: &KeyBytes) -> [u8; 16] {
    let digest = sha2::Sha256::new()
        .chain_update(b"moat-creds key check v1\0")
        .chain_update(key.expose())
        .finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// Reads at most [`MAX_FILE_LEN`] + 1 bytes, so a huge file cannot exhaust memory.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_LEN as u64 + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn random_array<const N: usize>() -> Result<[u8; N], StoreError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|source| FsError::Random { source })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_names() {
        for good in ["github", "a", "my-api_2", "0x"] {
            assert!(validate_grant_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "GitHub",
            "../x",
            "a/b",
            ".key",
            "-x",
            "a.b",
            &"x".repeat(65),
        ] {
            assert!(validate_grant_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reader_reports_truncation_without_panicking() {
        let mut r = Reader {
            bytes: &[1, 2, 3],
            pos: 0,
        };
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(
            r.u32(),
            Err(CorruptReason::Truncated {
                expected: 5,
                actual: 3
            })
        );
    }

    #[test]
    fn unknown_sources_from_newer_versions_stay_readable() {
        let meta: Result<GrantMeta, _> = serde_json::from_str(
            r#"{"name":"github","source":{"kind":"vault","path":"x"},"created_at":"2026-01-01T00:00:00Z","last_validated_at":null,"account":null,"future":1}"#,
        );
        assert_eq!(meta.map(|m| m.source).ok(), Some(GrantSource::Unknown));
    }

    #[test]
    fn source_display() {
        assert_eq!(
            GrantSource::Env {
                variable: "GH_TOKEN".into()
            }
            .to_string(),
            "env (GH_TOKEN)"
        );
        assert_eq!(GrantSource::GhCli.to_string(), "gh");
    }
}
