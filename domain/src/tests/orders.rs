//! Order rules: placed → paid → shipped, cancel from placed or paid.

use super::fixtures::*;
use super::spec::given;
use crate::{Cents, DomainError, ErrorKind, Event, OrderStatus};

const TOTAL: i64 = 2 * 1000 + 250 + 499;

/// Two products, and order 1 of alice's for 2 mugs and 1 tea, in `status`.
fn order_in(status: OrderStatus) -> Vec<Event> {
    let mut events = vec![
        product_created("mug", 1000, 5),
        product_created("tea", 250, 5),
        order_placed(order(1), alice(), &[("mug", 2, 1000), ("tea", 1, 250)]),
        reserved("mug", order(1), 2),
        reserved("tea", order(1), 1),
    ];
    match status {
        OrderStatus::Placed => {}
        OrderStatus::Paid => events.push(order_paid(order(1), TOTAL)),
        OrderStatus::Shipped => events.extend([order_paid(order(1), TOTAL), order_shipped(order(1))]),
        OrderStatus::Cancelled => {
            events.extend([order_cancelled(order(1)), released("mug", order(1), 2), released("tea", order(1), 1)])
        }
    }
    events
}

fn illegal(from: OrderStatus, to: OrderStatus) -> DomainError {
    DomainError::IllegalTransition { order_id: order(1), from, to }
}

#[test]
fn the_fixture_order_totals_include_shipping() {
    let shop = given(order_in(OrderStatus::Placed)).state();
    assert_eq!(shop.order(order(1)).info().map(|info| info.total_cents), Some(Cents::new(TOTAL)));
}

#[test]
fn paying_the_total_pays_the_order() {
    let shop = given(order_in(OrderStatus::Placed)).when(pay(order(1), TOTAL)).then([order_paid(order(1), TOTAL)]);
    assert_eq!(shop.order(order(1)).status(), Some(OrderStatus::Paid));
}

#[test]
fn paying_a_wrong_amount_is_rejected_naming_expected_and_given() {
    for given_cents in [TOTAL - 1, TOTAL + 1, 0, -TOTAL] {
        given(order_in(OrderStatus::Placed)).when(pay(order(1), given_cents)).then_err(DomainError::WrongAmount {
            order_id: order(1),
            expected: Cents::new(TOTAL),
            given: Cents::new(given_cents),
        });
    }
}

#[test]
fn a_wrong_amount_is_a_conflict_whose_message_names_both_amounts() {
    let error = DomainError::WrongAmount { order_id: order(1), expected: Cents::new(2749), given: Cents::new(100) };
    assert_eq!(error.kind(), ErrorKind::Conflict);
    assert!(error.to_string().contains("costs 2749 cents, not 100"), "{error}");
}

#[test]
fn shipping_a_paid_order_ships_it() {
    let shop = given(order_in(OrderStatus::Paid)).when(ship(order(1))).then([order_shipped(order(1))]);
    assert_eq!(shop.order(order(1)).status(), Some(OrderStatus::Shipped));
}

#[test]
fn cancelling_a_placed_order_releases_every_line() {
    let shop = given(order_in(OrderStatus::Placed)).when(cancel(order(1))).then([
        order_cancelled(order(1)),
        released("mug", order(1), 2),
        released("tea", order(1), 1),
    ]);
    assert_eq!(shop.order(order(1)).status(), Some(OrderStatus::Cancelled));
    assert_eq!(shop.product(&sku("mug")).info().map(|info| info.stock), Some(5));
    assert_eq!(shop.product(&sku("tea")).info().map(|info| info.stock), Some(5));
}

#[test]
fn cancelling_a_paid_order_releases_every_line() {
    given(order_in(OrderStatus::Paid)).when(cancel(order(1))).then([
        order_cancelled(order(1)),
        released("mug", order(1), 2),
        released("tea", order(1), 1),
    ]);
}

#[test]
fn paying_a_paid_order_is_rejected() {
    given(order_in(OrderStatus::Paid))
        .when(pay(order(1), TOTAL))
        .then_err(illegal(OrderStatus::Paid, OrderStatus::Paid));
}

#[test]
fn paying_a_shipped_order_is_rejected() {
    given(order_in(OrderStatus::Shipped))
        .when(pay(order(1), TOTAL))
        .then_err(illegal(OrderStatus::Shipped, OrderStatus::Paid));
}

#[test]
fn paying_a_cancelled_order_is_rejected() {
    given(order_in(OrderStatus::Cancelled))
        .when(pay(order(1), TOTAL))
        .then_err(illegal(OrderStatus::Cancelled, OrderStatus::Paid));
}

#[test]
fn paying_a_cancelled_order_with_a_wrong_amount_names_the_transition() {
    given(order_in(OrderStatus::Cancelled))
        .when(pay(order(1), 1))
        .then_err(illegal(OrderStatus::Cancelled, OrderStatus::Paid));
}

#[test]
fn shipping_an_unpaid_order_is_rejected() {
    given(order_in(OrderStatus::Placed))
        .when(ship(order(1)))
        .then_err(illegal(OrderStatus::Placed, OrderStatus::Shipped));
}

#[test]
fn shipping_a_shipped_order_is_rejected() {
    given(order_in(OrderStatus::Shipped))
        .when(ship(order(1)))
        .then_err(illegal(OrderStatus::Shipped, OrderStatus::Shipped));
}

#[test]
fn shipping_a_cancelled_order_is_rejected() {
    given(order_in(OrderStatus::Cancelled))
        .when(ship(order(1)))
        .then_err(illegal(OrderStatus::Cancelled, OrderStatus::Shipped));
}

#[test]
fn cancelling_a_shipped_order_is_rejected() {
    given(order_in(OrderStatus::Shipped))
        .when(cancel(order(1)))
        .then_err(illegal(OrderStatus::Shipped, OrderStatus::Cancelled));
}

#[test]
fn cancelling_a_cancelled_order_is_rejected() {
    given(order_in(OrderStatus::Cancelled))
        .when(cancel(order(1)))
        .then_err(illegal(OrderStatus::Cancelled, OrderStatus::Cancelled));
}

#[test]
fn an_illegal_transition_is_a_conflict_naming_both_statuses() {
    let error = illegal(OrderStatus::Placed, OrderStatus::Shipped);
    assert_eq!(error.kind(), ErrorKind::Conflict);
    assert!(error.to_string().ends_with("cannot go from placed to shipped"), "{error}");
}

#[test]
fn commands_on_a_missing_order_are_not_found() {
    for command in [pay(order(9), TOTAL), cancel(order(9)), ship(order(9))] {
        given(order_in(OrderStatus::Placed)).when(command).then_err(DomainError::OrderNotFound { order_id: order(9) });
    }
}

#[test]
fn the_order_keeps_its_customer_for_ownership_checks() {
    let shop = given(order_in(OrderStatus::Paid)).state();
    assert_eq!(shop.order(order(1)).info().map(|info| info.customer_id), Some(alice()));
}

#[test]
fn only_the_legal_transitions_are_allowed() {
    use OrderStatus::{Cancelled, Paid, Placed, Shipped};
    let all = [Placed, Paid, Shipped, Cancelled];
    let legal = [(Placed, Paid), (Paid, Shipped), (Placed, Cancelled), (Paid, Cancelled)];
    for from in all {
        for to in all {
            assert_eq!(from.can_become(to), legal.contains(&(from, to)), "{from} -> {to}");
        }
    }
}
