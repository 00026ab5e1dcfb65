//! The KurrentDB adapter of orderflow's event store (ADR 0006): the contract of
//! [`event_store::EventStore`] on a KurrentDB server through its gRPC client (crate `kurrentdb`
//! 1.2), as far as KurrentDB can give it. A crate of its own, outside the workspace, so that the
//! workspace's builds never compile the client (tonic, rustls, aws-lc). No binary selects it yet.
//!
//! Map of this file, top to bottom:
//! - [`KurrentDbOptions`] and [`KurrentDbEventStore`]: connecting, and the task (`follow`) that
//!   turns other processes' commits into [`changes`](EventStore::changes) signals.
//! - `Names`: where a store's streams live on the server (its namespace, its own `_orderflow.`
//!   streams) and the server-side filter of `$all` that keeps only domain streams.
//! - Records: `EventMeta` (our fields of an event, in KurrentDB's user metadata), `StoredEvent`,
//!   `KeyRecord` (an idempotency key's intent and outcome), `CheckpointRecord`, `SnapshotRecord`.
//! - The write path: `validate`, `send`, `read_back`, `append_once`, and the idempotency
//!   protocol (`commit_with_key`, `apply`, `settle`, `record_outcome`).
//! - The adapter's own streams: `append_record`, `read_last`, `keep_only`, snapshots.
//! - `impl EventStore for KurrentDbEventStore`: the trait, where [`KurrentDbError`] becomes
//!   [`StoreError`] (or, in a commit, [`AppendError::Store`]).
//! - Reads of `$all` (`read_all_from`, `read_head`, `read_log_end`) and the mappings between
//!   KurrentDB's events, revisions and times and ours.
//! - [`KurrentDbError`]: this adapter's errors.
//! - Tests: pure ones, and two of the idempotency recovery against a server (compiled only when
//!   `KURRENTDB_URL` is set, see `build.rs`). The contract suite is `tests/contract.rs`.
//!
//! What maps natively:
//! - A stream is the KurrentDB stream of the same name (behind [`KurrentDbOptions::namespace`]).
//!   Our version is KurrentDB's revision + 1, and an expected version becomes an expected
//!   revision: the server does the optimistic check.
//! - Our [`Position`] is the event's commit position in `$all`, a byte offset in the server's
//!   transaction log. One writer appends to that log and `$all` is read only up to what is
//!   committed, so positions become visible in commit order and a tailing reader never skips.
//!   They are **not dense**: consecutive events are at least one log record apart (typically
//!   hundreds of bytes), so a difference of positions is not a number of events. `$all` can only
//!   be read from a position where a record starts: [`read_all`](EventStore::read_all) takes 0 or
//!   the position of an event, not an arbitrary number.
//! - `recorded_at` is the server's `created` stamp (100 ns ticks, kept to the microsecond).
//!
//! What does not map, and what this adapter does instead (the guarantees are in ADR 0006):
//! - The 1.2 client has no transaction and no append across streams: a commit of more than one
//!   append is refused with [`AppendError::Unsupported`] before anything is sent.
//! - Idempotency keys live in one small stream per key. Before appending, the writer records an
//!   *intent* (the exact append: stream, version it starts after, events with their ids); after,
//!   the outcome. Whoever finds an intent without an outcome finishes it: it looks whether those
//!   events are in the stream, and if the owner is silent for [`KurrentDbOptions::intent_grace`]
//!   it sends the same append itself. An append at an exact revision with the same event ids is
//!   applied at most once (KurrentDB answers a repeat as already done, or, while the first is
//!   not yet replicated, drops it and the repeat times out), so the key answers its first result
//!   even when its writer crashed half-way.
//! - KurrentDB does not index event ids: a duplicate id is refused only inside one commit.
//! - Checkpoints and snapshots live in their own streams (`_orderflow.checkpoint-…`,
//!   `_orderflow.snapshot-…`), kept short with `$maxCount`. Streams whose name starts with `$`
//!   (KurrentDB's) or `_` (ours) are never domain streams: reads of `$all` filter them out on the
//!   server, and appends to such names are refused.
//! - `changes()` moves with this process's own commits at once, and with other processes' within
//!   `FOLLOW_POLL` (200 ms): a task reads `$all` forward from the known head. Not a
//!   `subscribe_to_all` task: the 1.2 client's subscription, when the server ends the stream
//!   cleanly, polls the finished stream again without ever yielding
//!   (`Subscription::next_subscription_event`), which would pin a runtime worker for good.
//!
//! Errors: everything inside the adapter fails with [`KurrentDbError`], which wraps the client's
//! error with what the adapter was doing. At the trait boundary it becomes
//! [`StoreError::Backend`] (the `KurrentDbError` is its source), except inconsistent stored data,
//! which stays [`StoreError::Corrupt`] as in the other adapters.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use event_store::{
    AppendError, AppendResult, Commit, Committed, EventMetadata, EventStore, ExpectedVersion, IdempotencyKey,
    IdempotentResult, NewEvent, Position, RecordedEvent, Snapshot, StoreError, StreamAppend, Until,
};
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, CurrentRevision, EventData, ReadAllOptions, ReadStreamOptions,
    ResolvedEvent, StreamMetadata, StreamPosition, StreamState, SubscriptionFilter,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

/// Prefix of the streams this adapter keeps for itself (keys, checkpoints, snapshots).
const INTERNAL: &str = "_orderflow.";

/// Event types of the adapter's own records. Stored data: never rename.
const KEY_RECORD_TYPE: &str = "orderflow.idempotency-key";
const CHECKPOINT_TYPE: &str = "orderflow.checkpoint";
const SNAPSHOT_TYPE: &str = "orderflow.snapshot";
const SNAPSHOTS_CLEARED_TYPE: &str = "orderflow.snapshots-cleared";

/// Snapshots kept per stream (`$maxCount`); older ones are a cache miss, never a wrong answer.
const SNAPSHOTS_KEPT: u64 = 16;

/// How long a read may take before it fails (appends use the client's default of 10 s).
const READ_DEADLINE: Duration = Duration::from_secs(30);

/// How often a request that found another writer's intent looks again for its outcome.
const INTENT_POLL: Duration = Duration::from_millis(25);

/// How often the change signal looks for other processes' commits, and how many events it reads
/// at most each time.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
const FOLLOW_BATCH: usize = 64;

/// Where and how the adapter keeps its data on one KurrentDB server.
#[derive(Debug, Clone)]
pub struct KurrentDbOptions {
    /// Keeps this store's streams apart from other stores' on the same server (the contract
    /// tests give each test its own): stream `order-1` is `{namespace}.order-1` on the server.
    /// Letters, digits and `-`. Empty in production, where the streams keep their own names; the
    /// empty namespace sees every stream, so it needs a server of its own.
    pub namespace: String,
    /// How long an idempotency intent without an outcome is left to its writer before another
    /// request finishes it. Longer than an append's deadline (10 s), so the writer has given up.
    pub intent_grace: Duration,
}

impl Default for KurrentDbOptions {
    fn default() -> Self {
        KurrentDbOptions {
            namespace: String::new(),
            intent_grace: Duration::from_secs(12),
        }
    }
}

/// The event store on a KurrentDB server. Cheap to clone; clones share the client and the task
/// that feeds [`changes`](EventStore::changes).
#[derive(Clone)]
pub struct KurrentDbEventStore {
    client: Client,
    names: Arc<Names>,
    intent_grace: Duration,
    /// The highest position this process knows of: its own commits and what the follower saw.
    head: watch::Sender<Position>,
    changes: watch::Receiver<Position>,
    _follower: Arc<AbortOnDrop>,
}

impl KurrentDbEventStore {
    /// A store on the server named by a KurrentDB connection string
    /// (`kurrentdb://admin:changeit@localhost:2113?tls=false`). The user must be allowed to read
    /// `$all`. Reads the head and starts the task that follows `$all`, so it must be called inside
    /// a Tokio runtime; an unreachable server is an error here, not at the first command.
    pub async fn connect(url: &str, options: KurrentDbOptions) -> Result<Self, KurrentDbError> {
        let settings: ClientSettings = url.parse().map_err(KurrentDbError::ConnectionString)?;
        let client = Client::new(settings).map_err(|e| KurrentDbError::ClientSetup(e.into()))?;
        Self::open(client, options).await
    }

    /// A store on an existing client (see [`connect`](Self::connect)).
    pub async fn open(client: Client, options: KurrentDbOptions) -> Result<Self, KurrentDbError> {
        let names = Arc::new(Names::new(options.namespace)?);
        let head = read_head(&client, &names).await?;
        // Where the follower starts: the head, or for a namespace without events the end of the
        // whole log (so it does not rescan the log from the start on every poll).
        let start = if head > 0 { head } else { read_log_end(&client).await? };
        let (head, changes) = watch::channel(head);
        let follower = tokio::spawn(follow(client.clone(), names.clone(), head.clone(), start));
        Ok(KurrentDbEventStore {
            client,
            names,
            intent_grace: options.intent_grace,
            head,
            changes,
            _follower: Arc::new(AbortOnDrop(follower)),
        })
    }

    /// The client this store talks through.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Aborts the follower task when the last clone of the store is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Turns other processes' commits into change signals: reads `$all` forward from the known head.
/// Both `start` and the head are positions of records, so valid places to start a read. A failed
/// read loses signals, never events: subscribers also poll.
async fn follow(client: Client, names: Arc<Names>, head: watch::Sender<Position>, start: Position) {
    let filter = names.domain_filter();
    let mut cursor = start;
    let mut failing = false;
    loop {
        tokio::time::sleep(FOLLOW_POLL).await;
        let after = cursor.max(*head.borrow());
        match read_all_from(&client, &filter, after, FOLLOW_BATCH).await {
            Ok(events) => {
                failing = false;
                if let Some(e) = events.last().and_then(|e| e.event.as_ref()) {
                    cursor = e.position.commit;
                    advance(&head, cursor);
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = ?e, "following KurrentDB $all failed; retrying every second");
                }
                failing = true;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn advance(head: &watch::Sender<Position>, position: Position) {
    head.send_if_modified(|h| {
        let moved = position > *h;
        if moved {
            *h = position;
        }
        moved
    });
}

/// Stream names on the server: the namespace, and which streams are domain streams.
#[derive(Debug)]
struct Names {
    /// `{namespace}.`, or nothing for the empty namespace. A namespace has no `.`, so no
    /// namespace's prefix starts another's.
    prefix: String,
    /// Server-side filter of `$all` (a .NET regular expression on the stream name): this
    /// namespace's streams that are neither KurrentDB's (`$…`) nor ours (`_…`).
    domain_regex: String,
}

impl Names {
    fn new(namespace: String) -> Result<Self, KurrentDbError> {
        if !namespace.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(KurrentDbError::Namespace(namespace));
        }
        let prefix = if namespace.is_empty() {
            String::new()
        } else {
            format!("{namespace}.")
        };
        // The '.' is the only character of the prefix that a regular expression reads specially.
        let domain_regex = format!("^{}[^$_]", prefix.replace('.', "\\."));
        Ok(Names { prefix, domain_regex })
    }

    fn domain_filter(&self) -> SubscriptionFilter {
        SubscriptionFilter::on_stream_name().regex(&self.domain_regex)
    }

    fn stream(&self, stream_id: &str) -> String {
        format!("{}{stream_id}", self.prefix)
    }

    fn stream_id<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(self.prefix.as_str())
    }

    fn key(&self, key: &str) -> String {
        format!("{INTERNAL}idempotency-{}{key}", self.prefix)
    }

    fn checkpoint(&self, name: &str) -> String {
        format!("{INTERNAL}checkpoint-{}{name}", self.prefix)
    }

    fn snapshot_prefix(&self) -> String {
        format!("{INTERNAL}snapshot-{}", self.prefix)
    }

    fn snapshot(&self, stream_id: &str) -> String {
        format!("{}{stream_id}", self.snapshot_prefix())
    }
}

/// Our fields of an event, kept in KurrentDB's user metadata (the payload is the event's data).
/// `$correlationId` and `$causationId` are KurrentDB's own names, which its projections know.
#[derive(Debug, Serialize, Deserialize)]
struct EventMeta {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "occurredAtUs")]
    occurred_at_us: i64,
    #[serde(rename = "$correlationId")]
    correlation_id: String,
    #[serde(rename = "$causationId")]
    causation_id: String,
    actor: String,
}

/// An event as an intent records it: everything needed to send exactly the same append again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredEvent {
    event_id: Uuid,
    event_type: String,
    schema_version: u32,
    payload: Vec<u8>,
    occurred_at_us: i64,
    correlation_id: String,
    causation_id: String,
    actor: String,
}

impl From<&NewEvent> for StoredEvent {
    fn from(e: &NewEvent) -> Self {
        StoredEvent {
            event_id: e.event_id,
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            payload: e.payload.clone(),
            occurred_at_us: e.occurred_at.timestamp_micros(),
            correlation_id: e.metadata.correlation_id.clone(),
            causation_id: e.metadata.causation_id.clone(),
            actor: e.metadata.actor.clone(),
        }
    }
}

impl StoredEvent {
    fn to_event_data(&self) -> Result<EventData, KurrentDbError> {
        let meta = EventMeta {
            schema_version: self.schema_version,
            occurred_at_us: self.occurred_at_us,
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            actor: self.actor.clone(),
        };
        let meta = serde_json::to_vec(&meta).map_err(|e| KurrentDbError::Corrupt(format!("event metadata: {e}")))?;
        Ok(EventData::binary(&self.event_type, Bytes::from(self.payload.clone()))
            .id(self.event_id)
            .metadata(Bytes::from(meta)))
    }
}

/// What the stream of an idempotency key holds, newest last. Its last record is the key's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum KeyRecord {
    /// A writer is about to append exactly this, to a stream that was at `version`.
    Intent {
        request_hash: Vec<u8>,
        stream_id: String,
        version: u64,
        events: Vec<StoredEvent>,
    },
    /// The intent was applied: the key's first result.
    Done {
        request_hash: Vec<u8>,
        appends: Vec<AppendResult>,
    },
    /// The intent can never be applied (someone else appended first); the key is free again.
    Released { request_hash: Vec<u8> },
}

/// What became of an intent.
#[derive(Debug)]
enum Outcome {
    Appended(AppendResult),
    /// The stream moved past the intent's version with other events.
    Conflict {
        actual: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointRecord {
    position: Position,
}

/// A snapshot's fields beside its state (the state is the event's data).
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotRecord {
    stream_id: String,
    version: u64,
    position: Position,
    recorded_at_us: i64,
    state_type: String,
    state_version: u32,
}

/// The last record of one of the adapter's own streams.
struct Last<T> {
    record: T,
    revision: u64,
    created: DateTime<Utc>,
}

impl KurrentDbEventStore {
    /// Checks what can be checked before anything is sent.
    fn validate(&self, commit: &Commit) -> Result<(), AppendError> {
        event_store::validate_commit(commit)?;
        if commit.appends.len() > 1 {
            let streams: Vec<&str> = commit.appends.iter().map(|a| a.stream_id.as_str()).collect();
            return Err(AppendError::Unsupported(format!(
                "KurrentDB cannot commit to several streams atomically ({} appends: {}); nothing was appended \
                 (ADR 0006)",
                streams.len(),
                streams.join(", ")
            )));
        }
        for append in &commit.appends {
            if append.stream_id.starts_with(['$', '_']) {
                return Err(AppendError::Invalid(format!(
                    "stream id {:?} starts with '$' or '_', which KurrentDB and this adapter keep for themselves",
                    append.stream_id
                )));
            }
            let mut ids = HashSet::new();
            for e in &append.events {
                if !ids.insert(e.event_id) {
                    return Err(AppendError::DuplicateEvent { event_id: e.event_id });
                }
            }
        }
        Ok(())
    }

    /// Sends one append. `Ok(Err(actual))` is a version conflict: nothing was appended.
    async fn send(
        &self,
        stream_id: &str,
        state: StreamState,
        events: &[StoredEvent],
    ) -> Result<Result<u64, u64>, KurrentDbError> {
        let data = events
            .iter()
            .map(StoredEvent::to_event_data)
            .collect::<Result<Vec<_>, _>>()?;
        let options = AppendToStreamOptions::default()
            .stream_state(state)
            .requires_leader(true);
        match self
            .client
            .append_to_stream(self.names.stream(stream_id), &options, data)
            .await
        {
            Ok(written) => Ok(Ok(written.next_expected_version)),
            Err(kurrentdb::Error::WrongExpectedVersion { current, .. }) => Ok(Err(version_of(current))),
            Err(e) => Err(failed(format!("appending to {stream_id}"), e)),
        }
    }

    /// Reads back the events an append put at `first_revision` and answers for them. They must
    /// be the ones sent (same ids): anything else means the server answered for another write.
    async fn read_back(
        &self,
        stream_id: &str,
        first_revision: u64,
        events: &[StoredEvent],
    ) -> Result<AppendResult, KurrentDbError> {
        let read = self
            .read_domain(stream_id, forwards_from(first_revision, events.len()))
            .await?;
        let same = read.len() == events.len() && read.iter().zip(events).all(|(r, e)| r.event_id == e.event_id);
        let Some(last) = read.last().filter(|_| same) else {
            return Err(KurrentDbError::Corrupt(format!(
                "{stream_id} does not hold the {} events just appended at revision {first_revision}",
                events.len()
            )));
        };
        advance(&self.head, last.position);
        Ok(AppendResult {
            stream_id: stream_id.to_owned(),
            version: last.stream_version,
            positions: read.iter().map(|e| e.position).collect(),
            recorded_at: last.recorded_at,
        })
    }

    /// A commit without an idempotency key: one conditional append.
    async fn append_once(&self, append: StreamAppend) -> Result<Committed, AppendError> {
        let events: Vec<StoredEvent> = append.events.iter().map(StoredEvent::from).collect();
        let last_revision = match self
            .send(&append.stream_id, stream_state(append.expected), &events)
            .await?
        {
            Ok(last_revision) => last_revision,
            Err(actual) => {
                return Err(AppendError::WrongExpectedVersion {
                    stream_id: append.stream_id,
                    expected: append.expected,
                    actual,
                });
            }
        };
        let first_revision = (last_revision + 1).checked_sub(events.len() as u64).ok_or_else(|| {
            KurrentDbError::Corrupt(format!(
                "append to {} answered revision {last_revision}",
                append.stream_id
            ))
        })?;
        let result = self.read_back(&append.stream_id, first_revision, &events).await?;
        Ok(Committed {
            appends: vec![result],
            replayed: false,
        })
    }

    /// A commit with an idempotency key (see the module doc): claim the key with an intent,
    /// append, record the outcome; or answer, or finish, what the key already holds.
    async fn commit_with_key(&self, key: IdempotencyKey, append: StreamAppend) -> Result<Committed, AppendError> {
        let key_stream = self.names.key(&key.key);
        let events: Vec<StoredEvent> = append.events.iter().map(StoredEvent::from).collect();
        loop {
            let last = self.read_last::<KeyRecord>(&key_stream).await?;
            let claim_after = match last {
                None => None,
                Some(Last {
                    record: KeyRecord::Done { request_hash, appends },
                    ..
                }) => {
                    return if request_hash == key.request_hash {
                        Ok(Committed {
                            appends,
                            replayed: true,
                        })
                    } else {
                        Err(AppendError::IdempotencyKeyReused { key: key.key })
                    };
                }
                Some(Last {
                    record: KeyRecord::Released { .. },
                    revision,
                    ..
                }) => Some(revision),
                Some(Last {
                    record: intent @ KeyRecord::Intent { .. },
                    revision,
                    created,
                }) => {
                    // Another request's attempt, in flight or abandoned: settle it, then look again.
                    self.settle(&key_stream, &intent, revision, created).await?;
                    continue;
                }
            };

            // The stream must be where the caller expects before the key is claimed, so an intent
            // always names the version the stream is at or has already passed.
            let version = self.version(&append.stream_id).await?;
            if !append.expected.matches(version) {
                return Err(AppendError::WrongExpectedVersion {
                    stream_id: append.stream_id,
                    expected: append.expected,
                    actual: version,
                });
            }
            let intent = KeyRecord::Intent {
                request_hash: key.request_hash.clone(),
                stream_id: append.stream_id.clone(),
                version,
                events: events.clone(),
            };
            let key_state = claim_after.map_or(StreamState::NoStream, StreamState::StreamRevision);
            let Some(intent_revision) = self
                .append_record(&key_stream, key_state, KEY_RECORD_TYPE, &intent)
                .await?
            else {
                continue; // another request claimed the key first
            };
            let outcome = self.apply(&append.stream_id, version, &events).await?;
            self.record_outcome(&key_stream, intent_revision, &key.request_hash, &outcome)
                .await?;
            match outcome {
                Outcome::Appended(result) => {
                    return Ok(Committed {
                        appends: vec![result],
                        replayed: false,
                    });
                }
                // `Any` never conflicts: claim again at the stream's new version.
                Outcome::Conflict { .. } if append.expected == ExpectedVersion::Any => continue,
                Outcome::Conflict { actual } => {
                    return Err(AppendError::WrongExpectedVersion {
                        stream_id: append.stream_id,
                        expected: append.expected,
                        actual,
                    });
                }
            }
        }
    }

    /// Sends an intent's append: exactly these events right after `version`.
    async fn apply(&self, stream_id: &str, version: u64, events: &[StoredEvent]) -> Result<Outcome, KurrentDbError> {
        match self
            .send(stream_id, stream_state(ExpectedVersion::Exact(version)), events)
            .await?
        {
            Ok(_) => Ok(Outcome::Appended(self.read_back(stream_id, version, events).await?)),
            Err(actual) => Ok(Outcome::Conflict { actual }),
        }
    }

    /// Brings another request's intent to an outcome, or waits a little for its writer to.
    async fn settle(
        &self,
        key_stream: &str,
        intent: &KeyRecord,
        intent_revision: u64,
        created: DateTime<Utc>,
    ) -> Result<(), KurrentDbError> {
        let KeyRecord::Intent {
            request_hash,
            stream_id,
            version,
            events,
        } = intent
        else {
            return Ok(());
        };
        let first = events.first().map(|e| e.event_id);
        let at_version = self
            .read_domain(stream_id, forwards_from(*version, events.len()))
            .await?;
        let outcome = match at_version.first() {
            // The append happened: its events are right after the version it expected.
            Some(e) if Some(e.event_id) == first => {
                Outcome::Appended(self.read_back(stream_id, *version, events).await?)
            }
            // Another event took that place: this append can never happen.
            Some(_) => Outcome::Conflict {
                actual: self.version(stream_id).await?,
            },
            // Not yet. Its writer may still be sending it; once it has certainly given up,
            // send the same append (applied at most once, whoever sends it).
            None if age(created) >= self.intent_grace => self.apply(stream_id, *version, events).await?,
            None => {
                tokio::time::sleep(INTENT_POLL).await;
                return Ok(());
            }
        };
        self.record_outcome(key_stream, intent_revision, request_hash, &outcome)
            .await
    }

    /// Records an intent's outcome right after it; someone who recorded it first wins (the
    /// outcome of the same append is the same whoever observed it).
    async fn record_outcome(
        &self,
        key_stream: &str,
        intent_revision: u64,
        request_hash: &[u8],
        outcome: &Outcome,
    ) -> Result<(), KurrentDbError> {
        let record = match outcome {
            Outcome::Appended(result) => KeyRecord::Done {
                request_hash: request_hash.to_vec(),
                appends: vec![result.clone()],
            },
            Outcome::Conflict { .. } => KeyRecord::Released {
                request_hash: request_hash.to_vec(),
            },
        };
        self.append_record(
            key_stream,
            StreamState::StreamRevision(intent_revision),
            KEY_RECORD_TYPE,
            &record,
        )
        .await?;
        Ok(())
    }

    /// Appends one JSON record to one of the adapter's streams; `None` if `state` was stale.
    async fn append_record<T: Serialize>(
        &self,
        stream: &str,
        state: StreamState,
        event_type: &str,
        record: &T,
    ) -> Result<Option<u64>, KurrentDbError> {
        let data =
            EventData::json(event_type, record).map_err(|e| KurrentDbError::Corrupt(format!("{event_type}: {e}")))?;
        self.append_internal(stream, state, data).await
    }

    async fn append_internal(
        &self,
        stream: &str,
        state: StreamState,
        data: EventData,
    ) -> Result<Option<u64>, KurrentDbError> {
        let options = AppendToStreamOptions::default()
            .stream_state(state)
            .requires_leader(true);
        match self.client.append_to_stream(stream, &options, data).await {
            Ok(written) => Ok(Some(written.next_expected_version)),
            Err(kurrentdb::Error::WrongExpectedVersion { .. }) => Ok(None),
            Err(e) => Err(failed(format!("appending to {stream}"), e)),
        }
    }

    /// Sets `$maxCount` on a stream this adapter just created. Best effort: without it the stream
    /// only keeps more than it needs.
    async fn keep_only(&self, stream: &str, count: u64) {
        let metadata = StreamMetadata::builder().max_count(count).build();
        if let Err(e) = self
            .client
            .set_stream_metadata(stream, &AppendToStreamOptions::default(), &metadata)
            .await
        {
            tracing::warn!(stream, error = %e, "could not set $maxCount; the stream keeps every record");
        }
    }

    /// The last record of one of the adapter's own streams, if it has any.
    async fn read_last<T: DeserializeOwned>(&self, stream: &str) -> Result<Option<Last<T>>, KurrentDbError> {
        let events = self.read_raw(stream, backwards_from_end(1)).await?;
        let Some(e) = events.first().and_then(|e| e.event.as_ref()) else {
            return Ok(None);
        };
        let record = serde_json::from_slice(&e.data)
            .map_err(|err| KurrentDbError::Corrupt(format!("record {} of {stream}: {err}", e.revision)))?;
        Ok(Some(Last {
            record,
            revision: e.revision,
            created: created(e)?,
        }))
    }

    /// A stream's events as KurrentDB answers them; a missing stream has none.
    async fn read_raw(&self, stream: &str, options: ReadStreamOptions) -> Result<Vec<ResolvedEvent>, KurrentDbError> {
        let mut read = match self.client.read_stream(stream, &options).await {
            Ok(read) => read,
            Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
            Err(e) => return Err(failed(format!("reading {stream}"), e)),
        };
        let mut events = Vec::new();
        loop {
            match read.next().await {
                Ok(Some(e)) => events.push(e),
                Ok(None) => return Ok(events),
                Err(kurrentdb::Error::ResourceNotFound) => return Ok(Vec::new()),
                Err(e) => return Err(failed(format!("reading {stream}"), e)),
            }
        }
    }

    /// A domain stream's version: the number of events in it (0 for no stream).
    async fn version(&self, stream_id: &str) -> Result<u64, KurrentDbError> {
        let last = self
            .read_raw(&self.names.stream(stream_id), backwards_from_end(1))
            .await?;
        Ok(last
            .first()
            .and_then(|e| e.event.as_ref())
            .map_or(0, |e| e.revision + 1))
    }

    /// A domain stream's events, as the store answers them.
    async fn read_domain(
        &self,
        stream_id: &str,
        options: ReadStreamOptions,
    ) -> Result<Vec<RecordedEvent>, KurrentDbError> {
        self.read_raw(&self.names.stream(stream_id), options)
            .await?
            .iter()
            .map(|e| recorded(&self.names, e))
            .collect()
    }

    /// The snapshots a stream still holds, newest first (up to the last "cleared" marker), and
    /// the revision of its last record.
    async fn live_snapshots(&self, stream: &str) -> Result<(Vec<Snapshot>, Option<u64>), KurrentDbError> {
        let events = self
            .read_raw(stream, backwards_from_end(SNAPSHOTS_KEPT as usize))
            .await?;
        let last_revision = events.first().and_then(|e| e.event.as_ref()).map(|e| e.revision);
        let mut snapshots = Vec::new();
        for e in events.iter().filter_map(|e| e.event.as_ref()) {
            if e.event_type == SNAPSHOTS_CLEARED_TYPE {
                break;
            }
            let record: SnapshotRecord = serde_json::from_slice(&e.custom_metadata)
                .map_err(|err| KurrentDbError::Corrupt(format!("snapshot {} of {stream}: {err}", e.revision)))?;
            snapshots.push(Snapshot {
                stream_id: record.stream_id,
                version: record.version,
                position: record.position,
                recorded_at: from_micros(record.recorded_at_us)?,
                state_type: record.state_type,
                state_version: record.state_version,
                state: e.data.to_vec(),
            });
        }
        Ok((snapshots, last_revision))
    }

    /// Marks a snapshot stream cleared; answers how many snapshots that removed.
    async fn clear_snapshots(&self, stream: &str) -> Result<u64, KurrentDbError> {
        loop {
            let (live, last_revision) = self.live_snapshots(stream).await?;
            let Some(last_revision) = last_revision.filter(|_| !live.is_empty()) else {
                return Ok(0);
            };
            let marker = EventData::binary(SNAPSHOTS_CLEARED_TYPE, Bytes::new());
            if self
                .append_internal(stream, StreamState::StreamRevision(last_revision), marker)
                .await?
                .is_some()
            {
                return Ok(live.len() as u64);
            }
        }
    }
}

#[async_trait]
impl EventStore for KurrentDbEventStore {
    async fn commit(&self, mut commit: Commit) -> Result<Committed, AppendError> {
        self.validate(&commit)?;
        let Some(append) = commit.appends.pop() else {
            return Err(AppendError::Invalid("a commit needs at least one append".into()));
        };
        match commit.idempotency {
            None => self.append_once(append).await,
            Some(key) => self.commit_with_key(key, append).await,
        }
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        Ok(self
            .read_domain(stream_id, forwards_from(from_version.saturating_sub(1), limit))
            .await?)
    }

    async fn read_stream_until(
        &self,
        stream_id: &str,
        from_version: u64,
        until: Until,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self
            .read_domain(stream_id, forwards_from(from_version.saturating_sub(1), usize::MAX))
            .await?;
        Ok(match until {
            // Positions grow along a stream: the events up to `p` are a prefix.
            Until::Position(p) => events.into_iter().take_while(|e| e.position <= p).collect(),
            Until::RecordedAt(t) => events.into_iter().filter(|e| e.recorded_at <= t).collect(),
        })
    }

    async fn read_all(&self, after: Position, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let events = read_all_from(&self.client, &self.names.domain_filter(), after, limit).await?;
        let events: Result<Vec<_>, KurrentDbError> = events.iter().map(|e| recorded(&self.names, e)).collect();
        Ok(events?)
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        Ok(read_head(&self.client, &self.names).await?)
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        Ok(self.version(stream_id).await?)
    }

    fn changes(&self) -> watch::Receiver<Position> {
        self.changes.clone()
    }

    async fn idempotent_result(&self, key: &str) -> Result<Option<IdempotentResult>, StoreError> {
        // Only an outcome answers: an intent is not a result yet.
        Ok(match self.read_last::<KeyRecord>(&self.names.key(key)).await? {
            Some(Last {
                record: KeyRecord::Done { request_hash, appends },
                ..
            }) => Some(IdempotentResult { request_hash, appends }),
            _ => None,
        })
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Position, StoreError> {
        let last = self.read_last::<CheckpointRecord>(&self.names.checkpoint(name)).await?;
        Ok(last.map_or(0, |l| l.record.position))
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError> {
        let stream = self.names.checkpoint(name);
        loop {
            let last = self.read_last::<CheckpointRecord>(&stream).await?;
            if let Some(last) = &last
                && last.record.position >= position
            {
                return Ok(());
            }
            let state = last
                .as_ref()
                .map_or(StreamState::NoStream, |l| StreamState::StreamRevision(l.revision));
            let record = CheckpointRecord { position };
            if self
                .append_record(&stream, state, CHECKPOINT_TYPE, &record)
                .await?
                .is_some()
            {
                if last.is_none() {
                    self.keep_only(&stream, 1).await;
                }
                return Ok(());
            }
            // Someone saved meanwhile: compare with theirs.
        }
    }

    async fn save_snapshot(&self, s: &Snapshot) -> Result<(), StoreError> {
        let stream = self.names.snapshot(&s.stream_id);
        let record = SnapshotRecord {
            stream_id: s.stream_id.clone(),
            version: s.version,
            position: s.position,
            recorded_at_us: s.recorded_at.timestamp_micros(),
            state_type: s.state_type.clone(),
            state_version: s.state_version,
        };
        let meta = serde_json::to_vec(&record).map_err(|e| KurrentDbError::Corrupt(format!("snapshot: {e}")))?;
        loop {
            let (live, last_revision) = self.live_snapshots(&stream).await?;
            if live.iter().any(|l| l.version == s.version) {
                return Ok(());
            }
            let data =
                EventData::binary(SNAPSHOT_TYPE, Bytes::from(s.state.clone())).metadata(Bytes::from(meta.clone()));
            let state = last_revision.map_or(StreamState::NoStream, StreamState::StreamRevision);
            if self.append_internal(&stream, state, data).await?.is_some() {
                if last_revision.is_none() {
                    self.keep_only(&stream, SNAPSHOTS_KEPT).await;
                }
                return Ok(());
            }
        }
    }

    async fn load_snapshot(&self, stream_id: &str, until: Option<Until>) -> Result<Option<Snapshot>, StoreError> {
        let (live, _) = self.live_snapshots(&self.names.snapshot(stream_id)).await?;
        // Newest first, so on equal versions the earlier record wins (`max_by_key` keeps the last).
        Ok(live
            .into_iter()
            .filter(|s| match until {
                None => true,
                Some(Until::Position(p)) => s.position <= p,
                Some(Until::RecordedAt(t)) => s.recorded_at <= t,
            })
            .max_by_key(|s| s.version))
    }

    async fn delete_snapshots(&self, stream_id: Option<&str>) -> Result<u64, StoreError> {
        if let Some(stream_id) = stream_id {
            return Ok(self.clear_snapshots(&self.names.snapshot(stream_id)).await?);
        }
        // Every snapshot stream of this namespace: found by scanning `$all` (filtered on the
        // server), which grows with the log. An administrative operation.
        let filter = SubscriptionFilter::on_stream_name().add_prefix(self.names.snapshot_prefix());
        const PAGE: usize = 1000;
        let mut streams = BTreeSet::new();
        let mut after = 0;
        loop {
            let page = read_all_from(&self.client, &filter, after, PAGE).await?;
            for e in page.iter().filter_map(|e| e.event.as_ref()) {
                streams.insert(e.stream_id().to_owned());
                after = e.position.commit;
            }
            if page.len() < PAGE {
                break;
            }
        }
        let mut deleted = 0;
        for stream in &streams {
            deleted += self.clear_snapshots(stream).await?;
        }
        Ok(deleted)
    }
}

/// `$all` after `after` through `filter`, at most `limit` events. `$all` can only be read from a
/// position where a record starts, inclusive: `after` is an event's position (or 0), so one more
/// is asked for and that event dropped.
async fn read_all_from(
    client: &Client,
    filter: &SubscriptionFilter,
    after: Position,
    limit: usize,
) -> Result<Vec<ResolvedEvent>, KurrentDbError> {
    let start = if after == 0 {
        StreamPosition::Start
    } else {
        StreamPosition::Position(kurrentdb::Position {
            commit: after,
            prepare: after,
        })
    };
    let options = ReadAllOptions::default()
        .forwards()
        .position(start)
        .filter(filter.clone())
        .max_count(limit.saturating_add(1))
        .requires_leader(true)
        .deadline(READ_DEADLINE);
    let context = || format!("reading $all after position {after}");
    let mut read = client.read_all(&options).await.map_err(|e| failed(context(), e))?;
    let mut events = Vec::new();
    while let Some(e) = read.next().await.map_err(|e| failed(context(), e))? {
        if e.event.as_ref().is_some_and(|r| r.position.commit > after) {
            events.push(e);
        }
    }
    events.truncate(limit);
    Ok(events)
}

/// The position of the newest domain event (0 for none).
async fn read_head(client: &Client, names: &Names) -> Result<Position, KurrentDbError> {
    let options = ReadAllOptions::default()
        .position(StreamPosition::End)
        .filter(names.domain_filter())
        .max_count(1)
        .requires_leader(true)
        .deadline(READ_DEADLINE);
    let mut read = client
        .read_all(&options)
        .await
        .map_err(|e| failed("reading the head of $all", e))?;
    let last = read.next().await.map_err(|e| failed("reading the head of $all", e))?;
    Ok(last.and_then(|e| e.event).map_or(0, |e| e.position.commit))
}

/// The position of the last record of the whole log, whatever its stream (0 for an empty log).
async fn read_log_end(client: &Client) -> Result<Position, KurrentDbError> {
    let options = ReadAllOptions::default()
        .position(StreamPosition::End)
        .max_count(1)
        .requires_leader(true)
        .deadline(READ_DEADLINE);
    let context = "reading the end of $all";
    let mut read = client.read_all(&options).await.map_err(|e| failed(context, e))?;
    let last = read.next().await.map_err(|e| failed(context, e))?;
    Ok(last.and_then(|e| e.event).map_or(0, |e| e.position.commit))
}

/// A domain event as the store answers it.
fn recorded(names: &Names, resolved: &ResolvedEvent) -> Result<RecordedEvent, KurrentDbError> {
    let e = resolved
        .event
        .as_ref()
        .ok_or_else(|| KurrentDbError::Corrupt("KurrentDB answered a read without the event".into()))?;
    let name = e.stream_id();
    let stream_id = names
        .stream_id(name)
        .ok_or_else(|| KurrentDbError::Corrupt(format!("stream {name} is outside this store's namespace")))?;
    let meta: EventMeta = serde_json::from_slice(&e.custom_metadata)
        .map_err(|err| KurrentDbError::Corrupt(format!("metadata of {name}@{}: {err}", e.revision)))?;
    Ok(RecordedEvent {
        position: e.position.commit,
        stream_id: stream_id.to_owned(),
        stream_version: e.revision + 1,
        event_id: e.id,
        event_type: e.event_type.clone(),
        schema_version: meta.schema_version,
        payload: e.data.to_vec(),
        occurred_at: from_micros(meta.occurred_at_us)?,
        recorded_at: created(e)?,
        metadata: EventMetadata {
            correlation_id: meta.correlation_id,
            causation_id: meta.causation_id,
            actor: meta.actor,
        },
    })
}

/// When the server wrote an event. The client rounds its own `created` to the second, so this
/// reads the raw stamp: 100 ns ticks since the Unix epoch, kept to the microsecond.
fn created(e: &kurrentdb::RecordedEvent) -> Result<DateTime<Utc>, KurrentDbError> {
    let ticks: i64 = e
        .metadata
        .get("created")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| KurrentDbError::Corrupt(format!("{}@{} has no creation time", e.stream_id(), e.revision)))?;
    from_micros(ticks / 10)
}

fn from_micros(micros: i64) -> Result<DateTime<Utc>, KurrentDbError> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| KurrentDbError::Corrupt(format!("time {micros} out of range")))
}

fn age(created: DateTime<Utc>) -> Duration {
    (Utc::now() - created).to_std().unwrap_or(Duration::ZERO)
}

/// Our expected version as KurrentDB's expected revision (its revisions start at 0).
fn stream_state(expected: ExpectedVersion) -> StreamState {
    match expected {
        ExpectedVersion::Any => StreamState::Any,
        ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => StreamState::NoStream,
        ExpectedVersion::Exact(v) => StreamState::StreamRevision(v - 1),
    }
}

/// KurrentDB's current revision as our version.
fn version_of(current: CurrentRevision) -> u64 {
    match current {
        CurrentRevision::Current(revision) => revision + 1,
        CurrentRevision::NoStream => 0,
    }
}

fn forwards_from(revision: u64, max: usize) -> ReadStreamOptions {
    ReadStreamOptions::default()
        .forwards()
        .position(StreamPosition::Position(revision))
        .max_count(max)
        .requires_leader(true)
        .deadline(READ_DEADLINE)
}

fn backwards_from_end(max: usize) -> ReadStreamOptions {
    ReadStreamOptions::default()
        .position(StreamPosition::End)
        .max_count(max)
        .requires_leader(true)
        .deadline(READ_DEADLINE)
}

/// The client failed while the adapter was doing `context`.
fn failed(context: impl Into<String>, source: kurrentdb::Error) -> KurrentDbError {
    KurrentDbError::Client {
        context: context.into(),
        source,
    }
}

/// Why the KurrentDB adapter failed. Its own API ([`KurrentDbEventStore::connect`] and
/// [`open`](KurrentDbEventStore::open)) answers it as it is; behind [`EventStore`] it becomes a
/// [`StoreError`] (see the `From` impls below), so callers of the trait see what they see from
/// the other adapters.
#[derive(Debug, thiserror::Error)]
pub enum KurrentDbError {
    /// The connection string does not parse.
    #[error("invalid KurrentDB connection string")]
    ConnectionString(#[source] kurrentdb::ClientSettingsParseError),
    /// The client could not be built from valid settings.
    #[error("the KurrentDB client could not be created")]
    ClientSetup(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// [`KurrentDbOptions::namespace`] holds something other than letters, digits and `-`.
    #[error("KurrentDB namespace {0:?} may hold only letters, digits and '-'")]
    Namespace(String),
    /// A request to the server failed (unreachable, refused, timed out...); `context` says what
    /// the adapter was doing ("appending to order-1").
    #[error("KurrentDB: {context}")]
    Client {
        context: String,
        #[source]
        source: kurrentdb::Error,
    },
    /// What the server holds is not what this adapter wrote, or cannot be encoded.
    #[error("KurrentDB holds inconsistent data: {0}")]
    Corrupt(String),
}

/// The trait boundary: inconsistent data stays [`StoreError::Corrupt`], as in the other adapters;
/// every other failure is [`StoreError::Backend`], with this error as its source.
impl From<KurrentDbError> for StoreError {
    fn from(e: KurrentDbError) -> Self {
        match e {
            KurrentDbError::Corrupt(reason) => StoreError::Corrupt(reason),
            e => StoreError::Backend(Box::new(e)),
        }
    }
}

/// In a commit: a failure of the store, not of the commit ([`AppendError::Store`]).
impl From<KurrentDbError> for AppendError {
    fn from(e: KurrentDbError) -> Self {
        AppendError::Store(e.into())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_keep_domain_streams_apart_from_internal_ones() {
        let names = Names::new("t1a2b".into()).unwrap();
        assert_eq!(names.stream("order-1"), "t1a2b.order-1");
        assert_eq!(names.stream_id("t1a2b.order-1"), Some("order-1"));
        assert_eq!(names.stream_id("order-1"), None);
        assert_eq!(names.domain_regex, "^t1a2b\\.[^$_]");
        assert!(names.key("k").starts_with("_orderflow.idempotency-t1a2b."));
        assert!(names.checkpoint("relay").starts_with(INTERNAL));
        assert!(names.snapshot("order-1").starts_with(&names.snapshot_prefix()));
        assert_eq!(Names::new(String::new()).unwrap().domain_regex, "^[^$_]");
        assert!(Names::new("bad name".into()).is_err());
        assert!(
            Names::new("a.b".into()).is_err(),
            "a '.' would let one namespace's prefix start another's"
        );
        assert!(Names::new("$all".into()).is_err());
    }

    #[test]
    fn expected_versions_become_expected_revisions() {
        assert_eq!(stream_state(ExpectedVersion::Any), StreamState::Any);
        assert_eq!(stream_state(ExpectedVersion::NoStream), StreamState::NoStream);
        assert_eq!(stream_state(ExpectedVersion::Exact(0)), StreamState::NoStream);
        assert_eq!(stream_state(ExpectedVersion::Exact(3)), StreamState::StreamRevision(2));
        assert_eq!(version_of(CurrentRevision::NoStream), 0);
        assert_eq!(version_of(CurrentRevision::Current(2)), 3);
    }

    #[test]
    fn errors_become_store_errors_at_the_trait_boundary() {
        let store = StoreError::from(Names::new("bad name".into()).unwrap_err());
        assert!(matches!(store, StoreError::Backend(_)), "{store:?}");
        assert_eq!(store.to_string(), "event store backend error");
        let source = std::error::Error::source(&store).unwrap();
        assert!(
            source.is::<KurrentDbError>(),
            "the adapter's error is the source: {source:?}"
        );
        assert!(source.to_string().contains("bad name"), "{source}");

        let corrupt = StoreError::from(KurrentDbError::Corrupt("no creation time".into()));
        assert!(matches!(corrupt, StoreError::Corrupt(ref reason) if reason == "no creation time"));
        let append = AppendError::from(KurrentDbError::Namespace("a.b".into()));
        assert!(
            matches!(append, AppendError::Store(StoreError::Backend(_))),
            "{append:?}"
        );
    }

    #[test]
    fn key_records_round_trip_through_json() {
        let intent = KeyRecord::Intent {
            request_hash: b"h".to_vec(),
            stream_id: "order-1".into(),
            version: 2,
            events: vec![StoredEvent {
                event_id: Uuid::new_v4(),
                event_type: "order.placed".into(),
                schema_version: 1,
                payload: vec![0, 1, 255],
                occurred_at_us: 1_700_000_000_000_001,
                correlation_id: "c".into(),
                causation_id: "d".into(),
                actor: "a".into(),
            }],
        };
        let done = KeyRecord::Done {
            request_hash: b"h".to_vec(),
            appends: vec![AppendResult {
                stream_id: "order-1".into(),
                version: 3,
                positions: vec![4096],
                recorded_at: from_micros(1_700_000_000_000_002).unwrap(),
            }],
        };
        for record in [intent, done, KeyRecord::Released { request_hash: vec![] }] {
            let json = serde_json::to_vec(&record).unwrap();
            assert_eq!(serde_json::from_slice::<KeyRecord>(&json).unwrap(), record);
        }
    }

    /// Against a real server: only compiled when `KURRENTDB_URL` is set (`cfg(kurrentdb_server)`,
    /// from `build.rs`).
    #[cfg(kurrentdb_server)]
    mod server {
        use super::*;

        /// A store in a fresh namespace on the server of `KURRENTDB_URL` (these tests are only
        /// compiled when it is set: `cfg(kurrentdb_server)` from `build.rs`).
        async fn server_store() -> KurrentDbEventStore {
            let url = std::env::var("KURRENTDB_URL")
                .expect("KURRENTDB_URL was set when this test was compiled; set it again to run it");
            let options = KurrentDbOptions {
                namespace: format!("u{}", Uuid::new_v4().simple()),
                intent_grace: Duration::from_millis(200),
            };
            KurrentDbEventStore::connect(&url, options).await.unwrap()
        }

        fn new_event() -> NewEvent {
            NewEvent {
                event_id: Uuid::new_v4(),
                event_type: "test.happened".into(),
                schema_version: 1,
                payload: b"x".to_vec(),
                occurred_at: Utc::now(),
                metadata: EventMetadata::default(),
            }
        }

        /// A writer that crashed after recording its intent, before or after sending its append:
        /// the next request with the key finishes that append (once) and answers it as the first
        /// result, and the repeat's own events are not appended.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_dangling_intent_is_finished_once_by_the_next_request() {
            let store = server_store().await;
            for (key, sent_before_crash) in [("crashed-before-sending", false), ("crashed-after-sending", true)] {
                let stream_id = format!("order-{key}");
                let first = vec![new_event()];
                let intent = KeyRecord::Intent {
                    request_hash: b"h".to_vec(),
                    stream_id: stream_id.clone(),
                    version: 0,
                    events: first.iter().map(StoredEvent::from).collect(),
                };
                store
                    .append_record(&store.names.key(key), StreamState::NoStream, KEY_RECORD_TYPE, &intent)
                    .await
                    .unwrap();
                if sent_before_crash {
                    store
                        .append(&stream_id, ExpectedVersion::NoStream, first.clone())
                        .await
                        .unwrap();
                }
                assert_eq!(
                    store.idempotent_result(key).await.unwrap(),
                    None,
                    "an intent is no result"
                );

                let repeat = Commit::single(&stream_id, ExpectedVersion::NoStream, vec![new_event()])
                    .with_idempotency(key, b"h".to_vec());
                let answer = store.commit(repeat).await.unwrap();
                assert!(answer.replayed, "{key}: the repeat answers the first request's result");
                let read = store.read_stream(&stream_id, 1, 10).await.unwrap();
                assert_eq!(read.len(), 1, "{key}: appended once");
                assert_eq!(read[0].event_id, first[0].event_id, "{key}: the first request's event");
                assert_eq!(answer.appends[0].positions, vec![read[0].position]);
                let stored = store.idempotent_result(key).await.unwrap().unwrap();
                assert_eq!(stored.appends, answer.appends);
            }
        }

        /// An intent whose place in the stream was taken by another writer can never be applied:
        /// the key is released and the next request with it appends its own events.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn an_intent_overtaken_by_another_writer_releases_its_key() {
            let store = server_store().await;
            let intent = KeyRecord::Intent {
                request_hash: b"h".to_vec(),
                stream_id: "order-1".into(),
                version: 0,
                events: vec![StoredEvent::from(&new_event())],
            };
            store
                .append_record(&store.names.key("k"), StreamState::NoStream, KEY_RECORD_TYPE, &intent)
                .await
                .unwrap();
            store
                .append("order-1", ExpectedVersion::NoStream, vec![new_event()])
                .await
                .unwrap();
            let mine = new_event();
            let commit = Commit::single("order-1", ExpectedVersion::Any, vec![mine.clone()])
                .with_idempotency("k", b"h".to_vec());
            let answer = store.commit(commit).await.unwrap();
            assert!(!answer.replayed);
            assert_eq!(answer.appends[0].version, 2);
            let read = store.read_stream("order-1", 1, 10).await.unwrap();
            assert_eq!(read.last().map(|e| e.event_id), Some(mine.event_id));
        }
    }
}
