//! Test helpers for orderflow's adapter and end-to-end tests.
//!
//! Every test gets its own PostgreSQL database, Kafka topic and consumer group, or ClickHouse
//! database, so the suite runs in parallel without shared state. The servers are the real ones
//! that `scripts/services up` starts on loopback; a helper that cannot reach its server panics
//! with a message naming that command, so a missing server fails a test and never skips it.
//!
//! - [`postgres`]: a fresh database on the PostgreSQL server (`ORDERFLOW_TEST_PG_URL`).
//! - [`kafka`]: the broker address, unique topic and group names (`ORDERFLOW_TEST_KAFKA`).
//! - [`clickhouse`]: a fresh ClickHouse database (`ORDERFLOW_TEST_CLICKHOUSE_URL`).
//! - [`sqlite`]: an embedded event store in a file of its own.
//! - [`http`]: requests to a router in-process.
//! - [`proxy`]: a TCP proxy a test owns, to cut its own path to a shared server.

pub mod clickhouse;
pub mod http;
pub mod kafka;
pub mod postgres;
pub mod proxy;
pub mod sqlite;

/// The command that starts every server the tests need.
pub const START_SERVICES: &str = "scripts/services up";

/// A name that no other test (nor another run of this one) uses: `prefix` + a random suffix.
/// Lower-case ASCII, digits and `_`, so it is a valid database, topic and group name.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A test database's name: `orderflow_test_<unix seconds>_<random>`. The time lets
/// `scripts/clean-test-databases` (run by `scripts/test`) drop what earlier runs left behind
/// while a run in progress keeps its own.
pub fn database_name() -> String {
    unique_name(&database_prefix())
}

/// `orderflow_test_<unix seconds>`: how every test database's name starts, including those a
/// test makes by other means (the dev-up test's instance).
pub fn database_prefix() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    format!("orderflow_test_{now}")
}
