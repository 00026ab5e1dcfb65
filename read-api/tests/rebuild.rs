//! A rebuild while readers query continuously (invariant 8 of docs/design.md): every answer comes from a
//! complete version, before, during and after the switch, and the old version's tables go.
//! Embedded deployment: SQLite store, in-process subscription, SQLite read database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use event_schemas::{
    Currency, CustomerEvent, CustomerRegistered, CustomerSnapshot, DomainEvent, OrderEvent, OrderLine, OrderPlaced,
    Service,
};
use event_store::{Commit, EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamAppend};
use projections::catalog::{self, Sinks};
use projections::dashboard;
use projections::{ReadDb, RebuildOptions, RunOptions, ServiceLog, run_from_stores};
use read_api::{ReadConfig, ReadState};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const ORDERS: usize = 300;

fn new_event(event: DomainEvent) -> NewEvent {
    let encoded = event.encode();
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: encoded.event_type.to_owned(),
        schema_version: encoded.schema_version,
        payload: encoded.payload,
        occurred_at: chrono::Utc::now(),
        metadata: EventMetadata::default(),
    }
}

/// One customer in the customers' store, and `ORDERS` orders of theirs in the orders' store.
async fn seed(customers: &dyn EventStore, orders: &dyn EventStore) {
    let customer_id = Uuid::now_v7();
    let registered = DomainEvent::Customer(CustomerEvent::Registered(CustomerRegistered {
        customer_id,
        name: "Ada".into(),
        email: "ada@example.com".into(),
    }));
    customers
        .commit(Commit {
            appends: vec![StreamAppend {
                stream_id: registered.stream_id(),
                expected: ExpectedVersion::NoStream,
                events: vec![new_event(registered)],
            }],
            idempotency: None,
        })
        .await
        .unwrap();
    let mut appends = Vec::new();
    for n in 0..ORDERS {
        let placed = DomainEvent::Order(OrderEvent::Placed(OrderPlaced {
            order_id: Uuid::now_v7(),
            customer_id,
            customer: CustomerSnapshot {
                name: "Ada".into(),
                email: "ada@example.com".into(),
            },
            lines: vec![OrderLine {
                product_id: Uuid::now_v7(),
                sku: "TEA".into(),
                name: "Tea".into(),
                quantity: 1,
                unit_price_minor: 100 + n as i64,
            }],
            currency: Currency::EUR,
            total_minor: 100 + n as i64,
        }));
        appends.push(StreamAppend {
            stream_id: placed.stream_id(),
            expected: ExpectedVersion::NoStream,
            events: vec![new_event(placed)],
        });
    }
    orders
        .commit(Commit {
            appends,
            idempotency: None,
        })
        .await
        .unwrap();
}

use testkit::http::get;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_never_see_a_half_built_version_while_rebuilds_switch() {
    let dir = std::env::temp_dir();
    let customers: Arc<dyn EventStore> = Arc::new(testkit::sqlite::store("rebuild_customers").await);
    let orders: Arc<dyn EventStore> = Arc::new(testkit::sqlite::store("rebuild_orders").await);
    seed(&*customers, &*orders).await;
    let logs = vec![
        ServiceLog::new(Service::Customers, customers),
        ServiceLog::new(Service::Orders, Arc::clone(&orders)),
    ];
    let read_url = format!(
        "sqlite://{}",
        dir.join(format!("{}.db", testkit::unique_name("rebuild_read")))
            .display()
    );
    let db = ReadDb::connect(&read_url, 8).await.unwrap();
    db.migrate().await.unwrap();
    let sinks = Sinks {
        read_db: db.clone(),
        clickhouse: None,
    };
    let factory = catalog::factory(dashboard::NAME, &sinks).unwrap();
    let cancel = CancellationToken::new();
    let runner = tokio::spawn(run_from_stores(
        logs.clone(),
        db.clone(),
        factory.clone(),
        RunOptions::default(),
        cancel.clone(),
    ));
    let router = read_api::router(ReadState::new(db.clone(), None, ReadConfig::default()));
    let head = orders.head_position().await.unwrap();
    let (status, page) = get(
        &router,
        &format!("/v1/dashboard/orders?limit=500&min_position=orders:{head}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["rows"].as_array().unwrap().len(), ORDERS);

    // Readers hammer the list while two rebuilds build versions 2 and 3 in small batches and
    // switch to them.
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (router, stop, answers) = (router.clone(), stop.clone(), answers.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let (status, page) = get(&router, "/v1/dashboard/orders?limit=500&sort=total_asc").await;
                    assert_eq!(status, StatusCode::OK, "{page}");
                    let rows = page["rows"].as_array().unwrap();
                    assert_eq!(rows.len(), ORDERS, "an answer from an incomplete version");
                    assert_eq!(rows[0]["total_minor"], 100);
                    answers.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for expected in [2, 3] {
        let report = projections::rebuild(
            logs.clone(),
            &db,
            factory.clone(),
            RebuildOptions {
                batch_size: 10,
                drop_after: Duration::from_millis(100),
                ..RebuildOptions::default()
            },
            CancellationToken::new(),
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(report.version, expected);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.expect("a reader saw an incomplete answer or an error");
    }
    assert!(
        answers.load(Ordering::Relaxed) >= 10,
        "the readers read during the rebuilds"
    );

    let (_, status) = get(&router, "/v1/projections").await;
    let dashboard = status["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == dashboard::NAME)
        .unwrap()
        .clone();
    assert_eq!(dashboard["live_version"], 3, "{dashboard}");
    assert_eq!(dashboard["state"], "live");
    for old in [1, 2] {
        let gone = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT 1 FROM order_dashboard_v{old}_orders"
        )))
        .fetch_all(db.pool())
        .await;
        assert!(gone.is_err(), "version {old}'s tables are dropped");
    }
    cancel.cancel();
    runner.await.unwrap().unwrap();
}
