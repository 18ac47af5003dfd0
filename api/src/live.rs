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
use utoipa::IntoParams;

use crate::AppState;
use crate::auth::Reader;
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
    _: Reader,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<LiveQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let from = match (last_event_id(&headers)?, query.from) {
        (Some(last), _) => last.saturating_add(1),
        (None, Some(0)) => return Err(ApiError::validation("from", "must be at least 1")),
        (None, Some(from)) => from,
        (None, None) => state.log.head() + 1,
    };
    let feed = Feed { subscription: state.log.subscribe(from), stopping: state.stopping.subscribe() };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let next = tokio::select! {
            next = feed.subscription.next() => next,
            _ = feed.stopping.wait_for(|stopping| *stopping) => return None,
        };
        let event = match next.map_err(ApiError::from).and_then(EventJson::from_recorded) {
            Ok(event) => event,
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
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// What the feed reads from, and what ends it.
struct Feed {
    subscription: store::Subscription,
    stopping: tokio::sync::watch::Receiver<bool>,
}
