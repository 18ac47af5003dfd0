//! `shoplog serve --demo`: seeds an empty log with a small shop (a catalog with a
//! couple of products low on stock, three customers, and orders in every state) so
//! that a newcomer sees a live dashboard at once. Everything goes through
//! [`commands::CommandService`], so the shop's rules apply as to any request; the
//! events carry the actor `demo`. A log that holds anything is left as it is.

use std::fmt;

use anyhow::Context;
use commands::{CommandContext, CommandService};
use domain::{
    Cents, CustomerId, CustomerName, Email, OrderId, Password, PriceCents, ProductName, Quantity, Sku, Stock,
};

/// The actor recorded in every seeded event.
const ACTOR: &str = "demo";

/// The password of every seeded customer (they can log in and shop).
pub const PASSWORD: &str = "correct horse";

/// `(sku, name, price_cents, initial_stock)`; the fountain pen and the map poster
/// end up below the dashboard's low-stock threshold.
const PRODUCTS: [(&str, &str, i64, u32); 8] = [
    ("mug-blue", "Blue mug", 1299, 40),
    ("mug-red", "Red mug", 1299, 30),
    ("tee-black-m", "Black T-shirt (M)", 2499, 25),
    ("tote-canvas", "Canvas tote bag", 1850, 20),
    ("notebook-a5", "A5 notebook", 899, 60),
    ("pen-fountain", "Fountain pen", 4500, 6),
    ("poster-map", "Map poster", 1500, 3),
    ("sticker-pack", "Sticker pack", 399, 100),
];

/// `(email, name)`.
const CUSTOMERS: [(&str, &str); 3] =
    [("ada@example.com", "Ada Lovelace"), ("grace@example.com", "Grace Hopper"), ("alan@example.com", "Alan Turing")];

/// Where a seeded order is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Placed,
    Paid,
    Shipped,
    Cancelled,
}

/// An order's lines: `(sku, quantity)`.
type Lines = &'static [(&'static str, u32)];

/// `(customer index, lines, fate)`.
const ORDERS: [(usize, Lines, Fate); 6] = [
    (0, &[("mug-blue", 2), ("notebook-a5", 1)], Fate::Shipped),
    (1, &[("pen-fountain", 2), ("sticker-pack", 3)], Fate::Paid),
    (2, &[("poster-map", 1), ("tote-canvas", 1)], Fate::Placed),
    (0, &[("tee-black-m", 1)], Fate::Cancelled),
    (1, &[("mug-red", 1), ("notebook-a5", 2)], Fate::Shipped),
    (2, &[("sticker-pack", 5)], Fate::Paid),
];

/// What [`seed`] wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seeded {
    pub products: usize,
    pub customers: Vec<String>,
    pub placed: usize,
    pub paid: usize,
    pub shipped: usize,
    pub cancelled: usize,
    /// The log's head afterwards.
    pub head: u64,
}

impl fmt::Display for Seeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "demo: seeded {} products, {} customers ({}; password \"{PASSWORD}\") and {} orders \
             ({} placed, {} paid, {} shipped, {} cancelled), up to log position {}",
            self.products,
            self.customers.len(),
            self.customers.join(", "),
            self.placed + self.paid + self.shipped + self.cancelled,
            self.placed,
            self.paid,
            self.shipped,
            self.cancelled,
            self.head,
        )
    }
}

/// Seed the demo shop into an empty log; `Ok(None)` (and nothing written) when the
/// log already holds events.
pub async fn seed(service: &CommandService) -> anyhow::Result<Option<Seeded>> {
    if service.log().head() != 0 {
        return Ok(None);
    }
    let ctx = CommandContext::new(ACTOR);
    let mut seeded = Seeded::default();

    for (sku, name, price_cents, stock) in PRODUCTS {
        let (sku, name) = (Sku::parse(sku)?, ProductName::parse(name)?);
        let (price, stock) = (PriceCents::new(price_cents)?, Stock::new(stock)?);
        service
            .create_product(&ctx, sku.clone(), name, price, Some(stock), None)
            .await
            .with_context(|| format!("demo: cannot create product {}", sku.as_str()))?;
        seeded.products += 1;
    }

    let mut customers: Vec<CustomerId> = Vec::new();
    for (email, name) in CUSTOMERS {
        let outcome = service
            .register_customer(&ctx, Email::parse(email)?, CustomerName::parse(name)?, Password::parse(PASSWORD)?, None)
            .await
            .with_context(|| format!("demo: cannot register {email}"))?;
        customers.push(outcome.customer_id().context("demo: a registration wrote no customer")?);
        seeded.customers.push(email.to_owned());
    }

    for (customer_index, lines, fate) in ORDERS {
        let customer = customers[customer_index];
        for (sku, quantity) in lines {
            service
                .add_cart_item(&ctx, customer, Sku::parse(sku)?, Quantity::new(*quantity)?, None)
                .await
                .with_context(|| format!("demo: cannot add {sku} to a cart"))?;
        }
        let outcome = service.checkout(&ctx, customer, None).await.context("demo: cannot check out")?;
        let placed = outcome.order_placed().context("demo: a checkout placed no order")?;
        let (order, total): (OrderId, Cents) = (placed.order_id, placed.total_cents);
        match fate {
            Fate::Placed => seeded.placed += 1,
            Fate::Cancelled => {
                service.cancel_order(&ctx, customer, order, None).await.context("demo: cannot cancel an order")?;
                seeded.cancelled += 1;
            }
            Fate::Paid | Fate::Shipped => {
                service.pay_order(&ctx, customer, order, total, None).await.context("demo: cannot pay an order")?;
                if fate == Fate::Shipped {
                    service.ship_order(&ctx, order, None).await.context("demo: cannot ship an order")?;
                    seeded.shipped += 1;
                } else {
                    seeded.paid += 1;
                }
            }
        }
    }
    seeded.head = service.log().head();
    Ok(Some(seeded))
}
