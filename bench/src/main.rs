//! `bench`: drives a running person-service over RabbitMQ through the Rust
//! `RpcProxy` and prints, for `get` on a pre-seeded table and for `create`,
//! at 1, 8 and 64 concurrent callers: calls per second, latency p50 / p99,
//! and the service's peak RSS and CPU time; beside it, in the same run, the
//! ceiling (a bare lapin request/reply echo with the same message
//! properties and acknowledgement rules) and optionally Python nameko
//! serving the same table. See BENCHMARKS.md at the repository root.
//!
//! Everything measured runs as a child process, so its RSS and CPU come
//! from `/proc`; the broker's CPU (beam.smp) and the callers' own are
//! reported per phase too. Load goes to a broker on the loopback only,
//! bounded in time and count.

mod chart;
mod echo;
mod host;
mod load;
mod procstat;
mod report;
mod seed;
mod stats;
mod targets;

use clap::{Args, Parser, Subcommand, ValueEnum};
use load::{Client, Measured, PhaseSpec, Workload};
use procstat::Meter;
use report::{Durability, ListRow, Mode, Results, Row, SweepRow, Target};
use rpc_core::{Config, RetryPolicy, RpcProxy};
use serde::Serialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use targets::{PersonHost, PersonSpec, Proc};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Benchmarks person-service over RabbitMQ against a bare lapin echo ceiling (and Python nameko).",
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  \
cargo build --release -p person-service -p bench && target/release/bench\n  \
bench --modes both --sweep --json results.json\n  \
bench --quick\n\n\
Load goes to the broker at --amqp-uri, which must be on the loopback."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Hidden>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Hidden {
    /// The bare echo server (run by the bench itself).
    #[command(hide = true)]
    EchoServer(EchoServerArgs),
    /// person-service's code hosted by the bench (run by the bench itself).
    #[command(hide = true)]
    ServePerson(host::ServePerson),
}

#[derive(Debug, Args)]
struct EchoServerArgs {
    #[arg(long)]
    amqp_uri: String,
    #[arg(long)]
    name: String,
    #[arg(long, default_value_t = 10)]
    prefetch: u16,
    #[arg(long)]
    transient: bool,
    #[arg(long)]
    no_confirm: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Modes {
    /// Delivery mode 2 (nameko's default), confirms.
    Persistent,
    /// Delivery mode 1, confirms.
    Transient,
    /// Both, one table each.
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum NamekoArg {
    /// Run it when the venv exists or can be created; otherwise say why not.
    Auto,
    /// Do not run it.
    Off,
    /// Fail when it cannot run.
    Require,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum PersonHostArg {
    /// The release binary when found beside this one, else `bench`.
    Auto,
    /// The person-service binary (--person-bin or beside this one).
    Binary,
    /// person-service's code hosted by this binary (`bench serve-person`).
    Bench,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum WorkloadArg {
    Get,
    Create,
}

#[derive(Clone, Debug, Args)]
struct RunArgs {
    /// Broker (loopback only).
    #[arg(
        long,
        env = "AMQP_URI",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    amqp_uri: String,
    /// Smoke run (< 1 minute): warm-up 0.2 s, window 1 s or 2,000 calls,
    /// 1,000 seeded rows, no nameko, list on 1,000 vs 100,000 rows.
    /// Options given explicitly still win.
    #[arg(long)]
    quick: bool,
    /// Message settings to measure: one table each.
    #[arg(long, value_enum, default_value_t = Modes::Persistent)]
    modes: Modes,
    /// Same as --modes transient.
    #[arg(long, conflicts_with = "modes")]
    transient: bool,
    /// Concurrent callers, one phase each.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8, 64])]
    callers: Vec<usize>,
    /// Workloads.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [WorkloadArg::Get, WorkloadArg::Create])]
    workloads: Vec<WorkloadArg>,
    /// Warm-up per phase, seconds [default: 1; --quick 0.2].
    #[arg(long)]
    warmup: Option<f64>,
    /// Measured window per phase, seconds [default: 5; --quick 1].
    #[arg(long)]
    window: Option<f64>,
    /// Most calls in a measured window [default: 20000; --quick 2000].
    #[arg(long)]
    max_calls: Option<u64>,
    /// People seeded for `get` [default: 10000; --quick 1000].
    #[arg(long)]
    seed_rows: Option<u64>,
    /// max_workers of person-service and nameko.
    #[arg(long, default_value_t = 10)]
    max_workers: u16,
    /// Prefetch of person-service and of the echo [default: person-service's
    /// own default]. nameko has no separate prefetch: its prefetch is its
    /// max_workers.
    #[arg(long)]
    prefetch: Option<u16>,
    /// Python nameko side by side [default: auto; --quick off].
    #[arg(long, value_enum)]
    nameko: Option<NamekoArg>,
    /// The nameko venv (created with scripts/nameko-venv when missing)
    /// [default: target/nameko-venv in the workspace].
    #[arg(long)]
    nameko_venv: Option<PathBuf>,
    /// How person-service runs.
    #[arg(long, value_enum, default_value_t = PersonHostArg::Auto)]
    person_host: PersonHostArg,
    /// The person-service binary [default: beside this binary].
    #[arg(long)]
    person_bin: Option<PathBuf>,
    /// Table sizes of the list(limit=100) phase [default:
    /// 1000,1000000; --quick 1000,100000].
    #[arg(long, value_delimiter = ',')]
    list_rows: Option<Vec<u64>>,
    /// Skip the list phase.
    #[arg(long)]
    no_list: bool,
    /// Callers of the list phase.
    #[arg(long, default_value_t = 8)]
    list_callers: usize,
    /// Also sweep message settings: echo with persistent/transient ×
    /// confirms on/off, and person-service with max_workers 64.
    #[arg(long)]
    sweep: bool,
    /// Per-call timeout, seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// RUST_LOG of the person-service child.
    #[arg(long, default_value = "info")]
    service_log: String,
    /// Extra environment of the person-service child, KEY=VALUE
    /// (repeatable), e.g. MALLOC_ARENA_MAX=2 to see where memory goes.
    #[arg(long, value_name = "KEY=VALUE")]
    service_env: Vec<String>,
    /// Before starting, wait up to this many seconds for the machine to be
    /// quiet (under 25% of all CPUs busy, the broker aside, for 3 s in a
    /// row); then start anyway, with a warning.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    wait_quiet: f64,
    /// Run person-service on PostgreSQL: the server's URL without a
    /// database (e.g. postgres://postgres@127.0.0.1:5432). Each target gets
    /// a database of its own, dropped afterwards. Default: SQLite files.
    #[arg(long, value_name = "URL", hide_env_values = true)]
    pg_url: Option<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// girolle 2.0.0 side by side (its service, and its client calling
    /// person-service and the echo) [default: auto; --quick off]. Needs
    /// `bench/girolle-person` built (see BENCHMARKS.md).
    #[arg(long, value_enum)]
    girolle: Option<NamekoArg>,
    /// Where girolle-person and girolle-load are [default:
    /// target/girolle/release, else beside this binary].
    #[arg(long)]
    girolle_dir: Option<PathBuf>,
    /// Also draw calls/s and p99 against callers to this SVG file.
    #[arg(long)]
    chart: Option<PathBuf>,
}

/// The options in force, defaults resolved.
#[derive(Clone, Debug, Serialize)]
struct Plan {
    broker: String,
    modes: Vec<Mode>,
    callers: Vec<usize>,
    workloads: Vec<Workload>,
    warmup_s: f64,
    window_s: f64,
    max_calls: u64,
    seed_rows: u64,
    max_workers: u16,
    prefetch: u16,
    nameko: NamekoArg,
    nameko_venv: PathBuf,
    person_host: String,
    list_rows: Vec<u64>,
    list_callers: usize,
    sweep: bool,
    timeout_s: f64,
    service_log: String,
    service_env: Vec<(String, String)>,
    wait_quiet_s: f64,
    /// The person-service store: "sqlite", or the PostgreSQL server
    /// (password masked).
    store: String,
    #[serde(skip)]
    pg_url: Option<String>,
    girolle: NamekoArg,
    girolle_dir: Option<PathBuf>,
    #[serde(skip)]
    amqp_uri: String,
    #[serde(skip)]
    host: PersonHost,
}

fn plan(args: &RunArgs) -> Result<Plan, String> {
    // A benchmark measures one broker; its raw AMQP clients connect to one.
    let list: rpc_core::BrokerList = args
        .amqp_uri
        .parse()
        .map_err(|e| format!("--amqp-uri: {e}"))?;
    if list.len() > 1 {
        return Err(format!(
            "--amqp-uri: the benchmark measures one broker; give one URI, not a list of {} ({list})",
            list.len()
        ));
    }
    let uri: rpc_core::AmqpUri = args
        .amqp_uri
        .parse()
        .map_err(|e| format!("--amqp-uri: {e}"))?;
    let loopback = uri.host() == "localhost"
        || uri
            .host()
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(format!(
            "--amqp-uri names {}: the bench sends load to the loopback only",
            uri.endpoint()
        ));
    }
    let q = args.quick;
    let modes = match (args.transient, args.modes) {
        (true, _) | (false, Modes::Transient) => vec![Mode::Transient],
        (false, Modes::Persistent) => vec![Mode::Persistent],
        (false, Modes::Both) => vec![Mode::Persistent, Mode::Transient],
    };
    let binary = args
        .person_bin
        .clone()
        .or_else(targets::default_person_binary);
    let host = match (args.person_host, binary) {
        (PersonHostArg::Bench, _) | (PersonHostArg::Auto, None) => PersonHost::Bench,
        (_, Some(path)) => PersonHost::Binary(path),
        (PersonHostArg::Binary, None) => {
            return Err("no person-service binary beside this one: build it (`cargo build --release -p person-service`), pass --person-bin, or use --person-host bench".into())
        }
    };
    if let PersonHost::Binary(path) = &host {
        if !path.is_file() {
            return Err(format!("--person-bin {}: no such file", path.display()));
        }
    }
    let secs = |v: f64, what: &str| {
        if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(format!("{what} must be a number of seconds"))
        }
    };
    if args.callers.is_empty() || args.callers.contains(&0) || args.list_callers == 0 {
        return Err("callers must be at least 1".into());
    }
    let mut workloads: Vec<Workload> = args
        .workloads
        .iter()
        .map(|w| match w {
            WorkloadArg::Get => Workload::Get,
            WorkloadArg::Create => Workload::Create,
        })
        .collect();
    workloads.dedup();
    Ok(Plan {
        broker: uri.to_string(),
        modes,
        callers: args.callers.clone(),
        workloads,
        warmup_s: secs(args.warmup.unwrap_or(if q { 0.2 } else { 1.0 }), "--warmup")?,
        window_s: secs(args.window.unwrap_or(if q { 1.0 } else { 5.0 }), "--window")?,
        max_calls: args
            .max_calls
            .unwrap_or(if q { 2000 } else { 20_000 })
            .max(1),
        seed_rows: args
            .seed_rows
            .unwrap_or(if q { 1000 } else { 10_000 })
            .max(1),
        max_workers: args.max_workers.max(1),
        prefetch: args.prefetch.filter(|p| *p > 0).unwrap_or(
            match person_service::settings::DEFAULT_PREFETCH {
                0 => args.max_workers.max(1),
                p => p,
            },
        ),
        nameko: args
            .nameko
            .unwrap_or(if q { NamekoArg::Off } else { NamekoArg::Auto }),
        nameko_venv: args
            .nameko_venv
            .clone()
            .unwrap_or_else(|| targets::workspace_root().join("target/nameko-venv")),
        person_host: match &host {
            PersonHost::Binary(p) => format!("binary {}", p.display()),
            PersonHost::Bench => "hosted by bench (serve-person)".to_owned(),
        },
        list_rows: if args.no_list {
            Vec::new()
        } else {
            args.list_rows.clone().unwrap_or_else(|| {
                if q {
                    vec![1000, 100_000]
                } else {
                    vec![1000, 1_000_000]
                }
            })
        },
        list_callers: args.list_callers,
        sweep: args.sweep,
        timeout_s: secs(args.timeout, "--timeout")?.max(0.1),
        service_log: args.service_log.clone(),
        service_env: args
            .service_env
            .iter()
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .ok_or_else(|| format!("--service-env {kv}: not KEY=VALUE"))
            })
            .collect::<Result<_, _>>()?,
        wait_quiet_s: secs(args.wait_quiet, "--wait-quiet")?,
        store: args.pg_url.as_deref().map_or_else(
            || "sqlite".to_owned(),
            |u| {
                format!(
                    "postgres {}",
                    person_service::store::Database::parse(u).redacted()
                )
            },
        ),
        pg_url: args.pg_url.clone(),
        girolle: args
            .girolle
            .unwrap_or(if q { NamekoArg::Off } else { NamekoArg::Auto }),
        girolle_dir: args
            .girolle_dir
            .clone()
            .or_else(targets::default_girolle_dir),
        amqp_uri: args.amqp_uri.clone(),
        host,
    })
}

/// Facts about the machine, for the record.
#[derive(Clone, Debug, Serialize)]
struct Machine {
    date: String,
    nproc: usize,
    cpu_model: String,
    memory_gib: f64,
    kernel: String,
    rabbitmq_version: String,
    broker_pid: Option<u32>,
    /// 1-minute load average when the run started: other work on the
    /// machine skews every figure (see the "other CPU s" column).
    load_average_at_start: Option<f64>,
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn machine(broker_pid: Option<u32>) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    Machine {
        date: command_output("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"])
            .unwrap_or_else(|| "unknown".into()),
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|v| v.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, m)| m.trim().to_owned()),
        memory_gib: mem_kib / 1024.0 / 1024.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned()),
        rabbitmq_version: command_output("rabbitmqctl", &["-q", "version"])
            .unwrap_or_else(|| "unknown (rabbitmqctl version failed)".into()),
        broker_pid,
        load_average_at_start: procstat::load_average(),
    }
}

/// What serves the calls of one measurement.
#[derive(Clone, Debug)]
enum Server {
    Echo {
        persistent: bool,
        confirms: bool,
        prefetch: u16,
        /// `frame_max` asked by the server's connection (URI query).
        frame_max: Option<u32>,
    },
    Person {
        persistent: bool,
        max_workers: u16,
        prefetch: u16,
        rows: u64,
        /// `frame_max` asked by the service's connections (URI query).
        frame_max: Option<u32>,
    },
    Nameko {
        rows: u64,
    },
    Girolle {
        rows: u64,
    },
}

impl Server {
    fn kind(&self) -> &'static str {
        match self {
            Server::Echo { .. } => "echo",
            Server::Person { .. } => "person",
            Server::Nameko { .. } => "nameko",
            Server::Girolle { .. } => "girolle",
        }
    }

    /// Who it is in the results.
    fn target(&self) -> Target {
        match self {
            Server::Echo { .. } => Target::Echo,
            Server::Person { .. } => Target::PersonService,
            Server::Nameko { .. } => Target::Nameko,
            Server::Girolle { .. } => Target::Girolle,
        }
    }

    /// Whether its callers publish persistent messages (nameko runs with
    /// its own settings: persistent).
    fn persistent(&self) -> bool {
        match self {
            Server::Echo { persistent, .. } | Server::Person { persistent, .. } => *persistent,
            Server::Nameko { .. } | Server::Girolle { .. } => true,
        }
    }

    fn rows(&self) -> u64 {
        match self {
            Server::Echo { .. } => 1,
            Server::Person { rows, .. } | Server::Nameko { rows } | Server::Girolle { rows } => {
                *rows
            }
        }
    }
}

/// The results of one server's phases.
struct Served {
    target: Target,
    phases: Vec<(Workload, usize, Measured)>,
    durability: Option<(u64, u64, u64)>,
}

struct Bench<'a> {
    plan: &'a Plan,
    dir: tempfile::TempDir,
    broker: Option<u32>,
}

impl Bench<'_> {
    fn spec(&self, workload: Workload, callers: usize, rows: u64) -> PhaseSpec {
        PhaseSpec {
            workload,
            callers,
            warmup: Duration::from_secs_f64(self.plan.warmup_s),
            window: Duration::from_secs_f64(self.plan.window_s),
            max_calls: self.plan.max_calls,
            rows,
            timeout: Duration::from_secs_f64(self.plan.timeout_s),
        }
    }

    /// Starts `server`, runs `phases` against it with a client publishing
    /// as [`Server::persistent`] says, stops it, and cleans up.
    async fn measure(
        &self,
        label: &str,
        server: &Server,
        phases: &[(Workload, usize)],
    ) -> Result<Served, String> {
        let name = format!(
            "bench-{}-{}",
            server.kind(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let result = self.measure_named(&name, label, server, phases).await;
        targets::delete_service_entities(&self.plan.amqp_uri, &name).await;
        result
    }

    /// Measures `server` and pushes its phases to the settings sweep as
    /// `variant`.
    async fn sweep(
        &self,
        results: &mut Results,
        variant: String,
        server: Server,
        phases: &[(Workload, usize)],
    ) -> Result<(), String> {
        let served = self.measure(&variant, &server, phases).await?;
        for (workload, callers, measured) in served.phases {
            results.sweep.push(SweepRow {
                variant: variant.clone(),
                target: served.target,
                workload,
                callers,
                measured,
            });
        }
        Ok(())
    }

    async fn measure_named(
        &self,
        name: &str,
        label: &str,
        server: &Server,
        phases: &[(Workload, usize)],
    ) -> Result<Served, String> {
        let plan = self.plan;
        let log = self.dir.path().join(format!("{name}.log"));
        let db = self.dir.path().join(format!("{name}.db"));
        let rows = server.rows();
        // On PostgreSQL the person-service target's database is its own,
        // dropped when this returns.
        let pg = match (&plan.pg_url, server) {
            (Some(pg), Server::Person { .. }) => {
                let started = std::time::Instant::now();
                let pg = seed::pg_create_db(pg, name, rows).await?;
                eprintln!(
                    "  seeded {rows} rows (PostgreSQL) in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                Some(pg)
            }
            _ => None,
        };
        let db_arg = pg
            .as_ref()
            .map_or_else(|| db.to_string_lossy().into_owned(), seed::PgDb::url);
        if !matches!(server, Server::Echo { .. }) && pg.is_none() {
            let path = db.clone();
            let started = std::time::Instant::now();
            tokio::task::spawn_blocking(move || seed::create_db(&path, rows))
                .await
                .map_err(|e| e.to_string())??;
            eprintln!(
                "  seeded {rows} rows in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        let mut proc = match server {
            Server::Echo {
                persistent,
                confirms,
                prefetch,
                frame_max,
            } => targets::echo_server(
                &with_frame_max(&plan.amqp_uri, *frame_max),
                name,
                *prefetch,
                *persistent,
                *confirms,
                log,
            )?,
            Server::Person {
                persistent,
                max_workers,
                prefetch,
                frame_max,
                ..
            } => {
                // Replies are as persistent as the requests, so the binary
                // serves the transient mode too (its events stay persistent;
                // the bench has no event subscribers).
                targets::person_service(
                    &plan.host,
                    &PersonSpec {
                        amqp_uri: &with_frame_max(&plan.amqp_uri, *frame_max),
                        db: &db_arg,
                        name,
                        max_workers: *max_workers,
                        prefetch: *prefetch,
                        persistent: *persistent,
                        log_filter: &plan.service_log,
                        env: &plan.service_env,
                    },
                    log,
                )?
            }
            Server::Nameko { .. } => targets::nameko_person(
                &plan.nameko_venv,
                self.dir.path(),
                &plan.amqp_uri,
                &db,
                name,
                plan.max_workers,
                log,
            )?,
            Server::Girolle { .. } => targets::girolle_person(
                plan.girolle_dir
                    .as_deref()
                    .ok_or("girolle-person is not built")?,
                &plan.amqp_uri,
                &db,
                name,
                plan.max_workers,
                log,
            )?,
        };
        let client = match server {
            Server::Echo { confirms, .. } => Client::Echo {
                client: Box::new(
                    echo::EchoClient::connect(
                        &plan.amqp_uri,
                        echo::EchoSettings {
                            persistent: server.persistent(),
                            confirms: *confirms,
                        },
                    )
                    .await?,
                ),
                service: name.to_owned(),
            },
            _ => {
                let mut config = Config::new(&plan.amqp_uri).map_err(|e| e.to_string())?;
                config.persistent = server.persistent();
                config.rpc_timeout = Duration::from_secs_f64(plan.timeout_s);
                config.connect_retry = RetryPolicy {
                    attempts: Some(3),
                    ..RetryPolicy::forever()
                };
                Client::Proxy {
                    proxy: RpcProxy::connect(config).await.map_err(|e| e.to_string())?,
                    service: name.to_owned(),
                }
            }
        };
        let client = Arc::new(client);
        let outcome = self
            .run_phases(&client, &mut proc, label, phases, rows)
            .await;
        match Arc::try_unwrap(client) {
            Ok(Client::Proxy { proxy, .. }) => proxy.close().await,
            Ok(Client::Echo { client, .. }) => client.close().await,
            Err(_) => {}
        }
        tokio::task::block_in_place(|| proc.stop());
        let errors = proc.log_lines_with("ERROR", 3);
        if !errors.is_empty() {
            eprintln!(
                "  {label}: errors in its log:\n    {}",
                errors.join("\n    ")
            );
        }
        let phases = outcome?;
        let creates: u64 = phases
            .iter()
            .filter(|(w, _, _)| *w == Workload::Create)
            .map(|(_, _, m)| m.calls + m.warmup_calls)
            .sum();
        let durability = if matches!(server, Server::Echo { .. })
            || !phases.iter().any(|(w, _, _)| *w == Workload::Create)
        {
            None
        } else if let Some(pg) = &pg {
            Some((rows, creates, seed::pg_count(&pg.url()).await?))
        } else {
            let path = db.clone();
            let found = tokio::task::spawn_blocking(move || seed::count(&path))
                .await
                .map_err(|e| e.to_string())??;
            Some((rows, creates, found))
        };
        Ok(Served {
            target: server.target(),
            phases,
            durability,
        })
    }

    async fn run_phases(
        &self,
        client: &Arc<Client>,
        proc: &mut Proc,
        label: &str,
        phases: &[(Workload, usize)],
        rows: u64,
    ) -> Result<Vec<(Workload, usize, Measured)>, String> {
        let ready_within = Duration::from_secs(60);
        client
            .wait_ready(ready_within, || proc.check_running())
            .await
            .map_err(|e| format!("{label}: {e}\n{}", proc.log_tail(20)))?;
        let pid = proc.pid();
        let mut out = Vec::new();
        for &(workload, callers) in phases {
            let spec = self.spec(workload, callers, rows);
            let m = load::run_phase(client, spec, || Meter::start(pid, self.broker)).await;
            eprintln!(
                "  {label:<40} {:<6} x{callers:<3} {:>8.0} calls/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}{}",
                workload.method(),
                m.calls_per_s,
                m.latency.p50_ms,
                m.latency.p99_ms,
                m.errors,
                m.first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            );
            out.push((workload, callers, m));
            proc.check_running()?;
        }
        Ok(out)
    }
}

/// The URI with `frame_max=N` added to its query.
fn with_frame_max(uri: &str, frame_max: Option<u32>) -> String {
    match frame_max {
        None => uri.to_owned(),
        Some(n) if uri.contains('?') => format!("{uri}&frame_max={n}"),
        Some(n) => format!("{uri}?frame_max={n}"),
    }
}

fn main_phases(plan: &Plan) -> Vec<(Workload, usize)> {
    plan.workloads
        .iter()
        .flat_map(|&w| plan.callers.iter().map(move |&c| (w, c)))
        .collect()
}

fn push_rows(results: &mut Results, mode: Mode, served: Served) {
    let target = served.target;
    for (workload, callers, measured) in served.phases {
        results.rows.push(Row {
            target,
            mode,
            workload,
            callers,
            measured,
            ceiling_rate_ratio: None,
            ceiling_p50_ratio: None,
            nameko_rate_ratio: None,
        });
    }
    if let Some((seeded, acknowledged_creates, rows_found)) = served.durability {
        results.durability.push(Durability {
            target,
            mode,
            seeded,
            acknowledged_creates,
            rows_found,
            ok: rows_found >= seeded + acknowledged_creates,
        });
    }
}

/// Waits (up to `within`) until the machine is quiet: under 25% of all
/// CPUs busy, the broker aside, for 3 one-second samples in a row. Returns
/// the busy fraction of the last sample.
async fn wait_quiet(within: Duration, broker: Option<u32>) -> Option<f64> {
    let deadline = tokio::time::Instant::now() + within;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut quiet = 0;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        let busy0 = procstat::machine_busy_seconds()?;
        let broker0 = broker.and_then(procstat::cpu_seconds).unwrap_or(0.0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy = procstat::machine_busy_seconds()? - busy0;
        let broker_busy = broker.and_then(procstat::cpu_seconds).unwrap_or(0.0) - broker0;
        let fraction = ((busy - broker_busy) / cpus).max(0.0);
        last = Some(fraction);
        quiet = if fraction < 0.25 { quiet + 1 } else { 0 };
        if quiet >= 3 {
            return last;
        }
    }
    eprintln!(
        "warning: the machine did not get quiet within {within:?} (last: {:.0}% of the CPUs busy besides the broker); starting anyway",
        last.unwrap_or(1.0) * 100.0
    );
    last
}

async fn run(plan: &Plan) -> Result<(Results, Machine), String> {
    let broker = procstat::find_process("beam.smp");
    if plan.wait_quiet_s > 0.0 {
        eprintln!(
            "waiting up to {} s for the machine to be quiet",
            plan.wait_quiet_s
        );
        wait_quiet(Duration::from_secs_f64(plan.wait_quiet_s), broker).await;
    }
    let machine = machine(broker);
    let dir = tempfile::Builder::new()
        .prefix("person-bench-")
        .tempdir()
        .map_err(|e| format!("a temporary directory: {e}"))?;
    eprintln!(
        "bench: {} | {} x {} | RabbitMQ {} (beam.smp pid {}) | person-service: {}",
        machine.date,
        machine.nproc,
        machine.cpu_model,
        machine.rabbitmq_version,
        broker.map_or_else(|| "not found".into(), |p| p.to_string()),
        plan.person_host
    );
    if let Some(load) = machine.load_average_at_start.filter(|&l| l > 0.5) {
        eprintln!("warning: load average {load:.2} before the run: other work competes for the CPUs (see the \"other CPU s\" column)");
    }
    eprintln!(
        "phases: warm-up {} s, window {} s or {} calls; callers {:?}; {} seeded rows; max_workers {}, prefetch {}",
        plan.warmup_s, plan.window_s, plan.max_calls, plan.callers, plan.seed_rows, plan.max_workers, plan.prefetch
    );
    let bench = Bench { plan, dir, broker };
    let mut results = Results::default();
    if broker.is_none() {
        results
            .notes
            .push("beam.smp not found: broker CPU is not measured".into());
    }
    let phases = main_phases(plan);
    let nameko_ok = plan.nameko != NamekoArg::Off
        && match tokio::task::block_in_place(|| targets::ensure_nameko_venv(&plan.nameko_venv)) {
            Ok(()) => true,
            Err(e) => {
                nameko_not_measured(plan, &mut results, e)?;
                false
            }
        };
    for &mode in &plan.modes {
        let persistent = mode == Mode::Persistent;
        eprintln!("== {} ==", mode.label());
        let echo = Server::Echo {
            persistent,
            confirms: true,
            prefetch: plan.prefetch,
            frame_max: None,
        };
        let label = format!("echo ceiling ({})", mode.label());
        let served = bench.measure(&label, &echo, &phases).await?;
        push_rows(&mut results, mode, served);
        let person = Server::Person {
            persistent,
            max_workers: plan.max_workers,
            prefetch: plan.prefetch,
            rows: plan.seed_rows,
            frame_max: None,
        };
        let label = format!("person-service ({})", mode.label());
        let served = bench.measure(&label, &person, &phases).await?;
        push_rows(&mut results, mode, served);
    }
    if nameko_ok {
        eprintln!("== nameko 2.14.1 (its own settings: persistent, confirms) ==");
        let server = Server::Nameko {
            rows: plan.seed_rows,
        };
        match bench.measure("nameko 2.14.1", &server, &phases).await {
            Ok(served) => push_rows(&mut results, Mode::Persistent, served),
            Err(e) => nameko_not_measured(plan, &mut results, e)?,
        }
    }
    if plan.girolle != NamekoArg::Off {
        girolle_side(&bench, &mut results, &phases).await?;
    }
    if !plan.list_rows.is_empty() {
        eprintln!(
            "== list(limit=100) on tables of {:?} rows ==",
            plan.list_rows
        );
        for &rows in &plan.list_rows {
            let server = Server::Person {
                persistent: true,
                max_workers: plan.max_workers,
                prefetch: plan.prefetch,
                rows,
                frame_max: None,
            };
            let label = format!("person-service list, {rows} rows");
            let served = bench
                .measure(&label, &server, &[(Workload::List, plan.list_callers)])
                .await?;
            for (_, callers, measured) in served.phases {
                results.list.push(ListRow {
                    table_rows: rows,
                    callers,
                    measured,
                });
            }
        }
    }
    if plan.sweep {
        eprintln!("== settings sweep ==");
        let echo_at_64 = [(Workload::Get, 64)];
        let person_at_64 = [(Workload::Get, 64), (Workload::Create, 64)];
        for (persistent, confirms) in [(true, true), (false, true), (true, false), (false, false)] {
            let variant = format!(
                "echo {}, confirms {}, prefetch {}",
                if persistent {
                    "persistent"
                } else {
                    "transient"
                },
                if confirms { "on" } else { "off" },
                plan.prefetch
            );
            let server = Server::Echo {
                persistent,
                confirms,
                prefetch: plan.prefetch,
                frame_max: None,
            };
            let phases = [(Workload::Get, 1), (Workload::Get, 64)];
            bench.sweep(&mut results, variant, server, &phases).await?;
        }
        // nameko's rule, prefetch = max_workers, beside the prefetch in use.
        let nameko_rule = plan.max_workers;
        if nameko_rule != plan.prefetch {
            let variant = format!("echo persistent, confirms on, prefetch {nameko_rule}");
            let server = Server::Echo {
                persistent: true,
                confirms: true,
                prefetch: nameko_rule,
                frame_max: None,
            };
            bench
                .sweep(&mut results, variant, server, &echo_at_64)
                .await?;
            let variant = format!(
                "person-service persistent, max_workers {}, prefetch {nameko_rule} (nameko's rule)",
                plan.max_workers
            );
            let server = Server::Person {
                persistent: true,
                max_workers: plan.max_workers,
                prefetch: nameko_rule,
                rows: plan.seed_rows,
                frame_max: None,
            };
            bench
                .sweep(&mut results, variant, server, &person_at_64)
                .await?;
        }
        // lapin keeps two ring buffers of 32 × frame_max per connection
        // (4 MiB each at RabbitMQ's default frame_max of 128 KiB).
        let frame_max = 16_384;
        let variant = format!(
            "echo persistent, confirms on, prefetch {}, frame_max {frame_max}",
            plan.prefetch
        );
        let server = Server::Echo {
            persistent: true,
            confirms: true,
            prefetch: plan.prefetch,
            frame_max: Some(frame_max),
        };
        bench
            .sweep(&mut results, variant, server, &echo_at_64)
            .await?;
        let variant = format!(
            "person-service persistent, prefetch {}, frame_max {frame_max}",
            plan.prefetch
        );
        let server = Server::Person {
            persistent: true,
            max_workers: plan.max_workers,
            prefetch: plan.prefetch,
            rows: plan.seed_rows,
            frame_max: Some(frame_max),
        };
        bench
            .sweep(&mut results, variant, server, &person_at_64)
            .await?;
    }
    results.compute_ratios();
    results.compute_checks(&plan.modes);
    Ok((results, machine))
}

/// girolle 2.0.0 side by side: its person service under our client, then
/// its client calling the echo and person-service. Without its binaries:
/// an error with `--girolle require`, else a note.
async fn girolle_side(
    bench: &Bench<'_>,
    results: &mut Results,
    phases: &[(Workload, usize)],
) -> Result<(), String> {
    let plan = bench.plan;
    let Some(dir) = plan.girolle_dir.as_deref() else {
        let why = "bench/girolle-person is not built (cargo build --release --manifest-path bench/girolle-person/Cargo.toml --target-dir target/girolle)";
        if plan.girolle == NamekoArg::Require {
            return Err(format!("girolle: {why}"));
        }
        eprintln!("girolle: not measured: {why}");
        results.notes.push(format!("girolle not measured: {why}"));
        return Ok(());
    };
    eprintln!("== girolle 2.0.0 service (its own settings: prefetch 10, acks before the reply is confirmed) ==");
    let server = Server::Girolle {
        rows: plan.seed_rows,
    };
    let served = bench.measure("girolle 2.0.0", &server, phases).await?;
    push_rows(results, Mode::Persistent, served);
    eprintln!("== girolle 2.0.0 client (one RpcClient per caller; transient requests) ==");
    let echo = Server::Echo {
        persistent: false,
        confirms: true,
        prefetch: plan.prefetch,
        frame_max: None,
    };
    let person = Server::Person {
        persistent: false,
        max_workers: plan.max_workers,
        prefetch: plan.prefetch,
        rows: plan.seed_rows,
        frame_max: None,
    };
    for (label, server) in [("echo ceiling", echo), ("person-service", person)] {
        let name = format!(
            "bench-gclient-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let outcome = girolle_client(bench, dir, &name, label, &server, phases).await;
        targets::delete_service_entities(&plan.amqp_uri, &name).await;
        let (phases, note) = outcome?;
        for (workload, callers, measured) in phases {
            results.girolle_client.push(SweepRow {
                variant: label.to_owned(),
                target: server.target(),
                workload,
                callers,
                measured,
            });
        }
        results.notes.extend(note);
    }
    Ok(())
}

/// Runs `phases` of girolle's client (`girolle-load`, one process per
/// phase) against `server` started as service `name`. The service's CPU
/// and RSS are read over the window girolle-load announces.
async fn girolle_client(
    bench: &Bench<'_>,
    dir: &Path,
    name: &str,
    label: &str,
    server: &Server,
    phases: &[(Workload, usize)],
) -> Result<(Vec<(Workload, usize, Measured)>, Option<String>), String> {
    use tokio::io::AsyncBufReadExt;
    let plan = bench.plan;
    let log = bench.dir.path().join(format!("{name}.log"));
    let db = bench.dir.path().join(format!("{name}.db"));
    let rows = server.rows();
    let mut proc = match server {
        Server::Echo { prefetch, .. } => {
            targets::echo_server(&plan.amqp_uri, name, *prefetch, false, true, log)?
        }
        Server::Person {
            persistent,
            max_workers,
            prefetch,
            ..
        } => {
            let path = db.clone();
            tokio::task::spawn_blocking(move || seed::create_db(&path, rows))
                .await
                .map_err(|e| e.to_string())??;
            targets::person_service(
                &plan.host,
                &PersonSpec {
                    amqp_uri: &plan.amqp_uri,
                    db: &db.to_string_lossy(),
                    name,
                    max_workers: *max_workers,
                    prefetch: *prefetch,
                    persistent: *persistent,
                    log_filter: &plan.service_log,
                    env: &plan.service_env,
                },
                log,
            )?
        }
        _ => return Err("girolle's client runs against the echo and person-service".into()),
    };
    // Our client only to see that the service is up.
    let probe = match server {
        Server::Echo { .. } => Client::Echo {
            client: Box::new(
                echo::EchoClient::connect(
                    &plan.amqp_uri,
                    echo::EchoSettings {
                        persistent: false,
                        confirms: true,
                    },
                )
                .await?,
            ),
            service: name.to_owned(),
        },
        _ => {
            let config = Config::new(&plan.amqp_uri).map_err(|e| e.to_string())?;
            Client::Proxy {
                proxy: RpcProxy::connect(config).await.map_err(|e| e.to_string())?,
                service: name.to_owned(),
            }
        }
    };
    let ready = probe
        .wait_ready(Duration::from_secs(60), || proc.check_running())
        .await;
    match probe {
        Client::Proxy { proxy, .. } => proxy.close().await,
        Client::Echo { client, .. } => client.close().await,
    }
    ready.map_err(|e| {
        format!(
            "{label}: {e}
{}",
            proc.log_tail(20)
        )
    })?;
    let pid = proc.pid();
    let mut out = Vec::new();
    let mut creates = 0;
    for &(workload, callers) in phases {
        let mut child = tokio::process::Command::new(dir.join("girolle-load"))
            .args([
                plan.amqp_uri.as_str(),
                name,
                workload.method(),
                &callers.to_string(),
                &plan.warmup_s.to_string(),
                &plan.window_s.to_string(),
                &plan.max_calls.to_string(),
                &rows.to_string(),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("girolle-load: {e}"))?;
        let stdout = child.stdout.take().ok_or("girolle-load: no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut meter = None;
        let mut cost = None;
        let mut report = None;
        let bound = Duration::from_secs_f64(plan.warmup_s + plan.window_s + 120.0);
        let read = tokio::time::timeout(bound, async {
            while let Ok(Some(line)) = lines.next_line().await {
                match line.trim() {
                    "window" => meter = Some(Meter::start(pid, bench.broker)),
                    "window-end" => {
                        if let Some(m) = meter.take() {
                            cost = Some(m.finish().await);
                        }
                    }
                    json if json.starts_with('{') => {
                        report = serde_json::from_str::<serde_json::Value>(json).ok()
                    }
                    _ => {}
                }
            }
        })
        .await;
        let _ = child.wait().await;
        if read.is_err() {
            return Err(format!("girolle-load did not finish within {bound:?}"));
        }
        let r = report.ok_or("girolle-load printed no figures")?;
        let num = |k: &str| r.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
        let calls = num("calls") as u64;
        let elapsed = num("elapsed_s");
        let m = Measured {
            calls,
            errors: num("errors") as u64,
            warmup_calls: num("warmup_calls") as u64,
            elapsed_s: elapsed,
            calls_per_s: if elapsed > 0.0 {
                calls as f64 / elapsed
            } else {
                0.0
            },
            latency: stats::Latency {
                p50_ms: num("p50_ms"),
                p99_ms: num("p99_ms"),
                mean_ms: 0.0,
                max_ms: 0.0,
            },
            cost: cost.unwrap_or_default(),
            first_error: r
                .get("first_error")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
        };
        eprintln!(
            "  girolle client -> {label:<24} {:<6} x{callers:<3} {:>8.0} calls/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}",
            workload.method(),
            m.calls_per_s,
            m.latency.p50_ms,
            m.latency.p99_ms,
            m.errors
        );
        if workload == Workload::Create {
            creates += m.calls + m.warmup_calls;
        }
        out.push((workload, callers, m));
        proc.check_running()?;
    }
    tokio::task::block_in_place(|| proc.stop());
    let note = if matches!(server, Server::Person { .. }) && creates > 0 {
        let path = db.clone();
        let found = tokio::task::spawn_blocking(move || seed::count(&path))
            .await
            .map_err(|e| e.to_string())??;
        Some(format!(
            "girolle client -> person-service: {found} rows after stop, {rows} seeded + {creates} acknowledged creates: {}",
            if found >= rows + creates { "all there" } else { "MISSING ROWS" }
        ))
    } else {
        None
    };
    Ok((out, note))
}

/// nameko could not run: an error with `--nameko require`, else a note.
fn nameko_not_measured(plan: &Plan, results: &mut Results, e: String) -> Result<(), String> {
    if plan.nameko == NamekoArg::Require {
        return Err(format!("nameko: {e}"));
    }
    eprintln!("nameko: not measured: {e}");
    results.notes.push(format!("nameko not measured: {e}"));
    Ok(())
}

fn print_report(plan: &Plan, machine: &Machine, results: &Results) {
    println!("# person-service benchmark");
    println!();
    println!(
        "{} | {} CPUs ({}) | {:.0} GiB | Linux {} | RabbitMQ {} at {}",
        machine.date,
        machine.nproc,
        machine.cpu_model,
        machine.memory_gib,
        machine.kernel,
        machine.rabbitmq_version,
        plan.broker
    );
    println!(
        "load average at start {} (1 min), at end {}",
        report::fmt_opt(machine.load_average_at_start, 2),
        report::fmt_opt(procstat::load_average(), 2)
    );
    println!(
        "person-service: {} | store {} | max_workers {}, prefetch {} | {} seeded rows | warm-up {} s, window {} s or {} calls per phase",
        plan.person_host, plan.store, plan.max_workers, plan.prefetch, plan.seed_rows, plan.warmup_s, plan.window_s, plan.max_calls
    );
    if !plan.service_env.is_empty() || plan.service_log != "info" {
        println!(
            "person-service environment: RUST_LOG={} {:?}",
            plan.service_log, plan.service_env
        );
    }
    for (i, &mode) in plan.modes.iter().enumerate() {
        println!();
        println!(
            "## {} requests and replies (delivery mode {}), publisher confirms, prefetch {}",
            mode.label(),
            if mode == Mode::Persistent { 2 } else { 1 },
            plan.prefetch
        );
        if i == 0 && results.rows.iter().any(|r| r.target == Target::Nameko) {
            println!("(nameko with its own settings: persistent requests and replies, confirms, max_workers {})", plan.max_workers);
        }
        println!();
        print!("{}", report::mode_table(results, mode, i == 0));
    }
    if !results.list.is_empty() {
        println!();
        println!("## list(limit=100, after_id=X), X uniform over the table, persistent");
        println!();
        print!("{}", report::list_table(results));
    }
    if !results.girolle_client.is_empty() {
        println!();
        println!("## girolle 2.0.0's client (transient requests, one RpcClient per caller)");
        println!();
        print!("{}", report::girolle_client_table(results));
    }
    if !results.sweep.is_empty() {
        println!();
        println!("## Settings sweep");
        println!();
        print!("{}", report::sweep_table(results));
    }
    if !results.durability.is_empty() {
        println!();
        println!("## Durability of acknowledged creates");
        println!();
        for d in &results.durability {
            println!(
                "- {:?} {}: {} rows found after stop, {} seeded + {} acknowledged creates: {}",
                d.target,
                d.mode.label(),
                d.rows_found,
                d.seeded,
                d.acknowledged_creates,
                if d.ok { "all there" } else { "MISSING ROWS" }
            );
        }
    }
    println!();
    println!("## Targets");
    println!();
    print!("{}", report::checks_text(results));
    for note in &results.notes {
        println!("- note: {note}");
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    machine: &'a Machine,
    plan: &'a Plan,
    #[serde(flatten)]
    results: &'a Results,
}

fn write_json(
    path: &Path,
    plan: &Plan,
    machine: &Machine,
    results: &Results,
) -> Result<(), String> {
    let text = serde_json::to_string_pretty(&JsonReport {
        machine,
        plan,
        results,
    })
    .map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("no runtime: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Hidden::ServePerson(opts)) => host::serve_person(opts),
        Some(Hidden::EchoServer(o)) => {
            let settings = echo::EchoSettings {
                persistent: !o.transient,
                confirms: !o.no_confirm,
            };
            let outcome = runtime().and_then(|rt| {
                rt.block_on(echo::serve(&o.amqp_uri, &o.name, o.prefetch, settings))
            });
            match outcome {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("echo-server: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => {
            let outcome = plan(&cli.run).and_then(|plan| {
                let (results, machine) = runtime()?.block_on(run(&plan))?;
                print_report(&plan, &machine, &results);
                if let Some(path) = &cli.run.chart {
                    let title = format!(
                        "person-service bench, {} (persistent; {} CPUs, load {} at start)",
                        machine.date,
                        machine.nproc,
                        report::fmt_opt(machine.load_average_at_start, 1)
                    );
                    chart::write(&results, path, &title)?;
                    eprintln!("chart written to {}", path.display());
                }
                if let Some(path) = &cli.run.json {
                    write_json(path, &plan, &machine, &results)?;
                    eprintln!("results written to {}", path.display());
                }
                Ok(())
            });
            match outcome {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bench: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
