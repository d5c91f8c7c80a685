//! The store: format, tamper detection, key sources.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;

use chrono::Utc;
use moat_core::Secret;
use moat_creds::CredentialStore;
use moat_creds::GrantMeta;
use moat_creds::GrantRecord;
use moat_creds::GrantSource;
use moat_creds::KdfParams;
use moat_creds::KeyBytes;
use moat_creds::KeyError;
use moat_creds::KeyKind;
use moat_creds::KeyringMode;
use moat_creds::OsKeyring;
use moat_creds::OsKeyringError;
use moat_creds::StoreError;
use moat_creds::StoreKey;
use moat_creds::UnavailableOsKeyring;
use moat_creds::store::CorruptReason;

use crate::support::TestResult;
use crate::support::key_file_store;

const TOKEN: &str = "ghp_S3cr3tT0k3nValueThatMustNeverLeak0001";

/// Cheap Argon2id parameters so debug-build tests stay fast; real use takes the default.
fn cheap() -> KdfParams {
    KdfParams {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    }
}

fn record(name: &str, value: &str) -> GrantRecord {
    GrantRecord {
        meta: GrantMeta {
            name: name.to_owned(),
            source: GrantSource::Env {
                variable: "GITHUB_TOKEN".to_owned(),
            },
            created_at: Utc::now(),
            last_validated_at: None,
            account: Some("octocat".to_owned()),
        },
        value: Secret::new(value),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn round_trip_and_no_plaintext_on_disk() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = key_file_store(dir.path())?;
    // A temp file left by a crashed writer is cleaned up by the next write.
    fs::write(
        dir.path().join(".github.enc.tmp-1-0011223344556677"),
        b"partial",
    )?;
    store.save(&record("github", TOKEN))?;
    assert!(
        !dir.path()
            .join(".github.enc.tmp-1-0011223344556677")
            .exists()
    );
    let loaded = store.load("github")?.ok_or("grant missing")?;
    assert_eq!(loaded.value.expose(), TOKEN);
    assert_eq!(loaded.meta.account.as_deref(), Some("octocat"));

    let bytes = fs::read(store.path_for("github"))?;
    assert!(bytes.starts_with(b"MOATCRED"));
    assert!(!contains(&bytes, TOKEN.as_bytes()), "token in plaintext");
    assert!(!contains(&bytes, b"S3cr3t"), "token fragment in plaintext");
    assert!(!contains(&bytes, b"octocat"), "metadata in plaintext");
    let mode = fs::metadata(store.path_for("github"))?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let key_mode = fs::metadata(dir.path().join(".key"))?.permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600);

    // Debug output of records and keys never shows the value.
    assert!(!format!("{loaded:?}").contains(TOKEN));
    assert!(!format!("{store:?}").contains(TOKEN));
    assert!(store.load("openai")?.is_none());
    Ok(())
}

#[test]
fn flipped_byte_is_detected_everywhere() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = key_file_store(dir.path())?;
    store.save(&record("github", TOKEN))?;
    let path = store.path_for("github");
    let good = fs::read(&path)?;
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        fs::write(&path, &bad)?;
        let result = store.load("github");
        assert!(result.is_err(), "flip at byte {i} went unnoticed");
    }
    // A flip in the ciphertext is reported as tampering, naming the file and the fix.
    let mut bad = good.clone();
    let last = bad.len() - 20;
    bad[last] ^= 0x80;
    fs::write(&path, &bad)?;
    let err = store.load("github").err().ok_or("no error")?;
    assert!(
        matches!(
            &err,
            StoreError::Corrupt {
                reason: CorruptReason::Tampered,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains("moat revoke github` then `moat grant github"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn truncated_file_is_detected() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = key_file_store(dir.path())?;
    store.save(&record("github", TOKEN))?;
    let path = store.path_for("github");
    let good = fs::read(&path)?;
    for len in [good.len() - 1, good.len() - 17, 60, 12, 3, 0] {
        fs::write(&path, &good[..len])?;
        let err = store
            .load("github")
            .err()
            .ok_or("truncation not detected")?;
        assert!(
            matches!(
                &err,
                StoreError::Corrupt {
                    reason: CorruptReason::Truncated { .. },
                    ..
                }
            ),
            "len {len}: {err:?}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(err.to_string().contains("moat revoke github"), "{err}");
    }
    let mut longer = good.clone();
    longer.push(0);
    fs::write(&path, &longer)?;
    assert!(matches!(
        store.load("github"),
        Err(StoreError::Corrupt {
            reason: CorruptReason::TrailingData { .. },
            ..
        })
    ));
    fs::write(&path, vec![b'M'; moat_creds::store::MAX_FILE_LEN + 10])?;
    assert!(matches!(
        store.load("github"),
        Err(StoreError::Corrupt {
            reason: CorruptReason::TooLarge { .. },
            ..
        })
    ));
    fs::write(&path, b"hello, this is not a credential file at all")?;
    assert!(matches!(
        store.load("github"),
        Err(StoreError::Corrupt {
            reason: CorruptReason::NotACredentialFile,
            ..
        })
    ));
    Ok(())
}

#[test]
fn swapped_files_are_detected() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = key_file_store(dir.path())?;
    store.save(&record("github", TOKEN))?;
    store.save(&record("openai", "sk-openai-value"))?;
    let gh = fs::read(store.path_for("github"))?;
    let oa = fs::read(store.path_for("openai"))?;
    fs::write(store.path_for("github"), &oa)?;
    fs::write(store.path_for("openai"), &gh)?;
    let err = store.load("github").err().ok_or("swap not detected")?;
    match &err {
        StoreError::WrongGrant {
            expected, found, ..
        } => {
            assert_eq!(expected, "github");
            assert_eq!(found, "openai");
        }
        other => return Err(format!("unexpected {other:?}").into()),
    }
    assert!(err.to_string().contains("swapped"), "{err}");
    assert!(matches!(
        store.load("openai"),
        Err(StoreError::WrongGrant { .. })
    ));

    // Renaming the name in the header as well breaks authentication.
    let mut forged = oa.clone();
    let name_at = 11;
    forged.splice(name_at..name_at + 6, b"github".iter().copied());
    forged[10] = 6;
    fs::write(store.path_for("github"), &forged)?;
    // The header is associated data: editing the name there fails authentication.
    assert!(
        matches!(
            store.load("github"),
            Err(StoreError::Corrupt {
                reason: CorruptReason::Tampered,
                ..
            })
        ),
        "forged header name not caught by authentication"
    );
    Ok(())
}

#[test]
fn passphrase_round_trips_and_rejects_a_wrong_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    let key = StoreKey::from_passphrase(Secret::new("correct horse battery staple"), cheap())?;
    assert_eq!(key.kind(), KeyKind::Passphrase);
    let store = CredentialStore::open(dir.path(), key)?;
    store.save(&record("anthropic", "sk-ant-api03-value"))?;
    assert_eq!(
        store.load("anthropic")?.ok_or("missing")?.value.expose(),
        "sk-ant-api03-value"
    );
    assert!(
        !dir.path().join(".key").exists(),
        "passphrase mode must not create a key file"
    );

    // A second process with the same passphrase but other default parameters reads the
    // parameters from the header.
    let again = CredentialStore::open(
        dir.path(),
        StoreKey::from_passphrase(
            Secret::new("correct horse battery staple"),
            KdfParams::default(),
        )?,
    )?;
    assert_eq!(
        again.load("anthropic")?.ok_or("missing")?.value.expose(),
        "sk-ant-api03-value"
    );

    let wrong = CredentialStore::open(
        dir.path(),
        StoreKey::from_passphrase(Secret::new("Tr0ub4dor&3"), cheap())?,
    )?;
    let err = wrong
        .load("anthropic")
        .err()
        .ok_or("wrong passphrase accepted")?;
    assert!(matches!(err, StoreError::CannotDecrypt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("cannot decrypt "), "{msg}");
    assert!(
        msg.contains(&wrong.path_for("anthropic").display().to_string()),
        "{msg}"
    );

    // Files written by separate processes share one salt, so reading every grant costs a
    // single Argon2id derivation.
    let third = CredentialStore::open(
        dir.path(),
        StoreKey::from_passphrase(Secret::new("correct horse battery staple"), cheap())?,
    )?;
    third.save(&record("openai", "sk-openai"))?;
    let salt_of = |name: &str| -> Result<Vec<u8>, std::io::Error> {
        let bytes = fs::read(dir.path().join(format!("{name}.enc")))?;
        let at = 8 + 1 + 1 + 1 + name.len() + 12;
        Ok(bytes[at..at + 16].to_vec())
    };
    assert_eq!(salt_of("anthropic")?, salt_of("openai")?);
    // A different passphrase does not adopt the salt of files it cannot read.
    let other = CredentialStore::open(
        dir.path(),
        StoreKey::from_passphrase(Secret::new("another passphrase"), cheap())?,
    )?;
    other.save(&record("github", TOKEN))?;
    assert_ne!(salt_of("github")?, salt_of("openai")?);

    // Through resolve(): auto without an OS keyring takes the passphrase.
    let auto = StoreKey::resolve(
        KeyringMode::Auto,
        dir.path(),
        Some(Secret::new("pw")),
        &UnavailableOsKeyring,
    )?;
    assert_eq!(auto.kind(), KeyKind::Passphrase);
    assert!(matches!(
        StoreKey::from_passphrase(Secret::new(""), cheap()),
        Err(KeyError::EmptyPassphrase)
    ));
    Ok(())
}

#[test]
fn key_kind_mismatch_says_what_to_set() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = CredentialStore::open(
        dir.path(),
        StoreKey::from_passphrase(Secret::new("pw"), cheap())?,
    )?;
    store.save(&record("github", TOKEN))?;
    let file_store = key_file_store(dir.path())?;
    let err = file_store
        .load("github")
        .err()
        .ok_or("mismatch not detected")?;
    assert!(
        matches!(
            err,
            StoreError::KeyKindMismatch {
                file: KeyKind::Passphrase,
                using: KeyKind::KeyFile,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("MOAT_PASSPHRASE"), "{err}");
    Ok(())
}

#[test]
fn wrong_key_file_cannot_decrypt() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = key_file_store(dir.path())?;
    store.save(&record("github", TOKEN))?;
    fs::remove_file(dir.path().join(".key"))?;
    let other = key_file_store(dir.path())?;
    let err = other.load("github").err().ok_or("foreign key accepted")?;
    assert!(matches!(err, StoreError::CannotDecrypt { .. }), "{err:?}");
    assert!(err.to_string().contains("key file"), "{err}");
    Ok(())
}

#[test]
fn key_file_with_wide_permissions_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    key_file_store(dir.path())?;
    let key = dir.path().join(".key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644))?;
    let err = StoreKey::from_key_file(dir.path())
        .err()
        .ok_or("0644 key accepted")?;
    assert!(
        matches!(err, KeyError::KeyFilePermissions { mode: 0o644, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("chmod 600"), "{err}");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
    assert!(StoreKey::from_key_file(dir.path()).is_ok());
    fs::write(&key, "not hex\n")?;
    assert!(matches!(
        StoreKey::from_key_file(dir.path()),
        Err(KeyError::KeyFileMalformed { .. })
    ));
    Ok(())
}

struct FakeKeyring(KeyBytes);

impl OsKeyring for FakeKeyring {
    fn name(&self) -> &str {
        "fake keyring"
    }

    fn load_or_create(&self) -> Result<Option<KeyBytes>, OsKeyringError> {
        Ok(Some(self.0.clone()))
    }
}

#[test]
fn keyring_modes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let err = StoreKey::resolve(KeyringMode::Os, dir.path(), None, &UnavailableOsKeyring)
        .err()
        .ok_or("os without keyring succeeded")?;
    assert!(matches!(err, KeyError::OsUnavailable));
    assert!(
        err.to_string().contains("OS keyring is not available"),
        "{err}"
    );
    assert!(err.to_string().contains("MOAT_KEYRING=file"), "{err}");

    let fake = FakeKeyring(KeyBytes::new([9; 32]));
    let os = StoreKey::resolve(KeyringMode::Os, dir.path(), None, &fake)?;
    assert_eq!(os.kind(), KeyKind::OsKeyring);
    let auto = StoreKey::resolve(
        KeyringMode::Auto,
        dir.path(),
        Some(Secret::new("pw")),
        &fake,
    )?;
    assert_eq!(auto.kind(), KeyKind::OsKeyring);
    let store = CredentialStore::open(dir.path(), auto)?;
    store.save(&record("github", TOKEN))?;
    assert!(!dir.path().join(".key").exists());

    // `auto` follows the store: its grants were saved with the OS keyring, so losing the
    // keyring is an error rather than a silent switch to a new key file.
    let err = StoreKey::resolve(KeyringMode::Auto, dir.path(), None, &UnavailableOsKeyring)
        .err()
        .ok_or("auto switched key source under existing grants")?;
    assert!(matches!(err, KeyError::OsUnavailable), "{err:?}");
    assert!(!dir.path().join(".key").exists());

    // A new store without a keyring or passphrase gets a key file; once it holds grants,
    // a keyring that appears later does not take over.
    let fresh = tempfile::tempdir()?;
    let auto_file =
        StoreKey::resolve(KeyringMode::Auto, fresh.path(), None, &UnavailableOsKeyring)?;
    assert_eq!(auto_file.kind(), KeyKind::KeyFile);
    assert!(fresh.path().join(".key").exists());
    CredentialStore::open(fresh.path(), auto_file)?.save(&record("github", TOKEN))?;
    let later = StoreKey::resolve(
        KeyringMode::Auto,
        fresh.path(),
        Some(Secret::new("pw")),
        &fake,
    )?;
    assert_eq!(later.kind(), KeyKind::KeyFile);
    assert_eq!(
        CredentialStore::open(fresh.path(), later)?
            .load("github")?
            .ok_or("missing")?
            .value
            .expose(),
        TOKEN
    );

    // Grants saved with a passphrase need it again.
    let pw = tempfile::tempdir()?;
    CredentialStore::open(
        pw.path(),
        StoreKey::from_passphrase(Secret::new("pw"), cheap())?,
    )?
    .save(&record("github", TOKEN))?;
    let err = StoreKey::resolve(KeyringMode::Auto, pw.path(), None, &fake)
        .err()
        .ok_or("auto ignored the passphrase store")?;
    assert!(
        matches!(err, KeyError::PassphraseRequired { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("set MOAT_PASSPHRASE"), "{err}");
    let with_pw = StoreKey::resolve(KeyringMode::Auto, pw.path(), Some(Secret::new("pw")), &fake)?;
    assert_eq!(with_pw.kind(), KeyKind::Passphrase);
    Ok(())
}

#[test]
fn list_and_revoke() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = key_file_store(dir.path())?;
    store.save(&record("github", TOKEN))?;
    store.save(&record("openai", "sk-x"))?;
    fs::write(store.path_for("anthropic"), b"MOATCRED\x01")?;
    let listing = store.list()?;
    let names: Vec<&str> = listing.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["anthropic", "github", "openai"]);
    assert!(listing[0].meta.is_err(), "corrupt file listed as fine");
    let gh = listing[1].meta.as_ref().map_err(|e| e.to_string())?;
    assert_eq!(gh.source.to_string(), "env (GITHUB_TOKEN)");
    assert!(!format!("{listing:?}").contains(TOKEN));

    assert!(
        moat_creds::revoke_grant(dir.path(), "anthropic")?,
        "corrupt grants can be revoked without a key"
    );
    assert!(!moat_creds::revoke_grant(
        &dir.path().join("missing"),
        "anthropic"
    )?);
    assert!(store.revoke("github")?);
    assert!(!store.revoke("github")?);
    assert!(store.load("github")?.is_none());
    assert_eq!(store.list()?.len(), 1);
    assert!(matches!(
        store.revoke("../etc"),
        Err(StoreError::InvalidGrantName { .. })
    ));
    Ok(())
}

/// Deterministic xorshift so failures reproduce.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }
}

#[test]
fn random_damage_never_panics_or_decrypts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = CredentialStore::open(
        dir.path(),
        StoreKey::from_passphrase(Secret::new("pw"), cheap())?,
    )?;
    store.save(&record("github", TOKEN))?;
    let path = store.path_for("github");
    let good = fs::read(&path)?;
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for round in 0..600 {
        let mut bad = good.clone();
        match round % 4 {
            0 => {
                for _ in 0..=rng.below(4) {
                    let i = rng.below(bad.len());
                    bad[i] = bad[i].wrapping_add(1 + (rng.next() % 255) as u8);
                }
            }
            1 => bad.truncate(rng.below(good.len())),
            2 => {
                let at = rng.below(bad.len());
                bad.insert(at, (rng.next() % 256) as u8);
            }
            _ => {
                bad = (0..rng.below(200))
                    .map(|_| (rng.next() % 256) as u8)
                    .collect();
                if round % 8 == 3 {
                    bad.splice(0..0, b"MOATCRED\x01\x03".iter().copied());
                }
            }
        }
        if bad == good {
            continue;
        }
        fs::write(&path, &bad)?;
        assert!(
            store.load("github").is_err(),
            "round {round}: damaged file decrypted"
        );
    }
    Ok(())
}
