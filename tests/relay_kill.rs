//! End to end, with the real `orderflow relay` binary: kill -9 the relay while events are
//! being appended and published, start it again, and every event still reaches Kafka (at least
//! once; the checkpoint only moves after the broker acknowledged).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use event_schemas::{Category, CustomerRegistered, Envelope};
use event_store::{EventMetadata, EventStore, ExpectedVersion, NewEvent, PgEventStore, StoreOptions};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use uuid::Uuid;

fn registered() -> (String, NewEvent) {
    let id = Uuid::now_v7();
    let registered = CustomerRegistered {
        customer_id: id,
        name: "Ada".into(),
        email: "ada@example.com".into(),
    };
    let mut events = write_side::new_events(&EventMetadata::default(), &[registered]);
    (Category::Customer.stream_id(id), events.remove(0))
}

/// A fresh migrated store, and a topic prefix of this test's own.
async fn setup(name: &str) -> (testkit::postgres::TestDatabase, PgEventStore, String) {
    let db = testkit::postgres::fresh_database().await;
    let pool = db.pool(8).await;
    PgEventStore::migrate(&pool).await.expect("migrate");
    let store = PgEventStore::open(pool, StoreOptions::default())
        .await
        .expect("open the store");
    (db, store, format!("{}.", testkit::unique_name(name)))
}

async fn append(store: &PgEventStore, n: usize) {
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..n / 4 {
                let (stream, event) = registered();
                store
                    .append(&stream, ExpectedVersion::NoStream, vec![event])
                    .await
                    .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
}

/// Partitions of the relays' topics.
const PARTITIONS: usize = 4;

fn relay(db: &testkit::postgres::TestDatabase, prefix: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["relay", "--batch-size", "100", "--partitions", &PARTITIONS.to_string()])
        .env("ORDERFLOW_EVENT_STORE_URL", &db.url)
        .env("ORDERFLOW_KAFKA_BROKERS", testkit::kafka::bootstrap_servers())
        .env("ORDERFLOW_RELAY_TOPIC_PREFIX", prefix)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start `orderflow relay`")
}

/// Where a relay stands with the store's lease, as its log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lease {
    Starting,
    /// Found it held by another process; tries again every second.
    Waiting,
    Holding,
}

/// A relay whose log says where it stands with the lease.
fn relay_with_lease_log(db: &testkit::postgres::TestDatabase, prefix: &str) -> (Child, watch::Receiver<Lease>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["relay", "--batch-size", "100", "--partitions", &PARTITIONS.to_string()])
        .env("ORDERFLOW_EVENT_STORE_URL", &db.url)
        .env("ORDERFLOW_KAFKA_BROKERS", testkit::kafka::bootstrap_servers())
        .env("ORDERFLOW_RELAY_TOPIC_PREFIX", prefix)
        .env("RUST_LOG", "warn,event_store::lease=info,relay=info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start `orderflow relay`");
    let (lease, watched) = watch::channel(Lease::Starting);
    let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{line}");
            if line.contains("another process holds the lease") {
                lease.send_replace(Lease::Waiting);
            } else if line.contains("relay holds the lease") {
                lease.send_replace(Lease::Holding);
            }
        }
    });
    (child, watched)
}

async fn checkpoint(store: &PgEventStore) -> u64 {
    store
        .load_checkpoint(relay::RELAY_NAME)
        .await
        .expect("read the checkpoint")
}

/// A consumer of its own group on the customers topic of `prefix`, from its first record.
fn customers_topic(prefix: &str, group: &str) -> StreamConsumer {
    let consumer: StreamConsumer = testkit::kafka::client_config()
        .set("group.id", testkit::kafka::unique_group(group))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let topic = format!("{prefix}{}", Category::Customer.topic());
    consumer.subscribe(&[&topic]).expect("subscribe");
    consumer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_relay_loses_nothing() {
    let (db, store, prefix) = setup("relay_kill").await;

    append(&store, 2_000).await;
    let mut first = relay(&db, &prefix);

    // Keep appending while the relay runs, so that it is always behind when it is killed.
    let stop_writing = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (store, stop) = (store.clone(), stop_writing.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                append(&store, 100).await;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_kill = loop {
        assert!(Instant::now() < deadline, "the relay published nothing in 60 s");
        let (done, head) = (checkpoint(&store).await, store.head_position().await.expect("head"));
        if done >= 500 && done < head {
            first.start_kill().expect("kill -9 the relay"); // SIGKILL: no flush, no goodbye
            break done;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    first.wait().await.expect("reap the relay");
    stop_writing.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    append(&store, 1_000).await;
    let head = store.head_position().await.expect("head");
    assert!(at_kill < head, "killed halfway: checkpoint {at_kill} of {head}");

    let mut second = relay(&db, &prefix);
    let deadline = Instant::now() + Duration::from_secs(90);
    while checkpoint(&store).await < head {
        assert!(Instant::now() < deadline, "the restarted relay did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.start_kill().expect("stop the relay");
    second.wait().await.expect("reap the relay");

    let consumer = customers_topic(&prefix, "relay_kill");
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while (seen.len() as u64) < head {
        assert!(
            Instant::now() < deadline,
            "only {} of {head} events reached Kafka",
            seen.len()
        );
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            let envelope = Envelope::decode(message.payload().expect("a value")).expect("an envelope");
            seen.insert(envelope.global_position);
        }
    }
    assert_eq!(
        seen,
        (1..=head).collect::<BTreeSet<_>>(),
        "every position reached Kafka"
    );
}

/// Two relay processes at once: exactly one holds the lease and publishes; kill -9 it and the
/// other takes over within seconds and publishes the rest. The topic shows that the standby
/// published nothing while the leader lived.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_relay_takes_over_when_the_leader_is_killed() {
    let (db, store, prefix) = setup("relay_standby").await;

    append(&store, 400).await;
    let mut leader = relay(&db, &prefix);
    let deadline = Instant::now() + Duration::from_secs(60);
    while checkpoint(&store).await < 400 {
        assert!(Instant::now() < deadline, "the first relay published nothing in 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut standby, mut lease) = relay_with_lease_log(&db, &prefix);
    let within = Duration::from_secs(30);
    let found = tokio::time::timeout(within, lease.wait_for(|lease| *lease != Lease::Starting))
        .await
        .unwrap_or_else(|_| panic!("the standby did not try the lease within {within:?}"))
        .map(|lease| *lease)
        .expect("the standby's log is read until it ends");
    assert_eq!(found, Lease::Waiting, "the leader holds the lease");

    // Events appended while both run, from the checkpoint the standby would start from: the
    // leader publishes them, and so would the standby if it published at all.
    append(&store, 400).await;
    let led = store.head_position().await.expect("head");
    let deadline = Instant::now() + Duration::from_secs(60);
    while checkpoint(&store).await < led {
        assert!(
            Instant::now() < deadline,
            "the leader did not publish {led} events in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        standby.try_wait().expect("poll the standby").is_none(),
        "the standby keeps waiting"
    );
    assert_eq!(
        *lease.borrow(),
        Lease::Waiting,
        "the standby waits while the leader lives"
    );

    leader.start_kill().expect("kill -9 the leader");
    leader.wait().await.expect("reap the leader");
    let killed = Instant::now();
    append(&store, 400).await;
    let head = store.head_position().await.expect("head");
    while checkpoint(&store).await < head {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the standby did not take over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*lease.borrow(), Lease::Holding, "the standby took the lease");
    standby.start_kill().expect("stop the standby");
    standby.wait().await.expect("reap the standby");

    // Every event up to `led` was on the topic once the leader died, published by the leader
    // (one producer, idempotent, never restarted) exactly once; the standby started from the
    // leader's checkpoint, `led`. A copy of one of them can only be the standby's, sent while
    // the leader lived. The standby's records keep their order in each partition, so once
    // every partition has shown one of the events after `led` (all the standby's), every
    // record it sent before is read too.
    let consumer = customers_topic(&prefix, "relay_standby");
    let mut copies: BTreeMap<u64, usize> = BTreeMap::new();
    let mut taken_over: BTreeSet<i32> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while (copies.len() as u64) < head || taken_over.len() < PARTITIONS {
        assert!(
            Instant::now() < deadline,
            "{} of {head} events on the topic; {} of {PARTITIONS} partitions with an event the standby published",
            copies.len(),
            taken_over.len()
        );
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            let envelope = Envelope::decode(message.payload().expect("a value")).expect("an envelope");
            *copies.entry(envelope.global_position).or_default() += 1;
            if envelope.global_position > led {
                taken_over.insert(message.partition());
            }
        }
    }
    assert_eq!(
        copies.keys().copied().collect::<BTreeSet<_>>(),
        (1..=head).collect::<BTreeSet<_>>(),
        "every position reached Kafka"
    );
    let twice: Vec<_> = copies
        .iter()
        .filter(|&(&position, &n)| position <= led && n > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "published more than once while the leader lived (position, copies): {twice:?}"
    );
}
