//! Order: `Placed → Paid → Shipped`, or `Cancelled` from Placed or Paid (stream
//! `order-<uuid>`). Orders are placed by [`crate::checkout`]; cancelling releases
//! their stock on every product stream.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::event::Event;
use crate::product::StockReleased;
use crate::value::{Cents, CustomerId, OrderId, PriceCents, Quantity, Sku};

/// One line of an order, priced when the order was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub sku: Sku,
    pub quantity: Quantity,
    pub unit_price_cents: PriceCents,
}

impl OrderLine {
    pub fn line_total_cents(&self) -> Cents {
        self.unit_price_cents.times(self.quantity)
    }
}

/// A customer checked out a cart. Lines are in sku order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub lines: Vec<OrderLine>,
    pub subtotal_cents: Cents,
    pub shipping_cents: Cents,
    pub total_cents: Cents,
}

/// The order was paid in full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPaid {
    pub order_id: OrderId,
    pub amount_cents: Cents,
}

/// The order was cancelled; its stock is released by `StockReleased` events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order_id: OrderId,
}

/// The order left the warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderShipped {
    pub order_id: OrderId,
}

/// The events of an order stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    Placed(OrderPlaced),
    Paid(OrderPaid),
    Cancelled(OrderCancelled),
    Shipped(OrderShipped),
}

impl OrderEvent {
    /// The order whose stream this event belongs to.
    pub fn order_id(&self) -> OrderId {
        match self {
            OrderEvent::Placed(event) => event.order_id,
            OrderEvent::Paid(event) => event.order_id,
            OrderEvent::Cancelled(event) => event.order_id,
            OrderEvent::Shipped(event) => event.order_id,
        }
    }
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OrderStatus {
    Placed,
    Paid,
    Shipped,
    Cancelled,
}

impl OrderStatus {
    /// The legal transitions: placed → paid → shipped, and placed or paid → cancelled.
    pub fn can_become(self, next: OrderStatus) -> bool {
        matches!(
            (self, next),
            (OrderStatus::Placed, OrderStatus::Paid)
                | (OrderStatus::Paid, OrderStatus::Shipped)
                | (OrderStatus::Placed | OrderStatus::Paid, OrderStatus::Cancelled)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an order is, whatever its status. `customer_id` lets the shell check
/// that a customer pays or cancels only their own orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderInfo {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub lines: Vec<OrderLine>,
    pub subtotal_cents: Cents,
    pub shipping_cents: Cents,
    pub total_cents: Cents,
}

/// An order's state, one variant per status. `Order::default()` is the state
/// before the first event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Order {
    #[default]
    Absent,
    Placed(OrderInfo),
    Paid(OrderInfo),
    Shipped(OrderInfo),
    Cancelled(OrderInfo),
}

impl Order {
    pub fn status(&self) -> Option<OrderStatus> {
        match self {
            Order::Absent => None,
            Order::Placed(_) => Some(OrderStatus::Placed),
            Order::Paid(_) => Some(OrderStatus::Paid),
            Order::Shipped(_) => Some(OrderStatus::Shipped),
            Order::Cancelled(_) => Some(OrderStatus::Cancelled),
        }
    }

    pub fn info(&self) -> Option<&OrderInfo> {
        match self {
            Order::Absent => None,
            Order::Placed(info) | Order::Paid(info) | Order::Shipped(info) | Order::Cancelled(info) => Some(info),
        }
    }
}

/// What can happen to a placed order. Who may do it (the owner pays and
/// cancels, an admin ships) is the shell's concern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    /// Pay the whole total: `amount_cents` must equal it.
    Pay {
        order_id: OrderId,
        amount_cents: Cents,
    },
    Cancel {
        order_id: OrderId,
    },
    Ship {
        order_id: OrderId,
    },
}

impl OrderCommand {
    /// The order whose stream the command goes to.
    pub fn order_id(&self) -> OrderId {
        match self {
            OrderCommand::Pay { order_id, .. }
            | OrderCommand::Cancel { order_id }
            | OrderCommand::Ship { order_id } => *order_id,
        }
    }

    /// The status the command would move the order to.
    pub fn target(&self) -> OrderStatus {
        match self {
            OrderCommand::Pay { .. } => OrderStatus::Paid,
            OrderCommand::Cancel { .. } => OrderStatus::Cancelled,
            OrderCommand::Ship { .. } => OrderStatus::Shipped,
        }
    }
}

/// Decides an order command. A transition the status does not allow is refused
/// naming both statuses (before any amount check). Cancel yields `OrderCancelled`
/// and one `StockReleased` per line, on that line's product stream.
pub fn decide(order: &Order, command: &OrderCommand) -> Result<Vec<Event>, DomainError> {
    let order_id = command.order_id();
    let (Some(from), Some(info)) = (order.status(), order.info()) else {
        return Err(DomainError::OrderNotFound { order_id });
    };
    let to = command.target();
    if !from.can_become(to) {
        return Err(DomainError::IllegalTransition { order_id, from, to });
    }
    match command {
        OrderCommand::Pay { amount_cents, .. } => {
            if *amount_cents != info.total_cents {
                return Err(DomainError::WrongAmount { order_id, expected: info.total_cents, given: *amount_cents });
            }
            Ok(vec![OrderPaid { order_id, amount_cents: *amount_cents }.into()])
        }
        OrderCommand::Cancel { .. } => {
            let released = info
                .lines
                .iter()
                .map(|line| Event::from(StockReleased { sku: line.sku.clone(), order_id, quantity: line.quantity }));
            Ok(std::iter::once(OrderCancelled { order_id }.into()).chain(released).collect())
        }
        OrderCommand::Ship { .. } => Ok(vec![OrderShipped { order_id }.into()]),
    }
}

/// What forgetting a customer does to their orders: each one still placed
/// (unpaid) is cancelled, its stock released, as [`decide`] cancels it. Nobody
/// could pay or cancel it any more (the customer's tokens are refused, and only
/// the customer may cancel), so it would hold its stock for good. A paid order
/// stays: the shop has the money and ships it.
pub fn cancel_unpaid<'a>(orders: impl IntoIterator<Item = &'a Order>) -> Vec<Event> {
    let mut events = Vec::new();
    for order in orders {
        if let Order::Placed(info) = order {
            // A placed order can always be cancelled.
            events.extend(decide(order, &OrderCommand::Cancel { order_id: info.order_id }).unwrap_or_default());
        }
    }
    events
}

/// Applies one event. Total: an event that does not fit the status (which
/// `decide` never emits) leaves the state unchanged.
pub fn evolve(order: Order, event: &OrderEvent) -> Order {
    match (order, event) {
        (Order::Absent, OrderEvent::Placed(placed)) => Order::Placed(OrderInfo {
            order_id: placed.order_id,
            customer_id: placed.customer_id,
            lines: placed.lines.clone(),
            subtotal_cents: placed.subtotal_cents,
            shipping_cents: placed.shipping_cents,
            total_cents: placed.total_cents,
        }),
        (Order::Placed(info), OrderEvent::Paid(_)) => Order::Paid(info),
        (Order::Paid(info), OrderEvent::Shipped(_)) => Order::Shipped(info),
        (Order::Placed(info) | Order::Paid(info), OrderEvent::Cancelled(_)) => Order::Cancelled(info),
        (order, _) => order,
    }
}
