//! Cart rules: adding, removing, line limits, totals.

use super::fixtures::*;
use super::spec::given;
use crate::{CART_LINES_MAX, Cart, Cents, DomainError, Event, Quantity, Totals, cart};

/// A catalog of `count` products `p0`, `p1`, … and a cart of alice's holding one
/// of each of the first `in_cart`.
fn catalog_and_cart(count: usize, in_cart: usize) -> Vec<Event> {
    let products = (0..count).map(|n| product_created(&format!("p{n}"), 100, 10));
    let lines = (0..in_cart).map(|n| item_added(alice(), &format!("p{n}"), 1));
    products.chain(lines).collect()
}

#[test]
fn adding_an_item_emits_cart_item_added() {
    given([product_created("mug", 1299, 0)]).when(add(alice(), "mug", 2)).then([item_added(alice(), "mug", 2)]);
}

#[test]
fn adding_99_of_a_product_is_accepted() {
    given([product_created("mug", 1299, 0)]).when(add(alice(), "mug", 99)).then([item_added(alice(), "mug", 99)]);
}

#[test]
fn quantities_of_0_or_100_are_rejected() {
    for quantity in [0, 100] {
        let error = Quantity::new(quantity).expect_err("out of bounds");
        assert_eq!((error.field, error.message.as_str()), ("quantity", "must be 1 to 99"));
    }
}

#[test]
fn adding_a_missing_product_is_not_found() {
    given([]).when(add(alice(), "mug", 1)).then_err(DomainError::ProductNotFound { sku: sku("mug") });
}

#[test]
fn adding_a_discontinued_product_is_rejected() {
    given([product_created("mug", 1299, 5), discontinued("mug")])
        .when(add(alice(), "mug", 1))
        .then_err(DomainError::Discontinued { skus: skus(&["mug"]) });
}

#[test]
fn adding_an_existing_sku_adds_to_its_line() {
    let shop = given([product_created("mug", 1299, 0), item_added(alice(), "mug", 2)])
        .when(add(alice(), "mug", 3))
        .then([item_added(alice(), "mug", 3)]);
    let cart = shop.cart(alice());
    assert_eq!(cart.lines().len(), 1);
    assert_eq!(cart.lines().get(&sku("mug")), Some(&qty(5)));
}

#[test]
fn adding_to_a_line_up_to_99_is_accepted() {
    given([product_created("mug", 1299, 0), item_added(alice(), "mug", 50)])
        .when(add(alice(), "mug", 49))
        .then([item_added(alice(), "mug", 49)]);
}

#[test]
fn adding_to_a_line_past_99_is_rejected() {
    given([product_created("mug", 1299, 0), item_added(alice(), "mug", 50)])
        .when(add(alice(), "mug", 50))
        .then_err(DomainError::LineQuantityExceeded { sku: sku("mug"), quantity: 100, quantity_max: 99 });
}

#[test]
fn the_50th_line_is_accepted() {
    given(catalog_and_cart(CART_LINES_MAX, CART_LINES_MAX - 1)).when(add(alice(), "p49", 1)).then([item_added(
        alice(),
        "p49",
        1,
    )]);
}

#[test]
fn the_51st_line_is_rejected() {
    given(catalog_and_cart(CART_LINES_MAX + 1, CART_LINES_MAX))
        .when(add(alice(), "p50", 1))
        .then_err(DomainError::CartFull { lines_max: 50 });
}

#[test]
fn a_full_cart_still_takes_more_of_a_line_it_holds() {
    given(catalog_and_cart(CART_LINES_MAX, CART_LINES_MAX)).when(add(alice(), "p0", 1)).then([item_added(
        alice(),
        "p0",
        1,
    )]);
}

#[test]
fn carts_are_per_customer() {
    let shop = given([product_created("mug", 1299, 0), item_added(alice(), "mug", 2)])
        .when(add(bob(), "mug", 1))
        .then([item_added(bob(), "mug", 1)]);
    assert_eq!(shop.cart(alice()).lines().get(&sku("mug")), Some(&qty(2)));
    assert_eq!(shop.cart(bob()).lines().get(&sku("mug")), Some(&qty(1)));
}

#[test]
fn removing_an_item_removes_its_whole_line() {
    let shop = given([product_created("mug", 1299, 0), item_added(alice(), "mug", 2)])
        .when(remove(alice(), "mug"))
        .then([item_removed(alice(), "mug")]);
    assert!(shop.cart(alice()).is_empty());
}

#[test]
fn removing_an_item_not_in_the_cart_is_not_found() {
    given([product_created("mug", 1299, 0)])
        .when(remove(alice(), "mug"))
        .then_err(DomainError::CartItemNotFound { sku: sku("mug") });
}

#[test]
fn removing_a_discontinued_product_from_the_cart_is_accepted() {
    given([product_created("mug", 1299, 0), item_added(alice(), "mug", 2), discontinued("mug")])
        .when(remove(alice(), "mug"))
        .then([item_removed(alice(), "mug")]);
}

fn totals_of(lines: &[(u32, i64)]) -> Totals {
    Totals::of_lines(lines.iter().map(|(quantity, unit_price)| (qty(*quantity), price(*unit_price))))
}

fn cents(lines: &[(u32, i64)]) -> (i64, i64, i64) {
    let totals = totals_of(lines);
    (totals.subtotal_cents.get(), totals.shipping_cents.get(), totals.total_cents.get())
}

#[test]
fn shipping_is_499_below_a_subtotal_of_5000() {
    assert_eq!(cents(&[(1, 4999)]), (4999, 499, 5498));
    assert_eq!(cents(&[(1, 1)]), (1, 499, 500));
}

#[test]
fn shipping_is_free_from_a_subtotal_of_5000() {
    assert_eq!(cents(&[(1, 5000)]), (5000, 0, 5000));
    assert_eq!(cents(&[(2, 2000), (1, 1000)]), (5000, 0, 5000));
}

#[test]
fn an_empty_cart_costs_nothing() {
    assert_eq!(cents(&[]), (0, 0, 0));
    assert_eq!(cart::shipping_cents(Cents::ZERO), Cents::ZERO);
}

#[test]
fn the_most_expensive_cart_does_not_overflow() {
    let lines = vec![(99, 100_000_000); CART_LINES_MAX];
    assert_eq!(cents(&lines), (495_000_000_000, 0, 495_000_000_000));
}

#[test]
fn cart_totals_use_the_prices_passed_in() {
    let shop = given([
        product_created("mug", 1000, 0),
        product_created("tea", 250, 0),
        item_added(alice(), "mug", 2),
        item_added(alice(), "tea", 4),
    ])
    .state();
    let prices = |sku: &crate::Sku| shop.product(sku).info().map(|info| info.price_cents);
    let totals = shop.cart(alice()).totals(prices).expect("every product has a price");
    assert_eq!(totals, totals_of(&[(2, 1000), (4, 250)]));
    assert_eq!(totals.total_cents, Cents::new(3000 + 499));
}

#[test]
fn cart_totals_without_a_price_name_the_product() {
    let shop = given([product_created("mug", 1000, 0), item_added(alice(), "mug", 2)]).state();
    assert_eq!(shop.cart(alice()).totals(|_| None), Err(DomainError::ProductNotFound { sku: sku("mug") }));
    assert_eq!(Cart::default().totals(|_| None).map(|totals| totals.total_cents), Ok(Cents::ZERO));
}
