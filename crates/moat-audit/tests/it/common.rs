//! Shared helpers: a deterministic clock and a small fixture log.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use chrono::DateTime;
use chrono::TimeZone as _;
use chrono::Utc;
use moat_audit::AuditKey;
use moat_audit::AuditLog;
use moat_audit::Clock;
use moat_audit::LogOptions;
use serde_json::json;

pub(crate) const RUN: &str = "run_0123456789ab";

/// A clock that starts at a fixed instant and only moves when told to.
#[derive(Debug)]
pub(crate) struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub(crate) fn new() -> Arc<Self> {
        let start = Utc
            .with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
            .single()
            .expect("valid date");
        Arc::new(Self(Mutex::new(start)))
    }

    pub(crate) fn advance(&self, by: Duration) {
        let mut now = self.0.lock().expect("clock lock");
        *now += chrono::Duration::from_std(by).expect("small duration");
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        let mut now = self.0.lock().expect("clock lock");
        // Every reading moves one microsecond on, so timestamps are distinct and deterministic.
        *now += chrono::Duration::microseconds(1);
        *now
    }
}

pub(crate) fn key() -> AuditKey {
    AuditKey::from_seed(&[42; 32])
}

pub(crate) fn foreign_key() -> AuditKey {
    AuditKey::from_seed(&[66; 32])
}

pub(crate) fn options(every: u64) -> LogOptions {
    LogOptions {
        checkpoint_every: every,
        checkpoint_interval: Duration::from_secs(3600),
        clock: ManualClock::new(),
    }
}

pub(crate) fn event(i: u64) -> (&'static str, serde_json::Value) {
    let types = ["network.request", "credential.injected", "ssh.sign"];
    let t = types[(i % 3) as usize];
    (
        t,
        json!({"i": i, "url": format!("https://api.github.com/item/{i}"), "ok": i.is_multiple_of(2)}),
    )
}

/// Writes a closed log of `n` entries with a checkpoint every `every` entries.
pub(crate) fn write_log(dir: &Path, n: u64, every: u64) -> PathBuf {
    write_log_with(dir, n, every, key())
}

pub(crate) fn write_log_with(dir: &Path, n: u64, every: u64, key: AuditKey) -> PathBuf {
    let path = dir.join("audit.db");
    let log = AuditLog::create(&path, RUN, key, options(every)).expect("create log");
    for i in 0..n {
        let (t, d) = event(i);
        assert_eq!(log.append(t, d).expect("append"), i);
    }
    log.close().expect("close");
    path
}

pub(crate) fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("read log")
        .lines()
        .map(str::to_owned)
        .collect()
}

pub(crate) fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).expect("write log");
}

/// Index of the line holding entry `seq` (line 0 is the header).
pub(crate) fn entry_line(lines: &[String], seq: u64) -> usize {
    let needle = format!(",\"seq\":{seq},");
    lines
        .iter()
        .position(|l| l.starts_with("{\"entry\":") && l.contains(&needle))
        .expect("entry present")
}
