//! `moat grant`, `grant list`, `revoke`: validation against an impersonated provider, sources,
//! and damaged stores.

use std::io::Write;

use moat_e2e::TestEnv;
use moat_e2e::text;
use moat_e2e::upstream::Reply;
use moat_e2e::upstream::TlsUpstream;

const TOKEN: &str = "ghp_e2eRealToken0123456789abcdefghijklmn";

fn github() -> TlsUpstream {
    TlsUpstream::start(&["api.github.com"], |req| {
        if req.path == "/user"
            && req.headers.get("authorization").map(String::as_str)
                == Some(&format!("Bearer {TOKEN}"))
        {
            Reply::json(200, &serde_json::json!({"login": "octocat", "id": 1}))
        } else {
            Reply::json(401, &serde_json::json!({"message": "Bad credentials"}))
        }
    })
}

fn grant_cmd(env: &TestEnv, gh: &TlsUpstream, args: &[&str]) -> std::process::Command {
    let mut cmd = env.moat(args);
    cmd.env("MOAT_RESOLVE", gh.resolve(&["api.github.com"]))
        .env("MOAT_UPSTREAM_CA", &gh.ca_path)
        .env("MOAT_KEYRING", "file")
        .env_remove("GITHUB_TOKEN")
        .env_remove("GH_TOKEN")
        .env_remove("MOAT_PASSPHRASE");
    cmd
}

#[test]
fn grant_validates_saves_encrypted_lists_and_revokes() {
    let env = TestEnv::new();
    let gh = github();
    let out = grant_cmd(&env, &gh, &["grant", "github"])
        .env("GITHUB_TOKEN", TOKEN)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Validating token"), "{stderr}");
    assert!(stderr.contains("Authenticated as: octocat"), "{stderr}");
    assert!(stderr.contains("GitHub credential saved to"), "{stderr}");
    // The provider saw the real token exactly as it validates it.
    let seen = gh.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/user");

    let file = env.home.path().join("credentials/github.enc");
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
        "token stored in clear"
    );
    assert!(
        !bytes.windows(7).any(|w| w == b"octocat"),
        "metadata stored in clear"
    );

    let out = env.run(&["grant", "list", "--json"]);
    let listed = text(&out.stdout);
    assert!(
        !listed.contains(TOKEN),
        "grant list must never print the value"
    );
    let rows: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(rows[0]["name"], "github");
    assert_eq!(rows[0]["account"], "octocat");
    assert!(rows[0]["last_validated_at"].is_string());

    let out = env.run(&["revoke", "github"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!file.exists());
}

#[test]
fn an_invalid_token_reports_the_provider_answer_and_writes_nothing() {
    let env = TestEnv::new();
    let gh = github();
    let out = grant_cmd(&env, &gh, &["grant", "github"])
        .env("GITHUB_TOKEN", "ghp_wrong")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("401") && stderr.contains("Bad credentials"),
        "{stderr}"
    );
    assert!(!env.home.path().join("credentials/github.enc").exists());
}

#[test]
fn no_terminal_and_no_token_names_the_variables() {
    let env = TestEnv::new();
    let gh = github();
    let out = grant_cmd(&env, &gh, &["grant", "github"]).output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("GITHUB_TOKEN") && stderr.contains("GH_TOKEN"),
        "{stderr}"
    );
    let out = env.run(&["grant", "nosuch"]);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("github") && stderr.contains("anthropic") && stderr.contains("openai"),
        "{stderr}"
    );
}

#[test]
fn the_gh_cli_login_is_offered_on_a_terminal() {
    let env = TestEnv::new();
    let gh = github();
    let bin = tempfile::tempdir().unwrap();
    let fake_gh = bin.path().join("gh");
    std::fs::write(
        &fake_gh,
        format!("#!/bin/sh\n[ \"$1 $2\" = 'auth token' ] && echo {TOKEN}\n"),
    )
    .unwrap();
    std::fs::set_permissions(
        &fake_gh,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap()
    );
    // A terminal, so moat may ask before using the gh login.
    let mut child = env
        .moat_in_terminal(&["grant", "github"])
        .env("PATH", path)
        .env("MOAT_RESOLVE", gh.resolve(&["api.github.com"]))
        .env("MOAT_UPSTREAM_CA", &gh.ca_path)
        .env("MOAT_KEYRING", "file")
        .env_remove("GITHUB_TOKEN")
        .env_remove("GH_TOKEN")
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    stdin.write_all(b"y\r").unwrap();
    stdin.flush().unwrap();
    let out = child.wait_with_output().unwrap();
    let screen = text(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("Found gh CLI authentication"), "{screen}");
    assert!(screen.contains("Use token from gh CLI? [Y/n]"), "{screen}");
    assert!(screen.contains("Authenticated as: octocat"), "{screen}");
    let rows: serde_json::Value =
        serde_json::from_slice(&env.run(&["grant", "list", "--json"]).stdout).unwrap();
    assert_eq!(rows[0]["source"], "gh");
}

#[test]
fn damaged_files_and_wrong_passphrases_are_specific_errors() {
    let env = TestEnv::new();
    let gh = github();
    let grant = |pass: &str| {
        grant_cmd(&env, &gh, &["grant", "github"])
            .env("GITHUB_TOKEN", TOKEN)
            .env("MOAT_KEYRING", "auto")
            .env("MOAT_PASSPHRASE", pass)
            .output()
            .unwrap()
    };
    let out = grant("correct horse");
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Wrong passphrase: "cannot decrypt" naming the file.
    let out = env
        .moat(&["grant", "list"])
        .env("MOAT_PASSPHRASE", "wrong horse")
        .output()
        .unwrap();
    let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        shown.contains("cannot decrypt") && shown.contains("github.enc"),
        "{shown}"
    );
    // A flipped byte: tampered, naming the file and the fix.
    let file = env.home.path().join("credentials/github.enc");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 5;
    bytes[last] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let out = env
        .moat(&["grant", "list"])
        .env("MOAT_PASSPHRASE", "correct horse")
        .output()
        .unwrap();
    let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(shown.contains("github.enc"), "{shown}");
    assert!(
        shown.contains("moat revoke github"),
        "names the fix: {shown}"
    );
    // Revoking works without the key, so a damaged grant can always be replaced.
    let out = env.run(&["revoke", "github"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
