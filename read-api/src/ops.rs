//! The edge every request passes (span, timeout, latency metrics per route) and the operations
//! endpoints: `/health`, `/ready`, `/metrics`, `/openapi.json`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use projections::Projection;
use serde::Serialize;
use tracing::Instrument;
use utoipa::OpenApi;

use crate::{ApiError, ReadState};

/// Counter of answered requests, labelled `method`, `route` (the route template) and `status`.
pub const REQUESTS_TOTAL: &str = "http_requests_total";
/// Histogram of request latency in seconds, same labels.
pub const REQUEST_DURATION: &str = "http_request_duration_seconds";

const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Runs the request in a span with a timeout and records its latency per route.
pub(crate) async fn edge(State(state): State<ReadState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!("http", %method, route = %route);
    let response = match tokio::time::timeout(state.config.timeout, next.run(req).instrument(span)).await {
        Ok(response) => response,
        Err(_) => ApiError::timeout(state.config.timeout.as_secs_f64()).into_response(),
    };
    let method = match method {
        Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::DELETE | Method::PATCH | Method::OPTIONS => {
            method.as_str().to_owned()
        }
        _ => "other".to_owned(),
    };
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!(REQUESTS_TOTAL, &labels).increment(1);
    metrics::histogram!(REQUEST_DURATION, &labels).record(started.elapsed().as_secs_f64());
    response
}

/// The process-wide Prometheus recorder, installed on first use (or a local one when the
/// process already has a recorder: then pass that program's handle with `with_metrics`).
pub fn prometheus_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.to_owned()), DURATION_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                Err(e) => {
                    tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics shows only its own");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

#[derive(Debug, Serialize)]
pub(crate) struct Health {
    status: &'static str,
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, description = "the process runs", body = Object)))]
pub(crate) async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: 200 when the read database and the analytics sink answer within 2 s.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "the read databases answer", body = Object),
              (status = 503, description = "a read database does not answer", body = crate::error::ErrorBody)))]
pub(crate) async fn ready(State(state): State<ReadState>) -> Result<Json<Health>, ApiError> {
    let checks = async {
        let version = state
            .db()
            .live_version(projections::analytics::NAME)
            .await?
            .unwrap_or(1);
        Ok::<bool, projections::ProjectionError>(state.analytics(version).healthy().await)
    };
    match tokio::time::timeout(Duration::from_secs(2), checks).await {
        Ok(Ok(true)) => Ok(Json(Health { status: "ready" })),
        Ok(Ok(false)) => Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the analytics database does not answer",
        )),
        Ok(Err(e)) => Err(ApiError::unavailable(&e)),
        Err(_) => Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the read databases did not answer within 2 s",
        )),
    }
}

/// Prometheus metrics, text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", body = String)))]
pub(crate) async fn metrics(State(state): State<ReadState>) -> Response {
    state.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "orderflow read API",
        description = "Queries over the read models: the order dashboard, sales analytics and the projections' status. Every endpoint takes `min_position` for read-your-writes."
    ),
    paths(
        crate::dashboard::list,
        crate::dashboard::one,
        crate::dashboard::customer,
        crate::analytics::revenue,
        crate::analytics::top_products,
        crate::analytics::order_funnel,
        crate::analytics::delivery_durations,
        crate::status::projections,
        health,
        ready,
        metrics,
        openapi
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorObject))
)]
struct ApiDoc;

/// This API's OpenAPI document, generated from the code.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI document", body = Object)))]
pub(crate) async fn openapi() -> Response {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let document = DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    });
    ([(header::CONTENT_TYPE, "application/json")], document.clone()).into_response()
}

pub(crate) async fn no_route(uri: Uri) -> ApiError {
    ApiError::no_route(uri.path())
}

pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}
