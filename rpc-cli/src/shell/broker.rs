//! The shell's [`Backend`] on a real broker: one [`RpcProxy`] for every
//! call of the session (one reply queue, many calls in flight), and an
//! [`EventDispatcher`] opened at the first dispatch only.
//!
//! The proxy tries each connection once (see [`crate::settings`]), so when
//! the broker goes away for longer than that, its link gives up and calls
//! fail with [`CallError::Closed`]. A shell session is long-lived, so such a
//! call connects afresh and is published once more: `Closed` means nothing
//! was published, so this cannot run a call twice.

use super::session::{Backend, CallRequest, Reply, Task};
use crate::call::CliError;
use rpc_core::events::DispatchError;
use rpc_core::{CallError, Config, EventDispatcher, RpcProxy, Value};

/// See the module docs.
pub struct Broker {
    config: Config,
    proxy: Option<RpcProxy>,
    events: Option<EventDispatcher>,
}

impl Broker {
    /// Connects the proxy now, so that a wrong URI or a stopped broker is
    /// reported before the first line is read.
    pub async fn connect(config: Config) -> Result<Self, CliError> {
        let proxy = RpcProxy::connect(config.clone()).await?;
        Ok(Broker {
            config,
            proxy: Some(proxy),
            events: None,
        })
    }

    async fn proxy(&mut self) -> Result<RpcProxy, CliError> {
        if let Some(proxy) = &self.proxy {
            return Ok(proxy.clone());
        }
        tracing::info!(broker = %self.config.amqp_uri.endpoint(), "connecting again");
        let proxy = RpcProxy::connect(self.config.clone()).await?;
        self.proxy = Some(proxy.clone());
        Ok(proxy)
    }

    async fn events(&mut self) -> Result<EventDispatcher, CliError> {
        if let Some(events) = &self.events {
            return Ok(events.clone());
        }
        let events = EventDispatcher::connect(self.config.clone()).await?;
        self.events = Some(events.clone());
        Ok(events)
    }
}

impl Backend for Broker {
    fn start_call(&mut self, request: CallRequest) -> Task<'_, Result<Reply, CliError>> {
        Box::pin(async move {
            let mut fresh = false;
            loop {
                let proxy = self
                    .proxy()
                    .await?
                    .with_timeout(request.timeout)
                    .with_context_data(request.context.clone());
                match proxy
                    .call_async(&request.service, &request.method, request.args.clone())
                    .await
                {
                    Ok(pending) => return Ok(Box::pin(pending.result()) as Reply),
                    Err(CallError::Closed) if !fresh => {
                        tracing::debug!("the proxy's link is closed; connecting afresh");
                        self.proxy = None;
                        fresh = true;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        })
    }

    fn dispatch(
        &mut self,
        service: String,
        event_type: String,
        data: Value,
    ) -> Task<'_, Result<(), CliError>> {
        Box::pin(async move {
            let mut fresh = false;
            loop {
                let events = self.events().await?;
                match events.dispatch(&service, &event_type, &data).await {
                    Ok(()) => return Ok(()),
                    Err(DispatchError::Closed) if !fresh => {
                        self.events = None;
                        fresh = true;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        })
    }

    fn close(&mut self) -> Task<'_, ()> {
        Box::pin(async move {
            if let Some(proxy) = self.proxy.take() {
                proxy.close().await;
            }
            if let Some(events) = self.events.take() {
                events.close().await;
            }
        })
    }

    fn exchange(&self) -> String {
        self.config.rpc_exchange.clone()
    }

    fn broker(&self) -> String {
        self.config.amqp_uri.endpoint()
    }
}
