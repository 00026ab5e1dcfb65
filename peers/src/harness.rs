//! The load every system gets: N writer tasks in a closed loop (each starts its next operation
//! when the last one answered), a warm-up, a pause for `ANALYZE`, then the measured seconds.
//! What an operation is comes from the system's adapter; the harness only counts.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// What one operation did.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// The operation did all it was asked.
    pub(crate) ok: bool,
    /// Events it stored (also when it failed part-way: a lifecycle whose ship failed stored the
    /// place and the confirm). The row count after the run is checked against their sum.
    pub(crate) events: u64,
    /// Optimistic-concurrency conflicts it met (each one is retried, up to a bound).
    pub(crate) conflicts: u64,
    /// Attempts made again after a conflict.
    pub(crate) retries: u64,
    /// Why it failed, when it did.
    pub(crate) error: Option<String>,
    /// It failed on a conflict after the last retry (counted by a probe, not by the operation).
    pub(crate) gave_up: bool,
}

impl Outcome {
    pub(crate) fn ok(events: u64) -> Self {
        Outcome {
            ok: true,
            events,
            ..Outcome::default()
        }
    }

    pub(crate) fn failed(events: u64, error: impl std::fmt::Display) -> Self {
        Outcome {
            ok: false,
            events,
            error: Some(error.to_string()),
            ..Outcome::default()
        }
    }
}

/// How often a peer's command that lost a version race is tried again: orderflow's handler's
/// default (`HandlerOptions::conflict_retries`), so that every system gives up at the same point.
pub(crate) const CONFLICT_RETRIES: u32 = 16;

/// The pause before retry `attempt` (1-based): orderflow's handler's jitter, 0 to 2·attempt ms,
/// used for the peers too so that colliding writers spread out the same way.
pub(crate) async fn backoff(attempt: u32) {
    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % (2 * u64::from(attempt) + 1);
    tokio::time::sleep(Duration::from_millis(jitter)).await;
}

/// Runs `attempt` until it succeeds, fails with something other than a conflict, or has lost
/// [`CONFLICT_RETRIES`] + 1 races. Answers its last result and how many conflicts and retries it
/// took.
pub(crate) async fn retrying<T, E, Fut>(
    mut attempt: impl FnMut() -> Fut,
    is_conflict: impl Fn(&E) -> bool,
) -> (Result<T, E>, u64, u64)
where
    Fut: Future<Output = Result<T, E>>,
{
    let (mut conflicts, mut retries) = (0, 0);
    let mut n = 0;
    loop {
        match attempt().await {
            Err(e) if is_conflict(&e) => {
                conflicts += 1;
                if n >= CONFLICT_RETRIES {
                    return (Err(e), conflicts, retries);
                }
                n += 1;
                retries += 1;
                backoff(n).await;
            }
            other => return (other, conflicts, retries),
        }
    }
}

/// One phase (warm-up or measured) of one run.
#[derive(Debug, Clone)]
pub(crate) struct Phase {
    pub(crate) seconds: f64,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) events: u64,
    pub(crate) conflicts: u64,
    pub(crate) retries: u64,
    /// Latency of every operation that succeeded, in microseconds.
    pub(crate) latency: Histogram<u64>,
    /// The first few errors, for the report.
    pub(crate) errors: Vec<String>,
    gave_up: u64,
}

impl Phase {
    fn new() -> anyhow::Result<Self> {
        Ok(Phase {
            seconds: 0.0,
            ok: 0,
            failed: 0,
            events: 0,
            conflicts: 0,
            retries: 0,
            latency: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            errors: Vec::new(),
            gave_up: 0,
        })
    }

    fn merge(&mut self, other: Phase) -> anyhow::Result<()> {
        self.ok += other.ok;
        self.failed += other.failed;
        self.events += other.events;
        self.conflicts += other.conflicts;
        self.retries += other.retries;
        self.gave_up += other.gave_up;
        self.latency.add(other.latency)?;
        for e in other.errors {
            if self.errors.len() < MAX_ERRORS_KEPT {
                self.errors.push(e);
            }
        }
        Ok(())
    }

    pub(crate) fn summary(&self) -> PhaseSummary {
        let per_sec = |n: u64| {
            if self.seconds > 0.0 {
                n as f64 / self.seconds
            } else {
                0.0
            }
        };
        let ms = |us: u64| us as f64 / 1000.0;
        let has = !self.latency.is_empty();
        PhaseSummary {
            seconds: self.seconds,
            ops: self.ok,
            failed: self.failed,
            ops_per_sec: per_sec(self.ok),
            p50_ms: has.then(|| ms(self.latency.value_at_quantile(0.50))),
            p99_ms: has.then(|| ms(self.latency.value_at_quantile(0.99))),
            max_ms: has.then(|| ms(self.latency.max())),
            conflicts: self.conflicts,
            retries: self.retries,
            conflicts_per_sec: per_sec(self.conflicts),
            retries_per_sec: per_sec(self.retries),
            events: self.events,
            errors: self.errors.clone(),
        }
    }
}

/// A phase as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PhaseSummary {
    pub(crate) seconds: f64,
    /// Operations that succeeded.
    pub(crate) ops: u64,
    pub(crate) failed: u64,
    pub(crate) ops_per_sec: f64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) max_ms: Option<f64>,
    pub(crate) conflicts: u64,
    pub(crate) retries: u64,
    pub(crate) conflicts_per_sec: f64,
    pub(crate) retries_per_sec: f64,
    /// Events the operations say they stored.
    pub(crate) events: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) errors: Vec<String>,
}

const MAX_ERRORS_KEPT: usize = 5;

/// A writer gives up when this many operations in a row failed: the system is down, not slow.
const MAX_FAILURES_IN_A_ROW: u64 = 2_000;

/// Conflicts counted outside the operations (orderflow's handler retries inside, where the
/// harness cannot see them: its store counts them instead).
pub(crate) type ConflictProbe = Option<Arc<AtomicU64>>;

/// `writers` tasks each running `op` in a loop until `deadline`.
pub(crate) async fn phase<F, Fut>(
    op: &F,
    writers: usize,
    duration: Duration,
    probe: &ConflictProbe,
) -> anyhow::Result<Phase>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let before = probe.as_ref().map(|p| p.load(Ordering::Relaxed));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Phase::new()?;
            let mut seq = 0_u64;
            let mut failures_in_a_row = 0;
            while Instant::now() < deadline && failures_in_a_row < MAX_FAILURES_IN_A_ROW {
                let t = Instant::now();
                let outcome = op(w, seq).await;
                seq += 1;
                mine.events += outcome.events;
                mine.conflicts += outcome.conflicts;
                mine.retries += outcome.retries;
                mine.gave_up += u64::from(outcome.gave_up);
                if outcome.ok {
                    failures_in_a_row = 0;
                    mine.ok += 1;
                    mine.latency.record(t.elapsed().as_micros().max(1) as u64)?;
                } else {
                    failures_in_a_row += 1;
                    mine.failed += 1;
                    if let Some(e) = outcome.error
                        && mine.errors.len() < MAX_ERRORS_KEPT
                    {
                        mine.errors.push(e);
                    }
                }
            }
            anyhow::Ok(mine)
        }));
    }
    let mut all = Phase::new()?;
    for t in tasks {
        all.merge(t.await??)?;
    }
    all.seconds = started.elapsed().as_secs_f64();
    if let (Some(probe), Some(before)) = (probe, before) {
        let extra = probe.load(Ordering::Relaxed) - before;
        all.conflicts += extra;
        // The handler retries every conflict but the last of an operation that gave up.
        all.retries += extra.saturating_sub(all.gave_up);
    }
    Ok(all)
}

/// A run's two phases.
pub(crate) struct Driven {
    pub(crate) warm_up: Phase,
    pub(crate) measured: Phase,
}

impl Driven {
    /// Events every operation of the run says it stored, warm-up included.
    pub(crate) fn events(&self) -> u64 {
        self.warm_up.events + self.measured.events
    }
}

/// Warm-up, then `between` (the database's `ANALYZE`), then the measured phase.
pub(crate) async fn drive<F, Fut, B>(
    op: F,
    writers: usize,
    warm_up: Duration,
    measured: Duration,
    probe: ConflictProbe,
    between: B,
) -> anyhow::Result<Driven>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
    B: Future<Output = anyhow::Result<()>>,
{
    let warm = if warm_up.is_zero() {
        Phase::new()?
    } else {
        phase(&op, writers, warm_up, &probe).await?
    };
    between.await?;
    let measured = phase(&op, writers, measured, &probe).await?;
    Ok(Driven {
        warm_up: warm,
        measured,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn retrying_stops_at_success_and_counts_conflicts() {
        let mut calls = 0;
        let (result, conflicts, retries) = retrying(
            || {
                calls += 1;
                let n = calls;
                async move { if n < 3 { Err("conflict") } else { Ok(n) } }
            },
            |e: &&str| *e == "conflict",
        )
        .await;
        assert_eq!(result, Ok(3));
        assert_eq!((conflicts, retries), (2, 2));
    }

    #[tokio::test]
    async fn retrying_gives_up_after_the_bound_and_passes_other_errors_on() {
        let (result, conflicts, retries) =
            retrying(|| async { Err::<(), _>("conflict") }, |e: &&str| *e == "conflict").await;
        assert!(result.is_err());
        assert_eq!(conflicts, u64::from(CONFLICT_RETRIES) + 1);
        assert_eq!(retries, u64::from(CONFLICT_RETRIES));
        let (result, conflicts, _) = retrying(|| async { Err::<(), _>("down") }, |e: &&str| *e == "conflict").await;
        assert_eq!(result, Err("down"));
        assert_eq!(conflicts, 0);
    }

    #[tokio::test]
    async fn a_phase_counts_every_writer() {
        let op = |_w: usize, _seq: u64| async { Outcome::ok(2) };
        let p = phase(&op, 4, Duration::from_millis(50), &None).await.unwrap();
        assert!(p.ok > 0);
        assert_eq!(p.events, 2 * p.ok);
        assert_eq!(p.failed, 0);
    }
}
