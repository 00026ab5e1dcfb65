//! Deciding a batch of commits: the part of group commit that both adapters share.
//!
//! An adapter opens one transaction, reads the current version of every stream the batch
//! touches, the stored idempotency keys and the event ids that already exist, and hands them to
//! [`plan`]. Each commit keeps its own optimistic check and its own answer: one commit's conflict
//! rejects that commit only. Commits are decided in arrival order against the versions left by
//! the commits accepted before them, so a batch gives the same answers as running its commits one
//! transaction each, in order.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::{AppendError, AppendResult, Commit, Committed, IdempotencyKey, IdempotentResult, NewEvent, Position};

/// Longest stream id, event type or idempotency key the store accepts.
pub(crate) const MAX_NAME_LEN: usize = 256;

/// The database state a batch is decided against.
#[derive(Debug, Default)]
pub(crate) struct BatchState {
    /// Current version of the streams the batch touches; a missing stream is at version 0.
    pub(crate) versions: HashMap<String, u64>,
    pub(crate) keys: HashMap<String, IdempotentResult>,
    pub(crate) existing_event_ids: HashSet<Uuid>,
}

#[derive(Debug)]
pub(crate) enum Decision {
    /// Append; the result is filled in from the positions the insert returns.
    Accepted,
    /// The key was committed before this batch.
    Replay(Vec<AppendResult>),
    /// The key was accepted earlier in this same batch, at this index.
    SameAs(usize),
    Rejected(AppendError),
}

/// One event row to insert.
#[derive(Debug)]
pub(crate) struct Row<'a> {
    pub(crate) commit: usize,
    pub(crate) append: usize,
    pub(crate) stream_id: &'a str,
    pub(crate) stream_version: u64,
    pub(crate) event: &'a NewEvent,
}

#[derive(Debug)]
pub(crate) struct Plan<'a> {
    pub(crate) decisions: Vec<Decision>,
    /// Rows of the accepted commits, in commit order.
    pub(crate) rows: Vec<Row<'a>>,
    /// The version each touched stream ends at, for streams that change.
    pub(crate) new_versions: HashMap<&'a str, u64>,
}

/// Reads a stored idempotency row.
pub(crate) fn stored_key(request_hash: Vec<u8>, result: &str) -> Result<IdempotentResult, crate::StoreError> {
    let appends = serde_json::from_str(result)
        .map_err(|e| crate::StoreError::Corrupt(format!("idempotency result is not JSON: {e}")))?;
    Ok(IdempotentResult { request_hash, appends })
}

/// Every stream id the batch touches, for the adapter's version query.
pub(crate) fn streams_of<'a>(batch: &[&'a Commit]) -> Vec<&'a str> {
    let mut seen = HashSet::new();
    batch
        .iter()
        .flat_map(|c| c.appends.iter())
        .map(|a| a.stream_id.as_str())
        .filter(|s| seen.insert(*s))
        .collect()
}

pub(crate) fn keys_of<'a>(batch: &[&'a Commit]) -> Vec<&'a str> {
    batch
        .iter()
        .filter_map(|c| c.idempotency.as_ref())
        .map(|k| k.key.as_str())
        .collect()
}

pub(crate) fn event_ids_of(batch: &[&Commit]) -> Vec<Uuid> {
    batch
        .iter()
        .flat_map(|c| c.appends.iter())
        .flat_map(|a| a.events.iter())
        .map(|e| e.event_id)
        .collect()
}

/// Checks what can be checked without the database.
pub(crate) fn validate(commit: &Commit) -> Result<(), AppendError> {
    let invalid = |m: String| Err(AppendError::Invalid(m));
    if commit.appends.is_empty() {
        return invalid("a commit needs at least one append".into());
    }
    if let Some(k) = &commit.idempotency
        && (k.key.is_empty() || k.key.len() > MAX_NAME_LEN)
    {
        return invalid(format!("an idempotency key has 1 to {MAX_NAME_LEN} bytes"));
    }
    for append in &commit.appends {
        if append.stream_id.is_empty() || append.stream_id.len() > MAX_NAME_LEN {
            return invalid(format!("a stream id has 1 to {MAX_NAME_LEN} bytes"));
        }
        if append.events.is_empty() {
            return invalid(format!("the append to {} has no events", append.stream_id));
        }
        for e in &append.events {
            if e.event_type.is_empty() || e.event_type.len() > MAX_NAME_LEN {
                return invalid(format!("an event type has 1 to {MAX_NAME_LEN} bytes"));
            }
        }
    }
    Ok(())
}

/// Decides every commit of the batch against `snapshot`.
pub(crate) fn plan<'a>(batch: &[&'a Commit], snapshot: &BatchState) -> Plan<'a> {
    let mut versions: HashMap<&str, u64> = HashMap::new();
    let mut keys_in_batch: HashMap<&str, (usize, &[u8])> = HashMap::new();
    let mut ids_in_batch: HashSet<Uuid> = HashSet::new();
    let mut plan = Plan {
        decisions: Vec::with_capacity(batch.len()),
        rows: Vec::new(),
        new_versions: HashMap::new(),
    };

    for (i, commit) in batch.iter().enumerate() {
        let decision = decide(
            i,
            commit,
            snapshot,
            &mut versions,
            &mut keys_in_batch,
            &mut ids_in_batch,
            &mut plan.rows,
        );
        plan.decisions.push(decision);
    }
    plan.new_versions = versions;
    plan
}

fn decide<'a>(
    index: usize,
    commit: &'a Commit,
    snapshot: &BatchState,
    versions: &mut HashMap<&'a str, u64>,
    keys_in_batch: &mut HashMap<&'a str, (usize, &'a [u8])>,
    ids_in_batch: &mut HashSet<Uuid>,
    rows: &mut Vec<Row<'a>>,
) -> Decision {
    if let Err(e) = validate(commit) {
        return Decision::Rejected(e);
    }
    if let Some(key) = &commit.idempotency {
        if let Some(stored) = snapshot.keys.get(&key.key) {
            return if stored.request_hash == key.request_hash {
                Decision::Replay(stored.appends.clone())
            } else {
                Decision::Rejected(AppendError::IdempotencyKeyReused { key: key.key.clone() })
            };
        }
        if let Some(&(first, hash)) = keys_in_batch.get(key.key.as_str()) {
            return if hash == key.request_hash.as_slice() {
                Decision::SameAs(first)
            } else {
                Decision::Rejected(AppendError::IdempotencyKeyReused { key: key.key.clone() })
            };
        }
    }

    // Check the whole commit against a scratch copy so a rejection leaves no trace.
    let mut scratch: HashMap<&str, u64> = HashMap::new();
    let mut ids = HashSet::new();
    for append in &commit.appends {
        let stream = append.stream_id.as_str();
        let actual = scratch
            .get(stream)
            .or_else(|| versions.get(stream))
            .copied()
            .unwrap_or_else(|| snapshot.versions.get(stream).copied().unwrap_or(0));
        if !append.expected.matches(actual) {
            return Decision::Rejected(AppendError::WrongExpectedVersion {
                stream_id: append.stream_id.clone(),
                expected: append.expected,
                actual,
            });
        }
        for e in &append.events {
            let seen = snapshot.existing_event_ids.contains(&e.event_id) || ids_in_batch.contains(&e.event_id);
            if seen || !ids.insert(e.event_id) {
                return Decision::Rejected(AppendError::DuplicateEvent { event_id: e.event_id });
            }
        }
        scratch.insert(stream, actual + append.events.len() as u64);
    }

    for (a, append) in commit.appends.iter().enumerate() {
        let stream = append.stream_id.as_str();
        let mut version = versions
            .get(stream)
            .copied()
            .unwrap_or_else(|| snapshot.versions.get(stream).copied().unwrap_or(0));
        for event in &append.events {
            version += 1;
            rows.push(Row {
                commit: index,
                append: a,
                stream_id: stream,
                stream_version: version,
                event,
            });
        }
        versions.insert(stream, version);
    }
    ids_in_batch.extend(ids);
    if let Some(key) = &commit.idempotency {
        keys_in_batch.insert(key.key.as_str(), (index, key.request_hash.as_slice()));
    }
    Decision::Accepted
}

/// Turns the plan and the positions the insert assigned (one per row, in row order) into one
/// answer per commit.
pub(crate) fn results(
    batch: &[&Commit],
    plan: Plan<'_>,
    positions: &[Position],
    recorded_at: chrono::DateTime<chrono::Utc>,
) -> Vec<Result<Committed, AppendError>> {
    debug_assert_eq!(plan.rows.len(), positions.len());
    let mut accepted: Vec<Option<Vec<AppendResult>>> = batch
        .iter()
        .zip(&plan.decisions)
        .map(|(c, d)| {
            matches!(d, Decision::Accepted).then(|| {
                c.appends
                    .iter()
                    .map(|a| AppendResult {
                        stream_id: a.stream_id.clone(),
                        version: 0,
                        positions: Vec::new(),
                        recorded_at,
                    })
                    .collect()
            })
        })
        .collect();
    for (row, &position) in plan.rows.iter().zip(positions) {
        if let Some(Some(appends)) = accepted.get_mut(row.commit) {
            let r = &mut appends[row.append];
            r.version = row.stream_version;
            r.positions.push(position);
        }
    }
    plan.decisions
        .into_iter()
        .enumerate()
        .map(|(i, d)| match d {
            Decision::Accepted => Ok(Committed {
                appends: accepted[i].clone().unwrap_or_default(),
                replayed: false,
            }),
            Decision::Replay(appends) => Ok(Committed {
                appends,
                replayed: true,
            }),
            Decision::SameAs(j) => Ok(Committed {
                appends: accepted[j].clone().unwrap_or_default(),
                replayed: true,
            }),
            Decision::Rejected(e) => Err(e),
        })
        .collect()
}

/// The idempotency keys the batch must record: those of commits that appended (not replays nor
/// rejections), each with its answer as JSON.
pub(crate) fn new_keys<'a>(
    batch: &[&'a Commit],
    answers: &[Result<Committed, AppendError>],
) -> Result<Vec<(&'a IdempotencyKey, String)>, crate::StoreError> {
    let mut keys = Vec::new();
    for (commit, answer) in batch.iter().zip(answers) {
        if let (Some(key), Ok(c)) = (&commit.idempotency, answer)
            && !c.replayed
        {
            let json = serde_json::to_string(&c.appends).map_err(|e| crate::StoreError::Corrupt(e.to_string()))?;
            keys.push((key, json));
        }
    }
    Ok(keys)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::Utc;
    use proptest::prelude::*;

    use super::*;
    use crate::{EventMetadata, ExpectedVersion, StreamAppend};

    /// What a decision did, comparable across the batch and the one-by-one runs.
    #[derive(Debug, PartialEq, Eq)]
    enum Outcome {
        /// The (stream, version) pairs appended.
        Appended(Vec<(String, u64)>),
        /// Replayed the commit at this index of the batch.
        Replayed(usize),
        Conflict(String, u64),
        KeyReused,
        Duplicate,
        Invalid,
    }

    fn rejected(e: &AppendError) -> Outcome {
        match e {
            AppendError::WrongExpectedVersion { stream_id, actual, .. } => {
                Outcome::Conflict(stream_id.clone(), *actual)
            }
            AppendError::IdempotencyKeyReused { .. } => Outcome::KeyReused,
            AppendError::DuplicateEvent { .. } => Outcome::Duplicate,
            _ => Outcome::Invalid,
        }
    }

    fn event(id: u8) -> NewEvent {
        NewEvent {
            event_id: Uuid::from_u128(u128::from(id)),
            event_type: "t".into(),
            schema_version: 1,
            payload: vec![],
            occurred_at: Utc::now(),
            metadata: EventMetadata::default(),
        }
    }

    fn commit() -> impl Strategy<Value = Commit> {
        let expected = prop_oneof![
            Just(ExpectedVersion::Any),
            Just(ExpectedVersion::NoStream),
            (0u64..4).prop_map(ExpectedVersion::Exact),
        ];
        let append =
            (0u8..3, expected, prop::collection::vec(any::<u8>(), 1..3)).prop_map(|(s, expected, ids)| StreamAppend {
                stream_id: format!("s{s}"),
                expected,
                events: ids.into_iter().map(event).collect(),
            });
        let key = prop::option::of((0u8..3, 0u8..2));
        (prop::collection::vec(append, 1..3), key).prop_map(|(appends, key)| Commit {
            appends,
            idempotency: key.map(|(k, h)| IdempotencyKey {
                key: format!("k{k}"),
                request_hash: vec![h],
            }),
        })
    }

    fn outcomes(batch: &[&Commit], plan: &Plan<'_>) -> Vec<Outcome> {
        plan.decisions
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Decision::Accepted => Outcome::Appended(
                    plan.rows
                        .iter()
                        .filter(|r| r.commit == i)
                        .map(|r| (r.stream_id.to_owned(), r.stream_version))
                        .collect(),
                ),
                Decision::SameAs(j) => Outcome::Replayed(*j),
                Decision::Replay(_) => unreachable!("the snapshot starts without keys"),
                Decision::Rejected(e) => rejected(e),
            })
            .take(batch.len())
            .collect()
    }

    proptest! {
        /// Group commit changes nothing a caller can see: a batch decides exactly as its
        /// commits would one transaction each, in arrival order.
        #[test]
        fn a_batch_decides_like_its_commits_one_by_one(batch in prop::collection::vec(commit(), 1..12)) {
            let refs: Vec<&Commit> = batch.iter().collect();
            let together = outcomes(&refs, &plan(&refs, &BatchState::default()));

            let mut snapshot = BatchState::default();
            let mut key_owner: HashMap<String, usize> = HashMap::new();
            let mut one_by_one = Vec::new();
            for (i, c) in batch.iter().enumerate() {
                let p = plan(&[c], &snapshot);
                let outcome = match &p.decisions[0] {
                    Decision::Accepted => {
                        for r in &p.rows {
                            snapshot.versions.insert(r.stream_id.to_owned(), r.stream_version);
                            snapshot.existing_event_ids.insert(r.event.event_id);
                        }
                        if let Some(k) = &c.idempotency {
                            snapshot.keys.insert(k.key.clone(), IdempotentResult { request_hash: k.request_hash.clone(), appends: vec![] });
                            key_owner.insert(k.key.clone(), i);
                        }
                        Outcome::Appended(p.rows.iter().map(|r| (r.stream_id.to_owned(), r.stream_version)).collect())
                    }
                    Decision::Replay(_) => Outcome::Replayed(key_owner[&c.idempotency.as_ref().unwrap().key]),
                    Decision::SameAs(_) => unreachable!("a batch of one has no earlier commit"),
                    Decision::Rejected(e) => rejected(e),
                };
                one_by_one.push(outcome);
            }
            prop_assert_eq!(together, one_by_one);
        }
    }
}
