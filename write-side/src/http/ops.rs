//! The edge every request passes ([`edge`]: correlation id, request id, span, timeout,
//! metrics) and the operations endpoints: `/health`, `/ready`, `/metrics`, `/openapi.json`.
//! The operations endpoints need no token: they show no data.

use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::FutureExt as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tracing::Instrument;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use super::HttpState;
use super::error::ApiError;
use super::extract::{single_header, visible_ascii};

/// `X-Correlation-Id`: taken from the request (or made up) and echoed on the answer.
pub(crate) const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
/// `X-Request-Id`: this request's id, the causation id of the events it appends.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Counter of answered requests, labelled `method`, `route` (the route template, e.g.
/// `/v1/orders/{id}/confirm`, or `unmatched`) and `status`.
pub const REQUESTS_TOTAL: &str = "http_requests_total";
/// Histogram of request latency in seconds, with the same labels.
pub const REQUEST_DURATION: &str = "http_request_duration_seconds";

/// Buckets of [`REQUEST_DURATION`], in seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Who asked, for the events a request appends: put into the request's extensions by [`edge`].
#[derive(Debug, Clone)]
pub(crate) struct RequestContext {
    /// From `X-Correlation-Id`, or a new UUID v7.
    pub(crate) correlation_id: String,
    /// A new UUID v7 per request: the causation id of its events.
    pub(crate) request_id: Uuid,
}

impl RequestContext {
    pub(crate) fn new() -> Self {
        let request_id = Uuid::now_v7();
        RequestContext {
            correlation_id: request_id.to_string(),
            request_id,
        }
    }
}

/// The outermost middleware: reads or makes the correlation id, makes the request id, runs
/// the request in a span with a timeout, records metrics and echoes both ids.
pub(crate) async fn edge(State(state): State<HttpState>, mut req: Request, next: Next) -> Response {
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
            let span = tracing::info_span!(
                "http",
                %method,
                route = %route,
                request_id = %context.request_id,
                correlation_id = %context.correlation_id,
                principal = tracing::field::Empty,
            );
            req.extensions_mut().insert(context.clone());
            let timeout = state.request_timeout();
            // A panic in a handler is a bug: answer 500 in the error format rather than drop
            // the connection.
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

/// The process-wide Prometheus recorder, installed on first use, with an upkeep thread. If the
/// process already has another global `metrics` recorder (an embedding program installed its
/// own), the handle renders only what it records itself: pass that program's handle in
/// [`HttpConfig::metrics`](super::HttpConfig::metrics) instead.
pub fn prometheus_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.to_owned()), DURATION_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let handle = match builder.install_recorder() {
                Ok(handle) => handle,
                Err(e) => {
                    tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics shows only its own");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".to_owned())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start the metrics upkeep thread; /metrics runs it");
            }
            handle
        })
        .clone()
}

/// `/health` and `/ready` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `ready`.
    pub status: &'static str,
    /// With `/ready`: the store's head position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_position: Option<u64>,
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, description = "the process runs", body = Health)))]
pub(crate) async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        head_position: None,
    })
}

/// Readiness: 200 when the event store answers within 2 s and the relay of this process (if it
/// leads) has its batches acknowledged; 503 `unavailable` otherwise.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    responses(
        (status = 200, description = "the event store answers", body = Health),
        (status = 503, description = "the event store does not answer", body = super::error::ErrorBody)
    )
)]
pub(crate) async fn ready(State(state): State<HttpState>) -> Result<Json<Health>, ApiError> {
    if let Some(trouble) = state.relay_trouble() {
        tracing::warn!(%trouble, "not ready: the relay is not publishing");
        return Err(ApiError::unavailable());
    }
    match tokio::time::timeout(Duration::from_secs(2), state.handler.store().head_position()).await {
        Ok(Ok(head)) => Ok(Json(Health {
            status: "ready",
            head_position: Some(head),
        })),
        Ok(Err(e)) => {
            tracing::warn!(error = %super::error::chain(&e), "not ready: the event store failed");
            Err(ApiError::unavailable())
        }
        Err(_) => {
            tracing::warn!("not ready: the event store did not answer within 2 s");
            Err(ApiError::unavailable())
        }
    }
}

/// Prometheus metrics, text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain"))
)]
pub(crate) async fn metrics(State(state): State<HttpState>) -> Response {
    state.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

/// This API's OpenAPI document, generated from the code.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object))
)]
pub(crate) async fn openapi() -> Response {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let document = DOCUMENT.get_or_init(|| {
        super::openapi::ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    });
    ([(header::CONTENT_TYPE, "application/json")], document.clone()).into_response()
}

/// 404 for a path no route has.
pub(crate) async fn no_route(uri: Uri) -> ApiError {
    ApiError::no_route(uri.path())
}

/// 405 for a route asked with another method.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}
