//! [`ApiError`]: every error the API answers, rendered as RFC 9457
//! `application/problem+json`. Every status is chosen in one `match`
//! ([`ApiError::status`]); a 5xx body reveals nothing internal, and its cause is
//! logged once, here, inside the request's span.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use commands::CommandError;
use domain::{DomainError, ErrorKind};
use serde::Serialize;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One field's validation failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Everything the API can answer instead of success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{detail}")]
    Conflict { detail: String, skus: Vec<String> },
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("request body is over {0} bytes")]
    PayloadTooLarge(usize),
    #[error("request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    #[error("too many attempts; retry in {retry_after_seconds} s")]
    TooManyRequests { retry_after_seconds: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// The request had not arrived (its body included) within the request timeout.
    #[error("the request was not received in time")]
    Timeout,
    /// The request had arrived but was not answered within the request timeout.
    #[error(
        "the request took longer than the server's request timeout; a command may have been carried out: \
         send it again with the same Idempotency-Key to get its outcome"
    )]
    TimedOut,
    /// Anything else: logged with its cause, answered as a bare 500.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError { field: field.into(), message: message.into() }])
    }

    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(error.into())
    }

    /// The one place statuses are chosen.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::TimedOut => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The problem document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skus: Option<Vec<String>>,
}

/// A problem response for a bare status, with a detail.
pub fn problem_response(status: StatusCode, detail: String) -> Response {
    render(status, detail, None, None, None)
}

/// The problem document of a bare status, with a detail, as bytes.
pub(crate) fn problem_bytes(status: StatusCode, detail: String) -> Vec<u8> {
    problem_json(status, detail, None, None)
}

fn problem_json(
    status: StatusCode,
    detail: String,
    errors: Option<Vec<FieldError>>,
    skus: Option<Vec<String>>,
) -> Vec<u8> {
    let title = status.canonical_reason().unwrap_or("Error").to_owned();
    let slug = title.to_lowercase().replace(' ', "-");
    let problem = Problem { kind: format!("/problems/{slug}"), title, status: status.as_u16(), detail, errors, skus };
    serde_json::to_vec(&problem).unwrap_or_else(|_| b"{}".to_vec())
}

fn render(
    status: StatusCode,
    detail: String,
    errors: Option<Vec<FieldError>>,
    skus: Option<Vec<String>>,
    retry_after_seconds: Option<u64>,
) -> Response {
    let mut response = (status, problem_json(status, detail, errors, skus)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(seconds) = retry_after_seconds {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = format!("{cause:#}"), "internal error");
        }
        let detail = self.to_string();
        match self {
            ApiError::Validation(errors) => render(status, detail, Some(errors), None, None),
            ApiError::Conflict { skus, .. } if !skus.is_empty() => render(status, detail, None, Some(skus), None),
            ApiError::TooManyRequests { retry_after_seconds } => {
                render(status, detail, None, None, Some(retry_after_seconds))
            }
            _ => render(status, detail, None, None, None),
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> Self {
        let detail = error.to_string();
        match error.kind() {
            ErrorKind::Validation => ApiError::Validation(
                error
                    .field_errors()
                    .iter()
                    .map(|field| FieldError { field: field.field.to_owned(), message: field.message.clone() })
                    .collect(),
            ),
            ErrorKind::NotFound => ApiError::NotFound(detail),
            ErrorKind::Conflict => {
                let skus = match &error {
                    // Every sku a checkout refuses, for a client to point at the lines.
                    DomainError::OutOfStock { skus } | DomainError::Discontinued { skus } => {
                        skus.iter().map(ToString::to_string).collect()
                    }
                    _ => Vec::new(),
                };
                ApiError::Conflict { detail, skus }
            }
        }
    }
}

/// What a 503 of the log says when its cause is not known here: the cause (a
/// failed `fdatasync`, a full disk) is in the server's log; a log that failed
/// an `fdatasync` takes writes again only after a restart (DESIGN §3).
pub(crate) const LOG_NOT_WRITING: &str = "the event log is not accepting writes: the server is stopping, or its \
    log names what failed (a full disk, a failing one) and what to do; once that is done, the server takes writes \
    again after a restart";

/// What a 503 of a log that stopped taking writes says, `failure` being why
/// it stopped (`EventLog::failure`): the kind of cause, in the words an
/// operator acts on, not the reason itself, whose paths and OS errors stay in
/// the server's log (a 5xx body reveals nothing internal).
pub(crate) fn log_not_writing(failure: Option<&str>, copy_needed: bool) -> String {
    let Some(failure) = failure else { return LOG_NOT_WRITING.to_owned() };
    let cause = if copy_needed {
        "a write or sync of its database failed, so the disk may lack what was written to it; stop the server, \
         and `shoplog verify` on its data dir says how to copy the log into a new one, which takes writes"
    } else if failure.contains("disk holding the log is full") || failure.contains("No space left") {
        "the disk holding it is full; once there is room, a restart takes writes again"
    } else if failure.starts_with("log corrupt") {
        "it found a damaged record; restore the data directory from a backup (`shoplog verify` names the first \
         bad record)"
    } else if failure.contains("panicked") {
        "a thread of it failed; a restart takes writes again"
    } else {
        "writing to its disk failed (an I/O error); once the disk is sound, a restart shows what to do"
    };
    format!("the event log is not accepting writes: {cause}. The server's log names what failed")
}

/// What a 503 says to the commands whose batch failed to become durable: sled
/// may hold the batch already (the writer applies it beside the `fdatasync`),
/// and write it at the close or let the kernel do so, so the command may be in
/// the log after the restart. Its outcome is unknown, as after a request
/// timeout: the way to learn it is the same.
pub(crate) const LOG_FAILED_WRITING: &str = "the event log is not accepting writes: making this command durable \
    failed, and the server's log names what failed (a full disk, a failing one) and what to do; once that is done, \
    the server takes writes again after a restart. The command may still be in the log then: send it again with the \
    same Idempotency-Key to get its outcome";

/// The 503 of a log that takes no write: [`LOG_FAILED_WRITING`] for a batch
/// whose `fdatasync` failed, [`LOG_NOT_WRITING`] for anything refused before it
/// was written.
fn log_unavailable(error: &store::StoreError) -> ApiError {
    match error {
        store::StoreError::Durability { .. } => ApiError::Unavailable(LOG_FAILED_WRITING.to_owned()),
        _ => ApiError::Unavailable(LOG_NOT_WRITING.to_owned()),
    }
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        commands_error(error)
    }
}

impl From<store::StoreError> for ApiError {
    fn from(error: store::StoreError) -> Self {
        match error {
            store::StoreError::Unavailable { .. } | store::StoreError::Durability { .. } => log_unavailable(&error),
            other => ApiError::internal(other),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(error) => ApiError::validation("body", error.body_text()),
            JsonRejection::JsonSyntaxError(error) => ApiError::BadRequest(error.body_text()),
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
            JsonRejection::BytesRejection(error) if error.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge(crate::BODY_LEN_MAX)
            }
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::NotFound(rejection.body_text())
    }
}

/// Turn an error response that is not problem+json yet (axum's 404 for unknown
/// routes and 405 for wrong methods, the body limit's 413) into one.
pub(crate) fn problem_for_bare_error(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if !status.is_client_error() && !status.is_server_error() || is_problem {
        return response;
    }
    let detail = match status {
        StatusCode::NOT_FOUND => "no such route".to_owned(),
        StatusCode::METHOD_NOT_ALLOWED => "this route does not take that method".to_owned(),
        StatusCode::PAYLOAD_TOO_LARGE => format!("request body is over {} bytes", crate::BODY_LEN_MAX),
        _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let mut problem = problem_response(status, detail);
    if let Some(allow) = response.headers().get(header::ALLOW) {
        problem.headers_mut().insert(header::ALLOW, allow.clone());
    }
    problem
}

/// A handler panicked: log it, answer a bare 500.
pub fn panic_response(cause: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = cause
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| cause.downcast_ref::<&str>().map(|text| (*text).to_owned()))
        .unwrap_or_default();
    tracing::error!(panic = %message, "handler panicked");
    problem_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_owned())
}

fn commands_error(error: CommandError) -> ApiError {
    match error {
        CommandError::Domain(error) => error.into(),
        error @ CommandError::PreconditionFailed { .. } => ApiError::PreconditionFailed(error.to_string()),
        // Not "403": telling a customer that someone else's order exists leaks it.
        // Word for word what an order that does not exist gets, so that a
        // customer cannot tell another's order from none.
        CommandError::NotYours { order_id } => {
            ApiError::NotFound(domain::DomainError::OrderNotFound { order_id }.to_string())
        }
        CommandError::InvalidCredentials => ApiError::Unauthorized,
        error @ (CommandError::IdempotencyKeyReused | CommandError::Contention { .. }) => {
            ApiError::Conflict { detail: error.to_string(), skus: Vec::new() }
        }
        CommandError::Unavailable(error) => log_unavailable(&error),
        error @ (CommandError::Hasher { .. }
        | CommandError::Encode(_)
        | CommandError::Decode(_)
        | CommandError::Store(_)) => ApiError::internal(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The causes the store gives, each in its kind's words, none of its own.
    #[test]
    fn a_log_that_stopped_writing_says_what_kind_of_cause() {
        let said = |failure: &str| log_not_writing(Some(failure), false);
        let full = said("the log is not accepting appends: the disk holding the log is full (No space left on device)");
        assert!(full.contains("the disk holding it is full"), "{full}");
        let damaged =
            said("log corrupt at position 30: hash does not match (restore the data directory from a backup)");
        assert!(damaged.contains("restore the data directory from a backup"), "{damaged}");
        let io = said("fdatasync of the write-ahead log failed: Input/output error (os error 5)");
        assert!(io.contains("an I/O error") && !io.contains("os error"), "{io}");
        assert_eq!(log_not_writing(None, false), LOG_NOT_WRITING);
        let copy = log_not_writing(Some("fdatasync of sled's file db: No space left on device (os error 28)"), true);
        assert!(copy.contains("shoplog verify") && !copy.contains("a restart"), "{copy}");
    }

    /// The answer's status and its body, as text.
    async fn answer(error: ApiError) -> (StatusCode, String) {
        let response = error.into_response();
        let status = response.status();
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_5xx_answer_tells_nothing_of_its_cause() {
        let secret = "/var/lib/shoplog/db: secret-cause";
        let causes = [
            ApiError::internal(anyhow::anyhow!("{secret}")),
            store::StoreError::Storage(secret.to_owned()).into(),
            store::StoreError::Corrupt { position: 7, reason: secret.to_owned() }.into(),
            store::StoreError::Durability { reason: secret.to_owned() }.into(),
            store::StoreError::Unavailable { reason: secret.to_owned() }.into(),
            projections::ProjectionError::Stopped { model: "catalog", reason: secret.to_owned() }.into(),
        ];
        for error in causes {
            let (status, body) = answer(error).await;
            assert!(status.is_server_error(), "{status}: {body}");
            assert!(!body.contains("secret"), "{status} tells its cause: {body}");
            let problem: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            assert_eq!(problem["status"], status.as_u16(), "{body}");
            assert!(problem["detail"].is_string(), "{body}");
        }
    }

    /// Every detail reads as one sentence: no run of spaces a line break in
    /// the source left behind.
    #[tokio::test]
    async fn details_have_no_runs_of_spaces() {
        for error in [ApiError::Timeout, ApiError::TimedOut, ApiError::TooManyRequests { retry_after_seconds: 3 }] {
            let (_, body) = answer(error).await;
            let problem: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(!detail.is_empty() && !detail.contains("  "), "{body}");
        }
    }
}
