//! The event registry and the stored form: names, versions, streams, subjects,
//! and the Serialize / EventSeed pair.

use std::collections::BTreeSet;

use serde::de::DeserializeSeed;
use serde_json::json;

use super::fixtures::*;
use crate::{CustomerEvent, EVENT_TYPES, Event, EventSeed, StreamId};

/// One event of every type.
fn one_of_each() -> Vec<Event> {
    vec![
        product_created("mug", 1299, 3),
        price_changed("mug", 999),
        restocked("mug", 5),
        discontinued("mug"),
        reserved("mug", order(1), 2),
        released("mug", order(1), 2),
        registered(alice(), "alice@example.com"),
        forgotten(alice()),
        claimed(key(1), alice()),
        email_released(key(1), alice()),
        item_added(alice(), "mug", 2),
        item_removed(alice(), "mug"),
        checked_out(alice(), order(1)),
        order_placed(order(1), alice(), &[("mug", 2, 1299), ("tea", 1, 250)]),
        order_paid(order(1), 2848),
        order_cancelled(order(1)),
        order_shipped(order(1)),
    ]
}

fn round_trip(event: &Event) -> Result<Event, serde_json::Error> {
    let json = serde_json::to_string(event)?;
    let seed = EventSeed { event_type: event.event_type(), schema_version: event.schema_version() };
    seed.deserialize(&mut serde_json::Deserializer::from_str(&json))
}

#[test]
fn every_event_type_is_listed_in_event_types() {
    let emitted: BTreeSet<(&str, u16)> =
        one_of_each().iter().map(|event| (event.event_type(), event.schema_version())).collect();
    let listed: BTreeSet<(&str, u16)> = EVENT_TYPES.iter().copied().collect();
    assert_eq!(emitted, listed);
    assert_eq!(listed.len(), EVENT_TYPES.len(), "EVENT_TYPES lists a type twice");
    assert_eq!(emitted.len(), one_of_each().len(), "the samples hold a type twice");
}

#[test]
fn stored_event_type_names_never_change() {
    let names: Vec<&str> = EVENT_TYPES.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        [
            "ProductCreated",
            "ProductPriceChanged",
            "ProductRestocked",
            "ProductDiscontinued",
            "StockReserved",
            "StockReleased",
            "CustomerRegistered",
            "CustomerForgotten",
            "EmailClaimed",
            "EmailReleased",
            "CartItemAdded",
            "CartItemRemoved",
            "CartCheckedOut",
            "OrderPlaced",
            "OrderPaid",
            "OrderCancelled",
            "OrderShipped",
        ]
    );
    assert!(EVENT_TYPES.iter().all(|(_, version)| *version == 1));
}

#[test]
fn every_event_reads_back_through_its_seed() {
    for event in one_of_each() {
        assert_eq!(round_trip(&event).ok(), Some(event.clone()), "{}", event.event_type());
    }
}

#[test]
fn an_event_serializes_as_its_struct_alone() {
    assert_eq!(serde_json::to_value(discontinued("mug")).ok(), Some(json!({ "sku": "mug" })));
    assert_eq!(
        serde_json::to_value(order_paid(order(1), 2848)).ok(),
        Some(json!({ "order_id": "00000000-0000-0000-0000-000000000001", "amount_cents": 2848 }))
    );
    assert_eq!(
        serde_json::to_value(product_created("mug", 1299, 3)).ok(),
        Some(json!({ "sku": "mug", "name": "Product mug", "price_cents": 1299, "initial_stock": 3 }))
    );
}

#[test]
fn an_unknown_event_type_or_version_is_an_error() {
    let json = serde_json::to_string(&discontinued("mug")).expect("serializes");
    for (event_type, schema_version) in [("ProductDeleted", 1), ("ProductDiscontinued", 2), ("ProductDiscontinued", 0)]
    {
        let seed = EventSeed { event_type, schema_version };
        let error = seed.deserialize(&mut serde_json::Deserializer::from_str(&json)).expect_err("unknown");
        assert!(error.to_string().contains(&format!("unknown event type {event_type} version {schema_version}")));
    }
}

#[test]
fn a_payload_of_another_type_is_an_error() {
    let json = serde_json::to_string(&discontinued("mug")).expect("serializes");
    let seed = EventSeed { event_type: "OrderPaid", schema_version: 1 };
    assert!(seed.deserialize(&mut serde_json::Deserializer::from_str(&json)).is_err());
}

#[test]
fn an_invalid_stored_value_is_an_error_not_a_bad_event() {
    let seed = EventSeed { event_type: "ProductDiscontinued", schema_version: 1 };
    assert!(seed.deserialize(&mut serde_json::Deserializer::from_str(r#"{"sku":"bad sku"}"#)).is_err());
}

#[test]
fn every_event_names_its_stream() {
    let streams: Vec<String> = one_of_each().iter().map(|event| event.stream().to_string()).collect();
    let product = "product-mug".to_owned();
    let customer = StreamId::Customer(alice()).to_string();
    let email = StreamId::Email(key(1)).to_string();
    let cart = StreamId::Cart(alice()).to_string();
    let order_stream = StreamId::Order(order(1)).to_string();
    let mut expected = vec![product; 6];
    expected.extend([customer.clone(), customer, email.clone(), email]);
    expected.extend(vec![cart; 3]);
    expected.extend(vec![order_stream; 4]);
    assert_eq!(streams, expected);
}

#[test]
fn only_a_registration_holds_personal_data() {
    for event in one_of_each() {
        let expected = match &event {
            Event::Customer(CustomerEvent::Registered(_)) => Some(alice().get()),
            _ => None,
        };
        assert_eq!(event.subject(), expected, "{}", event.event_type());
    }
}

#[test]
fn the_outward_form_hides_the_password_hash() {
    let outward = registered(alice(), "alice@example.com").without_secrets();
    let json = serde_json::to_value(&outward).expect("serializes");
    assert_eq!(json["password_hash"], json!("[redacted]"));
    assert_eq!(json["email"], json!("alice@example.com"));
    for event in one_of_each().into_iter().filter(|event| event.subject().is_none()) {
        assert_eq!(event.clone().without_secrets(), event);
    }
}

#[test]
fn an_event_displays_its_type_and_stream_only() {
    assert_eq!(product_created("mug", 1299, 3).to_string(), "ProductCreated on product-mug");
    assert!(!registered(alice(), "alice@example.com").to_string().contains("alice@"));
}
