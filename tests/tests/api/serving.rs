//! The server itself: slow clients are cut off (headers and body), shutdown answers
//! the requests in flight and cannot hang, and the data dir of a running server
//! cannot be opened twice.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::TestApp;

/// Slow-loris: a client that starts its headers and never finishes them, and one
/// that sends nothing at all, are cut off once the header-read timeout has
/// passed; one that sends the first bytes of HTTP/2's preface (which a server
/// that sniffs the protocol waits on) is refused at once, as HTTP/1 it is not.
#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let app = TestApp::spawn_with(|config| config.header_read_timeout_ms = 300).await;
    // Send `sent` on a new connection; what the server answered before it closed
    // the connection, and how long that took (`None`: still open after 5 s).
    let send = async |sent: &[u8]| {
        // The server's timer runs from the accept: so does this one.
        let started = Instant::now();
        let mut stream = TcpStream::connect(app.address()).await.expect("connects");
        stream.write_all(sent).await.expect("writes");
        let mut buffer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buffer)).await;
        read.ok().map(|_| (String::from_utf8_lossy(&buffer).into_owned(), started.elapsed()))
    };
    let sends: [&[u8]; 2] = [b"GET /healthz HTTP/1.1\r\nHost: shoplog\r\nX-Slow: ", b""];
    for sent in sends {
        let what = String::from_utf8_lossy(sent);
        let (text, elapsed) = send(sent).await.unwrap_or_else(|| panic!("{what:?}: still open after 5 s"));
        assert!(elapsed >= Duration::from_millis(250), "{what:?}: cut off before the timeout: {elapsed:?}");
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 408"), "{what:?}: {text}");
    }
    // A kept-alive connection left idle after its request is cut off the same way.
    let idle = send(b"GET /healthz HTTP/1.1\r\nHost: shoplog\r\n\r\n").await;
    let (text, _) = idle.expect("an idle kept-alive connection was still open after 5 s");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    let preface = send(b"PRI * HTTP/2.0\r\n").await;
    let (text, _) = preface.expect("the start of HTTP/2's preface held the connection open for 5 s");
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_body_gets_a_408_problem_and_writes_nothing() {
    let app = TestApp::spawn_with(|config| config.request_timeout_ms = 300).await;
    let head = app.head();
    let mut stream = TcpStream::connect(app.address()).await.expect("connects");
    let headers = format!(
        "POST /api/v1/products HTTP/1.1\r\nHost: shoplog\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"sku\":\"slow-1\",",
        super::ADMIN
    );
    stream.write_all(headers.as_bytes()).await.expect("writes");
    let started = Instant::now();
    let mut buffer = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
    let len = read.expect("no answer within 5 s").expect("reads");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(250), "answered before the timeout: {elapsed:?}");
    let text = String::from_utf8_lossy(&buffer[..len]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.to_ascii_lowercase().contains("content-type: application/problem+json"), "{text}");
    assert!(text.contains("the request was not received in time"), "{text}");
    assert_eq!(app.head(), head, "a cut-off request wrote to the log");
    app.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_within_its_deadline_even_with_a_stuck_client() {
    let app = TestApp::spawn_with(|config| {
        config.shutdown_timeout_ms = 500;
        config.header_read_timeout_ms = 60_000;
    })
    .await;
    let mut stuck = TcpStream::connect(app.address()).await.expect("connects");
    stuck.write_all(b"GET /healthz HTTP/1.1\r\nHost: shoplog\r\n").await.expect("writes");
    // A served keep-alive connection, idle, as well.
    let idle = app.get("/healthz", None).await;
    assert_eq!(idle.status, 200);
    let address = app.address();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), app.stop()).await.expect("shutdown returned within 5 s");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert!(TcpStream::connect(address).await.is_err(), "still accepting after shutdown");
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused_with_a_clear_error() {
    let app = TestApp::spawn().await;
    let config = api::Config {
        data: app.dir.path().to_path_buf(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ..api::Config::default()
    };
    let refused = api::server::start(&config).await.expect_err("the dir is in use");
    let message = format!("{refused:#}");
    assert!(message.contains("in use by another shoplog process"), "{message}");
    app.stop().await;
}

#[tokio::test]
async fn a_request_in_flight_when_shutdown_begins_is_answered_and_kept() {
    let app = TestApp::spawn().await;
    let mut stream = TcpStream::connect(app.address()).await.expect("connects");
    let body = r#"{"sku":"late-1","name":"Late","price_cents":100,"initial_stock":1}"#;
    let (first, rest) = body.split_at(20);
    let headers = format!(
        "POST /api/v1/products HTTP/1.1\r\nHost: shoplog\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
        super::ADMIN,
        body.len()
    );
    stream.write_all(headers.as_bytes()).await.expect("writes");
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Shutdown begins while the request's body is half sent.
    let stopping = tokio::spawn(app.stop_keeping_dir());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stopping.is_finished(), "shutdown did not wait for the request in flight");
    stream.write_all(rest.as_bytes()).await.expect("the server still reads the request");
    let mut buffer = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await;
    let len = read.expect("an answer within 5 s").expect("reads");
    let text = String::from_utf8_lossy(&buffer[..len]);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");

    let dir = tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown ends once the request is answered")
        .expect("the stop task ends");
    let log = store::EventLog::open(dir.path()).expect("the data dir opens after the shutdown");
    let events = log.read_stream("product-late-1", 1, 10).expect("reads");
    assert_eq!(events.len(), 1, "the answered product is in the log");
}

/// A read model of an older format is emptied at start and rebuilt; until it
/// has reached the head the server started at, `/readyz` answers 503. Once it
/// answers 200, the model serves the whole log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_a_read_model_rebuilt_at_start() {
    let dir = tests::temp_dir();
    tests::big_log(dir.path(), 30_000).await;
    let head = {
        let log = store::EventLog::open(dir.path()).expect("opens");
        // What a binary from before the dashboard's format 2 leaves: no format recorded.
        log.open_tree("projections").expect("the meta tree").remove("dashboard.format").expect("removes");
        log.head()
    };
    let app = TestApp::serve_dir(dir).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut refused = 0;
    loop {
        let ready = app.get("/readyz", None).await;
        if ready.status == 200 {
            break;
        }
        assert_eq!(ready.problem(503)["status"], 503);
        refused += 1;
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sales = app.get("/api/v1/dashboard/sales", Some(super::VIEWER)).await;
    let position: u64 = sales.headers["x-projection-position"].to_str().expect("text").parse().expect("a number");
    assert!(position >= head, "ready while the dashboard answered at {position} of {head} ({refused} refusals)");
    app.stop().await;
}

/// A read model that stops at an event it cannot apply stays behind the log for
/// good: its queries answer 503 naming it (not an older and older state), and
/// the server is not ready, until a rebuild brings it back.
#[tokio::test]
async fn a_read_model_that_stopped_answers_503_and_the_server_is_not_ready_until_it_is_rebuilt() {
    let app = TestApp::spawn().await;
    app.create_product("mug-1", 1200, 5).await;
    let app = app.restart_with_a_damaged_catalog_record("mug-1").await;
    assert_eq!(app.get("/readyz", None).await.status, 200, "ready before the next event about mug-1");
    let restocked =
        app.post("/api/v1/products/mug-1/restock", Some(super::ADMIN), serde_json::json!({"quantity": 1})).await;
    assert_eq!(restocked.status, 200, "{restocked:?}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let not_ready = loop {
        let ready = app.get("/readyz", None).await;
        if ready.status != 200 {
            break ready;
        }
        assert!(Instant::now() < deadline, "still ready with a stopped catalog");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(not_ready.problem(503)["detail"].as_str().is_some_and(|detail| detail.contains("catalog")));
    let products = app.get("/api/v1/products", None).await;
    assert!(products.problem(503)["detail"].as_str().is_some_and(|detail| detail.contains("catalog")), "{products:?}");
    assert_eq!(app.get("/api/v1/dashboard/sales", Some(super::VIEWER)).await.status, 200, "the others answer");

    let rebuild = app.post("/admin/projections/catalog/rebuild", Some(super::ADMIN), serde_json::json!({})).await;
    assert!(rebuild.status.is_success(), "{rebuild:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.get("/readyz", None).await.status != 200 {
        assert!(Instant::now() < deadline, "not ready after the rebuild");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mug = app.get("/api/v1/products/mug-1", None).await;
    assert_eq!(mug.status, 200, "{mug:?}");
    app.stop().await;
}

/// Damage in records no read meets at start (the open checks the tail, the read
/// models go on from their checkpoints) is found by the read-back that `serve`
/// runs in the background: the server stops taking commands and says it is not
/// ready, within seconds, not when a read meets the damage weeks later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_records_no_read_meets_at_start_is_found_by_the_read_back() {
    let app = TestApp::spawn().await;
    for sku in ["lamp-1", "lamp-2", "lamp-3"] {
        app.create_product(sku, 900, 5).await;
    }
    app.caught_up().await;
    let dir = app.stop_keeping_dir().await;
    {
        let db = tests::raw_sled(dir.path());
        let events = db.open_tree("events").expect("the events tree");
        let mut record = events.get(1u64.to_be_bytes()).expect("reads").expect("the first record, alone").to_vec();
        let last = record.len() - 1;
        record[last] ^= 0x5a;
        events.insert(1u64.to_be_bytes(), record).expect("writes");
        db.flush().expect("flushes");
    }
    let app = TestApp::serve_dir(dir).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let not_ready = loop {
        let ready = app.get("/readyz", None).await;
        if ready.status != 200 {
            break ready;
        }
        assert!(Instant::now() < deadline, "still ready on a damaged log");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    not_ready.problem(503);
    let refused = app
        .post(
            "/api/v1/products",
            Some(super::ADMIN),
            serde_json::json!({"sku": "lamp-4", "name": "Lamp", "price_cents": 900}),
        )
        .await;
    refused.problem(503);
    let log = &app.running_state().log;
    assert!(log.failure().is_some_and(|reason| reason.contains("corrupt at position 1")), "{:?}", log.failure());
    app.stop().await;
}
