//! moat-ssh
