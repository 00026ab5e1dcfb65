//! Copying a service's log from one store to another (SQLite ⇄ PostgreSQL) with nothing lost.
//!
//! A copy must keep what readers already hold on to: positions (projections and the relay keep
//! checkpoints by position, so a renumbered log would be replayed or skipped), stream versions
//! (aggregates are loaded by version), event ids (consumers deduplicate on them), the times
//! (temporal reads "as of" a time or position), the metadata, and the idempotency records (a
//! client retrying a command after the move must get the first answer, not a second commit).
//! A commit can keep none of these: the store assigns them. So transfer is a separate trait,
//! [`LogTransfer`], beside [`EventStore`]: not every adapter can offer it (KurrentDB assigns its
//! own positions, ADR 0006), and adding required methods to `EventStore` would break adapters
//! outside this crate.
//!
//! A copy is a loop: read a page of the source with [`EventStore::read_all`], hand it to the
//! target's [`import_events`](LogTransfer::import_events); then page the idempotency records
//! with [`idempotency_records`](LogTransfer::idempotency_records) into
//! [`import_idempotency`](LogTransfer::import_idempotency).
//!
//! What keeps the target's guarantees (ADR 0001) intact:
//! - an import is one transaction under the same append lock as commits (PostgreSQL's advisory
//!   lock [`APPEND_LOCK`](crate::APPEND_LOCK), SQLite's `BEGIN IMMEDIATE`), and it only adds
//!   events above the store's head: a tailing reader that has seen position p never later finds
//!   an imported event below p;
//! - holes in the imported positions stay holes, and the position source moves past the
//!   imported head, so the next commit lands above it;
//! - the batch must continue each stream contiguously, must not repeat an event id, and its
//!   `recorded_at` must not decrease (nor go below the store's last event's): the log stays one
//!   the store could have written itself;
//! - after the import, writers' `recorded_at` never goes below the imported one, so "as of time
//!   T" stays a prefix of the log even when the source's clock ran ahead of the target's.
//!
//! Every refusal is [`StoreError::Invalid`] with a message that names the offending event, and
//! writes nothing.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Timelike, Utc};
use uuid::Uuid;

use crate::plan::MAX_NAME_LEN;
use crate::{AppendResult, EventStore, Position, RecordedEvent, StoreError};

/// An idempotency key as the store holds it: the key, the hash of the request that used it
/// first, that commit's answer and when it was recorded.
///
/// `result` is the stored JSON text as is. PostgreSQL stores it as `jsonb`, which normalises
/// whitespace and key order, so the same record read from SQLite and from PostgreSQL may differ
/// in its text while meaning the same answer: compare results as parsed JSON (or through
/// [`EventStore::idempotent_result`]), never as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub key: String,
    pub request_hash: Vec<u8>,
    /// The commit's answer, JSON (a list of [`AppendResult`]).
    pub result: String,
    pub created_at: DateTime<Utc>,
}

/// The primitives of a log copy between stores (see the module documentation), implemented by
/// [`PgEventStore`](crate::PgEventStore) and [`SqliteEventStore`](crate::SqliteEventStore).
#[async_trait]
pub trait LogTransfer: EventStore {
    /// The idempotency records whose key is after `after_key` (all of them with `None`), in key
    /// order, at most `limit`: page with the last key of the previous page. The order is the
    /// database's order of text (bytes on SQLite, the database's collation on PostgreSQL), which
    /// is all paging needs.
    async fn idempotency_records(
        &self,
        after_key: Option<&str>,
        limit: usize,
    ) -> Result<Vec<IdempotencyRecord>, StoreError>;

    /// Inserts `events` exactly as given, positions, versions, ids and times included, in one
    /// transaction under the append lock, then tells tailing readers as a commit does.
    ///
    /// Refused with [`StoreError::Invalid`], appending nothing, when: positions do not strictly
    /// increase or the first is not above the store's head; an event id is already in the store
    /// or twice in the batch; a stream's events do not continue it contiguously (the first of a
    /// stream must be its current version + 1, the next ones follow); `recorded_at` decreases,
    /// or starts below the store's last event's; a stream id or event type is empty or longer
    /// than commits allow; a time has a finer precision than the store keeps (microseconds).
    /// An empty batch does nothing.
    async fn import_events(&self, events: &[RecordedEvent]) -> Result<(), StoreError>;

    /// Inserts `records`, keeping a record already stored under the same key untouched, and
    /// answers how many were new. Refused with [`StoreError::Invalid`], inserting nothing, when
    /// a key is empty, too long or twice in the batch, or a result is not a commit's answer as
    /// JSON (a list of append results).
    async fn import_idempotency(&self, records: &[IdempotencyRecord]) -> Result<u64, StoreError>;

    /// The first stream (by position of its first event) whose id starts with none of
    /// `prefixes`, or `None` when every stream starts with one of them: how a service refuses
    /// to start on a store that holds another service's streams. No prefixes: every stream is
    /// outside. Prefixes compare case-sensitively and literally (`%` and `_` are plain
    /// characters). One query; it reads the whole log when the answer is `None`.
    async fn first_stream_outside(&self, prefixes: &[&str]) -> Result<Option<String>, StoreError>;
}

/// What an import is checked against, read under the append lock.
#[derive(Debug, Default)]
pub(crate) struct LogState {
    /// The highest position in the store (0: empty).
    pub(crate) head: Position,
    /// `recorded_at` of the event at `head`.
    pub(crate) last_recorded_at: Option<DateTime<Utc>>,
    /// The current version of the streams the batch touches; a missing stream is at 0.
    pub(crate) versions: HashMap<String, u64>,
    /// The batch's event ids the store already holds.
    pub(crate) existing_event_ids: HashSet<Uuid>,
}

fn invalid<T>(message: String) -> Result<T, StoreError> {
    Err(StoreError::Invalid(message))
}

/// Every stream id of the batch once, in order of first appearance.
pub(crate) fn streams_of(events: &[RecordedEvent]) -> Vec<&str> {
    let mut seen = HashSet::new();
    events
        .iter()
        .map(|e| e.stream_id.as_str())
        .filter(|s| seen.insert(*s))
        .collect()
}

pub(crate) fn event_ids_of(events: &[RecordedEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

/// The database keeps whole microseconds: a finer time would not come back as given.
fn whole_micros(t: &DateTime<Utc>) -> bool {
    t.nanosecond().is_multiple_of(1_000)
}

/// Checks what can be checked without the database: each event on its own, and the batch's
/// order (positions, versions within the batch, times, ids).
pub(crate) fn check_events(events: &[RecordedEvent]) -> Result<(), StoreError> {
    let max = Position::try_from(i64::MAX).unwrap_or(Position::MAX);
    let mut ids = HashSet::with_capacity(events.len());
    let mut versions: HashMap<&str, u64> = HashMap::new();
    let mut previous: Option<&RecordedEvent> = None;
    for e in events {
        let at = e.position;
        if e.stream_id.is_empty() || e.stream_id.len() > MAX_NAME_LEN {
            return invalid(format!(
                "the event at position {at}: a stream id has 1 to {MAX_NAME_LEN} bytes, not {}",
                e.stream_id.len()
            ));
        }
        if e.event_type.is_empty() || e.event_type.len() > MAX_NAME_LEN {
            return invalid(format!(
                "the event at position {at}: an event type has 1 to {MAX_NAME_LEN} bytes, not {}",
                e.event_type.len()
            ));
        }
        if at == 0 || at > max {
            return invalid(format!("position {at} is outside 1..={max}"));
        }
        if e.stream_version == 0 || e.stream_version > max {
            return invalid(format!(
                "the event at position {at}: stream version {} is outside 1..={max}",
                e.stream_version
            ));
        }
        if !whole_micros(&e.occurred_at) || !whole_micros(&e.recorded_at) {
            return invalid(format!(
                "the event at position {at}: the store keeps times in whole microseconds, and \
                 occurred_at {} or recorded_at {} is finer",
                e.occurred_at, e.recorded_at
            ));
        }
        if !ids.insert(e.event_id) {
            return invalid(format!(
                "event {} is twice in the batch (again at position {at})",
                e.event_id
            ));
        }
        if let Some(p) = previous {
            if at <= p.position {
                return invalid(format!("positions must strictly increase: {at} follows {}", p.position));
            }
            if e.recorded_at < p.recorded_at {
                return invalid(format!(
                    "recorded_at must not decrease along the log: position {at} was recorded at {}, \
                     before position {} ({})",
                    e.recorded_at, p.position, p.recorded_at
                ));
            }
        }
        if let Some(&last) = versions.get(e.stream_id.as_str())
            && e.stream_version != last + 1
        {
            return invalid(format!(
                "stream {} does not continue contiguously: version {} at position {at} follows version {last}",
                e.stream_id, e.stream_version
            ));
        }
        versions.insert(&e.stream_id, e.stream_version);
        previous = Some(e);
    }
    Ok(())
}

/// Checks the batch against the store's state, read under the append lock. `check_events` has
/// passed, so only the first event of each stream and of the batch need checking here.
pub(crate) fn check_against(events: &[RecordedEvent], state: &LogState) -> Result<(), StoreError> {
    let Some(first) = events.first() else {
        return Ok(());
    };
    if let Some(e) = events.iter().find(|e| state.existing_event_ids.contains(&e.event_id)) {
        return invalid(format!(
            "event {} (position {}) is already in the store",
            e.event_id, e.position
        ));
    }
    if first.position <= state.head {
        return invalid(format!(
            "the batch starts at position {}, which is not above the store's head {}: an import \
             only adds events after the last one",
            first.position, state.head
        ));
    }
    if let Some(last) = state.last_recorded_at
        && first.recorded_at < last
    {
        return invalid(format!(
            "recorded_at must not decrease along the log: position {} was recorded at {}, before \
             the store's last event ({last})",
            first.position, first.recorded_at
        ));
    }
    let mut seen = HashSet::new();
    for e in events {
        if seen.insert(e.stream_id.as_str()) {
            let current = state.versions.get(&e.stream_id).copied().unwrap_or(0);
            if e.stream_version != current + 1 {
                return invalid(format!(
                    "stream {} is at version {current} in the store, so its next event has version {}, \
                     not {} (position {})",
                    e.stream_id,
                    current + 1,
                    e.stream_version,
                    e.position
                ));
            }
        }
    }
    Ok(())
}

/// Checks idempotency records before they are inserted.
pub(crate) fn check_records(records: &[IdempotencyRecord]) -> Result<(), StoreError> {
    let mut keys = HashSet::with_capacity(records.len());
    for r in records {
        if r.key.is_empty() || r.key.len() > MAX_NAME_LEN {
            return invalid(format!(
                "an idempotency key has 1 to {MAX_NAME_LEN} bytes, not {}",
                r.key.len()
            ));
        }
        if !keys.insert(r.key.as_str()) {
            return invalid(format!("idempotency key {:?} is twice in the batch", r.key));
        }
        if let Err(e) = serde_json::from_str::<Vec<AppendResult>>(&r.result) {
            return invalid(format!(
                "the result of idempotency key {:?} is not a commit's answer as JSON: {e}",
                r.key
            ));
        }
        if !whole_micros(&r.created_at) {
            return invalid(format!(
                "idempotency key {:?}: the store keeps times in whole microseconds, and created_at {} is finer",
                r.key, r.created_at
            ));
        }
    }
    Ok(())
}

/// A violated uniqueness constraint during an import, which the checks under the lock should
/// have caught first: still the caller's batch, not a failure of the store.
pub(crate) fn refused_by_constraint(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Invalid(format!(
            "the store already holds an event with one of the batch's positions, event ids or \
             stream versions ({})",
            db.message()
        )),
        _ => StoreError::Database(e),
    }
}

/// A `LIKE` pattern matching the strings that start with `prefix`, with `\` as the escape
/// character (PostgreSQL's default for `LIKE`).
pub(crate) fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::{Duration, SubsecRound};

    use super::*;
    use crate::EventMetadata;

    fn at(position: Position, stream: &str, version: u64) -> RecordedEvent {
        let t = Utc::now().trunc_subsecs(6);
        RecordedEvent {
            position,
            stream_id: stream.into(),
            stream_version: version,
            event_id: Uuid::new_v4(),
            event_type: "t".into(),
            schema_version: 1,
            payload: vec![],
            occurred_at: t,
            recorded_at: t,
            metadata: EventMetadata::default(),
        }
    }

    fn refusal(r: Result<(), StoreError>) -> String {
        match r {
            Err(StoreError::Invalid(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_batch_with_holes_that_continues_its_streams_passes() {
        let batch = [at(3, "a", 1), at(7, "b", 1), at(8, "a", 2), at(20, "b", 2)];
        check_events(&batch).unwrap();
        check_against(&batch, &LogState::default()).unwrap();
        let state = LogState {
            head: 2,
            versions: HashMap::from([("a".to_owned(), 0)]),
            ..LogState::default()
        };
        check_against(&batch, &state).unwrap();
    }

    #[test]
    fn the_order_within_a_batch_is_checked() {
        let m = refusal(check_events(&[at(3, "a", 1), at(3, "b", 1)]));
        assert!(m.contains("strictly increase"), "{m}");
        let m = refusal(check_events(&[at(3, "a", 1), at(4, "a", 3)]));
        assert!(m.contains("contiguously"), "{m}");
        let mut late = at(5, "b", 1);
        late.recorded_at -= Duration::seconds(1);
        let m = refusal(check_events(&[at(3, "a", 1), late]));
        assert!(m.contains("recorded_at"), "{m}");
        let first = at(3, "a", 1);
        let mut again = at(4, "b", 1);
        again.event_id = first.event_id;
        let m = refusal(check_events(&[first, again]));
        assert!(m.contains("twice"), "{m}");
        let mut fine = at(3, "a", 1);
        fine.occurred_at += Duration::nanoseconds(1);
        let m = refusal(check_events(&[fine]));
        assert!(m.contains("microseconds"), "{m}");
        let m = refusal(check_events(&[at(0, "a", 1)]));
        assert!(m.contains("position 0"), "{m}");
        let m = refusal(check_events(&[at(1, &"s".repeat(MAX_NAME_LEN + 1), 1)]));
        assert!(m.contains("stream id"), "{m}");
    }

    #[test]
    fn the_batch_must_continue_the_store() {
        let state = LogState {
            head: 10,
            last_recorded_at: Some(Utc::now() + Duration::hours(1)),
            versions: HashMap::from([("a".to_owned(), 4)]),
            existing_event_ids: HashSet::new(),
        };
        let m = refusal(check_against(&[at(10, "a", 5)], &state));
        assert!(m.contains("not above the store's head 10"), "{m}");
        let m = refusal(check_against(&[at(11, "a", 5)], &state));
        assert!(m.contains("recorded_at"), "{m}");
        let state = LogState {
            last_recorded_at: None,
            ..state
        };
        check_against(&[at(11, "a", 5)], &state).unwrap();
        let m = refusal(check_against(&[at(11, "a", 6)], &state));
        assert!(m.contains("version 4"), "{m}");
        let m = refusal(check_against(&[at(11, "b", 2)], &state));
        assert!(m.contains("version 0"), "{m}");
        let e = at(11, "a", 5);
        let state = LogState {
            existing_event_ids: HashSet::from([e.event_id]),
            ..state
        };
        let m = refusal(check_against(&[e], &state));
        assert!(m.contains("already in the store"), "{m}");
    }

    #[test]
    fn records_need_a_key_and_a_commit_answer() {
        let record = |key: &str, result: &str| IdempotencyRecord {
            key: key.into(),
            request_hash: vec![1],
            result: result.into(),
            created_at: Utc::now().trunc_subsecs(6),
        };
        check_records(&[record("k", "[]")]).unwrap();
        assert!(refusal(check_records(&[record("k", "not json")])).contains("not a commit's answer"));
        assert!(refusal(check_records(&[record("k", "{\"a\": 1}")])).contains("not a commit's answer"));
        assert!(refusal(check_records(&[record("", "[]")])).contains("1 to"));
        assert!(refusal(check_records(&[record("k", "[]"), record("k", "[]")])).contains("twice"));
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_prefix("order-"), "order-%");
        assert_eq!(like_prefix("a_b%c\\"), "a\\_b\\%c\\\\%");
    }
}
