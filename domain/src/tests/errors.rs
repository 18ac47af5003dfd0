//! Error kinds and message style.

use super::fixtures::*;
use crate::{Cents, DomainError, ErrorKind, OrderStatus, ValidationError};

fn one_of_each() -> Vec<DomainError> {
    vec![
        DomainError::Validation(vec![ValidationError::new("sku", "must not be blank")]),
        DomainError::EmptyCart { customer_id: alice() },
        DomainError::ProductAlreadyExists { sku: sku("mug") },
        DomainError::ProductNotFound { sku: sku("mug") },
        DomainError::Discontinued { skus: skus(&["a", "b"]) },
        DomainError::StockLimitExceeded { sku: sku("mug"), stock: 5, quantity: 6, stock_max: 10 },
        DomainError::OutOfStock { skus: skus(&["a", "b"]) },
        DomainError::CustomerAlreadyExists { customer_id: alice() },
        DomainError::CustomerNotFound { customer_id: alice() },
        DomainError::CustomerAlreadyForgotten { customer_id: alice() },
        DomainError::EmailTaken,
        DomainError::EmailNotClaimed { customer_id: alice() },
        DomainError::CartItemNotFound { sku: sku("mug") },
        DomainError::LineQuantityExceeded { sku: sku("mug"), quantity: 100, quantity_max: 99 },
        DomainError::CartFull { lines_max: 50 },
        DomainError::OrderNotFound { order_id: order(1) },
        DomainError::IllegalTransition { order_id: order(1), from: OrderStatus::Placed, to: OrderStatus::Shipped },
        DomainError::WrongAmount { order_id: order(1), expected: Cents::new(10), given: Cents::new(9) },
    ]
}

#[test]
fn messages_are_lowercase_without_a_final_full_stop() {
    for error in one_of_each() {
        let message = error.to_string();
        assert!(message.chars().next().is_some_and(|first| !first.is_uppercase()), "{message}");
        assert!(!message.ends_with('.'), "{message}");
    }
}

#[test]
fn out_of_stock_names_every_sku() {
    assert_eq!(DomainError::OutOfStock { skus: skus(&["a", "b"]) }.to_string(), "out of stock: a, b");
}

#[test]
fn discontinued_names_every_sku() {
    assert_eq!(DomainError::Discontinued { skus: skus(&["a", "b"]) }.to_string(), "product discontinued: a, b");
}

#[test]
fn a_validation_message_names_every_field() {
    let error = DomainError::Validation(vec![
        ValidationError::new("sku", "must not be blank"),
        ValidationError::new("price_cents", "must be 1 to 100000000"),
    ]);
    assert_eq!(error.to_string(), "invalid input: sku: must not be blank, price_cents: must be 1 to 100000000");
    assert_eq!(error.field_errors().len(), 2);
}

#[test]
fn each_refusal_has_the_kind_the_http_layer_maps() {
    let kinds: Vec<ErrorKind> = one_of_each().iter().map(DomainError::kind).collect();
    use ErrorKind::{Conflict, NotFound, Validation};
    assert_eq!(
        kinds,
        [
            Validation, Validation, Conflict, NotFound, Conflict, Conflict, Conflict, Conflict, NotFound, Conflict,
            Conflict, Conflict, NotFound, Conflict, Conflict, NotFound, Conflict, Conflict,
        ]
    );
}

#[test]
fn only_validation_refusals_carry_field_errors() {
    for error in one_of_each() {
        assert_eq!(error.field_errors().is_empty(), error.kind() != ErrorKind::Validation, "{error}");
    }
}
