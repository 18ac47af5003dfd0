//! The sales dashboard: revenue, orders by status, orders and revenue by day,
//! top products and low stock.
//!
//! Decisions where DESIGN names only the figures:
//! - revenue is the total of every order that was paid and not cancelled after
//!   (paid and shipped orders); a cancelled paid order takes its total back out;
//! - orders by status counts each order once, in its current status;
//! - by day (UTC date of the event): `orders` counts orders placed that day
//!   (cancelled later or not), `revenue_cents` the payments made that day that
//!   were not cancelled later;
//! - top products rank skus by units in paid and shipped orders;
//! - low stock lists active products whose available units (see [`crate::catalog`])
//!   are below a threshold chosen at query time.
//!
//! Keys: `s` → summary; `d:<YYYY-MM-DD>` → day; `o:<order id>` → an order not yet
//! shipped or cancelled; `p:<sku>` → product; `a:<bucket><sku>` (active
//! products by bucket of available units) and `t:<!units BE><sku>` (skus by
//! units sold, most first) are indexes with empty values, derived from each
//! product by [`index`] when a batch is written: a restock changes only the
//! product for `apply`, and a batch moves the product's index entries once.
//!
//! Decision: the `a:` index lists a product under its available units' bucket
//! ([`available_bucket`]: 0, 1, 2–3, 4–7, …), not under the units themselves
//! (format 1 did, `a:<available BE><sku>`), so a restock or a sale moves the
//! entry only when the units cross a power of two: under a steady load of
//! restocks the entry moved on every one, two of the three writes a restock
//! made to this model. The low-stock query reads the products of the buckets
//! below its threshold, bucket by bucket, and orders each bucket by units: it
//! reads at most one bucket beyond what it answers.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use domain::{Cents, Event, OrderEvent, OrderId, ProductEvent, ProductName, Sku};
use serde::{Deserialize, Serialize};

use crate::error::ProjectionError;
use crate::records::{self, Changes, Envelope, Records, SharedName, Value, key, prefix_end};
use crate::runtime::{Answer, Slot};

pub(crate) const NAME: &str = "dashboard";
const SUMMARY: &[u8] = b"s";
const DAY: &[u8] = b"d:";
const ORDER: &[u8] = b"o:";
const PRODUCT: &[u8] = b"p:";
const BY_AVAILABLE: &[u8] = b"a:";
const BY_UNITS: &[u8] = b"t:";
const DATE_FORMAT: &str = "%Y-%m-%d";

/// What this model stores (see `runtime::format_of`). 2: the `a:` index by
/// bucket of available units.
pub(crate) const FORMAT: u32 = 2;

/// The default threshold of [`SalesQuery::low_stock_below`].
pub const LOW_STOCK_BELOW: u32 = 5;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Summary {
    revenue_cents: i64,
    placed: u64,
    paid: u64,
    shipped: u64,
    cancelled: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Day {
    orders: u64,
    revenue_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct OpenOrder {
    paid_on: Option<NaiveDate>,
    total_cents: i64,
    lines: Vec<(Sku, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredProduct {
    /// Stored as a `ProductName`.
    name: SharedName,
    available: u32,
    discontinued: bool,
    units_sold: u64,
}

/// Orders counted by their current status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrdersByStatus {
    pub placed: u64,
    pub paid: u64,
    pub shipped: u64,
    pub cancelled: u64,
}

/// One UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayView {
    pub date: NaiveDate,
    /// Orders placed that day.
    pub orders: u64,
    /// Payments made that day, less those cancelled since.
    pub revenue_cents: Cents,
}

/// A product by units sold in paid and shipped orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopProduct {
    pub sku: Sku,
    pub name: ProductName,
    pub units_sold: u64,
}

/// An active product running low.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowStock {
    pub sku: Sku,
    pub name: ProductName,
    pub available: u32,
}

/// What the dashboard shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalesView {
    pub revenue_cents: Cents,
    pub orders_by_status: OrdersByStatus,
    /// The most recent days with any order or payment, oldest first.
    pub by_day: Vec<DayView>,
    /// Most units first; ties in sku order. Only skus that sold.
    pub top_products: Vec<TopProduct>,
    /// Fewest available first; ties in sku order.
    pub low_stock: Vec<LowStock>,
}

/// How much of the dashboard to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SalesQuery {
    /// How many of the most recent days.
    pub days: usize,
    /// How many top products.
    pub top: usize,
    /// Low stock: available units below this.
    pub low_stock_below: u32,
    /// The most low-stock products listed.
    pub low_stock_len_max: usize,
}

impl Default for SalesQuery {
    fn default() -> Self {
        SalesQuery { days: 30, top: 10, low_stock_below: LOW_STOCK_BELOW, low_stock_len_max: 100 }
    }
}

fn day_key(date: NaiveDate) -> Vec<u8> {
    let mut key = Vec::with_capacity(DAY.len() + 10);
    key.extend_from_slice(DAY);
    let (year, month, day) = (date.year(), date.month(), date.day());
    if !(0..=9999).contains(&year) {
        // chrono writes such years with a sign or more digits.
        key.extend_from_slice(date.format(DATE_FORMAT).to_string().as_bytes());
        return key;
    }
    // `DATE_FORMAT` written straight, as chrono writes it for these years.
    push_digits(&mut key, year.unsigned_abs(), 4);
    key.push(b'-');
    push_digits(&mut key, month, 2);
    key.push(b'-');
    push_digits(&mut key, day, 2);
    key
}

/// `value`'s last `len` decimal digits, zero-padded.
fn push_digits(key: &mut Vec<u8>, value: u32, len: u32) {
    for place in (0..len).rev() {
        key.push(b'0' + (value / 10u32.pow(place) % 10) as u8);
    }
}

fn order_key(order_id: OrderId) -> Vec<u8> {
    key(ORDER, &[order_id.get().as_bytes()])
}

fn product_key(sku: &Sku) -> Vec<u8> {
    key(PRODUCT, &[sku.as_str().as_bytes()])
}

fn date_of(at: DateTime<Utc>) -> NaiveDate {
    at.date_naive()
}

/// The dashboard's index entries of one record (see [`crate::records::IndexFn`]):
/// a product is listed under `a:` while active and under `t:` once it sold.
/// The runtime and replay write them with the product; `apply` never does.
pub(crate) fn index(key: &[u8], value: &Value) -> Result<Vec<Vec<u8>>, ProjectionError> {
    let Some(sku) = key.strip_prefix(PRODUCT) else {
        return Ok(Vec::new());
    };
    let product: StoredProduct = value.typed(NAME)?;
    let mut entries = Vec::with_capacity(2);
    if !product.discontinued {
        entries.push(records::key(BY_AVAILABLE, &[&[available_bucket(product.available)], sku]));
    }
    if product.units_sold > 0 {
        entries.push(records::key(BY_UNITS, &[&(u64::MAX - product.units_sold).to_be_bytes(), sku]));
    }
    Ok(entries)
}

/// The `a:` index's bucket of `available` units: 0 for none, else one more than
/// the highest bit set (1 → 1, 2–3 → 2, 4–7 → 3, …, at most 32).
fn available_bucket(available: u32) -> u8 {
    // At most 32: it fits.
    (u32::BITS - available.leading_zeros()) as u8
}

/// The dashboard's changes for one event. Pure: reads the model's records, writes nothing.
pub fn apply(records: &dyn Records, envelope: &Envelope, event: &Event) -> Result<Changes, ProjectionError> {
    let mut changes = Changes::default();
    let change_product = |changes: &mut Changes, sku: &Sku, change: &dyn Fn(&mut StoredProduct)| {
        let key = product_key(sku);
        if let Some(mut stored) = records::get::<StoredProduct>(records, NAME, &key)? {
            change(&mut stored);
            changes.put(key, stored);
        }
        Ok::<(), ProjectionError>(())
    };
    let summary = || Ok::<Summary, ProjectionError>(records::get(records, NAME, SUMMARY)?.unwrap_or_default());
    let day = |date| Ok::<Day, ProjectionError>(records::get(records, NAME, &day_key(date))?.unwrap_or_default());
    match event {
        Event::Product(ProductEvent::Created(created)) => {
            let stored = StoredProduct {
                name: SharedName::of(&created.name),
                available: created.initial_stock.get(),
                discontinued: false,
                units_sold: 0,
            };
            changes.put(product_key(&created.sku), stored);
        }
        Event::Product(ProductEvent::Restocked(restocked)) => {
            let quantity = restocked.quantity.get();
            change_product(&mut changes, &restocked.sku, &|stored| {
                stored.available = stored.available.saturating_add(quantity)
            })?;
        }
        Event::Product(ProductEvent::StockReserved(reserved)) => {
            let quantity = reserved.quantity.get();
            change_product(&mut changes, &reserved.sku, &|stored| {
                stored.available = stored.available.saturating_sub(quantity)
            })?;
        }
        Event::Product(ProductEvent::StockReleased(released)) => {
            let quantity = released.quantity.get();
            change_product(&mut changes, &released.sku, &|stored| {
                stored.available = stored.available.saturating_add(quantity)
            })?;
        }
        Event::Product(ProductEvent::Discontinued(discontinued)) => {
            change_product(&mut changes, &discontinued.sku, &|stored| stored.discontinued = true)?;
        }
        Event::Order(OrderEvent::Placed(placed)) => {
            let open = OpenOrder {
                paid_on: None,
                total_cents: placed.total_cents.get(),
                lines: placed.lines.iter().map(|line| (line.sku.clone(), line.quantity.get())).collect(),
            };
            changes.put(order_key(placed.order_id), open);
            let mut summary = summary()?;
            summary.placed += 1;
            changes.put(SUMMARY.to_vec(), summary);
            let date = date_of(envelope.recorded_at);
            let mut day = day(date)?;
            day.orders += 1;
            changes.put(day_key(date), day);
        }
        Event::Order(OrderEvent::Paid(paid)) => {
            let Some(mut open) = records::get::<OpenOrder>(records, NAME, &order_key(paid.order_id))? else {
                return Ok(changes);
            };
            if open.paid_on.is_some() {
                return Ok(changes);
            }
            let date = date_of(envelope.recorded_at);
            open.paid_on = Some(date);
            let mut summary = summary()?;
            summary.placed = summary.placed.saturating_sub(1);
            summary.paid += 1;
            summary.revenue_cents = summary.revenue_cents.saturating_add(open.total_cents);
            changes.put(SUMMARY.to_vec(), summary);
            let mut day = day(date)?;
            day.revenue_cents = day.revenue_cents.saturating_add(open.total_cents);
            changes.put(day_key(date), day);
            for (sku, quantity) in &open.lines {
                let units = u64::from(*quantity);
                change_product(&mut changes, sku, &|stored| {
                    stored.units_sold = stored.units_sold.saturating_add(units)
                })?;
            }
            changes.put(order_key(paid.order_id), open);
        }
        Event::Order(OrderEvent::Shipped(shipped)) => {
            let Some(open) = records::get::<OpenOrder>(records, NAME, &order_key(shipped.order_id))? else {
                return Ok(changes);
            };
            if open.paid_on.is_none() {
                return Ok(changes);
            }
            changes.delete(order_key(shipped.order_id));
            let mut summary = summary()?;
            summary.paid = summary.paid.saturating_sub(1);
            summary.shipped += 1;
            changes.put(SUMMARY.to_vec(), summary);
        }
        Event::Order(OrderEvent::Cancelled(cancelled)) => {
            let Some(open) = records::get::<OpenOrder>(records, NAME, &order_key(cancelled.order_id))? else {
                return Ok(changes);
            };
            changes.delete(order_key(cancelled.order_id));
            let mut summary = summary()?;
            summary.cancelled += 1;
            match open.paid_on {
                None => summary.placed = summary.placed.saturating_sub(1),
                Some(paid_on) => {
                    summary.paid = summary.paid.saturating_sub(1);
                    summary.revenue_cents = summary.revenue_cents.saturating_sub(open.total_cents);
                    let mut day = day(paid_on)?;
                    day.revenue_cents = day.revenue_cents.saturating_sub(open.total_cents);
                    changes.put(day_key(paid_on), day);
                    for (sku, quantity) in &open.lines {
                        let units = u64::from(*quantity);
                        change_product(&mut changes, sku, &|stored| {
                            stored.units_sold = stored.units_sold.saturating_sub(units)
                        })?;
                    }
                }
            }
            changes.put(SUMMARY.to_vec(), summary);
        }
        _ => {}
    }
    Ok(changes)
}

fn corrupt(reason: &str) -> ProjectionError {
    ProjectionError::Corrupt { model: NAME, reason: reason.to_owned() }
}

fn sku_of(bytes: &[u8]) -> Result<Sku, ProjectionError> {
    std::str::from_utf8(bytes).ok().and_then(|text| Sku::parse(text).ok()).ok_or_else(|| corrupt("a key holds no sku"))
}

/// The dashboard's queries. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Dashboard {
    pub(crate) slot: std::sync::Arc<Slot>,
}

impl Dashboard {
    /// The sales figures with the default [`SalesQuery`].
    pub fn sales(&self) -> Result<Answer<SalesView>, ProjectionError> {
        self.sales_with(SalesQuery::default())
    }

    pub fn sales_with(&self, query: SalesQuery) -> Result<Answer<SalesView>, ProjectionError> {
        self.slot.read(|tree| {
            let summary: Summary = records::get(tree, NAME, SUMMARY)?.unwrap_or_default();
            let mut by_day = Vec::with_capacity(query.days.min(366));
            for entry in tree.range(DAY.to_vec()..prefix_end(DAY)).rev().take(query.days) {
                let (key, bytes) = entry?;
                let date = std::str::from_utf8(&key[DAY.len()..])
                    .ok()
                    .and_then(|text| NaiveDate::parse_from_str(text, DATE_FORMAT).ok())
                    .ok_or_else(|| corrupt("a day key holds no date"))?;
                let day: Day = records::decode(NAME, &bytes)?;
                by_day.push(DayView { date, orders: day.orders, revenue_cents: Cents::new(day.revenue_cents) });
            }
            by_day.reverse();
            let name_of = |sku: &Sku| -> Result<StoredProduct, ProjectionError> {
                records::get(tree, NAME, &product_key(sku))?.ok_or_else(|| corrupt("an indexed product is missing"))
            };
            let mut top_products = Vec::with_capacity(query.top.min(256));
            for entry in tree.range(BY_UNITS.to_vec()..prefix_end(BY_UNITS)).take(query.top) {
                let (key, _) = entry?;
                let sku = sku_of(key.get(BY_UNITS.len() + 8..).unwrap_or_default())?;
                let stored = name_of(&sku)?;
                top_products.push(TopProduct {
                    sku,
                    name: stored.name.to_domain(NAME)?,
                    units_sold: stored.units_sold,
                });
            }
            let mut low_stock = Vec::new();
            // The buckets that hold units below the threshold (none below 0).
            let buckets = query.low_stock_below.checked_sub(1).map_or(0, |highest| 1 + available_bucket(highest));
            for bucket in 0..buckets {
                if low_stock.len() >= query.low_stock_len_max {
                    break;
                }
                let start = key(BY_AVAILABLE, &[&[bucket]]);
                let end = prefix_end(&start);
                let mut in_bucket = Vec::new();
                // Buckets 0 and 1 hold one number of units each, so their sku
                // order is the list's order: read no more than the list takes
                // (a shop with many sold-out products reads 100 of them, not all).
                let needed = query.low_stock_len_max - low_stock.len();
                let read_max = if bucket <= 1 { needed } else { usize::MAX };
                for entry in tree.range(start..end).take(read_max) {
                    let (key, _) = entry?;
                    let sku = sku_of(key.get(BY_AVAILABLE.len() + 1..).unwrap_or_default())?;
                    let stored = name_of(&sku)?;
                    if stored.available < query.low_stock_below {
                        in_bucket.push((stored.available, sku, stored.name));
                    }
                }
                in_bucket.sort_unstable_by(|(units, sku, _), (other_units, other_sku, _)| {
                    (units, sku.as_str()).cmp(&(other_units, other_sku.as_str()))
                });
                for (available, sku, name) in in_bucket.into_iter().take(query.low_stock_len_max - low_stock.len()) {
                    low_stock.push(LowStock { sku, name: name.to_domain(NAME)?, available });
                }
            }
            Ok(SalesView {
                revenue_cents: Cents::new(summary.revenue_cents),
                orders_by_status: OrdersByStatus {
                    placed: summary.placed,
                    paid: summary.paid,
                    shipped: summary.shipped,
                    cancelled: summary.cancelled,
                },
                by_day,
                top_products,
                low_stock,
            })
        })
    }
}

crate::runtime::common_queries!(Dashboard);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_start_at_each_power_of_two() {
        let buckets: Vec<_> = [0, 1, 2, 3, 4, 7, 8, 1023, 1024, u32::MAX].map(available_bucket).to_vec();
        assert_eq!(buckets, vec![0, 1, 2, 2, 3, 3, 4, 10, 11, 32]);
    }

    /// A restock within a bucket leaves the index entries as they were, so the
    /// batch writes the product alone.
    #[test]
    fn the_index_moves_only_when_the_units_cross_a_power_of_two() {
        let entries = |available: u32| {
            let product = StoredProduct {
                name: SharedName::of(&ProductName::parse("Mug").expect("a name")),
                available,
                discontinued: false,
                units_sold: 0,
            };
            index(&key(PRODUCT, &[b"mug"]), &Value::Typed(Box::new(product))).expect("indexes")
        };
        assert_eq!(entries(1000), entries(1001));
        assert_eq!(entries(1000), entries(1023));
        assert_ne!(entries(1023), entries(1024));
        assert_eq!(entries(0), vec![key(BY_AVAILABLE, &[&[0], b"mug"])]);
    }
}
