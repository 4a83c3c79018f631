//! A bare AMQP client for tests that need to send what RpcProxy never would:
//! the same correlation id twice (a redelivery), malformed bodies, odd
//! properties. Replies land in an exclusive queue bound to nameko-rpc.

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use rpc_core::{wire, Value};
use std::time::Duration;

pub struct Raw {
    pub conn: Connection,
    pub channel: Channel,
    pub reply_key: String,
    replies: Consumer,
}

pub struct RawReply {
    pub correlation_id: Option<String>,
    pub body: Result<Value, wire::ErrorObject>,
}

impl Raw {
    pub async fn connect() -> Raw {
        let conn =
            Connection::connect(&test_support::broker_uri(), ConnectionProperties::default())
                .await
                .expect("connect");
        let channel = conn.create_channel().await.unwrap();
        channel.confirm_select(Default::default()).await.unwrap();
        let reply_key = uuid::Uuid::new_v4().to_string();
        let queue = format!("test-replies-{reply_key}");
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                "nameko-rpc".into(),
                reply_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let replies = channel
            .basic_consume(
                queue.as_str().into(),
                "raw".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Raw {
            conn,
            channel,
            reply_key,
            replies,
        }
    }

    /// nameko's request properties with this client's reply queue.
    pub fn props(&self, correlation_id: &str) -> BasicProperties {
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(2)
            .with_reply_to(self.reply_key.as_str().into())
            .with_correlation_id(correlation_id.into())
    }

    pub async fn publish(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
        self.channel
            .basic_publish(
                "nameko-rpc".into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Publishes without waiting for each confirm (for volume).
    pub async fn publish_nowait(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                "nameko-rpc".into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .unwrap();
        // Dropped unawaited, the confirm is collected by wait_confirms.
        drop(confirm);
    }

    pub async fn wait_confirms(&self) {
        self.channel.wait_for_confirms().await.unwrap();
    }

    pub async fn reply(&mut self) -> RawReply {
        self.reply_within(Duration::from_secs(15))
            .await
            .expect("a reply within 15 s")
    }

    pub async fn reply_within(&mut self, wait: Duration) -> Option<RawReply> {
        let d = tokio::time::timeout(wait, self.replies.next())
            .await
            .ok()??
            .ok()?;
        Some(RawReply {
            correlation_id: d
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str().to_owned()),
            body: wire::decode_reply(&d.data).expect("a nameko reply body"),
        })
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "OK".into()).await;
    }
}
