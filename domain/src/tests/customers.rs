//! Customer rules: registration claims the email, forgetting releases it.

use super::fixtures::*;
use super::shop::Shop;
use super::spec::{given, given_on};
use crate::{
    Customer, DomainError, EmailClaim, EmailClaimCommand, ErrorKind, Event, OrderStatus, Password, customer,
    email_claim,
};

#[test]
fn registering_claims_the_email() {
    given([])
        .when(register(alice(), "alice@example.com", key(1)))
        .then([registered(alice(), "alice@example.com"), claimed(key(1), alice())]);
}

#[test]
fn a_registered_customer_holds_their_profile_and_claim() {
    let shop = given([])
        .when(register(alice(), "alice@example.com", key(1)))
        .then([registered(alice(), "alice@example.com"), claimed(key(1), alice())]);
    let Some(Customer::Registered(profile)) = shop.customers.get(&alice()) else {
        panic!("alice is not registered: {shop:?}");
    };
    assert_eq!(profile.email.as_str(), "alice@example.com");
    assert_eq!(shop.claims.get(&key(1)).and_then(EmailClaim::claimed_by), Some(alice()));
}

#[test]
fn registering_a_taken_email_is_rejected() {
    given([registered(alice(), "alice@example.com"), claimed(key(1), alice())])
        .when(register(bob(), "ALICE@example.com", key(1)))
        .then_err(DomainError::EmailTaken);
}

/// A log restored to a position before a forget keeps the forget (the key is
/// gone), not the release that went with it: the claim of a forgotten customer
/// holds nothing, and registering the address releases it first.
#[test]
fn an_email_still_claimed_by_a_forgotten_customer_is_released_and_claimed_again() {
    given([registered(alice(), "alice@example.com"), claimed(key(1), alice()), forgotten(alice())])
        .when(register(bob(), "alice@example.com", key(1)))
        .then([registered(bob(), "alice@example.com"), email_released(key(1), alice()), claimed(key(1), bob())]);
}

#[test]
fn a_taken_email_is_a_conflict() {
    assert_eq!(DomainError::EmailTaken.kind(), ErrorKind::Conflict);
}

#[test]
fn registering_an_existing_customer_id_is_rejected() {
    given([registered(alice(), "alice@example.com"), claimed(key(1), alice())])
        .when(register(alice(), "other@example.com", key(2)))
        .then_err(DomainError::CustomerAlreadyExists { customer_id: alice() });
}

#[test]
fn registering_the_email_one_already_holds_is_rejected_as_an_existing_customer() {
    // The customer check comes first, so the claim held by the same customer is
    // not what refuses it.
    given([registered(alice(), "alice@example.com"), claimed(key(1), alice())])
        .when(register(alice(), "alice@example.com", key(1)))
        .then_err(DomainError::CustomerAlreadyExists { customer_id: alice() });
}

#[test]
fn a_claimed_email_cannot_be_claimed_again_even_by_its_holder() {
    let claim = email_claim::evolve(EmailClaim::default(), &claimed_event(key(1), alice()));
    let again = EmailClaimCommand::Claim { email_key: key(1), customer_id: alice() };
    assert_eq!(email_claim::decide(&claim, &again), Err(DomainError::EmailTaken));
}

#[test]
fn registering_a_forgotten_customer_id_again_is_rejected() {
    given([forgotten(alice())])
        .when(register(alice(), "alice@example.com", key(1)))
        .then_err(DomainError::CustomerAlreadyExists { customer_id: alice() });
}

#[test]
fn forgetting_a_customer_releases_their_email() {
    given([registered(alice(), "alice@example.com"), claimed(key(1), alice())])
        .when(forget(alice(), key(1)))
        .then([forgotten(alice()), email_released(key(1), alice())]);
}

/// An unpaid order of a forgotten customer could never be paid or cancelled
/// again: forgetting cancels it and releases its stock. Paid, shipped and
/// cancelled orders, and other customers' orders, are left alone.
#[test]
fn forgetting_a_customer_cancels_their_unpaid_orders_only() {
    let shop = given([
        product_created("mug", 1000, 10),
        registered(alice(), "alice@example.com"),
        claimed(key(1), alice()),
        order_placed(order(1), alice(), &[("mug", 2, 1000)]),
        reserved("mug", order(1), 2),
        order_placed(order(2), alice(), &[("mug", 1, 1000)]),
        reserved("mug", order(2), 1),
        order_paid(order(2), 1499),
        order_placed(order(3), bob(), &[("mug", 3, 1000)]),
        reserved("mug", order(3), 3),
        order_placed(order(4), alice(), &[("mug", 1, 1000)]),
        reserved("mug", order(4), 1),
        order_cancelled(order(4)),
        released("mug", order(4), 1),
    ])
    .when(forget(alice(), key(1)))
    .then([
        forgotten(alice()),
        email_released(key(1), alice()),
        order_cancelled(order(1)),
        released("mug", order(1), 2),
    ]);
    assert_eq!(shop.order(order(2)).status(), Some(OrderStatus::Paid), "the paid order is the shop's to ship");
    assert_eq!(shop.order(order(3)).status(), Some(OrderStatus::Placed), "bob's order is bob's");
}

#[test]
fn a_forgotten_customer_cannot_check_out() {
    given([
        product_created("mug", 1000, 10),
        registered(alice(), "alice@example.com"),
        forgotten(alice()),
        item_added(alice(), "mug", 1),
    ])
    .when(checkout(alice(), order(1)))
    .then_err(DomainError::CustomerNotFound { customer_id: alice() });
}

#[test]
fn a_released_email_is_claimable_again() {
    given([
        registered(alice(), "alice@example.com"),
        claimed(key(1), alice()),
        forgotten(alice()),
        email_released(key(1), alice()),
    ])
    .when(register(bob(), "alice@example.com", key(1)))
    .then([registered(bob(), "alice@example.com"), claimed(key(1), bob())]);
}

#[test]
fn forgetting_leaves_an_email_claimed_by_someone_else_alone() {
    given([
        registered(alice(), "alice@example.com"),
        claimed(key(1), alice()),
        email_released(key(1), alice()),
        claimed(key(1), bob()),
    ])
    .when(forget(alice(), key(1)))
    .then([forgotten(alice())]);
}

#[test]
fn forgetting_twice_is_rejected() {
    given([registered(alice(), "alice@example.com"), forgotten(alice())])
        .when(forget(alice(), key(1)))
        .then_err(DomainError::CustomerAlreadyForgotten { customer_id: alice() });
}

#[test]
fn forgetting_an_unknown_customer_is_not_found() {
    given([]).when(forget(alice(), key(1))).then_err(DomainError::CustomerNotFound { customer_id: alice() });
}

#[test]
fn a_forgotten_customer_keeps_the_id_and_nothing_else() {
    let shop = given([registered(alice(), "alice@example.com"), forgotten(alice())]).state();
    assert_eq!(shop.customers.get(&alice()), Some(&Customer::Forgotten { customer_id: alice() }));
}

#[test]
fn a_shredded_registration_skipped_by_the_fold_still_ends_forgotten() {
    // The store reads a forgotten subject's `CustomerRegistered` without payload,
    // so the shell folds only the events it can read.
    let shop = given([forgotten(alice())]).state();
    assert_eq!(shop.customers.get(&alice()), Some(&Customer::Forgotten { customer_id: alice() }));
}

#[test]
fn a_forgetting_lost_to_a_restore_is_completed_and_a_recorded_one_is_not_repeated() {
    let forgotten_by_key = Customer::Forgotten { customer_id: alice() };
    // Restored to before the forget: the key is gone, the log records no forgetting.
    assert_eq!(customer::complete_forget(&forgotten_by_key, false, alice()), Ok(vec![forgotten(alice())]));
    assert_eq!(
        customer::complete_forget(&forgotten_by_key, true, alice()),
        Err(DomainError::CustomerAlreadyForgotten { customer_id: alice() })
    );
    assert_eq!(
        customer::complete_forget(&Customer::Unregistered, false, alice()),
        Err(DomainError::CustomerNotFound { customer_id: alice() })
    );
}

#[test]
fn only_the_holder_can_release_an_email_claim() {
    let claim = email_claim::evolve(EmailClaim::default(), &claimed_event(key(1), alice()));
    let release = EmailClaimCommand::Release { email_key: key(1), customer_id: bob() };
    assert_eq!(email_claim::decide(&claim, &release), Err(DomainError::EmailNotClaimed { customer_id: bob() }));
}

#[test]
fn an_unclaimed_email_cannot_be_released() {
    let release = EmailClaimCommand::Release { email_key: key(1), customer_id: alice() };
    assert_eq!(
        email_claim::decide(&EmailClaim::Unclaimed, &release),
        Err(DomainError::EmailNotClaimed { customer_id: alice() })
    );
}

#[test]
fn a_claim_remembers_who_released_it() {
    let shop = given_on::<Shop>([claimed(key(1), alice()), email_released(key(1), alice())]).state();
    assert_eq!(shop.claims.get(&key(1)), Some(&EmailClaim::Released { email_key: key(1), customer_id: alice() }));
}

#[test]
fn customer_evolve_ignores_a_second_registration() {
    let first = customer_event(registered(alice(), "alice@example.com"));
    let second = customer_event(registered(alice(), "other@example.com"));
    let once = customer::evolve(Customer::default(), &first);
    assert_eq!(customer::evolve(once.clone(), &second), once);
}

#[test]
fn passwords_of_8_to_128_characters_are_accepted() {
    assert!(Password::parse(&"p".repeat(8)).is_ok());
    assert!(Password::parse(&"p".repeat(128)).is_ok());
    assert!(Password::parse(&"é".repeat(128)).is_ok(), "characters, not bytes");
}

#[test]
fn passwords_of_7_or_129_characters_are_rejected() {
    for password in ["p".repeat(7), "p".repeat(129), String::new()] {
        let error = Password::parse(&password).expect_err("out of bounds");
        assert_eq!(error.field, "password");
        assert_eq!(error.message, "must be 8 to 128 characters");
    }
}

#[test]
fn a_password_never_prints() {
    let password = Password::parse("correct horse battery").expect("valid password");
    assert_eq!(format!("{password:?}"), "[redacted]");
    assert_eq!(format!("{:?}", password_hash()), "[redacted]");
    let registered = registered(alice(), "alice@example.com");
    assert!(!format!("{registered:?}").contains("argon2"));
}

fn claimed_event(email_key: crate::EmailKey, customer_id: crate::CustomerId) -> crate::EmailClaimEvent {
    match claimed(email_key, customer_id) {
        Event::EmailClaim(event) => event,
        other => panic!("not an email claim event: {other:?}"),
    }
}

fn customer_event(event: Event) -> crate::CustomerEvent {
    match event {
        Event::Customer(event) => event,
        other => panic!("not a customer event: {other:?}"),
    }
}
