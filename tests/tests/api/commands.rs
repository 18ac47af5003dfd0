//! Every command route's happy path, ETags and If-Match, idempotency, and what
//! the log holds afterwards.

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::{ADMIN, TestApp};

#[tokio::test]
async fn a_customer_buys_pays_and_gets_shipped_through_every_command_route() {
    let app = TestApp::spawn().await;
    let created = app.create_product("mug-1", 1299, 5).await;
    assert_eq!(created.body["stream"], "product-mug-1");
    assert_eq!(created.body["version"], 1);
    assert_eq!(created.headers["etag"], "\"1\"");
    assert_eq!(created.body["sku"], "mug-1");
    assert_eq!(created.headers["location"], "/api/v1/products/mug-1", "a 201 says where to read what it made");

    let priced = app.post("/api/v1/products/mug-1/price", Some(ADMIN), json!({"price_cents": 1500})).await;
    assert_eq!((priced.status, priced.body["version"].clone()), (StatusCode::OK, json!(2)), "{priced:?}");
    let restocked = app.post("/api/v1/products/mug-1/restock", Some(ADMIN), json!({"quantity": 10})).await;
    assert_eq!(restocked.status, StatusCode::OK, "{restocked:?}");
    app.create_product("tea-1", 250, 3).await;
    let discontinued = app.request(Method::POST, "/api/v1/products/tea-1/discontinue", Some(ADMIN), None, &[]).await;
    assert_eq!(discontinued.status, StatusCode::OK, "an empty body reads as {{}}: {discontinued:?}");

    let token = app.customer("ada@example.com").await;
    assert_eq!(app.add_to_cart(&token, "mug-1", 2).await.status, StatusCode::OK);
    app.create_product("pen-1", 100, 9).await;
    assert_eq!(app.add_to_cart(&token, "pen-1", 1).await.status, StatusCode::OK);
    let removed = app.request(Method::DELETE, "/api/v1/cart/items/pen-1", Some(&token), None, &[]).await;
    assert_eq!(removed.status, StatusCode::OK, "{removed:?}");

    let placed = app.checkout(&token).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{placed:?}");
    assert_eq!(placed.body["total_cents"], 3499, "2 × 1500 plus 499 shipping under 5000");
    let order_id = placed.body["order_id"].as_str().expect("order id").to_owned();
    let location = placed.headers["location"].to_str().expect("a text Location").to_owned();
    assert_eq!(location, format!("/api/v1/orders/{order_id}"));
    let at_location = app.get(&format!("{location}?min_position={}", placed.body["position"]), Some(&token)).await;
    assert_eq!(
        (at_location.status, &at_location.body["order_id"]),
        (StatusCode::OK, &json!(order_id)),
        "{at_location:?}"
    );

    let paid = app.post(&format!("/api/v1/orders/{order_id}/pay"), Some(&token), json!({"amount_cents": 3499})).await;
    assert_eq!(paid.status, StatusCode::OK, "{paid:?}");
    let shipped = app.post(&format!("/api/v1/orders/{order_id}/ship"), Some(ADMIN), json!({})).await;
    assert_eq!(shipped.status, StatusCode::OK, "{shipped:?}");
    assert_eq!(shipped.body["stream"], format!("order-{order_id}"));
    assert_eq!(shipped.body["version"], 3);

    let types: Vec<String> = app
        .events_of(&format!("order-{order_id}"))
        .await
        .iter()
        .map(|event| event["type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(types, ["OrderPlaced", "OrderPaid", "OrderShipped"]);
    app.log().verify().expect("the log verifies");
    app.stop().await;
}

fn stock_of(events: &[serde_json::Value]) -> i64 {
    events
        .iter()
        .map(|event| {
            let data = &event["data"];
            match event["type"].as_str().unwrap_or("") {
                "ProductCreated" => data["initial_stock"].as_i64().unwrap_or(0),
                "ProductRestocked" | "StockReleased" => data["quantity"].as_i64().unwrap_or(0),
                "StockReserved" => -data["quantity"].as_i64().unwrap_or(0),
                _ => 0,
            }
        })
        .sum()
}

#[tokio::test]
async fn cancelling_an_order_releases_its_stock() {
    let app = TestApp::spawn().await;
    app.create_product("cup", 500, 4).await;
    let token = app.customer("bob@example.com").await;
    app.add_to_cart(&token, "cup", 3).await;
    let order_id = app.checkout(&token).await.body["order_id"].as_str().expect("order").to_owned();
    assert_eq!(stock_of(&app.events_of("product-cup").await), 1);
    let cancelled = app.post(&format!("/api/v1/orders/{order_id}/cancel"), Some(&token), json!({})).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:?}");
    assert_eq!(stock_of(&app.events_of("product-cup").await), 4);
    app.stop().await;
}

#[tokio::test]
async fn if_match_makes_the_version_expected() {
    let app = TestApp::spawn().await;
    app.create_product("lamp", 900, 1).await;
    let stale = app
        .request(
            Method::POST,
            "/api/v1/products/lamp/restock",
            Some(ADMIN),
            Some(json!({"quantity": 1})),
            &[("If-Match", "\"7\"")],
        )
        .await;
    stale.problem(412);
    let head = app.head();
    let fresh = app
        .request(
            Method::POST,
            "/api/v1/products/lamp/restock",
            Some(ADMIN),
            Some(json!({"quantity": 1})),
            &[("If-Match", "\"1\"")],
        )
        .await;
    assert_eq!(fresh.status, StatusCode::OK, "{fresh:?}");
    assert_eq!(fresh.headers["etag"], "\"2\"");
    assert_eq!(app.head(), head + 1);
    app.stop().await;
}

#[tokio::test]
async fn a_repeated_idempotency_key_gives_the_first_response_and_writes_nothing() {
    let app = TestApp::spawn().await;
    app.create_product("book", 2000, 5).await;
    let token = app.customer("cy@example.com").await;
    app.add_to_cart(&token, "book", 1).await;
    let key = [("Idempotency-Key", "checkout-1")];
    let first = app.request(Method::POST, "/api/v1/cart/checkout", Some(&token), Some(json!({})), &key).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let head = app.head();
    let again = app.request(Method::POST, "/api/v1/cart/checkout", Some(&token), Some(json!({})), &key).await;
    assert_eq!(again.status, StatusCode::CREATED, "{again:?}");
    assert_eq!(again.body["order_id"], first.body["order_id"]);
    assert_eq!(again.body["total_cents"], first.body["total_cents"]);
    assert_eq!(again.body["position"], first.body["position"]);
    assert_eq!(again.headers["location"], first.headers["location"], "the repeat points at the first order");
    assert_eq!(app.head(), head, "the repeat wrote nothing");

    let other_body = app
        .request(
            Method::POST,
            "/api/v1/cart/items",
            Some(&token),
            Some(json!({"sku": "book", "quantity": 2})),
            &[("Idempotency-Key", "checkout-1")],
        )
        .await;
    other_body.problem(409);
    assert_eq!(app.head(), head, "a reused key wrote nothing");
    app.stop().await;
}

/// "The same body" is the same JSON value: a client that serializes its body
/// again for a retry (other key order, spacing, `1.0` for `1`, an empty body
/// for `{}`) repeats the request; another value under the key is a 409.
#[tokio::test]
async fn a_repeated_idempotency_key_with_the_same_json_written_otherwise_is_a_repeat() {
    let app = TestApp::spawn().await;
    app.create_product("mug-1", 1000, 5).await;
    let token = app.customer("dee@example.com").await;
    let send = async |path: &str, body: &'static str, key: &str| {
        let response = app
            .client
            .post(format!("http://{}{path}", app.address()))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body)
            .send()
            .await
            .expect("the server answers");
        let status = response.status();
        let body: serde_json::Value = response.json().await.expect("a JSON answer");
        (status, body)
    };
    let (status, first) = send("/api/v1/cart/items", r#"{"sku":"mug-1","quantity":2}"#, "add-1").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let head = app.head();
    for again in [r#"{ "quantity": 2, "sku": "mug-1" }"#, "{\"quantity\":2.0,\n\"sku\":\"mug-1\"}"] {
        let (status, body) = send("/api/v1/cart/items", again, "add-1").await;
        assert_eq!(status, StatusCode::OK, "{again}: {body}");
        assert_eq!(body["position"], first["position"], "{again}: {body}");
    }
    let (status, body) = send("/api/v1/cart/items", r#"{"sku":"mug-1","quantity":3}"#, "add-1").await;
    assert_eq!(status, StatusCode::CONFLICT, "another value: {body}");
    assert_eq!(app.head(), head, "no repeat wrote");

    let (status, placed) = send("/api/v1/cart/checkout", "", "checkout-1").await;
    assert_eq!(status, StatusCode::CREATED, "{placed}");
    let (status, again) = send("/api/v1/cart/checkout", " {} ", "checkout-1").await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["order_id"], placed["order_id"]);

    // A path written with percent-escapes names the product the plain one does: a repeat.
    let key = [("Idempotency-Key", "restock-1")];
    let restock =
        async |path: &str| app.request(Method::POST, path, Some(ADMIN), Some(json!({"quantity": 3})), &key).await;
    let first = restock("/api/v1/products/mug-1/restock").await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let head = app.head();
    let again = restock("/api/v1/products/mug%2D1/restock").await;
    assert_eq!((again.status, &again.body["position"]), (StatusCode::OK, &first.body["position"]), "{again:?}");
    assert_eq!(app.head(), head, "the repeat wrote nothing");
    app.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_is_the_callers_own_and_its_replay_repeats_the_etag() {
    let app = TestApp::spawn().await;
    app.create_product("mug-1", 1000, 20).await;
    let ann = app.customer("ann@example.com").await;
    let ben = app.customer("ben@example.com").await;
    let key = [("Idempotency-Key", "add-1")];
    let add = |token: &str, quantity: u32| {
        let token = token.to_owned();
        let app = &app;
        async move {
            let body = json!({"sku": "mug-1", "quantity": quantity});
            app.request(Method::POST, "/api/v1/cart/items", Some(&token), Some(body), &key).await
        }
    };

    let first = add(&ann, 1).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(first.body["duplicate"], false);
    let head = app.head();
    let again = add(&ann, 1).await;
    assert_eq!(again.status, StatusCode::OK, "{again:?}");
    assert_eq!(again.body["duplicate"], true, "{again:?}");
    assert_eq!(again.body["position"], first.body["position"]);
    assert_eq!(again.headers["etag"], first.headers["etag"], "the replay repeats the ETag");
    assert_eq!(app.head(), head, "the replay wrote nothing");

    // The same key on the same route with another body: a conflict, nothing written.
    add(&ann, 2).await.problem(409);
    assert_eq!(app.head(), head, "a reused key wrote nothing");

    // Another caller's same key is another key: Ben's add goes through.
    let bens = add(&ben, 3).await;
    assert_eq!(bens.status, StatusCode::OK, "{bens:?}");
    assert_eq!(bens.body["duplicate"], false, "{bens:?}");
    assert_eq!(bens.body["stream"], format!("cart-{}", customer_id_of(&app, "ben@example.com").await));
    assert_eq!(app.head(), head + 1, "Ben's add is written");
    app.stop().await;
}

/// A registration makes a new customer id on each try, so its repeat must answer
/// the stream the first one wrote, not the one it made up: also when the email
/// was released first (its holder was forgotten), which the append writes first.
#[tokio::test]
async fn a_repeated_registration_answers_its_first_response() {
    let app = TestApp::spawn().await;
    let forgotten = app.register("old@example.com").await;
    let reply = app.post(&format!("/admin/customers/{forgotten}/forget"), Some(ADMIN), json!({})).await;
    assert!(reply.status.is_success(), "{reply:?}");
    for (email, key) in [("new@example.com", "register-1"), ("old@example.com", "register-2")] {
        let body = json!({"email": email, "name": "Someone", "password": "correct horse"});
        let headers = [("Idempotency-Key", key)];
        let register = || app.request(Method::POST, "/api/v1/customers", None, Some(body.clone()), &headers);
        let first = register().await;
        assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
        let head = app.head();
        let again = register().await;
        assert_eq!(again.status, StatusCode::CREATED, "{again:?}");
        assert_eq!(app.head(), head, "{email}: the repeat wrote nothing");
        assert_eq!(again.body["duplicate"], true, "{again:?}");
        let customer_id = first.body["customer_id"].as_str().expect("an id");
        assert_eq!(first.body["stream"], format!("customer-{customer_id}"), "{first:?}");
        for field in ["stream", "version", "position", "customer_id"] {
            assert_eq!(again.body[field], first.body[field], "{email}: {field} of {again:?}");
        }
        assert_eq!(again.headers["etag"], first.headers["etag"], "{email}: the ETag");
    }
    // The password is no part of what a repeat is compared by: the comparison's
    // hash is kept in the log, where a fast hash of a password could be guessed
    // against. Another name is another request.
    let headers = [("Idempotency-Key", "register-1")];
    let body = json!({"email": "new@example.com", "name": "Someone", "password": "another horse"});
    let head = app.head();
    let again = app.request(Method::POST, "/api/v1/customers", None, Some(body), &headers).await;
    assert_eq!((again.status, &again.body["duplicate"]), (StatusCode::CREATED, &json!(true)), "{again:?}");
    let body = json!({"email": "new@example.com", "name": "Someone Else", "password": "correct horse"});
    app.request(Method::POST, "/api/v1/customers", None, Some(body), &headers).await.problem(409);
    assert_eq!(app.head(), head, "neither wrote");
    app.stop().await;
}

/// An address is one account however it is spelled: in another case, or with
/// an accented letter as one code point or as a letter and a combining accent
/// (they look the same to the customer typing it).
#[tokio::test]
async fn one_address_in_another_case_or_unicode_form_is_taken_and_logs_in() {
    let app = TestApp::spawn().await;
    let registered = app.register("Ren\u{e9}@Example.com").await;
    let head = app.head();
    for other in ["ren\u{e9}@example.com", "rene\u{301}@example.com", "RENE\u{301}@EXAMPLE.COM"] {
        let body = json!({"email": other, "name": "Someone", "password": "correct horse"});
        let reply = app.post("/api/v1/customers", None, body).await;
        assert_eq!(reply.status, StatusCode::CONFLICT, "{other:?}: {reply:?}");
        assert_eq!(customer_id_of(&app, other).await, registered, "{other:?} logs in to the one account");
    }
    assert_eq!(app.head(), head, "no second account was written");
    app.stop().await;
}

/// The customer id of a registered email, from a login.
async fn customer_id_of(app: &TestApp, email: &str) -> String {
    let reply = app.post("/api/v1/sessions", None, json!({"email": email, "password": "correct horse"})).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.headers["cache-control"], "no-store", "no cache keeps the token");
    reply.body["customer_id"].as_str().expect("customer id").to_owned()
}

#[tokio::test]
async fn the_order_rules_are_409_problems_over_http_and_write_nothing() {
    let app = TestApp::spawn().await;
    app.create_product("mug-1", 6000, 5).await;
    let ann = app.customer("ann@example.com").await;
    let (order, placed) = app.place_order(&ann, "mug-1", 1).await;
    assert_eq!(placed.body["total_cents"], 6000, "no shipping from 5000 cents");
    let (pay_path, ship_path, cancel_path) = (
        format!("/api/v1/orders/{order}/pay"),
        format!("/api/v1/orders/{order}/ship"),
        format!("/api/v1/orders/{order}/cancel"),
    );
    let pay = |amount: i64| app.post(&pay_path, Some(&ann), json!({"amount_cents": amount}));
    let ship = || app.post(&ship_path, Some(ADMIN), json!({}));
    let cancel = || app.post(&cancel_path, Some(&ann), json!({}));

    let head = app.head();
    let wrong = pay(5999).await;
    wrong.problem(409);
    assert!(wrong.body["detail"].as_str().is_some_and(|detail| detail.contains("6000")), "{wrong:?}");
    ship().await.problem(409);
    assert_eq!(app.head(), head, "a refused transition wrote");

    assert_eq!(pay(6000).await.status, StatusCode::OK);
    let head = app.head();
    pay(6000).await.problem(409);
    assert_eq!(app.head(), head, "paying twice wrote");

    assert_eq!(ship().await.status, StatusCode::OK);
    let head = app.head();
    cancel().await.problem(409);
    ship().await.problem(409);
    assert_eq!(app.head(), head, "a shipped order changed");
    app.stop().await;
}

#[tokio::test]
async fn every_command_answers_its_version_as_etag_and_records_who_and_why() {
    let app = TestApp::spawn().await;
    app.create_product("mug-1", 1000, 10).await;
    let registered = app
        .post(
            "/api/v1/customers",
            None,
            json!({"email": "lea@example.com", "name": "Lea", "password": "correct horse"}),
        )
        .await;
    assert_eq!(registered.status, StatusCode::CREATED, "{registered:?}");
    let customer_id = registered.body["customer_id"].as_str().expect("customer id").to_owned();
    let token = app.login("lea@example.com").await;
    let added = app.add_to_cart(&token, "mug-1", 2).await;
    let removed = app.request(Method::DELETE, "/api/v1/cart/items/mug-1", Some(&token), None, &[]).await;
    assert_eq!(app.add_to_cart(&token, "mug-1", 1).await.status, StatusCode::OK);
    let placed = app.checkout(&token).await;
    let order = placed.body["order_id"].as_str().expect("order id").to_owned();
    let total = placed.body["total_cents"].as_i64().expect("total");
    let paid = app.post(&format!("/api/v1/orders/{order}/pay"), Some(&token), json!({"amount_cents": total})).await;
    let shipped = app.post(&format!("/api/v1/orders/{order}/ship"), Some(ADMIN), json!({})).await;
    for reply in [&registered, &added, &removed, &placed, &paid, &shipped] {
        assert!(reply.status.is_success(), "{reply:?}");
        let version = reply.body["version"].as_u64().expect("a version");
        assert_eq!(reply.headers["etag"], format!("\"{version}\""), "{reply:?}");
    }

    // Who: the admin, the public (a registration), the customer. Why: one
    // correlation id for all the events of one command, a new one for each command.
    let product = app.events_of("product-mug-1").await;
    assert_eq!(product[0]["actor"], "admin");
    let customer = app.events_of(&format!("customer-{customer_id}")).await;
    assert_eq!(customer[0]["actor"], "public");
    let order_events = app.events_of(&format!("order-{order}")).await;
    let lea = format!("customer:{customer_id}");
    assert_eq!(
        order_events.iter().map(|event| event["actor"].as_str().unwrap_or("")).collect::<Vec<_>>(),
        [lea.as_str(), lea.as_str(), "admin"]
    );
    let placed_at = order_events[0]["position"].as_u64().expect("position");
    let all = app.get("/api/v1/events?from=1&limit=1000", Some(ADMIN)).await;
    let all = all.body["events"].as_array().expect("events").clone();
    let of_checkout: Vec<&serde_json::Value> =
        all.iter().filter(|event| event["correlation_id"] == order_events[0]["correlation_id"]).collect();
    assert!(of_checkout.len() >= 3, "the order, its stock reservation and the cart: {of_checkout:?}");
    assert!(of_checkout.iter().any(|event| event["position"] == placed_at));
    for event in &of_checkout {
        assert_eq!(event["causation_id"], event["correlation_id"], "a command's events are caused by the command");
        assert_eq!(event["recorded_at"], of_checkout[0]["recorded_at"], "one command, one time");
    }
    let correlations: std::collections::BTreeSet<&str> =
        all.iter().filter_map(|event| event["correlation_id"].as_str()).collect();
    assert!(correlations.len() >= 8, "each command has its own correlation id: {correlations:?}");
    app.stop().await;
}

#[tokio::test]
async fn if_match_guards_carts_and_orders_too() {
    let app = TestApp::spawn().await;
    app.create_product("mug-1", 6000, 10).await;
    let token = app.customer("nia@example.com").await;
    let added = app.add_to_cart(&token, "mug-1", 1).await;
    let version = added.body["version"].as_u64().expect("version");
    let add_if = |version: u64| {
        let if_match = format!("\"{version}\"");
        let (app, token) = (&app, token.clone());
        async move {
            let body = json!({"sku": "mug-1", "quantity": 1});
            app.request(Method::POST, "/api/v1/cart/items", Some(&token), Some(body), &[("If-Match", &if_match)]).await
        }
    };
    let head = app.head();
    add_if(version - 1).await.problem(412);
    assert_eq!(app.head(), head, "a stale If-Match wrote");
    let current = add_if(version).await;
    assert_eq!(current.status, StatusCode::OK, "{current:?}");
    assert_eq!(current.body["version"], version + 1);

    let order = app.checkout(&token).await.body["order_id"].as_str().expect("order id").to_owned();
    let pay = |if_match: &'static str| {
        let (app, token, path) = (&app, token.clone(), format!("/api/v1/orders/{order}/pay"));
        async move {
            let body = json!({"amount_cents": 12000});
            app.request(Method::POST, &path, Some(&token), Some(body), &[("If-Match", if_match)]).await
        }
    };
    let head = app.head();
    pay("\"2\"").await.problem(412);
    assert_eq!(app.head(), head, "a stale If-Match on an order wrote");
    let paid = pay("\"1\"").await;
    assert_eq!((paid.status, paid.body["version"].clone()), (StatusCode::OK, json!(2)), "{paid:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_payment_of_no_money_is_a_422_naming_the_amount() {
    let app = TestApp::spawn().await;
    app.create_product("mug-1", 1000, 10).await;
    let token = app.customer("mo@example.com").await;
    let (order, _) = app.place_order(&token, "mug-1", 1).await;
    let head = app.head();
    for amount in [0, -1] {
        let reply =
            app.post(&format!("/api/v1/orders/{order}/pay"), Some(&token), json!({"amount_cents": amount})).await;
        assert_eq!(reply.problem(422)["errors"][0]["field"], "amount_cents", "{reply:?}");
    }
    // One cent passes validation and is refused by the rule: the wrong amount.
    app.post(&format!("/api/v1/orders/{order}/pay"), Some(&token), json!({"amount_cents": 1})).await.problem(409);
    assert_eq!(app.head(), head);
    app.stop().await;
}

#[tokio::test]
async fn the_audit_routes_page_through_the_log_and_redact_secrets() {
    let app = TestApp::spawn().await;
    app.create_product("p1", 100, 1).await;
    let customer_id = app.register("dee@example.com").await;
    let page = app.get("/api/v1/events?from=1&limit=2", Some(ADMIN)).await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    let events = page.body["events"].as_array().expect("events");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["position"], 1);
    assert_eq!(events[0]["type"], "ProductCreated");
    assert_eq!(events[0]["data"]["sku"], "p1");
    assert_eq!(events[0]["hash"].as_str().map(str::len), Some(64));
    // Event ids are UUIDv7 (DESIGN §3): time-ordered like the log.
    let ids: Vec<uuid::Uuid> =
        events.iter().map(|event| event["event_id"].as_str().expect("an id").parse().expect("a UUID")).collect();
    assert!(ids.iter().all(|id| id.get_version_num() == 7), "{ids:?}");
    assert_eq!(page.body["next"], 3);
    let customer = app.events_of(&format!("customer-{customer_id}")).await;
    assert_eq!(customer[0]["type"], "CustomerRegistered");
    assert_eq!(customer[0]["data"]["email"], "dee@example.com");
    assert_eq!(customer[0]["data"]["password_hash"], "[redacted]", "{customer:?}");
    app.stop().await;
}

#[tokio::test]
async fn the_data_dir_holds_no_email_name_or_password_hash_in_clear() {
    let app = TestApp::spawn().await;
    let reply = app
        .post(
            "/api/v1/customers",
            None,
            json!({"email": "Grace.Hopper@Example.com", "name": "Grace Brewster Hopper", "password": "cobol-forever"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    app.create_product("visible-marker-sku", 100, 1).await;
    let dir = app.dir.path().to_path_buf();
    app.log().make_durable().expect("flushes");
    assert!(tests::files_contain(&dir, b"visible-marker-sku"), "the search sees what is in clear");
    for secret in
        [&b"Grace.Hopper@Example.com"[..], b"grace.hopper@example.com", b"Grace Brewster Hopper", b"$argon2id$"]
    {
        assert!(!tests::files_contain(&dir, secret), "{} is on disk in clear", String::from_utf8_lossy(secret));
    }
    app.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_and_customer_tokens_survive_a_restart() {
    let app = TestApp::spawn().await;
    app.create_product("vase", 4000, 2).await;
    let token = app.customer("kim@example.com").await;
    let key = [("Idempotency-Key", "add-vase-once")];
    let first = app
        .request(Method::POST, "/api/v1/cart/items", Some(&token), Some(json!({"sku": "vase", "quantity": 1})), &key)
        .await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let app = app.restart().await;
    let head = app.head();
    let again = app
        .request(Method::POST, "/api/v1/cart/items", Some(&token), Some(json!({"sku": "vase", "quantity": 1})), &key)
        .await;
    assert_eq!(again.status, StatusCode::OK, "the token still works and the repeat is answered: {again:?}");
    assert_eq!(
        (again.body["position"].clone(), again.body["version"].clone()),
        (first.body["position"].clone(), first.body["version"].clone())
    );
    assert_eq!(app.head(), head, "the repeat after a restart wrote nothing");
    app.stop().await;
}
