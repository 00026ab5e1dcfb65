//! The store's errors, classified by what a caller should do about them.

use uuid::Uuid;

use crate::ExpectedVersion;

/// Why an append did not happen. Nothing was written in every case.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Optimistic concurrency: someone else appended first. Reload, decide again, retry if the
    /// command allows it; at HTTP this is a 409.
    #[error("stream {stream_id} is at version {actual}, but the append expected {expected}")]
    WrongExpectedVersion {
        stream_id: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// The idempotency key was used before for a different request; at HTTP a 422.
    #[error("idempotency key {key:?} was already used for a different request")]
    IdempotencyKeyReused { key: String },
    /// An event id that the store already holds; a caller bug, at HTTP a 409.
    #[error("event {event_id} is already in the store")]
    DuplicateEvent { event_id: Uuid },
    /// The commit itself is malformed (no events, an over-long name); a caller bug.
    #[error("invalid commit: {0}")]
    Invalid(String),
    /// A well-formed commit this adapter cannot apply with its guarantees (KurrentDB: a commit
    /// over several streams); nothing was appended. At HTTP a 501.
    #[error("this event store cannot apply the commit: {0}")]
    Unsupported(String),
    /// The store could not be reached or failed; retry later (503).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The store failed: infrastructure, not the caller's fault. Log the source, answer 503/500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("event store database error")]
    Database(#[source] sqlx::Error),
    #[error("event store migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("event store is shut down")]
    Closed,
    /// The request is the caller's mistake, not the store's: nothing was written. Only the
    /// log-transfer primitives ([`LogTransfer`](crate::LogTransfer)) answer it, e.g. for an
    /// imported batch that does not continue the store's log. Like [`AppendError::Invalid`], it
    /// is not worth retrying as is.
    #[error("invalid request to the event store: {0}")]
    Invalid(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// An adapter that is not SQL failed (crate `event-store-kurrentdb`): its own error, which
    /// says what it was doing, is the source. Like `Database`: retry later, 503.
    #[error("event store backend error")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e)
    }
}
