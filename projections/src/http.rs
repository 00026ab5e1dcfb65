//! How the projections' errors answer over HTTP (the read API's queries, the rebuild endpoint):
//! the caller's mistakes are 400, the read database's failures a generic 503 with the cause
//! logged, inconsistent stored data a generic 500.

use service_kit::http::{ApiError, HttpError, StatusCode, chain};

use crate::ProjectionError;
use crate::dashboard::QueryError;

impl HttpError for QueryError {
    fn into_api_error(self) -> ApiError {
        match self {
            QueryError::Invalid { parameter, message } => ApiError::bad_parameter(parameter, message),
            QueryError::Database(e) => unavailable(&e),
            QueryError::Inconsistent(e) => internal(&e),
        }
    }
}

impl HttpError for ProjectionError {
    fn into_api_error(self) -> ApiError {
        match self {
            ProjectionError::Invalid(message) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message),
            ProjectionError::Inconsistent(message) => internal(&message),
            other => unavailable(&other),
        }
    }
}

fn unavailable(cause: &dyn std::error::Error) -> ApiError {
    tracing::error!(error = %chain(cause), "read database failed");
    ApiError::unavailable("a read database")
}

fn internal(cause: &str) -> ApiError {
    tracing::error!(error = %cause, "internal error");
    ApiError::internal()
}
