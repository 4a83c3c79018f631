//! A service running on its own task, and the status it reports.

use super::ServiceError;
use crate::error::ConnectError;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where a running service is in its life, as [`ServiceHandle::status`]
/// reports it (health checks read this).
#[derive(Clone, Debug)]
pub enum ServiceStatus {
    /// Connecting for the first time (retrying while the broker is away).
    Starting,
    /// Consuming its queue.
    Consuming,
    /// Lost its connection; reconnecting. The text says why it was lost.
    Reconnecting(String),
    /// Stopped, with the error it failed with if any.
    Stopped(Option<ServiceError>),
}

/// A service running on its own task.
///
/// Dropping the handle does not stop the service: call
/// [`shutdown`](Self::shutdown) (or [`stop`](Self::stop)).
pub struct ServiceHandle {
    pub(super) stop: CancellationToken,
    pub(super) status: watch::Receiver<ServiceStatus>,
    pub(super) task: JoinHandle<Result<(), ServiceError>>,
    pub(super) publisher: crate::events::ServicePublisher,
}

impl ServiceHandle {
    /// Waits until the service consumes its queue (or has failed).
    pub async fn ready(&mut self) -> Result<(), ServiceError> {
        let status = self
            .status
            .wait_for(|s| !matches!(s, ServiceStatus::Starting))
            .await
            .map(|s| s.clone());
        match status {
            Ok(ServiceStatus::Consuming)
            | Ok(ServiceStatus::Reconnecting(_))
            | Ok(ServiceStatus::Stopped(None)) => Ok(()),
            Ok(ServiceStatus::Stopped(Some(e))) => Err(e),
            Ok(ServiceStatus::Starting) | Err(_) => {
                Err(ServiceError::Connect(ConnectError::Shutdown))
            }
        }
    }

    /// Publishes the service's own events on the service's connection,
    /// beside its replies: no second connection, and the event frames share
    /// the socket writes and the broker's connection processes with the
    /// replies. Needs [`ServiceBuilder::publishes_events`](crate::ServiceBuilder::publishes_events):
    /// without it the publisher refuses every event.
    pub fn publisher(&self) -> crate::events::ServicePublisher {
        self.publisher.clone()
    }

    /// The service's status now.
    pub fn status(&self) -> ServiceStatus {
        self.status.borrow().clone()
    }

    /// A receiver that always holds the current status, for components
    /// (such as a health endpoint) that outlive a borrow of the handle.
    pub fn status_receiver(&self) -> watch::Receiver<ServiceStatus> {
        self.status.clone()
    }

    /// Waits until the service has stopped, by request or because it could
    /// not go on (a fatal broker refusal), without consuming the handle.
    /// Returns the error it stopped with, if any.
    pub async fn wait_stopped(&mut self) -> Option<ServiceError> {
        match self
            .status
            .wait_for(|s| matches!(s, ServiceStatus::Stopped(_)))
            .await
        {
            Ok(status) => match &*status {
                ServiceStatus::Stopped(e) => e.clone(),
                _ => None,
            },
            Err(_) => None,
        }
    }

    /// Asks the service to stop gracefully; see [`ServiceHandle::stopped`].
    /// Asking again changes nothing.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// The token that stops the service.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits until the service has stopped. After a stop this takes at most
    /// the config's `shutdown_timeout` plus a short, bounded close of the
    /// connection (see [`crate::server`]).
    pub async fn stopped(self) -> Result<(), ServiceError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(ServiceError::Connect(ConnectError::Refused {
                what: "the service task".into(),
                reason: e.to_string(),
            })),
        }
    }

    /// Stops gracefully and waits until done.
    pub async fn shutdown(self) -> Result<(), ServiceError> {
        self.stop();
        self.stopped().await
    }
}
