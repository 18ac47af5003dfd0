//! Real process death: a child appends and reports each acknowledged event; the
//! parent SIGKILLs it at a random moment, reopens the directory and checks that
//! every acknowledged event is there, at its position, and the log verifies.
//! Every other round caps the write-ahead log at 64 KiB, so that kills also land
//! in checkpoints. `SHOPLOG_CRASH_ROUNDS=300` runs longer (with `--release`: some
//! 8 minutes on 2 cores, where unoptimized opening the sealed payloads makes it 20);
//! `SHOPLOG_SEED` replays a run.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use store::EventLog;
use uuid::Uuid;

const CHILD: &str = env!("CARGO_BIN_EXE_crash_appender");

/// Every `ack <position> <event id>` line the child printed.
pub(crate) fn acks_of(lines: &[String]) -> Vec<(u64, Uuid)> {
    lines
        .iter()
        .filter_map(|line| {
            let mut words = line.strip_prefix("ack ")?.split(' ');
            let position = words.next()?.parse().ok()?;
            let event_id = words.next()?.parse().ok()?;
            Some((position, event_id))
        })
        .collect()
}

/// Read the child's stdout on a thread, line by line, until it closes.
fn collect_lines(child: &mut Child) -> (mpsc::Receiver<String>, std::thread::JoinHandle<()>) {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (sender, receiver) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    (receiver, reader)
}

/// Check that each acknowledged event is in the log at its position, and that the
/// whole log verifies; returns the head and what the open repaired.
///
/// The log is read in order, a page at a time, not once per acknowledgement (a
/// read of one position parses its chunk up to it): the acknowledgements of
/// every round so far are checked again after each kill, so a long run reads
/// the log over and over (100 rounds with `--release`: 58.6 s against 75.8 s).
pub(crate) fn assert_acks_survived(dir: &Path, acked: &[(u64, Uuid)]) -> (u64, store::Recovery) {
    const PAGE: usize = 20_000;
    let log = EventLog::open(dir).expect("the log reopens after the crash");
    let report = log.verify().expect("the log verifies after the crash");
    let mut acked = acked.to_vec();
    acked.sort_unstable_by_key(|(position, _)| *position);
    let mut page: Vec<store::RecordedEvent> = Vec::new();
    for (position, event_id) in &acked {
        // The offset of `position` in the page, when the page holds it.
        let offset = |page: &[store::RecordedEvent]| {
            let offset = position.checked_sub(page.first()?.position)?;
            usize::try_from(offset).ok().filter(|offset| *offset < page.len())
        };
        if offset(&page).is_none() {
            page = log.read_all(*position, PAGE).expect("reads");
        }
        let found = offset(&page)
            .map(|offset| &page[offset])
            .unwrap_or_else(|| panic!("acknowledged position {position} is gone (head {})", report.head));
        assert_eq!(found.position, *position, "the log's positions are contiguous");
        assert_eq!(found.event_id, *event_id, "acknowledged position {position} holds another event");
    }
    (report.head, log.recovery())
}

/// Run the child appending into `dir` (its WAL files capped at `wal_kib`),
/// SIGKILL it `after` its first acknowledgement, and return what it printed.
fn appended_until_killed(dir: &Path, wal_kib: &str, after: Duration) -> Vec<String> {
    let mut child = tests::KillOnDrop(
        Command::new(CHILD)
            .arg(dir)
            .arg("run")
            .arg(wal_kib)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the child starts"),
    );
    let (lines, reader) = collect_lines(&mut child);
    let first = lines.recv_timeout(Duration::from_secs(20)).expect("the child acknowledges something");
    std::thread::sleep(after);
    child.kill().expect("SIGKILL");
    child.wait().expect("the child is reaped");
    reader.join().expect("reader ends");
    std::iter::once(first).chain(lines.try_iter()).collect()
}

#[test]
fn acknowledged_appends_survive_sigkill_at_random_moments() {
    let seed = tests::seed("crash");
    let rounds: usize = std::env::var("SHOPLOG_CRASH_ROUNDS").ok().and_then(|rounds| rounds.parse().ok()).unwrap_or(20);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tests::temp_dir();
    let mut all_acked = Vec::new();
    let mut last_head = 0;
    let mut replayed = 0;
    for round in 0..rounds {
        let wal_kib = if round % 2 == 1 { "64" } else { "16384" };
        // Let it get going (its first ack), then kill it at a random moment.
        let round_lines = appended_until_killed(dir.path(), wal_kib, Duration::from_millis(rng.random_range(0..150)));
        let acked = acks_of(&round_lines);
        assert!(!acked.is_empty(), "round {round}: no acks parsed from {round_lines:?}");
        all_acked.extend(acked);
        let (head, recovery) = assert_acks_survived(dir.path(), &all_acked);
        assert!(head >= last_head, "round {round}: the head went back from {last_head} to {head}");
        last_head = head;
        replayed += recovery.batches_replayed;
    }
    assert!(all_acked.len() >= rounds, "every round acknowledged events");
    println!(
        "crash: {rounds} rounds, {} acknowledged events all present after the last kill, {replayed} batches replayed from the write-ahead log",
        all_acked.len()
    );
    // sled is flushed only at checkpoints, so a kill leaves acknowledged batches
    // that only the write-ahead log holds: the test is of the WAL's replay.
    assert!(replayed > 0, "no round needed the write-ahead log (seed {seed})");
}

/// Set the stored head back to `head` with sled itself: the state a crash leaves
/// when it comes after a batch's records but before its commit mark, the head.
/// The stored head put back to `head`, as a crash before the batch's commit
/// mark leaves it: the last checkpoint was at or before it.
fn rewind_stored_head(dir: &Path, head: u64) {
    let db = tests::raw_sled(dir);
    db.open_tree("meta").expect("tree").insert("head", &head.to_be_bytes()).expect("writes");
    db.flush().expect("flushes");
    tests::set_checkpointed(dir, head);
}

fn second_batch() -> store::AppendRequest {
    tests::append_many(vec![
        ("a", store::ExpectedVersion::Exact(3), vec![tests::event("E", b"4"), tests::event("E", b"5")]),
        ("b", store::ExpectedVersion::NoStream, vec![tests::event("E", b"6")]),
    ])
    .with_idempotency("the second batch", [9; 32])
}

/// A log of two batches: three events on `a`, then [`second_batch`] (positions 4 to 6).
async fn log_with_two_batches(dir: &Path) -> EventLog {
    let log = EventLog::open(dir).expect("opens");
    let first =
        tests::append("a", store::ExpectedVersion::NoStream, (1..=3).map(|_| tests::event("E", b"x")).collect());
    log.append(first).await.expect("appends");
    assert_eq!(log.append(second_batch()).await.expect("appends").last_position, 6);
    log
}

#[tokio::test]
async fn a_batch_torn_by_a_crash_is_dropped_whole_at_the_next_open() {
    let dir = tests::temp_dir();
    drop(log_with_two_batches(dir.path()).await);
    // The second batch's records, index entries and idempotency entry are on
    // disk, its commit mark is not.
    rewind_stored_head(dir.path(), 3);

    let log = EventLog::open(dir.path()).expect("a torn batch is no reason to refuse to open");
    assert_eq!(log.head(), 3);
    let report = log.verify().expect("what is left verifies: chain, index, tail");
    assert_eq!((report.events, report.streams), (3, 1));
    assert_eq!(log.stream_version("a").expect("reads"), 3);
    assert_eq!(log.stream_version("b").expect("reads"), 0);
    assert_eq!(log.read_all(1, 100).expect("reads").len(), 3);
    // The batch was never acknowledged: sent again with its idempotency key, it is
    // appended afresh, not answered from the torn batch's entry.
    let again = log.append(second_batch()).await.expect("the same request appends again");
    assert!(!again.duplicate, "{again:?}");
    assert_eq!((again.first_position, again.last_position), (4, 6));
    assert_eq!(log.verify().expect("verifies").events, 6);
    assert!(log.append(second_batch()).await.expect("answers").duplicate);
}

/// A crash during the open that drops a torn batch can leave some of that
/// batch's chunks removed and others not: the next open drops what is left
/// of it, and the log holds the batches before it.
#[tokio::test]
async fn a_torn_batch_an_earlier_open_had_partly_dropped_is_dropped_at_the_next() {
    let dir = tests::temp_dir();
    {
        let log = EventLog::open(dir.path()).expect("opens");
        let first =
            tests::append("a", store::ExpectedVersion::NoStream, (0..3).map(|_| tests::event("E", b"x")).collect());
        log.append(first).await.expect("appends");
        // Seventy records: more than one chunk holds.
        let long =
            tests::append("b", store::ExpectedVersion::NoStream, (0..70).map(|_| tests::event("E", b"y")).collect());
        assert_eq!(log.append(long).await.expect("appends").last_position, 73);
    }
    rewind_stored_head(dir.path(), 3);
    {
        let db = tests::raw_sled(dir.path());
        let events = db.open_tree("events").expect("tree");
        let chunks: Vec<Vec<u8>> = events.iter().keys().map(|key| key.expect("reads").to_vec()).collect();
        assert!(chunks.len() >= 3, "the torn batch spans two chunks at least: {chunks:?}");
        // An open dropping it cut the stream index first (every entry of `b`,
        // whose versions all came with it), then removed its first chunk, and
        // then the process died.
        let streams = db.open_tree("streams").expect("tree");
        let index_of_b: Vec<_> = streams.scan_prefix(b"b\0").keys().map(|key| key.expect("reads")).collect();
        assert!(!index_of_b.is_empty(), "a checkpoint indexed b");
        for key in index_of_b {
            streams.remove(key).expect("removes");
        }
        events.remove(4u64.to_be_bytes()).expect("removes").expect("a chunk began at 4");
        db.flush().expect("flushes");
    }

    let log = EventLog::open(dir.path()).expect("what is left of a torn batch is no reason to refuse to open");
    assert_eq!(log.head(), 3);
    assert_eq!(log.verify().expect("verifies").events, 3);
    assert_eq!(log.stream_version("b").expect("reads"), 0);
    let again = tests::append("b", store::ExpectedVersion::NoStream, vec![tests::event("E", b"z")]);
    assert_eq!(log.append(again).await.expect("appends").last_position, 4);
}

#[tokio::test]
async fn a_stored_head_that_went_back_without_a_torn_batch_is_reported_not_repaired() {
    let dir = tests::temp_dir();
    {
        let log = log_with_two_batches(dir.path()).await;
        log.append(tests::append("c", store::ExpectedVersion::Any, vec![tests::event("E", b"7")]))
            .await
            .expect("appends");
    }
    // Positions 4 to 7 were acknowledged in two batches; the last batch began at 7,
    // so a head of 3 is damage, and dropping 4 to 7 would lose acknowledged events.
    rewind_stored_head(dir.path(), 3);
    match EventLog::open(dir.path()) {
        Err(store::StoreError::Corrupt { position, reason }) => {
            assert_eq!(position, 4, "the first position past the stored head: {reason}");
            assert!(reason.contains("the last event is 7"), "{reason}");
        }
        other => panic!("the open should report the damage, got {other:?}"),
    }
    // The stored head going back below what a checkpoint made durable (here the
    // close's, at 7) is damage of sled's file, whatever sled's records say.
    {
        let db = tests::raw_sled(dir.path());
        db.open_tree("meta").expect("tree").insert("head", &3u64.to_be_bytes()).expect("writes");
        db.flush().expect("flushes");
    }
    tests::set_checkpointed(dir.path(), 7);
    match EventLog::open(dir.path()) {
        Err(store::StoreError::Corrupt { position, reason }) => {
            assert_eq!(position, 4, "{reason}");
            assert!(reason.contains("a checkpoint had made it durable up to 7"), "{reason}");
        }
        other => panic!("the open should report the damage, got {other:?}"),
    }
    // Nothing was dropped: with its head put back, the log holds all seven.
    rewind_stored_head(dir.path(), 7);
    let log = EventLog::open(dir.path()).expect("opens");
    assert_eq!(log.verify().expect("verifies").events, 7);
    drop(log);

    // The other way round: the last batch's records lost, the head kept. The
    // first bad position is the first one missing.
    {
        let db = tests::raw_sled(dir.path());
        let removed = db.open_tree("events").expect("tree").remove(7u64.to_be_bytes()).expect("removes");
        assert!(removed.is_some(), "position 7 was stored under its own key");
        db.flush().expect("flushes");
    }
    match EventLog::open(dir.path()) {
        Err(store::StoreError::Corrupt { position, reason }) => {
            assert_eq!(position, 7, "the first position missing: {reason}");
            assert!(reason.contains("positions 7 to 7 are missing"), "{reason}");
        }
        other => panic!("the open should report the lost tail, got {other:?}"),
    }
}

/// After a crash, a write-ahead log file that is gone may have held the only
/// copy of acknowledged batches (sled had them unflushed): the open fails,
/// naming the missing file and the position after what sled holds, and creates
/// nothing; with the files put back, every acknowledged event is there. After a
/// clean close the WAL holds nothing needed, and a file gone then is no loss.
#[test]
fn a_wal_file_gone_after_a_crash_is_loss_and_after_a_clean_close_is_not() {
    let dir = tests::temp_dir();
    let acked = acks_of(&appended_until_killed(dir.path(), "16384", Duration::from_millis(100)));
    assert!(!acked.is_empty());

    let aside = tests::temp_dir();
    for name in ["wal", "wal.1"] {
        std::fs::rename(dir.path().join(name), aside.path().join(name)).expect("moves the WAL file aside");
    }
    match EventLog::open(dir.path()) {
        Err(store::StoreError::Corrupt { position, reason }) => {
            assert!(position >= 1, "{position}");
            assert!(reason.contains("wal and wal.1 of the write-ahead log are missing"), "{reason}");
            assert!(reason.contains(&format!("after position {}", position - 1)), "{reason}");
        }
        other => panic!("a crashed log without its WAL opened: {:?}", other.map(|log| log.head())),
    }
    assert!(!dir.path().join("wal").exists() && !dir.path().join("wal.1").exists(), "the open created nothing");
    for name in ["wal", "wal.1"] {
        std::fs::rename(aside.path().join(name), dir.path().join(name)).expect("puts the WAL file back");
    }
    let (head, _) = assert_acks_survived(dir.path(), &acked);

    // Closed cleanly by now (the check above opened and closed the log).
    std::fs::remove_file(dir.path().join("wal")).expect("removes");
    let log = EventLog::open(dir.path()).expect("a cleanly closed log opens without its WAL");
    assert_eq!(log.head(), head);
    assert_eq!(log.verify().expect("verifies").head, head);
}
