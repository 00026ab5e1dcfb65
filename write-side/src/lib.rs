//! orderflow's write side: the order domain (pure `decide` / `evolve` aggregates), command
//! handlers over the event store, the command HTTP API, and the relay from the store to Kafka.
//!
//! - [`domain`]: the pure aggregates and [`domain::DomainError`]; placing an order reserves its
//!   stock atomically.
//! - [`relay`]: publishes the store's global log to Kafka (lease, checkpoint after ack).
//! - `handler`: [`CommandHandler`] loads (snapshot, then events), decides, appends with the
//!   expected versions, retries a lost version race, replays idempotent repeats and snapshots
//!   every N events.
//! - [`http`]: the command HTTP API (axum): [`http::router`], [`http::serve`], bearer-token
//!   auth, the error format, `/health`, `/ready`, `/metrics`, `/openapi.json`.

mod aggregate_cache;
pub mod domain;
mod handler;
pub mod http;
pub mod relay;
mod stream_locks;

pub use handler::{
    CommandAnswer, CommandContext, CommandError, CommandHandler, HandlerOptions, Loaded, Snapshottable, new_events,
};
