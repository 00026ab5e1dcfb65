//! End to end, with the real binary: `orderflow serve --demo` seeds an empty store with a shop
//! whose orders went through their lifecycle and their place-order sagas, the in-process
//! projections show it (saga states, cancellations per reason code, revenue of paid orders),
//! and a restart with `--demo` on the same data directory does not seed it again.

use std::time::{Duration, Instant};

use anyhow::ensure;
use hyper::StatusCode;
use serde_json::Value;
use uuid::Uuid;

mod support;

use support::{Api, Server, free_port};

/// About how many events the test seeds: enough for delivered orders, quick in a debug build.
const DEMO_EVENTS: &str = "5000";

/// The funnel once the projections show a shop with placed and delivered orders and at least
/// one row on the dashboard.
async fn wait_for_the_shop(api: &Api) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, page) = api.get("/v1/dashboard/orders?limit=5").await?;
        ensure!(status == StatusCode::OK, "dashboard: {status} {page}");
        let rows = page["rows"].as_array().map_or(0, Vec::len);
        let (status, funnel) = api.get("/v1/analytics/order-funnel").await?;
        ensure!(status == StatusCode::OK, "funnel: {status} {funnel}");
        let count = |key: &str| funnel[key].as_u64().unwrap_or(0);
        if rows > 0 && count("placed") > 0 && count("delivered") > 0 {
            return Ok(funnel);
        }
        ensure!(
            Instant::now() < deadline,
            "no shop on the read side within 120 s: {rows} rows, funnel {funnel}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `path` of the read side once its projection has applied every event up to `token` (a read
/// waits a little for its `min_position`, then answers 503 `not_caught_up`: ask again).
async fn read_at(api: &Api, path: &str, token: &str) -> anyhow::Result<Value> {
    let separator = if path.contains('?') { '&' } else { '?' };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = api.get(&format!("{path}{separator}min_position={token}")).await?;
        if status == StatusCode::OK {
            return Ok(body);
        }
        ensure!(
            status == StatusCode::SERVICE_UNAVAILABLE && Instant::now() < deadline,
            "{path} at {token}: {status} {body}"
        );
    }
}

/// The funnel once the projections have applied every event up to `token`.
async fn funnel_at(api: &Api, token: &str) -> anyhow::Result<Value> {
    read_at(api, "/v1/analytics/order-funnel", token).await
}

/// The events of every service's store, counted through `GET /v1/log?service=` page by page,
/// and the orders' and the payments' last positions.
async fn events_in_the_stores(api: &Api) -> anyhow::Result<(u64, u64, u64)> {
    let (mut total, mut orders_head, mut payments_head) = (0, 0, 0);
    for service in ["customers", "inventory", "orders", "payments"] {
        let mut from = 1;
        loop {
            let (status, page) = api
                .get(&format!("/v1/log?service={service}&from_position={from}&limit=1000"))
                .await?;
            ensure!(status == StatusCode::OK, "log of {service}: {status} {page}");
            let events = page["events"].as_array().cloned().unwrap_or_default();
            total += events.len() as u64;
            if let Some(last) = events.last() {
                let head = last["position"].as_u64().unwrap_or(0);
                match service {
                    "orders" => orders_head = head,
                    "payments" => payments_head = head,
                    _ => {}
                }
            }
            match page["next_from_position"].as_u64() {
                Some(next) => from = next,
                None => break,
            }
        }
    }
    Ok((total, orders_head, payments_head))
}

/// The first start: seeds, serves, and the read side shows orders through their whole life.
async fn first_run(api: &Api, server: &mut Server) -> anyhow::Result<(Value, (u64, u64, u64))> {
    api.wait_ready(server, Duration::from_secs(120)).await?;
    ensure!(server.log().contains("seeded the demo shop"), "no seeding logged");
    wait_for_the_shop(api).await?;
    let (events, orders_head, payments_head) = events_in_the_stores(api).await?;
    ensure!(events >= 5000, "{events} events seeded, asked for about {DEMO_EVENTS}");
    let (orders, payments) = (format!("orders:{orders_head}"), format!("payments:{payments_head}"));
    // The orders' and payments' whole seeded logs, projected (progress only grows: the second
    // read has both).
    read_at(api, "/v1/analytics/order-funnel", &payments).await?;
    let funnel = funnel_at(api, &orders).await?;
    // Every order went through its saga: none is left pending, and the cancellations add up
    // per reason code.
    ensure!(funnel["pending"] == 0, "no order left pending: {funnel}");
    let reasons = funnel["cancellation_reasons"].as_object().cloned().unwrap_or_default();
    let by_reason: u64 = reasons.values().filter_map(Value::as_u64).sum();
    ensure!(
        funnel["cancelled"].as_u64() == Some(by_reason) && reasons.get("requested").and_then(Value::as_u64) > Some(0),
        "cancellations per reason code: {funnel}"
    );
    // Every row of the dashboard shows its saga.
    read_at(api, "/v1/dashboard/orders?limit=5", &payments).await?;
    let page = read_at(api, "/v1/dashboard/orders?limit=5", &orders).await?;
    let rows = page["rows"].as_array().cloned().unwrap_or_default();
    ensure!(
        !rows.is_empty() && rows.iter().all(|row| row["saga_state"].is_string()),
        "{page}"
    );
    // Paid orders are revenue.
    let everything = "/v1/analytics/revenue?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z";
    read_at(api, everything, &payments).await?;
    let revenue = read_at(api, everything, &orders).await?;
    let revenue_minor: i64 = revenue["buckets"]
        .as_array()
        .map(|buckets| buckets.iter().filter_map(|b| b["revenue_minor"].as_i64()).sum())
        .unwrap_or(0);
    ensure!(revenue_minor > 0, "no revenue: {revenue}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.log().contains("caught up with the demo shop") {
        ensure!(Instant::now() < deadline, "no catch-up logged within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((funnel, (events, orders_head, payments_head)))
}

/// The restart: nothing seeded again, the shop is the same.
async fn second_run(api: &Api, server: &mut Server, funnel: &Value, seeded: (u64, u64, u64)) -> anyhow::Result<()> {
    api.wait_ready(server, Duration::from_secs(120)).await?;
    let log = server.log();
    ensure!(
        log.contains("not seeding the demo shop again"),
        "the restart does not say it skipped seeding"
    );
    ensure!(!log.contains("seeded the demo shop"), "seeded again on restart");
    let now = events_in_the_stores(api).await?;
    ensure!(
        now == seeded,
        "the stores went from {seeded:?} to {now:?} (events, orders' and payments' heads) on restart"
    );
    let again = funnel_at(api, &format!("orders:{}", seeded.1)).await?;
    ensure!(again == *funnel, "the funnel changed: {funnel} then {again}");
    Ok(())
}

fn stop(server: &mut Server) {
    match server.terminate(Duration::from_secs(20)) {
        Ok(status) => assert!(status.success(), "exit {status} after SIGTERM\n{}", server.log()),
        Err(e) => panic!("{e:#}\n{}", server.log()),
    }
    assert!(
        server.log().contains("stopped"),
        "no clean stop logged:\n{}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_seeds_an_empty_store_once_and_the_dashboard_shows_it() {
    let root = std::env::temp_dir().join(format!("orderflow-demo-test-{}", Uuid::now_v7()));
    let data_dir = root.join("data");
    std::fs::create_dir_all(&root).expect("create the test directory");
    let port = free_port();
    let api = Api::new(port);

    let mut first = Server::start(
        &["serve", "--demo", "--demo-events", DEMO_EVENTS],
        &data_dir,
        port,
        root.join("first.log"),
    );
    let (funnel, events) = match first_run(&api, &mut first).await {
        Ok(seen) => seen,
        Err(e) => panic!("first run: {e:#}\n--- orderflow's log ---\n{}", first.log()),
    };
    stop(&mut first);

    // `orderflow demo` is `serve --demo`.
    let mut second = Server::start(
        &["demo", "--demo-events", DEMO_EVENTS],
        &data_dir,
        port,
        root.join("second.log"),
    );
    if let Err(e) = second_run(&api, &mut second, &funnel, events).await {
        panic!("second run: {e:#}\n--- orderflow's log ---\n{}", second.log());
    }
    stop(&mut second);
    drop((first, second));
    let _ = std::fs::remove_dir_all(&root);
}
