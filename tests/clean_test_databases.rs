//! `scripts/clean-test-databases`, which `scripts/test` runs before the suite: it drops the test
//! databases of earlier runs on PostgreSQL and ClickHouse, and keeps those of a run in progress.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// Databases on PostgreSQL among `names`.
async fn on_postgres(names: &[&str]) -> Vec<String> {
    let mut admin = PgConnection::connect(&testkit::postgres::admin_url()).await.unwrap();
    let found: Vec<String> = sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE datname = ANY($1)")
        .bind(names)
        .fetch_all(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    found
}

/// Databases on ClickHouse among `names`.
async fn on_clickhouse(names: &[&str]) -> Vec<String> {
    let all = testkit::clickhouse::query("SELECT name FROM system.databases").await;
    all.lines()
        .filter(|name| names.contains(name))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn drops_the_databases_of_old_runs_and_keeps_those_of_a_run_in_progress() {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    // Made in 2001, made before names carried a time, and made now (testkit's own name).
    let old = format!("orderflow_test_1000000000_{suffix}");
    let untimed = format!("orderflow_test_{suffix}");
    let mut admin = PgConnection::connect(&testkit::postgres::admin_url()).await.unwrap();
    for name in [&old, &untimed] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        testkit::clickhouse::query(&format!("CREATE DATABASE {name}")).await;
    }
    admin.close().await.unwrap();
    let current = testkit::postgres::fresh_database().await.name;
    let current_clickhouse = testkit::clickhouse::fresh_database().await;
    let names = [
        old.as_str(),
        untimed.as_str(),
        current.as_str(),
        current_clickhouse.as_str(),
    ];
    assert_eq!(on_postgres(&names).await.len(), 3);
    assert_eq!(on_clickhouse(&names).await.len(), 3);

    // 100,000 minutes (69 days): nothing a run of today made is touched, whatever runs beside us.
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/clean-test-databases");
    let output = Command::new(&script).arg("100000").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dropped = |server: &str| -> u64 {
        let words: Vec<&str> = stdout.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| *w == server)
            .unwrap_or_else(|| panic!("{stdout}"));
        words[at - 1].parse().unwrap_or_else(|_| panic!("{stdout}"))
    };
    assert!(dropped("PostgreSQL") >= 2, "{stdout}");
    assert!(dropped("ClickHouse") >= 2, "{stdout}");

    assert_eq!(on_postgres(&names).await, vec![current.clone()]);
    assert_eq!(on_clickhouse(&names).await, vec![current_clickhouse.clone()]);

    // Bad input: a clear error, and nothing dropped.
    let output = Command::new(&script).arg("soon").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("MINUTES must be a whole number"));
}
