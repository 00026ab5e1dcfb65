//! The orders service's routes: place (the saga reserves the stock, authorizes the payment and
//! confirms the order, ADR 0010), cancel (the saga compensates), ship (the saga captures),
//! deliver; `confirm` is the saga's alone and refused.

use axum::extract::State;
use axum::http::StatusCode;
use event_schemas::{Category, Service};
use serde::{Deserialize, Serialize};
use service_kit::http::{ApiError, ErrorBody};
use utoipa::ToSchema;
use uuid::Uuid;

use super::HttpState;
use super::answer::{Answered, CommandAnswerBody, answer};
use super::extract::{ApiJson, CommandMeta, EmptyBody, IdPath, non_negative};
use crate::domain::saga::ReasonCode;
use crate::domain::{CancelOrder, OrderCommand, PlaceOrder, PlaceOrderLine};

/// One line of an order to place.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLineInput {
    pub product_id: Uuid,
    /// At least 1.
    #[serde(deserialize_with = "non_negative")]
    #[schema(minimum = 1)]
    pub quantity: i64,
}

/// Places an order: it is `pending` until its saga confirms it (or cancels it).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderBody {
    /// Made up (UUID v7) when absent.
    #[serde(default)]
    pub order_id: Option<Uuid>,
    pub customer_id: Uuid,
    /// 1 to 100 lines, each product at most once.
    pub lines: Vec<OrderLineInput>,
}

/// Cancels an order and releases its stock.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelOrderBody {
    pub reason: String,
}

/// Ships a confirmed order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipOrderBody {
    pub carrier: String,
    pub tracking: String,
}

/// Place an order: its lines are priced from the catalogue, `OrderPlaced` (status `pending`)
/// and the start of its saga are appended in one commit, and the answer comes at once. The saga
/// then reserves the stock, authorizes the payment and confirms the order, or cancels it with a
/// `reason_code` (`out_of_stock`, `payment_declined`, `payment_unavailable`, `timed_out`):
/// follow it on the order's state or the dashboard.
#[utoipa::path(
    post,
    path = "/v1/orders",
    tag = "orders",
    request_body = PlaceOrderBody,
    responses(
        (status = 201, description = "placed, pending", body = CommandAnswerBody),
        (status = 404, description = "unknown customer or product", body = ErrorBody),
        (status = 409, description = "`already_exists`, `rejected` (lines in two currencies) or `conflict`", body = ErrorBody),
        (status = 503, description = "`unavailable`: a customer or product not in the orders service's copy yet, and its owner does not answer; nothing appended", body = ErrorBody),
        (status = 422, description = "`invalid` lines", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn place_order(
    State(state): State<HttpState>,
    meta: CommandMeta,
    ApiJson(body): ApiJson<PlaceOrderBody>,
) -> Result<Answered, ApiError> {
    let ctx = meta.context(&body);
    let order_id = body.order_id.unwrap_or_else(|| meta.new_id(Category::Order));
    let command = PlaceOrder {
        order_id,
        customer_id: body.customer_id,
        lines: body
            .lines
            .iter()
            .map(|line| PlaceOrderLine {
                product_id: line.product_id,
                quantity: line.quantity,
            })
            .collect(),
    };
    let call = meta.call();
    let answer = state.orders()?.place(&ctx, &call, command).await?;
    Ok(Answered::new(StatusCode::CREATED, answer))
}

/// Not a client command: an order is confirmed by its saga once its stock is reserved and its
/// payment authorized (ADR 0010). Always refused, changing nothing.
#[utoipa::path(
    post,
    path = "/v1/orders/{id}/confirm",
    tag = "orders",
    params(("id" = Uuid, Path, description = "the order's id")),
    request_body(content = EmptyBody, description = "`{}` or no body"),
    responses(
        (status = 409, description = "`confirmed_by_saga`: always; the place-order saga confirms orders", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn confirm_order(IdPath(id): IdPath, _body: EmptyBody) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "confirmed_by_saga",
        "orders are confirmed by the place-order saga once their stock is reserved and their payment \
         authorized; confirm is not a client command",
    )
    .with_detail("order_id", id.to_string())
}

/// Cancel a pending or confirmed order (`reason_code` `requested`): its saga releases the
/// stock and voids or refunds the payment.
#[utoipa::path(
    post,
    path = "/v1/orders/{id}/cancel",
    tag = "orders",
    params(("id" = Uuid, Path, description = "the order's id")),
    request_body = CancelOrderBody,
    responses(
        (status = 200, description = "cancelled", body = CommandAnswerBody),
        (status = 404, description = "no such order", body = ErrorBody),
        (status = 409, description = "`rejected` (shipped, delivered or cancelled) or `conflict`", body = ErrorBody),
        (status = 422, description = "`invalid` reason", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn cancel_order(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
    meta: CommandMeta,
    ApiJson(body): ApiJson<CancelOrderBody>,
) -> Result<Answered, ApiError> {
    let ctx = meta.context(&body);
    let command = CancelOrder {
        order_id: id,
        reason: body.reason,
        // A client's cancellation (ADR 0010's reason codes).
        reason_code: Some(ReasonCode::Requested.as_str().to_owned()),
    };
    let call = meta.call();
    let answer = state.orders()?.cancel(&ctx, &call, command).await?;
    Ok(Answered::new(StatusCode::OK, answer))
}

/// Ship a confirmed order: its saga captures the payment.
#[utoipa::path(
    post,
    path = "/v1/orders/{id}/ship",
    tag = "orders",
    params(("id" = Uuid, Path, description = "the order's id")),
    request_body = ShipOrderBody,
    responses(
        (status = 200, description = "shipped", body = CommandAnswerBody),
        (status = 404, description = "no such order", body = ErrorBody),
        (status = 409, description = "`rejected` (not confirmed) or `conflict`", body = ErrorBody),
        (status = 422, description = "`invalid` carrier or tracking", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn ship_order(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
    meta: CommandMeta,
    ApiJson(body): ApiJson<ShipOrderBody>,
) -> Result<Answered, ApiError> {
    let ctx = meta.context(&body);
    let command = OrderCommand::Ship {
        order_id: id,
        carrier: body.carrier,
        tracking: body.tracking,
    };
    let answer = state.orders()?.change(&ctx, id, command).await?;
    Ok(Answered::new(StatusCode::OK, answer))
}

/// Mark a shipped order delivered.
#[utoipa::path(
    post,
    path = "/v1/orders/{id}/deliver",
    tag = "orders",
    params(("id" = Uuid, Path, description = "the order's id")),
    request_body(content = EmptyBody, description = "`{}` or no body"),
    responses(
        (status = 200, description = "delivered", body = CommandAnswerBody),
        (status = 404, description = "no such order", body = ErrorBody),
        (status = 409, description = "`rejected` (not shipped) or `conflict`", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn deliver_order(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
    meta: CommandMeta,
    body: EmptyBody,
) -> Result<Answered, ApiError> {
    let ctx = meta.context(&body);
    let result = state
        .handler(Service::Orders)?
        .order(&ctx, id, OrderCommand::Deliver { order_id: id })
        .await;
    answer(StatusCode::OK, result)
}
