//! The processes being measured, started as children so their RSS and CPU
//! can be read from `/proc`: the echo server (this binary, re-executed),
//! person-service (its release binary, or hosted by this binary), and
//! Python nameko.

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process, stopped (SIGTERM, then SIGKILL after 10 s) on drop.
pub struct Proc {
    child: Child,
    what: String,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with its output going to `log`.
    pub fn spawn(what: &str, mut cmd: Command, log: PathBuf) -> Result<Proc, String> {
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {what} ({:?}): {e}", cmd.get_program()))?;
        Ok(Proc {
            child,
            what: what.to_owned(),
            log,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Err` with the end of its log when it has exited.
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); the end of its output:\n{}",
                self.what,
                self.log_tail(30)
            )),
            Err(e) => Err(format!("{}: {e}", self.what)),
        }
    }

    /// The last `lines` lines of its output.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Lines of its output containing `needle`, at most `max`.
    pub fn log_lines_with(&self, needle: &str, max: usize) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .take(max)
            .map(str::to_owned)
            .collect()
    }

    /// Stops it gracefully (SIGTERM), killing it after 10 s.
    pub fn stop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop within 10 s; killing it", self.what);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Deletes a service's durable queue `rpc-{name}` and its events exchange
/// `{name}.events`, which outlive the process.
pub async fn delete_service_entities(amqp_uri: &str, name: &str) {
    let Ok(conn) = Connection::connect(amqp_uri, ConnectionProperties::default()).await else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        let queue = rpc_core::wire::rpc_queue(name);
        let _ = ch
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    if let Ok(ch) = conn.create_channel().await {
        let exchange = rpc_core::wire::events_exchange(name);
        let _ = ch
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "OK".into()).await;
}

/// This binary, for the hidden subcommands.
pub fn own_exe() -> Result<PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("cannot find this program's path: {e}"))
}

/// `bench echo-server …`.
pub fn echo_server(
    amqp_uri: &str,
    name: &str,
    prefetch: u16,
    persistent: bool,
    confirms: bool,
    log: PathBuf,
) -> Result<Proc, String> {
    let mut cmd = Command::new(own_exe()?);
    cmd.args(["echo-server", "--amqp-uri", amqp_uri, "--name", name])
        .args(["--prefetch", &prefetch.to_string()]);
    if !persistent {
        cmd.arg("--transient");
    }
    if !confirms {
        cmd.arg("--no-confirm");
    }
    Proc::spawn("the echo server", cmd, log)
}

/// How person-service is run.
#[derive(Clone, Debug)]
pub enum PersonHost {
    /// Its release binary at this path.
    Binary(PathBuf),
    /// `bench serve-person`: the same library code under this binary, which
    /// can set `Config::persistent = false`.
    Bench,
}

/// The release binary beside this one (both built in the same target dir).
pub fn default_person_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    // `cargo test` puts test binaries in target/release/deps.
    [dir.join("person-service"), dir.join("../person-service")]
        .into_iter()
        .find(|p| p.is_file())
}

/// Options of one person-service process.
pub struct PersonSpec<'a> {
    /// Broker.
    pub amqp_uri: &'a str,
    /// Database: a SQLite file or a PostgreSQL URL.
    pub db: &'a str,
    /// Service name (queue `rpc-{name}`).
    pub name: &'a str,
    /// `--max-workers`.
    pub max_workers: u16,
    /// `--prefetch`.
    pub prefetch: u16,
    /// Persistent messages.
    pub persistent: bool,
    /// `RUST_LOG` of the child.
    pub log_filter: &'a str,
    /// More environment of the child.
    pub env: &'a [(String, String)],
}

/// Starts person-service as `host` says.
pub fn person_service(
    host: &PersonHost,
    spec: &PersonSpec<'_>,
    log: PathBuf,
) -> Result<Proc, String> {
    let db = spec.db;
    let workers = spec.max_workers.to_string();
    let prefetch = spec.prefetch.to_string();
    let common = [
        "--prefetch",
        &prefetch,
        "--amqp-uri",
        spec.amqp_uri,
        "--db",
        db,
        "--service-name",
        spec.name,
        "--max-workers",
        &workers,
    ];
    let mut cmd = match host {
        PersonHost::Binary(path) => {
            // Replies follow the requests' delivery mode; the binary's
            // events stay persistent in either mode.
            let mut cmd = Command::new(path);
            cmd.args(common);
            cmd
        }
        PersonHost::Bench => {
            // `serve-person [--transient]` then person-service's own flags.
            let mut cmd = Command::new(own_exe()?);
            cmd.arg("serve-person");
            if !spec.persistent {
                cmd.arg("--transient");
            }
            cmd.args(common);
            cmd
        }
    };
    cmd.env("RUST_LOG", spec.log_filter)
        .env_remove("CONFIG_FILE")
        .env_remove("HTTP_ADDR")
        .envs(spec.env.iter().map(|(k, v)| (k, v)));
    Proc::spawn("person-service", cmd, log)
}

/// The Python nameko fixture, `bench/python/nameko_person.py`, shipped in
/// this binary.
pub const NAMEKO_FIXTURE: &str = include_str!("../python/nameko_person.py");

/// Starts `nameko run --config … nameko_person` from `venv` in `dir`.
pub fn nameko_person(
    venv: &Path,
    dir: &Path,
    amqp_uri: &str,
    db: &Path,
    name: &str,
    max_workers: u16,
    log: PathBuf,
) -> Result<Proc, String> {
    std::fs::write(dir.join("nameko_person.py"), NAMEKO_FIXTURE)
        .map_err(|e| format!("writing the nameko fixture: {e}"))?;
    let config = dir.join("nameko_person.yaml");
    std::fs::write(
        &config,
        format!("AMQP_URI: '{amqp_uri}'\nmax_workers: {max_workers}\n"),
    )
    .map_err(|e| format!("writing the nameko config: {e}"))?;
    let mut cmd = Command::new(venv.join("bin/nameko"));
    cmd.current_dir(dir)
        .args(["run", "--config"])
        .arg(&config)
        .arg("nameko_person")
        .env("PYTHONUNBUFFERED", "1")
        .env("PERSON_SERVICE_NAME", name)
        .env("PERSON_DB", db);
    Proc::spawn("nameko run", cmd, log)
}

/// The workspace root this binary was built from.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The nameko venv, created with `scripts/nameko-venv` when missing.
pub fn ensure_nameko_venv(venv: &Path) -> Result<(), String> {
    if venv.join("bin/nameko").is_file() {
        return Ok(());
    }
    let script = workspace_root().join("scripts/nameko-venv");
    if !script.is_file() {
        return Err(format!(
            "no venv at {} and no {} to create one",
            venv.display(),
            script.display()
        ));
    }
    eprintln!(
        "creating the nameko venv: {} {}",
        script.display(),
        venv.display()
    );
    let status = Command::new(&script)
        .arg(venv)
        .status()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if status.success() && venv.join("bin/nameko").is_file() {
        Ok(())
    } else {
        Err(format!(
            "{} {} failed ({status})",
            script.display(),
            venv.display()
        ))
    }
}
