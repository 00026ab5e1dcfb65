//! The driver: which sagas to advance, and when (ADR 0010).
//!
//! It tails the orders service's own log from its checkpoint (`saga-driver` in the store's
//! checkpoints): `saga.started` opens a saga, `saga.completed` closes it (unless a turn of it
//! runs), and `order.shipped`, `order.cancelled` or an operator's record (resume, abandon) gives
//! a waiting one work again. The saga's own records give none (the turn that wrote them went as
//! far as it could), except a forward effect (a reservation, an authorization, a capture)
//! recorded where no turn holds the saga: it may have landed after another driver completed
//! the saga, which reopens it. The request that places an order hands its saga over at once
//! ([`SagaHandle::started`]), without waiting for the tail.
//!
//! The checkpoint is the position before the first event of the oldest saga that still has
//! work to do (or the tail's position when none has): a restart reads the log from there and
//! finds every open saga and its deadline again. Several drivers (several processes of the
//! orders service) may run at once: they look at the same sagas, and the expected version of
//! the saga's stream lets only one of them record each step (the other reloads and moves on).
//!
//! A saga whose call failed for a reason that may pass is tried again after a backoff with
//! jitter (doubling from `retry_base` to `retry_max`), never later than its deadline. At most
//! `concurrency` sagas are advanced at once.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use event_schemas::Category;
use event_store::{EventStore, Position, Subscription};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::runner::{self, Advanced, Runner};
use crate::domain::saga::Phase;

/// The store checkpoint of the drivers.
pub const CHECKPOINT: &str = "saga-driver";

/// How a driver paces itself.
#[derive(Debug, Clone, Copy)]
pub struct DriverOptions {
    /// Sagas advanced at once.
    pub concurrency: usize,
    /// The first retry's delay after a call failed for a reason that may pass.
    pub retry_base: Duration,
    /// The longest delay between two tries.
    pub retry_max: Duration,
    /// Events read from the log per round.
    pub batch_size: usize,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            concurrency: 64,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            batch_size: 1000,
        }
    }
}

/// What the rest of the orders service tells the driver, and asks of it.
#[derive(Clone)]
pub struct SagaHandle {
    started: mpsc::UnboundedSender<Uuid>,
    board: Arc<Mutex<Board>>,
    backlog: Arc<Backlog>,
}

/// The driver's work not done yet: kicks it has not received, and sagas scheduled or running.
#[derive(Debug, Default)]
struct Backlog {
    kicks: AtomicUsize,
    scheduled: AtomicUsize,
}

/// The driver's view of its sagas, for operators (`GET /v1/sagas`) and metrics.
#[derive(Debug, Default)]
struct Board {
    phases: HashMap<Uuid, (Phase, Instant)>,
}

impl SagaHandle {
    /// The saga of an order this process just placed (or changed): look at it now.
    pub fn started(&self, order_id: Uuid) {
        self.backlog.kicks.fetch_add(1, Ordering::Relaxed);
        if self.started.send(order_id).is_err() {
            self.backlog.kicks.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Sagas with work to do that the driver has not done yet: what a new order would wait
    /// behind. The orders service refuses new orders past a bound of it (load shedding).
    pub fn backlog(&self) -> usize {
        self.backlog.kicks.load(Ordering::Relaxed) + self.backlog.scheduled.load(Ordering::Relaxed)
    }

    /// The parked sagas this driver knows of.
    pub fn parked(&self) -> Vec<Uuid> {
        let board = self.board.lock().unwrap_or_else(|p| p.into_inner());
        let mut parked: Vec<Uuid> = board
            .phases
            .iter()
            .filter(|(_, (phase, _))| *phase == Phase::Parked)
            .map(|(id, _)| *id)
            .collect();
        parked.sort();
        parked
    }
}

/// A saga the driver knows has work.
#[derive(Debug, Clone, Copy)]
struct Open {
    /// The position of the event that gave it work: the checkpoint stays before it.
    since: Position,
    /// Tries that failed in a row.
    failures: u32,
}

/// Creates a driver over `runner` and the orders store `store`, and the handle the rest of the
/// service uses; run it with [`Driver::run`].
pub fn driver(runner: Runner, store: Arc<dyn EventStore>, options: DriverOptions) -> (Driver, SagaHandle) {
    let (started, kicks) = mpsc::unbounded_channel();
    let board = Arc::new(Mutex::new(Board::default()));
    let backlog = Arc::new(Backlog::default());
    let handle = SagaHandle {
        started,
        board: Arc::clone(&board),
        backlog: Arc::clone(&backlog),
    };
    (
        Driver {
            runner: Arc::new(runner),
            store,
            options,
            kicks,
            board,
            backlog,
        },
        handle,
    )
}

pub struct Driver {
    runner: Arc<Runner>,
    store: Arc<dyn EventStore>,
    options: DriverOptions,
    kicks: mpsc::UnboundedReceiver<Uuid>,
    backlog: Arc<Backlog>,
    board: Arc<Mutex<Board>>,
}

/// The driver's working state.
#[derive(Default)]
struct State {
    open: HashMap<Uuid, Open>,
    /// Sagas to advance as soon as a slot is free, each once.
    queue: VecDeque<Uuid>,
    queued: HashSet<Uuid>,
    /// Being advanced now.
    running: HashSet<Uuid>,
    /// Looked at again once their current turn ends (something happened meanwhile).
    again: HashSet<Uuid>,
    /// When to try again.
    timers: BTreeSet<(Instant, Uuid)>,
    timer_of: HashMap<Uuid, Instant>,
}

impl State {
    fn schedule(&mut self, id: Uuid) {
        if self.running.contains(&id) {
            self.again.insert(id);
        } else if self.queued.insert(id) {
            if let Some(at) = self.timer_of.remove(&id) {
                self.timers.remove(&(at, id));
            }
            self.queue.push_back(id);
        }
    }

    fn later(&mut self, id: Uuid, at: Instant) {
        if let Some(old) = self.timer_of.insert(id, at) {
            self.timers.remove(&(old, id));
        }
        self.timers.insert((at, id));
    }

    /// The checkpoint: before the oldest open saga's reason, or `tail` when none is open.
    fn low_water(&self, tail: Position) -> Position {
        self.open
            .values()
            .map(|o| o.since.saturating_sub(1))
            .min()
            .map_or(tail, |oldest| oldest.min(tail))
    }
}

impl Driver {
    /// Runs until `cancel`. Failures of the store are retried; a turn that fails is tried
    /// again later.
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            match self.follow(&cancel).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(error = %service_kit::error_chain(&e), "the saga driver failed; starting again from its checkpoint");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    async fn follow(&mut self, cancel: &CancellationToken) -> Result<(), event_store::StoreError> {
        let from = self.store.load_checkpoint(CHECKPOINT).await?;
        let head = self.store.head_position().await?;
        tracing::info!(from, head, "the saga driver reads the orders log");
        // The tail reads in a task of its own: a read is never dropped half-way (a query
        // cancelled mid-flight costs the pool its connection) when a kick, a timer or a turn
        // wakes the loop first.
        let mut subscription = Subscription::new(Arc::clone(&self.store), from).batch_size(self.options.batch_size);
        let (batches, mut tail_reads) = mpsc::channel(2);
        let reader = tokio::spawn(async move {
            loop {
                let batch = subscription.next_batch().await;
                let failed = batch.is_err();
                if batches.send(batch).await.is_err() || failed {
                    return;
                }
            }
        });
        let _reader = AbortOnDrop(reader);
        let mut state = State::default();
        let mut tail = from;
        let mut caught_up = from >= head;
        let mut turns: JoinSet<(Uuid, Result<Advanced, super::runner::RunError>)> = JoinSet::new();
        let mut checkpoint = tokio::time::interval(Duration::from_secs(1));
        let mut saved = from;
        loop {
            self.backlog
                .scheduled
                .store(state.queue.len() + turns.len(), Ordering::Relaxed);
            while turns.len() < self.options.concurrency && caught_up {
                let Some(id) = state.queue.pop_front() else { break };
                state.queued.remove(&id);
                // Completed since it was queued (read further on in the log): nothing to do.
                if !state.open.contains_key(&id) {
                    continue;
                }
                state.running.insert(id);
                let runner = Arc::clone(&self.runner);
                turns.spawn(async move { (id, runner.advance(id, Utc::now).await) });
            }
            let next_timer = state.timers.first().map(|(at, _)| *at);
            tokio::select! {
                () = cancel.cancelled() => break,
                Some(id) = self.kicks.recv() => {
                    let _ = self.backlog.kicks.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                    state.open.entry(id).or_insert(Open { since: tail.max(1), failures: 0 });
                    state.schedule(id);
                }
                Some(events) = tail_reads.recv() => {
                    for event in events? {
                        tail = event.position;
                        self.observe(&mut state, &event);
                    }
                    if !caught_up && tail >= head {
                        caught_up = true;
                        tracing::info!(open = state.open.len(), "the saga driver caught up with the log");
                    }
                }
                () = sleep_until(next_timer) => {
                    let now = Instant::now();
                    while let Some(&(at, id)) = state.timers.first() {
                        if at > now { break; }
                        state.timers.remove(&(at, id));
                        state.timer_of.remove(&id);
                        state.schedule(id);
                    }
                }
                Some(done) = turns.join_next(), if !turns.is_empty() => {
                    let (id, outcome) = done.map_err(|e| event_store::StoreError::Corrupt(format!("a saga turn panicked: {e}")))?;
                    self.finished(&mut state, id, outcome, tail.max(1));
                }
                _ = checkpoint.tick() => {
                    let low = state.low_water(tail);
                    if low > saved {
                        self.store.save_checkpoint(CHECKPOINT, low).await?;
                        saved = low;
                    }
                    self.publish_metrics();
                }
            }
        }
        turns.shutdown().await;
        Ok(())
    }

    /// What an event of the log says about a saga.
    fn observe(&self, state: &mut State, event: &event_store::RecordedEvent) {
        let Ok((category, order_id)) = event_schemas::parse_stream_id(&event.stream_id) else {
            return;
        };
        match (category, event.event_type.as_str()) {
            // Completed, unless a turn of it runs now: that turn says what is left.
            (Category::Saga, "saga.completed") => {
                if !state.running.contains(&order_id) {
                    state.open.remove(&order_id);
                    self.set_phase(order_id, None);
                }
                return;
            }
            // A forward effect recorded where no turn of this driver has the saga: it may have
            // landed after the saga completed (another driver compensated meanwhile), which
            // reopens it, and only a turn can tell. Read again after a restart, it is still
            // seen.
            (Category::Saga, "saga.stock_reserved" | "saga.payment_authorized" | "saga.payment_captured")
                if !state.open.contains_key(&order_id) =>
            {
                state.open.insert(
                    order_id,
                    Open {
                        since: event.position,
                        failures: 0,
                    },
                );
            }
            // A saga's other records: the turn that wrote them went on as far as it could (a
            // driver's turn ends only where nothing is left to do now, or with a timer), so
            // they give no work. Records an operator wrote (resume, abandon) do.
            (Category::Saga, _) if event.metadata.actor == runner::ACTOR && event.event_type != "saga.started" => {
                return;
            }
            (Category::Saga, _) | (Category::Order, "order.shipped" | "order.cancelled") => {
                state.open.entry(order_id).or_insert(Open {
                    since: event.position,
                    failures: 0,
                });
            }
            _ => {}
        }
        if state.open.contains_key(&order_id) {
            state.schedule(order_id);
        }
    }

    /// A turn ended: keep the saga open with a timer, or let it wait.
    fn finished(
        &self,
        state: &mut State,
        id: Uuid,
        outcome: Result<Advanced, super::runner::RunError>,
        tail: Position,
    ) {
        state.running.remove(&id);
        let again = state.again.remove(&id);
        match outcome {
            Ok(Advanced::Idle(phase)) => {
                self.set_phase(id, Some(phase));
                match phase {
                    // Nothing to do until the order ships or is cancelled, or an operator
                    // acts: the events that say so give it work again.
                    Phase::Completed | Phase::AwaitingShipment | Phase::Parked | Phase::NotStarted => {
                        if let Some(open) = state.open.get_mut(&id) {
                            open.failures = 0;
                        }
                        // Something happened while it ran: it stays open for another look.
                        if phase != Phase::Parked && !again {
                            state.open.remove(&id);
                        }
                    }
                    _ => {}
                }
            }
            Ok(Advanced::Retry { phase, deadline, error }) => {
                self.set_phase(id, Some(phase));
                // Kept open (and the checkpoint before it) whatever the log said meanwhile.
                state.open.entry(id).or_insert(Open {
                    since: tail,
                    failures: 0,
                });
                let failures = state.open.get(&id).map_or(0, |o| o.failures) + 1;
                if let Some(open) = state.open.get_mut(&id) {
                    open.failures = failures;
                }
                let delay = self.backoff(failures);
                let mut at = Instant::now() + delay;
                if let Some(deadline) = deadline {
                    let until = (deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                    at = at.min(Instant::now() + until);
                }
                tracing::debug!(order_id = %id, %error, delay_ms = delay.as_millis() as u64, "a saga step will be tried again");
                state.later(id, at);
            }
            Err(e) => {
                state.open.entry(id).or_insert(Open {
                    since: tail,
                    failures: 0,
                });
                let failures = state.open.get(&id).map_or(0, |o| o.failures) + 1;
                if let Some(open) = state.open.get_mut(&id) {
                    open.failures = failures;
                }
                tracing::warn!(order_id = %id, error = %service_kit::error_chain(&e), "a saga turn failed; trying again later");
                state.later(id, Instant::now() + self.backoff(failures));
            }
        }
        if again {
            state.schedule(id);
        }
    }

    /// Full jitter below a cap doubling from `retry_base` to `retry_max`.
    fn backoff(&self, failures: u32) -> Duration {
        let cap = self
            .options
            .retry_base
            .saturating_mul(1 << failures.min(16))
            .min(self.options.retry_max);
        let jitter = rand_fraction();
        cap.mul_f64(0.5 + jitter / 2.0)
    }

    fn set_phase(&self, id: Uuid, phase: Option<Phase>) {
        let mut board = self.board.lock().unwrap_or_else(|p| p.into_inner());
        match phase {
            Some(Phase::Completed) | None => {
                board.phases.remove(&id);
            }
            Some(phase) => {
                let since = board.phases.get(&id).map_or_else(Instant::now, |(_, since)| *since);
                board.phases.insert(id, (phase, since));
            }
        }
    }

    fn publish_metrics(&self) {
        let board = self.board.lock().unwrap_or_else(|p| p.into_inner());
        let mut per_phase: HashMap<Phase, u64> = HashMap::new();
        let mut oldest = Duration::ZERO;
        for (phase, since) in board.phases.values() {
            *per_phase.entry(*phase).or_default() += 1;
            if *phase != Phase::AwaitingShipment {
                oldest = oldest.max(since.elapsed());
            }
        }
        for phase in [
            Phase::Reserving,
            Phase::Authorizing,
            Phase::Confirming,
            Phase::Capturing,
            Phase::Compensating,
            Phase::Parked,
        ] {
            metrics::gauge!("orderflow_sagas_in_flight", "step" => phase.as_str())
                .set(per_phase.get(&phase).copied().unwrap_or(0) as f64);
        }
        metrics::gauge!("orderflow_saga_oldest_in_flight_seconds").set(oldest.as_secs_f64());
    }
}

/// Aborts its task when dropped (the driver's loop ends or fails).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// A number in [0, 1), good enough for jitter.
fn rand_fraction() -> f64 {
    f64::from(Uuid::new_v4().as_u128() as u32) / f64::from(u32::MAX)
}
