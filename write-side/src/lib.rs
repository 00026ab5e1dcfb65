//! orderflow's write services: customers, inventory, orders and payments, each the owner of its
//! own event store. The domain (pure `decide` / `evolve` aggregates), the command pipeline over a
//! store, the flows of the orders service that call the other services, and the HTTP API of
//! whichever services a process hosts. Its binary, `write-side --service <name>`, runs one
//! service (and the relay of its store, unless told not to).
//!
//! - [`domain`]: the pure aggregates and [`domain::DomainError`].
//! - `handler`: [`CommandHandler`] over one service's store: loads (snapshot, then events),
//!   decides, appends with the expected versions, retries a lost version race, replays
//!   idempotent repeats and snapshots every N events.
//! - [`Services`] (`services`): the services a process hosts, each with its own handler;
//!   [`Local`] (`local`): all four in one process, calling each other in-process.
//! - [`orders`]: placing an order (stock reserved at the inventory service first) and
//!   cancelling one (stock released there after), the customers and products copy the orders
//!   service keeps, and where it finds a customer it has not seen yet.
//! - [`http`]: the HTTP API (axum) of the hosted services: [`http::router`], [`http::serve`],
//!   bearer-token auth, the error format, `/health`, `/ready`, `/metrics`, `/openapi.json`.

mod aggregate_cache;
pub mod domain;
pub mod gateway;
mod handler;
pub mod http;
mod local;
pub mod orders;
mod services;
mod stream_locks;

pub use handler::{
    CommandAnswer, CommandContext, CommandError, CommandHandler, HandlerOptions, Loaded, Snapshottable, new_events,
};
pub use local::{Local, LocalOptions};
pub use services::Services;
