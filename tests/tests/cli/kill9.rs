//! Kill -9 under load (issue 6): the real `shoplog serve` takes commands from many
//! concurrent HTTP clients and is SIGKILLed at a random moment. After the kill
//! `shoplog verify` passes; after a restart every command that got a 2xx, in this
//! round or an earlier one, is in the log; positions are 1..=head and each stream's
//! versions 1..=n with no gap; and every read model equals a fresh rebuild of
//! itself. Every command carries an `Idempotency-Key`: sent again after the restart,
//! an acknowledged one answers its first outcome and writes nothing, and one whose
//! answer the kill cut off applies exactly once. Some commands break the rules on
//! purpose (a restock of no product, a payment of the wrong amount): every event in
//! the log belongs to a command that got a 2xx, so a refused one wrote nothing. The rounds share one data dir, so
//! the log grows. `SHOPLOG_KILL_ROUNDS` runs more rounds; `SHOPLOG_KILL_SEED`
//! replays the kill moments and the command mix.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use reqwest::header::HeaderMap;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinSet;

const SHOPLOG: &str = env!("CARGO_BIN_EXE_shoplog_cli");
/// The admin token every server of the test starts with.
const ADMIN: &str = "kill9-admin-token-for-tests-0001";
const PASSWORD: &str = "correct horse";
/// The load's clients: admins changing products, and one client per customer.
const ADMIN_CLIENTS: usize = 8;
const CUSTOMERS: usize = 8;
/// Products created before the first load, which the customers buy.
const PRODUCTS: usize = 12;
/// Bounds on one client's load, in commands and in time; the kill comes long
/// before either.
const COMMANDS_PER_CLIENT_MAX: usize = 10_000;
const LOAD_TIME_MAX: Duration = Duration::from_secs(6);
/// When the kill comes, in milliseconds into the load.
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 300..=1500;
/// The most one wait for the read models (catch-up, rebuild) may take.
const MODELS_WAIT_MAX: Duration = Duration::from_secs(60);
const MODELS: [&str; 4] = ["catalog", "carts", "orders", "dashboard"];
/// How many acknowledged commands each round sends again.
const SENT_AGAIN: usize = 16;

#[test]
fn acknowledged_commands_survive_sigkill_under_load_and_read_models_equal_a_rebuild() {
    let seed =
        std::env::var("SHOPLOG_KILL_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or_else(rand::random::<u64>);
    eprintln!("kill9: seed {seed}; rerun with SHOPLOG_KILL_SEED={seed}");
    let rounds: usize = std::env::var("SHOPLOG_KILL_ROUNDS").ok().and_then(|rounds| rounds.parse().ok()).unwrap_or(3);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tests::temp_dir();
    let data = dir.path().join("data");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    // Bounded, so no request of a client can hang the test.
    let client = Client::builder().timeout(Duration::from_secs(20)).build().expect("an HTTP client");
    let mut acks: Vec<Ack> = Vec::new();
    let mut shop: Option<Shop> = None;
    let mut last_head = 0;
    let mut refused = BTreeMap::new();
    for round in 0..rounds {
        let mut server = Server::start(&data);
        let http = Http { client: client.clone(), base: server.base.clone() };
        let shop = match &shop {
            Some(shop) => shop.clone(),
            None => shop.insert(runtime.block_on(set_up(&http, &mut acks))).clone(),
        };
        let kill_after = Duration::from_millis(rng.random_range(KILL_AFTER_MS));
        let load = runtime.block_on(load_then_kill(&http, &mut server, round, &shop, kill_after, &mut rng));
        assert!(!load.acks.is_empty(), "round {round}: no command was acknowledged before the kill");
        assert!(!load.unanswered.is_empty(), "round {round}: the load was over before the kill");
        acks.extend(load.acks.iter().cloned());
        for (status, count) in &load.refused {
            *refused.entry(*status).or_insert(0) += count;
        }

        let verified = verify(&data);
        assert!(verified.head >= last_head, "round {round}: the head went back from {last_head} to {}", verified.head);
        let server = Server::start(&data);
        let http = Http { client: client.clone(), base: server.base.clone() };
        let checked = runtime.block_on(check(&http, round, &mut acks, &load.unanswered, &shop, &verified, &mut rng));
        last_head = checked.head;
        eprintln!(
            "kill9 round {round}: killed {} ms into the load; {} commands acknowledged, refused by status {:?}; \
             head {} after the kill; of {} commands cut off, {} had been written; head {}",
            kill_after.as_millis(),
            load.acks.len(),
            load.refused,
            verified.head,
            load.unanswered.len(),
            checked.written_unacknowledged,
            checked.head,
        );
        server.stop();
    }
    // Restocks of no product come often; payments of the wrong amount (409) only
    // when a round placed orders, so only the first is required.
    assert!(refused.contains_key(&404), "no command was refused with 404 in any round: {refused:?}");
}

// ---- the server ----

/// A running `shoplog serve`. Dropping it SIGKILLs the process, so a failing test
/// never leaves one behind.
#[derive(Debug)]
struct Server {
    child: Child,
    base: String,
}

impl Server {
    /// Start on a random port over `data`, and wait until it says where it listens.
    fn start(data: &Path) -> Server {
        let mut command = Command::new(SHOPLOG);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-token", ADMIN, "--data"])
            .arg(data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SHOPLOG_") {
                command.env_remove(name);
            }
        }
        let mut child = command.spawn().expect("shoplog serve starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut server = Server { child, base: String::new() };
        let (sender, lines) = mpsc::channel();
        // Reads until the process is gone, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).expect("the server says where it listens");
            if let Some(rest) = line.strip_prefix("shoplog listening on http://") {
                server.base = format!("http://{}", rest.split_whitespace().next().expect("an address"));
                return server;
            }
        }
    }

    /// SIGKILL (what `Child::kill` sends on Unix), and reap it.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL is sent");
        self.child.wait().expect("the killed server is reaped");
    }

    /// SIGTERM, and wait for a clean exit.
    fn stop(mut self) {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(sent.success(), "SIGTERM could not be sent");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("the server can be polled") {
                break status;
            }
            assert!(Instant::now() < deadline, "SIGTERM did not stop the server");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "the server did not stop cleanly: {status:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What `shoplog verify` reported.
#[derive(Debug)]
struct Verified {
    events: u64,
    streams: u64,
    head: u64,
}

/// `shoplog verify` on the dead server's data dir: exit 0 and its counts.
fn verify(data: &Path) -> Verified {
    let output = Command::new(SHOPLOG)
        .args(["verify", "--data"])
        .arg(data)
        .env_remove("RUST_LOG")
        .output()
        .expect("shoplog verify runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "verify failed after the kill: {output:?}");
    // "ok: 12 events in 5 streams, head 12, last hash …"
    let words: Vec<&str> = stdout.split_whitespace().collect();
    let number = |at: usize| -> u64 {
        words.get(at).and_then(|word| word.trim_end_matches(',').parse().ok()).unwrap_or_else(|| panic!("{stdout}"))
    };
    assert_eq!(words.first(), Some(&"ok:"), "{stdout}");
    Verified { events: number(1), streams: number(4), head: number(7) }
}

// ---- HTTP ----

#[derive(Debug, Clone)]
struct Http {
    client: Client,
    base: String,
}

/// A response, read whole.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Http {
    /// One request; `Err` when the server did not answer whole (it died, or the
    /// connection broke), which is never an acknowledgement.
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Reply, reqwest::Error> {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let (status, headers) = (response.status(), response.headers().clone());
        let bytes = response.bytes().await?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Reply { status, headers, body })
    }

    /// A request of the set-up or the checks: the server must answer `status`.
    async fn expect(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>, status: u16) -> Reply {
        let reply = self.send(method.clone(), path, token, body, None).await.unwrap_or_else(|error| {
            panic!("{method} {path}: the server did not answer: {error}");
        });
        assert_eq!(reply.status.as_u16(), status, "{method} {path}: {reply:?}");
        reply
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.expect(Method::GET, path, token, None, 200).await
    }

    /// The log's durable head, once the server is ready (after a restart its read
    /// models first catch up with the log).
    async fn head(&self) -> u64 {
        let deadline = Instant::now() + MODELS_WAIT_MAX;
        loop {
            let reply = self.send(Method::GET, "/readyz", None, None, None).await.expect("the server answers");
            if reply.status == StatusCode::OK {
                return reply.body["head_position"].as_u64().expect("readyz names the head");
            }
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
            assert!(Instant::now() < deadline, "the server never became ready: {reply:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---- the shop and its load ----

/// What the rounds share: the products the customers buy and the customers.
#[derive(Debug, Clone)]
struct Shop {
    skus: Arc<Vec<String>>,
    customers: Vec<Customer>,
}

#[derive(Debug, Clone)]
struct Customer {
    id: String,
    token: String,
}

/// A command as a client sent it, with its `Idempotency-Key`, so that it can be
/// sent again.
#[derive(Debug, Clone)]
struct Sent {
    /// What it does, for messages.
    command: String,
    /// The main stream its answer must name.
    stream: String,
    method: Method,
    path: String,
    token: String,
    body: Value,
    idempotency_key: String,
    /// The status the rules refuse it with, for a command that breaks them on purpose.
    refused: Option<u16>,
}

impl Sent {
    async fn send(&self, http: &Http) -> Result<Reply, reqwest::Error> {
        let (token, body) = (Some(self.token.as_str()), Some(self.body.clone()));
        http.send(self.method.clone(), &self.path, token, body, Some(&self.idempotency_key)).await
    }
}

/// A command that got a 2xx: what its response says it wrote.
#[derive(Debug, Clone)]
struct Ack {
    command: String,
    /// The command's main stream, and its version after the command.
    stream: String,
    version: u64,
    /// The position of the command's last event.
    position: u64,
    /// The request, for a command of the load.
    sent: Option<Sent>,
}

impl Ack {
    /// The acknowledgement in `reply`, which must name `stream` as the main stream.
    fn of(command: String, stream: &str, reply: &Reply) -> Ack {
        assert_eq!(reply.body["stream"], stream, "{command}: {reply:?}");
        let number = |field: &str| reply.body[field].as_u64().unwrap_or_else(|| panic!("{command}: {reply:?}"));
        Ack { version: number("version"), position: number("position"), stream: stream.to_owned(), command, sent: None }
    }

    /// The acknowledgement of `sent` in `reply`.
    fn of_sent(sent: Sent, reply: &Reply) -> Ack {
        Ack { sent: Some(sent.clone()), ..Ack::of(sent.command, &sent.stream, reply) }
    }
}

impl std::fmt::Display for Ack {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Ack { command, stream, version, position, .. } = self;
        write!(formatter, "`{command}` (acknowledged as {stream} version {version}, last event at {position})")
    }
}

/// Create the products and register and log in the customers, before the first load.
async fn set_up(http: &Http, acks: &mut Vec<Ack>) -> Shop {
    let mut skus = Vec::new();
    for number in 0..PRODUCTS {
        let sku = format!("kill9-{number:02}");
        let body = json!({"sku": sku, "name": format!("Product {number}"), "price_cents": 500 + 100 * number, "initial_stock": 1_000_000});
        let reply = http.expect(Method::POST, "/api/v1/products", Some(ADMIN), Some(body), 201).await;
        acks.push(Ack::of(format!("create {sku}"), &format!("product-{sku}"), &reply));
        skus.push(sku);
    }
    // Password hashing is slow: register and log in the customers concurrently.
    let mut registering = JoinSet::new();
    for number in 0..CUSTOMERS {
        let http = http.clone();
        registering.spawn(async move {
            let email = format!("kill9-{number}@example.com");
            let body = json!({"email": email, "name": format!("Customer {number}"), "password": PASSWORD});
            let reply = http.expect(Method::POST, "/api/v1/customers", None, Some(body), 201).await;
            let id = reply.body["customer_id"].as_str().expect("a customer id").to_owned();
            let ack = Ack::of(format!("register {email}"), &format!("customer-{id}"), &reply);
            let login = json!({"email": email, "password": PASSWORD});
            let reply = http.expect(Method::POST, "/api/v1/sessions", None, Some(login), 200).await;
            let token = reply.body["token"].as_str().expect("a token").to_owned();
            (Customer { id, token }, ack)
        });
    }
    let mut customers = Vec::new();
    while let Some(registered) = registering.join_next().await {
        let (customer, ack) = registered.expect("a registration task ends");
        customers.push(customer);
        acks.push(ack);
    }
    Shop { skus: Arc::new(skus), customers }
}

/// What the clients of one round got.
#[derive(Debug, Default)]
struct Load {
    /// The client's name, which its idempotency keys start with.
    name: String,
    sent: usize,
    acks: Vec<Ack>,
    /// Answers that were not 2xx, by status.
    refused: BTreeMap<u16, usize>,
    /// The commands that got no answer: each client's last.
    unanswered: Vec<Sent>,
}

impl Load {
    fn new(name: String) -> Load {
        Load { name, ..Load::default() }
    }

    /// Send one command, with a fresh idempotency key, and record its answer;
    /// `None` once the server does not answer.
    async fn command(
        &mut self,
        http: &Http,
        command: String,
        stream: &str,
        (method, path): (Method, &str),
        token: &str,
        body: Value,
    ) -> Option<Reply> {
        self.sent += 1;
        let sent = Sent {
            command,
            stream: stream.to_owned(),
            method,
            path: path.to_owned(),
            token: token.to_owned(),
            body,
            idempotency_key: format!("kill9-{}-{}", self.name, self.sent),
            refused: None,
        };
        self.send(http, sent).await
    }

    /// Send one command that breaks the rules, which must be refused with `status`
    /// if the server answers it.
    async fn refused(
        &mut self,
        http: &Http,
        command: String,
        (method, path): (Method, &str),
        token: &str,
        body: Value,
        status: u16,
    ) -> Option<Reply> {
        self.sent += 1;
        let sent = Sent {
            command,
            stream: String::new(),
            method,
            path: path.to_owned(),
            token: token.to_owned(),
            body,
            idempotency_key: format!("kill9-{}-{}", self.name, self.sent),
            refused: Some(status),
        };
        self.send(http, sent).await
    }

    async fn send(&mut self, http: &Http, sent: Sent) -> Option<Reply> {
        match sent.send(http).await {
            Ok(reply) => {
                if let Some(status) = sent.refused {
                    assert_eq!(reply.status.as_u16(), status, "`{}` must be refused: {reply:?}", sent.command);
                }
                if reply.status.is_success() {
                    self.acks.push(Ack::of_sent(sent, &reply));
                } else {
                    *self.refused.entry(reply.status.as_u16()).or_default() += 1;
                }
                Some(reply)
            }
            Err(_) => {
                self.unanswered.push(sent);
                None
            }
        }
    }

    fn merge(&mut self, other: Load) {
        self.acks.extend(other.acks);
        for (status, count) in other.refused {
            *self.refused.entry(status).or_default() += count;
        }
        self.unanswered.extend(other.unanswered);
    }
}

/// Run every client against `server` and SIGKILL it `kill_after` into the load;
/// the clients end at their first unanswered request (or at their bounds).
async fn load_then_kill(
    http: &Http,
    server: &mut Server,
    round: usize,
    shop: &Shop,
    kill_after: Duration,
    rng: &mut StdRng,
) -> Load {
    let head = http.head().await;
    let mut carts = Vec::new();
    for customer in &shop.customers {
        let reply = http.get(&format!("/api/v1/cart?min_position={head}"), Some(&customer.token)).await;
        let lines = reply.body["lines"].as_array().expect("a cart has lines");
        let cart: BTreeSet<String> =
            lines.iter().map(|line| line["sku"].as_str().expect("a line's sku").to_owned()).collect();
        carts.push(cart);
    }
    let mut clients = JoinSet::new();
    let until = Instant::now() + LOAD_TIME_MAX;
    for number in 0..ADMIN_CLIENTS {
        let rng = StdRng::seed_from_u64(rng.random());
        let load = Load::new(format!("r{round}-a{number}"));
        clients.spawn(admin_client(http.clone(), load, Arc::clone(&shop.skus), rng, until));
    }
    for (number, (customer, cart)) in shop.customers.iter().zip(carts).enumerate() {
        let rng = StdRng::seed_from_u64(rng.random());
        let load = Load::new(format!("r{round}-c{number}"));
        clients.spawn(customer_client(http.clone(), load, customer.clone(), Arc::clone(&shop.skus), cart, rng, until));
    }
    tokio::time::sleep(kill_after).await;
    server.kill();
    let mut load = Load::default();
    while let Some(client) = clients.join_next().await {
        load.merge(client.expect("a client task ends without panicking"));
    }
    load
}

/// Restock, reprice, create and discontinue products as the admin.
async fn admin_client(http: Http, mut load: Load, skus: Arc<Vec<String>>, mut rng: StdRng, until: Instant) -> Load {
    let mut created: Vec<String> = Vec::new();
    for number in 0..COMMANDS_PER_CLIENT_MAX {
        if Instant::now() >= until {
            return load;
        }
        let roll = rng.random_range(0..100);
        let sku = skus.choose(&mut rng).expect("there are products").clone();
        let answered = if roll < 45 {
            let quantity = rng.random_range(1..=50);
            let path = format!("/api/v1/products/{sku}/restock");
            let body = json!({"quantity": quantity});
            let command = format!("restock {sku} by {quantity}");
            load.command(&http, command, &format!("product-{sku}"), (Method::POST, &path), ADMIN, body).await
        } else if roll < 85 {
            let price = rng.random_range(100..=9_999);
            let path = format!("/api/v1/products/{sku}/price");
            let body = json!({"price_cents": price});
            let command = format!("price {sku} at {price}");
            load.command(&http, command, &format!("product-{sku}"), (Method::POST, &path), ADMIN, body).await
        } else if roll < 90 {
            // Refused by the rules: no product has this sku.
            let path = "/api/v1/products/kill9-no-such-product/restock";
            let command = "restock a product that does not exist".to_owned();
            load.refused(&http, command, (Method::POST, path), ADMIN, json!({"quantity": 1}), 404).await
        } else if roll < 97 || created.is_empty() {
            let sku = format!("{}-{number}", load.name);
            let body = json!({"sku": sku, "name": format!("New {sku}"), "price_cents": 1_000, "initial_stock": 5});
            let command = format!("create {sku}");
            let stream = format!("product-{sku}");
            let reply = load.command(&http, command, &stream, (Method::POST, "/api/v1/products"), ADMIN, body).await;
            if reply.as_ref().is_some_and(|reply| reply.status.is_success()) {
                created.push(sku);
            }
            reply
        } else {
            let sku = created.swap_remove(rng.random_range(0..created.len()));
            let path = format!("/api/v1/products/{sku}/discontinue");
            let command = format!("discontinue {sku}");
            load.command(&http, command, &format!("product-{sku}"), (Method::POST, &path), ADMIN, json!({})).await
        };
        if answered.is_none() {
            return load;
        }
    }
    load
}

/// An order a customer client placed and may still pay, cancel or ship.
#[derive(Debug)]
struct OpenOrder {
    id: String,
    total_cents: i64,
    paid: bool,
}

/// Fill and empty the cart, check out, pay, cancel, and have the admin ship.
async fn customer_client(
    http: Http,
    mut load: Load,
    customer: Customer,
    skus: Arc<Vec<String>>,
    mut cart: BTreeSet<String>,
    mut rng: StdRng,
    until: Instant,
) -> Load {
    let cart_stream = format!("cart-{}", customer.id);
    let token = customer.token.as_str();
    let mut open: Option<OpenOrder> = None;
    for _ in 0..COMMANDS_PER_CLIENT_MAX {
        if Instant::now() >= until {
            return load;
        }
        let roll = rng.random_range(0..100);
        let answered = if let Some(order) = open.take() {
            let stream = format!("order-{}", order.id);
            let (command, path, token, body) = match (order.paid, roll) {
                (false, 0..70) => ("pay", "pay", token, json!({"amount_cents": order.total_cents})),
                // Refused by the rules, and the order stays open.
                (false, 70..75) => {
                    let path = format!("/api/v1/orders/{}/pay", order.id);
                    let body = json!({"amount_cents": order.total_cents + 1});
                    let command = format!("pay {} one cent too much", order.id);
                    if load.refused(&http, command, (Method::POST, &path), token, body, 409).await.is_none() {
                        return load;
                    }
                    open = Some(order);
                    continue;
                }
                (true, 0..50) => ("ship", "ship", ADMIN, json!({})),
                (_, 75..90) | (true, 50..70) => ("cancel", "cancel", token, json!({})),
                // Left as it is: placed, or paid and never shipped.
                _ => continue,
            };
            let path = format!("/api/v1/orders/{}/{path}", order.id);
            let command = format!("{command} {}", order.id);
            let reply = load.command(&http, command, &stream, (Method::POST, &path), token, body).await;
            if path.ends_with("/pay") && reply.as_ref().is_some_and(|reply| reply.status.is_success()) {
                open = Some(OpenOrder { paid: true, ..order });
            }
            reply
        } else if cart.is_empty() || roll < 55 {
            let sku = skus.choose(&mut rng).expect("there are products").clone();
            let quantity = rng.random_range(1..=3);
            let body = json!({"sku": sku, "quantity": quantity});
            let command = format!("add {quantity} {sku} to {cart_stream}");
            let reply =
                load.command(&http, command, &cart_stream, (Method::POST, "/api/v1/cart/items"), token, body).await;
            if reply.as_ref().is_some_and(|reply| reply.status.is_success()) {
                cart.insert(sku);
            }
            reply
        } else if roll < 75 {
            let sku = cart.iter().nth(rng.random_range(0..cart.len())).expect("the cart is not empty").clone();
            let path = format!("/api/v1/cart/items/{sku}");
            let command = format!("remove {sku} from {cart_stream}");
            let reply = load.command(&http, command, &cart_stream, (Method::DELETE, &path), token, json!({})).await;
            if reply.as_ref().is_some_and(|reply| reply.status.is_success()) {
                cart.remove(&sku);
            }
            reply
        } else {
            let command = format!("checkout {cart_stream}");
            let path = (Method::POST, "/api/v1/cart/checkout");
            let reply = load.command(&http, command, &cart_stream, path, token, json!({})).await;
            if let Some(reply) = reply.as_ref().filter(|reply| reply.status.is_success()) {
                cart.clear();
                open = Some(OpenOrder {
                    id: reply.body["order_id"].as_str().expect("a placed order's id").to_owned(),
                    total_cents: reply.body["total_cents"].as_i64().expect("a placed order's total"),
                    paid: false,
                });
            }
            reply
        };
        if answered.is_none() {
            return load;
        }
    }
    load
}

// ---- the checks after a restart ----

/// One event of the log, as the audit route shows it.
#[derive(Debug)]
struct LogEvent {
    position: u64,
    stream: String,
    version: u64,
    event_type: String,
    data: Value,
    correlation_id: String,
}

/// The whole log through `GET /api/v1/events`, and the head it reports.
async fn read_log(http: &Http) -> (u64, Vec<LogEvent>) {
    let mut events = Vec::new();
    let mut head = None;
    let mut from = 1;
    for _ in 0..100_000 {
        let reply = http.get(&format!("/api/v1/events?from={from}&limit=1000"), Some(ADMIN)).await;
        let page_head: u64 = reply
            .headers
            .get("x-head-position")
            .and_then(|value| value.to_str().ok()?.parse().ok())
            .expect("a page of the log names the head");
        assert_eq!(*head.get_or_insert(page_head), page_head, "the head moved while nothing was written");
        for event in reply.body["events"].as_array().expect("a page has events") {
            let text = |field: &str| event[field].as_str().unwrap_or_else(|| panic!("{field} of {event}")).to_owned();
            let number = |field: &str| event[field].as_u64().unwrap_or_else(|| panic!("{field} of {event}"));
            events.push(LogEvent {
                position: number("position"),
                stream: text("stream"),
                version: number("version"),
                event_type: text("type"),
                data: event["data"].clone(),
                correlation_id: text("correlation_id"),
            });
        }
        match reply.body["next"].as_u64() {
            Some(next) => from = next,
            None => return (head.unwrap_or(0), events),
        }
    }
    panic!("the log did not end within 100,000 pages");
}

/// The main event of an acknowledged command of the load is that command's: the
/// event type its route writes, with the quantity, price or sku it was sent.
fn assert_main_event_is_the_command(round: usize, ack: &Ack, sent: &Sent, main: &LogEvent) {
    let path = sent.path.as_str();
    let (event_type, fields): (&str, &[&str]) = if path.ends_with("/restock") {
        ("ProductRestocked", &["quantity"])
    } else if path.ends_with("/price") {
        ("ProductPriceChanged", &["price_cents"])
    } else if path == "/api/v1/products" {
        ("ProductCreated", &["sku", "price_cents"])
    } else if path.ends_with("/discontinue") {
        ("ProductDiscontinued", &[])
    } else if path == "/api/v1/cart/items" {
        ("CartItemAdded", &["sku", "quantity"])
    } else if path.starts_with("/api/v1/cart/items/") {
        ("CartItemRemoved", &[])
    } else if path == "/api/v1/cart/checkout" {
        ("CartCheckedOut", &[])
    } else if path.ends_with("/pay") {
        ("OrderPaid", &["amount_cents"])
    } else if path.ends_with("/cancel") {
        ("OrderCancelled", &[])
    } else if path.ends_with("/ship") {
        ("OrderShipped", &[])
    } else {
        panic!("round {round}: {ack}: a command of an unknown route {path}");
    };
    assert_eq!(main.event_type, event_type, "round {round}: {ack}: its main event is {main:?}");
    for field in fields {
        assert_eq!(main.data[field], sent.body[field], "round {round}: {ack}: {field} of {main:?}");
    }
}

/// What the checks of a round saw.
#[derive(Debug)]
struct Checked {
    /// The head once the checks are done.
    head: u64,
    /// Commands whose answer the kill cut off but which had been written.
    written_unacknowledged: usize,
}

/// Every check of a round, on the restarted server.
async fn check(
    http: &Http,
    round: usize,
    acks: &mut Vec<Ack>,
    unanswered: &[Sent],
    shop: &Shop,
    verified: &Verified,
    rng: &mut StdRng,
) -> Checked {
    let restarted = http.head().await;
    assert_eq!(restarted, verified.head, "round {round}: the restarted server's head differs from what verify saw");
    let (retried, written_unacknowledged) = send_again(http, round, acks, unanswered, rng).await;
    acks.extend(retried);

    let (head, events) = read_log(http).await;
    assert_eq!(verified.events, restarted, "round {round}: verify counted {} events", verified.events);
    let streams: HashSet<&str> = events.iter().take(restarted as usize).map(|event| event.stream.as_str()).collect();
    assert_eq!(streams.len() as u64, verified.streams, "round {round}: verify counted other streams");

    // Positions 1..=head, each once, in order; each stream's versions 1..=n.
    let mut versions: HashMap<&str, u64> = HashMap::new();
    let mut by_version: HashMap<(&str, u64), &LogEvent> = HashMap::new();
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event.position, index as u64 + 1, "round {round}: positions are not 1..=head");
        let last = versions.entry(&event.stream).or_default();
        assert_eq!(event.version, *last + 1, "round {round}: a gap in {} at position {}", event.stream, event.position);
        *last = event.version;
        by_version.insert((&event.stream, event.version), event);
    }
    assert_eq!(events.len() as u64, head, "round {round}: the log does not hold every position up to its head");

    // Every acknowledged command, of every round so far: its main stream's event at
    // the acknowledged version, and its last event at the acknowledged position,
    // both written by the one command (one correlation id).
    for ack in acks.iter() {
        assert!(ack.position <= head, "round {round}: {ack} is past the head {head}");
        let main = by_version
            .get(&(ack.stream.as_str(), ack.version))
            .unwrap_or_else(|| panic!("round {round}: {ack} is acknowledged but its event is gone"));
        let last = &events[(ack.position - 1) as usize];
        assert!(main.position <= ack.position, "round {round}: {ack} but its event is at {}", main.position);
        assert_eq!(
            last.correlation_id, main.correlation_id,
            "round {round}: {ack}: position {} holds another command's event ({last:?}, main {main:?})",
            ack.position
        );
        if let Some(sent) = &ack.sent {
            assert_main_event_is_the_command(round, ack, sent, main);
        }
    }

    // Every event was written by a command that got a 2xx (before the kill, or
    // sent again after it): one that was refused wrote nothing, not even when the
    // kill came right after its answer.
    let acknowledged: HashSet<&str> = acks
        .iter()
        .filter_map(|ack| by_version.get(&(ack.stream.as_str(), ack.version)))
        .map(|main| main.correlation_id.as_str())
        .collect();
    for event in &events {
        assert!(
            acknowledged.contains(event.correlation_id.as_str()),
            "round {round}: {event:?} belongs to no command that got a 2xx: a refused one wrote it"
        );
    }

    // The read models, caught up after the crash, equal a fresh rebuild of each.
    let generations = wait_for_models(http, round, head, &HashMap::new()).await;
    let recovered = read_models(http, head, shop).await;
    let mut wanted = HashMap::new();
    for name in MODELS {
        let reply =
            http.expect(Method::POST, &format!("/admin/projections/{name}/rebuild"), Some(ADMIN), None, 202).await;
        let generation = reply.body["generation"].as_u64().expect("a rebuild names its generation");
        assert!(generation > generations[name], "round {round}: {name} rebuilds into generation {generation}");
        wanted.insert(name.to_owned(), generation);
    }
    wait_for_models(http, round, head, &wanted).await;
    let rebuilt = read_models(http, head, shop).await;
    assert!(!recovered.catalog.is_empty() && !recovered.carts.is_empty(), "round {round}: nothing to compare");
    assert_eq!(recovered.catalog, rebuilt.catalog, "round {round}: the catalog differs from its rebuild");
    assert_eq!(recovered.orders, rebuilt.orders, "round {round}: the orders differ from their rebuild");
    assert_eq!(recovered.sales, rebuilt.sales, "round {round}: the sales dashboard differs from its rebuild");
    assert_eq!(recovered.carts, rebuilt.carts, "round {round}: the carts differ from their rebuild");
    Checked { head, written_unacknowledged }
}

/// Send commands again with their idempotency keys: acknowledged ones (a sample
/// of every round so far) must answer their first outcome and write nothing; the
/// ones the kill cut off must apply exactly once, so each answers as a duplicate
/// exactly when it had been written before the kill. Returns their
/// acknowledgements, and how many of them had been written.
async fn send_again(
    http: &Http,
    round: usize,
    acks: &[Ack],
    unanswered: &[Sent],
    rng: &mut StdRng,
) -> (Vec<Ack>, usize) {
    let head = http.head().await;
    let keyed: Vec<&Ack> = acks.iter().filter(|ack| ack.sent.is_some()).collect();
    for ack in keyed.choose_multiple(rng, SENT_AGAIN) {
        let sent = ack.sent.as_ref().expect("only keyed commands were chosen");
        let reply = sent.send(http).await.unwrap_or_else(|error| panic!("round {round}: {ack} sent again: {error}"));
        assert!(reply.status.is_success(), "round {round}: {ack} sent again: {reply:?}");
        assert_eq!(reply.body["duplicate"], true, "round {round}: {ack} sent again: {reply:?}");
        let again = Ack::of_sent(sent.clone(), &reply);
        assert_eq!((again.version, again.position), (ack.version, ack.position), "round {round}: {ack} sent again");
    }
    assert_eq!(http.head().await, head, "round {round}: acknowledged commands sent again wrote something");
    let mut retried = Vec::new();
    let mut written = 0;
    for sent in unanswered {
        let command = &sent.command;
        let reply =
            sent.send(http).await.unwrap_or_else(|error| panic!("round {round}: {command} sent again: {error}"));
        if let Some(status) = sent.refused {
            assert_eq!(reply.status.as_u16(), status, "round {round}: `{command}`, cut off, sent again: {reply:?}");
            continue;
        }
        assert!(reply.status.is_success(), "round {round}: `{command}`, cut off, sent again: {reply:?}");
        let ack = Ack::of_sent(sent.clone(), &reply);
        let duplicate = reply.body["duplicate"].as_bool().expect("an answer says whether it is a duplicate");
        assert_eq!(duplicate, ack.position <= head, "round {round}: {ack} sent again after the kill, head {head}");
        written += usize::from(duplicate);
        retried.push(ack);
    }
    (retried, written)
}

/// Wait until every read model serves at least the generation `wanted` names for
/// it, has applied the log up to `head` and is not rebuilding; its generations.
async fn wait_for_models(http: &Http, round: usize, head: u64, wanted: &HashMap<String, u64>) -> HashMap<String, u64> {
    let deadline = Instant::now() + MODELS_WAIT_MAX;
    loop {
        let reply = http.get("/admin/projections", Some(ADMIN)).await;
        let statuses = reply.body.as_array().expect("a list of read models");
        let names: BTreeSet<&str> = statuses.iter().filter_map(|status| status["name"].as_str()).collect();
        assert_eq!(names, BTreeSet::from(MODELS), "round {round}: {statuses:?}");
        for status in statuses {
            assert!(status["failure"].is_null(), "round {round}: a read model failed: {status}");
        }
        let ready = statuses.iter().all(|status| {
            let name = status["name"].as_str().unwrap_or_default();
            let generation = status["generation"].as_u64().unwrap_or(0);
            status["checkpoint"].as_u64() == Some(head)
                && status["rebuild"].is_null()
                && wanted.get(name).is_none_or(|wanted| generation >= *wanted)
        });
        if ready {
            return statuses
                .iter()
                .map(|status| {
                    let name = status["name"].as_str().unwrap_or_default().to_owned();
                    (name, status["generation"].as_u64().expect("a generation"))
                })
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "round {round}: the read models did not reach {head} (generations {wanted:?}) in time: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the query routes answer from every read model.
#[derive(Debug, PartialEq)]
struct ReadModels {
    catalog: Vec<Value>,
    orders: Vec<Value>,
    sales: Value,
    carts: Vec<Value>,
}

/// Every page of every read model's query routes, each at `head` exactly.
async fn read_models(http: &Http, head: u64, shop: &Shop) -> ReadModels {
    let at_head = async |path: String, token: Option<&str>| {
        let reply = http.get(&path, token).await;
        let position = reply.headers.get("x-projection-position").and_then(|value| value.to_str().ok());
        assert_eq!(position, Some(head.to_string().as_str()), "{path}: {reply:?}");
        reply.body
    };
    let mut catalog = Vec::new();
    let mut after = String::new();
    for _ in 0..10_000 {
        let page = at_head(format!("/api/v1/products?limit=1000&min_position={head}{after}"), None).await;
        catalog.extend(page["items"].as_array().expect("a page of products").iter().cloned());
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    let mut orders = Vec::new();
    let mut before = String::new();
    for _ in 0..10_000 {
        let page = at_head(format!("/api/v1/orders?limit=1000&min_position={head}{before}"), Some(ADMIN)).await;
        orders.extend(page["items"].as_array().expect("a page of orders").iter().cloned());
        match page["next"].as_u64() {
            Some(next) => before = format!("&before={next}"),
            None => break,
        }
    }
    let sales = at_head(format!("/api/v1/dashboard/sales?min_position={head}"), Some(ADMIN)).await;
    let mut carts = Vec::new();
    for customer in &shop.customers {
        carts.push(at_head(format!("/api/v1/cart?min_position={head}"), Some(&customer.token)).await);
    }
    ReadModels { catalog, orders, sales, carts }
}
