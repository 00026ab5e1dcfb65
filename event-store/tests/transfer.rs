//! Log transfer ([`LogTransfer`]) against both SQL adapters, on real servers: a log copied from
//! SQLite to PostgreSQL and back keeps every field, holes in its positions and its idempotency
//! records; the target keeps its own guarantees afterwards (the next commit lands above the
//! imported head, at the stream's next version, never recorded earlier); a batch that would not
//! continue the target's log is refused whole; tailing readers hear of imports as of commits.
#![allow(clippy::unwrap_used)]

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use event_store::{
    Commit, EventMetadata, EventStore, ExpectedVersion, IdempotencyRecord, LogTransfer, NewEvent, PgEventStore,
    Position, RecordedEvent, SqliteEventStore, StoreError, StoreOptions, StreamAppend, Subscription,
};
use uuid::Uuid;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Postgres,
    Sqlite,
}

/// Where a test's store lives; every store opened from it shares its data.
enum Data {
    Postgres(Box<testkit::postgres::TestDatabase>),
    Sqlite(PathBuf),
}

impl Data {
    async fn fresh(kind: Kind) -> Self {
        match kind {
            Kind::Postgres => {
                let db = testkit::postgres::fresh_database().await;
                PgEventStore::migrate(&db.pool(1).await).await.unwrap();
                Data::Postgres(Box::new(db))
            }
            Kind::Sqlite => {
                let path = std::env::temp_dir().join(format!("{}.db", testkit::unique_name("orderflow-transfer")));
                let pool = sqlx::SqlitePool::connect_with(SqliteEventStore::connect_options(&path))
                    .await
                    .unwrap();
                SqliteEventStore::migrate(&pool).await.unwrap();
                Data::Sqlite(path)
            }
        }
    }

    async fn open(&self) -> Store {
        match self {
            Data::Postgres(db) => {
                let store = PgEventStore::open(db.pool(4).await, StoreOptions::default())
                    .await
                    .unwrap();
                Store {
                    pool: Pool::Postgres(store.pool().clone()),
                    api: Arc::new(store),
                }
            }
            Data::Sqlite(path) => {
                let pool = sqlx::SqlitePool::connect_with(SqliteEventStore::connect_options(path))
                    .await
                    .unwrap();
                let store = SqliteEventStore::open(pool, StoreOptions::default()).await.unwrap();
                Store {
                    pool: Pool::Sqlite(store.pool().clone()),
                    api: Arc::new(store),
                }
            }
        }
    }
}

/// A store through the transfer API, with its pool for what only SQL can set up.
struct Store {
    api: Arc<dyn LogTransfer>,
    pool: Pool,
}

enum Pool {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

impl Deref for Store {
    type Target = dyn LogTransfer;

    fn deref(&self) -> &Self::Target {
        &*self.api
    }
}

async fn fresh(kind: Kind) -> Store {
    Data::fresh(kind).await.open().await
}

impl Store {
    /// Skips `n` positions, as rolled-back transactions do on PostgreSQL (drawn from the identity
    /// and never used). SQLite never leaves holes itself (its sequence rolls back with the
    /// transaction), but a log imported from PostgreSQL has them: the sequence is moved directly.
    async fn punch_hole(&self, n: i64) {
        match &self.pool {
            Pool::Postgres(pool) => {
                for _ in 0..n {
                    sqlx::query("SELECT nextval(pg_get_serial_sequence('events', 'position'))")
                        .execute(pool)
                        .await
                        .unwrap();
                }
            }
            Pool::Sqlite(pool) => {
                let moved = sqlx::query("UPDATE sqlite_sequence SET seq = seq + ? WHERE name = 'events'")
                    .bind(n)
                    .execute(pool)
                    .await
                    .unwrap();
                if moved.rows_affected() == 0 {
                    sqlx::query("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)")
                        .bind(n)
                        .execute(pool)
                        .await
                        .unwrap();
                }
            }
        }
    }

    async fn log(&self) -> Vec<RecordedEvent> {
        self.read_all(0, 10_000).await.unwrap()
    }

    async fn records(&self) -> Vec<IdempotencyRecord> {
        self.idempotency_records(None, 10_000).await.unwrap()
    }
}

fn micros(t: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t).unwrap()
}

fn new_event(i: u32) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: format!("test.happened.v{}", i % 3),
        schema_version: 1 + i % 4,
        // Not UTF-8, with a NUL: payloads are bytes.
        payload: vec![0xff, 0x00, i as u8, 0xfe],
        occurred_at: micros(1_600_000_000_123_456 + i64::from(i) * 1_000_001),
        metadata: if i.is_multiple_of(2) {
            EventMetadata {
                correlation_id: format!("corr-{i}"),
                causation_id: format!("cmd-{i}"),
                actor: "user:ada".into(),
            }
        } else {
            EventMetadata::default()
        },
    }
}

fn new_events(from: u32, n: u32) -> Vec<NewEvent> {
    (from..from + n).map(new_event).collect()
}

fn append(stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> StreamAppend {
    StreamAppend {
        stream_id: stream.into(),
        expected,
        events,
    }
}

/// A log with holes (at its start and between commits), several streams, a commit over two
/// streams and idempotency keys.
async fn fill(source: &Store) {
    source.punch_hole(3).await;
    source
        .commit(
            Commit::single("order-1", ExpectedVersion::NoStream, new_events(0, 2))
                .with_idempotency("key-1", vec![1, 1]),
        )
        .await
        .unwrap();
    source
        .commit(
            Commit {
                appends: vec![
                    append("order-2", ExpectedVersion::NoStream, new_events(2, 1)),
                    append("product-1", ExpectedVersion::NoStream, new_events(3, 2)),
                ],
                idempotency: None,
            }
            .with_idempotency("key-2", vec![2, 2]),
        )
        .await
        .unwrap();
    source.punch_hole(5).await;
    source
        .append("order-1", ExpectedVersion::Exact(2), new_events(5, 1))
        .await
        .unwrap();
    source
        .commit(
            Commit::single("product-1", ExpectedVersion::Exact(2), new_events(6, 1))
                .with_idempotency("key-3", vec![3, 3]),
        )
        .await
        .unwrap();
    source.punch_hole(1).await;
    source
        .append("order-3", ExpectedVersion::NoStream, new_events(7, 3))
        .await
        .unwrap();
}

/// Copies the source's log and idempotency records page by page, as the CLI does; answers how
/// many records were new in the target.
async fn copy(source: &Store, target: &Store, page: usize) -> u64 {
    let mut after = 0;
    loop {
        let events = source.read_all(after, page).await.unwrap();
        let Some(last) = events.last() else { break };
        after = last.position;
        target.import_events(&events).await.unwrap();
    }
    let mut key: Option<String> = None;
    let mut new = 0;
    loop {
        let records = source.idempotency_records(key.as_deref(), 2).await.unwrap();
        let Some(last) = records.last() else { break };
        key = Some(last.key.clone());
        new += target.import_idempotency(&records).await.unwrap();
    }
    new
}

/// Records as comparable values: PostgreSQL's `jsonb` may rewrite a result's text, never its
/// meaning.
fn comparable(records: &[IdempotencyRecord]) -> Vec<(String, Vec<u8>, serde_json::Value, DateTime<Utc>)> {
    records
        .iter()
        .map(|r| {
            (
                r.key.clone(),
                r.request_hash.clone(),
                serde_json::from_str(&r.result).unwrap(),
                r.created_at,
            )
        })
        .collect()
}

fn refusal(result: Result<impl std::fmt::Debug, StoreError>) -> String {
    match result {
        Err(StoreError::Invalid(message)) => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn copies_every_field_holes_and_keys(from: Kind, to: Kind) {
    let source = fresh(from).await;
    fill(&source).await;
    let target = fresh(to).await;
    assert_eq!(copy(&source, &target, 3).await, 3, "three keys were new");

    let log = source.log().await;
    let positions: Vec<Position> = log.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        vec![4, 5, 6, 7, 8, 14, 15, 17, 18, 19],
        "the source has holes"
    );
    assert_eq!(target.log().await, log, "every field of every event, holes included");
    let head = source.head_position().await.unwrap();
    assert_eq!(target.head_position().await.unwrap(), head);
    for stream in ["order-1", "order-2", "order-3", "product-1"] {
        assert_eq!(
            target.stream_version(stream).await.unwrap(),
            source.stream_version(stream).await.unwrap(),
            "{stream}"
        );
    }
    assert_eq!(comparable(&target.records().await), comparable(&source.records().await));
    for key in ["key-1", "key-2", "key-3"] {
        let answer = source.idempotent_result(key).await.unwrap();
        assert!(answer.is_some(), "{key}");
        assert_eq!(target.idempotent_result(key).await.unwrap(), answer, "{key}");
    }

    // A client retrying its command after the move gets the first answer, not a second commit.
    let retried = target
        .commit(
            Commit {
                appends: vec![
                    append("order-2", ExpectedVersion::NoStream, new_events(2, 1)),
                    append("product-1", ExpectedVersion::NoStream, new_events(3, 2)),
                ],
                idempotency: None,
            }
            .with_idempotency("key-2", vec![2, 2]),
        )
        .await
        .unwrap();
    assert!(retried.replayed);
    assert_eq!(
        Some(retried.appends),
        source.idempotent_result("key-2").await.unwrap().map(|r| r.appends)
    );
    assert_eq!(
        target.head_position().await.unwrap(),
        head,
        "the replay appended nothing"
    );

    // Importing the same log again is refused whole; the same records again change nothing.
    let message = refusal(target.import_events(&log).await);
    assert!(message.contains("already in the store"), "{message}");
    let message = refusal(target.import_events(&log[log.len() - 1..]).await);
    assert!(message.contains("already in the store"), "{message}");
    assert_eq!(target.log().await, log, "nothing appended");
    assert_eq!(target.import_idempotency(&source.records().await).await.unwrap(), 0);

    // The target goes on as if it had written the log itself: above the imported head, at each
    // stream's next version, recorded no earlier than the imported events.
    let next = target
        .commit(Commit {
            appends: vec![
                append("order-1", ExpectedVersion::Exact(3), new_events(10, 1)),
                append("order-9", ExpectedVersion::NoStream, new_events(11, 1)),
            ],
            idempotency: None,
        })
        .await
        .unwrap();
    assert_eq!((next.appends[0].version, next.appends[1].version), (4, 1));
    assert!(
        next.appends[0].positions[0] > head,
        "{next:?} lands above the head {head}"
    );
    assert!(next.appends[0].recorded_at >= log.last().unwrap().recorded_at);
    let after = target.read_all(head, 10).await.unwrap();
    assert_eq!(after.len(), 2);
    assert_eq!(after[0].stream_id, "order-1");
    assert_eq!(after[0].stream_version, 4);
}

/// A target that already holds a log, for the refusals: order-1 at version 2, product-1 at 1.
async fn target_with_a_log(kind: Kind) -> Store {
    let target = fresh(kind).await;
    target
        .append("order-1", ExpectedVersion::NoStream, new_events(0, 2))
        .await
        .unwrap();
    target
        .append("product-1", ExpectedVersion::NoStream, new_events(2, 1))
        .await
        .unwrap();
    target
}

/// An event to import, recorded now (after everything in the target).
fn imported(position: Position, stream: &str, version: u64) -> RecordedEvent {
    let e = new_event(position as u32);
    RecordedEvent {
        position,
        stream_id: stream.into(),
        stream_version: version,
        event_id: e.event_id,
        event_type: e.event_type,
        schema_version: e.schema_version,
        payload: e.payload,
        occurred_at: e.occurred_at,
        recorded_at: Utc::now().trunc_subsecs(6),
        metadata: e.metadata,
    }
}

async fn refuses_a_batch_that_does_not_continue_the_log(kind: Kind) {
    let target = target_with_a_log(kind).await;
    let head = target.head_position().await.unwrap();
    let log = target.log().await;
    let h = head;

    let mut duplicate = imported(h + 1, "order-2", 1);
    duplicate.event_id = log[0].event_id;
    let mut early = imported(h + 1, "order-2", 1);
    early.recorded_at = log[0].recorded_at - chrono::Duration::seconds(1);
    let cases: Vec<(&str, Vec<RecordedEvent>, &str)> = vec![
        (
            "positions that repeat",
            vec![imported(h + 1, "order-1", 3), imported(h + 1, "order-2", 1)],
            "strictly increase",
        ),
        (
            "positions that go back",
            vec![imported(h + 5, "order-1", 3), imported(h + 2, "order-2", 1)],
            "strictly increase",
        ),
        (
            "a position at the head",
            vec![imported(h, "order-2", 1)],
            "not above the store's head",
        ),
        (
            "a position below the head",
            vec![imported(1, "order-2", 1)],
            "not above the store's head",
        ),
        (
            "a gap in a stored stream's versions",
            vec![imported(h + 1, "order-1", 4)],
            "at version 2 in the store",
        ),
        (
            "a version the stream already has",
            vec![imported(h + 1, "order-1", 2)],
            "at version 2 in the store",
        ),
        (
            "a new stream that does not start at 1",
            vec![imported(h + 1, "order-2", 2)],
            "at version 0 in the store",
        ),
        (
            "a gap within the batch",
            vec![imported(h + 1, "order-2", 1), imported(h + 2, "order-2", 3)],
            "contiguously",
        ),
        (
            "a valid event followed by a gap",
            vec![imported(h + 1, "order-2", 1), imported(h + 2, "order-1", 5)],
            "at version 2 in the store",
        ),
        (
            "an over-long stream id",
            vec![imported(h + 1, &"o".repeat(257), 1)],
            "a stream id has 1 to 256 bytes",
        ),
        (
            "an empty event type",
            {
                let mut e = imported(h + 1, "order-2", 1);
                e.event_type.clear();
                vec![e]
            },
            "an event type has 1 to 256 bytes",
        ),
        ("an event id the store holds", vec![duplicate], "already in the store"),
        ("a time before the store's last event", vec![early], "recorded_at"),
    ];
    for (case, batch, expected) in cases {
        let message = refusal(target.import_events(&batch).await);
        assert!(message.contains(expected), "{case}: {message}");
        assert_eq!(target.log().await, log, "{case}: nothing appended");
        assert_eq!(target.stream_version("order-2").await.unwrap(), 0, "{case}");
    }

    // The refusals released the append lock: commits and imports go on.
    let committed = target
        .append("order-1", ExpectedVersion::Exact(2), new_events(20, 1))
        .await
        .unwrap();
    let h = committed.last_position();
    target
        .import_events(&[
            imported(h + 10, "order-1", 4),
            imported(h + 11, "order-2", 1),
            imported(h + 20, "order-2", 2),
        ])
        .await
        .unwrap();
    assert_eq!(target.head_position().await.unwrap(), h + 20);
    assert_eq!(target.stream_version("order-2").await.unwrap(), 2);

    // Idempotency records: a result that is not a commit's answer is refused, nothing inserted.
    let record = |key: &str, result: &str| IdempotencyRecord {
        key: key.into(),
        request_hash: vec![9],
        result: result.into(),
        created_at: Utc::now().trunc_subsecs(6),
    };
    let message = refusal(
        target
            .import_idempotency(&[record("key-ok", "[]"), record("key-bad", "{not json")])
            .await,
    );
    assert!(message.contains("key-bad"), "{message}");
    let message = refusal(target.import_idempotency(&[record(&"k".repeat(257), "[]")]).await);
    assert!(message.contains("idempotency key has 1 to 256 bytes"), "{message}");
    assert!(target.records().await.is_empty(), "nothing inserted");
    assert_eq!(target.import_idempotency(&[]).await.unwrap(), 0);
    target.import_events(&[]).await.unwrap();
}

async fn finds_the_first_stream_outside_the_prefixes(kind: Kind) {
    let store = fresh(kind).await;
    assert_eq!(
        store.first_stream_outside(&["order-"]).await.unwrap(),
        None,
        "empty store"
    );
    for stream in ["order-1", "order-2"] {
        store
            .append(stream, ExpectedVersion::NoStream, new_events(0, 1))
            .await
            .unwrap();
    }
    assert_eq!(store.first_stream_outside(&["order-"]).await.unwrap(), None);
    assert_eq!(store.first_stream_outside(&["product-", "order-"]).await.unwrap(), None);
    assert_eq!(
        store.first_stream_outside(&[]).await.unwrap().as_deref(),
        Some("order-1"),
        "no prefix: every stream is outside"
    );
    // Prefixes are literal and case-sensitive: no wildcards, no case folding.
    for literal in ["ORDER-", "order_", "ord%", "o_der-"] {
        assert_eq!(
            store.first_stream_outside(&[literal]).await.unwrap().as_deref(),
            Some("order-1"),
            "{literal}"
        );
    }

    store
        .append("product-7", ExpectedVersion::NoStream, new_events(1, 1))
        .await
        .unwrap();
    store
        .append("order-1", ExpectedVersion::Exact(1), new_events(2, 1))
        .await
        .unwrap();
    store
        .append("payment_%-1", ExpectedVersion::NoStream, new_events(3, 1))
        .await
        .unwrap();
    assert_eq!(
        store.first_stream_outside(&["order-"]).await.unwrap().as_deref(),
        Some("product-7"),
        "the first foreign stream in log order"
    );
    assert_eq!(
        store
            .first_stream_outside(&["order-", "product-"])
            .await
            .unwrap()
            .as_deref(),
        Some("payment_%-1")
    );
    assert_eq!(
        store
            .first_stream_outside(&["order-", "product-", "payment_%"])
            .await
            .unwrap(),
        None
    );
}

async fn tailing_readers_see_imported_events(kind: Kind) {
    let target = fresh(kind).await;
    target
        .append("order-1", ExpectedVersion::NoStream, new_events(0, 1))
        .await
        .unwrap();
    let head = target.head_position().await.unwrap();
    let store: Arc<dyn EventStore> = target.api.clone();
    // Only the change signal can wake it in time: its poll is a minute.
    let mut subscription = Subscription::new(store, head).poll_interval(Duration::from_secs(60));
    let mut changes = target.changes();
    let reader = tokio::spawn(async move { subscription.next_batch().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!reader.is_finished(), "nothing to read yet");

    let batch = vec![imported(head + 3, "order-1", 2), imported(head + 4, "order-2", 1)];
    target.import_events(&batch).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the subscriber woke up on the import")
        .unwrap();
    assert_eq!(read, batch);
    tokio::time::timeout(Duration::from_secs(5), changes.wait_for(|&p| p == head + 4))
        .await
        .expect("changes() moved to the imported head")
        .unwrap();
}

async fn commits_are_never_recorded_before_imported_events(kind: Kind) {
    let target = fresh(kind).await;
    // Recorded by a source whose clock runs an hour ahead of this store's.
    let mut ahead = imported(10, "order-1", 1);
    ahead.recorded_at += chrono::Duration::hours(1);
    target.import_events(std::slice::from_ref(&ahead)).await.unwrap();
    let next = target
        .append("order-1", ExpectedVersion::Exact(1), new_events(1, 1))
        .await
        .unwrap();
    assert_eq!(next.appends[0].positions, vec![11]);
    assert!(
        next.appends[0].recorded_at >= ahead.recorded_at,
        "{} is before the imported {}",
        next.appends[0].recorded_at,
        ahead.recorded_at
    );
    let log = target.log().await;
    assert!(log.windows(2).all(|w| w[0].recorded_at <= w[1].recorded_at));
}

macro_rules! on_both {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $test() { super::$test(super::Kind::Postgres).await } )*
        }
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $test() { super::$test(super::Kind::Sqlite).await } )*
        }
    };
}

on_both![
    refuses_a_batch_that_does_not_continue_the_log,
    finds_the_first_stream_outside_the_prefixes,
    tailing_readers_see_imported_events,
    commits_are_never_recorded_before_imported_events,
];

mod copy {
    use super::{Kind, copies_every_field_holes_and_keys};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_to_postgres() {
        copies_every_field_holes_and_keys(Kind::Sqlite, Kind::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_to_sqlite() {
        copies_every_field_holes_and_keys(Kind::Postgres, Kind::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_to_postgres() {
        copies_every_field_holes_and_keys(Kind::Postgres, Kind::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_to_sqlite() {
        copies_every_field_holes_and_keys(Kind::Sqlite, Kind::Sqlite).await;
    }
}

/// PostgreSQL keeps results as `jsonb`: the text may come back rewritten, the answer the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_results_round_trip_as_json_not_text() {
    let store = fresh(Kind::Postgres).await;
    let result =
        r#"[ {"version":2,  "stream_id":"order-1", "positions":[4,5], "recorded_at":"2024-01-02T03:04:05.123456Z"} ]"#;
    let record = IdempotencyRecord {
        key: "key-1".into(),
        request_hash: vec![0, 1, 2],
        result: result.into(),
        created_at: micros(1_700_000_000_000_001),
    };
    assert_eq!(
        store.import_idempotency(std::slice::from_ref(&record)).await.unwrap(),
        1
    );
    let stored = store.records().await;
    assert_eq!(comparable(&stored), comparable(&[record]));
    let answer = store.idempotent_result("key-1").await.unwrap().unwrap();
    assert_eq!(answer.appends[0].positions, vec![4, 5]);

    // jsonb refuses what JSON allows (a NUL in a string): still the caller's record.
    let nul = IdempotencyRecord {
        key: "key-2".into(),
        request_hash: vec![],
        result: r#"[{"version":1,"stream_id":"a\u0000","positions":[1],"recorded_at":"2024-01-02T03:04:05Z"}]"#.into(),
        created_at: micros(1_700_000_000_000_001),
    };
    let message = refusal(store.import_idempotency(&[nul]).await);
    assert!(message.contains("PostgreSQL refused"), "{message}");
}

/// PostgreSQL: other processes' stores hear of an import through `NOTIFY`, as of a commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_other_stores_hear_of_an_import() {
    let data = Data::fresh(Kind::Postgres).await;
    let importer = data.open().await;
    let other = data.open().await;
    let mut changes = other.changes();
    // The listener connects in the background: commit until the other store hears, at most 10 s.
    let mut version = 0;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let c = importer
                .append("order-1", ExpectedVersion::Exact(version), new_events(0, 1))
                .await
                .unwrap();
            version += 1;
            let last = c.last_position();
            if tokio::time::timeout(Duration::from_millis(200), changes.wait_for(|&p| p >= last))
                .await
                .is_ok()
            {
                return;
            }
        }
    })
    .await
    .expect("the other store never heard of a commit");

    let head = importer.head_position().await.unwrap();
    importer
        .import_events(&[imported(head + 7, "order-2", 1)])
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), changes.wait_for(|&p| p == head + 7))
        .await
        .expect("the other store heard of the import")
        .unwrap();
}
