//! The write side's commands as [`Command`]s: what each loads and how it decides. Everything
//! else (replays, locks, retries, commits, the cache) is the pipeline's.

use std::marker::PhantomData;

use uuid::Uuid;

use super::pipeline::{Command, Step, Writes, expectation};
use super::{CommandContext, CommandError, CommandHandler, Snapshottable};
use crate::domain;

/// A command on one aggregate: `A::decide` on its state, appended to its stream.
pub(crate) struct OnAggregate<A: Snapshottable> {
    pub(crate) id: Uuid,
    pub(crate) command: A::Command,
    pub(crate) aggregate: PhantomData<fn() -> A>,
}

impl<A> Command for OnAggregate<A>
where
    A: Snapshottable,
    A::Command: Clone + Send + Sync,
{
    fn stream_id(&self) -> String {
        A::CATEGORY.stream_id(self.id)
    }

    fn locks(&self) -> Vec<String> {
        vec![self.stream_id()]
    }

    async fn decide(&self, handler: &CommandHandler, ctx: &CommandContext, trust: bool) -> Result<Step, CommandError> {
        let (loaded, trusted) = handler.load_now::<A>(self.id, trust).await?;
        let expected = match expectation(ctx, &loaded, trusted) {
            Ok(expected) => expected,
            Err(step) => return Ok(step),
        };
        Ok(match loaded.state.decide(self.command.clone()) {
            Err(e) => Step::refused(trusted, e),
            Ok(events) if events.is_empty() => Step::unchanged(trusted, &loaded),
            Ok(events) => Step::Write(Writes::answering(&loaded).append(loaded, expected, events)),
        })
    }
}

/// Events decided elsewhere (by a flow that called other services first) that start a new
/// stream: appended if the stream does not exist, refused `AlreadyExists` if it does.
pub(crate) struct Create<A: Snapshottable> {
    pub(crate) id: Uuid,
    pub(crate) events: Vec<A::Event>,
}

impl<A> Command for Create<A>
where
    A: Snapshottable,
{
    fn stream_id(&self) -> String {
        A::CATEGORY.stream_id(self.id)
    }

    fn locks(&self) -> Vec<String> {
        vec![self.stream_id()]
    }

    async fn decide(&self, handler: &CommandHandler, ctx: &CommandContext, trust: bool) -> Result<Step, CommandError> {
        let (loaded, trusted) = handler.load_now::<A>(self.id, trust).await?;
        if loaded.version > 0 {
            let exists = domain::DomainError::AlreadyExists {
                what: A::CATEGORY.name(),
                id: self.id,
            };
            return Ok(Step::refused(trusted, exists));
        }
        let expected = match expectation(ctx, &loaded, trusted) {
            Ok(expected) => expected,
            Err(step) => return Ok(step),
        };
        Ok(Step::Write(Writes::answering(&loaded).append(
            loaded,
            expected,
            self.events.clone(),
        )))
    }
}
