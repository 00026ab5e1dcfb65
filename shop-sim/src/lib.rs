//! A simulated shop: what demos and benchmarks need when "a million events" must look like a
//! real back office rather than noise.
//!
//! - [`seed`]: a realistic, valid history written straight to an event store, fast and
//!   deterministic (see its module doc).
//! - [`demo`]: the demo shop of `serve --demo`, seeded into an empty store only.
//! - [`live`]: a live shop at a steady rate of commands through the real services, whose
//!   place-order sagas (driven beside it) reserve, pay, confirm, capture and compensate.
//! - [`Rng`]: the one random generator of the shop and the benchmarks.
//!
//! Every event comes out of the write side's own decisions (the sagas' included), so the
//! history is valid by construction.

pub mod demo;
pub mod live;
mod rng;
pub mod seed;

pub use rng::Rng;
pub use seed::{SeedError, SeedOptions, SeedReport, seed, seed_with_progress};
