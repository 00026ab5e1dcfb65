//! `write-side`: the command HTTP API of the distributed deployment, over the PostgreSQL event
//! store, with the relay that publishes the store's log to Kafka running beside it (only one
//! relay publishes at a time across every process; `--no-relay` leaves it to another). Every flag
//! is also an environment variable, so the same binary runs from a shell and from
//! `compose.yaml`, and a key of the `[write-side]` section of the configuration file of
//! `--config` (see `service-kit`; command line > variable > file > default). Authentication
//! is on unless `--no-auth` is given; with it on, at least one `--token` is required.
//!
//! Secrets stay out of the logs: the database URL is logged as host, port and database only,
//! and tokens are configured as SHA-256 hashes (`--help` hides the values of both variables).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgAction, Parser};
use relay::{RelayConfig, RelayStatus};
use service_kit::db::{self, DatabaseUrl, Migrate, PoolSettings};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use write_side::http::{Auth, DEFAULT_BODY_LIMIT_BYTES, HttpConfig, ServeConfig, TokenSpec};
use write_side::{CommandHandler, HandlerOptions};

/// orderflow's write side: commands over HTTP, appended to the PostgreSQL event store.
#[derive(Parser)]
#[command(name = "write-side", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ORDERFLOW_WRITE_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,

    /// PostgreSQL URL of the event store, e.g. postgres://orderflow:secret@127.0.0.1:5432/orderflow.
    #[arg(long, env = "ORDERFLOW_EVENT_STORE_URL", hide_env_values = true)]
    database_url: String,

    /// Most connections to the event store's database for reads; the group-commit writer has
    /// one more of its own.
    #[arg(long, env = "ORDERFLOW_EVENT_STORE_MAX_CONNECTIONS", default_value_t = 16)]
    database_max_connections: u32,

    /// A bearer token, as name:scope+scope:sha256hex (scopes: commands, admin; the hex SHA-256
    /// of the secret, e.g. `printf %s "$SECRET" | sha256sum`). Repeat the flag, or list them
    /// comma-separated in the variable.
    #[arg(
        long = "token",
        env = "ORDERFLOW_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        value_name = "NAME:SCOPES:SHA256"
    )]
    tokens: Vec<TokenSpec>,

    /// Serve without authentication (every request is `anonymous`): for demos only.
    #[arg(long, env = "ORDERFLOW_NO_AUTH")]
    no_auth: bool,

    /// Largest request body in bytes; a larger one is answered 413.
    #[arg(long, env = "ORDERFLOW_WRITE_BODY_LIMIT_BYTES", default_value_t = DEFAULT_BODY_LIMIT_BYTES)]
    body_limit_bytes: usize,

    /// Longest a request may take, in seconds; a slower one is answered 503 `timeout`.
    #[arg(long, env = "ORDERFLOW_WRITE_REQUEST_TIMEOUT_SECS", default_value_t = 10)]
    request_timeout_secs: u64,

    /// Store a snapshot of an aggregate every this many events of its stream (0: never).
    #[arg(long, env = "ORDERFLOW_SNAPSHOT_EVERY", default_value_t = 100)]
    snapshot_every: u64,

    /// Aggregates kept in memory between commands (0: load every aggregate from the store for
    /// every command). Another process's appends are detected at commit, so any number of
    /// write-side processes may share a store.
    #[arg(long, env = "ORDERFLOW_AGGREGATE_CACHE_ENTRIES", default_value_t = 100_000)]
    aggregate_cache_entries: usize,

    /// Create or upgrade the event store's tables on start.
    #[arg(
        long,
        env = "ORDERFLOW_WRITE_MIGRATE",
        default_value_t = true,
        action = ArgAction::Set,
        value_name = "BOOL"
    )]
    migrate: bool,

    /// Kafka bootstrap servers the relay publishes the event store's log to.
    #[arg(long, env = "ORDERFLOW_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,

    /// Partitions of each topic the relay creates when missing.
    #[arg(long, env = "ORDERFLOW_RELAY_PARTITIONS", default_value_t = 4)]
    relay_partitions: i32,

    /// Do not run the relay in this process (run `orderflow relay` or another write-side instead;
    /// only one relay publishes at a time anyway).
    #[arg(long, env = "ORDERFLOW_NO_RELAY")]
    no_relay: bool,
}

/// glibc's allocator took a fifth of this process's CPU under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = service_kit::parse("write-side");
    service_kit::telemetry::init();
    let auth = auth(&args)?;
    anyhow::ensure!(
        args.request_timeout_secs > 0,
        "--request-timeout-secs must be at least 1"
    );
    anyhow::ensure!(args.body_limit_bytes > 0, "--body-limit-bytes must be at least 1");
    anyhow::ensure!(
        args.no_relay || args.relay_partitions > 0,
        "--relay-partitions must be at least 1"
    );

    let url = DatabaseUrl::parse("--database-url", &args.database_url)?;
    anyhow::ensure!(url.postgres().is_some(), "--database-url is not a PostgreSQL URL");
    tracing::info!(store = %url, "connecting to the event store");
    let migrate = if args.migrate { Migrate::Yes } else { Migrate::No };
    let opened = db::open_event_store(&url, PoolSettings::new(args.database_max_connections), migrate).await?;
    let Some(store) = opened.postgres().cloned() else {
        anyhow::bail!("--database-url is not a PostgreSQL URL");
    };

    // One shutdown signal for everything: the HTTP server drains, the relay finishes its batch.
    let shutdown = service_kit::cancel_on_signal();
    if args.no_relay {
        tracing::info!("relay off (--no-relay)");
    }
    let relay = (!args.no_relay).then(|| start_relay(&args, store.clone(), &shutdown));

    let handler = CommandHandler::new(
        Arc::new(store),
        HandlerOptions {
            snapshot_every: args.snapshot_every,
            cache_capacity: args.aggregate_cache_entries,
            ..HandlerOptions::default()
        },
    );
    let mut http = HttpConfig::new(auth);
    http.body_limit_bytes = args.body_limit_bytes;
    http.request_timeout = Duration::from_secs(args.request_timeout_secs);
    http.relay = relay.as_ref().map(|(_, watch)| watch.clone());
    let config = ServeConfig {
        listen: args.listen,
        handler,
        http,
    };
    let served = write_side::http::serve(config, shutdown.clone().cancelled_owned()).await;
    shutdown.cancel();
    if let Some((relay, _)) = relay {
        stop_relay(relay).await;
    }
    served.with_context(|| format!("cannot serve on {}", args.listen))?;
    opened.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The bearer tokens, or no authentication with `--no-auth`.
fn auth(args: &Args) -> anyhow::Result<Auth> {
    if args.no_auth {
        tracing::warn!("authentication is OFF (--no-auth): every request is accepted as `anonymous`");
        return Ok(Auth::Disabled);
    }
    anyhow::ensure!(
        !args.tokens.is_empty(),
        "authentication is on but no token is configured: pass --token (or ORDERFLOW_TOKENS), or --no-auth"
    );
    let names: Vec<&str> = args.tokens.iter().map(TokenSpec::name).collect();
    tracing::info!(tokens = ?names, "bearer-token authentication on");
    Ok(Auth::tokens(args.tokens.iter().cloned()))
}

type RelayTask = JoinHandle<Result<(), relay::RelayError>>;

/// Starts the relay in this process; its status feeds `/ready`.
fn start_relay(
    args: &Args,
    store: event_store::PgEventStore,
    shutdown: &CancellationToken,
) -> (RelayTask, watch::Receiver<RelayStatus>) {
    let config = RelayConfig {
        brokers: args.kafka_brokers.clone(),
        partitions: args.relay_partitions,
        ..RelayConfig::default()
    };
    tracing::info!(brokers = %config.brokers, "starting the relay");
    let (status, watch) = watch::channel(RelayStatus::default());
    let task = tokio::spawn(relay::run(store, config, status, shutdown.clone()));
    (task, watch)
}

/// Waits for the relay to finish its batch, at most 15 s.
async fn stop_relay(relay: RelayTask) {
    match tokio::time::timeout(Duration::from_secs(15), relay).await {
        Ok(Ok(Ok(()))) => tracing::info!("relay stopped"),
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "relay failed"),
        Ok(Err(e)) => tracing::error!(error = %e, "relay task failed"),
        Err(_) => tracing::warn!("relay did not stop within 15 s"),
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/orderflow.example.toml");

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        service_kit::try_parse_from("write-side", [&"write-side"].into_iter().chain(args), None)
    }

    #[test]
    fn the_example_configuration_documents_every_flag_and_configures_the_write_side() {
        let args: Args =
            service_kit::parse_documented_example(EXAMPLE, "write-side", &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            args.listen,
            "0.0.0.0:8081".parse().expect("an address"),
            "[write-side], not [read-api]"
        );
        assert_eq!(args.database_url, "postgres://write_side@postgres:5432/orderflow");
        assert_eq!(args.kafka_brokers, "kafka:19092");
        assert!(args.migrate && !args.no_auth);
    }

    #[test]
    fn a_flag_wins_over_the_file_and_a_typo_in_the_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("write-side-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let file = dir.join("ok.toml");
        std::fs::write(
            &file,
            "[write-side]\ndatabase-url = \"postgres://db/x\"\nrelay-partitions = 8\nno-auth = true\n\
             [read-api]\nlisten = \"127.0.0.1:1\"\n",
        )
        .expect("write the file");
        let file = file.to_str().expect("a UTF-8 path");
        let args = parse(&["--config", file, "--relay-partitions", "2"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.relay_partitions, 2, "the flag over the file");
        assert!(args.no_auth, "the file over the default");
        assert_eq!(
            args.listen,
            "127.0.0.1:8081".parse().expect("an address"),
            "the default"
        );

        let typo = dir.join("typo.toml");
        std::fs::write(
            &typo,
            "[write-side]\ndatabase-url = \"postgres://db/x\"\nrelay-partitons = 8\n",
        )
        .expect("write the file");
        // `Args` has no `Debug` (it holds secrets): no `expect_err`.
        let Err(e) = parse(&["--config", typo.to_str().expect("a UTF-8 path")]) else {
            panic!("a typo is refused")
        };
        let message = e.to_string();
        assert!(
            message.contains("unknown key `relay-partitons` in [write-side]"),
            "{message}"
        );
        assert!(message.contains("did you mean `relay-partitions`?"), "{message}");
    }
}
