//! `peer-bench`: orderflow beside three event-sourcing libraries for Rust on the same
//! PostgreSQL, the same aggregate and the same load, in one process; one JSON document on
//! stdout with every figure, progress on stderr, the headline as an SVG chart.
//!
//! Run it through `scripts/bench-peers`, which builds it and orderflow's binary (for the HTTP
//! floor) and passes the floor's JSON in. See `--help` for the flags.

mod chart;
mod cqrs_es;
mod disintegrate_peer;
mod esrs_peer;
mod harness;
mod model;
mod orderflow;
mod pg;
mod reference;
mod report;
mod system;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::harness::{Driven, drive};
use crate::pg::{Scratch, Server};
use crate::report::{CatchUpFigures, RowCheck, Run, Target};
use crate::system::{CatchUp, Settings, System, SystemName, Workload};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// orderflow beside cqrs-es, disintegrate and esrs on PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "peer-bench", version)]
struct Args {
    /// A PostgreSQL server URL (a superuser: CHECKPOINT between runs); every run creates its
    /// own databases there and drops them after.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        env = "ORDERFLOW_BENCH_PG_URL"
    )]
    pg_url: String,
    /// Systems to measure, in this order in the first round (each later round starts one
    /// further along).
    #[arg(long, value_delimiter = ',', default_value = "orderflow,cqrs-es,disintegrate,esrs")]
    systems: Vec<SystemName>,
    /// Workloads to run: place, lifecycle, contention, catch-up, and the reference figures
    /// appends (orderflow's store alone) and ceiling (one-row INSERT from sqlx, and pgbench).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "place,lifecycle,contention,catch-up,appends,ceiling"
    )]
    workloads: Vec<Workload>,
    /// Concurrent writers for place and lifecycle, one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    writers: Vec<usize>,
    /// Writers on the one product of the contention workload.
    #[arg(long, default_value_t = 16)]
    contention_writers: usize,
    /// Writers (clients) of the reference figures: orderflow's store appends and the ceiling.
    #[arg(long, default_value_t = 64)]
    reference_writers: usize,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of warm-up per run before the measured seconds (not counted, except in the row
    /// check).
    #[arg(long, default_value_t = 2)]
    warm_up: u64,
    /// Rounds; the report gives the median and the range over them.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Events seeded and read back by the catch-up workload.
    #[arg(long, default_value_t = 1_000_000)]
    catch_up_events: u64,
    /// Events per page of orderflow's `read_all` in the catch-up.
    #[arg(long, default_value_t = 1000)]
    catch_up_page: usize,
    /// Snapshot frequency in events for every system that has snapshots (orderflow's default).
    #[arg(long, default_value_t = 100)]
    snapshot_every: u64,
    /// Where the headline chart goes (SVG).
    #[arg(long, default_value = "peers-headline.svg")]
    svg: PathBuf,
    /// `orderflow bench commands --floor` output (JSON) to merge into the report.
    #[arg(long)]
    floor_json: Option<PathBuf>,
    /// orderflow's revision, for the report.
    #[arg(long, env = "ORDERFLOW_REVISION")]
    revision: Option<String>,
    /// A note to add to the report (repeatable).
    #[arg(long)]
    note: Vec<String>,
}

/// The peers, as named in the report.
const PEERS: [&str; 3] = ["cqrs-es", "disintegrate", "esrs"];

/// One run to do.
#[derive(Debug, Clone)]
struct Step {
    round: usize,
    workload: Workload,
    writers: usize,
    what: What,
}

#[derive(Debug, Clone, Copy)]
enum What {
    System(SystemName),
    /// orderflow's `PgEventStore` alone.
    Store,
    /// The one-row INSERT from sqlx.
    OneRow,
    Pgbench,
}

impl What {
    fn name(self) -> &'static str {
        match self {
            What::System(s) => s.name(),
            What::Store => "orderflow-store",
            What::OneRow => "sqlx-one-row",
            What::Pgbench => "pgbench",
        }
    }
}

/// Every run, round by round; within a round each workload's systems start one further along
/// than in the round before (A B C D, then B C D A, ...).
fn plan(args: &Args, pgbench: bool) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut workloads = args.workloads.clone();
    workloads.sort();
    workloads.dedup();
    for round in 1..=args.rounds {
        let mut systems = args.systems.clone();
        if !systems.is_empty() {
            let by = (round - 1) % systems.len();
            systems.rotate_left(by);
        }
        for &workload in &workloads {
            let counts: Vec<usize> = match workload {
                Workload::Place | Workload::Lifecycle => args.writers.clone(),
                Workload::Contention => vec![args.contention_writers],
                Workload::CatchUp => vec![1],
                Workload::Appends | Workload::Ceiling => vec![args.reference_writers],
            };
            for writers in counts {
                let whats: Vec<What> = match workload {
                    Workload::CatchUp => systems
                        .iter()
                        .filter(|s| has_global_log(**s))
                        .map(|s| What::System(*s))
                        .collect(),
                    Workload::Appends => vec![What::Store],
                    Workload::Ceiling if pgbench => vec![What::OneRow, What::Pgbench],
                    Workload::Ceiling => vec![What::OneRow],
                    _ => systems.iter().map(|s| What::System(*s)).collect(),
                };
                for what in whats {
                    steps.push(Step {
                        round,
                        workload,
                        writers,
                        what,
                    });
                }
            }
        }
    }
    steps
}

/// Whether the system has a global log to catch up on.
fn has_global_log(system: SystemName) -> bool {
    matches!(system, SystemName::Orderflow | SystemName::Disintegrate)
}

/// Progress on stderr: a bar on a terminal, plain lines otherwise.
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{bar:32}] {pos}/{len} runs  {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress { bar }
    }

    fn say(&self, line: impl AsRef<str>) {
        self.bar.suspend(|| eprintln!("{}", line.as_ref()));
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.seconds > 0, "--seconds must be at least 1");
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    anyhow::ensure!(
        args.writers.iter().all(|&w| (1..=64).contains(&w))
            && (1..=64).contains(&args.contention_writers)
            && (1..=64).contains(&args.reference_writers),
        "writer counts must be 1 to 64 (the benchmark keeps to 70 connections)"
    );
    anyhow::ensure!(args.catch_up_page > 0, "--catch-up-page must be positive");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let code = runtime.block_on(run(args))?;
    std::process::exit(code);
}

async fn run(args: Args) -> anyhow::Result<i32> {
    let server = Server::new(&args.pg_url)?;
    let server_version = server.check().await?;
    let pgbench = reference::pgbench_path();
    let floor = match &args.floor_json {
        Some(path) => Some(serde_json::from_slice::<serde_json::Value>(&std::fs::read(path)?)?),
        None => None,
    };
    let steps = plan(&args, pgbench.is_some());
    let progress = Progress::new(steps.len() as u64);
    progress.say(format!(
        "peer-bench: {} runs on PostgreSQL {server_version}: {}s warm-up + {}s measured each, {} round(s)",
        steps.len(),
        args.warm_up,
        args.seconds,
        args.rounds
    ));
    let settings = Settings {
        snapshot_every: args.snapshot_every,
    };
    let started = Instant::now();
    let mut runs = Vec::with_capacity(steps.len());
    let mut waits = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        progress.bar.set_message(format!(
            "round {} {} {} × {}",
            step.round,
            step.workload.name(),
            step.what.name(),
            step.writers
        ));
        if let Some(note) = server.wait_until_quiet(&|line| progress.say(line)).await? {
            waits.push(note);
        }
        if let Err(e) = server.checkpoint().await {
            progress.say(format!("warning: {e:#}"));
        }
        let run = one(&server, step, &args, settings, pgbench.as_deref()).await;
        progress.say(line(n + 1, steps.len(), &run));
        if let Some(check) = run.row_check
            && !check.ok
        {
            progress.say(format!(
                "ROW CHECK FAILED: {} {} × {} round {}: the operations stored {} events, the tables hold {}",
                run.system,
                run.workload.name(),
                run.writers,
                run.round,
                check.expected,
                check.stored
            ));
        }
        runs.push(run);
        progress.bar.inc(1);
    }
    progress.bar.finish_and_clear();
    let report = build_report(&args, &server_version, &runs, floor, waits, started.elapsed());
    let panels = headline(&args, &runs);
    let subtitle = format!(
        "median of {} round(s), whiskers: range; {}s measured after {}s warm-up; PostgreSQL {server_version}, {} cores",
        args.rounds,
        args.seconds,
        args.warm_up,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let chart_written = match chart::write(
        &args.svg,
        "orderflow and its peers: operations per second, in process",
        &subtitle,
        &panels,
    ) {
        Ok(()) => {
            eprintln!("chart: {}", args.svg.display());
            None
        }
        Err(e) => {
            eprintln!("warning: the chart could not be written: {e:#}");
            Some(format!("{e:#}"))
        }
    };
    let mut report = report;
    report["chart"] = json!({ "path": args.svg.display().to_string(), "error": chart_written });
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &report)?;
    writeln!(out)?;
    out.flush()?;
    let row_failures = runs.iter().filter(|r| r.row_check.is_some_and(|c| !c.ok)).count();
    if row_failures > 0 {
        eprintln!("{row_failures} run(s) failed their row check: see `row_checks` in the report");
        return Ok(1);
    }
    Ok(0)
}

/// A run's line on stderr.
fn line(n: usize, total: usize, run: &Run) -> String {
    let head = format!(
        "[{n}/{total}] round {} {:<10} {:<16} {:>2} writers:",
        run.round,
        run.workload.name(),
        run.system,
        run.writers
    );
    if let Some(e) = &run.failed {
        return format!("{head} FAILED: {e}");
    }
    if let Some(c) = &run.catch_up {
        return format!(
            "{head} read {} events in {:.2} s ({:.0} events/s; seeded in {:.1} s)",
            c.read, c.read_seconds, c.events_per_sec, c.seed_seconds
        );
    }
    if let Some(p) = &run.pgbench {
        return format!("{head} {:.0} transactions/s", p.transactions_per_sec);
    }
    match &run.measured {
        Some(m) => format!(
            "{head} {:>9.0} ops/s  p50 {:.2} ms  p99 {:.2} ms  failed {}  conflicts/s {:.0}  retries/s {:.0}  rows {}",
            m.ops_per_sec,
            m.p50_ms.unwrap_or(f64::NAN),
            m.p99_ms.unwrap_or(f64::NAN),
            m.failed,
            m.conflicts_per_sec,
            m.retries_per_sec,
            run.row_check.map_or("-".to_owned(), |c| if c.ok {
                format!("ok ({})", c.stored)
            } else {
                format!("MISMATCH ({} stored, {} expected)", c.stored, c.expected)
            })
        ),
        None => format!("{head} no figure"),
    }
}

/// Runs one step on databases of its own, dropped after whatever happened.
async fn one(server: &Server, step: &Step, args: &Args, settings: Settings, pgbench: Option<&std::path::Path>) -> Run {
    let mut scratch = Scratch::new(server);
    let mut run = Run::new(step.round, step.workload, step.what.name(), step.writers);
    let warm_up = Duration::from_secs(args.warm_up);
    let measured = Duration::from_secs(args.seconds);
    let result = match (step.workload, step.what) {
        (Workload::CatchUp, What::System(system)) => catch_up(&mut scratch, system, args, &mut run).await,
        (_, What::System(SystemName::Orderflow)) => {
            measure::<orderflow::Orderflow>(&mut scratch, step, settings, warm_up, measured, &mut run).await
        }
        (_, What::System(SystemName::CqrsEs)) => {
            measure::<cqrs_es::CqrsEs>(&mut scratch, step, settings, warm_up, measured, &mut run).await
        }
        (_, What::System(SystemName::Disintegrate)) => {
            measure::<disintegrate_peer::Disintegrate>(&mut scratch, step, settings, warm_up, measured, &mut run).await
        }
        (_, What::System(SystemName::Esrs)) => {
            measure::<esrs_peer::Esrs>(&mut scratch, step, settings, warm_up, measured, &mut run).await
        }
        (_, What::Store) => appends(&mut scratch, step.writers, warm_up, measured, &mut run).await,
        (_, What::OneRow) => one_row(&mut scratch, step.writers, warm_up, measured, &mut run).await,
        (_, What::Pgbench) => match pgbench {
            Some(program) => reference::pgbench(&mut scratch, program, step.writers, args.seconds)
                .await
                .map(|p| {
                    run.row_check = p.transactions.map(|t| RowCheck::new(t.max(0) as u64, p.rows));
                    run.pgbench = Some(p);
                }),
            None => Err(anyhow::anyhow!("pgbench is not on the PATH")),
        },
    };
    scratch.drop_all().await;
    if let Err(e) = result {
        run.failed = Some(format!("{e:#}"));
    }
    run
}

/// Fills `run` from a driven run and the row count.
async fn record(
    server: &Server,
    run: &mut Run,
    driven: Driven,
    seeded: u64,
    count: (String, String),
    payload: (String, String),
    events_per_op: u64,
) -> anyhow::Result<()> {
    let stored = server.scalar_i64(&count.0, &count.1).await?;
    run.row_check = Some(RowCheck::new(seeded + driven.events(), stored));
    run.avg_payload_bytes = server.scalar_f64(&payload.0, &payload.1).await.ok().flatten();
    run.warm_up_ops = Some(driven.warm_up.ok);
    run.events_per_op = Some(events_per_op);
    run.measured = Some(driven.measured.summary());
    Ok(())
}

/// `ANALYZE` of each of `databases`.
async fn analyze(server: &Server, databases: &[String]) -> anyhow::Result<()> {
    for db in databases {
        server.analyze(db).await?;
    }
    Ok(())
}

/// place, lifecycle or contention on system `S`.
async fn measure<S: System>(
    scratch: &mut Scratch,
    step: &Step,
    settings: Settings,
    warm_up: Duration,
    measured: Duration,
    run: &mut Run,
) -> anyhow::Result<()> {
    let workload = step.workload;
    let system = Arc::new(S::open(scratch, workload, step.writers, settings).await?);
    let server = scratch.server.clone();
    let databases = system.databases();
    let op = {
        let system = Arc::clone(&system);
        move |w: usize, seq: u64| {
            let system = Arc::clone(&system);
            async move {
                match workload {
                    Workload::Place => system.place(w, seq).await,
                    Workload::Lifecycle => system.lifecycle(w, seq).await,
                    _ => system.restock(w, seq).await,
                }
            }
        }
    };
    let driven = drive(
        op,
        step.writers,
        warm_up,
        measured,
        system.probe(),
        analyze(&server, &databases),
    )
    .await;
    let count = system.count_query();
    let payload = system.payload_query();
    let seeded = system.seeded_events();
    let events_per_op = system.events_per_op(workload);
    // Its pools closed before the count: nothing in flight.
    match Arc::try_unwrap(system) {
        Ok(system) => system.close().await,
        Err(_) => anyhow::bail!("a writer still holds the system after the run"),
    }
    record(&server, run, driven?, seeded, count, payload, events_per_op).await
}

/// orderflow's store alone: one event of 250 bytes per commit, on a new stream each.
async fn appends(
    scratch: &mut Scratch,
    writers: usize,
    warm_up: Duration,
    measured: Duration,
    run: &mut Run,
) -> anyhow::Result<()> {
    let (name, opened) = orderflow::open_raw_store(scratch).await?;
    let store = opened.shared();
    let payload: Arc<[u8]> = Arc::from(vec![0x5a_u8; model::EVENT_BYTES]);
    let op = {
        let store = Arc::clone(&store);
        move |_w: usize, _seq: u64| {
            let (store, payload) = (Arc::clone(&store), Arc::clone(&payload));
            async move { orderflow::append_one(&store, &payload).await }
        }
    };
    let server = scratch.server.clone();
    let dbs = [name.clone()];
    let driven = drive(op, writers, warm_up, measured, None, analyze(&server, &dbs)).await;
    drop(store);
    opened.close().await;
    let count = (name.clone(), "SELECT count(*) FROM events".to_owned());
    let payload = (name, "SELECT avg(octet_length(payload))::float8 FROM events".to_owned());
    record(&server, run, driven?, 0, count, payload, 1).await
}

/// The one-row ceiling from sqlx.
async fn one_row(
    scratch: &mut Scratch,
    writers: usize,
    warm_up: Duration,
    measured: Duration,
    run: &mut Run,
) -> anyhow::Result<()> {
    let (name, pool) = reference::open_ceiling(scratch, writers).await?;
    let op = {
        let pool = pool.clone();
        move |_w: usize, _seq: u64| {
            let pool = pool.clone();
            async move { reference::insert_row(&pool).await }
        }
    };
    let server = scratch.server.clone();
    let dbs = [name.clone()];
    let driven = drive(op, writers, warm_up, measured, None, analyze(&server, &dbs)).await;
    pool.close().await;
    let count = (name.clone(), "SELECT count(*) FROM rows".to_owned());
    let payload = (name, "SELECT avg(octet_length(payload))::float8 FROM rows".to_owned());
    record(&server, run, driven?, 0, count, payload, 1).await
}

/// The catch-up of a system with a global log.
async fn catch_up(scratch: &mut Scratch, system: SystemName, args: &Args, run: &mut Run) -> anyhow::Result<()> {
    let (c, seeded_by, read_by, count_sql): (CatchUp, _, _, _) = match system {
        SystemName::Orderflow => (
            orderflow::catch_up(scratch, args.catch_up_events, args.catch_up_page).await?,
            "INSERT … SELECT generate_series into its events table: one stream per event, the same encoded OrderPlaced",
            "EventStore::read_all(after, page) in pages, each event decoded (event_schemas::decode)",
            "SELECT count(*) FROM events",
        ),
        SystemName::Disintegrate => (
            disintegrate_peer::catch_up(scratch, args.catch_up_events).await?,
            "INSERT … SELECT generate_series into its event table: its JSON payload and order_id column, its sequence",
            "EventStore::stream(query!(DomainEvent)): one streaming query in event_id order, each event deserialized",
            "SELECT count(*) FROM event",
        ),
        other => anyhow::bail!("{} has no global log", other.name()),
    };
    let stored = scratch.server.scalar_i64(&c.database, count_sql).await?;
    run.row_check = Some(RowCheck::new(c.seeded, stored));
    anyhow::ensure!(c.read == c.seeded, "read {} events of the {} seeded", c.read, c.seeded);
    run.catch_up = Some(CatchUpFigures {
        seeded: c.seeded,
        seeded_by,
        seed_seconds: c.seed_seconds,
        read: c.read,
        read_seconds: c.read_seconds,
        events_per_sec: c.read as f64 / c.read_seconds.max(f64::MIN_POSITIVE),
        read_by,
    });
    Ok(())
}

/// The writer count of the headline: 64 if measured, else the largest.
fn headline_writers(args: &Args) -> usize {
    if args.writers.contains(&64) {
        64
    } else {
        args.writers.iter().copied().max().unwrap_or(1)
    }
}

/// The chart's panels: place and lifecycle at the headline's writers, a bar per system.
fn headline(args: &Args, runs: &[Run]) -> Vec<chart::Panel> {
    let summaries = report::summarize(runs);
    let writers = headline_writers(args);
    [Workload::Place, Workload::Lifecycle]
        .into_iter()
        .filter(|w| args.workloads.contains(w))
        .map(|workload| {
            let (best, peer) = report::over_best_peer(&summaries, workload, writers, &PEERS);
            let title = match (best, peer) {
                (Some(r), Some(p)) => format!(
                    "{}, {writers} writers: orderflow / best peer ({p}) = {r:.1}×",
                    workload.name()
                ),
                _ => format!("{}, {writers} writers", workload.name()),
            };
            chart::Panel {
                title,
                unit: match workload {
                    Workload::Lifecycle => "orders placed, confirmed, shipped /s".to_owned(),
                    _ => "orders placed /s".to_owned(),
                },
                bars: args
                    .systems
                    .iter()
                    .map(|s| {
                        let found = summaries
                            .iter()
                            .find(|x| x.workload == workload && x.writers == writers && x.system == s.name());
                        chart::Bar {
                            system: s.name().to_owned(),
                            median: found.and_then(|x| x.median),
                            range: found.and_then(|x| x.range),
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The versions of the libraries as this build's lock file has them.
fn versions() -> serde_json::Value {
    let lock = include_str!("../Cargo.lock");
    let mut found = serde_json::Map::new();
    let wanted = [
        "cqrs-es",
        "postgres-es",
        "disintegrate",
        "disintegrate-postgres",
        "esrs",
        "sqlx",
        "tokio",
        "plotters",
    ];
    let mut name: Option<&str> = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = \"") {
            name = n.strip_suffix('"');
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = \""), name) {
            if wanted.contains(&n) {
                let v = v.trim_end_matches('"').to_owned();
                match found.get_mut(n) {
                    Some(serde_json::Value::Array(list)) => list.push(json!(v)),
                    Some(other) => *other = json!([other.clone(), v]),
                    None => {
                        found.insert(n.to_owned(), json!(v));
                    }
                }
            }
            name = None;
        }
    }
    serde_json::Value::Object(found)
}

fn build_report(
    args: &Args,
    server_version: &str,
    runs: &[Run],
    floor: Option<serde_json::Value>,
    waits: Vec<String>,
    took: Duration,
) -> serde_json::Value {
    let summaries = report::summarize(runs);
    let peers: Vec<&str> = PEERS
        .iter()
        .copied()
        .filter(|p| args.systems.iter().any(|s| s.name() == *p))
        .collect();
    let ratios = report::ratios(&summaries, &peers);
    let writers = headline_writers(args);
    let median_of = |workload: Workload, system: &str, n: usize| {
        summaries
            .iter()
            .find(|x| x.workload == workload && x.system == system && x.writers == n)
            .and_then(|x| x.median)
    };
    let (place, place_peer) = report::over_best_peer(&summaries, Workload::Place, writers, &peers);
    let (lifecycle, lifecycle_peer) = report::over_best_peer(&summaries, Workload::Lifecycle, writers, &peers);
    let rw = args.reference_writers;
    let store = median_of(Workload::Appends, "orderflow-store", rw);
    let targets = vec![
        Target::new(
            format!("orderflow's in-process command path ≥ 3× the best peer on place at {writers} writers"),
            3.0,
            place,
            place_peer,
        ),
        Target::new(
            format!("orderflow's in-process command path ≥ 5× the best peer on lifecycle at {writers} writers"),
            5.0,
            lifecycle,
            lifecycle_peer,
        ),
        Target::new(
            format!("orderflow's store appends at {rw} writers ≥ 3× the one-row ceiling (sqlx, same run)"),
            3.0,
            report::ratio(store, median_of(Workload::Ceiling, "sqlx-one-row", rw)),
            Some("sqlx-one-row".to_owned()),
        ),
        Target::new(
            format!("orderflow's store appends at {rw} writers ≥ 3× the one-row ceiling (pgbench, same run)"),
            3.0,
            report::ratio(store, median_of(Workload::Ceiling, "pgbench", rw)),
            Some("pgbench".to_owned()),
        ),
    ];
    let row_failures: Vec<serde_json::Value> = runs
        .iter()
        .filter(|r| r.row_check.is_some_and(|c| !c.ok))
        .map(|r| json!({ "workload": r.workload, "system": r.system, "writers": r.writers, "round": r.round, "check": r.row_check }))
        .collect();
    let failed: Vec<serde_json::Value> = runs
        .iter()
        .filter(|r| r.failed.is_some())
        .map(|r| json!({ "workload": r.workload, "system": r.system, "writers": r.writers, "round": r.round, "error": r.failed }))
        .collect();
    let floor_64 = floor.as_ref().and_then(|f| {
        f["runs"]
            .as_array()?
            .iter()
            .find(|r| r["clients"].as_u64() == Some(rw as u64))
            .and_then(|r| r["commands_per_sec"].as_f64())
    });
    let no_global_log: Vec<&str> = args
        .systems
        .iter()
        .filter(|s| !has_global_log(**s))
        .map(|s| s.name())
        .collect();
    let mut notes = vec![
        "Every figure is in one process (this binary): orderflow through path dependencies on the workspace's crates, the peers through their released crates. Operations per second are operations that succeeded, counted over the measured seconds after a warm-up; latency is per operation (p50/p99/max over every successful operation of the run); the median and range are over rounds.".to_owned(),
        "place: orderflow's Local::place_order (what POST /v1/orders calls, without HTTP): prices the line from the orders service's copy of the catalogue and appends OrderPlaced and the saga's SagaStarted in one commit, two events on two streams, where each peer appends one event. No saga driver runs (as in `orderflow bench commands`), and its backlog bound is lifted since nothing drains it.".to_owned(),
        "lifecycle: one operation is three commands on one new order (place, confirm, ship): commands_per_sec = 3 × ops_per_sec. orderflow confirms and ships through the orders service's CommandHandler, from its aggregate cache; the peers load (replay) the order for each command.".to_owned(),
        "contention: every writer restocks one product by one unit (orderflow: ProductCommand::Restock through the inventory service's handler; the peers: a product aggregate with the same command and a 250-byte event). A peer's command that loses a version race is retried up to 16 times with orderflow's jitter (0 to 2·attempt ms). orderflow's handler serializes its own process's commands per stream (stream_locks), so its writers queue and show few or no conflicts; its conflicts are counted at its store.".to_owned(),
        format!("Snapshots on where each system has them, every {} events: orderflow (its default), cqrs-es (postgres_snapshot_cqrs), disintegrate (PgSnapshotter); esrs has none and replays every event of an aggregate on each command. With three events per order, snapshots matter only in the contention workload.", args.snapshot_every),
        "Each run has fresh databases of its own (orderflow: one per service and its copy, as deployed), dropped after; CHECKPOINT before each run; ANALYZE of the run's databases between warm-up and measurement (disintegrate's SERIALIZABLE appends abort unrelated transactions while its planner sees an empty table). Pools: the peers writers + 2 connections; orderflow's orders store and catalogue copy (what placing reads) writers + 2 as well, but at least what its binaries use (16 and 4) and at most 30 and 20 (the benchmark keeps to 70 connections); its other stores 4; group commit writes on one connection of its own per store.".to_owned(),
        "disintegrate: its reads stop below the oldest append still in flight (its epoch, which keeps its global log gap-safe), so under concurrent writers a confirm or ship right after the previous command of the same order may not see it and is refused (`invalid transition from New/Placed`): counted as failed operations, not retried. Its appends run SERIALIZABLE: the 40001 aborts between different orders (SSI predicate locks) are counted as conflicts and retried.".to_owned(),
        "Row check: after each run the system's event table(s) are counted and compared with what its operations (warm-up included) said they stored, plus what was seeded; a mismatch takes the run out of the figures and fails the benchmark's exit status.".to_owned(),
        format!("catch-up: {} events seeded by INSERT … SELECT generate_series in the system's own table format (not through its append path, which is measured by the other workloads), then read in global order through the system's read API. {} have no global log: no figure.", args.catch_up_events, no_global_log.join(" and ")),
        "disintegrate on PostgreSQL < 16: its migrator's SQL uses a hex literal; the same schema is created by hand with the literal in decimal.".to_owned(),
        "Peers' events are padded to about 250 bytes of JSON each; orderflow's are its own protobuf events (avg_payload_bytes gives what each stores).".to_owned(),
        format!("Order of systems: round r starts one system further along than round r-1 ({}).", args.systems.iter().map(|s| s.name()).collect::<Vec<_>>().join(" ")),
    ];
    notes.extend(waits);
    notes.extend(args.note.iter().cloned());
    json!({
        "benchmark": "peers",
        "took_seconds": took.as_secs_f64(),
        "settings": {
            "seconds": args.seconds,
            "warm_up_seconds": args.warm_up,
            "rounds": args.rounds,
            "writers": args.writers,
            "contention_writers": args.contention_writers,
            "reference_writers": args.reference_writers,
            "catch_up_events": args.catch_up_events,
            "catch_up_page": args.catch_up_page,
            "snapshot_every": args.snapshot_every,
            "systems": args.systems,
            "workloads": args.workloads,
        },
        "machine": {
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "postgresql": server_version,
        },
        "versions": {
            "orderflow": args.revision.clone().unwrap_or_else(|| "this checkout (path dependencies)".to_owned()),
            "crates": versions(),
        },
        "results": summaries,
        "ratios": ratios,
        "targets": targets,
        "reference": {
            "orderflow_store_appends": summaries.iter().find(|s| s.workload == Workload::Appends),
            "ceiling_sqlx_one_row": summaries.iter().find(|s| s.system == "sqlx-one-row"),
            "ceiling_pgbench": summaries.iter().find(|s| s.system == "pgbench"),
            "http_floor_commands_per_sec": floor_64,
            "http_floor": floor,
        },
        "row_checks": {
            "all_ok": row_failures.is_empty(),
            "failed": row_failures,
        },
        "failed_runs": failed,
        "notes": notes,
        "runs": runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["peer-bench"];
        argv.extend_from_slice(extra);
        Args::parse_from(argv)
    }

    #[test]
    fn rounds_rotate_the_systems() {
        let a = args(&["--workloads", "place", "--writers", "1", "--rounds", "3"]);
        let order: Vec<Vec<&str>> = (1..=3)
            .map(|round| {
                plan(&a, false)
                    .iter()
                    .filter(|s| s.round == round)
                    .map(|s| s.what.name())
                    .collect()
            })
            .collect();
        assert_eq!(order[0], ["orderflow", "cqrs-es", "disintegrate", "esrs"]);
        assert_eq!(order[1], ["cqrs-es", "disintegrate", "esrs", "orderflow"]);
        assert_eq!(order[2], ["disintegrate", "esrs", "orderflow", "cqrs-es"]);
    }

    #[test]
    fn catch_up_only_for_a_global_log_and_references_once_per_round() {
        let a = args(&["--rounds", "1"]);
        let steps = plan(&a, true);
        let catch_up: Vec<&str> = steps
            .iter()
            .filter(|s| s.workload == Workload::CatchUp)
            .map(|s| s.what.name())
            .collect();
        assert_eq!(catch_up, ["orderflow", "disintegrate"]);
        let references: Vec<&str> = steps
            .iter()
            .filter(|s| matches!(s.workload, Workload::Appends | Workload::Ceiling))
            .map(|s| s.what.name())
            .collect();
        assert_eq!(references, ["orderflow-store", "sqlx-one-row", "pgbench"]);
        assert_eq!(steps.iter().filter(|s| s.workload == Workload::Place).count(), 3 * 4);
    }

    #[test]
    fn versions_come_from_the_lock_file() {
        let v = versions();
        assert!(v["cqrs-es"].is_string());
        assert!(v["sqlx"].is_array(), "sqlx 0.8 and 0.9 both: {v}");
    }
}
