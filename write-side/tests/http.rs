//! The command HTTP API through its `Router` (`tower::ServiceExt::oneshot`), against a real
//! event store: a fresh PostgreSQL database per test (`scripts/services up`), SQLite for one.
//!
//! Every bad request must get the right 4xx in the error format *and* append nothing: the
//! tests compare the store's head position before and after.
#![allow(clippy::unwrap_used)]

#[path = "http/support.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use support::{App, Fault, FaultyStore, Reply, pg_store, post, sqlite_store};
use uuid::Uuid;
use write_side::domain::Product;
use write_side::http::{Auth, HttpConfig, Scope, TokenSpec};

/// A command's answer: its stream, version and position, after checking that it names the
/// service that owns the stream and the consistency token of that position in its log.
fn answer_of(reply: &Reply) -> (String, u64, u64) {
    let body = reply.json.as_object().unwrap();
    assert_eq!(body.len(), 5, "{}", reply.text);
    let stream_id = body["stream_id"].as_str().unwrap().to_owned();
    let position = body["position"].as_u64().unwrap();
    let owner = event_schemas::Service::of_stream(&stream_id).unwrap();
    assert_eq!(body["service"], owner.name(), "{}", reply.text);
    assert_eq!(body["token"], format!("{owner}:{position}"), "{}", reply.text);
    (stream_id, body["version"].as_u64().unwrap(), position)
}

#[tokio::test]
async fn customer_commands() {
    let app = App::new().await;
    let id = Uuid::now_v7();
    let reply = app
        .post(
            "/v1/customers",
            json!({"customer_id": id, "name": "Ada", "email": "ada@example.com"}),
        )
        .await;
    reply.expect(StatusCode::CREATED);
    let (stream_id, version, position) = answer_of(&reply);
    assert_eq!(stream_id, format!("customer-{id}"));
    assert_eq!(version, 1);
    assert_eq!(position, app.head().await);
    assert_eq!(reply.header("etag"), Some("\"1\""));

    let reply = app
        .post(&format!("/v1/customers/{id}/rename"), json!({"name": "Ada King"}))
        .await;
    reply.expect(StatusCode::OK);
    assert_eq!(answer_of(&reply), (stream_id.clone(), 2, app.head().await));

    let reply = app
        .post(
            &format!("/v1/customers/{id}/change-email"),
            json!({"email": "countess@example.com"}),
        )
        .await;
    reply.expect(StatusCode::OK);
    assert_eq!(answer_of(&reply).1, 3);

    let page = app.get(&format!("/v1/streams/{stream_id}/events")).await;
    let events = page.expect(StatusCode::OK)["events"].as_array().unwrap().clone();
    let types: Vec<&str> = events.iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["customer.registered", "customer.renamed", "customer.email_changed"]
    );
    assert_eq!(events[1]["data"], json!({"customer_id": id, "name": "Ada King"}));
    assert_eq!(events[2]["data"]["email"], "countess@example.com");

    // Without an id, one is made up: a UUID v7.
    let reply = app
        .post("/v1/customers", json!({"name": "Grace", "email": "grace@example.com"}))
        .await;
    reply.expect(StatusCode::CREATED);
    let (stream_id, version, _) = answer_of(&reply);
    let made_up = Uuid::parse_str(stream_id.strip_prefix("customer-").unwrap()).unwrap();
    assert_eq!(made_up.get_version_num(), 7);
    assert_eq!(version, 1);
}

#[tokio::test]
async fn product_commands() {
    let app = App::new().await;
    let id = app.product(5).await;
    let reply = app
        .post(&format!("/v1/products/{id}/restock"), json!({"quantity": 7}))
        .await;
    reply.expect(StatusCode::OK);
    assert_eq!(answer_of(&reply), (format!("product-{id}"), 2, app.head().await));
    let reply = app
        .post(&format!("/v1/products/{id}/change-price"), json!({"price_minor": 999}))
        .await;
    reply.expect(StatusCode::OK);
    assert_eq!(answer_of(&reply).1, 3);

    let loaded = app.handler.load::<Product>(id, None).await.unwrap();
    assert_eq!(loaded.state.available, 12);
    assert_eq!(loaded.state.price.map(|p| p.amount_minor), Some(999));

    let page = app.get(&format!("/v1/streams/product-{id}/events")).await;
    let events = page.expect(StatusCode::OK)["events"].as_array().unwrap().clone();
    assert_eq!(
        events[0]["data"]["price"],
        json!({"amount_minor": 1250, "currency": "EUR"})
    );
    assert_eq!(events[1]["data"]["quantity"], 7);
}

#[tokio::test]
async fn order_lifecycle() {
    let app = App::new().await;
    let customer = app.customer().await;
    let product = app.product(10).await;

    let (order, reply) = app.order(customer, product, 3).await;
    let (stream_id, version, position) = answer_of(&reply);
    assert_eq!((stream_id.as_str(), version), (format!("order-{order}").as_str(), 1));
    assert_eq!(position, app.head().await, "the reservation is in the same commit");

    // `{}` or no body at all.
    let reply = app.post(&format!("/v1/orders/{order}/confirm"), json!({})).await;
    reply.expect(StatusCode::OK);
    assert_eq!(answer_of(&reply).1, 2);
    let reply = app
        .post(
            &format!("/v1/orders/{order}/ship"),
            json!({"carrier": "DHL", "tracking": "JD0001"}),
        )
        .await;
    reply.expect(StatusCode::OK);
    let reply = app
        .send(
            Request::post(format!("/v1/orders/{order}/deliver"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    reply.expect(StatusCode::OK);
    assert_eq!(answer_of(&reply).1, 4);

    let state = app.get(&format!("/v1/orders/{order}/state")).await;
    let state = state.expect(StatusCode::OK);
    assert_eq!(state["status"], "delivered");
    assert_eq!(state["version"], 4);
    assert_eq!(state["position"], app.head().await);
    assert_eq!(state["total_minor"], 3 * 1250);
    assert_eq!(state["currency"], "EUR");
    assert_eq!(state["customer"]["name"], "Ada Lovelace");
    assert_eq!(state["lines"][0]["quantity"], 3);
    assert_eq!(state["lines"][0]["unit_price_minor"], 1250);
    assert_eq!(state["shipment"], json!({"carrier": "DHL", "tracking": "JD0001"}));

    // Cancelling another order releases its stock.
    let (second, _) = app.order(customer, product, 4).await;
    assert_eq!(
        app.handler
            .load::<Product>(product, None)
            .await
            .unwrap()
            .state
            .available,
        3
    );
    let reply = app
        .post(
            &format!("/v1/orders/{second}/cancel"),
            json!({"reason": "changed my mind"}),
        )
        .await;
    reply.expect(StatusCode::OK);
    let loaded = app.handler.load::<Product>(product, None).await.unwrap();
    assert_eq!(loaded.state.available, 7);
    assert_eq!(loaded.state.reserved_for(second), 0);
    let state = app.get(&format!("/v1/orders/{second}/state")).await;
    assert_eq!(state.expect(StatusCode::OK)["status"], "cancelled");
    assert_eq!(state.json["cancellation_reason"], "changed my mind");
}

#[tokio::test]
async fn stream_events_and_the_log_show_the_envelope() {
    let app = App::new().await;
    let customer = Uuid::now_v7();
    let reply = app
        .send(
            post("/v1/customers")
                .header("x-correlation-id", "checkout-42")
                .body(Body::from(
                    json!({"customer_id": customer, "name": "Ada", "email": "ada@example.com"}).to_string(),
                ))
                .unwrap(),
        )
        .await;
    reply.expect(StatusCode::CREATED);
    assert_eq!(reply.header("x-correlation-id"), Some("checkout-42"));
    let request_id = reply.header("x-request-id").unwrap().to_owned();
    for name in ["Ada B", "Ada C", "Ada D"] {
        app.post(&format!("/v1/customers/{customer}/rename"), json!({"name": name}))
            .await
            .expect(StatusCode::OK);
    }

    let page = app.get(&format!("/v1/streams/customer-{customer}/events")).await;
    let page = page.expect(StatusCode::OK);
    assert_eq!(page["stream_id"], format!("customer-{customer}"));
    assert_eq!(page["next_from_version"], Value::Null);
    let first = &page["events"][0];
    for field in [
        "position",
        "stream_id",
        "stream_version",
        "event_id",
        "event_type",
        "schema_version",
        "occurred_at",
        "recorded_at",
        "correlation_id",
        "causation_id",
        "actor",
        "data",
    ] {
        assert!(!first[field].is_null(), "{field} missing in {first}");
    }
    assert_eq!(first["stream_version"], 1);
    assert_eq!(first["schema_version"], 1);
    assert_eq!(first["correlation_id"], "checkout-42");
    assert_eq!(first["causation_id"], request_id);
    assert_eq!(first["actor"], "anonymous");
    assert_eq!(
        first["data"],
        json!({"customer_id": customer, "name": "Ada", "email": "ada@example.com"})
    );
    // A request without X-Correlation-Id gets one made up, and its events carry it.
    assert_ne!(page["events"][1]["correlation_id"], "checkout-42");
    assert_ne!(page["events"][1]["causation_id"], page["events"][2]["causation_id"]);

    // Paging.
    let page = app
        .get(&format!(
            "/v1/streams/customer-{customer}/events?from_version=2&limit=2"
        ))
        .await;
    let page = page.expect(StatusCode::OK);
    let versions: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream_version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [2, 3]);
    assert_eq!(page["next_from_version"], 4);

    // The log: from_position is inclusive.
    let head = app.head().await;
    let log = app.get("/v1/log?service=customers&limit=1000").await;
    let all = log.expect(StatusCode::OK)["events"].as_array().unwrap().clone();
    assert_eq!(all.len(), 4);
    assert_eq!(all.last().unwrap()["position"], head);
    let second = all[1]["position"].as_u64().unwrap();
    let log = app
        .get(&format!("/v1/log?service=customers&from_position={second}&limit=2"))
        .await;
    let log = log.expect(StatusCode::OK);
    let positions: Vec<u64> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [second, all[2]["position"].as_u64().unwrap()]);
    assert_eq!(log["next_from_position"], positions[1] + 1);
    let log = app
        .get(&format!("/v1/log?service=customers&from_position={}", head + 1))
        .await;
    let log = log.expect(StatusCode::OK);
    assert_eq!((&log["service"], &log["events"]), (&json!("customers"), &json!([])));

    // Every service of the process has a log: which one is a parameter, not a guess.
    let reply = app.get("/v1/log").await;
    let error = reply.expect_error(StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(error["field"], "service");
    assert_eq!(error["hosted"], json!(["customers", "inventory", "orders", "payments"]));
    let reply = app.get("/v1/log?service=shipping").await;
    assert_eq!(
        reply.expect_error(StatusCode::BAD_REQUEST, "bad_request")["field"],
        "service"
    );

    // A stream that does not exist, and one that cannot.
    let missing = app.get(&format!("/v1/streams/order-{}/events", Uuid::now_v7())).await;
    missing.expect_error(StatusCode::NOT_FOUND, "not_found");
    let bad = app.get("/v1/streams/order-NOT-A-UUID/events").await;
    assert_eq!(
        bad.expect_error(StatusCode::BAD_REQUEST, "bad_request")["field"],
        "stream_id"
    );
}

#[tokio::test]
async fn order_state_as_of_a_position_or_a_time() {
    let app = App::new().await;
    let customer = app.customer().await;
    let product = app.product(10).await;
    let before = app.head().await;
    let (order, placed) = app.order(customer, product, 1).await;
    let placed_at = answer_of(&placed).2;
    // Let the clock move so that "as of" a time separates the two events.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let confirmed = app.post(&format!("/v1/orders/{order}/confirm"), json!({})).await;
    confirmed.expect(StatusCode::OK);
    let confirmed_at = answer_of(&confirmed).2;

    let state = |query: String| {
        let app = app.clone();
        async move { app.get(&format!("/v1/orders/{order}/state{query}")).await }
    };
    let now = state(String::new()).await;
    assert_eq!(now.expect(StatusCode::OK)["status"], "confirmed");
    assert_eq!(now.header("etag"), Some("\"2\""));

    let at = state(format!("?at_position={placed_at}")).await;
    let at = at.expect(StatusCode::OK);
    assert_eq!(
        (at["status"].as_str(), at["version"].as_u64()),
        (Some("pending"), Some(1))
    );
    // The order's own last event; the answer's position also covers the reservation.
    let order_events = app.get(&format!("/v1/streams/order-{order}/events")).await;
    assert_eq!(at["position"], order_events.json["events"][0]["position"]);
    assert!(at["position"].as_u64().unwrap() <= placed_at);
    let at = state(format!("?at_position={confirmed_at}")).await;
    assert_eq!(at.expect(StatusCode::OK)["status"], "confirmed");
    let at = state(format!("?at_position={before}")).await;
    at.expect_error(StatusCode::NOT_FOUND, "not_found");

    // As of the time the placement was recorded, and as of now.
    let events = app.get(&format!("/v1/streams/order-{order}/events")).await;
    let events = events.expect(StatusCode::OK)["events"].as_array().unwrap().clone();
    let placed_time = events[0]["recorded_at"].as_str().unwrap().to_owned();
    let confirmed_time = events[1]["recorded_at"].as_str().unwrap().to_owned();
    assert!(placed_time < confirmed_time, "{placed_time} {confirmed_time}");
    let as_of = state(format!("?as_of={placed_time}")).await;
    assert_eq!(as_of.expect(StatusCode::OK)["status"], "pending");
    let as_of = state(format!("?as_of={confirmed_time}")).await;
    assert_eq!(as_of.expect(StatusCode::OK)["status"], "confirmed");
    // An explicit offset, `+` encoded.
    let as_of = state("?as_of=2999-01-01T00:00:00%2B01:00".to_owned()).await;
    assert_eq!(as_of.expect(StatusCode::OK)["status"], "confirmed");
    let as_of = state("?as_of=2000-01-01T00:00:00Z".to_owned()).await;
    as_of.expect_error(StatusCode::NOT_FOUND, "not_found");

    // Bad queries: 400, naming the parameter.
    let head = app.head().await;
    for (query, field) in [
        ("?as_of=yesterday", Some("as_of")),
        ("?as_of=2026-01-01", Some("as_of")),
        ("?as_of=2026-01-01T00:00:00+01:00", Some("as_of")),
        ("?at_position=-1", Some("at_position")),
        ("?at_position=abc", Some("at_position")),
        ("?at_position=1&as_of=2026-01-01T00:00:00Z", None),
        ("?when=now", Some("when")),
    ] {
        let reply = state(query.to_owned()).await;
        let details = reply.expect_error(StatusCode::BAD_REQUEST, "bad_request");
        if let Some(field) = field {
            assert_eq!(details["field"], field, "{query}");
        }
    }
    let unknown = app.get(&format!("/v1/orders/{}/state", Uuid::now_v7())).await;
    unknown.expect_error(StatusCode::NOT_FOUND, "not_found");
    let bad_id = app.get("/v1/orders/42/state").await;
    assert_eq!(
        bad_id.expect_error(StatusCode::BAD_REQUEST, "bad_request")["field"],
        "id"
    );
    assert_eq!(app.head().await, head);
}

/// One bad request and what it must get.
struct Bad {
    what: &'static str,
    request: Request<Body>,
    status: StatusCode,
    code: &'static str,
    field: Option<&'static str>,
}

fn bad(
    what: &'static str,
    request: Request<Body>,
    status: StatusCode,
    code: &'static str,
    field: Option<&'static str>,
) -> Bad {
    Bad {
        what,
        request,
        status,
        code,
        field,
    }
}

fn json_post(path: &str, body: &str) -> Request<Body> {
    post(path).body(Body::from(body.to_owned())).unwrap()
}

#[tokio::test]
async fn bad_input_gets_a_4xx_and_appends_nothing() {
    use StatusCode as S;
    let app = App::new().await;
    let customer = app.customer().await;
    let product = app.product(5).await;
    let (order, _) = app.order(customer, product, 1).await;
    let unknown = Uuid::now_v7();
    let line = |quantity: &str| {
        format!(r#"{{"customer_id":"{customer}","lines":[{{"product_id":"{product}","quantity":{quantity}}}]}}"#)
    };
    let rename = format!("/v1/customers/{customer}/rename");
    let restock = format!("/v1/products/{product}/restock");
    let cases = vec![
        bad(
            "malformed JSON",
            json_post("/v1/customers", r#"{"name": "Ada", "email""#),
            S::BAD_REQUEST,
            "invalid_json",
            None,
        ),
        bad(
            "not JSON at all",
            json_post("/v1/customers", "name=Ada"),
            S::BAD_REQUEST,
            "invalid_json",
            None,
        ),
        bad(
            "trailing data",
            json_post(&rename, r#"{"name":"A"} {}"#),
            S::BAD_REQUEST,
            "invalid_json",
            None,
        ),
        bad(
            "empty body",
            json_post(&rename, ""),
            S::BAD_REQUEST,
            "invalid_json",
            None,
        ),
        bad(
            "an array",
            json_post(&rename, "[]"),
            S::BAD_REQUEST,
            "bad_request",
            None,
        ),
        bad(
            "unknown field",
            json_post(&rename, r#"{"name":"A","nickname":"B"}"#),
            S::BAD_REQUEST,
            "bad_request",
            Some("nickname"),
        ),
        bad(
            "unknown field in a line",
            json_post(
                "/v1/orders",
                &format!(
                    r#"{{"customer_id":"{customer}","lines":[{{"product_id":"{product}","quantity":1,"price":1}}]}}"#
                ),
            ),
            S::BAD_REQUEST,
            "bad_request",
            Some("lines[0].price"),
        ),
        bad(
            "missing field",
            json_post("/v1/customers", r#"{"name":"Ada"}"#),
            S::BAD_REQUEST,
            "bad_request",
            Some("email"),
        ),
        bad(
            "missing lines",
            json_post("/v1/orders", &format!(r#"{{"customer_id":"{customer}"}}"#)),
            S::BAD_REQUEST,
            "bad_request",
            Some("lines"),
        ),
        bad(
            "wrong type",
            json_post(&restock, r#"{"quantity":"3"}"#),
            S::BAD_REQUEST,
            "bad_request",
            Some("quantity"),
        ),
        bad(
            "fraction",
            json_post(&restock, r#"{"quantity":1.5}"#),
            S::BAD_REQUEST,
            "bad_request",
            Some("quantity"),
        ),
        bad(
            "negative restock",
            json_post(&restock, r#"{"quantity":-3}"#),
            S::BAD_REQUEST,
            "bad_request",
            Some("quantity"),
        ),
        bad(
            "negative order quantity",
            json_post("/v1/orders", &line("-1")),
            S::BAD_REQUEST,
            "bad_request",
            Some("lines[0].quantity"),
        ),
        bad(
            "quantity beyond i64",
            json_post("/v1/orders", &line("9223372036854775808")),
            S::BAD_REQUEST,
            "bad_request",
            Some("lines[0].quantity"),
        ),
        bad(
            "quantity beyond u64",
            json_post("/v1/orders", &line("123456789012345678901234567890")),
            S::BAD_REQUEST,
            "bad_request",
            Some("lines[0].quantity"),
        ),
        bad(
            "huge float",
            json_post(&restock, r#"{"quantity":1e300}"#),
            S::BAD_REQUEST,
            "bad_request",
            Some("quantity"),
        ),
        bad(
            "negative price",
            json_post(&format!("/v1/products/{product}/change-price"), r#"{"price_minor":-1}"#),
            S::BAD_REQUEST,
            "bad_request",
            Some("price_minor"),
        ),
        bad(
            "negative stock",
            json_post(
                "/v1/products",
                r#"{"sku":"A","name":"A","price_minor":1,"currency":"EUR","stock":-5}"#,
            ),
            S::BAD_REQUEST,
            "bad_request",
            Some("stock"),
        ),
        bad(
            "bad uuid in a body",
            json_post("/v1/orders", r#"{"customer_id":"nope","lines":[]}"#),
            S::BAD_REQUEST,
            "bad_request",
            Some("customer_id"),
        ),
        bad(
            "bad uuid in a path",
            json_post("/v1/customers/not-a-uuid/rename", r#"{"name":"A"}"#),
            S::BAD_REQUEST,
            "bad_request",
            Some("id"),
        ),
        bad(
            "bad uuid in an order path",
            Request::post("/v1/orders/123/confirm").body(Body::empty()).unwrap(),
            S::BAD_REQUEST,
            "bad_request",
            Some("id"),
        ),
        bad(
            "text/plain",
            Request::post(&rename)
                .header("content-type", "text/plain")
                .body(Body::from(r#"{"name":"A"}"#))
                .unwrap(),
            S::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            None,
        ),
        bad(
            "no content type",
            Request::post(&rename).body(Body::from(r#"{"name":"A"}"#)).unwrap(),
            S::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            None,
        ),
        bad(
            "form content type",
            Request::post(format!("/v1/orders/{order}/confirm"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from("a=b"))
                .unwrap(),
            S::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            None,
        ),
        bad(
            "field in an empty command",
            json_post(&format!("/v1/orders/{order}/confirm"), r#"{"force":true}"#),
            S::BAD_REQUEST,
            "bad_request",
            Some("force"),
        ),
        bad(
            "oversized body",
            json_post(&rename, &format!(r#"{{"name":"{}"}}"#, "x".repeat(70 * 1024))),
            S::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            None,
        ),
        bad(
            "empty Idempotency-Key",
            post(&rename)
                .header("idempotency-key", "")
                .body(Body::from(r#"{"name":"A"}"#))
                .unwrap(),
            S::BAD_REQUEST,
            "bad_request",
            Some("Idempotency-Key"),
        ),
        bad(
            "Idempotency-Key with a space",
            post(&rename)
                .header("idempotency-key", "a b")
                .body(Body::from(r#"{"name":"A"}"#))
                .unwrap(),
            S::BAD_REQUEST,
            "bad_request",
            Some("Idempotency-Key"),
        ),
        bad(
            "Idempotency-Key too long",
            post(&rename)
                .header("idempotency-key", "k".repeat(256))
                .body(Body::from(r#"{"name":"A"}"#))
                .unwrap(),
            S::BAD_REQUEST,
            "bad_request",
            Some("Idempotency-Key"),
        ),
        bad(
            "two Idempotency-Keys",
            post(&rename)
                .header("idempotency-key", "a")
                .header("idempotency-key", "b")
                .body(Body::from(r#"{"name":"A"}"#))
                .unwrap(),
            S::BAD_REQUEST,
            "bad_request",
            Some("idempotency-key"),
        ),
        bad(
            "If-Match not a number",
            post(&rename)
                .header("if-match", "abc")
                .body(Body::from(r#"{"name":"A"}"#))
                .unwrap(),
            S::BAD_REQUEST,
            "bad_request",
            Some("If-Match"),
        ),
        bad(
            "If-Match weak",
            post(&rename)
                .header("if-match", "W/\"1\"")
                .body(Body::from(r#"{"name":"A"}"#))
                .unwrap(),
            S::BAD_REQUEST,
            "bad_request",
            Some("If-Match"),
        ),
        bad(
            "If-Match negative",
            post(&rename)
                .header("if-match", "-1")
                .body(Body::from(r#"{"name":"A"}"#))
                .unwrap(),
            S::BAD_REQUEST,
            "bad_request",
            Some("If-Match"),
        ),
        bad(
            "X-Correlation-Id too long",
            post(&rename)
                .header("x-correlation-id", "c".repeat(300))
                .body(Body::from(r#"{"name":"A"}"#))
                .unwrap(),
            S::BAD_REQUEST,
            "bad_request",
            Some("X-Correlation-Id"),
        ),
        // The domain's refusals.
        bad(
            "empty name",
            json_post(&rename, r#"{"name":"   "}"#),
            S::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("name"),
        ),
        bad(
            "bad email",
            json_post("/v1/customers", r#"{"name":"A","email":"nope"}"#),
            S::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("email"),
        ),
        bad(
            "zero quantity",
            json_post("/v1/orders", &line("0")),
            S::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("lines[0].quantity"),
        ),
        bad(
            "quantity above the maximum",
            json_post("/v1/orders", &line("1000001")),
            S::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("lines[0].quantity"),
        ),
        bad(
            "no lines",
            json_post("/v1/orders", &format!(r#"{{"customer_id":"{customer}","lines":[]}}"#)),
            S::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("lines"),
        ),
        bad(
            "lower-case currency",
            json_post(
                "/v1/products",
                r#"{"sku":"A","name":"A","price_minor":1,"currency":"eur","stock":1}"#,
            ),
            S::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("currency"),
        ),
        bad(
            "zero restock",
            json_post(&restock, r#"{"quantity":0}"#),
            S::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("quantity"),
        ),
        bad(
            "unknown customer",
            json_post(&format!("/v1/customers/{unknown}/rename"), r#"{"name":"A"}"#),
            S::NOT_FOUND,
            "not_found",
            None,
        ),
        bad(
            "unknown product",
            json_post(&format!("/v1/products/{unknown}/restock"), r#"{"quantity":1}"#),
            S::NOT_FOUND,
            "not_found",
            None,
        ),
        bad(
            "order for an unknown customer",
            json_post(
                "/v1/orders",
                &format!(r#"{{"customer_id":"{unknown}","lines":[{{"product_id":"{product}","quantity":1}}]}}"#),
            ),
            S::NOT_FOUND,
            "not_found",
            None,
        ),
        bad(
            "order of an unknown product",
            json_post(
                "/v1/orders",
                &format!(r#"{{"customer_id":"{customer}","lines":[{{"product_id":"{unknown}","quantity":1}}]}}"#),
            ),
            S::NOT_FOUND,
            "not_found",
            None,
        ),
        bad(
            "confirm an unknown order",
            json_post(&format!("/v1/orders/{unknown}/confirm"), "{}"),
            S::NOT_FOUND,
            "not_found",
            None,
        ),
        bad(
            "ship a pending order",
            json_post(
                &format!("/v1/orders/{order}/ship"),
                r#"{"carrier":"DHL","tracking":"1"}"#,
            ),
            S::CONFLICT,
            "rejected",
            None,
        ),
        bad(
            "register twice",
            json_post(
                "/v1/customers",
                &format!(r#"{{"customer_id":"{customer}","name":"A","email":"a@example.com"}}"#),
            ),
            S::CONFLICT,
            "already_exists",
            None,
        ),
        bad(
            "place twice",
            json_post(
                "/v1/orders",
                &format!(
                    r#"{{"order_id":"{order}","customer_id":"{customer}","lines":[{{"product_id":"{product}","quantity":1}}]}}"#
                ),
            ),
            S::CONFLICT,
            "already_exists",
            None,
        ),
        bad(
            "insufficient stock",
            json_post("/v1/orders", &line("5")),
            S::CONFLICT,
            "insufficient_stock",
            None,
        ),
        // Reads and routes.
        bad(
            "limit 0",
            Request::get(format!("/v1/streams/customer-{customer}/events?limit=0"))
                .body(Body::empty())
                .unwrap(),
            S::BAD_REQUEST,
            "bad_request",
            Some("limit"),
        ),
        bad(
            "limit too large",
            Request::get("/v1/log?service=orders&limit=1001")
                .body(Body::empty())
                .unwrap(),
            S::BAD_REQUEST,
            "bad_request",
            Some("limit"),
        ),
        bad(
            "limit not a number",
            Request::get("/v1/log?service=orders&limit=ten")
                .body(Body::empty())
                .unwrap(),
            S::BAD_REQUEST,
            "bad_request",
            Some("limit"),
        ),
        bad(
            "from_position negative",
            Request::get("/v1/log?service=orders&from_position=-1")
                .body(Body::empty())
                .unwrap(),
            S::BAD_REQUEST,
            "bad_request",
            Some("from_position"),
        ),
        bad(
            "unknown query parameter",
            Request::get("/v1/log?service=orders&offset=3")
                .body(Body::empty())
                .unwrap(),
            S::BAD_REQUEST,
            "bad_request",
            Some("offset"),
        ),
        bad(
            "from_version 0",
            Request::get(format!("/v1/streams/customer-{customer}/events?from_version=0"))
                .body(Body::empty())
                .unwrap(),
            S::BAD_REQUEST,
            "bad_request",
            Some("from_version"),
        ),
        bad(
            "unknown route",
            Request::get("/v1/nothing").body(Body::empty()).unwrap(),
            S::NOT_FOUND,
            "not_found",
            None,
        ),
        bad(
            "wrong method",
            Request::delete(format!("/v1/customers/{customer}/rename"))
                .body(Body::empty())
                .unwrap(),
            S::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            None,
        ),
    ];
    let head = app.head().await;
    for case in cases {
        let reply = app.send(case.request).await;
        assert_eq!(reply.status, case.status, "{}: {}", case.what, reply.text);
        let details = reply.expect_error(case.status, case.code);
        if let Some(field) = case.field {
            assert_eq!(details["field"], field, "{}: {}", case.what, reply.text);
        }
        assert_eq!(app.head().await, head, "{} appended something", case.what);
    }

    // The details of the domain's refusals say what the client needs.
    let reply = app.send(json_post("/v1/orders", &line("5"))).await;
    let details = reply.expect_error(StatusCode::CONFLICT, "insufficient_stock");
    assert_eq!(details["product_id"], product.to_string());
    assert_eq!(
        (details["requested"].as_i64(), details["available"].as_i64()),
        (Some(5), Some(4))
    );
    let reply = app
        .send(json_post(&format!("/v1/customers/{unknown}/rename"), r#"{"name":"A"}"#))
        .await;
    let details = reply.expect_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        (details["resource"].as_str(), details["id"].as_str()),
        (Some("customer"), Some(unknown.to_string().as_str()))
    );
    assert_eq!(app.head().await, head);
}

#[tokio::test]
async fn the_body_limit_is_configurable() {
    let mut config = HttpConfig::new(Auth::Disabled);
    config.body_limit_bytes = 256;
    let app = App::with(pg_store().await, config).await;
    let big = json!({"name": "x".repeat(300), "email": "a@example.com"});
    let reply = app.post("/v1/customers", big).await;
    let details = reply.expect_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(details["limit_bytes"], 256);
    // Also when the client announces it in Content-Length.
    let body = "y".repeat(1000);
    let reply = app
        .send(
            post("/v1/customers")
                .header("content-length", body.len())
                .body(Body::from(body))
                .unwrap(),
        )
        .await;
    reply.expect_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(app.head().await, 0);
    let small = json!({"name": "Ada", "email": "a@example.com"});
    app.post("/v1/customers", small).await.expect(StatusCode::CREATED);
}

const WRITER: &str = "writer-secret-0123456789";
const AUDITOR: &str = "auditor-secret-0123456789";

fn with_token(request: axum::http::request::Builder, token: &str) -> axum::http::request::Builder {
    request.header("authorization", format!("Bearer {token}"))
}

#[tokio::test]
async fn bearer_tokens_and_scopes() {
    let tokens = [
        TokenSpec::from_secret("writer", [Scope::Commands], WRITER),
        format!("auditor:admin:{}", write_side::http::hash_token(AUDITOR))
            .parse()
            .unwrap(),
    ];
    let app = App::with(pg_store().await, HttpConfig::new(Auth::tokens(tokens))).await;
    let body = || Body::from(json!({"name": "Ada", "email": "ada@example.com"}).to_string());

    // No token, a wrong one, a malformed header: 401 with the challenge, nothing appended.
    for (what, request) in [
        ("no token", post("/v1/customers")),
        ("wrong token", with_token(post("/v1/customers"), "guess")),
        (
            "not bearer",
            post("/v1/customers").header("authorization", format!("Basic {WRITER}")),
        ),
        ("empty bearer", post("/v1/customers").header("authorization", "Bearer ")),
    ] {
        let reply = app.send(request.body(body()).unwrap()).await;
        reply.expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
        assert!(
            reply.header("www-authenticate").unwrap().starts_with("Bearer"),
            "{what}"
        );
        assert!(!reply.text.contains(WRITER), "{what}: the token is echoed");
    }
    // Auth comes before the body: a malformed body without a token is still a 401.
    let reply = app
        .send(post("/v1/customers").body(Body::from("{not json")).unwrap())
        .await;
    reply.expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let reply = app.get("/v1/log?service=orders").await;
    reply.expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let reply = app.get(&format!("/v1/orders/{}/state", Uuid::now_v7())).await;
    reply.expect_error(StatusCode::UNAUTHORIZED, "unauthorized");

    // A known token without the route's scope: 403.
    let reply = app
        .send(with_token(post("/v1/customers"), AUDITOR).body(body()).unwrap())
        .await;
    let details = reply.expect_error(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(details["required_scope"], "commands");
    let reply = app
        .send(
            with_token(Request::get("/v1/log?service=orders"), WRITER)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        reply.expect_error(StatusCode::FORBIDDEN, "forbidden")["required_scope"],
        "admin"
    );
    assert_eq!(app.head().await, 0, "a refused request appended something");

    // The right token: the command runs, and its events name the token as their actor.
    let reply = app
        .send(with_token(post("/v1/customers"), WRITER).body(body()).unwrap())
        .await;
    reply.expect(StatusCode::CREATED);
    let (stream_id, _, _) = answer_of(&reply);
    let reply = app
        .send(
            with_token(Request::get(format!("/v1/streams/{stream_id}/events")), WRITER)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.expect(StatusCode::OK)["events"][0]["actor"], "writer");
    let reply = app
        .send(
            with_token(Request::get("/v1/log?service=orders"), AUDITOR)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.expect(StatusCode::OK)["events"].as_array().map(Vec::len), Some(1));

    // The operations endpoints need no token.
    for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
        app.get(path).await.expect(StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotent_request_ten_times_at_once_appends_once() {
    let app = App::new().await;
    let customer = app.customer().await;
    let product = app.product(100).await;

    // With the id given, and with the id made up by the server: either way one append and
    // ten identical answers.
    for (key, body) in [
        (
            "register-ada-2",
            json!({"customer_id": Uuid::now_v7(), "name": "Ada", "email": "ada@example.com"}),
        ),
        (
            "order-made-up-id",
            json!({"customer_id": customer, "lines": [{"product_id": product, "quantity": 2}]}),
        ),
    ] {
        let path = if key.starts_with("order") {
            "/v1/orders"
        } else {
            "/v1/customers"
        };
        let head = app.head().await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let app = app.clone();
            let request = post(path)
                .header("idempotency-key", key)
                .body(Body::from(body.to_string()))
                .unwrap();
            tasks.spawn(async move { app.send(request).await });
        }
        let replies: Vec<Reply> = tasks.join_all().await;
        let answers: BTreeSet<(String, u64, u64)> = replies
            .iter()
            .map(|r| {
                r.expect(StatusCode::CREATED);
                answer_of(r)
            })
            .collect();
        assert_eq!(answers.len(), 1, "answers differ: {answers:?}");
        let (stream_id, version, position) = answers.into_iter().next().unwrap();
        assert_eq!(version, 1);
        let new_head = app.head().await;
        assert_eq!(position, new_head);
        let appended = app
            .get(&format!("/v1/log?service=orders&from_position={}", head + 1))
            .await
            .expect(StatusCode::OK)["events"]
            .as_array()
            .unwrap()
            .clone();
        // An order: its stock reserved at inventory once, then the order.
        let types: Vec<&str> = appended.iter().map(|e| e["event_type"].as_str().unwrap()).collect();
        let expected_types = if key.starts_with("order") {
            vec!["product.stock_reserved", "order.placed"]
        } else {
            vec!["customer.registered"]
        };
        assert_eq!(types, expected_types, "{key}: {appended:?}");
        assert_eq!(appended.last().unwrap()["stream_id"], stream_id);

        // Later repeats answer the same; the same key with another body is refused.
        let again = app
            .send(
                post(path)
                    .header("idempotency-key", key)
                    .body(Body::from(body.to_string()))
                    .unwrap(),
            )
            .await;
        assert_eq!(answer_of(&again), (stream_id.clone(), version, position));
        let mut other = body.clone();
        other["name"] = json!("Someone else");
        if key.starts_with("order") {
            other = json!({"customer_id": customer, "lines": [{"product_id": product, "quantity": 3}]});
        }
        let reused = app
            .send(
                post(path)
                    .header("idempotency-key", key)
                    .body(Body::from(other.to_string()))
                    .unwrap(),
            )
            .await;
        let details = reused.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused");
        assert_eq!(details["idempotency_key"], key);
        assert_eq!(app.head().await, new_head);
    }
    let loaded = app.handler.load::<Product>(product, None).await.unwrap();
    assert_eq!(loaded.state.available, 98, "the order reserved its stock once");
}

#[tokio::test]
async fn if_match_makes_a_command_conditional() {
    let app = App::new().await;
    let customer = app.customer().await;
    let rename = format!("/v1/customers/{customer}/rename");
    let send = |if_match: &'static str, name: &'static str| {
        let app = app.clone();
        let rename = rename.clone();
        async move {
            app.send(
                post(&rename)
                    .header("if-match", if_match)
                    .body(Body::from(json!({"name": name}).to_string()))
                    .unwrap(),
            )
            .await
        }
    };
    let reply = send("1", "Ada B").await;
    reply.expect(StatusCode::OK);
    assert_eq!(answer_of(&reply).1, 2);
    assert_eq!(reply.header("etag"), Some("\"2\""));
    let reply = send("\"2\"", "Ada C").await;
    reply.expect(StatusCode::OK);

    let head = app.head().await;
    let reply = send("2", "Ada D").await;
    let details = reply.expect_error(StatusCode::CONFLICT, "conflict");
    assert_eq!(details["stream_id"], format!("customer-{customer}"));
    assert_eq!(
        (details["expected"].as_u64(), details["actual"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(app.head().await, head, "a stale If-Match appended something");
    let state = app
        .handler
        .load::<write_side::domain::Customer>(customer, None)
        .await
        .unwrap();
    assert_eq!(state.state.name, "Ada C");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_clients_race_for_twenty_units() {
    let app = App::new().await;
    let customer = app.customer().await;
    let product = app.product(20).await;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..32 {
        let app = app.clone();
        let body = json!({"customer_id": customer, "lines": [{"product_id": product, "quantity": 1}]});
        // Like a real client: a `conflict` (the handler lost its bounded retries to other
        // writers) is retried with the same Idempotency-Key, a few times.
        tasks.spawn(async move {
            let mut attempt = 0;
            loop {
                let request = post("/v1/orders")
                    .header("idempotency-key", format!("client-{client}"))
                    .body(Body::from(body.to_string()))
                    .unwrap();
                let reply = app.send(request).await;
                attempt += 1;
                if reply.status != StatusCode::CONFLICT || reply.json["error"]["code"] != "conflict" || attempt == 5 {
                    return reply;
                }
            }
        });
    }
    let replies = tasks.join_all().await;
    let mut outcomes: BTreeMap<(u16, String), usize> = BTreeMap::new();
    for reply in &replies {
        let code = match reply.status {
            StatusCode::CREATED => String::new(),
            StatusCode::CONFLICT => reply.json["error"]["code"].as_str().unwrap().to_owned(),
            other => panic!("unexpected {other}: {}", reply.text),
        };
        *outcomes.entry((reply.status.as_u16(), code)).or_default() += 1;
    }
    let created = outcomes.get(&(201, String::new())).copied().unwrap_or(0);
    assert_eq!(created, 20, "{outcomes:?}");
    for (status, code) in outcomes.keys().filter(|(s, _)| *s == 409) {
        assert!(code == "insufficient_stock" || code == "conflict", "{status} {code}");
    }

    let loaded = app.handler.load::<Product>(product, None).await.unwrap();
    assert_eq!(loaded.state.available, 0);
    assert_eq!(loaded.state.reservations.len(), 20);
    assert!(loaded.state.reservations.values().all(|&q| q == 1));
    // Folding the stream event by event, the stock never went below zero.
    let events = app
        .get(&format!("/v1/streams/product-{product}/events?limit=1000"))
        .await;
    let mut available = 0_i64;
    for event in events.expect(StatusCode::OK)["events"].as_array().unwrap() {
        match event["event_type"].as_str().unwrap() {
            "product.added" => available = event["data"]["stock"].as_i64().unwrap(),
            "product.stock_reserved" => available -= event["data"]["quantity"].as_i64().unwrap(),
            other => panic!("unexpected {other}"),
        }
        assert!(available >= 0);
    }
    assert_eq!(available, 0);
}

#[tokio::test]
async fn openapi_lists_the_routes_and_the_error_schema() {
    let app = App::new().await;
    let reply = app.get("/openapi.json").await;
    let doc = reply.expect(StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/v1/customers",
        "/v1/customers/{id}/rename",
        "/v1/customers/{id}/change-email",
        "/v1/products",
        "/v1/products/{id}/restock",
        "/v1/products/{id}/change-price",
        "/v1/orders",
        "/v1/orders/{id}/confirm",
        "/v1/orders/{id}/cancel",
        "/v1/orders/{id}/ship",
        "/v1/orders/{id}/deliver",
    ] {
        let post = &paths.get(path).unwrap_or_else(|| panic!("{path} missing"))["post"];
        assert!(post["requestBody"].is_object(), "{path} has no request body");
        let parameters: Vec<&str> = post["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert!(parameters.contains(&"Idempotency-Key"), "{path}: {parameters:?}");
        assert!(parameters.contains(&"If-Match"), "{path}: {parameters:?}");
        for status in ["400", "401", "403", "413", "415", "503"] {
            assert!(post["responses"][status].is_object(), "{path} lacks {status}");
        }
    }
    for path in [
        "/v1/streams/{stream_id}/events",
        "/v1/log",
        "/v1/orders/{id}/state",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(paths[path]["get"].is_object(), "{path} missing");
    }
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                assert!(
                    response["description"].as_str().is_some_and(|d| !d.is_empty()),
                    "{method} {path} {status} has no description"
                );
            }
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for schema in [
        "ErrorBody",
        "ErrorObject",
        "CommandAnswerBody",
        "PlaceOrderBody",
        "OrderStateView",
        "EventView",
    ] {
        assert!(schemas.contains_key(schema), "{schema} missing");
    }
    assert_eq!(schemas["PlaceOrderBody"]["required"], json!(["customer_id", "lines"]));
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert_eq!(
        paths["/v1/orders"]["post"]["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CommandAnswerBody"
    );
}

#[tokio::test]
async fn metrics_count_requests_per_route_template() {
    let app = App::new().await;
    let id = Uuid::now_v7();
    app.get(&format!("/v1/orders/{id}/state"))
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    let reply = app.get("/metrics").await;
    reply.expect(StatusCode::OK);
    assert!(reply.header("content-type").unwrap().starts_with("text/plain"));
    let line = reply
        .text
        .lines()
        .find(|l| {
            l.starts_with("http_requests_total{")
                && l.contains(r#"method="GET""#)
                && l.contains(r#"route="/v1/orders/{id}/state""#)
                && l.contains(r#"status="404""#)
        })
        .unwrap_or_else(|| panic!("no counter for the request in:\n{}", reply.text));
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0, "{line}");
    assert!(
        reply
            .text
            .lines()
            .any(|l| l.starts_with("http_request_duration_seconds_bucket{")
                && l.contains(r#"route="/v1/orders/{id}/state""#)),
        "no latency histogram"
    );
    assert!(
        !reply.text.contains(&id.to_string()),
        "a concrete path leaked into a label"
    );
}

#[tokio::test]
async fn health_and_readiness() {
    let (store, pool) = sqlite_store().await;
    let app = App::with(store, HttpConfig::new(Auth::Disabled)).await;
    let health = app.get("/health").await;
    assert_eq!(health.expect(StatusCode::OK)["status"], "ok");
    let customer = app.customer().await;
    let ready = app.get("/ready").await;
    let ready = ready.expect(StatusCode::OK);
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["head_position"], 1);

    // The whole flow works on the embedded store too.
    let product = app.product(2).await;
    let (order, _) = app.order(customer, product, 2).await;
    let state = app.get(&format!("/v1/orders/{order}/state")).await;
    assert_eq!(state.expect(StatusCode::OK)["status"], "pending");

    pool.close().await;
    let ready = app.get("/ready").await;
    ready.expect_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert_eq!(app.get("/health").await.status, StatusCode::OK);
}

#[tokio::test]
async fn store_failures_answer_generic_5xx() {
    let real = pg_store().await;

    let down = App::with(
        Arc::new(FaultyStore {
            inner: real.clone(),
            fault: Fault::Down,
        }),
        HttpConfig::new(Auth::Disabled),
    )
    .await;
    let reply = down
        .post("/v1/customers", json!({"name": "Ada", "email": "ada@example.com"}))
        .await;
    let details = reply.expect_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert_eq!(details, &json!({}));
    assert!(!reply.text.contains("pool"), "the cause leaked: {}", reply.text);
    assert_eq!(reply.header("retry-after"), Some("1"));
    down.get("/ready")
        .await
        .expect_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");

    let corrupt = App::with(
        Arc::new(FaultyStore {
            inner: real.clone(),
            fault: Fault::Garbage,
        }),
        HttpConfig::new(Auth::Disabled),
    )
    .await;
    let reply = corrupt
        .post(&format!("/v1/orders/{}/confirm", Uuid::now_v7()), json!({}))
        .await;
    reply.expect_error(StatusCode::INTERNAL_SERVER_ERROR, "internal");
    assert!(!reply.text.contains("order.placed"), "the cause leaked: {}", reply.text);

    let mut config = HttpConfig::new(Auth::Disabled);
    config.request_timeout = Duration::from_millis(100);
    let slow = App::with(
        Arc::new(FaultyStore {
            inner: real.clone(),
            fault: Fault::Slow(Duration::from_secs(2)),
        }),
        config,
    )
    .await;
    let reply = slow
        .post("/v1/customers", json!({"name": "Ada", "email": "ada@example.com"}))
        .await;
    reply.expect_error(StatusCode::SERVICE_UNAVAILABLE, "timeout");
    assert!(reply.header("x-request-id").is_some());
    assert_eq!(real.head_position().await.unwrap(), 0);
}

#[tokio::test]
async fn serve_answers_on_a_socket_and_stops_on_shutdown() {
    let store = pg_store().await;
    let handler = write_side::CommandHandler::new(store, write_side::HandlerOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = write_side::http::router(write_side::http::HttpState::new(
        write_side::Services::single(event_schemas::Service::Customers, handler),
        HttpConfig::new(Auth::Disabled),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(write_side::http::serve_on(
        listener,
        app,
        Duration::from_secs(2),
        async move {
            let _ = stopped.await;
        },
    ));
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve did not stop")
        .unwrap()
        .unwrap();
}
