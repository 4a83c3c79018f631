//! person-service processes killed and stopped under load, and a backlog
//! far larger than memory should hold. These do not touch the broker (see
//! chaos.rs for that); each prints a `RELIABILITY` line with its figures.

mod helpers;

use helpers::lost_and_duplicated;
use helpers::process::ProcessTest;
use helpers::raw::Raw;
use rpc_core::{json, Args, Config};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use test_support::raw::consumer_count;
use test_support::WithinExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A process test whose proxy waits `timeout` for each reply.
async fn setup(prefix: &str, timeout: Duration) -> ProcessTest {
    let mut config = Config::new(&test_support::broker_uri()).unwrap();
    config.rpc_timeout = timeout;
    ProcessTest::new(prefix, config).await
}

async fn wait_consumers(name: &str, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while consumer_count(&format!("rpc-{name}")).await != n {
        assert!(
            Instant::now() < deadline,
            "never {n} consumers on rpc-{name}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (last name → id) for every create that succeeded, and the errors.
type Load = (HashMap<String, i64>, Vec<String>);

/// Starts `callers` tasks that each create `per_caller` people with unique
/// last names; returns the task gathering their [`Load`], and the count of
/// finished calls.
fn spawn_load(
    t: &ProcessTest,
    callers: usize,
    per_caller: usize,
) -> (JoinHandle<Load>, watch::Receiver<usize>) {
    let (done, finished) = watch::channel(0);
    let mut tasks = Vec::new();
    for c in 0..callers {
        let (proxy, name, done) = (t.proxy.clone(), t.name.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut ok = Vec::new();
            let mut errors = Vec::new();
            for n in 0..per_caller {
                let last = format!("L{c}-{n}");
                match proxy
                    .call(
                        &name,
                        "create",
                        Args::new().arg("Load").arg(last.as_str()).arg(30),
                    )
                    .await
                {
                    Ok(id) => ok.push((last, id.as_i64().unwrap_or(-1))),
                    Err(e) => errors.push(format!("{last}: {e}")),
                }
                done.send_modify(|n| *n += 1);
            }
            (ok, errors)
        }));
    }
    let load = tokio::spawn(async move {
        let mut ids = HashMap::new();
        let mut errors = Vec::new();
        for t in tasks {
            let (ok, errs) = t.await.unwrap();
            ids.extend(ok);
            errors.extend(errs);
        }
        (ids, errors)
    });
    (load, finished)
}

/// Panics, showing a few, when any call failed.
fn assert_no_errors(errors: &[String]) {
    assert!(
        errors.is_empty(),
        "calls failed: {:?}",
        &errors[..errors.len().min(5)]
    );
}

/// How many requests `log` says were answered from the request records.
fn replays(log: &str) -> usize {
    log.matches("redelivered request").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_while_a_second_instance_runs() {
    let t = setup("person-kill", Duration::from_secs(60)).await;
    let mut a = t.start("a.log").await;
    let mut b = t.start("b.log").await;
    wait_consumers(&t.name, 2).await;

    let (callers, per_caller) = (32, 60);
    let (load, mut finished) = spawn_load(&t, callers, per_caller);
    finished
        .wait_for(|n| *n >= 400)
        .within(Duration::from_secs(60), "400 answered calls")
        .await
        .unwrap();
    a.kill();
    let killed_at = *finished.borrow();
    let (answered, errors) = load.await.unwrap();
    assert_no_errors(&errors);
    assert!(b.is_running());
    let sent = callers * per_caller;
    let (lost, duplicated) = lost_and_duplicated(&t.db, &answered).await;
    // Writes the killed instance committed but could not ack come back to
    // the survivor, which answers them from its request records.
    let b_log = std::fs::read_to_string(t.path("b.log")).unwrap_or_default();
    if std::env::var_os("SHOW_LOGS").is_some() {
        eprintln!("--- survivor's log ---\n{b_log}");
    }
    let replayed = replays(&b_log);
    println!("RELIABILITY scenario=sigkill-under-load sent={sent} answered={} failed={} lost={lost} duplicated={duplicated} killed_after={killed_at} replayed={replayed}", answered.len(), errors.len());
    assert_eq!((answered.len(), lost, duplicated), (sent, 0, 0));
    t.proxy.close().await;
    assert!(b.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_under_load_loses_no_reply_and_runs_nothing_twice() {
    let t = setup("person-term", Duration::from_secs(60)).await;
    let mut a = t.start("a.log").await;

    let (callers, per_caller) = (32, 40);
    let (load, mut finished) = spawn_load(&t, callers, per_caller);
    finished
        .wait_for(|n| *n >= 300)
        .within(Duration::from_secs(60), "300 answered calls")
        .await
        .unwrap();
    let status = a.stop();
    assert!(status.success(), "graceful stop exits 0, got {status}");
    let stopped_at = *finished.borrow();
    // The rest wait in the queue for the next instance.
    let mut b = t.start("b.log").await;
    let (answered, errors) = load.await.unwrap();
    assert_no_errors(&errors);
    let sent = callers * per_caller;
    let (lost, duplicated) = lost_and_duplicated(&t.db, &answered).await;
    // A graceful stop acks everything it answered, so nothing is redelivered
    // and the new instance replays nothing.
    let replays = replays(&std::fs::read_to_string(t.path("b.log")).unwrap_or_default());
    println!("RELIABILITY scenario=sigterm-under-load sent={sent} answered={} failed={} lost={lost} duplicated={duplicated} stopped_after={stopped_at} replayed={replays}", answered.len(), errors.len());
    assert_eq!((answered.len(), lost, duplicated, replays), (sent, 0, 0, 0));
    t.proxy.close().await;
    assert!(b.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_a_sigkill() {
    let t = setup("person-durable", Duration::from_secs(30)).await;
    let mut a = t.start("a.log").await;
    let mut answered = HashMap::new();
    for i in 0..200 {
        let last = format!("D{i}");
        let id = t
            .proxy
            .call(
                &t.name,
                "create",
                Args::new().arg("Durable").arg(last.as_str()).arg(1),
            )
            .await
            .unwrap();
        answered.insert(last, id.as_i64().unwrap());
    }
    // Killed right after the last answer: no chance to flush anything.
    a.kill();
    let (lost, duplicated) = lost_and_duplicated(&t.db, &answered).await;
    println!("RELIABILITY scenario=sigkill-after-ack sent=200 answered={} lost={lost} duplicated={duplicated}", answered.len());
    assert_eq!((lost, duplicated), (0, 0));
    t.proxy.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_100000_requests_drains_with_memory_bounded_by_the_prefetch() {
    let t = setup("person-backlog", Duration::from_secs(30)).await;
    let name = &t.name;
    let mut first = t.start("a.log").await;
    let id = t
        .proxy
        .call(name, "create", Args::new().arg("Back").arg("Log").arg(9))
        .await
        .unwrap();
    let record =
        json!({"id": id, "first_name": "Back", "last_name": "Log", "age": 9, "member": false});
    assert!(first.stop().success());

    // 100,000 requests queue up while nothing consumes.
    let total = 100_000usize;
    let mut raw = Raw::connect().await;
    let body = format!(r#"{{"args": [{id}], "kwargs": {{}}}}"#);
    let t0 = Instant::now();
    for i in 0..total {
        raw.publish_nowait(
            &format!("{name}.get"),
            body.as_bytes(),
            raw.props(&format!("b{i}")),
        )
        .await;
        if i % 2000 == 1999 {
            raw.wait_confirms().await;
        }
    }
    raw.wait_confirms().await;
    println!("queued {total} requests in {:?}", t0.elapsed());

    // Timed from the spawn: a readiness call would wait behind the backlog.
    let t0 = Instant::now();
    let svc = t.spawn("b.log");
    let mut seen = vec![false; total];
    let mut count = 0usize;
    let mut peak_rss = 0u64;
    while count < total {
        let reply = raw
            .reply_within(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("stalled at {count} of {total}"));
        if let Some(i) = reply
            .correlation_id
            .as_deref()
            .and_then(|c| c.strip_prefix('b'))
            .and_then(|n| n.parse::<usize>().ok())
        {
            assert!(!seen[i], "duplicate reply b{i}");
            seen[i] = true;
            assert_eq!(reply.body.as_ref().unwrap(), &record);
            count += 1;
        }
        if count.is_multiple_of(5000) {
            peak_rss = peak_rss.max(svc.rss_kib());
        }
    }
    let drain = t0.elapsed();
    let peak_mib = svc.peak_rss_kib().max(peak_rss) / 1024;
    println!(
        "RELIABILITY scenario=backlog-100k sent={total} answered={count} lost=0 duplicated=0 drain_s={:.1} rate_per_s={:.0} peak_rss_mib={peak_mib}",
        drain.as_secs_f64(),
        total as f64 / drain.as_secs_f64()
    );
    assert!(peak_mib < 64, "peak RSS {peak_mib} MiB while draining");
    let got = t
        .proxy
        .call(name, "get", Args::new().arg(id))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, record);
    drop(svc);
    raw.close().await;
    t.proxy.close().await;
}
