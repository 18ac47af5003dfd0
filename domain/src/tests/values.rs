//! Validated values and stream names, at both edges of every limit.

use uuid::Uuid;

use super::fixtures::*;
use crate::{
    Cents, CustomerId, CustomerName, DomainError, Email, EmailKey, OrderId, PasswordHash, PriceCents, ProductName,
    Quantity, RestockQuantity, Sku, Stock, StreamId, ValidationError, validate_all,
};

fn rejected<T: std::fmt::Debug>(result: Result<T, ValidationError>) -> ValidationError {
    result.expect_err("value should be rejected")
}

#[test]
fn a_sku_of_64_allowed_characters_is_accepted() {
    let text = format!("{}_-Az09", "a".repeat(58));
    assert_eq!(text.len(), 64);
    assert_eq!(Sku::parse(&text).map(|sku| sku.to_string()), Ok(text));
    assert!(Sku::parse("a").is_ok());
}

#[test]
fn a_sku_of_65_characters_or_none_is_rejected() {
    for text in ["a".repeat(65), String::new()] {
        let error = rejected(Sku::parse(&text));
        assert_eq!(error.field, "sku");
        assert_eq!(error.message, "must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -");
    }
}

#[test]
fn a_sku_with_other_characters_is_rejected() {
    for text in ["mug 1", "mug.1", "mug/1", "mugé", "mug\n", "@", "mug+1"] {
        rejected(Sku::parse(text));
    }
}

#[test]
fn names_of_200_characters_are_accepted() {
    assert!(ProductName::parse(&"n".repeat(200)).is_ok());
    assert!(CustomerName::parse(&"é".repeat(200)).is_ok(), "characters, not bytes");
    assert!(ProductName::parse("M").is_ok());
}

#[test]
fn names_of_201_characters_are_rejected() {
    let error = rejected(ProductName::parse(&"n".repeat(201)));
    assert_eq!((error.field, error.message.as_str()), ("name", "must be 1 to 200 characters"));
    rejected(CustomerName::parse(&"n".repeat(201)));
}

#[test]
fn blank_names_are_rejected() {
    for text in ["", "   ", "\t\n"] {
        assert_eq!(rejected(ProductName::parse(text)).message, "must not be blank");
        rejected(CustomerName::parse(text));
    }
}

#[test]
fn names_are_stored_trimmed_and_measured_after_trimming() {
    assert_eq!(ProductName::parse("  Mug  ").map(|name| name.to_string()), Ok("Mug".to_owned()));
    assert!(ProductName::parse(&format!("  {}  ", "n".repeat(200))).is_ok());
}

/// A name entered with a text-direction control, or with nothing visible, is
/// refused; one read back from the log (an event recorded before the rule) is not.
#[test]
fn names_entered_with_direction_controls_or_nothing_visible_are_rejected() {
    for text in ["a\u{202E}evil", "\u{2066}Mug\u{2069}"] {
        let error = rejected(ProductName::parse(text));
        assert_eq!(error.message, "must not contain text-direction controls (U+202A to U+202E, U+2066 to U+2069)");
        rejected(CustomerName::parse(text));
        let recorded: ProductName = serde_json::from_value(serde_json::json!(text)).expect("an earlier event's name");
        assert_eq!(recorded.as_str(), text);
    }
    for text in ["\u{200B}", " \u{FEFF}\u{200D} ", "\u{3164}"] {
        assert_eq!(rejected(CustomerName::parse(text)).message, "must not be blank");
    }
    // Joiners inside visible text are part of it (emoji sequences, some scripts).
    assert!(ProductName::parse("Mug \u{1F469}\u{200D}\u{1F4BB}").is_ok());
    assert!(CustomerName::parse("\u{0645}\u{06CC}\u{200C}\u{062E}\u{0648}\u{0627}\u{0647}\u{0645}").is_ok());
}

#[test]
fn names_with_control_characters_are_rejected() {
    rejected(ProductName::parse("Mug\u{0}"));
    rejected(CustomerName::parse("Al\nice"));
}

#[test]
fn prices_of_1_to_100_000_000_cents_are_accepted() {
    assert_eq!(PriceCents::new(1).map(PriceCents::get), Ok(1));
    assert_eq!(PriceCents::new(100_000_000).map(PriceCents::get), Ok(100_000_000));
}

#[test]
fn prices_of_0_or_100_000_001_cents_are_rejected() {
    for cents in [0, 100_000_001, -1, i64::MIN, i64::MAX] {
        let error = rejected(PriceCents::new(cents));
        assert_eq!((error.field, error.message.as_str()), ("price_cents", "must be 1 to 100000000"));
    }
}

#[test]
fn restocks_of_1_to_1_000_000_are_accepted() {
    assert!(RestockQuantity::new(1).is_ok());
    assert!(RestockQuantity::new(1_000_000).is_ok());
}

#[test]
fn restocks_of_0_or_1_000_001_are_rejected() {
    for quantity in [0, 1_000_001] {
        let error = rejected(RestockQuantity::new(quantity));
        assert_eq!((error.field, error.message.as_str()), ("quantity", "must be 1 to 1000000"));
    }
}

#[test]
fn line_quantities_of_1_to_99_are_accepted() {
    assert!(Quantity::new(1).is_ok());
    assert_eq!(Quantity::new(99), Ok(Quantity::MAX));
}

#[test]
fn initial_stock_may_be_zero_but_not_above_the_limit() {
    assert_eq!(Stock::new(0), Ok(Stock::ZERO));
    assert!(Stock::new(1_000_000_000).is_ok());
    assert_eq!(rejected(Stock::new(1_000_000_001)).field, "initial_stock");
}

#[test]
fn valid_looking_emails_are_accepted_and_kept_as_given() {
    for text in ["alice@example.com", "Alice.Liddell+shop@Mail.Example.org", "a@b.co", "o'neil@x.io"] {
        assert_eq!(Email::parse(text).map(|email| email.to_string()), Ok(text.to_owned()));
    }
}

#[test]
fn emails_compare_for_uniqueness_lowercased() {
    assert_eq!(email("Alice@Example.COM").normalized(), "alice@example.com");
    // Letter by letter: a capital sigma that ends a word is `σ` too, not `ς`.
    assert_eq!(email("ΑΣ@EXAMPLE.COM").normalized(), "ασ@example.com");
    assert_eq!(email("ας@example.com").normalized(), "ασ@example.com");
    assert_eq!(email("ΑΣ@EXAMPLE.COM").normalized_before_folding(), ["ας@example.com"]);
    assert_eq!(email("ασ@example.com").normalized_before_folding(), ["ας@example.com"]);
    // However the earlier binary saw it: each sigma either way, as typed.
    let mut forms = email("ΝΙΚΟΣ.ΠΑΠΠΑΣ@x.gr").normalized_before_folding();
    forms.sort();
    assert_eq!(forms, ["νικος.παππας@x.gr", "νικος.παππασ@x.gr", "νικοσ.παππας@x.gr"]);
    assert_eq!(email("aςb@x.gr").normalized_before_folding(), ["aςb@x.gr"]);
    assert_eq!(email("σσσσσσσσ@x.gr").normalized_before_folding().len(), 63, "six sigmas varied");
    assert!(email("Alice@Example.COM").normalized_before_folding().is_empty());
}

#[test]
fn emails_compare_for_uniqueness_in_one_unicode_form() {
    // `é` as one code point, and as `e` with a combining acute accent; `É` as `E` and the accent.
    let composed = email("ren\u{e9}@example.com").normalized();
    assert_eq!(composed, "ren\u{e9}@example.com");
    assert_eq!(email("rene\u{301}@example.com").normalized(), composed);
    assert_eq!(email("RENE\u{301}@EXAMPLE.COM").normalized(), composed);
    // The address itself is kept as given.
    assert_eq!(email("rene\u{301}@example.com").as_str(), "rene\u{301}@example.com");
}

#[test]
fn invalid_emails_are_rejected() {
    for text in [
        "",
        "alice",
        "alice@",
        "@example.com",
        "alice@example",
        "alice@@example.com",
        "alice@bob@example.com",
        "al ice@example.com",
        "alice@example.com ",
        "alice@.example.com",
        "alice@example.com.",
        "alice@example..com",
        "alice@exa\u{7}mple.com",
    ] {
        assert_eq!(rejected(Email::parse(text)).field, "email", "{text:?}");
    }
}

#[test]
fn emails_of_254_characters_are_accepted_and_255_rejected() {
    let domain = "@example.com";
    let longest = format!("{}{domain}", "a".repeat(254 - domain.len()));
    assert!(Email::parse(&longest).is_ok());
    let error = rejected(Email::parse(&format!("a{longest}")));
    assert_eq!(error.message, "must be at most 254 characters");
}

#[test]
fn email_keys_are_64_lowercase_hex_characters() {
    assert!(EmailKey::parse(&"0123456789abcdef".repeat(4)).is_ok());
    for text in ["0123456789ABCDEF".repeat(4), "a".repeat(63), "a".repeat(65), "g".repeat(64), String::new()] {
        assert_eq!(rejected(EmailKey::parse(&text)).field, "email_key");
    }
}

#[test]
fn password_hashes_must_be_non_empty_without_whitespace() {
    assert!(PasswordHash::new(String::new()).is_err());
    assert!(PasswordHash::new("a b".to_owned()).is_err());
    assert!(PasswordHash::new("h".repeat(513)).is_err());
    assert!(PasswordHash::new("h".repeat(512)).is_ok());
}

#[test]
fn ids_parse_any_uuid_form_and_print_hyphenated() {
    let uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    let id = CustomerId::parse("0123456789ABCDEF0123456789ABCDEF").expect("a uuid");
    assert_eq!(id.get(), uuid);
    assert_eq!(id.to_string(), "01234567-89ab-cdef-0123-456789abcdef");
    assert_eq!(rejected(OrderId::parse("nope")).field, "order_id");
}

#[test]
fn deserializing_cannot_bypass_validation() {
    assert!(serde_json::from_str::<Sku>("\"bad sku\"").is_err());
    assert!(serde_json::from_str::<Email>("\"nobody\"").is_err());
    assert!(serde_json::from_str::<PriceCents>("0").is_err());
    assert!(serde_json::from_str::<Quantity>("100").is_err());
    assert!(serde_json::from_str::<ProductName>("\"  \"").is_err());
    assert!(serde_json::from_str::<EmailKey>("\"ABC\"").is_err());
    assert!(serde_json::from_str::<PasswordHash>("\"\"").is_err());
    assert_eq!(serde_json::from_str::<Sku>("\"mug-1\"").ok(), Some(sku("mug-1")));
    assert_eq!(serde_json::from_str::<Cents>("-5").ok(), Some(Cents::new(-5)));
}

#[test]
fn deserializing_reports_the_broken_rule() {
    let error = serde_json::from_str::<Sku>("\"bad sku\"").expect_err("invalid sku");
    assert!(error.to_string().contains("sku: must be 1 to 64 characters"), "{error}");
}

#[test]
fn validate_all_returns_every_value_when_all_are_valid() {
    let (sku, quantity) = validate_all((Sku::parse("mug"), Quantity::new(2))).expect("both valid");
    assert_eq!((sku.as_str(), quantity.get()), ("mug", 2));
}

#[test]
fn validate_all_names_only_the_bad_fields() {
    let error = validate_all((Sku::parse("mug"), Quantity::new(0), Email::parse("x"))).expect_err("two bad");
    let DomainError::Validation(errors) = &error else { panic!("not a validation error: {error:?}") };
    let fields: Vec<&str> = errors.iter().map(|error| error.field).collect();
    assert_eq!(fields, ["quantity", "email"]);
}

#[test]
fn a_validation_error_can_be_renamed_to_the_clients_field() {
    let error = rejected(Stock::new(u32::MAX)).for_field("stock");
    assert_eq!(error.to_string(), "stock: must be 0 to 1000000000");
}

#[test]
fn stream_names_print_and_parse_back() {
    let cases = [
        (StreamId::Product(sku("mug-1")), "product-mug-1", "product"),
        (StreamId::Customer(alice()), "customer-00000000-0000-0000-0000-0000000a11ce", "customer"),
        (StreamId::Email(key(7)), &*format!("email-{}", key(7)), "email"),
        (StreamId::Cart(alice()), "cart-00000000-0000-0000-0000-0000000a11ce", "cart"),
        (StreamId::Order(order(1)), "order-00000000-0000-0000-0000-000000000001", "order"),
    ];
    for (stream, name, category) in cases {
        assert_eq!(stream.to_string(), name);
        assert_eq!(stream.category(), category);
        assert_eq!(StreamId::parse(name), Ok(stream));
    }
}

#[test]
fn bad_stream_names_are_rejected() {
    for name in [
        "",
        "product",
        "product-",
        "product-bad sku",
        "products-mug",
        "customer-nope",
        "customer-00000000000000000000000000000001",
        "cart-00000000-0000-0000-0000-0000000A11CE",
        "order-",
        "email-abc",
        "Order-00000000-0000-0000-0000-000000000001",
    ] {
        assert_eq!(rejected(StreamId::parse(name)).field, "stream", "{name:?}");
    }
}
