//! The dashboard page at `/`, in a real browser: headless Chromium driven by
//! chromedriver over WebDriver (spoken with reqwest), against a running server.
//! The page must show the server's numbers and follow them live, without a reload.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::api::{TestApp, VIEWER};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const INSTALL: &str = "apt-get install -y chromium chromium-driver";

/// How long the page may take to show a number the server already has.
const PAGE_WAIT: Duration = Duration::from_secs(30);

/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver child in a process group of its own; dropping it (also on a
/// panic) kills the group, so neither chromedriver nor its browser outlives the test.
struct ChromeDriver {
    child: Child,
    base: String,
    client: reqwest::Client,
    /// The browser's profile, fresh for this test.
    _profile: tempfile::TempDir,
    session: Option<String>,
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        // The group id is chromedriver's pid (process_group(0) below).
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ChromeDriver {
    async fn start() -> ChromeDriver {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(Path::new(binary).exists(), "{binary} is missing; the dashboard test needs it: {INSTALL}");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|error| panic!("cannot start {CHROMEDRIVER} ({error}); {INSTALL}"))
        };
        let mut driver = ChromeDriver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
            _profile: tests::temp_dir(),
            session: None,
        };
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let status = driver.client.get(format!("{}/status", driver.base)).send().await;
            if let Ok(response) = status
                && let Ok(body) = response.json::<Value>().await
                && body["value"]["ready"] == true
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready on port {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = driver._profile.path().display().to_string();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", format!("--user-data-dir={profile}"),
                ],
            },
        }}});
        let session = driver.command(Method::POST, "/session", Some(capabilities)).await;
        let id = session["sessionId"].as_str().expect("a session id").to_owned();
        driver.session = Some(id);
        driver
    }

    /// One WebDriver command; its `value`, or a panic naming the WebDriver error.
    async fn command(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.client.request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap_or_else(|error| panic!("chromedriver {method} {path}: {error}"));
        let status = response.status();
        let body: Value = response.json().await.unwrap_or_else(|error| panic!("chromedriver {method} {path}: {error}"));
        assert_eq!(status, StatusCode::OK, "chromedriver {method} {path}: {body}");
        body["value"].clone()
    }

    async fn session(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let session = self.session.as_deref().expect("a session");
        self.command(method, &format!("/session/{session}{path}"), body).await
    }

    async fn open(&self, url: &str) {
        self.session(Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    async fn element(&self, css: &str) -> String {
        let found = self.session(Method::POST, "/element", Some(json!({"using": "css selector", "value": css}))).await;
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {found}")).to_owned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.session(Method::POST, &format!("/element/{element}/value"), Some(json!({"text": text}))).await;
    }

    async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.session(Method::POST, &format!("/element/{element}/click"), Some(json!({}))).await;
    }

    /// Run `script` (a function body) in the page and return what it returns.
    async fn script(&self, script: &str) -> Value {
        self.session(Method::POST, "/execute/sync", Some(json!({"script": script, "args": []}))).await
    }

    /// The text of the element with this id, or null while there is none.
    async fn text_of(&self, id: &str) -> Value {
        self.script(&format!("const e = document.getElementById({id:?}); return e ? e.textContent.trim() : null;"))
            .await
    }

    /// Poll until each `(id, text)` reads so on the page, or fail with what it shows.
    async fn wait_for_texts(&self, expected: &[(&str, String)]) {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let mut shown = Vec::new();
            for (id, _) in expected {
                shown.push(self.text_of(id).await);
            }
            if expected.iter().zip(&shown).all(|((_, text), shown)| shown == text) {
                return;
            }
            let status = self.text_of("status").await;
            assert!(Instant::now() < deadline, "the page shows {shown:?} (status {status}), the server {expected:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn quit(mut self) {
        if let Some(session) = self.session.take() {
            self.command(Method::DELETE, &format!("/session/{session}"), None).await;
        }
    }
}

/// How the page writes an amount of cents in `currency`.
fn money(cents: i64, currency: &str) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02} {currency}", cents.abs() / 100, cents.abs() % 100)
}

/// A customer buys `quantity` of `sku` and pays; the position of the payment.
async fn buy_and_pay(app: &TestApp, email: &str, sku: &str, quantity: u32) -> u64 {
    let customer = app.customer(email).await;
    assert_eq!(app.add_to_cart(&customer, sku, quantity).await.status, StatusCode::OK);
    let order = app.checkout(&customer).await;
    assert_eq!(order.status, StatusCode::CREATED, "{order:?}");
    let order_id = order.body["order_id"].as_str().expect("an order id");
    let paid = app
        .post(
            &format!("/api/v1/orders/{order_id}/pay"),
            Some(&customer),
            json!({"amount_cents": order.body["total_cents"]}),
        )
        .await;
    assert_eq!(paid.status, StatusCode::OK, "{paid:?}");
    paid.body["position"].as_u64().expect("a position")
}

/// The server's sales view once it has reached `position`.
async fn sales_at(app: &TestApp, position: u64) -> Value {
    let reply = app.get(&format!("/api/v1/dashboard/sales?min_position={position}"), Some(VIEWER)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body
}

fn shown_numbers(sales: &Value) -> Vec<(&'static str, String)> {
    let count = |status: &str| sales["orders_by_status"][status].as_u64().expect("a count").to_string();
    vec![
        (
            "revenue",
            money(sales["revenue_cents"].as_i64().expect("revenue"), sales["currency"].as_str().expect("a code")),
        ),
        ("orders-placed", count("placed")),
        ("orders-paid", count("paid")),
        ("orders-shipped", count("shipped")),
        ("orders-cancelled", count("cancelled")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_servers_numbers_and_follows_them_live_in_a_browser() {
    let app = TestApp::spawn().await;
    app.create_product("mug-1", 1250, 10).await;
    app.create_product("lamp-1", 4999, 3).await;
    let position = buy_and_pay(&app, "first@example.com", "mug-1", 2).await;
    let before = sales_at(&app, position).await;
    assert!(before["revenue_cents"].as_i64().is_some_and(|cents| cents > 0), "{before}");

    let driver = ChromeDriver::start().await;
    driver.open(&format!("{}/", app.base)).await;
    driver.type_into("#token", VIEWER).await;
    driver.click("#token-submit").await;
    driver.wait_for_texts(&shown_numbers(&before)).await;
    let low_stock = driver.text_of("low-stock").await;
    assert!(low_stock.as_str().is_some_and(|text| text.contains("lamp-1")), "low stock shows {low_stock}");
    // A mark that a reload would wipe.
    driver.script("window.shoplogTestMark = 'still the same page'; return true;").await;

    // Another customer pays: the page follows the live feed to the new numbers.
    let position = buy_and_pay(&app, "second@example.com", "lamp-1", 1).await;
    let after = sales_at(&app, position).await;
    assert_ne!(after["revenue_cents"], before["revenue_cents"]);
    driver.wait_for_texts(&shown_numbers(&after)).await;
    let top = driver.text_of("top-products").await;
    assert!(top.as_str().is_some_and(|text| text.contains("lamp-1")), "top products show {top}");
    let mark = driver.script("return window.shoplogTestMark || null;").await;
    assert_eq!(mark, json!("still the same page"), "the page updated without a reload");
    let stored = driver.script("return sessionStorage.getItem('shoplog.viewer-token');").await;
    assert_eq!(stored, json!(VIEWER), "the token stays in sessionStorage");

    driver.quit().await;
    app.stop().await;
}

/// When the first load of the sales view fails (the server restarting), the
/// page follows the live feed from what commits next, not from the start of the
/// log (every event ever, to every tab), and loads the view once the feed is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_whose_first_load_failed_follows_the_feed_from_now_not_from_the_start() {
    let app = TestApp::spawn().await;
    app.create_product("mug-1", 1250, 10).await;
    let position = buy_and_pay(&app, "early@example.com", "mug-1", 1).await;
    let sales = sales_at(&app, position).await;

    let driver = ChromeDriver::start().await;
    driver.open(&format!("{}/", app.base)).await;
    // The page's first load of the sales view fails; every request's
    // `Last-Event-ID` is kept for the test to read.
    let patched = driver
        .script(
            r#"window.shoplogFeedResumes = [];
               const realFetch = window.fetch;
               let failed = false;
               window.fetch = function (url, options) {
                 const headers = (options && options.headers) || {};
                 if (String(url).includes("/events/live")) {
                   const resume = headers["Last-Event-ID"];
                   window.shoplogFeedResumes.push(resume === undefined ? null : resume);
                 }
                 if (!failed && String(url).includes("/dashboard/sales")) {
                   failed = true;
                   return Promise.reject(new Error("a test's failure"));
                 }
                 return realFetch.apply(this, arguments);
               };
               return true;"#,
        )
        .await;
    assert_eq!(patched, json!(true));
    driver.type_into("#token", VIEWER).await;
    driver.click("#token-submit").await;
    driver.wait_for_texts(&shown_numbers(&sales)).await;
    let resumes = driver.script("return window.shoplogFeedResumes;").await;
    assert_eq!(resumes.get(0), Some(&Value::Null), "the feed was asked to resume after position 0: {resumes}");
    driver.quit().await;
    app.stop().await;
}

#[tokio::test]
async fn the_dashboard_page_is_html_that_names_no_other_host() {
    let app = TestApp::spawn().await;
    let page = app.get("/", None).await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    assert!(page.content_type().starts_with("text/html"), "{page:?}");
    let html = page.body.as_str().expect("an HTML page");
    for id in ["token-form", "revenue", "orders-placed", "orders-paid", "orders-shipped", "orders-cancelled"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "the page has #{id}");
    }
    assert!(!html.contains("http://") && !html.contains("https://"), "the page references no other host: {html}");
    app.stop().await;
}

#[tokio::test]
async fn serve_demo_seeds_a_shop_with_orders_in_every_state_and_products_low_on_stock() {
    let app = TestApp::spawn_with(|config| config.demo = true).await;
    let sales = sales_at(&app, app.head()).await;
    for status in ["placed", "paid", "shipped", "cancelled"] {
        assert!(sales["orders_by_status"][status].as_u64().is_some_and(|count| count > 0), "{status}: {sales}");
    }
    assert!(sales["revenue_cents"].as_i64().is_some_and(|cents| cents > 0), "{sales}");
    assert!(sales["low_stock"].as_array().is_some_and(|low| low.len() >= 2), "{sales}");
    let catalog = app.get("/api/v1/products", None).await;
    assert_eq!(catalog.body["items"].as_array().map(Vec::len), Some(8), "{catalog:?}");

    // Only into an empty log: served again with --demo, the shop is left as it is.
    let dir = app.stop_keeping_dir().await;
    let head = store::EventLog::open(dir.path()).expect("opens").head();
    let config = api::Config {
        data: dir.path().to_path_buf(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        demo: true,
        ..api::Config::default()
    };
    let running = api::server::start(&config).await.expect("serves the shop again");
    assert_eq!(running.state.log.head(), head, "a second demo was seeded into a shop");
    running.stop().await.expect("stops");
}

/// The event types of the log in `dir`, in order (the demo's streams hold fresh ids).
fn event_types(dir: &std::path::Path) -> Vec<String> {
    let log = store::EventLog::open(dir).expect("opens");
    let events = log.read_all(1, 10_000).expect("reads");
    events.into_iter().map(|event| event.event_type).collect()
}

fn demo_config(dir: &std::path::Path, demo: bool) -> api::Config {
    api::Config {
        data: dir.to_path_buf(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        demo,
        ..api::Config::default()
    }
}

/// A start killed while it seeded the demo leaves part of it; the next `--demo`
/// start finishes it, each step once (every step is keyed), so the log is what
/// one whole seeding writes. A log holding anything besides the demo's events is
/// left as it is.
#[tokio::test]
async fn a_demo_seeding_cut_short_is_finished_by_the_next_demo_start() {
    let whole = tests::temp_dir();
    api::server::start(&demo_config(whole.path(), true)).await.expect("seeds").stop().await.expect("stops");
    let whole_types = event_types(whole.path());

    for steps in [1, 9, 17, 30] {
        let cut = tests::temp_dir();
        let running = api::server::start(&demo_config(cut.path(), false)).await.expect("serves");
        let seeded = api::demo::seed_steps(&running.state.service, steps).await.expect("seeds part");
        assert!(seeded.is_none(), "{steps} steps are not the whole demo");
        let partial = running.state.log.head();
        running.stop().await.expect("stops");
        assert!(partial > 0 && partial < whole_types.len() as u64, "{steps} steps wrote {partial} events");

        let running = api::server::start(&demo_config(cut.path(), true)).await.expect("finishes the demo");
        running.stop().await.expect("stops");
        assert_eq!(event_types(cut.path()), whole_types, "after {steps} steps, the demo finished is the whole demo");
    }

    // A demo restored from a backup has its events with their keys (a backup
    // holds the keys of its appends): whole, it is left as it is; cut short,
    // the next demo start finishes it, as it would have the log backed up.
    for steps in [usize::MAX, 17] {
        let seeded = tests::temp_dir();
        let running = api::server::start(&demo_config(seeded.path(), false)).await.expect("serves");
        api::demo::seed_steps(&running.state.service, steps).await.expect("seeds");
        let mut backup = Vec::new();
        running.state.log.backup(&mut backup, &mut |_| {}).expect("backs up");
        let head = running.state.log.head();
        running.stop().await.expect("stops");
        let restored = tests::temp_dir();
        let restored_dir = restored.path().join("data");
        store::restore_backup(backup.as_slice(), &restored_dir, store::RestoreTo::End, &mut |_| {}).expect("restores");
        let running = api::server::start(&demo_config(&restored_dir, true)).await.expect("serves a restored demo");
        if steps == usize::MAX {
            assert_eq!(running.state.log.head(), head, "a restored whole demo is left as it is");
        }
        running.stop().await.expect("stops");
        assert_eq!(event_types(&restored_dir), whole_types, "a restored demo of {steps} steps, started, is whole");
    }

    let other = tests::temp_dir();
    let running = api::server::start(&demo_config(other.path(), false)).await.expect("serves");
    api::demo::seed_steps(&running.state.service, 5).await.expect("seeds part");
    let ctx = commands::CommandContext::new("admin");
    let sku = domain::Sku::parse("not-the-demos").expect("a sku");
    let name = domain::ProductName::parse("Not the demo's").expect("a name");
    let price = domain::PriceCents::new(100).expect("a price");
    running.state.service.create_product(&ctx, sku, name, price, None, None).await.expect("creates");
    let head = running.state.log.head();
    running.stop().await.expect("stops");
    let running = api::server::start(&demo_config(other.path(), true)).await.expect("serves");
    assert_eq!(running.state.log.head(), head, "a log holding more than the demo's events is left as it is");
    running.stop().await.expect("stops");
}
