//! Invariant 9 of docs/design.md on the read side: an id of nothing, an unknown route and a
//! method a route does not serve each answer in the error format
//! (`{"error": {"code", "message", "details"}}`, `Content-Type: application/json`), as the write
//! side's do; a 405 also says in `Allow` which methods the route serves. Both ways the read API
//! is served: its own router (`read-api`), and its query routes merged into the one port of the
//! embedded `orderflow serve`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use chrono::Utc;
use event_schemas::{
    Currency, CustomerEvent, CustomerRegistered, CustomerSnapshot, DomainEvent, OrderEvent, OrderLine, OrderPlaced,
    Service,
};
use http_body_util::BodyExt as _;
use projections::dashboard::OrderDashboard;
use projections::{Batch, Origin, ProjectedEvent, Projection};
use read_api::{ReadConfig, ReadState};
use serde_json::Value;
use service_kit::auth::Auth;
use tower::ServiceExt as _;
use uuid::Uuid;

/// A customer and an order of theirs, on the dashboard: their ids answer 200, any other 404.
struct Known {
    customer: Uuid,
    order: Uuid,
}

/// The read API's state over a live read database holding [`Known`].
async fn state() -> (ReadState, Known) {
    let db = support::live_read_db("read_errors").await;
    let known = Known {
        customer: Uuid::now_v7(),
        order: Uuid::now_v7(),
    };
    let customer = CustomerSnapshot {
        name: "Ada".to_owned(),
        email: "ada@example.com".to_owned(),
    };
    let events = [
        (
            Service::Customers,
            format!("customer-{}", known.customer),
            DomainEvent::Customer(CustomerEvent::Registered(CustomerRegistered {
                customer_id: known.customer,
                name: customer.name.clone(),
                email: customer.email.clone(),
            })),
        ),
        (
            Service::Orders,
            format!("order-{}", known.order),
            DomainEvent::Order(OrderEvent::Placed(OrderPlaced {
                order_id: known.order,
                customer_id: known.customer,
                customer,
                lines: vec![OrderLine {
                    product_id: Uuid::now_v7(),
                    sku: "TEAPOT".to_owned(),
                    name: "Teapot".to_owned(),
                    quantity: 1,
                    unit_price_minor: 2_500,
                }],
                currency: Currency::EUR,
                total_minor: 2_500,
            })),
        ),
    ];
    let now = Utc::now();
    let batch = Batch {
        events: events
            .into_iter()
            .map(|(service, stream_id, event)| ProjectedEvent {
                event_id: Uuid::now_v7(),
                stream_id,
                stream_version: 1,
                position: 1,
                occurred_at: now,
                recorded_at: now,
                correlation_id: "test".to_owned(),
                event,
                origin: Origin::store(service, 1),
            })
            .collect(),
        ..Batch::default()
    };
    OrderDashboard::new(db.clone(), 1).apply(&batch).await.unwrap();
    (ReadState::new(db, None, ReadConfig::default()), known)
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
    text: String,
}

async fn send(router: &Router, method: Method, uri: &str) -> Reply {
    let request = Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

impl Reply {
    /// Checks the status, the error format and its code; answers `details`.
    #[track_caller]
    fn error(&self, what: &str, status: StatusCode, code: &str) -> &Value {
        assert_eq!(self.status, status, "{what}: {}", self.text);
        assert_eq!(
            self.headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{what}: not in the error format: {:?}",
            self.text
        );
        let error = self
            .json
            .get("error")
            .unwrap_or_else(|| panic!("{what}: no error object: {}", self.text));
        assert_eq!(
            self.json.as_object().map(serde_json::Map::len),
            Some(1),
            "{what}: more than `error`: {}",
            self.text
        );
        assert_eq!(error["code"], code, "{what}: {}", self.text);
        assert!(
            error["message"].as_str().is_some_and(|m| !m.trim().is_empty()),
            "{what}: no message: {}",
            self.text
        );
        assert!(error["details"].is_object(), "{what}: details: {}", self.text);
        &error["details"]
    }
}

/// The read API's `GET` routes, from its OpenAPI document, with `{id}` left in.
fn read_routes() -> Vec<String> {
    let document = serde_json::to_value(read_api::api_doc(&Auth::Disabled)).unwrap();
    let paths = document["paths"].as_object().unwrap();
    for (path, item) in paths {
        let methods: Vec<&String> = item.as_object().unwrap().keys().collect();
        assert_eq!(methods, ["get"], "{path}: the read API only reads");
    }
    let routes: Vec<String> = paths.keys().cloned().collect();
    assert!(routes.iter().any(|r| r.contains("{id}")), "{routes:?}");
    routes
}

#[tokio::test]
async fn an_id_of_nothing_is_a_404_in_the_error_format() {
    let (state, known) = state().await;
    let router = read_api::router(state);
    for (route, resource, id) in [
        ("/v1/dashboard/orders/{id}", "order", known.order),
        ("/v1/dashboard/customers/{id}", "customer", known.customer),
    ] {
        // The known one is there: the 404 below is about the id.
        let found = send(&router, Method::GET, &route.replace("{id}", &id.to_string())).await;
        assert_eq!(found.status, StatusCode::OK, "{route}: {}", found.text);

        let unknown = Uuid::now_v7();
        for (what, uri) in [
            ("an id of nothing", route.replace("{id}", &unknown.to_string())),
            (
                "an id of nothing, in upper case",
                route.replace("{id}", &unknown.to_string().to_uppercase()),
            ),
            (
                "an id of nothing, waiting for a position reached",
                format!("{}?min_position=orders:0", route.replace("{id}", &unknown.to_string())),
            ),
            // Another kind's id is not this kind's.
            (
                "an id of another kind",
                route.replace("{id}", &known_other(&known, id).to_string()),
            ),
        ] {
            let reply = send(&router, Method::GET, &uri).await;
            let details = reply.error(&format!("{route}: {what}"), StatusCode::NOT_FOUND, "not_found");
            assert_eq!(details["resource"], resource, "{uri}: {}", reply.text);
            let named = details["id"].as_str().unwrap_or_default().to_lowercase();
            assert!(
                [unknown.to_string(), known_other(&known, id).to_string()].contains(&named),
                "{uri}: {}",
                reply.text
            );
        }
        // Then, before the order was placed.
        if resource == "order" {
            let uri = format!(
                "{}?as_of=2000-01-01T00:00:00Z",
                route.replace("{id}", &known.order.to_string())
            );
            let reply = send(&router, Method::GET, &uri).await;
            reply.error(&uri, StatusCode::NOT_FOUND, "not_found");
        }
    }
}

#[tokio::test]
async fn an_id_that_is_not_a_uuid_is_a_400_in_the_error_format() {
    let (state, _) = state().await;
    let router = read_api::router(state);
    let simple = Uuid::now_v7().simple().to_string();
    for route in ["/v1/dashboard/orders/{id}", "/v1/dashboard/customers/{id}"] {
        for (what, id) in [
            ("not a UUID", "42"),
            ("a UUID without hyphens", simple.as_str()),
            ("a UUID in braces", "%7B018f8e8a-0000-7000-8000-000000000001%7D"),
            // Percent-decoding it is not even text: still the API's error, naming the id.
            ("invalid percent-encoded UTF-8", "%FF%FE"),
        ] {
            let uri = route.replace("{id}", id);
            let reply = send(&router, Method::GET, &uri).await;
            let details = reply.error(&format!("{route}: {what}"), StatusCode::BAD_REQUEST, "bad_request");
            assert_eq!(details["parameter"], "id", "{uri}: {}", reply.text);
        }
    }
}

/// The other known id: a customer's for an order's route and the other way round.
fn known_other(known: &Known, id: Uuid) -> Uuid {
    if id == known.order { known.customer } else { known.order }
}

#[tokio::test]
async fn unknown_routes_are_a_404_in_the_error_format() {
    let (state, _) = state().await;
    let router = read_api::router(state);
    for (method, uri) in [
        (Method::GET, "/v1/nothing"),
        (
            Method::GET,
            "/v1/dashboard/products/018f8e8a-0000-7000-8000-000000000001",
        ),
        (
            Method::GET,
            "/v1/dashboard/orders/018f8e8a-0000-7000-8000-000000000001/lines",
        ),
        // The rebuild endpoint is the projections worker's, not the read API's.
        (Method::POST, "/v1/projections/order_dashboard/rebuild"),
        (Method::DELETE, "/v2/dashboard/orders"),
    ] {
        let reply = send(&router, method.clone(), uri).await;
        let details = reply.error(&format!("{method} {uri}"), StatusCode::NOT_FOUND, "not_found");
        assert_eq!(details["path"], uri.split('?').next().unwrap(), "{}", reply.text);
    }
}

/// Every method but `GET` (and `HEAD`, which axum serves with it) on every route of `routes`
/// is a 405 in the error format naming the method and the path, with `Allow: GET,HEAD`.
async fn assert_405s(router: &Router, routes: &[String]) {
    let id = Uuid::now_v7().to_string();
    for route in routes {
        let uri = route.replace("{id}", &id);
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            let what = format!("{method} {route}");
            let reply = send(router, method.clone(), &uri).await;
            let details = reply.error(&what, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
            assert_eq!(details["method"], method.as_str(), "{what}: {}", reply.text);
            assert_eq!(details["path"], uri, "{what}: {}", reply.text);
            let allow = reply
                .headers
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_else(|| panic!("{what}: a 405 without Allow"));
            let allowed: Vec<&str> = allow.split(',').map(str::trim).collect();
            assert!(allowed.contains(&"GET"), "{what}: Allow: {allow}");
            assert!(!allowed.contains(&method.as_str()), "{what}: Allow: {allow}");
        }
    }
}

#[tokio::test]
async fn a_method_a_route_does_not_serve_is_a_405_in_the_error_format() {
    let (state, _) = state().await;
    let router = read_api::router(state);
    let mut routes = read_routes();
    // The operations endpoints too.
    routes.extend(["/health", "/ready", "/metrics", "/openapi.json"].map(str::to_owned));
    assert_405s(&router, &routes).await;
}

#[tokio::test]
async fn the_query_routes_merged_into_another_router_answer_405s_in_the_error_format() {
    let (state, _) = state().await;
    // As the embedded `serve` does: another router that serves its own routes and unknown paths,
    // with the query routes merged in.
    let router = Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .fallback(service_kit::http::no_route)
        .merge(read_api::query_routes(state));
    let routes: Vec<String> = read_routes().into_iter().filter(|r| r.starts_with("/v1/")).collect();
    assert_405s(&router, &routes).await;
    let reply = send(&router, Method::GET, "/v1/nothing").await;
    reply.error("an unknown route", StatusCode::NOT_FOUND, "not_found");
}
