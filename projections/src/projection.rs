//! The [`Projection`] trait every read model implements, and what the runtime hands it: a
//! [`Batch`] of events and dead letters with the [`Checkpoint`]s they move.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{Origin, ProjectedEvent};

/// How far a projection version has read one source partition. Stored by the projection in the
/// same transaction as the rows the events produced (or, for a sink without transactions, after
/// its idempotent writes), so that it never claims more than is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// A Kafka topic, or [`crate::STORE_SOURCE`].
    pub source: String,
    pub partition: i32,
    /// The last offset applied (or dead-lettered): reading resumes after it.
    pub offset: i64,
    /// The highest global position applied from this partition.
    pub position: u64,
    /// When the store recorded that event (for lag in seconds).
    pub recorded_at: Option<DateTime<Utc>>,
}

/// A message that could not be applied: undecodable, or an event the projection failed on after
/// its retries. It is recorded with the reason, and its offset counts as read, so that one bad
/// message never blocks its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub origin: Origin,
    /// The event's global position, when the envelope could be read; 0 otherwise.
    pub position: u64,
    /// The event type, when the envelope could be read; empty otherwise.
    pub event_type: String,
    pub reason: String,
    /// The message as received (the encoded envelope).
    pub payload: Vec<u8>,
}

/// Events to apply and dead letters to record, in the order they were read.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub events: Vec<ProjectedEvent>,
    pub dead_letters: Vec<DeadLetter>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.dead_letters.is_empty()
    }

    pub fn len(&self) -> usize {
        self.events.len() + self.dead_letters.len()
    }

    /// The checkpoint of every source partition the batch touches: its highest offset and
    /// position. Store these with the batch's effects.
    pub fn checkpoints<'a>(&'a self) -> Vec<Checkpoint> {
        let mut by_partition: BTreeMap<(&str, i32), Checkpoint> = BTreeMap::new();
        let mut note = |origin: &'a Origin, position: u64, recorded_at: Option<DateTime<Utc>>| {
            let entry = by_partition
                .entry((origin.source.as_str(), origin.partition))
                .or_insert_with(|| Checkpoint {
                    source: origin.source.clone(),
                    partition: origin.partition,
                    offset: origin.offset,
                    position,
                    recorded_at,
                });
            if origin.offset >= entry.offset {
                entry.offset = origin.offset;
            }
            if position >= entry.position {
                entry.position = position;
                entry.recorded_at = recorded_at.or(entry.recorded_at);
            }
        };
        for event in &self.events {
            note(&event.origin, event.position, Some(event.recorded_at));
        }
        for letter in &self.dead_letters {
            note(&letter.origin, letter.position, None);
        }
        by_partition.into_values().collect()
    }
}

/// A read model: a named, versioned piece of code with its own tables.
///
/// Contract with the runtime, which delivers every event at least once and in stream order:
/// - [`apply`](Projection::apply) makes the batch's effects and stores [`Batch::checkpoints`]
///   (and the dead letters) so that a crash at any point and a replay from the stored
///   checkpoints leave the tables as if every event had been applied exactly once. A projection
///   on a transactional sink writes rows and checkpoints in one transaction and guards each row
///   by stream version; one on ClickHouse writes rows idempotently, keyed by event identity.
/// - Events of different streams may arrive in any interleaving (they come from different
///   partitions); the result must not depend on it.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Stable name, part of the stored data (table names, checkpoints): never rename it.
    fn name(&self) -> &'static str;

    /// The version of the tables this instance reads and writes.
    fn version(&self) -> u32;

    /// Creates this version's tables if they are missing.
    async fn prepare(&self) -> Result<(), ProjectionError>;

    /// Drops this version's tables (a rebuilt version replaced it).
    async fn drop_version(&self) -> Result<(), ProjectionError>;

    /// The checkpoints stored for this version.
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, ProjectionError>;

    /// Applies the batch and stores its checkpoints and dead letters (see the trait's contract).
    async fn apply(&self, batch: &Batch) -> Result<(), ProjectionError>;

    /// Whether the sink answers at all: tells a poison event (fails alone while the sink is up)
    /// from an outage (everything fails), so that an outage never fills the dead-letter table.
    async fn healthy(&self) -> bool;
}

/// What can go wrong in a projection. Every variant is worth a retry: the runtime retries with
/// backoff, and dead-letters an event only when it fails alone while [`Projection::healthy`].
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The SQL read database failed or refused a statement.
    #[error("read database")]
    Database(#[from] sqlx::Error),
    /// ClickHouse failed or refused a statement.
    #[error("ClickHouse")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// The event store failed (rebuilds read from it).
    #[error("event store")]
    Store(#[from] event_store::StoreError),
    /// Kafka failed.
    #[error("Kafka")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The stored data breaks an assumption of the code (a bug or a hand edit).
    #[error("inconsistent stored data: {0}")]
    Inconsistent(String),
    /// An argument was invalid (an unknown projection name, a version that does not exist, ...).
    #[error("{0}")]
    Invalid(String),
}
