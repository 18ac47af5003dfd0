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
    /// Of the lines that can be checked out: a discontinued line is not counted.
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

/// A cart's lines in sku order, stored exactly as a `BTreeMap<Sku, Quantity>`
/// is (a map: its length, then each sku and its quantity). A sorted vector, not
/// a map: `apply` is pure, so every cart event copies its cart, and copying a
/// map of 50 lines node by node cost a twentieth of the read models' thread.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Lines(Vec<(SharedSku, Quantity)>);

impl Lines {
    fn find(&self, sku: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(held, _)| <SharedSku as Borrow<str>>::borrow(held).cmp(sku))
    }

    fn get(&self, sku: &str) -> Option<Quantity> {
        self.find(sku).ok().and_then(|index| self.0.get(index)).map(|(_, quantity)| *quantity)
    }

    fn insert(&mut self, sku: SharedSku, quantity: Quantity) {
        match self.find(sku.borrow()) {
            Ok(index) => self.0[index].1 = quantity,
            Err(index) => self.0.insert(index, (sku, quantity)),
        }
    }

    fn remove(&mut self, sku: &str) {
        if let Ok(index) = self.find(sku) {
            self.0.remove(index);
        }
    }
}

impl Serialize for Lines {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(sku, quantity)| (sku, quantity)))
    }
}

impl<'de> Deserialize<'de> for Lines {
    /// Read as the map it is stored as: in sku order, a repeated sku's last
    /// quantity kept (what this model writes is sorted with no repeats).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<SharedSku, Quantity>::deserialize(deserializer)?;
        Ok(Lines(map.into_iter().collect()))
    }
}

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
            if held.0.is_empty() {
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
            let mut lines = Vec::with_capacity(held.0.len());
            for (sku, quantity) in held.0 {
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
            // What a checkout charges once the discontinued lines (which refuse
            // it) are taken out: they are shown, flagged, and not counted.
            let totals = Totals::of_lines(
                lines
                    .iter()
                    .filter(|line| !line.discontinued)
                    .filter_map(|line| line.unit_price_cents.map(|price| (line.quantity, price))),
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

    /// Lines stay in sku order with one line a sku, as the map they replace did.
    #[test]
    fn lines_insert_replace_and_remove_in_sku_order() {
        let sku = |text: &str| SharedSku::of(&Sku::parse(text).expect("a sku"));
        let quantity = |n: u32| Quantity::new(n).expect("a quantity");
        let mut lines = Lines::default();
        let mut map = BTreeMap::new();
        for (text, count) in [("m", 1), ("c", 2), ("x", 3), ("c", 4), ("a", 5), ("m", 6), ("b-1", 7)] {
            lines.insert(sku(text), quantity(count));
            map.insert(sku(text), quantity(count));
            assert_eq!(lines.0, map.clone().into_iter().collect::<Vec<_>>(), "after {text}");
        }
        for text in ["c", "nope", "a", "x"] {
            lines.remove(text);
            map.remove(text);
            assert_eq!(lines.0, map.clone().into_iter().collect::<Vec<_>>(), "without {text}");
        }
        assert_eq!(lines.get("m"), Some(quantity(6)));
        assert_eq!(lines.get("c"), None);
    }

    /// Lines are stored as they were before skus were shared: a log's read
    /// models written by an earlier build read the same, and the other way round.
    #[test]
    fn lines_are_stored_exactly_as_a_map_of_skus_and_read_back_in_sku_order() {
        let sku = |text: &str| Sku::parse(text).expect("a sku");
        let quantity = |n: u32| Quantity::new(n).expect("a quantity");
        let before: BTreeMap<Sku, Quantity> =
            [(sku("b-2"), quantity(2)), (sku("A-1"), quantity(1)), (sku("a"), quantity(99))].into_iter().collect();
        let shared = Lines(before.iter().map(|(sku, quantity)| (SharedSku::of(sku), *quantity)).collect());
        let bytes = store::codec::encode(&before).expect("encodes");
        assert_eq!(store::codec::encode(&shared).expect("encodes"), bytes);

        let read: Lines = records::decode(NAME, &bytes).expect("decodes");
        let skus: Vec<Sku> = read.0.iter().map(|(sku, _)| sku.to_domain(NAME).expect("a valid sku")).collect();
        assert_eq!(skus, before.keys().cloned().collect::<Vec<_>>(), "the same order");
        assert_eq!(read.get("a"), Some(quantity(99)));
        assert_eq!(read.get("b"), None);

        let bad = store::codec::encode(&BTreeMap::from([("not a sku!".to_owned(), 1u32)])).expect("encodes");
        let read: Lines = records::decode(NAME, &bad).expect("decodes as text");
        assert!(read.0[0].0.to_domain(NAME).is_err(), "checked when read out");
    }
}
