//! Durable acks, positions and versions, expected versions, atomic multi-stream
//! appends, idempotency, size caps, the directory lock.

use store::{EventLog, ExpectedVersion, NewEvent, Payload, RECORD_LEN_MAX, StoreError};
use tests::{append, append_many, event, sealed_event, temp_dir};
use uuid::Uuid;

#[tokio::test]
async fn acknowledged_events_are_there_after_reopening() {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    let first = log
        .append(append("cart-1", ExpectedVersion::NoStream, vec![event("A", b"one"), event("B", b"two")]))
        .await
        .expect("appends");
    let second =
        log.append(append("cart-2", ExpectedVersion::NoStream, vec![event("C", b"three")])).await.expect("appends");
    assert_eq!((first.first_position, first.last_position), (1, 2));
    assert_eq!((second.first_position, second.last_position), (3, 3));
    drop(log);

    let log = EventLog::open(dir.path()).expect("reopens");
    assert_eq!(log.head(), 3);
    let events = log.read_all(1, 10).expect("reads");
    let payloads: Vec<_> = events.iter().map(|event| event.payload.clone()).collect();
    assert_eq!(
        payloads,
        vec![Payload::Plain(b"one".to_vec()), Payload::Plain(b"two".to_vec()), Payload::Plain(b"three".to_vec())]
    );
    let next = log
        .append(append("cart-1", ExpectedVersion::Exact(2), vec![event("D", b"four")]))
        .await
        .expect("appends after reopen");
    assert_eq!(next.first_position, 4);
    assert_eq!(next.streams[0].version, 3);
    log.verify().expect("the reopened log verifies");
}

#[tokio::test]
async fn positions_are_global_and_versions_count_per_stream() {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    for round in 0..3u8 {
        for stream in ["a", "b"] {
            log.append(append(stream, ExpectedVersion::Any, vec![event("E", &[round])])).await.expect("appends");
        }
    }
    let events = log.read_all(1, 100).expect("reads");
    let positions: Vec<_> = events.iter().map(|event| event.position).collect();
    assert_eq!(positions, (1..=6).collect::<Vec<_>>());
    let versions_of_b: Vec<_> =
        log.read_stream("b", 1, 100).expect("reads").iter().map(|event| (event.version, event.position)).collect();
    assert_eq!(versions_of_b, vec![(1, 2), (2, 4), (3, 6)]);
    assert_eq!(log.stream_version("a").expect("reads"), 3);
    assert_eq!(log.stream_version("nothing").expect("reads"), 0);
}

#[tokio::test]
async fn each_expected_version_is_checked() {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    let write = |expected| log.append(append("s", expected, vec![event("E", b"")]));

    let refused = write(ExpectedVersion::StreamExists).await.expect_err("no stream yet");
    assert_eq!(
        refused,
        StoreError::WrongExpectedVersion { stream: "s".into(), expected: ExpectedVersion::StreamExists, actual: 0 }
    );
    let refused = write(ExpectedVersion::Exact(1)).await.expect_err("no stream yet");
    assert_eq!(
        refused,
        StoreError::WrongExpectedVersion { stream: "s".into(), expected: ExpectedVersion::Exact(1), actual: 0 }
    );
    write(ExpectedVersion::NoStream).await.expect("first event");
    let refused = write(ExpectedVersion::NoStream).await.expect_err("stream exists");
    assert_eq!(refused.to_string(), "wrong expected version on stream s: expected no stream, actual 1");
    write(ExpectedVersion::StreamExists).await.expect("exists");
    write(ExpectedVersion::Exact(2)).await.expect("exact");
    let refused = write(ExpectedVersion::Exact(2)).await.expect_err("stale");
    assert_eq!(
        refused,
        StoreError::WrongExpectedVersion { stream: "s".into(), expected: ExpectedVersion::Exact(2), actual: 3 }
    );
    write(ExpectedVersion::Any).await.expect("any");
    assert_eq!(log.stream_version("s").expect("reads"), 4);
    assert_eq!(log.head(), 4, "refused appends wrote nothing");
}

#[tokio::test]
async fn a_multi_stream_append_is_all_or_nothing() {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    log.append(append("product-a", ExpectedVersion::NoStream, vec![event("Created", b"a")])).await.expect("appends");

    let checkout = |product_version| {
        append_many(vec![
            ("order-1", ExpectedVersion::NoStream, vec![event("OrderPlaced", b"o")]),
            ("product-a", ExpectedVersion::Exact(product_version), vec![event("StockReserved", b"r")]),
            ("cart-1", ExpectedVersion::Any, vec![event("CartCheckedOut", b"c")]),
        ])
    };
    let refused = log.append(checkout(7)).await.expect_err("product version is stale");
    assert!(
        matches!(refused, StoreError::WrongExpectedVersion { ref stream, actual: 1, .. } if stream == "product-a"),
        "{refused:?}"
    );
    assert_eq!(log.head(), 1);
    assert_eq!(log.stream_version("order-1").expect("reads"), 0, "no part of the refused append was written");
    assert_eq!(log.stream_version("cart-1").expect("reads"), 0);

    let written = log.append(checkout(1)).await.expect("appends");
    assert_eq!((written.first_position, written.last_position), (2, 4));
    let streams: Vec<_> = written.streams.iter().map(|stream| (stream.stream.as_str(), stream.version)).collect();
    assert_eq!(streams, vec![("order-1", 1), ("product-a", 2), ("cart-1", 1)]);
    let types: Vec<_> = log.read_all(2, 10).expect("reads").into_iter().map(|event| event.event_type).collect();
    assert_eq!(types, vec!["OrderPlaced", "StockReserved", "CartCheckedOut"]);
}

/// A stream with no events in an append is a condition: its expected version
/// must hold or nothing is written, it gets no event, and the result leaves it out.
#[tokio::test]
async fn a_stream_without_events_is_a_condition_of_the_append() {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    log.append(append("cart-1", ExpectedVersion::NoStream, vec![event("ItemAdded", b"a")])).await.expect("appends");

    let forget = |cart_version| {
        append_many(vec![
            ("customer-1", ExpectedVersion::Any, vec![event("CustomerForgotten", b"f")]),
            ("cart-1", ExpectedVersion::Exact(cart_version), vec![]),
        ])
    };
    let refused = log.append(forget(2)).await.expect_err("the cart is at version 1");
    assert_eq!(
        refused,
        StoreError::WrongExpectedVersion { stream: "cart-1".into(), expected: ExpectedVersion::Exact(2), actual: 1 }
    );
    assert_eq!((log.head(), log.stream_version("customer-1").expect("reads")), (1, 0), "nothing was written");

    let written = log.append(forget(1)).await.expect("the cart is at version 1");
    assert_eq!((written.first_position, written.last_position), (2, 2));
    let streams: Vec<_> = written.streams.iter().map(|stream| (stream.stream.as_str(), stream.version)).collect();
    assert_eq!(streams, vec![("customer-1", 1)], "the condition is not a stream written");
    assert_eq!(log.stream_version("cart-1").expect("reads"), 1, "the condition's stream got nothing");
    assert_eq!(log.read_stream("cart-1", 1, 10).expect("reads").len(), 1);

    let checks_nothing = append_many(vec![
        ("customer-2", ExpectedVersion::Any, vec![event("CustomerRegistered", b"r")]),
        ("cart-1", ExpectedVersion::Any, vec![]),
    ]);
    let refused = log.append(checks_nothing).await.expect_err("a condition on any version checks nothing");
    assert!(matches!(refused, StoreError::InvalidAppend { ref reason } if reason.contains("cart-1")), "{refused:?}");
    let only_conditions = append_many(vec![("cart-1", ExpectedVersion::Exact(1), vec![])]);
    let refused = log.append(only_conditions).await.expect_err("an append must write something");
    assert!(matches!(refused, StoreError::InvalidAppend { .. }), "{refused:?}");
    assert_eq!(log.head(), 2);
    log.verify().expect("verifies");
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_first_result_and_writes_nothing() {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    let request =
        || append("cart-9", ExpectedVersion::Any, vec![event("ItemAdded", b"x")]).with_idempotency("key-1", [1; 32]);
    let first = log.append(request()).await.expect("appends");
    assert!(!first.duplicate);
    let again = log.append(request()).await.expect("repeat is fine");
    assert!(again.duplicate);
    assert_eq!(
        (again.first_position, again.last_position, again.streams.clone()),
        (first.first_position, first.last_position, first.streams.clone())
    );
    assert_eq!(log.head(), 1, "the repeat wrote nothing");

    let other_body =
        append("cart-9", ExpectedVersion::Any, vec![event("ItemAdded", b"y")]).with_idempotency("key-1", [2; 32]);
    assert_eq!(log.append(other_body).await.expect_err("other request"), StoreError::IdempotencyKeyReused);
    drop(log);

    let log = EventLog::open(dir.path()).expect("reopens");
    let after_restart = log.append(request()).await.expect("repeat after restart");
    assert!(after_restart.duplicate);
    assert_eq!(after_restart.first_position, first.first_position);
    assert_eq!(log.head(), 1);
}

/// A retry of an append that was acknowledged but whose answer was lost finds
/// its stream moved on by its own events: the key must be looked up before the
/// expected version is checked, or the retry is refused as a conflict.
#[tokio::test]
async fn a_repeated_idempotent_append_is_a_duplicate_although_its_expected_version_is_now_stale() {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    let create = || {
        append("cart-3", ExpectedVersion::NoStream, vec![event("CartCreated", b"c")])
            .with_idempotency("create", [3; 32])
    };
    let add = || {
        append("cart-3", ExpectedVersion::Exact(1), vec![event("ItemAdded", b"a"), event("ItemAdded", b"b")])
            .with_idempotency("add", [4; 32])
    };
    let created = log.append(create()).await.expect("appends");
    let added = log.append(add()).await.expect("appends");
    assert!(!created.duplicate && !added.duplicate);
    assert_eq!((added.first_position, added.last_position), (2, 3));

    let mut log = log;
    for restart in [false, true] {
        if restart {
            // After a restart the keys are read from disk, not from the writer's memory.
            drop(log);
            log = EventLog::open(dir.path()).expect("reopens");
        }
        for (request, first) in [(create(), &created), (add(), &added)] {
            let again = log.append(request).await.expect("a repeat is no conflict");
            assert_eq!(again, store::AppendResult { duplicate: true, ..first.clone() });
        }
        assert_eq!(log.head(), 3, "the repeats wrote nothing");
        assert_eq!(log.stream_version("cart-3").expect("reads"), 3);
    }
}

#[tokio::test]
async fn the_same_idempotency_key_sent_concurrently_writes_once() {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let log = log.clone();
            tokio::spawn(async move {
                log.append(
                    append("cart-5", ExpectedVersion::Any, vec![event("ItemAdded", b"x")])
                        .with_idempotency("same", [7; 32]),
                )
                .await
            })
        })
        .collect();
    let mut originals = 0;
    for task in tasks {
        let result = task.await.expect("task ends").expect("appends");
        assert_eq!(result.first_position, 1);
        originals += usize::from(!result.duplicate);
    }
    assert_eq!(originals, 1);
    assert_eq!(log.head(), 1);
}

#[tokio::test]
async fn records_over_the_cap_are_refused_and_big_ones_never_become_sled_blobs() {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    let refused = log
        .append(append("big", ExpectedVersion::Any, vec![event("Big", &vec![7; RECORD_LEN_MAX])]))
        .await
        .expect_err("over the cap");
    assert!(matches!(refused, StoreError::RecordTooLarge { max: RECORD_LEN_MAX, .. }), "{refused:?}");
    assert_eq!(log.head(), 0);

    // Records just under the cap, enough to fill and split many leaf nodes.
    let payload = vec![7; RECORD_LEN_MAX - 200];
    for _ in 0..60 {
        log.append(append("big", ExpectedVersion::Any, vec![event("Big", &payload)]))
            .await
            .expect("fits under the cap");
    }
    drop(log);
    let log = EventLog::open(dir.path()).expect("reopens");
    assert_eq!(log.head(), 60);
    log.verify().expect("verifies");
    let blobs = std::fs::read_dir(dir.path().join("blobs")).map(|entries| entries.count()).unwrap_or(0);
    assert_eq!(blobs, 0, "sled wrote blobs, which it never fsyncs");
}

/// The stored length of `event` appended alone to stream `big` of a new log, read
/// with sled: the cap counts these bytes, so the tests at its edge measure the
/// envelope (and the seal) rather than assume how they are encoded.
async fn stored_len(event: NewEvent) -> usize {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    log.append(append("big", ExpectedVersion::Any, vec![event])).await.expect("appends");
    drop(log);
    let events = tests::raw_sled(dir.path()).open_tree("events").expect("tree");
    events.get(1u64.to_be_bytes()).expect("reads").expect("the record is stored alone at its position").len()
}

/// What a record of `event` in stream `big` takes besides its payload. Positions
/// and versions below 128 all take one byte, so this holds for the first events.
async fn overhead(event: NewEvent) -> usize {
    let payload_len = event.payload.len();
    stored_len(event).await - payload_len
}

#[tokio::test]
async fn a_record_of_exactly_the_cap_is_taken_and_one_byte_more_is_refused() {
    let overhead = overhead(event("Big", b"x")).await;
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    let refused = log
        .append(append("big", ExpectedVersion::Any, vec![event("Big", &vec![7; RECORD_LEN_MAX - overhead + 1])]))
        .await
        .expect_err("one byte over the cap");
    assert_eq!(
        refused,
        StoreError::RecordTooLarge {
            stream: "big".into(),
            event_type: "Big".into(),
            len: RECORD_LEN_MAX + 1,
            max: RECORD_LEN_MAX
        }
    );
    assert_eq!(log.head(), 0);

    let payload = vec![7; RECORD_LEN_MAX - overhead];
    log.append(append("big", ExpectedVersion::Any, vec![event("Big", &payload)])).await.expect("exactly the cap");
    assert_eq!(log.read_all(1, 1).expect("reads")[0].payload, Payload::Plain(payload));
    drop(log);
    let events = tests::raw_sled(dir.path()).open_tree("events").expect("tree");
    let stored = events.get(1u64.to_be_bytes()).expect("reads").expect("stored alone at its position");
    assert_eq!(stored.len(), RECORD_LEN_MAX, "the record stored is exactly at the cap");
}

/// Sealing adds a nonce and a tag to the payload, and the cap holds for the
/// sealed record that is stored, not for the plain payload that was sent.
#[tokio::test]
async fn a_payload_that_fits_only_before_sealing_is_refused() {
    let subject = Uuid::now_v7();
    let sealed_overhead = overhead(sealed_event("Big", subject, b"x")).await;
    let plain_overhead = overhead(event("Big", b"x")).await;
    assert!(sealed_overhead >= plain_overhead + 40, "sealing adds a 24-byte nonce and a 16-byte tag");
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    let sealed_len_max = RECORD_LEN_MAX - sealed_overhead;

    let too_large = vec![7; sealed_len_max + 1];
    log.append(append("plain", ExpectedVersion::Any, vec![event("Big", &too_large)]))
        .await
        .expect("fits the cap unsealed");
    let refused = log
        .append(append("big", ExpectedVersion::Any, vec![sealed_event("Big", subject, &too_large)]))
        .await
        .expect_err("over the cap once sealed");
    assert!(
        matches!(refused, StoreError::RecordTooLarge { len, max: RECORD_LEN_MAX, .. } if len == RECORD_LEN_MAX + 1),
        "{refused:?}"
    );
    assert_eq!(log.head(), 1);

    let fits = vec![7; sealed_len_max];
    log.append(append("big", ExpectedVersion::Any, vec![sealed_event("Big", subject, &fits)]))
        .await
        .expect("exactly the cap once sealed");
    assert_eq!(log.read_stream("big", 1, 1).expect("reads")[0].payload, Payload::Plain(fits));
}

#[tokio::test]
async fn a_multi_stream_append_whose_last_event_is_too_large_writes_nothing() {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    log.append(append("product-a", ExpectedVersion::NoStream, vec![event("Created", b"a")])).await.expect("appends");
    let refused = log
        .append(append_many(vec![
            ("order-1", ExpectedVersion::NoStream, vec![event("OrderPlaced", b"o")]),
            ("product-a", ExpectedVersion::Exact(1), vec![event("StockReserved", b"r")]),
            (
                "cart-1",
                ExpectedVersion::Any,
                vec![event("CartCheckedOut", b"c"), event("Big", &vec![7; RECORD_LEN_MAX])],
            ),
        ]))
        .await
        .expect_err("the last event is over the cap");
    assert!(
        matches!(refused, StoreError::RecordTooLarge { ref stream, ref event_type, .. } if stream == "cart-1" && event_type == "Big"),
        "{refused:?}"
    );
    let versions =
        |log: &EventLog| ["order-1", "product-a", "cart-1"].map(|stream| log.stream_version(stream).expect("reads"));
    assert_eq!(log.head(), 1);
    assert_eq!(versions(&log), [0, 1, 0], "no stream of the refused append moved");

    // No position was used up either: the next append takes position 2.
    let next = log.append(append("cart-1", ExpectedVersion::NoStream, vec![event("CartCreated", b"n")])).await;
    assert_eq!(next.expect("appends").first_position, 2);
    drop(log);
    let log = EventLog::open(dir.path()).expect("reopens");
    assert_eq!(versions(&log), [0, 1, 1]);
    assert_eq!(log.verify().expect("verifies").events, 2);
}

#[tokio::test]
async fn malformed_appends_are_refused_and_change_nothing() {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    let cases = [
        append("s", ExpectedVersion::Any, vec![]),
        append("", ExpectedVersion::Any, vec![event("E", b"")]),
        append("a\0b", ExpectedVersion::Any, vec![event("E", b"")]),
        append(&"x".repeat(257), ExpectedVersion::Any, vec![event("E", b"")]),
        append("s", ExpectedVersion::Any, vec![event("", b"")]),
        append("s", ExpectedVersion::Any, vec![event("Line\nBreak", b"")]),
        append("s", ExpectedVersion::Any, vec![event("Tab\tbed", b"")]),
        append_many(vec![
            ("s", ExpectedVersion::Any, vec![event("E", b"")]),
            ("s", ExpectedVersion::Any, vec![event("E", b"")]),
        ]),
    ];
    for request in cases {
        let refused = log.append(request.clone()).await.expect_err("malformed");
        assert!(matches!(refused, StoreError::InvalidAppend { .. }), "{request:?} gave {refused:?}");
    }
    assert_eq!(log.head(), 0);
}

/// The stream index keys a stream's groups by its name, a NUL and a version: a
/// name holding NULs, which no stream can have, reads no other stream's events.
#[tokio::test]
async fn a_name_no_stream_can_have_reads_nothing() {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    log.append(append("product-mug", ExpectedVersion::Any, vec![event("E", b"1"), event("E", b"2")]))
        .await
        .expect("appends");
    assert_eq!(log.read_stream("product-mug", 1, 10).expect("reads").len(), 2);
    for nuls in 1..=9 {
        let name = format!("product-mug{}", "\0".repeat(nuls));
        assert_eq!(log.read_stream(&name, 1, 10).expect("reads").len(), 0, "{nuls} NULs");
        assert_eq!(log.stream_version(&name).expect("reads"), 0, "{nuls} NULs");
    }
    assert_eq!(log.read_stream(&"x".repeat(257), 1, 10).expect("reads").len(), 0);
}

#[tokio::test]
async fn a_second_open_of_a_directory_in_use_says_it_is_locked() {
    let dir = temp_dir();
    let _log = EventLog::open(dir.path()).expect("opens");
    let refused = EventLog::open(dir.path()).expect_err("in use");
    assert_eq!(refused, StoreError::Locked { path: dir.path().to_path_buf() });
    assert!(refused.to_string().contains("in use by another process"), "{refused}");
}

#[tokio::test]
async fn recorded_times_never_go_back_along_the_log() {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    let later = chrono::Utc::now() + chrono::Duration::days(1);
    let mut imported = append("s", ExpectedVersion::Any, vec![event("E", b"")]);
    imported.recorded_at = Some(later);
    log.append(imported).await.expect("appends");
    log.append(append("s", ExpectedVersion::Any, vec![event("E", b"")])).await.expect("appends");
    let times: Vec<_> = log.read_all(1, 10).expect("reads").iter().map(|event| event.recorded_at).collect();
    assert_eq!(times[0].timestamp_micros(), later.timestamp_micros());
    assert!(times[1] >= times[0]);
}

#[tokio::test]
async fn a_named_secret_is_made_once_and_kept_across_restarts() {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    let first = log.secret("email-key").expect("made");
    assert_eq!(log.secret("email-key").expect("read"), first);
    assert_ne!(log.secret("token").expect("made"), first, "each name has its own secret");
    drop(log);
    let log = EventLog::open(dir.path()).expect("reopens");
    assert_eq!(log.secret("email-key").expect("read"), first);
    log.verify().expect("secrets are not part of the chain");
}

/// Every record of `log`, as stored, in position order.
async fn stored_records(log: &EventLog) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let mut subscription = log.subscribe(1);
    while subscription.next_position() <= log.head() {
        subscription
            .next_stored(1000, |record| {
                records.push(record.bytes.to_vec());
                Ok::<(), StoreError>(())
            })
            .await
            .expect("lends");
    }
    records
}

/// A read replica's copy (DESIGN §4): records appended as another log stored
/// them, in pieces of any size (streams interleaved within a piece, index
/// groups begun and continued across pieces, a sealed payload, a forget), make
/// a log that reads and verifies like the first: the same records byte for
/// byte, the same streams and versions, the same hash chain; the sealed
/// payload reads as forgotten, as the copy holds no key.
#[tokio::test]
async fn records_appended_as_stored_make_the_same_log() {
    let (first_dir, copy_dir) = (temp_dir(), temp_dir());
    let first = EventLog::open(first_dir.path()).expect("opens");
    let subject = Uuid::new_v4();
    for index in 0u32..70 {
        let stream = format!("s-{}", index % 3);
        let request = match index {
            10 => append_many(vec![
                ("s-0", ExpectedVersion::Any, vec![event("E", b"a"), event("E", b"b")]),
                ("s-9", ExpectedVersion::Any, vec![event("E", b"c")]),
            ]),
            20 => append(
                "customer-1",
                ExpectedVersion::Any,
                vec![sealed_event("Registered", subject, b"ada@example.com")],
            ),
            _ => append(&stream, ExpectedVersion::Any, vec![event("E", &index.to_be_bytes())]),
        };
        first.append(request).await.expect("appends");
    }
    let forgotten = append("customer-1", ExpectedVersion::Any, vec![event("Forgotten", b"")]);
    first.forget(subject, forgotten).await.expect("forgets");
    let records = stored_records(&first).await;
    assert_eq!(records.len() as u64, first.head());

    let copy = EventLog::open(copy_dir.path()).expect("opens");
    let mut rest = records.as_slice();
    for len in [1, 5, 17, 2, 40].into_iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, after) = rest.split_at(len.min(rest.len()));
        let appended = copy.append_stored(piece.to_vec()).await.expect("appends as stored");
        assert_eq!(appended.last_position, copy.head());
        rest = after;
    }
    assert_eq!(stored_records(&copy).await, records, "the same records, byte for byte");
    for stream in ["s-0", "s-1", "s-2", "s-9", "customer-1"] {
        let read = |log: &EventLog| -> Vec<(u64, u64)> {
            log.read_stream(stream, 1, 1000)
                .expect("reads")
                .iter()
                .map(|event| (event.position, event.version))
                .collect()
        };
        assert_eq!(read(&copy), read(&first), "stream {stream}");
        assert_eq!(copy.stream_version(stream).expect("reads"), first.stream_version(stream).expect("reads"));
    }
    let sealed = copy.read_stream("customer-1", 1, 1).expect("reads");
    assert_eq!(sealed[0].event_type, "Registered");
    assert_eq!(sealed[0].payload, Payload::Forgotten, "no key came with it");
    assert_eq!(copy.verify().expect("verifies").events, first.head());
    drop(copy);
    let copy = EventLog::open(copy_dir.path()).expect("reopens");
    assert_eq!(copy.head(), first.head());
    assert_eq!(copy.verify().expect("verifies").events, first.head());
}

/// A record that does not follow the log is refused with the position it
/// should have held, and nothing of its append is written: one past the next
/// position (a gap), one already held (a repeat), another log's (its hash
/// does not chain), bytes that are no record, and none at all.
#[tokio::test]
async fn records_that_do_not_follow_the_log_are_refused_and_nothing_is_written() {
    let (first_dir, other_dir, copy_dir) = (temp_dir(), temp_dir(), temp_dir());
    let first = EventLog::open(first_dir.path()).expect("opens");
    let other = EventLog::open(other_dir.path()).expect("opens");
    for log in [&first, &other] {
        for index in 0u32..6 {
            log.append(append("s-1", ExpectedVersion::Any, vec![event("E", &index.to_be_bytes())]))
                .await
                .expect("appends");
        }
    }
    let records = stored_records(&first).await;
    let others = stored_records(&other).await;
    let copy = EventLog::open(copy_dir.path()).expect("opens");
    copy.append_stored(records[..3].to_vec()).await.expect("appends as stored");

    let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
        (
            "a gap",
            vec![records[3].clone(), records[5].clone()],
            "position 5 does not follow this log: it holds position 6",
        ),
        ("a repeat", vec![records[2].clone()], "position 4 does not follow this log: it holds position 3"),
        ("another log's", vec![records[3].clone(), others[4].clone()], "its hash does not chain"),
        ("no record", vec![b"not a record".to_vec()], "position 4 does not follow this log"),
    ];
    for (what, pieces, says) in cases {
        match copy.append_stored(pieces).await {
            Err(StoreError::BadInput { reason }) => assert!(reason.contains(says), "{what}: {reason}"),
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(copy.head(), 3, "{what}: nothing written");
    }
    assert!(matches!(copy.append_stored(Vec::new()).await, Err(StoreError::InvalidAppend { .. })));
    copy.append_stored(records[3..].to_vec()).await.expect("the rest follows");
    assert_eq!(stored_records(&copy).await, records);
    assert_eq!(copy.verify().expect("verifies").events, 6);
}

/// A stream whose run begins a new index group (versions 16 and 17 in a row)
/// and comes back later in the same append (version 18, after another
/// stream's event): the group begun in the append is found, not read from the
/// index as if it were damaged (found by an audit: a replica stuck for good).
#[tokio::test]
async fn records_as_stored_of_a_stream_that_comes_back_after_beginning_a_group() {
    let (first_dir, copy_dir) = (temp_dir(), temp_dir());
    let first = EventLog::open(first_dir.path()).expect("opens");
    for (stream, times) in [("a", 17), ("b", 1), ("a", 1)] {
        for index in 0u32..times {
            first
                .append(append(stream, ExpectedVersion::Any, vec![event("E", &index.to_be_bytes())]))
                .await
                .expect("appends");
        }
    }
    let records = stored_records(&first).await;
    let copy = EventLog::open(copy_dir.path()).expect("opens");
    copy.append_stored(records[..15].to_vec()).await.expect("appends as stored");
    copy.append_stored(records[15..].to_vec()).await.expect("versions 16 to 18 of a, around b's first");
    assert_eq!(stored_records(&copy).await, records);
    assert_eq!(copy.stream_version("a").expect("reads"), 18);
    assert_eq!(copy.read_stream("a", 15, 10).expect("reads").len(), 4);
    assert_eq!(copy.verify().expect("verifies").events, 19);
}
