//! Verify, backup and restore rates against the disk's sequential bandwidth, in one
//! run on one machine (issue 6 asks for the ratio):
//!
//! - fill a log with `--events` events (default 200,000, 200-byte payloads, every
//!   tenth one sealed under a subject), in appends of 100 events;
//! - the disk: write a file of the backup's size in 1 MiB chunks and fsync it
//!   (sequential write), then read it back (sequential read, from the page cache
//!   like the log's own reads in this run);
//! - `verify()` over the whole log; `backup()` to a file, fsynced; `check_backup`
//!   and `restore_backup` of that file.
//!
//! `cargo bench -p store --bench backup` (add `-- --events 1000000` for a longer run,
//! `-- --cache-mib 64` for another sled page cache; RSS is printed after the fill and
//! after verify and backup).

/// The `shoplog` binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{Read, Write};
use std::time::Instant;

use store::{AppendRequest, EventLog, ExpectedVersion, Metadata, NewEvent, RestoreTo};
use uuid::Uuid;

const PAYLOAD_LEN: usize = 200;
const EVENTS_PER_APPEND: usize = 100;

/// The value after `--name` on the command line.
fn arg(name: &str) -> Option<u64> {
    std::env::args().skip_while(|arg| arg != name).nth(1).and_then(|value| value.parse().ok())
}

/// This process's resident set, in MiB.
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next().and_then(|kib| kib.parse::<u64>().ok()));
    kib.unwrap_or(0) / 1024
}

fn main() {
    let events = arg("--events").unwrap_or(200_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");

    let mut options = store::Options::default();
    if let Some(cache_mib) = arg("--cache-mib") {
        options.cache_capacity_bytes = cache_mib * 1024 * 1024;
    }
    println!("sled cache capacity: {} MiB", options.cache_capacity_bytes / 1024 / 1024);
    let log = EventLog::open_with(dir.path().join("log"), options).expect("opens");
    let started = Instant::now();
    runtime.block_on(async {
        let mut appended = 0;
        while appended < events {
            let count = EVENTS_PER_APPEND.min((events - appended) as usize);
            let correlation_id = Uuid::now_v7();
            let subject = Uuid::from_u128(u128::from(appended / 1000));
            let new_events = (0..count)
                .map(|index| NewEvent {
                    event_id: Uuid::now_v7(),
                    event_type: "Bench".to_owned(),
                    schema_version: 1,
                    subject: (index % 10 == 0).then_some(subject),
                    payload: vec![index as u8; PAYLOAD_LEN],
                })
                .collect();
            let request = AppendRequest::single(
                format!("bench-{}", appended % 1000),
                ExpectedVersion::Any,
                new_events,
                Metadata { actor: "bench".to_owned(), correlation_id, causation_id: correlation_id },
            );
            log.append(request).await.expect("appends");
            appended += count as u64;
        }
    });
    println!("filled {events} events in {:.1} s; RSS {} MiB", started.elapsed().as_secs_f64(), rss_mib());

    let started = Instant::now();
    let report = log.verify().expect("verifies");
    let verify_seconds = started.elapsed().as_secs_f64();
    println!("after verify: RSS {} MiB", rss_mib());
    assert_eq!(report.events, events);

    let backup_path = dir.path().join("bench.backup");
    let started = Instant::now();
    let file = std::fs::File::create(&backup_path).expect("creates");
    let summary = log.backup(&file, &mut |_| {}).expect("backs up");
    file.sync_all().expect("fsyncs");
    let backup_seconds = started.elapsed().as_secs_f64();
    let bytes = summary.bytes;
    println!("after backup: RSS {} MiB", rss_mib());
    drop(log);

    let started = Instant::now();
    store::check_backup(std::fs::File::open(&backup_path).expect("opens"), &mut |_| {}).expect("sound");
    let check_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    store::restore_backup(
        std::fs::File::open(&backup_path).expect("opens"),
        &dir.path().join("restored"),
        RestoreTo::End,
        &mut |_| {},
    )
    .expect("restores");
    let restore_seconds = started.elapsed().as_secs_f64();

    // The disk, with a file of the same size.
    let probe = dir.path().join("probe");
    let chunk = vec![0x5a; 1 << 20];
    let started = Instant::now();
    let mut file = std::fs::File::create(&probe).expect("creates");
    let mut written = 0;
    while written < bytes {
        file.write_all(&chunk).expect("writes");
        written += chunk.len() as u64;
    }
    file.sync_all().expect("fsyncs");
    let write_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut file = std::fs::File::open(&probe).expect("opens");
    let mut buffer = vec![0; 1 << 20];
    let mut read = 0;
    loop {
        let len = file.read(&mut buffer).expect("reads");
        if len == 0 {
            break;
        }
        read += len as u64;
    }
    let read_seconds = started.elapsed().as_secs_f64();

    let mib = |bytes: u64, seconds: f64| bytes as f64 / (1024.0 * 1024.0) / seconds;
    let disk_write = mib(written, write_seconds);
    let disk_read = mib(read, read_seconds);
    println!("backup file: {bytes} bytes for {events} events");
    println!("disk sequential write + fsync: {disk_write:.0} MiB/s; sequential read: {disk_read:.0} MiB/s");
    for (what, seconds, baseline, baseline_name) in [
        ("verify", verify_seconds, disk_read, "read"),
        ("backup (+ fsync)", backup_seconds, disk_write, "write"),
        ("check backup", check_seconds, disk_read, "read"),
        ("restore", restore_seconds, disk_write, "write"),
    ] {
        let rate = mib(bytes, seconds);
        println!(
            "{what}: {:.0} events/s, {rate:.0} MiB/s = {:.0} % of sequential {baseline_name}",
            events as f64 / seconds,
            100.0 * rate / baseline
        );
    }
}
