//! A fresh PostgreSQL database per test.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

/// The server's admin URL: `ORDERFLOW_TEST_PG_URL`, or the loopback server of `scripts/services`.
pub fn admin_url() -> String {
    std::env::var("ORDERFLOW_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database created for one test. It is left behind on purpose (a failed test's data is worth
/// reading) until `scripts/test` runs again half an hour later or more
/// (`scripts/clean-test-databases`).
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub options: PgConnectOptions,
}

impl TestDatabase {
    /// A pool on this database with `max` connections.
    pub async fn pool(&self, max: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(self.options.clone())
            .await
            .unwrap_or_else(|e| panic!("connect to test database {}: {e}", self.name))
    }
}

/// Creates an empty database with a unique name and returns how to reach it.
pub async fn fresh_database() -> TestDatabase {
    let admin_url = admin_url();
    let admin: PgConnectOptions = admin_url
        .parse()
        .unwrap_or_else(|e| panic!("ORDERFLOW_TEST_PG_URL={admin_url} is not a PostgreSQL URL: {e}"));
    let mut conn = match tokio::time::timeout(Duration::from_secs(10), admin.connect()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "cannot reach PostgreSQL at {admin_url}: {e}\nstart it with `{}`",
            crate::START_SERVICES
        ),
        Err(_) => panic!(
            "PostgreSQL at {admin_url} did not answer in 10 s\nstart it with `{}`",
            crate::START_SERVICES
        ),
    };
    let name = crate::database_name();
    // The name is generated above from [a-z0-9_] only, so it is safe to splice into DDL.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("create test database {name}: {e}"));
    conn.close().await.ok();
    let options = admin.clone().database(&name);
    let url = options.to_url_lossy().to_string();
    TestDatabase { name, url, options }
}
