//! `orderflow bench overload`: the embedded `serve` (a child process, so that its memory is its
//! own) offered several times what it sustains. First its capacity after a warm-up, the
//! reference: as many closed-loop clients as its in-flight bound, so that nothing is shed. Then an open-loop load
//! at `--factor` × that rate: what it admits, how fast the admitted orders are answered, how
//! fast the refusals are. Then the same load against a `serve` without a bound (what the
//! bound saves), and the capacity again once the load stops. Peak resident memory from the
//! kernel (`VmHWM`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::{Value, json};
use shop_sim::Rng;
use uuid::Uuid;

use crate::load::{HttpClient, histogram, ms, order_lines, print_json};
use crate::serve_child::ServeChild;

#[derive(Debug, Args)]
pub struct OverloadBench {
    /// Seconds of each phase (capacity, overload, unbounded, after).
    #[arg(long, default_value_t = 10, env = "ORDERFLOW_BENCH_SECONDS")]
    seconds: u64,
    /// The overload's offered rate, as a multiple of the measured capacity.
    #[arg(long, default_value_t = 10.0)]
    factor: f64,
    /// `serve --max-in-flight` of the bounded server.
    #[arg(long, default_value_t = service_kit::http::DEFAULT_MAX_IN_FLIGHT)]
    max_in_flight: u32,
    /// Requests (and connections) the load generator keeps outstanding at most; an order due
    /// while that many wait is counted `not_sent` (the client, not the server, is saturated).
    /// Thousands of connections overflow the listen backlog, and the kernel's SYN retries (1 s,
    /// 3 s, ...) would then be measured as the server's latency.
    #[arg(long, default_value_t = 256)]
    outstanding: usize,
    /// Skip the unbounded server (the reference of what shedding saves).
    #[arg(long)]
    no_unbounded: bool,
}

const CUSTOMERS: usize = 50;
const PRODUCTS: usize = 100;

/// A closed-loop phase.
#[derive(Debug, Serialize)]
struct Closed {
    clients: usize,
    seconds: f64,
    placed: u64,
    other: u64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// An open-loop phase.
#[derive(Debug, Serialize)]
struct Open {
    target_rate: f64,
    seconds: f64,
    offered_rate: f64,
    admitted_rate: f64,
    placed: u64,
    /// 503 `overloaded`, each with `Retry-After`.
    shed: u64,
    /// 503 `overloaded` without `Retry-After` (must be 0).
    shed_without_retry_after: u64,
    /// Any other answer, e.g. 503 `timeout` after a request waited its whole timeout.
    other: u64,
    /// Orders due while the client had `outstanding` requests waiting: not sent.
    not_sent: u64,
    admitted_p50_ms: f64,
    admitted_p99_ms: f64,
    admitted_max_ms: f64,
    rejection_p50_ms: f64,
    rejection_p99_ms: f64,
    rejection_max_ms: f64,
    rss_mb_after: f64,
}

/// `orderflow serve` on `dir/data` with `--max-in-flight`: the overload's server and the
/// unbounded one after it share the data (the shop).
async fn serve(dir: &Path, max_in_flight: u32, client: &HttpClient) -> anyhow::Result<ServeChild> {
    let args = ["--max-in-flight".to_owned(), max_in_flight.to_string()];
    ServeChild::start(
        &dir.join("data"),
        &dir.join(format!("serve-{max_in_flight}.log")),
        &args,
        client,
    )
    .await
}

/// One request: status, whether it carried `Retry-After`, the body.
async fn send(
    client: &HttpClient,
    base: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, bool, Value)> {
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()))))?;
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .context("no answer within 30 s")??;
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((
        status,
        retry_after,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// The shop the orders are placed in: customers and products (stock enough for every phase).
struct Shop {
    customers: Vec<Uuid>,
    products: Vec<Uuid>,
}

impl Shop {
    async fn create(client: &HttpClient, base: &str) -> anyhow::Result<Shop> {
        let mut shop = Shop {
            customers: Vec::new(),
            products: Vec::new(),
        };
        for i in 0..CUSTOMERS {
            let id = Uuid::now_v7();
            let body = json!({"customer_id": id, "name": format!("Load {i}"), "email": format!("load{i}@example.com")});
            let (status, _, answer) = send(client, base, "POST", "/v1/customers", Some(&body)).await?;
            ensure!(status == 201, "register a customer: {status} {answer}");
            shop.customers.push(id);
        }
        for i in 0..PRODUCTS {
            let id = Uuid::now_v7();
            let body = json!({"product_id": id, "sku": format!("LOAD-{i}"), "name": format!("Load {i}"),
                              "price_minor": 100 + i, "currency": "EUR", "stock": 100_000_000});
            let (status, _, answer) = send(client, base, "POST", "/v1/products", Some(&body)).await?;
            ensure!(status == 201, "add a product: {status} {answer}");
            shop.products.push(id);
        }
        Ok(shop)
    }

    fn order(&self, rng: &mut Rng) -> Value {
        json!({"order_id": Uuid::now_v7(), "customer_id": rng.pick(&self.customers),
               "lines": order_lines(rng, &self.products)})
    }
}

pub(crate) async fn run(b: OverloadBench) -> anyhow::Result<()> {
    ensure!(b.seconds > 0, "--seconds must be positive");
    ensure!(b.factor >= 1.0, "--factor must be at least 1");
    ensure!(b.outstanding > 0, "--outstanding must be positive");
    let dir = std::env::temp_dir().join(format!("orderflow-bench-overload-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(&b, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    print_json(&result?)
}

async fn measure(b: &OverloadBench, dir: &Path) -> anyhow::Result<Value> {
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(b.outstanding)
        .build_http();
    let seconds = Duration::from_secs(b.seconds);
    let bound = b.max_in_flight as usize;

    let mut served = serve(dir, b.max_in_flight, &client).await?;
    eprintln!(
        "[1/4] seeding {CUSTOMERS} customers and {PRODUCTS} products, then the capacity: {bound} closed-loop clients, {}s …",
        b.seconds
    );
    let shop = Arc::new(Shop::create(&client, &served.base).await?);
    // Unmeasured: the first orders of a fresh shop are slow (the orders service's copy of the
    // catalogue catching up, every product's aggregate loaded once) and would understate the
    // capacity the overload is offered a multiple of.
    let warm_up = closed(&client, &served.base, &shop, bound, seconds).await?;
    eprintln!(
        "      warm-up {:.0} orders/s, p99 {:.1} ms (not the reference)",
        warm_up.rate, warm_up.p99_ms
    );
    let capacity = closed(&client, &served.base, &shop, bound, seconds).await?;
    eprintln!(
        "      capacity {:.0} orders/s, p99 {:.1} ms",
        capacity.rate, capacity.p99_ms
    );
    ensure!(capacity.rate > 0.0, "nothing was placed at capacity");

    let target = capacity.rate * b.factor;
    eprintln!(
        "[2/4] overload: {target:.0} orders/s offered ({}× capacity) for {}s …",
        b.factor, b.seconds
    );
    let overload = open(&client, &served, &shop, target, seconds, b.outstanding).await?;
    eprintln!(
        "      admitted {:.0}/s (p99 {:.1} ms), shed {} (p99 {:.2} ms), other {}",
        overload.admitted_rate, overload.admitted_p99_ms, overload.shed, overload.rejection_p99_ms, overload.other
    );
    eprintln!("[3/4] after the load: {bound} closed-loop clients, {}s …", b.seconds);
    let after = closed(&client, &served.base, &shop, bound, seconds).await?;
    let (_, peak_rss_mb) = served.memory_mb();
    served.stop()?;

    let unbounded = if b.no_unbounded {
        eprintln!("[4/4] (skipped: --no-unbounded)");
        None
    } else {
        eprintln!(
            "[4/4] the same overload against serve without a bound (--max-in-flight 100000), {}s …",
            b.seconds
        );
        let mut served = serve(dir, 100_000, &client).await?;
        let run = open(&client, &served, &shop, target, seconds, b.outstanding).await?;
        let (_, peak) = served.memory_mb();
        served.stop()?;
        eprintln!(
            "      admitted {:.0}/s (p99 {:.1} ms), other {}, not sent {}",
            run.admitted_rate, run.admitted_p99_ms, run.other, run.not_sent
        );
        Some(json!({"run": run, "peak_rss_mb": peak}))
    };
    let round = |x: f64| (x * 100.0).round() / 100.0;
    Ok(json!({
        "benchmark": "overload",
        "server": "orderflow serve (embedded, SQLite), a child process",
        "command": "POST /v1/orders (1-3 lines; the saga runs in the process)",
        "max_in_flight": bound,
        "factor": b.factor,
        "warm_up": warm_up,
        "capacity": capacity,
        "overload": overload,
        "after": after,
        "peak_rss_mb": peak_rss_mb,
        "unbounded": unbounded,
        "ratios": {
            "admitted_over_capacity": round(overload.admitted_rate / capacity.rate),
            "admitted_p99_over_capacity_p99": round(overload.admitted_p99_ms / capacity.p99_ms.max(0.001)),
            "after_over_capacity": round(after.rate / capacity.rate),
        },
    }))
}

/// `clients` closed-loop clients for `seconds`.
async fn closed(
    client: &HttpClient,
    base: &str,
    shop: &Arc<Shop>,
    clients: usize,
    seconds: Duration,
) -> anyhow::Result<Closed> {
    let started = Instant::now();
    let deadline = started + seconds;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, base, shop) = (client.clone(), base.to_owned(), shop.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(c as u64 + 1);
            let (mut hist, mut other) = (histogram()?, 0_u64);
            while Instant::now() < deadline {
                let sent = Instant::now();
                let (status, _, _) = send(&client, &base, "POST", "/v1/orders", Some(&shop.order(&mut rng))).await?;
                if status == 201 {
                    hist.record(sent.elapsed().as_micros().max(1) as u64)?;
                } else {
                    other += 1;
                }
            }
            anyhow::Ok((hist, other))
        }));
    }
    let (mut hist, mut other) = (histogram()?, 0);
    for task in tasks {
        let (h, o) = task.await??;
        hist.add(h)?;
        other += o;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Closed {
        clients,
        seconds: elapsed,
        placed: hist.len(),
        other,
        rate: hist.len() as f64 / elapsed,
        p50_ms: ms(&hist, 0.5),
        p99_ms: ms(&hist, 0.99),
    })
}

#[derive(Default)]
struct Counts {
    shed_without_retry_after: AtomicU64,
    other: AtomicU64,
}

/// Orders sent at `rate` for `seconds`, each on its own schedule whatever the answers.
async fn open(
    client: &HttpClient,
    served: &ServeChild,
    shop: &Arc<Shop>,
    rate: f64,
    seconds: Duration,
    outstanding: usize,
) -> anyhow::Result<Open> {
    let period = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * seconds.as_secs_f64()) as u64;
    let slots = Arc::new(tokio::sync::Semaphore::new(outstanding));
    let counts = Arc::new(Counts::default());
    let mut rng = Rng::new(0x0be7_10ad);
    let mut tasks = Vec::with_capacity(total as usize);
    let mut not_sent = 0_u64;
    let started = tokio::time::Instant::now();
    for i in 0..total {
        tokio::time::sleep_until(started + period.mul_f64(i as f64)).await;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            not_sent += 1;
            continue;
        };
        let (client, base, counts) = (client.clone(), served.base.clone(), counts.clone());
        let order = shop.order(&mut rng);
        tasks.push(tokio::spawn(async move {
            let _slot = slot;
            let sent = Instant::now();
            let answer = send(&client, &base, "POST", "/v1/orders", Some(&order)).await;
            let took = sent.elapsed();
            match answer {
                Ok((201, _, _)) => Some((true, took)),
                Ok((503, retry_after, body)) if body["error"]["code"] == "overloaded" => {
                    if !retry_after {
                        counts.shed_without_retry_after.fetch_add(1, Ordering::Relaxed);
                    }
                    Some((false, took))
                }
                _ => {
                    counts.other.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        }));
    }
    let offered_for = started.elapsed().as_secs_f64();
    let (mut admitted, mut rejected): (Histogram<u64>, Histogram<u64>) = (histogram()?, histogram()?);
    for task in tasks {
        match task.await? {
            Some((true, took)) => admitted.record(took.as_micros().max(1) as u64)?,
            Some((false, took)) => rejected.record(took.as_micros().max(1) as u64)?,
            None => {}
        }
    }
    let other = counts.other.load(Ordering::Relaxed);
    let (rss, _) = served.memory_mb();
    Ok(Open {
        target_rate: rate,
        seconds: offered_for,
        offered_rate: (admitted.len() + rejected.len() + other) as f64 / offered_for,
        admitted_rate: admitted.len() as f64 / offered_for,
        placed: admitted.len(),
        shed: rejected.len(),
        shed_without_retry_after: counts.shed_without_retry_after.load(Ordering::Relaxed),
        other,
        not_sent,
        admitted_p50_ms: ms(&admitted, 0.5),
        admitted_p99_ms: ms(&admitted, 0.99),
        admitted_max_ms: ms(&admitted, 1.0),
        rejection_p50_ms: ms(&rejected, 0.5),
        rejection_p99_ms: ms(&rejected, 0.99),
        rejection_max_ms: ms(&rejected, 1.0),
        rss_mb_after: rss,
    })
}
