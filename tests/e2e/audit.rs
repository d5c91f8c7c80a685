//! `moat audit` against real runs: intact logs verify, and every kind of tampering is caught
//! through the CLI with exit code 1.

use std::path::PathBuf;

use moat_e2e::TestEnv;
use moat_e2e::require_docker;
use moat_e2e::text;

fn audited_run(env: &TestEnv, name: &str) -> (String, PathBuf) {
    let out = env.run(&["run", "-n", name, "--", "sh", "-c", "echo audited"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = env.run_json(name);
    let id = run["id"].as_str().unwrap().to_owned();
    let log = env.run_dir(&id).join("audit.db");
    assert!(log.exists());
    (id, log)
}

fn audit(env: &TestEnv, args: &[&str]) -> (Option<i32>, String) {
    let mut full = vec!["audit"];
    full.extend_from_slice(args);
    let out = env.run(&full);
    (
        out.status.code(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

fn entry_lines(log: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_intact_run_verifies_and_its_events_are_recorded() {
    require_docker();
    let env = TestEnv::new();
    let (id, _) = audited_run(&env, "ok");
    let (code, shown) = audit(&env, &["ok"]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("intact"), "{shown}");
    let out = env.run(&["audit", "--json", &id]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verdict"], "intact");
    assert_eq!(report["last_checkpoint_covers_all"], true);
    for t in [
        "run.created",
        "container.started",
        "container.exited",
        "run.finished",
    ] {
        assert!(
            report["event_types"][t].as_u64().unwrap_or(0) >= 1,
            "{t} missing: {report}"
        );
    }
    // run.created pins the image by digest.
    let log = std::fs::read_to_string(env.run_dir(&id).join("audit.db")).unwrap();
    assert!(log.contains("\"image_digest\":\"sha256:"), "{log}");
    // An inclusion proof for entry 1 verifies.
    let (code, shown) = audit(&env, &["--prove", "1", &id]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("leaf_index"), "{shown}");
}

#[test]
fn a_rollback_is_caught_by_the_witness_and_the_witness_cannot_be_garbled() {
    require_docker();
    let env = TestEnv::new();
    let (id, log) = audited_run(&env, "rb");
    let witness = log.with_file_name("audit.witness.json");
    let original = entry_lines(&log);
    // Cut the log back to before its closing checkpoint, as if the writer had been killed
    // there: every remaining entry chains correctly.
    let rolled_back = original[..3].join("\n") + "\n";
    std::fs::write(&log, &rolled_back).unwrap();
    let (code, shown) = audit(&env, &[&id]);
    assert_eq!(code, Some(1), "the witness exposes the rollback: {shown}");
    assert!(shown.contains("TAMPERED"), "{shown}");
    // A garbled witness is itself tampering, not a reason to skip the check.
    let kept = std::fs::read(&witness).unwrap();
    std::fs::write(&witness, b"{\"not\": \"a checkpoint\"}").unwrap();
    let (code, shown) = audit(&env, &[&id]);
    assert_eq!(code, Some(1), "{shown}");
    assert!(
        shown.contains("TAMPERED") && shown.contains("audit.witness.json"),
        "{shown}"
    );
    // Without the witness, the rolled-back log looks unfinished, and moat says what that means.
    std::fs::remove_file(&witness).unwrap();
    let (code, shown) = audit(&env, &[&id]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("rollback cannot be ruled out"), "{shown}");
    std::fs::write(&witness, kept).unwrap();
    std::fs::write(&log, original.join("\n") + "\n").unwrap();
    assert_eq!(audit(&env, &[&id]).0, Some(0));
}

#[test]
fn a_log_rewritten_and_signed_with_another_key_is_a_forgery() {
    require_docker();
    let env = TestEnv::new();
    let (id, log) = audited_run(&env, "forged");
    // The attacker replays the run's events into a fresh, internally consistent log signed
    // by their own key, and removes the witness that would also give them away.
    let events: Vec<(String, serde_json::Value)> = entry_lines(&log)
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let e = v.get("entry")?;
            Some((e["type"].as_str()?.to_owned(), e["data"].clone()))
        })
        .collect();
    assert!(events.len() >= 4, "{events:?}");
    std::fs::remove_file(&log).unwrap();
    std::fs::remove_file(log.with_file_name("audit.witness.json")).unwrap();
    let forger = moat_audit::AuditKey::generate().unwrap();
    let forged =
        moat_audit::AuditLog::create(&log, &id, forger, moat_audit::LogOptions::default()).unwrap();
    for (kind, data) in events {
        let data = if kind == "container.exited" {
            serde_json::json!({ "container_id": data["container_id"], "exit_code": 0 })
        } else {
            data
        };
        forged.append(&kind, data).unwrap();
    }
    forged.close().unwrap();
    let (code, shown) = audit(&env, &[&id]);
    assert_eq!(code, Some(1), "{shown}");
    assert!(shown.contains("TAMPERED"), "{shown}");
}

#[test]
fn checking_evidence_never_creates_a_new_signing_key() {
    require_docker();
    let env = TestEnv::new();
    let (id, _) = audited_run(&env, "k");
    let key = env.home.path().join("audit").join("signing.key");
    std::fs::remove_file(&key).unwrap();
    let (code, shown) = audit(&env, &[&id]);
    assert_eq!(code, Some(1), "{shown}");
    assert!(shown.contains("signing.key"), "{shown}");
    let out = env.run(&["destroy", &id]);
    assert!(
        !out.status.success(),
        "no key, no archive: {}",
        text(&out.stderr)
    );
    assert!(!key.exists(), "a read must not mint a new signer");
    assert!(env.run_dir(&id).exists(), "the evidence was kept");
}

#[test]
fn edited_deleted_swapped_and_truncated_logs_are_tampered() {
    require_docker();
    let env = TestEnv::new();
    let (id, log) = audited_run(&env, "t");
    let original = entry_lines(&log);
    assert!(
        original.len() >= 6,
        "header, 4 entries, a checkpoint: {original:?}"
    );
    let write = |lines: &[String]| std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("edited", {
            let mut l = original.clone();
            l[3] = l[3].replace("container.exited", "container.exitex");
            l
        }),
        ("deleted", {
            let mut l = original.clone();
            l.remove(2);
            l
        }),
        ("swapped", {
            let mut l = original.clone();
            l.swap(2, 3);
            l
        }),
        ("truncated", {
            let mut l = original.clone();
            // Drop the last entry but keep the closing checkpoint that covers it.
            let cp = l.pop().unwrap();
            l.pop();
            l.push(cp);
            l
        }),
    ];
    for (what, lines) in cases {
        write(&lines);
        let (code, shown) = audit(&env, &[&id]);
        assert_eq!(
            code,
            Some(1),
            "{what} log must be reported as tampered: {shown}"
        );
        assert!(shown.contains("TAMPERED"), "{what}: {shown}");
    }
    write(&original);
    assert_eq!(audit(&env, &[&id]).0, Some(0));
}

#[test]
fn exported_bundles_verify_offline_and_edits_or_foreign_keys_fail() {
    require_docker();
    let env = TestEnv::new();
    let (id, _) = audited_run(&env, "b");
    let bundle = env.ws.path().join("b.bundle.json");
    let (code, shown) = audit(&env, &["--export", bundle.to_str().unwrap(), &id]);
    assert_eq!(code, Some(0), "{shown}");
    let key = env.home.path().join("audit/signing.pub");
    // Offline, in another MOAT_HOME, pinned to the signer's key.
    let other = TestEnv::new();
    let out = other.run(&[
        "audit",
        "verify",
        bundle.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // A foreign key: refused.
    let out = other.run(&["audit", "key"]);
    assert!(out.status.success());
    let foreign = other.home.path().join("audit/signing.pub");
    let out = other.run(&[
        "audit",
        "verify",
        bundle.to_str().unwrap(),
        "--key",
        foreign.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    // An edited bundle: refused.
    let mut bytes = std::fs::read(&bundle).unwrap();
    let pos = bytes.windows(5).position(|w| w == b"audit").unwrap();
    bytes[pos] = b'A';
    std::fs::write(&bundle, &bytes).unwrap();
    let out = other.run(&[
        "audit",
        "verify",
        bundle.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
}

#[test]
fn a_killed_supervisor_is_unfinished_not_tampered_and_destroy_archives_evidence() {
    require_docker();
    let env = TestEnv::new();
    let out = env.run(&["run", "-d", "-n", "k", "--", "sleep", "300"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = env.run_json("k");
    let pid = run["supervisor_pid"].as_u64().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let run = env.run_json("k"); // reconciles
    assert_eq!(run["state"], "failed");
    let (code, shown) = audit(&env, &["k"]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("did not finish cleanly"), "{shown}");
    assert!(!shown.contains("TAMPERED"), "{shown}");

    // destroy keeps the signed evidence; --purge does not.
    let id = run["id"].as_str().unwrap().to_owned();
    let out = env.run(&["destroy", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let archived = env
        .home
        .path()
        .join("evidence")
        .join(format!("{id}.bundle.json"));
    assert!(archived.exists());
    let key = env.home.path().join("audit/signing.pub");
    let out = env.run(&[
        "audit",
        "verify",
        archived.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    let (purged, _) = audited_run(&env, "p");
    let out = env.run(&["destroy", "--purge", &purged]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !env.home
            .path()
            .join("evidence")
            .join(format!("{purged}.bundle.json"))
            .exists()
    );
}
