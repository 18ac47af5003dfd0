//! Every error is RFC 9457 problem+json with the right status, and no bad input
//! changes the log.

use reqwest::Method;
use serde_json::json;

use super::{ADMIN, TestApp, VIEWER};

#[tokio::test]
async fn malformed_unauthorized_forbidden_and_unsupported_requests_are_problems_and_write_nothing() {
    let app = TestApp::spawn().await;
    app.create_product("mug", 1000, 1).await;
    let token = app.customer("eve@example.com").await;
    let head = app.head();

    let malformed = app
        .client
        .post(format!("{}/api/v1/products", app.base))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body("{\"sku\": ")
        .send()
        .await
        .expect("answers");
    assert_eq!(malformed.status(), 400);
    assert_eq!(malformed.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = malformed.json().await.expect("a JSON problem");
    assert_eq!(problem["status"], 400, "{problem}");

    let not_json = app
        .client
        .post(format!("{}/api/v1/products", app.base))
        .bearer_auth(ADMIN)
        .header("content-type", "text/plain")
        .body("sku=mug")
        .send()
        .await
        .expect("answers");
    assert_eq!(not_json.status(), 415);
    assert_eq!(not_json.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = not_json.json().await.expect("a JSON problem");
    assert_eq!(problem["status"], 415, "{problem}");

    let body = json!({"sku": "new", "name": "New", "price_cents": 100});
    let anonymous = app.post("/api/v1/products", None, body.clone()).await;
    anonymous.problem(401);
    assert_eq!(anonymous.headers["www-authenticate"], "Bearer");
    app.post("/api/v1/products", Some("not-a-token"), body.clone()).await.problem(401);
    app.post("/api/v1/products", Some(VIEWER), body.clone()).await.problem(403);
    app.post("/api/v1/products", Some(&token), body.clone()).await.problem(403);
    app.post("/api/v1/cart/items", Some(ADMIN), json!({"sku": "mug", "quantity": 1})).await.problem(403);
    app.post("/api/v1/cart/items", None, json!({"sku": "mug", "quantity": 1})).await.problem(401);
    app.get("/api/v1/events", Some(&token)).await.problem(403);

    assert_eq!(app.head(), head, "no refused request wrote anything");
    app.stop().await;
}

#[tokio::test]
async fn validation_errors_name_every_bad_field() {
    let app = TestApp::spawn().await;
    let token = app.customer("val@example.com").await;
    let head = app.head();
    let reply =
        app.post("/api/v1/products", Some(ADMIN), json!({"sku": "bad sku!", "name": "", "price_cents": 0})).await;
    let problem = reply.problem(422);
    let fields: Vec<&str> =
        problem["errors"].as_array().expect("errors").iter().filter_map(|error| error["field"].as_str()).collect();
    assert_eq!(fields, ["sku", "name", "price_cents"], "{problem}");
    assert!(problem["errors"][0]["message"].is_string());

    // A value of the wrong type or out of its type's range, a field missing, a
    // field unknown: each named in `errors`.
    for (path, token, body, field) in [
        ("/api/v1/products", ADMIN, json!({"sku": "ok", "name": "Ok", "price_cents": "ten"}), "price_cents"),
        ("/api/v1/products", ADMIN, json!({"sku": "ok", "name": "Ok", "price_cents": 10, "colour": 1}), "colour"),
        ("/api/v1/products", ADMIN, json!({"name": "Ok", "price_cents": 10}), "sku"),
        (
            "/api/v1/products",
            ADMIN,
            json!({"sku": "ok", "name": "Ok", "price_cents": 10, "initial_stock": -1}),
            "initial_stock",
        ),
        ("/api/v1/cart/items", token.as_str(), json!({"sku": "ok", "quantity": -1}), "quantity"),
        ("/api/v1/cart/items", token.as_str(), json!({"sku": "ok", "quantity": 5_000_000_000_u64}), "quantity"),
    ] {
        let reply = app.post(path, Some(token), body.clone()).await;
        let problem = reply.problem(422);
        assert_eq!(problem["errors"][0]["field"], field, "{body}: {problem}");
        assert!(problem["errors"][0]["message"].as_str().is_some_and(|message| !message.is_empty()), "{problem}");
    }
    // A body with several such errors gets them all at once: the unknown field
    // and the value of the wrong type, then every required field left out.
    let reply = app.post("/api/v1/products", Some(ADMIN), json!({"price_cents": "ten", "colour": 1})).await;
    let problem = reply.problem(422);
    let fields: Vec<&str> =
        problem["errors"].as_array().expect("errors").iter().filter_map(|error| error["field"].as_str()).collect();
    assert_eq!(fields, ["colour", "price_cents", "sku", "name"], "{problem}");
    assert_eq!(problem["errors"][3]["message"], "missing field `name`", "{problem}");
    let short_password =
        app.post("/api/v1/customers", None, json!({"email": "a@b.co", "name": "A", "password": "short"})).await;
    assert_eq!(short_password.problem(422)["errors"][0]["field"], "password");
    // A field given twice is refused, whichever value a reader would keep.
    let repeated = app
        .client
        .post(format!("http://{}/api/v1/products", app.address()))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(r#"{"sku": "twice", "name": "Twice", "price_cents": 10, "price_cents": 20}"#)
        .send()
        .await
        .expect("the server answers");
    assert_eq!(repeated.status().as_u16(), 422);
    let problem: serde_json::Value = repeated.json().await.expect("a problem");
    assert_eq!(problem["errors"], json!([{"field": "price_cents", "message": "duplicate field `price_cents`"}]));
    assert_eq!(app.head(), head);
    app.stop().await;
}

#[tokio::test]
async fn unknown_routes_wrong_methods_and_missing_things_are_problems() {
    let app = TestApp::spawn().await;
    let token = app.customer("fay@example.com").await;
    let head = app.head();
    app.get("/api/v1/nothing-here", None).await.problem(404);
    app.post("/api/v1/nothing-here", Some(ADMIN), json!({})).await.problem(404);
    let wrong_method = app.request(Method::PUT, "/api/v1/products", Some(ADMIN), Some(json!({})), &[]).await;
    wrong_method.problem(405);
    assert!(wrong_method.headers.contains_key("allow"));
    app.post("/api/v1/products/ghost/restock", Some(ADMIN), json!({"quantity": 1})).await.problem(404);
    app.post("/api/v1/orders/not-a-uuid/pay", Some(&token), json!({"amount_cents": 1})).await.problem(404);
    app.post(&format!("/api/v1/orders/{}/pay", uuid::Uuid::now_v7()), Some(&token), json!({"amount_cents": 1}))
        .await
        .problem(404);
    assert_eq!(app.head(), head, "a request to nothing wrote");
    app.stop().await;
}

#[tokio::test]
async fn rule_conflicts_are_409_and_out_of_stock_names_the_skus() {
    let app = TestApp::spawn().await;
    app.create_product("a-1", 100, 1).await;
    app.create_product("b-2", 100, 5).await;
    let head = app.head();
    app.post("/api/v1/products", Some(ADMIN), json!({"sku": "a-1", "name": "Again", "price_cents": 100}))
        .await
        .problem(409);
    assert_eq!(app.head(), head, "a product created twice wrote");
    let token = app.customer("gus@example.com").await;
    app.add_to_cart(&token, "a-1", 2).await;
    app.add_to_cart(&token, "b-2", 1).await;
    let head = app.head();
    let short = app.checkout(&token).await;
    assert_eq!(short.problem(409)["skus"], json!(["a-1"]));
    assert_eq!(app.head(), head);
    // Discontinued products in the cart are named the same way.
    for sku in ["a-1", "b-2"] {
        let path = format!("/api/v1/products/{sku}/discontinue");
        assert_eq!(app.post(&path, Some(ADMIN), json!({})).await.status, reqwest::StatusCode::OK);
    }
    let head = app.head();
    let gone = app.checkout(&token).await;
    assert_eq!(gone.problem(409)["skus"], json!(["a-1", "b-2"]), "{gone:?}");
    assert_eq!(app.head(), head);

    let empty = app.customer("hal@example.com").await;
    let head = app.head();
    app.checkout(&empty).await.problem(422);
    app.post(
        "/api/v1/customers",
        None,
        json!({"email": "GUS@example.com", "name": "Gus", "password": "correct horse"}),
    )
    .await
    .problem(409);
    assert_eq!(app.head(), head, "an empty checkout or a taken email wrote");
    app.stop().await;
}

#[tokio::test]
async fn a_body_over_64_kib_is_refused_with_413() {
    let app = TestApp::spawn().await;
    let head = app.head();
    let name = "x".repeat(70 * 1024);
    let reply = app.post("/api/v1/products", Some(ADMIN), json!({"sku": "big", "name": name, "price_cents": 1})).await;
    reply.problem(413);
    assert_eq!(app.head(), head);

    // A body declared too long is refused at once, before it is sent (and not
    // after the request timeout, waiting for it).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.expect("connects");
    let request = format!(
        "POST /api/v1/products HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("sends the head");
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer)).await;
    let len = read.expect("answered before the body came").expect("reads");
    let answer = String::from_utf8_lossy(&answer[..len]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert_eq!(app.head(), head);
    app.stop().await;
}

/// What hyper refuses before a request exists (a request line or header it
/// cannot parse, a target over its limit, header fields over theirs) is
/// problem+json too, with its length, and the connection is closed.
#[tokio::test]
async fn what_hyper_refuses_before_a_request_exists_is_problem_json() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let head = app.head();
    let address = app.base.trim_start_matches("http://").to_owned();
    let many_fields: String = (0..200).map(|index| format!("X-Field-{index}: {index}\r\n")).collect();
    for (request, status) in [
        ("GARBAGE\r\n\r\n".to_owned(), 400),
        (format!("GET /api/v1/products HTTP/1.1\r\nHost: {address}\r\nNo colon here\r\n\r\n"), 400),
        (format!("GET /{} HTTP/1.1\r\nHost: {address}\r\n\r\n", "a".repeat(70 * 1024)), 414),
        (format!("GET /api/v1/products HTTP/1.1\r\nHost: {address}\r\n{many_fields}\r\n"), 431),
    ] {
        let mut stream = tokio::net::TcpStream::connect(&address).await.expect("connects");
        stream.write_all(request.as_bytes()).await.expect("sends");
        let mut answer = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        read.expect("answered, and the connection closed").expect("reads");
        let answer = String::from_utf8(answer).expect("text");
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{answer}");
        let fields = format!("{head}\r\n");
        assert!(fields.contains("\r\ncontent-type: application/problem+json\r\n"), "{answer}");
        assert!(fields.contains(&format!("\r\ncontent-length: {}\r\n", body.len())), "{answer}");
        let problem: serde_json::Value = serde_json::from_str(body).expect("a JSON problem");
        assert_eq!(problem["status"], status, "{problem}");
        assert!(problem["detail"].as_str().is_some_and(|detail| !detail.is_empty()), "{problem}");
    }
    // The connection after goes on as ever.
    assert_eq!(app.get("/api/v1/products", None).await.status, 200);
    assert_eq!(app.head(), head);
    app.stop().await;
}

#[tokio::test]
async fn login_is_rate_limited_with_retry_after() {
    let app = TestApp::spawn().await;
    app.register("ivy@example.com").await;
    let head = app.head();
    let mut limited = None;
    for _ in 0..12 {
        let reply =
            app.post("/api/v1/sessions", None, json!({"email": "ivy@example.com", "password": "wrong password"})).await;
        if reply.status == 429 {
            limited = Some(reply);
            break;
        }
        reply.problem(401);
    }
    let limited = limited.expect("the 11th attempt within a minute is limited");
    limited.problem(429);
    let retry_after: u64 = limited.headers["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=60).contains(&retry_after));
    assert_eq!(app.head(), head, "failed and limited logins wrote");
    app.stop().await;
}

/// The limit per client address (ten times the one per email) stops one client
/// trying one password on many emails; a login answers its token, the customer
/// and when the token expires (24 h on).
#[tokio::test]
async fn login_is_limited_per_client_address_too_and_answers_when_its_token_expires() {
    let app = TestApp::spawn_with(|config| config.login_attempts_per_minute = 1).await;
    let customer_id = app.register("uma@example.com").await;
    let before = chrono::Utc::now();
    let session =
        app.post("/api/v1/sessions", None, json!({"email": "uma@example.com", "password": "correct horse"})).await;
    assert_eq!(session.status, 200, "{session:?}");
    assert!(session.body["token"].as_str().is_some_and(|token| !token.is_empty()), "{session:?}");
    assert_eq!(session.body["customer_id"].as_str(), Some(customer_id.as_str()), "{session:?}");
    let expires_at: chrono::DateTime<chrono::Utc> =
        session.body["expires_at"].as_str().expect("expires_at").parse().expect("an RFC 3339 time");
    let lifetime = expires_at - before;
    assert!(
        (chrono::Duration::hours(24)..=chrono::Duration::hours(24) + chrono::Duration::minutes(1)).contains(&lifetime)
    );

    // One attempt so far from this address; nine more, each on an email of its own.
    for index in 0..9 {
        let attempt = json!({"email": format!("nobody{index}@example.com"), "password": "wrong password"});
        app.post("/api/v1/sessions", None, attempt).await.problem(401);
    }
    let fresh = json!({"email": "fresh@example.com", "password": "wrong password"});
    let limited = app.post("/api/v1/sessions", None, fresh).await;
    limited.problem(429);
    assert!(limited.headers.contains_key("retry-after"), "{limited:?}");
    app.stop().await;
}

/// A failed login of an email of its own, as forwarded for `forwarded`; its status.
async fn login_from(app: &TestApp, forwarded: &str, index: usize) -> reqwest::StatusCode {
    let body = json!({"email": format!("nobody{index}@example.com"), "password": "wrong password"});
    let headers = [("x-forwarded-for", forwarded)];
    app.request(Method::POST, "/api/v1/sessions", None, Some(body), &headers).await.status
}

/// Behind a trusted reverse proxy (`trusted_proxies`, here the test's own
/// loopback address) the limits per client address count the address the proxy
/// put last in `X-Forwarded-For`: one client's failed logins do not lock out
/// another's, and what a client writes before the proxy's entry is not believed.
/// Without the setting the header is ignored: every request is the peer's.
#[tokio::test]
async fn behind_a_trusted_proxy_the_client_is_the_address_it_forwards() {
    for trusted in [true, false] {
        let app = TestApp::spawn_with(|config| {
            config.login_attempts_per_minute = 1;
            config.trusted_proxies = trusted.then(|| "10.9.9.9, 127.0.0.1".to_owned());
        })
        .await;
        // Ten a minute from one address: the eleventh is limited.
        for index in 0..10 {
            assert_eq!(login_from(&app, "203.0.113.1", index).await, 401, "trusted: {trusted}");
        }
        assert_eq!(login_from(&app, "203.0.113.1", 10).await, 429, "trusted: {trusted}");
        // A client that writes another address first is still the one the proxy saw.
        assert_eq!(login_from(&app, "198.51.100.7, 203.0.113.1", 11).await, 429, "trusted: {trusted}");
        // Another client, through the same proxy (and a second trusted one).
        let other = login_from(&app, "203.0.113.2, 10.9.9.9", 12).await;
        assert_eq!(other, if trusted { 401 } else { 429 }, "trusted: {trusted}");
        app.stop().await;
    }
}

/// Logins of one email are limited per client address (`login_attempts_per_minute`),
/// and from all addresses together to ten times as many: another client's
/// failures do not keep the owner out, but a crowd of clients is still held to
/// a bound.
#[tokio::test]
async fn another_clients_failed_logins_do_not_lock_the_owner_out() {
    let app = TestApp::spawn_with(|config| {
        config.login_attempts_per_minute = 1;
        config.trusted_proxies = Some("127.0.0.1".to_owned());
    })
    .await;
    app.register("owner@example.com").await;
    let login = |forwarded: String, password: &'static str| {
        let app = &app;
        async move {
            let body = json!({"email": "owner@example.com", "password": password});
            let headers = [("x-forwarded-for", forwarded.as_str())];
            app.request(Method::POST, "/api/v1/sessions", None, Some(body), &headers).await.status
        }
    };
    assert_eq!(login("203.0.113.9".to_owned(), "wrong password").await, 401);
    assert_eq!(login("203.0.113.9".to_owned(), "wrong password").await, 429, "one a minute from one address");
    assert_eq!(login("198.51.100.1".to_owned(), "correct horse").await, 200, "the owner, from another address");
    for client in 2..10 {
        assert_eq!(login(format!("198.51.100.{client}"), "wrong password").await, 401);
    }
    // Ten counted from all addresses (the first address's second try stopped at
    // its own limit, uncounted past it): the crowd is held, the owner too.
    assert_eq!(login("198.51.100.200".to_owned(), "correct horse").await, 429);
    app.stop().await;
}

/// A registration costs a password hash (tens of milliseconds of a core, on the
/// cores logins verify on): one of a taken address is refused before hashing,
/// and registrations are limited per client address (as many as logins,
/// counted apart). `/metrics` counts the hashes and verifications.
#[tokio::test]
async fn registrations_of_a_taken_address_cost_no_hash_and_are_limited_per_client_address() {
    let app = TestApp::spawn_with(|config| config.login_attempts_per_minute = 1).await;
    let counter = |text: &str, name: &str| -> u64 {
        let line = text.lines().find(|line| line.starts_with(&format!("{name} ")));
        line.and_then(|line| line.split_whitespace().nth(1)).and_then(|value| value.parse().ok()).unwrap_or(0)
    };
    let metrics = || async { app.get("/metrics", None).await.body.as_str().unwrap_or_default().to_owned() };
    app.register("vera@example.com").await;
    let hashes = counter(&metrics().await, "password_hashes_total");
    assert_eq!(hashes, 1, "one registration, one hash");

    let head = app.head();
    let again = json!({"email": "VERA@example.com", "name": "Vera", "password": "another password"});
    for _ in 0..3 {
        let refused = app.post("/api/v1/customers", None, again.clone()).await;
        assert_eq!(refused.status, 409, "{refused:?}");
    }
    assert_eq!(counter(&metrics().await, "password_hashes_total"), hashes, "a taken address was hashed");
    assert_eq!(app.head(), head);

    // Ten a minute from one address here (ten times `login_attempts_per_minute`):
    // four so far.
    for index in 0..6 {
        let fresh = json!({"email": format!("new{index}@example.com"), "name": "New", "password": "correct horse"});
        assert_eq!(app.post("/api/v1/customers", None, fresh).await.status, 201);
    }
    let fresh = json!({"email": "one-too-many@example.com", "name": "New", "password": "correct horse"});
    let limited = app.post("/api/v1/customers", None, fresh).await;
    limited.problem(429);
    assert!(limited.headers.contains_key("retry-after"), "{limited:?}");
    // Logins are counted apart: the address may still log in.
    let login = app.post("/api/v1/sessions", None, json!({"email": "vera@example.com", "password": "correct horse"}));
    assert_eq!(login.await.status, 200);
    assert_eq!(counter(&metrics().await, "password_verifications_total"), 1);
    app.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/healthz", None).await.status, 200);
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status, 200);
    app.create_product("m", 1, 1).await;
    let metrics = app.get("/metrics", None).await;
    let text = metrics.body.as_str().expect("text");
    assert!(text.contains(r#"http_requests_total{method="POST",path="/api/v1/products",status="201"}"#), "{text}");
    assert!(text.contains("# TYPE http_request_duration_seconds histogram"), "{text}");
    assert!(
        text.contains(r#"http_request_duration_seconds_bucket{method="POST",path="/api/v1/products",le="+Inf"}"#),
        "{text}"
    );
    // The log's counters are counters, as Prometheus names them.
    for counter in [
        "log_committed_appends_total",
        "log_committed_events_total",
        "log_fsync_batches_total",
        "log_checkpoints_total",
    ] {
        assert!(text.contains(&format!("# TYPE {counter} counter")), "{counter}: {text}");
    }
    let value = |name: &str| -> f64 {
        let series = text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok());
        series.unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert!(value("log_committed_appends_total") >= 1.0, "{text}");
    assert!(value("log_fsync_batches_total") >= 1.0, "{text}");
    assert!(value("log_head_position") >= 1.0, "{text}");
    assert!(value("log_fsync_batch_appends_mean") >= 1.0, "the batch size per fsync: {text}");
    assert_eq!(value("log_accepting_appends"), 1.0, "{text}");
    let echoed = app.request(Method::GET, "/healthz", None, None, &[("x-request-id", "abc-123")]).await;
    assert_eq!(echoed.headers["x-request-id"], "abc-123");
    assert!(
        app.get("/healthz", None).await.headers.contains_key("x-request-id"),
        "a request id is made when none is sent"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_if_match_that_is_not_a_version_is_a_bad_request() {
    let app = TestApp::spawn().await;
    app.create_product("tag", 100, 1).await;
    let head = app.head();
    for bad in ["one", "\"one\"", "\"\"", "\"+1\"", "\"1"] {
        let reply = app
            .request(
                Method::POST,
                "/api/v1/products/tag/restock",
                Some(ADMIN),
                Some(json!({"quantity": 1})),
                &[("If-Match", bad)],
            )
            .await;
        reply.problem(400);
    }
    // Given twice, a header that counts once is refused, whichever comes first:
    // which of the two would count is anyone's guess.
    let restock = |headers: &'static [(&'static str, &'static str)], token: Option<&'static str>| {
        app.request(Method::POST, "/api/v1/products/tag/restock", token, Some(json!({"quantity": 1})), headers)
    };
    for (header, twice) in [
        ("If-Match", &[("If-Match", "\"1\""), ("If-Match", "\"9\"")][..]),
        ("Idempotency-Key", &[("Idempotency-Key", "a"), ("Idempotency-Key", "b")][..]),
    ] {
        let reply = restock(twice, Some(ADMIN)).await;
        assert_eq!(reply.problem(400)["detail"], format!("{header} must be given once"), "{reply:?}");
    }
    // Two credentials: neither is taken.
    restock(&[("Authorization", "Bearer not-the-token")], Some(ADMIN)).await.problem(401);
    assert_eq!(app.head(), head, "a refused request wrote");
    let weak = app
        .request(
            Method::POST,
            "/api/v1/products/tag/restock",
            Some(ADMIN),
            Some(json!({"quantity": 1})),
            &[("If-Match", "W/\"1\"")],
        )
        .await;
    assert_eq!(weak.status, 200, "{weak:?}");
    let bare = app
        .request(
            Method::POST,
            "/api/v1/products/tag/restock",
            Some(ADMIN),
            Some(json!({"quantity": 1})),
            &[("If-Match", "2")],
        )
        .await;
    assert_eq!(bare.status, 200, "a bare version is taken too: {bare:?}");
    assert_eq!(app.head(), head + 2);
    app.stop().await;
}

#[tokio::test]
async fn bad_queries_are_422_problems_naming_every_bad_parameter() {
    let app = TestApp::spawn().await;
    app.create_product("mug-1", 100, 1).await;
    for (path, field) in [
        ("/api/v1/events?from=abc", "from"),
        ("/api/v1/events?limit=0", "limit"),
        ("/api/v1/events?limit=1001", "limit"),
        ("/api/v1/streams/product-mug-1/events?limit=0", "limit"),
        ("/api/v1/streams/product-mug-1/events?from_version=x", "from_version"),
        // Routes that take no parameters name any given.
        ("/admin/projections?colour=red", "colour"),
        ("/admin/backup?colour=red", "colour"),
    ] {
        let reply = app.get(path, Some(ADMIN)).await;
        let problem = reply.problem(422);
        assert_eq!(problem["errors"][0]["field"], field, "{path}: {problem}");
    }
    let reply = app.get("/api/v1/events?colour=red", Some(ADMIN)).await;
    let problem = reply.problem(422);
    assert_eq!(problem["errors"][0]["field"], "colour", "{problem}");
    // Every bad parameter at once, each under its own name, in the order given.
    for (path, expected) in [
        ("/api/v1/events?limit=ten&colour=red&from=-1", &["limit", "colour", "from"][..]),
        ("/api/v1/products?min_position=x&limit=2&limit=3&after=mug-1", &["min_position", "limit"][..]),
        ("/api/v1/orders?before=soon&limit=x", &["before", "limit"][..]),
    ] {
        let reply = app.get(path, Some(ADMIN)).await;
        let problem = reply.problem(422);
        let fields: Vec<&str> =
            problem["errors"].as_array().expect("errors").iter().filter_map(|error| error["field"].as_str()).collect();
        assert_eq!(fields, expected, "{path}: {problem}");
    }
    // A stream no event was appended to is not there; one read past its end is an empty page.
    let unknown = app.get("/api/v1/streams/product-ghost/events", Some(ADMIN)).await;
    assert_eq!(unknown.problem(404)["detail"], "stream product-ghost has no events");
    let past = app.get("/api/v1/streams/product-mug-1/events?from_version=2", Some(ADMIN)).await;
    assert_eq!((past.status.as_u16(), &past.body["events"]), (200, &json!([])), "{past:?}");
    app.stop().await;
}
