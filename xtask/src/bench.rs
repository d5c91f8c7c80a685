//! Benchmarks compared side by side in one run (SPEC §5).

use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;

use crate::image::TEST_IMAGE;

pub(crate) fn bench(args: &[&str]) -> Result<()> {
    match args {
        ["run", rest @ ..] => run_overhead(rest),
        ["audit"] => cargo_release(&[
            "run",
            "--release",
            "-q",
            "-p",
            "moat-audit",
            "--example",
            "bench",
        ]),
        ["proxy", rest @ ..] => proxy(rest),
        _ => bail!(
            "usage: cargo xtask bench run [--rounds N] [--image IMAGE]\n       \
             cargo xtask bench audit\n       \
             cargo xtask bench proxy [--no-mitmproxy] [--rounds N] [--seconds N]"
        ),
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Builds the release `moat` binary and returns its path.
fn build_moat() -> Result<PathBuf> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "-p", "moat-cli"])
        .current_dir(workspace_root())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("building moat failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    Ok(target.join("release").join("moat"))
}

fn time(cmd: &mut Command) -> Result<Duration> {
    let start = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run the benchmarked command")?;
    let elapsed = start.elapsed();
    if !status.success() {
        bail!("benchmarked command failed: {cmd:?} ({status})");
    }
    Ok(elapsed)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn run_overhead(args: &[&str]) -> Result<()> {
    let mut rounds = 15usize;
    let mut image = TEST_IMAGE.to_owned();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--rounds" => {
                rounds = it
                    .next()
                    .context("--rounds needs a number")?
                    .parse()
                    .context("--rounds needs a number")?;
            }
            "--image" => image = it.next().context("--image needs a value")?.to_string(),
            other => bail!("unknown argument `{other}`"),
        }
    }
    let moat = build_moat()?;
    let home = tempfile::tempdir().context("cannot create a temporary MOAT_HOME")?;
    let ws = tempfile::tempdir().context("cannot create a temporary workspace")?;
    let moat_cmd = || {
        let mut c = Command::new(&moat);
        c.env("MOAT_HOME", home.path())
            .args(["run", "--image", &image])
            .arg(ws.path())
            .args(["--", "true"]);
        c
    };
    let docker_cmd = || {
        let mut c = Command::new("docker");
        c.args(["run", "--rm", &image, "true"]);
        c
    };
    // Warm up both paths (image layers, binary pages).
    time(&mut moat_cmd())?;
    time(&mut docker_cmd())?;
    let (mut m, mut d) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        // Interleave so machine noise hits both sides alike.
        m.push(time(&mut moat_cmd())?);
        d.push(time(&mut docker_cmd())?);
    }
    let (m_min, m_max) = (m.iter().min().copied(), m.iter().max().copied());
    let (d_min, d_max) = (d.iter().min().copied(), d.iter().max().copied());
    let (mm, dm) = (median(&mut m), median(&mut d));
    println!("rounds: {rounds}, image: {image}");
    println!(
        "moat run   median {:.1} ms (min {:.1}, max {:.1})",
        ms(mm),
        ms(m_min.unwrap_or_default()),
        ms(m_max.unwrap_or_default())
    );
    println!(
        "docker run median {:.1} ms (min {:.1}, max {:.1})",
        ms(dm),
        ms(d_min.unwrap_or_default()),
        ms(d_max.unwrap_or_default())
    );
    println!(
        "run overhead moat-docker: {:.1} ms (target <= 150 ms)",
        ms(mm) - ms(dm)
    );
    println!(
        "run overhead ratio moat/docker: {:.2}",
        mm.as_secs_f64() / dm.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// Runs a cargo command in the workspace, passing output through.
fn cargo_release(args: &[&str]) -> Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(workspace_root())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed", args.join(" "));
    }
    Ok(())
}

/// The proxy benchmark: our load generator against a local TLS upstream directly, through
/// moat-proxy with injection, through mitmproxy with an equivalent header-injecting addon
/// (installed from PyPI into a throwaway virtualenv) and through the bare hyper/rustls stack
/// moat-proxy is built on (the machine's floor), then leaf minting.
fn proxy(args: &[&str]) -> Result<()> {
    let mut mitm = true;
    let mut loadgen: Vec<String> = [
        "run",
        "--release",
        "-q",
        "-p",
        "moat-proxy",
        "--example",
        "loadgen",
        "--",
        "--floor",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--no-mitmproxy" => mitm = false,
            flag @ ("--seconds" | "--rounds") => {
                let n = it
                    .next()
                    .with_context(|| format!("{flag} needs a number"))?;
                n.parse::<u64>()
                    .with_context(|| format!("{flag} needs a number, not `{n}`"))?;
                loadgen.push(flag.to_owned());
                loadgen.push((*n).to_owned());
            }
            other => bail!("unknown argument `{other}`"),
        }
    }
    if mitm {
        let mitmdump = mitmproxy_venv()?;
        loadgen.push("--mitmdump".to_owned());
        loadgen.push(mitmdump.display().to_string());
    }
    let args: Vec<&str> = loadgen.iter().map(String::as_str).collect();
    cargo_release(&args)?;
    cargo_release(&["bench", "-q", "-p", "moat-proxy", "--bench", "mint"])
}

/// A virtualenv with mitmproxy, under the target directory, created once.
fn mitmproxy_venv() -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let venv = target.join("xtask-mitmproxy-venv");
    let mitmdump = venv.join("bin").join("mitmdump");
    if mitmdump.exists() {
        return Ok(mitmdump);
    }
    eprintln!("installing mitmproxy into {} (once)", venv.display());
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .context("cannot run python3 -m venv")?
        .success()
        && Command::new(venv.join("bin").join("pip"))
            .args(["install", "-q", "mitmproxy"])
            .status()
            .context("cannot run pip")?
            .success();
    if !ok || !mitmdump.exists() {
        bail!("installing mitmproxy failed; rerun with --no-mitmproxy to skip the comparison");
    }
    Ok(mitmdump)
}
