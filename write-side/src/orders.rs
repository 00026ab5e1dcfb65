//! The orders service's commands that need other services: placing an order (the stock of every
//! line is reserved at the inventory service first) and cancelling one (its stock is released
//! there after). The other order commands touch the order's stream only and go straight through
//! the command handler.
//!
//! Every service owns its store, so an order and its stock cannot be one commit any more (ADR
//! 0003 describes the one-store design this replaces). Until the place-order saga exists,
//! placing runs synchronously inside the request:
//!
//! 1. the command's shape is checked, and an order that exists already is refused, before
//!    anything is reserved;
//! 2. the customer's name and email come from the orders service's copy, or from the customers
//!    service ([`CustomerDirectory`]);
//! 3. each line is reserved at the inventory service, `POST /v1/products/{id}/reservations`, with
//!    an idempotency key of its own (`order-<order id>-line-<n>`), so a repeated attempt reserves
//!    once; its answer carries the product's sku, name and price as the reservation took them:
//!    the authority for the price (the copy's may be stale);
//! 4. `OrderPlaced` is appended with those lines.
//!
//! If a line cannot be reserved (out of stock, unknown product, inventory down), the lines
//! reserved before it are released (`.../reservations/<order id>/release`, keys
//! `order-<order id>-release-<n>`) and the order is refused with the inventory's reason: stock
//! never goes below zero, and an order beyond the stock is a 409 with nothing left reserved. The
//! same happens if the order's own decision refuses it after the reservations (one currency per
//! order). What this synchronous flow cannot do, the saga will: a crash between the
//! reservations and the append leaves the reservations held for an order that was never placed
//! (nothing durable remembers to release them).

mod directory;
pub mod replica;

use event_schemas::{Category, Currency, Money};
use serde::{Deserialize, Serialize};
use service_kit::client::{CallContext, ClientError, ServiceClient};
use service_kit::http::{ApiError, HttpError};
use uuid::Uuid;

pub use directory::CustomerDirectory;

use crate::domain::{self, CancelOrder, DomainError, Order, OrderCommand, PlaceOrder, ReservedLine};
use crate::{CommandAnswer, CommandContext, CommandError, CommandHandler};

/// Why an order command that spans services did not happen.
#[derive(Debug, thiserror::Error)]
pub enum OrdersError {
    /// The domain refused it: the caller's to fix.
    #[error(transparent)]
    Rejected(#[from] DomainError),
    /// The order's own command failed (a conflict, the store).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// Another service refused the request (out of stock: 409 `insufficient_stock`, passed on
    /// with `details.service`), was unavailable (503 naming it) or answered what it should not.
    #[error(transparent)]
    Dependency(#[from] ClientError),
}

impl HttpError for OrdersError {
    fn into_api_error(self) -> ApiError {
        match self {
            OrdersError::Rejected(e) => e.into(),
            OrdersError::Command(e) => e.into(),
            OrdersError::Dependency(e) => e.into(),
        }
    }
}

/// The orders service's commands that call other services.
#[derive(Clone)]
pub struct Orders {
    handler: CommandHandler,
    inventory: ServiceClient,
    customers: CustomerDirectory,
}

/// What `POST /v1/products/{id}/reservations` takes.
#[derive(Debug, Serialize)]
struct Reserve {
    order_id: Uuid,
    quantity: i64,
}

/// What it answers, as far as an order needs it.
#[derive(Debug, Deserialize)]
struct Reservation {
    product_id: Uuid,
    quantity: i64,
    sku: String,
    name: String,
    unit_price_minor: i64,
    currency: String,
}

impl Orders {
    /// Over the orders service's `handler`, calling the inventory service through `inventory`,
    /// and finding customers through `customers`.
    pub fn new(handler: CommandHandler, inventory: ServiceClient, customers: CustomerDirectory) -> Self {
        Orders {
            handler,
            inventory,
            customers,
        }
    }

    /// The orders service's handler.
    pub fn handler(&self) -> &CommandHandler {
        &self.handler
    }

    /// Places an order; see the module doc. `call` identifies the request (its correlation and
    /// causation ids go with every call to the other services).
    pub async fn place(
        &self,
        ctx: &CommandContext,
        call: &CallContext,
        command: PlaceOrder,
    ) -> Result<CommandAnswer, OrdersError> {
        command.validate()?;
        if let Some(answer) = self
            .handler
            .replay_of(ctx, Category::Order.stream_id(command.order_id))
            .await?
        {
            return Ok(answer);
        }
        let existing = self.handler.load::<Order>(command.order_id, None).await?;
        if existing.version > 0 {
            return self.placed_already(ctx, command.order_id).await;
        }
        let customer = self.customers.snapshot(command.customer_id, call).await?;
        let reserved = self.reserve_lines(&command, call).await?;
        let decided = match domain::place_reserved_order(&existing.state, &command, customer, &reserved) {
            Ok(events) => events,
            Err(refused) => {
                self.release_lines(command.order_id, reserved.len(), &command, call)
                    .await;
                return Err(refused.into());
            }
        };
        match self.handler.create::<Order>(ctx, command.order_id, decided).await {
            // The request's key was committed meanwhile by a copy of it that made up another
            // order id: that order is the request's, and this copy's reservations hold stock
            // for an order that will never exist.
            Ok(answer) if answer.replayed && answer.stream_id != Category::Order.stream_id(command.order_id) => {
                self.release_lines(command.order_id, reserved.len(), &command, call)
                    .await;
                Ok(answer)
            }
            Ok(answer) => Ok(answer),
            // Someone placed this order id meanwhile (the same request, sent twice at once):
            // its reservations are the ones just made (same keys), so they stay with it.
            Err(CommandError::Rejected(DomainError::AlreadyExists { .. })) => {
                self.placed_already(ctx, command.order_id).await
            }
            // The commit's outcome is unknown (the store failed mid-way): releasing could take
            // the stock from an order that was placed after all, so it is kept.
            Err(e @ CommandError::Store(_)) => Err(e.into()),
            // Refused before committing: nothing holds the stock.
            Err(e) => {
                self.release_lines(command.order_id, reserved.len(), &command, call)
                    .await;
                Err(e.into())
            }
        }
    }

    /// The answer for an order id that is placed already: the first answer when this is the
    /// same request (its idempotency key committed meanwhile: the request sent twice at once),
    /// `AlreadyExists` otherwise.
    async fn placed_already(&self, ctx: &CommandContext, order_id: Uuid) -> Result<CommandAnswer, OrdersError> {
        match self.handler.replay_of(ctx, Category::Order.stream_id(order_id)).await? {
            Some(answer) => Ok(answer),
            None => Err(DomainError::AlreadyExists {
                what: Category::Order.name(),
                id: order_id,
            }
            .into()),
        }
    }

    /// Reserves every line in order; on the first refusal releases those reserved before it.
    async fn reserve_lines(&self, command: &PlaceOrder, call: &CallContext) -> Result<Vec<ReservedLine>, OrdersError> {
        let mut reserved = Vec::with_capacity(command.lines.len());
        for (n, line) in command.lines.iter().enumerate() {
            let key = format!("order-{}-line-{n}", command.order_id);
            let answer = self
                .inventory
                .post_json::<_, Reservation>(
                    &format!("/v1/products/{}/reservations", line.product_id),
                    &Reserve {
                        order_id: command.order_id,
                        quantity: line.quantity,
                    },
                    &call.clone().with_idempotency_key(key),
                )
                .await;
            // A refused or failed reservation holds nothing; one that answered what an order
            // cannot use does, and is released with the others.
            let (held, line) = match answer {
                Ok(answer) => (n + 1, reserved_line(answer, line.product_id)),
                Err(e) => (n, Err(e)),
            };
            match line {
                Ok(line) => reserved.push(line),
                Err(e) => {
                    self.release_lines(command.order_id, held, command, call).await;
                    return Err(e.into());
                }
            }
        }
        Ok(reserved)
    }

    /// Releases the first `count` lines' reservations of the order (best effort: a release that
    /// fails is logged; it is idempotent, so an operator can repeat it).
    async fn release_lines(&self, order_id: Uuid, count: usize, command: &PlaceOrder, call: &CallContext) {
        for (n, line) in command.lines.iter().take(count).enumerate() {
            if let Err(e) = self
                .release(
                    order_id,
                    line.product_id,
                    &format!("order-{order_id}-release-{n}"),
                    call,
                )
                .await
            {
                metrics::counter!("orderflow_orders_unreleased_reservations_total").increment(1);
                tracing::error!(%order_id, product_id = %line.product_id, error = %e,
                    "could not release a reservation; it stays held until released by hand");
            }
        }
    }

    async fn release(
        &self,
        order_id: Uuid,
        product_id: Uuid,
        key: &str,
        call: &CallContext,
    ) -> Result<(), ClientError> {
        self.inventory
            .post_json::<_, serde_json::Value>(
                &format!("/v1/products/{product_id}/reservations/{order_id}/release"),
                &serde_json::json!({}),
                &call.clone().with_idempotency_key(key),
            )
            .await
            .map(drop)
    }

    /// Cancels an order, then releases the stock of its lines at the inventory service (keys
    /// `order-<order id>-cancel-release-<n>`). The cancellation stands if a release fails (the
    /// inventory service is down): it is logged and counted, and repeating the cancel (with its
    /// idempotency key, or without: the order is cancelled, so nothing is appended) releases
    /// again.
    pub async fn cancel(
        &self,
        ctx: &CommandContext,
        call: &CallContext,
        command: CancelOrder,
    ) -> Result<CommandAnswer, OrdersError> {
        let order_id = command.order_id;
        let cancel = OrderCommand::Cancel {
            order_id,
            reason: command.reason,
            reason_code: command.reason_code,
        };
        let answer = match self.handler.order(ctx, order_id, cancel).await {
            Ok(answer) => answer,
            // Already cancelled (a repeat): release again what may still be held.
            Err(CommandError::Rejected(e)) => {
                let order = self.handler.load::<Order>(order_id, None).await?;
                if order.state.status != domain::OrderStatus::Cancelled {
                    return Err(e.into());
                }
                self.release_order(order_id, &order.state, call).await;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        let order = self.handler.load::<Order>(order_id, None).await?;
        self.release_order(order_id, &order.state, call).await;
        Ok(answer)
    }

    async fn release_order(&self, order_id: Uuid, order: &Order, call: &CallContext) {
        for (n, line) in order.lines.iter().enumerate() {
            let key = format!("order-{order_id}-cancel-release-{n}");
            if let Err(e) = self.release(order_id, line.product_id, &key, call).await {
                metrics::counter!("orderflow_orders_unreleased_reservations_total").increment(1);
                tracing::error!(%order_id, product_id = %line.product_id, error = %e,
                    "could not release a cancelled order's stock; cancel again to retry");
            }
        }
    }
}

/// A reservation's answer as the order line it becomes.
fn reserved_line(answer: Reservation, asked: Uuid) -> Result<ReservedLine, ClientError> {
    let bad = |reason: String| ClientError::Failed {
        service: "inventory".to_owned(),
        status: None,
        reason,
    };
    if answer.product_id != asked {
        return Err(bad(format!(
            "reserved product {} when {asked} was asked",
            answer.product_id
        )));
    }
    let currency: Currency = answer
        .currency
        .parse()
        .map_err(|_| bad(format!("currency {:?} of product {asked}", answer.currency)))?;
    Ok(ReservedLine {
        product_id: answer.product_id,
        quantity: answer.quantity,
        sku: answer.sku,
        name: answer.name,
        unit_price: Money::new(answer.unit_price_minor, currency),
    })
}
