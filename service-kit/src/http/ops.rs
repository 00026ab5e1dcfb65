//! The operations answers every service gives the same way. They need no token: they show no
//! data. `/ready` is each service's own (it knows what it depends on).

use std::sync::OnceLock;

use axum::Json;
use axum::http::{Method, Uri, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiError;

/// `/health` and `/ready` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `ready`.
    pub status: &'static str,
    /// With a write service's `/ready`: its store's head position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_position: Option<u64>,
}

/// Liveness: 200 while the process runs.
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        head_position: None,
    })
}

/// `/metrics`: what `handle` renders, in Prometheus's text format.
pub fn metrics(handle: &PrometheusHandle) -> Response {
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        handle.render(),
    )
        .into_response()
}

/// `/openapi.json`: the document `make` generates, rendered once per process into `cache`.
pub fn openapi_json(cache: &'static OnceLock<String>, make: fn() -> utoipa::openapi::OpenApi) -> Response {
    let document = cache.get_or_init(|| make().to_json().unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#)));
    ([(header::CONTENT_TYPE, "application/json")], document.clone()).into_response()
}

/// 404 for a path no route has.
pub async fn no_route(uri: Uri) -> ApiError {
    ApiError::no_route(uri.path())
}

/// 405 for a route asked with another method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}
