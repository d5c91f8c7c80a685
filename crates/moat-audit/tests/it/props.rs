//! Property tests: random runs export and verify; any single-byte change is caught.

use moat_audit::AuditLog;
use moat_audit::Verdict;
use moat_audit::export_bundle;
use moat_audit::verify_bundle;
use moat_audit::verify_log;
use proptest::prelude::*;
use serde_json::Value;
use serde_json::json;

use crate::common::*;

fn data_strategy() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn events_strategy() -> impl Strategy<Value = Vec<(String, Value)>> {
    let types = prop::sample::select(vec![
        "run.created",
        "container.started",
        "network.request",
        "credential.injected",
        "ssh.sign",
        "secret.resolved",
        "run.finished",
    ]);
    prop::collection::vec((types.prop_map(str::to_owned), data_strategy()), 0..24)
}

fn run(events: &[(String, Value)], every: u64) -> (tempfile::TempDir, Vec<u8>) {
    let (dir, path) = write(events, every);
    let bundle = export_bundle(&path, &key().public_key()).expect("export");
    (dir, bundle)
}

fn write(events: &[(String, Value)], every: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.db");
    let log = AuditLog::create(&path, RUN, key(), options(every)).expect("create");
    for (t, d) in events {
        log.append(t, d.clone()).expect("append");
    }
    log.close().expect("close");
    let report = verify_log(&path, &key().public_key()).expect("readable");
    assert_eq!(report.verdict, Verdict::Intact, "{}", report.message);
    (dir, path)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_runs_export_and_verify(events in events_strategy(), every in 1u64..8) {
        let (_dir, bundle) = run(&events, every);
        let report = verify_bundle(&bundle, Some(&key().public_key()));
        prop_assert_eq!(report.verdict, Verdict::Intact, "{}", report.message);
        prop_assert_eq!(report.entries, events.len() as u64);
        prop_assert!(report.finished_cleanly);
    }

    #[test]
    fn any_single_byte_change_in_a_bundle_fails(
        events in events_strategy(),
        every in 1u64..8,
        position in any::<prop::sample::Index>(),
        delta in 1u8..=255,
    ) {
        let (_dir, bundle) = run(&events, every);
        let mut edited = bundle.clone();
        let i = position.index(edited.len());
        edited[i] = edited[i].wrapping_add(delta);
        let pinned = verify_bundle(&edited, Some(&key().public_key()));
        prop_assert!(
            pinned.is_tampered(),
            "byte {} changed from {:?} to {:?} went unnoticed: {}",
            i, bundle[i] as char, edited[i] as char, pinned.message
        );
        let unpinned = verify_bundle(&edited, None);
        prop_assert_ne!(unpinned.verdict, Verdict::Intact);
    }

    #[test]
    fn any_single_byte_change_in_a_log_file_is_not_intact(
        events in events_strategy(),
        every in 1u64..8,
        position in any::<prop::sample::Index>(),
        delta in 1u8..=255,
    ) {
        let (_dir, path) = write(&events, every);
        let mut bytes = std::fs::read(&path).expect("read");
        let i = position.index(bytes.len());
        bytes[i] = bytes[i].wrapping_add(delta);
        let report = moat_audit::verify_log_bytes(&bytes, &key().public_key());
        // Cutting the last newline turns the closing checkpoint into a torn write, which is
        // reported as unfinished; everything else is tampering.
        prop_assert_ne!(report.verdict, Verdict::Intact, "byte {} went unnoticed", i);
        if i + 1 != bytes.len() {
            prop_assert!(report.is_tampered(), "byte {}: {}", i, report.message);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let pk = key().public_key();
        prop_assert!(verify_bundle(&bytes, Some(&pk)).is_tampered());
        let report = moat_audit::verify_log_bytes(&bytes, &pk);
        prop_assert_ne!(report.verdict, Verdict::Intact);
        let _ = moat_audit::Evidence::from_bundle(&bytes);
    }

    #[test]
    fn spliced_evidence_never_panics(
        events in events_strategy(),
        start in any::<prop::sample::Index>(),
        len in 0usize..200,
        dup in any::<bool>(),
    ) {
        let (_dir, path) = write(&events, 3);
        let log = std::fs::read(&path).expect("read");
        let bundle = export_bundle(&path, &key().public_key()).expect("export");
        for original in [log, bundle] {
            let i = start.index(original.len());
            let j = (i + len).min(original.len());
            let mut spliced = original[..i].to_vec();
            if dup {
                spliced.extend_from_slice(&original[i..j]);
                spliced.extend_from_slice(&original[i..]);
            } else {
                spliced.extend_from_slice(&original[j..]);
            }
            let pk = key().public_key();
            let _ = moat_audit::verify_log_bytes(&spliced, &pk);
            let _ = verify_bundle(&spliced, Some(&pk));
            if let Ok(evidence) = moat_audit::Evidence::from_bundle(&spliced) {
                let _ = evidence.prove_inclusion(0);
                let _ = evidence.prove_consistency(1, evidence.len());
            }
        }
    }
}
