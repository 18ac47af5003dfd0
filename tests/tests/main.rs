//! shoplog's one integration-test binary. One module per area.

mod fixtures;
mod store;
