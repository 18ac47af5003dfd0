//! Errors: [`ValidationError`] for one bad field, [`DomainError`] for a refused
//! command, and [`ErrorKind`], which tells the HTTP layer what a refusal is.

use std::fmt;

use crate::order::OrderStatus;
use crate::value::{Cents, CustomerId, OrderId, Sku};

/// One field that broke its rule, e.g. `sku: must be 1 to 64 characters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// The field's name as clients send it (`sku`, `price_cents`, `email`, …).
    pub field: &'static str,
    /// What the field must be, lowercase, without a final full stop.
    pub message: String,
}

impl ValidationError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }

    /// The same error for another field name (e.g. `initial_stock` instead of `stock`).
    pub fn for_field(self, field: &'static str) -> Self {
        Self { field, ..self }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ValidationError {}

/// What a refusal is, so the HTTP layer can pick a status in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input breaks a rule on its own (422); see [`DomainError::field_errors`].
    Validation,
    /// The input is fine but the current state forbids the command (409).
    Conflict,
    /// The command names something that does not exist (404).
    NotFound,
}

/// Why a command was refused. Every decision returns this; none panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// One or more fields are invalid; all of them are named at once.
    #[error("invalid input: {}", join(.0))]
    Validation(Vec<ValidationError>),
    #[error("cart of customer {customer_id} is empty")]
    EmptyCart { customer_id: CustomerId },

    #[error("product {sku} already exists")]
    ProductAlreadyExists { sku: Sku },
    #[error("product {sku} does not exist")]
    ProductNotFound { sku: Sku },
    #[error("product discontinued: {}", join(.skus))]
    Discontinued { skus: Vec<Sku> },
    #[error("restocking product {sku} by {quantity} would take its stock of {stock} over {stock_max}")]
    StockLimitExceeded { sku: Sku, stock: u32, quantity: u32, stock_max: u32 },
    #[error("out of stock: {}", join(.skus))]
    OutOfStock { skus: Vec<Sku> },

    #[error("customer {customer_id} already exists")]
    CustomerAlreadyExists { customer_id: CustomerId },
    #[error("customer {customer_id} does not exist")]
    CustomerNotFound { customer_id: CustomerId },
    #[error("customer {customer_id} is already forgotten")]
    CustomerAlreadyForgotten { customer_id: CustomerId },
    /// The message names no email: it would put personal data in logs.
    #[error("email is already registered")]
    EmailTaken,
    #[error("email is not claimed by customer {customer_id}")]
    EmailNotClaimed { customer_id: CustomerId },

    #[error("cart has no line for product {sku}")]
    CartItemNotFound { sku: Sku },
    #[error("cart line for product {sku} would hold {quantity}, over {quantity_max}")]
    LineQuantityExceeded { sku: Sku, quantity: u32, quantity_max: u32 },
    #[error("cart already holds {lines_max} lines")]
    CartFull { lines_max: usize },

    #[error("order {order_id} does not exist")]
    OrderNotFound { order_id: OrderId },
    #[error("order {order_id} cannot go from {from} to {to}")]
    IllegalTransition { order_id: OrderId, from: OrderStatus, to: OrderStatus },
    #[error("order {order_id} costs {expected} cents, not {given}")]
    WrongAmount { order_id: OrderId, expected: Cents, given: Cents },
}

impl DomainError {
    /// What kind of refusal this is (→ 422, 409 or 404).
    pub fn kind(&self) -> ErrorKind {
        match self {
            DomainError::Validation(_) | DomainError::EmptyCart { .. } => ErrorKind::Validation,
            DomainError::ProductNotFound { .. }
            | DomainError::CustomerNotFound { .. }
            | DomainError::CartItemNotFound { .. }
            | DomainError::OrderNotFound { .. } => ErrorKind::NotFound,
            DomainError::ProductAlreadyExists { .. }
            | DomainError::Discontinued { .. }
            | DomainError::StockLimitExceeded { .. }
            | DomainError::OutOfStock { .. }
            | DomainError::CustomerAlreadyExists { .. }
            | DomainError::CustomerAlreadyForgotten { .. }
            | DomainError::EmailTaken
            | DomainError::EmailNotClaimed { .. }
            | DomainError::LineQuantityExceeded { .. }
            | DomainError::CartFull { .. }
            | DomainError::IllegalTransition { .. }
            | DomainError::WrongAmount { .. } => ErrorKind::Conflict,
        }
    }

    /// The `{field, message}` list of a validation refusal (empty for other kinds).
    pub fn field_errors(&self) -> Vec<ValidationError> {
        match self {
            DomainError::Validation(errors) => errors.clone(),
            DomainError::EmptyCart { .. } => vec![ValidationError::new("cart", "must not be empty")],
            _ => Vec::new(),
        }
    }
}

impl From<ValidationError> for DomainError {
    fn from(error: ValidationError) -> Self {
        DomainError::Validation(vec![error])
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Checks several fields at once and reports every bad one, not just the first:
///
/// ```
/// use domain::{validate_all, PriceCents, ProductName, Sku};
///
/// let error = validate_all((Sku::parse("no spaces"), ProductName::parse(" "), PriceCents::new(0)))
///     .unwrap_err();
/// let fields: Vec<_> = error.field_errors().iter().map(|e| e.field).collect();
/// assert_eq!(fields, ["sku", "name", "price_cents"]);
///
/// let (sku, name, price) =
///     validate_all((Sku::parse("mug-1"), ProductName::parse("Mug"), PriceCents::new(1299)))?;
/// assert_eq!((sku.as_str(), name.as_str(), price.get()), ("mug-1", "Mug", 1299));
/// # Ok::<(), domain::DomainError>(())
/// ```
pub fn validate_all<T: AllValid>(results: T) -> Result<T::Output, DomainError> {
    results.all_valid()
}

/// A tuple of field results (up to six) that [`validate_all`] can check together.
pub trait AllValid {
    type Output;
    fn all_valid(self) -> Result<Self::Output, DomainError>;
}

macro_rules! impl_all_valid {
    ($($type:ident $value:ident),+) => {
        impl<$($type),+> AllValid for ($(Result<$type, ValidationError>,)+) {
            type Output = ($($type,)+);

            fn all_valid(self) -> Result<Self::Output, DomainError> {
                let ($($value,)+) = self;
                let mut errors = Vec::new();
                $(
                    let $value = match $value {
                        Ok(value) => Some(value),
                        Err(error) => {
                            errors.push(error);
                            None
                        }
                    };
                )+
                match ($($value,)+) {
                    ($(Some($value),)+) => Ok(($($value,)+)),
                    _ => Err(DomainError::Validation(errors)),
                }
            }
        }
    };
}

impl_all_valid!(A a);
impl_all_valid!(A a, B b);
impl_all_valid!(A a, B b, C c);
impl_all_valid!(A a, B b, C c, D d);
impl_all_valid!(A a, B b, C c, D d, E e);
impl_all_valid!(A a, B b, C c, D d, E e, F f);
