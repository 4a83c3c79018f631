//! Python nameko processes for interop tests: a service run with
//! `nameko run` (stopped when dropped), and `nameko shell` fed a script on
//! stdin.
//!
//! Their output goes to a log file rather than nowhere: a test can search it
//! for errors, and when a test panics the log is printed with the failure
//! (also always, with `NAMEKO_LOG` set).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `nameko run` process.
pub struct NamekoRun {
    child: Child,
    module: String,
    log: PathBuf,
}

impl NamekoRun {
    /// Runs `nameko run {module}` in `dir` against `broker`, with extra
    /// environment variables. Its stdout and stderr (nameko logs to stderr)
    /// go to a log file, see [`NamekoRun::log`].
    ///
    /// Readiness is the caller's to check, with a call that succeeds:
    /// nameko prints nothing when its consumers are ready, only "starting
    /// services" before.
    pub fn start(dir: &Path, module: &str, broker: &str, env: &[(&str, &str)]) -> NamekoRun {
        let log =
            std::env::temp_dir().join(format!("nameko-run-{}.log", uuid::Uuid::new_v4().simple()));
        let out =
            File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone the log file handle");
        let mut cmd = Command::new(crate::python::nameko());
        cmd.current_dir(dir)
            .args(["run", "--broker", broker, module])
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nameko run: {e}"));
        NamekoRun {
            child,
            module: module.to_owned(),
            log,
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Panics, with the log, when the process has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "nameko run {} exited ({status}); its output:\n{}",
                self.module,
                self.log()
            );
        }
    }

    /// Everything it has written so far (stdout and stderr together).
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Stops it with SIGTERM (nameko's graceful stop), and kills it if it
    /// has not exited within ten seconds.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NamekoRun {
    fn drop(&mut self) {
        if self.is_running() {
            self.stop();
        }
        let panicking = std::thread::panicking();
        if panicking || std::env::var_os("NAMEKO_LOG").is_some() {
            // Shown with the test's failure (libtest captures eprintln).
            eprintln!(
                "--- output of nameko run {} ({}) ---\n{}--- end ---",
                self.module,
                self.log.display(),
                self.log()
            );
        }
        // Kept after a failure, for a closer look.
        if !panicking {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// What a `nameko shell` session printed.
#[derive(Debug)]
pub struct ShellOutput {
    /// How the process ended.
    pub status: ExitStatus,
    /// Its stdout: prompts (`>>> `, `... `) and what the script printed.
    pub stdout: String,
    /// Its stderr: banner, warnings, tracebacks.
    pub stderr: String,
}

/// Runs `nameko shell --broker {broker}` with `script` piped to its stdin
/// and extra environment variables, and waits for it to exit.
///
/// With stdin not a terminal nameko runs a plain console, which echoes its
/// prompts to stdout before each line and, unlike Python's own, re-raises
/// an uncaught exception, so the process exits non-zero. The shell's proxy
/// has no timeout, so a call that is never answered would hang: the process
/// is killed after `timeout` and this panics with what it printed.
///
/// Blocking: call it from `spawn_blocking` in async tests.
pub fn shell(broker: &str, script: &str, env: &[(&str, &str)], timeout: Duration) -> ShellOutput {
    let mut cmd = Command::new(crate::python::nameko());
    cmd.args(["shell", "--broker", broker])
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start nameko shell: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let script = script.to_owned();
    // Closing stdin (dropping it) ends the console after the script.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(script.as_bytes());
    });
    let stderr = {
        let mut pipe = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    // stdout closes when the process exits: that is the event waited for.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut pipe = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    let (status, stdout) = match rx.recv_timeout(timeout) {
        Ok(stdout) => (Some(child.wait().expect("wait for nameko shell")), stdout),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            (None, rx.recv().unwrap_or_default())
        }
    };
    let _ = writer.join();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => ShellOutput {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "nameko shell did not finish within {timeout:?} (a call never answered?)\n\
             stdout:\n{stdout}\nstderr:\n{stderr}"
        ),
    }
}
