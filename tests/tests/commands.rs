//! The command side (`commands::CommandService`) against a real log in a temp dir:
//! contention, uniqueness through the log, `If-Match`, idempotency, passwords,
//! orders, forgetting, and the state cache.

use std::path::Path;
use std::sync::Arc;

use commands::{CommandContext, CommandError, CommandOutcome, CommandService};
use domain::{
    Cents, Customer, CustomerId, CustomerName, DomainError, Email, Event, Order, OrderId, Password, PriceCents,
    Product, ProductEvent, ProductName, Quantity, RestockQuantity, Sku, Stock, StreamId,
};
use store::EventLog;
use tests::temp_dir;
use tokio::sync::Barrier;
use uuid::Uuid;

fn sku(text: &str) -> Sku {
    Sku::parse(text).expect("literal sku")
}

fn email(text: &str) -> Email {
    Email::parse(text).expect("literal email")
}

fn password(text: &str) -> Password {
    Password::parse(text).expect("literal password")
}

fn name(text: &str) -> CustomerName {
    CustomerName::parse(text).expect("literal name")
}

fn quantity(count: u32) -> Quantity {
    Quantity::new(count).expect("literal quantity")
}

fn admin() -> CommandContext {
    CommandContext::new("admin")
}

fn as_customer(customer_id: CustomerId) -> CommandContext {
    CommandContext::new(format!("customer:{customer_id}"))
}

fn new_customer() -> CustomerId {
    CustomerId::new(Uuid::now_v7())
}

/// A log and a service on it that keeps deciding again under contention far
/// longer than the default: a loaded CI machine's stalled `fdatasync` must not
/// turn a race these tests count into a `Contention` error.
fn open(dir: &Path) -> (EventLog, CommandService) {
    let log = EventLog::open(dir).expect("opens");
    let options = commands::Options {
        attempts_max: 10_000,
        retry_deadline: std::time::Duration::from_secs(60),
        ..commands::Options::default()
    };
    let service = CommandService::with_options(log.clone(), options).expect("builds");
    (log, service)
}

async fn create_product(service: &CommandService, sku_text: &str, price_cents: i64, stock: u32) {
    service
        .create_product(
            &admin(),
            sku(sku_text),
            ProductName::parse("A product").expect("literal name"),
            PriceCents::new(price_cents).expect("literal price"),
            Some(Stock::new(stock).expect("literal stock")),
            None,
        )
        .await
        .expect("creates the product");
}

async fn add_to_cart(service: &CommandService, customer_id: CustomerId, sku_text: &str, count: u32) {
    service
        .add_cart_item(&as_customer(customer_id), customer_id, sku(sku_text), quantity(count), None)
        .await
        .expect("adds to the cart");
}

/// Every customer checks out at the same moment (released together by a barrier);
/// each one's result, in the customers' order.
async fn race_checkouts(
    service: &CommandService,
    customers: &[CustomerId],
) -> Vec<(CustomerId, Result<commands::CommandOutcome, CommandError>)> {
    let barrier = Arc::new(Barrier::new(customers.len()));
    let tasks: Vec<_> = customers
        .iter()
        .map(|customer_id| {
            let (service, barrier, customer_id) = (service.clone(), Arc::clone(&barrier), *customer_id);
            tokio::spawn(async move {
                barrier.wait().await;
                (customer_id, service.checkout(&as_customer(customer_id), customer_id, None).await)
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.expect("the task ends"));
    }
    results
}

/// Twenty customers, each with one unit of `mug-1` (stock 100) in the cart,
/// checking out at once through a service with `options`: the log, the service
/// and each checkout's result.
async fn contended_checkouts(
    dir: &Path,
    options: commands::Options,
) -> (EventLog, CommandService, Vec<(CustomerId, Result<commands::CommandOutcome, CommandError>)>) {
    let log = EventLog::open(dir).expect("opens");
    let service = CommandService::with_options(log.clone(), options).expect("builds");
    create_product(&service, "mug-1", 1299, 100).await;
    let customers: Vec<CustomerId> = (0..20).map(|_| new_customer()).collect();
    for customer_id in &customers {
        add_to_cart(&service, *customer_id, "mug-1", 1).await;
    }
    let results = race_checkouts(&service, &customers).await;
    (log, service, results)
}

/// The product's stock, folded straight from its stream (not through any cache).
fn stock_in_log(log: &EventLog, sku_text: &str) -> u32 {
    let stream = StreamId::Product(sku(sku_text)).to_string();
    let product =
        log.read_stream(&stream, 1, usize::MAX).expect("reads").iter().fold(Product::default(), |product, recorded| {
            match commands::codec::decode(recorded).expect("decodes") {
                Some(Event::Product(event)) => domain::product::evolve(product, &event),
                other => panic!("a product stream holds {other:?}"),
            }
        });
    product.info().expect("the product exists").stock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_customers_checking_out_the_last_ten_units_at_once_get_exactly_ten_orders() {
    const CUSTOMERS: usize = 40;
    const UNITS: u32 = 10;
    let dir = temp_dir();
    let (log, service) = open(dir.path());
    create_product(&service, "last-units", 1500, UNITS).await;
    let customers: Vec<CustomerId> = (0..CUSTOMERS).map(|_| new_customer()).collect();
    for customer_id in &customers {
        add_to_cart(&service, *customer_id, "last-units", 1).await;
    }

    let mut orders = Vec::new();
    let mut retried = 0;
    let mut out_of_stock = 0;
    for (_, result) in race_checkouts(&service, &customers).await {
        match result {
            Ok(outcome) => {
                orders.push(outcome.order_id().expect("a checkout places an order"));
                retried += usize::from(outcome.attempts > 1);
            }
            Err(CommandError::Domain(DomainError::OutOfStock { skus })) => {
                assert_eq!(skus, vec![sku("last-units")]);
                out_of_stock += 1;
            }
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!(orders.len(), UNITS as usize);
    assert_eq!(out_of_stock, CUSTOMERS - UNITS as usize);
    assert!(retried > 0, "no checkout met a conflict; the test proves nothing");
    assert_eq!(stock_in_log(&log, "last-units"), 0);

    let reserved: u32 = log
        .read_all(1, usize::MAX)
        .expect("reads")
        .iter()
        .filter_map(|recorded| match commands::codec::decode(recorded).expect("decodes") {
            Some(Event::Product(ProductEvent::StockReserved(reserved))) => Some(reserved.quantity.get()),
            _ => None,
        })
        .sum();
    assert_eq!(reserved, UNITS, "no oversell");
    for order_id in orders {
        let (order, version) = service.order(order_id).expect("reads").expect("the order exists");
        assert!(matches!(order, Order::Placed(_)));
        assert_eq!(version, 1);
    }
    log.verify().expect("the log verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_racing_registrations_of_one_email_in_different_case_let_exactly_one_win() {
    let dir = temp_dir();
    let (log, service) = open(dir.path());
    let barrier = Arc::new(Barrier::new(2));
    let tasks: Vec<_> = ["Ada@x.com", "ada@X.com"]
        .into_iter()
        .map(|address| {
            let (service, barrier) = (service.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                service
                    .register_customer(
                        &CommandContext::new("public"),
                        email(address),
                        name("Ada Lovelace"),
                        password("analytical engine"),
                        None,
                    )
                    .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("the task ends"));
    }
    let winners: Vec<_> = results.iter().filter_map(|result| result.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let loser = results.iter().find_map(|result| result.as_ref().err()).expect("one loses");
    assert_eq!(*loser, CommandError::Domain(DomainError::EmailTaken));
    assert_eq!(loser.to_string(), "email is already registered");

    let customer_id = winners[0].customer_id().expect("a registration names its customer");
    for address in ["ADA@X.COM", "ada@x.com"] {
        let logged_in = service.login(&email(address), &password("analytical engine")).await;
        assert_eq!(logged_in, Ok(customer_id), "any case of the address logs in");
    }
    assert_eq!(log.head(), 2, "only the winner wrote: its registration and its claim");
    log.verify().expect("the log verifies");
}

#[tokio::test]
async fn a_stale_expected_version_is_refused_and_writes_nothing_while_the_right_one_succeeds() {
    let dir = temp_dir();
    let (log, service) = open(dir.path());
    create_product(&service, "mug-1", 1299, 5).await;

    let admin = admin();
    let restock =
        |expected| service.restock(&admin, sku("mug-1"), RestockQuantity::new(3).expect("literal quantity"), expected);
    let outcome = restock(Some(1)).await.expect("version 1 is current");
    assert_eq!((outcome.stream(), outcome.version(), outcome.position()), ("product-mug-1", 2, 2));

    let head = log.head();
    let refused = restock(Some(1)).await.expect_err("version 1 is stale");
    assert_eq!(
        refused,
        CommandError::PreconditionFailed { stream: "product-mug-1".to_owned(), expected: 1, actual: 2 }
    );
    assert_eq!(log.head(), head, "nothing was written");
    let refused = restock(Some(7)).await.expect_err("version 7 does not exist yet");
    assert!(matches!(refused, CommandError::PreconditionFailed { expected: 7, actual: 2, .. }));
    assert_eq!(log.head(), head, "nothing was written");

    restock(Some(2)).await.expect("version 2 is current");
    assert_eq!(stock_in_log(&log, "mug-1"), 11);
}

#[tokio::test]
async fn a_repeated_checkout_with_one_idempotency_key_gives_the_first_order_and_writes_nothing() {
    let dir = temp_dir();
    let (log, service) = open(dir.path());
    create_product(&service, "mug-1", 1299, 5).await;
    let customer_id = new_customer();
    add_to_cart(&service, customer_id, "mug-1", 2).await;

    let ctx = as_customer(customer_id).with_idempotency("checkout-1", [1; 32]);
    let first = service.checkout(&ctx, customer_id, None).await.expect("checks out");
    assert!(!first.duplicate);
    let placed = first.order_placed().expect("an order is placed").clone();
    assert_eq!(placed.total_cents, Cents::new(2 * 1299 + 499));
    let head = log.head();

    // A client retry: new request ids, same key and body. The cart is empty now,
    // yet the answer is the first one.
    let retry = CommandContext { correlation_id: Uuid::now_v7(), causation_id: Uuid::now_v7(), ..ctx.clone() };
    let again = service.checkout(&retry, customer_id, None).await.expect("answers the first outcome");
    assert!(again.duplicate);
    assert_eq!(again.order_id(), Some(placed.order_id));
    assert_eq!(again.order_placed().map(|placed| placed.total_cents), Some(placed.total_cents));
    assert_eq!(again.events, first.events);
    assert_eq!((again.first_position, again.last_position), (first.first_position, first.last_position));
    assert_eq!(log.head(), head, "nothing was written the second time");

    let other_body = as_customer(customer_id).with_idempotency("checkout-1", [2; 32]);
    let refused = service.checkout(&other_body, customer_id, None).await.expect_err("another request");
    assert_eq!(refused, CommandError::IdempotencyKeyReused);
    assert_eq!(log.head(), head);

    // Without a key, the empty cart is refused as usual.
    let refused = service.checkout(&as_customer(customer_id), customer_id, None).await.expect_err("empty cart");
    assert_eq!(refused, CommandError::Domain(DomainError::EmptyCart { customer_id }));
}

#[tokio::test]
async fn a_repeated_add_to_cart_with_one_idempotency_key_adds_once() {
    let dir = temp_dir();
    let (log, service) = open(dir.path());
    create_product(&service, "mug-1", 1299, 5).await;
    let customer_id = new_customer();
    let ctx = as_customer(customer_id).with_idempotency("add-1", [7; 32]);
    let add = || service.add_cart_item(&ctx, customer_id, sku("mug-1"), quantity(2), None);
    let first = add().await.expect("adds");
    let head = log.head();
    let again = add().await.expect("answers the first outcome");
    assert!(again.duplicate);
    assert_eq!(again.events, first.events);
    assert_eq!(log.head(), head);
    let (cart, version) = service.cart(customer_id).expect("reads");
    assert_eq!(cart.lines().get(&sku("mug-1")), Some(&quantity(2)));
    assert_eq!(version, 1);
}

#[tokio::test]
async fn login_takes_the_right_password_only_and_the_log_holds_no_personal_data_in_clear() {
    let dir = temp_dir();
    let address = "Grace.Hopper@example.com";
    let full_name = "Grace Brewster Murray Hopper";
    let secret = "cobol-compiler-1959";
    let stored_hash;
    {
        let (_log, service) = open(dir.path());
        let outcome = service
            .register_customer(&CommandContext::new("public"), email(address), name(full_name), password(secret), None)
            .await
            .expect("registers");
        let customer_id = outcome.customer_id().expect("names the customer");
        assert_eq!(outcome.stream(), format!("customer-{customer_id}"));
        assert_eq!(outcome.version(), 1);

        assert_eq!(service.login(&email(address), &password(secret)).await, Ok(customer_id));
        assert_eq!(
            service.login(&email(address), &password("cobol-compiler-1960")).await,
            Err(CommandError::InvalidCredentials)
        );
        assert_eq!(
            service.login(&email("nobody@example.com"), &password(secret)).await,
            Err(CommandError::InvalidCredentials)
        );

        let (customer, _) = service.customer(customer_id).expect("reads").expect("exists");
        let Customer::Registered(profile) = customer else { panic!("registered: {customer:?}") };
        assert!(profile.password_hash.as_str().starts_with("$argon2id$"), "an argon2id PHC string");
        stored_hash = profile.password_hash.as_str().to_owned();
    }
    for needle in [address, &address.to_lowercase(), full_name, secret, &stored_hash] {
        assert!(!tests::files_contain(dir.path(), needle.as_bytes()), "{needle:?} is on disk in clear");
    }
    assert!(tests::files_contain(dir.path(), b"CustomerRegistered"), "the search finds what is on disk in clear");
}

#[tokio::test]
async fn cancelling_an_order_releases_its_stock() {
    let dir = temp_dir();
    let (log, service) = open(dir.path());
    create_product(&service, "mug-1", 1299, 5).await;
    create_product(&service, "pot-1", 2500, 3).await;
    let customer_id = new_customer();
    add_to_cart(&service, customer_id, "mug-1", 3).await;
    add_to_cart(&service, customer_id, "pot-1", 1).await;
    let order_id = checkout(&service, customer_id).await;
    assert_eq!((stock_in_log(&log, "mug-1"), stock_in_log(&log, "pot-1")), (2, 2));

    let outcome = service.cancel_order(&as_customer(customer_id), customer_id, order_id, None).await.expect("cancels");
    assert_eq!(outcome.stream(), format!("order-{order_id}"));
    assert_eq!(outcome.version(), 2);
    assert_eq!(outcome.streams.len(), 3, "the order and both products, in one append");
    assert_eq!((stock_in_log(&log, "mug-1"), stock_in_log(&log, "pot-1")), (5, 3));
    let (product, _) = service.product(&sku("mug-1")).expect("reads").expect("exists");
    assert_eq!(product.info().map(|info| info.stock), Some(5), "the cache saw the release");
    assert!(matches!(service.order(order_id).expect("reads"), Some((Order::Cancelled(_), 2))));

    let again = service.cancel_order(&as_customer(customer_id), customer_id, order_id, None).await;
    assert!(matches!(again, Err(CommandError::Domain(DomainError::IllegalTransition { .. }))), "{again:?}");
    log.verify().expect("the log verifies");
}

async fn checkout(service: &CommandService, customer_id: CustomerId) -> OrderId {
    service
        .checkout(&as_customer(customer_id), customer_id, None)
        .await
        .expect("checks out")
        .order_id()
        .expect("places an order")
}

#[tokio::test]
async fn paying_the_wrong_amount_is_refused_and_the_right_amount_pays() {
    let dir = temp_dir();
    let (_log, service) = open(dir.path());
    create_product(&service, "mug-1", 6000, 5).await;
    let customer_id = new_customer();
    add_to_cart(&service, customer_id, "mug-1", 1).await;
    let order_id = checkout(&service, customer_id).await;
    let ctx = as_customer(customer_id);

    let refused = service.pay_order(&ctx, customer_id, order_id, Cents::new(5999), None).await;
    assert_eq!(
        refused,
        Err(CommandError::Domain(DomainError::WrongAmount {
            order_id,
            expected: Cents::new(6000),
            given: Cents::new(5999)
        }))
    );
    let keyed = ctx.clone().with_idempotency("pay-1", [3; 32]);
    let paid = service.pay_order(&keyed, customer_id, order_id, Cents::new(6000), Some(1)).await.expect("pays");
    assert_eq!((paid.version(), paid.duplicate), (2, false));
    // The same request again: its `If-Match` is stale now, but it is a repeat.
    let again = service.pay_order(&keyed, customer_id, order_id, Cents::new(6000), Some(1)).await.expect("repeats");
    assert_eq!((again.version(), again.duplicate), (2, true));
    let refused = service.pay_order(&ctx, customer_id, order_id, Cents::new(6000), Some(1)).await;
    assert!(matches!(refused, Err(CommandError::PreconditionFailed { expected: 1, actual: 2, .. })), "{refused:?}");
    let shipped = service.ship_order(&admin(), order_id, Some(2)).await.expect("ships");
    assert_eq!(shipped.version(), 3);
    assert!(matches!(service.order(order_id).expect("reads"), Some((Order::Shipped(_), 3))));
}

#[tokio::test]
async fn a_customer_cannot_pay_or_cancel_another_customers_order() {
    let dir = temp_dir();
    let (log, service) = open(dir.path());
    create_product(&service, "mug-1", 1299, 5).await;
    let (owner, intruder) = (new_customer(), new_customer());
    add_to_cart(&service, owner, "mug-1", 1).await;
    let order_id = checkout(&service, owner).await;
    let head = log.head();

    let total = Cents::new(1299 + 499);
    let paid = service.pay_order(&as_customer(intruder), intruder, order_id, total, None).await;
    assert_eq!(paid, Err(CommandError::NotYours { order_id }));
    let cancelled = service.cancel_order(&as_customer(intruder), intruder, order_id, None).await;
    assert_eq!(cancelled, Err(CommandError::NotYours { order_id }));
    assert_eq!(log.head(), head);

    let missing = OrderId::new(Uuid::now_v7());
    let paid = service.pay_order(&as_customer(intruder), intruder, missing, total, None).await;
    assert_eq!(paid, Err(CommandError::Domain(DomainError::OrderNotFound { order_id: missing })));
    service.pay_order(&as_customer(owner), owner, order_id, total, None).await.expect("the owner pays");
}

#[tokio::test]
async fn forgetting_a_customer_makes_the_email_registrable_again() {
    let dir = temp_dir();
    let (log, service) = open(dir.path());
    let public = CommandContext::new("public");
    let register = |address: &'static str| {
        service.register_customer(&public, email(address), name("Ada Lovelace"), password("analytical engine"), None)
    };
    let first = register("ada@example.com").await.expect("registers").customer_id().expect("names the customer");
    assert_eq!(register("ADA@example.com").await.map(|_| ()), Err(CommandError::Domain(DomainError::EmailTaken)));

    let forgotten = service.forget_customer(&admin(), first, Some(1)).await.expect("forgets");
    assert_eq!(forgotten.version(), 2);
    assert_eq!(forgotten.streams.len(), 2, "the customer and the released claim");
    assert!(matches!(service.customer(first).expect("reads"), Some((Customer::Forgotten { .. }, 2))));
    let events = log.read_stream(&format!("customer-{first}"), 1, 10).expect("reads");
    assert_eq!(events[0].payload, store::Payload::Forgotten, "the registration is shredded");
    assert_eq!(
        service.login(&email("ada@example.com"), &password("analytical engine")).await,
        Err(CommandError::InvalidCredentials)
    );
    let again = service.forget_customer(&admin(), first, None).await;
    assert_eq!(
        again.map(|_| ()),
        Err(CommandError::Domain(DomainError::CustomerAlreadyForgotten { customer_id: first }))
    );

    let second = register("Ada@Example.com").await.expect("registers again").customer_id().expect("names");
    assert_ne!(second, first);
    assert_eq!(service.login(&email("ada@example.com"), &password("analytical engine")).await, Ok(second));

    // A fresh service (empty cache) folds the shredded stream the same way.
    let fresh = CommandService::new(log.clone()).expect("builds");
    assert!(matches!(fresh.customer(first).expect("reads"), Some((Customer::Forgotten { .. }, 2))));
    log.verify().expect("the log verifies");
}

/// A registration's request hash covers its email and name: the log keeps it
/// keyed by the log's `request-key` secret, never plain (DESIGN §3.9). A key
/// that an earlier binary stored with the plain hash still repeats its first
/// answer (simulated here: a request whose plain hash is what the log holds).
#[tokio::test]
async fn request_hashes_are_stored_keyed_and_a_plainly_stored_one_still_repeats() {
    let dir = temp_dir();
    let (log, service) = open(dir.path());
    let plain = [5; 32];
    create_product(&service, "mug-1", 1299, 5).await;
    let ctx = admin().with_idempotency("restock-1", plain);
    let first =
        service.restock(&ctx, sku("mug-1"), RestockQuantity::new(1).expect("literal"), None).await.expect("restocks");
    let head = log.head();
    let secret = log.secret(commands::REQUEST_KEY_SECRET).expect("the secret");
    let stored = *blake3::keyed_hash(&secret, &plain).as_bytes();
    // The request whose plain hash is the stored one: answered as the first.
    let legacy = admin().with_idempotency("restock-1", stored);
    let again =
        service.restock(&legacy, sku("mug-1"), RestockQuantity::new(1).expect("literal"), None).await.expect("repeats");
    assert!(again.duplicate);
    assert_eq!((again.first_position, again.last_position), (first.first_position, first.last_position));
    let other = admin().with_idempotency("restock-1", [6; 32]);
    assert_eq!(
        service.restock(&other, sku("mug-1"), RestockQuantity::new(1).expect("literal"), None).await.map(|_| ()),
        Err(CommandError::IdempotencyKeyReused)
    );
    assert_eq!(log.head(), head, "nothing written by the repeats");
}

/// A repeat of a registration (its idempotency key and request) after the
/// customer was forgotten is refused: its first answer names the erased customer.
#[tokio::test]
async fn a_registration_repeated_after_its_customer_was_forgotten_is_refused() {
    let dir = temp_dir();
    let (log, service) = open(dir.path());
    let ctx = CommandContext::new("public").with_idempotency("register-1", [8; 32]);
    let register =
        || service.register_customer(&ctx, email("dan@example.com"), name("Dan"), password("analytical engine"), None);
    let first = register().await.expect("registers");
    let customer_id = first.customer_id().expect("names the customer");
    let again = register().await.expect("the first answer again");
    assert!(again.duplicate);
    assert_eq!(again.customer_id(), Some(customer_id));
    service.forget_customer(&admin(), customer_id, None).await.expect("forgets");
    let head = log.head();
    // In the words a key used for another request gets: a right guess of the
    // forgotten customer's email and name is not told from a wrong one.
    assert_eq!(register().await.map(|_| ()), Err(CommandError::IdempotencyKeyReused));
    let ctx = CommandContext::new("public").with_idempotency("register-1", [9; 32]);
    let guess =
        service.register_customer(&ctx, email("dan@example.net"), name("Dan"), password("analytical engine"), None);
    assert_eq!(guess.await.map(|_| ()), Err(CommandError::IdempotencyKeyReused));
    assert_eq!(log.head(), head);
}

/// One address in capitals is the same address, Greek's word-final sigma too
/// (`ΑΣ@…` lowercases to `ας@…` as a word, `ασ@…` letter by letter). A claim an
/// earlier binary made under the key of `ας@…` still holds the address against
/// its other spellings, and the customer's forget releases it.
#[tokio::test]
async fn an_address_in_capitals_is_the_same_address_final_sigma_too_and_older_claims_still_hold() {
    let dir = temp_dir();
    let (log, service) = open(dir.path());
    let public = CommandContext::new("public");
    let register_as = |address: &'static str| {
        service.register_customer(&public, email(address), name("Ada"), password("analytical"), None)
    };
    let first = register(&service, "ασ@example.com").await;
    assert_eq!(register_as("ΑΣ@EXAMPLE.COM").await.map(|_| ()), Err(CommandError::Domain(DomainError::EmailTaken)));
    assert_eq!(service.login(&email("ΑΣ@EXAMPLE.COM"), &password("analytical")).await, Ok(first));

    let customer_id = registered_under_the_earlier_key(&log, &service, "ΒΣ@example.com").await;

    assert_eq!(register_as("βσ@example.com").await.map(|_| ()), Err(CommandError::Domain(DomainError::EmailTaken)));
    service.forget_customer(&admin(), customer_id, None).await.expect("forgets");
    assert_ne!(register(&service, "βσ@example.com").await, customer_id);

    // Typed in lowercase, a final `ς` in each word (the earlier key kept them):
    // every spelling finds that claim, and the forget releases it.
    let typed = registered_under_the_earlier_key(&log, &service, "νικος.παππας@x.gr").await;
    for spelling in ["νικος.παππας@x.gr", "ΝΙΚΟΣ.ΠΑΠΠΑΣ@X.GR", "νικοσ.παππασ@x.gr"] {
        assert_eq!(register_as(spelling).await.map(|_| ()), Err(CommandError::Domain(DomainError::EmailTaken)));
    }
    service.forget_customer(&admin(), typed, None).await.expect("forgets");
    assert_ne!(register(&service, "νικοσ.παππασ@x.gr").await, typed);
    log.verify().expect("the log verifies");
}

/// Cart adds and removes racing the customer's forget: none is appended after
/// `CustomerForgotten` (each holds on condition of the customer stream), and
/// every one after it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cart_command_racing_a_forget_is_written_after_it() {
    let dir = temp_dir();
    let (log, service) = open(dir.path());
    create_product(&service, "mug-1", 1000, 10).await;
    create_product(&service, "pot-1", 2000, 10).await;
    for round in 0..20 {
        let customer_id = register(&service, &format!("racer{round}@example.com")).await;
        let shoppers: Vec<_> = (0..4)
            .map(|shopper| {
                let service = service.clone();
                tokio::spawn(async move {
                    let sku_text = if shopper % 2 == 0 { "mug-1" } else { "pot-1" };
                    for _ in 0..50 {
                        let ctx = as_customer(customer_id);
                        let done = match shopper < 2 {
                            true => service.add_cart_item(&ctx, customer_id, sku(sku_text), quantity(1), None).await,
                            false => service.remove_cart_item(&ctx, customer_id, sku(sku_text), None).await,
                        };
                        if let Err(CommandError::Domain(DomainError::CustomerNotFound { .. })) = done {
                            return;
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        service.forget_customer(&admin(), customer_id, None).await.expect("forgets");
        for shopper in shoppers {
            shopper.await.expect("the shopper ends");
        }
        let forgotten = log.read_stream(&format!("customer-{customer_id}"), 1, 10).expect("reads");
        let forgotten_at = forgotten.last().expect("the forget").position;
        let cart = log.read_stream(&format!("cart-{customer_id}"), 1, 1000).expect("reads");
        let late: Vec<_> = cart.iter().filter(|event| event.position > forgotten_at).map(|e| &e.event_type).collect();
        assert!(late.is_empty(), "round {round}: cart events after the forget at {forgotten_at}: {late:?}");
    }
}

/// A customer registered at `address` (with a sigma) as an earlier binary did:
/// its claim under the key of the address as `str::to_lowercase` made it (`ΒΣ@…`
/// as `βς@…`, a typed `ς` kept), its password hash a stand-in.
pub(crate) async fn registered_under_the_earlier_key(
    log: &EventLog,
    service: &CommandService,
    address: &str,
) -> CustomerId {
    let old = email(address);
    let secret = log.secret(commands::EMAIL_KEY_SECRET).expect("the secret");
    let forms = old.normalized_before_folding();
    let at = forms.iter().position(|form| *form == address.to_lowercase()).expect("the earlier form is among them");
    let before = commands::email_keys_before_folding(&secret, &old).swap_remove(at);
    assert_ne!(before, service.email_key(&old));
    let customer_id = new_customer();
    let command = domain::CustomerCommand::Register(domain::RegisterCustomer {
        customer_id,
        email: old,
        email_key: before,
        name: name("Old"),
        password_hash: domain::PasswordHash::new("$argon2id$stand-in".to_owned()).expect("literal"),
    });
    let events = domain::customer::decide(&Customer::default(), &Default::default(), &Customer::default(), &command)
        .expect("registers");
    let streams: Vec<(String, store::NewEvent)> = events
        .iter()
        .map(|event| (event.stream().to_string(), commands::codec::to_new_event(event).expect("encodes")))
        .collect();
    let appends =
        streams.iter().map(|(stream, event)| (stream.as_str(), store::ExpectedVersion::NoStream, vec![event.clone()]));
    log.append(tests::append_many(appends.collect())).await.expect("the earlier binary's registration");
    customer_id
}

async fn register(service: &CommandService, address: &str) -> CustomerId {
    service
        .register_customer(&CommandContext::new("public"), email(address), name("Ada"), password("analytical"), None)
        .await
        .expect("registers")
        .customer_id()
        .expect("names the customer")
}

/// Nobody could pay or cancel a forgotten customer's unpaid order, so the
/// forget cancels it in the same append and its stock comes back; a paid
/// order stays. A repeat of the forget (same idempotency key) names the same
/// orders, and the forgotten customer cannot check out again.
#[tokio::test]
async fn forgetting_a_customer_cancels_their_unpaid_orders_and_releases_the_stock() {
    let dir = temp_dir();
    let (log, service) = open(dir.path());
    create_product(&service, "mug-1", 1000, 10).await;
    create_product(&service, "pot-1", 6000, 10).await;
    let ada = register(&service, "ada@example.com").await;
    let bob = register(&service, "bob@example.com").await;
    add_to_cart(&service, ada, "mug-1", 2).await;
    add_to_cart(&service, ada, "pot-1", 1).await;
    let unpaid = checkout(&service, ada).await;
    add_to_cart(&service, ada, "pot-1", 1).await;
    let paid = checkout(&service, ada).await;
    service.pay_order(&as_customer(ada), ada, paid, Cents::new(6000), None).await.expect("pays");
    add_to_cart(&service, ada, "mug-1", 1).await;
    let cancelled_before = checkout(&service, ada).await;
    service.cancel_order(&as_customer(ada), ada, cancelled_before, None).await.expect("cancels");
    add_to_cart(&service, bob, "mug-1", 3).await;
    let bobs = checkout(&service, bob).await;
    add_to_cart(&service, ada, "mug-1", 4).await;
    assert_eq!((stock_in_log(&log, "mug-1"), stock_in_log(&log, "pot-1")), (5, 8));

    let keyed = admin().with_idempotency("forget-ada", [9; 32]);
    let forgotten = service.forget_customer(&keyed, ada, None).await.expect("forgets");
    assert_eq!(forgotten.cancelled_orders(), vec![unpaid]);
    let streams: Vec<&str> = forgotten.streams.iter().map(|written| written.stream.as_str()).collect();
    let (customer, claim) = (format!("customer-{ada}"), streams[1]);
    assert_eq!(streams, [customer.as_str(), claim, &format!("order-{unpaid}"), "product-mug-1", "product-pot-1"]);
    assert_eq!((stock_in_log(&log, "mug-1"), stock_in_log(&log, "pot-1")), (7, 9), "the unpaid order's stock is back");
    assert!(matches!(service.order(unpaid).expect("reads"), Some((Order::Cancelled(_), 2))));
    assert!(matches!(service.order(paid).expect("reads"), Some((Order::Paid(_), 2))), "the shop ships it");
    assert!(matches!(service.order(bobs).expect("reads"), Some((Order::Placed(_), 1))), "bob's is bob's");
    assert_eq!(log.stream_version(&format!("cart-{ada}")).expect("reads"), 8, "the cart was only a condition");

    let again = service.forget_customer(&keyed, ada, None).await.expect("repeats");
    assert_eq!((again.duplicate, again.cancelled_orders()), (true, vec![unpaid]));
    let head = log.head();
    let refused = service.checkout(&as_customer(ada), ada, None).await;
    assert_eq!(refused.map(|_| ()), Err(CommandError::Domain(DomainError::CustomerNotFound { customer_id: ada })));
    assert_eq!(log.head(), head, "the refused checkout wrote nothing");
    log.verify().expect("the log verifies");
}

/// A checkout racing a forget either lands before it (and the forget cancels
/// the order it placed) or is refused: the forget rests on the cart stream's
/// version and the checkout on the customer stream's, so whichever is appended
/// second decides again. Never an unpaid order of a forgotten customer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkout_racing_a_forget_leaves_no_unpaid_order_behind() {
    const ROUNDS: usize = 20;
    let dir = temp_dir();
    let (log, service) = open(dir.path());
    create_product(&service, "mug-1", 1000, 1000).await;
    let mut placed = 0;
    for round in 0..ROUNDS {
        let customer_id = register(&service, &format!("racer{round}@example.com")).await;
        add_to_cart(&service, customer_id, "mug-1", 1).await;
        let barrier = Arc::new(Barrier::new(2));
        let checking_out = {
            let (service, barrier) = (service.clone(), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                service.checkout(&as_customer(customer_id), customer_id, None).await
            })
        };
        barrier.wait().await;
        let forgotten = service.forget_customer(&admin(), customer_id, None).await.expect("forgets");
        let checked_out = checking_out.await.expect("the task ends");
        match checked_out {
            Ok(outcome) => {
                let order_id = outcome.order_id().expect("places an order");
                assert_eq!(forgotten.cancelled_orders(), vec![order_id], "round {round}");
                assert!(matches!(service.order(order_id).expect("reads"), Some((Order::Cancelled(_), 2))));
                placed += 1;
            }
            Err(refused) => {
                assert_eq!(
                    refused,
                    CommandError::Domain(DomainError::CustomerNotFound { customer_id }),
                    "round {round}"
                );
                assert_eq!(forgotten.cancelled_orders(), vec![], "round {round}");
            }
        }
    }
    assert_eq!(stock_in_log(&log, "mug-1"), 1000, "every reservation was released ({placed} orders placed)");
    log.verify().expect("the log verifies");
}

#[tokio::test]
async fn a_load_after_many_commands_folds_only_the_events_it_has_not_seen() {
    let dir = temp_dir();
    let (log, writer) = open(dir.path());
    create_product(&writer, "mug-1", 1299, 0).await;
    let reader = CommandService::new(log.clone()).expect("builds");
    let restock = |service: &CommandService| {
        let service = service.clone();
        async move {
            service
                .restock(&admin(), sku("mug-1"), RestockQuantity::new(1).expect("literal"), None)
                .await
                .expect("restocks")
        }
    };
    for _ in 0..30 {
        restock(&writer).await;
    }
    let stats = writer.cache_stats();
    assert_eq!(stats.events_folded, 0, "the writer learned its own events from its appends: {stats:?}");

    let stock = |service: &CommandService| {
        service.product(&sku("mug-1")).expect("reads").expect("exists").0.info().expect("exists").stock
    };
    assert_eq!(stock(&reader), 30);
    assert_eq!(reader.cache_stats().events_folded, 31, "the first load folds the whole stream");
    assert_eq!(stock(&reader), 30);
    assert_eq!(reader.cache_stats().events_folded, 31, "a load at the same version folds nothing");
    assert_eq!(reader.cache_stats().hits, 1);

    restock(&writer).await;
    restock(&writer).await;
    assert_eq!(stock(&reader), 32);
    let stats = reader.cache_stats();
    assert_eq!((stats.events_folded, stats.partial_hits), (33, 1), "only the two new events: {stats:?}");
}

#[tokio::test]
async fn two_services_on_one_log_interleaving_writes_to_one_cart_stay_correct() {
    let dir = temp_dir();
    let (log, first) = open(dir.path());
    let second = CommandService::new(log.clone()).expect("builds");
    for sku_text in ["a-1", "b-1", "c-1"] {
        create_product(&first, sku_text, 100, 10).await;
    }
    let customer_id = new_customer();
    for round in 0..6 {
        let (service, other) = if round % 2 == 0 { (&first, &second) } else { (&second, &first) };
        add_to_cart(service, customer_id, ["a-1", "b-1", "c-1"][round % 3], 1).await;
        // Each sees the other's writes before writing again.
        assert_eq!(other.cart(customer_id).expect("reads").1, round as u64 + 1);
    }
    let removed = second
        .remove_cart_item(&as_customer(customer_id), customer_id, sku("b-1"), Some(6))
        .await
        .expect("removes at the current version");
    assert_eq!(removed.version(), 7);
    let stale = first.remove_cart_item(&as_customer(customer_id), customer_id, sku("a-1"), Some(6)).await;
    assert!(matches!(stale, Err(CommandError::PreconditionFailed { expected: 6, actual: 7, .. })), "{stale:?}");

    let fresh = CommandService::new(log.clone()).expect("builds");
    let expected = fresh.cart(customer_id).expect("reads");
    assert_eq!(first.cart(customer_id).expect("reads"), expected);
    assert_eq!(second.cart(customer_id).expect("reads"), expected);
    let lines: Vec<_> = expected.0.lines().iter().map(|(sku, quantity)| (sku.as_str(), quantity.get())).collect();
    assert_eq!(lines, [("a-1", 2), ("c-1", 2)]);

    let outcome = first.checkout(&as_customer(customer_id), customer_id, Some(7)).await.expect("checks out");
    assert_eq!(outcome.stream(), format!("cart-{customer_id}"));
    assert_eq!(outcome.version(), 8);
    assert_eq!(outcome.order_placed().map(|placed| placed.total_cents), Some(Cents::new(400 + 499)));
    assert_eq!(
        second.product(&sku("a-1")).expect("reads").map(|(product, _)| product.info().map(|i| i.stock)),
        Some(Some(8))
    );
}

#[tokio::test]
async fn creating_a_product_twice_is_refused_through_the_log() {
    let dir = temp_dir();
    let (log, first) = open(dir.path());
    let second = CommandService::new(log.clone()).expect("builds");
    create_product(&first, "mug-1", 1299, 1).await;
    let refused = second
        .create_product(
            &admin(),
            sku("mug-1"),
            ProductName::parse("Another mug").expect("literal"),
            PriceCents::new(1).expect("literal"),
            None,
            None,
        )
        .await;
    assert_eq!(refused.map(|_| ()), Err(CommandError::Domain(DomainError::ProductAlreadyExists { sku: sku("mug-1") })));
    assert_eq!(log.head(), 1);
}

#[tokio::test]
async fn outcomes_name_every_stream_written_in_append_order() {
    let dir = temp_dir();
    let (_log, service) = open(dir.path());
    create_product(&service, "mug-1", 1299, 5).await;
    let customer_id = new_customer();
    add_to_cart(&service, customer_id, "mug-1", 1).await;
    let outcome: CommandOutcome =
        service.checkout(&as_customer(customer_id), customer_id, None).await.expect("checks out");
    let order_id = outcome.order_id().expect("places an order");
    let streams: Vec<_> = outcome.streams.iter().map(|written| (written.stream.clone(), written.version)).collect();
    assert_eq!(
        streams,
        [(format!("order-{order_id}"), 1), ("product-mug-1".to_owned(), 2), (format!("cart-{customer_id}"), 2)]
    );
    assert_eq!(outcome.events.len(), 3);
    assert_eq!(outcome.last_position - outcome.first_position + 1, 3);
    assert_eq!(outcome.version_of("product-mug-1"), Some(2));
}

/// Retries end at `attempts_max` (here one attempt) or at `retry_deadline` (here
/// passed by the end of the first attempt, though 1,000 attempts remain): a
/// contended checkout then reports the contention and leaves its cart as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_contended_checkout_stops_at_its_attempts_or_its_deadline_and_writes_nothing_for_it() {
    let defaults = commands::Options::default;
    for options in [
        commands::Options { attempts_max: 1, ..defaults() },
        commands::Options { attempts_max: 1_000, retry_deadline: std::time::Duration::ZERO, ..defaults() },
    ] {
        let dir = temp_dir();
        let (log, service, results) = contended_checkouts(dir.path(), options).await;
        let (mut placed, mut contended) = (0, 0);
        for (customer_id, result) in results {
            match result {
                Ok(outcome) => {
                    assert_eq!(outcome.attempts, 1);
                    placed += 1;
                }
                Err(CommandError::Contention { stream, attempts }) => {
                    assert_eq!((stream.as_str(), attempts), ("product-mug-1", 1));
                    let (cart, _) = service.cart(customer_id).expect("reads");
                    assert!(!cart.is_empty(), "a contended checkout left the cart as it was");
                    contended += 1;
                }
                Err(other) => panic!("unexpected error: {other:?}"),
            }
        }
        assert!(contended > 0, "no checkout met a conflict; the test proves nothing");
        assert_eq!(placed + contended, 20);
        assert_eq!(stock_in_log(&log, "mug-1"), 100 - placed as u32);
    }
}

#[tokio::test]
async fn a_cache_smaller_than_the_streams_in_use_still_decides_on_the_current_state() {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    let options = commands::Options {
        cache_streams_max: std::num::NonZeroUsize::new(2).expect("two"),
        ..commands::Options::default()
    };
    let service = CommandService::with_options(log.clone(), options).expect("builds");
    let skus: Vec<String> = (0..8).map(|index| format!("p-{index}")).collect();
    for sku_text in &skus {
        create_product(&service, sku_text, 100, 0).await;
    }
    for round in 1..=3u32 {
        for sku_text in &skus {
            service
                .restock(&admin(), sku(sku_text), RestockQuantity::new(round).expect("literal"), None)
                .await
                .expect("restocks");
        }
    }
    for sku_text in &skus {
        let (product, version) = service.product(&sku(sku_text)).expect("reads").expect("exists");
        assert_eq!(product.info().expect("exists").stock, 1 + 2 + 3, "{sku_text}");
        assert_eq!(version, 4, "{sku_text}");
        assert_eq!(stock_in_log(&log, sku_text), 6);
    }
    let stats = service.cache_stats();
    assert!(stats.streams <= 2, "the cache holds at most two streams: {stats:?}");
    assert!(stats.misses >= 8, "evicted streams were folded again from the log: {stats:?}");
}
