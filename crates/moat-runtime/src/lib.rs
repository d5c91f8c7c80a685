//! moat-runtime
