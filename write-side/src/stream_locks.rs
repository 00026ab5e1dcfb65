//! One command at a time per stream inside this process.
//!
//! Optimistic concurrency keeps the store right whatever the writers do, but two commands of one
//! process on the same hot stream (a popular product's stock) would load the same version, both
//! decide, and one would lose, reload and retry; under load the retries pile up and fail (`bench
//! reads` saw 896 of 5,000 orders fail at 1,000/s on 200 products). Commands therefore take the
//! lock of every stream they append to before they load, in one global order (stream ids
//! sorted), so that two commands never wait on each other in a cycle. Other processes still
//! conflict, and the retry loop stays for them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The lock of each stream a command of this process is using (weakly held: a stream nobody
/// uses has no entry for long).
#[derive(Debug, Default)]
pub(crate) struct StreamLocks {
    locks: Mutex<Locks>,
}

#[derive(Debug, Default)]
struct Locks {
    by_stream: HashMap<String, Weak<AsyncMutex<()>>>,
    /// Sweep when the map reaches this size: twice what the last sweep left (at least
    /// [`SWEEP_AT`]), so that many streams in use at once do not make every insert a sweep.
    sweep_at: usize,
}

/// Held locks; dropping it releases them.
#[derive(Debug)]
pub(crate) struct Held(#[allow(dead_code)] Vec<OwnedMutexGuard<()>>);

/// Entries kept before the dead ones are swept.
const SWEEP_AT: usize = 4096;

impl StreamLocks {
    /// Waits for the locks of `streams` (in sorted order, each once) and holds them. Streams must
    /// be locked in one call, or in calls whose streams all sort after those already held.
    pub(crate) async fn lock(&self, streams: impl IntoIterator<Item = String>) -> Held {
        let mut streams: Vec<String> = streams.into_iter().collect();
        streams.sort();
        streams.dedup();
        let mut held = Vec::with_capacity(streams.len());
        for stream in streams {
            let lock = self.lock_of(stream);
            held.push(lock.lock_owned().await);
        }
        Held(held)
    }

    fn lock_of(&self, stream: String) -> Arc<AsyncMutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(lock) = locks.by_stream.get(&stream).and_then(Weak::upgrade) {
            return lock;
        }
        if locks.by_stream.len() >= locks.sweep_at.max(SWEEP_AT) {
            locks.by_stream.retain(|_, lock| lock.strong_count() > 0);
            locks.sweep_at = 2 * locks.by_stream.len();
        }
        let lock = Arc::new(AsyncMutex::new(()));
        locks.by_stream.insert(stream, Arc::downgrade(&lock));
        lock
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_stream_is_held_by_one_command_at_a_time_and_released_on_drop() {
        let locks = Arc::new(StreamLocks::default());
        let first = locks.lock(["product-1".to_owned(), "order-1".to_owned()]).await;
        let waiting = tokio::spawn({
            let locks = Arc::clone(&locks);
            async move { locks.lock(["product-1".to_owned()]).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a second command got a held stream");
        // Another stream is free meanwhile.
        let other = tokio::time::timeout(Duration::from_secs(1), locks.lock(["product-2".to_owned()])).await;
        assert!(other.is_ok(), "an unrelated stream waited");
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn unused_streams_are_swept() {
        let locks = StreamLocks::default();
        for i in 0..(SWEEP_AT + 10) {
            drop(locks.lock([format!("product-{i}")]).await);
        }
        assert!(
            locks.locks.lock().unwrap().by_stream.len() < SWEEP_AT,
            "dead entries stay"
        );
    }
}
