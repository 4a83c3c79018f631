//! Two person-service instances (the real binary) share one PostgreSQL
//! database (created for the test, dropped at the end) and a
//! 3-node RabbitMQ cluster of the test's own (test_support::cluster: all
//! three nodes in AMQP_URI, quorum queues). Python nameko 2.14.1 clients
//! (ClusterRpcProxy, 8 callers spread over the nodes) create people under
//! load while the test hard-kills the broker node one instance is connected
//! to, then SIGKILLs the other instance.
//!
//! Then it counts: every answered create is stored exactly once and nothing
//! is stored twice (each create carries a unique marker in last_name; the
//! store is read directly), the calls that failed did so with a clear error
//! (the types are collected) and only where a blow explains them, and how
//! long until the service answered again after each blow. It prints these figures on a
//! `RELIABILITY scenario=cluster …` line.
//!
//! It runs a cluster of its own (three Erlang VMs) and takes about a
//! minute; .config/nextest.toml puts it in the `cluster` test group (one
//! cluster test at a time) with a bound of its own.

mod helpers;

use helpers::process::ServiceProcess;
use helpers::python_dir;
use person_service::domain::Page;
use person_service::store::{Database, Store, StoreOptions};
use rpc_core::{Config, RpcProxy, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use test_support::cluster::Cluster;
use test_support::postgres::TestDb;
use test_support::unique_name;

const CALLERS: usize = 8;
const MAX_CALLS: usize = 4000;
/// The load's own bound (the driver stops by itself then).
const LOAD_SECONDS: u64 = 150;
/// How long after a blow a failed call is put down to it. The callers whose
/// broker list starts at the killed node fail over and over (kombu tries that
/// node first on every reconnect) until the survivors have seen it go:
/// 0.1-0.6 s here.
const FAILURE_WINDOW_S: f64 = 5.0;

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One line of the driver's output.
#[derive(Debug, Default, Clone)]
struct Outcome {
    marker: Option<String>,
    id: Option<i64>,
    err: Option<String>,
    connect_err: Option<String>,
    /// For a failed call: the AMQP port of the broker its caller tries first.
    first_port: Option<u16>,
    finished: bool,
    t: f64,
}

fn parse(line: &str) -> Option<Outcome> {
    let v: Value = serde_json::from_str(line).ok()?;
    Some(Outcome {
        marker: v["m"].as_str().map(str::to_owned),
        id: v["ok"].as_i64(),
        err: v["err"].as_str().map(|e| {
            format!(
                "{e}: {}",
                v["msg"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(80)
                    .collect::<String>()
            )
        }),
        connect_err: v["connect_err"].as_str().map(str::to_owned),
        first_port: v["first"].as_str().and_then(port_of),
        finished: v["finished"].as_bool().unwrap_or(false),
        t: v["t"].as_f64().unwrap_or(0.0),
    })
}

/// The port of `amqp://user:pass@host:PORT/vhost`.
fn port_of(uri: &str) -> Option<u16> {
    let authority = uri.split("://").nth(1)?.split('/').next()?;
    authority.rsplit(':').next()?.parse().ok()
}

/// The failed calls no blow explains, as readable lines. A failure belongs
/// to the latest blow before it and must come within FAILURE_WINDOW_S of it.
/// A caller whose list starts at the killed node may fail many times in that
/// window; any other caller at most once per blow (the call it had in flight).
fn unexplained_failures(outcomes: &[Outcome], blows: &[(&str, f64, Option<u16>)]) -> Vec<String> {
    let mut unexplained = Vec::new();
    let mut per_caller: HashMap<(usize, &str), usize> = HashMap::new();
    for o in outcomes.iter().filter(|o| o.err.is_some()) {
        let marker = o.marker.as_deref().unwrap_or("?");
        let blow = blows
            .iter()
            .enumerate()
            .rev()
            .find(|(_, (_, at, _))| o.t >= *at);
        let Some((index, (what, at, killed_port))) = blow else {
            unexplained.push(format!("{marker} failed before any blow: {:?}", o.err));
            continue;
        };
        if o.t - at > FAILURE_WINDOW_S {
            unexplained.push(format!(
                "{marker} failed {:.1} s after the {what}: {:?}",
                o.t - at,
                o.err
            ));
            continue;
        }
        if killed_port.is_some() && o.first_port == *killed_port {
            continue;
        }
        let caller = caller_of(marker).unwrap_or("?");
        let count = per_caller.entry((index, caller)).or_default();
        *count += 1;
        if *count > 1 {
            unexplained.push(format!(
                "{marker}: failure {count} of caller {caller} after the {what}, whose broker survived: {:?}",
                o.err
            ));
        }
    }
    unexplained
}

/// The Python load: killed on drop.
struct Load {
    child: Child,
    out: PathBuf,
    log: PathBuf,
    stop: PathBuf,
}

impl Load {
    fn start(dir: &Path, uri: &str, service: &str) -> Load {
        let out = dir.join("load.jsonl");
        let log = dir.join("load.log");
        let stop = dir.join("load.stop");
        let log_file = std::fs::File::create(&log).expect("load log");
        let child = Command::new(test_support::python::python())
            .arg(python_dir().join("cluster_load.py"))
            .env("AMQP_URI", uri)
            .env("PERSON_SERVICE", service)
            .env("OUT_FILE", &out)
            .env("STOP_FILE", &stop)
            .env("CALLERS", CALLERS.to_string())
            .env("MAX_CALLS", MAX_CALLS.to_string())
            .env("DURATION", LOAD_SECONDS.to_string())
            .env("CALL_TIMEOUT", "10")
            .env("RUN", service)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("load log"))
            .stderr(log_file)
            .spawn()
            .expect("start the Python load (cluster_load.py)");
        Load {
            child,
            out,
            log,
            stop,
        }
    }

    fn outcomes(&self) -> Vec<Outcome> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(parse)
            .collect()
    }

    fn answered(&self) -> usize {
        self.outcomes().iter().filter(|o| o.id.is_some()).count()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Asks the callers to stop and waits (bounded) for the driver to exit.
    async fn finish(&mut self) {
        std::fs::write(&self.stop, b"stop").expect("stop file");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => panic!(
                    "the Python load did not stop within 30 s; its log:\n{}",
                    self.log()
                ),
            }
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 100 ms; panics with `what` and the load's log past
/// `limit`.
async fn wait_for(what: &str, limit: Duration, load: &Load, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}; the load's log:\n{}",
            load.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The caller of a marker `{run}-{caller}-{n}`.
fn caller_of(marker: &str) -> Option<&str> {
    let mut parts = marker.rsplitn(3, '-');
    parts.next()?;
    parts.next()
}

/// After a blow at `at` (epoch seconds): of the callers whose calls failed
/// in the 20 s after it, the longest time from the blow to that caller's
/// next answer (NaN when none failed).
fn affected_callers_back(outcomes: &[Outcome], at: f64) -> f64 {
    let mut last_error: HashMap<&str, f64> = HashMap::new();
    for o in outcomes {
        if let (Some(m), Some(_)) = (&o.marker, &o.err) {
            if o.t > at && o.t < at + 20.0 {
                if let Some(c) = caller_of(m) {
                    let e = last_error.entry(c).or_insert(o.t);
                    *e = e.max(o.t);
                }
            }
        }
    }
    let mut worst = f64::NAN;
    for (c, failed_at) in last_error {
        let back = outcomes
            .iter()
            .filter(|o| o.id.is_some() && o.t > failed_at)
            .filter(|o| o.marker.as_deref().and_then(caller_of) == Some(c))
            .map(|o| o.t - at)
            .fold(f64::INFINITY, f64::min);
        worst = if worst.is_nan() {
            back
        } else {
            worst.max(back)
        };
    }
    worst
}

/// After a blow at `at` (epoch seconds): how long until the first create
/// answered after it, and the longest time without an answer in the 20 s
/// after it.
fn recovery(outcomes: &[Outcome], at: f64) -> (f64, f64) {
    let mut oks: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.id.is_some())
        .map(|o| o.t)
        .collect();
    oks.sort_by(f64::total_cmp);
    let first = oks.iter().find(|t| **t > at).map_or(f64::NAN, |t| t - at);
    let mut gap: f64 = 0.0;
    let mut prev = at;
    for t in oks.iter().filter(|t| **t > at && **t < at + 20.0) {
        gap = gap.max(t - prev);
        prev = *t;
    }
    (first, gap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_a_cluster_survive_a_node_kill_and_an_instance_kill() {
    // Before the cluster: the venv may need building.
    let _ = test_support::python::python();
    let cluster = Cluster::start().await;
    let name = unique_name("person-cluster");
    let dir = tempfile::tempdir().expect("temp dir");
    let pg = TestDb::create().await;
    let db_url = pg.url();
    let db = Path::new(&db_url);

    // Queues live on the test's cluster, removed with it: no Cleanup.
    let mut config = Config::new(&cluster.kombu_uri_from(3)).expect("the URI list parses");
    config.rpc_timeout = Duration::from_secs(10);
    let proxy = RpcProxy::connect(config).await.expect("proxy connects");
    let flags = ["--queue-type", "quorum"];
    let mut a = ServiceProcess::spawn_with(
        &name,
        db,
        &dir.path().join("a.log"),
        &cluster.kombu_uri_from(1),
        &flags,
    );
    a.wait_ready(&proxy).await;
    let mut b = ServiceProcess::spawn_with(
        &name,
        db,
        &dir.path().join("b.log"),
        &cluster.kombu_uri_from(2),
        &flags,
    );
    // B consumes once its connection is up; a call cannot tell which one
    // answered, so B's connection is looked at instead.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.nodes_connected_from(b.pid()).is_empty() {
        assert!(
            b.is_running(),
            "instance B exited; its log:\n{}",
            read(&dir.path().join("b.log"))
        );
        assert!(
            Instant::now() < deadline,
            "instance B did not connect within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.wait_ready(&proxy).await;
    let queues = cluster
        .rabbitmqctl(1, &["-q", "list_queues", "name", "type", "leader"])
        .await
        .expect("list_queues");
    let queue_line = queues
        .lines()
        .find(|l| l.starts_with(&format!("rpc-{name}\t")) || l.starts_with(&format!("rpc-{name} ")))
        .unwrap_or_else(|| panic!("no rpc-{name} queue on the cluster:\n{queues}"));
    assert!(
        queue_line.contains("quorum"),
        "not a quorum queue: {queue_line}"
    );

    let a_nodes = cluster.nodes_connected_from(a.pid());
    let b_nodes = cluster.nodes_connected_from(b.pid());
    let victim = *a_nodes
        .first()
        .unwrap_or_else(|| panic!("instance A has no connection to the cluster"));
    eprintln!("A on nodes {a_nodes:?}, B on {b_nodes:?}; queue {queue_line}");

    let mut load = Load::start(dir.path(), &cluster.kombu_uri(), &name);
    wait_for(
        "300 creates answered",
        Duration::from_secs(60),
        &load,
        || load.answered() >= 300,
    )
    .await;

    // Blow 1: the broker node instance A is connected to dies.
    let before = load.answered();
    let node_killed_at = now_epoch();
    cluster.kill(victim).await;
    let t = Instant::now();
    let deadline = t + Duration::from_secs(60);
    let a_reconnected = loop {
        let now_on = cluster.nodes_connected_from(a.pid());
        if !now_on.is_empty() && !now_on.contains(&victim) {
            break t.elapsed();
        }
        assert!(
            a.is_running(),
            "instance A exited after the node kill; its log:\n{}",
            read(&dir.path().join("a.log"))
        );
        assert!(
            Instant::now() < deadline,
            "instance A did not reconnect to another node within 60 s; its log:\n{}",
            read(&dir.path().join("a.log"))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    wait_for(
        "300 more creates answered after the node kill",
        Duration::from_secs(60),
        &load,
        || load.answered() >= before + 300,
    )
    .await;

    // Blow 2: instance B dies with requests in hand (SIGKILL).
    let before = load.answered();
    let instance_killed_at = now_epoch();
    b.kill();
    wait_for(
        "300 more creates answered after the instance kill",
        Duration::from_secs(60),
        &load,
        || load.answered() >= before + 300,
    )
    .await;
    load.finish().await;

    let outcomes = load.outcomes();
    assert!(
        outcomes.iter().any(|o| o.finished),
        "the load did not finish cleanly; its log:\n{}",
        load.log()
    );
    let mut answered: HashMap<String, i64> = HashMap::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed_markers = Vec::new();
    let mut connect_errors: BTreeMap<String, usize> = BTreeMap::new();
    for o in &outcomes {
        match (&o.marker, o.id, &o.err) {
            (Some(m), Some(id), _) => {
                answered.insert(m.clone(), id);
            }
            (Some(m), None, Some(e)) => {
                *errors.entry(e.clone()).or_default() += 1;
                failed_markers.push(m.clone());
            }
            _ => {}
        }
        if let Some(e) = &o.connect_err {
            *connect_errors.entry(e.clone()).or_default() += 1;
        }
    }
    let failed = failed_markers.len();
    let (lost, duplicated, failed_but_stored) =
        lost_and_duplicated(&db_url, &answered, &failed_markers).await;
    let (node_first, node_gap) = recovery(&outcomes, node_killed_at);
    let (inst_first, inst_gap) = recovery(&outcomes, instance_killed_at);
    let node_callers_back = affected_callers_back(&outcomes, node_killed_at);
    let inst_callers_back = affected_callers_back(&outcomes, instance_killed_at);
    println!(
        "RELIABILITY scenario=cluster store=postgres instances=2 nodes=3 queue=quorum callers={CALLERS} sent={} answered={} failed={failed} lost={lost} duplicated={duplicated} failed_but_stored={failed_but_stored} node_kill_first_answer_s={node_first:.2} node_kill_longest_gap_s={node_gap:.2} node_kill_failed_callers_back_s={node_callers_back:.2} instance_a_reconnected_s={:.2} instance_kill_first_answer_s={inst_first:.2} instance_kill_longest_gap_s={inst_gap:.2} instance_kill_failed_callers_back_s={inst_callers_back:.2}",
        answered.len() + failed,
        answered.len(),
        a_reconnected.as_secs_f64(),
    );
    println!("errors by type: {errors:?}; proxy set-up errors: {connect_errors:?}");
    println!("(failed_callers_back_s: NaN when no call failed at that blow)");

    assert_eq!(
        (lost, duplicated),
        (0, 0),
        "answered creates not stored exactly once, or stored twice"
    );
    let blows = [
        ("node kill", node_killed_at, Some(cluster.port(victim))),
        ("instance kill", instance_killed_at, None),
    ];
    let unexplained = unexplained_failures(&outcomes, &blows);
    assert!(
        unexplained.is_empty(),
        "{} of {failed} failed calls are not explained by a blow:\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
    assert!(
        !(node_callers_back > 30.0 || inst_callers_back > 30.0),
        "callers whose calls failed were answered again only after {node_callers_back:.1} s (node kill), {inst_callers_back:.1} s (instance kill)"
    );
    assert!(
        node_gap < 30.0 && inst_gap < 30.0,
        "the service was silent too long: {node_gap:.1} s after the node kill, {inst_gap:.1} s after the instance kill"
    );
    proxy.close().await;
    let _ = a.stop();
    drop(cluster);
}

/// Reads the store directly (the app's store code on the test's database):
/// how many answered creates (marker → id) are not stored exactly once with
/// the id answered, how many markers are stored more than once, and how
/// many of the failed creates were stored all the same (a call that fails
/// may or may not have been carried out).
async fn lost_and_duplicated(
    url: &str,
    answered: &HashMap<String, i64>,
    failed: &[String],
) -> (usize, usize, usize) {
    let store = Store::connect(&Database::parse(url), StoreOptions::default())
        .await
        .expect("the test database opens");
    let rows = store.list(Page::default()).await.expect("list the people");
    let mut by_marker: HashMap<&str, Vec<i64>> = HashMap::new();
    for p in &rows {
        by_marker
            .entry(p.last_name.as_str())
            .or_default()
            .push(p.id);
    }
    let duplicated = by_marker.values().filter(|ids| ids.len() > 1).count();
    let lost = answered
        .iter()
        .filter(|(m, id)| by_marker.get(m.as_str()) != Some(&vec![**id]))
        .count();
    let failed_but_stored = failed
        .iter()
        .filter(|m| by_marker.contains_key(m.as_str()))
        .count();
    (lost, duplicated, failed_but_stored)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The rule the cluster test judges failures by, on made-up outcomes: it
/// must be able to say no.
#[test]
fn a_failure_no_blow_explains_is_reported() {
    let failure = |marker: &str, t: f64, first_port: u16| Outcome {
        marker: Some(marker.to_owned()),
        err: Some("kombu.exceptions.OperationalError: ".to_owned()),
        first_port: Some(first_port),
        t,
        ..Outcome::default()
    };
    let blows = [
        ("node kill", 100.0, Some(5001)),
        ("instance kill", 200.0, None),
    ];
    // Callers of the killed node, many times in the window: explained.
    let mut outcomes: Vec<Outcome> = (0..10)
        .map(|i| failure(&format!("run-0-{i}"), 100.1 + f64::from(i) * 0.05, 5001))
        .collect();
    // Another caller's call in flight at each blow: explained.
    outcomes.push(failure("run-1-50", 100.2, 5002));
    outcomes.push(failure("run-1-60", 200.2, 5002));
    assert!(unexplained_failures(&outcomes, &blows).is_empty());

    // Before any blow, past the window, twice for a caller whose broker
    // survived, twice after the instance kill for a caller of the killed node.
    outcomes.push(failure("run-2-1", 50.0, 5002));
    outcomes.push(failure("run-0-70", 100.0 + FAILURE_WINDOW_S + 1.0, 5001));
    outcomes.push(failure("run-1-51", 100.3, 5002));
    outcomes.push(failure("run-0-80", 200.1, 5001));
    outcomes.push(failure("run-0-81", 200.2, 5001));
    let unexplained = unexplained_failures(&outcomes, &blows);
    assert_eq!(unexplained.len(), 4, "{unexplained:#?}");
}
