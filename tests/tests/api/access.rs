//! Who may call what (DESIGN §6's table): every route refuses the callers its
//! role does not admit, with a problem and without writing, and a customer
//! reaches only their own cart and orders.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{ADMIN, TestApp, VIEWER};

/// The roles a route admits.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Admin,
    Viewer,
    Customer,
}

use Role::{Admin, Customer, Viewer};

#[tokio::test]
async fn every_route_refuses_the_callers_its_role_does_not_admit_and_writes_nothing() {
    let app = TestApp::spawn().await;
    app.create_product("mug-1", 1200, 10).await;
    let customer_id = app.register("ann@example.com").await;
    let ann = app.login("ann@example.com").await;
    let (order, _) = app.place_order(&ann, "mug-1", 1).await;
    assert_eq!(app.add_to_cart(&ann, "mug-1", 1).await.status, StatusCode::OK);

    let body = |value: Value| Some(value);
    let routes: Vec<(Method, String, Option<Value>, &[Role])> = vec![
        (
            Method::POST,
            "/api/v1/products".into(),
            body(json!({"sku": "new-1", "name": "New", "price_cents": 100, "initial_stock": 1})),
            &[Admin],
        ),
        (Method::POST, "/api/v1/products/mug-1/price".into(), body(json!({"price_cents": 1500})), &[Admin]),
        (Method::POST, "/api/v1/products/mug-1/restock".into(), body(json!({"quantity": 5})), &[Admin]),
        (Method::POST, "/api/v1/products/mug-1/discontinue".into(), body(json!({})), &[Admin]),
        (Method::GET, "/api/v1/cart".into(), None, &[Customer]),
        (Method::POST, "/api/v1/cart/items".into(), body(json!({"sku": "mug-1", "quantity": 1})), &[Customer]),
        (Method::DELETE, "/api/v1/cart/items/mug-1".into(), None, &[Customer]),
        (Method::POST, "/api/v1/cart/checkout".into(), body(json!({})), &[Customer]),
        (Method::GET, "/api/v1/orders".into(), None, &[Customer, Admin]),
        (Method::GET, format!("/api/v1/orders/{order}"), None, &[Customer, Admin]),
        (Method::POST, format!("/api/v1/orders/{order}/pay"), body(json!({"amount_cents": 1200})), &[Customer]),
        (Method::POST, format!("/api/v1/orders/{order}/cancel"), body(json!({})), &[Customer]),
        (Method::POST, format!("/api/v1/orders/{order}/ship"), body(json!({})), &[Admin]),
        (Method::GET, "/api/v1/dashboard/sales".into(), None, &[Admin, Viewer]),
        (Method::GET, "/api/v1/streams/product-mug-1/events".into(), None, &[Admin]),
        (Method::GET, "/api/v1/events?from=1&limit=10".into(), None, &[Admin]),
        (Method::GET, "/api/v1/events/live".into(), None, &[Admin, Viewer]),
        (Method::GET, "/admin/projections".into(), None, &[Admin]),
        (Method::POST, "/admin/projections/catalog/rebuild".into(), None, &[Admin]),
        (Method::GET, "/admin/backup".into(), None, &[Admin]),
        (Method::POST, format!("/admin/customers/{customer_id}/forget"), body(json!({})), &[Admin]),
    ];
    let callers =
        [(None, None), (Some(VIEWER), Some(Viewer)), (Some(ann.as_str()), Some(Customer)), (Some(ADMIN), Some(Admin))];

    let head = app.head();
    let mut refusals = 0;
    for (method, path, body, admitted) in &routes {
        for (token, role) in callers {
            if role.is_some_and(|role| admitted.contains(&role)) {
                continue;
            }
            let expected = if token.is_none() { 401 } else { 403 };
            // The caller is refused before anything else about the request is
            // looked at: a query that asks to wait, or that is wrong, changes nothing.
            let separator = if path.contains('?') { '&' } else { '?' };
            let waiting = format!("{path}{separator}min_position=999999999&limit=0");
            let paths: &[&str] = if *method == Method::GET { &[path, &waiting] } else { &[path] };
            for path in paths {
                let reply = app.request(method.clone(), path, token, body.clone(), &[]).await;
                assert_eq!(reply.status.as_u16(), expected, "{method} {path} as {token:?}: {reply:?}");
                reply.problem(expected);
            }
            refusals += 1;
        }
    }
    // Every route refuses at least the caller with no token.
    assert!(refusals >= routes.len() * 2, "{refusals} refusals");
    assert_eq!(app.head(), head, "a refused request wrote to the log");

    // The public routes need no token, and a bad one is refused even there.
    assert_eq!(app.get("/api/v1/products", None).await.status, StatusCode::OK);
    assert_eq!(app.get("/api/v1/products/mug-1", None).await.status, StatusCode::OK);
    app.get("/api/v1/orders", Some("not-a-token")).await.problem(401);
    app.get("/api/v1/products", Some("not-a-token")).await.problem(401);
    app.get("/api/v1/products/mug-1", Some("not-a-token")).await.problem(401);
    let login = json!({"email": "ann@example.com", "password": "correct horse"});
    app.post("/api/v1/sessions", Some("not-a-token"), login).await.problem(401);
    let registration = json!({"email": "new@example.com", "name": "New", "password": "correct horse"});
    app.post("/api/v1/customers", Some("not-a-token"), registration).await.problem(401);
    assert_eq!(app.head(), head, "a refused request wrote to the log");
    app.stop().await;
}

#[tokio::test]
async fn a_customer_cannot_pay_cancel_or_read_another_customers_order() {
    let app = TestApp::spawn().await;
    app.create_product("mug-1", 1200, 10).await;
    let ann = app.customer("ann@example.com").await;
    let ben = app.customer("ben@example.com").await;
    let (order, placed) = app.place_order(&ann, "mug-1", 2).await;
    let total = placed.body["total_cents"].as_u64().expect("total");

    let head = app.head();
    // The right amount: what is refused is the caller.
    // In the very words an order that does not exist gets, so that order ids
    // of others cannot be probed.
    let not_found = format!("order {order} does not exist");
    let paid = app.post(&format!("/api/v1/orders/{order}/pay"), Some(&ben), json!({"amount_cents": total})).await;
    assert_eq!(paid.problem(404)["detail"], not_found.as_str());
    let cancelled = app.post(&format!("/api/v1/orders/{order}/cancel"), Some(&ben), json!({})).await;
    assert_eq!(cancelled.problem(404)["detail"], not_found.as_str());
    // With an If-Match, right or wrong, still not found: a 412 would tell the
    // version of an order that is not his.
    for version in ["1", "99"] {
        let path = format!("/api/v1/orders/{order}/pay");
        let body = Some(json!({"amount_cents": total}));
        let paid = app.request(Method::POST, &path, Some(&ben), body, &[("if-match", &format!("\"{version}\""))]).await;
        let problem = paid.problem(404);
        assert!(!problem.to_string().contains("version"), "If-Match {version}: {problem}");
    }
    // An order that does not exist is not found either, whatever If-Match says.
    let nowhere = "/api/v1/orders/01a20b21-03d4-7544-aed4-a9d83193f1d3/cancel";
    let missing = app.request(Method::POST, nowhere, Some(&ben), Some(json!({})), &[("if-match", "\"3\"")]).await;
    assert_eq!(missing.problem(404)["detail"], "order 01a20b21-03d4-7544-aed4-a9d83193f1d3 does not exist");
    // Read once the orders model holds Ann's order, so that "not found" is not
    // merely "not projected yet".
    let position = placed.body["position"].as_u64().expect("position");
    app.get(&format!("/api/v1/orders/{order}?min_position={position}"), Some(&ben)).await.problem(404);
    assert_eq!(app.head(), head, "another customer's order changed");

    // Ben's own list holds none of Ann's orders; Ann's order is still placed.
    let bens = app.get(&format!("/api/v1/orders?min_position={position}"), Some(&ben)).await;
    assert_eq!(bens.status, StatusCode::OK, "{bens:?}");
    assert_eq!(bens.body["items"].as_array().map(Vec::len), Some(0), "{bens:?}");
    let anns = app.get(&format!("/api/v1/orders/{order}?min_position={position}"), Some(&ann)).await;
    assert_eq!(anns.status, StatusCode::OK, "{anns:?}");
    assert_eq!(anns.body["status"], "placed", "{anns:?}");
    // Ann herself may pay it.
    let paid = app.post(&format!("/api/v1/orders/{order}/pay"), Some(&ann), json!({"amount_cents": total})).await;
    assert_eq!(paid.status, StatusCode::OK, "{paid:?}");
    app.stop().await;
}

/// A token that verifies but names a customer the log does not hold (one
/// signed before a restore to an earlier position, whose backup carried the
/// signing secret) is refused, like a forgotten customer's.
#[tokio::test]
async fn a_token_of_a_customer_the_log_does_not_hold_is_refused() {
    let app = TestApp::spawn().await;
    app.create_product("mug-1", 1200, 10).await;
    let stranger = domain::CustomerId::new(uuid::Uuid::now_v7());
    let state = &app.running.as_ref().expect("running").state;
    let (token, _) = state.tokens.issue(stranger, chrono::Utc::now());
    let head = app.head();
    app.get("/api/v1/cart", Some(&token)).await.problem(401);
    app.post("/api/v1/cart/items", Some(&token), json!({"sku": "mug-1", "quantity": 1})).await.problem(401);
    app.post("/api/v1/cart/checkout", Some(&token), json!({})).await.problem(401);
    assert_eq!(app.head(), head, "a refused request wrote to the log");
    // A registered customer's token, signed the same way, works.
    let ann = app.customer("ann@example.com").await;
    assert_eq!(app.get("/api/v1/cart", Some(&ann)).await.status, StatusCode::OK);
    app.stop().await;
}

/// What a request with credentials gets (the audit trail, a backup, a
/// customer's orders, a refusal) is kept by no cache; the public catalog may be.
#[tokio::test]
async fn answers_to_requests_with_credentials_are_kept_by_no_cache() {
    let app = TestApp::spawn().await;
    app.create_product("mug-1", 1200, 4).await;
    let token = app.customer("cache@example.com").await;
    let no_store = |reply: &super::Reply| {
        reply.headers.get("cache-control").and_then(|value| value.to_str().ok()).map(str::to_owned)
    };
    for (path, credentials) in [
        ("/api/v1/events?from=1", ADMIN),
        ("/admin/backup", ADMIN),
        ("/api/v1/orders", token.as_str()),
        ("/admin/backup", VIEWER),
    ] {
        let reply = app.get(path, Some(credentials)).await;
        assert_eq!(no_store(&reply).as_deref(), Some("no-store"), "{path}: {reply:?}");
    }
    let public = app.get("/api/v1/products/mug-1", None).await;
    assert_eq!(public.status, StatusCode::OK);
    assert_eq!(no_store(&public), None, "{public:?}");
    app.stop().await;
}
