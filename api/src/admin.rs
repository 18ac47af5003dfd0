//! Operator commands over HTTP: `POST /admin/customers/{customer_id}/forget`
//! crypto-shreds one customer (DESIGN §3.9) through
//! [`commands::CommandService::forget_customer`], like `shoplog forget`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use domain::CustomerId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Admin, Principal};
use crate::error::ApiError;
use crate::extract::{ApiPath, CommandInput};
use crate::openapi;
use crate::routes::{Committed, command_response, context};

/// No fields: the body may be `{}` or left out.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgetRequest {}

/// A forgotten customer: [`Committed`] (on the customer's stream), the id, and
/// the customer's unpaid orders that the forget cancelled.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForgottenReply {
    #[serde(flatten)]
    committed: Committed,
    customer_id: Uuid,
    /// The customer's orders that were still unpaid: cancelled in the same
    /// append, their stock released (nobody could pay or cancel them any more).
    cancelled_orders: Vec<Uuid>,
}

/// Crypto-shred one customer's personal data (DESIGN §3.9).
///
/// Appends `CustomerForgotten` (and `EmailReleased` while the customer still holds
/// their email) and deletes the customer's key in the same transaction: from then
/// on no route, feed, export or replay shows their email or name, the email can be
/// registered again, and their orders still count. Their unpaid orders are
/// cancelled in the same append, releasing their stock (paid ones stay, to be
/// shipped); the reply lists them. 404 for a customer who never
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
    let outcome =
        state.service.forget_customer(&context(Some(Principal::Admin), &input), customer_id, input.if_match).await?;
    let cancelled_orders: Vec<Uuid> = outcome.cancelled_orders().into_iter().map(|order_id| order_id.get()).collect();
    tracing::info!(
        %customer_id,
        position = outcome.position(),
        duplicate = outcome.duplicate,
        cancelled_orders = cancelled_orders.len(),
        "customer forgotten"
    );
    let body = ForgottenReply { committed: Committed::of(&outcome), customer_id: customer_id.get(), cancelled_orders };
    Ok(command_response(StatusCode::OK, &outcome, body))
}
