//! End to end, with the real `orderflow serve` binary (the embedded mode, no server needed):
//! commands and reads on one port, the place-order saga driven in the process (an order placed
//! pending, confirmed by its saga; one it cannot reserve cancelled `out_of_stock`),
//! read-your-writes through the in-process projections, a rebuild through the admin endpoint, a
//! clean stop on SIGTERM, and a restart on the same data directory that has lost nothing, saga
//! state included, and goes on (shipping, after which the restarted saga captures the payment).

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

mod support;

use support::{Api, Server, free_port};

struct Ids {
    customer: Uuid,
    product: Uuid,
    order: Uuid,
    /// An order for more than the stock: accepted, then cancelled by its saga.
    too_big: Uuid,
}

/// What the first run leaves for the second to find.
struct FirstRun {
    /// The placement's token (`orders:2`).
    placed: String,
    /// The end of the commit that confirmed the order (its saga's `saga.confirmed`).
    confirmed: String,
    /// The saga of the order as the first run left it (`GET /v1/sagas/{id}`).
    saga: Value,
}

/// How long the saga and the projections get to do what a test waits for.
const WITHIN: Duration = Duration::from_secs(30);

/// Asks `check` every 50 ms until it answers `Ok(value)`, at most [`WITHIN`]; `Err(seen)` is
/// what it saw meanwhile, for the failure's message. An error of `check` fails at once.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Result<T, String>>>,
{
    let deadline = Instant::now() + WITHIN;
    loop {
        match check().await? {
            Ok(value) => return Ok(value),
            Err(seen) => ensure!(
                Instant::now() < deadline,
                "{what}: not within {WITHIN:?}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A GET that must answer 200.
async fn get_ok(api: &Api, path: &str) -> anyhow::Result<Value> {
    let (status, body) = api.get(path).await?;
    ensure!(status == StatusCode::OK, "GET {path}: {status} {body}");
    Ok(body)
}

/// The order's state on the write side once its status is `status`; it may only be `pending`
/// before.
async fn order_reaches(api: &Api, order: Uuid, status: &'static str) -> anyhow::Result<Value> {
    let path = format!("/v1/orders/{order}/state");
    let path = path.as_str();
    eventually(&format!("order {order} {status}"), || async move {
        let state = get_ok(api, path).await?;
        if state["status"] == status {
            Ok(Ok(state))
        } else if state["status"] == "pending" {
            Ok(Err(state.to_string()))
        } else {
            bail!("order {order} is not {status}: {state}")
        }
    })
    .await
}

/// The saga of `order` once `done` holds of it (`GET /v1/sagas/{id}`).
async fn saga_reaches(api: &Api, order: Uuid, what: &str, done: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let path = format!("/v1/sagas/{order}");
    let (path, done) = (path.as_str(), &done);
    eventually(&format!("the saga of {order}: {what}"), || async move {
        let saga = get_ok(api, path).await?;
        Ok(if done(&saga) { Ok(saga) } else { Err(saga.to_string()) })
    })
    .await
}

/// The position of the last event of stream `stream_id` (`GET /v1/streams/{id}/events`).
async fn last_position(api: &Api, stream_id: &str) -> anyhow::Result<u64> {
    let page = get_ok(api, &format!("/v1/streams/{stream_id}/events")).await?;
    page["events"]
        .as_array()
        .and_then(|events| events.last())
        .and_then(|last| last["position"].as_u64())
        .with_context(|| format!("{stream_id} has no events: {page}"))
}

/// A read of the read side with `min_position`: 200 once the projection has applied it (a read
/// waits a little, then answers 503 `not_caught_up`: ask again).
async fn read_at(api: &Api, path: &str, token: &str) -> anyhow::Result<Value> {
    let separator = if path.contains('?') { '&' } else { '?' };
    let path = format!("{path}{separator}min_position={token}");
    let path = path.as_str();
    eventually(&format!("GET {path}"), || async move {
        match api.get(path).await? {
            (StatusCode::OK, body) => Ok(Ok(body)),
            (StatusCode::SERVICE_UNAVAILABLE, body) if body["error"]["code"] == "not_caught_up" => {
                Ok(Err(body.to_string()))
            }
            (status, body) => bail!("GET {path}: {status} {body}"),
        }
    })
    .await
}

/// The dashboard's row of `order` once both projections' inputs are applied: the payments'
/// `payment` token, then the orders' `order` token (progress only grows, so the second read
/// has both).
async fn dashboard_row(api: &Api, order: Uuid, payment: &str, orders: &str) -> anyhow::Result<Value> {
    let path = format!("/v1/dashboard/orders/{order}");
    read_at(api, &path, payment).await?;
    read_at(api, &path, orders).await
}

/// The revenue of every order placed in the last 30 days, once analytics applied `payment` and
/// `orders`.
async fn revenue(api: &Api, payment: &str, orders: &str) -> anyhow::Result<(i64, u64)> {
    read_at(api, "/v1/analytics/revenue", payment).await?;
    let answer = read_at(api, "/v1/analytics/revenue", orders).await?;
    let buckets = answer["buckets"].as_array().cloned().unwrap_or_default();
    Ok((
        buckets.iter().filter_map(|b| b["revenue_minor"].as_i64()).sum(),
        buckets.iter().filter_map(|b| b["orders"].as_u64()).sum(),
    ))
}

/// A client may not confirm: the saga does.
async fn confirm_is_refused(api: &Api, order: Uuid) -> anyhow::Result<()> {
    let (status, error) = api
        .call(Method::POST, &format!("/v1/orders/{order}/confirm"), Some(json!({})))
        .await?;
    ensure!(
        status == StatusCode::CONFLICT && error["error"]["code"] == "confirmed_by_saga",
        "a client's confirm: {status} {error}"
    );
    Ok(())
}

async fn first_run(api: &Api, server: &mut Server, ids: &Ids) -> anyhow::Result<FirstRun> {
    api.wait_ready(server, WITHIN).await?;
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

    // Placing answers at once: the order pending (its first event) and its saga started, in
    // one commit whose last position is the token.
    let (status, answer) = api
        .call(
            Method::POST,
            "/v1/orders",
            Some(json!({"order_id": ids.order, "customer_id": ids.customer,
                        "lines": [{"product_id": ids.product, "quantity": 2}]})),
        )
        .await?;
    ensure!(status == StatusCode::CREATED, "place: {status} {answer}");
    ensure!(
        answer["version"] == 1 && answer["stream_id"] == format!("order-{}", ids.order),
        "{answer}"
    );
    let placed = answer["token"].as_str().unwrap_or_default().to_owned();
    ensure!(placed == "orders:2", "{answer}");
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

    // The saga, driven in the process, reserves the stock, authorizes the payment at the
    // simulated provider and confirms the order; a client's confirm is refused.
    let state = order_reaches(api, ids.order, "confirmed").await?;
    ensure!(state["version"] == 2 && state["total_minor"] == 2500, "{state}");
    confirm_is_refused(api, ids.order).await?;
    let (status, pending) = api
        .get(&format!("/v1/orders/{}/state?at_position=2", ids.order))
        .await?;
    ensure!(
        status == StatusCode::OK && pending["status"] == "pending" && pending["version"] == 1,
        "as placed: {status} {pending}"
    );
    let saga = saga_reaches(api, ids.order, "awaiting shipment", |s| {
        s["phase"] == "awaiting_shipment"
    })
    .await?;
    ensure!(
        saga["confirmed"] == true
            && saga["authorized"] == true
            && saga["lines"][0]["reserved"] == true
            && saga["captured_minor"] == 0
            && saga["reason_code"].is_null(),
        "{saga}"
    );
    let product = get_ok(api, &format!("/v1/products/{}", ids.product)).await?;
    ensure!(product["available"] == 8, "2 of 10 reserved: {product}");
    // The payment is the first event of the payments' log, the saga's authorization of the
    // order's total.
    let payment_id = saga["payment_id"].as_str().unwrap_or_default().to_owned();
    ensure!(
        payment_id == write_side::orders::saga::payment_id(ids.order).to_string(),
        "{saga}"
    );
    let payment = get_ok(api, &format!("/v1/payments/{payment_id}")).await?;
    ensure!(
        payment["status"] == "authorized"
            && payment["authorized_minor"] == 2500
            && payment["order_id"] == json!(ids.order)
            && payment["position"] == 1,
        "{payment}"
    );
    let paid = "payments:1";
    let confirmed_at = state["position"]
        .as_u64()
        .context("the order's position")?
        .max(last_position(api, &format!("saga-{}", ids.order)).await?);
    let confirmed = format!("orders:{confirmed_at}");

    // An order for more than the stock is accepted too (no 409 at placement); its saga finds
    // 8 left and cancels it `out_of_stock`, reserving nothing.
    let too_big = api
        .command_token(
            "/v1/orders",
            json!({"order_id": ids.too_big, "customer_id": ids.customer,
                   "lines": [{"product_id": ids.product, "quantity": 30}]}),
            StatusCode::CREATED,
        )
        .await?;
    ensure!(too_big.starts_with("orders:"), "{too_big}");
    let cancelled = order_reaches(api, ids.too_big, "cancelled").await?;
    ensure!(cancelled["cancellation_reason_code"] == "out_of_stock", "{cancelled}");
    let saga_too_big = saga_reaches(api, ids.too_big, "completed", |s| s["phase"] == "completed").await?;
    ensure!(
        saga_too_big["reason_code"] == "out_of_stock" && saga_too_big["authorized"] == false,
        "{saga_too_big}"
    );
    let product = get_ok(api, &format!("/v1/products/{}", ids.product)).await?;
    ensure!(product["available"] == 8, "nothing reserved for it: {product}");
    let ended = format!("orders:{}", last_position(api, &format!("saga-{}", ids.too_big)).await?);

    // Read-your-writes through the in-process projections, on the same port.
    let row = dashboard_row(api, ids.order, paid, &confirmed).await?;
    ensure!(row["order_id"] == json!(ids.order), "{row}");
    ensure!(row["status"] == "confirmed", "{row}");
    ensure!(row["saga_state"] == "awaiting_shipment", "{row}");
    ensure!(row["reason_code"].is_null(), "{row}");
    ensure!(row["customer_name"] == "Ada Lovelace", "{row}");
    ensure!(row["total_minor"] == 2500 && row["currency"] == "EUR", "{row}");
    ensure!(row["item_count"] == 2, "{row}");
    ensure!(
        row["payment_status"] == "authorized" && row["authorized_minor"] == 2500,
        "{row}"
    );
    // As of the placement, the dashboard shows the order pending, its saga reserving.
    let placed_at = pending["recorded_at"].as_str().context("recorded_at")?;
    let as_placed = get_ok(
        api,
        &format!(
            "/v1/dashboard/orders/{}?as_of={}",
            ids.order,
            placed_at.replace('+', "%2B")
        ),
    )
    .await?;
    ensure!(
        as_placed["status"] == "pending" && as_placed["saga_state"] == "reserving",
        "as placed: {as_placed}"
    );
    let row = read_at(api, &format!("/v1/dashboard/orders/{}", ids.too_big), &ended).await?;
    ensure!(
        row["status"] == "cancelled"
            && row["reason_code"] == "out_of_stock"
            && row["saga_state"] == "completed"
            && row["payment_status"] == "none",
        "{row}"
    );
    let page = read_at(api, "/v1/dashboard/orders?reason_code=out_of_stock", &ended).await?;
    let listed: Vec<&Value> = page["rows"]
        .as_array()
        .map(|rows| rows.iter().map(|r| &r["order_id"]).collect())
        .unwrap_or_default();
    ensure!(listed == [&json!(ids.too_big)], "out of stock: {page}");

    // Analytics: the confirmed, authorized order is revenue; the cancelled one is not.
    read_at(api, "/v1/analytics/order-funnel", paid).await?;
    let funnel = read_at(api, "/v1/analytics/order-funnel", &ended).await?;
    ensure!(
        funnel["placed"] == 2
            && funnel["pending"] == 0
            && funnel["confirmed"] == 1
            && funnel["cancelled"] == 1
            && funnel["cancellation_reasons"]["out_of_stock"] == 1,
        "{funnel}"
    );
    let (revenue_minor, revenue_orders) = revenue(api, paid, &ended).await?;
    ensure!(
        (revenue_minor, revenue_orders) == (2500, 1),
        "revenue: {revenue_minor} of {revenue_orders} orders"
    );

    // One recorder for the process: /metrics counts the requests of both routers.
    let (status, metrics) = api.get("/metrics").await?;
    let metrics = metrics.as_str().unwrap_or_default();
    ensure!(status == StatusCode::OK, "metrics: {status}");
    ensure!(
        metrics.contains(r#"route="/v1/orders""#) && metrics.contains(r#"route="/v1/dashboard/orders/{id}""#),
        "/metrics lacks the command or the query routes:\n{metrics}"
    );
    // One document for the one port: commands, queries and rebuilds; and no token, since this
    // mode checks none.
    let (status, document) = api.get("/openapi.json").await?;
    ensure!(status == StatusCode::OK, "openapi: {status}");
    for (path, method) in [
        ("/v1/orders", "post"),
        ("/v1/customers/{id}/change-email", "post"),
        ("/v1/dashboard/orders", "get"),
        ("/v1/analytics/revenue", "get"),
        ("/v1/projections", "get"),
        ("/v1/projections/{name}/rebuild", "post"),
    ] {
        let operation = &document["paths"][path][method];
        ensure!(operation.is_object(), "the document lacks {method} {path}");
        ensure!(operation.get("security").is_none(), "{method} {path} asks for a token");
    }
    ensure!(
        document["components"]["securitySchemes"]
            .as_object()
            .is_none_or(|s| s.is_empty()),
        "the embedded document declares a security scheme it does not enforce"
    );
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
    eventually("the rebuild switches", || async {
        let status = get_ok(api, "/v1/projections").await?;
        let live = status["projections"]
            .as_array()
            .and_then(|all| all.iter().find(|p| p["name"] == "order_dashboard"))
            .map(|p| p["live_version"].clone());
        Ok(if live == Some(json!(2)) {
            Ok(())
        } else {
            Err(status.to_string())
        })
    })
    .await?;
    let rebuilt = dashboard_row(api, ids.order, paid, &confirmed).await?;
    ensure!(
        rebuilt["status"] == "confirmed"
            && rebuilt["saga_state"] == "awaiting_shipment"
            && rebuilt["payment_status"] == "authorized",
        "after the rebuild: {rebuilt}"
    );
    Ok(FirstRun {
        placed,
        confirmed,
        saga,
    })
}

async fn second_run(api: &Api, server: &mut Server, ids: &Ids, first: &FirstRun) -> anyhow::Result<()> {
    api.wait_ready(server, WITHIN).await?;
    // Nothing lost: the order, its saga waiting for the shipment, its payment.
    let row = dashboard_row(api, ids.order, "payments:1", &first.confirmed).await?;
    ensure!(
        row["status"] == "confirmed" && row["total_minor"] == 2500 && row["saga_state"] == "awaiting_shipment",
        "after the restart: {row}"
    );
    let (status, row) = api
        .get(&format!(
            "/v1/dashboard/orders/{}?min_position={}",
            ids.order, first.placed
        ))
        .await?;
    ensure!(status == StatusCode::OK, "after the restart: {status} {row}");
    let saga = get_ok(api, &format!("/v1/sagas/{}", ids.order)).await?;
    ensure!(
        saga == first.saga,
        "the saga was {} before the restart, now {saga}",
        first.saga
    );
    confirm_is_refused(api, ids.order).await?;

    // And it goes on: shipping is appended after the old events, and the restarted process's
    // saga driver captures the payment and completes the saga.
    let shipped = api
        .command_token(
            &format!("/v1/orders/{}/ship", ids.order),
            json!({"carrier": "DHL", "tracking": "JD0001"}),
            StatusCode::OK,
        )
        .await?;
    let shipped_at: u64 = shipped
        .strip_prefix("orders:")
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("not an orders token: {shipped}"))?;
    let confirmed_at: u64 = first.confirmed["orders:".len()..].parse()?;
    ensure!(shipped_at > confirmed_at, "{shipped} after {}", first.confirmed);
    let saga = saga_reaches(api, ids.order, "captured and completed", |s| {
        s["phase"] == "completed" && s["captured_minor"] == 2500
    })
    .await?;
    ensure!(saga["outcome"] == "captured", "{saga}");
    let payment = get_ok(
        api,
        &format!("/v1/payments/{}", saga["payment_id"].as_str().unwrap_or_default()),
    )
    .await?;
    ensure!(
        payment["status"] == "captured" && payment["captured_minor"] == 2500,
        "{payment}"
    );
    let captured = format!("payments:{}", payment["position"]);
    let completed = format!("orders:{}", last_position(api, &format!("saga-{}", ids.order)).await?);
    let row = dashboard_row(api, ids.order, &captured, &completed).await?;
    ensure!(
        row["status"] == "shipped"
            && row["saga_state"] == "completed"
            && row["payment_status"] == "captured"
            && row["captured_minor"] == 2500
            && row["carrier"] == "DHL",
        "{row}"
    );
    read_at(api, "/v1/analytics/order-funnel", &captured).await?;
    let funnel = read_at(api, "/v1/analytics/order-funnel", &completed).await?;
    ensure!(
        funnel["placed"] == 2 && funnel["confirmed"] == 1 && funnel["shipped"] == 1 && funnel["cancelled"] == 1,
        "{funnel}"
    );
    let (revenue_minor, revenue_orders) = revenue(api, &captured, &completed).await?;
    ensure!(
        (revenue_minor, revenue_orders) == (2500, 1),
        "a captured order stays revenue: {revenue_minor} of {revenue_orders} orders"
    );
    let (status, customer) = api
        .get(&format!(
            "/v1/dashboard/customers/{}?min_position={completed}",
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
        too_big: Uuid::now_v7(),
    };
    let port = free_port();
    let api = Api::new(port);

    let mut first = Server::start(&["serve"], &data_dir, port, root.join("first.log"));
    let left = match first_run(&api, &mut first, &ids).await {
        Ok(left) => left,
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
    if let Err(e) = second_run(&api, &mut second, &ids, &left).await {
        panic!("second run: {e:#}\n--- orderflow serve's log ---\n{}", second.log());
    }
    match second.terminate(Duration::from_secs(15)) {
        Ok(status) => assert!(status.success(), "exit {status} after SIGTERM\n{}", second.log()),
        Err(e) => panic!("{e:#}\n{}", second.log()),
    }
    drop((first, second));
    let _ = std::fs::remove_dir_all(&root);
}
