//! Stops that land at every stage of a service's life, while calls and
//! events flow: hundreds of start/stop cycles in one process, each timed.
//!
//! The service has an RPC method, an event handler of each type (service
//! pool, singleton, broadcast) and a timer. Callers and an event dispatcher
//! keep traffic on its queues the whole time. Each cycle stops it at one of
//! these stages, in turn:
//!
//! * `setup`: a few milliseconds after spawn, while it connects, declares
//!   and starts its consumers;
//! * `in-flight`: once it is running calls and handling events;
//! * `reconnected`: right after its connection was cut and it came back;
//! * `reconnecting`: while it is still reconnecting after a cut;
//! * `twice`: stop called twice, and a second instance started and stopped
//!   at once after the first;
//! * `silent broker`: with the broker silent (the TCP connection open,
//!   nothing answering, heartbeats off), so no cancel-ok, close-ok or
//!   confirm ever comes: the stop must end by its deadline, not hang.
//!
//! Every stop must return within `shutdown_timeout` plus the close grace;
//! the test fails naming the stage and cycle of any that does not, and
//! prints the worst stop time per stage. In the healthy stages no stop may
//! need its deadline: the test counts, from rpc-core's log, the work a stop
//! abandoned and the wind-downs cut short, per stage, and the closes the
//! broker never confirmed (lapin loses the odd close-ok; the close is
//! bounded, so that costs at most `CLOSE_TIMEOUT`).
//!
//! `STOP_STRESS_CYCLES` sets the number of cycles (default 24, the suite's
//! short version); `STOP_STRESS_SEED` replays a run's random delays;
//! `STOP_STRESS_STAGES` (e.g. `setup,in-flight`) runs only those stages.

mod common;

use common::config;
use rpc_core::events::Subscription;
use rpc_core::{
    Args, Config, Context, EventDispatcher, EventHandlerOptions, RpcError, RpcProxy, Service,
    ServiceHandle, ServiceStatus, Signature, Timer,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::faulty::FaultyProxy;
use test_support::WithinExt;
use test_support::{unique_name, Cleanup};

/// What rpc-core logged that tells how a stop went, counted by message.
#[derive(Default)]
struct StopLog {
    abandoned: AtomicU64,
    cut_short: AtomicU64,
    unconfirmed_closes: AtomicU64,
}

impl StopLog {
    fn snapshot(&self) -> [u64; 3] {
        [
            self.abandoned.load(Ordering::Relaxed),
            self.cut_short.load(Ordering::Relaxed),
            self.unconfirmed_closes.load(Ordering::Relaxed),
        ]
    }
}

struct CountingLayer(Arc<StopLog>);

struct MessageText(String);

impl tracing::field::Visit for MessageText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountingLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut text = MessageText(String::new());
        event.record(&mut text);
        let counter = if text.0.starts_with("abandoned at the shutdown timeout") {
            &self.0.abandoned
        } else if text.0.starts_with("the stop's deadline passed") {
            &self.0.cut_short
        } else if text.0.contains("did not confirm the connection's close")
            || text.0.contains("did not confirm a channel's close")
        {
            &self.0.unconfirmed_closes
        } else {
            return;
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts rpc-core's stop messages (and prints its log with `RUST_LOG`).
fn capture_stop_log() -> Arc<StopLog> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let log = Arc::new(StopLog::default());
    let fmt = std::env::var_os("RUST_LOG").map(|_| {
        tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(tracing_subscriber::EnvFilter::from_default_env())
    });
    tracing_subscriber::registry()
        .with(CountingLayer(Arc::clone(&log)))
        .with(fmt)
        .try_init()
        .expect("the only subscriber of this test binary");
    log
}

/// A stop's deadline: the service waits this long for running work.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(1500);
/// What a stop may take beyond its deadline: closing the connection, and
/// the runtime's own links, each bounded in rpc-core.
const CLOSE_ALLOWANCE: Duration = Duration::from_secs(6);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Setup,
    InFlight,
    Reconnected,
    Reconnecting,
    Twice,
    SilentBroker,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Setup => "setup",
            Stage::InFlight => "in-flight",
            Stage::Reconnected => "reconnected",
            Stage::Reconnecting => "reconnecting",
            Stage::Twice => "twice",
            Stage::SilentBroker => "silent-broker",
        }
    }
}

const STAGES: [Stage; 6] = [
    Stage::Setup,
    Stage::InFlight,
    Stage::Reconnected,
    Stage::Reconnecting,
    Stage::Twice,
    Stage::SilentBroker,
];

/// xorshift64*: enough to spread delays, and replayable from the seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Counts what the service did, so a stage can wait for work to be in
/// flight instead of sleeping.
#[derive(Default)]
struct Activity {
    calls: AtomicU64,
    events: AtomicU64,
    changed: tokio::sync::Notify,
}

impl Activity {
    fn bump(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    fn total(&self) -> u64 {
        self.calls.load(Ordering::Relaxed) + self.events.load(Ordering::Relaxed)
    }

    /// Waits until `more` further calls or events have started.
    async fn wait_for_more(&self, more: u64, within: Duration) -> bool {
        let target = self.total() + more;
        tokio::time::timeout(within, async {
            loop {
                let changed = self.changed.notified();
                if self.total() >= target {
                    return;
                }
                changed.await;
            }
        })
        .await
        .is_ok()
    }
}

fn service(name: &str, source: &str, activity: &Arc<Activity>) -> Service {
    let on_call = Arc::clone(activity);
    let mut builder = Service::builder(name)
        .method(
            "work",
            Signature::new().param("ms"),
            move |_ctx: Context, (ms,): (u64,)| {
                let activity = Arc::clone(&on_call);
                async move {
                    activity.bump(&activity.calls);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok::<_, RpcError>(ms)
                }
            },
        )
        .timer(
            "tick",
            Timer::every(Duration::from_millis(20)),
            |_ctx: Context| async { Ok::<(), String>(()) },
        );
    for (handler, options) in [
        ("on_pool", EventHandlerOptions::service_pool()),
        ("on_single", EventHandlerOptions::singleton()),
        (
            "on_bcast",
            EventHandlerOptions::broadcast().reliable_delivery(false),
        ),
    ] {
        let on_event = Arc::clone(activity);
        builder = builder.event_handler(
            handler,
            Subscription::to("tick").from(source),
            options,
            move |_ctx: Context, ms: u64| {
                let activity = Arc::clone(&on_event);
                async move {
                    activity.bump(&activity.events);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok::<(), String>(())
                }
            },
        );
    }
    builder.build()
}

/// Calls and events sent the whole time, until `done`.
fn traffic(
    name: &str,
    source: &str,
    config: &Config,
    done: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    let mut tasks = Vec::new();
    for caller in 0..3u64 {
        let (name, config, done) = (name.to_owned(), config.clone(), Arc::clone(done));
        tasks.push(tokio::spawn(async move {
            let proxy = RpcProxy::connect(config).await.expect("caller connects");
            let proxy = proxy.with_timeout(Duration::from_secs(2));
            let mut answered = 0;
            let mut i = caller;
            while !done.load(Ordering::Relaxed) {
                i += 1;
                // Unanswered calls are expected here: the service is stopped
                // half the time, and requests wait in its queue.
                if proxy
                    .call(&name, "work", Args::new().arg(i % 40))
                    .await
                    .is_ok()
                {
                    answered += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            proxy.close().await;
            answered
        }));
    }
    let (source, config, done) = (source.to_owned(), config.clone(), Arc::clone(done));
    tasks.push(tokio::spawn(async move {
        let events = EventDispatcher::connect(config)
            .await
            .expect("dispatcher connects");
        let mut sent = 0;
        while !done.load(Ordering::Relaxed) {
            if events.dispatch(&source, "tick", &(sent % 30)).await.is_ok() {
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        events.close().await;
        sent
    }));
    tasks
}

async fn wait_status(handle: &ServiceHandle, want: fn(&ServiceStatus) -> bool) -> bool {
    let mut rx = handle.status_receiver();
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(want))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Stops `handle` and times it; `None` when it did not return within the
/// bound (the hang this test looks for).
async fn timed_stop(handle: ServiceHandle, twice: bool) -> Option<Duration> {
    let t0 = Instant::now();
    if twice {
        handle.stop();
    }
    let stopped = tokio::time::timeout(SHUTDOWN_TIMEOUT + CLOSE_ALLOWANCE, handle.shutdown()).await;
    match stopped {
        Ok(result) => {
            if let Err(e) = result {
                // A stop during setup may end with the setup's error; it
                // still ended, which is what is measured here.
                eprintln!("stop ended with: {e}");
            }
            Some(t0.elapsed())
        }
        Err(_) => None,
    }
}

/// What every cycle shares: the service's names, its activity counters,
/// the broker behind a fault proxy, and the base config.
struct Rig {
    name: String,
    source: String,
    activity: Arc<Activity>,
    base: Config,
    faulty: FaultyProxy,
    uri: String,
}

/// Runs one cycle; returns how long its stop took (the longest, for a
/// stage that stops twice), or a description of the stop that hung.
async fn cycle(stage: Stage, rng: &mut Rng, rig: &Rig) -> Result<Duration, String> {
    let Rig {
        name,
        source,
        activity,
        base,
        faulty,
        uri,
    } = rig;
    let mut config = base.clone();
    config.amqp_uri = faulty.uri(uri).parse().expect("proxy URI parses");
    config.shutdown_timeout = SHUTDOWN_TIMEOUT;
    config.connect_retry.initial = Duration::from_millis(20);
    config.connect_retry.max = Duration::from_millis(100);
    if stage == Stage::SilentBroker {
        // With heartbeats, lapin would notice the silence and fail the
        // awaits by itself after two intervals; without, nothing ever
        // answers them, which is the case a deadline must cover.
        config.heartbeat = 0;
    }
    let hung = |what: &str| format!("{stage:?}: the stop {what} did not return");
    let spawn = || service(name, source, activity).spawn(config.clone());
    match stage {
        Stage::Setup => {
            let handle = spawn();
            tokio::time::sleep(Duration::from_micros(rng.below(30_000))).await;
            timed_stop(handle, false)
                .await
                .ok_or_else(|| hung("during setup"))
        }
        Stage::InFlight => {
            let mut handle = spawn();
            handle
                .ready()
                .within(test_support::START_BOUND, "the service to start")
                .await
                .map_err(|e| e.to_string())?;
            if !activity
                .wait_for_more(1 + rng.below(8), Duration::from_secs(10))
                .await
            {
                return Err("no calls or events reached the service".into());
            }
            timed_stop(handle, false)
                .await
                .ok_or_else(|| hung("with deliveries in flight"))
        }
        Stage::Reconnected | Stage::Reconnecting => {
            let mut handle = spawn();
            handle
                .ready()
                .within(test_support::START_BOUND, "the service to start")
                .await
                .map_err(|e| e.to_string())?;
            activity.wait_for_more(1, Duration::from_secs(10)).await;
            faulty.cut();
            if !wait_status(&handle, |s| !matches!(s, ServiceStatus::Consuming)).await {
                return Err("the cut was not noticed".into());
            }
            if stage == Stage::Reconnected {
                if !wait_status(&handle, |s| matches!(s, ServiceStatus::Consuming)).await {
                    return Err("the service did not reconnect".into());
                }
            } else {
                tokio::time::sleep(Duration::from_micros(rng.below(60_000))).await;
            }
            timed_stop(handle, false)
                .await
                .ok_or_else(|| hung("after a reconnect"))
        }
        Stage::Twice => {
            let mut first = spawn();
            first
                .ready()
                .within(test_support::START_BOUND, "the service to start")
                .await
                .map_err(|e| e.to_string())?;
            let one = timed_stop(first, true)
                .await
                .ok_or_else(|| hung("called twice"))?;
            let second = spawn();
            tokio::time::sleep(Duration::from_micros(rng.below(5_000))).await;
            let two = timed_stop(second, true)
                .await
                .ok_or_else(|| hung("of the instance started right after"))?;
            Ok(one.max(two))
        }
        Stage::SilentBroker => {
            let mut handle = spawn();
            handle
                .ready()
                .within(test_support::START_BOUND, "the service to start")
                .await
                .map_err(|e| e.to_string())?;
            activity.wait_for_more(1, Duration::from_secs(10)).await;
            faulty.pause();
            let took = timed_stop(handle, false).await;
            // The connection that went silent is dropped, not reused.
            faulty.cut();
            faulty.resume();
            took.ok_or_else(|| hung("with the broker silent"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_at_every_stage_always_end() {
    let cycles: usize = std::env::var("STOP_STRESS_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let seed: u64 = std::env::var("STOP_STRESS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let stages: Vec<Stage> = match std::env::var("STOP_STRESS_STAGES") {
        Ok(list) => STAGES
            .into_iter()
            .filter(|s| list.split(',').any(|want| want.trim() == s.name()))
            .collect(),
        Err(_) => STAGES.to_vec(),
    };
    assert!(!stages.is_empty(), "STOP_STRESS_STAGES names no stage");
    eprintln!("stop stress: {cycles} cycles, STOP_STRESS_SEED={seed}");
    let mut rng = Rng(seed);
    let stop_log = capture_stop_log();
    let uri = test_support::require_broker();
    let base = config();
    let name = unique_name("stress");
    let source = unique_name("stress-src");
    let _cleanup = Cleanup::new()
        .service(&name)
        .queue(&format!("evt-{source}-tick--{name}.on_pool"))
        .queue(&format!("evt-{source}-tick"))
        .exchange(&format!("{source}.events"));
    let activity = Arc::new(Activity::default());
    let faulty = FaultyProxy::in_front_of(&uri).await;

    // Declare the queues once, so traffic has somewhere to wait from the
    // first cycle on.
    let mut first = service(&name, &source, &activity).spawn(base.clone());
    first
        .ready()
        .within(test_support::START_BOUND, "the service to start")
        .await
        .expect("the service starts");
    first
        .shutdown()
        .within(test_support::STOP_BOUND, "the service to stop")
        .await
        .expect("the first stop");

    let done = Arc::new(AtomicBool::new(false));
    let traffic = traffic(&name, &source, &base, &done);
    let rig = Rig {
        name,
        source,
        activity,
        base,
        faulty,
        uri,
    };

    let mut worst: BTreeMap<Stage, (usize, Duration)> = BTreeMap::new();
    let mut logged: BTreeMap<Stage, [u64; 3]> = BTreeMap::new();
    let mut failures = Vec::new();
    let started = Instant::now();
    for n in 0..cycles {
        let stage = stages[n % stages.len()];
        let before = stop_log.snapshot();
        let outcome = cycle(stage, &mut rng, &rig).await;
        let after = stop_log.snapshot();
        let counts = logged.entry(stage).or_default();
        for i in 0..3 {
            counts[i] += after[i] - before[i];
        }
        match outcome {
            Ok(took) => {
                let entry = worst.entry(stage).or_insert((0, Duration::ZERO));
                entry.0 += 1;
                entry.1 = entry.1.max(took);
            }
            Err(why) => {
                eprintln!("cycle {n}: {why}");
                failures.push(format!("cycle {n}: {why}"));
                if failures.len() >= 3 {
                    break;
                }
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for task in traffic {
        sent.push(
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("traffic stops")
                .expect("traffic task"),
        );
    }
    eprintln!(
        "STOP STRESS {cycles} cycles in {:.1} s; calls answered per caller {:?}, events sent {}; \
         service saw {} calls and {} events",
        started.elapsed().as_secs_f64(),
        &sent[..sent.len() - 1],
        sent[sent.len() - 1],
        rig.activity.calls.load(Ordering::Relaxed),
        rig.activity.events.load(Ordering::Relaxed),
    );
    for (stage, (count, took)) in &worst {
        let [abandoned, cut_short, unconfirmed] = logged.get(stage).copied().unwrap_or_default();
        eprintln!(
            "  {stage:?}: {count} stops, worst {took:?}; work abandoned {abandoned}, \
             wind-downs cut short {cut_short}, closes never confirmed {unconfirmed}"
        );
    }
    assert!(failures.is_empty(), "stops that did not end: {failures:?}");
    // Healthy stages end well before the deadline: nothing they wait for
    // takes long (calls and events take at most 40 ms). Only a close the
    // broker never confirmed may add its bounded wait.
    for (stage, (_, took)) in &worst {
        if *stage == Stage::SilentBroker {
            continue;
        }
        let [abandoned, cut_short, unconfirmed] = logged.get(stage).copied().unwrap_or_default();
        assert_eq!(
            (abandoned, cut_short),
            (0, 0),
            "{stage:?}: a stop reached its deadline with the broker healthy"
        );
        // The channel's close, then the connection's, each bounded.
        let bound = if unconfirmed == 0 {
            SHUTDOWN_TIMEOUT
        } else {
            SHUTDOWN_TIMEOUT + 2 * rpc_core::connection::CLOSE_TIMEOUT
        };
        assert!(
            *took < bound,
            "{stage:?}: a stop took {took:?} with the broker healthy"
        );
    }
    // With the broker silent, the deadline is what ends the stop.
    if let Some((_, took)) = worst.get(&Stage::SilentBroker) {
        assert!(*took >= SHUTDOWN_TIMEOUT, "{took:?}");
    }
}
