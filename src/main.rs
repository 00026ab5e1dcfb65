//! `orderflow`: the command line. It parses and dispatches; each command's work is in its crate.
//!
//! - `serve` / `demo`: the whole platform in one process ([`embedded`]).
//! - `relay`: publish the event store's log to Kafka ([`relay::cli`]).
//! - `projections run|rebuild|list|status`: the read models' workers and rebuilds
//!   ([`projections::cli`]).
//! - `state` / `events`: one stream folded "as of", or its events, read from the store (`inspect`).
//! - `migrate`: create or upgrade the services' stores' and the read side's tables (`migrate`).
//! - `export` / `import` / `split-store`: a service's log moved between stores (`transfer`).
//! - `bench ...`: the platform's throughput and latency ([`bench`]).
//!
//! Every flag can also be set from an environment variable, and from the configuration file
//! of `--config` (the `service-kit` crate: command line > variable > file > default).

use clap::Subcommand;
use service_kit::cancel_on_signal;

mod inspect;
mod migrate;
mod transfer;

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
    Relay(relay::cli::RelayArgs),
    /// Run, rebuild and inspect the projections (the read models).
    #[command(subcommand)]
    Projections(projections::cli::ProjectionsCommand),
    /// Run the whole platform in one process, with no server to install (the embedded mode).
    ///
    /// The event store and the read models are SQLite files in --data-dir (kept across
    /// restarts); the projections follow the store in-process; commands, queries, admin
    /// (`POST /v1/projections/{name}/rebuild`) and operations endpoints share one port.
    /// Authentication is OFF in this mode: keep --listen on loopback.
    Serve(embedded::ServeArgs),
    /// `serve --demo`: seed an empty store with a simulated shop, then serve it (same flags).
    Demo(embedded::ServeArgs),
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
    /// Write one service's log to a file: every event as stored and its idempotency records.
    ///
    /// With `import`, how a deployment moves between SQLite and PostgreSQL without losing an
    /// event (ids, positions, times, metadata kept); also the service's backup. The file is
    /// JSON Lines ending with a count and a SHA-256, so a file cut short is refused.
    Export(transfer::ExportArgs),
    /// Add a file `export` wrote to a service's store (created or migrated if needed).
    ///
    /// The whole file is checked first: bad or truncated input imports nothing. Running it
    /// again adds nothing twice (a stopped import is finished by running it again); a store
    /// that holds other events is refused.
    Import(transfer::ImportArgs),
    /// Split the one store of old (every service's streams together) into the services' own.
    ///
    /// A data directory's events.db into its <service>.db files (events.db is then moved
    /// aside), or --from a database --to a URL with {service}. Keeps every event; safe to run
    /// again.
    SplitStore(transfer::SplitArgs),
}

/// glibc's allocator took a fifth of this process's CPU under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init();
    let cli: Cli = service_kit::parse("orderflow");
    match cli.command {
        Command::Bench(b) => bench::run(b).await,
        Command::Relay(args) => Ok(relay::cli::run(args, cancel_on_signal()).await?),
        Command::Projections(command) => projections::cli::run(command, cancel_on_signal()).await,
        Command::Serve(args) => embedded::run(args, cancel_on_signal()).await,
        Command::Demo(args) => embedded::run(args.with_demo(), cancel_on_signal()).await,
        Command::State(args) => inspect::state(args).await,
        Command::Events(args) => inspect::events(args).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Export(args) => transfer::export(args).await,
        Command::Import(args) => transfer::import(args).await,
        Command::SplitStore(args) => transfer::split(args).await,
    }
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
                service_kit::SECTIONS.contains(&sub.get_name()),
                "add `{}` to service_kit::SECTIONS, or write-side and read-api refuse its section",
                sub.get_name()
            );
        }
    }

    #[test]
    fn the_example_configuration_documents_every_flag_and_parses() {
        let text = std::fs::read_to_string(EXAMPLE).expect("read the example configuration");
        let missing = service_kit::undocumented_flags(&text, &Cli::command(), "orderflow", &["bench", "demo"]);
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
            let parsed = service_kit::try_parse_from::<Cli, _, _>("orderflow", argv, None);
            if let Err(e) = parsed {
                panic!("`orderflow {}` with {EXAMPLE}: {e}", args.join(" "));
            }
        }
    }
}
