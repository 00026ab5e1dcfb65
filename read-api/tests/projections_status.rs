//! `/v1/projections`: each projection's lag in events and in seconds, and its rebuild's state and
//! progress, against histories whose positions and times the tests know.
//!
//! - Embedded (`orderflow serve`): the runners follow SQLite stores, the read API knows the
//!   stores' heads; the logs are imported with known commit times (`LogTransfer`, what
//!   `orderflow import` uses), the runners stopped, more imported: the lag is what was imported
//!   since, and its age.
//! - Distributed: the lag comes from what the Kafka workers store and report about their
//!   partitions (checkpoints, partition ends, "drained"), written here with the functions the
//!   workers use.
//! - A real rebuild held batch by batch: `rebuilding` with the percent of what it has applied,
//!   then `live` on the new version.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use event_schemas::{
    Category, Currency, CustomerEvent, CustomerRegistered, CustomerRenamed, CustomerSnapshot, DomainEvent,
    OrderConfirmed, OrderEvent, OrderLine, OrderPlaced, Service,
};
use event_store::{EventMetadata, EventStore, LogTransfer, RecordedEvent, SqliteEventStore};
use projections::catalog::{self, Sinks};
use projections::dashboard;
use projections::{
    Checkpoint, PartitionReport, ProjectionError, ReadDb, RebuildOptions, RebuildProgress, RunOptions, ServiceLog,
    run_from_stores, save_checkpoints,
};
use read_api::{HeadFn, ReadConfig, ReadState};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use testkit::http::get;

/// The longest any wait of these tests takes before it fails.
const WITHIN: Duration = Duration::from_secs(30);

/// A whole second two hours ago: the histories' commit times start there, so that lag in
/// seconds is large and known.
fn two_hours_ago() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp() - 7_200, 0).unwrap()
}

fn seconds(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

/// `event` as a store holds it at `position`, version `version` of its stream, committed at
/// `at`.
fn recorded(position: u64, version: u64, event: DomainEvent, at: DateTime<Utc>) -> RecordedEvent {
    let encoded = event.encode();
    RecordedEvent {
        position,
        stream_id: event.stream_id(),
        stream_version: version,
        event_id: Uuid::now_v7(),
        event_type: encoded.event_type.to_owned(),
        schema_version: encoded.schema_version,
        payload: encoded.payload,
        occurred_at: at,
        recorded_at: at,
        metadata: EventMetadata::default(),
    }
}

fn registered(customer_id: Uuid) -> DomainEvent {
    DomainEvent::Customer(CustomerEvent::Registered(CustomerRegistered {
        customer_id,
        name: "Ada".into(),
        email: "ada@example.com".into(),
    }))
}

fn placed(order_id: Uuid, customer_id: Uuid) -> DomainEvent {
    DomainEvent::Order(OrderEvent::Placed(OrderPlaced {
        order_id,
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
            unit_price_minor: 450,
        }],
        currency: Currency::EUR,
        total_minor: 450,
    }))
}

/// The services' stores of a test: customers' and orders' (inventory and payments stay empty).
struct Stores {
    customers: Arc<SqliteEventStore>,
    orders: Arc<SqliteEventStore>,
}

impl Stores {
    async fn new() -> Self {
        Stores {
            customers: Arc::new(testkit::sqlite::store("status_customers").await),
            orders: Arc::new(testkit::sqlite::store("status_orders").await),
        }
    }

    fn logs(&self) -> Vec<ServiceLog> {
        vec![
            ServiceLog::new(Service::Customers, Arc::clone(&self.customers) as Arc<dyn EventStore>),
            ServiceLog::new(Service::Orders, Arc::clone(&self.orders) as Arc<dyn EventStore>),
        ]
    }

    /// The stores' heads as `orderflow serve` gives them to the read API: from each store's
    /// change notifications.
    fn heads(&self) -> HeadFn {
        let changes: BTreeMap<Service, tokio::sync::watch::Receiver<u64>> = self
            .logs()
            .iter()
            .map(|log| (log.service, log.store.changes()))
            .collect();
        Arc::new(move |service| changes.get(&service).map_or(0, |changes| *changes.borrow()))
    }
}

/// A read database of its own, migrated, with no projection version yet.
async fn read_db(name: &str) -> ReadDb {
    let path = std::env::temp_dir().join(format!("{}.db", testkit::unique_name(name)));
    let db = ReadDb::connect(&format!("sqlite://{}", path.display()), 4)
        .await
        .unwrap();
    db.migrate().await.unwrap();
    db
}

/// Every projection's embedded runners over `logs`, as `orderflow serve` starts them.
struct Runners {
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<Result<(), ProjectionError>>>,
}

impl Runners {
    fn start(logs: &[ServiceLog], db: &ReadDb) -> Self {
        let sinks = Sinks {
            read_db: db.clone(),
            clickhouse: None,
        };
        let cancel = CancellationToken::new();
        let tasks = catalog::NAMES
            .iter()
            .map(|name| {
                tokio::spawn(run_from_stores(
                    logs.to_vec(),
                    db.clone(),
                    catalog::factory(name, &sinks).unwrap(),
                    RunOptions::default(),
                    cancel.clone(),
                ))
            })
            .collect();
        Runners { cancel, tasks }
    }

    /// Stops the runners and waits until they have.
    async fn stop(self) {
        self.cancel.cancel();
        for task in self.tasks {
            tokio::time::timeout(WITHIN, task)
                .await
                .expect("a runner stops when cancelled")
                .unwrap()
                .unwrap();
        }
    }
}

/// `/v1/projections`, answered 200.
async fn status(router: &Router) -> Value {
    let (status, body) = get(router, "/v1/projections").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// One projection's status in a `/v1/projections` answer.
fn projection(body: &Value, name: &str) -> Value {
    body["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        .clone()
}

/// One service's part of a projection's status.
fn source(projection: &Value, service: Service) -> Value {
    projection["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == service.name())
        .unwrap_or_else(|| panic!("no {service} in {projection}"))
        .clone()
}

/// Asks `/v1/projections` until `done` holds of the answer; fails after [`WITHIN`] naming
/// `what` and the last answer.
async fn status_until(router: &Router, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WITHIN;
    loop {
        let body = status(router).await;
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what} not within {WITHIN:?}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The seconds from `from` to `to`.
fn between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap() as f64 / 1e6
}

/// `value` lies in `low..=high`, give or take the millisecond the answer is rounded to.
fn assert_within(value: &Value, low: f64, high: f64, what: &str) {
    let value = value
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {value}"));
    assert!(
        low - 0.001 <= value && value <= high + 0.001,
        "{what} is {value}, expected between {low} and {high}"
    );
}

/// Embedded: the lag in events is exactly how far each store's head is past what the runners
/// applied, and the lag in seconds is as old as the work waiting: at least the age of the
/// oldest event not applied, at most the age of the last one applied. Caught up, both are 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_the_events_past_the_applied_position_and_their_age() {
    let stores = Stores::new().await;
    let base = two_hours_ago();
    let customer_id = Uuid::now_v7();
    let orders: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    // customers:1 at base; orders:1..=4 one second apart after it.
    stores
        .customers
        .import_events(&[recorded(1, 1, registered(customer_id), base)])
        .await
        .unwrap();
    let first: Vec<RecordedEvent> = (0..4)
        .map(|i| {
            recorded(
                i as u64 + 1,
                1,
                placed(orders[i], customer_id),
                base + seconds(i as i64 + 1),
            )
        })
        .collect();
    stores.orders.import_events(&first).await.unwrap();

    let db = read_db("status_lag").await;
    let router = read_api::router(ReadState::new(db.clone(), None, ReadConfig::default()).with_head(stores.heads()));
    let runners = Runners::start(&stores.logs(), &db);
    let caught_up = |body: &Value| {
        catalog::NAMES.iter().all(|name| {
            let p = projection(body, name);
            p["state"] == "live"
                && p["lag_events"] == 0
                && source(&p, Service::Orders)["position"] == 4
                && source(&p, Service::Customers)["position"] == 1
        })
    };
    let body = status_until(&router, "the runners apply customers:1 and orders:4", caught_up).await;
    for name in catalog::NAMES {
        let p = projection(&body, name);
        assert_eq!(p["state"], "live", "{p}");
        assert_eq!(p["live_version"], 1, "{p}");
        assert_eq!(p["lag_seconds"], 0.0, "caught up: {p}");
        assert!(p["rebuild"].is_null(), "{p}");
        for service in Service::ALL {
            let s = source(&p, service);
            assert_eq!(s["lag_events"], 0, "{s}");
            assert_eq!(s["lag_seconds"], 0.0, "{s}");
        }
        assert_eq!(source(&p, Service::Orders)["token"], "orders:4");
    }

    // The runners stop; the logs go on: customers:2 at base + 10 s, orders:5..=7 at base + 11,
    // 12 and 13 s.
    runners.stop().await;
    let renamed = DomainEvent::Customer(CustomerEvent::Renamed(CustomerRenamed {
        customer_id,
        name: "Ada L.".into(),
    }));
    stores
        .customers
        .import_events(&[recorded(2, 2, renamed, base + seconds(10))])
        .await
        .unwrap();
    let confirmed = |order_id| DomainEvent::Order(OrderEvent::Confirmed(OrderConfirmed { order_id }));
    stores
        .orders
        .import_events(&[
            recorded(5, 2, confirmed(orders[0]), base + seconds(11)),
            recorded(6, 2, confirmed(orders[1]), base + seconds(12)),
            recorded(7, 1, placed(orders[4], customer_id), base + seconds(13)),
        ])
        .await
        .unwrap();

    let asked = Utc::now();
    let body = status(&router).await;
    let answered = Utc::now();
    for name in catalog::NAMES {
        let p = projection(&body, name);
        assert_eq!(p["state"], "live", "{p}");
        assert_eq!(p["lag_events"], 4, "1 customers event and 3 orders events wait: {p}");
        let customers = source(&p, Service::Customers);
        assert_eq!(customers["position"], 1, "{p}");
        assert_eq!(customers["lag_events"], 1, "{p}");
        // Waiting: the event of base + 10 s; applied: the one of base.
        assert_within(
            &customers["lag_seconds"],
            between(base + seconds(10), asked),
            between(base, answered),
            &format!("{name}'s customers lag_seconds"),
        );
        let orders_lag = source(&p, Service::Orders);
        assert_eq!(orders_lag["position"], 4, "{p}");
        assert_eq!(orders_lag["token"], "orders:4", "{p}");
        assert_eq!(orders_lag["lag_events"], 3, "{p}");
        // Waiting: the events from base + 11 s; applied: up to the one of base + 4 s.
        assert_within(
            &orders_lag["lag_seconds"],
            between(base + seconds(11), asked),
            between(base + seconds(4), answered),
            &format!("{name}'s orders lag_seconds"),
        );
        for service in [Service::Inventory, Service::Payments] {
            let s = source(&p, service);
            assert_eq!(
                (&s["position"], &s["lag_events"]),
                (&Value::from(0), &Value::from(0)),
                "{s}"
            );
            assert_eq!(s["lag_seconds"], 0.0, "{s}");
        }
        // The projection's: every log's events together, and the oldest log's age.
        let oldest = customers["lag_seconds"]
            .as_f64()
            .unwrap()
            .max(orders_lag["lag_seconds"].as_f64().unwrap());
        assert_eq!(p["lag_seconds"].as_f64(), Some(oldest), "{p}");
    }

    // Started again, the runners resume from their checkpoints and the lag goes back to 0.
    let runners = Runners::start(&stores.logs(), &db);
    let body = status_until(&router, "the runners apply customers:2 and orders:7", |body| {
        catalog::NAMES
            .iter()
            .all(|name| projection(body, name)["lag_events"] == 0)
    })
    .await;
    for name in catalog::NAMES {
        let p = projection(&body, name);
        assert_eq!(p["lag_seconds"], 0.0, "{p}");
        assert_eq!(source(&p, Service::Orders)["position"], 7, "{p}");
        assert_eq!(source(&p, Service::Customers)["position"], 2, "{p}");
        assert_eq!(source(&p, Service::Orders)["lag_seconds"], 0.0, "{p}");
    }
    runners.stop().await;
}

/// What a Kafka worker stores for one partition with its rows: its checkpoint.
fn checkpoint(category: Category, partition: i32, offset: i64, position: u64, at: DateTime<Utc>) -> Checkpoint {
    Checkpoint {
        source: category.topic().to_owned(),
        partition,
        offset,
        position,
        recorded_at: Some(at),
    }
}

/// What a Kafka worker reports about one partition between batches.
fn report(category: Category, partition: i32, drained: bool, end: i64) -> PartitionReport {
    PartitionReport {
        source: category.topic().to_owned(),
        partition,
        drained,
        high_watermark: Some(end),
    }
}

/// Distributed workers' state for version 1 of the dashboard, two partitions per topic, written
/// as the workers write it: the partitions registered at assignment, `checkpoints` in a batch's
/// transaction, then `reports`. Every partition not in `reports` is reported drained, its end
/// right after its checkpoint (nothing waiting).
async fn workers_wrote(db: &ReadDb, checkpoints: &[Checkpoint], reports: &[PartitionReport]) {
    let partitions: Vec<(String, i32)> = Category::ALL
        .iter()
        .flat_map(|c| [(c.topic().to_owned(), 0), (c.topic().to_owned(), 1)])
        .collect();
    db.register_partitions(dashboard::NAME, 1, &partitions).await.unwrap();
    let mut tx = db.begin_write().await.unwrap();
    save_checkpoints(&mut tx, dashboard::NAME, 1, checkpoints)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let stored = db.checkpoints(dashboard::NAME, 1).await.unwrap();
    let mut all: Vec<PartitionReport> = reports.to_vec();
    for (source, partition) in partitions {
        if !reports.iter().any(|r| r.source == source && r.partition == partition) {
            let offset = stored
                .iter()
                .find(|c| c.source == source && c.partition == partition)
                .map_or(-1, |c| c.offset);
            all.push(PartitionReport {
                source,
                partition,
                drained: true,
                high_watermark: Some(offset + 1),
            });
        }
    }
    db.report_partitions(dashboard::NAME, 1, &all).await.unwrap();
}

/// Distributed: the lag in events is what the partitions hold past each one's checkpoint, per
/// service (the sagas' topic is the orders service's log), unknown (null) until the workers
/// have reported the partitions' ends; the lag in seconds is the age of the last event applied
/// from the partitions still behind.
#[tokio::test]
async fn distributed_lag_is_what_the_partitions_hold_past_their_checkpoints() {
    let db = support::live_read_db("status_kafka").await;
    let router = read_api::router(ReadState::new(db.clone(), None, ReadConfig::default()));
    let partitions: Vec<(String, i32)> = Category::ALL
        .iter()
        .flat_map(|c| [(c.topic().to_owned(), 0), (c.topic().to_owned(), 1)])
        .collect();
    db.register_partitions(dashboard::NAME, 1, &partitions).await.unwrap();
    let p = projection(&status(&router).await, dashboard::NAME);
    assert!(p["lag_events"].is_null(), "no partition end known yet: {p}");
    assert!(source(&p, Service::Orders)["lag_events"].is_null(), "{p}");

    let base = two_hours_ago();
    let behind = base + seconds(100);
    workers_wrote(
        &db,
        &[
            // orders p0: offsets 0..=9 applied, the last recorded at base + 100 s; 5 more wait.
            checkpoint(Category::Order, 0, 9, 20, behind),
            // orders p1: caught up, its last event newer.
            checkpoint(Category::Order, 1, 4, 18, base + seconds(110)),
            // sagas p0: offsets 0..=2 applied; 2 more wait.
            checkpoint(Category::Saga, 0, 2, 19, base + seconds(105)),
            // customers p0: caught up.
            checkpoint(Category::Customer, 0, 0, 1, base),
        ],
        &[
            report(Category::Order, 0, false, 15),
            report(Category::Order, 1, false, 5),
            report(Category::Saga, 0, false, 5),
        ],
    )
    .await;
    let asked = Utc::now();
    let p = projection(&status(&router).await, dashboard::NAME);
    let answered = Utc::now();
    assert_eq!(p["lag_events"], 7, "5 orders and 2 sagas records wait: {p}");
    let orders = source(&p, Service::Orders);
    assert_eq!(orders["lag_events"], 7, "{p}");
    // Every orders-log partition's applied position counts: the least of them.
    assert_eq!(orders["position"], 18, "{p}");
    assert_within(
        &orders["lag_seconds"],
        between(behind, asked),
        between(behind, answered),
        "the orders log's lag_seconds",
    );
    for service in [Service::Customers, Service::Inventory, Service::Payments] {
        let s = source(&p, service);
        assert_eq!(s["lag_events"], 0, "{s}");
        assert_eq!(s["lag_seconds"], 0.0, "{s}");
    }
    assert_eq!(p["lag_seconds"], orders["lag_seconds"], "{p}");

    // The workers catch up and find their partitions empty.
    workers_wrote(
        &db,
        &[
            checkpoint(Category::Order, 0, 14, 25, base + seconds(120)),
            checkpoint(Category::Saga, 0, 4, 24, base + seconds(119)),
        ],
        &[],
    )
    .await;
    let p = projection(&status(&router).await, dashboard::NAME);
    assert_eq!(p["lag_events"], 0, "{p}");
    assert_eq!(p["lag_seconds"], 0.0, "{p}");
    assert_eq!(source(&p, Service::Orders)["position"], 25, "{p}");
}

/// Distributed: a partition that is caught up has no work waiting, however old its last event:
/// the lag in seconds of a log is the age of the last event applied from the partitions that
/// are behind, not from one that has nothing to apply (here an idle partition whose last event
/// is an hour older than the lagging one's).
#[tokio::test]
async fn a_caught_up_partition_adds_no_lag_seconds() {
    let db = support::live_read_db("status_idle_partition").await;
    let router = read_api::router(ReadState::new(db.clone(), None, ReadConfig::default()));
    let base = two_hours_ago();
    let behind = base + seconds(3_600);
    workers_wrote(
        &db,
        &[
            // orders p0: 5 records wait after the one recorded at `behind`.
            checkpoint(Category::Order, 0, 9, 20, behind),
            // orders p1: every record applied; the last an hour before.
            checkpoint(Category::Order, 1, 4, 18, base),
        ],
        &[
            report(Category::Order, 0, false, 15),
            // Not reported drained: its worker is busy with p0, which it reads too.
            report(Category::Order, 1, false, 5),
        ],
    )
    .await;
    let asked = Utc::now();
    let p = projection(&status(&router).await, dashboard::NAME);
    let answered = Utc::now();
    let orders = source(&p, Service::Orders);
    assert_eq!(orders["lag_events"], 5, "{p}");
    assert_within(
        &orders["lag_seconds"],
        between(behind, asked),
        between(behind, answered),
        "the orders log's lag_seconds (p1 has nothing waiting)",
    );
}

/// The rebuild's next step, as it tells it; `None` once it has finished.
async fn next(step: &mut tokio::sync::mpsc::UnboundedReceiver<RebuildProgress>) -> Option<RebuildProgress> {
    tokio::time::timeout(WITHIN, step.recv())
        .await
        .expect("the rebuild reports its next step or finishes")
}

/// The rebuild percent as `/v1/projections` shows it: applied of the target, to a tenth.
fn percent(applied: u64, target: u64) -> f64 {
    ((applied as f64 / target as f64 * 100.0).min(100.0) * 10.0).round() / 10.0
}

/// How often a rebuild writes its progress to the registry (`projections/src/rebuild.rs`).
const REPORT_EVERY: Duration = Duration::from_millis(500);

/// A real rebuild of the dashboard beside the live version, held after every batch: while it
/// builds, the dashboard is `rebuilding` version 2 with the progress it last recorded (0 % when
/// registered, exactly 50 % once it recorded half of the log), the live version 1 still
/// serving without lag; then `live` on version 2, version 1 retired, no rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_shows_as_rebuilding_with_its_percent_then_live() {
    let stores = Stores::new().await;
    let base = two_hours_ago();
    let customer_id = Uuid::now_v7();
    stores
        .customers
        .import_events(&[recorded(1, 1, registered(customer_id), base)])
        .await
        .unwrap();
    // 59 orders: with the customer, 60 events, 10 batches of 6.
    let orders: Vec<RecordedEvent> = (0..59)
        .map(|i| {
            recorded(
                i + 1,
                1,
                placed(Uuid::now_v7(), customer_id),
                base + seconds(i as i64 + 1),
            )
        })
        .collect();
    stores.orders.import_events(&orders).await.unwrap();
    let (events, batch) = (60u64, 6usize);

    let db = read_db("status_rebuild").await;
    let router = read_api::router(ReadState::new(db.clone(), None, ReadConfig::default()).with_head(stores.heads()));
    let runners = Runners::start(&stores.logs(), &db);
    status_until(&router, "version 1 applies the logs", |body| {
        catalog::NAMES.iter().all(|name| {
            let p = projection(body, name);
            p["state"] == "live" && p["lag_events"] == 0 && source(&p, Service::Orders)["position"] == 59
        })
    })
    .await;

    // The rebuild tells each step here and waits for a go before it goes on.
    let (steps, mut step) = tokio::sync::mpsc::unbounded_channel::<RebuildProgress>();
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let rebuild = tokio::spawn({
        let (logs, db) = (stores.logs(), db.clone());
        let factory = catalog::factory(
            dashboard::NAME,
            &Sinks {
                read_db: db.clone(),
                clickhouse: None,
            },
        )
        .unwrap();
        let options = RebuildOptions {
            batch_size: batch,
            drop_after: Duration::from_millis(50),
            ..RebuildOptions::default()
        };
        async move {
            projections::rebuild(logs, &db, factory, options, CancellationToken::new(), move |progress| {
                steps.send(progress).unwrap();
                tokio::task::block_in_place(|| wait.recv()).expect("the test lets the rebuild go on");
            })
            .await
        }
    });
    // Registered: version 2 building beside the live version 1, nothing applied yet.
    let registered = next(&mut step).await.unwrap();
    assert_eq!((registered.version, registered.events_applied), (2, 0));
    assert_eq!(registered.target, events, "the sum of the logs' heads");
    let body = status(&router).await;
    let p = projection(&body, dashboard::NAME);
    assert_eq!(p["state"], "rebuilding", "{p}");
    assert_eq!(p["live_version"], 1, "{p}");
    assert_eq!(p["rebuild"]["version"], 2, "{p}");
    assert_eq!(p["rebuild"]["percent"], 0.0, "{p}");
    assert_eq!(p["rebuild"]["events_applied"], 0, "{p}");
    let versions: Vec<(u64, &str)> = p["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_u64().unwrap(), v["state"].as_str().unwrap()))
        .collect();
    assert_eq!(versions, [(2, "building"), (1, "live")], "{p}");
    assert_eq!(p["lag_events"], 0, "the live version is not behind: {p}");
    let analytics = projection(&body, catalog::NAMES[1]);
    assert_eq!(analytics["state"], "live", "only the dashboard rebuilds: {analytics}");
    assert!(analytics["rebuild"].is_null(), "{analytics}");
    go.send(()).unwrap();

    // Batch by batch. When the rebuild stops after batch k, whatever progress it recorded is
    // of a batch before k (it records after a batch, at most every REPORT_EVERY).
    let mut recorded_so_far: Vec<u64> = vec![0];
    let mut shown_since: (u64, Instant) = (0, Instant::now());
    let mut started: Option<Instant> = None;
    let mut half: Option<u64> = None;
    let mut half_checked = false;
    while let Some(progress) = next(&mut step).await {
        let first_batch = *started.get_or_insert_with(Instant::now);
        assert_eq!(progress.version, 2);
        assert_eq!(progress.target, events, "nothing is appended meanwhile");
        let p = projection(&status(&router).await, dashboard::NAME);
        assert_eq!(p["state"], "rebuilding", "{p}");
        assert_eq!(p["live_version"], 1, "{p}");
        let shown = p["rebuild"]["events_applied"].as_u64().unwrap();
        assert!(
            recorded_so_far.contains(&shown),
            "after {} events, shows {shown}, not one of {recorded_so_far:?}: {p}",
            progress.events_applied
        );
        let shown_percent = p["rebuild"]["percent"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&shown_percent), "{p}");
        assert_eq!(shown_percent, percent(shown, events), "{p}");
        if shown != shown_since.0 {
            shown_since = (shown, Instant::now());
        }
        if let Some(half) = half.take() {
            assert_eq!(shown, half, "the progress recorded at half way: {p}");
            assert_eq!(shown_percent, 50.0, "{p}");
            let rate = p["rebuild"]["events_per_second"].as_f64().unwrap();
            assert!(rate > 0.0, "{p}");
            let remaining = (events - half) as f64;
            let eta = p["rebuild"]["eta_seconds"].as_f64().unwrap();
            assert!(
                (eta - remaining / rate).abs() <= remaining / rate * 0.5 + 1.0,
                "the eta is the rest at the rate: {p}"
            );
            half_checked = true;
        }
        if !half_checked && progress.events_applied * 2 == events {
            // Half way: held here until a record is due, so that the rebuild records exactly
            // this progress when it goes on. The answers stay what they were meanwhile.
            let due = first_batch.max(shown_since.1) + REPORT_EVERY + Duration::from_millis(50);
            while Instant::now() < due {
                let p = projection(&status(&router).await, dashboard::NAME);
                assert_eq!(p["state"], "rebuilding", "{p}");
                assert_eq!(p["rebuild"]["events_applied"].as_u64(), Some(shown_since.0), "{p}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            half = Some(progress.events_applied);
        }
        recorded_so_far.push(progress.events_applied);
        go.send(()).unwrap();
    }
    assert!(
        half_checked,
        "the rebuild passed half way in a batch: {recorded_so_far:?}"
    );
    assert_eq!(recorded_so_far.last(), Some(&events), "it applied the whole log");

    let report = tokio::time::timeout(WITHIN, rebuild)
        .await
        .expect("the rebuild finishes")
        .unwrap()
        .unwrap();
    assert_eq!((report.version, report.replaced), (2, Some(1)));
    let p = projection(&status(&router).await, dashboard::NAME);
    assert_eq!(p["state"], "live", "{p}");
    assert_eq!(p["live_version"], 2, "{p}");
    assert!(p["rebuild"].is_null(), "{p}");
    let versions: Vec<(u64, &str)> = p["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["version"].as_u64().unwrap(), v["state"].as_str().unwrap()))
        .collect();
    assert_eq!(versions, [(2, "live"), (1, "retired")], "{p}");
    assert_eq!(p["lag_events"], 0, "version 2 applied both logs up to their heads: {p}");
    assert_eq!(source(&p, Service::Orders)["position"], 59, "{p}");
    runners.stop().await;
}

/// The percent of a build in progress is what it recorded applied of its target, to a tenth,
/// never past 100 (the target is the heads when it last looked; the logs move on); a build
/// that finished as a historical version, or was abandoned, is no rebuild.
#[tokio::test]
async fn the_percent_is_what_the_build_recorded_of_its_target() {
    let db = support::live_read_db("status_percent").await;
    let router = read_api::router(ReadState::new(db.clone(), None, ReadConfig::default()));
    db.register_building(dashboard::NAME, 2, 0, None).await.unwrap();
    let p = projection(&status(&router).await, dashboard::NAME);
    assert_eq!(
        (&p["state"], &p["rebuild"]["percent"]),
        (&Value::from("rebuilding"), &Value::from(0.0)),
        "{p}"
    );
    assert!(p["rebuild"]["eta_seconds"].is_null(), "no rate yet: {p}");
    for (applied, rate, target, want, eta) in [
        (1, 1.0, 3, 33.3, 2.0),
        (45, 15.0, 60, 75.0, 1.0),
        (999, 100.0, 1_000, 99.9, 0.0),
        (70, 10.0, 60, 100.0, 0.0),
    ] {
        db.report_progress(dashboard::NAME, 2, applied, rate, target)
            .await
            .unwrap();
        let p = projection(&status(&router).await, dashboard::NAME);
        assert_eq!(p["state"], "rebuilding", "{p}");
        assert_eq!(p["live_version"], 1, "{p}");
        assert_eq!(p["rebuild"]["version"], 2, "{p}");
        assert_eq!(p["rebuild"]["events_applied"], applied, "{p}");
        assert_eq!(p["rebuild"]["percent"], want, "{applied} of {target}: {p}");
        assert_eq!(p["rebuild"]["events_per_second"], rate, "{p}");
        assert_eq!(p["rebuild"]["eta_seconds"], eta, "{p}");
    }
    db.set_state(dashboard::NAME, 2, "historical").await.unwrap();
    let p = projection(&status(&router).await, dashboard::NAME);
    assert_eq!(p["state"], "live", "a historical version is no rebuild: {p}");
    assert!(p["rebuild"].is_null(), "{p}");
    db.register_building(dashboard::NAME, 3, 10, None).await.unwrap();
    db.set_state(dashboard::NAME, 3, "retired").await.unwrap();
    let p = projection(&status(&router).await, dashboard::NAME);
    assert_eq!(p["state"], "live", "an abandoned build is no rebuild: {p}");
    assert_eq!(p["live_version"], 1, "{p}");
}
