//! `orderflow bench reads`: how fast the read API answers over a realistic read model, and how
//! soon a command becomes visible in it.
//!
//! 1. Creates its own PostgreSQL databases (an event store per service, a read database) and
//!    ClickHouse database, and drops them at the end, whatever happened ([`Scratch`]).
//! 2. Seeds the stores with a simulated shop ([`shop_sim::seed`], about 8 events per order) and
//!    rebuilds the dashboard (PostgreSQL) and the analytics (ClickHouse) from them.
//! 3. Serves the read API in-process on loopback and, per endpoint (a filtered page of the
//!    dashboard list, one order by id, revenue by day over the seeded range), runs C concurrent
//!    keep-alive clients in a closed loop for a while: requests/s, p50, p99. Then the list alone
//!    in an open loop at a fixed rate (requests sent on schedule, latency measured from the
//!    scheduled send time, so a slow answer cannot hide the queue behind it).
//! 4. Freshness: the write services' HTTP API, a relay per service and a dashboard Kafka worker,
//!    in-process on the same stores; orders placed at a fixed rate, and for each answered command the time
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
use event_schemas::Service;
use event_store::{EventStore, PgEventStore};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use projections::catalog::{self, Sinks};
use projections::{KafkaOptions, ReadDb, RebuildOptions, RunOptions, ServiceLog};
use serde::Serialize;
use service_kit::cli::progress_bar;
use service_kit::db::{self, DatabaseUrl, PoolSettings};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use relay::{RelayConfig, RelayStatus};
use shop_sim::{Rng, SeedOptions, SeedReport};
use write_side::http::{Auth, HttpConfig};
use write_side::{HandlerOptions, Local};

use crate::load::{
    Freshness, HttpClient, MAX_IN_FLIGHT, PROBE_EVERY, Pending, Watched, histogram, ms, order_lines, place_at_rate,
    watch,
};
use crate::scratch::{self, Scratch, ScratchServers, add_products};

#[derive(Debug, Args)]
pub struct ReadsBench {
    /// Orders the read model should hold (the store is seeded with about 8 events per order).
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
/// The read target: list p99 at the fixed rate.
const LIST_P99_TARGET_MS: f64 = 10.0;

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

pub(crate) async fn run(b: ReadsBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        b.orders > 0 && b.days > 0 && b.clients > 0 && b.seconds > 0,
        "--orders, --days, --clients and --seconds must be positive"
    );
    anyhow::ensure!(
        b.list_rate > 0 && b.rate > 0 && b.freshness_seconds > 0,
        "--list-rate, --rate and --freshness-seconds must be positive"
    );
    Scratch::measure(&b.servers, async |scratch| measure(&b, scratch).await).await
}

/// Seeds and rebuilds the read model, runs the read runs against the read API, then (unless
/// `--no-freshness`) the freshness run.
async fn measure(b: &ReadsBench, scratch: &Scratch) -> anyhow::Result<serde_json::Value> {
    // Every task this run starts stops when it returns, on success or failure.
    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();

    let stores = scratch.open_stores().await?;
    let logs = scratch::logs(&stores);
    let seeded = seed(b, &logs).await?;
    let sinks = scratch.sinks().await?;
    let (rebuilds, dashboard_version) = rebuild_all(&logs, &sinks, &stop).await?;
    let model = ReadModel::load(scratch, dashboard_version, b.orders).await?;
    let (read_model_orders, read_model_customers) = (model.order_ids.len(), model.customers.len());

    let (read_address, read_server) = serve_read_api(scratch, sinks.clickhouse.clone(), &stop).await?;
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .build_http();
    let endpoints = endpoints(&model, &seeded);
    let (closed, open) = read_runs(b, &client, read_address, &endpoints).await?;

    let freshness = if b.no_freshness {
        serde_json::Value::Null
    } else {
        let setup = FreshnessSetup {
            stores,
            replica_url: scratch.replica_db_url(),
            sinks,
            read_pg: model.pool,
            orders_table: model.orders_table,
            customers: model.customers,
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
        "read_model_orders": read_model_orders,
        "read_model_customers": read_model_customers,
        "rebuilds": rebuilds,
        "closed_loop": closed,
        "list_fixed_rate": open,
        "freshness": freshness,
    }))
}

/// Seeds the store with a simulated shop of about `--orders` orders, showing a progress bar.
async fn seed(b: &ReadsBench, logs: &[ServiceLog]) -> anyhow::Result<SeedReport> {
    // ~15.4 events per order in the simulation (payments and the saga's records included): aim
    // a little above, to reach --orders.
    let events = b.orders * 155 / 10;
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
    let seeded = shop_sim::seed_with_progress(logs, &options, "seeding the event stores").await?;
    eprintln!(
        "seeded {} events ({} orders, {} customers) in {:.1}s",
        seeded.events, seeded.orders, seeded.customers, seeded.seconds
    );
    Ok(seeded)
}

/// Rebuilds every projection of the catalogue from the seeded logs. Answers each rebuild's
/// figures (for the report) and the dashboard's version (whose tables the requests read).
pub(crate) async fn rebuild_all(
    logs: &[ServiceLog],
    sinks: &Sinks,
    stop: &CancellationToken,
) -> anyhow::Result<(Vec<serde_json::Value>, u32)> {
    let mut rebuilds = Vec::new();
    let mut dashboard_version = 0;
    for name in catalog::NAMES {
        let bar = progress_bar(scratch::heads(logs).await?, &format!("rebuilding {name}"), "positions");
        let report = projections::rebuild(
            logs.to_vec(),
            &sinks.read_db,
            catalog::factory(name, sinks)?,
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
    Ok((rebuilds, dashboard_version))
}

/// What the requests draw from: the seeded orders and customers, from the read model itself.
struct ReadModel {
    /// The read database, for the freshness run's bulk lookups.
    pool: sqlx::PgPool,
    /// The dashboard's orders table (of the rebuilt version).
    orders_table: String,
    order_ids: Arc<Vec<String>>,
    /// Sorted, without duplicates.
    customers: Arc<Vec<String>>,
}

impl ReadModel {
    /// Reads every order id and customer id of the dashboard (version `dashboard_version`);
    /// notes on stderr when it holds fewer orders than the `orders` asked for.
    async fn load(scratch: &Scratch, dashboard_version: u32, orders: u64) -> anyhow::Result<Self> {
        let orders_table = format!("{}orders", projections::dashboard::table_prefix(dashboard_version));
        let pool = db::pg_pool(&scratch.admin.with_database(&scratch.read_db), PoolSettings::TOOL).await?;
        let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT order_id, customer_id FROM {orders_table}"
        )))
        .fetch_all(&pool)
        .await?;
        anyhow::ensure!(!rows.is_empty(), "the dashboard holds no orders");
        let order_ids: Arc<Vec<String>> = Arc::new(rows.iter().map(|(o, _)| o.clone()).collect());
        let mut customers: Vec<String> = rows.into_iter().map(|(_, c)| c).collect();
        customers.sort_unstable();
        customers.dedup();
        if (order_ids.len() as u64) < orders {
            eprintln!(
                "note: the read model holds {} orders, fewer than --orders {}",
                order_ids.len(),
                orders
            );
        }
        Ok(ReadModel {
            pool,
            orders_table,
            order_ids,
            customers: Arc::new(customers),
        })
    }
}

/// Serves the read API in-process on a loopback port (with a pool of [`READ_POOL`], as the
/// `read-api` binary) until `stop`. Answers its address and the server's task.
async fn serve_read_api(
    scratch: &Scratch,
    clickhouse: Option<clickhouse::Client>,
    stop: &CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let api_db = ReadDb::open(&scratch.read_db_url(), PoolSettings::new(READ_POOL)).await?;
    let config = read_api::ReadConfig::default();
    let state = read_api::ReadState::new(api_db, clickhouse, config.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let read_address = listener.local_addr()?;
    let read_server = tokio::spawn({
        let stop = stop.clone();
        async move { read_api::serve(listener, read_api::router(state), &config, stop).await }
    });
    Ok((read_address, read_server))
}

/// The endpoints measured, each with what makes its requests: a filtered page of the list, one
/// order by id, revenue by day over the seeded range. The list comes first (the open loop runs it).
fn endpoints(model: &ReadModel, seeded: &SeedReport) -> Vec<(&'static str, PathFn)> {
    let start = shop_sim::seed::default_start();
    let end = start + chrono::Duration::days(seeded.simulated_days.ceil() as i64 + 1);
    vec![
        (
            "GET /v1/dashboard/orders (filtered page of 50)",
            list_path(model.customers.clone(), start, end),
        ),
        ("GET /v1/dashboard/orders/{id}", {
            let ids = model.order_ids.clone();
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
    ]
}

/// Each endpoint in a closed loop, then the first (the list) in an open loop at `--list-rate`,
/// with progress and figures on stderr.
async fn read_runs(
    b: &ReadsBench,
    client: &HttpClient,
    read_address: SocketAddr,
    endpoints: &[(&'static str, PathFn)],
) -> anyhow::Result<(Vec<ClosedRun>, OpenRun)> {
    let mut closed = Vec::new();
    for (n, (endpoint, path)) in endpoints.iter().enumerate() {
        eprintln!(
            "[{}/{}] {endpoint}: {} clients, {}s …",
            n + 1,
            endpoints.len() + 1,
            b.clients,
            b.seconds
        );
        let run = closed_loop(client, read_address, endpoint, path.clone(), b, n as u64).await?;
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
    let open = open_loop(client, read_address, endpoints[0].0, endpoints[0].1.clone(), b).await?;
    eprintln!(
        "      {:>8.0} req/s  p50 {:.2} ms  p99 {:.2} ms  ({} errors): target p99 ≤ {LIST_P99_TARGET_MS} ms {}",
        open.achieved_rate,
        open.p50_ms,
        open.p99_ms,
        open.errors,
        if open.target_met { "met" } else { "NOT met" }
    );
    Ok((closed, open))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A dashboard page of 50, with a filter that changes per request: a status (all five), a
/// status up to a random point of the seeded range, one customer's orders, or one customer's
/// orders of one status.
fn list_path(customers: Arc<Vec<String>>, start: DateTime<Utc>, end: DateTime<Utc>) -> PathFn {
    const STATUSES: [&str; 5] = ["pending", "confirmed", "shipped", "delivered", "cancelled"];
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
    stores: Vec<(Service, PgEventStore)>,
    /// Where the orders service keeps its copy of customers and products: a database of its own.
    replica_url: DatabaseUrl,
    sinks: Sinks,
    read_pg: sqlx::PgPool,
    orders_table: String,
    customers: Arc<Vec<String>>,
    client: HttpClient,
    read_address: SocketAddr,
}

/// The freshness run: the write side, the relay and a dashboard worker in-process on the
/// seeded store, orders placed at `--rate`, each timed until the read API shows it.
async fn freshness(b: &ReadsBench, s: FreshnessSetup, stop: &CancellationToken) -> anyhow::Result<Freshness> {
    eprintln!(
        "freshness: write side + relay + dashboard worker in-process, {} orders/s for {}s …",
        b.rate, b.freshness_seconds
    );
    let local = write_services(&s).await?;
    let products = add_products(local.handler(Service::Inventory), 200).await?;
    let pipeline = Pipeline::start(b, &s, &local, stop).await?;
    let place = Placer {
        client: s.client.clone(),
        address: pipeline.write_address,
        customers: s.customers.clone(),
        products: Arc::new(products),
    };
    let probe = Probe {
        client: s.client.clone(),
        address: s.read_address,
        pool: s.read_pg.clone(),
        table: s.orders_table.clone(),
    };
    warm_up(&place, &probe, b.seed).await?;
    let total = b.rate * b.freshness_seconds;
    let watched = place_and_watch(b, &place, &probe, total).await?;
    pipeline.shut_down(stop).await;
    Ok(Freshness::new(b.rate, total, &watched))
}

/// The four write services over the seeded stores, with the orders service's copy of
/// customers and products caught up (as in steady state: a miss costs a call to customers).
async fn write_services(s: &FreshnessSetup) -> anyhow::Result<Local> {
    let stores = s
        .stores
        .iter()
        .map(|(service, store)| (*service, Arc::new(store.clone()) as Arc<dyn EventStore>))
        .collect();
    let replica_db = ReadDb::open(&s.replica_url, PoolSettings::READ_DB).await?;
    Ok(Local::new(stores, replica_db, HandlerOptions::default()).await?)
}

/// The write path of the freshness run, each part a task of this process: a relay per service
/// (its store to Kafka), the dashboard worker (Kafka to the read database), the orders
/// service's copy of customers and products, and the write services' HTTP API.
struct Pipeline {
    relays: Vec<tokio::task::JoinHandle<Result<(), relay::RelayError>>>,
    replica: tokio::task::JoinHandle<Result<(), projections::ProjectionError>>,
    worker: tokio::task::JoinHandle<Result<(), projections::ProjectionError>>,
    write_server: tokio::task::JoinHandle<std::io::Result<()>>,
    write_address: SocketAddr,
}

impl Pipeline {
    /// Starts the relays (and waits until they are ready), then the worker, then the orders
    /// service's copy (and waits until it has caught up), then the write services on a
    /// loopback port; all stop with `stop`.
    async fn start(
        b: &ReadsBench,
        s: &FreshnessSetup,
        local: &Local,
        stop: &CancellationToken,
    ) -> anyhow::Result<Self> {
        // Topics and consumer group of this run's own.
        let id = Uuid::new_v4().simple().to_string();
        let config = RelayConfig {
            brokers: b.kafka_brokers.clone(),
            topic_prefix: format!("bench_{id}."),
            ..RelayConfig::default()
        };
        let mut relays = Vec::new();
        for (_, store) in &s.stores {
            relays.push(start_relay(store, &config, stop).await?);
        }
        let worker = spawn_dashboard_worker(b, &s.sinks, &config, &id, stop)?;
        let replica = tokio::spawn({
            let (local, stop) = (local.clone(), stop.clone());
            async move { local.run_replica(stop).await }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        while !local.replica_caught_up().await? {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the orders service's copy did not catch up in 120 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let app = write_side::http::router(local.http_state(HttpConfig::new(Auth::Disabled)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let write_address = listener.local_addr()?;
        let write_server = tokio::spawn(write_side::http::serve_on(listener, app, Duration::from_secs(5), {
            let stop = stop.clone();
            async move { stop.cancelled().await }
        }));
        Ok(Pipeline {
            relays,
            replica,
            worker,
            write_server,
            write_address,
        })
    }

    /// Cancels `stop` and waits (up to 15 s each) for the write side, the worker and the relay;
    /// a failure of the worker or the relay is logged, not fatal: the figures are taken.
    async fn shut_down(self, stop: &CancellationToken) {
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.write_server).await;
        match tokio::time::timeout(Duration::from_secs(15), self.worker).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the dashboard worker failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the dashboard worker panicked"),
            _ => {}
        }
        for relay in self.relays {
            match tokio::time::timeout(Duration::from_secs(15), relay).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "a relay failed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "a relay panicked"),
                _ => {}
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), self.replica).await;
    }
}

/// Starts a relay of `store` with `config`, from the store's head, and waits until it is ready.
async fn start_relay(
    store: &PgEventStore,
    config: &RelayConfig,
    stop: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), relay::RelayError>>> {
    // The relay starts at the head: the seeded history is in the read model already, and
    // only what the run writes goes through Kafka.
    let head = store.head_position().await?;
    store.save_checkpoint(relay::RELAY_NAME, head).await?;
    let (status_tx, mut status) = tokio::sync::watch::channel(RelayStatus::default());
    let relay_task = tokio::spawn(relay::run(store.clone(), config.clone(), status_tx, stop.clone()));
    tokio::time::timeout(Duration::from_secs(60), status.wait_for(|s| s.ready))
        .await
        .context("the relay was not ready within 60 s (is Kafka up?)")??;
    Ok(relay_task)
}

/// Spawns the dashboard's Kafka worker on the relay's topics, in a consumer group named after `id`.
fn spawn_dashboard_worker(
    b: &ReadsBench,
    sinks: &Sinks,
    config: &RelayConfig,
    id: &str,
    stop: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), projections::ProjectionError>>> {
    let name = projections::dashboard::NAME;
    Ok(tokio::spawn(projections::run_from_kafka(
        sinks.read_db.clone(),
        catalog::factory(name, sinks)?,
        KafkaOptions {
            brokers: b.kafka_brokers.clone(),
            group_id: format!("bench_{id}.{name}"),
            topics: catalog::categories(name).iter().map(|c| config.topic(*c)).collect(),
            run: RunOptions::default(),
            session_timeout: Duration::from_secs(10),
        },
        stop.clone(),
    )))
}

/// Warm-up: one order through the whole pipeline (the worker joins its group meanwhile), so
/// that the measured orders do not wait for the pipeline to start.
async fn warm_up(place: &Placer, probe: &Probe, seed: u64) -> anyhow::Result<()> {
    eprintln!("      waiting for the pipeline: one order end to end …");
    let mut rng = Rng::new(seed ^ 0xf7e5);
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
    Ok(())
}

/// Places `total` orders at `--rate` and watches each until `probe` finds it.
async fn place_and_watch(b: &ReadsBench, place: &Placer, probe: &Probe, total: u64) -> anyhow::Result<Watched> {
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let writer = tokio::spawn({
        let place = place.clone();
        place_at_rate(
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
    watch(
        writer,
        &pending,
        async |waiting: &[(Uuid, Instant, Instant)]| -> anyhow::Result<Vec<(Uuid, Instant)>> {
            let ids: Vec<Uuid> = waiting.iter().map(|(id, _, _)| *id).collect();
            let seen = probe.visible(&ids).await?;
            let now = Instant::now();
            Ok(seen.into_iter().map(|order| (order, now)).collect())
        },
    )
    .await
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
        let lines = order_lines(rng, &self.products);
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
