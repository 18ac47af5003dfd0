//! Records packed several to a sled key (`store/src/chunk.rs`): every read finds
//! each event whatever chunk holds it, damage inside a chunk is named at the
//! event's own position, and a log written one record a key and indexed one
//! entry a version (format 1) still opens, reads, verifies and takes appends.

use std::path::Path;

use store::{EventLog, ExpectedVersion, StoreError};
use tests::{append, append_many, event, temp_dir};

/// One append of 150 events (three chunks: 64, 64 and 22 records) after two
/// single ones, so that positions 3 to 152 lie in chunks.
async fn log_with_a_big_batch(dir: &Path) -> EventLog {
    let log = EventLog::open(dir).expect("opens");
    for payload in [b"one", b"two"] {
        log.append(append("single", ExpectedVersion::Any, vec![event("E", payload)])).await.expect("appends");
    }
    let big = append_many(vec![
        ("big", ExpectedVersion::NoStream, (0..100u32).map(|index| event("E", &index.to_be_bytes())).collect()),
        ("other", ExpectedVersion::NoStream, (100..150u32).map(|index| event("E", &index.to_be_bytes())).collect()),
    ]);
    let result = log.append(big).await.expect("appends");
    assert_eq!((result.first_position, result.last_position), (3, 152));
    log
}

fn stored_values(dir: &Path) -> Vec<u64> {
    let db = tests::raw_sled(dir);
    let events = db.open_tree("events").expect("tree");
    events
        .iter()
        .keys()
        .map(|key| u64::from_be_bytes(key.expect("reads").as_ref().try_into().expect("a position")))
        .collect()
}

#[tokio::test]
async fn a_batch_is_stored_in_chunks_and_every_read_finds_each_event() {
    let dir = temp_dir();
    {
        let log = log_with_a_big_batch(dir.path()).await;
        assert_eq!(log.verify().expect("verifies").events, 152);
    }
    assert_eq!(stored_values(dir.path()), vec![1, 2, 3, 67, 131], "two single records, then chunks of 64, 64, 22");

    let log = EventLog::open(dir.path()).expect("opens again");
    let all = log.read_all(1, 1000).expect("reads");
    assert_eq!(all.iter().map(|event| event.position).collect::<Vec<_>>(), (1..=152).collect::<Vec<_>>());
    // Reads that start and end inside chunks and across their borders.
    for (from, limit) in [(2, 1), (3, 1), (4, 63), (66, 2), (67, 1), (100, 40), (130, 5), (152, 9), (153, 4)] {
        let read = log.read_all(from, limit).expect("reads");
        let expected: Vec<u64> = (from..(from + limit as u64).min(153)).collect();
        assert_eq!(read.iter().map(|event| event.position).collect::<Vec<_>>(), expected, "from {from}");
        assert!(read.iter().zip(&all[from as usize - 1..]).all(|(read, whole)| read == whole), "from {from}");
    }
    let big = log.read_stream("big", 60, 10).expect("reads");
    assert_eq!(big.iter().map(|event| event.version).collect::<Vec<_>>(), (60..70).collect::<Vec<_>>());
    assert_eq!(big.iter().map(|event| event.position).collect::<Vec<_>>(), (62..72).collect::<Vec<_>>());
    let other = log.read_stream("other", 1, 100).expect("reads");
    assert_eq!(other.len(), 50);
    assert_eq!(other[0].payload.bytes(), Some(&100u32.to_be_bytes()[..]));
    assert_eq!(log.stream_version("big").expect("reads"), 100);

    // The next append goes on after the chunks.
    let next = log.append(append("big", ExpectedVersion::Exact(100), vec![event("E", b"x")])).await.expect("appends");
    assert_eq!(next.last_position, 153);
    assert_eq!(log.verify().expect("verifies").events, 153);
}

#[tokio::test]
async fn damage_inside_a_chunk_is_named_at_the_events_own_position() {
    let dir = temp_dir();
    drop(log_with_a_big_batch(dir.path()).await);
    let flip_last_byte = |db: &sled::Db| {
        let events = db.open_tree("events").expect("tree");
        let mut bytes = events.get(67u64.to_be_bytes()).expect("reads").expect("a chunk at 67").to_vec();
        // The second chunk's last byte is the last byte of position 130's payload.
        let last = bytes.len() - 1;
        bytes[last] ^= 0x5a;
        events.insert(67u64.to_be_bytes(), bytes).expect("writes");
        db.flush().expect("flushes");
    };
    flip_last_byte(&tests::raw_sled(dir.path()));

    let log = EventLog::open(dir.path()).expect("opens");
    match log.verify() {
        Err(StoreError::Corrupt { position: 130, .. }) => {}
        other => panic!("verify should name position 130, got {other:?}"),
    }
    assert!(matches!(log.read_all(100, 100), Err(StoreError::Corrupt { position: 130, .. })));
    assert_eq!(log.read_all(67, 63).expect("what comes before the damage reads").len(), 63);
    drop(log);

    // A chunk whose table of record ends is damaged is named at its first position.
    let db = tests::raw_sled(dir.path());
    flip_last_byte(&db);
    let events = db.open_tree("events").expect("tree");
    let mut bytes = events.get(67u64.to_be_bytes()).expect("reads").expect("a chunk at 67").to_vec();
    bytes[1] ^= 0x01;
    events.insert(67u64.to_be_bytes(), bytes).expect("writes");
    db.flush().expect("flushes");
    drop((events, db));
    match EventLog::open(dir.path()).expect("opens").verify() {
        Err(StoreError::Corrupt { position: 67, .. }) => {}
        other => panic!("verify should name position 67, got {other:?}"),
    }
}

#[tokio::test]
async fn a_log_of_one_record_a_key_opens_reads_and_takes_packed_appends() {
    let dir = temp_dir();
    {
        // Appends of one event each, one at a time: every value is a single
        // record, exactly as format 1 stored them.
        let log = EventLog::open(dir.path()).expect("opens");
        for index in 0..5u8 {
            log.append(append("old", ExpectedVersion::Any, vec![event("E", &[index])])).await.expect("appends");
        }
    }
    {
        // And the stream index of format 1 to 3: one entry a version, the
        // position its value.
        let db = tests::raw_sled(dir.path());
        let streams = db.open_tree("streams").expect("tree");
        streams.clear().expect("clears");
        for version in 1..=5u64 {
            let key = [&b"old\0"[..], &version.to_be_bytes()].concat();
            streams.insert(key, &version.to_be_bytes()).expect("writes");
        }
        db.open_tree("meta").expect("tree").insert("format", &[1]).expect("writes");
        db.flush().expect("flushes");
    }
    assert_eq!(stored_values(dir.path()), vec![1, 2, 3, 4, 5]);

    {
        let log = EventLog::open(dir.path()).expect("a format-1 log opens");
        assert_eq!(log.verify().expect("verifies, its stream index grouped").events, 5);
        assert_eq!(log.stream_version("old").expect("reads"), 5);
        assert_eq!(log.read_stream("old", 1, 10).expect("reads").len(), 5);
        let packed = append("old", ExpectedVersion::Exact(5), (0..3).map(|_| event("E", b"new")).collect());
        assert_eq!(log.append(packed).await.expect("appends").last_position, 8);
        assert_eq!(log.read_all(4, 10).expect("reads").len(), 5);
        assert_eq!(log.verify().expect("verifies").events, 8);
    }
    assert_eq!(stored_values(dir.path()), vec![1, 2, 3, 4, 5, 6]);
    let format = tests::raw_sled(dir.path()).open_tree("meta").expect("tree").get("format").expect("reads");
    assert_eq!(
        format.as_deref(),
        Some(&[8][..]),
        "the log is marked format 8 once it may hold chunks, a write-ahead log of two files whose frames name \
         the durable head, index groups and recent groups, and a checkpoint mark that says a clean close"
    );
    let streams = tests::raw_sled(dir.path()).open_tree("streams").expect("tree");
    let groups: Vec<(Vec<u8>, Vec<u8>)> =
        streams.iter().map(|entry| entry.expect("reads")).map(|(key, value)| (key.to_vec(), value.to_vec())).collect();
    let positions: Vec<u8> = (1..=8u64).flat_map(u64::to_be_bytes).collect();
    assert_eq!(groups, vec![([&b"old\0"[..], &1u64.to_be_bytes()].concat(), positions)], "one group of 8 versions");
}

#[tokio::test]
async fn a_log_of_an_unknown_format_is_refused_with_the_format_named() {
    let dir = temp_dir();
    {
        let log = EventLog::open(dir.path()).expect("opens");
        log.append(append("s", ExpectedVersion::Any, vec![event("E", b"x")])).await.expect("appends");
    }
    {
        let db = tests::raw_sled(dir.path());
        db.open_tree("meta").expect("tree").insert("format", &[9]).expect("writes");
        db.flush().expect("flushes");
    }
    match EventLog::open(dir.path()) {
        Err(StoreError::Corrupt { reason, .. }) => assert!(reason.contains("unknown log format [9]"), "{reason}"),
        other => panic!("a log of format 9 should be refused, got {other:?}"),
    }
}
