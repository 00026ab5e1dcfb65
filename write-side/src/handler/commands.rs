//! The write side's commands as [`Command`]s: what each loads and how it decides. Everything
//! else (replays, locks, retries, commits, the cache) is the pipeline's.

use std::marker::PhantomData;

use event_schemas::Category;
use uuid::Uuid;

use super::pipeline::{Command, Step, Writes, expectation, unchanged};
use super::{CommandContext, CommandError, CommandHandler, Snapshottable};
use crate::domain::{self, CancelOrder, Customer, Order, PlaceOrder};

/// A command on one aggregate: `A::decide` on its state, appended to its stream.
pub(crate) struct OnAggregate<A: Snapshottable> {
    pub(crate) id: Uuid,
    pub(crate) command: A::Command,
    pub(crate) aggregate: PhantomData<fn() -> A>,
}

impl<A> Command for OnAggregate<A>
where
    A: Snapshottable,
    A::Command: Clone + Send + Sync,
{
    fn stream_id(&self) -> String {
        A::CATEGORY.stream_id(self.id)
    }

    fn locks(&self) -> Vec<String> {
        vec![self.stream_id()]
    }

    async fn decide(&self, handler: &CommandHandler, ctx: &CommandContext, trust: bool) -> Result<Step, CommandError> {
        let (loaded, trusted) = handler.load_now::<A>(self.id, trust).await?;
        let expected = match expectation(ctx, &loaded, trusted) {
            Ok(expected) => expected,
            Err(step) => return Ok(step),
        };
        Ok(match loaded.state.decide(self.command.clone()) {
            Err(e) => Step::refused(trusted, e),
            Ok(events) if events.is_empty() => Step::unchanged(trusted, &loaded),
            Ok(events) => Step::Write(Writes::answering(&loaded).append(loaded, expected, events)),
        })
    }
}

/// Placing an order: `OrderPlaced` and a stock reservation per line, in one commit across the
/// order's and the products' streams. The customer's stream is only read, so it is always
/// caught up with the store.
impl Command for PlaceOrder {
    fn stream_id(&self) -> String {
        Category::Order.stream_id(self.order_id)
    }

    fn locks(&self) -> Vec<String> {
        self.lines
            .iter()
            .map(|l| Category::Product.stream_id(l.product_id))
            .chain([self.stream_id()])
            .collect()
    }

    async fn decide(&self, handler: &CommandHandler, ctx: &CommandContext, trust: bool) -> Result<Step, CommandError> {
        // The aggregates are independent reads: load them concurrently.
        let ((order, order_trusted), (customer, _), (products, products_trusted)) = tokio::try_join!(
            handler.load_now::<Order>(self.order_id, trust),
            handler.load_now::<Customer>(self.customer_id, false),
            handler.load_products(self.lines.iter().map(|l| l.product_id), trust),
        )?;
        let trusted = order_trusted || products_trusted;
        let expected = match expectation(ctx, &order, trusted) {
            Ok(expected) => expected,
            Err(step) => return Ok(step),
        };
        let decision = match domain::place_order(
            &order.state,
            &customer.state,
            products.values().map(|p| &p.state),
            self.clone(),
        ) {
            Ok(decision) => decision,
            Err(e) => return Ok(Step::refused(trusted, e)),
        };
        Ok(order_decision(order, expected, decision, products, trusted, None))
    }
}

/// Cancelling an order and releasing its stock, in one commit. Its products are known once the
/// order is loaded; `product-…` sorts after `order-…`, so taking their locks then keeps the one
/// global order of `StreamLocks`.
impl Command for CancelOrder {
    fn stream_id(&self) -> String {
        Category::Order.stream_id(self.order_id)
    }

    fn locks(&self) -> Vec<String> {
        vec![self.stream_id()]
    }

    async fn decide(&self, handler: &CommandHandler, ctx: &CommandContext, trust: bool) -> Result<Step, CommandError> {
        let (order, order_trusted) = handler.load_now::<Order>(self.order_id, trust).await?;
        let lines = &order.state.lines;
        let held = handler
            .locks
            .lock(lines.iter().map(|l| Category::Product.stream_id(l.product_id)))
            .await;
        let (products, products_trusted) = handler.load_products(lines.iter().map(|l| l.product_id), trust).await?;
        let trusted = order_trusted || products_trusted;
        let expected = match expectation(ctx, &order, trusted) {
            Ok(expected) => expected,
            Err(step) => return Ok(step),
        };
        let decision = match domain::cancel_order(&order.state, products.values().map(|p| &p.state), self.clone()) {
            Ok(decision) => decision,
            Err(e) => return Ok(Step::refused(trusted, e)),
        };
        Ok(order_decision(order, expected, decision, products, trusted, Some(held)))
    }
}

/// The writes of a decision over an order and its products.
fn order_decision(
    order: super::Loaded<Order>,
    expected: event_store::ExpectedVersion,
    decision: domain::OrderDecision,
    mut products: std::collections::BTreeMap<Uuid, super::Loaded<domain::Product>>,
    trusted: bool,
    held: Option<crate::stream_locks::Held>,
) -> Step {
    let product_ids: Vec<Uuid> = products.keys().copied().collect();
    let nothing = unchanged(&order);
    let mut writes = Writes::answering(&order);
    let order_stream = order.stream_id.clone();
    writes = writes.append(order, expected, decision.order_events);
    for (product_id, events) in decision.product_events {
        let Some(product) = products.remove(&product_id) else {
            return Step::Failed(CommandError::Corrupt {
                stream_id: order_stream,
                reason: format!("decision touched product {product_id} that was not loaded"),
            });
        };
        let expected = event_store::ExpectedVersion::Exact(product.version);
        writes = writes.append(product, expected, events);
    }
    if let Some(held) = held {
        writes = writes.holding(held);
    }
    // A stream the commit does not append to is not checked by it: a decision that leaves out
    // a trusted stream (a cancelled order's product that, as cached, holds no reservation for
    // it) is taken again on what the store holds.
    let appends_to_every_stream = writes.appends_to(&order_stream)
        && product_ids
            .iter()
            .all(|id| writes.appends_to(&Category::Product.stream_id(*id)));
    if trusted && !appends_to_every_stream {
        return Step::Verify;
    }
    if writes.is_empty() {
        return Step::Unchanged(nothing);
    }
    Step::Write(writes)
}
