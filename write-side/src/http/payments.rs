//! The payments service's routes: authorize, capture, void, refund and decline a payment, and
//! one payment's state. A payment is one attempt to pay for one order; the amounts are integer
//! minor units in the currency of the authorization.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use event_schemas::{Category, Service};
use serde::{Deserialize, Serialize};
use service_kit::http::{ApiError, ErrorBody};
use utoipa::ToSchema;
use uuid::Uuid;

use super::HttpState;
use super::answer::{Answered, CommandAnswerBody, answer};
use super::extract::{ApiJson, CommandMeta, IdPath, non_negative};
use crate::domain::{Payment, PaymentCommand};

/// Records that the provider reserved an amount for an order: starts a payment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizePaymentBody {
    /// Made up (UUID v7) when absent.
    #[serde(default)]
    pub payment_id: Option<Uuid>,
    pub order_id: Uuid,
    /// At least 1.
    #[serde(deserialize_with = "non_negative")]
    #[schema(minimum = 1)]
    pub amount_minor: i64,
    /// ISO 4217 code, e.g. `EUR`.
    pub currency: String,
}

/// An amount of a payment: what to capture or refund.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentAmountBody {
    /// At least 1.
    #[serde(deserialize_with = "non_negative")]
    #[schema(minimum = 1)]
    pub amount_minor: i64,
}

/// Why a payment is voided or declined, and for which order (a void may arrive before the
/// authorization it releases).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentReasonBody {
    pub order_id: Uuid,
    pub reason: String,
}

/// A payment as its stream tells it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PaymentStateView {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    /// `authorized`, `captured`, `refunded`, `voided` or `declined`.
    pub status: String,
    pub currency: Option<String>,
    pub authorized_minor: i64,
    pub captured_minor: i64,
    pub refunded_minor: i64,
    pub version: u64,
    pub position: u64,
}

/// Authorize a payment.
#[utoipa::path(
    post,
    path = "/v1/payments",
    tag = "payments",
    request_body = AuthorizePaymentBody,
    responses(
        (status = 201, description = "authorized", body = CommandAnswerBody),
        (status = 409, description = "`already_exists` or `rejected`", body = ErrorBody),
        (status = 422, description = "`invalid` amount or currency", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn authorize_payment(
    State(state): State<HttpState>,
    meta: CommandMeta,
    ApiJson(body): ApiJson<AuthorizePaymentBody>,
) -> Result<Answered, ApiError> {
    let ctx = meta.context(&body);
    let payment_id = body.payment_id.unwrap_or_else(|| meta.new_id(Category::Payment));
    let command = PaymentCommand::Authorize {
        payment_id,
        order_id: body.order_id,
        amount_minor: body.amount_minor,
        currency: body.currency,
    };
    let result = state
        .handler(Service::Payments)?
        .payment(&ctx, payment_id, command)
        .await;
    answer(StatusCode::CREATED, result)
}

/// Capture (part of) an authorized payment, once.
#[utoipa::path(
    post,
    path = "/v1/payments/{id}/capture",
    tag = "payments",
    params(("id" = Uuid, Path, description = "the payment's id")),
    request_body = PaymentAmountBody,
    responses(
        (status = 200, description = "captured", body = CommandAnswerBody),
        (status = 404, description = "no such payment", body = ErrorBody),
        (status = 409, description = "`rejected` (not authorized, or more than authorized) or `conflict`", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn capture_payment(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
    meta: CommandMeta,
    ApiJson(body): ApiJson<PaymentAmountBody>,
) -> Result<Answered, ApiError> {
    let ctx = meta.context(&body);
    let command = PaymentCommand::Capture {
        payment_id: id,
        amount_minor: body.amount_minor,
    };
    let result = state.handler(Service::Payments)?.payment(&ctx, id, command).await;
    answer(StatusCode::OK, result)
}

/// Void an authorization (release the provider's hold). A void that arrives before the
/// authorization is recorded, and the authorization is released as soon as it comes.
#[utoipa::path(
    post,
    path = "/v1/payments/{id}/void",
    tag = "payments",
    params(("id" = Uuid, Path, description = "the payment's id")),
    request_body = PaymentReasonBody,
    responses(
        (status = 200, description = "voided (or already void)", body = CommandAnswerBody),
        (status = 409, description = "`rejected` (captured: refund it instead) or `conflict`", body = ErrorBody),
        (status = 422, description = "`invalid` reason", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn void_payment(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
    meta: CommandMeta,
    ApiJson(body): ApiJson<PaymentReasonBody>,
) -> Result<Answered, ApiError> {
    let ctx = meta.context(&body);
    let command = PaymentCommand::Void {
        payment_id: id,
        order_id: body.order_id,
        reason: body.reason,
    };
    let result = state.handler(Service::Payments)?.payment(&ctx, id, command).await;
    answer(StatusCode::OK, result)
}

/// Refund (part of) what was captured.
#[utoipa::path(
    post,
    path = "/v1/payments/{id}/refund",
    tag = "payments",
    params(("id" = Uuid, Path, description = "the payment's id")),
    request_body = PaymentAmountBody,
    responses(
        (status = 200, description = "refunded", body = CommandAnswerBody),
        (status = 404, description = "no such payment", body = ErrorBody),
        (status = 409, description = "`rejected` (nothing captured, or more than is left) or `conflict`", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn refund_payment(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
    meta: CommandMeta,
    ApiJson(body): ApiJson<PaymentAmountBody>,
) -> Result<Answered, ApiError> {
    let ctx = meta.context(&body);
    let command = PaymentCommand::Refund {
        payment_id: id,
        amount_minor: body.amount_minor,
    };
    let result = state.handler(Service::Payments)?.payment(&ctx, id, command).await;
    answer(StatusCode::OK, result)
}

/// Record that the provider declined the payment.
#[utoipa::path(
    post,
    path = "/v1/payments/{id}/decline",
    tag = "payments",
    params(("id" = Uuid, Path, description = "the payment's id")),
    request_body = PaymentReasonBody,
    responses(
        (status = 200, description = "declined", body = CommandAnswerBody),
        (status = 409, description = "`rejected` (captured or voided) or `conflict`", body = ErrorBody),
        (status = 422, description = "`invalid` reason", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn decline_payment(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
    meta: CommandMeta,
    ApiJson(body): ApiJson<PaymentReasonBody>,
) -> Result<Answered, ApiError> {
    let ctx = meta.context(&body);
    let command = PaymentCommand::Decline {
        payment_id: id,
        order_id: body.order_id,
        reason: body.reason,
    };
    let result = state.handler(Service::Payments)?.payment(&ctx, id, command).await;
    answer(StatusCode::OK, result)
}

/// One payment, folded from its stream.
#[utoipa::path(
    get,
    path = "/v1/payments/{id}",
    tag = "payments",
    params(("id" = Uuid, Path, description = "the payment's id")),
    responses(
        (status = 200, description = "the payment", body = PaymentStateView),
        (status = 404, description = "no such payment", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn payment(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
) -> Result<Json<PaymentStateView>, ApiError> {
    let loaded = state.handler(Service::Payments)?.load::<Payment>(id, None).await?;
    if loaded.version == 0 {
        return Err(ApiError::not_found(Category::Payment.name(), id));
    }
    let payment = loaded.state;
    Ok(Json(PaymentStateView {
        payment_id: id,
        order_id: payment.order_id,
        status: payment.status.as_str().to_owned(),
        currency: payment.currency.map(|c| c.as_str().to_owned()),
        authorized_minor: payment.authorized_minor,
        captured_minor: payment.captured_minor,
        refunded_minor: payment.refunded_minor,
        version: loaded.version,
        position: loaded.position,
    }))
}
