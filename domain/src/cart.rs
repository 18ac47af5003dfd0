//! Cart: one open cart per customer (stream `cart-<customer uuid>`), holding skus
//! and quantities only: prices are taken at checkout, so [`Totals`] need a price
//! lookup passed in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::event::Event;
use crate::product::Product;
use crate::value::{Cents, CustomerId, OrderId, PriceCents, QUANTITY_MAX, Quantity, Sku};

/// The most distinct lines a cart holds.
pub const CART_LINES_MAX: usize = 50;
/// Shipping charged on a non-empty order below [`FREE_SHIPPING_FROM_CENTS`].
pub const SHIPPING_CENTS: Cents = Cents::new(499);
/// The subtotal from which shipping is free.
pub const FREE_SHIPPING_FROM_CENTS: Cents = Cents::new(5000);

/// Units of a product went into the cart (added to the line if there is one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartItemAdded {
    pub customer_id: CustomerId,
    pub sku: Sku,
    pub quantity: Quantity,
}

/// A whole line left the cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartItemRemoved {
    pub customer_id: CustomerId,
    pub sku: Sku,
}

/// The cart became an order; the cart is empty again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartCheckedOut {
    pub customer_id: CustomerId,
    pub order_id: OrderId,
}

/// The events of a cart stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CartEvent {
    ItemAdded(CartItemAdded),
    ItemRemoved(CartItemRemoved),
    CheckedOut(CartCheckedOut),
}

impl CartEvent {
    /// The customer whose cart stream this event belongs to.
    pub fn customer_id(&self) -> CustomerId {
        match self {
            CartEvent::ItemAdded(event) => event.customer_id,
            CartEvent::ItemRemoved(event) => event.customer_id,
            CartEvent::CheckedOut(event) => event.customer_id,
        }
    }
}

/// A cart's state: its lines by sku (so in sku order). `Cart::default()`, the
/// empty cart, is the state before the first event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cart {
    lines: BTreeMap<Sku, Quantity>,
}

impl Cart {
    pub fn lines(&self) -> &BTreeMap<Sku, Quantity> {
        &self.lines
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The cart's totals at the prices `price_of` gives, or `ProductNotFound` for
    /// the first sku it has no price for.
    pub fn totals(&self, price_of: impl Fn(&Sku) -> Option<PriceCents>) -> Result<Totals, DomainError> {
        let priced = self
            .lines
            .iter()
            .map(|(sku, quantity)| {
                price_of(sku)
                    .map(|price| (*quantity, price))
                    .ok_or_else(|| DomainError::ProductNotFound { sku: sku.clone() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Totals::of_lines(priced))
    }
}

/// Subtotal, shipping and total of some priced lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub subtotal_cents: Cents,
    pub shipping_cents: Cents,
    pub total_cents: Cents,
}

impl Totals {
    /// `subtotal` = Σ quantity × unit price; `shipping` = 499 if 0 < subtotal < 5000,
    /// else 0; `total` = subtotal + shipping.
    pub fn of_lines(lines: impl IntoIterator<Item = (Quantity, PriceCents)>) -> Totals {
        let subtotal_cents =
            lines.into_iter().fold(Cents::ZERO, |sum, (quantity, price)| sum.saturating_add(price.times(quantity)));
        let shipping_cents = shipping_cents(subtotal_cents);
        Totals { subtotal_cents, shipping_cents, total_cents: subtotal_cents.saturating_add(shipping_cents) }
    }
}

/// Shipping for a subtotal: 499 if 0 < subtotal < 5000, else 0.
pub fn shipping_cents(subtotal_cents: Cents) -> Cents {
    if Cents::ZERO < subtotal_cents && subtotal_cents < FREE_SHIPPING_FROM_CENTS { SHIPPING_CENTS } else { Cents::ZERO }
}

/// Put `quantity` units of `sku` into the customer's cart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCartItem {
    pub customer_id: CustomerId,
    pub sku: Sku,
    pub quantity: Quantity,
}

/// Take the whole line of `sku` out of the customer's cart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveCartItem {
    pub customer_id: CustomerId,
    pub sku: Sku,
}

/// Decides adding to the cart over the cart and the state of the product named
/// by `command.sku`: the product must exist and be active; the line's resulting
/// quantity must stay ≤ 99 and a new line must fit in 50. Stock is not checked
/// here but at checkout. Decision: both limits depend on the cart's state, so
/// they are conflicts (409), while a quantity outside 1–99 in the command itself
/// is a validation error (422).
pub fn add_item(cart: &Cart, product: &Product, command: &AddCartItem) -> Result<Vec<Event>, DomainError> {
    product.sellable(&command.sku)?;
    match cart.lines.get(&command.sku) {
        Some(held) => {
            let quantity = held.get() + command.quantity.get();
            if quantity > QUANTITY_MAX {
                return Err(DomainError::LineQuantityExceeded {
                    sku: command.sku.clone(),
                    quantity,
                    quantity_max: QUANTITY_MAX,
                });
            }
        }
        None if cart.lines.len() >= CART_LINES_MAX => {
            return Err(DomainError::CartFull { lines_max: CART_LINES_MAX });
        }
        None => {}
    }
    Ok(vec![
        CartItemAdded { customer_id: command.customer_id, sku: command.sku.clone(), quantity: command.quantity }.into(),
    ])
}

/// Decides removing a line: it must be in the cart.
pub fn remove_item(cart: &Cart, command: &RemoveCartItem) -> Result<Vec<Event>, DomainError> {
    if !cart.lines.contains_key(&command.sku) {
        return Err(DomainError::CartItemNotFound { sku: command.sku.clone() });
    }
    Ok(vec![CartItemRemoved { customer_id: command.customer_id, sku: command.sku.clone() }.into()])
}

/// Applies one event. A line's quantity saturates at 99, which `decide` never
/// exceeds; checking out empties the cart.
pub fn evolve(mut cart: Cart, event: &CartEvent) -> Cart {
    match event {
        CartEvent::ItemAdded(added) => {
            let quantity = match cart.lines.get(&added.sku) {
                Some(held) => Quantity::new(held.get() + added.quantity.get()).unwrap_or(Quantity::MAX),
                None => added.quantity,
            };
            cart.lines.insert(added.sku.clone(), quantity);
        }
        CartEvent::ItemRemoved(removed) => {
            cart.lines.remove(&removed.sku);
        }
        CartEvent::CheckedOut(_) => cart.lines.clear(),
    }
    cart
}
