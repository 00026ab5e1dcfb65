//! Given/when/then for aggregate tests:
//!
//! ```ignore
//! Order::given([placed()]).when(OrderCommand::Confirm { order_id }).then([confirmed()]);
//! Order::given([]).when(OrderCommand::Deliver { order_id }).then_rejected(not_found);
//! ```
//!
//! `when` decides twice and checks both answers are equal (decide is pure); `then` checks the
//! events and returns the state after them, for further assertions.

use std::fmt::Debug;

use super::{Aggregate, DomainError};

/// Starts a scenario from the state of a stream holding `events`.
pub(crate) trait Given: Aggregate {
    fn given(events: impl IntoIterator<Item = Self::Event>) -> Scenario<Self> {
        let events: Vec<Self::Event> = events.into_iter().collect();
        Scenario {
            state: Self::fold(&events),
        }
    }
}

impl<A: Aggregate> Given for A {}

/// The state before the command.
pub(crate) struct Scenario<A> {
    state: A,
}

impl<A> Scenario<A>
where
    A: Aggregate,
    A::Command: Clone,
{
    /// Decides `command` on the given state.
    #[track_caller]
    pub(crate) fn when(self, command: A::Command) -> Outcome<A>
    where
        A::Event: PartialEq + Debug,
    {
        let result = self.state.decide(command.clone());
        let again = self.state.decide(command);
        assert_eq!(
            result, again,
            "decide must be pure: the same state and command gave two answers"
        );
        Outcome {
            state: self.state,
            result,
        }
    }
}

/// The answer of `decide`.
pub(crate) struct Outcome<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, DomainError>,
}

impl<A> Outcome<A>
where
    A: Aggregate,
    A::Event: PartialEq + Debug,
{
    /// Asserts the command was accepted with exactly `expected`, and returns the state after
    /// them.
    #[track_caller]
    pub(crate) fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "the command decided other events");
                self.state.evolve_all(&events)
            }
            Err(error) => panic!("expected {expected:?}, but the command was rejected: {error:?}"),
        }
    }

    /// Asserts the command was accepted but asks for what is already true: no events.
    #[track_caller]
    pub(crate) fn then_nothing(self) -> A {
        self.then([])
    }

    /// Asserts the command was refused with exactly `expected`.
    #[track_caller]
    pub(crate) fn then_rejected(self, expected: DomainError) {
        match self.result {
            Ok(events) => panic!("expected the rejection {expected:?}, but the command decided {events:?}"),
            Err(error) => assert_eq!(error, expected),
        }
    }
}
