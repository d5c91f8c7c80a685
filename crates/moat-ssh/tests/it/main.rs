//! Integration tests for moat-ssh.
