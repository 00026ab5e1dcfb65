//! End to end, with the real `orderflow serve` binary (the embedded mode, no server needed):
//! commands and reads on one port, read-your-writes through the in-process projections, a
//! rebuild through the admin endpoint, a clean stop on SIGTERM, and a restart on the same data
//! directory that has lost nothing and goes on.

use std::time::{Duration, Instant};

use anyhow::ensure;
use hyper::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

mod support;

use support::{Api, Server, free_port};

struct Ids {
    customer: Uuid,
    product: Uuid,
    order: Uuid,
}

async fn first_run(api: &Api, server: &mut Server, ids: &Ids) -> anyhow::Result<String> {
    api.wait_ready(server, Duration::from_secs(30)).await?;
    let log = server.log();
    ensure!(log.contains(api.base()), "the banner names the URL: {log}");
    ensure!(log.contains("curl"), "the banner shows examples: {log}");

    // A command on each service answers its token; a read waits for it.
    let registered = api
        .command_token(
            "/v1/customers",
            json!({"customer_id": ids.customer, "name": "Ada Lovelace", "email": "ada@example.com"}),
            StatusCode::CREATED,
        )
        .await?;
    ensure!(registered == "customers:1", "{registered}");
    let added = api
        .command_token(
            "/v1/products",
            json!({"product_id": ids.product, "sku": "BOOK-1", "name": "Notes on the Engine",
                   "price_minor": 1250, "currency": "EUR", "stock": 10}),
            StatusCode::CREATED,
        )
        .await?;
    ensure!(added == "inventory:1", "{added}");
    let (status, customer) = api
        .get(&format!(
            "/v1/dashboard/customers/{}?min_position={registered}",
            ids.customer
        ))
        .await?;
    ensure!(
        status == StatusCode::OK && customer["name"] == "Ada Lovelace",
        "{status} {customer}"
    );
    let placed = api
        .command_token(
            "/v1/orders",
            json!({"order_id": ids.order, "customer_id": ids.customer,
                   "lines": [{"product_id": ids.product, "quantity": 2}]}),
            StatusCode::CREATED,
        )
        .await?;

    ensure!(placed == "orders:1", "{placed}");
    let paid = api
        .command_token(
            "/v1/payments",
            json!({"order_id": ids.order, "amount_minor": 2500, "currency": "EUR"}),
            StatusCode::CREATED,
        )
        .await?;
    ensure!(paid == "payments:1", "{paid}");
    let (status, error) = api
        .get(&format!("/v1/dashboard/orders/{}?min_position=1", ids.order))
        .await?;
    ensure!(
        status == StatusCode::BAD_REQUEST
            && error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("orders:12")),
        "a bare number: {status} {error}"
    );

    // Read-your-writes through the in-process projections, on the same port.
    let (status, row) = api
        .get(&format!("/v1/dashboard/orders/{}?min_position={placed}", ids.order))
        .await?;
    ensure!(status == StatusCode::OK, "dashboard: {status} {row}");
    ensure!(row["order_id"] == json!(ids.order), "{row}");
    ensure!(row["status"] == "pending", "{row}");
    ensure!(row["customer_name"] == "Ada Lovelace", "{row}");
    ensure!(row["total_minor"] == 2500 && row["currency"] == "EUR", "{row}");
    ensure!(row["item_count"] == 2, "{row}");

    let (status, funnel) = api
        .get(&format!("/v1/analytics/order-funnel?min_position={placed}"))
        .await?;
    ensure!(status == StatusCode::OK, "funnel: {status} {funnel}");
    ensure!(funnel["placed"] == 1 && funnel["confirmed"] == 0, "{funnel}");

    // The write side's own reads are there too.
    let (status, state) = api.get(&format!("/v1/orders/{}/state", ids.order)).await?;
    ensure!(status == StatusCode::OK, "order state: {status} {state}");

    // One recorder for the process: /metrics counts the requests of both routers.
    let (status, metrics) = api.get("/metrics").await?;
    let metrics = metrics.as_str().unwrap_or_default();
    ensure!(status == StatusCode::OK, "metrics: {status}");
    ensure!(
        metrics.contains(r#"route="/v1/orders""#) && metrics.contains(r#"route="/v1/dashboard/orders/{id}""#),
        "/metrics lacks the command or the query routes:\n{metrics}"
    );
    let (status, _) = api.get("/openapi.json").await?;
    ensure!(status == StatusCode::OK, "openapi: {status}");
    let (status, error) = api.get("/v1/no-such-thing").await?;
    ensure!(
        status == StatusCode::NOT_FOUND && error["error"]["code"] == "not_found",
        "{status} {error}"
    );

    // A rebuild through the admin endpoint switches the dashboard to version 2, same rows.
    let (status, answer) = api
        .call(Method::POST, "/v1/projections/order_dashboard/rebuild", None)
        .await?;
    ensure!(status == StatusCode::ACCEPTED, "rebuild: {status} {answer}");
    ensure!(answer["version"] == 2, "{answer}");
    let (status, error) = api.call(Method::POST, "/v1/projections/nope/rebuild", None).await?;
    ensure!(status == StatusCode::NOT_FOUND, "unknown projection: {status} {error}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, status) = api.get("/v1/projections").await?;
        let live = status["projections"]
            .as_array()
            .and_then(|all| all.iter().find(|p| p["name"] == "order_dashboard"))
            .map(|p| p["live_version"].clone());
        if live == Some(json!(2)) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the rebuild did not switch within 20 s: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, row) = api
        .get(&format!("/v1/dashboard/orders/{}?min_position={placed}", ids.order))
        .await?;
    ensure!(
        status == StatusCode::OK && row["status"] == "pending",
        "after the rebuild: {status} {row}"
    );
    Ok(placed)
}

async fn second_run(api: &Api, server: &mut Server, ids: &Ids, placed: &str) -> anyhow::Result<()> {
    api.wait_ready(server, Duration::from_secs(30)).await?;
    // Nothing lost.
    let (status, row) = api
        .get(&format!("/v1/dashboard/orders/{}?min_position={placed}", ids.order))
        .await?;
    ensure!(status == StatusCode::OK, "after the restart: {status} {row}");
    ensure!(row["status"] == "pending" && row["total_minor"] == 2500, "{row}");

    // And it goes on: a new command is appended after the old ones and reaches both projections.
    let confirmed = api
        .command_token(&format!("/v1/orders/{}/confirm", ids.order), json!({}), StatusCode::OK)
        .await?;
    ensure!(confirmed == "orders:2", "{confirmed} after {placed}");
    let (status, row) = api
        .get(&format!("/v1/dashboard/orders/{}?min_position={confirmed}", ids.order))
        .await?;
    ensure!(
        status == StatusCode::OK && row["status"] == "confirmed",
        "{status} {row}"
    );
    let (status, funnel) = api
        .get(&format!("/v1/analytics/order-funnel?min_position={confirmed}"))
        .await?;
    ensure!(status == StatusCode::OK, "funnel: {status} {funnel}");
    ensure!(funnel["placed"] == 1 && funnel["confirmed"] == 1, "{funnel}");
    let (status, customer) = api
        .get(&format!(
            "/v1/dashboard/customers/{}?min_position={confirmed}",
            ids.customer
        ))
        .await?;
    ensure!(status == StatusCode::OK, "customer: {status} {customer}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_the_platform_in_one_process_and_survives_a_restart() {
    let root = std::env::temp_dir().join(format!("orderflow-serve-test-{}", Uuid::now_v7()));
    let data_dir = root.join("data");
    std::fs::create_dir_all(&root).expect("create the test directory");
    let ids = Ids {
        customer: Uuid::now_v7(),
        product: Uuid::now_v7(),
        order: Uuid::now_v7(),
    };
    let port = free_port();
    let api = Api::new(port);

    let mut first = Server::start(&["serve"], &data_dir, port, root.join("first.log"));
    let placed = match first_run(&api, &mut first, &ids).await {
        Ok(placed) => placed,
        Err(e) => panic!("first run: {e:#}\n--- orderflow serve's log ---\n{}", first.log()),
    };
    match first.terminate(Duration::from_secs(15)) {
        Ok(status) => assert!(status.success(), "exit {status} after SIGTERM\n{}", first.log()),
        Err(e) => panic!("{e:#}\n{}", first.log()),
    }
    assert!(
        first.log().contains("stopped"),
        "no clean stop logged:\n{}",
        first.log()
    );
    for file in [
        "customers.db",
        "inventory.db",
        "orders.db",
        "payments.db",
        "orders-replica.db",
        "read.db",
    ] {
        assert!(data_dir.join(file).is_file(), "{file}: a database per service");
    }
    assert!(!data_dir.join("events.db").exists(), "no store shared by the services");

    let mut second = Server::start(&["serve"], &data_dir, port, root.join("second.log"));
    if let Err(e) = second_run(&api, &mut second, &ids, &placed).await {
        panic!("second run: {e:#}\n--- orderflow serve's log ---\n{}", second.log());
    }
    match second.terminate(Duration::from_secs(15)) {
        Ok(status) => assert!(status.success(), "exit {status} after SIGTERM\n{}", second.log()),
        Err(e) => panic!("{e:#}\n{}", second.log()),
    }
    drop((first, second));
    let _ = std::fs::remove_dir_all(&root);
}
