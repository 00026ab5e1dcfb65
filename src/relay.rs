//! `orderflow relay`: the relay on its own, for deployments that run the write side with
//! `--no-relay` or want the relay in a process of its own. Only one relay publishes at a time
//! (the store's lease); a second one waits and takes over when the first dies.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use event_store::{PgEventStore, StoreOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;
use write_side::relay::{self, RelayConfig, RelayStatus};

#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    /// PostgreSQL URL of the event store (its password is never logged).
    #[arg(long, env = "ORDERFLOW_EVENT_STORE_URL", hide_env_values = true)]
    database_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "ORDERFLOW_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// Partitions of each topic the relay creates when missing.
    #[arg(long, env = "ORDERFLOW_RELAY_PARTITIONS", default_value_t = 4)]
    partitions: i32,
    /// Events read and in flight per round.
    #[arg(long, env = "ORDERFLOW_RELAY_BATCH_SIZE", default_value_t = 5000)]
    batch_size: usize,
    /// Put before every topic name (for tests and shared brokers; empty in production).
    #[arg(long, env = "ORDERFLOW_RELAY_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
}

pub(crate) async fn run(args: RelayArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(args.partitions > 0, "--partitions must be at least 1");
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let options: PgConnectOptions = args
        .database_url
        .parse()
        .context("--database-url is not a PostgreSQL URL")?;
    tracing::info!(
        host = options.get_host(),
        port = options.get_port(),
        database = options.get_database().unwrap_or_default(),
        "connecting to the event store"
    );
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .context("cannot connect to the event store")?;
    let store = PgEventStore::open(pool, StoreOptions::default()).await?;
    let config = RelayConfig {
        brokers: args.kafka_brokers,
        partitions: args.partitions,
        batch_size: args.batch_size,
        topic_prefix: args.topic_prefix,
        ..RelayConfig::default()
    };
    let (status, mut watch) = tokio::sync::watch::channel(RelayStatus::default());
    tokio::spawn(async move {
        while watch.changed().await.is_ok() {
            let s = watch.borrow_and_update().clone();
            tracing::debug!(
                ready = s.ready,
                leader = s.leader,
                checkpoint = s.checkpoint,
                "relay status"
            );
        }
    });
    relay::run(store, config, status, shutdown).await?;
    tracing::info!("relay stopped");
    Ok(())
}
