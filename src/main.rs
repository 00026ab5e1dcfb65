//! `orderflow`: the command line that wires the crates together.
//!
//! - `serve` / `demo`: the whole platform in one process, embedded (`serve`).
//! - `relay`: publish the event store's log to Kafka (`relay`).
//! - `projections run|rebuild|list|status`: the read models' workers and rebuilds (`projections`).
//! - `state` / `events`: one stream folded "as of", or its events, read from the store (`inspect`).
//! - `migrate`: create or upgrade the event store's and the read side's tables (`migrate`).
//! - `bench ...`: the platform's throughput and latency (`bench`).
//!
//! Every flag can also be set from an environment variable, and from the configuration file
//! of `--config` (the `service-config` crate: command line > variable > file > default).

use clap::Subcommand;
use tracing_subscriber::EnvFilter;

mod bench;
mod bench_freshness;
mod bench_reads;
mod bench_rebuild;
mod inspect;
mod migrate;
mod projections;
mod relay;
mod seed;
mod serve;
mod store_url;

/// orderflow: an event-sourced CQRS platform for order management.
#[derive(Debug, clap::Parser)]
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
    /// Print a stream's state folded from the event store, now or as it was (--as-of, --at).
    ///
    /// The fold the write side serves at `GET /v1/orders/{id}/state`, read from the store
    /// directly (no server needed). An order prints as that endpoint answers it; a customer,
    /// product or payment as {stream_id, version, position, recorded_at, state}. A stream that
    /// does not exist (at that point) is an error.
    State(inspect::StateArgs),
    /// Print a stream's events: envelope fields and the decoded event, as JSON.
    ///
    /// The shape of `GET /v1/streams/{id}/events`, read from the store directly (no server
    /// needed), every event by default rather than one page.
    Events(inspect::EventsArgs),
    /// Create or upgrade the tables of the event store and/or the read side (safe to repeat).
    ///
    /// The same migrations the services run when they start: the event store's (as write-side
    /// and serve), the projections' control tables, and each projection's live tables (as
    /// `projections run`), in ClickHouse too with --clickhouse-url. Prints what it did.
    Migrate(migrate::MigrateArgs),
}

/// glibc's allocator took a fifth of this process's CPU under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let cli: Cli = service_config::parse("orderflow");
    match cli.command {
        Command::Bench(b) => bench::run(b).await,
        Command::Relay(args) => relay::run(args, shutdown_on_signal()).await,
        Command::Projections(command) => projections::run(command, shutdown_on_signal()).await,
        Command::Serve(args) => serve::run(args, shutdown_on_signal()).await,
        Command::Demo(args) => serve::run(args.with_demo(), shutdown_on_signal()).await,
        Command::State(args) => inspect::state(args).await,
        Command::Events(args) => inspect::events(args).await,
        Command::Migrate(args) => migrate::run(args).await,
    }
}

/// The CLI's own output, a line on stdout. A reader that went away (`| head`) is not an error.
pub(crate) fn write_line(line: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// A token cancelled on Ctrl-C or SIGTERM.
fn shutdown_on_signal() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        service_config::shutdown_signal().await;
        tracing::info!("shutting down");
        cancel.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/orderflow.example.toml");

    #[test]
    fn every_subcommand_has_a_configuration_section() {
        for sub in Cli::command().get_subcommands() {
            assert!(
                service_config::SECTIONS.contains(&sub.get_name()),
                "add `{}` to service_config::SECTIONS, or write-side and read-api refuse its section",
                sub.get_name()
            );
        }
    }

    #[test]
    fn the_example_configuration_documents_every_flag_and_parses() {
        let text = std::fs::read_to_string(EXAMPLE).expect("read the example configuration");
        let missing = service_config::undocumented_flags(&text, &Cli::command(), "orderflow", &["bench", "demo"]);
        assert!(missing.is_empty(), "{EXAMPLE} does not document {missing:?}");

        let stream = "order-67e55044-10b1-426f-9247-bb680e5fe0c8";
        for args in [
            &["relay"][..],
            &["projections", "run"],
            &["projections", "rebuild", "order_dashboard"],
            &["projections", "list"],
            &["projections", "status"],
            &["serve"],
            &["demo"],
            &["migrate"],
            &["state", stream],
            &["events", stream],
        ] {
            let argv = ["orderflow", "--config", EXAMPLE].iter().chain(args);
            let parsed = service_config::try_parse_from::<Cli, _, _>("orderflow", argv, None);
            if let Err(e) = parsed {
                panic!("`orderflow {}` with {EXAMPLE}: {e}", args.join(" "));
            }
        }
    }
}
