//! `orderflow`: the command line that wires the crates together.
//!
//! - `bench store` / `bench commands`: the store's and the write side's throughput (`bench`).
//! - `relay`: publish the event store's log to Kafka (`relay`).
//! - `projections run|rebuild|list|status`: the read models' workers and rebuilds (`projections`).
//!
//! The subcommands that run the platform (`serve`, `relay`, `projections`, ...) arrive with the
//! issues that build them. Every flag can also be set from an environment variable.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod bench;
mod bench_reads;
mod bench_rebuild;
mod projections;
mod relay;
mod seed;
mod serve;

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
    /// Publish the event store's global log to Kafka (one relay publishes at a time).
    Relay(relay::RelayArgs),
    /// Run, rebuild and inspect the projections (the read models).
    #[command(subcommand)]
    Projections(projections::ProjectionsCommand),
    /// Run the whole platform in one process, with no server to install (the embedded mode).
    ///
    /// The event store and the read models are SQLite files in --data-dir (kept across
    /// restarts); the projections follow the store in-process; commands, queries, admin
    /// (`POST /v1/projections/{name}/rebuild`) and operations endpoints share one port.
    /// Authentication is OFF in this mode: keep --listen on loopback.
    Serve(serve::ServeArgs),
    /// `serve --demo`: seed an empty store with a simulated shop, then serve it (same flags).
    Demo(serve::ServeArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Bench(b) => bench::run(b).await,
        Command::Relay(args) => relay::run(args, shutdown_on_signal()).await,
        Command::Projections(command) => projections::run(command, shutdown_on_signal()).await,
        Command::Serve(args) => serve::run(args, shutdown_on_signal()).await,
        Command::Demo(args) => serve::run(args.with_demo(), shutdown_on_signal()).await,
    }
}

/// A token cancelled on Ctrl-C or SIGTERM.
fn shutdown_on_signal() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = tokio::signal::ctrl_c().await;
                    cancel.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        cancel.cancel();
    });
    token
}
