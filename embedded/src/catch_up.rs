//! After `--demo` seeded the store: one log line when every read model has applied it.

use std::time::{Duration, Instant};

use event_store::Position;
use projections::ReadDb;
use projections::catalog;
use tokio_util::sync::CancellationToken;

/// How often the reporter looks at the read models.
const CATCH_UP_POLL: Duration = Duration::from_millis(250);

/// Logs once when the live version of every projection has applied the log up to `target`
/// (or returns quietly on `cancel`).
pub(crate) async fn report(db: ReadDb, target: Position, cancel: CancellationToken) {
    let started = Instant::now();
    loop {
        match caught_up(&db, target).await {
            Ok(true) => {
                tracing::info!(
                    position = target,
                    seconds = format_args!("{:.1}", started.elapsed().as_secs_f64()),
                    "the read models caught up with the demo shop: the dashboard is complete"
                );
                return;
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read the projections' progress"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(CATCH_UP_POLL) => {}
        }
    }
}

async fn caught_up(db: &ReadDb, target: Position) -> Result<bool, projections::ProjectionError> {
    for name in catalog::NAMES {
        let Some(version) = db.live_version(name).await? else {
            return Ok(false);
        };
        if projections::applied_position(&db.progress(name, version).await?) < target {
            return Ok(false);
        }
    }
    Ok(true)
}
