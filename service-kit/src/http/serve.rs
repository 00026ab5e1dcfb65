//! Serving a router until shutdown, then draining with a deadline.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

/// Serves `app` on `listener` until `shutdown` completes. Then it stops accepting connections
/// and waits for the requests in flight, at most `grace` (a request times out by itself after
/// the edge's timeout, so `timeout + 1 s` loses nothing).
pub async fn serve_on(
    listener: TcpListener,
    app: Router,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    tracing::info!(%address, "HTTP API listening");
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, draining requests in flight");
        let _ = stopping_tx.send(());
    });
    let server = std::pin::pin!(server.into_future());
    let deadline = async move {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = server => result,
        () = deadline => {
            tracing::warn!(grace_s = grace.as_secs_f64(), "requests still in flight after the grace period; closing");
            Ok(())
        }
    }
}
