//! [`CommandError`]: why a command did not happen, and how each store error becomes one.

use event_store::{AppendError, ExpectedVersion, StoreError};

use crate::domain::DomainError;

/// Why a command did not happen. Nothing was appended in any case.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The domain refused it (invalid input, unknown id, illegal transition): the caller's to fix.
    #[error(transparent)]
    Rejected(#[from] DomainError),
    /// Someone else changed the stream (or `If-Match` was stale): reload and retry.
    #[error("stream {stream_id} is at version {actual}, but the command expected {expected}")]
    Conflict {
        stream_id: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// The idempotency key came before with a different request.
    #[error("idempotency key {key:?} was already used for a different request")]
    IdempotencyKeyReused { key: String },
    /// The event store failed; retry later.
    #[error("the event store is unavailable")]
    Store(#[source] StoreError),
    /// A stored event or snapshot could not be read: a bug or corruption, never the caller's.
    #[error("stored data of {stream_id} could not be read: {reason}")]
    Corrupt { stream_id: String, reason: String },
    /// The event store cannot apply this command's commit (KurrentDB and a commit over several
    /// streams, such as placing an order); nothing was appended.
    #[error("the event store cannot run this command: {0}")]
    Unsupported(String),
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        CommandError::Store(e)
    }
}

impl From<AppendError> for CommandError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::WrongExpectedVersion {
                stream_id,
                expected,
                actual,
            } => CommandError::Conflict {
                stream_id,
                expected,
                actual,
            },
            AppendError::IdempotencyKeyReused { key } => CommandError::IdempotencyKeyReused { key },
            AppendError::DuplicateEvent { event_id } => CommandError::Corrupt {
                stream_id: String::new(),
                reason: format!("event id {event_id} was generated twice"),
            },
            AppendError::Invalid(reason) => CommandError::Corrupt {
                stream_id: String::new(),
                reason,
            },
            AppendError::Unsupported(reason) => CommandError::Unsupported(reason),
            AppendError::Store(e) => CommandError::Store(e),
        }
    }
}
