//! Requests to a service's router in-process, as `tower::ServiceExt::oneshot` sends them.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

/// `GET uri` on `router`: the status and the body as JSON (`null` when it is not JSON).
pub async fn get(router: &Router, uri: &str) -> (StatusCode, Value) {
    let request = Request::get(uri).body(Body::empty()).expect("a request");
    let response = router.clone().oneshot(request).await.expect("the router answers");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("the whole body").to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}
