//! shoplog's one integration-test binary. One module per area.

mod api;
mod cli;
mod commands;
mod dashboard;
mod fixtures;
mod projections;
mod relay;
mod replica;
mod store;
