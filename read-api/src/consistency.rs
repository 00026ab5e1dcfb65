//! Read-your-writes: wait until a projection has applied a consistency token (a position of one
//! service's log, `orders:12`), then read the version that is live, and read again once if that
//! version was replaced (and dropped) in between.
//!
//! A request looks at the projection's progress once itself. If the position is not applied yet,
//! it waits on the projection's [`ProgressWatches`] entry: one lookup every [`POLL`] for all the
//! requests waiting on that projection, however many there are.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_schemas::{ConsistencyToken, Service};
use projections::applied_position;
use tokio::sync::watch;

use crate::{ApiError, ReadState};

/// How often the progress of a projection that requests wait on is looked at.
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
pub(crate) async fn live_version(
    state: &ReadState,
    name: &str,
    min_position: Option<ConsistencyToken>,
) -> Result<u32, ApiError> {
    if min_position.is_none()
        && let Some(version) = state.live.fresh(name)
    {
        return Ok(version);
    }
    let started = Instant::now();
    let Some(wanted) = min_position else {
        let version = state.db().live_version(name).await?;
        if let Some(version) = version {
            state.live.remember(name, version);
            return Ok(version);
        }
        // No live version yet: wait for one.
        return wait_for(state, name, None, started, 0).await;
    };
    let (version, applied) = look_up(state, name).await?;
    let position = applied.get(&wanted.service).copied().unwrap_or(0);
    if let Some(version) = version.filter(|_| position >= wanted.position) {
        return Ok(version);
    }
    wait_for(state, name, Some(wanted), started, position).await
}

/// How far each service's log is applied: what a look finds.
type Applied = BTreeMap<Service, u64>;

/// The live version and the position it has applied of every service's log (none without a
/// live version): the look every request with `min_position` makes once, and the shared poller
/// every [`POLL`] while requests wait. Counted in `orderflow_read_progress_lookups_total`.
async fn look_up(state: &ReadState, name: &str) -> Result<(Option<u32>, Applied), ApiError> {
    metrics::counter!("orderflow_read_progress_lookups_total", "projection" => name.to_owned()).increment(1);
    let version = state.db().live_version(name).await?;
    let Some(version) = version else {
        return Ok((None, Applied::new()));
    };
    state.live.remember(name, version);
    let progress = state.db().progress(name, version).await?;
    let applied = Service::ALL
        .into_iter()
        .map(|service| (service, applied_position(&progress, service)))
        .collect();
    Ok((Some(version), applied))
}

/// Waits on the projection's shared watch until a look finds a live version that has applied
/// `wanted` (any live version without it); 503 `not_caught_up` with the position last seen once
/// the request has waited [`crate::ReadConfig::wait`] since `started`.
async fn wait_for(
    state: &ReadState,
    name: &str,
    wanted: Option<ConsistencyToken>,
    started: Instant,
    seen: u64,
) -> Result<u32, ApiError> {
    let applied_of = |applied: &Applied| wanted.map_or(0, |w| applied.get(&w.service).copied().unwrap_or(0));
    let done = |version: Option<u32>, applied: &Applied| {
        version.filter(|_| wanted.is_none_or(|w| applied.get(&w.service).copied().unwrap_or(0) >= w.position))
    };
    let deadline = tokio::time::Instant::from_std(started + state.config.wait);
    let mut progress = state.progress.subscribe(state, name);
    // A poller that was running already may have looked since this request did.
    if let Some(Ok((version, applied))) = &*progress.borrow()
        && let Some(version) = done(*version, applied)
    {
        return Ok(version);
    }
    // Subscribed: whatever the poller finds from now on reaches this request. Counted, so that
    // an operator (and a test) can tell requests waiting from requests answered at once.
    metrics::counter!("orderflow_read_progress_waits_total", "projection" => name.to_owned()).increment(1);
    let mut position = seen;
    loop {
        match tokio::time::timeout_at(deadline, progress.changed()).await {
            Ok(Ok(())) => {}
            // The poller stops only when nobody waits, so this happens only if it panicked or the
            // runtime is shutting down: wait on a new one.
            Ok(Err(_)) => {
                progress = state.progress.subscribe(state, name);
                continue;
            }
            Err(_elapsed) => return Err(not_caught_up(name, wanted, position, started)),
        }
        let observed = progress.borrow_and_update().clone();
        match observed {
            Some(Ok((version, applied))) => match done(version, &applied) {
                Some(version) => return Ok(version),
                None => position = applied_of(&applied),
            },
            Some(Err(error)) => return Err(error),
            None => {}
        }
    }
}

/// 503 `not_caught_up`: `position` is what `name` has applied of the token's service's log (of
/// none, when the request waited for a live version only).
fn not_caught_up(name: &str, wanted: Option<ConsistencyToken>, position: u64, started: Instant) -> ApiError {
    let waited_ms = started.elapsed().as_millis() as u64;
    match wanted {
        Some(token) => ApiError::not_caught_up(name, &token.to_string(), position, waited_ms)
            .with_detail("service", token.service.name()),
        None => ApiError::not_caught_up(name, "a live version", position, waited_ms),
    }
}

/// What the poller saw at its last look: the live version and the position it has applied of
/// every service's log, or why the look failed. `None` until its first look.
type Observed = Option<Result<(Option<u32>, Applied), ApiError>>;

/// One progress poller per projection that requests wait on. It starts with the first waiting
/// request and stops at its first turn (every [`POLL`], before it looks) after the last one gave
/// up or got its answer; a request that comes later starts a new one. Waiting is then one lookup
/// per [`POLL`] per projection, not one per waiting request (a hundred requests waiting would
/// otherwise be forty thousand queries a second against the read database).
#[derive(Debug, Default)]
pub(crate) struct ProgressWatches(Mutex<HashMap<String, watch::Sender<Observed>>>);

impl ProgressWatches {
    fn pollers(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<Observed>>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Subscribes to `name`'s watch, starting its poller if none runs. The receiver holds the
    /// poller's last look (`None` for a new poller) and is woken by its next.
    fn subscribe(&self, state: &ReadState, name: &str) -> watch::Receiver<Observed> {
        let mut pollers = self.pollers();
        if let Some(sender) = pollers.get(name) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(None);
        pollers.insert(name.to_owned(), sender.clone());
        let poller = Poller {
            watches: Arc::clone(&state.progress),
            name: name.to_owned(),
            sender,
        };
        tokio::spawn(poller.run(state.clone()));
        receiver
    }
}

/// A projection's poller. Dropping it removes its entry however it ends (a panic included), so
/// that a later request starts a new poller instead of waiting on one that is gone.
struct Poller {
    watches: Arc<ProgressWatches>,
    name: String,
    sender: watch::Sender<Observed>,
}

impl Poller {
    async fn run(self, state: ReadState) {
        loop {
            tokio::time::sleep(POLL).await;
            // Checked and removed under the lock a subscriber takes, so no request subscribes
            // to a poller that is stopping.
            {
                let mut pollers = self.watches.pollers();
                if self.sender.receiver_count() == 0 {
                    self.remove_from(&mut pollers);
                    return;
                }
            }
            let observed = look_up(&state, &self.name).await;
            self.sender.send_replace(Some(observed));
        }
    }

    /// Removes this poller's entry, and not a newer poller's of the same projection.
    fn remove_from(&self, pollers: &mut HashMap<String, watch::Sender<Observed>>) {
        if pollers
            .get(&self.name)
            .is_some_and(|sender| sender.same_channel(&self.sender))
        {
            pollers.remove(&self.name);
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.remove_from(&mut self.watches.pollers());
    }
}

/// Runs `query` on the live version of `name` (after `min_position`). A rebuild may switch the
/// live version and drop the old one between the pick and the query: then the query fails, and
/// it runs once more on the new version, so every answer comes from one complete version.
pub(crate) async fn read<T, F, Fut>(
    state: &ReadState,
    name: &str,
    min_position: Option<ConsistencyToken>,
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
