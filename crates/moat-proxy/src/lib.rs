//! moat-proxy
