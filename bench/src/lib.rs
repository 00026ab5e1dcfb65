//! orderflow's benchmarks (`orderflow bench ...`): each prints one JSON document on stdout and its
//! progress on stderr, and reports its figures beside a reference measured in the same run (the
//! HTTP floor, a raw COPY, the log read alone), since the machines they run on drift.
//!
//! # Map
//!
//! - `store`: appends per second and their latency, per adapter and concurrency.
//! - `commands`: commands over HTTP, and the floor (the same load against a server that stores
//!   nothing).
//! - `relay`: a backlog and a steady rate published to Kafka.
//! - `rebuild`: a seeded history rebuilt into the dashboard and the analytics, beside a raw
//!   COPY of the same rows.
//! - `reads`: the read API over a seeded read model, then freshness through Kafka.
//! - `freshness`: a running deployment's freshness over HTTP only.
//! - `saga`: orders through the whole place-order saga, embedded and distributed, beside the
//!   placement alone.
//! - `transfer`: a service's log exported from SQLite and imported into PostgreSQL, beside a
//!   raw COPY of the same rows.
//! - `console`: the operations console in headless Chromium: bytes per page, time to the
//!   orders' first rows, beside the API's own latency; `browser`: the WebDriver helper it
//!   shares with the console's browser tests.
//! - `overload`: the embedded `serve` past its capacity: shedding's admitted rate, latency and
//!   memory, beside its capacity and an unbounded `serve` in the same run.
//! - `soak`: minutes at a steady rate, embedded or distributed: whether resident memory, file
//!   descriptors, sockets and PostgreSQL connections stay flat, beside an idle `serve`.
//! - `scratch`: the databases a benchmark makes for itself and drops after; `load`: the HTTP
//!   client, histograms and the freshness probe the HTTP benchmarks share.
//!
//! Data comes from the simulated shop (`shop-sim`).

pub mod browser;
mod commands;
mod console;
mod freshness;
mod load;
mod overload;
mod reads;
mod rebuild;
mod relay;
mod saga;
mod scratch;
mod serve_child;
mod soak;
mod store;
mod transfer;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Bench {
    /// Append throughput and latency: N concurrent writers × events per append, per adapter.
    Store(store::StoreBench),
    /// Command throughput over HTTP: C concurrent clients sending one service's command to the
    /// write services (a PostgreSQL store each, in-process servers on loopback, auth off).
    Commands(commands::CommandsBench),
    /// Relay throughput and latency: a backlog published from the PostgreSQL store to the broker,
    /// then a steady append rate with append→acknowledged latency.
    Relay(relay::RelayBench),
    /// Projection rebuild throughput: a seeded shop history (PostgreSQL store) rebuilt into the
    /// dashboard (PostgreSQL) and the analytics (ClickHouse), beside a raw COPY of the same rows.
    Rebuild(rebuild::RebuildBench),
    /// Read API throughput and latency over a seeded read model (dashboard list, one order,
    /// revenue by day; closed loop, and the list at a fixed rate), then freshness: orders placed
    /// through the write side, relayed through Kafka, until the read API shows them.
    Reads(reads::ReadsBench),
    /// Freshness of a running deployment (e.g. `scripts/dev-up`), over HTTP only: orders placed
    /// at a fixed rate, each timed from the command's answer until the dashboard list shows it.
    Freshness(freshness::FreshnessBench),
    /// Orders through the whole place-order saga (placed → reserved → authorized → confirmed),
    /// embedded and distributed, beside the placement alone in the same run.
    Saga(saga::SagaBench),
    /// A service's log moved between stores: exported from SQLite, imported into PostgreSQL,
    /// exported again, beside a raw COPY of the same rows between PostgreSQL databases.
    Transfer(transfer::TransferBench),
    /// The operations console in headless Chromium over a seeded `serve`: bytes per page (cold
    /// loads) and time to the orders page's first 50 rows, beside the API's own latency.
    Console(console::ConsoleBench),
    /// The embedded `serve` offered `--factor` × its capacity: what it admits, the admitted
    /// orders' latency, how fast the refusals are (503 `overloaded`), peak memory, and the same
    /// load against a `serve` without a bound.
    Overload(overload::OverloadBench),
    /// Orders at a steady rate for minutes (embedded `serve`, or a running `scripts/dev-up`):
    /// every process's resident memory, file descriptors and sockets (and the deployment's
    /// PostgreSQL connections) sampled, and whether they stay flat after the warm-up, beside an
    /// idle `serve` sampled at the same instants.
    Soak(soak::SoakBench),
}

/// Runs one benchmark; its JSON goes to stdout.
pub async fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Store(b) => store::run(b).await,
        Bench::Commands(b) => commands::run(b).await,
        Bench::Relay(b) => relay::run(b).await,
        Bench::Rebuild(b) => rebuild::run(b).await,
        Bench::Reads(b) => reads::run(b).await,
        Bench::Freshness(b) => freshness::run(b).await,
        Bench::Transfer(b) => transfer::run(b).await,
        Bench::Saga(b) => saga::run(b).await,
        Bench::Console(b) => console::run(b).await,
        Bench::Overload(b) => overload::run(b).await,
        Bench::Soak(b) => soak::run(b).await,
    }
}
