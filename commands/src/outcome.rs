//! What goes into a command besides its values ([`CommandContext`]) and what comes
//! out of it ([`CommandOutcome`]).

use domain::{CustomerId, EmailClaimEvent, Event, OrderEvent, OrderId, OrderPlaced};
use store::{Idempotency, Metadata, StreamVersion};
use uuid::Uuid;

/// Who asks and why: stored as the metadata of every event the command appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandContext {
    /// Who: `admin`, `customer:<uuid>`, `public`…
    pub actor: String,
    /// The request (or saga) the command belongs to.
    pub correlation_id: Uuid,
    /// What caused the command: the request, or the event it reacts to.
    pub causation_id: Uuid,
    /// Makes the command repeatable: the same key and request hash give the
    /// first outcome again and write nothing. The API derives the hash from the
    /// request (route, principal, body), so a reused key with another request is
    /// refused with [`crate::CommandError::IdempotencyKeyReused`].
    pub idempotency: Option<Idempotency>,
}

impl CommandContext {
    /// A context for `actor` with one fresh id as correlation and causation.
    pub fn new(actor: impl Into<String>) -> Self {
        let id = Uuid::now_v7();
        CommandContext { actor: actor.into(), correlation_id: id, causation_id: id, idempotency: None }
    }

    /// The same context, made repeatable under `key`.
    pub fn with_idempotency(mut self, key: impl Into<String>, request_hash: [u8; 32]) -> Self {
        self.idempotency = Some(Idempotency { key: key.into(), request_hash });
        self
    }

    /// The envelope fields its events carry: actor, correlation and causation.
    pub fn metadata(&self) -> Metadata {
        Metadata { actor: self.actor.clone(), correlation_id: self.correlation_id, causation_id: self.causation_id }
    }
}

/// What a command wrote. Built from the events actually in the log: when the
/// command repeats an earlier one (same idempotency key), these are the first
/// command's events, read back, and `duplicate` is true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// The command's main stream: the one `expected` (HTTP `If-Match`) refers
    /// to, and whose version is the response's `ETag`.
    pub main_stream: String,
    pub first_position: u64,
    pub last_position: u64,
    /// Every stream written, with its version after the append, in append order.
    pub streams: Vec<StreamVersion>,
    /// The events written, in position order (`events[i]` is at
    /// `first_position + i`), except forgotten ones read back on a duplicate.
    pub events: Vec<Event>,
    /// True when an earlier command with the same idempotency key wrote these
    /// events and nothing was written this time.
    pub duplicate: bool,
    /// How many times the command was decided and appended (1 without contention):
    /// a measure of contention on its streams.
    pub attempts: u32,
}

impl CommandOutcome {
    /// The main stream's name.
    pub fn stream(&self) -> &str {
        &self.main_stream
    }

    /// The main stream's version after the command (its `ETag`).
    pub fn version(&self) -> u64 {
        self.version_of(&self.main_stream).unwrap_or(0)
    }

    /// The position of the command's last event.
    pub fn position(&self) -> u64 {
        self.last_position
    }

    /// The version `stream` reached, if the command wrote to it.
    pub fn version_of(&self, stream: &str) -> Option<u64> {
        self.streams.iter().find(|written| written.stream == stream).map(|written| written.version)
    }

    /// The order the command placed or changed.
    pub fn order_id(&self) -> Option<OrderId> {
        self.events.iter().find_map(|event| match event {
            Event::Order(order) => Some(order.order_id()),
            _ => None,
        })
    }

    /// The order a checkout placed, with its lines and totals.
    pub fn order_placed(&self) -> Option<&OrderPlaced> {
        self.events.iter().find_map(|event| match event {
            Event::Order(OrderEvent::Placed(placed)) => Some(placed),
            _ => None,
        })
    }

    /// The orders the command cancelled (a forget cancels the customer's unpaid
    /// orders), in position order.
    pub fn cancelled_orders(&self) -> Vec<OrderId> {
        self.events
            .iter()
            .filter_map(|event| match event {
                Event::Order(OrderEvent::Cancelled(cancelled)) => Some(cancelled.order_id),
                _ => None,
            })
            .collect()
    }

    /// The customer the command registered or forgot.
    pub fn customer_id(&self) -> Option<CustomerId> {
        self.events.iter().find_map(|event| match event {
            Event::Customer(customer) => Some(customer.customer_id()),
            Event::EmailClaim(EmailClaimEvent::Claimed(claimed)) => Some(claimed.customer_id),
            _ => None,
        })
    }
}
