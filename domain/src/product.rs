//! Product: one sku's catalog entry, price and stock (stream `product-<sku>`).
//!
//! Stock = initial stock + restocks − reservations + releases, and never goes
//! below zero: reservations are decided by [`crate::checkout`] and releases by
//! [`crate::order`] (cancel), both against this state.

use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::event::Event;
use crate::value::{OrderId, PriceCents, ProductName, Quantity, RestockQuantity, STOCK_MAX, Sku, Stock};

/// A product entered the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductCreated {
    pub sku: Sku,
    pub name: ProductName,
    pub price_cents: PriceCents,
    pub initial_stock: Stock,
}

/// A product's price was set (prices are taken at checkout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductPriceChanged {
    pub sku: Sku,
    pub price_cents: PriceCents,
}

/// Stock arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductRestocked {
    pub sku: Sku,
    pub quantity: RestockQuantity,
}

/// A product left the catalog for good: it can no longer be added to carts or
/// checked out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductDiscontinued {
    pub sku: Sku,
}

/// Stock was set aside for an order at checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReserved {
    pub sku: Sku,
    pub order_id: OrderId,
    pub quantity: Quantity,
}

/// Stock reserved by an order came back because the order was cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReleased {
    pub sku: Sku,
    pub order_id: OrderId,
    pub quantity: Quantity,
}

/// The events of a product stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductEvent {
    Created(ProductCreated),
    PriceChanged(ProductPriceChanged),
    Restocked(ProductRestocked),
    Discontinued(ProductDiscontinued),
    StockReserved(StockReserved),
    StockReleased(StockReleased),
}

impl ProductEvent {
    /// The sku whose stream this event belongs to.
    pub fn sku(&self) -> &Sku {
        match self {
            ProductEvent::Created(event) => &event.sku,
            ProductEvent::PriceChanged(event) => &event.sku,
            ProductEvent::Restocked(event) => &event.sku,
            ProductEvent::Discontinued(event) => &event.sku,
            ProductEvent::StockReserved(event) => &event.sku,
            ProductEvent::StockReleased(event) => &event.sku,
        }
    }
}

/// What a product is once created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductInfo {
    pub sku: Sku,
    pub name: ProductName,
    pub price_cents: PriceCents,
    /// Units on hand and not reserved. A plain number rather than [`Stock`]:
    /// releases may lift it past [`STOCK_MAX`] (reserve, restock to the limit,
    /// cancel), which is harmless.
    pub stock: u32,
}

/// A product's state. `Product::default()` is the state before its first event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Product {
    #[default]
    Absent,
    Active(ProductInfo),
    Discontinued(ProductInfo),
}

impl Product {
    /// The product's details, whether active or discontinued.
    pub fn info(&self) -> Option<&ProductInfo> {
        match self {
            Product::Absent => None,
            Product::Active(info) | Product::Discontinued(info) => Some(info),
        }
    }

    pub fn is_active(&self) -> bool {
        matches!(self, Product::Active(_))
    }

    /// The active product named `sku`, or why it cannot be sold.
    pub(crate) fn sellable(&self, sku: &Sku) -> Result<&ProductInfo, DomainError> {
        match self {
            Product::Absent => Err(DomainError::ProductNotFound { sku: sku.clone() }),
            Product::Discontinued(_) => Err(DomainError::Discontinued { skus: vec![sku.clone()] }),
            Product::Active(info) => Ok(info),
        }
    }
}

/// What an admin can do to a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductCommand {
    /// Create a product; the API's optional initial stock arrives as [`Stock::ZERO`]
    /// when absent. The shell also appends with `NoStream`.
    Create {
        sku: Sku,
        name: ProductName,
        price_cents: PriceCents,
        initial_stock: Stock,
    },
    ChangePrice {
        sku: Sku,
        price_cents: PriceCents,
    },
    Restock {
        sku: Sku,
        quantity: RestockQuantity,
    },
    Discontinue {
        sku: Sku,
    },
}

impl ProductCommand {
    /// The sku whose stream the command goes to.
    pub fn sku(&self) -> &Sku {
        match self {
            ProductCommand::Create { sku, .. }
            | ProductCommand::ChangePrice { sku, .. }
            | ProductCommand::Restock { sku, .. }
            | ProductCommand::Discontinue { sku } => sku,
        }
    }
}

/// Decides a product command against the product's state.
///
/// A discontinued product takes no more price changes or restocks (decision: both
/// are pointless once it cannot be sold); discontinuing it again is refused too.
pub fn decide(product: &Product, command: &ProductCommand) -> Result<Vec<Event>, DomainError> {
    match command {
        ProductCommand::Create { sku, name, price_cents, initial_stock } => match product {
            Product::Absent => Ok(vec![
                ProductCreated {
                    sku: sku.clone(),
                    name: name.clone(),
                    price_cents: *price_cents,
                    initial_stock: *initial_stock,
                }
                .into(),
            ]),
            Product::Active(_) | Product::Discontinued(_) => {
                Err(DomainError::ProductAlreadyExists { sku: sku.clone() })
            }
        },
        ProductCommand::ChangePrice { sku, price_cents } => {
            product.sellable(sku)?;
            Ok(vec![ProductPriceChanged { sku: sku.clone(), price_cents: *price_cents }.into()])
        }
        ProductCommand::Restock { sku, quantity } => {
            let info = product.sellable(sku)?;
            if u64::from(info.stock) + u64::from(quantity.get()) > u64::from(STOCK_MAX) {
                return Err(DomainError::StockLimitExceeded {
                    sku: sku.clone(),
                    stock: info.stock,
                    quantity: quantity.get(),
                    stock_max: STOCK_MAX,
                });
            }
            Ok(vec![ProductRestocked { sku: sku.clone(), quantity: *quantity }.into()])
        }
        ProductCommand::Discontinue { sku } => {
            product.sellable(sku)?;
            Ok(vec![ProductDiscontinued { sku: sku.clone() }.into()])
        }
    }
}

/// Applies one event. Total: an event that does not fit the state (which `decide`
/// never emits) leaves it unchanged. Stock arithmetic saturates for the same reason.
pub fn evolve(product: Product, event: &ProductEvent) -> Product {
    match (product, event) {
        (Product::Absent, ProductEvent::Created(created)) => Product::Active(ProductInfo {
            sku: created.sku.clone(),
            name: created.name.clone(),
            price_cents: created.price_cents,
            stock: created.initial_stock.get(),
        }),
        (Product::Active(info), ProductEvent::Discontinued(_)) => Product::Discontinued(info),
        (product, event) => map_info(product, |info| match event {
            ProductEvent::PriceChanged(changed) => info.price_cents = changed.price_cents,
            ProductEvent::Restocked(restocked) => info.stock = info.stock.saturating_add(restocked.quantity.get()),
            ProductEvent::StockReserved(reserved) => info.stock = info.stock.saturating_sub(reserved.quantity.get()),
            ProductEvent::StockReleased(released) => info.stock = info.stock.saturating_add(released.quantity.get()),
            ProductEvent::Created(_) | ProductEvent::Discontinued(_) => {}
        }),
    }
}

fn map_info(product: Product, change: impl FnOnce(&mut ProductInfo)) -> Product {
    match product {
        Product::Absent => Product::Absent,
        Product::Active(mut info) => {
            change(&mut info);
            Product::Active(info)
        }
        Product::Discontinued(mut info) => {
            change(&mut info);
            Product::Discontinued(info)
        }
    }
}
