//! orderflow's write side: the order domain (pure `decide` / `evolve` aggregates), command
//! handlers over the event store, the command HTTP API, and the relay from the store to Kafka.
//!
//! Built by the write-side issue; the foundation only reserves its place in the crate graph.
