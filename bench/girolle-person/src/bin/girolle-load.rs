//! girolle 2.0.0's client driving a nameko-compatible person service (ours,
//! nameko, or the girolle one), for the benchmark.
//!
//! `girolle-load AMQP_URI SERVICE get|create CALLERS WARMUP_S WINDOW_S MAX_CALLS ROWS`
//!
//! Prints `window` on stdout when the measured window starts (bench reads
//! the service's CPU from then on), then one JSON line with the window's
//! figures: calls, errors, warmup_calls, elapsed_s, p50_ms, p99_ms,
//! first_error.
//!
//! Each caller is an OS thread with its own `RpcClient` (its own connection
//! and reply queue): girolle's `send` blocks its thread on a condition
//! variable that a reply wakes with `notify_one`, so callers sharing one
//! client would wake each other instead of the one the reply is for.

use girolle::prelude::*;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    window_calls: AtomicU64,
    warmup_calls: AtomicU64,
    errors: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
    first_error: Mutex<Option<String>>,
}

fn main() -> Result<(), String> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() != 8 {
        return Err("usage: girolle-load AMQP_URI SERVICE get|create CALLERS WARMUP_S WINDOW_S MAX_CALLS ROWS".into());
    }
    let num = |i: usize| -> Result<f64, String> {
        a[i].parse::<f64>().map_err(|e| format!("{}: {e}", a[i]))
    };
    let (uri, service, workload) = (a[0].clone(), a[1].clone(), a[2].clone());
    let callers = num(3)? as usize;
    let warmup = Duration::from_secs_f64(num(4)?);
    let window = Duration::from_secs_f64(num(5)?);
    let max_calls = num(6)? as u64;
    let rows = (num(7)? as u64).max(1);
    if workload != "get" && workload != "create" {
        return Err(format!("unknown workload {workload}"));
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let shared = Arc::new(Shared {
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        window_calls: AtomicU64::new(0),
        warmup_calls: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        latencies_us: Mutex::new(Vec::new()),
        first_error: Mutex::new(None),
    });
    let ready = Arc::new(Barrier::new(callers + 1));
    let mut threads = Vec::new();
    for c in 0..callers {
        let (uri, service, workload) = (uri.clone(), service.clone(), workload.clone());
        let (shared, ready, handle) = (
            Arc::clone(&shared),
            Arc::clone(&ready),
            runtime.handle().clone(),
        );
        threads.push(std::thread::spawn(move || {
            let _in_runtime = handle.enter();
            let conf = Config::default().with_amqp_uri(&uri);
            // RpcClient::new panics when it cannot connect: that is girolle's.
            let mut client = RpcClient::new(conf);
            let started = handle.block_on(async {
                client.start().await.map_err(|e| e.to_string())?;
                client
                    .register_service(&service)
                    .await
                    .map_err(|e| e.to_string())
            });
            ready.wait();
            if let Err(e) = started {
                shared
                    .first_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
                shared.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1);
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while !shared.stop.load(Ordering::Relaxed) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                n += 1;
                let payload = if workload == "get" {
                    Payload::new().arg(seed % rows + 1)
                } else {
                    Payload::new()
                        .arg("Bench")
                        .arg(format!("Girolle {c}-{n}"))
                        .arg(n % 100)
                };
                let measuring = shared.measuring.load(Ordering::Relaxed);
                let t = Instant::now();
                match client.send(&service, &workload, payload) {
                    Ok(_) => {
                        if measuring && shared.measuring.load(Ordering::Relaxed) {
                            latencies.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                            shared.window_calls.fetch_add(1, Ordering::Relaxed);
                        } else if !measuring {
                            shared.warmup_calls.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                        shared
                            .first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert_with(|| format!("{e:?}"));
                    }
                }
            }
            shared
                .latencies_us
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(latencies);
            let _ = handle.block_on(client.close());
        }));
    }
    ready.wait();
    std::thread::sleep(warmup);
    let mut out = std::io::stdout();
    let _ = writeln!(out, "window");
    let _ = out.flush();
    shared.measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    while start.elapsed() < window && shared.window_calls.load(Ordering::Relaxed) < max_calls {
        std::thread::sleep(Duration::from_millis(5));
    }
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::Relaxed);
    let _ = writeln!(out, "window-end");
    let _ = out.flush();
    for t in threads {
        let _ = t.join();
    }
    let mut lat = std::mem::take(
        &mut *shared
            .latencies_us
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        f64::from(lat[i]) / 1000.0
    };
    let calls = lat.len() as u64;
    let report = json!({
        "calls": calls,
        "errors": shared.errors.load(Ordering::Relaxed),
        "warmup_calls": shared.warmup_calls.load(Ordering::Relaxed),
        "elapsed_s": elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "first_error": shared.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    });
    let _ = writeln!(out, "{report}");
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
