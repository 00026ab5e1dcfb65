//! The order dashboard against the real servers: every scenario on PostgreSQL
//! (`testkit::postgres::fresh_database`, started by `scripts/services up`) and on a SQLite file.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, TimeZone, Utc};
use event_schemas::Service;
use event_schemas::{
    Category, Currency, CustomerEmailChanged, CustomerEvent, CustomerRegistered, CustomerRenamed, CustomerSnapshot,
    DomainEvent, Money, OrderCancelled, OrderConfirmed, OrderDelivered, OrderEvent, OrderLine, OrderPlaced,
    OrderShipped, PaymentAuthorized, PaymentCaptured, PaymentDeclined, PaymentEvent, PaymentRefunded, PaymentVoided,
    SagaCompleted, SagaConfirmed, SagaEvent, SagaFailed, SagaLine, SagaOrderCancelled, SagaParked,
    SagaPaymentAuthorized, SagaPaymentCaptured, SagaPaymentRefunded, SagaPaymentVoided, SagaResumed, SagaStarted,
    SagaStockReleased, SagaStockReserved,
};
use projections::dashboard::{
    self, AsOf, Cursor, Direction, OrderDashboard, OrderFilter, OrderRow, OrderStatus, PaymentStatus, QueryError,
    SagaState, Sort, SortKey,
};
use projections::{Batch, Origin, ProjectedEvent, Projection, ProjectionError, ReadDb, store_source};
use sqlx::Row;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Servers

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Postgres,
    Sqlite,
}

async fn read_db(server: Server) -> ReadDb {
    let url = match server {
        Server::Postgres => testkit::postgres::fresh_database().await.url,
        Server::Sqlite => {
            let path = std::env::temp_dir().join(format!("{}.db", testkit::unique_name("dashboard")));
            format!("sqlite://{}", path.display())
        }
    };
    let db = ReadDb::connect(&url, 4).await.expect("connect to the read database");
    db.migrate().await.expect("control tables");
    db
}

async fn dashboard(db: &ReadDb, version: u32) -> OrderDashboard {
    let dashboard = OrderDashboard::new(db.clone(), version);
    dashboard.prepare().await.expect("prepare");
    dashboard
}

// ---------------------------------------------------------------------------------------------
// Events

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
}

/// The time the store recorded (and the command happened at) the event at `position`.
fn time_of(position: u64) -> DateTime<Utc> {
    base_time() + Duration::seconds(i64::try_from(position).unwrap())
}

/// The services' logs being written: positions from 1 counted across the services (so each
/// service's log has increasing positions with holes), stream versions per stream.
#[derive(Default)]
struct Log {
    events: Vec<ProjectedEvent>,
    versions: HashMap<String, u64>,
}

impl Log {
    fn push(&mut self, event: DomainEvent) -> ProjectedEvent {
        let stream_id = stream_of(&event);
        let version = self.versions.entry(stream_id.clone()).or_insert(0);
        *version += 1;
        let position = self.events.len() as u64 + 1;
        let service = event_schemas::Service::owning(event.category());
        let event = ProjectedEvent {
            event_id: Uuid::new_v4(),
            stream_id,
            stream_version: *version,
            position,
            occurred_at: time_of(position),
            recorded_at: time_of(position),
            correlation_id: "test".to_owned(),
            event,
            origin: Origin::store(service, position),
        };
        self.events.push(event.clone());
        event
    }
}

fn stream_of(event: &DomainEvent) -> String {
    match event {
        DomainEvent::Customer(e) => Category::Customer.stream_id(e.customer_id()),
        DomainEvent::Order(e) => Category::Order.stream_id(e.order_id()),
        DomainEvent::Payment(e) => Category::Payment.stream_id(e.payment_id()),
        DomainEvent::Product(e) => Category::Product.stream_id(e.product_id()),
        DomainEvent::Saga(e) => Category::Saga.stream_id(e.order_id()),
    }
}

fn registered(customer_id: Uuid, name: &str, email: &str) -> DomainEvent {
    DomainEvent::Customer(CustomerEvent::Registered(CustomerRegistered {
        customer_id,
        name: name.to_owned(),
        email: email.to_owned(),
    }))
}

fn renamed(customer_id: Uuid, name: &str) -> DomainEvent {
    DomainEvent::Customer(CustomerEvent::Renamed(CustomerRenamed {
        customer_id,
        name: name.to_owned(),
    }))
}

fn email_changed(customer_id: Uuid, email: &str) -> DomainEvent {
    DomainEvent::Customer(CustomerEvent::EmailChanged(CustomerEmailChanged {
        customer_id,
        email: email.to_owned(),
    }))
}

/// An order of `quantities` units at 250 minor units each, plus `extra_minor` on the first line.
fn placed(
    order_id: Uuid,
    customer_id: Uuid,
    snapshot: (&str, &str),
    quantities: &[i64],
    currency: Currency,
    extra_minor: i64,
) -> DomainEvent {
    let lines: Vec<OrderLine> = quantities
        .iter()
        .enumerate()
        .map(|(i, quantity)| OrderLine {
            product_id: Uuid::new_v4(),
            sku: format!("SKU-{i}"),
            name: format!("product {i}"),
            quantity: *quantity,
            unit_price_minor: 250 + if i == 0 { extra_minor } else { 0 },
        })
        .collect();
    let total_minor = lines.iter().map(|line| line.quantity * line.unit_price_minor).sum();
    DomainEvent::Order(OrderEvent::Placed(OrderPlaced {
        order_id,
        customer_id,
        customer: CustomerSnapshot {
            name: snapshot.0.to_owned(),
            email: snapshot.1.to_owned(),
        },
        lines,
        currency,
        total_minor,
    }))
}

fn confirmed(order_id: Uuid) -> DomainEvent {
    DomainEvent::Order(OrderEvent::Confirmed(OrderConfirmed { order_id }))
}

fn shipped(order_id: Uuid, carrier: &str, tracking: &str) -> DomainEvent {
    DomainEvent::Order(OrderEvent::Shipped(OrderShipped {
        order_id,
        carrier: carrier.to_owned(),
        tracking: tracking.to_owned(),
    }))
}

fn delivered(order_id: Uuid) -> DomainEvent {
    DomainEvent::Order(OrderEvent::Delivered(OrderDelivered { order_id }))
}

/// A cancellation recorded without a reason code (before the saga).
fn cancelled(order_id: Uuid, reason: &str) -> DomainEvent {
    cancelled_for(order_id, reason, "")
}

/// A cancellation with its reason code.
fn cancelled_for(order_id: Uuid, reason: &str, reason_code: &str) -> DomainEvent {
    DomainEvent::Order(OrderEvent::Cancelled(OrderCancelled {
        order_id,
        reason: reason.to_owned(),
        reason_code: reason_code.to_owned(),
    }))
}

// The place-order saga's events (`saga-{order id}`).

fn saga(event: SagaEvent) -> DomainEvent {
    DomainEvent::Saga(event)
}

fn saga_started(order_id: Uuid, lines: usize) -> DomainEvent {
    saga(SagaEvent::Started(SagaStarted {
        order_id,
        payment_id: Uuid::from_u128(order_id.as_u128() ^ 1),
        lines: (0..lines)
            .map(|_| SagaLine {
                product_id: Uuid::new_v4(),
                quantity: 1,
            })
            .collect(),
        amount: Money::new(250, Currency::EUR),
        deadline: base_time() + Duration::days(1),
        correlation_id: "test".to_owned(),
    }))
}

fn saga_reserved(order_id: Uuid, line: u32) -> DomainEvent {
    saga(SagaEvent::StockReserved(SagaStockReserved {
        order_id,
        line,
        product_id: Uuid::new_v4(),
        quantity: 1,
    }))
}

fn saga_released(order_id: Uuid, line: u32) -> DomainEvent {
    saga(SagaEvent::StockReleased(SagaStockReleased {
        order_id,
        line,
        product_id: Uuid::new_v4(),
    }))
}

fn saga_authorized(order_id: Uuid) -> DomainEvent {
    saga(SagaEvent::PaymentAuthorized(SagaPaymentAuthorized {
        order_id,
        payment_id: Uuid::new_v4(),
        amount: Money::new(250, Currency::EUR),
    }))
}

fn saga_voided(order_id: Uuid) -> DomainEvent {
    saga(SagaEvent::PaymentVoided(SagaPaymentVoided {
        order_id,
        payment_id: Uuid::new_v4(),
    }))
}

fn saga_captured(order_id: Uuid) -> DomainEvent {
    saga(SagaEvent::PaymentCaptured(SagaPaymentCaptured {
        order_id,
        payment_id: Uuid::new_v4(),
        amount: Money::new(250, Currency::EUR),
    }))
}

fn saga_refunded(order_id: Uuid) -> DomainEvent {
    saga(SagaEvent::PaymentRefunded(SagaPaymentRefunded {
        order_id,
        payment_id: Uuid::new_v4(),
        amount: Money::new(250, Currency::EUR),
    }))
}

fn saga_confirmed(order_id: Uuid) -> DomainEvent {
    saga(SagaEvent::Confirmed(SagaConfirmed { order_id }))
}

fn saga_failed(order_id: Uuid, reason_code: &str) -> DomainEvent {
    saga(SagaEvent::Failed(SagaFailed {
        order_id,
        reason_code: reason_code.to_owned(),
        reason: format!("because {reason_code}"),
        step: "authorize".to_owned(),
    }))
}

fn saga_order_cancelled(order_id: Uuid, reason_code: &str) -> DomainEvent {
    saga(SagaEvent::OrderCancelled(SagaOrderCancelled {
        order_id,
        reason_code: reason_code.to_owned(),
    }))
}

fn saga_parked(order_id: Uuid) -> DomainEvent {
    saga(SagaEvent::Parked(SagaParked {
        order_id,
        step: "authorize".to_owned(),
        error: "422 from payments".to_owned(),
    }))
}

fn saga_resumed(order_id: Uuid) -> DomainEvent {
    saga(SagaEvent::Resumed(SagaResumed {
        order_id,
        actor: "ops".to_owned(),
    }))
}

fn saga_completed(order_id: Uuid, outcome: &str) -> DomainEvent {
    saga(SagaEvent::Completed(SagaCompleted {
        order_id,
        outcome: outcome.to_owned(),
    }))
}

/// A saga for `order_id` of `lines` lines with a random life, as the orders service appends it
/// (one stream): stopped while reserving, authorizing or confirming, awaiting shipment,
/// completed after the capture, parked (and resumed or abandoned), failed and compensating or
/// compensated, and a compensated one that learns of a reservation late.
fn random_saga(rng: &mut Rng, order_id: Uuid, lines: usize) -> Vec<DomainEvent> {
    let codes = projections::REASON_CODES;
    let mut stream = vec![saga_started(order_id, lines)];
    let reserved = if rng.chance(70) { lines } else { rng.below(lines + 1) };
    for line in 0..reserved {
        stream.push(saga_reserved(order_id, line as u32));
    }
    let mut authorized = false;
    if reserved == lines && rng.chance(75) {
        stream.push(saga_authorized(order_id));
        authorized = true;
        if rng.chance(70) {
            stream.push(saga_confirmed(order_id));
            if rng.chance(50) {
                stream.push(saga_captured(order_id));
                stream.push(saga_completed(order_id, "captured"));
                return stream;
            }
        }
    }
    if rng.chance(20) {
        stream.push(saga_parked(order_id));
        if rng.chance(50) {
            stream.push(saga_resumed(order_id));
        } else if rng.chance(50) {
            return stream;
        }
    }
    if rng.chance(50) {
        let code = codes[rng.below(codes.len())];
        stream.push(saga_failed(order_id, code));
        if rng.chance(70) {
            if authorized {
                stream.push(if rng.chance(50) {
                    saga_voided(order_id)
                } else {
                    saga_refunded(order_id)
                });
            }
            for line in 0..reserved {
                stream.push(saga_released(order_id, line as u32));
            }
            stream.push(saga_order_cancelled(order_id, code));
            stream.push(saga_completed(order_id, "cancelled"));
            if reserved < lines && rng.chance(30) {
                // A reservation made by a process that crashed before recording it, recorded
                // late: the compensation has work again.
                stream.push(saga_reserved(order_id, reserved as u32));
                if rng.chance(50) {
                    stream.push(saga_released(order_id, reserved as u32));
                    stream.push(saga_completed(order_id, "cancelled"));
                }
            }
        }
    }
    stream
}

/// The state of an order's saga as its events in `log` up to `position` tell it (the write
/// side's `Saga::phase`, folded here on its own), and when its last event was recorded.
fn expected_saga(log: &[ProjectedEvent], order_id: Uuid, position: u64) -> (Option<SagaState>, Option<DateTime<Utc>>) {
    #[derive(Default)]
    struct Model {
        lines: usize,
        reserved: HashSet<u32>,
        authorized: bool,
        confirmed: bool,
        failed: bool,
        parked: bool,
        outcome: Option<String>,
    }
    let mut model: Option<Model> = None;
    let mut at = None;
    for event in log.iter().filter(|e| e.position <= position) {
        let DomainEvent::Saga(e) = &event.event else {
            continue;
        };
        if e.order_id() != order_id {
            continue;
        }
        at = Some(event.recorded_at);
        let m = model.get_or_insert_with(Model::default);
        match e {
            SagaEvent::Started(e) => m.lines = e.lines.len(),
            SagaEvent::StockReserved(e) => {
                m.reserved.insert(e.line);
                if m.failed {
                    m.outcome = None;
                }
            }
            SagaEvent::PaymentAuthorized(_) => {
                m.authorized = true;
                if m.failed {
                    m.outcome = None;
                }
            }
            SagaEvent::Confirmed(_) => m.confirmed = true,
            SagaEvent::Failed(_) => (m.failed, m.parked) = (true, false),
            SagaEvent::Parked(_) => m.parked = true,
            SagaEvent::Resumed(_) => m.parked = false,
            SagaEvent::Completed(e) => m.outcome = Some(e.outcome.clone()),
            _ => {}
        }
    }
    let state = model.map(|m| {
        if m.outcome.is_some() {
            SagaState::Completed
        } else if m.parked {
            SagaState::Parked
        } else if m.failed {
            SagaState::Compensating
        } else if m.reserved.len() < m.lines {
            SagaState::Reserving
        } else if !m.authorized {
            SagaState::Authorizing
        } else if !m.confirmed {
            SagaState::Confirming
        } else {
            SagaState::AwaitingShipment
        }
    });
    (state, at)
}

/// A random reason code of a cancellation: one of the write side's, or none (before the saga).
fn random_code(rng: &mut Rng) -> &'static str {
    let codes = projections::REASON_CODES;
    if rng.chance(20) {
        ""
    } else {
        codes[rng.below(codes.len())]
    }
}

fn authorized(payment_id: Uuid, order_id: Uuid, amount_minor: i64) -> DomainEvent {
    DomainEvent::Payment(PaymentEvent::Authorized(PaymentAuthorized {
        payment_id,
        order_id,
        amount: Money::new(amount_minor, Currency::EUR),
    }))
}

fn captured(payment_id: Uuid, order_id: Uuid, amount_minor: i64) -> DomainEvent {
    DomainEvent::Payment(PaymentEvent::Captured(PaymentCaptured {
        payment_id,
        order_id,
        amount: Money::new(amount_minor, Currency::EUR),
    }))
}

fn refunded(payment_id: Uuid, order_id: Uuid, amount_minor: i64) -> DomainEvent {
    DomainEvent::Payment(PaymentEvent::Refunded(PaymentRefunded {
        payment_id,
        order_id,
        amount: Money::new(amount_minor, Currency::EUR),
    }))
}

fn declined(payment_id: Uuid, order_id: Uuid, reason: &str) -> DomainEvent {
    DomainEvent::Payment(PaymentEvent::Declined(PaymentDeclined {
        payment_id,
        order_id,
        reason: reason.to_owned(),
    }))
}

/// A void releasing `amount_minor` of an authorization, or (`None`) coming before any.
fn voided(payment_id: Uuid, order_id: Uuid, amount_minor: Option<i64>, reason: &str) -> DomainEvent {
    DomainEvent::Payment(PaymentEvent::Voided(PaymentVoided {
        payment_id,
        order_id,
        amount: amount_minor.map(|amount| Money::new(amount, Currency::EUR)),
        reason: reason.to_owned(),
    }))
}

/// A payment for `order_id` of `total` with a random life, as the payments service would
/// append it (one stream): every status, partial and full refunds, a void before its
/// authorization, a decline of an authorization.
fn random_payment(rng: &mut Rng, order_id: Uuid, total: i64) -> Vec<DomainEvent> {
    let id = Uuid::new_v4();
    let part = 1 + total / 3;
    match rng.below(9) {
        0 => vec![authorized(id, order_id, total)],
        1 => vec![authorized(id, order_id, total), captured(id, order_id, total)],
        2 => vec![
            authorized(id, order_id, total),
            captured(id, order_id, total),
            refunded(id, order_id, part),
        ],
        3 => vec![
            authorized(id, order_id, total),
            captured(id, order_id, total - 1),
            refunded(id, order_id, part),
            refunded(id, order_id, total - 1 - part),
        ],
        4 => vec![
            authorized(id, order_id, total),
            voided(id, order_id, Some(total), "order cancelled"),
        ],
        5 => vec![declined(id, order_id, "card\texpired")],
        6 => vec![
            authorized(id, order_id, total),
            declined(id, order_id, "fraud suspected"),
        ],
        7 => vec![voided(id, order_id, None, "too late")],
        _ => vec![
            voided(id, order_id, None, "too late"),
            authorized(id, order_id, total),
            voided(id, order_id, Some(total), "too late"),
        ],
    }
}

/// The total of an order placed by [`placed`].
fn total_of(event: &DomainEvent) -> i64 {
    match event {
        DomainEvent::Order(OrderEvent::Placed(p)) => p.total_minor,
        _ => 0,
    }
}

fn batch(events: &[ProjectedEvent]) -> Batch {
    Batch {
        events: events.to_vec(),
        dead_letters: Vec::new(),
        unknown: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Table dumps

const TABLES: [&str; 9] = [
    "orders",
    "customers",
    "customer_totals",
    "order_history",
    "customer_history",
    "payments",
    "payment_history",
    "sagas",
    "saga_history",
];

/// Every row of one of a version's tables, each cell as text, sorted.
async fn dump_table(db: &ReadDb, version: u32, table: &str) -> Vec<Vec<String>> {
    let sql = format!("SELECT * FROM {}{table}", dashboard::table_prefix(version));
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(db.pool())
        .await
        .unwrap();
    let mut dump: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| match row.try_get::<Option<i64>, _>(i) {
                    Ok(Some(value)) => value.to_string(),
                    Ok(None) => "NULL".to_owned(),
                    Err(_) => format!("'{}'", row.try_get::<String, _>(i).unwrap()),
                })
                .collect()
        })
        .collect();
    dump.sort();
    dump
}

async fn dump(db: &ReadDb, version: u32) -> BTreeMap<&'static str, Vec<Vec<String>>> {
    let mut tables = BTreeMap::new();
    for table in TABLES {
        tables.insert(table, dump_table(db, version, table).await);
    }
    tables
}

// ---------------------------------------------------------------------------------------------
// Lifecycle, checkpoints, atomicity

async fn lifecycle(server: Server) {
    let db = read_db(server).await;
    let dash = dashboard(&db, 1).await;
    assert!(dash.healthy().await);
    assert_eq!(dash.name(), dashboard::NAME);
    dash.prepare().await.expect("prepare is idempotent");

    let (alice, a, b, pay) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut log = Log::default();
    log.push(registered(alice, "Alice", "alice@example.com"));
    log.push(placed(
        a,
        alice,
        ("Alice", "alice@example.com"),
        &[2, 3],
        Currency::EUR,
        0,
    ));
    log.push(placed(
        b,
        alice,
        ("Alice", "alice@example.com"),
        &[1],
        Currency::EUR,
        50,
    ));
    log.push(authorized(pay, a, 1250));
    log.push(confirmed(a));
    log.push(shipped(a, "DHL", "TRACK-1"));
    log.push(cancelled(b, "out of stock"));
    log.push(delivered(a));
    let (first, second) = log.events.split_at(4);
    dash.apply(&batch(first)).await.expect("first batch");

    let row = dashboard::get_order(&db, 1, a).await.unwrap().expect("order a");
    assert_eq!(row.status, OrderStatus::Pending);
    assert_eq!(row.item_count, 5);
    assert_eq!(row.total_minor, 1250);
    assert_eq!(row.currency, "EUR");
    assert_eq!(row.customer_name, "Alice");
    assert_eq!(row.placed_at, time_of(2));
    assert_eq!(row.confirmed_at, None);
    assert_eq!((row.stream_version, row.last_position), (1, 2));
    assert_eq!(row.payment_status, PaymentStatus::Authorized);
    assert_eq!(row.payment_id, Some(pay));
    assert_eq!(row.payment_currency.as_deref(), Some("EUR"));
    assert_eq!(
        (row.authorized_minor, row.captured_minor, row.refunded_minor),
        (1250, 0, 0)
    );
    assert_eq!((row.payment_updated_at, row.payment_count), (Some(time_of(4)), 1));
    assert_eq!(row.payment_reason, None);
    let row = dashboard::get_order(&db, 1, b).await.unwrap().expect("order b");
    assert_eq!(row.payment_status, PaymentStatus::None, "no payment for b");
    assert_eq!(
        (row.payment_id, row.payment_currency.as_deref(), row.payment_updated_at),
        (None, None, None)
    );
    assert_eq!(
        (
            row.authorized_minor,
            row.captured_minor,
            row.refunded_minor,
            row.payment_count
        ),
        (0, 0, 0, 0)
    );
    let mut checkpoints: Vec<(String, i64, u64)> = dash
        .checkpoints()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.source, c.offset, c.position))
        .collect();
    checkpoints.sort();
    assert_eq!(
        checkpoints,
        [
            (store_source(Service::Customers), 1, 1),
            (store_source(Service::Orders), 3, 3),
            (store_source(Service::Payments), 4, 4),
        ],
        "one checkpoint per service's log"
    );

    dash.apply(&batch(second)).await.expect("second batch");
    let row = dashboard::get_order(&db, 1, a).await.unwrap().expect("order a");
    assert_eq!(row.status, OrderStatus::Delivered);
    assert_eq!(row.confirmed_at, Some(time_of(5)));
    assert_eq!(row.shipped_at, Some(time_of(6)));
    assert_eq!(row.delivered_at, Some(time_of(8)));
    assert_eq!(
        (row.carrier.as_deref(), row.tracking.as_deref()),
        (Some("DHL"), Some("TRACK-1"))
    );
    assert_eq!(
        (row.stream_version, row.last_position, row.updated_at),
        (4, 8, time_of(8))
    );
    let row = dashboard::get_order(&db, 1, b).await.unwrap().expect("order b");
    assert_eq!(row.status, OrderStatus::Cancelled);
    assert_eq!(row.cancelled_at, Some(time_of(7)));
    assert_eq!(row.cancel_reason.as_deref(), Some("out of stock"));
    assert_eq!(row.item_count, 1);
    assert_eq!(row.total_minor, 300);
    assert_eq!(dashboard::get_order(&db, 1, Uuid::new_v4()).await.unwrap(), None);
    let checkpoints = dash.checkpoints().await.unwrap();
    let orders = checkpoints
        .iter()
        .find(|c| c.source == store_source(Service::Orders))
        .unwrap();
    assert_eq!((orders.offset, orders.position), (8, 8));
    assert_eq!(orders.recorded_at, Some(time_of(8)));

    // An event for an order never placed fails the whole batch: neither its rows nor its
    // checkpoint are stored (they are one transaction).
    let c = Uuid::new_v4();
    let before = dump(&db, 1).await;
    let placed_c = log.push(placed(c, alice, ("Alice", "alice@example.com"), &[1], Currency::EUR, 0));
    let orphan = log.push(confirmed(Uuid::new_v4()));
    let error = dash
        .apply(&batch(&[placed_c.clone(), orphan]))
        .await
        .expect_err("inconsistent");
    assert!(matches!(error, ProjectionError::Inconsistent(_)), "{error:?}");
    assert_eq!(dump(&db, 1).await, before);
    let orders_offset = || async {
        let checkpoints = dash.checkpoints().await.unwrap();
        checkpoints
            .iter()
            .find(|c| c.source == store_source(Service::Orders))
            .map(|c| c.offset)
    };
    assert_eq!(orders_offset().await, Some(8));
    dash.apply(&batch(&[placed_c])).await.expect("the order alone applies");
    assert_eq!(orders_offset().await, Some(9));
    // So does a capture of a payment never authorized (a payment stream starts with an
    // authorization, a decline or a void).
    let before = dump(&db, 1).await;
    let orphan = log.push(captured(Uuid::new_v4(), a, 5));
    let error = dash.apply(&batch(&[orphan])).await.expect_err("inconsistent");
    assert!(matches!(error, ProjectionError::Inconsistent(_)), "{error:?}");
    assert_eq!(dump(&db, 1).await, before);

    // Versions are separate tables; dropping one leaves the other.
    let other = dashboard(&db, 2).await;
    other.apply(&batch(&log.events[..3])).await.unwrap();
    dash.drop_version().await.expect("drop");
    assert!(
        dashboard::get_order(&db, 1, a).await.is_err(),
        "the tables of version 1 are gone"
    );
    assert!(dashboard::get_order(&db, 2, a).await.unwrap().is_some());
}

#[tokio::test]
async fn lifecycle_postgres() {
    lifecycle(Server::Postgres).await;
}

#[tokio::test]
async fn lifecycle_sqlite() {
    lifecycle(Server::Sqlite).await;
}

/// The payment part of a row: status, payment id, currency, authorized / captured / refunded,
/// reason, last payment event's time, payment count.
type PaymentPart = (
    PaymentStatus,
    Option<Uuid>,
    Option<String>,
    (i64, i64, i64),
    Option<String>,
    Option<DateTime<Utc>>,
    u64,
);

fn payment_part(row: &OrderRow) -> PaymentPart {
    (
        row.payment_status,
        row.payment_id,
        row.payment_currency.clone(),
        (row.authorized_minor, row.captured_minor, row.refunded_minor),
        row.payment_reason.clone(),
        row.payment_updated_at,
        row.payment_count,
    )
}

/// What the payments service's fold says of one payment, from its events in `log` up to
/// `position` (the dashboard's rule for which one an order shows is in [`expected_payment`]).
#[derive(Debug, Clone)]
struct PaymentModel {
    payment_id: Uuid,
    order_id: Uuid,
    status: PaymentStatus,
    currency: Option<String>,
    amounts: (i64, i64, i64),
    reason: Option<String>,
    first_position: u64,
    updated_at: DateTime<Utc>,
}

/// An order's payment part as of `position` (all of them with `u64::MAX`): of its payments,
/// one that holds or held money (authorized, captured, refunded) before one that failed
/// (declined, voided), then the one started latest in the log.
fn expected_payment(log: &[ProjectedEvent], order_id: Uuid, position: u64) -> PaymentPart {
    let mut payments: BTreeMap<Uuid, PaymentModel> = BTreeMap::new();
    for event in log.iter().filter(|e| e.position <= position) {
        let DomainEvent::Payment(payment) = &event.event else {
            continue;
        };
        let model = payments.entry(payment.payment_id()).or_insert_with(|| PaymentModel {
            payment_id: payment.payment_id(),
            order_id: payment.order_id(),
            status: PaymentStatus::None,
            currency: None,
            amounts: (0, 0, 0),
            reason: None,
            first_position: event.position,
            updated_at: event.recorded_at,
        });
        model.updated_at = event.recorded_at;
        match payment {
            PaymentEvent::Authorized(e) => {
                (model.status, model.reason) = (PaymentStatus::Authorized, None);
                model.currency = Some(e.amount.currency.to_string());
                model.amounts.0 = e.amount.amount_minor;
            }
            PaymentEvent::Captured(e) => {
                model.status = PaymentStatus::Captured;
                model.amounts.1 += e.amount.amount_minor;
            }
            PaymentEvent::Refunded(e) => {
                model.amounts.2 += e.amount.amount_minor;
                if model.amounts.2 >= model.amounts.1 {
                    model.status = PaymentStatus::Refunded;
                }
            }
            PaymentEvent::Declined(e) => {
                (model.status, model.reason) = (PaymentStatus::Declined, Some(e.reason.clone()))
            }
            PaymentEvent::Voided(e) => (model.status, model.reason) = (PaymentStatus::Voided, Some(e.reason.clone())),
        }
    }
    let of_order: Vec<&PaymentModel> = payments.values().filter(|p| p.order_id == order_id).collect();
    let shown = of_order.iter().min_by_key(|p| {
        (
            matches!(p.status, PaymentStatus::Declined | PaymentStatus::Voided),
            std::cmp::Reverse(p.first_position),
            std::cmp::Reverse(p.payment_id),
        )
    });
    match shown {
        None => (PaymentStatus::None, None, None, (0, 0, 0), None, None, 0),
        Some(p) => (
            p.status,
            Some(p.payment_id),
            p.currency.clone(),
            p.amounts,
            p.reason.clone(),
            Some(p.updated_at),
            of_order.len() as u64,
        ),
    }
}

/// An order's payments, from the payments' own log, whatever the order they arrive in relative
/// to the order's events: before its placement, several attempts, partial and full refunds, a
/// void before its authorization.
async fn payments(server: Server) {
    let db = read_db(server).await;
    let dash = dashboard(&db, 1).await;
    let (alice, a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let pays: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let mut log = Log::default();
    let snapshot = ("Alice", "alice@example.com");
    // The payments service saw a declined attempt before the orders service's placement
    // reached the dashboard.
    let early = log.push(declined(pays[0], a, "card expired"));
    dash.apply(&batch(&[early])).await.unwrap();
    assert_eq!(dashboard::get_order(&db, 1, a).await.unwrap(), None, "no order yet");
    let placed_a = log.push(placed(a, alice, snapshot, &[5], Currency::EUR, 0)); // 1250
    dash.apply(&batch(&[placed_a])).await.unwrap();
    let row = dashboard::get_order(&db, 1, a).await.unwrap().unwrap();
    assert_eq!(
        payment_part(&row),
        (
            PaymentStatus::Declined,
            Some(pays[0]),
            None,
            (0, 0, 0),
            Some("card expired".to_owned()),
            Some(time_of(1)),
            1
        )
    );
    assert_eq!(
        (row.stream_version, row.last_position, row.updated_at),
        (1, 2, time_of(2)),
        "the order's own stream"
    );

    // A second attempt: authorized, captured, refunded in parts.
    let steps: Vec<(DomainEvent, PaymentPart)> = vec![
        (
            authorized(pays[1], a, 1250),
            (
                PaymentStatus::Authorized,
                Some(pays[1]),
                Some("EUR".into()),
                (1250, 0, 0),
                None,
                Some(time_of(3)),
                2,
            ),
        ),
        (
            captured(pays[1], a, 1250),
            (
                PaymentStatus::Captured,
                Some(pays[1]),
                Some("EUR".into()),
                (1250, 1250, 0),
                None,
                Some(time_of(4)),
                2,
            ),
        ),
        (
            refunded(pays[1], a, 250),
            (
                PaymentStatus::Captured,
                Some(pays[1]),
                Some("EUR".into()),
                (1250, 1250, 250),
                None,
                Some(time_of(5)),
                2,
            ),
        ),
        // A later attempt that failed does not hide the one that holds money.
        (
            declined(pays[2], a, "limit reached"),
            (
                PaymentStatus::Captured,
                Some(pays[1]),
                Some("EUR".into()),
                (1250, 1250, 250),
                None,
                Some(time_of(5)),
                3,
            ),
        ),
        (
            refunded(pays[1], a, 1000),
            (
                PaymentStatus::Refunded,
                Some(pays[1]),
                Some("EUR".into()),
                (1250, 1250, 1250),
                None,
                Some(time_of(7)),
                3,
            ),
        ),
    ];
    for (event, expected) in steps {
        let event = log.push(event);
        dash.apply(&batch(&[event])).await.unwrap();
        let row = dashboard::get_order(&db, 1, a).await.unwrap().unwrap();
        assert_eq!(payment_part(&row), expected);
        assert_eq!(payment_part(&row), expected_payment(&log.events, a, u64::MAX));
    }

    // Voided before its authorization, which arrives later and is released at once (one
    // append); and two live attempts, the later one shown.
    let events = vec![
        log.push(voided(pays[3], b, None, "too late")),
        log.push(placed(b, alice, snapshot, &[1], Currency::EUR, 0)),
        log.push(placed(c, alice, snapshot, &[2], Currency::EUR, 0)),
        log.push(authorized(pays[4], c, 500)),
        log.push(authorized(pays[5], c, 500)),
    ];
    dash.apply(&batch(&events)).await.unwrap();
    let row = dashboard::get_order(&db, 1, b).await.unwrap().unwrap();
    assert_eq!(
        payment_part(&row),
        (
            PaymentStatus::Voided,
            Some(pays[3]),
            None,
            (0, 0, 0),
            Some("too late".to_owned()),
            Some(time_of(8)),
            1
        )
    );
    let late = [
        log.push(authorized(pays[3], b, 250)),
        log.push(voided(pays[3], b, Some(250), "too late")),
        log.push(captured(pays[4], c, 500)),
    ];
    dash.apply(&batch(&late)).await.unwrap();
    let row = dashboard::get_order(&db, 1, b).await.unwrap().unwrap();
    assert_eq!(
        payment_part(&row),
        (
            PaymentStatus::Voided,
            Some(pays[3]),
            Some("EUR".into()),
            (250, 0, 0),
            Some("too late".to_owned()),
            Some(time_of(14)),
            1
        )
    );
    let row = dashboard::get_order(&db, 1, c).await.unwrap().unwrap();
    assert_eq!(
        (row.payment_status, row.payment_id, row.payment_count),
        (PaymentStatus::Authorized, Some(pays[5]), 2),
        "the attempt started latest"
    );
    for order in [a, b, c] {
        let row = dashboard::get_order(&db, 1, order).await.unwrap().unwrap();
        assert_eq!(payment_part(&row), expected_payment(&log.events, order, u64::MAX));
    }

    // Lists show the same rows; a replay of the payments changes nothing.
    let page = dashboard::list_orders(&db, 1, &OrderFilter::default(), Sort::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(page.rows.len(), 3);
    for row in &page.rows {
        assert_eq!(
            Some(row),
            dashboard::get_order(&db, 1, row.order_id).await.unwrap().as_ref()
        );
    }
    let once = dump(&db, 1).await;
    assert_eq!(once["payments"].len(), 6);
    assert_eq!(once["payment_history"].len(), 12);
    dash.apply(&batch(&log.events)).await.unwrap();
    assert_eq!(dump(&db, 1).await, once, "a replay of everything");

    // As of each position of the orders log: the payments as of its commit time.
    for position in 0..=log.events.len() as u64 {
        let orders_cut = log
            .events
            .iter()
            .filter(|e| e.position <= position && matches!(e.event, DomainEvent::Order(_)))
            .map(|e| e.position)
            .max()
            .unwrap_or(0);
        for order in [a, b, c] {
            let then = dashboard::get_order_as_of(&db, 1, order, AsOf::Position(position))
                .await
                .unwrap();
            let by_time = dashboard::get_order_as_of(&db, 1, order, AsOf::Time(time_of(position)))
                .await
                .unwrap();
            if let Some(row) = &then {
                assert_eq!(
                    payment_part(row),
                    expected_payment(&log.events, order, orders_cut),
                    "order {order} at orders position {position}"
                );
            }
            if let Some(row) = &by_time {
                assert_eq!(
                    payment_part(row),
                    expected_payment(&log.events, order, position),
                    "order {order} at the time of position {position}"
                );
            }
        }
    }
}

#[tokio::test]
async fn payments_show_on_their_order_postgres() {
    payments(Server::Postgres).await;
}

#[tokio::test]
async fn payments_show_on_their_order_sqlite() {
    payments(Server::Sqlite).await;
}

/// An order's place-order saga, from its own stream (a topic of its own: before or after the
/// order's events), drives the row's `saga_state` through every phase; the cancellation's
/// reason code shows beside the free text and filters lists; "as of" shows both as they were.
async fn sagas(server: Server) {
    let db = read_db(server).await;
    let dash = dashboard(&db, 1).await;
    let alice = Uuid::new_v4();
    let snapshot = ("Alice", "alice@example.com");
    let (a, b, c, d, e) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    let mut log = Log::default();
    let state_of = |order: Uuid| {
        let db = db.clone();
        async move {
            let row = dashboard::get_order(&db, 1, order).await.unwrap().unwrap();
            (row.saga_state, row.reason_code)
        }
    };

    // a: the saga's start reaches the dashboard before the order's placement.
    let early = log.push(saga_started(a, 2));
    dash.apply(&batch(&[early])).await.unwrap();
    assert_eq!(dashboard::get_order(&db, 1, a).await.unwrap(), None, "no order yet");
    let placed_a = log.push(placed(a, alice, snapshot, &[1, 2], Currency::EUR, 0));
    dash.apply(&batch(&[placed_a])).await.unwrap();
    let row = dashboard::get_order(&db, 1, a).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.saga_state, row.saga_updated_at),
        (OrderStatus::Pending, Some(SagaState::Reserving), Some(time_of(1)))
    );
    assert_eq!(
        (row.stream_version, row.last_position),
        (1, 2),
        "the order's own stream"
    );
    let steps = [
        (vec![saga_reserved(a, 0)], SagaState::Reserving),
        (vec![saga_reserved(a, 1)], SagaState::Authorizing),
        (vec![saga_authorized(a)], SagaState::Confirming),
        (vec![saga_confirmed(a), confirmed(a)], SagaState::AwaitingShipment),
        (
            vec![shipped(a, "DHL", "T-1"), saga_captured(a)],
            SagaState::AwaitingShipment,
        ),
        (vec![saga_completed(a, "captured")], SagaState::Completed),
    ];
    for (events, expected) in steps {
        let events: Vec<ProjectedEvent> = events.into_iter().map(|e| log.push(e)).collect();
        dash.apply(&batch(&events)).await.unwrap();
        let row = dashboard::get_order(&db, 1, a).await.unwrap().unwrap();
        assert_eq!(
            row.saga_state,
            Some(expected),
            "after {:?}",
            events.last().map(|e| e.event.event_type())
        );
        assert_eq!(row.saga_updated_at, expected_saga(&log.events, a, u64::MAX).1);
        assert_eq!(row.reason_code, None);
    }

    // b: parked at the authorization, resumed, declined: it compensates and cancels the order
    // with its reason code.
    let steps = [
        (
            vec![
                placed(b, alice, snapshot, &[1], Currency::EUR, 0),
                saga_started(b, 1),
                saga_reserved(b, 0),
            ],
            (Some(SagaState::Authorizing), None),
        ),
        (vec![saga_parked(b)], (Some(SagaState::Parked), None)),
        (vec![saga_resumed(b)], (Some(SagaState::Authorizing), None)),
        (
            vec![saga_failed(b, "payment_declined")],
            (Some(SagaState::Compensating), None),
        ),
        (vec![saga_released(b, 0)], (Some(SagaState::Compensating), None)),
        (
            vec![
                cancelled_for(b, "the card was declined", "payment_declined"),
                saga_order_cancelled(b, "payment_declined"),
            ],
            (Some(SagaState::Compensating), Some("payment_declined".to_owned())),
        ),
        (
            vec![saga_completed(b, "cancelled")],
            (Some(SagaState::Completed), Some("payment_declined".to_owned())),
        ),
    ];
    for (events, expected) in steps {
        let events: Vec<ProjectedEvent> = events.into_iter().map(|e| log.push(e)).collect();
        dash.apply(&batch(&events)).await.unwrap();
        assert_eq!(state_of(b).await, expected);
    }
    let row = dashboard::get_order(&db, 1, b).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.cancel_reason.as_deref()),
        (OrderStatus::Cancelled, Some("the card was declined")),
        "the free text beside the code"
    );

    // c: timed out while reserving, compensated, then a reservation recorded late gives the
    // compensation work again, until it completes once more. Parked, then abandoned: failed.
    let steps = [
        (
            vec![
                placed(c, alice, snapshot, &[1, 1], Currency::EUR, 0),
                saga_started(c, 2),
                saga_reserved(c, 0),
                saga_parked(c),
            ],
            (Some(SagaState::Parked), None),
        ),
        (vec![saga_failed(c, "abandoned")], (Some(SagaState::Compensating), None)),
        (
            vec![
                saga_released(c, 0),
                saga_order_cancelled(c, "abandoned"),
                cancelled_for(c, "abandoned by ops", "abandoned"),
                saga_completed(c, "cancelled"),
            ],
            (Some(SagaState::Completed), Some("abandoned".to_owned())),
        ),
        (
            vec![saga_reserved(c, 1)],
            (Some(SagaState::Compensating), Some("abandoned".to_owned())),
        ),
        (
            vec![saga_released(c, 1), saga_completed(c, "cancelled")],
            (Some(SagaState::Completed), Some("abandoned".to_owned())),
        ),
    ];
    for (events, expected) in steps {
        let events: Vec<ProjectedEvent> = events.into_iter().map(|e| log.push(e)).collect();
        dash.apply(&batch(&events)).await.unwrap();
        assert_eq!(state_of(c).await, expected);
    }

    // d: placed before the saga existed, and cancelled without a code: neither shows.
    let old = [
        log.push(placed(d, alice, snapshot, &[3], Currency::EUR, 0)),
        log.push(cancelled(d, "changed mind")),
        // e: a saga of an order this dashboard never sees: kept, shown by no row.
        log.push(saga_started(e, 1)),
        log.push(saga_failed(e, "timed_out")),
    ];
    dash.apply(&batch(&old)).await.unwrap();
    let row = dashboard::get_order(&db, 1, d).await.unwrap().unwrap();
    assert_eq!(
        (
            row.status,
            row.cancel_reason.as_deref(),
            row.reason_code,
            row.saga_state,
            row.saga_updated_at
        ),
        (OrderStatus::Cancelled, Some("changed mind"), None, None, None)
    );
    assert_eq!(dashboard::get_order(&db, 1, e).await.unwrap(), None);

    // Every order equals the fold of the log; lists show the same rows.
    for order in [a, b, c, d] {
        assert_eq!(
            dashboard::get_order(&db, 1, order).await.unwrap(),
            fold_up_to(&log.events, order, u64::MAX),
            "order {order}"
        );
    }
    let page = dashboard::list_orders(&db, 1, &OrderFilter::default(), Sort::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(page.rows.len(), 4);
    for row in &page.rows {
        assert_eq!(
            Some(row),
            dashboard::get_order(&db, 1, row.order_id).await.unwrap().as_ref()
        );
    }

    // The reason code filters lists, alone or with the other filters, now and "as of".
    let listed = |reason_code: Option<&str>, status: Option<OrderStatus>, as_of: Option<AsOf>| {
        let db = db.clone();
        let filter = OrderFilter {
            reason_code: reason_code.map(str::to_owned),
            status,
            ..OrderFilter::default()
        };
        async move {
            let page = match as_of {
                Some(as_of) => dashboard::list_orders_as_of(&db, 1, as_of, &filter, Sort::default(), None, 10).await,
                None => dashboard::list_orders(&db, 1, &filter, Sort::default(), None, 10).await,
            };
            page.unwrap().rows.iter().map(|r| r.order_id).collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(Some("payment_declined"), None, None).await, vec![b]);
    assert_eq!(
        listed(Some("abandoned"), Some(OrderStatus::Cancelled), None).await,
        vec![c]
    );
    assert_eq!(
        listed(Some("abandoned"), Some(OrderStatus::Pending), None).await,
        Vec::<Uuid>::new()
    );
    assert_eq!(listed(Some("requested"), None, None).await, Vec::<Uuid>::new());
    assert_eq!(listed(None, Some(OrderStatus::Cancelled), None).await, vec![d, c, b]);
    let b_cancelled = log
        .events
        .iter()
        .find(|e| matches!(&e.event, DomainEvent::Order(OrderEvent::Cancelled(x)) if x.order_id == b))
        .unwrap()
        .position;
    assert_eq!(
        listed(Some("payment_declined"), None, Some(AsOf::Position(b_cancelled - 1))).await,
        Vec::<Uuid>::new(),
        "not cancelled yet then"
    );
    assert_eq!(
        listed(Some("payment_declined"), None, Some(AsOf::Position(b_cancelled))).await,
        vec![b]
    );
    assert_eq!(
        listed(Some("payment_declined"), None, Some(AsOf::Time(time_of(b_cancelled)))).await,
        vec![b]
    );

    // As of every position: the saga's version valid at that position of the orders log
    // (sagas are in it), and at the time of each position.
    for position in 0..=log.events.len() as u64 + 1 {
        for order in [a, b, c, d] {
            let then = dashboard::get_order_as_of(&db, 1, order, AsOf::Position(position))
                .await
                .unwrap();
            let expected = fold_up_to(&log.events, order, position);
            // Every event of this log is the orders service's: one log, one position axis.
            assert_eq!(then, expected, "order {order} at orders position {position}");
            let by_time = dashboard::get_order_as_of(&db, 1, order, AsOf::Time(time_of(position)))
                .await
                .unwrap();
            assert_eq!(by_time, expected, "order {order} at the time of position {position}");
        }
    }
    let then = dashboard::get_order_as_of(&db, 1, b, AsOf::Position(b_cancelled - 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (then.saga_state, then.reason_code),
        (Some(SagaState::Compensating), None),
        "not a vacuous comparison"
    );

    // A replay of everything changes nothing.
    let once = dump(&db, 1).await;
    assert_eq!(once["sagas"].len(), 4);
    let saga_events = log
        .events
        .iter()
        .filter(|e| matches!(e.event, DomainEvent::Saga(_)))
        .count();
    assert_eq!(once["saga_history"].len(), saga_events, "a version per saga event");
    dash.apply(&batch(&log.events)).await.unwrap();
    assert_eq!(dump(&db, 1).await, once, "a replay of everything");
    // And the same log event by event, in another interleaving of the streams, gives the same
    // tables.
    let single = dashboard(&db, 2).await;
    let mut by_stream: BTreeMap<String, Vec<ProjectedEvent>> = BTreeMap::new();
    for event in &log.events {
        by_stream
            .entry(event.stream_id.clone())
            .or_default()
            .push(event.clone());
    }
    for event in interleave(&mut Rng(0x5a6a), by_stream.into_values().collect()) {
        single.apply(&batch(std::slice::from_ref(&event))).await.unwrap();
    }
    assert_eq!(dump(&db, 2).await, once, "one event per batch, streams interleaved");
}

#[tokio::test]
async fn sagas_drive_the_saga_state_postgres() {
    sagas(Server::Postgres).await;
}

#[tokio::test]
async fn sagas_drive_the_saga_state_sqlite() {
    sagas(Server::Sqlite).await;
}

/// A version made before the saga (its tables as that build made them: no saga tables, no
/// reason code column, no index on it, its pending orders stored as `placed`) is upgraded in
/// place by `prepare`: what it held stays, and from then on it shows saga states (also of a saga
/// whose start it never saw) and reason codes, and filters by them.
async fn upgrade(server: Server) {
    const BEFORE_SAGA: &str = include_str!("fixtures/dashboard_before_saga.sql");
    let db = read_db(server).await;
    let prefix = dashboard::table_prefix(1);
    sqlx::raw_sql(sqlx::AssertSqlSafe(BEFORE_SAGA.replace("{prefix}", &prefix)))
        .execute(db.pool())
        .await
        .unwrap();
    // An order that build applied: placed (stored as `placed` then), at position 1.
    let (alice, a) = (Uuid::new_v4(), Uuid::new_v4());
    let at = time_of(1).timestamp_micros();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {prefix}orders (order_id, customer_id, customer_name, customer_email, snapshot_name,
                snapshot_email, status, item_count, total_minor, currency, placed_at_us, stream_version,
                last_position, updated_at_us)
         VALUES ($1, $2, 'Alice', 'alice@example.com', 'Alice', 'alice@example.com', 'placed', 1, 250, 'EUR',
                 $3, 1, 1, $3)"
    )))
    .bind(a.to_string())
    .bind(alice.to_string())
    .bind(at)
    .execute(db.pool())
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {prefix}order_history (order_id, stream_version, valid_from_position, valid_from_us,
                customer_id, snapshot_name, snapshot_email, status, item_count, total_minor, currency, placed_at_us)
         VALUES ($1, 1, 1, $3, $2, 'Alice', 'alice@example.com', 'placed', 1, 250, 'EUR', $3)"
    )))
    .bind(a.to_string())
    .bind(alice.to_string())
    .bind(at)
    .execute(db.pool())
    .await
    .unwrap();
    assert!(
        dashboard::get_order(&db, 1, a).await.is_err(),
        "this build cannot read the old tables as they are"
    );

    let dash = dashboard(&db, 1).await;
    dash.prepare().await.expect("an upgrade is idempotent");
    assert!(
        schema(&db, 1)
            .await
            .iter()
            .any(|row| row.contains("orders_by_reason_code")),
        "the reason code's index is built"
    );
    let row = dashboard::get_order(&db, 1, a).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.reason_code, row.saga_state, row.total_minor),
        (OrderStatus::Pending, None, None, 250),
        "what it held stays"
    );
    // The order's saga started before the upgrade: its next events make its row; its
    // cancellation carries its code.
    let mut log = Log::default();
    log.push(placed(a, alice, ("Alice", "alice@example.com"), &[1], Currency::EUR, 0));
    let after = [
        log.push(saga_reserved(a, 0)),
        log.push(saga_authorized(a)),
        log.push(saga_failed(a, "timed_out")),
        log.push(cancelled_for(a, "deadline passed", "timed_out")),
    ];
    dash.apply(&batch(&after)).await.unwrap();
    let row = dashboard::get_order(&db, 1, a).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.reason_code.as_deref(), row.saga_state),
        (OrderStatus::Cancelled, Some("timed_out"), Some(SagaState::Compensating))
    );
    let then = dashboard::get_order_as_of(&db, 1, a, AsOf::Position(after[1].position))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (then.status, then.saga_state, then.reason_code),
        (OrderStatus::Pending, Some(SagaState::Confirming), None)
    );
    let page = dashboard::list_orders(
        &db,
        1,
        &OrderFilter {
            reason_code: Some("timed_out".to_owned()),
            ..OrderFilter::default()
        },
        Sort::default(),
        None,
        10,
    )
    .await
    .unwrap();
    assert_eq!(page.rows.iter().map(|r| r.order_id).collect::<Vec<_>>(), vec![a]);
    assert!(db.dead_letters(dashboard::NAME, 1).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_version_made_before_the_saga_is_upgraded_in_place_postgres() {
    upgrade(Server::Postgres).await;
}

#[tokio::test]
async fn a_version_made_before_the_saga_is_upgraded_in_place_sqlite() {
    upgrade(Server::Sqlite).await;
}

/// An apply that cannot take the writer lock fails, and leaves its connection fit for the next
/// apply (not inside an aborted transaction that the pool hands out again).
#[tokio::test]
async fn an_apply_that_cannot_take_the_lock_leaves_its_connection_usable() {
    let database = testkit::postgres::fresh_database().await;
    // One connection, so the second apply gets the first one's; lock waits end after 200 ms.
    let separator = if database.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{separator}options=-c%20lock_timeout%3D200", database.url);
    let db = ReadDb::connect(&url, 1).await.expect("connect");
    db.migrate().await.expect("control tables");
    let dash = dashboard(&db, 1).await;
    let mut log = Log::default();
    let alice = Uuid::new_v4();
    log.push(registered(alice, "Alice", "alice@example.com"));

    let other = database.pool(1).await;
    let mut holder = other.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO order_dashboard_v1_writer (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = excluded.id",
    )
    .execute(&mut *holder)
    .await
    .expect("another session takes the writer lock");
    dash.apply(&batch(&log.events))
        .await
        .expect_err("the lock wait times out");
    holder.rollback().await.expect("rollback");

    dash.apply(&batch(&log.events))
        .await
        .expect("the next apply, on the same connection");
    let checkpoints = dash.checkpoints().await.expect("checkpoints");
    assert_eq!(checkpoints.len(), 1);
    assert_eq!(checkpoints[0].position, 1);
}

// ---------------------------------------------------------------------------------------------
// Replays

async fn replay(server: Server) {
    let db = read_db(server).await;
    let dash = dashboard(&db, 1).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let orders: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let mut log = Log::default();
    log.push(registered(alice, "Alice", "alice@example.com"));
    log.push(placed(
        orders[0],
        alice,
        ("Alice", "alice@example.com"),
        &[1],
        Currency::EUR,
        0,
    ));
    log.push(placed(
        orders[1],
        bob,
        ("Bob", "bob@example.com"),
        &[2],
        Currency::USD,
        0,
    ));
    log.push(confirmed(orders[0]));
    log.push(renamed(alice, "Alice B."));
    log.push(placed(
        orders[2],
        alice,
        ("Alice B.", "alice@example.com"),
        &[3],
        Currency::EUR,
        0,
    ));
    log.push(cancelled(orders[1], "changed mind"));
    log.push(registered(bob, "Robert", "bob@example.com"));
    log.push(shipped(orders[0], "UPS", "1Z"));
    log.push(email_changed(alice, "ab@example.com"));
    let (declined_payment, payment) = (Uuid::new_v4(), Uuid::new_v4());
    log.push(declined(declined_payment, orders[3], "insufficient funds"));
    log.push(placed(
        orders[3],
        bob,
        ("Robert", "bob@example.com"),
        &[1, 1],
        Currency::USD,
        0,
    ));
    log.push(cancelled(orders[2], "late"));
    log.push(authorized(payment, orders[0], 250));
    log.push(captured(payment, orders[0], 250));
    log.push(refunded(payment, orders[0], 100));
    let events = log.events.clone();
    let (b1, b2) = events.split_at(6);
    dash.apply(&batch(b1)).await.unwrap();
    dash.apply(&batch(b2)).await.unwrap();
    let once = dump(&db, 1).await;
    assert_eq!(once["orders"].len(), 4);
    assert_eq!(once["order_history"].len(), 8);
    assert_eq!(once["customer_history"].len(), 4);
    assert_eq!(once["payments"].len(), 2);
    assert_eq!(once["payment_history"].len(), 4);

    // The same batches again, an overlapping one, and everything at once: nothing changes.
    dash.apply(&batch(b1)).await.unwrap();
    assert_eq!(dump(&db, 1).await, once, "replay of the first batch");
    dash.apply(&batch(b2)).await.unwrap();
    assert_eq!(dump(&db, 1).await, once, "replay of the second batch");
    dash.apply(&batch(&events[3..9])).await.unwrap();
    assert_eq!(dump(&db, 1).await, once, "an overlapping batch");
    let mut doubled = events.clone();
    doubled.extend(events.iter().cloned());
    dash.apply(&batch(&doubled)).await.unwrap();
    assert_eq!(dump(&db, 1).await, once, "every event twice in one batch");
    let checkpoints = dash.checkpoints().await.unwrap();
    let orders_log = checkpoints
        .iter()
        .find(|c| c.source == store_source(Service::Orders))
        .unwrap();
    assert_eq!(orders_log.offset, 13, "a replay never moves the checkpoint back");

    // The same log applied event by event gives the same tables.
    let single = dashboard(&db, 2).await;
    for event in &events {
        single.apply(&batch(std::slice::from_ref(event))).await.unwrap();
    }
    assert_eq!(dump(&db, 2).await, once, "one event per batch");

    let row = dashboard::get_order(&db, 1, orders[0]).await.unwrap().unwrap();
    assert_eq!(
        (row.customer_name.as_str(), row.customer_email.as_str()),
        ("Alice B.", "ab@example.com")
    );
    let row = dashboard::get_order(&db, 1, orders[1]).await.unwrap().unwrap();
    assert_eq!(row.customer_name, "Robert", "a registration after the order renames it");
    let row = dashboard::get_order(&db, 1, orders[0]).await.unwrap().unwrap();
    assert_eq!(
        (row.payment_status, row.captured_minor, row.refunded_minor),
        (PaymentStatus::Captured, 250, 100),
        "partly refunded"
    );
    let row = dashboard::get_order(&db, 1, orders[3]).await.unwrap().unwrap();
    assert_eq!(
        (row.payment_status, row.payment_reason.as_deref()),
        (PaymentStatus::Declined, Some("insufficient funds"))
    );
}

#[tokio::test]
async fn replay_changes_nothing_postgres() {
    replay(Server::Postgres).await;
}

#[tokio::test]
async fn replay_changes_nothing_sqlite() {
    replay(Server::Sqlite).await;
}

// ---------------------------------------------------------------------------------------------
// Customer summary

async fn summary(server: Server) {
    let db = read_db(server).await;
    let dash = dashboard(&db, 1).await;
    let (alice, ghost) = (Uuid::new_v4(), Uuid::new_v4());
    let orders: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    let mut log = Log::default();
    log.push(registered(alice, "Alice", "alice@example.com"));
    log.push(placed(
        orders[0],
        alice,
        ("Alice", "alice@example.com"),
        &[4],
        Currency::EUR,
        0,
    )); // 1000 EUR
    log.push(placed(
        orders[1],
        alice,
        ("Alice", "alice@example.com"),
        &[2],
        Currency::EUR,
        0,
    )); // 500 EUR
    log.push(placed(
        orders[2],
        alice,
        ("Alice", "alice@example.com"),
        &[2],
        Currency::USD,
        100,
    )); // 700 USD
    log.push(cancelled(orders[1], "duplicate"));
    log.push(renamed(alice, "Alice Smith"));
    // A customer the dashboard only knows from its orders' snapshots: the latest one wins.
    log.push(placed(
        orders[3],
        ghost,
        ("Ghost", "g@example.com"),
        &[1],
        Currency::GBP,
        0,
    ));
    log.push(placed(
        orders[4],
        ghost,
        ("Ghost Two", "g2@example.com"),
        &[1],
        Currency::GBP,
        0,
    ));
    // Applied newest first: the summary must still hold the latest snapshot.
    let mut events = log.events.clone();
    events.swap(6, 7);
    dash.apply(&batch(&events[..7])).await.unwrap();
    dash.apply(&batch(&events[7..])).await.unwrap();

    let summary = dashboard::customer_summary(&db, 1, alice)
        .await
        .unwrap()
        .expect("alice");
    assert_eq!(
        (summary.name.as_str(), summary.email.as_str()),
        ("Alice Smith", "alice@example.com")
    );
    assert_eq!(summary.stream_version, 2);
    assert_eq!(summary.order_count, 3);
    let totals: Vec<(&str, u64, i64)> = summary
        .lifetime_value
        .iter()
        .map(|t| (t.currency.as_str(), t.order_count, t.lifetime_value_minor))
        .collect();
    assert_eq!(totals, vec![("EUR", 2, 1000), ("USD", 1, 700)]);
    let last = summary.last_order.expect("last order");
    assert_eq!((last.order_id, last.placed_at), (orders[2], time_of(4)));

    let ghost_summary = dashboard::customer_summary(&db, 1, ghost)
        .await
        .unwrap()
        .expect("ghost");
    assert_eq!(ghost_summary.stream_version, 0);
    assert_eq!(ghost_summary.name, "Ghost Two");
    assert_eq!(ghost_summary.order_count, 2);
    assert_eq!(ghost_summary.last_order.map(|l| l.order_id), Some(orders[4]));
    // Without the customer's own events each order keeps its snapshot.
    let first = dashboard::get_order(&db, 1, orders[3]).await.unwrap().unwrap();
    assert_eq!(first.customer_name, "Ghost");
    // Its registration (arriving late) puts the real name on every order.
    let mut late = Log::default();
    let mut registration = late.push(registered(ghost, "Casper", "casper@example.com"));
    registration.position = 100;
    registration.origin = Origin::store(event_schemas::Service::Customers, 100);
    dash.apply(&batch(&[registration])).await.unwrap();
    for order in &orders[3..] {
        let row = dashboard::get_order(&db, 1, *order).await.unwrap().unwrap();
        assert_eq!(
            (row.customer_name.as_str(), row.customer_email.as_str()),
            ("Casper", "casper@example.com")
        );
    }
    let ghost_summary = dashboard::customer_summary(&db, 1, ghost).await.unwrap().unwrap();
    assert_eq!(
        (ghost_summary.name.as_str(), ghost_summary.stream_version),
        ("Casper", 1)
    );
    assert_eq!(ghost_summary.lifetime_value[0].lifetime_value_minor, 500);

    assert_eq!(dashboard::customer_summary(&db, 1, Uuid::new_v4()).await.unwrap(), None);
}

#[tokio::test]
async fn customer_summary_postgres() {
    summary(Server::Postgres).await;
}

#[tokio::test]
async fn customer_summary_sqlite() {
    summary(Server::Sqlite).await;
}

// ---------------------------------------------------------------------------------------------
// Convergence (invariant 6)

/// A small deterministic generator (the property test draws its seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Random customers (some only known from snapshots) with renames and email changes, orders
/// for them with random lifecycles and none, one or two payments each, interleaved into one log
/// in position order.
fn random_log(rng: &mut Rng) -> Vec<ProjectedEvent> {
    let customers: Vec<Uuid> = (0..1 + rng.below(4)).map(|_| Uuid::new_v4()).collect();
    let mut streams: Vec<Vec<DomainEvent>> = Vec::new();
    // Each customer stream: registered (unless unknown), then changes.
    let mut known = HashMap::new();
    for (i, customer) in customers.iter().enumerate() {
        if rng.chance(80) {
            let mut stream = vec![registered(*customer, &format!("c{i}"), &format!("c{i}@example.com"))];
            for change in 0..rng.below(4) {
                stream.push(if rng.chance(50) {
                    renamed(*customer, &format!("c{i} renamed {change}"))
                } else {
                    email_changed(*customer, &format!("c{i}.{change}@example.com"))
                });
            }
            streams.push(stream);
            known.insert(*customer, i);
        }
    }
    let currencies = [Currency::EUR, Currency::USD];
    for _ in 0..1 + rng.below(6) {
        let order = Uuid::new_v4();
        let customer = customers[rng.below(customers.len())];
        let snapshot = format!("snapshot {}", rng.below(3));
        let quantities: Vec<i64> = (0..1 + rng.below(3)).map(|_| 1 + rng.below(5) as i64).collect();
        let mut stream = vec![placed(
            order,
            customer,
            (&snapshot, &format!("{snapshot}@example.com")),
            &quantities,
            currencies[rng.below(2)],
            rng.below(1000) as i64,
        )];
        match rng.below(6) {
            0 => {}
            1 => stream.push(confirmed(order)),
            2 => stream.extend([confirmed(order), shipped(order, "DHL", "T")]),
            3 => stream.extend([confirmed(order), shipped(order, "DHL", "T"), delivered(order)]),
            4 => stream.push(cancelled_for(order, "no", random_code(rng))),
            _ => stream.extend([confirmed(order), cancelled_for(order, "late", random_code(rng))]),
        }
        // Its payments, each a stream of the payments' log: their events may come before the
        // order's placement as well as after.
        for _ in 0..rng.below(3) {
            streams.push(random_payment(rng, order, total_of(&stream[0])));
        }
        // Its saga (most orders; older ones have none), a stream of its own, delivered through
        // a topic of its own: before the placement as well as after.
        if rng.chance(75) {
            streams.push(random_saga(rng, order, quantities.len()));
        }
        streams.push(stream);
    }
    let mut log = Log::default();
    for event in interleave(rng, streams) {
        log.push(event);
    }
    log.events
}

/// A random interleaving of `streams` that keeps each stream's order.
fn interleave<T>(rng: &mut Rng, streams: Vec<Vec<T>>) -> Vec<T> {
    let mut queues: Vec<std::collections::VecDeque<T>> = streams.into_iter().map(Into::into).collect();
    let mut out = Vec::new();
    loop {
        let open: Vec<usize> = (0..queues.len()).filter(|i| !queues[*i].is_empty()).collect();
        if open.is_empty() {
            return out;
        }
        let pick = open[rng.below(open.len())];
        out.extend(queues[pick].pop_front());
    }
}

/// Applies `log` to version 1 in position order at once, and to version 2 as the partitions
/// would deliver it: another interleaving across streams, random batches, random replays of
/// what was already delivered. The tables must be equal.
async fn converge(db: &ReadDb, seed: u64) {
    let mut rng = Rng(seed | 1);
    let log = random_log(&mut rng);
    let canonical = dashboard(db, 1).await;
    canonical.apply(&batch(&log)).await.unwrap();

    let mut by_stream: BTreeMap<String, Vec<ProjectedEvent>> = BTreeMap::new();
    for event in &log {
        by_stream
            .entry(event.stream_id.clone())
            .or_default()
            .push(event.clone());
    }
    let delivery = interleave(&mut rng, by_stream.into_values().collect());
    let shuffled = dashboard(db, 2).await;
    let mut delivered = 0;
    while delivered < delivery.len() {
        let size = 1 + rng.below(5);
        let end = (delivered + size).min(delivery.len());
        let mut events = delivery[delivered..end].to_vec();
        if delivered > 0 && rng.chance(40) {
            // A replay: a worker restarted from an older checkpoint.
            let from = rng.below(delivered);
            let mut replayed = delivery[from..delivered].to_vec();
            replayed.append(&mut events);
            events = replayed;
        }
        shuffled.apply(&batch(&events)).await.unwrap();
        delivered = end;
    }
    let (expected, actual) = (dump(db, 1).await, dump(db, 2).await);
    for table in TABLES {
        assert_eq!(actual[table], expected[table], "table {table}, seed {seed}");
    }
    // And every order shows its customer's final name, or its snapshot when the customer's
    // stream is unknown.
    let mut names: HashMap<Uuid, (String, String)> = HashMap::new();
    for event in &log {
        if let DomainEvent::Customer(customer) = &event.event {
            let entry = names.entry(customer.customer_id()).or_default();
            match customer {
                CustomerEvent::Registered(e) => *entry = (e.name.clone(), e.email.clone()),
                CustomerEvent::Renamed(e) => entry.0.clone_from(&e.name),
                CustomerEvent::EmailChanged(e) => entry.1.clone_from(&e.email),
            }
        }
    }
    for event in &log {
        if let DomainEvent::Order(OrderEvent::Placed(p)) = &event.event {
            let row = dashboard::get_order(db, 2, p.order_id).await.unwrap().unwrap();
            let expected = names
                .get(&p.customer_id)
                .cloned()
                .unwrap_or_else(|| (p.customer.name.clone(), p.customer.email.clone()));
            assert_eq!(
                (&row.customer_name, &row.customer_email),
                (&expected.0, &expected.1),
                "seed {seed}"
            );
            assert_eq!(
                payment_part(&row),
                expected_payment(&log, p.order_id, u64::MAX),
                "payment of order {}, seed {seed}",
                p.order_id
            );
            assert_eq!(
                (row.saga_state, row.saga_updated_at),
                expected_saga(&log, p.order_id, u64::MAX),
                "saga of order {}, seed {seed}",
                p.order_id
            );
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    #[test]
    fn converges_whatever_the_interleaving_sqlite(seed in proptest::prelude::any::<u64>()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let db = read_db(Server::Sqlite).await;
            converge(&db, seed).await;
        });
    }
}

/// Applies `events` in batches of `sizes`, letting other tasks run between them.
async fn apply_in_batches(worker: &OrderDashboard, events: &[ProjectedEvent], sizes: &[usize]) {
    let mut delivered = 0;
    for size in sizes {
        if delivered >= events.len() {
            break;
        }
        let end = (delivered + size).min(events.len());
        worker.apply(&batch(&events[delivered..end])).await.unwrap();
        delivered = end;
        tokio::task::yield_now().await;
    }
}

/// Two workers apply their halves of the log's streams at the same time, as two replicas own
/// different partitions: the tables must equal one apply of the whole log. Whatever lets
/// workers apply side by side must not lose an update between them (a customer's row, or the
/// name on its orders, written by both).
async fn converge_side_by_side(db: &ReadDb, seed: u64) {
    let mut rng = Rng(seed | 1);
    let log = random_log(&mut rng);
    let canonical = dashboard(db, 1).await;
    canonical.apply(&batch(&log)).await.unwrap();

    let mut halves: [Vec<ProjectedEvent>; 2] = [Vec::new(), Vec::new()];
    let mut owner: HashMap<String, usize> = HashMap::new();
    for event in &log {
        let half = *owner.entry(event.stream_id.clone()).or_insert_with(|| rng.below(2));
        halves[half].push(event.clone());
    }
    let workers = [dashboard(db, 2).await, dashboard(db, 2).await];
    let [first, second] = halves;
    let (mut rng_a, mut rng_b) = (Rng(rng.next() | 1), Rng(rng.next() | 1));
    let sizes_a: Vec<usize> = (0..first.len()).map(|_| 1 + rng_a.below(3)).collect();
    let sizes_b: Vec<usize> = (0..second.len()).map(|_| 1 + rng_b.below(3)).collect();
    tokio::join!(
        apply_in_batches(&workers[0], &first, &sizes_a),
        apply_in_batches(&workers[1], &second, &sizes_b)
    );
    let (expected, actual) = (dump(db, 1).await, dump(db, 2).await);
    for table in TABLES {
        assert_eq!(actual[table], expected[table], "table {table}, seed {seed}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    #[test]
    fn two_workers_side_by_side_converge_postgres(seed in proptest::prelude::any::<u64>()) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let db = read_db(Server::Postgres).await;
            converge_side_by_side(&db, seed).await;
        });
    }
}

proptest::proptest! {
    // PostgreSQL writes a batch in one statement, SQLite statement by statement: both converge.
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]

    #[test]
    fn converges_whatever_the_interleaving_postgres(seed in proptest::prelude::any::<u64>()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let db = read_db(Server::Postgres).await;
            converge(&db, seed).await;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// As of (invariant 7)

/// The order as a fold of the log up to `position` (the write side's view), with the customer's
/// name and email and its payment as of then.
fn fold_up_to(log: &[ProjectedEvent], order_id: Uuid, position: u64) -> Option<OrderRow> {
    let mut row: Option<OrderRow> = None;
    let mut customers: HashMap<Uuid, (String, String)> = HashMap::new();
    for event in log.iter().filter(|e| e.position <= position) {
        let at = event.recorded_at;
        match &event.event {
            DomainEvent::Customer(c) => {
                let entry = customers.entry(c.customer_id()).or_default();
                match c {
                    CustomerEvent::Registered(e) => *entry = (e.name.clone(), e.email.clone()),
                    CustomerEvent::Renamed(e) => entry.0.clone_from(&e.name),
                    CustomerEvent::EmailChanged(e) => entry.1.clone_from(&e.email),
                }
            }
            DomainEvent::Order(o) if o.order_id() == order_id => {
                if let OrderEvent::Placed(p) = o {
                    row = Some(OrderRow {
                        order_id,
                        customer_id: p.customer_id,
                        customer_name: p.customer.name.clone(),
                        customer_email: p.customer.email.clone(),
                        status: OrderStatus::Pending,
                        item_count: p.lines.iter().map(|l| l.quantity).sum(),
                        total_minor: p.total_minor,
                        currency: p.currency.to_string(),
                        placed_at: at,
                        confirmed_at: None,
                        shipped_at: None,
                        delivered_at: None,
                        cancelled_at: None,
                        cancel_reason: None,
                        reason_code: None,
                        carrier: None,
                        tracking: None,
                        saga_state: None,
                        saga_updated_at: None,
                        payment_status: PaymentStatus::None,
                        payment_id: None,
                        payment_currency: None,
                        authorized_minor: 0,
                        captured_minor: 0,
                        refunded_minor: 0,
                        payment_reason: None,
                        payment_updated_at: None,
                        payment_count: 0,
                        stream_version: 0,
                        last_position: 0,
                        updated_at: at,
                    });
                }
                let r = row.as_mut().unwrap();
                match o {
                    OrderEvent::Placed(_) => {}
                    OrderEvent::Confirmed(_) => (r.status, r.confirmed_at) = (OrderStatus::Confirmed, Some(at)),
                    OrderEvent::Shipped(e) => {
                        (r.status, r.shipped_at) = (OrderStatus::Shipped, Some(at));
                        (r.carrier, r.tracking) = (Some(e.carrier.clone()), Some(e.tracking.clone()));
                    }
                    OrderEvent::Delivered(_) => (r.status, r.delivered_at) = (OrderStatus::Delivered, Some(at)),
                    OrderEvent::Cancelled(e) => {
                        (r.status, r.cancelled_at) = (OrderStatus::Cancelled, Some(at));
                        r.cancel_reason = Some(e.reason.clone());
                        r.reason_code = (!e.reason_code.is_empty()).then(|| e.reason_code.clone());
                    }
                }
                (r.stream_version, r.last_position, r.updated_at) = (event.stream_version, event.position, at);
            }
            _ => {}
        }
    }
    let mut row = row?;
    if let Some((name, email)) = customers.get(&row.customer_id) {
        (row.customer_name, row.customer_email) = (name.clone(), email.clone());
    }
    (
        row.payment_status,
        row.payment_id,
        row.payment_currency,
        (row.authorized_minor, row.captured_minor, row.refunded_minor),
        row.payment_reason,
        row.payment_updated_at,
        row.payment_count,
    ) = expected_payment(log, order_id, position);
    (row.saga_state, row.saga_updated_at) = expected_saga(log, order_id, position);
    Some(row)
}

async fn as_of(server: Server) {
    let db = read_db(server).await;
    let dash = dashboard(&db, 1).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (p0, p1, p2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut log = Log::default();
    log.push(declined(p0, b, "card expired"));
    log.push(placed(b, bob, ("Bob", "bob@example.com"), &[1], Currency::USD, 0));
    log.push(registered(alice, "Alice", "alice@example.com"));
    log.push(authorized(p1, a, 770));
    log.push(placed(
        a,
        alice,
        ("Alice", "alice@example.com"),
        &[2, 1],
        Currency::EUR,
        10,
    ));
    log.push(renamed(alice, "Alice B."));
    log.push(confirmed(a));
    log.push(captured(p1, a, 770));
    log.push(registered(bob, "Robert", "robert@example.com"));
    log.push(authorized(p2, b, 250));
    log.push(email_changed(alice, "ab@example.com"));
    log.push(shipped(a, "DHL", "T-9"));
    log.push(voided(p2, b, Some(250), "fraud"));
    log.push(cancelled(b, "fraud"));
    log.push(refunded(p1, a, 100));
    log.push(delivered(a));
    // Delivered in another interleaving (each stream in order) and in three batches, with a
    // replay.
    let events = &log.events;
    let delivery: Vec<ProjectedEvent> = [2, 3, 4, 5, 0, 1, 6, 7, 8, 10, 9, 11, 13, 12, 14, 15]
        .iter()
        .map(|i| events[*i].clone())
        .collect();
    dash.apply(&batch(&delivery[..6])).await.unwrap();
    dash.apply(&batch(&delivery[3..10])).await.unwrap();
    dash.apply(&batch(&delivery[10..])).await.unwrap();

    let last = events.len() as u64;
    for position in 0..=last + 1 {
        // A position is one of the orders' log: the orders' events up to it, and the other
        // services' as of its commit time (the log above counts positions across services).
        let orders_cut = events
            .iter()
            .filter(|e| e.position <= position && matches!(e.event, DomainEvent::Order(_)))
            .map(|e| e.position)
            .max()
            .unwrap_or(0);
        for order in [a, b] {
            let at_position = dashboard::get_order_as_of(&db, 1, order, AsOf::Position(position))
                .await
                .unwrap();
            assert_eq!(
                at_position,
                fold_up_to(events, order, orders_cut),
                "order {order} at orders position {position}"
            );
            let expected = fold_up_to(events, order, position);
            let at_time = dashboard::get_order_as_of(&db, 1, order, AsOf::Time(time_of(position)))
                .await
                .unwrap();
            assert_eq!(at_time, expected, "order {order} at the time of position {position}");
            let between = time_of(position) + Duration::milliseconds(500);
            let at_between = dashboard::get_order_as_of(&db, 1, order, AsOf::Time(between))
                .await
                .unwrap();
            assert_eq!(at_between, expected, "order {order} between positions");
        }
        let page = dashboard::list_orders_as_of(
            &db,
            1,
            AsOf::Position(position),
            &OrderFilter::default(),
            Sort::default(),
            None,
            100,
        )
        .await
        .unwrap();
        let mut expected: Vec<OrderRow> = [a, b]
            .iter()
            .filter_map(|o| fold_up_to(events, *o, orders_cut))
            .collect();
        expected.sort_by_key(|row| std::cmp::Reverse(row.placed_at));
        assert_eq!(page.rows, expected, "list at orders position {position}");
        assert_eq!(page.next_cursor, None);
    }
    // The payments as they were: not a vacuous comparison.
    let then = |order, position| {
        let db = db.clone();
        async move {
            let row = dashboard::get_order_as_of(&db, 1, order, AsOf::Position(position))
                .await
                .unwrap()
                .unwrap();
            (
                row.payment_status,
                row.payment_id,
                row.captured_minor,
                row.refunded_minor,
                row.payment_count,
            )
        }
    };
    assert_eq!(then(b, 2).await, (PaymentStatus::Declined, Some(p0), 0, 0, 1));
    assert_eq!(then(a, 7).await, (PaymentStatus::Authorized, Some(p1), 0, 0, 1));
    assert_eq!(then(b, 12).await, (PaymentStatus::Authorized, Some(p2), 0, 0, 2));
    assert_eq!(then(a, 12).await, (PaymentStatus::Captured, Some(p1), 770, 0, 1));
    assert_eq!(then(b, 14).await, (PaymentStatus::Voided, Some(p2), 0, 0, 2));
    assert_eq!(then(a, 16).await, (PaymentStatus::Captured, Some(p1), 770, 100, 1));
    // The latest version equals the current row.
    assert_eq!(
        dashboard::get_order_as_of(&db, 1, a, AsOf::Position(last))
            .await
            .unwrap(),
        dashboard::get_order(&db, 1, a).await.unwrap()
    );
    // Filters apply to the state at that point.
    let shipped_then = dashboard::list_orders_as_of(
        &db,
        1,
        AsOf::Position(13),
        &OrderFilter {
            status: Some(OrderStatus::Shipped),
            ..OrderFilter::default()
        },
        Sort::default(),
        None,
        10,
    )
    .await
    .unwrap();
    assert_eq!(
        shipped_then.rows.iter().map(|r| r.order_id).collect::<Vec<_>>(),
        vec![a]
    );
}

#[tokio::test]
async fn as_of_matches_the_fold_postgres() {
    as_of(Server::Postgres).await;
}

#[tokio::test]
async fn as_of_matches_the_fold_sqlite() {
    as_of(Server::Sqlite).await;
}

// ---------------------------------------------------------------------------------------------
// Keyset pagination

async fn pagination(server: Server) {
    let db = read_db(server).await;
    let dash = dashboard(&db, 1).await;
    let customers = [Uuid::new_v4(), Uuid::new_v4()];
    let mut log = Log::default();
    let mut rng = Rng(0x9a9e);
    let place = |log: &mut Log, rng: &mut Rng| {
        let order = Uuid::new_v4();
        let customer = customers[rng.below(2)];
        // Few distinct totals: many ties, broken by order id.
        let event = log.push(placed(
            order,
            customer,
            ("C", "c@example.com"),
            &[1 + rng.below(3) as i64],
            Currency::EUR,
            0,
        ));
        (order, event)
    };
    let mut initial = Vec::new();
    let mut events = Vec::new();
    for _ in 0..40 {
        let (order, event) = place(&mut log, &mut rng);
        initial.push(order);
        events.push(event);
    }
    dash.apply(&batch(&events)).await.unwrap();

    for key in [SortKey::PlacedAt, SortKey::Total] {
        for direction in [Direction::Asc, Direction::Desc] {
            let sort = Sort { key, direction };
            let mut seen: Vec<OrderRow> = Vec::new();
            let mut cursor: Option<Cursor> = None;
            loop {
                let page = dashboard::list_orders(&db, 1, &OrderFilter::default(), sort, cursor.as_ref(), 7)
                    .await
                    .unwrap();
                assert!(page.rows.len() <= 7);
                seen.extend(page.rows);
                // Orders placed between page reads (later ones sort last by time).
                let (_, event) = place(&mut log, &mut rng);
                dash.apply(&batch(&[event])).await.unwrap();
                match page.next_cursor {
                    Some(next) => cursor = Some(Cursor::decode(&next).unwrap()),
                    None => break,
                }
            }
            let ids: Vec<Uuid> = seen.iter().map(|r| r.order_id).collect();
            let unique: HashSet<Uuid> = ids.iter().copied().collect();
            assert_eq!(unique.len(), ids.len(), "{sort:?}: no row repeats");
            for order in &initial {
                assert!(
                    unique.contains(order),
                    "{sort:?}: no row existing at the start is skipped"
                );
            }
            let keys: Vec<i64> = seen
                .iter()
                .map(|r| match key {
                    SortKey::PlacedAt => r.placed_at.timestamp_micros(),
                    SortKey::Total => r.total_minor,
                })
                .collect();
            let mut sorted = keys.clone();
            sorted.sort();
            if direction == Direction::Desc {
                sorted.reverse();
            }
            assert_eq!(keys, sorted, "{sort:?}: rows come in sort order");
        }
    }

    // Filters.
    let page = dashboard::list_orders(
        &db,
        1,
        &OrderFilter {
            customer_id: Some(customers[0]),
            placed_from: Some(time_of(5)),
            placed_to: Some(time_of(30)),
            status: Some(OrderStatus::Pending),
            reason_code: None,
        },
        Sort::default(),
        None,
        100,
    )
    .await
    .unwrap();
    let expected: Vec<Uuid> = log
        .events
        .iter()
        .rev()
        .filter_map(|e| match &e.event {
            DomainEvent::Order(OrderEvent::Placed(p))
                if p.customer_id == customers[0] && (5..30).contains(&e.position) =>
            {
                Some(p.order_id)
            }
            _ => None,
        })
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(page.rows.iter().map(|r| r.order_id).collect::<Vec<_>>(), expected);
    let none = dashboard::list_orders(
        &db,
        1,
        &OrderFilter {
            status: Some(OrderStatus::Delivered),
            ..OrderFilter::default()
        },
        Sort::default(),
        None,
        10,
    )
    .await
    .unwrap();
    assert!(none.rows.is_empty() && none.next_cursor.is_none());

    // A cursor of another sort, and limits out of range, are the client's error.
    let first = dashboard::list_orders(&db, 1, &OrderFilter::default(), Sort::default(), None, 2)
        .await
        .unwrap();
    let cursor = Cursor::decode(&first.next_cursor.unwrap()).unwrap();
    let other = Sort {
        key: SortKey::Total,
        direction: Direction::Asc,
    };
    let error = dashboard::list_orders(&db, 1, &OrderFilter::default(), other, Some(&cursor), 2)
        .await
        .expect_err("foreign cursor");
    assert!(
        matches!(
            error,
            QueryError::Invalid {
                parameter: "cursor",
                ..
            }
        ),
        "{error:?}"
    );
    for limit in [0, dashboard::MAX_PAGE_LIMIT + 1] {
        let error = dashboard::list_orders(&db, 1, &OrderFilter::default(), Sort::default(), None, limit)
            .await
            .expect_err("limit out of range");
        assert!(
            matches!(error, QueryError::Invalid { parameter: "limit", .. }),
            "{error:?}"
        );
    }
}

#[tokio::test]
async fn keyset_pagination_postgres() {
    pagination(Server::Postgres).await;
}

#[tokio::test]
async fn keyset_pagination_sqlite() {
    pagination(Server::Sqlite).await;
}

#[test]
fn cursors_round_trip_and_malformed_ones_are_errors() {
    let cursor = Cursor {
        sort: Sort {
            key: SortKey::Total,
            direction: Direction::Desc,
        },
        value: -42,
        order_id: Uuid::new_v4(),
    };
    let text = cursor.encode();
    assert!(text.bytes().all(|b| b.is_ascii_alphanumeric()), "URL-safe: {text}");
    assert_eq!(Cursor::decode(&text).unwrap(), cursor);
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    for bad in [
        String::new(),
        "z".to_owned(),
        "zz".to_owned(),
        "abc".to_owned(),
        "ff".repeat(40),
        "0".repeat(1000),
        hex("pd:12"),
        hex("xd:12:67e5504410b1426f9247bb680e5fe0c8"),
        hex("pq:12:67e5504410b1426f9247bb680e5fe0c8"),
        hex("pd:twelve:67e5504410b1426f9247bb680e5fe0c8"),
        hex("pd:12:not-a-uuid"),
        hex("pd:12:67e5504410b1426f9247bb680e5fe0c8:extra"),
        format!("{}é", &text[..text.len() - 2]),
    ] {
        let result = Cursor::decode(&bad);
        assert!(
            matches!(
                result,
                Err(QueryError::Invalid {
                    parameter: "cursor",
                    ..
                })
            ),
            "{bad:?} gave {result:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Bulk loads (a rebuild's build phase): exactly the rows of batch-by-batch apply

/// Names that need COPY's escapes, and some that do not.
const AWKWARD_NAMES: [&str; 5] = [
    "Zoë Ångström",
    "tab\there",
    "back\\slash \\N",
    "new\nline\r\nand CR",
    "",
];

/// A random shop: customers (some registered only after their first order, some never, some
/// with awkward names), orders with random lifecycles in two currencies, none, one or two
/// payments per order (with random lives, before or after the order's events), and events that
/// cannot apply (an order event for an order never placed, a change of a customer never
/// registered, an order placed twice, a capture of a payment never authorized): the dead
/// letters of either path.
/// With `poison_last`, the log ends with one of those (the last checkpoint then has no time).
fn random_workload(rng: &mut Rng, customers: usize, orders: usize, poison_last: bool) -> Vec<ProjectedEvent> {
    let ids: Vec<Uuid> = (0..customers).map(|_| Uuid::new_v4()).collect();
    let name = |rng: &mut Rng, i: usize| {
        if rng.chance(15) {
            AWKWARD_NAMES[rng.below(AWKWARD_NAMES.len())].to_owned()
        } else {
            format!("customer {i}")
        }
    };
    let mut streams: Vec<Vec<DomainEvent>> = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        if rng.chance(75) {
            let mut stream = vec![registered(*id, &name(rng, i), &format!("c{i}@example.com"))];
            for change in 0..rng.below(5) {
                stream.push(if rng.chance(50) {
                    renamed(*id, &format!("{} ({change})", name(rng, i)))
                } else {
                    email_changed(*id, &format!("c{i}.{change}@example.com"))
                });
            }
            streams.push(stream);
        }
    }
    let currencies = [Currency::EUR, Currency::USD];
    for n in 0..orders {
        let order = Uuid::new_v4();
        let customer = ids[rng.below(ids.len())];
        let snapshot = if rng.chance(10) {
            AWKWARD_NAMES[rng.below(AWKWARD_NAMES.len())].to_owned()
        } else {
            format!("snapshot {}", rng.below(4))
        };
        let quantities: Vec<i64> = (0..1 + rng.below(3)).map(|_| 1 + rng.below(5) as i64).collect();
        let mut stream = vec![placed(
            order,
            customer,
            (&snapshot, &format!("s{}@example.com", rng.below(3))),
            &quantities,
            currencies[rng.below(2)],
            rng.below(1000) as i64,
        )];
        match rng.below(7) {
            0 => {}
            1 => stream.push(confirmed(order)),
            2 => stream.extend([confirmed(order), shipped(order, "DHL", &format!("T{n}"))]),
            3 => stream.extend([confirmed(order), shipped(order, "UPS\tGround", "1Z"), delivered(order)]),
            4 => stream.push(cancelled_for(order, "no\\longer wanted", random_code(rng))),
            5 => stream.extend([
                confirmed(order),
                cancelled_for(order, "late", random_code(rng)),
                cancelled_for(order, "again", random_code(rng)),
            ]),
            _ => stream.push(confirmed(order)),
        }
        for _ in 0..rng.below(3) {
            streams.push(random_payment(rng, order, total_of(&stream[0])));
        }
        if rng.chance(80) {
            streams.push(random_saga(rng, order, quantities.len()));
        }
        if n % 50 == 7 {
            // Placed a second time: refused, dead-lettered, the order stays as it was.
            stream.push(placed(
                order,
                customer,
                ("again", "again@example.com"),
                &[1],
                Currency::EUR,
                0,
            ));
            stream.push(delivered(order));
        }
        streams.push(stream);
    }
    for _ in 0..1 + orders / 40 {
        streams.push(vec![confirmed(Uuid::new_v4())]);
        streams.push(vec![renamed(Uuid::new_v4(), "nobody")]);
        streams.push(vec![captured(Uuid::new_v4(), ids[0], 10)]);
        // A payment of an order never placed: kept, shown by no row.
        streams.push(random_payment(rng, Uuid::new_v4(), 100));
        // A saga whose start was not seen, and one of an order never placed: kept, never an
        // error.
        let orphan = Uuid::new_v4();
        streams.push(vec![saga_reserved(orphan, 0), saga_authorized(orphan)]);
        streams.push(random_saga(rng, Uuid::new_v4(), 2));
    }
    let mut log = Log::default();
    for event in interleave(rng, streams) {
        log.push(event);
    }
    if poison_last {
        log.push(cancelled(Uuid::new_v4(), "never placed"));
    }
    log.events
}

/// `events` cut into random batches of 1 to `max` events.
fn random_batches(rng: &mut Rng, events: &[ProjectedEvent], max: usize) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let end = (start + 1 + rng.below(max)).min(events.len());
        batches.push(batch(&events[start..end]));
        start = end;
    }
    batches
}

/// Retries fast: a batch with an event that cannot apply is isolated at once.
fn fast_retries() -> projections::RunOptions {
    projections::RunOptions {
        retries: 1,
        backoff: std::time::Duration::from_millis(1),
        max_backoff: std::time::Duration::from_millis(1),
        ..projections::RunOptions::default()
    }
}

/// Batch-by-batch apply as the runtime does it (an event that fails alone is dead-lettered).
async fn apply_incrementally(dash: &dyn Projection, batches: Vec<Batch>) {
    let cancel = tokio_util::sync::CancellationToken::new();
    for batch in batches {
        projections::apply_reliably(dash, batch, &fast_retries(), &cancel)
            .await
            .unwrap();
    }
}

/// Checkpoints and dead letters (sorted by position; the time they were recorded left out).
async fn control_rows(db: &ReadDb, version: u32) -> (Vec<projections::Checkpoint>, Vec<String>) {
    let mut letters: Vec<(u64, String)> = db
        .dead_letters(dashboard::NAME, version)
        .await
        .unwrap()
        .into_iter()
        .map(|d| {
            (
                d.position,
                format!(
                    "{:?} {} {} {:?} {:?}",
                    d.origin, d.event_type, d.reason, d.payload, d.position
                ),
            )
        })
        .collect();
    letters.sort();
    (
        db.checkpoints(dashboard::NAME, version).await.unwrap(),
        letters.into_iter().map(|(_, letter)| letter).collect(),
    )
}

/// The definitions of a version's tables, keys and indexes, with the version's prefix taken out.
async fn schema(db: &ReadDb, version: u32) -> Vec<String> {
    let prefix = dashboard::table_prefix(version);
    let sql = match db.kind() {
        projections::DbKind::Postgres => {
            "SELECT i.tablename::text || ': ' || i.indexdef FROM pg_indexes i
             UNION ALL
             SELECT t.relname::text || ': ' || c.conname::text || ' ' || c.contype::text || ' ' || pg_get_constraintdef(c.oid)
               FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
             UNION ALL
             SELECT table_name::text || ': ' || column_name::text || ' ' || data_type::text || ' '
                    || is_nullable::text || ' ' || ordinal_position::text
               FROM information_schema.columns"
        }
        projections::DbKind::Sqlite => "SELECT tbl_name || ': ' || type || ' ' || name || ' ' || coalesce(sql, '') FROM sqlite_master",
    };
    let mut rows: Vec<String> = sqlx::query(sql)
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get::<String, _>(0).unwrap())
        .filter(|row| row.starts_with(&prefix))
        .map(|row| row.replace(&prefix, "{prefix}"))
        .collect();
    rows.sort();
    rows.dedup();
    assert!(rows.len() > 10, "{rows:?}");
    rows
}

/// Asserts that two versions hold the same rows, checkpoints, dead letters and schema.
async fn assert_same_version(db: &ReadDb, expected: u32, actual: u32, what: &str) {
    let (want, got) = (dump(db, expected).await, dump(db, actual).await);
    for table in TABLES {
        assert_eq!(
            got[table].len(),
            want[table].len(),
            "{what}: rows in {table} (v{actual} against v{expected})"
        );
        for (row, (g, w)) in got[table].iter().zip(&want[table]).enumerate() {
            assert_eq!(g, w, "{what}: {table} row {row} (v{actual} against v{expected})");
        }
    }
    assert_eq!(
        control_rows(db, actual).await,
        control_rows(db, expected).await,
        "{what}: checkpoints and dead letters"
    );
    assert_eq!(schema(db, actual).await, schema(db, expected).await, "{what}: schema");
}

/// A bulk load of a random workload equals its batch-by-batch apply, every table (history
/// included), checkpoints, dead letters and schema; so does a bulk load of a prefix of the log
/// followed by batch-by-batch apply of the rest (how a rebuild catches up after it).
async fn bulk_equals_incremental(server: Server, seed: u64) {
    let db = read_db(server).await;
    let mut rng = Rng(seed | 1);
    let log = random_workload(&mut rng, 60, 400, seed % 2 == 1);
    let incremental = dashboard(&db, 1).await;
    apply_incrementally(&incremental, random_batches(&mut rng, &log, 40)).await;
    let reference = dump(&db, 1).await;
    assert!(reference["order_history"].len() > 800 && reference["customer_history"].len() > 40);
    assert!(reference["payments"].len() > 200 && reference["payment_history"].len() > 400);
    assert!(reference["sagas"].len() > 300 && reference["saga_history"].len() > 1000);
    assert!(
        !control_rows(&db, 1).await.1.is_empty(),
        "the workload has events that are dead-lettered"
    );

    // All of it in bulk, in other batches.
    let bulk = OrderDashboard::new(db.clone(), 2);
    let mut load = bulk.bulk_load().await.unwrap().expect("an empty version loads in bulk");
    for batch in random_batches(&mut rng, &log, 300) {
        load.push(&batch).await.unwrap();
    }
    let report = load.finish().await.unwrap();
    let rows: usize = reference.values().map(Vec::len).sum();
    assert_eq!(report.rows, rows as u64, "every row written once");
    assert_same_version(&db, 1, 2, &format!("bulk, seed {seed}")).await;

    // A prefix in bulk, the rest batch by batch.
    let cut = 1 + rng.below(log.len() - 1);
    let mixed = OrderDashboard::new(db.clone(), 3);
    let mut load = mixed.bulk_load().await.unwrap().expect("bulk");
    for batch in random_batches(&mut rng, &log[..cut], 100) {
        load.push(&batch).await.unwrap();
    }
    load.finish().await.unwrap();
    apply_incrementally(&mixed, random_batches(&mut rng, &log[cut..], 40)).await;
    assert_same_version(&db, 1, 3, &format!("bulk up to {cut}, then batches, seed {seed}")).await;

    // Tables that hold rows are never loaded in bulk.
    assert!(incremental.bulk_load().await.unwrap().is_none());
}

#[tokio::test]
async fn a_bulk_load_equals_batch_by_batch_apply_postgres() {
    for seed in [1, 0xb01c_5eed] {
        bulk_equals_incremental(Server::Postgres, seed).await;
    }
}

#[tokio::test]
async fn a_bulk_load_equals_batch_by_batch_apply_sqlite() {
    for seed in [1, 0xb01c_5eed] {
        bulk_equals_incremental(Server::Sqlite, seed).await;
    }
}

/// The checks themselves: a bulk load that got one history version's `valid_to` wrong is told
/// apart from the batch path.
#[tokio::test]
async fn a_wrong_valid_to_is_caught() {
    let db = read_db(Server::Sqlite).await;
    let mut rng = Rng(7);
    let log = random_workload(&mut rng, 10, 40, false);
    apply_incrementally(&dashboard(&db, 1).await, vec![batch(&log)]).await;
    let mut load = OrderDashboard::new(db.clone(), 2).bulk_load().await.unwrap().unwrap();
    load.push(&batch(&log)).await.unwrap();
    load.finish().await.unwrap();
    let sql = format!(
        "UPDATE {0}order_history SET valid_to_position = valid_to_position + 1
          WHERE rowid = (SELECT min(rowid) FROM {0}order_history WHERE valid_to_position IS NOT NULL)",
        dashboard::table_prefix(2)
    );
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(db.pool()).await.unwrap();
    assert_ne!(dump(&db, 2).await["order_history"], dump(&db, 1).await["order_history"]);
}

// ---------------------------------------------------------------------------------------------
// Rebuilds through the bulk load, from a real store

/// The dashboard, counting what the rebuild asks of it.
struct Spy {
    inner: OrderDashboard,
    pushes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    applies: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl Projection for Spy {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn version(&self) -> u32 {
        self.inner.version()
    }
    async fn prepare(&self) -> Result<(), ProjectionError> {
        self.inner.prepare().await
    }
    async fn drop_version(&self) -> Result<(), ProjectionError> {
        self.inner.drop_version().await
    }
    async fn checkpoints(&self) -> Result<Vec<projections::Checkpoint>, ProjectionError> {
        self.inner.checkpoints().await
    }
    async fn apply(&self, batch: &Batch) -> Result<(), ProjectionError> {
        self.applies.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.apply(batch).await
    }
    async fn healthy(&self) -> bool {
        self.inner.healthy().await
    }
    async fn bulk_load(&self) -> Result<Option<Box<dyn projections::BulkLoad>>, ProjectionError> {
        Ok(self.inner.bulk_load().await?.map(|inner| {
            Box::new(SpyLoad {
                inner,
                pushes: self.pushes.clone(),
            }) as Box<dyn projections::BulkLoad>
        }))
    }
}

struct SpyLoad {
    inner: Box<dyn projections::BulkLoad>,
    pushes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait::async_trait]
impl projections::BulkLoad for SpyLoad {
    async fn push(&mut self, batch: &Batch) -> Result<(), ProjectionError> {
        self.pushes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.push(batch).await
    }
    fn full(&self) -> bool {
        self.inner.full()
    }
    async fn finish(self: Box<Self>) -> Result<projections::BulkReport, ProjectionError> {
        self.inner.finish().await
    }
}

#[derive(Default, Clone)]
struct Counts {
    pushes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    applies: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Counts {
    fn factory(&self, db: &ReadDb, memory_rows: usize) -> projections::ProjectionFactory {
        let (db, counts) = (db.clone(), self.clone());
        std::sync::Arc::new(move |version| {
            std::sync::Arc::new(Spy {
                inner: OrderDashboard::new(db.clone(), version).with_bulk_memory_rows(memory_rows),
                pushes: counts.pushes.clone(),
                applies: counts.applies.clone(),
            }) as std::sync::Arc<dyn Projection>
        })
    }

    fn take(&self) -> (usize, usize) {
        (
            self.pushes.swap(0, std::sync::atomic::Ordering::SeqCst),
            self.applies.swap(0, std::sync::atomic::Ordering::SeqCst),
        )
    }
}

/// Appends `log`'s events to `store`, one commit each, and an event that does not decode.
async fn fill_store(store: &dyn event_store::EventStore, log: &[ProjectedEvent]) {
    use event_store::{EventMetadata, ExpectedVersion, NewEvent};
    let new = |event_type: &str, schema_version: u32, payload: Vec<u8>| NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        schema_version,
        payload,
        occurred_at: Utc::now(),
        metadata: EventMetadata::default(),
    };
    for (i, event) in log.iter().enumerate() {
        let encoded = event.event.encode();
        let event = new(encoded.event_type, encoded.schema_version, encoded.payload);
        let stream = &log[i].stream_id;
        store
            .append(stream, ExpectedVersion::Exact(log[i].stream_version - 1), vec![event])
            .await
            .unwrap();
        if i == log.len() / 3 {
            let garbage = new("order.confirmed", 1, vec![0xff, 0xff, 0xff]);
            let stream = Category::Order.stream_id(Uuid::new_v4());
            store
                .append(&stream, ExpectedVersion::Any, vec![garbage])
                .await
                .unwrap();
        }
    }
}

/// The store's whole log.
async fn store_log(store: &dyn event_store::EventStore) -> Vec<event_store::RecordedEvent> {
    let mut all = Vec::new();
    loop {
        let page = store
            .read_all(all.last().map_or(0, |e: &event_store::RecordedEvent| e.position), 500)
            .await
            .unwrap();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Builds version `version` batch by batch from the recorded events (undecodable ones become
/// dead letters, as in the runtime).
async fn build_incrementally(db: &ReadDb, version: u32, recorded: &[event_store::RecordedEvent]) {
    let dash = dashboard(db, version).await;
    let mut batches = Vec::new();
    for page in recorded.chunks(17) {
        let mut b = Batch::default();
        for e in page {
            let service = event_schemas::Service::of_stream(&e.stream_id).unwrap();
            match ProjectedEvent::from_recorded(e, service) {
                Ok(event) => b.events.push(event),
                Err(cause) => b.dead_letters.push(projections::DeadLetter {
                    origin: Origin::store(service, e.position),
                    position: e.position,
                    event_type: e.event_type.clone(),
                    reason: service_kit::error_chain(&cause),
                    payload: e.payload.clone(),
                }),
            }
        }
        batches.push(b);
    }
    apply_incrementally(&dash, batches).await;
}

/// `rebuild` loads the dashboard in bulk, live or `until` a position or a time (stopping exactly
/// there), or in bulk up to its memory bound and then batch by batch; each version equals the
/// batch-by-batch build of the same events.
async fn rebuild_in_bulk(server: Server) {
    let store: std::sync::Arc<dyn event_store::EventStore> = match server {
        Server::Postgres => {
            let pool = testkit::postgres::fresh_database().await.pool(4).await;
            event_store::PgEventStore::migrate(&pool).await.unwrap();
            std::sync::Arc::new(
                event_store::PgEventStore::open(pool, event_store::StoreOptions::default())
                    .await
                    .unwrap(),
            )
        }
        Server::Sqlite => std::sync::Arc::new(testkit::sqlite::store("bulk_store").await),
    };
    let db = read_db(server).await;
    let log = random_workload(&mut Rng(0xface), 30, 150, true);
    fill_store(&*store, &log).await;
    let recorded = store_log(&*store).await;
    assert_eq!(recorded.len(), log.len() + 1);

    let counts = Counts::default();
    let options = |until| projections::RebuildOptions {
        batch_size: 23,
        until,
        drop_after: std::time::Duration::from_millis(10),
        run: fast_retries(),
    };
    let cancel = tokio_util::sync::CancellationToken::new();

    // Live, all in bulk.
    build_incrementally(&db, 50, &recorded).await;
    let mut positions = Vec::new();
    let report = projections::rebuild(
        projections::ServiceLog::shared(&store),
        &db,
        counts.factory(&db, dashboard::DEFAULT_MEMORY_ROWS),
        options(None),
        cancel.clone(),
        |p| positions.push(p.position),
    )
    .await
    .unwrap();
    assert_eq!((report.version, report.events_applied), (1, recorded.len() as u64));
    assert_eq!(
        counts.take(),
        (recorded.len().div_ceil(23), 0),
        "every batch went to the bulk load"
    );
    // One report once the version is registered (at position 0), then one per batch.
    assert_eq!(positions.first(), Some(&0), "the registration's report comes first");
    assert!(positions.windows(2).all(|w| w[0] < w[1]) && positions.len() == 1 + recorded.len().div_ceil(23));
    assert_same_version(&db, 50, 1, "rebuild").await;

    // Historical, up to a position of one service's log: exactly there. (The other services'
    // logs stop at its commit time: an event committed just after it would be in the same
    // microsecond only by chance, so the cut is taken where the next commit is later.)
    let mid = (recorded.len() / 2..recorded.len() - 1)
        .find(|&i| recorded[i].recorded_at < recorded[i + 1].recorded_at)
        .unwrap();
    let token = event_schemas::ConsistencyToken {
        service: event_schemas::Service::of_stream(&recorded[mid].stream_id).unwrap(),
        position: recorded[mid].position,
    };
    build_incrementally(&db, 51, &recorded[..=mid]).await;
    let report = projections::rebuild(
        projections::ServiceLog::shared(&store),
        &db,
        counts.factory(&db, dashboard::DEFAULT_MEMORY_ROWS),
        options(Some(projections::UntilPoint::Position(token))),
        cancel.clone(),
        |_| {},
    )
    .await
    .unwrap();
    assert!(report.historical);
    assert_eq!(report.positions[&token.service], token.position);
    assert_eq!(
        report.positions.values().max(),
        Some(&token.position),
        "nothing after it"
    );
    assert_eq!(counts.take().1, 0, "no batch applied one by one");
    assert_same_version(&db, 51, report.version, "rebuild until a position").await;

    // Historical, up to a time: the last event recorded at or before it.
    let cut = (recorded.len() / 3..recorded.len() - 1)
        .find(|&i| recorded[i].recorded_at < recorded[i + 1].recorded_at)
        .unwrap();
    build_incrementally(&db, 52, &recorded[..=cut]).await;
    let report = projections::rebuild(
        projections::ServiceLog::shared(&store),
        &db,
        counts.factory(&db, dashboard::DEFAULT_MEMORY_ROWS),
        options(Some(projections::UntilPoint::Time(recorded[cut].recorded_at))),
        cancel.clone(),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.positions.values().max(), Some(&recorded[cut].position));
    assert_eq!(counts.take().1, 0);
    assert_same_version(&db, 52, report.version, "rebuild until a time").await;

    // Memory for only 40 orders and customers: bulk up to there, then batch by batch.
    let report = projections::rebuild(
        projections::ServiceLog::shared(&store),
        &db,
        counts.factory(&db, 40),
        options(None),
        cancel.clone(),
        |_| {},
    )
    .await
    .unwrap();
    let (pushes, applies) = counts.take();
    assert!(
        pushes > 0 && applies > 0,
        "bulk first ({pushes} batches), then batches ({applies})"
    );
    assert_same_version(&db, 50, report.version, "rebuild past the memory bound").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilds_load_in_bulk_postgres() {
    rebuild_in_bulk(Server::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilds_load_in_bulk_sqlite() {
    rebuild_in_bulk(Server::Sqlite).await;
}
