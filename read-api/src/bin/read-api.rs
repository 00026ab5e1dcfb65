//! The `read-api` binary: the read API against the read databases, with read-only credentials.
//!
//! Every flag is also an environment variable and a key of the `[read-api]` section of the
//! configuration file of `--config` (see `service-kit`; command line > variable > file >
//! default). Secrets (the database URL, the ClickHouse password) are never logged.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use projections::ReadDb;
use read_api::{ReadConfig, ReadState};
use service_kit::db::{DatabaseUrl, PoolSettings};

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
    #[arg(long, env = "ORDERFLOW_CLICKHOUSE_URL", hide_env_values = true)]
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
    /// Who may read: every `/v1/...` route needs a token with scope `read` (the dashboard holds
    /// customers' names and e-mails); `/health`, `/ready` and `/metrics` stay open.
    #[command(flatten)]
    auth: service_kit::auth::AuthArgs,
    #[command(flatten)]
    load: service_kit::http::LoadArgs,
}

/// glibc's allocator took a fifth of this process's CPU under load (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init();
    let args: Args = service_kit::parse("read-api");
    let auth = args.auth.auth()?;
    let url = DatabaseUrl::parse("--read-db-url", &args.read_db_url)?;
    tracing::info!(read_db = %url, "connecting to the read database");
    let db = ReadDb::open(&url, PoolSettings::SERVICE)
        .await
        .context("cannot connect to the read database")?;
    let clickhouse = args.clickhouse_url.as_ref().map(|url| {
        clickhouse::Client::default()
            .with_url(url)
            .with_database(&args.clickhouse_database)
            .with_user(&args.clickhouse_user)
            .with_password(&args.clickhouse_password)
    });
    let config = ReadConfig {
        wait: Duration::from_millis(args.wait_ms),
        timeout: Duration::from_millis(args.timeout_ms),
        in_flight: Some(args.load.limit()),
    };
    let state = ReadState::new(db, clickhouse, config.clone()).with_auth(auth);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let shutdown = service_kit::cancel_on_signal();
    read_api::serve(listener, read_api::router(state), &config, shutdown).await?;
    tracing::info!("read-api stopped");
    Ok(())
}

#[cfg(test)]
mod tests {

    use super::*;

    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/orderflow.example.toml");

    #[test]
    fn the_example_configuration_documents_every_flag_and_configures_the_read_api() {
        let args: Args =
            service_kit::parse_documented_example(EXAMPLE, "read-api", &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            args.listen,
            "0.0.0.0:8082".parse().expect("an address"),
            "[read-api], not [write-side]"
        );
        assert_eq!(args.read_db_url, "postgres://reader@postgres:5432/orderflow_read");
        assert_eq!(args.clickhouse_user, "orderflow_reader");
        assert_eq!(args.wait_ms, 2000);
        assert!(!args.auth.no_auth, "authentication is on in the example");
    }
}
