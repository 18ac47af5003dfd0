//! CPU time by thread name, for benchmarks: where a run's CPU went. Used by
//! the `tests` crate's benches and, by path, by `store`'s append bench.

use std::collections::BTreeMap;

/// The CPU time so far of each of this process's threads, and of the process.
#[derive(Debug, Default)]
pub struct CpuReading {
    /// Thread id → (name, seconds).
    threads: BTreeMap<String, (String, f64)>,
    /// The whole process, threads that have ended included.
    process: f64,
}

/// Read the CPU time of this process and of each of its threads (Linux:
/// `/proc/self/task/*/schedstat` and `/proc/self/stat`; empty elsewhere). The
/// benchmark's own threads are named after it.
pub fn cpu_by_thread() -> CpuReading {
    let mut reading = CpuReading::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields 14 and 15 (after the name in parentheses): user and system
        // time in clock ticks, which Linux reports at 100 a second.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let ticks: Vec<u64> = after_name.split_whitespace().skip(11).take(2).filter_map(|f| f.parse().ok()).collect();
        reading.process = ticks.iter().sum::<u64>() as f64 / 100.0;
    }
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return reading;
    };
    for task in tasks.flatten() {
        let read = |file: &str| std::fs::read_to_string(task.path().join(file)).ok();
        let (Some(name), Some(stat)) = (read("comm"), read("schedstat")) else { continue };
        let Some(nanos) = stat.split_whitespace().next().and_then(|field| field.parse::<u64>().ok()) else {
            continue;
        };
        // sled numbers its IO threads; the name without the number sums them.
        let name = name.trim().trim_end_matches(|c: char| c.is_ascii_digit()).to_owned();
        let id = task.file_name().to_string_lossy().into_owned();
        reading.threads.insert(id, (name, nanos as f64 / 1e9));
    }
    reading
}

/// What the process's threads spent between two readings, by thread name,
/// added to `into`. Each thread counts from its own reading before (or from
/// zero, if it began after it). A thread that ended between the readings is
/// gone from the second one, so what it spent is added under "(threads that
/// ended)": the process's time less the threads' (a tokio blocking thread
/// ends after 10 idle seconds, so a thread name summed before and after would
/// lose everything such a thread ever spent).
pub fn add_cpu(into: &mut BTreeMap<String, f64>, before: &CpuReading, after: &CpuReading) {
    let mut threads = 0.0;
    for (id, (name, seconds)) in &after.threads {
        let spent = seconds - before.threads.get(id).map_or(0.0, |(_, seconds)| *seconds);
        threads += spent;
        *into.entry(name.clone()).or_insert(0.0) += spent;
    }
    // The process's time is counted in 10 ms ticks: under two, no thread ended.
    let ended = after.process - before.process - threads;
    if ended > 0.02 {
        *into.entry("(threads that ended)".to_owned()).or_insert(0.0) += ended;
    }
}

/// Print `cpu` as a table: each thread name's CPU seconds and microseconds per
/// one of `count` `unit`s (names that spent under half a millisecond left out).
pub fn print_cpu(cpu: &BTreeMap<String, f64>, count: u64, unit: &str) {
    println!("| thread | CPU seconds | µs per {unit} |");
    println!("|---|---:|---:|");
    let per = |seconds: f64| 1e6 * seconds / count.max(1) as f64;
    let mut total = 0.0;
    for (name, seconds) in cpu.iter().filter(|(_, seconds)| **seconds > 0.0005) {
        total += seconds;
        println!("| {name} | {seconds:.3} | {:.2} |", per(*seconds));
    }
    println!("| all | {total:.3} | {:.2} |", per(total));
}
