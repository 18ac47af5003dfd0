//! CPU time by thread name, for benchmarks: where a run's CPU went. Used by
//! the `tests` crate's benches and, by path, by `store`'s append bench.

use std::collections::BTreeMap;

/// CPU time so far of each of this process's threads, in seconds, summed by
/// thread name (Linux: `/proc/self/task/*/schedstat`; empty elsewhere). The
/// benchmark's own threads are named after it.
pub fn cpu_by_thread() -> BTreeMap<String, f64> {
    let mut seconds = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return seconds;
    };
    for task in tasks.flatten() {
        let read = |file: &str| std::fs::read_to_string(task.path().join(file)).ok();
        let (Some(name), Some(stat)) = (read("comm"), read("schedstat")) else { continue };
        let Some(nanos) = stat.split_whitespace().next().and_then(|field| field.parse::<u64>().ok()) else {
            continue;
        };
        // sled numbers its IO threads; the name without the number sums them.
        let name = name.trim().trim_end_matches(|c: char| c.is_ascii_digit()).to_owned();
        *seconds.entry(name).or_insert(0.0) += nanos as f64 / 1e9;
    }
    seconds
}

/// What each thread name spent between two [`cpu_by_thread`] readings, added to `into`.
pub fn add_cpu(into: &mut BTreeMap<String, f64>, before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) {
    for (name, seconds) in after {
        *into.entry(name.clone()).or_insert(0.0) += seconds - before.get(name).copied().unwrap_or(0.0);
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
