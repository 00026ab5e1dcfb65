//! `orderflow bench rebuild`: how fast the projections rebuild from a realistic event store.
//!
//! 1. Creates its own PostgreSQL databases (an event store per service, a read database) and
//!    ClickHouse database, and drops them at the end, whatever happened.
//! 2. Seeds the stores with a simulated shop ([`shop_sim::seed`]): valid histories, realistic
//!    mix, each service's events in its own store.
//! 3. Times reading and decoding every log (what every rebuild does before it applies
//!    anything), then rebuilds each projection of `--projections` (all of [`catalog::NAMES`] by
//!    default) from the services' logs, timing each (the dashboard into PostgreSQL, the
//!    analytics into ClickHouse).
//! 4. For scale, copies every row of the dashboard's tables out with `COPY ... TO STDOUT` and
//!    times a raw `COPY ... FROM STDIN` of the same bytes into fresh tables shaped like them: with
//!    their keys and indexes maintained row by row, and without them, then built after (as the
//!    rebuild's bulk load does). The faster of the two is the fastest PostgreSQL can take those
//!    rows and end with the same indexed tables, which no projection can beat; the dashboard's
//!    rate is compared with it. (An earlier version copied the `orders` table only, about a
//!    fifth of the rows the rebuild writes, which made the target five times too hard.)
//! 5. Reports the process's peak resident memory during each rebuild (`VmHWM`, reset before it
//!    through `/proc/self/clear_refs`).
//!
//! One JSON document on stdout, progress bars on stderr.

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use futures::TryStreamExt;
use projections::catalog::{self, Sinks};
use projections::{RebuildOptions, ServiceLog};
use serde::Serialize;
use service_kit::cli::progress_bar;
use shop_sim::{SeedOptions, SeedReport};
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::scratch::{self, Scratch, ScratchServers};

#[derive(Debug, Args)]
pub struct RebuildBench {
    /// Events to seed the store with (approximately: the simulation stops at the first action
    /// past it).
    #[arg(long, default_value_t = 1_000_000, env = "ORDERFLOW_BENCH_EVENTS")]
    events: u64,
    /// Simulated days the seeded history spans.
    #[arg(long, default_value_t = 30, env = "ORDERFLOW_BENCH_DAYS")]
    days: u32,
    /// Seed of the simulation: the same seed gives the same history.
    #[arg(long, default_value_t = 42, env = "ORDERFLOW_BENCH_SEED")]
    seed: u64,
    /// Customers of the simulated shop (default: one per 50 events).
    #[arg(long, env = "ORDERFLOW_BENCH_CUSTOMERS")]
    customers: Option<usize>,
    /// Products in its catalogue (default: one per 500 events).
    #[arg(long, env = "ORDERFLOW_BENCH_PRODUCTS")]
    products: Option<usize>,
    /// The projections to rebuild, in this order (the raw COPY comparison needs the dashboard).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "order_dashboard,sales_analytics",
        env = "ORDERFLOW_BENCH_PROJECTIONS"
    )]
    projections: Vec<String>,
    /// Events per rebuild batch (read from the log and applied in one transaction).
    #[arg(long, default_value_t = 10_000, env = "ORDERFLOW_BENCH_BATCH_SIZE")]
    batch_size: usize,
    #[command(flatten)]
    servers: ScratchServers,
}

#[derive(Debug, Serialize)]
struct ProjectionRun {
    name: String,
    version: u32,
    events: u64,
    /// The rebuild's own figure: reading the log and applying it, up to the switch.
    seconds: f64,
    events_per_second: f64,
    /// Everything `projections::rebuild` took, table creation and switch included.
    wall_seconds: f64,
    /// The process's resident memory before the rebuild, and its peak during it (KiB; Linux).
    rss_before_kib: Option<u64>,
    peak_rss_kib: Option<u64>,
}

/// A raw COPY of every row of the dashboard's tables into fresh tables.
#[derive(Debug, Serialize)]
struct CopyRun {
    tables: usize,
    /// `maintained`: the tables had their keys and indexes while COPY filled them; `built after`:
    /// COPY into bare tables, then the same keys and indexes built; `none`: bare tables only.
    indexes: &'static str,
    rows: u64,
    bytes: u64,
    seconds: f64,
    rows_per_second: f64,
}

pub(crate) async fn run(b: RebuildBench) -> anyhow::Result<()> {
    anyhow::ensure!(b.events > 0 && b.days > 0, "--events and --days must be positive");
    anyhow::ensure!(b.batch_size > 0, "--batch-size must be positive");
    for name in &b.projections {
        anyhow::ensure!(
            catalog::NAMES.contains(&name.as_str()),
            "unknown projection {name:?}; known: {}",
            catalog::NAMES.join(", ")
        );
    }
    anyhow::ensure!(
        b.projections.iter().any(|n| n == projections::dashboard::NAME),
        "--projections must include {} (the raw COPY comparison copies its rows)",
        projections::dashboard::NAME
    );
    Scratch::measure(&b.servers, async |scratch| measure(&b, scratch).await).await
}

/// Seeds the store, reads the log, rebuilds each projection, then copies the dashboard's rows
/// raw for comparison.
async fn measure(b: &RebuildBench, scratch: &Scratch) -> anyhow::Result<serde_json::Value> {
    let logs = scratch::logs(&scratch.open_stores().await?);
    let seeded = seed(b, &logs).await?;
    let sinks = scratch.sinks().await?;
    let head = scratch::heads(&logs).await?;
    let log_read = read_logs(&logs, head, b.batch_size).await?;
    eprintln!(
        "read and decoded the logs: {} events in {:.1}s: {:.0} events/s",
        log_read.events, log_read.seconds, log_read.events_per_second
    );
    let mut runs = Vec::new();
    for name in &b.projections {
        runs.push(rebuild_one(&logs, &sinks, name, head, b.batch_size).await?);
    }
    let dashboard = runs
        .iter()
        .find(|r| r.name == projections::dashboard::NAME)
        .context("the dashboard was not rebuilt")?;
    let copies = raw_copies(scratch, &projections::dashboard::table_prefix(dashboard.version)).await?;
    Ok(report(b, &seeded, &log_read, &runs, dashboard, &copies))
}

/// The seeded history: what was asked for, and what the seeder made.
struct Seeded {
    options: SeedOptions,
    report: SeedReport,
}

/// Seeds the store with the simulated shop `b` describes, showing a progress bar.
async fn seed(b: &RebuildBench, logs: &[ServiceLog]) -> anyhow::Result<Seeded> {
    let options = SeedOptions {
        events: b.events,
        days: b.days,
        seed: b.seed,
        customers: b.customers.unwrap_or((b.events / 50).max(100) as usize),
        products: b.products.unwrap_or((b.events / 500).max(20) as usize),
        ..SeedOptions::default()
    };
    let seeded = shop_sim::seed_with_progress(logs, &options, "seeding the event stores").await?;
    eprintln!(
        "seeded {} events ({} orders, {} customers, {} products) in {:.1}s: {:.0} events/s",
        seeded.events, seeded.orders, seeded.customers, seeded.products, seeded.seconds, seeded.events_per_second
    );
    Ok(Seeded {
        options,
        report: seeded,
    })
}

/// Rebuilds projection `name` from the services' logs (`head`: the sum of their heads), timing
/// it and watching the process's peak resident memory meanwhile.
async fn rebuild_one(
    logs: &[ServiceLog],
    sinks: &Sinks,
    name: &str,
    head: u64,
    batch_size: usize,
) -> anyhow::Result<ProjectionRun> {
    let factory = catalog::factory(name, sinks)?;
    let bar = progress_bar(head, &format!("rebuilding {name}"), "positions");
    let rss_before_kib = memory_kib("VmRSS");
    let peak_reset = reset_peak_memory();
    let started = Instant::now();
    let report = projections::rebuild(
        logs.to_vec(),
        &sinks.read_db,
        factory,
        RebuildOptions {
            batch_size,
            ..RebuildOptions::default()
        },
        CancellationToken::new(),
        |progress| {
            bar.set_length(progress.target.max(progress.position));
            bar.set_position(progress.position);
        },
    )
    .await
    .with_context(|| format!("rebuilding {name}"))?;
    let wall_seconds = started.elapsed().as_secs_f64();
    let peak_rss_kib = if peak_reset { memory_kib("VmHWM") } else { None };
    bar.finish_and_clear();
    eprintln!(
        "rebuilt {name} v{}: {} events in {:.1}s: {:.0} events/s; resident memory {} MiB before, {} MiB at most during it",
        report.version,
        report.events_applied,
        report.seconds,
        report.events_per_second,
        rss_before_kib.map_or("?".to_owned(), |kib| (kib / 1024).to_string()),
        peak_rss_kib.map_or("?".to_owned(), |kib| (kib / 1024).to_string()),
    );
    Ok(ProjectionRun {
        name: report.name,
        version: report.version,
        events: report.events_applied,
        seconds: report.seconds,
        events_per_second: report.events_per_second,
        wall_seconds,
        rss_before_kib,
        peak_rss_kib,
    })
}

/// The dashboard's rows copied out, and the three raw COPYs of them back in.
struct RawCopies {
    tables: usize,
    copy_out_seconds: f64,
    maintained: CopyRun,
    built_after: CopyRun,
    bare: CopyRun,
}

/// Copies every row of the dashboard's tables (named `{prefix}{table}`) out, then times a raw
/// COPY of them into fresh tables, once per way of indexing them ([`copy_in`]).
async fn raw_copies(scratch: &Scratch, prefix: &str) -> anyhow::Result<RawCopies> {
    let mut conn = scratch
        .admin
        .with_database(&scratch.read_db)
        .options()
        .connect()
        .await?;
    // The rebuild's bulk load gives its index builds this much memory; so does the raw COPY.
    sqlx::raw_sql("SET maintenance_work_mem = '256MB'")
        .execute(&mut conn)
        .await?;
    let started = Instant::now();
    let mut tables = Vec::new();
    for table in projections::dashboard::TABLES {
        let source = format!("{prefix}{table}");
        let rows: Vec<bytes::Bytes> = conn
            .copy_out_raw(&format!("COPY (SELECT * FROM {source}) TO STDOUT"))
            .await?
            .try_collect()
            .await?;
        tables.push((source, rows));
    }
    let copy_out_seconds = started.elapsed().as_secs_f64();
    let maintained = copy_in(&mut conn, &tables, Indexes::Maintained).await?;
    let built_after = copy_in(&mut conn, &tables, Indexes::BuiltAfter).await?;
    let bare = copy_in(&mut conn, &tables, Indexes::None).await?;
    conn.close().await.ok();
    eprintln!(
        "raw COPY of {} dashboard rows ({} tables): {:.2}s with keys and indexes maintained ({:.0} rows/s), \
         {:.2}s with them built after, {:.2}s without any",
        maintained.rows,
        maintained.tables,
        maintained.seconds,
        maintained.rows_per_second,
        built_after.seconds,
        bare.seconds
    );
    Ok(RawCopies {
        tables: tables.len(),
        copy_out_seconds,
        maintained,
        built_after,
        bare,
    })
}

/// The JSON document of the run.
fn report(
    b: &RebuildBench,
    seeded: &Seeded,
    log_read: &LogRead,
    runs: &[ProjectionRun],
    dashboard: &ProjectionRun,
    copies: &RawCopies,
) -> serde_json::Value {
    let RawCopies {
        maintained,
        built_after,
        bare,
        ..
    } = copies;
    // What the dashboard's rebuild would reach if it wrote its rows as fast as a raw COPY: the
    // events it applied, over the time the best raw COPY takes for the rows they produce (and
    // the same indexes).
    let best = if built_after.seconds < maintained.seconds {
        built_after
    } else {
        maintained
    };
    let copy_equivalent = dashboard.events as f64 / best.seconds.max(1e-9);
    let options = &seeded.options;
    serde_json::json!({
        "benchmark": "rebuild",
        "event_store": "postgres",
        "seed": {
            "options": {
                "events": options.events,
                "days": options.days,
                "seed": options.seed,
                "customers": options.customers,
                "products": options.products,
                "batch_events": options.batch_events,
            },
            "report": seeded.report,
        },
        "batch_size": b.batch_size,
        "log_read": log_read,
        "projections": runs,
        "copy_out": { "tables": copies.tables, "rows": maintained.rows, "seconds": copies.copy_out_seconds },
        "raw_copy": maintained,
        "raw_copy_indexes_built_after": built_after,
        "raw_copy_no_indexes": bare,
        "dashboard_vs_copy": {
            "dashboard_events_per_second": dashboard.events_per_second,
            "copy": best.indexes,
            "copy_equivalent_events_per_second": copy_equivalent,
            "ratio": dashboard.events_per_second / copy_equivalent,
        },
    })
}

#[derive(Debug, Serialize)]
struct LogRead {
    events: u64,
    seconds: f64,
    events_per_second: f64,
}

/// Times what every rebuild does before applying anything: reading every service's log in
/// batches of `batch_size` and decoding every event. The floor under any rebuild's time.
async fn read_logs(logs: &[ServiceLog], head: u64, batch_size: usize) -> anyhow::Result<LogRead> {
    let bar = progress_bar(head, "reading the logs", "positions");
    let started = Instant::now();
    let mut events = 0_u64;
    for log in logs {
        let mut after = 0;
        loop {
            let page = log.store.read_all(after, batch_size).await?;
            let Some(last) = page.last() else {
                break;
            };
            after = last.position;
            for e in &page {
                event_schemas::decode(&e.event_type, e.schema_version, &e.payload)
                    .with_context(|| format!("event {}:{} does not decode", log.service, e.position))?;
            }
            events += page.len() as u64;
            bar.inc(page.len() as u64);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok(LogRead {
        events,
        seconds,
        events_per_second: events as f64 / seconds.max(1e-9),
    })
}

/// How the raw COPY's target tables are indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Indexes {
    /// Keys and indexes exist while COPY fills the tables.
    Maintained,
    /// Bare tables, then the source tables' keys and indexes built (timed too).
    BuiltAfter,
    /// Bare tables only.
    None,
}

/// Times `COPY ... FROM STDIN` of each table's rows into a new table shaped like it, all in one
/// transaction (like the rebuild's bulk load).
async fn copy_in(
    conn: &mut PgConnection,
    tables: &[(String, Vec<bytes::Bytes>)],
    indexes: Indexes,
) -> anyhow::Result<CopyRun> {
    let (kind, label) = match indexes {
        Indexes::Maintained => ("indexed", "maintained"),
        Indexes::BuiltAfter => ("after", "built after"),
        Indexes::None => ("bare", "none"),
    };
    let mut targets = Vec::new();
    for (i, (source, _)) in tables.iter().enumerate() {
        let target = format!("bench_copy_{kind}_{i}");
        let including = if indexes == Indexes::Maintained {
            " INCLUDING ALL"
        } else {
            ""
        };
        // Both names are ours: a fixed word and the dashboard's `order_dashboard_v{N}_{table}`.
        let ddl = format!("CREATE TABLE {target} (LIKE {source}{including})");
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl)).execute(&mut *conn).await?;
        targets.push(target);
    }
    let mut index_ddl = Vec::new();
    if indexes == Indexes::BuiltAfter {
        for ((source, _), target) in tables.iter().zip(&targets) {
            let definitions: Vec<String> =
                sqlx::query_scalar("SELECT indexdef FROM pg_indexes WHERE tablename = $1 ORDER BY indexname")
                    .bind(source)
                    .fetch_all(&mut *conn)
                    .await?;
            for (n, definition) in definitions.iter().enumerate() {
                // `CREATE [UNIQUE] INDEX name ON public.table USING btree (columns)`
                let unique = if definition.starts_with("CREATE UNIQUE") {
                    "UNIQUE "
                } else {
                    ""
                };
                let (_, using) = definition
                    .split_once(" USING ")
                    .with_context(|| format!("unexpected index definition {definition:?}"))?;
                index_ddl.push(format!("CREATE {unique}INDEX {target}_i{n} ON {target} USING {using}"));
            }
        }
    }
    let started = Instant::now();
    sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
    let mut rows = 0;
    for ((_, data), target) in tables.iter().zip(&targets) {
        let mut copy = conn.copy_in_raw(&format!("COPY {target} FROM STDIN")).await?;
        for chunk in data {
            copy.send(chunk.as_ref()).await?;
        }
        rows += copy.finish().await?;
    }
    for ddl in &index_ddl {
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl.clone()))
            .execute(&mut *conn)
            .await?;
    }
    sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(CopyRun {
        tables: tables.len(),
        indexes: label,
        rows,
        bytes: tables.iter().flat_map(|(_, data)| data).map(|c| c.len() as u64).sum(),
        seconds,
        rows_per_second: rows as f64 / seconds.max(1e-9),
    })
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`), in KiB; `None` off Linux.
fn memory_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// Resets the process's peak resident memory (`VmHWM`) to its current size (Linux).
fn reset_peak_memory() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
