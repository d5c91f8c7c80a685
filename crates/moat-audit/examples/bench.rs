//! Audit log benchmark: append throughput and verification time.
//!
//! Run with `cargo run --release -p moat-audit --example bench`. Prints
//! `audit appends/s: N` and `audit verify 1000000 entries: X.XXs`, plus bundle figures.

#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::time::Instant;

use moat_audit::AuditKey;
use moat_audit::AuditLog;
use moat_audit::LogOptions;
use moat_audit::export_bundle;
use moat_audit::verify_bundle;
use moat_audit::verify_log;
use serde_json::json;

const RUN: &str = "run_0123456789ab";
const APPENDS: u64 = 300_000;
const VERIFY: u64 = 1_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let key = AuditKey::generate()?;
    let public = key.public_key();

    // Appends with the default checkpoint policy (a signed, fsynced checkpoint every 1000
    // entries), realistic network.request payloads.
    let path = dir.path().join("append.db");
    let log = AuditLog::create(&path, RUN, key.clone(), LogOptions::default())?;
    let start = Instant::now();
    for i in 0..APPENDS {
        log.append("network.request", event(i))?;
    }
    log.close()?;
    let elapsed = start.elapsed().as_secs_f64();
    println!("audit appends/s: {:.0}", APPENDS as f64 / elapsed);
    println!(
        "  ({APPENDS} appends in {elapsed:.2}s, {} bytes on disk)",
        std::fs::metadata(&path)?.len()
    );

    let path = dir.path().join("verify.db");
    let log = AuditLog::create(&path, RUN, key, LogOptions::default())?;
    for i in 0..VERIFY {
        log.append("network.request", event(i))?;
    }
    log.close()?;
    let size = std::fs::metadata(&path)?.len();

    let start = Instant::now();
    let report = verify_log(&path, &public)?;
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        !report.is_tampered() && report.entries == VERIFY,
        "{}",
        report.message
    );
    println!("audit verify {VERIFY} entries: {elapsed:.2}s");
    println!(
        "  (log file {:.0} MB, {} checkpoints, verdict {:?})",
        size as f64 / 1e6,
        report.checkpoints.len(),
        report.verdict
    );

    let start = Instant::now();
    let bundle = export_bundle(&path, &public)?;
    let export = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let report = verify_bundle(&bundle, Some(&public));
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        !report.is_tampered() && report.entries == VERIFY,
        "{}",
        report.message
    );
    println!("audit export bundle {VERIFY} entries: {export:.2}s");
    println!("audit verify bundle {VERIFY} entries: {elapsed:.2}s");
    Ok(())
}

fn event(i: u64) -> serde_json::Value {
    json!({
        "id": format!("req_{i:08x}"),
        "method": "GET",
        "url": format!("https://api.github.com/repos/moat-rs/moat/issues/{i}"),
        "host": "api.github.com",
        "status": 200,
        "duration_ms": 12.5,
        "req_bytes": 512,
        "resp_bytes": 4096,
        "grant": "github",
        "decision": "allowed",
    })
}
