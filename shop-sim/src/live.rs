//! A live shop (`serve --rate`): commands at a steady rate through the real services
//! ([`Local`]: the command handlers, and the orders service's flows that reserve and release
//! stock at the inventory service), so every business rule applies.
//!
//! Each tick takes one step of the shop, whose commands share one correlation id, as one flow's
//! would: a restock (5%); a refund (1%, when an order the trickle delivered is left to refund:
//! 60% in full, otherwise 10 to 50% of what is left); a new order for existing customers and
//! products (35%, or always when no order is open), paid at once through the payments service,
//! as in the seeded history ([`crate::seed`]): authorized for the order's total, or, for 3%,
//! declined and the order cancelled with the reason `payment declined: …` (its stock released);
//! otherwise the next step of an open order: its payment authorized if it has none yet,
//! confirmed, shipped with its payment captured in full, delivered, or cancelled (10% of the
//! steps of a placed order, 5% of a confirmed one) with its authorization voided.
//!
//! A rejection (out of stock, an order someone else moved) is part of the show: counted and
//! logged at debug, never fatal.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use chrono::Utc;
use event_schemas::Service;
use event_schemas::{Currency, CustomerEvent, DomainEvent, OrderEvent, PaymentEvent, ProductEvent};
use event_store::{EventMetadata, StoreError};
use projections::ServiceLog;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use write_side::domain::saga::ReasonCode;
use write_side::domain::{
    CancelOrder, Order, OrderCommand, Payment, PaymentCommand, PaymentStatus, PlaceOrder, PlaceOrderLine,
    ProductCommand,
};
use write_side::orders::OrdersError;
use write_side::{CommandContext, CommandError, Local};

use crate::Rng;
use crate::seed::{CANCEL_REASONS, DECLINE_REASONS, shipping_label};

/// Events per page when the trickle reads the log for the shop's ids.
const LOG_PAGE: usize = 5_000;
/// Share of steps that restock a product, and that refund a delivered order.
const RESTOCK_STEP: f64 = 0.05;
const REFUND_STEP: f64 = 0.01;
/// Share of payments declined, and of refunds made in full.
const DECLINE: f64 = 0.03;
const REFUND_FULL: f64 = 0.6;
/// Delivered orders kept as candidates for a refund (the most recent).
const REFUNDABLE: usize = 1_000;

/// Where an open order stands, as far as the trickle knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Placed,
    Confirmed,
    Shipped,
}

/// An order neither delivered nor cancelled, as far as the trickle knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Open {
    order_id: Uuid,
    stage: Stage,
    /// Its payment, once authorized.
    payment_id: Option<Uuid>,
}

/// A delivered order whose captured payment could be refunded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refundable {
    order_id: Uuid,
    payment_id: Uuid,
}

/// The ids the trickle works with, read from the global log.
#[derive(Debug, Default)]
struct ShopIds {
    customers: Vec<Uuid>,
    products: Vec<Uuid>,
    currency: HashMap<Uuid, Currency>,
    /// Products by currency: an order's lines share one currency.
    by_currency: HashMap<Currency, Vec<Uuid>>,
    /// Orders neither delivered nor cancelled.
    open: Vec<Open>,
    /// The most recently delivered orders with a captured payment not refunded in full.
    refundable: VecDeque<Refundable>,
}

/// What the logs say of the orders and their payments, while reading them.
#[derive(Debug, Default)]
struct Reading {
    /// Orders not delivered nor cancelled.
    open: HashMap<Uuid, Stage>,
    delivered: HashSet<Uuid>,
    /// Each order's payment, once authorized.
    authorized: HashMap<Uuid, Uuid>,
    /// Payments captured and not refunded in full, by order, with what is left to refund.
    captured: HashMap<Uuid, (Uuid, i64)>,
}

impl ShopIds {
    /// Reads every service's log once: every customer and product, the orders still open (with
    /// their payments), and the delivered orders that could be refunded.
    async fn read(logs: &[ServiceLog]) -> Result<ShopIds, StoreError> {
        let mut shop = ShopIds::default();
        let mut reading = Reading::default();
        for log in logs {
            shop.read_log(log, &mut reading).await?;
        }
        shop.open = reading
            .open
            .iter()
            .map(|(&order_id, &stage)| Open {
                order_id,
                stage,
                payment_id: reading.authorized.get(&order_id).copied(),
            })
            .collect();
        // The map's order is random: sort so that a seed of the generator means one thing.
        shop.open.sort_unstable_by_key(|open| open.order_id);
        let mut refundable: Vec<Refundable> = reading
            .captured
            .iter()
            .filter(|(order_id, _)| reading.delivered.contains(order_id))
            .map(|(&order_id, &(payment_id, _))| Refundable { order_id, payment_id })
            .collect();
        // Version 7 ids sort by time: keep the most recent.
        refundable.sort_unstable_by_key(|r| r.order_id);
        let skip = refundable.len().saturating_sub(REFUNDABLE);
        shop.refundable = refundable.into_iter().skip(skip).collect();
        Ok(shop)
    }

    async fn read_log(&mut self, log: &ServiceLog, reading: &mut Reading) -> Result<(), StoreError> {
        let shop = self;
        let orders = &mut reading.open;
        let mut after = 0;
        loop {
            let page = log.store.read_all(after, LOG_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            for recorded in &page {
                let event = match event_schemas::decode(
                    &recorded.event_type,
                    recorded.schema_version,
                    &recorded.payload,
                ) {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::debug!(position = recorded.position, error = %e, "demo: skipping an undecodable event");
                        continue;
                    }
                };
                match event {
                    DomainEvent::Customer(CustomerEvent::Registered(e)) => shop.customers.push(e.customer_id),
                    DomainEvent::Product(ProductEvent::Added(e)) => {
                        shop.products.push(e.product_id);
                        shop.currency.insert(e.product_id, e.price.currency);
                        shop.by_currency.entry(e.price.currency).or_default().push(e.product_id);
                    }
                    DomainEvent::Order(OrderEvent::Placed(e)) => {
                        orders.insert(e.order_id, Stage::Placed);
                    }
                    DomainEvent::Order(OrderEvent::Confirmed(e)) => {
                        orders.insert(e.order_id, Stage::Confirmed);
                    }
                    DomainEvent::Order(OrderEvent::Shipped(e)) => {
                        orders.insert(e.order_id, Stage::Shipped);
                    }
                    DomainEvent::Order(OrderEvent::Delivered(e)) => {
                        orders.remove(&e.order_id);
                        reading.delivered.insert(e.order_id);
                    }
                    DomainEvent::Order(OrderEvent::Cancelled(e)) => {
                        orders.remove(&e.order_id);
                    }
                    DomainEvent::Payment(PaymentEvent::Authorized(e)) => {
                        reading.authorized.insert(e.order_id, e.payment_id);
                    }
                    DomainEvent::Payment(PaymentEvent::Captured(e)) => {
                        reading
                            .captured
                            .insert(e.order_id, (e.payment_id, e.amount.amount_minor));
                    }
                    DomainEvent::Payment(PaymentEvent::Voided(e)) => {
                        reading.authorized.remove(&e.order_id);
                    }
                    DomainEvent::Payment(PaymentEvent::Refunded(e)) => {
                        if let Some((_, left)) = reading.captured.get_mut(&e.order_id) {
                            *left -= e.amount.amount_minor;
                            if *left <= 0 {
                                reading.captured.remove(&e.order_id);
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
    fn record(&mut self, what: &'static str, outcome: Result<write_side::CommandAnswer, OrdersError>) -> bool {
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

/// Keeps a live shop going at `rate` commands per second until `cancel`; see the module doc.
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
    if !shop.refundable.is_empty() && rng.chance(REFUND_STEP) {
        let index = rng.below(shop.refundable.len());
        if let Some(refundable) = shop.refundable.remove(index) {
            refund(local, &ctx, refundable, rng, counts).await;
        }
        return;
    }
    if shop.open.is_empty() || rng.chance(0.35) {
        let Some(order) = shop.new_order(rng) else {
            return;
        };
        let order_id = order.order_id;
        if counts.record("place", local.place_order(&ctx, order).await) {
            let mut open = Open {
                order_id,
                stage: Stage::Placed,
                payment_id: None,
            };
            // The payment, in the placement's flow: if it is declined the order is cancelled.
            if pay(local, &ctx, &mut open, rng, counts).await {
                shop.open.push(open);
            }
        }
        return;
    }
    let index = rng.below(shop.open.len());
    let Some(&open) = shop.open.get(index) else {
        return;
    };
    let order_id = open.order_id;
    let orders = local.handler(Service::Orders);
    let (what, next, outcome) = match open.stage {
        // Not paid yet (the provider's answer was lost, or it was placed while seeding ended).
        Stage::Placed if open.payment_id.is_none() => {
            let mut paid = open;
            if !pay(local, &ctx, &mut paid, rng, counts).await {
                shop.open.swap_remove(index);
            } else if let Some(entry) = shop.open.get_mut(index) {
                *entry = paid;
            }
            return;
        }
        Stage::Placed | Stage::Confirmed if rng.chance(if open.stage == Stage::Placed { 0.10 } else { 0.05 }) => {
            let reason = *rng.pick(CANCEL_REASONS);
            let cancelled = cancel(local, &ctx, open, reason, ReasonCode::Requested, counts).await;
            ("cancel", None, cancelled)
        }
        Stage::Placed => {
            let confirmed = orders.order(&ctx, order_id, OrderCommand::Confirm { order_id }).await;
            ("confirm", Some(Stage::Confirmed), confirmed.map_err(OrdersError::from))
        }
        Stage::Confirmed => {
            let (carrier, tracking) = shipping_label(rng);
            let shipped = orders
                .order(
                    &ctx,
                    order_id,
                    OrderCommand::Ship {
                        order_id,
                        carrier,
                        tracking,
                    },
                )
                .await;
            if shipped.is_ok()
                && let Some(payment_id) = open.payment_id
            {
                capture(local, &ctx, payment_id, counts).await;
            }
            ("ship", Some(Stage::Shipped), shipped.map_err(OrdersError::from))
        }
        Stage::Shipped => {
            let delivered = orders.order(&ctx, order_id, OrderCommand::Deliver { order_id }).await;
            if delivered.is_ok()
                && let Some(payment_id) = open.payment_id
            {
                if shop.refundable.len() >= REFUNDABLE {
                    shop.refundable.pop_front();
                }
                shop.refundable.push_back(Refundable { order_id, payment_id });
            }
            ("deliver", None, delivered.map_err(OrdersError::from))
        }
    };
    // A rejected step means the order is not where the trickle thought (someone moved it over
    // HTTP): forget it rather than retry it forever.
    match (counts.record(what, outcome), next) {
        (true, Some(next)) => shop.open[index].stage = next,
        _ => {
            shop.open.swap_remove(index);
        }
    }
}

/// The payment of order `open`, just placed: authorized for the order's total (its payment id
/// kept in `open`), or declined and the order cancelled. `false` when the order is no longer
/// open (declined and cancelled, or gone); `true` too when the payment could not be asked for
/// (the order could not be read, the provider's answer was refused): the next step on it asks
/// again.
async fn pay(local: &Local, ctx: &CommandContext, open: &mut Open, rng: &mut Rng, counts: &mut Counts) -> bool {
    let order_id = open.order_id;
    let total = match local.handler(Service::Orders).load::<Order>(order_id, None).await {
        Ok(loaded) => loaded.state.total(),
        Err(e) => {
            counts.record("read an order", Err(e.into()));
            return true;
        }
    };
    let Some(total) = total else {
        return false; // not an order: forget it
    };
    let payment_id = Uuid::now_v7();
    let payments = local.handler(Service::Payments);
    if rng.chance(DECLINE) {
        let reason = DECLINE_REASONS[rng.skewed(DECLINE_REASONS.len(), 1.8)];
        let declined = payments
            .payment(
                ctx,
                payment_id,
                PaymentCommand::Decline {
                    payment_id,
                    order_id,
                    reason: reason.to_owned(),
                },
            )
            .await;
        if counts.record("decline", declined.map_err(OrdersError::from)) {
            let reason = format!("payment declined: {reason}");
            let cancelled = cancel(local, ctx, *open, &reason, ReasonCode::PaymentDeclined, counts).await;
            counts.record("cancel", cancelled);
            return false;
        }
        return true;
    }
    let authorized = payments
        .payment(
            ctx,
            payment_id,
            PaymentCommand::Authorize {
                payment_id,
                order_id,
                amount_minor: total.amount_minor,
                currency: total.currency.as_str().to_owned(),
            },
        )
        .await;
    if counts.record("authorize", authorized.map_err(OrdersError::from)) {
        open.payment_id = Some(payment_id);
    }
    true
}

/// Cancels order `open` for `reason` (and `reason_code`) through the orders service's cancel
/// path (its stock released) and, once cancelled, voids its payment's authorization: the
/// cancel's outcome.
async fn cancel(
    local: &Local,
    ctx: &CommandContext,
    open: Open,
    reason: &str,
    reason_code: ReasonCode,
    counts: &mut Counts,
) -> Result<write_side::CommandAnswer, OrdersError> {
    let order_id = open.order_id;
    let cancelled = local
        .cancel_order(
            ctx,
            CancelOrder {
                order_id,
                reason: reason.to_owned(),
                reason_code: Some(reason_code.as_str().to_owned()),
            },
        )
        .await;
    if cancelled.is_ok()
        && let Some(payment_id) = open.payment_id
    {
        let voided = local
            .handler(Service::Payments)
            .payment(
                ctx,
                payment_id,
                PaymentCommand::Void {
                    payment_id,
                    order_id,
                    reason: format!("order cancelled: {reason}"),
                },
            )
            .await;
        counts.record("void", voided.map_err(OrdersError::from));
    }
    cancelled
}

/// Captures the whole authorization of a shipped order's payment.
async fn capture(local: &Local, ctx: &CommandContext, payment_id: Uuid, counts: &mut Counts) {
    let payments = local.handler(Service::Payments);
    let authorized = match payments.load::<Payment>(payment_id, None).await {
        Ok(loaded) if loaded.state.status == PaymentStatus::Authorized => loaded.state.authorized_minor,
        Ok(_) => return, // captured, voided or declined by someone else: nothing to capture
        Err(e) => {
            counts.record("read a payment", Err(e.into()));
            return;
        }
    };
    let captured = payments
        .payment(
            ctx,
            payment_id,
            PaymentCommand::Capture {
                payment_id,
                amount_minor: authorized,
            },
        )
        .await;
    counts.record("capture", captured.map_err(OrdersError::from));
}

/// Refunds a delivered order's payment: in full, or 10 to 50% of what is left.
async fn refund(local: &Local, ctx: &CommandContext, refundable: Refundable, rng: &mut Rng, counts: &mut Counts) {
    let Refundable { payment_id, .. } = refundable;
    let payments = local.handler(Service::Payments);
    let left = match payments.load::<Payment>(payment_id, None).await {
        Ok(loaded) => loaded.state.refundable_minor(),
        Err(e) => {
            counts.record("read a payment", Err(e.into()));
            return;
        }
    };
    if left <= 0 {
        return; // refunded already
    }
    let amount_minor = if rng.chance(REFUND_FULL) {
        left
    } else {
        (left * rng.range(10, 50) / 100).max(1)
    };
    let refunded = payments
        .payment(
            ctx,
            payment_id,
            PaymentCommand::Refund {
                payment_id,
                amount_minor,
            },
        )
        .await;
    counts.record("refund", refunded.map_err(OrdersError::from));
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
    use std::sync::Arc;

    use event_schemas::Money;
    use event_store::{EventStore, Position};
    use projections::ReadDb;
    use write_side::HandlerOptions;
    use write_side::domain::Aggregate;

    use super::*;
    use crate::seed::tests::{TempStore, payment_command};
    use crate::seed::{SeedOptions, seed};

    /// A seeded shop, four stores, then the trickle's steps through [`Local`]: every payment
    /// (the seeder's and the trickle's) is what the domain decides, in the orders' flows.
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
        let local = Local::new(stores, replica, HandlerOptions::default())
            .await
            .expect("local");
        let payments_head: Position = temps[3].everything().await.last().map_or(0, |e| e.position);

        let mut shop = ShopIds::read(&local.logs()).await.expect("read the shop");
        assert!(!shop.open.is_empty() && !shop.refundable.is_empty());
        let (mut rng, mut counts) = (Rng::new(3), Counts::default());
        for _ in 0..1_000 {
            step(&local, &mut shop, &mut rng, &mut counts).await;
        }
        assert_eq!(counts.failed, 0, "{counts:?}");
        assert!(counts.accepted > 1_000, "{counts:?}");

        // Every payment replays through the domain's decisions, and follows its order.
        let mut placed: HashMap<Uuid, Money> = HashMap::new();
        let (mut shipped, mut cancelled) = (Vec::new(), Vec::new());
        for e in temps[2].everything().await {
            match event_schemas::decode(&e.event_type, e.schema_version, &e.payload).expect("decodes") {
                DomainEvent::Order(OrderEvent::Placed(p)) => {
                    placed.insert(p.order_id, p.total());
                }
                DomainEvent::Order(OrderEvent::Shipped(s)) => shipped.push(s.order_id),
                DomainEvent::Order(OrderEvent::Cancelled(c)) => cancelled.push(c.order_id),
                _ => {}
            }
        }
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
            let old = payment_of.insert(e.order_id(), e.payment_id());
            assert!(
                old.is_none_or(|old| old == e.payment_id()),
                "two payments for one order"
            );
            if let PaymentEvent::Authorized(a) = &e {
                assert_eq!(Some(&a.amount), placed.get(&a.order_id), "authorized the order's total");
            }
            if recorded.position > payments_head {
                *live.entry(e.event_type()).or_default() += 1;
            }
        }
        for order_id in &cancelled {
            let status = payment_of.get(order_id).map(|p| payments[p].status);
            assert!(
                matches!(status, Some(PaymentStatus::Voided | PaymentStatus::Declined)),
                "cancelled order {order_id}: payment {status:?}"
            );
        }
        for order_id in &shipped {
            let payment = &payments[&payment_of[order_id]];
            assert!(matches!(
                payment.status,
                PaymentStatus::Captured | PaymentStatus::Refunded
            ));
            assert_eq!(
                Some(payment.captured_minor),
                placed.get(order_id).map(|t| t.amount_minor)
            );
        }
        eprintln!("{counts:?}; the trickle's payment events: {live:?}");
        for kind in [
            "payment.authorized",
            "payment.declined",
            "payment.captured",
            "payment.voided",
            "payment.refunded",
        ] {
            assert!(
                live.get(kind).is_some_and(|n| *n > 0),
                "no {kind} from the trickle: {live:?}"
            );
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut p = replica_path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}
