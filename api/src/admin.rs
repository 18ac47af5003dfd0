//! Operator commands over HTTP: `POST /admin/customers/{customer_id}/forget`
//! crypto-shreds one customer (DESIGN §3.9) through
//! [`commands::CommandService::forget_customer`], like `shoplog forget`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use commands::{CommandContext, CommandOutcome};
use domain::CustomerId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Admin, Principal};
use crate::error::ApiError;
use crate::extract::{ApiPath, CommandInput};
use crate::openapi;

/// No fields: the body may be `{}` or left out.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgetRequest {}

/// A forgotten customer: where the customer's stream stands now (the shape of
/// every command's answer) and the customer's id.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForgottenReply {
    /// The customer's stream, `customer-<uuid>`.
    stream: String,
    /// The customer stream's version after the command; also the `ETag`.
    version: u64,
    /// The global log position of the command's last event.
    position: u64,
    /// True when this is the first response again, for a repeated `Idempotency-Key`.
    duplicate: bool,
    customer_id: Uuid,
}

/// Crypto-shred one customer's personal data (DESIGN §3.9).
///
/// Appends `CustomerForgotten` (and `EmailReleased` while the customer still holds
/// their email) and deletes the customer's key in the same transaction: from then
/// on no route, feed, export or replay shows their email or name, the email can be
/// registered again, and their orders still count. 404 for a customer who never
/// registered, 409 for one already forgotten; `If-Match` refers to the customer's
/// stream.
#[utoipa::path(
    post,
    path = "/admin/customers/{customer_id}/forget",
    tag = "admin",
    security(("admin" = [])),
    params(
        ("customer_id" = Uuid, Path, description = "The customer's id, as registration answered it"),
        openapi::IdempotencyKey,
        openapi::IfMatch,
    ),
    request_body = Option<ForgetRequest>,
    responses(
        (status = 200, description = "Forgotten", body = ForgottenReply,
            headers(("ETag" = String, description = "The customer stream's version, quoted"))),
        openapi::CommandProblems,
    )
)]
pub async fn forget_customer(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(customer): ApiPath<String>,
    input: CommandInput<ForgetRequest>,
) -> Result<Response, ApiError> {
    // Like an order id: a path that is no uuid names no customer.
    let customer_id =
        CustomerId::parse(&customer).map_err(|_| ApiError::NotFound(format!("customer {customer} does not exist")))?;
    let outcome = state.service.forget_customer(&context(&input), customer_id, input.if_match).await?;
    tracing::info!(%customer_id, position = outcome.position(), duplicate = outcome.duplicate, "customer forgotten");
    Ok(reply(&outcome, customer_id))
}

/// The admin's command context; an `Idempotency-Key` is scoped to the admin, as
/// on every command route.
fn context(input: &CommandInput<ForgetRequest>) -> CommandContext {
    let actor = Principal::Admin.actor();
    let context = CommandContext::new(actor.clone());
    match &input.idempotency_key {
        Some(key) => context.with_idempotency(format!("{actor}\0{key}"), input.request_hash),
        None => context,
    }
}

/// 200 with the reply and `ETag: "<version>"` of the customer's stream.
fn reply(outcome: &CommandOutcome, customer_id: CustomerId) -> Response {
    let body = ForgottenReply {
        stream: outcome.stream().to_owned(),
        version: outcome.version(),
        position: outcome.position(),
        duplicate: outcome.duplicate,
        customer_id: customer_id.get(),
    };
    let mut response = (StatusCode::OK, Json(body)).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", outcome.version())) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}
