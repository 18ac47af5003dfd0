//! The whole shop in memory: every stream's state, and the routing a shell does
//! (which states a command needs, which stream an event folds into). Tests use it
//! as the one decider behind given/when/then and the property tests.

use std::collections::BTreeMap;

use super::spec::Decider;
use crate::{
    AddCartItem, Cart, Checkout, Customer, CustomerCommand, CustomerId, DomainError, EmailClaim, EmailKey, Event,
    Order, OrderCommand, OrderId, Product, ProductCommand, RemoveCartItem, Sku, StreamId, cart, checkout, customer,
    email_claim, order, product,
};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Shop {
    pub(crate) products: BTreeMap<Sku, Product>,
    pub(crate) customers: BTreeMap<CustomerId, Customer>,
    pub(crate) claims: BTreeMap<EmailKey, EmailClaim>,
    pub(crate) carts: BTreeMap<CustomerId, Cart>,
    pub(crate) orders: BTreeMap<OrderId, Order>,
}

/// Any command of the shop.
#[derive(Debug, Clone)]
pub(crate) enum Command {
    Product(ProductCommand),
    Customer(CustomerCommand),
    AddItem(AddCartItem),
    RemoveItem(RemoveCartItem),
    Checkout(Checkout),
    Order(OrderCommand),
}

impl Shop {
    pub(crate) fn product(&self, sku: &Sku) -> Product {
        self.products.get(sku).cloned().unwrap_or_default()
    }

    pub(crate) fn cart(&self, customer_id: CustomerId) -> Cart {
        self.carts.get(&customer_id).cloned().unwrap_or_default()
    }

    pub(crate) fn order(&self, order_id: OrderId) -> Order {
        self.orders.get(&order_id).cloned().unwrap_or_default()
    }

    /// Folds one event into the state of its stream, as a shell loading that
    /// stream would.
    pub(crate) fn apply(&mut self, event: &Event) {
        match event {
            Event::Product(event) => {
                let state = self.products.remove(event.sku()).unwrap_or_default();
                self.products.insert(event.sku().clone(), product::evolve(state, event));
            }
            Event::Customer(event) => {
                let state = self.customers.remove(&event.customer_id()).unwrap_or_default();
                self.customers.insert(event.customer_id(), customer::evolve(state, event));
            }
            Event::EmailClaim(event) => {
                let state = self.claims.remove(event.email_key()).unwrap_or_default();
                self.claims.insert(event.email_key().clone(), email_claim::evolve(state, event));
            }
            Event::Cart(event) => {
                let state = self.carts.remove(&event.customer_id()).unwrap_or_default();
                self.carts.insert(event.customer_id(), cart::evolve(state, event));
            }
            Event::Order(event) => {
                let state = self.orders.remove(&event.order_id()).unwrap_or_default();
                self.orders.insert(event.order_id(), order::evolve(state, event));
            }
        }
    }

    /// The states of the streams that `events` touch, each folded from only its
    /// own events: what a shell would load, stream by stream.
    pub(crate) fn by_stream(events: &[Event]) -> Shop {
        let mut streams: BTreeMap<StreamId, Vec<&Event>> = BTreeMap::new();
        for event in events {
            streams.entry(event.stream()).or_default().push(event);
        }
        let mut shop = Shop::default();
        for (stream, events) in streams {
            let mut alone = Shop::default();
            for event in events {
                assert_eq!(event.stream(), stream);
                alone.apply(event);
            }
            shop.products.append(&mut alone.products);
            shop.customers.append(&mut alone.customers);
            shop.claims.append(&mut alone.claims);
            shop.carts.append(&mut alone.carts);
            shop.orders.append(&mut alone.orders);
        }
        shop
    }
}

impl Decider for Shop {
    type State = Shop;
    type Command = Command;

    fn decide(shop: &Shop, command: &Command) -> Result<Vec<Event>, DomainError> {
        match command {
            Command::Product(command) => product::decide(&shop.product(command.sku()), command),
            Command::Customer(command) => {
                let (customer_id, email_key) = match command {
                    CustomerCommand::Register(register) => (register.customer_id, &register.email_key),
                    CustomerCommand::Forget(forget) => (forget.customer_id, &forget.email_key),
                };
                let customer = shop.customers.get(&customer_id).cloned().unwrap_or_default();
                let claim = shop.claims.get(email_key).cloned().unwrap_or_default();
                let holder = claim.claimed_by().and_then(|holder| shop.customers.get(&holder)).cloned();
                let mut events = customer::decide(&customer, &claim, &holder.unwrap_or_default(), command)?;
                if let CustomerCommand::Forget(_) = command {
                    let theirs = shop
                        .orders
                        .values()
                        .filter(|order| order.info().map(|info| info.customer_id) == Some(customer_id));
                    events.extend(order::cancel_unpaid(theirs));
                }
                Ok(events)
            }
            Command::AddItem(command) => {
                cart::add_item(&shop.cart(command.customer_id), &shop.product(&command.sku), command)
            }
            Command::RemoveItem(command) => cart::remove_item(&shop.cart(command.customer_id), command),
            Command::Checkout(command) => {
                let customer = shop.customers.get(&command.customer_id).cloned().unwrap_or_default();
                checkout::check_customer(&customer, command.customer_id)?;
                let cart = shop.cart(command.customer_id);
                let products = cart.lines().keys().map(|sku| (sku.clone(), shop.product(sku))).collect();
                checkout::decide(&cart, &products, command)
            }
            Command::Order(command) => order::decide(&shop.order(command.order_id()), command),
        }
    }

    fn evolve(mut shop: Shop, event: &Event) -> Shop {
        shop.apply(event);
        shop
    }
}

macro_rules! command_from {
    ($($variant:ident($command:ty)),+) => {
        $(impl From<$command> for Command {
            fn from(command: $command) -> Command {
                Command::$variant(command)
            }
        })+
    };
}

command_from!(
    Product(ProductCommand),
    Customer(CustomerCommand),
    AddItem(AddCartItem),
    RemoveItem(RemoveCartItem),
    Checkout(Checkout),
    Order(OrderCommand)
);
