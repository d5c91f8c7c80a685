//! moat-creds: the encrypted credential store and grant providers of moat.
//!
//! The `moat` CLI embeds this crate for `moat grant`, `moat grant list` and `moat revoke`,
//! and hands a [`StoreCredentialProvider`] to the run orchestrator, which turns the grants
//! of a run into injection rules for the proxy and placeholders for the container. The
//! crate deliberately does not read environment variables or `$HOME`, print, prompt on a
//! terminal or exit: the CLI passes paths, token variables, the keyring mode and the
//! passphrase in, and implements [`Prompter`] for the terminal. It knows nothing about
//! Docker, and it does not inject credentials itself (that is `moat-proxy`).
//!
//! # Pieces
//!
//! - [`StoreKey`]: where the key comes from ([`KeyringMode`]: OS keyring, key file,
//!   passphrase through Argon2id).
//! - [`CredentialStore`]: one encrypted file per grant, atomic writes under a lock.
//! - [`ProviderRegistry`] / [`Provider`]: `github`, `anthropic`, `openai` and custom YAML
//!   providers (see [`provider`]).
//! - [`Granter`]: the grant flow (environment, `gh auth token` with confirmation, hidden
//!   prompt; then validation through [`HttpValidator`]; then save).
//! - [`StoreCredentialProvider`]: `moat_core::creds::CredentialProvider` for runs.
//!
//! # Wiring (what the CLI does)
//!
//! ```no_run
//! # async fn wire(moat_home: &std::path::Path, mut terminal: impl moat_creds::Prompter)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use moat_core::Secret;
//! use moat_creds::*;
//!
//! // Values the CLI read from MOAT_KEYRING, MOAT_PASSPHRASE, MOAT_RESOLVE, MOAT_UPSTREAM_CA.
//! let mode: KeyringMode = "auto".parse()?;
//! let passphrase: Option<Secret> = None;
//! let overrides = UpstreamOverrides {
//!     resolve: ResolveOverride::parse_list("")?,
//!     extra_roots_pem: Vec::new(),
//! };
//!
//! let credentials = moat_home.join("credentials");
//! let os = SystemOsKeyring::new("moat", "credentials-key");
//! let key = StoreKey::resolve(mode, &credentials, passphrase, &os)?;
//! let store = CredentialStore::open(&credentials, key)?;
//! let providers = ProviderRegistry::new(Some(moat_home.join("providers")));
//!
//! // `moat grant github`
//! let provider = providers.get("github")?;
//! let env = provider
//!     .token_vars()
//!     .iter()
//!     .filter_map(|v| std::env::var(v).ok().map(|x| (v.clone(), Secret::new(x))))
//!     .collect();
//! let validator = HttpValidator::new(&overrides)?;
//! let gh = CommandGhCli::new("gh");
//! let granter = Granter::new(&store, &providers, &validator, &gh);
//! let request = GrantRequest { provider: "github".into(), env, validate: true };
//! let outcome = granter.grant(&request, &mut terminal).await?;
//! eprintln!("granted {} from {}", outcome.meta.name, outcome.meta.source);
//!
//! // `moat grant list`, `moat revoke github`
//! for entry in store.list()? {
//!     match entry.meta {
//!         Ok(meta) => eprintln!("{} {} {}", meta.name, meta.source, meta.created_at),
//!         Err(e) => eprintln!("{}: {e}", entry.name),
//!     }
//! }
//! revoke_grant(&credentials, "github")?;
//!
//! // A run: hand this to the orchestrator as its `CredentialProvider`.
//! let _run_credentials = StoreCredentialProvider::new(store, providers);
//! # Ok(()) }
//! ```
//!
//! # OS keyring
//!
//! With the default feature `os-keyring`, [`SystemOsKeyring`] keeps a random master key in
//! the macOS Keychain or, on Linux, in the Secret Service (GNOME Keyring, KWallet) over
//! D-Bus, in pure Rust (zbus): no system C library is needed to build it. When no keyring
//! can be reached (no D-Bus session, as on servers and in containers) it reports itself
//! unavailable: `MOAT_KEYRING=os` then fails with "OS keyring is not available" and `auto`
//! falls back to the passphrase or the key file. A reachable keyring that fails (locked,
//! prompt dismissed) is an error, never a silent fallback. The Linux kernel keyring is not
//! used: it does not survive a reboot, so it must not hold the only copy of the key.
//! Without the feature, [`UnavailableOsKeyring`] is the only implementation of
//! [`OsKeyring`].
//!
//! # File format (version 1)
//!
//! `credentials/<grant>.enc`, mode 0600, all integers little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `MOATCRED` |
//! | 1 | format version, `1` |
//! | 1 | key kind: `1` key file, `2` OS keyring, `3` passphrase (Argon2id) |
//! | 1 | grant name length *n* (1..=64) |
//! | *n* | grant name, ASCII `[a-z0-9][a-z0-9_-]*` |
//! | 12 + 16 | key kind 3 only: Argon2id `m_cost` (KiB), `t_cost`, `p_cost` as u32, then a 16-byte random salt |
//! | 16 | key check: first 16 bytes of SHA-256(`"moat-creds key check v1\0"` ‖ file key) |
//! | 24 | random XChaCha20-Poly1305 nonce |
//! | 4 | ciphertext length *c* (plaintext + 16-byte tag) |
//! | *c* | XChaCha20-Poly1305 ciphertext and tag |
//!
//! The associated data is every header byte before the ciphertext, so the version, key
//! kind, grant name and KDF parameters are authenticated: a file copied over another
//! grant's name is reported as swapped ([`StoreError::WrongGrant`]), a wrong key or
//! passphrase as [`StoreError::CannotDecrypt`] (thanks to the key check), a short file as
//! [`store::CorruptReason::Truncated`] and any other modification as
//! [`store::CorruptReason::Tampered`]. The file key is the raw 256-bit key (key file, OS
//! keyring) or Argon2id(passphrase, salt) with the header's parameters (bounded, so a
//! crafted file cannot demand unbounded memory). The plaintext is JSON:
//! `{"meta": {"name", "source", "created_at", "last_validated_at", "account"}, "value"}`.
//!
//! The key file `credentials/.key` holds 64 hex digits and must have mode 0600 (wider modes
//! are refused). Writers take an exclusive `flock` on `credentials/.lock`, write a temp
//! file in the same directory, fsync it, rename it over the target and fsync the
//! directory, so concurrent grants never clobber each other and a crash never leaves a
//! half-written file; temp files a crashed writer left behind are removed by the next
//! writer under the lock. New passphrase files reuse the salt of an existing file written
//! with the same passphrase and parameters, so resolving N grants costs one Argon2id
//! derivation (about 0.3 s with the default 64 MiB, 3 passes) instead of N.

#![warn(missing_docs)]

pub mod fsutil;
pub mod grant;
pub mod key;
#[cfg(feature = "os-keyring")]
pub mod os_keyring;
pub mod provider;
pub mod resolve;
pub mod store;
pub mod validate;

pub use grant::CommandGhCli;
pub use grant::GhCli;
pub use grant::GhError;
pub use grant::GrantError;
pub use grant::GrantOutcome;
pub use grant::GrantRequest;
pub use grant::Granter;
pub use grant::PromptError;
pub use grant::Prompter;
pub use key::KdfParams;
pub use key::KeyBytes;
pub use key::KeyError;
pub use key::KeyKind;
pub use key::KeyringMode;
pub use key::OsKeyring;
pub use key::OsKeyringError;
pub use key::StoreKey;
pub use key::UnavailableOsKeyring;
#[cfg(feature = "os-keyring")]
pub use os_keyring::SystemOsKeyring;
pub use provider::Provider;
pub use provider::ProviderError;
pub use provider::ProviderRegistry;
pub use resolve::StoreCredentialProvider;
pub use store::CredentialStore;
pub use store::GrantListing;
pub use store::GrantMeta;
pub use store::GrantRecord;
pub use store::GrantSource;
pub use store::StoreError;
pub use store::revoke_grant;
pub use validate::HttpValidator;
pub use validate::ResolveOverride;
pub use validate::UpstreamOverrides;
pub use validate::Validated;
pub use validate::ValidationError;
pub use validate::Validator;
