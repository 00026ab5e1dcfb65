//! End to end with the real binaries: commands → the services' PostgreSQL stores (a database
//! each; the place-order sagas driven in the test's process, as an orders service does) → an
//! `orderflow relay` per store → Kafka → two `orderflow projections run` workers in one
//! consumer group → PostgreSQL dashboard and ClickHouse analytics. The workers are killed with
//! SIGKILL at random points under load and started again, and ClickHouse is cut off from them
//! for 30 s (through a proxy the test owns: the shared server keeps serving other tests) while
//! orders flow, during which the dashboard must keep advancing. The read database is cut off
//! from the workers too (they reconnect by themselves), and held while they work so that both
//! are killed between a ClickHouse insert and the checkpoint that would claim it. At the end the
//! read models must equal a fold of the whole log from scratch (invariants 5 and 6 of
//! docs/design.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_schemas::{DomainEvent, OrderEvent, PaymentEvent, Service};
use event_store::{EventStore, PgEventStore, StoreOptions};
use projections::analytics::{self, SalesAnalytics};
use projections::dashboard;
use projections::{ReadDb, RebuildOptions, ServiceLog, UntilPoint, applied_position, catalog};
use sqlx::Row;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use write_side::domain::saga::{Phase, ReasonCode, Saga};
use write_side::domain::{
    CancelOrder, CustomerCommand, Order, OrderCommand, OrderStatus, PlaceOrder, PlaceOrderLine, ProductCommand,
};
use write_side::{CommandContext, HandlerOptions, Local};

struct Deployment {
    store_dbs: Vec<(Service, testkit::postgres::TestDatabase)>,
    read_db: testkit::postgres::TestDatabase,
    /// The workers' way to the read database: a proxy the test can cut or hold.
    read_db_url: String,
    clickhouse_db: String,
    /// The workers' way to ClickHouse: a proxy the test can cut.
    clickhouse_url: String,
    prefix: String,
}

impl Deployment {
    /// The relay of `service`'s store.
    fn relay(&self, service: Service) -> Child {
        let (_, store_db) = self.store_dbs.iter().find(|(s, _)| *s == service).unwrap();
        Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(["relay", "--batch-size", "200", "--partitions", "4"])
            .env("ORDERFLOW_EVENT_STORE_URL", &store_db.url)
            .env("ORDERFLOW_KAFKA_BROKERS", testkit::kafka::bootstrap_servers())
            .env("ORDERFLOW_RELAY_TOPIC_PREFIX", &self.prefix)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("start `orderflow relay`")
    }

    fn worker(&self) -> Worker {
        let session_timeout_ms = SESSION_TIMEOUT.as_millis().to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args([
                "projections",
                "run",
                "--batch-size",
                "100",
                "--linger-ms",
                "10",
                "--session-timeout-ms",
                &session_timeout_ms,
            ])
            .env("ORDERFLOW_READ_DB_URL", &self.read_db_url)
            .env("ORDERFLOW_CLICKHOUSE_URL", &self.clickhouse_url)
            .env("ORDERFLOW_CLICKHOUSE_DATABASE", &self.clickhouse_db)
            .env("ORDERFLOW_KAFKA_BROKERS", testkit::kafka::bootstrap_servers())
            .env("ORDERFLOW_TOPIC_PREFIX", &self.prefix)
            .env("ORDERFLOW_GROUP_PREFIX", &self.prefix)
            // The assignments are read from the log (`Worker::holds_partitions`).
            .env(
                "RUST_LOG",
                format!(
                    "projections::runtime::kafka=info,{}",
                    std::env::var("ORDERFLOW_TEST_WORKER_LOG").unwrap_or_else(|_| "warn".into())
                ),
            )
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start `orderflow projections run`");
        let (held, holds) = watch::channel(0);
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        tokio::spawn(async move {
            // What each projection's consumer holds: assignments are eager (all revoked, then
            // the new share assigned), so the last line of either kind says.
            let mut by_projection: BTreeMap<String, usize> = BTreeMap::new();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{line}");
                let field = |name: &str| {
                    let start = line.find(&format!(" {name}="))? + name.len() + 2;
                    line[start..]
                        .split_whitespace()
                        .next()
                        .map(|v| v.trim_matches('"').to_owned())
                };
                let Some(projection) = field("projection") else {
                    continue;
                };
                if line.contains("partitions assigned") {
                    let count = field("partitions").and_then(|n| n.parse().ok()).unwrap_or(0);
                    by_projection.insert(projection, count);
                } else if line.contains("partitions revoked") {
                    by_projection.insert(projection, 0);
                } else {
                    continue;
                }
                held.send_replace(by_projection.values().sum());
            }
        });
        Worker { child, holds }
    }
}

/// A running `orderflow projections run`.
struct Worker {
    child: Child,
    /// How many partitions its consumers hold, as its log last said.
    holds: watch::Receiver<usize>,
}

impl Worker {
    /// Waits until the worker holds partitions: a kill before that would take nothing from
    /// the group it has not joined yet.
    async fn holds_partitions(&mut self) {
        let within = Duration::from_secs(60);
        tokio::time::timeout(within, self.holds.wait_for(|&held| held > 0))
            .await
            .unwrap_or_else(|_| panic!("a worker held no partition {within:?} after it started"))
            .expect("the worker's log is read until it ends");
    }

    /// SIGKILL (no goodbye to the group, nothing flushed); answers once the process is gone.
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    async fn kill(&mut self) -> Instant {
        self.child.start_kill().expect("kill -9 a worker");
        self.child.wait().await.unwrap();
        Instant::now()
    }
}

/// The workers' consumer-group session timeout: how long the group waits for a member that
/// stopped talking before the broker may drop it.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// How long ClickHouse is out of the workers' reach.
const CLICKHOUSE_OUTAGE: Duration = Duration::from_secs(30);

/// How long the read database is out of the workers' reach.
const READ_DB_OUTAGE: Duration = Duration::from_secs(10);

/// How late what the workers send the read database arrives while they are killed between a
/// ClickHouse insert and its checkpoint.
const READ_DB_DELAY: Duration = Duration::from_secs(2);

/// How long the sagas get to do what the test waits for.
const SAGA_WITHIN: Duration = Duration::from_secs(30);

/// The order once its saga has confirmed it (or anything but pending: a cancellation).
async fn settled_placement(local: &Local, order_id: Uuid) -> OrderStatus {
    let deadline = Instant::now() + SAGA_WITHIN;
    loop {
        let order = local
            .handler(Service::Orders)
            .load::<Order>(order_id, None)
            .await
            .expect("load an order");
        if order.state.status != OrderStatus::Pending {
            return order.state.status;
        }
        assert!(
            Instant::now() < deadline,
            "the saga of {order_id} left it pending for {SAGA_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cancel(order_id: Uuid) -> CancelOrder {
    CancelOrder {
        order_id,
        reason: "changed mind".into(),
        // As a client's `POST /v1/orders/{id}/cancel` does.
        reason_code: Some(ReasonCode::Requested.as_str().to_owned()),
    }
}

/// A small shop's traffic through the services, while the workers are being killed: orders
/// placed (their sagas reserve the stock at inventory, authorize the payment and confirm them),
/// some cancelled at once (racing their saga) or once confirmed (their saga voids and releases),
/// others shipped (their saga captures) and delivered; customers renamed. Answers the orders.
async fn traffic(local: Local, customers: Arc<Vec<Uuid>>, products: Arc<Vec<Uuid>>, seed: u64) -> Vec<Uuid> {
    let ctx = CommandContext::default();
    let mut rng = seed;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut orders = Vec::new();
    for i in 0..60 {
        let order_id = Uuid::now_v7();
        orders.push(order_id);
        let customer_id = customers[next(customers.len() as u64) as usize];
        let first = next(products.len() as u64) as usize;
        let mut lines = vec![PlaceOrderLine {
            product_id: products[first],
            quantity: 1 + next(3) as i64,
        }];
        if next(2) == 0 {
            lines.push(PlaceOrderLine {
                product_id: products[(first + 1) % products.len()],
                quantity: 1,
            });
        }
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
            .expect("place an order");
        let steps = next(5);
        if steps == 0 {
            // While its saga may still be reserving or authorizing.
            local.cancel_order(&ctx, cancel(order_id)).await.expect("cancel");
            continue;
        }
        assert_eq!(
            settled_placement(&local, order_id).await,
            OrderStatus::Confirmed,
            "plenty of stock, nothing declined"
        );
        if steps == 1 && next(3) == 0 {
            local
                .cancel_order(&ctx, cancel(order_id))
                .await
                .expect("cancel a confirmed order");
            continue;
        }
        let lifecycle = [
            OrderCommand::Ship {
                order_id,
                carrier: "DHL".into(),
                tracking: format!("T{i}"),
            },
            OrderCommand::Deliver { order_id },
        ];
        for command in lifecycle.into_iter().take(steps as usize - 1) {
            local
                .orders()
                .change(&ctx, order_id, command)
                .await
                .expect("order lifecycle");
        }
        if next(10) == 0 {
            local
                .handler(Service::Customers)
                .customer(
                    &ctx,
                    customer_id,
                    CustomerCommand::Rename {
                        customer_id,
                        name: format!("Renamed {seed}-{i}"),
                    },
                )
                .await
                .expect("rename");
        }
    }
    orders
}

/// Waits until no saga of `orders` has work left: a confirmed order's waits for its shipment,
/// every other (shipped: captured; cancelled: voided and released) has completed.
async fn sagas_settle(local: &Local, orders: &[Uuid]) {
    let deadline = Instant::now() + SAGA_WITHIN;
    for &order_id in orders {
        loop {
            let handler = local.handler(Service::Orders);
            let order = handler.load::<Order>(order_id, None).await.unwrap().state;
            let saga = handler.load::<Saga>(order_id, None).await.unwrap().state;
            let settled = match order.status {
                OrderStatus::Confirmed => saga.phase() == Phase::AwaitingShipment,
                OrderStatus::Shipped | OrderStatus::Delivered | OrderStatus::Cancelled => {
                    saga.phase() == Phase::Completed
                }
                _ => false,
            };
            if settled {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the saga of {order_id} ({:?}) is still {:?} after {SAGA_WITHIN:?}",
                order.status,
                saga.phase()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Every event of a store, in position order.
async fn log_of(store: &dyn EventStore) -> Vec<event_store::RecordedEvent> {
    let mut all: Vec<event_store::RecordedEvent> = Vec::new();
    loop {
        let page = store
            .read_all(all.last().map_or(0, |e| e.position), 1000)
            .await
            .unwrap();
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

async fn table(db: &ReadDb, sql: &str) -> Vec<String> {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(db.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|row| {
            (0..row.len())
                .map(|i| {
                    row.try_get::<Option<String>, _>(i)
                        .map(|v| v.unwrap_or_default())
                        .or_else(|_| {
                            row.try_get::<Option<i64>, _>(i)
                                .map(|v| v.map(|v| v.to_string()).unwrap_or_default())
                        })
                        .unwrap_or_else(|_| "?".to_owned())
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_workers_leave_the_read_models_equal_to_a_fold_of_the_log() {
    let mut store_dbs = Vec::new();
    for service in Service::ALL {
        store_dbs.push((service, testkit::postgres::fresh_database().await));
    }
    let clickhouse_proxy =
        testkit::proxy::TcpProxy::start(testkit::clickhouse::url().trim_start_matches("http://")).await;
    let read_db = testkit::postgres::fresh_database().await;
    let read_db_host = format!("{}:{}", read_db.options.get_host(), read_db.options.get_port());
    let read_db_proxy = testkit::proxy::TcpProxy::start(&read_db_host).await;
    let read_db_url = read_db
        .url
        .replacen(&read_db_host, &read_db_proxy.address().to_string(), 1);
    assert_ne!(
        read_db_url, read_db.url,
        "the URL names {read_db_host}: {}",
        read_db.url
    );
    let deployment = Deployment {
        store_dbs,
        read_db,
        read_db_url,
        clickhouse_db: testkit::clickhouse::fresh_database().await,
        clickhouse_url: format!("http://{}", clickhouse_proxy.address()),
        prefix: format!("{}.", testkit::unique_name("workers")),
    };
    let mut stores: Vec<(Service, Arc<dyn EventStore>)> = Vec::new();
    for (service, db) in &deployment.store_dbs {
        let pool = db.pool(16).await;
        PgEventStore::migrate(&pool).await.unwrap();
        stores.push((
            *service,
            Arc::new(PgEventStore::open(pool, StoreOptions::default()).await.unwrap()),
        ));
    }
    let store_of = |service: Service| stores.iter().find(|(s, _)| *s == service).unwrap().1.clone();
    // The orders service's copy of customers and products, in a database of its own.
    let replica = testkit::postgres::fresh_database().await;
    let replica_db = ReadDb::connect(&replica.url, 4).await.unwrap();
    let local = Local::new(stores.clone(), replica_db, HandlerOptions::default())
        .await
        .unwrap();
    let replica_stop = CancellationToken::new();
    let _replica_stops = replica_stop.clone().drop_guard();
    tokio::spawn({
        let (local, stop) = (local.clone(), replica_stop.clone());
        async move { local.run_replica(stop).await }
    });
    // The place-order sagas, driven as the orders service drives them.
    let sagas_stop = CancellationToken::new();
    let _sagas_stop = sagas_stop.clone().drop_guard();
    let sagas = tokio::spawn({
        let (local, stop) = (local.clone(), sagas_stop.clone());
        async move { local.run_sagas(stop).await }
    });
    let ctx = CommandContext::default();

    let customers: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    for (n, &customer_id) in customers.iter().enumerate() {
        local
            .handler(Service::Customers)
            .customer(
                &ctx,
                customer_id,
                CustomerCommand::Register {
                    customer_id,
                    name: format!("Customer {n}"),
                    email: format!("c{n}@example.com"),
                },
            )
            .await
            .unwrap();
    }
    let products: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
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
                    price_minor: 199 + 100 * n as i64,
                    currency: "EUR".into(),
                    stock: 100_000,
                },
            )
            .await
            .unwrap();
    }

    let mut relays: Vec<Child> = Service::ALL.into_iter().map(|s| deployment.relay(s)).collect();
    let mut workers = [deployment.worker(), deployment.worker()];
    let (customers, products) = (Arc::new(customers), Arc::new(products));
    let mut load: Vec<_> = (0..4)
        .map(|seed| tokio::spawn(traffic(local.clone(), customers.clone(), products.clone(), 7 + seed)))
        .collect();
    let read = ReadDb::connect(&deployment.read_db.url, 4).await.unwrap();

    // ClickHouse out of reach for 30 s while orders keep coming: the dashboard (PostgreSQL)
    // keeps advancing; the analytics wait, and catch up after (checked at the end).
    for worker in &mut workers {
        worker.holds_partitions().await;
    }
    let applied = async |name: &str| match read.live_version(name).await.unwrap() {
        Some(version) => applied_position(&read.progress(name, version).await.unwrap(), Service::Orders),
        None => 0,
    };
    let dashboard_at = async || applied(dashboard::NAME).await;
    // Cut once both run and have applied orders: an outage of a working sink, not a start.
    let running_by = Instant::now() + Duration::from_secs(60);
    while applied(dashboard::NAME).await == 0 || applied(analytics::NAME).await == 0 {
        assert!(
            Instant::now() < running_by,
            "the projections applied no order within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    clickhouse_proxy.cut();
    let cut_at = Instant::now();
    load.extend(
        (0..2).map(|seed| tokio::spawn(traffic(local.clone(), customers.clone(), products.clone(), 70 + seed))),
    );
    let before = dashboard_at().await;
    let mut advanced_to = before;
    // The outage's own length, polled: the dashboard is read every half second meanwhile.
    while cut_at.elapsed() < CLICKHOUSE_OUTAGE {
        tokio::time::sleep(Duration::from_millis(500)).await;
        advanced_to = advanced_to.max(dashboard_at().await);
    }
    clickhouse_proxy.restore();
    assert!(
        advanced_to > before,
        "the dashboard stayed at orders:{before} while ClickHouse was unreachable for {CLICKHOUSE_OUTAGE:?}"
    );
    for (n, worker) in workers.iter_mut().enumerate() {
        assert!(worker.running(), "worker {n} died while ClickHouse was unreachable");
    }
    eprintln!(
        "ClickHouse cut off for {:.1}s: the dashboard went from orders:{before} to orders:{advanced_to} meanwhile",
        cut_at.elapsed().as_secs_f64()
    );

    // From here on orders flow until the last kill: traffic that goes on until told to stop.
    let mut orders = Vec::new();
    for task in load {
        orders.extend(task.await.unwrap());
    }
    let kills_done = CancellationToken::new();
    let flowing_load = tokio::spawn({
        let (local, customers, products, done) =
            (local.clone(), customers.clone(), products.clone(), kills_done.clone());
        async move {
            let mut orders = Vec::new();
            let mut seed = 7_000;
            while !done.is_cancelled() {
                orders.extend(traffic(local.clone(), customers.clone(), products.clone(), seed).await);
                seed += 1;
            }
            orders
        }
    });
    // Killed between a ClickHouse insert and its checkpoint: everything the workers send the
    // read database arrives READ_DB_DELAY late, so the checkpoint of a batch, a transaction of
    // at least two messages sent after the batch's insert ended (its statements, then COMMIT),
    // cannot be committed sooner than twice that after the insert. Both workers are killed less
    // than READ_DB_DELAY after ClickHouse shows rows it did not have once the delay began; the
    // batch is replayed by their successors and must not count twice (checked at the end).
    for worker in &mut workers {
        worker.holds_partitions().await;
    }
    read_db_proxy.delay(READ_DB_DELAY);
    let facts = format!(
        "SELECT count() FROM {}.sales_analytics_v1_order_status",
        deployment.clickhouse_db
    );
    let mut asked_before = Instant::now();
    let slowed_with: u64 = testkit::clickhouse::query(&facts).await.trim().parse().unwrap();
    let inserted_by = Instant::now() + Duration::from_secs(60);
    let (inserted, landed_after) = loop {
        let asked = Instant::now();
        let now: u64 = testkit::clickhouse::query(&facts).await.trim().parse().unwrap();
        if now > slowed_with {
            // The rows were not there when the query before was asked.
            break (now, asked_before);
        }
        asked_before = asked;
        assert!(
            Instant::now() < inserted_by,
            "no analytics rows were inserted within 60 s with the read database slowed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let [first, second] = &mut workers;
    tokio::join!(first.kill(), second.kill());
    let insert_to_kill = landed_after.elapsed();
    read_db_proxy.restore();
    assert!(
        insert_to_kill < READ_DB_DELAY,
        "the kills came {insert_to_kill:?} after the insert: its checkpoint may have been stored"
    );
    eprintln!(
        "the read database slowed by {READ_DB_DELAY:?} a message, and both workers killed at most {insert_to_kill:?} \
         after {} analytics rows landed, before their checkpoint",
        inserted - slowed_with
    );
    // The group hands the dead members' partitions on once a member joins after their sessions
    // expired (see the last kill below): the successors start after that.
    tokio::time::sleep(SESSION_TIMEOUT + Duration::from_secs(1)).await;
    workers = [deployment.worker(), deployment.worker()];
    for worker in &mut workers {
        worker.holds_partitions().await;
    }

    // The read database (dashboard, checkpoints) cut off from the workers for a while: they
    // keep running and reconnect by themselves (the end state below shows they caught up).
    let connections = read_db_proxy.connections();
    read_db_proxy.cut();
    tokio::time::sleep(READ_DB_OUTAGE).await;
    read_db_proxy.restore();
    for (n, worker) in workers.iter_mut().enumerate() {
        assert!(worker.running(), "worker {n} died while the read database was cut off");
    }
    eprintln!("the read database cut off from the workers for {READ_DB_OUTAGE:?}; they reconnected by themselves");
    let reconnect_by = Instant::now() + Duration::from_secs(60);
    let dashboard_after_cut = dashboard_at().await;
    while dashboard_at().await <= dashboard_after_cut || read_db_proxy.connections() <= connections {
        assert!(
            Instant::now() < reconnect_by,
            "the dashboard did not advance within 60 s after the read database came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGKILL the workers in turn while orders flow, each once it holds partitions, and start
    // it again. A kill landed in flowing traffic: the orders log grows right after it, while
    // the killed worker's partitions wait for its successor.
    let orders_store = store_of(Service::Orders);
    let mut kills = 2;
    let mut last_kill = Instant::now();
    while kills < 6 {
        let worker = &mut workers[kills % 2];
        worker.holds_partitions().await;
        last_kill = worker.kill().await;
        let at_kill = orders_store.head_position().await.unwrap();
        *worker = deployment.worker();
        kills += 1;
        let flowing_by = Instant::now() + Duration::from_secs(30);
        while orders_store.head_position().await.unwrap() <= at_kill {
            assert!(
                Instant::now() < flowing_by,
                "no order event within 30 s after kill {kills}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    kills_done.cancel();
    orders.extend(flowing_load.await.unwrap());
    eprintln!("workers killed {kills} times, each while orders were flowing");
    // Nothing is written after `finished` below: every saga has done what it had to.
    sagas_settle(&local, &orders).await;
    sagas_stop.cancel();
    sagas.await.unwrap();
    // tansu (the test broker) evicts a member whose session expired only when another member
    // joins, not by the timeout alone (ADR 0004): one more kill and restart after every dead
    // member's session has expired lets the group hand their partitions to the living. Nothing
    // says when a session has expired: the broker drops a member once more than the session
    // timeout has passed since it last heard from it, which is before its kill, plus a second
    // for a request the worker sent as it died and the broker handled afterwards.
    tokio::time::sleep_until((last_kill + SESSION_TIMEOUT + Duration::from_secs(1)).into()).await;
    let last_kill = workers[0].kill().await;
    workers[0] = deployment.worker();
    kills += 1;
    let mut heads = BTreeMap::new();
    for (service, store) in &stores {
        heads.insert(*service, store.head_position().await.unwrap());
    }
    let finished = chrono::Utc::now();

    // Both projections get to every head of the services they read, whatever the kills. The
    // last kill's victim may still vouch for its partitions for DRAINED_FRESH_US after its
    // death (ADR 0005): the claim is trusted once it has held beyond that, backed by living
    // workers' reports. Its last report was made before it died.
    let deadline = Instant::now() + Duration::from_secs(120);
    tokio::time::sleep_until((last_kill + Duration::from_micros(projections::DRAINED_FRESH_US as u64)).into()).await;
    for name in catalog::NAMES {
        let services: std::collections::BTreeSet<Service> =
            catalog::categories(name).iter().map(|c| Service::owning(*c)).collect();
        for service in services {
            let head = heads[&service];
            loop {
                let version = read.live_version(name).await.unwrap();
                let position = match version {
                    Some(version) => applied_position(&read.progress(name, version).await.unwrap(), service),
                    None => 0,
                };
                if position >= head {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} reached {service}:{position} of {head} after {kills} kills"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // The dashboard equals a version built from scratch from the services' logs, up to the
    // same heads (nothing is written after `finished`).
    // The workers keep running while we compare: the claim above may come a moment early
    // (ADR 0005), so the read models get a bounded time to converge; a lost or doubled event
    // never would.
    let clickhouse = clickhouse::Client::default()
        .with_url(testkit::clickhouse::url())
        .with_database(&deployment.clickhouse_db)
        .with_validation(false);
    let sinks = catalog::Sinks {
        read_db: read.clone(),
        clickhouse: Some(clickhouse.clone()),
    };
    let logs = stores
        .iter()
        .map(|(s, store)| ServiceLog::new(*s, store.clone()))
        .collect();
    let report = projections::rebuild(
        logs,
        &read,
        catalog::factory(dashboard::NAME, &sinks).unwrap(),
        RebuildOptions {
            until: Some(UntilPoint::Time(finished)),
            ..RebuildOptions::default()
        },
        CancellationToken::new(),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.version, 2);
    let converge = Instant::now() + Duration::from_secs(60);
    for (table_name, order_by) in [
        ("orders", "order_id"),
        ("customers", "customer_id"),
        ("customer_totals", "customer_id, currency"),
        ("order_history", "order_id, stream_version"),
    ] {
        let fresh = table(
            &read,
            &format!("SELECT * FROM order_dashboard_v2_{table_name} ORDER BY {order_by}"),
        )
        .await;
        assert!(!fresh.is_empty(), "{table_name} is empty");
        loop {
            let live = table(
                &read,
                &format!("SELECT * FROM order_dashboard_v1_{table_name} ORDER BY {order_by}"),
            )
            .await;
            if live == fresh {
                break;
            }
            assert!(
                Instant::now() < converge,
                "{table_name}: the live rows differ from a fold from scratch\nlive:  {live:?}\nfresh: {fresh:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    assert!(read.dead_letters(dashboard::NAME, 1).await.unwrap().is_empty());

    // ClickHouse: revenue and the funnel equal what the events say. Revenue: the orders
    // confirmed and not cancelled whose payment is authorized or captured, each its total net
    // of that payment's refunds (the payments' own log says which).
    let mut totals: BTreeMap<Uuid, i64> = BTreeMap::new();
    let mut confirmed: std::collections::BTreeSet<Uuid> = Default::default();
    let mut cancelled: BTreeMap<Uuid, String> = BTreeMap::new();
    let (mut shipped, mut delivered) = (0u64, 0u64);
    for recorded in log_of(&*store_of(Service::Orders)).await {
        match event_schemas::decode(&recorded.event_type, recorded.schema_version, &recorded.payload).unwrap() {
            DomainEvent::Order(OrderEvent::Placed(p)) => {
                totals.insert(p.order_id, p.total_minor);
            }
            DomainEvent::Order(OrderEvent::Confirmed(c)) => {
                confirmed.insert(c.order_id);
            }
            DomainEvent::Order(OrderEvent::Cancelled(c)) => {
                cancelled.entry(c.order_id).or_insert(c.reason_code);
            }
            DomainEvent::Order(OrderEvent::Shipped(_)) => shipped += 1,
            DomainEvent::Order(OrderEvent::Delivered(_)) => delivered += 1,
            _ => {}
        }
    }
    /// A payment as its events leave it: its order, its last event's kind, what was captured
    /// and refunded.
    #[derive(Default)]
    struct Paid {
        order_id: Uuid,
        last: &'static str,
        captured: i64,
        refunded: i64,
    }
    let mut payments: BTreeMap<Uuid, Paid> = BTreeMap::new();
    for recorded in log_of(&*store_of(Service::Payments)).await {
        let DomainEvent::Payment(event) =
            event_schemas::decode(&recorded.event_type, recorded.schema_version, &recorded.payload).unwrap()
        else {
            continue;
        };
        let (payment_id, order_id, kind) = match &event {
            PaymentEvent::Authorized(e) => (e.payment_id, e.order_id, "authorized"),
            PaymentEvent::Captured(e) => (e.payment_id, e.order_id, "captured"),
            PaymentEvent::Declined(e) => (e.payment_id, e.order_id, "declined"),
            PaymentEvent::Refunded(e) => (e.payment_id, e.order_id, "refunded"),
            PaymentEvent::Voided(e) => (e.payment_id, e.order_id, "voided"),
        };
        let paid = payments.entry(payment_id).or_default();
        paid.order_id = order_id;
        paid.last = kind;
        match &event {
            PaymentEvent::Captured(e) => paid.captured += e.amount.amount_minor,
            PaymentEvent::Refunded(e) => paid.refunded += e.amount.amount_minor,
            _ => {}
        }
    }
    let mut refunds_of_paid: BTreeMap<Uuid, i64> = BTreeMap::new();
    for paid in payments.values() {
        let holds_money = match paid.last {
            "authorized" | "captured" => true,
            "refunded" => paid.refunded < paid.captured,
            _ => false,
        };
        if holds_money {
            *refunds_of_paid.entry(paid.order_id).or_default() += paid.refunded;
        }
    }
    let revenue_orders: Vec<Uuid> = totals
        .keys()
        .copied()
        .filter(|id| confirmed.contains(id) && !cancelled.contains_key(id) && refunds_of_paid.contains_key(id))
        .collect();
    assert!(!revenue_orders.is_empty(), "some orders are revenue");
    assert!(
        payments.values().any(|p| p.last == "captured") && payments.values().any(|p| p.last == "voided"),
        "the sagas captured and voided payments"
    );
    let expected_revenue: i64 = revenue_orders.iter().map(|id| totals[id] - refunds_of_paid[id]).sum();
    let requested = cancelled.values().filter(|code| *code == "requested").count() as u64;
    assert_eq!(requested, cancelled.len() as u64, "only clients cancelled");
    let analytics = SalesAnalytics::clickhouse(clickhouse, read.clone(), 1);
    let from = chrono::Utc::now() - chrono::Duration::days(1);
    let to = chrono::Utc::now() + chrono::Duration::days(1);
    let expected = (
        expected_revenue,
        revenue_orders.len() as u64,
        totals.len() as u64,
        0,
        confirmed.len() as u64,
        shipped,
        delivered,
        cancelled.len() as u64,
        requested,
    );
    loop {
        let buckets = analytics.revenue(from, to, analytics::Bucket::Day).await.unwrap();
        let funnel = analytics.order_funnel(None, None).await.unwrap();
        let seen = (
            buckets.iter().map(|b| b.revenue_minor).sum::<i64>(),
            buckets.iter().map(|b| b.orders).sum::<u64>(),
            funnel.placed,
            funnel.pending,
            funnel.confirmed,
            funnel.shipped,
            funnel.delivered,
            funnel.cancelled,
            funnel.cancellation_reasons.get("requested").copied().unwrap_or(0),
        );
        if seen == expected {
            break;
        }
        assert!(
            Instant::now() < converge,
            "ClickHouse (revenue, revenue orders, placed, pending, confirmed, shipped, delivered, \
             cancelled, cancelled as requested) = {seen:?}, the events say {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(kills >= 4);
    eprintln!("{kills} workers killed; the read models equal a fold of the log");
    for worker in &mut workers {
        worker.kill().await;
    }
    for relay in &mut relays {
        relay.start_kill().unwrap();
        relay.wait().await.unwrap();
    }
}
