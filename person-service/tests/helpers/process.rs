//! person-service as a separate process (the release-like binary), for
//! tests that measure its memory or kill it.

use rpc_core::{Args, CallError, Config, RpcProxy};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use test_support::Cleanup;

/// What a test of the person-service binary sets up first: a fresh service
/// name (its queue and event exchange deleted at the end), a temporary
/// directory for the database and the logs, and a proxy.
pub struct ProcessTest {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub proxy: RpcProxy,
    _cleanup: Cleanup,
}

impl ProcessTest {
    /// A service named `{prefix}-…`, called through a proxy with `config`.
    pub async fn new(prefix: &str, config: Config) -> ProcessTest {
        test_support::require_broker();
        let name = test_support::unique_name(prefix);
        let cleanup = Cleanup::new()
            .service(&name)
            .exchange(&format!("{name}.events"));
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("p.db");
        let proxy = RpcProxy::connect(config).await.expect("proxy connects");
        ProcessTest {
            name,
            dir,
            db,
            proxy,
            _cleanup: cleanup,
        }
    }

    /// A file in the temporary directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// [`ServiceProcess::start`] on this name and database, logging to
    /// `log` in the temporary directory.
    pub async fn start(&self, log: &str) -> ServiceProcess {
        ServiceProcess::start(&self.name, &self.db, &self.path(log), &self.proxy).await
    }

    /// [`ServiceProcess::spawn`] on this name and database, logging to
    /// `log` in the temporary directory.
    pub fn spawn(&self, log: &str) -> ServiceProcess {
        ServiceProcess::spawn(&self.name, &self.db, &self.path(log))
    }
}

pub struct ServiceProcess {
    pub child: Child,
    pub name: String,
}

impl ServiceProcess {
    /// Starts `person-service --service-name NAME --db DB`, logging to
    /// `log` (a file), and waits until it answers.
    pub async fn start(name: &str, db: &Path, log: &Path, proxy: &RpcProxy) -> ServiceProcess {
        let p = ServiceProcess::spawn(name, db, log);
        p.wait_ready(proxy).await;
        p
    }

    /// Starts the process without waiting for it: for a test whose own
    /// traffic shows readiness (a readiness call would queue behind a backlog
    /// and hide the time it measures).
    pub fn spawn(name: &str, db: &Path, log: &Path) -> ServiceProcess {
        Self::spawn_with(name, db, log, &test_support::broker_uri(), &[])
    }

    /// [`spawn`](Self::spawn) against the broker at `amqp_uri`, with
    /// further flags.
    pub fn spawn_with(
        name: &str,
        db: &Path,
        log: &Path,
        amqp_uri: &str,
        flags: &[&str],
    ) -> ServiceProcess {
        // person-service logs to stdout; stderr goes to the same file.
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_person-service"))
            .args(["--service-name", name, "--db"])
            .arg(db)
            .args(flags)
            .env("AMQP_URI", amqp_uri)
            .env("RUST_LOG", "warn")
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start person-service");
        ServiceProcess {
            child,
            name: name.to_owned(),
        }
    }

    /// Waits until a call goes through (the queue exists and is consumed).
    pub async fn wait_ready(&self, proxy: &RpcProxy) {
        let quick = proxy.with_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match quick
                .call(&self.name, "list", Args::new().kwarg("limit", 1))
                .await
            {
                Ok(_) => return,
                Err(CallError::UnknownService(_)) | Err(CallError::Timeout { .. }) => {}
                Err(e) => panic!("person-service answers oddly: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "person-service did not come up in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        status_field(self.pid(), "VmHWM:")
    }

    /// Current resident memory (VmRSS) in KiB.
    pub fn rss_kib(&self) -> u64 {
        status_field(self.pid(), "VmRSS:")
    }

    /// User + system CPU time so far.
    pub fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th fields overall.
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = after
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
        Duration::from_millis(ticks * 10)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// SIGTERM and wait for the exit status. A graceful stop is bounded
    /// (the shutdown timeout, then a bounded close), so a process still
    /// running a minute later is a hang: it is killed and the test fails.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    // std offers no wait with a timeout; the exit is polled.
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => {
                    self.kill();
                    panic!("person-service did not exit within 60 s of SIGTERM");
                }
                Err(e) => panic!("wait for person-service: {e}"),
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill();
        }
    }
}

fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
