//! The grant flow with a fake `gh` program and a scripted terminal.

use moat_core::Secret;
use moat_creds::CommandGhCli;
use moat_creds::CredentialStore;
use moat_creds::GhCli;
use moat_creds::GhError;
use moat_creds::GrantError;
use moat_creds::GrantRequest;
use moat_creds::GrantSource;
use moat_creds::Granter;
use moat_creds::ProviderRegistry;

use crate::support::AcceptingValidator;
use crate::support::FakePrompter;
use crate::support::TestResult;
use crate::support::install_script;
use crate::support::key_file_store;

const GH_TOKEN: &str = "gho_FakeGhCliToken0123456789abcdefABCDEF";

fn fake_gh(dir: &std::path::Path) -> Result<std::path::PathBuf, std::io::Error> {
    install_script(
        dir,
        "gh",
        &format!(
            "if [ \"$1 $2\" = \"auth token\" ]; then echo {GH_TOKEN}; exit 0; fi\necho \"unexpected args: $*\" >&2; exit 2"
        ),
    )
}

fn store(
    dir: &std::path::Path,
) -> Result<CredentialStore, Box<dyn std::error::Error + Send + Sync>> {
    key_file_store(&dir.join("credentials"))
}

fn request(provider: &str, env: &[(&str, &str)]) -> GrantRequest {
    GrantRequest {
        provider: provider.to_owned(),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Secret::new(*v)))
            .collect(),
        validate: true,
    }
}

#[test]
fn command_gh_cli_reads_the_token() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gh = CommandGhCli::new(fake_gh(dir.path())?);
    assert_eq!(gh.auth_token()?.expose(), GH_TOKEN);

    let logged_out = install_script(
        dir.path(),
        "gh-logged-out",
        "echo 'no oauth token found for github.com' >&2; exit 1",
    )?;
    let err = CommandGhCli::new(logged_out)
        .auth_token()
        .err()
        .ok_or("no error")?;
    assert!(matches!(err, GhError::Failed { .. }), "{err:?}");
    assert!(err.to_string().contains("no oauth token found"), "{err}");

    let missing = CommandGhCli::new(dir.path().join("does-not-exist"));
    assert!(matches!(
        missing.auth_token(),
        Err(GhError::NotInstalled { .. })
    ));

    let silent = install_script(dir.path(), "gh-silent", "exit 0")?;
    assert!(matches!(
        CommandGhCli::new(silent).auth_token(),
        Err(GhError::Empty { .. })
    ));

    let slow = install_script(dir.path(), "gh-slow", "exec sleep 30")?;
    let err = CommandGhCli::new(slow)
        .with_timeout(std::time::Duration::from_millis(300))
        .auth_token()
        .err()
        .ok_or("no timeout")?;
    assert!(matches!(err, GhError::TimedOut { .. }), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn github_grant_uses_gh_after_confirmation() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = store(dir.path())?;
    let providers = ProviderRegistry::new(None);
    let validator = AcceptingValidator::default();
    let gh = CommandGhCli::new(fake_gh(dir.path())?);
    let granter = Granter::new(&store, &providers, &validator, &gh);
    let mut prompter = FakePrompter {
        terminal: true,
        answers: vec![true],
        ..FakePrompter::default()
    };
    let outcome = granter
        .grant(&request("github", &[]), &mut prompter)
        .await?;
    assert_eq!(outcome.meta.source, GrantSource::GhCli);
    assert!(outcome.validated);
    assert!(!outcome.replaced);
    assert_eq!(outcome.meta.account.as_deref(), Some("octocat"));
    assert!(outcome.meta.last_validated_at.is_some());
    assert_eq!(prompter.questions.len(), 1, "asked exactly once");
    assert!(prompter.prompts.is_empty(), "no hidden prompt needed");
    assert_eq!(
        store.load("github")?.ok_or("not saved")?.value.expose(),
        GH_TOKEN
    );
    let calls = validator
        .calls
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    assert_eq!(calls, [format!("github={GH_TOKEN}")]);
    assert!(prompter.infos.iter().all(|m| !m.contains(GH_TOKEN)));
    let dir_mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(store.dir())?.permissions());
    assert_eq!(
        dir_mode & 0o777,
        0o700,
        "credentials directory must be private"
    );

    // Declining gh falls through to the hidden prompt; the grant is replaced.
    let mut prompter = FakePrompter {
        terminal: true,
        answers: vec![false],
        input: Some("  ghp_typed_at_the_prompt \n".to_owned()),
        ..FakePrompter::default()
    };
    let outcome = granter
        .grant(&request("github", &[]), &mut prompter)
        .await?;
    assert_eq!(outcome.meta.source, GrantSource::Prompt);
    assert!(outcome.replaced);
    assert_eq!(
        store.load("github")?.ok_or("not saved")?.value.expose(),
        "ghp_typed_at_the_prompt"
    );
    Ok(())
}

#[tokio::test]
async fn environment_wins_and_github_token_comes_first() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = store(dir.path())?;
    let providers = ProviderRegistry::new(None);
    let validator = AcceptingValidator::default();
    let gh = CommandGhCli::new(dir.path().join("no-gh"));
    let granter = Granter::new(&store, &providers, &validator, &gh);
    let mut prompter = FakePrompter::default();
    let outcome = granter
        .grant(
            &request(
                "github",
                &[
                    ("GH_TOKEN", "ghp_from_gh_token"),
                    ("GITHUB_TOKEN", "ghp_from_github_token"),
                ],
            ),
            &mut prompter,
        )
        .await?;
    assert_eq!(
        outcome.meta.source,
        GrantSource::Env {
            variable: "GITHUB_TOKEN".to_owned()
        }
    );
    let outcome = granter
        .grant(
            &request("github", &[("GITHUB_TOKEN", ""), ("GH_TOKEN", "ghp_x")]),
            &mut prompter,
        )
        .await?;
    assert_eq!(outcome.meta.source.to_string(), "env (GH_TOKEN)");
    Ok(())
}

#[tokio::test]
async fn no_terminal_and_no_token_names_the_variables() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = store(dir.path())?;
    let providers = ProviderRegistry::new(None);
    let validator = AcceptingValidator::default();
    let gh = CommandGhCli::new(fake_gh(dir.path())?);
    let granter = Granter::new(&store, &providers, &validator, &gh);
    let mut prompter = FakePrompter::default();
    let err = granter
        .grant(&request("github", &[]), &mut prompter)
        .await
        .err()
        .ok_or("granted without a value")?;
    assert!(matches!(err, GrantError::NoValue { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("GITHUB_TOKEN or GH_TOKEN"), "{msg}");
    assert!(store.list()?.is_empty(), "nothing written");

    let err = granter
        .grant(&request("anthropic", &[]), &mut prompter)
        .await
        .err()
        .ok_or("granted without a value")?;
    assert!(err.to_string().contains("set ANTHROPIC_API_KEY"), "{err}");

    let err = granter
        .grant(&request("gitlab", &[]), &mut prompter)
        .await
        .err()
        .ok_or("unknown provider granted")?;
    assert!(
        err.to_string().contains("anthropic, github, openai"),
        "{err}"
    );

    // A value with a line break inside could smuggle a header: refused, nothing written.
    let err = granter
        .grant(
            &request("openai", &[("OPENAI_API_KEY", "sk-abc\r\nx-evil: 1")]),
            &mut prompter,
        )
        .await
        .err()
        .ok_or("value with CRLF granted")?;
    assert!(matches!(err, GrantError::InvalidValue { .. }), "{err:?}");
    assert!(store.list()?.is_empty());

    // An empty answer at the prompt is an error too, and writes nothing.
    let mut prompter = FakePrompter {
        terminal: true,
        input: Some("   ".to_owned()),
        ..FakePrompter::default()
    };
    let err = granter
        .grant(&request("openai", &[]), &mut prompter)
        .await
        .err()
        .ok_or("empty value granted")?;
    assert!(matches!(err, GrantError::EmptyValue { .. }), "{err:?}");
    assert!(store.list()?.is_empty());
    Ok(())
}

#[tokio::test]
async fn revalidate_updates_the_metadata() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = store(dir.path())?;
    let providers = ProviderRegistry::new(None);
    let validator = AcceptingValidator::default();
    let gh = CommandGhCli::new(dir.path().join("no-gh"));
    let granter = Granter::new(&store, &providers, &validator, &gh);
    let err = granter
        .revalidate("github")
        .await
        .err()
        .ok_or("revalidated nothing")?;
    assert!(matches!(err, GrantError::NotGranted { .. }), "{err:?}");
    let mut request = request("github", &[("GH_TOKEN", "ghp_x")]);
    request.validate = false;
    let outcome = granter
        .grant(&request, &mut FakePrompter::default())
        .await?;
    assert!(!outcome.validated);
    assert!(outcome.meta.last_validated_at.is_none());
    let meta = granter.revalidate("github").await?;
    assert!(meta.last_validated_at.is_some());
    assert_eq!(meta.account.as_deref(), Some("octocat"));
    let stored = store.load("github")?.ok_or("lost")?;
    assert_eq!(stored.meta, meta);
    assert_eq!(stored.value.expose(), "ghp_x");
    Ok(())
}
