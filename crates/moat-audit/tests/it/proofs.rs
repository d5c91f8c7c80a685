//! Inclusion and consistency proofs from a real log and bundle.

use moat_audit::Evidence;
use moat_audit::ProofError;
use moat_audit::export_bundle;

use crate::common::*;

#[test]
fn every_entry_has_a_receipt_that_verifies_against_a_signed_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_log(dir.path(), 13, 4);
    let evidence = Evidence::from_log_file(&path).expect("load");
    assert_eq!(evidence.len(), 13);
    let pk = key().public_key();
    for seq in 0..13 {
        let receipt = evidence.prove_inclusion(seq).expect("prove");
        let cp = receipt
            .checkpoint
            .as_ref()
            .expect("covered by a checkpoint");
        assert!(cp.is_final, "the latest checkpoint is the closing one");
        assert_eq!(receipt.proof.tree_size, 13);
        receipt.verify(&pk).expect("receipt verifies");
        let entry = evidence.entry(seq).expect("entry");
        assert_eq!(entry.seq, seq);
        assert_eq!(entry.run_id, RUN);

        let mut forged = receipt.clone();
        forged.entry = forged.entry.replace("item", "itam");
        assert!(forged.verify(&pk).is_err());
        let mut moved = receipt.clone();
        moved.proof.leaf_index = (seq + 1) % 13;
        assert!(moved.verify(&pk).is_err());
        assert!(receipt.verify(&foreign_key().public_key()).is_err());
    }
    assert!(matches!(
        evidence.prove_inclusion(13),
        Err(ProofError::OutOfRange {
            requested: 13,
            size: 13
        })
    ));
    // Receipts round-trip through JSON (what `moat audit --prove` prints).
    let receipt = evidence.prove_inclusion(5).expect("prove");
    let json = serde_json::to_string(&receipt).expect("serialize");
    let back: moat_audit::InclusionReceipt = serde_json::from_str(&json).expect("parse");
    back.verify(&pk).expect("still verifies");
}

#[test]
fn checkpoints_are_consistent_with_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_log(dir.path(), 11, 4);
    let bundle = export_bundle(&path, &key().public_key()).expect("export");
    let evidence = Evidence::from_bundle(&bundle).expect("load");
    let cps = evidence.checkpoints().to_vec();
    let sizes: Vec<u64> = cps.iter().map(|c| c.tree_size).collect();
    assert_eq!(sizes, [4, 8, 11]);
    for old in &cps {
        for new in cps.iter().filter(|c| c.tree_size >= old.tree_size) {
            let proof = evidence
                .prove_consistency(old.tree_size, new.tree_size)
                .expect("prove");
            proof.verify(&old.root, &new.root).expect("consistent");
            if old.tree_size < new.tree_size {
                assert!(proof.verify(&new.root, &new.root).is_err());
            }
        }
    }
    assert_eq!(evidence.root(11).expect("root"), cps[2].root);
    assert!(evidence.prove_consistency(5, 12).is_err());
    assert!(evidence.prove_consistency(6, 5).is_err());
}

#[test]
fn unsealed_entries_get_an_unsigned_proof_that_does_not_pass_as_a_receipt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    let log = moat_audit::AuditLog::create(&path, RUN, key(), options(100)).expect("create");
    for i in 0..3 {
        let (t, d) = event(i);
        log.append(t, d).expect("append");
    }
    let evidence = Evidence::from_log_file(&path).expect("load");
    let receipt = evidence.prove_inclusion(1).expect("prove");
    assert!(receipt.checkpoint.is_none());
    receipt
        .proof
        .verify(&evidence.root(3).expect("root"))
        .expect("proof against the unsigned root");
    assert!(receipt.verify(&key().public_key()).is_err());
}
