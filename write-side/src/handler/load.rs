//! Loading an aggregate: from the cache (trusted as it is, or caught up with the store), or from
//! the store (its newest snapshot, then the events after it).

use std::sync::Arc;

use event_store::{RecordedEvent, Snapshot, Until};
use uuid::Uuid;

use super::{CommandError, CommandHandler, Loaded, Snapshottable};
use crate::aggregate_cache::Entry;
use crate::domain::Aggregate;

/// Events read per round trip while folding a stream.
const READ_PAGE: usize = 1000;

impl CommandHandler {
    /// The aggregate as it is now. With `trust`, a cached entry is returned as it is, and a
    /// stream missing from the cache as new, without a round trip; the answer's flag says so:
    /// the caller must commit on it with its version expected, or load again without `trust`
    /// (see [`crate::aggregate_cache`]). Otherwise a cached entry is caught up with the store.
    pub(super) async fn load_now<A: Snapshottable>(
        &self,
        id: Uuid,
        trust: bool,
    ) -> Result<(Loaded<A>, bool), CommandError> {
        let stream_id = A::CATEGORY.stream_id(id);
        let cached = self.cache.get(&stream_id).and_then(|entry| {
            let state = entry.state.downcast_ref::<A>()?.clone();
            Some(Loaded {
                state,
                stream_id: stream_id.clone(),
                version: entry.version,
                position: entry.position,
                recorded_at: entry.recorded_at,
            })
        });
        let Some(mut loaded) = cached else {
            if trust && self.cache.enabled() {
                // Not in the cache: most often a stream this command creates (a new order).
                // Assume it is new; the commit expects no stream, so it cannot be wrong.
                return Ok((Loaded::new(stream_id), true));
            }
            let loaded = self.load_from_store::<A>(id, None).await?;
            self.remember(&loaded);
            return Ok((loaded, false));
        };
        if trust {
            return Ok((loaded, true));
        }
        let before = loaded.version;
        self.catch_up(&mut loaded, None).await?;
        if loaded.version != before {
            self.remember(&loaded);
        }
        Ok((loaded, false))
    }

    pub(super) async fn load_from_store<A: Snapshottable>(
        &self,
        id: Uuid,
        until: Option<Until>,
    ) -> Result<Loaded<A>, CommandError> {
        let mut loaded = Loaded::new(A::CATEGORY.stream_id(id));
        if let Some(snapshot) = self.store.load_snapshot(&loaded.stream_id, until).await? {
            if let Some(state) = restore::<A>(&snapshot) {
                loaded.state = state;
                loaded.version = snapshot.version;
                loaded.position = snapshot.position;
                loaded.recorded_at = Some(snapshot.recorded_at);
            } else {
                tracing::debug!(stream_id = %loaded.stream_id, "ignoring a snapshot of another state version");
            }
        }
        self.catch_up(&mut loaded, until).await?;
        Ok(loaded)
    }

    /// Folds the events after `loaded.version` (up to `until`) into it.
    async fn catch_up<A: Snapshottable>(
        &self,
        loaded: &mut Loaded<A>,
        until: Option<Until>,
    ) -> Result<(), CommandError> {
        loop {
            let from = loaded.version + 1;
            let events = match until {
                Some(until) => self.store.read_stream_until(&loaded.stream_id, from, until).await?,
                None => self.store.read_stream(&loaded.stream_id, from, READ_PAGE).await?,
            };
            let full_page = until.is_none() && events.len() == READ_PAGE;
            for recorded in &events {
                let event = decode::<A>(recorded)?;
                loaded.state = std::mem::take(&mut loaded.state).evolve(&event);
                loaded.version = recorded.stream_version;
                loaded.position = recorded.position;
                loaded.recorded_at = Some(recorded.recorded_at);
            }
            if !full_page {
                return Ok(());
            }
        }
    }

    /// Keeps a loaded aggregate for the next command on its stream, unless the cache already
    /// holds a newer version (a read racing a commit).
    pub(super) fn remember<A: Snapshottable>(&self, loaded: &Loaded<A>) {
        self.cache.put(
            &loaded.stream_id,
            Entry {
                version: loaded.version,
                position: loaded.position,
                recorded_at: loaded.recorded_at,
                state: Arc::new(loaded.state.clone()),
            },
        );
    }
}

fn restore<A: Snapshottable>(snapshot: &Snapshot) -> Option<A> {
    if snapshot.state_type != A::CATEGORY.name() || snapshot.state_version != A::STATE_VERSION {
        return None;
    }
    serde_json::from_slice(&snapshot.state).ok()
}

fn decode<A: Aggregate>(recorded: &RecordedEvent) -> Result<A::Event, CommandError> {
    let corrupt = |reason: String| CommandError::Corrupt {
        stream_id: recorded.stream_id.clone(),
        reason,
    };
    let event =
        event_schemas::decode(&recorded.event_type, recorded.schema_version, &recorded.payload).map_err(|e| {
            corrupt(format!(
                "event {} at version {}: {e}",
                recorded.event_id, recorded.stream_version
            ))
        })?;
    A::event_from(event).ok_or_else(|| {
        corrupt(format!(
            "event {} is not a {} event",
            recorded.event_id,
            A::CATEGORY.name()
        ))
    })
}
