//! Wiring: configuration → store → the RPC and HTTP faces, started and
//! stopped as one.

use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::people::People;
use crate::settings::Settings;
use crate::store::{Store, StoreError};
use rpc_core::{CancellationToken, Config, ServiceError, ServiceHandle};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Why the application could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A setting is invalid.
    #[error("invalid setting: {0}")]
    Settings(String),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The RPC service failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The HTTP face could not listen or failed.
    #[error("HTTP on {addr}: {reason}")]
    Http {
        /// The address it was to listen on.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
}

/// A configured application, not running yet.
pub struct Application {
    settings: Settings,
    config: Config,
    store: Store,
    metrics: Arc<Metrics>,
}

impl Application {
    /// Checks the settings and opens (and migrates) the database.
    pub async fn build(settings: Settings) -> Result<Self, AppError> {
        // Flags, environment and config file, layered by Settings.
        let config = settings.rpc_config().map_err(AppError::Settings)?;
        let store = Store::connect(&settings.db, settings.store_options()).await?;
        tracing::info!(
            db = %settings.db,
            kind = settings.db.kind(),
            pool_size = settings.db_pool_size,
            statement_timeout_s = settings.db_statement_timeout.as_secs_f64(),
            service = %settings.service_name,
            "store ready"
        );
        Ok(Application {
            settings,
            config,
            store,
            metrics: Arc::new(Metrics::new()),
        })
    }

    /// The rpc-core configuration derived from the settings; adjust it
    /// before [`Application::start`] (tests shorten timeouts, for instance).
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// Starts serving. The HTTP face (when configured) listens before this
    /// returns; the RPC service connects in the background, retrying while
    /// the broker is unreachable.
    pub async fn start(self) -> Result<RunningApp, AppError> {
        // First what can fail, so that an error leaves nothing running.
        let listener = match self.settings.http {
            None => None,
            Some(addr) => {
                let http_err = |e: std::io::Error| AppError::Http {
                    addr,
                    reason: e.to_string(),
                };
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(http_err)?;
                let local = listener.local_addr().map_err(http_err)?;
                Some((listener, local))
            }
        };
        let people = People::new(self.store.clone(), &self.settings.service_name);
        let service = crate::rpc::service(&self.settings.service_name, people.clone())
            .observe(self.metrics.clone())
            .publishes_events()
            .build();
        let rpc = service.spawn(self.config.clone());
        let relay_stop = CancellationToken::new();
        // The events go out on the service's connection, beside its replies;
        // the relay opens one of its own only when the service has none.
        let relay = tokio::spawn(crate::outbox::run(
            self.store.clone(),
            self.config.clone(),
            self.settings.service_name.clone(),
            Some(rpc.publisher()),
            relay_stop.clone(),
        ));
        let http = listener.map(|(listener, addr)| {
            let router = http::router(HttpState {
                people,
                metrics: self.metrics.clone(),
                rpc_status: rpc.status_receiver(),
                max_body_bytes: self.settings.http_max_body,
            });
            let stop = CancellationToken::new();
            let shutdown = stop.clone().cancelled_owned();
            let task = tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
            });
            tracing::info!(%addr, "HTTP listening");
            HttpServer { addr, stop, task }
        });
        Ok(RunningApp {
            rpc,
            http,
            relay: (relay_stop, relay),
            shutdown_timeout: self.config.shutdown_timeout,
        })
    }

    /// Runs until `stop` is cancelled, then stops gracefully.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> Result<(), AppError> {
        let mut running = self.start().await?;
        tokio::select! {
            _ = stop.cancelled() => {}
            // The service ends by itself only when it cannot go on.
            Some(e) = running.rpc.wait_stopped() => return Err(e.into()),
        }
        running.shutdown().await
    }
}

struct HttpServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

/// A running application.
pub struct RunningApp {
    rpc: ServiceHandle,
    http: Option<HttpServer>,
    relay: (CancellationToken, JoinHandle<()>),
    shutdown_timeout: Duration,
}

/// The most the event relay may take to stop: finish the batch it is
/// publishing, try once more to empty the outbox (bounded by the relay
/// itself) and close. Beyond it the relay is dropped; its events stay in
/// the outbox and go out at the next start.
const RELAY_STOP_BUDGET: Duration = Duration::from_secs(15);

impl RunningApp {
    /// Waits until the RPC service consumes its queue.
    pub async fn ready(&mut self) -> Result<(), AppError> {
        Ok(self.rpc.ready().await?)
    }

    /// Where the HTTP face listens, when it is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|h| h.addr)
    }

    /// Stops gracefully: HTTP requests and RPC calls in flight finish (and
    /// RPC requests are acked) first, within the shutdown timeout each
    /// face shares; then the relay publishes what they committed. Every
    /// step is bounded, so this always returns.
    pub async fn shutdown(self) -> Result<(), AppError> {
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        let http = async {
            if let Some(mut http) = self.http {
                http.stop.cancel();
                match tokio::time::timeout_at(deadline, &mut http.task).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => tracing::error!(error = %e, "HTTP server failed"),
                    Ok(Err(e)) => tracing::error!(error = %e, "HTTP server task failed"),
                    Err(_) => {
                        tracing::warn!(
                            timeout = ?self.shutdown_timeout,
                            "HTTP requests still open at the shutdown timeout; closing their connections"
                        );
                        http.task.abort();
                    }
                }
            }
        };
        let (_, rpc) = tokio::join!(http, self.rpc.shutdown());
        // Last: the relay publishes what the final calls committed.
        let (relay_stop, mut relay) = self.relay;
        relay_stop.cancel();
        match tokio::time::timeout(RELAY_STOP_BUDGET, &mut relay).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "event relay task failed"),
            Err(_) => {
                tracing::warn!(
                    budget = ?RELAY_STOP_BUDGET,
                    "the event relay did not stop in time; its events stay in the outbox for the next start"
                );
                relay.abort();
            }
        }
        Ok(rpc?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_http_address_in_use_fails_the_start() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Nothing is started before the bind fails: no broker is needed.
        let mut settings = Settings::new("amqp://127.0.0.1:1/%2f", dir.path().join("p.db"));
        settings.http = Some(addr);
        let app = Application::build(settings).await.unwrap();
        match app.start().await {
            Err(AppError::Http { addr: a, .. }) => assert_eq!(a, addr),
            Err(e) => panic!("expected an HTTP error, got {e}"),
            Ok(_) => panic!("started on an address in use"),
        }
    }
}
