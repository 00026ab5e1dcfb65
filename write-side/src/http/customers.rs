//! The customers service's routes: register, rename, change email, and one customer's state
//! (what the orders service asks when its copy of the customers has not seen one yet).

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
use super::extract::{ApiJson, CommandMeta, IdPath};
use crate::domain::{Customer, CustomerCommand};

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
    let id = body.customer_id.unwrap_or_else(|| meta.new_id(Category::Customer));
    let command = CustomerCommand::Register {
        customer_id: id,
        name: body.name,
        email: body.email,
    };
    let result = state.handler(Service::Customers)?.customer(&ctx, id, command).await;
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
    let result = state.handler(Service::Customers)?.customer(&ctx, id, command).await;
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
    let result = state.handler(Service::Customers)?.customer(&ctx, id, command).await;
    answer(StatusCode::OK, result)
}

/// A customer as its stream tells it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CustomerStateView {
    pub customer_id: Uuid,
    pub name: String,
    pub email: String,
    /// Number of the customer's events.
    pub version: u64,
    /// Position of the last one in the customers service's log.
    pub position: u64,
}

/// One customer, folded from its stream.
#[utoipa::path(
    get,
    path = "/v1/customers/{id}",
    tag = "customers",
    params(("id" = Uuid, Path, description = "the customer's id")),
    responses(
        (status = 200, description = "the customer", body = CustomerStateView),
        (status = 404, description = "no such customer", body = ErrorBody),
    ),
    security(("bearer" = ["commands"]))
)]
pub(crate) async fn customer(
    State(state): State<HttpState>,
    IdPath(id): IdPath,
) -> Result<Json<CustomerStateView>, ApiError> {
    let loaded = state.handler(Service::Customers)?.load::<Customer>(id, None).await?;
    if !loaded.state.exists {
        return Err(ApiError::not_found(Category::Customer.name(), id));
    }
    Ok(Json(CustomerStateView {
        customer_id: id,
        name: loaded.state.name,
        email: loaded.state.email,
        version: loaded.version,
        position: loaded.position,
    }))
}
