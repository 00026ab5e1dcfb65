//! `write-side --service <name>`: one write service of the distributed deployment (customers,
//! inventory, orders or payments), its HTTP API over its own PostgreSQL event store, with the
//! relay that publishes that store's log to Kafka running beside it (only one relay publishes at
//! a time across every process of the service; `--no-relay` leaves it to another). The orders
//! service also calls the customers, inventory and payments services (`--customers-url`,
//! `--inventory-url`, `--payments-url`, with `--service-token`), drives the place-order sagas
//! from its own store's log (`--saga-deadline`), and keeps its copy of customers and products
//! from their Kafka topics in its own database. The payments service asks the simulated payment
//! provider (`--gateway-*`). Every flag
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
use event_schemas::{Category, Service};
use projections::{KafkaOptions, ProjectionError, ReadDb, RunOptions};
use relay::{RelayConfig, RelayStatus};
use service_kit::auth::AuthArgs;
use service_kit::client::{ClientSettings, Secret, ServiceClient, Target};
use service_kit::db::{self, DatabaseUrl, Migrate, PoolSettings};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use write_side::gateway::{GatewaySettings, SimulatedGateway};
use write_side::http::{DEFAULT_BODY_LIMIT_BYTES, HttpConfig, HttpState, ServeConfig};
use write_side::orders::replica::{self, LiveReplica};
use write_side::orders::{Directory, Orders, SagaOptions};
use write_side::{CommandHandler, HandlerOptions, Services};

/// orderflow's write services: one service's commands over HTTP, appended to its own
/// PostgreSQL event store.
#[derive(Parser)]
#[command(name = "write-side", version, about)]
struct Args {
    /// The service this process runs: customers, inventory, orders or payments.
    #[arg(long, env = "ORDERFLOW_SERVICE")]
    service: Service,

    /// Address to listen on.
    #[arg(long, env = "ORDERFLOW_WRITE_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,

    /// PostgreSQL URL of the service's own event store, e.g.
    /// postgres://orders:secret@127.0.0.1:5432/orderflow_orders.
    #[arg(long, env = "ORDERFLOW_EVENT_STORE_URL", hide_env_values = true)]
    database_url: String,

    /// Most connections to the event store's database for reads; the group-commit writer has
    /// one more of its own.
    #[arg(long, env = "ORDERFLOW_EVENT_STORE_MAX_CONNECTIONS", default_value_t = 16)]
    database_max_connections: u32,

    #[command(flatten)]
    auth: AuthArgs,

    /// Largest request body in bytes; a larger one is answered 413.
    #[arg(long, env = "ORDERFLOW_WRITE_BODY_LIMIT_BYTES", default_value_t = DEFAULT_BODY_LIMIT_BYTES)]
    body_limit_bytes: usize,

    /// Longest a request may take, in seconds; a slower one is answered 503 `timeout`.
    #[arg(long, env = "ORDERFLOW_WRITE_REQUEST_TIMEOUT_SECS", default_value_t = 10)]
    request_timeout_secs: u64,

    #[command(flatten)]
    load: service_kit::http::LoadArgs,

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

    /// Do not run the relay in this process (run `relay` or another process of the service
    /// instead; only one relay publishes at a time anyway).
    #[arg(long, env = "ORDERFLOW_NO_RELAY")]
    no_relay: bool,

    /// Put before every topic name the relay publishes to and the orders service reads (for
    /// tests and shared brokers; empty in production).
    #[arg(long, env = "ORDERFLOW_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,

    #[command(flatten)]
    peers: Peers,

    #[command(flatten)]
    gateway: Gateway,
}

/// What the orders service needs of the other services.
#[derive(clap::Args)]
struct Peers {
    /// The inventory service's base URL (orders: stock is reserved there).
    #[arg(long, env = "ORDERFLOW_INVENTORY_URL", value_name = "URL")]
    inventory_url: Option<String>,

    /// The customers service's base URL (orders: asked for a customer its copy has not seen).
    #[arg(long, env = "ORDERFLOW_CUSTOMERS_URL", value_name = "URL")]
    customers_url: Option<String>,

    /// The payments service's base URL (orders: the saga authorizes, captures, voids and
    /// refunds there).
    #[arg(long, env = "ORDERFLOW_PAYMENTS_URL", value_name = "URL")]
    payments_url: Option<String>,

    /// How long an order may stay pending before its saga cancels it (`timed_out`, or
    /// `payment_unavailable`): e.g. 15m, 30s. Recorded in each saga when it starts.
    #[arg(long, env = "ORDERFLOW_SAGA_DEADLINE", default_value = "15m", value_parser = service_kit::cli::parse_duration)]
    saga_deadline: Duration,

    /// The bearer token the orders service sends to the other services (scopes `commands` and
    /// `service`).
    #[arg(long, env = "ORDERFLOW_SERVICE_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    service_token: Option<String>,

    /// Longest a call to another service may take, in milliseconds, per attempt.
    #[arg(long, env = "ORDERFLOW_SERVICE_TIMEOUT_MS", default_value_t = 2000)]
    service_timeout_ms: u64,

    /// The orders service's database for its copy of customers and products (a PostgreSQL URL
    /// or sqlite://path): its own, apart from its event store, like any projection's.
    #[arg(long, env = "ORDERFLOW_REPLICA_DB_URL", hide_env_values = true, value_name = "URL")]
    replica_db_url: Option<String>,

    /// The orders service's consumer group for its copy of customers and products.
    #[arg(long, env = "ORDERFLOW_REPLICA_GROUP", default_value = "orderflow.orders.replica")]
    replica_group: String,
}

/// The payments service's simulated payment provider (changed at run time by `PUT /v1/gateway`).
#[derive(clap::Args)]
struct Gateway {
    /// The share of authorizations the simulated provider declines, from 0 to 1 (which ones
    /// is a function of the payment id).
    #[arg(long, env = "ORDERFLOW_GATEWAY_DECLINE_RATE", default_value_t = 0.0)]
    gateway_decline_rate: f64,

    /// How long each call to the simulated provider takes, in milliseconds.
    #[arg(long, env = "ORDERFLOW_GATEWAY_LATENCY_MS", default_value_t = 0)]
    gateway_latency_ms: u64,

    /// Start with the simulated provider down (every call fails until changed).
    #[arg(long, env = "ORDERFLOW_GATEWAY_UNAVAILABLE")]
    gateway_unavailable: bool,
}

/// glibc's allocator took a fifth of this process's CPU under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = service_kit::parse("write-side");
    service_kit::telemetry::init();
    let auth = args.auth.auth()?;
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
    tracing::info!(service = %args.service, store = %url, "connecting to the service's event store");
    let migrate = if args.migrate { Migrate::Yes } else { Migrate::No };
    let opened = db::open_event_store(&url, PoolSettings::new(args.database_max_connections), migrate).await?;
    let Some(store) = opened.postgres().cloned() else {
        anyhow::bail!("--database-url is not a PostgreSQL URL");
    };
    // A store that holds another service's streams is the one store of old (or another
    // service's): serving it would write this service's events beside theirs.
    if let Some(stream) = opened.foreign_stream(args.service).await? {
        anyhow::bail!(
            "the event store {url} holds {stream}, which is not the {service} service's: it is a store from \
             before every service had its own (or another service's). Split it into the services' stores \
             with `orderflow split-store --from <its URL> --to <a URL with {{service}}>`, then give the \
             {service} service its own",
            service = args.service
        );
    }

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
    http.in_flight = Some(args.load.limit());
    http.relay = relay.as_ref().map(|(_, watch)| watch.clone());
    let gateway = GatewaySettings {
        decline_rate: args.gateway.gateway_decline_rate,
        latency_ms: args.gateway.gateway_latency_ms,
        unavailable: args.gateway.gateway_unavailable,
    };
    gateway.validate().map_err(|e| anyhow::anyhow!("--gateway-*: {e}"))?;
    let mut state = HttpState::new(Services::single(args.service, handler.clone()), http)
        .with_simulated_gateway(SimulatedGateway::new(gateway));
    let mut replica = None;
    let mut sagas = None;
    if args.service == Service::Orders {
        let (orders, driver, runner) = orders(&args, handler, &shutdown).await?;
        state = state.with_orders(orders);
        replica = Some(runner);
        sagas = Some(tokio::spawn(driver.run(shutdown.clone())));
    }
    let config = ServeConfig {
        listen: args.listen,
        state,
    };
    let served = write_side::http::serve(config, shutdown.clone().cancelled_owned()).await;
    shutdown.cancel();
    let relay_stopped_cleanly = match relay {
        Some((relay, _)) => stop_relay(relay).await,
        None => true,
    };
    if let Some(replica) = replica {
        stop_task("the copy of customers and products", replica).await;
    }
    if let Some(sagas) = sagas
        && let Err(e) = sagas.await
    {
        tracing::error!(error = %e, "the saga driver panicked");
    }
    served.with_context(|| format!("cannot serve on {}", args.listen))?;
    opened.close().await;
    anyhow::ensure!(relay_stopped_cleanly, "the relay failed; see the log above");
    tracing::info!("stopped");
    Ok(())
}

/// The orders service's flows (clients of customers, inventory and payments, its copy of
/// customers and products), its saga driver, and the task that keeps the copy up from Kafka.
async fn orders(
    args: &Args,
    handler: CommandHandler,
    shutdown: &CancellationToken,
) -> anyhow::Result<(
    Orders,
    write_side::orders::saga::Driver,
    JoinHandle<Result<(), ProjectionError>>,
)> {
    let peer = |name: &str, flag: &str, base: &Option<String>| -> anyhow::Result<ServiceClient> {
        let base = base
            .as_deref()
            .with_context(|| format!("the orders service needs {flag}"))?;
        let mut settings = ClientSettings::new(name, Target::http(base).with_context(|| flag.to_owned())?);
        settings.token = args.peers.service_token.clone().map(Secret::new);
        settings.timeout = Duration::from_millis(args.peers.service_timeout_ms.max(1));
        Ok(ServiceClient::new(settings)?)
    };
    let inventory = peer("inventory", "--inventory-url", &args.peers.inventory_url)?;
    let customers = peer("customers", "--customers-url", &args.peers.customers_url)?;
    let payments = peer("payments", "--payments-url", &args.peers.payments_url)?;
    let replica_url = args
        .peers
        .replica_db_url
        .as_deref()
        .context("the orders service needs --replica-db-url: the database of its copy of customers and products")?;
    let replica_url = DatabaseUrl::parse("--replica-db-url", replica_url)?;
    tracing::info!(database = %replica_url, "the copy of customers and products");
    let replica_db = ReadDb::open(&replica_url, PoolSettings::new(4)).await?;
    replica_db.migrate().await?;
    let version = replica_db.ensure_live(replica::NAME, 1).await?;
    projections::Projection::prepare(&replica::Replica::new(replica_db.clone(), version)).await?;
    let options = KafkaOptions {
        brokers: args.kafka_brokers.clone(),
        group_id: args.peers.replica_group.clone(),
        topics: [Category::Customer, Category::Product]
            .iter()
            .map(|c| format!("{}{}", args.topic_prefix, c.topic()))
            .collect(),
        run: RunOptions::default(),
        session_timeout: Duration::from_secs(10),
    };
    let runner = tokio::spawn(projections::run_from_kafka(
        replica_db.clone(),
        replica::factory(replica_db.clone()),
        options,
        shutdown.clone(),
    ));
    let directory = Directory::new(LiveReplica::new(replica_db), customers.clone(), inventory.clone());
    let peers = write_side::orders::Peers {
        customers,
        inventory,
        payments,
    };
    let saga = SagaOptions {
        deadline: args.peers.saga_deadline,
        ..SagaOptions::default()
    };
    tracing::info!(deadline_secs = saga.deadline.as_secs(), "the place-order saga");
    let (orders, driver) = Orders::new(handler, directory, peers, saga);
    Ok((orders, driver, runner))
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
        topic_prefix: args.topic_prefix.clone(),
        ..RelayConfig::default()
    };
    tracing::info!(brokers = %config.brokers, "starting the relay");
    let (status, watch) = watch::channel(RelayStatus::default());
    // The relay retries what an outage causes; if it still stops with an error, the service
    // stops too (and exits with an error), so that its supervisor starts it again: a service
    // that takes commands no relay publishes would starve every reader without saying so.
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let result = relay::run(store, config, status, shutdown.clone()).await;
            if let Err(e) = &result {
                tracing::error!(error = %service_kit::error_chain(e), "the relay stopped; stopping the service");
                shutdown.cancel();
            }
            result
        }
    });
    (task, watch)
}

/// Waits for the relay to finish its batch, at most 15 s; answers whether it stopped cleanly.
async fn stop_relay(relay: RelayTask) -> bool {
    stop_task("the relay", relay).await
}

/// Waits for a background task to end, at most 15 s; answers whether it stopped cleanly.
async fn stop_task<E: std::fmt::Display>(what: &str, task: JoinHandle<Result<(), E>>) -> bool {
    match tokio::time::timeout(Duration::from_secs(15), task).await {
        Ok(Ok(Ok(()))) => {
            tracing::info!("{what} stopped");
            true
        }
        Ok(Ok(Err(e))) => {
            tracing::error!(error = %e, "{what} failed");
            false
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "{what}: the task failed");
            false
        }
        Err(_) => {
            tracing::warn!("{what} did not stop within 15 s");
            true
        }
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
        assert_eq!(args.service, Service::Orders);
        assert_eq!(args.database_url, "postgres://orders@postgres:5432/orderflow_orders");
        assert_eq!(args.kafka_brokers, "kafka:19092");
        assert_eq!(args.peers.inventory_url.as_deref(), Some("http://inventory:8084"));
        assert!(args.migrate && !args.auth.no_auth);
    }

    #[test]
    fn a_flag_wins_over_the_file_and_a_typo_in_the_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("write-side-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let file = dir.join("ok.toml");
        std::fs::write(
            &file,
            "[write-side]\nservice = \"payments\"\ndatabase-url = \"postgres://db/x\"\nrelay-partitions = 8\nno-auth = true\n\
             [read-api]\nlisten = \"127.0.0.1:1\"\n",
        )
        .expect("write the file");
        let file = file.to_str().expect("a UTF-8 path");
        let args = parse(&["--config", file, "--relay-partitions", "2"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.relay_partitions, 2, "the flag over the file");
        assert!(args.auth.no_auth, "the file over the default");
        assert_eq!(args.service, Service::Payments);
        assert_eq!(
            args.listen,
            "127.0.0.1:8081".parse().expect("an address"),
            "the default"
        );

        let typo = dir.join("typo.toml");
        std::fs::write(
            &typo,
            "[write-side]\nservice = \"payments\"\ndatabase-url = \"postgres://db/x\"\nrelay-partitons = 8\n",
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
