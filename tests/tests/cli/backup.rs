//! `shoplog backup` and `shoplog restore` through the real binary: offline and
//! online (while commands keep coming), whole and to a point in time; every damaged
//! or cut backup refused before anything is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{assert_refused, shoplog};
use crate::api::{ADMIN, TestApp, VIEWER};

/// A small shop: products, customers with carts, orders placed and paid.
pub(super) async fn fill_shop(app: &TestApp) -> Vec<String> {
    for (sku, price) in [("mug-1", 1200), ("tea-1", 450), ("pot-1", 3100)] {
        app.create_product(sku, price, 50).await;
    }
    let mut emails = Vec::new();
    for (index, sku) in ["mug-1", "tea-1", "pot-1"].into_iter().enumerate() {
        let email = format!("shopper{index}@example.com");
        let token = app.customer(&email).await;
        assert!(app.add_to_cart(&token, sku, 2).await.status.is_success());
        let placed = app.checkout(&token).await;
        assert_eq!(placed.status, 201, "{placed:?}");
        if index < 2 {
            let order_id = placed.body["order_id"].as_str().expect("order id");
            let total = placed.body["total_cents"].as_i64().expect("total");
            let paid =
                app.post(&format!("/api/v1/orders/{order_id}/pay"), Some(&token), json!({"amount_cents": total})).await;
            assert_eq!(paid.status, 200, "{paid:?}");
        }
        assert!(app.add_to_cart(&token, "tea-1", 1).await.status.is_success());
        emails.push(email);
    }
    // The live read models are compared with rebuilt ones: let them reach the head.
    app.caught_up().await;
    emails
}

pub(super) fn arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Every event of the log, whole (envelope, payload, hash).
pub(super) fn events(dir: &Path) -> Vec<store::RecordedEvent> {
    let log = store::EventLog::open(dir).expect("opens");
    log.read_all(1, usize::MAX).expect("reads")
}

/// Every read model's checkpoint and records, read from its serving generation.
fn models(dir: &Path) -> BTreeMap<String, (u64, projections::Dump)> {
    let log = store::EventLog::open(dir).expect("opens");
    projections::checkpoints(&log)
        .expect("checkpoints")
        .into_iter()
        .map(|status| {
            let generation = status.generation.expect("the model was built");
            let tree = log.open_tree(&format!("{}.g{generation}", status.name)).expect("tree");
            let records = tree.iter().map(|entry| entry.expect("reads")).map(|(k, v)| (k.to_vec(), v.to_vec()));
            (status.name.to_owned(), (status.checkpoint, records.collect()))
        })
        .collect()
}

fn backup_file(dir: &Path) -> PathBuf {
    dir.join("shop.backup")
}

/// The permission bits of `path`.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// A backup, an export with secrets and a data dir hold the keys that unseal
/// customers' data and sign their tokens: each is its owner's only.
#[tokio::test(flavor = "multi_thread")]
async fn what_holds_the_shops_secrets_is_readable_by_its_owner_only() {
    let (_data, work, file) = backed_up_shop().await;
    assert_eq!(mode(&file), 0o600, "the backup");
    let restored = work.path().join("restored");
    assert!(shoplog(&["restore", "--in", arg(&file), "--data", arg(&restored)]).status.success());
    assert_eq!(mode(&restored), 0o700, "a restored data dir");
    let exported = work.path().join("shop.ndjson");
    let output = shoplog(&["export", "--data", arg(&restored), "--with-secrets", "--out", arg(&exported)]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(mode(&exported), 0o600, "an export with secrets");
    let imported = work.path().join("imported");
    assert!(shoplog(&["import", "--data", arg(&imported), "--in", arg(&exported)]).status.success());
    assert_eq!(mode(&imported), 0o700, "an imported data dir");
    // An empty data dir the operator made keeps its mode.
    let prepared = work.path().join("prepared");
    std::fs::create_dir(&prepared).expect("creates");
    std::fs::set_permissions(&prepared, std::os::unix::fs::PermissionsExt::from_mode(0o750)).expect("chmod");
    assert!(shoplog(&["restore", "--in", arg(&file), "--data", arg(&prepared)]).status.success());
    assert_eq!(mode(&prepared), 0o750, "an existing data dir restored into");
    assert!(shoplog(&["verify", "--data", arg(&prepared)]).status.success(), "the restore is whole");
    // What is in it is the owner's only though: the log's files hold its secrets.
    others_read_nothing_in(&prepared);
    let served = work.path().join("served");
    let app = TestApp::spawn_with(|config| config.data = served.clone()).await;
    assert_eq!(mode(&served), 0o700, "a data dir the server made");
    app.stop().await;
    // A log whose files an earlier binary left to the umask (`rw-r--r--`): the
    // next open makes them the owner's.
    for entry in std::fs::read_dir(&prepared).expect("lists") {
        let path = entry.expect("an entry").path();
        let widened = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(widened)).expect("chmod");
    }
    assert!(shoplog(&["stats", "--data", arg(&prepared)]).status.success());
    others_read_nothing_in(&prepared);
}

/// Nothing in `dir` (a data dir), nor in the dirs in it, is open to its group or others.
fn others_read_nothing_in(dir: &Path) {
    let mut paths = vec![dir.to_path_buf()];
    while let Some(path) = paths.pop() {
        for entry in std::fs::read_dir(&path).expect("lists") {
            let path = entry.expect("an entry").path();
            assert_eq!(mode(&path) & 0o077, 0, "{} is {:o}", path.display(), mode(&path));
            if path.is_dir() {
                paths.push(path);
            }
        }
    }
}

/// A filled shop, stopped, and its offline backup: the data dir, a work dir, and
/// the backup file in it.
async fn backed_up_shop() -> (tempfile::TempDir, tempfile::TempDir, PathBuf) {
    let app = TestApp::spawn().await;
    fill_shop(&app).await;
    let data = app.stop_keeping_dir().await;
    let work = tests::temp_dir();
    let file = backup_file(work.path());
    assert!(shoplog(&["backup", "--data", arg(data.path()), "--out", arg(&file)]).status.success());
    (data, work, file)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offline_backup_restores_the_same_log_and_read_models() {
    let app = TestApp::spawn().await;
    fill_shop(&app).await;
    let data = app.stop_keeping_dir().await;
    let work = tests::temp_dir();
    let file = backup_file(work.path());

    let output = shoplog(&["backup", "--data", arg(data.path()), "--out", arg(&file)]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let source = events(data.path());
    assert!(stdout.contains(&format!("up to position {}", source.len())), "{stdout}");
    let leftovers: Vec<_> = std::fs::read_dir(work.path()).expect("lists").flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("shop.backup")], "no partial file is left behind");
    assert!(output.stderr.is_empty(), "no progress bar when stdout is not a terminal: {output:?}");
    assert_refused(&shoplog(&["backup", "--data", arg(data.path()), "--out", arg(&file)]), "already exists");
    // Into a directory that is not there: the file given is named, not the hidden one beside it.
    let nowhere = work.path().join("no-such-dir").join("shop.backup");
    let refused = shoplog(&["backup", "--data", arg(data.path()), "--out", arg(&nowhere)]);
    let message = format!(
        "cannot create {}: the directory {} does not exist",
        arg(&nowhere),
        arg(&work.path().join("no-such-dir"))
    );
    assert_refused(&refused, &message);

    // On a terminal (a pseudo-terminal from `script`), a progress bar is drawn.
    let on_terminal = work.path().join("on-terminal.backup");
    let command = format!("{} backup --data {} --out {}", super::SHOPLOG, arg(data.path()), arg(&on_terminal));
    let output = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("runs script (util-linux)");
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("backing up"), "{output:?}");
    std::fs::remove_file(&on_terminal).expect("removes");

    // An existing empty dir is a fine target too.
    let restored_dir = tests::temp_dir();
    let restored = restored_dir.path().to_path_buf();
    let output = shoplog(&["restore", "--in", arg(&file), "--data", arg(&restored)]);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!(
        "restored {} of {}",
        source.len(),
        source.len()
    )));
    assert_eq!(events(&restored), source, "the same events, byte for byte, with the same hashes");
    let output = shoplog(&["verify", "--data", arg(&restored)]);
    assert!(output.status.success(), "{output:?}");

    // The restore rebuilt the read models; the source's live ones are the same.
    let head = source.len() as u64;
    let rebuilt = models(&restored);
    assert_eq!(rebuilt.len(), 4);
    assert!(rebuilt.values().all(|(checkpoint, _)| *checkpoint == head), "{rebuilt:?}");
    assert!(rebuilt.values().all(|(_, records)| !records.is_empty()));
    let live = models(data.path());
    assert_eq!(rebuilt.values().map(|m| &m.1).collect::<Vec<_>>(), live.values().map(|m| &m.1).collect::<Vec<_>>());

    // The restored shop serves: customers log in with their passwords, tokens and all.
    let app = TestApp::serve_dir(restored_dir).await;
    let token = app.login("shopper0@example.com").await;
    let cart = app.get("/api/v1/cart", Some(&token)).await;
    assert_eq!(cart.status, 200, "{cart:?}");
    assert_eq!(cart.body["lines"][0]["sku"], "tea-1", "{cart:?}");
    let sales = app.get("/api/v1/dashboard/sales", Some(VIEWER)).await;
    assert_eq!(sales.body["revenue_cents"].as_i64().map(|cents| cents > 0), Some(true), "{sales:?}");
    app.stop().await;
}

/// A data dir named through a symbolic link (to an empty directory, or to one
/// not made yet) is filled where the link points, and the link stays.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_through_a_symbolic_link_fills_where_it_points() {
    let (data, work, file) = backed_up_shop().await;
    let source = events(data.path());
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).expect("creates");
    for (link, points_to) in [("to-empty", Path::new("empty")), ("dangling", Path::new("not-yet"))] {
        let link = work.path().join(link);
        std::os::unix::fs::symlink(points_to, &link).expect("links");
        let output = shoplog(&["restore", "--in", arg(&file), "--data", arg(&link)]);
        assert!(output.status.success(), "{output:?}");
        assert!(std::fs::symlink_metadata(&link).expect("exists").file_type().is_symlink(), "the link stays");
        assert_eq!(events(&work.path().join(points_to)), source, "filled where {} points", link.display());
        assert!(shoplog(&["verify", "--data", arg(&link)]).status.success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_online_backup_taken_while_writing_ends_at_its_head_and_restores_it() {
    let app = TestApp::spawn().await;
    fill_shop(&app).await;
    let work = tests::temp_dir();
    let file = backup_file(work.path());

    // Commands keep coming while the backup runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, base, stop) = (app.client.clone(), app.base.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acknowledged = 0u32;
            let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
            for round in 0..100_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) || std::time::Instant::now() > until {
                    break;
                }
                let answer = client
                    .post(format!("{base}/api/v1/products/mug-1/restock"))
                    .bearer_auth(ADMIN)
                    .json(&json!({"quantity": 1 + round % 5}))
                    .send()
                    .await;
                if answer.is_ok_and(|answer| answer.status().is_success()) {
                    acknowledged += 1;
                }
            }
            acknowledged
        })
    };
    // Until the log moves past `position`, with the writer going on.
    let moved_past = async |position: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while app.head() <= position {
            assert!(std::time::Instant::now() < deadline, "no command was acknowledged past {position}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    moved_past(app.head()).await;
    let started_at = app.head();
    let args = ["backup", "--server", &app.base, "--token", ADMIN, "--out", arg(&file)].map(str::to_owned);
    let output =
        tokio::task::spawn_blocking(move || shoplog(&args.each_ref().map(String::as_str))).await.expect("runs");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(mode(&file), 0o600, "a backup holds every secret of the shop: its owner's only");
    let summary = store::check_backup(std::fs::File::open(&file).expect("opens"), &mut |_| {}).expect("sound");
    moved_past(summary.last_position).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acknowledged = writer.await.expect("the writer ends");
    assert!(acknowledged > 0);

    assert!(summary.last_position >= started_at, "the backup ends at the head when it started, or later");
    let data = app.stop_keeping_dir().await;
    let source = events(data.path());
    assert!(
        (source.len() as u64) > summary.last_position,
        "commands were accepted after the backup's head ({} events, backup to {})",
        source.len(),
        summary.last_position
    );

    let restored = work.path().join("restored");
    let output = shoplog(&["restore", "--in", arg(&file), "--data", arg(&restored)]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(events(&restored), source[..summary.last_position as usize].to_vec());

    // The source's read models at the backup's head equal the restored ones.
    let source_log = store::EventLog::open(data.path()).expect("opens");
    projections::replay(&source_log, None, Some(summary.last_position), &mut |_| {}).expect("replays");
    drop(source_log);
    let (source_models, restored_models) = (models(data.path()), models(&restored));
    assert!(restored_models.values().all(|(checkpoint, _)| *checkpoint == summary.last_position));
    assert_eq!(source_models, restored_models);
}

/// A shop with no events yet backs up and restores, and the answers say so in words.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_log_backs_up_and_restores_with_no_positions() {
    let app = TestApp::spawn().await;
    let data = app.stop_keeping_dir().await;
    assert!(events(data.path()).is_empty());
    let work = tests::temp_dir();
    let file = backup_file(work.path());
    assert!(shoplog(&["backup", "--data", arg(data.path()), "--out", arg(&file)]).status.success());
    let past = work.path().join("past");
    let output = shoplog(&["restore", "--in", arg(&file), "--data", arg(&past), "--to-position", "1"]);
    assert_refused(&output, "position 1 is not in the backup, which holds no positions");
    assert!(!past.exists());
    let restored = work.path().join("restored");
    let output = shoplog(&["restore", "--in", arg(&file), "--data", arg(&restored)]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("restored 0 of 0 events (no positions) from"), "{stdout}");
    assert!(events(&restored).is_empty());
    assert!(shoplog(&["verify", "--data", arg(&restored)]).status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_stops_at_a_position_or_a_time() {
    let (data, work, file) = backed_up_shop().await;
    let source = events(data.path());

    // The events of one command are appended together (a checkout's order,
    // reservations and cart): a position between two of them is refused, naming
    // the positions around that command; one after it restores.
    let one_append = |a: &store::RecordedEvent, b: &store::RecordedEvent| {
        a.correlation_id == b.correlation_id && a.recorded_at == b.recorded_at
    };
    // Position `inside` and the one after it are of one command.
    let inside = (1..source.len()).find(|&at| one_append(&source[at - 1], &source[at])).expect("a many-event command");
    let mut start = inside;
    while start > 1 && one_append(&source[start - 2], &source[start - 1]) {
        start -= 1;
    }
    let mut end = inside + 1;
    while end < source.len() && one_append(&source[end - 1], &source[end]) {
        end += 1;
    }
    let splitting = work.path().join("splitting");
    let output =
        shoplog(&["restore", "--in", arg(&file), "--data", arg(&splitting), "--to-position", &inside.to_string()]);
    assert_refused(&output, &format!("splits the events one command appended together (positions {start} to {end})"));
    assert!(!splitting.exists(), "a refused restore left a data dir");

    let to_position = work.path().join("to-position");
    let output =
        shoplog(&["restore", "--in", arg(&file), "--data", arg(&to_position), "--to-position", &end.to_string()]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(events(&to_position), source[..end].to_vec());
    assert!(shoplog(&["verify", "--data", arg(&to_position)]).status.success());
    assert!(models(&to_position).values().all(|(checkpoint, _)| *checkpoint == end as u64));

    // A time in the middle: every event recorded at or before it, no other.
    let middle = &source[source.len() / 2];
    let time = middle.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let expected = source.iter().take_while(|event| event.recorded_at <= middle.recorded_at).count();
    assert!(expected < source.len());
    let to_time = work.path().join("to-time");
    let output = shoplog(&["restore", "--in", arg(&file), "--data", arg(&to_time), "--to-time", &time]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(events(&to_time), source[..expected].to_vec());

    // A time between two events (a microsecond after one), and the same
    // instant written with another offset: the events up to it.
    let between = middle.recorded_at + chrono::Duration::microseconds(1);
    let next = &source[expected];
    assert!(next.recorded_at > between, "the next event is later than the time asked");
    let offset = chrono::FixedOffset::east_opt(2 * 3600).expect("an offset");
    for (name, time) in [
        ("between", between.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        ("offset", between.with_timezone(&offset).to_rfc3339_opts(chrono::SecondsFormat::Micros, false)),
    ] {
        let dir = work.path().join(name);
        let output = shoplog(&["restore", "--in", arg(&file), "--data", arg(&dir), "--to-time", &time]);
        assert!(output.status.success(), "{time}: {output:?}");
        assert_eq!(events(&dir), source[..expected].to_vec(), "{time}");
        assert!(shoplog(&["verify", "--data", arg(&dir)]).status.success(), "{time}");
    }
    // A time after the last event: the whole log.
    let after = source[source.len() - 1].recorded_at + chrono::Duration::seconds(1);
    let whole = work.path().join("after");
    let time = after.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    assert!(shoplog(&["restore", "--in", arg(&file), "--data", arg(&whole), "--to-time", &time]).status.success());
    assert_eq!(events(&whole), source);

    // Bad points in time are refused and create nothing.
    let nowhere = work.path().join("nowhere");
    let past = (source.len() + 1).to_string();
    assert_refused(
        &shoplog(&["restore", "--in", arg(&file), "--data", arg(&nowhere), "--to-position", &past]),
        "not in the backup",
    );
    assert_refused(
        &shoplog(&["restore", "--in", arg(&file), "--data", arg(&nowhere), "--to-position", "0"]),
        "not in the backup",
    );
    // A directory where a file is wanted.
    for command in ["restore", "import"] {
        let output = shoplog(&[command, "--in", arg(work.path()), "--data", arg(&nowhere)]);
        assert_refused(&output, "is a directory, not a file");
    }
    // A file with no line break is refused once a line is past any event's
    // length, not read whole.
    let output = shoplog(&["import", "--in", "/dev/zero", "--data", arg(&nowhere)]);
    assert_refused(&output, "a line longer than");
    assert!(!nowhere.exists());
    assert_refused(
        &shoplog(&["restore", "--in", arg(&file), "--data", arg(&nowhere), "--to-time", "2001-01-01T00:00:00Z"]),
        "no event",
    );
    assert_refused(
        &shoplog(&["restore", "--in", arg(&file), "--data", arg(&nowhere), "--to-time", "yesterday"]),
        "RFC 3339",
    );
    assert!(!nowhere.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_or_cut_backup_is_refused_and_leaves_nothing_behind() {
    let (data, work, file) = backed_up_shop().await;
    let bytes = std::fs::read(&file).expect("reads");
    assert!(store::check_backup(&bytes[..], &mut |_| {}).is_ok());

    // Every single flipped byte, and every cut, is caught by the check restore runs first.
    for offset in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[offset] ^= 0x20;
        assert!(store::check_backup(&damaged[..], &mut |_| {}).is_err(), "a flip at byte {offset} went unnoticed");
    }
    for len in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
        assert!(store::check_backup(&bytes[..len], &mut |_| {}).is_err(), "a cut at {len} went unnoticed");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(store::check_backup(&longer[..], &mut |_| {}).is_err(), "bytes after the trailer");

    // Through the binary: one line, exit 2, no data dir and no staging dir left.
    let target = work.path().join("restored");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    let flipped_file = work.path().join("flipped.backup");
    std::fs::write(&flipped_file, &flipped).expect("writes");
    assert_refused(&shoplog(&["restore", "--in", arg(&flipped_file), "--data", arg(&target)]), "refusing");
    let cut_file = work.path().join("cut.backup");
    std::fs::write(&cut_file, &bytes[..bytes.len() - 40]).expect("writes");
    assert_refused(&shoplog(&["restore", "--in", arg(&cut_file), "--data", arg(&target)]), "cut short");
    let names: Vec<_> = std::fs::read_dir(work.path()).expect("lists").flatten().map(|e| e.file_name()).collect();
    assert_eq!(names.len(), 3, "only the three backup files: {names:?}");

    // Other bad input: a missing file, a data dir that is not empty.
    assert_refused(
        &shoplog(&["restore", "--in", "/no/such/file", "--data", arg(&target)]),
        "cannot open /no/such/file",
    );
    let head_before = events(data.path()).len();
    assert_refused(&shoplog(&["restore", "--in", arg(&file), "--data", arg(data.path())]), "is not empty");
    // A file where the data dir would go is named as one.
    let a_file = data.path().join("a-file");
    std::fs::write(&a_file, b"not a dir").expect("writes");
    assert_refused(&shoplog(&["restore", "--in", arg(&file), "--data", arg(&a_file)]), "is a file, not a directory");
    assert_refused(&shoplog(&["verify", "--data", arg(&a_file)]), "is a file, not a directory");
    assert_refused(&shoplog(&["backup", "--data", arg(&a_file), "--out", arg(&target)]), "is a file, not a directory");
    assert_eq!(events(data.path()).len(), head_before);
    assert_refused(&shoplog(&["backup", "--data", "/no/such/dir", "--out", arg(&target)]), "does not exist");
    // A dir a server holds: say so, and point at the online backup.
    let held = store::EventLog::open(data.path()).expect("opens");
    let output = shoplog(&["backup", "--data", arg(data.path()), "--out", arg(&target)]);
    assert_refused(&output, "in use by a running server");
    assert_refused(&output, "--server URL");
    drop(held);
    assert!(!target.exists());
    assert_refused(&shoplog(&["backup", "--out", arg(&target)]), "--data");

    // A backup of a damaged log fails part way, after its file was begun: one
    // line naming the position, and neither the file nor its partial left.
    {
        let db = tests::raw_sled(data.path());
        let events = db.open_tree("events").expect("tree");
        let (key, value) = events.iter().nth(1).expect("a second chunk").expect("reads");
        let mut damaged = value.to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        events.insert(key, damaged).expect("writes");
        db.flush().expect("flushes");
    }
    let out_dir = tests::temp_dir();
    let out = out_dir.path().join("of-a-damaged-log.backup");
    assert_refused(&shoplog(&["backup", "--data", arg(data.path()), "--out", arg(&out)]), "corrupt at position");
    let left: Vec<_> = std::fs::read_dir(out_dir.path()).expect("lists").flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "a failed backup left {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_online_backup_with_a_bad_token_or_no_server_is_one_line() {
    let app = TestApp::spawn().await;
    let work = tests::temp_dir();
    let file = backup_file(work.path());
    let base = app.base.clone();
    let output = tokio::task::spawn_blocking({
        let (base, file) = (base.clone(), file.clone());
        move || shoplog(&["backup", "--server", &base, "--token", VIEWER, "--out", arg(&file)])
    })
    .await
    .expect("runs");
    assert_refused(&output, "refused the token");
    let output = tokio::task::spawn_blocking({
        let (base, file) = (base.clone(), file.clone());
        move || shoplog(&["backup", "--server", &base, "--token", "wrong-token-wrong-token", "--out", arg(&file)])
    })
    .await
    .expect("runs");
    assert_refused(&output, "refused the token");
    app.stop().await;
    assert_refused(&shoplog(&["backup", "--server", &base, "--token", ADMIN, "--out", arg(&file)]), "cannot reach");
    // A password in the URL is not said back.
    let with_password = base.replacen("http://", "http://operator:hunter2-secret@", 1);
    let output = shoplog(&["backup", "--server", &with_password, "--token", ADMIN, "--out", arg(&file)]);
    assert_refused(&output, &format!("cannot reach {base}/admin/backup"));
    assert!(!String::from_utf8_lossy(&output.stderr).contains("hunter2"), "{output:?}");
    let https = base.replacen("http://", "https://", 1);
    assert_refused(&shoplog(&["backup", "--server", &https, "--token", ADMIN, "--out", arg(&file)]), "only http://");

    // A server that takes the connection and never answers: given up after --timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let silent_url = format!("http://{}", silent.local_addr().expect("an address"));
    let started = std::time::Instant::now();
    let output = shoplog(&["backup", "--server", &silent_url, "--token", ADMIN, "--timeout", "1", "--out", arg(&file)]);
    assert_refused(&output, "timed out");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "it waited {:?}", started.elapsed());
    drop(silent);
    assert_refused(
        &shoplog(&["backup", "--server", &base, "--token", ADMIN, "--timeout", "0", "--out", arg(&file)]),
        "--timeout",
    );
    assert!(!file.exists());
    assert_eq!(std::fs::read_dir(work.path()).expect("lists").count(), 0, "no partial file is left behind");
}

/// A restore to a position before a customer was forgotten keeps them
/// forgotten (the backup holds no key for them, and forgetting is never
/// undone), and records the forgetting again (what it cut off), but not the
/// release of their email that went with the forget (the address is unreadable
/// there): the address is still free to register again, and the old customer's
/// token and password no longer work.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_to_before_a_forget_keeps_the_customer_forgotten_and_the_email_free() {
    let app = TestApp::spawn().await;
    let customer_id = app.register("ann@example.com").await;
    let old_token = app.login("ann@example.com").await;
    let before_forget = app.head();
    let forgotten = app.post(&format!("/admin/customers/{customer_id}/forget"), Some(ADMIN), json!({})).await;
    assert_eq!(forgotten.status, 200, "{forgotten:?}");
    let data = app.stop_keeping_dir().await;
    let work = tests::temp_dir();
    let file = backup_file(work.path());
    assert!(shoplog(&["backup", "--data", arg(data.path()), "--out", arg(&file)]).status.success());
    let restored = tests::temp_dir();
    let position = before_forget.to_string();
    let output = shoplog(&["restore", "--in", arg(&file), "--data", arg(restored.path()), "--to-position", &position]);
    assert!(output.status.success(), "{output:?}");
    let restored_events = events(restored.path());
    assert_eq!(restored_events.len() as u64, before_forget + 1, "the forget is cut off, and recorded again");
    assert_eq!(restored_events.last().map(|event| event.event_type.as_str()), Some("CustomerForgotten"));

    let app = TestApp::serve_dir(restored).await;
    let login =
        app.post("/api/v1/sessions", None, json!({"email": "ann@example.com", "password": "correct horse"})).await;
    login.problem(401);
    app.get("/api/v1/cart", Some(&old_token)).await.problem(401);
    let again = app.register("ann@example.com").await;
    assert_ne!(again, customer_id);
    app.login("ann@example.com").await;
    let claim: Vec<String> = app.get("/api/v1/events?from=1&limit=100", Some(ADMIN)).await.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|event| event["stream"].as_str().is_some_and(|stream| stream.starts_with("email-")))
        .map(|event| event["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(claim, ["EmailClaimed", "EmailReleased", "EmailClaimed"], "the dead claim is released, then claimed");
    app.stop().await;
}

/// Long work draws a progress bar on a terminal (a pseudo-terminal from
/// `script`) and none when its output is piped: restore (with its check, its
/// verify and its rebuild of the read models), backup (with its check of what it
/// wrote), replay, verify, stats, export and import.
#[tokio::test(flavor = "multi_thread")]
async fn every_long_command_draws_a_progress_bar_on_a_terminal_and_none_when_piped() {
    let (_data, work, file) = backed_up_shop().await;
    let on_terminal = |args: &[&str]| {
        let command = std::iter::once(super::SHOPLOG).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
        let output = std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .output()
            .expect("runs script (util-linux)");
        assert!(output.status.success(), "{command}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let piped = |args: &[&str]| {
        let output = shoplog(args);
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let export = work.path().join("shop.ndjson");
    let (restored, imported) = (work.path().join("restored"), work.path().join("imported"));
    let (restored_again, imported_again) = (work.path().join("restored-again"), work.path().join("imported-again"));
    let export_again = work.path().join("again.ndjson");
    let (backup, backup_again) = (work.path().join("terminal.backup"), work.path().join("piped.backup"));
    for (terminal, plain, labels) in [
        (
            vec!["restore", "--in", arg(&file), "--data", arg(&restored)],
            vec!["restore", "--in", arg(&file), "--data", arg(&restored_again)],
            &["checking", "restoring", "verifying", "rebuilding read models"][..],
        ),
        (
            vec!["backup", "--data", arg(&restored), "--out", arg(&backup)],
            vec!["backup", "--data", arg(&restored_again), "--out", arg(&backup_again)],
            &["backing up", "checking the backup"][..],
        ),
        (vec!["replay", "--data", arg(&restored)], vec!["replay", "--data", arg(&restored_again)], &["replaying"][..]),
        (vec!["verify", "--data", arg(&restored)], vec!["verify", "--data", arg(&restored_again)], &["verifying"][..]),
        (vec!["stats", "--data", arg(&restored)], vec!["stats", "--data", arg(&restored_again)], &["counting"][..]),
        (
            vec!["export", "--data", arg(&restored), "--with-secrets", "--out", arg(&export)],
            vec!["export", "--data", arg(&restored_again), "--with-secrets", "--out", arg(&export_again)],
            &["exporting"][..],
        ),
        (
            vec!["import", "--data", arg(&imported), "--in", arg(&export)],
            vec!["import", "--data", arg(&imported_again), "--in", arg(&export_again)],
            &["importing"][..],
        ),
    ] {
        let drawn = on_terminal(&terminal);
        for label in labels {
            assert!(drawn.contains(label), "{terminal:?} drew no {label:?} bar: {drawn}");
        }
        let stderr = piped(&plain);
        for label in labels {
            assert!(!stderr.contains(label), "{plain:?} drew a bar into a pipe: {stderr}");
        }
    }
}

/// `GET /admin/backup` is a snapshot: its body ends exactly at the head its
/// `X-Head-Position` names, however long the client takes to read it while
/// commands go on.
#[tokio::test(flavor = "multi_thread")]
async fn the_backup_route_streams_a_snapshot_that_ends_at_its_head_position() {
    // Several MiB: the server sends it 256 KiB at a time, so most of it is read
    // from the log while the commands below are acknowledged.
    let dir = tests::temp_dir();
    tests::big_log(dir.path(), 40_000).await;
    let app = TestApp::serve_dir(dir).await;
    let response = app.client.get(format!("{}/admin/backup", app.base)).bearer_auth(ADMIN).send().await;
    let mut response = response.expect("answers");
    assert_eq!(response.status(), 200);
    let head: u64 = response.headers()["x-head-position"].to_str().expect("ascii").parse().expect("a number");
    let mut body = Vec::new();
    let mut written_meanwhile = 0;
    while let Some(chunk) = response.chunk().await.expect("reads") {
        body.extend_from_slice(&chunk);
        // A slow reader: commands are acknowledged between its reads.
        let restocked = app.post("/api/v1/products/big-0/restock", Some(ADMIN), json!({"quantity": 1})).await;
        written_meanwhile += u32::from(restocked.status == 200);
    }
    assert!(body.len() > 4 * 256 * 1024, "a backup of {} bytes is sent in one piece", body.len());
    assert!(written_meanwhile > 4, "{written_meanwhile} commands acknowledged while the backup was read");
    assert!(app.head() > head, "the log moved on while the backup was read");
    let summary = store::check_backup(body.as_slice(), &mut |_| {}).expect("a sound backup");
    assert_eq!(summary.last_position, head, "the backup ends at its head, not later");
    app.stop().await;
}

/// The hidden staging dirs and partial files beside `target`.
fn hidden_beside(target: &Path) -> Vec<String> {
    let name = target.file_name().expect("a name").to_string_lossy().into_owned();
    let parent = target.parent().expect("a parent");
    std::fs::read_dir(parent)
        .expect("lists")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|entry| entry.starts_with(&format!(".{name}.")))
        .collect()
}

/// Ctrl-C in the middle of a restore removes its staging dir (which holds every
/// key of the shop) and exits 130. A restore into the current directory is
/// refused before any work. What a run that could not clean up (SIGKILL) left
/// beside a target is removed by the next run on it, which says so.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_restore_or_backup_leaves_nothing_behind() {
    let work = tests::temp_dir();
    let data = work.path().join("data");
    tests::big_log(&data, 60_000).await;
    let file = backup_file(work.path());
    let started = std::time::Instant::now();
    assert!(shoplog(&["backup", "--data", arg(&data), "--out", arg(&file)]).status.success());
    let whole = started.elapsed();

    // SIGTERM at moments spread over the later part of a backup's run, where
    // the file is synced and renamed (at about two thirds of a whole run, with
    // the process's start and end, on this machine): the backup ends with 130
    // and leaves nothing, or had ended whole with 0; never another error (it
    // used to find its partial file removed under it, and end with 2).
    for step in 14..=25u32 {
        let out = work.path().join(format!("interrupted-{step}.backup"));
        let child = std::process::Command::new(super::SHOPLOG)
            .args(["backup", "--data", arg(&data), "--out", arg(&out)])
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("backup starts");
        std::thread::sleep(whole * step / 32);
        let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let output = child.wait_with_output().expect("the backup ends");
        let stderr = String::from_utf8_lossy(&output.stderr);
        match output.status.code() {
            Some(130) => assert!(!out.exists(), "an interrupted backup left {}: {stderr}", out.display()),
            Some(0) => assert!(out.exists(), "{stderr}"),
            other => panic!("SIGTERM at {step}/32 of a backup's time: exit {other:?}: {stderr}"),
        }
        assert_eq!(hidden_beside(&out), Vec::<String>::new(), "a partial file was left behind: {stderr}");
    }

    let target = work.path().join("restored");
    let mut child = std::process::Command::new(super::SHOPLOG)
        .args(["restore", "--in", arg(&file), "--data", arg(&target)])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("restore starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while hidden_beside(&target).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the restore never began its staging dir");
        assert!(child.try_wait().expect("polls").is_none(), "the restore ended before it was interrupted");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let sent = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().expect("kill");
    assert!(sent.success());
    let output = child.wait_with_output().expect("the restore ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(stderr.lines().filter(|line| line.contains("interrupted")).count(), 1, "one line: {stderr}");
    assert_eq!(hidden_beside(&target), Vec::<String>::new(), "the staging dir was left behind: {stderr}");
    assert!(!target.exists(), "an interrupted restore made the target");

    // The current directory, empty, cannot be replaced by a staging dir: refused
    // before any work, naming a directory to use instead.
    let here = work.path().join("here");
    std::fs::create_dir(&here).expect("creates");
    let output = std::process::Command::new(super::SHOPLOG)
        .args(["restore", "--in", arg(&file), "--data", "."])
        .current_dir(&here)
        .env_remove("RUST_LOG")
        .output()
        .expect("runs");
    assert_refused(&output, "is the current directory");
    assert_eq!(std::fs::read_dir(&here).expect("lists").count(), 0, "a refused restore wrote into .");
    assert_eq!(hidden_beside(&here), Vec::<String>::new());

    // What a killed run left: a staging dir and a partial file of processes gone.
    let gone = 4_194_305; // past the largest pid Linux hands out
    let left_dir = work.path().join(format!(".restored.incoming-{gone}"));
    let leave_dir = || {
        std::fs::create_dir(&left_dir).expect("creates");
        std::fs::write(left_dir.join("db"), b"keys").expect("writes");
    };
    // It goes first, also in a run that is then refused (it holds keys).
    let refused_and_cleared = |output: std::process::Output, refusal: &str| {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("left by an interrupted run") && stderr.contains(refusal), "{stderr}");
    };
    leave_dir();
    let output = shoplog(&["restore", "--in", arg(&file), "--data", arg(&target), "--to-position", "999999"]);
    refused_and_cleared(output, "not in the backup");
    assert_eq!(hidden_beside(&target), Vec::<String>::new());
    leave_dir();
    let output = shoplog(&["import", "--in", arg(&file), "--data", arg(&target)]);
    refused_and_cleared(output, "this is a shoplog backup, not an export: restore it with `shoplog restore");
    assert_eq!(hidden_beside(&target), Vec::<String>::new());
    leave_dir();
    let output = shoplog(&["restore", "--in", arg(&file), "--data", arg(&target)]);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("left by an interrupted run"), "{output:?}");
    assert_eq!(hidden_beside(&target), Vec::<String>::new());

    let again = work.path().join("again.backup");
    let left_file = work.path().join(format!(".again.backup.partial-{gone}"));
    std::fs::write(&again, b"taken").expect("writes");
    std::fs::write(&left_file, b"part of a backup").expect("writes");
    let output = shoplog(&["backup", "--data", arg(&target), "--out", arg(&again)]);
    refused_and_cleared(output, "already exists");
    assert!(!left_file.exists(), "a refused backup left the partial file a killed one left");
    // So does an export refused before it read the log.
    let exported = work.path().join("shop.ndjson");
    let left_export = work.path().join(format!(".shop.ndjson.partial-{gone}"));
    std::fs::write(&left_export, b"part of an export").expect("writes");
    let output = shoplog(&["export", "--data", "/no/such/dir", "--out", arg(&exported)]);
    refused_and_cleared(output, "does not exist");
    assert!(!left_export.exists(), "a refused export left the partial file a killed one left");
    // A server started on the dir a killed restore was filling removes its staging dir too
    // (here it then fails: the dir is a file).
    let served = work.path().join("served");
    std::fs::write(&served, b"not a dir").expect("writes");
    let left_beside_served = work.path().join(format!(".served.incoming-{gone}"));
    std::fs::create_dir(&left_beside_served).expect("creates");
    let output = shoplog(&["serve", "--data", arg(&served), "--listen", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("left by an interrupted run"), "{stderr}");
    assert!(!left_beside_served.exists(), "serve left the staging dir a killed restore left");
    std::fs::remove_file(&again).expect("removes");
    std::fs::write(&left_file, b"part of a backup").expect("writes");
    let output = shoplog(&["backup", "--data", arg(&target), "--out", arg(&again)]);
    assert!(output.status.success(), "{output:?}");
    assert!(!left_file.exists(), "the partial file a killed backup left is still there");
}

/// An exported `SHOPLOG_SERVER` (with `SHOPLOG_TOKEN` or without) does not turn
/// an offline `backup --data DIR` or `forget --data DIR` into work on that
/// server: what the command line says wins over the environment. Both on the
/// command line is refused, and so is both in the environment.
#[tokio::test(flavor = "multi_thread")]
async fn data_on_the_command_line_wins_over_a_server_in_the_environment() {
    let app = TestApp::spawn().await;
    let customer_id = app.register("ann@example.com").await;
    let data = app.stop_keeping_dir().await;
    let work = tests::temp_dir();
    // Nothing listens there: a command that went to it would fail.
    let elsewhere = "http://127.0.0.1:9";
    let with_server_in_env = |args: &[&str], token: bool| {
        let mut command = std::process::Command::new(super::SHOPLOG);
        command.args(args).env("SHOPLOG_SERVER", elsewhere).env_remove("SHOPLOG_TOKEN").env_remove("RUST_LOG");
        if token {
            command.env("SHOPLOG_TOKEN", ADMIN);
        }
        command.output().expect("runs shoplog")
    };
    for (name, token) in [("without-token.backup", false), ("with-token.backup", true)] {
        let file = work.path().join(name);
        let output = with_server_in_env(&["backup", "--data", arg(data.path()), "--out", arg(&file)], token);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert!(String::from_utf8_lossy(&output.stdout).contains("backed up"), "{output:?}");
        assert!(file.is_file(), "{name}");
    }
    let both = work.path().join("both.backup");
    let args = ["backup", "--data", arg(data.path()), "--server", elsewhere, "--token", ADMIN, "--out", arg(&both)];
    assert_refused(&shoplog(&args), "not both");
    assert!(!both.exists());
    // Both in the environment, neither on the command line: refused, not guessed.
    let mut command = std::process::Command::new(super::SHOPLOG);
    command.args(["backup", "--out", arg(&both)]).env("SHOPLOG_DATA", data.path()).env("SHOPLOG_SERVER", elsewhere);
    let output = command.env("SHOPLOG_TOKEN", ADMIN).env_remove("RUST_LOG").output().expect("runs shoplog");
    assert_refused(&output, "SHOPLOG_DATA and SHOPLOG_SERVER are both set");
    assert!(!both.exists());

    let output = with_server_in_env(&["forget", "--customer", &customer_id, "--data", arg(data.path())], true);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let forgotten = events(data.path()).into_iter().filter(|event| event.event_type == "CustomerForgotten").count();
    assert_eq!(forgotten, 1, "the forget went to the data dir");
}

/// A backup holds the idempotency keys of the appends it holds: a command
/// answered before it, sent again with its `Idempotency-Key` to the restored
/// shop (as a client does after a 503 whose outcome was unknown), gets its
/// first answer and is not appended twice. A restore to before that command
/// leaves its key free: sent again, it is appended.
#[tokio::test(flavor = "multi_thread")]
async fn a_restored_log_answers_a_command_sent_again_with_its_key_as_the_first_time() {
    let app = TestApp::spawn().await;
    app.create_product("mug-1", 1200, 1).await;
    async fn restock(app: &TestApp) -> crate::api::Reply {
        let (headers, body) = ([("idempotency-key", "restock-mug-once")], json!({"quantity": 5}));
        app.request(reqwest::Method::POST, "/api/v1/products/mug-1/restock", Some(ADMIN), Some(body), &headers).await
    }
    let first = restock(&app).await;
    assert_eq!(first.status, 200, "{first:?}");
    let position = first.body["position"].as_u64().expect("a position");
    app.create_product("tea-1", 450, 1).await;
    let data = app.stop_keeping_dir().await;
    let work = tests::temp_dir();
    let file = backup_file(work.path());
    assert!(shoplog(&["backup", "--data", arg(data.path()), "--out", arg(&file)]).status.success());

    let whole = tests::temp_dir();
    assert!(shoplog(&["restore", "--in", arg(&file), "--data", arg(whole.path())]).status.success());
    let app = TestApp::serve_dir(whole).await;
    let head = app.head();
    let again = restock(&app).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!((&again.body["position"], &again.body["duplicate"]), (&json!(position), &json!(true)), "{again:?}");
    assert_eq!(app.head(), head, "nothing was appended again");
    app.stop().await;

    let before = tests::temp_dir();
    let to = (position - 1).to_string();
    let output = shoplog(&["restore", "--in", arg(&file), "--data", arg(before.path()), "--to-position", &to]);
    assert!(output.status.success(), "{output:?}");
    let app = TestApp::serve_dir(before).await;
    let afresh = restock(&app).await;
    assert_eq!(afresh.status, 200, "{afresh:?}");
    assert_eq!((&afresh.body["position"], &afresh.body["duplicate"]), (&json!(position), &json!(false)), "{afresh:?}");
    app.stop().await;
}
