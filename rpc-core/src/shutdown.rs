//! Stopping on a signal.
//!
//! A service stops when its [`CancellationToken`] is cancelled; this module
//! ties that to SIGINT and SIGTERM. A second signal while stopping exits at
//! once, as `nameko run` does on a second Ctrl-C.

use tokio_util::sync::CancellationToken;

/// Waits for SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A token cancelled by the first SIGINT or SIGTERM; a second one exits the
/// process with status 130.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        signal().await;
        tracing::info!("stopping: finishing calls in flight (signal again to exit at once)");
        cancel.cancel();
        signal().await;
        tracing::warn!("second signal: exiting without waiting");
        std::process::exit(130);
    });
    token
}
