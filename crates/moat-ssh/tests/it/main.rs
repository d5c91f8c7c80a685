//! Integration tests for moat-ssh. They drive the real OpenSSH tools installed on the machine
//! (`/usr/bin/ssh-agent`, `ssh-add`, `ssh-keygen`) over Unix sockets in temporary directories;
//! a missing tool fails the test loudly.

mod hostile;
mod known_hosts;
mod real_agent;
mod ssh_client;
mod support;
