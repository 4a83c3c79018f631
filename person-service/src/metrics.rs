//! Prometheus metrics (text format 0.0.4) for both faces: calls, errors and
//! latency per RPC method and per HTTP route, and what is in flight.
//!
//! Label values are bounded: RPC methods are the registered names (unknown
//! ones count as `<unknown>`), HTTP routes are route templates such as
//! `/person/{id}` (anything unmatched counts as `unmatched`).

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use rpc_core::{CallObserver, CallOutcome};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

/// Latency buckets, in seconds: 0.25 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The service's metrics.
pub struct Metrics {
    registry: Registry,
    rpc_calls: IntCounterVec,
    rpc_errors: IntCounterVec,
    rpc_latency: HistogramVec,
    http_requests: IntCounterVec,
    http_latency: HistogramVec,
    rpc_in_flight: IntGauge,
    http_in_flight: IntGauge,
    /// The series a successful call touches, per method, looked up once:
    /// `with_label_values` hashes its labels and takes a lock on every
    /// call. Bounded: rpc-core reports registered methods and
    /// `<unknown>` only.
    rpc_ok: RwLock<Vec<OkSeries>>,
}

/// One method's counter of successful calls and its latency histogram.
struct OkSeries {
    method: String,
    calls: IntCounter,
    latency: Histogram,
}

impl Metrics {
    /// Registers every metric.
    ///
    /// # Panics
    /// Never in practice: registration fails only on duplicate or malformed
    /// names, which are constants here.
    pub fn new() -> Self {
        let registry = Registry::new();
        let rpc_calls = counter(
            &registry,
            "person_rpc_calls_total",
            "RPC calls handled, by method and outcome (ok, raised, refused).",
            &["method", "outcome"],
        );
        let rpc_errors = counter(
            &registry,
            "person_rpc_errors_total",
            "RPC calls that ended in an error, by method and exc_type.",
            &["method", "exc_type"],
        );
        let rpc_latency = histogram(
            &registry,
            "person_rpc_call_duration_seconds",
            "Time to handle an RPC call, by method.",
            &["method"],
        );
        let http_requests = counter(
            &registry,
            "person_http_requests_total",
            "HTTP requests, by route, method and status.",
            &["route", "method", "status"],
        );
        let http_latency = histogram(
            &registry,
            "person_http_request_duration_seconds",
            "Time to answer an HTTP request, by route and method.",
            &["route", "method"],
        );
        let in_flight = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "person_in_flight",
                    "Requests being handled now, by face (rpc, http).",
                ),
                &["face"],
            )
            .expect("valid metric"),
        );
        // Looked up once, not on every request; both faces thereby appear
        // (at zero) before their first request.
        let rpc_in_flight = in_flight.with_label_values(&["rpc"]);
        let http_in_flight = in_flight.with_label_values(&["http"]);
        Metrics {
            registry,
            rpc_calls,
            rpc_errors,
            rpc_latency,
            http_requests,
            http_latency,
            rpc_in_flight,
            http_in_flight,
            rpc_ok: RwLock::new(Vec::new()),
        }
    }

    /// An HTTP request started.
    pub fn http_started(&self) {
        self.http_in_flight.inc();
    }

    /// An HTTP request finished.
    pub fn http_finished(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.http_in_flight.dec();
        self.http_requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        self.http_latency
            .with_label_values(&[route, method])
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Registers `metric` in `registry` and returns it.
fn register<C: Collector + Clone + 'static>(registry: &Registry, metric: C) -> C {
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

/// A latency histogram with [`BUCKETS`].
fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    register(
        registry,
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
            labels,
        )
        .expect("valid metric"),
    )
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A successful call: the common case, through the per-method handles.
    fn ok(&self, method: &str, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        {
            let known = self.rpc_ok.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(series) = known.iter().find(|s| s.method == method) {
                series.calls.inc();
                series.latency.observe(seconds);
                return;
            }
        }
        let series = OkSeries {
            method: method.to_owned(),
            calls: self.rpc_calls.with_label_values(&[method, "ok"]),
            latency: self.rpc_latency.with_label_values(&[method]),
        };
        series.calls.inc();
        series.latency.observe(seconds);
        let mut known = self.rpc_ok.write().unwrap_or_else(PoisonError::into_inner);
        if !known.iter().any(|s| s.method == method) {
            known.push(series);
        }
    }
}

impl CallObserver for Metrics {
    fn started(&self, _method: &str) {
        self.rpc_in_flight.inc();
    }

    fn finished(&self, method: &str, outcome: CallOutcome<'_>, elapsed: Duration) {
        self.rpc_in_flight.dec();
        let (label, error) = match outcome {
            CallOutcome::Ok => return self.ok(method, elapsed),
            CallOutcome::Raised(e) => ("raised", Some(e)),
            CallOutcome::Refused(e) => ("refused", Some(e)),
        };
        self.rpc_calls.with_label_values(&[method, label]).inc();
        if let Some(e) = error {
            self.rpc_errors
                .with_label_values(&[method, e.exc_type()])
                .inc();
        }
        self.rpc_latency
            .with_label_values(&[method])
            .observe(elapsed.as_secs_f64());
    }
}
