//! The domain's tests: given/when/then cases per aggregate over an in-memory
//! [`shop::Shop`], property tests over random command sequences, unit tests of
//! values, stream names, events and errors, and checks that the crate stays pure.

mod fixtures;
mod shop;
mod spec;

mod carts;
mod checkouts;
mod customers;
mod errors;
mod events;
mod orders;
mod products;
mod properties;
mod purity;
mod values;
