//! [`ProjectedEvent`]: a decoded event with the metadata a projection needs, and [`Origin`], where
//! it was read from (a Kafka partition and offset, or the store's global log).

use chrono::{DateTime, Utc};
use event_schemas::{DecodeError, DomainEvent, Envelope};
use event_store::RecordedEvent;
use uuid::Uuid;

/// The source name of events read from the store's global log (embedded mode and rebuilds). Its
/// one "partition" is 0 and its offsets are global positions.
pub const STORE_SOURCE: &str = "store";

/// The source name a distributed rebuild's [`STORE_SOURCE`] checkpoint takes once the rebuild
/// has caught up after its switch and Kafka workers carry the version on: "every event up to
/// this position is applied", a floor under the partitions' own progress rather than the one
/// exact answer (see [`crate::applied_position`]). Nothing reads from it.
pub const REBUILT_SOURCE: &str = "store-rebuild";

/// Where an event was read: the unit a checkpoint is kept for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// A Kafka topic, or [`STORE_SOURCE`].
    pub source: String,
    /// The Kafka partition; 0 for the store.
    pub partition: i32,
    /// The Kafka offset; the global position for the store.
    pub offset: i64,
}

impl Origin {
    /// An event read from the store's global log at `position`.
    pub fn store(position: u64) -> Self {
        Origin {
            source: STORE_SOURCE.to_owned(),
            partition: 0,
            offset: i64::try_from(position).unwrap_or(i64::MAX),
        }
    }
}

/// One event as a projection applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectedEvent {
    pub event_id: Uuid,
    /// `{category}-{uuid}`.
    pub stream_id: String,
    /// The event's version in its stream, from 1: the per-row guard against applying twice.
    pub stream_version: u64,
    /// The event's position in the store's global log.
    pub position: u64,
    pub occurred_at: DateTime<Utc>,
    /// When the store committed it: the time axis of "as of" queries.
    pub recorded_at: DateTime<Utc>,
    pub correlation_id: String,
    /// The event, upcast to the current schema version.
    pub event: DomainEvent,
    /// Where the runtime read it.
    pub origin: Origin,
}

impl ProjectedEvent {
    /// Decodes a Kafka record's envelope. The error is what a dead letter records.
    pub fn from_envelope(envelope: &Envelope, origin: Origin) -> Result<Self, DecodeError> {
        Ok(ProjectedEvent {
            event: envelope.event()?,
            event_id: envelope.event_id,
            stream_id: envelope.stream_id.clone(),
            stream_version: envelope.stream_version,
            position: envelope.global_position,
            occurred_at: envelope.occurred_at,
            recorded_at: envelope.recorded_at,
            correlation_id: envelope.correlation_id.clone(),
            origin,
        })
    }

    /// Decodes an event read from the store's global log.
    pub fn from_recorded(event: &RecordedEvent) -> Result<Self, DecodeError> {
        Ok(ProjectedEvent {
            event: event_schemas::decode(&event.event_type, event.schema_version, &event.payload)?,
            event_id: event.event_id,
            stream_id: event.stream_id.clone(),
            stream_version: event.stream_version,
            position: event.position,
            occurred_at: event.occurred_at,
            recorded_at: event.recorded_at,
            correlation_id: event.metadata.correlation_id.clone(),
            origin: Origin::store(event.position),
        })
    }
}
