//! The `read-api` binary: the read API against the read databases, with read-only credentials.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use projections::ReadDb;
use read_api::{ReadConfig, ReadState};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// orderflow's read API: dashboard, analytics and projection status over HTTP, from the read
/// databases only (never the event store). Give it read-only credentials.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ORDERFLOW_READ_LISTEN", default_value = "127.0.0.1:8082")]
    listen: SocketAddr,
    /// The read database, with a role that can only SELECT: `postgres://reader:...@host/orderflow_read`
    /// (or `sqlite://path`). Its password is never logged.
    #[arg(long, env = "ORDERFLOW_READ_API_DB_URL", hide_env_values = true)]
    read_db_url: String,
    /// ClickHouse's HTTP URL (the analytics); without it the analytics are read from the read database.
    #[arg(long, env = "ORDERFLOW_CLICKHOUSE_URL")]
    clickhouse_url: Option<String>,
    /// ClickHouse database of the analytics.
    #[arg(long, env = "ORDERFLOW_CLICKHOUSE_DATABASE", default_value = "orderflow")]
    clickhouse_database: String,
    /// ClickHouse user (a read-only one).
    #[arg(long, env = "ORDERFLOW_READ_API_CLICKHOUSE_USER", default_value = "default")]
    clickhouse_user: String,
    /// ClickHouse password (never logged).
    #[arg(
        long,
        env = "ORDERFLOW_READ_API_CLICKHOUSE_PASSWORD",
        hide_env_values = true,
        default_value = ""
    )]
    clickhouse_password: String,
    /// Longest wait for `min_position`, in milliseconds.
    #[arg(long, env = "ORDERFLOW_READ_WAIT_MS", default_value_t = 2000)]
    wait_ms: u64,
    /// Longest a request may take, in milliseconds.
    #[arg(long, env = "ORDERFLOW_READ_TIMEOUT_MS", default_value_t = 10_000)]
    timeout_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let db = ReadDb::connect(&args.read_db_url, 16)
        .await
        .context("cannot connect to the read database")?;
    let clickhouse = args.clickhouse_url.as_ref().map(|url| {
        clickhouse::Client::default()
            .with_url(url)
            .with_database(&args.clickhouse_database)
            .with_user(&args.clickhouse_user)
            .with_password(&args.clickhouse_password)
    });
    let state = ReadState::new(
        db,
        clickhouse,
        ReadConfig {
            wait: Duration::from_millis(args.wait_ms),
            timeout: Duration::from_millis(args.timeout_ms),
        },
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, "read-api serving");
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        signal.cancel();
    });
    read_api::serve(listener, read_api::router(state), shutdown).await?;
    tracing::info!("read-api stopped");
    Ok(())
}
