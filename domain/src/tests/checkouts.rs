//! Checkout rules: one decision over the cart and its products.

use std::collections::BTreeMap;

use super::fixtures::*;
use super::shop::Shop;
use super::spec::{Decider, given};
use crate::{Cart, Checkout, DomainError, ErrorKind, Event, Order, OrderEvent, OrderStatus, checkout};

#[test]
fn checkout_of_empty_cart_is_rejected() {
    given([product_created("mug", 1299, 5)])
        .when(checkout(alice(), order(1)))
        .then_err(DomainError::EmptyCart { customer_id: alice() });
}

#[test]
fn an_empty_cart_is_a_validation_error_on_the_cart() {
    let error = DomainError::EmptyCart { customer_id: alice() };
    assert_eq!(error.kind(), ErrorKind::Validation);
    assert_eq!(error.field_errors()[0].field, "cart");
}

#[test]
fn checkout_of_an_emptied_cart_is_rejected() {
    given([product_created("mug", 1299, 5), item_added(alice(), "mug", 1), item_removed(alice(), "mug")])
        .when(checkout(alice(), order(1)))
        .then_err(DomainError::EmptyCart { customer_id: alice() });
}

#[test]
fn checkout_places_the_order_reserves_stock_and_empties_the_cart() {
    let shop = given([
        product_created("tea", 250, 10),
        product_created("mug", 1000, 3),
        item_added(alice(), "tea", 4),
        item_added(alice(), "mug", 2),
    ])
    .when(checkout(alice(), order(1)))
    .then([
        order_placed(order(1), alice(), &[("mug", 2, 1000), ("tea", 4, 250)]),
        reserved("mug", order(1), 2),
        reserved("tea", order(1), 4),
        checked_out(alice(), order(1)),
    ]);
    assert!(shop.cart(alice()).is_empty());
    assert_eq!(shop.product(&sku("mug")).info().map(|info| info.stock), Some(1));
    assert_eq!(shop.product(&sku("tea")).info().map(|info| info.stock), Some(6));
    assert_eq!(shop.order(order(1)).status(), Some(OrderStatus::Placed));
}

/// Subtotal, shipping and total of the order a one-line cart at `unit_price` places.
fn placed_totals(unit_price: i64) -> (i64, i64, i64) {
    let shop = given([product_created("mug", unit_price, 1), item_added(alice(), "mug", 1)]).state();
    match Shop::decide(&shop, &checkout(alice(), order(1))).as_deref() {
        Ok([Event::Order(OrderEvent::Placed(placed)), ..]) => {
            (placed.subtotal_cents.get(), placed.shipping_cents.get(), placed.total_cents.get())
        }
        other => panic!("expected OrderPlaced first, got {other:?}"),
    }
}

#[test]
fn checkout_charges_shipping_below_5000_and_not_from_5000() {
    assert_eq!(placed_totals(4999), (4999, 499, 5498));
    assert_eq!(placed_totals(5000), (5000, 0, 5000));
}

#[test]
fn checkout_takes_prices_at_checkout() {
    given([product_created("mug", 1000, 5), item_added(alice(), "mug", 1), price_changed("mug", 1500)])
        .when(checkout(alice(), order(1)))
        .then([
            order_placed(order(1), alice(), &[("mug", 1, 1500)]),
            reserved("mug", order(1), 1),
            checked_out(alice(), order(1)),
        ]);
}

#[test]
fn checkout_of_exactly_the_stock_left_is_accepted() {
    given([product_created("mug", 1000, 2), item_added(alice(), "mug", 2)]).when(checkout(alice(), order(1))).then([
        order_placed(order(1), alice(), &[("mug", 2, 1000)]),
        reserved("mug", order(1), 2),
        checked_out(alice(), order(1)),
    ]);
}

#[test]
fn checkout_out_of_stock_names_all_short_skus_sorted() {
    given([
        product_created("c", 100, 0),
        product_created("a", 100, 1),
        product_created("b", 100, 5),
        item_added(alice(), "c", 1),
        item_added(alice(), "b", 5),
        item_added(alice(), "a", 2),
    ])
    .when(checkout(alice(), order(1)))
    .then_err(DomainError::OutOfStock { skus: skus(&["a", "c"]) });
}

#[test]
fn checkout_counts_stock_reserved_by_earlier_orders() {
    given([product_created("mug", 1000, 3), reserved("mug", order(1), 2), item_added(alice(), "mug", 2)])
        .when(checkout(alice(), order(2)))
        .then_err(DomainError::OutOfStock { skus: skus(&["mug"]) });
}

#[test]
fn checkout_with_a_discontinued_product_is_rejected() {
    given([
        product_created("mug", 1000, 3),
        product_created("tea", 250, 3),
        item_added(alice(), "mug", 1),
        item_added(alice(), "tea", 1),
        discontinued("tea"),
    ])
    .when(checkout(alice(), order(1)))
    .then_err(DomainError::Discontinued { skus: skus(&["tea"]) });
}

#[test]
fn checkout_names_every_discontinued_product_sorted() {
    given([
        product_created("tea", 250, 3),
        product_created("mug", 1000, 3),
        product_created("cup", 500, 3),
        item_added(alice(), "tea", 1),
        item_added(alice(), "mug", 1),
        item_added(alice(), "cup", 1),
        discontinued("tea"),
        discontinued("cup"),
    ])
    .when(checkout(alice(), order(1)))
    .then_err(DomainError::Discontinued { skus: skus(&["cup", "tea"]) });
}

#[test]
fn checkout_names_discontinued_products_before_short_ones() {
    given([
        product_created("mug", 1000, 0),
        product_created("tea", 250, 0),
        item_added(alice(), "mug", 1),
        item_added(alice(), "tea", 1),
        discontinued("tea"),
    ])
    .when(checkout(alice(), order(1)))
    .then_err(DomainError::Discontinued { skus: skus(&["tea"]) });
}

#[test]
fn checkout_without_a_products_state_is_not_found() {
    let cart = given([product_created("mug", 1000, 3), item_added(alice(), "mug", 1)]).state().cart(alice());
    let command = Checkout { order_id: order(1), customer_id: alice() };
    assert_eq!(
        checkout::decide(&cart, &BTreeMap::new(), &command),
        Err(DomainError::ProductNotFound { sku: sku("mug") })
    );
}

#[test]
fn checkout_leaves_the_order_placed_and_another_cart_alone() {
    let shop = given([product_created("mug", 1000, 3), item_added(alice(), "mug", 1), item_added(bob(), "mug", 1)])
        .when(checkout(alice(), order(1)))
        .then([
            order_placed(order(1), alice(), &[("mug", 1, 1000)]),
            reserved("mug", order(1), 1),
            checked_out(alice(), order(1)),
        ]);
    assert!(matches!(shop.order(order(1)), Order::Placed(_)));
    assert_eq!(shop.cart(bob()).lines().get(&sku("mug")), Some(&qty(1)));
    assert_eq!(shop.cart(alice()), Cart::default());
}
