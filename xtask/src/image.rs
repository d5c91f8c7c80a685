//! The end-to-end test image: Debian bookworm from debootstrap, imported into Docker.
//!
//! The image carries a label with the hash of its recipe; it is rebuilt only when the recipe
//! changes (or with `--force`).

use std::path::Path;
use std::process::Command;
use std::process::Stdio;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use sha2::Digest;
use sha2::Sha256;

/// The image the end-to-end tests use.
pub(crate) const TEST_IMAGE: &str = "moat-test-base:latest";

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Everything the end-to-end suites need inside a container.
const PACKAGES: &[&str] = &[
    "ca-certificates",
    "curl",
    "git",
    "python3",
    "python3-requests",
    "openssh-client",
    "openssh-server",
    "nodejs",
    "procps",
    "iproute2",
    "netcat-openbsd",
];
const LABEL: &str = "dev.moat.test-image-recipe";

fn recipe_hash() -> String {
    let recipe = format!("v2 {SUITE} {MIRROR} {}", PACKAGES.join(","));
    hex::encode(&Sha256::digest(recipe.as_bytes())[..8])
}

pub(crate) fn test_image(args: &[&str]) -> Result<()> {
    let force = match args {
        [] => false,
        ["--force"] => true,
        _ => bail!("usage: cargo xtask test-image [--force]"),
    };
    let hash = recipe_hash();
    if !force && current_label()?.as_deref() == Some(hash.as_str()) {
        eprintln!("{TEST_IMAGE} is up to date (recipe {hash})");
        return Ok(());
    }
    which("debootstrap").context("debootstrap is needed: `apt-get install -y debootstrap`")?;
    which("docker").context("the docker client is needed: `apt-get install -y docker.io`")?;
    let dir = tempfile::Builder::new()
        .prefix("moat-test-image-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let root = dir.path().join("root");
    eprintln!("building {TEST_IMAGE} (recipe {hash}) with debootstrap; this takes about a minute");
    let status = Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&root)
        .arg(MIRROR)
        .stdout(Stdio::null())
        .status()
        .context("cannot run debootstrap")?;
    if !status.success() {
        bail!("debootstrap failed ({status}); see the messages above");
    }
    // Leave apt caches out of the image, and the SSH host keys openssh-server generated at
    // install time: every container of the image would share them.
    let _ = std::fs::remove_dir_all(root.join("var/cache/apt/archives"));
    if let Ok(entries) = std::fs::read_dir(root.join("etc/ssh")) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("ssh_host_") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    import(&root, &hash)?;
    eprintln!("built {TEST_IMAGE}");
    Ok(())
}

fn import(root: &Path, hash: &str) -> Result<()> {
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(root)
        .arg("-c")
        .arg(".")
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run tar")?;
    let tar_out = tar.stdout.take().context("tar has no stdout")?;
    let status = Command::new("docker")
        .args(["import", "--change", &format!("LABEL {LABEL}={hash}")])
        .args([
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ])
        .args(["--change", "CMD [\"/bin/bash\"]"])
        .arg("-")
        .arg(TEST_IMAGE)
        .stdin(Stdio::from(tar_out))
        .stdout(Stdio::null())
        .status()
        .context("cannot run docker import")?;
    let tar_status = tar.wait().context("tar failed")?;
    if !tar_status.success() || !status.success() {
        bail!("importing the image failed (tar: {tar_status}, docker import: {status})");
    }
    Ok(())
}

fn current_label() -> Result<Option<String>> {
    let out = Command::new("docker")
        .args([
            "image",
            "inspect",
            "--format",
            &format!("{{{{ index .Config.Labels \"{LABEL}\" }}}}"),
            TEST_IMAGE,
        ])
        .stderr(Stdio::null())
        .output()
        .context("cannot run docker")?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}

fn which(program: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(program).is_file();
    if found {
        Ok(())
    } else {
        bail!("`{program}` not found")
    }
}
