//! The command routes: one handler per command of docs/design.md's table. Each reads its body
//! ([`ApiJson`], fields checked for shape: missing, unknown, mistyped, negative or out-of-range
//! numbers are 400), builds the [`CommandContext`](crate::CommandContext) from the headers
//! ([`CommandMeta`]), runs the command through the [`CommandHandler`](crate::CommandHandler)
//! and answers `{stream_id, version, position}` (201 for a create, 200 otherwise) with an `ETag`
//! of the stream's version. The domain checks the values (422 `invalid` and friends).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::HttpState;
use super::extract::{ApiJson, CommandMeta, EmptyBody, IdPath, non_negative};
use crate::domain::{CancelOrder, CustomerCommand, OrderCommand, PlaceOrder, PlaceOrderLine, ProductCommand};
use crate::{CommandAnswer, CommandError};
use service_kit::http::{ApiError, ErrorBody};

/// The answer to every command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommandAnswerBody {
    /// The stream the command wrote (for an order: the order's stream), e.g. `order-{uuid}`.
    pub stream_id: String,
    /// The stream's version after the command: send it as `If-Match` to make the next command
    /// conditional.
    pub version: u64,
    /// The highest global position the command wrote: a consistency token that reads can wait
    /// for (`min_position`).
    pub position: u64,
}

/// A command's HTTP answer: the body, its status and `ETag: "<version>"`.
pub(crate) struct Answered {
    status: StatusCode,
    body: CommandAnswerBody,
}

impl IntoResponse for Answered {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(&self.body)).into_response();
        if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", self.body.version)) {
            response.headers_mut().insert(header::ETAG, etag);
        }
        response
    }
}

/// Turns the handler's answer into the HTTP answer.
fn answer(status: StatusCode, result: Result<CommandAnswer, CommandError>) -> Result<Answered, ApiError> {
    let answer = result?;
    Ok(Answered {
        status,
        body: CommandAnswerBody {
            stream_id: answer.stream_id,
            version: answer.version,
            position: answer.position,
        },
    })
}

/// Registers a customer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterCustomer {
    /// Made up (UUID v7) when absent.
    #[serde(default)]
    pub customer_id: Option<Uuid>,
    /// 1 to 200 characters after trimming.
    pub name: String,
    /// Like `name@example.com`.
    pub email: String,
}

/// Renames a customer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameCustomer {
    pub name: String,
}

/// Changes a customer's email address.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeCustomerEmail {
    pub email: String,
}

/// Adds a product to the catalogue.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddProduct {
    /// Made up (UUID v7) when absent.
    #[serde(default)]
    pub product_id: Option<Uuid>,
    /// ASCII letters, digits, `-`, `_`, `.`; at most 64.
    pub sku: String,
    pub name: String,
    /// Unit price in minor units (cents), 0 or more.
    #[serde(deserialize_with = "non_negative")]
    #[schema(minimum = 0)]
    pub price_minor: i64,
    /// ISO 4217 code, e.g. `EUR`; fixed for the product's life.
    pub currency: String,
    /// Initial stock, 0 or more.
    #[serde(deserialize_with = "non_negative")]
    #[schema(minimum = 0)]
    pub stock: i64,
}

/// Adds units to a product's stock.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestockProduct {
    /// At least 1.
    #[serde(deserialize_with = "non_negative")]
    #[schema(minimum = 1)]
    pub quantity: i64,
}

/// Changes a product's unit price (in its currency).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeProductPrice {
    #[serde(deserialize_with = "non_negative")]
    #[schema(minimum = 0)]
    pub price_minor: i64,
}

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

/// Places an order, reserving the stock of every line in the same atomic commit.
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

/// Register a customer.
#[utoipa::path(
    post,
    path = "/v1/customers",
    tag = "customers",
    request_body = RegisterCustomer,
    responses(
        (status = 201, description = "registered", body = CommandAnswerBody),
        (status = 409, description = "`already_exists`", body = ErrorBody),
        (status = 422, description = "`invalid` name or email", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn register_customer(
    State(state): State<HttpState>,
    meta: CommandMeta,
    ApiJson(body): ApiJson<RegisterCustomer>,
) -> Result<Answered, ApiError> {
    let ctx = meta.context(&body);
    let id = body.customer_id.unwrap_or_else(Uuid::now_v7);
    let command = CustomerCommand::Register {
        customer_id: id,
        name: body.name,
        email: body.email,
    };
    let result = state.handler.customer(&ctx, id, command).await;
    answer(StatusCode::CREATED, result)
}

/// Rename a customer.
#[utoipa::path(
    post,
    path = "/v1/customers/{id}/rename",
    tag = "customers",
    params(("id" = Uuid, Path, description = "the customer's id")),
    request_body = RenameCustomer,
    responses(
        (status = 200, description = "renamed (or already had that name)", body = CommandAnswerBody),
        (status = 404, description = "no such customer", body = ErrorBody),
        (status = 409, description = "`conflict`: stale `If-Match`", body = ErrorBody),
        (status = 422, description = "`invalid` name", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn rename_customer(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
    meta: CommandMeta,
    ApiJson(body): ApiJson<RenameCustomer>,
) -> Result<Answered, ApiError> {
    let ctx = meta.context(&body);
    let command = CustomerCommand::Rename {
        customer_id: id,
        name: body.name,
    };
    let result = state.handler.customer(&ctx, id, command).await;
    answer(StatusCode::OK, result)
}

/// Change a customer's email address.
#[utoipa::path(
    post,
    path = "/v1/customers/{id}/change-email",
    tag = "customers",
    params(("id" = Uuid, Path, description = "the customer's id")),
    request_body = ChangeCustomerEmail,
    responses(
        (status = 200, description = "changed (or already that address)", body = CommandAnswerBody),
        (status = 404, description = "no such customer", body = ErrorBody),
        (status = 409, description = "`conflict`: stale `If-Match`", body = ErrorBody),
        (status = 422, description = "`invalid` email", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn change_customer_email(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
    meta: CommandMeta,
    ApiJson(body): ApiJson<ChangeCustomerEmail>,
) -> Result<Answered, ApiError> {
    let ctx = meta.context(&body);
    let command = CustomerCommand::ChangeEmail {
        customer_id: id,
        email: body.email,
    };
    let result = state.handler.customer(&ctx, id, command).await;
    answer(StatusCode::OK, result)
}

/// Add a product.
#[utoipa::path(
    post,
    path = "/v1/products",
    tag = "products",
    request_body = AddProduct,
    responses(
        (status = 201, description = "added", body = CommandAnswerBody),
        (status = 409, description = "`already_exists`", body = ErrorBody),
        (status = 422, description = "`invalid` sku, name, price, currency or stock", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn add_product(
    State(state): State<HttpState>,
    meta: CommandMeta,
    ApiJson(body): ApiJson<AddProduct>,
) -> Result<Answered, ApiError> {
    let ctx = meta.context(&body);
    let id = body.product_id.unwrap_or_else(Uuid::now_v7);
    let command = ProductCommand::Add {
        product_id: id,
        sku: body.sku,
        name: body.name,
        price_minor: body.price_minor,
        currency: body.currency,
        stock: body.stock,
    };
    let result = state.handler.product(&ctx, id, command).await;
    answer(StatusCode::CREATED, result)
}

/// Restock a product.
#[utoipa::path(
    post,
    path = "/v1/products/{id}/restock",
    tag = "products",
    params(("id" = Uuid, Path, description = "the product's id")),
    request_body = RestockProduct,
    responses(
        (status = 200, description = "restocked", body = CommandAnswerBody),
        (status = 404, description = "no such product", body = ErrorBody),
        (status = 409, description = "`conflict` or `rejected` (stock would exceed the maximum)", body = ErrorBody),
        (status = 422, description = "`invalid` quantity", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn restock_product(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
    meta: CommandMeta,
    ApiJson(body): ApiJson<RestockProduct>,
) -> Result<Answered, ApiError> {
    let ctx = meta.context(&body);
    let command = ProductCommand::Restock {
        product_id: id,
        quantity: body.quantity,
    };
    let result = state.handler.product(&ctx, id, command).await;
    answer(StatusCode::OK, result)
}

/// Change a product's price.
#[utoipa::path(
    post,
    path = "/v1/products/{id}/change-price",
    tag = "products",
    params(("id" = Uuid, Path, description = "the product's id")),
    request_body = ChangeProductPrice,
    responses(
        (status = 200, description = "changed (or already that price)", body = CommandAnswerBody),
        (status = 404, description = "no such product", body = ErrorBody),
        (status = 409, description = "`conflict`: stale `If-Match`", body = ErrorBody),
        (status = 422, description = "`invalid` price", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn change_product_price(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
    meta: CommandMeta,
    ApiJson(body): ApiJson<ChangeProductPrice>,
) -> Result<Answered, ApiError> {
    let ctx = meta.context(&body);
    let command = ProductCommand::ChangePrice {
        product_id: id,
        price_minor: body.price_minor,
    };
    let result = state.handler.product(&ctx, id, command).await;
    answer(StatusCode::OK, result)
}

/// Place an order: `OrderPlaced` and one stock reservation per line, in one atomic commit.
#[utoipa::path(
    post,
    path = "/v1/orders",
    tag = "orders",
    request_body = PlaceOrderBody,
    responses(
        (status = 201, description = "placed", body = CommandAnswerBody),
        (status = 404, description = "unknown customer or product", body = ErrorBody),
        (status = 409, description = "`insufficient_stock`, `already_exists`, `rejected` or `conflict`", body = ErrorBody),
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
    let order_id = body.order_id.unwrap_or_else(Uuid::now_v7);
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
    let result = state.handler.place_order(&ctx, command).await;
    answer(StatusCode::CREATED, result)
}

/// Confirm a placed order.
#[utoipa::path(
    post,
    path = "/v1/orders/{id}/confirm",
    tag = "orders",
    params(("id" = Uuid, Path, description = "the order's id")),
    request_body(content = EmptyBody, description = "`{}` or no body"),
    responses(
        (status = 200, description = "confirmed", body = CommandAnswerBody),
        (status = 404, description = "no such order", body = ErrorBody),
        (status = 409, description = "`rejected` (not placed) or `conflict`", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn confirm_order(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
    meta: CommandMeta,
    body: EmptyBody,
) -> Result<Answered, ApiError> {
    let ctx = meta.context(&body);
    let result = state
        .handler
        .order(&ctx, id, OrderCommand::Confirm { order_id: id })
        .await;
    answer(StatusCode::OK, result)
}

/// Cancel a placed or confirmed order and release its stock.
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
    };
    let result = state.handler.cancel_order(&ctx, command).await;
    answer(StatusCode::OK, result)
}

/// Ship a confirmed order.
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
    let result = state.handler.order(&ctx, id, command).await;
    answer(StatusCode::OK, result)
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
        .handler
        .order(&ctx, id, OrderCommand::Deliver { order_id: id })
        .await;
    answer(StatusCode::OK, result)
}
