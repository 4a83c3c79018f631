//! Real Python nameko 2.14.1 for interop tests.
//!
//! The first test that needs it creates a venv with nameko pinned (under
//! `target/nameko-venv`, or `NAMEKO_VENV`) by running `scripts/nameko-venv`,
//! holding a file lock so parallel test binaries build it once. Later runs
//! reuse it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The nameko version the interop tests pin.
pub const NAMEKO_VERSION: &str = "2.14.1";

fn venv_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NAMEKO_VENV") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("nameko-venv")
}

/// The venv's python, with nameko installed.
///
/// # Panics
/// With the installer's output when the venv cannot be created (no Python 3,
/// or PyPI unreachable).
pub fn python() -> PathBuf {
    let dir = venv_dir();
    let python = dir.join("bin/python");
    let marker = dir.join(format!(".nameko-{NAMEKO_VERSION}-ready"));
    if marker.exists() {
        return python;
    }
    std::fs::create_dir_all(dir.parent().unwrap_or(Path::new(".")))
        .expect("create the venv's parent directory");
    let lock_path = dir.with_extension("lock");
    let lock = File::create(&lock_path).expect("create the venv lock file");
    lock.lock().expect("lock the venv");
    if !marker.exists() {
        // One implementation for tests, CI and users: scripts/nameko-venv.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nameko-venv");
        run(
            Command::new("bash").arg(script).arg(&dir),
            "create the nameko venv",
        );
    }
    let _ = lock.unlock();
    python
}

/// The venv's `nameko` command.
pub fn nameko() -> PathBuf {
    python().with_file_name("nameko")
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot {what}: {e}"));
    assert!(
        out.status.success(),
        "cannot {what}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
