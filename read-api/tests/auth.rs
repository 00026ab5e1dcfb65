//! Who may read: with tokens configured, every `/v1/...` route of the read API (each path of
//! its own OpenAPI document, so a new route is covered as soon as it is described) answers 401
//! without a token or with an unknown one, 403 to a token without the `read` scope, and its
//! usual answer to a `read` token; the operations endpoints stay open. No answer repeats the
//! token it was sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use read_api::{ReadConfig, ReadState};
use serde_json::Value;
use service_kit::auth::{Auth, Scope, TokenSpec};
use tower::ServiceExt as _;

mod support;
const READER: &str = "reader-secret-5f2d8a1c9e7b4a60";
const OPERATOR: &str = "operator-secret-0b6e3f92d41c7a58";
const STRANGER: &str = "stranger-secret-9c1a7e5b3d2f4068";

async fn router() -> Router {
    let db = support::live_read_db("read_auth").await;
    let auth = Auth::tokens([
        TokenSpec::from_secret("viewer", [Scope::Read], READER),
        // Everything but reading: the write side's operators' scopes do not read the dashboard.
        TokenSpec::from_secret("ops", [Scope::Commands, Scope::Admin, Scope::Service], OPERATOR),
    ]);
    read_api::router(ReadState::new(db, None, ReadConfig::default()).with_auth(auth))
}

async fn send(router: &Router, method: Method, uri: &str, authorization: Option<&str>) -> (StatusCode, String, String) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, challenge, String::from_utf8_lossy(&body).into_owned())
}

/// Every `/v1/...` path the read API describes, its parameters filled with an id that exists
/// nowhere.
async fn described_routes(router: &Router) -> Vec<String> {
    let (status, _, body) = send(router, Method::GET, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK, "/openapi.json is open: {body}");
    let document: Value = serde_json::from_str(&body).unwrap();
    let routes: Vec<String> = document["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .filter(|path| path.starts_with("/v1/"))
        .map(|path| path.replace("{id}", "018f8e8a-0000-7000-8000-000000000001"))
        .collect();
    assert!(routes.len() >= 9, "the read API describes its routes: {routes:?}");
    routes
}

#[tokio::test]
async fn every_query_route_needs_a_read_token() {
    let router = router().await;
    for route in described_routes(&router).await {
        let (status, challenge, body) = send(&router, Method::GET, &route, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{route} without a token: {body}");
        assert!(
            challenge.starts_with("Bearer"),
            "{route}: WWW-Authenticate {challenge:?}"
        );
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"]["code"], "unauthorized", "{route}: {body}");

        for (what, value) in [
            ("an unknown token", format!("Bearer {STRANGER}")),
            ("another scheme", format!("Basic {READER}")),
            ("an empty token", "Bearer ".to_owned()),
        ] {
            let (status, challenge, body) = send(&router, Method::GET, &route, Some(&value)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{route} with {what}: {body}");
            assert!(
                challenge.contains("invalid_token"),
                "{route} with {what}: {challenge:?}"
            );
            assert!(
                !body.contains(STRANGER) && !body.contains(READER),
                "{route} repeats the token: {body}"
            );
        }

        let (status, challenge, body) = send(&router, Method::GET, &route, Some(&format!("Bearer {OPERATOR}"))).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{route} with a token without `read`: {body}"
        );
        assert!(challenge.contains(r#"scope="read""#), "{route}: {challenge:?}");
        assert!(!body.contains(OPERATOR), "{route} repeats the token: {body}");

        let (status, _, body) = send(&router, Method::GET, &route, Some(&format!("bearer {READER}"))).await;
        assert!(
            status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN && !status.is_server_error(),
            "{route} with the read token: {status} {body}"
        );
    }
}

#[tokio::test]
async fn the_read_token_reads_and_the_operations_endpoints_stay_open() {
    let router = router().await;
    let reader = format!("Bearer {READER}");
    let (status, _, body) = send(&router, Method::GET, "/v1/dashboard/orders", Some(&reader)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rows: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rows["rows"], Value::Array(vec![]), "{body}");
    let (status, _, body) = send(&router, Method::GET, "/v1/projections", Some(&reader)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    for open in ["/health", "/ready", "/metrics", "/openapi.json"] {
        let (status, _, body) = send(&router, Method::GET, open, None).await;
        assert!(
            status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
            "{open} without a token: {status} {body}"
        );
    }
    // An unknown route is a 404 whoever asks, so that a scan learns nothing more with a token.
    let (status, _, _) = send(&router, Method::GET, "/v1/nothing-here", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_document_declares_the_bearer_scheme_it_enforces() {
    let router = router().await;
    let (_, _, body) = send(&router, Method::GET, "/openapi.json", None).await;
    let document: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
        "{}",
        document["components"]
    );
    for (path, item) in document["paths"].as_object().unwrap() {
        let guarded = path.starts_with("/v1/");
        let operation = &item["get"];
        let security = operation["security"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            !security.is_empty(),
            guarded,
            "{path}: security {security:?} (only the /v1 routes need a token)"
        );
        if guarded {
            for status in ["401", "403"] {
                assert!(
                    operation["responses"][status].is_object(),
                    "{path} does not describe {status}"
                );
            }
        }
    }
}
