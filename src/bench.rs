//! Benchmarks: each prints one JSON document on stdout, progress on stderr.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::{Args, Subcommand, ValueEnum};
use event_store::{EventMetadata, EventStore, ExpectedVersion, NewEvent, PgEventStore, SqliteEventStore, StoreOptions};
use hdrhistogram::Histogram;
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};
use uuid::Uuid;

#[derive(Debug, Subcommand)]
pub(crate) enum Bench {
    /// Append throughput and latency: N concurrent writers × events per append, per adapter.
    Store(StoreBench),
    /// Command throughput over HTTP: C concurrent clients placing orders on the write side
    /// (PostgreSQL store, in-process server on loopback, auth off).
    Commands(CommandsBench),
    /// Relay throughput and latency: a backlog published from the PostgreSQL store to the broker,
    /// then a steady append rate with append→acknowledged latency.
    Relay(RelayBench),
    /// Projection rebuild throughput: a seeded shop history (PostgreSQL store) rebuilt into the
    /// dashboard (PostgreSQL) and the analytics (ClickHouse), beside a raw COPY of the same rows.
    Rebuild(crate::bench_rebuild::RebuildBench),
    /// Read API throughput and latency over a seeded read model (dashboard list, one order,
    /// revenue by day; closed loop, and the list at a fixed rate), then freshness: orders placed
    /// through the write side, relayed through Kafka, until the read API shows them.
    Reads(crate::bench_reads::ReadsBench),
    /// Freshness of a running deployment (e.g. `scripts/dev-up`), over HTTP only: orders placed
    /// at a fixed rate, each timed from the command's answer until the dashboard list shows it.
    Freshness(crate::bench_freshness::FreshnessBench),
}

#[derive(Debug, Args)]
pub(crate) struct RelayBench {
    /// Events in the backlog published first (throughput).
    #[arg(long, default_value_t = 200_000, env = "ORDERFLOW_BENCH_EVENTS")]
    events: usize,
    /// Steady append rate (events/s) for the latency phase.
    #[arg(long, default_value_t = 2_000, env = "ORDERFLOW_BENCH_RATE")]
    rate: u64,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 10, env = "ORDERFLOW_BENCH_SECONDS")]
    seconds: u64,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092", env = "ORDERFLOW_KAFKA_BROKERS")]
    kafka_brokers: String,
    /// A PostgreSQL server URL; the benchmark creates its own database there and drops it after.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        env = "ORDERFLOW_BENCH_PG_URL"
    )]
    pg_url: String,
}

#[derive(Debug, Args)]
pub(crate) struct CommandsBench {
    /// Concurrent HTTP clients, one run per value.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,16,64",
        env = "ORDERFLOW_BENCH_CLIENTS"
    )]
    clients: Vec<usize>,
    /// Seconds each run lasts.
    #[arg(long, default_value_t = 10, env = "ORDERFLOW_BENCH_SECONDS")]
    seconds: u64,
    /// Products in the catalogue the orders draw from (fewer means more contention on stock).
    #[arg(long, default_value_t = 200, env = "ORDERFLOW_BENCH_PRODUCTS")]
    products: usize,
    /// Customers placing the orders.
    #[arg(long, default_value_t = 100, env = "ORDERFLOW_BENCH_CUSTOMERS")]
    customers: usize,
    /// A PostgreSQL server URL; the benchmark creates its own database there and drops it after.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        env = "ORDERFLOW_BENCH_PG_URL"
    )]
    pg_url: String,
    /// Measure the floor instead: the same clients and orders against a server that parses each
    /// order and answers 201 without deciding or storing it. What HTTP, JSON and the load
    /// generator alone cost on this machine, which no store can go below.
    #[arg(long, env = "ORDERFLOW_BENCH_FLOOR")]
    floor: bool,
}

#[derive(Debug, Serialize)]
struct CommandsRun {
    clients: usize,
    seconds: f64,
    commands: u64,
    /// Answers other than 201 (e.g. 409 after the handler's conflict retries ran out).
    rejected: u64,
    commands_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Adapter {
    Postgres,
    Sqlite,
}

#[derive(Debug, Args)]
pub(crate) struct StoreBench {
    /// Adapters to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "postgres,sqlite",
        env = "ORDERFLOW_BENCH_ADAPTERS"
    )]
    adapters: Vec<Adapter>,
    /// Concurrent writers (tasks appending in a loop), one run per value.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,16,64",
        env = "ORDERFLOW_BENCH_WRITERS"
    )]
    writers: Vec<usize>,
    /// Events per append, one run per value.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,10",
        env = "ORDERFLOW_BENCH_EVENTS_PER_APPEND"
    )]
    events_per_append: Vec<usize>,
    /// Seconds each run lasts.
    #[arg(long, default_value_t = 10, env = "ORDERFLOW_BENCH_SECONDS")]
    seconds: u64,
    /// Payload bytes per event (a typical order event encodes to 100-300 bytes).
    #[arg(long, default_value_t = 200, env = "ORDERFLOW_BENCH_PAYLOAD_BYTES")]
    payload_bytes: usize,
    /// A PostgreSQL server URL; the benchmark creates its own database there and drops it after.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        env = "ORDERFLOW_BENCH_PG_URL"
    )]
    pg_url: String,
}

#[derive(Debug, Serialize)]
struct StoreRun {
    adapter: Adapter,
    writers: usize,
    events_per_append: usize,
    seconds: f64,
    appends: u64,
    events: u64,
    appends_per_sec: f64,
    events_per_sec: f64,
    p50_append_ms: f64,
    p99_append_ms: f64,
    max_append_ms: f64,
}

pub(crate) async fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Store(b) => store(b).await,
        Bench::Commands(b) => commands(b).await,
        Bench::Relay(b) => relay(b).await,
        Bench::Rebuild(b) => crate::bench_rebuild::run(b).await,
        Bench::Reads(b) => crate::bench_reads::run(b).await,
        Bench::Freshness(b) => crate::bench_freshness::run(b).await,
    }
}

async fn store(b: StoreBench) -> anyhow::Result<()> {
    anyhow::ensure!(b.seconds > 0, "--seconds must be at least 1");
    anyhow::ensure!(b.writers.iter().all(|&w| w > 0), "--writers must be positive");
    anyhow::ensure!(
        b.events_per_append.iter().all(|&e| e > 0),
        "--events-per-append must be positive"
    );
    let mut runs = Vec::new();
    let total = b.adapters.len() * b.writers.len() * b.events_per_append.len();
    let mut n = 0;
    for &adapter in &b.adapters {
        for &writers in &b.writers {
            for &per_append in &b.events_per_append {
                n += 1;
                eprintln!(
                    "[{n}/{total}] {adapter:?}: {writers} writers × {per_append} events per append, {}s …",
                    b.seconds
                );
                let target = Target::create(adapter, &b.pg_url).await?;
                let store = target.open().await?;
                let run = measure(store, adapter, writers, per_append, &b).await;
                target.drop_all().await;
                let run = run?;
                eprintln!(
                    "      {:>10.0} events/s  p50 {:.2} ms  p99 {:.2} ms",
                    run.events_per_sec, run.p50_append_ms, run.p99_append_ms
                );
                runs.push(run);
            }
        }
    }
    let out = serde_json::json!({ "benchmark": "store", "runs": runs });
    #[allow(clippy::print_stdout)]
    {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// A scratch database for one run: a new PostgreSQL database or a new SQLite file.
enum Target {
    Postgres { admin: Box<PgConnectOptions>, name: String },
    Sqlite(std::path::PathBuf),
}

impl Target {
    async fn create(adapter: Adapter, pg_url: &str) -> anyhow::Result<Self> {
        match adapter {
            Adapter::Postgres => {
                let admin: PgConnectOptions = pg_url.parse().context("--pg-url is not a PostgreSQL URL")?;
                let name = format!("orderflow_bench_{}", Uuid::new_v4().simple());
                let mut conn = admin
                    .connect()
                    .await
                    .context("connect to PostgreSQL (is `scripts/services up` running?)")?;
                // The name is ours, [a-z0-9_] only.
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await?;
                conn.close().await.ok();
                Ok(Target::Postgres {
                    admin: Box::new(admin),
                    name,
                })
            }
            Adapter::Sqlite => Ok(Target::Sqlite(
                std::env::temp_dir().join(format!("orderflow-bench-{}.db", Uuid::new_v4().simple())),
            )),
        }
    }

    async fn open(&self) -> anyhow::Result<Arc<dyn EventStore>> {
        Ok(match self {
            Target::Postgres { .. } => Arc::new(self.open_pg().await?),
            Target::Sqlite(path) => {
                let pool = SqliteEventStore::connect(path).await?;
                SqliteEventStore::migrate(&pool).await?;
                Arc::new(SqliteEventStore::open(pool, StoreOptions::default()).await?)
            }
        })
    }

    /// The PostgreSQL store, migrated, with the pool settings the binaries use.
    async fn open_pg(&self) -> anyhow::Result<PgEventStore> {
        let Target::Postgres { admin, name } = self else {
            anyhow::bail!("this benchmark runs on PostgreSQL");
        };
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(admin.as_ref().clone().database(name))
            .await?;
        PgEventStore::migrate(&pool).await?;
        Ok(PgEventStore::open(pool, StoreOptions::default()).await?)
    }

    async fn drop_all(&self) {
        match self {
            Target::Postgres { admin, name } => {
                if let Ok(mut conn) = admin.connect().await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await {
                        tracing::warn!(error = %e, database = %name, "could not drop the benchmark database");
                    }
                }
            }
            Target::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }
}

async fn measure(
    store: Arc<dyn EventStore>,
    adapter: Adapter,
    writers: usize,
    per_append: usize,
    b: &StoreBench,
) -> anyhow::Result<StoreRun> {
    let payload = vec![0x5a_u8; b.payload_bytes];
    let deadline = Instant::now() + Duration::from_secs(b.seconds);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let store = store.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut appends = 0_u64;
            while Instant::now() < deadline {
                // Each writer owns 100 streams, like a client working on many orders.
                let stream = format!("bench-{w}-{}", appends % 100);
                let events = (0..per_append)
                    .map(|_| NewEvent {
                        event_id: Uuid::new_v4(),
                        event_type: "bench.appended".into(),
                        schema_version: 1,
                        payload: payload.clone(),
                        occurred_at: Utc::now(),
                        metadata: EventMetadata::default(),
                    })
                    .collect();
                let t = Instant::now();
                store.append(&stream, ExpectedVersion::Any, events).await?;
                hist.record(t.elapsed().as_micros().max(1) as u64)?;
                appends += 1;
            }
            anyhow::Ok((appends, hist))
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut appends = 0;
    for t in tasks {
        let (n, h) = t.await??;
        appends += n;
        hist.add(h)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let events = appends * per_append as u64;
    Ok(StoreRun {
        adapter,
        writers,
        events_per_append: per_append,
        seconds: secs,
        appends,
        events,
        appends_per_sec: appends as f64 / secs,
        events_per_sec: events as f64 / secs,
        p50_append_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p99_append_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        max_append_ms: hist.max() as f64 / 1000.0,
    })
}

async fn commands(b: CommandsBench) -> anyhow::Result<()> {
    use write_side::domain::{CustomerCommand, ProductCommand};
    use write_side::http::{Auth, HttpConfig, HttpState};
    use write_side::{CommandContext, CommandHandler, HandlerOptions};

    anyhow::ensure!(
        b.seconds > 0 && b.products > 0 && b.customers > 0,
        "--seconds, --products and --customers must be positive"
    );
    anyhow::ensure!(b.clients.iter().all(|&c| c > 0), "--clients must be positive");
    if b.floor {
        return commands_floor(b).await;
    }
    let mut runs = Vec::new();
    for (n, &clients) in b.clients.iter().enumerate() {
        eprintln!(
            "[{}/{}] {clients} HTTP clients placing orders, {}s …",
            n + 1,
            b.clients.len(),
            b.seconds
        );
        let target = Target::create(Adapter::Postgres, &b.pg_url).await?;
        let store = target.open().await?;
        let handler = CommandHandler::new(store, HandlerOptions::default());
        eprintln!("      seeding {} customers and {} products …", b.customers, b.products);
        let ctx = CommandContext::default();
        let mut customers = Vec::with_capacity(b.customers);
        for i in 0..b.customers {
            let id = Uuid::now_v7();
            let c = CustomerCommand::Register {
                customer_id: id,
                name: format!("Customer {i}"),
                email: format!("c{i}@example.com"),
            };
            handler.customer(&ctx, id, c).await?;
            customers.push(id);
        }
        let mut products = Vec::with_capacity(b.products);
        for i in 0..b.products {
            let id = Uuid::now_v7();
            let c = ProductCommand::Add {
                product_id: id,
                sku: format!("SKU-{i:05}"),
                name: format!("Product {i}"),
                price_minor: 100 + (i as i64 * 37) % 10_000,
                currency: "EUR".into(),
                stock: 1_000_000_000,
            };
            handler.product(&ctx, id, c).await?;
            products.push(id);
        }
        let app = write_side::http::router(HttpState::new(handler, HttpConfig::new(Auth::Disabled)));
        let run = serve_and_drive(app, clients, &customers, &products, b.seconds).await;
        target.drop_all().await;
        let run = run?;
        eprintln!(
            "      {:>8.0} commands/s  p50 {:.2} ms  p99 {:.2} ms  ({} not 201)",
            run.commands_per_sec, run.p50_ms, run.p99_ms, run.rejected
        );
        runs.push(run);
    }
    let out = serde_json::json!({ "benchmark": "commands", "command": "POST /v1/orders (1-3 lines)", "runs": runs });
    #[allow(clippy::print_stdout)]
    {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// `bench commands --floor`: the same load against a server that only parses and answers.
async fn commands_floor(b: CommandsBench) -> anyhow::Result<()> {
    use axum::Json;
    use axum::http::StatusCode;
    use write_side::http::{CommandAnswerBody, PlaceOrderBody};

    let next_position = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let answer = move |Json(body): Json<PlaceOrderBody>| {
        let position = next_position.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let order_id = body.order_id.unwrap_or_else(Uuid::now_v7);
        let answer = CommandAnswerBody {
            stream_id: event_schemas::Category::Order.stream_id(order_id),
            version: 1,
            position,
        };
        // What the write side answers with: 201, the body and the stream's version as ETag.
        std::future::ready((StatusCode::CREATED, [(axum::http::header::ETAG, "\"1\"")], Json(answer)))
    };
    let app = axum::Router::new().route("/v1/orders", axum::routing::post(answer));
    let customers: Vec<Uuid> = (0..b.customers).map(|_| Uuid::now_v7()).collect();
    let products: Vec<Uuid> = (0..b.products).map(|_| Uuid::now_v7()).collect();
    let mut runs = Vec::new();
    for (n, &clients) in b.clients.iter().enumerate() {
        eprintln!(
            "[{}/{}] floor: {clients} HTTP clients, nothing decided or stored, {}s …",
            n + 1,
            b.clients.len(),
            b.seconds
        );
        let run = serve_and_drive(app.clone(), clients, &customers, &products, b.seconds).await?;
        eprintln!(
            "      {:>8.0} answers/s  p50 {:.2} ms  p99 {:.2} ms",
            run.commands_per_sec, run.p50_ms, run.p99_ms
        );
        runs.push(run);
    }
    let out = serde_json::json!({
        "benchmark": "commands-floor",
        "command": "POST /v1/orders (1-3 lines), parsed and answered, nothing decided or stored",
        "runs": runs,
    });
    #[allow(clippy::print_stdout)]
    {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// Serves `app` on a loopback port for one run of [`drive`], then stops it.
async fn serve_and_drive(
    app: axum::Router,
    clients: usize,
    customers: &[Uuid],
    products: &[Uuid],
    seconds: u64,
) -> anyhow::Result<CommandsRun> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(write_side::http::serve_on(
        listener,
        app,
        Duration::from_secs(5),
        async {
            let _ = stopped.await;
        },
    ));
    let run = drive(clients, address, customers, products, seconds).await;
    let _ = stop.send(());
    let _ = server.await;
    run
}

/// C clients, each posting orders in a loop until the deadline; one keep-alive connection each.
async fn drive(
    clients: usize,
    address: std::net::SocketAddr,
    customers: &[Uuid],
    products: &[Uuid],
    seconds: u64,
) -> anyhow::Result<CommandsRun> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = format!("http://{address}/v1/orders").parse()?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let (client, uri) = (client.clone(), uri.clone());
        let (customers, products) = (customers.to_vec(), products.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let (mut ok, mut rejected) = (0_u64, 0_u64);
            // xorshift: cheap, deterministic per client.
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ (c as u64 + 1);
            let mut next = move |n: usize| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % n as u64) as usize
            };
            while Instant::now() < deadline {
                // 1 to 3 lines on distinct products (the domain refuses a product twice).
                let wanted = (1 + next(3)).min(products.len());
                let mut picked: Vec<usize> = Vec::with_capacity(wanted);
                while picked.len() < wanted {
                    let i = next(products.len());
                    if !picked.contains(&i) {
                        picked.push(i);
                    }
                }
                let lines: Vec<_> = picked
                    .iter()
                    .map(|&i| serde_json::json!({ "product_id": products[i], "quantity": 1 + next(3) }))
                    .collect();
                let body = serde_json::json!({ "customer_id": customers[next(customers.len())], "lines": lines });
                let request = hyper::Request::post(uri.clone())
                    .header("content-type", "application/json")
                    .body(Full::new(bytes::Bytes::from(serde_json::to_vec(&body)?)))?;
                let t = Instant::now();
                let response = client.request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                hist.record(t.elapsed().as_micros().max(1) as u64)?;
                if status == hyper::StatusCode::CREATED {
                    ok += 1;
                } else {
                    rejected += 1;
                }
            }
            anyhow::Ok((ok, rejected, hist))
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut commands, mut rejected) = (0, 0);
    for t in tasks {
        let (ok, bad, h) = t.await??;
        commands += ok;
        rejected += bad;
        hist.add(h)?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(CommandsRun {
        clients,
        seconds: secs,
        commands,
        rejected,
        commands_per_sec: commands as f64 / secs,
        p50_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: hist.max() as f64 / 1000.0,
    })
}

/// A customer registration as the write side would store it.
fn registration() -> (String, NewEvent) {
    let id = Uuid::now_v7();
    let registered = event_schemas::CustomerRegistered {
        customer_id: id,
        name: "Ada Lovelace".into(),
        email: "ada@example.com".into(),
    };
    let mut events = write_side::new_events(&EventMetadata::default(), &[registered]);
    (event_schemas::Category::Customer.stream_id(id), events.remove(0))
}

async fn relay(b: RelayBench) -> anyhow::Result<()> {
    use write_side::relay::{self, RelayConfig, RelayStatus};

    anyhow::ensure!(
        b.events > 0 && b.rate > 0 && b.seconds > 0,
        "--events, --rate and --seconds must be positive"
    );
    let target = Target::create(Adapter::Postgres, &b.pg_url).await?;
    let result = async {
        let store = target.open_pg().await?;
        eprintln!("seeding a backlog of {} events …", b.events);
        let mut left = b.events;
        while left > 0 {
            let mut batch = Vec::new();
            for _ in 0..left.min(64) {
                let store = store.clone();
                batch.push(tokio::spawn(async move {
                    let (stream, event) = registration();
                    store.append(&stream, ExpectedVersion::NoStream, vec![event]).await
                }));
            }
            left -= batch.len();
            for t in batch {
                t.await??;
            }
        }
        let head = store.head_position().await?;
        let config = RelayConfig {
            brokers: b.kafka_brokers.clone(),
            topic_prefix: format!("bench_{}.", Uuid::new_v4().simple()),
            ..RelayConfig::default()
        };
        let (status_tx, mut status) = tokio::sync::watch::channel(RelayStatus::default());
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(relay::run(store.clone(), config, status_tx, stop.clone()));
        tokio::time::timeout(Duration::from_secs(60), status.wait_for(|s| s.ready)).await??;
        eprintln!("publishing the backlog …");
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(600), status.wait_for(|s| s.checkpoint >= head)).await??;
        let backlog_secs = started.elapsed().as_secs_f64();

        eprintln!(
            "steady {} events/s for {}s, measuring append → acknowledged …",
            b.rate, b.seconds
        );
        let appended = Arc::new(std::sync::Mutex::new(
            std::collections::VecDeque::<(u64, Instant)>::new(),
        ));
        let writer = tokio::spawn({
            let (store, appended) = (store.clone(), appended.clone());
            let (rate, seconds) = (b.rate, b.seconds);
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                let per_tick = (rate / 100).max(1);
                let end = Instant::now() + Duration::from_secs(seconds);
                while Instant::now() < end {
                    tick.tick().await;
                    // This tick's appends go out together, as independent clients would send them.
                    let appends = (0..per_tick).map(|_| {
                        let (stream, event) = registration();
                        let store = store.clone();
                        async move {
                            let at = Instant::now();
                            let c = store.append(&stream, ExpectedVersion::NoStream, vec![event]).await?;
                            anyhow::Ok((c.last_position(), at))
                        }
                    });
                    for done in futures::future::join_all(appends).await {
                        appended
                            .lock()
                            .map_err(|_| anyhow::anyhow!("poisoned"))?
                            .push_back(done?);
                    }
                }
                anyhow::Ok(())
            }
        });
        let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let mut measured = 0_u64;
        while !writer.is_finished() || !appended.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.is_empty() {
            if tokio::time::timeout(Duration::from_secs(30), status.changed())
                .await
                .is_err()
            {
                anyhow::bail!("the relay made no progress for 30 s");
            }
            let checkpoint = status.borrow_and_update().checkpoint;
            let now = Instant::now();
            let mut queue = appended.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            // Appends finish in any order; sort by position before draining what is acknowledged.
            queue.make_contiguous().sort_unstable_by_key(|(p, _)| *p);
            while queue.front().is_some_and(|(p, _)| *p <= checkpoint) {
                if let Some((_, at)) = queue.pop_front() {
                    hist.record(now.duration_since(at).as_micros().max(1) as u64)?;
                    measured += 1;
                }
            }
        }
        writer.await??;
        stop.cancel();
        task.await??;
        let out = serde_json::json!({
            "benchmark": "relay",
            "backlog_events": head,
            "backlog_seconds": backlog_secs,
            "backlog_events_per_sec": head as f64 / backlog_secs,
            "steady_rate": b.rate,
            "steady_events_measured": measured,
            "p50_append_to_ack_ms": hist.value_at_quantile(0.50) as f64 / 1000.0,
            "p99_append_to_ack_ms": hist.value_at_quantile(0.99) as f64 / 1000.0,
            "max_append_to_ack_ms": hist.max() as f64 / 1000.0,
        });
        eprintln!(
            "      backlog {:.0} events/s; steady p50 {:.1} ms, p99 {:.1} ms",
            head as f64 / backlog_secs,
            hist.value_at_quantile(0.5) as f64 / 1000.0,
            hist.value_at_quantile(0.99) as f64 / 1000.0
        );
        anyhow::Ok(out)
    }
    .await;
    target.drop_all().await;
    #[allow(clippy::print_stdout)]
    {
        println!("{}", serde_json::to_string_pretty(&result?)?);
    }
    Ok(())
}
