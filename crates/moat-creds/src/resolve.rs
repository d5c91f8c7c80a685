//! [`CredentialProvider`] over the encrypted store: grant names to injection rules and
//! placeholder environment for one run.

use std::sync::Arc;

use async_trait::async_trait;
use moat_core::creds::CredentialError;
use moat_core::creds::CredentialProvider;
use moat_core::creds::ResolvedGrants;

use crate::fsutil::FsError;
use crate::provider::ProviderError;
use crate::provider::ProviderRegistry;
use crate::store::CredentialStore;

/// Resolves grants from a [`CredentialStore`] with the providers of a [`ProviderRegistry`].
///
/// Every call draws fresh random placeholders, so each run gets its own.
/// Cloning is cheap and shares the store.
#[derive(Debug, Clone)]
pub struct StoreCredentialProvider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: CredentialStore,
    providers: ProviderRegistry,
}

impl StoreCredentialProvider {
    /// A provider over `store` and `providers`.
    pub fn new(store: CredentialStore, providers: ProviderRegistry) -> Self {
        Self {
            inner: Arc::new(Inner { store, providers }),
        }
    }

    /// The store.
    pub fn store(&self) -> &CredentialStore {
        &self.inner.store
    }

    /// The synchronous core of [`CredentialProvider::resolve`]. Duplicate names are
    /// resolved once; the environment keeps the order of `grants`. Reading a
    /// passphrase-protected store runs Argon2id (a fraction of a second), so async callers
    /// go through [`CredentialProvider::resolve`], which runs this on a blocking thread.
    pub fn resolve_now(&self, grants: &[String]) -> Result<ResolvedGrants, CredentialError> {
        self.inner.resolve_now(grants)
    }
}

impl Inner {
    fn resolve_now(&self, grants: &[String]) -> Result<ResolvedGrants, CredentialError> {
        let mut out = ResolvedGrants::default();
        let mut seen: Vec<&str> = Vec::new();
        for grant in grants {
            if seen.contains(&grant.as_str()) {
                continue;
            }
            seen.push(grant);
            let provider = self.providers.get(grant).map_err(|e| match e {
                ProviderError::Unknown { name, known, .. } => {
                    CredentialError::UnknownProvider { name, known }
                }
                other => CredentialError::Store {
                    grant: grant.clone(),
                    source: Box::new(other),
                },
            })?;
            let record = self
                .store
                .load(grant)
                .map_err(|e| CredentialError::Store {
                    grant: grant.clone(),
                    source: Box::new(e),
                })?
                .ok_or_else(|| CredentialError::Missing {
                    grant: grant.clone(),
                })?;
            let ResolvedGrants { rules, env } =
                provider
                    .resolve(&record.value)
                    .map_err(|source| CredentialError::Store {
                        grant: grant.clone(),
                        source: Box::new(FsError::Random { source }),
                    })?;
            out.rules.extend(rules);
            for (k, v) in env {
                if !out.env.iter().any(|(existing, _)| *existing == k) {
                    out.env.push((k, v));
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl CredentialProvider for StoreCredentialProvider {
    async fn resolve(&self, grants: &[String]) -> Result<ResolvedGrants, CredentialError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.resolve_now(grants);
        }
        let inner = self.inner.clone();
        let owned = grants.to_vec();
        tokio::task::spawn_blocking(move || inner.resolve_now(&owned))
            .await
            .map_err(|e| CredentialError::Store {
                grant: grants.join(","),
                source: Box::new(e),
            })?
    }
}
