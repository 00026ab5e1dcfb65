//! The write side's commands as [`Command`]s: what each loads and how it decides. Everything
//! else (replays, locks, retries, commits, the cache) is the pipeline's.

use std::marker::PhantomData;

use uuid::Uuid;

use super::pipeline::{Command, Step, Writes, expectation};
use super::{CommandContext, CommandError, CommandHandler, Snapshottable};
use crate::domain::{self, Aggregate as _};

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

/// An order placed with its saga (ADR 0010): the order's first events, decided elsewhere, and
/// the saga's start, both new streams, appended in one commit of the orders store, so that an
/// order never exists without its saga. An order that exists already is refused
/// `AlreadyExists`.
pub(crate) struct PlaceWithSaga {
    pub(crate) order_id: Uuid,
    pub(crate) order: Vec<event_schemas::OrderEvent>,
    pub(crate) start: domain::saga::SagaCommand,
}

impl Command for PlaceWithSaga {
    fn stream_id(&self) -> String {
        event_schemas::Category::Order.stream_id(self.order_id)
    }

    fn locks(&self) -> Vec<String> {
        vec![self.stream_id(), event_schemas::Category::Saga.stream_id(self.order_id)]
    }

    async fn decide(&self, handler: &CommandHandler, ctx: &CommandContext, trust: bool) -> Result<Step, CommandError> {
        let (order, order_trusted) = handler.load_now::<domain::Order>(self.order_id, trust).await?;
        let (saga, saga_trusted) = handler.load_now::<domain::saga::Saga>(self.order_id, trust).await?;
        let trusted = order_trusted || saga_trusted;
        if order.version > 0 || saga.version > 0 {
            let exists = domain::DomainError::AlreadyExists {
                what: event_schemas::Category::Order.name(),
                id: self.order_id,
            };
            return Ok(Step::refused(trusted, exists));
        }
        let expected = match expectation(ctx, &order, trusted) {
            Ok(expected) => expected,
            Err(step) => return Ok(step),
        };
        let started = match saga.state.decide(self.start.clone()) {
            Ok(events) => events,
            Err(e) => return Ok(Step::refused(trusted, e)),
        };
        Ok(Step::Write(
            Writes::answering(&order)
                .append(order, expected, self.order.clone())
                .append(saga, event_store::ExpectedVersion::NoStream, started),
        ))
    }
}

/// Records of a saga decided in turn on its state as each leaves it, and, when `order` is
/// set, a command on its order (confirm, cancel): appended in one commit of the orders store,
/// each stream at the version it was loaded at. A record the saga refuses on what the store
/// holds (another driver got there first) is left out; a refused order command refuses the
/// whole. A stale saga (another driver recorded meanwhile) is a conflict: decided again on
/// what the store holds.
pub(crate) struct SagaRecords {
    pub(crate) order_id: Uuid,
    pub(crate) order: Option<domain::OrderCommand>,
    pub(crate) records: Vec<domain::saga::SagaCommand>,
}

impl Command for SagaRecords {
    fn stream_id(&self) -> String {
        event_schemas::Category::Saga.stream_id(self.order_id)
    }

    fn locks(&self) -> Vec<String> {
        let saga = self.stream_id();
        match self.order {
            Some(_) => vec![event_schemas::Category::Order.stream_id(self.order_id), saga],
            None => vec![saga],
        }
    }

    async fn decide(&self, handler: &CommandHandler, _ctx: &CommandContext, trust: bool) -> Result<Step, CommandError> {
        let (saga, saga_trusted) = handler.load_now::<domain::saga::Saga>(self.order_id, trust).await?;
        let mut trusted = saga_trusted;
        let mut state = saga.state.clone();
        let mut saga_events = Vec::new();
        for record in &self.records {
            match state.decide(record.clone()) {
                Ok(events) => {
                    state = events.iter().fold(state, |s, e| s.evolve(e));
                    saga_events.extend(events);
                }
                // Decided on trusted state: check it against the store before leaving it out.
                Err(_) if trusted => return Ok(Step::Verify),
                // What the order's command stands on (the saga confirms, or cancels, it) does
                // not hold: nothing of it is appended.
                Err(e) if self.order.is_some() => return Ok(Step::Refused(e)),
                Err(e) => tracing::debug!(order_id = %self.order_id, error = %e, "a saga record is refused; left out"),
            }
        }
        let saga_expected = event_store::ExpectedVersion::Exact(saga.version);
        let mut writes = Writes::answering(&saga);
        let unchanged = saga_events.is_empty();
        writes = writes.append(saga.clone(), saga_expected, saga_events);
        if let Some(command) = &self.order {
            let (order, order_trusted) = handler.load_now::<domain::Order>(self.order_id, trust).await?;
            trusted |= order_trusted;
            let order_events = match order.state.decide(command.clone()) {
                Ok(events) => events,
                Err(e) => return Ok(Step::refused(trusted, e)),
            };
            if unchanged && order_events.is_empty() {
                return Ok(Step::unchanged(trusted, &saga));
            }
            let order_expected = event_store::ExpectedVersion::Exact(order.version);
            writes = writes.append(order, order_expected, order_events);
        } else if unchanged {
            return Ok(Step::unchanged(trusted, &saga));
        }
        Ok(Step::Write(writes))
    }
}
