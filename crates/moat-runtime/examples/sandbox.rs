//! A minimal custom orchestrator: run one command in a sandbox through the library API, on the
//! real Docker engine (`DOCKER_HOST`, or the default socket).
//!
//! ```text
//! cargo run -p moat-runtime --example sandbox -- STORE_DIR WORKSPACE IMAGE CMD...
//! ```
//!
//! It exits with the container's exit code. moat-core has no engine of its own: [`run`] takes
//! any [`Runtime`], here `moat_runtime::docker::DockerRuntime`.
#![expect(clippy::print_stderr, reason = "an example program")]

use std::os::unix::fs::MetadataExt;
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
async fn run(
    runtime: Arc<dyn Runtime>,
    store_dir: PathBuf,
    workspace: PathBuf,
    image: String,
    command: Vec<String>,
) -> Result<i64, Box<dyn std::error::Error>> {
    let owner = std::fs::metadata(&workspace)?;
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
            // The workspace owner, so files the command creates belong to them.
            user: format!("{}:{}", owner.uid(), owner.gid()),
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

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(store), Some(workspace), Some(image)) = (args.next(), args.next(), args.next())
    else {
        eprintln!("usage: sandbox STORE_DIR WORKSPACE IMAGE CMD...");
        std::process::exit(2);
    };
    let command: Vec<String> = args.collect();
    let endpoint = std::env::var("DOCKER_HOST")
        .unwrap_or_else(|_| moat_runtime::DEFAULT_DOCKER_SOCKET.to_owned());
    let outcome = match moat_runtime::docker::DockerRuntime::connect(&endpoint).await {
        Ok(docker) => {
            run(
                Arc::new(docker),
                store.into(),
                workspace.into(),
                image,
                command,
            )
            .await
        }
        Err(e) => Err(e.into()),
    };
    match outcome {
        Ok(code) => std::process::exit(i32::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(125);
        }
    }
}
