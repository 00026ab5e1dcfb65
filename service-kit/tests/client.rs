//! `service_kit::client` against our own axum router, served on 127.0.0.1:0 and called
//! in-process: the same test runs on both targets, each with a fresh upstream that counts the
//! requests it gets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use service_kit::client::{
    BreakerSettings, BreakerState, CallContext, ClientError, ClientSettings, Secret, ServiceClient, Target,
};
use service_kit::http::{ApiError, Edge, RequestContext, edge};

const TOKEN: &str = "s3cret-token-value";

/// The upstream service of one test: what it answers, and how many requests reached a handler.
#[derive(Default)]
struct Upstream {
    hits: AtomicUsize,
    /// `/flaky` answers `fail_status` this many times, then 200.
    fail_first: AtomicUsize,
    fail_status: AtomicU16,
    /// `/switch` answers 503 while set, 200 otherwise.
    down: AtomicBool,
}

impl Upstream {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn hit(&self) {
        self.hits.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Http,
    InProcess,
}

const KINDS: [Kind; 2] = [Kind::Http, Kind::InProcess];

/// A fresh upstream and a target reaching it: a real server on 127.0.0.1:0 (running until the
/// test's runtime ends), or the router itself.
async fn upstream(kind: Kind) -> (Arc<Upstream>, Target) {
    let upstream = Arc::new(Upstream {
        fail_status: AtomicU16::new(503),
        ..Upstream::default()
    });
    let router = router(upstream.clone());
    let target = match kind {
        Kind::Http => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, router).await });
            Target::http(&format!("http://{address}")).unwrap()
        }
        Kind::InProcess => Target::InProcess(router),
    };
    (upstream, target)
}

fn router(upstream: Arc<Upstream>) -> Router {
    Router::new()
        .route("/echo", get(echo).post(echo_body))
        .route("/flaky", get(flaky).post(flaky))
        .route("/switch", get(switch))
        .route("/conflict", get(conflict).post(conflict))
        .route("/boom", get(boom))
        .route("/not-json", get(not_json))
        .route("/slow", get(slow))
        .with_state(upstream)
        .layer(from_fn_with_state(
            Edge {
                request_timeout: Duration::from_secs(30),
                in_flight: None,
            },
            edge,
        ))
}

/// What `/echo` saw.
#[derive(Debug, Deserialize)]
struct Echo {
    correlation_id: String,
    causation_id: Option<String>,
    idempotency_key: Option<String>,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Option<Value>,
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

fn echo_of(context: &RequestContext, headers: &HeaderMap, body: Option<Value>) -> Json<Value> {
    Json(json!({
        "correlation_id": context.correlation_id,
        "causation_id": header(headers, "x-causation-id"),
        "idempotency_key": header(headers, "idempotency-key"),
        "authorization": header(headers, "authorization"),
        "content_type": header(headers, "content-type"),
        "body": body,
    }))
}

async fn echo(
    State(upstream): State<Arc<Upstream>>,
    Extension(context): Extension<RequestContext>,
    headers: HeaderMap,
) -> Json<Value> {
    upstream.hit();
    echo_of(&context, &headers, None)
}

async fn echo_body(
    State(upstream): State<Arc<Upstream>>,
    Extension(context): Extension<RequestContext>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    upstream.hit();
    echo_of(&context, &headers, Some(body))
}

async fn flaky(State(upstream): State<Arc<Upstream>>) -> Response {
    upstream.hit();
    let failing = upstream
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        let status = StatusCode::from_u16(upstream.fail_status.load(Ordering::SeqCst)).unwrap();
        return ApiError::new(status, "unavailable", "try again").into_response();
    }
    Json(json!({"ok": true})).into_response()
}

async fn switch(State(upstream): State<Arc<Upstream>>) -> Response {
    upstream.hit();
    if upstream.down.load(Ordering::SeqCst) {
        return ApiError::unavailable("the stock database").into_response();
    }
    Json(json!({"ok": true})).into_response()
}

async fn conflict(State(upstream): State<Arc<Upstream>>) -> ApiError {
    upstream.hit();
    ApiError::new(StatusCode::CONFLICT, "insufficient_stock", "only 1 of SKU-1 left")
        .with_detail("sku", "SKU-1")
        .with_detail("available", 1)
}

async fn boom(State(upstream): State<Arc<Upstream>>) -> ApiError {
    upstream.hit();
    ApiError::internal()
}

async fn not_json(State(upstream): State<Arc<Upstream>>) -> &'static str {
    upstream.hit();
    "hello"
}

async fn slow(State(upstream): State<Arc<Upstream>>) -> Json<Value> {
    upstream.hit();
    tokio::time::sleep(Duration::from_secs(30)).await;
    Json(json!({"ok": true}))
}

#[derive(Debug, Deserialize)]
struct Ok {
    ok: bool,
}

/// Fast settings: millisecond backoffs, and a breaker out of the way unless a test sets one.
fn settings(target: Target) -> ClientSettings {
    ClientSettings {
        token: Some(Secret::new(TOKEN)),
        timeout: Duration::from_secs(5),
        retries: 2,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(10),
        breaker: BreakerSettings {
            failures: 1_000,
            ..BreakerSettings::default()
        },
        ..ClientSettings::new("inventory", target)
    }
}

fn call() -> CallContext {
    CallContext::new("corr-1", "cause-1")
}

/// Waits until `check` holds, failing the test after `deadline`.
async fn wait_until(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !check() {
        assert!(Instant::now() < until, "not {what} within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn assert_no_token(what: &str, text: &str) {
    assert!(!text.contains(TOKEN), "{what} shows the token: {text}");
}

#[tokio::test]
async fn a_json_answer_decodes_and_the_ids_and_the_token_arrive() {
    for kind in KINDS {
        let (upstream, target) = upstream(kind).await;
        let settings = settings(target);
        assert_no_token("the settings' Debug", &format!("{settings:?}"));
        let client = ServiceClient::new(settings).unwrap();
        assert_no_token("the client's Debug", &format!("{client:?}"));

        let echo: Echo = client.get_json("/echo", &call()).await.unwrap();
        assert_eq!(echo.correlation_id, "corr-1", "{kind:?}");
        assert_eq!(echo.causation_id.as_deref(), Some("cause-1"), "{kind:?}");
        assert_eq!(echo.idempotency_key, None, "{kind:?}");
        assert_eq!(echo.authorization, Some(format!("Bearer {TOKEN}")), "{kind:?}");
        assert_eq!(echo.body, None, "{kind:?}");

        // A POST with a key, from a clone on another task (the futures are Send; clones share).
        let other = client.clone();
        let echo: Echo = tokio::spawn(async move {
            let call = call().with_idempotency_key("key-1");
            other
                .post_json("/echo", &json!({"sku": "SKU-1", "quantity": 2}), &call)
                .await
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(echo.idempotency_key.as_deref(), Some("key-1"), "{kind:?}");
        assert_eq!(echo.content_type.as_deref(), Some("application/json"), "{kind:?}");
        assert_eq!(echo.body, Some(json!({"sku": "SKU-1", "quantity": 2})), "{kind:?}");
        assert_eq!(echo.authorization, Some(format!("Bearer {TOKEN}")), "{kind:?}");
        assert_eq!(upstream.hits(), 2, "{kind:?}");
        assert_eq!(client.breaker_state(), BreakerState::Closed, "{kind:?}");
    }
}

#[tokio::test]
async fn transient_answers_are_retried_until_one_succeeds() {
    for kind in KINDS {
        let (upstream, target) = upstream(kind).await;
        let client = ServiceClient::new(settings(target)).unwrap();
        for status in [503, 429, 502, 504] {
            upstream.fail_status.store(status, Ordering::SeqCst);
            upstream.fail_first.store(1, Ordering::SeqCst);
            let before = upstream.hits();
            let answer: Ok = client.get_json("/flaky", &call()).await.unwrap();
            assert!(answer.ok);
            assert_eq!(upstream.hits() - before, 2, "{kind:?}: a GET after a {status}");
        }

        // Two failures, then success: the third and last attempt (retries = 2).
        upstream.fail_status.store(503, Ordering::SeqCst);
        upstream.fail_first.store(2, Ordering::SeqCst);
        let before = upstream.hits();
        let call = call().with_idempotency_key("key-2");
        let answer: Ok = client.post_json("/flaky", &json!({}), &call).await.unwrap();
        assert!(answer.ok);
        assert_eq!(upstream.hits() - before, 3, "{kind:?}: a POST with an Idempotency-Key");
    }
}

#[tokio::test]
async fn a_post_without_idempotency_key_is_not_retried() {
    for kind in KINDS {
        let (upstream, target) = upstream(kind).await;
        let client = ServiceClient::new(settings(target)).unwrap();
        upstream.fail_first.store(1, Ordering::SeqCst);
        let error = client
            .post_json::<_, Ok>("/flaky", &json!({}), &call())
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ClientError::Unavailable { service, reason }
                if service == "inventory" && reason.contains("503") && reason.contains("not retried")),
            "{kind:?}: {error:?}"
        );
        assert_eq!(upstream.hits(), 1, "{kind:?}");
    }
}

#[tokio::test]
async fn a_rejection_keeps_the_error_body_and_is_not_retried() {
    for kind in KINDS {
        let (upstream, target) = upstream(kind).await;
        let client = ServiceClient::new(settings(target)).unwrap();
        for idempotency_key in [None, Some("key-3")] {
            let before = upstream.hits();
            let call = CallContext {
                idempotency_key: idempotency_key.map(str::to_owned),
                ..call()
            };
            let error = client
                .post_json::<_, Ok>("/conflict", &json!({"sku": "SKU-1"}), &call)
                .await
                .unwrap_err();
            assert_eq!(upstream.hits() - before, 1, "{kind:?}: not retried");
            let ClientError::Rejected { service, status, body } = &error else {
                panic!("{kind:?}: {error:?}")
            };
            assert_eq!((service.as_str(), *status), ("inventory", StatusCode::CONFLICT));
            assert_eq!(body.error.code, "insufficient_stock");
            assert_eq!(body.error.message, "only 1 of SKU-1 left");
            assert_eq!(body.error.details.get("sku"), Some(&json!("SKU-1")));

            // Passed on: the same answer, naming the service.
            let api = ApiError::from(error);
            assert_eq!((api.status(), api.code()), (StatusCode::CONFLICT, "insufficient_stock"));
            assert_eq!(api.message(), "only 1 of SKU-1 left");
            assert_eq!(api.details().get("sku"), Some(&json!("SKU-1")));
            assert_eq!(api.details().get("available"), Some(&json!(1)));
            assert_eq!(api.details().get("service"), Some(&json!("inventory")));
        }
        // A 4xx is an answer: the breaker stays closed.
        assert_eq!(client.breaker_state(), BreakerState::Closed);
    }
}

#[tokio::test]
async fn a_500_or_an_answer_that_does_not_decode_fails_without_retry() {
    for kind in KINDS {
        let (upstream, target) = upstream(kind).await;
        let client = ServiceClient::new(settings(target)).unwrap();

        let error = client.get_json::<Ok>("/boom", &call()).await.unwrap_err();
        assert!(
            matches!(&error, ClientError::Failed { status: Some(StatusCode::INTERNAL_SERVER_ERROR), reason, .. }
                if reason.contains("internal")),
            "{kind:?}: {error:?}"
        );
        assert_eq!(upstream.hits(), 1, "{kind:?}: a 500 is not retried");
        let api = ApiError::from(error);
        assert_eq!((api.status(), api.code()), (StatusCode::BAD_GATEWAY, "bad_gateway"));
        assert_eq!(api.details().get("service"), Some(&json!("inventory")));

        let error = client.get_json::<Ok>("/not-json", &call()).await.unwrap_err();
        assert!(
            matches!(&error, ClientError::Failed { status: Some(StatusCode::OK), reason, .. }
                if reason.contains("does not decode")),
            "{kind:?}: {error:?}"
        );
        assert_eq!(upstream.hits(), 2, "{kind:?}");

        // The wrong type for a 2xx that is JSON.
        let error = client.get_json::<Vec<u32>>("/echo", &call()).await.unwrap_err();
        assert!(matches!(error, ClientError::Failed { .. }), "{kind:?}: {error:?}");
        assert_eq!(client.breaker_state(), BreakerState::Closed, "{kind:?}");
    }
}

#[tokio::test]
async fn a_target_slower_than_the_timeout_is_unavailable_after_the_retries() {
    for kind in KINDS {
        let (upstream, target) = upstream(kind).await;
        let settings = ClientSettings {
            timeout: Duration::from_millis(100),
            ..settings(target)
        };
        let (timeout, retries, backoff_max) = (settings.timeout, settings.retries, settings.backoff_max);
        let client = ServiceClient::new(settings).unwrap();
        let started = Instant::now();
        let error = client.get_json::<Ok>("/slow", &call()).await.unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            matches!(&error, ClientError::Unavailable { reason, .. }
                if reason.contains("no answer within 100 ms") && reason.contains("3 attempts")),
            "{kind:?}: {error:?}"
        );
        assert_eq!(upstream.hits(), 3, "{kind:?}");
        let attempts = timeout * (retries + 1);
        assert!(elapsed >= attempts, "{kind:?}: {elapsed:?}");
        // The bound: every attempt's timeout and every backoff, with room for a slow machine.
        let bound = attempts + backoff_max * retries + Duration::from_secs(2);
        assert!(elapsed < bound, "{kind:?}: {elapsed:?} >= {bound:?}");

        let api = ApiError::from(error);
        assert_eq!(
            (api.status(), api.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
        assert_eq!(api.message(), "the inventory service is unavailable; retry later");
        assert_eq!(api.details().get("service"), Some(&json!("inventory")));
    }
}

#[tokio::test]
async fn the_breaker_opens_refuses_at_once_then_closes_after_a_successful_trial() {
    let breaker = BreakerSettings {
        failures: 3,
        open_for: Duration::from_millis(200),
        max_open_for: Duration::from_secs(5),
    };
    for kind in KINDS {
        let (upstream, target) = upstream(kind).await;
        let client = ServiceClient::new(ClientSettings {
            retries: 0,
            breaker,
            ..settings(target)
        })
        .unwrap();
        upstream.down.store(true, Ordering::SeqCst);

        // Three consecutive failures open it: the third call opens it.
        let mut opened_after = Instant::now();
        for n in 1..=3 {
            assert_eq!(
                client.breaker_state(),
                BreakerState::Closed,
                "{kind:?}: after {}",
                n - 1
            );
            opened_after = Instant::now();
            let error = client.get_json::<Ok>("/switch", &call()).await.unwrap_err();
            assert!(matches!(error, ClientError::Unavailable { .. }), "{kind:?}: {error:?}");
        }
        assert_eq!(upstream.hits(), 3, "{kind:?}");
        assert_eq!(client.breaker_state(), BreakerState::Open, "{kind:?}");

        // Open: refused without reaching the target (the target is healthy again by now).
        upstream.down.store(false, Ordering::SeqCst);
        let error = client.get_json::<Ok>("/switch", &call()).await.unwrap_err();
        assert!(
            matches!(&error, ClientError::CircuitOpen { service } if service == "inventory"),
            "{kind:?}: {error:?}"
        );
        assert_eq!(upstream.hits(), 3, "{kind:?}: nothing sent");
        let api = ApiError::from(error);
        assert_eq!(
            (api.status(), api.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );

        // After the open period (and not before) a trial goes through; its success closes it.
        wait_until("half-open", breaker.open_for * 20, || {
            client.breaker_state() == BreakerState::HalfOpen
        })
        .await;
        assert!(opened_after.elapsed() >= breaker.open_for, "{kind:?}");
        let answer: Ok = client.get_json("/switch", &call()).await.unwrap();
        assert!(answer.ok);
        assert_eq!(upstream.hits(), 4, "{kind:?}");
        assert_eq!(client.breaker_state(), BreakerState::Closed, "{kind:?}");
    }
}

#[tokio::test]
async fn a_failed_trial_reopens_the_breaker_for_twice_as_long() {
    let breaker = BreakerSettings {
        failures: 1,
        open_for: Duration::from_millis(150),
        max_open_for: Duration::from_secs(5),
    };
    for kind in KINDS {
        let (upstream, target) = upstream(kind).await;
        let client = ServiceClient::new(ClientSettings {
            retries: 0,
            breaker,
            ..settings(target)
        })
        .unwrap();
        upstream.down.store(true, Ordering::SeqCst);
        client.get_json::<Ok>("/switch", &call()).await.unwrap_err();
        assert_eq!(client.breaker_state(), BreakerState::Open, "{kind:?}");
        wait_until("half-open", breaker.open_for * 20, || {
            client.breaker_state() == BreakerState::HalfOpen
        })
        .await;

        // The trial fails: open again, for twice the first period.
        let reopened_after = Instant::now();
        let error = client.get_json::<Ok>("/switch", &call()).await.unwrap_err();
        assert!(matches!(error, ClientError::Unavailable { .. }), "{kind:?}: {error:?}");
        assert_eq!(upstream.hits(), 2, "{kind:?}");
        upstream.down.store(false, Ordering::SeqCst);
        wait_until("half-open again", breaker.open_for * 40, || {
            client.breaker_state() == BreakerState::HalfOpen
        })
        .await;
        assert!(reopened_after.elapsed() >= breaker.open_for * 2, "{kind:?}");
        let answer: Ok = client.get_json("/switch", &call()).await.unwrap();
        assert!(answer.ok);
        assert_eq!(client.breaker_state(), BreakerState::Closed, "{kind:?}");
    }
}

#[tokio::test]
async fn the_breaker_opens_on_a_stopped_server_and_cuts_the_retries_short() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let client = ServiceClient::new(ClientSettings {
        retries: 3,
        breaker: BreakerSettings {
            failures: 2,
            open_for: Duration::from_secs(60),
            max_open_for: Duration::from_secs(60),
        },
        ..settings(Target::http(&format!("http://{address}")).unwrap())
    })
    .unwrap();

    // Two refused connections open it; the third attempt is not made.
    let error = client.get_json::<Ok>("/echo", &call()).await.unwrap_err();
    let ClientError::Unavailable { reason, .. } = &error else {
        panic!("{error:?}")
    };
    assert!(reason.contains("connection failed"), "{reason}");
    assert!(reason.contains("the circuit opened after 2 attempts"), "{reason}");
    assert_no_token("the error", &error.to_string());
    assert_no_token("the error's Debug", &format!("{error:?}"));
    assert_eq!(client.breaker_state(), BreakerState::Open);

    let error = client.get_json::<Ok>("/echo", &call()).await.unwrap_err();
    assert!(matches!(error, ClientError::CircuitOpen { .. }), "{error:?}");
}

#[test]
fn settings_that_cannot_work_are_refused_without_showing_the_token() {
    let target = || Target::InProcess(Router::new());
    let refused = |settings: ClientSettings| ServiceClient::new(settings).unwrap_err().to_string();
    let message = refused(ClientSettings {
        token: Some(Secret::new("bad\ntoken")),
        ..ClientSettings::new("inventory", target())
    });
    assert!(message.contains("token") && !message.contains("bad"), "{message}");
    refused(ClientSettings {
        timeout: Duration::ZERO,
        ..ClientSettings::new("inventory", target())
    });
    refused(ClientSettings {
        breaker: BreakerSettings {
            failures: 0,
            ..BreakerSettings::default()
        },
        ..ClientSettings::new("inventory", target())
    });
    refused(ClientSettings::new("", target()));
    let error = Target::http("http://orders:hunter2@inventory:8081")
        .unwrap_err()
        .to_string();
    assert!(!error.contains("hunter2"), "{error}");
}

#[tokio::test]
async fn calls_are_counted_and_timed_and_the_open_breaker_is_shown() {
    // The test runtime has one thread: a recorder local to it sees every call.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let _recorder = metrics::set_default_local_recorder(&recorder);

    let (upstream, target) = upstream(Kind::InProcess).await;
    let client = ServiceClient::new(ClientSettings {
        retries: 0,
        breaker: BreakerSettings {
            failures: 1,
            open_for: Duration::from_secs(60),
            max_open_for: Duration::from_secs(60),
        },
        ..settings(target)
    })
    .unwrap();
    assert!(
        metrics
            .render()
            .contains("orderflow_client_breaker_open{service=\"inventory\"} 0")
    );
    client.get_json::<Echo>("/echo", &call()).await.unwrap();
    client.get_json::<Ok>("/conflict", &call()).await.unwrap_err();
    client.get_json::<Ok>("/boom", &call()).await.unwrap_err();
    upstream.down.store(true, Ordering::SeqCst);
    client.get_json::<Ok>("/switch", &call()).await.unwrap_err();
    client.get_json::<Ok>("/switch", &call()).await.unwrap_err();
    assert_eq!(upstream.hits(), 4);

    let text = metrics.render();
    for line in [
        "orderflow_client_requests_total{service=\"inventory\",outcome=\"ok\"} 1",
        "orderflow_client_requests_total{service=\"inventory\",outcome=\"rejected\"} 1",
        "orderflow_client_requests_total{service=\"inventory\",outcome=\"failed\"} 1",
        "orderflow_client_requests_total{service=\"inventory\",outcome=\"unavailable\"} 1",
        "orderflow_client_requests_total{service=\"inventory\",outcome=\"circuit_open\"} 1",
        // The refused call took no time and is not timed.
        "orderflow_client_request_duration_seconds_count{service=\"inventory\"} 4",
        "orderflow_client_breaker_open{service=\"inventory\"} 1",
    ] {
        assert!(text.contains(line), "no `{line}` in:\n{text}");
    }
}
