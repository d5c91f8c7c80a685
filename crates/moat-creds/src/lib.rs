//! moat-creds: the encrypted credential store.

pub mod fsutil;
pub mod key;
pub mod store;

pub use key::KdfParams;
pub use key::KeyBytes;
pub use key::KeyError;
pub use key::KeyKind;
pub use key::KeyringMode;
pub use key::OsKeyring;
pub use key::OsKeyringError;
pub use key::StoreKey;
pub use key::UnavailableOsKeyring;
pub use store::CredentialStore;
pub use store::GrantListing;
pub use store::GrantMeta;
pub use store::GrantRecord;
pub use store::GrantSource;
pub use store::StoreError;
