//! `orderflow bench transfer`: how fast one service's log moves between stores, beside a raw
//! COPY of the same rows.
//!
//! 1. Seeds a simulated shop into the embedded layout (a SQLite store per service, temporary).
//! 2. Times `export` of one service's log (the orders', the largest) to a file, then `import` of
//!    that file into a new PostgreSQL database, then `export` back out of PostgreSQL.
//! 3. For scale: the same rows copied between two PostgreSQL databases with nothing but
//!    `COPY (SELECT * FROM events) TO STDOUT` and `COPY events FROM STDIN` (the table's key and
//!    indexes maintained, one transaction): what PostgreSQL alone takes to move them, which no
//!    import can beat. The import's rate is compared with it.
//!
//! One JSON document on stdout, progress on stderr. Every database and file is dropped after.

use std::time::Instant;

use clap::Args;
use event_schemas::Service;
use futures::TryStreamExt as _;
use projections::ServiceLog;
use serde::Serialize;
use service_kit::archive;
use service_kit::cli::progress_bar;
use service_kit::db::{self, Migrate, OpenStore, PoolSettings};
use shop_sim::SeedOptions;
use sqlx::{ConnectOptions as _, Connection as _};

use crate::load::print_json;
use crate::scratch::{Adapter, Target};

#[derive(Debug, Args)]
pub struct TransferBench {
    /// Events to seed the shop with (about a third of them are the orders').
    #[arg(long, default_value_t = 200_000, env = "ORDERFLOW_BENCH_EVENTS")]
    events: u64,
    /// Seed of the simulated shop.
    #[arg(long, default_value_t = 42, env = "ORDERFLOW_BENCH_SEED")]
    seed: u64,
    /// A PostgreSQL server URL; the benchmark creates its two databases there and drops them
    /// after.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        env = "ORDERFLOW_BENCH_PG_URL"
    )]
    pg_url: String,
}

/// One timed step.
#[derive(Debug, Serialize)]
struct Step {
    events: u64,
    seconds: f64,
    events_per_second: f64,
}

impl Step {
    fn of(events: u64, started: Instant) -> Self {
        let seconds = started.elapsed().as_secs_f64();
        Step {
            events,
            seconds,
            events_per_second: events as f64 / seconds.max(1e-9),
        }
    }
}

pub(crate) async fn run(b: TransferBench) -> anyhow::Result<()> {
    anyhow::ensure!(b.events > 0, "--events must be positive");
    let mut sqlite = Vec::new();
    for _ in Service::ALL {
        sqlite.push(Target::create(Adapter::Sqlite, &b.pg_url).await?);
    }
    let postgres = [
        Target::create(Adapter::Postgres, &b.pg_url).await?,
        Target::create(Adapter::Postgres, &b.pg_url).await?,
    ];
    let dir = std::env::temp_dir().join(format!("orderflow-bench-transfer-{}", uuid::Uuid::new_v4().simple()));
    let result = measure(&b, &sqlite, &postgres, &dir).await;
    for target in sqlite.iter().chain(&postgres) {
        target.drop_all().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    print_json(&result?)
}

async fn open(target: &Target, migrate: Migrate) -> anyhow::Result<OpenStore> {
    Ok(db::open_event_store(&target.url(), PoolSettings::READ_DB, migrate).await?)
}

async fn measure(
    b: &TransferBench,
    sqlite: &[Target],
    postgres: &[Target; 2],
    dir: &std::path::Path,
) -> anyhow::Result<serde_json::Value> {
    std::fs::create_dir_all(dir)?;
    let mut stores = Vec::new();
    for target in sqlite {
        stores.push(open(target, Migrate::Yes).await?);
    }
    let logs: Vec<ServiceLog> = Service::ALL
        .into_iter()
        .zip(&stores)
        .map(|(service, store)| ServiceLog::new(service, store.shared()))
        .collect();
    let options = SeedOptions {
        events: b.events,
        seed: b.seed,
        customers: (b.events / 50).max(100) as usize,
        products: (b.events / 500).max(20) as usize,
        ..SeedOptions::default()
    };
    shop_sim::seed_with_progress(&logs, &options, "seeding the services' SQLite stores").await?;
    let service = Service::Orders;
    let source = &stores[2];
    let events = source.shared().head_position().await?;

    let file = dir.join("orders.log.jsonl");
    let bar = progress_bar(0, "export from SQLite", "events");
    let started = Instant::now();
    let exported = archive::export(&*source.transfer(), service, &file, |n| bar.set_position(n)).await?;
    let export_sqlite = Step::of(exported.events, started);
    bar.finish_and_clear();
    let bytes = std::fs::metadata(&file)?.len();
    eprintln!(
        "exported {} events from SQLite in {:.1}s ({:.0}/s), {bytes} bytes",
        exported.events, export_sqlite.seconds, export_sqlite.events_per_second
    );

    let target = open(&postgres[0], Migrate::Yes).await?;
    let bar = progress_bar(exported.events, "import into PostgreSQL", "events");
    let started = Instant::now();
    let imported = archive::import(&file, service, &*target.transfer(), |n| bar.set_position(n)).await?;
    let import_postgres = Step::of(imported.events, started);
    bar.finish_and_clear();
    eprintln!(
        "imported into PostgreSQL in {:.1}s ({:.0}/s), the whole file checked first",
        import_postgres.seconds, import_postgres.events_per_second
    );

    let back = dir.join("orders.back.jsonl");
    let started = Instant::now();
    let exported_back = archive::export(&*target.transfer(), service, &back, |_| {}).await?;
    let export_postgres = Step::of(exported_back.events, started);
    target.close().await;

    let copy = raw_copy(postgres).await?;
    eprintln!(
        "raw COPY of the same {} rows between PostgreSQL databases: {:.1}s ({:.0}/s)",
        copy.events, copy.seconds, copy.events_per_second
    );
    for store in &stores {
        store.close().await;
    }
    Ok(serde_json::json!({
        "benchmark": "transfer",
        "service": service.name(),
        "seeded_events": b.events,
        "service_events": events,
        "file_bytes": bytes,
        "export_sqlite": export_sqlite,
        "import_postgres": import_postgres,
        "export_postgres": export_postgres,
        "raw_copy_postgres": copy,
        "import_vs_copy": import_postgres.events_per_second / copy.events_per_second.max(1e-9),
    }))
}

/// Copies the imported database's `events` rows into the second database's (migrated, empty)
/// with COPY alone, in one transaction; times the copy out and in together.
async fn raw_copy(postgres: &[Target; 2]) -> anyhow::Result<Step> {
    // The second database gets the store's tables (and their key and indexes).
    open(&postgres[1], Migrate::Yes).await?.close().await;
    let (Some(from), Some(to)) = (
        postgres[0].url().postgres().cloned(),
        postgres[1].url().postgres().cloned(),
    ) else {
        anyhow::bail!("the raw copy runs between PostgreSQL databases");
    };
    let mut source = from.options().connect().await?;
    let mut target = to.options().connect().await?;
    let started = Instant::now();
    let rows: Vec<bytes::Bytes> = source
        .copy_out_raw("COPY (SELECT * FROM events ORDER BY position) TO STDOUT")
        .await?
        .try_collect()
        .await?;
    sqlx::raw_sql("BEGIN").execute(&mut target).await?;
    let mut copy = target.copy_in_raw("COPY events FROM STDIN").await?;
    for chunk in &rows {
        copy.send(chunk.as_ref()).await?;
    }
    let copied = copy.finish().await?;
    sqlx::raw_sql("COMMIT").execute(&mut target).await?;
    let step = Step::of(copied, started);
    source.close().await.ok();
    target.close().await.ok();
    Ok(step)
}
