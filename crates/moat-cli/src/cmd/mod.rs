//! One module per command group.

pub(crate) mod audit;
pub(crate) mod grant;
pub(crate) mod run;
pub(crate) mod runs;
pub(crate) mod trace;
