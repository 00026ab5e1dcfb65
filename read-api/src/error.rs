//! [`ApiError`]: every error the read API answers, as
//! `{"error": {"code": "...", "message": "...", "details": {...}}}` (the same format as the
//! write side's).
//!
//! | status | code | when |
//! |---|---|---|
//! | 400 | `bad_request` | an unknown, repeated or malformed query parameter, a limit out of range, a bad cursor |
//! | 404 | `not_found` | an unknown route, order or customer |
//! | 405 | `method_not_allowed` | the route exists with another method |
//! | 500 | `internal` | stored data could not be read (logged) |
//! | 503 | `not_caught_up` | `min_position` was not applied within the wait; `details.position` says how far it is |
//! | 503 | `unavailable` | a read database failed (logged); retry later |
//! | 503 | `timeout` | the request took longer than the configured timeout |

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use projections::ProjectionError;
use projections::dashboard::QueryError;
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

/// An error answer: status, stable code, message, details.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Map<String, Value>,
}

/// The error body, for the OpenAPI document.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

/// What went wrong: see the module doc for the codes.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    pub code: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub details: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Map::new(),
        }
    }

    /// Adds a detail.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// 400 about one query parameter.
    pub fn parameter(parameter: &str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message).with("parameter", parameter)
    }

    pub fn not_found(what: &str, id: impl Into<Value>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no such {what}")).with("id", id)
    }

    pub fn no_route(path: &str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").with("path", path)
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route has another method",
        )
        .with("method", method)
        .with("path", path)
    }

    /// 503: the projection has not applied `min_position` yet.
    pub fn not_caught_up(projection: &str, min_position: u64, position: u64, waited_ms: u64) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_caught_up",
            format!("{projection} has applied position {position}, not yet {min_position}; retry later"),
        )
        .with("projection", projection)
        .with("min_position", min_position)
        .with("position", position)
        .with("waited_ms", waited_ms)
    }

    /// 503 with a generic message; the cause is logged here, never sent.
    pub fn unavailable(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error = %chain(cause), "read database failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "a read database is unavailable; retry later",
        )
    }

    /// 500 with a generic message; the cause is logged here, never sent.
    pub fn internal(cause: &str) -> Self {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }

    pub fn timeout(seconds: f64) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request took too long")
            .with("timeout_seconds", seconds)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message, "details": self.details}});
        (self.status, Json(body)).into_response()
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> Self {
        match error {
            QueryError::Invalid { parameter, message } => ApiError::parameter(parameter, message),
            QueryError::Database(e) => ApiError::unavailable(&e),
            QueryError::Inconsistent(e) => ApiError::internal(&e),
        }
    }
}

impl From<ProjectionError> for ApiError {
    fn from(error: ProjectionError) -> Self {
        match error {
            ProjectionError::Invalid(message) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message),
            ProjectionError::Inconsistent(message) => ApiError::internal(&message),
            other => ApiError::unavailable(&other),
        }
    }
}

/// An error with its causes, `a: b: c`.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
