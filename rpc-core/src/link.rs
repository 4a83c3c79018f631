//! A supervised client connection, shared by [`RpcProxy`](crate::RpcProxy)
//! and [`EventDispatcher`](crate::events::EventDispatcher).
//!
//! A link owns one connection and a publisher-confirm channel on it, and,
//! for a proxy, a reply queue consumed without acks. A task watches the
//! connection: when it dies, whoever waits for a reply is told at once, and
//! the link reconnects with backoff and declares its reply queue again.
//! Users take the current [`Session`] and wait (within their own deadline)
//! while the link is down.

use crate::config::Config;
use crate::connection;
use crate::error::ConnectError;
use crate::publish::OrderedChannel;
use crate::wire;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, Consumer};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Receives what arrives on a link's reply queue.
pub(crate) trait ReplySink: Send + Sync + 'static {
    /// A reply arrived.
    fn deliver(&self, correlation_id: Option<&str>, body: Vec<u8>);
    /// The connection died: replies still awaited will not come.
    fn lost(&self, reason: &str);
}

/// A reply queue for the link to declare (as nameko does) and consume.
pub(crate) struct Replies {
    /// The queue's name now: it changes when the node that held the queue
    /// is down (see [`ReplyQueueName::renew`]).
    pub(crate) queue: ReplyQueueName,
    pub(crate) routing_key: String,
    pub(crate) sink: Arc<dyn ReplySink>,
}

/// The name of a proxy's reply queue, shared with the proxy that reports it.
///
/// nameko's reply queue is durable, so it lives on the node that declared
/// it. When that node dies, a cluster refuses to declare the queue again
/// anywhere else (404 "home node … is down") until the node is back, and a
/// proxy that kept the name could not receive a reply for as long. Replies
/// are routed by the routing key (`reply_to`), not by the queue's name, so
/// a new queue bound to the same key takes over at once; calls that were
/// waiting on the old queue have already failed with the lost connection.
#[derive(Clone)]
pub(crate) struct ReplyQueueName {
    caller: Arc<str>,
    current: Arc<Mutex<String>>,
}

impl ReplyQueueName {
    pub(crate) fn new(caller: &str, id: &str) -> Self {
        ReplyQueueName {
            caller: caller.into(),
            current: Arc::new(Mutex::new(wire::reply_queue(caller, id))),
        }
    }

    pub(crate) fn get(&self) -> String {
        self.current
            .lock()
            .map(|name| name.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// A fresh name, `rpc.reply-{caller}-{new uuid}`, as nameko would pick.
    fn renew(&self) -> String {
        let name = wire::reply_queue(&self.caller, &uuid::Uuid::new_v4().to_string());
        match self.current.lock() {
            Ok(mut current) => current.clone_from(&name),
            Err(poisoned) => poisoned.into_inner().clone_from(&name),
        }
        name
    }
}

/// What users of a link publish on while it is up.
#[derive(Clone)]
pub(crate) struct Session {
    pub(crate) channel: OrderedChannel,
    /// Exchanges already declared on this connection.
    declared: Arc<Mutex<HashSet<String>>>,
}

impl Session {
    /// Declares a durable topic exchange once per connection (nameko
    /// declares `{service}.events` before publishing to it).
    pub(crate) async fn ensure_topic_exchange(
        &self,
        name: &lapin::types::ShortString,
    ) -> Result<(), lapin::Error> {
        let known = self
            .declared
            .lock()
            .map(|set| set.contains(name.as_str()))
            .unwrap_or(false);
        if known {
            return Ok(());
        }
        connection::declare_topic_exchange(self.channel.channel(), name.as_str()).await?;
        if let Ok(mut set) = self.declared.lock() {
            set.insert(name.as_str().to_owned());
        }
        Ok(())
    }
}

#[derive(Clone)]
pub(crate) enum LinkState {
    Up(Session),
    Down(String),
    Closed,
}

/// A supervised connection; see the module docs.
pub(crate) struct Link {
    pub(crate) config: Config,
    state: watch::Receiver<LinkState>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Link {
    /// Connects (retrying as the config says), sets up, and starts watching.
    pub(crate) async fn start(
        name: &str,
        config: Config,
        replies: Option<Replies>,
        stop: CancellationToken,
    ) -> Result<Link, ConnectError> {
        // lapin panics on a name over 255 bytes: refuse it before connecting.
        if let Some(r) = &replies {
            for (what, text) in [
                ("the RPC exchange", config.rpc_exchange.as_str()),
                ("the reply queue", r.queue.get().as_str()),
            ] {
                wire::short_string(text).map_err(|e| ConnectError::InvalidName {
                    what: format!("{what} {text:?}"),
                    reason: e.to_string(),
                })?;
            }
        }
        let options = config.connect_options(name.to_owned());
        let (conn, broker) = connection::connect(&config.amqp_uri, 0, &options, &stop).await?;
        let setup = match bounded_setup(&conn, &config, replies.as_ref(), &stop).await {
            Ok(setup) => setup,
            Err(e) => {
                connection::close_connection(&conn, "setup failed").await;
                return Err(e);
            }
        };
        let (state_tx, state_rx) = watch::channel(LinkState::Up(setup.session.clone()));
        let supervisor = Supervisor {
            name: name.to_owned(),
            config: config.clone(),
            replies,
            state: state_tx,
            stop: stop.clone(),
        };
        let task = tokio::spawn(supervisor.run(conn, setup, broker));
        Ok(Link {
            config,
            state: state_rx,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// The current session, waiting while the link reconnects. `Err` holds
    /// why there is none: the link was closed.
    pub(crate) async fn session(&self) -> Result<Session, ()> {
        let mut rx = self.state.clone();
        let state = rx
            .wait_for(|s| !matches!(s, LinkState::Down(_)))
            .await
            .map_err(|_| ())?;
        match &*state {
            LinkState::Up(session) => Ok(session.clone()),
            _ => Err(()),
        }
    }

    /// Why the link is down, when it is.
    pub(crate) fn down_reason(&self) -> Option<String> {
        match &*self.state.borrow() {
            LinkState::Down(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    /// Whether the link has a live connection now.
    pub(crate) fn is_up(&self) -> bool {
        matches!(&*self.state.borrow(), LinkState::Up(_))
    }

    /// Stops the link: deletes its reply queue and closes the connection.
    /// Bounded: the supervisor gives way to the stop at once, and its
    /// closing exchanges with the broker are each bounded; should it still
    /// not end, it is aborted (which drops the connection).
    pub(crate) async fn close(&self) {
        self.stop.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(mut task) = task {
            if tokio::time::timeout(CLOSE_BUDGET, &mut task).await.is_err() {
                tracing::warn!(timeout = ?CLOSE_BUDGET, "the link did not close in time; dropped its connection");
                task.abort();
            }
        }
    }
}

struct Setup {
    session: Session,
    consume: Option<(Channel, Consumer)>,
}

/// The most a link's close may take: deleting the reply queue, then
/// closing the connection, each bounded by [`connection::CLOSE_TIMEOUT`].
const CLOSE_BUDGET: Duration = Duration::from_secs(5);

/// [`setup`], within [`connection::SETUP_TIMEOUT`], giving way to `stop`.
async fn bounded_setup(
    conn: &Connection,
    config: &Config,
    replies: Option<&Replies>,
    stop: &CancellationToken,
) -> Result<Setup, ConnectError> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => Err(ConnectError::Shutdown),
        setup = tokio::time::timeout(connection::SETUP_TIMEOUT, setup(conn, config, replies)) => {
            setup.unwrap_or_else(|_| Err(ConnectError::Refused {
                what: "the connection's setup".into(),
                reason: format!("no answer within {:?}", connection::SETUP_TIMEOUT),
            }))
        }
    }
}

async fn setup(
    conn: &Connection,
    config: &Config,
    replies: Option<&Replies>,
) -> Result<Setup, ConnectError> {
    let refused = |what: &str| {
        let what = what.to_owned();
        move |e: lapin::Error| ConnectError::Refused {
            what,
            reason: e.to_string(),
        }
    };
    let consume = match replies {
        None => None,
        Some(r) => {
            let mut ch = conn.create_channel().await.map_err(refused("a channel"))?;
            connection::declare_topic_exchange(&ch, &config.rpc_exchange)
                .await
                .map_err(refused("the RPC exchange declaration"))?;
            let mut queue = r.queue.get();
            if let Err(e) = declare_reply_queue(&ch, &queue).await {
                if !is_home_node_down(&e) {
                    return Err(refused("the reply queue declaration")(e));
                }
                // The refusal closed the channel.
                let renewed = r.queue.renew();
                tracing::warn!(
                    old = %queue,
                    new = %renewed,
                    "the reply queue's node is down; replies come to a new reply queue"
                );
                queue = renewed;
                ch = conn.create_channel().await.map_err(refused("a channel"))?;
                declare_reply_queue(&ch, &queue)
                    .await
                    .map_err(refused("the reply queue declaration"))?;
            }
            ch.queue_bind(
                queue.as_str().into(),
                config.rpc_exchange.as_str().into(),
                r.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(refused("the reply queue binding"))?;
            // Replies are consumed without acks: a reply nobody waits for
            // any more is worthless, and acks would cost the broker a frame
            // per call.
            let consumer = ch
                .basic_consume(
                    queue.as_str().into(),
                    format!("reply-{}", r.routing_key).into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(refused("consuming the reply queue"))?;
            Some((ch, consumer))
        }
    };
    let publish = conn.create_channel().await.map_err(refused("a channel"))?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(refused("publisher confirms"))?;
    Ok(Setup {
        session: Session {
            channel: OrderedChannel::new(publish),
            declared: Arc::default(),
        },
        consume,
    })
}

/// nameko's reply queue: durable, expiring 5 minutes after its last
/// consumer went away.
async fn declare_reply_queue(channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
    let mut args = FieldTable::default();
    args.insert(
        "x-expires".into(),
        AMQPValue::LongInt(wire::REPLY_QUEUE_EXPIRES_MS),
    );
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
        .map(|_| ())
}

/// A declare refused because the durable queue of that name lives on a
/// cluster node that is down (RabbitMQ answers 404 NOT_FOUND "home node …
/// of durable queue … is down or inaccessible"). A declare of a queue that
/// does not exist creates it, so a 404 means nothing else here.
fn is_home_node_down(e: &lapin::Error) -> bool {
    e.to_string().contains("NOT_FOUND")
}

struct Supervisor {
    name: String,
    config: Config,
    replies: Option<Replies>,
    state: watch::Sender<LinkState>,
    stop: CancellationToken,
}

impl Supervisor {
    /// `broker` is the index in the list of the broker `conn` reached.
    async fn run(self, mut conn: Connection, mut setup: Setup, mut broker: usize) {
        loop {
            let lost = self.watch(&conn, &mut setup).await;
            let Some(reason) = lost else {
                self.shut_down(conn, setup).await;
                return;
            };
            tracing::warn!(
                link = %self.name,
                broker = %self.config.amqp_uri.get(broker).endpoint(),
                broker_index = broker,
                reason = %reason,
                "lost the broker connection; reconnecting"
            );
            self.state.send_replace(LinkState::Down(reason.clone()));
            if let Some(r) = &self.replies {
                r.sink.lost(&reason);
            }
            connection::close_unless_stopped(&conn, "reconnecting", &self.stop).await;
            // The lost node is likely going away: start at the next one.
            match self.reconnect(broker + 1).await {
                Some((c, s, b)) => {
                    conn = c;
                    setup = s;
                    broker = b;
                }
                None => {
                    self.state.send_replace(LinkState::Closed);
                    if let Some(r) = &self.replies {
                        r.sink.lost("the link was closed");
                    }
                    return;
                }
            }
        }
    }

    /// Routes replies until the connection fails (`Some(reason)`) or the
    /// link is stopped (`None`).
    async fn watch(&self, conn: &Connection, setup: &mut Setup) -> Option<String> {
        let mut events = conn.events_listener();
        loop {
            // A link without a reply queue (a dispatcher) only watches the
            // connection.
            let reply = async {
                match &mut setup.consume {
                    Some((_, consumer)) => consumer.next().await,
                    None => std::future::pending().await,
                }
            };
            let delivery = tokio::select! {
                _ = self.stop.cancelled() => return None,
                event = events.next() => match event {
                    Some(lapin::Event::Error(e)) => return Some(e.to_string()),
                    Some(_) => continue,
                    None => return Some("the connection ended".to_owned()),
                },
                d = reply => d,
            };
            match delivery {
                Some(Ok(delivery)) => {
                    if let Some(r) = &self.replies {
                        let id = delivery
                            .properties
                            .correlation_id()
                            .as_ref()
                            .map(|s| s.as_str());
                        r.sink.deliver(id, delivery.data);
                    }
                }
                Some(Err(e)) => return Some(e.to_string()),
                None => return Some("the broker cancelled the reply consumer".to_owned()),
            }
        }
    }

    /// Reconnects, trying the list from element `start` on; returns the
    /// connection, its setup, and the index of the broker reached.
    async fn reconnect(&self, mut start: usize) -> Option<(Connection, Setup, usize)> {
        // `connect_retry` may make the first connection fail fast (a command
        // line tool); once it has worked, the link keeps trying until it is
        // closed, so a broker restart does not close it for good.
        let mut options = self.config.connect_options(self.name.clone());
        options.retry.attempts = None;
        let mut backoff = connection::Backoff::new(&self.config.connect_retry);
        loop {
            let (conn, broker) =
                match connection::connect(&self.config.amqp_uri, start, &options, &self.stop).await
                {
                    Ok(connected) => connected,
                    Err(ConnectError::Shutdown) => return None,
                    Err(e) => {
                        tracing::error!(link = %self.name, error = %e, "gave up reconnecting");
                        return None;
                    }
                };
            match bounded_setup(&conn, &self.config, self.replies.as_ref(), &self.stop).await {
                Ok(setup) => {
                    tracing::info!(
                        link = %self.name,
                        broker = %self.config.amqp_uri.get(broker).endpoint(),
                        broker_index = broker,
                        "reconnected"
                    );
                    self.state
                        .send_replace(LinkState::Up(setup.session.clone()));
                    return Some((conn, setup, broker));
                }
                Err(ConnectError::Shutdown) => {
                    connection::close_connection(&conn, "stopping").await;
                    return None;
                }
                Err(e) => {
                    tracing::warn!(
                        link = %self.name,
                        broker = %self.config.amqp_uri.get(broker).endpoint(),
                        error = %e,
                        "setting up after reconnecting failed; retrying with the next broker"
                    );
                    connection::close_unless_stopped(&conn, "retrying", &self.stop).await;
                    start = broker + 1;
                    if !backoff.wait(&self.stop).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Closes everything in order (reply queue, channels, connection) so the
    /// broker sees a clean close and nothing is closed twice.
    async fn shut_down(&self, conn: Connection, setup: Setup) {
        self.state.send_replace(LinkState::Closed);
        if let Some(r) = &self.replies {
            r.sink.lost("the proxy was closed");
        }
        let reply_channel = if let Some((channel, consumer)) = setup.consume {
            if let Some(r) = &self.replies {
                // The reply queue is ours alone (its name holds a fresh
                // uuid), so it is deleted rather than left to expire.
                let queue = r.queue.get();
                let delete =
                    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default());
                match tokio::time::timeout(connection::CLOSE_TIMEOUT, delete).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "could not delete the reply queue; it expires in 5 minutes")
                    }
                    Err(_) => {
                        tracing::debug!(
                            "no answer to the reply queue's delete; it expires in 5 minutes"
                        )
                    }
                }
            }
            drop(consumer);
            Some(channel)
        } else {
            None
        };
        let mut channels: Vec<&Channel> = reply_channel.iter().collect();
        channels.push(setup.session.channel.channel());
        // Each channel closes before the connection, so that lapin does not
        // find them open (and log an error) once it is gone.
        connection::close_channels(&channels, "closed").await;
        connection::close_connection(&conn, "closed").await;
    }
}
