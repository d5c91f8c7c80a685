//! moat-ssh: a filtering SSH-agent proxy that lets a sandboxed agent `git push` over SSH
//! while the private keys stay in the user's own agent on the host.
//!
//! The moat supervisor embeds it: [`proxy::AgentProxy`] serves a per-run Unix socket that the
//! container uses as `SSH_AUTH_SOCK`. It lists only the keys the run's `ssh:<host>` grants
//! name, and forwards a sign request to the user's agent only when the SSH client bound the
//! session (`session-bind@openssh.com`) to a verified host key of a host that key is granted
//! for, and the data is the user-authentication request of that very session. Signature
//! flags (rsa-sha2-256/512) pass through unchanged; adding, removing and locking keys and
//! unknown extensions are refused. Every list and sign is reported through
//! [`event::SshEventSink`]. [`grants`] records host → key grants with the host's keys from
//! [`known_hosts`].
//!
//! The crate deliberately does not read `SSH_AUTH_SOCK`, `$HOME` or `~/.ssh` (callers pass
//! paths and file contents in), never prints, never holds private keys, and signs nothing but
//! SSH user authentication (no `ssh-keygen -Y` commit signing).
//!
//! `moat grant ssh --host H [--key K]` and a run's supervisor wire it like this (paths and
//! `SSH_AUTH_SOCK` resolved by the CLI):
//!
//! ```no_run
//! # use std::path::Path;
//! # use std::sync::Arc;
//! # async fn demo(
//! #     moat_home: &Path,
//! #     ssh_auth_sock: &Path,
//! #     known_hosts_text: &str,
//! #     run_dir: &Path,
//! #     audit: Arc<dyn moat_core::audit::AuditSink>,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use moat_ssh::event::AuditEventSink;
//! use moat_ssh::grants::{KeySelector, build_grant, known_hosts_for, parse_grant_name};
//! use moat_ssh::{AgentClient, AgentProxy, AgentProxyConfig, KnownHosts, SshGrantStore};
//!
//! // moat grant ssh --host github.com --key SHA256:…
//! let store = SshGrantStore::new(moat_home.join("credentials/ssh.json"));
//! let timeout = std::time::Duration::from_secs(30);
//! let identities = AgentClient::connect(ssh_auth_sock, timeout).await?.list_identities().await?;
//! let selector = KeySelector::parse("SHA256:…")?;
//! let known = KnownHosts::parse(known_hosts_text);
//! let grant = build_grant("github.com".parse()?, &identities, Some(&selector), &known)?;
//! store.upsert(grant)?;
//!
//! // moat run -g ssh:github.com
//! let grants = store.resolve(&[parse_grant_name("ssh:github.com")?])?;
//! let pinned = known_hosts_for(&grants); // the container's known_hosts
//! let config = AgentProxyConfig::new(run_dir.join("ssh-agent.sock"), ssh_auth_sock, grants);
//! let proxy = AgentProxy::start(config, Arc::new(AuditEventSink::new(audit))).await?;
//! // … run the container with SSH_AUTH_SOCK pointing at the mounted proxy.socket_path() …
//! proxy.shutdown().await;
//! # let _ = pinned;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod client;
pub mod event;
pub mod grants;
pub mod key;
pub mod known_hosts;
pub mod policy;
pub mod protocol;
pub mod proxy;
pub mod wire;

pub use client::AgentClient;
pub use client::AgentError;
pub use event::SshEvent;
pub use event::SshEventSink;
pub use grants::SshGrant;
pub use grants::SshGrantStore;
pub use key::Fingerprint;
pub use key::PublicKeyBlob;
pub use known_hosts::KnownHosts;
pub use known_hosts::SshHost;
pub use policy::PolicyOptions;
pub use proxy::AgentProxy;
pub use proxy::AgentProxyConfig;
