//! The orders service's routes around the place-order saga: a saga's state, the parked ones,
//! retrying and abandoning one (scope `admin`); the services it calls and their circuit
//! breakers; an order's overview composed live from the three services.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use service_kit::http::{ApiError, ErrorBody};
use utoipa::ToSchema;
use uuid::Uuid;

use super::HttpState;
use super::answer::Answered;
use super::extract::{CommandMeta, EmptyBody, IdPath};
use crate::orders::{Overview, SagaView, ServiceHealth};

/// Why an operator abandons a parked saga.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AbandonSagaBody {
    pub reason: String,
}

/// The parked sagas this process knows of.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ParkedSagas {
    pub order_ids: Vec<Uuid>,
}

/// The services the orders service calls.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServicesView {
    pub services: Vec<ServiceHealth>,
}

/// The saga of an order: where it is, why it compensates or is parked.
#[utoipa::path(
    get,
    path = "/v1/sagas/{id}",
    tag = "sagas",
    params(("id" = Uuid, Path, description = "the order's id")),
    responses(
        (status = 200, description = "the saga", body = SagaView),
        (status = 404, description = "no saga for this order", body = ErrorBody),
    ),
    security(("bearer" = ["admin"]))
)]
pub(crate) async fn saga(State(state): State<HttpState>, IdPath(id): IdPath) -> Result<Json<SagaView>, ApiError> {
    Ok(Json(state.orders()?.saga(id).await?))
}

/// The parked sagas: stopped on an answer they cannot act on, waiting for an operator.
#[utoipa::path(
    get,
    path = "/v1/sagas/parked",
    tag = "sagas",
    responses((status = 200, description = "the parked sagas' order ids", body = ParkedSagas)),
    security(("bearer" = ["admin"]))
)]
pub(crate) async fn parked(State(state): State<HttpState>) -> Result<Json<ParkedSagas>, ApiError> {
    Ok(Json(ParkedSagas {
        order_ids: state.orders()?.parked(),
    }))
}

/// Retry a parked saga: the step it stopped at is tried again.
#[utoipa::path(
    post,
    path = "/v1/sagas/{id}/retry",
    tag = "sagas",
    params(("id" = Uuid, Path, description = "the order's id")),
    request_body(content = super::EmptyBody, description = "`{}` or no body"),
    responses(
        (status = 200, description = "resumed", body = super::CommandAnswerBody),
        (status = 404, description = "no saga for this order", body = ErrorBody),
        (status = 409, description = "`rejected`: the saga is not parked", body = ErrorBody),
    ),
    security(("bearer" = ["admin"]))
)]
pub(crate) async fn retry(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
    meta: CommandMeta,
    body: EmptyBody,
) -> Result<Answered, ApiError> {
    let ctx = meta.context(&body);
    let answer = state.orders()?.retry_saga(&ctx, id).await?;
    Ok(Answered::new(StatusCode::OK, answer))
}

/// Abandon a parked saga: it compensates (releases the stock, voids the payment) and cancels
/// the order with `reason_code` `abandoned`.
#[utoipa::path(
    post,
    path = "/v1/sagas/{id}/abandon",
    tag = "sagas",
    params(("id" = Uuid, Path, description = "the order's id")),
    request_body = AbandonSagaBody,
    responses(
        (status = 200, description = "abandoned: it compensates", body = super::CommandAnswerBody),
        (status = 404, description = "no saga for this order", body = ErrorBody),
        (status = 409, description = "`rejected`: the saga is not parked", body = ErrorBody),
    ),
    security(("bearer" = ["admin"]))
)]
pub(crate) async fn abandon(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
    meta: CommandMeta,
    super::extract::ApiJson(body): super::extract::ApiJson<AbandonSagaBody>,
) -> Result<Answered, ApiError> {
    let ctx = meta.context(&body);
    let answer = state.orders()?.abandon_saga(&ctx, id, body.reason).await?;
    Ok(Answered::new(StatusCode::OK, answer))
}

/// The services the orders service calls: each one's health (its `/health`, asked now) and its
/// circuit breaker's state.
#[utoipa::path(
    get,
    path = "/v1/services",
    tag = "sagas",
    responses((status = 200, description = "each service the orders service calls", body = ServicesView)),
    security(("bearer" = ["admin"]))
)]
pub(crate) async fn services(
    State(state): State<HttpState>,
    meta: CommandMeta,
) -> Result<Json<ServicesView>, ApiError> {
    Ok(Json(ServicesView {
        services: state.orders()?.services(&meta.call()).await,
    }))
}

/// An order with its reservations and its payment, composed live from the orders, inventory
/// and payments services (no read model). A service that does not answer leaves its part
/// `null` and is named in `missing`; the order itself is the orders service's own.
#[utoipa::path(
    get,
    path = "/v1/orders/{id}/overview",
    tag = "orders",
    params(("id" = Uuid, Path, description = "the order's id")),
    responses(
        (status = 200, description = "the order, its reservations and its payment", body = Overview),
        (status = 404, description = "no such order", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn overview(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
    meta: CommandMeta,
) -> Result<Json<Overview>, ApiError> {
    Ok(Json(state.orders()?.overview(id, &meta.call()).await?))
}
