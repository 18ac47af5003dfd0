//! Orders: per order its customer, lines, totals, status and the time of each
//! step; listed per customer and for everyone (admin).
//!
//! Decision: lists are newest first, ordered by the position of the order's
//! `OrderPlaced` (unique and never going back, unlike clocks or ids); the cursor
//! is that position of the last order seen, and the next page holds older orders.
//!
//! Keys: `o:<order id>` → order; `c:<customer id><placed position BE>` and
//! `a:<placed position BE>` → order id (the two listings).

use chrono::{DateTime, Utc};
use domain::{Cents, CustomerId, Event, OrderEvent, OrderId, OrderLine, OrderStatus};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ProjectionError;
use crate::records::{self, Changes, Envelope, Records, key};
use crate::runtime::{Answer, Page, Slot, clamp_limit};

pub(crate) const NAME: &str = "orders";
const ORDER: &[u8] = b"o:";
const BY_CUSTOMER: &[u8] = b"c:";
const ALL: &[u8] = b"a:";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Status {
    Placed,
    Paid,
    Shipped,
    Cancelled,
}

impl From<Status> for OrderStatus {
    fn from(status: Status) -> OrderStatus {
        match status {
            Status::Placed => OrderStatus::Placed,
            Status::Paid => OrderStatus::Paid,
            Status::Shipped => OrderStatus::Shipped,
            Status::Cancelled => OrderStatus::Cancelled,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredOrder {
    order_id: OrderId,
    customer_id: CustomerId,
    lines: Vec<OrderLine>,
    subtotal_cents: Cents,
    shipping_cents: Cents,
    total_cents: Cents,
    status: Status,
    placed_position: u64,
    placed_at: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
    shipped_at: Option<DateTime<Utc>>,
    cancelled_at: Option<DateTime<Utc>>,
}

/// One order as the orders model shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderView {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    /// In sku order, priced when the order was placed.
    pub lines: Vec<OrderLine>,
    pub subtotal_cents: Cents,
    pub shipping_cents: Cents,
    pub total_cents: Cents,
    pub status: OrderStatus,
    /// The position of its `OrderPlaced`: the listing's order and cursor.
    pub placed_position: u64,
    pub placed_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub shipped_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
}

impl OrderView {
    /// The order stream's version as of this view: one event placed it, and
    /// each of paying, shipping and cancelling is one more (each happens once).
    pub fn version(&self) -> u64 {
        1 + [self.paid_at, self.shipped_at, self.cancelled_at].iter().filter(|at| at.is_some()).count() as u64
    }
}

impl From<StoredOrder> for OrderView {
    fn from(stored: StoredOrder) -> OrderView {
        OrderView {
            order_id: stored.order_id,
            customer_id: stored.customer_id,
            lines: stored.lines,
            subtotal_cents: stored.subtotal_cents,
            shipping_cents: stored.shipping_cents,
            total_cents: stored.total_cents,
            status: stored.status.into(),
            placed_position: stored.placed_position,
            placed_at: stored.placed_at,
            paid_at: stored.paid_at,
            shipped_at: stored.shipped_at,
            cancelled_at: stored.cancelled_at,
        }
    }
}

fn order_key(order_id: OrderId) -> Vec<u8> {
    key(ORDER, &[order_id.get().as_bytes()])
}

fn customer_prefix(customer_id: CustomerId) -> Vec<u8> {
    key(BY_CUSTOMER, &[customer_id.get().as_bytes()])
}

/// The orders' changes for one event. Pure: reads the model's records, writes nothing.
pub fn apply(records: &dyn Records, envelope: &Envelope, event: &Event) -> Result<Changes, ProjectionError> {
    let mut changes = Changes::default();
    let Event::Order(event) = event else {
        return Ok(changes);
    };
    if let OrderEvent::Placed(placed) = event {
        let stored = StoredOrder {
            order_id: placed.order_id,
            customer_id: placed.customer_id,
            lines: placed.lines.clone(),
            subtotal_cents: placed.subtotal_cents,
            shipping_cents: placed.shipping_cents,
            total_cents: placed.total_cents,
            status: Status::Placed,
            placed_position: envelope.position,
            placed_at: envelope.recorded_at,
            paid_at: None,
            shipped_at: None,
            cancelled_at: None,
        };
        let order_id = placed.order_id.get();
        let position = envelope.position.to_be_bytes();
        changes.put(order_key(placed.order_id), stored);
        changes.put(key(&customer_prefix(placed.customer_id), &[&position]), order_id);
        changes.put(key(ALL, &[&position]), order_id);
        return Ok(changes);
    }
    let order_key = order_key(event.order_id());
    let Some(mut stored) = records::get::<StoredOrder>(records, NAME, &order_key)? else {
        return Ok(changes);
    };
    let at = Some(envelope.recorded_at);
    let next = match event {
        OrderEvent::Placed(_) => return Ok(changes),
        OrderEvent::Paid(_) => (Status::Paid, &mut stored.paid_at),
        OrderEvent::Shipped(_) => (Status::Shipped, &mut stored.shipped_at),
        OrderEvent::Cancelled(_) => (Status::Cancelled, &mut stored.cancelled_at),
    };
    // The domain emits only legal transitions; anything else leaves the order be.
    if OrderStatus::from(stored.status).can_become(next.0.into()) {
        *next.1 = at;
        stored.status = next.0;
        changes.put(order_key, stored);
    }
    Ok(changes)
}

/// The orders' queries. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Orders {
    pub(crate) slot: std::sync::Arc<Slot>,
}

impl Orders {
    /// One order, whoever it belongs to (the caller checks who may see it).
    pub fn get(&self, order_id: OrderId) -> Result<Answer<Option<OrderView>>, ProjectionError> {
        self.slot.read(|tree| Ok(records::get::<StoredOrder>(tree, NAME, &order_key(order_id))?.map(OrderView::from)))
    }

    /// The customer's orders, newest first, placed before the cursor `before` (the
    /// `placed_position` of the last order of the previous page).
    pub fn page_for(
        &self,
        customer_id: CustomerId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Answer<Page<OrderView, u64>>, ProjectionError> {
        self.page(&customer_prefix(customer_id), before, limit)
    }

    /// Every order, newest first, placed before the cursor `before`.
    pub fn page_all(&self, before: Option<u64>, limit: usize) -> Result<Answer<Page<OrderView, u64>>, ProjectionError> {
        self.page(ALL, before, limit)
    }

    fn page(
        &self,
        prefix: &[u8],
        before: Option<u64>,
        limit: usize,
    ) -> Result<Answer<Page<OrderView, u64>>, ProjectionError> {
        let limit = clamp_limit(limit);
        self.slot.read(|tree| {
            let start = prefix.to_vec();
            let end = key(prefix, &[&before.unwrap_or(u64::MAX).to_be_bytes()]);
            let mut items = Vec::with_capacity(limit.min(256));
            let mut more = false;
            for entry in tree.range(start..end).rev() {
                let (_, bytes) = entry?;
                if items.len() == limit {
                    more = true;
                    break;
                }
                let order_id = OrderId::new(records::decode::<Uuid>(NAME, &bytes)?);
                let stored: StoredOrder = records::get(tree, NAME, &order_key(order_id))?.ok_or_else(|| {
                    ProjectionError::Corrupt { model: NAME, reason: format!("listed order {order_id} is missing") }
                })?;
                items.push(OrderView::from(stored));
            }
            let next = if more { items.last().map(|item: &OrderView| item.placed_position) } else { None };
            Ok(Page { items, next })
        })
    }
}

crate::runtime::common_queries!(Orders);
