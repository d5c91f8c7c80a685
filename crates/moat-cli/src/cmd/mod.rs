//! One module per command group.

pub(crate) mod run;
pub(crate) mod runs;
