//! Signed checkpoints: a commitment to the first `tree_size` entries of a log.

use std::fmt::Write as _;

use ed25519_dalek::Signature;
use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;
use serde::Serializer;

use crate::keys::AuditKey;
use crate::keys::PublicKey;
use crate::merkle::Hash32;

/// The first line of every signed checkpoint message.
pub const CHECKPOINT_CONTEXT: &str = "moat-audit-checkpoint/1";

/// A signed statement that a log's first `tree_size` entries have this Merkle root and chain
/// hash.
///
/// The signature covers [`Checkpoint::signed_message`]:
///
/// ```text
/// moat-audit-checkpoint/1
/// origin moat/<run id>
/// tree-size <decimal>
/// root <64 hex>
/// chain <64 hex>
/// time <RFC 3339 UTC>
/// key-id <16 hex>
/// final <true|false>
/// ```
///
/// each line ending in `\n`. `final` marks the checkpoint written when the log was closed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// `moat/<run id>`.
    pub origin: String,
    /// How many entries the checkpoint covers.
    pub tree_size: u64,
    /// RFC 6962 Merkle root of those entries.
    pub root: Hash32,
    /// Hash chain value after the last covered entry.
    pub chain: Hash32,
    /// When the checkpoint was made, RFC 3339 UTC.
    pub ts: String,
    /// ID of the signing key ([`PublicKey::key_id`]).
    pub key_id: String,
    /// Whether this is the closing checkpoint.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Ed25519 signature over the signed message.
    pub signature: SignatureHex,
}

impl Checkpoint {
    /// Signs a new checkpoint.
    pub fn sign(
        key: &AuditKey,
        run_id: &str,
        tree_size: u64,
        root: Hash32,
        chain: Hash32,
        ts: String,
        is_final: bool,
    ) -> Self {
        let mut cp = Self {
            origin: origin(run_id),
            tree_size,
            root,
            chain,
            ts,
            key_id: key.public_key().key_id(),
            is_final,
            signature: SignatureHex(Signature::from_bytes(&[0; 64])),
        };
        cp.signature = SignatureHex(key.sign(cp.signed_message().as_bytes()));
        cp
    }

    /// The exact text the signature covers.
    pub fn signed_message(&self) -> String {
        let mut m = String::with_capacity(256);
        let _ = write!(
            m,
            "{CHECKPOINT_CONTEXT}\norigin {}\ntree-size {}\nroot {}\nchain {}\ntime {}\nkey-id {}\nfinal {}\n",
            self.origin, self.tree_size, self.root, self.chain, self.ts, self.key_id, self.is_final
        );
        m
    }

    /// Whether the signature is valid for `key` (strict RFC 8032 verification).
    pub fn signature_valid(&self, key: &PublicKey) -> bool {
        key.verify(self.signed_message().as_bytes(), &self.signature.0)
    }

    /// Whether every field is in its single permitted spelling, so the signed message cannot be
    /// made ambiguous (no line breaks or spaces smuggled into a field).
    pub(crate) fn fields_well_formed(&self) -> bool {
        let safe = |s: &str, extra: &[u8]| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
        };
        safe(&self.origin, b"/._-")
            && safe(&self.ts, b"-:.+")
            && self.key_id.len() == 16
            && self
                .key_id
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }
}

/// The origin string of a run's log.
pub fn origin(run_id: &str) -> String {
    format!("moat/{run_id}")
}

/// An Ed25519 signature serialized as 128 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignatureHex(pub Signature);

impl Serialize for SignatureHex {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(self.0.to_bytes()))
    }
}

impl<'de> Deserialize<'de> for SignatureHex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let mut bytes = [0u8; 64];
        crate::merkle::decode_lower_hex(&text, &mut bytes)
            .ok_or_else(|| serde::de::Error::custom("expected 128 lowercase hex digits"))?;
        Ok(Self(Signature::from_bytes(&bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(key: &AuditKey) -> Checkpoint {
        Checkpoint::sign(
            key,
            "run_0123456789ab",
            3,
            Hash32([1; 32]),
            Hash32([2; 32]),
            "2026-01-01T00:00:00.000000Z".into(),
            true,
        )
    }

    #[test]
    fn signed_message_has_the_documented_layout() {
        let key = AuditKey::from_seed(&[1; 32]);
        let cp = sample(&key);
        let expected = format!(
            "moat-audit-checkpoint/1\norigin moat/run_0123456789ab\ntree-size 3\nroot {}\nchain {}\ntime 2026-01-01T00:00:00.000000Z\nkey-id {}\nfinal true\n",
            "01".repeat(32),
            "02".repeat(32),
            key.public_key().key_id()
        );
        assert_eq!(cp.signed_message(), expected);
        assert!(cp.signature_valid(&key.public_key()));
        assert!(cp.fields_well_formed());
    }

    #[test]
    fn any_signed_field_change_breaks_the_signature() {
        let key = AuditKey::from_seed(&[1; 32]);
        let cp = sample(&key);
        let pk = key.public_key();
        let mut c = cp.clone();
        c.tree_size = 2;
        assert!(!c.signature_valid(&pk));
        let mut c = cp.clone();
        c.is_final = false;
        assert!(!c.signature_valid(&pk));
        let mut c = cp.clone();
        c.ts = "2026-01-01T00:00:01.000000Z".into();
        assert!(!c.signature_valid(&pk));
        let mut c = cp.clone();
        c.root = Hash32([3; 32]);
        assert!(!c.signature_valid(&pk));
        let mut c = cp;
        c.origin = "moat/run_other".into();
        assert!(!c.signature_valid(&pk));
        let foreign = AuditKey::from_seed(&[2; 32]);
        assert!(!sample(&foreign).signature_valid(&pk));
    }

    #[test]
    fn line_breaks_in_fields_are_rejected() {
        let key = AuditKey::from_seed(&[1; 32]);
        let mut cp = sample(&key);
        cp.origin = "moat/run\nfinal true".into();
        assert!(!cp.fields_well_formed());
    }
}
