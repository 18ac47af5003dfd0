//! A real SIGKILL in the middle of projecting: the child `projecting_appender`
//! runs random commands with the projections running; the parent kills it after
//! a random number of acknowledged commands, reopens the log, lets the models
//! catch up and compares them with a fresh rebuild; a second test does the same
//! while the child rebuilds every model over and over. `SHOPLOG_SEED` replays a run.

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
    let kills = kill_rounds(seed, false).await;
    // Rounds whose kill left some model behind the log (its checkpoint below the
    // head, or a batch's redo pending): what the test is about.
    assert!(kills.behind > 0, "seed {seed}: no kill caught the read models behind the log; the test proved nothing");
}

/// The same, with the child rebuilding every read model over and over: a kill
/// lands part way through a rebuild, at its switch, or between the switch and the
/// old generation's drop. Whatever it left, the next start serves one whole
/// generation of each model, and drops or empties the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_rebuilds_leaves_models_equal_to_a_fresh_rebuild() {
    let seed = tests::seed("projections crash during rebuilds");
    let kills = kill_rounds(seed, true).await;
    assert!(
        kills.mid_rebuild > 0,
        "seed {seed}: no kill left a generation beside the serving one; the test proved nothing"
    );
}

/// What the kills of a run caught.
struct Kills {
    /// Rounds whose kill left some model behind the log.
    behind: usize,
    /// Rounds whose kill left a generation beside a model's serving one: a
    /// rebuild under way, or switched in but the old generation not yet dropped.
    mid_rebuild: usize,
}

async fn kill_rounds(seed: u64, rebuilds: bool) -> Kills {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tests::temp_dir();
    let mut kills = Kills { behind: 0, mid_rebuild: 0 };
    for round in 0..ROUNDS {
        let mut child = Command::new(CHILD);
        child.arg(dir.path()).arg(rng.random::<u64>().to_string());
        if rebuilds {
            child.arg("rebuilds");
        }
        let mut child =
            tests::KillOnDrop(child.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("the child starts"));
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
        let (mut acked, mut rebuilds_started) = (0, 0);
        while acked < acks {
            let line = receiver.recv_timeout(Duration::from_secs(30)).expect("the child acknowledges commands");
            if line.starts_with("ack ") {
                acked += 1;
            } else if rebuilds && line.starts_with("rebuild ") {
                rebuilds_started += 1;
            } else {
                panic!("round {round}: {line}");
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("the child is reaped");
        reader.join().expect("the reader ends");
        assert!(!rebuilds || rebuilds_started > 0, "round {round}: the child started no rebuild");

        let log = EventLog::open(dir.path()).expect("the log reopens");
        let checkpoints = projections::checkpoints(&log).expect("reads the checkpoints");
        let redo_pending = log.own_trees().iter().any(|name| name == "projections.redo")
            && !log.open_tree("projections.redo").expect("opens").is_empty();
        if redo_pending || checkpoints.iter().any(|model| model.checkpoint < log.head()) {
            kills.behind += 1;
        }
        if !beside_the_serving_generations(&log, &checkpoints).is_empty() {
            kills.mid_rebuild += 1;
        }
        let projections = Projections::start(log.clone()).expect("the projections restart");
        let serving = projections::checkpoints(&log).expect("reads the checkpoints");
        for tree in beside_the_serving_generations(&log, &serving) {
            assert!(
                log.open_tree(&tree).expect("opens").is_empty(),
                "round {round}: {tree} is neither serving nor dropped after the restart"
            );
        }
        projections.wait_for(log.head(), WAIT).await.expect("the models catch up");
        let caught_up = dumps(&projections);
        rebuild_all(&projections).await;
        assert_same(&caught_up, &dumps(&projections));
        projections.shutdown().await;
        drop(log);
    }
    eprintln!(
        "projections crash: {ROUNDS} kills{}: {} caught a model behind the log, {} a generation beside a serving one",
        if rebuilds { " during rebuilds" } else { "" },
        kills.behind,
        kills.mid_rebuild
    );
    kills
}

/// The trees of read-model generations other than the serving ones.
fn beside_the_serving_generations(log: &EventLog, serving: &[projections::CheckpointStatus]) -> Vec<String> {
    let mut beside = Vec::new();
    for tree in log.own_trees() {
        for model in serving {
            let generation = tree.strip_prefix(model.name).and_then(|rest| rest.strip_prefix(".g"));
            if let Some(generation) = generation.and_then(|generation| generation.parse::<u64>().ok())
                && Some(generation) != model.generation
            {
                beside.push(tree.clone());
            }
        }
    }
    beside
}
