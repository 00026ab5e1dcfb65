//! `orderflow bench reads`: how fast the read API answers over a realistic read model, and how
//! soon a command becomes visible in it (issue 6).
//!
//! 1. Creates its own PostgreSQL databases (event store, read database) and ClickHouse database,
//!    and drops them at the end, whatever happened ([`Scratch`]).
//! 2. Seeds the store with a simulated shop ([`crate::seed`], about 6 events per order) and
//!    rebuilds the dashboard (PostgreSQL) and the analytics (ClickHouse) from it.
//! 3. Serves the read API in-process on loopback and, per endpoint (a filtered page of the
//!    dashboard list, one order by id, revenue by day over the seeded range), runs C concurrent
//!    keep-alive clients in a closed loop for a while: requests/s, p50, p99. Then the list alone
//!    in an open loop at a fixed rate (requests sent on schedule, latency measured from the
//!    scheduled send time, so a slow answer cannot hide the queue behind it).
//! 4. Freshness: the write side's HTTP API, the relay and a dashboard Kafka worker, in-process on
//!    the same store; orders placed at a fixed rate, and for each answered command the time
//!    until `GET /v1/dashboard/orders/{id}` finds it. Unfinished orders are looked up in bulk in
//!    the read table every few milliseconds; once there, the GET through the read API confirms
//!    it, and the time of that answer is the one measured.
//!
//! One JSON document on stdout, progress on stderr.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use clap::Args;
use event_store::{EventStore, PgEventStore, StoreOptions};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use projections::catalog::{self, Sinks};
use projections::{KafkaOptions, ReadDb, RebuildOptions, RunOptions};
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bench_freshness::{PROBE_EVERY, Pending, Watched};
use crate::bench_rebuild::{Scratch, ScratchServers, progress_bar, write_line};
use crate::seed::{self, SeedOptions};

#[derive(Debug, Args)]
pub(crate) struct ReadsBench {
    /// Orders the read model should hold (the store is seeded with about 6 events per order).
    #[arg(long, default_value_t = 200_000, env = "ORDERFLOW_BENCH_ORDERS")]
    orders: u64,
    /// Simulated days the seeded history spans.
    #[arg(long, default_value_t = 30, env = "ORDERFLOW_BENCH_DAYS")]
    days: u32,
    /// Seed of the simulation (and of the request mix).
    #[arg(long, default_value_t = 42, env = "ORDERFLOW_BENCH_SEED")]
    seed: u64,
    /// Concurrent HTTP clients of each closed-loop run.
    #[arg(long, default_value_t = 32, env = "ORDERFLOW_BENCH_CLIENTS")]
    clients: usize,
    /// Seconds each run lasts (closed-loop runs, the fixed-rate list run).
    #[arg(long, default_value_t = 10, env = "ORDERFLOW_BENCH_SECONDS")]
    seconds: u64,
    /// Rate (requests/s) of the open-loop run of the list.
    #[arg(long, default_value_t = 2_000, env = "ORDERFLOW_BENCH_LIST_RATE")]
    list_rate: u64,
    /// Commands/s of the freshness run.
    #[arg(long, default_value_t = 1_000, env = "ORDERFLOW_BENCH_RATE")]
    rate: u64,
    /// Seconds of the freshness run.
    #[arg(long, default_value_t = 5, env = "ORDERFLOW_BENCH_FRESHNESS_SECONDS")]
    freshness_seconds: u64,
    /// Skip the freshness run (no Kafka needed).
    #[arg(long, env = "ORDERFLOW_BENCH_NO_FRESHNESS")]
    no_freshness: bool,
    /// Kafka bootstrap servers (freshness run).
    #[arg(long, default_value = "127.0.0.1:9092", env = "ORDERFLOW_KAFKA_BROKERS")]
    kafka_brokers: String,
    #[command(flatten)]
    servers: ScratchServers,
}

/// Connections the read API's pool holds (as the `read-api` binary).
const READ_POOL: u32 = 16;
/// Requests of the open-loop run in flight at most (beyond it they wait, still timed from
/// their scheduled send time).
const MAX_IN_FLIGHT: usize = 1024;
/// The read target of issue 6: list p99 at the fixed rate.
const LIST_P99_TARGET_MS: f64 = 10.0;

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;
/// Makes the path and query of one request.
type PathFn = Arc<dyn Fn(&mut Rng) -> String + Send + Sync>;

#[derive(Debug, Serialize)]
struct ClosedRun {
    endpoint: &'static str,
    example: String,
    clients: usize,
    seconds: f64,
    requests: u64,
    /// Answers other than 200, and transport errors.
    errors: u64,
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    mean_response_bytes: u64,
}

#[derive(Debug, Serialize)]
struct OpenRun {
    endpoint: &'static str,
    target_rate: u64,
    seconds: f64,
    sent: u64,
    errors: u64,
    achieved_rate: f64,
    /// From the scheduled send time to the whole answer read.
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    target_p99_ms: f64,
    target_met: bool,
}

/// What a freshness run measured (`bench reads` and `bench freshness`).
#[derive(Debug, Serialize)]
pub(crate) struct Freshness {
    pub(crate) target_rate: u64,
    pub(crate) seconds: f64,
    pub(crate) sent: u64,
    /// Answered 201.
    pub(crate) placed: u64,
    /// Other answers and transport errors.
    pub(crate) failed: u64,
    pub(crate) achieved_rate: f64,
    pub(crate) command_p50_ms: f64,
    pub(crate) command_p99_ms: f64,
    /// From the command's answer to the read API's 200 for the order.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    /// The same, from the command's send time.
    pub(crate) from_send_p50_ms: f64,
    pub(crate) from_send_p99_ms: f64,
    /// Placed orders never seen within the wait after the run.
    pub(crate) never_seen: u64,
    pub(crate) probe_every_ms: u64,
}

/// xorshift64*: cheap and deterministic per client.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        ((u128::from(x) * n.max(1) as u128) >> 64) as usize
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

pub(crate) async fn run(b: ReadsBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        b.orders > 0 && b.days > 0 && b.clients > 0 && b.seconds > 0,
        "--orders, --days, --clients and --seconds must be positive"
    );
    anyhow::ensure!(
        b.list_rate > 0 && b.rate > 0 && b.freshness_seconds > 0,
        "--list-rate, --rate and --freshness-seconds must be positive"
    );
    let scratch = Scratch::on(&b.servers)?;
    let result = async {
        scratch.create().await?;
        measure(&b, &scratch).await
    }
    .await;
    scratch.drop_all().await;
    write_line(&serde_json::to_string_pretty(&result?)?)
}

async fn measure(b: &ReadsBench, scratch: &Scratch) -> anyhow::Result<serde_json::Value> {
    // Every task this run starts stops when it returns, on success or failure.
    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();

    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(scratch.admin.clone().database(&scratch.store_db))
        .await?;
    PgEventStore::migrate(&pool).await?;
    let pg_store = PgEventStore::open(pool, StoreOptions::default()).await?;
    let store: Arc<dyn EventStore> = Arc::new(pg_store.clone());

    // ~5.96 events per order in the simulation: aim a little above, to reach --orders.
    let events = b.orders * 61 / 10;
    eprintln!(
        "setting up: seeding ~{events} events, then rebuilding the dashboard and the analytics \
         (a few minutes at 200,000 orders) …"
    );
    let options = SeedOptions {
        events,
        days: b.days,
        seed: b.seed,
        customers: (events / 50).max(100) as usize,
        products: (events / 500).max(20) as usize,
        ..SeedOptions::default()
    };
    let bar = progress_bar(options.events, "seeding the event store", "events")?;
    let seeded = seed::seed(&*store, &options, |n| {
        bar.set_length(bar.length().unwrap_or(0).max(n));
        bar.set_position(n);
    })
    .await?;
    bar.finish_and_clear();
    eprintln!(
        "seeded {} events ({} orders, {} customers) in {:.1}s",
        seeded.events, seeded.orders, seeded.customers, seeded.seconds
    );

    let read_url = scratch.read_db_url()?;
    let read_db = ReadDb::connect(&read_url, 8)
        .await
        .context("cannot connect to the benchmark's read database")?;
    read_db.migrate().await?;
    let clickhouse = scratch.clickhouse.clone().with_database(&scratch.clickhouse_db);
    let sinks = Sinks {
        read_db: read_db.clone(),
        clickhouse: Some(clickhouse.clone()),
    };
    let mut rebuilds = Vec::new();
    let mut dashboard_version = 0;
    for name in catalog::NAMES {
        let bar = progress_bar(store.head_position().await?, &format!("rebuilding {name}"), "positions")?;
        let report = projections::rebuild(
            store.clone(),
            &sinks.read_db,
            catalog::factory(name, &sinks)?,
            RebuildOptions::default(),
            stop.clone(),
            |p| {
                bar.set_length(p.target.max(p.position));
                bar.set_position(p.position);
            },
        )
        .await
        .with_context(|| format!("rebuilding {name}"))?;
        bar.finish_and_clear();
        eprintln!(
            "rebuilt {name} v{}: {} events in {:.1}s ({:.0} events/s)",
            report.version, report.events_applied, report.seconds, report.events_per_second
        );
        if name == projections::dashboard::NAME {
            dashboard_version = report.version;
        }
        rebuilds.push(serde_json::json!({
            "name": name, "version": report.version, "events": report.events_applied,
            "seconds": report.seconds, "events_per_second": report.events_per_second,
        }));
    }

    // What the requests draw from: the seeded orders and customers, from the read model itself.
    let orders_table = format!("{}orders", projections::dashboard::table_prefix(dashboard_version));
    let read_pg = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(scratch.admin.clone().database(&scratch.read_db))
        .await?;
    let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT order_id, customer_id FROM {orders_table}"
    )))
    .fetch_all(&read_pg)
    .await?;
    anyhow::ensure!(!rows.is_empty(), "the dashboard holds no orders");
    let order_ids: Arc<Vec<String>> = Arc::new(rows.iter().map(|(o, _)| o.clone()).collect());
    let mut customers: Vec<String> = rows.into_iter().map(|(_, c)| c).collect();
    customers.sort_unstable();
    customers.dedup();
    let customers = Arc::new(customers);
    let customer_count = customers.len();
    if (order_ids.len() as u64) < b.orders {
        eprintln!(
            "note: the read model holds {} orders, fewer than --orders {}",
            order_ids.len(),
            b.orders
        );
    }

    // The read API, in-process on loopback.
    let api_db = ReadDb::connect(&read_url, READ_POOL).await?;
    let state = read_api::ReadState::new(api_db, Some(clickhouse), read_api::ReadConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let read_address = listener.local_addr()?;
    let read_server = tokio::spawn(read_api::serve(listener, read_api::router(state), stop.clone()));
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .build_http();

    let start = seed::default_start();
    let end = start + chrono::Duration::days(seeded.simulated_days.ceil() as i64 + 1);
    let endpoints: Vec<(&'static str, PathFn)> = vec![
        (
            "GET /v1/dashboard/orders (filtered page of 50)",
            list_path(customers.clone(), start, end),
        ),
        ("GET /v1/dashboard/orders/{id}", {
            let ids = order_ids.clone();
            Arc::new(move |rng: &mut Rng| format!("/v1/dashboard/orders/{}", rng.pick(&ids)))
        }),
        ("GET /v1/analytics/revenue (by day, seeded range)", {
            let path = format!(
                "/v1/analytics/revenue?from={}&to={}&bucket=day",
                rfc3339(start),
                rfc3339(end)
            );
            Arc::new(move |_: &mut Rng| path.clone())
        }),
    ];
    let mut closed = Vec::new();
    for (n, (endpoint, path)) in endpoints.iter().enumerate() {
        eprintln!(
            "[{}/{}] {endpoint}: {} clients, {}s …",
            n + 1,
            endpoints.len() + 1,
            b.clients,
            b.seconds
        );
        let run = closed_loop(&client, read_address, endpoint, path.clone(), b, n as u64).await?;
        eprintln!(
            "      {:>8.0} req/s  p50 {:.2} ms  p99 {:.2} ms  ({} errors)",
            run.requests_per_sec, run.p50_ms, run.p99_ms, run.errors
        );
        closed.push(run);
    }
    eprintln!(
        "[{}/{}] {} at a fixed {} req/s (open loop), {}s …",
        endpoints.len() + 1,
        endpoints.len() + 1,
        endpoints[0].0,
        b.list_rate,
        b.seconds
    );
    let open = open_loop(&client, read_address, endpoints[0].0, endpoints[0].1.clone(), b).await?;
    eprintln!(
        "      {:>8.0} req/s  p50 {:.2} ms  p99 {:.2} ms  ({} errors): target p99 ≤ {LIST_P99_TARGET_MS} ms {}",
        open.achieved_rate,
        open.p50_ms,
        open.p99_ms,
        open.errors,
        if open.target_met { "met" } else { "NOT met" }
    );

    let freshness = if b.no_freshness {
        serde_json::Value::Null
    } else {
        let setup = FreshnessSetup {
            store: pg_store,
            read_db,
            sinks,
            read_pg,
            orders_table,
            customers,
            client,
            read_address,
        };
        let f = freshness(b, setup, &stop).await?;
        eprintln!(
            "      {} orders placed at {:.0}/s: visible after p50 {:.1} ms, p99 {:.1} ms ({} never seen)",
            f.placed, f.achieved_rate, f.p50_ms, f.p99_ms, f.never_seen
        );
        serde_json::to_value(f)?
    };

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), read_server).await;
    Ok(serde_json::json!({
        "benchmark": "reads",
        "seeded": seeded,
        "read_model_orders": order_ids.len(),
        "read_model_customers": customer_count,
        "rebuilds": rebuilds,
        "closed_loop": closed,
        "list_fixed_rate": open,
        "freshness": freshness,
    }))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A dashboard page of 50, with a filter that changes per request: a status (all five), a
/// status up to a random point of the seeded range, one customer's orders, or one customer's
/// orders of one status.
fn list_path(customers: Arc<Vec<String>>, start: DateTime<Utc>, end: DateTime<Utc>) -> PathFn {
    const STATUSES: [&str; 5] = ["placed", "confirmed", "shipped", "delivered", "cancelled"];
    let span = (end - start).num_seconds().max(1) as usize;
    Arc::new(move |rng: &mut Rng| {
        let status = rng.pick(&STATUSES);
        match rng.below(4) {
            0 => format!("/v1/dashboard/orders?status={status}&limit=50"),
            1 => {
                let to = start + chrono::Duration::seconds(rng.below(span) as i64);
                format!(
                    "/v1/dashboard/orders?status={status}&placed_to={}&limit=50",
                    rfc3339(to)
                )
            }
            2 => format!("/v1/dashboard/orders?customer_id={}&limit=50", rng.pick(&customers)),
            _ => format!(
                "/v1/dashboard/orders?status={status}&customer_id={}&limit=50",
                rng.pick(&customers)
            ),
        }
    })
}

pub(crate) fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?)
}

pub(crate) fn ms(hist: &Histogram<u64>, quantile: f64) -> f64 {
    hist.value_at_quantile(quantile) as f64 / 1000.0
}

/// Sends one GET; answers its status and body size.
async fn get(client: &HttpClient, address: SocketAddr, path: &str) -> anyhow::Result<(hyper::StatusCode, usize)> {
    let request = hyper::Request::get(format!("http://{address}{path}")).body(Full::new(Bytes::new()))?;
    let response = client.request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body.len()))
}

/// C clients, each sending the next request when the previous one answered, until the deadline.
async fn closed_loop(
    client: &HttpClient,
    address: SocketAddr,
    endpoint: &'static str,
    path: PathFn,
    b: &ReadsBench,
    run: u64,
) -> anyhow::Result<ClosedRun> {
    let example = path(&mut Rng::new(b.seed));
    let (status, _) = get(client, address, &example).await?;
    anyhow::ensure!(status == hyper::StatusCode::OK, "{example} answered {status}");
    let deadline = Instant::now() + Duration::from_secs(b.seconds);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(b.clients);
    for c in 0..b.clients {
        let (client, path) = (client.clone(), path.clone());
        let mut rng = Rng::new(b.seed ^ (run << 32) ^ (c as u64 + 1));
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram()?;
            let (mut ok, mut errors, mut bytes) = (0_u64, 0_u64, 0_u64);
            while Instant::now() < deadline {
                let path = path(&mut rng);
                let t = Instant::now();
                match get(&client, address, &path).await {
                    Ok((hyper::StatusCode::OK, size)) => {
                        hist.record(t.elapsed().as_micros().max(1) as u64)?;
                        ok += 1;
                        bytes += size as u64;
                    }
                    Ok(_) | Err(_) => errors += 1,
                }
            }
            anyhow::Ok((ok, errors, bytes, hist))
        }));
    }
    let mut hist = histogram()?;
    let (mut requests, mut errors, mut bytes) = (0, 0, 0);
    for t in tasks {
        let (ok, bad, size, h) = t.await??;
        requests += ok;
        errors += bad;
        bytes += size;
        hist.add(h)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(ClosedRun {
        endpoint,
        example,
        clients: b.clients,
        seconds,
        requests,
        errors,
        requests_per_sec: requests as f64 / seconds,
        p50_ms: ms(&hist, 0.50),
        p99_ms: ms(&hist, 0.99),
        p999_ms: ms(&hist, 0.999),
        max_ms: hist.max() as f64 / 1000.0,
        mean_response_bytes: bytes / requests.max(1),
    })
}

/// Requests sent on a fixed schedule, whatever the answers do; each timed from its slot.
async fn open_loop(
    client: &HttpClient,
    address: SocketAddr,
    endpoint: &'static str,
    path: PathFn,
    b: &ReadsBench,
) -> anyhow::Result<OpenRun> {
    let total = b.list_rate * b.seconds;
    let period = Duration::from_secs_f64(1.0 / b.list_rate as f64);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut rng = Rng::new(b.seed ^ 0x0be7);
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let slot = started + period.mul_f64(i as f64);
        tokio::time::sleep_until(slot).await;
        let (client, slots, path) = (client.clone(), slots.clone(), path(&mut rng));
        tasks.push(tokio::spawn(async move {
            let _permit = slots.acquire_owned().await?;
            let ok = matches!(get(&client, address, &path).await, Ok((hyper::StatusCode::OK, _)));
            anyhow::Ok((ok, slot.elapsed()))
        }));
    }
    let mut hist = histogram()?;
    let (mut sent, mut errors) = (0, 0);
    for t in tasks {
        let (ok, latency) = t.await??;
        sent += 1;
        if ok {
            hist.record(latency.as_micros().max(1) as u64)?;
        } else {
            errors += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let achieved_rate = (sent - errors) as f64 / seconds;
    let p99_ms = ms(&hist, 0.99);
    Ok(OpenRun {
        endpoint,
        target_rate: b.list_rate,
        seconds,
        sent,
        errors,
        achieved_rate,
        p50_ms: ms(&hist, 0.50),
        p99_ms,
        p999_ms: ms(&hist, 0.999),
        max_ms: hist.max() as f64 / 1000.0,
        target_p99_ms: LIST_P99_TARGET_MS,
        target_met: errors == 0 && p99_ms <= LIST_P99_TARGET_MS && achieved_rate >= 0.95 * b.list_rate as f64,
    })
}

/// What the freshness run takes over from the read runs.
struct FreshnessSetup {
    store: PgEventStore,
    read_db: ReadDb,
    sinks: Sinks,
    read_pg: sqlx::PgPool,
    orders_table: String,
    customers: Arc<Vec<String>>,
    client: HttpClient,
    read_address: SocketAddr,
}

async fn freshness(b: &ReadsBench, s: FreshnessSetup, stop: &CancellationToken) -> anyhow::Result<Freshness> {
    use write_side::domain::ProductCommand;
    use write_side::http::{Auth, HttpConfig, HttpState};
    use write_side::relay::{self, RelayConfig, RelayStatus};
    use write_side::{CommandContext, CommandHandler, HandlerOptions};

    eprintln!(
        "freshness: write side + relay + dashboard worker in-process, {} orders/s for {}s …",
        b.rate, b.freshness_seconds
    );
    // Products of our own with ample stock: the seeded ones may be nearly sold out.
    let handler = CommandHandler::new(Arc::new(s.store.clone()), HandlerOptions::default());
    let ctx = CommandContext::default();
    let mut products = Vec::with_capacity(200);
    for i in 0..200 {
        let id = Uuid::now_v7();
        let add = ProductCommand::Add {
            product_id: id,
            sku: format!("BENCH-{i:05}"),
            name: format!("Bench product {i}"),
            price_minor: 100 + (i as i64 * 37) % 10_000,
            currency: "EUR".into(),
            stock: 1_000_000_000,
        };
        handler.product(&ctx, id, add).await?;
        products.push(id);
    }
    // The relay starts at the head: the seeded history is in the read model already, and
    // only what the run writes goes through Kafka.
    let head = s.store.head_position().await?;
    s.store.save_checkpoint(relay::RELAY_NAME, head).await?;

    let id = Uuid::new_v4().simple().to_string();
    let config = RelayConfig {
        brokers: b.kafka_brokers.clone(),
        topic_prefix: format!("bench_{id}."),
        ..RelayConfig::default()
    };
    let (status_tx, mut status) = tokio::sync::watch::channel(RelayStatus::default());
    let relay_task = tokio::spawn(relay::run(s.store.clone(), config.clone(), status_tx, stop.clone()));
    tokio::time::timeout(Duration::from_secs(60), status.wait_for(|s| s.ready))
        .await
        .context("the relay was not ready within 60 s (is Kafka up?)")??;

    let name = projections::dashboard::NAME;
    let worker = tokio::spawn(projections::run_from_kafka(
        s.read_db.clone(),
        catalog::factory(name, &s.sinks)?,
        KafkaOptions {
            brokers: b.kafka_brokers.clone(),
            group_id: format!("bench_{id}.{name}"),
            topics: catalog::categories(name).iter().map(|c| config.topic(*c)).collect(),
            run: RunOptions::default(),
            session_timeout: Duration::from_secs(10),
        },
        stop.clone(),
    ));

    let app = write_side::http::router(HttpState::new(handler, HttpConfig::new(Auth::Disabled)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let write_address = listener.local_addr()?;
    let write_server = tokio::spawn(write_side::http::serve_on(listener, app, Duration::from_secs(5), {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    }));

    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let place = Placer {
        client: s.client.clone(),
        address: write_address,
        customers: s.customers.clone(),
        products: Arc::new(products),
    };
    let probe = Probe {
        client: s.client.clone(),
        address: s.read_address,
        pool: s.read_pg.clone(),
        table: s.orders_table.clone(),
    };

    // Warm-up: one order through the whole pipeline (the worker joins its group meanwhile).
    eprintln!("      waiting for the pipeline: one order end to end …");
    let mut rng = Rng::new(b.seed ^ 0xf7e5);
    let warm = place.place(&mut rng).await?;
    anyhow::ensure!(warm.1, "the warm-up order was refused");
    let waited = Instant::now();
    loop {
        if probe.visible(&[warm.0]).await?.contains(&warm.0) {
            break;
        }
        anyhow::ensure!(
            waited.elapsed() < Duration::from_secs(120),
            "the warm-up order was not visible within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "      visible after {:.1}s; measuring …",
        waited.elapsed().as_secs_f64()
    );

    let total = b.rate * b.freshness_seconds;
    let writer = tokio::spawn({
        let place = place.clone();
        crate::bench_freshness::place_at_rate(
            move |mut rng| {
                let place = place.clone();
                async move { place.place(&mut rng).await }
            },
            pending.clone(),
            b.rate,
            total,
            b.seed,
        )
    });

    let watched = crate::bench_freshness::watch(
        writer,
        &pending,
        async |waiting: &[(Uuid, Instant, Instant)]| -> anyhow::Result<Vec<(Uuid, Instant)>> {
            let ids: Vec<Uuid> = waiting.iter().map(|(id, _, _)| *id).collect();
            let seen = probe.visible(&ids).await?;
            let now = Instant::now();
            Ok(seen.into_iter().map(|order| (order, now)).collect())
        },
    )
    .await?;

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), write_server).await;
    match tokio::time::timeout(Duration::from_secs(15), worker).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the dashboard worker failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the dashboard worker panicked"),
        _ => {}
    }
    match tokio::time::timeout(Duration::from_secs(15), relay_task).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the relay failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the relay panicked"),
        _ => {}
    }
    Ok(Freshness::new(b.rate, total, &watched))
}

impl Freshness {
    /// Whether the run meets a freshness target: every order placed and seen, at `min_rate`
    /// orders/s or more offered and 95% of that achieved, and p99 within `p99_ms`. A deployment
    /// that cannot keep the rate has not been measured at it, whatever its p99.
    pub(crate) fn meets(&self, p99_ms: f64, min_rate: u64) -> bool {
        self.failed == 0
            && self.never_seen == 0
            && self.target_rate >= min_rate
            && self.achieved_rate >= 0.95 * self.target_rate as f64
            && self.p99_ms <= p99_ms
    }

    /// The figures of a run: the offered rate, the orders sent, and what the watch saw.
    pub(crate) fn new(target_rate: u64, sent: u64, watched: &Watched) -> Self {
        let (placed, failed, seconds, commands) = &watched.written;
        let (placed, failed, seconds) = (*placed, *failed, *seconds);
        let (fresh, from_send) = (&watched.fresh, &watched.from_send);
        Freshness {
            target_rate,
            seconds,
            sent,
            placed,
            failed,
            achieved_rate: placed as f64 / seconds,
            command_p50_ms: ms(commands, 0.50),
            command_p99_ms: ms(commands, 0.99),
            p50_ms: ms(fresh, 0.50),
            p99_ms: ms(fresh, 0.99),
            max_ms: fresh.max() as f64 / 1000.0,
            from_send_p50_ms: ms(from_send, 0.50),
            from_send_p99_ms: ms(from_send, 0.99),
            never_seen: watched.never_seen,
            probe_every_ms: PROBE_EVERY.as_millis() as u64,
        }
    }
}

/// Places orders through the write side's HTTP API.
#[derive(Clone)]
struct Placer {
    client: HttpClient,
    address: SocketAddr,
    customers: Arc<Vec<String>>,
    products: Arc<Vec<Uuid>>,
}

impl Placer {
    /// Places an order of 1 to 3 lines for a seeded customer; answers its id and whether the
    /// write side answered 201.
    async fn place(&self, rng: &mut Rng) -> anyhow::Result<(Uuid, bool)> {
        let order_id = Uuid::now_v7();
        let wanted = 1 + rng.below(3);
        let mut picked: Vec<Uuid> = Vec::with_capacity(wanted);
        while picked.len() < wanted.min(self.products.len()) {
            let p = *rng.pick(&self.products);
            if !picked.contains(&p) {
                picked.push(p);
            }
        }
        let lines: Vec<_> = picked
            .iter()
            .map(|p| serde_json::json!({ "product_id": p, "quantity": 1 + rng.below(3) }))
            .collect();
        let body = serde_json::json!({
            "order_id": order_id,
            "customer_id": rng.pick(&self.customers),
            "lines": lines,
        });
        let request = hyper::Request::post(format!("http://{}/v1/orders", self.address))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
        let response = self.client.request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok((order_id, status == hyper::StatusCode::CREATED))
    }
}

/// Finds which orders the read API shows.
struct Probe {
    client: HttpClient,
    address: SocketAddr,
    pool: sqlx::PgPool,
    table: String,
}

impl Probe {
    /// The orders of `ids` that `GET /v1/dashboard/orders/{id}` answers: looked up in bulk in
    /// the read table first, then each found one confirmed through the read API.
    async fn visible(&self, ids: &[Uuid]) -> anyhow::Result<Vec<Uuid>> {
        let texts: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let found: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT order_id FROM {} WHERE order_id = ANY($1)",
            self.table
        )))
        .bind(&texts)
        .fetch_all(&self.pool)
        .await?;
        let checks = found.into_iter().map(|(order,)| async move {
            let path = format!("/v1/dashboard/orders/{order}");
            match get(&self.client, self.address, &path).await {
                Ok((hyper::StatusCode::OK, _)) => Uuid::try_parse(&order).ok(),
                _ => None,
            }
        });
        Ok(futures::future::join_all(checks).await.into_iter().flatten().collect())
    }
}
