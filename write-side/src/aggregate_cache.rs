//! The aggregates this process loaded or changed last, kept in memory.
//!
//! Loading an aggregate costs two PostgreSQL round trips (its newest snapshot, then the events
//! after it), and placing an order loads up to five of them: that, not the append, was most of
//! a command's time (BENCHMARKS.md). This process serializes its own commands per stream
//! (`stream_locks`) and updates an entry under that lock once its commit is answered, so an
//! entry is the stream as this process last wrote or read it.
//!
//! Another process may have appended since. The handler therefore uses an entry in one of two
//! ways:
//! - **Trusted** for a stream the command appends to: the commit carries the entry's version as
//!   its expected version, so a stale entry cannot write. A stream missing from the cache is
//!   taken as new (version 0, "no stream" expected): placing an order creates its stream, and
//!   this saves the two round trips that would find nothing. The commit is refused as a conflict,
//!   the handler forgets the commit's streams and decides again from the store. An answer that
//!   does not end in a commit (a refusal, "nothing to do", a stale `If-Match`) is never given on
//!   trusted entries alone: the handler checks them against the store first.
//! - **Caught up** for a stream it only reads (the customer an order is placed for): the events
//!   after the entry's version are read (one round trip, usually none), as a load would.
//!
//! The cache is bounded by entry count (S3-FIFO eviction by `quick_cache`); an evicted stream is
//! loaded from the store again. Temporal loads (`as_of`, `at_position`) never use it.

use std::any::Any;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use event_store::Position;

/// One stream's state as this process last saw it.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) version: u64,
    pub(crate) position: Position,
    pub(crate) recorded_at: Option<DateTime<Utc>>,
    /// The aggregate's state (its concrete type is given by the stream's category).
    pub(crate) state: Arc<dyn Any + Send + Sync>,
}

/// The cache; `capacity` 0 turns it off.
pub(crate) struct AggregateCache {
    entries: Option<quick_cache::sync::Cache<String, Entry>>,
    /// Serializes [`put`](Self::put)'s compare-and-insert, so that a load that read the store
    /// before a commit cannot overwrite the commit's newer entry after it.
    puts: std::sync::Mutex<()>,
}

impl AggregateCache {
    pub(crate) fn new(capacity: usize) -> Self {
        AggregateCache {
            entries: (capacity > 0).then(|| quick_cache::sync::Cache::new(capacity)),
            puts: std::sync::Mutex::new(()),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.entries.is_some()
    }

    pub(crate) fn get(&self, stream_id: &str) -> Option<Entry> {
        self.entries.as_ref()?.get(stream_id)
    }

    /// Keeps `entry` unless the cache holds a newer version of the stream.
    pub(crate) fn put(&self, stream_id: &str, entry: Entry) {
        if let Some(entries) = &self.entries {
            let _one_at_a_time = self.puts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if entries.get(stream_id).is_some_and(|e| e.version > entry.version) {
                return;
            }
            entries.insert(stream_id.to_owned(), entry);
        }
    }

    pub(crate) fn forget<'a>(&self, stream_ids: impl IntoIterator<Item = &'a str>) {
        if let Some(entries) = &self.entries {
            for stream_id in stream_ids {
                entries.remove(stream_id);
            }
        }
    }
}

impl std::fmt::Debug for AggregateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateCache")
            .field("entries", &self.entries.as_ref().map(|e| e.len()))
            .finish()
    }
}
