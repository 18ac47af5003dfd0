//! The catalog: per sku its name, price, stock and status, listed in sku order.
//!
//! Stock, decided here because DESIGN names the fields but not their meaning:
//! - `available`: units that can be checked out now, the product stream's own
//!   stock (initial + restocks − reservations + releases);
//! - `reserved`: units held by orders that are placed or paid, neither shipped
//!   nor cancelled (a reservation ends with `StockReleased` on cancel, or when
//!   the order ships);
//! - `on_hand`: units in the warehouse, `available + reserved` (shipping takes
//!   the reserved units out).
//!
//! To know what an `OrderShipped` takes out, the model keeps each open order's
//! reserved lines (from its `StockReserved` events) until the order ships or all
//! of them are released.
//!
//! Keys: `p:<sku>` → product; `r:<order id>` → the order's reserved lines.
//!
//! Each product keeps the version of its stream as of the last of its events
//! applied: what a client reading it sends as `If-Match` to change it only if
//! nothing has changed it since (an `OrderShipped` changes the product's counts
//! here, not its stream).

use domain::{Event, OrderEvent, OrderId, PriceCents, ProductEvent, ProductName, Sku};
use serde::{Deserialize, Serialize};

use crate::error::ProjectionError;
use crate::records::{self, Changes, Envelope, Records, SharedName, key, prefix_end};
use crate::runtime::{Answer, Page, Slot, clamp_limit};

pub(crate) const NAME: &str = "catalog";
/// What the catalog stores: 2 since products keep their stream's version.
pub(crate) const FORMAT: u32 = 2;
const PRODUCT: &[u8] = b"p:";
const RESERVATION: &[u8] = b"r:";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredProduct {
    /// Stored as a `ProductName`.
    name: SharedName,
    price_cents: PriceCents,
    available: u32,
    reserved: u32,
    discontinued: bool,
    /// The product stream's version as of its last event applied.
    version: u64,
}

/// Whether a product can still be sold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProductStatus {
    Active,
    Discontinued,
}

impl ProductStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ProductStatus::Active => "active",
            ProductStatus::Discontinued => "discontinued",
        }
    }
}

/// One product as the catalog shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductView {
    pub sku: Sku,
    pub name: ProductName,
    pub price_cents: PriceCents,
    /// Units in the warehouse: `available + reserved`.
    pub on_hand: u32,
    /// Units held by placed or paid orders.
    pub reserved: u32,
    /// Units that can be checked out now.
    pub available: u32,
    pub status: ProductStatus,
    /// The product stream's version this view is of.
    pub version: u64,
}

fn product_key(sku: &Sku) -> Vec<u8> {
    key(PRODUCT, &[sku.as_str().as_bytes()])
}

fn reservation_key(order_id: OrderId) -> Vec<u8> {
    key(RESERVATION, &[order_id.get().as_bytes()])
}

/// The catalog's changes for one event. Pure: reads the model's records, writes nothing.
pub fn apply(records: &dyn Records, envelope: &Envelope, event: &Event) -> Result<Changes, ProjectionError> {
    let mut changes = Changes::default();
    // Reads the product and, if the catalog has it, puts it back changed; an
    // event of the product's own stream moves its version too.
    let change_product = |changes: &mut Changes, sku: &Sku, change: &dyn Fn(&mut StoredProduct)| {
        let key = product_key(sku);
        if let Some(mut stored) = records::get::<StoredProduct>(records, NAME, &key)? {
            change(&mut stored);
            if matches!(event, Event::Product(_)) {
                stored.version = envelope.version;
            }
            changes.put(key, stored);
        }
        Ok::<(), ProjectionError>(())
    };
    let reserved_lines = |reservation: &[u8]| -> Result<Vec<(Sku, u32)>, ProjectionError> {
        Ok(records::get(records, NAME, reservation)?.unwrap_or_default())
    };
    match event {
        Event::Product(ProductEvent::Created(created)) => {
            let stored = StoredProduct {
                name: SharedName::of(&created.name),
                price_cents: created.price_cents,
                available: created.initial_stock.get(),
                reserved: 0,
                discontinued: false,
                version: envelope.version,
            };
            changes.put(product_key(&created.sku), stored);
        }
        Event::Product(ProductEvent::PriceChanged(changed)) => {
            change_product(&mut changes, &changed.sku, &|stored| stored.price_cents = changed.price_cents)?;
        }
        Event::Product(ProductEvent::Restocked(restocked)) => {
            let quantity = restocked.quantity.get();
            change_product(&mut changes, &restocked.sku, &|stored| {
                stored.available = stored.available.saturating_add(quantity)
            })?;
        }
        Event::Product(ProductEvent::Discontinued(discontinued)) => {
            change_product(&mut changes, &discontinued.sku, &|stored| stored.discontinued = true)?;
        }
        Event::Product(ProductEvent::StockReserved(reserved)) => {
            let quantity = reserved.quantity.get();
            change_product(&mut changes, &reserved.sku, &|stored| {
                stored.available = stored.available.saturating_sub(quantity);
                stored.reserved = stored.reserved.saturating_add(quantity);
            })?;
            let reservation = reservation_key(reserved.order_id);
            let mut lines = reserved_lines(&reservation)?;
            lines.push((reserved.sku.clone(), quantity));
            changes.put(reservation, lines);
        }
        Event::Product(ProductEvent::StockReleased(released)) => {
            let quantity = released.quantity.get();
            change_product(&mut changes, &released.sku, &|stored| {
                stored.available = stored.available.saturating_add(quantity);
                stored.reserved = stored.reserved.saturating_sub(quantity);
            })?;
            let reservation = reservation_key(released.order_id);
            let mut lines = reserved_lines(&reservation)?;
            if let Some(index) = lines.iter().position(|(sku, _)| *sku == released.sku) {
                lines.remove(index);
            }
            if lines.is_empty() {
                changes.delete(reservation);
            } else {
                changes.put(reservation, lines);
            }
        }
        Event::Order(OrderEvent::Shipped(shipped)) => {
            let reservation = reservation_key(shipped.order_id);
            // An order's lines name distinct skus, so each product is read and
            // written once for this event.
            for (sku, quantity) in reserved_lines(&reservation)? {
                change_product(&mut changes, &sku, &|stored| {
                    stored.reserved = stored.reserved.saturating_sub(quantity)
                })?;
            }
            changes.delete(reservation);
        }
        _ => {}
    }
    Ok(changes)
}

fn view(sku: Sku, stored: StoredProduct) -> Result<ProductView, ProjectionError> {
    Ok(ProductView {
        sku,
        name: stored.name.to_domain(NAME)?,
        price_cents: stored.price_cents,
        on_hand: stored.available.saturating_add(stored.reserved),
        reserved: stored.reserved,
        available: stored.available,
        status: if stored.discontinued { ProductStatus::Discontinued } else { ProductStatus::Active },
        version: stored.version,
    })
}

/// The catalog's queries. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub(crate) slot: std::sync::Arc<Slot>,
}

impl Catalog {
    /// One product, if the catalog has it (discontinued ones included).
    pub fn get(&self, sku: &Sku) -> Result<Answer<Option<ProductView>>, ProjectionError> {
        self.slot.read(|tree| {
            let stored: Option<StoredProduct> = records::get(tree, NAME, &product_key(sku))?;
            stored.map(|stored| view(sku.clone(), stored)).transpose()
        })
    }

    /// Up to `limit` products in sku order, after the sku `after` (the cursor: the
    /// last sku of the previous page). `next` is the cursor of the next page.
    pub fn page(&self, after: Option<&Sku>, limit: usize) -> Result<Answer<Page<ProductView, Sku>>, ProjectionError> {
        let limit = clamp_limit(limit);
        self.slot.read(|tree| {
            let start = match after {
                Some(sku) => key(PRODUCT, &[sku.as_str().as_bytes(), &[0]]),
                None => PRODUCT.to_vec(),
            };
            let mut items = Vec::with_capacity(limit.min(256));
            let mut more = false;
            for entry in tree.range(start..prefix_end(PRODUCT)) {
                let (key, bytes) = entry?;
                if items.len() == limit {
                    more = true;
                    break;
                }
                let sku =
                    std::str::from_utf8(&key[PRODUCT.len()..]).ok().and_then(|text| Sku::parse(text).ok()).ok_or_else(
                        || ProjectionError::Corrupt { model: NAME, reason: "a product key is not a sku".into() },
                    )?;
                items.push(view(sku, records::decode(NAME, &bytes)?)?);
            }
            let next = if more { items.last().map(|item: &ProductView| item.sku.clone()) } else { None };
            Ok(Page { items, next })
        })
    }
}

crate::runtime::common_queries!(Catalog);
