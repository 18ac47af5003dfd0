//! The API describes itself: `/openapi.json` names every route the router serves,
//! with its security and its problem responses, and `/docs` renders offline.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{ADMIN, TestApp};

/// Every route the router serves, and the bearer schemes that may call it (none: public).
const ROUTES: &[(&str, &str, &[&str])] = &[
    ("get", "/", &[]),
    ("get", "/healthz", &[]),
    ("get", "/readyz", &[]),
    ("get", "/metrics", &[]),
    ("get", "/openapi.json", &[]),
    ("get", "/docs", &[]),
    ("post", "/api/v1/products", &["admin"]),
    ("post", "/api/v1/products/{sku}/price", &["admin"]),
    ("post", "/api/v1/products/{sku}/restock", &["admin"]),
    ("post", "/api/v1/products/{sku}/discontinue", &["admin"]),
    ("post", "/api/v1/customers", &[]),
    ("post", "/api/v1/sessions", &[]),
    ("post", "/api/v1/cart/items", &["customer"]),
    ("delete", "/api/v1/cart/items/{sku}", &["customer"]),
    ("post", "/api/v1/cart/checkout", &["customer"]),
    ("post", "/api/v1/orders/{order_id}/pay", &["customer"]),
    ("post", "/api/v1/orders/{order_id}/cancel", &["customer"]),
    ("post", "/api/v1/orders/{order_id}/ship", &["admin"]),
    ("get", "/api/v1/streams/{stream}/events", &["admin"]),
    ("get", "/api/v1/events", &["admin", "replica"]),
    ("get", "/api/v1/events/live", &["admin", "viewer"]),
    ("get", "/api/v1/products", &[]),
    ("get", "/api/v1/products/{sku}", &[]),
    ("get", "/api/v1/cart", &["customer"]),
    ("get", "/api/v1/orders", &["customer", "admin"]),
    ("get", "/api/v1/orders/{order_id}", &["customer", "admin"]),
    ("get", "/api/v1/dashboard/sales", &["admin", "viewer"]),
    ("get", "/admin/projections", &["admin"]),
    ("post", "/admin/projections/{name}/rebuild", &["admin"]),
    ("post", "/admin/customers/{customer_id}/forget", &["admin"]),
    ("get", "/admin/backup", &["admin"]),
];

const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// `value`, or what its `$ref` (`#/components/...`) points at.
fn resolve<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str().and_then(|reference| reference.strip_prefix('#')) {
        Some(pointer) => document.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {pointer}")),
        None => value,
    }
}

/// The pattern the document gives names takes what the domain takes, and
/// refuses what it refuses (so schemathesis's names are the shop's).
#[tokio::test]
async fn the_name_pattern_agrees_with_the_domain() {
    let app = TestApp::spawn().await;
    let document = app.get("/openapi.json", None).await.body;
    let schemas = document["components"]["schemas"].as_object().expect("schemas");
    let pattern = schemas
        .values()
        .find_map(|schema| schema["properties"]["name"]["pattern"].as_str())
        .expect("a name with a pattern");
    let pattern = regex::Regex::new(pattern).expect("the pattern compiles");
    let names = [
        "Blue mug",
        "  Mug  ",
        "Mug \u{1F469}\u{200D}\u{1F4BB}",
        "\u{0645}\u{06CC}\u{200C}\u{062E}",
        "",
        "   ",
        "\u{200B}",
        " \u{FEFF}\u{200D} ",
        "a\u{202E}evil",
        "\u{2066}Mug\u{2069}",
        "Mug\u{0}",
        "Al\nice",
    ];
    for name in names {
        let domain = domain::ProductName::parse(name).is_ok();
        assert_eq!(pattern.is_match(name), domain, "{name:?}: the domain takes it: {domain}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_document_names_every_served_route_with_its_security_and_problems() {
    let app = TestApp::spawn().await;
    let reply = app.get("/openapi.json", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let document = &reply.body;
    assert!(document["openapi"].as_str().is_some_and(|version| version.starts_with("3.1")), "{}", document["openapi"]);
    assert_eq!(document["info"]["license"]["name"], "MIT");

    let mut documented: Vec<(String, String)> = document["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|method| item.get(**method).is_some())
                .map(|method| (method.to_string(), path.clone()))
        })
        .collect();
    documented.sort();
    let mut served: Vec<(String, String)> =
        ROUTES.iter().map(|(method, path, _)| (method.to_string(), path.to_string())).collect();
    served.sort();
    assert_eq!(documented, served, "the document names exactly the routes served");

    for scheme in ["admin", "viewer", "customer", "replica"] {
        let declared = &document["components"]["securitySchemes"][scheme];
        assert_eq!(
            (&declared["type"], &declared["scheme"]),
            (&json!("http"), &json!("bearer")),
            "{scheme}: {declared}"
        );
    }
    for (method, path, schemes) in ROUTES {
        let operation = &document["paths"][path][method];
        let responses = operation["responses"].as_object().expect("responses");
        if schemes.is_empty() {
            assert!(operation.get("security").is_none(), "{method} {path} is public");
        } else {
            let expected: Vec<Value> = schemes.iter().map(|scheme| json!({ *scheme: [] })).collect();
            assert_eq!(operation["security"], json!(expected), "{method} {path}");
            assert!(responses.contains_key("401") && responses.contains_key("403"), "{method} {path}");
        }
        if path.starts_with("/api/") {
            for status in ["408", "500", "503"] {
                assert!(responses.contains_key(status), "{method} {path} documents {status}");
            }
        }
        // Commands: every write under /api/v1 but login (admin actions such as a
        // rebuild append nothing, so they take neither header).
        if *method != "get" && path.starts_with("/api/") && *path != "/api/v1/sessions" {
            let headers: Vec<&str> = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|parameter| parameter["in"] == "header")
                .filter_map(|parameter| parameter["name"].as_str())
                .collect();
            assert!(headers.contains(&"Idempotency-Key"), "{method} {path}: {headers:?}");
            if *path != "/api/v1/customers" {
                assert!(headers.contains(&"If-Match"), "{method} {path}: {headers:?}");
            }
            for status in ["400", "413", "415", "422"] {
                assert!(responses.contains_key(status), "{method} {path} documents {status}");
            }
        }
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &resolve(document, response)["content"]["application/problem+json"]["schema"];
                assert_eq!(schema["$ref"], "#/components/schemas/Problem", "{method} {path} {status}");
            }
        }
    }
    // What a command takes and what it answers on success, as served.
    for (path, success) in [
        ("/api/v1/products", "201"),
        ("/api/v1/products/{sku}/price", "200"),
        ("/api/v1/products/{sku}/restock", "200"),
        ("/api/v1/customers", "201"),
        ("/api/v1/sessions", "200"),
        ("/api/v1/cart/items", "200"),
        ("/api/v1/cart/checkout", "201"),
        ("/api/v1/orders/{order_id}/pay", "200"),
    ] {
        let operation = &document["paths"][path]["post"];
        let body = &resolve(document, &operation["requestBody"])["content"]["application/json"]["schema"];
        assert!(body.is_object(), "POST {path} documents its JSON body: {operation}");
        let responses = operation["responses"].as_object().expect("responses");
        let successes: Vec<&String> = responses.keys().filter(|status| status.starts_with('2')).collect();
        assert_eq!(successes, [success], "POST {path} documents the success it answers");
        let schema = &resolve(document, &responses[success])["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "POST {path} documents its {success} body");
    }
    let login = &document["paths"]["/api/v1/sessions"]["post"]["responses"];
    assert!(resolve(document, &login["429"])["headers"].get("Retry-After").is_some());

    // Each route is really served: the router's fallback ("no such route") and
    // 405 never answer a documented method and path.
    for (method, path, _) in ROUTES {
        let concrete = path
            .replace("{sku}", "mug-1")
            .replace("{order_id}", &uuid::Uuid::now_v7().to_string())
            .replace("{stream}", "product-mug-1");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
        if concrete.ends_with("/live") {
            // An endless event stream: its status line is the answer.
            let response =
                app.client.get(format!("{}{concrete}", app.base)).bearer_auth(ADMIN).send().await.expect("answers");
            assert_eq!(response.status(), StatusCode::OK, "{concrete}");
            continue;
        }
        let body = (method != Method::GET).then(|| json!({}));
        let reply = app.request(method.clone(), &concrete, Some(ADMIN), body, &[]).await;
        assert_ne!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {concrete}: {reply:?}");
        assert_ne!(reply.body["detail"], "no such route", "{method} {concrete}: {reply:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_docs_page_renders_from_this_server_alone() {
    let app = TestApp::spawn().await;
    let page = app.get("/docs", None).await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    assert!(page.content_type().starts_with("text/html"), "{page:?}");
    let html = page.body.as_str().expect("an HTML page");
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(!html.contains("http://") && !html.contains("https://"), "the page references no other host: {html}");

    // Every asset the page loads comes from here too, and the initializer points at
    // our document, with no validator badge fetched from validator.swagger.io.
    let assets: Vec<&str> = html
        .split(['"', '\''])
        .filter(|part| part.ends_with(".js") || part.ends_with(".css") || part.ends_with(".png"))
        .collect();
    assert!(assets.len() >= 4, "{assets:?}");
    for asset in assets {
        let path = format!("/docs/{}", asset.trim_start_matches("./"));
        let reply = app.get(&path, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        if path.ends_with("swagger-initializer.js") {
            let script = reply.body.as_str().expect("a script");
            assert!(script.contains("\"url\": \"/openapi.json\""), "{script}");
            assert!(script.contains("\"validatorUrl\": \"none\""), "{script}");
            assert!(!script.contains("http://") && !script.contains("https://"), "{script}");
        }
    }
    app.stop().await;
}
