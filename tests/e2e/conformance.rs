//! Conformance: common clients authenticate through the proxy with no flags and no token in
//! the container — curl, git (smart HTTP clone and push), python (urllib and requests) and
//! node — against local servers impersonating api.github.com and github.com.

use std::process::Command;

use moat_e2e::TestEnv;
use moat_e2e::require_docker;
use moat_e2e::text;
use moat_e2e::upstream::Reply;
use moat_e2e::upstream::TlsUpstream;

const TOKEN: &str = "ghp_e2eConformance0123456789abcdefghijkl";

fn basic(token: &str) -> String {
    format!(
        "Basic {}",
        moat_core::creds::base64_encode(format!("x-access-token:{token}").as_bytes())
    )
}

#[test]
fn curl_git_python_and_node_authenticate_with_no_flags() {
    require_docker();
    let env = TestEnv::new();
    let repos = tempfile::tempdir().unwrap();
    let bare = moat_e2e::git::bare_repo(repos.path(), "repo");
    let root = repos.path().to_owned();
    let expected = basic(TOKEN);
    let api = TlsUpstream::start(&["api.github.com"], |req| {
        if req.headers.get("authorization").map(String::as_str) == Some(&format!("Bearer {TOKEN}"))
        {
            Reply::json(200, &serde_json::json!({"login": "octocat"}))
        } else {
            Reply::json(401, &serde_json::json!({"message": "Bad credentials"}))
        }
    });
    // github.com serves /octo/repo.git from the bare repository created above.
    let octo = root.join("octo");
    std::fs::create_dir_all(&octo).unwrap();
    std::fs::rename(&bare, octo.join("repo.git")).unwrap();
    let git_root = root.clone();
    let web = TlsUpstream::start(&["github.com"], move |req| {
        moat_e2e::git::serve(&git_root, req, &expected)
    });
    let mut ca = std::fs::read(&api.ca_path).unwrap();
    ca.extend(std::fs::read(&web.ca_path).unwrap());
    let ca_path = env.home.path().join("upstream-cas.pem");
    std::fs::write(&ca_path, ca).unwrap();
    let resolve = format!(
        "{},{}",
        api.resolve(&["api.github.com"]),
        web.resolve(&["github.com"])
    );
    let moat = |args: &[&str]| {
        let mut cmd = env.moat(args);
        cmd.env("MOAT_RESOLVE", &resolve)
            .env("MOAT_UPSTREAM_CA", &ca_path)
            .env("MOAT_KEYRING", "file")
            .env_remove("GITHUB_TOKEN")
            .env_remove("GH_TOKEN");
        cmd
    };
    let out = moat(&["grant", "github"])
        .env("GITHUB_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "grant: {}", text(&out.stderr));

    let script = "set -e; \
        echo curl=$(curl -s https://api.github.com/user); \
        echo urllib=$(python3 -c \"import json,urllib.request;print(json.load(urllib.request.urlopen('https://api.github.com/user'))['login'])\"); \
        echo requests=$(python3 -c \"import requests;print(requests.get('https://api.github.com/user').json()['login'])\"); \
        echo node=$(node -e \"require('https').get('https://api.github.com/user',r=>{let b='';r.on('data',d=>b+=d);r.on('end',()=>console.log(JSON.parse(b).login))})\"); \
        git clone -q https://github.com/octo/repo.git /tmp/repo; \
        cd /tmp/repo; echo readme=$(cat README.md); \
        echo pushed > pushed.txt; git add pushed.txt; \
        git -c user.name=agent -c user.email=agent@example.com commit -qm 'from the sandbox'; \
        git push -q origin HEAD:main; echo push=ok";
    let out = moat(&["run", "--grant", "github", "--", "sh", "-c", script])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    for expected in [
        "curl={\"login\":\"octocat\"}",
        "urllib=octocat",
        "requests=octocat",
        "node=octocat",
        "readme=hello from the impersonated github",
        "push=ok",
    ] {
        assert!(stdout.contains(expected), "{expected} missing:\n{stdout}");
    }
    // The push arrived in the impersonated github.com repository.
    let log = Command::new("git")
        .args(["log", "--format=%s", "main"])
        .current_dir(root.join("octo/repo.git"))
        .output()
        .unwrap();
    assert!(
        text(&log.stdout).contains("from the sandbox"),
        "{}",
        text(&log.stdout)
    );
    // git authenticated with Basic x-access-token (injected by the proxy).
    assert!(
        web.requests()
            .iter()
            .any(|r| r.path.contains("git-receive-pack"))
    );
    assert!(!stdout.contains(TOKEN));
}
