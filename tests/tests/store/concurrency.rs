//! Many appenders at once: positions stay gap-free, versions stay gap-free, and
//! every optimistic-concurrency conflict is reported as one.

use std::collections::{BTreeMap, HashSet};

use rand::{Rng, SeedableRng};
use store::{EventLog, ExpectedVersion, StoreError};
use tests::{append, event, temp_dir};

const TASKS: usize = 64;
const APPENDS_PER_TASK: usize = 40;
const SHARED_STREAMS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_appenders_keep_positions_and_versions_gap_free() {
    let seed = tests::seed("concurrency");
    let dir = temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let log = log.clone();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ task as u64);
            tokio::spawn(async move {
                let mut successes = Vec::new();
                let mut conflicts = 0;
                for index in 0..APPENDS_PER_TASK {
                    let stream = if rng.random_bool(0.5) {
                        format!("shared-{}", rng.random_range(0..SHARED_STREAMS))
                    } else {
                        format!("own-{task}")
                    };
                    let current = log.stream_version(&stream).expect("reads");
                    let events = (0..rng.random_range(1..=3))
                        .map(|_| event("E", format!("{task}/{index}").as_bytes()))
                        .collect();
                    match log.append(append(&stream, ExpectedVersion::Exact(current), events)).await {
                        Ok(result) => successes.push((stream, current, result)),
                        Err(StoreError::WrongExpectedVersion { stream: named, expected, actual }) => {
                            assert_eq!(named, stream);
                            assert_eq!(expected, ExpectedVersion::Exact(current));
                            assert_ne!(actual, current, "a conflict must be real");
                            conflicts += 1;
                        }
                        Err(other) => panic!("unexpected error: {other}"),
                    }
                }
                (successes, conflicts)
            })
        })
        .collect();

    let mut successes = Vec::new();
    let mut conflicts = 0;
    for task in tasks {
        let (task_successes, task_conflicts) = task.await.expect("task ends");
        successes.extend(task_successes);
        conflicts += task_conflicts;
    }

    let events = log.read_all(1, usize::MAX).expect("reads");
    let written: u64 = successes.iter().map(|(_, _, result)| result.last_position - result.first_position + 1).sum();
    assert_eq!(events.iter().map(|event| event.position).collect::<Vec<_>>(), (1..=written).collect::<Vec<_>>());
    assert_eq!(log.head(), written);

    let mut versions: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for event in &events {
        versions.entry(&event.stream).or_default().push(event.version);
    }
    for (stream, stream_versions) in &versions {
        assert_eq!(*stream_versions, (1..=stream_versions.len() as u64).collect::<Vec<_>>(), "versions of {stream}");
    }

    // Each success continued exactly the version it expected, so no two appends
    // expecting the same version of a stream both succeeded.
    let mut claimed = HashSet::new();
    for (stream, expected, result) in &successes {
        let first = &events[(result.first_position - 1) as usize];
        assert_eq!((&first.stream, first.version), (stream, expected + 1));
        assert!(claimed.insert((stream.clone(), *expected)), "two successes expected {stream} at {expected}");
    }
    assert!(conflicts > 0, "the shared streams saw no contention; the test proves nothing");
    assert_eq!(successes.len() + conflicts, TASKS * APPENDS_PER_TASK);

    let stats = log.commit_stats();
    assert_eq!(stats.appends, successes.len() as u64);
    assert!(stats.batches < stats.appends, "appends were grouped into fewer fsyncs: {stats:?}");
    log.verify().expect("verifies");
}
