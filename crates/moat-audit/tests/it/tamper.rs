//! Every kind of tampering is detected, each with its own specific problem.
//!
//! The fixture: 12 entries, checkpoints after 5, 10 and (final) 12 entries. Log lines: header,
//! e0..e4, cp0, e5..e9, cp1, e10, e11, cp2.

use moat_audit::AuditKey;
use moat_audit::Checkpoint;
use moat_audit::Problem;
use moat_audit::Report;
use moat_audit::Verdict;
use moat_audit::export_bundle;
use moat_audit::verify_bundle;
use moat_audit::verify_log;
use serde_json::Value;

use crate::common::*;

fn fixture() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_log(dir.path(), 12, 5);
    (dir, path)
}

fn verify(path: &std::path::Path) -> Report {
    verify_log(path, &key().public_key()).expect("readable")
}

/// Exports the fixture's bundle, lets `edit` change it, and returns the problem a pinned
/// verification names.
fn edit_bundle(path: &std::path::Path, edit: impl FnOnce(&mut Value)) -> Problem {
    let bundle = export_bundle(path, &key().public_key()).expect("export");
    let mut value: Value = serde_json::from_slice(&bundle).expect("json");
    edit(&mut value);
    let edited = serde_json::to_vec(&value).expect("serialize");
    tampered(&verify_bundle(&edited, Some(&key().public_key()))).clone()
}

fn tampered(report: &Report) -> &Problem {
    assert_eq!(report.verdict, Verdict::Tampered, "{}", report.message);
    assert!(report.is_tampered());
    report.problem.as_ref().expect("a problem")
}

/// Recomputes every recorded chain hash from the entries, as an attacker who knows the format
/// would after editing an entry.
fn rehash(lines: &mut [String]) {
    let mut chain = [0u8; 32];
    for line in lines.iter_mut() {
        let Some(rest) = line.strip_prefix("{\"entry\":") else {
            continue;
        };
        let entry = &rest[..rest.len() - ",\"hash\":\"\"}".len() - 64];
        let mut h = sha2_chain(&chain, entry.as_bytes());
        std::mem::swap(&mut chain, &mut h);
        *line = format!("{{\"entry\":{entry},\"hash\":\"{}\"}}", hex::encode(chain));
    }
}

fn sha2_chain(prev: &[u8; 32], entry: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(prev);
    h.update(entry);
    h.finalize().into()
}

#[test]
fn edited_entry_is_named() {
    let (_dir, path) = fixture();
    let mut lines = lines(&path);
    let i = entry_line(&lines, 2);
    lines[i] = lines[i].replace("item/2", "item/X");
    write_lines(&path, &lines);
    let report = verify(&path);
    assert_eq!(tampered(&report), &Problem::EntryModified { seq: 2 });
    assert_eq!(report.verified_entries, 2);
    assert!(!report.chain_intact);
    assert!(
        report.message.contains("entry 2 was modified"),
        "{}",
        report.message
    );
}

#[test]
fn edited_entry_with_recomputed_hashes_breaks_the_checkpoint() {
    let (_dir, path) = fixture();
    let mut lines = lines(&path);
    let i = entry_line(&lines, 7);
    lines[i] = lines[i].replace("item/7", "item/X");
    rehash(&mut lines);
    write_lines(&path, &lines);
    let report = verify(&path);
    assert_eq!(
        tampered(&report),
        &Problem::CheckpointMismatch {
            checkpoint: 1,
            tree_size: 10,
            first_seq: 5,
            last_seq: 9
        }
    );
    assert_eq!(report.checkpoints[0].matches_entries, Some(true));
    assert_eq!(report.checkpoints[1].matches_entries, Some(false));
    assert!(!report.chain_intact);
}

#[test]
fn deleted_entry_is_named() {
    let (_dir, path) = fixture();
    let mut lines = lines(&path);
    lines.remove(entry_line(&lines, 3));
    write_lines(&path, &lines);
    assert_eq!(
        tampered(&verify(&path)),
        &Problem::MissingEntry { seq: 3, found: 4 }
    );
}

#[test]
fn swapped_entries_are_named() {
    let (_dir, path) = fixture();
    let mut lines = lines(&path);
    let (a, b) = (entry_line(&lines, 3), entry_line(&lines, 4));
    lines.swap(a, b);
    write_lines(&path, &lines);
    assert_eq!(
        tampered(&verify(&path)),
        &Problem::OutOfOrder { seq: 3, found: 4 }
    );
}

#[test]
fn tail_truncated_under_the_last_checkpoint_is_named() {
    let (_dir, path) = fixture();
    let mut lines = lines(&path);
    // Drop e10 and e11 but keep the closing checkpoint that covers them.
    let first = entry_line(&lines, 10);
    lines.drain(first..first + 2);
    write_lines(&path, &lines);
    let report = verify(&path);
    assert_eq!(
        tampered(&report),
        &Problem::Truncated {
            checkpoint: 2,
            tree_size: 12,
            entries: 10
        }
    );
    assert!(report.message.contains("truncated"), "{}", report.message);
}

#[test]
fn checkpoint_resigned_with_a_foreign_key_is_named() {
    let (_dir, path) = fixture();
    let mut lines = lines(&path);
    let i = entry_line(&lines, 1);
    lines[i] = lines[i].replace("item/1", "item/X");
    rehash(&mut lines);
    resign_checkpoints(&mut lines, &foreign_key(), None);
    write_lines(&path, &lines);
    let report = verify(&path);
    assert_eq!(
        tampered(&report),
        &Problem::ForeignKey {
            checkpoint: 0,
            expected: key().public_key().key_id(),
            found: foreign_key().public_key().key_id(),
        }
    );
    assert!(report.checkpoints.iter().all(|c| !c.signature_valid));
}

#[test]
fn checkpoint_resigned_with_a_foreign_key_under_our_key_id_has_a_bad_signature() {
    let (_dir, path) = fixture();
    let mut lines = lines(&path);
    let i = entry_line(&lines, 1);
    lines[i] = lines[i].replace("item/1", "item/X");
    rehash(&mut lines);
    resign_checkpoints(
        &mut lines,
        &foreign_key(),
        Some(key().public_key().key_id()),
    );
    write_lines(&path, &lines);
    assert_eq!(
        tampered(&verify(&path)),
        &Problem::BadSignature { checkpoint: 0 }
    );
}

#[test]
fn writer_killed_without_close_is_unfinished_not_tampered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    {
        let log = moat_audit::AuditLog::create(&path, RUN, key(), options(5)).expect("create");
        for i in 0..7 {
            let (t, d) = event(i);
            log.append(t, d).expect("append");
        }
        let live = verify(&path);
        assert_eq!(live.verdict, Verdict::Unfinished, "{}", live.message);
        assert!(live.writer_active);
        assert!(
            live.message.contains("still being written"),
            "{}",
            live.message
        );
        // Dropped without close: as if the supervisor was killed.
    }
    let report = verify(&path);
    assert_eq!(report.verdict, Verdict::Unfinished, "{}", report.message);
    assert!(!report.writer_active);
    assert!(!report.is_tampered());
    assert!(report.problem.is_none());
    assert!(!report.finished_cleanly);
    assert!(!report.last_checkpoint_covers_all);
    assert_eq!(report.verified_entries, 7);
    assert_eq!(report.unsealed_entries, 2);
    assert!(
        report.message.contains("did not finish cleanly"),
        "{}",
        report.message
    );
    assert!(
        report.message.contains("intact up to entry 6"),
        "{}",
        report.message
    );

    // A write cut short mid-line is ignored as a crash artefact.
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.extend_from_slice(b"{\"entry\":{\"data\":{\"i\":7");
    std::fs::write(&path, &bytes).expect("write");
    let report = verify(&path);
    assert_eq!(report.verdict, Verdict::Unfinished, "{}", report.message);
    assert!(report.torn_tail);
    assert_eq!(report.entries, 7);
}

#[test]
fn rollback_to_an_earlier_checkpoint_looks_like_a_crash() {
    // Documented limitation: cutting the file right after a checkpoint is indistinguishable from
    // a writer killed there. It is never reported as intact.
    let (_dir, path) = fixture();
    let mut lines = lines(&path);
    let cut = entry_line(&lines, 10);
    lines.truncate(cut);
    write_lines(&path, &lines);
    let report = verify(&path);
    assert_eq!(report.verdict, Verdict::Unfinished, "{}", report.message);
    assert!(!report.finished_cleanly);
}

#[test]
fn rollback_is_detected_with_the_closing_checkpoint_kept_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    let log = moat_audit::AuditLog::create(&path, RUN, key(), options(5)).expect("create");
    for i in 0..12 {
        let (t, d) = event(i);
        log.append(t, d).expect("append");
    }
    let witness = log.close().expect("close");
    assert_eq!(log.last_checkpoint(), Some(witness.clone()));
    let pk = key().public_key();
    let intact = moat_audit::verify_log_with_witness(&path, &pk, &witness).expect("readable");
    assert_eq!(intact.verdict, Verdict::Intact, "{}", intact.message);

    let mut lines = lines(&path);
    let cut = entry_line(&lines, 10);
    lines.truncate(cut);
    write_lines(&path, &lines);
    let report = moat_audit::verify_log_with_witness(&path, &pk, &witness).expect("readable");
    assert_eq!(
        tampered(&report),
        &Problem::RolledBack {
            tree_size: 12,
            entries: 10
        }
    );

    let mut altered = witness;
    altered.tree_size = 10;
    let report = moat_audit::verify_log_with_witness(&path, &pk, &altered).expect("readable");
    assert_eq!(tampered(&report), &Problem::WitnessInvalid);
}

#[test]
fn appended_entry_after_close_is_detected() {
    let (_dir, path) = fixture();
    let mut lines = lines(&path);
    let extra = lines[entry_line(&lines, 11)].replace("\"seq\":11", "\"seq\":12");
    lines.push(extra);
    rehash(&mut lines);
    write_lines(&path, &lines);
    assert_eq!(
        tampered(&verify(&path)),
        &Problem::AfterFinal { position: 12 }
    );
}

#[test]
fn log_cut_inside_its_header_is_unfinished() {
    let (_dir, path) = fixture();
    let bytes = std::fs::read(&path).expect("read");
    for len in [0, 10] {
        std::fs::write(&path, &bytes[..len]).expect("write");
        let report = verify(&path);
        assert_eq!(report.verdict, Verdict::Unfinished, "{}", report.message);
        assert_eq!(report.entries, 0);
        assert_eq!(report.torn_tail, len > 0);
    }
}

#[test]
fn garbage_line_is_named_by_line_number() {
    let (_dir, path) = fixture();
    let mut lines = lines(&path);
    lines[4] = "not json".into();
    write_lines(&path, &lines);
    assert!(matches!(
        tampered(&verify(&path)),
        Problem::MalformedLine { line: 5, .. }
    ));
}

#[test]
fn edited_bundle_entry_is_named() {
    let (_dir, path) = fixture();
    let bundle = export_bundle(&path, &key().public_key()).expect("export");
    let text = String::from_utf8(bundle).expect("utf-8");
    let edited = text.replacen("item/4", "item/5", 1);
    assert_ne!(edited, text);
    let report = verify_bundle(edited.as_bytes(), Some(&key().public_key()));
    assert_eq!(tampered(&report), &Problem::EntryModified { seq: 4 });
}

#[test]
fn reformatted_bundle_is_told_apart_from_an_edited_one() {
    let (_dir, path) = fixture();
    let bundle = export_bundle(&path, &key().public_key()).expect("export");
    let value: Value = serde_json::from_slice(&bundle).expect("json");
    let pretty = serde_json::to_vec_pretty(&value).expect("serialize");
    let report = verify_bundle(&pretty, Some(&key().public_key()));
    assert_eq!(tampered(&report), &Problem::NotCanonical { seq: 0 });
    assert!(report.message.contains("reformatted"), "{}", report.message);
}

#[test]
fn bundle_tail_truncated_under_the_last_checkpoint_is_named() {
    let (_dir, path) = fixture();
    let problem = edit_bundle(&path, |value| {
        let entries = value["entries"].as_array_mut().expect("entries");
        entries.truncate(11);
    });
    assert_eq!(
        problem,
        Problem::Truncated {
            checkpoint: 2,
            tree_size: 12,
            entries: 11
        }
    );
}

#[test]
fn bundle_resigned_with_a_foreign_key_fails_against_the_pinned_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The attacker rewrites history with their own key and ships their public key along.
    let forged_log = write_log_with(dir.path(), 12, 5, foreign_key());
    let forged = export_bundle(&forged_log, &foreign_key().public_key()).expect("export");
    let report = verify_bundle(&forged, Some(&key().public_key()));
    assert_eq!(
        tampered(&report),
        &Problem::KeyMismatch {
            pinned: key().public_key().fingerprint(),
            found: foreign_key().public_key().fingerprint(),
        }
    );
    // Without a pinned key the bundle is self-consistent, and the report says whose key it is.
    let unpinned = verify_bundle(&forged, None);
    assert_eq!(unpinned.verdict, Verdict::Intact, "{}", unpinned.message);
    let key_report = unpinned.key.expect("key");
    assert!(!key_report.pinned);
    assert_eq!(
        key_report.fingerprint,
        foreign_key().public_key().fingerprint()
    );
}

#[test]
fn bundle_with_one_foreign_checkpoint_is_named() {
    let (_dir, path) = fixture();
    let problem = edit_bundle(&path, |value| {
        let cp: Checkpoint =
            serde_json::from_value(value["checkpoints"][1].clone()).expect("checkpoint");
        let resigned = Checkpoint::sign(
            &foreign_key(),
            RUN,
            cp.tree_size,
            cp.root,
            cp.chain,
            cp.ts.clone(),
            cp.is_final,
        );
        value["checkpoints"][1] = serde_json::to_value(&resigned).expect("serialize");
    });
    assert_eq!(
        problem,
        Problem::ForeignKey {
            checkpoint: 1,
            expected: key().public_key().key_id(),
            found: foreign_key().public_key().key_id(),
        }
    );
}

/// Replaces every checkpoint line with one that commits to the current (edited) entries, signed
/// by `signer`, optionally claiming another key ID.
fn resign_checkpoints(lines: &mut [String], signer: &AuditKey, claim_key_id: Option<String>) {
    let mut frontier = moat_audit::Frontier::new();
    let mut chain = moat_audit::Hash32::ZERO;
    for line in lines.iter_mut() {
        if let Some(rest) = line.strip_prefix("{\"entry\":") {
            let entry = &rest[..rest.len() - ",\"hash\":\"\"}".len() - 64];
            frontier.push(moat_audit::leaf_hash(entry.as_bytes()));
            chain = moat_audit::Hash32(sha2_chain(&chain.0, entry.as_bytes()));
        } else if line.starts_with("{\"checkpoint\":") {
            let value: Value = serde_json::from_str(line).expect("json");
            let old: Checkpoint =
                serde_json::from_value(value["checkpoint"].clone()).expect("checkpoint");
            let mut cp = Checkpoint::sign(
                signer,
                RUN,
                frontier.size(),
                frontier.root(),
                chain,
                old.ts,
                old.is_final,
            );
            if let Some(id) = &claim_key_id {
                cp.key_id = id.clone();
            }
            *line =
                serde_json::to_string(&serde_json::json!({ "checkpoint": cp })).expect("serialize");
        }
    }
}

#[test]
fn entry_copied_from_another_run_is_named() {
    let (_dir, path) = fixture();
    let mut lines = lines(&path);
    let i = entry_line(&lines, 6);
    lines[i] = lines[i].replace(RUN, "run_ffffffffffff");
    write_lines(&path, &lines);
    assert_eq!(
        tampered(&verify(&path)),
        &Problem::WrongRunId {
            seq: 6,
            expected: RUN.into(),
            found: "run_ffffffffffff".into()
        }
    );
}

#[test]
fn moved_checkpoint_line_is_named() {
    let (_dir, path) = fixture();
    let mut lines = lines(&path);
    let cp = entry_line(&lines, 5) - 1;
    assert!(lines[cp].starts_with("{\"checkpoint\":"));
    lines.swap(cp, cp + 1);
    write_lines(&path, &lines);
    assert_eq!(
        tampered(&verify(&path)),
        &Problem::CheckpointMisplaced {
            checkpoint: 0,
            tree_size: 5,
            entries_before: 6
        }
    );
}

#[test]
fn reordered_bundle_checkpoints_are_named() {
    let (_dir, path) = fixture();
    let problem = edit_bundle(&path, |value| {
        value["checkpoints"]
            .as_array_mut()
            .expect("checkpoints")
            .swap(0, 1);
    });
    assert_eq!(
        problem,
        Problem::CheckpointOrder {
            checkpoint: 1,
            tree_size: 5,
            previous: 10
        }
    );
}

#[test]
fn checkpoint_from_another_run_is_named() {
    let (dir, path) = fixture();
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).expect("mkdir");
    let other = other_dir.join("audit.db");
    let log = moat_audit::AuditLog::create(&other, "run_ffffffffffff", key(), options(5))
        .expect("create");
    for i in 0..5 {
        let (t, d) = event(i);
        log.append(t, d).expect("append");
    }
    let foreign_cp = log.last_checkpoint().expect("checkpoint after 5");
    let problem = edit_bundle(&path, |value| {
        value["checkpoints"][0] = serde_json::to_value(&foreign_cp).expect("serialize");
    });
    assert_eq!(
        problem,
        Problem::WrongOrigin {
            checkpoint: 0,
            expected: format!("moat/{RUN}"),
            found: "moat/run_ffffffffffff".into()
        }
    );
}

#[test]
fn checkpoint_field_with_a_line_break_is_named() {
    let (_dir, path) = fixture();
    let problem = edit_bundle(&path, |value| {
        let ts = value["checkpoints"][0]["ts"]
            .as_str()
            .expect("ts")
            .to_owned();
        value["checkpoints"][0]["ts"] = Value::String(format!("{ts}\nfinal true"));
    });
    assert_eq!(problem, Problem::MalformedCheckpoint { checkpoint: 0 });
}

#[test]
fn rewritten_log_without_checkpoints_fails_against_the_witness() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    let log = moat_audit::AuditLog::create(&path, RUN, key(), options(5)).expect("create");
    for i in 0..12 {
        let (t, d) = event(i);
        log.append(t, d).expect("append");
    }
    let witness = log.close().expect("close");
    let mut lines = lines(&path);
    lines.retain(|l| !l.starts_with("{\"checkpoint\":"));
    let i = entry_line(&lines, 3);
    lines[i] = lines[i].replace("item/3", "item/X");
    rehash(&mut lines);
    write_lines(&path, &lines);
    let pk = key().public_key();
    // Without the witness this is indistinguishable from a writer killed before any checkpoint.
    assert_eq!(verify(&path).verdict, Verdict::Unfinished);
    let report = moat_audit::verify_log_with_witness(&path, &pk, &witness).expect("readable");
    assert_eq!(
        tampered(&report),
        &Problem::WitnessMismatch { tree_size: 12 }
    );
}

#[test]
fn unknown_bundle_format_is_named() {
    let (_dir, path) = fixture();
    let bundle = export_bundle(&path, &key().public_key()).expect("export");
    let text = String::from_utf8(bundle).expect("utf-8");
    let edited = text.replacen("moat-audit-bundle/1", "moat-audit-bundle/2", 1);
    assert_eq!(
        tampered(&verify_bundle(edited.as_bytes(), Some(&key().public_key()))),
        &Problem::UnsupportedFormat {
            found: "moat-audit-bundle/2".into(),
            expected: "moat-audit-bundle/1".into()
        }
    );
}

#[test]
fn entry_that_is_not_an_entry_is_named() {
    let (_dir, path) = fixture();
    let bundle = export_bundle(&path, &key().public_key()).expect("export");
    let mut value: Value = serde_json::from_slice(&bundle).expect("json");
    value["entries"][2]["entry"] = serde_json::json!({"seq": 2});
    let edited = serde_json::to_vec(&value).expect("serialize");
    assert!(matches!(
        tampered(&verify_bundle(&edited, Some(&key().public_key()))),
        Problem::MalformedEntry { position: 2, .. }
    ));
}
