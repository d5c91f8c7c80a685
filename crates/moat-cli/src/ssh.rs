//! SSH grants: `moat grant ssh`, and the per-run filtering agent proxy.
//!
//! A run with `ssh:<host>` grants gets a private directory `runs/<id>/ssh/` mounted at
//! `/run/moat/ssh`, holding the agent socket (`SSH_AUTH_SOCK`) served by the supervisor, and
//! the granted hosts' keys pinned in the container's `/etc/ssh/ssh_known_hosts`.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use moat_core::audit::AuditSink;
use moat_core::run::RunMetadata;
use moat_ssh::AgentClient;
use moat_ssh::AgentProxy;
use moat_ssh::AgentProxyConfig;
use moat_ssh::KnownHosts;
use moat_ssh::SshGrant;
use moat_ssh::SshGrantStore;
use moat_ssh::event::AuditEventSink;
use moat_ssh::grants::KeySelector;
use moat_ssh::grants::build_grant;
use moat_ssh::grants::known_hosts_for;
use moat_ssh::grants::parse_grant_name;

use crate::context::Context;
use crate::error::CliError;
use crate::error::CliResult;
use crate::error::EXIT_FAILURE;
use crate::error::EXIT_PRE_RUN;
use crate::output;

/// Where the run's SSH directory appears in the container.
const CONTAINER_DIR: &str = "/run/moat/ssh";

pub(crate) fn grant_store(ctx: &Context) -> SshGrantStore {
    SshGrantStore::new(ctx.credentials_dir().join("ssh.json"))
}

fn agent_socket() -> CliResult<PathBuf> {
    let sock = std::env::var_os("SSH_AUTH_SOCK")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| {
            CliError::new(EXIT_FAILURE, "SSH_AUTH_SOCK is not set: no SSH agent to use")
                .hint("start an agent and add your key: `eval $(ssh-agent)` then `ssh-add ~/.ssh/id_ed25519`")
        })?;
    Ok(sock)
}

/// `moat grant ssh --host H [--key K] [--known-hosts FILE]`.
pub(crate) async fn grant(
    ctx: &Context,
    host: &str,
    key: Option<&str>,
    known_hosts: Option<&Path>,
) -> CliResult<i32> {
    let host: moat_ssh::SshHost = host.parse().map_err(|e| {
        CliError::from_error(EXIT_FAILURE, &e)
            .hint("pass `--host github.com` or `--host git.example.com:2222`")
    })?;
    let sock = agent_socket()?;
    let identities = AgentClient::connect(&sock, Duration::from_secs(30))
        .await
        .map_err(|e| {
            CliError::from_error(EXIT_FAILURE, &e)
                .hint("is the agent running? `ssh-add -l` should list your keys")
        })?
        .list_identities()
        .await
        .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?;
    let selector = match key {
        Some(k) => Some(parse_key_selector(k)?),
        None => None,
    };
    let known_path = match known_hosts {
        Some(p) => p.to_owned(),
        // Never a relative path: with HOME unset, `.ssh/known_hosts` would be read from
        // whatever directory moat runs in (a cloned repository could pin its own host keys).
        None => match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(home) => PathBuf::from(home).join(".ssh/known_hosts"),
            None => {
                return Err(CliError::new(
                    EXIT_FAILURE,
                    "HOME is not set, so there is no ~/.ssh/known_hosts to pin host keys from",
                )
                .hint("pass the host keys to trust with `--known-hosts FILE`"));
            }
        },
    };
    let known_text = std::fs::read_to_string(&known_path).map_err(|e| {
        CliError::new(
            EXIT_FAILURE,
            format!("cannot read known hosts {}: {e}", known_path.display()),
        )
        .hint(format!(
            "connect once with `ssh {}` to record its host key, or pass `--known-hosts FILE`",
            host.host()
        ))
    })?;
    let known = KnownHosts::parse(&known_text);
    let grant = build_grant(host, &identities, selector.as_ref(), &known).map_err(|e| {
        let mut err = CliError::from_error(EXIT_FAILURE, &e);
        if identities.len() > 1 && selector.is_none() {
            err = err.hint("choose the key with `--key SHA256:…` (see `ssh-add -l`) or `--key ~/.ssh/id_ed25519.pub`");
        }
        err
    })?;
    ctx.ensure_home()?;
    let creds = ctx.credentials_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&creds)
        .map_err(|e| {
            CliError::new(
                EXIT_FAILURE,
                format!("cannot create {}: {e}", creds.display()),
            )
        })?;
    let name = grant.name();
    let fingerprint = grant.key.fingerprint.to_string();
    let replaced = grant_store(ctx)
        .upsert(grant)
        .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?;
    output::info(
        ctx,
        format_args!(
            "{} {name}: key {fingerprint}",
            if replaced.is_some() {
                "updated"
            } else {
                "granted"
            }
        ),
    );
    Ok(0)
}

/// `--key` as a fingerprint, public key text, or a key file (a private key path means its
/// `.pub` beside it).
fn parse_key_selector(k: &str) -> CliResult<KeySelector> {
    let path = Path::new(k);
    let text = if path.exists() {
        let pub_path = if k.ends_with(".pub") {
            path.to_owned()
        } else {
            PathBuf::from(format!("{k}.pub"))
        };
        std::fs::read_to_string(&pub_path).map_err(|e| {
            CliError::new(
                EXIT_FAILURE,
                format!("cannot read public key {}: {e}", pub_path.display()),
            )
        })?
    } else {
        k.to_owned()
    };
    KeySelector::parse(text.trim()).map_err(|e| {
        CliError::from_error(EXIT_FAILURE, &e)
            .hint("pass a fingerprint (`SHA256:…` from `ssh-add -l`) or a public key file")
    })
}

/// SSH grants in a run's grant list.
pub(crate) fn ssh_grant_names(grants: &[String]) -> Vec<&String> {
    grants.iter().filter(|g| g.starts_with("ssh:")).collect()
}

/// Checks before a run is created: the grants exist and an agent is there.
pub(crate) fn check_run_grants(ctx: &Context, grants: &[String]) -> CliResult<()> {
    let names = ssh_grant_names(grants);
    if names.is_empty() {
        return Ok(());
    }
    resolve(ctx, grants).map_err(|e| CliError {
        code: EXIT_PRE_RUN,
        ..e
    })?;
    let sock = agent_socket().map_err(|e| CliError {
        code: EXIT_PRE_RUN,
        ..e
    })?;
    // Connecting is the check: a socket file left by an agent that died refuses.
    if let Err(e) = std::os::unix::net::UnixStream::connect(&sock) {
        let what = if sock.exists() {
            format!("no SSH agent answers at {} ({e})", sock.display())
        } else {
            format!(
                "SSH_AUTH_SOCK points at {}, which does not exist",
                sock.display()
            )
        };
        return Err(CliError::new(EXIT_PRE_RUN, what)
            .hint("start an agent: `eval $(ssh-agent)` then `ssh-add`"));
    }
    Ok(())
}

fn resolve(ctx: &Context, grants: &[String]) -> CliResult<Vec<SshGrant>> {
    let mut hosts = Vec::new();
    for name in ssh_grant_names(grants) {
        hosts.push(parse_grant_name(name).map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?);
    }
    let store = grant_store(ctx);
    let resolved = store.resolve(&hosts).map_err(|e| {
        CliError::from_error(EXIT_FAILURE, &e).hint(
            hosts
                .iter()
                .map(|h| format!("`moat grant ssh --host {}`", h.known_hosts_name()))
                .collect::<Vec<_>>()
                .join(", "),
        )
    })?;
    Ok(resolved)
}

/// Adds the SSH directory, socket variable and pinned host keys to a created run.
pub(crate) fn prepare_run(ctx: &Context, meta: &RunMetadata) -> CliResult<RunMetadata> {
    let grants = resolve(ctx, &meta.grants)?;
    let dir = ctx.store().dir(&meta.id).join("ssh");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| {
            CliError::new(
                EXIT_PRE_RUN,
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
    let known = dir.join("known_hosts");
    moat_core::store::write_atomic(&known, known_hosts_for(&grants).as_bytes())
        .map_err(|e| CliError::from_error(EXIT_PRE_RUN, &e))?;
    chown_to_container_user(&dir, &meta.spec.user)?;
    chown_to_container_user(&known, &meta.spec.user)?;
    ctx.store()
        .update(&meta.id, |m| {
            m.spec
                .mounts
                .push((dir.clone(), CONTAINER_DIR.to_owned(), false));
            m.spec
                .mounts
                .push((known.clone(), "/etc/ssh/ssh_known_hosts".to_owned(), true));
            m.spec.env.push((
                "SSH_AUTH_SOCK".to_owned(),
                format!("{CONTAINER_DIR}/agent.sock"),
            ));
        })
        .map_err(|e| CliError::from_error(EXIT_PRE_RUN, &e))
}

/// Starts the run's filtering agent proxy (supervisor side); `None` without SSH grants.
pub(crate) async fn start_agent(
    ctx: &Context,
    meta: &RunMetadata,
    audit: Arc<dyn AuditSink>,
) -> CliResult<Option<AgentProxy>> {
    if ssh_grant_names(&meta.grants).is_empty() {
        return Ok(None);
    }
    let grants = resolve(ctx, &meta.grants)?;
    let sock = agent_socket()?;
    let path = ctx.store().dir(&meta.id).join("ssh").join("agent.sock");
    let config = AgentProxyConfig::new(&path, sock, grants);
    let proxy = AgentProxy::start(config, Arc::new(AuditEventSink::new(audit)))
        .await
        .map_err(|e| {
            CliError::from_error(EXIT_PRE_RUN, &e)
                .hint("the run needs your SSH agent for its ssh: grants; check `ssh-add -l`")
        })?;
    for missing in proxy.missing_keys() {
        output::warn(format_args!(
            "granted key {missing} is not in your SSH agent; add it with `ssh-add`"
        ));
    }
    chown_to_container_user(proxy.socket_path(), &meta.spec.user)?;
    Ok(Some(proxy))
}

/// Gives a file to the container's user, so a container running as the workspace owner can
/// use what a root supervisor created.
fn chown_to_container_user(path: &Path, user: &str) -> CliResult<()> {
    let Some((uid, gid)) = user
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)))
    else {
        return Ok(());
    };
    let me = nix::unistd::geteuid().as_raw();
    if me == uid {
        return Ok(());
    }
    nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(|e| {
        CliError::new(
            EXIT_PRE_RUN,
            format!(
                "cannot hand {} to the container user {user}: {e}",
                path.display()
            ),
        )
    })
}

/// SSH grants for `moat grant list`.
pub(crate) fn list(ctx: &Context) -> CliResult<Vec<SshGrant>> {
    grant_store(ctx)
        .list()
        .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))
}

/// `moat revoke ssh:H`.
pub(crate) fn revoke(ctx: &Context, name: &str) -> CliResult<bool> {
    let host = parse_grant_name(name).map_err(|e| CliError::from_error(EXIT_FAILURE, &e))?;
    grant_store(ctx)
        .remove(&host)
        .map(|r| r.is_some())
        .map_err(|e| CliError::from_error(EXIT_FAILURE, &e))
}
