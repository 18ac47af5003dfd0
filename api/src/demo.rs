//! `shoplog serve --demo`: seeds an empty log with a small shop (a catalog with a
//! couple of products low on stock, three customers, and orders in every state) so
//! that a newcomer sees a live dashboard at once. Everything goes through
//! [`commands::CommandService`], so the shop's rules apply as to any request; the
//! events carry the actor `demo`. A log that holds anything else is left as it is.
//!
//! Every step carries an idempotency key of its own (`demo-step-<n>`), so a start
//! killed while seeding is finished by the next `--demo` start: the steps already
//! written answer with their first outcome and write nothing, the rest are
//! written. It does so only while every event of the log is the demo's and the
//! first step's key is there: a demo imported (an export carries no
//! idempotency keys) is left as it is, whole or not; one restored from a backup
//! (which carries them) is finished as the log backed up would have been.

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
    /// Whether this finished a seeding that a stop had cut short.
    pub finished: bool,
}

impl fmt::Display for Seeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "demo: {} {} products, {} customers ({}; password \"{PASSWORD}\") and {} orders \
             ({} placed, {} paid, {} shipped, {} cancelled), up to log position {}",
            if self.finished { "finished the seeding a stop had cut short:" } else { "seeded" },
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

/// The most events a log may hold to be taken for a demo seeding cut short
/// (the whole demo writes under a hundred).
const DEMO_EVENTS_MAX: u64 = 1_000;

/// Seed the demo shop into an empty log, or finish a seeding a stop cut short
/// (every event of the log the demo's); `Ok(None)` (and nothing written) when the
/// log holds anything else, or the whole demo already.
pub async fn seed(service: &CommandService) -> anyhow::Result<Option<Seeded>> {
    let head = service.log().head();
    let finishing = head != 0;
    if finishing && !(only_demo_events(service, head)? && first_step_keyed(service).await?) {
        return Ok(None);
    }
    let seeded = seed_steps(service, usize::MAX).await.with_context(|| match finishing {
        true => {
            "the log holds a demo seeding cut short that cannot be finished (remove the data directory to \
                 seed it again)"
        }
        false => "the demo seeding failed",
    })?;
    match seeded {
        Some(mut seeded) if seeded.head != head || !finishing => {
            seeded.finished = finishing;
            Ok(Some(seeded))
        }
        // The whole demo was there: every step answered with its first outcome.
        _ => Ok(None),
    }
}

/// Whether the log's `head` events were all written by the demo.
fn only_demo_events(service: &CommandService, head: u64) -> anyhow::Result<bool> {
    if head > DEMO_EVENTS_MAX {
        return Ok(false);
    }
    let events = service.log().read_all(1, head as usize).context("demo: cannot read the log")?;
    Ok(events.iter().all(|event| event.actor == ACTOR))
}

/// Whether the log holds the demo's first step under its key: a seeding cut
/// short that the steps' keys can finish. A demo imported from an export has
/// its events without their keys (an export carries no idempotency keys), and
/// an older binary's had none: those are left as they are.
async fn first_step_keyed(service: &CommandService) -> anyhow::Result<bool> {
    let ctx = step_context(&CommandContext::new(ACTOR), &mut 0);
    let first = service.first_result(&ctx).await;
    Ok(first.context("demo: cannot read the log's idempotency keys")?.is_some())
}

/// The context of the demo's step `*step` (counted on): repeatable under a key
/// of its own.
fn step_context(ctx: &CommandContext, step: &mut usize) -> CommandContext {
    let key = format!("demo-step-{step}");
    *step += 1;
    let hash = *blake3::hash(key.as_bytes()).as_bytes();
    ctx.clone().with_idempotency(key, hash)
}

/// The demo's first `steps` steps (all of them with `usize::MAX`; fewer leave
/// what a start killed while seeding leaves, for tests), each under its own
/// idempotency key; `None` when it stopped short of the whole demo.
pub async fn seed_steps(service: &CommandService, steps: usize) -> anyhow::Result<Option<Seeded>> {
    let ctx = CommandContext::new(ACTOR);
    let mut seeded = Seeded::default();
    let mut step = 0;
    // The next step's context, or `None` once `steps` are done.
    macro_rules! next {
        () => {{
            if step >= steps {
                return Ok(None);
            }
            step_context(&ctx, &mut step)
        }};
    }

    for (sku, name, price_cents, stock) in PRODUCTS {
        let (sku, name) = (Sku::parse(sku)?, ProductName::parse(name)?);
        let (price, stock) = (PriceCents::new(price_cents)?, Stock::new(stock)?);
        service
            .create_product(&next!(), sku.clone(), name, price, Some(stock), None)
            .await
            .with_context(|| format!("demo: cannot create product {}", sku.as_str()))?;
        seeded.products += 1;
    }

    let mut customers: Vec<CustomerId> = Vec::new();
    for (email, name) in CUSTOMERS {
        let outcome = service
            .register_customer(
                &next!(),
                Email::parse(email)?,
                CustomerName::parse(name)?,
                Password::parse(PASSWORD)?,
                None,
            )
            .await
            .with_context(|| format!("demo: cannot register {email}"))?;
        customers.push(outcome.customer_id().context("demo: a registration wrote no customer")?);
        seeded.customers.push(email.to_owned());
    }

    for (customer_index, lines, fate) in ORDERS {
        let customer = customers[customer_index];
        for (sku, quantity) in lines {
            service
                .add_cart_item(&next!(), customer, Sku::parse(sku)?, Quantity::new(*quantity)?, None)
                .await
                .with_context(|| format!("demo: cannot add {sku} to a cart"))?;
        }
        let outcome = service.checkout(&next!(), customer, None).await.context("demo: cannot check out")?;
        let placed = outcome.order_placed().context("demo: a checkout placed no order")?;
        let (order, total): (OrderId, Cents) = (placed.order_id, placed.total_cents);
        match fate {
            Fate::Placed => seeded.placed += 1,
            Fate::Cancelled => {
                service.cancel_order(&next!(), customer, order, None).await.context("demo: cannot cancel an order")?;
                seeded.cancelled += 1;
            }
            Fate::Paid | Fate::Shipped => {
                service.pay_order(&next!(), customer, order, total, None).await.context("demo: cannot pay an order")?;
                if fate == Fate::Shipped {
                    service.ship_order(&next!(), order, None).await.context("demo: cannot ship an order")?;
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
