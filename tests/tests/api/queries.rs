//! The read side through HTTP: read-your-writes with `min_position` (no sleeps),
//! paging, who may see what, the dashboard, and the projection admin routes.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::{ADMIN, Reply, TestApp, VIEWER};

fn position_of(reply: &Reply) -> u64 {
    reply.body["position"].as_u64().expect("command responses carry the position")
}

fn projection_position(reply: &Reply) -> u64 {
    reply.headers["x-projection-position"].to_str().expect("ascii").parse().expect("a position")
}

#[tokio::test]
async fn a_query_with_min_position_reads_its_own_write() {
    let app = TestApp::spawn().await;
    let created = app.create_product("mug-7", 1299, 5).await;
    let position = position_of(&created);
    let product = app.get(&format!("/api/v1/products/mug-7?min_position={position}"), None).await;
    assert_eq!(product.status, StatusCode::OK, "{product:?}");
    assert!(projection_position(&product) >= position);
    assert_eq!(
        product.body,
        json!({"sku": "mug-7", "name": "Product mug-7", "price_cents": 1299, "on_hand": 5, "reserved": 0, "available": 5, "status": "active", "currency": "USD", "version": 1})
    );

    let restocked = app.post("/api/v1/products/mug-7/restock", Some(ADMIN), json!({"quantity": 3})).await;
    let after = app.get(&format!("/api/v1/products/mug-7?min_position={}", position_of(&restocked)), None).await;
    assert_eq!(after.body["available"], 8);
    // A 404 says how far the catalog had read: the product may come later.
    let ghost = app.get(&format!("/api/v1/products/ghost?min_position={}", position_of(&restocked)), None).await;
    assert!(projection_position(&ghost) >= position_of(&restocked), "{ghost:?}");
    ghost.problem(404);
    // So does one for a sku no product can have.
    let no_sku = app.get(&format!("/api/v1/products/a.b?min_position={}", position_of(&restocked)), None).await;
    assert!(projection_position(&no_sku) >= position_of(&restocked), "{no_sku:?}");
    no_sku.problem(404);
    app.stop().await;
}

/// A product read carries the version of its stream the view is of (`ETag` and
/// `version`), which `If-Match` then takes: a change applies only if nothing
/// changed the product since the read. Events of other streams that change its
/// counts (an order shipped) leave the version as it is.
#[tokio::test]
async fn a_product_read_carries_its_stream_version_for_if_match() {
    let app = TestApp::spawn().await;
    let read = |position: u64| {
        let app = &app;
        async move {
            let product = app.get(&format!("/api/v1/products/lamp?min_position={position}"), None).await;
            assert_eq!(product.status, StatusCode::OK, "{product:?}");
            let etag = product.headers["etag"].to_str().expect("ascii").to_owned();
            assert_eq!(etag, format!("\"{}\"", product.body["version"]), "{product:?}");
            (etag, product.body)
        }
    };
    let created = app.create_product("lamp", 900, 5).await;
    assert_eq!(read(position_of(&created)).await.0, "\"1\"");
    let restocked = app.post("/api/v1/products/lamp/restock", Some(ADMIN), json!({"quantity": 1})).await;
    assert_eq!(read(position_of(&restocked)).await.0, "\"2\"");

    let token = app.customer("lampy@example.com").await;
    app.add_to_cart(&token, "lamp", 2).await;
    let placed = app.post("/api/v1/cart/checkout", Some(&token), json!({})).await;
    let order = placed.body["order_id"].as_str().expect("an order").to_owned();
    let (etag, reserved) = read(position_of(&placed)).await;
    assert_eq!((etag.as_str(), &reserved["reserved"]), ("\"3\"", &json!(2)), "the reservation is the product's event");
    let total = placed.body["total_cents"].clone();
    app.post(&format!("/api/v1/orders/{order}/pay"), Some(&token), json!({"amount_cents": total})).await;
    let shipped = app.post(&format!("/api/v1/orders/{order}/ship"), Some(ADMIN), json!({})).await;
    let (after_ship, product) = read(position_of(&shipped)).await;
    assert_eq!((after_ship.as_str(), &product["reserved"]), ("\"3\"", &json!(0)), "shipping is the order's event");

    let price = Some(json!({"price_cents": 1000}));
    let path = "/api/v1/products/lamp/price";
    app.request(Method::POST, path, Some(ADMIN), price.clone(), &[("If-Match", "\"2\"")]).await.problem(412);
    let fresh = app.request(Method::POST, path, Some(ADMIN), price, &[("If-Match", after_ship.as_str())]).await;
    assert_eq!((fresh.status, fresh.headers["etag"].to_str().ok()), (StatusCode::OK, Some("\"4\"")), "{fresh:?}");
    assert_eq!(read(position_of(&fresh)).await.0, "\"4\"");
    app.stop().await;
}

/// An order read carries its stream's version (`ETag` and `version`), which
/// `If-Match` on paying, cancelling or shipping it then takes.
#[tokio::test]
async fn an_order_read_carries_its_stream_version_for_if_match() {
    let app = TestApp::spawn().await;
    app.create_product("lamp", 900, 5).await;
    let token = app.customer("orla@example.com").await;
    let (order, placed) = app.place_order(&token, "lamp", 1).await;
    let read = |position: u64| {
        let (app, token, order) = (&app, &token, &order);
        async move {
            let read = app.get(&format!("/api/v1/orders/{order}?min_position={position}"), Some(token)).await;
            assert_eq!(read.status, StatusCode::OK, "{read:?}");
            let etag = read.headers["etag"].to_str().expect("ascii").to_owned();
            assert_eq!(etag, format!("\"{}\"", read.body["version"]), "{read:?}");
            etag
        }
    };
    let placed_etag = read(position_of(&placed)).await;
    assert_eq!(placed_etag, "\"1\"");
    let pay = |etag: &str| {
        let body = Some(json!({"amount_cents": placed.body["total_cents"]}));
        let headers = [("If-Match", etag.to_owned())];
        let (app, token, order) = (&app, &token, &order);
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
            app.request(Method::POST, &format!("/api/v1/orders/{order}/pay"), Some(token), body, &headers).await
        }
    };
    let paid = pay(&placed_etag).await;
    assert_eq!(paid.status, StatusCode::OK, "{paid:?}");
    let paid_etag = read(position_of(&paid)).await;
    assert_eq!(paid_etag, "\"2\"");
    let cancel = Some(json!({}));
    let path = format!("/api/v1/orders/{order}/cancel");
    let stale = app.request(Method::POST, &path, Some(&token), cancel.clone(), &[("If-Match", &placed_etag)]).await;
    stale.problem(412);
    let cancelled = app.request(Method::POST, &path, Some(&token), cancel, &[("If-Match", &paid_etag)]).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{cancelled:?}");
    assert_eq!(read(position_of(&cancelled)).await, "\"3\"");
    app.stop().await;
}

#[tokio::test]
async fn a_position_past_the_head_is_refused_at_once() {
    let app = TestApp::spawn().await;
    let head = position_of(&app.create_product("one", 100, 1).await);
    let started = Instant::now();
    let refused = app.get(&format!("/api/v1/products?min_position={}", head + 1), None).await;
    assert_eq!(refused.problem(422)["errors"][0]["field"], "min_position");
    assert!(started.elapsed() < Duration::from_secs(2), "no waiting for a position that does not exist");
    app.stop().await;
}

#[tokio::test]
async fn the_catalog_pages_in_sku_order() {
    let app = TestApp::spawn().await;
    let mut last = None;
    for sku in ["c", "a", "b"] {
        last = Some(position_of(&app.create_product(sku, 100, 1).await));
    }
    let first = app.get(&format!("/api/v1/products?limit=2&min_position={}", last.unwrap_or(0)), None).await;
    let skus: Vec<&str> =
        first.body["items"].as_array().expect("items").iter().filter_map(|item| item["sku"].as_str()).collect();
    assert_eq!(skus, ["a", "b"]);
    assert_eq!(first.body["next"], "b");
    let second = app.get("/api/v1/products?limit=2&after=b", None).await;
    assert_eq!(second.body["items"][0]["sku"], "c");
    assert!(second.body["next"].is_null());
    app.get("/api/v1/products?limit=0", None).await.problem(422);
    app.stop().await;
}

#[tokio::test]
async fn carts_orders_and_the_dashboard_follow_the_commands() {
    let app = TestApp::spawn().await;
    app.create_product("tea", 1200, 10).await;
    let ann = app.customer("ann@example.com").await;
    let ben = app.customer("ben@example.com").await;
    let added = app.add_to_cart(&ann, "tea", 2).await;
    let cart = app.get(&format!("/api/v1/cart?min_position={}", position_of(&added)), Some(&ann)).await;
    assert_eq!(cart.status, StatusCode::OK, "{cart:?}");
    assert_eq!(
        (cart.body["subtotal_cents"].clone(), cart.body["shipping_cents"].clone(), cart.body["total_cents"].clone()),
        (json!(2400), json!(499), json!(2899))
    );
    assert_eq!(cart.body["lines"][0]["quantity"], 2);

    let placed = app.checkout(&ann).await;
    let order_id = placed.body["order_id"].as_str().expect("order id").to_owned();
    let paid = app.post(&format!("/api/v1/orders/{order_id}/pay"), Some(&ann), json!({"amount_cents": 2899})).await;
    assert_eq!(paid.status, StatusCode::OK, "{paid:?}");
    let at = position_of(&paid);

    let own = app.get(&format!("/api/v1/orders?min_position={at}"), Some(&ann)).await;
    assert_eq!(own.body["items"][0]["order_id"], order_id.as_str());
    assert_eq!(own.body["items"][0]["status"], "paid");
    let others = app.get(&format!("/api/v1/orders?min_position={at}"), Some(&ben)).await;
    assert_eq!(others.body["items"], json!([]), "ben sees none of ann's orders");
    // Another's order is missing in the same words, at a position, as one that does not exist.
    let not_bens = app.get(&format!("/api/v1/orders/{order_id}?min_position={at}"), Some(&ben)).await;
    let nobodys = app.get(&format!("/api/v1/orders/{}?min_position={at}", uuid::Uuid::now_v7()), Some(&ben)).await;
    let no_id = app.get(&format!("/api/v1/orders/xyz?min_position={at}"), Some(&ben)).await;
    for missing in [&not_bens, &nobodys, &no_id] {
        assert!(projection_position(missing) >= at, "{missing:?}");
    }
    no_id.problem(404);
    let (not_bens, nobodys) = (not_bens.problem(404), nobodys.problem(404));
    assert_eq!(not_bens["title"], nobodys["title"]);
    app.get(&format!("/api/v1/orders/{order_id}"), Some(VIEWER)).await.problem(403);
    let as_admin = app.get(&format!("/api/v1/orders/{order_id}?min_position={at}"), Some(ADMIN)).await;
    assert_eq!(as_admin.body["total_cents"], 2899);
    let emptied = app.get(&format!("/api/v1/cart?min_position={at}"), Some(&ann)).await;
    assert_eq!(emptied.body["lines"], json!([]), "checkout empties the cart");

    let sales = app.get(&format!("/api/v1/dashboard/sales?min_position={at}"), Some(VIEWER)).await;
    assert_eq!(sales.status, StatusCode::OK, "{sales:?}");
    assert_eq!(sales.body["revenue_cents"], 2899);
    assert_eq!(sales.body["orders_by_status"]["paid"], 1);
    assert_eq!(sales.body["top_products"][0]["sku"], "tea");
    app.get("/api/v1/dashboard/sales", Some(&ann)).await.problem(403);
    app.get("/api/v1/cart", Some(ADMIN)).await.problem(403);
    app.stop().await;
}

#[tokio::test]
async fn the_admin_sees_projection_lag_and_rebuilds_a_model_while_it_serves() {
    let app = TestApp::spawn().await;
    let mut last = 0;
    for index in 0..20 {
        last = position_of(&app.create_product(&format!("r{index}"), 100, 1).await);
    }
    let status = app.get("/admin/projections", Some(ADMIN)).await;
    let names: Vec<&str> =
        status.body.as_array().expect("a list").iter().filter_map(|model| model["name"].as_str()).collect();
    assert_eq!(names.len(), 4, "{status:?}");
    assert!(names.contains(&"catalog") && names.contains(&"dashboard"));
    app.get("/admin/projections", Some(VIEWER)).await.problem(403);

    // The rebuild reads nothing from its body: one that says something is
    // refused, as a command's would be, and starts nothing.
    let before = app.get("/admin/projections", Some(ADMIN)).await.body;
    let rebuild = "/admin/projections/catalog/rebuild";
    let problem = app.post(rebuild, Some(ADMIN), json!({"from": 5})).await.problem(422).clone();
    assert_eq!(problem["errors"][0]["field"], "from", "{problem}");
    assert!(
        problem["errors"][0]["message"].as_str().is_some_and(|message| message.contains("unknown field")),
        "{problem}"
    );
    let not_json =
        app.client.post(format!("{}{rebuild}", app.base)).bearer_auth(ADMIN).header("content-type", "text/plain");
    assert_eq!(not_json.body("now").send().await.expect("answers").status(), 415);
    let after = app.get("/admin/projections", Some(ADMIN)).await.body;
    let generations = |status: &serde_json::Value| {
        status.as_array().map(|models| models.iter().map(|model| model["generation"].clone()).collect::<Vec<_>>())
    };
    assert_eq!(generations(&after), generations(&before), "no rebuild started: {after}");
    assert!(after.as_array().is_some_and(|models| models.iter().all(|model| model["rebuild"].is_null())), "{after}");
    let started = app.post(rebuild, Some(ADMIN), json!({})).await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{started:?}");
    let generation = started.body["generation"].as_u64().expect("a generation");
    // Queries keep answering during the rebuild.
    let during = app.get(&format!("/api/v1/products?min_position={last}&limit=100"), None).await;
    assert_eq!(during.body["items"].as_array().map(Vec::len), Some(20));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = app.get("/admin/projections", Some(ADMIN)).await;
        let catalog = status
            .body
            .as_array()
            .expect("a list")
            .iter()
            .find(|model| model["name"] == "catalog")
            .cloned()
            .expect("catalog");
        if catalog["generation"] == generation && catalog["rebuild"].is_null() {
            assert_eq!(catalog["lag"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "the rebuild did not finish: {catalog}");
        tokio::task::yield_now().await;
    }
    let after = app.get("/api/v1/products?limit=100", None).await;
    assert_eq!(after.body["items"].as_array().map(Vec::len), Some(20), "the rebuilt model answers the same");
    app.post("/admin/projections/nothing/rebuild", Some(ADMIN), json!({})).await.problem(404);
    let metrics = app.get("/metrics", None).await;
    assert!(metrics.body.as_str().is_some_and(|text| text.contains("projection_lag_events")), "{metrics:?}");
    app.stop().await;
}

/// A model that cannot follow the log: `?min_position=` waits its 5 s, then
/// answers 503 (a problem), and the model's lag shows in `/admin/projections`
/// and `/metrics`; without a position the query answers at once, from behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_model_that_stopped_makes_min_position_a_503_at_once_and_shows_its_lag() {
    let app = TestApp::spawn().await;
    app.create_product("mug-1", 1299, 5).await;
    app.create_product("cup-1", 500, 5).await;
    let app = app.restart_with_a_damaged_catalog_record("mug-1").await;
    let restocked = app.post("/api/v1/products/mug-1/restock", Some(ADMIN), json!({"quantity": 2})).await;
    assert_eq!(restocked.status, StatusCode::OK, "{restocked:?}");
    let position = restocked.body["position"].as_u64().expect("a position");

    // The wait ends when the catalog stops (it began before, or after): not
    // after the whole 5 s, since the position will never come.
    let started = Instant::now();
    let waited = app.get(&format!("/api/v1/products/mug-1?min_position={position}"), None).await;
    let detail = waited.problem(503)["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains("catalog") && detail.contains("rebuild"), "{detail}");
    assert!(started.elapsed() < Duration::from_millis(4_500), "answered after {:?}", started.elapsed());
    // Nor does it answer from behind the write for another product.
    app.get("/api/v1/products/cup-1", None).await.problem(503);

    let status = app.get("/admin/projections", Some(ADMIN)).await;
    let catalog = status.body.as_array().expect("models").iter().find(|model| model["name"] == "catalog").cloned();
    let catalog = catalog.expect("the catalog is listed");
    assert!(catalog["lag"].as_u64().is_some_and(|lag| lag >= 1), "{catalog}");
    assert!(catalog["failure"].is_string(), "{catalog}");
    let metrics = app.get("/metrics", None).await;
    let text = metrics.body.as_str().expect("text");
    let lag = text.lines().find_map(|line| line.strip_prefix(r#"projection_lag_events{projection="catalog"} "#));
    assert!(lag.and_then(|lag| lag.parse::<f64>().ok()).is_some_and(|lag| lag >= 1.0), "{text}");
    app.stop().await;
}

/// The shop's one currency (DESIGN §5, the `currency` setting, USD by default)
/// is named beside the amounts of every read and of a checkout.
#[tokio::test]
async fn every_amount_comes_with_the_shops_currency() {
    let app = TestApp::spawn().await;
    let created = app.create_product("mug-1", 1299, 5).await;
    let product = app.get(&format!("/api/v1/products/mug-1?min_position={}", position_of(&created)), None).await;
    assert_eq!(product.body["currency"], "USD", "{product:?}");
    app.stop().await;

    let app = TestApp::spawn_with(|config| config.currency = "EUR".to_owned()).await;
    app.create_product("mug-1", 1299, 5).await;
    let token = app.customer("eve@example.com").await;
    assert!(app.add_to_cart(&token, "mug-1", 1).await.status.is_success());
    let placed = app.checkout(&token).await;
    assert_eq!(placed.body["currency"], "EUR", "{placed:?}");
    let at = placed.body["position"].as_u64().expect("a position");
    for (path, token) in [
        ("/api/v1/products/mug-1", None),
        ("/api/v1/cart", Some(token.as_str())),
        ("/api/v1/dashboard/sales", Some(ADMIN)),
    ] {
        let reply = app.get(&format!("{path}?min_position={at}"), token).await;
        assert_eq!(reply.body["currency"], "EUR", "{path}: {reply:?}");
    }
    let products = app.get(&format!("/api/v1/products?min_position={at}"), None).await;
    assert_eq!(products.body["items"][0]["currency"], "EUR", "{products:?}");
    let orders = app.get(&format!("/api/v1/orders?min_position={at}"), Some(&token)).await;
    assert_eq!(orders.body["items"][0]["currency"], "EUR", "{orders:?}");
    app.stop().await;
}
