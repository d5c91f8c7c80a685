//! Exhaustive tamper sweep: every possible single-byte substitution in a small bundle and log
//! file must be detected.
//!
//! Run with `cargo run --release -p moat-audit --example tamper_sweep`; exits non-zero on any
//! miss. (The property test in `tests/it/props.rs` samples the same property in debug builds;
//! this checks all of it, which needs a release build to finish in seconds.)

#![expect(
    clippy::print_stdout,
    reason = "a command-line check reports on stdout"
)]

use moat_audit::AuditKey;
use moat_audit::AuditLog;
use moat_audit::LogOptions;
use moat_audit::Verdict;
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let key = AuditKey::from_seed(&[3; 32]);
    let public = key.public_key();
    let path = dir.path().join("audit.db");
    let options = LogOptions {
        checkpoint_every: 2,
        ..LogOptions::default()
    };
    let log = AuditLog::create(&path, "run_0123456789ab", key, options)?;
    log.append(
        "run.created",
        json!({"a": [1, 2.5, -3e-7, null, true], "s": "é\"\\\n/\u{1}"}),
    )?;
    log.append(
        "network.request",
        json!({"url": "https://x/y?z=1", "status": 200}),
    )?;
    log.append("run.finished", json!({}))?;
    log.close()?;
    let bundle = moat_audit::export_bundle(&path, &public)?;
    let file = std::fs::read(&path)?;

    let mut misses = 0u64;
    let mut cases = 0u64;
    for i in 0..bundle.len() {
        for delta in 1..=255u8 {
            let mut edited = bundle.clone();
            if let Some(b) = edited.get_mut(i) {
                *b = b.wrapping_add(delta);
            }
            cases += 1;
            if !moat_audit::verify_bundle(&edited, Some(&public)).is_tampered() {
                misses += 1;
                println!("bundle: byte {i} + {delta} not detected");
            }
        }
    }
    for i in 0..file.len() {
        for delta in 1..=255u8 {
            let mut edited = file.clone();
            if let Some(b) = edited.get_mut(i) {
                *b = b.wrapping_add(delta);
            }
            cases += 1;
            let report = moat_audit::verify_log_bytes(&edited, &public);
            // Changing the final newline makes the closing checkpoint a torn write, which is
            // reported as unfinished (a crash) rather than tampered; never as intact.
            let last_newline = i + 1 == file.len();
            let detected =
                report.is_tampered() || (last_newline && report.verdict == Verdict::Unfinished);
            if !detected {
                misses += 1;
                println!("log: byte {i} + {delta} not detected: {}", report.message);
            }
        }
    }
    println!(
        "tamper sweep: {cases} single-byte substitutions over a {}-byte bundle and a {}-byte log, {misses} missed",
        bundle.len(),
        file.len()
    );
    if misses > 0 {
        std::process::exit(1);
    }
    Ok(())
}
