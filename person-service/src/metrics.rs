//! Prometheus metrics (text format 0.0.4) for both faces: calls, errors and
//! latency per RPC method and per HTTP route, and what is in flight.
//!
//! Label values are bounded: RPC methods are the registered names (unknown
//! ones count as `<unknown>`), HTTP routes are route templates such as
//! `/person/{id}` (anything unmatched counts as `unmatched`).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use rpc_core::{CallObserver, CallOutcome};
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
    in_flight: IntGaugeVec,
}

impl Metrics {
    /// Registers every metric.
    ///
    /// # Panics
    /// Never in practice: registration fails only on duplicate or malformed
    /// names, which are constants here.
    pub fn new() -> Self {
        let registry = Registry::new();
        let rpc_calls = IntCounterVec::new(
            Opts::new(
                "person_rpc_calls_total",
                "RPC calls handled, by method and outcome (ok, raised, refused).",
            ),
            &["method", "outcome"],
        )
        .expect("valid metric");
        let rpc_errors = IntCounterVec::new(
            Opts::new(
                "person_rpc_errors_total",
                "RPC calls that ended in an error, by method and exc_type.",
            ),
            &["method", "exc_type"],
        )
        .expect("valid metric");
        let rpc_latency = HistogramVec::new(
            HistogramOpts::new(
                "person_rpc_call_duration_seconds",
                "Time to handle an RPC call, by method.",
            )
            .buckets(BUCKETS.to_vec()),
            &["method"],
        )
        .expect("valid metric");
        let http_requests = IntCounterVec::new(
            Opts::new(
                "person_http_requests_total",
                "HTTP requests, by route, method and status.",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let http_latency = HistogramVec::new(
            HistogramOpts::new(
                "person_http_request_duration_seconds",
                "Time to answer an HTTP request, by route and method.",
            )
            .buckets(BUCKETS.to_vec()),
            &["route", "method"],
        )
        .expect("valid metric");
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "person_in_flight",
                "Requests being handled now, by face (rpc, http).",
            ),
            &["face"],
        )
        .expect("valid metric");
        for c in [
            Box::new(rpc_calls.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rpc_errors.clone()),
            Box::new(rpc_latency.clone()),
            Box::new(http_requests.clone()),
            Box::new(http_latency.clone()),
            Box::new(in_flight.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        // Both faces appear (at zero) before their first request.
        in_flight.with_label_values(&["rpc"]).set(0);
        in_flight.with_label_values(&["http"]).set(0);
        Metrics {
            registry,
            rpc_calls,
            rpc_errors,
            rpc_latency,
            http_requests,
            http_latency,
            in_flight,
        }
    }

    /// An HTTP request started.
    pub fn http_started(&self) {
        self.in_flight.with_label_values(&["http"]).inc();
    }

    /// An HTTP request finished.
    pub fn http_finished(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.in_flight.with_label_values(&["http"]).dec();
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl CallObserver for Metrics {
    fn started(&self, _method: &str) {
        self.in_flight.with_label_values(&["rpc"]).inc();
    }

    fn finished(&self, method: &str, outcome: CallOutcome<'_>, elapsed: Duration) {
        self.in_flight.with_label_values(&["rpc"]).dec();
        let (label, error) = match outcome {
            CallOutcome::Ok => ("ok", None),
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
