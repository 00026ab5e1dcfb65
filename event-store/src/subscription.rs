//! Tailing the global log: catch up, then follow live.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::{EventStore, Position, RecordedEvent, StoreError};

/// A reader of the global log from a position on. It reads in batches; when it has caught up it
/// waits for the store's change signal (an in-process signal, PostgreSQL `LISTEN`) or, should a
/// signal be lost, for the poll interval.
///
/// Gap safety comes from the store: positions become visible in order, so moving past the last
/// position read never skips an event that commits later.
///
/// [`next_batch`](Subscription::next_batch) is cancel-safe: the position moves only when a batch
/// is returned, so a caller can `select!` on it and a shutdown signal.
pub struct Subscription {
    store: Arc<dyn EventStore>,
    after: Position,
    batch_size: usize,
    poll: Duration,
    changes: watch::Receiver<Position>,
}

impl Subscription {
    /// Starts after `after` (0: from the beginning).
    pub fn new(store: Arc<dyn EventStore>, after: Position) -> Self {
        let changes = store.changes();
        Subscription {
            store,
            after,
            batch_size: 1000,
            poll: Duration::from_millis(500),
            changes,
        }
    }

    /// At most `n` events per batch (at least 1).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// How long to wait for a change signal before reading anyway.
    pub fn poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// The position of the last event returned.
    pub fn position(&self) -> Position {
        self.after
    }

    /// The next events after the current position; waits until there is at least one.
    pub async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, StoreError> {
        loop {
            // Mark the signal seen before reading, so a commit that lands after the read wakes us.
            self.changes.borrow_and_update();
            let events = self.store.read_all(self.after, self.batch_size).await?;
            if let Some(last) = events.last() {
                self.after = last.position;
                return Ok(events);
            }
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        // The store is gone; fall back to polling until the caller stops.
                        tokio::time::sleep(self.poll).await;
                    }
                }
                () = tokio::time::sleep(self.poll) => {}
            }
        }
    }
}
