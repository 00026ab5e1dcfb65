//! The read database's connections reset and refused for a while (through a proxy the test owns:
//! the shared PostgreSQL keeps serving other tests): meanwhile the read API answers 503 with
//! `Retry-After`, never a 500 nor a hang, and `/ready` says it is not ready; once the database is
//! back, it answers again by itself, with no restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use projections::dashboard::OrderDashboard;
use projections::{Projection, ReadDb};
use read_api::{ReadConfig, ReadState};
use testkit::http::get;

/// How long the database stays out of reach.
const OUTAGE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_api_answers_503_while_its_database_is_cut_and_recovers_by_itself() {
    let db = testkit::postgres::fresh_database().await;
    let direct = ReadDb::connect(&db.url, 2).await.unwrap();
    direct.migrate().await.unwrap();
    let dashboard = OrderDashboard::new(direct.clone(), 1);
    dashboard.prepare().await.unwrap();
    direct.ensure_live(dashboard.name(), 1).await.unwrap();

    let host_port = format!("{}:{}", db.options.get_host(), db.options.get_port());
    let proxy = testkit::proxy::TcpProxy::start(&host_port).await;
    let through_proxy = db.url.replacen(&host_port, &proxy.address().to_string(), 1);
    assert_ne!(through_proxy, db.url, "the URL names {host_port}: {}", db.url);
    let read = ReadDb::connect(&through_proxy, 4).await.unwrap();
    let config = ReadConfig {
        timeout: Duration::from_secs(3),
        ..ReadConfig::default()
    };
    let router = read_api::router(ReadState::new(read, None, config));
    let (status, body) = get(&router, "/v1/dashboard/orders").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    proxy.cut();
    let cut_at = Instant::now();
    let mut answers = 0;
    // Polled for the outage's length: every answer meanwhile is a 503 in the error format.
    while cut_at.elapsed() < OUTAGE {
        let asked = Instant::now();
        let (status, body) = get(&router, "/v1/dashboard/orders").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "while cut: {body}");
        assert!(
            matches!(body["error"]["code"].as_str(), Some("unavailable" | "timeout")),
            "{body}"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(4),
            "an answer took {:?}",
            asked.elapsed()
        );
        let (status, _) = get(&router, "/ready").await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "/ready while the database is cut"
        );
        answers += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(answers >= 3, "only {answers} answers during the outage");
    proxy.restore();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(&router, "/v1/dashboard/orders").await;
        if status == StatusCode::OK {
            assert_eq!(body["rows"], serde_json::json!([]), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {status} 30 s after the database came back: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = get(&router, "/ready").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(proxy.connections() > 1, "the pool reconnected");
}
