//! The write services' invariants against real stores (PostgreSQL from `scripts/services up`,
//! SQLite files), each asserted on one service's commands through its command handler, and end
//! to end through [`Local`] (the four services in one process, here all over one shared store;
//! placing an order appends it `pending` with its saga, and the saga driver, run by the tests
//! that need orders to progress, reserves each line at the inventory service, authorizes the
//! payment and confirms the order, or cancels it `out_of_stock`; ADR 0010):
//!
//! - stock never goes below zero under concurrent reservations at the inventory service, nor
//!   under concurrent orders (every order is accepted; exactly the stock's worth is confirmed,
//!   the others are cancelled `out_of_stock` holding nothing);
//! - concurrent repeats of an idempotent command append once and all get the same answer; the
//!   key reused with another request is refused and appends nothing;
//! - a stale `If-Match` is a conflict and appends nothing;
//! - snapshots never change an answer, and "state as of" equals the fold of the stream's events
//!   up to that point (orders, their sagas and payments included);
//! - another process appending to the same store never leaves an aggregate this process cached
//!   deciding alone.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use event_schemas::{Category, Service};
use event_store::{
    EventMetadata, EventStore, IdempotencyKey, PgEventStore, Position, RecordedEvent, StoreOptions, Until,
};
use projections::ReadDb;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use write_side::domain::saga::Saga;
use write_side::domain::{
    Aggregate, CancelOrder, Customer, CustomerCommand, DomainError, Order, OrderCommand, OrderStatus, Payment,
    PaymentStatus, PlaceOrder, PlaceOrderLine, Product, ProductCommand,
};
use write_side::orders::OrdersError;
use write_side::orders::saga::payment_id;
use write_side::{CommandAnswer, CommandContext, CommandError, CommandHandler, HandlerOptions, Local, Snapshottable};

mod common;
use common::eventually;

async fn postgres() -> Arc<dyn EventStore> {
    let db = testkit::postgres::fresh_database().await;
    let pool = db.pool(16).await;
    PgEventStore::migrate(&pool).await.unwrap();
    Arc::new(PgEventStore::open(pool, StoreOptions::default()).await.unwrap())
}

async fn sqlite() -> Arc<dyn EventStore> {
    Arc::new(testkit::sqlite::store("orderflow_handler").await)
}

macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $test() { super::$test(super::postgres().await).await } )*
        }
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $test() { super::$test(super::sqlite().await).await } )*
        }
    };
}

on_both_stores!(
    stock_never_goes_negative_under_concurrent_reservations,
    stock_never_goes_negative_under_concurrent_orders,
    concurrent_repeats_of_an_idempotent_command_append_once,
    stale_if_match_is_a_conflict_and_appends_nothing,
    snapshots_never_change_an_answer,
    state_as_of_equals_the_fold_of_the_events_up_to_it,
    another_process_appending_never_leaves_a_cached_aggregate_deciding_alone,
);

/// The four services in one process, every one over `store` (one store they share), the orders
/// service's copy of customers and products in a SQLite file of its own. Nothing feeds the copy
/// (`run_replica` is not running), so placing an order asks the customers service for the
/// customer as it is now.
async fn local(store: &Arc<dyn EventStore>, options: HandlerOptions) -> Local {
    let path = std::env::temp_dir().join(format!("{}.db", testkit::unique_name("orderflow_handler_replica")));
    let replica = ReadDb::connect(&format!("sqlite://{}", path.display()), 2)
        .await
        .unwrap();
    let stores = Service::ALL.into_iter().map(|s| (s, Arc::clone(store))).collect();
    Local::new(stores, replica, options).await.unwrap()
}

/// The saga driver of a [`Local`], running until stopped.
struct Driver {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Driver {
    /// Runs `shop`'s saga driver (once per `Local`).
    fn start(shop: &Local) -> Driver {
        let stop = CancellationToken::new();
        let (shop, until) = (shop.clone(), stop.clone());
        let task = tokio::spawn(async move { shop.run_sagas(until).await });
        Driver { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

/// The saga of order `order_id` as the store holds it.
async fn saga_of(shop: &Local, order_id: Uuid) -> Saga {
    shop.handler(Service::Orders)
        .load::<Saga>(order_id, None)
        .await
        .unwrap()
        .state
}

async fn order_of(shop: &Local, order_id: Uuid) -> Order {
    shop.handler(Service::Orders)
        .load::<Order>(order_id, None)
        .await
        .unwrap()
        .state
}

/// The payment of order `order_id` (its id derived from the order's).
async fn payment_of(shop: &Local, order_id: Uuid) -> Payment {
    shop.handler(Service::Payments)
        .load::<Payment>(payment_id(order_id), None)
        .await
        .unwrap()
        .state
}

/// Waits until the saga of `order_id` has settled: confirmed its order (and waits for the
/// shipment), or completed. A parked saga fails the test.
async fn settled(shop: &Local, order_id: Uuid) -> Saga {
    eventually(format!("the saga of {order_id} settles"), || async move {
        let saga = saga_of(shop, order_id).await;
        assert!(saga.parked.is_none(), "parked: {saga:?}");
        (saga.outcome.is_some() || (saga.confirmed && saga.failure.is_none())).then_some(saga)
    })
    .await
}

/// Waits until the saga of `order_id` has completed with `outcome` (`captured`, `cancelled`).
async fn completed(shop: &Local, order_id: Uuid, outcome: &str) -> Saga {
    eventually(format!("the saga of {order_id} ends {outcome}"), || async move {
        let saga = saga_of(shop, order_id).await;
        assert!(saga.parked.is_none(), "parked: {saga:?}");
        if let Some(ended) = &saga.outcome {
            assert_eq!(ended, outcome, "{saga:?}");
            return Some(saga);
        }
        None
    })
    .await
}

fn ctx() -> CommandContext {
    CommandContext {
        metadata: EventMetadata {
            correlation_id: "test".into(),
            causation_id: "test".into(),
            actor: "tester".into(),
        },
        ..CommandContext::default()
    }
}

/// A context with `Idempotency-Key: key` for a request hashing to `body`.
fn keyed(key: &str, body: &[u8]) -> CommandContext {
    CommandContext {
        idempotency: Some(IdempotencyKey {
            key: key.into(),
            request_hash: body.to_vec(),
        }),
        ..ctx()
    }
}

/// Registers a customer at the customers service of `h`.
async fn customer(h: &CommandHandler) -> Uuid {
    let id = Uuid::now_v7();
    h.customer(&ctx(), id, register(id)).await.unwrap();
    id
}

fn register(customer_id: Uuid) -> CustomerCommand {
    CustomerCommand::Register {
        customer_id,
        name: "Ada".into(),
        email: "ada@example.com".into(),
    }
}

fn rename(customer_id: Uuid, name: &str) -> CustomerCommand {
    CustomerCommand::Rename {
        customer_id,
        name: name.into(),
    }
}

/// Adds a product with `stock` units at the inventory service of `h`.
async fn product(h: &CommandHandler, stock: i64) -> Uuid {
    let id = Uuid::now_v7();
    let c = ProductCommand::Add {
        product_id: id,
        sku: format!("SKU-{}", id.simple()),
        name: "Widget".into(),
        price_minor: 1250,
        currency: "EUR".into(),
        stock,
    };
    h.product(&ctx(), id, c).await.unwrap();
    id
}

fn reserve(product_id: Uuid, order_id: Uuid, quantity: i64) -> ProductCommand {
    ProductCommand::ReserveStock {
        product_id,
        order_id,
        quantity,
    }
}

fn release(product_id: Uuid, order_id: Uuid) -> ProductCommand {
    ProductCommand::ReleaseStock { product_id, order_id }
}

fn restock(product_id: Uuid, quantity: i64) -> ProductCommand {
    ProductCommand::Restock { product_id, quantity }
}

fn place(customer_id: Uuid, lines: &[(Uuid, i64)]) -> PlaceOrder {
    PlaceOrder {
        order_id: Uuid::now_v7(),
        customer_id,
        lines: lines
            .iter()
            .map(|&(product_id, quantity)| PlaceOrderLine { product_id, quantity })
            .collect(),
    }
}

/// How many events of each type the store holds after `after`.
async fn appended_since(store: &Arc<dyn EventStore>, after: Position) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in store.read_all(after, 10_000).await.unwrap() {
        *counts.entry(e.event_type).or_default() += 1;
    }
    counts
}

fn counts(of: &[(&str, usize)]) -> BTreeMap<String, usize> {
    of.iter().map(|&(t, n)| (t.to_owned(), n)).collect()
}

/// Aggregate `id`'s stream as stored, and its events decoded.
async fn stream_of<A: Aggregate>(store: &Arc<dyn EventStore>, id: Uuid) -> (Vec<RecordedEvent>, Vec<A::Event>) {
    let recorded = store.read_stream(&A::CATEGORY.stream_id(id), 1, 10_000).await.unwrap();
    let events = recorded
        .iter()
        .map(|e| A::event_from(event_schemas::decode(&e.event_type, e.schema_version, &e.payload).unwrap()).unwrap())
        .collect();
    (recorded, events)
}

/// 32 concurrent reservations of one unit each (for 32 orders) against 20 units, at the
/// inventory service: exactly 20 are taken, the others refused as insufficient stock, and the
/// product never holds less than nothing at any point of its stream.
async fn stock_never_goes_negative_under_concurrent_reservations(store: Arc<dyn EventStore>) {
    let inventory = CommandHandler::new(
        store.clone(),
        HandlerOptions {
            snapshot_every: 5,
            ..HandlerOptions::default()
        },
    );
    let widget = product(&inventory, 20).await;
    let mut clients = Vec::new();
    for _ in 0..32 {
        let (inventory, order_id) = (inventory.clone(), Uuid::now_v7());
        clients.push(tokio::spawn(async move {
            let answer = inventory.product(&ctx(), widget, reserve(widget, order_id, 1)).await;
            (order_id, answer)
        }));
    }
    let mut reserved = BTreeSet::new();
    for c in clients {
        match c.await.unwrap() {
            (order_id, Ok(_)) => {
                reserved.insert(order_id);
            }
            (
                _,
                Err(CommandError::Rejected(DomainError::InsufficientStock {
                    requested: 1,
                    available: 0,
                    ..
                })),
            ) => {}
            (_, Err(e)) => panic!("unexpected: {e:?}"),
        }
    }
    assert_eq!(reserved.len(), 20, "exactly the stock was reserved");

    // As this process sees it, and as another one loads it (a snapshot, then the events).
    let stream_id = Category::Product.stream_id(widget);
    assert!(
        store.load_snapshot(&stream_id, None).await.unwrap().is_some(),
        "the reservations took snapshots"
    );
    let other = CommandHandler::new(store.clone(), HandlerOptions::default());
    for h in [&inventory, &other] {
        let p = h.load::<Product>(widget, None).await.unwrap().state;
        assert_eq!(p.available, 0);
        assert_eq!(p.reservations.len(), 20);
        assert_eq!(p.reserved(), 20);
        assert_eq!(p.reservations.keys().copied().collect::<BTreeSet<_>>(), reserved);
        assert!(p.reservations.values().all(|&q| q == 1), "{p:?}");
    }
    let (events, _) = stream_of::<Product>(&store, widget).await;
    assert_eq!(events.len(), 21, "the product added, then 20 reservations");
    for e in &events {
        let then = other
            .load::<Product>(widget, Some(Until::Position(e.position)))
            .await
            .unwrap()
            .state;
        assert!(
            then.available >= 0,
            "negative at version {}: {then:?}",
            e.stream_version
        );
        assert_eq!(then.available + then.reserved(), 20, "at version {}", e.stream_version);
    }
}

/// The same end to end: 32 concurrent orders of one unit against 20 units, placed through the
/// orders service while its saga driver runs. Every order is accepted (`pending`, with its
/// saga); the sagas reserve at the inventory service concurrently: exactly 20 orders are
/// confirmed, holding the stock and an authorized payment, and the other 12 are cancelled
/// `out_of_stock`, holding no stock and never asking payments. Each step is recorded once, and
/// the product never holds less than nothing at any point of its stream.
async fn stock_never_goes_negative_under_concurrent_orders(store: Arc<dyn EventStore>) {
    let shop = local(
        &store,
        HandlerOptions {
            snapshot_every: 5,
            ..HandlerOptions::default()
        },
    )
    .await;
    let buyer = customer(shop.handler(Service::Customers)).await;
    let widget = product(shop.handler(Service::Inventory), 20).await;
    let head = store.head_position().await.unwrap();
    let driver = Driver::start(&shop);
    let mut clients = Vec::new();
    for _ in 0..32 {
        let (shop, order) = (shop.clone(), place(buyer, &[(widget, 1)]));
        clients.push(tokio::spawn(async move {
            (order.order_id, shop.place_order(&ctx(), order).await)
        }));
    }
    let mut orders = BTreeSet::new();
    for c in clients {
        let (order_id, placed) = c.await.unwrap();
        let answer = placed.unwrap_or_else(|e| panic!("placing {order_id} was refused: {e:?}"));
        assert_eq!(
            (answer.stream_id.as_str(), answer.version),
            (Category::Order.stream_id(order_id).as_str(), 1)
        );
        orders.insert(order_id);
    }
    assert_eq!(orders.len(), 32);

    let (mut confirmed, mut cancelled) = (BTreeSet::new(), BTreeSet::new());
    for &order_id in &orders {
        let saga = settled(&shop, order_id).await;
        let order = order_of(&shop, order_id).await;
        if saga.confirmed {
            assert_eq!(order.status, OrderStatus::Confirmed, "{order:?}");
            let payment = payment_of(&shop, order_id).await;
            assert_eq!(
                (payment.status, payment.authorized_minor),
                (PaymentStatus::Authorized, 1250),
                "{payment:?}"
            );
            confirmed.insert(order_id);
        } else {
            assert_eq!(saga.outcome.as_deref(), Some("cancelled"), "{saga:?}");
            assert_eq!(order.status, OrderStatus::Cancelled, "{order:?}");
            assert_eq!(order.cancellation_reason_code.as_deref(), Some("out_of_stock"));
            assert_eq!(payment_of(&shop, order_id).await.status, PaymentStatus::NotStarted);
            cancelled.insert(order_id);
        }
    }
    driver.stop().await;
    assert_eq!(
        (confirmed.len(), cancelled.len()),
        (20, 12),
        "exactly the stock was sold"
    );

    let p = shop
        .handler(Service::Inventory)
        .load::<Product>(widget, None)
        .await
        .unwrap()
        .state;
    assert_eq!((p.available, p.reserved()), (0, 20), "{p:?}");
    assert_eq!(
        p.reservations.keys().copied().collect::<BTreeSet<_>>(),
        confirmed,
        "the confirmed orders hold the stock, the cancelled ones nothing"
    );
    // Folded event by event (a fresh handler: snapshots, then events), never below zero.
    let other = CommandHandler::new(store.clone(), HandlerOptions::default());
    let (events, _) = stream_of::<Product>(&store, widget).await;
    assert_eq!(events.len(), 21, "the product added, then 20 reservations");
    for e in &events {
        let then = other
            .load::<Product>(widget, Some(Until::Position(e.position)))
            .await
            .unwrap()
            .state;
        assert!(
            then.available >= 0,
            "negative at version {}: {then:?}",
            e.stream_version
        );
        assert_eq!(then.available + then.reserved(), 20, "at version {}", e.stream_version);
    }
    // Each step of each saga recorded once.
    assert_eq!(
        appended_since(&store, head).await,
        counts(&[
            ("order.placed", 32),
            ("saga.started", 32),
            ("product.stock_reserved", 20),
            ("saga.stock_reserved", 20),
            ("payment.authorized", 20),
            ("saga.payment_authorized", 20),
            ("order.confirmed", 20),
            ("saga.confirmed", 20),
            ("saga.failed", 12),
            ("order.cancelled", 12),
            ("saga.order_cancelled", 12),
            ("saga.completed", 12),
        ])
    );
}

/// Ten concurrent repeats of `command` (the same idempotency key and request), spread over two
/// processes of one service, answered.
async fn ten_repeats<F, Fut>(processes: &[CommandHandler; 2], command: F) -> Vec<CommandAnswer>
where
    F: Fn(CommandHandler) -> Fut,
    Fut: Future<Output = Result<CommandAnswer, CommandError>> + Send + 'static,
{
    let tasks: Vec<_> = (0..10)
        .map(|i| tokio::spawn(command(processes[i % 2].clone())))
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap().unwrap());
    }
    answers
}

/// All ten answers name the same stream, version and position.
#[track_caller]
fn assert_all_alike(answers: &[CommandAnswer]) {
    let first = &answers[0];
    assert!(
        answers
            .iter()
            .all(|a| (&a.stream_id, a.version, a.position) == (&first.stream_id, first.version, first.position)),
        "{answers:?}"
    );
}

async fn concurrent_repeats_of_an_idempotent_command_append_once(store: Arc<dyn EventStore>) {
    let processes = [
        CommandHandler::new(store.clone(), HandlerOptions::default()),
        CommandHandler::new(store.clone(), HandlerOptions::default()),
    ];

    // Customers: a second `Register` of one id is refused (AlreadyExists); only the key makes
    // the repeats succeed.
    let id = Uuid::now_v7();
    let head = store.head_position().await.unwrap();
    let answers = ten_repeats(&processes, |h| async move {
        h.customer(&keyed("register-once", b"register"), id, register(id)).await
    })
    .await;
    assert_all_alike(&answers);
    assert_eq!(
        answers.iter().filter(|a| !a.replayed).count(),
        1,
        "one of ten appended: {answers:?}"
    );
    assert_eq!(answers[0].version, 1);
    assert_eq!(
        appended_since(&store, head).await,
        counts(&[("customer.registered", 1)])
    );
    let other = Uuid::now_v7();
    let err = processes[0]
        .customer(&keyed("register-once", b"another body"), other, register(other))
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::IdempotencyKeyReused { .. }), "{err:?}");
    assert_eq!(
        appended_since(&store, head).await,
        counts(&[("customer.registered", 1)])
    );
    assert_eq!(processes[1].load::<Customer>(other, None).await.unwrap().version, 0);

    // Inventory: a reservation of two units for an order, repeated. A repeat that looked the key
    // up before the first one committed, and decides after it, finds the reservation made and
    // answers "unchanged" rather than "replayed": the same stream, version and position.
    let widget = product(&processes[0], 100).await;
    let order_id = Uuid::now_v7();
    let head = store.head_position().await.unwrap();
    let answers = ten_repeats(&processes, |h| async move {
        h.product(&keyed("reserve-once", b"reserve"), widget, reserve(widget, order_id, 2))
            .await
    })
    .await;
    assert_all_alike(&answers);
    assert_eq!(answers[0].version, 2);
    assert_eq!(
        appended_since(&store, head).await,
        counts(&[("product.stock_reserved", 1)])
    );
    let err = processes[1]
        .product(
            &keyed("reserve-once", b"another body"),
            widget,
            reserve(widget, Uuid::now_v7(), 1),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::IdempotencyKeyReused { .. }), "{err:?}");
    assert_eq!(
        appended_since(&store, head).await,
        counts(&[("product.stock_reserved", 1)])
    );
    for h in &processes {
        let p = h.load::<Product>(widget, None).await.unwrap().state;
        assert_eq!(
            (p.available, p.reservations.clone()),
            (98, BTreeMap::from([(order_id, 2)]))
        );
    }

    // An order placed across the services, sent ten times at once with its key: placed once
    // (the order and its saga), every copy answered as it was; the key with another request is
    // refused and appends nothing. Then its saga runs: the stock is reserved once.
    let shop = local(&store, HandlerOptions::default()).await;
    let order = place(id, &[(widget, 2)]);
    let head = store.head_position().await.unwrap();
    let copies: Vec<_> = (0..10)
        .map(|_| {
            let (shop, order) = (shop.clone(), order.clone());
            tokio::spawn(async move { shop.place_order(&keyed("order-once", b"order"), order).await })
        })
        .collect();
    let mut answers = Vec::new();
    for copy in copies {
        answers.push(copy.await.unwrap().unwrap());
    }
    let first = answers.iter().find(|a| !a.replayed).expect("one copy placed the order");
    assert!(
        answers
            .iter()
            .all(|a| (&a.stream_id, a.version, a.position) == (&first.stream_id, first.version, first.position)),
        "{answers:?}"
    );
    assert_eq!(answers.iter().filter(|a| !a.replayed).count(), 1, "{answers:?}");
    assert_eq!(
        (first.stream_id.as_str(), first.version),
        (Category::Order.stream_id(order.order_id).as_str(), 1)
    );
    let once = counts(&[("order.placed", 1), ("saga.started", 1)]);
    assert_eq!(appended_since(&store, head).await, once);
    let err = shop
        .place_order(&keyed("order-once", b"another body"), place(id, &[(widget, 1)]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, OrdersError::Command(CommandError::IdempotencyKeyReused { .. })),
        "{err:?}"
    );
    assert_eq!(appended_since(&store, head).await, once);
    let driver = Driver::start(&shop);
    assert!(settled(&shop, order.order_id).await.confirmed);
    driver.stop().await;
    assert_eq!(
        appended_since(&store, head).await,
        counts(&[
            ("order.placed", 1),
            ("saga.started", 1),
            ("product.stock_reserved", 1),
            ("saga.stock_reserved", 1),
            ("payment.authorized", 1),
            ("saga.payment_authorized", 1),
            ("order.confirmed", 1),
            ("saga.confirmed", 1),
        ])
    );
    let p = processes[0].load::<Product>(widget, None).await.unwrap().state;
    assert_eq!((p.available, p.reserved_for(order.order_id)), (96, 2));
}

async fn stale_if_match_is_a_conflict_and_appends_nothing(store: Arc<dyn EventStore>) {
    let h = CommandHandler::new(store.clone(), HandlerOptions::default());
    let id = customer(&h).await;
    let pinned = |v| CommandContext {
        if_match: Some(v),
        ..ctx()
    };
    let a = h.customer(&pinned(1), id, rename(id, "Ada L.")).await.unwrap();
    assert_eq!(a.version, 2);
    let head = store.head_position().await.unwrap();
    let err = h
        .customer(&pinned(1), id, rename(id, "Ada Lovelace"))
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Conflict { actual: 2, .. }), "{err:?}");
    assert_eq!(store.head_position().await.unwrap(), head);
    assert_eq!(h.load::<Customer>(id, None).await.unwrap().state.name, "Ada L.");
}

/// Two `Local`s over one store are two processes hosting the same services: each caches what it
/// last wrote or read (`aggregate_cache`), and the other one's appends make that stale. No answer
/// may come from a stale entry: a refusal or "nothing to do" is checked against the store, a
/// commit on a stale version is refused and decided again, a stream missing from the cache is
/// not taken as new once the store says otherwise, and the customer an order is placed for is
/// read as it is now.
async fn another_process_appending_never_leaves_a_cached_aggregate_deciding_alone(store: Arc<dyn EventStore>) {
    let here = local(&store, HandlerOptions::default()).await;
    let there = local(&store, HandlerOptions::default()).await;
    let (stock_here, stock_there) = (here.handler(Service::Inventory), there.handler(Service::Inventory));

    // `here` remembers the widget sold out; `there` restocks it.
    let widget = product(stock_here, 1).await;
    let (first, second, third) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    stock_here
        .product(&ctx(), widget, reserve(widget, first, 1))
        .await
        .unwrap();
    stock_there.product(&ctx(), widget, restock(widget, 5)).await.unwrap();
    // A refusal ("insufficient stock") on the cached state would be wrong.
    stock_here
        .product(&ctx(), widget, reserve(widget, second, 3))
        .await
        .expect("the restock made by the other process is seen");
    // `there` remembers 5 available, 2 are: its commit on the stale version must not go through.
    stock_there
        .product(&ctx(), widget, reserve(widget, third, 2))
        .await
        .expect("decided again on the current stock");
    // `here` remembers 2 available, none are.
    let err = stock_here
        .product(&ctx(), widget, reserve(widget, Uuid::now_v7(), 1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::Rejected(DomainError::InsufficientStock { available: 0, .. })
        ),
        "sold out: {err:?}"
    );
    for h in [stock_here, stock_there] {
        let p = h.load::<Product>(widget, None).await.unwrap().state;
        assert_eq!((p.available, p.reserved()), (0, 6), "{p:?}");
        assert_eq!(p.reservations, BTreeMap::from([(first, 1), (second, 3), (third, 2)]));
    }

    // `here` caches the gadget as added, holding nothing for an order `there` then reserves
    // for: releasing it from `here` is no "nothing to release".
    let gadget = product(stock_here, 10).await;
    let held = Uuid::now_v7();
    stock_there
        .product(&ctx(), gadget, reserve(gadget, held, 4))
        .await
        .unwrap();
    let released = stock_here.product(&ctx(), gadget, release(gadget, held)).await.unwrap();
    assert_eq!(released.version, 3, "a release was appended");
    let g = stock_there.load::<Product>(gadget, None).await.unwrap().state;
    assert_eq!((g.available, g.reserved()), (10, 0), "{g:?}");

    // The customer is only read by an order: renamed elsewhere, the next order has the new name.
    // `there`'s saga driver runs the sagas for now: it finds the ones `here` starts in the log.
    let there_driver = Driver::start(&there);
    let buyer = customer(here.handler(Service::Customers)).await;
    there
        .handler(Service::Customers)
        .customer(&ctx(), buyer, rename(buyer, "Ada Lovelace"))
        .await
        .unwrap();
    let order = place(buyer, &[(gadget, 1)]);
    here.place_order(&ctx(), order.clone()).await.unwrap();
    let placed = order_of(&here, order.order_id).await;
    assert_eq!(placed.customer.map(|c| c.name).as_deref(), Some("Ada Lovelace"));
    assert!(settled(&there, order.order_id).await.confirmed);

    // Placed by the other process, its stock reserved and the order confirmed there; then
    // cancelled here, and compensated by this process's driver, where the gadget and the order
    // are cached from before all that: the order's stock is released all the same.
    let g = stock_here.load::<Product>(gadget, None).await.unwrap().state;
    assert_eq!((g.available, g.reserved()), (9, 1), "{g:?}");
    let elsewhere = place(buyer, &[(gadget, 4)]);
    there.place_order(&ctx(), elsewhere.clone()).await.unwrap();
    order_of(&here, elsewhere.order_id).await;
    assert!(settled(&there, elsewhere.order_id).await.confirmed);
    there_driver.stop().await;
    let g = stock_there.load::<Product>(gadget, None).await.unwrap().state;
    assert_eq!((g.available, g.reserved()), (5, 5), "{g:?}");
    let here_driver = Driver::start(&here);
    let cancel = CancelOrder {
        order_id: elsewhere.order_id,
        reason: "changed my mind".into(),
        reason_code: None,
    };
    here.cancel_order(&ctx(), cancel).await.unwrap();
    let saga = completed(&here, elsewhere.order_id, "cancelled").await;
    assert!(saga.lines.iter().all(|l| l.released), "{saga:?}");
    here_driver.stop().await;
    let g = stock_there.load::<Product>(gadget, None).await.unwrap().state;
    assert_eq!((g.available, g.reserved()), (9, 1), "{g:?}");
    assert_eq!(g.reservations, BTreeMap::from([(order.order_id, 1)]));
    let cancelled = order_of(&there, elsewhere.order_id).await;
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert_eq!(
        payment_of(&there, elsewhere.order_id).await.status,
        PaymentStatus::Voided
    );

    // Registered by another process, unknown to this one's cache: refused as existing, not
    // answered as a conflict after retries on "new stream".
    let head = store.head_position().await.unwrap();
    let fresh = CommandHandler::new(store.clone(), HandlerOptions::default());
    let err = fresh.customer(&ctx(), buyer, register(buyer)).await.unwrap_err();
    assert!(
        matches!(err, CommandError::Rejected(DomainError::AlreadyExists { .. })),
        "{err:?}"
    );

    // An order id the other process already placed: not a second OrderPlaced, neither from an
    // orders handler that never saw the order (its cache takes the stream as new) nor through
    // the orders flow (refused before anything is reserved).
    let (_, events) = stream_of::<Order>(&store, order.order_id).await;
    let err = there
        .handler(Service::Orders)
        .create::<Order>(&ctx(), order.order_id, events)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Rejected(DomainError::AlreadyExists { .. })),
        "already placed: {err:?}"
    );
    let err = there.place_order(&ctx(), order).await.unwrap_err();
    assert!(
        matches!(err, OrdersError::Rejected(DomainError::AlreadyExists { .. })),
        "already placed: {err:?}"
    );
    assert_eq!(store.head_position().await.unwrap(), head, "nothing appended");
}

/// The ids of a little shop's aggregates.
struct Shop {
    customers: Vec<Uuid>,
    products: Vec<Uuid>,
    orders: Vec<Uuid>,
    /// The orders whose sagas and payments are checked too, one of each kind: shipped and
    /// captured, cancelled while its saga ran, confirmed, cancelled once confirmed.
    followed: Vec<Uuid>,
}

/// A little shop's history, through the services with the saga driver running: orders placed
/// (two lines each) and confirmed by their sagas, one shipped (its payment captured), some
/// cancelled (their stock released, their payment voided); restocks, a price change, renames.
/// Returns once every saga has settled and the driver has stopped: nothing moves afterwards.
async fn workload(shop: &Local) -> Shop {
    let (customers_h, inventory) = (shop.handler(Service::Customers), shop.handler(Service::Inventory));
    let driver = Driver::start(shop);
    let customers = vec![customer(customers_h).await, customer(customers_h).await];
    let products = vec![product(inventory, 50).await, product(inventory, 50).await];
    let mut orders = Vec::new();
    let mut cancelled = BTreeSet::new();
    for i in 0..12 {
        let cmd = place(customers[i % 2], &[(products[0], 1 + (i as i64 % 3)), (products[1], 1)]);
        orders.push(cmd.order_id);
        shop.place_order(&ctx(), cmd).await.unwrap();
        if i % 3 == 0 {
            assert!(settled(shop, orders[i]).await.confirmed, "order {i}");
        }
        // Cancelled while its saga runs (1, 5), or once confirmed (9).
        if i % 4 == 1 {
            let cancel = CancelOrder {
                order_id: orders[i],
                reason: "changed mind".into(),
                reason_code: None,
            };
            shop.cancel_order(&ctx(), cancel).await.unwrap();
            cancelled.insert(orders[i]);
        }
        if i % 5 == 2 {
            inventory
                .product(&ctx(), products[1], restock(products[1], 3))
                .await
                .unwrap();
            customers_h
                .customer(&ctx(), customers[0], rename(customers[0], &format!("Ada {i}")))
                .await
                .unwrap();
        }
        if i == 6 {
            let c = ProductCommand::ChangePrice {
                product_id: products[0],
                price_minor: 1300,
            };
            inventory.product(&ctx(), products[0], c).await.unwrap();
        }
    }
    for &order_id in &orders {
        if cancelled.contains(&order_id) {
            completed(shop, order_id, "cancelled").await;
        } else {
            assert!(settled(shop, order_id).await.confirmed, "{order_id}");
        }
    }
    let ship = OrderCommand::Ship {
        order_id: orders[0],
        carrier: "DHL".into(),
        tracking: "JD014600".into(),
    };
    shop.orders().change(&ctx(), orders[0], ship).await.unwrap();
    completed(shop, orders[0], "captured").await;
    driver.stop().await;

    // The stock of the orders still standing is reserved, the cancelled ones' released; their
    // payments authorized (the shipped one captured), the cancelled ones' never left authorized.
    let standing: BTreeSet<Uuid> = orders.iter().copied().filter(|o| !cancelled.contains(o)).collect();
    for &p in &products {
        let p = inventory.load::<Product>(p, None).await.unwrap().state;
        assert_eq!(p.reservations.keys().copied().collect::<BTreeSet<_>>(), standing);
    }
    for &order_id in &orders {
        let payment = payment_of(shop, order_id).await;
        let expected: &[PaymentStatus] = if order_id == orders[0] {
            &[PaymentStatus::Captured]
        } else if cancelled.contains(&order_id) {
            &[PaymentStatus::Voided, PaymentStatus::NotStarted]
        } else {
            &[PaymentStatus::Authorized]
        };
        assert!(expected.contains(&payment.status), "{order_id}: {payment:?}");
    }
    Shop {
        customers,
        products,
        followed: vec![orders[0], orders[1], orders[3], orders[9]],
        orders,
    }
}

/// Every aggregate of `shop` loaded now and at every position of the log, through the handlers
/// of the customers, inventory, orders (orders and their sagas) and payments services.
async fn all_states(services: [&CommandHandler; 4], shop: &Shop, head: u64) -> Vec<String> {
    let [customers, inventory, orders, payments] = services;
    let mut out = Vec::new();
    for until in std::iter::once(None).chain((1..=head).map(|p| Some(Until::Position(p)))) {
        for &id in &shop.customers {
            let c = customers.load::<Customer>(id, until).await.unwrap();
            out.push(format!("{:?} v{} p{}", c.state, c.version, c.position));
        }
        for &id in &shop.products {
            let p = inventory.load::<Product>(id, until).await.unwrap();
            out.push(format!("{:?} v{} p{}", p.state, p.version, p.position));
        }
        for &id in &shop.orders {
            let o = orders.load::<Order>(id, until).await.unwrap();
            out.push(format!("{:?} v{} p{}", o.state, o.version, o.position));
        }
        for &id in &shop.followed {
            let s = orders.load::<Saga>(id, until).await.unwrap();
            out.push(format!("{:?} v{} p{}", s.state, s.version, s.position));
            let p = payments.load::<Payment>(payment_id(id), until).await.unwrap();
            out.push(format!("{:?} v{} p{}", p.state, p.version, p.position));
        }
    }
    out
}

async fn snapshots_never_change_an_answer(store: Arc<dyn EventStore>) {
    let shop = local(
        &store,
        HandlerOptions {
            snapshot_every: 2,
            ..HandlerOptions::default()
        },
    )
    .await;
    let ids = workload(&shop).await;
    for stream_id in [
        Category::Customer.stream_id(ids.customers[0]),
        Category::Product.stream_id(ids.products[0]),
        Category::Order.stream_id(ids.orders[0]),
        Category::Saga.stream_id(ids.orders[0]),
        Category::Payment.stream_id(payment_id(ids.orders[0])),
    ] {
        assert!(
            store.load_snapshot(&stream_id, None).await.unwrap().is_some(),
            "the workload took snapshots of {stream_id}"
        );
    }
    let head = store.head_position().await.unwrap();
    let services = [
        shop.handler(Service::Customers),
        shop.handler(Service::Inventory),
        shop.handler(Service::Orders),
        shop.handler(Service::Payments),
    ];
    // Another process with nothing cached loads "now" from the snapshots too.
    let uncached = CommandHandler::new(
        store.clone(),
        HandlerOptions {
            cache_capacity: 0,
            ..HandlerOptions::default()
        },
    );
    let with = all_states(services, &ids, head).await;
    let uncached_with = all_states([&uncached; 4], &ids, head).await;
    assert_same_states(&uncached_with, &with, "uncached, with snapshots");
    let deleted = store.delete_snapshots(None).await.unwrap();
    assert!(deleted > 10, "{deleted} snapshots");
    let cached_without = all_states(services, &ids, head).await;
    assert_same_states(&cached_without, &with, "cached, without snapshots");
    let uncached_without = all_states([&uncached; 4], &ids, head).await;
    assert_same_states(&uncached_without, &with, "uncached, without snapshots");
}

/// `actual` equals `expected`, else fails naming the first state that differs.
#[track_caller]
fn assert_same_states(actual: &[String], expected: &[String], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}");
    if let Some((i, (a, e))) = actual.iter().zip(expected).enumerate().find(|(_, (a, e))| a != e) {
        panic!("{what}: state {i} differs\n  got:      {a}\n  expected: {e}");
    }
}

/// Asserts that `h`'s "as of" every position up to `head` (a snapshot, then the events) equals
/// folding aggregate `id`'s raw events up to it, and that "as of" each event's recording time
/// includes it. Answers the stream's events.
async fn assert_as_of_is_the_fold<A>(
    h: &CommandHandler,
    store: &Arc<dyn EventStore>,
    id: Uuid,
    head: Position,
) -> Vec<RecordedEvent>
where
    A: Snapshottable + PartialEq + Debug,
{
    let (recorded, events) = stream_of::<A>(store, id).await;
    for p in 0..=head {
        let upto = recorded.iter().take_while(|e| e.position <= p).count();
        let loaded = h.load::<A>(id, Some(Until::Position(p))).await.unwrap();
        let stream_id = &loaded.stream_id;
        assert_eq!(loaded.state, A::fold(&events[..upto]), "{stream_id} as of position {p}");
        assert_eq!(loaded.version, upto as u64, "{stream_id} as of position {p}");
        let last = upto.checked_sub(1).map_or(0, |i| recorded[i].position);
        assert_eq!(loaded.position, last, "{stream_id} as of position {p}");
    }
    for e in &recorded {
        let at_time = h.load::<A>(id, Some(Until::RecordedAt(e.recorded_at))).await.unwrap();
        assert!(
            at_time.version >= e.stream_version,
            "{} as of {} includes version {}",
            e.stream_id,
            e.recorded_at,
            e.stream_version
        );
    }
    recorded
}

/// Invariant 7 (write side): each service's "as of" (snapshot + events) equals folding the
/// stream's raw events up to that point, for every customer, product and order of the
/// workload, and the sagas and payments of the orders it follows.
async fn state_as_of_equals_the_fold_of_the_events_up_to_it(store: Arc<dyn EventStore>) {
    let shop = local(
        &store,
        HandlerOptions {
            snapshot_every: 3,
            ..HandlerOptions::default()
        },
    )
    .await;
    let ids = workload(&shop).await;
    let head = store.head_position().await.unwrap();
    for &id in &ids.customers {
        assert_as_of_is_the_fold::<Customer>(shop.handler(Service::Customers), &store, id, head).await;
    }
    for &id in &ids.products {
        let events = assert_as_of_is_the_fold::<Product>(shop.handler(Service::Inventory), &store, id, head).await;
        assert!(events.len() >= 10, "{} events", events.len());
    }
    for &id in &ids.orders {
        assert_as_of_is_the_fold::<Order>(shop.handler(Service::Orders), &store, id, head).await;
    }
    for &id in &ids.followed {
        assert_as_of_is_the_fold::<Saga>(shop.handler(Service::Orders), &store, id, head).await;
        assert_as_of_is_the_fold::<Payment>(shop.handler(Service::Payments), &store, payment_id(id), head).await;
    }
    let order_id = ids.orders[0];
    let (events, _) = stream_of::<Order>(&store, order_id).await;
    assert_eq!(
        events.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(),
        ["order.placed", "order.confirmed", "order.shipped"]
    );
    let (events, _) = stream_of::<Saga>(&store, order_id).await;
    assert!(events.len() >= 6, "{events:?}");
    let shipped = shop
        .handler(Service::Orders)
        .load::<Order>(order_id, None)
        .await
        .unwrap();
    assert_eq!(shipped.state.status, OrderStatus::Shipped);
    assert_eq!(<Order as Snapshottable>::STATE_VERSION, 2);
}
