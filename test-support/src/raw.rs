//! A bare AMQP client for tests that must send what a proper client never
//! would: the same correlation id twice (a redelivery), malformed bodies,
//! odd properties, or a flood of requests without waiting for each confirm.
//! Replies land in an exclusive, auto-delete queue bound to `nameko-rpc`.

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer, PublisherConfirm,
};
use std::time::Duration;

/// A plain connection to the test broker.
///
/// # Panics
/// When the broker is not reachable.
pub async fn connect() -> Connection {
    Connection::connect(&crate::broker_uri(), ConnectionProperties::default())
        .await
        .expect("connect to the broker")
}

/// The client; see the module docs.
pub struct RawClient {
    /// Its connection.
    pub conn: Connection,
    /// Its channel, in confirm mode.
    pub channel: Channel,
    /// The routing key (and `reply_to`) of its reply queue.
    pub reply_key: String,
    replies: Consumer,
}

/// A reply: its correlation id and body, undecoded.
#[derive(Debug)]
pub struct RawReply {
    /// The reply's correlation id.
    pub correlation_id: Option<String>,
    /// The reply's content type.
    pub content_type: Option<String>,
    /// The body.
    pub data: Vec<u8>,
}

impl RawClient {
    /// Connects to the test broker and declares the reply queue.
    ///
    /// # Panics
    /// When the broker is not reachable.
    pub async fn connect() -> RawClient {
        let conn = connect().await;
        let channel = conn.create_channel().await.expect("a channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
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
            .expect("declare the reply queue");
        channel
            .queue_bind(
                queue.as_str().into(),
                "nameko-rpc".into(),
                reply_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the reply queue");
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
            .expect("consume the reply queue");
        RawClient {
            conn,
            channel,
            reply_key,
            replies,
        }
    }

    /// nameko's request properties, with this client's reply queue.
    pub fn props(&self, correlation_id: &str) -> BasicProperties {
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("utf-8".into())
            .with_delivery_mode(2)
            .with_reply_to(self.reply_key.as_str().into())
            .with_correlation_id(correlation_id.into())
    }

    /// Publishes to `nameko-rpc` and waits for the broker's confirm.
    pub async fn publish(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
        self.send(routing_key, body, props)
            .await
            .await
            .expect("confirm");
    }

    /// Publishes without waiting for the confirm (see [`Self::wait_confirms`]).
    pub async fn publish_nowait(&self, routing_key: &str, body: &[u8], props: BasicProperties) {
        // Dropped unawaited, the confirm is collected by wait_confirms.
        drop(self.send(routing_key, body, props).await);
    }

    async fn send(
        &self,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> PublisherConfirm {
        self.channel
            .basic_publish(
                "nameko-rpc".into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish")
    }

    /// Waits for every outstanding confirm.
    pub async fn wait_confirms(&self) {
        self.channel.wait_for_confirms().await.expect("confirms");
    }

    /// The next reply, within `wait`.
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
            content_type: d
                .properties
                .content_type()
                .as_ref()
                .map(|c| c.as_str().to_owned()),
            data: d.data,
        })
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.conn.close(200, "OK".into()).await;
    }
}

/// Messages ready in a queue (a passive declare).
///
/// # Panics
/// When the queue does not exist.
pub async fn queue_depth(queue: &str) -> u32 {
    queue_info(queue).await.0
}

/// Consumers of a queue (a passive declare).
///
/// # Panics
/// When the queue does not exist.
pub async fn consumer_count(queue: &str) -> u32 {
    queue_info(queue).await.1
}

async fn queue_info(queue: &str) -> (u32, u32) {
    let conn = connect().await;
    let ch = conn.create_channel().await.expect("a channel");
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("queue {queue}: {e}"));
    let _ = conn.close(200, "OK".into()).await;
    (q.message_count(), q.consumer_count())
}
