//! Command handling: [`CommandHandler`] runs the write side's commands against an event store,
//! with optimistic concurrency, idempotency, an in-memory aggregate cache and snapshots.
//!
//! Split by job:
//! - `pipeline`: the one way every command runs (load → decide → encode → commit → cache,
//!   snapshot, answer) and the one retry loop; where a command becomes events.
//! - `commands`: each command as data: what it loads and how it decides.
//! - `load`: an aggregate from the cache or the store (snapshot, then events).
//! - `error`: [`CommandError`].
//!
//! Loads of the current state go through the [`AggregateCache`] first; its module says when an
//! entry is used as it is and when it is caught up with the store.

mod commands;
mod error;
mod load;
mod pipeline;

use std::marker::PhantomData;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use event_store::{EventMetadata, EventStore, IdempotencyKey, Position, RecordedEvent, Until};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

pub use error::CommandError;
pub use pipeline::new_events;

use crate::aggregate_cache::AggregateCache;
use crate::domain::saga::Saga;
use crate::domain::{
    Aggregate, Customer, CustomerCommand, Order, OrderCommand, Payment, PaymentCommand, Product, ProductCommand,
};
use crate::stream_locks::StreamLocks;

/// An aggregate whose state can be stored as a snapshot. Bump `STATE_VERSION` whenever the
/// state's shape changes: older snapshots are then ignored and the state is folded from events.
pub trait Snapshottable: Aggregate<Event: Send + Sync> + Serialize + DeserializeOwned + Send + Sync + 'static {
    const STATE_VERSION: u32;
}

impl Snapshottable for Customer {
    const STATE_VERSION: u32 = 1;
}
impl Snapshottable for Product {
    const STATE_VERSION: u32 = 1;
}
impl Snapshottable for Order {
    /// 2: `Pending` (was `Placed`), `cancellation_reason_code`.
    const STATE_VERSION: u32 = 2;
}
impl Snapshottable for Payment {
    /// 2: voids (`void_reason`, `voided_before_authorization`).
    const STATE_VERSION: u32 = 2;
}
impl Snapshottable for Saga {
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

impl<A: Default> Loaded<A> {
    /// A stream with no events.
    fn new(stream_id: String) -> Self {
        Loaded {
            state: A::default(),
            stream_id,
            version: 0,
            position: 0,
            recorded_at: None,
        }
    }
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

    /// Runs a command on one aggregate.
    pub async fn execute<A>(
        &self,
        ctx: &CommandContext,
        id: Uuid,
        command: A::Command,
    ) -> Result<CommandAnswer, CommandError>
    where
        A: Snapshottable,
        A::Command: Clone + Send + Sync,
    {
        let command = commands::OnAggregate::<A> {
            id,
            command,
            aggregate: PhantomData,
        };
        self.run(ctx, &command).await
    }

    /// Appends `events`, decided elsewhere, as the first events of aggregate `id`'s stream; a
    /// stream that exists already is refused (`AlreadyExists`). For flows that call other
    /// services before the aggregate's own events can be decided (placing an order).
    pub async fn create<A>(
        &self,
        ctx: &CommandContext,
        id: Uuid,
        events: Vec<A::Event>,
    ) -> Result<CommandAnswer, CommandError>
    where
        A: Snapshottable,
    {
        self.run(ctx, &commands::Create::<A> { id, events }).await
    }

    /// Appends a new order's first events (decided elsewhere: its lines priced from the
    /// catalogue) and starts its saga, in one commit (ADR 0010). An order that exists already
    /// is refused (`AlreadyExists`).
    pub async fn place_with_saga(
        &self,
        ctx: &CommandContext,
        order_id: Uuid,
        order: Vec<event_schemas::OrderEvent>,
        start: crate::domain::saga::SagaCommand,
    ) -> Result<CommandAnswer, CommandError> {
        self.run(ctx, &commands::PlaceWithSaga { order_id, order, start }).await
    }

    /// Records of a saga, decided in turn, and when `order` is set a command on its order, in
    /// one commit; records the saga refuses on what the store holds are left out (see
    /// `SagaRecords`). Answers for the saga's stream.
    pub async fn saga_records(
        &self,
        ctx: &CommandContext,
        order_id: Uuid,
        order: Option<OrderCommand>,
        records: Vec<crate::domain::saga::SagaCommand>,
    ) -> Result<CommandAnswer, CommandError> {
        self.run(
            ctx,
            &commands::SagaRecords {
                order_id,
                order,
                records,
            },
        )
        .await
    }

    /// The first answer to `ctx`'s idempotency key if the store has one (the key reused with
    /// another request is an error), answering for `stream_id`: what a flow that calls other
    /// services checks before calling them.
    pub async fn replay_of(
        &self,
        ctx: &CommandContext,
        stream_id: String,
    ) -> Result<Option<CommandAnswer>, CommandError> {
        self.replay(ctx, &stream_id).await
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

    pub async fn payment(
        &self,
        ctx: &CommandContext,
        id: Uuid,
        c: PaymentCommand,
    ) -> Result<CommandAnswer, CommandError> {
        self.execute::<Payment>(ctx, id, c).await
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
