//! Overload, with the real `orderflow serve` binary and a small in-flight bound: clients that
//! offer at least ten times what the process admits see every request either done or refused
//! at once with 503 `overloaded` and `Retry-After`; the process's own in-flight gauge
//! (`/metrics`, which is never shed) never passes the bound; nothing crashes; no admitted order
//! is lost; and commands are admitted again once the load stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::task::JoinSet;
use uuid::Uuid;

mod support;

use support::{Api, Server, free_port};

const BOUND: u64 = 8;
const CLIENTS: usize = 48;
/// The load lasts at least this long, and until it is provably ten times what the process
/// admits (at most [`LOAD_AT_MOST`]).
const LOAD_FOR: Duration = Duration::from_secs(6);
const LOAD_AT_MOST: Duration = Duration::from_secs(30);

/// What the clients saw.
#[derive(Default)]
struct Seen {
    placed: AtomicU64,
    shed: AtomicU64,
}

/// The value of the gauge `name` in Prometheus text, if present.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_bound_commands_are_refused_at_once_and_taken_again_after() -> anyhow::Result<()> {
    let root = support::scratch("overload");
    let port = free_port();
    let api = Arc::new(Api::new(port));
    let mut server = Server::start(
        &["serve", "--max-in-flight", &BOUND.to_string()],
        &root.join("data"),
        port,
        root.join("serve.log"),
    );
    api.wait_ready(&mut server, Duration::from_secs(60)).await?;

    let (customer, product) = (Uuid::now_v7(), Uuid::now_v7());
    api.command_token(
        "/v1/customers",
        json!({"customer_id": customer, "name": "Ada", "email": "ada@example.com"}),
        StatusCode::CREATED,
    )
    .await?;
    api.command_token(
        "/v1/products",
        json!({"product_id": product, "sku": "LOAD-1", "name": "Load", "price_minor": 100,
               "currency": "EUR", "stock": 1_000_000}),
        StatusCode::CREATED,
    )
    .await?;
    let place = move || {
        json!({"order_id": Uuid::now_v7(), "customer_id": customer,
               "lines": [{"product_id": product, "quantity": 1}]})
    };

    // The load: closed-loop clients that send the next order as soon as one is answered.
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = JoinSet::new();
    for _ in 0..CLIENTS {
        let (api, seen, stop) = (api.clone(), seen.clone(), stop.clone());
        clients.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, headers, body) = api.send(Method::POST, "/v1/orders", Some(place())).await?;
                match status {
                    StatusCode::CREATED => seen.placed.fetch_add(1, Ordering::Relaxed),
                    StatusCode::SERVICE_UNAVAILABLE if body["error"]["code"] == "overloaded" => {
                        ensure!(
                            headers.get("retry-after").is_some_and(|v| v == "1"),
                            "a refusal without Retry-After: {headers:?}"
                        );
                        seen.shed.fetch_add(1, Ordering::Relaxed)
                    }
                    other => anyhow::bail!("under load, an order was answered {other} {body}"),
                };
            }
            anyhow::Ok(())
        });
    }
    // The process's own account of what it works on, read all through the load.
    let reads = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (api, stop, reads) = (api.clone(), stop.clone(), reads.clone());
        tokio::spawn(async move {
            let mut highest = 0_f64;
            while !stop.load(Ordering::Relaxed) {
                let text = api.metrics().await?;
                if let Some(value) = gauge(&text, "http_requests_in_flight") {
                    highest = highest.max(value);
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(highest)
        })
    };
    let started = Instant::now();
    // Polled every 100 ms: the load goes on until it has been ten times what is admitted, with
    // the gauge read often enough, for at least LOAD_FOR.
    // The rates are those of the moment the load stops (answers still in flight then do not
    // count: they were offered and admitted at the old rates).
    let (placed, shed, elapsed) = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (placed, shed) = (seen.placed.load(Ordering::Relaxed), seen.shed.load(Ordering::Relaxed));
        let enough = placed > 0 && placed + shed >= 10 * placed && reads.load(Ordering::Relaxed) >= 10;
        if (enough && started.elapsed() >= LOAD_FOR) || started.elapsed() >= LOAD_AT_MOST {
            break (placed, shed, started.elapsed().as_secs_f64());
        }
    };
    stop.store(true, Ordering::Relaxed);
    while let Some(client) = clients.join_next().await {
        client??;
    }
    let highest = watcher.await??;
    let reads = reads.load(Ordering::Relaxed);
    let total_placed = seen.placed.load(Ordering::Relaxed);
    let (admitted_rate, offered_rate) = (placed as f64 / elapsed, (placed + shed) as f64 / elapsed);
    eprintln!(
        "offered {offered_rate:.0}/s, admitted {admitted_rate:.0}/s ({placed} placed, {shed} shed), \
         in flight at most {highest} in {reads} reads of /metrics"
    );
    ensure!(placed > 0, "nothing was admitted under load");
    ensure!(
        offered_rate >= 10.0 * admitted_rate,
        "the load was not ten times what the process takes: offered {offered_rate:.0}/s, admitted {admitted_rate:.0}/s"
    );
    ensure!(reads >= 10, "/metrics answered only {reads} times under load");
    ensure!(
        highest <= BOUND as f64,
        "the process had {highest} requests in flight, past its bound of {BOUND}"
    );
    ensure!(server.running(), "the process died under load:\n{}", server.log());

    // Once the load stops, commands are taken again, and every order answered 201 is there.
    let last = api
        .command_token("/v1/orders", place(), StatusCode::CREATED)
        .await
        .context("a command after the load")?;
    let (status, summary) = api
        .get(&format!("/v1/dashboard/customers/{customer}?min_position={last}"))
        .await?;
    ensure!(status == StatusCode::OK, "{status} {summary}");
    ensure!(
        summary["order_count"] == total_placed + 1,
        "{total_placed} orders were placed under load and one after, the dashboard has {summary}"
    );
    let status = server.terminate(Duration::from_secs(30))?;
    ensure!(status.success(), "serve ended with {status}:\n{}", server.log());
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
