//! Developer tasks that are not plain cargo: `cargo xtask <task>`.
//!
//! - `test-image`: build the end-to-end base image with debootstrap and `docker import`.
//! - `bench run`: `moat run` wall time against `docker run` on the same image.
//! - `bench audit`: audit log appends per second and verification time.
//! - `bench proxy`: proxy throughput, latency and memory against direct and mitmproxy.
#![expect(clippy::print_stdout, clippy::print_stderr, reason = "xtask is a CLI")]

mod bench;
mod image;

use anyhow::Result;
use anyhow::bail;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["test-image", rest @ ..] => image::test_image(rest),
        ["bench", rest @ ..] => bench::bench(rest),
        _ => bail!(
            "usage: cargo xtask <task>\n\n\
             tasks:\n  \
             test-image [--force]        build the e2e base image `{}`\n  \
             bench run [--rounds N]      moat run vs docker run overhead\n  \
             bench audit                 audit appends/s and verification time\n  \
             bench proxy [--rounds N]    proxy vs direct, bare stack and mitmproxy\n",
            image::TEST_IMAGE
        ),
    }
}
