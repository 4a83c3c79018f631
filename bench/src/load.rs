//! The callers: N tasks, each looping call → await, through the Rust
//! `RpcProxy` (person-service, nameko) or the bare [`EchoClient`]; a
//! warm-up, then a measured window bounded by time and by count.

use crate::echo::EchoClient;
use crate::procstat::{Cost, Meter};
use crate::stats::{summarize, Latency, Rng};
use rpc_core::{Args, RpcProxy, Value};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the callers ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// `get(id)`, id uniform over the seeded rows.
    Get,
    /// `create(first_name, last_name, age)`.
    Create,
    /// `list(limit=100, after_id=X)`, X uniform over the table.
    List,
}

impl Workload {
    /// The RPC method.
    pub fn method(self) -> &'static str {
        match self {
            Workload::Get => "get",
            Workload::Create => "create",
            Workload::List => "list",
        }
    }
}

/// Rows in a `list` page.
pub const LIST_LIMIT: u64 = 100;

/// Who the calls go through.
pub enum Client {
    /// rpc-core's proxy, to `service`.
    Proxy {
        /// The proxy.
        proxy: RpcProxy,
        /// Service name.
        service: String,
    },
    /// The bare lapin client, to the echo server `service`.
    Echo {
        /// The client.
        client: Box<EchoClient>,
        /// Service name.
        service: String,
    },
}

impl Client {
    fn args(workload: Workload, rows: u64, rng: &mut Rng, n: u64) -> Args {
        match workload {
            Workload::Get => Args::new().arg(rng.one_to(rows)),
            Workload::Create => Args::new()
                .arg("Bench")
                .arg(format!("Caller {n}"))
                .arg(n % 100),
            Workload::List => Args::new().kwarg("limit", LIST_LIMIT).kwarg(
                "after_id",
                rng.one_to(rows.saturating_sub(LIST_LIMIT).max(1)) - 1,
            ),
        }
    }

    /// One call; `Err` says why it failed.
    pub async fn call(
        &self,
        workload: Workload,
        rows: u64,
        rng: &mut Rng,
        n: u64,
        timeout: Duration,
    ) -> Result<(), String> {
        let args = Self::args(workload, rows, rng, n);
        match self {
            Client::Proxy { proxy, service } => {
                let value = proxy
                    .call(service, workload.method(), args)
                    .await
                    .map_err(|e| e.to_string())?;
                let fits = match workload {
                    Workload::Get => value.is_object(),
                    Workload::Create => value.is_i64(),
                    Workload::List => matches!(&value, Value::Array(_)),
                };
                if fits {
                    Ok(())
                } else {
                    Err(format!("unexpected result {value}"))
                }
            }
            Client::Echo { client, service } => {
                let key = rpc_core::wire::routing_key(service, workload.method());
                let body = rpc_core::wire::encode_request(args.body());
                client.call(&key, &body, timeout).await.map(|_| ())
            }
        }
    }

    /// Calls until one succeeds (the service is up), for at most `within`.
    /// `alive` is asked between attempts whether the server still runs.
    pub async fn wait_ready(
        &self,
        within: Duration,
        mut alive: impl FnMut() -> Result<(), String>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let mut rng = Rng::new(1);
        loop {
            let last = match self
                .call(Workload::Get, 1, &mut rng, 0, Duration::from_secs(2))
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            alive()?;
            if Instant::now() > deadline {
                return Err(format!("not ready within {within:?}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One phase: what is called, by how many, for how long.
#[derive(Clone, Copy, Debug)]
pub struct PhaseSpec {
    /// The calls.
    pub workload: Workload,
    /// Concurrent callers.
    pub callers: usize,
    /// Unmeasured calls first, for this long.
    pub warmup: Duration,
    /// The measured window ends after this long…
    pub window: Duration,
    /// …or after this many calls, whichever comes first.
    pub max_calls: u64,
    /// Rows in the table (ids 1..=rows).
    pub rows: u64,
    /// Per-call timeout.
    pub timeout: Duration,
}

/// What a phase measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Measured {
    /// Successful calls in the window.
    pub calls: u64,
    /// Failed calls (warm-up and window).
    pub errors: u64,
    /// Successful calls in the warm-up (creates count for the durability
    /// check).
    pub warmup_calls: u64,
    /// Length of the window, s.
    pub elapsed_s: f64,
    /// Successful calls per second.
    pub calls_per_s: f64,
    /// Latency of successful calls.
    #[serde(flatten)]
    pub latency: Latency,
    /// CPU and memory in the window.
    #[serde(flatten)]
    pub cost: Cost,
    /// The first error, if any.
    pub first_error: Option<String>,
}

#[derive(Default)]
struct Stage {
    ok: u64,
    errors: u64,
    latencies: Vec<u32>,
    first_error: Option<String>,
}

async fn stage(
    client: &Arc<Client>,
    spec: PhaseSpec,
    until: Instant,
    budget: Option<u64>,
    seq: &Arc<AtomicU64>,
) -> Stage {
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(spec.callers);
    for i in 0..spec.callers {
        let (client, issued, seq) = (Arc::clone(client), Arc::clone(&issued), Arc::clone(seq));
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15 ^ ((i as u64 + 1) * 0x1000_0001));
            let mut out = Stage::default();
            while Instant::now() < until {
                if budget.is_some_and(|max| issued.fetch_add(1, Ordering::Relaxed) >= max) {
                    break;
                }
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                match client
                    .call(spec.workload, spec.rows, &mut rng, n, spec.timeout)
                    .await
                {
                    Ok(()) => {
                        out.ok += 1;
                        let us = started.elapsed().as_micros();
                        out.latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert(e);
                    }
                }
            }
            out
        }));
    }
    let mut all = Stage::default();
    for t in tasks {
        match t.await {
            Ok(s) => {
                all.ok += s.ok;
                all.errors += s.errors;
                all.latencies.extend(s.latencies);
                if all.first_error.is_none() {
                    all.first_error = s.first_error;
                }
            }
            Err(e) => {
                all.errors += 1;
                all.first_error
                    .get_or_insert(format!("caller task failed: {e}"));
            }
        }
    }
    all
}

/// Runs a warm-up and a measured window; `meter` starts the cost
/// measurement right before the window.
pub async fn run_phase(
    client: &Arc<Client>,
    spec: PhaseSpec,
    meter: impl FnOnce() -> Meter,
) -> Measured {
    let seq = Arc::new(AtomicU64::new(0));
    let warm = if spec.warmup.is_zero() {
        Stage::default()
    } else {
        stage(client, spec, Instant::now() + spec.warmup, None, &seq).await
    };
    let meter = meter();
    let started = Instant::now();
    let measured = stage(
        client,
        spec,
        started + spec.window,
        Some(spec.max_calls),
        &seq,
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let cost = meter.finish().await;
    Measured {
        calls: measured.ok,
        errors: measured.errors + warm.errors,
        warmup_calls: warm.ok,
        elapsed_s: elapsed,
        calls_per_s: if elapsed > 0.0 {
            measured.ok as f64 / elapsed
        } else {
            0.0
        },
        latency: summarize(measured.latencies),
        cost,
        first_error: measured.first_error.or(warm.first_error),
    }
}
