//! Terminal output: data on stdout, everything else on stderr.
#![expect(clippy::print_stderr, reason = "the CLI's single place that prints")]

use std::fmt;
use std::io::IsTerminal;
use std::io::Write;

use crate::context::Context;
use crate::error::CliError;

/// Whether stderr may use colour (`NO_COLOR` respected).
fn colour() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// A line of data on stdout.
pub(crate) fn data_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Data on stdout, verbatim.
pub(crate) fn data(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Pretty JSON on stdout.
pub(crate) fn json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => data_line(&text),
        Err(e) => eprintln!("error: cannot encode JSON: {e}"),
    }
}

/// A status message on stderr, unless `--quiet`.
pub(crate) fn info(ctx: &Context, message: fmt::Arguments<'_>) {
    if !ctx.args.quiet {
        eprintln!("{message}");
    }
}

/// A warning on stderr.
pub(crate) fn warn(message: fmt::Arguments<'_>) {
    if colour() {
        eprintln!("\x1b[33mwarning\x1b[0m: {message}");
    } else {
        eprintln!("warning: {message}");
    }
}

/// A detail on stderr, only with `--verbose`.
pub(crate) fn debug(ctx: &Context, message: fmt::Arguments<'_>) {
    if ctx.args.verbose {
        eprintln!("{message}");
    }
}

/// Prints an error and its hints.
pub(crate) fn error(e: &CliError) {
    if colour() {
        eprintln!("\x1b[1;31merror\x1b[0m: {}", e.message);
        for h in &e.hints {
            eprintln!("\x1b[1;36mhint\x1b[0m: {h}");
        }
    } else {
        eprintln!("error: {}", e.message);
        for h in &e.hints {
            eprintln!("hint: {h}");
        }
    }
}
