//! `orderflow migrate`: creates or upgrades the tables of the event store and of the read side,
//! with the code that does it when the services start (so running it first changes nothing
//! they would not have done, and running it twice changes nothing the second time):
//!
//! - the services' event stores (each service has its own: `--event-store-url` is a template
//!   with `{service}`, and `--service` picks one): [`StorePool::migrate`] (either adapter's
//!   migrations), as `write-side --service` and `orderflow serve` do on start;
//! - the read database: [`ReadDb::migrate`] (the projections' control tables), then for every
//!   projection its live version (version 1 on a new database, [`ReadDb::ensure_live`]) and that
//!   version's tables ([`projections::Projection::prepare`]), as `orderflow projections run`
//!   prepares them; with `--clickhouse-url`, the analytics tables go to ClickHouse (whose
//!   database must exist) and their control rows stay in the read database.
//!
//! What it did goes to stdout, one line per database; no URL is printed with its password.

use std::path::Path;

use anyhow::Context as _;
use clap::Args;
use event_schemas::Service;
use projections::ReadDb;
use projections::catalog::{self, Sinks};
use projections::cli::ClickHouseArgs;
use service_kit::cli::write_line;
use service_kit::db::{DatabaseUrl, PoolSettings, ServiceStoreUrls, StorePool, without_credentials};
use sqlx::{AnyPool, PgPool, SqlitePool};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  orderflow migrate --service orders --event-store-url postgres://orders@127.0.0.1:5432/orderflow_orders
  orderflow migrate --read-db-url postgres://projections@127.0.0.1:5432/orderflow_read \\
                    --clickhouse-url http://127.0.0.1:8123
  orderflow migrate --event-store-url 'orderflow-data/{service}.db' --read-db-url sqlite://orderflow-data/read.db")]
pub(crate) struct MigrateArgs {
    /// The services' event stores to create or upgrade: a PostgreSQL URL, or a SQLite file (a
    /// path or sqlite://path, created if missing), with `{service}` where the service's name
    /// goes. Without `{service}`, the one store of --service. Its password is never shown.
    #[arg(long, env = "ORDERFLOW_EVENT_STORE_URL", hide_env_values = true, value_name = "URL")]
    event_store_url: Option<String>,
    /// Only this service's store: customers, inventory, orders or payments.
    #[arg(long, env = "ORDERFLOW_SERVICE", value_name = "SERVICE")]
    service: Option<Service>,
    /// The read database to create or upgrade: postgres://... or sqlite://path. Gets the
    /// projections' control tables and each projection's live tables. Its password is never shown.
    #[arg(long, env = "ORDERFLOW_READ_DB_URL", hide_env_values = true, value_name = "URL")]
    read_db_url: Option<String>,
    /// Where the analytics go when they are in ClickHouse (needs --read-db-url, which keeps
    /// their control tables).
    #[command(flatten)]
    clickhouse: ClickHouseArgs,
}

/// sqlx's record of applied migrations, in every database it migrates.
const APPLIED: &str = "SELECT count(*), max(version) FROM _sqlx_migrations WHERE success";
const SQLITE_HAS_RECORD: &str = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'";
const PG_HAS_RECORD: &str =
    "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = '_sqlx_migrations'";

/// How far a database's schema is: migrations applied, and the newest one's version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Schema {
    applied: i64,
    latest: Option<i64>,
}

impl Schema {
    /// What happened between `before` and `self`.
    fn since(self, before: Schema) -> String {
        let version = self.latest.map_or_else(|| "none".to_owned(), |v| v.to_string());
        match self.applied - before.applied {
            0 => format!("already up to date (schema version {version})"),
            1 => format!("1 migration applied (schema version {version})"),
            n => format!("{n} migrations applied (schema version {version})"),
        }
    }
}

pub(crate) async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.event_store_url.is_some() || args.read_db_url.is_some(),
        "nothing to migrate: give --event-store-url, --read-db-url or both \
         (or ORDERFLOW_EVENT_STORE_URL, ORDERFLOW_READ_DB_URL)"
    );
    anyhow::ensure!(
        args.clickhouse.clickhouse_url.is_none() || args.read_db_url.is_some(),
        "--clickhouse-url needs --read-db-url: the analytics' versions and checkpoints live in the read database"
    );
    anyhow::ensure!(
        args.service.is_none() || args.event_store_url.is_some(),
        "--service needs --event-store-url: the store of the service to migrate"
    );
    if let Some(template) = &args.event_store_url {
        let urls = ServiceStoreUrls::parse("--event-store-url", template)?;
        let services: Vec<Service> = match args.service {
            Some(service) => vec![service],
            None if template.contains(ServiceStoreUrls::PLACEHOLDER) => Service::ALL.to_vec(),
            None => anyhow::bail!(
                "--event-store-url names one store: say whose with --service, or put {} in it for every \
                 service's (e.g. postgres://…/orderflow_{{service}})",
                ServiceStoreUrls::PLACEHOLDER
            ),
        };
        for service in services {
            event_store(service, urls.get(service)).await?;
        }
    }
    if let Some(url) = &args.read_db_url {
        read_side(url, &args).await?;
    }
    Ok(())
}

async fn event_store(service: Service, url: &DatabaseUrl) -> anyhow::Result<()> {
    if let Some(path) = url.sqlite_path() {
        create_parent(path)?;
    }
    tracing::info!(store = %url, %service, "migrating the service's event store");
    let pool = StorePool::connect(url, PoolSettings::new(1)).await?;
    let before = store_schema(&pool).await?;
    pool.migrate()
        .await
        .with_context(|| format!("cannot migrate the {service} event store ({url})"))?;
    let after = store_schema(&pool).await?;
    pool.close().await;
    write_line(&format!("{service} event store ({url}): {}", after.since(before)))?;
    Ok(())
}

async fn read_side(url: &str, args: &MigrateArgs) -> anyhow::Result<()> {
    let location = DatabaseUrl::parse("--read-db-url", url)?;
    if let Some(path) = location.sqlite_path() {
        create_parent(path)?;
    }
    tracing::info!(database = %location, "migrating the read database");
    let read_db = ReadDb::open(&location, PoolSettings::TOOL)
        .await
        .with_context(|| format!("cannot connect to the read database ({location})"))?;
    let has_record = match read_db.kind() {
        projections::DbKind::Postgres => PG_HAS_RECORD,
        projections::DbKind::Sqlite => SQLITE_HAS_RECORD,
    };
    let before = any_schema(read_db.pool(), has_record).await?;
    read_db
        .migrate()
        .await
        .with_context(|| format!("cannot migrate the read database ({location})"))?;
    let after = any_schema(read_db.pool(), has_record).await?;
    write_line(&format!("read database ({location}): {}", after.since(before)))?;

    let clickhouse = args.clickhouse.client();
    let analytics_in = match &args.clickhouse.clickhouse_url {
        Some(url) => format!(
            "ClickHouse {} database {}",
            without_credentials(url),
            args.clickhouse.clickhouse_database
        ),
        None => "the read database".to_owned(),
    };
    let sinks = Sinks {
        read_db: read_db.clone(),
        clickhouse,
    };
    for name in catalog::NAMES {
        let factory = catalog::factory(name, &sinks)?;
        let version = read_db.ensure_live(name, 1).await?;
        factory(version)
            .prepare()
            .await
            .with_context(|| format!("cannot create the tables of {name} version {version}"))?;
        let place = if name == projections::analytics::NAME {
            analytics_in.as_str()
        } else {
            "the read database"
        };
        write_line(&format!("{name}: live version {version}, its tables ready in {place}"))?;
    }
    read_db.pool().close().await;
    Ok(())
}

/// Creates the directory a SQLite file goes in.
fn create_parent(path: &Path) -> anyhow::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create the directory {}", dir.display()))
        }
        None => Ok(()),
    }
}

async fn store_schema(pool: &StorePool) -> anyhow::Result<Schema> {
    match pool {
        StorePool::Postgres(pool) => pg_schema(pool).await,
        StorePool::Sqlite(pool) => sqlite_schema(pool).await,
    }
}

async fn pg_schema(pool: &PgPool) -> anyhow::Result<Schema> {
    let has_record: i64 = sqlx::query_scalar(PG_HAS_RECORD).fetch_one(pool).await?;
    if has_record == 0 {
        return Ok(Schema::default());
    }
    let (applied, latest) = sqlx::query_as(APPLIED).fetch_one(pool).await?;
    Ok(Schema { applied, latest })
}

async fn sqlite_schema(pool: &SqlitePool) -> anyhow::Result<Schema> {
    let has_record: i64 = sqlx::query_scalar(SQLITE_HAS_RECORD).fetch_one(pool).await?;
    if has_record == 0 {
        return Ok(Schema::default());
    }
    let (applied, latest) = sqlx::query_as(APPLIED).fetch_one(pool).await?;
    Ok(Schema { applied, latest })
}

async fn any_schema(pool: &AnyPool, has_record: &'static str) -> anyhow::Result<Schema> {
    let has_record: i64 = sqlx::query_scalar(has_record).fetch_one(pool).await?;
    if has_record == 0 {
        return Ok(Schema::default());
    }
    let (applied, latest) = sqlx::query_as(APPLIED).fetch_one(pool).await?;
    Ok(Schema { applied, latest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outcome_says_what_changed() {
        let none = Schema::default();
        let three = Schema {
            applied: 3,
            latest: Some(20250103),
        };
        assert_eq!(three.since(none), "3 migrations applied (schema version 20250103)");
        assert_eq!(three.since(three), "already up to date (schema version 20250103)");
    }
}
