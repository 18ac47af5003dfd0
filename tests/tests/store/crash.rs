//! Real process death: a child appends and reports each acknowledged event; the
//! parent SIGKILLs it at a random moment, reopens the directory and checks that
//! every acknowledged event is there, at its position, and the log verifies.
//! `SHOPLOG_CRASH_ROUNDS=500` runs longer; `SHOPLOG_SEED` replays a run.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use store::EventLog;
use uuid::Uuid;

const CHILD: &str = env!("CARGO_BIN_EXE_crash_appender");

/// Every `ack <position> <event id>` line the child printed.
pub(crate) fn acks_of(lines: &[String]) -> Vec<(u64, Uuid)> {
    lines
        .iter()
        .filter_map(|line| {
            let mut words = line.strip_prefix("ack ")?.split(' ');
            let position = words.next()?.parse().ok()?;
            let event_id = words.next()?.parse().ok()?;
            Some((position, event_id))
        })
        .collect()
}

/// Read the child's stdout on a thread, line by line, until it closes.
fn collect_lines(child: &mut Child) -> (mpsc::Receiver<String>, std::thread::JoinHandle<()>) {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (sender, receiver) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    (receiver, reader)
}

/// Check that each acknowledged event is in the log at its position, and that the
/// whole log verifies.
pub(crate) fn assert_acks_survived(dir: &Path, acked: &[(u64, Uuid)]) -> u64 {
    let log = EventLog::open(dir).expect("the log reopens after the crash");
    let report = log.verify().expect("the log verifies after the crash");
    for (position, event_id) in acked {
        let events = log.read_all(*position, 1).expect("reads");
        let found =
            events.first().unwrap_or_else(|| panic!("acknowledged position {position} is gone (head {})", report.head));
        assert_eq!(found.event_id, *event_id, "acknowledged position {position} holds another event");
    }
    report.head
}

#[test]
fn acknowledged_appends_survive_sigkill_at_random_moments() {
    let seed = tests::seed("crash");
    let rounds: usize = std::env::var("SHOPLOG_CRASH_ROUNDS").ok().and_then(|rounds| rounds.parse().ok()).unwrap_or(20);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tests::temp_dir();
    let mut all_acked = Vec::new();
    let mut last_head = 0;
    for round in 0..rounds {
        let mut child = Command::new(CHILD)
            .arg(dir.path())
            .arg("run")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the child starts");
        let (lines, reader) = collect_lines(&mut child);
        // Let it get going (its first ack), then kill it at a random moment.
        let first = lines.recv_timeout(Duration::from_secs(20)).expect("the child acknowledges something");
        std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
        child.kill().expect("SIGKILL");
        child.wait().expect("the child is reaped");
        reader.join().expect("reader ends");
        let round_lines: Vec<String> = std::iter::once(first).chain(lines.try_iter()).collect();
        let acked = acks_of(&round_lines);
        assert!(!acked.is_empty(), "round {round}: no acks parsed from {round_lines:?}");
        all_acked.extend(acked);
        let head = assert_acks_survived(dir.path(), &all_acked);
        assert!(head >= last_head, "round {round}: the head went back from {last_head} to {head}");
        last_head = head;
    }
    assert!(all_acked.len() >= rounds, "every round acknowledged events");
}
