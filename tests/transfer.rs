//! `orderflow export`, `orderflow import` and `orderflow split-store`, run as the real binary:
//! a shop run embedded (SQLite, a store per service) moves to PostgreSQL with nothing lost (the
//! dashboard rebuilt from the moved logs equals the one rebuilt from the embedded stores, every
//! event and idempotency record is the same), and back; importing again adds nothing; a bad or
//! cut-short file imports nothing; the one store of old splits into the services' stores.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_schemas::Service;
use event_store::{EventStore, IdempotencyKey, LogTransfer, PgEventStore, RecordedEvent, StoreOptions};
use projections::catalog::{self, Sinks};
use projections::dashboard::{self, OrderFilter, Sort};
use projections::{ReadDb, RebuildOptions, ServiceLog};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use write_side::CommandContext;
use write_side::domain::{CustomerCommand, Order, OrderStatus, Payment, PlaceOrder, PlaceOrderLine, ProductCommand};
use write_side::orders::saga::payment_id;

mod support;
use support::{orderflow, scratch, stderr, stdout};

/// A data directory of `orderflow serve` with a seeded shop in its services' stores, and a few
/// commands with idempotency keys on top, an order's saga's calls among them (so every store
/// has idempotency records).
async fn embedded_shop(name: &str) -> (PathBuf, embedded::Opened) {
    let dir = scratch(name);
    let data_dir = dir.join("orderflow-data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let opened = embedded::open(&data_dir).await.unwrap();
    let options = shop_sim::SeedOptions {
        events: 1_500,
        days: 5,
        customers: 40,
        products: 12,
        batch_events: 300,
        ..shop_sim::SeedOptions::default()
    };
    shop_sim::seed(&opened.logs, &options, |_| {}).await.unwrap();
    keyed_commands(&opened.local).await;
    (dir, opened)
}

fn keyed(key: &str) -> CommandContext {
    CommandContext {
        idempotency: Some(IdempotencyKey {
            key: key.to_owned(),
            request_hash: key.as_bytes().to_vec(),
        }),
        ..CommandContext::default()
    }
}

/// A customer, a product and an order, each command with a key; the order's saga (driven here
/// as `orderflow serve` drives it) reserves its stock and authorizes its payment with keys of
/// its own (`saga-<order id>-<step>`), then confirms it.
async fn keyed_commands(local: &write_side::Local) {
    let (customer_id, product_id) = (Uuid::now_v7(), Uuid::now_v7());
    local
        .handler(Service::Customers)
        .customer(
            &keyed("register-grace"),
            customer_id,
            CustomerCommand::Register {
                customer_id,
                name: "Grace".into(),
                email: "grace@example.com".into(),
            },
        )
        .await
        .unwrap();
    local
        .handler(Service::Inventory)
        .product(
            &keyed("add-kettle"),
            product_id,
            ProductCommand::Add {
                product_id,
                sku: "KETTLE".into(),
                name: "Kettle".into(),
                price_minor: 3_999,
                currency: "EUR".into(),
                stock: 10,
            },
        )
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let driver = tokio::spawn({
        let (local, stop) = (local.clone(), stop.clone());
        async move { local.run_sagas(stop).await }
    });
    let order_id = Uuid::now_v7();
    local
        .place_order(
            &keyed("order-kettle"),
            PlaceOrder {
                order_id,
                customer_id,
                lines: vec![PlaceOrderLine {
                    product_id,
                    quantity: 2,
                }],
            },
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let order = local
            .handler(Service::Orders)
            .load::<Order>(order_id, None)
            .await
            .unwrap();
        match order.state.status {
            OrderStatus::Confirmed => break,
            OrderStatus::Pending => {}
            other => panic!("the saga left the order {other:?}, not confirmed"),
        }
        assert!(
            Instant::now() < deadline,
            "the saga did not confirm the order within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stopped, so that the stores stay as they are while they are exported and compared.
    stop.cancel();
    driver.await.unwrap();
    let payment = local
        .handler(Service::Payments)
        .load::<Payment>(payment_id(order_id), None)
        .await
        .unwrap();
    assert_eq!(
        payment.state.authorized_minor, 7_998,
        "the saga authorized the order's total"
    );
}

/// Every event of a store, in position order.
async fn log_of(store: &dyn EventStore) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    loop {
        let page = store
            .read_all(all.last().map_or(0, |e: &RecordedEvent| e.position), 1000)
            .await
            .unwrap();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Every idempotency record of a store: key, request hash, the result as JSON.
async fn records_of(store: &dyn LogTransfer) -> Vec<(String, Vec<u8>, serde_json::Value)> {
    store
        .idempotency_records(None, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.key, r.request_hash, serde_json::from_str(&r.result).unwrap()))
        .collect()
}

/// A fresh PostgreSQL database per service, in [`Service::ALL`] order.
async fn postgres_stores() -> Vec<testkit::postgres::TestDatabase> {
    let mut databases = Vec::new();
    for _ in Service::ALL {
        databases.push(testkit::postgres::fresh_database().await);
    }
    databases
}

async fn pg_store(db: &testkit::postgres::TestDatabase) -> PgEventStore {
    PgEventStore::open(db.pool(4).await, StoreOptions::default())
        .await
        .unwrap()
}

/// The dashboard rebuilt from `logs` into a fresh SQLite read database: its orders (every
/// field) and its customers' summaries.
async fn dashboard_of(logs: Vec<ServiceLog>, name: &str) -> (Vec<dashboard::OrderRow>, Vec<String>) {
    let path = std::env::temp_dir().join(format!("{}.db", testkit::unique_name(name)));
    let db = ReadDb::connect(&format!("sqlite://{}", path.display()), 2)
        .await
        .unwrap();
    db.migrate().await.unwrap();
    let sinks = Sinks {
        read_db: db.clone(),
        clickhouse: None,
    };
    let report = projections::rebuild(
        logs,
        &db,
        catalog::factory(dashboard::NAME, &sinks).unwrap(),
        RebuildOptions::default(),
        CancellationToken::new(),
        |_| {},
    )
    .await
    .unwrap();
    let mut orders = Vec::new();
    let mut cursor = None;
    loop {
        let page = dashboard::list_orders(
            &db,
            report.version,
            &OrderFilter::default(),
            Sort::default(),
            cursor.as_ref(),
            500,
        )
        .await
        .unwrap();
        orders.extend(page.rows);
        match page.next_cursor {
            Some(next) => cursor = Some(dashboard::Cursor::decode(&next).unwrap()),
            None => break,
        }
    }
    let mut customers: Vec<Uuid> = orders.iter().map(|o| o.customer_id).collect();
    customers.sort();
    customers.dedup();
    let mut summaries = Vec::new();
    for customer in customers {
        let summary = dashboard::customer_summary(&db, report.version, customer)
            .await
            .unwrap();
        summaries.push(format!("{summary:?}"));
    }
    (orders, summaries)
}

fn file(dir: &Path, service: Service) -> PathBuf {
    dir.join(format!("{service}.log.jsonl"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shop_moves_from_sqlite_to_postgresql_and_back_with_nothing_lost() {
    let (dir, shop) = embedded_shop("transfer-move").await;
    let databases = postgres_stores().await;

    // Export every service's log, import it into its PostgreSQL database.
    for (service, database) in Service::ALL.into_iter().zip(&databases) {
        let output = file(&dir, service);
        let out = orderflow(
            &dir,
            &[
                "export",
                "--service",
                service.name(),
                "--output",
                output.to_str().unwrap(),
            ],
            &[],
        );
        assert!(out.status.success(), "export {service}: {}", stderr(&out));
        assert!(
            stdout(&out).contains(&format!("exported the {service} log")),
            "{}",
            stdout(&out)
        );
        let out = orderflow(
            &dir,
            &["import", "--service", service.name(), output.to_str().unwrap()],
            &[("ORDERFLOW_EVENT_STORE_URL", &database.url)],
        );
        let printed = format!("{}{}", stdout(&out), stderr(&out));
        assert!(out.status.success(), "import {service}: {printed}");
        assert!(!printed.contains("postgres://"), "no URL is printed: {printed}");
        assert!(printed.contains("PostgreSQL 127.0.0.1:5432/"), "{printed}");
    }

    // Every event and every idempotency record is the same, store by store.
    let mut pg_logs = Vec::new();
    for ((service, sqlite), database) in shop.stores.iter().zip(&databases) {
        let pg = pg_store(database).await;
        let moved = log_of(&pg).await;
        assert!(!moved.is_empty(), "{service}");
        assert_eq!(
            moved,
            log_of(&*sqlite.shared()).await,
            "{service}: the events as stored"
        );
        let records = records_of(&pg).await;
        assert!(!records.is_empty(), "{service}: its idempotency records");
        assert_eq!(records, records_of(&*sqlite.transfer()).await, "{service}");
        pg_logs.push(ServiceLog::new(*service, Arc::new(pg)));
    }
    // A command retried after the move gets its first answer, and appends nothing.
    let orders = pg_logs[2].store.clone();
    let replayed = orders
        .idempotent_result("order-kettle")
        .await
        .unwrap()
        .expect("the order's key moved");
    assert_eq!(replayed.request_hash, b"order-kettle");

    // The dashboard rebuilt from PostgreSQL equals the one rebuilt from the embedded stores.
    let embedded = dashboard_of(shop.logs.clone(), "transfer_embedded").await;
    assert!(embedded.0.len() > 50, "{} orders", embedded.0.len());
    assert_eq!(dashboard_of(pg_logs, "transfer_moved").await, embedded);

    // Importing again adds nothing.
    let output = file(&dir, Service::Orders);
    let again = orderflow(
        &dir,
        &["import", "--service", "orders", output.to_str().unwrap()],
        &[("ORDERFLOW_EVENT_STORE_URL", &databases[2].url)],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stdout(&again).contains(": 0 events added"), "{}", stdout(&again));

    // And back: PostgreSQL to a new data directory's SQLite store.
    let back = dir.join("back.jsonl");
    let out = orderflow(
        &dir,
        &["export", "--service", "orders", "--output", back.to_str().unwrap()],
        &[("ORDERFLOW_EVENT_STORE_URL", &databases[2].url)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = orderflow(
        &dir,
        &[
            "import",
            "--service",
            "orders",
            "--data-dir",
            "elsewhere",
            back.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let pool = sqlx::SqlitePool::connect_with(event_store::SqliteEventStore::connect_options(
        &dir.join("elsewhere/orders.db"),
    ))
    .await
    .unwrap();
    let sqlite = event_store::SqliteEventStore::open(pool, StoreOptions::default())
        .await
        .unwrap();
    assert_eq!(log_of(&sqlite).await, log_of(&*shop.stores[2].1.shared()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_cut_short_file_imports_nothing() {
    let (dir, shop) = embedded_shop("transfer-bad").await;
    let good = file(&dir, Service::Customers);
    let out = orderflow(
        &dir,
        &["export", "--service", "customers", "--output", good.to_str().unwrap()],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // An existing file is never overwritten.
    let out = orderflow(
        &dir,
        &["export", "--service", "customers", "--output", good.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("exists already"), "{}", stderr(&out));

    let text = std::fs::read_to_string(&good).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines[..lines.len() / 2].join("\n") + "\n";
    let changed = text.replacen("\"Customer", "\"Kustomer", 1);
    let changed = if changed == text {
        text.replacen("\"actor\":\"", "\"actor\":\"x", 1)
    } else {
        changed
    };
    let not_json = format!("{}\n{{oops\n{}", lines[0], lines[1..].join("\n"));
    let cases = [
        ("cut.jsonl", cut, "cut short"),
        ("changed.jsonl", changed, "changed since it was written"),
        ("not-json.jsonl", not_json, "line 2"),
        ("empty.jsonl", String::new(), "cut short"),
        ("other.jsonl", "hello\n".to_owned(), "line 1"),
    ];
    for (name, content, expected) in cases {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        let out = orderflow(
            &dir,
            &[
                "import",
                "--service",
                "customers",
                "--data-dir",
                "target",
                path.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{name}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("nothing was imported"),
            "{name}: {}",
            stderr(&out)
        );
        assert!(!dir.join("target").exists(), "{name}: the target was not even created");
    }
    // Another service's export.
    let out = orderflow(
        &dir,
        &[
            "import",
            "--service",
            "orders",
            "--data-dir",
            "target",
            good.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("an export of the customers service's log, not the orders service's"),
        "{}",
        stderr(&out)
    );

    // A store that holds other events is refused, and keeps them.
    let orders_file = file(&dir, Service::Orders);
    let out = orderflow(
        &dir,
        &[
            "export",
            "--service",
            "orders",
            "--output",
            orders_file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let other = embedded_shop("transfer-other").await;
    let other_head = other.1.stores[2].1.shared().head_position().await.unwrap();
    let other_dir = other.0.join("orderflow-data");
    let out = orderflow(
        &dir,
        &[
            "import",
            "--service",
            "orders",
            "--data-dir",
            other_dir.to_str().unwrap(),
            orders_file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already holds other events"), "{}", stderr(&out));
    assert_eq!(other.1.stores[2].1.shared().head_position().await.unwrap(), other_head);
    drop(shop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_store_of_old_splits_into_the_services_stores() {
    // A data directory from before every service had its own store: all four over one events.db.
    let dir = scratch("transfer-split");
    let data_dir = dir.join("orderflow-data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let single: Arc<dyn EventStore> = Arc::new(testkit::sqlite::store_at(&data_dir.join("events.db")).await);
    let logs = ServiceLog::shared(&single);
    let options = shop_sim::SeedOptions {
        events: 800,
        days: 3,
        customers: 20,
        products: 8,
        batch_events: 200,
        ..shop_sim::SeedOptions::default()
    };
    shop_sim::seed(&logs, &options, |_| {}).await.unwrap();
    let before = log_of(&*single).await;
    drop((single, logs));

    let out = orderflow(&dir, &["serve", "--listen", "127.0.0.1:0"], &[]);
    assert_eq!(out.status.code(), Some(1), "serve refuses the one store");
    assert!(
        stderr(&out).contains("orderflow split-store --data-dir"),
        "{}",
        stderr(&out)
    );

    let out = orderflow(&dir, &["split-store"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!data_dir.join("events.db").exists() && data_dir.join("events.db.before-split").exists());

    // Each service's store holds exactly its own events, as they were: positions, ids, times.
    let opened = embedded::open(&data_dir).await.unwrap();
    let mut split: Vec<RecordedEvent> = Vec::new();
    for (service, store) in &opened.stores {
        let events = log_of(&*store.shared()).await;
        assert!(
            events
                .iter()
                .all(|e| Service::of_stream(&e.stream_id).unwrap() == *service),
            "{service}"
        );
        split.extend(events);
    }
    split.sort_by_key(|e| e.position);
    assert_eq!(split, before);
    // Every service's, the payments' (the seeded sagas' payments) and the sagas' streams
    // (the orders service's) among them.
    assert!(
        before.iter().any(|e| e.stream_id.starts_with("saga-")),
        "the old store held sagas"
    );
    for service in Service::ALL {
        assert!(
            before
                .iter()
                .any(|e| Service::of_stream(&e.stream_id).unwrap() == service),
            "the old store held {service} events"
        );
    }

    // Run again: nothing to do.
    let again = orderflow(&dir, &["split-store"], &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stdout(&again).contains("nothing to split"), "{}", stdout(&again));
}
