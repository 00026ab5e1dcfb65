//! `orderflow state`, `orderflow events` and `orderflow migrate`, run as the real binary.
//!
//! `state` and `events` read a SQLite store seeded here through the write side's services (an
//! order placed, then confirmed by its place-order saga, driven here as `orderflow serve` drives
//! it), and must print what the write side's HTTP API answers for the same store
//! (`GET /v1/orders/{id}/state`, `GET /v1/streams/{id}/events`, asked through its router).
//! `migrate` runs twice against SQLite, and against fresh PostgreSQL and ClickHouse databases
//! (`scripts/services up`), with a password in the URL that must never be printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, Utc};
use event_schemas::Service;
use event_store::{EventStore, SqliteEventStore, StoreOptions};
use http_body_util::BodyExt;
use projections::ReadDb;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use uuid::Uuid;
use write_side::CommandContext;
use write_side::domain::saga::Saga;
use write_side::domain::{
    CustomerCommand, Order, OrderStatus, Payment, PaymentStatus, PlaceOrder, PlaceOrderLine, Product, ProductCommand,
};
use write_side::http::{Auth, HttpConfig};
use write_side::orders::saga::payment_id;

mod support;
use support::{orderflow, scratch, stderr, stdout};

/// The JSON an `orderflow` run printed, which must have succeeded.
fn json_of(output: &Output) -> Value {
    assert!(output.status.success(), "orderflow failed: {}", stderr(output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(output)))
}

struct Shop {
    /// Holds `orderflow-data/<service>.db`, the default stores of `state` and `events` run here.
    dir: PathBuf,
    /// The orders service's store.
    store_path: PathBuf,
    /// The write side's API over the same store.
    api: axum::Router,
    customer: Uuid,
    product: Uuid,
    order: Uuid,
    /// The product's addition in the inventory's log (before the saga's reservation for the
    /// order); the placement's answer (the position of its commit's last event, the saga's
    /// start) and the order's confirmation by its saga, in the orders' log.
    added: u64,
    placed: u64,
    confirmed: u64,
    /// The order's saga (`saga-<order id>`) and its payment, as the write side folds them.
    saga: Saga,
    payment: Payment,
}

impl Shop {
    async fn get(&self, uri: &str) -> Value {
        let response = self
            .api
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "GET {uri}");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn orderflow(&self, args: &[&str]) -> Output {
        orderflow(&self.dir, args, &[])
    }
}

/// A customer, a product, and an order placed then confirmed by its saga (stock reserved at
/// inventory, payment authorized at payments), by the services of `orderflow serve` in
/// `<dir>/orderflow-data` (each service's store its own file there).
async fn shop(name: &str) -> Shop {
    let dir = scratch(name);
    let data_dir = dir.join("orderflow-data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let store_path = data_dir.join("orders.db");
    let services = embedded::open(&data_dir).await.unwrap();
    let local = services.local;
    let ctx = CommandContext::default();
    let (customer, product, order) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    local
        .handler(Service::Customers)
        .customer(
            &ctx,
            customer,
            CustomerCommand::Register {
                customer_id: customer,
                name: "Ada".into(),
                email: "ada@example.com".into(),
            },
        )
        .await
        .unwrap();
    let added = local
        .handler(Service::Inventory)
        .product(
            &ctx,
            product,
            ProductCommand::Add {
                product_id: product,
                sku: "TEA-1".into(),
                name: "Teapot".into(),
                price_minor: 2500,
                currency: "EUR".into(),
                stock: 10,
            },
        )
        .await
        .unwrap()
        .position;
    let placed = local
        .place_order(
            &ctx,
            PlaceOrder {
                order_id: order,
                customer_id: customer,
                lines: vec![PlaceOrderLine {
                    product_id: product,
                    quantity: 2,
                }],
            },
        )
        .await
        .unwrap();
    // Pending at once: the order's first event, answered with the position of the commit's
    // last event (the saga's start).
    assert_eq!(placed.version, 1);
    let placed = placed.position;
    let orders = local.handler(Service::Orders);
    let pending = orders.load::<Order>(order, None).await.unwrap();
    assert_eq!(pending.state.status, OrderStatus::Pending);
    assert_eq!(
        local
            .handler(Service::Inventory)
            .load::<Product>(product, None)
            .await
            .unwrap()
            .version,
        1,
        "nothing reserved before the saga runs"
    );

    // The saga is driven (as `orderflow serve` does; `embedded::open` does not) only once the
    // clock has passed the placement's commit time, so that "as of" that time excludes every
    // step of the saga and the confirmation.
    let placed_at = pending.recorded_at.expect("a placed order has a commit time");
    while Utc::now() <= placed_at {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let stop = CancellationToken::new();
    let driver = tokio::spawn({
        let (local, stop) = (local.clone(), stop.clone());
        async move { local.run_sagas(stop).await }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let confirmed = loop {
        let loaded = orders.load::<Order>(order, None).await.unwrap();
        match loaded.state.status {
            OrderStatus::Confirmed => break loaded.position,
            OrderStatus::Pending => {}
            other => panic!("the saga left the order {other:?}, not confirmed"),
        }
        assert!(
            Instant::now() < deadline,
            "the saga did not confirm the order within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Stopped, so that nothing changes the stores while the binary reads them.
    stop.cancel();
    driver.await.unwrap();
    let saga = orders.load::<Saga>(order, None).await.unwrap().state;
    let payment = local
        .handler(Service::Payments)
        .load::<Payment>(payment_id(order), None)
        .await
        .unwrap()
        .state;
    let api = write_side::http::router(local.http_state(HttpConfig::new(Auth::Disabled)));
    Shop {
        dir,
        store_path,
        api,
        customer,
        product,
        order,
        added,
        placed,
        confirmed,
        saga,
        payment,
    }
}

#[tokio::test]
async fn state_prints_the_write_sides_fold_now_and_as_of_a_point() {
    let shop = shop("state").await;
    let stream = format!("order-{}", shop.order);

    // Now, from the default store (`orderflow-data/events.db` where it runs).
    let now = json_of(&shop.orderflow(&["state", &stream]));
    assert_eq!(now, shop.get(&format!("/v1/orders/{}/state", shop.order)).await);
    assert_eq!(now["status"], "confirmed");
    assert_eq!(now["version"], 2);
    assert_eq!(now["position"], shop.confirmed);
    assert_eq!(now["customer"]["name"], "Ada");
    assert_eq!(now["total_minor"], 5000);

    // At the placement's position.
    let placed = shop.placed.to_string();
    let at = json_of(&shop.orderflow(&["state", &stream, "--at", &placed]));
    assert_eq!(
        at,
        shop.get(&format!("/v1/orders/{}/state?at_position={placed}", shop.order))
            .await
    );
    assert_eq!(at["status"], "pending");
    assert_eq!(at["version"], 1);

    // As of the placement's commit time, through an explicit store URL.
    let recorded_at = at["recorded_at"].as_str().unwrap().to_owned();
    let as_of_time: DateTime<Utc> = recorded_at.parse().unwrap();
    let url = format!("sqlite://{}", shop.store_path.display());
    let as_of = json_of(&orderflow(
        &scratch("cli-elsewhere"),
        &["state", &stream, "--as-of", &recorded_at, "--event-store-url", &url],
        &[],
    ));
    assert_eq!(as_of, at, "as of {as_of_time}: the same fold as at its position");

    // Aggregates without an HTTP view print their state with where the stream stands.
    let customer = json_of(&shop.orderflow(&["state", &format!("customer-{}", shop.customer)]));
    assert_eq!(customer["stream_id"], format!("customer-{}", shop.customer));
    assert_eq!(customer["version"], 1);
    assert_eq!(customer["state"]["name"], "Ada");
    assert_eq!(customer["state"]["email"], "ada@example.com");
    let product = json_of(&shop.orderflow(&["state", &format!("product-{}", shop.product)]));
    assert_eq!(
        product["version"], 2,
        "added, then stock reserved for the order by its saga"
    );
    assert_eq!(product["state"]["available"], 8);
    assert_eq!(product["state"]["reservations"][shop.order.to_string()], 2);
    let before_reservation = json_of(&shop.orderflow(&[
        "state",
        &format!("product-{}", shop.product),
        "--at",
        &shop.added.to_string(),
    ]));
    assert_eq!(before_reservation["state"]["available"], 10);

    // The order's saga, in the orders' store: confirmed, what it reserved and authorized.
    let saga = json_of(&shop.orderflow(&["state", &format!("saga-{}", shop.order)]));
    assert_eq!(saga["stream_id"], format!("saga-{}", shop.order));
    assert_eq!(saga["state"], serde_json::to_value(&shop.saga).unwrap());
    assert_eq!(saga["state"]["confirmed"], true);
    assert_eq!(saga["state"]["authorized"], true);
    assert_eq!(saga["state"]["lines"][0]["reserved"], true);
    // At the placement: only its start, in the same commit as the order.
    let started = json_of(&shop.orderflow(&["state", &format!("saga-{}", shop.order), "--at", &placed]));
    assert_eq!(started["version"], 1);
    assert_eq!(started["position"], shop.placed);
    assert_eq!(started["state"]["authorized"], false);
    assert_eq!(started["state"]["lines"][0]["reserved"], false);

    // Its payment, in the payments' store: the order's total, authorized.
    let payment_id = payment_id(shop.order);
    let payment = json_of(&shop.orderflow(&["state", &format!("payment-{payment_id}")]));
    assert_eq!(payment["state"], serde_json::to_value(&shop.payment).unwrap());
    assert_eq!(shop.payment.status, PaymentStatus::Authorized);
    assert_eq!(shop.payment.order_id, shop.order);
    assert_eq!(payment["state"]["authorized_minor"], 5000);
    assert_eq!(payment["state"]["captured_minor"], 0);
}

#[tokio::test]
async fn events_prints_what_the_stream_endpoint_answers() {
    let shop = shop("events").await;
    let stream = format!("order-{}", shop.order);

    let all = json_of(&shop.orderflow(&["events", &stream]));
    assert_eq!(all, shop.get(&format!("/v1/streams/{stream}/events")).await);
    let events = all["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event_type"], "order.placed");
    assert_eq!(events[0]["data"]["lines"][0]["quantity"], 2, "the decoded payload");
    assert_eq!(all["next_from_version"], Value::Null);

    let page = json_of(&shop.orderflow(&["events", &stream, "--from-version", "2", "--limit", "1"]));
    assert_eq!(
        page,
        shop.get(&format!("/v1/streams/{stream}/events?from_version=2&limit=1"))
            .await
    );
    assert_eq!(page["events"][0]["event_type"], "order.confirmed");
    assert_eq!(page["events"][0]["position"], shop.confirmed);
    assert_eq!(page["next_from_version"], 3);

    // The store from the variable the write side reads, run from anywhere.
    let store = shop.store_path.to_str().unwrap();
    let from_env = json_of(&orderflow(
        &scratch("cli-elsewhere"),
        &["events", &stream],
        &[("ORDERFLOW_EVENT_STORE_URL", store)],
    ));
    assert_eq!(from_env, all);

    // The order's saga: started in the placement's commit, confirmed in the confirmation's.
    let saga = json_of(&shop.orderflow(&["events", &format!("saga-{}", shop.order)]));
    let steps: Vec<&str> = saga["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "saga.started",
            "saga.stock_reserved",
            "saga.payment_authorized",
            "saga.confirmed"
        ]
    );
    assert_eq!(saga["events"][0]["position"], shop.placed);
    assert_eq!(
        saga["events"][0]["data"]["payment_id"],
        payment_id(shop.order).to_string()
    );
    let confirmed = saga["events"][3]["position"].as_u64().unwrap();
    assert_eq!(
        confirmed.abs_diff(shop.confirmed),
        1,
        "one commit with the order's confirmation"
    );
}

#[tokio::test]
async fn unknown_streams_and_bad_flags_fail_with_clear_errors() {
    let shop = shop("errors").await;
    let unknown = format!("order-{}", Uuid::now_v7());
    for command in ["state", "events"] {
        let output = shop.orderflow(&[command, &unknown]);
        assert_eq!(output.status.code(), Some(1), "{command}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(&format!(
                "no stream {unknown} in the event store (SQLite orderflow-data/orders.db)"
            )),
            "{command}: {}",
            stderr(&output)
        );
        assert!(output.stdout.is_empty());
    }

    // The order existed later, not at that point (its placement is the orders' log's first
    // commit: `OrderPlaced` at 1, `SagaStarted` at 2, the position its answer names).
    let stream = format!("order-{}", shop.order);
    assert_eq!(shop.placed, 2);
    let output = shop.orderflow(&["state", &stream, "--at", "0"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("has no event at or before position"),
        "{}",
        stderr(&output)
    );

    // Bad flags are clap's errors naming them (exit status 2).
    let output = shop.orderflow(&["state", &stream, "--as-of", "yesterday"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--as-of"), "{}", stderr(&output));
    let output = shop.orderflow(&["state", &stream, "--as-of", "2026-01-01T00:00:00Z", "--at", "3"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("cannot be used with"), "{}", stderr(&output));
    let output = shop.orderflow(&["events", "order-42"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("not a stream id"), "{}", stderr(&output));
    let output = shop.orderflow(&["events", &stream, "--limit", "0"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--limit"), "{}", stderr(&output));

    // No store where it looks: said, and not created by a read.
    let empty = scratch("cli-empty");
    let output = orderflow(&empty, &["state", &stream], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no event store at orderflow-data/orders.db"),
        "{}",
        stderr(&output)
    );
    assert!(!empty.join("orderflow-data").exists(), "reading created the store");

    // A data directory of one store for every service, from before each had its own: refused,
    // naming the command that splits it.
    let legacy = scratch("cli-legacy");
    std::fs::create_dir_all(legacy.join("orderflow-data")).unwrap();
    std::fs::copy(&shop.store_path, legacy.join("orderflow-data/events.db")).unwrap();
    let output = orderflow(&legacy, &["state", &stream], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("orderflow split-store --data-dir"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn migrate_creates_the_sqlite_tables_and_is_safe_twice() {
    let dir = scratch("cli-migrate");
    let args = [
        "migrate",
        "--event-store-url",
        "data/{service}.db",
        "--read-db-url",
        "sqlite://data/read.db",
    ];
    let first = orderflow(&dir, &args, &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let out = stdout(&first);
    for service in Service::ALL {
        assert!(
            out.contains(&format!("{service} event store (SQLite data/{service}.db): ")),
            "{out}"
        );
    }
    assert!(out.contains("migrations applied"), "{out}");
    assert!(!out.contains("already up to date"), "{out}");
    assert!(out.contains("order_dashboard: live version 1"), "{out}");
    assert!(out.contains("sales_analytics: live version 1"), "{out}");

    let second = orderflow(&dir, &args, &[]);
    assert!(second.status.success(), "{}", stderr(&second));
    let out = stdout(&second);
    assert_eq!(
        out.matches("already up to date").count(),
        5,
        "four stores and the read database: {out}"
    );

    // Every service's store opens and is empty; the projections are registered and their
    // tables exist.
    for service in Service::ALL {
        let path = dir.join(format!("data/{service}.db"));
        let pool = sqlx::SqlitePool::connect_with(SqliteEventStore::connect_options(&path))
            .await
            .unwrap();
        let store = SqliteEventStore::open(pool, StoreOptions::default()).await.unwrap();
        assert_eq!(store.head_position().await.unwrap(), 0);
    }
    let read_db = ReadDb::connect(&format!("sqlite://{}", dir.join("data/read.db").display()), 1)
        .await
        .unwrap();
    for name in projections::catalog::NAMES {
        assert_eq!(read_db.live_version(name).await.unwrap(), Some(1), "{name}");
        let tables: i64 =
            sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name LIKE $1")
                .bind(format!("{name}_v1_%"))
                .fetch_one(read_db.pool())
                .await
                .unwrap();
        assert!(tables > 0, "{name}: no table of version 1");
    }

    // One service's store alone; one URL without the service's name needs --service.
    let one = orderflow(
        &dir,
        &["migrate", "--service", "payments", "--event-store-url", "data/pay.db"],
        &[],
    );
    assert!(one.status.success(), "{}", stderr(&one));
    assert!(
        stdout(&one).contains("payments event store (SQLite data/pay.db): "),
        "{}",
        stdout(&one)
    );
    let whose = orderflow(&dir, &["migrate", "--event-store-url", "data/other.db"], &[]);
    assert_eq!(whose.status.code(), Some(1));
    assert!(stderr(&whose).contains("--service"), "{}", stderr(&whose));
    assert!(!dir.join("data/other.db").exists(), "nothing created");
    let unknown = orderflow(
        &dir,
        &["migrate", "--service", "shipping", "--event-store-url", "data/x.db"],
        &[],
    );
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));

    let nothing = orderflow(&dir, &["migrate"], &[]);
    assert_eq!(nothing.status.code(), Some(1));
    assert!(stderr(&nothing).contains("nothing to migrate"), "{}", stderr(&nothing));
}

/// `url` with a password (the one it has, or a made-up one: the test server trusts loopback).
fn with_password(url: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (userinfo, host) = rest.split_once('@').expect("the test URL names a user");
    match userinfo.split_once(':') {
        Some((_, password)) => (url.to_owned(), password.to_owned()),
        None => {
            let password = format!("hunter2-{}", Uuid::new_v4().simple());
            (format!("{scheme}://{userinfo}:{password}@{host}"), password)
        }
    }
}

#[tokio::test]
async fn migrate_postgres_and_clickhouse_without_printing_passwords() {
    let (store_db, read_db) = (
        testkit::postgres::fresh_database().await,
        testkit::postgres::fresh_database().await,
    );
    let clickhouse_db = testkit::clickhouse::fresh_database().await;
    let (store_url, secret) = with_password(&store_db.url);
    let (read_url, read_secret) = with_password(&read_db.url);
    let clickhouse_url = testkit::clickhouse::url();
    let dir = scratch("cli-migrate-pg");
    let run = || {
        orderflow(
            &dir,
            &["migrate", "--clickhouse-url", &clickhouse_url],
            &[
                ("ORDERFLOW_SERVICE", "orders"),
                ("ORDERFLOW_EVENT_STORE_URL", &store_url),
                ("ORDERFLOW_READ_DB_URL", &read_url),
                ("ORDERFLOW_CLICKHOUSE_DATABASE", &clickhouse_db),
            ],
        )
    };
    let first = run();
    let printed = format!("{}{}", stdout(&first), stderr(&first));
    assert!(first.status.success(), "{printed}");
    assert!(
        !printed.contains(&secret) && !printed.contains(&read_secret),
        "{printed}"
    );
    let out = stdout(&first);
    assert!(out.contains("orders event store (PostgreSQL "), "{out}");
    assert!(out.contains(&format!("/{}): ", store_db.name)), "{out}");
    assert!(out.contains("read database (PostgreSQL "), "{out}");
    assert!(out.contains("migrations applied"), "{out}");
    assert!(
        out.contains(&format!(
            "sales_analytics: live version 1, its tables ready in ClickHouse {clickhouse_url}"
        )),
        "{out}"
    );

    let second = run();
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(
        stdout(&second).matches("already up to date").count(),
        2,
        "{}",
        stdout(&second)
    );

    let store = store_db.pool(1).await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&store)
        .await
        .unwrap();
    assert_eq!(events, 0, "the event store's tables exist");
    let read = read_db.pool(1).await;
    let live: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, version FROM projection_versions WHERE state = 'live' ORDER BY name")
            .fetch_all(&read)
            .await
            .unwrap();
    assert_eq!(
        live,
        [("order_dashboard".to_owned(), 1), ("sales_analytics".to_owned(), 1)]
    );
    let dashboard: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'order_dashboard_v1_%'")
            .fetch_one(&read)
            .await
            .unwrap();
    assert!(dashboard > 0, "the dashboard's tables are in the read database");
    let tables = testkit::clickhouse::query(&format!("SHOW TABLES FROM {clickhouse_db}")).await;
    assert!(tables.contains("sales_analytics_v1_"), "ClickHouse: {tables}");
}
