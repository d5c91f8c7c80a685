//! Bundles (a run's evidence in one JSON file for offline verification) and proofs.

use std::borrow::Cow;
use std::fs;
use std::io;
use std::path::Path;
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::canonical::Entry;
use crate::checkpoint::Checkpoint;
use crate::keys::PublicKey;
use crate::keys::write_atomic;
use crate::log::validate_run_id;
use crate::merkle::ConsistencyProof;
use crate::merkle::Hash32;
use crate::merkle::InclusionProof;
use crate::merkle::ProofError;
use crate::merkle::leaf_hash;
use crate::verify::Parsed;
use crate::verify::PlacedCheckpoint;
use crate::verify::Problem;
use crate::verify::RawEntry;
use crate::verify::Report;
use crate::verify::parse_log;
use crate::verify::verify_parsed;

/// The `format` value of a bundle.
pub const BUNDLE_FORMAT: &str = "moat-audit-bundle/1";

/// Builds the bundle of the log at `log_path`, whose checkpoints are signed by `key`.
///
/// The bundle is one compact JSON object:
/// `{"format":"moat-audit-bundle/1","run_id":…,"public_key":<hex>,"checkpoints":[…],
/// "entries":[{"entry":<canonical entry>,"hash":<chain hash>},…]}`. Entries are embedded
/// byte-for-byte, so the bundle verifies without re-serializing anything. A log that is still
/// open or was never closed exports fine and verifies as unfinished.
pub fn export_bundle(log_path: &Path, key: &PublicKey) -> Result<Vec<u8>, ExportError> {
    let bytes = read(log_path)?;
    let log = parse_log(&bytes).map_err(|(_, problem)| ExportError::Malformed {
        path: log_path.to_owned(),
        problem,
    })?;
    if log.header.key_id != key.key_id() {
        return Err(ExportError::WrongKey {
            path: log_path.to_owned(),
            log_key_id: log.header.key_id,
            key_id: key.key_id(),
        });
    }
    let entries = log
        .entries
        .iter()
        .map(|e| {
            let entry =
                serde_json::from_str::<&RawValue>(e.raw).map_err(|err| ExportError::Malformed {
                    path: log_path.to_owned(),
                    problem: Problem::MalformedBundle {
                        detail: err.to_string(),
                    },
                })?;
            Ok(BundleEntry {
                entry,
                hash: e.recorded.unwrap_or(Hash32::ZERO),
            })
        })
        .collect::<Result<Vec<_>, ExportError>>()?;
    let bundle = BundleWire {
        format: BUNDLE_FORMAT.into(),
        run_id: log.header.run_id.as_str().into(),
        public_key: key.to_hex().into(),
        checkpoints: log.checkpoints.into_iter().map(|c| c.checkpoint).collect(),
        entries,
    };
    serde_json::to_vec(&bundle).map_err(|e| ExportError::Io {
        path: log_path.to_owned(),
        source: e.into(),
    })
}

/// Writes the bundle of `log_path` to `out` atomically (temporary file, fsync, rename).
pub fn export_bundle_to(log_path: &Path, out: &Path, key: &PublicKey) -> Result<(), ExportError> {
    let bytes = export_bundle(log_path, key)?;
    write_atomic(out, &bytes, 0o644).map_err(|source| ExportError::Io {
        path: out.to_owned(),
        source,
    })
}

/// Verifies a bundle offline. With `pinned`, the bundle's key must be that key; without, the
/// bundle's own key is used and the report says it was not pinned.
pub fn verify_bundle(bytes: &[u8], pinned: Option<&PublicKey>) -> Report {
    let tampered = Report::tampered;
    let bundle: BundleWire<'_> = match serde_json::from_slice(bytes) {
        Ok(b) => b,
        Err(e) => {
            return tampered(
                None,
                Problem::MalformedBundle {
                    detail: e.to_string(),
                },
            );
        }
    };
    if bundle.format != BUNDLE_FORMAT {
        let problem = Problem::UnsupportedFormat {
            found: crate::verify::clip(&bundle.format),
            expected: BUNDLE_FORMAT.into(),
        };
        return tampered(None, problem);
    }
    if validate_run_id(&bundle.run_id).is_err() {
        let detail = "the run id is not a valid run id".into();
        return tampered(None, Problem::MalformedBundle { detail });
    }
    let run_id = Some(bundle.run_id.to_string());
    let key = match PublicKey::from_hex(&bundle.public_key) {
        Ok(k) => k,
        Err(e) => {
            let detail = format!("public key: {e}");
            return tampered(run_id, Problem::MalformedBundle { detail });
        }
    };
    if let Some(pinned) = pinned
        && *pinned != key
    {
        let problem = Problem::KeyMismatch {
            pinned: pinned.fingerprint(),
            found: key.fingerprint(),
        };
        return tampered(run_id, problem);
    }
    let entries: Vec<RawEntry<'_>> = bundle
        .entries
        .iter()
        .map(|e| RawEntry {
            raw: e.entry.get(),
            recorded: Some(e.hash),
        })
        .collect();
    let checkpoints: Vec<PlacedCheckpoint> = bundle
        .checkpoints
        .into_iter()
        .map(|checkpoint| PlacedCheckpoint {
            checkpoint,
            position: None,
        })
        .collect();
    verify_parsed(&Parsed {
        run_id: &bundle.run_id,
        entries: &entries,
        checkpoints: &checkpoints,
        key,
        pinned: pinned.is_some(),
        torn_tail: false,
        witness: None,
    })
}

/// A log or bundle loaded for proofs and inspection.
///
/// Loading does not verify; run [`crate::verify_log`] or [`verify_bundle`] for that. Proofs
/// made from tampered evidence do not verify against the genuine signed checkpoints.
#[derive(Clone, Debug)]
pub struct Evidence {
    run_id: String,
    entries: Vec<String>,
    leaves: Vec<Hash32>,
    checkpoints: Vec<Checkpoint>,
}

impl Evidence {
    /// Loads a log file.
    pub fn from_log_file(path: &Path) -> Result<Self, ExportError> {
        let bytes = read(path)?;
        let log = parse_log(&bytes).map_err(|(_, problem)| ExportError::Malformed {
            path: path.to_owned(),
            problem,
        })?;
        Ok(Self::new(
            log.header.run_id.clone(),
            log.entries.iter().map(|e| e.raw),
            log.checkpoints.into_iter().map(|c| c.checkpoint).collect(),
        ))
    }

    /// Loads a bundle.
    pub fn from_bundle(bytes: &[u8]) -> Result<Self, ExportError> {
        let bundle: BundleWire<'_> =
            serde_json::from_slice(bytes).map_err(|e| ExportError::Malformed {
                path: PathBuf::from("<bundle>"),
                problem: Problem::MalformedBundle {
                    detail: e.to_string(),
                },
            })?;
        Ok(Self::new(
            bundle.run_id.to_string(),
            bundle.entries.iter().map(|e| e.entry.get()),
            bundle.checkpoints,
        ))
    }

    /// The run.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The checkpoints, in log order.
    pub fn checkpoints(&self) -> &[Checkpoint] {
        &self.checkpoints
    }

    /// The canonical bytes of entry `seq`.
    pub fn canonical_entry(&self, seq: u64) -> Option<&str> {
        self.entries
            .get(usize::try_from(seq).ok()?)
            .map(String::as_str)
    }

    /// Entry `seq`, parsed (`None` if absent or malformed).
    pub fn entry(&self, seq: u64) -> Option<Entry> {
        serde_json::from_str(self.canonical_entry(seq)?).ok()
    }

    /// Proves that entry `seq` is in the tree of the latest checkpoint (or, if no checkpoint
    /// covers it yet, in the tree of all entries, unsigned).
    pub fn prove_inclusion(&self, seq: u64) -> Result<InclusionReceipt, ProofError> {
        let checkpoint = self
            .checkpoints
            .iter()
            .rev()
            .find(|c| c.tree_size > seq && c.tree_size <= self.len())
            .cloned();
        let size = checkpoint.as_ref().map_or(self.len(), |c| c.tree_size);
        let leaves = self.leaves_up_to(size)?;
        let proof = crate::merkle::inclusion_proof(leaves, seq)?;
        let entry = self
            .canonical_entry(seq)
            .ok_or(ProofError::OutOfRange {
                requested: seq,
                size: self.len(),
            })?
            .to_owned();
        Ok(InclusionReceipt {
            entry,
            proof,
            checkpoint,
        })
    }

    /// Proves that the tree of the first `old_size` entries is a prefix of the tree of the
    /// first `new_size`.
    pub fn prove_consistency(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<ConsistencyProof, ProofError> {
        if old_size > new_size {
            return Err(ProofError::OutOfRange {
                requested: old_size,
                size: new_size,
            });
        }
        crate::merkle::consistency_proof(self.leaves_up_to(new_size)?, old_size)
    }

    /// The Merkle root of the first `size` entries.
    pub fn root(&self, size: u64) -> Result<Hash32, ProofError> {
        Ok(crate::merkle::tree_hash(self.leaves_up_to(size)?))
    }

    fn new<'a>(
        run_id: String,
        raw: impl Iterator<Item = &'a str>,
        checkpoints: Vec<Checkpoint>,
    ) -> Self {
        let entries: Vec<String> = raw.map(str::to_owned).collect();
        let leaves = entries.iter().map(|e| leaf_hash(e.as_bytes())).collect();
        Self {
            run_id,
            entries,
            leaves,
            checkpoints,
        }
    }

    fn leaves_up_to(&self, size: u64) -> Result<&[Hash32], ProofError> {
        usize::try_from(size)
            .ok()
            .and_then(|n| self.leaves.get(..n))
            .ok_or(ProofError::OutOfRange {
                requested: size,
                size: self.len(),
            })
    }
}

/// An entry, its inclusion proof, and the signed checkpoint the proof leads to; what
/// `moat audit --prove SEQ` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionReceipt {
    /// The entry's canonical JSON.
    pub entry: String,
    /// The audit path.
    pub proof: InclusionProof,
    /// The checkpoint whose root the proof leads to (`None`: no checkpoint covers the entry).
    pub checkpoint: Option<Checkpoint>,
}

impl InclusionReceipt {
    /// Checks the receipt on its own: the entry hashes to the proof's leaf, the proof leads to
    /// the checkpoint's root, and the checkpoint is signed by `key`.
    pub fn verify(&self, key: &PublicKey) -> Result<(), ProofError> {
        let malformed = ProofError::Malformed {
            tree_size: self.proof.tree_size,
        };
        let seq = serde_json::from_str::<Entry>(&self.entry).map(|e| e.seq);
        if seq.ok() != Some(self.proof.leaf_index) {
            return Err(malformed);
        }
        if leaf_hash(self.entry.as_bytes()) != self.proof.leaf_hash {
            return Err(ProofError::RootMismatch {
                tree_size: self.proof.tree_size,
            });
        }
        let Some(cp) = &self.checkpoint else {
            return Err(malformed);
        };
        if cp.tree_size != self.proof.tree_size
            || cp.key_id != key.key_id()
            || !cp.signature_valid(key)
        {
            return Err(malformed);
        }
        self.proof.verify(&cp.root)
    }
}

/// Why evidence could not be exported or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// Reading or writing failed.
    #[error("cannot access {}: {source}; check the path and permissions", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The log or bundle cannot be parsed.
    #[error("{} cannot be read as audit evidence: {problem}", path.display())]
    Malformed {
        /// The file (empty for in-memory bundles).
        path: PathBuf,
        /// What is wrong.
        problem: Problem,
    },
    /// The log was signed with another key than the one given.
    #[error("audit log {} was signed by key {log_key_id}, not {key_id}; pass the installation key that wrote it", path.display())]
    WrongKey {
        /// The log.
        path: PathBuf,
        /// Key ID in the log header.
        log_key_id: String,
        /// Key ID given.
        key_id: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleWire<'a> {
    #[serde(borrow)]
    format: Cow<'a, str>,
    #[serde(borrow)]
    run_id: Cow<'a, str>,
    #[serde(borrow)]
    public_key: Cow<'a, str>,
    checkpoints: Vec<Checkpoint>,
    #[serde(borrow)]
    entries: Vec<BundleEntry<'a>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleEntry<'a> {
    #[serde(borrow)]
    entry: &'a RawValue,
    hash: Hash32,
}

fn read(path: &Path) -> Result<Vec<u8>, ExportError> {
    fs::read(path).map_err(|source| ExportError::Io {
        path: path.to_owned(),
        source,
    })
}
