//! A minimal custom orchestrator: run one command in a sandbox through the library API.
//!
//! ```text
//! cargo run -p moat-core --example sandbox -- /path/to/store /path/to/workspace IMAGE CMD...
//! ```
//!
//! moat-core has no container engine of its own; an embedder passes any [`Runtime`]. To keep
//! this example free of engine dependencies, it takes the runtime as a parameter of [`run`];
//! `moat-runtime`'s `DockerRuntime` is the real one (see `crates/moat-cli`).
#![expect(clippy::print_stderr, reason = "an example program")]

use std::path::PathBuf;
use std::sync::Arc;

use moat_core::audit::NoAudit;
use moat_core::config::RuntimeKind;
use moat_core::egress::PolicyMode;
use moat_core::orchestrator::Orchestrator;
use moat_core::orchestrator::RunIo;
use moat_core::orchestrator::RunRequest;
use moat_core::orchestrator::RunServices;
use moat_core::run::RunSpec;
use moat_core::runtime::Runtime;
use moat_core::store::RunStore;
use tokio_util::sync::CancellationToken;

/// Runs `command` in `image` with `workspace` mounted; returns the container's exit code.
pub async fn run(
    runtime: Arc<dyn Runtime>,
    store_dir: PathBuf,
    workspace: PathBuf,
    image: String,
    command: Vec<String>,
) -> Result<i64, Box<dyn std::error::Error>> {
    let orch = Orchestrator::new(runtime, RunStore::new(store_dir), "example");
    orch.ensure_image(&image, &|_| {}).await?;
    let meta = orch.create_run(RunRequest {
        name: "example".into(),
        workspace,
        image,
        runtime: RuntimeKind::Docker,
        grants: Vec::new(),
        policy: PolicyMode::Permissive,
        spec: RunSpec {
            command: Some(command),
            env: Vec::new(),
            tty: false,
            stdin: false,
            keep: false,
            user: "1000:1000".into(),
            mounts: Vec::new(),
            ports: Vec::new(),
            memory_bytes: None,
            cpus: None,
            detached: false,
            network_allow: Vec::new(),
        },
    })?;
    let io = RunIo {
        stdout: Box::new(tokio::io::stdout()),
        stderr: Box::new(tokio::io::stderr()),
        stdin: None,
        resize: None,
        cancel: CancellationToken::new(),
        started: None,
    };
    let outcome = orch
        .supervise(
            &meta.id,
            io,
            RunServices::audit_only(Arc::new(NoAudit)),
            std::process::id(),
        )
        .await?;
    Ok(outcome.exit_code)
}

fn main() {
    eprintln!(
        "this example shows the embedding API (`run` above); pair it with \
         moat_runtime::docker::DockerRuntime::connect(\"unix:///var/run/docker.sock\")"
    );
}
