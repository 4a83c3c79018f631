//! PostgreSQL for tests: a database of its own for each test on the shared
//! server, and a private server a test may stop and start.
//!
//! Tests never skip: when the server is not there they fail at once saying
//! how to start it.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

/// The shared server's URL, without a database: `PERSON_TEST_PG`, or the
/// local server as user postgres (trust authentication).
pub fn server_url() -> String {
    std::env::var("PERSON_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// Runs `sql` on the `postgres` database of the server at `server`.
///
/// # Panics
/// When the server cannot be reached (saying so) or the statement fails.
pub async fn admin(server: &str, sql: &str) {
    let url = format!("{server}/postgres");
    let (client, conn) = match tokio_postgres::connect(&url, NoTls).await {
        Ok(pair) => pair,
        Err(e) => panic!(
            "PostgreSQL is not reachable at {server} ({e}). These tests need a real server: \
             start one (`pg_ctlcluster --skip-systemctl-redirect 15 main start`) or point PERSON_TEST_PG at one."
        ),
    };
    let task = tokio::spawn(conn);
    if let Err(e) = client.batch_execute(sql).await {
        panic!("`{sql}` failed: {e}");
    }
    drop(client);
    let _ = task.await;
}

/// A database created for one test and dropped (`WITH (FORCE)`) when this
/// is dropped, also when the test fails.
pub struct TestDb {
    server: String,
    name: String,
}

impl TestDb {
    /// Creates `person_t_…` on the shared server.
    pub async fn create() -> TestDb {
        Self::create_on(&server_url()).await
    }

    /// Creates `person_t_…` on the server at `server`.
    pub async fn create_on(server: &str) -> TestDb {
        crate::init_logging();
        let name = format!(
            "person_t_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        admin(server, &format!("CREATE DATABASE {name}")).await;
        TestDb {
            server: server.to_owned(),
            name,
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's URL, without a database.
    pub fn server(&self) -> &str {
        &self.server
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop cannot await, and may run inside a runtime: a thread with
        // its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let url = format!("{server}/postgres");
                let (client, conn) = tokio_postgres::connect(&url, NoTls).await.ok()?;
                let task = tokio::spawn(conn);
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                let ok = tokio::time::timeout(Duration::from_secs(20), client.batch_execute(&sql))
                    .await
                    .is_ok_and(|r| r.is_ok());
                drop(client);
                let _ = task.await;
                ok.then_some(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

/// The PostgreSQL 15 server binaries.
const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL server of a test's own (initdb into a temporary directory,
/// run as the `postgres` OS user on a free port), which it may stop and
/// start; stopped and removed on drop.
pub struct PrivateServer {
    dir: PathBuf,
    port: u16,
}

impl PrivateServer {
    /// Creates and starts the server.
    ///
    /// # Panics
    /// When it cannot be created or started, with its log.
    pub fn start() -> PrivateServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let dir = std::env::temp_dir().join(format!(
            "person-pg-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        ));
        std::fs::create_dir_all(&dir).expect("server dir");
        run("chown", &["postgres:postgres", &dir.to_string_lossy()]);
        let server = PrivateServer { dir, port };
        as_postgres(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        server.resume();
        server
    }

    fn data(&self) -> String {
        self.dir.join("data").to_string_lossy().into_owned()
    }

    /// Its URL, without a database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Starts it again (waits until it accepts connections).
    pub fn resume(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=16MB",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").to_string_lossy().into_owned();
        as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &opts,
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Stops it (fast: open sessions are ended), waiting until it is down.
    pub fn stop(&self) {
        as_postgres(
            "pg_ctl",
            &["-D", &self.data(), "-m", "fast", "-w", "-t", "60", "stop"],
        );
    }

    /// Waits until nothing accepts connections on its port.
    pub fn wait_down(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "the private server did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{BIN}/pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn as_postgres(tool: &str, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(format!("{BIN}/{tool}"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} as postgres: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run(cmd: &str, args: &[&str]) {
    let status = Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(status.success(), "{cmd} {args:?} failed ({status})");
}
