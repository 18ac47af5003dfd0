//! The request timeout, told apart by whether the request had arrived.
//!
//! tower-http's timeout answers 408 whatever the request was doing. But a 408
//! says the server did not get the whole request, and a client may send it again
//! (RFC 9110 §15.5.9): for a command whose body was read, and which may already
//! be queued to the log, that would carry it out twice. So a request whose body
//! is still coming in when the time is up gets 408 (nothing was done: a command
//! reads its whole body before it starts), and one that had arrived gets 503,
//! saying that a command may have been carried out and how to learn its outcome.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};

use crate::error::ApiError;

/// Answers [`ApiError::Timeout`] (408) or [`ApiError::TimedOut`] (503) once
/// `timeout` has passed.
pub(crate) async fn limit(timeout: Duration, request: Request, next: Next) -> Response {
    let received = Arc::new(AtomicBool::new(http_body::Body::is_end_stream(request.body())));
    let request = request.map(|body| Body::new(Watched { inner: body, received: Arc::clone(&received) }));
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) if received.load(Ordering::Acquire) => ApiError::TimedOut.into_response(),
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// A request body that says when it has been read to its end.
struct Watched {
    inner: Body,
    received: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || http_body::Body::is_end_stream(&self.inner) {
            self.received.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
