//! The contract tests of `event-schemas`, in one test binary.
//!
//! - `samples`: one fixed event of every type (deterministic ids), and a fixed envelope.
//! - `fixtures`: the committed payloads in `fixtures/v{n}/` still decode to the samples.
//! - `round_trip`: property tests, domain value → bytes → the same value.
//! - `errors`: bad input gives the right [`event_schemas::DecodeError`].
//! - `upcasting`: a pretend schema change, to prove the upcaster chain.
//! - `published`: what each service publishes, pinned in `contracts/<service>.txt`.

#![allow(clippy::unwrap_used)]

mod errors;
mod fixtures;
mod published;
mod round_trip;
mod samples;
mod upcasting;
