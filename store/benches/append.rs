//! Appends per second, in one run on one machine (DESIGN §8 compares within a run):
//!
//! - group commit (the real writer) at 1 and 64 concurrent writers;
//! - flush-per-append: the same writer with batches of one, so every append pays
//!   its own flush and fdatasync, at 64 writers;
//! - sled's own no-flush insert rate for records of the same size, the ceiling;
//! - sled alone with a flush and an `fdatasync` of its file after every insert:
//!   what a store without a write-ahead log and without group commit pays;
//! - sled alone in batches of 64 inserts, each batch flushed and `fdatasync`ed:
//!   DESIGN §8's probe of bare group commit on sled, one thread, no waiting
//!   appenders (what a perfect group commit of 64 could do on sled).
//!
//! `cargo bench -p store --bench append` (add `-- --appends 50000` for a longer run).
//! Every phase is bounded in count and in time (20 s).
//!
//! The disk of a shared machine changes speed from one second to the next, so the
//! two 64-writer cases run in turn, five rounds each of a fifth of the appends:
//! each round's ratio compares phases seconds apart, and the median of the five
//! is the figure reported.

/// The `shoplog` binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// CPU time by thread, shared with the `tests` crate's benches.
#[path = "../../tests/src/thread_cpu.rs"]
mod thread_cpu;

use thread_cpu::{add_cpu, cpu_by_thread, print_cpu};

use store::{AppendRequest, EventLog, ExpectedVersion, Metadata, NewEvent, Options};
use uuid::Uuid;

const PHASE_TIME_MAX: Duration = Duration::from_secs(20);
const PAYLOAD_LEN: usize = 120;
/// A write-ahead log cap far below the default (16 MiB, some 50,000 appends), so that every round
/// pays for its checkpoints (a sled flush and fsync each) as a long run does. `--wal-kib N`
/// sets another (`--wal-kib 16384 --appends 1000000`: the default cap, in a run long
/// enough for its checkpoints).
const WAL_LEN_MAX: u64 = 512 * 1024;

fn request(writer: usize) -> AppendRequest {
    let correlation_id = Uuid::now_v7();
    AppendRequest::single(
        format!("cart-{writer}"),
        ExpectedVersion::Any,
        vec![NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "CartItemAdded".to_owned(),
            schema_version: 1,
            subject: None,
            payload: vec![7; PAYLOAD_LEN],
        }],
        Metadata { actor: "bench".to_owned(), correlation_id, causation_id: correlation_id },
    )
}

struct Measured {
    appends: u64,
    seconds: f64,
    batches: u64,
    checkpoints: u64,
    /// CPU seconds by thread name, while the log was open.
    cpu: BTreeMap<String, f64>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.appends as f64 / self.seconds
    }

    fn add(&mut self, round: &Measured) {
        self.appends += round.appends;
        self.seconds += round.seconds;
        self.batches += round.batches;
        self.checkpoints += round.checkpoints;
        for (name, seconds) in &round.cpu {
            *self.cpu.entry(name.clone()).or_insert(0.0) += seconds;
        }
    }
}

/// Rounds of the two 64-writer cases, run in turn.
const ROUNDS: usize = 5;

fn measure_log(
    runtime: &tokio::runtime::Runtime,
    writers: usize,
    appends: usize,
    batch_len_max: usize,
    wal_len_max: u64,
) -> Measured {
    let dir = tempfile::tempdir().expect("temp dir");
    let log =
        EventLog::open_with(dir.path(), Options { batch_len_max, wal_len_max, ..Options::default() }).expect("opens");
    let per_writer = appends.div_ceil(writers);
    let cpu_before = cpu_by_thread();
    let started = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..writers)
            .map(|writer| {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut done = 0u64;
                    for _ in 0..per_writer {
                        if started.elapsed() > PHASE_TIME_MAX {
                            break;
                        }
                        log.append(request(writer)).await.expect("appends");
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.expect("writer ends");
        }
        let seconds = started.elapsed().as_secs_f64();
        let stats = log.commit_stats();
        // Before the log is dropped: its threads' times go with them.
        let mut cpu = BTreeMap::new();
        add_cpu(&mut cpu, &cpu_before, &cpu_by_thread());
        Measured { appends: total, seconds, batches: stats.batches, checkpoints: stats.checkpoints, cpu }
    })
}

/// sled alone: the same number of records of the same size, inserted with no
/// flush at all. What no durable log can beat.
fn measure_sled_no_flush(writers: usize, appends: usize) -> Measured {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Arc::new(sled::Config::new().path(dir.path()).flush_every_ms(None).open().expect("opens"));
    let tree = db.open_tree("events").expect("tree");
    let record = vec![7u8; PAYLOAD_LEN + 110];
    let per_writer = appends.div_ceil(writers);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..writers.min(8) {
            let (tree, next, record) = (tree.clone(), Arc::clone(&next), record.clone());
            scope.spawn(move || {
                for _ in 0..per_writer * writers / writers.min(8) {
                    let position = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tree.insert(position.to_be_bytes(), record.as_slice()).expect("inserts");
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    Measured {
        appends: next.load(std::sync::atomic::Ordering::Relaxed) - 1,
        seconds,
        batches: 0,
        checkpoints: 0,
        cpu: BTreeMap::new(),
    }
}

/// sled alone, made durable the way DESIGN §3.1 describes (a flush, then an
/// `fdatasync` of sled's log file) after every `batch_len` inserts, one writer:
/// flush-per-append with 1; with 64, DESIGN §8's probe of bare group commit on
/// sled, with nothing else in the way.
fn measure_sled_durable(appends: usize, batch_len: u64) -> Measured {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sled::Config::new().path(dir.path()).flush_every_ms(None).open().expect("opens");
    let tree = db.open_tree("events").expect("tree");
    let file = std::fs::File::open(dir.path().join("db")).expect("sled's log file");
    let record = vec![7u8; PAYLOAD_LEN + 110];
    let started = Instant::now();
    let (mut done, mut batches) = (0u64, 0u64);
    while done < appends as u64 && started.elapsed() < PHASE_TIME_MAX {
        for _ in 0..batch_len {
            done += 1;
            tree.insert(done.to_be_bytes(), record.as_slice()).expect("inserts");
        }
        db.flush().expect("flushes");
        file.sync_data().expect("fdatasync");
        batches += 1;
    }
    Measured { appends: done, seconds: started.elapsed().as_secs_f64(), batches, checkpoints: 0, cpu: BTreeMap::new() }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| -> Option<u64> {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|index| args.get(index + 1))
            .and_then(|value| value.parse().ok())
    };
    let appends = flag("--appends").unwrap_or(20_000) as usize;
    let wal_len_max = flag("--wal-kib").map_or(WAL_LEN_MAX, |kib| kib * 1024);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");

    let one = measure_log(&runtime, 1, appends / 10, 1024, wal_len_max);
    let empty = || Measured { appends: 0, seconds: 0.0, batches: 0, checkpoints: 0, cpu: BTreeMap::new() };
    let (mut grouped, mut per_append) = (empty(), empty());
    let mut ratios = Vec::new();
    for _ in 0..ROUNDS {
        let round_grouped = measure_log(&runtime, 64, appends / ROUNDS, 1024, wal_len_max);
        let round_per_append = measure_log(&runtime, 64, appends / ROUNDS / 10, 1, wal_len_max);
        ratios.push(round_grouped.rate() / round_per_append.rate());
        grouped.add(&round_grouped);
        per_append.add(&round_per_append);
    }
    ratios.sort_by(f64::total_cmp);
    let sled = measure_sled_no_flush(64, appends);
    let sled_per_append = measure_sled_durable(appends / 10, 1);
    let sled_batches = measure_sled_durable(appends, 64);

    println!("| case | appends | seconds | appends/s | appends per fsync | checkpoints |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, measured) in [
        ("group commit, 1 writer", &one),
        ("group commit, 64 writers", &grouped),
        ("flush-per-append, 64 writers", &per_append),
    ] {
        println!(
            "| {name} | {} | {:.2} | {:.0} | {:.1} | {} |",
            measured.appends,
            measured.seconds,
            measured.rate(),
            measured.appends as f64 / measured.batches.max(1) as f64,
            measured.checkpoints
        );
    }
    println!(
        "| sled insert + flush + fdatasync per append, 1 writer | {} | {:.2} | {:.0} | 1.0 | - |",
        sled_per_append.appends,
        sled_per_append.seconds,
        sled_per_append.rate()
    );
    println!(
        "| sled batches of 64 inserts + flush + fdatasync, 1 writer | {} | {:.2} | {:.0} | 64.0 | - |",
        sled_batches.appends,
        sled_batches.seconds,
        sled_batches.rate()
    );
    println!(
        "| sled insert, no flush (ceiling) | {} | {:.2} | {:.0} | - | - |",
        sled.appends,
        sled.seconds,
        sled.rate()
    );
    println!();
    let shown: Vec<String> = ratios.iter().map(|ratio| format!("{ratio:.1}")).collect();
    println!(
        "group commit / flush-per-append at 64 writers: median {:.1}x of rounds [{}]; {:.1}x over all (target >= 20x)",
        ratios[ratios.len() / 2],
        shown.join(", "),
        grouped.rate() / per_append.rate()
    );
    println!("group commit / sled flush + fdatasync per append: {:.1}x", grouped.rate() / sled_per_append.rate());
    println!("group commit / sled no-flush: {:.0} % (target >= 70 %)", 100.0 * grouped.rate() / sled.rate());
    println!(
        "sled batches of 64 + flush + fdatasync / sled no-flush: {:.0} % (DESIGN §8's bare group commit probe); \
         group commit / sled batches of 64: {:.0} %",
        100.0 * sled_batches.rate() / sled.rate(),
        100.0 * grouped.rate() / sled_batches.rate()
    );
    println!();
    println!("CPU time of group commit at 64 writers, by thread ({:.2} s of wall time):", grouped.seconds);
    print_cpu(&grouped.cpu, grouped.appends, "append");
}
