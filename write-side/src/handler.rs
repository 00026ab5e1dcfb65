//! Command handling: load, decide, append, with optimistic concurrency and idempotency.
//!
//! Every command goes the same way:
//! 1. If it carries an idempotency key the store has seen, answer the first result (or refuse
//!    the key if the request differs) without deciding anything.
//! 2. Load each aggregate it touches: the newest snapshot, then the events after it.
//! 3. Decide (pure, in [`crate::domain`]).
//! 4. Append what was decided in one commit, each stream with the version it was loaded at.
//!    A version conflict means someone else appended in between: reload and decide again, a
//!    bounded number of times, unless the caller pinned the version with `If-Match`.
//! 5. Every N events of a stream, store a snapshot of the new state (best effort: snapshots
//!    are a cache and never change an answer).
//!
//! Loads of the current state go through the [`AggregateCache`] first; its module says when an
//! entry is used as it is and when it is caught up with the store.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use event_schemas::{Category, DomainEvent};
use event_store::{
    AppendError, Commit, Committed, EventMetadata, EventStore, ExpectedVersion, IdempotencyKey, NewEvent, Position,
    RecordedEvent, Snapshot, StoreError, StreamAppend, Until,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::aggregate_cache::{AggregateCache, Entry};
use crate::domain::{
    Aggregate, CancelOrder, Customer, CustomerCommand, DomainError, Order, OrderCommand, Payment, PlaceOrder, Product,
    ProductCommand,
};
use crate::stream_locks::StreamLocks;

/// An aggregate whose state can be stored as a snapshot. Bump `STATE_VERSION` whenever the
/// state's shape changes: older snapshots are then ignored and the state is folded from events.
pub trait Snapshottable: Aggregate + Serialize + DeserializeOwned + Send + Sync + 'static {
    const STATE_VERSION: u32;
}

impl Snapshottable for Customer {
    const STATE_VERSION: u32 = 1;
}
impl Snapshottable for Product {
    const STATE_VERSION: u32 = 1;
}
impl Snapshottable for Order {
    const STATE_VERSION: u32 = 1;
}
impl Snapshottable for Payment {
    const STATE_VERSION: u32 = 1;
}

/// Tuning for the handler.
#[derive(Debug, Clone, Copy)]
pub struct HandlerOptions {
    /// How often a command that lost a version race is decided again before answering 409.
    pub conflict_retries: u32,
    /// Store a snapshot each time a stream passes a multiple of this many events (0: never).
    pub snapshot_every: u64,
    /// Aggregates kept in memory between commands (0: none; every command loads from the store).
    pub cache_capacity: usize,
}

impl Default for HandlerOptions {
    fn default() -> Self {
        HandlerOptions {
            conflict_retries: 16,
            snapshot_every: 100,
            cache_capacity: 100_000,
        }
    }
}

/// What the HTTP edge knows about a command besides its body.
#[derive(Debug, Clone, Default)]
pub struct CommandContext {
    pub metadata: EventMetadata,
    /// `Idempotency-Key` and a hash of the request it came with.
    pub idempotency: Option<IdempotencyKey>,
    /// `If-Match`: the version the caller saw; a different current version is a conflict.
    pub if_match: Option<u64>,
}

/// The answer to every command: where its events went. `position` is the consistency token a
/// read can wait for (`min_position`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandAnswer {
    pub stream_id: String,
    /// The stream's version after the command.
    pub version: u64,
    /// The highest global position the command wrote (or, if it changed nothing, the stream's
    /// last position).
    pub position: Position,
    /// True when this answer repeats the first answer to the same idempotency key.
    #[serde(skip)]
    pub replayed: bool,
}

/// Why a command did not happen. Nothing was appended in any case.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The domain refused it (invalid input, unknown id, illegal transition): the caller's to fix.
    #[error(transparent)]
    Rejected(#[from] DomainError),
    /// Someone else changed the stream (or `If-Match` was stale): reload and retry.
    #[error("stream {stream_id} is at version {actual}, but the command expected {expected}")]
    Conflict {
        stream_id: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// The idempotency key came before with a different request.
    #[error("idempotency key {key:?} was already used for a different request")]
    IdempotencyKeyReused { key: String },
    /// The event store failed; retry later.
    #[error("the event store is unavailable")]
    Store(#[source] StoreError),
    /// A stored event or snapshot could not be read: a bug or corruption, never the caller's.
    #[error("stored data of {stream_id} could not be read: {reason}")]
    Corrupt { stream_id: String, reason: String },
    /// The event store cannot apply this command's commit (KurrentDB and a commit over several
    /// streams, such as placing an order); nothing was appended.
    #[error("the event store cannot run this command: {0}")]
    Unsupported(String),
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        CommandError::Store(e)
    }
}

impl From<AppendError> for CommandError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::WrongExpectedVersion {
                stream_id,
                expected,
                actual,
            } => CommandError::Conflict {
                stream_id,
                expected,
                actual,
            },
            AppendError::IdempotencyKeyReused { key } => CommandError::IdempotencyKeyReused { key },
            AppendError::DuplicateEvent { event_id } => CommandError::Corrupt {
                stream_id: String::new(),
                reason: format!("event id {event_id} was generated twice"),
            },
            AppendError::Invalid(reason) => CommandError::Corrupt {
                stream_id: String::new(),
                reason,
            },
            AppendError::Unsupported(reason) => CommandError::Unsupported(reason),
            AppendError::Store(e) => CommandError::Store(e),
        }
    }
}

/// An aggregate as loaded: its state and where its stream stands.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    pub state: A,
    pub stream_id: String,
    /// Number of events folded in (0: the stream does not exist).
    pub version: u64,
    /// Position of the last event folded in (0 if none).
    pub position: Position,
    /// When that last event was recorded.
    pub recorded_at: Option<DateTime<Utc>>,
}

/// Runs commands against an event store.
#[derive(Clone)]
pub struct CommandHandler {
    store: Arc<dyn EventStore>,
    options: HandlerOptions,
    /// Serializes this process's commands per stream (see `stream_locks`).
    locks: Arc<StreamLocks>,
    cache: Arc<AggregateCache>,
}

const READ_PAGE: usize = 1000;

impl CommandHandler {
    pub fn new(store: Arc<dyn EventStore>, options: HandlerOptions) -> Self {
        CommandHandler {
            store,
            options,
            locks: Arc::default(),
            cache: Arc::new(AggregateCache::new(options.cache_capacity)),
        }
    }

    /// The store this handler appends to.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Loads an aggregate as it is now, or as it was at `until` (its newest snapshot at or
    /// before that point, then the events after it).
    pub async fn load<A: Snapshottable>(&self, id: Uuid, until: Option<Until>) -> Result<Loaded<A>, CommandError> {
        match until {
            Some(_) => self.load_from_store(id, until).await,
            None => Ok(self.load_now(id, false).await?.0),
        }
    }

    /// The aggregate as it is now. With `trust`, a cached entry is returned as it is, and a
    /// stream missing from the cache as new, without a round trip; the answer's flag says so:
    /// the caller must commit on it with its version expected, or load again without `trust`
    /// (see [`crate::aggregate_cache`]). Otherwise a cached entry is caught up with the store.
    async fn load_now<A: Snapshottable>(&self, id: Uuid, trust: bool) -> Result<(Loaded<A>, bool), CommandError> {
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
                let new = Loaded {
                    state: A::default(),
                    stream_id,
                    version: 0,
                    position: 0,
                    recorded_at: None,
                };
                return Ok((new, true));
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

    async fn load_from_store<A: Snapshottable>(
        &self,
        id: Uuid,
        until: Option<Until>,
    ) -> Result<Loaded<A>, CommandError> {
        let stream_id = A::CATEGORY.stream_id(id);
        let mut loaded = Loaded {
            state: A::default(),
            stream_id,
            version: 0,
            position: 0,
            recorded_at: None,
        };
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
    fn remember<A: Snapshottable>(&self, loaded: &Loaded<A>) {
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

    /// Runs a command on one aggregate.
    pub async fn execute<A>(
        &self,
        ctx: &CommandContext,
        id: Uuid,
        command: A::Command,
    ) -> Result<CommandAnswer, CommandError>
    where
        A: Snapshottable,
        A::Command: Clone,
    {
        let stream_id = A::CATEGORY.stream_id(id);
        if let Some(answer) = self.replay(ctx, &stream_id).await? {
            return Ok(answer);
        }
        let _held = self.locks.lock([stream_id.clone()]).await;
        let mut attempt = 0;
        let mut verify = false;
        loop {
            let (loaded, trusted) = self.load_now::<A>(id, !verify).await?;
            // Every answer but a commit is given on state checked against the store.
            let expected = match expectation(ctx, &loaded) {
                Err(_) if trusted => {
                    verify = true;
                    continue;
                }
                expected => expected?,
            };
            let events = match loaded.state.decide(command.clone()) {
                Err(_) if trusted => {
                    verify = true;
                    continue;
                }
                Ok(events) if events.is_empty() && trusted => {
                    verify = true;
                    continue;
                }
                Ok(events) => events,
                Err(e) => return self.rejected_or_replay(ctx, &stream_id, e).await,
            };
            if events.is_empty() {
                return Ok(unchanged(&loaded));
            }
            let commit = Commit {
                appends: vec![StreamAppend {
                    stream_id: stream_id.clone(),
                    expected,
                    events: new_events(&ctx.metadata, &events),
                }],
                idempotency: ctx.idempotency.clone(),
            };
            if let Some(committed) = self.commit(ctx, commit, &mut attempt).await? {
                self.after_commit(&loaded, &events, &committed, 0).await;
                return answer(&stream_id, &committed).ok_or_else(|| CommandError::Corrupt {
                    stream_id: stream_id.clone(),
                    reason: "the commit's answer does not name the stream it appended to".into(),
                });
            }
            // A conflict: decide again on what the store holds, not on "new stream".
            verify = true;
        }
    }

    /// Places an order: `OrderPlaced` and a stock reservation per line, in one commit across the
    /// order's and the products' streams.
    pub async fn place_order(&self, ctx: &CommandContext, command: PlaceOrder) -> Result<CommandAnswer, CommandError> {
        let stream_id = Category::Order.stream_id(command.order_id);
        if let Some(answer) = self.replay(ctx, &stream_id).await? {
            return Ok(answer);
        }
        // The streams it appends to: the order's and each line's product's (the customer's is
        // only read, so it is always caught up with the store).
        let streams = command
            .lines
            .iter()
            .map(|l| Category::Product.stream_id(l.product_id))
            .chain([stream_id.clone()]);
        let _held = self.locks.lock(streams).await;
        let mut attempt = 0;
        let mut verify = false;
        loop {
            // The aggregates are independent reads: load them concurrently.
            let ((order, order_trusted), (customer, _), (products, products_trusted)) = tokio::try_join!(
                self.load_now::<Order>(command.order_id, !verify),
                self.load_now::<Customer>(command.customer_id, false),
                self.load_products(command.lines.iter().map(|l| l.product_id), !verify),
            )?;
            let trusted = order_trusted || products_trusted;
            let expected = match expectation(ctx, &order) {
                Err(_) if trusted => {
                    verify = true;
                    continue;
                }
                expected => expected?,
            };
            let decision = match crate::domain::place_order(
                &order.state,
                &customer.state,
                products.values().map(|p| &p.state),
                command.clone(),
            ) {
                Err(_) if trusted => {
                    verify = true;
                    continue;
                }
                Ok(d) => d,
                Err(e) => return self.rejected_or_replay(ctx, &stream_id, e).await,
            };
            match self
                .commit_decision(ctx, &order, expected, &decision, &products, trusted, &mut attempt)
                .await?
            {
                Decided::Answered(answer) => return Ok(answer),
                Decided::Again => verify = true,
            }
        }
    }

    /// Cancels an order and releases its stock, in one commit.
    pub async fn cancel_order(
        &self,
        ctx: &CommandContext,
        command: CancelOrder,
    ) -> Result<CommandAnswer, CommandError> {
        let stream_id = Category::Order.stream_id(command.order_id);
        if let Some(answer) = self.replay(ctx, &stream_id).await? {
            return Ok(answer);
        }
        let _order = self.locks.lock([stream_id.clone()]).await;
        let mut attempt = 0;
        let mut verify = false;
        loop {
            let (order, order_trusted) = self.load_now::<Order>(command.order_id, !verify).await?;
            // Its products are known once the order is loaded; `product-…` sorts after
            // `order-…`, so taking them now keeps the one global order of `StreamLocks`.
            let _products = self
                .locks
                .lock(
                    order
                        .state
                        .lines
                        .iter()
                        .map(|l| Category::Product.stream_id(l.product_id)),
                )
                .await;
            let (products, products_trusted) = self
                .load_products(order.state.lines.iter().map(|l| l.product_id), !verify)
                .await?;
            let trusted = order_trusted || products_trusted;
            let expected = match expectation(ctx, &order) {
                Err(_) if trusted => {
                    verify = true;
                    continue;
                }
                expected => expected?,
            };
            let decision =
                match crate::domain::cancel_order(&order.state, products.values().map(|p| &p.state), command.clone()) {
                    Err(_) if trusted => {
                        verify = true;
                        continue;
                    }
                    Ok(d) => d,
                    Err(e) => return self.rejected_or_replay(ctx, &stream_id, e).await,
                };
            match self
                .commit_decision(ctx, &order, expected, &decision, &products, trusted, &mut attempt)
                .await?
            {
                Decided::Answered(answer) => return Ok(answer),
                Decided::Again => verify = true,
            }
        }
    }

    pub async fn customer(
        &self,
        ctx: &CommandContext,
        id: Uuid,
        c: CustomerCommand,
    ) -> Result<CommandAnswer, CommandError> {
        self.execute::<Customer>(ctx, id, c).await
    }

    pub async fn product(
        &self,
        ctx: &CommandContext,
        id: Uuid,
        c: ProductCommand,
    ) -> Result<CommandAnswer, CommandError> {
        self.execute::<Product>(ctx, id, c).await
    }

    pub async fn order(&self, ctx: &CommandContext, id: Uuid, c: OrderCommand) -> Result<CommandAnswer, CommandError> {
        self.execute::<Order>(ctx, id, c).await
    }

    /// Loads products (as [`Self::load_now`]); the flag says whether any came trusted from the
    /// cache.
    async fn load_products(
        &self,
        ids: impl Iterator<Item = Uuid>,
        trust: bool,
    ) -> Result<(BTreeMap<Uuid, Loaded<Product>>, bool), CommandError> {
        let ids: std::collections::BTreeSet<Uuid> = ids.collect();
        let loaded = futures::future::try_join_all(ids.iter().map(|&id| self.load_now::<Product>(id, trust))).await?;
        let trusted = loaded.iter().any(|(_, t)| *t);
        Ok((
            ids.into_iter().zip(loaded.into_iter().map(|(l, _)| l)).collect(),
            trusted,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    async fn commit_decision(
        &self,
        ctx: &CommandContext,
        order: &Loaded<Order>,
        expected: ExpectedVersion,
        decision: &crate::domain::OrderDecision,
        products: &BTreeMap<Uuid, Loaded<Product>>,
        trusted: bool,
        attempt: &mut u32,
    ) -> Result<Decided, CommandError> {
        // A stream the commit does not append to is not checked by it: a decision that leaves
        // out a trusted stream (a cancelled order's product that, as cached, holds no
        // reservation for it) is taken again on what the store holds.
        let appends_to_every_stream = !decision.order_events.is_empty()
            && products.keys().all(|id| {
                decision
                    .product_events
                    .iter()
                    .any(|(product, events)| product == id && !events.is_empty())
            });
        if trusted && !appends_to_every_stream {
            return Ok(Decided::Again);
        }
        if decision.order_events.is_empty() && decision.product_events.iter().all(|(_, e)| e.is_empty()) {
            return Ok(Decided::Answered(unchanged(order)));
        }
        let mut appends = Vec::new();
        if !decision.order_events.is_empty() {
            appends.push(StreamAppend {
                stream_id: order.stream_id.clone(),
                expected,
                events: new_events(&ctx.metadata, &decision.order_events),
            });
        }
        for (product_id, events) in &decision.product_events {
            let Some(product) = products.get(product_id) else {
                return Err(CommandError::Corrupt {
                    stream_id: order.stream_id.clone(),
                    reason: format!("decision touched product {product_id} that was not loaded"),
                });
            };
            if !events.is_empty() {
                appends.push(StreamAppend {
                    stream_id: product.stream_id.clone(),
                    expected: ExpectedVersion::Exact(product.version),
                    events: new_events(&ctx.metadata, events),
                });
            }
        }
        let commit = Commit {
            appends,
            idempotency: ctx.idempotency.clone(),
        };
        let Some(committed) = self.commit(ctx, commit, attempt).await? else {
            return Ok(Decided::Again);
        };
        let mut index = 0;
        if !decision.order_events.is_empty() {
            self.after_commit(order, &decision.order_events, &committed, index)
                .await;
            index += 1;
        }
        for (product_id, events) in &decision.product_events {
            if let (Some(product), false) = (products.get(product_id), events.is_empty()) {
                self.after_commit(product, events, &committed, index).await;
                index += 1;
            }
        }
        // A commit that released stock but changed nothing on the order still answers for it.
        let answer = answer(&order.stream_id, &committed).unwrap_or_else(|| CommandAnswer {
            stream_id: order.stream_id.clone(),
            version: order.version,
            position: committed.last_position(),
            replayed: committed.replayed,
        });
        Ok(Decided::Answered(answer))
    }

    /// Appends; `Ok(None)` asks the caller to reload and decide again after a conflict.
    async fn commit(
        &self,
        ctx: &CommandContext,
        commit: Commit,
        attempt: &mut u32,
    ) -> Result<Option<Committed>, CommandError> {
        let streams: Vec<String> = commit.appends.iter().map(|a| a.stream_id.clone()).collect();
        let e = match self.store.commit(commit).await {
            Ok(c) => return Ok(Some(c)),
            Err(e) => e,
        };
        // What the cache holds of these streams is stale (a conflict) or may be (a commit whose
        // outcome is unknown): load them from the store next time.
        self.cache.forget(streams.iter().map(String::as_str));
        match e {
            AppendError::WrongExpectedVersion { .. }
                if ctx.if_match.is_none() && *attempt < self.options.conflict_retries =>
            {
                *attempt += 1;
                // Spread the retries of writers that collided on the same stream.
                let jitter = u64::from(Uuid::new_v4().as_bytes()[0]) % (2 * u64::from(*attempt) + 1);
                tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
                Ok(None)
            }
            e => Err(e.into()),
        }
    }

    /// The first answer to this command's idempotency key, if the store has one.
    async fn replay(&self, ctx: &CommandContext, stream_id: &str) -> Result<Option<CommandAnswer>, CommandError> {
        let Some(key) = &ctx.idempotency else {
            return Ok(None);
        };
        let Some(stored) = self.store.idempotent_result(&key.key).await? else {
            return Ok(None);
        };
        if stored.request_hash != key.request_hash {
            return Err(CommandError::IdempotencyKeyReused { key: key.key.clone() });
        }
        let committed = Committed {
            appends: stored.appends,
            replayed: true,
        };
        Ok(answer(stream_id, &committed))
    }

    /// A refusal, unless a concurrent repeat of the same idempotent request won the race (its
    /// effect is why this one is refused): then the first request's answer.
    async fn rejected_or_replay(
        &self,
        ctx: &CommandContext,
        stream_id: &str,
        e: DomainError,
    ) -> Result<CommandAnswer, CommandError> {
        match self.replay(ctx, stream_id).await? {
            Some(answer) => Ok(answer),
            None => Err(CommandError::Rejected(e)),
        }
    }

    /// Keeps the stream's new state in the cache and, every N events, stores a snapshot of it.
    /// `index` is the stream's append in the commit.
    async fn after_commit<A: Snapshottable>(
        &self,
        before: &Loaded<A>,
        events: &[A::Event],
        committed: &Committed,
        index: usize,
    ) {
        let result = committed.appends.get(index).filter(|r| r.stream_id == before.stream_id);
        let (Some(result), false) = (result, committed.replayed) else {
            // A replayed key appended nothing now: what the stream holds is not known here.
            self.cache.forget([before.stream_id.as_str()]);
            return;
        };
        let state = events.iter().fold(before.state.clone(), |s, e| s.evolve(e));
        let state = Arc::new(state);
        self.cache.put(
            &result.stream_id,
            Entry {
                version: result.version,
                position: result.positions.last().copied().unwrap_or(before.position),
                recorded_at: Some(result.recorded_at),
                state: Arc::clone(&state) as Arc<dyn std::any::Any + Send + Sync>,
            },
        );
        let every = self.options.snapshot_every;
        if every == 0 || result.version / every == before.version / every {
            return;
        }
        let Ok(bytes) = serde_json::to_vec(&*state) else { return };
        let snapshot = Snapshot {
            stream_id: result.stream_id.clone(),
            version: result.version,
            position: result.positions.last().copied().unwrap_or(0),
            recorded_at: result.recorded_at,
            state_type: A::CATEGORY.name().to_owned(),
            state_version: A::STATE_VERSION,
            state: bytes,
        };
        if let Err(e) = self.store.save_snapshot(&snapshot).await {
            tracing::warn!(stream_id = %snapshot.stream_id, error = %e, "could not store a snapshot; loads fold from events");
        }
    }

    /// A stream's events from `from_version`, at most `limit`.
    pub async fn stream_events(
        &self,
        stream_id: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, CommandError> {
        Ok(self.store.read_stream(stream_id, from_version.max(1), limit).await?)
    }

    /// The global log after `after`, at most `limit`.
    pub async fn log(&self, after: Position, limit: usize) -> Result<Vec<RecordedEvent>, CommandError> {
        Ok(self.store.read_all(after, limit).await?)
    }
}

/// How a decision over several aggregates ended.
enum Decided {
    Answered(CommandAnswer),
    /// Decide again on what the store holds: someone else appended in between, or the decision
    /// leaves out of the commit a stream whose state was trusted from the cache.
    Again,
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

/// Domain events as the store takes them: encoded by `event-schemas`, each with a new event id
/// (UUID v7), now as the time they occurred, and the command's metadata.
pub fn new_events<E: Clone + Into<DomainEvent>>(metadata: &EventMetadata, events: &[E]) -> Vec<NewEvent> {
    let now = Utc::now();
    events
        .iter()
        .map(|e| {
            let encoded = e.clone().into().encode();
            NewEvent {
                event_id: Uuid::now_v7(),
                event_type: encoded.event_type.to_owned(),
                schema_version: encoded.schema_version,
                payload: encoded.payload,
                occurred_at: now,
                metadata: metadata.clone(),
            }
        })
        .collect()
}

fn expectation<A>(ctx: &CommandContext, loaded: &Loaded<A>) -> Result<ExpectedVersion, CommandError> {
    match ctx.if_match {
        Some(v) if v != loaded.version => Err(CommandError::Conflict {
            stream_id: loaded.stream_id.clone(),
            expected: ExpectedVersion::Exact(v),
            actual: loaded.version,
        }),
        _ if loaded.version == 0 => Ok(ExpectedVersion::NoStream),
        _ => Ok(ExpectedVersion::Exact(loaded.version)),
    }
}

fn unchanged<A>(loaded: &Loaded<A>) -> CommandAnswer {
    CommandAnswer {
        stream_id: loaded.stream_id.clone(),
        version: loaded.version,
        position: loaded.position,
        replayed: false,
    }
}

/// The answer for `stream_id` from a commit. A replay answers for the stream the first request
/// wrote: a create whose id the server generates gets a new id on every attempt, and only the
/// first attempt's stream exists (the commit's first append is always the command's own stream).
fn answer(stream_id: &str, committed: &Committed) -> Option<CommandAnswer> {
    let append = committed
        .appends
        .iter()
        .find(|a| a.stream_id == stream_id)
        .or_else(|| committed.appends.first().filter(|_| committed.replayed))?;
    Some(CommandAnswer {
        stream_id: append.stream_id.clone(),
        version: append.version,
        position: committed.last_position(),
        replayed: committed.replayed,
    })
}
