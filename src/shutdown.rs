//! Shutdown as a value: one [`CancellationToken`] handed to every task.
//!
//! The first SIGINT or SIGTERM cancels the token, and every command drains, commits and exits 0.
//! A second signal means "now": the process exits at once with 130.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// A token cancelled by the first SIGINT or SIGTERM. Must be called inside a tokio runtime.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down (press Ctrl+C again to stop at once)");
        cancel.cancel();
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("stopped at once: uncommitted work will be re-read on the next start");
        std::process::exit(130);
    });
    Ok(token)
}
