//! [`Event`]: every stored event of the shop, with the names and versions it is
//! stored under ([`EVENT_TYPES`]), and the serde pair that stores only the event's
//! own struct: `impl Serialize for Event` writes the inner struct, [`EventSeed`]
//! reads it back given the type name and version from the envelope.

use std::fmt;

use serde::de::{DeserializeSeed, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::cart::{CartCheckedOut, CartEvent, CartItemAdded, CartItemRemoved};
use crate::customer::{CustomerEvent, CustomerForgotten, CustomerRegistered};
use crate::email_claim::{EmailClaimEvent, EmailClaimed, EmailReleased};
use crate::order::{OrderCancelled, OrderEvent, OrderPaid, OrderPlaced, OrderShipped};
use crate::product::{
    ProductCreated, ProductDiscontinued, ProductEvent, ProductPriceChanged, ProductRestocked, StockReleased,
    StockReserved,
};
use crate::stream::StreamId;
use crate::value::PasswordHash;

/// Any event of the shop, by aggregate. Build one from its struct with `.into()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Product(ProductEvent),
    Customer(CustomerEvent),
    EmailClaim(EmailClaimEvent),
    Cart(CartEvent),
    Order(OrderEvent),
}

/// Reads an event's payload back: the inner struct named by `event_type`, at
/// `schema_version`, which must be the type's current version (the store's
/// upcasters bring older payloads up to it first). An unknown pair is an error.
///
/// ```
/// use serde::de::DeserializeSeed;
/// use domain::{Event, EventSeed, ProductDiscontinued, Sku};
///
/// let event = Event::from(ProductDiscontinued { sku: Sku::parse("mug-1")? });
/// let json = serde_json::to_string(&event)?; // only the struct: {"sku":"mug-1"}
/// let seed = EventSeed { event_type: event.event_type(), schema_version: event.schema_version() };
/// let back = seed.deserialize(&mut serde_json::Deserializer::from_str(&json))?;
/// assert_eq!(back, event);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSeed<'a> {
    pub event_type: &'a str,
    pub schema_version: u16,
}

/// Generates, from one table, everything keyed by event type: [`EVENT_TYPES`],
/// `event_type`, `schema_version`, `Serialize`, the [`EventSeed`] dispatch and
/// `From<struct> for Event`. The type names are literals, not `stringify!`, so
/// renaming a struct can never rename what is stored.
macro_rules! event_types {
    ($( $name:literal v $version:literal => $aggregate:ident($enum:ident::$variant:ident($payload:ident)), )+) => {
        /// Every stored event type with its current schema version. These names
        /// are stored forever: never rename one; change a payload only through a
        /// new version and an upcaster.
        pub const EVENT_TYPES: &[(&str, u16)] = &[$(($name, $version)),+];

        impl Event {
            /// The name the event is stored under, e.g. `"ProductCreated"`.
            pub fn event_type(&self) -> &'static str {
                match self {
                    $(Event::$aggregate($enum::$variant(_)) => $name,)+
                }
            }

            /// The version of the payload's shape (1 for every type today).
            pub fn schema_version(&self) -> u16 {
                match self {
                    $(Event::$aggregate($enum::$variant(_)) => $version,)+
                }
            }
        }

        /// Writes the inner struct only: the type name travels in the envelope.
        impl Serialize for Event {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(Event::$aggregate($enum::$variant(payload)) => payload.serialize(serializer),)+
                }
            }
        }

        impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
            type Value = Event;

            fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Event, D::Error> {
                match (self.event_type, self.schema_version) {
                    $(($name, $version) => <$payload as Deserialize>::deserialize(deserializer)
                        .map(|payload| Event::$aggregate($enum::$variant(payload))),)+
                    (event_type, schema_version) => Err(D::Error::custom(format_args!(
                        "unknown event type {event_type} version {schema_version}"
                    ))),
                }
            }
        }

        $(
            impl From<$payload> for Event {
                fn from(payload: $payload) -> Event {
                    Event::$aggregate($enum::$variant(payload))
                }
            }
        )+
    };
}

event_types! {
    "ProductCreated" v 1 => Product(ProductEvent::Created(ProductCreated)),
    "ProductPriceChanged" v 1 => Product(ProductEvent::PriceChanged(ProductPriceChanged)),
    "ProductRestocked" v 1 => Product(ProductEvent::Restocked(ProductRestocked)),
    "ProductDiscontinued" v 1 => Product(ProductEvent::Discontinued(ProductDiscontinued)),
    "StockReserved" v 1 => Product(ProductEvent::StockReserved(StockReserved)),
    "StockReleased" v 1 => Product(ProductEvent::StockReleased(StockReleased)),
    "CustomerRegistered" v 1 => Customer(CustomerEvent::Registered(CustomerRegistered)),
    "CustomerForgotten" v 1 => Customer(CustomerEvent::Forgotten(CustomerForgotten)),
    "EmailClaimed" v 1 => EmailClaim(EmailClaimEvent::Claimed(EmailClaimed)),
    "EmailReleased" v 1 => EmailClaim(EmailClaimEvent::Released(EmailReleased)),
    "CartItemAdded" v 1 => Cart(CartEvent::ItemAdded(CartItemAdded)),
    "CartItemRemoved" v 1 => Cart(CartEvent::ItemRemoved(CartItemRemoved)),
    "CartCheckedOut" v 1 => Cart(CartEvent::CheckedOut(CartCheckedOut)),
    "OrderPlaced" v 1 => Order(OrderEvent::Placed(OrderPlaced)),
    "OrderPaid" v 1 => Order(OrderEvent::Paid(OrderPaid)),
    "OrderCancelled" v 1 => Order(OrderEvent::Cancelled(OrderCancelled)),
    "OrderShipped" v 1 => Order(OrderEvent::Shipped(OrderShipped)),
}

impl Event {
    /// The stream the event is appended to.
    pub fn stream(&self) -> StreamId {
        match self {
            Event::Product(event) => StreamId::Product(event.sku().clone()),
            Event::Customer(event) => StreamId::Customer(event.customer_id()),
            Event::EmailClaim(event) => StreamId::Email(event.email_key().clone()),
            Event::Cart(event) => StreamId::Cart(event.customer_id()),
            Event::Order(event) => StreamId::Order(event.order_id()),
        }
    }

    /// The data subject whose personal data the payload holds, if any: the store
    /// seals such a payload under the subject's key (DESIGN §3.9). Only
    /// `CustomerRegistered` holds personal data (email, name, password hash);
    /// every other event carries ids only.
    pub fn subject(&self) -> Option<Uuid> {
        match self {
            Event::Customer(CustomerEvent::Registered(registered)) => Some(registered.customer_id.get()),
            _ => None,
        }
    }

    /// The event with every secret replaced by a placeholder (the password hash
    /// in `CustomerRegistered`): the form for every API, SSE, NATS-facing JSON and
    /// export. Never store this form.
    pub fn without_secrets(self) -> Event {
        match self {
            Event::Customer(CustomerEvent::Registered(registered)) => {
                Event::Customer(CustomerEvent::Registered(CustomerRegistered {
                    password_hash: PasswordHash::redacted(),
                    ..registered
                }))
            }
            event => event,
        }
    }
}

impl fmt::Display for Event {
    /// `<event type> on <stream>`, e.g. `ProductCreated on product-mug-1`; no payload,
    /// so it is safe in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.event_type(), self.stream())
    }
}
