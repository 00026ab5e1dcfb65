//! The values that cross the store's API.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A position in the global log. Positions grow with commit order, start at 1 and may have holes
/// (a rolled-back transaction leaves one), which a reader skips safely: no later commit fills
/// a hole below a position that is already visible. `0` means "before the first event".
pub type Position = u64;

/// What the writer believes the stream's version to be. The version of a stream is the number
/// of events in it; its first event has version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version is.
    Any,
    /// The stream must not exist yet (version 0).
    NoStream,
    /// The stream must be exactly at this version (`Exact(0)` is the same as `NoStream`).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` satisfies this expectation.
    pub fn matches(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// An event to append. The store treats the payload as opaque bytes: `event_type` and
/// `schema_version` tell a reader (see `event-schemas`) how to decode it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Unique across the store; appending an id twice is rejected.
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Vec<u8>,
    /// When the fact happened according to the writer (the command's time).
    pub occurred_at: DateTime<Utc>,
    pub metadata: EventMetadata,
}

/// Who and what caused an event; it travels from the HTTP edge into the envelope on Kafka.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Shared by every event that one user action caused, across services.
    pub correlation_id: String,
    /// The id of the command or event that directly caused this one.
    pub causation_id: String,
    /// The authenticated principal that issued the command, if any.
    pub actor: String,
}

/// An event as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub position: Position,
    pub stream_id: String,
    /// 1 for the stream's first event.
    pub stream_version: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Vec<u8>,
    pub occurred_at: DateTime<Utc>,
    /// When the store committed it. Non-decreasing in position order.
    pub recorded_at: DateTime<Utc>,
    pub metadata: EventMetadata,
}

/// Events for one stream inside a [`Commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppend {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// One atomic write: every append in it is applied or none is. Several streams in one commit
/// is how a command changes several aggregates at once (an order and its products' stock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub appends: Vec<StreamAppend>,
    /// Recorded in the same transaction as the events: a repeat of the key appends nothing and
    /// answers with the first commit's result.
    pub idempotency: Option<IdempotencyKey>,
}

impl Commit {
    /// A commit of one stream append without an idempotency key.
    pub fn single(stream_id: impl Into<String>, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Commit {
            appends: vec![StreamAppend {
                stream_id: stream_id.into(),
                expected,
                events,
            }],
            idempotency: None,
        }
    }

    /// This commit, guarded by an idempotency key.
    pub fn with_idempotency(mut self, key: impl Into<String>, request_hash: Vec<u8>) -> Self {
        self.idempotency = Some(IdempotencyKey {
            key: key.into(),
            request_hash,
        });
        self
    }

    pub(crate) fn event_count(&self) -> usize {
        self.appends.iter().map(|a| a.events.len()).sum()
    }
}

/// A client-chosen key that makes a commit safe to retry, and a hash of the request it was used
/// for (a repeat of the key with another request is an error, not a replay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: Vec<u8>,
}

/// What one stream append did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    pub stream_id: String,
    /// The stream's version after the append.
    pub version: u64,
    /// Global positions of the appended events, in order.
    pub positions: Vec<Position>,
    /// When the store committed them.
    pub recorded_at: DateTime<Utc>,
}

/// The answer to a [`Commit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// One per append, in the commit's order.
    pub appends: Vec<AppendResult>,
    /// True when the idempotency key had been seen: nothing was appended and `appends` is the
    /// first commit's result.
    pub replayed: bool,
}

impl Committed {
    /// The highest position this commit wrote: the consistency token for read-your-writes.
    pub fn last_position(&self) -> Position {
        self.appends
            .iter()
            .flat_map(|a| a.positions.last().copied())
            .max()
            .unwrap_or(0)
    }
}

/// Where a temporal read of a stream stops (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Events at or below this global position.
    Position(Position),
    /// Events recorded at or before this time.
    RecordedAt(DateTime<Utc>),
}

/// An aggregate's state folded up to a version, stored beside the events to shorten loads.
/// Snapshots are a cache: deleting every one of them changes no answer, only the time it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub stream_id: String,
    /// The stream version the state includes (the version of its last event).
    pub version: u64,
    /// The global position of that last event.
    pub position: Position,
    /// When that last event was recorded: "as of" reads by time pick snapshots with it.
    pub recorded_at: DateTime<Utc>,
    /// What the state is (e.g. `order`) and its encoding's version: a reader ignores a snapshot
    /// whose type or version it does not know and folds from the events instead.
    pub state_type: String,
    pub state_version: u32,
    pub state: Vec<u8>,
}

/// What the store holds for an idempotency key: the hash of the request that used it first and
/// that commit's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentResult {
    pub request_hash: Vec<u8>,
    pub appends: Vec<AppendResult>,
}
