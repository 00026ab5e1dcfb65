//! Invariant 7 of docs/design.md: "state as of T" from the read side equals the fold of the stream's events
//! up to T from the write side.
//!
//! Two tests over one history:
//! - a property test asks both HTTP APIs about random orders at random times (before, between
//!   and exactly at the events) and compares the answers;
//! - the dashboard's order and its list of orders, `as_of` every commit time (and just before
//!   it) and `at_position` every position of the orders log, are compared field by field with a
//!   fold of the services' logs written here, from the events alone (not the projection's code):
//!   the customer's name and email as they were then, the order's status, shipment and
//!   cancellation, its saga's state and its payment.
//!
//! Embedded deployment: the services over their SQLite stores (as `orderflow serve` opens
//! them), the place-order saga driven in the process (it confirms the orders, captures the
//! shipped ones' payments, compensates the cancelled ones), the in-process subscriptions feeding
//! the dashboard, the write side's and the read side's routers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use chrono::{DateTime, SecondsFormat, Utc};
use event_schemas::{CustomerEvent, DomainEvent, OrderEvent, OrderPlaced, PaymentEvent, SagaEvent, Service};
use event_store::Until;
use projections::catalog::{self, Sinks};
use projections::{ReadDb, RunOptions, applied_position, dashboard, run_from_stores};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use write_side::CommandContext;
use write_side::Local;
use write_side::domain::saga::{Phase, ReasonCode, Saga};
use write_side::domain::{
    CancelOrder, CustomerCommand, Order, OrderCommand, OrderStatus, Payment, PaymentStatus, PlaceOrder, PlaceOrderLine,
    ProductCommand,
};
use write_side::gateway::GatewaySettings;
use write_side::http::{Auth, HttpConfig};
use write_side::orders::saga::payment_id;

use testkit::http::get;

/// One event of a service's log, decoded.
struct Logged {
    service: Service,
    position: u64,
    stream_version: u64,
    occurred_at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
    event: DomainEvent,
}

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
    /// Every service's log, each in position order.
    events: Vec<Logged>,
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

async fn customer(local: &Local, ctx: &CommandContext, customer_id: Uuid, command: CustomerCommand) {
    local
        .handler(Service::Customers)
        .customer(ctx, customer_id, command)
        .await
        .unwrap();
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

    // Two customers; Ada is renamed twice and Grace's email changes while their orders move.
    let customers: Vec<Uuid> = (0..2).map(|_| Uuid::now_v7()).collect();
    for (&customer_id, (name, email)) in customers
        .iter()
        .zip([("Ada", "ada@example.com"), ("Grace", "grace@example.com")])
    {
        let command = CustomerCommand::Register {
            customer_id,
            name: name.into(),
            email: email.into(),
        };
        customer(&local, &ctx, customer_id, command).await;
    }
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
    // commit times spread out; the customers change halfway. Each is placed pending and
    // confirmed by its saga; then one in four is cancelled (its saga voids and releases), two
    // in four shipped (their sagas capture), one of those delivered, and one in four left
    // confirmed. One more order's payment is declined (its saga cancels it).
    let mut orders: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
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
                    customer_id: customers[i % 2],
                    lines,
                },
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    settle(&local, &orders, |_| OrderStatus::Confirmed, |_| Phase::AwaitingShipment).await;
    let declined = Uuid::now_v7();
    local.gateway().set(GatewaySettings {
        decline_rate: 1.0,
        ..GatewaySettings::default()
    });
    local
        .place_order(
            &ctx,
            PlaceOrder {
                order_id: declined,
                customer_id: customers[1],
                lines: vec![PlaceOrderLine {
                    product_id: products[0],
                    quantity: 2,
                }],
            },
        )
        .await
        .unwrap();
    settle(&local, &[declined], |_| OrderStatus::Cancelled, |_| Phase::Completed).await;
    local.gateway().set(GatewaySettings::default());
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
        let (customer_id, command) = if step == 0 {
            let name = "Ada L.".into();
            (
                customers[0],
                CustomerCommand::Rename {
                    customer_id: customers[0],
                    name,
                },
            )
        } else {
            let email = "grace.hopper@example.com".into();
            (
                customers[1],
                CustomerCommand::ChangeEmail {
                    customer_id: customers[1],
                    email,
                },
            )
        };
        customer(&local, &ctx, customer_id, command).await;
    }
    let command = CustomerCommand::Rename {
        customer_id: customers[0],
        name: "Ada Lovelace".into(),
    };
    customer(&local, &ctx, customers[0], command).await;
    orders.push(declined);
    // Nothing is appended after the times are taken: every saga has done what it had to.
    settle(
        &local,
        &orders,
        |i| match i % 4 {
            _ if i == 8 => OrderStatus::Cancelled,
            0 => OrderStatus::Confirmed,
            1 => OrderStatus::Cancelled,
            2 => OrderStatus::Shipped,
            _ => OrderStatus::Delivered,
        },
        |i| {
            if i % 4 == 0 && i != 8 {
                Phase::AwaitingShipment
            } else {
                Phase::Completed
            }
        },
    )
    .await;
    sagas.cancel();
    driver.await.unwrap();

    // Every service's log, and every commit time in them: the instants where an answer may
    // change.
    let mut events = Vec::new();
    let mut heads = Vec::new();
    for log in &services.logs {
        let recorded = log.store.read_all(0, 10_000).await.unwrap();
        let head = log.store.head_position().await.unwrap();
        assert_eq!(
            recorded.last().map_or(0, |e| e.position),
            head,
            "the whole {} log is read",
            log.service
        );
        for e in recorded {
            events.push(Logged {
                service: log.service,
                position: e.position,
                stream_version: e.stream_version,
                occurred_at: e.occurred_at,
                recorded_at: e.recorded_at,
                event: event_schemas::decode(&e.event_type, e.schema_version, &e.payload).unwrap(),
            });
        }
        heads.push((log.service, head));
    }
    let mut times: Vec<DateTime<Utc>> = events.iter().map(|e| e.recorded_at).collect();
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
        events,
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

// ---------------------------------------------------------------------------------------------
// The dashboard "as of", against a fold of the logs written here from the events alone.

/// A past point of the history, as the read API takes it.
#[derive(Debug, Clone, Copy)]
enum Point {
    /// `as_of`: every log up to this commit time.
    Time(DateTime<Utc>),
    /// `at_position`: the orders log up to this position, the other logs up to its commit time
    /// (docs/design.md, "HTTP contract").
    Position(u64),
}

impl Point {
    /// The point as the read API takes it, with (for a position) the event there, for messages.
    fn describe(self, events: &[Logged]) -> String {
        match self {
            Point::Time(_) => self.query(),
            Point::Position(position) => {
                let event = events
                    .iter()
                    .find(|e| e.service == Service::Orders && e.position == position)
                    .map_or("?", |e| e.event.event_type());
                format!("{} ({event})", self.query())
            }
        }
    }

    fn query(self) -> String {
        match self {
            Point::Time(t) => format!("as_of={}", t.to_rfc3339_opts(SecondsFormat::Micros, true)),
            Point::Position(position) => format!("at_position=orders:{position}"),
        }
    }
}

/// An order folded from its stream.
struct OrderFold {
    placed: OrderPlaced,
    placed_at: DateTime<Utc>,
    status: &'static str,
    confirmed_at: Option<DateTime<Utc>>,
    shipped_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
    cancelled_at: Option<DateTime<Utc>>,
    cancel_reason: Option<String>,
    reason_code: Option<String>,
    carrier: Option<String>,
    tracking: Option<String>,
    stream_version: u64,
    last_position: u64,
    updated_at: DateTime<Utc>,
}

/// A payment folded from its stream, as the dashboard documents it (`DashboardOrder` in the
/// OpenAPI document).
struct PaymentFold {
    order_id: Uuid,
    status: &'static str,
    currency: Option<String>,
    authorized_minor: i64,
    captured_minor: i64,
    refunded_minor: i64,
    reason: Option<String>,
    /// The position of the stream's first event in the payments log.
    started_position: u64,
    updated_at: DateTime<Utc>,
}

impl PaymentFold {
    /// Declined or voided: it holds no money.
    fn failed(&self) -> bool {
        matches!(self.status, "declined" | "voided")
    }
}

/// A place-order saga folded from its stream.
#[derive(Default)]
struct SagaFold {
    lines: usize,
    reserved: usize,
    authorized: bool,
    confirmed: bool,
    failed: bool,
    parked: bool,
    completed: bool,
    updated_at: Option<DateTime<Utc>>,
}

impl SagaFold {
    /// `DashboardSagaState`: the first that matches of completed, parked, compensating,
    /// reserving, authorizing, confirming, awaiting_shipment.
    fn state(&self) -> &'static str {
        if self.completed {
            "completed"
        } else if self.parked {
            "parked"
        } else if self.failed {
            "compensating"
        } else if self.reserved < self.lines {
            "reserving"
        } else if !self.authorized {
            "authorizing"
        } else if !self.confirmed {
            "confirming"
        } else {
            "awaiting_shipment"
        }
    }
}

fn time(t: DateTime<Utc>) -> Value {
    serde_json::to_value(t).unwrap()
}

fn optional_time(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, time)
}

/// Every order placed by `point`, as the dashboard should show it then, by order id.
fn fold(events: &[Logged], point: Point) -> BTreeMap<Uuid, Value> {
    // The commit time the logs other than the orders' are taken at.
    let cut = match point {
        Point::Time(t) => t,
        Point::Position(position) => {
            events
                .iter()
                .find(|e| e.service == Service::Orders && e.position == position)
                .expect("a position of the orders log")
                .recorded_at
        }
    };
    let included = |e: &Logged| match point {
        Point::Position(position) if e.service == Service::Orders => e.position <= position,
        _ => e.recorded_at <= cut,
    };
    let mut customers: HashMap<Uuid, (String, String)> = HashMap::new();
    let mut orders: BTreeMap<Uuid, OrderFold> = BTreeMap::new();
    let mut payments: BTreeMap<Uuid, PaymentFold> = BTreeMap::new();
    let mut sagas: HashMap<Uuid, SagaFold> = HashMap::new();
    // Each log in position order; the logs' folds are independent of one another.
    for e in events.iter().filter(|e| included(e)) {
        let (at, occurred) = (e.recorded_at, e.occurred_at);
        match &e.event {
            DomainEvent::Customer(CustomerEvent::Registered(r)) => {
                customers.insert(r.customer_id, (r.name.clone(), r.email.clone()));
            }
            DomainEvent::Customer(CustomerEvent::Renamed(r)) => {
                customers.get_mut(&r.customer_id).unwrap().0.clone_from(&r.name);
            }
            DomainEvent::Customer(CustomerEvent::EmailChanged(c)) => {
                customers.get_mut(&c.customer_id).unwrap().1.clone_from(&c.email);
            }
            DomainEvent::Order(order) => {
                if let OrderEvent::Placed(placed) = order {
                    orders.insert(
                        placed.order_id,
                        OrderFold {
                            placed: placed.clone(),
                            placed_at: occurred,
                            status: "pending",
                            confirmed_at: None,
                            shipped_at: None,
                            delivered_at: None,
                            cancelled_at: None,
                            cancel_reason: None,
                            reason_code: None,
                            carrier: None,
                            tracking: None,
                            stream_version: 0,
                            last_position: 0,
                            updated_at: at,
                        },
                    );
                }
                let o = orders
                    .get_mut(&order.order_id())
                    .expect("an order event after its placement");
                match order {
                    OrderEvent::Placed(_) => {}
                    OrderEvent::Confirmed(_) => {
                        o.status = "confirmed";
                        o.confirmed_at = Some(occurred);
                    }
                    OrderEvent::Shipped(s) => {
                        o.status = "shipped";
                        o.shipped_at = Some(occurred);
                        o.carrier = Some(s.carrier.clone());
                        o.tracking = Some(s.tracking.clone());
                    }
                    OrderEvent::Delivered(_) => {
                        o.status = "delivered";
                        o.delivered_at = Some(occurred);
                    }
                    OrderEvent::Cancelled(c) => {
                        o.status = "cancelled";
                        o.cancelled_at = Some(occurred);
                        o.cancel_reason = Some(c.reason.clone());
                        o.reason_code = (!c.reason_code.is_empty()).then(|| c.reason_code.clone());
                    }
                }
                o.stream_version = e.stream_version;
                o.last_position = e.position;
                o.updated_at = at;
            }
            DomainEvent::Payment(payment) => {
                let p = payments.entry(payment.payment_id()).or_insert_with(|| PaymentFold {
                    order_id: Uuid::nil(),
                    status: "none",
                    currency: None,
                    authorized_minor: 0,
                    captured_minor: 0,
                    refunded_minor: 0,
                    reason: None,
                    started_position: e.position,
                    updated_at: at,
                });
                match payment {
                    PaymentEvent::Authorized(a) => {
                        p.order_id = a.order_id;
                        p.status = "authorized";
                        p.currency = Some(a.amount.currency.as_str().to_owned());
                        p.authorized_minor = a.amount.amount_minor;
                        p.reason = None;
                    }
                    PaymentEvent::Captured(c) => {
                        p.status = "captured";
                        p.captured_minor += c.amount.amount_minor;
                        p.reason = None;
                    }
                    PaymentEvent::Refunded(r) => {
                        p.refunded_minor += r.amount.amount_minor;
                        if p.refunded_minor >= p.captured_minor {
                            p.status = "refunded";
                        }
                        p.reason = None;
                    }
                    PaymentEvent::Declined(d) => {
                        p.order_id = d.order_id;
                        p.status = "declined";
                        p.reason = Some(d.reason.clone());
                    }
                    PaymentEvent::Voided(v) => {
                        p.order_id = v.order_id;
                        p.status = "voided";
                        p.reason = Some(v.reason.clone());
                    }
                }
                p.updated_at = at;
            }
            DomainEvent::Saga(saga) => {
                let s = sagas.entry(saga.order_id()).or_default();
                match saga {
                    SagaEvent::Started(started) => s.lines = started.lines.len(),
                    SagaEvent::StockReserved(_) => {
                        s.reserved += 1;
                        // Work again for a compensated saga.
                        s.completed &= !s.failed;
                    }
                    SagaEvent::PaymentAuthorized(_) => {
                        s.authorized = true;
                        s.completed &= !s.failed;
                    }
                    SagaEvent::Confirmed(_) => s.confirmed = true,
                    SagaEvent::Failed(_) => {
                        s.failed = true;
                        s.parked = false;
                    }
                    SagaEvent::Parked(_) => s.parked = true,
                    SagaEvent::Resumed(_) => s.parked = false,
                    SagaEvent::Completed(_) => s.completed = true,
                    SagaEvent::StockReleased(_)
                    | SagaEvent::PaymentVoided(_)
                    | SagaEvent::PaymentCaptured(_)
                    | SagaEvent::PaymentRefunded(_)
                    | SagaEvent::OrderCancelled(_) => {}
                }
                s.updated_at = Some(at);
            }
            DomainEvent::Product(_) => {}
        }
    }
    orders
        .iter()
        .map(|(&order_id, o)| {
            let snapshot = &o.placed.customer;
            let (name, email) = customers
                .get(&o.placed.customer_id)
                .cloned()
                .unwrap_or_else(|| (snapshot.name.clone(), snapshot.email.clone()));
            let saga = sagas.get(&order_id);
            let mut own: Vec<(&Uuid, &PaymentFold)> = payments.iter().filter(|(_, p)| p.order_id == order_id).collect();
            // The one that holds or held money before one that failed, then the one started
            // latest in the payments log.
            own.sort_by_key(|(id, p)| (p.failed(), std::cmp::Reverse((p.started_position, **id))));
            let shown = own.first();
            let row = json!({
                "order_id": order_id,
                "customer_id": o.placed.customer_id,
                "customer_name": name,
                "customer_email": email,
                "status": o.status,
                "item_count": o.placed.lines.iter().map(|l| l.quantity).sum::<i64>(),
                "total_minor": o.placed.total_minor,
                "currency": o.placed.currency.as_str(),
                "placed_at": time(o.placed_at),
                "confirmed_at": optional_time(o.confirmed_at),
                "shipped_at": optional_time(o.shipped_at),
                "delivered_at": optional_time(o.delivered_at),
                "cancelled_at": optional_time(o.cancelled_at),
                "cancel_reason": o.cancel_reason,
                "reason_code": o.reason_code,
                "carrier": o.carrier,
                "tracking": o.tracking,
                "saga_state": saga.map(SagaFold::state),
                "saga_updated_at": optional_time(saga.and_then(|s| s.updated_at)),
                "payment_status": shown.map_or("none", |(_, p)| p.status),
                "payment_id": shown.map(|(id, _)| **id),
                "payment_currency": shown.and_then(|(_, p)| p.currency.clone()),
                "authorized_minor": shown.map_or(0, |(_, p)| p.authorized_minor),
                "captured_minor": shown.map_or(0, |(_, p)| p.captured_minor),
                "refunded_minor": shown.map_or(0, |(_, p)| p.refunded_minor),
                "payment_reason": shown.and_then(|(_, p)| p.reason.clone()),
                "payment_updated_at": optional_time(shown.map(|(_, p)| p.updated_at)),
                "payment_count": own.len(),
                "stream_version": o.stream_version,
                "last_position": o.last_position,
                "updated_at": time(o.updated_at),
            });
            (order_id, row)
        })
        .collect()
}

/// The fields where `answer` and `expected` differ (every field of either), or `None`.
fn differences(answer: &Value, expected: &Value) -> Option<String> {
    let (Some(answer), Some(expected)) = (answer.as_object(), expected.as_object()) else {
        return Some(format!("answered {answer}, expected {expected}"));
    };
    let mut keys: Vec<&String> = answer.keys().chain(expected.keys()).collect();
    keys.sort();
    keys.dedup();
    let differ: Vec<String> = keys
        .into_iter()
        .filter(|k| answer.get(*k) != expected.get(*k))
        .map(|k| {
            format!(
                "{k}: answered {}, expected {}",
                answer.get(k).map_or("(absent)".to_owned(), Value::to_string),
                expected.get(k).map_or("(absent)".to_owned(), Value::to_string)
            )
        })
        .collect();
    (!differ.is_empty()).then(|| differ.join("; "))
}

/// The rows of `/v1/dashboard/orders?{query}`, every page of `limit` followed by its cursor.
async fn list(world: &World, query: &str, limit: usize) -> Result<Vec<Value>, String> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..=world.orders.len() {
        let uri = match &cursor {
            Some(cursor) => format!("/v1/dashboard/orders?{query}&limit={limit}&cursor={cursor}"),
            None => format!("/v1/dashboard/orders?{query}&limit={limit}"),
        };
        let (status, page) = get(&world.read, &uri).await;
        if status != StatusCode::OK {
            return Err(format!("{uri}: {status} {page}"));
        }
        let page_rows = page["rows"].as_array().cloned().unwrap_or_default();
        if page_rows.len() > limit {
            return Err(format!("{uri}: {} rows", page_rows.len()));
        }
        rows.extend(page_rows);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(rows),
        }
    }
    Err(format!("{query}: the pages never end"))
}

/// The dashboard's answers at `point` against the fold: each order's row (404 before it was
/// placed), and the list, paged and whole, in both documented orders.
async fn compare_with_fold(world: &World, point: Point) -> Result<(), String> {
    let expected = fold(&world.events, point);
    let query = point.query();
    let at = point.describe(&world.events);
    for &order_id in &world.orders {
        let (status, answer) = get(&world.read, &format!("/v1/dashboard/orders/{order_id}?{query}")).await;
        match expected.get(&order_id) {
            Some(row) => {
                if status != StatusCode::OK {
                    return Err(format!("{order_id} {at}: {status} {answer}, expected {row}"));
                }
                if let Some(differ) = differences(&answer, row) {
                    return Err(format!("{order_id} {at}: {differ}"));
                }
            }
            None => {
                if status != StatusCode::NOT_FOUND || answer["error"]["code"] != "not_found" {
                    return Err(format!("{order_id} {at}: not placed yet, answered {status} {answer}"));
                }
            }
        }
    }
    // Newest placement first (the default sort), then by total ascending; ties by order id in
    // the same direction.
    let mut newest: Vec<&Value> = expected.values().collect();
    newest.sort_by_key(|row| {
        let placed: DateTime<Utc> = serde_json::from_value(row["placed_at"].clone()).unwrap();
        std::cmp::Reverse((placed, row["order_id"].as_str().unwrap().to_owned()))
    });
    let mut cheapest: Vec<&Value> = expected.values().collect();
    cheapest.sort_by_key(|row| {
        (
            row["total_minor"].as_i64().unwrap(),
            row["order_id"].as_str().unwrap().to_owned(),
        )
    });
    for (sort, limit, want) in [
        ("", 3, &newest),
        ("", 500, &newest),
        ("&sort=total_asc", 500, &cheapest),
    ] {
        let rows = list(world, &format!("{query}{sort}"), limit).await?;
        let id = |row: &Value| row["order_id"].as_str().unwrap_or("?").to_owned();
        let answered: Vec<String> = rows.iter().map(id).collect();
        let wanted: Vec<String> = want.iter().map(|row| id(row)).collect();
        if answered != wanted {
            return Err(format!(
                "the list {at}{sort} by {limit}: orders {answered:?}, expected {wanted:?}"
            ));
        }
        for (row, want) in rows.iter().zip(want.iter()) {
            if let Some(differ) = differences(row, want) {
                return Err(format!("the list {at}{sort}, order {}: {differ}", want["order_id"]));
            }
        }
    }
    Ok(())
}

#[test]
fn the_dashboard_as_of_any_point_equals_a_fold_of_the_logs() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let world = runtime.block_on(world());

    // The history holds what the comparison is about: the customer renamed between orders'
    // events, every status, a shipment, a cancellation by the client and one by the saga.
    let has = |f: &dyn Fn(&DomainEvent) -> bool| world.events.iter().any(|e| f(&e.event));
    assert!(has(&|e| matches!(e, DomainEvent::Customer(CustomerEvent::Renamed(_)))));
    assert!(has(&|e| matches!(
        e,
        DomainEvent::Customer(CustomerEvent::EmailChanged(_))
    )));
    assert!(has(&|e| matches!(e, DomainEvent::Order(OrderEvent::Shipped(_)))));
    assert!(has(&|e| matches!(e, DomainEvent::Order(OrderEvent::Delivered(_)))));
    assert!(has(&|e| matches!(e, DomainEvent::Payment(PaymentEvent::Captured(_)))));
    assert!(has(&|e| matches!(e, DomainEvent::Payment(PaymentEvent::Voided(_)))));
    assert!(has(&|e| matches!(e, DomainEvent::Payment(PaymentEvent::Declined(_)))));
    let codes: Vec<&str> = world
        .events
        .iter()
        .filter_map(|e| match &e.event {
            DomainEvent::Order(OrderEvent::Cancelled(c)) => Some(c.reason_code.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        codes.contains(&"requested") && codes.contains(&"payment_declined"),
        "{codes:?}"
    );

    // As of every commit time, a microsecond before it, before everything and after it all.
    let mut points: Vec<Point> = vec![
        Point::Time(world.first - chrono::Duration::seconds(1)),
        Point::Time(world.last + chrono::Duration::seconds(1)),
    ];
    for &t in &world.times {
        points.push(Point::Time(t));
        points.push(Point::Time(t - chrono::Duration::microseconds(1)));
    }
    // At every position of the orders log (orders' and sagas' events alike).
    points.extend(
        world
            .events
            .iter()
            .filter(|e| e.service == Service::Orders)
            .map(|e| Point::Position(e.position)),
    );
    // The answers do change between the points: the fold is not trivially the same everywhere.
    let names: std::collections::BTreeSet<String> = points
        .iter()
        .flat_map(|&p| fold(&world.events, p).into_values())
        .map(|row| row["customer_name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["Ada", "Ada L.", "Ada Lovelace", "Grace"],
        "the points see every name"
    );

    let failures: Vec<String> = runtime.block_on(async {
        let mut failures = Vec::new();
        for &point in &points {
            if let Err(failure) = compare_with_fold(&world, point).await {
                failures.push(failure);
            }
        }
        failures
    });
    assert!(
        failures.is_empty(),
        "{} of {} points differ from the fold of the logs; the first ones:\n{}",
        failures.len(),
        points.len(),
        failures.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
}
