//! Rebuilds: a new version of a projection's tables, built beside the live one from the store's
//! global log (not Kafka: the log is the source of truth and reads in large batches), then
//! switched to atomically.
//!
//! 1. Register version N+1 as `building`, create its tables.
//! 2. Read the global log from the start in large batches and apply them, reporting progress
//!    (events/s, ETA) to the registry (for `/v1/projections`) and to the caller (the CLI's bar).
//! 3. Catch up until the head is within one batch, then switch: in one transaction, N+1 becomes
//!    `live` and N `retired`, and N+1 inherits N's Kafka checkpoints. Readers pick the live
//!    version per request, so each answer comes from one complete version.
//! 4. Catch up once more from where the build stopped to the head: events that the live workers
//!    applied to N just before the switch are in the store by then, and are applied to N+1
//!    (guarded by stream version, so nothing applies twice). Workers follow the switch by
//!    themselves (they poll the registry) and go on from N+1's checkpoints.
//! 5. After a grace period (readers that had picked N finish), drop N's tables.
//!
//! With `until`, the build stops at that position or time and stays `historical`: a view of the
//! past beside the live one, never switched to.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use event_store::{EventStore, RecordedEvent};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::runtime::store::batch_of;
use crate::runtime::{ProjectionFactory, RunError, RunOptions, apply_reliably};
use crate::{ProjectionError, ReadDb};

/// Where a `--until` build stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UntilPoint {
    /// The last global position included.
    Position(u64),
    /// The last commit time included.
    Time(DateTime<Utc>),
}

/// How to rebuild.
#[derive(Debug, Clone)]
pub struct RebuildOptions {
    /// Events read and applied per transaction.
    pub batch_size: usize,
    /// Build a historical version up to this point instead of replacing the live one.
    pub until: Option<UntilPoint>,
    /// How long the replaced version's tables stay after the switch, for readers in flight.
    pub drop_after: Duration,
    pub run: RunOptions,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        RebuildOptions {
            batch_size: 10_000,
            until: None,
            drop_after: Duration::from_secs(5),
            run: RunOptions::default(),
        }
    }
}

/// Where a rebuild is, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RebuildProgress {
    pub version: u32,
    /// The position applied so far.
    pub position: u64,
    /// Where it is going: the head (it moves while the build runs) or the `until` position.
    pub target: u64,
    pub events_applied: u64,
    pub events_per_second: f64,
}

/// What a finished rebuild did.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildReport {
    pub name: String,
    pub version: u32,
    /// The version it replaced (none for a historical build, or the very first build).
    pub replaced: Option<u32>,
    pub events_applied: u64,
    pub position: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    pub historical: bool,
}

/// Builds the next version of the projection `factory` makes, from `store`'s global log; see the
/// module doc. `progress` is called after each batch.
pub async fn rebuild(
    store: Arc<dyn EventStore>,
    db: &ReadDb,
    factory: ProjectionFactory,
    options: RebuildOptions,
    cancel: CancellationToken,
    mut progress: impl FnMut(RebuildProgress) + Send,
) -> Result<RebuildReport, ProjectionError> {
    let name = factory(1).name();
    let versions = db.versions(name).await?;
    let version = versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
    let until_position = match options.until {
        Some(UntilPoint::Position(p)) => Some(p),
        _ => None,
    };
    let until_time = match options.until {
        Some(UntilPoint::Time(t)) => Some(t),
        _ => None,
    };
    let head = store.head_position().await?;
    let target = until_position.map_or(head, |p| p.min(head));
    db.register_building(
        name,
        version,
        target,
        options
            .until
            .map(|_| (until_position.unwrap_or(u64::MAX).min(head), until_time)),
    )
    .await?;
    let projection = factory(version);
    projection.prepare().await?;
    info!(projection = name, version, target, "rebuild started");

    let started = Instant::now();
    let mut after = 0u64;
    let mut applied = 0u64;
    let mut target = target;
    let mut last_report = Instant::now();
    loop {
        let mut events = store.read_all(after, options.batch_size).await?;
        let mut reached_until = false;
        if let Some(limit) = until_position {
            let keep = events.iter().take_while(|e| e.position <= limit).count();
            reached_until |= keep < events.len();
            events.truncate(keep);
        }
        if let Some(limit) = until_time {
            let keep = events.iter().take_while(|e| e.recorded_at <= limit).count();
            reached_until |= keep < events.len();
            events.truncate(keep);
        }
        let Some(last) = events.last().map(|e: &RecordedEvent| e.position) else {
            break;
        };
        apply(&*projection, &events, &options.run, &cancel).await?;
        applied += events.len() as u64;
        after = last;
        if options.until.is_none() {
            target = target.max(store.head_position().await?);
        }
        let rate = applied as f64 / started.elapsed().as_secs_f64().max(1e-9);
        progress(RebuildProgress {
            version,
            position: after,
            target,
            events_applied: applied,
            events_per_second: rate,
        });
        if last_report.elapsed() >= Duration::from_millis(500) {
            last_report = Instant::now();
            db.report_progress(name, version, applied, rate, target).await?;
        }
        if reached_until || until_position.is_some_and(|p| after >= p) {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let rate = applied as f64 / seconds.max(1e-9);
    db.report_progress(name, version, applied, rate, target.max(after))
        .await?;

    if options.until.is_some() {
        db.set_state(name, version, "historical").await?;
        info!(projection = name, version, applied, "historical version built");
        return Ok(RebuildReport {
            name: name.to_owned(),
            version,
            replaced: None,
            events_applied: applied,
            position: after,
            seconds,
            events_per_second: rate,
            historical: true,
        });
    }

    let replaced = db.switch_live(name, version).await?;
    // Events the old version's workers applied up to the switch are in the store by now.
    loop {
        let events = store.read_all(after, options.batch_size).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            break;
        };
        apply(&*projection, &events, &options.run, &cancel).await?;
        applied += events.len() as u64;
        after = last;
    }
    info!(projection = name, version, ?replaced, applied, "rebuild switched live");
    if let Some(old) = replaced {
        tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(options.drop_after) => {}
        }
        factory(old).drop_version().await?;
        info!(projection = name, version = old, "replaced version dropped");
    }
    Ok(RebuildReport {
        name: name.to_owned(),
        version,
        replaced,
        events_applied: applied,
        position: after,
        seconds,
        events_per_second: rate,
        historical: false,
    })
}

async fn apply(
    projection: &dyn crate::Projection,
    events: &[RecordedEvent],
    run: &RunOptions,
    cancel: &CancellationToken,
) -> Result<(), ProjectionError> {
    match apply_reliably(projection, batch_of(events), run, cancel).await {
        Ok(()) => Ok(()),
        Err(RunError::Cancelled) => Err(ProjectionError::Invalid("rebuild cancelled".to_owned())),
        Err(RunError::Projection(cause)) => Err(cause),
    }
}
