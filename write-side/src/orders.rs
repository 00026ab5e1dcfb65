//! The orders service's commands that involve other services, and the place-order saga that
//! runs them (ADR 0010).
//!
//! - **Placing** an order prices its lines from the orders service's copy of the catalogue and
//!   takes the customer's name and email from its copy of customers ([`Directory`]: asking the
//!   owning service for what the copy has not seen yet), then appends `OrderPlaced` (status
//!   `pending`) and `SagaStarted` in one commit of the orders store, and answers at once. The
//!   saga ([`saga`]) reserves the stock, authorizes the payment and confirms the order, or
//!   compensates and cancels it with a reason code.
//! - **Cancelling** appends `OrderCancelled` (`reason_code` `requested`); the saga sees it and
//!   compensates (void or refund, release). An order placed before sagas existed has none: its
//!   stock is released here, as it was then.
//! - **Confirming** is the saga's alone: a client's `confirm` is refused (`confirmed_by_saga`).
//! - **Operations**: a saga's state, the parked ones, retrying and abandoning one; the health
//!   and circuit breakers of the services it calls; an order's overview composed live from
//!   the three services.

mod directory;
pub mod replica;
pub mod saga;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use event_schemas::Category;
use serde::{Deserialize, Serialize};
use service_kit::client::{BreakerState, CallContext, ClientError, ServiceClient};
use service_kit::http::{ApiError, HttpError};
use utoipa::ToSchema;
use uuid::Uuid;

pub use directory::Directory;

use crate::domain::saga::{ReasonCode, Saga, SagaCommand};
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
    /// Another service refused the request (passed on with `details.service`), was unavailable
    /// (503 naming it) or answered what it should not.
    #[error(transparent)]
    Dependency(#[from] ClientError),
    /// As many sagas wait for the driver as it takes ([`SagaOptions::max_backlog`]): a new
    /// order would only add to the wait. 503 `overloaded`, nothing appended.
    #[error("{backlog} sagas are waiting to be advanced; retry later")]
    Overloaded { backlog: usize, max: usize },
}

impl HttpError for OrdersError {
    fn into_api_error(self) -> ApiError {
        match self {
            OrdersError::Rejected(e) => e.into(),
            OrdersError::Command(e) => e.into(),
            OrdersError::Dependency(e) => e.into(),
            OrdersError::Overloaded { backlog, max } => ApiError::new(
                service_kit::http::StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!("{backlog} orders' sagas are waiting to be advanced (at most {max}); retry later"),
            )
            .with_detail("saga_backlog", backlog)
            .with_detail("max_saga_backlog", max),
        }
    }
}

/// How the saga runs.
#[derive(Debug, Clone, Copy)]
pub struct SagaOptions {
    /// How long an order may stay pending: an order not confirmed by then is cancelled
    /// (`timed_out`, or `payment_unavailable` while waiting for payments). Recorded in each
    /// saga when it starts, so a restart keeps it.
    pub deadline: Duration,
    pub driver: saga::DriverOptions,
    /// Sagas waiting for the driver past which new orders are refused (503 `overloaded`).
    /// The in-flight bound of the HTTP edge does not see this work: every order admitted starts
    /// a saga of three or more commits that run after its answer, and under sustained overload
    /// that backlog, not the requests, would grow until it starved the placements themselves.
    pub max_backlog: usize,
}

/// The saga's default deadline: 15 minutes.
pub const DEFAULT_SAGA_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// Default [`SagaOptions::max_backlog`]: at the driver's pace on the embedded `serve` (about
/// 400 sagas a second on 2 cores), about a second of work.
pub const DEFAULT_MAX_SAGA_BACKLOG: usize = 512;

impl Default for SagaOptions {
    fn default() -> Self {
        SagaOptions {
            deadline: DEFAULT_SAGA_DEADLINE,
            driver: saga::DriverOptions::default(),
            max_backlog: DEFAULT_MAX_SAGA_BACKLOG,
        }
    }
}

/// The services the orders service calls.
#[derive(Clone)]
pub struct Peers {
    pub customers: ServiceClient,
    pub inventory: ServiceClient,
    pub payments: ServiceClient,
}

/// The orders service's commands that involve other services, and its sagas.
#[derive(Clone)]
pub struct Orders {
    handler: CommandHandler,
    directory: Directory,
    peers: Peers,
    sagas: saga::SagaHandle,
    deadline: Duration,
    max_backlog: usize,
}

/// A saga as operators see it (`GET /v1/sagas/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SagaView {
    pub order_id: Uuid,
    pub payment_id: Uuid,
    /// `reserving`, `authorizing`, `confirming`, `awaiting_shipment`, `compensating`,
    /// `parked` or `completed`.
    pub phase: String,
    /// When the order is cancelled if not confirmed by then (RFC 3339).
    pub deadline: Option<String>,
    pub correlation_id: String,
    /// Each line and whether its stock is reserved, and released.
    pub lines: Vec<SagaLineView>,
    pub authorized: bool,
    pub confirmed: bool,
    pub captured_minor: i64,
    pub refunded: bool,
    pub voided: bool,
    /// Why it compensates: `out_of_stock`, `payment_declined`, `payment_unavailable`,
    /// `timed_out`, `abandoned` or `requested`.
    pub reason_code: Option<String>,
    pub reason: Option<String>,
    /// While parked: the step it stopped at and the answer it could not act on.
    pub parked_at: Option<String>,
    pub parked_error: Option<String>,
    /// How it ended: `captured` or `cancelled`.
    pub outcome: Option<String>,
    /// The saga stream's version.
    pub version: u64,
}

/// One line of a saga.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SagaLineView {
    pub product_id: Uuid,
    pub quantity: i64,
    pub reserved: bool,
    pub released: bool,
}

/// A service the orders service calls, as it sees it now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceHealth {
    /// `customers`, `inventory` or `payments`.
    pub service: String,
    /// Whether its `/health` answered now (through the circuit breaker: `false` while open).
    pub healthy: bool,
    /// Why not, when not.
    pub error: Option<String>,
    /// `closed`, `open` or `half_open`.
    pub breaker: BreakerState,
}

/// An order composed live from the three services that hold a part of it
/// (`GET /v1/orders/{id}/overview`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Overview {
    /// The order (`GET /v1/orders/{id}/state`).
    #[schema(value_type = Object)]
    pub order: serde_json::Value,
    /// Its saga, when it has one.
    pub saga: Option<SagaView>,
    /// Each line's reservation at inventory (`GET /v1/products/{id}/reservations/{order id}`),
    /// in line order; `null` when inventory did not answer.
    #[schema(value_type = Option<Vec<Object>>)]
    pub reservations: Option<Vec<serde_json::Value>>,
    /// The payment at payments (`GET /v1/payments/{id}`); `null` when payments did not answer or
    /// has no payment for the order yet.
    #[schema(value_type = Option<Object>)]
    pub payment: Option<serde_json::Value>,
    /// The services that did not answer, whose parts are `null`.
    pub missing: Vec<String>,
}

impl Orders {
    /// Over the orders service's `handler`, finding customers and products through
    /// `directory`, calling `peers`. Returns the driver of its sagas too: run it
    /// ([`saga::Driver::run`]) for as long as the service runs.
    pub fn new(
        handler: CommandHandler,
        directory: Directory,
        peers: Peers,
        options: SagaOptions,
    ) -> (Self, saga::Driver) {
        let runner = saga::Runner::new(handler.clone(), peers.inventory.clone(), peers.payments.clone());
        let (driver, sagas) = saga::driver(runner, Arc::clone(handler.store()), options.driver);
        let orders = Orders {
            handler,
            directory,
            peers,
            sagas,
            deadline: options.deadline,
            max_backlog: options.max_backlog,
        };
        (orders, driver)
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
        // After the replay: a retry of an order already placed gets its answer, overload or not.
        let backlog = self.sagas.backlog();
        if backlog >= self.max_backlog {
            metrics::counter!(service_kit::http::SHED_TOTAL).increment(1);
            return Err(OrdersError::Overloaded {
                backlog,
                max: self.max_backlog,
            });
        }
        let existing = self.handler.load::<Order>(command.order_id, None).await?;
        if existing.version > 0 {
            return self.placed_already(ctx, command.order_id).await;
        }
        let customer = self.directory.customer(command.customer_id, call).await?;
        let mut priced = Vec::with_capacity(command.lines.len());
        for line in &command.lines {
            let product = self.directory.product(line.product_id, call).await?;
            priced.push(ReservedLine {
                product_id: line.product_id,
                quantity: line.quantity,
                sku: product.sku,
                name: product.name,
                unit_price: product.price,
            });
        }
        let placed = domain::place_reserved_order(&existing.state, &command, customer, &priced)?;
        let amount = match placed.first() {
            Some(event_schemas::OrderEvent::Placed(e)) => e.total(),
            _ => return Err(DomainError::rejected("placing an order decided no OrderPlaced".to_owned()).into()),
        };
        let deadline =
            Utc::now() + chrono::Duration::from_std(self.deadline).unwrap_or_else(|_| chrono::Duration::minutes(15));
        let start = SagaCommand::Start {
            order_id: command.order_id,
            payment_id: saga::payment_id(command.order_id),
            lines: command.lines.iter().map(|l| (l.product_id, l.quantity)).collect(),
            amount,
            deadline,
            correlation_id: ctx.metadata.correlation_id.clone(),
        };
        match self.handler.place_with_saga(ctx, command.order_id, placed, start).await {
            Ok(answer) => {
                metrics::counter!("orderflow_sagas_started_total").increment(1);
                self.sagas.started(command.order_id);
                Ok(answer)
            }
            // Someone placed this order id meanwhile (the same request sent twice at once).
            Err(CommandError::Rejected(DomainError::AlreadyExists { .. })) => {
                self.placed_already(ctx, command.order_id).await
            }
            Err(e) => Err(e.into()),
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

    /// Cancels a pending or confirmed order: its saga compensates (void or refund, release the
    /// stock). An order without a saga (placed before sagas existed) has its stock released
    /// here (keys `order-<order id>-cancel-release-<n>`): a release that fails is logged and
    /// counted, and cancelling again releases again.
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
        let result = self.handler.order(ctx, order_id, cancel).await;
        let has_saga = self.handler.load::<Saga>(order_id, None).await?.version > 0;
        if has_saga {
            self.sagas.started(order_id);
            return Ok(result?);
        }
        match result {
            Ok(answer) => {
                let order = self.handler.load::<Order>(order_id, None).await?;
                self.release_order(order_id, &order.state, call).await;
                Ok(answer)
            }
            // Already cancelled (a repeat): release again what may still be held.
            Err(CommandError::Rejected(e)) => {
                let order = self.handler.load::<Order>(order_id, None).await?;
                if order.state.status == domain::OrderStatus::Cancelled {
                    self.release_order(order_id, &order.state, call).await;
                }
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// An order command that changes only the order (ship, deliver): its saga is looked at
    /// right away (shipping captures the payment).
    pub async fn change(
        &self,
        ctx: &CommandContext,
        order_id: Uuid,
        command: OrderCommand,
    ) -> Result<CommandAnswer, OrdersError> {
        let answer = self.handler.order(ctx, order_id, command).await?;
        self.sagas.started(order_id);
        Ok(answer)
    }

    async fn release_order(&self, order_id: Uuid, order: &Order, call: &CallContext) {
        for (n, line) in order.lines.iter().enumerate() {
            let key = format!("order-{order_id}-cancel-release-{n}");
            let released = self
                .peers
                .inventory
                .post_json::<_, serde_json::Value>(
                    &format!("/v1/products/{}/reservations/{order_id}/release", line.product_id),
                    &serde_json::json!({}),
                    &call.clone().with_idempotency_key(key),
                )
                .await;
            if let Err(e) = released {
                metrics::counter!("orderflow_orders_unreleased_reservations_total").increment(1);
                tracing::error!(%order_id, product_id = %line.product_id, error = %e,
                    "could not release a cancelled order's stock; cancel again to retry");
            }
        }
    }

    /// The saga of order `order_id`.
    pub async fn saga(&self, order_id: Uuid) -> Result<SagaView, OrdersError> {
        let loaded = self.existing_saga(order_id).await?;
        Ok(saga_view(&loaded.state, loaded.version))
    }

    /// The saga of order `order_id`, or `NotFound`.
    async fn existing_saga(&self, order_id: Uuid) -> Result<crate::Loaded<Saga>, OrdersError> {
        let loaded = self.handler.load::<Saga>(order_id, None).await?;
        if loaded.version == 0 {
            return Err(DomainError::NotFound {
                what: "saga",
                id: order_id,
            }
            .into());
        }
        Ok(loaded)
    }

    /// The parked sagas this process's driver knows of.
    pub fn parked(&self) -> Vec<Uuid> {
        self.sagas.parked()
    }

    /// Retries a parked saga: the step it stopped at is tried again.
    pub async fn retry_saga(&self, ctx: &CommandContext, order_id: Uuid) -> Result<CommandAnswer, OrdersError> {
        self.require_parked(order_id).await?;
        let resume = SagaCommand::Resume {
            actor: ctx.metadata.actor.clone(),
        };
        let answer = self.handler.execute::<Saga>(ctx, order_id, resume).await?;
        self.sagas.started(order_id);
        Ok(answer)
    }

    /// Abandons a parked saga: it compensates and cancels the order (`abandoned`). A saga
    /// parked while compensating already is resumed: a compensation never gives up.
    pub async fn abandon_saga(
        &self,
        ctx: &CommandContext,
        order_id: Uuid,
        reason: String,
    ) -> Result<CommandAnswer, OrdersError> {
        let saga = self.require_parked(order_id).await?;
        if saga.confirmed && saga.failure.is_none() {
            return Err(DomainError::rejected(format!(
                "the order {order_id} is confirmed: its saga can only be retried, not abandoned (cancel the order instead)"
            ))
            .into());
        }
        let command = if saga.failure.is_some() {
            SagaCommand::Resume {
                actor: ctx.metadata.actor.clone(),
            }
        } else {
            let reason = domain::validate::text("reason", &reason, domain::MAX_REASON_CHARS)?;
            SagaCommand::Fail {
                reason_code: ReasonCode::Abandoned,
                reason,
                step: "operator".to_owned(),
            }
        };
        let answer = self.handler.execute::<Saga>(ctx, order_id, command).await?;
        self.sagas.started(order_id);
        Ok(answer)
    }

    async fn require_parked(&self, order_id: Uuid) -> Result<Saga, OrdersError> {
        let loaded = self.existing_saga(order_id).await?;
        if loaded.state.parked.is_none() {
            return Err(DomainError::rejected(format!(
                "the saga of order {order_id} is {}, not parked",
                loaded.state.phase().as_str()
            ))
            .into());
        }
        Ok(loaded.state)
    }

    /// Each service the orders service calls: its health asked now, and its breaker.
    pub async fn services(&self, call: &CallContext) -> Vec<ServiceHealth> {
        let peers = [&self.peers.customers, &self.peers.inventory, &self.peers.payments];
        let asked = peers.map(|client| async move {
            let answer = client.get_json::<serde_json::Value>("/health", call).await;
            ServiceHealth {
                service: client.name().to_owned(),
                healthy: answer.is_ok(),
                error: answer.err().map(|e| e.to_string()),
                breaker: client.breaker_state(),
            }
        });
        futures::future::join_all(asked).await
    }

    /// The order, its reservations and its payment, each asked of its owner now; see
    /// [`Overview`].
    pub async fn overview(&self, order_id: Uuid, call: &CallContext) -> Result<Overview, OrdersError> {
        let order = self.handler.load::<Order>(order_id, None).await?;
        if order.version == 0 {
            return Err(DomainError::NotFound {
                what: Category::Order.name(),
                id: order_id,
            }
            .into());
        }
        let saga = self.handler.load::<Saga>(order_id, None).await?;
        let saga = (saga.version > 0).then(|| saga_view(&saga.state, saga.version));
        let payment_id = saga
            .as_ref()
            .map_or_else(|| saga::payment_id(order_id), |s| s.payment_id);
        let inventory = &self.peers.inventory;
        let reservations = futures::future::join_all(order.state.lines.iter().map(|line| async move {
            let path = format!("/v1/products/{}/reservations/{order_id}", line.product_id);
            inventory.get_json::<serde_json::Value>(&path, call).await
        }));
        let payment_path = format!("/v1/payments/{payment_id}");
        let payment = self.peers.payments.get_json::<serde_json::Value>(&payment_path, call);
        let (reservations, payment) = futures::join!(reservations, payment);
        let mut missing = Vec::new();
        let reservations = reservations
            .into_iter()
            .map(|answer| match answer {
                Ok(found) => Ok(found),
                // No reservation for this order: inventory answered, there is none.
                Err(ClientError::Rejected { status, .. }) if status == service_kit::http::StatusCode::NOT_FOUND => {
                    Ok(serde_json::Value::Null)
                }
                Err(e) => Err(e),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                tracing::warn!(%order_id, error = %e, "overview: inventory did not answer");
                missing.push("inventory".to_owned());
            })
            .ok();
        let payment = match payment {
            Ok(found) => Some(found),
            Err(ClientError::Rejected { status, .. }) if status == service_kit::http::StatusCode::NOT_FOUND => None,
            Err(e) => {
                tracing::warn!(%order_id, error = %e, "overview: payments did not answer");
                missing.push("payments".to_owned());
                None
            }
        };
        let order = serde_json::to_value(crate::http::OrderStateView::new(
            &order.state,
            order.version,
            order.position,
            order.recorded_at,
        ))
        .map_err(|e| CommandError::Corrupt {
            stream_id: Category::Order.stream_id(order_id),
            reason: e.to_string(),
        })?;
        Ok(Overview {
            order,
            saga,
            reservations,
            payment,
            missing,
        })
    }
}

fn saga_view(saga: &Saga, version: u64) -> SagaView {
    SagaView {
        order_id: saga.order_id,
        payment_id: saga.payment_id,
        phase: saga.phase().as_str().to_owned(),
        deadline: saga.deadline.map(|d| d.to_rfc3339()),
        correlation_id: saga.correlation_id.clone(),
        lines: saga
            .lines
            .iter()
            .map(|l| SagaLineView {
                product_id: l.product_id,
                quantity: l.quantity,
                reserved: l.reserved,
                released: l.released,
            })
            .collect(),
        authorized: saga.authorized,
        confirmed: saga.confirmed,
        captured_minor: saga.captured_minor,
        refunded: saga.refunded,
        voided: saga.voided,
        reason_code: saga.failure.as_ref().map(|f| f.reason_code.as_str().to_owned()),
        reason: saga.failure.as_ref().map(|f| f.reason.clone()),
        parked_at: saga.parked.as_ref().map(|p| p.step.clone()),
        parked_error: saga.parked.as_ref().map(|p| p.error.clone()),
        outcome: saga.outcome.clone(),
        version,
    }
}
