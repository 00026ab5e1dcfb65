//! [`edge`]: the outermost middleware of every service. It reads or makes the correlation id,
//! makes the request id, sheds a `/v1` request past the bound on requests in flight, runs the
//! request in a span with a timeout, turns a panic into a 500, records the request's latency
//! per route, and echoes both ids on the answer.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::FutureExt as _;
use tracing::Instrument;
use uuid::Uuid;

use super::{ApiError, InFlightLimit, single_header, visible_ascii};

/// `X-Correlation-Id`: taken from the request (or made up) and echoed on the answer; it travels
/// into every event a command appends.
pub const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
/// `X-Request-Id`: this request's id, the causation id of the events it appends.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Counter of answered requests, labelled `method`, `route` (the route template, e.g.
/// `/v1/orders/{id}/confirm`, or `unmatched`) and `status`.
pub const REQUESTS_TOTAL: &str = "http_requests_total";
/// Histogram of request latency in seconds, with the same labels.
pub const REQUEST_DURATION: &str = "http_request_duration_seconds";

/// The edge's settings: its state in `from_fn_with_state(Edge { .. }, edge)`.
#[derive(Debug, Clone)]
pub struct Edge {
    /// Longest a request may take; a slower one is answered 503 `timeout`.
    pub request_timeout: Duration,
    /// The bound on `/v1` requests in flight (503 `overloaded` past it); `None`: unbounded.
    pub in_flight: Option<InFlightLimit>,
}

/// Who asked, put into the request's extensions by [`edge`] for the handlers.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// From `X-Correlation-Id`, or a new UUID v7.
    pub correlation_id: String,
    /// A new UUID v7 per request: the causation id of the events it appends.
    pub request_id: Uuid,
}

impl RequestContext {
    /// A context of its own (no correlation id given): both ids are the new request id.
    pub fn new() -> Self {
        let request_id = Uuid::now_v7();
        RequestContext {
            correlation_id: request_id.to_string(),
            request_id,
        }
    }
}

impl Default for RequestContext {
    fn default() -> Self {
        Self::new()
    }
}

/// The middleware; see the module doc.
pub async fn edge(State(edge): State<Edge>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let mut context = RequestContext::new();
    let correlation = single_header(req.headers(), CORRELATION_ID.as_str())
        .and_then(|v| v.map(|v| visible_ascii("X-Correlation-Id", v)).transpose());
    let mut response = match correlation {
        Err(e) => e.into_response(),
        Ok(correlation) => {
            if let Some(id) = correlation {
                context.correlation_id = id;
            }
            req.extensions_mut().insert(context.clone());
            let admitted = match &edge.in_flight {
                Some(limit) if req.uri().path().starts_with("/v1/") => limit.admit().map(Some),
                _ => Ok(None),
            };
            match admitted {
                Err(overloaded) => overloaded.into_response(),
                Ok(_place) => run(req, next, &method, &route, &context, edge.request_timeout).await,
            }
        }
    };
    let status = response.status();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&context.correlation_id) {
        headers.insert(CORRELATION_ID, value);
    }
    if let Ok(value) = HeaderValue::from_str(&context.request_id.to_string()) {
        headers.insert(REQUEST_ID, value);
    }
    // Bounded label values: the route template (never the concrete path) and the standard
    // methods only.
    let method_label = match method {
        Method::GET | Method::POST | Method::PUT | Method::PATCH | Method::DELETE | Method::HEAD | Method::OPTIONS => {
            method.as_str().to_owned()
        }
        _ => "other".to_owned(),
    };
    let labels = [
        ("method", method_label),
        ("route", route),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!(REQUESTS_TOTAL, &labels).increment(1);
    metrics::histogram!(REQUEST_DURATION, &labels).record(started.elapsed().as_secs_f64());
    tracing::debug!(
        %method,
        status = status.as_u16(),
        request_id = %context.request_id,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "answered"
    );
    response
}

/// Runs the request in its span, within `timeout`; a panic in a handler is a bug, answered 500
/// in the error format rather than a dropped connection.
async fn run(
    req: Request,
    next: Next,
    method: &Method,
    route: &str,
    context: &RequestContext,
    timeout: Duration,
) -> Response {
    let span = tracing::info_span!(
        "http",
        %method,
        route = %route,
        request_id = %context.request_id,
        correlation_id = %context.correlation_id,
        principal = tracing::field::Empty,
    );
    let run = AssertUnwindSafe(next.run(req).instrument(span.clone())).catch_unwind();
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(response)) => response,
        Ok(Err(panic)) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            span.in_scope(|| tracing::error!(panic = %message, "handler panicked"));
            ApiError::internal().into_response()
        }
        Err(_) => {
            span.in_scope(|| tracing::warn!(timeout_s = timeout.as_secs_f64(), "request timed out"));
            ApiError::timeout(timeout.as_secs_f64()).into_response()
        }
    }
}
