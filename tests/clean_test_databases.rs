//! `scripts/clean-test-databases`, which `scripts/test` runs before the suite: it drops the test
//! databases of earlier runs on PostgreSQL and ClickHouse (testkit's, and those of the dev-up
//! test's deployment, with its roles), and keeps those of a run in progress.

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

/// Roles on PostgreSQL among `names`.
async fn roles(names: &[&str]) -> Vec<String> {
    let mut admin = PgConnection::connect(&testkit::postgres::admin_url()).await.unwrap();
    let found: Vec<String> =
        sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1) ORDER BY 1")
            .bind(names)
            .fetch_all(&mut admin)
            .await
            .unwrap();
    admin.close().await.unwrap();
    found
}

async fn execute(sql: String) {
    let mut admin = PgConnection::connect(&testkit::postgres::admin_url()).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
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
    // A dev-up test's deployment of 2001 (databases owned by its roles, as scripts/dev-up makes
    // them) and one of a run going on now: its role stays.
    let dev = &suffix[..8];
    let old_dev = format!("orderflow_test_1000000000_dev_{dev}_");
    let old_dev_databases = [
        format!("{old_dev}orderflow_payments"),
        format!("{old_dev}orderflow_orders_replica"),
    ];
    let old_dev_roles = [format!("{old_dev}orders"), format!("{old_dev}payments")];
    let current_dev_role = format!("{}_dev_{dev}_orders", testkit::database_prefix());
    for role in old_dev_roles.iter().chain([&current_dev_role]) {
        execute(format!("CREATE ROLE {role} LOGIN")).await;
    }
    execute(format!(
        "CREATE DATABASE {} OWNER {}",
        old_dev_databases[0], old_dev_roles[1]
    ))
    .await;
    execute(format!(
        "CREATE DATABASE {} OWNER {}",
        old_dev_databases[1], old_dev_roles[0]
    ))
    .await;
    let names = [
        old.as_str(),
        untimed.as_str(),
        current.as_str(),
        current_clickhouse.as_str(),
        old_dev_databases[0].as_str(),
        old_dev_databases[1].as_str(),
    ];
    assert_eq!(on_postgres(&names).await.len(), 5);
    assert_eq!(on_clickhouse(&names).await.len(), 3);
    let role_names = [
        old_dev_roles[0].as_str(),
        old_dev_roles[1].as_str(),
        current_dev_role.as_str(),
    ];
    assert_eq!(roles(&role_names).await.len(), 3);

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
    assert!(dropped("PostgreSQL") >= 4, "{stdout}");
    assert!(dropped("ClickHouse") >= 2, "{stdout}");
    let words: Vec<&str> = stdout.split_whitespace().collect();
    let roles_dropped = words
        .iter()
        .position(|w| *w == "roles")
        .and_then(|at| words[at - 3].parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no count of roles: {stdout}"));
    assert!(roles_dropped >= 2, "{stdout}");

    assert_eq!(on_postgres(&names).await, vec![current.clone()]);
    assert_eq!(on_clickhouse(&names).await, vec![current_clickhouse.clone()]);
    assert_eq!(
        roles(&role_names).await,
        vec![current_dev_role.clone()],
        "the roles of the old deployment are dropped, not those of a run going on"
    );
    execute(format!("DROP ROLE {current_dev_role}")).await;

    // Bad input: a clear error, and nothing dropped.
    let output = Command::new(&script).arg("soon").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("MINUTES must be a whole number"));
}
