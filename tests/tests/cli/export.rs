//! `shoplog export` and `shoplog import` through the real binary, and a forgotten
//! customer's data appearing in no backup, restore or export.

use std::path::Path;

use serde_json::{Value, json};

use super::backup::{arg, events, fill_shop};
use super::{assert_refused, shoplog};
use crate::api::{ADMIN, TestApp};

fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("reads the export");
    text.lines().map(|line| serde_json::from_str(line).expect("each line is JSON")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_with_secrets_imports_into_the_same_shop() {
    let app = TestApp::spawn().await;
    fill_shop(&app).await;
    let data = app.stop_keeping_dir().await;
    let source = events(data.path());
    let work = tests::temp_dir();
    let export = work.path().join("shop.ndjson");

    let output = shoplog(&["export", "--data", arg(data.path()), "--with-secrets", "--out", arg(&export)]);
    assert!(output.status.success(), "{output:?}");
    let exported = lines(&export);
    assert_eq!(exported[0]["shoplog_export"], 1);
    assert_eq!(exported[0]["with_secrets"], true);
    assert_eq!(exported[0]["head"], source.len());
    assert_eq!(exported.len(), source.len() + 1, "a header and one line per event");
    assert_eq!(exported[1]["position"], 1);
    assert!(exported.iter().any(|line| line["type"] == "CustomerRegistered"
        && line["data"]["password_hash"].as_str().is_some_and(|hash| hash.starts_with("$argon2id$"))));

    let imported_dir = tests::temp_dir();
    let output = shoplog(&["import", "--data", arg(imported_dir.path()), "--in", arg(&export)]);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!("imported {} events", source.len())));
    let imported = events(imported_dir.path());
    assert_eq!(imported.len(), source.len());
    for (mine, theirs) in imported.iter().zip(&source) {
        // Everything but the hash chain, which is new (the sealed bytes are sealed anew).
        assert_eq!(
            (&mine.stream, mine.version, mine.event_id, &mine.event_type, mine.schema_version, mine.recorded_at),
            (
                &theirs.stream,
                theirs.version,
                theirs.event_id,
                &theirs.event_type,
                theirs.schema_version,
                theirs.recorded_at
            )
        );
        assert_eq!(
            (&mine.actor, mine.correlation_id, mine.causation_id),
            (&theirs.actor, theirs.correlation_id, theirs.causation_id)
        );
        assert_eq!((mine.subject, &mine.payload), (theirs.subject, &theirs.payload), "at {}", mine.position);
    }
    let output = shoplog(&["verify", "--data", arg(imported_dir.path())]);
    assert!(output.status.success(), "{output:?}");

    // The imported shop serves: passwords, email index and read models all came along.
    let app = TestApp::serve_dir(imported_dir).await;
    let token = app.login("shopper1@example.com").await;
    let orders = app.get("/api/v1/orders", Some(&token)).await;
    assert_eq!(orders.status, 200, "{orders:?}");
    assert_eq!(orders.body["items"].as_array().map(Vec::len), Some(1), "{orders:?}");
    let taken = app
        .post(
            "/api/v1/customers",
            None,
            json!({"email": "shopper1@example.com", "name": "Again", "password": "correct horse"}),
        )
        .await;
    assert_eq!(taken.status, 409, "the email index came along: {taken:?}");
    app.stop().await;
}

/// An export of a log whose claim was made under an email's earlier key (a
/// word-final capital sigma lowercased as `ς`) imports: the claim's key is the
/// email's under the header's secret, as that binary computed it.
#[tokio::test(flavor = "multi_thread")]
async fn an_export_holding_a_claim_under_an_emails_earlier_key_imports() {
    let data = tests::temp_dir();
    {
        let log = store::EventLog::open_with(data.path(), commands::codec::log_options()).expect("opens");
        let service = commands::CommandService::new(log.clone()).expect("builds");
        crate::commands::registered_under_the_earlier_key(&log, &service, "ΒΣ@example.com").await;
        crate::commands::registered_under_the_earlier_key(&log, &service, "νικος.παππας@x.gr").await;
    }
    let work = tests::temp_dir();
    let export = work.path().join("shop.ndjson");
    let output = shoplog(&["export", "--data", arg(data.path()), "--with-secrets", "--out", arg(&export)]);
    assert!(output.status.success(), "{output:?}");
    let imported = tests::temp_dir();
    let output = shoplog(&["import", "--data", arg(imported.path()), "--in", arg(&export)]);
    assert!(output.status.success(), "{output:?}");
    let app = TestApp::serve_dir(imported).await;
    let again = json!({"email": "βσ@example.com", "name": "Again", "password": "correct horse"});
    let taken = app.post("/api/v1/customers", None, again).await;
    assert_eq!(taken.status, 409, "the earlier claim holds the address: {taken:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redacted_partial_or_cut_export_is_refused() {
    let app = TestApp::spawn().await;
    fill_shop(&app).await;
    let data = app.stop_keeping_dir().await;
    let head = events(data.path()).len();
    let work = tests::temp_dir();

    // To stdout by default, redacted.
    let output = shoplog(&["export", "--data", arg(data.path())]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.lines().count(), head + 1);
    assert!(stdout.contains("[redacted]") && !stdout.contains("$argon2id$"));
    let redacted = work.path().join("redacted.ndjson");
    std::fs::write(&redacted, stdout.as_bytes()).expect("writes");
    let target = work.path().join("imported");
    assert_refused(&shoplog(&["import", "--data", arg(&target), "--in", arg(&redacted)]), "redacted");

    let partial = work.path().join("partial.ndjson");
    let output =
        shoplog(&["export", "--data", arg(data.path()), "--with-secrets", "--from", "3", "--out", arg(&partial)]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(lines(&partial)[1]["position"], 3);
    assert_refused(&shoplog(&["import", "--data", arg(&target), "--in", arg(&partial)]), "not a full export");

    let full = work.path().join("full.ndjson");
    assert!(shoplog(&["export", "--data", arg(data.path()), "--with-secrets", "--out", arg(&full)]).status.success());
    let text = std::fs::read_to_string(&full).expect("reads");
    let cut = work.path().join("cut.ndjson");
    std::fs::write(&cut, text.lines().take(head).collect::<Vec<_>>().join("\n")).expect("writes");
    assert_refused(&shoplog(&["import", "--data", arg(&target), "--in", arg(&cut)]), "cut short");
    let gap = work.path().join("gap.ndjson");
    let without_fifth: Vec<&str> =
        text.lines().enumerate().filter(|(index, _)| *index != 5).map(|(_, line)| line).collect();
    std::fs::write(&gap, without_fifth.join("\n")).expect("writes");
    assert_refused(&shoplog(&["import", "--data", arg(&target), "--in", arg(&gap)]), "expected position 5 next");
    // A hand-edited header: without the email index's key, or with another one.
    // Imported, the shop would hash emails to other claim streams: no customer
    // could log in and every email could be registered again.
    let mut header: Value = serde_json::from_str(text.lines().next().expect("a header")).expect("JSON");
    assert!(header["secrets"]["email-key"].is_string(), "the export carries the key: {header}");
    let rest: Vec<&str> = text.lines().skip(1).collect();
    for (name, key) in [("no-email-key", None), ("other-email-key", Some(json!("ab".repeat(32))))] {
        match key {
            None => drop(header["secrets"].as_object_mut().expect("an object").remove("email-key")),
            Some(key) => header["secrets"]["email-key"] = key,
        }
        let edited = work.path().join(format!("{name}.ndjson"));
        std::fs::write(&edited, format!("{header}\n{}", rest.join("\n"))).expect("writes");
        assert_refused(&shoplog(&["import", "--data", arg(&target), "--in", arg(&edited)]), "email-key");
    }
    let garbage = work.path().join("garbage.ndjson");
    std::fs::write(&garbage, "hello\n").expect("writes");
    assert_refused(&shoplog(&["import", "--data", arg(&target), "--in", arg(&garbage)]), "not a shoplog export");
    assert!(!target.exists(), "a refused import leaves no data dir");
    let staging: Vec<_> = std::fs::read_dir(work.path())
        .expect("lists")
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().contains("incoming"))
        .collect();
    assert!(staging.is_empty(), "no staging dir left: {staging:?}");

    // Into a dir that is not empty, or from a position past the head: refused.
    assert_refused(&shoplog(&["import", "--data", arg(data.path()), "--in", arg(&full)]), "is not empty");
    let past = (head + 1).to_string();
    assert_refused(&shoplog(&["export", "--data", arg(data.path()), "--from", &past]), "past the head");
    assert_eq!(events(data.path()).len(), head, "nothing changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forgotten_customer_is_in_no_backup_restore_or_export() {
    const EMAIL: &str = "forget-me-please@example.com";
    const NAME: &str = "Zebulon Quackenbush";
    let app = TestApp::spawn().await;
    fill_shop(&app).await;
    let registered =
        app.post("/api/v1/customers", None, json!({"email": EMAIL, "name": NAME, "password": "correct horse"})).await;
    assert_eq!(registered.status, 201, "{registered:?}");
    let customer_id = registered.body["customer_id"].as_str().expect("id").to_owned();
    let token = app.login(EMAIL).await;
    assert!(app.add_to_cart(&token, "mug-1", 1).await.status.is_success());
    assert_eq!(app.checkout(&token).await.status, 201);
    let forgotten = app.post(&format!("/admin/customers/{customer_id}/forget"), Some(ADMIN), json!({})).await;
    assert!(forgotten.status.is_success(), "{forgotten:?}");
    let data = app.stop_keeping_dir().await;

    let work = tests::temp_dir();
    let backup = work.path().join("shop.backup");
    assert!(shoplog(&["backup", "--data", arg(data.path()), "--out", arg(&backup)]).status.success());
    let restored = work.path().join("restored");
    assert!(shoplog(&["restore", "--in", arg(&backup), "--data", arg(&restored)]).status.success());
    let with_secrets = work.path().join("with-secrets.ndjson");
    assert!(
        shoplog(&["export", "--data", arg(data.path()), "--with-secrets", "--out", arg(&with_secrets)])
            .status
            .success()
    );
    let redacted = work.path().join("redacted.ndjson");
    assert!(shoplog(&["export", "--data", arg(data.path()), "--out", arg(&redacted)]).status.success());
    let imported = work.path().join("imported");
    let output = shoplog(&["import", "--data", arg(&imported), "--in", arg(&with_secrets)]);
    assert!(output.status.success(), "{output:?}");
    let output = shoplog(&["replay", "--data", arg(&restored)]);
    assert!(output.status.success(), "{output:?}");

    // The search sees what is in clear: another customer's email in the export.
    assert!(tests::files_contain(work.path(), b"shopper0@example.com"), "the search finds nothing at all");
    for needle in [EMAIL, NAME] {
        for place in [data.path(), work.path()] {
            assert!(!tests::files_contain(place, needle.as_bytes()), "{needle} found under {}", place.display());
        }
    }
    // The events are all there, as forgotten, and the other customers' data is not lost.
    let exported = lines(&with_secrets);
    let theirs: Vec<&Value> = exported.iter().filter(|line| line["subject"] == customer_id.as_str()).collect();
    assert!(!theirs.is_empty() && theirs.iter().all(|line| line["data"].is_null() && line["forgotten"] == true));
    assert!(exported.iter().any(|line| line["data"]["email"] == "shopper0@example.com"));
    for dir in [&restored, &imported] {
        assert!(shoplog(&["verify", "--data", arg(dir)]).status.success());
        let read = events(dir);
        assert!(read.iter().any(|event| event.subject.is_some_and(|subject| subject.to_string() == customer_id)
            && event.payload == store::Payload::Forgotten));
    }
}

/// Import checks every line, not only the header: each way a line can be wrong
/// is one line of error naming where, exit 2, and no data dir left.
#[tokio::test(flavor = "multi_thread")]
async fn an_export_with_a_bad_line_is_refused_naming_it() {
    let app = TestApp::spawn().await;
    fill_shop(&app).await;
    let data = app.stop_keeping_dir().await;
    let work = tests::temp_dir();
    let full = work.path().join("full.ndjson");
    assert!(shoplog(&["export", "--data", arg(data.path()), "--with-secrets", "--out", arg(&full)]).status.success());
    let lines = lines(&full);
    // The first event of a stream that has a second one, and a registration.
    let twice = (1..lines.len())
        .find(|&index| lines[index + 1..].iter().any(|line| line["stream"] == lines[index]["stream"]))
        .expect("a stream with two events");
    let registration = (1..lines.len()).find(|&index| lines[index]["type"] == "CustomerRegistered").expect("one");
    type Edit = Box<dyn Fn(&mut Vec<Value>)>;
    let cases: Vec<(&str, Edit, String)> = vec![
        (
            "a version gap",
            Box::new(move |lines| lines[twice]["version"] = json!(2)),
            format!("position {twice}: stream"),
        ),
        (
            "a time going back",
            Box::new(move |lines| lines[2]["recorded_at"] = json!("2001-01-01T00:00:00Z")),
            "recorded before the event ahead of it".to_owned(),
        ),
        (
            "data that does not decode",
            Box::new(move |lines| lines[1]["data"] = json!({"colour": "blue"})),
            "does not decode".to_owned(),
        ),
        (
            "a redacted hash in an export that says it holds secrets",
            Box::new(move |lines| lines[registration]["data"]["password_hash"] = json!("[redacted]")),
            "redacted password hash".to_owned(),
        ),
        (
            "another subject",
            Box::new(move |lines| lines[registration]["subject"] = json!(uuid::Uuid::now_v7())),
            "belongs to subject".to_owned(),
        ),
        ("not an event", Box::new(move |lines| lines[3] = json!({"hello": 1})), "line 4: not an event".to_owned()),
        (
            // Forgotten, so no data to decode as the type: the type itself is checked.
            "a line break in a forgotten event's type",
            Box::new(move |lines| {
                lines[registration]["data"] = Value::Null;
                lines[registration]["type"] = json!("Customer\nRegistered");
            }),
            "is not an event type".to_owned(),
        ),
    ];
    for (what, edit, needle) in cases {
        let mut edited = lines.clone();
        edit(&mut edited);
        let file = work.path().join("edited.ndjson");
        let text: Vec<String> = edited.iter().map(Value::to_string).collect();
        std::fs::write(&file, text.join("\n")).expect("writes");
        let target = work.path().join("imported");
        let output = shoplog(&["import", "--data", arg(&target), "--in", arg(&file)]);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_refused(&output, &needle);
        assert!(!target.exists(), "{what}: a refused import left a data dir ({stderr})");
    }
}

/// An export to stdout whose reader stops early (`shoplog export | head`) ends
/// there quietly with 141, as a Unix tool that SIGPIPE ends does: no "Broken
/// pipe" line, no exit code 2 (and not 0: a `verify | …` that could not write
/// its verdict must not pass for a sound log).
#[test]
fn an_export_read_in_part_from_a_pipe_ends_quietly() {
    let dir = tests::temp_dir();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let service = commands::CommandService::new(store::EventLog::open(dir.path()).expect("opens")).expect("builds");
        let admin = commands::CommandContext::new("admin");
        // Far over a pipe's 64 KiB of JSON lines, so that the export is still
        // writing when its reader goes.
        for n in 0..600 {
            let sku = domain::Sku::parse(&format!("pipe-{n}")).expect("a sku");
            let name = domain::ProductName::parse("A product with a name long enough").expect("a name");
            let price = domain::PriceCents::new(100).expect("a price");
            service.create_product(&admin, sku, name, price, None, None).await.expect("creates");
        }
    });
    drop(runtime);
    let mut child = std::process::Command::new(super::SHOPLOG)
        .args(["export", "--data", arg(dir.path())])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut header = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut header).expect("reads a line");
    assert!(header.contains("shoplog_export"), "{header}");
    drop(stdout);
    let output = child.wait_with_output().expect("ends");
    assert_eq!(output.status.code(), Some(141), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "", "nothing said");
}
