//! The projection runtime against the real broker and databases: offsets kept with the rows,
//! poison and undecodable messages dead-lettered without blocking, a second worker taking over
//! a group, embedded runs from the store, and rebuilds that switch versions.
//!
//! The projection under test (`tally`) keeps, per stream, the last version applied and how many
//! events it applied; it refuses an event that is not the next version of its stream, so a lost
//! or doubly applied event shows up as a wrong count or a dead letter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{SubsecRound, Utc};
use event_schemas::{Category, CustomerEvent, CustomerRenamed, DomainEvent, Envelope, Service};
use event_store::{Commit, EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamAppend};
use projections::{
    Batch, Checkpoint, KafkaOptions, Projection, ProjectionError, ProjectionFactory, ReadDb, RebuildOptions,
    RunOptions, ServiceLog, applied_position, rebuild, run_from_kafka, run_from_store, save_checkpoints,
    save_dead_letters,
};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::Row;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Counts applied events per stream; fails on purpose for streams named in `poison`.
struct Tally {
    db: ReadDb,
    version: u32,
    poison: Vec<String>,
}

impl Tally {
    fn table(&self) -> String {
        format!("tally_v{}_streams", self.version)
    }

    fn factory(db: &ReadDb, poison: &[String]) -> ProjectionFactory {
        let db = db.clone();
        let poison = poison.to_vec();
        Arc::new(move |version| {
            Arc::new(Tally {
                db: db.clone(),
                version,
                poison: poison.clone(),
            }) as Arc<dyn Projection>
        })
    }
}

#[async_trait]
impl Projection for Tally {
    fn name(&self) -> &'static str {
        "tally"
    }

    fn version(&self) -> u32 {
        self.version
    }

    async fn prepare(&self) -> Result<(), ProjectionError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {} (stream_id TEXT PRIMARY KEY, version BIGINT NOT NULL, applied BIGINT NOT NULL, replayed BIGINT NOT NULL DEFAULT 0)",
            self.table()
        )))
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    async fn drop_version(&self) -> Result<(), ProjectionError> {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {}", self.table())))
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, ProjectionError> {
        self.db.checkpoints(self.name(), self.version).await
    }

    async fn apply(&self, batch: &Batch) -> Result<(), ProjectionError> {
        let mut tx = self.db.begin_write().await?;
        for event in &batch.events {
            if self.poison.contains(&event.stream_id) {
                return Err(ProjectionError::Inconsistent(format!("{} is poison", event.stream_id)));
            }
            let current: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT version FROM {} WHERE stream_id = $1",
                self.table()
            )))
            .bind(event.stream_id.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .map_or(0, |row| row.get(0));
            let version = i64::try_from(event.stream_version).unwrap();
            if version <= current {
                // Applied before: the guard that makes a replay harmless. Counted, so that a
                // test can tell a worker that resumed after its checkpoint from one that replayed.
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE {} SET replayed = replayed + 1 WHERE stream_id = $1",
                    self.table()
                )))
                .bind(event.stream_id.as_str())
                .execute(&mut *tx)
                .await?;
                continue;
            }
            if version != current + 1 {
                return Err(ProjectionError::Inconsistent(format!(
                    "{} jumps from version {current} to {version}",
                    event.stream_id
                )));
            }
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {table} (stream_id, version, applied) VALUES ($1, $2, 1)
                 ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, applied = {table}.applied + 1",
                table = self.table(),
            )))
            .bind(event.stream_id.as_str())
            .bind(version)
            .execute(&mut *tx)
            .await?;
        }
        save_checkpoints(&mut tx, self.name(), self.version, &batch.checkpoints()).await?;
        save_dead_letters(&mut tx, self.name(), self.version, &batch.dead_letters).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn healthy(&self) -> bool {
        sqlx::query("SELECT 1").execute(self.db.pool()).await.is_ok()
    }
}

/// stream id → (version, applied) in one version's table.
async fn tally(db: &ReadDb, version: u32) -> BTreeMap<String, (i64, i64)> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT stream_id, version, applied FROM tally_v{version}_streams"
    )))
    .fetch_all(db.pool())
    .await
    .map(|rows| {
        rows.into_iter()
            .map(|row| (row.get(0), (row.get(1), row.get(2))))
            .collect()
    })
    .unwrap_or_default()
}

/// Events delivered again after they were applied, over all streams.
async fn replayed(db: &ReadDb, version: u32) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT CAST(coalesce(sum(replayed), 0) AS BIGINT) FROM tally_v{version}_streams"
    )))
    .fetch_one(db.pool())
    .await
    .map(|row| row.get(0))
    .unwrap()
}

async fn postgres_read_db() -> ReadDb {
    let database = testkit::postgres::fresh_database().await;
    let db = ReadDb::connect(&database.url, 8).await.unwrap();
    db.migrate().await.unwrap();
    db
}

fn renamed(customer_id: Uuid, n: u64) -> DomainEvent {
    DomainEvent::Customer(CustomerEvent::Renamed(CustomerRenamed {
        customer_id,
        name: format!("name {n}"),
    }))
}

/// An envelope of `event` as the relay would publish it.
fn envelope(event: &DomainEvent, version: u64, position: u64) -> Envelope {
    let encoded = event.encode();
    let now = Utc::now().trunc_subsecs(6);
    Envelope {
        event_id: Uuid::now_v7(),
        stream_id: event.stream_id(),
        stream_version: version,
        global_position: position,
        event_type: encoded.event_type.to_owned(),
        schema_version: encoded.schema_version,
        occurred_at: now,
        recorded_at: now,
        correlation_id: "test".to_owned(),
        causation_id: "test".to_owned(),
        actor: String::new(),
        payload: encoded.payload,
    }
}

/// An envelope of a customer's event of a type no build of this test knows.
fn unknown_type(customer_id: Uuid, position: u64) -> Envelope {
    let known = renamed(customer_id, 1);
    Envelope {
        event_type: "customer.nicknamed".to_owned(),
        payload: b"\x0a\x03Ada".to_vec(),
        ..envelope(&known, 1, position)
    }
}

/// Publishes, for each version in `versions`, one event of each customer's stream, keyed by
/// stream, with positions from `first_position`.
async fn publish(topic: &str, customers: &[Uuid], versions: std::ops::RangeInclusive<u64>, first_position: u64) {
    let producer: FutureProducer = testkit::kafka::client_config()
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let mut position = first_position;
    let mut sends = Vec::new();
    for version in versions {
        for &customer in customers {
            let event = renamed(customer, version);
            let value = envelope(&event, version, position).encode_to_vec();
            position += 1;
            let key = event.stream_id();
            let producer = producer.clone();
            let topic = topic.to_owned();
            sends.push(async move {
                producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&value),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
            });
        }
    }
    futures::future::join_all(sends).await;
}

async fn publish_raw(topic: &str, key: &str, value: &[u8]) {
    let producer: FutureProducer = testkit::kafka::client_config().create().unwrap();
    producer
        .send(FutureRecord::to(topic).key(key).payload(value), Duration::from_secs(30))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

fn options(topic: &str, group: &str) -> KafkaOptions {
    KafkaOptions {
        brokers: testkit::kafka::bootstrap_servers(),
        group_id: group.to_owned(),
        topics: vec![topic.to_owned()],
        run: RunOptions {
            batch_size: 200,
            linger: Duration::from_millis(20),
            retries: 2,
            backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
        },
        session_timeout: Duration::from_secs(6),
    }
}

/// Waits until `check` holds, polling; fails the test after `secs`.
async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn expected(customers: &[Uuid], versions: i64) -> BTreeMap<String, (i64, i64)> {
    customers
        .iter()
        .map(|c| (format!("customer-{c}"), (versions, versions)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_applies_every_record_once_and_dead_letters_what_it_cannot_read() {
    let topic = testkit::kafka::unique_topic("runtime");
    testkit::kafka::create_topic(&topic, 4).await;
    let db = postgres_read_db().await;
    let customers: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    let poison = Uuid::new_v4();
    let poison_stream = format!("customer-{poison}");
    publish(&topic, &customers, 1..=10, 1).await;
    publish_raw(&topic, "garbage", b"not an envelope").await;
    publish(&topic, &[poison], 1..=1, 10_000).await;
    // An event type this build does not know (its service published it first): passed over,
    // not a dead letter.
    let newer = unknown_type(Uuid::new_v4(), 10_001);
    publish_raw(&topic, &newer.stream_id, &newer.encode_to_vec()).await;

    let cancel = CancellationToken::new();
    let worker = tokio::spawn(run_from_kafka(
        db.clone(),
        Tally::factory(&db, std::slice::from_ref(&poison_stream)),
        options(&topic, &testkit::kafka::unique_group("runtime")),
        cancel.clone(),
    ));
    // A failed wait below must stop the worker too, or the runtime waits for its thread for ever.
    let _stop = cancel.clone().drop_guard();
    eventually(
        60,
        "every event applied and both bad messages dead-lettered",
        || async {
            db.dead_letters("tally", 1).await.unwrap().len() == 2 && tally(&db, 1).await == expected(&customers, 10)
        },
    )
    .await;

    let letters = db.dead_letters("tally", 1).await.unwrap();
    let garbage = letters
        .iter()
        .find(|l| l.payload == b"not an envelope")
        .expect("the garbage record");
    assert!(
        garbage.reason.contains("not an orderflow envelope"),
        "{}",
        garbage.reason
    );
    let poisoned = letters.iter().find(|l| l.position == 10_000).expect("the poison event");
    assert_eq!(poisoned.event_type, "customer.renamed");
    assert!(poisoned.reason.contains("is poison"), "{}", poisoned.reason);

    // Each partition's checkpoint is its last offset: 203 records over 4 partitions, the
    // unknown event's included.
    eventually(30, "every partition checkpointed at its last record", || async {
        let checkpoints = db.checkpoints("tally", 1).await.unwrap();
        checkpoints.iter().map(|c| c.offset + 1).sum::<i64>() == 203
    })
    .await;
    cancel.cancel();
    worker.await.unwrap().unwrap();

    // A restart resumes after the checkpoints (a new group, so the offsets can only come from
    // the database): the new events apply, nothing applies twice.
    publish(&topic, &customers, 11..=12, 20_000).await;
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(run_from_kafka(
        db.clone(),
        Tally::factory(&db, &[]),
        options(&topic, &testkit::kafka::unique_group("runtime")),
        cancel.clone(),
    ));
    let _restarted = cancel.clone().drop_guard();
    eventually(60, "the restarted worker to apply the new events", || async {
        tally(&db, 1).await == expected(&customers, 12)
    })
    .await;
    cancel.cancel();
    worker.await.unwrap().unwrap();
    assert_eq!(db.dead_letters("tally", 1).await.unwrap().len(), 2);
    assert_eq!(
        replayed(&db, 1).await,
        0,
        "the restarted worker started after the stored offsets"
    );
}

/// A worker whose checkpoint falls inside a record batch that the broker stored as one (the
/// relay produces batches) reads the rest of that batch. The test broker answers a fetch from
/// the middle of a stored batch with the batches after it, and a worker that took what came
/// skipped the batch's tail and checkpointed past it: `tests/projection_workers.rs` saw an order
/// event lost after a worker was killed that way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_resuming_inside_a_record_batch_reads_the_rest_of_it() {
    let topic = testkit::kafka::unique_topic("midbatch");
    testkit::kafka::create_topic(&topic, 1).await;
    let db = postgres_read_db().await;
    let customer = Uuid::new_v4();
    let stream = format!("customer-{customer}");
    // Versions 1 to 3 in one produce request (one stored batch, offsets 0-2), then 4 alone.
    let batching: FutureProducer = testkit::kafka::client_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "200")
        .create()
        .unwrap();
    let sends = (1..=3_u64).map(|version| {
        let (batching, topic, key) = (batching.clone(), topic.clone(), stream.clone());
        async move {
            let value = envelope(&renamed(customer, version), version, version).encode_to_vec();
            batching
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap()
        }
    });
    let delivered = futures::future::join_all(sends).await;
    assert_eq!(delivered.iter().map(|d| d.offset).collect::<Vec<_>>(), [0, 1, 2]);
    publish(&topic, &[customer], 4..=4, 4).await;

    // As a worker killed right after applying offset 0 (version 1) leaves it.
    let factory = Tally::factory(&db, &[]);
    factory(1).prepare().await.unwrap();
    db.ensure_live("tally", 1).await.unwrap();
    let mut tx = db.begin_write().await.unwrap();
    sqlx::query("INSERT INTO tally_v1_streams (stream_id, version, applied) VALUES ($1, 1, 1)")
        .bind(stream.as_str())
        .execute(&mut *tx)
        .await
        .unwrap();
    let applied = Checkpoint {
        source: topic.clone(),
        partition: 0,
        offset: 0,
        position: 1,
        recorded_at: None,
    };
    save_checkpoints(&mut tx, "tally", 1, &[applied]).await.unwrap();
    tx.commit().await.unwrap();

    let cancel = CancellationToken::new();
    // Stops the worker if an assertion fails too, so that the failure ends the test.
    let _stop = cancel.clone().drop_guard();
    let worker = tokio::spawn(run_from_kafka(
        db.clone(),
        factory,
        options(&topic, &testkit::kafka::unique_group("midbatch")),
        cancel.clone(),
    ));
    eventually(30, "versions 2 to 4 applied after version 1", || async {
        tally(&db, 1).await.get(&stream) == Some(&(4, 4))
    })
    .await;
    cancel.cancel();
    worker.await.unwrap().unwrap();
    assert!(db.dead_letters("tally", 1).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_worker_shares_the_partitions_and_takes_them_all_when_the_first_stops() {
    let topic = testkit::kafka::unique_topic("runtime");
    testkit::kafka::create_topic(&topic, 4).await;
    let db = postgres_read_db().await;
    let group = testkit::kafka::unique_group("runtime");
    let customers: Vec<Uuid> = (0..40).map(|_| Uuid::new_v4()).collect();
    publish(&topic, &customers, 1..=5, 1).await;

    let first_cancel = CancellationToken::new();
    let first = tokio::spawn(run_from_kafka(
        db.clone(),
        Tally::factory(&db, &[]),
        options(&topic, &group),
        first_cancel.clone(),
    ));
    // A failed wait must stop the workers too, or the runtime waits for their threads for ever.
    let _first = first_cancel.clone().drop_guard();
    eventually(60, "the first worker to apply the first events", || async {
        tally(&db, 1).await == expected(&customers, 5)
    })
    .await;

    let second_cancel = CancellationToken::new();
    let second = tokio::spawn(run_from_kafka(
        db.clone(),
        Tally::factory(&db, &[]),
        options(&topic, &group),
        second_cancel.clone(),
    ));
    let _second = second_cancel.clone().drop_guard();
    publish(&topic, &customers, 6..=10, 1_000).await;
    eventually(60, "both workers to apply the second events", || async {
        tally(&db, 1).await == expected(&customers, 10)
    })
    .await;

    first_cancel.cancel();
    first.await.unwrap().unwrap();
    publish(&topic, &customers, 11..=15, 2_000).await;
    eventually(60, "the remaining worker to take every partition", || async {
        tally(&db, 1).await == expected(&customers, 15)
    })
    .await;
    second_cancel.cancel();
    second.await.unwrap().unwrap();
    assert!(db.dead_letters("tally", 1).await.unwrap().is_empty());
}

async fn sqlite_store() -> Arc<dyn EventStore> {
    Arc::new(testkit::sqlite::store("runtime_store").await)
}

async fn sqlite_read_db() -> ReadDb {
    let path = std::env::temp_dir().join(format!("{}.db", testkit::unique_name("runtime_read")));
    let db = ReadDb::connect(&format!("sqlite://{}", path.display()), 4)
        .await
        .unwrap();
    db.migrate().await.unwrap();
    db
}

async fn append(store: &dyn EventStore, customer: Uuid, versions: std::ops::RangeInclusive<u64>) {
    let expected = if *versions.start() == 1 {
        ExpectedVersion::NoStream
    } else {
        ExpectedVersion::Exact(versions.start() - 1)
    };
    let events: Vec<NewEvent> = versions
        .map(|n| {
            let encoded = renamed(customer, n).encode();
            NewEvent {
                event_id: Uuid::now_v7(),
                event_type: encoded.event_type.to_owned(),
                schema_version: encoded.schema_version,
                payload: encoded.payload,
                occurred_at: Utc::now(),
                metadata: EventMetadata::default(),
            }
        })
        .collect();
    store
        .commit(Commit {
            appends: vec![StreamAppend {
                stream_id: format!("customer-{customer}"),
                expected,
                events,
            }],
            idempotency: None,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_embedded_runner_follows_the_store_and_a_rebuild_switches_it_to_the_new_version() {
    let store = sqlite_store().await;
    let db = sqlite_read_db().await;
    let customers: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
    for &customer in &customers {
        append(&*store, customer, 1..=3).await;
    }
    let cancel = CancellationToken::new();
    let runner = tokio::spawn(run_from_store(
        ServiceLog::new(Service::Customers, Arc::clone(&store)),
        db.clone(),
        Tally::factory(&db, &[]),
        RunOptions::default(),
        cancel.clone(),
    ));
    eventually(30, "the runner to catch up", || async {
        tally(&db, 1).await == expected(&customers, 3)
    })
    .await;

    // Rebuild while events keep arriving: version 2 gets everything, version 1 goes away.
    let writer_store = Arc::clone(&store);
    let writer_customers = customers.clone();
    let writer = tokio::spawn(async move {
        for version in 4..=6 {
            for &customer in &writer_customers {
                append(&*writer_store, customer, version..=version).await;
            }
        }
    });
    let report = rebuild(
        vec![ServiceLog::new(Service::Customers, Arc::clone(&store))],
        &db,
        Tally::factory(&db, &[]),
        RebuildOptions {
            batch_size: 7,
            drop_after: Duration::from_millis(200),
            ..RebuildOptions::default()
        },
        CancellationToken::new(),
        |_| {},
    )
    .await
    .unwrap();
    writer.await.unwrap();
    assert_eq!((report.version, report.replaced), (2, Some(1)));
    assert_eq!(db.live_version("tally").await.unwrap(), Some(2));
    for &customer in &customers {
        append(&*store, customer, 7..=7).await;
    }
    eventually(30, "the runner to follow version 2", || async {
        tally(&db, 2).await == expected(&customers, 7)
    })
    .await;
    let gone = sqlx::query("SELECT * FROM tally_v1_streams").fetch_all(db.pool()).await;
    assert!(gone.is_err(), "version 1's table is dropped after the switch");
    let states: Vec<(u32, String)> = db
        .versions("tally")
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.version, v.state))
        .collect();
    assert_eq!(states, vec![(2, "live".to_owned()), (1, "retired".to_owned())]);

    // A historical build up to a past position holds exactly the events up to it.
    let historical = rebuild(
        vec![ServiceLog::new(Service::Customers, Arc::clone(&store))],
        &db,
        Tally::factory(&db, &[]),
        RebuildOptions {
            until: Some(projections::UntilPoint::Position("customers:30".parse().unwrap())),
            ..RebuildOptions::default()
        },
        CancellationToken::new(),
        |_| {},
    )
    .await
    .unwrap();
    assert!(historical.historical);
    assert_eq!(historical.positions[&Service::Customers], 30);
    assert_eq!(
        tally(&db, 3).await,
        expected(&customers, 3),
        "positions 1..=30 are versions 1..=3"
    );
    assert_eq!(db.live_version("tally").await.unwrap(), Some(2));
    cancel.cancel();
    runner.await.unwrap().unwrap();
}

/// The embedded runner passes over an event of a type this build does not know: no dead
/// letter, its position applied (a read waiting for it is answered), the events after it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_embedded_runner_passes_over_event_types_it_does_not_know() {
    let store = sqlite_store().await;
    let db = sqlite_read_db().await;
    let customers: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for &customer in &customers {
        append(&*store, customer, 1..=2).await;
    }
    let newer = unknown_type(Uuid::new_v4(), 0);
    store
        .append(
            &newer.stream_id,
            ExpectedVersion::NoStream,
            vec![NewEvent {
                event_id: newer.event_id,
                event_type: newer.event_type.clone(),
                schema_version: 1,
                payload: newer.payload.clone(),
                occurred_at: Utc::now(),
                metadata: EventMetadata::default(),
            }],
        )
        .await
        .unwrap();
    let unknown_at = store.head_position().await.unwrap();
    for &customer in &customers {
        append(&*store, customer, 3..=3).await;
    }
    let cancel = CancellationToken::new();
    let runner = tokio::spawn(run_from_store(
        ServiceLog::new(Service::Customers, Arc::clone(&store)),
        db.clone(),
        Tally::factory(&db, &[]),
        RunOptions::default(),
        cancel.clone(),
    ));
    let _stop = cancel.clone().drop_guard();
    let head = store.head_position().await.unwrap();
    eventually(30, "every known event applied, up to the head", || async {
        tally(&db, 1).await == expected(&customers, 3)
            && applied_position(&db.progress("tally", 1).await.unwrap(), Service::Customers) == head
    })
    .await;
    assert!(unknown_at < head);
    assert!(
        db.dead_letters("tally", 1).await.unwrap().is_empty(),
        "not a dead letter"
    );
    assert!(
        !tally(&db, 1).await.contains_key(&newer.stream_id),
        "applied as nothing"
    );
    cancel.cancel();
    runner.await.unwrap().unwrap();
}

/// A deployment that rebuilt a projection before it ever ran a worker: the version holds only
/// the rebuild's store checkpoint, and no Kafka checkpoint the rebuild could hand over to. The
/// workers that start afterwards apply it from Kafka; its applied position must follow them, or
/// every `min_position` past the rebuild waits in vain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_started_after_a_rebuild_carry_its_applied_position_on() {
    let store = sqlite_store().await;
    let db = postgres_read_db().await;
    // Named like the customers' topic, for the applied position to count it as the customers'.
    let topic = format!(
        "{}.{}",
        testkit::kafka::unique_topic("handover"),
        Category::Customer.topic()
    );
    testkit::kafka::create_topic(&topic, 2).await;
    let customers: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    for version in 1..=3 {
        for &customer in &customers {
            append(&*store, customer, version..=version).await;
        }
    }
    let report = rebuild(
        vec![ServiceLog::new(Service::Customers, Arc::clone(&store))],
        &db,
        Tally::factory(&db, &[]),
        RebuildOptions::default(),
        CancellationToken::new(),
        |_| {},
    )
    .await
    .unwrap();
    let rebuilt = 3 * customers.len() as u64;
    assert_eq!((report.version, report.positions[&Service::Customers]), (1, rebuilt));
    let applied = || async { applied_position(&db.progress("tally", 1).await.unwrap(), Service::Customers) };
    assert_eq!(applied().await, rebuilt);

    // The relay publishes the log in the store's order, and the shop goes on.
    publish(&topic, &customers, 1..=5, 1).await;
    let head = 5 * customers.len() as u64;
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(run_from_kafka(
        db.clone(),
        Tally::factory(&db, &[]),
        options(&topic, &testkit::kafka::unique_group("handover")),
        cancel.clone(),
    ));
    // A failed wait below must stop the worker too, or the runtime waits for its thread for ever.
    let _stop = cancel.clone().drop_guard();
    eventually(60, "every event applied", || async {
        tally(&db, 1).await == expected(&customers, 5)
    })
    .await;
    eventually(30, "the applied position to reach the head", || async {
        applied().await == head
    })
    .await;
    cancel.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_drained_report_vouches_for_a_partition_only_while_it_is_fresh() {
    use projections::{PartitionReport, applied_position};
    let db = sqlite_read_db().await;
    let checkpoint = |partition: i32, offset: i64, position: u64| Checkpoint {
        source: Category::Order.topic().to_owned(),
        partition,
        offset,
        position,
        recorded_at: None,
    };
    let mut tx = db.begin_write().await.unwrap();
    save_checkpoints(&mut tx, "tally", 1, &[checkpoint(0, 9, 90), checkpoint(1, 4, 40)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        applied_position(&db.progress("tally", 1).await.unwrap(), Service::Orders),
        40,
        "the slower partition bounds it"
    );

    // Partition 1's worker found it empty: nothing older waits there, so it counts as far as
    // the furthest partition.
    let report = PartitionReport {
        source: Category::Order.topic().to_owned(),
        partition: 1,
        drained: true,
        high_watermark: None,
    };
    db.report_partitions("tally", 1, std::slice::from_ref(&report))
        .await
        .unwrap();
    assert_eq!(
        applied_position(&db.progress("tally", 1).await.unwrap(), Service::Orders),
        90
    );

    // A report older than DRAINED_FRESH_US (its worker died) vouches for nothing.
    sqlx::query("UPDATE projection_checkpoints SET drained_at_us = drained_at_us - $1")
        .bind(projections::DRAINED_FRESH_US + 1)
        .execute(db.pool())
        .await
        .unwrap();
    assert_eq!(
        applied_position(&db.progress("tally", 1).await.unwrap(), Service::Orders),
        40
    );

    // A new batch for the partition clears the claim at once.
    db.report_partitions("tally", 1, &[report]).await.unwrap();
    let mut tx = db.begin_write().await.unwrap();
    save_checkpoints(&mut tx, "tally", 1, &[checkpoint(1, 5, 95)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let progress = db.progress("tally", 1).await.unwrap();
    assert!(progress.iter().all(|p| !p.drained), "{progress:?}");
    assert_eq!(applied_position(&progress, Service::Orders), 90);
}
