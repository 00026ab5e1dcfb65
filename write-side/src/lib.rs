//! orderflow's write side: the order domain (pure `decide` / `evolve` aggregates), command
//! handlers over the event store, and the command HTTP API. Its binary, `write-side`, also runs
//! the relay (the `relay` crate) in its process unless told not to.
//!
//! - [`domain`]: the pure aggregates and [`domain::DomainError`]; placing an order reserves its
//!   stock atomically.
//! - `handler`: [`CommandHandler`] loads (snapshot, then events), decides, appends with the
//!   expected versions, retries a lost version race, replays idempotent repeats and snapshots
//!   every N events.
//! - [`http`]: the command HTTP API (axum): [`http::router`], [`http::serve`], bearer-token
//!   auth, the error format, `/health`, `/ready`, `/metrics`, `/openapi.json`.

mod aggregate_cache;
pub mod domain;
mod handler;
pub mod http;
mod stream_locks;

pub use handler::{
    CommandAnswer, CommandContext, CommandError, CommandHandler, HandlerOptions, Loaded, Snapshottable, new_events,
};
