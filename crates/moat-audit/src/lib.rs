//! moat-audit: the tamper-evident, signed, provable record of a moat run.
//!
//! The run's supervisor embeds this crate (through the `moat_core::audit::AuditSink` adapter in
//! `moat-cli`) as the single writer of the run's log; `moat audit` uses it to verify a log,
//! export a bundle, print proofs and show the installation key; anyone can use it to verify an
//! exported bundle offline. It is plain synchronous Rust: it knows nothing about HTTP, Docker,
//! tokio or the command line, reads no environment variables, prints nothing and spawns no
//! threads (a supervisor that wants time-based checkpoints during quiet periods calls
//! [`AuditLog::checkpoint_if_due`] from its own timer).
//!
//! # Example
//!
//! ```
//! use moat_audit::{AuditKey, AuditLog, LogOptions, Verdict};
//! use serde_json::json;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let home = dir.path();
//! // The supervisor: one writer per run.
//! let key = AuditKey::load_or_create(&home.join("audit/signing.key"))?;
//! let log = AuditLog::create(&home.join("audit.db"), "run_0123456789ab", key.clone(), LogOptions::default())?;
//! log.append("run.created", json!({"image": "alpine:3", "runtime": "docker"}))?;
//! log.append("container.exited", json!({"exit_code": 0}))?;
//! let closing = log.close()?;
//!
//! // `moat audit`: verify against the installation key, prove an entry, export a bundle.
//! let public = key.public_key();
//! let report = moat_audit::verify_log(log.path(), &public)?;
//! assert_eq!(report.verdict, Verdict::Intact);
//! let receipt = moat_audit::Evidence::from_log_file(log.path())?.prove_inclusion(1)?;
//! receipt.verify(&public)?;
//! let bundle = moat_audit::export_bundle(log.path(), &public)?;
//!
//! // Anyone, offline, with the pinned public key.
//! let report = moat_audit::verify_bundle(&bundle, Some(&public));
//! assert!(!report.is_tampered());
//! assert_eq!(report.checkpoints.last().map(|c| c.root), Some(closing.root));
//! # Ok(())
//! # }
//! ```
//!
//! # Entries and canonical JSON
//!
//! An entry is a JSON object with exactly the keys `data`, `run_id`, `seq`, `ts`, `type`. It is
//! hashed in **canonical JSON**, defined here as: UTF-8; no whitespace outside strings; object
//! members sorted by key in ascending order of the keys' UTF-8 bytes; strings escaped as
//! serde_json does (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other characters below U+0020 as
//! `\u00xx` with lowercase hex, everything else literal, including `/` and non-ASCII);
//! integers that fit in 64 bits in plain decimal; other numbers in serde_json's shortest
//! round-trip float form (e.g. `1.5`, `1e300`); `true`, `false`, `null`. `seq` counts from 0
//! and is the entry's Merkle leaf index; `ts` is RFC 3339 UTC with microseconds
//! (`2026-01-02T03:04:05.000006Z`); the run ID is 1–128 characters of `A-Za-z0-9._-`.
//!
//! # Hashes
//!
//! * Chain: `chain_0 = 32 zero bytes`, `chain_{n+1} = SHA-256(chain_n || canonical(entry_n))`.
//! * Merkle tree (RFC 6962): leaf `SHA-256(0x00 || canonical(entry))`, node
//!   `SHA-256(0x01 || left || right)`, empty tree `SHA-256("")`.
//! * Checkpoints sign both the Merkle root and the chain value; see [`Checkpoint`] for the exact
//!   signed text. Keys are Ed25519 ([`AuditKey`], [`PublicKey`]).
//!
//! # Bundles (`moat-audit-bundle/1`)
//!
//! One compact JSON object: `format`, `run_id`, `public_key` (64 hex digits), `checkpoints`
//! and `entries` (`{"entry":<canonical entry>,"hash":<chain hex>}`), written by
//! [`export_bundle`] and checked by [`verify_bundle`], optionally against a pinned key. Every
//! byte of a bundle is covered: hex is lowercase only, entries are hashed as embedded, and all
//! other fields are either signed or cross-checked.
//!
//! # The log file (`moat-audit-log/1`)
//!
//! JSON Lines, appended only, mode 0600. Line 1 is
//! `{"header":{"format":"moat-audit-log/1","key_id":…,"origin":"moat/<run>","run_id":…}}`;
//! every other line is either `{"entry":<canonical entry>,"hash":"<chain hex>"}` or
//! `{"checkpoint":{…}}`. Checkpoints are written every [`LogOptions::checkpoint_every`] entries
//! or [`LogOptions::checkpoint_interval`], and at [`AuditLog::close`] (marked `final`). Each
//! record is written with a single `write(2)`; checkpoints `fsync`. A last line without its
//! newline is a write cut short by a crash and is ignored. A log without a closing checkpoint is
//! reported as [`Verdict::Unfinished`] ("did not finish cleanly"), not as tampered.
//!
//! # Limits
//!
//! Evidence that an attacker rolls back to an earlier consistent state (dropping the tail
//! *and* every checkpoint that covers it) is indistinguishable from a writer that was killed at
//! that point; it is reported as unfinished. Keep the closing [`Checkpoint`] returned by
//! [`AuditLog::close`] somewhere else (e.g. the run's metadata) and verify with
//! [`verify_log_with_witness`] to detect that. Entries after the last checkpoint of an
//! unfinished log are not signed, so someone with write access could rewrite them consistently;
//! [`Report::unsealed_entries`] says how many there are. Checkpoints are not anchored anywhere
//! outside the installation (no external witness or transparency log).
#![warn(missing_docs)]

mod bundle;
mod canonical;
mod checkpoint;
mod keys;
mod log;
mod merkle;
mod verify;

pub use bundle::BUNDLE_FORMAT;
pub use bundle::Evidence;
pub use bundle::ExportError;
pub use bundle::InclusionReceipt;
pub use bundle::export_bundle;
pub use bundle::export_bundle_to;
pub use bundle::verify_bundle;
pub use canonical::Entry;
pub use canonical::to_canonical;
pub use canonical::write_canonical;
pub use checkpoint::CHECKPOINT_CONTEXT;
pub use checkpoint::Checkpoint;
pub use checkpoint::SignatureHex;
pub use checkpoint::origin;
pub use keys::AuditKey;
pub use keys::KeyError;
pub use keys::KeyInfo;
pub use keys::PublicKey;
pub use keys::key_info;
pub use keys::public_key_path;
pub use log::AuditLog;
pub use log::Clock;
pub use log::LOG_FORMAT;
pub use log::LogError;
pub use log::LogOptions;
pub use log::MAX_ENTRY_BYTES;
pub use log::SystemClock;
pub use merkle::ConsistencyProof;
pub use merkle::Frontier;
pub use merkle::Hash32;
pub use merkle::InclusionProof;
pub use merkle::ProofError;
pub use merkle::Rfc6962Hasher;
pub use merkle::empty_root;
pub use merkle::leaf_hash;
pub use merkle::node_hash;
pub use verify::CheckpointReport;
pub use verify::KeyReport;
pub use verify::Problem;
pub use verify::ReadError;
pub use verify::Report;
pub use verify::Verdict;
pub use verify::verify_file;
pub use verify::verify_log;
pub use verify::verify_log_bytes;
pub use verify::verify_log_with_witness;
