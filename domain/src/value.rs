//! Validated values: ids, skus, names, emails, money and quantities. Each can hold
//! only a value that passed its rule, whether it was built by `parse`/`new` or by
//! deserializing (`#[serde(try_from = …)]`), so a decision never re-checks them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ValidationError;

/// The longest sku, in characters.
pub const SKU_LEN_MAX: usize = 64;
/// The longest product or customer name, in characters, after trimming.
pub const NAME_LEN_MAX: usize = 200;
/// The longest email address, in characters.
pub const EMAIL_LEN_MAX: usize = 254;
/// The shortest password, in characters.
pub const PASSWORD_LEN_MIN: usize = 8;
/// The longest password, in characters.
pub const PASSWORD_LEN_MAX: usize = 128;
/// The longest password hash (a PHC string from the shell), in bytes.
pub const PASSWORD_HASH_LEN_MAX: usize = 512;
/// The length of an [`EmailKey`]: 32 bytes in lowercase hex.
pub const EMAIL_KEY_LEN: usize = 64;
/// The lowest price.
pub const PRICE_CENTS_MIN: i64 = 1;
/// The highest price (one million in the shop's currency).
pub const PRICE_CENTS_MAX: i64 = 100_000_000;
/// The largest quantity of one cart line (and so of one order line).
pub const QUANTITY_MAX: u32 = 99;
/// The largest single restock.
pub const RESTOCK_QUANTITY_MAX: u32 = 1_000_000;
/// The largest stock a product may hold, through its initial stock or restocks.
pub const STOCK_MAX: u32 = 1_000_000_000;

/// Implements the accessors shared by every text value: `as_str`, `Display`,
/// `AsRef<str>`, `FromStr` and the `String` conversions serde goes through.
/// The type provides `fn checked(text: String) -> Result<Self, ValidationError>`.
macro_rules! text_value {
    ($name:ident) => {
        text_value!($name, checked);
    };
    // `$entered`: the rule for a value a client enters, where it is stricter
    // than the one a value read back from the log must meet (`checked`).
    ($name:ident, $entered:ident) => {
        impl $name {
            /// Validate `text` (see the type's rule).
            pub fn parse(text: &str) -> Result<Self, ValidationError> {
                Self::$entered(text.to_owned())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;

            fn from_str(text: &str) -> Result<Self, ValidationError> {
                Self::parse(text)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;

            fn try_from(text: String) -> Result<Self, ValidationError> {
                Self::checked(text)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}

/// Implements `get`, `Display` and the conversions serde goes through for a
/// number value. The type provides `pub fn new(value) -> Result<Self, ValidationError>`.
macro_rules! number_value {
    ($name:ident, $number:ty) => {
        impl $name {
            pub const fn get(self) -> $number {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl TryFrom<$number> for $name {
            type Error = ValidationError;

            fn try_from(value: $number) -> Result<Self, ValidationError> {
                Self::new(value)
            }
        }

        impl From<$name> for $number {
            fn from(value: $name) -> $number {
                value.0
            }
        }
    };
}

/// Implements `new`, `parse`, `get` and `Display` for a uuid id.
macro_rules! uuid_id {
    ($name:ident, $field:literal) => {
        impl $name {
            pub const fn new(id: Uuid) -> Self {
                Self(id)
            }

            /// Any form `Uuid::parse_str` reads (hyphenated, simple, braced, urn).
            pub fn parse(text: &str) -> Result<Self, ValidationError> {
                Uuid::parse_str(text).map(Self).map_err(|_| ValidationError::new($field, "must be a uuid"))
            }

            pub const fn get(self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }
    };
}

/// A product's stock-keeping unit: 1–64 characters of `A-Z a-z 0-9 _ -`.
/// It names the product's stream, so it can never hold anything else.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sku(String);

impl Sku {
    fn checked(text: String) -> Result<Self, ValidationError> {
        let allowed = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-';
        if text.is_empty() || text.len() > SKU_LEN_MAX || !text.bytes().all(allowed) {
            return Err(ValidationError::new(
                "sku",
                format!("must be 1 to {SKU_LEN_MAX} characters of A-Z, a-z, 0-9, _ and -"),
            ));
        }
        Ok(Self(text))
    }
}

text_value!(Sku);

/// Trims `text` and checks it is 1–200 characters without control characters.
fn checked_name(field: &'static str, text: String) -> Result<String, ValidationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(ValidationError::new(field, "must not be blank"));
    }
    if trimmed.chars().count() > NAME_LEN_MAX {
        return Err(ValidationError::new(field, format!("must be 1 to {NAME_LEN_MAX} characters")));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ValidationError::new(field, "must not contain control characters"));
    }
    if trimmed.len() == text.len() { Ok(text) } else { Ok(trimmed.to_owned()) }
}

/// A name as a client enters it: [`checked_name`], and no text-direction
/// controls (which turn the text around the name about on every page that
/// shows it), and something visible. A name read back from the log meets
/// [`checked_name`] alone, so that an event recorded before this rule decodes.
fn entered_name(field: &'static str, text: String) -> Result<String, ValidationError> {
    let name = checked_name(field, text)?;
    if name.chars().any(|c| among(c, &DIRECTION_CONTROLS)) {
        return Err(ValidationError::new(
            field,
            "must not contain text-direction controls (U+202A to U+202E, U+2066 to U+2069)",
        ));
    }
    if name.chars().all(|c| c.is_whitespace() || among(c, &INVISIBLE)) {
        return Err(ValidationError::new(field, "must not be blank"));
    }
    Ok(name)
}

/// The text-direction controls (embeddings, overrides, isolates), as ranges,
/// which a name may not hold.
pub const DIRECTION_CONTROLS: [(char, char); 2] = [('\u{202A}', '\u{202E}'), ('\u{2066}', '\u{2069}')];

/// Characters that show nothing of their own, as ranges: zero-width spaces,
/// joiners and marks, the word joiner, the byte-order mark, variation selectors,
/// the soft hyphen and the Hangul fillers. A name must hold something else.
/// (All in the Basic Multilingual Plane: the API's schema writes them `\uXXXX`.)
pub const INVISIBLE: [(char, char); 10] = [
    ('\u{00AD}', '\u{00AD}'),
    ('\u{034F}', '\u{034F}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{180B}', '\u{180F}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{FE00}', '\u{FE0F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFA0}', '\u{FFA0}'),
];

fn among(c: char, ranges: &[(char, char)]) -> bool {
    ranges.iter().any(|(first, last)| (*first..=*last).contains(&c))
}

/// A product's display name: 1–200 characters once trimmed (it is stored trimmed),
/// no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProductName(String);

impl ProductName {
    fn checked(text: String) -> Result<Self, ValidationError> {
        checked_name("name", text).map(Self)
    }

    fn entered(text: String) -> Result<Self, ValidationError> {
        entered_name("name", text).map(Self)
    }
}

text_value!(ProductName, entered);

/// A customer's name: the same rule as [`ProductName`]. Personal data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerName(String);

impl CustomerName {
    fn checked(text: String) -> Result<Self, ValidationError> {
        checked_name("name", text).map(Self)
    }

    fn entered(text: String) -> Result<Self, ValidationError> {
        entered_name("name", text).map(Self)
    }
}

text_value!(CustomerName, entered);

/// An email address that looks valid: at most 254 characters, no whitespace or
/// control characters, exactly one `@`, a non-empty local part and a domain with a
/// dot (not at either end, never two in a row). The text is kept as given;
/// uniqueness goes by [`Email::normalized`]. Personal data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    fn checked(text: String) -> Result<Self, ValidationError> {
        if text.chars().count() > EMAIL_LEN_MAX {
            return Err(ValidationError::new("email", format!("must be at most {EMAIL_LEN_MAX} characters")));
        }
        let looks_valid = !text.chars().any(|c| c.is_whitespace() || c.is_control())
            && text.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains("..")
            });
        if !looks_valid {
            return Err(ValidationError::new("email", "must be an email address such as name@example.com"));
        }
        Ok(Self(text))
    }

    /// The address lowercased letter by letter, its final sigma `ς` as `σ`, and
    /// in Unicode's composed form (NFC): what the shell hashes into the
    /// [`EmailKey`], so two spellings of one address claim the same stream,
    /// whether they differ in case or in how an accented letter is encoded (`é`
    /// as one code point or as `e` and a combining accent, which look the same
    /// to the customer typing it). Letter by letter, because `str::to_lowercase`
    /// makes a capital `Σ` that ends a word `ς`, so `ΑΣ@…` and `ασ@…` would be two
    /// addresses. (`ß` and `ss` stay two: only full case folding joins them.)
    /// An ASCII address is only lowercased.
    pub fn normalized(&self) -> String {
        let lower: String =
            self.0.chars().flat_map(char::to_lowercase).map(|c| if c == 'ς' { 'σ' } else { c }).collect();
        composed(lower)
    }

    /// What [`Email::normalized`] may have made of this address, in one of its
    /// spellings, before it went letter by letter: `str::to_lowercase` kept a
    /// typed `ς` and made a capital `Σ` that ends a word `ς`, so each `σ` of
    /// the address may have been either (`ΑΣ@…` and `ας@…` were `ας@…`, `ασ@…`
    /// was `ασ@…`). Every such form but [`Email::normalized`] itself, the
    /// first six sigmas varied (at most 63): a claim made then is found under
    /// one of their keys, whichever spelling comes now.
    pub fn normalized_before_folding(&self) -> Vec<String> {
        let normalized = self.normalized();
        let sigmas: Vec<usize> =
            normalized.char_indices().filter(|(_, c)| *c == 'σ').map(|(at, _)| at).take(SIGMAS_VARIED_MAX).collect();
        (1..1usize << sigmas.len())
            .map(|finals| {
                let mut before = normalized.clone();
                for (bit, at) in sigmas.iter().enumerate() {
                    if finals & (1 << bit) != 0 {
                        // `σ` and `ς` are two bytes each in UTF-8.
                        before.replace_range(*at..*at + 'σ'.len_utf8(), "ς");
                    }
                }
                before
            })
            .collect()
    }
}

/// How many of an address's sigmas [`Email::normalized_before_folding`] varies.
const SIGMAS_VARIED_MAX: usize = 6;

/// `text` in Unicode's composed form (NFC).
fn composed(text: String) -> String {
    match icu_normalizer::ComposingNormalizerBorrowed::new_nfc().normalize(&text) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(composed) => composed,
    }
}

text_value!(Email);

/// The name of an email claim stream: a keyed hash of [`Email::normalized`] as 64
/// lowercase hex characters. The shell computes it (the key is a secret the domain
/// never sees); the domain only carries it, so no address sits in a stream name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailKey(String);

impl EmailKey {
    fn checked(text: String) -> Result<Self, ValidationError> {
        let hex = |byte: u8| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte);
        if text.len() != EMAIL_KEY_LEN || !text.bytes().all(hex) {
            return Err(ValidationError::new("email_key", format!("must be {EMAIL_KEY_LEN} lowercase hex characters")));
        }
        Ok(Self(text))
    }
}

text_value!(EmailKey);

/// A password as the customer typed it: 8–128 characters. It is never serialized
/// and never printed (`Debug` shows `[redacted]`, there is no `Display`); the shell
/// hashes it into a [`PasswordHash`] and drops it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        let len = text.chars().count();
        if !(PASSWORD_LEN_MIN..=PASSWORD_LEN_MAX).contains(&len) {
            return Err(ValidationError::new(
                "password",
                format!("must be {PASSWORD_LEN_MIN} to {PASSWORD_LEN_MAX} characters"),
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// The secret itself, for the hasher only.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A password hash computed by the shell (argon2id, PHC string): non-empty, at most
/// 512 bytes, no whitespace. Stored in `CustomerRegistered`, so it serializes, but
/// `Debug` shows `[redacted]` and there is no `Display`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PasswordHash(String);

impl PasswordHash {
    const REDACTED: &'static str = "[redacted]";

    pub fn new(hash: String) -> Result<Self, ValidationError> {
        if hash.is_empty()
            || hash.len() > PASSWORD_HASH_LEN_MAX
            || hash.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ValidationError::new(
                "password_hash",
                format!("must be 1 to {PASSWORD_HASH_LEN_MAX} bytes without whitespace"),
            ));
        }
        Ok(Self(hash))
    }

    /// The placeholder that replaces a hash in every outward form of an event
    /// (see [`crate::Event::without_secrets`]).
    pub fn redacted() -> Self {
        Self(Self::REDACTED.to_owned())
    }

    /// The hash itself, for the verifier only.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::REDACTED)
    }
}

impl TryFrom<String> for PasswordHash {
    type Error = ValidationError;

    fn try_from(hash: String) -> Result<Self, ValidationError> {
        Self::new(hash)
    }
}

impl From<PasswordHash> for String {
    fn from(hash: PasswordHash) -> String {
        hash.0
    }
}

/// An amount of money in integer cents of the deployment's one currency. Any
/// value (a payment may be wrong); prices are [`PriceCents`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cents(i64);

impl Cents {
    pub const ZERO: Cents = Cents(0);

    pub const fn new(cents: i64) -> Self {
        Self(cents)
    }

    pub const fn get(self) -> i64 {
        self.0
    }

    /// Sums never wrap: amounts in the shop stay far below `i64::MAX` (50 lines of
    /// 99 at the highest price is about 5 × 10¹¹), and a sum that would wrap sticks.
    pub const fn saturating_add(self, other: Cents) -> Cents {
        Cents(self.0.saturating_add(other.0))
    }
}

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<PriceCents> for Cents {
    fn from(price: PriceCents) -> Cents {
        Cents(price.0)
    }
}

/// A unit price: 1–100,000,000 cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct PriceCents(i64);

impl PriceCents {
    pub fn new(cents: i64) -> Result<Self, ValidationError> {
        if !(PRICE_CENTS_MIN..=PRICE_CENTS_MAX).contains(&cents) {
            return Err(ValidationError::new("price_cents", format!("must be {PRICE_CENTS_MIN} to {PRICE_CENTS_MAX}")));
        }
        Ok(Self(cents))
    }

    /// The price of `quantity` units; cannot overflow (at most 99 × 10⁸).
    pub const fn times(self, quantity: Quantity) -> Cents {
        Cents(self.0 * quantity.0 as i64)
    }
}

number_value!(PriceCents, i64);

/// The quantity of one cart or order line: 1–99.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Quantity(u32);

impl Quantity {
    pub const MAX: Quantity = Quantity(QUANTITY_MAX);

    pub fn new(quantity: u32) -> Result<Self, ValidationError> {
        if !(1..=QUANTITY_MAX).contains(&quantity) {
            return Err(ValidationError::new("quantity", format!("must be 1 to {QUANTITY_MAX}")));
        }
        Ok(Self(quantity))
    }
}

number_value!(Quantity, u32);

/// How much one restock adds: 1–1,000,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct RestockQuantity(u32);

impl RestockQuantity {
    pub fn new(quantity: u32) -> Result<Self, ValidationError> {
        if !(1..=RESTOCK_QUANTITY_MAX).contains(&quantity) {
            return Err(ValidationError::new("quantity", format!("must be 1 to {RESTOCK_QUANTITY_MAX}")));
        }
        Ok(Self(quantity))
    }
}

number_value!(RestockQuantity, u32);

/// A stock level given in a command or event (a product's initial stock):
/// 0–1,000,000,000. Its field name is `initial_stock`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Stock(u32);

impl Stock {
    pub const ZERO: Stock = Stock(0);

    pub fn new(stock: u32) -> Result<Self, ValidationError> {
        if stock > STOCK_MAX {
            return Err(ValidationError::new("initial_stock", format!("must be 0 to {STOCK_MAX}")));
        }
        Ok(Self(stock))
    }
}

number_value!(Stock, u32);

/// Who a customer is, everywhere: the customer's and the cart's stream, and the
/// data subject of their personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CustomerId(Uuid);

uuid_id!(CustomerId, "customer_id");

/// An order's id; the shell draws it (uuid v7) and puts it in the checkout command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(Uuid);

uuid_id!(OrderId, "order_id");
