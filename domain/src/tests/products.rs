//! Product rules: create, change price, restock, discontinue, stock.

use super::fixtures::*;
use super::spec::given;
use crate::value::STOCK_MAX;
use crate::{DomainError, ErrorKind, PriceCents, Product, ProductName, Sku, validate_all};

fn stock_of(shop: &super::shop::Shop, sku_text: &str) -> Option<u32> {
    shop.product(&sku(sku_text)).info().map(|info| info.stock)
}

#[test]
fn creating_a_product_emits_product_created() {
    given([]).when(create("mug", 1299, 0)).then([product_created("mug", 1299, 0)]);
}

#[test]
fn a_new_product_is_active_with_its_initial_stock() {
    let shop = given([]).when(create("mug", 1299, 7)).then([product_created("mug", 1299, 7)]);
    assert!(shop.product(&sku("mug")).is_active());
    assert_eq!(stock_of(&shop, "mug"), Some(7));
}

#[test]
fn creating_an_existing_product_is_rejected() {
    given([product_created("mug", 1299, 0)])
        .when(create("mug", 500, 1))
        .then_err(DomainError::ProductAlreadyExists { sku: sku("mug") });
}

#[test]
fn creating_a_discontinued_product_again_is_rejected() {
    given([product_created("mug", 1299, 0), discontinued("mug")])
        .when(create("mug", 500, 1))
        .then_err(DomainError::ProductAlreadyExists { sku: sku("mug") });
}

#[test]
fn creating_a_product_with_several_bad_fields_names_every_field() {
    let error = validate_all((Sku::parse("bad sku!"), ProductName::parse("   "), PriceCents::new(0)))
        .expect_err("all three fields are bad");
    assert_eq!(error.kind(), ErrorKind::Validation);
    let fields: Vec<&str> = error.field_errors().iter().map(|field_error| field_error.field).collect();
    assert_eq!(fields, ["sku", "name", "price_cents"]);
}

#[test]
fn changing_the_price_emits_product_price_changed() {
    let shop =
        given([product_created("mug", 1299, 0)]).when(change_price("mug", 999)).then([price_changed("mug", 999)]);
    assert_eq!(shop.product(&sku("mug")).info().map(|info| info.price_cents), Some(price(999)));
}

#[test]
fn changing_the_price_of_a_missing_product_is_not_found() {
    given([]).when(change_price("mug", 999)).then_err(DomainError::ProductNotFound { sku: sku("mug") });
}

#[test]
fn changing_the_price_of_a_discontinued_product_is_rejected() {
    given([product_created("mug", 1299, 0), discontinued("mug")])
        .when(change_price("mug", 999))
        .then_err(DomainError::Discontinued { skus: skus(&["mug"]) });
}

#[test]
fn restocking_adds_to_the_stock() {
    let shop = given([product_created("mug", 1299, 2)]).when(restock("mug", 1)).then([restocked("mug", 1)]);
    assert_eq!(stock_of(&shop, "mug"), Some(3));
}

#[test]
fn restocking_by_the_most_allowed_is_accepted() {
    given([product_created("mug", 1299, 0)]).when(restock("mug", 1_000_000)).then([restocked("mug", 1_000_000)]);
}

#[test]
fn restocking_a_missing_product_is_not_found() {
    given([]).when(restock("mug", 1)).then_err(DomainError::ProductNotFound { sku: sku("mug") });
}

#[test]
fn restocking_a_discontinued_product_is_rejected() {
    given([product_created("mug", 1299, 0), discontinued("mug")])
        .when(restock("mug", 1))
        .then_err(DomainError::Discontinued { skus: skus(&["mug"]) });
}

#[test]
fn restocking_up_to_the_stock_limit_is_accepted_and_past_it_rejected() {
    let full = STOCK_MAX;
    given([product_created("mug", 1299, full - 1)]).when(restock("mug", 1)).then([restocked("mug", 1)]);
    given([product_created("mug", 1299, full - 1)]).when(restock("mug", 2)).then_err(DomainError::StockLimitExceeded {
        sku: sku("mug"),
        stock: full - 1,
        quantity: 2,
        stock_max: full,
    });
}

#[test]
fn discontinuing_emits_product_discontinued() {
    let shop = given([product_created("mug", 1299, 0)]).when(discontinue("mug")).then([discontinued("mug")]);
    assert!(matches!(shop.product(&sku("mug")), Product::Discontinued(_)));
}

#[test]
fn discontinuing_twice_is_rejected() {
    given([product_created("mug", 1299, 0), discontinued("mug")])
        .when(discontinue("mug"))
        .then_err(DomainError::Discontinued { skus: skus(&["mug"]) });
}

#[test]
fn discontinuing_a_missing_product_is_not_found() {
    given([]).when(discontinue("mug")).then_err(DomainError::ProductNotFound { sku: sku("mug") });
}

#[test]
fn stock_is_initial_plus_restocks_minus_reservations_plus_releases() {
    let shop = given([
        product_created("mug", 1299, 5),
        restocked("mug", 10),
        reserved("mug", order(1), 4),
        reserved("mug", order(2), 6),
        released("mug", order(1), 4),
    ])
    .state();
    assert_eq!(stock_of(&shop, "mug"), Some(5 + 10 - 4 - 6 + 4));
}

#[test]
fn a_discontinued_product_keeps_its_stock_and_takes_releases() {
    let shop = given([
        product_created("mug", 1299, 5),
        reserved("mug", order(1), 2),
        discontinued("mug"),
        released("mug", order(1), 2),
    ])
    .state();
    assert_eq!(stock_of(&shop, "mug"), Some(5));
}
