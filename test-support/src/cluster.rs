//! A 3-node RabbitMQ cluster of a test's own, started with
//! `scripts/rabbitmq-cluster` (see that script for how the nodes are laid
//! out).
//!
//! Each [`Cluster`] has its own ports, node names and directory (under
//! `target/rabbitmq-cluster-tests/`), so two tests (or two clones) can run
//! clusters at once without meeting. The nodes are detached processes: the
//! cluster is killed and its directory removed on drop, and, should the test
//! process die without dropping it (SIGKILL, `process::exit` on the
//! runner's SIGTERM), by a small reaper process that waits for the test
//! process to go.
//!
//! ```no_run
//! # async fn demo() {
//! let cluster = test_support::cluster::Cluster::start().await;
//! let uri = cluster.kombu_uri(); // amqp://…:P1/%2f;amqp://…:P2/%2f;amqp://…:P3/%2f
//! cluster.kill(1).await; // a crash of node 1
//! # }
//! ```

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The number of nodes.
pub const NODES: usize = 3;

/// A running 3-node cluster; stopped (SIGKILL) and removed on drop.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    base_port: u16,
    dist_base_port: u16,
    name: String,
}

/// How long `scripts/rabbitmq-cluster start` may take (three nodes booting
/// on a loaded machine take 30 to 60 s).
pub const CLUSTER_START_BOUND: Duration = Duration::from_secs(150);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support sits in the workspace")
        .to_owned()
}

fn script() -> PathBuf {
    workspace().join("scripts/rabbitmq-cluster")
}

/// Whether nothing listens on 127.0.0.1:`port` (and we may bind it).
fn port_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

impl Cluster {
    /// Starts a fresh cluster on ports no other cluster uses, and waits until
    /// its three nodes run as one cluster.
    ///
    /// # Panics
    /// When RabbitMQ is not installed or the cluster does not form within
    /// [`CLUSTER_START_BOUND`], with the script's output.
    pub async fn start() -> Cluster {
        crate::init_logging();
        let script = script();
        assert!(
            script.exists(),
            "{} is missing: the cluster tests need this clone's scripts/rabbitmq-cluster",
            script.display()
        );
        assert!(
            Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server").exists() || which("rabbitmq-server"),
            "rabbitmq-server is not installed: the cluster tests run a 3-node RabbitMQ cluster on \
             this machine (Debian: apt-get install rabbitmq-server)"
        );
        let (base_port, dist_base_port) = free_ports();
        let name = format!("rpct{base_port}n");
        let dir = workspace()
            .join("target/rabbitmq-cluster-tests")
            .join(&name);
        let cluster = Cluster {
            dir,
            base_port,
            dist_base_port,
            name,
        };
        // From here on drop (or the reaper) cleans up, whatever happens.
        cluster.spawn_reaper();
        let started = Instant::now();
        let out = cluster
            .script_bounded(&["start"], CLUSTER_START_BOUND)
            .await;
        assert!(
            out.0,
            "scripts/rabbitmq-cluster start failed (RABBITMQ_CLUSTER_DIR={}):\n{}",
            cluster.dir.display(),
            out.1
        );
        eprintln!(
            "cluster {} up in {:.1} s: {}",
            cluster.name,
            started.elapsed().as_secs_f64(),
            cluster.kombu_uri()
        );
        cluster
    }

    /// The port of node `n` (1..=3).
    pub fn port(&self, n: usize) -> u16 {
        assert!((1..=NODES).contains(&n), "no node {n}: the nodes are 1..=3");
        self.base_port + u16::try_from(n - 1).expect("small")
    }

    /// The node name of node `n`, e.g. `rpct12340n1@localhost`.
    pub fn node_name(&self, n: usize) -> String {
        assert!((1..=NODES).contains(&n), "no node {n}: the nodes are 1..=3");
        format!("{}{n}@localhost", self.name)
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` for node `n`.
    pub fn uri(&self, n: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port(n))
    }

    /// The three nodes' URIs, node 1 first.
    pub fn uris(&self) -> Vec<String> {
        (1..=NODES).map(|n| self.uri(n)).collect()
    }

    /// The URIs `;`-joined, as kombu (and AMQP_URI) takes a list of brokers.
    pub fn kombu_uri(&self) -> String {
        self.uris().join(";")
    }

    /// The URIs `;`-joined, starting at node `first` and going round.
    pub fn kombu_uri_from(&self, first: usize) -> String {
        (0..NODES)
            .map(|i| self.uri((first - 1 + i) % NODES + 1))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// The node (1..=3) whose AMQP port `port` is, if any.
    pub fn node_of_port(&self, port: u16) -> Option<usize> {
        (1..=NODES).find(|&n| self.port(n) == port)
    }

    /// SIGKILLs node `n`'s Erlang VM (a crash: no goodbye to its clients or
    /// peers) and waits until it is gone.
    pub async fn kill(&self, n: usize) {
        let _ = self.port(n);
        let (ok, out) = self
            .script_bounded(&["kill", &n.to_string()], Duration::from_secs(30))
            .await;
        assert!(ok, "scripts/rabbitmq-cluster kill {n} failed:\n{out}");
    }

    /// Starts the nodes that are not running (a killed node rejoins).
    pub async fn restart_stopped(&self) {
        let (ok, out) = self.script_bounded(&["start"], CLUSTER_START_BOUND).await;
        assert!(ok, "scripts/rabbitmq-cluster start failed:\n{out}");
    }

    /// `rabbitmqctl -n NODE args…` on node `n`, as the nodes' user; its
    /// output, or the failure with its output.
    pub async fn rabbitmqctl(&self, n: usize, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["_ctl".to_owned(), n.to_string()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let (ok, out) = self.script_bounded(&all, Duration::from_secs(60)).await;
        if ok {
            Ok(out)
        } else {
            Err(out)
        }
    }

    /// The nodes (1..=3) process `pid` has established TCP connections to,
    /// read from /proc (its socket inodes against /proc/net/tcp).
    pub fn nodes_connected_from(&self, pid: u32) -> Vec<usize> {
        let mut nodes: Vec<usize> = remote_ports_of(pid)
            .into_iter()
            .filter_map(|p| self.node_of_port(p))
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// The script's settings for this cluster.
    fn envs(&self) -> [(&'static str, String); 4] {
        [
            ("RABBITMQ_CLUSTER_DIR", self.dir.display().to_string()),
            ("RABBITMQ_CLUSTER_BASE_PORT", self.base_port.to_string()),
            (
                "RABBITMQ_CLUSTER_DIST_BASE_PORT",
                self.dist_base_port.to_string(),
            ),
            ("RABBITMQ_CLUSTER_NAME", self.name.clone()),
        ]
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(script());
        cmd.args(args).envs(self.envs()).stdin(Stdio::null());
        cmd
    }

    /// Runs the script with a bound; (success, stdout + stderr).
    async fn script_bounded(&self, args: &[&str], limit: Duration) -> (bool, String) {
        let mut cmd = tokio::process::Command::from(self.command(args));
        cmd.kill_on_drop(true);
        let what = format!("scripts/rabbitmq-cluster {}", args.join(" "));
        let out = crate::within(limit, &what, cmd.output()).await;
        match out {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, format!("cannot run {what}: {e}")),
        }
    }

    /// A process of its own session (so the runner's kill of the test's
    /// process group leaves it) that kills the nodes and removes the
    /// directory once this test process is gone.
    fn spawn_reaper(&self) {
        let me = std::process::id();
        let watch = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; \"$0\" kill all >/dev/null 2>&1; rm -rf \"$RABBITMQ_CLUSTER_DIR\""
        );
        let spawned = Command::new("setsid")
            .args(["sh", "-c", &watch])
            .arg(script())
            .envs(self.envs())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Err(e) = spawned {
            eprintln!("cannot start the cluster's reaper (setsid sh): {e}; drop still cleans up");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGKILL: a throwaway cluster needs no graceful stop, and this is
        // quick (a graceful stop of three nodes takes 10 to 15 s).
        let status = self
            .command(&["kill", "all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "scripts/rabbitmq-cluster kill all failed for {}; the reaper retries when the test exits",
                self.dir.display()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// A base port whose three AMQP ports and three distribution ports are free:
/// AMQP ports in 12000..20000, distribution ports 10000 above (below the
/// ephemeral range, where connections could take them).
fn free_ports() -> (u16, u16) {
    for _ in 0..200 {
        let base = 12000 + 10 * (rand_u16() % 800);
        let dist = base + 10000;
        if (0..NODES as u16).all(|i| port_free(base + i) && port_free(dist + i)) {
            return (base, dist);
        }
    }
    panic!("no free ports for a cluster in 12000..20000 and 22000..30000");
}

fn rand_u16() -> u16 {
    let id = uuid::Uuid::new_v4();
    u16::from_le_bytes([id.as_bytes()[0], id.as_bytes()[1]])
}

/// The remote ports of `pid`'s established IPv4/IPv6 TCP connections.
fn remote_ports_of(pid: u32) -> Vec<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: std::collections::HashSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(rem), Some(st), Some(inode)) = (f.get(2), f.get(3), f.get(9)) else {
                continue;
            };
            // 01: ESTABLISHED.
            if *st != "01" || !inodes.contains(*inode) {
                continue;
            }
            if let Some(port) = rem
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    ports
}
