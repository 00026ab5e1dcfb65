//! The adapter-independent half of the event-store contract: every test function here runs
//! against every adapter, on a real server, through [`Stores`].
//!
//! Included as a module, with `#[path = ...] mod suite;`, by two test crates: this crate's
//! `tests/contract.rs` (PostgreSQL and SQLite) and `event-store-kurrentdb/tests/contract.rs`
//! (KurrentDB, a crate outside the workspace). Why a file included twice rather than functions
//! exported by `event-store` behind a feature: the contract stays test code, compiled only into
//! test binaries, with no feature, no public API and no test-only dependencies in the library;
//! and each including crate compiles the functions against its own adapters. Because the file is
//! compiled in each crate, a function added here and not run by one of them is `dead_code` there,
//! which `clippy -D warnings` refuses: add it to both `contract!` lists.
//!
//! Capabilities only some adapters have are not here: they stay in the including test file
//! (`sql_only` in `event-store`, the asserted refusals in `event-store-kurrentdb`, ADR 0006).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use event_store::{
    AppendError, Commit, EventMetadata, EventStore, ExpectedVersion, NewEvent, Snapshot, Subscription, Until,
};
use uuid::Uuid;

/// Where a test's stores live: every store opened from one value shares its data (one database,
/// one file, one namespace on a server), like several processes writing the same event store.
pub(crate) trait Stores {
    /// A new store instance on this test's data.
    async fn store(&self) -> Arc<dyn EventStore>;
}

pub(crate) fn event(event_type: &str, payload: &[u8]) -> NewEvent {
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

pub(crate) fn events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| event("test.happened", format!("e{i}").as_bytes()))
        .collect()
}

pub(crate) async fn appends_and_reads_back_a_stream(backend: impl Stores) {
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

pub(crate) async fn stale_expected_version_appends_nothing(backend: impl Stores) {
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

pub(crate) async fn repeated_idempotency_key_appends_nothing(backend: impl Stores) {
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

pub(crate) async fn concurrent_repeats_of_a_key_append_once(backend: impl Stores) {
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

pub(crate) async fn reads_a_stream_as_of_a_position_or_a_time(backend: impl Stores) {
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

pub(crate) async fn concurrent_writers_never_share_a_version(backend: impl Stores) {
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

pub(crate) async fn subscription_catches_up_then_follows_live(backend: impl Stores) {
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
pub(crate) async fn tailing_reader_never_skips_under_concurrent_appenders(backend: impl Stores) {
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

pub(crate) async fn snapshots_are_found_by_version_position_and_time(backend: impl Stores) {
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

pub(crate) async fn checkpoints_only_move_forward(backend: impl Stores) {
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
