//! `shoplog replay` through the real binary: it rebuilds the read models of a
//! stopped server's data dir equal to what the live runtime built, one model or
//! all, up to a position or the head, and the runtime serves them on the next
//! start; every bad input is one line, exit code 2 and no change; and `shoplog
//! verify` checks the read models' checkpoints.

use std::path::Path;

use store::EventLog;

use super::{assert_refused, shoplog};
use crate::projections::replay::{Filled, appends, filled, runtime_state, served};

fn path(dir: &Path) -> &str {
    dir.to_str().expect("utf-8 path")
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn fill(test: &str, steps: usize) -> (tokio::runtime::Runtime, Filled) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let filled = runtime.block_on(filled(test, steps));
    (runtime, filled)
}

#[test]
fn replay_rebuilds_every_model_as_the_live_runtime_had_it_and_a_restart_serves_them() {
    let (runtime, filled) = fill("cli replay", 800);
    let data = path(filled.dir.path());
    let output = shoplog(&["replay", "--data", data]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let printed = stdout(&output);
    assert!(
        printed.starts_with(&format!(
            "replayed {} events into catalog (generation 2), carts (generation 2), orders (generation 2), \
             dashboard (generation 2) up to position {}",
            filled.head, filled.head
        )),
        "{printed}"
    );
    assert!(printed.contains(" events/s)"), "{printed}");

    let verified = shoplog(&["verify", "--data", data]);
    assert_eq!(verified.status.code(), Some(0), "{verified:?}");
    let head = filled.head;
    assert!(
        stdout(&verified).contains(&format!(
            "read models: catalog at {head} (generation 2), carts at {head} (generation 2), \
             orders at {head} (generation 2), dashboard at {head} (generation 2)"
        )),
        "{verified:?}"
    );

    let log = EventLog::open(filled.dir.path()).expect("opens");
    let (replayed, statuses) = runtime.block_on(served(&log));
    assert_eq!(replayed, filled.live);
    for status in statuses {
        assert_eq!((status.generation, status.checkpoint, status.failure), (2, head, None), "{}", status.name);
    }
}

#[test]
fn replay_of_one_projection_rebuilds_only_that_model() {
    let (runtime, filled) = fill("cli replay one projection", 400);
    let output = shoplog(&["replay", "--data", path(filled.dir.path()), "--projection", "catalog"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(stdout(&output).starts_with(&format!("replayed {} events into catalog (generation 2) up", filled.head)));

    let log = EventLog::open(filled.dir.path()).expect("opens");
    let (replayed, statuses) = runtime.block_on(served(&log));
    assert_eq!(replayed, filled.live);
    let generations: Vec<_> = statuses.iter().map(|status| (status.name, status.generation)).collect();
    assert_eq!(generations, vec![("catalog", 2), ("carts", 1), ("orders", 1), ("dashboard", 1)]);
}

#[test]
fn replay_to_a_position_stops_there_and_the_server_catches_up_when_it_starts() {
    let (runtime, filled) = fill("cli replay to a position", 400);
    // The end of an append about a third of the way in.
    let ends = appends(filled.dir.path()).into_iter().map(|(_, last)| last);
    let position = ends.take_while(|last| *last <= filled.head / 3).last().expect("an append ends early on");
    let output = shoplog(&["replay", "--data", path(filled.dir.path()), "--to-position", &position.to_string()]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let printed = stdout(&output);
    assert!(printed.contains(&format!("{position} events into catalog (generation 2)")), "{printed}");
    assert!(
        printed.contains(&format!(
            "the log's head is {}: the server applies positions {} to {} when it starts",
            filled.head,
            position + 1,
            filled.head
        )),
        "{printed}"
    );

    let log = EventLog::open(filled.dir.path()).expect("opens");
    for status in projections::checkpoints(&log).expect("reads") {
        assert_eq!((status.generation, status.checkpoint), (Some(2), position), "{}", status.name);
    }
    let (replayed, statuses) = runtime.block_on(served(&log));
    assert_eq!(replayed, filled.live);
    assert!(statuses.iter().all(|status| status.checkpoint == filled.head), "{statuses:?}");
}

#[test]
fn bad_replay_inputs_are_one_line_and_exit_code_2_and_change_nothing() {
    let (_runtime, filled) = fill("cli replay refused", 200);
    let data = path(filled.dir.path());
    let state = || {
        let log = EventLog::open(filled.dir.path()).expect("opens");
        runtime_state(&log)
    };
    let before = state();
    let past = (filled.head + 1).to_string();

    assert_refused(&shoplog(&["replay", "--data", "/no/such/dir"]), "does not exist");
    assert_refused(
        &shoplog(&["replay", "--data", data, "--projection", "nope"]),
        "no read model named nope (there are catalog, carts, orders, dashboard)",
    );
    assert_refused(
        &shoplog(&["replay", "--data", data, "--to-position", &past]),
        &format!("position {past} is past the log's head {}", filled.head),
    );
    assert_refused(&shoplog(&["replay", "--data", data, "--to-position", "soon"]), "soon");
    // Position 0 would empty every read model: it is refused, as restore refuses it.
    assert_refused(&shoplog(&["replay", "--data", data, "--to-position", "0"]), "'0' for '--to-position <P>'");
    // Inside one command's events (a checkout's order, reservations and cart):
    // the models would hold part of it.
    let (first, last) = appends(filled.dir.path()).into_iter().find(|(first, last)| last > first).expect("a checkout");
    let end_before = match first {
        1 => String::new(),
        _ => format!("{} or ", first - 1),
    };
    assert_refused(
        &shoplog(&["replay", "--data", data, "--to-position", &first.to_string()]),
        &format!(
            "position {first} splits the events one command appended together (positions {first} to {last}): \
             replay to {end_before}{last}"
        ),
    );
    let empty = tests::temp_dir();
    assert_refused(&shoplog(&["replay", "--data", path(empty.path())]), "holds no shoplog log");
    assert_eq!(std::fs::read_dir(empty.path()).expect("lists").count(), 0, "an empty dir stays empty");
    assert_eq!(state(), before);

    // A dir whose log is open elsewhere: sled's lock says a server runs on it.
    let log = EventLog::open(filled.dir.path()).expect("opens");
    assert_refused(&shoplog(&["replay", "--data", data]), "in use by a running server");
    assert_eq!(runtime_state(&log), before);
}

#[test]
fn verify_names_a_read_model_whose_checkpoint_is_past_the_head_and_exits_1() {
    let (_runtime, filled) = fill("cli verify checkpoints", 200);
    let bad = filled.head + 10;
    {
        let db = tests::raw_sled(filled.dir.path());
        let checkpoints = db.open_tree("x:checkpoints").expect("tree");
        assert!(checkpoints.contains_key("orders.g1").expect("reads"), "the runtime's checkpoint is there");
        checkpoints.insert("orders.g1", &bad.to_be_bytes()).expect("writes");
        db.flush().expect("flushes");
    }
    let output = shoplog(&["verify", "--data", path(filled.dir.path())]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(
        stdout(&output).trim_end(),
        format!(
            "read model orders is damaged: checkpoint {bad} is past the log's head {} (the log itself is sound)",
            filled.head
        ),
    );
}
