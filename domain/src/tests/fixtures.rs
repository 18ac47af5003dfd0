//! Short builders for test values, events and commands, so a case reads as the
//! rule it checks. They `expect` only on literals written in the tests.

use uuid::Uuid;

use super::shop::Command;
use crate::{
    AddCartItem, CartCheckedOut, CartItemAdded, CartItemRemoved, Cents, Checkout, CustomerCommand, CustomerForgotten,
    CustomerId, CustomerName, CustomerRegistered, Email, EmailClaimed, EmailKey, EmailReleased, Event, ForgetCustomer,
    OrderCancelled, OrderCommand, OrderId, OrderLine, OrderPaid, OrderPlaced, OrderShipped, PasswordHash, PriceCents,
    ProductCommand, ProductCreated, ProductDiscontinued, ProductName, ProductPriceChanged, ProductRestocked, Quantity,
    RegisterCustomer, RemoveCartItem, RestockQuantity, Sku, Stock, StockReleased, StockReserved, Totals,
};

// Values.

pub(crate) fn sku(text: &str) -> Sku {
    Sku::parse(text).expect("test sku is valid")
}

pub(crate) fn skus(texts: &[&str]) -> Vec<Sku> {
    texts.iter().map(|text| sku(text)).collect()
}

pub(crate) fn price(cents: i64) -> PriceCents {
    PriceCents::new(cents).expect("test price is valid")
}

pub(crate) fn qty(quantity: u32) -> Quantity {
    Quantity::new(quantity).expect("test quantity is valid")
}

pub(crate) fn alice() -> CustomerId {
    CustomerId::new(Uuid::from_u128(0xA11CE))
}

pub(crate) fn bob() -> CustomerId {
    CustomerId::new(Uuid::from_u128(0xB0B))
}

pub(crate) fn order(n: u128) -> OrderId {
    OrderId::new(Uuid::from_u128(n))
}

pub(crate) fn email(text: &str) -> Email {
    Email::parse(text).expect("test email is valid")
}

/// Stands in for the shell's keyed hash of an email.
pub(crate) fn key(n: u8) -> EmailKey {
    EmailKey::parse(&format!("{n:064x}")).expect("test email key is valid")
}

pub(crate) fn password_hash() -> PasswordHash {
    PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".to_owned())
        .expect("test hash is valid")
}

// Events.

pub(crate) fn product_created(sku_text: &str, price_cents: i64, stock: u32) -> Event {
    ProductCreated {
        sku: sku(sku_text),
        name: ProductName::parse(&format!("Product {sku_text}")).expect("test name is valid"),
        price_cents: price(price_cents),
        initial_stock: Stock::new(stock).expect("test stock is valid"),
    }
    .into()
}

pub(crate) fn price_changed(sku_text: &str, price_cents: i64) -> Event {
    ProductPriceChanged { sku: sku(sku_text), price_cents: price(price_cents) }.into()
}

pub(crate) fn restocked(sku_text: &str, quantity: u32) -> Event {
    ProductRestocked { sku: sku(sku_text), quantity: RestockQuantity::new(quantity).expect("test restock is valid") }
        .into()
}

pub(crate) fn discontinued(sku_text: &str) -> Event {
    ProductDiscontinued { sku: sku(sku_text) }.into()
}

pub(crate) fn reserved(sku_text: &str, order_id: OrderId, quantity: u32) -> Event {
    StockReserved { sku: sku(sku_text), order_id, quantity: qty(quantity) }.into()
}

pub(crate) fn released(sku_text: &str, order_id: OrderId, quantity: u32) -> Event {
    StockReleased { sku: sku(sku_text), order_id, quantity: qty(quantity) }.into()
}

pub(crate) fn registered(customer_id: CustomerId, address: &str) -> Event {
    CustomerRegistered {
        customer_id,
        email: email(address),
        name: CustomerName::parse("Alice Liddell").expect("test name is valid"),
        password_hash: password_hash(),
    }
    .into()
}

pub(crate) fn forgotten(customer_id: CustomerId) -> Event {
    CustomerForgotten { customer_id }.into()
}

pub(crate) fn claimed(email_key: EmailKey, customer_id: CustomerId) -> Event {
    EmailClaimed { email_key, customer_id }.into()
}

pub(crate) fn email_released(email_key: EmailKey, customer_id: CustomerId) -> Event {
    EmailReleased { email_key, customer_id }.into()
}

pub(crate) fn item_added(customer_id: CustomerId, sku_text: &str, quantity: u32) -> Event {
    CartItemAdded { customer_id, sku: sku(sku_text), quantity: qty(quantity) }.into()
}

pub(crate) fn item_removed(customer_id: CustomerId, sku_text: &str) -> Event {
    CartItemRemoved { customer_id, sku: sku(sku_text) }.into()
}

pub(crate) fn checked_out(customer_id: CustomerId, order_id: OrderId) -> Event {
    CartCheckedOut { customer_id, order_id }.into()
}

/// An order of `(sku, quantity, unit price)` lines, with totals per the rule.
pub(crate) fn order_placed(order_id: OrderId, customer_id: CustomerId, lines: &[(&str, u32, i64)]) -> Event {
    let lines: Vec<OrderLine> = lines
        .iter()
        .map(|(sku_text, quantity, unit_price)| OrderLine {
            sku: sku(sku_text),
            quantity: qty(*quantity),
            unit_price_cents: price(*unit_price),
        })
        .collect();
    let totals = Totals::of_lines(lines.iter().map(|line| (line.quantity, line.unit_price_cents)));
    OrderPlaced {
        order_id,
        customer_id,
        lines,
        subtotal_cents: totals.subtotal_cents,
        shipping_cents: totals.shipping_cents,
        total_cents: totals.total_cents,
    }
    .into()
}

pub(crate) fn order_paid(order_id: OrderId, amount_cents: i64) -> Event {
    OrderPaid { order_id, amount_cents: Cents::new(amount_cents) }.into()
}

pub(crate) fn order_cancelled(order_id: OrderId) -> Event {
    OrderCancelled { order_id }.into()
}

pub(crate) fn order_shipped(order_id: OrderId) -> Event {
    OrderShipped { order_id }.into()
}

// Commands.

pub(crate) fn create(sku_text: &str, price_cents: i64, stock: u32) -> Command {
    ProductCommand::Create {
        sku: sku(sku_text),
        name: ProductName::parse(&format!("Product {sku_text}")).expect("test name is valid"),
        price_cents: price(price_cents),
        initial_stock: Stock::new(stock).expect("test stock is valid"),
    }
    .into()
}

pub(crate) fn change_price(sku_text: &str, price_cents: i64) -> Command {
    ProductCommand::ChangePrice { sku: sku(sku_text), price_cents: price(price_cents) }.into()
}

pub(crate) fn restock(sku_text: &str, quantity: u32) -> Command {
    ProductCommand::Restock { sku: sku(sku_text), quantity: RestockQuantity::new(quantity).expect("valid restock") }
        .into()
}

pub(crate) fn discontinue(sku_text: &str) -> Command {
    ProductCommand::Discontinue { sku: sku(sku_text) }.into()
}

pub(crate) fn register(customer_id: CustomerId, address: &str, email_key: EmailKey) -> Command {
    CustomerCommand::Register(RegisterCustomer {
        customer_id,
        email: email(address),
        email_key,
        name: CustomerName::parse("Alice Liddell").expect("test name is valid"),
        password_hash: password_hash(),
    })
    .into()
}

pub(crate) fn forget(customer_id: CustomerId, email_key: EmailKey) -> Command {
    CustomerCommand::Forget(ForgetCustomer { customer_id, email_key }).into()
}

pub(crate) fn add(customer_id: CustomerId, sku_text: &str, quantity: u32) -> Command {
    AddCartItem { customer_id, sku: sku(sku_text), quantity: qty(quantity) }.into()
}

pub(crate) fn remove(customer_id: CustomerId, sku_text: &str) -> Command {
    RemoveCartItem { customer_id, sku: sku(sku_text) }.into()
}

pub(crate) fn checkout(customer_id: CustomerId, order_id: OrderId) -> Command {
    Checkout { order_id, customer_id }.into()
}

pub(crate) fn pay(order_id: OrderId, amount_cents: i64) -> Command {
    OrderCommand::Pay { order_id, amount_cents: Cents::new(amount_cents) }.into()
}

pub(crate) fn cancel(order_id: OrderId) -> Command {
    OrderCommand::Cancel { order_id }.into()
}

pub(crate) fn ship(order_id: OrderId) -> Command {
    OrderCommand::Ship { order_id }.into()
}
