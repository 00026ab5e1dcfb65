//! orderflow's projections: the runtime that applies events exactly once in effect, the order
//! dashboard (PostgreSQL or SQLite), sales analytics (ClickHouse or SQLite), and rebuilds.
//!
//! Built by the projections issue; the foundation only reserves its place in the crate graph.
//! It depends on `event-schemas` and `event-store`, never on `write-side`.
