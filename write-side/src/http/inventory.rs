//! The inventory service's routes: products, prices and stock, and the reservations of stock
//! for orders that the orders service asks for (one per order line, with an idempotency key of
//! its own, so that a repeated call reserves once).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use event_schemas::{Category, Service};
use event_store::Until;
use serde::{Deserialize, Serialize};
use service_kit::http::{ApiError, ErrorBody};
use utoipa::ToSchema;
use uuid::Uuid;

use super::HttpState;
use super::answer::{Answered, CommandAnswerBody, answer};
use super::extract::{ApiJson, CommandMeta, EmptyBody, IdPath, ProductOrderPath, non_negative};
use crate::domain::{Product, ProductCommand};
use crate::{CommandAnswer, CommandHandler, Loaded};

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
    let id = body.product_id.unwrap_or_else(|| meta.new_id(Category::Product));
    let command = ProductCommand::Add {
        product_id: id,
        sku: body.sku,
        name: body.name,
        price_minor: body.price_minor,
        currency: body.currency,
        stock: body.stock,
    };
    let result = state.handler(Service::Inventory)?.product(&ctx, id, command).await;
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
    let result = state.handler(Service::Inventory)?.product(&ctx, id, command).await;
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
    let result = state.handler(Service::Inventory)?.product(&ctx, id, command).await;
    answer(StatusCode::OK, result)
}

/// Reserves stock of a product for an order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveStockBody {
    pub order_id: Uuid,
    /// At least 1.
    #[serde(deserialize_with = "non_negative")]
    #[schema(minimum = 1)]
    pub quantity: i64,
}

/// A reservation: the command's answer, and the product as it was when its stock was reserved
/// (the sku, name and price the order captures: the authority for the price).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReservationView {
    #[serde(flatten)]
    pub answer: CommandAnswerBody,
    pub product_id: Uuid,
    pub order_id: Uuid,
    pub quantity: i64,
    pub sku: String,
    pub name: String,
    pub unit_price_minor: i64,
    pub currency: String,
}

/// A product as its stream tells it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProductStateView {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub price_minor: i64,
    pub currency: String,
    /// Units not reserved for any order.
    pub available: i64,
    pub version: u64,
    pub position: u64,
}

/// Reserve stock for an order (the orders service calls this, one line at a time).
#[utoipa::path(
    post,
    path = "/v1/products/{id}/reservations",
    tag = "products",
    params(("id" = Uuid, Path, description = "the product's id")),
    request_body = ReserveStockBody,
    responses(
        (status = 201, description = "reserved (or already reserved for this order)", body = ReservationView),
        (status = 404, description = "no such product", body = ErrorBody),
        (status = 409, description = "`insufficient_stock`, `rejected` (another quantity already reserved for the order) or `conflict`", body = ErrorBody),
        (status = 422, description = "`invalid` quantity", body = ErrorBody),
    ),
    security(("bearer" = ["service"]))
)]
pub(crate) async fn reserve_stock(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
    meta: CommandMeta,
    ApiJson(body): ApiJson<ReserveStockBody>,
) -> Result<(StatusCode, Json<ReservationView>), ApiError> {
    let ctx = meta.context(&body);
    let handler = state.handler(Service::Inventory)?;
    let command = ProductCommand::ReserveStock {
        product_id: id,
        order_id: body.order_id,
        quantity: body.quantity,
    };
    let answer = handler.product(&ctx, id, command).await?;
    let product = as_reserved(handler, id, &answer).await?;
    let price = product
        .state
        .price
        .ok_or_else(|| ApiError::not_found(Category::Product.name(), id))?;
    Ok((
        StatusCode::CREATED,
        Json(ReservationView {
            answer: CommandAnswerBody::new(answer),
            product_id: id,
            order_id: body.order_id,
            quantity: body.quantity,
            sku: product.state.sku,
            name: product.state.name,
            unit_price_minor: price.amount_minor,
            currency: price.currency.as_str().to_owned(),
        }),
    ))
}

/// The product as it was when `answer` reserved its stock: folded up to the reservation's
/// position, so that a price change committed right after it is not what the order captures.
async fn as_reserved(handler: &CommandHandler, id: Uuid, answer: &CommandAnswer) -> Result<Loaded<Product>, ApiError> {
    Ok(handler
        .load::<Product>(id, Some(Until::Position(answer.position)))
        .await?)
}

/// Release everything reserved for an order (nothing to release appends nothing).
#[utoipa::path(
    post,
    path = "/v1/products/{id}/reservations/{order_id}/release",
    tag = "products",
    params(
        ("id" = Uuid, Path, description = "the product's id"),
        ("order_id" = Uuid, Path, description = "the order whose reservation goes"),
    ),
    request_body(content = EmptyBody, description = "`{}` or no body"),
    responses(
        (status = 200, description = "released (or nothing was reserved)", body = CommandAnswerBody),
        (status = 404, description = "no such product", body = ErrorBody),
    ),
    security(("bearer" = ["service"]))
)]
pub(crate) async fn release_stock(
    State(state): State<HttpState>,
    ProductOrderPath(id, order_id): ProductOrderPath,
    meta: CommandMeta,
    body: EmptyBody,
) -> Result<Answered, ApiError> {
    let ctx = meta.context(&body);
    let command = ProductCommand::ReleaseStock {
        product_id: id,
        order_id,
    };
    let result = state.handler(Service::Inventory)?.product(&ctx, id, command).await;
    answer(StatusCode::OK, result)
}

/// What a product holds for one order now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HeldView {
    pub product_id: Uuid,
    pub order_id: Uuid,
    /// Units reserved for the order now (0: none, or released).
    pub quantity: i64,
    /// The product stream's version.
    pub version: u64,
}

/// What a product holds for an order now (the orders service's overview asks it).
#[utoipa::path(
    get,
    path = "/v1/products/{id}/reservations/{order_id}",
    tag = "products",
    params(
        ("id" = Uuid, Path, description = "the product's id"),
        ("order_id" = Uuid, Path, description = "the order"),
    ),
    responses(
        (status = 200, description = "the units held for the order (0 when none)", body = HeldView),
        (status = 404, description = "no such product", body = ErrorBody),
    ),
    security(("bearer" = ["service"]))
)]
pub(crate) async fn reservation(
    State(state): State<HttpState>,
    ProductOrderPath(id, order_id): ProductOrderPath,
) -> Result<Json<HeldView>, ApiError> {
    let loaded = state.handler(Service::Inventory)?.load::<Product>(id, None).await?;
    if !loaded.state.exists {
        return Err(ApiError::not_found(Category::Product.name(), id));
    }
    Ok(Json(HeldView {
        product_id: id,
        order_id,
        quantity: loaded.state.reserved_for(order_id),
        version: loaded.version,
    }))
}

/// One product, folded from its stream.
#[utoipa::path(
    get,
    path = "/v1/products/{id}",
    tag = "products",
    params(("id" = Uuid, Path, description = "the product's id")),
    responses(
        (status = 200, description = "the product", body = ProductStateView),
        (status = 404, description = "no such product", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn product(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
) -> Result<Json<ProductStateView>, ApiError> {
    let loaded = state.handler(Service::Inventory)?.load::<Product>(id, None).await?;
    let (true, Some(price)) = (loaded.state.exists, loaded.state.price) else {
        return Err(ApiError::not_found(Category::Product.name(), id));
    };
    Ok(Json(ProductStateView {
        product_id: id,
        sku: loaded.state.sku,
        name: loaded.state.name,
        price_minor: price.amount_minor,
        currency: price.currency.as_str().to_owned(),
        available: loaded.state.available,
        version: loaded.version,
        position: loaded.position,
    }))
}
