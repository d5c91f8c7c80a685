//! CLI errors: a message, hints and an exit code.

use std::fmt;

/// Exit code when moat fails before the container ran.
pub(crate) const EXIT_PRE_RUN: i32 = 125;
/// Exit code for other command failures.
pub(crate) const EXIT_FAILURE: i32 = 1;

/// An error to print as `error: …` plus `hint: …` lines.
#[derive(Debug)]
pub(crate) struct CliError {
    pub(crate) message: String,
    pub(crate) hints: Vec<String>,
    pub(crate) code: i32,
}

impl CliError {
    pub(crate) fn new(code: i32, message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            hints: Vec::new(),
            code,
        }
    }

    /// An error with the full chain of causes.
    pub(crate) fn from_error(code: i32, e: &(dyn std::error::Error + 'static)) -> Self {
        Self::new(code, moat_core::orchestrator::error_chain(e))
    }

    pub(crate) fn hint(mut self, hint: impl fmt::Display) -> Self {
        self.hints.push(hint.to_string());
        self
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        Self::new(EXIT_FAILURE, format!("{e:#}"))
    }
}

pub(crate) type CliResult<T> = Result<T, CliError>;
