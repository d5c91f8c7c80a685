//! `CredentialProvider` over the store.

use chrono::Utc;
use moat_core::Secret;
use moat_core::creds::CredentialError;
use moat_core::creds::CredentialProvider as _;
use moat_creds::CredentialStore;
use moat_creds::GrantMeta;
use moat_creds::GrantRecord;
use moat_creds::GrantSource;
use moat_creds::ProviderRegistry;
use moat_creds::StoreCredentialProvider;

use crate::support::TestResult;
use crate::support::key_file_store;

fn save(store: &CredentialStore, name: &str, value: &str) -> Result<(), moat_creds::StoreError> {
    store.save(&GrantRecord {
        meta: GrantMeta {
            name: name.to_owned(),
            source: GrantSource::Provided,
            created_at: Utc::now(),
            last_validated_at: None,
            account: None,
        },
        value: Secret::new(value),
    })
}

#[tokio::test]
async fn resolves_rules_and_placeholders() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = key_file_store(dir.path())?;
    save(&store, "github", "ghp_realrealrealrealrealrealrealrealreal")?;
    save(&store, "anthropic", "sk-ant-api03-real")?;
    save(&store, "openai", "sk-realopenai")?;
    let provider = StoreCredentialProvider::new(store, ProviderRegistry::new(None));
    let grants: Vec<String> = ["github", "anthropic", "openai", "github"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let resolved = provider.resolve(&grants).await?;
    let names: Vec<&str> = resolved.env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "GH_TOKEN",
            "GITHUB_TOKEN",
            "ANTHROPIC_API_KEY",
            "OPENAI_API_KEY"
        ]
    );
    assert_eq!(resolved.rules.len(), 4);
    for (_, v) in &resolved.env {
        assert!(!v.contains("real"), "real value in the environment: {v}");
    }
    let gh = &resolved.env[0].1;
    assert!(gh.starts_with("ghp_") && gh.len() == 40);
    assert!(resolved.env[2].1.starts_with("sk-ant-api03-"));
    assert!(resolved.env[3].1.starts_with("sk-"));
    let anthropic = resolved
        .rules
        .iter()
        .find(|r| r.grant == "anthropic")
        .ok_or("no anthropic rule")?;
    assert_eq!(anthropic.header, "x-api-key");
    assert_eq!(anthropic.value.expose(), "sk-ant-api03-real");
    assert!(
        anthropic
            .hosts
            .iter()
            .any(|h| h.matches("api.anthropic.com", 443))
    );
    let openai = resolved
        .rules
        .iter()
        .find(|r| r.grant == "openai")
        .ok_or("no openai rule")?;
    assert_eq!(
        openai.format.render(openai.value.expose()),
        "Bearer sk-realopenai"
    );
    assert!(
        !format!("{resolved:?}").contains("real"),
        "Debug leaks a value"
    );

    // Every run gets fresh placeholders.
    let again = provider.resolve(&grants).await?;
    assert_ne!(again.env[0].1, resolved.env[0].1);

    let err = provider
        .resolve(&["aws".to_owned()])
        .await
        .err()
        .ok_or("aws resolved")?;
    assert!(
        matches!(err, CredentialError::UnknownProvider { .. }),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn missing_and_corrupt_grants_fail_clearly() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = key_file_store(dir.path())?;
    std::fs::write(store.path_for("openai"), b"garbage")?;
    let provider = StoreCredentialProvider::new(store, ProviderRegistry::new(None));
    let err = provider
        .resolve(&["github".to_owned()])
        .await
        .err()
        .ok_or("resolved")?;
    assert!(matches!(err, CredentialError::Missing { .. }));
    assert!(err.to_string().contains("moat grant github"), "{err}");
    let err = provider
        .resolve(&["openai".to_owned()])
        .await
        .err()
        .ok_or("resolved")?;
    let source = std::error::Error::source(&err)
        .map(|s| s.to_string())
        .unwrap_or_default();
    assert!(source.contains("moat revoke openai"), "{source}");
    Ok(())
}
