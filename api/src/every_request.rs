//! What every request goes through, in one middleware ([`around`]).
//!
//! The request id, the request's span, its metrics, problem+json for axum's own
//! bare errors and the request timeout were six tower layers (tower-http's
//! request id, propagation and trace layers, and three `from_fn` middlewares).
//! Each layer cloned the service below it and boxed or wrapped the request's
//! future, and the request id was a UUID formatted through `Display` and parsed
//! back into a header value: the six took about a fifth of the serving threads'
//! CPU for a command, the span's own cost included. One function does the same
//! work once, and that CPU fell by an eighth (docs/BENCHMARKS.md).

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::{error, metrics, timeout};

/// The header that carries a request's id, both ways.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request's id (the client's `x-request-id`, else a new UUID) on the request,
/// its span and its response; a span (`info`, with the id, method and path) over
/// the whole request; the request counted by method, route and status
/// ([`metrics`]); an error that is not problem+json yet turned into one
/// ([`error::problem_for_bare_error`]); and the request timeout ([`timeout`]).
/// A failed request (5xx) is logged at `error`, every other one at `debug`.
pub(crate) async fn around(State(request_timeout): State<Duration>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = match request.headers().get(REQUEST_ID) {
        Some(id) => id.clone(),
        None => {
            let id = new_request_id();
            request.headers_mut().insert(REQUEST_ID, id.clone());
            id
        }
    };
    let labels = metrics::RequestLabels::of(&request);
    let authorized = request.headers().contains_key(axum::http::header::AUTHORIZATION);
    // A 503 there is its answer, asked every few seconds by a load balancer: no error.
    let readiness = request.uri().path() == "/readyz";
    let span = tracing::info_span!(
        "request",
        request_id = %request_id.to_str().unwrap_or("-"),
        method = %request.method(),
        path = %request.uri().path()
    );
    let mut response = async move {
        tracing::debug!("started processing request");
        let response = error::problem_for_bare_error(timeout::limit(request_timeout, request, next).await);
        let (status, latency) = (response.status(), started.elapsed());
        if readiness && status == axum::http::StatusCode::SERVICE_UNAVAILABLE {
            tracing::info!(status = status.as_u16(), latency = ?latency, "not ready");
        } else if status.is_server_error() {
            tracing::error!(status = status.as_u16(), latency = ?latency, "response failed");
        } else {
            tracing::debug!(status = status.as_u16(), latency = ?latency, "finished processing request");
        }
        response
    }
    .instrument(span)
    .await;
    labels.count(response.status(), started.elapsed());
    let headers = response.headers_mut();
    headers.entry(REQUEST_ID).or_insert(request_id);
    // What a request with credentials gets (a backup, the audit trail, an
    // order) is kept by no cache, a browser's included (RFC 9111 §5.2.2.5).
    if authorized {
        headers.entry(axum::http::header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    }
    response
}

/// A new request id: a random UUID, written straight into the header value.
fn new_request_id() -> HeaderValue {
    let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_request_id_is_a_uuid_and_each_is_new() {
        let first = new_request_id();
        let second = new_request_id();
        let parsed = first.to_str().ok().and_then(|text| uuid::Uuid::parse_str(text).ok());
        assert_eq!(parsed.map(|id| id.get_version_num()), Some(4), "{first:?}");
        assert_ne!(first, second);
    }
}
