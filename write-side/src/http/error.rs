//! How the write side's errors answer over HTTP: [`DomainError`] and [`CommandError`] become the
//! service kit's [`ApiError`] (its module documents every code).

use axum::http::StatusCode;
use event_store::ExpectedVersion;
use serde_json::Value;
use service_kit::http::{ApiError, HttpError, chain};

use crate::CommandError;
use crate::domain::DomainError;

impl HttpError for DomainError {
    fn into_api_error(self) -> ApiError {
        let message = self.to_string();
        let code = self.code();
        match self {
            DomainError::Invalid { field, reason } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
                .with_detail("field", field)
                .with_detail("reason", reason),
            DomainError::NotFound { what, id } => ApiError::new(StatusCode::NOT_FOUND, code, message)
                .with_detail("resource", what)
                .with_detail("id", id.to_string()),
            DomainError::AlreadyExists { what, id } => ApiError::new(StatusCode::CONFLICT, code, message)
                .with_detail("resource", what)
                .with_detail("id", id.to_string()),
            DomainError::Rejected { reason } => {
                ApiError::new(StatusCode::CONFLICT, code, message).with_detail("reason", reason)
            }
            DomainError::InsufficientStock {
                product_id,
                requested,
                available,
            } => ApiError::new(StatusCode::CONFLICT, code, message)
                .with_detail("product_id", product_id.to_string())
                .with_detail("requested", requested)
                .with_detail("available", available),
        }
    }
}

impl HttpError for CommandError {
    fn into_api_error(self) -> ApiError {
        let message = self.to_string();
        match self {
            CommandError::Rejected(e) => e.into(),
            CommandError::Conflict {
                stream_id,
                expected,
                actual,
            } => ApiError::new(StatusCode::CONFLICT, "conflict", message)
                .with_detail("stream_id", stream_id)
                .with_detail("expected", expected_json(expected))
                .with_detail("actual", actual),
            CommandError::IdempotencyKeyReused { key } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different request",
            )
            .with_detail("idempotency_key", key),
            CommandError::Store(source) => {
                tracing::error!(error = %chain(&source), "event store failed");
                ApiError::unavailable("the event store")
            }
            CommandError::Corrupt { stream_id, reason } => {
                tracing::error!(%stream_id, %reason, "stored data could not be read");
                ApiError::internal()
            }
            CommandError::Unsupported(_) => ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_supported", message),
        }
    }
}

/// `Exact(v)` and `NoStream` as the version number a client compares with (`NoStream` is 0),
/// `Any` as `null`.
fn expected_json(expected: ExpectedVersion) -> Value {
    match expected {
        ExpectedVersion::Any => Value::Null,
        ExpectedVersion::NoStream => Value::from(0_u64),
        ExpectedVersion::Exact(v) => Value::from(v),
    }
}

#[cfg(test)]
mod tests {
    use event_store::AppendError;

    use super::*;

    /// A store that cannot apply a command's commit (KurrentDB and a multi-stream commit) is the
    /// server's limitation, not the caller's fault nor an outage: 501 with the store's reason.
    #[test]
    fn an_unsupported_commit_is_a_501_naming_the_reason() {
        let error = ApiError::from(CommandError::from(AppendError::Unsupported(
            "KurrentDB cannot commit to several streams atomically".into(),
        )));
        assert_eq!(error.status(), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(error.code(), "not_supported");
        assert!(error.message().contains("several streams"), "{}", error.message());
    }
}
