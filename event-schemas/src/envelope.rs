//! [`Envelope`]: an event's payload with its metadata, as the store hands it out and as Kafka
//! carries it.

use chrono::{DateTime, Utc};
use prost::Message;
use uuid::Uuid;

use crate::convert::{date_time, id, timestamp, uuid};
use crate::{DecodeError, DomainEvent, decode, proto};

/// A stored event with its metadata.
///
/// Times have microsecond precision (what PostgreSQL's `timestamptz` keeps): encoding drops any
/// finer digits, so build envelopes from times truncated to microseconds (e.g. with
/// `chrono::SubsecRound::trunc_subsecs(6)`) if you compare them after a round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique id of this event.
    pub event_id: Uuid,
    /// The aggregate's stream, `{category}-{uuid}`.
    pub stream_id: String,
    /// Position of the event in its stream, from 1.
    pub stream_version: u64,
    /// Position of the event in the store's global log, from 1.
    pub global_position: u64,
    /// Stable type name: says how to read `payload`.
    pub event_type: String,
    /// Schema version of `payload`.
    pub schema_version: u32,
    /// When the command that caused the event was handled.
    pub occurred_at: DateTime<Utc>,
    /// When the event store committed the event.
    pub recorded_at: DateTime<Utc>,
    /// Shared by every event caused by one request, end to end.
    pub correlation_id: String,
    /// The message (command or event) that directly caused this one.
    pub causation_id: String,
    /// The authenticated principal whose command caused the event; empty when none.
    pub actor: String,
    /// The encoded category message, byte for byte as stored.
    pub payload: Vec<u8>,
}

impl Envelope {
    /// The protobuf encoding: the value of a Kafka record.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        proto::Envelope::from(self).encode_to_vec()
    }

    /// Reads an envelope. The payload is kept as bytes: [`event`](Self::event) decodes it.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let message = proto::Envelope::decode(bytes).map_err(|source| DecodeError::Protobuf {
            message: "Envelope",
            source,
        })?;
        Self::try_from(message)
    }

    /// The event in the payload, upcast to the current schema version.
    pub fn event(&self) -> Result<DomainEvent, DecodeError> {
        decode(&self.event_type, self.schema_version, &self.payload)
    }
}

impl From<&Envelope> for proto::Envelope {
    fn from(envelope: &Envelope) -> Self {
        Self {
            event_id: id(envelope.event_id),
            stream_id: envelope.stream_id.clone(),
            stream_version: envelope.stream_version,
            global_position: envelope.global_position,
            event_type: envelope.event_type.clone(),
            schema_version: envelope.schema_version,
            occurred_at: Some(timestamp(envelope.occurred_at)),
            recorded_at: Some(timestamp(envelope.recorded_at)),
            correlation_id: envelope.correlation_id.clone(),
            causation_id: envelope.causation_id.clone(),
            actor: envelope.actor.clone(),
            payload: envelope.payload.clone(),
        }
    }
}

impl From<Envelope> for proto::Envelope {
    fn from(envelope: Envelope) -> Self {
        Self {
            event_id: id(envelope.event_id),
            stream_id: envelope.stream_id,
            stream_version: envelope.stream_version,
            global_position: envelope.global_position,
            event_type: envelope.event_type,
            schema_version: envelope.schema_version,
            occurred_at: Some(timestamp(envelope.occurred_at)),
            recorded_at: Some(timestamp(envelope.recorded_at)),
            correlation_id: envelope.correlation_id,
            causation_id: envelope.causation_id,
            actor: envelope.actor,
            payload: envelope.payload,
        }
    }
}

impl TryFrom<proto::Envelope> for Envelope {
    type Error = DecodeError;

    fn try_from(message: proto::Envelope) -> Result<Self, Self::Error> {
        Ok(Self {
            event_id: uuid("Envelope.event_id", &message.event_id)?,
            stream_id: message.stream_id,
            stream_version: message.stream_version,
            global_position: message.global_position,
            event_type: message.event_type,
            schema_version: message.schema_version,
            occurred_at: date_time("Envelope.occurred_at", message.occurred_at)?,
            recorded_at: date_time("Envelope.recorded_at", message.recorded_at)?,
            correlation_id: message.correlation_id,
            causation_id: message.causation_id,
            actor: message.actor,
            payload: message.payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_microseconds_and_drop_nanoseconds() {
        let time = DateTime::from_timestamp(1_700_000_000, 123_456_789).expect("valid time");
        let stored = timestamp(time);
        assert_eq!(stored.nanos, 123_456_000);
        let back = date_time("t", Some(stored)).expect("valid timestamp");
        assert_eq!(back.timestamp_subsec_nanos(), 123_456_000);
    }

    #[test]
    fn rejects_out_of_range_timestamps() {
        for (seconds, nanos) in [(0, -1), (0, 1_000_000_000), (i64::MAX, 0)] {
            let value = prost_types::Timestamp { seconds, nanos };
            assert!(matches!(
                date_time("t", Some(value)),
                Err(DecodeError::InvalidTimestamp { field: "t" })
            ));
        }
        assert!(matches!(
            date_time("t", None),
            Err(DecodeError::MissingField { field: "t" })
        ));
    }
}
