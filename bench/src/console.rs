//! `orderflow bench console`: the operations console in headless Chromium, over `orderflow serve`
//! with a dashboard of `--orders` orders.
//!
//! 1. Seeds an empty data directory with the demo's simulated shop ([`shop_sim::seed`] straight
//!    into the services' SQLite stores, about 15.5 events per order, over the four weeks ending
//!    today as `serve --demo` does), then builds the read models from it with a rebuild (the
//!    dashboard's bulk load: much faster than the live runners applying batch by batch) and
//!    catches the orders service's copy of customers and products up, each with a progress bar.
//!    A `--data-dir` that already holds a shop is served as it is (seed once, measure often).
//! 2. Serves it in-process with [`embedded::run`] (what `orderflow serve` runs) on a free
//!    loopback port, and waits until every projection has applied every event.
//! 3. The reference: `GET /v1/dashboard/orders?limit=50` over HTTP from Rust, the API's own
//!    latency for the page of rows the console shows first.
//! 4. Per page of the console, a cold load in a fresh browser session (a fresh profile: nothing
//!    cached; WebDriver cannot turn the cache off): the bytes transferred, from the Performance
//!    API (the navigation's and every resource's `transferSize`: compressed, headers included;
//!    `encodedBodySize`, the compressed bodies; `decodedBodySize`, uncompressed), the orders
//!    page against its target (≤ 250 KB transferred).
//! 5. The orders page loaded `--loads` times more, each cold, timed from navigation start to
//!    the front end's `performance.mark('orders-rows-rendered')` (50 rows on screen): p50, max,
//!    and the ratio to the API reference's p50.
//!
//! One JSON document on stdout, progress on stderr.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use chrono::{Days, Utc};
use clap::{Args, Parser};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use projections::catalog::Sinks;
use projections::{ReadDb, ServiceLog};
use serde::Serialize;
use serde_json::{Value, json};
use service_kit::cli::progress_bar;
use service_kit::db::{DatabaseUrl, PoolSettings};
use shop_sim::{SeedOptions, SeedReport};
use tokio_util::sync::CancellationToken;

use crate::browser::{Browser, Driver};
use crate::load::{HttpClient, histogram, ms, print_json};

#[derive(Debug, Args)]
pub struct ConsoleBench {
    /// Orders the dashboard holds: the shop is seeded with about 15.5 events per order.
    #[arg(long, default_value_t = 200_000, env = "ORDERFLOW_BENCH_ORDERS")]
    orders: u64,
    /// Cold loads of the orders page timed to its first 50 rows (each in a fresh browser
    /// session), besides the one of the per-page bytes.
    #[arg(long, default_value_t = 5, env = "ORDERFLOW_BENCH_LOADS")]
    loads: usize,
    /// Requests of the API reference (`GET /v1/dashboard/orders?limit=50`, one at a time).
    #[arg(long, default_value_t = 50, env = "ORDERFLOW_BENCH_API_REQUESTS")]
    api_requests: usize,
    /// Seed of the simulation.
    #[arg(long, default_value_t = 42, env = "ORDERFLOW_BENCH_SEED")]
    seed: u64,
    /// The data directory to serve. Empty or missing: seeded, and kept after the run; holding a
    /// shop already (a previous run's): served as it is, without seeding. Default: a temporary
    /// directory, deleted after the run.
    #[arg(long, env = "ORDERFLOW_BENCH_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// What the orders page should weigh at most, transferred on a cold load.
const ORDERS_PAGE_TARGET_BYTES: u64 = 250_000;
/// What the default run aims to stay within, on 2 cores.
const RUN_TARGET: Duration = Duration::from_secs(180);
/// How long a page gets to become ready, and the server to start.
const PAGE_WITHIN: Duration = Duration::from_secs(60);
/// How long the network must stay quiet after a page is ready before its bytes are read.
const QUIET: Duration = Duration::from_millis(500);
/// Simulated days of the seeded history, ending today at midnight (UTC), like the demo's.
const DAYS: u32 = 28;

/// The console's pages, as (name, hash route). `{order}` and `{customer}` are filled in with
/// an order and a customer of the dashboard.
const PAGES: &[(&str, &str)] = &[
    ("orders", "#/orders"),
    ("order", "#/orders/{order}"),
    ("as-of", "#/as-of"),
    ("customers", "#/customers"),
    ("customer", "#/customers/{customer}"),
    ("analytics", "#/analytics"),
    ("operations", "#/operations"),
    ("events", "#/events"),
];

/// What was done to have a shop to serve.
#[derive(Debug, Serialize)]
struct Setup {
    /// False when `--data-dir` held a shop already.
    seeded: bool,
    seed: Option<SeedReport>,
    /// Each read model built from the seeded stores: name, events, seconds.
    rebuilds: Vec<Value>,
    /// The orders service's copy of customers and products caught up.
    replica_seconds: f64,
    seconds: f64,
}

/// One cold load of a page.
#[derive(Debug, Serialize)]
struct PageLoad {
    page: &'static str,
    route: String,
    /// `data-state` of `main#page` when it stopped loading (`ready`, `empty`, `error`).
    state: String,
    /// From navigation start until `main#page` was seen no longer loading (looked at every
    /// 50 ms), as the page's clock says.
    ready_ms: f64,
    /// Requests of the load (see [`BYTES_SCRIPT`]): the document and what it loaded.
    requests: u64,
    /// On the wire: the navigation's and every resource's `transferSize` (compressed bodies
    /// and headers).
    transfer_bytes: u64,
    /// The compressed bodies alone (`encodedBodySize`).
    encoded_body_bytes: u64,
    /// The bodies uncompressed (`decodedBodySize`).
    decoded_body_bytes: u64,
    /// Of `transfer_bytes`, the API's answers (`/v1/...`).
    api_transfer_bytes: u64,
    /// Entries the browser console logged at level SEVERE (JavaScript errors, failed requests).
    severe_console_entries: Vec<String>,
    /// Requests started later, not counted: a live page's polls.
    later_requests: u64,
    /// Every request counted: [path, transferSize, decodedBodySize].
    resources: Vec<(String, u64, u64)>,
}

#[derive(Debug, Serialize)]
struct ApiReference {
    endpoint: &'static str,
    requests: usize,
    p50_ms: f64,
    max_ms: f64,
    response_bytes: usize,
}

pub(crate) async fn run(b: ConsoleBench) -> anyhow::Result<()> {
    ensure!(
        b.orders > 0 && b.loads > 0 && b.api_requests > 0,
        "--orders, --loads and --api-requests must be positive"
    );
    let started = Instant::now();
    let (dir, temporary) = match &b.data_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("orderflow-bench-console-{}", uuid::Uuid::new_v4().simple())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let measured = measure(&b, &dir, started).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    print_json(&measured?)
}

async fn measure(b: &ConsoleBench, dir: &Path, started: Instant) -> anyhow::Result<Value> {
    let setup = prepare(b, dir).await?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let base = format!("http://127.0.0.1:{port}");
    eprintln!("serving {} on {base} (orderflow serve, in-process) …", dir.display());
    let shutdown = CancellationToken::new();
    let _stop_on_return = shutdown.clone().drop_guard();
    let mut server = tokio::spawn(embedded::run(serve_args(dir, port)?, shutdown.clone()));
    let http: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let measured = async {
        wait_served(&http, &base, &mut server).await?;
        wait_caught_up(&http, &base).await?;
        let reference = api_reference(&http, &base, b.api_requests).await?;
        eprintln!(
            "API reference: GET /v1/dashboard/orders?limit=50  p50 {:.2} ms  max {:.2} ms",
            reference.p50_ms, reference.max_ms
        );
        let funnel = get_json(&http, &format!("{base}/v1/analytics/order-funnel")).await?;
        let dashboard_orders = funnel["placed"].as_u64().unwrap_or(0);
        eprintln!("the dashboard holds {dashboard_orders} orders");
        let (order, customer) = an_order_and_its_customer(&http, &base).await?;
        let driver = Driver::start().await?;
        let pages = cold_loads(&driver, &base, &order, &customer).await?;
        let rows = time_to_rows(&driver, &base, b.loads).await?;
        anyhow::Ok((dashboard_orders, reference, pages, rows))
    }
    .await;
    shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(30), &mut server).await {
        Ok(Ok(Err(e))) if measured.is_ok() => return Err(e.context("orderflow serve")),
        Err(_) => eprintln!("note: orderflow serve did not stop within 30 s"),
        _ => {}
    }
    let (dashboard_orders, reference, pages, rows) = measured?;

    let orders_page = pages
        .iter()
        .find(|p| p.page == "orders")
        .context("the orders page was not loaded")?;
    let mut sorted = rows.clone();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    let p50 = if sorted.len() % 2 == 0 {
        round((sorted[middle - 1] + sorted[middle]) / 2.0)
    } else {
        sorted[middle]
    };
    let max = sorted.last().copied().unwrap_or(0.0);
    let seconds = started.elapsed().as_secs_f64();
    let measure_seconds = seconds - setup.seconds;
    let note = (seconds > RUN_TARGET.as_secs_f64()).then(|| {
        format!(
            "this run took {seconds:.0} s, over the {} s aimed at on 2 cores; preparing the shop took {:.0} s \
             ({}): pass fewer --orders, or a --data-dir to seed once and reuse it",
            RUN_TARGET.as_secs(),
            setup.seconds,
            if setup.seeded {
                "seeding and building its read models"
            } else {
                "nothing seeded"
            }
        )
    });
    Ok(json!({
        "benchmark": "console",
        "orders_asked": b.orders,
        "dashboard_orders": dashboard_orders,
        "setup": setup,
        "pages": pages,
        "orders_page": {
            "target_transfer_bytes": ORDERS_PAGE_TARGET_BYTES,
            "transfer_bytes": orders_page.transfer_bytes,
            "decoded_body_bytes": orders_page.decoded_body_bytes,
            "target_met": orders_page.transfer_bytes <= ORDERS_PAGE_TARGET_BYTES,
            "loads": rows.len(),
            "time_to_50_rows_ms": rows,
            "time_to_50_rows_p50_ms": p50,
            "time_to_50_rows_max_ms": max,
        },
        "api_reference": reference,
        "time_to_50_rows_p50_over_api_p50": (p50 / reference.p50_ms.max(0.001) * 10.0).round() / 10.0,
        "seconds": seconds,
        "measure_seconds": measure_seconds,
        "note": note,
    }))
}

/// `serve --data-dir DIR --listen 127.0.0.1:PORT`, as the command line would give them.
fn serve_args(dir: &Path, port: u16) -> anyhow::Result<embedded::ServeArgs> {
    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: embedded::ServeArgs,
    }
    let dir = dir.to_str().context("the data directory's path is not UTF-8")?;
    let listen = format!("127.0.0.1:{port}");
    Ok(Serve::try_parse_from(["serve", "--data-dir", dir, "--listen", &listen])?.args)
}

/// A shop in `dir`: seeded and its read models built when its stores are empty, left as it is
/// otherwise.
async fn prepare(b: &ConsoleBench, dir: &Path) -> anyhow::Result<Setup> {
    let started = Instant::now();
    let opened = embedded::open(dir).await?;
    let prepared = prepare_opened(b, dir, &opened).await;
    for (_, store) in &opened.stores {
        store.close().await;
    }
    opened.replica_db.pool().close().await;
    let (seed, rebuilds, replica_seconds) = prepared?;
    Ok(Setup {
        seeded: seed.is_some(),
        seed,
        rebuilds,
        replica_seconds,
        seconds: started.elapsed().as_secs_f64(),
    })
}

type Prepared = (Option<SeedReport>, Vec<Value>, f64);

async fn prepare_opened(b: &ConsoleBench, dir: &Path, opened: &embedded::Opened) -> anyhow::Result<Prepared> {
    if crate::scratch::heads(&opened.logs).await? > 0 {
        eprintln!(
            "{} holds a shop already: serving it as it is (--orders is not applied)",
            dir.display()
        );
        return Ok((None, Vec::new(), 0.0));
    }
    let events = b.orders * 155 / 10;
    eprintln!(
        "setting up: seeding ~{events} events (~{} orders) into {}, then building the read models: about \
         {:.0} minutes on 2 cores (~3 min per 100,000 orders); --orders for a quicker run, --data-dir to keep \
         the shop and measure it again without seeding …",
        b.orders,
        dir.display(),
        (b.orders as f64 / 100_000.0 * 3.2).max(0.1)
    );
    let today = Utc::now().date_naive().and_time(chrono::NaiveTime::MIN).and_utc();
    let options = SeedOptions {
        events,
        days: DAYS,
        seed: b.seed,
        customers: (events / 50).max(100) as usize,
        products: (events / 500).max(20) as usize,
        start: today
            .checked_sub_days(Days::new(u64::from(DAYS)))
            .unwrap_or_else(shop_sim::seed::default_start),
        ..SeedOptions::default()
    };
    let seeded = shop_sim::seed_with_progress(&opened.logs, &options, "seeding the shop").await?;
    eprintln!(
        "seeded {} events ({} orders, {} customers) in {:.1}s ({:.0} events/s)",
        seeded.events, seeded.orders, seeded.customers, seeded.seconds, seeded.events_per_second
    );

    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();
    let read_db = ReadDb::open(&DatabaseUrl::Sqlite(dir.join("read.db")), PoolSettings::READ_DB).await?;
    read_db.migrate().await?;
    let sinks = Sinks {
        read_db: read_db.clone(),
        clickhouse: None,
    };
    let rebuilt = crate::reads::rebuild_all(&opened.logs, &sinks, &stop)
        .await
        .map(|(rebuilds, _dashboard_version)| rebuilds);
    read_db.pool().close().await;
    let rebuilds = rebuilt?;

    let replica_started = Instant::now();
    let replica = {
        let (local, stop) = (opened.local.clone(), stop.clone());
        tokio::spawn(async move { local.run_replica(stop).await })
    };
    let sources: Vec<&ServiceLog> = opened
        .logs
        .iter()
        .filter(|log| {
            matches!(
                log.service,
                event_schemas::Service::Customers | event_schemas::Service::Inventory
            )
        })
        .collect();
    let mut target = 0;
    for log in &sources {
        target += log.store.head_position().await?;
    }
    let bar = progress_bar(
        target,
        "the orders service's copy of customers and products",
        "positions",
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    while !opened.local.replica_caught_up().await? {
        ensure!(
            !replica.is_finished(),
            "the orders service's copy stopped: {:?}",
            replica.await
        );
        ensure!(
            Instant::now() < deadline,
            "the orders service's copy did not catch up in 10 minutes"
        );
        if let Some(version) = opened
            .replica_db
            .live_version(write_side::orders::replica::NAME)
            .await?
        {
            let progress = opened
                .replica_db
                .progress(write_side::orders::replica::NAME, version)
                .await?;
            let applied: u64 = sources
                .iter()
                .map(|log| projections::applied_position(&progress, log.service))
                .sum();
            bar.set_position(applied);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish_and_clear();
    stop.cancel();
    replica.await??;
    let replica_seconds = replica_started.elapsed().as_secs_f64();
    eprintln!("the orders service's copy of customers and products caught up in {replica_seconds:.1}s");
    Ok((Some(seeded), rebuilds, replica_seconds))
}

/// A GET: its status, body, and how long the whole answer took.
async fn get(http: &HttpClient, url: &str) -> anyhow::Result<(hyper::StatusCode, Bytes, Duration)> {
    let started = Instant::now();
    let response = http
        .request(hyper::Request::get(url).body(Full::new(Bytes::new()))?)
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body, started.elapsed()))
}

async fn get_json(http: &HttpClient, url: &str) -> anyhow::Result<Value> {
    let (status, body, _) = get(http, url).await?;
    ensure!(
        status == hyper::StatusCode::OK,
        "GET {url}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    Ok(serde_json::from_slice(&body)?)
}

/// Waits until the server answers `/ready` and serves the console's page at `/`.
async fn wait_served(
    http: &HttpClient,
    base: &str,
    server: &mut tokio::task::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + PAGE_WITHIN;
    loop {
        if server.is_finished() {
            bail!("orderflow serve stopped: {:?}", server.await?);
        }
        let ready = matches!(get(http, &format!("{base}/ready")).await, Ok((s, _, _)) if s.is_success());
        if ready {
            let (status, body, _) = get(http, &format!("{base}/")).await?;
            ensure!(
                status == hyper::StatusCode::OK && String::from_utf8_lossy(&body).contains("<html"),
                "GET / does not serve the console: {status} {}",
                String::from_utf8_lossy(&body).chars().take(200).collect::<String>()
            );
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "orderflow serve not ready within {PAGE_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every projection is live and has applied every service's log (`/v1/projections`).
async fn wait_caught_up(http: &HttpClient, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut announced = false;
    loop {
        let status = get_json(http, &format!("{base}/v1/projections")).await?;
        let projections = status["projections"].as_array().cloned().unwrap_or_default();
        let lag: Option<u64> = projections
            .iter()
            .map(|p| (p["state"] == "live").then(|| p["lag_events"].as_u64()).flatten())
            .sum();
        if !projections.is_empty() && lag == Some(0) {
            return Ok(());
        }
        if !announced {
            eprintln!("waiting for the projections to apply every event …");
            announced = true;
        }
        ensure!(
            Instant::now() < deadline,
            "the projections did not catch up within 10 minutes: {status}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The API's own latency for the console's first page of orders, one request at a time over a
/// kept-alive connection, after a few to warm up.
async fn api_reference(http: &HttpClient, base: &str, requests: usize) -> anyhow::Result<ApiReference> {
    const PATH: &str = "/v1/dashboard/orders?limit=50";
    let url = format!("{base}{PATH}");
    for _ in 0..5 {
        get_json(http, &url).await?;
    }
    let mut hist = histogram()?;
    let mut response_bytes = 0;
    for _ in 0..requests {
        let (status, body, took) = get(http, &url).await?;
        ensure!(status == hyper::StatusCode::OK, "GET {PATH}: {status}");
        hist.record(took.as_micros().max(1) as u64)?;
        response_bytes = body.len();
    }
    Ok(ApiReference {
        endpoint: "GET /v1/dashboard/orders?limit=50",
        requests,
        p50_ms: ms(&hist, 0.5),
        max_ms: hist.max() as f64 / 1000.0,
        response_bytes,
    })
}

/// The first order of the dashboard's first page, and its customer.
async fn an_order_and_its_customer(http: &HttpClient, base: &str) -> anyhow::Result<(String, String)> {
    let page = get_json(http, &format!("{base}/v1/dashboard/orders?limit=1")).await?;
    let row = &page["rows"][0];
    match (row["order_id"].as_str(), row["customer_id"].as_str()) {
        (Some(order), Some(customer)) => Ok((order.to_owned(), customer.to_owned())),
        _ => bail!("the dashboard has no order: {page}"),
    }
}

/// The Performance API's account of what the page loaded: the navigation, and every request
/// that started before the page was ready (`arguments[0]`, ms) or within [`QUIET`] after it
/// (`arguments[1]`), but for a repeat after it of a request already counted (a live page's poll).
const BYTES_SCRIPT: &str = r#"
const [ready, cutoff] = arguments;
const nav = performance.getEntriesByType('navigation')[0];
const all = performance.getEntriesByType('resource').slice().sort((a, b) => a.startTime - b.startTime);
const seen = new Set();
const res = all.filter(e => {
  if (e.startTime > cutoff || (e.startTime > ready && seen.has(e.name))) return false;
  seen.add(e.name);
  return true;
});
const sum = (list, key) => list.reduce((total, e) => total + (e[key] || 0), 0);
const api = res.filter(e => new URL(e.name).pathname.startsWith('/v1/'));
return {
  requests: 1 + res.length,
  later_requests: all.length - res.length,
  transfer: nav.transferSize + sum(res, 'transferSize'),
  encoded: nav.encodedBodySize + sum(res, 'encodedBodySize'),
  decoded: nav.decodedBodySize + sum(res, 'decodedBodySize'),
  api_transfer: sum(api, 'transferSize'),
  resources: [[new URL(nav.name).pathname, nav.transferSize, nav.decodedBodySize]].concat(
    res.map(e => { const u = new URL(e.name); return [u.pathname + u.search, e.transferSize, e.decodedBodySize]; })),
};
"#;

/// `main#page` once it is no longer loading.
const SETTLED: &str = r#"main#page[data-state="ready"], main#page[data-state="empty"], main#page[data-state="error"]"#;

/// Each page of [`PAGES`], loaded cold in a fresh session.
async fn cold_loads(driver: &Driver, base: &str, order: &str, customer: &str) -> anyhow::Result<Vec<PageLoad>> {
    let bar = progress_bar(PAGES.len() as u64, "cold loads, a browser session each", "pages");
    let mut loads = Vec::new();
    for (page, route) in PAGES {
        let route = route.replace("{order}", order).replace("{customer}", customer);
        let browser = driver.session().await?;
        let load = cold_load(&browser, base, page, &route).await;
        let _ = browser.close().await;
        loads.push(load.with_context(|| format!("the {page} page ({route})"))?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    for p in &loads {
        eprintln!(
            "{:>10}: {:>8} B transferred ({:>8} B of bodies compressed, {:>8} uncompressed), {:>3} requests, {} in {:.0} ms{}",
            p.page,
            p.transfer_bytes,
            p.encoded_body_bytes,
            p.decoded_body_bytes,
            p.requests,
            p.state,
            p.ready_ms,
            if p.severe_console_entries.is_empty() {
                ""
            } else {
                "  (SEVERE console entries)"
            }
        );
    }
    Ok(loads)
}

async fn cold_load(browser: &Browser, base: &str, page: &'static str, route: &str) -> anyhow::Result<PageLoad> {
    browser.goto(&format!("{base}/{route}")).await?;
    let main = browser.wait_for(SETTLED, PAGE_WITHIN).await?;
    let ready_ms = round(
        browser
            .js("return performance.now();", Vec::new())
            .await?
            .as_f64()
            .unwrap_or(0.0),
    );
    let state = main.attr("data-state").await?.unwrap_or_default();
    wait_network_quiet(browser).await?;
    let cutoff = ready_ms + QUIET.as_secs_f64() * 1000.0;
    let bytes = browser.js(BYTES_SCRIPT, vec![json!(ready_ms), json!(cutoff)]).await?;
    let severe = browser
        .console_log()
        .await?
        .into_iter()
        .filter(|e| e.level == "SEVERE")
        .map(|e| e.message)
        .collect();
    let number = |key: &str| bytes[key].as_f64().unwrap_or(0.0) as u64;
    let resources = bytes["resources"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|r| {
                    (
                        r[0].as_str().unwrap_or_default().to_owned(),
                        r[1].as_f64().unwrap_or(0.0) as u64,
                        r[2].as_f64().unwrap_or(0.0) as u64,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(PageLoad {
        page,
        route: route.to_owned(),
        state,
        ready_ms,
        requests: number("requests"),
        transfer_bytes: number("transfer"),
        encoded_body_bytes: number("encoded"),
        decoded_body_bytes: number("decoded"),
        api_transfer_bytes: number("api_transfer"),
        severe_console_entries: severe,
        later_requests: number("later_requests"),
        resources,
    })
}

/// Waits until no request has finished for [`QUIET`] (at most [`PAGE_WITHIN`]): what a page
/// loads after it says it is ready (a chart's data, a late script) counts too.
async fn wait_network_quiet(browser: &Browser) -> anyhow::Result<()> {
    let mut last = (u64::MAX, Instant::now());
    browser
        .wait_until("the network to go quiet", PAGE_WITHIN, async || {
            let count = browser
                .js("return performance.getEntriesByType('resource').length;", Vec::new())
                .await?
                .as_u64()
                .unwrap_or(0);
            if count != last.0 {
                last = (count, Instant::now());
            }
            Ok((last.1.elapsed() >= QUIET).then_some(()))
        })
        .await
}

/// Milliseconds to a tenth.
fn round(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

/// The orders page loaded cold `loads` times, each in a fresh session: from navigation start
/// to the front end's `orders-rows-rendered` mark, in milliseconds.
async fn time_to_rows(driver: &Driver, base: &str, loads: usize) -> anyhow::Result<Vec<f64>> {
    let bar = progress_bar(loads as u64, "the orders page to 50 rows, cold", "loads");
    let mut times = Vec::with_capacity(loads);
    for _ in 0..loads {
        let browser = driver.session().await?;
        let timed = async {
            browser.goto(&format!("{base}/#/orders")).await?;
            let mark = browser
                .wait_js(
                    "performance.getEntriesByName('orders-rows-rendered', 'mark').map(m => m.startTime)[0]",
                    PAGE_WITHIN,
                )
                .await
                .context("the orders page never marked `orders-rows-rendered`")?;
            mark.as_f64().map(round).context("the mark's startTime is not a number")
        }
        .await;
        let _ = browser.close().await;
        times.push(timed?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    eprintln!(
        "orders page to 50 rows, {loads} cold loads: {}",
        times
            .iter()
            .map(|t| format!("{t:.0} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(times)
}
