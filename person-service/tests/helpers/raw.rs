//! test_support's bare AMQP client, with replies decoded as nameko replies.

use lapin::BasicProperties;
use rpc_core::{wire, Value};
use std::time::Duration;
use test_support::raw::RawClient;

pub struct Raw {
    client: RawClient,
}

pub struct RawReply {
    pub correlation_id: Option<String>,
    pub body: Result<Value, wire::ErrorObject>,
}

impl Raw {
    pub async fn connect() -> Raw {
        Raw {
            client: RawClient::connect().await,
        }
    }

    /// The routing key (and `reply_to`) of the reply queue.
    pub fn reply_key(&self) -> &str {
        &self.client.reply_key
    }

    pub fn props(&self, correlation_id: &str) -> BasicProperties {
        self.client.props(correlation_id)
    }

    pub async fn publish(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
        self.client.publish(routing_key, body, props).await;
    }

    pub async fn publish_nowait(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
        self.client.publish_nowait(routing_key, body, props).await;
    }

    pub async fn wait_confirms(&self) {
        self.client.wait_confirms().await;
    }

    pub async fn reply(&mut self) -> RawReply {
        self.reply_within(Duration::from_secs(15))
            .await
            .expect("a reply within 15 s")
    }

    pub async fn reply_within(&mut self, wait: Duration) -> Option<RawReply> {
        let r = self.client.reply_within(wait).await?;
        Some(RawReply {
            correlation_id: r.correlation_id,
            body: wire::decode_reply(&r.data).expect("a nameko reply body"),
        })
    }

    pub async fn close(self) {
        self.client.close().await;
    }
}
