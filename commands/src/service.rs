//! [`CommandService`]: load → decide → append, retried on conflict.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use domain::{
    AddCartItem, Cart, CartEvent, Cents, Checkout, Customer, CustomerCommand, CustomerId, CustomerName, Email,
    EmailClaim, EmailKey, Event, ForgetCustomer, Order, OrderCommand, OrderId, Password, PriceCents, Product,
    ProductCommand, ProductName, Quantity, RegisterCustomer, RemoveCartItem, RestockQuantity, Sku, Stock, StreamId,
};
use store::{AppendRequest, AppendResult, EventLog, ExpectedVersion, Idempotency, StoreError, StreamAppend};
use tokio::time::Instant;
use uuid::Uuid;

use crate::cache::{Aggregate, CacheStats, Counters, StateCache};
use crate::codec::{self, DecodeError};
use crate::error::CommandError;
use crate::outcome::{CommandContext, CommandOutcome};
use crate::password::Hasher;

/// How many events a load reads from the log at a time.
const PAGE_LEN: usize = 512;

/// The name of the log secret that keys email hashes (DESIGN §5).
pub const EMAIL_KEY_SECRET: &str = "email-key";

/// The name of the log secret that keys the request hashes stored with
/// idempotency keys: a registration's hash covers its email and name, which
/// then cannot be tested against guesses (DESIGN §3.9) without the log's
/// secrets. Entries an earlier binary stored keep their plain hash (only a
/// repeat of the request could key them), and a forget leaves the keyed entry
/// of the registration: idempotency keys are never removed.
pub const REQUEST_KEY_SECRET: &str = "request-key";

/// How the service behaves; [`Options::default`] suits a server.
#[derive(Debug, Clone)]
pub struct Options {
    /// The most streams whose folded state is kept in memory.
    pub cache_streams_max: NonZeroUsize,
    /// The most attempts of one command under contention (the first included).
    /// No limit by default: `retry_deadline` is the one a server sets
    /// (`command_retry_ms`). A cap of a few dozen attempts gave up within a
    /// few hundred milliseconds while a handful of restocks of one product
    /// raced, each attempt won by one of them.
    pub attempts_max: u32,
    /// How long a command keeps retrying under contention, from its start.
    pub retry_deadline: Duration,
    /// The longest pause between two attempts (each pause is random, below a
    /// bound that doubles per attempt up to this).
    pub backoff_max: Duration,
    /// The most password hashes computed at once.
    pub hashes_parallel_max: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cache_streams_max: NonZeroUsize::new(10_000).expect("10,000 is not zero"),
            attempts_max: u32::MAX,
            retry_deadline: Duration::from_secs(3),
            backoff_max: Duration::from_millis(10),
            hashes_parallel_max: std::thread::available_parallelism().map_or(2, NonZeroUsize::get),
        }
    }
}

/// The write side of shoplog. Cheap to clone: clones share the log, the cache and
/// the hasher.
#[derive(Debug, Clone)]
pub struct CommandService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    log: EventLog,
    cache: StateCache,
    hasher: Hasher,
    email_secret: Secret,
    request_secret: Secret,
    options: Options,
}

/// The key of email hashes; `Debug` never shows it.
struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The name of `email`'s claim stream key under `secret` (the log's `email-key`
/// secret): the keyed blake3 hash of the lowercased address, in hex. Import checks
/// an export's secret with it.
pub fn email_key(secret: &[u8; 32], email: &Email) -> EmailKey {
    key_of(secret, &email.normalized())
}

/// The keys `email`'s claim may have had before addresses were lowercased letter
/// by letter ([`Email::normalized_before_folding`]; none for most addresses):
/// a claim made then is found under one of them.
pub fn email_keys_before_folding(secret: &[u8; 32], email: &Email) -> Vec<EmailKey> {
    email.normalized_before_folding().iter().map(|before| key_of(secret, before)).collect()
}

fn key_of(secret: &[u8; 32], normalized: &str) -> EmailKey {
    let hash = blake3::keyed_hash(secret, normalized.as_bytes());
    EmailKey::parse(hash.to_hex().as_str())
        .expect("a blake3 hash in hex is 64 lowercase hex characters, which is an email key's rule")
}

/// A state as loaded, with the stream version it is folded to (0: no events).
struct Loaded<A> {
    state: Arc<A>,
    version: u64,
}

/// What one attempt decided: the events, and the version of each stream it read
/// (each stream written is appended with that version expected).
struct Decision {
    events: Vec<Event>,
    read: BTreeMap<String, ExpectedVersion>,
    /// Streams the decision rests on but does not write: appended as conditions
    /// (no events, the version read expected), so that a write to one racing
    /// the command makes it decide again.
    conditions: BTreeMap<String, ExpectedVersion>,
    /// Crypto-shred this subject in the same append.
    forget: Option<Uuid>,
}

impl Decision {
    fn new(events: Vec<Event>) -> Self {
        Decision { events, read: BTreeMap::new(), conditions: BTreeMap::new(), forget: None }
    }

    /// The decision rests on `stream` at `version` without writing it.
    fn condition(mut self, stream: &str, version: u64) -> Self {
        self.conditions.insert(stream.to_owned(), exactly(version));
        self
    }

    /// The decision read `stream` at `version`: append it expecting exactly that.
    fn read<A>(mut self, stream: &str, loaded: &Loaded<A>) -> Self {
        self.read.insert(stream.to_owned(), exactly(loaded.version));
        self
    }

    /// The decision does not depend on `stream`'s state: append it with `Any`.
    fn blind(mut self, stream: &str) -> Self {
        self.read.insert(stream.to_owned(), ExpectedVersion::Any);
        self
    }
}

/// The expected version of a stream read at `version` (0: it had no events).
fn exactly(version: u64) -> ExpectedVersion {
    match version {
        0 => ExpectedVersion::NoStream,
        version => ExpectedVersion::Exact(version),
    }
}

/// The events of one stream within an append.
struct Group {
    stream: String,
    expected: ExpectedVersion,
    events: Vec<Event>,
}

impl CommandService {
    /// A service over `log` with default options. Reads the email-key secret and
    /// computes one password hash (the dummy for unknown logins) on this thread.
    pub fn new(log: EventLog) -> Result<Self, CommandError> {
        Self::with_options(log, Options::default())
    }

    pub fn with_options(log: EventLog, options: Options) -> Result<Self, CommandError> {
        let email_secret = Secret(log.secret(EMAIL_KEY_SECRET)?);
        let request_secret = Secret(log.secret(REQUEST_KEY_SECRET)?);
        let hasher = Hasher::new(options.hashes_parallel_max)?;
        let cache = StateCache::new(options.cache_streams_max);
        Ok(CommandService { inner: Arc::new(Inner { log, cache, hasher, email_secret, request_secret, options }) })
    }

    /// The log the service writes to.
    pub fn log(&self) -> &EventLog {
        &self.inner.log
    }

    /// What the state cache did so far.
    pub fn cache_stats(&self) -> CacheStats {
        self.inner.cache.stats()
    }

    /// The name of `email`'s claim stream key: the keyed blake3 hash of the
    /// lowercased address, in hex. No address ever sits in a stream name.
    pub fn email_key(&self, email: &Email) -> EmailKey {
        email_key(&self.inner.email_secret.0, email)
    }

    /// The key of the claim stream that holds `email` for `holder` (any
    /// customer, when `None`): its key, unless only a claim made before
    /// addresses were lowercased letter by letter ([`email_keys_before_folding`])
    /// holds it so.
    fn held_email_key(&self, email: &Email, holder: Option<CustomerId>) -> Result<EmailKey, CommandError> {
        let key = self.email_key(email);
        let holds = |key: &EmailKey| -> Result<bool, CommandError> {
            let claimed_by = self.load::<EmailClaim>(&StreamId::Email(key.clone()).to_string())?.state.claimed_by();
            Ok(claimed_by.is_some() && (holder.is_none() || claimed_by == holder))
        };
        if holds(&key)? {
            return Ok(key);
        }
        for before in email_keys_before_folding(&self.inner.email_secret.0, email) {
            if holds(&before)? {
                return Ok(before);
            }
        }
        Ok(key)
    }

    // Products --------------------------------------------------------------------------------

    /// Create a product (`product-<sku>` must not exist: appended with `NoStream`).
    pub async fn create_product(
        &self,
        ctx: &CommandContext,
        sku: Sku,
        name: ProductName,
        price_cents: PriceCents,
        initial_stock: Option<Stock>,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        let initial_stock = initial_stock.unwrap_or(Stock::ZERO);
        self.product_command(ctx, ProductCommand::Create { sku, name, price_cents, initial_stock }, expected).await
    }

    pub async fn change_price(
        &self,
        ctx: &CommandContext,
        sku: Sku,
        price_cents: PriceCents,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        self.product_command(ctx, ProductCommand::ChangePrice { sku, price_cents }, expected).await
    }

    pub async fn restock(
        &self,
        ctx: &CommandContext,
        sku: Sku,
        quantity: RestockQuantity,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        self.product_command(ctx, ProductCommand::Restock { sku, quantity }, expected).await
    }

    pub async fn discontinue(
        &self,
        ctx: &CommandContext,
        sku: Sku,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        self.product_command(ctx, ProductCommand::Discontinue { sku }, expected).await
    }

    async fn product_command(
        &self,
        ctx: &CommandContext,
        command: ProductCommand,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        let stream = StreamId::Product(command.sku().clone()).to_string();
        self.execute(ctx, product_command_name(&command), &stream, expected, |service| {
            let product = service.load::<Product>(&stream)?;
            let events = domain::product::decide(&product.state, &command)?;
            Ok(Decision::new(events).read(&stream, &product))
        })
        .await
    }

    // Customers -------------------------------------------------------------------------------

    /// Register a customer: `CustomerRegistered` on a new `customer-<uuid>` and
    /// `EmailClaimed` on the email's claim stream, in one append with the claim's
    /// expected version, so of two racing registrations of one address (in any
    /// case) exactly one wins. The main stream is the customer's; the new id is
    /// [`CommandOutcome::customer_id`].
    pub async fn register_customer(
        &self,
        ctx: &CommandContext,
        email: Email,
        name: CustomerName,
        password: Password,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        let customer_id = CustomerId::new(Uuid::now_v7());
        let email_key = self.email_key(&email);
        let customer_stream = StreamId::Customer(customer_id).to_string();
        let email_stream = StreamId::Email(email_key.clone()).to_string();
        // A taken address is refused without hashing the password: a hash is
        // tens of milliseconds of a core, and registrations of a taken address
        // sent over and over would otherwise hold up every login's
        // verification, which waits for the same few cores.
        let held = StreamId::Email(self.held_email_key(&email, None)?).to_string();
        let taken = self.registered_holder(&held)?.is_some();
        let password_hash = match taken {
            true => self.inner.hasher.placeholder()?,
            false => self.inner.hasher.hash(password).await?,
        };
        let command =
            CustomerCommand::Register(RegisterCustomer { customer_id, email, email_key, name, password_hash });
        let outcome = self
            .execute(ctx, "register customer", &customer_stream, expected, |service| {
                let customer = service.load::<Customer>(&customer_stream)?;
                let claim = service.load::<EmailClaim>(&email_stream)?;
                let decision = match claim.state.claimed_by() {
                    None => {
                        let events =
                            domain::customer::decide(&customer.state, &claim.state, &Customer::default(), &command)?;
                        Decision::new(events).read(&customer_stream, &customer).read(&email_stream, &claim)
                    }
                    Some(holder_id) => {
                        // Whether the address's holder was forgotten (its claim then holds nothing).
                        let holder_stream = StreamId::Customer(holder_id).to_string();
                        let holder = service.load::<Customer>(&holder_stream)?;
                        let events = domain::customer::decide(&customer.state, &claim.state, &holder.state, &command)?;
                        Decision::new(events)
                            .read(&customer_stream, &customer)
                            .read(&email_stream, &claim)
                            .read(&holder_stream, &holder)
                    }
                };
                if taken {
                    // Freed since it was found taken (its holder forgotten): the
                    // request is answered as of then, and the placeholder is never
                    // stored as anyone's password.
                    return Err(domain::DomainError::EmailTaken.into());
                }
                Ok(decision)
            })
            .await?;
        // A repeat of a registration whose customer was forgotten since: the
        // first answer would name an erased customer, to whoever holds the key.
        // Answered as a key used for another request is, word for word, so that
        // the answer does not tell a right guess of their email and name from a
        // wrong one.
        if let Some(customer_id) = outcome.customer_id().filter(|_| outcome.duplicate)
            && self.customer_as_recorded(customer_id)?.1
        {
            return Err(CommandError::IdempotencyKeyReused);
        }
        Ok(outcome)
    }

    /// The customer whose email and password these are, or
    /// [`CommandError::InvalidCredentials`]. An unknown email costs one hash
    /// verification too, so the answer's timing does not tell which emails exist.
    #[tracing::instrument(skip_all)]
    pub async fn login(&self, email: &Email, password: &Password) -> Result<CustomerId, CommandError> {
        let email_stream = StreamId::Email(self.held_email_key(email, None)?).to_string();
        let (customer_id, stored) = self.registered_holder(&email_stream)?.unzip();
        match (customer_id, self.inner.hasher.verify(password.clone(), stored).await?) {
            (Some(customer_id), true) => Ok(customer_id),
            _ => Err(CommandError::InvalidCredentials),
        }
    }

    /// The registered customer who holds the email whose claim stream this is,
    /// with their password hash; `None` when no one does (never claimed, or
    /// released, or its holder forgotten).
    fn registered_holder(
        &self,
        email_stream: &str,
    ) -> Result<Option<(CustomerId, domain::PasswordHash)>, CommandError> {
        let claim = self.load::<EmailClaim>(email_stream)?;
        let Some(customer_id) = claim.state.claimed_by() else {
            return Ok(None);
        };
        Ok(match &*self.load::<Customer>(&StreamId::Customer(customer_id).to_string())?.state {
            Customer::Registered(profile) => Some((customer_id, profile.password_hash.clone())),
            Customer::Unregistered | Customer::Forgotten { .. } => None,
        })
    }

    /// How much password work was asked for since the service started.
    pub fn password_stats(&self) -> crate::PasswordStats {
        self.inner.hasher.stats()
    }

    /// Crypto-shred a customer (DESIGN §3.9): `CustomerForgotten`, and
    /// `EmailReleased` when the customer still holds the claim, appended through
    /// [`EventLog::forget`], which deletes the customer's key in the same
    /// transaction. The claim stream's key comes from the email in the customer's
    /// state, read before the key is gone. The address can be registered again.
    ///
    /// In the same append, each of the customer's orders that is still unpaid
    /// is cancelled and its stock released ([`domain::order::cancel_unpaid`]).
    /// Their orders are found in their cart stream (`CartCheckedOut`), which the
    /// append has as a condition: a checkout appended meanwhile makes the forget
    /// decide again, and see that order too. A checkout decided before the
    /// forget and appended after it is refused the other way round (see
    /// [`CommandService::checkout`]).
    pub async fn forget_customer(
        &self,
        ctx: &CommandContext,
        customer_id: CustomerId,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        let customer_stream = StreamId::Customer(customer_id).to_string();
        self.execute(ctx, "forget customer", &customer_stream, expected, |service| {
            let customer = service.load::<Customer>(&customer_stream)?;
            let (mut events, mut decision) = match &*customer.state {
                Customer::Registered(profile) => {
                    let email_key = service.held_email_key(&profile.email, Some(customer_id))?;
                    let email_stream = StreamId::Email(email_key.clone()).to_string();
                    let claim = service.load::<EmailClaim>(&email_stream)?;
                    let command = CustomerCommand::Forget(ForgetCustomer { customer_id, email_key });
                    let events =
                        domain::customer::decide(&customer.state, &claim.state, &Customer::default(), &command)?;
                    let mut decision =
                        Decision::new(Vec::new()).read(&customer_stream, &customer).read(&email_stream, &claim);
                    // Its key goes with the batch.
                    decision.forget = Some(customer_id.get());
                    (events, decision)
                }
                // Unknown, forgotten, or forgotten only by a lost key (a log
                // restored to a position before a forget): that last one's
                // forgetting is completed, the key being gone already.
                state => {
                    let (_, forgotten) = service.customer_as_recorded(customer_id)?;
                    let events = domain::customer::complete_forget(state, forgotten, customer_id)?;
                    (events, Decision::new(Vec::new()).read(&customer_stream, &customer))
                }
            };
            let cart_stream = StreamId::Cart(customer_id).to_string();
            let (order_ids, cart_version) = service.orders_checked_out(&cart_stream)?;
            decision = decision.condition(&cart_stream, cart_version);
            let mut orders = Vec::with_capacity(order_ids.len());
            for order_id in order_ids {
                let order_stream = StreamId::Order(order_id).to_string();
                let order = service.load::<Order>(&order_stream)?;
                decision = decision.read(&order_stream, &order);
                orders.push(order);
            }
            let cancelled = domain::order::cancel_unpaid(orders.iter().map(|order| &*order.state));
            for event in &cancelled {
                if let Event::Product(_) = event {
                    // A release is right whatever the product's state (see `cancel_order`).
                    decision = decision.blind(&event.stream().to_string());
                }
            }
            events.extend(cancelled);
            decision.events = events;
            Ok(decision)
        })
        .await
    }

    /// Complete the forgetting of every customer the log reads as forgotten (their
    /// key gone) whose stream records no `CustomerForgotten`: what a restore to a
    /// position before a forget holds (the backup, made after it, holds no key).
    /// Each is [`Self::forget_customer`]'s: the forgetting recorded and their unpaid
    /// orders cancelled, so that nobody's stock stays held and a replica, which
    /// knows a forgotten customer only by that record, refuses their token. The
    /// customers so forgotten, each with the outcome.
    pub async fn complete_lost_forgettings(
        &self,
        ctx: &CommandContext,
    ) -> Result<Vec<(CustomerId, CommandOutcome)>, CommandError> {
        let mut unreadable = std::collections::BTreeSet::new();
        let mut from = 1;
        loop {
            let page = self.inner.log.read_all(from, PAGE_LEN)?;
            let Some(last) = page.last() else { break };
            from = last.position + 1;
            let registrations = page
                .iter()
                .filter(|event| event.event_type == "CustomerRegistered" && event.payload == store::Payload::Forgotten);
            unreadable.extend(registrations.filter_map(|event| event.subject));
        }
        let mut completed = Vec::new();
        for subject in unreadable {
            let customer_id = CustomerId::new(subject);
            match self.forget_customer(ctx, customer_id, None).await {
                Ok(outcome) => completed.push((customer_id, outcome)),
                Err(CommandError::Domain(domain::DomainError::CustomerAlreadyForgotten { .. })) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(completed)
    }

    // Carts -----------------------------------------------------------------------------------

    /// Add `quantity` of `sku` to the customer's cart (the product must be active;
    /// the product's stream is read, not written). Like every cart command, it
    /// holds on condition of the customer stream ([`CommandService::still_shopping`]).
    /// Not of the product's: a restock or another customer's checkout would make
    /// every add decide again. An add decided before a discontinue and appended
    /// after it leaves the cart as an add followed by the discontinue would, and
    /// checkout refuses the line.
    pub async fn add_cart_item(
        &self,
        ctx: &CommandContext,
        customer_id: CustomerId,
        sku: Sku,
        quantity: Quantity,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        let cart_stream = StreamId::Cart(customer_id).to_string();
        let product_stream = StreamId::Product(sku.clone()).to_string();
        let command = AddCartItem { customer_id, sku, quantity };
        self.execute(ctx, "add cart item", &cart_stream, expected, |service| {
            let (customer_stream, customer_version) = service.still_shopping(customer_id)?;
            let cart = service.load::<Cart>(&cart_stream)?;
            let product = service.load::<Product>(&product_stream)?;
            let events = domain::cart::add_item(&cart.state, &product.state, &command)?;
            Ok(Decision::new(events).read(&cart_stream, &cart).condition(&customer_stream, customer_version))
        })
        .await
    }

    pub async fn remove_cart_item(
        &self,
        ctx: &CommandContext,
        customer_id: CustomerId,
        sku: Sku,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        let cart_stream = StreamId::Cart(customer_id).to_string();
        let command = RemoveCartItem { customer_id, sku };
        self.execute(ctx, "remove cart item", &cart_stream, expected, |service| {
            let (customer_stream, customer_version) = service.still_shopping(customer_id)?;
            let cart = service.load::<Cart>(&cart_stream)?;
            let events = domain::cart::remove_item(&cart.state, &command)?;
            Ok(Decision::new(events).read(&cart_stream, &cart).condition(&customer_stream, customer_version))
        })
        .await
    }

    /// Turn the customer's cart into an order: `OrderPlaced` on a new
    /// `order-<uuid>` (`NoStream`), `StockReserved` on every product (each at the
    /// version its stock was read), `CartCheckedOut` on the cart, in one append. The
    /// main stream (for `expected`) is the cart; the order is
    /// [`CommandOutcome::order_placed`].
    pub async fn checkout(
        &self,
        ctx: &CommandContext,
        customer_id: CustomerId,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        let cart_stream = StreamId::Cart(customer_id).to_string();
        let command = Checkout { order_id: OrderId::new(Uuid::now_v7()), customer_id };
        self.execute(ctx, "checkout", &cart_stream, expected, |service| {
            let (customer_stream, customer_version) = service.still_shopping(customer_id)?;
            let cart = service.load::<Cart>(&cart_stream)?;
            let mut products = BTreeMap::new();
            let mut decision =
                Decision::new(Vec::new()).read(&cart_stream, &cart).condition(&customer_stream, customer_version);
            for sku in cart.state.lines().keys() {
                let stream = StreamId::Product(sku.clone()).to_string();
                let product = service.load::<Product>(&stream)?;
                decision = decision.read(&stream, &product);
                products.insert(sku.clone(), Product::clone(&product.state));
            }
            // The order stream is new: not read, so appended with `NoStream`.
            decision.events = domain::checkout::decide(&cart.state, &products, &command)?;
            Ok(decision)
        })
        .await
    }

    /// The customer's stream and its version, unless they were forgotten
    /// ([`domain::checkout::check_customer`]). Their token was checked before
    /// the command; a forget is what can come after that, so a cart command holds
    /// on condition of that version, and a forget appended meanwhile makes it
    /// decide again (and be refused), never leaving a cart written after it.
    fn still_shopping(&self, customer_id: CustomerId) -> Result<(String, u64), CommandError> {
        let stream = StreamId::Customer(customer_id).to_string();
        let customer = self.load::<Customer>(&stream)?;
        domain::checkout::check_customer(&customer.state, customer_id)?;
        Ok((stream, customer.version))
    }

    /// The orders placed from a cart stream (its `CartCheckedOut` events, in
    /// order), and the stream's version at the last event read.
    fn orders_checked_out(&self, cart_stream: &str) -> Result<(Vec<OrderId>, u64), CommandError> {
        let (mut orders, mut version) = (Vec::new(), 0);
        loop {
            let page = self.inner.log.read_stream(cart_stream, version + 1, PAGE_LEN)?;
            let Some(last) = page.last() else { return Ok((orders, version)) };
            version = last.version;
            for recorded in &page {
                if let Some(Event::Cart(CartEvent::CheckedOut(checked_out))) = codec::decode(recorded)? {
                    orders.push(checked_out.order_id);
                }
            }
        }
    }

    // Orders ----------------------------------------------------------------------------------

    /// Pay an order in full; only its customer may.
    pub async fn pay_order(
        &self,
        ctx: &CommandContext,
        customer_id: CustomerId,
        order_id: OrderId,
        amount_cents: Cents,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        self.order_command(ctx, Some(customer_id), OrderCommand::Pay { order_id, amount_cents }, expected).await
    }

    /// Cancel an order (placed or paid); only its customer may. Its stock comes
    /// back: `StockReleased` on every product, in the same append. The product
    /// streams are appended with `Any`: a release is right whatever the product's
    /// state, and the order stream's expected version already stops a second
    /// cancel, so product traffic never makes a cancel retry.
    pub async fn cancel_order(
        &self,
        ctx: &CommandContext,
        customer_id: CustomerId,
        order_id: OrderId,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        self.order_command(ctx, Some(customer_id), OrderCommand::Cancel { order_id }, expected).await
    }

    /// Ship an order: an operator's action, so no owner check.
    pub async fn ship_order(
        &self,
        ctx: &CommandContext,
        order_id: OrderId,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        self.order_command(ctx, None, OrderCommand::Ship { order_id }, expected).await
    }

    async fn order_command(
        &self,
        ctx: &CommandContext,
        owner: Option<CustomerId>,
        command: OrderCommand,
        expected: Option<u64>,
    ) -> Result<CommandOutcome, CommandError> {
        let order_id = command.order_id();
        let order_stream = StreamId::Order(order_id).to_string();
        let name = match command {
            OrderCommand::Pay { .. } => "pay order",
            OrderCommand::Cancel { .. } => "cancel order",
            OrderCommand::Ship { .. } => "ship order",
        };
        self.execute(ctx, name, &order_stream, expected, |service| {
            let order = service.load::<Order>(&order_stream)?;
            if let (Some(owner), Some(info)) = (owner, order.state.info())
                && info.customer_id != owner
            {
                return Err(CommandError::NotYours { order_id });
            }
            let events = domain::order::decide(&order.state, &command)?;
            let mut decision = Decision::new(Vec::new()).read(&order_stream, &order);
            for event in &events {
                if let Event::Product(_) = event {
                    decision = decision.blind(&event.stream().to_string());
                }
            }
            decision.events = events;
            Ok(decision)
        })
        .await
    }

    // Reads -----------------------------------------------------------------------------------

    /// A product's state and its stream's version, if it exists. Served from the
    /// cache (folding only newer events), like every read here; each touches sled
    /// on the calling thread.
    pub fn product(&self, sku: &Sku) -> Result<Option<(Product, u64)>, CommandError> {
        let loaded = self.load::<Product>(&StreamId::Product(sku.clone()).to_string())?;
        Ok((loaded.version > 0).then(|| (Product::clone(&loaded.state), loaded.version)))
    }

    /// Whether the customer is registered: neither forgotten nor unknown to the
    /// log (what authenticating their token asks on every request: the state is
    /// not copied).
    pub fn customer_registered(&self, customer_id: CustomerId) -> Result<bool, CommandError> {
        let loaded = self.load::<Customer>(&StreamId::Customer(customer_id).to_string())?;
        Ok(matches!(*loaded.state, Customer::Registered(_)))
    }

    /// Whether the customer is registered by what the log recorded (a
    /// `CustomerRegistered` and no `CustomerForgotten` on their stream), not by
    /// reading it: a read replica holds no customer's key, so every
    /// registration reads there as forgotten (see `codec::decode_for_fold`),
    /// while the event types still tell a customer from a forgotten one. (A
    /// restore to a position before a forget records the forgetting again, see
    /// [`Self::complete_lost_forgettings`]; a log restored so by an earlier
    /// version holds none until that customer is forgotten again.)
    pub fn customer_registered_as_recorded(&self, customer_id: CustomerId) -> Result<bool, CommandError> {
        let (registered, forgotten) = self.customer_as_recorded(customer_id)?;
        Ok(registered && !forgotten)
    }

    /// Whether the customer's stream records their registration, and their forgetting.
    fn customer_as_recorded(&self, customer_id: CustomerId) -> Result<(bool, bool), CommandError> {
        // A customer's stream holds their registration and, at most, their forgetting.
        let events = self.inner.log.read_stream(&StreamId::Customer(customer_id).to_string(), 1, PAGE_LEN)?;
        let recorded = |event_type: &str| events.iter().any(|event| event.event_type == event_type);
        Ok((recorded("CustomerRegistered"), recorded("CustomerForgotten")))
    }

    /// A customer's state (registered or forgotten) and version, if any.
    pub fn customer(&self, customer_id: CustomerId) -> Result<Option<(Customer, u64)>, CommandError> {
        let loaded = self.load::<Customer>(&StreamId::Customer(customer_id).to_string())?;
        Ok((loaded.version > 0).then(|| (Customer::clone(&loaded.state), loaded.version)))
    }

    /// A customer's cart and its version; a customer who never added anything has
    /// an empty cart at version 0.
    pub fn cart(&self, customer_id: CustomerId) -> Result<(Cart, u64), CommandError> {
        let loaded = self.load::<Cart>(&StreamId::Cart(customer_id).to_string())?;
        Ok((Cart::clone(&loaded.state), loaded.version))
    }

    /// An order's state and version, if it exists (whoever owns it: the caller
    /// checks `info().customer_id`).
    pub fn order(&self, order_id: OrderId) -> Result<Option<(Order, u64)>, CommandError> {
        let loaded = self.load::<Order>(&StreamId::Order(order_id).to_string())?;
        Ok((loaded.version > 0).then(|| (Order::clone(&loaded.state), loaded.version)))
    }

    // The shell -------------------------------------------------------------------------------

    /// The stream's state at its durable version: the cached state if it is at that
    /// version, else the cached state with the newer events folded in, else a fold
    /// from the first event; read in pages of [`PAGE_LEN`].
    fn load<A: Aggregate>(&self, stream: &str) -> Result<Loaded<A>, CommandError> {
        let cache = &self.inner.cache;
        let counters = &cache.counters;
        let durable = self.inner.log.stream_version(stream)?;
        let cached = cache.get(stream).and_then(|(version, cached)| Some((version, A::from_cached(&cached)?)));
        let (mut version, state) = match cached {
            Some((version, state)) if version == durable => {
                Counters::add(&counters.hits, 1);
                return Ok(Loaded { state, version });
            }
            Some((version, state)) if version < durable => {
                Counters::add(&counters.partial_hits, 1);
                (version, state)
            }
            _ => {
                if durable == 0 {
                    // Nothing to fold, and nothing worth a cache entry.
                    return Ok(Loaded { state: Arc::new(A::default()), version: 0 });
                }
                Counters::add(&counters.misses, 1);
                (0, Arc::new(A::default()))
            }
        };
        let mut state = Arc::unwrap_or_clone(state);
        while version < durable {
            let page = self.inner.log.read_stream(stream, version + 1, PAGE_LEN)?;
            if page.is_empty() {
                return Err(StoreError::Corrupt {
                    position: 0,
                    reason: format!("stream {stream} is at version {durable} but has no event {}", version + 1),
                }
                .into());
            }
            for recorded in &page {
                if recorded.version != version + 1 {
                    return Err(StoreError::Corrupt {
                        position: recorded.position,
                        reason: format!("stream {stream} jumps from version {version} to {}", recorded.version),
                    }
                    .into());
                }
                if let Some(event) = codec::decode_for_fold(recorded)? {
                    state = state.evolve_with(&event).map_err(|_| DecodeError {
                        position: recorded.position,
                        event_type: recorded.event_type.clone(),
                        schema_version: recorded.schema_version,
                        reason: format!("the event does not belong on stream {stream}"),
                    })?;
                }
                version = recorded.version;
            }
            Counters::add(&counters.events_folded, page.len() as u64);
        }
        let state = Arc::new(state);
        cache.put(stream, version, A::into_cached(Arc::clone(&state)));
        Ok(Loaded { state, version })
    }

    /// Decide and append until it works, a refusal comes back, or the retries run out.
    ///
    /// `main` is the stream `expected` refers to. With `expected` given, the main
    /// stream is appended with exactly that version and a mismatch is
    /// [`CommandError::PreconditionFailed`] at once; otherwise every stream is
    /// appended at the version its state was read (a stream not read is created:
    /// `NoStream`), and a conflict on any stream reloads and decides again, with a
    /// short random pause, until [`Options::attempts_max`] or
    /// [`Options::retry_deadline`].
    #[tracing::instrument(
        name = "command",
        level = "debug",
        skip_all,
        fields(
            command = name,
            stream = %main,
            expected_version = ?expected,
            correlation_id = %ctx.correlation_id,
            position = tracing::field::Empty,
            attempts = tracing::field::Empty,
        )
    )]
    async fn execute(
        &self,
        ctx: &CommandContext,
        name: &'static str,
        main: &str,
        expected: Option<u64>,
        mut decide: impl FnMut(&Self) -> Result<Decision, CommandError>,
    ) -> Result<CommandOutcome, CommandError> {
        let options = &self.inner.options;
        let deadline = Instant::now() + options.retry_deadline;
        let mut attempts = 0;
        loop {
            attempts += 1;
            tracing::Span::current().record("attempts", attempts);
            // With If-Match, the decision must rest on exactly the expected version
            // of main: it was there before the decision loaded main and still after
            // (versions only grow, so that is the version the decision read).
            let before = expected.map(|_| self.inner.log.stream_version(main)).transpose()?;
            let decided = decide(self);
            if let Some(expected) = expected {
                let actual = self.inner.log.stream_version(main)?;
                // The command's stream not found (another customer's order, or
                // none at all) is a 404 whatever `If-Match` says: a failure found
                // before the command is carried out comes before preconditions
                // (RFC 9110 §13.2.1), and a 412 would tell the version of an
                // order that is not the caller's.
                let not_found = match &decided {
                    Err(CommandError::NotYours { .. }) => true,
                    Err(CommandError::Domain(refusal)) => refusal.kind() == domain::ErrorKind::NotFound && actual == 0,
                    _ => false,
                };
                if actual == expected && before != Some(expected) && !not_found {
                    // It reached the expected version while the command was
                    // decided: decide again, on that version.
                    if attempts >= options.attempts_max || Instant::now() >= deadline {
                        return Err(CommandError::Contention { stream: main.to_owned(), attempts });
                    }
                    continue;
                }
                if actual != expected && !not_found {
                    let refusal = CommandError::PreconditionFailed { stream: main.to_owned(), expected, actual };
                    return self.refuse(ctx, main, refusal, attempts).await;
                }
            }
            let decision = match decided {
                Ok(decision) => decision,
                Err(refusal @ CommandError::Domain(_)) => return self.refuse(ctx, main, refusal, attempts).await,
                Err(error) => return Err(error),
            };
            let forget = decision.forget;
            let mut conditions = decision.conditions.clone();
            let groups = group(main, expected, decision);
            for group in &groups {
                conditions.remove(&group.stream);
            }
            let written = groups.iter().map(|group| {
                Ok(StreamAppend {
                    stream: group.stream.clone(),
                    expected: group.expected,
                    events: group.events.iter().map(codec::to_new_event).collect::<Result<_, _>>()?,
                })
            });
            let conditions =
                conditions.into_iter().map(|(stream, expected)| Ok(StreamAppend { stream, expected, events: vec![] }));
            let request = AppendRequest {
                streams: written.chain(conditions).collect::<Result<_, CommandError>>()?,
                metadata: ctx.metadata(),
                idempotency: self.keyed(ctx),
                recorded_at: None,
            };
            let appended = match forget {
                Some(subject) => self.inner.log.forget(subject, request).await,
                None => self.inner.log.append(request).await,
            };
            match appended {
                Ok(result) => {
                    tracing::Span::current().record("position", result.last_position);
                    return match result.duplicate {
                        true => self.outcome_from_log(main, result, attempts),
                        false => Ok(self.remember(main, result, groups, attempts)),
                    };
                }
                Err(StoreError::IdempotencyKeyReused) => {
                    return self.outcome_from_log(main, self.plainly_stored(ctx).await?, attempts);
                }
                // The store checks idempotency before versions: this key is new.
                Err(StoreError::WrongExpectedVersion { stream, actual, .. }) => {
                    if let Some(expected) = expected
                        && stream == main
                    {
                        return Err(CommandError::PreconditionFailed { stream, expected, actual });
                    }
                    if attempts >= options.attempts_max || Instant::now() >= deadline {
                        tracing::warn!(%stream, attempts, "command gave up under contention");
                        return Err(CommandError::Contention { stream, attempts });
                    }
                    tracing::debug!(%stream, attempts, "version conflict; deciding again");
                    tokio::time::sleep(self.backoff(attempts)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// A random pause below a bound that doubles per attempt (100 µs, 200 µs, …)
    /// up to [`Options::backoff_max`], so racing commands spread out.
    fn backoff(&self, attempts: u32) -> Duration {
        let bound = Duration::from_micros(100u64 << attempts.min(16)).min(self.inner.options.backoff_max);
        let micros = u64::try_from(bound.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rand::random_range(0..=micros))
    }

    /// A command was refused. If it carries an idempotency key that an earlier,
    /// successful command used, it is a repeat of that one (which is why the
    /// state now refuses it: the cart is checked out, the order paid): answer
    /// with the first outcome. Otherwise the refusal stands.
    async fn refuse(
        &self,
        ctx: &CommandContext,
        main: &str,
        refusal: CommandError,
        attempts: u32,
    ) -> Result<CommandOutcome, CommandError> {
        match self.first_result(ctx).await? {
            Some(first) => self.outcome_from_log(main, first, attempts),
            None => Err(refusal),
        }
    }

    /// The first result of the command's idempotency key, if the log holds the
    /// key for this very request; `None` for a key it does not hold (or no key),
    /// [`CommandError::IdempotencyKeyReused`] for one it holds for another request.
    pub async fn first_result(&self, ctx: &CommandContext) -> Result<Option<AppendResult>, CommandError> {
        let Some(idempotency) = self.keyed(ctx) else { return Ok(None) };
        match self.inner.log.repeated(idempotency, ctx.metadata()).await {
            Ok(first) => Ok(first),
            Err(StoreError::IdempotencyKeyReused) => self.plainly_stored(ctx).await.map(Some),
            Err(error) => Err(error.into()),
        }
    }

    /// The command's idempotency key with its request hash keyed by the log's
    /// [`REQUEST_KEY_SECRET`], as the log stores it.
    fn keyed(&self, ctx: &CommandContext) -> Option<Idempotency> {
        ctx.idempotency.as_ref().map(|idempotency| Idempotency {
            key: idempotency.key.clone(),
            request_hash: *blake3::keyed_hash(&self.inner.request_secret.0, &idempotency.request_hash).as_bytes(),
        })
    }

    /// A key that the log holds for another request hash: its first result if
    /// it was stored with the plain hash (by a binary from before the hashes
    /// were keyed) of this very request; else the key was used for another one.
    async fn plainly_stored(&self, ctx: &CommandContext) -> Result<AppendResult, CommandError> {
        let Some(idempotency) = ctx.idempotency.clone() else { return Err(CommandError::IdempotencyKeyReused) };
        match self.inner.log.repeated(idempotency, ctx.metadata()).await {
            Ok(Some(first)) => Ok(first),
            Ok(None) | Err(StoreError::IdempotencyKeyReused) => Err(CommandError::IdempotencyKeyReused),
            Err(error) => Err(error.into()),
        }
    }

    /// The outcome of an append this command wrote; the cache learns the new states.
    fn remember(&self, main: &str, result: AppendResult, groups: Vec<Group>, attempts: u32) -> CommandOutcome {
        let written: usize = groups.iter().map(|group| group.events.len()).sum();
        assert_eq!(
            result.last_position + 1 - result.first_position,
            written as u64,
            "an append's positions are contiguous and one per event"
        );
        let mut events = Vec::with_capacity(written);
        for (group, version) in groups.into_iter().zip(&result.streams) {
            assert_eq!(group.stream, version.stream, "the log reports streams in request order");
            let from_version = version.version - group.events.len() as u64;
            self.inner.cache.advance(&group.stream, from_version, &group.events, version.version);
            events.extend(group.events);
        }
        CommandOutcome {
            main_stream: main.to_owned(),
            first_position: result.first_position,
            last_position: result.last_position,
            streams: result.streams,
            events,
            duplicate: false,
            attempts,
        }
    }

    /// The outcome of an earlier append (an idempotent repeat), from its events in the log.
    fn outcome_from_log(
        &self,
        main: &str,
        result: AppendResult,
        attempts: u32,
    ) -> Result<CommandOutcome, CommandError> {
        let count = usize::try_from(result.last_position + 1 - result.first_position).unwrap_or(usize::MAX);
        let recorded = self.inner.log.read_all(result.first_position, count)?;
        let events = recorded.iter().map(codec::decode).filter_map(Result::transpose).collect::<Result<_, _>>()?;
        // A command that names its new stream afresh on each try (a registration,
        // with a new customer id) tried `main` this time; the first answer's main
        // stream is the one of the same category that the append wrote.
        let category = |stream: &str| StreamId::parse(stream).ok().map(|id| id.category());
        let main_stream = match result.streams.iter().any(|written| written.stream == main) {
            true => main.to_owned(),
            false => result
                .streams
                .iter()
                .find(|written| category(&written.stream).is_some() && category(&written.stream) == category(main))
                .map_or_else(|| main.to_owned(), |written| written.stream.clone()),
        };
        Ok(CommandOutcome {
            main_stream,
            first_position: result.first_position,
            last_position: result.last_position,
            streams: result.streams,
            events,
            duplicate: true,
            attempts,
        })
    }
}

fn product_command_name(command: &ProductCommand) -> &'static str {
    match command {
        ProductCommand::Create { .. } => "create product",
        ProductCommand::ChangePrice { .. } => "change price",
        ProductCommand::Restock { .. } => "restock",
        ProductCommand::Discontinue { .. } => "discontinue",
    }
}

/// The decision's events by stream, streams in the order their first event was
/// emitted, each with its expected version.
fn group(main: &str, expected: Option<u64>, decision: Decision) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for event in decision.events {
        let stream = event.stream().to_string();
        match groups.iter_mut().find(|group| group.stream == stream) {
            Some(group) => group.events.push(event),
            None => {
                let expected = match expected {
                    Some(version) if stream == main => ExpectedVersion::Exact(version),
                    _ => decision.read.get(&stream).copied().unwrap_or(ExpectedVersion::NoStream),
                };
                groups.push(Group { stream, expected, events: vec![event] });
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use domain::{PriceCents, ProductDiscontinued, ProductName, Sku, Stock};

    use super::*;

    /// With If-Match, a decision counts only if it rests on the expected version.
    /// Here another command discontinues the product between this discontinue's
    /// load of it and the If-Match check, making the product's version the
    /// expected one. Checked against the version after the decision alone, the
    /// product would be discontinued twice; decided again on that version, this
    /// one is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn if_match_holds_a_decision_to_the_version_it_read() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let log = EventLog::open(dir.path()).expect("a log");
        let service = CommandService::new(log.clone()).expect("a service");
        let (ctx, sku) = (CommandContext::new("admin"), Sku::parse("mug").expect("a sku"));
        let (name, price) = (ProductName::parse("Mug").expect("a name"), PriceCents::new(500).expect("a price"));
        let stock = Stock::new(5).expect("a stock");
        service.create_product(&ctx, sku.clone(), name, price, Some(stock), None).await.expect("creates");
        let main = StreamId::Product(sku.clone()).to_string();
        let another_command = || {
            let event = codec::to_new_event(&Event::from(ProductDiscontinued { sku: sku.clone() }))?;
            let streams =
                vec![StreamAppend { stream: main.clone(), expected: ExpectedVersion::Any, events: vec![event] }];
            let request = AppendRequest { streams, metadata: ctx.metadata(), idempotency: None, recorded_at: None };
            // From a thread of its own: a decision is not async.
            let appended = std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                        Ok::<_, std::io::Error>(runtime.block_on(log.append(request)))
                    })
                    .join()
            });
            match appended {
                Ok(Ok(Ok(_))) => Ok(()),
                _ => Err(CommandError::Hasher { reason: "the other command was not appended".to_owned() }),
            }
        };

        let mut landed = false;
        let outcome = service
            .execute(&ctx, "discontinue", &main, Some(2), |service| {
                let product = service.load::<domain::Product>(&main)?;
                if !landed {
                    landed = true;
                    another_command()?;
                }
                let command = domain::ProductCommand::Discontinue { sku: sku.clone() };
                let events = domain::product::decide(&product.state, &command)?;
                Ok(Decision::new(events).read(&main, &product))
            })
            .await;
        assert!(landed);
        match outcome {
            Err(CommandError::Domain(domain::DomainError::Discontinued { .. })) => {}
            other => panic!("decided on version 1 for an If-Match of 2: {other:?}"),
        }
        assert_eq!(log.stream_version(&main).expect("reads"), 2, "discontinued once");
    }
}
