//! Invariant 7 of docs/design.md: "state as of T" from the read side equals the fold of the stream's events
//! up to T from the write side. A property test asks both HTTP APIs about random orders at
//! random times (before, between and exactly at the events) and compares the answers.
//!
//! Embedded deployment: the services over their SQLite stores (as `orderflow serve` opens
//! them), the place-order saga driven in the process (it confirms the orders, captures the
//! shipped ones' payments, compensates the cancelled ones), the in-process subscriptions feeding
//! the dashboard, the write side's and the read side's routers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use chrono::{DateTime, SecondsFormat, Utc};
use event_schemas::Service;
use event_store::Until;
use projections::catalog::{self, Sinks};
use projections::{ReadDb, RunOptions, applied_position, dashboard, run_from_stores};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use write_side::CommandContext;
use write_side::Local;
use write_side::domain::saga::{Phase, ReasonCode, Saga};
use write_side::domain::{
    CancelOrder, CustomerCommand, Order, OrderCommand, OrderStatus, Payment, PaymentStatus, PlaceOrder, PlaceOrderLine,
    ProductCommand,
};
use write_side::http::{Auth, HttpConfig};
use write_side::orders::saga::payment_id;

use testkit::http::get;

struct World {
    /// The services, for the folds of the order's saga and payment "as of".
    local: Local,
    write: axum::Router,
    read: axum::Router,
    orders: Vec<Uuid>,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    /// Every event's commit time: the instants where an answer changes.
    times: Vec<DateTime<Utc>>,
    _runner: CancellationToken,
}

/// How long the sagas get to do what the test waits for.
const SAGA_WITHIN: Duration = Duration::from_secs(30);

/// Waits until every order of `orders` is `status` and its saga `phase` (the saga has done all
/// it had to).
async fn settle(local: &Local, orders: &[Uuid], status: impl Fn(usize) -> OrderStatus, phase: impl Fn(usize) -> Phase) {
    let deadline = Instant::now() + SAGA_WITHIN;
    for (i, &order_id) in orders.iter().enumerate() {
        loop {
            let handler = local.handler(Service::Orders);
            let order = handler.load::<Order>(order_id, None).await.unwrap().state;
            let saga = handler.load::<Saga>(order_id, None).await.unwrap().state;
            if order.status == status(i) && saga.phase() == phase(i) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "order {i} is {:?}, its saga {:?}, after {SAGA_WITHIN:?}; waiting for {:?} and {:?}",
                order.status,
                saga.phase(),
                status(i),
                phase(i)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn world() -> World {
    let dir = std::env::temp_dir();
    let data_dir = dir.join(testkit::unique_name("as_of_services"));
    std::fs::create_dir_all(&data_dir).unwrap();
    let services = embedded::open(&data_dir).await.unwrap();
    let local = services.local;
    let ctx = CommandContext::default();
    // The saga driver, as `orderflow serve` runs it (`embedded::open` does not).
    let sagas = CancellationToken::new();
    let driver = tokio::spawn({
        let (local, stop) = (local.clone(), sagas.clone());
        async move { local.run_sagas(stop).await }
    });

    let customer_id = Uuid::now_v7();
    local
        .handler(Service::Customers)
        .customer(
            &ctx,
            customer_id,
            CustomerCommand::Register {
                customer_id,
                name: "Ada".into(),
                email: "ada@example.com".into(),
            },
        )
        .await
        .unwrap();
    let products: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
    for (n, &product_id) in products.iter().enumerate() {
        local
            .handler(Service::Inventory)
            .product(
                &ctx,
                product_id,
                ProductCommand::Add {
                    product_id,
                    sku: format!("SKU-{n}"),
                    name: format!("Product {n}"),
                    price_minor: 250 * (n as i64 + 1),
                    currency: "EUR".into(),
                    stock: 1_000,
                },
            )
            .await
            .unwrap();
    }
    // Orders move through their lifecycles interleaved, a few milliseconds apart, so that the
    // commit times spread out; the customer is renamed halfway. Each is placed pending and
    // confirmed by its saga; then one in four is cancelled (its saga voids and releases), two
    // in four shipped (their sagas capture), one of those delivered, and one in four left
    // confirmed.
    let orders: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
    for (i, &order_id) in orders.iter().enumerate() {
        let lines = vec![PlaceOrderLine {
            product_id: products[i % 3],
            quantity: 1 + i as i64 % 3,
        }];
        local
            .place_order(
                &ctx,
                PlaceOrder {
                    order_id,
                    customer_id,
                    lines,
                },
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    settle(&local, &orders, |_| OrderStatus::Confirmed, |_| Phase::AwaitingShipment).await;
    for step in 0..2 {
        for (i, &order_id) in orders.iter().enumerate() {
            let command = match (i % 4, step) {
                (1, 0) => Some(Err(CancelOrder {
                    order_id,
                    reason: "changed mind".into(),
                    // As a client's `POST /v1/orders/{id}/cancel` does.
                    reason_code: Some(ReasonCode::Requested.as_str().to_owned()),
                })),
                (2, 0) | (3, 0) => Some(Ok(OrderCommand::Ship {
                    order_id,
                    carrier: "DHL".into(),
                    tracking: format!("T{i}"),
                })),
                (3, 1) => Some(Ok(OrderCommand::Deliver { order_id })),
                _ => None,
            };
            match command {
                Some(Ok(command)) => {
                    local.orders().change(&ctx, order_id, command).await.unwrap();
                }
                Some(Err(cancel)) => {
                    local.cancel_order(&ctx, cancel).await.unwrap();
                }
                None => continue,
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        if step == 0 {
            local
                .handler(Service::Customers)
                .customer(
                    &ctx,
                    customer_id,
                    CustomerCommand::Rename {
                        customer_id,
                        name: "Ada L.".into(),
                    },
                )
                .await
                .unwrap();
        }
    }
    // Nothing is appended after the times are taken: every saga has done what it had to.
    settle(
        &local,
        &orders,
        |i| match i % 4 {
            0 => OrderStatus::Confirmed,
            1 => OrderStatus::Cancelled,
            2 => OrderStatus::Shipped,
            _ => OrderStatus::Delivered,
        },
        |i| {
            if i % 4 == 0 {
                Phase::AwaitingShipment
            } else {
                Phase::Completed
            }
        },
    )
    .await;
    sagas.cancel();
    driver.await.unwrap();

    // Every commit time of the services' logs: the instants where an answer may change.
    let mut times: Vec<DateTime<Utc>> = Vec::new();
    let mut heads = Vec::new();
    for log in &services.logs {
        let events = log.store.read_all(0, 10_000).await.unwrap();
        times.extend(events.iter().map(|e| e.recorded_at));
        heads.push((log.service, log.store.head_position().await.unwrap()));
    }
    times.sort();

    let read_url = format!(
        "sqlite://{}",
        dir.join(format!("{}.db", testkit::unique_name("as_of_read"))).display()
    );
    let db = ReadDb::connect(&read_url, 4).await.unwrap();
    db.migrate().await.unwrap();
    let sinks = Sinks {
        read_db: db.clone(),
        clickhouse: None,
    };
    let cancel = CancellationToken::new();
    tokio::spawn(run_from_stores(
        services.logs.clone(),
        db.clone(),
        catalog::factory(dashboard::NAME, &sinks).unwrap(),
        RunOptions::default(),
        cancel.clone(),
    ));
    // The runners catch up with the heads; a runner that fails would leave this waiting, so
    // the wait has a deadline that names what it waited for.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(version) = db.live_version(dashboard::NAME).await.unwrap() {
            let progress = db.progress(dashboard::NAME, version).await.unwrap();
            if heads
                .iter()
                .all(|(service, head)| applied_position(&progress, *service) >= *head)
            {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard did not reach the stores' heads {heads:?} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    World {
        write: write_side::http::router(local.http_state(HttpConfig::new(Auth::Disabled))),
        local,
        read: read_api::router(read_api::ReadState::new(db, None, read_api::ReadConfig::default())),
        orders,
        first: times[0],
        last: *times.last().unwrap(),
        times,
        _runner: cancel,
    }
}

/// Asks both sides about `order_id` as of `t` and compares what both of them model.
async fn compare(world: &World, order_id: Uuid, t: DateTime<Utc>) -> Result<(), String> {
    let at = t.to_rfc3339_opts(SecondsFormat::Micros, true);
    let (write_status, state) = get(&world.write, &format!("/v1/orders/{order_id}/state?as_of={at}")).await;
    let (read_status, row) = get(&world.read, &format!("/v1/dashboard/orders/{order_id}?as_of={at}")).await;
    if write_status == StatusCode::NOT_FOUND || read_status == StatusCode::NOT_FOUND {
        return if write_status == read_status {
            Ok(())
        } else {
            Err(format!(
                "at {at}: write side {write_status}, read side {read_status}: {row}"
            ))
        };
    }
    if write_status != StatusCode::OK || read_status != StatusCode::OK {
        return Err(format!("at {at}: {write_status} {state} / {read_status} {row}"));
    }
    let quantities: i64 = state["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["quantity"].as_i64().unwrap())
        .sum();
    let pairs = [
        ("status", state["status"].clone(), row["status"].clone()),
        ("customer_id", state["customer_id"].clone(), row["customer_id"].clone()),
        ("total_minor", state["total_minor"].clone(), row["total_minor"].clone()),
        ("currency", state["currency"].clone(), row["currency"].clone()),
        ("item_count", Value::from(quantities), row["item_count"].clone()),
        (
            "stream_version",
            state["version"].clone(),
            row["stream_version"].clone(),
        ),
        ("last_position", state["position"].clone(), row["last_position"].clone()),
        (
            "cancel_reason",
            state["cancellation_reason"].clone(),
            row["cancel_reason"].clone(),
        ),
        (
            "reason_code",
            state["cancellation_reason_code"].clone(),
            row["reason_code"].clone(),
        ),
        ("carrier", state["shipment"]["carrier"].clone(), row["carrier"].clone()),
        (
            "tracking",
            state["shipment"]["tracking"].clone(),
            row["tracking"].clone(),
        ),
    ];
    // The order's saga (the orders service's `saga-<order id>`) and its payment (the payments
    // service's), folded on the write side up to `t`, against what the row says of them then.
    let until = Some(Until::RecordedAt(t));
    let saga = world
        .local
        .handler(Service::Orders)
        .load::<Saga>(order_id, until)
        .await
        .map_err(|e| e.to_string())?;
    let saga_state = match saga.state.phase() {
        Phase::NotStarted => Value::Null,
        phase => Value::from(phase.as_str()),
    };
    let payment = world
        .local
        .handler(Service::Payments)
        .load::<Payment>(payment_id(order_id), until)
        .await
        .map_err(|e| e.to_string())?;
    let payment_status = match payment.state.status {
        PaymentStatus::NotStarted => "none",
        status => status.as_str(),
    };
    let pairs = pairs.into_iter().chain([
        ("saga_state", saga_state, row["saga_state"].clone()),
        (
            "payment_status",
            Value::from(payment_status),
            row["payment_status"].clone(),
        ),
        (
            "captured_minor",
            Value::from(payment.state.captured_minor),
            row["captured_minor"].clone(),
        ),
    ]);
    for (field, write, read) in pairs {
        if write != read {
            return Err(format!(
                "{order_id} at {at}: {field} is {write} on the write side, {read} on the read side"
            ));
        }
    }
    Ok(())
}

#[test]
fn the_dashboard_as_of_any_time_equals_the_write_sides_fold() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let world = runtime.block_on(world());

    // Exactly at every commit time, and a microsecond before it: where answers change.
    runtime.block_on(async {
        for &t in &world.times {
            for &order_id in &world.orders {
                for at in [t, t - chrono::Duration::microseconds(1)] {
                    compare(&world, order_id, at).await.unwrap();
                }
            }
        }
    });

    // Random instants from before the first event to after the last.
    let span = (world.last - world.first).num_microseconds().unwrap() + 2_000;
    let mut runner = TestRunner::new(Config {
        cases: 200,
        ..Config::default()
    });
    runner
        .run(&(0..world.orders.len(), -1_000..span), |(order, offset)| {
            let t = world.first + chrono::Duration::microseconds(offset);
            runtime
                .block_on(compare(&world, world.orders[order], t))
                .map_err(TestCaseError::fail)
        })
        .unwrap();
}
