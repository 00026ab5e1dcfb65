//! The command handler against real stores (PostgreSQL from `scripts/services up`, SQLite files):
//! optimistic concurrency under load, idempotency, snapshots that never change an answer, and
//! "state as of" equal to the fold of the stream's events up to that point.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use event_schemas::Category;
use event_store::{EventMetadata, EventStore, IdempotencyKey, PgEventStore, StoreOptions, Until};
use uuid::Uuid;
use write_side::domain::{
    Aggregate, CancelOrder, Customer, CustomerCommand, DomainError, Order, OrderCommand, OrderStatus, PlaceOrder,
    PlaceOrderLine, Product, ProductCommand,
};
use write_side::{CommandContext, CommandError, CommandHandler, HandlerOptions, Snapshottable};

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
    stock_never_goes_negative_under_concurrent_orders,
    concurrent_repeats_of_an_idempotent_command_append_once,
    stale_if_match_is_a_conflict_and_appends_nothing,
    snapshots_never_change_an_answer,
    state_as_of_equals_the_fold_of_the_events_up_to_it,
    another_process_appending_never_leaves_a_cached_aggregate_deciding_alone,
);

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

async fn customer(h: &CommandHandler) -> Uuid {
    let id = Uuid::now_v7();
    let c = CustomerCommand::Register {
        customer_id: id,
        name: "Ada".into(),
        email: "ada@example.com".into(),
    };
    h.customer(&ctx(), id, c).await.unwrap();
    id
}

async fn product(h: &CommandHandler, stock: i64) -> Uuid {
    let id = Uuid::now_v7();
    let c = ProductCommand::Add {
        product_id: id,
        sku: format!("SKU-{}", &id.simple().to_string()[..8]),
        name: "Widget".into(),
        price_minor: 1250,
        currency: "EUR".into(),
        stock,
    };
    h.product(&ctx(), id, c).await.unwrap();
    id
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

async fn stock_never_goes_negative_under_concurrent_orders(store: Arc<dyn EventStore>) {
    let h = CommandHandler::new(
        store,
        HandlerOptions {
            snapshot_every: 5,
            ..HandlerOptions::default()
        },
    );
    let buyer = customer(&h).await;
    let widget = product(&h, 20).await;
    let mut clients = Vec::new();
    for _ in 0..32 {
        let h = h.clone();
        clients.push(tokio::spawn(async move {
            h.place_order(&ctx(), place(buyer, &[(widget, 1)])).await
        }));
    }
    let mut placed = 0;
    for c in clients {
        match c.await.unwrap() {
            Ok(_) => placed += 1,
            Err(CommandError::Rejected(_) | CommandError::Conflict { .. }) => {}
            Err(e) => panic!("unexpected: {e:?}"),
        }
    }
    let p = h.load::<Product>(widget, None).await.unwrap().state;
    assert_eq!(placed, 20, "exactly the stock was sold");
    assert_eq!(p.available, 0);
    assert_eq!(p.reservations.len(), 20);
    assert_eq!(p.reserved(), 20);
}

async fn concurrent_repeats_of_an_idempotent_command_append_once(store: Arc<dyn EventStore>) {
    let h = CommandHandler::new(store.clone(), HandlerOptions::default());
    let buyer = customer(&h).await;
    let widget = product(&h, 100).await;
    let command = place(buyer, &[(widget, 2)]);
    let head = store.head_position().await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (h, command) = (h.clone(), command.clone());
        tasks.push(tokio::spawn(async move {
            let ctx = CommandContext {
                idempotency: Some(IdempotencyKey {
                    key: "order-once".into(),
                    request_hash: b"body".to_vec(),
                }),
                ..ctx()
            };
            h.place_order(&ctx, command).await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap().unwrap());
    }
    assert_eq!(answers.iter().filter(|a| !a.replayed).count(), 1, "one of ten appended");
    assert!(
        answers
            .iter()
            .all(|a| (a.version, a.position) == (answers[0].version, answers[0].position))
    );
    let log = store.read_all(head, 100).await.unwrap();
    assert_eq!(log.len(), 2, "one OrderPlaced and one StockReserved, once: {log:?}");
    assert_eq!(h.load::<Product>(widget, None).await.unwrap().state.available, 98);

    let other = CommandContext {
        idempotency: Some(IdempotencyKey {
            key: "order-once".into(),
            request_hash: b"other body".to_vec(),
        }),
        ..ctx()
    };
    let err = h.place_order(&other, place(buyer, &[(widget, 1)])).await.unwrap_err();
    assert!(matches!(err, CommandError::IdempotencyKeyReused { .. }), "{err:?}");
    assert_eq!(store.read_all(head, 100).await.unwrap().len(), 2);
}

async fn stale_if_match_is_a_conflict_and_appends_nothing(store: Arc<dyn EventStore>) {
    let h = CommandHandler::new(store.clone(), HandlerOptions::default());
    let id = customer(&h).await;
    let rename = |name: &str| CustomerCommand::Rename {
        customer_id: id,
        name: name.into(),
    };
    let pinned = |v| CommandContext {
        if_match: Some(v),
        ..ctx()
    };
    let a = h.customer(&pinned(1), id, rename("Ada L.")).await.unwrap();
    assert_eq!(a.version, 2);
    let head = store.head_position().await.unwrap();
    let err = h.customer(&pinned(1), id, rename("Ada Lovelace")).await.unwrap_err();
    assert!(matches!(err, CommandError::Conflict { actual: 2, .. }), "{err:?}");
    assert_eq!(store.head_position().await.unwrap(), head);
    assert_eq!(h.load::<Customer>(id, None).await.unwrap().state.name, "Ada L.");
}

/// Two handlers on one store are two write-side processes: each caches what it last wrote
/// (`aggregate_cache`), and the other one's appends make that stale. No answer may come from a
/// stale entry: a refusal is checked against the store, a commit on a stale version is refused
/// and decided again, and the customer an order is placed for is read as it is now.
async fn another_process_appending_never_leaves_a_cached_aggregate_deciding_alone(store: Arc<dyn EventStore>) {
    let here = CommandHandler::new(store.clone(), HandlerOptions::default());
    let there = CommandHandler::new(store.clone(), HandlerOptions::default());
    let buyer = customer(&here).await;
    let widget = product(&here, 1).await;
    here.place_order(&ctx(), place(buyer, &[(widget, 1)])).await.unwrap();

    // `here` remembers the widget sold out; `there` restocks it.
    let restock = ProductCommand::Restock {
        product_id: widget,
        quantity: 5,
    };
    there.product(&ctx(), widget, restock).await.unwrap();
    // A refusal ("out of stock") on the cached state would be wrong.
    here.place_order(&ctx(), place(buyer, &[(widget, 3)]))
        .await
        .expect("the restock made by the other process is seen");

    // `there` remembers 5 available, 2 are: its commit on the stale version must not go through.
    there
        .place_order(&ctx(), place(buyer, &[(widget, 2)]))
        .await
        .expect("decided again on the current stock");
    let err = here
        .place_order(&ctx(), place(buyer, &[(widget, 1)]))
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Rejected(_)), "sold out: {err:?}");
    for h in [&here, &there] {
        let p = h.load::<Product>(widget, None).await.unwrap().state;
        assert_eq!((p.available, p.reserved()), (0, 6), "{p:?}");
    }

    // The customer is only read by an order: renamed elsewhere, the next order has the new name.
    let rename = CustomerCommand::Rename {
        customer_id: buyer,
        name: "Ada Lovelace".into(),
    };
    here.product(
        &ctx(),
        widget,
        ProductCommand::Restock {
            product_id: widget,
            quantity: 1,
        },
    )
    .await
    .unwrap();
    there.customer(&ctx(), buyer, rename).await.unwrap();
    let order = place(buyer, &[(widget, 1)]);
    here.place_order(&ctx(), order.clone()).await.unwrap();
    let placed = here.load::<Order>(order.order_id, None).await.unwrap().state;
    assert_eq!(placed.customer.map(|c| c.name).as_deref(), Some("Ada Lovelace"));

    // Cancelled where the product is cached from before the other process's order: the order's
    // stock is released all the same (the cached product holds no reservation for it).
    let gadget = product(&here, 10).await;
    let elsewhere = place(buyer, &[(gadget, 4)]);
    there.place_order(&ctx(), elsewhere.clone()).await.unwrap();
    here.load::<Order>(elsewhere.order_id, None).await.unwrap();
    let cancel = CancelOrder {
        order_id: elsewhere.order_id,
        reason: "changed my mind".into(),
    };
    here.cancel_order(&ctx(), cancel).await.unwrap();
    let g = there.load::<Product>(gadget, None).await.unwrap().state;
    assert_eq!((g.available, g.reserved()), (10, 0), "{g:?}");

    // Registered by the other process, unknown to this one's cache: refused as existing, not
    // answered as a conflict after retries on "new stream".
    let twin = CustomerCommand::Register {
        customer_id: buyer,
        name: "Ada".into(),
        email: "ada@example.com".into(),
    };
    let fresh = CommandHandler::new(store.clone(), HandlerOptions::default());
    let err = fresh.customer(&ctx(), buyer, twin).await.unwrap_err();
    assert!(
        matches!(err, CommandError::Rejected(DomainError::AlreadyExists { .. })),
        "{err:?}"
    );

    // An order id the other process already placed: not a second OrderPlaced.
    let head = store.head_position().await.unwrap();
    let err = there.place_order(&ctx(), order).await.unwrap_err();
    assert!(matches!(err, CommandError::Rejected(_)), "already placed: {err:?}");
    assert_eq!(store.head_position().await.unwrap(), head, "nothing appended");
}

/// A little shop's history: orders placed, confirmed, shipped, cancelled; restocks; renames.
async fn workload(h: &CommandHandler) -> (Vec<Uuid>, Vec<Uuid>, Vec<Uuid>) {
    let customers = vec![customer(h).await, customer(h).await];
    let products = vec![product(h, 50).await, product(h, 50).await];
    let mut orders = Vec::new();
    for i in 0..12 {
        let cmd = place(customers[i % 2], &[(products[0], 1 + (i as i64 % 3)), (products[1], 1)]);
        orders.push(cmd.order_id);
        h.place_order(&ctx(), cmd).await.unwrap();
        if i % 3 == 0 {
            h.order(&ctx(), orders[i], OrderCommand::Confirm { order_id: orders[i] })
                .await
                .unwrap();
        }
        if i % 4 == 1 {
            let cancel = CancelOrder {
                order_id: orders[i],
                reason: "changed mind".into(),
            };
            h.cancel_order(&ctx(), cancel).await.unwrap();
        }
        if i % 5 == 2 {
            let c = ProductCommand::Restock {
                product_id: products[1],
                quantity: 3,
            };
            h.product(&ctx(), products[1], c).await.unwrap();
            let c = CustomerCommand::Rename {
                customer_id: customers[0],
                name: format!("Ada {i}"),
            };
            h.customer(&ctx(), customers[0], c).await.unwrap();
        }
    }
    let ship = OrderCommand::Ship {
        order_id: orders[0],
        carrier: "DHL".into(),
        tracking: "JD014600".into(),
    };
    h.order(&ctx(), orders[0], ship).await.unwrap();
    (customers, products, orders)
}

/// Every aggregate loaded now and at every position of the log.
async fn all_states(h: &CommandHandler, ids: &(Vec<Uuid>, Vec<Uuid>, Vec<Uuid>), head: u64) -> Vec<String> {
    let mut out = Vec::new();
    for until in std::iter::once(None).chain((1..=head).map(|p| Some(Until::Position(p)))) {
        for &id in &ids.0 {
            out.push(format!("{:?}", h.load::<Customer>(id, until).await.unwrap().state));
        }
        for &id in &ids.1 {
            out.push(format!("{:?}", h.load::<Product>(id, until).await.unwrap().state));
        }
        for &id in &ids.2 {
            let o = h.load::<Order>(id, until).await.unwrap();
            out.push(format!("{:?} v{} p{}", o.state, o.version, o.position));
        }
    }
    out
}

async fn snapshots_never_change_an_answer(store: Arc<dyn EventStore>) {
    let h = CommandHandler::new(
        store.clone(),
        HandlerOptions {
            snapshot_every: 2,
            ..HandlerOptions::default()
        },
    );
    let ids = workload(&h).await;
    let product_stream = Category::Product.stream_id(ids.1[0]);
    assert!(
        store.load_snapshot(&product_stream, None).await.unwrap().is_some(),
        "the workload took snapshots"
    );
    let head = store.head_position().await.unwrap();
    let with = all_states(&h, &ids, head).await;
    let deleted = store.delete_snapshots(None).await.unwrap();
    assert!(deleted > 10, "{deleted} snapshots");
    let without = all_states(&h, &ids, head).await;
    assert_eq!(with, without);
}

/// Invariant 7 (write side): the handler's "as of" (snapshot + events) equals folding the
/// stream's raw events up to that point.
async fn state_as_of_equals_the_fold_of_the_events_up_to_it(store: Arc<dyn EventStore>) {
    let h = CommandHandler::new(
        store.clone(),
        HandlerOptions {
            snapshot_every: 3,
            ..HandlerOptions::default()
        },
    );
    let ids = workload(&h).await;
    let order_id = ids.2[0];
    let events = store
        .read_stream(&Category::Order.stream_id(order_id), 1, 1000)
        .await
        .unwrap();
    assert!(events.len() >= 3);
    let head = store.head_position().await.unwrap();
    for p in 0..=head {
        let expected = Order::fold(
            events
                .iter()
                .filter(|e| e.position <= p)
                .map(|e| {
                    Order::event_from(event_schemas::decode(&e.event_type, e.schema_version, &e.payload).unwrap())
                        .unwrap()
                })
                .collect::<Vec<_>>()
                .iter(),
        );
        let loaded = h.load::<Order>(order_id, Some(Until::Position(p))).await.unwrap();
        assert_eq!(loaded.state, expected, "as of position {p}");
    }
    for e in &events {
        let at_time = h
            .load::<Order>(order_id, Some(Until::RecordedAt(e.recorded_at)))
            .await
            .unwrap();
        assert!(
            at_time.version >= e.stream_version,
            "as of {} includes version {}",
            e.recorded_at,
            e.stream_version
        );
    }
    let shipped = h.load::<Order>(order_id, None).await.unwrap();
    assert_eq!(shipped.state.status, OrderStatus::Shipped);
    assert_eq!(<Order as Snapshottable>::STATE_VERSION, 1);
}
