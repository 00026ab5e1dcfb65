//! A live shop (`serve --rate`): commands at a steady rate through the real services
//! ([`Local`]: the command handlers, and the orders service's flows), so every business rule
//! applies. Placing an order only starts its place-order saga (ADR 0010): the saga driver
//! ([`Local::run_sagas`]) must run beside the trickle, and reserves the stock, authorizes the
//! payment at the simulated payment provider (whose decline rate makes the declined share) and
//! confirms the order, or cancels it with a reason code.
//!
//! Each tick takes one step of the shop, whose commands share one correlation id, as one flow's
//! would: a restock (5%); a new order for existing customers and products (35%, or always when
//! no order is open); otherwise the next step of an open order, as it stands now: shipped when
//! confirmed (its saga captures the payment), delivered when shipped, or cancelled by the
//! customer (10% of the steps of a pending order, 5% of a confirmed one; reason code
//! `requested`: its saga voids the authorization and releases the stock). A pending order is
//! otherwise left to its saga, and an order its saga cancelled is forgotten.
//!
//! The trickle never touches a payment: authorizing, capturing and voiding are the saga's. It
//! makes no refund either: the saga refunds only to compensate, and a delivered order has
//! nothing to compensate.
//!
//! A rejection (an order someone else moved) is part of the show: counted and logged at debug,
//! never fatal.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::Utc;
use event_schemas::{Category, Currency, DomainEvent, ProductEvent, Service};
use event_store::{EventMetadata, StoreError};
use projections::ServiceLog;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use write_side::domain::saga::ReasonCode;
use write_side::domain::{CancelOrder, Order, OrderCommand, OrderStatus, PlaceOrder, PlaceOrderLine, ProductCommand};
use write_side::orders::OrdersError;
use write_side::{CommandAnswer, CommandContext, CommandError, Local};

use crate::Rng;
use crate::seed::{CANCEL_REASONS, shipping_label};

/// Events per page when the trickle reads the log for the shop's ids.
const LOG_PAGE: usize = 5_000;
/// Share of steps that restock a product, and that place an order.
const RESTOCK_STEP: f64 = 0.05;
const PLACE_STEP: f64 = 0.35;
/// Share of the steps of a pending order, and of a confirmed one, that cancel it.
const CANCEL_PENDING: f64 = 0.10;
const CANCEL_CONFIRMED: f64 = 0.05;

/// The ids the trickle works with, read from the services' logs.
#[derive(Debug, Default)]
struct ShopIds {
    customers: Vec<Uuid>,
    products: Vec<Uuid>,
    currency: HashMap<Uuid, Currency>,
    /// Products by currency: an order's lines share one currency.
    by_currency: HashMap<Currency, Vec<Uuid>>,
    /// Orders neither delivered nor cancelled, as far as the trickle knows.
    open: Vec<Uuid>,
}

impl ShopIds {
    /// Reads every service's log once: every customer and product, and the orders still open.
    async fn read(logs: &[ServiceLog]) -> Result<ShopIds, StoreError> {
        let mut shop = ShopIds::default();
        // Sorted: a seed of the generator means one thing.
        let mut open = BTreeSet::new();
        for log in logs {
            shop.read_log(log, &mut open).await?;
        }
        shop.open = open.into_iter().collect();
        Ok(shop)
    }

    /// Only a product's addition is decoded (for its currency); the other ids are in the
    /// stream ids.
    async fn read_log(&mut self, log: &ServiceLog, open: &mut BTreeSet<Uuid>) -> Result<(), StoreError> {
        let mut after = 0;
        loop {
            let page = log.store.read_all(after, LOG_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            for recorded in &page {
                let Ok((category, id)) = event_schemas::parse_stream_id(&recorded.stream_id) else {
                    continue;
                };
                match (category, recorded.event_type.as_str()) {
                    (Category::Customer, "customer.registered") => self.customers.push(id),
                    (Category::Order, "order.placed") => {
                        open.insert(id);
                    }
                    (Category::Order, "order.delivered" | "order.cancelled") => {
                        open.remove(&id);
                    }
                    (Category::Product, "product.added") => {
                        match event_schemas::decode(&recorded.event_type, recorded.schema_version, &recorded.payload) {
                            Ok(DomainEvent::Product(ProductEvent::Added(e))) => {
                                self.products.push(e.product_id);
                                self.currency.insert(e.product_id, e.price.currency);
                                self.by_currency.entry(e.price.currency).or_default().push(e.product_id);
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::debug!(position = recorded.position, error = %e, "demo: skipping an undecodable event");
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// A new order of 1 to 3 lines in one currency, 1 to 3 units each.
    fn new_order(&self, rng: &mut Rng) -> Option<PlaceOrder> {
        let customer_id = *rng.pick(&self.customers);
        let first = *rng.pick(&self.products);
        let group = self.currency.get(&first).and_then(|c| self.by_currency.get(c))?;
        let mut lines = vec![PlaceOrderLine {
            product_id: first,
            quantity: rng.range(1, 3),
        }];
        for _ in 1..rng.range(1, 3) {
            let product_id = *rng.pick(group);
            if lines.iter().all(|l| l.product_id != product_id) {
                lines.push(PlaceOrderLine {
                    product_id,
                    quantity: rng.range(1, 3),
                });
            }
        }
        Some(PlaceOrder {
            order_id: Uuid::now_v7(),
            customer_id,
            lines,
        })
    }
}

/// What the trickle did, for its log lines.
#[derive(Debug, Default)]
struct Counts {
    accepted: u64,
    rejected: u64,
    conflicts: u64,
    failed: u64,
}

impl Counts {
    /// Counts an outcome; `true` when the command was accepted.
    fn record(&mut self, what: &'static str, outcome: Result<CommandAnswer, OrdersError>) -> bool {
        match outcome {
            Ok(_) => {
                self.accepted += 1;
                return true;
            }
            Err(OrdersError::Rejected(e) | OrdersError::Command(CommandError::Rejected(e))) => {
                self.rejected += 1;
                tracing::debug!(command = what, rejected = self.rejected, reason = %e, "demo command rejected");
            }
            Err(OrdersError::Dependency(e)) if e.outcome() == "rejected" => {
                self.rejected += 1;
                tracing::debug!(command = what, rejected = self.rejected, reason = %e, "demo command rejected");
            }
            Err(OrdersError::Command(CommandError::Conflict { .. })) => {
                self.conflicts += 1;
                tracing::debug!(
                    command = what,
                    conflicts = self.conflicts,
                    "demo command lost a version race"
                );
            }
            Err(e) => {
                self.failed += 1;
                tracing::warn!(command = what, error = %e, "demo command failed");
            }
        }
        false
    }
}

/// Keeps a live shop going at `rate` commands per second until `cancel`; see the module doc
/// (the saga driver of `local` must run meanwhile).
pub async fn trickle(local: Local, rate: f64, cancel: CancellationToken) {
    let logs = local.logs();
    let shop = tokio::select! {
        shop = ShopIds::read(&logs) => shop,
        () = cancel.cancelled() => return,
    };
    let mut shop = match shop {
        Ok(shop) => shop,
        Err(e) => {
            tracing::error!(error = %e, "demo: cannot read the shop from the log; no live trickle");
            return;
        }
    };
    if shop.customers.is_empty() || shop.products.is_empty() {
        tracing::warn!("demo: the store has no customers or no products; no live trickle (try --demo)");
        return;
    }
    tracing::info!(
        rate,
        customers = shop.customers.len(),
        products = shop.products.len(),
        open_orders = shop.open.len(),
        "demo: a live trickle of commands is running"
    );
    let seed = u64::try_from(Utc::now().timestamp_nanos_opt().unwrap_or(0)).unwrap_or(0);
    let mut rng = Rng::new(seed);
    let mut counts = Counts::default();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        step(&local, &mut shop, &mut rng, &mut counts).await;
    }
    tracing::info!(
        accepted = counts.accepted,
        rejected = counts.rejected,
        conflicts = counts.conflicts,
        failed = counts.failed,
        "demo: live trickle stopped"
    );
}

/// One step of the shop (see the module doc); its commands share `context()`'s correlation.
async fn step(local: &Local, shop: &mut ShopIds, rng: &mut Rng, counts: &mut Counts) {
    let ctx = context();
    if rng.chance(RESTOCK_STEP) {
        let product_id = *rng.pick(&shop.products);
        let quantity = rng.range(20, 200);
        let restocked = local
            .handler(Service::Inventory)
            .product(&ctx, product_id, ProductCommand::Restock { product_id, quantity })
            .await;
        counts.record("restock", restocked.map_err(OrdersError::from));
        return;
    }
    if shop.open.is_empty() || rng.chance(PLACE_STEP) {
        let Some(order) = shop.new_order(rng) else {
            return;
        };
        let order_id = order.order_id;
        // Pending until its saga confirms or cancels it.
        if counts.record("place", local.place_order(&ctx, order).await) {
            shop.open.push(order_id);
        }
        return;
    }
    let index = rng.below(shop.open.len());
    let order_id = shop.open[index];
    let status = match local.handler(Service::Orders).load::<Order>(order_id, None).await {
        Ok(loaded) => loaded.state.status,
        Err(e) => {
            counts.record("read an order", Err(e.into()));
            return;
        }
    };
    let orders = local.orders();
    let (what, outcome, still_open) = match status {
        OrderStatus::Pending if rng.chance(CANCEL_PENDING) => {
            ("cancel", cancel(local, &ctx, order_id, rng).await, false)
        }
        // Its saga is at work.
        OrderStatus::Pending => return,
        OrderStatus::Confirmed if rng.chance(CANCEL_CONFIRMED) => {
            ("cancel", cancel(local, &ctx, order_id, rng).await, false)
        }
        OrderStatus::Confirmed => {
            let (carrier, tracking) = shipping_label(rng);
            let ship = OrderCommand::Ship {
                order_id,
                carrier,
                tracking,
            };
            ("ship", orders.change(&ctx, order_id, ship).await, true)
        }
        OrderStatus::Shipped => {
            let deliver = OrderCommand::Deliver { order_id };
            ("deliver", orders.change(&ctx, order_id, deliver).await, false)
        }
        // Delivered, or cancelled (by its saga, or over HTTP): nothing more to do.
        OrderStatus::Delivered | OrderStatus::Cancelled | OrderStatus::NotPlaced => {
            shop.open.swap_remove(index);
            return;
        }
    };
    // A rejected step means the order moved meanwhile (its saga cancelled it, someone moved it
    // over HTTP): forget it rather than retry it forever.
    if !(counts.record(what, outcome) && still_open) {
        shop.open.swap_remove(index);
    }
}

/// The customer cancels order `order_id` (reason code `requested`); its saga compensates.
async fn cancel(
    local: &Local,
    ctx: &CommandContext,
    order_id: Uuid,
    rng: &mut Rng,
) -> Result<CommandAnswer, OrdersError> {
    let reason = *rng.pick(CANCEL_REASONS);
    local
        .cancel_order(
            ctx,
            CancelOrder {
                order_id,
                reason: reason.to_owned(),
                reason_code: Some(ReasonCode::Requested.as_str().to_owned()),
            },
        )
        .await
}

/// The metadata of one trickle command: its own correlation, the demo as its actor.
fn context() -> CommandContext {
    let id = Uuid::now_v7().to_string();
    CommandContext {
        metadata: EventMetadata {
            correlation_id: id.clone(),
            causation_id: id,
            actor: "orderflow-demo".to_owned(),
        },
        ..CommandContext::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::Instant;

    use event_schemas::{Money, OrderEvent, PaymentEvent};
    use event_store::{EventStore, Position};
    use projections::ReadDb;
    use write_side::LocalOptions;
    use write_side::domain::saga::{Next, OrderView, Saga};
    use write_side::domain::{Aggregate, Payment, PaymentStatus, Product};
    use write_side::gateway::GatewaySettings;
    use write_side::orders::SagaOptions;
    use write_side::orders::saga::{self, DriverOptions};

    use super::*;
    use crate::seed::tests::{TempStore, payment_command};
    use crate::seed::{SeedOptions, seed};

    /// The orders store folded: each order, its total, and its saga.
    #[derive(Debug, Default)]
    struct OrdersFold {
        orders: HashMap<Uuid, Order>,
        totals: HashMap<Uuid, Money>,
        sagas: HashMap<Uuid, Saga>,
    }

    impl OrdersFold {
        async fn read(store: &TempStore) -> Self {
            let mut fold = OrdersFold::default();
            for e in store.everything().await {
                match event_schemas::decode(&e.event_type, e.schema_version, &e.payload).expect("decodes") {
                    DomainEvent::Order(event) => {
                        if let OrderEvent::Placed(p) = &event {
                            fold.totals.insert(p.order_id, p.total());
                        }
                        let order = fold.orders.entry(event.order_id()).or_default();
                        *order = std::mem::take(order).evolve(&event);
                    }
                    DomainEvent::Saga(event) => {
                        let saga = fold.sagas.entry(event.order_id()).or_default();
                        *saga = std::mem::take(saga).evolve(&event);
                    }
                    other => panic!("{} in the orders store", other.stream_id()),
                }
            }
            fold
        }

        /// The sagas that still have work to do now (a parked one has none: it waits for an
        /// operator).
        fn busy(&self) -> Vec<Uuid> {
            let now = Utc::now();
            self.sagas
                .iter()
                .filter(|(order_id, saga)| {
                    let order = &self.orders[*order_id];
                    let view = OrderView {
                        status: order.status,
                        cancellation_reason: order.cancellation_reason.clone(),
                    };
                    saga.next(&view, now) != Next::Wait
                })
                .map(|(order_id, _)| *order_id)
                .collect()
        }
    }

    /// A seeded shop in four stores, the saga driver running, then the trickle's steps through
    /// [`Local`]: the trickle only places, ships, delivers and cancels, and the sagas pay (the
    /// simulated provider declining 5%), capture, void and release, leaving every payment and
    /// every unit of stock where its order says.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_trickle_pays_for_its_orders() {
        let temps = [
            TempStore::new().await,
            TempStore::new().await,
            TempStore::new().await,
            TempStore::new().await,
        ];
        let stores: Vec<(Service, Arc<dyn EventStore>)> = Service::ALL
            .into_iter()
            .zip(&temps)
            .map(|(service, temp)| (service, Arc::new(temp.store.clone()) as Arc<dyn EventStore>))
            .collect();
        let logs: Vec<ServiceLog> = stores
            .iter()
            .map(|(s, store)| ServiceLog::new(*s, Arc::clone(store)))
            .collect();
        let options = SeedOptions {
            events: 2_500,
            days: 6,
            customers: 80,
            products: 25,
            batch_events: 500,
            ..SeedOptions::default()
        };
        seed(&logs, &options, |_| {}).await.expect("seed");
        let replica_path = std::env::temp_dir().join(format!("orderflow-live-replica-{}.db", Uuid::new_v4().simple()));
        let replica = ReadDb::connect(&format!("sqlite://{}", replica_path.display()), 2)
            .await
            .expect("replica");
        let local = Local::with_options(
            stores,
            replica,
            LocalOptions {
                gateway: GatewaySettings {
                    decline_rate: 0.05,
                    ..GatewaySettings::default()
                },
                saga: SagaOptions {
                    driver: DriverOptions {
                        retry_base: Duration::from_millis(10),
                        retry_max: Duration::from_millis(200),
                        ..DriverOptions::default()
                    },
                    ..SagaOptions::default()
                },
                ..LocalOptions::default()
            },
        )
        .await
        .expect("local");
        let stop = CancellationToken::new();
        let driver = tokio::spawn({
            let (local, stop) = (local.clone(), stop.clone());
            async move { local.run_sagas(stop).await }
        });
        let replica_runner = tokio::spawn({
            let (local, stop) = (local.clone(), stop.clone());
            async move { local.run_replica(stop).await }
        });
        let head = |temp: &TempStore| {
            let store = temp.store.clone();
            async move { store.head_position().await.expect("head") }
        };
        let (orders_head, payments_head): (Position, Position) = (head(&temps[2]).await, head(&temps[3]).await);

        let mut shop = ShopIds::read(&local.logs()).await.expect("read the shop");
        assert!(!shop.open.is_empty());
        let (mut rng, mut counts) = (Rng::new(3), Counts::default());
        for _ in 0..1_000 {
            step(&local, &mut shop, &mut rng, &mut counts).await;
        }
        assert_eq!(counts.failed, 0, "{counts:?}");
        assert!(counts.accepted > 600, "{counts:?}");

        // Every saga settles: waiting for its order's shipment, or completed.
        let settle_by = Instant::now() + Duration::from_secs(60);
        let fold = loop {
            let fold = OrdersFold::read(&temps[2]).await;
            let busy = fold.busy();
            if busy.is_empty() {
                break fold;
            }
            assert!(
                Instant::now() < settle_by,
                "{} sagas still have work after 60 s: {:?}",
                busy.len(),
                &busy[..busy.len().min(5)]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        stop.cancel();
        driver.await.expect("the saga driver");
        replica_runner
            .await
            .expect("the replica's runner")
            .expect("the replica");

        // Every order has its saga, none parked, none pending; each ends as its order does.
        let mut live_codes: HashMap<String, usize> = HashMap::new();
        let live_orders: HashSet<Uuid> = temps[2]
            .everything()
            .await
            .into_iter()
            .filter(|e| e.position > orders_head && e.event_type == "order.placed")
            .filter_map(|e| event_schemas::parse_stream_id(&e.stream_id).ok().map(|(_, id)| id))
            .collect();
        assert!(live_orders.len() > 200, "{} orders placed", live_orders.len());
        for (order_id, order) in &fold.orders {
            let saga = fold.sagas.get(order_id).expect("every order has its saga");
            assert!(saga.parked.is_none(), "saga of order {order_id} parked: {saga:?}");
            assert_eq!(saga.payment_id, saga::payment_id(*order_id));
            match order.status {
                OrderStatus::Confirmed => assert!(saga.confirmed && saga.outcome.is_none(), "{saga:?}"),
                OrderStatus::Shipped | OrderStatus::Delivered => {
                    assert_eq!(saga.outcome.as_deref(), Some("captured"), "{saga:?}");
                }
                OrderStatus::Cancelled => {
                    assert_eq!(saga.outcome.as_deref(), Some("cancelled"), "{saga:?}");
                    let code = order.cancellation_reason_code.clone().expect("a reason code");
                    let failure = saga.failure.as_ref().map(|f| f.reason_code.as_str());
                    // The order's reason is that of the command that cancelled it. The trickle
                    // cancels orders while their sagas run: a client's cancel can land between
                    // the saga's own failure (a declined payment) and the saga's cancel, which
                    // then finds the order cancelled already. The order says `requested`, the
                    // saga why it failed; any other difference is a bug.
                    assert!(
                        Some(code.as_str()) == failure || (code == "requested" && failure.is_some()),
                        "order {order_id} cancelled `{code}`, its saga failed {failure:?}: {saga:?}"
                    );
                    if live_orders.contains(order_id) {
                        *live_codes.entry(code).or_default() += 1;
                    }
                }
                other => panic!("order {order_id} is {other} once every saga settled"),
            }
        }
        assert!(
            live_codes
                .keys()
                .all(|code| ["requested", "payment_declined", "out_of_stock"].contains(&code.as_str())),
            "{live_codes:?}"
        );
        assert!(
            live_codes.get("requested").is_some_and(|n| *n > 0)
                && live_codes.get("payment_declined").is_some_and(|n| *n > 0),
            "{live_codes:?}"
        );

        // Every payment replays through the domain's decisions, is its order's saga's, and
        // follows its order.
        let mut payments: HashMap<Uuid, Payment> = HashMap::new();
        let mut payment_of: HashMap<Uuid, Uuid> = HashMap::new();
        let mut live: HashMap<&'static str, usize> = HashMap::new();
        for recorded in temps[3].everything().await {
            let DomainEvent::Payment(e) =
                event_schemas::decode(&recorded.event_type, recorded.schema_version, &recorded.payload)
                    .expect("decodes")
            else {
                panic!("{} in the payments store", recorded.stream_id);
            };
            let state = payments.entry(e.payment_id()).or_default();
            assert_eq!(state.decide(payment_command(&e)), Ok(vec![e.clone()]));
            *state = std::mem::take(state).evolve(&e);
            assert_eq!(e.payment_id(), saga::payment_id(e.order_id()), "the saga's payment");
            let old = payment_of.insert(e.order_id(), e.payment_id());
            assert!(
                old.is_none_or(|old| old == e.payment_id()),
                "two payments for one order"
            );
            if let PaymentEvent::Authorized(a) = &e {
                assert_eq!(
                    Some(&a.amount),
                    fold.totals.get(&a.order_id),
                    "authorized the order's total"
                );
            }
            if recorded.position > payments_head {
                *live.entry(e.event_type()).or_default() += 1;
            }
        }
        for (order_id, order) in &fold.orders {
            let payment = payment_of.get(order_id).map(|p| &payments[p]);
            match order.status {
                OrderStatus::Cancelled => {
                    let status = payment.map(|p| p.status);
                    assert!(
                        matches!(status, None | Some(PaymentStatus::Voided | PaymentStatus::Declined)),
                        "cancelled order {order_id}: payment {status:?}"
                    );
                }
                OrderStatus::Shipped | OrderStatus::Delivered => {
                    let payment = payment.expect("a shipped order is paid");
                    assert!(matches!(
                        payment.status,
                        PaymentStatus::Captured | PaymentStatus::Refunded
                    ));
                    assert_eq!(
                        Some(payment.captured_minor),
                        fold.totals.get(order_id).map(|t| t.amount_minor),
                        "order {order_id}: captured in full"
                    );
                }
                OrderStatus::Confirmed => {
                    assert_eq!(
                        payment.map(|p| p.status),
                        Some(PaymentStatus::Authorized),
                        "order {order_id}"
                    );
                }
                _ => {}
            }
        }
        eprintln!("{counts:?}; the sagas' payment events: {live:?}; live cancellations: {live_codes:?}");
        for kind in [
            "payment.authorized",
            "payment.declined",
            "payment.captured",
            "payment.voided",
        ] {
            assert!(
                live.get(kind).is_some_and(|n| *n > 0),
                "no {kind} from the live shop: {live:?}"
            );
        }
        assert_eq!(live.get("payment.refunded"), None, "the live shop refunds nothing");

        // No stock leaked: only orders confirmed or beyond hold stock, every line of theirs.
        let mut products: HashMap<Uuid, Product> = HashMap::new();
        for e in temps[1].everything().await {
            if let DomainEvent::Product(event) =
                event_schemas::decode(&e.event_type, e.schema_version, &e.payload).expect("decodes")
            {
                let product = products.entry(event.product_id()).or_default();
                *product = std::mem::take(product).evolve(&event);
            }
        }
        for (product_id, product) in &products {
            assert!(product.available >= 0);
            for (order_id, held) in &product.reservations {
                let order = &fold.orders[order_id];
                assert!(
                    matches!(
                        order.status,
                        OrderStatus::Confirmed | OrderStatus::Shipped | OrderStatus::Delivered
                    ),
                    "order {order_id}, {}, holds stock of product {product_id}",
                    order.status
                );
                let line = order.lines.iter().find(|l| l.product_id == *product_id);
                assert_eq!(line.map(|l| l.quantity), Some(*held));
            }
        }
        for (order_id, order) in &fold.orders {
            if matches!(
                order.status,
                OrderStatus::Confirmed | OrderStatus::Shipped | OrderStatus::Delivered
            ) {
                for line in &order.lines {
                    let held = products[&line.product_id].reservations.get(order_id);
                    assert_eq!(held, Some(&line.quantity), "order {order_id}: a line not reserved");
                }
            }
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut p = replica_path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}
