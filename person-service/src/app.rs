//! Wiring: configuration → store → RPC service, started and stopped as one.

use crate::settings::Settings;
use crate::store::{Store, StoreError};
use rpc_core::{CancellationToken, Config, ServiceError, ServiceHandle};

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
}

/// A configured application, not running yet.
pub struct Application {
    settings: Settings,
    config: Config,
    store: Store,
}

impl Application {
    /// Checks the settings and opens (and migrates) the database.
    pub async fn build(settings: Settings) -> Result<Self, AppError> {
        let mut config =
            Config::new(&settings.amqp_uri).map_err(|e| AppError::Settings(e.to_string()))?;
        config.max_workers = usize::from(settings.max_workers);
        let path = settings.db.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&path))
            .await
            .map_err(|e| AppError::Settings(format!("opening the database panicked: {e}")))??;
        tracing::info!(db = %settings.db.display(), service = %settings.service_name, "store ready");
        Ok(Application {
            settings,
            config,
            store,
        })
    }

    /// The rpc-core configuration derived from the settings; adjust it
    /// before [`Application::start`] (tests shorten timeouts, for instance).
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Starts serving; returns at once (the service connects in the
    /// background, retrying while the broker is unreachable).
    pub fn start(self) -> RunningApp {
        let service = crate::rpc::service(&self.settings.service_name, self.store.clone()).build();
        let rpc = service.spawn(self.config.clone());
        RunningApp {
            rpc,
            store: self.store,
            settings: self.settings,
        }
    }

    /// Runs until `stop` is cancelled, then stops gracefully.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> Result<(), AppError> {
        let mut running = self.start();
        tokio::select! {
            _ = stop.cancelled() => {}
            // The service ends by itself only when it cannot go on.
            Some(e) = running.rpc.wait_stopped() => return Err(e.into()),
        }
        running.shutdown().await
    }
}

/// A running application.
pub struct RunningApp {
    rpc: ServiceHandle,
    store: Store,
    settings: Settings,
}

impl RunningApp {
    /// Waits until the RPC service consumes its queue.
    pub async fn ready(&mut self) -> Result<(), AppError> {
        Ok(self.rpc.ready().await?)
    }

    /// The service name.
    pub fn service_name(&self) -> &str {
        &self.settings.service_name
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stops gracefully: calls in flight finish and are acked first.
    pub async fn shutdown(self) -> Result<(), AppError> {
        Ok(self.rpc.shutdown().await?)
    }
}
