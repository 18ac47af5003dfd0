//! Property tests: random command sequences against the whole shop, checking the
//! invariants after every step and the fold of all emitted events at the end.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde::de::DeserializeSeed;
use uuid::Uuid;

use super::fixtures::*;
use super::shop::{Command, Shop};
use super::spec::Decider;
use crate::cart::CART_LINES_MAX;
use crate::{Customer, CustomerEvent, Event, EventSeed, Order, OrderEvent, OrderId, OrderStatus, ProductEvent, Sku};

const SKUS: [&str; 3] = ["a", "b", "c"];

fn customer_at(index: usize) -> crate::CustomerId {
    if index.is_multiple_of(2) { alice() } else { bob() }
}

/// One thing a client or admin might try; ids are picked among those in play.
#[derive(Debug, Clone)]
enum Step {
    Create { sku: usize, price_cents: i64, stock: u32 },
    ChangePrice { sku: usize, price_cents: i64 },
    Restock { sku: usize, quantity: u32 },
    Discontinue { sku: usize },
    Add { customer: usize, sku: usize, quantity: u32 },
    Remove { customer: usize, sku: usize },
    Checkout { customer: usize },
    Pay { order: usize, exact: bool },
    Cancel { order: usize },
    Ship { order: usize },
}

fn step() -> impl Strategy<Value = Step> {
    let sku = 0..SKUS.len();
    // Mostly small quantities so that checkouts succeed often; now and then a big
    // one, to reach the line limit and run out of stock.
    let quantity = prop_oneof![9 => 1..6u32, 1 => 30..60u32];
    prop_oneof![
        2 => (sku.clone(), 1..6000i64, 0..40u32)
            .prop_map(|(sku, price_cents, stock)| Step::Create { sku, price_cents, stock }),
        1 => (sku.clone(), 1..6000i64).prop_map(|(sku, price_cents)| Step::ChangePrice { sku, price_cents }),
        3 => (sku.clone(), 1..30u32).prop_map(|(sku, quantity)| Step::Restock { sku, quantity }),
        1 => sku.clone().prop_map(|sku| Step::Discontinue { sku }),
        12 => (0..2usize, sku.clone(), quantity)
            .prop_map(|(customer, sku, quantity)| Step::Add { customer, sku, quantity }),
        1 => (0..2usize, sku).prop_map(|(customer, sku)| Step::Remove { customer, sku }),
        5 => (0..2usize).prop_map(|customer| Step::Checkout { customer }),
        4 => (any::<usize>(), prop::bool::weighted(0.8)).prop_map(|(order, exact)| Step::Pay { order, exact }),
        2 => any::<usize>().prop_map(|order| Step::Cancel { order }),
        3 => any::<usize>().prop_map(|order| Step::Ship { order }),
    ]
}

/// The command for a step at `index`: each checkout gets a fresh order id; order
/// steps pick among the placed orders (or a missing one when there is none).
fn command(step: &Step, index: usize, shop: &Shop, placed: &[OrderId]) -> Command {
    let pick = |n: usize| placed.get(n % placed.len().max(1)).copied().unwrap_or(order(u128::MAX));
    match *step {
        Step::Create { sku, price_cents, stock } => create(SKUS[sku], price_cents, stock),
        Step::ChangePrice { sku, price_cents } => change_price(SKUS[sku], price_cents),
        Step::Restock { sku, quantity } => restock(SKUS[sku], quantity),
        Step::Discontinue { sku } => discontinue(SKUS[sku]),
        Step::Add { customer, sku, quantity } => add(customer_at(customer), SKUS[sku], quantity),
        Step::Remove { customer, sku } => remove(customer_at(customer), SKUS[sku]),
        Step::Checkout { customer } => {
            checkout(customer_at(customer), OrderId::new(Uuid::from_u128(index as u128 + 1)))
        }
        Step::Pay { order, exact } => {
            let order_id = pick(order);
            let total = shop.order(order_id).info().map_or(0, |info| info.total_cents.get());
            pay(order_id, if exact { total } else { total + 1 })
        }
        Step::Cancel { order } => cancel(pick(order)),
        Step::Ship { order } => ship(pick(order)),
    }
}

/// Stock per sku, counted from the events alone, in a type that can go negative.
fn count_stock(ledger: &mut BTreeMap<Sku, i64>, event: &Event) {
    let Event::Product(event) = event else { return };
    let change = match event {
        ProductEvent::Created(created) => i64::from(created.initial_stock.get()),
        ProductEvent::Restocked(restocked) => i64::from(restocked.quantity.get()),
        ProductEvent::StockReserved(reserved) => -i64::from(reserved.quantity.get()),
        ProductEvent::StockReleased(released) => i64::from(released.quantity.get()),
        ProductEvent::PriceChanged(_) | ProductEvent::Discontinued(_) => 0,
    };
    *ledger.entry(event.sku().clone()).or_default() += change;
}

/// The order life written out here rather than taken from
/// [`OrderStatus::can_become`], so that a wrong table in the code under test
/// cannot make this test agree with it.
const LEGAL_TRANSITIONS: [(OrderStatus, OrderStatus); 4] = [
    (OrderStatus::Placed, OrderStatus::Paid),
    (OrderStatus::Placed, OrderStatus::Cancelled),
    (OrderStatus::Paid, OrderStatus::Shipped),
    (OrderStatus::Paid, OrderStatus::Cancelled),
];

/// Whether an order may go from `from` (`None`: no order yet) to `to`.
fn is_legal(from: Option<OrderStatus>, to: OrderStatus) -> bool {
    match from {
        None => to == OrderStatus::Placed,
        Some(from) => LEGAL_TRANSITIONS.contains(&(from, to)),
    }
}

/// The status an order event moves its order to.
fn target_status(event: &OrderEvent) -> OrderStatus {
    match event {
        OrderEvent::Placed(_) => OrderStatus::Placed,
        OrderEvent::Paid(_) => OrderStatus::Paid,
        OrderEvent::Cancelled(_) => OrderStatus::Cancelled,
        OrderEvent::Shipped(_) => OrderStatus::Shipped,
    }
}

/// Checks one event of a decision before it is applied. `now` is the shop with
/// the decision's earlier events applied, `decided_on` the shop the decision
/// saw. Comparing states alone is not enough: `order::evolve` ignores an event
/// that does not fit the status, so an illegal one would leave no trace.
fn check_event(now: &Shop, decided_on: &Shop, event: &Event, decision: &[Event]) -> Result<(), TestCaseError> {
    match event {
        Event::Order(order_event) => {
            let order_id = order_event.order_id();
            let from = now.orders.get(&order_id).and_then(Order::status);
            let to = target_status(order_event);
            prop_assert!(is_legal(from, to), "order {order_id} was sent from {from:?} to {to:?} by {decision:?}");
        }
        Event::Product(ProductEvent::StockReleased(released)) => {
            let order_id = released.order_id;
            let status = decided_on.orders.get(&order_id).and_then(Order::status);
            prop_assert!(
                matches!(status, Some(OrderStatus::Placed | OrderStatus::Paid)),
                "stock of {} was released for order {order_id} in status {status:?} by {decision:?}",
                released.sku
            );
            let cancels = decision.iter().any(|event| {
                matches!(event, Event::Order(OrderEvent::Cancelled(cancelled)) if cancelled.order_id == order_id)
            });
            prop_assert!(cancels, "stock was released for order {order_id} without cancelling it: {decision:?}");
        }
        _ => {}
    }
    Ok(())
}

fn stored_and_read_back(event: &Event) -> Result<Event, TestCaseError> {
    let json = serde_json::to_string(event).map_err(|error| TestCaseError::fail(error.to_string()))?;
    EventSeed { event_type: event.event_type(), schema_version: event.schema_version() }
        .deserialize(&mut serde_json::Deserializer::from_str(&json))
        .map_err(|error| TestCaseError::fail(error.to_string()))
}

fn run_shop(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut shop = Shop::default();
    let mut log: Vec<Event> = Vec::new();
    let mut ledger: BTreeMap<Sku, i64> = BTreeMap::new();
    let mut placed: Vec<OrderId> = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let command = command(step, index, &shop, &placed);
        let Ok(events) = Shop::decide(&shop, &command) else { continue };
        prop_assert!(!events.is_empty(), "an accepted command emits events: {command:?}");
        let before = shop.clone();
        for event in &events {
            check_event(&shop, &before, event, &events)?;
            count_stock(&mut ledger, event);
            if let Event::Order(OrderEvent::Placed(order_placed)) = event {
                placed.push(order_placed.order_id);
            }
            shop.apply(event);
        }
        log.extend(events);

        for (sku, counted) in &ledger {
            prop_assert!(*counted >= 0, "stock of {sku} went to {counted} after {command:?}");
            let held = shop.product(sku).info().map(|info| i64::from(info.stock));
            prop_assert_eq!(held, Some(*counted), "stock of {} disagrees with its events", sku);
        }
        for (order_id, order) in &shop.orders {
            let from = before.orders.get(order_id).and_then(Order::status);
            let to = order.status();
            let legal = from == to || to.is_some_and(|to| is_legal(from, to));
            prop_assert!(legal, "order {order_id} went from {from:?} to {to:?} on {command:?}");
        }
        for cart in shop.carts.values() {
            prop_assert!(cart.lines().len() <= CART_LINES_MAX);
        }
    }

    prop_assert_eq!(&Shop::by_stream(&log), &shop, "folding each stream alone differs");
    let read_back = log.iter().map(stored_and_read_back).collect::<Result<Vec<_>, _>>()?;
    prop_assert_eq!(&read_back, &log, "the stored form does not read back");
    let refolded = read_back.iter().fold(Shop::default(), Shop::evolve);
    prop_assert_eq!(refolded, shop);
    Ok(())
}

/// Registrations and forgets of four customers over three addresses.
#[derive(Debug, Clone)]
enum Identity {
    Register { customer: u128, address: u8 },
    Forget { customer: u128 },
}

fn identity() -> impl Strategy<Value = Identity> {
    prop_oneof![
        3 => (0..4u128, 0..3u8).prop_map(|(customer, address)| Identity::Register { customer, address }),
        1 => (0..4u128).prop_map(|customer| Identity::Forget { customer }),
    ]
}

fn run_identities(steps: &[Identity]) -> Result<(), TestCaseError> {
    let address = |n: u8| format!("user{n}@example.com");
    let key_of = |email: &str| (0..3u8).find(|n| address(*n) == email).map(key);
    let mut shop = Shop::default();
    let mut log = Vec::new();
    for step in steps {
        let command = match *step {
            Identity::Register { customer, address: n } => {
                register(crate::CustomerId::new(Uuid::from_u128(customer)), &address(n), key(n))
            }
            Identity::Forget { customer } => {
                let customer_id = crate::CustomerId::new(Uuid::from_u128(customer));
                // The shell computes the key from the email in the customer's state.
                let email_key = match shop.customers.get(&customer_id) {
                    Some(Customer::Registered(profile)) => key_of(profile.email.as_str()).unwrap_or(key(9)),
                    _ => key(9),
                };
                forget(customer_id, email_key)
            }
        };
        let Ok(events) = Shop::decide(&shop, &command) else { continue };
        for event in &events {
            shop.apply(event);
        }
        log.extend(events);

        // Every address is held by at most one registered customer, and that
        // customer is the one its claim names.
        for n in 0..3u8 {
            let holders: Vec<_> = shop
                .customers
                .values()
                .filter_map(|customer| match customer {
                    Customer::Registered(profile) if profile.email.as_str() == address(n) => Some(profile.customer_id),
                    _ => None,
                })
                .collect();
            let claimed_by = shop.claims.get(&key(n)).and_then(crate::EmailClaim::claimed_by);
            prop_assert!(holders.len() <= 1, "{} is held by {holders:?}", address(n));
            prop_assert_eq!(holders.first().copied(), claimed_by);
        }
    }
    prop_assert!(
        log.iter()
            .all(|event| event.subject().is_some() == matches!(event, Event::Customer(CustomerEvent::Registered(_))))
    );
    prop_assert_eq!(Shop::by_stream(&log), shop);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_shop_sessions_keep_stock_and_order_invariants(steps in prop::collection::vec(step(), 1..80)) {
        run_shop(&steps)?;
    }

    #[test]
    fn random_registrations_keep_emails_unique(steps in prop::collection::vec(identity(), 1..40)) {
        run_identities(&steps)?;
    }
}
