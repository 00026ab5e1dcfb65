//! `orderflow bench soak`: orders at a steady rate for minutes on end, and whether the processes
//! serving them stay flat: resident memory, open file descriptors, open sockets and, for the
//! distributed deployment, its PostgreSQL connections, sampled from the kernel
//! (`/proc/<pid>/status`, `/proc/<pid>/fd`) and from `pg_stat_activity` every
//! `--sample-seconds`.
//!
//! The load is an open loop, as `bench overload`'s: each order on its own schedule at `--rate`
//! whatever the answers, at most `--outstanding` requests waiting (an order due past that is
//! counted `not_sent`), timed from its scheduled send; each placed order shipped
//! `--ship-after-seconds` later (again each second until its saga has confirmed it) and
//! delivered 2 s after that, so that orders leave the working set as in a shop; and the
//! dashboard list read once a second. The default rate, 80 orders/s, is about a third of what the embedded `serve`
//! sustained in `bench overload`'s capacity phase (238 orders/s at 16 clients, BENCHMARKS.md):
//! a soak measures leaks, not saturation, and the server must keep up for the rate to be
//! steady.
//!
//! Targets:
//! - `embedded` (the default): `orderflow serve` as a child process on a scratch folder (its
//!   memory and descriptors are its own), 50 customers and 100 products with ample stock, the
//!   sagas running in the process.
//! - `distributed`: a running `scripts/dev-up` instance, found through its state folder
//!   (`--state-dir`): its ports and database prefix in `instance.env`, its bearer token in
//!   `token`, and every process it started in `pids/<name>.pid`. Its databases are the ones
//!   dev-up makes: `<prefix>orderflow_<service>` for the four write services,
//!   `<prefix>orderflow_orders_replica`, and the read database (`orderflow_read` unless the
//!   instance set another), counted in `pg_stat_activity` through `--pg-url`.
//!
//! The samples of the first `--warm-up-minutes` are left out of the verdict (pools filling,
//! caches and allocator arenas growing to their working size). Over the rest, per process: the
//! first, last, smallest, largest and mean value of each figure and the slope of its
//! least-squares line per minute; it is flat when the memory's slope is at most 1% of its mean
//! per minute (at least 0.5 MB/min) and the descriptors and sockets (and the deployment's
//! PostgreSQL connections) keep their floor: the smallest count over the last third of the
//! samples at most a few above the smallest over the first third. Connections the load opens
//! in a slow moment and closes once idle come and go; a leak raises the floor.
//!
//! The reference, measured in the same run: an idle `orderflow serve` (the same binary, its
//! own scratch folder, asked nothing after `/ready`) started before the target and sampled at
//! the same instants. It is what "flat" looks like for a process of this code base doing
//! nothing on this machine over the same minutes (its allocator, pools and runtime threads
//! included), i.e. the noise floor of the measure: a target's slope reads against it, and a
//! reference that is not flat says the rule, not the target, is off.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::{Value, json};
use service_kit::db::DatabaseUrl;
use shop_sim::Rng;
use sqlx::{ConnectOptions as _, PgConnection};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::load::{HttpClient, histogram, ms, order_lines, print_json};
use crate::serve_child::ServeChild;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Deployment {
    /// `orderflow serve` as a child process (SQLite, one process).
    Embedded,
    /// A running `scripts/dev-up` instance (`--state-dir`).
    Distributed,
}

#[derive(Debug, Args)]
pub struct SoakBench {
    /// Minutes of load, the warm-up included.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Orders per second, each on its own schedule (open loop). The default is about a third
    /// of the embedded `serve`'s capacity (BENCHMARKS.md, `bench overload`).
    #[arg(long, default_value_t = 80)]
    rate: u64,
    /// The first minutes, whose samples are reported apart and left out of the verdict.
    #[arg(long, default_value_t = 2)]
    warm_up_minutes: u64,
    /// Seconds between two samples of every process.
    #[arg(long, default_value_t = 10)]
    sample_seconds: u64,
    /// Requests (and connections) the load generator keeps outstanding at most; an order due
    /// while that many wait is counted `not_sent`.
    #[arg(long, default_value_t = 64)]
    outstanding: usize,
    /// What is soaked: `embedded` starts `orderflow serve` itself; `distributed` attaches to a
    /// running `scripts/dev-up` instance (see --state-dir).
    #[arg(long, value_enum, default_value_t = Deployment::Embedded)]
    deployment: Deployment,
    /// `scripts/dev-up`'s state folder (ORDERFLOW_DEV_DIR): its settings, token and pid files.
    #[arg(long, default_value = "orderflow-dev")]
    state_dir: PathBuf,
    /// The PostgreSQL server of the distributed deployment, to count its connections in
    /// `pg_stat_activity` (any database; a role that sees every session).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pg_url: String,
    /// Ship each placed order this many seconds after it was placed (asking again each second
    /// while its saga has not confirmed it yet), and deliver it 2 s later, so that orders leave
    /// the working set as in a shop (0: never ship; every order stays confirmed).
    #[arg(long, default_value_t = 5)]
    ship_after_seconds: u64,
    /// The embedded target's `serve --aggregate-cache-entries` (each service's cache of
    /// aggregates; default: serve's own). A small cache shows the memory without the caches'
    /// growth. For the distributed deployment set ORDERFLOW_AGGREGATE_CACHE_ENTRIES when
    /// starting dev-up instead.
    #[arg(long)]
    aggregate_cache_entries: Option<usize>,
    /// Seed of the request mix.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

const CUSTOMERS: usize = 50;
const PRODUCTS: usize = 100;
/// Longest any one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the load generator keeps an idle connection.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// A shipped order is delivered this long after.
const DELIVER_AFTER: Duration = Duration::from_secs(2);
/// How long a shipment waits for the saga to confirm its order, asking once a second.
const SHIP_PATIENCE: Duration = Duration::from_secs(30);
/// The read beside the orders: the console's orders page, once a second.
const READ_PATH: &str = "/v1/dashboard/orders?limit=50";
const READ_EVERY: Duration = Duration::from_secs(1);
/// The verdict: resident memory's slope at most this share of its mean per minute …
const RSS_SLOPE_OF_MEAN: f64 = 0.01;
/// … or this many MB per minute, whichever is larger (a small process's 1% is noise).
const RSS_SLOPE_FLOOR_MB: f64 = 0.5;
/// Descriptors and sockets may end this many above where they started (keep-alive
/// connections come and go with the latency of the moment).
const FD_SLACK: f64 = 10.0;
/// The deployment's PostgreSQL connections may end this many above where they started.
const PG_SLACK: f64 = 4.0;
const HOST: &str = "127.0.0.1";
const RULE: &str = "over the samples after the warm-up: the resident memory's least-squares slope at most 1% of \
                    its mean per minute (at least 0.5 MB/min); the smallest count of open file descriptors and \
                    of sockets over the last third of the samples at most 10 above the smallest over the first \
                    third (the deployment's PostgreSQL connections: at most 4); every process alive at the \
                    end. Threads are reported, not judged.";

pub(crate) async fn run(b: SoakBench) -> anyhow::Result<()> {
    ensure!(b.minutes > 0, "--minutes must be positive");
    ensure!(b.rate > 0, "--rate must be positive");
    ensure!(b.outstanding > 0, "--outstanding must be positive");
    ensure!(b.sample_seconds > 0, "--sample-seconds must be positive");
    ensure!(
        b.warm_up_minutes < b.minutes,
        "--warm-up-minutes must be less than --minutes"
    );
    ensure!(
        b.sample_seconds <= (b.minutes - b.warm_up_minutes) * 60,
        "--sample-seconds leaves fewer than two samples after the warm-up"
    );
    ensure!(
        b.aggregate_cache_entries.is_none() || b.deployment == Deployment::Embedded,
        "--aggregate-cache-entries sets the embedded target's cache; for dev-up, start it with \
         ORDERFLOW_AGGREGATE_CACHE_ENTRIES"
    );
    let dir = std::env::temp_dir().join(format!("orderflow-bench-soak-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    let result = soak(&b, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    print_json(&result?)
}

async fn soak(b: &SoakBench, dir: &Path) -> anyhow::Result<Value> {
    // Connections opened in a moment of high latency close once idle for a while (the pool
    // hands out its most recently used first), so the target's sockets follow the load's
    // concurrency rather than its worst moment so far.
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(b.outstanding)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build_http();
    eprintln!("[1/4] the reference: an idle orderflow serve …");
    let mut reference_server = serve(dir, "reference", &[], &client).await?;
    let mut reference = Sampled::new("orderflow serve (idle reference)", reference_server.pid);

    let run_id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (api, mut target_server, mut processes, mut pg, target) = match b.deployment {
        Deployment::Embedded => {
            eprintln!("[2/4] the target: orderflow serve on a scratch folder …");
            let cache: Vec<String> = b
                .aggregate_cache_entries
                .map(|n| vec!["--aggregate-cache-entries".to_owned(), n.to_string()])
                .unwrap_or_default();
            let server = serve(dir, "target", &cache, &client).await?;
            let api = Api::one(client, &server.base);
            let processes = vec![Sampled::new("serve", server.pid)];
            let target = "orderflow serve (embedded, SQLite), a child process on a scratch folder".to_owned();
            (api, Some(server), processes, None, target)
        }
        Deployment::Distributed => {
            eprintln!(
                "[2/4] the target: the scripts/dev-up instance in {} …",
                b.state_dir.display()
            );
            let instance = Instance::read(&b.state_dir)?;
            let api = instance.api(client)?;
            let processes = instance.processes()?;
            let pg = Pg::connect(&b.pg_url, instance.databases()).await?;
            let target = format!(
                "scripts/dev-up in {}: {} processes ({})",
                b.state_dir.display(),
                processes.len(),
                processes.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
            );
            (api, None, processes, Some(pg), target)
        }
    };

    eprintln!("[3/4] the shop: {CUSTOMERS} customers, {PRODUCTS} products, then one order through …");
    let shop = Arc::new(Shop::create(&api, &run_id).await?);
    first_order(&api, &shop, b.seed).await?;

    let sample_every = Duration::from_secs(b.sample_seconds);
    let samples = b.minutes * 60 / b.sample_seconds;
    let warm_up_s = (b.warm_up_minutes * 60) as f64;
    let total_orders = b.rate * b.minutes * 60;
    eprintln!(
        "[4/4] soak: {} orders/s for {} min (the first {} a warm-up), a sample every {} s …",
        b.rate, b.minutes, b.warm_up_minutes, b.sample_seconds
    );
    for p in processes.iter_mut().chain([&mut reference]) {
        p.sample(0.0);
    }
    if let Some(pg) = &mut pg {
        pg.sample(0.0).await;
    }

    let stats: Stats = Arc::new(Mutex::new(Window::new()?));
    let slots = Arc::new(Semaphore::new(b.outstanding));
    let stop = CancellationToken::new();
    let start = tokio::time::Instant::now();
    let writer = tokio::spawn(place_orders(
        Load {
            api: api.clone(),
            shop: shop.clone(),
            stats: stats.clone(),
            slots: slots.clone(),
            ship_after: (b.ship_after_seconds > 0).then(|| Duration::from_secs(b.ship_after_seconds)),
            stop: stop.clone(),
        },
        (b.rate, total_orders),
        start,
        b.seed,
    ));
    let reader = tokio::spawn(read_list(api.clone(), stats.clone(), stop.clone()));

    let mut windows = Vec::new();
    let (mut after, mut seconds_after) = (Window::new()?, 0.0);
    let mut previous = start;
    for k in 1..=samples {
        let at = start + sample_every * k as u32;
        tokio::time::sleep_until(at).await;
        let window = take(&stats)?;
        let t_s = (k * b.sample_seconds) as f64;
        for p in processes.iter_mut().chain([&mut reference]) {
            p.sample(t_s);
        }
        if let Some(pg) = &mut pg {
            pg.sample(t_s).await;
        }
        let seconds = (at - previous).as_secs_f64();
        let counted = window_after_warm_up(k, b.sample_seconds, warm_up_s);
        let report = WindowReport::new(t_s, seconds, counted, &window);
        previous = at;
        eprintln!(
            "{}",
            progress(&report, t_s < warm_up_s, &processes, &reference, pg.as_ref())
        );
        if counted {
            after.add(&window)?;
            seconds_after += seconds;
        }
        windows.push(report);
    }
    stop.cancel();
    writer.await?;
    reader.await?;
    // The orders still waiting at the end: answered (or timed out) within the request timeout.
    let drained = tokio::time::timeout(
        REQUEST_TIMEOUT + Duration::from_secs(5),
        slots.acquire_many(b.outstanding as u32),
    )
    .await;
    ensure!(
        matches!(drained, Ok(Ok(_))),
        "requests still outstanding after the timeout"
    );
    after.add(&take(&stats)?)?;

    for p in processes.iter_mut().chain([&mut reference]) {
        p.peak();
    }
    // A server gone before the end is in the verdict (`gone_at_s`), not an error of the run.
    if let Some(server) = &mut target_server {
        let _ = server.stop();
    }
    let _ = reference_server.stop();

    let load = LoadSummary::new(b.rate, seconds_after, &after);
    let process_reports: Vec<ProcessReport> = processes.iter().map(|p| p.report(warm_up_s)).collect();
    let reference_report = reference.report(warm_up_s);
    let pg_report = pg.as_ref().map(|pg| pg.report(warm_up_s));
    let mut not_flat_because: Vec<String> = process_reports
        .iter()
        .flat_map(|p| p.not_flat_because.iter().map(move |why| format!("{}: {why}", p.name)))
        .collect();
    if let Some(pg) = &pg_report {
        not_flat_because.extend(pg.not_flat_because.iter().map(|why| format!("PostgreSQL: {why}")));
    }
    let comparison: Vec<Value> = process_reports
        .iter()
        .chain([&reference_report])
        .map(ProcessReport::comparison_row)
        .collect();
    eprintln!(
        "      {:.1} orders/s of {} ({} errors, {} not sent), p50 {:.1} ms, p99 {:.1} ms; flat: {}{}",
        load.achieved_rate,
        b.rate,
        load.errors,
        load.not_sent,
        load.p50_ms,
        load.p99_ms,
        not_flat_because.is_empty(),
        if not_flat_because.is_empty() {
            String::new()
        } else {
            format!(" ({})", not_flat_because.join("; "))
        }
    );
    Ok(json!({
        "benchmark": "soak",
        "deployment": b.deployment,
        "target": target,
        "command": "POST /v1/orders (1-3 lines; the sagas run) at a fixed rate, open loop, each order timed \
                    from its scheduled send; each placed order shipped --ship-after-seconds later and \
                    delivered 2 s after that; GET /v1/dashboard/orders?limit=50 once a second",
        "rate": b.rate,
        "ship_after_seconds": b.ship_after_seconds,
        "aggregate_cache_entries": b.aggregate_cache_entries,
        "minutes": b.minutes,
        "warm_up_minutes": b.warm_up_minutes,
        "sample_seconds": b.sample_seconds,
        "outstanding": b.outstanding,
        "rule": {
            "text": RULE,
            "rss_slope_of_mean_per_minute": RSS_SLOPE_OF_MEAN,
            "rss_slope_floor_mb_per_minute": RSS_SLOPE_FLOOR_MB,
            "fd_and_socket_slack": FD_SLACK,
            "pg_connection_slack": PG_SLACK,
        },
        "flat": not_flat_because.is_empty(),
        "not_flat_because": not_flat_because,
        "load_after_warm_up": load,
        "processes": process_reports,
        "pg_connections": pg_report,
        "reference": {
            "what": "an idle `orderflow serve` (the same binary, its own scratch folder, asked nothing after \
                     /ready), started before the target and sampled at the same instants: what flat looks \
                     like for a process of this code base doing nothing over the same minutes on this \
                     machine, the noise floor of the measure. Read a target's slope and growth beside its \
                     own; a reference that is not flat says the rule is too strict for the machine.",
            "process": reference_report,
        },
        "comparison": comparison,
        "windows": windows,
    }))
}

/// `orderflow serve` on `dir/<name>`, its log beside it.
async fn serve(dir: &Path, name: &str, extra_args: &[String], client: &HttpClient) -> anyhow::Result<ServeChild> {
    ServeChild::start(&dir.join(name), &dir.join(format!("{name}.log")), extra_args, client).await
}

/// Places orders until one is accepted: the deployment's pipeline (in the distributed one, the
/// orders service's copy of the new customers and products) is caught up before the clock
/// starts.
async fn first_order(api: &Api, shop: &Shop, seed: u64) -> anyhow::Result<()> {
    let mut rng = Rng::new(seed ^ 0xf125);
    let waited = Instant::now();
    loop {
        let status = api
            .send("POST", &api.orders, Some(&shop.order(Uuid::now_v7(), &mut rng)))
            .await;
        if matches!(status, Ok(201)) {
            eprintln!("      placed after {:.1} s", waited.elapsed().as_secs_f64());
            return Ok(());
        }
        ensure!(
            waited.elapsed() < Duration::from_secs(60),
            "the first order was not placed within 60 s (last answer: {status:?})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// The deployment's endpoints: full URLs of the requests the soak makes.
#[derive(Clone)]
struct Api {
    client: HttpClient,
    orders: String,
    customers: String,
    products: String,
    read: String,
    token: Option<Arc<str>>,
}

impl Api {
    /// Every endpoint on one server, without a token (the embedded `serve`).
    fn one(client: HttpClient, base: &str) -> Api {
        Api {
            client,
            orders: format!("{base}/v1/orders"),
            customers: format!("{base}/v1/customers"),
            products: format!("{base}/v1/products"),
            read: format!("{base}{READ_PATH}"),
            token: None,
        }
    }

    /// One request; answers its status (the body is read and dropped).
    async fn send(&self, method: &str, url: &str, body: Option<&Value>) -> anyhow::Result<u16> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(Full::new(body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()))))?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request))
            .await
            .context("timeout")??;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        Ok(status)
    }
}

/// The shop the orders are placed in (stock enough for any soak).
struct Shop {
    customers: Vec<Uuid>,
    products: Vec<Uuid>,
}

impl Shop {
    async fn create(api: &Api, run: &str) -> anyhow::Result<Shop> {
        let mut shop = Shop {
            customers: Vec::with_capacity(CUSTOMERS),
            products: Vec::with_capacity(PRODUCTS),
        };
        for i in 0..CUSTOMERS {
            let id = Uuid::now_v7();
            let body = json!({"customer_id": id, "name": format!("Soak {i}"),
                              "email": format!("soak{i}.{run}@example.com")});
            let status = api.send("POST", &api.customers, Some(&body)).await?;
            ensure!(status == 201, "registering a customer answered {status}");
            shop.customers.push(id);
        }
        for i in 0..PRODUCTS {
            let id = Uuid::now_v7();
            let body = json!({"product_id": id, "sku": format!("SOAK-{run}-{i:03}"), "name": format!("Soak {i}"),
                              "price_minor": 100 + i, "currency": "EUR", "stock": 1_000_000_000});
            let status = api.send("POST", &api.products, Some(&body)).await?;
            ensure!(status == 201, "adding a product answered {status}");
            shop.products.push(id);
        }
        Ok(shop)
    }

    fn order(&self, order_id: Uuid, rng: &mut Rng) -> Value {
        json!({"order_id": order_id, "customer_id": rng.pick(&self.customers),
               "lines": order_lines(rng, &self.products)})
    }
}

// ---------------------------------------------------------------------------------------------
// Load

/// What the load did since the last sample.
struct Window {
    /// Placed orders' latency from their scheduled send, µs.
    orders: Histogram<u64>,
    /// Answers other than 201, and transport errors, by kind (`503`, `error`).
    errors: BTreeMap<String, u64>,
    not_sent: u64,
    /// The list's 200s' latency, µs.
    reads: Histogram<u64>,
    read_errors: u64,
    shipped: u64,
    delivered: u64,
    /// Shipments and deliveries that failed, by kind (`ship 409`, `deliver error`).
    fulfil_errors: BTreeMap<String, u64>,
}

type Stats = Arc<Mutex<Window>>;

impl Window {
    fn new() -> anyhow::Result<Window> {
        Ok(Window {
            orders: histogram()?,
            errors: BTreeMap::new(),
            not_sent: 0,
            reads: histogram()?,
            read_errors: 0,
            shipped: 0,
            delivered: 0,
            fulfil_errors: BTreeMap::new(),
        })
    }

    fn errors(&self) -> u64 {
        self.errors.values().sum()
    }

    fn add(&mut self, other: &Window) -> anyhow::Result<()> {
        self.orders.add(&other.orders)?;
        self.reads.add(&other.reads)?;
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_default() += n;
        }
        self.not_sent += other.not_sent;
        self.read_errors += other.read_errors;
        self.shipped += other.shipped;
        self.delivered += other.delivered;
        for (kind, n) in &other.fulfil_errors {
            *self.fulfil_errors.entry(kind.clone()).or_default() += n;
        }
        Ok(())
    }
}

/// The window so far, and a new one in its place.
fn take(stats: &Stats) -> anyhow::Result<Window> {
    let mut window = stats.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(std::mem::replace(&mut *window, Window::new()?))
}

fn error_kind(answer: &anyhow::Result<u16>) -> String {
    match answer {
        Ok(status) => status.to_string(),
        Err(e) if e.to_string() == "timeout" => "timeout".to_owned(),
        Err(_) => "error".to_owned(),
    }
}

/// What the order placer works with.
struct Load {
    api: Api,
    shop: Arc<Shop>,
    stats: Stats,
    slots: Arc<Semaphore>,
    /// Ship each placed order this long after (None: never).
    ship_after: Option<Duration>,
    /// Ends the shipments and deliveries still waiting.
    stop: CancellationToken,
}

/// `total` orders at `rate` (`rate_total`) from `start`, each on its own schedule; an order due
/// while every slot waits is counted `not_sent`.
async fn place_orders(load: Load, (rate, total): (u64, u64), start: tokio::time::Instant, seed: u64) {
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut rng = Rng::new(seed);
    for i in 0..total {
        let scheduled = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled).await;
        let Ok(slot) = load.slots.clone().try_acquire_owned() else {
            load.stats.lock().unwrap_or_else(PoisonError::into_inner).not_sent += 1;
            continue;
        };
        let order_id = Uuid::now_v7();
        let order = load.shop.order(order_id, &mut rng);
        let (api, stats) = (load.api.clone(), load.stats.clone());
        let fulfil = load
            .ship_after
            .map(|after| (after, load.stop.clone(), load.slots.clone()));
        tokio::spawn(async move {
            let answer = api.send("POST", &api.orders, Some(&order)).await;
            let took = scheduled.elapsed().as_micros().max(1) as u64;
            let placed = matches!(answer, Ok(201));
            {
                let mut window = stats.lock().unwrap_or_else(PoisonError::into_inner);
                if placed {
                    window.orders.saturating_record(took);
                } else {
                    *window.errors.entry(error_kind(&answer)).or_default() += 1;
                }
            }
            drop(slot);
            if let (true, Some((after, stop, slots))) = (placed, fulfil) {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = ship_and_deliver(&api, &stats, &slots, order_id, after) => {}
                }
            }
        });
    }
}

/// Ships the order `after` its placement (asking again each second while its saga has not
/// confirmed it, for up to [`SHIP_PATIENCE`]) and delivers it [`DELIVER_AFTER`] later. Each
/// request waits for one of the orders' `slots`, so that the requests outstanding (and the
/// connections) stay within `--outstanding`.
async fn ship_and_deliver(api: &Api, stats: &Stats, slots: &Semaphore, order_id: Uuid, after: Duration) {
    let send = async |url: &str, body: &Value| {
        let _slot = slots.acquire().await;
        api.send("POST", url, Some(body)).await
    };
    let failed = |what: &str, answer: &anyhow::Result<u16>| {
        let mut window = stats.lock().unwrap_or_else(PoisonError::into_inner);
        *window
            .fulfil_errors
            .entry(format!("{what} {}", error_kind(answer)))
            .or_default() += 1;
    };
    tokio::time::sleep(after).await;
    let ship = format!("{}/{order_id}/ship", api.orders);
    let body = json!({"carrier": "DHL", "tracking": format!("SOAK{}", order_id.simple())});
    let patience = Instant::now() + SHIP_PATIENCE;
    loop {
        let answer = send(&ship, &body).await;
        match answer {
            Ok(200) => break,
            Ok(409) if Instant::now() < patience => tokio::time::sleep(Duration::from_secs(1)).await,
            _ => return failed("ship", &answer),
        }
    }
    stats.lock().unwrap_or_else(PoisonError::into_inner).shipped += 1;
    tokio::time::sleep(DELIVER_AFTER).await;
    let answer = send(&format!("{}/{order_id}/deliver", api.orders), &json!({})).await;
    if matches!(answer, Ok(200)) {
        stats.lock().unwrap_or_else(PoisonError::into_inner).delivered += 1;
    } else {
        failed("deliver", &answer);
    }
}

/// The dashboard list once a second until `stop`.
async fn read_list(api: Api, stats: Stats, stop: CancellationToken) {
    let mut every = tokio::time::interval(READ_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let sent = Instant::now();
        let answer = api.send("GET", &api.read, None).await;
        let took = sent.elapsed().as_micros().max(1) as u64;
        let mut window = stats.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(answer, Ok(200)) {
            window.reads.saturating_record(took);
        } else {
            window.read_errors += 1;
        }
    }
}

/// One window's load, as reported.
#[derive(Debug, Serialize)]
struct WindowReport {
    /// The sample closing the window, seconds after the load started.
    t_s: f64,
    seconds: f64,
    /// The window started at or after the warm-up's end: its load is in `load_after_warm_up`.
    after_warm_up: bool,
    /// Orders answered 201 in the window (by answer time).
    placed: u64,
    errors: u64,
    not_sent: u64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    reads: u64,
    read_errors: u64,
    read_p99_ms: f64,
    shipped: u64,
    delivered: u64,
    fulfil_errors: u64,
}

impl WindowReport {
    fn new(t_s: f64, seconds: f64, after_warm_up: bool, w: &Window) -> WindowReport {
        WindowReport {
            t_s,
            seconds: round(seconds, 3),
            after_warm_up,
            placed: w.orders.len(),
            errors: w.errors(),
            not_sent: w.not_sent,
            rate: round(w.orders.len() as f64 / seconds, 1),
            p50_ms: ms(&w.orders, 0.5),
            p99_ms: ms(&w.orders, 0.99),
            reads: w.reads.len(),
            read_errors: w.read_errors,
            read_p99_ms: ms(&w.reads, 0.99),
            shipped: w.shipped,
            delivered: w.delivered,
            fulfil_errors: w.fulfil_errors.values().sum(),
        }
    }
}

/// Whether window `k` (counted from 1; it runs from `(k - 1) × sample_seconds` to `k ×
/// sample_seconds`) lies after the warm-up. The process samples after the warm-up start at its
/// end, and so does the load counted beside them.
fn window_after_warm_up(k: u64, sample_seconds: u64, warm_up_s: f64) -> bool {
    ((k - 1) * sample_seconds) as f64 >= warm_up_s
}

/// The load of the windows after the warm-up (and the answers that came after the last one).
#[derive(Debug, Serialize)]
struct LoadSummary {
    target_rate: u64,
    seconds: f64,
    placed: u64,
    errors: u64,
    errors_by_kind: BTreeMap<String, u64>,
    not_sent: u64,
    achieved_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    reads: u64,
    read_errors: u64,
    read_p50_ms: f64,
    read_p99_ms: f64,
    shipped: u64,
    delivered: u64,
    fulfil_errors_by_kind: BTreeMap<String, u64>,
    /// No error (shipments and deliveries included), nothing unsent, at least 95% of the rate
    /// placed: the load was steady.
    held: bool,
}

impl LoadSummary {
    fn new(rate: u64, seconds: f64, w: &Window) -> LoadSummary {
        let achieved_rate = w.orders.len() as f64 / seconds;
        LoadSummary {
            target_rate: rate,
            seconds: round(seconds, 1),
            placed: w.orders.len(),
            errors: w.errors(),
            errors_by_kind: w.errors.clone(),
            not_sent: w.not_sent,
            achieved_rate: round(achieved_rate, 2),
            p50_ms: ms(&w.orders, 0.5),
            p99_ms: ms(&w.orders, 0.99),
            p999_ms: ms(&w.orders, 0.999),
            max_ms: ms(&w.orders, 1.0),
            reads: w.reads.len(),
            read_errors: w.read_errors,
            read_p50_ms: ms(&w.reads, 0.5),
            read_p99_ms: ms(&w.reads, 0.99),
            shipped: w.shipped,
            delivered: w.delivered,
            fulfil_errors_by_kind: w.fulfil_errors.clone(),
            held: w.errors() == 0
                && w.fulfil_errors.is_empty()
                && w.not_sent == 0
                && achieved_rate >= 0.95 * rate as f64,
        }
    }
}

fn progress(w: &WindowReport, warming: bool, processes: &[Sampled], reference: &Sampled, pg: Option<&Pg>) -> String {
    let last = |p: &Sampled| p.samples.last().filter(|s| s.t_s == w.t_s).copied();
    let alive: Vec<ProcSample> = processes.iter().filter_map(last).collect();
    let mut line = format!(
        "{:>3}:{:02} {} {:>6.1} orders/s p50 {:.1} p99 {:.1} ms, {} errors, {} not sent, {} shipped, {} delivered | ",
        w.t_s as u64 / 60,
        w.t_s as u64 % 60,
        if warming { "warm-up" } else { "soak   " },
        w.rate,
        w.p50_ms,
        w.p99_ms,
        w.errors + w.fulfil_errors,
        w.not_sent,
        w.shipped,
        w.delivered,
    );
    if alive.len() < processes.len() {
        line += &format!(
            "{} of {} processes gone | ",
            processes.len() - alive.len(),
            processes.len()
        );
    }
    line += &format!(
        "RSS {:.1} MB, {} fds, {} sockets",
        alive.iter().map(|s| s.rss_mb).sum::<f64>(),
        alive.iter().map(|s| s.fds).sum::<u64>(),
        alive.iter().map(|s| s.sockets).sum::<u64>(),
    );
    if let Some(n) = pg.and_then(|pg| pg.samples.last()).filter(|s| s.t_s == w.t_s) {
        line += &format!(", {} PostgreSQL connections", n.total);
    }
    if let Some(r) = last(reference) {
        line += &format!(" | reference {:.1} MB, {} fds", r.rss_mb, r.fds);
    }
    line
}

// ---------------------------------------------------------------------------------------------
// Processes

/// One process's figures at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct ProcSample {
    /// Seconds after the load started (0: just before it).
    t_s: f64,
    /// `VmRSS`, MB: the verdict's figure.
    rss_mb: f64,
    /// Of which anonymous memory (`RssAnon`: the heap, stacks) …
    rss_anon_mb: f64,
    /// … and mapped files (`RssFile`: the binary, SQLite's mapped pages if any).
    rss_file_mb: f64,
    /// Entries of `/proc/<pid>/fd`.
    fds: u64,
    /// Those that are sockets (`socket:[inode]`).
    sockets: u64,
    threads: u64,
}

/// What `/proc/<pid>/status` says of a live process.
#[derive(Debug, PartialEq)]
struct Status {
    rss_kb: u64,
    anon_kb: u64,
    file_kb: u64,
    hwm_kb: u64,
    threads: u64,
}

/// `/proc/<pid>/status`'s resident memory (and its anonymous and file parts), its peak and the
/// thread count; `None` for a process
/// that has exited (a zombie has no `VmRSS`).
fn parse_status(text: &str) -> Option<Status> {
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    if field("State:").is_some_and(|s| s.starts_with('Z') || s.starts_with('X')) {
        return None;
    }
    let kb = |name: &str| field(name)?.trim_end_matches("kB").trim().parse::<u64>().ok();
    Some(Status {
        rss_kb: kb("VmRSS:")?,
        anon_kb: kb("RssAnon:").unwrap_or(0),
        file_kb: kb("RssFile:").unwrap_or(0),
        hwm_kb: kb("VmHWM:").unwrap_or(0),
        threads: field("Threads:")?.parse().ok()?,
    })
}

/// Whether an fd's link (`/proc/<pid>/fd/N`) is a socket.
fn is_socket(link: &str) -> bool {
    link.starts_with("socket:")
}

/// The open descriptors in `fd_dir` (`/proc/<pid>/fd`), and how many are sockets.
fn count_fds(fd_dir: &Path) -> anyhow::Result<(u64, u64)> {
    let (mut fds, mut sockets) = (0, 0);
    for entry in std::fs::read_dir(fd_dir).with_context(|| format!("cannot list {}", fd_dir.display()))? {
        let Ok(entry) = entry else { continue };
        fds += 1;
        if let Ok(link) = std::fs::read_link(entry.path())
            && is_socket(&link.to_string_lossy())
        {
            sockets += 1;
        }
    }
    Ok((fds, sockets))
}

/// A live process's status and descriptors.
fn read_proc(pid: u32) -> anyhow::Result<(Status, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("no process {pid}"))?;
    let status = parse_status(&text).with_context(|| format!("process {pid} has exited"))?;
    let (fds, sockets) = count_fds(Path::new(&format!("/proc/{pid}/fd")))?;
    Ok((status, fds, sockets))
}

/// A process sampled through the run.
struct Sampled {
    name: String,
    pid: u32,
    command: String,
    samples: Vec<ProcSample>,
    gone_at_s: Option<f64>,
    peak_rss_mb: Option<f64>,
}

impl Sampled {
    fn new(name: &str, pid: u32) -> Sampled {
        Sampled {
            name: name.to_owned(),
            pid,
            command: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .unwrap_or_default()
                .trim()
                .to_owned(),
            samples: Vec::new(),
            gone_at_s: None,
            peak_rss_mb: None,
        }
    }

    fn sample(&mut self, t_s: f64) {
        if self.gone_at_s.is_some() {
            return;
        }
        match read_proc(self.pid) {
            Ok((status, fds, sockets)) => self.samples.push(ProcSample {
                t_s,
                rss_mb: round(status.rss_kb as f64 / 1024.0, 1),
                rss_anon_mb: round(status.anon_kb as f64 / 1024.0, 1),
                rss_file_mb: round(status.file_kb as f64 / 1024.0, 1),
                fds,
                sockets,
                threads: status.threads,
            }),
            Err(e) => {
                eprintln!("      {} (pid {}) is gone: {e:#}", self.name, self.pid);
                self.gone_at_s = Some(t_s);
            }
        }
    }

    /// Its peak resident memory (`VmHWM`), read at the end.
    fn peak(&mut self) {
        if self.gone_at_s.is_none()
            && let Ok((status, _, _)) = read_proc(self.pid)
        {
            self.peak_rss_mb = Some(round(status.hwm_kb as f64 / 1024.0, 1));
        }
    }

    fn report(&self, warm_up_s: f64) -> ProcessReport {
        let (warming, after): (Vec<ProcSample>, Vec<ProcSample>) =
            self.samples.iter().partition(|s| s.t_s == 0.0 || s.t_s < warm_up_s);
        let flatness = flatness(&after);
        let not_flat_because = judge_process(flatness.as_ref(), self.gone_at_s);
        ProcessReport {
            name: self.name.clone(),
            pid: self.pid,
            command: self.command.clone(),
            before_load: warming.first().copied().filter(|s| s.t_s == 0.0),
            warm_up_last: warming.last().copied().filter(|s| s.t_s > 0.0),
            peak_rss_mb: self.peak_rss_mb,
            gone_at_s: self.gone_at_s,
            flat: not_flat_because.is_empty(),
            not_flat_because,
            flatness: flatness.map(Flatness::rounded),
            samples: after,
        }
    }
}

/// A process's figures after the warm-up and the verdict on them.
#[derive(Debug, Serialize)]
struct ProcessReport {
    name: String,
    pid: u32,
    /// `/proc/<pid>/comm`.
    command: String,
    /// Just before the load started (after the shop was created).
    before_load: Option<ProcSample>,
    /// The last sample of the warm-up.
    warm_up_last: Option<ProcSample>,
    /// `VmHWM` at the end.
    peak_rss_mb: Option<f64>,
    /// When a sample first found it gone.
    gone_at_s: Option<f64>,
    flat: bool,
    not_flat_because: Vec<String>,
    flatness: Option<Flatness>,
    /// The samples after the warm-up.
    samples: Vec<ProcSample>,
}

impl ProcessReport {
    /// One row of the comparison with the reference.
    fn comparison_row(&self) -> Value {
        let f = self.flatness.as_ref();
        json!({
            "name": self.name,
            "rss_mean_mb": f.map(|f| f.rss_mb.mean),
            "rss_slope_mb_per_minute": f.map(|f| f.rss_mb.slope_per_minute),
            "rss_growth_mb": f.map(|f| round(f.rss_mb.last - f.rss_mb.first, 1)),
            "fds_growth": f.map(|f| f.fds.last - f.fds.first),
            "sockets_growth": f.map(|f| f.sockets.last - f.sockets.first),
            "flat": self.flat,
        })
    }
}

/// The figures of one series after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Trend {
    first: f64,
    last: f64,
    min: f64,
    max: f64,
    mean: f64,
    /// Of the least-squares line through the samples, per minute.
    slope_per_minute: f64,
    /// The smallest value of the first third of the samples, and of the last third: a count
    /// that rises and falls with the load's latency (connections opened in a slow moment,
    /// closed once idle) keeps its floor, a leak raises it.
    first_third_min: f64,
    last_third_min: f64,
}

/// `points` (minutes, value) as a [`Trend`]; `None` with fewer than two.
fn trend(points: &[(f64, f64)]) -> Option<Trend> {
    if points.len() < 2 {
        return None;
    }
    let values = points.iter().map(|p| p.1);
    let third = points.len().div_ceil(3);
    let floor = |part: &[(f64, f64)]| part.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    Some(Trend {
        first: points.first()?.1,
        last: points.last()?.1,
        min: values.clone().fold(f64::INFINITY, f64::min),
        max: values.clone().fold(f64::NEG_INFINITY, f64::max),
        mean: values.sum::<f64>() / points.len() as f64,
        slope_per_minute: slope(points),
        first_third_min: floor(&points[..third]),
        last_third_min: floor(&points[points.len() - third..]),
    })
}

/// The slope of the least-squares line through `points` (x, y); 0 when x does not vary.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if sxx <= f64::EPSILON {
        return 0.0;
    }
    points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum::<f64>() / sxx
}

impl Trend {
    fn rounded(self) -> Trend {
        Trend {
            first: round(self.first, 2),
            last: round(self.last, 2),
            min: round(self.min, 2),
            max: round(self.max, 2),
            mean: round(self.mean, 2),
            slope_per_minute: round(self.slope_per_minute, 3),
            first_third_min: round(self.first_third_min, 2),
            last_third_min: round(self.last_third_min, 2),
        }
    }
}

/// A process's trends after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Flatness {
    samples: usize,
    /// From the first sample after the warm-up to the last.
    minutes: f64,
    /// MB; the slope in MB per minute.
    rss_mb: Trend,
    fds: Trend,
    sockets: Trend,
    threads: Trend,
}

impl Flatness {
    fn rounded(self) -> Flatness {
        Flatness {
            rss_mb: self.rss_mb.rounded(),
            fds: self.fds.rounded(),
            sockets: self.sockets.rounded(),
            threads: self.threads.rounded(),
            minutes: round(self.minutes, 2),
            ..self
        }
    }
}

fn flatness(samples: &[ProcSample]) -> Option<Flatness> {
    let series =
        |f: fn(&ProcSample) -> f64| -> Vec<(f64, f64)> { samples.iter().map(|s| (s.t_s / 60.0, f(s))).collect() };
    Some(Flatness {
        samples: samples.len(),
        minutes: (samples.last()?.t_s - samples.first()?.t_s) / 60.0,
        rss_mb: trend(&series(|s| s.rss_mb))?,
        fds: trend(&series(|s| s.fds as f64))?,
        sockets: trend(&series(|s| s.sockets as f64))?,
        threads: trend(&series(|s| s.threads as f64))?,
    })
}

/// The most resident memory may grow per minute and still be flat, for a mean of `mean_mb`.
fn rss_slope_limit(mean_mb: f64) -> f64 {
    (RSS_SLOPE_OF_MEAN * mean_mb).max(RSS_SLOPE_FLOOR_MB)
}

/// Why a count (descriptors, sockets, connections) is not flat, if it is not.
fn count_grew(what: &str, t: &Trend, slack: f64) -> Option<String> {
    (t.last_third_min > t.first_third_min + slack).then(|| {
        format!(
            "{what}: the last third's smallest {} is more than {slack} above the first third's {} \
             ({} → {}, max {})",
            t.last_third_min, t.first_third_min, t.first, t.last, t.max
        )
    })
}

/// Why a process is not flat; empty when it is.
fn judge_process(flatness: Option<&Flatness>, gone_at_s: Option<f64>) -> Vec<String> {
    let mut why = Vec::new();
    if let Some(t) = gone_at_s {
        why.push(format!("the process was gone at {t} s"));
    }
    let Some(f) = flatness else {
        why.push("fewer than two samples after the warm-up".to_owned());
        return why;
    };
    let limit = rss_slope_limit(f.rss_mb.mean);
    if f.rss_mb.slope_per_minute > limit {
        why.push(format!(
            "resident memory grew {:.2} MB/min (limit {limit:.2}: 1% of its mean {:.1} MB, at least {}); \
             {:.1} → {:.1} MB",
            f.rss_mb.slope_per_minute, f.rss_mb.mean, RSS_SLOPE_FLOOR_MB, f.rss_mb.first, f.rss_mb.last
        ));
    }
    why.extend(count_grew("open file descriptors", &f.fds, FD_SLACK));
    why.extend(count_grew("open sockets", &f.sockets, FD_SLACK));
    why
}

// ---------------------------------------------------------------------------------------------
// The distributed deployment

/// A `scripts/dev-up` instance, read from its state folder.
struct Instance {
    dir: PathBuf,
    settings: BTreeMap<String, String>,
}

/// `instance.env`'s `KEY=VALUE` lines (comments and blank lines skipped).
fn parse_settings(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The PostgreSQL databases of an instance (scripts/dev-up's `service_db`, `REPLICA_DB` and
/// `READ_DB`).
fn dev_databases(prefix: &str, read_db: Option<&str>) -> Vec<String> {
    let mut names: Vec<String> = ["customers", "inventory", "orders", "payments", "orders_replica"]
        .iter()
        .map(|s| format!("{prefix}orderflow_{s}"))
        .collect();
    names.push(read_db.map_or_else(|| format!("{prefix}orderflow_read"), str::to_owned));
    names
}

/// The pid in a pid file.
fn parse_pid(text: &str) -> Option<u32> {
    text.trim().parse().ok().filter(|pid| *pid > 0)
}

impl Instance {
    fn read(dir: &Path) -> anyhow::Result<Instance> {
        let file = dir.join("instance.env");
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "no scripts/dev-up instance in {} (no {}): start one with scripts/dev-up, or pass --state-dir",
                dir.display(),
                file.display()
            )
        })?;
        Ok(Instance {
            dir: dir.to_owned(),
            settings: parse_settings(&text),
        })
    }

    fn setting(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn url(&self, port_key: &str, default_port: u16) -> String {
        let port = self
            .setting(port_key)
            .map_or_else(|| default_port.to_string(), str::to_owned);
        format!("http://{HOST}:{port}")
    }

    fn api(&self, client: HttpClient) -> anyhow::Result<Api> {
        let file = self.dir.join("token");
        let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let token = text.trim();
        ensure!(!token.is_empty(), "{} is empty", file.display());
        Ok(Api {
            client,
            orders: format!("{}/v1/orders", self.url("ORDERFLOW_ORDERS_PORT", 8081)),
            customers: format!("{}/v1/customers", self.url("ORDERFLOW_CUSTOMERS_PORT", 8083)),
            products: format!("{}/v1/products", self.url("ORDERFLOW_INVENTORY_PORT", 8084)),
            read: format!("{}{READ_PATH}", self.url("ORDERFLOW_READ_PORT", 8082)),
            token: Some(Arc::from(token)),
        })
    }

    fn databases(&self) -> Vec<String> {
        dev_databases(
            self.setting("ORDERFLOW_DEV_PREFIX").unwrap_or(""),
            self.setting("ORDERFLOW_DEV_READ_DB"),
        )
    }

    /// Every process of `pids/*.pid` that runs, by name.
    fn processes(&self) -> anyhow::Result<Vec<Sampled>> {
        let pids = self.dir.join("pids");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&pids)
            .with_context(|| format!("cannot list {}", pids.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pid"))
            .collect();
        files.sort();
        let mut processes = Vec::new();
        for file in files {
            let name = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(pid) = std::fs::read_to_string(&file).ok().as_deref().and_then(parse_pid) else {
                eprintln!("      {}: no pid, skipped", file.display());
                continue;
            };
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if parse_status(&status).is_none() {
                eprintln!("      {name} (pid {pid}) is not running, skipped");
                continue;
            }
            // Alive, but its descriptors cannot be read: another user's process.
            count_fds(Path::new(&format!("/proc/{pid}/fd")))
                .with_context(|| format!("{name} (pid {pid}): run the soak as the user that ran dev-up"))?;
            processes.push(Sampled::new(&name, pid));
        }
        ensure!(
            !processes.is_empty(),
            "no process of {} runs (scripts/dev-up status)",
            pids.display()
        );
        Ok(processes)
    }
}

/// The deployment's PostgreSQL sessions, from `pg_stat_activity`.
struct Pg {
    conn: PgConnection,
    databases: Vec<String>,
    samples: Vec<PgSample>,
    errors: u64,
}

#[derive(Debug, Clone, Serialize)]
struct PgSample {
    t_s: f64,
    total: u64,
    by_database: BTreeMap<String, u64>,
}

impl Pg {
    async fn connect(url: &str, databases: Vec<String>) -> anyhow::Result<Pg> {
        let url = DatabaseUrl::parse("--pg-url", url)?;
        let url = url.postgres().context("--pg-url is not a PostgreSQL URL")?;
        let conn = url
            .options()
            .connect()
            .await
            .context("connect to PostgreSQL (--pg-url)")?;
        Ok(Pg {
            conn,
            databases,
            samples: Vec::new(),
            errors: 0,
        })
    }

    async fn sample(&mut self, t_s: f64) {
        let rows: Result<Vec<(String, i64)>, _> = sqlx::query_as(
            "SELECT datname::text, count(*) FROM pg_stat_activity WHERE datname::text = ANY($1) GROUP BY 1",
        )
        .bind(self.databases.clone())
        .fetch_all(&mut self.conn)
        .await;
        match rows {
            Ok(rows) => {
                let mut by_database: BTreeMap<String, u64> = self.databases.iter().map(|d| (d.clone(), 0)).collect();
                for (database, n) in rows {
                    by_database.insert(database, n.max(0) as u64);
                }
                self.samples.push(PgSample {
                    t_s,
                    total: by_database.values().sum(),
                    by_database,
                });
            }
            Err(e) => {
                self.errors += 1;
                eprintln!("      counting PostgreSQL connections failed: {e}");
            }
        }
    }

    fn report(&self, warm_up_s: f64) -> PgReport {
        let after: Vec<PgSample> = self
            .samples
            .iter()
            .filter(|s| s.t_s > 0.0 && s.t_s >= warm_up_s)
            .cloned()
            .collect();
        let points: Vec<(f64, f64)> = after.iter().map(|s| (s.t_s / 60.0, s.total as f64)).collect();
        let trend = trend(&points);
        let mut not_flat_because: Vec<String> = match &trend {
            Some(t) => count_grew("connections", t, PG_SLACK).into_iter().collect(),
            None => vec!["fewer than two samples after the warm-up".to_owned()],
        };
        if self.errors > 0 {
            not_flat_because.push(format!("{} samples failed", self.errors));
        }
        PgReport {
            databases: self.databases.clone(),
            before_load: self.samples.first().filter(|s| s.t_s == 0.0).cloned(),
            flat: not_flat_because.is_empty(),
            not_flat_because,
            trend: trend.map(Trend::rounded),
            sample_errors: self.errors,
            samples: after,
        }
    }
}

#[derive(Debug, Serialize)]
struct PgReport {
    databases: Vec<String>,
    before_load: Option<PgSample>,
    flat: bool,
    not_flat_because: Vec<String>,
    /// Of the total over the deployment's databases.
    trend: Option<Trend>,
    sample_errors: u64,
    samples: Vec<PgSample>,
}

fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10_f64.powi(decimals);
    (x * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, rss_mb: f64, fds: u64) -> ProcSample {
        ProcSample {
            t_s,
            rss_mb,
            rss_anon_mb: rss_mb - 10.0,
            rss_file_mb: 10.0,
            fds,
            sockets: fds / 4,
            threads: 12,
        }
    }

    #[test]
    fn the_slope_is_the_least_squares_lines() {
        assert!((slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) - 2.0).abs() < 1e-12);
        // Noise around a line: the line's slope, not the ends'.
        let noisy = [(0.0, 10.0), (1.0, 12.0), (2.0, 10.0), (3.0, 12.0)];
        assert!((slope(&noisy) - 0.4).abs() < 1e-12);
        assert_eq!(slope(&[(1.0, 5.0)]), 0.0);
        assert_eq!(slope(&[(1.0, 5.0), (1.0, 9.0)]), 0.0, "x does not vary");
        assert_eq!(slope(&[(0.0, 7.0), (1.0, 7.0), (2.0, 7.0)]), 0.0);
    }

    #[test]
    fn a_trend_has_the_ends_extremes_and_mean() {
        let t = trend(&[(0.0, 4.0), (1.0, 9.0), (2.0, 2.0), (3.0, 5.0)]).expect("a trend");
        assert_eq!((t.first, t.last, t.min, t.max, t.mean), (4.0, 5.0, 2.0, 9.0, 5.0));
        assert!(trend(&[(0.0, 1.0)]).is_none());
        assert!(trend(&[]).is_none());
    }

    #[test]
    fn flatness_is_per_minute_over_the_samples_given() {
        // 2 MB more every 30 s: 4 MB/min.
        let samples: Vec<ProcSample> = (0..5)
            .map(|i| sample(120.0 + 30.0 * i as f64, 100.0 + 2.0 * i as f64, 40))
            .collect();
        let f = flatness(&samples).expect("flatness");
        assert_eq!(f.samples, 5);
        assert!((f.minutes - 2.0).abs() < 1e-12);
        assert!((f.rss_mb.slope_per_minute - 4.0).abs() < 1e-9);
        assert_eq!(f.fds.slope_per_minute, 0.0);
        assert!(flatness(&samples[..1]).is_none());
    }

    #[test]
    fn the_verdict_allows_noise_and_refuses_growth() {
        let flat: Vec<ProcSample> = [300.0, 302.0, 299.0, 301.0, 300.5]
            .iter()
            .enumerate()
            .map(|(i, rss)| sample(60.0 * i as f64, *rss, 50 + (i as u64 % 2) * 3))
            .collect();
        let f = flatness(&flat).expect("flatness");
        assert!(
            judge_process(Some(&f), None).is_empty(),
            "{:?}",
            judge_process(Some(&f), None)
        );

        // 300 MB growing 5 MB/min: over 1% of the mean (3 MB/min).
        let growing: Vec<ProcSample> = (0..5)
            .map(|i| sample(60.0 * i as f64, 300.0 + 5.0 * i as f64, 50))
            .collect();
        let why = judge_process(flatness(&growing).as_ref(), None);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].starts_with("resident memory grew 5.00 MB/min"), "{why:?}");

        // A small process: 0.3 MB/min is under the floor of 0.5, though over 1% of 20 MB.
        let small: Vec<ProcSample> = (0..5)
            .map(|i| sample(60.0 * i as f64, 20.0 + 0.3 * i as f64, 20))
            .collect();
        assert!(judge_process(flatness(&small).as_ref(), None).is_empty());
        assert_eq!(rss_slope_limit(20.0), RSS_SLOPE_FLOOR_MB);
        assert!((rss_slope_limit(1000.0) - 10.0).abs() < 1e-12);

        // Descriptors: up to the slack is noise, past it a leak (the sockets follow them here).
        let fds = |last: u64| {
            let s = [
                sample(0.0, 100.0, 40),
                sample(60.0, 100.0, 45),
                sample(120.0, 100.0, last),
            ];
            judge_process(flatness(&s).as_ref(), None)
        };
        assert!(fds(50).is_empty());
        let why = fds(51);
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(
            why[0].starts_with(
                "open file descriptors: the last third's smallest 51 is more than 10 above the first third's 40"
            ),
            "{why:?}"
        );
        assert_eq!(fds(100).len(), 2, "descriptors and sockets");

        // Gone, or not sampled enough.
        assert_eq!(
            judge_process(Some(&f), Some(90.0)),
            vec!["the process was gone at 90 s".to_owned()]
        );
        assert_eq!(judge_process(None, None).len(), 1);
    }

    #[test]
    fn the_load_after_the_warm_up_starts_with_its_first_whole_window() {
        // A minute of warm-up, a sample every 5 s: the 12th window ends at 60 s (warm-up), the
        // 13th is the first after it.
        assert!(!window_after_warm_up(12, 5, 60.0));
        assert!(window_after_warm_up(13, 5, 60.0));
        // Every 7 s: the window from 56 s to 63 s straddles the end, and is left out.
        assert!(!window_after_warm_up(9, 7, 60.0));
        assert!(window_after_warm_up(10, 7, 60.0));
        // No warm-up: every window.
        assert!(window_after_warm_up(1, 10, 0.0));
    }

    #[test]
    fn pg_connections_may_end_a_few_above_the_first() {
        let t = |first: f64, last: f64| trend(&[(0.0, first), (1.0, first + 10.0), (2.0, last)]).expect("a trend");
        assert!(count_grew("connections", &t(40.0, 44.0), PG_SLACK).is_none());
        assert!(count_grew("connections", &t(40.0, 45.0), PG_SLACK).is_some());
        assert!(count_grew("connections", &t(40.0, 30.0), PG_SLACK).is_none());
    }

    #[test]
    fn a_count_that_rises_and_falls_with_the_load_is_flat_and_a_rising_floor_is_not() {
        let counts = |values: &[f64]| {
            let points: Vec<(f64, f64)> = values.iter().enumerate().map(|(i, v)| (i as f64, *v)).collect();
            trend(&points).expect("a trend")
        };
        // Connections opened in slow moments and closed once idle: the last sample is high,
        // the floor is not.
        let swinging = counts(&[12.0, 30.0, 11.0, 40.0, 12.0, 13.0, 50.0, 14.0, 48.0]);
        assert_eq!((swinging.first_third_min, swinging.last_third_min), (11.0, 14.0));
        assert!(count_grew("sockets", &swinging, FD_SLACK).is_none());
        // A descriptor leak raises every sample, the floor with them.
        let leaking = counts(&[12.0, 14.0, 16.0, 18.0, 20.0, 22.0, 24.0, 26.0, 28.0]);
        assert_eq!((leaking.first_third_min, leaking.last_third_min), (12.0, 24.0));
        assert!(count_grew("descriptors", &leaking, FD_SLACK).is_some());
    }

    #[test]
    fn proc_status_gives_rss_peak_and_threads_of_a_live_process() {
        let status = "Name:\torderflow\nState:\tS (sleeping)\nVmHWM:\t  812340 kB\nVmRSS:\t  409600 kB\n\
                      RssAnon:\t  380000 kB\nRssFile:\t   29000 kB\nRssShmem:\t     600 kB\nThreads:\t17\n";
        assert_eq!(
            parse_status(status),
            Some(Status {
                rss_kb: 409_600,
                anon_kb: 380_000,
                file_kb: 29_000,
                hwm_kb: 812_340,
                threads: 17
            })
        );
        // A zombie keeps its status file but no memory.
        assert_eq!(
            parse_status("Name:\torderflow\nState:\tZ (zombie)\nThreads:\t1\n"),
            None
        );
        assert_eq!(parse_status("State:\tZ (zombie)\nVmRSS:\t 1 kB\nThreads:\t1\n"), None);
        assert_eq!(
            parse_status("Name:\tkthreadd\nState:\tS (sleeping)\nThreads:\t1\n"),
            None
        );
        assert!(is_socket("socket:[123456]"));
        assert!(!is_socket("/tmp/orderflow/orders.db-wal"));
        assert!(!is_socket("anon_inode:[eventpoll]"));
        assert!(!is_socket("pipe:[98765]"));
    }

    #[test]
    fn this_process_can_be_read_from_proc() {
        let (status, fds, _) = read_proc(std::process::id()).expect("our own /proc");
        assert!(status.rss_kb > 0 && status.hwm_kb >= status.rss_kb && status.threads >= 1);
        assert!(fds >= 3, "stdin, stdout, stderr at least: {fds}");
        let _socket = std::net::TcpListener::bind((HOST, 0)).expect("a listener");
        let (_, _, sockets) = read_proc(std::process::id()).expect("our own /proc");
        assert!(sockets >= 1);
    }

    #[test]
    fn a_dev_up_instance_is_read_from_its_state_folder() {
        let settings = parse_settings(
            "# Written by scripts/dev-up up\nORDERFLOW_DEV_PREFIX=soak_\n\nORDERFLOW_ORDERS_PORT=9081\n\
             ORDERFLOW_DEV_READ_DB=soak_orderflow_read\nORDERFLOW_DEV_BIN_DIR=\n",
        );
        assert_eq!(settings.get("ORDERFLOW_DEV_PREFIX").map(String::as_str), Some("soak_"));
        assert_eq!(settings.get("ORDERFLOW_ORDERS_PORT").map(String::as_str), Some("9081"));
        assert_eq!(settings.get("ORDERFLOW_DEV_BIN_DIR").map(String::as_str), Some(""));
        assert_eq!(settings.len(), 4);

        assert_eq!(
            dev_databases("", None),
            [
                "orderflow_customers",
                "orderflow_inventory",
                "orderflow_orders",
                "orderflow_payments",
                "orderflow_orders_replica",
                "orderflow_read"
            ]
        );
        let prefixed = dev_databases("x_", Some("reads"));
        assert_eq!(prefixed[0], "x_orderflow_customers");
        assert_eq!(prefixed[5], "reads");

        assert_eq!(parse_pid("12345\n"), Some(12345));
        assert_eq!(parse_pid(""), None);
        assert_eq!(parse_pid("0"), None);
        assert_eq!(parse_pid("abc"), None);
    }
}
