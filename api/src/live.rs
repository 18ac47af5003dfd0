//! `GET /api/v1/events/live`: server-sent events of committed events, as they
//! commit. Each SSE event has `id` = the position, `event` = the event type and
//! `data` = the event's JSON form. A reconnecting client sends `Last-Event-ID` and
//! gets every event after it, in order, none missing; without it the feed starts at
//! `?from=` (default: only what commits from now on).

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use tracing::Instrument;
use utoipa::IntoParams;

use crate::AppState;
use crate::auth::{Principal, Reader};
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::json::EventJson;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LiveQuery {
    /// The first position to send, when no `Last-Event-ID` is given.
    #[param(minimum = 1, maximum = 9223372036854775807_i64)]
    from: Option<u64>,
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let bad = || ApiError::BadRequest("Last-Event-ID must be a position this feed sent".to_owned());
    value.to_str().map_err(|_| bad())?.trim().parse().map(Some).map_err(|_| bad())
}

/// Server-sent events of the log, as events commit (admin or viewer).
///
/// A viewer gets the events of customers (registrations) without their data
/// (`data` null, `withheld` true): the viewer token reads dashboards, and
/// needs no customer's email or name.
#[utoipa::path(
    get,
    path = "/api/v1/events/live",
    tag = "audit",
    security(("admin" = []), ("viewer" = [])),
    params(
        LiveQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this position (sent as each event's `id`)"),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream`: `id` = position, `event` = type, `data` = the event's JSON form", content_type = "text/event-stream", body = String),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 422, response = crate::openapi::Unprocessable),
    )
)]
pub async fn live_events(
    State(state): State<AppState>,
    Reader(reader): Reader,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<LiveQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // A start past the next position would send nothing until the log got
    // there, skipping what commits meanwhile: refused (a client resuming
    // from a position of a log since restored to an earlier one).
    let head = state.log.head();
    let from = match (last_event_id(&headers)?, query.from) {
        (Some(last), _) if last > head => {
            return Err(ApiError::BadRequest(format!(
                "Last-Event-ID {last} is past the log's head {head}: this log never sent it"
            )));
        }
        (Some(last), _) => last + 1,
        (None, Some(0)) => return Err(ApiError::validation("from", "must be at least 1")),
        (None, Some(from)) if from > head + 1 => {
            return Err(ApiError::validation("from", format!("must be at most {}, the next position", head + 1)));
        }
        (None, Some(from)) => from,
        (None, None) => head + 1,
    };
    let feed = Feed {
        subscription: state.log.subscribe(from),
        stopping: state.stopping.subscribe(),
        log: state.log.clone(),
        personal_data: reader == Principal::Admin,
        replica: state.is_replica().then(|| state.service.clone()),
    };
    // The feed is read after the handler has answered: its log lines go in the
    // request's span all the same.
    let span = tracing::Span::current();
    let stream = futures_util::stream::unfold(feed, move |feed| next_event(feed).instrument(span.clone()));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The feed's next event, or `None` once it ends.
async fn next_event(mut feed: Feed) -> Option<(Result<Event, Infallible>, Feed)> {
    let next = tokio::select! {
        next = feed.subscription.next() => next,
        _ = feed.stopping.wait_for(|stopping| *stopping) => {
            tracing::debug!("live feed ended: the server is stopping");
            return None;
        }
    };
    // The subscription reads ahead (and opens sealed data as it reads): a
    // subject forgotten since is forgotten in what is sent from now on.
    let forgotten_since = |mut event: store::RecordedEvent| -> Result<store::RecordedEvent, ApiError> {
        if let Some(subject) = event.subject
            && event.payload != store::Payload::Forgotten
            && feed.log.is_forgotten(subject)?
        {
            event.payload = store::Payload::Forgotten;
        }
        Ok(event)
    };
    let on_a_replica = |event: EventJson| match &feed.replica {
        Some(service) => event.shown_on_a_replica(service),
        None => Ok(event),
    };
    let shown = next.map_err(ApiError::from).and_then(forgotten_since).and_then(EventJson::from_recorded);
    let event = match shown.and_then(on_a_replica) {
        Ok(event) if feed.personal_data => event,
        Ok(event) => event.without_personal_data(),
        Err(error) => {
            tracing::warn!(%error, "live feed ended");
            return None;
        }
    };
    let sse = Event::default().id(event.position.to_string()).event(event.event_type.clone()).json_data(&event);
    match sse {
        Ok(sse) => Some((Ok(sse), feed)),
        Err(error) => {
            tracing::warn!(%error, "live feed ended");
            None
        }
    }
}

/// What the feed reads from, and what ends it.
struct Feed {
    subscription: store::Subscription,
    stopping: tokio::sync::watch::Receiver<bool>,
    log: store::EventLog,
    /// Whether the reader may see customers' personal data (the admin).
    personal_data: bool,
    /// On a read replica, the service that tells a forgotten customer by what
    /// the log recorded (see [`EventJson::shown_on_a_replica`]).
    replica: Option<commands::CommandService>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Request, header};
    use domain::{CustomerName, Email, Password, PriceCents, ProductName, Sku, Stock};
    use futures_util::StreamExt;
    use tower::ServiceExt;

    use crate::config::{Config, Secret};

    const ADMIN: &str = "admin-token-of-the-live-test";

    /// The feed reads the log ahead of what it has sent (and opens sealed data as
    /// it reads): a customer forgotten while their registration waits there is
    /// sent forgotten, as the forget was acknowledged before it was sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subject_forgotten_while_its_event_waits_in_the_feed_is_sent_forgotten() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = Config {
            data: dir.path().to_path_buf(),
            listen: ([127, 0, 0, 1], 0).into(),
            admin_token: Some(Secret::new(ADMIN)),
            ..Config::default()
        };
        let running = crate::server::start(&config).await.expect("starts");
        let state = running.state.clone();
        let admin = commands::CommandContext::new("admin");
        let (sku, name) = (Sku::parse("mug").expect("a sku"), ProductName::parse("Mug").expect("a name"));
        let (price, stock) = (PriceCents::new(500).expect("a price"), Some(Stock::new(1).expect("a stock")));
        state.service.create_product(&admin, sku, name, price, stock, None).await.expect("position 1");
        let email = Email::parse("forget.me@example.com").expect("an email");
        let (customer, password) =
            (CustomerName::parse("Forget Me").expect("a name"), Password::parse("correct horse"));
        let registered = state
            .service
            .register_customer(&admin, email, customer, password.expect("a password"), None)
            .await
            .expect("positions 2 and 3");
        let customer_id = registered.customer_id().expect("a customer id");

        let request = Request::get("/api/v1/events/live?from=1")
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
            .body(Body::empty())
            .expect("a request");
        let response = crate::app(state.clone(), Duration::from_secs(10)).oneshot(request).await.expect("answers");
        let mut feed = response.into_body().into_data_stream();
        let text = |frame: Option<Result<axum::body::Bytes, axum::Error>>| {
            String::from_utf8_lossy(&frame.expect("a frame").expect("data")).into_owned()
        };
        let first = text(feed.next().await);
        assert!(first.contains("id: 1\n"), "{first}");

        state.service.forget_customer(&admin, customer_id, None).await.expect("forgets");
        let second = text(feed.next().await);
        assert!(second.contains("id: 2\n") && second.contains("CustomerRegistered"), "{second}");
        assert!(second.contains(r#""forgotten":true"#), "sent as it was before the forget: {second}");
        assert!(!second.contains("forget.me@example.com"), "{second}");
        drop(feed);
        running.stop().await.expect("stops");
    }
}
