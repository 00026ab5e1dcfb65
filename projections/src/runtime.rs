//! Running projections: from Kafka (`kafka`, the distributed deployment) or from the store's
//! global log (`store`, the embedded deployment and rebuilds), through the same [`Projection`]
//! code, with the same retry and dead-letter rules ([`apply_reliably`]).
//!
//! Delivery: every event at least once, in order per stream (per partition from Kafka, in
//! position order from the store). Effect: exactly once, by the projection's contract
//! (checkpoint in the sink's transaction, or idempotent writes).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::{Batch, DeadLetter, Projection, ProjectionError, ReadDb};

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
    // Dead letters that came with the batch (undecodable messages) go first, on their own.
    if !batch.dead_letters.is_empty() {
        let letters = Batch {
            events: Vec::new(),
            dead_letters: batch.dead_letters,
        };
        must_apply(projection, &letters, options, cancel).await?;
    }
    for event in batch.events {
        let single = Batch {
            events: vec![event],
            dead_letters: Vec::new(),
        };
        if let Err(cause) = retry(projection, &single, options, cancel).await? {
            let event = &single.events[0];
            error!(projection = projection.name(), stream_id = %event.stream_id, position = event.position,
                event_type = event.event.event_type(), error = %error_chain(&cause), "dead-lettering an event");
            let letter = Batch {
                events: Vec::new(),
                dead_letters: vec![DeadLetter {
                    origin: event.origin.clone(),
                    position: event.position,
                    event_type: event.event.event_type().to_owned(),
                    reason: error_chain(&cause),
                    payload: event.event.encode().payload,
                }],
            };
            must_apply(projection, &letter, options, cancel).await?;
        }
    }
    Ok(())
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

/// An error with its causes, `a: b: c`, for logs and dead-letter reasons.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
