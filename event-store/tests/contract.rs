//! The event-store contract, written once and run against every adapter on a real server:
//! PostgreSQL (a fresh database per test, from `scripts/services up`) and SQLite (a fresh file).
//!
//! With the `kurrentdb` feature, the same tests also run against the KurrentDB server named by
//! `KURRENTDB_URL` (e.g. `kurrentdb://127.0.0.1:2113?tls=false`, from `docker compose --profile
//! kurrentdb up -d kurrentdb`), each test in its own stream namespace so they share one server.
//! Where KurrentDB refuses a capability (ADR 0006), its tests assert the refusal instead. Without
//! `KURRENTDB_URL` the KurrentDB tests are not compiled at all (`cfg(kurrentdb_server)`, set by
//! `build.rs`), so no run without a server can read as a KurrentDB pass.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use event_store::{
    AppendError, Commit, EventMetadata, EventStore, ExpectedVersion, NewEvent, PgEventStore, Snapshot,
    SqliteEventStore, StoreOptions, StreamAppend, Subscription, Until,
};
#[cfg(all(feature = "kurrentdb", kurrentdb_server))]
use event_store::{KurrentDbEventStore, KurrentDbOptions};
use uuid::Uuid;

/// Where a test's stores live: every store made from one `Backend` shares its database, like
/// several processes writing the same event store.
enum Backend {
    Postgres(Box<testkit::postgres::TestDatabase>),
    Sqlite(std::path::PathBuf),
    /// One KurrentDB server shared by every test; `namespace` keeps this test's streams apart.
    #[cfg(all(feature = "kurrentdb", kurrentdb_server))]
    KurrentDb {
        url: String,
        namespace: String,
    },
}

impl Backend {
    async fn postgres() -> Self {
        let db = testkit::postgres::fresh_database().await;
        PgEventStore::migrate(&db.pool(1).await).await.unwrap();
        Backend::Postgres(Box::new(db))
    }

    async fn sqlite() -> Self {
        let path = std::env::temp_dir().join(format!("orderflow-contract-{}.db", Uuid::new_v4().simple()));
        let pool = SqliteEventStore::connect(&path).await.unwrap();
        SqliteEventStore::migrate(&pool).await.unwrap();
        Backend::Sqlite(path)
    }

    /// The KurrentDB server of `KURRENTDB_URL` (these tests are only compiled when it is set),
    /// with a fresh namespace.
    #[cfg(all(feature = "kurrentdb", kurrentdb_server))]
    fn kurrentdb() -> Self {
        let url = std::env::var("KURRENTDB_URL")
            .expect("KURRENTDB_URL was set when this test was compiled; set it again to run it");
        Backend::KurrentDb {
            url,
            namespace: format!("t{}", Uuid::new_v4().simple()),
        }
    }

    async fn store(&self) -> Arc<dyn EventStore> {
        match self {
            #[cfg(all(feature = "kurrentdb", kurrentdb_server))]
            Backend::KurrentDb { url, namespace } => {
                let options = KurrentDbOptions {
                    namespace: namespace.clone(),
                    ..KurrentDbOptions::default()
                };
                match KurrentDbEventStore::connect(url, options).await {
                    Ok(store) => Arc::new(store),
                    Err(e) => panic!(
                        "the KurrentDB server of KURRENTDB_URL is not reachable ({e:?}); start one with \
                         `docker compose --profile kurrentdb up -d kurrentdb`"
                    ),
                }
            }
            Backend::Postgres(db) => Arc::new(
                PgEventStore::open(db.pool(8).await, StoreOptions::default())
                    .await
                    .unwrap(),
            ),
            Backend::Sqlite(path) => {
                let pool = SqliteEventStore::connect(path).await.unwrap();
                Arc::new(SqliteEventStore::open(pool, StoreOptions::default()).await.unwrap())
            }
        }
    }
}

fn event(event_type: &str, payload: &[u8]) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        payload: payload.to_vec(),
        occurred_at: Utc::now().trunc_subsecs(6),
        metadata: EventMetadata {
            correlation_id: "corr-1".into(),
            causation_id: "cmd-1".into(),
            actor: "tester".into(),
        },
    }
}

fn events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| event("test.happened", format!("e{i}").as_bytes()))
        .collect()
}

/// One test per backend and contract function: `everywhere` runs on every adapter; `sql_only`
/// on PostgreSQL and SQLite; `kurrentdb_only` on KurrentDB, where it replaces a `sql_only` test
/// of a capability KurrentDB refuses (ADR 0006).
macro_rules! contract {
    (
        everywhere: [$($test:ident),* $(,)?],
        sql_only: [$($sql:ident),* $(,)?],
        kurrentdb_only: [$($kurrent:ident),* $(,)?] $(,)?
    ) => {
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $test() { super::$test(super::Backend::postgres().await).await } )*
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $sql() { super::$sql(super::Backend::postgres().await).await } )*
        }
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $test() { super::$test(super::Backend::sqlite().await).await } )*
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $sql() { super::$sql(super::Backend::sqlite().await).await } )*
        }
        #[cfg(all(feature = "kurrentdb", kurrentdb_server))]
        mod kurrentdb {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $test() { super::$test(super::Backend::kurrentdb()).await } )*
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $kurrent() { super::$kurrent(super::Backend::kurrentdb()).await } )*
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
    kurrentdb_only: [
        multi_stream_commit_is_refused_and_appends_nothing,
        duplicate_event_id_is_refused_only_within_a_commit,
    ],
}

async fn appends_and_reads_back_a_stream(backend: Backend) {
    let store = backend.store().await;
    assert_eq!(store.head_position().await.unwrap(), 0);
    let first = events(3);
    let c = store
        .append("order-1", ExpectedVersion::NoStream, first.clone())
        .await
        .unwrap();
    assert!(!c.replayed);
    assert_eq!(c.appends[0].version, 3);
    let positions = &c.appends[0].positions;
    assert_eq!(positions.len(), 3);
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions grow: {positions:?}"
    );

    let c2 = store
        .append("order-1", ExpectedVersion::Exact(3), events(2))
        .await
        .unwrap();
    assert_eq!(c2.appends[0].version, 5);
    assert!(c2.appends[0].positions[0] > positions[2]);
    assert_eq!(store.stream_version("order-1").await.unwrap(), 5);
    assert_eq!(store.stream_version("order-none").await.unwrap(), 0);
    assert_eq!(store.head_position().await.unwrap(), c2.last_position());

    let read = store.read_stream("order-1", 1, 100).await.unwrap();
    assert_eq!(
        read.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    for (stored, sent) in read.iter().zip(&first) {
        assert_eq!(stored.event_id, sent.event_id);
        assert_eq!(stored.event_type, sent.event_type);
        assert_eq!(stored.payload, sent.payload);
        assert_eq!(stored.occurred_at, sent.occurred_at);
        assert_eq!(stored.metadata, sent.metadata);
        assert_eq!(stored.stream_id, "order-1");
    }
    assert!(read.windows(2).all(|w| w[0].recorded_at <= w[1].recorded_at));
    let tail = store.read_stream("order-1", 4, 1).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].stream_version, 4);

    let all = store.read_all(0, 2).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        positions[..2].to_vec()
    );
    let rest = store.read_all(all[1].position, 100).await.unwrap();
    assert_eq!(rest.len(), 3);
}

async fn stale_expected_version_appends_nothing(backend: Backend) {
    let store = backend.store().await;
    store
        .append("order-2", ExpectedVersion::NoStream, events(2))
        .await
        .unwrap();
    let head = store.head_position().await.unwrap();

    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(1),
        ExpectedVersion::Exact(3),
    ] {
        match store.append("order-2", expected, events(1)).await {
            Err(AppendError::WrongExpectedVersion {
                stream_id,
                expected: e,
                actual,
            }) => {
                assert_eq!(stream_id, "order-2");
                assert_eq!(e, expected);
                assert_eq!(actual, 2);
            }
            other => panic!("expected a conflict for {expected}, got {other:?}"),
        }
    }
    match store.append("order-new", ExpectedVersion::Exact(4), events(1)).await {
        Err(AppendError::WrongExpectedVersion { actual: 0, .. }) => {}
        other => panic!("expected a conflict on a missing stream, got {other:?}"),
    }
    assert_eq!(store.head_position().await.unwrap(), head, "a conflict appends nothing");
    assert_eq!(store.stream_version("order-2").await.unwrap(), 2);
    assert_eq!(store.stream_version("order-new").await.unwrap(), 0);

    let any = store.append("order-2", ExpectedVersion::Any, events(1)).await.unwrap();
    assert_eq!(any.appends[0].version, 3);
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

/// KurrentDB (client 1.2) has no transaction across streams: a commit over two streams is
/// refused before anything is sent, whatever the versions and with or without a key, and
/// appends nothing (ADR 0006). Placing an order needs the saga there.
#[cfg(all(feature = "kurrentdb", kurrentdb_server))]
async fn multi_stream_commit_is_refused_and_appends_nothing(backend: Backend) {
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
    for attempt in [
        commit(ExpectedVersion::Exact(7)),
        commit(ExpectedVersion::Exact(1)),
        commit(ExpectedVersion::Exact(1)).with_idempotency("key-m", b"hash-m".to_vec()),
    ] {
        let err = store.commit(attempt).await.unwrap_err();
        assert!(
            matches!(err, AppendError::Unsupported(ref reason) if reason.contains("several streams")),
            "{err:?}"
        );
    }
    assert_eq!(
        store.stream_version("order-9").await.unwrap(),
        0,
        "the order was not appended"
    );
    assert_eq!(store.stream_version("product-1").await.unwrap(), 1, "nor the product");
    assert_eq!(store.head_position().await.unwrap(), head);
    assert_eq!(store.idempotent_result("key-m").await.unwrap(), None, "nor the key");
}

async fn repeated_idempotency_key_appends_nothing(backend: Backend) {
    let store = backend.store().await;
    let commit =
        || Commit::single("order-3", ExpectedVersion::Any, events(2)).with_idempotency("key-1", b"hash-a".to_vec());
    let first = store.commit(commit()).await.unwrap();
    assert!(!first.replayed);
    let head = store.head_position().await.unwrap();

    let stored = store
        .idempotent_result("key-1")
        .await
        .unwrap()
        .expect("the key is recorded");
    assert_eq!(stored.request_hash, b"hash-a");
    assert_eq!(stored.appends, first.appends);
    assert_eq!(store.idempotent_result("key-unknown").await.unwrap(), None);

    let again = store.commit(commit()).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.appends, first.appends, "a replay answers the first result");
    assert_eq!(store.head_position().await.unwrap(), head, "a replay appends nothing");

    let other =
        Commit::single("order-3", ExpectedVersion::Any, events(1)).with_idempotency("key-1", b"hash-b".to_vec());
    assert!(matches!(store.commit(other).await, Err(AppendError::IdempotencyKeyReused { key }) if key == "key-1"));
    assert_eq!(store.stream_version("order-3").await.unwrap(), 2);
}

async fn concurrent_repeats_of_a_key_append_once(backend: Backend) {
    let stores = [backend.store().await, backend.store().await];
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = stores[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let c =
                Commit::single("order-4", ExpectedVersion::Any, events(1)).with_idempotency("key-c", b"same".to_vec());
            store.commit(c).await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(c) => answers.push(c),
            // Two processes racing on one key: the loser's insert of the key may fail as a whole
            // only in a way that appended nothing; it must not append twice.
            Err(AppendError::Store(e)) => panic!("store error: {e:?}"),
            Err(e) => panic!("unexpected: {e:?}"),
        }
    }
    assert_eq!(
        store_version(&stores[0], "order-4").await,
        1,
        "ten repeats appended once"
    );
    assert_eq!(answers.iter().filter(|c| !c.replayed).count(), 1);
    assert!(answers.iter().all(|c| c.appends == answers[0].appends));
}

async fn store_version(store: &Arc<dyn EventStore>, stream: &str) -> u64 {
    store.stream_version(stream).await.unwrap()
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

/// KurrentDB does not index event ids, so the adapter refuses a duplicate only inside one commit.
/// The same id in another stream is accepted: this test pins that documented gap (ADR 0006), so
/// a change of behaviour shows up here.
#[cfg(all(feature = "kurrentdb", kurrentdb_server))]
async fn duplicate_event_id_is_refused_only_within_a_commit(backend: Backend) {
    let store = backend.store().await;
    let e = event("test.happened", b"x");
    match store
        .append("order-5", ExpectedVersion::Any, vec![e.clone(), e.clone()])
        .await
    {
        Err(AppendError::DuplicateEvent { event_id }) => assert_eq!(event_id, e.event_id),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    assert_eq!(store.stream_version("order-5").await.unwrap(), 0);
    store
        .append("order-5", ExpectedVersion::Any, vec![e.clone()])
        .await
        .unwrap();
    let again = store
        .append("order-6", ExpectedVersion::Any, vec![e.clone()])
        .await
        .unwrap();
    assert_eq!(again.appends[0].version, 1, "known gap: not detected across streams");
    assert!(matches!(
        store.append("order-7", ExpectedVersion::Any, Vec::new()).await,
        Err(AppendError::Invalid(_))
    ));
}

async fn reads_a_stream_as_of_a_position_or_a_time(backend: Backend) {
    let store = backend.store().await;
    let a = store
        .append("order-8", ExpectedVersion::NoStream, events(2))
        .await
        .unwrap();
    store.append("other-1", ExpectedVersion::Any, events(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let b = store
        .append("order-8", ExpectedVersion::Exact(2), events(2))
        .await
        .unwrap();

    let at = store
        .read_stream_until("order-8", 1, Until::Position(a.last_position()))
        .await
        .unwrap();
    assert_eq!(at.iter().map(|e| e.stream_version).collect::<Vec<_>>(), vec![1, 2]);
    let from_3 = store
        .read_stream_until("order-8", 3, Until::Position(b.last_position()))
        .await
        .unwrap();
    assert_eq!(from_3.iter().map(|e| e.stream_version).collect::<Vec<_>>(), vec![3, 4]);

    let all = store.read_stream("order-8", 1, 10).await.unwrap();
    let t: DateTime<Utc> = all[1].recorded_at;
    let as_of = store
        .read_stream_until("order-8", 1, Until::RecordedAt(t))
        .await
        .unwrap();
    assert_eq!(as_of.len(), 2, "as of the second event's time: the first two events");
    let before = store
        .read_stream_until(
            "order-8",
            1,
            Until::RecordedAt(all[0].recorded_at - chrono::Duration::microseconds(1)),
        )
        .await
        .unwrap();
    assert!(before.is_empty());
}

async fn concurrent_writers_never_share_a_version(backend: Backend) {
    let stores = [backend.store().await, backend.store().await];
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = stores[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut wins = 0;
            let mut conflicts = 0;
            while wins < 5 {
                let v = store.stream_version("counter-1").await.unwrap();
                match store.append("counter-1", ExpectedVersion::Exact(v), events(1)).await {
                    Ok(_) => wins += 1,
                    Err(AppendError::WrongExpectedVersion { .. }) => conflicts += 1,
                    Err(e) => panic!("{e:?}"),
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let read = stores[0].read_stream("counter-1", 1, 1000).await.unwrap();
    assert_eq!(read.len(), 80);
    assert!(read.iter().enumerate().all(|(i, e)| e.stream_version == i as u64 + 1));
}

async fn subscription_catches_up_then_follows_live(backend: Backend) {
    let writer = backend.store().await;
    writer
        .append("order-10", ExpectedVersion::Any, events(5))
        .await
        .unwrap();
    let reader = backend.store().await;
    let mut sub = Subscription::new(reader, 0)
        .batch_size(2)
        .poll_interval(Duration::from_secs(5));
    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.extend(sub.next_batch().await.unwrap());
    }
    // Live: a commit from another store instance (another "process") wakes the subscriber.
    let live = writer
        .append("order-10", ExpectedVersion::Exact(5), events(1))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), sub.next_batch())
        .await
        .expect("live event arrives")
        .unwrap();
    assert_eq!(next[0].position, live.last_position());
    assert_eq!(sub.position(), live.last_position());
}

/// Invariant 3: the global log read by a tailing reader never skips an event, even when many
/// writers (separate store instances, as separate processes would be) commit concurrently.
async fn tailing_reader_never_skips_under_concurrent_appenders(backend: Backend) {
    const WRITERS: usize = 8;
    const TASKS_PER_WRITER: usize = 4;
    const EVENTS: usize = 20_000;
    let per_task = EVENTS / (WRITERS * TASKS_PER_WRITER);

    let reader = backend.store().await;
    let tail = tokio::spawn(async move {
        let mut sub = Subscription::new(reader, 0)
            .batch_size(500)
            .poll_interval(Duration::from_millis(50));
        let mut positions = Vec::with_capacity(EVENTS);
        let mut ids = HashSet::with_capacity(EVENTS);
        while ids.len() < EVENTS {
            let batch = tokio::time::timeout(Duration::from_secs(60), sub.next_batch())
                .await
                .expect("the tail keeps receiving")
                .unwrap();
            for e in batch {
                positions.push(e.position);
                assert!(ids.insert(e.event_id), "event {} delivered twice", e.event_id);
            }
        }
        (positions, ids)
    });

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = backend.store().await;
        for t in 0..TASKS_PER_WRITER {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                let mut written = 0;
                let mut i = 0;
                while written < per_task {
                    // Mixed commit sizes: 1 to 7 events, some over two streams.
                    let n = (1 + (w + t + i) % 7).min(per_task - written);
                    let evs = events(n);
                    ids.extend(evs.iter().map(|e| e.event_id));
                    let stream = format!("order-{w}-{t}-{}", i % 5);
                    store.append(&stream, ExpectedVersion::Any, evs).await.unwrap();
                    written += n;
                    i += 1;
                }
                ids
            }));
        }
    }
    let mut appended = HashSet::new();
    for w in writers {
        appended.extend(w.await.unwrap());
    }
    let (positions, received) = tail.await.unwrap();
    assert_eq!(appended.len(), EVENTS);
    assert_eq!(received, appended, "the tail received every appended event");
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in strictly increasing position order"
    );
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

async fn snapshots_are_found_by_version_position_and_time(backend: Backend) {
    let store = backend.store().await;
    assert_eq!(store.load_snapshot("order-s", None).await.unwrap(), None);
    let mut taken = Vec::new();
    for round in 1..=3u8 {
        let c = store.append("order-s", ExpectedVersion::Any, events(2)).await.unwrap();
        let r = &c.appends[0];
        let snapshot = Snapshot {
            stream_id: "order-s".into(),
            version: r.version,
            position: c.last_position(),
            recorded_at: r.recorded_at,
            state_type: "order".into(),
            state_version: 1,
            state: vec![round],
        };
        store.save_snapshot(&snapshot).await.unwrap();
        // Saving the same version again keeps the first.
        store
            .save_snapshot(&Snapshot {
                state: vec![99],
                ..snapshot.clone()
            })
            .await
            .unwrap();
        taken.push(snapshot);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let newest = store.load_snapshot("order-s", None).await.unwrap().unwrap();
    assert_eq!(newest, taken[2]);
    let by_position = store
        .load_snapshot("order-s", Some(Until::Position(taken[1].position)))
        .await
        .unwrap();
    assert_eq!(by_position.as_ref(), Some(&taken[1]));
    let between = store
        .load_snapshot("order-s", Some(Until::Position(taken[1].position + 1)))
        .await
        .unwrap();
    assert_eq!(between.as_ref(), Some(&taken[1]));
    let by_time = store
        .load_snapshot("order-s", Some(Until::RecordedAt(taken[0].recorded_at)))
        .await
        .unwrap();
    assert_eq!(by_time.as_ref(), Some(&taken[0]));
    let too_early = store
        .load_snapshot("order-s", Some(Until::Position(taken[0].position - 1)))
        .await
        .unwrap();
    assert_eq!(too_early, None);
    assert_eq!(store.delete_snapshots(Some("order-s")).await.unwrap(), 3);
    assert_eq!(store.load_snapshot("order-s", None).await.unwrap(), None);
    assert_eq!(
        store.read_stream("order-s", 1, 100).await.unwrap().len(),
        6,
        "events are untouched"
    );
}

async fn checkpoints_only_move_forward(backend: Backend) {
    let store = backend.store().await;
    assert_eq!(store.load_checkpoint("relay").await.unwrap(), 0);
    store.save_checkpoint("relay", 42).await.unwrap();
    assert_eq!(store.load_checkpoint("relay").await.unwrap(), 42);
    store.save_checkpoint("relay", 17).await.unwrap();
    assert_eq!(
        store.load_checkpoint("relay").await.unwrap(),
        42,
        "a late save does not move it back"
    );
    store.save_checkpoint("relay", 43).await.unwrap();
    assert_eq!(store.load_checkpoint("relay").await.unwrap(), 43);
    assert_eq!(
        store.load_checkpoint("other").await.unwrap(),
        0,
        "checkpoints are per name"
    );
    let other = backend.store().await;
    assert_eq!(
        other.load_checkpoint("relay").await.unwrap(),
        43,
        "durable across store instances"
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
