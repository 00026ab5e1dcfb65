//! The one way every command runs: load (cache or store) → decide (pure) → encode → commit →
//! cache, snapshot and answer. A [`Command`] says what it loads and how it decides; [`run`]
//! does the rest, and is the only retry loop:
//!
//! 1. A command that carries an idempotency key the store has seen answers the first result
//!    (or refuses the key if the request differs) without deciding anything.
//! 2. It takes the in-process locks of the streams it appends to (`stream_locks`).
//! 3. It decides on state trusted from the cache. Any answer other than a commit (a refusal,
//!    nothing to do, a stale `If-Match`) is given only on state checked against the store:
//!    the command decides again ([`Step::Verify`]).
//! 4. It appends what was decided in one commit, each stream with the version it was loaded
//!    at. A version conflict means someone else appended in between: decide again on what the
//!    store holds, a bounded number of times, unless the caller pinned the version with
//!    `If-Match`.
//! 5. Each appended stream's new state goes into the cache and, every N events, into a
//!    snapshot (best effort: snapshots are a cache and never change an answer).
//!
//! [`run`]: CommandHandler::run

use std::sync::Arc;

use chrono::Utc;
use event_schemas::DomainEvent;
use event_store::{
    AppendError, AppendResult, Commit, Committed, EventMetadata, ExpectedVersion, NewEvent, Snapshot, StreamAppend,
};
use futures::future::BoxFuture;
use uuid::Uuid;

use super::{CommandAnswer, CommandContext, CommandError, CommandHandler, Loaded, Snapshottable};
use crate::aggregate_cache::Entry;
use crate::domain::DomainError;

/// What a command is, for [`CommandHandler::run`].
pub(crate) trait Command: Send + Sync {
    /// The stream the command answers for: `If-Match` and an idempotent replay refer to it.
    fn stream_id(&self) -> String;

    /// The streams it appends to that it knows before loading anything, locked before the
    /// first decision. Streams it finds only once others are loaded it locks while deciding
    /// ([`Writes::holding`]).
    fn locks(&self) -> Vec<String>;

    /// Loads what the decision needs (`trust`: from the cache as it is, see [`Step::Verify`])
    /// and decides.
    fn decide(
        &self,
        handler: &CommandHandler,
        ctx: &CommandContext,
        trust: bool,
    ) -> impl Future<Output = Result<Step, CommandError>> + Send;
}

/// How a decision ended.
pub(crate) enum Step {
    /// Decide again on state checked against the store: the decision was taken on state trusted
    /// from the cache and is not a commit (which the store checks) or it leaves out a trusted
    /// stream.
    Verify,
    /// The domain refused the command.
    Refused(DomainError),
    /// The command cannot run (a stale `If-Match`).
    Failed(CommandError),
    /// The command changes nothing: this is its answer.
    Unchanged(CommandAnswer),
    /// Append these.
    Write(Writes),
}

impl Step {
    /// `Verify` when the refusal was decided on trusted state, else `Refused`.
    pub(crate) fn refused(trusted: bool, e: DomainError) -> Step {
        if trusted { Step::Verify } else { Step::Refused(e) }
    }

    /// `Verify` when nothing to do was decided on trusted state, else `Unchanged`.
    pub(crate) fn unchanged<A>(trusted: bool, loaded: &Loaded<A>) -> Step {
        if trusted {
            Step::Verify
        } else {
            Step::Unchanged(unchanged(loaded))
        }
    }
}

/// The version `ctx` expects `loaded` at: its loaded version, unless `If-Match` names another
/// (`Err`: a stale `If-Match`, or `Verify` on trusted state).
pub(crate) fn expectation<A>(ctx: &CommandContext, loaded: &Loaded<A>, trusted: bool) -> Result<ExpectedVersion, Step> {
    match ctx.if_match {
        Some(_) if trusted && ctx.if_match != Some(loaded.version) => Err(Step::Verify),
        Some(v) if v != loaded.version => Err(Step::Failed(CommandError::Conflict {
            stream_id: loaded.stream_id.clone(),
            expected: ExpectedVersion::Exact(v),
            actual: loaded.version,
        })),
        _ if loaded.version == 0 => Ok(ExpectedVersion::NoStream),
        _ => Ok(ExpectedVersion::Exact(loaded.version)),
    }
}

/// What a decision appends: one stream append per aggregate, in one commit.
pub(crate) struct Writes {
    /// The stream the command answers for, and its version when the commit leaves it alone.
    answer_for: (String, u64),
    staged: Vec<Box<dyn Staged>>,
}

impl Writes {
    /// A commit that answers for `target`.
    pub(crate) fn answering<A>(target: &Loaded<A>) -> Self {
        Writes {
            answer_for: (target.stream_id.clone(), target.version),
            staged: Vec::new(),
        }
    }

    /// Appends `events` to `loaded`'s stream, expected at `expected` (nothing for no events).
    pub(crate) fn append<A: Snapshottable>(
        mut self,
        loaded: Loaded<A>,
        expected: ExpectedVersion,
        events: Vec<A::Event>,
    ) -> Self {
        if !events.is_empty() {
            self.staged.push(Box::new(Fold {
                before: loaded,
                expected,
                events,
            }));
        }
        self
    }

    fn commit(&self, ctx: &CommandContext) -> Commit {
        Commit {
            appends: self.staged.iter().map(|s| s.append(&ctx.metadata)).collect(),
            idempotency: ctx.idempotency.clone(),
        }
    }

    /// Remembers every stream's new state, then answers for the command's stream.
    async fn after_commit(self, handler: &CommandHandler, committed: &Committed) -> CommandAnswer {
        for (index, staged) in self.staged.into_iter().enumerate() {
            let result = committed
                .appends
                .get(index)
                .filter(|r| !committed.replayed && r.stream_id == staged.stream_id());
            staged.after_commit(handler, result).await;
        }
        let (stream_id, version) = self.answer_for;
        // A commit that changed other streams but not the command's own still answers for it.
        answer(&stream_id, committed).unwrap_or_else(|| CommandAnswer {
            stream_id,
            version,
            position: committed.last_position(),
            replayed: committed.replayed,
        })
    }
}

/// One stream's append, with what to keep of it once committed.
trait Staged: Send {
    fn stream_id(&self) -> &str;
    fn append(&self, metadata: &EventMetadata) -> StreamAppend;
    /// `result`: the stream's append in the commit (`None`: a replayed key appended nothing now,
    /// so what the stream holds is not known here).
    fn after_commit<'a>(
        self: Box<Self>,
        handler: &'a CommandHandler,
        result: Option<&'a AppendResult>,
    ) -> BoxFuture<'a, ()>;
}

/// An aggregate as loaded and the events decided for it.
struct Fold<A: Snapshottable> {
    before: Loaded<A>,
    expected: ExpectedVersion,
    events: Vec<A::Event>,
}

impl<A: Snapshottable> Staged for Fold<A> {
    fn stream_id(&self) -> &str {
        &self.before.stream_id
    }

    fn append(&self, metadata: &EventMetadata) -> StreamAppend {
        StreamAppend {
            stream_id: self.before.stream_id.clone(),
            expected: self.expected,
            events: new_events(metadata, &self.events),
        }
    }

    fn after_commit<'a>(
        self: Box<Self>,
        handler: &'a CommandHandler,
        result: Option<&'a AppendResult>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(result) = result else {
                handler.cache.forget([self.before.stream_id.as_str()]);
                return;
            };
            let state = self.events.iter().fold(self.before.state.clone(), |s, e| s.evolve(e));
            handler.keep(&self.before, Arc::new(state), result).await;
        })
    }
}

impl CommandHandler {
    /// Runs `command`; see the module doc.
    pub(crate) async fn run(
        &self,
        ctx: &CommandContext,
        command: &impl Command,
    ) -> Result<CommandAnswer, CommandError> {
        let stream_id = command.stream_id();
        if let Some(answer) = self.replay(ctx, &stream_id).await? {
            return Ok(answer);
        }
        let _held = self.locks.lock(command.locks()).await;
        let mut attempt = 0;
        let mut trust = true;
        loop {
            let writes = match command.decide(self, ctx, trust).await? {
                Step::Verify if trust => {
                    trust = false;
                    continue;
                }
                Step::Verify => {
                    return Err(CommandError::Corrupt {
                        stream_id,
                        reason: "a decision on state checked against the store asked to be checked again".into(),
                    });
                }
                Step::Refused(e) => return self.rejected_or_replay(ctx, &stream_id, e).await,
                Step::Failed(e) => return Err(e),
                Step::Unchanged(answer) => return Ok(answer),
                Step::Write(writes) => writes,
            };
            match self.commit(ctx, writes.commit(ctx), &mut attempt).await? {
                Some(committed) => return Ok(writes.after_commit(self, &committed).await),
                // A conflict: decide again on what the store holds, not on "new stream".
                None => trust = false,
            }
        }
    }

    /// Appends; `Ok(None)` asks the caller to reload and decide again after a conflict.
    async fn commit(
        &self,
        ctx: &CommandContext,
        commit: Commit,
        attempt: &mut u32,
    ) -> Result<Option<Committed>, CommandError> {
        let streams: Vec<String> = commit.appends.iter().map(|a| a.stream_id.clone()).collect();
        let e = match self.store.commit(commit).await {
            Ok(c) => return Ok(Some(c)),
            Err(e) => e,
        };
        // What the cache holds of these streams is stale (a conflict) or may be (a commit whose
        // outcome is unknown): load them from the store next time.
        self.cache.forget(streams.iter().map(String::as_str));
        match e {
            AppendError::WrongExpectedVersion { .. }
                if ctx.if_match.is_none() && *attempt < self.options.conflict_retries =>
            {
                *attempt += 1;
                // Spread the retries of writers that collided on the same stream.
                let jitter = u64::from(Uuid::new_v4().as_bytes()[0]) % (2 * u64::from(*attempt) + 1);
                tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
                Ok(None)
            }
            e => Err(e.into()),
        }
    }

    /// The first answer to this command's idempotency key, if the store has one.
    pub(super) async fn replay(
        &self,
        ctx: &CommandContext,
        stream_id: &str,
    ) -> Result<Option<CommandAnswer>, CommandError> {
        let Some(key) = &ctx.idempotency else {
            return Ok(None);
        };
        let Some(stored) = self.store.idempotent_result(&key.key).await? else {
            return Ok(None);
        };
        if stored.request_hash != key.request_hash {
            return Err(CommandError::IdempotencyKeyReused { key: key.key.clone() });
        }
        let committed = Committed {
            appends: stored.appends,
            replayed: true,
        };
        Ok(answer(stream_id, &committed))
    }

    /// A refusal, unless a concurrent repeat of the same idempotent request won the race (its
    /// effect is why this one is refused): then the first request's answer.
    async fn rejected_or_replay(
        &self,
        ctx: &CommandContext,
        stream_id: &str,
        e: DomainError,
    ) -> Result<CommandAnswer, CommandError> {
        match self.replay(ctx, stream_id).await? {
            Some(answer) => Ok(answer),
            None => Err(CommandError::Rejected(e)),
        }
    }

    /// Keeps a stream's new `state` in the cache and, every N events, stores a snapshot of it.
    async fn keep<A: Snapshottable>(&self, before: &Loaded<A>, state: Arc<A>, result: &AppendResult) {
        let position = result.positions.last().copied().unwrap_or(before.position);
        self.cache.put(
            &result.stream_id,
            Entry {
                version: result.version,
                position,
                recorded_at: Some(result.recorded_at),
                state: Arc::clone(&state) as Arc<dyn std::any::Any + Send + Sync>,
            },
        );
        let every = self.options.snapshot_every;
        if every == 0 || result.version / every == before.version / every {
            return;
        }
        let Ok(bytes) = serde_json::to_vec(&*state) else { return };
        let snapshot = Snapshot {
            stream_id: result.stream_id.clone(),
            version: result.version,
            position: result.positions.last().copied().unwrap_or(0),
            recorded_at: result.recorded_at,
            state_type: A::CATEGORY.name().to_owned(),
            state_version: A::STATE_VERSION,
            state: bytes,
        };
        if let Err(e) = self.store.save_snapshot(&snapshot).await {
            tracing::warn!(stream_id = %snapshot.stream_id, error = %e, "could not store a snapshot; loads fold from events");
        }
    }
}

/// Domain events as the store takes them: encoded by `event-schemas`, each with a new event id
/// (UUID v7), now as the time they occurred, and the command's metadata.
pub fn new_events<E: Clone + Into<DomainEvent>>(metadata: &EventMetadata, events: &[E]) -> Vec<NewEvent> {
    let now = Utc::now();
    events
        .iter()
        .map(|e| {
            let encoded = e.clone().into().encode();
            NewEvent {
                event_id: Uuid::now_v7(),
                event_type: encoded.event_type.to_owned(),
                schema_version: encoded.schema_version,
                payload: encoded.payload,
                occurred_at: now,
                metadata: metadata.clone(),
            }
        })
        .collect()
}

/// The answer of a command that changes nothing: where the stream stands.
pub(crate) fn unchanged<A>(loaded: &Loaded<A>) -> CommandAnswer {
    CommandAnswer {
        stream_id: loaded.stream_id.clone(),
        version: loaded.version,
        position: loaded.position,
        replayed: false,
    }
}

/// The answer for `stream_id` from a commit. A replay answers for the stream the first request
/// wrote: a create whose id the server generates gets a new id on every attempt, and only the
/// first attempt's stream exists (the commit's first append is always the command's own stream).
fn answer(stream_id: &str, committed: &Committed) -> Option<CommandAnswer> {
    let append = committed
        .appends
        .iter()
        .find(|a| a.stream_id == stream_id)
        .or_else(|| committed.appends.first().filter(|_| committed.replayed))?;
    Some(CommandAnswer {
        stream_id: append.stream_id.clone(),
        version: append.version,
        position: committed.last_position(),
        replayed: committed.replayed,
    })
}
