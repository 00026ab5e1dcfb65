//! [`ProjectedEvent`]: a decoded event with the metadata a projection needs, and [`Origin`], where
//! it was read from (a Kafka partition and offset, or a service's log in its event store).
//!
//! Every service has its own store and its own log, so positions are per service: an event's
//! [`ProjectedEvent::position`] is its position in its service's log, and every source (a
//! store's log, a Kafka topic) belongs to exactly one service ([`source_service`]).

use chrono::{DateTime, Utc};
use event_schemas::{Category, DecodeError, DomainEvent, Envelope, Service};
use event_store::RecordedEvent;
use uuid::Uuid;

/// How the source of events read from a service's store (embedded mode and rebuilds) starts:
/// the source is `store:<service>`, its one "partition" is 0 and its offsets are the positions
/// of that service's log.
pub const STORE_SOURCE: &str = "store";

/// How the source a distributed rebuild's store checkpoint takes starts, once the rebuild has
/// caught up after its switch and Kafka workers carry the version on: `store-rebuild:<service>`,
/// "every event of that service's log up to this position is applied", a floor under the
/// partitions' own progress rather than the one exact answer (see
/// [`crate::applied_position`]). Nothing reads from it.
pub const REBUILT_SOURCE: &str = "store-rebuild";

/// The source of `service`'s store: `store:<service>`.
pub fn store_source(service: Service) -> String {
    format!("{STORE_SOURCE}:{service}")
}

/// The floor a rebuild leaves for `service`: `store-rebuild:<service>`.
pub fn rebuilt_source(service: Service) -> String {
    format!("{REBUILT_SOURCE}:{service}")
}

/// The service whose log a source carries: a store's (`store:<service>`), a rebuild's floor
/// (`store-rebuild:<service>`), or a Kafka topic (whatever its prefix, by the category topic it
/// ends with). `None` for anything else.
pub fn source_service(source: &str) -> Option<Service> {
    if let Some(service) = source
        .strip_prefix(REBUILT_SOURCE)
        .or_else(|| source.strip_prefix(STORE_SOURCE))
        .and_then(|rest| rest.strip_prefix(':'))
    {
        return Service::from_name(service);
    }
    Category::ALL
        .into_iter()
        .find(|category| source.ends_with(category.topic()))
        .map(Service::owning)
}

/// Where an event was read: the unit a checkpoint is kept for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// A Kafka topic, or a service's store ([`store_source`]).
    pub source: String,
    /// The Kafka partition; 0 for a store.
    pub partition: i32,
    /// The Kafka offset; the position in the service's log for a store.
    pub offset: i64,
}

impl Origin {
    /// An event read from `service`'s log at `position`.
    pub fn store(service: Service, position: u64) -> Self {
        Origin {
            source: store_source(service),
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
    /// The event's position in its service's log ([`Self::service`]).
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

    /// The service whose log the event is in: the owner of its stream's category.
    pub fn service(&self) -> Service {
        Service::owning(self.event.category())
    }

    /// Decodes an event read from `service`'s log.
    pub fn from_recorded(event: &RecordedEvent, service: Service) -> Result<Self, DecodeError> {
        Ok(ProjectedEvent {
            event: event_schemas::decode(&event.event_type, event.schema_version, &event.payload)?,
            event_id: event.event_id,
            stream_id: event.stream_id.clone(),
            stream_version: event.stream_version,
            position: event.position,
            occurred_at: event.occurred_at,
            recorded_at: event.recorded_at,
            correlation_id: event.metadata.correlation_id.clone(),
            origin: Origin::store(service, event.position),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_names_its_service() {
        for service in Service::ALL {
            assert_eq!(source_service(&store_source(service)), Some(service));
            assert_eq!(source_service(&rebuilt_source(service)), Some(service));
            for category in service.categories() {
                assert_eq!(source_service(category.topic()), Some(service));
                assert_eq!(source_service(&format!("test_1.{}", category.topic())), Some(service));
            }
        }
        assert_eq!(source_service("store"), None, "the one store of old has no service");
        assert_eq!(source_service("store:shipping"), None);
        assert_eq!(source_service("elsewhere"), None);
    }
}
