//! Public keys as the agent protocol carries them (wire blobs), their `SHA256:` fingerprints,
//! and signature verification.
//!
//! Only public material is handled here: private keys stay in the user's agent.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use sha2::Digest;
use sha2::Sha256;
use signature::Verifier;

use crate::wire::Reader;

/// An SSH public key in wire form (RFC 4253 §6.6): `string algorithm` followed by the
/// algorithm's fields. Equality is byte equality, which is how agents identify keys.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKeyBlob(Vec<u8>);

/// Why a public key could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not `<algorithm> <base64> [comment]`.
    #[error(
        "not an openssh public key; expected `<algorithm> <base64> [comment]` as in a `.pub` file"
    )]
    NotOpenSsh,
    /// The base64 part did not decode.
    #[error("public key base64 is invalid; copy the key again from its `.pub` file")]
    BadBase64,
    /// The blob does not start with an algorithm name.
    #[error("public key blob is malformed; it does not start with an algorithm name")]
    MalformedBlob,
    /// The algorithm named in the text differs from the one inside the blob.
    #[error("public key says `{text}` but its blob holds a `{blob}` key; the line is corrupted")]
    AlgorithmMismatch {
        /// The algorithm named in the text.
        text: String,
        /// The algorithm inside the blob.
        blob: String,
    },
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The key blob could not be decoded, or its algorithm is not supported.
    #[error(
        "host key of type `{algorithm}` is not supported for verification; supported: ssh-ed25519, ecdsa-sha2-nistp256/384/521, rsa-sha2-256/512"
    )]
    UnsupportedKey {
        /// The algorithm named in the blob.
        algorithm: String,
    },
    /// The signature blob could not be decoded.
    #[error("signature is malformed or uses an unsupported algorithm")]
    MalformedSignature,
    /// The signature algorithm does not belong to the key type.
    #[error("signature algorithm `{signature}` does not match a `{key}` key")]
    AlgorithmMismatch {
        /// The key algorithm.
        key: String,
        /// The signature algorithm.
        signature: String,
    },
    /// A legacy `ssh-rsa` signature, which uses SHA-1.
    #[error(
        "ssh-rsa (SHA-1) signatures are not accepted; the server must sign with rsa-sha2-256 or rsa-sha2-512"
    )]
    LegacySha1,
    /// The signature is well formed but wrong.
    #[error("signature does not verify against the host key")]
    BadSignature,
}

impl PublicKeyBlob {
    /// Wraps a wire blob after checking that it starts with an algorithm name.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<Self, KeyError> {
        let bytes = bytes.into();
        let mut reader = Reader::new(&bytes);
        let algorithm = reader
            .utf8("key algorithm")
            .map_err(|_| KeyError::MalformedBlob)?;
        if algorithm.is_empty() || !algorithm.is_ascii() {
            return Err(KeyError::MalformedBlob);
        }
        Ok(Self(bytes))
    }

    /// Parses the OpenSSH text form `<algorithm> <base64> [comment]` (a `.pub` file line or
    /// the key part of a `known_hosts` line). The comment is discarded.
    pub fn from_openssh(text: &str) -> Result<Self, KeyError> {
        let mut parts = text.split_ascii_whitespace();
        let (Some(algorithm), Some(b64)) = (parts.next(), parts.next()) else {
            return Err(KeyError::NotOpenSsh);
        };
        let bytes = STANDARD.decode(b64).map_err(|_| KeyError::BadBase64)?;
        let blob = Self::from_bytes(bytes)?;
        if blob.algorithm() != algorithm {
            return Err(KeyError::AlgorithmMismatch {
                text: algorithm.to_owned(),
                blob: blob.algorithm().to_owned(),
            });
        }
        Ok(blob)
    }

    /// The wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The algorithm name at the start of the blob, e.g. `ssh-ed25519`.
    pub fn algorithm(&self) -> &str {
        // Checked in the constructors; an empty name cannot occur afterwards.
        Reader::new(&self.0).utf8("key algorithm").unwrap_or("")
    }

    /// The `SHA256:` fingerprint, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.0)
    }

    /// The OpenSSH text form `<algorithm> <base64>`, without a comment.
    pub fn to_openssh(&self) -> String {
        format!("{} {}", self.algorithm(), STANDARD.encode(&self.0))
    }

    /// Verifies an SSH signature blob (`string algorithm, string signature`) over `message`.
    ///
    /// Legacy `ssh-rsa` (SHA-1) signatures are not accepted.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), VerifyError> {
        if Reader::new(signature).utf8("signature algorithm") == Ok("ssh-rsa") {
            return Err(VerifyError::LegacySha1);
        }
        let key =
            ssh_key::PublicKey::from_bytes(&self.0).map_err(|_| VerifyError::UnsupportedKey {
                algorithm: self.algorithm().to_owned(),
            })?;
        let sig =
            ssh_key::Signature::try_from(signature).map_err(|_| VerifyError::MalformedSignature)?;
        let key_alg = key.algorithm();
        let sig_alg = sig.algorithm();
        let compatible = match (&key_alg, &sig_alg) {
            (ssh_key::Algorithm::Rsa { .. }, ssh_key::Algorithm::Rsa { hash: Some(_) }) => true,
            (k, s) => k == s,
        };
        if !compatible {
            return Err(VerifyError::AlgorithmMismatch {
                key: key_alg.as_str().to_owned(),
                signature: sig_alg.as_str().to_owned(),
            });
        }
        Verifier::verify(key.key_data(), message, &sig).map_err(|_| VerifyError::BadSignature)
    }
}

impl fmt::Debug for PublicKeyBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PublicKeyBlob({} {})",
            self.algorithm(),
            self.fingerprint()
        )
    }
}

impl FromStr for PublicKeyBlob {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_openssh(s)
    }
}

impl serde::Serialize for PublicKeyBlob {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_openssh())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKeyBlob {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::from_openssh(&text).map_err(serde::de::Error::custom)
    }
}

/// A key fingerprint in the form `SHA256:<base64 without padding>`, as `ssh-keygen -l` and
/// `ssh-add -l` print it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Fingerprint(String);

/// Why a fingerprint could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a SHA256 key fingerprint; copy one from `ssh-add -l`, e.g. `SHA256:abc…`")]
pub struct FingerprintError {
    /// The text given.
    pub text: String,
}

impl Fingerprint {
    /// The fingerprint of a wire blob.
    pub fn of(blob: &[u8]) -> Self {
        Self(format!(
            "SHA256:{}",
            STANDARD_NO_PAD.encode(Sha256::digest(blob))
        ))
    }

    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || FingerprintError { text: s.to_owned() };
        let b64 = s.strip_prefix("SHA256:").ok_or_else(err)?;
        let digest = STANDARD_NO_PAD.decode(b64).map_err(|_| err())?;
        if digest.len() != 32 {
            return Err(err());
        }
        Ok(Self(s.to_owned()))
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Generated with OpenSSH 9.2 `ssh-keygen -t ed25519`; `ssh-keygen -lf` printed
    // the fingerprint below (a known answer from the reference implementation).
    const ED25519_PUB: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH1IMXoHzQMUTl9zfSaG7XPX1XM7AJ4XOmdU+cx55xHW test@example";
    const ED25519_FP: &str = "SHA256:NfVuGSTVZRb6lBvL8m9P5DvxWyqUfI0VWL3xruAg6x8";

    #[test]
    fn parses_openssh_text_and_fingerprints_like_ssh_keygen() {
        let blob = PublicKeyBlob::from_openssh(ED25519_PUB).expect("parse");
        assert_eq!(blob.algorithm(), "ssh-ed25519");
        assert_eq!(blob.fingerprint().as_str(), ED25519_FP);
        assert_eq!(
            blob.to_openssh(),
            ED25519_PUB
                .rsplit_once(' ')
                .map(|(k, _)| k)
                .expect("comment")
        );
    }

    #[test]
    fn rejects_bad_text() {
        assert_eq!(
            PublicKeyBlob::from_openssh("ssh-ed25519"),
            Err(KeyError::NotOpenSsh)
        );
        assert_eq!(
            PublicKeyBlob::from_openssh("ssh-ed25519 !!!"),
            Err(KeyError::BadBase64)
        );
        // Valid base64 of 3 bytes: too short to hold an algorithm name.
        assert_eq!(
            PublicKeyBlob::from_openssh("ssh-ed25519 AAAA"),
            Err(KeyError::MalformedBlob)
        );
        let mismatch = ED25519_PUB.replacen("ssh-ed25519", "ssh-rsa", 1);
        assert!(matches!(
            PublicKeyBlob::from_openssh(&mismatch),
            Err(KeyError::AlgorithmMismatch { .. })
        ));
    }

    #[test]
    fn fingerprint_parse_checks_shape() {
        assert!(ED25519_FP.parse::<Fingerprint>().is_ok());
        assert!("MD5:aa:bb".parse::<Fingerprint>().is_err());
        assert!("SHA256:short".parse::<Fingerprint>().is_err());
    }

    #[test]
    fn verify_rejects_garbage_signature_without_panicking() {
        let blob = PublicKeyBlob::from_openssh(ED25519_PUB).expect("parse");
        assert_eq!(
            blob.verify(b"msg", &[0, 0, 0, 1]),
            Err(VerifyError::MalformedSignature)
        );
        assert_eq!(
            blob.verify(b"msg", &[]),
            Err(VerifyError::MalformedSignature)
        );
    }
}
