//! Random shop traffic through the real command side, for the projection tests
//! and the `projecting_appender` child: products, carts, checkouts, payments,
//! shipping, cancels, and now and then a customer registered and forgotten.

use commands::{CommandContext, CommandService};
use domain::{
    Cents, CustomerId, CustomerName, Email, OrderId, Password, PriceCents, ProductName, Quantity, RestockQuantity, Sku,
    Stock,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

const ORDERS_KEPT: usize = 64;

/// A random shopper. `people` turns on registrations and forgetting (slow: argon2).
pub struct RandomShop {
    service: CommandService,
    rng: StdRng,
    people: bool,
    skus: Vec<Sku>,
    customers: Vec<CustomerId>,
    registered: Vec<CustomerId>,
    orders: Vec<(CustomerId, OrderId, Cents)>,
}

impl RandomShop {
    pub fn new(service: CommandService, seed: u64, people: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let customers = (0..12).map(|_| CustomerId::new(Uuid::from_u128(rng.random()))).collect();
        RandomShop { service, rng, people, skus: Vec::new(), customers, registered: Vec::new(), orders: Vec::new() }
    }

    fn admin() -> CommandContext {
        CommandContext::new("admin")
    }

    fn pick_sku(&mut self) -> Option<Sku> {
        (!self.skus.is_empty()).then(|| self.skus[self.rng.random_range(0..self.skus.len())].clone())
    }

    fn pick_customer(&mut self) -> CustomerId {
        self.customers[self.rng.random_range(0..self.customers.len())]
    }

    /// One random command; the position it reached if the shop took it.
    pub async fn step(&mut self) -> Option<u64> {
        let roll = self.rng.random_range(0..1000);
        let admin = Self::admin();
        let outcome = match roll {
            _ if self.skus.len() < 6 || roll < 20 => {
                let sku = Sku::parse(&format!("p{:03}", self.rng.random_range(0..400))).ok()?;
                let price = PriceCents::new(self.rng.random_range(100..4000)).ok()?;
                let stock = Stock::new(self.rng.random_range(0..30)).ok()?;
                let name = ProductName::parse(&format!("Product {sku}")).ok()?;
                // After a restart the sku may exist already: then it is just known.
                let created = self.service.create_product(&admin, sku.clone(), name, price, Some(stock), None).await;
                self.skus.push(sku);
                created
            }
            20..70 => {
                let sku = self.pick_sku()?;
                let quantity = RestockQuantity::new(self.rng.random_range(1..20)).ok()?;
                self.service.restock(&admin, sku, quantity, None).await
            }
            70..110 => {
                let sku = self.pick_sku()?;
                let price = PriceCents::new(self.rng.random_range(100..4000)).ok()?;
                self.service.change_price(&admin, sku, price, None).await
            }
            110..118 => {
                let sku = self.pick_sku()?;
                self.service.discontinue(&admin, sku, None).await
            }
            118..124 if self.people => {
                let id = self.rng.random::<u64>();
                let email = Email::parse(&format!("shopper{id}@example.com")).ok()?;
                let name = CustomerName::parse("A Shopper").ok()?;
                let password = Password::parse("correct horse battery").ok()?;
                let outcome = self.service.register_customer(&admin, email, name, password, None).await;
                if let Some(customer_id) = outcome.as_ref().ok().and_then(|outcome| outcome.customer_id()) {
                    self.customers.push(customer_id);
                    self.registered.push(customer_id);
                }
                outcome
            }
            124..128 if self.people && !self.registered.is_empty() => {
                let customer_id = self.registered.remove(0);
                self.service.forget_customer(&admin, customer_id, None).await
            }
            128..500 => {
                let (customer_id, sku) = (self.pick_customer(), self.pick_sku()?);
                let quantity = Quantity::new(self.rng.random_range(1..4)).ok()?;
                let ctx = CommandContext::new(format!("customer:{customer_id}"));
                self.service.add_cart_item(&ctx, customer_id, sku, quantity, None).await
            }
            500..550 => {
                let (customer_id, sku) = (self.pick_customer(), self.pick_sku()?);
                let ctx = CommandContext::new(format!("customer:{customer_id}"));
                self.service.remove_cart_item(&ctx, customer_id, sku, None).await
            }
            550..700 => {
                let customer_id = self.pick_customer();
                let ctx = CommandContext::new(format!("customer:{customer_id}"));
                let outcome = self.service.checkout(&ctx, customer_id, None).await;
                if let Some(placed) = outcome.as_ref().ok().and_then(|outcome| outcome.order_placed()) {
                    self.orders.push((customer_id, placed.order_id, placed.total_cents));
                    if self.orders.len() > ORDERS_KEPT {
                        self.orders.remove(0);
                    }
                }
                outcome
            }
            _ if self.orders.is_empty() => return None,
            700..850 => {
                let (customer_id, order_id, total) = self.orders[self.rng.random_range(0..self.orders.len())];
                let ctx = CommandContext::new(format!("customer:{customer_id}"));
                self.service.pay_order(&ctx, customer_id, order_id, total, None).await
            }
            850..930 => {
                let (_, order_id, _) = self.orders[self.rng.random_range(0..self.orders.len())];
                self.service.ship_order(&admin, order_id, None).await
            }
            _ => {
                let (customer_id, order_id, _) = self.orders[self.rng.random_range(0..self.orders.len())];
                let ctx = CommandContext::new(format!("customer:{customer_id}"));
                self.service.cancel_order(&ctx, customer_id, order_id, None).await
            }
        };
        outcome.ok().map(|outcome| outcome.position())
    }
}
