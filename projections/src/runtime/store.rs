//! The embedded runtime: a projection fed by the services' logs (an in-process subscription to
//! each service's store), resuming from the position it checkpointed with its rows, per service.

use std::sync::Arc;
use std::time::Duration;

use event_schemas::Service;
use event_store::{EventStore, RecordedEvent, Subscription};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{ProjectionFactory, RunError, RunOptions, apply_reliably};
use crate::{
    Batch, DeadLetter, Origin, ProjectedEvent, Projection, ProjectionError, ReadDb, rebuilt_source, store_source,
};
use service_kit::error_chain;

/// A service's log: the service, and its event store.
#[derive(Clone)]
pub struct ServiceLog {
    pub service: Service,
    pub store: Arc<dyn EventStore>,
}

impl ServiceLog {
    pub fn new(service: Service, store: Arc<dyn EventStore>) -> Self {
        ServiceLog { service, store }
    }

    /// Every service's log in one store shared by all (a database from before every service had
    /// its own, or a test's): each runner reads the store and takes its own categories.
    pub fn shared(store: &Arc<dyn EventStore>) -> Vec<ServiceLog> {
        Service::ALL
            .into_iter()
            .map(|service| ServiceLog::new(service, Arc::clone(store)))
            .collect()
    }
}

/// Runs a projection from every log of `logs` until `cancel`: one runner per service (see
/// [`run_from_store`]), concurrently; the projection takes batches of different services in any
/// interleaving (the same contract as Kafka partitions).
pub async fn run_from_stores(
    logs: Vec<ServiceLog>,
    db: ReadDb,
    factory: ProjectionFactory,
    options: RunOptions,
    cancel: CancellationToken,
) -> Result<(), ProjectionError> {
    let runners = logs
        .into_iter()
        .map(|log| run_from_store(log, db.clone(), Arc::clone(&factory), options, cancel.clone()));
    for outcome in futures::future::join_all(runners).await {
        outcome?;
    }
    Ok(())
}

/// How often a runner looks for a version switch made by a rebuild.
const VERSION_CHECK: Duration = Duration::from_millis(500);

/// Runs a projection from one service's log until `cancel`. It makes version 1 live on the first
/// start, follows the live version when a rebuild switches it, and survives store and sink
/// outages (it retries with backoff). Only the events of the service's own categories are
/// applied: a store shared by several services (one database of old, before every service had
/// its own) is then read once per service, each runner taking its part.
pub async fn run_from_store(
    log: ServiceLog,
    db: ReadDb,
    factory: ProjectionFactory,
    options: RunOptions,
    cancel: CancellationToken,
) -> Result<(), ProjectionError> {
    let name = factory(1).name();
    let mut delay = options.backoff;
    while !cancel.is_cancelled() {
        match follow_live_version(&log, &db, &factory, name, &options, &cancel).await {
            Ok(()) => delay = options.backoff,
            Err(RunError::Cancelled) => break,
            Err(RunError::Projection(cause)) => {
                error!(projection = name, service = %log.service, error = %error_chain(&cause), "projection runner failed; restarting");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(options.max_backoff);
            }
        }
    }
    info!(projection = name, service = %log.service, "projection runner stopped");
    Ok(())
}

/// Runs the live version until it is no longer live (`Ok`), or until cancelled or failed.
async fn follow_live_version(
    log: &ServiceLog,
    db: &ReadDb,
    factory: &ProjectionFactory,
    name: &'static str,
    options: &RunOptions,
    cancel: &CancellationToken,
) -> Result<(), RunError> {
    let (version, projection) = super::start_live(db, factory, name).await?;
    let service = log.service;
    let after = store_position(&*projection, service).await?;
    info!(projection = name, %service, version, after, "projection follows the service's store");
    let mut subscription = Subscription::new(Arc::clone(&log.store), after).batch_size(options.batch_size);
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
                apply_reliably(&*projection, batch_of(&events, service), options, cancel).await?;
                metrics::counter!("orderflow_projection_events_total", "projection" => name, "service" => service.name()).increment(events.len() as u64);
                metrics::gauge!("orderflow_projection_position", "projection" => name, "service" => service.name()).set(last as f64);
            }
        }
    }
}

/// The position of `service`'s log a projection version has applied (0: nothing yet): its
/// store checkpoint, or the floor a rebuild handed over ([`crate::REBUILT_SOURCE`]), whichever
/// is further.
pub(crate) async fn store_position(projection: &dyn Projection, service: Service) -> Result<u64, ProjectionError> {
    let (store, rebuilt) = (store_source(service), rebuilt_source(service));
    Ok(projection
        .checkpoints()
        .await?
        .into_iter()
        .filter(|checkpoint| checkpoint.source == store || checkpoint.source == rebuilt)
        .map(|checkpoint| u64::try_from(checkpoint.offset).unwrap_or(0))
        .max()
        .unwrap_or(0))
}

/// Whether `service`'s log holds `recorded`: its stream is the service's, or of no service known
/// (then it is the log's to dead-letter). In a store shared by every service, each runner takes
/// its own streams and leaves the others' to theirs.
pub(crate) fn belongs(recorded: &RecordedEvent, service: Service) -> bool {
    match Service::of_stream(&recorded.stream_id) {
        Ok(owner) => owner == service,
        Err(_) => true,
    }
}

/// Decodes the events of `service`'s log read from its store (see [`belongs`]); one that does
/// not decode becomes a dead letter.
pub(crate) fn batch_of(events: &[RecordedEvent], service: Service) -> Batch {
    let mut batch = Batch::default();
    for recorded in events.iter().filter(|e| belongs(e, service)) {
        match ProjectedEvent::from_recorded(recorded, service) {
            Ok(event) => batch.events.push(event),
            Err(event_schemas::DecodeError::UnknownEventType(event_type)) => batch.unknown.push(super::unknown(
                Origin::store(service, recorded.position),
                recorded.position,
                event_type,
                Some(recorded.recorded_at),
            )),
            Err(cause) => batch.dead_letters.push(DeadLetter {
                origin: Origin::store(service, recorded.position),
                position: recorded.position,
                event_type: recorded.event_type.clone(),
                reason: error_chain(&cause),
                payload: recorded.payload.clone(),
            }),
        }
    }
    batch
}
