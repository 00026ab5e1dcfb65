//! The operations endpoints: `/health`, `/ready`, `/metrics`, `/openapi.json` (documented here
//! for the OpenAPI document; the service kit answers the common ones). The edge every request
//! passes is the service kit's.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use projections::Projection as _;
use service_kit::auth::{Auth, Scope};
use service_kit::http::{ApiError, Health, chain, openapi};
use utoipa::OpenApi;

use crate::ReadState;

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, description = "the process runs", body = Object)))]
pub(crate) async fn health() -> Json<Health> {
    service_kit::http::health().await
}

/// Readiness: 200 when the read database and the analytics sink answer within 2 s.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "the read databases answer", body = Object),
              (status = 503, description = "a read database does not answer", body = service_kit::http::ErrorBody)))]
pub(crate) async fn ready(State(state): State<ReadState>) -> Result<Json<Health>, ApiError> {
    let checks = async {
        let version = state
            .db()
            .live_version(projections::analytics::NAME)
            .await?
            .unwrap_or(1);
        Ok::<bool, projections::ProjectionError>(state.analytics(version).healthy().await)
    };
    let unavailable = |message: &str| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
    match tokio::time::timeout(Duration::from_secs(2), checks).await {
        Ok(Ok(true)) => Ok(Json(Health {
            status: "ready",
            head_position: None,
        })),
        Ok(Ok(false)) => Err(unavailable("the analytics database does not answer")),
        Ok(Err(e)) => {
            tracing::warn!(error = %chain(&e), "not ready: the read database failed");
            Err(ApiError::unavailable("a read database"))
        }
        Err(_) => Err(unavailable("the read databases did not answer within 2 s")),
    }
}

/// Prometheus metrics, text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", body = String)))]
pub(crate) async fn metrics(State(state): State<ReadState>) -> Response {
    service_kit::http::metrics(&state.metrics)
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
        crate::dashboard::customers,
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
    components(schemas(service_kit::http::ErrorBody, service_kit::http::ErrorObject))
)]
pub(crate) struct ApiDoc;

/// The read API's document as a process with `auth` serves it: every `/v1/...` route needs
/// the `read` scope when tokens are configured, and nothing is said of tokens otherwise.
pub fn api_doc(auth: &Auth) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for (path, item) in doc.paths.paths.iter_mut() {
        if let (true, Some(op)) = (path.starts_with("/v1/"), item.get.as_mut()) {
            openapi::require_scope(op, Scope::Read.as_str());
        }
    }
    openapi::declare_security(&mut doc, auth);
    doc
}

/// This API's OpenAPI document, generated from the code.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI document", body = Object)))]
pub(crate) async fn openapi(State(state): State<ReadState>) -> Response {
    let document = state.openapi.get_or_init(|| {
        api_doc(&state.auth)
            .to_json()
            .unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    });
    ([(header::CONTENT_TYPE, "application/json")], document.clone()).into_response()
}
