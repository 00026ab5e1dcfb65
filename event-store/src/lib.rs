//! orderflow's event store: append-only streams with optimistic concurrency, idempotent commits,
//! and a global log that tailing readers can follow without ever skipping an event.
//!
//! - [`EventStore`] (`store`): the contract, one trait for every adapter.
//! - [`PgEventStore`] (`postgres`): PostgreSQL, the distributed deployment's store.
//! - [`SqliteEventStore`] (`sqlite`): one SQLite file, the embedded default.
//! - The KurrentDB adapter is not here: it is the separate crate `event-store-kurrentdb`, outside
//!   the workspace, on this crate's trait and types (ADR 0006).
//! - [`Subscription`] (`subscription`): catch up on the global log, then follow it live.
//! - [`LogTransfer`] (`transfer`): copying a log between stores with its positions, versions,
//!   ids, times and idempotency records kept (PostgreSQL and SQLite; not part of `EventStore`).
//! - [`PgLease`] (`lease`): one leader among processes sharing a PostgreSQL store (the relay).
//! - `group_commit` and `plan`: how concurrent commits share one transaction while each keeps its
//!   own optimistic check and its own answer. Both adapters use them.
//!
//! The store is domain-agnostic: payloads are opaque bytes tagged with an event type and a schema
//! version, which `event-schemas` knows how to decode. The write side owns the store's tables;
//! projections read the global log only through this API (for rebuilds).
//!
//! Guarantees (each proven against both adapters by `tests/contract.rs`):
//! 1. A commit is atomic across its streams. A stale expected version appends nothing and the
//!    error names the stream's actual version.
//! 2. A repeated idempotency key appends nothing and answers the first commit's result; the same
//!    key with a different request hash is refused.
//! 3. Positions become visible in commit order: a reader that has seen position p will never
//!    later find a new event below p (holes from rolled-back transactions stay holes).
//! 4. `recorded_at` does not decrease along the global log, so "as of time T" is a prefix.

mod error;
mod group_commit;
mod lease;
mod model;
mod plan;
mod postgres;
mod sqlite;
mod store;
mod subscription;
mod transfer;

pub use error::{AppendError, StoreError};
pub use lease::PgLease;
pub use model::{
    AppendResult, Commit, Committed, EventMetadata, ExpectedVersion, IdempotencyKey, IdempotentResult, NewEvent,
    Position, RecordedEvent, Snapshot, StreamAppend, Until,
};
pub use postgres::{APPEND_LOCK, NOTIFY_CHANNEL, PgEventStore, WRITER_APPLICATION_NAME};
pub use sqlite::SqliteEventStore;
pub use store::EventStore;
pub use subscription::Subscription;
pub use transfer::{IdempotencyRecord, LogTransfer};

/// Checks what every adapter checks before it writes anything: at least one append, no empty
/// append, and stream ids, event types and the idempotency key within their lengths. Public for
/// adapters outside this crate (`event-store-kurrentdb`), so that they refuse exactly what these
/// refuse.
pub fn validate_commit(commit: &Commit) -> Result<(), AppendError> {
    plan::validate(commit)
}

/// Tuning for an adapter's writer.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Most commits one transaction carries.
    pub max_batch_commits: usize,
    /// Most events one transaction carries (a single larger commit still goes alone).
    pub max_batch_events: usize,
    /// PostgreSQL: the longest the writer waits for `BEGIN` and the append lock on its kept
    /// connection before it opens a new one and begins again there.
    pub begin_timeout: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_batch_commits: 256,
            max_batch_events: 8192,
            begin_timeout: std::time::Duration::from_secs(10),
        }
    }
}
