//! orderflow's write side: the order domain (pure `decide` / `evolve` aggregates), command
//! handlers over the event store, the command HTTP API, and the relay from the store to Kafka.
//!
//! - [`domain`]: the pure aggregates and [`domain::DomainError`]; placing an order reserves its stock atomically.

pub mod domain;
