//! The Secret Service keyring with no reachable D-Bus session: unavailable, so `os` fails
//! clearly and `auto` falls back. Runs in a child process whose D-Bus address points
//! nowhere, so the developer's real keyring is never touched.

use std::process::Command;
use std::process::Stdio;

use moat_creds::KeyError;
use moat_creds::KeyKind;
use moat_creds::KeyringMode;
use moat_creds::OsKeyring as _;
use moat_creds::StoreKey;
use moat_creds::SystemOsKeyring;

use crate::support::TestResult;

const CHILD_ENV: &str = "MOAT_CREDS_IT_NO_DBUS";

/// The checks; only meaningful with the D-Bus address set by the parent test, so when run
/// directly it re-runs itself that way.
#[test]
fn unreachable_secret_service_is_unavailable() -> TestResult {
    if std::env::var_os(CHILD_ENV).is_none() {
        let output = Command::new(std::env::current_exe()?)
            .args([
                "os_keyring::unreachable_secret_service_is_unavailable",
                "--exact",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .env(
                "DBUS_SESSION_BUS_ADDRESS",
                "unix:path=/nonexistent/moat-test-bus",
            )
            .stdin(Stdio::null())
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "child failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        return Ok(());
    }
    let keyring = SystemOsKeyring::new("moat-test", "unreachable");
    assert_eq!(keyring.name(), "Secret Service");
    assert!(keyring.load_or_create()?.is_none());
    let dir = tempfile::tempdir()?;
    let err = StoreKey::resolve(KeyringMode::Os, dir.path(), None, &keyring)
        .err()
        .ok_or("os mode without a keyring succeeded")?;
    assert!(matches!(err, KeyError::OsUnavailable), "{err:?}");
    let auto = StoreKey::resolve(KeyringMode::Auto, dir.path(), None, &keyring)?;
    assert_eq!(auto.kind(), KeyKind::KeyFile);
    Ok(())
}
