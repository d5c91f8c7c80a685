//! A git smart-HTTP server (the real `git http-backend`) behind [`crate::upstream`], for
//! clone and push tests against an impersonated github.com.
#![expect(clippy::unwrap_used, reason = "test harness")]

use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;

use crate::upstream::Recorded;
use crate::upstream::Reply;

/// Answers `req` with `git http-backend` serving the repositories under `root`, requiring
/// `Authorization: <expected_auth>`.
pub fn serve(root: &Path, req: &Recorded, expected_auth: &str) -> Reply {
    if req.headers.get("authorization").map(String::as_str) != Some(expected_auth) {
        return Reply {
            status: 401,
            headers: vec![("www-authenticate".into(), "Basic realm=\"GitHub\"".into())],
            body: b"authentication required".to_vec(),
        };
    }
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let mut child = Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", &req.method)
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env(
            "CONTENT_TYPE",
            req.headers.get("content-type").cloned().unwrap_or_default(),
        )
        .env("CONTENT_LENGTH", req.body.len().to_string())
        .env(
            "HTTP_CONTENT_ENCODING",
            req.headers
                .get("content-encoding")
                .cloned()
                .unwrap_or_default(),
        )
        .env(
            "GIT_PROTOCOL",
            req.headers.get("git-protocol").cloned().unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&req.body).unwrap();
    let out = child.wait_with_output().unwrap();
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| {
            out.stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, 2))
        })
        .unwrap_or((out.stdout.len(), 0));
    let head = String::from_utf8_lossy(&out.stdout[..split.0]).into_owned();
    let body = out.stdout[split.0 + split.1..].to_vec();
    let mut status = 200;
    let mut headers = Vec::new();
    for line in head.lines() {
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("status") {
                status = v
                    .trim()
                    .split(' ')
                    .next()
                    .unwrap_or("200")
                    .parse()
                    .unwrap_or(200);
            } else {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
    }
    Reply {
        status,
        headers,
        body,
    }
}

/// Creates a bare repository `root/<name>.git` with one commit on `main`.
pub fn bare_repo(root: &Path, name: &str) -> PathBuf {
    let work = root.join(format!("{name}-work"));
    let bare = root.join(format!("{name}.git"));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(
        work.join("README.md"),
        "hello from the impersonated github\n",
    )
    .unwrap();
    for args in [
        vec!["init", "-q", "-b", "main"],
        vec!["add", "README.md"],
        vec![
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "commit",
            "-qm",
            "init",
        ],
    ] {
        assert!(
            Command::new("git")
                .args(&args)
                .current_dir(&work)
                .status()
                .unwrap()
                .success()
        );
    }
    assert!(
        Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(&work)
            .arg(&bare)
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("git")
            .args(["config", "http.receivepack", "true"])
            .current_dir(&bare)
            .status()
            .unwrap()
            .success()
    );
    bare
}
