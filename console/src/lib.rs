//! orderflow's operations console: the browser pages, and the process that serves them in the
//! distributed deployment.
//!
//! The pages (`assets/`: a plain-JavaScript single-page app and the vendored chart library, see
//! ADR 0011) are compiled into the binary and served gzipped with ETags by [`assets`]. The
//! embedded `orderflow serve` merges [`assets`] into its one router, where every API the pages
//! call already is. Distributed, [`proxy::router`] serves the same pages on one origin and
//! forwards the pages' requests to the read API, the services and the projections worker
//! ([`proxy::Upstreams`]); the `console` binary runs it.

mod assets;
pub mod proxy;

pub use assets::{routes as assets, sizes as asset_sizes};
