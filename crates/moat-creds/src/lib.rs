//! moat-creds
