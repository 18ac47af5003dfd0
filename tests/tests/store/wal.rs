//! The write-ahead log (`store/src/wal.rs`): batches sled lost are written to it
//! again when the log opens, a frame a crash cut short is not, a WAL that does
//! not continue the log is refused, and checkpoints keep it under its cap.
//!
//! sled loses unflushed batches only when the process dies, which the crash test
//! does at random; here the state after such a death is made on purpose: the WAL
//! of a log, copied while the log was open, is put beside a sled directory that
//! lacks some of its batches.

use std::path::{Path, PathBuf};

use store::{EventLog, ExpectedVersion, Options, StoreError};
use tests::{append, event, temp_dir};

const WAL: &str = "wal";
/// The second of the WAL's files, written in turn with the first.
const WAL_SECOND: &str = "wal.1";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("creates");
    for entry in std::fs::read_dir(from).expect("lists") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copies");
        }
    }
}

async fn append_batch(log: &EventLog, stream: &str, events: usize) {
    let batch = append(stream, ExpectedVersion::Any, (0..events).map(|_| event("E", b"payload")).collect());
    log.append(batch).await.expect("appends");
}

/// A closed log of one batch (positions 1–2) in `sled_one`, and the WAL of the
/// next two batches (3–5, 6) as they were acknowledged, in `wal_two`; the log
/// itself, with all three batches, stays in the returned directory.
async fn a_log_and_the_wal_of_its_last_two_batches(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (log_dir, sled_one, wal_two) = (root.join("log"), root.join("one"), root.join("wal-two"));
    {
        let log = EventLog::open(&log_dir).expect("opens");
        append_batch(&log, "a", 2).await;
    }
    copy_dir(&log_dir, &sled_one);
    let log = EventLog::open(&log_dir).expect("reopens");
    append_batch(&log, "b", 3).await;
    append_batch(&log, "a", 1).await;
    std::fs::copy(log_dir.join(WAL), &wal_two).expect("copies the WAL of an open log");
    drop(log);
    for file in [WAL, WAL_SECOND] {
        assert_eq!(std::fs::metadata(log_dir.join(file)).expect("exists").len(), 0, "a clean close empties {file}");
    }
    (log_dir, sled_one, wal_two)
}

#[tokio::test]
async fn acknowledged_batches_only_the_wal_holds_are_written_to_sled_again_at_open() {
    let root = temp_dir();
    let (log_dir, sled_one, wal_two) = a_log_and_the_wal_of_its_last_two_batches(root.path()).await;
    let expected: Vec<_> = EventLog::open(&log_dir).expect("opens").read_all(1, 10).expect("reads");
    assert_eq!(expected.len(), 6);

    std::fs::copy(&wal_two, sled_one.join(WAL)).expect("copies");
    let log = EventLog::open(&sled_one).expect("opens with the WAL");
    assert_eq!(log.recovery().batches_replayed, 2);
    assert_eq!(log.head(), 6);
    let events = log.read_all(1, 10).expect("reads");
    let ids = |events: &[store::RecordedEvent]| events.iter().map(|event| event.event_id).collect::<Vec<_>>();
    assert_eq!(ids(&events), ids(&expected), "the very events that were acknowledged");
    assert_eq!(log.stream_version("a").expect("reads"), 3);
    assert_eq!(log.verify().expect("verifies").events, 6);
    let next = append("b", ExpectedVersion::Exact(3), vec![event("E", b"after")]);
    assert_eq!(log.append(next).await.expect("appends").first_position, 7);
    drop(log);

    // Made durable and emptied: the next open has nothing to replay.
    let log = EventLog::open(&sled_one).expect("reopens");
    assert_eq!(log.recovery().batches_replayed, 0);
    assert_eq!(log.verify().expect("verifies").events, 7);
}

#[tokio::test]
async fn frames_of_batches_sled_has_are_skipped() {
    let root = temp_dir();
    let (log_dir, _, wal_two) = a_log_and_the_wal_of_its_last_two_batches(root.path()).await;
    std::fs::copy(&wal_two, log_dir.join(WAL)).expect("copies");
    let log = EventLog::open(&log_dir).expect("opens");
    assert_eq!(log.recovery().batches_replayed, 0);
    assert_eq!(log.verify().expect("verifies").events, 6);
}

#[tokio::test]
async fn a_frame_cut_short_by_a_crash_was_never_acknowledged_and_is_not_replayed() {
    let root = temp_dir();
    let (_, sled_one, wal_two) = a_log_and_the_wal_of_its_last_two_batches(root.path()).await;
    // The last frame ends where the zeros the WAL grows with begin.
    let mut bytes = std::fs::read(&wal_two).expect("reads");
    let end = bytes.iter().rposition(|byte| *byte != 0).expect("frames") + 1;
    bytes.truncate(end - 3);
    std::fs::write(sled_one.join(WAL), &bytes).expect("writes");

    let log = EventLog::open(&sled_one).expect("opens");
    assert_eq!(log.recovery().batches_replayed, 1);
    assert_eq!(log.head(), 5, "the batch of position 6 is gone");
    assert_eq!(log.verify().expect("verifies").events, 5);
    let next = append("a", ExpectedVersion::Exact(2), vec![event("E", b"again")]);
    assert_eq!(log.append(next).await.expect("appends").first_position, 6);
}

#[tokio::test]
async fn a_wal_that_does_not_continue_the_log_is_refused_and_kept() {
    let root = temp_dir();
    let (_, _, wal_two) = a_log_and_the_wal_of_its_last_two_batches(root.path()).await;
    let empty = root.path().join("empty");
    drop(EventLog::open(&empty).expect("creates"));
    std::fs::copy(&wal_two, empty.join(WAL)).expect("copies");

    match EventLog::open(&empty) {
        Err(StoreError::Corrupt { position, reason }) => {
            assert_eq!(position, 1);
            assert!(reason.contains("write-ahead log holds positions 3 to 5 but the log ends at 0"), "{reason}");
        }
        other => panic!("expected the gap to be refused, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(empty.join(WAL)).expect("reads"),
        std::fs::read(&wal_two).expect("reads"),
        "the WAL is left as it was for the operator"
    );
}

/// The length of a frame's header: `"SLW2"`, the payload's length (u32 BE), the
/// durable head it was written after (u64 BE), a 32-byte hash.
const HEADER_LEN: usize = 48;

/// The whole frames at the start of a WAL file's bytes.
fn frames(bytes: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    let mut at = 0;
    while bytes.get(at..at + 4) == Some(b"SLW2".as_slice()) {
        let len = u32::from_be_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        frames.push(&bytes[at..at + HEADER_LEN + len]);
        at += HEADER_LEN + len;
    }
    frames
}

/// The durable head a frame names.
fn durable_head(frame: &[u8]) -> u64 {
    u64::from_be_bytes(frame[8..16].try_into().expect("8 bytes"))
}

/// `frame` as if written when the durable head was `head`, its hash made again.
fn with_durable_head(frame: &[u8], head: u64) -> Vec<u8> {
    let mut frame = frame.to_vec();
    frame[8..16].copy_from_slice(&head.to_be_bytes());
    let mut hasher = blake3::Hasher::new();
    hasher.update(&frame[4..16]);
    hasher.update(&frame[HEADER_LEN..]);
    let hash = hasher.finalize();
    frame[16..HEADER_LEN].copy_from_slice(hash.as_bytes());
    frame
}

/// A log whose sled holds positions 1–2 (in the second returned directory, its
/// WAL empty), and the WAL of the log (in the first) after three more batches,
/// each acknowledged before the next: 3–5, 6, 7–8. Also the WAL of the log's
/// first batch alone (one frame, 1–2).
async fn a_log_and_the_wal_of_three_batches(root: &Path) -> (PathBuf, PathBuf, Vec<u8>, Vec<u8>) {
    let (log_dir, sled_one) = (root.join("log"), root.join("one"));
    let log = EventLog::open(&log_dir).expect("opens");
    append_batch(&log, "a", 2).await;
    let old_wal = std::fs::read(log_dir.join(WAL)).expect("reads the WAL of an open log");
    drop(log);
    copy_dir(&log_dir, &sled_one);
    let log = EventLog::open(&log_dir).expect("reopens");
    append_batch(&log, "b", 3).await;
    append_batch(&log, "a", 1).await;
    append_batch(&log, "c", 2).await;
    let new_wal = std::fs::read(log_dir.join(WAL)).expect("reads the WAL of an open log");
    drop(log);
    (log_dir, sled_one, old_wal, new_wal)
}

/// A file written again still holds frames of an earlier turn after the new
/// ones. A power cut during the `fdatasync` of two new frames can keep the
/// second and not the first, whose place then still holds an old frame: the
/// file's frames end at the old frame, the batch past it (never acknowledged:
/// its `fdatasync` never returned) is not replayed, and the log opens. Both
/// new frames name the durable head they were written after, the same one.
#[tokio::test]
async fn an_old_frame_between_two_new_ones_ends_the_files_frames() {
    let root = temp_dir();
    let (_, sled_one, old_wal, new_wal) = a_log_and_the_wal_of_three_batches(root.path()).await;
    let (old, new) = (frames(&old_wal), frames(&new_wal));
    assert_eq!((old.len(), new.len()), (1, 3), "one frame a batch");
    assert_eq!(new.iter().map(|frame| durable_head(frame)).collect::<Vec<_>>(), [2, 5, 6]);

    // Positions 3–5; where 6's frame was, the old frame of 1–2; then 7–8, of
    // the same `fdatasync` as 6 (so written once 5 was durable, not 6).
    let mut bytes = [new[0], old[0], &with_durable_head(new[2], 5)].concat();
    bytes.resize(new_wal.len(), 0);
    std::fs::write(sled_one.join(WAL), &bytes).expect("writes");
    let log = EventLog::open(&sled_one).expect("opens: no acknowledged batch is missing");
    assert_eq!(log.recovery().batches_replayed, 1);
    assert_eq!(log.head(), 5, "the batches past the old frame were never acknowledged");
    assert_eq!(log.verify().expect("verifies").events, 5);
}

/// A frame damaged on disk after its `fdatasync` is no torn write: the frames
/// written after it name a durable head that covers it. The open is refused,
/// naming the first position lost, and leaves the WAL as it was, so that no
/// acknowledged event is dropped without a word (and `verify` exits 1).
#[tokio::test]
async fn a_damaged_frame_that_later_frames_say_was_durable_is_refused_and_kept() {
    let root = temp_dir();
    let (_, sled_one, old_wal, new_wal) = a_log_and_the_wal_of_three_batches(root.path()).await;
    let (old, new) = (frames(&old_wal), frames(&new_wal));
    let mut flipped = new_wal.clone();
    flipped[new[0].len() + HEADER_LEN + 10] ^= 4;
    let mut old_between = [new[0], old[0], new[2]].concat();
    old_between.resize(new_wal.len(), 0);
    for (case, bytes) in [("a byte flipped in 6's frame", flipped), ("an old frame where 6's was", old_between)] {
        let dir = root.path().join(case.replace(' ', "-"));
        copy_dir(&sled_one, &dir);
        std::fs::write(dir.join(WAL), &bytes).expect("writes");
        match EventLog::open(&dir) {
            Err(StoreError::Corrupt { position, reason }) => {
                assert_eq!(position, 6, "{case}: {reason}");
                assert!(reason.contains("write-ahead log is damaged"), "{case}: {reason}");
                assert!(reason.contains("up to 6 were durable") && reason.contains("only up to 5"), "{reason}");
            }
            other => panic!("{case}: expected the damage to be refused, got {other:?}"),
        }
        assert_eq!(std::fs::read(dir.join(WAL)).expect("reads"), bytes, "{case}: the WAL is left as it was");
        let verify = std::process::Command::new(crate::cli::SHOPLOG)
            .args(["verify", "--data", dir.to_str().expect("utf-8")])
            .env_remove("RUST_LOG")
            .output()
            .expect("runs shoplog");
        assert_eq!(verify.status.code(), Some(1), "{case}: {verify:?}");
        let stdout = String::from_utf8_lossy(&verify.stdout);
        assert!(stdout.starts_with("corrupt at position 6: the write-ahead log is damaged"), "{case}: {stdout}");
        assert_eq!(std::fs::read(dir.join(WAL)).expect("reads"), bytes, "{case}: verify changed the WAL");
    }
}

/// The records past the stored head (`from` on) that sled holds: how many chunks.
fn chunks_from(dir: &Path, from: u64) -> usize {
    let db = tests::raw_sled(dir);
    db.open_tree("events").expect("tree").range(from.to_be_bytes()..).count()
}

/// A refused open writes nothing: a batch that sled holds torn (its records,
/// not its head) and whose frame is damaged stays in sled as it was, for a
/// salvage. It was dropped before the damage was found, and sled's own close
/// made that durable.
#[tokio::test]
async fn an_open_refused_for_a_damaged_frame_leaves_a_torn_batch_in_sled() {
    let root = temp_dir();
    let (log_dir, _, _, new_wal) = a_log_and_the_wal_of_three_batches(root.path()).await;
    let new = frames(&new_wal);
    let mut flipped = new_wal.clone();
    flipped[new[0].len() + HEADER_LEN + 10] ^= 4;
    std::fs::write(log_dir.join(WAL), &flipped).expect("writes");
    // sled holds 1–8: its head put back to 5, under the marker of a batch from 6 on.
    {
        let db = tests::raw_sled(&log_dir);
        let meta = db.open_tree("meta").expect("tree");
        meta.insert("head", &5u64.to_be_bytes()).expect("writes");
        meta.insert("batch", &6u64.to_be_bytes()).expect("writes");
        db.flush().expect("flushes");
    }
    tests::set_checkpointed(&log_dir, 5);
    let torn = chunks_from(&log_dir, 6);
    assert!(torn > 0, "sled holds the torn batch's records");
    match EventLog::open(&log_dir) {
        Err(StoreError::Corrupt { position: 6, reason }) => {
            assert!(reason.contains("write-ahead log is damaged"), "{reason}");
        }
        other => panic!("expected the damage to be refused, got {other:?}"),
    }
    assert_eq!(chunks_from(&log_dir, 6), torn, "the refused open dropped the torn batch's records");
}

/// When the first file is full the syncer goes on in the second, while a
/// checkpoint runs: batches acknowledged from both files, which sled lost, are
/// written to sled again at open, in order.
#[tokio::test]
async fn acknowledged_batches_in_both_wal_files_are_written_to_sled_again_in_order() {
    let root = temp_dir();
    let (log_dir, sled_one) = (root.path().join("log"), root.path().join("one"));
    // Some 3 frames of one small batch each fit in a file.
    let options = || Options { wal_len_max: 1024, ..Options::default() };
    {
        let log = EventLog::open_with(&log_dir, options()).expect("opens");
        append_batch(&log, "a", 2).await;
    }
    copy_dir(&log_dir, &sled_one);
    let log = EventLog::open_with(&log_dir, options()).expect("reopens");
    let mut in_second = 0;
    let mut batches = 0;
    // Until the second file holds frames, before the first is written again.
    while in_second == 0 {
        append_batch(&log, if batches % 2 == 0 { "b" } else { "a" }, 1).await;
        batches += 1;
        in_second = std::fs::metadata(log_dir.join(WAL_SECOND)).expect("exists").len();
        assert!(batches < 20, "the second file was never written");
    }
    append_batch(&log, "c", 2).await;
    batches += 1;
    for file in [WAL, WAL_SECOND] {
        std::fs::copy(log_dir.join(file), sled_one.join(file)).expect("copies the WAL of an open log");
    }
    let expected = log.read_all(1, 100).expect("reads");
    drop(log);

    let log = EventLog::open_with(&sled_one, options()).expect("opens with both files");
    assert_eq!(log.recovery().batches_replayed, batches);
    let ids = |events: &[store::RecordedEvent]| events.iter().map(|event| event.event_id).collect::<Vec<_>>();
    assert_eq!(ids(&log.read_all(1, 100).expect("reads")), ids(&expected), "the very events acknowledged");
    assert_eq!(log.verify().expect("verifies").events, expected.len() as u64);
    assert_eq!(log.stream_version("c").expect("reads"), 2);
}

/// The stream index groups written since the last checkpoint are only in memory
/// (`store/src/trees.rs`, `RecentGroups`): reads find them there, and a log
/// whose sled holds records past the index's mark has them indexed again at open.
#[tokio::test]
async fn records_sled_holds_past_the_index_mark_are_indexed_again_at_open() {
    let root = temp_dir();
    let (log_dir, copied) = (root.path().join("log"), root.path().join("copy"));
    let options = || Options { wal_len_max: 4 * 1024, ..Options::default() };
    let log = EventLog::open_with(&log_dir, options()).expect("opens");
    // Streams that cross index groups (16 versions each), appended to one
    // event at a time through several checkpoints, read back after each append.
    let streams = ["a", "b", "c"];
    for round in 1..=40u64 {
        for stream in streams {
            append_batch(&log, stream, 1).await;
            assert_eq!(log.stream_version(stream).expect("reads"), round);
            let events = log.read_stream(stream, round.saturating_sub(17), 100).expect("reads");
            assert_eq!(events.last().map(|event| event.version), Some(round), "stream {stream}");
        }
    }
    assert!(log.commit_stats().checkpoints >= 2, "{:?}", log.commit_stats());
    // sled flushed with the records of every batch, but not the groups since
    // the last checkpoint: what sled's own writes may leave before a crash.
    log.make_durable().expect("flushes");
    copy_dir(&log_dir, &copied);
    drop(log);

    let log = EventLog::open_with(&copied, options()).expect("opens");
    let recovery = log.recovery();
    assert!(recovery.records_indexed > 0, "{recovery:?}");
    assert_eq!(recovery.batches_replayed, 0, "sled held every batch");
    assert_eq!(log.verify().expect("verifies: every event indexed at its version").events, 120);
    for stream in streams {
        assert_eq!(log.stream_version(stream).expect("reads"), 40);
        let versions: Vec<u64> =
            log.read_stream(stream, 1, 100).expect("reads").iter().map(|event| event.version).collect();
        assert_eq!(versions, (1..=40).collect::<Vec<_>>());
    }
    let next = append("b", ExpectedVersion::Exact(40), vec![event("E", b"after")]);
    assert_eq!(log.append(next).await.expect("appends").streams[0].version, 41);
    drop(log);
    let log = EventLog::open_with(&copied, options()).expect("reopens");
    assert_eq!(log.recovery().records_indexed, 0, "a clean close stores the index");
    assert_eq!(log.verify().expect("verifies").events, 121);
}

/// Appends to many streams make many index groups but few WAL bytes: the
/// groups held in memory are bounded by a checkpoint of their own.
#[tokio::test]
async fn many_new_index_groups_make_a_checkpoint_before_the_wal_is_full() {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    for request in 0..20 {
        let names: Vec<String> = (0..1000).map(|stream| format!("s-{request}-{stream}")).collect();
        let streams = names.iter().map(|name| (name.as_str(), ExpectedVersion::NoStream, vec![event("E", b"x")]));
        log.append(tests::append_many(streams.collect())).await.expect("appends");
    }
    let len = std::fs::metadata(dir.path().join(WAL)).expect("exists").len();
    assert!(log.commit_stats().checkpoints >= 1, "20,000 new groups, {len} WAL bytes: {:?}", log.commit_stats());
    drop(log);
    let log = EventLog::open(dir.path()).expect("reopens");
    assert_eq!(log.verify().expect("verifies").streams, 20_000);
}

#[tokio::test]
async fn checkpoints_keep_the_wal_under_its_cap_and_lose_nothing() {
    let dir = temp_dir();
    let cap = 8 * 1024;
    let options = || Options { wal_len_max: cap, ..Options::default() };
    let log = EventLog::open_with(dir.path(), options()).expect("opens");
    for round in 0..60 {
        append_batch(&log, &format!("s{}", round % 7), 1 + round % 5).await;
        for file in [WAL, WAL_SECOND] {
            let len = std::fs::metadata(dir.path().join(file)).expect("exists").len();
            assert!(len <= cap, "round {round}: {file} holds {len} bytes, over its cap of {cap}");
        }
    }
    let stats = log.commit_stats();
    assert!(stats.checkpoints >= 3, "{stats:?}");
    let copied = dir.path().join("..").join(format!("{}-copy", dir.path().display()));
    // A copy of the directory as it is now, open: what a crash would leave.
    copy_dir(dir.path(), &copied);
    drop(log);
    for path in [dir.path(), copied.as_path()] {
        let log = EventLog::open_with(path, options()).expect("reopens");
        let report = log.verify().expect("verifies");
        assert_eq!(report.events, (0..60).map(|round| 1 + round % 5).sum::<u64>());
    }
    std::fs::remove_dir_all(&copied).expect("removes the copy");
}

/// Opening a log of an older format marks it with the current one, durably,
/// before any batch is acknowledged: a crash (here: the dir copied while the
/// log is open, which is what kill -9 leaves) must not leave acknowledged
/// batches in a file the older binary does not read under the older mark,
/// which that binary would then open and lose them.
#[tokio::test]
async fn the_format_mark_of_an_upgraded_log_is_durable_before_its_first_acknowledgement() {
    let root = temp_dir();
    let (log_dir, copy) = (root.path().join("log"), root.path().join("copy"));
    {
        let log = EventLog::open(&log_dir).expect("opens");
        append_batch(&log, "a", 1).await;
    }
    let format = |dir: &Path| {
        let db = tests::raw_sled(dir);
        db.open_tree("meta").expect("tree").get("format").expect("reads").map(|mark| mark.to_vec())
    };
    let current = format(&log_dir).expect("a closed log is marked");
    {
        let db = tests::raw_sled(&log_dir);
        db.open_tree("meta").expect("tree").insert("format", &[5]).expect("writes");
        db.flush().expect("flushes");
    }
    let log = EventLog::open(&log_dir).expect("opens a log of format 5");
    append_batch(&log, "a", 1).await;
    copy_dir(&log_dir, &copy);
    drop(log);
    assert_eq!(format(&copy), Some(current));
}

/// A stream read beside appends and checkpoints (which move index groups from
/// memory into sled while the read goes on) reads every version it reaches once,
/// in order, with no hole: the check for versions missing from the index never
/// takes a group begun after the read started for a hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_reads_beside_checkpoints_see_no_hole() {
    let dir = temp_dir();
    let options = Options { wal_len_max: 2 * 1024, ..Options::default() };
    let log = EventLog::open_with(dir.path(), options).expect("opens");
    let streams = ["s-0", "s-1", "s-2", "s-3"];
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let log = log.clone();
            tokio::spawn(async move {
                for index in 0..400 {
                    let stream = streams[(writer + index) % streams.len()];
                    log.append(append(stream, ExpectedVersion::Any, vec![event("E", b"x")])).await.expect("appends");
                }
            })
        })
        .collect();
    let reader = {
        let log = log.clone();
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let mut reads = 0;
            while log.head() < 3200 && std::time::Instant::now() < deadline {
                for stream in streams {
                    let events = log.read_stream(stream, 1, 10_000).expect("a stream read sees no hole");
                    let versions: Vec<u64> = events.iter().map(|event| event.version).collect();
                    assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>(), "{stream}");
                    reads += 1;
                }
            }
            reads
        })
    };
    for writer in writers {
        writer.await.expect("the writer ends");
    }
    let reads = reader.await.expect("the reader ends");
    assert!(reads > 0);
    assert!(log.commit_stats().checkpoints >= 10, "{:?}", log.commit_stats());
    assert_eq!(log.failure(), None);
}
