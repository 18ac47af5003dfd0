//! The glue between the shop's [`Event`]s and the log's envelopes, in one place
//! for every crate that writes or reads events: the command side here, the
//! projections and the API's event views alike.
//!
//! Writing: [`to_new_event`] turns an event into a [`NewEvent`] (a fresh v7 id, the
//! stored type name and schema version, the data subject, the bincode payload).
//! Reading: [`decode`] turns a [`RecordedEvent`] back into an [`Event`], or into
//! `None` when its payload was crypto-shredded ([`store::Payload::Forgotten`]: a
//! `CustomerRegistered` whose customer was forgotten). A fold reads such an event
//! as that customer's `CustomerForgotten` ([`decode_for_fold`]).

use domain::{CustomerForgotten, CustomerId, Event, EventSeed};
use store::{EventRef, NewEvent, RecordedEvent};
use uuid::Uuid;

/// An event could not be encoded (never expected: stored event types are plain).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode event {event_type}: {reason}")]
pub struct EncodeError {
    pub event_type: &'static str,
    pub reason: String,
}

/// A stored event could not be read back as a shop event: an unknown type or
/// version (an upcaster is missing), bytes that do not decode, or an event on a
/// stream it does not belong to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode event {event_type} v{schema_version} at position {position}: {reason}")]
pub struct DecodeError {
    pub position: u64,
    pub event_type: String,
    pub schema_version: u16,
    pub reason: String,
}

/// The shop's upcasters: what turns each older schema version of an event's
/// payload into the next (DESIGN §3.8). Every log of the shop is opened with them
/// ([`log_options`]: `serve` and every CLI command), and a test decodes every
/// frozen version in `tests/fixtures/events/` through a log opened so. None yet:
/// every event type is at version 1. Bumping a type's version means registering
/// here the step from the old one, and keeping the old one's frozen bytes.
pub fn upcasters() -> store::Upcasters {
    store::Upcasters::new()
}

/// The options the shop's log is opened with: the store's defaults and the
/// shop's [`upcasters`].
pub fn log_options() -> store::Options {
    store::Options { upcasters: upcasters(), ..store::Options::default() }
}

/// The event as the log takes it: a fresh uuid v7, its stored type name and
/// schema version, its data subject (the store seals the payload under it) and
/// its payload in the store's codec.
pub fn to_new_event(event: &Event) -> Result<NewEvent, EncodeError> {
    let payload = store::codec::encode(event)
        .map_err(|error| EncodeError { event_type: event.event_type(), reason: error.to_string() })?;
    Ok(NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event.event_type().to_owned(),
        schema_version: event.schema_version(),
        subject: event.subject(),
        payload,
    })
}

/// The shop event a recorded event holds, or `None` when its payload was
/// forgotten (crypto-shredded): folds skip those.
pub fn decode(recorded: &RecordedEvent) -> Result<Option<Event>, DecodeError> {
    decode_payload(recorded.position, &recorded.event_type, recorded.schema_version, recorded.payload.bytes())
}

/// The event a fold of an aggregate applies for `recorded`: [`decode`]'s, except
/// that a `CustomerRegistered` whose customer was forgotten (read back without
/// its data) stands for that customer's `CustomerForgotten`. A log usually holds
/// that event after it too, and applying it again changes nothing; but a log
/// restored to a position before a forget holds the registration, unreadable
/// (the key is gone: forgetting is never undone), without the forget. `None`
/// for any other event that reads back without its data.
pub fn decode_for_fold(recorded: &RecordedEvent) -> Result<Option<Event>, DecodeError> {
    if let Some(event) = decode(recorded)? {
        return Ok(Some(event));
    }
    let forgotten = match (recorded.event_type.as_str(), recorded.subject) {
        ("CustomerRegistered", Some(subject)) => {
            Some(CustomerForgotten { customer_id: CustomerId::new(subject) }.into())
        }
        _ => None,
    };
    Ok(forgotten)
}

/// [`decode`] of an event the log lends ([`store::EventLog::scan`]).
pub fn decode_ref(event: &EventRef<'_>) -> Result<Option<Event>, DecodeError> {
    decode_payload(event.position, &event.event_type, event.schema_version, event.payload.as_deref())
}

fn decode_payload(
    position: u64,
    event_type: &str,
    schema_version: u16,
    payload: Option<&[u8]>,
) -> Result<Option<Event>, DecodeError> {
    let Some(bytes) = payload else {
        return Ok(None);
    };
    let seed = EventSeed { event_type, schema_version };
    store::codec::decode_seed(seed, bytes).map(Some).map_err(|error| DecodeError {
        position,
        event_type: event_type.to_owned(),
        schema_version,
        reason: error.to_string(),
    })
}
