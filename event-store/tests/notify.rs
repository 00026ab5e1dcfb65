//! PostgreSQL only: a commit is announced to every store on the database (`LISTEN`/`NOTIFY`),
//! not only to the process that made it. Subscribers in other processes (the relay, the
//! embedded projection runner) wake up on it instead of waiting for their poll interval.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use chrono::Utc;
use event_store::{
    Commit, EventMetadata, EventStore, ExpectedVersion, NewEvent, PgEventStore, StoreOptions, StreamAppend,
};
use uuid::Uuid;

fn event() -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "test.happened".into(),
        schema_version: 1,
        payload: b"x".to_vec(),
        occurred_at: Utc::now(),
        metadata: EventMetadata::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_store_on_the_database_hears_of_every_commit() {
    let db = testkit::postgres::fresh_database().await;
    PgEventStore::migrate(&db.pool(1).await).await.unwrap();
    let writer = PgEventStore::open(db.pool(4).await, StoreOptions::default())
        .await
        .unwrap();
    let other = PgEventStore::open(db.pool(4).await, StoreOptions::default())
        .await
        .unwrap();
    let mut changes = other.changes();
    // The listener connects in the background: commit until the other store hears, at most 10 s.
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        let mut last = 0;
        loop {
            let commit = Commit {
                appends: vec![StreamAppend {
                    stream_id: format!("test-{}", Uuid::new_v4()),
                    expected: ExpectedVersion::NoStream,
                    events: vec![event(), event()],
                }],
                idempotency: None,
            };
            last = writer.commit(commit).await.unwrap().last_position().max(last);
            if tokio::time::timeout(Duration::from_millis(200), changes.wait_for(|&p| p >= last))
                .await
                .is_ok()
            {
                return last;
            }
        }
    })
    .await
    .expect("the other store never heard of a commit");
    assert_eq!(
        *other.changes().borrow(),
        heard,
        "it heard the last position of the commit"
    );
}
