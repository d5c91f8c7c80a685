//! Verification of a log file or a bundle, and the report it produces.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::Path;
use std::path::PathBuf;

use serde::Serialize;

use crate::canonical::EntryView;
use crate::canonical::to_canonical;
use crate::checkpoint::Checkpoint;
use crate::checkpoint::origin;
use crate::keys::PublicKey;
use crate::log::Header;
use crate::log::LOG_FORMAT;
use crate::log::LineWire;
use crate::log::chain_hash;
use crate::merkle::Frontier;
use crate::merkle::Hash32;
use crate::merkle::leaf_hash;

/// The overall outcome of a verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Verdict {
    /// Every entry is intact and covered by the signed closing checkpoint.
    Intact,
    /// Every entry is intact, but the writer never closed the log (it was killed or the machine
    /// crashed): entries after the last checkpoint are not signed.
    Unfinished,
    /// The log or bundle was modified; [`Report::problem`] says where and how.
    Tampered,
}

/// What is wrong with a log or bundle: the first problem found, in log order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Problem {
    /// A line of the log file is not a valid record.
    #[error("line {line} of the log is not a valid record ({detail}): the file was edited")]
    MalformedLine {
        /// 1-based line number.
        line: u64,
        /// What the parser said.
        detail: String,
    },
    /// The bundle is not valid bundle JSON.
    #[error(
        "the bundle is not a valid moat audit bundle ({detail}): it was edited or is not a bundle"
    )]
    MalformedBundle {
        /// What the parser said.
        detail: String,
    },
    /// The format marker is not one this version reads.
    #[error("unsupported format {found:?}; expected {expected:?}: upgrade moat or check the file")]
    UnsupportedFormat {
        /// What the file says.
        found: String,
        /// What this version reads.
        expected: String,
    },
    /// An entry is not a valid entry object.
    #[error("entry at position {position} is not a valid entry ({detail}): it was edited")]
    MalformedEntry {
        /// 0-based position of the entry in the log.
        position: u64,
        /// What the parser said.
        detail: String,
    },
    /// An entry is missing: the next entry has a later `seq`.
    #[error("entry {seq} is missing (the next entry has seq {found}): entries were deleted")]
    MissingEntry {
        /// The missing `seq`.
        seq: u64,
        /// The `seq` found in its place.
        found: u64,
    },
    /// An entry is where another belongs.
    #[error(
        "entry {found} appears where entry {seq} belongs: entries were reordered or duplicated"
    )]
    OutOfOrder {
        /// The `seq` expected at this position.
        seq: u64,
        /// The `seq` found.
        found: u64,
    },
    /// An entry names another run.
    #[error(
        "entry {seq} belongs to run {found:?}, not {expected:?}: it was copied from another log"
    )]
    WrongRunId {
        /// The entry.
        seq: u64,
        /// The log's run.
        expected: String,
        /// The entry's run.
        found: String,
    },
    /// An entry's content does not match its recorded chain hash.
    #[error("entry {seq} was modified: its content does not match its recorded hash")]
    EntryModified {
        /// The entry.
        seq: u64,
    },
    /// An entry's bytes differ from the original only in formatting.
    #[error(
        "entry {seq} is not byte-for-byte the original but matches its hash once put back in canonical form: the file was reformatted (e.g. pretty-printed); verify the original file"
    )]
    NotCanonical {
        /// The entry.
        seq: u64,
    },
    /// The entries covered by a signed checkpoint do not hash to its root or chain value.
    #[error(
        "entries {first_seq}..={last_seq} do not match signed checkpoint {checkpoint} (tree size {tree_size}): at least one of them was modified, inserted or removed"
    )]
    CheckpointMismatch {
        /// 0-based checkpoint index.
        checkpoint: u64,
        /// Its tree size.
        tree_size: u64,
        /// First entry not covered by the previous checkpoint.
        first_seq: u64,
        /// Last entry the checkpoint covers.
        last_seq: u64,
    },
    /// A checkpoint covers more entries than are present.
    #[error(
        "the log was truncated: signed checkpoint {checkpoint} covers {tree_size} entries but only {entries} are present"
    )]
    Truncated {
        /// 0-based checkpoint index.
        checkpoint: u64,
        /// Its tree size.
        tree_size: u64,
        /// Entries present.
        entries: u64,
    },
    /// A checkpoint line sits at the wrong place in the log file.
    #[error(
        "checkpoint {checkpoint} (tree size {tree_size}) sits after {entries_before} entries: records were moved"
    )]
    CheckpointMisplaced {
        /// 0-based checkpoint index.
        checkpoint: u64,
        /// Its tree size.
        tree_size: u64,
        /// How many entries precede it in the file.
        entries_before: u64,
    },
    /// Checkpoints are not in increasing tree-size order.
    #[error(
        "checkpoint {checkpoint} (tree size {tree_size}) comes after one of tree size {previous}: checkpoints were reordered"
    )]
    CheckpointOrder {
        /// 0-based checkpoint index.
        checkpoint: u64,
        /// Its tree size.
        tree_size: u64,
        /// The previous checkpoint's tree size.
        previous: u64,
    },
    /// A checkpoint field is not in its permitted form.
    #[error("checkpoint {checkpoint} has a malformed field: it was edited")]
    MalformedCheckpoint {
        /// 0-based checkpoint index.
        checkpoint: u64,
    },
    /// A checkpoint names another log.
    #[error(
        "checkpoint {checkpoint} is for {found:?}, not {expected:?}: it was copied from another log"
    )]
    WrongOrigin {
        /// 0-based checkpoint index.
        checkpoint: u64,
        /// This log's origin.
        expected: String,
        /// The checkpoint's origin.
        found: String,
    },
    /// A checkpoint was signed by a different key.
    #[error(
        "checkpoint {checkpoint} was signed by key {found}, not by {expected}: it was re-signed with a foreign key"
    )]
    ForeignKey {
        /// 0-based checkpoint index.
        checkpoint: u64,
        /// Key ID of the expected key.
        expected: String,
        /// Key ID the checkpoint names.
        found: String,
    },
    /// A checkpoint's signature does not verify.
    #[error(
        "the signature of checkpoint {checkpoint} is invalid: the checkpoint was altered or forged"
    )]
    BadSignature {
        /// 0-based checkpoint index.
        checkpoint: u64,
    },
    /// The log or bundle carries a different key than the pinned one.
    #[error(
        "the evidence is signed by {found} but {pinned} was expected: it was re-signed with a foreign key, or pass the right key"
    )]
    KeyMismatch {
        /// Fingerprint of the pinned key.
        pinned: String,
        /// Fingerprint (or key ID) of the key in the evidence.
        found: String,
    },
    /// The log ends before a checkpoint kept outside it (a witness): it was rolled back.
    #[error(
        "the log was rolled back: the checkpoint kept outside it covers {tree_size} entries but only {entries} are present"
    )]
    RolledBack {
        /// The witness's tree size.
        tree_size: u64,
        /// Entries present.
        entries: u64,
    },
    /// The entries do not match a checkpoint kept outside the log (a witness).
    #[error(
        "the first {tree_size} entries do not match the checkpoint kept outside the log: the log was rewritten"
    )]
    WitnessMismatch {
        /// The witness's tree size.
        tree_size: u64,
    },
    /// The checkpoint kept outside the log is not validly signed by the key.
    #[error(
        "the checkpoint kept outside the log is not validly signed for this run by the key: the copy was altered"
    )]
    WitnessInvalid,
    /// Something follows the closing checkpoint.
    #[error(
        "data follows the closing checkpoint at position {position}: records were appended after the log was closed"
    )]
    AfterFinal {
        /// Number of entries before the extra data.
        position: u64,
    },
}

/// Status of one checkpoint in a [`Report`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointReport {
    /// 0-based index.
    pub index: u64,
    /// Entries covered.
    pub tree_size: u64,
    /// When it was signed.
    pub ts: String,
    /// Key ID it names.
    pub key_id: String,
    /// Whether it is the closing checkpoint.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Merkle root it signs.
    pub root: Hash32,
    /// Whether the signature verifies with the report's key.
    pub signature_valid: bool,
    /// Whether the entries hash to its root and chain value (`None`: not reached because an
    /// earlier problem stopped verification).
    pub matches_entries: Option<bool>,
}

/// The key a verification used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyReport {
    /// `SHA256:<base64>`.
    pub fingerprint: String,
    /// 16-hex-digit key ID.
    pub key_id: String,
    /// Whether the caller pinned this key (`false`: the key came from the bundle itself, which
    /// proves integrity but not authorship).
    pub pinned: bool,
}

/// The result of verifying a log or bundle; serializable for `--json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The run, if the header could be read.
    pub run_id: Option<String>,
    /// Intact, unfinished or tampered.
    pub verdict: Verdict,
    /// One human-readable sentence describing the verdict.
    pub message: String,
    /// Entries present.
    pub entries: u64,
    /// Entries checked before the first problem (all of them when there is none).
    pub verified_entries: u64,
    /// Whether every verified entry matched its recorded chain hash and the chain value of
    /// every checkpoint reached.
    pub chain_intact: bool,
    /// Hash chain value after the last verified entry.
    pub chain_head: Hash32,
    /// Merkle root over the verified entries.
    pub merkle_root: Hash32,
    /// The key checkpoints were checked against.
    pub key: Option<KeyReport>,
    /// Every checkpoint in the evidence.
    pub checkpoints: Vec<CheckpointReport>,
    /// Timestamp of the first entry.
    pub first_ts: Option<String>,
    /// Timestamp of the last verified entry.
    pub last_ts: Option<String>,
    /// Number of verified entries of each event type.
    pub event_types: BTreeMap<String, u64>,
    /// Whether the last checkpoint covers every entry.
    pub last_checkpoint_covers_all: bool,
    /// Whether the log ends with its closing checkpoint.
    pub finished_cleanly: bool,
    /// Entries after the last valid checkpoint (not covered by a signature).
    pub unsealed_entries: u64,
    /// Whether an incomplete last line (a write cut short by a crash, or one in progress) was
    /// ignored.
    pub torn_tail: bool,
    /// Whether the log's writer was still running (holding the writer lock) when it was read.
    pub writer_active: bool,
    /// The first problem, when the verdict is [`Verdict::Tampered`].
    pub problem: Option<Problem>,
}

impl Report {
    /// Whether the evidence was modified: the CLI exits 1.
    pub fn is_tampered(&self) -> bool {
        self.verdict == Verdict::Tampered
    }

    fn mark_writer_active(&mut self, active: bool) {
        self.writer_active = active;
        if active && self.verdict == Verdict::Unfinished {
            self.message = format!(
                "still being written: {} entries so far, the last {} not yet covered by a signed checkpoint",
                self.entries, self.unsealed_entries
            );
        }
    }

    pub(crate) fn tampered(run_id: Option<String>, problem: Problem) -> Self {
        let mut report = Self::unfinished_empty(run_id, problem.to_string());
        report.verdict = Verdict::Tampered;
        report.chain_intact = false;
        report.problem = Some(problem);
        report
    }

    /// A report for a log with nothing verifiable in it.
    fn unfinished_empty(run_id: Option<String>, message: String) -> Self {
        Self {
            run_id,
            verdict: Verdict::Unfinished,
            message,
            entries: 0,
            verified_entries: 0,
            chain_intact: true,
            chain_head: Hash32::ZERO,
            merkle_root: crate::merkle::empty_root(),
            key: None,
            checkpoints: Vec::new(),
            first_ts: None,
            last_ts: None,
            event_types: BTreeMap::new(),
            last_checkpoint_covers_all: false,
            finished_cleanly: false,
            unsealed_entries: 0,
            torn_tail: false,
            writer_active: false,
            problem: None,
        }
    }
}

/// A human-readable summary, several lines, for `moat audit` without `--json`.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Verdict::Intact => "intact",
            Verdict::Unfinished if self.writer_active => "in progress",
            Verdict::Unfinished => "did not finish cleanly",
            Verdict::Tampered => "TAMPERED",
        };
        writeln!(
            f,
            "run {}: {verdict}",
            self.run_id.as_deref().unwrap_or("(unknown)")
        )?;
        writeln!(f, "  {}", self.message)?;
        let chain = if self.chain_intact {
            "intact"
        } else {
            "broken"
        };
        writeln!(
            f,
            "  entries: {} ({} verified), hash chain {chain}",
            self.entries, self.verified_entries
        )?;
        if let (Some(first), Some(last)) = (&self.first_ts, &self.last_ts) {
            writeln!(f, "  time span: {first} .. {last}")?;
        }
        if self.verified_entries == self.entries {
            writeln!(f, "  merkle root: {}", self.merkle_root)?;
        } else {
            writeln!(
                f,
                "  merkle root of the {} verified entries: {}",
                self.verified_entries, self.merkle_root
            )?;
        }
        if let Some(key) = &self.key {
            let pinned = if key.pinned {
                "pinned"
            } else {
                "taken from the bundle, not pinned"
            };
            writeln!(f, "  key: {} ({pinned})", key.fingerprint)?;
        }
        let valid = self
            .checkpoints
            .iter()
            .filter(|c| c.signature_valid)
            .count();
        writeln!(
            f,
            "  checkpoints: {} ({valid} with a valid signature)",
            self.checkpoints.len()
        )?;
        if let Some(last) = self.checkpoints.last() {
            let kind = if last.is_final { "closing" } else { "periodic" };
            let covers = if self.last_checkpoint_covers_all {
                "covers every entry".to_owned()
            } else {
                format!("covers {} of {} entries", last.tree_size, self.entries)
            };
            writeln!(f, "  last checkpoint: {kind}, {}, {covers}", last.ts)?;
        }
        if self.torn_tail {
            writeln!(
                f,
                "  an incomplete last record (cut short by a crash) was ignored"
            )?;
        }
        Ok(())
    }
}

/// Why a log file could not be read at all (as opposed to being read and found tampered).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The file could not be read.
    #[error("cannot read audit log {}: {source}; check the path and permissions", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A log file (unlike a bundle) does not carry its public key.
    #[error("{} is an audit log, which does not carry its public key; pass the key (signing.pub) to verify it", path.display())]
    KeyRequired {
        /// The file.
        path: PathBuf,
    },
}

/// Verifies a file that is either a bundle or a log file, telling them apart by content; for
/// `moat audit verify FILE [--key PUBKEY]`. A log file needs `pinned`.
pub fn verify_file(path: &Path, pinned: Option<&PublicKey>) -> Result<Report, ReadError> {
    let (bytes, active) = read_log_file(path)?;
    if !bytes.starts_with(b"{\"header\":") {
        return Ok(crate::bundle::verify_bundle(&bytes, pinned));
    }
    let key = pinned.ok_or_else(|| ReadError::KeyRequired {
        path: path.to_owned(),
    })?;
    let mut report = verify_log_inner(&bytes, key, None);
    report.mark_writer_active(active);
    Ok(report)
}

/// Verifies the log file at `path` against the installation's public key.
///
/// Content problems are reported in the [`Report`]; only I/O failures are errors.
///
/// A log whose writer is still running is reported as unfinished with
/// [`Report::writer_active`] set.
pub fn verify_log(path: &Path, key: &PublicKey) -> Result<Report, ReadError> {
    let (bytes, active) = read_log_file(path)?;
    let mut report = verify_log_inner(&bytes, key, None);
    report.mark_writer_active(active);
    Ok(report)
}

/// Verifies the log file at `path` and also checks it against `witness`, a checkpoint of this
/// log kept elsewhere (e.g. the closing checkpoint returned by [`crate::AuditLog::close`],
/// stored in the run's metadata). This detects a log rolled back to an earlier state, which
/// otherwise looks like a writer that was killed.
pub fn verify_log_with_witness(
    path: &Path,
    key: &PublicKey,
    witness: &Checkpoint,
) -> Result<Report, ReadError> {
    let (bytes, active) = read_log_file(path)?;
    let mut report = verify_log_inner(&bytes, key, Some(witness));
    report.mark_writer_active(active);
    Ok(report)
}

/// Reads a log file and tells whether its writer still holds the writer lock.
fn read_log_file(path: &Path) -> Result<(Vec<u8>, bool), ReadError> {
    let io_err = |source| ReadError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::File::open(path).map_err(io_err)?;
    let active = match file.try_lock_shared() {
        Ok(()) => {
            // Only a probe: release at once so a writer starting up never waits on a reader.
            let _ = file.unlock();
            false
        }
        Err(fs::TryLockError::WouldBlock) => true,
        Err(fs::TryLockError::Error(_)) => false,
    };
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut file, &mut bytes).map_err(io_err)?;
    Ok((bytes, active))
}

/// Verifies the bytes of a log file; see [`verify_log`].
pub fn verify_log_bytes(bytes: &[u8], key: &PublicKey) -> Report {
    verify_log_inner(bytes, key, None)
}

fn verify_log_inner(bytes: &[u8], key: &PublicKey, witness: Option<&Checkpoint>) -> Report {
    if !bytes.contains(&b'\n') {
        // Not even the header was completed: the writer died while creating the log.
        if let Some(w) = witness.filter(|w| w.tree_size > 0) {
            let problem = Problem::RolledBack {
                tree_size: w.tree_size,
                entries: 0,
            };
            return Report::tampered(None, problem);
        }
        let mut report = Report::unfinished_empty(
            None,
            "did not finish cleanly: the log has no complete header (its writer was stopped while creating it)".into(),
        );
        report.torn_tail = !bytes.is_empty();
        return report;
    }
    match parse_log(bytes) {
        Ok(log) => {
            if log.header.key_id != key.key_id() {
                let problem = Problem::KeyMismatch {
                    pinned: key.fingerprint(),
                    found: format!("key ID {}", log.header.key_id),
                };
                return Report::tampered(Some(log.header.run_id), problem);
            }
            verify_parsed(&Parsed {
                run_id: &log.header.run_id,
                entries: &log.entries,
                checkpoints: &log.checkpoints,
                key: *key,
                pinned: true,
                torn_tail: log.torn_tail,
                witness,
            })
        }
        Err((run_id, problem)) => Report::tampered(run_id, problem),
    }
}

/// One entry as stored: its canonical bytes and, where the format records it, its chain hash.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawEntry<'a> {
    pub(crate) raw: &'a str,
    pub(crate) recorded: Option<Hash32>,
}

/// A checkpoint and, in a log file, how many entries precede it.
#[derive(Clone, Debug)]
pub(crate) struct PlacedCheckpoint {
    pub(crate) checkpoint: Checkpoint,
    pub(crate) position: Option<u64>,
}

/// Evidence in a form both formats reduce to.
pub(crate) struct Parsed<'a, 'b> {
    pub(crate) run_id: &'b str,
    pub(crate) entries: &'b [RawEntry<'a>],
    pub(crate) checkpoints: &'b [PlacedCheckpoint],
    pub(crate) key: PublicKey,
    pub(crate) pinned: bool,
    pub(crate) torn_tail: bool,
    pub(crate) witness: Option<&'b Checkpoint>,
}

pub(crate) struct ParsedLog<'a> {
    pub(crate) header: Header,
    pub(crate) entries: Vec<RawEntry<'a>>,
    pub(crate) checkpoints: Vec<PlacedCheckpoint>,
    pub(crate) torn_tail: bool,
}

/// Splits a log file into records. A last line without its newline is a write the writer did
/// not finish (a crash) and is ignored; every other line must be a valid record.
pub(crate) fn parse_log(bytes: &[u8]) -> Result<ParsedLog<'_>, (Option<String>, Problem)> {
    let (complete, torn_tail) = match bytes.iter().rposition(|b| *b == b'\n') {
        Some(last) => (
            bytes.get(..=last).unwrap_or_default(),
            last + 1 < bytes.len(),
        ),
        None => (&bytes[..0], !bytes.is_empty()),
    };
    let mut lines = complete.split_inclusive(|b| *b == b'\n');
    let malformed = |line: u64, detail: String| Problem::MalformedLine { line, detail };
    let Some(first) = lines.next() else {
        return Err((None, malformed(1, "the header line is missing".into())));
    };
    let header = serde_json::from_slice::<LineWire<'_>>(trim_newline(first))
        .map_err(|e| e.to_string())
        .and_then(|l| match l {
            LineWire {
                header: Some(h),
                entry: None,
                hash: None,
                checkpoint: None,
            } => Ok(h),
            _ => Err("the first line must be the header".into()),
        })
        .map_err(|d| (None, malformed(1, d)))?;
    let key_id_ok = header.key_id.len() == 16
        && header
            .key_id
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if crate::log::validate_run_id(&header.run_id).is_err()
        || header.origin != origin(&header.run_id)
        || !key_id_ok
    {
        let detail = "the header's run id, origin or key id is invalid".into();
        return Err((None, malformed(1, detail)));
    }
    let run_id = Some(header.run_id.clone());
    if header.format != LOG_FORMAT {
        let problem = Problem::UnsupportedFormat {
            found: clip(&header.format),
            expected: LOG_FORMAT.into(),
        };
        return Err((run_id, problem));
    }
    let mut entries = Vec::with_capacity(complete.len() / 200);
    let mut checkpoints = Vec::new();
    for (i, line) in lines.enumerate() {
        let number = i as u64 + 2;
        if let Some(entry) = fast_entry(trim_newline(line)) {
            entries.push(entry);
            continue;
        }
        let record = serde_json::from_slice::<LineWire<'_>>(trim_newline(line))
            .map_err(|e| (run_id.clone(), malformed(number, e.to_string())))?;
        match record {
            LineWire {
                header: None,
                entry: Some(raw),
                hash: Some(hash),
                checkpoint: None,
            } => entries.push(RawEntry {
                raw: raw.get(),
                recorded: Some(hash),
            }),
            LineWire {
                header: None,
                entry: None,
                hash: None,
                checkpoint: Some(checkpoint),
            } => checkpoints.push(PlacedCheckpoint {
                checkpoint,
                position: Some(entries.len() as u64),
            }),
            _ => {
                let detail = "expected exactly one entry (with its hash) or one checkpoint".into();
                return Err((run_id, malformed(number, detail)));
            }
        }
    }
    Ok(ParsedLog {
        header,
        entries,
        checkpoints,
        torn_tail,
    })
}

/// The verification shared by log files and bundles.
pub(crate) fn verify_parsed(p: &Parsed<'_, '_>) -> Report {
    let key_id = p.key.key_id();
    let mut report = Report {
        verdict: Verdict::Intact,
        entries: p.entries.len() as u64,
        key: Some(KeyReport {
            fingerprint: p.key.fingerprint(),
            key_id: key_id.clone(),
            pinned: p.pinned,
        }),
        checkpoints: p
            .checkpoints
            .iter()
            .enumerate()
            .map(|(i, pc)| {
                let c = &pc.checkpoint;
                CheckpointReport {
                    index: i as u64,
                    tree_size: c.tree_size,
                    ts: c.ts.clone(),
                    key_id: c.key_id.clone(),
                    is_final: c.is_final,
                    root: c.root,
                    signature_valid: c.key_id == key_id
                        && c.fields_well_formed()
                        && c.signature_valid(&p.key),
                    matches_entries: None,
                }
            })
            .collect(),
        torn_tail: p.torn_tail,
        ..Report::unfinished_empty(Some(p.run_id.to_owned()), String::new())
    };
    let mut walk = Walk {
        p,
        last_ts: Cow::Borrowed(""),
        report: &mut report,
        chain: Hash32::ZERO,
        frontier: Frontier::new(),
        next_checkpoint: 0,
        sealed: 0,
        final_seen: false,
        chain_broken: false,
    };
    let outcome = walk.run();
    let (chain, root, sealed, final_seen, chain_broken) = (
        walk.chain,
        walk.frontier.root(),
        walk.sealed,
        walk.final_seen,
        walk.chain_broken,
    );
    let last_ts = clip(&walk.last_ts);
    report.chain_intact = !chain_broken;
    if report.first_ts.is_some() {
        report.last_ts = Some(last_ts);
    }
    report.chain_head = chain;
    report.merkle_root = root;
    report.last_checkpoint_covers_all = p
        .checkpoints
        .last()
        .is_some_and(|c| c.checkpoint.tree_size == report.entries);
    match outcome {
        Err(problem) => {
            report.verdict = Verdict::Tampered;
            report.message = problem.to_string();
            report.problem = Some(problem);
        }
        Ok(()) => {
            let n = report.entries;
            report.verified_entries = n;
            report.unsealed_entries = n - sealed;
            report.finished_cleanly = final_seen && !p.torn_tail;
            if report.finished_cleanly {
                report.verdict = Verdict::Intact;
                report.message = format!(
                    "intact: {n} entries, sealed by the closing checkpoint signed with {}",
                    p.key.fingerprint()
                );
            } else {
                report.verdict = Verdict::Unfinished;
                report.message = if n == 0 {
                    "did not finish cleanly (no closing checkpoint): the log has no entries".into()
                } else if report.unsealed_entries == 0 {
                    format!(
                        "did not finish cleanly (no closing checkpoint): entries are intact up to entry {}, all covered by a signed checkpoint",
                        n - 1
                    )
                } else {
                    format!(
                        "did not finish cleanly (no closing checkpoint): entries are intact up to entry {}; the last {} are not covered by a signed checkpoint",
                        n - 1,
                        report.unsealed_entries
                    )
                };
            }
        }
    }
    report
}

struct Walk<'r, 'a, 'b> {
    p: &'r Parsed<'a, 'b>,
    last_ts: Cow<'a, str>,
    report: &'r mut Report,
    chain: Hash32,
    frontier: Frontier,
    next_checkpoint: usize,
    sealed: u64,
    final_seen: bool,
    chain_broken: bool,
}

impl<'a> Walk<'_, 'a, '_> {
    fn run(&mut self) -> Result<(), Problem> {
        let cps = self.p.checkpoints;
        for (i, pair) in cps.windows(2).enumerate() {
            if let [a, b] = pair
                && b.checkpoint.tree_size < a.checkpoint.tree_size
            {
                return Err(Problem::CheckpointOrder {
                    checkpoint: i as u64 + 1,
                    tree_size: b.checkpoint.tree_size,
                    previous: a.checkpoint.tree_size,
                });
            }
        }
        if let Some(w) = self.p.witness {
            let genuine = w.fields_well_formed()
                && w.origin == origin(self.p.run_id)
                && w.key_id == self.p.key.key_id()
                && w.signature_valid(&self.p.key);
            if !genuine {
                return Err(Problem::WitnessInvalid);
            }
        }
        self.checkpoints_at(0)?;
        for (i, e) in self.p.entries.iter().enumerate() {
            let position = i as u64;
            self.entry(position, e)?;
            self.report.verified_entries = position + 1;
            self.checkpoints_at(position + 1)?;
        }
        if let Some(w) = self
            .p
            .witness
            .filter(|w| w.tree_size > self.p.entries.len() as u64)
        {
            return Err(Problem::RolledBack {
                tree_size: w.tree_size,
                entries: self.p.entries.len() as u64,
            });
        }
        if let Some(pc) = cps.get(self.next_checkpoint) {
            return Err(Problem::Truncated {
                checkpoint: self.next_checkpoint as u64,
                tree_size: pc.checkpoint.tree_size,
                entries: self.p.entries.len() as u64,
            });
        }
        if self.final_seen && self.p.torn_tail {
            return Err(Problem::AfterFinal {
                position: self.p.entries.len() as u64,
            });
        }
        Ok(())
    }

    fn entry(&mut self, position: u64, e: &RawEntry<'a>) -> Result<(), Problem> {
        let view: EntryView<'a> =
            serde_json::from_str(e.raw).map_err(|err| Problem::MalformedEntry {
                position,
                detail: err.to_string(),
            })?;
        if view.seq != position {
            return Err(self.misplaced(position, view.seq));
        }
        if view.run_id != self.p.run_id {
            return Err(Problem::WrongRunId {
                seq: position,
                expected: self.p.run_id.to_owned(),
                found: clip(&view.run_id),
            });
        }
        if self.final_seen {
            return Err(Problem::AfterFinal { position });
        }
        if position == 0 {
            self.report.first_ts = Some(clip(&view.ts));
        }
        if let Some(count) = self.report.event_types.get_mut(view.event_type.as_ref()) {
            *count += 1;
        } else {
            self.report.event_types.insert(clip(&view.event_type), 1);
        }
        self.last_ts = view.ts;
        let chain = chain_hash(&self.chain, e.raw.as_bytes());
        if let Some(recorded) = e.recorded.filter(|r| *r != chain) {
            self.chain_broken = true;
            let reformatted = serde_json::from_str::<serde_json::Value>(e.raw)
                .is_ok_and(|v| chain_hash(&self.chain, &to_canonical(&v)) == recorded);
            return Err(if reformatted {
                Problem::NotCanonical { seq: position }
            } else {
                Problem::EntryModified { seq: position }
            });
        }
        self.chain = chain;
        self.frontier.push(leaf_hash(e.raw.as_bytes()));
        Ok(())
    }

    /// Tells a deletion from a reordering: if the expected `seq` turns up later, entries were
    /// moved; otherwise it is gone.
    fn misplaced(&self, position: u64, found: u64) -> Problem {
        let later = self
            .p
            .entries
            .iter()
            .skip(
                usize::try_from(position)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1),
            )
            .any(|e| serde_json::from_str::<EntryView<'_>>(e.raw).is_ok_and(|v| v.seq == position));
        if found > position && !later {
            Problem::MissingEntry {
                seq: position,
                found,
            }
        } else {
            Problem::OutOfOrder {
                seq: position,
                found,
            }
        }
    }

    fn checkpoints_at(&mut self, size: u64) -> Result<(), Problem> {
        if let Some(w) = self.p.witness.filter(|w| w.tree_size == size)
            && (w.root != self.frontier.root() || w.chain != self.chain)
        {
            return Err(Problem::WitnessMismatch { tree_size: size });
        }
        while let Some(pc) = self.p.checkpoints.get(self.next_checkpoint) {
            if pc.checkpoint.tree_size != size {
                break;
            }
            let index = self.next_checkpoint;
            self.checkpoint(index as u64, pc)?;
            if let Some(r) = self.report.checkpoints.get_mut(index) {
                r.matches_entries = Some(true);
            }
            self.next_checkpoint += 1;
            self.sealed = size;
        }
        Ok(())
    }

    fn checkpoint(&mut self, index: u64, pc: &PlacedCheckpoint) -> Result<(), Problem> {
        let c = &pc.checkpoint;
        if self.final_seen {
            return Err(Problem::AfterFinal {
                position: c.tree_size,
            });
        }
        if !c.fields_well_formed() {
            return Err(Problem::MalformedCheckpoint { checkpoint: index });
        }
        let expected_origin = origin(self.p.run_id);
        if c.origin != expected_origin {
            return Err(Problem::WrongOrigin {
                checkpoint: index,
                expected: expected_origin,
                found: clip(&c.origin),
            });
        }
        let key_id = self.p.key.key_id();
        if c.key_id != key_id {
            return Err(Problem::ForeignKey {
                checkpoint: index,
                expected: key_id,
                found: c.key_id.clone(),
            });
        }
        // Checked once for the report already (same key, well-formed fields).
        let signed = self
            .report
            .checkpoints
            .get(usize::try_from(index).unwrap_or(usize::MAX))
            .is_some_and(|r| r.signature_valid);
        if !signed {
            return Err(Problem::BadSignature { checkpoint: index });
        }
        if let Some(position) = pc.position
            && position != c.tree_size
        {
            return Err(Problem::CheckpointMisplaced {
                checkpoint: index,
                tree_size: c.tree_size,
                entries_before: position,
            });
        }
        if c.root != self.frontier.root() || c.chain != self.chain {
            if let Some(r) = self.report.checkpoints.get_mut(index as usize) {
                r.matches_entries = Some(false);
            }
            self.chain_broken |= c.chain != self.chain;
            return Err(Problem::CheckpointMismatch {
                checkpoint: index,
                tree_size: c.tree_size,
                first_seq: self.sealed,
                last_seq: c.tree_size.saturating_sub(1),
            });
        }
        self.final_seen = c.is_final;
        Ok(())
    }
}

/// Splits an entry line in the exact layout the writer produces without a JSON pass over it;
/// the entry itself is still parsed strictly during verification. Anything else falls back to
/// the general parser.
fn fast_entry(line: &[u8]) -> Option<RawEntry<'_>> {
    const PREFIX: &[u8] = b"{\"entry\":";
    const MIDDLE: &[u8] = b",\"hash\":\"";
    const SUFFIX: &[u8] = b"\"}";
    let rest = line.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (rest, hex) = rest.split_at_checked(rest.len().checked_sub(64)?)?;
    let raw = rest.strip_suffix(MIDDLE)?;
    let recorded = Hash32::from_hex(std::str::from_utf8(hex).ok()?)?;
    Some(RawEntry {
        raw: std::str::from_utf8(raw).ok()?,
        recorded: Some(recorded),
    })
}

/// Bounds attacker-chosen text quoted in a problem.
pub(crate) fn clip(text: &str) -> String {
    const MAX: usize = 128;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        text.chars().take(MAX).chain("…".chars()).collect()
    }
}

fn trim_newline(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}
