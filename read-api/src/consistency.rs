//! Read-your-writes: wait until a projection has applied a position, then read the version that
//! is live, and read again once if that version was replaced (and dropped) in between.

use std::future::Future;
use std::time::{Duration, Instant};

use projections::applied_position;

use crate::{ApiError, ReadState};

/// How often a waiting request looks at the projection's progress.
const POLL: Duration = Duration::from_millis(5);

/// The projection's live version, once it has applied `min_position` (immediately without it).
/// 503 `not_caught_up` after [`crate::ReadConfig::wait`].
pub(crate) async fn live_version(state: &ReadState, name: &str, min_position: Option<u64>) -> Result<u32, ApiError> {
    let started = Instant::now();
    loop {
        let version = state.db().live_version(name).await?;
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
            let now = live_version(state, name, None).await?;
            if now == version { Err(error) } else { query(now).await }
        }
        answer => answer,
    }
}
