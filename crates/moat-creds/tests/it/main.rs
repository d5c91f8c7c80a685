//! Integration tests of moat-creds: store format and tamper detection, key sources,
//! concurrent writers in separate processes, the grant flow with a fake `gh`, validation
//! against a local TLS server impersonating the providers, custom providers end to end.

mod concurrency;
mod flow;
#[cfg(all(feature = "os-keyring", target_os = "linux"))]
mod os_keyring;
mod resolve;
mod store;
mod support;
mod tls;
