//! A child process for the projection crash test: it opens the log in `DIR`, runs
//! the projections over it and random shop commands (seeded by `SEED`) into it,
//! printing `ack <position>` for each command taken, until killed (bounded: 60 s
//! or 100,000 commands). With `rebuilds`, it also rebuilds every read model over
//! and over while it appends (a model's next rebuild starts once its last one has
//! switched in), printing `rebuild <model> <generation>` as each starts.
//!
//! `projecting_appender DIR SEED [rebuilds]`

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use commands::CommandService;
use projections::{ProjectionError, Projections};
use store::EventLog;

#[path = "../../tests/projections/random.rs"]
mod random;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(seed)) = (args.get(1), args.get(2).and_then(|seed| seed.parse::<u64>().ok())) else {
        eprintln!("usage: projecting_appender DIR SEED [rebuilds]");
        return ExitCode::from(2);
    };
    let rebuilds = match args.get(3).map(String::as_str) {
        None => false,
        Some("rebuilds") => true,
        Some(other) => {
            eprintln!("projecting_appender: unknown mode {other}; usage: projecting_appender DIR SEED [rebuilds]");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("projecting_appender: no runtime: {error}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async {
        let log = match EventLog::open(dir) {
            Ok(log) => log,
            Err(error) => {
                eprintln!("projecting_appender: {error}");
                return ExitCode::from(2);
            }
        };
        let (projections, service) = match (Projections::start(log.clone()), CommandService::new(log)) {
            (Ok(projections), Ok(service)) => (projections, service),
            (Err(error), _) => {
                eprintln!("projecting_appender: {error}");
                return ExitCode::from(2);
            }
            (_, Err(error)) => {
                eprintln!("projecting_appender: {error}");
                return ExitCode::from(2);
            }
        };
        let mut shop = random::RandomShop::new(service, seed, false);
        let started = Instant::now();
        let mut out = std::io::stdout();
        for _ in 0..100_000 {
            if started.elapsed() > Duration::from_secs(60) {
                break;
            }
            if rebuilds {
                for status in projections.status() {
                    if status.rebuild.is_none() {
                        match projections.rebuild(status.name) {
                            Ok(generation) => {
                                let _ = writeln!(out, "rebuild {} {generation}", status.name);
                            }
                            // Its last one had not quite finished: the next step tries again.
                            Err(ProjectionError::RebuildRunning { .. }) => {}
                            Err(error) => {
                                eprintln!("projecting_appender: {error}");
                                return ExitCode::FAILURE;
                            }
                        }
                    }
                }
            }
            if let Some(position) = shop.step().await {
                // The parent reads every line that made it out before the kill.
                let _ = writeln!(out, "ack {position}");
                let _ = out.flush();
            }
        }
        projections.shutdown().await;
        ExitCode::SUCCESS
    })
}
