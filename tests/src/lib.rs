//! Harness for moat's end-to-end suites: the real `moat` binary, a hermetic `MOAT_HOME`, a
//! scratch workspace, and a real Docker engine.
//!
//! Tests that need Docker call [`require_docker`], which fails the test loudly (it never
//! skips) when no engine answers or the test image is missing.
#![expect(
    clippy::unwrap_used,
    reason = "test harness: failing loudly is the point"
)]

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;
use std::sync::OnceLock;

use serde_json::Value;

pub mod git;
pub mod upstream;

/// The image the suites run, built by `cargo xtask test-image`.
pub fn test_image() -> String {
    std::env::var("MOAT_TEST_IMAGE").unwrap_or_else(|_| "moat-test-base:latest".to_owned())
}

/// Panics with instructions unless a Docker engine answers and the test image exists.
pub fn require_docker() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = CHECKED.get_or_init(|| {
        let info = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
            .map_err(|e| format!("cannot run the docker client: {e}"))?;
        if !info.status.success() {
            return Err(format!(
                "no Docker engine answers ({}); start one (`.ci/run` does: `dockerd &`)",
                String::from_utf8_lossy(&info.stderr).trim()
            ));
        }
        let image = Command::new("docker")
            .args(["image", "inspect", &test_image()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run the docker client: {e}"))?;
        if !image.success() {
            return Err(format!(
                "test image {} is missing; build it with `cargo xtask test-image`",
                test_image()
            ));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("end-to-end tests need Docker: {e}");
    }
}

/// Path of the `moat` binary, built (incrementally) on first use.
pub fn moat_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| cargo_build(&["-p", "moat-cli", "--bin", "moat"], "moat"))
}

/// An example program of the workspace, built like the moat binary.
pub fn example_bin(package: &str, name: &str) -> PathBuf {
    cargo_build(
        &["-p", package, "--example", name],
        &format!("examples/{name}"),
    )
}

/// Builds with the test's own profile and target directory; returns `artifact` in it.
fn cargo_build(what: &[&str], artifact: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/e2e-… → target/<profile>
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
    let profile = profile_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let target_dir = profile_dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet"])
        .args(what)
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile == "release" {
        build.arg("--release");
    }
    let status = build.status().unwrap();
    assert!(status.success(), "building {artifact} failed");
    profile_dir.join(artifact)
}

/// A hermetic environment: its own `MOAT_HOME` and workspace.
pub struct TestEnv {
    /// `MOAT_HOME`.
    pub home: tempfile::TempDir,
    /// The workspace.
    pub ws: tempfile::TempDir,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    /// A fresh environment.
    pub fn new() -> Self {
        Self {
            home: tempfile::Builder::new()
                .prefix("moat-home-")
                .tempdir()
                .unwrap(),
            ws: tempfile::Builder::new()
                .prefix("moat-ws-")
                .tempdir()
                .unwrap(),
        }
    }

    /// The directory of run `id` in this environment's `$MOAT_HOME`.
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.home.path().join("runs").join(id)
    }

    /// `moat args…` inside a pseudo-terminal (`script`), set up like [`TestEnv::moat`], with
    /// piped stdin, stdout (the screen) and stderr.
    pub fn moat_in_terminal(&self, args: &[&str]) -> Command {
        let mut line = shell_quote(&moat_bin().display().to_string());
        for a in args {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        let mut cmd = Command::new("script");
        cmd.args(["-qfec", &line, "/dev/null"])
            .env("MOAT_HOME", self.home.path())
            .env("MOAT_DEFAULT_IMAGE", test_image())
            .env("NO_COLOR", "1")
            .env_remove("MOAT_RUNTIME")
            .current_dir(self.ws.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// A `moat` command in this environment (the test image is the default image).
    pub fn moat(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(moat_bin());
        cmd.args(args)
            .env("MOAT_HOME", self.home.path())
            .env("MOAT_DEFAULT_IMAGE", test_image())
            .env("NO_COLOR", "1")
            .env_remove("MOAT_RUNTIME")
            .current_dir(self.ws.path())
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `moat` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.moat(args).output().unwrap()
    }

    /// `moat list --json`.
    pub fn list(&self) -> Vec<Value> {
        let out = self.run(&["list", "--json"]);
        assert!(
            out.status.success(),
            "moat list failed: {}",
            text(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap()
    }

    /// The run with this ID or name from `moat list --json`.
    pub fn run_json(&self, reference: &str) -> Value {
        self.list()
            .into_iter()
            .find(|r| r["id"] == reference || r["name"] == reference)
            .unwrap_or_else(|| panic!("no run {reference} in moat list"))
    }

    /// The run directories under `MOAT_HOME/runs`.
    pub fn run_dirs(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.home.path().join("runs")) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Remove whatever a failed test left in the engine.
        for dir in self.run_dirs() {
            let id = dir.file_name().unwrap().to_string_lossy().into_owned();
            let label = format!("label=dev.moat.run-id={id}");
            docker_quiet(&["ps", "-aq", "--filter", &label])
                .lines()
                .for_each(|c| {
                    docker_quiet(&["rm", "-f", c]);
                });
            docker_quiet(&["network", "ls", "-q", "--filter", &label])
                .lines()
                .for_each(|n| {
                    docker_quiet(&["network", "rm", n]);
                });
        }
    }
}

/// Runs a docker command, returning stdout (empty on failure).
pub fn docker_quiet(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// `docker inspect` of one object, as JSON.
pub fn docker_inspect(id: &str) -> Option<Value> {
    let out = Command::new("docker").args(["inspect", id]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()?
        .as_array()?
        .first()
        .cloned()
}

/// Waits (up to 30 s) until `docker inspect` no longer finds `id`; a foreground `moat run`
/// removes its container and network from a background process after it returns.
pub fn wait_gone(id: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if docker_inspect(id).is_none() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// Lossy UTF-8.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `s` as one POSIX shell word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
