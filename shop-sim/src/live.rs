//! A live shop (`serve --rate`): commands at a steady rate through the real services
//! ([`Local`]: the command handlers, and the orders service's flows that reserve and release
//! stock at the inventory service), so every business rule applies. New orders for existing customers and products, existing
//! orders moved through confirm, ship and deliver, or cancelled, and a restock now and then. A
//! rejection (out of stock, an order someone else moved) is part of the show: counted and logged
//! at debug, never fatal.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use event_schemas::Service;
use event_schemas::{Currency, CustomerEvent, DomainEvent, OrderEvent, ProductEvent};
use event_store::{EventMetadata, StoreError};
use projections::ServiceLog;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use write_side::domain::{CancelOrder, OrderCommand, PlaceOrder, PlaceOrderLine, ProductCommand};
use write_side::orders::OrdersError;
use write_side::{CommandContext, CommandError, Local};

use crate::Rng;
use crate::seed::{CANCEL_REASONS, shipping_label};

/// Events per page when the trickle reads the log for the shop's ids.
const LOG_PAGE: usize = 5_000;

/// Where an open order stands, as far as the trickle knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Placed,
    Confirmed,
    Shipped,
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
    open: Vec<(Uuid, Stage)>,
}

impl ShopIds {
    /// Reads the customers', inventory's and orders' logs once: every customer and product, and
    /// the orders still open.
    async fn read(logs: &[ServiceLog]) -> Result<ShopIds, StoreError> {
        let mut shop = ShopIds::default();
        let mut orders: HashMap<Uuid, Stage> = HashMap::new();
        for log in logs.iter().filter(|log| log.service != Service::Payments) {
            shop.read_log(log, &mut orders).await?;
        }
        shop.open = orders.into_iter().collect();
        // The map's order is random: sort so that a seed of the generator means one thing.
        shop.open.sort_unstable_by_key(|(id, _)| *id);
        Ok(shop)
    }

    async fn read_log(&mut self, log: &ServiceLog, orders: &mut HashMap<Uuid, Stage>) -> Result<(), StoreError> {
        let shop = self;
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
                    }
                    DomainEvent::Order(OrderEvent::Cancelled(e)) => {
                        orders.remove(&e.order_id);
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

/// One command: a restock (5%), a new order (35%, or always when no order is open), or the next
/// step of an open order.
async fn step(local: &Local, shop: &mut ShopIds, rng: &mut Rng, counts: &mut Counts) {
    let ctx = context();
    let orders = local.handler(Service::Orders);
    if rng.chance(0.05) {
        let product_id = *rng.pick(&shop.products);
        let quantity = rng.range(20, 200);
        let restocked = local
            .handler(Service::Inventory)
            .product(&ctx, product_id, ProductCommand::Restock { product_id, quantity })
            .await;
        counts.record("restock", restocked.map_err(OrdersError::from));
        return;
    }
    if shop.open.is_empty() || rng.chance(0.35) {
        let Some(order) = shop.new_order(rng) else {
            return;
        };
        let order_id = order.order_id;
        if counts.record("place", local.place_order(&ctx, order).await) {
            shop.open.push((order_id, Stage::Placed));
        }
        return;
    }
    let index = rng.below(shop.open.len());
    let Some(&(order_id, stage)) = shop.open.get(index) else {
        return;
    };
    let (what, next, outcome) = match stage {
        Stage::Placed | Stage::Confirmed if rng.chance(if stage == Stage::Placed { 0.10 } else { 0.05 }) => {
            let reason = (*rng.pick(CANCEL_REASONS)).to_owned();
            let cancelled = local.cancel_order(&ctx, CancelOrder { order_id, reason }).await;
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
            ("ship", Some(Stage::Shipped), shipped.map_err(OrdersError::from))
        }
        Stage::Shipped => {
            let delivered = orders.order(&ctx, order_id, OrderCommand::Deliver { order_id }).await;
            ("deliver", None, delivered.map_err(OrdersError::from))
        }
    };
    // A rejected step means the order is not where the trickle thought (someone moved it over
    // HTTP): forget it rather than retry it forever.
    match (counts.record(what, outcome), next) {
        (true, Some(next)) => shop.open[index].1 = next,
        _ => {
            shop.open.swap_remove(index);
        }
    }
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
