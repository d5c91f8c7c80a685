//! Validation against local TLS servers impersonating the providers through a resolve
//! override and an extra root CA, and a custom provider end to end.

use std::sync::Arc;

use moat_core::Secret;
use moat_core::creds::CredentialProvider as _;
use moat_creds::CommandGhCli;
use moat_creds::CredentialStore;
use moat_creds::GrantError;
use moat_creds::GrantRequest;
use moat_creds::Granter;
use moat_creds::HttpValidator;
use moat_creds::ProviderRegistry;
use moat_creds::ResolveOverride;
use moat_creds::StoreCredentialProvider;
use moat_creds::UpstreamOverrides;
use moat_creds::ValidationError;
use moat_creds::Validator as _;

use crate::support::FakePrompter;
use crate::support::TestResult;
use crate::support::TestUpstream;
use crate::support::header;
use crate::support::key_file_store;

const GOOD: &str = "ghp_GoodTokenGoodTokenGoodTokenGoodToken1";
const BAD: &str = "ghp_BadTokenBadTokenBadTokenBadTokenBad12";

fn overrides(upstream: &TestUpstream, hosts: &[&str]) -> UpstreamOverrides {
    UpstreamOverrides {
        resolve: hosts
            .iter()
            .map(|h| ResolveOverride {
                host: (*h).to_owned(),
                port: 443,
                addr: upstream.addr,
            })
            .collect(),
        extra_roots_pem: upstream.ca_pem.clone().into_bytes(),
    }
}

fn store(
    dir: &std::path::Path,
) -> Result<CredentialStore, Box<dyn std::error::Error + Send + Sync>> {
    key_file_store(dir)
}

fn env_request(provider: &str, var: &str, value: &str) -> GrantRequest {
    GrantRequest {
        provider: provider.to_owned(),
        env: vec![(var.to_owned(), Secret::new(value))],
        validate: true,
    }
}

async fn bounded<T>(
    f: impl std::future::Future<Output = T>,
) -> Result<T, tokio::time::error::Elapsed> {
    tokio::time::timeout(std::time::Duration::from_secs(90), f).await
}

fn github_handler() -> crate::support::Handler {
    Arc::new(|head: &str| {
        let auth = header(head, "authorization").unwrap_or_default();
        if auth.starts_with("Bearer ghs_") {
            // GitHub App installation tokens cannot read /user.
            return if head.starts_with("GET /installation/repositories?per_page=1 ") {
                (200, r#"{"total_count":1,"repositories":[]}"#.to_owned())
            } else {
                (
                    403,
                    r#"{"message":"Resource not accessible by integration"}"#.to_owned(),
                )
            };
        }
        if !head.starts_with("GET /user ") {
            return (404, r#"{"message":"Not Found"}"#.to_owned());
        }
        if header(head, "authorization") == Some(&format!("Bearer {GOOD}")) {
            (200, r#"{"login":"octocat","id":1}"#.to_owned())
        } else {
            (401, r#"{"message":"Bad credentials","documentation_url":"https://docs.github.com/rest","status":"401"}"#.to_owned())
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_grant_validates_against_impersonated_api() -> TestResult {
    bounded(async {
        let upstream = TestUpstream::start(&["api.github.com"], github_handler()).await?;
        let dir = tempfile::tempdir()?;
        let store = store(dir.path())?;
        let providers = ProviderRegistry::new(None);
        let validator = HttpValidator::new(&overrides(&upstream, &["api.github.com"]))?;
        let gh = CommandGhCli::new(dir.path().join("no-gh"));
        let granter = Granter::new(&store, &providers, &validator, &gh);

        let mut prompter = FakePrompter::default();
        let outcome = granter
            .grant(&env_request("github", "GITHUB_TOKEN", GOOD), &mut prompter)
            .await?;
        assert!(outcome.validated);
        assert_eq!(outcome.meta.account.as_deref(), Some("octocat"));
        let requests = upstream.requests();
        assert_eq!(requests.len(), 1);
        let head = &requests[0];
        assert!(head.starts_with("GET /user HTTP/1.1"), "{head}");
        assert_eq!(header(head, "host"), Some("api.github.com"));
        assert_eq!(header(head, "x-github-api-version"), Some("2022-11-28"));
        assert!(header(head, "user-agent").is_some_and(|ua| ua.starts_with("moat/")));

        // An invalid token: the provider's answer, nothing written.
        let err = granter
            .grant(&env_request("github", "GH_TOKEN", BAD), &mut prompter)
            .await
            .err()
            .ok_or("bad token accepted")?;
        match &err {
            GrantError::Validation(ValidationError::Rejected {
                status, message, ..
            }) => {
                assert_eq!(*status, 401);
                assert_eq!(message, "Bad credentials");
            }
            other => return Err(format!("unexpected {other:?}").into()),
        }
        assert!(
            err.to_string().contains("HTTP 401: Bad credentials"),
            "{err}"
        );
        assert!(!err.to_string().contains(BAD));
        let stored = store.load("github")?.ok_or("first grant lost")?;
        assert_eq!(
            stored.value.expose(),
            GOOD,
            "rejected token overwrote the grant"
        );

        // An installation token (as in GitHub Actions) validates through its own endpoint.
        let outcome = granter
            .grant(
                &env_request(
                    "github",
                    "GITHUB_TOKEN",
                    "ghs_InstallationToken0123456789abcdef",
                ),
                &mut prompter,
            )
            .await?;
        assert!(outcome.validated);
        assert_eq!(outcome.meta.account, None);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_upstream_is_refused() -> TestResult {
    bounded(async {
        let upstream = TestUpstream::start(&["api.github.com"], github_handler()).await?;
        let mut o = overrides(&upstream, &["api.github.com"]);
        o.extra_roots_pem.clear();
        let validator = HttpValidator::new(&o)?;
        let provider = ProviderRegistry::new(None).get("github")?;
        let err = validator
            .validate(&provider, &Secret::new(GOOD))
            .await
            .err()
            .ok_or("untrusted certificate accepted")?;
        assert!(
            matches!(err, ValidationError::Unreachable { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("https://api.github.com/user"),
            "{err}"
        );
        assert!(
            upstream.requests().is_empty(),
            "request sent over unverified TLS"
        );
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_and_openai_validation_calls() -> TestResult {
    bounded(async {
        let handler: crate::support::Handler = Arc::new(|head: &str| {
            let anthropic_ok = header(head, "x-api-key") == Some("sk-ant-api03-good")
                && header(head, "anthropic-version") == Some("2023-06-01");
            let openai_ok = header(head, "authorization") == Some("Bearer sk-good");
            if head.starts_with("GET /v1/models") && (anthropic_ok || openai_ok) {
                (200, r#"{"data":[]}"#.to_owned())
            } else if header(head, "host") == Some("api.openai.com") {
                (
                    401,
                    r#"{"error":{"message":"Incorrect API key provided: sk-bad. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error"}}"#
                        .to_owned(),
                )
            } else {
                (
                    401,
                    r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#
                        .to_owned(),
                )
            }
        });
        let hosts = ["api.anthropic.com", "api.openai.com"];
        let upstream = TestUpstream::start(&hosts, handler).await?;
        let validator = HttpValidator::new(&overrides(&upstream, &hosts))?;
        let providers = ProviderRegistry::new(None);
        let anthropic = providers.get("anthropic")?;
        let openai = providers.get("openai")?;
        assert!(validator.validate(&anthropic, &Secret::new("sk-ant-api03-good")).await?.is_some());
        assert!(validator.validate(&openai, &Secret::new("sk-good")).await?.is_some());

        let err = validator
            .validate(&anthropic, &Secret::new("sk-ant-api03-bad"))
            .await
            .err()
            .ok_or("bad key accepted")?;
        assert!(err.to_string().contains("anthropic rejected the credential: HTTP 401: invalid x-api-key"), "{err}");
        let err = validator
            .validate(&openai, &Secret::new("sk-bad"))
            .await
            .err()
            .ok_or("bad key accepted")?;
        let msg = err.to_string();
        assert!(msg.contains("Incorrect API key provided: [REDACTED]."), "{msg}");
        assert!(!msg.contains("sk-bad"), "{msg}");
        let requests = upstream.requests();
        assert_eq!(requests.len(), 4);
        assert!(requests[0].starts_with("GET /v1/models?limit=1 HTTP/1.1"), "{}", requests[0]);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_provider_end_to_end() -> TestResult {
    bounded(async {
        let handler: crate::support::Handler = Arc::new(|head: &str| {
            if head.starts_with("GET /v1/whoami ") && header(head, "x-acme-key") == Some("Key acme-real-value") {
                (200, "{}".to_owned())
            } else {
                (403, r#"{"message":"forbidden"}"#.to_owned())
            }
        });
        let upstream = TestUpstream::start(&["api.acme.test"], handler).await?;
        let home = tempfile::tempdir()?;
        let providers_dir = home.path().join("providers");
        std::fs::create_dir_all(&providers_dir)?;
        std::fs::write(
            providers_dir.join("acme.yaml"),
            "hosts: [api.acme.test, \"*.acme.test\"]\nheader: X-Acme-Key\nformat: prefix\nprefix: \"Key \"\nenv: ACME_API_KEY\nplaceholder_prefix: acme_\nvalidate: https://api.acme.test/v1/whoami\n",
        )?;
        let providers = ProviderRegistry::new(Some(providers_dir));
        assert!(providers.names().contains(&"acme".to_owned()));
        let store = store(&home.path().join("credentials"))?;
        let validator = HttpValidator::new(&overrides(&upstream, &["api.acme.test"]))?;
        let gh = CommandGhCli::new(home.path().join("no-gh"));
        let granter = Granter::new(&store, &providers, &validator, &gh);
        let mut prompter = FakePrompter::default();

        let err = granter
            .grant(&env_request("acme", "ACME_API_KEY", "wrong"), &mut prompter)
            .await
            .err()
            .ok_or("wrong key accepted")?;
        assert!(err.to_string().contains("HTTP 403: forbidden"), "{err}");
        assert!(store.list()?.is_empty());

        let outcome = granter
            .grant(&env_request("acme", "ACME_API_KEY", "acme-real-value"), &mut prompter)
            .await?;
        assert!(outcome.validated);

        let run = StoreCredentialProvider::new(store, providers);
        let resolved = run.resolve(&["acme".to_owned()]).await?;
        assert_eq!(resolved.env.len(), 1);
        let (var, placeholder) = &resolved.env[0];
        assert_eq!(var, "ACME_API_KEY");
        assert!(placeholder.starts_with("acme_") && placeholder.len() == 45, "{placeholder}");
        let rule = resolved.rules.first().ok_or("no rule")?;
        assert_eq!(rule.header, "x-acme-key");
        assert_eq!(rule.format.render(rule.value.expose()), "Key acme-real-value");
        assert_eq!(&rule.placeholder, placeholder);
        assert!(rule.hosts.iter().any(|h| h.matches("eu.acme.test", 443)));
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() -> TestResult {
    bounded(async {
        let handler: crate::support::Handler = Arc::new(|head: &str| {
            if head.starts_with("GET /redirected ") {
                (200, r#"{"login":"followed"}"#.to_owned())
            } else {
                (302, "{}".to_owned())
            }
        });
        let upstream = TestUpstream::start(&["api.github.com"], handler).await?;
        let validator = HttpValidator::new(&overrides(&upstream, &["api.github.com"]))?;
        let provider = ProviderRegistry::new(None).get("github")?;
        let err = validator
            .validate(&provider, &Secret::new(GOOD))
            .await
            .err()
            .ok_or("redirect followed to success")?;
        assert!(
            matches!(err, ValidationError::Rejected { status: 302, .. }),
            "{err:?}"
        );
        assert_eq!(
            upstream.requests().len(),
            1,
            "the credential followed a redirect"
        );
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await?
}
