//! The relay against the real broker of `scripts/services up` (tansu) and a fresh PostgreSQL
//! store: every appended event reaches Kafka with its headers, in stream order per key; the
//! checkpoint follows the broker's acknowledgements; a second relay waits for the lease and takes
//! over when the first stops. Each test publishes to topics of its own (a unique prefix).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use event_schemas::{Category, Envelope};
use event_store::{EventStore, PgEventStore, StoreOptions};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use relay::{RelayConfig, RelayError, RelayStatus};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Setup {
    db: testkit::postgres::TestDatabase,
    config: RelayConfig,
}

async fn setup() -> Setup {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .try_init();
    let db = testkit::postgres::fresh_database().await;
    PgEventStore::migrate(&db.pool(1).await).await.unwrap();
    let config = RelayConfig {
        brokers: testkit::kafka::bootstrap_servers(),
        topic_prefix: format!("{}.", testkit::unique_name("relay")),
        partitions: 4,
        ..RelayConfig::default()
    };
    Setup { db, config }
}

async fn store(setup: &Setup) -> PgEventStore {
    PgEventStore::open(setup.db.pool(8).await, StoreOptions::default())
        .await
        .unwrap()
}

/// Waits up to `within` until the relay's status holds `until`; fails naming `what` otherwise.
async fn status_until(
    status: &mut watch::Receiver<RelayStatus>,
    within: Duration,
    what: &str,
    until: impl FnMut(&RelayStatus) -> bool,
) {
    tokio::time::timeout(within, status.wait_for(until))
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {within:?}"))
        .expect("the relay's status sender lives as long as the relay");
}

/// Registers `customers` customers from each of `writers` concurrent tasks and renames each
/// `renames` times, straight to the store (the relay's load, without the handler's cost), every
/// append expecting the stream's version; answers how many events that appended.
async fn write(store: &PgEventStore, writers: usize, customers: usize, renames: usize) -> usize {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for c in 0..customers {
                let id = Uuid::now_v7();
                let stream = Category::Customer.stream_id(id);
                let registered = event_schemas::CustomerRegistered {
                    customer_id: id,
                    name: format!("c{w}-{c}"),
                    email: "c@example.com".into(),
                };
                store
                    .append(
                        &stream,
                        event_store::ExpectedVersion::NoStream,
                        vec![new_event(registered)],
                    )
                    .await
                    .unwrap();
                for r in 0..renames {
                    let renamed = event_schemas::CustomerRenamed {
                        customer_id: id,
                        name: format!("c{w}-{c} v{r}"),
                    };
                    let expected = event_store::ExpectedVersion::Exact(1 + r as u64);
                    store.append(&stream, expected, vec![new_event(renamed)]).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    writers * customers * (1 + renames)
}

/// An event as the store takes it, encoded by `event-schemas`.
fn new_event(event: impl Into<event_schemas::DomainEvent>) -> event_store::NewEvent {
    let encoded = event.into().encode();
    event_store::NewEvent {
        event_id: Uuid::now_v7(),
        event_type: encoded.event_type.to_owned(),
        schema_version: encoded.schema_version,
        payload: encoded.payload,
        occurred_at: chrono::Utc::now(),
        metadata: event_store::EventMetadata::default(),
    }
}

/// Reads the customers topic until every position up to `head` was seen; answers the envelopes
/// by stream, in the order they arrived.
async fn consume_until(config: &RelayConfig, head: u64) -> BTreeMap<String, Vec<(u64, u64)>> {
    let consumer: StreamConsumer = testkit::kafka::client_config()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", testkit::kafka::unique_group("relay_check"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&config.topic(Category::Customer)]).unwrap();
    let mut seen = BTreeSet::new();
    let mut by_stream: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while (seen.len() as u64) < head {
        assert!(
            Instant::now() < deadline,
            "only {} of {head} positions reached Kafka",
            seen.len()
        );
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await else {
            continue;
        };
        let envelope = Envelope::decode(message.payload().unwrap()).unwrap();
        assert_eq!(message.key(), Some(envelope.stream_id.as_bytes()), "keyed by stream id");
        let headers = message.headers().unwrap();
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(
            header(relay::headers::POSITION),
            Some(envelope.global_position.to_string())
        );
        assert_eq!(
            header(relay::headers::EVENT_TYPE).as_deref(),
            Some(envelope.event_type.as_str())
        );
        assert_eq!(
            header(relay::headers::SCHEMA_VERSION),
            Some(envelope.schema_version.to_string())
        );
        envelope.event().expect("the payload decodes");
        seen.insert(envelope.global_position);
        by_stream
            .entry(envelope.stream_id.clone())
            .or_default()
            .push((envelope.stream_version, envelope.global_position));
    }
    assert_eq!(seen, (1..=head).collect(), "every position, none missing");
    by_stream
}

/// Order per key: a stream's versions arrive increasing; a redelivery may repeat a run of them
/// (at least once) but never skips one nor goes back before what was already delivered twice.
fn assert_stream_order(by_stream: &BTreeMap<String, Vec<(u64, u64)>>) {
    for (stream, versions) in by_stream {
        let mut expected = 1;
        for &(v, _) in versions {
            assert!(v <= expected, "{stream}: version {v} arrived before {expected}");
            if v == expected {
                expected += 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_reaches_kafka_in_stream_order_and_the_checkpoint_follows() {
    let setup = setup().await;
    let store = store(&setup).await;
    let written = write(&store, 8, 6_000, 0).await + write(&store, 8, 25, 9).await; // 50,000 events, 8 writers
    let (status_tx, mut status) = watch::channel(RelayStatus::default());
    let stop = CancellationToken::new();
    let relay = tokio::spawn(relay::run(store.clone(), setup.config.clone(), status_tx, stop.clone()));

    // Events appended while the relay runs are published too.
    let more = write(&store, 2, 10, 4).await;
    let head = store.head_position().await.unwrap();
    assert_eq!(head, (written + more) as u64);
    let by_stream = consume_until(&setup.config, head).await;
    assert_eq!(by_stream.len(), 48_000 + 8 * 25 + 2 * 10);
    assert_stream_order(&by_stream);

    status_until(
        &mut status,
        Duration::from_secs(30),
        "every event published and checkpointed",
        |s| s.checkpoint == head,
    )
    .await;
    assert!(status.borrow().ready && status.borrow().leader);
    stop.cancel();
    relay.await.unwrap().unwrap();
    assert_eq!(
        store.load_checkpoint(relay::RELAY_NAME).await.unwrap(),
        head,
        "checkpoint stored in the store's database"
    );
    assert!(!status.borrow().ready, "a stopped relay is not ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_relay_waits_and_takes_over() {
    let mut setup = setup().await;
    setup.config.lease_retry = Duration::from_millis(200);
    let (a_store, b_store) = (store(&setup).await, store(&setup).await);
    let (a_tx, mut a) = watch::channel(RelayStatus::default());
    let (b_tx, mut b) = watch::channel(RelayStatus::default());
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let relay_a = tokio::spawn(relay::run(a_store.clone(), setup.config.clone(), a_tx, stop_a.clone()));
    status_until(
        &mut a,
        Duration::from_secs(30),
        "a relay with nothing to publish is ready once the broker answers",
        |s| s.leader && s.ready,
    )
    .await;
    let relay_b = tokio::spawn(relay::run(b_store.clone(), setup.config.clone(), b_tx, stop_b.clone()));

    let first = write(&a_store, 2, 10, 4).await as u64;
    status_until(
        &mut a,
        Duration::from_secs(30),
        "the first relay published every event",
        |s| s.checkpoint == first,
    )
    .await;
    assert!(!b.borrow().leader, "only one relay publishes");

    stop_a.cancel(); // the first relay goes away and its lease with it
    relay_a.await.unwrap().unwrap();
    status_until(&mut b, Duration::from_secs(10), "taken over within seconds", |s| {
        s.leader
    })
    .await;
    let second = write(&b_store, 2, 10, 4).await as u64;
    let head = first + second;
    status_until(
        &mut b,
        Duration::from_secs(30),
        "every event published and checkpointed",
        |s| s.checkpoint == head,
    )
    .await;
    let by_stream = consume_until(&setup.config, head).await;
    assert_stream_order(&by_stream);
    stop_b.cancel();
    relay_b.await.unwrap().unwrap();
}

/// The checkpoint is stored beside the next round, but a save that fails is still reported at
/// once, also when no event follows: the relay says it is unready and retries from its
/// checkpoint until the save can be made, and then stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkpoint_that_cannot_be_stored_makes_the_relay_unready_at_once() {
    let mut setup = setup().await;
    setup.config.max_backoff = Duration::from_millis(500);
    let store = store(&setup).await;
    let admin = setup.db.pool(1).await;
    let (status_tx, mut status) = watch::channel(RelayStatus::default());
    let stop = CancellationToken::new();
    let relay = tokio::spawn(relay::run(store.clone(), setup.config.clone(), status_tx, stop.clone()));
    status_until(
        &mut status,
        Duration::from_secs(30),
        "the relay leads and is ready",
        |s| s.leader && s.ready,
    )
    .await;

    sqlx::raw_sql("ALTER TABLE checkpoints RENAME TO checkpoints_away")
        .execute(&admin)
        .await
        .unwrap();
    let head = write(&store, 1, 1, 0).await as u64; // one round, then nothing more
    status_until(
        &mut status,
        Duration::from_secs(10),
        "a failed save is reported while the log is idle",
        |s| !s.ready && s.last_error.is_some(),
    )
    .await;

    sqlx::raw_sql("ALTER TABLE checkpoints_away RENAME TO checkpoints")
        .execute(&admin)
        .await
        .unwrap();
    status_until(
        &mut status,
        Duration::from_secs(30),
        "ready again once the checkpoint can be stored",
        |s| s.ready && s.checkpoint == head,
    )
    .await;
    stop.cancel();
    relay.await.unwrap().unwrap();
    assert_eq!(store.load_checkpoint(relay::RELAY_NAME).await.unwrap(), head);
}

/// A relay running over a fresh store, publishing to a broker of its own that the test freezes
/// (the shared one must keep serving every other test).
struct PrivateRelay {
    broker: testkit::kafka::PrivateBroker,
    setup: Setup,
    store: PgEventStore,
    status: watch::Receiver<RelayStatus>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), RelayError>>,
}

/// Starts a [`PrivateRelay`]: batches of 500 events, the rest of its config the defaults but
/// for what `configure` changes.
async fn private_relay(configure: impl FnOnce(&mut RelayConfig)) -> PrivateRelay {
    let broker = testkit::kafka::private_broker().await;
    let mut setup = setup().await;
    setup.config.brokers = broker.bootstrap_servers().to_owned();
    setup.config.batch_size = 500;
    configure(&mut setup.config);
    let store = store(&setup).await;
    let (status_tx, status) = watch::channel(RelayStatus::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(relay::run(store.clone(), setup.config.clone(), status_tx, stop.clone()));
    PrivateRelay {
        broker,
        setup,
        store,
        status,
        stop,
        task,
    }
}

impl PrivateRelay {
    /// Once the broker is back: waits until every event up to `head` is published and
    /// checkpointed, reads them all from the broker (one per stream), stops the relay; answers
    /// them by stream.
    async fn catch_up(mut self, head: u64) -> BTreeMap<String, Vec<(u64, u64)>> {
        status_until(
            &mut self.status,
            Duration::from_secs(120),
            "caught up after the broker came back",
            |s| s.ready && s.checkpoint == head,
        )
        .await;
        let by_stream = consume_until(&self.setup.config, head).await;
        assert_eq!(by_stream.len() as u64, head);
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
        by_stream
    }
}

/// How long the broker stays frozen: half the producer's default delivery timeout
/// (`message.timeout.ms`; librdkafka's only other clock on a produce request,
/// `socket.timeout.ms`, is as long by default, and `request.timeout.ms` is the broker's to
/// enforce), so that librdkafka holds the batch and delivers it once the broker is back, without
/// giving it up.
const OUTAGE: Duration = Duration::from_secs(30);

/// The broker freezes for 30 s under load: the relay says it is unready meanwhile, keeps at most
/// a batch in flight, and after the broker comes back it catches up without losing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_broker_makes_the_relay_unready_and_nothing_is_lost() {
    let mut relay = private_relay(|config| config.unready_after = Duration::from_secs(2)).await;
    assert!(
        OUTAGE * 2 <= relay.setup.config.delivery_timeout,
        "the outage is shorter than the delivery timeout"
    );

    let before = write(&relay.store, 4, 500, 0).await as u64;
    status_until(
        &mut relay.status,
        Duration::from_secs(60),
        "published before the pause",
        |s| s.ready && s.checkpoint == before,
    )
    .await;

    relay.broker.pause();
    let paused = Instant::now();
    let load = tokio::spawn({
        let store = relay.store.clone();
        async move { write(&store, 4, 1_000, 0).await }
    });
    status_until(
        &mut relay.status,
        Duration::from_secs(20),
        "the relay reports itself unready while the broker is paused",
        |s| !s.ready,
    )
    .await;
    let during = relay.status.borrow().checkpoint;
    assert!(during < before + 4_000, "nothing is acknowledged by a frozen broker");
    load.await.unwrap();
    // A span of time, not a wait on the relay: what it does meanwhile is checked above. Counted
    // from the pause, before which the batch in flight cannot have been sent, so the batch has
    // waited less than OUTAGE when the broker answers again.
    tokio::time::sleep_until((paused + OUTAGE).into()).await;
    relay.broker.resume();

    let head = relay.store.head_position().await.unwrap();
    assert_eq!(head, before + 4_000);
    relay.catch_up(head).await;
}

/// The broker freezes for three times the producer's delivery timeout under load: librdkafka
/// gives the batch up, and an idempotent producer whose records timed out can be fenced by the
/// broker for good. The relay retries from its checkpoint with a new producer and, once the
/// broker is back, publishes everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_frozen_past_the_delivery_timeout_loses_nothing() {
    const DELIVERY_TIMEOUT: Duration = Duration::from_secs(4);
    let mut relay = private_relay(|config| {
        config.unready_after = Duration::from_secs(1);
        config.delivery_timeout = DELIVERY_TIMEOUT;
        config.max_backoff = Duration::from_secs(1);
    })
    .await;

    let before = write(&relay.store, 4, 250, 0).await as u64;
    status_until(
        &mut relay.status,
        Duration::from_secs(60),
        "published before the freeze",
        |s| s.ready && s.checkpoint == before,
    )
    .await;

    relay.broker.pause();
    let paused = Instant::now();
    write(&relay.store, 4, 500, 0).await;
    // The relay gives a batch up after the delivery timeout and says why; that it did so (rather
    // than only waiting) is what this drill is about.
    status_until(
        &mut relay.status,
        DELIVERY_TIMEOUT * 4,
        "the relay gives the batch up and retries",
        |s| !s.ready && !s.leader,
    )
    .await;
    tokio::time::sleep_until((paused + DELIVERY_TIMEOUT * 3).into()).await;
    relay.broker.resume();

    let head = relay.store.head_position().await.unwrap();
    assert_eq!(head, before + 2_000);
    let by_stream = relay.catch_up(head).await;
    assert_stream_order(&by_stream);
}
