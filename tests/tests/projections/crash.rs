//! A real SIGKILL in the middle of projecting: the child `projecting_appender`
//! runs random commands with the projections running; the parent kills it after
//! a random number of acknowledged commands, reopens the log, lets the models
//! catch up and compares them with a fresh rebuild. `SHOPLOG_SEED` replays a run.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use projections::Projections;
use rand::{Rng, SeedableRng};
use store::EventLog;

use super::WAIT;
use super::rebuild::{assert_same, dumps, rebuild_all};

const CHILD: &str = env!("CARGO_BIN_EXE_projecting_appender");
const ROUNDS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_projecting_leaves_models_equal_to_a_fresh_rebuild() {
    let seed = tests::seed("projections crash");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tests::temp_dir();
    // Rounds whose kill left some model behind the log (its checkpoint below the
    // head, or a batch's redo pending): what the test is about.
    let mut killed_behind = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(CHILD)
            .arg(dir.path())
            .arg(rng.random::<u64>().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the child starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (lines, receiver) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill it after a random number of acknowledged commands: the projections
        // are busy with the ones before.
        let acks = rng.random_range(50..400);
        for _ in 0..acks {
            let line = receiver.recv_timeout(Duration::from_secs(30)).expect("the child acknowledges commands");
            assert!(line.starts_with("ack "), "round {round}: {line}");
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("the child is reaped");
        reader.join().expect("the reader ends");

        let log = EventLog::open(dir.path()).expect("the log reopens");
        let checkpoints = projections::checkpoints(&log).expect("reads the checkpoints");
        let redo_pending = log.own_trees().iter().any(|name| name == "projections.redo")
            && !log.open_tree("projections.redo").expect("opens").is_empty();
        if redo_pending || checkpoints.iter().any(|model| model.checkpoint < log.head()) {
            killed_behind += 1;
        }
        let projections = Projections::start(log.clone()).expect("the projections restart");
        projections.wait_for(log.head(), WAIT).await.expect("the models catch up");
        let caught_up = dumps(&projections);
        rebuild_all(&projections).await;
        assert_same(&caught_up, &dumps(&projections));
        projections.shutdown().await;
        drop(log);
    }
    assert!(killed_behind > 0, "seed {seed}: no kill caught the read models behind the log; the test proved nothing");
}
