//! The relay: the event store is the outbox, and this publishes its global log to Kafka.
//!
//! One relay publishes at a time: it holds the store's `kafka-relay` lease ([`PgLease`]) and
//! a second relay waits and takes over within seconds when the first dies. The holder
//! 1. creates the topics it needs (one per aggregate category, [`Category::topic`]);
//! 2. tails the global log from its checkpoint (gap-safe, see `event-store`);
//! 3. publishes each event to its category's topic, key = stream id (so a stream's events stay
//!    in order on one partition), value = the encoded [`Envelope`], headers = event type,
//!    schema version, global position and correlation id, through an idempotent producer;
//! 4. moves the checkpoint (in the store's database) only after the broker acknowledged every
//!    event up to it; that save runs beside the next round, one at a time, and the last one is
//!    awaited before the relay stops or retries.
//!
//! Delivery guarantee: at least once, in stream order per key. A crash between the broker's
//! acknowledgement and the checkpoint republishes events; consumers dedupe by position. A batch
//! whose delivery fails is retried from the checkpoint with backoff, and the relay reports
//! itself unready meanwhile. At most `batch_size` events are in flight, so a broker outage
//! never grows memory. A delivery that fails also retires the producer and the retry starts
//! with a new one: an idempotent producer whose records time out can be fenced by the broker
//! when it asks for a new epoch, and librdkafka then refuses every record of that producer for
//! good (a fatal error), so the relay would otherwise never publish again.
//!
//! # Map
//!
//! - [`run`]: the relay over a PostgreSQL store, until shutdown; [`RelayStatus`] is what it
//!   reports (leader, ready, checkpoint) for a process's `/ready`.
//! - [`cli`]: the flags of `relay` (this crate's binary) and `orderflow relay`, and
//!   [`cli::run`], which opens the store from them and runs the relay.
//!
//! The write side's binary runs it in its process by default; it uses nothing of the write side.

pub mod cli;

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_schemas::{Category, Envelope};
use event_store::{EventStore, PgEventStore, PgLease, Position, RecordedEvent, StoreError, Subscription};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The lease and checkpoint name. Stored data: never rename.
pub const RELAY_NAME: &str = "kafka-relay";

/// Kafka record header names. Part of the contract with consumers: never rename.
pub mod headers {
    pub const EVENT_TYPE: &str = "event_type";
    pub const SCHEMA_VERSION: &str = "schema_version";
    pub const POSITION: &str = "position";
    pub const CORRELATION_ID: &str = "correlation_id";
}

/// How the relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Put before every topic name (empty in production; tests use it to get topics of their own).
    pub topic_prefix: String,
    /// Partitions of each topic the relay creates.
    pub partitions: i32,
    /// Replication factor of each topic the relay creates.
    pub replication_factor: i32,
    /// Events read and in flight per round.
    pub batch_size: usize,
    /// `compression.type` (none, gzip, snappy, lz4, zstd).
    pub compression: String,
    /// After this long without the broker's acknowledgement the relay reports itself unready.
    pub unready_after: Duration,
    /// How long librdkafka retries a record before it gives the record up
    /// (`message.timeout.ms`); the relay then retries the batch from its checkpoint.
    pub delivery_timeout: Duration,
    /// Longest wait between retries after a failure.
    pub max_backoff: Duration,
    /// How often a waiting relay tries to take the lease.
    pub lease_retry: Duration,
}

impl RelayConfig {
    /// The topic a category's events go to.
    pub fn topic(&self, category: Category) -> String {
        format!("{}{}", self.topic_prefix, category.topic())
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            partitions: 4,
            replication_factor: 1,
            batch_size: 5000,
            compression: "lz4".into(),
            unready_after: Duration::from_secs(5),
            delivery_timeout: Duration::from_secs(60),
            max_backoff: Duration::from_secs(10),
            lease_retry: Duration::from_secs(1),
        }
    }
}

/// What the relay reports about itself (for `/ready` and `/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStatus {
    /// Holds the lease and the broker acknowledges in time.
    pub ready: bool,
    /// This process holds the lease.
    pub leader: bool,
    /// Last position the broker acknowledged.
    pub checkpoint: Position,
    /// Last failure, if the relay is retrying.
    pub last_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the event store failed")]
    Store(#[from] StoreError),
    #[error("Kafka failed")]
    Kafka(#[from] KafkaError),
    #[error("the relay lost its lease (its database connection)")]
    LostLease,
    #[error("the task storing the relay's checkpoint failed")]
    CheckpointTask(#[source] tokio::task::JoinError),
    #[error("event {position} of stream {stream_id} has no known aggregate category")]
    UnknownCategory { position: Position, stream_id: String },
}

/// Runs the relay until `shutdown`: waits for the lease, publishes, and on the way out flushes
/// what is in flight and stores the checkpoint.
pub async fn run(
    store: PgEventStore,
    config: RelayConfig,
    status: watch::Sender<RelayStatus>,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    let mut producer = producer(&config)?;
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        // Taking the lease needs the database: while it refuses connections, that fails like a
        // publish does, and is retried the same way (the relay must outlive an outage).
        let lease = tokio::select! {
            () = shutdown.cancelled() => break,
            lease = store.lease(RELAY_NAME, config.lease_retry) => lease.map_err(RelayError::from),
        };
        let published = match lease {
            Ok(lease) => {
                tracing::info!("relay holds the lease; publishing");
                status.send_modify(|s| s.leader = true);
                publish(&store, &producer, lease, &config, &status, &shutdown).await
            }
            Err(e) => Err(e),
        };
        match published {
            Ok(()) => break,
            Err(e @ RelayError::UnknownCategory { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), backoff_ms = backoff.as_millis() as u64,
                    "relay failed; retrying from its checkpoint");
                metrics::counter!("orderflow_relay_errors_total").increment(1);
                status.send_modify(|s| {
                    s.ready = false;
                    s.leader = false;
                    s.last_error = Some(e.to_string());
                });
                if let RelayError::Kafka(_) = e {
                    producer = renew(producer, &config)?;
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(config.max_backoff);
            }
        }
    }
    // A batch is always awaited whole before shutdown is looked at, so this only drains what
    // librdkafka itself still holds (nothing, normally).
    if let Err(e) = producer.flush(Duration::from_secs(10)) {
        tracing::warn!(error = %e, "could not flush the producer on shutdown");
    }
    status.send_modify(|s| {
        s.ready = false;
        s.leader = false;
    });
    Ok(())
}

fn producer(config: &RelayConfig) -> Result<FutureProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", "orderflow-relay")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", &config.compression)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        // Deliveries are retried by librdkafka for this long; the relay keeps the batch and its
        // checkpoint, so a longer outage is retried from the checkpoint.
        .set("message.timeout.ms", config.delivery_timeout.as_millis().to_string())
        .create()
}

/// A new producer in place of one whose delivery failed. What the old one still holds is
/// dropped rather than sent: the retry publishes it again from the checkpoint, and late
/// deliveries of the old producer would only add duplicates out of order.
fn renew(old: FutureProducer, config: &RelayConfig) -> Result<FutureProducer, KafkaError> {
    if let Some((code, reason)) = old.client().fatal_error() {
        tracing::warn!(?code, reason, "the producer failed for good; starting a new one");
        metrics::counter!("orderflow_relay_producer_fatal_errors_total").increment(1);
    }
    old.purge(PurgeConfig::default().queue().inflight());
    // Dropping a producer flushes and joins its polling thread: not on the async workers.
    tokio::task::spawn_blocking(move || drop(old));
    producer(config)
}

/// Creates each category's topic when missing (one request per topic) and waits until the
/// broker's metadata shows its partitions with leaders: producing before that fails with
/// "unknown topic" and librdkafka then caches the topic as unknown.
async fn create_topics(config: &RelayConfig) -> Result<(), RelayError> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &config.brokers).create()?;
    let admin = Arc::new(admin);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for category in Category::ALL {
        let name = config.topic(category);
        let topic = NewTopic::new(
            &name,
            config.partitions,
            TopicReplication::Fixed(config.replication_factor),
        );
        for result in admin.create_topics([&topic], &options).await? {
            match result {
                Ok(topic) => tracing::info!(topic, partitions = config.partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    tracing::warn!(topic, ?code, "could not create topic");
                    return Err(KafkaError::AdminOp(code).into());
                }
            }
        }
        let admin = admin.clone();
        tokio::task::spawn_blocking(move || wait_for_leaders(&admin, &name))
            .await
            .map_err(|_| KafkaError::Canceled)??;
    }
    Ok(())
}

fn wait_for_leaders(admin: &AdminClient<DefaultClientContext>, topic: &str) -> Result<(), KafkaError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metadata = admin.inner().fetch_metadata(Some(topic), Duration::from_secs(5))?;
        let ready = metadata.topics().iter().any(|t| {
            t.name() == topic
                && t.error().is_none()
                && !t.partitions().is_empty()
                && t.partitions().iter().all(|p| p.leader() >= 0)
        });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(KafkaError::MetadataFetch(RDKafkaErrorCode::LeaderNotAvailable));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn publish(
    store: &PgEventStore,
    producer: &FutureProducer,
    mut lease: PgLease,
    config: &RelayConfig,
    status: &watch::Sender<RelayStatus>,
    shutdown: &CancellationToken,
) -> Result<(), RelayError> {
    create_topics(config).await?;
    let checkpoint = store.load_checkpoint(RELAY_NAME).await?;
    // The broker answered topic creation and metadata: ready, even with nothing to publish yet.
    status.send_modify(|s| {
        s.checkpoint = checkpoint;
        s.ready = true;
        s.last_error = None;
    });
    let store_dyn: Arc<dyn EventStore> = Arc::new(store.clone());
    let mut log = Subscription::new(store_dyn, checkpoint).batch_size(config.batch_size);
    // The checkpoint of a round is stored beside the next round, not before it: a round no
    // longer waits for that commit (p90 6 ms, p99 16 ms of a ~20 ms round on a loaded machine,
    // BENCHMARKS.md). One save at a time and in order; the store only ever moves a checkpoint
    // forward; a failed save ends the rounds as soon as it fails (the wait for the next batch
    // watches it too); and whatever ends them, the last save is awaited, so a relay that takes
    // over starts from it.
    let mut saves = CheckpointSaves::default();
    let rounds = async {
        loop {
            let batch = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                // A save that fails ends the rounds at once, also while the log is idle.
                failed = saves.failed() => return Err(failed),
                batch = log.next_batch() => batch?,
            };
            if !lease.check(Duration::from_secs(5)).await {
                return Err(RelayError::LostLease);
            }
            let sent = Instant::now();
            let last = deliver(producer, &batch, config, status).await?;
            let acknowledged_ms = sent.elapsed().as_secs_f64() * 1e3;
            // How long after it was recorded the batch's oldest event was acknowledged: the relay's
            // part of a read model's freshness (the workers' "batch applied" has the rest).
            let behind_ms = batch.first().map_or(0.0, |oldest| {
                (chrono::Utc::now() - oldest.recorded_at)
                    .num_microseconds()
                    .unwrap_or(i64::MAX)
                    .max(0) as f64
                    / 1e3
            });
            saves.save(store, last).await?;
            // The store's change signal already carries the head (own commits and NOTIFY): no query.
            let lag = store.changes().borrow().saturating_sub(last);
            metrics::counter!("orderflow_relay_published_total").increment(batch.len() as u64);
            metrics::gauge!("orderflow_relay_checkpoint").set(last as f64);
            metrics::gauge!("orderflow_relay_lag_events").set(lag as f64);
            status.send_modify(|s| {
                s.ready = true;
                s.checkpoint = last;
                s.last_error = None;
            });
            tracing::debug!(
                events = batch.len(),
                checkpoint = last,
                lag,
                acknowledged_ms,
                behind_ms,
                "published"
            );
        }
    }
    .await;
    match (rounds, saves.finish().await) {
        (Err(e), Err(save)) => {
            tracing::warn!(error = %save, "the relay's last checkpoint was not stored");
            Err(e)
        }
        (rounds, last_saved) => rounds.and(last_saved),
    }
}

/// The relay's checkpoint saves: one at a time and in order, each running beside the round
/// after the one it stores.
#[derive(Default)]
struct CheckpointSaves(Option<tokio::task::JoinHandle<Result<(), StoreError>>>);

impl CheckpointSaves {
    /// Starts storing `position`, once the save before it has finished (its failure is the
    /// answer then, and nothing is started).
    async fn save(&mut self, store: &PgEventStore, position: Position) -> Result<(), RelayError> {
        self.finish().await?;
        let store = store.clone();
        self.0 = Some(tokio::spawn(async move {
            store.save_checkpoint(RELAY_NAME, position).await
        }));
        Ok(())
    }

    /// The outcome of the save in flight once it has finished; Ok at once when none is.
    async fn finish(&mut self) -> Result<(), RelayError> {
        let Some(handle) = self.0.as_mut() else {
            return Ok(());
        };
        let outcome = handle.await;
        self.0 = None;
        outcome.map_err(RelayError::CheckpointTask)?.map_err(RelayError::from)
    }

    /// The failure of the save in flight; never answers if it succeeds or none runs (for
    /// `select!`: cancelling it leaves the save in flight).
    async fn failed(&mut self) -> RelayError {
        match self.finish().await {
            Err(e) => e,
            Ok(()) => std::future::pending().await,
        }
    }
}

/// Publishes a batch and waits until the broker acknowledged all of it; answers the last
/// position. Order per key holds because the producer is idempotent (retries keep order).
async fn deliver(
    producer: &FutureProducer,
    batch: &[RecordedEvent],
    config: &RelayConfig,
    status: &watch::Sender<RelayStatus>,
) -> Result<Position, RelayError> {
    let started = Instant::now();
    let mut pending = Vec::with_capacity(batch.len());
    for event in batch {
        let topic = config.topic(category_of(event)?);
        let value = envelope(event).encode_to_vec();
        let position = event.position.to_string();
        let schema_version = event.schema_version.to_string();
        let record_headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: headers::EVENT_TYPE,
                value: Some(&event.event_type),
            })
            .insert(Header {
                key: headers::SCHEMA_VERSION,
                value: Some(&schema_version),
            })
            .insert(Header {
                key: headers::POSITION,
                value: Some(&position),
            })
            .insert(Header {
                key: headers::CORRELATION_ID,
                value: Some(&event.metadata.correlation_id),
            });
        let mut record = FutureRecord::to(&topic)
            .key(&event.stream_id)
            .payload(&value)
            .headers(record_headers);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                    tokio::task::yield_now().await;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    let mut warned = false;
    for delivery in pending {
        tokio::pin!(delivery);
        let remaining = config.unready_after.saturating_sub(started.elapsed());
        let outcome = match tokio::time::timeout(remaining, &mut delivery).await {
            Ok(outcome) => outcome,
            Err(_) => {
                // The broker is slow or gone: say so, and keep waiting for librdkafka, which
                // retries until message.timeout.ms. Nothing more is read meanwhile.
                if !warned {
                    tracing::warn!(after = ?config.unready_after, "the broker has not acknowledged; waiting");
                    status.send_modify(|s| {
                        s.ready = false;
                        s.last_error = Some("the broker has not acknowledged in time".into());
                    });
                    warned = true;
                }
                delivery.await
            }
        };
        match outcome {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e.into()),
            Err(_canceled) => return Err(KafkaError::Canceled.into()),
        }
    }
    Ok(batch.last().map_or(0, |e| e.position))
}

fn category_of(event: &RecordedEvent) -> Result<Category, RelayError> {
    event
        .stream_id
        .split_once('-')
        .and_then(|(category, _)| Category::from_name(category))
        .ok_or_else(|| RelayError::UnknownCategory {
            position: event.position,
            stream_id: event.stream_id.clone(),
        })
}

/// The envelope of a stored event: what every consumer receives.
pub fn envelope(event: &RecordedEvent) -> Envelope {
    Envelope {
        event_id: event.event_id,
        stream_id: event.stream_id.clone(),
        stream_version: event.stream_version,
        global_position: event.position,
        event_type: event.event_type.clone(),
        schema_version: event.schema_version,
        occurred_at: event.occurred_at,
        recorded_at: event.recorded_at,
        correlation_id: event.metadata.correlation_id.clone(),
        causation_id: event.metadata.causation_id.clone(),
        actor: event.metadata.actor.clone(),
        payload: event.payload.clone(),
    }
}
