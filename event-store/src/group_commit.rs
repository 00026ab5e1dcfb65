//! Group commit: concurrent commits share one database transaction.
//!
//! One PostgreSQL commit costs a disk flush, so one transaction per append caps the store at
//! the flush rate. Every commit instead goes through a channel to one writer task per store; the
//! writer takes whatever has queued up while the previous transaction was flushing (no linger: an
//! idle store commits a lone request at once) and writes it in one transaction. Each commit keeps
//! its own optimistic check and its own answer (see `plan`). If the shared transaction fails as
//! a whole, the writer retries its commits one transaction each, so one bad commit fails alone;
//! the retry is safe because event ids are unique in the store.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::{AppendError, Commit, Committed, Position, StoreError};

/// The adapter's half of group commit.
#[async_trait]
pub(crate) trait BatchWriter: Send + Sync + 'static {
    /// Writes the batch in one transaction and returns one answer per commit, in order.
    /// `Err` means the transaction as a whole failed and nothing was written.
    async fn write_batch(&self, batch: &[&Commit]) -> Result<Vec<Result<Committed, AppendError>>, StoreError>;
}

/// How much one transaction may carry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    pub(crate) max_commits: usize,
    pub(crate) max_events: usize,
}

struct Request {
    commit: Commit,
    reply: oneshot::Sender<Result<Committed, AppendError>>,
}

/// The handle commits go through. The writer task ends once every handle is dropped and the
/// queue is drained.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    tx: mpsc::Sender<Request>,
}

impl GroupCommit {
    pub(crate) fn spawn<W: BatchWriter>(writer: Arc<W>, head: watch::Sender<Position>, limits: BatchLimits) -> Self {
        let (tx, rx) = mpsc::channel(limits.max_commits.max(1) * 4);
        tokio::spawn(run(writer, rx, head, limits).instrument(tracing::info_span!("group_commit")));
        GroupCommit { tx }
    }

    pub(crate) async fn commit(&self, commit: Commit) -> Result<Committed, AppendError> {
        crate::plan::validate(&commit)?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request { commit, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn run<W: BatchWriter>(
    writer: Arc<W>,
    mut rx: mpsc::Receiver<Request>,
    head: watch::Sender<Position>,
    limits: BatchLimits,
) {
    let mut pending: Option<Request> = None;
    let mut previous = 0;
    loop {
        let first = match pending.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => break,
            },
        };
        let mut events = first.commit.event_count();
        let mut batch = vec![first];
        drain(&mut rx, &mut batch, &mut events, &mut pending, limits);
        // The callers the previous batch answered are re-submitting right now; committing the
        // first of them alone would split the next batch in two (1, then n-1). Give them a
        // moment, bounded, to queue up. An idle store (previous batch of one) never waits.
        if previous > 1 && batch.len() < previous && pending.is_none() {
            let until = std::time::Instant::now() + LINGER;
            while batch.len() < previous && pending.is_none() && std::time::Instant::now() < until {
                tokio::task::yield_now().await;
                drain(&mut rx, &mut batch, &mut events, &mut pending, limits);
            }
        }
        previous = batch.len();
        let started = std::time::Instant::now();
        let answers = write(&*writer, &batch).await;
        tracing::trace!(
            commits = batch.len(),
            events,
            micros = started.elapsed().as_micros() as u64,
            "batch written"
        );
        let last = answers
            .iter()
            .flatten()
            .map(Committed::last_position)
            .max()
            .unwrap_or(0);
        head.send_if_modified(|h| {
            let moved = last > *h;
            if moved {
                *h = last;
            }
            moved
        });
        for (request, answer) in batch.into_iter().zip(answers) {
            // A caller that gave up (dropped its future) no longer wants the answer.
            let _ = request.reply.send(answer);
        }
    }
    tracing::debug!("writer stopped: every store handle is gone");
}

/// The longest a batch waits for the callers of the previous batch to come back.
const LINGER: std::time::Duration = std::time::Duration::from_micros(500);

/// Moves what is queued into the batch, within the limits; a request that would overflow the
/// event limit is kept in `pending` for the next batch.
fn drain(
    rx: &mut mpsc::Receiver<Request>,
    batch: &mut Vec<Request>,
    events: &mut usize,
    pending: &mut Option<Request>,
    limits: BatchLimits,
) {
    while pending.is_none() && batch.len() < limits.max_commits && *events < limits.max_events {
        match rx.try_recv() {
            Ok(r) if *events + r.commit.event_count() > limits.max_events => *pending = Some(r),
            Ok(r) => {
                *events += r.commit.event_count();
                batch.push(r);
            }
            Err(_) => break,
        }
    }
}

async fn write<W: BatchWriter>(writer: &W, batch: &[Request]) -> Vec<Result<Committed, AppendError>> {
    let commits: Vec<&Commit> = batch.iter().map(|r| &r.commit).collect();
    match writer.write_batch(&commits).await {
        Ok(answers) => answers,
        Err(e) if commits.len() > 1 => {
            tracing::warn!(error = %e, source = ?std::error::Error::source(&e), commits = commits.len(),
                "group transaction failed; retrying its commits one by one");
            let mut answers = Vec::with_capacity(commits.len());
            for commit in commits {
                answers.push(match writer.write_batch(&[commit]).await {
                    Ok(mut one) => one.pop().unwrap_or(Err(AppendError::Store(StoreError::Closed))),
                    Err(e) => Err(AppendError::Store(e)),
                });
            }
            answers
        }
        Err(e) => {
            tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "commit failed");
            vec![Err(AppendError::Store(e))]
        }
    }
}
