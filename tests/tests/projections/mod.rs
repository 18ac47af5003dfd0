//! The read side (`projections`): given(events) / then(model) for every read
//! model on a real log, rebuilds against the live models, rebuilding while
//! serving, a SIGKILL in the middle of projecting, and waiting for a position.

mod crash;
pub(crate) mod random;
mod rebuild;
pub(crate) mod replay;
mod waiting;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use commands::codec::to_new_event;
use domain::{
    CartCheckedOut, CartItemAdded, CartItemRemoved, Cents, CustomerForgotten, CustomerId, CustomerName,
    CustomerRegistered, Email, Event, OrderCancelled, OrderId, OrderLine, OrderPaid, OrderPlaced, OrderShipped,
    OrderStatus, PasswordHash, PriceCents, ProductCreated, ProductDiscontinued, ProductName, ProductPriceChanged,
    ProductRestocked, Quantity, RestockQuantity, Sku, Stock, StockReleased, StockReserved, Totals,
};
use projections::{ProductStatus, Projections};
use store::{AppendRequest, EventLog, ExpectedVersion};
use tempfile::TempDir;
use uuid::Uuid;

pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// A log in a temp dir with the projections running over it.
pub(crate) struct Shop {
    pub log: EventLog,
    pub projections: Projections,
    _dir: TempDir,
}

/// Append `events`, one append each, and wait until every model has them.
async fn given(events: impl IntoIterator<Item = Event>) -> Shop {
    given_at(events.into_iter().map(|event| (None, event))).await
}

/// The same, each event recorded at its time when one is given.
async fn given_at(events: impl IntoIterator<Item = (Option<DateTime<Utc>>, Event)>) -> Shop {
    let dir = tests::temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    let projections = Projections::start(log.clone()).expect("starts");
    let shop = Shop { log, projections, _dir: dir };
    for (at, event) in events {
        shop.append(at, event).await;
    }
    shop.settle().await;
    shop
}

impl Shop {
    async fn append(&self, at: Option<DateTime<Utc>>, event: Event) {
        let new_event = to_new_event(&event).expect("encodes");
        let mut request =
            AppendRequest::single(event.stream().to_string(), ExpectedVersion::Any, vec![new_event], tests::metadata());
        request.recorded_at = at;
        match &event {
            Event::Customer(domain::CustomerEvent::Forgotten(forgotten)) => {
                self.log.forget(forgotten.customer_id.get(), request).await.expect("forgets");
            }
            _ => {
                self.log.append(request).await.expect("appends");
            }
        }
    }

    async fn then(&self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            self.append(None, event).await;
        }
        self.settle().await;
    }

    pub(crate) async fn settle(&self) {
        self.projections.wait_for(self.log.head(), WAIT).await.expect("the models catch up");
    }
}

fn sku(text: &str) -> Sku {
    Sku::parse(text).expect("literal sku")
}

fn price(cents: i64) -> PriceCents {
    PriceCents::new(cents).expect("literal price")
}

fn quantity(count: u32) -> Quantity {
    Quantity::new(count).expect("literal quantity")
}

fn customer(n: u128) -> CustomerId {
    CustomerId::new(Uuid::from_u128(n))
}

fn order(n: u128) -> OrderId {
    OrderId::new(Uuid::from_u128(0xabc0_0000 + n))
}

fn created(sku_text: &str, price_cents: i64, stock: u32) -> Event {
    ProductCreated {
        sku: sku(sku_text),
        name: ProductName::parse(&format!("Product {sku_text}")).expect("literal name"),
        price_cents: price(price_cents),
        initial_stock: Stock::new(stock).expect("literal stock"),
    }
    .into()
}

fn restocked(sku_text: &str, count: u32) -> Event {
    ProductRestocked { sku: sku(sku_text), quantity: RestockQuantity::new(count).expect("literal") }.into()
}

fn repriced(sku_text: &str, price_cents: i64) -> Event {
    ProductPriceChanged { sku: sku(sku_text), price_cents: price(price_cents) }.into()
}

fn discontinued(sku_text: &str) -> Event {
    ProductDiscontinued { sku: sku(sku_text) }.into()
}

fn added(customer_id: CustomerId, sku_text: &str, count: u32) -> Event {
    CartItemAdded { customer_id, sku: sku(sku_text), quantity: quantity(count) }.into()
}

fn removed(customer_id: CustomerId, sku_text: &str) -> Event {
    CartItemRemoved { customer_id, sku: sku(sku_text) }.into()
}

fn registered(customer_id: CustomerId) -> Event {
    CustomerRegistered {
        customer_id,
        email: Email::parse("someone@example.com").expect("literal"),
        name: CustomerName::parse("Someone").expect("literal"),
        password_hash: PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".to_owned())
            .expect("literal hash"),
    }
    .into()
}

fn forgotten(customer_id: CustomerId) -> Event {
    CustomerForgotten { customer_id }.into()
}

/// A checkout as the domain writes it: `OrderPlaced`, a `StockReserved` per line
/// and `CartCheckedOut`. Lines are (sku, quantity, unit price).
fn checkout(order_id: OrderId, customer_id: CustomerId, lines: &[(&str, u32, i64)]) -> Vec<Event> {
    let lines: Vec<OrderLine> = lines
        .iter()
        .map(|(sku_text, count, price_cents)| OrderLine {
            sku: sku(sku_text),
            quantity: quantity(*count),
            unit_price_cents: price(*price_cents),
        })
        .collect();
    let totals = Totals::of_lines(lines.iter().map(|line| (line.quantity, line.unit_price_cents)));
    let reserved = lines
        .iter()
        .map(|line| Event::from(StockReserved { sku: line.sku.clone(), order_id, quantity: line.quantity }));
    let mut events = vec![Event::from(OrderPlaced {
        order_id,
        customer_id,
        lines: lines.clone(),
        subtotal_cents: totals.subtotal_cents,
        shipping_cents: totals.shipping_cents,
        total_cents: totals.total_cents,
    })];
    events.extend(reserved);
    events.push(CartCheckedOut { customer_id, order_id }.into());
    events
}

fn paid(order_id: OrderId, total_cents: i64) -> Event {
    OrderPaid { order_id, amount_cents: Cents::new(total_cents) }.into()
}

fn shipped(order_id: OrderId) -> Event {
    OrderShipped { order_id }.into()
}

/// A cancel as the domain writes it: `OrderCancelled` and a `StockReleased` per line.
fn cancelled(order_id: OrderId, lines: &[(&str, u32)]) -> Vec<Event> {
    let mut events = vec![Event::from(OrderCancelled { order_id })];
    events.extend(lines.iter().map(|(sku_text, count)| {
        Event::from(StockReleased { sku: sku(sku_text), order_id, quantity: quantity(*count) })
    }));
    events
}

fn day(text: &str) -> DateTime<Utc> {
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("literal date");
    Utc.from_utc_datetime(&date.and_hms_opt(12, 0, 0).expect("noon exists"))
}

/// (sku, on hand, reserved, available, status) of a product.
fn stock_of(shop: &Shop, sku_text: &str) -> (u32, u32, u32, ProductStatus) {
    let product = shop.projections.catalog().get(&sku(sku_text)).expect("queries").value.expect("the product exists");
    (product.on_hand, product.reserved, product.available, product.status)
}

// Catalog -----------------------------------------------------------------------------------

#[tokio::test]
async fn catalog_shows_a_created_product_with_its_price_stock_and_status() {
    let shop = given([created("mug", 1299, 7)]).await;
    let answer = shop.projections.catalog().get(&sku("mug")).expect("queries");
    let product = answer.value.expect("the product exists");
    assert_eq!(answer.position, 1);
    assert_eq!((product.name.as_str(), product.price_cents), ("Product mug", price(1299)));
    assert_eq!(
        (product.on_hand, product.reserved, product.available, product.status),
        (7, 0, 7, ProductStatus::Active)
    );
    assert_eq!(shop.projections.catalog().get(&sku("cup")).expect("queries").value, None);
}

#[tokio::test]
async fn catalog_follows_restocks_price_changes_and_discontinuing() {
    let shop = given([created("mug", 1299, 7), restocked("mug", 5), repriced("mug", 999), discontinued("mug")]).await;
    let product = shop.projections.catalog().get(&sku("mug")).expect("queries").value.expect("exists");
    assert_eq!(product.price_cents, price(999));
    assert_eq!((product.on_hand, product.available, product.status), (12, 12, ProductStatus::Discontinued));
}

#[tokio::test]
async fn catalog_reserves_at_checkout_releases_on_cancel_and_ships_reserved_units_out() {
    let shop = given([created("mug", 1000, 10), created("cup", 500, 4)]).await;
    shop.then(checkout(order(1), customer(1), &[("cup", 1, 500), ("mug", 3, 1000)])).await;
    assert_eq!(stock_of(&shop, "mug"), (10, 3, 7, ProductStatus::Active));
    assert_eq!(stock_of(&shop, "cup"), (4, 1, 3, ProductStatus::Active));

    shop.then(checkout(order(2), customer(2), &[("mug", 2, 1000)])).await;
    shop.then(cancelled(order(2), &[("mug", 2)])).await;
    assert_eq!(stock_of(&shop, "mug"), (10, 3, 7, ProductStatus::Active), "the cancel gave the units back");

    shop.then([paid(order(1), 3500), shipped(order(1))]).await;
    assert_eq!(stock_of(&shop, "mug"), (7, 0, 7, ProductStatus::Active), "shipping took the reserved units out");
    assert_eq!(stock_of(&shop, "cup"), (3, 0, 3, ProductStatus::Active));
}

#[tokio::test]
async fn catalog_pages_in_sku_order_with_the_last_sku_as_cursor() {
    let shop = given(["d", "a", "c", "e", "b"].map(|name| created(name, 100, 1))).await;
    let catalog = shop.projections.catalog();
    let first = catalog.page(None, 2).expect("queries").value;
    let skus = |page: &projections::Page<projections::ProductView, Sku>| {
        page.items.iter().map(|product| product.sku.as_str().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!((skus(&first), first.next.clone()), (vec!["a".to_owned(), "b".to_owned()], Some(sku("b"))));
    let second = catalog.page(first.next.as_ref(), 2).expect("queries").value;
    assert_eq!((skus(&second), second.next.clone()), (vec!["c".to_owned(), "d".to_owned()], Some(sku("d"))));
    let last = catalog.page(second.next.as_ref(), 2).expect("queries").value;
    assert_eq!((skus(&last), last.next), (vec!["e".to_owned()], None));
}

// Carts -------------------------------------------------------------------------------------

#[tokio::test]
async fn cart_sums_added_quantities_and_prices_lines_with_shipping_below_fifty() {
    let shop = given([created("mug", 1000, 10), created("cup", 250, 10)]).await;
    shop.then([added(customer(1), "mug", 1), added(customer(1), "cup", 2), added(customer(1), "mug", 2)]).await;
    let cart = shop.projections.carts().get(customer(1)).expect("queries").value;
    let lines: Vec<_> = cart.lines.iter().map(|line| (line.sku.as_str(), line.quantity.get())).collect();
    assert_eq!(lines, vec![("cup", 2), ("mug", 3)]);
    assert_eq!(
        (cart.subtotal_cents, cart.shipping_cents, cart.total_cents),
        (Cents::new(3500), Cents::new(499), Cents::new(3999))
    );
}

#[tokio::test]
async fn cart_totals_follow_the_current_price_and_ship_free_from_fifty() {
    let shop = given([created("mug", 1000, 10), added(customer(1), "mug", 5), repriced("mug", 1200)]).await;
    let cart = shop.projections.carts().get(customer(1)).expect("queries").value;
    assert_eq!(cart.lines[0].unit_price_cents, Some(price(1200)));
    assert_eq!(
        (cart.subtotal_cents, cart.shipping_cents, cart.total_cents),
        (Cents::new(6000), Cents::ZERO, Cents::new(6000))
    );
    // A discontinued line is shown, flagged, and left out of the totals: they are
    // what a checkout charges once it is removed (a checkout with it is refused).
    // So the cup alone is under fifty and pays shipping.
    shop.then([created("cup", 4999, 10), added(customer(1), "cup", 1), discontinued("mug")]).await;
    let cart = shop.projections.carts().get(customer(1)).expect("queries").value;
    let flags: Vec<(&str, bool)> = cart.lines.iter().map(|line| (line.sku.as_str(), line.discontinued)).collect();
    assert_eq!(flags, [("cup", false), ("mug", true)]);
    assert_eq!(cart.lines[1].line_total_cents, Cents::new(6000), "the line still shows what it would cost");
    assert_eq!(
        (cart.subtotal_cents, cart.shipping_cents, cart.total_cents),
        (Cents::new(4999), Cents::new(499), Cents::new(5498))
    );
}

#[tokio::test]
async fn cart_loses_a_removed_line_and_empties_at_checkout() {
    let shop = given([created("mug", 1000, 10), created("cup", 250, 10)]).await;
    shop.then([added(customer(1), "mug", 1), added(customer(1), "cup", 1), removed(customer(1), "mug")]).await;
    let cart = shop.projections.carts().get(customer(1)).expect("queries").value;
    assert_eq!(cart.lines.iter().map(|line| line.sku.as_str()).collect::<Vec<_>>(), vec!["cup"]);
    shop.then(checkout(order(1), customer(1), &[("cup", 1, 250)])).await;
    let cart = shop.projections.carts().get(customer(1)).expect("queries").value;
    assert!(cart.lines.is_empty());
    assert_eq!((cart.subtotal_cents, cart.shipping_cents, cart.total_cents), (Cents::ZERO, Cents::ZERO, Cents::ZERO));
}

#[tokio::test]
async fn a_forgotten_customers_cart_is_dropped_and_their_unreadable_registration_skipped() {
    let shop = given([created("mug", 1000, 10), registered(customer(1)), added(customer(1), "mug", 2)]).await;
    assert_eq!(shop.projections.carts().get(customer(1)).expect("queries").value.lines.len(), 1);
    shop.then([forgotten(customer(1))]).await;
    // The registration at position 2 now reads as forgotten (a `None` decode); the
    // models went past it and past the forgetting.
    let recorded = shop.log.read_all(2, 1).expect("reads");
    assert_eq!(commands::codec::decode(&recorded[0]).expect("decodes"), None);
    let answer = shop.projections.carts().get(customer(1)).expect("queries");
    assert_eq!((answer.position, answer.value.lines.len()), (4, 0));

    // A fresh rebuild reads the registration as forgotten from the start, and agrees.
    let before = shop.projections.carts().dump().expect("dumps").value;
    let generation = shop.projections.rebuild("carts").expect("rebuilds");
    shop.projections.carts().wait_for_generation(generation, WAIT).await.expect("switches");
    assert_eq!(shop.projections.carts().dump().expect("dumps").value, before);
}

// Orders ------------------------------------------------------------------------------------

#[tokio::test]
async fn an_order_goes_from_placed_to_paid_to_shipped_with_the_time_of_each_step() {
    let mut events: Vec<(Option<DateTime<Utc>>, Event)> = vec![(None, created("mug", 1000, 10))];
    events.extend(
        checkout(order(1), customer(1), &[("mug", 2, 1000)]).into_iter().map(|event| (Some(day("2030-01-01")), event)),
    );
    events.push((Some(day("2030-01-02")), paid(order(1), 2499)));
    let shop = given_at(events).await;
    let view = shop.projections.orders().get(order(1)).expect("queries").value.expect("exists");
    assert_eq!((view.status, view.customer_id, view.total_cents), (OrderStatus::Paid, customer(1), Cents::new(2499)));
    assert_eq!((view.subtotal_cents, view.shipping_cents), (Cents::new(2000), Cents::new(499)));
    assert_eq!((view.placed_at, view.paid_at, view.shipped_at), (day("2030-01-01"), Some(day("2030-01-02")), None));
    assert_eq!((view.lines.len(), view.placed_position), (1, 2));

    shop.then([shipped(order(1))]).await;
    let view = shop.projections.orders().get(order(1)).expect("queries").value.expect("exists");
    assert_eq!(view.status, OrderStatus::Shipped);
    assert!(view.shipped_at.is_some_and(|at| at >= day("2030-01-02")));
}

#[tokio::test]
async fn a_cancelled_order_keeps_its_lines_and_ignores_later_steps() {
    let shop = given([created("mug", 1000, 10)]).await;
    shop.then(checkout(order(1), customer(1), &[("mug", 1, 1000)])).await;
    shop.then(cancelled(order(1), &[("mug", 1)])).await;
    shop.then([shipped(order(1))]).await;
    let view = shop.projections.orders().get(order(1)).expect("queries").value.expect("exists");
    assert_eq!((view.status, view.lines.len()), (OrderStatus::Cancelled, 1));
    assert!(view.cancelled_at.is_some() && view.shipped_at.is_none());
    assert_eq!(shop.projections.orders().get(order(2)).expect("queries").value, None);
}

#[tokio::test]
async fn orders_list_newest_first_per_customer_and_for_all_with_a_cursor() {
    let shop = given([created("mug", 1000, 100)]).await;
    for (n, who) in [(1, 1), (2, 2), (3, 1), (4, 1), (5, 2)] {
        shop.then(checkout(order(n), customer(who), &[("mug", 1, 1000)])).await;
    }
    let orders = shop.projections.orders();
    let ids = |page: &projections::Page<projections::OrderView, u64>| {
        page.items.iter().map(|view| view.order_id).collect::<Vec<_>>()
    };
    let first = orders.page_for(customer(1), None, 2).expect("queries").value;
    assert_eq!(ids(&first), vec![order(4), order(3)]);
    let rest = orders.page_for(customer(1), first.next, 2).expect("queries").value;
    assert_eq!((ids(&rest), rest.next), (vec![order(1)], None));
    let all = orders.page_all(None, 10).expect("queries").value;
    assert_eq!((ids(&all), all.next), (vec![order(5), order(4), order(3), order(2), order(1)], None));
    let after_three = orders.page_all(Some(all.items[2].placed_position), 10).expect("queries").value;
    assert_eq!(ids(&after_three), vec![order(2), order(1)]);
}

// Dashboard ---------------------------------------------------------------------------------

#[tokio::test]
async fn dashboard_counts_revenue_of_paid_and_shipped_orders_but_not_cancelled_ones() {
    let mut events: Vec<(Option<DateTime<Utc>>, Event)> =
        vec![(None, created("mug", 1000, 50)), (None, created("cup", 6000, 50))];
    let on = |date: &str, list: Vec<Event>| list.into_iter().map(|event| (Some(day(date)), event)).collect::<Vec<_>>();
    events.extend(on("2030-03-01", checkout(order(1), customer(1), &[("mug", 2, 1000)]))); // 2499
    events.extend(on("2030-03-01", checkout(order(2), customer(2), &[("cup", 1, 6000)]))); // 6000
    events.extend(on("2030-03-01", checkout(order(3), customer(1), &[("mug", 1, 1000)]))); // 1499
    events.extend(on("2030-03-02", checkout(order(4), customer(3), &[("mug", 5, 1000)]))); // 5000
    events.extend(on("2030-03-02", vec![paid(order(1), 2499), paid(order(2), 6000), paid(order(4), 5000)]));
    events.extend(on("2030-03-03", vec![shipped(order(1))]));
    events.extend(on("2030-03-03", cancelled(order(2), &[("cup", 1)])));
    events.extend(on("2030-03-03", cancelled(order(3), &[("mug", 1)])));
    let shop = given_at(events).await;
    let sales = shop.projections.dashboard().sales().expect("queries").value;
    assert_eq!(sales.revenue_cents, Cents::new(2499 + 5000));
    let by_status = sales.orders_by_status;
    assert_eq!((by_status.placed, by_status.paid, by_status.shipped, by_status.cancelled), (0, 1, 1, 2));
    let by_day: Vec<_> =
        sales.by_day.iter().map(|day| (day.date.to_string(), day.orders, day.revenue_cents.get())).collect();
    assert_eq!(by_day, vec![("2030-03-01".to_owned(), 3, 0), ("2030-03-02".to_owned(), 1, 7499)]);
    let top: Vec<_> = sales.top_products.iter().map(|top| (top.sku.as_str(), top.units_sold)).collect();
    assert_eq!(top, vec![("mug", 7)], "the cancelled paid cup is not sold");
}

/// Top products: most units sold first, ties in sku order, at most `top` of
/// them (10 by default); units of a paid order cancelled later do not count.
#[tokio::test]
async fn dashboard_ranks_top_products_by_units_with_ties_in_sku_order_up_to_its_limit() {
    let skus: Vec<String> = (1..=12).map(|index| format!("p{index:02}")).collect();
    let mut events: Vec<Event> = skus.iter().map(|sku_text| created(sku_text, 100, 50)).collect();
    // p02: 7 units; p01 and p03: 5 each (a tie); p04..p12: 1 each; p12 also 3
    // more in a paid order cancelled later.
    let mut orders: Vec<(&str, u32)> = vec![("p02", 4), ("p02", 3), ("p03", 5), ("p01", 2), ("p01", 3)];
    orders.extend(skus[3..].iter().map(|sku_text| (sku_text.as_str(), 1)));
    for (index, (sku_text, count)) in orders.iter().enumerate() {
        let order_id = order(index as u128 + 1);
        events.extend(checkout(order_id, customer(1), &[(sku_text, *count, 100)]));
        events.push(paid(order_id, i64::from(*count) * 100 + 499));
    }
    let refunded = order(1_000);
    events.extend(checkout(refunded, customer(2), &[("p12", 3, 100)]));
    events.push(paid(refunded, 799));
    events.extend(cancelled(refunded, &[("p12", 3)]));
    let shop = given(events).await;

    let top = |query: projections::SalesQuery| -> Vec<(String, u64)> {
        let sales = shop.projections.dashboard().sales_with(query).expect("queries").value;
        sales.top_products.iter().map(|top| (top.sku.as_str().to_owned(), top.units_sold)).collect()
    };
    let mut expected: Vec<(String, u64)> = vec![("p02".into(), 7), ("p01".into(), 5), ("p03".into(), 5)];
    expected.extend(skus[3..10].iter().map(|sku_text| (sku_text.clone(), 1)));
    assert_eq!(top(projections::SalesQuery::default()), expected, "the first ten");
    assert_eq!(top(projections::SalesQuery { top: 3, ..Default::default() }), expected[..3].to_vec());
    let all = top(projections::SalesQuery { top: 20, ..Default::default() });
    assert_eq!(all.len(), 12);
    assert_eq!(all[11], ("p12".to_owned(), 1), "the cancelled order's units are taken back");
}

#[tokio::test]
async fn dashboard_lists_active_products_running_low_fewest_first() {
    let shop = given([
        created("plenty", 100, 50),
        created("few", 100, 3),
        created("none", 100, 0),
        created("gone", 100, 1),
        discontinued("gone"),
        created("soon", 100, 6),
    ])
    .await;
    shop.then(checkout(order(1), customer(1), &[("soon", 2, 100)])).await;
    let sales = shop.projections.dashboard().sales().expect("queries").value;
    let low: Vec<_> = sales.low_stock.iter().map(|low| (low.sku.as_str(), low.available)).collect();
    assert_eq!(low, vec![("none", 0), ("few", 3), ("soon", 4)]);
    shop.then([restocked("few", 10)]).await;
    let sales = shop.projections.dashboard().sales().expect("queries").value;
    assert_eq!(sales.low_stock.iter().map(|low| low.sku.as_str()).collect::<Vec<_>>(), vec!["none", "soon"]);
    assert!(sales.top_products.is_empty(), "nothing was paid for");
}

#[tokio::test]
async fn dashboard_low_stock_is_right_at_every_threshold_and_length_as_units_cross_buckets() {
    // Units at and around powers of two (the `a:` index's bucket edges), ties
    // (several sold out, several at 1: those buckets are read only as far as the
    // list goes), a discontinued product; then restocks and a checkout move some
    // across edges.
    let stocks = [0, 1, 2, 3, 4, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 1000, 1023, 1024, 0, 0, 1, 1];
    let sku_of = |index: usize| format!("s{index:02}");
    let mut events: Vec<Event> =
        stocks.iter().enumerate().map(|(index, units)| created(&sku_of(index), 100, *units)).collect();
    events.extend([created("gone", 100, 2), discontinued("gone")]);
    let shop = given(events).await;
    let moves = [(3, 1), (16, 1), (9, 7), (1, 30)]; // units 3 → 4, 1023 → 1024, 8 → 15, 1 → 31
    shop.then(moves.iter().map(|(index, count)| restocked(&sku_of(*index), *count))).await;
    shop.then(checkout(order(1), customer(1), &[(sku_of(8).as_str(), 1, 100), (sku_of(14).as_str(), 2, 100)])).await;
    let mut units: Vec<(String, u32)> =
        stocks.iter().enumerate().map(|(index, units)| (sku_of(index), *units)).collect();
    for (index, count) in moves {
        units[index].1 += count;
    }
    units[8].1 -= 1;
    units[14].1 -= 2;

    for below in [0, 1, 2, 3, 4, 5, 6, 8, 9, 15, 16, 17, 30, 31, 32, 33, 1024, 1025, u32::MAX] {
        for length in [0, 1, 3, 5, 100] {
            let query =
                projections::SalesQuery { low_stock_below: below, low_stock_len_max: length, ..Default::default() };
            let sales = shop.projections.dashboard().sales_with(query).expect("queries").value;
            let answered: Vec<_> = sales.low_stock.iter().map(|low| (low.sku.to_string(), low.available)).collect();
            let mut expected: Vec<_> = units.iter().filter(|(_, units)| *units < below).cloned().collect();
            expected.sort_by(|(sku, units), (other_sku, other_units)| (units, sku).cmp(&(other_units, other_sku)));
            expected.truncate(length);
            assert_eq!(answered, expected, "below {below}, at most {length}");
        }
    }
}

#[tokio::test]
async fn a_dashboard_in_the_older_format_is_emptied_at_start_and_built_again_the_other_models_kept() {
    let Shop { log, projections, _dir: dir } = given([created("few", 100, 3), created("plenty", 100, 50)]).await;
    projections.shutdown().await;
    // What a binary before the dashboard's format 2 leaves: no format recorded,
    // and `a:` entries by units (one the current format would never write).
    let meta = log.open_tree("projections").expect("the meta tree");
    meta.remove("dashboard.format").expect("removes");
    let dashboard_tree = log.open_tree("dashboard.g1").expect("the dashboard's tree");
    let stale = [b"a:".as_slice(), &3u32.to_be_bytes(), b"few"].concat();
    dashboard_tree.insert(&stale, b"".as_slice()).expect("inserts");

    // This test's runtime has one thread: the workers cannot run before the
    // first `await`, so the positions below are what the start left.
    let projections = Projections::start(log.clone()).expect("restarts");
    assert_eq!(projections.dashboard().position(), 0, "the dashboard is emptied");
    assert_eq!(dashboard_tree.get(&stale).expect("reads"), None, "the stale entry is gone");
    assert!(projections.dashboard().sales().expect("queries").value.low_stock.is_empty(), "it answers empty");
    assert_eq!(
        meta.get("dashboard.format").expect("reads"),
        None,
        "recorded only once rebuilt: a crash rebuilds again"
    );
    assert_eq!(projections.catalog().position(), log.head(), "the catalog, of the current format, is kept");
    let shop = Shop { log, projections, _dir: dir };
    shop.settle().await;
    assert_eq!(shop.projections.dashboard().generation(), 2, "rebuilt into a generation of its own");
    assert_eq!(meta.get("dashboard.format").expect("reads").as_deref(), Some(2u32.to_be_bytes().as_slice()));
    let sales = shop.projections.dashboard().sales().expect("queries").value;
    let low: Vec<_> = sales.low_stock.iter().map(|low| (low.sku.as_str(), low.available)).collect();
    assert_eq!(low, vec![("few", 3)]);
    // The live worker takes the rebuilt generation on.
    shop.then([restocked("few", 1)]).await;
    let sales = shop.projections.dashboard().sales().expect("queries").value;
    assert_eq!(sales.low_stock.iter().map(|low| low.available).collect::<Vec<_>>(), vec![4]);

    // Started again, nothing is emptied: the format is recorded.
    shop.projections.shutdown().await;
    let projections = Projections::start(shop.log.clone()).expect("restarts");
    assert_eq!(projections.dashboard().position(), shop.log.head());
    assert_eq!(projections.dashboard().generation(), 2);
    projections.shutdown().await;
}
