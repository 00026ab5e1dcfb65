//! The event-store contract, written once and run against every adapter on a real server:
//! PostgreSQL (a fresh database per test, from `scripts/services up`) and SQLite (a fresh file).
//!
//! The contract functions that hold for every adapter are in `contract/suite.rs`, shared with the
//! KurrentDB adapter's crate (`event-store-kurrentdb`, outside the workspace), whose own
//! `tests/contract.rs` runs them against a KurrentDB server; why a shared file is said there.
//! This file runs them on PostgreSQL and SQLite, with the tests of what only the SQL adapters
//! can do and the PostgreSQL-only tests of their mechanisms.
#![allow(clippy::unwrap_used)]

#[path = "contract/suite.rs"]
mod suite;

use std::sync::Arc;
use std::time::Duration;

use event_store::{
    AppendError, Commit, EventStore, ExpectedVersion, PgEventStore, SqliteEventStore, StoreOptions, StreamAppend,
};
use suite::{Stores, event, events};
use uuid::Uuid;

/// Where a test's stores live: every store made from one `Backend` shares its database, like
/// several processes writing the same event store.
enum Backend {
    Postgres(Box<testkit::postgres::TestDatabase>),
    Sqlite(std::path::PathBuf),
}

impl Backend {
    async fn postgres() -> Self {
        let db = testkit::postgres::fresh_database().await;
        PgEventStore::migrate(&db.pool(1).await).await.unwrap();
        Backend::Postgres(Box::new(db))
    }

    async fn sqlite() -> Self {
        let path = std::env::temp_dir().join(format!("orderflow-contract-{}.db", Uuid::new_v4().simple()));
        let pool = sqlx::SqlitePool::connect_with(SqliteEventStore::connect_options(&path))
            .await
            .unwrap();
        SqliteEventStore::migrate(&pool).await.unwrap();
        Backend::Sqlite(path)
    }
}

impl Stores for Backend {
    async fn store(&self) -> Arc<dyn EventStore> {
        match self {
            Backend::Postgres(db) => Arc::new(
                PgEventStore::open(db.pool(8).await, StoreOptions::default())
                    .await
                    .unwrap(),
            ),
            Backend::Sqlite(path) => {
                let pool = sqlx::SqlitePool::connect_with(SqliteEventStore::connect_options(path))
                    .await
                    .unwrap();
                Arc::new(SqliteEventStore::open(pool, StoreOptions::default()).await.unwrap())
            }
        }
    }
}

/// One test per backend and contract function: `everywhere` (the functions of `suite`) runs on
/// every adapter; `sql_only` (the functions of this file) on PostgreSQL and SQLite only.
/// KurrentDB runs `everywhere` in its own crate, with its own tests in place of `sql_only`.
macro_rules! contract {
    (
        everywhere: [$($test:ident),* $(,)?],
        sql_only: [$($sql:ident),* $(,)?] $(,)?
    ) => {
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $test() { super::suite::$test(super::Backend::postgres().await).await } )*
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $sql() { super::$sql(super::Backend::postgres().await).await } )*
        }
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $test() { super::suite::$test(super::Backend::sqlite().await).await } )*
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $sql() { super::$sql(super::Backend::sqlite().await).await } )*
        }
    };
}

contract! {
    everywhere: [
        appends_and_reads_back_a_stream,
        stale_expected_version_appends_nothing,
        repeated_idempotency_key_appends_nothing,
        concurrent_repeats_of_a_key_append_once,
        reads_a_stream_as_of_a_position_or_a_time,
        concurrent_writers_never_share_a_version,
        subscription_catches_up_then_follows_live,
        tailing_reader_never_skips_under_concurrent_appenders,
        snapshots_are_found_by_version_position_and_time,
        checkpoints_only_move_forward,
    ],
    sql_only: [
        multi_stream_commit_is_all_or_nothing,
        duplicate_event_id_is_refused,
    ],
}

async fn multi_stream_commit_is_all_or_nothing(backend: Backend) {
    let store = backend.store().await;
    store
        .append("product-1", ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();
    let head = store.head_position().await.unwrap();
    let commit = |product_expected| Commit {
        appends: vec![
            StreamAppend {
                stream_id: "order-9".into(),
                expected: ExpectedVersion::NoStream,
                events: events(1),
            },
            StreamAppend {
                stream_id: "product-1".into(),
                expected: product_expected,
                events: events(1),
            },
        ],
        idempotency: None,
    };
    let err = store.commit(commit(ExpectedVersion::Exact(7))).await.unwrap_err();
    assert!(
        matches!(err, AppendError::WrongExpectedVersion { ref stream_id, actual: 1, .. } if stream_id == "product-1"),
        "{err:?}"
    );
    assert_eq!(
        store.stream_version("order-9").await.unwrap(),
        0,
        "the order was not appended either"
    );
    assert_eq!(store.head_position().await.unwrap(), head);

    let ok = store.commit(commit(ExpectedVersion::Exact(1))).await.unwrap();
    assert_eq!(ok.appends.len(), 2);
    assert_eq!((ok.appends[0].version, ok.appends[1].version), (1, 2));
    assert_eq!(store.stream_version("order-9").await.unwrap(), 1);
}

async fn duplicate_event_id_is_refused(backend: Backend) {
    let store = backend.store().await;
    let e = event("test.happened", b"x");
    store
        .append("order-5", ExpectedVersion::Any, vec![e.clone()])
        .await
        .unwrap();
    match store.append("order-6", ExpectedVersion::Any, vec![e.clone()]).await {
        Err(AppendError::DuplicateEvent { event_id }) => assert_eq!(event_id, e.event_id),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    assert_eq!(store.stream_version("order-6").await.unwrap(), 0);
    assert!(matches!(
        store.append("order-7", ExpectedVersion::Any, Vec::new()).await,
        Err(AppendError::Invalid(_))
    ));
}

/// For the PostgreSQL-only tests: a fresh database, a pool of 4 on it and a store with `options`.
async fn postgres_store(options: StoreOptions) -> (sqlx::PgPool, PgEventStore) {
    let Backend::Postgres(db) = Backend::postgres().await else {
        unreachable!()
    };
    let pool = db.pool(4).await;
    let store = PgEventStore::open(pool.clone(), options).await.unwrap();
    (pool, store)
}

/// A transaction of another writer that holds the append lock until it ends.
async fn hold_append_lock(pool: &sqlx::PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(event_store::APPEND_LOCK)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// The mechanism behind gap safety in PostgreSQL, shown directly: a writer that is still inside
/// its transaction holds positions below any later writer's, so the later writer waits for it.
#[tokio::test]
async fn postgres_later_writer_waits_for_an_earlier_open_transaction() {
    let (pool, store) = postgres_store(StoreOptions::default()).await;

    // A slow writer: takes the append lock and inserts, but does not commit yet.
    let mut slow = hold_append_lock(&pool).await;
    let slow_position: i64 = sqlx::query_scalar(
        "INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, payload, occurred_at, recorded_at)
         VALUES ('slow-1', 1, $1, 'test.happened', 1, '\\x00', now(), clock_timestamp()) RETURNING position",
    )
    .bind(Uuid::new_v4())
    .fetch_one(&mut *slow)
    .await
    .unwrap();

    let fast = tokio::spawn({
        let store = store.clone();
        async move { store.append("fast-1", ExpectedVersion::Any, events(1)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!fast.is_finished(), "the later writer waits for the open transaction");
    assert!(
        store.read_all(0, 10).await.unwrap().is_empty(),
        "nothing is visible yet, so nothing can be skipped"
    );

    slow.commit().await.unwrap();
    let fast = fast.await.unwrap().unwrap();
    assert!(
        fast.last_position() > slow_position as u64,
        "the later commit got the higher position"
    );
    let log: Vec<u64> = store
        .read_all(0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(log, vec![slow_position as u64, fast.last_position()]);
}

/// The writer keeps a connection of its own between batches. When the server drops it (a
/// restart, a terminated backend), the next commit begins again on a new connection instead of
/// failing.
#[tokio::test]
async fn postgres_writer_survives_losing_its_connection() {
    let (pool, store) = postgres_store(StoreOptions::default()).await;
    let first = store
        .append("lost-1", ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();

    // With a timeout, pg_terminate_backend returns once the backend has exited, so the next
    // commit cannot reach it while it is still on its way out.
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(event_store::WRITER_APPLICATION_NAME)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(terminated, vec![true], "the writer had one connection of its own");

    let second = store
        .append("lost-1", ExpectedVersion::Exact(1), events(1))
        .await
        .unwrap();
    assert!(second.last_position() > first.last_position());
    assert_eq!(
        store.stream_version("lost-1").await.unwrap(),
        2,
        "both commits are stored"
    );
}

/// `BEGIN` on the writer's connection is bounded: a writer that cannot begin (here the append
/// lock is held past the bound; in production, a connection whose peer vanished) answers its
/// commit with an error instead of holding up every commit behind it, and commits again once
/// it can.
#[tokio::test]
async fn postgres_writer_gives_up_on_a_begin_that_takes_too_long() {
    let options = StoreOptions {
        begin_timeout: Duration::from_millis(500),
        ..StoreOptions::default()
    };
    let (pool, store) = postgres_store(options).await;
    store
        .append("slow-begin-1", ExpectedVersion::NoStream, events(1))
        .await
        .unwrap();

    let holder = hold_append_lock(&pool).await;
    // The kept connection times out, the new one too: about two bounds, not forever.
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        store.append("slow-begin-1", ExpectedVersion::Exact(1), events(1)),
    )
    .await
    .expect("the writer gave up within its bound");
    let error = refused.expect_err("nothing can be committed while the lock is held");
    assert!(
        matches!(error, AppendError::Store(_)),
        "a store error, not a conflict: {error:?}"
    );
    holder.rollback().await.unwrap();

    store
        .append("slow-begin-1", ExpectedVersion::Exact(1), events(1))
        .await
        .unwrap();
    assert_eq!(
        store.stream_version("slow-begin-1").await.unwrap(),
        2,
        "nothing of the refused commit, then the next"
    );
}

/// Exactly one holder of a lease among stores sharing a PostgreSQL database; a dead holder's
/// lease is free at once.
#[tokio::test]
async fn postgres_lease_has_one_holder_and_passes_on() {
    let Backend::Postgres(db) = Backend::postgres().await else {
        unreachable!()
    };
    let a = PgEventStore::open(db.pool(2).await, StoreOptions::default())
        .await
        .unwrap();
    let b = PgEventStore::open(db.pool(2).await, StoreOptions::default())
        .await
        .unwrap();
    let mut held = a.try_lease("relay").await.unwrap().expect("a free lease is taken");
    assert!(held.check(Duration::from_secs(2)).await);
    assert!(
        b.try_lease("relay").await.unwrap().is_none(),
        "a held lease is not given twice"
    );
    assert!(b.try_lease("other").await.unwrap().is_some(), "leases are per name");

    let waiter = tokio::spawn(async move { b.lease("relay", Duration::from_millis(50)).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "the second waits while the first holds it");
    drop(held); // as when the holder's process dies: its session ends
    let taken = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("taken over")
        .unwrap();
    assert_eq!(taken.name(), "relay");
}
