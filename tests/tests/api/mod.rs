//! The HTTP write path, black-box: the real app served on a random loopback port
//! over a real sled dir, spoken to only through HTTP.

mod access;
mod commands;
mod errors;
mod forget;
mod live;
mod openapi;
mod queries;
mod races;
mod serving;

use std::net::SocketAddr;

use api::config::{Config, Secret};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const ADMIN: &str = "admin-token-for-tests-0001";
pub const VIEWER: &str = "viewer-token-for-tests-001";
/// The token read replicas give to fill gaps from a test app's log.
pub const REPLICA: &str = "replica-token-for-tests-01";

/// A running shoplog on a random port, with typed helpers.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    running: Option<api::server::Running>,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn content_type(&self) -> &str {
        self.headers.get("content-type").and_then(|value| value.to_str().ok()).unwrap_or("")
    }

    /// Assert this is a problem+json answer with `status`, and return its body.
    pub fn problem(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert!(self.content_type().starts_with("application/problem+json"), "{self:?}");
        assert_eq!(self.body["status"], status, "{self:?}");
        assert!(
            self.body["title"].is_string() && self.body["type"].is_string() && self.body["detail"].is_string(),
            "{self:?}"
        );
        &self.body
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// Spawn with some settings changed.
    pub async fn spawn_with(change: impl FnOnce(&mut Config)) -> TestApp {
        let dir = tests::temp_dir();
        let mut config = Config {
            data: dir.path().to_path_buf(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_token: Some(Secret::new(ADMIN)),
            viewer_token: Some(Secret::new(VIEWER)),
            replica_token: Some(Secret::new(REPLICA)),
            ..Config::default()
        };
        change(&mut config);
        let running = api::server::start(&config).await.expect("the server starts");
        TestApp {
            base: format!("http://{}", running.address),
            client: reqwest::Client::new(),
            dir,
            running: Some(running),
        }
    }

    /// The log's durable head, to prove a refused request wrote nothing.
    pub fn head(&self) -> u64 {
        self.running.as_ref().map(|running| running.state.log.head()).unwrap_or(0)
    }

    pub fn log(&self) -> &store::EventLog {
        &self.running.as_ref().expect("running").state.log
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the server answers");
        let (status, headers) = (response.status(), response.headers().clone());
        let bytes = response.bytes().await.expect("reads the body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply { status, headers, body }
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.request(Method::POST, path, token, Some(body), &[]).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.request(Method::GET, path, token, None, &[]).await
    }

    pub async fn create_product(&self, sku: &str, price_cents: i64, stock: u32) -> Reply {
        let reply = self
            .post("/api/v1/products", Some(ADMIN), json!({"sku": sku, "name": format!("Product {sku}"), "price_cents": price_cents, "initial_stock": stock}))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        reply
    }

    pub async fn register(&self, email: &str) -> String {
        let reply = self
            .post(
                "/api/v1/customers",
                None,
                json!({"email": email, "name": "Test Customer", "password": "correct horse"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        reply.body["customer_id"].as_str().expect("customer id").to_owned()
    }

    pub async fn login(&self, email: &str) -> String {
        let reply = self.post("/api/v1/sessions", None, json!({"email": email, "password": "correct horse"})).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        reply.body["token"].as_str().expect("token").to_owned()
    }

    /// A registered, logged-in customer's token.
    pub async fn customer(&self, email: &str) -> String {
        self.register(email).await;
        self.login(email).await
    }

    pub async fn add_to_cart(&self, token: &str, sku: &str, quantity: u32) -> Reply {
        self.post("/api/v1/cart/items", Some(token), json!({"sku": sku, "quantity": quantity})).await
    }

    pub async fn checkout(&self, token: &str) -> Reply {
        self.post("/api/v1/cart/checkout", Some(token), json!({})).await
    }

    /// Add `quantity` of `sku` to the customer's cart and check out: the order's
    /// id, and the 201 reply (with `total_cents` and `position`).
    pub async fn place_order(&self, token: &str, sku: &str, quantity: u32) -> (String, Reply) {
        let added = self.add_to_cart(token, sku, quantity).await;
        assert_eq!(added.status, StatusCode::OK, "{added:?}");
        let placed = self.checkout(token).await;
        assert_eq!(placed.status, StatusCode::CREATED, "{placed:?}");
        (placed.body["order_id"].as_str().expect("an order id").to_owned(), placed)
    }

    /// The product's stock, folded from its stream through the audit route.
    pub async fn events_of(&self, stream: &str) -> Vec<Value> {
        let reply = self.get(&format!("/api/v1/streams/{stream}/events?limit=1000"), Some(ADMIN)).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        reply.body["events"].as_array().expect("events").clone()
    }

    /// The address the server listens on.
    pub fn address(&self) -> SocketAddr {
        self.running.as_ref().expect("running").address
    }

    /// Stop, and start again on the same data dir.
    pub async fn restart(mut self) -> TestApp {
        let running = self.running.take().expect("running");
        running.stop().await.expect("stops cleanly");
        let config = Config {
            data: self.dir.path().to_path_buf(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_token: Some(Secret::new(ADMIN)),
            viewer_token: Some(Secret::new(VIEWER)),
            replica_token: Some(Secret::new(REPLICA)),
            ..Config::default()
        };
        let running = api::server::start(&config).await.expect("the server starts again");
        self.base = format!("http://{}", running.address);
        self.running = Some(running);
        self
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("stops cleanly");
        }
    }

    /// Wait until every read model has applied the whole log.
    /// The running server's state.
    pub fn running_state(&self) -> &api::AppState {
        &self.running.as_ref().expect("running").state
    }

    pub async fn caught_up(&self) {
        let running = self.running.as_ref().expect("running");
        let head = running.state.log.head();
        let wait = std::time::Duration::from_secs(10);
        running.state.projections.wait_for(head, wait).await.expect("the read models catch up");
    }

    /// Stop, and hand over the data dir (which lives on) for offline work.
    pub async fn stop_keeping_dir(mut self) -> tempfile::TempDir {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("stops cleanly");
        }
        self.dir
    }

    /// Serve an existing data dir (restored, imported) with the test tokens.
    /// Stop once the read models are caught up, damage the catalog's record of
    /// `sku` (where the next server reads it: the next event about that product
    /// cannot be applied), and serve the data dir again.
    pub async fn restart_with_a_damaged_catalog_record(self, sku: &str) -> TestApp {
        self.caught_up().await;
        let dir = self.stop_keeping_dir().await;
        {
            let log = store::EventLog::open(dir.path()).expect("opens");
            let catalog = log.open_tree("catalog.g1").expect("opens");
            let key = format!("p:{sku}");
            assert!(catalog.insert(key.as_bytes(), &[0xff, 0xff, 0xff][..]).expect("writes").is_some(), "{sku} listed");
        }
        TestApp::serve_dir(dir).await
    }

    pub async fn serve_dir(dir: tempfile::TempDir) -> TestApp {
        Self::serve_dir_with(dir, |_| {}).await
    }

    /// [`Self::serve_dir`] with some settings changed.
    pub async fn serve_dir_with(dir: tempfile::TempDir, change: impl FnOnce(&mut Config)) -> TestApp {
        Self::serve_dir_as(dir, api::server::Role::Primary, change).await
    }

    /// [`Self::serve_dir_with`], in `role` (a read replica).
    pub async fn serve_dir_as(
        dir: tempfile::TempDir,
        role: api::server::Role,
        change: impl FnOnce(&mut Config),
    ) -> TestApp {
        let mut config = Config {
            data: dir.path().to_path_buf(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_token: Some(Secret::new(ADMIN)),
            viewer_token: Some(Secret::new(VIEWER)),
            replica_token: Some(Secret::new(REPLICA)),
            ..Config::default()
        };
        change(&mut config);
        let running = api::server::start_as(&config, role).await.expect("the server starts on the dir");
        TestApp {
            base: format!("http://{}", running.address),
            client: reqwest::Client::new(),
            dir,
            running: Some(running),
        }
    }
}
