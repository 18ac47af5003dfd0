//! The read side of shoplog: read models built from the log, and the runtime
//! that keeps them up to date.
//!
//! Each read model is a pure `apply(records, envelope, event) -> Changes` (its
//! current records in, the writes for one event out) plus typed queries. The
//! records `apply` puts stay typed until their batch is written, so a record
//! changed by many events of a batch is encoded once; an index derived from a
//! record (the dashboard's stock and sales rankings) is written with the record
//! by the runtime and replay, not by `apply`. The models:
//!
//! | model | queries |
//! |---|---|
//! | [`catalog`] | [`Catalog::get`], [`Catalog::page`] (sku order, cursor = last sku) |
//! | [`carts`] | [`Carts::get`] (lines and totals at current prices) |
//! | [`orders`] | [`Orders::get`], [`Orders::page_for`], [`Orders::page_all`] (newest first) |
//! | [`dashboard`] | [`Dashboard::sales`], [`Dashboard::sales_with`] |
//!
//! [`Projections::start`] spawns the live worker on the current tokio runtime. It
//! subscribes to the log after the lowest checkpoint of the models, reads and
//! decodes each batch of committed events once, applies it to every model (each
//! from its own checkpoint) and writes all their changes and new checkpoints as
//! one redo, then key by key (`redo`: a crash keeps the batch whole or not at
//! all), so a crash never applies an event twice or skips one. A
//! rebuild has a worker of its own until its generation serves (a generation
//! being rebuilt, which a crash throws away whole, writes key by key).
//! Every query answers an [`Answer`] with the position the model had reached (for
//! `X-Projection-Position`); `wait_for(P, timeout)` on a model's handle, or on
//! [`Projections`] for all of them, waits for `?min_position=P`.
//! [`Projections::rebuild`] builds a model again from position 0 into a new
//! generation of trees while the old one serves, and switches once caught up.
//! [`Projections::status`] gives each model's checkpoint, lag and rebuild.
//!
//! ```no_run
//! # async fn example(log: store::EventLog, sku: domain::Sku) -> Result<(), projections::ProjectionError> {
//! use std::time::Duration;
//! let projections = projections::Projections::start(log)?;
//! projections.catalog().wait_for(42, Duration::from_secs(5)).await?;
//! let answer = projections.catalog().get(&sku)?; // answer.position >= 42
//! projections.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! This crate never writes to the log, never holds the whole log in memory
//! (workers read it in bounded chunks and batches), never lets a query see a
//! position the log has not made durable, and never applies events out of order:
//! an event it cannot decode stops the model, with the error in its status.

pub mod carts;
pub mod catalog;
pub mod dashboard;
mod error;
pub mod orders;
pub mod records;
mod redo;
pub mod replay;
mod runtime;

pub use carts::{CartLineView, CartView, Carts};
pub use catalog::{Catalog, ProductStatus, ProductView};
pub use dashboard::{Dashboard, DayView, LowStock, OrdersByStatus, SalesQuery, SalesView, TopProduct};
pub use error::ProjectionError;
pub use orders::{OrderView, Orders};
pub use records::{Changes, Envelope, MemoryRecords, Records};
pub use replay::{
    CheckpointStatus, ReplayError, ReplayOptions, ReplayReport, ReplayedModel, checkpoints, replay, replay_with,
};
pub use runtime::{
    Answer, ApplyFn, Dump, MODELS, Options, PAGE_LEN_MAX, Page, ProjectionStatus, Projections, RebuildGate,
    RebuildStatus,
};
