//! Tamper evidence: `verify` walks the hash chain and the indexes, and names the
//! first bad position when anything on disk was changed.

use std::path::Path;

use store::{EventLog, ExpectedVersion, StoreError};
use tests::{append, event, temp_dir};

async fn log_with_five_events(dir: &Path) {
    let log = EventLog::open(dir).expect("opens");
    for index in 0..5u8 {
        let stream = if index % 2 == 0 { "even" } else { "odd" };
        log.append(append(stream, ExpectedVersion::Any, vec![event("E", &[index; 40])])).await.expect("appends");
    }
    assert_eq!(log.verify().expect("sound log verifies").events, 5);
}

/// A log of 40 events, all in stream `long` (three index groups: v1, v17, v33).
async fn log_with_a_long_stream(dir: &Path) {
    let log = EventLog::open(dir).expect("opens");
    for index in 0..40u8 {
        log.append(append("long", ExpectedVersion::Any, vec![event("E", &[index; 8])])).await.expect("appends");
    }
}

/// The `streams` key of the index group of `long` that starts at `first`.
fn long_group_key(first: u64) -> Vec<u8> {
    [&b"long\0"[..], &first.to_be_bytes()].concat()
}

/// Wait (bounded) until `read_back` has read the whole log back.
fn wait_until_finished(read_back: &store::ReadBack) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !read_back.is_finished() {
        assert!(std::time::Instant::now() < deadline, "the read-back never ends");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Change the data dir behind the log's back, with sled itself.
fn tamper(dir: &Path, change: impl FnOnce(&sled::Db)) {
    let db = tests::raw_sled(dir);
    change(&db);
    db.flush().expect("flushes");
}

/// Flip one byte of the record stored alone at `position`.
fn flip_byte(dir: &Path, position: u64, offset: usize) {
    tamper(dir, |db| {
        let events = db.open_tree("events").expect("tree");
        let mut bytes = events.get(position.to_be_bytes()).expect("reads").expect("exists").to_vec();
        bytes[offset] ^= 0x5a;
        events.insert(position.to_be_bytes(), bytes).expect("writes");
    });
}

fn corrupt_position(dir: &Path) -> (u64, String) {
    let log = EventLog::open(dir).expect("opens");
    match log.verify() {
        Err(StoreError::Corrupt { position, reason }) => (position, reason),
        other => panic!("verify should find the damage, got {other:?}"),
    }
}

#[tokio::test]
async fn a_flipped_byte_anywhere_in_a_stored_record_is_found_at_its_position() {
    let dir = temp_dir();
    log_with_five_events(dir.path()).await;
    let record_len = tests::raw_sled(dir.path())
        .open_tree("events")
        .expect("tree")
        .get(3u64.to_be_bytes())
        .expect("reads")
        .expect("exists")
        .len();
    for offset in [0, 1, 17, 32, 33, 34, 40, record_len / 2, record_len - 1] {
        flip_byte(dir.path(), 3, offset);
        let (position, reason) = corrupt_position(dir.path());
        assert_eq!(position, 3, "flip at byte {offset}: {reason}");
        let log = EventLog::open(dir.path()).expect("opens");
        let read = log.read_all(1, 10);
        assert!(
            matches!(read, Err(StoreError::Corrupt { position: 3, .. })),
            "flip at byte {offset}: reading in order checks the chain: {read:?}"
        );
        drop(log);
        // Position 3 is the second event of stream `even`: a command loading the
        // stream checks the record against the chain too.
        let log = EventLog::open(dir.path()).expect("opens");
        let read = log.read_stream("even", 1, 10);
        assert!(
            matches!(read, Err(StoreError::Corrupt { position: 3, .. })),
            "flip at byte {offset}: a stream's read checks the chain: {read:?}"
        );
        assert!(log.failure().is_some_and(|reason| reason.contains("corrupt at position 3")), "{:?}", log.failure());
        let other = log.read_stream("even", 2, 10);
        assert!(matches!(other, Err(StoreError::Corrupt { position: 3, .. })), "from the damaged one on: {other:?}");
        drop(log);
        flip_byte(dir.path(), 3, offset);
        assert_eq!(EventLog::open(dir.path()).expect("opens").verify().expect("repaired").events, 5);
    }
}

/// Records appended together lie in one chunk: a stream's read checks each
/// against the record before it in the chunk, and the first against the chunk
/// before.
#[tokio::test]
async fn a_stream_read_finds_a_changed_byte_inside_a_chunk() {
    let dir = temp_dir();
    {
        let log = EventLog::open(dir.path()).expect("opens");
        log.append(append("lone", ExpectedVersion::Any, vec![event("E", &[9; 40])])).await.expect("appends");
        let events = (0..5u8).map(|index| event("E", &[index + 100; 40])).collect();
        log.append(append("packed", ExpectedVersion::Any, events)).await.expect("appends");
        assert_eq!(log.read_stream("packed", 1, 10).expect("a sound stream reads").len(), 5);
    }
    for (payload, position) in [(100u8, 2), (102, 4), (104, 6)] {
        tamper(dir.path(), |db| {
            let events = db.open_tree("events").expect("tree");
            let mut bytes = events.get(2u64.to_be_bytes()).expect("reads").expect("the chunk of five").to_vec();
            let at = bytes.windows(40).position(|window| window == [payload; 40]).expect("the payload is in the chunk");
            bytes[at + 7] ^= 0x5a;
            events.insert(2u64.to_be_bytes(), bytes).expect("writes");
        });
        let log = EventLog::open(dir.path()).expect("opens");
        let read = log.read_stream("packed", 1, 10);
        assert!(
            matches!(read, Err(StoreError::Corrupt { position: found, .. }) if found == position),
            "payload {payload}: {read:?}"
        );
        let lone = log.read_stream("lone", 1, 10);
        assert_eq!(lone.map(|events| events.len()).ok(), Some(1), "another stream's records are sound");
        drop(log);
        tamper(dir.path(), |db| {
            let events = db.open_tree("events").expect("tree");
            let mut bytes = events.get(2u64.to_be_bytes()).expect("reads").expect("the chunk of five").to_vec();
            let at = bytes.windows(40).position(|window| window.iter().filter(|&&byte| byte == payload).count() == 39);
            bytes[at.expect("the changed payload") + 7] ^= 0x5a;
            events.insert(2u64.to_be_bytes(), bytes).expect("writes");
        });
    }
    assert_eq!(EventLog::open(dir.path()).expect("opens").read_stream("packed", 1, 10).expect("repaired").len(), 5);
}

/// `verify` stops at the first damage it meets: a report of a later one would send
/// whoever repairs the log to the wrong record and leave the first one in place.
#[tokio::test]
async fn of_two_damaged_records_verify_names_the_first() {
    let dir = temp_dir();
    log_with_five_events(dir.path()).await;
    // Byte 40 lies in the envelope, after the stored hash: each record's hash stays
    // as it was, so the records between and after the two still verify.
    flip_byte(dir.path(), 4, 40);
    flip_byte(dir.path(), 2, 40);
    let (position, reason) = corrupt_position(dir.path());
    assert_eq!(position, 2, "{reason}");

    // Position 4 is damaged too, and found once position 2 is repaired.
    flip_byte(dir.path(), 2, 40);
    let (position, reason) = corrupt_position(dir.path());
    assert_eq!(position, 4, "{reason}");
}

#[tokio::test]
async fn a_cut_short_record_is_found_at_its_position() {
    let dir = temp_dir();
    log_with_five_events(dir.path()).await;
    tamper(dir.path(), |db| {
        let events = db.open_tree("events").expect("tree");
        let bytes = events.get(2u64.to_be_bytes()).expect("reads").expect("exists");
        events.insert(2u64.to_be_bytes(), &bytes[..bytes.len() - 3]).expect("writes");
    });
    assert_eq!(corrupt_position(dir.path()).0, 2);
}

#[tokio::test]
async fn a_missing_record_is_found_at_its_position() {
    let dir = temp_dir();
    log_with_five_events(dir.path()).await;
    tamper(dir.path(), |db| {
        db.open_tree("events").expect("tree").remove(2u64.to_be_bytes()).expect("removes");
    });
    let (position, reason) = corrupt_position(dir.path());
    assert_eq!(position, 2, "{reason}");
}

#[tokio::test]
async fn a_record_swapped_for_another_valid_one_breaks_the_chain_there() {
    let dir = temp_dir();
    log_with_five_events(dir.path()).await;
    tamper(dir.path(), |db| {
        let events = db.open_tree("events").expect("tree");
        let fourth = events.get(4u64.to_be_bytes()).expect("reads").expect("exists");
        events.insert(3u64.to_be_bytes(), fourth).expect("writes");
    });
    assert_eq!(corrupt_position(dir.path()).0, 3);
}

/// The key of the stream index group of `stream` that starts at version 1
/// (`store/src/trees.rs`: 16 versions to an entry).
fn first_group_key(stream: &str) -> Vec<u8> {
    let mut key = stream.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&1u64.to_be_bytes());
    key
}

fn positions(positions: &[u64]) -> Vec<u8> {
    positions.iter().flat_map(|position| position.to_be_bytes()).collect()
}

#[tokio::test]
async fn a_stream_index_entry_pointing_elsewhere_is_found() {
    let dir = temp_dir();
    log_with_five_events(dir.path()).await;
    tamper(dir.path(), |db| {
        let streams = db.open_tree("streams").expect("tree");
        assert_eq!(streams.get(first_group_key("odd")).expect("reads").as_deref(), Some(&positions(&[2, 4])[..]));
        streams.insert(first_group_key("odd"), positions(&[2, 5])).expect("writes");
    });
    let (position, reason) = corrupt_position(dir.path());
    assert_eq!(position, 4, "{reason}");
    assert!(reason.contains("stream index of odd version 2"), "{reason}");
}

#[tokio::test]
async fn a_stream_index_entry_for_an_event_never_written_is_found() {
    let dir = temp_dir();
    log_with_five_events(dir.path()).await;
    tamper(dir.path(), |db| {
        let streams = db.open_tree("streams").expect("tree");
        streams.insert(first_group_key("even"), positions(&[1, 3, 5, 6])).expect("writes");
    });
    let (position, reason) = corrupt_position(dir.path());
    assert_eq!(position, 5, "{reason}");
    assert!(reason.contains("stream index has 6 entries for 5 events"), "{reason}");
}

#[tokio::test]
async fn a_stream_index_entry_of_the_wrong_shape_is_found() {
    let dir = temp_dir();
    log_with_five_events(dir.path()).await;
    tamper(dir.path(), |db| {
        let mut key = b"odd".to_vec();
        key.push(0);
        // Version 3 does not begin a group.
        key.extend_from_slice(&3u64.to_be_bytes());
        db.open_tree("streams").expect("tree").insert(key, positions(&[4])).expect("writes");
    });
    let (position, reason) = corrupt_position(dir.path());
    assert_eq!(position, 5, "{reason}");
    assert!(reason.contains("an index entry of stream odd does not have the index's shape"), "{reason}");
}

/// A sealed record's subject has a key, or the tombstone of a forget: a key lost
/// or damaged is found at the first record of that subject (reads would take
/// its data for forgotten, or fail; a backup would refuse the log).
#[tokio::test]
async fn a_subject_key_lost_or_damaged_is_found_at_the_subjects_first_record() {
    for (what, damage) in [("lost", None), ("damaged", Some(vec![7u8; 3]))] {
        let dir = temp_dir();
        let subject = uuid::Uuid::now_v7();
        {
            let log = EventLog::open(dir.path()).expect("opens");
            log.append(append("plain", ExpectedVersion::Any, vec![event("E", b"1")])).await.expect("appends");
            let sealed = || append("person", ExpectedVersion::Any, vec![tests::sealed_event("E", subject, b"secret")]);
            log.append(sealed()).await.expect("appends");
            log.append(sealed()).await.expect("appends");
            assert_eq!(log.verify().expect("sound log verifies").events, 3);
        }
        tamper(dir.path(), |db| {
            let keys = db.open_tree("keys").expect("tree");
            match &damage {
                None => keys.remove(subject.as_bytes()).map(drop),
                Some(bytes) => keys.insert(subject.as_bytes(), bytes.as_slice()).map(drop),
            }
            .expect("writes");
        });
        let (position, reason) = corrupt_position(dir.path());
        assert_eq!(position, 2, "{what}: {reason}");
        assert!(reason.contains(&subject.to_string()), "{what}: {reason}");
    }
}

/// Flip the last byte of the chunk stored at the first key at or past `at`:
/// the last payload byte of the chunk's last record, whose position it returns.
fn flip_a_chunks_last_record(dir: &Path, at: u64) -> u64 {
    let db = tests::raw_sled(dir);
    let events = db.open_tree("events").expect("tree");
    let position = |key: sled::IVec| u64::from_be_bytes(key.as_ref().try_into().expect("a position"));
    let mut keys = events.range(at.to_be_bytes()..).keys().map(|key| position(key.expect("reads")));
    let (first, next) = (keys.next().expect("a chunk"), keys.next().expect("a chunk after it"));
    let mut bytes = events.get(first.to_be_bytes()).expect("reads").expect("exists").to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x5a;
    events.insert(first.to_be_bytes(), bytes).expect("writes");
    db.flush().expect("flushes");
    next - 1
}

/// The whole-log walks check the hash chain on a second thread, a batch of
/// records at a time (`store/src/chain.rs`): in a log of many batches, the
/// first damage is still the one named, by `verify` and by `backup`. (Which
/// error wins when the walk itself fails later is `chain.rs`'s unit tests'.)
#[tokio::test]
async fn in_a_long_log_verify_and_backup_name_the_first_of_two_damaged_records() {
    let dir = temp_dir();
    {
        let log = EventLog::open(dir.path()).expect("opens");
        for batch in 0..50u32 {
            let events = (0..100u32).map(|index| event("E", &(batch * 100 + index).to_be_bytes())).collect();
            log.append(append("many", ExpectedVersion::Any, events)).await.expect("appends");
        }
        assert_eq!(log.verify().expect("a sound log verifies").events, 5000);
    }
    let later = flip_a_chunks_last_record(dir.path(), 4000);
    let first = flip_a_chunks_last_record(dir.path(), 1200);
    assert!(first < 1400 && later > 4000, "{first}, {later}");

    let log = EventLog::open(dir.path()).expect("opens");
    match log.verify() {
        Err(StoreError::Corrupt { position, .. }) => assert_eq!(position, first),
        other => panic!("verify should name position {first}, got {other:?}"),
    }
    match log.backup(Vec::new(), &mut |_| {}) {
        Err(StoreError::Corrupt { position, .. }) => assert_eq!(position, first),
        other => panic!("backup should refuse at position {first}, got {other:?}"),
    }
    drop(log);
    // Repaired, the later damage is found.
    flip_a_chunks_last_record(dir.path(), 1200);
    assert_eq!(corrupt_position(dir.path()).0, later);
}

/// A read that finds the log damaged (an audit read, a backup's, a command's
/// load of its stream, all through `EventLog::noted`) stops the log's appends,
/// as a failed `fdatasync` does: a command acknowledged then would be lost by
/// the restore from a backup that the damage calls for. Until a read finds it,
/// appends go on.
#[tokio::test]
async fn a_read_that_finds_damage_stops_the_logs_appends() {
    let more = || append("even", ExpectedVersion::Any, vec![event("E", b"more")]);
    let dir = temp_dir();
    log_with_five_events(dir.path()).await;
    flip_byte(dir.path(), 2, 40);
    let log = EventLog::open(dir.path()).expect("opens");
    log.append(more()).await.expect("no read has found the damage yet");
    let found = log.read_all(1, 10);
    assert!(matches!(found, Err(StoreError::Corrupt { position: 2, .. })), "{found:?}");
    assert!(log.failure().is_some_and(|reason| reason.contains("corrupt at position 2")), "{:?}", log.failure());
    let refused = log.append(more()).await;
    assert!(matches!(refused, Err(StoreError::Unavailable { .. })), "{refused:?}");
    drop(log);

    // Every reader of the whole log stops the appends alike: a scan (a read
    // model's rebuild, a replay) and a subscription (the read models' live worker).
    for reader in ["scan", "subscription"] {
        let log = EventLog::open(dir.path()).expect("opens");
        log.append(more()).await.expect("no read has found the damage yet");
        let found = match reader {
            "scan" => log.scan(1, 10, |_| Ok::<(), StoreError>(())).map(|_| ()),
            _ => log.subscribe(1).next_scan(10, |_| Ok::<(), StoreError>(())).await.map(|_| ()),
        };
        assert!(matches!(found, Err(StoreError::Corrupt { position: 2, .. })), "{reader}: {found:?}");
        let refused = log.append(more()).await;
        assert!(matches!(refused, Err(StoreError::Unavailable { .. })), "{reader}: {refused:?}");
    }
}

/// The read-back `serve` runs at start reads every record once, in the
/// background: a sound log stays as it is; damage it meets stops the appends.
#[tokio::test]
async fn the_read_back_finds_damage_no_read_met_and_stops_the_appends() {
    let more = || append("even", ExpectedVersion::Any, vec![event("E", b"more")]);
    let dir = temp_dir();
    log_with_five_events(dir.path()).await;
    {
        let log = EventLog::open(dir.path()).expect("opens");
        let read_back = store::ReadBack::start(&log).expect("starts");
        wait_until_finished(&read_back);
        assert_eq!(log.failure(), None, "a sound log read back");
        log.append(more()).await.expect("appends");
    }
    flip_byte(dir.path(), 2, 40);
    let log = EventLog::open(dir.path()).expect("opens");
    log.append(more()).await.expect("no read has met the damage yet");
    let read_back = store::ReadBack::start(&log).expect("starts");
    wait_until_finished(&read_back);
    assert!(log.failure().is_some_and(|reason| reason.contains("corrupt at position 2")), "{:?}", log.failure());
    let refused = log.append(more()).await;
    assert!(matches!(refused, Err(StoreError::Unavailable { .. })), "{refused:?}");
    read_back.stop();
}

/// A stream's read follows its index groups version by version: a group that
/// is missing (or cut short) is a hole in the stream's history, which a command
/// must not decide on. The versions after the hole still read.
#[tokio::test]
async fn a_stream_read_finds_versions_missing_from_its_index() {
    let dir = temp_dir();
    log_with_a_long_stream(dir.path()).await;
    let hole = |read: &Result<Vec<store::RecordedEvent>, StoreError>| matches!(read, Err(StoreError::Corrupt { reason, .. }) if reason.contains("goes on at version 33 where 17 comes next"));
    tamper(dir.path(), |db| {
        db.open_tree("streams")
            .expect("tree")
            .remove(long_group_key(17))
            .expect("removes")
            .expect("the group of v17 to v32");
    });
    let log = EventLog::open(dir.path()).expect("opens");
    for from in [1, 20] {
        let read = log.read_stream("long", from, 100);
        assert!(hole(&read), "from v{from}: {read:?}");
    }
    assert_eq!(log.read_stream("long", 33, 100).map(|events| events.len()).ok(), Some(8), "after the hole");
    drop(log);

    // The group of v1 to v16 cut to 15 versions, the group of v17 back.
    let log_positions: Vec<u8> = (17..=32u64).flat_map(|position| position.to_be_bytes()).collect();
    tamper(dir.path(), |db| {
        let streams = db.open_tree("streams").expect("tree");
        let first = streams.get(long_group_key(1)).expect("reads").expect("the group of v1 to v16").to_vec();
        streams.insert(long_group_key(1), &first[..15 * 8]).expect("writes");
        streams.insert(long_group_key(17), log_positions.as_slice()).expect("writes");
    });
    let log = EventLog::open(dir.path()).expect("opens");
    let read = log.read_stream("long", 1, 100);
    assert!(
        matches!(&read, Err(StoreError::Corrupt { reason, .. }) if reason.contains("goes on at version 17 where 16 comes next")),
        "{read:?}"
    );
}

/// The read-back checks that the stream index names each record where it is,
/// as `verify` does: an index group gone stops the appends too.
#[tokio::test]
async fn the_read_back_finds_a_stream_index_group_gone() {
    let dir = temp_dir();
    log_with_a_long_stream(dir.path()).await;
    tamper(dir.path(), |db| {
        let streams = db.open_tree("streams").expect("tree");
        streams.remove(long_group_key(17)).expect("removes").expect("the group of v17 to v32");
    });
    let log = EventLog::open(dir.path()).expect("opens");
    let read_back = store::ReadBack::start(&log).expect("starts");
    wait_until_finished(&read_back);
    let failure = log.failure();
    assert!(
        failure
            .as_deref()
            .is_some_and(|reason| reason.contains("corrupt at position 17: stream index of long version 17")),
        "{failure:?}"
    );
    let refused = log.append(append("long", ExpectedVersion::Any, vec![event("E", b"more")])).await;
    assert!(matches!(refused, Err(StoreError::Unavailable { .. })), "{refused:?}");
}
