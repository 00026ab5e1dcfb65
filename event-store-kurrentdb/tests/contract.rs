//! The event-store contract on a KurrentDB server: the functions of
//! `event-store/tests/contract/suite.rs`, the ones the PostgreSQL and SQLite adapters pass, run
//! against the server named by `KURRENTDB_URL` (e.g. `kurrentdb://127.0.0.1:2113?tls=false`, from
//! `docker compose --profile kurrentdb up -d kurrentdb`), each test in its own stream namespace
//! so they share one server. Where KurrentDB refuses a capability (ADR 0006), the tests of this
//! file assert the refusal instead.
//!
//! The functions are not copied: `suite.rs` is included from `event-store` by path. Why a file
//! included by both test crates rather than functions exported by `event-store` behind a feature:
//! the contract stays test code, compiled only into test binaries, with no feature, no public API
//! and no test-only dependencies in the library (see the head of `suite.rs`).
//!
//! Without `KURRENTDB_URL` this file is not compiled at all (`cfg(kurrentdb_server)`, set by
//! `build.rs`), so no run without a server can read as a KurrentDB pass. With it set and no
//! server there, every test fails naming how to start one.
#![cfg(kurrentdb_server)]
#![allow(clippy::unwrap_used)]

#[path = "../../event-store/tests/contract/suite.rs"]
mod suite;

use std::sync::Arc;

use event_store::{AppendError, Commit, EventStore, ExpectedVersion, StreamAppend};
use event_store_kurrentdb::{KurrentDbEventStore, KurrentDbOptions};
use suite::{Stores, event, events};
use uuid::Uuid;

/// One KurrentDB server shared by every test; `namespace` keeps this test's streams apart.
struct Backend {
    url: String,
    namespace: String,
}

impl Backend {
    /// The KurrentDB server of `KURRENTDB_URL` (these tests are only compiled when it is set),
    /// with a fresh namespace.
    fn kurrentdb() -> Self {
        let url = std::env::var("KURRENTDB_URL")
            .expect("KURRENTDB_URL was set when this test was compiled; set it again to run it");
        Backend {
            url,
            namespace: format!("t{}", Uuid::new_v4().simple()),
        }
    }
}

impl Stores for Backend {
    async fn store(&self) -> Arc<dyn EventStore> {
        let options = KurrentDbOptions {
            namespace: self.namespace.clone(),
            ..KurrentDbOptions::default()
        };
        match KurrentDbEventStore::connect(&self.url, options).await {
            Ok(store) => Arc::new(store),
            Err(e) => panic!(
                "the KurrentDB server of KURRENTDB_URL is not reachable ({e:?}); start one with \
                 `docker compose --profile kurrentdb up -d kurrentdb`"
            ),
        }
    }
}

/// One test per contract function: `everywhere` (the functions of `suite`, which every adapter
/// passes) and `kurrentdb_only` (the functions of this file), which replace the `sql_only` tests
/// of `event-store` for the capabilities KurrentDB refuses (ADR 0006).
macro_rules! contract {
    (
        everywhere: [$($test:ident),* $(,)?],
        kurrentdb_only: [$($kurrent:ident),* $(,)?] $(,)?
    ) => {
        mod kurrentdb {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $test() { super::suite::$test(super::Backend::kurrentdb()).await } )*
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
    kurrentdb_only: [
        multi_stream_commit_is_refused_and_appends_nothing,
        duplicate_event_id_is_refused_only_within_a_commit,
    ],
}

/// KurrentDB (client 1.2) has no transaction across streams: a commit over two streams is
/// refused before anything is sent, whatever the versions and with or without a key, and
/// appends nothing (ADR 0006). Placing an order needs the saga there.
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

/// KurrentDB does not index event ids, so the adapter refuses a duplicate only inside one commit.
/// The same id in another stream is accepted: this test pins that documented gap (ADR 0006), so
/// a change of behaviour shows up here.
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
