//! Smoke test: `bench --quick` with tiny counts against the real broker
//! prints its tables with non-zero rates. No performance assertions: the
//! figures depend on the machine and on whatever else runs on it.

use std::process::Command;

#[test]
fn quick_run_prints_tables_with_nonzero_rates() {
    let broker = test_support::require_broker();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("results.json");
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--quick", "--amqp-uri", &broker])
        .args(["--max-calls", "200", "--window", "2", "--warmup", "0.1"])
        .args(["--callers", "1,8,64", "--nameko", "off"])
        .args(["--list-rows", "1000,5000", "--list-callers", "4"])
        // The person-service binary may not be built in a test run; the
        // same code is hosted by the bench binary.
        .args(["--person-host", "bench"])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    for needle in [
        "## persistent requests and replies",
        "| echo ceiling ",
        "| person-service ",
        "## list(limit=100",
        "## Targets",
    ] {
        assert!(stdout.contains(needle), "no {needle:?} in:\n{stdout}");
    }

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    // echo and person-service, get and create, 1, 8 and 64 callers.
    assert_eq!(rows.len(), 12, "{rows:#?}");
    for row in rows.iter().chain(report["list"].as_array().unwrap()) {
        let rate = row["calls_per_s"].as_f64().unwrap();
        assert!(rate > 0.0, "zero rate: {row:#}");
        assert_eq!(row["errors"], 0, "errors: {row:#}");
        assert!(row["p50_ms"].as_f64().unwrap() > 0.0, "{row:#}");
    }
    let person_rows = rows.iter().filter(|r| r["target"] == "person-service");
    for row in person_rows {
        assert!(row["service_cpu_s"].is_number(), "{row:#}");
        assert!(
            row["service_peak_rss_mb"].as_f64().unwrap() > 0.0,
            "{row:#}"
        );
    }
    let durability = report["durability"].as_array().unwrap();
    // person-service's create phases: checked, not just vacuously all ok.
    assert!(!durability.is_empty(), "no durability check in the report");
    assert!(
        durability.iter().all(|d| d["ok"] == true),
        "{durability:#?}"
    );
}
