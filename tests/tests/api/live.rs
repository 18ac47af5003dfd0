//! The live event feed: server-sent events in position order, none missing across
//! a reconnect with `Last-Event-ID`, and readable by viewers.

use std::time::Duration;

use serde_json::Value;

use super::{ADMIN, TestApp, VIEWER};

/// One SSE connection, parsed event by event.
struct Feed {
    response: reqwest::Response,
    buffer: String,
}

impl Feed {
    async fn open(app: &TestApp, token: &str, query: &str, last_event_id: Option<u64>) -> Feed {
        let mut request = app.client.get(format!("{}/api/v1/events/live{query}", app.base)).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.expect("connects");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Feed { response, buffer: String::new() }
    }

    /// The next event's (id, type, data), skipping keep-alive comments.
    async fn next(&mut self) -> (u64, String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut kind, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = value.trim().parse().ok();
                    } else if let Some(value) = line.strip_prefix("event:") {
                        kind = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim());
                    }
                }
                if let Some(id) = id {
                    return (id, kind, serde_json::from_str(&data).expect("data is JSON"));
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("an event within 10 s")
                .expect("reads")
                .expect("the feed stays open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test]
async fn the_feed_delivers_every_event_in_order_across_a_reconnect() {
    let app = TestApp::spawn().await;
    for index in 0..5 {
        app.create_product(&format!("live-{index}"), 100, 1).await;
    }
    let mut feed = Feed::open(&app, ADMIN, "?from=1", None).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (id, kind, data) = feed.next().await;
        assert_eq!(kind, "ProductCreated");
        assert_eq!(data["position"], id);
        seen.push(id);
    }
    drop(feed);

    for index in 5..8 {
        app.create_product(&format!("live-{index}"), 100, 1).await;
    }
    let last = *seen.last().expect("three events");
    let mut resumed = Feed::open(&app, VIEWER, "", Some(last)).await;
    for _ in 0..5 {
        seen.push(resumed.next().await.0);
    }
    // And one that commits while the feed is open.
    app.create_product("live-8", 100, 1).await;
    seen.push(resumed.next().await.0);
    assert_eq!(seen, (1..=9).collect::<Vec<u64>>(), "in order, none missing, none twice");
    drop(resumed);
    app.stop().await;
}

#[tokio::test]
async fn without_a_position_the_feed_starts_with_what_commits_next_and_customers_may_not_listen() {
    let app = TestApp::spawn().await;
    app.create_product("old", 100, 1).await;
    let mut feed = Feed::open(&app, ADMIN, "", None).await;
    app.create_product("new", 100, 1).await;
    let (id, _, data) = feed.next().await;
    assert_eq!((id, data["data"]["sku"].as_str()), (2, Some("new")));
    drop(feed);
    let token = app.customer("lee@example.com").await;
    app.get("/api/v1/events/live", Some(&token)).await.problem(403);
    app.get("/api/v1/events/live", None).await.problem(401);

    // A start past the next position would skip what commits meanwhile: refused.
    let next = app.head() + 1;
    let past = app.get(&format!("/api/v1/events/live?from={}", next + 1), Some(ADMIN)).await;
    assert_eq!(past.problem(422)["errors"][0]["field"], "from", "{past:?}");
    let never_sent = format!("{next}");
    let resumed = app
        .request(reqwest::Method::GET, "/api/v1/events/live", Some(ADMIN), None, &[("Last-Event-ID", &never_sent)])
        .await;
    assert!(resumed.problem(400)["detail"].as_str().is_some_and(|detail| detail.contains("past the log's head")));
    let mut at_next = Feed::open(&app, ADMIN, &format!("?from={next}"), None).await;
    app.create_product("newer", 100, 1).await;
    assert_eq!(at_next.next().await.0, next);
    drop(at_next);
    app.stop().await;
}

/// Password hashes are redacted in every API: the live feed and the global
/// event route as much as a stream's events (a viewer's feed does not even
/// carry the registration's data, see below).
#[tokio::test]
async fn the_feed_and_the_global_event_route_redact_password_hashes() {
    let app = TestApp::spawn().await;
    app.register("hal@example.com").await;
    let head = app.head();
    let mut feed = Feed::open(&app, ADMIN, "?from=1", None).await;
    let mut registered = None;
    for _ in 0..head {
        let (_, kind, data) = feed.next().await;
        if kind == "CustomerRegistered" {
            registered = Some(data);
        }
    }
    let registered = registered.expect("the feed carries the registration");
    assert_eq!(registered["data"]["email"], "hal@example.com", "{registered}");
    assert_eq!(registered["data"]["password_hash"], "[redacted]", "{registered}");

    let page = app.get("/api/v1/events?from=1&limit=100", Some(ADMIN)).await;
    let events = page.body["events"].as_array().expect("events");
    let registered = events.iter().find(|event| event["type"] == "CustomerRegistered").expect("listed");
    assert_eq!(registered["data"]["password_hash"], "[redacted]", "{registered}");
    assert!(!page.body.to_string().contains("$argon2"), "{}", page.body);
    app.stop().await;
}

/// The viewer token reads dashboards: a customer's registration reaches it
/// without the customer's data (`data` null, `withheld` true); the admin's feed
/// has it (the password hash redacted, as everywhere).
#[tokio::test]
async fn a_viewer_gets_customers_events_without_their_personal_data() {
    let app = TestApp::spawn().await;
    app.create_product("seen-by-all", 100, 1).await;
    let customer_id = app.register("private.person@example.com").await;
    let mut as_viewer = Feed::open(&app, VIEWER, "?from=1", None).await;
    let mut as_admin = Feed::open(&app, ADMIN, "?from=1", None).await;
    let product = as_viewer.next().await;
    assert_eq!((product.1.as_str(), &product.2["data"]["sku"]), ("ProductCreated", &Value::from("seen-by-all")));
    let (_, kind, event) = as_viewer.next().await;
    assert_eq!(kind, "CustomerRegistered");
    assert_eq!(
        (&event["data"], &event["withheld"], &event["forgotten"]),
        (&Value::Null, &Value::Bool(true), &Value::Bool(false))
    );
    assert_eq!(event["subject"], customer_id.as_str(), "who the event is about is no secret");
    assert!(!event.to_string().contains("private.person"), "{event}");
    as_admin.next().await;
    let (_, _, event) = as_admin.next().await;
    assert_eq!(event["data"]["email"], "private.person@example.com", "{event}");
    assert!(event.get("withheld").is_none(), "{event}");
    app.stop().await;
}
