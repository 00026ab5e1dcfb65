//! The embedded runtime: a projection fed by the store's global log (an in-process
//! subscription), resuming from the store position it checkpointed with its rows.

use std::sync::Arc;
use std::time::Duration;

use event_store::{EventStore, RecordedEvent, Subscription};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{ProjectionFactory, RunError, RunOptions, apply_reliably};
use crate::{Batch, DeadLetter, Origin, ProjectedEvent, Projection, ProjectionError, ReadDb, STORE_SOURCE};
use service_kit::error_chain;

/// How often a runner looks for a version switch made by a rebuild.
const VERSION_CHECK: Duration = Duration::from_millis(500);

/// Runs a projection from the store's global log until `cancel`. It makes version 1 live on
/// the first start, follows the live version when a rebuild switches it, and survives store and
/// sink outages (it retries with backoff).
pub async fn run_from_store(
    store: Arc<dyn EventStore>,
    db: ReadDb,
    factory: ProjectionFactory,
    options: RunOptions,
    cancel: CancellationToken,
) -> Result<(), ProjectionError> {
    let name = factory(1).name();
    let mut delay = options.backoff;
    while !cancel.is_cancelled() {
        match follow_live_version(&store, &db, &factory, name, &options, &cancel).await {
            Ok(()) => delay = options.backoff,
            Err(RunError::Cancelled) => break,
            Err(RunError::Projection(cause)) => {
                error!(projection = name, error = %error_chain(&cause), "projection runner failed; restarting");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(options.max_backoff);
            }
        }
    }
    info!(projection = name, "projection runner stopped");
    Ok(())
}

/// Runs the live version until it is no longer live (`Ok`), or until cancelled or failed.
async fn follow_live_version(
    store: &Arc<dyn EventStore>,
    db: &ReadDb,
    factory: &ProjectionFactory,
    name: &'static str,
    options: &RunOptions,
    cancel: &CancellationToken,
) -> Result<(), RunError> {
    let (version, projection) = super::start_live(db, factory, name).await?;
    let after = store_position(&*projection).await?;
    info!(projection = name, version, after, "projection follows the store");
    let mut subscription = Subscription::new(Arc::clone(store), after).batch_size(options.batch_size);
    let mut version_check = tokio::time::interval(VERSION_CHECK);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Err(RunError::Cancelled),
            _ = version_check.tick() => {
                if db.live_version(name).await? != Some(version) {
                    info!(projection = name, version, "the live version changed");
                    return Ok(());
                }
            }
            events = subscription.next_batch() => {
                let events = events.map_err(ProjectionError::from)?;
                let last = events.last().map_or(0, |e| e.position);
                apply_reliably(&*projection, batch_of(&events), options, cancel).await?;
                metrics::counter!("orderflow_projection_events_total", "projection" => name).increment(events.len() as u64);
                metrics::gauge!("orderflow_projection_position", "projection" => name).set(last as f64);
            }
        }
    }
}

/// The store position a projection version has applied (0: nothing yet): its store
/// checkpoint, or the floor a rebuild handed over ([`crate::REBUILT_SOURCE`]), whichever is
/// further.
pub(crate) async fn store_position(projection: &dyn Projection) -> Result<u64, ProjectionError> {
    Ok(projection
        .checkpoints()
        .await?
        .into_iter()
        .filter(|checkpoint| checkpoint.source == STORE_SOURCE || checkpoint.source == crate::REBUILT_SOURCE)
        .map(|checkpoint| u64::try_from(checkpoint.offset).unwrap_or(0))
        .max()
        .unwrap_or(0))
}

/// Decodes events read from the store; one that does not decode becomes a dead letter.
pub(crate) fn batch_of(events: &[RecordedEvent]) -> Batch {
    let mut batch = Batch::default();
    for recorded in events {
        match ProjectedEvent::from_recorded(recorded) {
            Ok(event) => batch.events.push(event),
            Err(cause) => batch.dead_letters.push(DeadLetter {
                origin: Origin::store(recorded.position),
                position: recorded.position,
                event_type: recorded.event_type.clone(),
                reason: error_chain(&cause),
                payload: recorded.payload.clone(),
            }),
        }
    }
    batch
}
