//! The distributed runtime: a projection worker in a Kafka consumer group.
//!
//! - The worker owns a `BaseConsumer` on a blocking thread and applies batches through the
//!   tokio runtime's handle; partitions are read in order, so each stream's events are too.
//! - Offsets live in the read database, in the same transaction as the rows (the projection's
//!   checkpoints). On assignment the worker starts each partition after its checkpoint, so a
//!   crash at any point replays only what was not committed. After each sink commit it also
//!   stores the offsets in Kafka (`enable.auto.offset.store=false`, auto commit on), which is
//!   what lag tools read; the database stays the truth.
//! - On revocation the batch in hand is applied first (the rebalance callback flushes it), so a
//!   rebalance costs no rework.
//! - An undecodable message becomes a dead letter with the reason; it never blocks its partition.
//! - The worker follows the live version of the projection: after a rebuild switches it, it
//!   seeks its partitions to the new version's checkpoints (replays are guarded by stream
//!   version) and applies there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_schemas::Envelope;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{ProjectionFactory, RunError, RunOptions, apply_reliably};
use crate::{
    Batch, Checkpoint, DeadLetter, HandOver, Origin, PartitionReport, ProjectedEvent, Projection, ProjectionError,
    ReadDb,
};
use service_kit::error_chain;

/// How often a worker looks for a version switch made by a rebuild.
const VERSION_CHECK: Duration = Duration::from_secs(1);
/// How long the broker may hold a fetch that found nothing (`fetch.wait.max.ms`, librdkafka's
/// default 500 ms). The bound on how late a worker sees a record when the broker does not answer
/// a waiting fetch as soon as data arrives (tansu did not: `bench reads` measured a p50 of
/// 464 ms from a command's answer to the order in the dashboard at 500 ms), so it is the
/// freshness floor; the price is an empty fetch per 5 ms per idle worker (20 ms: freshness p50
/// ~30 ms higher at 1,000 orders/s). Workers that linger wait longer ([`fetch_wait`]).
const FETCH_WAIT: Duration = Duration::from_millis(5);
/// How long a worker must have seen no record and no assignment before it says its partitions
/// are drained: well past a fetch round trip ([`FETCH_WAIT`]).
const QUIET: Duration = Duration::from_secs(1);
/// How often an idle worker repeats that its partitions are drained (see `ReadDb::progress`).
const DRAINED_REPORT: Duration = Duration::from_secs(1);

/// Where and how a worker consumes.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The consumer group: every worker of one projection shares it.
    pub group_id: String,
    /// The topics the projection reads (`orderflow.orders.v1`, ...).
    pub topics: Vec<String>,
    pub run: RunOptions,
    /// `session.timeout.ms`: how soon the group notices a dead worker.
    pub session_timeout: Duration,
}

/// Runs a projection worker until `cancel`: joins the group, applies what it is assigned, and
/// leaves the group cleanly on the way out (flushing the batch in hand).
pub async fn run_from_kafka(
    db: ReadDb,
    factory: ProjectionFactory,
    options: KafkaOptions,
    cancel: CancellationToken,
) -> Result<(), ProjectionError> {
    let name = factory(1).name();
    // Several workers start at once: their first `CREATE TABLE IF NOT EXISTS` can race in
    // PostgreSQL (a unique violation in its catalog), and the database may not answer yet.
    // Both pass with a retry; giving up would leave the process half running.
    let mut delay = options.run.backoff;
    let (version, projection) = loop {
        match super::start_live(&db, &factory, name).await {
            Ok(started) => break started,
            Err(cause) => warn!(projection = name, error = %error_chain(&cause), "cannot start yet; retrying"),
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(options.run.max_backoff);
    };
    let shared = Arc::new(Shared {
        handle: Handle::current(),
        db,
        factory,
        name,
        run: options.run,
        cancel,
        state: Mutex::new(State {
            version,
            projection,
            pending: Batch::default(),
            pending_since: None,
            active_at: Instant::now(),
            next: HashMap::new(),
        }),
        ends: Mutex::new(HashMap::new()),
    });
    let worker = Arc::clone(&shared);
    tokio::task::spawn_blocking(move || consume(&worker, &options))
        .await
        .map_err(|e| ProjectionError::Inconsistent(format!("projection worker panicked: {e}")))?
}

/// What the consumer thread and the rebalance callback share.
struct Shared {
    handle: Handle,
    db: ReadDb,
    factory: ProjectionFactory,
    name: &'static str,
    run: RunOptions,
    cancel: CancellationToken,
    state: Mutex<State>,
    /// Each partition's end offset, from librdkafka's statistics.
    ends: Mutex<HashMap<(String, i32), i64>>,
}

struct State {
    version: u32,
    projection: Arc<dyn Projection>,
    /// Read but not yet applied.
    pending: Batch,
    pending_since: Option<Instant>,
    /// The last record or assignment: a partition is reported drained only after a quiet
    /// second, so that its first fetch after an assignment has come back (an empty local
    /// queue right after an assignment says nothing about the partition).
    active_at: Instant,
    /// The offset each assigned partition must deliver next (see [`Shared::take`]), and how far
    /// back the last gap made it read again.
    next: HashMap<(String, i32), NextOffset>,
}

struct WorkerContext {
    shared: Arc<Shared>,
}

impl ClientContext for WorkerContext {
    /// librdkafka's statistics carry each partition's end as the last fetch saw it: the
    /// worker's lag, without a ListOffsets request (which tansu answers wrongly, ADR 0004).
    fn stats(&self, statistics: Statistics) {
        let mut ends = self
            .shared
            .ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (topic, stats) in statistics.topics {
            for (partition, stats) in stats.partitions {
                if partition >= 0 && stats.hi_offset >= 0 {
                    ends.insert((topic.clone(), partition), stats.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for WorkerContext {
    /// Eager rebalancing, done by hand so that each assigned partition starts after the
    /// checkpoint stored with the rows, and the batch in hand is applied before a revocation.
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let projection = Arc::clone(&self.shared.lock().projection);
                match self.shared.block_on_checkpoints(&*projection) {
                    Some(checkpoints) => set_offsets(tpl, &checkpoints),
                    None => return, // cancelled: leave unassigned, we are stopping
                }
                info!(
                    projection = self.shared.name,
                    partitions = tpl.count(),
                    "partitions assigned"
                );
                {
                    let mut state = self.shared.lock();
                    state.active_at = Instant::now();
                    expect_from(&mut state, tpl);
                }
                self.shared.report_assigned(tpl);
                if let Err(e) = consumer.assign(tpl) {
                    error!(projection = self.shared.name, error = %e, "cannot take the assigned partitions");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.shared.flush(consumer);
                info!(
                    projection = self.shared.name,
                    partitions = tpl.count(),
                    "partitions revoked"
                );
                // Anything still pending (a flush cut short by shutdown) is read again by the next owner.
                self.shared.lock().pending = Batch::default();
                if let Err(e) = consumer.unassign() {
                    error!(projection = self.shared.name, error = %e, "cannot release the revoked partitions");
                }
            }
            other => {
                error!(projection = self.shared.name, error = ?other, "rebalance failed");
                self.shared.lock().pending = Batch::default();
                let _ = consumer.unassign();
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock already ended the worker; the state is still usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies the batch in hand, then stores its offsets in Kafka.
    fn flush(&self, consumer: &BaseConsumer<WorkerContext>) {
        let (projection, batch) = {
            let mut state = self.lock();
            state.pending_since = None;
            (Arc::clone(&state.projection), std::mem::take(&mut state.pending))
        };
        if batch.is_empty() {
            return;
        }
        let checkpoints = batch.checkpoints();
        let events = batch.events.len() as u64;
        let oldest = batch.events.iter().map(|e| e.recorded_at).min();
        let started = Instant::now();
        match self
            .handle
            .block_on(apply_reliably(&*projection, batch, &self.run, &self.cancel))
        {
            Ok(()) => {
                metrics::counter!("orderflow_projection_events_total", "projection" => self.name).increment(events);
                metrics::histogram!("orderflow_projection_batch_seconds", "projection" => self.name)
                    .record(started.elapsed().as_secs_f64());
                // From the store's commit of the batch's oldest event to its being applied: how
                // far behind the read model runs (relay, broker, linger, apply).
                let behind =
                    oldest.map(|t| (chrono::Utc::now() - t).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
                if let Some(behind) = behind {
                    metrics::histogram!("orderflow_projection_behind_seconds", "projection" => self.name)
                        .record(behind);
                }
                debug!(
                    projection = self.name,
                    events,
                    apply_ms = started.elapsed().as_secs_f64() * 1e3,
                    behind_ms = behind.unwrap_or(0.0) * 1e3,
                    "batch applied"
                );
                for checkpoint in &checkpoints {
                    metrics::gauge!("orderflow_projection_position", "projection" => self.name)
                        .set(checkpoint.position as f64);
                    if let Err(e) =
                        consumer.store_offset(&checkpoint.source, checkpoint.partition, checkpoint.offset + 1)
                    {
                        debug!(error = %e, "offset not stored in Kafka (partition no longer ours)");
                    }
                }
            }
            Err(RunError::Cancelled) => debug!(projection = self.name, "batch dropped at shutdown; it is read again"),
            Err(RunError::Projection(cause)) => {
                error!(projection = self.name, error = %error_chain(&cause), "batch not applied; it is read again");
            }
        }
    }

    /// The live version's checkpoints, retried until they load (`None` when cancelled).
    fn block_on_checkpoints(&self, projection: &dyn Projection) -> Option<Vec<Checkpoint>> {
        let mut delay = self.run.backoff;
        loop {
            match self.handle.block_on(projection.checkpoints()) {
                Ok(checkpoints) => return Some(checkpoints),
                Err(cause) => error!(projection = self.name, error = %error_chain(&cause), "cannot read checkpoints"),
            }
            if self.cancel.is_cancelled() {
                return None;
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(self.run.max_backoff);
        }
    }

    /// Switches to the live version when a rebuild changed it: drops the batch in hand and
    /// seeks every assigned partition to the new version's checkpoints.
    fn follow_live_version(&self, consumer: &BaseConsumer<WorkerContext>) -> Result<(), ProjectionError> {
        let live = self.handle.block_on(self.db.live_version(self.name))?;
        let Some(live) = live else { return Ok(()) };
        if live == self.lock().version {
            return Ok(());
        }
        let projection = (self.factory)(live);
        self.handle.block_on(projection.prepare())?;
        let Some(checkpoints) = self.block_on_checkpoints(&*projection) else {
            return Ok(());
        };
        {
            let mut state = self.lock();
            info!(
                projection = self.name,
                from = state.version,
                to = live,
                "following the new live version"
            );
            state.version = live;
            state.projection = projection;
            state.pending = Batch::default();
            state.pending_since = None;
        }
        let mut assignment = consumer.assignment()?;
        set_offsets(&mut assignment, &checkpoints);
        expect_from(&mut self.lock(), &assignment);
        for element in assignment.elements() {
            if let Err(e) = consumer.seek(
                element.topic(),
                element.partition(),
                element.offset(),
                Duration::from_secs(5),
            ) {
                warn!(error = %e, topic = element.topic(), partition = element.partition(), "seek failed");
            }
        }
        Ok(())
    }

    /// Records that every assigned partition was found empty (what makes "applied position"
    /// exact for read-your-writes, see `applied_position`), with the partition ends the last
    /// fetches saw (for lag). Answers whether the report was stored.
    fn report_drained(&self, consumer: &BaseConsumer<WorkerContext>) -> bool {
        let Ok(assignment) = consumer.assignment() else {
            return false;
        };
        if assignment.count() == 0 {
            return false;
        }
        let ends = self
            .ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let reports: Vec<PartitionReport> = assignment
            .elements()
            .iter()
            .map(|e| PartitionReport {
                source: e.topic().to_owned(),
                partition: e.partition(),
                drained: true,
                high_watermark: ends.get(&(e.topic().to_owned(), e.partition())).copied(),
            })
            .collect();
        let version = self.lock().version;
        match self
            .handle
            .block_on(self.db.report_partitions(self.name, version, &reports))
        {
            Ok(()) => true,
            Err(cause) => {
                warn!(projection = self.name, error = %error_chain(&cause), "cannot report drained partitions");
                false
            }
        }
    }

    /// Withdraws any "drained" claim a previous owner left on partitions this worker now owns:
    /// they are not known to be drained until this worker has read them.
    fn report_assigned(&self, tpl: &TopicPartitionList) {
        let reports: Vec<PartitionReport> = tpl
            .elements()
            .iter()
            .map(|e| PartitionReport {
                source: e.topic().to_owned(),
                partition: e.partition(),
                drained: false,
                high_watermark: None,
            })
            .collect();
        let version = self.lock().version;
        if let Err(cause) = self
            .handle
            .block_on(self.db.report_partitions(self.name, version, &reports))
        {
            warn!(projection = self.name, error = %error_chain(&cause), "cannot withdraw drained claims");
        }
    }

    /// Nothing in hand, and no record nor assignment for [`QUIET`].
    fn quiet(&self) -> bool {
        let state = self.lock();
        state.pending.is_empty() && state.active_at.elapsed() >= QUIET
    }

    /// Gives every partition of the projection's topics a checkpoint row (offset -1) if it has
    /// none, so that a partition no worker has read yet holds the applied position back
    /// instead of being invisible to it.
    fn register_partitions(&self, consumer: &BaseConsumer<WorkerContext>, topics: &[String]) {
        let mut partitions = Vec::new();
        for topic in topics {
            match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
                Ok(metadata) => {
                    for t in metadata.topics() {
                        partitions.extend(t.partitions().iter().map(|p| (t.name().to_owned(), p.id())));
                    }
                }
                Err(e) => warn!(projection = self.name, topic, error = %e, "cannot list the topic's partitions"),
            }
        }
        let version = self.lock().version;
        if let Err(cause) = self
            .handle
            .block_on(self.db.register_partitions(self.name, version, &partitions))
        {
            warn!(projection = self.name, error = %error_chain(&cause), "cannot register the partitions");
        }
    }

    /// Adds a message to the batch in hand: decoded, or as a dead letter.
    /// Takes a record into the batch in hand, unless it is not the one its partition must
    /// deliver next. A partition's offsets are contiguous (the relay's producer is idempotent,
    /// not transactional, and the topics are not compacted), so a record past the expected
    /// offset means records went missing: a broker that answers a fetch from the middle of a
    /// stored record batch with the batches after it (the test broker, tansu 0.6, does) would
    /// otherwise make the worker apply past them and checkpoint them as applied. The partition
    /// is read again from further back each time, until the missing records come; those
    /// before the expected offset are skipped.
    fn take(&self, message: &BorrowedMessage<'_>) -> Taken {
        let origin = Origin {
            source: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        };
        let mut state = self.lock();
        let key = (origin.source.clone(), origin.partition);
        match state.next.get(&key).copied() {
            Some(next) if origin.offset < next.offset => return Taken::Repeat,
            Some(next) if origin.offset > next.offset && next.rewound < next.offset => {
                let rewind = (next.rewound * 2).max(FIRST_REWIND);
                state.next.insert(
                    key,
                    NextOffset {
                        offset: next.offset,
                        rewound: rewind,
                    },
                );
                warn!(
                    projection = self.name,
                    topic = origin.source,
                    partition = origin.partition,
                    expected = next.offset,
                    got = origin.offset,
                    "records missing from the partition; reading it again from further back"
                );
                return Taken::Gap {
                    topic: origin.source,
                    partition: origin.partition,
                    from: (next.offset - rewind).max(0),
                };
            }
            // Read again from the partition's first offset and still missing: the broker no
            // longer has them (retention). Nothing can bring them back; go on, loudly.
            Some(next) if origin.offset > next.offset => error!(
                projection = self.name,
                topic = origin.source,
                partition = origin.partition,
                expected = next.offset,
                got = origin.offset,
                "records are gone from the partition; continuing after them"
            ),
            _ => {}
        }
        state.next.insert(
            key,
            NextOffset {
                offset: origin.offset + 1,
                rewound: 0,
            },
        );
        let payload = message.payload().unwrap_or_default();
        state.pending_since.get_or_insert_with(Instant::now);
        match Envelope::decode(payload) {
            Ok(envelope) => match ProjectedEvent::from_envelope(&envelope, origin.clone()) {
                Ok(event) => state.pending.events.push(event),
                Err(event_schemas::DecodeError::UnknownEventType(event_type)) => {
                    state.pending.unknown.push(super::unknown(
                        origin,
                        envelope.global_position,
                        event_type,
                        Some(envelope.recorded_at),
                    ));
                }
                Err(cause) => state.pending.dead_letters.push(DeadLetter {
                    origin,
                    position: envelope.global_position,
                    event_type: envelope.event_type.clone(),
                    reason: error_chain(&cause),
                    payload: payload.to_vec(),
                }),
            },
            Err(cause) => state.pending.dead_letters.push(DeadLetter {
                origin,
                position: 0,
                event_type: String::new(),
                reason: format!("not an orderflow envelope: {}", error_chain(&cause)),
                payload: payload.to_vec(),
            }),
        }
        Taken::InBatch
    }
}

/// Starts each partition after its checkpoint, or at the beginning when it has none.
fn set_offsets(tpl: &mut TopicPartitionList, checkpoints: &[Checkpoint]) {
    let partitions: Vec<(String, i32)> = tpl
        .elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect();
    for (topic, partition) in partitions {
        let offset = checkpoints
            .iter()
            .find(|c| c.source == topic && c.partition == partition)
            .map_or(Offset::Beginning, |c| Offset::Offset(c.offset + 1));
        if let Err(e) = tpl.set_partition_offset(&topic, partition, offset) {
            warn!(error = %e, topic, partition, "cannot set the start offset");
        }
    }
}

/// Where a partition stands in the worker: the offset it must deliver next, and how far back
/// the last gap made it read again (0: no gap since the last record).
#[derive(Debug, Clone, Copy)]
struct NextOffset {
    offset: i64,
    rewound: i64,
}

/// Records the offsets `tpl` starts its partitions at as the ones each must deliver next.
fn expect_from(state: &mut State, tpl: &TopicPartitionList) {
    state.next.clear();
    for e in tpl.elements() {
        if let Offset::Offset(offset) = e.offset() {
            state
                .next
                .insert((e.topic().to_owned(), e.partition()), NextOffset { offset, rewound: 0 });
        }
    }
}

/// What [`Shared::take`] made of a record.
enum Taken {
    InBatch,
    /// Below the offset the partition must deliver next: read again after a seek back.
    Repeat,
    /// Past it: records are missing. Read the partition again from `from`.
    Gap {
        topic: String,
        partition: i32,
        from: i64,
    },
}

/// How long the broker may hold this worker's fetch: [`FETCH_WAIT`], or a fifth of the linger
/// when that is longer. A worker that holds each batch for its linger (analytics: 500 ms) gains
/// little from fetching every 5 ms (the longer wait adds at most a fifth to its lateness), and
/// every fetch costs the broker a pass over the partitions it names, time the workers that do
/// need the 5 ms (the dashboard) wait for.
fn fetch_wait(linger: Duration) -> Duration {
    FETCH_WAIT.max(linger / 5).min(Duration::from_millis(500))
}

/// The first rewind after a gap; each further gap at the same offset doubles it.
const FIRST_REWIND: i64 = 64;

fn consume(shared: &Arc<Shared>, options: &KafkaOptions) -> Result<(), ProjectionError> {
    let consumer: BaseConsumer<WorkerContext> = ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .set("group.id", &options.group_id)
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", options.session_timeout.as_millis().to_string())
        .set("partition.assignment.strategy", "range,roundrobin")
        .set("statistics.interval.ms", "1000")
        .set(
            "fetch.wait.max.ms",
            fetch_wait(options.run.linger).as_millis().to_string(),
        )
        .create_with_context(WorkerContext {
            shared: Arc::clone(shared),
        })?;
    let topics: Vec<&str> = options.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    shared.register_partitions(&consumer, &options.topics);
    info!(projection = shared.name, group = %options.group_id, ?topics, "projection worker started");
    let run = &options.run;
    let mut last_version_check = Instant::now();
    // The version whose store checkpoint needs no more looking at (see
    // `ReadDb::hand_over_once_caught_up`): a rebuild made before any worker ran leaves one.
    let mut settled: Option<u32> = None;
    // When the partitions were last reported drained (found empty); reset by any record. The
    // report is repeated every second while idle: it only counts while fresh.
    let mut drained_reported: Option<Instant> = None;
    while !shared.cancel.is_cancelled() {
        let timeout = match shared.lock().pending_since {
            Some(since) => run.linger.saturating_sub(since.elapsed()),
            None => Duration::from_millis(100),
        };
        // Nothing more delivered right now: what is in hand is all the broker had for us.
        let mut taken_all = false;
        match consumer.poll(timeout) {
            Some(Ok(message)) => {
                drained_reported = None;
                shared.lock().active_at = Instant::now();
                if let Taken::Gap { topic, partition, from } = shared.take(&message)
                    && let Err(e) = consumer.seek(&topic, partition, Offset::Offset(from), Duration::from_secs(5))
                {
                    warn!(projection = shared.name, error = %e, topic, partition, "seek back failed");
                }
            }
            None if drained_reported.is_none_or(|at| at.elapsed() >= DRAINED_REPORT) && shared.quiet() => {
                taken_all = true;
                drained_reported = shared.report_drained(&consumer).then(Instant::now);
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => taken_all = true,
            Some(Err(e)) => warn!(projection = shared.name, error = %e, "consumer error"),
        }
        // With no linger, a batch is what arrived together (under load, what arrived while the
        // previous batch was applied); with a linger, the first event waits that long for more.
        let due = {
            let state = shared.lock();
            state.pending.len() >= run.batch_size
                || state
                    .pending_since
                    .is_some_and(|s| s.elapsed() >= run.linger && (taken_all || !run.linger.is_zero()))
        };
        if due {
            shared.flush(&consumer);
        }
        if last_version_check.elapsed() >= VERSION_CHECK {
            last_version_check = Instant::now();
            if let Err(cause) = shared.follow_live_version(&consumer) {
                warn!(projection = shared.name, error = %error_chain(&cause), "cannot check the live version");
            }
            let version = shared.lock().version;
            if settled != Some(version) {
                match shared
                    .handle
                    .block_on(shared.db.hand_over_once_caught_up(shared.name, version))
                {
                    Ok(HandOver::NotCaughtUp) => {}
                    Ok(outcome) => {
                        if outcome == HandOver::HandedOver {
                            info!(
                                projection = shared.name,
                                version, "the rebuild caught up; this worker carries the version on"
                            );
                        }
                        settled = Some(version);
                    }
                    Err(cause) => {
                        warn!(projection = shared.name, error = %error_chain(&cause), "cannot hand the store checkpoint over");
                    }
                }
            }
        }
    }
    // Apply what is in hand (one attempt: the token is cancelled, so a failure is not retried
    // and the batch is read again after a restart), then leave the group.
    shared.flush(&consumer);
    consumer.unsubscribe();
    info!(projection = shared.name, "projection worker stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_worker_that_lingers_lets_the_broker_hold_its_fetch_longer() {
        assert_eq!(fetch_wait(Duration::ZERO), FETCH_WAIT);
        assert_eq!(fetch_wait(Duration::from_millis(20)), FETCH_WAIT);
        assert_eq!(fetch_wait(Duration::from_millis(500)), Duration::from_millis(100));
        assert_eq!(fetch_wait(Duration::from_secs(60)), Duration::from_millis(500));
    }
}
