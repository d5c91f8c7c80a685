//! Integration tests for moat-audit.

mod common;
mod crash;
mod log;
mod proofs;
mod props;
mod tamper;
