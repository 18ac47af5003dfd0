//! The shop's rules, pure: the functional core of shoplog.
//!
//! Each aggregate has events (plain past-tense structs and an enum of them), a
//! state whose `Default` is the state before its first event, commands, a
//! decision and `evolve`:
//!
//! | module | stream | decisions |
//! |---|---|---|
//! | [`product`] | `product-<sku>` | [`product::decide`] (create, change price, restock, discontinue) |
//! | [`customer`] + [`email_claim`] | `customer-<uuid>`, `email-<key>` | [`customer::decide`] (register, forget), over both states and the state of the claim's holder |
//! | [`cart`] | `cart-<customer uuid>` | [`cart::add_item`] (over the cart and the product), [`cart::remove_item`] |
//! | [`checkout`] | order, products, cart | [`checkout::decide`], over the cart and every product in it |
//! | [`order`] | `order-<uuid>` | [`order::decide`] (pay, cancel, ship) |
//!
//! Every decision returns `Result<Vec<Event>, DomainError>`: the events to append
//! (each knows its [`Event::stream`], so one decision can span streams and the
//! shell appends them atomically), or why not. `evolve(state, &event) -> state`
//! folds a stream's events into its state.
//!
//! The main types around them: [`Event`] (with [`Event::event_type`],
//! [`Event::schema_version`], [`Event::subject`], [`EVENT_TYPES`] and the
//! `Serialize` / [`EventSeed`] pair that stores only the inner struct),
//! [`StreamId`], the validated values in [`value`], and [`DomainError`] with its
//! [`ErrorKind`].
//!
//! This crate never does IO, never awaits, never reads the clock and never draws
//! random numbers: ids and hashes come in with the command. It never panics on
//! input (refusals are `Err` values), and it makes no serialization format choice
//! beyond serde derives: stored event structs stay plain (no tags, no
//! `flatten`, no `untagged`, no `skip_serializing_if`), so a non-self-describing
//! format such as bincode can store them.

pub mod cart;
pub mod checkout;
pub mod customer;
pub mod email_claim;
pub mod error;
pub mod event;
pub mod order;
pub mod product;
pub mod stream;
pub mod value;

pub use cart::{
    AddCartItem, CART_LINES_MAX, Cart, CartCheckedOut, CartEvent, CartItemAdded, CartItemRemoved,
    FREE_SHIPPING_FROM_CENTS, RemoveCartItem, SHIPPING_CENTS, Totals,
};
pub use checkout::Checkout;
pub use customer::{
    Customer, CustomerCommand, CustomerEvent, CustomerForgotten, CustomerProfile, CustomerRegistered, ForgetCustomer,
    RegisterCustomer,
};
pub use email_claim::{EmailClaim, EmailClaimCommand, EmailClaimEvent, EmailClaimed, EmailReleased};
pub use error::{AllValid, DomainError, ErrorKind, ValidationError, validate_all};
pub use event::{EVENT_TYPES, Event, EventSeed};
pub use order::{
    Order, OrderCancelled, OrderCommand, OrderEvent, OrderInfo, OrderLine, OrderPaid, OrderPlaced, OrderShipped,
    OrderStatus,
};
pub use product::{
    Product, ProductCommand, ProductCreated, ProductDiscontinued, ProductEvent, ProductInfo, ProductPriceChanged,
    ProductRestocked, StockReleased, StockReserved,
};
pub use stream::StreamId;
pub use value::{
    Cents, CustomerId, CustomerName, Email, EmailKey, OrderId, Password, PasswordHash, PriceCents, ProductName,
    Quantity, RestockQuantity, Sku, Stock,
};

#[cfg(test)]
mod tests;
