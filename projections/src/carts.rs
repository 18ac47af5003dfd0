//! Carts: per customer the lines (sku, quantity) and the totals of DESIGN §5 at
//! the current prices.
//!
//! Decision: the model keeps its own copy of each product's current price and
//! status (from the product events), so a cart's totals are those of one log
//! position, the one the answer carries, and never mix two models' positions.
//! A forgotten customer's cart is dropped (nobody can use it any more); their
//! orders stay in the orders model.
//!
//! Keys: `c:<customer id>` → lines; `p:<sku>` → price and status.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use domain::{CartEvent, Cents, CustomerEvent, CustomerId, Event, PriceCents, ProductEvent, Quantity, Sku, Totals};
use serde::{Deserialize, Serialize};

use crate::error::ProjectionError;
use crate::records::{self, Changes, Envelope, Records, SharedSku, key};
use crate::runtime::{Answer, Slot};

pub(crate) const NAME: &str = "carts";
const CART: &[u8] = b"c:";
const PRICE: &[u8] = b"p:";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredPrice {
    price_cents: PriceCents,
    discontinued: bool,
}

/// One line of a cart at the current price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartLineView {
    pub sku: Sku,
    pub quantity: Quantity,
    /// The product's current price (`None` only if the product is unknown, which
    /// the domain never lets into a cart).
    pub unit_price_cents: Option<PriceCents>,
    pub line_total_cents: Cents,
    /// A discontinued product cannot be checked out.
    pub discontinued: bool,
}

/// A customer's cart; every customer has one, empty until they add to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartView {
    pub customer_id: CustomerId,
    /// In sku order.
    pub lines: Vec<CartLineView>,
    pub subtotal_cents: Cents,
    pub shipping_cents: Cents,
    pub total_cents: Cents,
}

fn cart_key(customer_id: CustomerId) -> Vec<u8> {
    key(CART, &[customer_id.get().as_bytes()])
}

fn price_key(sku: &str) -> Vec<u8> {
    key(PRICE, &[sku.as_bytes()])
}

/// A cart's lines by sku; stored exactly as a `BTreeMap<Sku, Quantity>` is.
type Lines = BTreeMap<SharedSku, Quantity>;

/// The carts' changes for one event. Pure: reads the model's records, writes nothing.
pub fn apply(records: &dyn Records, _envelope: &Envelope, event: &Event) -> Result<Changes, ProjectionError> {
    let mut changes = Changes::default();
    let price = |sku: &Sku| records::get::<StoredPrice>(records, NAME, &price_key(sku.as_str()));
    let lines = |customer_id| records::get::<Lines>(records, NAME, &cart_key(customer_id));
    match event {
        Event::Product(ProductEvent::Created(created)) => {
            let stored = StoredPrice { price_cents: created.price_cents, discontinued: false };
            changes.put(price_key(created.sku.as_str()), stored);
        }
        Event::Product(ProductEvent::PriceChanged(changed)) => {
            if let Some(mut stored) = price(&changed.sku)? {
                stored.price_cents = changed.price_cents;
                changes.put(price_key(changed.sku.as_str()), stored);
            }
        }
        Event::Product(ProductEvent::Discontinued(discontinued)) => {
            if let Some(mut stored) = price(&discontinued.sku)? {
                stored.discontinued = true;
                changes.put(price_key(discontinued.sku.as_str()), stored);
            }
        }
        Event::Cart(CartEvent::ItemAdded(added)) => {
            let mut held = lines(added.customer_id)?.unwrap_or_default();
            let quantity = match held.get(added.sku.as_str()) {
                // The domain keeps a line at 99 at most; saturate like its evolve.
                Some(before) => Quantity::new(before.get() + added.quantity.get()).unwrap_or(Quantity::MAX),
                None => added.quantity,
            };
            held.insert(SharedSku::of(&added.sku), quantity);
            changes.put(cart_key(added.customer_id), held);
        }
        Event::Cart(CartEvent::ItemRemoved(removed)) => {
            let mut held = lines(removed.customer_id)?.unwrap_or_default();
            held.remove(removed.sku.as_str());
            if held.is_empty() {
                changes.delete(cart_key(removed.customer_id));
            } else {
                changes.put(cart_key(removed.customer_id), held);
            }
        }
        Event::Cart(CartEvent::CheckedOut(checked_out)) => changes.delete(cart_key(checked_out.customer_id)),
        Event::Customer(CustomerEvent::Forgotten(forgotten)) => changes.delete(cart_key(forgotten.customer_id)),
        _ => {}
    }
    Ok(changes)
}

/// The carts' queries. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Carts {
    pub(crate) slot: std::sync::Arc<Slot>,
}

impl Carts {
    /// The customer's cart with its totals at the current prices.
    pub fn get(&self, customer_id: CustomerId) -> Result<Answer<CartView>, ProjectionError> {
        self.slot.read(|tree| {
            let held: Lines = records::get(tree, NAME, &cart_key(customer_id))?.unwrap_or_default();
            let mut lines = Vec::with_capacity(held.len());
            for (sku, quantity) in held {
                let stored: Option<StoredPrice> = records::get(tree, NAME, &price_key(sku.borrow()))?;
                let unit_price_cents = stored.as_ref().map(|stored| stored.price_cents);
                lines.push(CartLineView {
                    line_total_cents: unit_price_cents.map_or(Cents::ZERO, |price| price.times(quantity)),
                    unit_price_cents,
                    discontinued: stored.is_some_and(|stored| stored.discontinued),
                    sku: sku.to_domain(NAME)?,
                    quantity,
                });
            }
            let totals = Totals::of_lines(
                lines.iter().filter_map(|line| line.unit_price_cents.map(|price| (line.quantity, price))),
            );
            Ok(CartView {
                customer_id,
                lines,
                subtotal_cents: totals.subtotal_cents,
                shipping_cents: totals.shipping_cents,
                total_cents: totals.total_cents,
            })
        })
    }
}

crate::runtime::common_queries!(Carts);

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines are stored as they were before skus were shared: a log's read
    /// models written by an earlier build read the same, and the other way round.
    #[test]
    fn lines_are_stored_exactly_as_a_map_of_skus_and_read_back_in_sku_order() {
        let sku = |text: &str| Sku::parse(text).expect("a sku");
        let quantity = |n: u32| Quantity::new(n).expect("a quantity");
        let before: BTreeMap<Sku, Quantity> =
            [(sku("b-2"), quantity(2)), (sku("A-1"), quantity(1)), (sku("a"), quantity(99))].into_iter().collect();
        let shared: Lines = before.iter().map(|(sku, quantity)| (SharedSku::of(sku), *quantity)).collect();
        let bytes = store::codec::encode(&before).expect("encodes");
        assert_eq!(store::codec::encode(&shared).expect("encodes"), bytes);

        let read: Lines = records::decode(NAME, &bytes).expect("decodes");
        let skus: Vec<Sku> = read.keys().map(|sku| sku.to_domain(NAME).expect("a valid sku")).collect();
        assert_eq!(skus, before.keys().cloned().collect::<Vec<_>>(), "the same order");
        assert_eq!(read.get("a"), Some(&quantity(99)));

        let bad = store::codec::encode(&BTreeMap::from([("not a sku!".to_owned(), 1u32)])).expect("encodes");
        let read: Lines = records::decode(NAME, &bad).expect("decodes as text");
        assert!(read.keys().next().expect("one line").to_domain(NAME).is_err(), "checked when read out");
    }
}
