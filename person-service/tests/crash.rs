//! person-service processes killed and stopped under load, and a backlog
//! far larger than memory should hold. These do not touch the broker (see
//! chaos.rs for that); each prints a `RELIABILITY` line with its figures.

mod helpers;

use helpers::process::ServiceProcess;
use helpers::raw::Raw;
use person_service::store::Store;
use rpc_core::{json, Args, CallError, Config, RpcProxy};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::raw::consumer_count;
use test_support::{unique_name, Cleanup};

fn proxy_config(timeout: Duration) -> Config {
    let mut config = Config::new(&test_support::require_broker()).unwrap();
    config.rpc_timeout = timeout;
    config
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

/// `callers` tasks each create `per_caller` people with unique last names;
/// returns (last name → id) for every call that succeeded and the errors.
async fn create_load(
    proxy: &RpcProxy,
    name: &str,
    callers: usize,
    per_caller: usize,
    done: Arc<AtomicUsize>,
) -> (HashMap<String, i64>, Vec<String>) {
    let mut tasks = Vec::new();
    for c in 0..callers {
        let (proxy, name, done) = (proxy.clone(), name.to_owned(), done.clone());
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
                done.fetch_add(1, Ordering::SeqCst);
            }
            (ok, errors)
        }));
    }
    let mut ids = HashMap::new();
    let mut errors = Vec::new();
    for t in tasks {
        let (ok, errs) = t.await.unwrap();
        ids.extend(ok);
        errors.extend(errs);
    }
    (ids, errors)
}

/// Every answered create is stored exactly once with the id it answered.
async fn check_store(db: &Path, answered: &HashMap<String, i64>) -> (usize, usize) {
    let store = Store::open(db).unwrap();
    let rows = store
        .list(person_service::domain::Page::default())
        .await
        .unwrap();
    let mut by_name: HashMap<&str, Vec<i64>> = HashMap::new();
    for p in &rows {
        by_name.entry(p.last_name.as_str()).or_default().push(p.id);
    }
    let duplicated = by_name.values().filter(|ids| ids.len() > 1).count();
    let lost = answered
        .iter()
        .filter(|(name, id)| by_name.get(name.as_str()) != Some(&vec![**id]))
        .count();
    (lost, duplicated)
}

async fn wait_until(done: &AtomicUsize, n: usize) {
    while done.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_while_a_second_instance_runs() {
    let name = unique_name("person-kill");
    let _cleanup = Cleanup::new()
        .service(&name)
        .exchange(&format!("{name}.events"));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let proxy = RpcProxy::connect(proxy_config(Duration::from_secs(60)))
        .await
        .unwrap();
    let mut a = ServiceProcess::start(&name, &db, &[], &dir.path().join("a.log"), &proxy).await;
    let mut b = ServiceProcess::start(&name, &db, &[], &dir.path().join("b.log"), &proxy).await;
    wait_consumers(&name, 2).await;

    let (callers, per_caller) = (32, 60);
    let done = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn({
        let (proxy, name, done) = (proxy.clone(), name.clone(), done.clone());
        async move { create_load(&proxy, &name, callers, per_caller, done).await }
    });
    wait_until(&done, 400).await;
    a.kill();
    let killed_at = done.load(Ordering::SeqCst);
    let (answered, errors) = load.await.unwrap();
    assert!(
        errors.is_empty(),
        "calls failed: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert!(b.is_running());
    let sent = callers * per_caller;
    let (lost, duplicated) = check_store(&db, &answered).await;
    // Writes the killed instance committed but could not ack come back to
    // the survivor, which answers them from its request records.
    let b_log = std::fs::read_to_string(dir.path().join("b.log")).unwrap_or_default();
    if std::env::var_os("SHOW_LOGS").is_some() {
        eprintln!("--- survivor's log ---\n{b_log}");
    }
    let replayed = b_log.matches("redelivered request").count();
    println!("RELIABILITY scenario=sigkill-under-load sent={sent} answered={} failed={} lost={lost} duplicated={duplicated} killed_after={killed_at} replayed={replayed}", answered.len(), errors.len());
    assert_eq!((answered.len(), lost, duplicated), (sent, 0, 0));
    proxy.close().await;
    assert!(b.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_under_load_loses_no_reply_and_runs_nothing_twice() {
    let name = unique_name("person-term");
    let _cleanup = Cleanup::new()
        .service(&name)
        .exchange(&format!("{name}.events"));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let proxy = RpcProxy::connect(proxy_config(Duration::from_secs(60)))
        .await
        .unwrap();
    let mut a = ServiceProcess::start(&name, &db, &[], &dir.path().join("a.log"), &proxy).await;

    let (callers, per_caller) = (32, 40);
    let done = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn({
        let (proxy, name, done) = (proxy.clone(), name.clone(), done.clone());
        async move { create_load(&proxy, &name, callers, per_caller, done).await }
    });
    wait_until(&done, 300).await;
    let status = a.stop();
    assert!(status.success(), "graceful stop exits 0, got {status}");
    let stopped_at = done.load(Ordering::SeqCst);
    // The rest wait in the queue for the next instance.
    let mut b = ServiceProcess::start(&name, &db, &[], &dir.path().join("b.log"), &proxy).await;
    let (answered, errors) = load.await.unwrap();
    assert!(
        errors.is_empty(),
        "calls failed: {:?}",
        &errors[..errors.len().min(5)]
    );
    let sent = callers * per_caller;
    let (lost, duplicated) = check_store(&db, &answered).await;
    // A graceful stop acks everything it answered, so nothing is redelivered
    // and the new instance replays nothing.
    let replays = std::fs::read_to_string(dir.path().join("b.log"))
        .unwrap_or_default()
        .matches("redelivered request")
        .count();
    println!("RELIABILITY scenario=sigterm-under-load sent={sent} answered={} failed={} lost={lost} duplicated={duplicated} stopped_after={stopped_at} replayed={replays}", answered.len(), errors.len());
    assert_eq!((answered.len(), lost, duplicated, replays), (sent, 0, 0, 0));
    proxy.close().await;
    assert!(b.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_a_sigkill() {
    let name = unique_name("person-durable");
    let _cleanup = Cleanup::new()
        .service(&name)
        .exchange(&format!("{name}.events"));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let proxy = RpcProxy::connect(proxy_config(Duration::from_secs(30)))
        .await
        .unwrap();
    let mut a = ServiceProcess::start(&name, &db, &[], &dir.path().join("a.log"), &proxy).await;
    let mut answered = HashMap::new();
    for i in 0..200 {
        let last = format!("D{i}");
        let id = proxy
            .call(
                &name,
                "create",
                Args::new().arg("Durable").arg(last.as_str()).arg(1),
            )
            .await
            .unwrap();
        answered.insert(last, id.as_i64().unwrap());
    }
    // Killed right after the last answer: no chance to flush anything.
    a.kill();
    let (lost, duplicated) = check_store(&db, &answered).await;
    println!("RELIABILITY scenario=sigkill-after-ack sent=200 answered={} lost={lost} duplicated={duplicated}", answered.len());
    assert_eq!((lost, duplicated), (0, 0));
    proxy.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_100000_requests_drains_with_memory_bounded_by_the_prefetch() {
    let name = unique_name("person-backlog");
    let _cleanup = Cleanup::new()
        .service(&name)
        .exchange(&format!("{name}.events"));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let proxy = RpcProxy::connect(proxy_config(Duration::from_secs(30)))
        .await
        .unwrap();
    let mut first = ServiceProcess::start(&name, &db, &[], &dir.path().join("a.log"), &proxy).await;
    let id = proxy
        .call(&name, "create", Args::new().arg("Back").arg("Log").arg(9))
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
    let svc = ServiceProcess::spawn(&name, &db, &[], &dir.path().join("b.log"));
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
    match proxy.call(&name, "get", Args::new().arg(id)).await {
        Ok(v) => assert_eq!(v, record),
        Err(CallError::Remote(e)) => panic!("{e}"),
        Err(e) => panic!("{e}"),
    }
    drop(svc);
    raw.close().await;
    proxy.close().await;
}
