//! The relay to NATS JetStream (DESIGN §4), against a real `nats-server`: every
//! event published once, in position order, as stored, with its headers; commands
//! go on while NATS is down and the relay catches up; after a kill or a restore it
//! goes on where the stream ends, sending nothing twice; another log's stream is
//! refused. A test that cannot find `nats-server` fails, saying how to install it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::NatsServer;

use crate::api::{ADMIN, TestApp};
use crate::cli::Served;

/// The longest wait for the relay to reach the head.
pub(crate) const RELAY_WAIT: Duration = Duration::from_secs(45);

/// One message of `SHOPLOG_EVENTS`, as a replica reads it.
#[derive(Debug)]
pub(crate) struct Published {
    pub sequence: u64,
    subject: String,
    pub position: u64,
    message_id: String,
    event_type: String,
    schema_version: String,
    stream: String,
    payload: Vec<u8>,
}

/// Every message the stream holds, in its order (a deleted one is not there).
pub(crate) async fn published(url: &str) -> Vec<Published> {
    let client = async_nats::connect(url).await.expect("connects to NATS");
    let context = jetstream::new(client);
    let mut stream = context.get_stream("SHOPLOG_EVENTS").await.expect("the relay made the stream");
    let state = stream.info().await.expect("the stream's state").state.clone();
    let mut messages = Vec::new();
    for sequence in state.first_sequence.max(1)..=state.last_sequence {
        let Ok(message) = stream.get_raw_message(sequence).await else { continue };
        let header = |name: &str| {
            message.headers.get(name).unwrap_or_else(|| panic!("message {sequence} has no {name}")).as_str().to_owned()
        };
        messages.push(Published {
            sequence,
            subject: message.subject.to_string(),
            position: header("Shoplog-Position").parse().expect("a position"),
            message_id: header("Nats-Msg-Id"),
            event_type: header("Shoplog-Event-Type"),
            schema_version: header("Shoplog-Schema-Version"),
            stream: header("Shoplog-Stream"),
            payload: message.payload.to_vec(),
        });
    }
    assert_eq!(messages.len() as u64, state.messages, "every message the stream counts was read");
    messages
}

/// The entry named `name` of `/admin/projections`.
pub(crate) async fn projection_entry(app: &TestApp, name: &str) -> Value {
    let reply = app.get("/admin/projections", Some(ADMIN)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let entries = reply.body.as_array().expect("a list").clone();
    entries.into_iter().find(|entry| entry["name"] == name).unwrap_or_else(|| panic!("{name} is not listed"))
}

/// Wait until `ready` holds of the entry `name` of `/admin/projections`; the entry.
pub(crate) async fn entry_until(app: &TestApp, name: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + RELAY_WAIT;
    loop {
        let status = projection_entry(app, name).await;
        if ready(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "the {name} never {what}: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The relay's entry of `/admin/projections`.
pub(crate) async fn relay_status(app: &TestApp) -> Value {
    projection_entry(app, "relay").await
}

/// A `nats-server` (its data in the returned dir) and a shop relaying to it.
pub(crate) async fn relaying() -> (tempfile::TempDir, NatsServer, TestApp) {
    let dir = tests::temp_dir();
    let nats = NatsServer::start(dir.path());
    let app = TestApp::spawn_with(|config| config.nats = Some(nats.url())).await;
    (dir, nats, app)
}

/// Wait until `ready` holds of the relay's status; the status.
async fn relay_until(app: &TestApp, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    entry_until(app, "relay", what, ready).await
}

/// Wait until JetStream acknowledged the whole log.
pub(crate) async fn relayed(app: &TestApp) -> Value {
    let head = app.head();
    relay_until(app, "reached the head", |status| status["checkpoint"] == head && status["lag"] == 0).await
}

/// Products, a customer (sealed personal data), a cart and an order, restocks.
pub(crate) async fn shop(app: &TestApp, email: &str) {
    for sku in ["mug-1", "tea-1"] {
        app.create_product(sku, 1200, 40).await;
    }
    let token = app.customer(email).await;
    app.place_order(&token, "mug-1", 2).await;
    restock(app, "tea-1", 30).await;
}

/// `times` restocks of one unit of `sku`, each answered 200.
pub(crate) async fn restock(app: &TestApp, sku: &str, times: usize) {
    for _ in 0..times {
        let restocked = app.post(&format!("/api/v1/products/{sku}/restock"), Some(ADMIN), json!({"quantity": 1})).await;
        assert_eq!(restocked.status, StatusCode::OK, "{restocked:?}");
    }
}

/// Every record of `log` up to `head`, as stored: (position, event id, event
/// type, stream, bytes).
pub(crate) async fn stored_records(
    log: &store::EventLog,
    head: u64,
) -> Vec<(u64, uuid::Uuid, String, String, Vec<u8>)> {
    let mut stored = Vec::new();
    let mut subscription = log.subscribe(1);
    while subscription.next_position() <= head {
        subscription
            .next_stored(1024, |record| {
                let (stream, event_type) = (record.stream.to_owned(), record.event_type.to_owned());
                stored.push((record.position, record.event_id, event_type, stream, record.bytes.to_vec()));
                Ok::<(), store::StoreError>(())
            })
            .await
            .expect("reads the log");
    }
    stored
}

/// Every event of `log` published once, in position order, each message the
/// record as stored with the headers and subject of DESIGN §4.
async fn assert_published_as_stored(log: &store::EventLog, url: &str) {
    let messages = published(url).await;
    let head = log.head();
    let held: std::collections::BTreeMap<u64, u64> =
        messages.iter().map(|message| (message.position, message.sequence)).collect();
    let missing: Vec<u64> = (1..=head).filter(|position| !held.contains_key(position)).collect();
    let around = |position: u64| held.range(position.saturating_sub(2)..=position + 2).collect::<Vec<_>>();
    assert_eq!(
        messages.len() as u64,
        head,
        "one message per event, none twice; missing {missing:?}; (position, sequence) around the first: {:?}",
        missing.first().map(|first| around(*first))
    );
    let stored = stored_records(log, head).await;
    let recorded = log.read_all(1, head as usize).expect("reads the log");
    for ((message, (position, event_id, event_type, stream, bytes)), recorded) in
        messages.iter().zip(&stored).zip(&recorded)
    {
        assert_eq!(message.position, *position, "message {} is out of position order", message.sequence);
        assert_eq!(message.message_id, event_id.to_string());
        assert_eq!((&message.event_type, &message.stream), (event_type, stream));
        assert_eq!(message.schema_version, recorded.schema_version.to_string(), "at {position}");
        let (category, id) = stream.split_once('-').expect("a shop stream");
        assert_eq!(message.subject, format!("shoplog.events.{category}.{id}"));
        assert!(message.payload == *bytes, "the payload of position {position} is not the record as stored");
    }
}

/// Wait until JetStream has forgotten the ids of a [`stream_that_keeps_repeats`]
/// (it drops them on a timer after the window of 100 ms), with room to spare.
async fn past_the_deduplication_window() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

/// A stream made before the relay makes it, whose deduplication window is
/// short: a message sent twice then shows as two, where the relay's own window
/// of two minutes would hide it.
async fn stream_that_keeps_repeats(url: &str) {
    let short = jetstream::stream::Config { duplicate_window: Duration::from_millis(100), ..Default::default() };
    stream_made_before_the_relay(url, "shoplog.events.>", short).await;
}

/// `SHOPLOG_EVENTS` made by someone else before the relay, taking `subjects`,
/// with `config`'s other settings (file storage); a JetStream client on `url`.
pub(crate) async fn stream_made_before_the_relay(
    url: &str,
    subjects: &str,
    config: jetstream::stream::Config,
) -> jetstream::Context {
    let context = jetstream::new(async_nats::connect(url).await.expect("connects to NATS"));
    let config = jetstream::stream::Config {
        name: "SHOPLOG_EVENTS".to_owned(),
        subjects: vec![subjects.to_owned()],
        storage: jetstream::stream::StorageType::File,
        ..config
    };
    context.create_stream(config).await.expect("makes the stream");
    context
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_every_event_once_in_position_order_as_stored() {
    let (_dir, nats, app) = relaying().await;
    let email = "relayed.shopper@example.com";
    shop(&app, email).await;
    let status = relayed(&app).await;
    assert_eq!(status["failure"], Value::Null, "{status}");
    assert_published_as_stored(app.log(), &nats.url()).await;
    let messages = published(&nats.url()).await;
    assert!(messages.iter().any(|message| message.stream.starts_with("customer-")), "the customer's events go too");
    assert!(
        !messages.iter().any(|message| message.payload.windows(email.len()).any(|window| window == email.as_bytes())),
        "sealed payloads travel sealed: no email in clear"
    );
    let metrics = app.get("/metrics", None).await.body;
    let metrics = metrics.as_str().expect("text");
    for line in ["relay_lag_events 0", "relay_up 1", &format!("relay_checkpoint_position {}", app.head())] {
        assert!(metrics.lines().any(|metric| metric == line), "{line} not in /metrics");
    }
    app.stop().await;
}

/// NATS down at the start, and again later: every command is answered as
/// before, `/admin/projections` says why the relay waits and how far behind it
/// is, and once NATS is back the relay catches up, each event once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_go_on_while_nats_is_down_and_the_relay_catches_up() {
    let dir = tests::temp_dir();
    let mut nats = NatsServer::start(dir.path());
    nats.kill();
    let app = TestApp::spawn_with(|config| config.nats = Some(nats.url())).await;
    app.create_product("mug-1", 1200, 40).await;
    restock(&app, "mug-1", 5).await;
    let head = app.head();
    let waiting = relay_until(&app, "said NATS is down", |status| {
        status["failure"].as_str().is_some_and(|failure| failure.contains("cannot connect to NATS"))
    })
    .await;
    assert_eq!((waiting["checkpoint"].as_u64(), waiting["lag"].as_u64()), (Some(0), Some(head)), "{waiting}");
    assert_eq!(app.get("/readyz", None).await.status, StatusCode::OK, "NATS is not needed to serve");
    let metrics = app.get("/metrics", None).await.body;
    assert!(metrics.as_str().is_some_and(|text| text.lines().any(|line| line == "relay_up 0")), "{metrics}");

    nats.restart();
    let caught_up = relayed(&app).await;
    assert_eq!(caught_up["failure"], Value::Null, "{caught_up}");

    // Down again while nothing is written: the status says so at once (an
    // alert on a quiet shop's outage); then publishes go unanswered, commands do not.
    nats.kill();
    let lost = relay_until(&app, "noticed that NATS went away", |status| {
        status["failure"].as_str().is_some_and(|failure| failure.contains("is lost; reconnecting"))
    })
    .await;
    assert_eq!(lost["lag"], 0, "{lost}");
    let metrics = app.get("/metrics", None).await.body;
    assert!(metrics.as_str().is_some_and(|text| text.lines().any(|line| line == "relay_up 0")), "{metrics}");
    restock(&app, "mug-1", 5).await;
    let waiting = relay_status(&app).await;
    assert!(waiting["lag"].as_u64().is_some_and(|lag| lag > 0), "{waiting}");
    nats.restart();
    relayed(&app).await;
    assert_published_as_stored(app.log(), &nats.url()).await;
    app.stop().await;
}

/// NATS stopped (its data kept) and started again twice while commands pour
/// in: publishes the client had written to the dropped connection are
/// lost, and those it still queued go out on the next one, mixed with the next
/// attempt's. JetStream stores a message only right after the one before it
/// (each names that one), so the relay's next attempt sends the lost ones
/// again: every position once, in order, the stream ending at the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_under_load_keeps_the_stream_in_order() {
    let (_dir, mut nats, app) = relaying().await;
    app.create_product("mug-1", 1200, 4).await;
    let loading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let load = {
        let (client, base, loading) = (app.client.clone(), app.base.clone(), std::sync::Arc::clone(&loading));
        tokio::spawn(async move {
            let started = Instant::now();
            let mut sent = 0;
            // Bounded in count and time, whatever the test does.
            while loading.load(std::sync::atomic::Ordering::Relaxed)
                && sent < 20_000
                && started.elapsed() < Duration::from_secs(30)
            {
                let restocked = client
                    .post(format!("{base}/api/v1/products/mug-1/restock"))
                    .bearer_auth(ADMIN)
                    .json(&json!({"quantity": 1}))
                    .send()
                    .await
                    .expect("answers");
                assert_eq!(restocked.status(), StatusCode::OK);
                sent += 1;
            }
            sent
        })
    };
    for down_ms in [300, 50] {
        tokio::time::sleep(Duration::from_millis(700)).await;
        // Not SIGKILL: JetStream then loses messages it acknowledged (with
        // their sequences, or from inside the stream), which only a consumer
        // can fill (DESIGN §4); here the relay's part is under test.
        nats.terminate();
        tokio::time::sleep(Duration::from_millis(down_ms)).await;
        nats.restart();
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    loading.store(false, std::sync::atomic::Ordering::Relaxed);
    let sent = load.await.expect("the load ends");
    assert!(sent > 0, "no command went through");
    // What a restarted JetStream lost off its tail after the relay last read it
    // shows at its next look (at once with a refused publish; idle, within 5 s).
    let head = app.head();
    let deadline = Instant::now() + RELAY_WAIT;
    let messages = loop {
        let messages = published(&nats.url()).await;
        if messages.last().is_some_and(|last| last.position == head) || Instant::now() > deadline {
            break messages;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    relayed(&app).await;
    // Every position once, in order, each as stored, ending at the head.
    assert_eq!(messages.last().map(|last| last.position), Some(head), "the stream ends at the head");
    let stored: std::collections::HashMap<u64, Vec<u8>> =
        stored_records(app.log(), head).await.into_iter().map(|(position, _, _, _, bytes)| (position, bytes)).collect();
    for (at, message) in messages.iter().enumerate() {
        assert_eq!(
            message.position,
            at as u64 + 1,
            "message {} (stream sequence {}): a position missing, out of order or twice",
            at + 1,
            message.sequence
        );
        assert!(stored.get(&message.position) == Some(&message.payload), "position {} as stored", message.position);
    }
    app.stop().await;
}

/// A data dir restored from a backup holds no relay checkpoint (a backup holds
/// the log only): the relay goes on after the last message the stream holds,
/// which is this log's record there, and sends nothing twice. A log whose
/// records differ is refused: the stream stays as it was, commands go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_log_goes_on_where_the_stream_ends_and_another_log_is_refused() {
    let dir = tests::temp_dir();
    let nats = NatsServer::start(dir.path());
    stream_that_keeps_repeats(&nats.url()).await;
    let app = TestApp::spawn_with(|config| config.nats = Some(nats.url())).await;
    shop(&app, "restored.shopper@example.com").await;
    relayed(&app).await;
    let data = app.stop_keeping_dir().await;
    let backup = dir.path().join("shop.backup");
    let restored = tests::temp_dir();
    for args in [
        vec!["backup", "--data", path(data.path()), "--out", path(&backup)],
        vec!["restore", "--in", path(&backup), "--data", path(restored.path())],
    ] {
        let output = Command::new(crate::cli::SHOPLOG).args(&args).output().expect("runs shoplog");
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    // Past the stream's deduplication window: a message sent again would stay.
    past_the_deduplication_window().await;
    let app = TestApp::serve_dir_with(restored, |config| config.nats = Some(nats.url())).await;
    relayed(&app).await;
    restock(&app, "mug-1", 3).await;
    relayed(&app).await;
    assert_published_as_stored(app.log(), &nats.url()).await;
    let held = published(&nats.url()).await.len();
    app.stop().await;

    // Another shop's log: shorter than the stream, then as long, its records
    // never those the stream holds.
    let other = TestApp::spawn_with(|config| config.nats = Some(nats.url())).await;
    other.create_product("other-1", 100, 1).await;
    let refused = relay_until(&other, "refused a stream past its head", |status| {
        status["failure"].as_str().is_some_and(|failure| {
            failure.contains("holds another log's events") && failure.contains("past this log's head")
        })
    })
    .await;
    assert_eq!(refused["checkpoint"], 0, "{refused}");
    while other.head() < held as u64 {
        restock(&other, "other-1", 1).await;
    }
    let refused = relay_until(&other, "refused a stream of other records", |status| {
        status["failure"].as_str().is_some_and(|failure| failure.contains("is not this log's record there"))
    })
    .await;
    assert_eq!(refused["checkpoint"], 0, "{refused}");
    assert_eq!(published(&nats.url()).await.len(), held, "nothing of the other log was published");
    other.stop().await;
}

/// The real `shoplog serve`, SIGKILLed right after its last answer while the
/// relay is still publishing, then started again: the relay goes on after the
/// stream's last message, so every event is in the stream once, in order (the
/// stream's short deduplication window would keep a repeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_the_relay_goes_on_where_the_stream_ends() {
    let dir = tests::temp_dir();
    let nats = NatsServer::start(&dir.path().join("nats"));
    stream_that_keeps_repeats(&nats.url()).await;
    let data = dir.path().join("data");
    let url = nats.url();
    let args = ["--data", path(&data), "--nats", &url];
    let env = [("SHOPLOG_ADMIN_TOKEN", ADMIN)];
    // The last restock's position.
    let restocks = |served: &Served, count: usize| {
        let mut position = 0;
        for _ in 0..count {
            let (status, body) = served.post("/api/v1/products/mug-1/restock", ADMIN, json!({"quantity": 1}));
            assert_eq!(status, 200, "{body}");
            position = body["position"].as_u64().expect("a position");
        }
        position
    };
    let mut served = tokio::task::block_in_place(|| Served::start(&args, &env));
    tokio::task::block_in_place(|| {
        let (status, body) = served.post(
            "/api/v1/products",
            ADMIN,
            json!({"sku": "mug-1", "name": "Mug", "price_cents": 1200, "initial_stock": 5}),
        );
        assert_eq!(status, 201, "{body}");
        restocks(&served, 60);
        served.kill();
    });
    // Past the deduplication window: a message sent again would stay.
    past_the_deduplication_window().await;
    let (served, head) = tokio::task::block_in_place(|| {
        let served = Served::start(&args, &env);
        let head = restocks(&served, 3);
        (served, head)
    });
    let deadline = Instant::now() + RELAY_WAIT;
    while (published(&url).await.len() as u64) < head {
        assert!(Instant::now() < deadline, "the relay never published the whole log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped = tokio::task::block_in_place(|| served.stop_with("TERM"));
    assert!(stopped.success(), "{stopped:?}");
    let log = store::EventLog::open(&data).expect("opens");
    assert_eq!(log.head(), head);
    assert_published_as_stored(&log, &url).await;
}

/// Messages JetStream acknowledged and then lost (here deleted, as a power cut
/// before its fsync would lose them, past the deduplication window that would
/// drop them again) are sent again at the next connection, so the stream has no
/// gap; a stream the operator purged is not filled again: the relay goes on from
/// its checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_jetstream_lost_are_sent_again_and_a_purged_stream_is_not_refilled() {
    let dir = tests::temp_dir();
    let nats = NatsServer::start(dir.path());
    stream_that_keeps_repeats(&nats.url()).await;
    let app = TestApp::spawn_with(|config| config.nats = Some(nats.url())).await;
    shop(&app, "lost.shopper@example.com").await;
    relayed(&app).await;
    let data = app.stop_keeping_dir().await;
    let head = store::EventLog::open(data.path()).expect("opens").head();
    let client = async_nats::connect(nats.url()).await.expect("connects to NATS");
    let stream = jetstream::new(client).get_stream("SHOPLOG_EVENTS").await.expect("the stream");
    for sequence in head - 2..=head {
        assert!(stream.delete_message(sequence).await.expect("deletes"), "message {sequence} was there");
    }
    assert_eq!(published(&nats.url()).await.len() as u64, head - 3);
    past_the_deduplication_window().await;

    let app = TestApp::serve_dir_with(data, |config| config.nats = Some(nats.url())).await;
    // Its checkpoint says the head until it has read the stream: wait for the stream.
    let deadline = Instant::now() + RELAY_WAIT;
    while (published(&nats.url()).await.len() as u64) < head {
        assert!(Instant::now() < deadline, "the lost messages were never sent again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relayed(&app).await;
    assert_published_as_stored(app.log(), &nats.url()).await;

    stream.purge().await.expect("purges");
    restock(&app, "tea-1", 2).await;
    relayed(&app).await;
    let after_purge: Vec<u64> = published(&nats.url()).await.iter().map(|message| message.position).collect();
    assert_eq!(after_purge, vec![head + 1, head + 2], "only what came after the purge");
    app.stop().await;
}

/// A shop that relayed its events, then stopped with its relay checkpoint 20
/// positions back (what a kill leaves: the tree is durable only with the log's
/// next checkpoint), its stream purged, and started again: NATS's dir, NATS,
/// the shop and its head (see [`Purged`]).
async fn restarted_behind_a_purged_stream(purged: Purged) -> (tempfile::TempDir, NatsServer, TestApp, u64) {
    let repeats_forgotten = purged == Purged::PastTheWindow;
    let dir = tests::temp_dir();
    let nats = NatsServer::start(dir.path());
    let context = if repeats_forgotten {
        stream_that_keeps_repeats(&nats.url()).await;
        jetstream::new(async_nats::connect(nats.url()).await.expect("connects to NATS"))
    } else {
        let window = jetstream::stream::Config { duplicate_window: PURGED_WINDOW, ..Default::default() };
        stream_made_before_the_relay(&nats.url(), "shoplog.>", window).await
    };
    let app = TestApp::spawn_with(|config| config.nats = Some(nats.url())).await;
    shop(&app, "purged.shopper@example.com").await;
    relayed(&app).await;
    if purged == Purged::WithinTheWindowAfterOthers {
        context.publish("shoplog.audit.x", "not a record".into()).await.expect("publishes").await.expect("stored");
    }
    let data = app.stop_keeping_dir().await;
    let head = {
        let log = store::EventLog::open(data.path()).expect("opens");
        let relay = log.open_tree("relay").expect("the relay's tree");
        relay.insert(b"nats.checkpoint", &(log.head() - 20).to_be_bytes()).expect("writes");
        log.head()
    };
    context.get_stream("SHOPLOG_EVENTS").await.expect("the stream").purge().await.expect("purges");
    if repeats_forgotten {
        past_the_deduplication_window().await;
    }
    let app = TestApp::serve_dir_with(data, |config| config.nats = Some(nats.url())).await;
    (dir, nats, app, head)
}

/// How the stream was purged under a relay that restarts behind it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Purged {
    /// The stream's deduplication window (100 ms) has passed at the restart.
    PastTheWindow,
    /// JetStream still knows every event id the relay sent (a window of
    /// [`PURGED_WINDOW`]), and the last message it took before the purge was
    /// someone else's, on a subject of the stream's own.
    WithinTheWindowAfterOthers,
    /// The same, the last message it took the relay's own: JetStream goes on
    /// taking publishes that name that message's id as the last one.
    WithinTheWindowAfterOurs,
}

/// Wait until the relay's checkpoint is `head`, failing if JetStream refuses
/// anything on the way.
async fn relayed_without_a_refusal(app: &TestApp, head: u64) {
    let deadline = Instant::now() + RELAY_WAIT;
    loop {
        let status = relay_status(app).await;
        assert!(!status["failure"].as_str().is_some_and(|failure| failure.contains("JetStream")), "{status}");
        if status["checkpoint"] == head {
            return;
        }
        assert!(Instant::now() < deadline, "the relay never reached the head: {status}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A checkpoint a kill left behind, then a purge: the relay goes on from its
/// checkpoint into the empty stream (never everything again), each publish
/// stored in turn, no refusal on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_and_a_purge_the_relay_goes_on_from_its_checkpoint() {
    let (_dir, nats, app, head) = restarted_behind_a_purged_stream(Purged::PastTheWindow).await;
    relayed_without_a_refusal(&app, head).await;
    restock(&app, "tea-1", 2).await;
    relayed_without_a_refusal(&app, head + 2).await;
    let positions: Vec<u64> = published(&nats.url()).await.iter().map(|message| message.position).collect();
    assert_eq!(positions, (head - 19..=head + 2).collect::<Vec<_>>(), "from the checkpoint on, once each");
    app.stop().await;
}

/// The deduplication window of the stream purged within it (JetStream's default is two minutes).
const PURGED_WINDOW: Duration = Duration::from_secs(3);

/// The same within JetStream's deduplication window: the first record past the
/// checkpoint is acknowledged as a duplicate of a message the purge removed
/// (JetStream took its event id before), so it is in no stream. The relay does
/// not count it as published (that left a hole, with a lag of 0): it says why
/// and sends it again until the window has passed. Then the stream holds every
/// record from the checkpoint on, once each, as outside the window (the first
/// one stored follows the stream's last sequence: the last message JetStream
/// took was someone else's).
///
/// Commands go on within the window: the records after the first are not stored
/// after the hole it would leave, though JetStream still takes the last event
/// id it stored (purged since) as the stream's last one (the publishes name the
/// stream's last sequence too, which nothing moved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_and_a_purge_within_the_deduplication_window_the_relay_waits_it_out() {
    for purged in [Purged::WithinTheWindowAfterOthers, Purged::WithinTheWindowAfterOurs] {
        let (_dir, nats, app, head) = restarted_behind_a_purged_stream(purged).await;
        let waiting = relay_until(&app, "said it waits for the window", |status| {
            status["failure"].as_str().is_some_and(|failure| failure.contains("no longer holds (purged or deleted)"))
        })
        .await;
        assert_eq!(waiting["checkpoint"], head - 20, "{purged:?}: nothing counted as published: {waiting}");
        restock(&app, "tea-1", 2).await;
        let still = relay_status(&app).await;
        assert!(still["checkpoint"].as_u64().is_some_and(|checkpoint| checkpoint < head - 19), "{purged:?}: {still}");
        relayed(&app).await;
        let positions: Vec<u64> = published(&nats.url()).await.iter().map(|message| message.position).collect();
        assert_eq!(
            positions,
            (head - 19..=head + 2).collect::<Vec<_>>(),
            "{purged:?}: from the checkpoint on, once each"
        );
        app.stop().await;
    }
}

/// A stream of that name made by someone else that does not take the relay's
/// subjects is refused, naming them (its publishes would go to another stream,
/// or to none); commands go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_does_not_take_the_relays_subjects_is_refused() {
    let dir = tests::temp_dir();
    let nats = NatsServer::start(dir.path());
    stream_made_before_the_relay(&nats.url(), "elsewhere.>", Default::default()).await;
    let app = TestApp::spawn_with(|config| config.nats = Some(nats.url())).await;
    app.create_product("mug-1", 1200, 4).await;
    let refused = relay_until(&app, "refused the stream", |status| {
        status["failure"].as_str().is_some_and(|failure| {
            failure.contains("[\"elsewhere.>\"], not shoplog.events.>: add shoplog.events.> to them")
        })
    })
    .await;
    assert_eq!(refused["checkpoint"], 0, "{refused}");
    restock(&app, "mug-1", 1).await;
    assert!(published(&nats.url()).await.is_empty());
    app.stop().await;
}

/// A stream of that name made by someone else that keeps messages only for the
/// consumers there are (interest retention) or until they are acked (a work
/// queue) would not hold the log: refused, saying so; commands go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_would_not_keep_the_log_is_refused() {
    for (retention, named) in [
        (jetstream::stream::RetentionPolicy::Interest, "its retention is Interest"),
        (jetstream::stream::RetentionPolicy::WorkQueue, "its retention is WorkQueue"),
    ] {
        let dir = tests::temp_dir();
        let nats = NatsServer::start(dir.path());
        let config = jetstream::stream::Config { retention, ..Default::default() };
        stream_made_before_the_relay(&nats.url(), "shoplog.events.>", config).await;
        let app = TestApp::spawn_with(|config| config.nats = Some(nats.url())).await;
        app.create_product("mug-1", 1200, 4).await;
        let refused = relay_until(&app, "refused the stream", |status| {
            status["failure"].as_str().is_some_and(|failure| failure.contains(named))
        })
        .await;
        assert_eq!(refused["checkpoint"], 0, "{refused}");
        restock(&app, "mug-1", 1).await;
        assert!(published(&nats.url()).await.is_empty());
        app.stop().await;
    }
}

/// Two shops pointed at one NATS at once: each publish names what it follows
/// (an attempt's first the stream sequence), so the second one's first publish
/// is refused, and at its next
/// attempt it finds the other log's record last in the stream and stops there.
/// The stream holds one log's events, once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_logs_relaying_to_one_stream_never_interleave() {
    let dir = tests::temp_dir();
    let nats = NatsServer::start(dir.path());
    let first = TestApp::spawn_with(|config| config.nats = Some(nats.url())).await;
    let second = TestApp::spawn_with(|config| config.nats = Some(nats.url())).await;
    first.create_product("mug-1", 1200, 4).await;
    second.create_product("tea-1", 450, 4).await;
    for _ in 0..20 {
        tokio::join!(restock(&first, "mug-1", 1), restock(&second, "tea-1", 1));
    }
    let is_refused = |status: &Value| {
        status["failure"].as_str().is_some_and(|failure| failure.contains("holds another log's events"))
    };
    let deadline = Instant::now() + RELAY_WAIT;
    let (relaying, refused) = loop {
        let (first_status, second_status) = (relay_status(&first).await, relay_status(&second).await);
        let first_done = first_status["lag"] == 0 && first_status["failure"].is_null();
        let second_done = second_status["lag"] == 0 && second_status["failure"].is_null();
        if first_done && is_refused(&second_status) {
            break (&first, &second);
        }
        if second_done && is_refused(&first_status) {
            break (&second, &first);
        }
        assert!(Instant::now() < deadline, "one relay never won: {first_status} {second_status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_published_as_stored(relaying.log(), &nats.url()).await;
    assert!(refused.head() > 0);
    first.stop().await;
    second.stop().await;
}

/// A stream of that name with wider subjects, holding someone else's message
/// on one of its own but no log's record: no history to mix with, so the relay
/// publishes from its checkpoint (after the other message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_holding_only_others_messages_is_taken() {
    let dir = tests::temp_dir();
    let nats = NatsServer::start(dir.path());
    let context = stream_made_before_the_relay(&nats.url(), "shoplog.>", Default::default()).await;
    context.publish("shoplog.audit.x", "not a record".into()).await.expect("publishes").await.expect("stored");
    let app = TestApp::spawn_with(|config| config.nats = Some(nats.url())).await;
    app.create_product("mug-1", 1200, 4).await;
    restock(&app, "mug-1", 3).await;
    let status = relayed(&app).await;
    assert_eq!(status["failure"], Value::Null, "{status}");
    let mut stream = context.get_stream("SHOPLOG_EVENTS").await.expect("the stream");
    assert_eq!(stream.info().await.expect("its state").state.messages, app.head() + 1);
    app.stop().await;
}

/// NATS wiped (its store gone) and started again while the shop is idle: the
/// relay reads the stream again at the reconnection, so it makes it again at
/// once, not at the next command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnection_reads_the_stream_again() {
    let (dir, mut nats, app) = relaying().await;
    app.create_product("mug-1", 1200, 4).await;
    relayed(&app).await;
    nats.kill();
    std::fs::remove_dir_all(dir.path().join("jetstream")).expect("wipes NATS's store");
    nats.restart();
    let head = app.head();
    let deadline = Instant::now() + RELAY_WAIT;
    let client = async_nats::connect(nats.url()).await.expect("connects to NATS");
    let context = jetstream::new(client);
    while context.get_stream("SHOPLOG_EVENTS").await.is_err() {
        assert!(Instant::now() < deadline, "the relay never made the stream again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.head(), head, "no command was needed");
    let status = relayed(&app).await;
    assert_eq!(status["failure"], Value::Null, "{status}");
    app.stop().await;
}

/// A NATS server that takes the connection and never answers (a listener on
/// loopback that accepts nothing) holds up neither the commands nor a stop:
/// the relay's connection attempt (5 s at most) ends at the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_that_never_answers_holds_up_no_command_and_no_stop() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let url = format!("nats://{}", silent.local_addr().expect("an address"));
    let app = TestApp::spawn_with(|config| config.nats = Some(url)).await;
    app.create_product("mug-1", 1200, 4).await;
    let status = relay_status(&app).await;
    assert_eq!(status["checkpoint"], 0, "{status}");
    let stopping = Instant::now();
    app.stop().await;
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(3), "the stop waited {took:?} for a connection attempt");
    drop(silent);
}

/// A relay stopped while it catches up waits for the acks of what it sent, and
/// saves its checkpoint at the last message JetStream stored: the next start
/// then goes on from there, not from a checkpoint some hundreds behind (which
/// the stream's end would correct, at the cost of reading it back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stopped_mid_catch_up_saves_its_checkpoint_at_the_last_message_stored() {
    let dir = tests::temp_dir();
    let nats = NatsServer::start(dir.path());
    let log = store::EventLog::open(dir.path().join("data")).expect("opens the log");
    // Enough events that the stop comes while publishes are in flight.
    for batch in 0..200 {
        let events = (0..200).map(|_| tests::event("ProductRestocked", &[7; 64])).collect();
        let stream = format!("product-{batch}");
        log.append(tests::append(&stream, store::ExpectedVersion::NoStream, events)).await.expect("appends");
    }
    let head = log.head();
    let relay = commands::Relay::start(log.clone(), commands::RelayOptions::new(nats.url())).expect("starts");
    let deadline = Instant::now() + RELAY_WAIT;
    while relay.status().published < 2_000 {
        assert!(Instant::now() < deadline, "the relay never published: {:?}", relay.status());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    relay.stop().await;

    let context = jetstream::new(async_nats::connect(nats.url()).await.expect("connects to NATS"));
    let mut stream = context.get_stream("SHOPLOG_EVENTS").await.expect("the relay made the stream");
    let last_sequence = stream.info().await.expect("the stream's state").state.last_sequence;
    let last = stream.get_raw_message(last_sequence).await.expect("the stream's last message");
    let last_position: u64 =
        last.headers.get("Shoplog-Position").expect("a position").as_str().parse().expect("a number");
    assert!(last_position < head, "the stop came after the relay had caught up ({head}): the test shows nothing");
    let saved = log.open_tree("relay").expect("the relay's tree").get(b"nats.checkpoint").expect("reads the tree");
    let saved = u64::from_be_bytes(saved.expect("a saved checkpoint").as_ref().try_into().expect("8 bytes"));
    assert_eq!(saved, last_position, "the checkpoint saved at the stop is not the last message stored");
}

fn path(path: &Path) -> &str {
    path.to_str().expect("a utf-8 path")
}
