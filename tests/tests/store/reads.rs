//! Reads of one stream and of the whole log, subscriptions, and upcasting.

use std::borrow::Cow;
use std::time::Duration;

use store::{EventLog, ExpectedVersion, Options, Payload, StoreError, Upcasters, codec};
use tests::{append, event, temp_dir};

/// A log in `dir` holding `events` events, one an append, over `streams` streams in turn.
async fn log_of(dir: &std::path::Path, events: u32, streams: u32) -> EventLog {
    let log = EventLog::open(dir).expect("opens");
    for index in 0..events {
        log.append(append(
            &format!("s-{}", index % streams),
            ExpectedVersion::Any,
            vec![event("E", &index.to_be_bytes())],
        ))
        .await
        .expect("appends");
    }
    log
}

#[tokio::test]
async fn the_global_log_reads_from_a_position_with_a_limit() {
    let dir = temp_dir();
    let log = log_of(dir.path(), 10, 3).await;
    let page: Vec<_> = log.read_all(4, 3).expect("reads").iter().map(|event| event.position).collect();
    assert_eq!(page, vec![4, 5, 6]);
    assert_eq!(log.read_all(0, 2).expect("reads")[0].position, 1, "position 0 reads from the start");
    assert!(log.read_all(11, 5).expect("reads").is_empty());
    assert_eq!(log.read_all(9, 100).expect("reads").len(), 2);
}

/// `scan` lends what `read_all` returns, borrowed from the stored records where
/// it can (an unsealed payload of the newest version), and stops at the first
/// error of its visitor.
#[tokio::test]
async fn a_scan_lends_the_events_read_all_returns_and_stops_at_its_visitors_error() {
    let dir = temp_dir();
    let log = log_of(dir.path(), 10, 3).await;
    let mut lent = Vec::new();
    let seen = log
        .scan(3, 5, |event| {
            assert!(matches!(event.payload, Some(Cow::Borrowed(_))), "an unsealed payload is lent, not copied");
            assert!(matches!(event.stream, Cow::Borrowed(_)), "the stream name is lent, not copied");
            lent.push(event.into_owned());
            Ok::<(), StoreError>(())
        })
        .expect("scans");
    assert_eq!(seen, 5);
    assert_eq!(lent, log.read_all(3, 5).expect("reads"));

    let mut visited = 0;
    let stopped = log.scan(1, 100, |event| {
        visited += 1;
        match event.position {
            4 => Err(StoreError::Unavailable { reason: "enough".to_owned() }),
            _ => Ok(()),
        }
    });
    assert_eq!(stopped, Err(StoreError::Unavailable { reason: "enough".to_owned() }));
    assert_eq!(visited, 4, "nothing is visited after the visitor's error");
    assert_eq!(log.scan(11, 5, |_| Ok::<(), StoreError>(())), Ok(0));
}

#[tokio::test]
async fn one_stream_reads_from_a_version_with_its_envelope() {
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    let mut request =
        append("order-7", ExpectedVersion::NoStream, vec![event("OrderPlaced", b"p"), event("OrderPaid", b"q")]);
    request.metadata.actor = "customer:7".to_owned();
    let event_ids: Vec<_> = request.streams[0].events.iter().map(|event| event.event_id).collect();
    log.append(request.clone()).await.expect("appends");
    log.append(append("other", ExpectedVersion::Any, vec![event("X", b"")])).await.expect("appends");
    log.append(append("order-7", ExpectedVersion::Exact(2), vec![event("OrderShipped", b"s")])).await.expect("appends");

    let events = log.read_stream("order-7", 2, 10).expect("reads");
    assert_eq!(events.iter().map(|event| (event.version, event.position)).collect::<Vec<_>>(), vec![(2, 2), (3, 4)]);
    let paid = &events[0];
    assert_eq!(paid.stream, "order-7");
    assert_eq!(paid.event_id, event_ids[1]);
    assert_eq!(paid.event_type, "OrderPaid");
    assert_eq!(paid.schema_version, 1);
    assert_eq!(paid.actor, "customer:7");
    assert_eq!(paid.correlation_id, request.metadata.correlation_id);
    assert_eq!(paid.causation_id, request.metadata.causation_id);
    assert_eq!(paid.subject, None);
    assert_eq!(paid.payload, Payload::Plain(b"q".to_vec()));
    assert_eq!(log.read_stream("order-7", 1, 1).expect("reads").len(), 1);
    assert!(log.read_stream("order-", 1, 10).expect("reads").is_empty(), "a prefix of a name is another stream");
}

/// Every read of `stream` (from each version, with limits below, at and above
/// an index group's 16 versions) against the stream's events in the whole log.
fn assert_stream_reads(log: &EventLog, stream: &str, versions: u64) {
    let all: Vec<(u64, u64)> = log
        .read_all(1, 10_000)
        .expect("reads")
        .into_iter()
        .filter(|event| event.stream == stream)
        .map(|event| (event.version, event.position))
        .collect();
    assert_eq!(all.len() as u64, versions);
    for from in 0..=versions + 1 {
        for limit in [1, 5, 16, 17, 100] {
            let read: Vec<(u64, u64)> = log
                .read_stream(stream, from, limit)
                .expect("reads")
                .iter()
                .map(|event| (event.version, event.position))
                .collect();
            let expected: Vec<(u64, u64)> =
                all.iter().filter(|(version, _)| *version >= from).take(limit).copied().collect();
            assert_eq!(read, expected, "{stream} from version {from}, limit {limit}");
        }
    }
    assert_eq!(log.stream_version(stream).expect("reads"), versions);
}

#[tokio::test]
async fn a_long_stream_reads_from_every_version_across_its_index_groups_and_after_a_reopen() {
    let dir = temp_dir();
    {
        let log = EventLog::open(dir.path()).expect("opens");
        // 53 versions of "long" in appends of 1 to 7 events, every other one with
        // an event of "other" in the same append.
        let mut sizes = [1u64, 7, 3, 5, 2, 6, 4].into_iter().cycle();
        let mut written = 0;
        while written < 53 {
            let size = sizes.next().unwrap_or(1).min(53 - written);
            let events = (0..size).map(|_| event("E", b"long")).collect();
            let request = if written % 2 == 0 {
                append("long", ExpectedVersion::Exact(written), events)
            } else {
                tests::append_many(vec![
                    ("other", ExpectedVersion::Any, vec![event("E", b"other")]),
                    ("long", ExpectedVersion::Exact(written), events),
                ])
            };
            log.append(request).await.expect("appends");
            written += size;
        }
        assert_stream_reads(&log, "long", 53);
        let others = log.stream_version("other").expect("reads");
        assert!(others > 0);
        assert_stream_reads(&log, "other", others);
        assert_eq!(log.verify().expect("verifies").events, 53 + others);
    }
    let log = EventLog::open(dir.path()).expect("reopens");
    assert_stream_reads(&log, "long", 53);
    let more = append("long", ExpectedVersion::Exact(53), (0..20).map(|_| event("E", b"more")).collect());
    log.append(more).await.expect("appends");
    assert_stream_reads(&log, "long", 73);
    assert_eq!(log.read_stream("never", 1, 10).expect("reads").len(), 0);
    assert_eq!(log.stream_version("never").expect("reads"), 0);
}

#[tokio::test]
async fn a_subscription_delivers_catch_up_then_live_events_in_order_without_gaps_or_repeats() {
    let dir = temp_dir();
    let log = log_of(dir.path(), 700, 1).await;
    let mut subscription = log.subscribe(1);
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let log = log.clone();
            tokio::spawn(async move {
                for _ in 0..100 {
                    let stream = format!("live-{writer}");
                    log.append(append(&stream, ExpectedVersion::Any, vec![event("E", b""), event("F", b"")]))
                        .await
                        .expect("appends");
                }
            })
        })
        .collect();
    let total = 700 + 8 * 100 * 2;
    for expected in 1..=total {
        let event = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("arrives in time")
            .expect("reads");
        assert_eq!(event.position, expected);
    }
    for writer in writers {
        writer.await.expect("writer ends");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(50), subscription.next()).await.is_err(),
        "nothing beyond the head"
    );

    let mut late = log.subscribe(total - 1);
    assert_eq!(late.next().await.expect("reads").position, total - 1);
    assert_eq!(late.next().await.expect("reads").position, total);
}

/// A stream's version is its durable version whether the log answers it from
/// memory (streams appended since it was opened) or from the index (after a
/// reopen): never ahead of what a read of the stream returns, never going back,
/// and exact once the appends are over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_version_is_never_ahead_of_its_readable_events_and_survives_a_reopen() {
    const WRITERS: usize = 4;
    const APPENDS: u64 = 150;
    let dir = temp_dir();
    let log = log_of(dir.path(), 30, 3).await;
    assert_eq!(log.stream_version("s-0").expect("reads"), 10);

    let streams: Vec<String> = (0..WRITERS).map(|writer| format!("hot-{writer}")).chain(["shared".into()]).collect();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (log, streams, done) = (log.clone(), streams.clone(), std::sync::Arc::clone(&done));
        tokio::task::spawn_blocking(move || {
            let mut seen = vec![0; streams.len()];
            let mut rounds = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) && rounds < 100_000 {
                for (stream, seen) in streams.iter().zip(&mut seen) {
                    let version = log.stream_version(stream).expect("reads");
                    let readable = log.read_stream(stream, 1, usize::MAX).expect("reads").len() as u64;
                    assert!(version <= readable, "{stream}: version {version} with {readable} events readable");
                    assert!(version >= *seen, "{stream}: version went back from {seen} to {version}");
                    *seen = version;
                }
                rounds += 1;
            }
            rounds
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let log = log.clone();
            tokio::spawn(async move {
                for _ in 0..APPENDS {
                    let own = format!("hot-{writer}");
                    let both = vec![
                        (own.as_str(), ExpectedVersion::Any, vec![event("E", b"")]),
                        ("shared", ExpectedVersion::Any, vec![event("F", b""), event("G", b"")]),
                    ];
                    log.append(tests::append_many(both)).await.expect("appends");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer ends");
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    assert!(reader.await.expect("the reader ends") > 0, "the reader read while the writers wrote");
    for stream in &streams {
        let expected = if stream == "shared" { WRITERS as u64 * APPENDS * 2 } else { APPENDS };
        assert_eq!(log.stream_version(stream).expect("reads"), expected, "{stream}");
    }

    drop(log);
    let log = EventLog::open(dir.path()).expect("reopens");
    assert_eq!(log.stream_version("s-0").expect("reads"), 10);
    assert_eq!(log.stream_version("shared").expect("reads"), WRITERS as u64 * APPENDS * 2);
    assert_eq!(log.stream_version("never").expect("reads"), 0);
}

/// `next_scan` lends catch-up then live events in chunks, in order with no gap or
/// repeat, after what `next` read ahead; waits when there is nothing new; and
/// after its visitor's error goes on from the event the visitor refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_lends_chunks_in_order_after_what_next_read_and_after_a_visitors_error() {
    fn take(positions: &mut Vec<u64>, event: &store::EventRef<'_>, refuse: u64) -> Result<(), StoreError> {
        if event.position == refuse {
            return Err(StoreError::Unavailable { reason: format!("refused {refuse}") });
        }
        positions.push(event.position);
        Ok(())
    }
    const WAIT: Duration = Duration::from_secs(10);
    let dir = temp_dir();
    let log = log_of(dir.path(), 1200, 1).await;
    let mut subscription = log.subscribe(1);
    assert_eq!(subscription.next().await.expect("reads").position, 1);
    let mut positions = Vec::new();
    // `next` read a chunk ahead: those come first, then the log itself.
    while subscription.next_position() <= 1200 {
        let lent = subscription.next_scan(300, |event| take(&mut positions, &event, 0)).await.expect("lends");
        assert!((1..=300).contains(&lent), "{lent}");
    }
    assert_eq!(positions, (2..=1200).collect::<Vec<_>>());
    let waiting =
        tokio::time::timeout(Duration::from_millis(50), subscription.next_scan(10, |_| Ok::<(), StoreError>(()))).await;
    assert!(waiting.is_err(), "nothing beyond the head: it waits, and loses nothing when dropped");

    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            for _ in 0..50 {
                log.append(append("live", ExpectedVersion::Any, vec![event("E", b""), event("F", b"")]))
                    .await
                    .expect("appends");
            }
        })
    };
    // Live events arrive over several commits; a visitor refusing 1210 stops there.
    let refused = loop {
        let lent = tokio::time::timeout(WAIT, subscription.next_scan(1000, |event| take(&mut positions, &event, 1210)))
            .await
            .expect("arrives in time");
        if let Err(error) = lent {
            break error;
        }
    };
    assert_eq!(refused, StoreError::Unavailable { reason: "refused 1210".to_owned() });
    assert_eq!(subscription.next_position(), 1210, "it goes on from the refused event");
    while subscription.next_position() <= 1300 {
        tokio::time::timeout(WAIT, subscription.next_scan(1000, |event| take(&mut positions, &event, 0)))
            .await
            .expect("arrives in time")
            .expect("lends");
    }
    writer.await.expect("the writer ends");
    assert_eq!(positions, (2..=1300).collect::<Vec<_>>());
}

/// `next_stored` lends each record as stored: the bytes hold the record's hash
/// (the chain's link), a sealed payload stays sealed, the envelope fields are
/// those `read_all` returns; it reads again what `next` read ahead, and waits
/// for live appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_lends_records_as_stored_for_a_relay() {
    const WAIT: Duration = Duration::from_secs(10);
    let dir = temp_dir();
    let log = log_of(dir.path(), 20, 3).await;
    let subject = uuid::Uuid::new_v4();
    let secret = b"ada@example.com, who lives at 1 Secret Lane";
    log.append(append("customer-1", ExpectedVersion::Any, vec![tests::sealed_event("Registered", subject, secret)]))
        .await
        .expect("appends");
    let mut subscription = log.subscribe(1);
    assert_eq!(subscription.next().await.expect("reads").position, 1);
    let mut stored: Vec<(u64, String, u64, uuid::Uuid, String, Vec<u8>)> = Vec::new();
    while subscription.next_position() <= 21 {
        subscription
            .next_stored(8, |record| {
                stored.push((
                    record.position,
                    record.stream.to_owned(),
                    record.version,
                    record.event_id,
                    record.event_type.to_owned(),
                    record.bytes.to_vec(),
                ));
                Ok::<(), StoreError>(())
            })
            .await
            .expect("lends");
    }
    let read = log.read_all(1, 100).expect("reads");
    assert_eq!(stored.len(), 20, "what `next` read ahead is lent again, from position 2");
    for ((position, stream, version, event_id, event_type, bytes), event) in stored.iter().zip(&read[1..]) {
        assert_eq!(
            (*position, stream, *version, *event_id, event_type),
            (event.position, &event.stream, event.version, event.event_id, &event.event_type)
        );
        assert_eq!(bytes[0], 1, "the record's format byte");
        assert_eq!(bytes[1..33], event.hash, "the record's hash in the chain");
    }
    let sealed = &stored[19].5;
    assert!(!sealed.windows(secret.len()).any(|window| window == secret), "a sealed payload stays sealed");
    assert_eq!(read[20].payload, Payload::Plain(secret.to_vec()), "and reads back through the log's key");

    let waiting =
        tokio::time::timeout(Duration::from_millis(50), subscription.next_stored(10, |_| Ok::<(), StoreError>(())))
            .await;
    assert!(waiting.is_err(), "nothing beyond the head: it waits");
    let writer = {
        let log = log.clone();
        tokio::spawn(async move { log.append(append("live", ExpectedVersion::Any, vec![event("E", b"x")])).await })
    };
    let mut live = Vec::new();
    tokio::time::timeout(
        WAIT,
        subscription.next_stored(10, |record| {
            live.push(record.position);
            Ok::<(), StoreError>(())
        }),
    )
    .await
    .expect("arrives in time")
    .expect("lends");
    writer.await.expect("the writer ends").expect("appends");
    assert_eq!(live, vec![22]);
}

/// Version 1 of an event held a price in whole dollars; version 2 holds cents.
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct PriceV1 {
    dollars: u32,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct PriceV2 {
    cents: u64,
    currency: String,
}

fn price_v1_to_v2(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let old: PriceV1 = codec::decode(bytes).map_err(|error| error.to_string())?;
    codec::encode(&PriceV2 { cents: u64::from(old.dollars) * 100, currency: "USD".to_owned() })
        .map_err(|error| error.to_string())
}

#[tokio::test]
async fn old_schema_versions_are_upcast_on_read_and_the_chain_still_verifies() {
    let dir = temp_dir();
    let old = codec::encode(&PriceV1 { dollars: 12 }).expect("encodes");
    {
        let log = EventLog::open(dir.path()).expect("opens");
        log.append(append("product-x", ExpectedVersion::Any, vec![event("PriceSet", &old)])).await.expect("appends");
    }
    let options = Options { upcasters: Upcasters::new().register("PriceSet", 1, price_v1_to_v2), ..Options::default() };
    let log = EventLog::open_with(dir.path(), options).expect("reopens");
    let mut new =
        tests::event("PriceSet", &codec::encode(&PriceV2 { cents: 5, currency: "EUR".into() }).expect("encodes"));
    new.schema_version = 2;
    log.append(append("product-x", ExpectedVersion::Any, vec![new])).await.expect("appends");

    let events = log.read_stream("product-x", 1, 10).expect("reads");
    let prices: Vec<(u16, PriceV2)> = events
        .iter()
        .map(|event| {
            (event.schema_version, codec::decode(event.payload.bytes().expect("not sealed")).expect("decodes as v2"))
        })
        .collect();
    assert_eq!(
        prices,
        vec![(2, PriceV2 { cents: 1200, currency: "USD".into() }), (2, PriceV2 { cents: 5, currency: "EUR".into() })]
    );
    log.verify().expect("upcasting changes no stored byte");
}

/// Version 3 names the amount by what it holds and says whether tax is in it.
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct PriceV3 {
    amount_cents: u64,
    currency: String,
    tax_included: bool,
}

fn price_v2_to_v3(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let old: PriceV2 = codec::decode(bytes).map_err(|error| error.to_string())?;
    codec::encode(&PriceV3 { amount_cents: old.cents, currency: old.currency, tax_included: true })
        .map_err(|error| error.to_string())
}

fn price_event(schema_version: u16, payload: &[u8]) -> store::NewEvent {
    store::NewEvent { schema_version, ..event("PriceSet", payload) }
}

#[tokio::test]
async fn upcasters_chain_so_every_old_version_reads_as_the_newest() {
    let dir = temp_dir();
    // Registered newest step first: the order of registration does not matter.
    let upcasters = Upcasters::new().register("PriceSet", 2, price_v2_to_v3).register("PriceSet", 1, price_v1_to_v2);
    let log = EventLog::open_with(dir.path(), Options { upcasters, ..Options::default() }).expect("opens");
    let stored = [
        price_event(1, &codec::encode(&PriceV1 { dollars: 12 }).expect("encodes")),
        price_event(2, &codec::encode(&PriceV2 { cents: 5, currency: "EUR".into() }).expect("encodes")),
        price_event(
            3,
            &codec::encode(&PriceV3 { amount_cents: 7, currency: "GBP".into(), tax_included: false }).expect("encodes"),
        ),
    ];
    log.append(append("product-x", ExpectedVersion::Any, stored.to_vec())).await.expect("appends");

    let expected = vec![
        (3, PriceV3 { amount_cents: 1200, currency: "USD".into(), tax_included: true }),
        (3, PriceV3 { amount_cents: 5, currency: "EUR".into(), tax_included: true }),
        (3, PriceV3 { amount_cents: 7, currency: "GBP".into(), tax_included: false }),
    ];
    let decode = |events: Vec<store::RecordedEvent>| -> Vec<(u16, PriceV3)> {
        events
            .iter()
            .map(|event| {
                let payload = event.payload.bytes().expect("not sealed");
                (event.schema_version, codec::decode(payload).expect("decodes as v3"))
            })
            .collect()
    };
    assert_eq!(decode(log.read_stream("product-x", 1, 10).expect("reads")), expected);
    assert_eq!(decode(log.read_all(1, 10).expect("reads")), expected);
}

/// An upcaster that cannot read a stored payload makes that event unreadable: an
/// error that names its position, never a panic, and the events before it still read.
#[tokio::test]
async fn a_failing_upcaster_is_an_error_naming_the_position() {
    let dir = temp_dir();
    let options = Options { upcasters: Upcasters::new().register("PriceSet", 1, price_v1_to_v2), ..Options::default() };
    let log = EventLog::open_with(dir.path(), options).expect("opens");
    log.append(append("product-x", ExpectedVersion::Any, vec![event("Other", b"fine")])).await.expect("appends");
    // Not a PriceV1: the marker of a u64 varint, where `dollars` is a u32.
    log.append(append("product-x", ExpectedVersion::Any, vec![price_event(1, &[0xfd])])).await.expect("appends");

    for (read, what) in [
        (log.read_all(1, 10), "read_all"),
        (log.read_stream("product-x", 1, 10), "read_stream"),
        (log.read_all(2, 1), "read_all from the event"),
    ] {
        match read {
            Err(StoreError::Corrupt { position: 2, reason }) => {
                assert!(reason.contains("upcasting PriceSet v1"), "{what}: {reason}");
            }
            other => panic!("{what}: the upcaster's failure should name position 2, got {other:?}"),
        }
    }
    assert_eq!(log.read_all(1, 1).expect("the event before reads")[0].payload, Payload::Plain(b"fine".to_vec()));
    assert_eq!(log.verify().expect("the stored bytes are sound").events, 2);
}
