//! Stream names: [`StreamId`], the one place that spells `product-<sku>`,
//! `customer-<uuid>`, `email-<hex>`, `cart-<uuid>` and `order-<uuid>`.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use crate::error::ValidationError;
use crate::value::{CustomerId, EmailKey, OrderId, Sku};

/// The stream an event belongs to. Its text form (`Display`) is the stream name
/// in the log; [`StreamId::parse`] reads it back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StreamId {
    Product(Sku),
    Customer(CustomerId),
    Email(EmailKey),
    Cart(CustomerId),
    Order(OrderId),
}

impl StreamId {
    /// The stream name's prefix, also the NATS subject's category:
    /// `product`, `customer`, `email`, `cart` or `order`.
    pub fn category(&self) -> &'static str {
        match self {
            StreamId::Product(_) => "product",
            StreamId::Customer(_) => "customer",
            StreamId::Email(_) => "email",
            StreamId::Cart(_) => "cart",
            StreamId::Order(_) => "order",
        }
    }

    /// Reads a stream name back. Uuids must be in the canonical lowercase
    /// hyphenated form, so one stream has exactly one name.
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        let bad = || {
            ValidationError::new(
                "stream",
                "must be product-<sku>, customer-<uuid>, email-<hex>, cart-<uuid> or order-<uuid>",
            )
        };
        let (category, id) = text.split_once('-').ok_or_else(bad)?;
        let uuid = || canonical_uuid(id).ok_or_else(bad);
        match category {
            "product" => Sku::parse(id).map(StreamId::Product).map_err(|_| bad()),
            "customer" => Ok(StreamId::Customer(CustomerId::new(uuid()?))),
            "email" => EmailKey::parse(id).map(StreamId::Email).map_err(|_| bad()),
            "cart" => Ok(StreamId::Cart(CustomerId::new(uuid()?))),
            "order" => Ok(StreamId::Order(OrderId::new(uuid()?))),
            _ => Err(bad()),
        }
    }
}

fn canonical_uuid(text: &str) -> Option<Uuid> {
    let uuid = Uuid::try_parse(text).ok()?;
    (uuid.hyphenated().to_string() == text).then_some(uuid)
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let category = self.category();
        match self {
            StreamId::Product(sku) => write!(f, "{category}-{sku}"),
            StreamId::Customer(id) | StreamId::Cart(id) => write!(f, "{category}-{id}"),
            StreamId::Email(key) => write!(f, "{category}-{key}"),
            StreamId::Order(id) => write!(f, "{category}-{id}"),
        }
    }
}

impl FromStr for StreamId {
    type Err = ValidationError;

    fn from_str(text: &str) -> Result<Self, ValidationError> {
        Self::parse(text)
    }
}
