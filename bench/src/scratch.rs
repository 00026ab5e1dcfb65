//! The databases a benchmark makes for itself on the servers it is given, and drops after: a
//! store's database or SQLite file ([`Target`]), or a whole scratch deployment's (an event
//! store per service and a read database on PostgreSQL, a database on ClickHouse:
//! [`Scratch`]).

use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use event_schemas::Service;
use event_store::{EventStore, PgEventStore};
use projections::catalog::Sinks;
use projections::{ReadDb, ServiceLog};
use serde::Serialize;
use service_kit::db::{self, DatabaseUrl, Migrate, PoolSettings, PostgresUrl};
use sqlx::{ConnectOptions as _, Connection as _};
use uuid::Uuid;
use write_side::domain::ProductCommand;
use write_side::{CommandContext, CommandHandler};

/// `--pg-url`, which must be a PostgreSQL URL.
fn postgres_url(url: &str) -> anyhow::Result<PostgresUrl> {
    let url = DatabaseUrl::parse("--pg-url", url)?;
    url.postgres().cloned().context("--pg-url is not a PostgreSQL URL")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Adapter {
    Postgres,
    Sqlite,
}

/// A scratch database for one run: a new PostgreSQL database or a new SQLite file.
pub(crate) enum Target {
    Postgres { admin: PostgresUrl, name: String },
    Sqlite(std::path::PathBuf),
}

impl Target {
    pub(crate) async fn create(adapter: Adapter, pg_url: &str) -> anyhow::Result<Self> {
        match adapter {
            Adapter::Postgres => {
                let admin = postgres_url(pg_url)?;
                let name = format!("orderflow_bench_{}", Uuid::new_v4().simple());
                let mut conn = admin
                    .options()
                    .connect()
                    .await
                    .context("connect to PostgreSQL (is `scripts/services up` running?)")?;
                // The name is ours, [a-z0-9_] only.
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await?;
                conn.close().await.ok();
                Ok(Target::Postgres { admin, name })
            }
            Adapter::Sqlite => Ok(Target::Sqlite(
                std::env::temp_dir().join(format!("orderflow-bench-{}.db", Uuid::new_v4().simple())),
            )),
        }
    }

    pub(crate) async fn open(&self) -> anyhow::Result<Arc<dyn EventStore>> {
        Ok(match self {
            Target::Postgres { .. } => Arc::new(self.open_pg().await?),
            Target::Sqlite(path) => {
                let url = DatabaseUrl::Sqlite(path.clone());
                db::open_event_store(&url, PoolSettings::READ_DB, Migrate::Yes)
                    .await?
                    .shared()
            }
        })
    }

    /// The database's URL.
    pub(crate) fn url(&self) -> DatabaseUrl {
        match self {
            Target::Postgres { admin, name } => DatabaseUrl::Postgres(admin.with_database(name)),
            Target::Sqlite(path) => DatabaseUrl::Sqlite(path.clone()),
        }
    }

    /// The PostgreSQL store, migrated, with the pool settings the binaries use.
    pub(crate) async fn open_pg(&self) -> anyhow::Result<PgEventStore> {
        let Target::Postgres { admin, name } = self else {
            anyhow::bail!("this benchmark runs on PostgreSQL");
        };
        let url = DatabaseUrl::Postgres(admin.with_database(name));
        let opened = db::open_event_store(&url, PoolSettings::READ_DB, Migrate::Yes).await?;
        opened.postgres().cloned().context("a PostgreSQL store")
    }

    pub(crate) async fn drop_all(&self) {
        match self {
            Target::Postgres { admin, name } => {
                if let Ok(mut conn) = admin.options().connect().await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await {
                        tracing::warn!(error = %e, database = %name, "could not drop the benchmark database");
                    }
                }
            }
            Target::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }
}

/// The servers a benchmark makes its own databases on (and drops them from), shared by
/// `bench rebuild` and `bench reads`.
#[derive(Debug, Args)]
pub(crate) struct ScratchServers {
    /// A PostgreSQL server URL; the benchmark creates its two databases there and drops them after.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        env = "ORDERFLOW_BENCH_PG_URL"
    )]
    pub(crate) pg_url: String,
    /// ClickHouse's HTTP URL; the benchmark creates its database there and drops it after.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8123",
        env = "ORDERFLOW_BENCH_CLICKHOUSE_URL"
    )]
    pub(crate) clickhouse_url: String,
    /// ClickHouse user.
    #[arg(long, default_value = "default", env = "ORDERFLOW_CLICKHOUSE_USER")]
    pub(crate) clickhouse_user: String,
    /// ClickHouse password (never logged).
    #[arg(
        long,
        default_value = "",
        env = "ORDERFLOW_CLICKHOUSE_PASSWORD",
        hide_env_values = true
    )]
    pub(crate) clickhouse_password: String,
}

/// The benchmark's own databases: an event store per service and a read database on
/// PostgreSQL, one on ClickHouse.
pub(crate) struct Scratch {
    pub(crate) admin: PostgresUrl,
    /// Each service's store, in [`Service::ALL`] order.
    pub(crate) store_dbs: Vec<(Service, String)>,
    /// The orders service's copy of customers and products.
    pub(crate) replica_db: String,
    pub(crate) read_db: String,
    /// Without a database: for CREATE and DROP DATABASE.
    pub(crate) clickhouse: clickhouse::Client,
    pub(crate) clickhouse_db: String,
}

impl Scratch {
    /// Names (but does not create yet) a fresh set of databases on these servers.
    pub(crate) fn on(servers: &ScratchServers) -> anyhow::Result<Self> {
        let ScratchServers {
            pg_url,
            clickhouse_url,
            clickhouse_user: user,
            clickhouse_password: password,
        } = servers;
        let admin = postgres_url(pg_url)?;
        let id = Uuid::new_v4().simple().to_string();
        Ok(Scratch {
            admin,
            store_dbs: Service::ALL
                .into_iter()
                .map(|service| (service, format!("orderflow_bench_{id}_{service}")))
                .collect(),
            replica_db: format!("orderflow_bench_{id}_orders_replica"),
            read_db: format!("orderflow_bench_{id}_read"),
            clickhouse: clickhouse::Client::default()
                .with_url(clickhouse_url)
                .with_user(user)
                .with_password(password)
                .with_validation(false),
            clickhouse_db: format!("orderflow_bench_{id}"),
        })
    }

    pub(crate) async fn create(&self) -> anyhow::Result<()> {
        let mut conn = self
            .admin
            .options()
            .connect()
            .await
            .context("connect to PostgreSQL (is `scripts/services up` running?)")?;
        for name in self.databases() {
            // The names are ours, [a-z0-9_] only.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await?;
        }
        conn.close().await.ok();
        self.clickhouse
            .query(&format!("CREATE DATABASE {}", self.clickhouse_db))
            .execute()
            .await
            .context("create the ClickHouse database (is `scripts/services up` running?)")?;
        Ok(())
    }

    /// The PostgreSQL databases, stores first.
    fn databases(&self) -> impl Iterator<Item = &String> {
        self.store_dbs
            .iter()
            .map(|(_, name)| name)
            .chain([&self.replica_db, &self.read_db])
    }

    /// `service`'s event store database.
    pub(crate) fn store_url(&self, service: Service) -> DatabaseUrl {
        let name = self
            .store_dbs
            .iter()
            .find_map(|(s, name)| (*s == service).then_some(name))
            .unwrap_or_else(|| unreachable!("a store per service"));
        DatabaseUrl::Postgres(self.admin.with_database(name))
    }

    /// Every service's store, migrated, with the pool settings the binaries use.
    pub(crate) async fn open_stores(&self) -> anyhow::Result<Vec<(Service, PgEventStore)>> {
        let mut stores = Vec::new();
        for service in Service::ALL {
            let opened = db::open_event_store(&self.store_url(service), PoolSettings::READ_DB, Migrate::Yes).await?;
            stores.push((service, opened.postgres().cloned().context("a PostgreSQL store")?));
        }
        Ok(stores)
    }

    /// The orders service's database for its copy of customers and products.
    pub(crate) fn replica_db_url(&self) -> DatabaseUrl {
        DatabaseUrl::Postgres(self.admin.with_database(&self.replica_db))
    }

    /// The read database.
    pub(crate) fn read_db_url(&self) -> DatabaseUrl {
        DatabaseUrl::Postgres(self.admin.with_database(&self.read_db))
    }

    /// Makes a scratch deployment's databases on `servers`, runs `measure` on them, drops them
    /// whatever happened, and prints what `measure` answered.
    pub(crate) async fn measure(
        servers: &ScratchServers,
        measure: impl AsyncFnOnce(&Scratch) -> anyhow::Result<serde_json::Value>,
    ) -> anyhow::Result<()> {
        let scratch = Scratch::on(servers)?;
        let result = async {
            scratch.create().await?;
            measure(&scratch).await
        }
        .await;
        scratch.drop_all().await;
        crate::load::print_json(&result?)
    }

    /// Where the projections write: the scratch read database (migrated) and ClickHouse database.
    pub(crate) async fn sinks(&self) -> anyhow::Result<Sinks> {
        let read_db = ReadDb::open(&self.read_db_url(), PoolSettings::READ_DB)
            .await
            .context("cannot connect to the benchmark's read database")?;
        read_db.migrate().await?;
        Ok(Sinks {
            read_db,
            clickhouse: Some(self.clickhouse.clone().with_database(&self.clickhouse_db)),
        })
    }

    /// Drops whatever `create` made (best effort: a failure is logged, never fatal).
    pub(crate) async fn drop_all(&self) {
        match self.admin.options().connect().await {
            Ok(mut conn) => {
                for name in self.databases() {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await {
                        tracing::warn!(error = %e, database = %name, "could not drop a benchmark database");
                    }
                }
                conn.close().await.ok();
            }
            Err(e) => tracing::warn!(error = %e, "could not connect to PostgreSQL to drop the benchmark databases"),
        }
        let drop = format!("DROP DATABASE IF EXISTS {}", self.clickhouse_db);
        if let Err(e) = self.clickhouse.query(&drop).execute().await {
            tracing::warn!(error = %e, database = %self.clickhouse_db, "could not drop the ClickHouse database");
        }
    }
}

/// `count` customers registered through `handler`.
pub(crate) async fn add_customers(handler: &CommandHandler, count: usize) -> anyhow::Result<Vec<Uuid>> {
    let ctx = CommandContext::default();
    let mut customers = Vec::with_capacity(count);
    for i in 0..count {
        let id = Uuid::now_v7();
        let register = write_side::domain::CustomerCommand::Register {
            customer_id: id,
            name: format!("Customer {i}"),
            email: format!("c{i}@example.com"),
        };
        handler.customer(&ctx, id, register).await?;
        customers.push(id);
    }
    Ok(customers)
}

/// `count` products in EUR whose stock never runs out, added through `handler`: a catalogue
/// for benchmarks that measure commands, not stock.
pub(crate) async fn add_products(handler: &CommandHandler, count: usize) -> anyhow::Result<Vec<Uuid>> {
    let ctx = CommandContext::default();
    let mut products = Vec::with_capacity(count);
    for i in 0..count {
        let id = Uuid::now_v7();
        let add = ProductCommand::Add {
            product_id: id,
            sku: format!("SKU-{i:05}"),
            name: format!("Product {i}"),
            price_minor: 100 + (i as i64 * 37) % 10_000,
            currency: "EUR".into(),
            stock: 1_000_000_000,
        };
        handler.product(&ctx, id, add).await?;
        products.push(id);
    }
    Ok(products)
}

/// The services' logs over `stores`.
pub(crate) fn logs(stores: &[(Service, PgEventStore)]) -> Vec<ServiceLog> {
    stores
        .iter()
        .map(|(service, store)| ServiceLog::new(*service, Arc::new(store.clone())))
        .collect()
}

/// The sum of the logs' heads: how many positions a rebuild goes through.
pub(crate) async fn heads(logs: &[ServiceLog]) -> anyhow::Result<u64> {
    let mut sum = 0;
    for log in logs {
        sum += log.store.head_position().await?;
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_url_must_be_postgresql() {
        assert!(postgres_url("postgres://postgres@127.0.0.1:5432/postgres").is_ok());
        assert!(postgres_url("no-scheme").is_err());
        assert!(postgres_url("http://127.0.0.1:8123").is_err());
    }
}
