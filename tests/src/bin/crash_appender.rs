//! A child process for the crash and fault tests: it appends to the log in `DIR`
//! from several tasks and prints one line per outcome, flushed before it goes on:
//! `ack <position> <event id>` for every event of an acknowledged append, and
//! `err <kind> <message>` for a refused one.
//!
//! `crash_appender DIR run [WAL_KIB]`: appends until killed (bounded: 60 s or
//! 200,000 appends), with the write-ahead log capped at `WAL_KIB` KiB if given
//! (a small cap makes checkpoints frequent).
//! `crash_appender DIR fault [WAL_KIB]`: 8 tasks × 50 appends, then one more append
//! (`after ok|err …`), the counts of answers (`answered <ok> <err>`), the writer's
//! committed batches and appends (`stats <batches> <appends>`) and the log's
//! failure (`failure …`), then forgets a subject it sealed data of (`forget ok`
//! or `forget err <kind>`); exits 0.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use store::{AppendResult, EventLog, ExpectedVersion, StoreError};
use tests::{append, append_many, event, sealed_event};
use tokio::sync::Mutex;
use uuid::Uuid;

const TASKS: usize = 8;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(mode)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: crash_appender DIR run|fault [WAL_KIB]");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("crash_appender: no runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let mut options = store::Options::default();
    if let Some(kib) = args.get(3) {
        match kib.parse::<u64>() {
            Ok(kib) => options.wal_len_max = kib * 1024,
            Err(error) => {
                eprintln!("crash_appender: WAL_KIB {kib:?}: {error}");
                return ExitCode::from(2);
            }
        }
    }
    let log = match EventLog::open_with(dir, options) {
        Ok(log) => log,
        Err(error) => {
            eprintln!("crash_appender: {error}");
            return ExitCode::from(2);
        }
    };
    let (appends_per_task, deadline) = match mode.as_str() {
        "run" => (200_000 / TASKS, Duration::from_secs(60)),
        "fault" => (50, Duration::from_secs(60)),
        _ => {
            eprintln!("crash_appender: unknown mode {mode}");
            return ExitCode::from(2);
        }
    };
    let fault = mode == "fault";
    runtime.block_on(async {
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let answered = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let started = Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let (log, out, answered) = (log.clone(), Arc::clone(&out), Arc::clone(&answered));
                tokio::spawn(async move {
                    for index in 0..appends_per_task {
                        if started.elapsed() > deadline {
                            break;
                        }
                        let outcome = append_something(&log, task, index).await;
                        answered[usize::from(outcome.is_err())].fetch_add(1, Ordering::Relaxed);
                        report(&out, outcome).await;
                        if fault {
                            // Refused at staging, whatever its batch's fsync does: it
                            // wrote nothing, and is answered as refused.
                            let never = append(
                                &format!("conflict-{task}"),
                                ExpectedVersion::Exact(1_000_000),
                                vec![event("E", b"")],
                            );
                            let refused = log.append(never).await;
                            let line = match refused {
                                Ok(_) => "conflict ok\n".to_owned(),
                                Err(error) => format!("conflict {}\n", kind(&error)),
                            };
                            let _ = out.lock().await.write_all(line.as_bytes());
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            if task.await.is_err() {
                eprintln!("crash_appender: a task panicked");
            }
        }
        if mode == "fault" {
            let after = append_something(&log, TASKS, 0).await;
            let line = match after {
                Ok(_) => "after ok".to_owned(),
                Err(error) => format!("after err {}", kind(&error)),
            };
            let stats = log.commit_stats();
            let mut out = out.lock().await;
            let _ = writeln!(out, "{line}");
            let _ = writeln!(
                out,
                "answered {} {}",
                answered[0].load(Ordering::Relaxed),
                answered[1].load(Ordering::Relaxed)
            );
            let _ = writeln!(out, "stats {} {}", stats.batches, stats.appends);
            let _ = writeln!(out, "failure {}", log.failure().unwrap_or_else(|| "none".to_owned()));
            let _ = out.flush();
            drop(out);
            let line = match forget_one(&log).await {
                Ok(()) => "forget ok".to_owned(),
                Err(error) => format!("forget err {}", kind(&error)),
            };
            let mut out = std::io::stdout();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    });
    ExitCode::SUCCESS
}

/// Seal an event under a new subject, then forget the subject.
async fn forget_one(log: &EventLog) -> Result<(), StoreError> {
    let subject = Uuid::now_v7();
    log.append(append("person-1", ExpectedVersion::Any, vec![sealed_event("E", subject, b"personal")])).await?;
    log.forget(subject, append("person-1", ExpectedVersion::Any, vec![event("Forgotten", b"")])).await?;
    Ok(())
}

/// A mix of appends: single events, sealed personal data, and atomic appends to
/// three streams at once.
async fn append_something(log: &EventLog, task: usize, index: usize) -> Result<(AppendResult, Vec<Uuid>), StoreError> {
    let payload = format!("{task}/{index}");
    let request = match index % 3 {
        0 => append(&format!("task-{task}"), ExpectedVersion::Any, vec![event("E", payload.as_bytes())]),
        1 => {
            let subject = Uuid::now_v7();
            append(
                &format!("customer-{subject}"),
                ExpectedVersion::NoStream,
                vec![sealed_event("CustomerRegistered", subject, payload.as_bytes())],
            )
        }
        _ => append_many(vec![
            (
                &format!("order-{task}-{index}"),
                ExpectedVersion::NoStream,
                vec![event("OrderPlaced", payload.as_bytes())],
            ),
            ("product-shared", ExpectedVersion::Any, vec![event("StockReserved", payload.as_bytes())]),
            (&format!("cart-{task}"), ExpectedVersion::Any, vec![event("CartCheckedOut", payload.as_bytes())]),
        ]),
    };
    let event_ids =
        request.streams.iter().flat_map(|stream| stream.events.iter().map(|event| event.event_id)).collect();
    log.append(request).await.map(|result| (result, event_ids))
}

async fn report(out: &Mutex<std::io::Stdout>, outcome: Result<(AppendResult, Vec<Uuid>), StoreError>) {
    let mut text = String::new();
    match outcome {
        Ok((result, event_ids)) => {
            for (position, event_id) in (result.first_position..=result.last_position).zip(event_ids) {
                text.push_str(&format!("ack {position} {event_id}\n"));
            }
        }
        Err(error) => text.push_str(&format!("err {} {error}\n", kind(&error))),
    }
    let mut out = out.lock().await;
    // The parent reads every line that made it out before the kill; a broken pipe
    // only means the parent stopped listening.
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn kind(error: &StoreError) -> &'static str {
    match error {
        StoreError::Durability { .. } => "durability",
        StoreError::Unavailable { .. } => "unavailable",
        StoreError::WrongExpectedVersion { .. } => "conflict",
        _ => "other",
    }
}
