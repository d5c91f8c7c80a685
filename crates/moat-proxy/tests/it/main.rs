//! Integration tests for moat-proxy: real TLS upstreams and clients on loopback.

#![expect(clippy::unwrap_used, reason = "tests")]

mod support;

mod certs;
mod curl;
mod fuzz;
mod intercept;
mod policy;
mod robustness;
mod scrubbing;
mod streaming;
