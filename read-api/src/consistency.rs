//! Read-your-writes: wait until a projection has applied a position, then read the version that
//! is live, and read again once if that version was replaced (and dropped) in between.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use projections::applied_position;

use crate::{ApiError, ReadState};

/// How often a waiting request looks at the projection's progress.
const POLL: Duration = Duration::from_millis(5);

/// How long a looked-up live version serves later requests without `min_position` before it is
/// looked up again: one query fewer per request under load. Safe because a replaced version's
/// tables stay for a grace period (seconds) after the switch, so a request that still picks it
/// reads a complete version; one that finds it dropped forgets it and reads the new one
/// ([`read`]). Requests with `min_position` always look it up, so read-your-writes is unchanged.
const LIVE_VERSION_TTL: Duration = Duration::from_millis(100);

/// The live version of each projection as last looked up, and when.
#[derive(Debug, Default)]
pub(crate) struct LiveVersions(Mutex<HashMap<String, (u32, Instant)>>);

impl LiveVersions {
    fn fresh(&self, name: &str) -> Option<u32> {
        let cache = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        cache
            .get(name)
            .filter(|(_, at)| at.elapsed() < LIVE_VERSION_TTL)
            .map(|(version, _)| *version)
    }

    /// Live versions only grow (a rebuild makes N+1 live), so a slow lookup that saw N after a
    /// faster one cached N+1 must not move the cache back.
    fn remember(&self, name: &str, version: u32) {
        let mut cache = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = cache.entry(name.to_owned()).or_insert((version, Instant::now()));
        if version >= entry.0 {
            *entry = (version, Instant::now());
        }
    }

    fn forget(&self, name: &str) {
        let mut cache = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.remove(name);
    }
}

/// The projection's live version, once it has applied `min_position` (immediately without it).
/// 503 `not_caught_up` after [`crate::ReadConfig::wait`].
pub(crate) async fn live_version(state: &ReadState, name: &str, min_position: Option<u64>) -> Result<u32, ApiError> {
    if min_position.is_none()
        && let Some(version) = state.live.fresh(name)
    {
        return Ok(version);
    }
    let started = Instant::now();
    loop {
        let version = state.db().live_version(name).await?;
        if let Some(version) = version {
            state.live.remember(name, version);
        }
        let position = match version {
            Some(version) => match min_position {
                None => return Ok(version),
                Some(_) => applied_position(&state.db().progress(name, version).await?),
            },
            None => 0,
        };
        let wanted = min_position.unwrap_or(1);
        if let Some(version) = version.filter(|_| position >= wanted) {
            return Ok(version);
        }
        if started.elapsed() >= state.config.wait {
            return Err(ApiError::not_caught_up(
                name,
                wanted,
                position,
                started.elapsed().as_millis() as u64,
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs `query` on the live version of `name` (after `min_position`). A rebuild may switch the
/// live version and drop the old one between the pick and the query: then the query fails, and
/// it runs once more on the new version, so every answer comes from one complete version.
pub(crate) async fn read<T, F, Fut>(
    state: &ReadState,
    name: &str,
    min_position: Option<u64>,
    query: F,
) -> Result<T, ApiError>
where
    F: Fn(u32) -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let version = live_version(state, name, min_position).await?;
    match query(version).await {
        Err(error) if error.code() == "unavailable" => {
            state.live.forget(name);
            let now = live_version(state, name, None).await?;
            if now == version { Err(error) } else { query(now).await }
        }
        answer => answer,
    }
}
