//! orderflow's read API: HTTP queries over the read databases only, with read-only credentials.
//!
//! Built by the read-API issue; the foundation only reserves its place in the crate graph.
//! It depends on `event-schemas`, never on `write-side` nor on the event store.
