//! The ceiling: a bare request/reply echo over lapin, with nameko's message
//! properties and acknowledgement rules and nothing else (no framework, no
//! database, no JSON decoding).
//!
//! * [`serve`]: consumes `rpc-{name}` (durable, bound to `nameko-rpc` with
//!   `{name}.*`) with prefetch P and manual acks; for each request it
//!   publishes `{"result": <request body>, "error": null}` to `nameko-rpc`
//!   with routing key = `reply_to` and rpc-core's reply properties, waits
//!   for the publisher confirm, then acks the request: rpc-core's order.
//! * [`EchoClient`]: what `RpcProxy` does on the wire: one connection, a
//!   reply queue `rpc.reply-…` (durable, `x-expires` 5 min, bound with its
//!   uuid) consumed without acks, requests published `mandatory` on a
//!   confirm channel with rpc-core's request properties (JSON, UTF-8,
//!   priority 0, correlation id, `reply_to`, `nameko.call_id_stack`), and
//!   each call waits for its reply by correlation id.
//!
//! Confirms can be turned off on both sides (`--no-confirm`) to measure
//! what they cost; rpc-core has no such switch.

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use rpc_core::wire;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// How the echo server and client publish.
#[derive(Clone, Copy, Debug)]
pub struct EchoSettings {
    /// Delivery mode 2 (true) or 1.
    pub persistent: bool,
    /// Publisher confirms on requests and replies.
    pub confirms: bool,
}

impl EchoSettings {
    fn delivery_mode(self) -> u8 {
        if self.persistent {
            wire::PERSISTENT
        } else {
            wire::TRANSIENT
        }
    }
}

/// `what: error`, for `map_err`.
fn err(what: &'static str) -> impl Fn(lapin::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// A connection and a first channel, with `nameko-rpc` declared.
async fn connect(amqp_uri: &str) -> Result<(Connection, Channel), String> {
    let conn = Connection::connect(amqp_uri, ConnectionProperties::default())
        .await
        .map_err(err("connecting"))?;
    let channel = conn.create_channel().await.map_err(err("a channel"))?;
    channel
        .exchange_declare(
            wire::DEFAULT_RPC_EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(err("declaring nameko-rpc"))?;
    Ok((conn, channel))
}

/// Declares the durable queue `queue` (named `what` in errors) with
/// `args` and binds it to `nameko-rpc` with `binding_key`.
async fn declare_bound_queue(
    channel: &Channel,
    what: &str,
    queue: &str,
    binding_key: &str,
    args: FieldTable,
) -> Result<(), String> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .map_err(|e| format!("declaring {what}: {e}"))?;
    channel
        .queue_bind(
            queue.into(),
            wire::DEFAULT_RPC_EXCHANGE.into(),
            binding_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("binding {what}: {e}"))
}

/// A channel to publish on, in confirm mode when `settings` say so.
async fn publish_channel(conn: &Connection, settings: EchoSettings) -> Result<Channel, String> {
    let publish = conn.create_channel().await.map_err(err("a channel"))?;
    if settings.confirms {
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(err("confirm.select"))?;
    }
    Ok(publish)
}

/// Runs the echo server for service `name` until the process is killed.
/// Prints `ready` on stdout once it consumes.
pub async fn serve(
    amqp_uri: &str,
    name: &str,
    prefetch: u16,
    settings: EchoSettings,
) -> Result<(), String> {
    let (conn, consume) = connect(amqp_uri).await?;
    consume
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await
        .map_err(err("basic.qos"))?;
    let queue = wire::rpc_queue(name);
    declare_bound_queue(
        &consume,
        "the queue",
        &queue,
        &wire::rpc_binding_key(name),
        FieldTable::default(),
    )
    .await?;
    let publish = publish_channel(&conn, settings).await?;
    let mut consumer = consume
        .basic_consume(
            queue.as_str().into(),
            format!("echo-{}", uuid::Uuid::new_v4()).as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err("basic.consume"))?;
    println!("ready");
    let mode = settings.delivery_mode();
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.map_err(err("consuming"))?;
        let publish = publish.clone();
        tokio::spawn(async move { reply_then_ack(&publish, delivery, mode).await });
    }
    Err("the broker cancelled the consumer".into())
}

async fn reply_then_ack(publish: &Channel, delivery: Delivery, mode: u8) {
    let props = &delivery.properties;
    let Some(reply_to) = props.reply_to().clone() else {
        let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        return;
    };
    let mut body = Vec::with_capacity(delivery.data.len() + 28);
    body.extend_from_slice(b"{\"result\": ");
    body.extend_from_slice(&delivery.data);
    body.extend_from_slice(b", \"error\": null}");
    let confirmed = match publish
        .basic_publish(
            wire::DEFAULT_RPC_EXCHANGE.into(),
            reply_to,
            BasicPublishOptions::default(),
            &body,
            wire::reply_properties(props.correlation_id().as_ref(), mode),
        )
        .await
    {
        Ok(confirm) => confirm.await,
        Err(e) => Err(e),
    };
    match confirmed {
        Ok(c) if c.is_ack() || matches!(c, Confirmation::NotRequested) => {
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
        Ok(_) | Err(_) => {
            // As rpc-core: no confirmed reply, no ack (the broker
            // redelivers when the channel closes).
            eprintln!("echo: reply not confirmed; request left unacked");
        }
    }
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<u8>>>>>;

/// The bare client; see the module docs.
pub struct EchoClient {
    conn: Connection,
    consume: Channel,
    publish: Channel,
    reply_key: String,
    reply_queue: String,
    headers: FieldTable,
    settings: EchoSettings,
    waiters: Waiters,
    reader: tokio::task::JoinHandle<()>,
}

impl EchoClient {
    /// Connects and sets up the reply queue.
    pub async fn connect(amqp_uri: &str, settings: EchoSettings) -> Result<EchoClient, String> {
        let (conn, consume) = connect(amqp_uri).await?;
        let reply_key = uuid::Uuid::new_v4().to_string();
        let reply_queue = wire::reply_queue("bench_echo_client", &reply_key);
        let mut args = FieldTable::default();
        args.insert(
            "x-expires".into(),
            AMQPValue::LongInt(wire::REPLY_QUEUE_EXPIRES_MS),
        );
        declare_bound_queue(&consume, "the reply queue", &reply_queue, &reply_key, args).await?;
        let mut consumer = consume
            .basic_consume(
                reply_queue.as_str().into(),
                format!("reply-{reply_key}").as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(err("consuming the reply queue"))?;
        let publish = publish_channel(&conn, settings).await?;
        let waiters: Waiters = Arc::default();
        let routes = Arc::clone(&waiters);
        let reader = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let waiter = delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .and_then(|id| routes.lock().ok()?.remove(id.as_str()));
                if let Some(tx) = waiter {
                    let _ = tx.send(delivery.data);
                }
            }
        });
        let call_id = wire::new_call_id(wire::STANDALONE_PROXY, wire::STANDALONE_PROXY_METHOD);
        Ok(EchoClient {
            conn,
            consume,
            publish,
            reply_key,
            reply_queue,
            headers: wire::write_context(&[call_id], &BTreeMap::new()),
            settings,
            waiters,
            reader,
        })
    }

    /// Publishes `body` to `routing_key` and waits (up to `timeout`) for
    /// the reply with the same correlation id. Returns the reply body.
    pub async fn call(
        &self,
        routing_key: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .map_err(|_| "poisoned".to_owned())?
            .insert(correlation_id.clone(), tx);
        let result = tokio::time::timeout(timeout, async {
            let props = wire::request_properties(
                &correlation_id,
                &self.reply_key,
                self.headers.clone(),
                self.settings.delivery_mode(),
            )
            .map_err(|e| e.to_string())?;
            let confirm = self
                .publish
                .basic_publish(
                    wire::DEFAULT_RPC_EXCHANGE.into(),
                    wire::short_string(routing_key).map_err(|e| e.to_string())?,
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    props,
                )
                .await
                .map_err(|e| format!("publish: {e}"))?;
            match confirm.await.map_err(|e| format!("confirm: {e}"))? {
                Confirmation::Ack(None) | Confirmation::NotRequested => {}
                Confirmation::Ack(Some(r)) | Confirmation::Nack(Some(r)) => {
                    return Err(format!("returned: {} {}", r.reply_code, r.reply_text))
                }
                Confirmation::Nack(None) => return Err("nacked".to_owned()),
            }
            rx.await.map_err(|_| "reply listener stopped".to_owned())
        })
        .await
        .unwrap_or_else(|_| Err(format!("no reply within {timeout:?}")));
        if result.is_err() {
            if let Ok(mut w) = self.waiters.lock() {
                w.remove(&correlation_id);
            }
        }
        result
    }

    /// Deletes the reply queue and closes the connection.
    pub async fn close(self) {
        self.reader.abort();
        let _ = self
            .consume
            .queue_delete(
                self.reply_queue.as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await;
        let _ = self.publish.close(200, "OK".into()).await;
        let _ = self.consume.close(200, "OK".into()).await;
        let _ = self.conn.close(200, "OK".into()).await;
    }
}
