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
//! paths and file contents in), never prints, never holds private keys, and does not support
//! host certificates (`@cert-authority`) or signing anything but SSH user authentication
//! (no `ssh-keygen -Y` commit signing).

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
