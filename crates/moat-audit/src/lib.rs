//! moat-audit
