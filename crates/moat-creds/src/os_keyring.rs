//! The platform OS keyring (feature `os-keyring`): the macOS Keychain, or the Secret
//! Service (GNOME Keyring, KWallet) over D-Bus on Linux, through the `keyring-core`
//! ecosystem. Pure Rust on Linux (zbus), so no D-Bus C library is needed to build it.
//!
//! The master key is stored as 64 hex digits under a service and account the caller
//! chooses. When the platform store cannot be reached at all (no D-Bus session, no Secret
//! Service daemon) the keyring reports itself unavailable, so `MOAT_KEYRING=auto` falls
//! back to the passphrase or the key file; a keyring that is reachable but fails (locked,
//! access denied) is an error, never a silent fallback.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::key::KeyBytes;
use crate::key::OsKeyring;
use crate::key::OsKeyringError;

/// The OS keyring of this platform.
#[derive(Debug, Clone)]
pub struct SystemOsKeyring {
    service: String,
    account: String,
}

impl SystemOsKeyring {
    /// The entry `service`/`account`, e.g. `moat` / `credentials-key`.
    pub fn new(service: impl Into<String>, account: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            account: account.into(),
        }
    }

    fn error(&self, e: &keyring_core::Error) -> OsKeyringError {
        OsKeyringError {
            backend: self.name().to_owned(),
            message: e.to_string(),
        }
    }

    fn parse(&self, text: &str) -> Result<KeyBytes, OsKeyringError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), bytes.as_mut_slice()).map_err(|_| OsKeyringError {
            backend: self.name().to_owned(),
            message: format!(
                "the entry {}/{} does not hold 64 hex digits",
                self.service, self.account
            ),
        })?;
        Ok(KeyBytes::new(*bytes))
    }
}

impl OsKeyring for SystemOsKeyring {
    fn name(&self) -> &str {
        if cfg!(target_os = "macos") {
            "macOS Keychain"
        } else if cfg!(target_os = "linux") {
            "Secret Service"
        } else {
            "none"
        }
    }

    fn load_or_create(&self) -> Result<Option<KeyBytes>, OsKeyringError> {
        let Some(store) = platform_store() else {
            return Ok(None);
        };
        let entry = keyring_core::Entry::new_in_store(&store, &self.service, &self.account)
            .map_err(|e| self.error(&e))?;
        match entry.get_password() {
            Ok(text) => self.parse(&Zeroizing::new(text)).map(Some),
            Err(keyring_core::Error::NoEntry) => {
                let key = KeyBytes::random().map_err(|e| OsKeyringError {
                    backend: self.name().to_owned(),
                    message: format!("the system random number generator failed: {e}"),
                })?;
                let text = Zeroizing::new(hex::encode(key.expose()));
                entry.set_password(&text).map_err(|e| self.error(&e))?;
                // Read back: if another process stored a key at the same moment, both
                // processes continue with whichever key the keyring kept.
                let stored = Zeroizing::new(entry.get_password().map_err(|e| self.error(&e))?);
                self.parse(&stored).map(Some)
            }
            Err(e) => Err(self.error(&e)),
        }
    }
}

#[cfg(target_os = "linux")]
fn platform_store() -> Option<Arc<keyring_core::CredentialStore>> {
    let store: Arc<keyring_core::CredentialStore> =
        zbus_secret_service_keyring_store::Store::new().ok()?;
    Some(store)
}

#[cfg(target_os = "macos")]
fn platform_store() -> Option<Arc<keyring_core::CredentialStore>> {
    let store: Arc<keyring_core::CredentialStore> =
        apple_native_keyring_store::keychain::Store::new().ok()?;
    Some(store)
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn platform_store() -> Option<Arc<keyring_core::CredentialStore>> {
    None
}
