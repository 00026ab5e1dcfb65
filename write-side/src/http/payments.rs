//! The payments service's routes: authorize, capture, void, refund and decline a payment, and
//! one payment's state. A payment is one attempt to pay for one order; the amounts are integer
//! minor units in the currency of the authorization.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use event_schemas::{Category, Money, Service};
use serde::{Deserialize, Serialize};
use service_kit::http::{ApiError, ErrorBody};
use utoipa::ToSchema;
use uuid::Uuid;

use super::HttpState;
use super::answer::{Answered, CommandAnswerBody, answer};
use super::extract::{ApiJson, CommandMeta, IdPath, non_negative};
use crate::domain::{Payment, PaymentCommand, PaymentStatus, validate};
use crate::gateway::{Authorization, GatewaySettings, GatewayUnavailable};

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

/// The answer to an authorization: the command's answer, and what the provider said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuthorizationAnswerBody {
    #[serde(flatten)]
    pub answer: CommandAnswerBody,
    /// `authorized`, `declined`, or `voided` (a void came first: the authorization was
    /// released as soon as it was recorded).
    pub payment_status: String,
    /// The provider's reason, when declined.
    pub decline_reason: Option<String>,
}

/// Authorize a payment: the payment provider is asked, and what it answered is recorded
/// (`PaymentAuthorized` or `PaymentDeclined`). Asking again with the same payment id gets the
/// same answer and records nothing more.
#[utoipa::path(
    post,
    path = "/v1/payments",
    tag = "payments",
    request_body = AuthorizePaymentBody,
    responses(
        (status = 201, description = "authorized, declined, or voided by a void that came first: see `payment_status`", body = AuthorizationAnswerBody),
        (status = 409, description = "`already_exists` (another authorization of this payment id) or `rejected`", body = ErrorBody),
        (status = 422, description = "`invalid` amount or currency", body = ErrorBody),
        (status = 503, description = "`gateway_unavailable`: the provider did not answer; nothing recorded, try again", body = ErrorBody),
    ),
    security(("bearer" = ["service"]))
)]
pub(crate) async fn authorize_payment(
    State(state): State<HttpState>,
    meta: CommandMeta,
    ApiJson(body): ApiJson<AuthorizePaymentBody>,
) -> Result<(StatusCode, Json<AuthorizationAnswerBody>), ApiError> {
    let ctx = meta.context(&body);
    let handler = state.handler(Service::Payments)?;
    let payment_id = body.payment_id.unwrap_or_else(|| meta.new_id(Category::Payment));
    if let Some(first) = handler.replay_of(&ctx, Category::Payment.stream_id(payment_id)).await? {
        return authorization_answer(handler, first).await;
    }
    let command = PaymentCommand::Authorize {
        payment_id,
        order_id: body.order_id,
        amount_minor: body.amount_minor,
        currency: body.currency.clone(),
    };
    let current = handler.load::<Payment>(payment_id, None).await?;
    // Only a new payment goes to the provider: a void that came first releases the
    // authorization as soon as it is recorded, and anything else is refused by the domain.
    let command = if current.state.status == PaymentStatus::NotStarted {
        let amount = Money::new(
            validate::amount("amount_minor", body.amount_minor)?,
            validate::currency("currency", &body.currency)?,
        );
        match state.gateway().authorize(payment_id, body.order_id, amount).await {
            Ok(Authorization::Authorized) => command,
            Ok(Authorization::Declined { reason }) => PaymentCommand::Decline {
                payment_id,
                order_id: body.order_id,
                reason,
            },
            Err(e) => return Err(gateway_unavailable(&e)),
        }
    } else {
        command
    };
    let answered = handler.payment(&ctx, payment_id, command).await?;
    authorization_answer(handler, answered).await
}

/// The answer to an authorization, with the payment's status as its stream tells it now.
async fn authorization_answer(
    handler: &crate::CommandHandler,
    answer: crate::CommandAnswer,
) -> Result<(StatusCode, Json<AuthorizationAnswerBody>), ApiError> {
    let id = event_schemas::parse_stream_id(&answer.stream_id)
        .map(|(_, id)| id)
        .map_err(|_| ApiError::internal())?;
    let payment = handler.load::<Payment>(id, None).await?.state;
    Ok((
        StatusCode::CREATED,
        Json(AuthorizationAnswerBody {
            answer: CommandAnswerBody::new(answer),
            payment_status: payment.status.as_str().to_owned(),
            decline_reason: payment.decline_reason,
        }),
    ))
}

/// 503 `gateway_unavailable`: the provider did not answer; nothing was recorded.
fn gateway_unavailable(error: &GatewayUnavailable) -> ApiError {
    tracing::warn!(%error, "the payment provider did not answer");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "gateway_unavailable",
        "the payment provider did not answer; nothing was recorded: try again",
    )
}

/// The simulated provider's settings.
#[utoipa::path(
    get,
    path = "/v1/gateway",
    tag = "payments",
    responses(
        (status = 200, description = "the simulated provider's settings", body = GatewaySettings),
        (status = 404, description = "the provider is not the simulated one", body = ErrorBody),
    ),
    security(("bearer" = ["admin"]))
)]
pub(crate) async fn gateway_settings(State(state): State<HttpState>) -> Result<Json<GatewaySettings>, ApiError> {
    state.handler(Service::Payments)?;
    let simulated = state.simulated_gateway().ok_or_else(not_simulated)?;
    Ok(Json(simulated.settings()))
}

/// Change the simulated provider's behaviour (decline rate, latency, outage) at run time.
#[utoipa::path(
    put,
    path = "/v1/gateway",
    tag = "payments",
    request_body = GatewaySettings,
    responses(
        (status = 200, description = "the settings now", body = GatewaySettings),
        (status = 404, description = "the provider is not the simulated one", body = ErrorBody),
        (status = 422, description = "`invalid` settings: nothing changed", body = ErrorBody),
    ),
    security(("bearer" = ["admin"]))
)]
pub(crate) async fn set_gateway_settings(
    State(state): State<HttpState>,
    ApiJson(body): ApiJson<GatewaySettings>,
) -> Result<Json<GatewaySettings>, ApiError> {
    state.handler(Service::Payments)?;
    let simulated = state.simulated_gateway().ok_or_else(not_simulated)?;
    body.validate()
        .map_err(|reason| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", reason))?;
    simulated.set(body);
    tracing::info!(settings = ?body, "the simulated payment provider's settings changed");
    Ok(Json(simulated.settings()))
}

fn not_simulated() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "this payments service does not use the simulated provider",
    )
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
    security(("bearer" = ["service"]))
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
    security(("bearer" = ["service"]))
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
    security(("bearer" = ["service"]))
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
    security(("bearer" = ["service"]))
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
