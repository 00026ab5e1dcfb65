//! `/ready` of a write side that runs the relay: unready while the relay leads but the broker
//! does not acknowledge; a relay on standby (another process leads) does not make it unready.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use relay::RelayStatus;
use tokio::sync::watch;
use tower::ServiceExt;
use write_side::http::{Auth, HttpConfig, HttpState};
use write_side::{CommandHandler, HandlerOptions};

#[tokio::test]
async fn ready_follows_the_relay_it_runs() {
    let store = testkit::sqlite::store("orderflow_ready").await;
    let (status, watch) = watch::channel(RelayStatus::default());
    let mut config = HttpConfig::new(Auth::Disabled);
    config.relay = Some(watch);
    let handler = CommandHandler::new(Arc::new(store), HandlerOptions::default());
    let app = write_side::http::router(HttpState::new(
        write_side::Services::single(event_schemas::Service::Customers, handler),
        config,
    ));
    let ready = || async {
        let request = Request::get("/ready").body(Body::empty()).unwrap();
        app.clone().oneshot(request).await.unwrap().status()
    };

    assert_eq!(ready().await, StatusCode::OK, "a relay on standby is fine");
    status.send_modify(|s| s.leader = true);
    assert_eq!(
        ready().await,
        StatusCode::SERVICE_UNAVAILABLE,
        "leading but nothing acknowledged yet"
    );
    status.send_modify(|s| s.ready = true);
    assert_eq!(ready().await, StatusCode::OK);
    status.send_modify(|s| {
        s.ready = false;
        s.last_error = Some("the broker has not acknowledged in time".into());
    });
    assert_eq!(
        ready().await,
        StatusCode::SERVICE_UNAVAILABLE,
        "the broker stopped acknowledging"
    );
}
