//! The `shoplog` binary: a first run needs no setting, SIGTERM stops it, and every
//! bad input is one line on stderr with exit code 2.

mod backup;
mod export;
mod forget;
mod kill9;
mod replay;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const SHOPLOG: &str = env!("CARGO_BIN_EXE_shoplog_cli");

fn shoplog(args: &[&str]) -> std::process::Output {
    Command::new(SHOPLOG).args(args).env_remove("RUST_LOG").output().expect("runs shoplog")
}

/// Exit code 2 and one line naming the problem.
fn assert_refused(output: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_settings_are_one_line_and_exit_code_2() {
    let dir = tests::temp_dir();
    let data = dir.path().to_str().expect("utf-8 path");
    assert_refused(&shoplog(&["serve", "--data", data, "--listen", "nonsense"]), "listen");
    let output = Command::new(SHOPLOG)
        .args(["serve", "--data", data])
        .env("SHOPLOG_REQUEST_TIMEOUT_MS", "soon")
        .output()
        .expect("runs");
    assert_refused(&output, "request_timeout_ms");
    assert_refused(&shoplog(&["serve", "--data", data, "--admin-token", "short"]), "admin_token");
    assert_refused(&shoplog(&["serve", "--data", data, "--cache-mib", "0"]), "cache_mib must be from 1");
    assert_refused(&shoplog(&["serve", "--data", data, "--cache-mib", "lots"]), "lots");
    assert_refused(&shoplog(&["serve", "--config", "/no/such/shoplog.toml"]), "does not exist");
    assert_refused(&shoplog(&["verify", "--data", "/no/such/dir"]), "does not exist");
}

#[test]
fn a_first_run_needs_no_setting_and_sigterm_stops_it() {
    let dir = tests::temp_dir();
    let data = dir.path().join("data");
    let mut child = Command::new(SHOPLOG)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env_remove("SHOPLOG_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let stdout = child.stdout.take().expect("piped");
    let (lines_sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let address = loop {
        let line = lines.recv_timeout(Duration::from_secs(20)).expect("the server says where it listens");
        printed.push(line.clone());
        if let Some(rest) = line.strip_prefix("shoplog listening on http://") {
            break rest.split_whitespace().next().expect("an address").to_owned();
        }
    };
    assert!(
        printed.iter().any(|line| line.starts_with("admin-token: in ")),
        "says where the admin token is: {printed:?}"
    );
    let admin_token = std::fs::read_to_string(data.join("admin-token")).expect("the generated token is there");

    // Speak HTTP to it with the generated token.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let status = runtime.block_on(async {
        reqwest::Client::new()
            .post(format!("http://{address}/api/v1/products"))
            .bearer_auth(admin_token.trim())
            .json(&serde_json::json!({"sku": "first", "name": "First", "price_cents": 100}))
            .send()
            .await
            .expect("answers")
            .status()
    });
    assert_eq!(status, 201);

    // The data dir is locked while it runs.
    let data_arg = data.to_str().expect("utf-8 path");
    assert_refused(&shoplog(&["verify", "--data", data_arg]), "in use by a running server");

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("polls") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "SIGTERM did not stop the server");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");

    let verified = shoplog(&["verify", "--data", data_arg]);
    assert_eq!(verified.status.code(), Some(0), "{verified:?}");
    assert!(String::from_utf8_lossy(&verified.stdout).starts_with("ok: 1 events"), "{verified:?}");
}

#[test]
fn verify_names_the_first_bad_position_and_exits_1() {
    let dir = tests::temp_dir();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let log = store::EventLog::open(dir.path()).expect("opens");
        for _ in 0..3 {
            log.append(tests::append("s", store::ExpectedVersion::Any, vec![tests::event("E", b"payload")]))
                .await
                .expect("appends");
        }
    });
    {
        let db = tests::raw_sled(dir.path());
        let events = db.open_tree("events").expect("tree");
        let mut record = events.get(2u64.to_be_bytes()).expect("reads").expect("exists").to_vec();
        let last = record.len() - 1;
        record[last] ^= 1;
        events.insert(2u64.to_be_bytes(), record).expect("writes");
        db.flush().expect("flushes");
    }
    let output = shoplog(&["verify", "--data", dir.path().to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("corrupt at position 2"), "{output:?}");
}

#[test]
fn stats_counts_events_by_type_and_category() {
    let dir = tests::temp_dir();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let log = store::EventLog::open(dir.path()).expect("opens");
        for stream in ["product-a", "product-b", "order-1"] {
            let event_type = if stream.starts_with("order") { "OrderPlaced" } else { "ProductCreated" };
            log.append(tests::append(stream, store::ExpectedVersion::NoStream, vec![tests::event(event_type, b"x")]))
                .await
                .expect("appends");
        }
    });
    let output = shoplog(&["stats", "--data", dir.path().to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in
        ["events: 3", "head position: 3", "  product: 2", "  order: 1", "  ProductCreated: 2", "  OrderPlaced: 1"]
    {
        assert!(stdout.lines().any(|printed| printed == line), "{line:?} missing from:\n{stdout}");
    }
    assert!(stdout.contains("size on disk: "), "{stdout}");
    assert_refused(&shoplog(&["stats", "--data", "/no/such/dir"]), "does not exist");
}
