//! Read replicas (`shoplog project`, DESIGN §4 and §7), against a real
//! `nats-server`: a replica copies the primary's log from JetStream record by
//! record as stored, builds its read models and serves the read routes; it goes
//! on from its own head after a restart; a gap in the stream stops it, naming the
//! missing positions, unless it was given the primary, which then fills them.

use std::time::{Duration, Instant};

use api::server::Role;
use async_nats::jetstream;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::NatsServer;

use crate::api::{ADMIN, REPLICA, TestApp, VIEWER};
use crate::cli::Served;
use crate::relay::{
    RELAY_WAIT, entry_until, projection_entry, published, relayed, relaying, restock, shop,
    stream_made_before_the_relay,
};

/// The replica's feed, its entry of `/admin/projections`.
async fn feed_status(replica: &TestApp) -> Value {
    projection_entry(replica, "replica").await
}

/// Wait until `ready` holds of the feed's status; the status.
async fn feed_until(replica: &TestApp, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    entry_until(replica, "replica", what, ready).await
}

/// What `/readyz` answers: its status, and the problem's detail (empty when ready).
async fn readiness(replica: &TestApp) -> (StatusCode, String) {
    let reply = replica.get("/readyz", None).await;
    (reply.status, reply.body["detail"].as_str().unwrap_or_default().to_owned())
}

/// A read replica of the primary relaying to `nats`, on `dir`.
async fn replica_on(dir: tempfile::TempDir, nats: &NatsServer, primary: Option<&TestApp>) -> TestApp {
    let primary = primary
        .map(|primary| api::replica::Primary { url: primary.base.clone(), token: api::config::Secret::new(REPLICA) });
    TestApp::serve_dir_as(dir, Role::Replica { primary }, |config| config.nats = Some(nats.url())).await
}

/// Wait until the replica holds the primary's whole log, its read models
/// have applied it, and it is ready.
async fn copied(replica: &TestApp, primary: &TestApp) {
    let head = primary.head();
    feed_until(replica, "reached the primary's head", |status| status["checkpoint"] == head).await;
    replica.caught_up().await;
    let deadline = Instant::now() + RELAY_WAIT;
    while readiness(replica).await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "not ready with the primary's log: {:?}", readiness(replica).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A shop relaying to NATS, with a shop's worth of events, and a replica on an
/// empty data dir that has copied them all: NATS's dir, NATS, the primary, the
/// replica.
async fn replicated(email: &str) -> (tempfile::TempDir, NatsServer, TestApp, TestApp) {
    let (nats_dir, nats, primary) = relaying().await;
    shop(&primary, email).await;
    relayed(&primary).await;
    let replica = replica_on(tests::temp_dir(), &nats, None).await;
    copied(&replica, &primary).await;
    (nats_dir, nats, primary, replica)
}

/// The replica's log is the primary's: the same records, byte for byte (so
/// the same hash chain), and it verifies.
fn assert_same_log(replica: &TestApp, primary: &TestApp) {
    let head = primary.head();
    assert_eq!(replica.head(), head);
    let read = |app: &TestApp| app.log().read_stored(1, head as usize).expect("reads");
    assert!(read(replica) == read(primary), "the replica's records are the primary's as stored");
    assert_eq!(replica.log().verify().expect("the copy verifies").events, head);
}

/// What the read routes answer, for comparing the replica with the primary.
async fn read_models(app: &TestApp) -> Vec<Value> {
    let mut answers = Vec::new();
    for path in ["/api/v1/products", "/api/v1/products/mug-1", "/api/v1/orders", "/api/v1/dashboard/sales"] {
        let reply = app.get(path, Some(ADMIN)).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {reply:?}");
        answers.push(reply.body);
    }
    answers
}

/// A replica started empty copies the whole log and then follows it live: its
/// read routes answer as the primary's, its log is the primary's record for
/// record and verifies, it holds no personal data (sealed payloads travel
/// sealed, and it has no key), and it takes no command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_copies_the_log_and_serves_the_read_models() {
    let (_nats_dir, _nats, primary, replica) = replicated("replicated.shopper@example.com").await;
    primary.caught_up().await;
    assert_same_log(&replica, &primary);
    assert_eq!(read_models(&replica).await, read_models(&primary).await);
    // Its audit route answers the records as stored, as the primary's does.
    let head = primary.head();
    let records = records_as_stored(&replica, 1, head).await;
    assert!(records.len() > 4 * head as usize, "{head} records");
    assert_eq!(records, records_as_stored(&primary, 1, head).await);

    // Live: what the primary does next shows on the replica.
    restock(&primary, "mug-1", 5).await;
    copied(&replica, &primary).await;
    primary.caught_up().await;
    assert_eq!(read_models(&replica).await, read_models(&primary).await);
    let status = feed_status(&replica).await;
    assert_eq!((status["lag"].clone(), status["failure"].clone()), (json!(0), Value::Null), "{status}");
    let metrics = replica.get("/metrics", Some(VIEWER)).await;
    let text = metrics.body.as_str().expect("text");
    assert!(text.contains(&format!("replica_position {}", primary.head())), "{text}");
    assert!(text.contains("replica_up 1"), "{text}");

    // Commands (and logins) go to the primary: 404 naming it, also where the
    // replica reads the same path (`GET /api/v1/products`); a method the
    // primary takes nowhere there is still 405.
    let head = replica.head();
    let product = json!({"sku": "new-1", "name": "New", "price_cents": 100});
    let login = json!({"email": "replicated.shopper@example.com", "password": "correct horse"});
    for (path, body) in [
        ("/api/v1/products/mug-1/restock", json!({"quantity": 1})),
        ("/api/v1/products", product),
        ("/api/v1/sessions", login),
    ] {
        let refused = replica.post(path, Some(ADMIN), body).await;
        let detail = refused.problem(404)["detail"].as_str().unwrap_or_default().to_owned();
        assert!(detail.contains("send commands (and logins) to the primary"), "{path}: {refused:?}");
    }
    let deleted = replica.request(reqwest::Method::DELETE, "/api/v1/products", Some(ADMIN), None, &[]).await;
    deleted.problem(405);
    assert_eq!(replica.head(), head, "nothing written");
    // `serve` on its dir is refused for what it is before the log is opened
    // (which would first recover a crashed copy there): not "in use".
    let data = replica.dir.path().to_str().expect("utf-8").to_owned();
    let serve = ["serve", "--listen", "127.0.0.1:0", "--data", &data];
    let refused = tokio::task::block_in_place(|| crate::cli::shoplog(&serve));
    crate::cli::assert_refused(&refused, "is a read replica's copy");

    let replica_dir = replica.stop_keeping_dir().await;
    let needle = b"replicated.shopper@example.com";
    let holding: Vec<_> = walk(replica_dir.path())
        .into_iter()
        .filter(|path| std::fs::read(path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)))
        .collect();
    assert!(holding.is_empty(), "the replica holds the customer's email in {holding:?}");
    primary.stop().await;
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("lists").flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

/// A replica stopped and started again goes on from its own head: it copies
/// what the primary did meanwhile, and nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_goes_on_from_its_head() {
    let (_nats_dir, nats, primary, replica) = replicated("restarted.replica@example.com").await;
    let before = replica.head();
    let dir = replica.stop_keeping_dir().await;

    restock(&primary, "tea-1", 7).await;
    relayed(&primary).await;
    assert!(primary.head() > before);
    let replica = replica_on(dir, &nats, None).await;
    caught_up_with(&replica, &primary).await;
    replica.stop().await;
    primary.stop().await;
}

/// A replica is not ready until it has caught up with NATS since it started:
/// here NATS holds no stream yet (no primary relays to it), and `/readyz`
/// says so; once a primary relays there, the replica copies its log and is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_ready_once_it_has_caught_up() {
    let nats_dir = tests::temp_dir();
    let nats = NatsServer::start(nats_dir.path());
    let replica = replica_on(tests::temp_dir(), &nats, None).await;
    feed_until(&replica, "said there is no stream", |status| status["failure"].is_string()).await;
    let (ready, detail) = readiness(&replica).await;
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE, "{detail}");
    assert!(
        detail.starts_with("the replica is catching up: at position 0") && detail.contains("SHOPLOG_EVENTS"),
        "{detail}"
    );

    let primary = TestApp::spawn_with(|config| config.nats = Some(nats.url())).await;
    shop(&primary, "ready.shopper@example.com").await;
    relayed(&primary).await;
    // Ready, once it has caught up.
    caught_up_with(&replica, &primary).await;
    replica.stop().await;
    primary.stop().await;
}

/// Positions missing from the stream (deleted here, as JetStream can lose or
/// drop them) stop a replica that has no primary: it applies up to the gap,
/// serves that, and says which positions are missing. Given the primary, it
/// fills them from the primary's log (as stored) and goes on to the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_stops_a_replica_without_its_primary_and_the_primary_fills_it() {
    let (_nats_dir, nats, primary) = relaying().await;
    shop(&primary, "gap.shopper@example.com").await;
    relayed(&primary).await;
    let messages = published(&nats.url()).await;
    let missing: Vec<_> = messages.iter().filter(|message| (8..=10).contains(&message.position)).collect();
    assert_eq!(missing.len(), 3);
    let client = async_nats::connect(nats.url()).await.expect("connects to NATS");
    let stream = jetstream::new(client).get_stream("SHOPLOG_EVENTS").await.expect("the stream");
    for message in missing {
        stream.delete_message(message.sequence).await.expect("deletes");
    }

    let replica = replica_on(tests::temp_dir(), &nats, None).await;
    let status = feed_until(&replica, "said what is missing", |status| {
        status["failure"].as_str().is_some_and(|failure| failure.contains("positions 8 to 10 are missing"))
    })
    .await;
    assert_eq!(status["checkpoint"], 7, "{status}");
    assert_eq!(status["head"], primary.head(), "it saw how far the stream goes: {status}");
    // It serves what it has, and stays there; not ready, saying why.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(replica.head(), 7);
    replica.caught_up().await;
    let product = replica.get("/api/v1/products/mug-1", Some(ADMIN)).await;
    assert_eq!(product.status, StatusCode::OK, "{product:?}");
    let (ready, detail) = readiness(&replica).await;
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE, "{detail}");
    assert!(detail.contains("at position 7 of") && detail.contains("positions 8 to 10 are missing"), "{detail}");
    let dir = replica.stop_keeping_dir().await;

    let replica = replica_on(dir, &nats, Some(&primary)).await;
    caught_up_with(&replica, &primary).await;
    let status = feed_status(&replica).await;
    assert_eq!(status["failure"], Value::Null, "{status}");
    assert_eq!(readiness(&replica).await, (StatusCode::OK, String::new()));
    let metrics = replica.get("/metrics", Some(VIEWER)).await;
    assert!(metrics.body.as_str().is_some_and(|text| text.contains("replica_filled_total 3")), "{metrics:?}");
    replica.stop().await;
    primary.stop().await;
}

/// The body of `GET /api/v1/events?from=&limit=` asked (by an admin) for the
/// records as stored.
async fn records_as_stored(app: &TestApp, from: u64, limit: u64) -> Vec<u8> {
    let response = app
        .client
        .get(format!("{}/api/v1/events?from={from}&limit={limit}", app.base))
        .bearer_auth(ADMIN)
        .header("accept", "application/vnd.shoplog.records")
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status(), StatusCode::OK);
    response.bytes().await.expect("reads").to_vec()
}

/// The primary answers its log as stored records when asked for them, for a
/// replica to fill a gap with; only to an admin.
#[tokio::test]
async fn the_primary_answers_its_records_as_stored_to_an_admin() {
    let primary = TestApp::spawn().await;
    primary.create_product("mug-1", 1200, 4).await;
    restock(&primary, "mug-1", 3).await;
    let accept = [("accept", "application/vnd.shoplog.records")];
    let reply =
        primary.request(reqwest::Method::GET, "/api/v1/events?from=2&limit=2", Some(ADMIN), None, &accept).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.content_type(), "application/vnd.shoplog.records");
    assert_eq!(reply.headers["x-head-position"], "4");
    let stored = primary.log().read_stored(2, 2).expect("reads");
    let mut expected = Vec::new();
    for record in &stored {
        expected.extend_from_slice(&(record.len() as u32).to_be_bytes());
        expected.extend_from_slice(record);
    }
    let body = records_as_stored(&primary, 2, 2).await;
    assert_eq!(body, expected, "each record as a 4-byte length and its stored bytes");
    let viewer = primary.request(reqwest::Method::GET, "/api/v1/events?from=1", Some(VIEWER), None, &accept).await;
    viewer.problem(403);
    // The replicas' token reads the records as stored, and nothing else.
    const RECORDS: &[(&str, &str)] = &[("accept", "application/vnd.shoplog.records")];
    let as_replica = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        primary.request(reqwest::Method::GET, path, Some(REPLICA), None, headers)
    };
    let records = as_replica("/api/v1/events?from=2&limit=2", RECORDS).await;
    assert_eq!((records.status, records.content_type()), (StatusCode::OK, "application/vnd.shoplog.records"));
    for (path, headers) in [
        ("/api/v1/events?from=1", &[][..]),
        ("/api/v1/streams/product-mug-1/events", RECORDS),
        ("/api/v1/dashboard/sales", &[][..]),
        ("/api/v1/orders", &[][..]),
        ("/admin/projections", &[][..]),
    ] {
        let refused = as_replica(path, headers).await;
        refused.problem(403);
    }
    let restock = primary.post("/api/v1/products/mug-1/restock", Some(REPLICA), json!({"quantity": 1})).await;
    restock.problem(403);
    primary.stop().await;
}

/// The real `shoplog project` binary: it copies the log, serves the read
/// routes, says what it is at the start, and stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_a_replica() {
    let (_nats_dir, nats, primary) = relaying().await;
    shop(&primary, "binary.replica@example.com").await;
    relayed(&primary).await;
    primary.caught_up().await;
    let data = tests::temp_dir();
    let url = nats.url();
    // The primary and its token from a config file.
    let config = tests::temp_dir();
    let file = config.path().join("replica.toml");
    let settings = format!("primary = \"{}\"\nprimary_token = \"{REPLICA}\"\n", primary.base);
    std::fs::write(&file, settings).expect("writes the config file");
    let (data_arg, file_arg) = (data.path().to_str().expect("utf-8"), file.to_str().expect("utf-8"));
    let args = ["--data", data_arg, "--nats", &url, "--admin-token", ADMIN, "--config", file_arg];
    let served = Served::start_replica(&args);
    let said = served.printed.last().cloned().unwrap_or_default();
    assert!(said.ends_with(&format!("gaps filled from {})", primary.base)), "{said}");
    let base = format!("http://{}", served.address);
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("{base}{path}")).bearer_auth(ADMIN).send();
    let head = primary.head();
    let deadline = Instant::now() + RELAY_WAIT;
    loop {
        let entries: Value = get("/admin/projections").await.expect("answers").json().await.expect("json");
        let caught_up = entries.as_array().expect("a list").iter().all(|entry| entry["checkpoint"] == head);
        if caught_up {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never caught up: {entries}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let products: Value = get("/api/v1/products").await.expect("answers").json().await.expect("json");
    assert_eq!(products, primary.get("/api/v1/products", Some(ADMIN)).await.body);
    assert!(served.stop_with("TERM").success(), "a clean stop");
    primary.stop().await;
}

/// NATS stopped and started again while the primary takes commands: the
/// replica says it is not following meanwhile (and stays ready: it caught up
/// before, and its answers carry their position), and then copies everything,
/// once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_goes_on_after_nats_comes_back() {
    let (_nats_dir, mut nats, primary, replica) = replicated("nats.restart@example.com").await;
    assert_eq!(readiness(&replica).await, (StatusCode::OK, String::new()));

    nats.terminate();
    restock(&primary, "mug-1", 5).await;
    feed_until(&replica, "said NATS is gone", |status| status["failure"].is_string()).await;
    assert_eq!(readiness(&replica).await, (StatusCode::OK, String::new()), "out of touch, not stuck");
    nats.restart();
    restock(&primary, "mug-1", 5).await;
    relayed(&primary).await;
    caught_up_with(&replica, &primary).await;
    let status = feed_until(&replica, "said it follows again", |status| status["failure"].is_null()).await;
    assert_eq!(status["lag"], 0, "{status}");
    replica.stop().await;
    primary.stop().await;
}

/// A replica's copy of one shop, pointed at another shop's stream, longer or
/// shorter than its log: the stream's record at the replica's head is not the
/// one it copied, so it applies nothing, stays at its head, and says so, also
/// where the stream holds nothing past its head (it would otherwise look up to
/// date). The same holds for its own primary's log restored to an earlier point
/// and relayed again after a purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_another_history() {
    let (_nats_dir, _nats, primary, replica) = replicated("first.shop@example.com").await;
    let head = replica.head();
    let mut dir = replica.stop_keeping_dir().await;
    primary.stop().await;

    for more in [10, 0] {
        let (_other_dir, other_nats, other) = relaying().await;
        shop(&other, "second.shop@example.com").await;
        restock(&other, "mug-1", more).await;
        relayed(&other).await;
        assert_eq!(other.head() > head, more > 0, "a longer and a shorter history");
        let replica = replica_on(dir, &other_nats, None).await;
        let status = feed_until(&replica, "refused the other history", |status| {
            status["failure"].as_str().is_some_and(|failure| failure.contains("NATS holds another history"))
        })
        .await;
        assert_eq!(status["checkpoint"], head, "{status}");
        let (ready, detail) = readiness(&replica).await;
        assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE, "{detail}");
        assert!(detail.contains("another history"), "{detail}");
        // It stays so: no attempt clears it.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let status = feed_status(&replica).await;
            assert!(status["failure"].as_str().is_some_and(|failure| failure.contains("another history")), "{status}");
        }
        assert_eq!(replica.head(), head, "nothing of the other log applied");
        assert_eq!(replica.log().verify().expect("verifies").events, head);
        dir = replica.stop_keeping_dir().await;
        other.stop().await;
    }
}

/// A stream that holds others' messages (on subjects of its own) between the
/// records: the replica finds where its head's record is (the sequence no
/// longer follows the position) and goes on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_finds_its_head_among_others_messages() {
    let nats_dir = tests::temp_dir();
    let nats = NatsServer::start(nats_dir.path());
    let context = stream_made_before_the_relay(&nats.url(), "shoplog.>", Default::default()).await;
    let primary = TestApp::spawn_with(|config| config.nats = Some(nats.url())).await;
    shop(&primary, "others.between@example.com").await;
    relayed(&primary).await;
    let replica = replica_on(tests::temp_dir(), &nats, None).await;
    copied(&replica, &primary).await;
    let dir = replica.stop_keeping_dir().await;
    // Records, others' messages, records: counted back from the newest record,
    // the sequence lands on a record past the replica's next one.
    restock(&primary, "tea-1", 5).await;
    relayed(&primary).await;
    for _ in 0..5 {
        context.publish("shoplog.audit.x", "not a record".into()).await.expect("publishes").await.expect("stored");
    }
    restock(&primary, "tea-1", 10).await;
    relayed(&primary).await;

    let replica = replica_on(dir, &nats, None).await;
    caught_up_with(&replica, &primary).await;
    assert_eq!(feed_status(&replica).await["failure"], Value::Null);
    replica.stop().await;
    primary.stop().await;
}

/// A gap the primary cannot fill (it refuses the token): the replica stays at
/// the gap and says why, steadily, not only now and then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_the_primary_refuses_to_fill_is_said_steadily() {
    let (_nats_dir, nats, primary) = relaying().await;
    shop(&primary, "refused.fill@example.com").await;
    relayed(&primary).await;
    let client = async_nats::connect(nats.url()).await.expect("connects to NATS");
    let stream = jetstream::new(client).get_stream("SHOPLOG_EVENTS").await.expect("the stream");
    stream.delete_message(8).await.expect("deletes");
    let wrong = api::replica::Primary {
        url: primary.base.clone(),
        token: api::config::Secret::new("not-the-primarys-admin-token"),
    };
    let role = Role::Replica { primary: Some(wrong) };
    let replica = TestApp::serve_dir_as(tests::temp_dir(), role, |config| config.nats = Some(nats.url())).await;
    let says = |status: &Value| {
        status["failure"].as_str().is_some_and(|failure| {
            failure.contains("filling position 8 from the primary failed") && failure.contains("401")
        })
    };
    feed_until(&replica, "said the primary refused", says).await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let status = feed_status(&replica).await;
        assert!(says(&status), "{status}");
        assert_eq!(status["checkpoint"], 7, "{status}");
    }
    replica.stop().await;
    primary.stop().await;
}

/// Wait until the replica has copied the primary's whole log and both have
/// applied it; then its log is the primary's and its read routes answer the same.
async fn caught_up_with(replica: &TestApp, primary: &TestApp) {
    copied(replica, primary).await;
    primary.caught_up().await;
    assert_same_log(replica, primary);
    assert_eq!(read_models(replica).await, read_models(primary).await);
}

/// A replica's data dir is a copy: `serve` refuses it (it would fork the
/// history, and it holds no customer's data), and `project` refuses a
/// primary's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_replicas_dir_and_project_a_primarys() {
    let (_nats_dir, nats, primary, replica) = replicated("roles@example.com").await;
    let dir = replica.stop_keeping_dir().await;
    let config = |data: &std::path::Path| api::Config {
        data: data.to_path_buf(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_token: Some(api::config::Secret::new(ADMIN)),
        viewer_token: Some(api::config::Secret::new(VIEWER)),
        nats: Some(nats.url()),
        ..api::Config::default()
    };
    let refused = api::server::start(&config(dir.path())).await.expect_err("serve refuses a replica's dir");
    assert!(format!("{refused:#}").contains("is a read replica's copy"), "{refused:#}");
    // Nor is it backed up: a restore of it would be a primary without the customers' keys.
    let data = dir.path().to_str().expect("utf-8");
    let out = dir.path().join("replica.backup");
    let backup = crate::cli::shoplog(&["backup", "--data", data, "--out", out.to_str().expect("utf-8")]);
    crate::cli::assert_refused(&backup, "is a read replica's copy");
    assert!(!out.exists(), "no backup file");
    // Nor exported with its secrets (an import would be that primary too), nor
    // written by a forget (its log is a copy: the primary forgets), nothing changed.
    let head = store::EventLog::open(dir.path()).expect("opens").head();
    let out = dir.path().join("replica.export");
    let export = ["export", "--data", data, "--with-secrets", "--out", out.to_str().expect("utf-8")];
    crate::cli::assert_refused(&crate::cli::shoplog(&export), "is a read replica's copy");
    assert!(!out.exists(), "no export file");
    let exported = crate::cli::shoplog(&["export", "--data", data]);
    assert_eq!(exported.status.code(), Some(0), "without secrets it exports: {exported:?}");
    let customer = store::EventLog::open(dir.path())
        .expect("opens")
        .read_all(1, 1000)
        .expect("reads")
        .into_iter()
        .find_map(|event| event.stream.strip_prefix("customer-").map(str::to_owned))
        .expect("a customer's stream");
    let forget = crate::cli::shoplog(&["forget", "--customer", &customer, "--data", data]);
    crate::cli::assert_refused(&forget, "forget the customer on the primary");
    assert_eq!(store::EventLog::open(dir.path()).expect("opens").head(), head, "nothing written");
    let primary_dir = primary.stop_keeping_dir().await;
    let role = Role::Replica { primary: None };
    let refused = api::server::start_as(&config(primary_dir.path()), role).await.expect_err("project refuses");
    assert!(format!("{refused:#}").contains("did not copy"), "{refused:#}");
}

/// Read your own write on a replica: a command's position from the primary,
/// passed as `?min_position=`, waits for the replica's copy and read model to
/// reach it (here NATS is down when the command is answered and back a moment
/// later), where the primary would refuse a position past its head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_waits_for_a_position_it_has_not_copied_yet() {
    let (_nats_dir, mut nats, primary, replica) = replicated("read.your.write@example.com").await;

    nats.terminate();
    let restocked = primary.post("/api/v1/products/mug-1/restock", Some(ADMIN), json!({"quantity": 5})).await;
    assert_eq!(restocked.status, StatusCode::OK, "{restocked:?}");
    let position = restocked.body["position"].as_u64().expect("the command's position");
    assert!(replica.head() < position, "the replica has not copied it");
    let read = {
        let (client, base) = (replica.client.clone(), replica.base.clone());
        tokio::spawn(async move {
            client
                .get(format!("{base}/api/v1/products/mug-1?min_position={position}"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .expect("answers")
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.restart();
    let answer = read.await.expect("the read ends");
    assert_eq!(answer.status(), StatusCode::OK);
    let at: u64 = answer.headers()["x-projection-position"].to_str().expect("text").parse().expect("a position");
    assert!(at >= position, "answered at {at}, before {position}");
    let product: Value = answer.json().await.expect("json");
    let on_primary = primary.get("/api/v1/products/mug-1", Some(ADMIN)).await.body;
    assert_eq!(product, on_primary, "the replica answers as the primary");

    // A position it does not reach is a 503 after the wait's bound, not a hang.
    let far = primary.head() + 1000;
    let asked = Instant::now();
    let answer = replica.get(&format!("/api/v1/products/mug-1?min_position={far}"), Some(ADMIN)).await;
    let waited = asked.elapsed();
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{answer:?}");
    assert!(answer.body["detail"].as_str().is_some_and(|detail| detail.contains(&far.to_string())), "{answer:?}");
    let bound = Duration::from_secs(5); // README: "waits (up to 5 s)"
    assert!(waited >= bound && waited < bound * 3, "answered after {waited:?}, the bound being {bound:?}");
    replica.stop().await;
    primary.stop().await;
}

/// The stream deleted while a replica follows it (the relay's refusal of a
/// stream it cannot take says to delete it): the relay makes it again and goes
/// on from its checkpoint, with sequences from 1; the replica, which nothing
/// delivers to any more, looks at the stream after a quiet while, finds it
/// made again, and goes on from its head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_goes_on_when_the_stream_is_made_again() {
    let (_nats_dir, nats, primary, replica) = replicated("stream.remade@example.com").await;
    let context = jetstream::new(async_nats::connect(nats.url()).await.expect("connects to NATS"));
    context.delete_stream("SHOPLOG_EVENTS").await.expect("deletes the stream");
    restock(&primary, "mug-1", 6).await;
    relayed(&primary).await;
    let first = published(&nats.url()).await.first().map(|message| (message.sequence, message.position));
    assert_eq!(first.map(|(sequence, _)| sequence), Some(1), "a new stream: {first:?}");
    caught_up_with(&replica, &primary).await;
    assert_eq!(feed_status(&replica).await["failure"], Value::Null);
    replica.stop().await;
    primary.stop().await;
}

/// A replica given its primary keeps up when NATS does not have the events
/// (here the replica's NATS is one no relay publishes to; so it is when the
/// primary's relay is down or far behind): with nothing delivered for a while
/// it asks the primary for its head, copies what it lacks from the primary, and
/// its lag counts from the primary's head. So it does with NATS down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_its_primary_keeps_up_when_nats_does_not_have_the_events() {
    let primary = TestApp::spawn().await;
    shop(&primary, "no.relay@example.com").await;
    let nats_dir = tests::temp_dir();
    let mut nats = NatsServer::start(nats_dir.path());
    // Made here as the relay would, and never published to.
    stream_made_before_the_relay(&nats.url(), "shoplog.events.>", Default::default()).await;
    let replica = replica_on(tests::temp_dir(), &nats, Some(&primary)).await;
    // Not ready with what NATS has (nothing) while the primary has more.
    feed_until(&replica, "followed the empty stream", |status| status["failure"].is_null()).await;
    let (ready, detail) = readiness(&replica).await;
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE, "{detail}");
    let at = format!("the replica is catching up: at position 0 of {}", primary.head());
    assert!(detail.starts_with(&at), "{detail}");
    caught_up_with(&replica, &primary).await;
    restock(&primary, "tea-1", 3).await;
    caught_up_with(&replica, &primary).await;
    let status = feed_status(&replica).await;
    assert_eq!((status["lag"].clone(), status["failure"].clone()), (json!(0), Value::Null), "{status}");
    let metrics = replica.get("/metrics", Some(VIEWER)).await;
    let filled = format!("replica_filled_total {}", primary.head());
    assert!(metrics.body.as_str().is_some_and(|text| text.contains(&filled)), "{metrics:?}");

    nats.terminate();
    feed_until(&replica, "said NATS is gone", |status| status["failure"].is_string()).await;
    restock(&primary, "tea-1", 2).await;
    caught_up_with(&replica, &primary).await;
    // Restarted with NATS still down, at the primary's head: ready, the primary
    // telling it is caught up.
    let dir = replica.stop_keeping_dir().await;
    let replica = replica_on(dir, &nats, Some(&primary)).await;
    caught_up_with(&replica, &primary).await;
    replica.stop().await;
    primary.stop().await;
}

/// A new replica on a stream that was purged (it took messages and holds none)
/// is not ready with nothing copied: the log may be anywhere. The primary's
/// next record shows the gap before it, named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_on_a_purged_stream_is_not_ready_until_it_knows_where_the_log_is() {
    let (_nats_dir, nats, primary) = relaying().await;
    shop(&primary, "purged@example.com").await;
    relayed(&primary).await;
    let context = jetstream::new(async_nats::connect(nats.url()).await.expect("connects to NATS"));
    context.get_stream("SHOPLOG_EVENTS").await.expect("the stream").purge().await.expect("purges");
    let head = primary.head();
    let replica = replica_on(tests::temp_dir(), &nats, None).await;
    feed_until(&replica, "said it waits", |status| {
        status["failure"].as_str().is_some_and(|failure| failure.contains("holds none (purged)"))
    })
    .await;
    for _ in 0..10 {
        assert_eq!(readiness(&replica).await.0, StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    restock(&primary, "tea-1", 1).await;
    let missing = format!("positions 1 to {head} are missing from NATS");
    feed_until(&replica, "named the gap", |status| status["failure"].as_str().is_some_and(|f| f.contains(&missing)))
        .await;
    assert_eq!(readiness(&replica).await.0, StatusCode::SERVICE_UNAVAILABLE);
    replica.stop().await;
    primary.stop().await;
}

/// A message another publisher sent to the relay's subjects stops the relay
/// (which says which message to delete) and the replicas' NATS feed; a replica
/// with its primary keeps up from the primary meanwhile, ready, saying what
/// stopped NATS. Once the message is deleted, the relay goes on, and the
/// stream holds every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_message_in_the_stream_stops_the_relay_and_a_replica_keeps_up_from_its_primary() {
    let (_nats_dir, nats, primary) = relaying().await;
    shop(&primary, "stray@example.com").await;
    relayed(&primary).await;
    let replica = replica_on(tests::temp_dir(), &nats, Some(&primary)).await;
    caught_up_with(&replica, &primary).await;

    let context = jetstream::new(async_nats::connect(nats.url()).await.expect("connects to NATS"));
    let stray = context.publish("shoplog.events.product.test", "a test".into()).await.expect("publishes");
    let stray = stray.await.expect("stored").sequence;
    restock(&primary, "tea-1", 3).await;
    let said = format!("delete it (nats stream rmm SHOPLOG_EVENTS {stray})");
    let stopped = entry_until(&primary, "relay", "named the stray message", |status| {
        status["failure"].as_str().is_some_and(|failure| failure.contains(&said))
    })
    .await;
    assert!(stopped["lag"].as_u64().is_some_and(|lag| lag > 0), "{stopped}");
    caught_up_with(&replica, &primary).await;
    let feed = feed_until(&replica, "said what stopped NATS", |status| {
        status["failure"].as_str().is_some_and(|failure| failure.contains("no log's"))
    })
    .await;
    assert_eq!(feed["lag"], 0, "{feed}");
    assert_eq!(readiness(&replica).await.0, StatusCode::OK, "kept up by its primary");

    context.get_stream("SHOPLOG_EVENTS").await.expect("the stream").delete_message(stray).await.expect("deletes");
    relayed(&primary).await;
    restock(&primary, "tea-1", 1).await;
    relayed(&primary).await;
    let positions: Vec<u64> = published(&nats.url()).await.iter().map(|message| message.position).collect();
    assert_eq!(positions, (1..=primary.head()).collect::<Vec<_>>(), "every record once, in order");
    caught_up_with(&replica, &primary).await;

    // Another stray message, and the primary out of reach: stuck, not ready.
    let stray = context.publish("shoplog.events.product.test", "a test".into()).await.expect("publishes");
    stray.await.expect("stored");
    primary.stop().await;
    let deadline = Instant::now() + RELAY_WAIT;
    loop {
        let status = feed_status(&replica).await;
        let (ready, detail) = readiness(&replica).await;
        if ready == StatusCode::SERVICE_UNAVAILABLE
            && status["failure"].as_str().is_some_and(|f| f.contains("no log's"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "still ready with its primary gone: {detail} {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    replica.stop().await;
}

/// Given the primary's token secret, a replica takes the tokens the primary's
/// logins gave (a customer reads their own orders there), though it holds none
/// of the customers' data: its audit routes show a registration withheld, not
/// forgotten. Once the primary forgets the customer, the replica shows them
/// forgotten and refuses their token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_customers_tokens_and_tells_them_from_forgotten_ones() {
    let secret = || Some(api::config::Secret::new("a-token-secret-the-primary-and-its-replica-share"));
    let nats_dir = tests::temp_dir();
    let nats = NatsServer::start(nats_dir.path());
    let primary = TestApp::spawn_with(|config| {
        config.nats = Some(nats.url());
        config.token_secret = secret();
    })
    .await;
    primary.create_product("mug-1", 1200, 40).await;
    let email = "replica.customer@example.com";
    let customer_id = primary.register(email).await;
    let token = primary.login(email).await;
    primary.place_order(&token, "mug-1", 2).await;
    let gone_id = primary.register("gone.customer@example.com").await;
    let forgot = primary.post(&format!("/admin/customers/{gone_id}/forget"), Some(ADMIN), json!({})).await;
    assert!(forgot.status.is_success(), "{forgot:?}");
    relayed(&primary).await;
    let replica = TestApp::serve_dir_as(tests::temp_dir(), Role::Replica { primary: None }, |config| {
        config.nats = Some(nats.url());
        config.token_secret = secret();
    })
    .await;
    copied(&replica, &primary).await;
    // In one page, each customer's events as that customer stands.
    let page = replica.get("/api/v1/events?from=1&limit=1000", Some(ADMIN)).await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    let sealed: Vec<&Value> =
        page.body["events"].as_array().expect("events").iter().filter(|e| e["subject"].is_string()).collect();
    for (subject, forgotten, withheld) in [(&customer_id, false, true), (&gone_id, true, false)] {
        let theirs: Vec<_> = sealed.iter().filter(|event| event["subject"] == subject.as_str()).collect();
        assert!(!theirs.is_empty(), "no sealed event of {subject} in {sealed:?}");
        for event in theirs {
            let shown = (event["forgotten"] == json!(true), event["withheld"] == json!(true));
            assert_eq!(shown, (forgotten, withheld), "{event}");
        }
    }

    let orders = replica.get("/api/v1/orders", Some(&token)).await;
    assert_eq!(orders.status, StatusCode::OK, "{orders:?}");
    assert_eq!(orders.body, primary.get("/api/v1/orders", Some(&token)).await.body);
    assert_eq!(orders.body["items"].as_array().map(Vec::len), Some(1), "{orders:?}");
    let stream = format!("/api/v1/streams/customer-{customer_id}/events");
    let registration = replica.get(&stream, Some(ADMIN)).await.body["events"][0].clone();
    let shown = [&registration["type"], &registration["forgotten"], &registration["withheld"], &registration["data"]];
    assert_eq!(shown, [&json!("CustomerRegistered"), &json!(false), &json!(true), &Value::Null], "{registration}");
    let on_primary = primary.get(&stream, Some(ADMIN)).await.body["events"][0].clone();
    assert_eq!(on_primary["data"]["email"], email, "the primary reads it: {on_primary}");
    // So does the live feed show it, to the admin too.
    let mut feed = replica
        .client
        .get(format!("{}/api/v1/events/live?from=1", replica.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("connects");
    let mut sent = String::new();
    let registration = loop {
        // Complete events only: each ends with a blank line.
        let complete = &sent[..sent.rfind("\n\n").map_or(0, |end| end + 2)];
        let block = complete.split("\n\n").find(|block| block.lines().any(|line| line == "event: CustomerRegistered"));
        if let Some(data) = block.and_then(|block| block.lines().find_map(|line| line.strip_prefix("data:"))) {
            break serde_json::from_str::<Value>(data.trim()).expect("json");
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), feed.chunk()).await.expect("an event within 10 s");
        sent.push_str(&String::from_utf8_lossy(&chunk.expect("reads").expect("the feed stays open")));
    };
    assert_eq!(
        (&registration["forgotten"], &registration["withheld"]),
        (&json!(false), &json!(true)),
        "{registration}"
    );
    drop(feed);

    // `shoplog forget` pointed at the replica says where to forget.
    let args = ["forget", "--customer", &customer_id, "--server", &replica.base, "--token", ADMIN].map(str::to_owned);
    let output = tokio::task::spawn_blocking(move || crate::cli::shoplog(&args.each_ref().map(String::as_str)))
        .await
        .expect("the binary ran");
    crate::cli::assert_refused(&output, "is a read replica: forget the customer on the primary");
    let forgot = primary.post(&format!("/admin/customers/{customer_id}/forget"), Some(ADMIN), json!({})).await;
    assert!(forgot.status.is_success(), "{forgot:?}");
    relayed(&primary).await;
    copied(&replica, &primary).await;
    assert_eq!(replica.get("/api/v1/orders", Some(&token)).await.status, StatusCode::UNAUTHORIZED);
    let registration = replica.get(&stream, Some(ADMIN)).await.body["events"][0].clone();
    assert_eq!((&registration["forgotten"], &registration["withheld"]), (&json!(true), &Value::Null), "{registration}");
    replica.stop().await;
    primary.stop().await;
}
