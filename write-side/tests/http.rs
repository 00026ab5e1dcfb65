//! The command HTTP API through its `Router` (`tower::ServiceExt::oneshot`), against a real
//! event store: a fresh PostgreSQL database per test (`scripts/services up`), SQLite for one.
//!
//! Every bad request must get the right 4xx in the error format *and* append nothing: the
//! tests compare the store's head position before and after.
//!
//! Placing an order answers at once with the order `pending`; the place-order saga (ADR 0010),
//! whose driver a test starts when it needs orders to progress ([`App::run_sagas`]), reserves
//! the stock, authorizes the payment and confirms the order, or cancels it `out_of_stock`. A
//! client never confirms (409 `confirmed_by_saga`). What one service asks of another
//! (reservations, payment mutations) needs the `service` scope; the sagas' operations and the
//! simulated payment provider's settings need `admin`.
#![allow(clippy::unwrap_used)]

#[path = "http/support.rs"]
mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use support::{App, Fault, FaultyStore, Reply, eventually, pg_store, post, sqlite_store};
use uuid::Uuid;
use write_side::domain::Product;
use write_side::gateway::GatewaySettings;
use write_side::http::{Auth, HttpConfig, Scope, TokenSpec};
use write_side::orders::saga::payment_id;

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

/// The order's state (`GET /v1/orders/{id}/state`), which must answer 200.
async fn state_of(app: &App, order: Uuid) -> Value {
    app.get(&format!("/v1/orders/{order}/state"))
        .await
        .expect(StatusCode::OK)
        .clone()
}

/// Waits until the order's state shows `status`, answering the state.
async fn status_becomes(app: &App, order: Uuid, status: &str) -> Value {
    eventually(format!("order {order} becomes {status}"), || async move {
        let state = state_of(app, order).await;
        (state["status"] == status).then_some(state)
    })
    .await
}

/// The events of `stream_id`, each as `(event_type, position)`.
async fn events_of(app: &App, stream_id: &str) -> Vec<(String, u64)> {
    app.get(&format!("/v1/streams/{stream_id}/events?limit=1000"))
        .await
        .expect(StatusCode::OK)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap().to_owned(),
                e["position"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The payment of `order` (`GET /v1/payments/{id}`, its id derived from the order's).
async fn payment_of(app: &App, order: Uuid) -> Reply {
    app.get(&format!("/v1/payments/{}", payment_id(order))).await
}

#[tokio::test]
async fn order_lifecycle() {
    let app = App::new().await;
    let customer = app.customer().await;
    let product = app.product(10).await;

    // Placed and answered at once: the order `pending` and its saga started, in one commit.
    // (No saga driver runs yet: nothing else moves.)
    let before = app.head().await;
    let (order, reply) = app.order(customer, product, 3).await;
    let (stream_id, version, position) = answer_of(&reply);
    assert_eq!((stream_id.as_str(), version), (format!("order-{order}").as_str(), 1));
    assert_eq!(position, app.head().await);
    let log = app
        .get(&format!("/v1/log?service=orders&from_position={}", before + 1))
        .await;
    let appended: Vec<(String, String, u64)> = log.expect(StatusCode::OK)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap().to_owned(),
                e["stream_id"].as_str().unwrap().to_owned(),
                e["position"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        appended,
        [
            ("order.placed".to_owned(), format!("order-{order}"), position - 1),
            ("saga.started".to_owned(), format!("saga-{order}"), position),
        ],
        "the order and its saga in one commit, answered at the saga's position"
    );
    let state = state_of(&app, order).await;
    assert_eq!(
        (state["status"].as_str(), state["version"].as_u64()),
        (Some("pending"), Some(1))
    );
    let loaded = app.handler.load::<Product>(product, None).await.unwrap();
    assert_eq!(loaded.state.available, 10, "nothing reserved before the saga runs");

    // The saga reserves the stock, authorizes the payment and confirms the order.
    app.run_sagas();
    let state = status_becomes(&app, order, "confirmed").await;
    assert_eq!(state["version"], 2);
    let loaded = app.handler.load::<Product>(product, None).await.unwrap();
    assert_eq!((loaded.state.available, loaded.state.reserved_for(order)), (7, 3));
    let payment = payment_of(&app, order).await;
    let payment = payment.expect(StatusCode::OK);
    assert_eq!(
        (payment["status"].as_str(), payment["authorized_minor"].as_i64()),
        (Some("authorized"), Some(3 * 1250))
    );
    assert!(app.settled(order).await.confirmed);

    // A client cannot confirm (`{}` or no body): 409, nothing appended.
    let head = app.head().await;
    for request in [
        json_post(&format!("/v1/orders/{order}/confirm"), "{}"),
        Request::post(format!("/v1/orders/{order}/confirm"))
            .body(Body::empty())
            .unwrap(),
    ] {
        let reply = app.send(request).await;
        let details = reply.expect_error(StatusCode::CONFLICT, "confirmed_by_saga");
        assert_eq!(details["order_id"], order.to_string());
    }
    assert_eq!(app.head().await, head, "a refused confirm appended something");

    let reply = app
        .post(
            &format!("/v1/orders/{order}/ship"),
            json!({"carrier": "DHL", "tracking": "JD0001"}),
        )
        .await;
    reply.expect(StatusCode::OK);
    assert_eq!(answer_of(&reply).1, 3);
    let reply = app
        .send(
            Request::post(format!("/v1/orders/{order}/deliver"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    reply.expect(StatusCode::OK);
    let (_, version, delivered_at) = answer_of(&reply);
    assert_eq!(version, 4);

    let state = state_of(&app, order).await;
    assert_eq!(state["status"], "delivered");
    assert_eq!(state["version"], 4);
    assert_eq!(state["position"], delivered_at);
    assert_eq!(state["total_minor"], 3 * 1250);
    assert_eq!(state["currency"], "EUR");
    assert_eq!(state["customer"]["name"], "Ada Lovelace");
    assert_eq!(state["lines"][0]["quantity"], 3);
    assert_eq!(state["lines"][0]["unit_price_minor"], 1250);
    assert_eq!(state["shipment"], json!({"carrier": "DHL", "tracking": "JD0001"}));
    // Shipping made the saga capture the payment.
    app.completed(order, "captured").await;
    let payment = payment_of(&app, order).await;
    let payment = payment.expect(StatusCode::OK);
    assert_eq!(
        (payment["status"].as_str(), payment["captured_minor"].as_i64()),
        (Some("captured"), Some(3 * 1250))
    );

    // Cancelling another (confirmed) order: its saga releases the stock and voids the payment.
    let (second, _) = app.order(customer, product, 4).await;
    status_becomes(&app, second, "confirmed").await;
    let loaded = app.handler.load::<Product>(product, None).await.unwrap();
    assert_eq!(loaded.state.available, 3);
    let reply = app
        .post(
            &format!("/v1/orders/{second}/cancel"),
            json!({"reason": "changed my mind"}),
        )
        .await;
    reply.expect(StatusCode::OK);
    let state = state_of(&app, second).await;
    assert_eq!(state["status"], "cancelled");
    assert_eq!(state["cancellation_reason"], "changed my mind");
    assert_eq!(state["cancellation_reason_code"], "requested");
    let saga = app.completed(second, "cancelled").await;
    assert!(saga.voided && saga.lines.iter().all(|l| l.released), "{saga:?}");
    let loaded = app.handler.load::<Product>(product, None).await.unwrap();
    assert_eq!(loaded.state.available, 7);
    assert_eq!(loaded.state.reserved_for(second), 0);
    assert_eq!(
        payment_of(&app, second).await.expect(StatusCode::OK)["status"],
        "voided"
    );
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
    // Let the clock move past the placement before the saga confirms the order, so that "as
    // of" a time separates the two events.
    let events = app.get(&format!("/v1/streams/order-{order}/events")).await;
    let placed_time: chrono::DateTime<chrono::Utc> = events.expect(StatusCode::OK)["events"][0]["recorded_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    eventually("the clock moves past the placement", || async {
        (chrono::Utc::now() > placed_time + chrono::Duration::milliseconds(2)).then_some(())
    })
    .await;
    app.run_sagas();
    status_becomes(&app, order, "confirmed").await;
    app.settled(order).await;
    let order_events = events_of(&app, &format!("order-{order}")).await;
    assert_eq!(order_events[1].0, "order.confirmed");
    let confirmed_at = order_events[1].1;

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
    // The order's own last event; the answer's position is its saga's start, just after.
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
    let parse = |t: &str| t.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    assert!(
        parse(&placed_time) < parse(&confirmed_time),
        "{placed_time} {confirmed_time}"
    );
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
    let reserve = format!("/v1/products/{product}/reservations");
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
        // Confirming is the saga's alone, whatever the order.
        bad(
            "confirm a pending order",
            json_post(&format!("/v1/orders/{order}/confirm"), "{}"),
            S::CONFLICT,
            "confirmed_by_saga",
            None,
        ),
        bad(
            "confirm an unknown order",
            json_post(&format!("/v1/orders/{unknown}/confirm"), "{}"),
            S::CONFLICT,
            "confirmed_by_saga",
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
        // What the saga asks of inventory and payments.
        bad(
            "insufficient stock",
            json_post(&reserve, &format!(r#"{{"order_id":"{unknown}","quantity":6}}"#)),
            S::CONFLICT,
            "insufficient_stock",
            None,
        ),
        bad(
            "reserve nothing",
            json_post(&reserve, &format!(r#"{{"order_id":"{unknown}","quantity":0}}"#)),
            S::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("quantity"),
        ),
        bad(
            "reserve without an order",
            json_post(&reserve, r#"{"quantity":1}"#),
            S::BAD_REQUEST,
            "bad_request",
            Some("order_id"),
        ),
        bad(
            "reserve an unknown product",
            json_post(
                &format!("/v1/products/{unknown}/reservations"),
                &format!(r#"{{"order_id":"{order}","quantity":1}}"#),
            ),
            S::NOT_FOUND,
            "not_found",
            None,
        ),
        bad(
            "release with a bad order id",
            json_post(&format!("/v1/products/{product}/reservations/nope/release"), "{}"),
            S::BAD_REQUEST,
            "bad_request",
            None,
        ),
        bad(
            "abandon a saga with a bad id",
            json_post("/v1/sagas/nope/abandon", r#"{"reason":"stuck"}"#),
            S::BAD_REQUEST,
            "bad_request",
            None,
        ),
        bad(
            "authorize nothing",
            json_post(
                "/v1/payments",
                &format!(r#"{{"order_id":"{order}","amount_minor":0,"currency":"EUR"}}"#),
            ),
            S::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("amount_minor"),
        ),
        bad(
            "authorize in a lower-case currency",
            json_post(
                "/v1/payments",
                &format!(r#"{{"order_id":"{order}","amount_minor":100,"currency":"eur"}}"#),
            ),
            S::UNPROCESSABLE_ENTITY,
            "invalid",
            Some("currency"),
        ),
        bad(
            "capture an unknown payment",
            json_post(&format!("/v1/payments/{unknown}/capture"), r#"{"amount_minor":100}"#),
            S::NOT_FOUND,
            "not_found",
            None,
        ),
        bad(
            "void without an order",
            json_post(&format!("/v1/payments/{unknown}/void"), r#"{"reason":"no"}"#),
            S::BAD_REQUEST,
            "bad_request",
            Some("order_id"),
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
    let reply = app
        .send(json_post(
            &reserve,
            &format!(r#"{{"order_id":"{unknown}","quantity":6}}"#),
        ))
        .await;
    let details = reply.expect_error(StatusCode::CONFLICT, "insufficient_stock");
    assert_eq!(details["product_id"], product.to_string());
    assert_eq!(
        (details["requested"].as_i64(), details["available"].as_i64()),
        (Some(6), Some(5))
    );
    let reply = app.send(json_post(&format!("/v1/orders/{order}/confirm"), "{}")).await;
    let details = reply.expect_error(StatusCode::CONFLICT, "confirmed_by_saga");
    assert_eq!(details["order_id"], order.to_string());
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

const SERVICE: &str = "service-secret-0123456789";
const READER: &str = "reader-secret-0123456789";

/// A request with `token`, `body` as JSON (none for a GET).
fn authorized(method: &str, path: &str, token: &str, body: Option<Value>) -> Request<Body> {
    let request = with_token(Request::builder().method(method).uri(path), token);
    match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        None => request.body(Body::empty()).unwrap(),
    }
}

/// What one service asks of another (reservations, payment mutations) needs `service`; the
/// sagas' operations and the payment provider's settings need `admin`. A client's token
/// (`commands`) gets 403 on both and changes nothing; the scopes are independent, but that
/// `read` may GET every route.
#[tokio::test]
async fn the_service_and_admin_scopes() {
    let tokens = [
        TokenSpec::from_secret("writer", [Scope::Commands], WRITER),
        TokenSpec::from_secret("auditor", [Scope::Admin], AUDITOR),
        TokenSpec::from_secret("orders-service", [Scope::Service], SERVICE),
        TokenSpec::from_secret("console", [Scope::Read], READER),
    ];
    let app = App::with(pg_store().await, HttpConfig::new(Auth::tokens(tokens))).await;
    let send = |method: &'static str, path: String, token: &'static str, body: Option<Value>| {
        let app = app.clone();
        async move { app.send(authorized(method, &path, token, body)).await }
    };
    let product = Uuid::now_v7();
    let reply = send(
        "POST",
        "/v1/products".to_owned(),
        WRITER,
        Some(json!({
            "product_id": product, "sku": "AE-1", "name": "Analytical Engine",
            "price_minor": 1250, "currency": "EUR", "stock": 10,
        })),
    )
    .await;
    reply.expect(StatusCode::CREATED);
    let (order, payment) = (Uuid::now_v7(), Uuid::now_v7());
    let reserve = format!("/v1/products/{product}/reservations");
    let held = format!("/v1/products/{product}/reservations/{order}");
    let release = format!("/v1/products/{product}/reservations/{order}/release");
    let service_routes: Vec<(&str, String, Option<Value>)> = vec![
        ("POST", reserve.clone(), Some(json!({"order_id": order, "quantity": 2}))),
        ("GET", held.clone(), None),
        ("POST", release.clone(), Some(json!({}))),
        (
            "POST",
            "/v1/payments".to_owned(),
            Some(json!({"payment_id": payment, "order_id": order, "amount_minor": 2500, "currency": "EUR"})),
        ),
        (
            "POST",
            format!("/v1/payments/{payment}/capture"),
            Some(json!({"amount_minor": 2500})),
        ),
        (
            "POST",
            format!("/v1/payments/{payment}/refund"),
            Some(json!({"amount_minor": 2500})),
        ),
        (
            "POST",
            format!("/v1/payments/{payment}/void"),
            Some(json!({"order_id": order, "reason": "cancelled"})),
        ),
        (
            "POST",
            format!("/v1/payments/{payment}/decline"),
            Some(json!({"order_id": order, "reason": "insufficient funds"})),
        ),
    ];
    let admin_routes: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", format!("/v1/sagas/{order}"), None),
        ("GET", "/v1/sagas/parked".to_owned(), None),
        ("POST", format!("/v1/sagas/{order}/retry"), Some(json!({}))),
        (
            "POST",
            format!("/v1/sagas/{order}/abandon"),
            Some(json!({"reason": "stuck"})),
        ),
        ("GET", "/v1/services".to_owned(), None),
        ("GET", "/v1/gateway".to_owned(), None),
        (
            "PUT",
            "/v1/gateway".to_owned(),
            Some(json!({"decline_rate": 1.0, "latency_ms": 0, "unavailable": true})),
        ),
    ];

    // Known tokens without the route's scope: 403 naming it, nothing appended or changed.
    let head = app.head().await;
    for (routes, needed, wrong) in [
        (&service_routes, "service", [WRITER, AUDITOR]),
        (&admin_routes, "admin", [WRITER, SERVICE]),
    ] {
        for (method, path, body) in routes {
            for token in wrong {
                let reply = send(method, path.clone(), token, body.clone()).await;
                let details = reply.expect_error(StatusCode::FORBIDDEN, "forbidden");
                assert_eq!(details["required_scope"], needed, "{method} {path}");
            }
        }
    }
    // `read` may GET every one of those routes (the operations console's token), and nothing
    // else: every other method answers 403 naming the scope it needs.
    for (routes, needed) in [(&service_routes, "service"), (&admin_routes, "admin")] {
        for (method, path, body) in routes {
            let reply = send(method, path.clone(), READER, body.clone()).await;
            if *method == "GET" {
                assert!(
                    reply.status != StatusCode::UNAUTHORIZED && reply.status != StatusCode::FORBIDDEN,
                    "GET {path} with `read`: {} {}",
                    reply.status,
                    reply.text
                );
            } else {
                let details = reply.expect_error(StatusCode::FORBIDDEN, "forbidden");
                assert_eq!(details["required_scope"], needed, "{method} {path}");
            }
        }
    }
    for path in [
        "/v1/log?service=inventory".to_owned(),
        format!("/v1/products/{product}"),
    ] {
        send("GET", path, READER, None).await.expect(StatusCode::OK);
    }
    let reply = send(
        "POST",
        "/v1/customers".to_owned(),
        READER,
        Some(json!({"name": "Ada", "email": "ada@example.com"})),
    )
    .await;
    assert_eq!(
        reply.expect_error(StatusCode::FORBIDDEN, "forbidden")["required_scope"],
        "commands"
    );

    // A service's token is no client's: it cannot send the clients' commands.
    let reply = send(
        "POST",
        "/v1/customers".to_owned(),
        SERVICE,
        Some(json!({"name": "Ada", "email": "ada@example.com"})),
    )
    .await;
    assert_eq!(
        reply.expect_error(StatusCode::FORBIDDEN, "forbidden")["required_scope"],
        "commands"
    );
    assert_eq!(app.head().await, head, "a refused request appended something");
    assert_eq!(app.local.gateway().settings(), GatewaySettings::default());

    // The service's token passes: reserve, read, release; authorize, capture, refund; another
    // payment voided, another declined. Its events name it as their actor.
    let reply = send(
        "POST",
        reserve.clone(),
        SERVICE,
        Some(json!({"order_id": order, "quantity": 2})),
    )
    .await;
    let reserved = reply.expect(StatusCode::CREATED);
    assert_eq!(
        (
            reserved["quantity"].as_i64(),
            reserved["unit_price_minor"].as_i64(),
            reserved["currency"].as_str()
        ),
        (Some(2), Some(1250), Some("EUR"))
    );
    let reply = send("GET", held.clone(), SERVICE, None).await;
    assert_eq!(reply.expect(StatusCode::OK)["quantity"], 2);
    send("POST", release.clone(), SERVICE, Some(json!({})))
        .await
        .expect(StatusCode::OK);
    let reply = send("GET", held.clone(), SERVICE, None).await;
    assert_eq!(reply.expect(StatusCode::OK)["quantity"], 0);
    let reply = send(
        "POST",
        "/v1/payments".to_owned(),
        SERVICE,
        Some(json!({"payment_id": payment, "order_id": order, "amount_minor": 2500, "currency": "EUR"})),
    )
    .await;
    let authorized_body = reply.expect(StatusCode::CREATED);
    assert_eq!(authorized_body["payment_status"], "authorized");
    assert_eq!(authorized_body["decline_reason"], Value::Null);
    assert_eq!(authorized_body["stream_id"], format!("payment-{payment}"));
    for (step, body) in [
        ("capture", json!({"amount_minor": 2500})),
        ("refund", json!({"amount_minor": 2500})),
    ] {
        send("POST", format!("/v1/payments/{payment}/{step}"), SERVICE, Some(body))
            .await
            .expect(StatusCode::OK);
    }
    let reply = send("GET", format!("/v1/payments/{payment}"), WRITER, None).await;
    let state = reply.expect(StatusCode::OK);
    assert_eq!(
        (state["status"].as_str(), state["refunded_minor"].as_i64()),
        (Some("refunded"), Some(2500))
    );
    for (step, body) in [
        ("void", json!({"order_id": order, "reason": "cancelled"})),
        ("decline", json!({"order_id": order, "reason": "insufficient funds"})),
    ] {
        let other = Uuid::now_v7();
        send("POST", format!("/v1/payments/{other}/{step}"), SERVICE, Some(body))
            .await
            .expect(StatusCode::OK);
    }
    let reply = send("GET", format!("/v1/streams/product-{product}/events"), WRITER, None).await;
    let events = reply.expect(StatusCode::OK)["events"].as_array().unwrap().clone();
    assert_eq!(events[1]["event_type"], "product.stock_reserved");
    assert_eq!(events[1]["actor"], "orders-service");

    // The admin's token passes the operators' routes.
    let reply = send("GET", "/v1/sagas/parked".to_owned(), AUDITOR, None).await;
    assert_eq!(reply.expect(StatusCode::OK)["order_ids"], json!([]));
    let reply = send("GET", format!("/v1/sagas/{order}"), AUDITOR, None).await;
    reply.expect_error(StatusCode::NOT_FOUND, "not_found");
    let reply = send("GET", "/v1/services".to_owned(), AUDITOR, None).await;
    assert_eq!(
        reply.expect(StatusCode::OK)["services"].as_array().map(Vec::len),
        Some(3)
    );
    let reply = send("GET", "/v1/gateway".to_owned(), AUDITOR, None).await;
    assert_eq!(
        reply.expect(StatusCode::OK),
        &json!({"decline_rate": 0.0, "latency_ms": 0, "unavailable": false})
    );
}

/// `GET /v1/gateway` shows the simulated payment provider's settings and `PUT` changes them at
/// run time; bad settings are refused and change nothing. An unavailable provider makes an
/// authorization 503 `gateway_unavailable` recording nothing; a declining one records the
/// decline.
#[tokio::test]
async fn the_simulated_payment_provider_is_set_at_run_time() {
    let app = App::new().await;
    let put = |body: &str| {
        let app = app.clone();
        let request = Request::put("/v1/gateway")
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        async move { app.send(request).await }
    };
    let defaults = json!({"decline_rate": 0.0, "latency_ms": 0, "unavailable": false});
    assert_eq!(app.get("/v1/gateway").await.expect(StatusCode::OK), &defaults);

    for (what, body, status, code, field) in [
        (
            "a rate above 1",
            r#"{"decline_rate":1.5,"latency_ms":0,"unavailable":false}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            None,
        ),
        (
            "a negative rate",
            r#"{"decline_rate":-0.1,"latency_ms":0,"unavailable":false}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            None,
        ),
        (
            "a latency above a minute",
            r#"{"decline_rate":0,"latency_ms":60001,"unavailable":false}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            None,
        ),
        (
            "a negative latency",
            r#"{"decline_rate":0,"latency_ms":-1,"unavailable":false}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
            Some("latency_ms"),
        ),
        (
            "a missing field",
            r#"{"decline_rate":0,"latency_ms":0}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
            Some("unavailable"),
        ),
        ("not JSON", "unavailable", StatusCode::BAD_REQUEST, "invalid_json", None),
    ] {
        let reply = put(body).await;
        let details = reply.expect_error(status, code);
        if let Some(field) = field {
            assert_eq!(details["field"], field, "{what}");
        }
        assert_eq!(app.local.gateway().settings(), GatewaySettings::default(), "{what}");
        assert_eq!(app.get("/v1/gateway").await.json, defaults, "{what}");
    }

    // Unavailable: the authorization is refused with 503, nothing recorded; asked again once
    // the provider is back, it goes through.
    let unavailable = json!({"decline_rate": 0.0, "latency_ms": 0, "unavailable": true});
    let reply = put(&unavailable.to_string()).await;
    assert_eq!(reply.expect(StatusCode::OK), &unavailable);
    assert!(app.local.gateway().settings().unavailable);
    assert_eq!(app.get("/v1/gateway").await.json, unavailable);
    let (order, payment) = (Uuid::now_v7(), Uuid::now_v7());
    let authorize =
        |payment: Uuid| json!({"payment_id": payment, "order_id": order, "amount_minor": 2500, "currency": "EUR"});
    let head = app.head().await;
    let reply = app.post("/v1/payments", authorize(payment)).await;
    reply.expect_error(StatusCode::SERVICE_UNAVAILABLE, "gateway_unavailable");
    assert_eq!(app.head().await, head, "an unanswered authorization recorded something");
    app.get(&format!("/v1/payments/{payment}"))
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");

    // Declining every payment: the decline is recorded, with the provider's reason.
    let declining = json!({"decline_rate": 1.0, "latency_ms": 0, "unavailable": false});
    put(&declining.to_string()).await.expect(StatusCode::OK);
    let declined = Uuid::now_v7();
    let reply = app.post("/v1/payments", authorize(declined)).await;
    let body = reply.expect(StatusCode::CREATED);
    assert_eq!(body["payment_status"], "declined");
    assert!(body["decline_reason"].as_str().is_some_and(|r| !r.is_empty()), "{body}");
    let state = app.get(&format!("/v1/payments/{declined}")).await;
    assert_eq!(state.expect(StatusCode::OK)["status"], "declined");

    put(&defaults.to_string()).await.expect(StatusCode::OK);
    assert_eq!(app.local.gateway().settings(), GatewaySettings::default());
    let reply = app.post("/v1/payments", authorize(payment)).await;
    let body = reply.expect(StatusCode::CREATED);
    assert_eq!(body["payment_status"], "authorized");
    let state = app.get(&format!("/v1/payments/{payment}")).await;
    assert_eq!(
        (
            state.expect(StatusCode::OK)["status"].as_str(),
            state.json["authorized_minor"].as_i64()
        ),
        (Some("authorized"), Some(2500))
    );
}

/// With every service up: `GET /v1/sagas/{id}` shows where a saga is and why it ended, and
/// `GET /v1/orders/{id}/overview` composes the order, its saga, its reservations (from
/// inventory) and its payment (from payments), `missing` empty. Reading them appends nothing.
#[tokio::test]
async fn sagas_and_order_overviews() {
    let app = App::new().await;
    let customer = app.customer().await;
    let product = app.product(5).await;
    app.run_sagas();
    let (order, _) = app.order(customer, product, 3).await;
    assert!(app.settled(order).await.confirmed);
    // More than is left: cancelled `out_of_stock`.
    let (refused, _) = app.order(customer, product, 3).await;
    app.completed(refused, "cancelled").await;
    let head = app.head().await;

    let saga = app.get(&format!("/v1/sagas/{order}")).await;
    let saga = saga.expect(StatusCode::OK).clone();
    assert_eq!(saga["order_id"], order.to_string());
    assert_eq!(saga["payment_id"], payment_id(order).to_string());
    assert_eq!(saga["phase"], "awaiting_shipment");
    assert_eq!((&saga["authorized"], &saga["confirmed"]), (&json!(true), &json!(true)));
    assert_eq!(
        saga["lines"],
        json!([{"product_id": product, "quantity": 3, "reserved": true, "released": false}])
    );
    assert_eq!((&saga["reason_code"], &saga["outcome"]), (&Value::Null, &Value::Null));
    assert!(saga["deadline"].as_str().is_some(), "{saga}");
    assert_eq!(saga["version"], 4, "started, reserved, authorized, confirmed: {saga}");

    let saga = app.get(&format!("/v1/sagas/{refused}")).await;
    let saga = saga.expect(StatusCode::OK).clone();
    assert_eq!(saga["phase"], "completed");
    assert_eq!(saga["reason_code"], "out_of_stock");
    assert_eq!(saga["outcome"], "cancelled");
    assert_eq!(saga["lines"][0]["reserved"], false);
    assert_eq!(saga["authorized"], false);

    let overview = app.get(&format!("/v1/orders/{order}/overview")).await;
    let overview = overview.expect(StatusCode::OK).clone();
    assert_eq!(overview["missing"], json!([]), "{overview}");
    assert_eq!(overview["order"]["order_id"], order.to_string());
    assert_eq!(overview["order"]["status"], "confirmed");
    assert_eq!(overview["order"]["total_minor"], 3 * 1250);
    assert_eq!(overview["saga"]["phase"], "awaiting_shipment");
    let reservations = overview["reservations"].as_array().expect("reservations");
    assert_eq!(reservations.len(), 1, "{overview}");
    assert_eq!(
        (
            reservations[0]["product_id"].as_str(),
            reservations[0]["order_id"].as_str(),
            reservations[0]["quantity"].as_i64()
        ),
        (
            Some(product.to_string().as_str()),
            Some(order.to_string().as_str()),
            Some(3)
        )
    );
    let payment = &overview["payment"];
    assert_eq!(payment["payment_id"], payment_id(order).to_string());
    assert_eq!(payment["order_id"], order.to_string());
    assert_eq!(payment["status"], "authorized");
    assert_eq!(payment["authorized_minor"], 3 * 1250);

    // The refused order: inventory holds nothing for it, payments was never asked.
    let overview = app.get(&format!("/v1/orders/{refused}/overview")).await;
    let overview = overview.expect(StatusCode::OK).clone();
    assert_eq!(overview["missing"], json!([]), "{overview}");
    assert_eq!(overview["order"]["status"], "cancelled");
    assert_eq!(overview["order"]["cancellation_reason_code"], "out_of_stock");
    assert_eq!(overview["saga"]["reason_code"], "out_of_stock");
    assert_eq!(overview["reservations"][0]["quantity"], 0, "{overview}");
    assert_eq!(overview["payment"], Value::Null, "{overview}");

    // The services the orders service calls: all up, their breakers closed.
    let services = app.get("/v1/services").await;
    let services = services.expect(StatusCode::OK)["services"].as_array().unwrap().clone();
    let names: BTreeSet<&str> = services.iter().map(|s| s["service"].as_str().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["customers", "inventory", "payments"]));
    for service in &services {
        assert_eq!(
            (&service["healthy"], &service["breaker"]),
            (&json!(true), &json!("closed")),
            "{service}"
        );
    }
    assert_eq!(
        app.get("/v1/sagas/parked").await.expect(StatusCode::OK)["order_ids"],
        json!([])
    );

    let unknown = Uuid::now_v7();
    app.get(&format!("/v1/sagas/{unknown}"))
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    app.get(&format!("/v1/orders/{unknown}/overview"))
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.head().await, head, "a read appended something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotent_request_ten_times_at_once_appends_once() {
    let app = App::new().await;
    let customer = app.customer().await;
    let product = app.product(100).await;

    // With the id given, and with the id made up by the server: either way one append and
    // ten identical answers.
    let mut order = None;
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
        // An order: the order and its saga, once (no saga driver runs yet).
        let appended: Vec<(&str, &str)> = appended
            .iter()
            .map(|e| (e["event_type"].as_str().unwrap(), e["stream_id"].as_str().unwrap()))
            .collect();
        let saga_stream = stream_id.replace("order-", "saga-");
        let expected = if key.starts_with("order") {
            vec![
                ("order.placed", stream_id.as_str()),
                ("saga.started", saga_stream.as_str()),
            ]
        } else {
            vec![("customer.registered", stream_id.as_str())]
        };
        assert_eq!(appended, expected, "{key}");
        if key.starts_with("order") {
            order = Some(Uuid::parse_str(stream_id.strip_prefix("order-").unwrap()).unwrap());
        }

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

    // Its saga runs: the stock is reserved once.
    let order = order.expect("an order was placed");
    app.run_sagas();
    assert!(app.settled(order).await.confirmed);
    let loaded = app.handler.load::<Product>(product, None).await.unwrap();
    assert_eq!(loaded.state.available, 98, "the order reserved its stock once");
    let types: Vec<String> = events_of(&app, &format!("product-{product}"))
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(types, ["product.added", "product.stock_reserved"]);
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
    app.run_sagas();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..32 {
        let app = app.clone();
        let body = json!({"customer_id": customer, "lines": [{"product_id": product, "quantity": 1}]});
        tasks.spawn(async move {
            let request = post("/v1/orders")
                .header("idempotency-key", format!("client-{client}"))
                .body(Body::from(body.to_string()))
                .unwrap();
            app.send(request).await
        });
    }
    // Every order is accepted at once, pending; the sagas race for the stock.
    let mut orders = BTreeSet::new();
    for reply in tasks.join_all().await {
        reply.expect(StatusCode::CREATED);
        let (stream_id, version, _) = answer_of(&reply);
        assert_eq!(version, 1);
        orders.insert(Uuid::parse_str(stream_id.strip_prefix("order-").unwrap()).unwrap());
    }
    assert_eq!(orders.len(), 32);

    // Exactly the stock's worth is confirmed; the others are cancelled `out_of_stock`, never
    // asking payments.
    let (mut confirmed, mut cancelled) = (BTreeSet::new(), BTreeSet::new());
    for &order in &orders {
        let saga = app.settled(order).await;
        let state = state_of(&app, order).await;
        if saga.confirmed {
            assert_eq!(state["status"], "confirmed", "{state}");
            let payment = payment_of(&app, order).await;
            assert_eq!(payment.expect(StatusCode::OK)["status"], "authorized");
            confirmed.insert(order);
        } else {
            assert_eq!(saga.outcome.as_deref(), Some("cancelled"), "{saga:?}");
            assert_eq!(state["status"], "cancelled", "{state}");
            assert_eq!(state["cancellation_reason_code"], "out_of_stock", "{state}");
            payment_of(&app, order)
                .await
                .expect_error(StatusCode::NOT_FOUND, "not_found");
            cancelled.insert(order);
        }
    }
    assert_eq!((confirmed.len(), cancelled.len()), (20, 12));

    let loaded = app.handler.load::<Product>(product, None).await.unwrap();
    assert_eq!(loaded.state.available, 0);
    assert_eq!(loaded.state.reservations.len(), 20);
    assert!(loaded.state.reservations.values().all(|&q| q == 1));
    assert_eq!(
        loaded.state.reservations.keys().copied().collect::<BTreeSet<_>>(),
        confirmed,
        "the confirmed orders hold the stock, the cancelled ones nothing"
    );
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
    let tokens = [TokenSpec::from_secret("writer", [Scope::Commands], WRITER)];
    let app = App::with(pg_store().await, HttpConfig::new(Auth::tokens(tokens))).await;
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
        "/v1/products/{id}/reservations",
        "/v1/products/{id}/reservations/{order_id}/release",
        "/v1/orders",
        "/v1/orders/{id}/confirm",
        "/v1/orders/{id}/cancel",
        "/v1/orders/{id}/ship",
        "/v1/orders/{id}/deliver",
        "/v1/payments",
        "/v1/payments/{id}/capture",
        "/v1/payments/{id}/void",
        "/v1/payments/{id}/refund",
        "/v1/payments/{id}/decline",
        "/v1/sagas/{id}/retry",
        "/v1/sagas/{id}/abandon",
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
        "/v1/customers/{id}",
        "/v1/products/{id}",
        "/v1/products/{id}/reservations/{order_id}",
        "/v1/orders/{id}/state",
        "/v1/orders/{id}/overview",
        "/v1/payments/{id}",
        "/v1/sagas/{id}",
        "/v1/sagas/parked",
        "/v1/services",
        "/v1/gateway",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(paths[path]["get"].is_object(), "{path} missing");
    }
    let put = &paths["/v1/gateway"]["put"];
    assert!(put["requestBody"].is_object(), "PUT /v1/gateway has no request body");
    assert!(put["responses"]["422"].is_object(), "PUT /v1/gateway lacks 422");
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

    // Confirming is the saga's: the route answers 409 `confirmed_by_saga`, and nothing else
    // of its own.
    let confirm = &paths["/v1/orders/{id}/confirm"]["post"]["responses"];
    assert!(
        confirm["409"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("confirmed_by_saga")),
        "{confirm}"
    );
    let successes: Vec<&String> = confirm
        .as_object()
        .unwrap()
        .keys()
        .filter(|status| status.starts_with('2'))
        .collect();
    assert!(successes.is_empty(), "confirm answers {successes:?}");

    // The scope each route needs.
    let scope = |method: &str, path: &str| paths[path][method]["security"][0]["bearer"].clone();
    for (method, path, needed) in [
        ("post", "/v1/orders", "commands"),
        ("get", "/v1/orders/{id}/overview", "commands"),
        ("get", "/v1/payments/{id}", "commands"),
        ("post", "/v1/products/{id}/reservations", "service"),
        ("get", "/v1/products/{id}/reservations/{order_id}", "service"),
        ("post", "/v1/products/{id}/reservations/{order_id}/release", "service"),
        ("post", "/v1/payments", "service"),
        ("post", "/v1/payments/{id}/capture", "service"),
        ("post", "/v1/payments/{id}/void", "service"),
        ("post", "/v1/payments/{id}/refund", "service"),
        ("post", "/v1/payments/{id}/decline", "service"),
        ("get", "/v1/sagas/{id}", "admin"),
        ("get", "/v1/sagas/parked", "admin"),
        ("post", "/v1/sagas/{id}/retry", "admin"),
        ("post", "/v1/sagas/{id}/abandon", "admin"),
        ("get", "/v1/services", "admin"),
        ("get", "/v1/gateway", "admin"),
        ("put", "/v1/gateway", "admin"),
        ("get", "/v1/log", "admin"),
    ] {
        assert_eq!(scope(method, path), json!([needed]), "{method} {path}");
    }

    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for schema in [
        "ErrorBody",
        "ErrorObject",
        "CommandAnswerBody",
        "PlaceOrderBody",
        "OrderStateView",
        "EventView",
        "ReserveStockBody",
        "ReservationView",
        "HeldView",
        "AuthorizePaymentBody",
        "AuthorizationAnswerBody",
        "PaymentStateView",
        "GatewaySettings",
        "SagaView",
        "Overview",
        "ServicesView",
    ] {
        assert!(schemas.contains_key(schema), "{schema} missing");
    }
    assert_eq!(schemas["PlaceOrderBody"]["required"], json!(["customer_id", "lines"]));
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert_eq!(
        paths["/v1/orders"]["post"]["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CommandAnswerBody"
    );
    assert_eq!(
        paths["/v1/payments"]["post"]["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/AuthorizationAnswerBody"
    );
    assert!(
        paths["/v1/payments"]["post"]["responses"]["503"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("gateway_unavailable")),
        "POST /v1/payments does not name gateway_unavailable"
    );
}

/// A process that checks no token (the embedded demo) declares none: a client generated from its
/// document sends no token and expects no 401.
#[tokio::test]
async fn without_authentication_the_document_declares_no_security() {
    let app = App::new().await;
    let reply = app.get("/openapi.json").await;
    let doc = reply.expect(StatusCode::OK);
    assert!(
        doc["components"]["securitySchemes"]
            .as_object()
            .is_none_or(|s| s.is_empty()),
        "{}",
        doc["components"]["securitySchemes"]
    );
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(op.get("security").is_none(), "{method} {path} declares security");
            for status in ["401", "403"] {
                assert!(
                    op["responses"].get(status).is_none(),
                    "{method} {path} describes {status}"
                );
            }
        }
    }
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

    // The whole flow works on the embedded store too, the saga included.
    let product = app.product(2).await;
    let (order, _) = app.order(customer, product, 2).await;
    assert_eq!(state_of(&app, order).await["status"], "pending");
    app.run_sagas();
    status_becomes(&app, order, "confirmed").await;
    assert!(app.settled(order).await.confirmed);

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
        .post(
            &format!("/v1/orders/{}/ship", Uuid::now_v7()),
            json!({"carrier": "DHL", "tracking": "JD0001"}),
        )
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
