//! `shoplog forget`: offline in a stopped data dir, online through a running
//! server, and every bad input one line, exit code 2, and nothing written.

use std::path::Path;
use std::process::{Command, Output};

use commands::{CommandContext, CommandService};
use domain::{CustomerName, Email, Password};
use uuid::Uuid;

use super::{SHOPLOG, assert_refused};
use crate::api::{ADMIN, TestApp, VIEWER};

const EMAIL: &str = "cli.forgettable@example.org";

/// `shoplog forget …`, with none of its settings taken from this environment.
fn forget(args: &[&str]) -> Output {
    Command::new(SHOPLOG)
        .arg("forget")
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("SHOPLOG_DATA")
        .env_remove("SHOPLOG_SERVER")
        .env_remove("SHOPLOG_TOKEN")
        .output()
        .expect("runs shoplog")
}

fn path(dir: &Path) -> &str {
    dir.to_str().expect("a utf-8 path")
}

async fn register(service: &CommandService) -> Result<Uuid, commands::CommandError> {
    let outcome = service
        .register_customer(
            &CommandContext::new("public"),
            Email::parse(EMAIL).expect("literal email"),
            CustomerName::parse("Cli Forgettable").expect("literal name"),
            Password::parse("correct horse").expect("literal password"),
            None,
        )
        .await?;
    Ok(outcome.customer_id().expect("names the customer").get())
}

/// A stopped data dir holding one registered customer (positions 1 and 2).
fn data_dir_with_a_customer() -> (tempfile::TempDir, Uuid) {
    let dir = tests::temp_dir();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let customer_id = runtime.block_on(async {
        let log = store::EventLog::open(dir.path()).expect("opens");
        let service = CommandService::new(log).expect("builds");
        register(&service).await.expect("registers")
    });
    (dir, customer_id)
}

/// The head of the stopped log in `dir`.
fn head(dir: &Path) -> u64 {
    store::EventLog::open(dir).expect("opens").head()
}

#[test]
fn forget_offline_shreds_the_customer_in_a_stopped_data_dir() {
    let (dir, customer_id) = data_dir_with_a_customer();
    let customer = customer_id.to_string();
    let output = forget(&["--customer", &customer, "--data", path(dir.path())]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), format!("forgot customer {customer} at position 4\n"));

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let log = store::EventLog::open(dir.path()).expect("opens");
        let events = log.read_stream(&format!("customer-{customer}"), 1, 10).expect("reads");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].payload, store::Payload::Forgotten, "the registration is shredded");
        assert_eq!(events[1].event_type, "CustomerForgotten");
        assert!(events[1].actor.starts_with("cli"), "the CLI is the actor: {}", events[1].actor);
        log.verify().expect("the log verifies");
        let service = CommandService::new(log).expect("builds");
        let again = register(&service).await.expect("the email can be registered again");
        assert_ne!(again, customer_id);
    });
    assert!(tests::files_contain(dir.path(), b"CustomerForgotten"), "the search sees what is in clear");
    assert!(!tests::files_contain(dir.path(), b"Cli Forgettable"), "the name is on disk in clear");

    let head_before = head(dir.path());
    assert_refused(&forget(&["--customer", &customer, "--data", path(dir.path())]), "already forgotten");
    assert_eq!(head(dir.path()), head_before, "a second forget writes nothing");
}

/// A stopped data dir holding a customer with an unpaid order of 3 of the 4
/// `cli-mug`s in stock; the customer's id and the order's.
fn data_dir_with_an_unpaid_order() -> (tempfile::TempDir, Uuid, Uuid) {
    let (dir, customer_id) = data_dir_with_a_customer();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let order_id = runtime.block_on(async {
        let log = store::EventLog::open(dir.path()).expect("opens");
        let service = CommandService::new(log).expect("builds");
        let (admin, customer) = (CommandContext::new("admin"), domain::CustomerId::new(customer_id));
        let sku = domain::Sku::parse("cli-mug").expect("literal sku");
        let (name, price) = (domain::ProductName::parse("Mug").expect("a name"), domain::PriceCents::new(900));
        let stock = Some(domain::Stock::new(4).expect("a stock"));
        service.create_product(&admin, sku.clone(), name, price.expect("a price"), stock, None).await.expect("creates");
        let quantity = domain::Quantity::new(3).expect("a quantity");
        service.add_cart_item(&admin, customer, sku, quantity, None).await.expect("adds");
        service.checkout(&admin, customer, None).await.expect("checks out").order_id().expect("an order").get()
    });
    (dir, customer_id, order_id)
}

/// The customer's unpaid order is cancelled with the forget, and the CLI says so.
#[test]
fn forget_offline_names_the_unpaid_orders_it_cancelled() {
    let (dir, customer_id, order_id) = data_dir_with_an_unpaid_order();
    let customer = customer_id.to_string();
    let output = forget(&["--customer", &customer, "--data", path(dir.path())]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let head = head(dir.path());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!(
            "forgot customer {customer} at position {head}\n\
             cancelled their unpaid orders, releasing the stock: {order_id}\n"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_online_goes_through_the_running_server() {
    let app = TestApp::spawn().await;
    let customer_id = app.register(EMAIL).await;
    let base = app.base.clone();
    let run = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || forget(&args.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .expect("the binary ran")
    };
    let online = |customer: &str, token: &str| {
        vec!["--customer".into(), customer.to_owned(), "--server".into(), base.clone(), "--token".into(), token.into()]
    };
    let head = app.head();

    assert_refused(&run(online(&customer_id, "wrong-token")).await, "the server refused the token");
    assert_refused(&run(online(&customer_id, VIEWER)).await, "the server refused the token");
    let unknown = Uuid::now_v7().to_string();
    assert_refused(&run(online(&unknown, ADMIN)).await, &format!("no customer {unknown}"));
    assert_eq!(app.head(), head, "refusals write nothing");

    let output = run(online(&customer_id, ADMIN)).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let head = app.head();
    assert_eq!(String::from_utf8_lossy(&output.stdout), format!("forgot customer {customer_id} at position {head}\n"));
    let login =
        app.post("/api/v1/sessions", None, serde_json::json!({"email": EMAIL, "password": "correct horse"})).await;
    assert_eq!(login.status, reqwest::StatusCode::UNAUTHORIZED, "{login:?}");
    assert_refused(&run(online(&customer_id, ADMIN)).await, "already forgotten");
    assert_eq!(app.head(), head, "a second forget writes nothing");

    // A server that is not there: one line naming the URL.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let gone = format!("http://{}", free.local_addr().expect("an address"));
    drop(free);
    let args =
        vec!["--customer".into(), customer_id.clone(), "--server".into(), gone.clone(), "--token".into(), "t".into()];
    assert_refused(&run(args).await, &format!("cannot reach the server at {gone}"));
    app.stop().await;
}

#[test]
fn bad_input_to_forget_is_one_line_exit_code_2_and_writes_nothing() {
    let (dir, customer_id) = data_dir_with_a_customer();
    let (data, customer) = (path(dir.path()), customer_id.to_string());
    let head_before = head(dir.path());

    assert_refused(&forget(&["--customer", "not-a-uuid", "--data", data]), "--customer");
    assert_refused(&forget(&["--data", data]), "--customer");
    assert_refused(&forget(&["--customer", &customer]), "--data DIR");
    let unknown = Uuid::now_v7().to_string();
    assert_refused(&forget(&["--customer", &unknown, "--data", data]), &format!("no customer {unknown}"));
    let both = ["--customer", &customer, "--data", data, "--server", "http://127.0.0.1:9", "--token", "t"];
    // Both on the command line: which one is meant is not guessed.
    assert_refused(&forget(&both), "not both");
    assert_refused(&forget(&["--customer", &customer, "--server", "http://127.0.0.1:9"]), "--token");
    assert_refused(&forget(&["--customer", &customer, "--server", "not a url", "--token", "t"]), "not a URL");
    assert_refused(&forget(&["--customer", &customer, "--server", "https://127.0.0.1:9", "--token", "t"]), "http://");
    assert_refused(&forget(&["--customer", &customer, "--data", "/no/such/dir"]), "does not exist");

    // A data dir in use: say so, and point at --server.
    {
        let held = store::EventLog::open(dir.path()).expect("opens");
        let output = forget(&["--customer", &customer, "--data", data]);
        assert_refused(&output, "in use by a running server");
        assert_refused(&output, "--server URL");
        assert_eq!(held.head(), head_before);
    }
    assert_eq!(head(dir.path()), head_before, "no refusal wrote anything");
}

/// A backup taken after a forget, restored to a position before it: the key is
/// gone (the customer reads as forgotten), but that log would record no
/// forgetting, and their unpaid order would still hold its stock, which nobody
/// could cancel (and a read replica, which knows a forgotten customer only by
/// that record, would take their token). The restore completes the forgetting:
/// it records it and cancels the order, releasing the stock, and says so; a
/// `forget` afterwards is refused.
#[test]
fn a_restore_to_before_a_forget_completes_the_forgetting() {
    let (dir, customer_id, order_id) = data_dir_with_an_unpaid_order();
    let before_the_forget = head(dir.path());
    let customer = customer_id.to_string();
    assert_eq!(forget(&["--customer", &customer, "--data", path(dir.path())]).status.code(), Some(0));
    let work = tests::temp_dir();
    let (backup, restored) = (work.path().join("shop.backup"), work.path().join("restored"));
    let backed_up = super::shoplog(&["backup", "--data", path(dir.path()), "--out", path(&backup)]);
    assert_eq!(backed_up.status.code(), Some(0), "{backed_up:?}");
    let to = before_the_forget.to_string();
    let restore = ["restore", "--in", path(&backup), "--data", path(&restored), "--to-position", &to];
    let output = super::shoplog(&restore);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains(&format!("so forgotten here too (recorded, their unpaid orders cancelled): customer {customer}")),
        "{said}"
    );

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (order, stock, types) = runtime.block_on(async {
        let log = store::EventLog::open(&restored).expect("opens");
        let stream = log.read_stream(&format!("customer-{customer}"), 1, 10).expect("reads");
        let types: Vec<String> = stream.iter().map(|event| event.event_type.clone()).collect();
        let service = CommandService::new(log).expect("builds");
        let (order, _) = service.order(domain::OrderId::new(order_id)).expect("reads").expect("the order");
        let sku = domain::Sku::parse("cli-mug").expect("literal sku");
        let (product, _) = service.product(&sku).expect("reads").expect("the product");
        (order.status(), product.info().map(|info| info.stock), types)
    });
    assert_eq!((order, stock), (Some(domain::OrderStatus::Cancelled), Some(4)), "cancelled, the stock released");
    assert_eq!(types, ["CustomerRegistered", "CustomerForgotten"]);
    let head_before = head(&restored);
    assert_refused(&forget(&["--customer", &customer, "--data", path(&restored)]), "already forgotten");
    assert_eq!(head(&restored), head_before, "a second forget writes nothing");
    // A restore to the end (the forget recorded) completes nothing.
    let whole = work.path().join("whole");
    let output = super::shoplog(&["restore", "--in", path(&backup), "--data", path(&whole)]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("forgotten here too"), "{output:?}");
    assert_eq!(head(&whole), head(dir.path()), "nothing appended");
}
