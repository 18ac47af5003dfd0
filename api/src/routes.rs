//! Every route of DESIGN §6 that exists so far, the handlers behind them, and
//! each one's OpenAPI description (`#[utoipa::path]`, assembled in `openapi`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use commands::{CommandContext, CommandOutcome};
use domain::{
    CustomerName, Email, OrderId, Password, PriceCents, ProductName, Quantity, RestockQuantity, Sku, Stock,
    validate_all,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Admin, AdminOrReplica, Caller, ClientAddress, Customer, Principal};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, CommandInput, Empty};
use crate::json::EventJson;
use crate::openapi::{
    self, BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, PreconditionFailed, TooManyRequests,
    Unauthorized, Unavailable, Unprocessable, UnsupportedMediaType,
};

/// Every route, each documented by its handler's `#[utoipa::path]`.
pub fn router() -> OpenApiRouter<AppState> {
    read_routes(OpenApiRouter::with_openapi(<openapi::ApiDoc as utoipa::OpenApi>::openapi()))
        .routes(routes!(create_product))
        .routes(routes!(change_price))
        .routes(routes!(restock))
        .routes(routes!(discontinue))
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(add_cart_item))
        .routes(routes!(remove_cart_item))
        .routes(routes!(checkout))
        .routes(routes!(pay))
        .routes(routes!(cancel))
        .routes(routes!(ship))
        .routes(routes!(crate::backups::backup))
        .routes(routes!(crate::admin::forget_customer))
        .fallback(|| async { ApiError::NotFound("no such route".to_owned()) })
}

/// The routes of a read replica: those that read, none that writes (a replica's
/// log is a copy of its primary's; see [`crate::replica`]).
pub fn replica_router() -> OpenApiRouter<AppState> {
    let replica = read_routes(OpenApiRouter::with_openapi(<openapi::ApiDoc as utoipa::OpenApi>::openapi()));
    // A command on a path the replica reads too (`POST /api/v1/products` beside
    // its `GET`) would be a 405 there: it is answered as the routes the replica
    // lacks are, for every method the primary takes there and the replica does not.
    let (_, primary) = router().split_for_parts();
    let mut commands = Vec::new();
    for (path, item) in &primary.paths.paths {
        let Some(served) = replica.get_openapi().paths.paths.get(path) else { continue };
        let methods = [
            (&item.post, &served.post, axum::routing::post(not_on_a_replica)),
            (&item.put, &served.put, axum::routing::put(not_on_a_replica)),
            (&item.patch, &served.patch, axum::routing::patch(not_on_a_replica)),
            (&item.delete, &served.delete, axum::routing::delete(not_on_a_replica)),
        ];
        for (taken, served, method) in methods {
            if taken.is_some() && served.is_none() {
                commands.push((path.clone(), method));
            }
        }
    }
    commands
        .into_iter()
        .fold(replica, |replica, (path, method)| replica.route(&path, method))
        .fallback(not_on_a_replica)
}

/// What a read replica answers a command, a login or a route it does not serve.
async fn not_on_a_replica() -> ApiError {
    ApiError::NotFound("no such route on a read replica: send commands (and logins) to the primary".to_owned())
}

/// The routes that read (the log, the read models) and the operations': all a
/// read replica serves, and part of what the primary serves.
fn read_routes(router: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    router
        .routes(routes!(crate::dashboard::page))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(stream_events))
        .routes(routes!(events))
        .routes(routes!(crate::live::live_events))
        .routes(routes!(crate::queries::products))
        .routes(routes!(crate::queries::product))
        .routes(routes!(crate::queries::cart))
        .routes(routes!(crate::queries::orders))
        .routes(routes!(crate::queries::order))
        .routes(routes!(crate::queries::sales))
        .routes(routes!(crate::queries::projection_status))
        .routes(routes!(crate::queries::rebuild))
}

// ---- operations ----

#[derive(Debug, Serialize, ToSchema)]
struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Debug, Serialize, ToSchema)]
struct Ready {
    #[schema(example = "ready")]
    status: &'static str,
    /// The log's last durable position (0 when empty).
    head_position: u64,
}

/// Readiness: ready while the log accepts appends (it stops after a failed fsync)
/// and every read model serves what the log held when the server started (after
/// a crash they catch up on the last batches; a model of an older format is
/// rebuilt, and answers nothing until then). A model that falls behind or fails
/// later shows in `/admin/projections` and `/metrics`, not here: commands and the
/// other models still serve. A read replica is ready once its feed has also
/// caught up since it started (with NATS, or with its primary's head), and while
/// the feed is not stuck (a gap
/// nobody fills, another history, a record its log refused); out of touch with
/// NATS after that, it stays ready (see `replica::FeedStatus::unready`).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses((status = 200, description = "Ready", body = Ready), (status = 503, response = Unavailable))
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    if let Some(failure) = state.log.failure() {
        return Err(ApiError::Unavailable(crate::error::log_not_writing(Some(&failure), state.log.must_be_copied())));
    }
    if let Some((model, _)) = state.projections.refusing() {
        return Err(ApiError::Unavailable(crate::queries::stopped(model)));
    }
    if let Some(reason) = models_not_ready(&state.projections.status(), state.started_at_head) {
        return Err(ApiError::Unavailable(reason));
    }
    if let Some(reason) = state.replica_status().and_then(|feed| feed.unready()) {
        return Err(ApiError::Unavailable(reason));
    }
    Ok(Json(Ready { status: "ready", head_position: state.log.head() }))
}

/// Why the read models are not ready yet: the first one that has not reached
/// `started_at_head`.
fn models_not_ready(statuses: &[projections::ProjectionStatus], started_at_head: u64) -> Option<String> {
    let behind = statuses.iter().find(|status| status.checkpoint < started_at_head)?;
    Some(format!("read model {} is catching up: at position {} of {started_at_head}", behind.name, behind.checkpoint))
}

/// The Prometheus text exposition format's media type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// Prometheus metrics: requests by route and status, the log's commit counters,
/// the read models' lag, and with `serve --nats` the relay's (`relay_lag_events`,
/// `relay_checkpoint_position`, `relay_published_total`, `relay_up`).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        crate::metrics::render(
            &state.log,
            &state.projections,
            &state.service,
            state.relay_status(),
            state.replica_status(),
        ),
    )
}

// ---- commands ----

/// A customer's own command refused because they were forgotten after their
/// token was checked: 401, as every request of theirs gets from then on, not
/// the 404 of a customer who does not exist.
fn forgotten_meanwhile(error: commands::CommandError, customer: domain::CustomerId) -> ApiError {
    match error {
        commands::CommandError::Domain(domain::DomainError::CustomerNotFound { customer_id })
            if customer_id == customer =>
        {
            ApiError::Unauthorized
        }
        error => error.into(),
    }
}

/// The context a command runs in: who, why, and its idempotency key (scoped to the
/// caller, so two callers never share one).
pub(crate) fn context<T>(principal: Option<Principal>, input: &CommandInput<T>) -> CommandContext {
    let actor = principal.map(|principal| principal.actor()).unwrap_or_else(|| "public".to_owned());
    let correlation_id = Uuid::now_v7();
    let idempotency = input
        .idempotency_key
        .as_ref()
        .map(|key| store::Idempotency { key: format!("{actor}\0{key}"), request_hash: input.request_hash });
    CommandContext { actor, correlation_id, causation_id: correlation_id, idempotency }
}

/// What every command answers: where its main stream stands now.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Committed {
    /// The command's main stream, such as `product-mug-1`.
    stream: String,
    /// The main stream's version after the command; also the `ETag`.
    version: u64,
    /// The global log position of the command's last event.
    position: u64,
    /// True when this is the first response again, for a repeated `Idempotency-Key`.
    duplicate: bool,
}

impl Committed {
    pub(crate) fn of(outcome: &CommandOutcome) -> Self {
        Committed {
            stream: outcome.stream().to_owned(),
            version: outcome.version(),
            position: outcome.position(),
            duplicate: outcome.duplicate,
        }
    }
}

/// A created product: [`Committed`] and its SKU.
#[derive(Debug, Serialize, ToSchema)]
struct ProductCreatedReply {
    #[serde(flatten)]
    committed: Committed,
    sku: String,
}

/// A registered customer: [`Committed`] and the customer's id.
#[derive(Debug, Serialize, ToSchema)]
struct RegisteredReply {
    #[serde(flatten)]
    committed: Committed,
    customer_id: Uuid,
}

/// A placed order: [`Committed`] (on the cart), the order's id and total.
#[derive(Debug, Serialize, ToSchema)]
struct CheckedOutReply {
    #[serde(flatten)]
    committed: Committed,
    order_id: Uuid,
    total_cents: i64,
    /// The ISO 4217 code of `total_cents`: the shop's one currency.
    currency: String,
}

/// A changed order: [`Committed`] and the order's id.
#[derive(Debug, Serialize, ToSchema)]
struct OrderReply {
    #[serde(flatten)]
    committed: Committed,
    order_id: Uuid,
}

/// `body` (a [`Committed`], flattened into a reply) with `ETag: "<version>"` on the
/// command's main stream.
pub(crate) fn command_response(status: StatusCode, outcome: &CommandOutcome, body: impl Serialize) -> Response {
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(header::ETAG, etag(outcome.version()));
    response
}

/// `"<version>"`: a stream's version as an `ETag` (what `If-Match` reads).
pub(crate) fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits in quotes are a valid header value")
}

/// A 201's `Location`: where the created resource is read (RFC 9110 §15.3.2;
/// without one a client would take the route it posted to). A customer has no
/// route of its own to read, so a registration answers none.
fn created_at(mut response: Response, path: &str) -> Response {
    if let Ok(location) = HeaderValue::from_str(path) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn field<T>(name: &'static str, result: Result<T, domain::ValidationError>) -> Result<T, domain::ValidationError> {
    result.map_err(|error| domain::ValidationError { field: name, ..error })
}

/// The characters `domain` rejects in names and emails: control characters (Rust's
/// `char::is_control`), and, with [`WHITESPACE`], white space (`char::is_whitespace`).
const CONTROL: &str = "\\u0000-\\u001f\\u007f-\\u009f";
const WHITESPACE: &str = "\\u0020\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

fn text_schema(min_length: usize, max_length: usize, pattern: String, example: &str) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .min_length(Some(min_length))
        .max_length(Some(max_length))
        .pattern(Some(pattern))
        .examples([example])
        .build()
}

/// `domain::Sku`: 1–64 characters of `A-Z a-z 0-9 _ -`.
fn sku_schema() -> utoipa::openapi::Object {
    text_schema(1, domain::value::SKU_LEN_MAX, "^[A-Za-z0-9_-]+$".to_owned(), "mug-1")
}

/// `domain::ProductName` and `domain::CustomerName`: no control characters and
/// no text-direction controls, something visible, at most 200 characters (once
/// trimmed; the schema counts them untrimmed).
fn name_schema(example: &str) -> utoipa::openapi::Object {
    let class = |ranges: &[(char, char)]| -> String {
        ranges.iter().map(|(first, last)| format!("\\u{:04x}-\\u{:04x}", *first as u32, *last as u32)).collect()
    };
    let (direction, invisible) = (class(&domain::value::DIRECTION_CONTROLS), class(&domain::value::INVISIBLE));
    let pattern =
        format!("^[^{CONTROL}{direction}]*[^{CONTROL}{direction}{WHITESPACE}{invisible}][^{CONTROL}{direction}]*$");
    text_schema(1, domain::value::NAME_LEN_MAX, pattern, example)
}

fn product_name_schema() -> utoipa::openapi::Object {
    name_schema("Blue mug")
}

fn customer_name_schema() -> utoipa::openapi::Object {
    name_schema("Ada Lovelace")
}

/// `domain::Email`: at most 254 characters, no white space or control characters,
/// one `@`, and a domain of dot-separated non-empty labels.
fn email_schema() -> utoipa::openapi::Object {
    let part = format!("[^@.{CONTROL}{WHITESPACE}]+");
    let pattern = format!("^[^@{CONTROL}{WHITESPACE}]+@({part}\\.)+{part}$");
    text_schema(3, domain::value::EMAIL_LEN_MAX, pattern, "ada@example.com")
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateProduct {
    #[schema(schema_with = sku_schema)]
    sku: String,
    #[schema(schema_with = product_name_schema)]
    name: String,
    #[schema(minimum = 1, maximum = 100_000_000, example = 1299)]
    price_cents: i64,
    /// 0 when left out.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    initial_stock: Option<u32>,
}

/// Create a product.
#[utoipa::path(
    post,
    path = "/api/v1/products",
    tag = "products",
    security(("admin" = [])),
    params(openapi::IdempotencyKey, openapi::IfMatch),
    request_body = CreateProduct,
    responses(
        (status = 201, description = "Created", body = ProductCreatedReply,
            headers(
                ("ETag" = String, description = "The product stream's version, quoted"),
                ("Location" = String, description = "Where the product is read: `/api/v1/products/{sku}`"),
            ),
            links(
                ("ChangePrice" = (operation_id = "change_price", parameters(("sku" = "$response.body#/sku")))),
                ("Restock" = (operation_id = "restock", parameters(("sku" = "$response.body#/sku")))),
                ("Discontinue" = (operation_id = "discontinue", parameters(("sku" = "$response.body#/sku")))),
                ("AddToCart" = (operation_id = "add_cart_item", request_body = json!({"sku": "$response.body#/sku", "quantity": 1}))),
            )
        ),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 412, response = PreconditionFailed),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 503, response = Unavailable),
    )
)]
async fn create_product(
    State(state): State<AppState>,
    _: Admin,
    input: CommandInput<CreateProduct>,
) -> Result<Response, ApiError> {
    let body = &input.body;
    let (sku, name, price, stock) = validate_all((
        field("sku", Sku::parse(&body.sku)),
        field("name", ProductName::parse(&body.name)),
        field("price_cents", PriceCents::new(body.price_cents)),
        field("initial_stock", Stock::new(body.initial_stock.unwrap_or(0))),
    ))?;
    let ctx = context(Some(Principal::Admin), &input);
    let outcome = state.service.create_product(&ctx, sku.clone(), name, price, Some(stock), input.if_match).await?;
    let reply = ProductCreatedReply { committed: Committed::of(&outcome), sku: sku.as_str().to_owned() };
    let location = format!("/api/v1/products/{sku}");
    Ok(created_at(command_response(StatusCode::CREATED, &outcome, reply), &location))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ChangePrice {
    #[schema(minimum = 1, maximum = 100_000_000, example = 1500)]
    price_cents: i64,
}

/// Change a product's price.
#[utoipa::path(
    post,
    path = "/api/v1/products/{sku}/price",
    tag = "products",
    security(("admin" = [])),
    params(("sku" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$"), openapi::IdempotencyKey, openapi::IfMatch),
    request_body = ChangePrice,
    responses(
        (status = 200, description = "Changed", body = Committed, headers(("ETag" = String, description = "The product stream's version, quoted"))),
        openapi::CommandProblems,
    )
)]
async fn change_price(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(sku): ApiPath<String>,
    input: CommandInput<ChangePrice>,
) -> Result<Response, ApiError> {
    let (sku, price) =
        validate_all((field("sku", Sku::parse(&sku)), field("price_cents", PriceCents::new(input.body.price_cents))))?;
    let outcome =
        state.service.change_price(&context(Some(Principal::Admin), &input), sku, price, input.if_match).await?;
    Ok(command_response(StatusCode::OK, &outcome, Committed::of(&outcome)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Restock {
    #[schema(minimum = 1, maximum = 1_000_000, example = 10)]
    quantity: u32,
}

/// Add stock to a product.
#[utoipa::path(
    post,
    path = "/api/v1/products/{sku}/restock",
    tag = "products",
    security(("admin" = [])),
    params(("sku" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$"), openapi::IdempotencyKey, openapi::IfMatch),
    request_body = Restock,
    responses(
        (status = 200, description = "Restocked", body = Committed, headers(("ETag" = String, description = "The product stream's version, quoted"))),
        openapi::CommandProblems,
    )
)]
async fn restock(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(sku): ApiPath<String>,
    input: CommandInput<Restock>,
) -> Result<Response, ApiError> {
    let (sku, quantity) =
        validate_all((field("sku", Sku::parse(&sku)), field("quantity", RestockQuantity::new(input.body.quantity))))?;
    let outcome =
        state.service.restock(&context(Some(Principal::Admin), &input), sku, quantity, input.if_match).await?;
    Ok(command_response(StatusCode::OK, &outcome, Committed::of(&outcome)))
}

/// Stop selling a product.
#[utoipa::path(
    post,
    path = "/api/v1/products/{sku}/discontinue",
    tag = "products",
    security(("admin" = [])),
    params(("sku" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$"), openapi::IdempotencyKey, openapi::IfMatch),
    request_body = Option<Empty>,
    responses(
        (status = 200, description = "Discontinued", body = Committed, headers(("ETag" = String, description = "The product stream's version, quoted"))),
        openapi::CommandProblems,
    )
)]
async fn discontinue(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(sku): ApiPath<String>,
    input: CommandInput<Empty>,
) -> Result<Response, ApiError> {
    let sku = field("sku", Sku::parse(&sku)).map_err(|error| domain::DomainError::Validation(vec![error]))?;
    let outcome = state.service.discontinue(&context(Some(Principal::Admin), &input), sku, input.if_match).await?;
    Ok(command_response(StatusCode::OK, &outcome, Committed::of(&outcome)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Register {
    #[schema(schema_with = email_schema)]
    email: String,
    #[schema(schema_with = customer_name_schema)]
    name: String,
    #[schema(min_length = 8, max_length = 128, example = "correct horse")]
    password: String,
}

/// Register a customer.
///
/// Public; but a request that does carry an `Authorization` header must carry a
/// valid one (401 otherwise). Limited per client address, as logins are (429
/// with `Retry-After`).
#[utoipa::path(
    post,
    path = "/api/v1/customers",
    tag = "customers",
    params(openapi::IdempotencyKey),
    request_body = Register,
    responses(
        (status = 201, description = "Registered", body = RegisteredReply,
            headers(("ETag" = String, description = "The customer stream's version, quoted")),
            links(("Login" = (
                operation_id = "login",
                request_body = json!({"email": "$request.body#/email", "password": "$request.body#/password"})
            )))
        ),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn register(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ClientAddress(address): ClientAddress,
    input: CommandInput<Register>,
) -> Result<Response, ApiError> {
    let body = &input.body;
    let (email, name, password) = validate_all((
        field("email", Email::parse(&body.email)),
        field("name", CustomerName::parse(&body.name)),
        field("password", Password::parse(&body.password)),
    ))?;
    // Each registration costs a password hash: limited per client address.
    state
        .register_by_address
        .check(&address)
        .map_err(|retry_after_seconds| ApiError::TooManyRequests { retry_after_seconds })?;
    let outcome = state.service.register_customer(&context(caller, &input), email, name, password, None).await?;
    let customer_id =
        outcome.customer_id().ok_or_else(|| ApiError::internal(anyhow::anyhow!("registration wrote no customer")))?;
    let reply = RegisteredReply { committed: Committed::of(&outcome), customer_id: customer_id.get() };
    Ok(command_response(StatusCode::CREATED, &outcome, reply))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Login {
    #[schema(schema_with = email_schema)]
    email: String,
    #[schema(example = "correct horse")]
    password: String,
}

#[derive(Debug, Serialize, ToSchema)]
struct Session {
    /// The customer's bearer token.
    token: String,
    customer_id: Uuid,
    expires_at: chrono::DateTime<Utc>,
}

/// Log a customer in.
///
/// Limited per email and per client address (429 with `Retry-After`).
#[utoipa::path(
    post,
    path = "/api/v1/sessions",
    tag = "customers",
    request_body = Login,
    responses(
        (status = 200, description = "Logged in", body = Session,
            headers(("Cache-Control" = String, description = "`no-store`: the answer holds a token"))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn login(
    State(state): State<AppState>,
    _: Caller,
    ClientAddress(address): ClientAddress,
    input: CommandInput<Login>,
) -> Result<([(header::HeaderName, &'static str); 1], Json<Session>), ApiError> {
    let email = field("email", Email::parse(&input.body.email))
        .map_err(|error| domain::DomainError::Validation(vec![error]))?;
    let email_key = email.normalized();
    // The address's own limit first: one client counts in the others only as
    // far as it allows (each limiter keeps a bounded number of keys).
    let limited = [
        (&state.login_by_address, address.clone()),
        (&state.login_by_email_and_address, format!("{address} {email_key}")),
        (&state.login_by_email, email_key),
    ];
    for (limiter, key) in limited {
        limiter.check(&key).map_err(|retry_after_seconds| ApiError::TooManyRequests { retry_after_seconds })?;
    }
    // A password that could never have been registered is simply wrong.
    let password = Password::parse(&input.body.password).map_err(|_| ApiError::Unauthorized)?;
    let customer = state.service.login(&email, &password).await?;
    let (token, expires_at) = state.tokens.issue(customer, Utc::now());
    // No cache may keep a bearer token (RFC 9111 §5.2.2.5).
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(Session { token, customer_id: customer.get(), expires_at })))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AddItem {
    #[schema(schema_with = sku_schema)]
    sku: String,
    #[schema(minimum = 1, maximum = 99, example = 2)]
    quantity: u32,
}

/// Add a product to the caller's cart (or more of it).
#[utoipa::path(
    post,
    path = "/api/v1/cart/items",
    tag = "cart",
    security(("customer" = [])),
    params(openapi::IdempotencyKey, openapi::IfMatch),
    request_body = AddItem,
    responses(
        (status = 200, description = "Added", body = Committed,
            headers(("ETag" = String, description = "The cart stream's version, quoted")),
            links(
                ("RemoveFromCart" = (operation_id = "remove_cart_item", parameters(("sku" = "$request.body#/sku")))),
                ("Checkout" = (operation_id = "checkout")),
            )
        ),
        openapi::CommandProblems,
    )
)]
async fn add_cart_item(
    State(state): State<AppState>,
    Customer(customer): Customer,
    input: CommandInput<AddItem>,
) -> Result<Response, ApiError> {
    let (sku, quantity) = validate_all((
        field("sku", Sku::parse(&input.body.sku)),
        field("quantity", Quantity::new(input.body.quantity)),
    ))?;
    let ctx = context(Some(Principal::Customer(customer)), &input);
    let outcome = state.service.add_cart_item(&ctx, customer, sku, quantity, input.if_match).await;
    let outcome = outcome.map_err(|error| forgotten_meanwhile(error, customer))?;
    Ok(command_response(StatusCode::OK, &outcome, Committed::of(&outcome)))
}

/// Take a product out of the caller's cart.
#[utoipa::path(
    delete,
    path = "/api/v1/cart/items/{sku}",
    tag = "cart",
    security(("customer" = [])),
    params(("sku" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$"), openapi::IdempotencyKey, openapi::IfMatch),
    request_body = Option<Empty>,
    responses(
        (status = 200, description = "Removed", body = Committed, headers(("ETag" = String, description = "The cart stream's version, quoted"))),
        openapi::CommandProblems,
    )
)]
async fn remove_cart_item(
    State(state): State<AppState>,
    Customer(customer): Customer,
    ApiPath(sku): ApiPath<String>,
    input: CommandInput<Empty>,
) -> Result<Response, ApiError> {
    let sku = field("sku", Sku::parse(&sku)).map_err(|error| domain::DomainError::Validation(vec![error]))?;
    let ctx = context(Some(Principal::Customer(customer)), &input);
    let outcome = state.service.remove_cart_item(&ctx, customer, sku, input.if_match).await;
    let outcome = outcome.map_err(|error| forgotten_meanwhile(error, customer))?;
    Ok(command_response(StatusCode::OK, &outcome, Committed::of(&outcome)))
}

/// Turn the caller's cart into an order, reserving its stock.
///
/// 409 when a product is out of stock (the problem names the `skus`), 422 when
/// the cart is empty.
#[utoipa::path(
    post,
    path = "/api/v1/cart/checkout",
    tag = "cart",
    security(("customer" = [])),
    params(openapi::IdempotencyKey, openapi::IfMatch),
    request_body = Option<Empty>,
    responses(
        (status = 201, description = "Order placed", body = CheckedOutReply,
            headers(
                ("ETag" = String, description = "The cart stream's version, quoted"),
                ("Location" = String, description = "Where the order is read: `/api/v1/orders/{order_id}`"),
            ),
            links(
                ("Pay" = (
                    operation_id = "pay",
                    parameters(("order_id" = "$response.body#/order_id")),
                    request_body = json!({"amount_cents": "$response.body#/total_cents"})
                )),
                ("Cancel" = (operation_id = "cancel", parameters(("order_id" = "$response.body#/order_id")))),
            )
        ),
        openapi::CommandProblems,
    )
)]
async fn checkout(
    State(state): State<AppState>,
    Customer(customer): Customer,
    input: CommandInput<Empty>,
) -> Result<Response, ApiError> {
    let ctx = context(Some(Principal::Customer(customer)), &input);
    let outcome = state.service.checkout(&ctx, customer, input.if_match).await;
    let outcome = outcome.map_err(|error| forgotten_meanwhile(error, customer))?;
    let placed =
        outcome.order_placed().ok_or_else(|| ApiError::internal(anyhow::anyhow!("checkout placed no order")))?;
    let reply = CheckedOutReply {
        committed: Committed::of(&outcome),
        order_id: placed.order_id.get(),
        total_cents: placed.total_cents.get(),
        currency: state.currency.to_string(),
    };
    let location = format!("/api/v1/orders/{}", reply.order_id);
    Ok(created_at(command_response(StatusCode::CREATED, &outcome, reply), &location))
}

fn order_id(text: &str) -> Result<OrderId, ApiError> {
    OrderId::parse(text).map_err(|_| ApiError::NotFound(format!("order {text} not found")))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Pay {
    /// The order's whole total (409 otherwise).
    #[schema(example = 3499, minimum = 1)]
    amount_cents: i64,
}

/// Pay one of the caller's orders in full.
#[utoipa::path(
    post,
    path = "/api/v1/orders/{order_id}/pay",
    tag = "orders",
    security(("customer" = [])),
    params(("order_id" = Uuid, Path), openapi::IdempotencyKey, openapi::IfMatch),
    request_body = Pay,
    responses(
        (status = 200, description = "Paid", body = OrderReply,
            headers(("ETag" = String, description = "The order stream's version, quoted")),
            links(
                ("Ship" = (operation_id = "ship", parameters(("order_id" = "$response.body#/order_id")))),
                ("Cancel" = (operation_id = "cancel", parameters(("order_id" = "$response.body#/order_id")))),
            )
        ),
        openapi::CommandProblems,
    )
)]
async fn pay(
    State(state): State<AppState>,
    Customer(customer): Customer,
    ApiPath(order): ApiPath<String>,
    input: CommandInput<Pay>,
) -> Result<Response, ApiError> {
    if input.body.amount_cents < 1 {
        return Err(ApiError::validation("amount_cents", "must be at least 1"));
    }
    let order = order_id(&order)?;
    let ctx = context(Some(Principal::Customer(customer)), &input);
    let amount = domain::Cents::new(input.body.amount_cents);
    let outcome = state.service.pay_order(&ctx, customer, order, amount, input.if_match).await?;
    Ok(command_response(
        StatusCode::OK,
        &outcome,
        OrderReply { committed: Committed::of(&outcome), order_id: order.get() },
    ))
}

/// Cancel one of the caller's orders (placed or paid); its stock comes back.
#[utoipa::path(
    post,
    path = "/api/v1/orders/{order_id}/cancel",
    tag = "orders",
    security(("customer" = [])),
    params(("order_id" = Uuid, Path), openapi::IdempotencyKey, openapi::IfMatch),
    request_body = Option<Empty>,
    responses(
        (status = 200, description = "Cancelled", body = OrderReply, headers(("ETag" = String, description = "The order stream's version, quoted"))),
        openapi::CommandProblems,
    )
)]
async fn cancel(
    State(state): State<AppState>,
    Customer(customer): Customer,
    ApiPath(order): ApiPath<String>,
    input: CommandInput<Empty>,
) -> Result<Response, ApiError> {
    let order = order_id(&order)?;
    let ctx = context(Some(Principal::Customer(customer)), &input);
    let outcome = state.service.cancel_order(&ctx, customer, order, input.if_match).await?;
    Ok(command_response(
        StatusCode::OK,
        &outcome,
        OrderReply { committed: Committed::of(&outcome), order_id: order.get() },
    ))
}

/// Ship a paid order.
#[utoipa::path(
    post,
    path = "/api/v1/orders/{order_id}/ship",
    tag = "orders",
    security(("admin" = [])),
    params(("order_id" = Uuid, Path), openapi::IdempotencyKey, openapi::IfMatch),
    request_body = Option<Empty>,
    responses(
        (status = 200, description = "Shipped", body = OrderReply, headers(("ETag" = String, description = "The order stream's version, quoted"))),
        openapi::CommandProblems,
    )
)]
async fn ship(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(order): ApiPath<String>,
    input: CommandInput<Empty>,
) -> Result<Response, ApiError> {
    let order = order_id(&order)?;
    let outcome = state.service.ship_order(&context(Some(Principal::Admin), &input), order, input.if_match).await?;
    Ok(command_response(
        StatusCode::OK,
        &outcome,
        OrderReply { committed: Committed::of(&outcome), order_id: order.get() },
    ))
}

// ---- the audit trail, read from the log itself ----

/// The most events one page returns.
const PAGE_LEN_MAX: usize = 1000;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct StreamPage {
    /// The first version to return (default 1).
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    from_version: Option<u64>,
    /// The most events to return, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
struct EventsPage {
    events: Vec<EventJson>,
    /// Where the next page starts (`from` / `from_version`), when there may be more.
    next: Option<u64>,
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(100) {
        0 => Err(ApiError::validation("limit", "must be at least 1")),
        limit if limit > PAGE_LEN_MAX => Err(ApiError::validation("limit", format!("must be at most {PAGE_LEN_MAX}"))),
        limit => Ok(limit),
    }
}

/// Where a page starts (default 1). Positions and versions are documented as
/// `int64`, the widest integer most JSON readers take, so a start past `i64::MAX`
/// is refused like any other out-of-range number.
fn start(name: &'static str, from: Option<u64>) -> Result<u64, ApiError> {
    match from.unwrap_or(1) {
        from if from > i64::MAX as u64 => Err(ApiError::validation(name, format!("must be at most {}", i64::MAX))),
        from => Ok(from),
    }
}

/// One stream's events, in version order: its audit trail.
#[utoipa::path(
    get,
    path = "/api/v1/streams/{stream}/events",
    tag = "audit",
    security(("admin" = [])),
    params(("stream" = String, Path, description = "A stream name, such as `product-mug-1` or `order-<uuid>`"), StreamPage),
    responses(
        (status = 200, description = "A page of events (none past the stream's last version)", body = EventsPage),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 422, response = Unprocessable),
        (status = 503, response = Unavailable),
    )
)]
async fn stream_events(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(stream): ApiPath<String>,
    ApiQuery(page): ApiQuery<StreamPage>,
) -> Result<Json<EventsPage>, ApiError> {
    let limit = page_limit(page.limit)?;
    let from_version = start("from_version", page.from_version)?;
    let recorded = state.log.read_stream(&stream, from_version, limit)?;
    // A stream no event was ever appended to is not there (as EventStoreDB
    // answers), where one read past its end is an empty page.
    if recorded.is_empty() && state.log.stream_version(&stream)? == 0 {
        return Err(ApiError::NotFound(format!("stream {stream} has no events")));
    }
    let next = (recorded.len() == limit).then(|| recorded.last().map(|event| event.version + 1)).flatten();
    Ok(Json(EventsPage { events: shown(&state, recorded)?, next }))
}

/// Events' JSON form as this server shows them (see [`EventJson::shown_on_a_replica`]).
/// On a replica each customer's stream is read once a page, however many of
/// their events the page holds.
fn shown(state: &AppState, recorded: Vec<store::RecordedEvent>) -> Result<Vec<EventJson>, ApiError> {
    let replica = state.is_replica();
    let mut registered = std::collections::HashMap::new();
    let mut show = |event| {
        let event = EventJson::from_recorded(event)?;
        if !replica {
            return Ok(event);
        }
        event.shown_as_recorded(|subject| match registered.get(&subject) {
            Some(known) => Ok(*known),
            None => {
                let known = crate::json::registered_as_recorded(&state.service, subject)?;
                registered.insert(subject, known);
                Ok(known)
            }
        })
    };
    recorded.into_iter().map(&mut show).collect()
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct LogPage {
    /// The first position to return (default 1).
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    from: Option<u64>,
    /// The most events to return, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// The media type of the log's records as stored, which `GET /api/v1/events`
/// answers when asked for it: each record as a 4-byte big-endian length and its
/// bytes (envelope, sealed payload and hash in the chain). A read replica fills
/// a gap in what NATS gave it with them (DESIGN §4), appending them as stored.
pub const RECORDS_MEDIA_TYPE: &str = "application/vnd.shoplog.records";

/// The global log, in position order, paged: as JSON events, or, asked with
/// `Accept: application/vnd.shoplog.records`, as the records stored (what a
/// read replica copies).
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "audit",
    security(("admin" = []), ("replica" = [])),
    params(LogPage),
    responses(
        (status = 200, description = "A page of events; as stored records (each a 4-byte big-endian length and \
            its bytes) when asked with `Accept: application/vnd.shoplog.records`",
            content(
                (EventsPage = "application/json"),
                (Vec<u8> = "application/vnd.shoplog.records"),
            ),
            headers(("X-Head-Position" = u64, description = "The log's last durable position"))),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = Unprocessable),
        (status = 503, response = Unavailable),
    )
)]
async fn events(
    State(state): State<AppState>,
    AdminOrReplica(caller): AdminOrReplica,
    headers: axum::http::HeaderMap,
    ApiQuery(page): ApiQuery<LogPage>,
) -> Result<Response, ApiError> {
    let as_stored = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|media| media.split(';').next().is_some_and(|media| media.trim() == RECORDS_MEDIA_TYPE));
    if caller == Principal::Replica && !as_stored {
        return Err(ApiError::Forbidden(format!(
            "the replica token reads the records as stored only (Accept: {RECORDS_MEDIA_TYPE})"
        )));
    }
    let limit = page_limit(page.limit)?;
    let from = start("from", page.from)?;
    let mut response = if as_stored {
        let records = state.log.read_stored(from, limit)?;
        let mut body = Vec::with_capacity(records.iter().map(|record| record.len() + 4).sum());
        for record in records {
            // A record is far under 4 GiB (`store::RECORD_LEN_MAX`).
            body.extend_from_slice(&(record.len() as u32).to_be_bytes());
            body.extend_from_slice(&record);
        }
        ([(header::CONTENT_TYPE, HeaderValue::from_static(RECORDS_MEDIA_TYPE))], body).into_response()
    } else {
        let recorded = state.log.read_all(from, limit)?;
        let next = (recorded.len() == limit).then(|| recorded.last().map(|event| event.position + 1)).flatten();
        Json(EventsPage { events: shown(&state, recorded)?, next }).into_response()
    };
    response.headers_mut().insert("x-head-position", HeaderValue::from(state.log.head()));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use projections::{ProjectionStatus, RebuildStatus};

    use super::*;

    /// A customer's own cart command or checkout refused for their forget (a
    /// race with it) is 401; another customer not found stays 404.
    #[test]
    fn a_customer_forgotten_meanwhile_is_unauthorized() {
        let (own, other) = (domain::CustomerId::new(Uuid::now_v7()), domain::CustomerId::new(Uuid::now_v7()));
        let not_found =
            |customer_id| commands::CommandError::Domain(domain::DomainError::CustomerNotFound { customer_id });
        let status = |error: ApiError| error.into_response().status();
        assert_eq!(status(forgotten_meanwhile(not_found(own), own)), StatusCode::UNAUTHORIZED);
        assert_eq!(status(forgotten_meanwhile(not_found(other), own)), StatusCode::NOT_FOUND);
    }

    fn status(name: &'static str, checkpoint: u64, rebuild: Option<u64>) -> ProjectionStatus {
        ProjectionStatus {
            name,
            generation: 1,
            checkpoint,
            head: 100,
            lag: 100 - checkpoint,
            rebuild: rebuild.map(|checkpoint| RebuildStatus { generation: 2, checkpoint }),
            failure: None,
        }
    }

    /// Ready once every model has reached the head the server started at: a model
    /// emptied for being of an older format, rebuilding, is not; a model lagging
    /// behind later writes, or rebuilt while its old generation serves, is.
    #[test]
    fn readiness_waits_for_every_model_to_reach_the_head_at_start() {
        let caught_up = [status("catalog", 90, None), status("carts", 95, Some(40))];
        assert_eq!(models_not_ready(&caught_up, 90), None);
        let emptied = [status("catalog", 90, None), status("dashboard", 0, Some(30))];
        let reason = models_not_ready(&emptied, 90).expect("not ready");
        assert!(reason.contains("dashboard") && reason.contains("0 of 90"), "{reason}");
        assert_eq!(models_not_ready(&[], 0), None);
    }
}
