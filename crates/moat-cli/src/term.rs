//! Terminal handling: raw mode, size changes and signals.

use tokio::signal::unix::SignalKind;
use tokio::signal::unix::signal;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Raw mode for the lifetime of the guard.
#[derive(Debug)]
pub(crate) struct RawMode(());

impl RawMode {
    /// Enables raw mode; `None` when stdin is not a terminal.
    pub(crate) fn enable() -> Option<Self> {
        crossterm::terminal::enable_raw_mode()
            .ok()
            .map(|()| Self(()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// The terminal size as (rows, cols).
pub(crate) fn size() -> Option<(u16, u16)> {
    crossterm::terminal::size()
        .ok()
        .map(|(cols, rows)| (rows, cols))
}

/// Sends the current size now and on every SIGWINCH.
pub(crate) fn forward_resizes(tx: mpsc::UnboundedSender<(u16, u16)>) {
    tokio::spawn(async move {
        // Give the container a moment to start before the first resize.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if let Some(s) = size()
            && tx.send(s).is_err()
        {
            return;
        }
        let Ok(mut winch) = signal(SignalKind::window_change()) else {
            return;
        };
        while winch.recv().await.is_some() {
            if let Some(s) = size()
                && tx.send(s).is_err()
            {
                return;
            }
        }
    });
}

/// Cancels `token` on SIGTERM and SIGHUP, and on SIGINT when `interrupt` is set (with a TTY
/// in raw mode, Ctrl-C is a byte for the container instead).
pub(crate) fn cancel_on_signals(token: CancellationToken, interrupt: bool) {
    let mut kinds = vec![SignalKind::terminate(), SignalKind::hangup()];
    if interrupt {
        kinds.push(SignalKind::interrupt());
    }
    for kind in kinds {
        let token = token.clone();
        if let Ok(mut sig) = signal(kind) {
            tokio::spawn(async move {
                if sig.recv().await.is_some() {
                    token.cancel();
                }
            });
        }
    }
}
