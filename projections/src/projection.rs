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

/// An event of a type this build does not know: a service added it before its consumers
/// learned it. It is read and counts toward the checkpoint like any other, and applies as
/// nothing: forward compatibility, not an error (a dead letter would raise an alarm for an
/// event the read model has no use for, and a rebuild with a build that knows it applies it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    pub origin: Origin,
    pub position: u64,
    pub event_type: String,
    pub recorded_at: Option<DateTime<Utc>>,
}

/// Events to apply, dead letters to record and events of unknown types to pass over, in the
/// order they were read.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub events: Vec<ProjectedEvent>,
    pub dead_letters: Vec<DeadLetter>,
    pub unknown: Vec<Unknown>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.dead_letters.is_empty() && self.unknown.is_empty()
    }

    pub fn len(&self) -> usize {
        self.events.len() + self.dead_letters.len() + self.unknown.len()
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
        for unknown in &self.unknown {
            note(&unknown.origin, unknown.position, unknown.recorded_at);
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

    /// Starts a bulk load of this version: the build phase of a rebuild, which a projection may
    /// do much faster than batch by batch (fold the log in memory, stream out the rows that
    /// are final, create indexes after loading). Called *instead of* [`prepare`]
    /// (Projection::prepare) on a version that a rebuild has just registered `building`: nobody
    /// else writes it until the switch, and no checkpoint of it exists yet.
    ///
    /// `None` (the default) when the projection has no bulk path or its tables turn out not to
    /// be empty; the caller then calls [`prepare`](Projection::prepare) and applies batches.
    async fn bulk_load(&self) -> Result<Option<Box<dyn BulkLoad>>, ProjectionError> {
        Ok(None)
    }
}

/// A bulk load in progress (see [`Projection::bulk_load`]). Fed the global log from its start,
/// in position order and in batches, it must leave exactly the rows, checkpoints and dead
/// letters that [`Projection::apply`] of the same batches would have left, once
/// [`finish`](BulkLoad::finish) returns. Dropped without `finish`, it leaves the version's
/// tables unusable (a rebuild then fails and its version is abandoned, as any failed build).
#[async_trait]
pub trait BulkLoad: Send {
    /// Folds the next batch (it may write rows that are final already).
    async fn push(&mut self, batch: &Batch) -> Result<(), ProjectionError>;

    /// Whether the load holds as much in memory as it may: the caller then finishes it and
    /// applies the rest of the log batch by batch.
    fn full(&self) -> bool;

    /// Writes everything still in memory, builds the indexes and stores the checkpoints.
    async fn finish(self: Box<Self>) -> Result<BulkReport, ProjectionError>;
}

/// What a finished bulk load wrote, for logs and benchmarks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BulkReport {
    /// Rows written, all tables together.
    pub rows: u64,
    /// Of the load's time, the part spent after the last batch: writing what was in memory,
    /// building indexes, committing.
    pub finish_seconds: f64,
    /// Orders and customers held in memory at the end.
    pub rows_in_memory: u64,
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
