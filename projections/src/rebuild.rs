//! Rebuilds: a new version of a projection's tables, built beside the live one from the store's
//! global log (not Kafka: the log is the source of truth and reads in large batches), then
//! switched to atomically.
//!
//! 1. Register version N+1 as `building`, create its tables.
//! 2. Read the global log from the start in large batches and apply them, reporting progress
//!    (events/s, ETA) to the registry (for `/v1/projections`) and to the caller (the CLI's bar).
//!    Pages are read and decoded ahead on a task of their own. A projection that can load in
//!    bulk ([`crate::Projection::bulk_load`], the dashboard) is fed the batches up to the head
//!    as it was when the build started instead of applying them one transaction each; it
//!    writes its rows, indexes and checkpoint when that point (or the `until` point, or its
//!    memory bound) is reached, and whatever follows goes batch by batch, as before.
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
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::runtime::store::batch_of;
use crate::runtime::{ProjectionFactory, RunError, RunOptions, apply_reliably};
use crate::{Batch, BulkLoad, ProjectionError, ReadDb};

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
    // The build phase may be a bulk load (`Projection::bulk_load`), which needs this version to
    // itself, empty, until the switch. It has it:
    // - the registry's primary key on (name, version) lets only one registration of N + 1
    //   succeed (`register_building` above fails for a concurrent rebuild that picked the same
    //   number), and a failed build's version stays registered (`retired` or `building`), so
    //   its number is never handed out again;
    // - Kafka workers and embedded runners write only the live version (`ensure_live` and
    //   `live_version` in `runtime`, which never answer a `building` one, and `ensure_live`
    //   cannot make this one live: its row exists), and follow a switch only after it happened;
    // - nothing reads or writes this version's checkpoints before the switch but this function.
    // Tables left by hand or by a test under this number would break the "empty" part: the
    // dashboard's `bulk_load` checks that they are empty and declines otherwise.
    let mut bulk = projection.bulk_load().await?;
    if bulk.is_none() {
        projection.prepare().await?;
    }
    info!(
        projection = name,
        version,
        target,
        bulk = bulk.is_some(),
        "rebuild started"
    );

    let started = Instant::now();
    let mut after = 0u64;
    let mut applied = 0u64;
    let mut target = target;
    let mut last_report = Instant::now();
    // Reading and decoding the log overlaps with applying it (a bulk load's writer is a third
    // task): pages are read ahead on a task of their own.
    let mut pages = Pages::read_ahead(Arc::clone(&store), after, options.batch_size);
    loop {
        let Page { mut marks, mut batch } = pages.next().await?;
        let mut keep = marks.len();
        if let Some(limit) = until_position {
            keep = keep.min(marks.iter().take_while(|(position, _)| *position <= limit).count());
        }
        if let Some(limit) = until_time {
            keep = keep.min(marks.iter().take_while(|(_, recorded)| *recorded <= limit).count());
        }
        let reached_until = keep < marks.len();
        if reached_until {
            let first_left_out = marks[keep].0;
            batch.events.retain(|e| e.position < first_left_out);
            batch.dead_letters.retain(|d| d.position < first_left_out);
            marks.truncate(keep);
        }
        let Some(last) = marks.last().map(|(position, _)| *position) else {
            break;
        };
        match bulk.as_mut() {
            Some(load) => {
                if cancel.is_cancelled() {
                    return Err(cancelled());
                }
                load.push(&batch).await?;
            }
            None => apply_batch(&*projection, batch, &options.run, &cancel).await?,
        }
        applied += marks.len() as u64;
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
        // The bulk load covers the log up to where it was when the build started (or until
        // memory is full); what was appended since is caught up batch by batch.
        if bulk
            .as_ref()
            .is_some_and(|load| after >= bulk_target(head, until_position) || load.full())
            && let Some(load) = bulk.take()
        {
            finish_bulk(load, name, version, after).await?;
        }
        if reached_until || until_position.is_some_and(|p| after >= p) {
            break;
        }
    }
    drop(pages);
    if let Some(load) = bulk.take() {
        finish_bulk(load, name, version, after).await?;
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
    if db.hand_over_to_kafka(name, version).await? {
        info!(
            projection = name,
            version,
            position = after,
            "caught up; Kafka workers carry the version on"
        );
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

/// Where a bulk load hands over to batch-by-batch apply: the head when the build started (or
/// the `until` position before it).
fn bulk_target(head: u64, until_position: Option<u64>) -> u64 {
    until_position.map_or(head, |p| p.min(head))
}

async fn finish_bulk(load: Box<dyn BulkLoad>, name: &str, version: u32, after: u64) -> Result<(), ProjectionError> {
    let report = load.finish().await?;
    info!(
        projection = name,
        version,
        position = after,
        rows = report.rows,
        rows_in_memory = report.rows_in_memory,
        finish_seconds = report.finish_seconds,
        "bulk load finished; the rest of the log is applied batch by batch"
    );
    Ok(())
}

fn cancelled() -> ProjectionError {
    ProjectionError::Invalid("rebuild cancelled".to_owned())
}

/// One page of the global log, decoded: each event's position and commit time (for `until`),
/// and the batch to apply.
struct Page {
    marks: Vec<(u64, DateTime<Utc>)>,
    batch: Batch,
}

/// Pages of the global log read and decoded ahead by a task of their own (at most
/// `PAGES_AHEAD` waiting). The task stops after the first empty page, at the first error, or
/// when this is dropped.
struct Pages {
    pages: mpsc::Receiver<Result<Page, ProjectionError>>,
    reader: JoinHandle<()>,
}

const PAGES_AHEAD: usize = 2;

impl Pages {
    fn read_ahead(store: Arc<dyn EventStore>, mut after: u64, size: usize) -> Self {
        let (sender, pages) = mpsc::channel(PAGES_AHEAD);
        let reader = tokio::spawn(async move {
            loop {
                let events = match store.read_all(after, size).await {
                    Ok(events) => events,
                    Err(cause) => {
                        let _ = sender.send(Err(cause.into())).await;
                        return;
                    }
                };
                let last = events.last().map(|e| e.position);
                let page = Page {
                    marks: events.iter().map(|e| (e.position, e.recorded_at)).collect(),
                    batch: batch_of(&events),
                };
                drop(events);
                if sender.send(Ok(page)).await.is_err() {
                    return;
                }
                match last {
                    Some(last) => after = last,
                    None => return,
                }
            }
        });
        Pages { pages, reader }
    }

    /// The next page; an empty one at the end of the log.
    async fn next(&mut self) -> Result<Page, ProjectionError> {
        match self.pages.recv().await {
            Some(page) => page,
            None => Ok(Page {
                marks: Vec::new(),
                batch: Batch::default(),
            }),
        }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn apply_batch(
    projection: &dyn crate::Projection,
    batch: Batch,
    run: &RunOptions,
    cancel: &CancellationToken,
) -> Result<(), ProjectionError> {
    match apply_reliably(projection, batch, run, cancel).await {
        Ok(()) => Ok(()),
        Err(RunError::Cancelled) => Err(cancelled()),
        Err(RunError::Projection(cause)) => Err(cause),
    }
}

async fn apply(
    projection: &dyn crate::Projection,
    events: &[RecordedEvent],
    run: &RunOptions,
    cancel: &CancellationToken,
) -> Result<(), ProjectionError> {
    apply_batch(projection, batch_of(events), run, cancel).await
}
