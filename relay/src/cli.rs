//! The relay on its own (`relay`, or `orderflow relay`), for deployments that run the write side
//! with `--no-relay` or want the relay in a process of its own. Only one relay publishes at a time
//! (the store's lease); a second one waits and takes over when the first dies.

use clap::Args;
use service_kit::db::{self, DatabaseUrl, Migrate, PoolSettings};
use tokio_util::sync::CancellationToken;

use crate::{RelayConfig, RelayStatus};

/// Why the relay could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Url(#[from] db::UrlError),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("the relay failed")]
    Relay(#[from] crate::RelayError),
}

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// PostgreSQL URL of the event store (its password is never logged).
    #[arg(long, env = "ORDERFLOW_EVENT_STORE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "ORDERFLOW_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Partitions of each topic the relay creates when missing.
    #[arg(long, env = "ORDERFLOW_RELAY_PARTITIONS", default_value_t = 4)]
    pub partitions: i32,
    /// Events read and in flight per round.
    #[arg(long, env = "ORDERFLOW_RELAY_BATCH_SIZE", default_value_t = 5000)]
    pub batch_size: usize,
    /// Put before every topic name (for tests and shared brokers; empty in production).
    #[arg(long, env = "ORDERFLOW_RELAY_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
}

/// Opens the event store of `args` and runs the relay until `shutdown`.
pub async fn run(args: RelayArgs, shutdown: CancellationToken) -> Result<(), CliError> {
    if args.partitions <= 0 {
        return Err(CliError::Invalid("--partitions must be at least 1".into()));
    }
    if args.batch_size == 0 {
        return Err(CliError::Invalid("--batch-size must be at least 1".into()));
    }
    let url = DatabaseUrl::parse("--database-url", &args.database_url)?;
    if url.postgres().is_none() {
        return Err(CliError::Invalid(
            "--database-url: the relay publishes a PostgreSQL event store (the embedded SQLite store is followed in-process)"
                .into(),
        ));
    }
    tracing::info!(store = %url, "connecting to the event store");
    let opened = db::open_event_store(&url, PoolSettings::WORKER, Migrate::No).await?;
    let Some(store) = opened.postgres().cloned() else {
        return Err(CliError::Invalid("--database-url is not a PostgreSQL URL".into()));
    };
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
    crate::run(store, config, status, shutdown).await?;
    opened.close().await;
    tracing::info!("relay stopped");
    Ok(())
}
