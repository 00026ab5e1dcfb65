//! Rebuilds: a new version of a projection's tables, built beside the live one from the services'
//! logs (not Kafka: the logs are the source of truth and read in large batches), then switched
//! to atomically.
//!
//! Every service has its own log. A rebuild reads them all, merged by commit time (a log's
//! `recorded_at` never decreases; equal times go in [`Service::ALL`] order), and checkpoints
//! each service's log on its own. The projections converge whatever the interleaving of
//! different streams (the [`crate::Projection`] contract), so any merge order gives the same
//! tables; commit-time order is the one that makes a build up to a time read exactly the events
//! committed by then.
//!
//! 1. Register version N+1 as `building`, create its tables.
//! 2. Read the logs from the start in large batches and apply them, reporting progress
//!    (events/s, ETA) to the registry (for `/v1/projections`) and to the caller (the CLI's bar).
//!    Pages are read and decoded ahead on a task of their own. A projection that can load in
//!    bulk ([`crate::Projection::bulk_load`], the dashboard) is fed the batches up to the head
//!    as it was when the build started instead of applying them one transaction each; it
//!    writes its rows, indexes and checkpoint when that point (or the `until` point, or its
//!    memory bound) is reached, and whatever follows goes batch by batch, as before.
//! 3. Catch up to the heads, then switch once N+1 holds every event N has applied
//!    ([`ReadDb::begin_switch`]): in one transaction, N+1 becomes `live` and N
//!    `retired`, and N+1 inherits N's Kafka checkpoints. Readers pick the live version per
//!    request, so each answer comes from one complete version, and none holds less than the
//!    answers before the switch (for a projection whose rows commit with its checkpoints).
//! 4. Catch up once more from where the build stopped to the head: events that the live workers
//!    applied to N just before the switch are in the store by then, and are applied to N+1
//!    (guarded by stream version, so nothing applies twice). Workers follow the switch by
//!    themselves (they poll the registry) and go on from N+1's checkpoints.
//! 5. After a grace period (readers that had picked N finish), drop N's tables.
//!
//! With `until`, the build stops at that time (or at that position of one service's log, and the
//! other logs at that event's commit time) and stays `historical`: a view of the past beside the
//! live one, never switched to.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use event_schemas::{ConsistencyToken, Service};
use event_store::RecordedEvent;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::runtime::store::{ServiceLog, batch_of, belongs};
use crate::runtime::{ProjectionFactory, RunError, RunOptions, apply_reliably};
use crate::{Batch, BulkLoad, ProjectionError, ReadDb};

/// Where a `--until` build stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UntilPoint {
    /// The last position of one service's log included (`orders:123`); the other logs stop at
    /// that event's commit time.
    Position(ConsistencyToken),
    /// The last commit time included, in every log.
    Time(DateTime<Utc>),
}

/// A `--until` point resolved against the logs: the last commit time included, and for a
/// position, the last position of its service's log (its events committed at that same time but
/// after it stay out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Until {
    time: DateTime<Utc>,
    position: Option<ConsistencyToken>,
}

impl Until {
    fn includes(&self, service: Service, position: u64, recorded_at: DateTime<Utc>) -> bool {
        recorded_at <= self.time
            && self
                .position
                .is_none_or(|t| t.service != service || position <= t.position)
    }
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
    /// The positions applied so far, summed over the services' logs.
    pub position: u64,
    /// Where it is going: the sum of the logs' heads (they move while the build runs).
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
    /// The last position applied of each service's log.
    pub positions: BTreeMap<Service, u64>,
    pub seconds: f64,
    pub events_per_second: f64,
    pub historical: bool,
}

/// Builds the next version of the projection `factory` makes, from the services' logs; see the
/// module doc. `progress` is called once the version is registered, then after each batch.
pub async fn rebuild(
    logs: Vec<ServiceLog>,
    db: &ReadDb,
    factory: ProjectionFactory,
    options: RebuildOptions,
    cancel: CancellationToken,
    mut progress: impl FnMut(RebuildProgress) + Send,
) -> Result<RebuildReport, ProjectionError> {
    let name = factory(1).name();
    let versions = db.versions(name).await?;
    let version = versions.iter().map(|v| v.version).max().unwrap_or(0) + 1;
    let until = resolve_until(&logs, options.until).await?;
    let heads = heads(&logs).await?;
    let start_target: u64 = heads.values().sum();
    db.register_building(
        name,
        version,
        start_target,
        until.map(|u| (u.position.map_or(u64::MAX, |t| t.position), Some(u.time))),
    )
    .await?;
    // The first report says which version is registered (and so this rebuild's own): a caller
    // that cleans up after a failure must not touch a version another process registered.
    progress(RebuildProgress {
        version,
        position: 0,
        target: start_target,
        events_applied: 0,
        events_per_second: 0.0,
    });
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
        target = start_target,
        bulk = bulk.is_some(),
        "rebuild started"
    );

    let started = Instant::now();
    let mut applied = 0u64;
    let mut positions: BTreeMap<Service, u64> = logs.iter().map(|log| (log.service, 0)).collect();
    let mut target = start_target;
    let mut last_report = Instant::now();
    // Reading, decoding and merging the logs overlaps with applying them (a bulk load's writer
    // is a third task): pages are read ahead on a task of their own.
    let mut pages = Pages::read_ahead(logs.clone(), options.batch_size);
    while let Some(Page { mut marks, mut batch }) = pages.next().await? {
        let reached_until = match until {
            Some(until) => keep_until(until, &mut marks, &mut batch),
            None => false,
        };
        if !marks.is_empty() {
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
            for (service, position, _) in &marks {
                positions.insert(*service, *position);
            }
            if until.is_none() {
                target = target.max(heads_sum(&logs).await?);
            }
            let position: u64 = positions.values().sum();
            let rate = applied as f64 / started.elapsed().as_secs_f64().max(1e-9);
            progress(RebuildProgress {
                version,
                position,
                target,
                events_applied: applied,
                events_per_second: rate,
            });
            if last_report.elapsed() >= Duration::from_millis(500) {
                last_report = Instant::now();
                db.report_progress(name, version, applied, rate, target).await?;
            }
            // The bulk load covers the logs up to where they were when the build started (or
            // until memory is full); what was appended since is caught up batch by batch.
            if bulk
                .as_ref()
                .is_some_and(|load| reached(&positions, &heads) || load.full())
                && let Some(load) = bulk.take()
            {
                finish_bulk(load, name, version, position).await?;
            }
        }
        if reached_until {
            break;
        }
    }
    drop(pages);
    let position: u64 = positions.values().sum();
    if let Some(load) = bulk.take() {
        finish_bulk(load, name, version, position).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let rate = applied as f64 / seconds.max(1e-9);
    db.report_progress(name, version, applied, rate, target.max(position))
        .await?;

    if until.is_some() {
        db.set_state(name, version, "historical").await?;
        info!(projection = name, version, applied, "historical version built");
        return Ok(RebuildReport {
            name: name.to_owned(),
            version,
            replaced: None,
            events_applied: applied,
            positions,
            seconds,
            events_per_second: rate,
            historical: true,
        });
    }

    // Catch up with what was committed while the build ran (a bulk load's finish can take
    // seconds), then switch once this version holds every event the live one has applied, so
    // that no reader sees the switch take events away.
    let replaced = switch_caught_up(
        db,
        name,
        version,
        &logs,
        &mut positions,
        &mut applied,
        &*projection,
        &options,
        &cancel,
    )
    .await?;
    // Events the old version's workers applied up to the switch are in the stores by now.
    applied += catch_up(&logs, &mut positions, &*projection, &options, &cancel).await?;
    if db.hand_over_to_kafka(name, version).await? {
        info!(
            projection = name,
            version,
            ?positions,
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
        positions,
        seconds,
        events_per_second: rate,
        historical: false,
    })
}

/// How many times a switch on SQLite catches up and compares before it switches anyway.
const SWITCH_TRIES: u32 = 20;

/// Catches the new version up and switches to it once it holds every event the live one has
/// applied ([`ReadDb::begin_switch`]). On PostgreSQL the live version is held still meanwhile,
/// and a last catch-up runs while it is. On SQLite the switch's transaction is the database's
/// one writer, so the catch-up cannot run inside it: it catches up, compares, and tries again
/// when the live version got ahead in between; after `SWITCH_TRIES` it switches anyway (the
/// catch-up after the switch brings the difference, a few events, a moment later).
#[allow(clippy::too_many_arguments)]
async fn switch_caught_up(
    db: &ReadDb,
    name: &str,
    version: u32,
    logs: &[ServiceLog],
    positions: &mut BTreeMap<Service, u64>,
    applied: &mut u64,
    projection: &dyn crate::Projection,
    options: &RebuildOptions,
    cancel: &CancellationToken,
) -> Result<Option<u32>, ProjectionError> {
    *applied += catch_up(logs, positions, projection, options, cancel).await?;
    if db.kind() == crate::DbKind::Postgres {
        let switch = db.begin_switch(name).await?;
        *applied += catch_up(logs, positions, projection, options, cancel).await?;
        if let Some(service) = switch.ahead_of(positions) {
            switch.abandon().await?;
            return Err(ProjectionError::Invalid(format!(
                "the live version of {name} applied events of the {service} log past its head"
            )));
        }
        return switch.commit(name, version).await;
    }
    for _ in 0..SWITCH_TRIES {
        let switch = db.begin_switch(name).await?;
        if switch.ahead_of(positions).is_none() {
            return switch.commit(name, version).await;
        }
        switch.abandon().await?;
        *applied += catch_up(logs, positions, projection, options, cancel).await?;
    }
    tracing::warn!(
        projection = name,
        version,
        "the live version stays ahead; switching anyway"
    );
    db.switch_live(name, version).await
}

/// Applies every log from `positions` to its head (as it is while it reads), batch by batch;
/// answers how many events of the logs' services that was.
async fn catch_up(
    logs: &[ServiceLog],
    positions: &mut BTreeMap<Service, u64>,
    projection: &dyn crate::Projection,
    options: &RebuildOptions,
    cancel: &CancellationToken,
) -> Result<u64, ProjectionError> {
    let mut applied = 0;
    for log in logs {
        let after = positions.entry(log.service).or_insert(0);
        loop {
            let events = log.store.read_all(*after, options.batch_size).await?;
            let Some(last) = events.last().map(|e| e.position) else {
                break;
            };
            apply(projection, &events, log.service, &options.run, cancel).await?;
            applied += events.iter().filter(|e| belongs(e, log.service)).count() as u64;
            *after = last;
        }
    }
    Ok(applied)
}

/// Every log's head when the build starts.
async fn heads(logs: &[ServiceLog]) -> Result<BTreeMap<Service, u64>, ProjectionError> {
    let mut heads = BTreeMap::new();
    for log in logs {
        heads.insert(log.service, log.store.head_position().await?);
    }
    Ok(heads)
}

async fn heads_sum(logs: &[ServiceLog]) -> Result<u64, ProjectionError> {
    Ok(heads(logs).await?.values().sum())
}

/// Whether every log has been read up to its head of `heads`.
fn reached(positions: &BTreeMap<Service, u64>, heads: &BTreeMap<Service, u64>) -> bool {
    heads
        .iter()
        .all(|(service, head)| positions.get(service).copied().unwrap_or(0) >= *head)
}

/// The `until` point against the logs: a position becomes its event's commit time too.
async fn resolve_until(logs: &[ServiceLog], until: Option<UntilPoint>) -> Result<Option<Until>, ProjectionError> {
    match until {
        None => Ok(None),
        Some(UntilPoint::Time(time)) => Ok(Some(Until { time, position: None })),
        Some(UntilPoint::Position(token)) => {
            let log = logs.iter().find(|log| log.service == token.service).ok_or_else(|| {
                ProjectionError::Invalid(format!("the rebuild reads no log of the {} service", token.service))
            })?;
            let before = log.store.read_all(token.position.saturating_sub(1), 1).await?;
            let event = before
                .into_iter()
                .find(|e| e.position <= token.position)
                .ok_or_else(|| {
                    ProjectionError::Invalid(format!(
                        "{token} is not the position of an event of the {} log",
                        token.service
                    ))
                })?;
            Ok(Some(Until {
                time: event.recorded_at,
                position: Some(token),
            }))
        }
    }
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

/// Keeps of a page what `until` includes; answers whether the page went past it (every later
/// page would too: pages come in commit-time order).
fn keep_until(until: Until, marks: &mut Vec<Mark>, batch: &mut Batch) -> bool {
    let past = marks.iter().any(|(_, _, recorded_at)| *recorded_at > until.time);
    let before = marks.len();
    marks.retain(|(service, position, recorded_at)| until.includes(*service, *position, *recorded_at));
    if marks.len() < before {
        batch
            .events
            .retain(|e| until.includes(e.service(), e.position, e.recorded_at));
        batch.dead_letters.retain(|letter| {
            marks.iter().any(|(service, position, _)| {
                *position == letter.position && letter.origin.source == crate::store_source(*service)
            })
        });
    }
    past
}

/// An event of a page: its service, its position in that service's log and its commit time.
type Mark = (Service, u64, DateTime<Utc>);

/// One page of the merged logs, decoded: each event's mark (for `until` and the positions
/// reached), and the batch to apply.
struct Page {
    marks: Vec<Mark>,
    batch: Batch,
}

/// Pages of the services' logs merged by commit time, read and decoded ahead by a task of
/// their own (at most `PAGES_AHEAD` waiting). The task stops at the end of every log, at the
/// first error, or when this is dropped.
struct Pages {
    pages: mpsc::Receiver<Result<Page, ProjectionError>>,
    reader: JoinHandle<()>,
}

const PAGES_AHEAD: usize = 2;

/// One log being read: what was read of it and not merged yet.
struct Cursor {
    log: ServiceLog,
    after: u64,
    buffer: VecDeque<RecordedEvent>,
    done: bool,
}

impl Cursor {
    /// Reads the next page of the log when everything read so far is merged.
    async fn refill(&mut self, size: usize) -> Result<(), ProjectionError> {
        // A page of a shared store may hold nothing of this service: read on until something
        // is waiting or the log ends, so that the merge always knows this log's next event.
        while !self.done && self.buffer.is_empty() {
            let events = self.log.store.read_all(self.after, size).await?;
            match events.last() {
                Some(last) => self.after = last.position,
                None => self.done = true,
            }
            let service = self.log.service;
            self.buffer.extend(events.into_iter().filter(|e| belongs(e, service)));
        }
        Ok(())
    }
}

impl Pages {
    fn read_ahead(logs: Vec<ServiceLog>, size: usize) -> Self {
        let (sender, pages) = mpsc::channel(PAGES_AHEAD);
        let reader = tokio::spawn(async move {
            let mut cursors: Vec<Cursor> = logs
                .into_iter()
                .map(|log| Cursor {
                    log,
                    after: 0,
                    buffer: VecDeque::new(),
                    done: false,
                })
                .collect();
            loop {
                let page = match merge_page(&mut cursors, size).await {
                    Ok(Some(page)) => Ok(page),
                    Ok(None) => return,
                    Err(cause) => Err(cause),
                };
                let failed = page.is_err();
                if sender.send(page).await.is_err() || failed {
                    return;
                }
            }
        });
        Pages { pages, reader }
    }

    /// The next page; `None` at the end of the logs.
    async fn next(&mut self) -> Result<Option<Page>, ProjectionError> {
        self.pages.recv().await.transpose()
    }
}

/// The next page of up to `size` events of the merged logs (`None`: every log is read). An
/// event is taken only while every log that is not finished has one waiting, so that the
/// earliest of them all is always known.
async fn merge_page(cursors: &mut [Cursor], size: usize) -> Result<Option<Page>, ProjectionError> {
    let mut page = Page {
        marks: Vec::new(),
        batch: Batch::default(),
    };
    while page.marks.len() < size {
        for cursor in cursors.iter_mut() {
            cursor.refill(size).await?;
        }
        let next = cursors
            .iter_mut()
            .filter(|c| !c.buffer.is_empty())
            .min_by_key(|c| c.buffer.front().map(|e| (e.recorded_at, c.log.service)));
        let Some(cursor) = next else { break };
        let Some(event) = cursor.buffer.pop_front() else { break };
        let service = cursor.log.service;
        page.marks.push((service, event.position, event.recorded_at));
        let decoded = batch_of(std::slice::from_ref(&event), service);
        page.batch.events.extend(decoded.events);
        page.batch.dead_letters.extend(decoded.dead_letters);
    }
    Ok((!page.marks.is_empty()).then_some(page))
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
    service: Service,
    run: &RunOptions,
    cancel: &CancellationToken,
) -> Result<(), ProjectionError> {
    apply_batch(projection, batch_of(events, service), run, cancel).await
}
