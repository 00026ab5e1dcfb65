//! The read API's OpenAPI document says what the handlers accept: every query route declares
//! its parameters with the parsers' own rules (one `min_position` declaration everywhere, times
//! as `date-time`, enumerations, page-size bounds, UUIDs) and every status it can answer; values
//! at the edges of those declarations are accepted, values just outside them refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use read_api::{ReadConfig, ReadState};
use serde_json::Value;
use service_kit::auth::Auth;
use tower::ServiceExt as _;

/// A consistency token of any service's log: what `min_position` declares on every route.
mod support;
const TOKEN_PATTERN: &str = "^(customers|inventory|orders|payments):[0-9]{1,19}$";
const ID: &str = "018f8e8a-0000-7000-8000-000000000001";

async fn router() -> Router {
    let db = support::live_read_db("read_openapi").await;
    // A short wait: a token ahead of the projections answers 503 `not_caught_up` soon.
    let config = ReadConfig {
        wait: Duration::from_millis(50),
        ..ReadConfig::default()
    };
    read_api::router(ReadState::new(db, None, config))
}

async fn get(router: &Router, uri: &str) -> (StatusCode, Value) {
    let response = router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Accepted: answered, or found missing (an id that exists nowhere), never refused.
fn accepted(status: StatusCode) -> bool {
    status.is_success() || status == StatusCode::NOT_FOUND
}

fn parameter<'a>(op: &'a Value, name: &str) -> Option<&'a Value> {
    op["parameters"].as_array().unwrap().iter().find(|p| p["name"] == name)
}

#[tokio::test]
async fn every_query_route_declares_its_parameters_and_statuses() {
    let router = router().await;
    let document = serde_json::to_value(read_api::api_doc(&Auth::Disabled)).unwrap();
    let mut routes = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        routes += 1;
        let op = &item["get"];
        let uri = path.replace("{id}", ID);
        for status in ["400", "500", "503"] {
            let response = &op["responses"][status];
            assert_eq!(
                response["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody",
                "{path} {status}"
            );
        }
        assert!(
            op["responses"]["503"]["headers"]["Retry-After"].is_object(),
            "{path}: every 503 carries Retry-After"
        );
        assert_eq!(op["responses"]["404"].is_object(), path.contains("{id}"), "{path} 404");
        assert!(parameter(op, "X-Correlation-Id").is_some(), "{path}");
        match parameter(op, "min_position") {
            Some(min_position) => assert_eq!(
                min_position["schema"],
                serde_json::json!({"type": "string", "pattern": TOKEN_PATTERN}),
                "{path}: the same min_position everywhere"
            ),
            None => assert_eq!(path, "/v1/projections", "only the status does not wait"),
        }
        if let Some(id) = parameter(op, "id") {
            assert_eq!(id["schema"]["format"], "uuid", "{path}");
        }
        // The handler knows every parameter the route declares, and no other.
        for declared in op["parameters"].as_array().unwrap() {
            if declared["in"] != "query" {
                continue;
            }
            let name = declared["name"].as_str().unwrap();
            let (_, body) = get(&router, &format!("{uri}?{name}=x")).await;
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(!message.starts_with("unknown parameter"), "{path} {name}: {body}");
            if let Some(labels) = declared["schema"]["enum"].as_array() {
                for label in labels {
                    let label = label.as_str().unwrap();
                    let (status, body) = get(&router, &format!("{uri}?{name}={label}")).await;
                    assert!(accepted(status), "{path} {name}={label}: {status} {body}");
                }
                let (status, _) = get(&router, &format!("{uri}?{name}=__not_in_enum__")).await;
                assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {name}");
            }
            if declared["schema"]["type"] == "integer" {
                let min = declared["schema"]["minimum"].as_u64().unwrap();
                let max = declared["schema"]["maximum"].as_u64().unwrap();
                assert_eq!(min, 1, "{path} {name}");
                for (value, ok) in [(min, true), (max, true), (min - 1, false), (max + 1, false)] {
                    let (status, body) = get(&router, &format!("{uri}?{name}={value}")).await;
                    assert_eq!(accepted(status), ok, "{path} {name}={value}: {status} {body}");
                }
            }
            if declared["schema"]["format"] == "date-time" {
                for value in [
                    "2026-01-01T00:00:00.123456789%2B05:30",
                    "2026-01-01t00:00:00z",
                    "2026-01-01T00:00:00-00:00",
                    "0001-01-01T00:00:00%2B23:59",
                ] {
                    let (status, body) = get(&router, &format!("{uri}?{name}={value}")).await;
                    assert!(accepted(status), "{path} {name}={value}: {status} {body}");
                }
                // A space for the `T`, and a leap second, which the pattern excludes.
                for value in ["2026-01-01%2000:00:00Z", "2016-12-31T23:59:60Z"] {
                    let (status, _) = get(&router, &format!("{uri}?{name}={value}")).await;
                    assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {name}={value}");
                }
            }
        }
        let (status, _) = get(&router, &format!("{uri}?unknown_parameter=1")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        if op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "min_position")
        {
            let (status, _) = get(&router, &format!("{uri}?min_position=orders:0")).await;
            assert_ne!(status, StatusCode::BAD_REQUEST, "{path}");
            // Schema-valid, ahead of the projection: waited for, not refused.
            let (status, body) = get(&router, &format!("{uri}?min_position=payments:9999999999999999999")).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
            assert_eq!(body["error"]["code"], "not_caught_up", "{path}");
            for bad in [
                "12",
                "orders:",
                "orders:%2B1",
                "shipping:1",
                "orders:18446744073709551615",
            ] {
                let (status, _) = get(&router, &format!("{uri}?min_position={bad}")).await;
                assert_eq!(status, StatusCode::BAD_REQUEST, "{path} min_position={bad}");
            }
        }
    }
    assert_eq!(routes, 9, "the read API's query routes");
}

#[tokio::test]
async fn uuids_are_hyphenated_in_either_case_and_answers_stay_rfc_3339() {
    let router = router().await;
    let upper = ID.to_uppercase();
    for (uri, status) in [
        (format!("/v1/dashboard/orders/{upper}"), StatusCode::NOT_FOUND),
        (format!("/v1/dashboard/customers/{upper}"), StatusCode::NOT_FOUND),
        (format!("/v1/dashboard/orders?customer_id={upper}"), StatusCode::OK),
        (
            format!("/v1/dashboard/orders/{}", ID.replace('-', "")),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/v1/dashboard/orders?customer_id=%7B{ID}%7D"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/dashboard/orders?as_of=2026-01-01T00:00:00Z&at_position=orders:1".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1/dashboard/orders?at_position=payments:1".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        ("/v1/dashboard/orders?at_position=orders:1".to_owned(), StatusCode::OK),
        ("/v1/dashboard/orders?cursor=%2Bf".to_owned(), StatusCode::BAD_REQUEST),
    ] {
        let (got, body) = get(&router, &uri).await;
        assert_eq!(got, status, "{uri}: {body}");
    }
    // A `to` past the year 9999 in UTC is answered as the last instant RFC 3339 can write.
    let (status, body) = get(
        &router,
        "/v1/analytics/revenue?from=9999-12-31T00:00:00Z&to=9999-12-31T23:00:00-05:00",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["to"], "9999-12-31T23:59:59.999999999Z");
}
