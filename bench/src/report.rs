//! Results: the rows, their ratios, the tables printed, the targets checked,
//! and the JSON written with `--json`.

use crate::load::{Measured, Workload};
use serde::Serialize;
use std::fmt::Write as _;

/// What was measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The bare lapin echo: the ceiling.
    Echo,
    /// The Rust person-service.
    PersonService,
    /// Python nameko 2.14.1 serving the same table.
    Nameko,
    /// A girolle 2.0.0 service serving the same table
    /// (`bench/girolle-person`).
    Girolle,
}

impl Target {
    /// As written in tables and on the chart.
    pub fn label(self) -> &'static str {
        match self {
            Target::Echo => "echo ceiling",
            Target::PersonService => "person-service",
            Target::Nameko => "nameko 2.14.1",
            Target::Girolle => "girolle 2.0.0",
        }
    }
}

/// Message settings of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Delivery mode 2 (nameko's), confirms on.
    Persistent,
    /// Delivery mode 1, confirms on.
    Transient,
}

impl Mode {
    /// As written in tables.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Persistent => "persistent",
            Mode::Transient => "transient",
        }
    }
}

/// One phase's result.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Who served the calls.
    pub target: Target,
    /// Message settings of the callers (and of the server, except nameko,
    /// whose replies are always persistent).
    pub mode: Mode,
    /// What was called.
    pub workload: Workload,
    /// Concurrent callers.
    pub callers: usize,
    /// The measurements.
    #[serde(flatten)]
    pub measured: Measured,
    /// calls/s ÷ the echo's calls/s (same mode, workload, callers).
    pub ceiling_rate_ratio: Option<f64>,
    /// p50 ÷ the echo's p50.
    pub ceiling_p50_ratio: Option<f64>,
    /// calls/s ÷ nameko's calls/s (nameko measured with its own settings).
    pub nameko_rate_ratio: Option<f64>,
}

/// A row of the settings sweep.
#[derive(Clone, Debug, Serialize)]
pub struct SweepRow {
    /// The variant, e.g. "echo transient, no confirms, prefetch 10".
    pub variant: String,
    /// Who served the calls.
    pub target: Target,
    /// What was called.
    pub workload: Workload,
    /// Concurrent callers.
    pub callers: usize,
    /// The measurements.
    #[serde(flatten)]
    pub measured: Measured,
}

/// A row of the list proportionality phase.
#[derive(Clone, Debug, Serialize)]
pub struct ListRow {
    /// Rows in the table.
    pub table_rows: u64,
    /// Concurrent callers.
    pub callers: usize,
    /// The measurements.
    #[serde(flatten)]
    pub measured: Measured,
}

/// Whether every acknowledged create is in the table after the service
/// stopped.
#[derive(Clone, Debug, Serialize)]
pub struct Durability {
    /// The service.
    pub target: Target,
    /// Message settings.
    pub mode: Mode,
    /// Rows seeded before the service started.
    pub seeded: u64,
    /// Creates the service acknowledged (answered with an id).
    pub acknowledged_creates: u64,
    /// Rows in the table after it stopped.
    pub rows_found: u64,
    /// `rows_found >= seeded + acknowledged_creates`.
    pub ok: bool,
}

/// A target of the issue, met or not.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// The target.
    pub target: String,
    /// `None`: could not be judged (a figure is missing).
    pub met: Option<bool>,
    /// The figures behind it.
    pub detail: String,
}

/// Everything a run produced.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    /// Main phases.
    pub rows: Vec<Row>,
    /// list(limit=100) on tables of different sizes.
    pub list: Vec<ListRow>,
    /// Settings sweep (`--sweep`).
    pub sweep: Vec<SweepRow>,
    /// girolle 2.0.0's client calling person-service and the echo.
    pub girolle_client: Vec<SweepRow>,
    /// Durability checks of the create phases.
    pub durability: Vec<Durability>,
    /// Targets.
    pub checks: Vec<Check>,
    /// Why something was not measured.
    pub notes: Vec<String>,
}

impl Results {
    fn find(&self, target: Target, mode: Mode, workload: Workload, callers: usize) -> Option<&Row> {
        self.rows.iter().find(|r| {
            r.target == target && r.mode == mode && r.workload == workload && r.callers == callers
        })
    }

    /// Fills in the ratio columns.
    pub fn compute_ratios(&mut self) {
        let ratios: Vec<_> = self
            .rows
            .iter()
            .map(|r| {
                let echo = self.find(Target::Echo, r.mode, r.workload, r.callers);
                // nameko runs with its own settings only (persistent).
                let nameko = self.find(Target::Nameko, Mode::Persistent, r.workload, r.callers);
                (
                    echo.and_then(|e| ratio(r.measured.calls_per_s, e.measured.calls_per_s)),
                    echo.and_then(|e| ratio(r.measured.latency.p50_ms, e.measured.latency.p50_ms)),
                    nameko.and_then(|n| ratio(r.measured.calls_per_s, n.measured.calls_per_s)),
                )
            })
            .collect();
        for (row, (rate, p50, nameko)) in self.rows.iter_mut().zip(ratios) {
            row.ceiling_rate_ratio = rate;
            row.ceiling_p50_ratio = p50;
            row.nameko_rate_ratio = nameko;
        }
    }

    /// Judges the issue's targets for each mode measured.
    pub fn compute_checks(&mut self, modes: &[Mode]) {
        let mut checks = Vec::new();
        for &mode in modes {
            let m = mode.label();
            let person = |w, c| self.find(Target::PersonService, mode, w, c);
            let echo = |w, c| self.find(Target::Echo, mode, w, c);
            let nameko = |w, c| self.find(Target::Nameko, Mode::Persistent, w, c);
            let rate = |r: Option<&Row>| r.map(|r| r.measured.calls_per_s);
            let p50 = |r: Option<&Row>| r.map(|r| r.measured.latency.p50_ms);

            let (p, e) = (
                rate(person(Workload::Get, 64)),
                rate(echo(Workload::Get, 64)),
            );
            checks.push(judge(
                format!("[{m}] get at 64 callers >= 0.9 x the echo ceiling"),
                p.zip(e).map(|(p, e)| (p / e, p / e >= 0.9)),
                format!("{} vs echo {} calls/s", fmt_opt(p, 0), fmt_opt(e, 0)),
                |v| format!("{v:.2}x"),
            ));
            let (pc, ec) = (
                rate(person(Workload::Create, 64)),
                rate(echo(Workload::Create, 64)),
            );
            checks.push(judge(
                format!("[{m}] create at 64 callers >= 0.75 x the echo ceiling"),
                pc.zip(ec).map(|(p, e)| (p / e, p / e >= 0.75)),
                format!("{} vs echo {} calls/s", fmt_opt(pc, 0), fmt_opt(ec, 0)),
                |v| format!("{v:.2}x"),
            ));
            for (workload, most) in [(Workload::Get, 1.3), (Workload::Create, 2.0)] {
                let us = |r: Option<&Row>| {
                    r.and_then(|r| per_call_us(r.measured.cost.service_cpu_s, r.measured.calls))
                };
                let (p, e) = (us(person(workload, 64)), us(echo(workload, 64)));
                checks.push(judge(
                    format!(
                        "[{m}] {} at 64 callers: service CPU per call <= {most} x the echo server's",
                        workload.method()
                    ),
                    p.zip(e).map(|(p, e)| (p / e, p / e <= most)),
                    format!("{} vs echo {} µs/call", fmt_opt(p, 0), fmt_opt(e, 0)),
                    |v| format!("{v:.2}x"),
                ));
            }
            checks.push(versus_nameko(
                format!("[{m}] get at 64 callers >= 10x nameko"),
                p,
                rate(nameko(Workload::Get, 64)),
                ISSUE_NAMEKO_GET_64,
            ));
            let (p, e) = (p50(person(Workload::Get, 1)), p50(echo(Workload::Get, 1)));
            checks.push(judge(
                format!("[{m}] get at 1 caller: p50 <= 1.15x the ceiling's p50"),
                p.zip(e).map(|(p, e)| (p / e, p / e <= 1.15)),
                format!("{} ms vs echo {} ms", fmt_opt(p, 3), fmt_opt(e, 3)),
                |v| format!("{v:.2}x"),
            ));
            let (p, n) = (
                rate(person(Workload::Create, 64)),
                rate(nameko(Workload::Create, 64)),
            );
            checks.push(versus_nameko(
                format!("[{m}] create at 64 callers >= 10x nameko"),
                p,
                n,
                ISSUE_NAMEKO_CREATE_64,
            ));
            let d = self
                .durability
                .iter()
                .find(|d| d.target == Target::PersonService && d.mode == mode);
            checks.push(Check {
                target: format!("[{m}] every acknowledged create durable"),
                met: d.map(|d| d.ok),
                detail: d.map_or_else(
                    || "no create phase".to_owned(),
                    |d| {
                        format!(
                            "{} rows after stop >= {} seeded + {} acknowledged (count check after a graceful stop; the store commits WAL with synchronous=FULL before answering)",
                            d.rows_found, d.seeded, d.acknowledged_creates
                        )
                    },
                ),
            });
            let rss = self
                .rows
                .iter()
                .filter(|r| r.target == Target::PersonService && r.mode == mode && r.callers == 64)
                .filter_map(|r| r.measured.cost.service_peak_rss_mb)
                .reduce(f64::max);
            checks.push(judge(
                format!("[{m}] person-service RSS under the 64-caller load < 20 MB"),
                rss.map(|r| (r, r < 20.0)),
                "peak over the 64-caller phases".to_owned(),
                |v| format!("{v:.1} MB"),
            ));
        }
        let small = self.list.iter().min_by_key(|l| l.table_rows);
        let big = self.list.iter().max_by_key(|l| l.table_rows);
        if let (Some(s), Some(b)) = (small, big) {
            if s.table_rows != b.table_rows {
                let r = ratio(b.measured.latency.p50_ms, s.measured.latency.p50_ms);
                checks.push(judge(
                    format!(
                        "list(limit=100) cost follows the page, not the table ({} vs {} rows: p50 ratio <= 1.5)",
                        b.table_rows, s.table_rows
                    ),
                    r.map(|r| (r, r <= 1.5)),
                    format!(
                        "p50 {:.3} vs {:.3} ms; {:.0} vs {:.0} calls/s",
                        b.measured.latency.p50_ms,
                        s.measured.latency.p50_ms,
                        b.measured.calls_per_s,
                        s.measured.calls_per_s
                    ),
                    |v| format!("{v:.2}x"),
                ));
            }
        }
        self.checks = checks;
    }
}

/// nameko's figures in the issue (calls/s at 64 callers), the reference
/// when nameko is not measured, and shown beside the measured one.
const ISSUE_NAMEKO_GET_64: f64 = 950.0;
const ISSUE_NAMEKO_CREATE_64: f64 = 600.0;

/// `rust >= 10 × nameko`, judged against nameko as measured in this run,
/// or against the issue's figure when nameko was not measured.
fn versus_nameko(target: String, rust: Option<f64>, measured: Option<f64>, issue: f64) -> Check {
    let (reference, source) = match measured {
        Some(n) => (n, "nameko measured here"),
        None => (issue, "nameko's figure in the issue (not measured here)"),
    };
    let detail = format!(
        "{} vs {} {reference:.0} calls/s; against the issue's nameko figure ({issue:.0}/s): {}",
        fmt_opt(rust, 0),
        source,
        rust.map_or_else(|| "n/a".to_owned(), |r| format!("{:.1}x", r / issue))
    );
    judge(
        target,
        rust.map(|r| (r / reference, r / reference >= 10.0)),
        detail,
        |v| format!("{v:.1}x"),
    )
}

fn judge(
    target: String,
    value: Option<(f64, bool)>,
    detail: String,
    show: impl Fn(f64) -> String,
) -> Check {
    match value {
        Some((v, met)) => Check {
            target,
            met: Some(met),
            detail: format!("{}: {detail}", show(v)),
        },
        None => Check {
            target,
            met: None,
            detail: format!("n/a: {detail}"),
        },
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

/// `v` with `prec` decimals, or `n/a`.
pub fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.prec$}"))
}

fn per_call_us(cpu: Option<f64>, calls: u64) -> Option<f64> {
    cpu.filter(|_| calls > 0).map(|c| c * 1e6 / calls as f64)
}

/// A Markdown table with aligned columns: the first `left` columns (text)
/// aligned left, the rest (numbers) right.
fn markdown(header: &[&str], left: usize, rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    fn line<S: AsRef<str>>(cells: &[S], widths: &[usize], left: usize) -> String {
        let padded: Vec<String> = cells
            .iter()
            .map(AsRef::as_ref)
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < left {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        format!("| {} |\n", padded.join(" | "))
    }
    let mut out = line(header, &widths, left);
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i < left {
                format!(":{}", "-".repeat(w + 1))
            } else {
                format!("{}:", "-".repeat(w + 1))
            }
        })
        .collect();
    let _ = writeln!(out, "|{}|", rule.join("|"));
    for row in rows {
        out.push_str(&line(row, &widths, left));
    }
    out
}

/// Columns of every table after its key columns: what the callers saw.
const MEASURED_COLUMNS: [&str; 4] = ["calls/s", "p50 ms", "p99 ms", "errors"];

/// Columns of every table at its end: what the window cost.
const COST_COLUMNS: [&str; 8] = [
    "svc peak RSS MB (anon)",
    "svc CPU s",
    "broker CPU s",
    "client CPU s",
    "other CPU s",
    "svc µs/call",
    "broker µs/call",
    "client µs/call",
];

/// A table's header: its key columns, [`MEASURED_COLUMNS`], its own
/// columns (`between`), [`COST_COLUMNS`]; as [`cells`] lays out a row.
fn header<'a>(keys: &[&'a str], between: &[&'a str]) -> Vec<&'a str> {
    [keys, &MEASURED_COLUMNS[..], between, &COST_COLUMNS[..]].concat()
}

/// A table's row, in the order of [`header`].
fn cells(keys: Vec<String>, m: &Measured, between: Vec<String>) -> Vec<String> {
    let c = &m.cost;
    let mut out = keys;
    out.extend([
        format!("{:.0}", m.calls_per_s),
        format!("{:.3}", m.latency.p50_ms),
        format!("{:.3}", m.latency.p99_ms),
        m.errors.to_string(),
    ]);
    out.extend(between);
    out.extend([
        format!(
            "{} ({})",
            fmt_opt(c.service_peak_rss_mb, 1),
            fmt_opt(c.service_peak_anon_mb, 1)
        ),
        fmt_opt(c.service_cpu_s, 2),
        fmt_opt(c.broker_cpu_s, 2),
        fmt_opt(c.client_cpu_s, 2),
        fmt_opt(c.other_cpu_s, 2),
        fmt_opt(per_call_us(c.service_cpu_s, m.calls), 0),
        fmt_opt(per_call_us(c.broker_cpu_s, m.calls), 0),
        fmt_opt(per_call_us(c.client_cpu_s, m.calls), 0),
    ]);
    out
}

/// The table of one mode; nameko's rows (measured once, with its own
/// settings) go in the table with `include_nameko`.
pub fn mode_table(results: &Results, mode: Mode, include_nameko: bool) -> String {
    // A target's ratio to itself is written "1".
    let ratio_cell = |own: bool, v: Option<f64>, prec: usize| {
        if own {
            "1".to_owned()
        } else {
            fmt_opt(v, prec)
        }
    };
    let rows: Vec<Vec<String>> = results
        .rows
        .iter()
        .filter(|r| {
            if matches!(r.target, Target::Nameko | Target::Girolle) {
                include_nameko
            } else {
                r.mode == mode
            }
        })
        .map(|r| {
            let (echo, nameko) = (r.target == Target::Echo, r.target == Target::Nameko);
            cells(
                vec![
                    r.target.label().to_owned(),
                    r.workload.method().to_owned(),
                    r.callers.to_string(),
                ],
                &r.measured,
                vec![
                    ratio_cell(echo, r.ceiling_rate_ratio, 2),
                    ratio_cell(echo, r.ceiling_p50_ratio, 2),
                    ratio_cell(nameko, r.nameko_rate_ratio, 1),
                ],
            )
        })
        .collect();
    let header = header(
        &["target", "workload", "callers"],
        &["÷ceiling calls/s", "÷ceiling p50", "× nameko"],
    );
    markdown(&header, 2, &rows)
}

/// The list proportionality table.
pub fn list_table(results: &Results) -> String {
    let rows: Vec<Vec<String>> = results
        .list
        .iter()
        .map(|l| {
            cells(
                vec![l.table_rows.to_string(), l.callers.to_string()],
                &l.measured,
                Vec::new(),
            )
        })
        .collect();
    markdown(&header(&["table rows", "callers"], &[]), 0, &rows)
}

/// The settings sweep table.
pub fn sweep_table(results: &Results) -> String {
    let rows: Vec<Vec<String>> = results
        .sweep
        .iter()
        .map(|s| {
            cells(
                vec![
                    s.variant.clone(),
                    s.workload.method().to_owned(),
                    s.callers.to_string(),
                ],
                &s.measured,
                Vec::new(),
            )
        })
        .collect();
    markdown(&header(&["variant", "workload", "callers"], &[]), 2, &rows)
}

/// girolle's client against our service and the echo.
pub fn girolle_client_table(results: &Results) -> String {
    let rows: Vec<Vec<String>> = results
        .girolle_client
        .iter()
        .map(|s| {
            cells(
                vec![
                    s.variant.clone(),
                    s.workload.method().to_owned(),
                    s.callers.to_string(),
                ],
                &s.measured,
                Vec::new(),
            )
        })
        .collect();
    markdown(
        &header(&["served by", "workload", "callers"], &[]),
        2,
        &rows,
    )
}

/// The targets, one line each.
pub fn checks_text(results: &Results) -> String {
    let mut out = String::new();
    for c in &results.checks {
        let tag = match c.met {
            Some(true) => "MET   ",
            Some(false) => "MISSED",
            None => "n/a   ",
        };
        let _ = writeln!(out, "- {tag} {}: {}", c.target, c.detail);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured() -> Measured {
        Measured {
            calls: 10,
            calls_per_s: 10.0,
            latency: crate::stats::Latency {
                p50_ms: 1.0,
                ..Default::default()
            },
            ..Measured::default()
        }
    }

    /// The `|` of each line of `table`: its cells plus one.
    fn cells_per_line(table: &str) -> Vec<usize> {
        table.lines().map(|l| l.matches('|').count()).collect()
    }

    #[test]
    fn tables_keep_their_columns() {
        let mut results = Results::default();
        for target in [Target::Echo, Target::PersonService, Target::Nameko] {
            results.rows.push(Row {
                target,
                mode: Mode::Persistent,
                workload: Workload::Get,
                callers: 1,
                measured: measured(),
                ceiling_rate_ratio: None,
                ceiling_p50_ratio: None,
                nameko_rate_ratio: None,
            });
        }
        results.compute_ratios();
        results.list.push(ListRow {
            table_rows: 1000,
            callers: 8,
            measured: measured(),
        });
        results.sweep.push(SweepRow {
            variant: "echo persistent".into(),
            target: Target::Echo,
            workload: Workload::Get,
            callers: 64,
            measured: measured(),
        });

        let main = mode_table(&results, Mode::Persistent, true);
        assert!(main.starts_with(
            "| target         | workload | callers | calls/s | p50 ms | p99 ms | errors | ÷ceiling calls/s | ÷ceiling p50 | × nameko | svc peak RSS MB (anon) | svc CPU s | broker CPU s | client CPU s | other CPU s | svc µs/call | broker µs/call | client µs/call |\n|:---------------|:---------|--------:|"
        ), "{main}");
        // A target's ratio to itself is "1", the others' as computed.
        let ratios = |line: &str| -> Vec<String> {
            line.split('|')
                .map(str::trim)
                .skip(8)
                .take(3)
                .map(str::to_owned)
                .collect()
        };
        let lines: Vec<&str> = main.lines().collect();
        assert_eq!(ratios(lines[2]), ["1", "1", "1.0"]);
        assert_eq!(ratios(lines[3]), ["1.00", "1.00", "1.0"]);
        assert_eq!(ratios(lines[4]), ["1.00", "1.00", "1"]);
        for table in [main, list_table(&results), sweep_table(&results)] {
            let counts = cells_per_line(&table);
            assert!(counts.iter().all(|&n| n == counts[0]), "{table}");
        }
        assert!(list_table(&results).starts_with("| table rows | callers | calls/s |"));
        assert!(
            sweep_table(&results).starts_with("| variant         | workload | callers | calls/s |")
        );
    }
}
