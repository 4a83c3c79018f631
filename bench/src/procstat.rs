//! What a process costs, read from `/proc` (Linux only): CPU time
//! (`utime + stime` of `/proc/PID/stat`, all threads) and memory (`VmRSS`,
//! `VmHWM` of `/proc/PID/status`).
//!
//! A [`Meter`] brackets one measured window: it resets the service's peak
//! RSS (`/proc/PID/clear_refs` ← `5`) at the start, samples `VmRSS` every
//! 50 ms meanwhile, and at the end reports the CPU seconds each process used
//! in the window and the service's peak RSS in it (the larger of the
//! sampled maximum and `VmHWM`, when the reset worked).

use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Clock ticks per second of `/proc/PID/stat`'s times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds (user + system, all threads) a process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_second())
}

/// CPU seconds the whole machine has been busy (all CPUs, everything but
/// idle and iowait), from `/proc/stat`.
pub fn machine_busy_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
    Some(busy as f64 / ticks_per_second())
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A process's memory from one read of `/proc/PID/status`, in KiB.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    /// `VmRSS`.
    pub rss: u64,
    /// `VmHWM`: the peak RSS (since start or the last [`reset_peak`]).
    pub hwm: u64,
    /// `RssAnon`: the process's own memory, without the mapped binary and
    /// libraries that `VmRSS` also counts.
    pub anon: Option<u64>,
}

/// `VmRSS`, `VmHWM` and `RssAnon`; `None` when the process is gone.
pub fn memory_kib(pid: u32) -> Option<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some(Memory {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
        anon: field("RssAnon:"),
    })
}

/// Resets a process's peak RSS to its current RSS; false when not allowed.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// The first process whose command name is `name` (e.g. `beam.smp`, the
/// RabbitMQ VM).
pub fn find_process(name: &str) -> Option<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.into_iter().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim_end() == name)
    })
}

/// This process's id.
pub fn own_pid() -> u32 {
    std::process::id()
}

/// What one window cost.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cost {
    /// CPU seconds of the measured service (or echo server) in the window.
    pub service_cpu_s: Option<f64>,
    /// Its peak RSS in the window, MiB.
    pub service_peak_rss_mb: Option<f64>,
    /// Its peak anonymous RSS (`RssAnon`, sampled) in the window, MiB.
    pub service_peak_anon_mb: Option<f64>,
    /// CPU seconds of the broker (beam.smp) in the window.
    pub broker_cpu_s: Option<f64>,
    /// CPU seconds of this process (the callers) in the window.
    pub client_cpu_s: Option<f64>,
    /// CPU seconds everything else on the machine used in the window
    /// (other work competing for the CPUs).
    pub other_cpu_s: Option<f64>,
}

/// CPU seconds so far of the service, the broker, this process and the
/// whole machine (busy time), in that order.
fn cpu_now(service: u32, broker: Option<u32>) -> [Option<f64>; 4] {
    [
        cpu_seconds(service),
        broker.and_then(cpu_seconds),
        cpu_seconds(own_pid()),
        machine_busy_seconds(),
    ]
}

/// Measures one window; see the module docs.
pub struct Meter {
    service: u32,
    broker: Option<u32>,
    start: [Option<f64>; 4],
    hwm_reset: bool,
    peak_kib: Arc<AtomicU64>,
    peak_anon_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    sampler: tokio::task::JoinHandle<()>,
}

impl Meter {
    /// Starts measuring `service` and `broker` (if found).
    pub fn start(service: u32, broker: Option<u32>) -> Meter {
        let hwm_reset = reset_peak(service);
        let peak_kib = Arc::new(AtomicU64::new(0));
        let peak_anon_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, anon, stop) = (
                Arc::clone(&peak_kib),
                Arc::clone(&peak_anon_kib),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(m) = memory_kib(service) {
                        peak.fetch_max(m.rss, Ordering::Relaxed);
                        if let Some(kib) = m.anon {
                            anon.fetch_max(kib, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        Meter {
            service,
            broker,
            start: cpu_now(service, broker),
            hwm_reset,
            peak_kib,
            peak_anon_kib,
            stop,
            sampler,
        }
    }

    /// Ends the window and reports its cost.
    pub async fn finish(self) -> Cost {
        let end = cpu_now(self.service, self.broker);
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.sampler.await;
        let delta = |i: usize| match (self.start[i], end[i]) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let mut peak = self.peak_kib.load(Ordering::Relaxed);
        if let Some(m) = memory_kib(self.service) {
            peak = peak.max(m.rss);
            if self.hwm_reset {
                peak = peak.max(m.hwm);
            }
        }
        let anon = self.peak_anon_kib.load(Ordering::Relaxed);
        let measured: f64 = [delta(0), delta(1), delta(2)].iter().flatten().sum();
        Cost {
            service_cpu_s: delta(0),
            service_peak_rss_mb: (peak > 0).then(|| peak as f64 / 1024.0),
            service_peak_anon_mb: (anon > 0).then(|| anon as f64 / 1024.0),
            broker_cpu_s: delta(1),
            client_cpu_s: delta(2),
            other_cpu_s: delta(3).map(|busy| (busy - measured).max(0.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let pid = own_pid();
        assert!(cpu_seconds(pid).is_some());
        let Memory { rss, hwm, .. } = memory_kib(pid).unwrap();
        assert!(rss > 0 && hwm >= rss);
    }
}
