//! A Python nameko service run with `nameko run`, stopped when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `nameko run` process.
pub struct NamekoRun {
    child: Child,
}

impl NamekoRun {
    /// Runs `nameko run {module}` in `dir` against `broker`, with extra
    /// environment variables. Readiness is the caller's to check (a call
    /// that succeeds), since nameko prints nothing reliable when it is.
    pub fn start(dir: &Path, module: &str, broker: &str, env: &[(&str, &str)]) -> NamekoRun {
        let mut cmd = Command::new(crate::python::nameko());
        cmd.current_dir(dir)
            .args(["run", "--broker", broker, module])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("NAMEKO_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nameko run: {e}"));
        NamekoRun { child }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops it with SIGTERM (nameko's graceful stop), and kills it if it
    /// has not exited within ten seconds.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
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
    }
}
