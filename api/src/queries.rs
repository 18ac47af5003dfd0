//! The read side over HTTP: queries answered from the read models (never from the
//! log), each with `X-Projection-Position`; `?min_position=P` waits up to 5 s for
//! the model to reach P (read-your-writes: a command's response carries the
//! position to pass), else 503. And the projection admin routes.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use domain::{OrderId, OrderStatus, Sku};
use projections::{ProjectionError, ProjectionStatus};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Admin, AdminOrCustomer, Caller, Customer, Reader};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, NoQuery};
use crate::openapi;

/// How long `?min_position=` waits.
pub const MIN_POSITION_WAIT: Duration = Duration::from_secs(5);

/// The header that says which log position a query's answer reflects.
pub const PROJECTION_POSITION: &str = "x-projection-position";

impl From<ProjectionError> for ApiError {
    fn from(error: ProjectionError) -> Self {
        match error {
            error @ ProjectionError::Timeout { .. } => ApiError::Unavailable(error.to_string()),
            // Why it stopped (a storage or decoding error) is in the server's
            // log, not in an answer: a 5xx tells nothing internal.
            ProjectionError::Stopped { model, .. } => ApiError::Unavailable(stopped(model)),
            error @ ProjectionError::UnknownModel { .. } => ApiError::NotFound(error.to_string()),
            error @ ProjectionError::RebuildRunning { .. } => {
                ApiError::Conflict { detail: error.to_string(), skus: Vec::new() }
            }
            other => ApiError::internal(other),
        }
    }
}

/// What a 503 says of a read model that answers no query.
pub(crate) fn stopped(model: &str) -> String {
    format!(
        "read model {model} is stopped and answers no query: rebuild it (POST /admin/projections/{model}/rebuild) \
         or restart the server; the server's log says why"
    )
}

/// A query's answer: the body and the position it reflects.
fn answered<T: Serialize>(position: u64, body: T) -> Response {
    let mut response = Json(body).into_response();
    response.headers_mut().insert(PROJECTION_POSITION, HeaderValue::from(position));
    response
}

/// A read model's 404: what it lacks, with the position it lacked it at (it may
/// come with a later one), as an answer would have carried.
fn missing_at(position: u64, detail: String) -> Response {
    let mut response = ApiError::NotFound(detail).into_response();
    response.headers_mut().insert(PROJECTION_POSITION, HeaderValue::from(position));
    response
}

/// Wait for `min_position`, if one was asked for.
async fn reach(
    wait: impl std::future::Future<Output = Result<u64, ProjectionError>>,
    min_position: Option<u64>,
) -> Result<(), ApiError> {
    if min_position.is_some() {
        wait.await?;
    }
    Ok(())
}

/// A position a client can ask to wait for: one the log has. Every position this
/// server hands out is durable when it does, so one past the head is a mistake
/// (422 at once); a model still behind a real position is the 503 after waiting.
/// A read replica takes any position: the primary handed it out, and the
/// replica's copy may not have it yet (a client reads its own write there by
/// passing the command's position; the wait covers the copy too).
fn check_min_position(state: &AppState, min_position: Option<u64>) -> Result<u64, ApiError> {
    let head = state.log.head();
    match min_position {
        Some(position) if position > head && !state.is_replica() => {
            Err(ApiError::validation("min_position", format!("position {position} is past the log's head ({head})")))
        }
        position => Ok(position.unwrap_or(0)),
    }
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(50) {
        0 => Err(ApiError::validation("limit", "must be at least 1")),
        limit if limit > 1000 => Err(ApiError::validation("limit", "must be at most 1000")),
        limit => Ok(limit),
    }
}

// ---- catalog ----

/// A product as the catalog shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductJson {
    sku: String,
    name: String,
    price_cents: i64,
    /// Units in the shop: available plus reserved.
    on_hand: u32,
    /// Units held by placed or paid orders.
    reserved: u32,
    /// Units that can still be ordered.
    available: u32,
    /// `active` or `discontinued`.
    status: String,
    /// The ISO 4217 code of its amounts: the shop's one currency (`currency` setting).
    currency: String,
    /// The product stream's version this view is of (also the `ETag` of
    /// `GET /api/v1/products/{sku}`): sent as `If-Match`, a change applies only
    /// if nothing changed the product since (412 otherwise).
    version: u64,
}

impl ProductJson {
    fn new(view: projections::ProductView, currency: &str) -> Self {
        ProductJson {
            sku: view.sku.to_string(),
            name: view.name.to_string(),
            price_cents: view.price_cents.get(),
            on_hand: view.on_hand,
            reserved: view.reserved,
            available: view.available,
            status: view.status.as_str().to_owned(),
            currency: currency.to_owned(),
            version: view.version,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProductPage {
    items: Vec<ProductJson>,
    /// Pass as `after` for the next page; null on the last.
    next: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProductsQuery {
    /// The last sku of the previous page.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    after: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Wait (up to 5 s) until the catalog reflects this log position.
    /// Past that, 503. A position past the log's head (one no command was answered
    /// with) is 422 at once: waiting would not make it come (on a read replica it
    /// is waited for: the replica may not have copied it yet).
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    min_position: Option<u64>,
}

/// The catalog, in sku order, a page at a time.
#[utoipa::path(
    get, path = "/api/v1/products", tag = "catalog", params(ProductsQuery),
    responses(
        (status = 200, description = "A page of products", body = ProductPage, headers(("X-Projection-Position" = u64, description = "The log position the answer reflects"))),
        (status = 401, response = openapi::Unauthorized),
        (status = 422, response = openapi::Unprocessable),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn products(
    State(state): State<AppState>,
    _: Caller,
    ApiQuery(query): ApiQuery<ProductsQuery>,
) -> Result<Response, ApiError> {
    let min_position = check_min_position(&state, query.min_position)?;
    let limit = page_limit(query.limit)?;
    let after = query
        .after
        .as_deref()
        .map(Sku::parse)
        .transpose()
        .map_err(|error| ApiError::validation("after", error.message))?;
    let catalog = state.projections.catalog();
    reach(catalog.wait_for(min_position, MIN_POSITION_WAIT), query.min_position).await?;
    let answer = catalog.page(after.as_ref(), limit)?;
    let page = ProductPage {
        items: answer.value.items.into_iter().map(|view| ProductJson::new(view, &state.currency)).collect(),
        next: answer.value.next.map(|sku| sku.to_string()),
    };
    Ok(answered(answer.position, page))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Consistency {
    /// Wait (up to 5 s) until the read model reflects this log position.
    /// Past that, 503. A position past the log's head (one no command was answered
    /// with) is 422 at once: waiting would not make it come (on a read replica it
    /// is waited for: the replica may not have copied it yet).
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    min_position: Option<u64>,
}

/// One product.
#[utoipa::path(
    get, path = "/api/v1/products/{sku}", tag = "catalog",
    params(("sku" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$"), Consistency),
    responses(
        (status = 200, description = "The product", body = ProductJson, headers(
            ("X-Projection-Position" = u64, description = "The log position the answer reflects"),
            ("ETag" = String, description = "The product stream's version this view is of, quoted: send it as `If-Match`"),
        )),
        (status = 401, response = openapi::Unauthorized),
        (status = 404, response = openapi::ModelNotFound),
        (status = 422, response = openapi::Unprocessable),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn product(
    State(state): State<AppState>,
    _: Caller,
    ApiPath(sku): ApiPath<String>,
    ApiQuery(query): ApiQuery<Consistency>,
) -> Result<Response, ApiError> {
    let min_position = check_min_position(&state, query.min_position)?;
    let catalog = state.projections.catalog();
    reach(catalog.wait_for(min_position, MIN_POSITION_WAIT), query.min_position).await?;
    // A sku no product can have is missing as any other, at the model's position.
    let Ok(parsed) = Sku::parse(&sku) else {
        return Ok(missing_at(catalog.position(), format!("product {sku} not found")));
    };
    let answer = catalog.get(&parsed)?;
    let Some(product) = answer.value else {
        return Ok(missing_at(answer.position, format!("product {sku} not found")));
    };
    let etag = crate::routes::etag(product.version);
    let mut response = answered(answer.position, ProductJson::new(product, &state.currency));
    response.headers_mut().insert(axum::http::header::ETAG, etag);
    Ok(response)
}

// ---- cart ----

#[derive(Debug, Serialize, ToSchema)]
pub struct CartLineJson {
    sku: String,
    quantity: u32,
    /// Absent when the product is unknown to the catalog.
    unit_price_cents: Option<i64>,
    line_total_cents: i64,
    discontinued: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CartJson {
    customer_id: Uuid,
    lines: Vec<CartLineJson>,
    /// The lines that can be checked out: a `discontinued` line (which a checkout
    /// refuses until it is removed) is not counted here, nor in the shipping and total.
    subtotal_cents: i64,
    /// 499 when 0 < subtotal < 5000, else 0.
    shipping_cents: i64,
    total_cents: i64,
    /// The ISO 4217 code of its amounts: the shop's one currency (`currency` setting).
    currency: String,
}

/// The caller's cart with its totals.
#[utoipa::path(
    get, path = "/api/v1/cart", tag = "cart", security(("customer" = [])), params(Consistency),
    responses(
        (status = 200, description = "The cart", body = CartJson, headers(("X-Projection-Position" = u64, description = "The log position the answer reflects"))),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 422, response = openapi::Unprocessable),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn cart(
    State(state): State<AppState>,
    Customer(customer): Customer,
    ApiQuery(query): ApiQuery<Consistency>,
) -> Result<Response, ApiError> {
    let min_position = check_min_position(&state, query.min_position)?;
    let carts = state.projections.carts();
    reach(carts.wait_for(min_position, MIN_POSITION_WAIT), query.min_position).await?;
    let answer = carts.get(customer)?;
    let view = answer.value;
    let cart = CartJson {
        customer_id: view.customer_id.get(),
        lines: view
            .lines
            .into_iter()
            .map(|line| CartLineJson {
                sku: line.sku.to_string(),
                quantity: line.quantity.get(),
                unit_price_cents: line.unit_price_cents.map(|price| price.get()),
                line_total_cents: line.line_total_cents.get(),
                discontinued: line.discontinued,
            })
            .collect(),
        subtotal_cents: view.subtotal_cents.get(),
        shipping_cents: view.shipping_cents.get(),
        total_cents: view.total_cents.get(),
        currency: state.currency.to_string(),
    };
    Ok(answered(answer.position, cart))
}

// ---- orders ----

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderLineJson {
    sku: String,
    quantity: u32,
    unit_price_cents: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderJson {
    order_id: Uuid,
    customer_id: Uuid,
    lines: Vec<OrderLineJson>,
    subtotal_cents: i64,
    shipping_cents: i64,
    total_cents: i64,
    /// `placed`, `paid`, `shipped` or `cancelled`.
    status: String,
    placed_at: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
    shipped_at: Option<DateTime<Utc>>,
    cancelled_at: Option<DateTime<Utc>>,
    /// The ISO 4217 code of its amounts: the shop's one currency (`currency` setting).
    currency: String,
    /// The order stream's version: what `If-Match` on paying, cancelling or
    /// shipping it expects (also the single order's `ETag`).
    version: u64,
}

fn status_name(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::Placed => "placed",
        OrderStatus::Paid => "paid",
        OrderStatus::Shipped => "shipped",
        OrderStatus::Cancelled => "cancelled",
    }
}

impl OrderJson {
    fn new(view: projections::OrderView, currency: &str) -> Self {
        OrderJson {
            version: view.version(),
            order_id: view.order_id.get(),
            customer_id: view.customer_id.get(),
            lines: view
                .lines
                .into_iter()
                .map(|line| OrderLineJson {
                    sku: line.sku.to_string(),
                    quantity: line.quantity.get(),
                    unit_price_cents: line.unit_price_cents.get(),
                })
                .collect(),
            subtotal_cents: view.subtotal_cents.get(),
            shipping_cents: view.shipping_cents.get(),
            total_cents: view.total_cents.get(),
            status: status_name(view.status).to_owned(),
            placed_at: view.placed_at,
            paid_at: view.paid_at,
            shipped_at: view.shipped_at,
            cancelled_at: view.cancelled_at,
            currency: currency.to_owned(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    items: Vec<OrderJson>,
    /// Pass as `before` for the next (older) page; null on the last.
    next: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OrdersQuery {
    /// The `next` of the previous page.
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    before: Option<u64>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Wait (up to 5 s) until the orders model reflects this log position.
    /// Past that, 503. A position past the log's head (one no command was answered
    /// with) is 422 at once: waiting would not make it come (on a read replica it
    /// is waited for: the replica may not have copied it yet).
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    min_position: Option<u64>,
}

/// Orders, newest first: a customer's own, or every order for the admin.
#[utoipa::path(
    get, path = "/api/v1/orders", tag = "orders", security(("customer" = []), ("admin" = [])), params(OrdersQuery),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage, headers(("X-Projection-Position" = u64, description = "The log position the answer reflects"))),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 422, response = openapi::Unprocessable),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn orders(
    State(state): State<AppState>,
    reader: AdminOrCustomer,
    ApiQuery(query): ApiQuery<OrdersQuery>,
) -> Result<Response, ApiError> {
    let min_position = check_min_position(&state, query.min_position)?;
    let limit = page_limit(query.limit)?;
    if query.before.is_some_and(|before| before > i64::MAX as u64) {
        return Err(ApiError::validation("before", "must fit in an int64"));
    }
    let orders = state.projections.orders();
    reach(orders.wait_for(min_position, MIN_POSITION_WAIT), query.min_position).await?;
    let answer = match reader {
        AdminOrCustomer::Admin => orders.page_all(query.before, limit)?,
        AdminOrCustomer::Customer(customer) => orders.page_for(customer, query.before, limit)?,
    };
    let page = OrderPage {
        items: answer.value.items.into_iter().map(|view| OrderJson::new(view, &state.currency)).collect(),
        next: answer.value.next,
    };
    Ok(answered(answer.position, page))
}

/// One order: the caller's own, or any for the admin (another customer's is 404).
#[utoipa::path(
    get, path = "/api/v1/orders/{order_id}", tag = "orders", security(("customer" = []), ("admin" = [])),
    params(("order_id" = Uuid, Path), Consistency),
    responses(
        (status = 200, description = "The order", body = OrderJson, headers(
            ("X-Projection-Position" = u64, description = "The log position the answer reflects"),
            ("ETag" = String, description = "The order stream's version this view is of, quoted: send it as `If-Match`"),
        )),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::ModelNotFound),
        (status = 422, response = openapi::Unprocessable),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn order(
    State(state): State<AppState>,
    reader: AdminOrCustomer,
    ApiPath(order_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<Consistency>,
) -> Result<Response, ApiError> {
    let min_position = check_min_position(&state, query.min_position)?;
    let orders = state.projections.orders();
    reach(orders.wait_for(min_position, MIN_POSITION_WAIT), query.min_position).await?;
    let Ok(id) = OrderId::parse(&order_id) else {
        return Ok(missing_at(orders.position(), format!("order {order_id} not found")));
    };
    let answer = orders.get(id)?;
    // Another customer's order is missing too, in the same words, at the same position.
    let view = answer.value.filter(|view| match reader {
        AdminOrCustomer::Customer(customer) => view.customer_id == customer,
        AdminOrCustomer::Admin => true,
    });
    let Some(view) = view else {
        return Ok(missing_at(answer.position, format!("order {order_id} not found")));
    };
    let etag = crate::routes::etag(view.version());
    let mut response = answered(answer.position, OrderJson::new(view, &state.currency));
    response.headers_mut().insert(axum::http::header::ETAG, etag);
    Ok(response)
}

// ---- dashboard ----

#[derive(Debug, Serialize, ToSchema)]
pub struct OrdersByStatusJson {
    placed: u64,
    paid: u64,
    shipped: u64,
    cancelled: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DayJson {
    date: NaiveDate,
    orders: u64,
    revenue_cents: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopProductJson {
    sku: String,
    name: String,
    units_sold: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LowStockJson {
    sku: String,
    name: String,
    available: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SalesJson {
    /// From paid and shipped orders (an order cancelled after payment no longer counts).
    revenue_cents: i64,
    orders_by_status: OrdersByStatusJson,
    by_day: Vec<DayJson>,
    top_products: Vec<TopProductJson>,
    low_stock: Vec<LowStockJson>,
    /// The ISO 4217 code of its amounts: the shop's one currency (`currency` setting).
    currency: String,
}

/// The sales dashboard (admin or viewer).
#[utoipa::path(
    get, path = "/api/v1/dashboard/sales", tag = "dashboard", security(("admin" = []), ("viewer" = [])), params(Consistency),
    responses(
        (status = 200, description = "Revenue, orders by status and by day, top products, low stock", body = SalesJson, headers(("X-Projection-Position" = u64, description = "The log position the answer reflects"))),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 422, response = openapi::Unprocessable),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn sales(
    State(state): State<AppState>,
    _: Reader,
    ApiQuery(query): ApiQuery<Consistency>,
) -> Result<Response, ApiError> {
    let min_position = check_min_position(&state, query.min_position)?;
    let dashboard = state.projections.dashboard();
    reach(dashboard.wait_for(min_position, MIN_POSITION_WAIT), query.min_position).await?;
    let answer = dashboard.sales()?;
    let view = answer.value;
    let sales = SalesJson {
        revenue_cents: view.revenue_cents.get(),
        orders_by_status: OrdersByStatusJson {
            placed: view.orders_by_status.placed,
            paid: view.orders_by_status.paid,
            shipped: view.orders_by_status.shipped,
            cancelled: view.orders_by_status.cancelled,
        },
        by_day: view
            .by_day
            .into_iter()
            .map(|day| DayJson { date: day.date, orders: day.orders, revenue_cents: day.revenue_cents.get() })
            .collect(),
        top_products: view
            .top_products
            .into_iter()
            .map(|top| TopProductJson {
                sku: top.sku.to_string(),
                name: top.name.to_string(),
                units_sold: top.units_sold,
            })
            .collect(),
        low_stock: view
            .low_stock
            .into_iter()
            .map(|low| LowStockJson { sku: low.sku.to_string(), name: low.name.to_string(), available: low.available })
            .collect(),
        currency: state.currency.to_string(),
    };
    Ok(answered(answer.position, sales))
}

// ---- projection admin ----

#[derive(Debug, Serialize, ToSchema)]
pub struct RebuildJson {
    generation: u64,
    checkpoint: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionJson {
    /// A read model's name, or `relay` for the relay to NATS (with `serve
    /// --nats`), or `replica` for a read replica's feed (`shoplog project`).
    name: String,
    /// The generation queries read (0 for the relay, which has none).
    generation: u64,
    /// The last log position the serving generation applied (for the relay, the
    /// last one JetStream acknowledged).
    checkpoint: u64,
    head: u64,
    /// `head - checkpoint`, in events.
    lag: u64,
    /// A rebuild under way, if any.
    rebuild: Option<RebuildJson>,
    /// Why the projection stopped, if it did (for the relay: why it is waiting
    /// to try again).
    failure: Option<String>,
}

impl From<ProjectionStatus> for ProjectionJson {
    fn from(status: ProjectionStatus) -> Self {
        ProjectionJson {
            name: status.name.to_owned(),
            generation: status.generation,
            checkpoint: status.checkpoint,
            head: status.head,
            lag: status.lag,
            rebuild: status
                .rebuild
                .map(|rebuild| RebuildJson { generation: rebuild.generation, checkpoint: rebuild.checkpoint }),
            failure: status.failure,
        }
    }
}

impl From<commands::RelayStatus> for ProjectionJson {
    /// The relay to NATS as one more entry, `relay`: no generation (0) and no
    /// rebuild; its checkpoint is the last position JetStream acknowledged, its
    /// failure why it is waiting to try again.
    fn from(status: commands::RelayStatus) -> Self {
        ProjectionJson {
            name: "relay".to_owned(),
            generation: 0,
            checkpoint: status.checkpoint,
            head: status.head,
            lag: status.lag,
            rebuild: None,
            failure: status.failure,
        }
    }
}

impl From<crate::replica::FeedStatus> for ProjectionJson {
    /// A read replica's feed from NATS as one more entry, `replica`: its
    /// checkpoint is the last position copied into the replica's log, its head
    /// the newest NATS has shown, its failure why it is not applying.
    fn from(status: crate::replica::FeedStatus) -> Self {
        ProjectionJson {
            name: "replica".to_owned(),
            generation: 0,
            checkpoint: status.position,
            head: status.newest,
            lag: status.lag,
            rebuild: None,
            failure: status.failure,
        }
    }
}

/// Every read model: generation, checkpoint, lag, rebuild under way; and with
/// `serve --nats`, the relay to NATS JetStream as an entry named `relay`
/// (generation 0, no rebuild; its checkpoint is the last position JetStream
/// acknowledged, its failure why it is waiting to try again); on a read
/// replica (`shoplog project`), its feed from NATS as an entry named `replica`
/// (its checkpoint the last position copied, its head the newest NATS showed).
#[utoipa::path(
    get, path = "/admin/projections", tag = "admin", security(("admin" = [])),
    responses(
        (status = 200, description = "The read models", body = Vec<ProjectionJson>),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 422, response = openapi::Unprocessable),
    )
)]
pub async fn projection_status(
    State(state): State<AppState>,
    _: Admin,
    _: ApiQuery<NoQuery>,
) -> Json<Vec<ProjectionJson>> {
    let models = state.projections.status().into_iter().map(ProjectionJson::from);
    let relay = state.relay_status().map(ProjectionJson::from);
    let replica = state.replica_status().map(ProjectionJson::from);
    Json(models.chain(relay).chain(replica).collect())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RebuildStarted {
    name: String,
    /// The generation being built; it serves once it has caught up with the log.
    generation: u64,
}

/// Rebuild one read model from position 0 while the old one keeps serving.
#[utoipa::path(
    post, path = "/admin/projections/{name}/rebuild", tag = "admin", security(("admin" = [])),
    params(("name" = String, Path, description = "`catalog`, `carts`, `orders` or `dashboard`")),
    request_body = Option<crate::extract::Empty>,
    responses(
        (status = 202, description = "Rebuild started", body = RebuildStarted),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 415, response = openapi::UnsupportedMediaType),
        (status = 422, response = openapi::Unprocessable),
    )
)]
pub async fn rebuild(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(name): ApiPath<String>,
    _: crate::extract::EmptyBody,
) -> Result<(StatusCode, Json<RebuildStarted>), ApiError> {
    // The rebuild's worker runs beside the live ones, off the serving threads.
    let generation = state.projection_runtime.within(|| state.projections.rebuild(&name))?;
    Ok((StatusCode::ACCEPTED, Json(RebuildStarted { name, generation })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_that_did_not_catch_up_in_time_or_stopped_is_503_and_an_unknown_one_404() {
        let timeout = ProjectionError::Timeout { model: "catalog", position: 9, reached: 3 };
        assert_eq!(ApiError::from(timeout).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            ApiError::from(ProjectionError::UnknownModel { name: "x".to_owned() }).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(ApiError::from(ProjectionError::RebuildRunning { model: "carts" }).status(), StatusCode::CONFLICT);
        let torn = ProjectionError::Stopped { model: "catalog", reason: "a storage error cut a batch short".into() };
        assert_eq!(ApiError::from(torn).status(), StatusCode::SERVICE_UNAVAILABLE, "a model that stopped is 503");
    }
}
