//! `/v1/dashboard/customers`, the list of the dashboard's customers, through the router over a
//! dashboard filled by the real projection, on both read databases: PostgreSQL and SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};

use axum::Router;
use axum::http::StatusCode;
use chrono::{DateTime, TimeZone, Utc};
use event_schemas::{
    Currency, CustomerEvent, CustomerRegistered, CustomerSnapshot, DomainEvent, OrderCancelled, OrderEvent, OrderLine,
    OrderPlaced, Service,
};
use projections::dashboard::{Cursor, Direction, OrderDashboard, Sort, SortKey};
use projections::{Batch, Origin, ProjectedEvent, Projection, ReadDb};
use read_api::{ReadConfig, ReadState};
use serde_json::Value;
use testkit::http::get;
use uuid::Uuid;

#[derive(Debug, Clone, Copy)]
enum Server {
    Postgres,
    Sqlite,
}

/// The dashboard (version 1, live) on a fresh database, and the read API over it.
struct Side {
    dashboard: OrderDashboard,
    router: Router,
    positions: BTreeMap<Service, u64>,
}

impl Side {
    async fn new(server: Server) -> Self {
        let url = match server {
            Server::Postgres => testkit::postgres::fresh_database().await.url,
            Server::Sqlite => format!(
                "sqlite://{}",
                std::env::temp_dir()
                    .join(format!("{}.db", testkit::unique_name("read_customers")))
                    .display()
            ),
        };
        let db = ReadDb::connect(&url, 4).await.unwrap();
        db.migrate().await.unwrap();
        let dashboard = OrderDashboard::new(db.clone(), 1);
        dashboard.prepare().await.unwrap();
        db.ensure_live(dashboard.name(), 1).await.unwrap();
        let router = read_api::router(ReadState::new(db, None, ReadConfig::default()));
        Side {
            dashboard,
            router,
            positions: BTreeMap::new(),
        }
    }

    /// Applies `events` as the services' stores would hand them out.
    async fn apply(&mut self, events: Vec<(String, u64, DomainEvent)>) {
        let base = Utc.with_ymd_and_hms(2026, 11, 2, 9, 0, 0).unwrap();
        let mut batch = Batch::default();
        for (stream_id, stream_version, event) in events {
            let service = Service::owning(event.category());
            let position = self.positions.entry(service).or_insert(0);
            *position += 1;
            let position = *position;
            let at: DateTime<Utc> = base + chrono::Duration::minutes(self.positions.values().sum::<u64>() as i64);
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
        }
        self.dashboard.apply(&batch).await.unwrap();
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        get(&self.router, uri).await
    }
}

fn registered(customer_id: Uuid, name: &str) -> (String, u64, DomainEvent) {
    (
        format!("customer-{customer_id}"),
        1,
        DomainEvent::Customer(CustomerEvent::Registered(CustomerRegistered {
            customer_id,
            name: name.to_owned(),
            email: format!("{customer_id}@example.com"),
        })),
    )
}

fn placed(order_id: Uuid, customer_id: Uuid, name: &str, currency: Currency, total: i64) -> (String, u64, DomainEvent) {
    (
        format!("order-{order_id}"),
        1,
        DomainEvent::Order(OrderEvent::Placed(OrderPlaced {
            order_id,
            customer_id,
            customer: CustomerSnapshot {
                name: name.to_owned(),
                email: "snapshot@example.com".to_owned(),
            },
            lines: vec![OrderLine {
                product_id: Uuid::new_v4(),
                sku: "CUP".to_owned(),
                name: "Cup".to_owned(),
                quantity: 1,
                unit_price_minor: total,
            }],
            currency,
            total_minor: total,
        })),
    )
}

fn cancelled(order_id: Uuid) -> (String, u64, DomainEvent) {
    (
        format!("order-{order_id}"),
        2,
        DomainEvent::Order(OrderEvent::Cancelled(OrderCancelled {
            order_id,
            reason: "changed mind".to_owned(),
            reason_code: "requested".to_owned(),
        })),
    )
}

/// Names that sort differently byte-wise than in a natural-language collation, repeat, hold the
/// cursor's separator or are not ASCII.
const NAMES: &[&str] = &[
    "bob", "Bob", "Bob", "Bob", "alice", "Alice", "a:b:c", "Zoë", "Émile", "O'Brien", "bob ", "Bob",
];

async fn customers_page_through_in_name_order(server: Server) {
    let mut side = Side::new(server).await;
    let mut customers: Vec<(String, Uuid)> = NAMES.iter().map(|name| ((*name).to_owned(), Uuid::new_v4())).collect();
    side.apply(customers.iter().map(|(name, id)| registered(*id, name)).collect())
        .await;
    // A customer known only from its order's snapshot (stream version 0).
    let carol = Uuid::new_v4();
    customers.push(("Carol".to_owned(), carol));
    // Orders in two currencies, one cancelled.
    let bob = customers[1].1;
    let orders: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    side.apply(vec![
        placed(orders[0], bob, "Bob", Currency::EUR, 1_000),
        placed(orders[1], bob, "Bob", Currency::USD, 700),
        placed(orders[2], bob, "Bob", Currency::EUR, 250),
        placed(orders[3], carol, "Carol", Currency::EUR, 90),
    ])
    .await;
    side.apply(vec![cancelled(orders[2])]).await;

    // The order the list promises: name byte-wise, then the id as stored (hyphenated text).
    let mut expected = customers.clone();
    expected.sort_by(|(a, x), (b, y)| a.as_bytes().cmp(b.as_bytes()).then(x.to_string().cmp(&y.to_string())));
    let expected: Vec<String> = expected.iter().map(|(_, id)| id.to_string()).collect();

    // Pages of 2 (and 1, 5, and everything at once) cover every customer once, in that order.
    for limit in [1, 2, 5, 1000] {
        let mut seen = Vec::new();
        let mut uri = format!("/v1/dashboard/customers?limit={limit}");
        let mut pages = 0;
        loop {
            let (status, page) = side.get(&uri).await;
            assert_eq!(status, StatusCode::OK, "{server:?} {uri}: {page}");
            let rows = page["rows"].as_array().unwrap();
            assert!(!rows.is_empty() && rows.len() <= limit, "{server:?}: {page}");
            pages += 1;
            for row in rows {
                seen.push(row["customer_id"].as_str().unwrap().to_owned());
                // Each row is what the customer's own summary answers.
                let (status, summary) = side
                    .get(&format!(
                        "/v1/dashboard/customers/{}",
                        row["customer_id"].as_str().unwrap()
                    ))
                    .await;
                assert_eq!(status, StatusCode::OK, "{summary}");
                assert_eq!(row, &summary, "{server:?}");
            }
            match page["next_after"].as_str() {
                Some(after) => {
                    assert_eq!(rows.len(), limit, "only the last page is short");
                    uri = format!("/v1/dashboard/customers?limit={limit}&after={after}");
                }
                None => break,
            }
        }
        assert_eq!(seen, expected, "{server:?}, pages of {limit}");
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), customers.len());
        assert_eq!(pages, customers.len().div_ceil(limit), "{server:?}, pages of {limit}");
    }

    // The default page holds them all (13 < 50); the values of one customer in detail.
    let (status, page) = side.get("/v1/dashboard/customers").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page["next_after"].is_null());
    let rows = page["rows"].as_array().unwrap();
    assert_eq!(rows.len(), customers.len());
    let row = rows.iter().find(|r| r["customer_id"] == bob.to_string()).unwrap();
    assert_eq!(row["name"], "Bob");
    assert_eq!(row["email"], format!("{bob}@example.com"));
    assert_eq!(row["stream_version"], 1);
    assert_eq!(row["order_count"], 3);
    assert_eq!(
        row["lifetime_value"],
        serde_json::json!([
            {"currency": "EUR", "order_count": 2, "lifetime_value_minor": 1_000},
            {"currency": "USD", "order_count": 1, "lifetime_value_minor": 700},
        ]),
        "the cancelled order leaves the value"
    );
    assert_eq!(row["last_order"]["order_id"], orders[2].to_string());
    let row = rows.iter().find(|r| r["customer_id"] == carol.to_string()).unwrap();
    assert_eq!(
        (row["name"].as_str(), row["stream_version"].as_u64()),
        (Some("Carol"), Some(0))
    );
    let lonely = rows.iter().find(|r| r["name"] == "Zoë").unwrap();
    assert_eq!(lonely["order_count"], 0);
    assert_eq!(lonely["lifetime_value"], serde_json::json!([]));
    assert!(lonely["last_order"].is_null());

    // Read-your-writes: a customer registered later, waited for with its token.
    let dave = Uuid::new_v4();
    side.apply(vec![registered(dave, "Dave")]).await;
    let token = side.positions[&Service::Customers];
    let (status, page) = side
        .get(&format!(
            "/v1/dashboard/customers?limit=1000&min_position=customers:{token}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["customer_id"] == dave.to_string())
    );
}

#[tokio::test]
async fn customers_page_through_in_name_order_postgres() {
    customers_page_through_in_name_order(Server::Postgres).await;
}

#[tokio::test]
async fn customers_page_through_in_name_order_sqlite() {
    customers_page_through_in_name_order(Server::Sqlite).await;
}

/// Hex, as the cursors are.
fn hex(text: &str) -> String {
    text.bytes().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test]
async fn bad_customer_list_parameters_are_400_naming_them() {
    let side = Side::new(Server::Postgres).await;
    let orders_cursor = Cursor {
        sort: Sort {
            key: SortKey::PlacedAt,
            direction: Direction::Desc,
        },
        value: 1,
        order_id: Uuid::new_v4(),
    }
    .encode();
    for (query, parameter) in [
        ("after=zz".to_owned(), "after"),
        ("after=".to_owned(), "after"),
        ("after=6e3".to_owned(), "after"),
        (format!("after={}", hex("n:not-a-uuid:Bob")), "after"),
        (format!("after={}", hex("n:Bob")), "after"),
        (
            format!("after={}", hex(&format!("x:{}:Bob", Uuid::new_v4().simple()))),
            "after",
        ),
        (format!("after={orders_cursor}"), "after"),
        ("after=%27%3B%20DROP%20TABLE%20x%3B--".to_owned(), "after"),
        ("limit=0".to_owned(), "limit"),
        ("limit=1001".to_owned(), "limit"),
        ("limit=ten".to_owned(), "limit"),
        ("limit=5&limit=6".to_owned(), "limit"),
        ("sort=name".to_owned(), "sort"),
        ("as_of=2026-11-02T00:00:00Z".to_owned(), "as_of"),
        ("min_position=12".to_owned(), "min_position"),
        ("min_position=shipping:12".to_owned(), "min_position"),
    ] {
        let uri = format!("/v1/dashboard/customers?{query}");
        let (status, body) = side.get(&uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{uri}: {body}");
        assert_eq!(body["error"]["details"]["parameter"], parameter, "{uri}: {body}");
        assert!(
            body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    // A well-formed cursor of a customer that is not there (any more) is a place in the order.
    let after = hex(&format!("n:{}:M", Uuid::new_v4().simple()));
    let (status, page) = side
        .get(&format!("/v1/dashboard/customers?after={after}&limit=1000"))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page, serde_json::json!({"rows": [], "next_after": null}));
}
