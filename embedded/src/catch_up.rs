//! After `--demo` seeded the stores: one log line when every read model has applied them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use event_schemas::Service;

use event_store::Position;
use projections::ReadDb;
use projections::catalog;
use tokio_util::sync::CancellationToken;

/// How often the reporter looks at the read models.
const CATCH_UP_POLL: Duration = Duration::from_millis(250);

/// Logs once when the live version of every projection has applied every service's log up to
/// its position of `targets`
/// (or returns quietly on `cancel`).
pub(crate) async fn report(db: ReadDb, targets: BTreeMap<Service, Position>, cancel: CancellationToken) {
    let started = Instant::now();
    loop {
        match caught_up(&db, &targets).await {
            Ok(true) => {
                tracing::info!(
                    ?targets,
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

async fn caught_up(db: &ReadDb, targets: &BTreeMap<Service, Position>) -> Result<bool, projections::ProjectionError> {
    for name in catalog::NAMES {
        let Some(version) = db.live_version(name).await? else {
            return Ok(false);
        };
        let progress = db.progress(name, version).await?;
        if targets
            .iter()
            .any(|(service, target)| projections::applied_position(&progress, *service) < *target)
        {
            return Ok(false);
        }
    }
    Ok(true)
}
