//! The read API through its router, over read models filled by the real projections on real
//! servers: PostgreSQL through a role that can only SELECT, ClickHouse for the analytics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{DateTime, TimeZone, Utc};
use event_schemas::{
    ConsistencyToken, Currency, CustomerEvent, CustomerRegistered, CustomerRenamed, CustomerSnapshot, DomainEvent,
    Money, OrderCancelled, OrderConfirmed, OrderEvent, OrderLine, OrderPlaced, PaymentAuthorized, PaymentCaptured,
    PaymentDeclined, PaymentEvent, PaymentRefunded, PaymentVoided, SagaConfirmed, SagaEvent, SagaFailed, SagaLine,
    SagaParked, SagaPaymentAuthorized, SagaStarted, SagaStockReserved, Service,
};
use http_body_util::BodyExt;
use projections::analytics::SalesAnalytics;
use projections::dashboard::OrderDashboard;
use projections::{Batch, Origin, ProjectedEvent, Projection, ReadDb};
use read_api::{ReadConfig, ReadState};
use serde_json::Value;
use tower::ServiceExt;
use uuid::Uuid;

/// The read side of one test: the projections writing, the API reading through a read-only role.
struct ReadSide {
    writer: ReadDb,
    /// The read-only role's URL, the one the API uses.
    reader_url: String,
    dashboard: OrderDashboard,
    analytics: SalesAnalytics,
    router: Router,
    /// Each service's log as applied so far: its last position.
    positions: BTreeMap<Service, u64>,
}

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).unwrap()
}

impl ReadSide {
    async fn new(wait: Duration) -> Self {
        let database = testkit::postgres::fresh_database().await;
        let writer = ReadDb::connect(&database.url, 4).await.unwrap();
        writer.migrate().await.unwrap();
        let clickhouse = clickhouse::Client::default()
            .with_url(testkit::clickhouse::url())
            .with_database(testkit::clickhouse::fresh_database().await)
            .with_validation(false);
        let dashboard = OrderDashboard::new(writer.clone(), 1);
        let analytics = SalesAnalytics::clickhouse(clickhouse.clone(), writer.clone(), 1);
        for projection in [&dashboard as &dyn Projection, &analytics] {
            projection.prepare().await.unwrap();
            writer.ensure_live(projection.name(), 1).await.unwrap();
        }

        // The API's role: it may only read.
        let role = testkit::unique_name("reader");
        let admin = ReadDb::connect(&database.url, 1).await.unwrap();
        for statement in [
            format!("CREATE ROLE {role} LOGIN"),
            format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(admin.pool())
                .await
                .unwrap();
        }
        let reader_url = database.url.replacen("postgres@", &format!("{role}@"), 1);
        assert_ne!(
            reader_url, database.url,
            "the test URL names its user: {}",
            database.url
        );
        let reader = ReadDb::connect(&reader_url, 8).await.unwrap();
        let state = ReadState::new(
            reader,
            Some(clickhouse),
            ReadConfig {
                wait,
                ..ReadConfig::default()
            },
        );
        ReadSide {
            writer,
            reader_url,
            dashboard,
            analytics,
            router: read_api::router(state),
            positions: BTreeMap::new(),
        }
    }

    /// Applies events to both projections as the services' stores would hand them out (each
    /// service's log numbered on its own); answers the token of the last one.
    async fn apply(&mut self, events: Vec<(String, u64, DomainEvent)>) -> ConsistencyToken {
        let mut batch = Batch::default();
        let mut last = None;
        for (stream_id, stream_version, event) in events {
            let service = Service::owning(event.category());
            let position = self.positions.entry(service).or_insert(0);
            *position += 1;
            let minute = self.positions.values().sum::<u64>() as i64;
            let position = self.positions[&service];
            let at = base_time() + chrono::Duration::minutes(minute);
            batch.events.push(ProjectedEvent {
                event_id: Uuid::now_v7(),
                stream_id,
                stream_version,
                position,
                occurred_at: at,
                recorded_at: at,
                correlation_id: "test".to_owned(),
                event,
                origin: Origin::store(service, position),
            });
            last = Some(ConsistencyToken { service, position });
        }
        self.dashboard.apply(&batch).await.unwrap();
        self.analytics.apply(&batch).await.unwrap();
        last.expect("events to apply")
    }

    /// The token of `service`'s log as applied so far.
    fn token(&self, service: Service) -> ConsistencyToken {
        ConsistencyToken {
            service,
            position: self.positions.get(&service).copied().unwrap_or(0),
        }
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        get(self.router.clone(), uri.to_owned()).await
    }

    /// `/metrics`, as text.
    async fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        match body {
            Value::String(text) => text,
            Value::Null => String::new(), // nothing recorded yet
            other => panic!("the metrics are text: {other}"),
        }
    }
}

/// GET `uri`: the status and the body, as JSON (a string when it is not JSON, null when empty).
/// Owns its router, so it can run in a task of its own while the test goes on.
async fn get(router: Router, uri: String) -> (StatusCode, Value) {
    let response = router
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, body)
}

struct Shop {
    customers: Vec<Uuid>,
    products: Vec<(Uuid, &'static str, i64)>,
}

impl Shop {
    fn new() -> Self {
        Shop {
            customers: (0..3).map(|_| Uuid::new_v4()).collect(),
            products: vec![
                (Uuid::new_v4(), "Teapot", 2_500),
                (Uuid::new_v4(), "Cup", 800),
                (Uuid::new_v4(), "Saucer", 450),
            ],
        }
    }

    fn registered(&self, n: usize) -> (String, u64, DomainEvent) {
        let customer_id = self.customers[n];
        (
            format!("customer-{customer_id}"),
            1,
            DomainEvent::Customer(CustomerEvent::Registered(CustomerRegistered {
                customer_id,
                name: format!("Customer {n}"),
                email: format!("c{n}@example.com"),
            })),
        )
    }

    /// An order of `quantity` of product `p` by customer `c`.
    fn placed(&self, order_id: Uuid, c: usize, p: usize, quantity: i64) -> (String, u64, DomainEvent) {
        let (product_id, name, price) = self.products[p];
        (
            format!("order-{order_id}"),
            1,
            DomainEvent::Order(OrderEvent::Placed(OrderPlaced {
                order_id,
                customer_id: self.customers[c],
                customer: CustomerSnapshot {
                    name: format!("Customer {c}"),
                    email: format!("c{c}@example.com"),
                },
                lines: vec![OrderLine {
                    product_id,
                    sku: name.to_uppercase(),
                    name: name.to_owned(),
                    quantity,
                    unit_price_minor: price,
                }],
                currency: Currency::EUR,
                total_minor: price * quantity,
            })),
        )
    }
}

fn confirmed(order_id: Uuid) -> (String, u64, DomainEvent) {
    (
        format!("order-{order_id}"),
        2,
        DomainEvent::Order(OrderEvent::Confirmed(OrderConfirmed { order_id })),
    )
}

fn cancelled(order_id: Uuid, version: u64) -> (String, u64, DomainEvent) {
    (
        format!("order-{order_id}"),
        version,
        DomainEvent::Order(OrderEvent::Cancelled(OrderCancelled {
            order_id,
            reason: "changed mind".to_owned(),
            reason_code: "requested".to_owned(),
        })),
    )
}

/// A cancellation with a reason code (the saga's, or a client's `requested`).
fn cancelled_for(order_id: Uuid, version: u64, reason_code: &str) -> (String, u64, DomainEvent) {
    (
        format!("order-{order_id}"),
        version,
        DomainEvent::Order(OrderEvent::Cancelled(OrderCancelled {
            order_id,
            reason: reason_code.replace('_', " "),
            reason_code: reason_code.to_owned(),
        })),
    )
}

/// A cancellation recorded before reason codes existed.
fn cancelled_without_code(order_id: Uuid, version: u64) -> (String, u64, DomainEvent) {
    cancelled_for(order_id, version, "")
}

/// The events of an order's saga stream (`saga-{order id}`, in the orders service's log), from
/// stream version `from`.
fn saga(order_id: Uuid, from: u64, events: Vec<SagaEvent>) -> Vec<(String, u64, DomainEvent)> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| (format!("saga-{order_id}"), from + i as u64, DomainEvent::Saga(event)))
        .collect()
}

fn saga_started(order_id: Uuid) -> SagaEvent {
    SagaEvent::Started(SagaStarted {
        order_id,
        payment_id: Uuid::new_v4(),
        lines: vec![SagaLine {
            product_id: Uuid::new_v4(),
            quantity: 1,
        }],
        amount: eur(100),
        deadline: base_time() + chrono::Duration::hours(1),
        correlation_id: "test".to_owned(),
    })
}

fn saga_reserved(order_id: Uuid) -> SagaEvent {
    SagaEvent::StockReserved(SagaStockReserved {
        order_id,
        line: 0,
        product_id: Uuid::new_v4(),
        quantity: 1,
    })
}

fn saga_authorized(order_id: Uuid) -> SagaEvent {
    SagaEvent::PaymentAuthorized(SagaPaymentAuthorized {
        order_id,
        payment_id: Uuid::new_v4(),
        amount: eur(100),
    })
}

fn saga_failed(order_id: Uuid, reason_code: &str) -> SagaEvent {
    SagaEvent::Failed(SagaFailed {
        order_id,
        reason_code: reason_code.to_owned(),
        reason: reason_code.replace('_', " "),
        step: "reserve 0".to_owned(),
    })
}

/// A payment event of stream version `version`: what the payments service appends.
fn payment(payment_id: Uuid, version: u64, event: PaymentEvent) -> (String, u64, DomainEvent) {
    (format!("payment-{payment_id}"), version, DomainEvent::Payment(event))
}

fn eur(amount_minor: i64) -> Money {
    Money::new(amount_minor, Currency::EUR)
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn the_api_reads_through_a_role_that_cannot_write() {
    let side = ReadSide::new(Duration::from_millis(200)).await;
    let (status, body) = side.get("/ready").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = side.get("/v1/projections").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let reader = ReadDb::connect(&side.reader_url, 1).await.unwrap();
    for statement in [
        "INSERT INTO order_dashboard_v1_orders (order_id) VALUES ('x')",
        "UPDATE projection_versions SET state = 'retired'",
        "DELETE FROM projection_checkpoints",
        "CREATE TABLE intruder (id BIGINT)",
    ] {
        let error = sqlx::query(statement)
            .execute(reader.pool())
            .await
            .expect_err("the read-only role must not write")
            .to_string();
        assert!(error.contains("permission denied"), "{statement}: {error}");
    }
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_versions WHERE state = 'live'")
        .fetch_one(side.writer.pool())
        .await
        .unwrap();
    assert_eq!(live, 2, "nothing changed");
}

#[tokio::test]
async fn dashboard_filters_pages_and_as_of() {
    let mut side = ReadSide::new(Duration::from_millis(200)).await;
    let shop = Shop::new();
    side.apply((0..3).map(|n| shop.registered(n)).collect()).await;
    let orders: Vec<Uuid> = (0..12).map(|_| Uuid::new_v4()).collect();
    side.apply(
        orders
            .iter()
            .enumerate()
            .map(|(i, &id)| shop.placed(id, i % 3, i % 3, 1 + i as i64))
            .collect(),
    )
    .await;
    let before_cancel = side.token(Service::Orders);
    side.apply(vec![confirmed(orders[0]), cancelled(orders[1], 2)]).await;

    // Pages of 5, newest first, cover every order once.
    let mut seen = Vec::new();
    let mut uri = "/v1/dashboard/orders?limit=5".to_owned();
    loop {
        let (status, page) = side.get(&uri).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let rows = page["rows"].as_array().unwrap();
        assert!(rows.len() <= 5);
        seen.extend(rows.iter().map(|r| r["order_id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/v1/dashboard/orders?limit=5&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 12);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 12);
    assert_eq!(seen[0], orders[11].to_string(), "newest first");

    // Filters.
    let (_, page) = side.get("/v1/dashboard/orders?status=cancelled").await;
    let rows = page["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["order_id"], orders[1].to_string());
    assert_eq!(rows[0]["cancel_reason"], "changed mind");
    let customer = shop.customers[2];
    let (_, page) = side
        .get(&format!("/v1/dashboard/orders?customer_id={customer}&sort=total_asc"))
        .await;
    let totals: Vec<i64> = page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["total_minor"].as_i64().unwrap())
        .collect();
    assert_eq!(totals, vec![450 * 3, 450 * 6, 450 * 9, 450 * 12]);

    // One order, now and as it stood before its cancellation.
    let (status, order) = side.get(&format!("/v1/dashboard/orders/{}", orders[1])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(order["status"], "cancelled");
    let (status, then) = side
        .get(&format!(
            "/v1/dashboard/orders/{}?at_position={before_cancel}",
            orders[1]
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{then}");
    assert_eq!(then["status"], "pending");
    let (_, listed_then) = side
        .get(&format!(
            "/v1/dashboard/orders?status=cancelled&at_position={before_cancel}"
        ))
        .await;
    assert_eq!(listed_then["rows"].as_array().unwrap().len(), 0);
    let (status, none) = side
        .get(&format!("/v1/dashboard/orders/{}?at_position=orders:1", orders[1]))
        .await;
    assert_error(status, &none, StatusCode::NOT_FOUND, "not_found");
    // A position is one service's log's: a bare number could be any, and another service's
    // log is not the orders'.
    for at in ["2", "customers:2"] {
        let (status, body) = side
            .get(&format!("/v1/dashboard/orders/{}?at_position={at}", orders[1]))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
        assert!(body["error"]["message"].as_str().unwrap().contains("orders:"), "{body}");
    }

    // The customer's summary: the cancelled order leaves the lifetime value.
    let customer = shop.customers[1];
    let (status, summary) = side.get(&format!("/v1/dashboard/customers/{customer}")).await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["name"], "Customer 1");
    assert_eq!(summary["order_count"], 4);
    let value = summary["lifetime_value"][0]["lifetime_value_minor"].as_i64().unwrap();
    assert_eq!(
        value,
        800 * (5 + 8 + 11),
        "orders of 2, 5, 8, 11 cups; the first cancelled"
    );
}

/// Every dashboard row carries its order's payment, from the payments service's log, whatever
/// came first; "as of" shows the payment as it was then; a payment's token reads one's own
/// write; the OpenAPI document describes the fields.
#[tokio::test]
async fn dashboard_rows_show_the_payment() {
    let mut side = ReadSide::new(Duration::from_millis(200)).await;
    let shop = Shop::new();
    side.apply((0..3).map(|n| shop.registered(n)).collect()).await;
    let orders: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let pays: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    // The payment of order 2 reaches the dashboard before the order does.
    side.apply(vec![payment(
        pays[2],
        1,
        PaymentEvent::Authorized(PaymentAuthorized {
            payment_id: pays[2],
            order_id: orders[2],
            amount: eur(450),
        }),
    )])
    .await;
    let (status, none) = side.get(&format!("/v1/dashboard/orders/{}", orders[2])).await;
    assert_error(status, &none, StatusCode::NOT_FOUND, "not_found");
    side.apply(vec![
        shop.placed(orders[0], 0, 0, 1),
        shop.placed(orders[1], 1, 1, 1),
        shop.placed(orders[2], 2, 2, 1),
        shop.placed(orders[3], 0, 1, 2),
    ])
    .await;
    let placed = side.token(Service::Orders);
    side.apply(vec![
        payment(
            pays[0],
            1,
            PaymentEvent::Authorized(PaymentAuthorized {
                payment_id: pays[0],
                order_id: orders[0],
                amount: eur(2_500),
            }),
        ),
        payment(
            pays[0],
            2,
            PaymentEvent::Captured(PaymentCaptured {
                payment_id: pays[0],
                order_id: orders[0],
                amount: eur(2_500),
            }),
        ),
        confirmed(orders[0]),
    ])
    .await;
    let captured = side.token(Service::Orders);
    let refund = side
        .apply(vec![
            payment(
                pays[0],
                3,
                PaymentEvent::Refunded(PaymentRefunded {
                    payment_id: pays[0],
                    order_id: orders[0],
                    amount: eur(500),
                }),
            ),
            payment(
                pays[1],
                1,
                PaymentEvent::Declined(PaymentDeclined {
                    payment_id: pays[1],
                    order_id: orders[1],
                    reason: "card expired".to_owned(),
                }),
            ),
        ])
        .await;
    assert_eq!(refund.service, Service::Payments);

    // Read your own payment write: the payments log's token.
    let (status, row) = side
        .get(&format!("/v1/dashboard/orders/{}?min_position={refund}", orders[0]))
        .await;
    assert_eq!(status, StatusCode::OK, "{row}");
    assert_eq!(row["status"], "confirmed", "{row}");
    assert_eq!(row["payment_status"], "captured", "partly refunded: {row}");
    assert_eq!(row["payment_id"], pays[0].to_string());
    assert_eq!(row["payment_currency"], "EUR");
    assert_eq!(
        (&row["authorized_minor"], &row["captured_minor"], &row["refunded_minor"]),
        (&Value::from(2_500), &Value::from(2_500), &Value::from(500)),
        "{row}"
    );
    assert!(row["payment_reason"].is_null(), "{row}");
    assert!(row["payment_updated_at"].is_string(), "{row}");
    assert_eq!(row["payment_count"], 1);

    // The list: every row with its payment, `none` without one.
    let (status, page) = side.get("/v1/dashboard/orders").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let rows: BTreeMap<String, Value> = page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["order_id"].as_str().unwrap().to_owned(), r.clone()))
        .collect();
    assert_eq!(rows[&orders[0].to_string()], row, "the list's row is the order's");
    let declined = &rows[&orders[1].to_string()];
    assert_eq!(declined["payment_status"], "declined", "{declined}");
    assert_eq!(declined["payment_reason"], "card expired");
    assert!(declined["payment_currency"].is_null(), "{declined}");
    let early = &rows[&orders[2].to_string()];
    assert_eq!(early["payment_status"], "authorized", "{early}");
    assert_eq!(early["authorized_minor"], 450);
    let unpaid = &rows[&orders[3].to_string()];
    assert_eq!(unpaid["payment_status"], "none", "{unpaid}");
    for field in ["payment_id", "payment_currency", "payment_reason", "payment_updated_at"] {
        assert!(unpaid[field].is_null(), "{field}: {unpaid}");
    }
    for field in ["authorized_minor", "captured_minor", "refunded_minor", "payment_count"] {
        assert_eq!(unpaid[field], 0, "{field}: {unpaid}");
    }

    // As of a position of the orders log: the payments as of its commit time.
    let then = |at: ConsistencyToken, order: Uuid| {
        let uri = format!("/v1/dashboard/orders/{order}?at_position={at}");
        let router = side.router.clone();
        async move {
            let (status, row) = get(router, uri).await;
            assert_eq!(status, StatusCode::OK, "{row}");
            row
        }
    };
    let row = then(placed, orders[0]).await;
    assert_eq!(
        (&row["status"], &row["payment_status"], &row["payment_count"]),
        (&Value::from("pending"), &Value::from("none"), &Value::from(0)),
        "{row}"
    );
    let row = then(placed, orders[2]).await;
    assert_eq!(row["payment_status"], "authorized", "{row}");
    let row = then(captured, orders[0]).await;
    assert_eq!(
        (&row["payment_status"], &row["captured_minor"], &row["refunded_minor"]),
        (&Value::from("captured"), &Value::from(2_500), &Value::from(0)),
        "{row}"
    );
    let (_, page) = side.get(&format!("/v1/dashboard/orders?at_position={captured}")).await;
    let declined_then = page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["order_id"] == orders[1].to_string())
        .unwrap();
    assert_eq!(
        declined_then["payment_status"], "none",
        "declined later: {declined_then}"
    );

    // The fields are documented.
    let (_, doc) = side.get("/openapi.json").await;
    let properties = &doc["components"]["schemas"]["DashboardOrder"]["properties"];
    for field in [
        "payment_id",
        "payment_currency",
        "authorized_minor",
        "captured_minor",
        "refunded_minor",
        "payment_reason",
        "payment_updated_at",
        "payment_count",
    ] {
        assert!(
            properties[field]["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{field}: {properties}"
        );
    }
    let statuses = &doc["components"]["schemas"]["DashboardPaymentStatus"];
    assert!(
        statuses["description"]
            .as_str()
            .unwrap()
            .contains("`refunded_minor` > 0"),
        "{statuses}"
    );
}

/// Every dashboard row shows its place-order saga's state (from the saga's own stream, whatever
/// came first), its cancellation's reason code beside the free text (filterable), and its
/// payment in each of the five statuses; "as of" shows them as they were; the funnel counts
/// pending orders and the cancellations per reason; the OpenAPI document describes it all.
#[tokio::test]
async fn dashboard_rows_show_the_saga_and_the_reason_code() {
    let mut side = ReadSide::new(Duration::from_millis(200)).await;
    let shop = Shop::new();
    side.apply((0..3).map(|n| shop.registered(n)).collect()).await;
    let orders: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    let pays: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    // Order 0's saga reaches the read side before the order does.
    side.apply(saga(orders[0], 1, vec![saga_started(orders[0])])).await;
    let (status, none) = side.get(&format!("/v1/dashboard/orders/{}", orders[0])).await;
    assert_error(status, &none, StatusCode::NOT_FOUND, "not_found");
    side.apply((0..5).map(|i| shop.placed(orders[i], i % 3, i % 3, 1)).collect())
        .await;
    let placed = side.token(Service::Orders);
    let mut events = Vec::new();
    // 0: reserved, authorized, confirmed: awaiting its shipment; captured, then refunded whole.
    events.extend(saga(
        orders[0],
        2,
        vec![
            saga_reserved(orders[0]),
            saga_authorized(orders[0]),
            SagaEvent::Confirmed(SagaConfirmed { order_id: orders[0] }),
        ],
    ));
    events.push(confirmed(orders[0]));
    events.push(payment(
        pays[0],
        1,
        PaymentEvent::Authorized(PaymentAuthorized {
            payment_id: pays[0],
            order_id: orders[0],
            amount: eur(2_500),
        }),
    ));
    events.push(payment(
        pays[0],
        2,
        PaymentEvent::Captured(PaymentCaptured {
            payment_id: pays[0],
            order_id: orders[0],
            amount: eur(2_500),
        }),
    ));
    events.push(payment(
        pays[0],
        3,
        PaymentEvent::Refunded(PaymentRefunded {
            payment_id: pays[0],
            order_id: orders[0],
            amount: eur(2_500),
        }),
    ));
    // 1: out of stock: the saga compensates and cancels the order with the code; its payment
    // was declined.
    events.extend(saga(
        orders[1],
        1,
        vec![saga_started(orders[1]), saga_failed(orders[1], "out_of_stock")],
    ));
    events.push(payment(
        pays[1],
        1,
        PaymentEvent::Declined(PaymentDeclined {
            payment_id: pays[1],
            order_id: orders[1],
            reason: "card expired".to_owned(),
        }),
    ));
    side.apply(events).await;
    let before_cancel = side.token(Service::Orders);
    side.apply(vec![
        cancelled_for(orders[1], 2, "out_of_stock"),
        // 2: placed before the saga, cancelled without a code; its payment authorized.
        cancelled_without_code(orders[2], 2),
        payment(
            pays[2],
            1,
            PaymentEvent::Authorized(PaymentAuthorized {
                payment_id: pays[2],
                order_id: orders[2],
                amount: eur(450),
            }),
        ),
        // 3: parked at its reservation; its payment voided.
        payment(
            pays[3],
            1,
            PaymentEvent::Voided(PaymentVoided {
                payment_id: pays[3],
                order_id: orders[3],
                amount: None,
                reason: "too late".to_owned(),
            }),
        ),
        // 4: captured.
        payment(
            pays[4],
            1,
            PaymentEvent::Authorized(PaymentAuthorized {
                payment_id: pays[4],
                order_id: orders[4],
                amount: eur(2_500),
            }),
        ),
        payment(
            pays[4],
            2,
            PaymentEvent::Captured(PaymentCaptured {
                payment_id: pays[4],
                order_id: orders[4],
                amount: eur(2_500),
            }),
        ),
    ])
    .await;
    side.apply(saga(
        orders[3],
        1,
        vec![
            saga_started(orders[3]),
            SagaEvent::Parked(SagaParked {
                order_id: orders[3],
                step: "reserve 0".to_owned(),
                error: "409 from inventory".to_owned(),
            }),
        ],
    ))
    .await;

    let (status, page) = side.get("/v1/dashboard/orders").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let rows: BTreeMap<String, Value> = page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["order_id"].as_str().unwrap().to_owned(), r.clone()))
        .collect();
    let row = |i: usize| &rows[&orders[i].to_string()];
    let shown = |i: usize| {
        (
            row(i)["status"].clone(),
            row(i)["saga_state"].clone(),
            row(i)["reason_code"].clone(),
            row(i)["payment_status"].clone(),
        )
    };
    assert_eq!(
        shown(0),
        (
            "confirmed".into(),
            "awaiting_shipment".into(),
            Value::Null,
            "refunded".into()
        ),
        "{}",
        row(0)
    );
    assert_eq!(
        shown(1),
        (
            "cancelled".into(),
            "compensating".into(),
            "out_of_stock".into(),
            "declined".into()
        ),
        "{}",
        row(1)
    );
    assert_eq!(row(1)["cancel_reason"], "out of stock", "the free text beside the code");
    assert_eq!(
        shown(2),
        ("cancelled".into(), Value::Null, Value::Null, "authorized".into()),
        "{}",
        row(2)
    );
    assert!(row(2)["saga_updated_at"].is_null(), "{}", row(2));
    assert_eq!(
        shown(3),
        ("pending".into(), "parked".into(), Value::Null, "voided".into()),
        "{}",
        row(3)
    );
    assert_eq!(
        shown(4),
        ("pending".into(), Value::Null, Value::Null, "captured".into()),
        "{}",
        row(4)
    );
    assert!(row(0)["saga_updated_at"].is_string(), "{}", row(0));
    let (status, one) = side.get(&format!("/v1/dashboard/orders/{}", orders[1])).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(&one, row(1), "the order's row is the list's");

    // Filters by reason code, alone and with the status.
    let listed = |query: &str| {
        let uri = format!("/v1/dashboard/orders?{query}");
        let router = side.router.clone();
        async move {
            let (status, page) = get(router, uri).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            page["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["order_id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed("reason_code=out_of_stock").await, vec![orders[1].to_string()]);
    assert_eq!(
        listed("reason_code=out_of_stock&status=cancelled").await,
        vec![orders[1].to_string()]
    );
    assert!(listed("reason_code=out_of_stock&status=pending").await.is_empty());
    assert!(listed("reason_code=requested").await.is_empty());
    assert!(
        listed(&format!("reason_code=out_of_stock&at_position={before_cancel}"))
            .await
            .is_empty(),
        "not cancelled yet then"
    );

    // As of a position of the orders log (which holds the sagas): the saga as it was then.
    let then = |at: ConsistencyToken, order: Uuid| {
        let uri = format!("/v1/dashboard/orders/{order}?at_position={at}");
        let router = side.router.clone();
        async move {
            let (status, row) = get(router, uri).await;
            assert_eq!(status, StatusCode::OK, "{row}");
            row
        }
    };
    let row0 = then(placed, orders[0]).await;
    assert_eq!(
        (&row0["saga_state"], &row0["payment_status"]),
        (&Value::from("reserving"), &Value::from("none")),
        "{row0}"
    );
    let row1 = then(before_cancel, orders[1]).await;
    assert_eq!(
        (&row1["status"], &row1["saga_state"], &row1["reason_code"]),
        (&Value::from("pending"), &Value::from("compensating"), &Value::Null),
        "{row1}"
    );

    // The funnel: pending orders, and the cancellations per reason code.
    let (status, funnel) = side.get("/v1/analytics/order-funnel").await;
    assert_eq!(status, StatusCode::OK, "{funnel}");
    assert_eq!(
        (
            &funnel["placed"],
            &funnel["pending"],
            &funnel["confirmed"],
            &funnel["cancelled"]
        ),
        (&Value::from(5), &Value::from(2), &Value::from(1), &Value::from(2)),
        "{funnel}"
    );
    assert_eq!(funnel["cancellation_reasons"]["out_of_stock"], 1, "{funnel}");
    assert_eq!(funnel["cancellation_reasons"]["unspecified"], 1, "{funnel}");
    assert_eq!(funnel["cancellation_reasons"]["requested"], 0, "{funnel}");
    // Order 0 is confirmed, but its payment was refunded whole: no revenue.
    let (_, revenue) = side
        .get("/v1/analytics/revenue?from=2026-11-01T00:00:00Z&to=2026-11-03T00:00:00Z")
        .await;
    assert_eq!(revenue["buckets"], serde_json::json!([]), "{revenue}");

    // The fields and the filter are documented.
    let (_, doc) = side.get("/openapi.json").await;
    let schemas = &doc["components"]["schemas"];
    for field in ["saga_state", "saga_updated_at", "reason_code", "cancel_reason"] {
        // A nullable reference carries its description in its `oneOf`'s reference.
        let property = &schemas["DashboardOrder"]["properties"][field];
        let description = property["description"]
            .as_str()
            .or(property["oneOf"][0]["description"].as_str());
        assert!(description.is_some_and(|d| !d.is_empty()), "{field}: {property}");
    }
    assert!(
        schemas["DashboardSagaState"]["description"]
            .as_str()
            .unwrap()
            .contains("awaiting_shipment"),
        "{}",
        schemas["DashboardSagaState"]
    );
    let params = doc["paths"]["/v1/dashboard/orders"]["get"]["parameters"]
        .as_array()
        .unwrap();
    assert!(params.iter().any(|p| p["name"] == "reason_code"), "{params:?}");
    for (path, schema) in [
        ("/v1/analytics/revenue", "AnalyticsRevenue"),
        ("/v1/analytics/order-funnel", "AnalyticsFunnel"),
    ] {
        assert_eq!(
            doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/{schema}"),
            "{path}"
        );
    }
}

/// The read API's edge is the service kit's: every answer, an error included, carries the
/// correlation id it was given (or one it made up) and its own request id.
#[tokio::test]
async fn answers_carry_the_correlation_and_request_ids() {
    let side = ReadSide::new(Duration::from_millis(100)).await;
    for uri in [
        "/v1/dashboard/orders",
        "/v1/dashboard/orders?limit=0",
        "/nowhere",
        "/health",
    ] {
        let request = Request::get(uri)
            .header("x-correlation-id", "trace-me-42")
            .body(Body::empty())
            .unwrap();
        let response = side.router.clone().oneshot(request).await.unwrap();
        let headers = response.headers();
        assert_eq!(
            headers.get("x-correlation-id").and_then(|v| v.to_str().ok()),
            Some("trace-me-42"),
            "{uri}"
        );
        let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok());
        assert!(
            request_id.is_some_and(|id| Uuid::try_parse(id).is_ok()),
            "{uri}: {request_id:?}"
        );
    }
    let response = side
        .router
        .clone()
        .oneshot(Request::get("/v1/projections").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let made_up = response.headers().get("x-correlation-id").and_then(|v| v.to_str().ok());
    assert!(
        made_up.is_some_and(|id| Uuid::try_parse(id).is_ok()),
        "made up when absent: {made_up:?}"
    );
    let bad = Request::get("/v1/projections")
        .header("x-correlation-id", "has spaces")
        .body(Body::empty())
        .unwrap();
    let (status, body) = {
        let response = side.router.clone().oneshot(bad).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice::<Value>(&bytes).unwrap())
    };
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn bad_parameters_are_400_in_the_error_format() {
    let side = ReadSide::new(Duration::from_millis(100)).await;
    let order = Uuid::new_v4();
    for uri in [
        "/v1/dashboard/orders?colour=red".to_owned(),
        "/v1/dashboard/orders?limit=0".to_owned(),
        "/v1/dashboard/orders?limit=501".to_owned(),
        "/v1/dashboard/orders?limit=ten".to_owned(),
        "/v1/dashboard/orders?limit=5&limit=6".to_owned(),
        "/v1/dashboard/orders?status=lost".to_owned(),
        "/v1/dashboard/orders?reason_code=lost".to_owned(),
        "/v1/dashboard/orders?reason_code=".to_owned(),
        "/v1/dashboard/orders?customer_id=42".to_owned(),
        "/v1/dashboard/orders?placed_from=yesterday".to_owned(),
        "/v1/dashboard/orders?placed_from=2026-11-02T00:00:00Z&placed_to=2026-11-01T00:00:00Z".to_owned(),
        "/v1/dashboard/orders?cursor=zz".to_owned(),
        "/v1/dashboard/orders?cursor=%27%3B%20DROP%20TABLE%20x%3B--".to_owned(),
        "/v1/dashboard/orders?sort=price".to_owned(),
        "/v1/dashboard/orders?as_of=2026-11-02T00:00:00Z&at_position=orders:3".to_owned(),
        "/v1/dashboard/orders?min_position=-1".to_owned(),
        "/v1/dashboard/orders?min_position=12".to_owned(),
        "/v1/dashboard/orders?min_position=shipping:12".to_owned(),
        "/v1/dashboard/orders?min_position=orders:".to_owned(),
        "/v1/dashboard/orders?min_position=orders:-3".to_owned(),
        "/v1/dashboard/orders/not-a-uuid".to_owned(),
        format!("/v1/dashboard/orders/{order}?as_of=noon"),
        "/v1/dashboard/customers/123".to_owned(),
        "/v1/analytics/revenue?bucket=week".to_owned(),
        "/v1/analytics/revenue?from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z".to_owned(),
        "/v1/analytics/top-products?limit=1000".to_owned(),
        "/v1/analytics/order-funnel?to=later".to_owned(),
        "/v1/projections?verbose=1".to_owned(),
    ] {
        let (status, body) = side.get(&uri).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
        // The parameter at fault, or all of them when only their combination is.
        let details = &body["error"]["details"];
        assert!(
            details["parameter"].is_string() || details["parameters"].as_array().is_some_and(|p| p.len() >= 2),
            "{uri}: {body}"
        );
    }
    // A cursor of another sort.
    let (_, first) = side.get("/v1/dashboard/orders?limit=1").await;
    assert!(first["next_cursor"].is_null(), "no orders yet");
    let (status, body) = side.get("/nowhere").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let response = side
        .router
        .clone()
        .oneshot(Request::post("/v1/dashboard/orders").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn min_position_waits_for_the_projection_or_answers_503_with_the_position_reached() {
    let mut side = ReadSide::new(Duration::from_millis(1500)).await;
    let shop = Shop::new();
    let reached = side.apply((0..3).map(|n| shop.registered(n)).collect()).await;
    assert_eq!(reached.to_string(), "customers:3");

    // A bare number is refused, showing the token form.
    let (status, body) = side.get("/v1/dashboard/orders?min_position=3").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("orders:12"),
        "{body}"
    );

    // Never applied within the wait: 503 with the position reached of the token's service.
    let (status, body) = side.get("/v1/dashboard/orders?min_position=customers:103").await;
    assert_error(status, &body, StatusCode::SERVICE_UNAVAILABLE, "not_caught_up");
    assert_eq!(body["error"]["details"]["position"], 3);
    assert_eq!(body["error"]["details"]["min_position"], "customers:103");
    assert_eq!(body["error"]["details"]["service"], "customers");
    // Another service's log is waited for on its own: nothing of the orders' is applied yet.
    let (status, body) = side.get("/v1/dashboard/orders?min_position=orders:1").await;
    assert_error(status, &body, StatusCode::SERVICE_UNAVAILABLE, "not_caught_up");
    assert_eq!(body["error"]["details"]["position"], 0);
    let (status, body) = side.get("/v1/dashboard/orders?min_position=customers:3").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Applied while the request waits: the answer includes it. Applied only once the request
    // provably waits, or it could be answered by its own first look and prove nothing.
    let order = Uuid::new_v4();
    let event = shop.placed(order, 0, 0, 2);
    let uri = format!("/v1/dashboard/orders/{order}?min_position=orders:1");
    let before = dashboard_waits(&side).await;
    let request = tokio::spawn(get(side.router.clone(), uri));
    waits_reach(&side, before + 1, Duration::from_millis(1500)).await;
    let placed = side.apply(vec![event]).await;
    assert_eq!(placed.to_string(), "orders:1");
    let (status, body) = request.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["order_id"], order.to_string());
    for uri in [
        format!("/v1/analytics/revenue?from=2026-11-01T00:00:00Z&to=2026-11-03T00:00:00Z&min_position={placed}"),
        format!("/v1/dashboard/customers/{}?min_position={placed}", shop.customers[0],),
    ] {
        let (status, body) = side.get(&uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    }
}

/// The read API's progress lookups so far for the dashboard (`/metrics`).
async fn dashboard_lookups(side: &ReadSide) -> u64 {
    dashboard_counter(side, "orderflow_read_progress_lookups_total").await
}

/// Requests that have subscribed to the dashboard's progress and wait on it.
async fn dashboard_waits(side: &ReadSide) -> u64 {
    dashboard_counter(side, "orderflow_read_progress_waits_total").await
}

async fn dashboard_counter(side: &ReadSide, name: &str) -> u64 {
    let prefix = format!("{name}{{projection=\"order_dashboard\"}}");
    side.metrics()
        .await
        .lines()
        .find(|line| line.starts_with(&prefix))
        .map_or(0, |line| line.rsplit(' ').next().unwrap().parse().unwrap())
}

/// Waits until `count` requests wait on the dashboard's progress; fails after `within`.
async fn waits_reach(side: &ReadSide, count: u64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let waits = dashboard_waits(side).await;
        if waits >= count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{waits} requests waiting on the dashboard after {within:?}, waiting for {count}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn requests_waiting_on_a_projection_share_one_look_at_its_progress() {
    const WAITERS: usize = 40;
    let wait = Duration::from_secs(1);
    let mut side = ReadSide::new(wait).await;
    let shop = Shop::new();
    let reached = side.apply((0..3).map(|n| shop.registered(n)).collect()).await;
    let waiting = |waiters: usize, min_position: ConsistencyToken| {
        (0..waiters)
            .map(|_| {
                let uri = format!("/v1/dashboard/orders?min_position={min_position}");
                tokio::spawn(get(side.router.clone(), uri))
            })
            .collect::<Vec<_>>()
    };
    // Lookups while `waiters` requests wait the whole second for a position never applied.
    let never_applied = async |waiters: usize| {
        let before = dashboard_lookups(&side).await;
        let never = ConsistencyToken {
            position: reached.position + 100,
            ..reached
        };
        for request in waiting(waiters, never) {
            let (status, body) = request.await.unwrap();
            assert_error(status, &body, StatusCode::SERVICE_UNAVAILABLE, "not_caught_up");
            assert_eq!(body["error"]["details"]["position"], reached.position);
        }
        dashboard_lookups(&side).await - before
    };

    // One request alone: its own look, then one every 5 ms or so, however fast this machine
    // looks. Forty together: their own looks, and the same shared looks as one alone (forty
    // times as many if each looked for itself).
    let alone = never_applied(1).await;
    let together = never_applied(WAITERS).await;
    let most = WAITERS as u64 + 2 * alone + 20;
    assert!(alone >= 2, "a request waiting a second looks more than once: {alone}");
    assert!(together >= WAITERS as u64, "each request looks once itself: {together}");
    assert!(
        together <= most,
        "{together} progress lookups for {WAITERS} requests waiting 1 s, {alone} for one: \
         at most {most} when they share a poller"
    );

    // Applied while they wait, once every one of them provably waits: every one is answered
    // with it.
    let order = Uuid::new_v4();
    let before = dashboard_waits(&side).await;
    let requests = waiting(WAITERS, "orders:1".parse().unwrap());
    waits_reach(&side, before + WAITERS as u64, wait).await;
    side.apply(vec![shop.placed(order, 0, 0, 2)]).await;
    for request in requests {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["rows"][0]["order_id"], order.to_string(), "{body}");
    }
}

#[tokio::test]
async fn analytics_and_projection_status() {
    let mut side = ReadSide::new(Duration::from_millis(200)).await;
    let shop = Shop::new();
    side.apply((0..3).map(|n| shop.registered(n)).collect()).await;
    let orders: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    side.apply(
        orders
            .iter()
            .enumerate()
            .map(|(i, &id)| shop.placed(id, i % 3, i % 3, 1 + i as i64))
            .collect(),
    )
    .await;
    let total = |i: usize| shop.products[i % 3].2 * (1 + i as i64);
    let pays: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let authorized = |i: usize| {
        payment(
            pays[i],
            1,
            PaymentEvent::Authorized(PaymentAuthorized {
                payment_id: pays[i],
                order_id: orders[i],
                amount: eur(total(i)),
            }),
        )
    };
    side.apply(vec![
        // 0: cancelled by its client.
        cancelled(orders[0], 2),
        // 1: confirmed, authorized: revenue.
        authorized(1),
        confirmed(orders[1]),
        // 2: confirmed, captured, 100 refunded: revenue, net of the refund.
        authorized(2),
        payment(
            pays[2],
            2,
            PaymentEvent::Captured(PaymentCaptured {
                payment_id: pays[2],
                order_id: orders[2],
                amount: eur(total(2)),
            }),
        ),
        payment(
            pays[2],
            3,
            PaymentEvent::Refunded(PaymentRefunded {
                payment_id: pays[2],
                order_id: orders[2],
                amount: eur(100),
            }),
        ),
        confirmed(orders[2]),
        // 3: confirmed without a payment: not revenue.
        confirmed(orders[3]),
        // 4: confirmed, its payment declined: not revenue.
        payment(
            pays[4],
            1,
            PaymentEvent::Declined(PaymentDeclined {
                payment_id: pays[4],
                order_id: orders[4],
                reason: "card expired".to_owned(),
            }),
        ),
        confirmed(orders[4]),
        // 5: authorized but still pending: not revenue.
        authorized(5),
    ])
    .await;
    side.apply(vec![(
        format!("customer-{}", shop.customers[1]),
        2,
        DomainEvent::Customer(CustomerEvent::Renamed(CustomerRenamed {
            customer_id: shop.customers[1],
            name: "Renamed".to_owned(),
        })),
    )])
    .await;

    let range = "from=2026-11-01T00:00:00Z&to=2026-11-03T00:00:00Z";
    let (status, revenue) = side.get(&format!("/v1/analytics/revenue?{range}&bucket=day")).await;
    assert_eq!(status, StatusCode::OK, "{revenue}");
    let buckets = revenue["buckets"].as_array().unwrap();
    let sum = |field: &str| buckets.iter().map(|b| b[field].as_i64().unwrap()).sum::<i64>();
    assert_eq!(
        (sum("revenue_minor"), sum("orders")),
        (total(1) + total(2) - 100, 2),
        "orders 1 and 2 (net of its refund); 0 cancelled, 3 and 4 unpaid, 5 pending: {revenue}"
    );
    assert_eq!(revenue["bucket"], "day");
    let (_, top) = side.get(&format!("/v1/analytics/top-products?{range}&limit=2")).await;
    let names: Vec<&str> = top["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2);
    assert_eq!(names[0], "Saucer", "3 + 6 saucers: {top}");

    let (_, funnel) = side.get("/v1/analytics/order-funnel").await;
    assert_eq!(funnel["placed"], 6, "{funnel}");
    assert_eq!(funnel["pending"], 1, "{funnel}");
    assert_eq!(funnel["confirmed"], 4);
    assert_eq!(funnel["cancelled"], 1);
    assert_eq!(
        funnel["cancellation_reasons"],
        serde_json::json!({
            "requested": 1, "out_of_stock": 0, "payment_declined": 0, "payment_unavailable": 0,
            "timed_out": 0, "abandoned": 0, "unspecified": 0,
        }),
        "{funnel}"
    );

    let (_, durations) = side.get(&format!("/v1/analytics/delivery-durations?{range}")).await;
    assert_eq!(durations["count"], 0);

    let (status, status_body) = side.get("/v1/projections").await;
    assert_eq!(status, StatusCode::OK);
    let by_name: BTreeMap<String, Value> = status_body["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_owned(), p.clone()))
        .collect();
    for name in ["order_dashboard", "sales_analytics"] {
        let p = &by_name[name];
        assert_eq!(p["state"], "live", "{p}");
        assert_eq!(p["live_version"], 1);
        // Per service whose events it reads: the position applied of its log, and its token.
        let services: BTreeMap<String, Value> = p["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["service"].as_str().unwrap().to_owned(), s.clone()))
            .collect();
        for category in projections::catalog::categories(name) {
            let service = Service::owning(*category);
            let token = side.token(service);
            let s = &services[service.name()];
            assert_eq!(s["position"], token.position, "{name}: {p}");
            assert_eq!(s["token"], token.to_string(), "{name}: {p}");
        }
        assert_eq!(p["dead_letters"], 0);
    }

    // Operations endpoints.
    let (status, _) = side.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    let (status, doc) = side.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/v1/dashboard/orders"].is_object(), "{doc}");
    let text = side.metrics().await;
    assert!(text.contains("http_request_duration_seconds"), "{text}");
    assert!(
        text.contains("route=\"/v1/dashboard/orders\"") || text.contains("/v1/analytics"),
        "{text}"
    );
}
