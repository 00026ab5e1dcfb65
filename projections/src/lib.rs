//! orderflow's projections: the runtime that applies events exactly once in effect, the order
//! dashboard (PostgreSQL or SQLite), sales analytics (ClickHouse or SQLite), and rebuilds.
//!
//! # Map
//!
//! - [`Projection`] (`projection`): the trait every read model implements, with [`Batch`],
//!   [`Checkpoint`] and [`DeadLetter`]; [`ProjectedEvent`] (`event`) is what it applies.
//! - [`ReadDb`] (`control`): the SQL read database (PostgreSQL or SQLite through sqlx `Any`) and
//!   the control tables in it: the version registry, checkpoints, dead letters.
//! - `runtime`: [`run_from_kafka`] (a worker in a consumer group) and [`run_from_store`] (the
//!   embedded in-process subscription), both through [`apply_reliably`] (retries, dead letters).
//! - [`rebuild`] (`rebuild`): a new version beside the live one, from the store's global log,
//!   switched atomically; or a historical version `--until` a past point.
//! - [`dashboard`] and [`analytics`]: the two read models; [`catalog`]: every projection by
//!   name, with the sinks it writes to.
//! - [`cli`]: the `projections` binary's commands (also `orderflow projections`): workers,
//!   rebuilds, versions, status.
//! - `http`: how [`ProjectionError`] and the dashboard's query errors answer over HTTP.
//!
//! It depends on `event-schemas`, `event-store` (rebuilds read the global log through the
//! store's API) and `service-kit`, never on `write-side`.

pub mod admin;
pub mod analytics;
pub mod catalog;
pub mod cli;
mod control;
pub mod dashboard;
mod event;
mod http;
mod json_rows;
mod projection;
mod rebuild;
mod runtime;

pub use control::{
    DRAINED_FRESH_US, DbKind, HandOver, PartitionProgress, PartitionReport, ReadDb, VersionInfo, applied_position,
    from_i64, from_micros, lag_records, micros, save_checkpoints, save_dead_letters, to_i64,
};
pub use event::{Origin, ProjectedEvent, REBUILT_SOURCE, STORE_SOURCE, rebuilt_source, source_service, store_source};
pub use projection::{Batch, BulkLoad, BulkReport, Checkpoint, DeadLetter, Projection, ProjectionError, Unknown};
pub use rebuild::{RebuildOptions, RebuildProgress, RebuildReport, UntilPoint, rebuild};
pub use runtime::kafka::{KafkaOptions, run_from_kafka};
pub use runtime::store::{ServiceLog, run_from_store, run_from_stores};
pub use runtime::{ProjectionFactory, RunError, RunOptions, apply_reliably};

/// The cancellation reason codes the write side records (`OrderCancelled.reason_code`, the
/// place-order saga's `SagaFailed.reason_code`, ADR 0010), in the order the read side lists them.
/// Stable names; a cancellation recorded before they existed has an empty code, which the read
/// models show as none (the dashboard) or `unspecified` (the funnel).
pub const REASON_CODES: [&str; 6] = [
    "requested",
    "out_of_stock",
    "payment_declined",
    "payment_unavailable",
    "timed_out",
    "abandoned",
];
