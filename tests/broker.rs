//! Broker check: the Kafka-protocol broker of `scripts/services` serves what orderflow relies on.
//!
//! - the relay's producer: idempotent (`enable.idempotence=true`, `acks=all`), the broker hands
//!   out a producer id, and every key keeps its order on one partition;
//! - the projections' consumers: a consumer group with auto commit off, offsets stored and
//!   committed by hand after the "sink" has the message, and a later member of the group resumes
//!   exactly after the committed offsets;
//! - a second member joining the group triggers a rebalance that splits the partitions.
//!
//! Each test uses its own topic and consumer group, so the tests run in parallel.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::{ExactlyOnceSemantics, Statistics};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

const PARTITIONS: i32 = 4;
/// How long any one wait on the broker may take before the test fails.
const WAIT: Duration = Duration::from_secs(60);

/// Records the idempotent producer's state from librdkafka's statistics.
#[derive(Clone, Default)]
struct EosStats(Arc<Mutex<Option<ExactlyOnceSemantics>>>);

impl ClientContext for EosStats {
    fn stats(&self, statistics: Statistics) {
        if let Some(eos) = statistics.eos {
            *self.0.lock().expect("stats lock") = Some(eos);
        }
    }
}

impl EosStats {
    fn latest(&self) -> Option<ExactlyOnceSemantics> {
        self.0.lock().expect("stats lock").clone()
    }
}

/// A partition assignment change seen by one consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Assign(BTreeSet<i32>),
    Revoke(BTreeSet<i32>),
    Error(String),
}

/// Records every rebalance callback of one consumer.
#[derive(Clone, Default)]
struct Rebalances(Arc<Mutex<Vec<Change>>>);

impl ClientContext for Rebalances {}

impl ConsumerContext for Rebalances {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let change = match rebalance {
            Rebalance::Assign(tpl) => Change::Assign(partitions(tpl)),
            Rebalance::Revoke(tpl) => Change::Revoke(partitions(tpl)),
            Rebalance::Error(e) => Change::Error(e.to_string()),
        };
        self.0.lock().expect("rebalance lock").push(change);
    }
}

impl Rebalances {
    fn seen(&self) -> Vec<Change> {
        self.0.lock().expect("rebalance lock").clone()
    }
}

fn partitions(tpl: &TopicPartitionList) -> BTreeSet<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

fn assigned(consumer: &StreamConsumer<Rebalances>) -> BTreeSet<i32> {
    partitions(&consumer.assignment().expect("read the consumer's assignment"))
}

/// A consumer in `group` with auto commit and auto offset store off: offsets move only when the
/// test stores and commits them.
fn consumer(group: &str, topic: &str) -> (StreamConsumer<Rebalances>, Rebalances) {
    let context = Rebalances::default();
    let consumer: StreamConsumer<Rebalances> = testkit::kafka::client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "500")
        .create_with_context(context.clone())
        .expect("create a consumer");
    consumer.subscribe(&[topic]).expect("subscribe to the topic");
    (consumer, context)
}

fn idempotent_producer() -> (FutureProducer<EosStats>, EosStats) {
    let stats = EosStats::default();
    let producer = testkit::kafka::client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .set("statistics.interval.ms", "100")
        .create_with_context(stats.clone())
        .expect("create an idempotent producer");
    (producer, stats)
}

/// Sends every `(key, payload)` without waiting in between (so batches and retries can overlap,
/// which is what idempotence protects), then waits for each delivery report in send order.
/// Answers `(partition, offset)` per record.
async fn produce(producer: &FutureProducer<EosStats>, topic: &str, records: &[(String, String)]) -> Vec<(i32, i64)> {
    let mut pending = Vec::with_capacity(records.len());
    for (key, payload) in records {
        let record = FutureRecord::to(topic).key(key).payload(payload);
        match producer.send_result(record) {
            Ok(delivery) => pending.push(delivery),
            Err((e, _)) => panic!("enqueue {key}={payload}: {e}"),
        }
    }
    let mut delivered = Vec::with_capacity(pending.len());
    for (delivery, (key, payload)) in pending.into_iter().zip(records) {
        match delivery.await.expect("delivery report") {
            Ok(d) => delivered.push((d.partition, d.offset)),
            Err((e, _)) => panic!("deliver {key}={payload}: {e}"),
        }
    }
    delivered
}

/// `key-<k>` → `<k>:<seq>` for `seqs` of every key, interleaved across keys.
fn records(keys: usize, seqs: std::ops::Range<usize>) -> Vec<(String, String)> {
    seqs.flat_map(|seq| (0..keys).map(move |k| (format!("key-{k}"), format!("{k}:{seq}"))))
        .collect()
}

fn decode(message: &BorrowedMessage<'_>) -> (String, usize) {
    let key = String::from_utf8(message.key().expect("message has a key").to_vec()).expect("key is UTF-8");
    let payload = message
        .payload_view::<str>()
        .expect("message has a payload")
        .expect("payload is UTF-8");
    let seq = payload
        .split_once(':')
        .and_then(|(_, seq)| seq.parse().ok())
        .unwrap_or_else(|| panic!("payload {payload:?} is not <key>:<seq>"));
    (key, seq)
}

/// Receives until `count` messages arrived or [`WAIT`] passed; stores the offset of each one
/// after it is "in the sink" and commits them by hand, synchronously, before returning.
/// Answers `(key, seq, partition)` in arrival order.
async fn consume_and_commit(consumer: &StreamConsumer<Rebalances>, count: usize) -> Vec<(String, usize, i32)> {
    let mut sink = Vec::with_capacity(count);
    let deadline = Instant::now() + WAIT;
    while sink.len() < count && Instant::now() < deadline {
        let Ok(received) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await else {
            continue;
        };
        let message = received.expect("receive a message");
        let (key, seq) = decode(&message);
        sink.push((key, seq, message.partition()));
        consumer
            .store_offset_from_message(&message)
            .expect("store the offset after the sink has the message");
    }
    assert_eq!(
        sink.len(),
        count,
        "received {} of {count} messages in {} s",
        sink.len(),
        WAIT.as_secs()
    );
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit the stored offsets");
    sink
}

/// Leaves the group and closes `consumer`; fails the test if closing takes more than 30 s.
///
/// The drop runs on a thread of its own so that a hang in librdkafka's destroy fails the test
/// with a message instead of stalling the whole run. (Destroying a consumer blocks forever while
/// anything still holds a reference to one of its partitions, e.g. a `TopicPartitionList` from
/// `committed()`: drop those first.)
async fn close(consumer: StreamConsumer<Rebalances>) {
    consumer.unsubscribe();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !assigned(&consumer).is_empty() && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
    }
    let started = Instant::now();
    let closing = std::thread::spawn(move || drop(consumer));
    while !closing.is_finished() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "closing a consumer hung for 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_and_hand_committed_group_keep_per_key_order() {
    const KEYS: usize = 8;
    const PER_KEY: usize = 50;
    let topic = testkit::kafka::unique_topic("broker_order");
    let group = testkit::kafka::unique_group("broker_order");
    testkit::kafka::create_topic(&topic, PARTITIONS).await;

    let (producer, stats) = idempotent_producer();
    let sent = records(KEYS, 0..PER_KEY);
    let delivered = produce(&producer, &topic, &sent).await;

    // One key, one partition; on this fresh topic every partition holds exactly what was sent to
    // it, in send order, at offsets 0, 1, 2, ... (no duplicate written by a retry, no gap).
    let mut key_partition: BTreeMap<&str, i32> = BTreeMap::new();
    let mut next_offset: BTreeMap<i32, i64> = BTreeMap::new();
    for ((key, payload), &(partition, offset)) in sent.iter().zip(&delivered) {
        let first = *key_partition.entry(key).or_insert(partition);
        assert_eq!(first, partition, "{key} moved from partition {first} to {partition}");
        let expected = next_offset.entry(partition).or_insert(0);
        assert_eq!(
            offset, *expected,
            "{payload} got offset {offset} on partition {partition}"
        );
        *expected += 1;
    }
    assert!(
        key_partition.values().collect::<BTreeSet<_>>().len() > 1,
        "{KEYS} keys all landed on one partition: {key_partition:?}"
    );

    // The broker really accepted an idempotent producer: it assigned a producer id.
    let deadline = Instant::now() + Duration::from_secs(10);
    let eos = loop {
        match stats.latest() {
            Some(eos) if eos.idemp_state == "Assigned" && eos.producer_id >= 0 => break eos,
            other if Instant::now() > deadline => {
                panic!("idempotent producer never got a producer id; last statistics: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(eos.producer_epoch >= 0, "producer epoch: {eos:?}");
    assert!(
        producer.client().fatal_error().is_none(),
        "producer fatal error: {:?}",
        producer.client().fatal_error()
    );

    // Consume everything in a group, committing by hand.
    let (first, _) = consumer(&group, &topic);
    let received = consume_and_commit(&first, KEYS * PER_KEY).await;
    let mut per_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (key, seq, partition) in &received {
        assert_eq!(
            Some(partition),
            key_partition.get(key.as_str()),
            "{key}:{seq} read from an unexpected partition"
        );
        per_key.entry(key.clone()).or_default().push(*seq);
    }
    assert_eq!(per_key.len(), KEYS, "keys received: {:?}", per_key.keys());
    for (key, seqs) in &per_key {
        assert_eq!(
            *seqs,
            (0..PER_KEY).collect::<Vec<_>>(),
            "order (or exactly-once) broken for {key}"
        );
    }

    // The committed offsets are the end of every partition the producer wrote to. The list lives
    // in a block of its own: it must be dropped before the consumer is (see `close`).
    {
        let committed = first
            .committed(Duration::from_secs(10))
            .expect("read the committed offsets");
        for (&partition, &end) in &next_offset {
            let offset = committed.find_partition(&topic, partition).map(|e| e.offset());
            assert_eq!(
                offset,
                Some(Offset::Offset(end)),
                "committed offset of partition {partition}"
            );
        }
    }
    close(first).await;

    // A later member of the group resumes after the committed offsets: it sees only new messages.
    let more = records(KEYS, PER_KEY..PER_KEY + 1);
    produce(&producer, &topic, &more).await;
    let (second, _) = consumer(&group, &topic);
    let resumed = consume_and_commit(&second, more.len()).await;
    assert!(
        resumed.iter().all(|(_, seq, _)| *seq == PER_KEY),
        "a member of the group re-read committed messages: {resumed:?}"
    );
    let extra = tokio::time::timeout(Duration::from_secs(2), second.recv()).await;
    assert!(
        extra.is_err(),
        "unexpected extra message after resuming: {:?}",
        extra.map(|m| m.map(|m| decode(&m)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_consumer_joining_the_group_triggers_a_rebalance() {
    let topic = testkit::kafka::unique_topic("broker_rebalance");
    let group = testkit::kafka::unique_group("broker_rebalance");
    testkit::kafka::create_topic(&topic, PARTITIONS).await;
    let all: BTreeSet<i32> = (0..PARTITIONS).collect();

    // Alone in the group, the first member gets every partition.
    let (first, first_log) = consumer(&group, &topic);
    let deadline = Instant::now() + WAIT;
    while assigned(&first) != all {
        assert!(
            Instant::now() < deadline,
            "first member never got all partitions; rebalances: {:?}",
            first_log.seen()
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), first.recv()).await;
    }

    // A second member joins; both keep polling so the group can rebalance.
    let (second, second_log) = consumer(&group, &topic);
    let deadline = Instant::now() + WAIT;
    loop {
        let (a, b) = (assigned(&first), assigned(&second));
        if !a.is_empty() && !b.is_empty() {
            assert!(a.is_disjoint(&b), "both members own a partition: {a:?} and {b:?}");
            assert_eq!(
                a.union(&b).copied().collect::<BTreeSet<_>>(),
                all,
                "partitions unowned: {a:?} + {b:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rebalance after a second member joined in {} s: first has {a:?} ({:?}), second has {b:?} ({:?})",
            WAIT.as_secs(),
            first_log.seen(),
            second_log.seen()
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), first.recv()).await;
        let _ = tokio::time::timeout(Duration::from_millis(100), second.recv()).await;
    }

    // The first member saw its assignment change: all partitions, then some were taken away.
    let seen = first_log.seen();
    assert_eq!(
        seen.first(),
        Some(&Change::Assign(all.clone())),
        "first member's rebalances: {seen:?}"
    );
    assert!(
        seen.iter().any(|c| matches!(c, Change::Revoke(_))),
        "first member never had partitions revoked: {seen:?}"
    );
    assert!(
        matches!(seen.last(), Some(Change::Assign(p)) if *p == assigned(&first) && p.len() < all.len()),
        "first member's last assignment should be a part of the topic: {seen:?}"
    );
    assert!(
        !seen.iter().any(|c| matches!(c, Change::Error(_))),
        "rebalance errors: {seen:?}"
    );

    // The new assignment is real: a message on each partition reaches the member that owns it.
    let (producer, _) = idempotent_producer();
    let mut pending = Vec::new();
    for partition in 0..PARTITIONS {
        let payload = format!("p{partition}:0");
        let record = FutureRecord::to(&topic).key("k").payload(&payload).partition(partition);
        let delivery = producer.send_result(record).map_err(|(e, _)| e).expect("enqueue");
        pending.push(delivery);
    }
    for delivery in pending {
        delivery
            .await
            .expect("delivery report")
            .map_err(|(e, _)| e)
            .expect("deliver");
    }
    let (owned_first, owned_second) = (assigned(&first), assigned(&second));
    let mut got: BTreeMap<i32, &str> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < all.len() {
        assert!(Instant::now() < deadline, "messages reached only partitions {got:?}");
        for (name, member, owned) in [("first", &first, &owned_first), ("second", &second, &owned_second)] {
            if let Ok(received) = tokio::time::timeout(Duration::from_millis(100), member.recv()).await {
                let partition = received.expect("receive").partition();
                assert!(
                    owned.contains(&partition),
                    "{name} member read partition {partition} it does not own ({owned:?})"
                );
                got.insert(partition, name);
            }
        }
    }
    assert_eq!(
        got.values().collect::<BTreeSet<_>>().len(),
        2,
        "both members read: {got:?}"
    );
    close(second).await;
    close(first).await;
}
