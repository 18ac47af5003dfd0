//! Forgetting a customer through `POST /admin/customers/{id}/forget` (DESIGN §3.9):
//! afterwards no route, no feed and no file shows their email or name, the email
//! can be registered again, their orders still count, and the log verifies.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{ADMIN, TestApp, VIEWER};

const EMAIL: &str = "Ada.Forgettable@Example.org";
const NAME: &str = "Ada Forgettable Lovelace";
const PASSWORD: &str = "difference engine";

/// What must not show anywhere once the customer is forgotten.
const PERSONAL: [&str; 3] = [EMAIL, "ada.forgettable@example.org", NAME];

async fn register(app: &TestApp) -> String {
    let reply = app.post("/api/v1/customers", None, json!({"email": EMAIL, "name": NAME, "password": PASSWORD})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    reply.body["customer_id"].as_str().expect("a customer id").to_owned()
}

async fn login(app: &TestApp) -> StatusCode {
    app.post("/api/v1/sessions", None, json!({"email": EMAIL, "password": PASSWORD})).await.status
}

async fn forget(app: &TestApp, customer_id: &str, token: Option<&str>) -> super::Reply {
    app.post(&format!("/admin/customers/{customer_id}/forget"), token, json!({})).await
}

fn assert_shows_no_personal_data(place: &str, text: &str) {
    for personal in PERSONAL {
        assert!(!text.contains(personal), "{place} shows {personal:?}: {text}");
    }
}

/// The whole live feed from position 1 up to `head`, as sent.
async fn live_feed_up_to(app: &TestApp, head: u64) -> String {
    let mut response = app
        .client
        .get(format!("{}/api/v1/events/live?from=1", app.base))
        .bearer_auth(VIEWER)
        .send()
        .await
        .expect("connects");
    assert_eq!(response.status(), StatusCode::OK);
    let mut text = String::new();
    loop {
        // Complete events only: each ends with a blank line.
        let complete = &text[..text.rfind("\n\n").map_or(0, |end| end + 2)];
        let ids: Vec<u64> = complete
            .split("\n\n")
            .filter_map(|block| block.lines().find_map(|line| line.strip_prefix("id:")))
            .filter_map(|id| id.trim().parse().ok())
            .collect();
        if ids.last() == Some(&head) {
            assert_eq!(ids, (1..=head).collect::<Vec<u64>>(), "every event, in order");
            return text;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("an event within 10 s")
            .expect("reads")
            .expect("the feed stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// Wait until the dashboard model serves `generation` with nothing left to apply.
async fn wait_for_rebuild(app: &TestApp, generation: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = app.get("/admin/projections", Some(ADMIN)).await;
        let dashboard = status
            .body
            .as_array()
            .expect("a list")
            .iter()
            .find(|model| model["name"] == "dashboard")
            .cloned()
            .expect("the dashboard model");
        if dashboard["generation"] == generation && dashboard["rebuild"].is_null() && dashboard["lag"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the rebuild did not finish: {dashboard}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_forgotten_customer_shows_nowhere_their_email_is_free_and_their_orders_still_count() {
    let app = TestApp::spawn().await;
    app.create_product("forget-lamp", 6000, 3).await;
    let customer_id = register(&app).await;
    let token = app.post("/api/v1/sessions", None, json!({"email": EMAIL, "password": PASSWORD})).await.body["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    assert_eq!(app.add_to_cart(&token, "forget-lamp", 1).await.status, StatusCode::OK);
    let placed = app.checkout(&token).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{placed:?}");
    let order_id = placed.body["order_id"].as_str().expect("an order id").to_owned();
    let paid = app.post(&format!("/api/v1/orders/{order_id}/pay"), Some(&token), json!({"amount_cents": 6000})).await;
    assert_eq!(paid.status, StatusCode::OK, "{paid:?}");
    // An order left unpaid: nobody could pay or cancel it once the customer is
    // forgotten, so the forget cancels it and its lamp comes back.
    assert_eq!(app.add_to_cart(&token, "forget-lamp", 1).await.status, StatusCode::OK);
    let unpaid = app.checkout(&token).await;
    assert_eq!(unpaid.status, StatusCode::CREATED, "{unpaid:?}");
    let unpaid_id = unpaid.body["order_id"].as_str().expect("an order id").to_owned();
    let before = app.get("/api/v1/events?from=1&limit=1000", Some(ADMIN)).await;
    assert!(before.body.to_string().contains(NAME), "the audit route shows the name until forgotten");

    let forgotten = forget(&app, &customer_id, Some(ADMIN)).await;
    assert_eq!(forgotten.status, StatusCode::OK, "{forgotten:?}");
    let head = app.head();
    assert_eq!(forgotten.body["stream"], format!("customer-{customer_id}"));
    assert_eq!(forgotten.body["version"], 2);
    assert_eq!(forgotten.body["position"], head, "the last event of the command");
    assert_eq!(forgotten.body["customer_id"], customer_id.as_str());
    assert_eq!(forgotten.body["duplicate"], false);
    assert_eq!(forgotten.headers["etag"], "\"2\"");
    assert_eq!(forgotten.body["cancelled_orders"], json!([unpaid_id]), "the unpaid order, not the paid one");
    let lamp = app.get(&format!("/api/v1/products/forget-lamp?min_position={head}"), None).await;
    assert_eq!((&lamp.body["available"], &lamp.body["reserved"]), (&json!(2), &json!(1)), "{lamp:?}");
    let cancelled = app.get(&format!("/api/v1/orders/{unpaid_id}?min_position={head}"), Some(ADMIN)).await;
    assert_eq!(cancelled.body["status"], "cancelled", "{cancelled:?}");

    // The audit routes: the registration reads as forgotten, metadata intact.
    let all = app.get("/api/v1/events?from=1&limit=1000", Some(ADMIN)).await;
    assert_eq!(all.status, StatusCode::OK, "{all:?}");
    assert_shows_no_personal_data("GET /api/v1/events", &all.body.to_string());
    let events = all.body["events"].as_array().expect("events");
    let types: Vec<&str> = events.iter().filter_map(|event| event["type"].as_str()).collect();
    assert!(types.ends_with(&["CustomerForgotten", "EmailReleased", "OrderCancelled", "StockReleased"]), "{types:?}");
    let email_stream = events[events.len() - 3]["stream"].as_str().expect("a stream").to_owned();
    assert!(email_stream.starts_with("email-"), "{email_stream}");
    let customer = app.events_of(&format!("customer-{customer_id}")).await;
    assert_eq!(customer.len(), 2);
    assert_eq!(
        (&customer[0]["type"], &customer[0]["data"], &customer[0]["forgotten"]),
        (&json!("CustomerRegistered"), &Value::Null, &json!(true))
    );
    assert_eq!(customer[0]["position"], 2);
    assert_eq!(customer[1]["type"], "CustomerForgotten");
    for stream in [format!("customer-{customer_id}"), email_stream, format!("order-{order_id}")] {
        let reply = app.get(&format!("/api/v1/streams/{stream}/events"), Some(ADMIN)).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_shows_no_personal_data(&stream, &reply.body.to_string());
    }
    assert_shows_no_personal_data("the live feed", &live_feed_up_to(&app, head).await);

    // The customer cannot log in, nor use a token from before; their address can be
    // registered again.
    assert_eq!(login(&app).await, StatusCode::UNAUTHORIZED);
    app.get("/api/v1/cart", Some(&token)).await.problem(401);
    app.get("/api/v1/orders", Some(&token)).await.problem(401);
    let again = register(&app).await;
    assert_ne!(again, customer_id);
    assert_eq!(login(&app).await, StatusCode::OK);

    // The paid order still counts, and still does after a replay of the dashboard.
    let sales = app.get(&format!("/api/v1/dashboard/sales?min_position={head}"), Some(VIEWER)).await;
    assert_eq!(sales.status, StatusCode::OK, "{sales:?}");
    assert_eq!((&sales.body["revenue_cents"], &sales.body["orders_by_status"]["paid"]), (&json!(6000), &json!(1)));
    let rebuild = app.post("/admin/projections/dashboard/rebuild", Some(ADMIN), json!({})).await;
    assert_eq!(rebuild.status, StatusCode::ACCEPTED, "{rebuild:?}");
    wait_for_rebuild(&app, rebuild.body["generation"].as_u64().expect("a generation")).await;
    let replayed = app.get("/api/v1/dashboard/sales", Some(ADMIN)).await;
    assert_eq!(replayed.body["revenue_cents"], 6000, "{replayed:?}");
    let order = app.get(&format!("/api/v1/orders/{order_id}?min_position={head}"), Some(ADMIN)).await;
    assert_eq!(order.status, StatusCode::OK, "{order:?}");
    assert_shows_no_personal_data("the order", &order.body.to_string());

    app.log().verify().expect("the chain verifies while serving");
    let head = app.head();
    let dir = app.stop_keeping_dir().await;
    let report = store::EventLog::open(dir.path()).expect("opens").verify().expect("the stopped log verifies");
    assert_eq!(report.head, head);
    let raw = tests::raw_sled(dir.path());
    let subject = uuid::Uuid::parse_str(&customer_id).expect("a uuid");
    let key = raw.open_tree("keys").expect("the keys tree").get(subject.as_bytes()).expect("reads");
    assert_eq!(key.as_deref(), Some(&[][..]), "the forgotten customer's key is gone");
    drop(raw);
    assert!(tests::files_contain(dir.path(), b"forget-lamp"), "the search sees what is in clear");
    for personal in PERSONAL {
        assert!(!tests::files_contain(dir.path(), personal.as_bytes()), "{personal:?} is on disk in clear");
    }
}

#[tokio::test]
async fn only_the_admin_forgets_and_unknown_or_forgotten_customers_are_refused() {
    let app = TestApp::spawn().await;
    let customer_id = register(&app).await;
    let customer_token = app.customer("someone.else@example.com").await;
    let head = app.head();

    forget(&app, &customer_id, None).await.problem(401);
    forget(&app, &customer_id, Some("not-a-token")).await.problem(401);
    forget(&app, &customer_id, Some(VIEWER)).await.problem(403);
    forget(&app, &customer_id, Some(&customer_token)).await.problem(403);
    forget(&app, &uuid::Uuid::now_v7().to_string(), Some(ADMIN)).await.problem(404);
    forget(&app, "not-a-uuid", Some(ADMIN)).await.problem(404);
    let path = format!("/admin/customers/{customer_id}/forget");
    app.post(&path, Some(ADMIN), json!({"reason": "asked"})).await.problem(422);
    app.request(Method::POST, &path, Some(ADMIN), None, &[("If-Match", "\"7\"")]).await.problem(412);
    assert_eq!(app.head(), head, "refusals write nothing");
    assert_eq!(login(&app).await, StatusCode::OK);

    // An empty body will do, and If-Match names the customer stream's version.
    let key = [("If-Match", "\"1\""), ("Idempotency-Key", "forget-ada")];
    let first = app.request(Method::POST, &path, Some(ADMIN), None, &key).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let head = app.head();
    let repeated = app.request(Method::POST, &path, Some(ADMIN), None, &[("Idempotency-Key", "forget-ada")]).await;
    assert_eq!(repeated.status, StatusCode::OK, "{repeated:?}");
    assert_eq!((&repeated.body["position"], &repeated.body["duplicate"]), (&first.body["position"], &json!(true)));
    let twice = forget(&app, &customer_id, Some(ADMIN)).await;
    assert!(twice.problem(409)["detail"].as_str().is_some_and(|detail| detail.contains("already forgotten")));
    assert_eq!(app.head(), head, "a repeat and a second forget write nothing");
    assert_eq!(login(&app).await, StatusCode::UNAUTHORIZED);
    app.stop().await;
}
