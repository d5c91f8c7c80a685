//! The installation's checkpoint signing key and its public half.
//!
//! The secret key is stored as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, readable by
//! `openssl pkey`), mode 0600; the public key beside it (same name, extension `.pub`) as SPKI PEM
//! (`-----BEGIN PUBLIC KEY-----`). A key ID is the first 8 bytes of `SHA-256(public key)` in hex;
//! a fingerprint is `SHA256:` followed by unpadded base64 of the same digest, in OpenSSH's style
//! (OpenSSH hashes its own key encoding, so the values differ from `ssh-keygen -l`).

use std::fmt;
use std::fs;
use std::io;
use std::io::Write as _;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use ed25519_dalek::Signature;
use ed25519_dalek::Signer as _;
use ed25519_dalek::SigningKey;
use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use ed25519_dalek::pkcs8::DecodePublicKey as _;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use ed25519_dalek::pkcs8::EncodePublicKey as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use serde::Serialize;
use sha2::Digest as _;
use sha2::Sha256;
use zeroize::Zeroizing;

/// An Ed25519 signing key for checkpoints. `Debug` never shows the secret; it is wiped on drop.
#[derive(Clone)]
pub struct AuditKey {
    signing: SigningKey,
}

impl AuditKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| KeyError::Random {
            detail: e.to_string(),
        })?;
        Ok(Self::from_seed(&seed))
    }

    /// The key with this 32-byte seed (RFC 8032 secret key).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// Loads the key at `path`, creating it (mode 0600, parent directory 0700) on first use,
    /// and (re)writes the public key file beside it.
    ///
    /// Creation is race-free: the key is written to a temporary file and hard-linked into place,
    /// so concurrent first uses agree on one key and nobody reads a half-written file.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let key = match Self::load(path) {
            Ok(key) => key,
            Err(KeyError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Self::create(path)?
            }
            Err(e) => return Err(e),
        };
        let public_path = public_key_path(path);
        let pem = key.public_key().to_pem();
        let current = fs::read_to_string(&public_path).ok();
        if current.as_deref() != Some(pem.as_str()) {
            write_atomic(&public_path, pem.as_bytes(), 0o644).map_err(|source| {
                KeyError::Write {
                    path: public_path.clone(),
                    source,
                }
            })?;
        }
        Ok(key)
    }

    /// Loads an existing key; refuses one that other users can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let read_err = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let file = fs::File::open(path).map_err(read_err)?;
        check_private_mode(&file, path)?;
        let text = Zeroizing::new(io::read_to_string(file).map_err(read_err)?);
        let signing = SigningKey::from_pkcs8_pem(&text).map_err(|e| KeyError::Parse {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        Ok(Self { signing })
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> Signature {
        self.signing.sign(message)
    }

    fn create(path: &Path) -> Result<Self, KeyError> {
        let write_err = |source| KeyError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(write_err)?;
        }
        let key = Self::generate()?;
        let pem = key
            .signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Parse {
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
        let tmp = temp_path(path);
        let result =
            write_new(&tmp, pem.as_bytes(), 0o600).and_then(|()| fs::hard_link(&tmp, path));
        let _ = fs::remove_file(&tmp);
        match result {
            Ok(()) => {
                sync_parent(path).map_err(write_err)?;
                Ok(key)
            }
            // Someone else created the key first: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(write_err(e)),
        }
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AuditKey({}, secret: ****)",
            self.public_key().fingerprint()
        )
    }
}

/// An Ed25519 public key that checkpoints are verified against.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Wraps a verifying key.
    pub fn from_verifying_key(key: VerifyingKey) -> Self {
        Self(key)
    }

    /// The underlying verifying key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }

    /// Parses an SPKI PEM public key (`-----BEGIN PUBLIC KEY-----`) or 64 lowercase hex digits.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.starts_with("-----BEGIN") {
            return VerifyingKey::from_public_key_pem(text)
                .map(Self)
                .map_err(|e| KeyError::InvalidPublicKey {
                    detail: e.to_string(),
                });
        }
        Self::from_hex(text)
    }

    /// Parses 64 lowercase hex digits.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let mut bytes = [0u8; 32];
        crate::merkle::decode_lower_hex(text, &mut bytes).ok_or_else(|| {
            KeyError::InvalidPublicKey {
                detail: "expected a PEM public key or 64 lowercase hex digits".into(),
            }
        })?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self)
            .map_err(|e| KeyError::InvalidPublicKey {
                detail: e.to_string(),
            })
    }

    /// Reads a public key file (PEM or hex).
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The 32 key bytes in lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// SPKI PEM, ending in a newline.
    pub fn to_pem(&self) -> String {
        // Encoding a valid Ed25519 key as SPKI cannot fail; fall back to hex all the same.
        self.0
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_else(|_| self.to_hex() + "\n")
    }

    /// The key ID recorded in checkpoints: the first 8 bytes of `SHA-256(key)`, lowercase hex.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        hex::encode(digest.get(..8).unwrap_or_default())
    }

    /// The OpenSSH-style fingerprint `SHA256:<unpadded base64 of SHA-256(key)>`.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        )
    }

    /// Everything `moat audit key` shows, serializable for `--json`.
    pub fn info(&self) -> KeyInfo {
        KeyInfo {
            algorithm: "ed25519",
            fingerprint: self.fingerprint(),
            key_id: self.key_id(),
            public_key_hex: self.to_hex(),
            public_key_pem: self.to_pem(),
        }
    }

    pub(crate) fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        self.0.verify_strict(message, signature).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl From<VerifyingKey> for PublicKey {
    fn from(key: VerifyingKey) -> Self {
        Self(key)
    }
}

/// A description of a public key for display.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// Always `ed25519`.
    pub algorithm: &'static str,
    /// `SHA256:<base64>`.
    pub fingerprint: String,
    /// The 16-hex-digit key ID used in checkpoints.
    pub key_id: String,
    /// The raw key in hex.
    pub public_key_hex: String,
    /// The key as SPKI PEM.
    pub public_key_pem: String,
}

/// Loads or creates the installation key at `key_path` and describes its public half; what
/// `moat audit key` prints.
pub fn key_info(key_path: &Path) -> Result<KeyInfo, KeyError> {
    Ok(AuditKey::load_or_create(key_path)?.public_key().info())
}

/// Where the public key of the secret key at `key_path` lives: `signing.key` → `signing.pub`.
pub fn public_key_path(key_path: &Path) -> PathBuf {
    key_path.with_extension("pub")
}

/// Why a key could not be loaded, created or parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read key file {}: {source}; check the path and its permissions", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The key file could not be written.
    #[error("cannot write key file {}: {source}; check that the directory is writable", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The key file is not a PKCS#8 Ed25519 key.
    #[error("key file {} is not a PKCS#8 Ed25519 private key ({detail}); restore it from a backup or move it away to create a new key", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        detail: String,
    },
    /// The key file is readable by other users.
    #[error("key file {} has mode {mode:o}, readable by others; run `chmod 600` on it", path.display())]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A public key could not be parsed.
    #[error(
        "invalid Ed25519 public key ({detail}); pass the PEM file written beside the signing key"
    )]
    InvalidPublicKey {
        /// What was wrong.
        detail: String,
    },
    /// The operating system's random source failed.
    #[error("cannot get random bytes for a new key ({detail}); retry")]
    Random {
        /// The error.
        detail: String,
    },
}

/// A temporary name beside `path`, unique across processes and threads.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp.{}.{n}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `bytes` to a new file with `mode`, fsynced.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Replaces `path` atomically: write a temporary file, fsync, rename, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = write_new(&tmp, bytes, mode).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_parent(path)
}

pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn check_private_mode(file: &fs::File, path: &Path) -> Result<(), KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = file
            .metadata()
            .map_err(|source| KeyError::Read {
                path: path.to_owned(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecurePermissions {
                path: path.to_owned(),
                mode: mode & 0o7777,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (file, path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8032_test_1_known_answer() {
        // RFC 8032 §7.1, TEST 1: empty message.
        let mut seed = [0u8; 32];
        hex::decode_to_slice(
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            &mut seed,
        )
        .expect("valid hex");
        let key = AuditKey::from_seed(&seed);
        assert_eq!(
            key.public_key().to_hex(),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        let sig = key.sign(b"");
        assert_eq!(
            hex::encode(sig.to_bytes()),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
        assert!(key.public_key().verify(b"", &sig));
        assert!(!key.public_key().verify(b"x", &sig));
    }

    #[test]
    fn fingerprint_and_key_id_have_the_documented_shape() {
        let pk = AuditKey::from_seed(&[7; 32]).public_key();
        let fp = pk.fingerprint();
        assert!(fp.starts_with("SHA256:"));
        assert_eq!(fp.len(), "SHA256:".len() + 43);
        assert_eq!(pk.key_id().len(), 16);
        let digest = Sha256::digest(pk.verifying_key().as_bytes());
        assert_eq!(pk.key_id(), hex::encode(&digest[..8]));
    }

    #[test]
    fn created_once_then_loaded_with_private_permissions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit").join("signing.key");
        let first = AuditKey::load_or_create(&path).expect("create");
        let second = AuditKey::load_or_create(&path).expect("load");
        assert_eq!(first.public_key(), second.public_key());
        let text = fs::read_to_string(&path).expect("read key");
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"));
        let public = PublicKey::read(&public_key_path(&path)).expect("read pub");
        assert_eq!(public, first.public_key());
        assert!(!format!("{first:?}").contains(&hex::encode(first.signing.to_bytes())));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let dir_mode = fs::metadata(path.parent().expect("parent"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(dir_mode & 0o777, 0o700);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(matches!(
                AuditKey::load(&path),
                Err(KeyError::InsecurePermissions { mode: 0o644, .. })
            ));
        }
    }

    #[test]
    fn concurrent_first_use_agrees_on_one_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit").join("signing.key");
        let keys: Vec<PublicKey> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| AuditKey::load_or_create(&path).map(|k| k.public_key())))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("thread").expect("key"))
                .collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(AuditKey::load(&path).expect("load").public_key(), keys[0]);
    }

    #[test]
    fn garbage_key_file_is_a_parse_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("signing.key");
        write_new(&path, b"not a key", 0o600).expect("write");
        assert!(matches!(AuditKey::load(&path), Err(KeyError::Parse { .. })));
    }

    #[test]
    fn public_key_parses_from_pem_and_hex_only() {
        let pk = AuditKey::from_seed(&[9; 32]).public_key();
        assert_eq!(PublicKey::parse(&pk.to_pem()).expect("pem"), pk);
        assert_eq!(PublicKey::parse(&pk.to_hex()).expect("hex"), pk);
        assert!(PublicKey::parse(&pk.to_hex().to_uppercase()).is_err());
        assert!(PublicKey::parse("hello").is_err());
    }
}
