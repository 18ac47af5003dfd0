//! A child process for the projection crash test: it opens the log in `DIR`, runs
//! the projections over it and random shop commands (seeded by `SEED`) into it,
//! printing `ack <position>` for each command taken, until killed (bounded: 60 s
//! or 100,000 commands).
//!
//! `projecting_appender DIR SEED`

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use commands::CommandService;
use projections::Projections;
use store::EventLog;

#[path = "../../tests/projections/random.rs"]
mod random;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(seed)) = (args.get(1), args.get(2).and_then(|seed| seed.parse::<u64>().ok())) else {
        eprintln!("usage: projecting_appender DIR SEED");
        return ExitCode::from(2);
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
