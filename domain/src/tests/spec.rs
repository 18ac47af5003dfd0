//! The given/when/then helper (after fmodel-rust's specification DSL): fold the
//! given events into a state, decide the command, compare the outcome.
//!
//! ```ignore
//! given([product_created("mug", 1000, 1)])
//!     .when(checkout(alice(), order(1)))
//!     .then_err(DomainError::EmptyCart { customer_id: alice() });
//! ```

use std::fmt::Debug;

use super::shop::Shop;
use crate::{DomainError, Event};

/// A decider: a decision over a state, and the fold that builds the state.
pub(crate) trait Decider {
    type State: Default + Debug;
    type Command;

    fn decide(state: &Self::State, command: &Self::Command) -> Result<Vec<Event>, DomainError>;
    fn evolve(state: Self::State, event: &Event) -> Self::State;

    fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self::State {
        events.into_iter().fold(Self::State::default(), Self::evolve)
    }
}

pub(crate) struct Given<D: Decider> {
    state: D::State,
}

pub(crate) struct When<D: Decider> {
    state: D::State,
    outcome: Result<Vec<Event>, DomainError>,
}

/// Given these past events, on the whole shop.
pub(crate) fn given(events: impl IntoIterator<Item = Event>) -> Given<Shop> {
    given_on::<Shop>(events)
}

/// Given these past events, on any decider.
pub(crate) fn given_on<D: Decider>(events: impl IntoIterator<Item = Event>) -> Given<D> {
    let events: Vec<Event> = events.into_iter().collect();
    Given { state: D::fold(&events) }
}

impl<D: Decider> Given<D> {
    /// When this command is decided.
    pub(crate) fn when(self, command: impl Into<D::Command>) -> When<D> {
        let outcome = D::decide(&self.state, &command.into());
        When { state: self.state, outcome }
    }

    /// The state the given events folded into.
    pub(crate) fn state(self) -> D::State {
        self.state
    }
}

impl<D: Decider> When<D> {
    /// Then exactly these events are emitted; returns the state after them.
    #[track_caller]
    pub(crate) fn then(self, expected: impl IntoIterator<Item = Event>) -> D::State {
        let expected: Vec<Event> = expected.into_iter().collect();
        match self.outcome {
            Ok(events) => {
                assert_eq!(events, expected, "emitted events differ");
                events.iter().fold(self.state, D::evolve)
            }
            Err(error) => panic!("expected events {expected:#?}, got the refusal `{error}` ({error:?})"),
        }
    }

    /// Then the command is refused with exactly this error.
    #[track_caller]
    pub(crate) fn then_err(self, expected: DomainError) {
        match self.outcome {
            Ok(events) => panic!("expected the refusal `{expected}`, got events {events:#?}"),
            Err(error) => assert_eq!(error, expected),
        }
    }
}
