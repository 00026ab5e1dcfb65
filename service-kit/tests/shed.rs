//! Load shedding at the edge: with the bound reached, a `/v1` request is answered 503
//! `overloaded` with `Retry-After` without reaching its handler, while the operations endpoints
//! still answer; the places come back when the admitted requests end (also when a client gives
//! up on one), and requests are admitted again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::routing::get;
use http_body_util::BodyExt as _;
use serde_json::Value;
use service_kit::http::{Edge, InFlightLimit, edge};
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

const BOUND: usize = 4;

/// `/v1/hold` waits until the test lets it go; every call reaching it is counted.
#[derive(Clone)]
struct Gate {
    release: Arc<Semaphore>,
    reached: Arc<AtomicUsize>,
}

async fn hold(State(gate): State<Gate>) -> &'static str {
    gate.reached.fetch_add(1, Ordering::SeqCst);
    gate.release.acquire().await.unwrap().forget();
    "done"
}

fn router(gate: Gate, limit: InFlightLimit) -> Router {
    Router::new()
        .route("/v1/hold", get(hold))
        .route("/health", get(|| async { "ok" }))
        .with_state(gate)
        .layer(from_fn_with_state(
            Edge {
                request_timeout: Duration::from_secs(30),
                in_flight: Some(limit),
            },
            edge,
        ))
}

async fn call(router: &Router, path: &str) -> (StatusCode, Option<String>, Value) {
    let response = router
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        retry_after,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// Waits until `condition` holds, for at most 5 s.
async fn until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within 5 s");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn past_the_bound_requests_are_refused_at_once_and_admitted_again_after() {
    let gate = Gate {
        release: Arc::new(Semaphore::new(0)),
        reached: Arc::default(),
    };
    let limit = InFlightLimit::new(BOUND);
    let router = router(gate.clone(), limit.clone());

    let held: Vec<_> = (0..BOUND)
        .map(|_| {
            let router = router.clone();
            tokio::spawn(async move { call(&router, "/v1/hold").await })
        })
        .collect();
    until("the bound's requests reach the handler", || {
        gate.reached.load(Ordering::SeqCst) == BOUND
    })
    .await;
    assert_eq!(limit.in_flight(), BOUND);

    for _ in 0..3 * BOUND {
        let (status, retry_after, body) = call(&router, "/v1/hold").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "overloaded", "{body}");
        assert_eq!(body["error"]["details"]["max_in_flight"], BOUND, "{body}");
        assert_eq!(retry_after.as_deref(), Some("1"), "a refusal says when to come back");
    }
    assert_eq!(
        gate.reached.load(Ordering::SeqCst),
        BOUND,
        "a refused request reached its handler"
    );
    assert!(limit.in_flight() <= BOUND);
    let (status, _, _) = call(&router, "/health").await;
    assert_eq!(status, StatusCode::OK, "the operations endpoints are never shed");

    gate.release.add_permits(BOUND);
    for request in held {
        let (status, _, body) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK, "an admitted request: {body}");
    }
    assert_eq!(limit.in_flight(), 0, "every place came back");
    gate.release.add_permits(1);
    let (status, _, body) = call(&router, "/v1/hold").await;
    assert_eq!(status, StatusCode::OK, "admitted again once the load is gone: {body}");
}

#[tokio::test]
async fn a_request_its_client_gives_up_on_gives_its_place_back() {
    let gate = Gate {
        release: Arc::new(Semaphore::new(0)),
        reached: Arc::default(),
    };
    let limit = InFlightLimit::new(1);
    let router = router(gate.clone(), limit.clone());
    let abandoned = {
        let router = router.clone();
        tokio::spawn(async move { call(&router, "/v1/hold").await })
    };
    until("the request reaches the handler", || {
        gate.reached.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(call(&router, "/v1/hold").await.0, StatusCode::SERVICE_UNAVAILABLE);
    // The client goes away: hyper drops the request's future, and with it its place.
    abandoned.abort();
    until("the place comes back", || limit.in_flight() == 0).await;
    gate.release.add_permits(1);
    assert_eq!(call(&router, "/v1/hold").await.0, StatusCode::OK);
}
