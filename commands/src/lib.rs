//! The write side of shoplog: the imperative shell around the domain's decisions.
//!
//! [`CommandService`] carries out every command the same way: load the streams the
//! command touches (each a fold of its events with the domain's `evolve`, kept in a
//! bounded cache of folded states so a load reads only the events it has not seen),
//! call the domain's decision, and append the events it emits, grouped by stream in
//! emitted order, in one atomic append with each stream's expected version. On a
//! version conflict it loads and decides again, a bounded number of times. With an
//! `expected` version from the caller (HTTP `If-Match`) the command's own stream
//! stays pinned at it: a mismatch there is [`CommandError::PreconditionFailed`],
//! never a retry; a conflict on another stream it touches (a product, in a
//! checkout with `If-Match` on the cart) is decided again like any other.
//!
//! Uniqueness lives in the log (DESIGN §5): a product is created with `NoStream`
//! on `product-<sku>`; a registration claims `email-<keyed hash>` in the same
//! append as the customer. Passwords are hashed (argon2id) on the blocking pool.
//! An idempotency key makes a command repeatable: a repeat gets the first
//! command's outcome, built from the events in the log.
//!
//! Main types: [`CommandService`] with its [`Options`], [`CommandContext`] (who,
//! why, idempotency), [`CommandOutcome`] (positions, stream versions and the events
//! written), [`CommandError`], [`CacheStats`], and [`codec`], the event ↔ envelope
//! glue the projections use too.
//!
//! ```no_run
//! use commands::{CommandContext, CommandError, CommandService};
//! use domain::{CustomerId, PriceCents, ProductName, Quantity, Sku, Stock};
//!
//! # async fn example(customer_id: CustomerId) -> Result<(), Box<dyn std::error::Error>> {
//! let log = store::EventLog::open("./data")?;
//! let service = CommandService::new(log)?;
//! let admin = CommandContext::new("admin");
//! let sku = Sku::parse("mug-1")?;
//! let created = service
//!     .create_product(&admin, sku.clone(), ProductName::parse("Mug")?, PriceCents::new(1299)?, Some(Stock::new(5)?), None)
//!     .await?;
//! assert_eq!((created.stream(), created.version()), ("product-mug-1", 1));
//!
//! let ctx = CommandContext::new(format!("customer:{customer_id}"));
//! service.add_cart_item(&ctx, customer_id, sku, Quantity::new(2)?, None).await?;
//! match service.checkout(&ctx, customer_id, None).await {
//!     Ok(outcome) => tracing::info!(order_id = ?outcome.order_id(), position = outcome.position(), "placed"),
//!     Err(CommandError::Domain(refusal)) => tracing::info!(kind = ?refusal.kind(), %refusal, "refused"),
//!     Err(error) => return Err(error.into()),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! This crate never speaks HTTP or JSON (no status codes, no field names: the API
//! maps [`CommandError`] to statuses), never decides a shop rule itself (the
//! domain does), never writes to the log except through one atomic append per
//! attempt, and never retries a command the caller pinned to a version.

mod cache;
pub mod codec;
mod error;
mod outcome;
mod password;
pub mod relay;
mod service;

pub use cache::CacheStats;
pub use error::CommandError;
pub use outcome::{CommandContext, CommandOutcome};
pub use password::PasswordStats;
pub use relay::{Relay, RelayOptions, RelayStatus};
pub use service::{
    CommandService, EMAIL_KEY_SECRET, Options, REQUEST_KEY_SECRET, email_key, email_keys_before_folding,
};
