//! `orderflow`: the command line that wires the crates together.
//!
//! - `bench store`: append throughput and latency of each event-store adapter (`bench`).
//!
//! The subcommands that run the platform (`serve`, `relay`, `projections`, ...) arrive with the
//! issues that build them. Every flag can also be set from an environment variable.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod bench;

/// orderflow: an event-sourced CQRS platform for order management.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure the platform; every benchmark prints JSON on stdout and progress on stderr.
    #[command(subcommand)]
    Bench(bench::Bench),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Bench(b) => bench::run(b).await,
    }
}
