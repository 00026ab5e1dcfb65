//! Crash drill of the embedded mode: `orderflow serve` SIGKILLed repeatedly while clients place
//! orders, and started again on the same data directory each time. Clients retry a command whose
//! answer they did not get with the same `Idempotency-Key`, as the API asks. Then: no
//! acknowledged order is lost, the orders log holds exactly one placement per order and none the
//! clients did not send, and the dashboard equals the orders service's own fold of each order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use uuid::Uuid;

mod support;

use support::{Api, Server, free_port};

const CLIENTS: usize = 4;
const KILLS: usize = 3;
/// Traffic before the first kill, and between a restart and the next kill.
const BETWEEN_KILLS: Duration = Duration::from_millis(1500);

/// Orders acknowledged (201), by id, with the client's count at that moment.
#[derive(Default)]
struct Acknowledged {
    orders: Mutex<BTreeSet<Uuid>>,
    count: AtomicU64,
}

/// Places one order until it is answered: a request that fails (the server is down, or was
/// killed with it in flight) is sent again with the same body and `Idempotency-Key`.
async fn place_until_answered(
    api: &Api,
    order: Value,
    key: &str,
    stop: &AtomicBool,
) -> anyhow::Result<Option<StatusCode>> {
    loop {
        let sent = api
            .send_with(
                Method::POST,
                "/v1/orders",
                Some(order.clone()),
                &[("idempotency-key", key)],
            )
            .await;
        match sent {
            Ok((status, _, _)) if status.is_server_error() => {}
            Ok((status, _, body)) => {
                ensure!(status == StatusCode::CREATED, "an order was answered {status} {body}");
                return Ok(Some(status));
            }
            Err(_) => {}
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        // Down or restarting: the poll interval of a wait that ends with the run.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_killed_under_load_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let root = support::scratch("serve_kill");
    let data = root.join("data");
    let port = free_port();
    let api = Arc::new(Api::new(port));
    let start = |n: usize| Server::start(&["serve"], &data, port, root.join(format!("serve-{n}.log")));
    let mut server = start(0);
    api.wait_ready(&mut server, Duration::from_secs(60)).await?;

    let customer = Uuid::now_v7();
    api.command_token(
        "/v1/customers",
        json!({"customer_id": customer, "name": "Ada", "email": "ada@example.com"}),
        StatusCode::CREATED,
    )
    .await?;
    let mut products = Vec::new();
    for i in 0..5 {
        let product = Uuid::now_v7();
        api.command_token(
            "/v1/products",
            json!({"product_id": product, "sku": format!("KILL-{i}"), "name": "Drill", "price_minor": 100 + i,
                   "currency": "EUR", "stock": 1_000_000}),
            StatusCode::CREATED,
        )
        .await?;
        products.push(product);
    }

    let acknowledged = Arc::new(Acknowledged::default());
    let sent = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = JoinSet::new();
    for client in 0..CLIENTS {
        let (api, acknowledged, sent, stop, products) = (
            api.clone(),
            acknowledged.clone(),
            sent.clone(),
            stop.clone(),
            products.clone(),
        );
        clients.spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let order = Uuid::now_v7();
                let product = products[(client + n) % products.len()];
                n += 1;
                sent.lock().unwrap_or_else(|e| e.into_inner()).insert(order);
                let body = json!({"order_id": order, "customer_id": customer,
                                  "lines": [{"product_id": product, "quantity": 1}]});
                if place_until_answered(&api, body, &order.to_string(), &stop)
                    .await?
                    .is_some()
                {
                    acknowledged
                        .orders
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(order);
                    acknowledged.count.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        });
    }

    // The kills, each once orders were acknowledged in the moment before it: they land while
    // events flow, not in a lull.
    let mut kills = Vec::new();
    for kill in 1..=KILLS {
        let restarted = Instant::now();
        let before = acknowledged.count.load(Ordering::Relaxed);
        tokio::time::sleep(BETWEEN_KILLS).await;
        let at_kill = acknowledged.count.load(Ordering::Relaxed);
        ensure!(
            at_kill > before,
            "no order was acknowledged in the {BETWEEN_KILLS:?} before kill {kill}: the kill would land in a lull"
        );
        server.kill9()?;
        let down = Instant::now();
        server = start(kill);
        api.wait_ready(&mut server, Duration::from_secs(60))
            .await
            .with_context(|| format!("restart after kill {kill}:\n{}", server.log()))?;
        kills.push((at_kill - before, restarted.elapsed(), down.elapsed()));
    }
    tokio::time::sleep(BETWEEN_KILLS).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(client) = clients.join_next().await {
        client??;
    }
    let acknowledged: BTreeSet<Uuid> = acknowledged.orders.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let sent: BTreeSet<Uuid> = sent.lock().unwrap_or_else(|e| e.into_inner()).clone();
    eprintln!(
        "{} orders acknowledged across {KILLS} kills; per kill (acknowledged in the window before it, \
         window, down until ready): {kills:?}",
        acknowledged.len()
    );

    // The orders log: one placement per order, none the clients did not send, every
    // acknowledged one there.
    let mut placements: BTreeMap<Uuid, usize> = BTreeMap::new();
    let mut head = 0;
    let mut from = 1;
    loop {
        let (status, page) = api
            .get(&format!("/v1/log?service=orders&from_position={from}&limit=1000"))
            .await?;
        ensure!(status == StatusCode::OK, "{status} {page}");
        for event in page["events"].as_array().context("events")? {
            head = event["position"].as_u64().context("position")?;
            if event["event_type"] == "order.placed" {
                let stream = event["stream_id"].as_str().context("stream_id")?;
                let id: Uuid = stream.trim_start_matches("order-").parse()?;
                *placements.entry(id).or_default() += 1;
            }
        }
        match page["next_from_position"].as_u64() {
            Some(next) => from = next,
            None => break,
        }
    }
    let twice: Vec<_> = placements.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(twice.is_empty(), "orders placed more than once: {twice:?}");
    let lost: Vec<_> = acknowledged.iter().filter(|id| !placements.contains_key(id)).collect();
    ensure!(
        lost.is_empty(),
        "{} acknowledged orders are not in the log: {lost:?}",
        lost.len()
    );
    let unknown: Vec<_> = placements.keys().filter(|id| !sent.contains(id)).collect();
    ensure!(unknown.is_empty(), "orders in the log that no client sent: {unknown:?}");

    // The dashboard equals the orders service's fold of each order, once their sagas settle.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match compare_dashboard(&api, &placements, head).await {
            Ok(()) => break,
            // Sagas still confirming or cancelling: the poll interval of a wait with a deadline.
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => return Err(e.context("the dashboard never equalled the orders' fold")),
        }
    }
    let status = server.terminate(Duration::from_secs(30))?;
    ensure!(status.success(), "serve ended with {status}:\n{}", server.log());
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// Every placed order's dashboard row, read after the orders log's `head`, has the status the
/// orders service folds for it; the dashboard has no other order of this customer.
async fn compare_dashboard(api: &Api, placements: &BTreeMap<Uuid, usize>, head: u64) -> anyhow::Result<()> {
    let mut rows: BTreeMap<Uuid, String> = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let page_of = cursor.as_ref().map_or_else(String::new, |c| format!("&cursor={c}"));
        let (status, page) = api
            .get(&format!(
                "/v1/dashboard/orders?limit=500&min_position=orders:{head}{page_of}"
            ))
            .await?;
        ensure!(status == StatusCode::OK, "{status} {page}");
        for row in page["rows"].as_array().context("rows")? {
            let id: Uuid = row["order_id"].as_str().context("order_id")?.parse()?;
            rows.insert(id, row["status"].as_str().unwrap_or_default().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let ids: BTreeSet<&Uuid> = rows.keys().collect();
    let placed: BTreeSet<&Uuid> = placements.keys().collect();
    ensure!(
        ids == placed,
        "dashboard rows {} vs orders placed {}",
        ids.len(),
        placed.len()
    );
    for (id, status) in &rows {
        let (code, state) = api.get(&format!("/v1/orders/{id}/state")).await?;
        ensure!(code == StatusCode::OK, "{id}: {code} {state}");
        ensure!(
            state["status"] == *status,
            "order {id}: dashboard {status}, orders service {}",
            state["status"]
        );
    }
    Ok(())
}
