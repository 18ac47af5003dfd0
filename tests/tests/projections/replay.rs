//! Offline replay (`projections::replay`, behind `shoplog replay`): what it builds
//! equals what the live runtime built, whatever the page, batch and cache sizes;
//! a runtime started afterwards serves the new generations from their
//! checkpoints; refused replays write nothing; and the checkpoints that
//! `shoplog verify` checks.

use std::path::Path;

use commands::CommandService;
use projections::{Dump, ProjectionStatus, Projections, ReplayError, ReplayOptions};
use store::EventLog;
use tempfile::TempDir;

use super::WAIT;
use super::random::RandomShop;
use super::rebuild::{assert_same, dumps};

/// A data dir after random shop traffic with the runtime following it, closed
/// again, and what the live models held.
pub(crate) struct Filled {
    pub dir: TempDir,
    pub head: u64,
    pub live: Vec<(String, Dump)>,
}

/// Run `steps` random commands (with customers registered and forgotten) through
/// the command side while the runtime follows, then close everything.
/// The first and last positions of every append in the log in `dir` (its
/// events share their correlation id and time), in order.
pub(crate) fn appends(dir: &std::path::Path) -> Vec<(u64, u64)> {
    let log = EventLog::open(dir).expect("opens");
    let mut appends: Vec<(u64, u64)> = Vec::new();
    let mut last_key = None;
    for event in log.read_all(1, usize::MAX).expect("reads") {
        let key = Some((event.correlation_id, event.recorded_at));
        match appends.last_mut() {
            Some((_, last)) if key == last_key => *last = event.position,
            _ => appends.push((event.position, event.position)),
        }
        last_key = key;
    }
    appends
}

pub(crate) async fn filled(test: &str, steps: usize) -> Filled {
    let seed = tests::seed(test);
    let dir = tests::temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    let projections = Projections::start(log.clone()).expect("starts");
    let mut shop = RandomShop::new(CommandService::new(log.clone()).expect("builds"), seed, true);
    // Random commands are often refused, so a short run keeps going (bounded)
    // until the log holds enough events to be worth replaying.
    let mut taken = 0;
    while taken < steps || (log.head() <= 100 && taken < steps * 20) {
        shop.step().await;
        taken += 1;
    }
    let head = log.head();
    assert!(head > 100, "seed {seed}: only {head} events after {taken} commands");
    projections.wait_for(head, WAIT).await.expect("the live models catch up");
    let live = dumps(&projections);
    projections.shutdown().await;
    drop((shop, log));
    Filled { dir, head, live }
}

/// Start the runtime on `log` as a server would, let it reach the head, and
/// return what it serves and where each model stands.
pub(crate) async fn served(log: &EventLog) -> (Vec<(String, Dump)>, Vec<ProjectionStatus>) {
    let projections = Projections::start(log.clone()).expect("the runtime starts after a replay");
    projections.wait_for(log.head(), WAIT).await.expect("the models reach the head");
    let served = (dumps(&projections), projections.status());
    projections.shutdown().await;
    served
}

/// Every entry of the runtime's own trees and of both generations of every model:
/// what a refused replay must leave as it was.
pub(crate) fn runtime_state(log: &EventLog) -> Vec<(String, Dump)> {
    let mut names = vec!["projections".to_owned(), "checkpoints".to_owned()];
    for (model, _) in projections::MODELS {
        names.extend((1..=3).map(|generation| format!("{model}.g{generation}")));
    }
    names
        .into_iter()
        .map(|name| {
            let tree = log.open_tree(&name).expect("opens");
            let entries = tree.iter().map(|entry| entry.expect("reads")).map(|(k, v)| (k.to_vec(), v.to_vec()));
            (name, entries.collect())
        })
        .collect()
}

fn checkpoint_entry(log: &EventLog, tree_name: &str) -> Option<Vec<u8>> {
    log.open_tree("checkpoints").expect("opens").get(tree_name).expect("reads").map(|bytes| bytes.to_vec())
}

fn open_and_replay(dir: &Path, options: ReplayOptions) -> (EventLog, projections::ReplayReport, Vec<u64>) {
    let log = EventLog::open(dir).expect("opens");
    let mut progress = Vec::new();
    let report = projections::replay_with(&log, &options, &mut |done| progress.push(done)).expect("replays");
    (log, report, progress)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_equals_the_live_models_with_tiny_pages_batches_and_caches() {
    let filled = filled("replay with tiny batches", 1500).await;
    // Tiny pages, batches and caches go through every path: many batches, the
    // cache emptied again and again, records read back from sled.
    let options = ReplayOptions {
        page_len: 7,
        batch_records_max: 5,
        batch_events_max: 50,
        cache_len_max: 20,
        ..ReplayOptions::default()
    };
    let (log, report, progress) = open_and_replay(filled.dir.path(), options);
    assert_eq!((report.events, report.position, report.head), (filled.head, filled.head, filled.head));
    let generations: Vec<_> =
        report.models.iter().map(|model| (model.name, model.previous_generation, model.generation)).collect();
    assert_eq!(generations, vec![("catalog", 1, 2), ("carts", 1, 2), ("orders", 1, 2), ("dashboard", 1, 2)]);
    assert!(progress.windows(2).all(|pair| pair[0] <= pair[1]), "progress never goes back: {progress:?}");
    assert_eq!(progress.last(), Some(&filled.head));
    for (model, _) in projections::MODELS {
        assert!(!log.has_tree(&format!("{model}.g1")), "the old generation of {model} is dropped");
        assert_eq!(checkpoint_entry(&log, &format!("{model}.g1")), None);
        assert_eq!(checkpoint_entry(&log, &format!("{model}.g2")), Some(filled.head.to_be_bytes().to_vec()));
    }

    let (replayed, statuses) = served(&log).await;
    assert_same(&filled.live, &replayed);
    for status in statuses {
        assert_eq!((status.generation, status.checkpoint, status.failure), (2, filled.head, None), "{}", status.name);
    }

    // A second replay, of one model with the default sizes, moves it on a generation.
    let options = ReplayOptions { model: Some("dashboard".to_owned()), ..ReplayOptions::default() };
    let report = projections::replay_with(&log, &options, &mut |_| {}).expect("replays");
    assert_eq!(
        report.models.iter().map(|model| (model.name, model.generation)).collect::<Vec<_>>(),
        [("dashboard", 3)]
    );
    assert!(!log.has_tree("dashboard.g2"));
    let (replayed, statuses) = served(&log).await;
    assert_same(&filled.live, &replayed);
    let generations: Vec<_> = statuses.iter().map(|status| (status.name, status.generation)).collect();
    assert_eq!(generations, vec![("catalog", 2), ("carts", 2), ("orders", 2), ("dashboard", 3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_to_a_position_leaves_checkpoints_there_and_the_runtime_catches_up() {
    let filled = filled("replay to a position", 800).await;
    // The end of an append about half way: a replay never stops inside one.
    let ends = appends(filled.dir.path()).into_iter().map(|(_, last)| last);
    let position = ends.take_while(|last| *last <= filled.head / 2).last().expect("an append ends early on");
    let options = ReplayOptions { to_position: Some(position), page_len: 64, ..ReplayOptions::default() };
    let (log, report, _) = open_and_replay(filled.dir.path(), options);
    assert_eq!((report.events, report.position, report.head), (position, position, filled.head));
    for status in projections::checkpoints(&log).expect("reads") {
        assert_eq!(
            (status.generation, status.checkpoint, status.problem),
            (Some(2), position, None),
            "{}",
            status.name
        );
    }
    let (replayed, statuses) = served(&log).await;
    assert_same(&filled.live, &replayed);
    assert!(statuses.iter().all(|status| status.generation == 2 && status.checkpoint == filled.head));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_clears_what_a_crashed_replay_left_behind() {
    let filled = filled("replay after a crashed replay", 400).await;
    let log = EventLog::open(filled.dir.path()).expect("opens");
    // What a replay killed half way through leaves: generation 2 marked as being
    // built, part built, with its checkpoint.
    log.open_tree("projections").expect("opens").insert("catalog.building", &2u64.to_be_bytes()).expect("writes");
    log.open_tree("catalog.g2").expect("opens").insert("p:junk", b"junk".as_slice()).expect("writes");
    log.open_tree("checkpoints").expect("opens").insert("catalog.g2", &7u64.to_be_bytes()).expect("writes");

    let report = projections::replay(&log, Some("catalog"), None, &mut |_| {}).expect("replays");
    assert_eq!(report.models[0].generation, 2);
    assert_eq!(log.open_tree("projections").expect("opens").get("catalog.building").expect("reads"), None);
    let (replayed, _) = served(&log).await;
    assert_same(&filled.live, &replayed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_replay_writes_nothing() {
    let filled = filled("refused replays", 300).await;
    let log = EventLog::open(filled.dir.path()).expect("opens");
    let before = runtime_state(&log);
    let unknown = projections::replay(&log, Some("nope"), None, &mut |_| {}).expect_err("refused");
    assert_eq!(unknown.to_string(), "no read model named nope (there are catalog, carts, orders, dashboard)");
    let past = projections::replay(&log, None, Some(filled.head + 1), &mut |_| {}).expect_err("refused");
    assert_eq!(past, ReplayError::PastHead { to_position: filled.head + 1, head: filled.head });
    assert_eq!(past.to_string(), format!("position {} is past the log's head {}", filled.head + 1, filled.head));
    assert_eq!(runtime_state(&log), before);
}

#[tokio::test]
async fn checkpoints_name_a_model_past_the_head_or_with_a_damaged_entry() {
    let filled = filled("checkpoints for verify", 200).await;
    let log = EventLog::open(filled.dir.path()).expect("opens");
    let head = filled.head;
    for status in projections::checkpoints(&log).expect("reads") {
        assert_eq!((status.generation, status.checkpoint, status.problem), (Some(1), head, None), "{}", status.name);
    }
    let checkpoints = log.open_tree("checkpoints").expect("opens");
    checkpoints.insert("orders.g1", &(head + 3).to_be_bytes()).expect("writes");
    checkpoints.insert("carts.g1", b"bad".as_slice()).expect("writes");
    log.open_tree("projections").expect("opens").insert("dashboard", b"x".as_slice()).expect("writes");
    let problems: Vec<_> = projections::checkpoints(&log)
        .expect("reads")
        .into_iter()
        .map(|status| (status.name, status.checkpoint, status.problem))
        .collect();
    assert_eq!(
        problems,
        vec![
            ("catalog", head, None),
            ("carts", 0, Some("checkpoint of carts.g1 is not a u64".to_owned())),
            ("orders", head + 3, Some(format!("checkpoint {} is past the log's head {head}", head + 3))),
            ("dashboard", 0, Some("its active generation is not a u64".to_owned())),
        ]
    );
}

#[tokio::test]
async fn a_replay_of_an_empty_log_builds_empty_models_that_serve() {
    let dir = tests::temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    for status in projections::checkpoints(&log).expect("reads") {
        assert_eq!((status.generation, status.checkpoint, status.problem), (None, 0, None), "{}", status.name);
    }
    let report = projections::replay(&log, None, None, &mut |_| {}).expect("replays");
    assert_eq!((report.events, report.position, report.models.len()), (0, 0, 4));
    let (served, statuses) = served(&log).await;
    assert!(served.iter().all(|(_, dump)| dump.is_empty()));
    assert!(statuses.iter().all(|status| status.generation == 2 && status.failure.is_none()));
}
