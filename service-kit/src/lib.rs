//! What every orderflow program does the same way, written once: the services (write side,
//! relay, projection workers, read API) and the `orderflow` CLI all start and stop through it.
//!
//! # Map
//!
//! - [`archive`]: a service's log moved between stores with nothing lost (`orderflow export`,
//!   `import`, `split-store`): the file format, its checks, and the copy.
//! - [`cli`]: a command line's own output, lines on stdout and progress bars.
//! - [`config`]: the one configuration file format (TOML, keys = long flag names), layered under
//!   clap: command line > environment variable > file > default.
//! - [`db`]: typed connection settings. [`db::DatabaseUrl`] reads a `postgres://` URL, a
//!   `sqlite://` URL or a path and shows it without its password; [`db::PoolSettings`] sizes a
//!   pool. Every pool of every program is built here, and an event store is opened from a URL
//!   in one place ([`db::open_event_store`]).
//! - [`http`]: the HTTP edge every service puts in front of its routes: one error answer
//!   ([`http::ApiError`], `{"error": {"code", "message", "details"}}`), one middleware
//!   ([`http::edge`]: correlation and request ids, span, timeout, panic → 500, metrics per
//!   route), the operations handlers, and [`http::serve_on`] (graceful drain with a deadline).
//! - [`auth`]: bearer tokens stored as SHA-256 hashes, with scopes (`read`, `commands`,
//!   `admin`, `service`), as an axum middleware.
//! - [`client`]: calls between services ([`client::ServiceClient`], one per target): JSON over
//!   HTTP or in-process to the target's router, with the caller's correlation and causation
//!   ids, a bearer token, retries of what is safe to repeat, a circuit breaker per target, and
//!   [`client::ClientError`] mapped to the error answer.
//! - [`metrics`]: the process's one Prometheus recorder ([`metrics::prometheus_handle`]).
//! - [`telemetry`]: the `tracing` subscriber every binary installs.
//! - [`shutdown`]: Ctrl-C and SIGTERM as a future or a `CancellationToken`.
//!
//! Nothing here knows the order domain: it depends on `event-store` to open and copy a store,
//! and on `event-schemas` for which service owns which streams.

pub mod archive;
pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod db;
pub mod http;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;

pub use config::{
    CONFIG_ENV, CONFIG_FLAG, ConfigError, ConfigFile, SECTIONS, config_arg, parse, parse_documented_example,
    parse_subcommand, try_parse_from, try_parse_subcommand_from, undocumented_flags,
};
pub use http::chain as error_chain;
pub use shutdown::{cancel_on_signal, shutdown_signal};
