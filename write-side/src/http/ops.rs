//! The write side's operations endpoints: `/health`, `/ready`, `/metrics`, `/openapi.json`
//! (documented here for the OpenAPI document; the service kit answers the common ones). They
//! need no token: they show no data.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use service_kit::http::{ApiError, Health, chain};

use super::HttpState;

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, description = "the process runs", body = Health)))]
pub(crate) async fn health() -> Json<Health> {
    service_kit::http::health().await
}

/// Readiness: 200 when the event store of every hosted service answers within 2 s and the relay
/// of this process (if it leads) has its batches acknowledged; 503 `unavailable` otherwise.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    responses(
        (status = 200, description = "the event store answers", body = Health),
        (status = 503, description = "the event store does not answer", body = service_kit::http::ErrorBody)
    )
)]
pub(crate) async fn ready(State(state): State<HttpState>) -> Result<Json<Health>, ApiError> {
    if let Some(trouble) = state.relay_trouble() {
        tracing::warn!(%trouble, "not ready: the relay is not publishing");
        return Err(ApiError::unavailable("the event store"));
    }
    let heads = async {
        let mut highest = 0;
        for (_, handler) in state.services().iter() {
            highest = highest.max(handler.store().head_position().await?);
        }
        Ok::<u64, event_store::StoreError>(highest)
    };
    match tokio::time::timeout(Duration::from_secs(2), heads).await {
        Ok(Ok(head)) => Ok(Json(Health {
            status: "ready",
            head_position: Some(head),
        })),
        Ok(Err(e)) => {
            tracing::warn!(error = %chain(&e), "not ready: the event store failed");
            Err(ApiError::unavailable("the event store"))
        }
        Err(_) => {
            tracing::warn!("not ready: the event store did not answer within 2 s");
            Err(ApiError::unavailable("the event store"))
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
    service_kit::http::metrics(&state.metrics)
}

/// This API's OpenAPI document, generated from the code.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object))
)]
pub(crate) async fn openapi(State(state): State<HttpState>) -> Response {
    state.openapi_json()
}
