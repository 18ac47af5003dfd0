//! Who is calling: admin and viewer tokens from config (compared in constant time),
//! customer tokens signed with HMAC-SHA256 over the customer id and expiry (24 h).
//! Extractors turn the `Authorization: Bearer` header into the role a route needs:
//! 401 without valid credentials, 403 with the wrong role.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use domain::CustomerId;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::AppState;
use crate::config::Secret;
use crate::error::ApiError;

/// How long a customer token lives.
pub const CUSTOMER_TOKEN_TTL: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// How far past the TTL a token's expiry may lie (a clock behind the one that
/// signed it): more, and it was signed with a leaked key.
const TOKEN_CLOCK_LEEWAY: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

const TOKEN_VERSION: &str = "v1";

/// An authenticated caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Viewer,
    Customer(CustomerId),
    /// A read replica filling a gap: the records as stored, nothing else.
    Replica,
}

impl Principal {
    /// The actor recorded in the events this caller causes.
    pub fn actor(&self) -> String {
        match self {
            Principal::Admin => "admin".to_owned(),
            Principal::Viewer => "viewer".to_owned(),
            Principal::Customer(id) => format!("customer:{id}"),
            Principal::Replica => "replica".to_owned(),
        }
    }
}

/// The configured tokens and the customer-token key.
#[derive(Debug)]
pub struct Tokens {
    admin: Secret,
    viewer: Secret,
    replica: Option<Secret>,
    signing: Keyed,
}

/// HMAC-SHA256 with the customer-token key already taken in: every token check
/// starts from a copy, instead of hashing the key again.
#[derive(Clone)]
struct Keyed(Hmac<Sha256>);

impl std::fmt::Debug for Keyed {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Keyed(..)")
    }
}

impl Tokens {
    pub fn new(admin: Secret, viewer: Secret, signing_key: Secret) -> Self {
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(signing_key.expose().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        Tokens { admin, viewer, replica: None, signing: Keyed(keyed) }
    }

    /// With a token for read replicas (`Config::replica_token`).
    pub fn with_replica(self, replica: Option<Secret>) -> Self {
        Tokens { replica, ..self }
    }

    fn mac(&self, message: &str) -> Hmac<Sha256> {
        let mut mac = self.signing.0.clone();
        mac.update(message.as_bytes());
        mac
    }

    /// A token for `customer`, valid until the returned time.
    pub fn issue(&self, customer: CustomerId, now: DateTime<Utc>) -> (String, DateTime<Utc>) {
        let expires_at = now + CUSTOMER_TOKEN_TTL;
        let message = format!("{TOKEN_VERSION}.{}.{}", customer.get().simple(), expires_at.timestamp());
        let signature = hex::encode(self.mac(&message).finalize().into_bytes());
        (format!("{message}.{signature}"), expires_at)
    }

    /// The principal a bearer token stands for, if any.
    pub fn authenticate(&self, token: &str, now: DateTime<Utc>) -> Option<Principal> {
        if constant_time_eq(token, self.admin.expose()) {
            return Some(Principal::Admin);
        }
        if constant_time_eq(token, self.viewer.expose()) {
            return Some(Principal::Viewer);
        }
        if self.replica.as_ref().is_some_and(|replica| constant_time_eq(token, replica.expose())) {
            return Some(Principal::Replica);
        }
        let (message, signature) = token.rsplit_once('.')?;
        let mut bytes = [0; 32];
        hex::decode_to_slice(signature, &mut bytes).ok()?;
        self.mac(message).verify_slice(&bytes).ok()?;
        let mut parts = message.split('.');
        let (Some(TOKEN_VERSION), Some(customer), Some(expiry), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let customer = Uuid::parse_str(customer).ok()?;
        let expiry = DateTime::from_timestamp(expiry.parse().ok()?, 0)?;
        // No token this server signs outlives its TTL: one that says otherwise
        // was signed with a leaked key. Leeway for clocks: a replica's behind
        // its primary's, or one set back.
        let latest = now + CUSTOMER_TOKEN_TTL + TOKEN_CLOCK_LEEWAY;
        (now < expiry && expiry <= latest).then_some(Principal::Customer(CustomerId::new(customer)))
    }
}

fn constant_time_eq(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// The bearer token; `None` (a 401) for a header that holds none, or one given
/// twice (which of two credentials would count is anyone's guess).
fn bearer(parts: &Parts) -> Option<&str> {
    let value = crate::extract::single(&parts.headers, AUTHORIZATION.as_str(), "Authorization").ok()??.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// The caller, if the request carries valid credentials; anonymous otherwise.
/// A header that is present but invalid is still a 401.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Option<Principal>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if parts.headers.get(AUTHORIZATION).is_none() {
            return Ok(Caller(None));
        }
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        let principal = state.tokens.authenticate(token, Utc::now()).ok_or(ApiError::Unauthorized)?;
        if let Principal::Customer(id) = principal {
            // A token outlives a forgetting (it is only signed, never stored): a
            // forgotten customer's tokens stop working at once. So do the tokens
            // of a customer the log does not hold (signed before a restore to an
            // earlier position, whose backup carried the signing secret). A
            // read replica holds no customer's data: what its log recorded
            // tells it.
            let registered = if state.is_replica() {
                state.service.customer_registered_as_recorded(id)
            } else {
                state.service.customer_registered(id)
            };
            if !registered.map_err(ApiError::internal)? {
                return Err(ApiError::Unauthorized);
            }
        }
        Ok(Caller(Some(principal)))
    }
}

async fn principal(parts: &mut Parts, state: &AppState) -> Result<Principal, ApiError> {
    Caller::from_request_parts(parts, state).await?.0.ok_or(ApiError::Unauthorized)
}

/// The admin.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match principal(parts, state).await? {
            Principal::Admin => Ok(Admin),
            _ => Err(ApiError::Forbidden("this needs the admin token".to_owned())),
        }
    }
}

/// The admin, or a read replica's token (which the handler lets read the
/// records as stored only).
#[derive(Debug, Clone, Copy)]
pub struct AdminOrReplica(pub Principal);

impl FromRequestParts<AppState> for AdminOrReplica {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match principal(parts, state).await? {
            principal @ (Principal::Admin | Principal::Replica) => Ok(AdminOrReplica(principal)),
            _ => Err(ApiError::Forbidden("this needs the admin token".to_owned())),
        }
    }
}

/// The admin or a viewer (read-only dashboards).
#[derive(Debug, Clone, Copy)]
pub struct Reader(pub Principal);

impl FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match principal(parts, state).await? {
            principal @ (Principal::Admin | Principal::Viewer) => Ok(Reader(principal)),
            Principal::Customer(_) | Principal::Replica => {
                Err(ApiError::Forbidden("this needs the admin or viewer token".to_owned()))
            }
        }
    }
}

/// The admin or a logged-in customer: who may read orders (a customer only their
/// own). Being an extractor, it refuses a viewer before the query is looked at.
#[derive(Debug, Clone, Copy)]
pub enum AdminOrCustomer {
    Admin,
    Customer(CustomerId),
}

impl FromRequestParts<AppState> for AdminOrCustomer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match principal(parts, state).await? {
            Principal::Admin => Ok(AdminOrCustomer::Admin),
            Principal::Customer(id) => Ok(AdminOrCustomer::Customer(id)),
            Principal::Viewer | Principal::Replica => {
                Err(ApiError::Forbidden("orders are for their customer or the admin".to_owned()))
            }
        }
    }
}

/// A logged-in customer.
#[derive(Debug, Clone, Copy)]
pub struct Customer(pub CustomerId);

impl FromRequestParts<AppState> for Customer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match principal(parts, state).await? {
            Principal::Customer(id) => Ok(Customer(id)),
            _ => Err(ApiError::Forbidden("this needs a customer token (POST /api/v1/sessions)".to_owned())),
        }
    }
}

/// The key a client address is counted under: an IPv4 address (an IPv4-mapped
/// IPv6 one too) whole, an IPv6 address by its /64, which one client usually has
/// all of, so that it cannot take a fresh address for each attempt.
pub fn address_key(address: std::net::IpAddr) -> String {
    match address {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                format!("{a:x}:{b:x}:{c:x}:{d:x}::/64")
            }
        },
    }
}

/// The client's address as the limits per address count it ([`address_key`]):
/// the peer's, or, when the peer is one of the trusted proxies, the last address
/// in `X-Forwarded-For` that is not a trusted proxy's (each proxy appends the
/// address it took the request from, so what comes before that one is the
/// client's to write, and is not believed). A value that is not an address
/// stops the walk at the proxy before it.
#[derive(Debug, Clone)]
pub struct ClientAddress(pub String);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<std::net::SocketAddr>>() else {
            return Err(ApiError::internal(anyhow::anyhow!("the request has no peer address")));
        };
        Ok(ClientAddress(address_key(client_ip(&state.trusted_proxies, peer.ip(), &parts.headers))))
    }
}

/// See [`ClientAddress`]. Addresses are compared canonical (an IPv4 proxy seen
/// by a dual-stack listener as `::ffff:127.0.0.1` is `127.0.0.1`), and each
/// entry is read on its own: bytes that are not text in one (written by the
/// client, before the proxy's entries) stop the walk there, not at the proxy.
fn client_ip(trusted: &[IpAddr], peer: IpAddr, headers: &axum::http::HeaderMap) -> IpAddr {
    let trusted = |address: &IpAddr| trusted.contains(&address.to_canonical());
    let mut client = peer.to_canonical();
    if !trusted(&client) {
        return client;
    }
    let values: Vec<&[u8]> = headers.get_all("x-forwarded-for").iter().map(|value| value.as_bytes()).collect();
    for entry in values.iter().rev().flat_map(|value| value.rsplit(|byte| *byte == b',')) {
        let Some(entry) = std::str::from_utf8(entry).ok().map(str::trim) else { return client };
        let Some(address) =
            entry.parse::<IpAddr>().ok().or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|at| at.ip()))
        else {
            return client;
        };
        client = address.to_canonical();
        if !trusted(&client) {
            return client;
        }
    }
    client
}

/// A fixed-window limiter per key (an email, a client address), bounded in size.
///
/// Full (a flood of distinct keys), it makes room by dropping the expired
/// entries, then those of a single attempt, and keeps every key that has made
/// more: the counts an attack on one account builds up are never forgotten to
/// make room for others. Still full (that many keys with two attempts or more
/// within a window), it refuses keys it does not know until entries expire:
/// logins wait, but no count is lost.
#[derive(Debug)]
pub struct RateLimiter {
    window: Duration,
    attempts_max: u32,
    keys_max: usize,
    entries: Mutex<HashMap<String, (Instant, u32)>>,
}

/// The most keys a limiter tracks.
const LIMITER_KEYS_MAX: usize = 100_000;

impl RateLimiter {
    pub fn new(attempts_max: u32, window: Duration) -> Self {
        Self::with_keys_max(attempts_max, window, LIMITER_KEYS_MAX)
    }

    fn with_keys_max(attempts_max: u32, window: Duration, keys_max: usize) -> Self {
        RateLimiter { window, attempts_max, keys_max: keys_max.max(1), entries: Mutex::new(HashMap::new()) }
    }

    /// Count one attempt for `key`; `Err(seconds)` to wait when over the limit.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() >= self.keys_max && !entries.contains_key(key) {
            entries.retain(|_, (started, _)| now.duration_since(*started) < self.window);
            if entries.len() >= self.keys_max {
                entries.retain(|_, (_, attempts)| *attempts > 1);
            }
            if entries.len() >= self.keys_max {
                let oldest = entries.values().map(|(started, _)| *started).min().unwrap_or(now);
                let left = self.window.saturating_sub(now.duration_since(oldest));
                return Err(left.as_secs().max(1));
            }
        }
        let entry = entries.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.attempts_max {
            let left = self.window.saturating_sub(now.duration_since(entry.0));
            return Err(left.as_secs().max(1));
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(
            Secret::new("admin-token-0123456789"),
            Secret::new("viewer-token-0123456789"),
            Secret::new("k".repeat(32)),
        )
    }

    #[test]
    fn a_customer_token_stands_for_its_customer_until_it_expires() {
        let tokens = tokens();
        let customer = CustomerId::new(Uuid::now_v7());
        let now = Utc::now();
        let (token, expires_at) = tokens.issue(customer, now);
        assert_eq!(expires_at - now, CUSTOMER_TOKEN_TTL);
        assert_eq!(tokens.authenticate(&token, now), Some(Principal::Customer(customer)));
        assert_eq!(tokens.authenticate(&token, expires_at), None);
    }

    /// Behind trusted proxies, the client is the last forwarded address that
    /// is not a proxy's, read entry by entry and compared canonical.
    #[test]
    fn the_client_behind_trusted_proxies_is_the_last_address_forwarded_that_is_not_a_proxys() {
        let ip = |text: &str| text.parse::<IpAddr>().expect("an address");
        let trusted = [ip("127.0.0.1"), ip("10.9.9.9")];
        let forwarded = |values: &[&[u8]]| {
            let mut headers = axum::http::HeaderMap::new();
            for value in values {
                headers.append("x-forwarded-for", axum::http::HeaderValue::from_bytes(value).expect("a value"));
            }
            headers
        };
        let cases: [(&str, &[&[u8]], &str); 8] = [
            ("127.0.0.1", &[b"198.51.100.7, 203.0.113.1"], "203.0.113.1"),
            ("::ffff:127.0.0.1", &[b"203.0.113.1"], "203.0.113.1"),
            ("127.0.0.1", &[b"\xff\xfe, 203.0.113.1"], "203.0.113.1"),
            ("127.0.0.1", &[b"203.0.113.9", b"10.9.9.9"], "203.0.113.9"),
            ("127.0.0.1", &[b"[2001:db8::1]:443"], "2001:db8::1"),
            ("127.0.0.1", &[b"unknown"], "127.0.0.1"),
            ("127.0.0.1", &[], "127.0.0.1"),
            ("192.0.2.4", &[b"203.0.113.1"], "192.0.2.4"),
        ];
        for (peer, values, client) in cases {
            assert_eq!(client_ip(&trusted, ip(peer), &forwarded(values)), ip(client), "{peer} {values:?}");
        }
    }

    /// A token signed with the key but for longer than the TTL (one a leaked
    /// key made) is refused; one issued by a clock up to the leeway ahead (a
    /// primary's, seen from its replica) is not.
    #[test]
    fn a_token_that_outlives_the_ttl_is_refused() {
        let tokens = tokens();
        let customer = CustomerId::new(Uuid::now_v7());
        let now = Utc::now();
        let (ahead, _) = tokens.issue(customer, now + TOKEN_CLOCK_LEEWAY);
        assert_eq!(tokens.authenticate(&ahead, now), Some(Principal::Customer(customer)));
        let (far, _) = tokens.issue(customer, now + chrono::TimeDelta::days(36_500));
        assert_eq!(tokens.authenticate(&far, now), None);
        let (later, _) = tokens.issue(customer, now + TOKEN_CLOCK_LEEWAY + chrono::TimeDelta::seconds(1));
        assert_eq!(tokens.authenticate(&later, now), None);
    }

    #[test]
    fn a_tampered_or_foreign_token_is_refused() {
        let tokens = tokens();
        let (token, _) = tokens.issue(CustomerId::new(Uuid::now_v7()), Utc::now());
        let other = CustomerId::new(Uuid::now_v7()).get().simple().to_string();
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[1] = &other;
        assert_eq!(tokens.authenticate(&parts.join("."), Utc::now()), None);
        let foreign =
            Tokens::new(Secret::new("a".repeat(16)), Secret::new("b".repeat(16)), Secret::new("z".repeat(32)));
        assert_eq!(foreign.authenticate(&token, Utc::now()), None);
        let (message, signature) = token.rsplit_once('.').expect("a signed token");
        for bad in [&signature[..62], &format!("{signature}00"), &format!("{}zz", &signature[..62]), ""] {
            assert_eq!(tokens.authenticate(&format!("{message}.{bad}"), Utc::now()), None, "signature {bad:?}");
        }
        assert!(!format!("{tokens:?}").contains(&"k".repeat(32)), "Debug shows the key");
        assert_eq!(tokens.authenticate("", Utc::now()), None);
        assert_eq!(tokens.authenticate("admin-token-012345678", Utc::now()), None);
        assert_eq!(tokens.authenticate("admin-token-0123456789", Utc::now()), Some(Principal::Admin));
    }

    /// A flood of single attempts under distinct keys does not wipe the count of
    /// the key under attack; a table full of keys that each tried twice refuses
    /// new keys rather than forget any count.
    #[test]
    fn a_full_limiter_keeps_the_counts_of_keys_that_tried_more_than_once() {
        let limiter = RateLimiter::with_keys_max(3, Duration::from_secs(60), 10);
        for _ in 0..3 {
            assert_eq!(limiter.check("victim"), Ok(()));
        }
        for flood in 0..100 {
            assert_eq!(limiter.check(&format!("flood-{flood}")), Ok(()), "a single attempt of a new key");
        }
        assert!(limiter.check("victim").is_err(), "the flood wiped the victim's count");

        let limiter = RateLimiter::with_keys_max(3, Duration::from_secs(60), 4);
        for key in ["a", "b", "c", "d"] {
            assert_eq!(limiter.check(key), Ok(()));
            assert_eq!(limiter.check(key), Ok(()));
        }
        let wait = limiter.check("e").expect_err("no room without forgetting a count");
        assert!((1..=60).contains(&wait), "{wait}");
        assert_eq!(limiter.check("a"), Ok(()), "known keys go on being counted");
        assert!(limiter.check("a").is_err(), "a's fourth attempt");
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_and_an_ipv4_one_by_its_address() {
        let key = |text: &str| address_key(text.parse().expect("an address"));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb:cccc:dddd:eeee"), "one /64");
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"), "another /64");
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7", "IPv4-mapped");
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
    }

    #[test]
    fn the_limiter_refuses_past_the_limit_and_says_when_to_retry() {
        let limiter = RateLimiter::new(2, Duration::from_secs(60));
        assert_eq!(limiter.check("a"), Ok(()));
        assert_eq!(limiter.check("a"), Ok(()));
        let wait = limiter.check("a").expect_err("third attempt");
        assert!((1..=60).contains(&wait));
        assert_eq!(limiter.check("b"), Ok(()), "keys are counted apart");
    }
}
