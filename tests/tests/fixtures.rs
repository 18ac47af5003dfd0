//! Frozen bytes (DESIGN §3.8): the stored payload of every event type at its current
//! schema version lives in `tests/fixtures/events/<type>.v<version>.bin` and must keep
//! decoding to the same event, so a change that breaks old logs fails here.
//!
//! A new event type or version has no file yet: write it once with
//! `SHOPLOG_WRITE_FIXTURES=1 cargo nextest run fixtures`, review and commit it.
//! Existing files are never overwritten; an old version's file stays forever
//! (decoding it then needs the upcaster to the current version).

use std::path::PathBuf;

use domain::*;
use store::codec;
use uuid::Uuid;

fn sku(text: &str) -> Sku {
    Sku::parse(text).expect("literal sku")
}

fn customer() -> CustomerId {
    CustomerId::new(Uuid::from_u128(0x0197_0000_0000_7000_8000_0000_0000_0a11))
}

fn order() -> OrderId {
    OrderId::new(Uuid::from_u128(0x0197_0000_0000_7000_8000_0000_0000_0001))
}

fn email_key() -> EmailKey {
    EmailKey::parse(&"ab".repeat(32)).expect("literal key")
}

fn quantity(count: u32) -> Quantity {
    Quantity::new(count).expect("literal quantity")
}

fn price(cents: i64) -> PriceCents {
    PriceCents::new(cents).expect("literal price")
}

/// One event of every type, with fixed values.
fn samples() -> Vec<Event> {
    vec![
        ProductCreated {
            sku: sku("mug-01"),
            name: ProductName::parse("Blue mug").expect("literal name"),
            price_cents: price(1299),
            initial_stock: Stock::new(3).expect("literal stock"),
        }
        .into(),
        ProductPriceChanged { sku: sku("mug-01"), price_cents: price(999) }.into(),
        ProductRestocked { sku: sku("mug-01"), quantity: RestockQuantity::new(50).expect("literal quantity") }.into(),
        ProductDiscontinued { sku: sku("mug-01") }.into(),
        StockReserved { sku: sku("mug-01"), order_id: order(), quantity: quantity(2) }.into(),
        StockReleased { sku: sku("mug-01"), order_id: order(), quantity: quantity(2) }.into(),
        CustomerRegistered {
            customer_id: customer(),
            email: Email::parse("Ada@Example.com").expect("literal email"),
            name: CustomerName::parse("Ada Lovelace").expect("literal name"),
            password_hash: PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned())
                .expect("literal hash"),
        }
        .into(),
        CustomerForgotten { customer_id: customer() }.into(),
        EmailClaimed { email_key: email_key(), customer_id: customer() }.into(),
        EmailReleased { email_key: email_key(), customer_id: customer() }.into(),
        CartItemAdded { customer_id: customer(), sku: sku("mug-01"), quantity: quantity(2) }.into(),
        CartItemRemoved { customer_id: customer(), sku: sku("mug-01") }.into(),
        CartCheckedOut { customer_id: customer(), order_id: order() }.into(),
        OrderPlaced {
            order_id: order(),
            customer_id: customer(),
            lines: vec![
                OrderLine { sku: sku("mug-01"), quantity: quantity(2), unit_price_cents: price(1299) },
                OrderLine { sku: sku("tea_9"), quantity: quantity(1), unit_price_cents: price(250) },
            ],
            subtotal_cents: Cents::new(2848),
            shipping_cents: Cents::new(499),
            total_cents: Cents::new(3347),
        }
        .into(),
        OrderPaid { order_id: order(), amount_cents: Cents::new(3347) }.into(),
        OrderCancelled { order_id: order() }.into(),
        OrderShipped { order_id: order() }.into(),
    ]
}

fn fixture_path(event_type: &str, version: u16) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/events").join(format!("{event_type}.v{version}.bin"))
}

#[test]
fn every_current_event_type_has_a_sample() {
    let mut sampled: Vec<(&str, u16)> =
        samples().iter().map(|event| (event.event_type(), event.schema_version())).collect();
    let mut listed = EVENT_TYPES.to_vec();
    sampled.sort();
    listed.sort();
    assert_eq!(sampled, listed, "add a sample (and its frozen file) for every event type");
}

#[test]
fn frozen_payloads_of_every_event_type_still_decode() {
    let write = std::env::var("SHOPLOG_WRITE_FIXTURES").is_ok_and(|value| value == "1");
    for event in samples() {
        let (event_type, version) = (event.event_type(), event.schema_version());
        let path = fixture_path(event_type, version);
        let encoded = codec::encode(&event).expect("encodes");
        if !path.exists() {
            assert!(
                write,
                "no frozen bytes for {event_type} v{version} at {}: run with SHOPLOG_WRITE_FIXTURES=1 once",
                path.display()
            );
            std::fs::write(&path, &encoded).expect("writes the fixture");
        }
        let frozen = std::fs::read(&path).expect("reads the fixture");
        let decoded = codec::decode_seed(EventSeed { event_type, schema_version: version }, &frozen)
            .unwrap_or_else(|error| panic!("frozen {event_type} v{version} no longer decodes: {error}"));
        assert_eq!(decoded, event, "frozen {event_type} v{version} decodes to another value");
        assert_eq!(encoded, frozen, "{event_type} v{version} is now encoded differently from its frozen bytes");
    }
}

#[test]
fn every_frozen_file_names_a_known_type() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/events");
    for entry in std::fs::read_dir(&dir).expect("the fixtures dir exists") {
        let name = entry.expect("reads the dir").file_name().to_string_lossy().into_owned();
        let event_type = name.split('.').next().unwrap_or_default();
        assert!(
            EVENT_TYPES.iter().any(|(known, _)| *known == event_type),
            "{name} is a fixture of an unknown event type"
        );
    }
}

/// Every frozen version of every event type still reads, through a log opened as
/// the shop opens its logs (with `commands::codec::upcasters`), as the current
/// version of its type (DESIGN §3.8). Each type's frozen files run from version 1
/// to its current one: bumping a version without keeping the old one's bytes, or
/// without an upcaster from it, fails here.
#[tokio::test]
async fn every_frozen_version_reads_through_the_shops_upcasters() {
    let dir = tests::temp_dir();
    let log = store::EventLog::open_with(dir.path(), commands::codec::log_options()).expect("opens");
    let samples = samples();
    let mut read = 0;
    for (event_type, current) in EVENT_TYPES {
        for version in 1..=*current {
            let path = fixture_path(event_type, version);
            let frozen = std::fs::read(&path)
                .unwrap_or_else(|_| panic!("no frozen bytes of {event_type} v{version} at {}", path.display()));
            let stream = format!("fixture-{event_type}-{version}");
            let event = store::NewEvent {
                event_id: Uuid::now_v7(),
                event_type: (*event_type).to_owned(),
                schema_version: version,
                subject: None,
                payload: frozen,
            };
            let metadata = store::Metadata {
                actor: "test".to_owned(),
                correlation_id: Uuid::now_v7(),
                causation_id: Uuid::now_v7(),
            };
            let request =
                store::AppendRequest::single(&stream, store::ExpectedVersion::NoStream, vec![event], metadata);
            log.append(request).await.expect("appends");
            let recorded = log.read_stream(&stream, 1, 1).expect("reads").remove(0);
            let decoded = commands::codec::decode(&recorded)
                .unwrap_or_else(|error| panic!("frozen {event_type} v{version} no longer reads: {error}"))
                .expect("not forgotten");
            assert_eq!((decoded.event_type(), decoded.schema_version()), (*event_type, *current));
            if version == *current {
                assert!(samples.contains(&decoded), "frozen {event_type} v{version} reads as another value");
            }
            read += 1;
        }
    }
    assert!(read >= EVENT_TYPES.len(), "{read} frozen versions read");
}
