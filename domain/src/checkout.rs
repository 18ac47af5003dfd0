//! Checkout: one decision over a cart and every product in it, yielding events
//! for the order, each product and the cart, which the shell appends atomically.

use std::collections::BTreeMap;

use crate::cart::{Cart, CartCheckedOut, Totals};
use crate::customer::Customer;
use crate::error::DomainError;
use crate::event::Event;
use crate::order::{OrderLine, OrderPlaced};
use crate::product::{Product, StockReserved};
use crate::value::{CustomerId, OrderId, Sku};

/// Turn the customer's cart into an order. The shell draws `order_id` and appends
/// the order stream with `NoStream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
}

/// Whether the customer may check out: not once forgotten (a checkout that
/// raced the forget would place an order nobody can pay or cancel). A
/// forgotten customer no longer exists for the shop: `CustomerNotFound`. Who
/// the customer is, the shell has checked (their token); a forget is what can
/// change after that, so the shell appends the checkout on condition of the
/// customer stream's version, and a forget appended meanwhile makes it decide
/// again.
pub fn check_customer(customer: &Customer, customer_id: CustomerId) -> Result<(), DomainError> {
    match customer {
        Customer::Forgotten { .. } => Err(DomainError::CustomerNotFound { customer_id }),
        Customer::Unregistered | Customer::Registered(_) => Ok(()),
    }
}

/// Decides a checkout over the cart and the state of each product in it
/// (`products` must hold every sku of the cart; others are ignored).
///
/// Refused, in this order: an empty cart (`EmptyCart`, a validation error); a sku
/// with no product (`ProductNotFound`, the first in sku order); discontinued
/// products (`Discontinued`, naming all); too little stock (`OutOfStock`, naming
/// every short sku, sorted). Otherwise yields `OrderPlaced` (lines in sku order at
/// the products' current prices, totals per [`Totals::of_lines`]), one
/// `StockReserved` per line, then `CartCheckedOut`.
pub fn decide(cart: &Cart, products: &BTreeMap<Sku, Product>, command: &Checkout) -> Result<Vec<Event>, DomainError> {
    let Checkout { order_id, customer_id } = *command;
    if cart.is_empty() {
        return Err(DomainError::EmptyCart { customer_id });
    }
    let mut lines = Vec::with_capacity(cart.lines().len());
    let mut discontinued = Vec::new();
    let mut out_of_stock = Vec::new();
    for (sku, quantity) in cart.lines() {
        match products.get(sku) {
            None | Some(Product::Absent) => return Err(DomainError::ProductNotFound { sku: sku.clone() }),
            Some(Product::Discontinued(_)) => discontinued.push(sku.clone()),
            Some(Product::Active(info)) => {
                if info.stock < quantity.get() {
                    out_of_stock.push(sku.clone());
                }
                lines.push(OrderLine { sku: sku.clone(), quantity: *quantity, unit_price_cents: info.price_cents });
            }
        }
    }
    // The cart's lines iterate in sku order, so both lists are sorted already.
    if !discontinued.is_empty() {
        return Err(DomainError::Discontinued { skus: discontinued });
    }
    if !out_of_stock.is_empty() {
        return Err(DomainError::OutOfStock { skus: out_of_stock });
    }

    let totals = Totals::of_lines(lines.iter().map(|line| (line.quantity, line.unit_price_cents)));
    let reservations: Vec<Event> = lines
        .iter()
        .map(|line| StockReserved { sku: line.sku.clone(), order_id, quantity: line.quantity }.into())
        .collect();
    let placed = OrderPlaced {
        order_id,
        customer_id,
        lines,
        subtotal_cents: totals.subtotal_cents,
        shipping_cents: totals.shipping_cents,
        total_cents: totals.total_cents,
    };
    Ok(std::iter::once(placed.into())
        .chain(reservations)
        .chain(std::iter::once(CartCheckedOut { customer_id, order_id }.into()))
        .collect())
}
