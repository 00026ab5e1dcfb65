//! The contract every adapter fulfils.

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{
    AppendError, Commit, Committed, ExpectedVersion, IdempotentResult, NewEvent, Position, RecordedEvent, Snapshot,
    StoreError, Until,
};

/// An append-only event store with optimistic concurrency and a gap-safe global log.
///
/// Guarantees every adapter gives, proven by the contract suite in `tests/contract.rs`:
/// - a commit is atomic across its streams; an append whose expected version is stale appends
///   nothing and reports the actual version;
/// - a commit that repeats an idempotency key appends nothing and answers the first result;
/// - positions grow in commit order, so a reader of [`read_all`](EventStore::read_all) that
///   moves past a position never misses an event committed later below it;
/// - `recorded_at` does not decrease in position order.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Applies a commit atomically (see [`Commit`]).
    async fn commit(&self, commit: Commit) -> Result<Committed, AppendError>;

    /// A stream's events from `from_version` (inclusive, 1-based), at most `limit`.
    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// A stream's events from `from_version` up to `until` (inclusive): its state "as of".
    async fn read_stream_until(
        &self,
        stream_id: &str,
        from_version: u64,
        until: Until,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The global log after `after`, in position order, at most `limit` events.
    async fn read_all(&self, after: Position, limit: usize) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The highest committed position (0 for an empty store).
    async fn head_position(&self) -> Result<Position, StoreError>;

    /// A stream's version: the number of events in it (0 for no stream).
    async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError>;

    /// A position that changes when new events may be readable: the writer's own commits at
    /// once and, where the database can tell, other processes' commits too. A hint for
    /// tailing readers, never a substitute for reading the log.
    fn changes(&self) -> watch::Receiver<Position>;

    /// What the store holds for an idempotency key, if it has seen it.
    async fn idempotent_result(&self, key: &str) -> Result<Option<IdempotentResult>, StoreError>;

    /// A reader's checkpoint: the last position it has fully handled (0 if it has none).
    async fn load_checkpoint(&self, name: &str) -> Result<Position, StoreError>;

    /// Moves a reader's checkpoint forward to `position`; a lower position leaves it as it is,
    /// so a late or repeated save can never move a reader back.
    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError>;

    /// Stores a snapshot; one already stored at the same version is kept.
    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError>;

    /// The stream's newest snapshot, or with `until` the newest taken at or before that point.
    async fn load_snapshot(&self, stream_id: &str, until: Option<Until>) -> Result<Option<Snapshot>, StoreError>;

    /// Deletes one stream's snapshots, or every snapshot with `None`; answers how many.
    async fn delete_snapshots(&self, stream_id: Option<&str>) -> Result<u64, StoreError>;

    /// Appends events to one stream: a [`Commit`] of one append without an idempotency key.
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Committed, AppendError> {
        self.commit(Commit::single(stream_id, expected, events)).await
    }
}
