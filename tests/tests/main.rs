//! shoplog's one integration-test binary. One module per area.

mod commands;
mod fixtures;
mod store;
