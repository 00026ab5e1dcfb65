//! [`ApiError`]: the one error answer of every orderflow service, as
//! `{"error": {"code": "...", "message": "...", "details": {...}}}`.
//!
//! The `code` is stable and machine-readable (clients match on it: never rename one); the
//! `message` is for people; `details` names the offending field or the state that refused the
//! request. Infrastructure failures answer a generic message: their detail goes to the log
//! (with the request's span), never into the body.

use std::error::Error as StdError;
use std::fmt;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// An HTTP error answer: status, stable code, message and details.
///
/// | status | code | when |
/// |---|---|---|
/// | 400 | `invalid_json` | the body is not JSON (syntax error, truncated, trailing data) |
/// | 400 | `bad_request` | a field is missing, unknown, of the wrong type, negative or too large; a bad path id, query parameter or header |
/// | 401 | `unauthorized` | no bearer token, or one the service does not know |
/// | 403 | `forbidden` | the token lacks the route's scope |
/// | 404 | `not_found` | unknown route, or the resource does not exist |
/// | 405 | `method_not_allowed` | the route exists with another method |
/// | 409 | `conflict` | `If-Match` was stale, concurrent writers kept winning, or the resource is busy |
/// | 409 | `already_exists` / `rejected` / `insufficient_stock` | the domain refused the command in this state |
/// | 413 | `payload_too_large` | the body is larger than the configured limit |
/// | 415 | `unsupported_media_type` | a body that is not `application/json` |
/// | 422 | `invalid` | the domain refused a field's value (empty name, bad email, zero quantity) |
/// | 422 | `idempotency_key_reused` | the `Idempotency-Key` came before with a different request |
/// | 500 | `internal` | stored data could not be read (logged) |
/// | 501 | `not_supported` | the store cannot run this command |
/// | 503 | `unavailable` | a database failed (logged); retry later |
/// | 503 | `not_caught_up` | a read's `min_position` was not applied within the wait |
/// | 503 | `timeout` | the request took longer than the configured timeout |
/// | 503 | `overloaded` | as many requests are in flight as the service takes (`--max-in-flight`) |
///
/// Every 503 carries `Retry-After`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Map<String, Value>,
    /// The `WWW-Authenticate` challenge of a 401 or 403.
    challenge: Option<String>,
}

/// The error body, for the OpenAPI document (and for clients that want a type to parse into).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

/// What went wrong: see [`ApiError`] for the codes.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorObject {
    /// Stable, machine-readable, e.g. `invalid`, `conflict`, `insufficient_stock`.
    pub code: String,
    /// For people; may change between releases.
    pub message: String,
    /// Machine-readable context, e.g. `{"field": "lines[0].quantity"}` or
    /// `{"stream_id": "...", "expected": 2, "actual": 3}`.
    #[schema(value_type = Object)]
    pub details: Map<String, Value>,
}

/// A layer's error that knows which answer each of its variants becomes. Implement it for an
/// error enum and `?` turns that error into an [`ApiError`] in any handler.
pub trait HttpError {
    /// The answer; an infrastructure failure logs its cause here and answers generically.
    fn into_api_error(self) -> ApiError;
}

impl<E: HttpError> From<E> for ApiError {
    fn from(e: E) -> Self {
        e.into_api_error()
    }
}

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Map::new(),
            challenge: None,
        }
    }

    /// Adds `key: value` to the details.
    #[must_use]
    pub fn with_detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn details(&self) -> &Map<String, Value> {
        &self.details
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 400 `bad_request` naming the field (a body path like `lines[0].quantity`, a path
    /// parameter or a header).
    pub fn bad_field(field: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self::bad_request(format!("invalid {field}: {reason}"))
            .with_detail("field", field)
            .with_detail("reason", reason)
    }

    /// 400 `bad_request` about one query parameter.
    pub fn bad_parameter(parameter: &str, message: impl Into<String>) -> Self {
        Self::bad_request(message).with_detail("parameter", parameter)
    }

    /// 400 `bad_request` for parameters each valid alone but not together (two that exclude
    /// each other, a range whose start is after its end): `details.parameters` names them all.
    /// A rule between parameters is one an OpenAPI document cannot state, so clients (and the
    /// API fuzzer) can tell it from a malformed value.
    pub fn conflicting_parameters(parameters: &[&str], message: impl Into<String>) -> Self {
        Self::bad_request(message).with_detail("parameters", parameters.to_vec())
    }

    /// 400 `invalid_json`.
    pub fn invalid_json(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {reason}"),
        )
        .with_detail("reason", reason)
    }

    /// 415 `unsupported_media_type`.
    pub fn unsupported_media_type(got: Option<&str>) -> Self {
        let error = Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON, sent with `Content-Type: application/json`",
        )
        .with_detail("expected", "application/json");
        match got {
            Some(got) => error.with_detail("content_type", got),
            None => error,
        }
    }

    /// 413 `payload_too_large`.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        )
        .with_detail("limit_bytes", limit)
    }

    /// 401 `unauthorized`, with the `WWW-Authenticate: Bearer` challenge. `invalid_token`
    /// says a token was sent but is not one the service knows.
    pub fn unauthorized(invalid_token: bool) -> Self {
        let (message, challenge) = if invalid_token {
            (
                "the bearer token is not valid",
                r#"Bearer realm="orderflow", error="invalid_token""#,
            )
        } else {
            (
                "a bearer token is required: `Authorization: Bearer <token>`",
                r#"Bearer realm="orderflow""#,
            )
        };
        let mut error = Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        error.challenge = Some(challenge.to_owned());
        error
    }

    /// 403 `forbidden`: the token is valid but lacks `scope`.
    pub fn forbidden(scope: &str) -> Self {
        let mut error = Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the token lacks the `{scope}` scope this route needs"),
        )
        .with_detail("required_scope", scope);
        error.challenge = Some(format!(
            r#"Bearer realm="orderflow", error="insufficient_scope", scope="{scope}""#
        ));
        error
    }

    /// 404 `not_found` for a route that does not exist.
    pub fn no_route(path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("no route for {path}")).with_detail("path", path)
    }

    /// 404 `not_found` for a resource (an aggregate, a stream, a row, a projection).
    pub fn not_found(what: &str, id: impl fmt::Display) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} {id} not found"))
            .with_detail("resource", what)
            .with_detail("id", id.to_string())
    }

    /// 405 `method_not_allowed`.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )
        .with_detail("method", method)
        .with_detail("path", path)
    }

    /// 503 `timeout`: the request did not finish within `seconds`. A command may still have
    /// been applied: retry it with the same `Idempotency-Key`.
    pub fn timeout(seconds: f64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("the request did not finish within {seconds} s; retry with the same Idempotency-Key"),
        )
        .with_detail("timeout_seconds", seconds)
    }

    /// 503 `unavailable`, generic (`what`: "the event store", "a read database"): the cause is
    /// logged by the caller, never shown.
    pub fn unavailable(what: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{what} is unavailable; retry later"),
        )
    }

    /// 503 `not_caught_up`: `projection` has not applied `min_position` (a consistency token,
    /// `orders:12`) within the wait; `position` is how far it has applied that log.
    pub fn not_caught_up(projection: &str, min_position: &str, position: u64, waited_ms: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_caught_up",
            format!("{projection} has applied position {position}, not yet {min_position}; retry later"),
        )
        .with_detail("projection", projection)
        .with_detail("min_position", min_position)
        .with_detail("position", position)
        .with_detail("waited_ms", waited_ms)
    }

    /// 500 `internal`, generic: the cause is logged by the caller, never shown.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it has been logged",
        )
    }

    /// The body as an [`ErrorBody`].
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorObject {
                code: self.code.to_owned(),
                message: self.message.clone(),
                details: self.details.clone(),
            },
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl StdError for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut response = (self.status, Json(body)).into_response();
        if let Some(challenge) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// An error and its sources, one level each, joined with `: `: for logs.
pub fn chain(error: &dyn StdError) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
