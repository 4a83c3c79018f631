//! Events against the real broker: dispatch from a handler and standalone,
//! the three handler types across instances, ack and requeue rules, the
//! back-off that replaces nameko's tight redelivery loop, and declarations
//! compatible with nameko's flags.

mod common;

use common::{config, emitter};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use rpc_core::events::Subscription;
use rpc_core::{
    json, Args, Config, Context, EncodedEvent, EventDispatcher, EventHandlerOptions, OutgoingEvent,
    RpcError, RpcProxy, Service, ServiceHandle, Signature, Value,
};
use std::time::{Duration, Instant};
use test_support::raw::queue_depth;
use test_support::WithinExt;
use test_support::{unique_name, Cleanup};
use tokio::sync::{mpsc, watch};

type Seen = mpsc::UnboundedReceiver<(String, Value, Vec<String>)>;

/// A service `name` with one handler of `source`'s `event_type`, which
/// reports (instance tag, data, call-id stack) for each event.
async fn listener(
    name: &str,
    tag: &str,
    source: &str,
    event_type: &str,
    options: EventHandlerOptions,
    config: &Config,
) -> (ServiceHandle, Seen) {
    let (tx, rx) = mpsc::unbounded_channel();
    let tag = tag.to_owned();
    let mut handle = Service::builder(name)
        .event_handler(
            "on_event",
            Subscription::to(event_type).from(source),
            options,
            move |ctx: Context, data: Value| {
                let tx = tx.clone();
                let tag = tag.clone();
                async move {
                    let _ = tx.send((tag, data, ctx.call_id_stack().to_vec()));
                    Ok::<(), String>(())
                }
            },
        )
        .build()
        .spawn(config.clone());
    handle
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .expect("listener starts");
    (handle, rx)
}

async fn next(rx: &mut Seen) -> (String, Value, Vec<String>) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .expect("listener alive")
}

/// Bodies `{"n": N}` for each N of `range`, as the wire writes them.
fn numbered_bodies(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
    range
        .map(|n| format!(r#"{{"n": {n}}}"#).into_bytes())
        .collect()
}

static NO_CONTEXT: std::collections::BTreeMap<String, Value> = std::collections::BTreeMap::new();

/// `source`'s events of type `numbered` with these bodies, no context.
fn numbered<'a>(source: &'a str, bodies: &'a [Vec<u8>]) -> Vec<EncodedEvent<'a>> {
    bodies
        .iter()
        .map(|body| EncodedEvent {
            source_service: source,
            event_type: "numbered",
            body,
            call_id_stack: &[],
            context: &NO_CONTEXT,
        })
        .collect()
}

/// A config with one handler at a time, so that the order seen is the order
/// delivered, and a listener of `source`'s `numbered` events (the cleanup
/// covers its queue and `source`'s exchange).
async fn numbered_listener(source: &str) -> (Config, ServiceHandle, Seen, Cleanup) {
    let mut config = config();
    config.max_workers = 1;
    let sink = unique_name("numbered_sink");
    let cleanup = Cleanup::new()
        .queue(&format!("evt-{source}-numbered--{sink}.on_event"))
        .exchange(&format!("{source}.events"));
    let (listening, seen) = listener(
        &sink,
        "sink",
        source,
        "numbered",
        EventHandlerOptions::service_pool(),
        &config,
    )
    .await;
    (config, listening, seen, cleanup)
}

/// Waits for the events numbered `range`, in that order.
async fn numbered_arrive_in_order(rx: &mut Seen, range: std::ops::Range<u32>) {
    for n in range {
        let (_, data, _) = next(rx).await;
        assert_eq!(data, json!({ "n": n }), "event {n} out of order");
    }
}

async fn nothing_more(rx: &mut Seen) {
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "unexpected extra event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_from_a_handler_carries_the_context() {
    let config = config();
    let source = unique_name("emitter");
    let sink = unique_name("sink");
    let _cleanup = Cleanup::new()
        .service(&source)
        .queue(&format!("evt-{source}-ping--{sink}.on_event"))
        .exchange(&format!("{source}.events"));
    let (sink_handle, mut seen) = listener(
        &sink,
        "a",
        &source,
        "ping",
        EventHandlerOptions::service_pool(),
        &config,
    )
    .await;
    let mut emitter = emitter(&source).spawn(config.clone());
    emitter
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .unwrap();

    let mut data = std::collections::BTreeMap::new();
    data.insert("user_id".to_owned(), json!("u9"));
    let proxy = RpcProxy::connect(config.clone())
        .await
        .unwrap()
        .with_context_data(data);
    let emitter_call_id = proxy
        .call(&source, "emit", Args::new().arg(json!({"a": 1})))
        .await
        .unwrap();
    let (_, got, stack) = next(&mut seen).await;
    assert_eq!(got, json!({"a": 1}));
    assert_eq!(stack.len(), 3, "{stack:?}");
    assert_eq!(stack[0], proxy.call_id_stack()[0]);
    assert_eq!(json!(stack[1]), emitter_call_id);
    assert!(stack[2].starts_with(&format!("{sink}.on_event.")));

    // A standalone dispatcher sends no context: the handler's stack is new.
    let events = EventDispatcher::connect(config.clone()).await.unwrap();
    events
        .dispatch(&source, "ping", &json!({"standalone": true}))
        .await
        .unwrap();
    let (_, got, stack) = next(&mut seen).await;
    assert_eq!(got, json!({"standalone": true}));
    assert_eq!(stack.len(), 1);
    // An event type nobody listens to is dropped by the broker, not an error.
    events
        .dispatch(&source, "unheard", &json!(1))
        .await
        .unwrap();
    nothing_more(&mut seen).await;

    events.close().await;
    proxy.close().await;
    emitter
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
    sink_handle
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_types_share_events_as_nameko_does() {
    let config = config();
    let source = unique_name("src");
    let (svc_a, svc_b) = (unique_name("pool_a"), unique_name("pool_b"));
    let _cleanup = Cleanup::new()
        .queue(&format!("evt-{source}-pool--{svc_a}.on_event"))
        .queue(&format!("evt-{source}-pool--{svc_b}.on_event"))
        .queue(&format!("evt-{source}-single"))
        .exchange(&format!("{source}.events"));
    let events = EventDispatcher::connect(config.clone()).await.unwrap();

    // Service pool: two instances of A share one queue; B has its own.
    let (a1, mut a1_seen) = listener(
        &svc_a,
        "a1",
        &source,
        "pool",
        EventHandlerOptions::service_pool(),
        &config,
    )
    .await;
    let (a2, mut a2_seen) = listener(
        &svc_a,
        "a2",
        &source,
        "pool",
        EventHandlerOptions::service_pool(),
        &config,
    )
    .await;
    let (b, mut b_seen) = listener(
        &svc_b,
        "b",
        &source,
        "pool",
        EventHandlerOptions::service_pool(),
        &config,
    )
    .await;
    for i in 0..10 {
        events.dispatch(&source, "pool", &json!(i)).await.unwrap();
    }
    let mut a_total = 0;
    let mut b_total = 0;
    while a_total + b_total < 20 {
        tokio::select! {
            Some(_) = a1_seen.recv() => a_total += 1,
            Some(_) = a2_seen.recv() => a_total += 1,
            Some(_) = b_seen.recv() => b_total += 1,
            _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("events missing: a={a_total} b={b_total}"),
        }
    }
    assert_eq!((a_total, b_total), (10, 10));
    nothing_more(&mut a1_seen).await;
    nothing_more(&mut a2_seen).await;
    for h in [a1, a2, b] {
        h.shutdown()
            .within(test_support::STOP_BOUND, "the service to stop")
            .await
            .unwrap();
    }

    // Singleton: one queue per event type, across services.
    let (s1, mut s1_seen) = listener(
        &svc_a,
        "s1",
        &source,
        "single",
        EventHandlerOptions::singleton(),
        &config,
    )
    .await;
    let (s2, mut s2_seen) = listener(
        &svc_b,
        "s2",
        &source,
        "single",
        EventHandlerOptions::singleton(),
        &config,
    )
    .await;
    for i in 0..6 {
        events.dispatch(&source, "single", &json!(i)).await.unwrap();
    }
    let mut total = 0;
    while total < 6 {
        tokio::select! {
            Some(_) = s1_seen.recv() => total += 1,
            Some(_) = s2_seen.recv() => total += 1,
            _ = tokio::time::sleep(Duration::from_secs(10)) => panic!("singleton events missing: {total}"),
        }
    }
    nothing_more(&mut s1_seen).await;
    nothing_more(&mut s2_seen).await;
    s1.shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
    s2.shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();

    // Broadcast: every instance gets every event.
    let opts = EventHandlerOptions::broadcast().reliable_delivery(false);
    let (c1, mut c1_seen) = listener(&svc_a, "c1", &source, "bcast", opts.clone(), &config).await;
    let (c2, mut c2_seen) = listener(&svc_a, "c2", &source, "bcast", opts, &config).await;
    for i in 0..3 {
        events.dispatch(&source, "bcast", &json!(i)).await.unwrap();
    }
    // Handlers run concurrently, so compare sets, not order.
    for seen in [&mut c1_seen, &mut c2_seen] {
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(next(seen).await.1.as_i64().unwrap());
        }
        got.sort_unstable();
        assert_eq!(got, vec![0, 1, 2]);
        nothing_more(seen).await;
    }
    c1.shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
    c2.shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
    events.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reliable_broadcast_without_identifier_is_refused() {
    let config = config();
    let mut handle = Service::builder(&unique_name("bad"))
        .event_handler(
            "h",
            Subscription::to("x").from("src"),
            EventHandlerOptions::broadcast(),
            |_c: Context, _d: Value| async { Ok::<(), String>(()) },
        )
        .build()
        .spawn(config);
    let err = handle
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("broadcast"), "{err}");
}

type Attempts = watch::Receiver<Vec<Instant>>;

/// A service whose handler fails while `fail_while(attempt)` holds, and the
/// time of each attempt so far.
async fn failing(
    name: &str,
    source: &str,
    options: EventHandlerOptions,
    fail_while: fn(usize) -> bool,
    config: &Config,
) -> (ServiceHandle, Attempts) {
    let (seen, attempts) = watch::channel(Vec::new());
    let mut handle = Service::builder(name)
        .event_handler(
            "on_event",
            Subscription::to("work").from(source),
            options,
            move |_ctx: Context, _data: u32| {
                let seen = seen.clone();
                async move {
                    let mut n = 0;
                    seen.send_modify(|a| {
                        a.push(Instant::now());
                        n = a.len();
                    });
                    if fail_while(n) {
                        Err(format!("attempt {n} fails"))
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .build()
        .spawn(config.clone());
    handle
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .unwrap();
    (handle, attempts)
}

async fn wait_for_attempts(attempts: &mut Attempts, n: usize) {
    let reached =
        tokio::time::timeout(Duration::from_secs(15), attempts.wait_for(|a| a.len() >= n))
            .await
            .is_ok_and(|r| r.is_ok());
    assert!(reached, "only {} attempts", attempts.borrow().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_on_error_retries_with_a_back_off_not_a_tight_loop() {
    let config = config();
    let source = unique_name("src");
    let name = unique_name("retrying");
    let queue = format!("evt-{source}-work--{name}.on_event");
    let _cleanup = Cleanup::new()
        .queue(&queue)
        .exchange(&format!("{source}.events"));
    let options = EventHandlerOptions::service_pool()
        .requeue_on_error(true)
        .retry_delay(Duration::from_millis(100), Duration::from_millis(400));

    // Fails twice, then succeeds: the event is redelivered until handled.
    let (handle, mut attempts) =
        failing(&name, &source, options.clone(), |n| n <= 2, &config).await;
    let events = EventDispatcher::connect(config.clone()).await.unwrap();
    events.dispatch(&source, "work", &7).await.unwrap();
    wait_for_attempts(&mut attempts, 3).await;
    let times = attempts.borrow().clone();
    assert!(
        times[1] - times[0] >= Duration::from_millis(100),
        "first retry too soon"
    );
    assert!(
        times[2] - times[1] >= Duration::from_millis(200),
        "second retry too soon"
    );
    handle
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
    assert_eq!(queue_depth(&queue).await, 0, "handled at last, and acked");

    // Always fails: over a second it is tried a handful of times, where
    // nameko's immediate requeue would run it thousands of times.
    let (handle, mut attempts) = failing(&name, &source, options, |_| true, &config).await;
    events.dispatch(&source, "work", &8).await.unwrap();
    wait_for_attempts(&mut attempts, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = attempts.borrow().len();
    assert!((2..=6).contains(&n), "{n} attempts in about a second");
    // Stopping does not lose it: it goes back to the queue.
    handle
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
    assert_eq!(queue_depth(&queue).await, 1);
    events.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_without_requeue_and_undecodable_events_are_dropped() {
    let config = config();
    let source = unique_name("src");
    let name = unique_name("dropping");
    let queue = format!("evt-{source}-work--{name}.on_event");
    let _cleanup = Cleanup::new()
        .queue(&queue)
        .exchange(&format!("{source}.events"));
    let (handle, mut attempts) = failing(
        &name,
        &source,
        EventHandlerOptions::service_pool(),
        |_| true,
        &config,
    )
    .await;
    let events = EventDispatcher::connect(config.clone()).await.unwrap();
    events.dispatch(&source, "work", &1).await.unwrap();
    wait_for_attempts(&mut attempts, 1).await;
    handle
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
    assert_eq!(attempts.borrow().len(), 1);
    assert_eq!(queue_depth(&queue).await, 0);

    // Data that is not a u32 can never be handled: dropped even with requeue.
    let (handle, mut attempts) = failing(
        &name,
        &source,
        EventHandlerOptions::service_pool().requeue_on_error(true),
        |_| false,
        &config,
    )
    .await;
    events
        .dispatch(&source, "work", &json!({"not": "a number"}))
        .await
        .unwrap();
    events.dispatch(&source, "work", &5).await.unwrap();
    wait_for_attempts(&mut attempts, 1).await;
    handle
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
    assert_eq!(
        attempts.borrow().len(),
        1,
        "only the valid event reached the handler"
    );
    assert_eq!(queue_depth(&queue).await, 0);
    events.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarations_match_nameko_flags() {
    // Re-declaring with nameko's exact flags must not answer 406.
    let config = config();
    let source = unique_name("src");
    let name = unique_name("flags");
    let pool_q = format!("evt-{source}-a--{name}.on_event");
    let _cleanup = Cleanup::new()
        .queue(&pool_q)
        .exchange(&format!("{source}.events"));
    let (h, _) = listener(
        &name,
        "x",
        &source,
        "a",
        EventHandlerOptions::service_pool(),
        &config,
    )
    .await;
    let conn = test_support::raw::connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        format!("{source}.events").as_str().into(),
        lapin::ExchangeKind::Topic,
        lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("events exchange: durable topic, as nameko declares it");
    ch.queue_declare(
        pool_q.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("service-pool queue: durable, not auto-delete, as nameko declares it");
    let _ = conn.close(200, "OK".into()).await;
    h.shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .unwrap();
}

/// A batch is published all at once (its frames queued together); the
/// events must still arrive in the batch's order, each with its own body,
/// encoded or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_arrives_whole_and_in_order() {
    let source = unique_name("batch_src");
    let (config, listening, mut seen, _cleanup) = numbered_listener(&source).await;
    let events = EventDispatcher::connect(config.clone()).await.unwrap();
    let batch: Vec<OutgoingEvent> = (0..300)
        .map(|n| OutgoingEvent {
            source_service: source.clone(),
            event_type: "numbered".into(),
            data: json!({ "n": n }),
            ..OutgoingEvent::default()
        })
        .collect();
    assert_eq!(events.dispatch_batch(&batch).await.unwrap(), 300);
    let bodies = numbered_bodies(300..600);
    let encoded = numbered(&source, &bodies);
    assert_eq!(events.dispatch_encoded(&encoded).await.unwrap(), 300);
    numbered_arrive_in_order(&mut seen, 0..600).await;
    nothing_more(&mut seen).await;
    events.close().await;
    drop(listening);
}

/// A service publishing its own events on its own connection: they arrive
/// in order; another service's events are refused (their exchange may not
/// exist, and a publish to a missing exchange would close the channel the
/// replies use); after the stop there is no session to publish on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_publishes_its_own_events_on_its_connection() {
    let source = unique_name("own_src");
    let (config, listening, mut seen, mut cleanup) = numbered_listener(&source).await;
    cleanup.add_queue(&format!("rpc-{source}"));
    let mut publishing = Service::builder(&source)
        .method("ping", Signature::new(), |_: Context, (): ()| async {
            Ok::<_, RpcError>("pong")
        })
        .publishes_events()
        .build()
        .spawn(config.clone());
    publishing
        .ready()
        .within(test_support::START_BOUND, "the publishing service to start")
        .await
        .expect("publishing service starts");
    let publisher = publishing.publisher();
    assert!(publisher.is_connected());
    let bodies = numbered_bodies(0..100);
    let events = numbered(&source, &bodies);
    assert_eq!(publisher.dispatch_encoded(&events).await.unwrap(), 100);
    numbered_arrive_in_order(&mut seen, 0..100).await;

    let foreign = [EncodedEvent {
        source_service: "someone_else",
        ..events[0]
    }];
    let refused = publisher.dispatch_encoded(&foreign).await;
    assert!(
        matches!(&refused, Err(rpc_core::DispatchError::Publish(m)) if m.contains("someone_else")),
        "{refused:?}"
    );
    // The refusal sent nothing, and the service still answers.
    let proxy = common::proxy(&config).await;
    let pong = proxy
        .call(&source, "ping", Args::new())
        .await
        .expect("the service still answers");
    assert_eq!(pong, json!("pong"));
    nothing_more(&mut seen).await;

    publishing.shutdown().await.expect("clean stop");
    assert!(!publisher.is_connected());
    assert!(matches!(
        publisher.dispatch_encoded(&events).await,
        Err(rpc_core::DispatchError::NotConnected(_))
    ));
    drop(listening);
}

/// A service built without `publishes_events()` has no events exchange of
/// its own declared: its publisher refuses rather than publish to a missing
/// exchange (which would close the channel its replies use), and the
/// service goes on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_without_publishes_events_refuses() {
    let config = config();
    let name = unique_name("undeclared");
    let _cleanup = Cleanup::new().queue(&format!("rpc-{name}"));
    let mut service = Service::builder(&name)
        .method("ping", Signature::new(), |_: Context, (): ()| async {
            Ok::<_, RpcError>("pong")
        })
        .build()
        .spawn(config.clone());
    service
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .expect("the service starts");
    let publisher = service.publisher();
    let bodies = numbered_bodies(0..1);
    let refused = publisher.dispatch_encoded(&numbered(&name, &bodies)).await;
    assert!(
        matches!(&refused, Err(rpc_core::DispatchError::Publish(m)) if m.contains("publishes_events")),
        "{refused:?}"
    );
    let proxy = common::proxy(&config).await;
    let pong = proxy
        .call(&name, "ping", Args::new())
        .await
        .expect("the service still answers");
    assert_eq!(pong, json!("pong"));
    service.shutdown().await.expect("clean stop");
}
