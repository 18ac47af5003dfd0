//! The HTTP surface of shoplog and the `shoplog` binary.
//!
//! [`app`] builds the one axum `Router` that `main` and the tests both serve:
//! commands under `/api/v1` go through [`commands::CommandService`], the audit
//! routes read the log directly, and every error is RFC 9457 problem+json
//! ([`error::ApiError`]). The handlers document themselves: `GET /openapi.json`
//! and Swagger UI at `GET /docs` ([`openapi`]). [`server::serve`] binds, runs with a header-read timeout
//! and a request timeout, and shuts down gracefully on SIGTERM or Ctrl-C.
//!
//! This is the only crate that knows HTTP, JSON field names, auth and
//! problem+json. It never decides a shop rule itself and never writes to the
//! log except through `CommandService`.

/// `println!` that returns an error from the function instead of panicking
/// when stdout cannot be written (a pipe closed early, a full disk): the
/// command then ends with its one error line and exit code 2.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*).map_err($crate::cli::stdout_error)?
    }};
}

/// `println!` for what a running server tells its operator: a stdout that
/// cannot be written (a pipe closed early) is no reason to stop serving, nor
/// to panic.
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod admin;
pub mod auth;
mod backups;
pub mod cli;
pub mod config;
mod dashboard;
pub mod demo;
pub mod error;
mod every_request;
mod extract;
mod json;
mod live;
pub mod metrics;
mod openapi;
mod queries;
mod refusals;
pub mod replica;
mod routes;
pub mod server;
mod timeout;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

pub use config::Config;

/// The largest request body, in bytes (413 above it).
pub const BODY_LEN_MAX: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub log: store::EventLog,
    pub service: commands::CommandService,
    pub projections: Arc<projections::Projections>,
    /// Where the read models' workers run (see [`server::ProjectionRuntime`]).
    pub projection_runtime: Arc<server::ProjectionRuntime>,
    pub tokens: Arc<auth::Tokens>,
    /// Logins per email from one client address: `login_attempts_per_minute`.
    pub login_by_email_and_address: Arc<auth::RateLimiter>,
    /// Logins per email from every address together: ten times as many, so that
    /// a few clients cannot keep its owner out, and many cannot guess on at will.
    pub login_by_email: Arc<auth::RateLimiter>,
    pub login_by_address: Arc<auth::RateLimiter>,
    /// Registrations per client address: as many as logins, counted apart, so
    /// that neither starves the other. Each costs a password hash.
    pub register_by_address: Arc<auth::RateLimiter>,
    /// The reverse proxies whose `X-Forwarded-For` names the client (see
    /// [`auth::ClientAddress`]).
    pub trusted_proxies: Arc<[std::net::IpAddr]>,
    /// Set when the server starts shutting down, so long-lived responses (the live
    /// event feed) end instead of holding the shutdown until its deadline.
    pub stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// The log's head when the server started: it is ready once every read
    /// model has reached it (see `routes::readyz`).
    pub started_at_head: u64,
    /// The ISO 4217 code of every amount (DESIGN §5: one currency per deployment).
    pub currency: Arc<str>,
    /// The whole log read back in the background from the start (damage it
    /// finds stops the appends; see [`store::ReadBack`]); stopped by the close.
    pub read_back: Arc<std::sync::Mutex<Option<store::ReadBack>>>,
    /// The relay to NATS JetStream, with `--nats` (DESIGN §4); stopped by the close.
    pub relay: Arc<std::sync::Mutex<Option<commands::Relay>>>,
    /// A read replica's feed from NATS (`shoplog project`); stopped by the close.
    pub replica: Arc<std::sync::Mutex<Option<replica::Feed>>>,
}

impl AppState {
    pub fn new(
        log: store::EventLog,
        service: commands::CommandService,
        projections: projections::Projections,
        projection_runtime: server::ProjectionRuntime,
        tokens: auth::Tokens,
        login_attempts_per_minute: u32,
        currency: &str,
    ) -> Self {
        let limiter = |attempts| Arc::new(auth::RateLimiter::new(attempts, Duration::from_secs(60)));
        // One address may stand for many people (a NAT, an office): it gets ten
        // times the attempts of one email.
        let by_address = login_attempts_per_minute.saturating_mul(10);
        AppState {
            started_at_head: log.head(),
            read_back: Arc::new(std::sync::Mutex::new(store::ReadBack::start(&log))),
            log,
            service,
            projections: Arc::new(projections),
            projection_runtime: Arc::new(projection_runtime),
            tokens: Arc::new(tokens),
            login_by_email_and_address: limiter(login_attempts_per_minute),
            login_by_email: limiter(by_address),
            login_by_address: limiter(by_address),
            register_by_address: limiter(by_address),
            trusted_proxies: Arc::from([]),
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
            currency: Arc::from(currency),
            relay: Arc::new(std::sync::Mutex::new(None)),
            replica: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// Behind the reverse proxies at `proxies` (see [`auth::ClientAddress`]).
    pub fn with_trusted_proxies(mut self, proxies: Vec<std::net::IpAddr>) -> Self {
        self.trusted_proxies = Arc::from(proxies);
        self
    }

    /// With the relay to NATS that `serve --nats` runs.
    pub fn with_relay(self, relay: commands::Relay) -> Self {
        *self.relay.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(relay);
        self
    }

    /// With the feed of a read replica (`shoplog project`).
    pub fn with_replica(self, feed: replica::Feed) -> Self {
        *self.replica.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(feed);
        self
    }

    /// Whether this is a read replica (`shoplog project`).
    pub fn is_replica(&self) -> bool {
        self.replica.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_some()
    }

    /// Where a read replica's feed stands, if this is one.
    pub fn replica_status(&self) -> Option<replica::FeedStatus> {
        self.replica.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().map(replica::Feed::status)
    }

    /// Where the relay stands, if there is one.
    pub fn relay_status(&self) -> Option<commands::RelayStatus> {
        self.relay.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().map(commands::Relay::status)
    }
}

/// The whole HTTP app, for `serve` and for tests.
pub fn app(state: AppState, request_timeout: Duration) -> Router {
    // Install the recorder before the first request is counted.
    let _ = metrics::handle();
    let (router, spec) = routes::router().split_for_parts();
    with_layers(router.merge(openapi::docs(spec)).with_state(state), request_timeout)
}

/// The app of a read replica (`shoplog project`): the read routes only (queries,
/// the audit routes over its copy of the log, the live feed, the dashboard,
/// operations); a command gets 404 saying to send it to the primary.
pub fn replica_app(state: AppState, request_timeout: Duration) -> Router {
    let _ = metrics::handle();
    let (router, spec) = routes::replica_router().split_for_parts();
    with_layers(router.merge(openapi::docs(spec)).with_state(state), request_timeout)
}

/// What every route gets around it: [`every_request::around`] (its request
/// id, span and metrics, problem+json for axum's own bare errors, the request
/// timeout), inside that a panic answered as a bare 500 that tells nothing, and
/// the body size limit.
fn with_layers(router: Router, request_timeout: Duration) -> Router {
    let layers = ServiceBuilder::new()
        .layer(axum::middleware::from_fn_with_state(request_timeout, every_request::around))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(DefaultBodyLimit::max(BODY_LEN_MAX));
    router.layer(layers)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;
    use crate::every_request::REQUEST_ID;

    async fn problem_of(response: axum::response::Response) -> serde_json::Value {
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
        serde_json::from_slice(&body).unwrap_or_default()
    }

    /// A request whose body had arrived when the time was up may have been
    /// carried out: 503, saying how to learn the outcome, never a 408, which
    /// invites sending it again. One still coming in gets 408.
    #[tokio::test]
    async fn the_request_timeout_answers_408_only_while_the_request_is_still_coming_in() {
        async fn slow(body: axum::body::Bytes) -> String {
            tokio::time::sleep(Duration::from_secs(30)).await;
            format!("{} bytes", body.len())
        }
        let router = || with_layers(Router::new().route("/slow", axum::routing::post(slow)), Duration::from_millis(50));

        for body in [Body::from("{\"quantity\":1}"), Body::empty()] {
            let request = Request::post("/slow").body(body).expect("a request");
            let response = router().oneshot(request).await.unwrap_or_else(|error| match error {});
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            let problem = problem_of(response).await;
            assert!(problem["detail"].as_str().is_some_and(|detail| detail.contains("Idempotency-Key")), "{problem}");
        }

        let (sender, never_ends) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(1);
        sender.send(Ok(axum::body::Bytes::from_static(b"{\"quan"))).await.expect("sends");
        let body = Body::from_stream(tokio_stream_of(never_ends));
        let request = Request::post("/slow").body(body).expect("a request");
        let response = router().oneshot(request).await.unwrap_or_else(|error| match error {});
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(problem_of(response).await["status"], 408);
        drop(sender);
    }

    /// The receiving end of a channel as a stream.
    fn tokio_stream_of<T: Send + 'static>(
        mut receiver: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send + 'static {
        futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
    }

    #[tokio::test]
    async fn a_panicking_handler_gets_a_500_problem_that_tells_nothing_and_keeps_its_request_id() {
        async fn boom() -> &'static str {
            panic!("secret-detail-in-the-panic")
        }
        let router = Router::new().route("/boom", get(boom));
        let request = Request::get("/boom").header(REQUEST_ID, "req-77").body(Body::empty()).expect("a request");
        let response =
            with_layers(router, Duration::from_secs(5)).oneshot(request).await.unwrap_or_else(|error| match error {});
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
        assert_eq!(response.headers()[REQUEST_ID], "req-77");
        let body = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(problem["status"], 500, "{problem}");
        assert_eq!(problem["detail"], "internal error", "{problem}");
        assert!(!String::from_utf8_lossy(&body).contains("secret-detail"), "the body tells the panic: {problem}");
    }
}
