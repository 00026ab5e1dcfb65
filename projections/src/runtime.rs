//! Running projections: from Kafka (`kafka`, the distributed deployment) or from the store's
//! global log (`store`, the embedded deployment and rebuilds), through the same [`Projection`]
//! code, with the same retry and dead-letter rules ([`apply_reliably`]).
//!
//! Delivery: every event at least once, in order per stream (per partition from Kafka, in
//! position order from the store). Effect: exactly once, by the projection's contract
//! (checkpoint in the sink's transaction, or idempotent writes).

use std::sync::Arc;
use std::time::Duration;

use service_kit::error_chain;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use chrono::{DateTime, Utc};

use crate::{Batch, DeadLetter, Origin, ProjectedEvent, Projection, ProjectionError, ReadDb, Unknown};

pub(crate) mod kafka;
pub(crate) mod store;

/// Builds the instance of a projection that reads and writes one version of its tables. The
/// runtime calls it again when a rebuild switches the live version.
pub type ProjectionFactory = Arc<dyn Fn(u32) -> Arc<dyn Projection> + Send + Sync>;

/// The live version of `name` with its tables ready. On the very first start version 1's
/// tables are created before it is made live: a reader picks the live version per request, and
/// one that found it live before its tables existed was answered 503 (`tests/demo.rs` saw it
/// once, reading the funnel as the embedded runners started).
pub(crate) async fn start_live(
    db: &ReadDb,
    factory: &ProjectionFactory,
    name: &str,
) -> Result<(u32, Arc<dyn Projection>), ProjectionError> {
    if db.live_version(name).await?.is_none() {
        factory(1).prepare().await?;
    }
    let version = db.ensure_live(name, 1).await?;
    let projection = factory(version);
    projection.prepare().await?;
    Ok((version, projection))
}

/// Batching and retry settings shared by both runtimes.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Most events applied in one transaction.
    pub batch_size: usize,
    /// How long the first event of a batch may wait for more (Kafka workers). Zero, the
    /// default, applies what the broker delivered together as soon as it is taken: under load,
    /// batches are what arrived while the previous one was applied. A linger is a floor on how
    /// late an event reaches the read model (5 ms cost `bench reads`' freshness about 5 ms at
    /// 1,000 orders/s).
    pub linger: Duration,
    /// Attempts of a failing batch before its events are tried one by one.
    pub retries: u32,
    /// First retry delay; doubles up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            batch_size: 2000,
            linger: Duration::ZERO,
            retries: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Why applying stopped without applying.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Shutdown was asked for while a batch was still failing; it was not applied and will be
    /// read again from the checkpoints.
    #[error("cancelled before the batch could be applied")]
    Cancelled,
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

/// An event of a type this build does not know, counted (`orderflow_projection_unknown_events_total`)
/// and logged once per type and process: see [`crate::Unknown`].
pub(crate) fn unknown(
    origin: Origin,
    position: u64,
    event_type: String,
    recorded_at: Option<DateTime<Utc>>,
) -> Unknown {
    static SEEN: std::sync::Mutex<Option<std::collections::HashSet<String>>> = std::sync::Mutex::new(None);
    metrics::counter!("orderflow_projection_unknown_events_total", "event_type" => event_type.clone()).increment(1);
    let first = SEEN
        .lock()
        .map(|mut seen| seen.get_or_insert_with(Default::default).insert(event_type.clone()))
        .unwrap_or(false);
    if first {
        warn!(%event_type, source = %origin.source,
            "an event type this build does not know: passed over (a service published it before this consumer learned it)");
    }
    Unknown {
        origin,
        position,
        event_type,
        recorded_at,
    }
}

/// Applies a batch, retrying with backoff. When it keeps failing while the sink is healthy, the
/// events are applied one at a time and each one that still fails is recorded as a dead letter,
/// so one poison event never blocks its partition. While the sink is down, it retries until
/// `cancel` (an outage must never fill the dead-letter table).
pub async fn apply_reliably(
    projection: &dyn Projection,
    batch: Batch,
    options: &RunOptions,
    cancel: &CancellationToken,
) -> Result<(), RunError> {
    if batch.is_empty() {
        return Ok(());
    }
    match retry(projection, &batch, options, cancel).await? {
        Ok(()) => Ok(()),
        Err(cause) => {
            warn!(projection = projection.name(), error = %error_chain(&cause), events = batch.len(),
                "batch keeps failing while the sink is up: applying its events one by one");
            isolate(projection, batch, options, cancel).await
        }
    }
}

/// Retries `batch` until it applies (`Ok(Ok)`), or it failed `options.retries` times while the
/// sink was healthy (`Ok(Err(last error))`).
async fn retry(
    projection: &dyn Projection,
    batch: &Batch,
    options: &RunOptions,
    cancel: &CancellationToken,
) -> Result<Result<(), ProjectionError>, RunError> {
    let mut failures = 0u32;
    let mut delay = options.backoff;
    loop {
        let cause = match projection.apply(batch).await {
            Ok(()) => return Ok(Ok(())),
            Err(cause) => cause,
        };
        metrics::counter!("orderflow_projection_errors_total", "projection" => projection.name()).increment(1);
        if projection.healthy().await {
            failures += 1;
            if failures >= options.retries.max(1) {
                return Ok(Err(cause));
            }
        } else {
            error!(projection = projection.name(), error = %error_chain(&cause), "sink unavailable; retrying");
        }
        tokio::select! {
            () = cancel.cancelled() => return Err(RunError::Cancelled),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(options.max_backoff);
    }
}

async fn isolate(
    projection: &dyn Projection,
    batch: Batch,
    options: &RunOptions,
    cancel: &CancellationToken,
) -> Result<(), RunError> {
    // One at a time, in the order they were read from each partition: each apply also moves
    // its partition's checkpoint, so a dead letter recorded ahead of events read before it
    // would, after a crash, make the next reader start past those events.
    let mut items: Vec<Item> = batch
        .events
        .into_iter()
        .map(Item::Event)
        .chain(batch.dead_letters.into_iter().map(Item::DeadLetter))
        .chain(batch.unknown.into_iter().map(Item::Unknown))
        .collect();
    items.sort_by(|a, b| a.read_order().cmp(&b.read_order()));
    for item in items {
        let letter = match item {
            Item::DeadLetter(letter) => letter,
            Item::Unknown(unknown) => {
                let passed = Batch {
                    unknown: vec![unknown],
                    ..Batch::default()
                };
                must_apply(projection, &passed, options, cancel).await?;
                continue;
            }
            Item::Event(event) => {
                let single = Batch {
                    events: vec![event],
                    ..Batch::default()
                };
                let Err(cause) = retry(projection, &single, options, cancel).await? else {
                    continue;
                };
                let event = &single.events[0];
                error!(projection = projection.name(), stream_id = %event.stream_id, position = event.position,
                    event_type = event.event.event_type(), error = %error_chain(&cause), "dead-lettering an event");
                DeadLetter {
                    origin: event.origin.clone(),
                    position: event.position,
                    event_type: event.event.event_type().to_owned(),
                    reason: error_chain(&cause),
                    payload: event.event.encode().payload,
                }
            }
        };
        let letter = Batch {
            dead_letters: vec![letter],
            ..Batch::default()
        };
        must_apply(projection, &letter, options, cancel).await?;
    }
    Ok(())
}

/// One item of a batch being applied one at a time.
enum Item {
    Event(ProjectedEvent),
    DeadLetter(DeadLetter),
    Unknown(Unknown),
}

impl Item {
    /// Where it was read: partition by partition, in offset order.
    fn read_order(&self) -> (&str, i32, i64) {
        let origin = match self {
            Item::Event(event) => &event.origin,
            Item::DeadLetter(letter) => &letter.origin,
            Item::Unknown(unknown) => &unknown.origin,
        };
        (origin.source.as_str(), origin.partition, origin.offset)
    }
}

/// Applies a batch of dead letters, retrying until cancelled: recording them is the way out.
async fn must_apply(
    projection: &dyn Projection,
    batch: &Batch,
    options: &RunOptions,
    cancel: &CancellationToken,
) -> Result<(), RunError> {
    let mut delay = options.backoff;
    loop {
        match projection.apply(batch).await {
            Ok(()) => return Ok(()),
            Err(cause) => error!(projection = projection.name(), error = %error_chain(&cause),
                "cannot record dead letters; retrying"),
        }
        tokio::select! {
            () = cancel.cancelled() => return Err(RunError::Cancelled),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(options.max_backoff);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use chrono::Utc;
    use event_schemas::{CustomerEvent, CustomerRenamed, DomainEvent};
    use uuid::Uuid;

    use super::*;
    use crate::{Checkpoint, Origin};

    /// Refuses any batch of more than one item (so the runtime isolates them) and the event at
    /// `poison`; records the partition checkpoint each apply stores.
    struct Recorder {
        poison: i64,
        stored: Mutex<Vec<i64>>,
    }

    #[async_trait]
    impl Projection for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn version(&self) -> u32 {
            1
        }
        async fn prepare(&self) -> Result<(), ProjectionError> {
            Ok(())
        }
        async fn drop_version(&self) -> Result<(), ProjectionError> {
            Ok(())
        }
        async fn checkpoints(&self) -> Result<Vec<Checkpoint>, ProjectionError> {
            Ok(Vec::new())
        }
        async fn apply(&self, batch: &Batch) -> Result<(), ProjectionError> {
            if batch.len() > 1 || batch.events.iter().any(|e| e.origin.offset == self.poison) {
                return Err(ProjectionError::Inconsistent("refused".into()));
            }
            let stored = batch.checkpoints().iter().map(|c| c.offset).collect::<Vec<_>>();
            self.stored.lock().unwrap().extend(stored);
            Ok(())
        }
        async fn healthy(&self) -> bool {
            true
        }
    }

    fn origin(offset: i64) -> Origin {
        Origin {
            source: "orders".into(),
            partition: 0,
            offset,
        }
    }

    fn event(offset: i64) -> ProjectedEvent {
        let customer_id = Uuid::new_v4();
        ProjectedEvent {
            event_id: Uuid::new_v4(),
            stream_id: format!("customer-{customer_id}"),
            stream_version: 2,
            position: offset as u64,
            occurred_at: Utc::now(),
            recorded_at: Utc::now(),
            correlation_id: String::new(),
            event: DomainEvent::Customer(CustomerEvent::Renamed(CustomerRenamed {
                customer_id,
                name: "Ada".into(),
            })),
            origin: origin(offset),
        }
    }

    /// A batch that fails is applied item by item in the order it was read, dead letters
    /// included: a dead letter stored first would move the checkpoint past events not yet
    /// applied, and a crash right then would lose them.
    #[tokio::test]
    async fn an_isolated_batch_moves_its_checkpoint_in_read_order() {
        let projection = Recorder {
            poison: 12,
            stored: Mutex::new(Vec::new()),
        };
        let batch = Batch {
            events: vec![event(10), event(12), event(13)],
            dead_letters: vec![DeadLetter {
                origin: origin(11),
                position: 0,
                event_type: String::new(),
                reason: "not an orderflow envelope".into(),
                payload: b"garbage".to_vec(),
            }],
            ..Batch::default()
        };
        let options = RunOptions {
            retries: 1,
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            ..RunOptions::default()
        };
        apply_reliably(&projection, batch, &options, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(*projection.stored.lock().unwrap(), [10, 11, 12, 13]);
    }
}
