//! Rebuilds: a rebuilt model equals the live one after thousands of random
//! commands, and a rebuild runs while the old generation keeps answering.

use std::time::Duration;

use commands::CommandService;
use projections::{Dump, Options, ProjectionError, Projections};
use store::EventLog;

use super::WAIT;
use super::random::RandomShop;

/// Every model's records, by name.
pub(crate) fn dumps(projections: &Projections) -> Vec<(String, Dump)> {
    let models = [
        projections.catalog().dump(),
        projections.carts().dump(),
        projections.orders().dump(),
        projections.dashboard().dump(),
    ];
    projections.names().iter().zip(models).map(|(name, dump)| (name.to_string(), dump.expect("dumps").value)).collect()
}

/// Rebuild every model and wait until the new generations serve.
pub(crate) async fn rebuild_all(projections: &Projections) {
    let mut generations = Vec::new();
    for name in projections.names() {
        generations.push(projections.rebuild(name).expect("a rebuild starts"));
    }
    let handles = [
        projections.catalog().wait_for_generation(generations[0], WAIT * 6).await,
        projections.carts().wait_for_generation(generations[1], WAIT * 6).await,
        projections.orders().wait_for_generation(generations[2], WAIT * 6).await,
        projections.dashboard().wait_for_generation(generations[3], WAIT * 6).await,
    ];
    for handle in handles {
        handle.expect("the rebuilt generation serves");
    }
}

pub(crate) fn assert_same(live: &[(String, Dump)], rebuilt: &[(String, Dump)]) {
    let names = |dumps: &[(String, Dump)]| dumps.iter().map(|(name, _)| name.clone()).collect::<Vec<_>>();
    assert_eq!(names(live), ["catalog", "carts", "orders", "dashboard"], "every model is compared");
    assert_eq!(names(rebuilt), names(live), "the same models on both sides");
    for ((name, live), (_, rebuilt)) in live.iter().zip(rebuilt) {
        assert!(!live.is_empty() || name == "carts", "the {name} model is empty");
        assert_eq!(live.len(), rebuilt.len(), "{name}: {} records live, {} rebuilt", live.len(), rebuilt.len());
        for (index, (live, rebuilt)) in live.iter().zip(rebuilt).enumerate() {
            assert_eq!(live, rebuilt, "{name}: record {index} differs");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_model_equals_the_live_one_after_thousands_of_random_commands() {
    let seed = tests::seed("projections rebuild");
    let dir = tests::temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    let projections = Projections::start(log.clone()).expect("starts");
    let mut shop = RandomShop::new(CommandService::new(log.clone()).expect("builds"), seed, true);
    let mut taken = 0;
    for _ in 0..3000 {
        taken += usize::from(shop.step().await.is_some());
    }
    assert!(taken > 1000, "seed {seed}: only {taken} commands were taken");
    projections.wait_for(log.head(), WAIT).await.expect("the live models catch up");
    let live = dumps(&projections);
    rebuild_all(&projections).await;
    let rebuilt = dumps(&projections);
    assert_same(&live, &rebuilt);
    for status in projections.status() {
        assert_eq!(
            (status.generation, status.lag, status.rebuild, status.failure.as_deref()),
            (2, 0, None, None),
            "{status:?}"
        );
    }
    projections.shutdown().await;
}

/// A log after 800 random commands, with its models caught up, under a runtime
/// whose rebuilds pause between batches of 32 events, and wait after each at a
/// gate (open until a test closes it), so that a test sees them part way.
struct Paced {
    _dir: tempfile::TempDir,
    seed: u64,
    log: EventLog,
    options: Options,
    projections: Projections,
    shop: RandomShop,
    gate: projections::RebuildGate,
}

async fn paced(name: &str, pause: Duration) -> Paced {
    let seed = tests::seed(name);
    let dir = tests::temp_dir();
    let log = EventLog::open(dir.path()).expect("opens");
    let gate = projections::RebuildGate::closed();
    gate.open();
    let options = Options { batch_len_max: 32, rebuild_batch_pause: Some(pause), rebuild_gate: Some(gate.clone()) };
    let projections = Projections::start_with(log.clone(), options.clone()).expect("starts");
    let mut shop = RandomShop::new(CommandService::new(log.clone()).expect("builds"), seed, false);
    for _ in 0..800 {
        shop.step().await;
    }
    projections.wait_for(log.head(), WAIT).await.expect("the live models catch up");
    Paced { _dir: dir, seed, log, options, projections, shop, gate }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_answer_from_the_old_generation_until_the_rebuild_has_caught_up() {
    let Paced { _dir, seed, log, projections, mut shop, gate, .. } =
        paced("projections rebuild while serving", Duration::from_millis(2)).await;
    let head = log.head();
    let dashboard = projections.dashboard();
    let before = dashboard.sales().expect("queries");
    let records_before = dashboard.dump().expect("dumps").value;

    gate.close();
    let generation = projections.rebuild("dashboard").expect("a rebuild starts");
    assert_eq!(generation, 2);
    assert!(matches!(projections.rebuild("dashboard"), Err(projections::ProjectionError::RebuildRunning { .. })));
    // Held at the gate after its first batch: part way, whatever the pace.
    let rebuild_checkpoint = || {
        let status = projections.status().into_iter().find(|status| status.name == "dashboard").expect("listed");
        status.rebuild.map(|rebuild| rebuild.checkpoint).unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + WAIT * 6;
    while rebuild_checkpoint() == 0 {
        assert!(std::time::Instant::now() < deadline, "seed {seed}: the rebuild applied no batch");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(rebuild_checkpoint() < head, "seed {seed}: the rebuild is part way");
    assert_eq!(dashboard.generation(), 1, "the old generation serves while the rebuild is held");
    assert_eq!(dashboard.sales().expect("queries during the rebuild"), before, "the old generation, unchanged");
    gate.open();
    let deadline = std::time::Instant::now() + WAIT * 6;
    while dashboard.generation() == 1 {
        assert!(std::time::Instant::now() < deadline, "seed {seed}: the rebuild never switched");
        let status = projections.status().into_iter().find(|status| status.name == "dashboard").expect("listed");
        let answer = dashboard.sales().expect("queries during the rebuild");
        if dashboard.generation() == 1 {
            assert_eq!(answer, before, "the old generation answers, unchanged, during the rebuild");
        }
        if let Some(rebuild) = status.rebuild {
            assert_eq!(rebuild.generation, 2);
        }
        tokio::task::yield_now().await;
    }
    assert!(dashboard.position() >= head, "the new generation switched in only once caught up");
    assert_eq!(dashboard.sales().expect("queries").value, before.value);
    assert_eq!(dashboard.dump().expect("dumps").value, records_before);

    // The new generation goes on live, and the old trees are emptied.
    let mut taken = None;
    while taken.is_none() {
        taken = shop.step().await;
    }
    let position = taken.unwrap_or_default();
    dashboard.wait_for(position, WAIT).await.expect("the new generation follows the log");
    // The old generation's tree is dropped from the database once nothing holds it.
    assert!(log.has_tree("dashboard.g2"));
    let deadline = std::time::Instant::now() + WAIT;
    while log.has_tree("dashboard.g1") {
        assert!(std::time::Instant::now() < deadline, "the old generation's tree was never dropped");
        tokio::task::yield_now().await;
    }
    projections.shutdown().await;

    // A restart serves the rebuilt generation from its checkpoint.
    let projections = Projections::start(log.clone()).expect("restarts");
    assert_eq!(projections.dashboard().generation(), 2);
    projections.wait_for(log.head(), WAIT).await.expect("catches up");
    projections.shutdown().await;
}

/// A generation being rebuilt writes its batches without a transaction (see
/// `projections::runtime`), so what a stopped rebuild wrote must never serve: the
/// next start empties it, the old generation goes on, and a new rebuild gives
/// the same records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_stopped_part_way_is_thrown_away_at_the_next_start() {
    let Paced { _dir, seed, log, options, projections, gate, .. } =
        paced("projections rebuild stopped", Duration::from_millis(5)).await;
    let head = log.head();
    let live = dumps(&projections);

    // Held at the gate after its first batch, and stopped there.
    gate.close();
    assert_eq!(projections.rebuild("dashboard").expect("a rebuild starts"), 2);
    let deadline = std::time::Instant::now() + WAIT * 6;
    loop {
        assert!(std::time::Instant::now() < deadline, "seed {seed}: the rebuild applied no batch");
        let status = projections.status().into_iter().find(|status| status.name == "dashboard").expect("listed");
        let checkpoint = status.rebuild.map(|rebuild| rebuild.checkpoint).unwrap_or_default();
        assert!(checkpoint < head, "seed {seed}: the rebuild went past the gate");
        if checkpoint > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    projections.shutdown().await;
    gate.open();
    let building = log.open_tree("dashboard.g2").expect("opens");
    assert!(!building.is_empty(), "the stopped rebuild wrote part of generation 2");
    drop(building);

    let projections = Projections::start_with(log.clone(), options).expect("restarts");
    assert_eq!(projections.dashboard().generation(), 1, "the old generation still serves");
    assert!(projections.status().iter().all(|status| status.rebuild.is_none()));
    assert!(log.open_tree("dashboard.g2").expect("opens").is_empty(), "the stopped rebuild's writes are gone");
    projections.wait_for(log.head(), WAIT).await.expect("catches up");
    assert_same(&live, &dumps(&projections));

    let generation = projections.rebuild("dashboard").expect("a rebuild starts again");
    projections.dashboard().wait_for_generation(generation, WAIT * 6).await.expect("the new rebuild serves");
    assert_same(&live, &dumps(&projections));
    projections.shutdown().await;
}

/// A read model whose apply fails stops alone: the live worker goes on applying
/// the others, the failure shows in the model's status, and a rebuild of that
/// model brings it back to serving live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fails_stops_alone_and_a_rebuild_brings_it_back() {
    let super::Shop { log, projections, _dir } =
        super::given([super::created("mug-1", 1299, 5), super::created("cup-1", 500, 5)]).await;
    projections.shutdown().await;
    // Damage the catalog's record of mug-1 where a fresh runtime, whose cache is
    // empty, reads it: the next event about mug-1 cannot be applied to it.
    let catalog_tree = log.open_tree("catalog.g1").expect("opens");
    let damaged = catalog_tree.insert(b"p:mug-1", &[0xff, 0xff, 0xff][..]).expect("writes");
    assert!(damaged.is_some(), "the catalog held mug-1");
    let shop = super::Shop { projections: Projections::start(log.clone()).expect("restarts"), log, _dir };
    let catalog = shop.projections.catalog();
    let failure = |projections: &Projections| {
        let status = projections.status().into_iter().find(|status| status.name == "catalog").expect("listed");
        status.failure
    };

    shop.append(None, super::restocked("mug-1", 2)).await;
    let failed_at = shop.log.head();
    for other in [
        shop.projections.carts().wait_for(failed_at, WAIT).await,
        shop.projections.orders().wait_for(failed_at, WAIT).await,
        shop.projections.dashboard().wait_for(failed_at, WAIT).await,
    ] {
        other.expect("the other models apply the event");
    }
    let deadline = std::time::Instant::now() + WAIT;
    while failure(&shop.projections).is_none() {
        assert!(std::time::Instant::now() < deadline, "the catalog's failure never showed in its status");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(catalog.position() < failed_at, "the failed model did not move past the event it could not apply");
    // It stays behind for good, so it answers nothing rather than an older and
    // older state, and a wait for a position it lacks ends at once.
    let refused = catalog.get(&super::sku("cup-1")).expect_err("a stopped model answers no query");
    assert!(matches!(refused, ProjectionError::Stopped { model: "catalog", .. }), "{refused:?}");
    assert!(shop.projections.refusing().is_some_and(|(model, _)| model == "catalog"));
    shop.append(None, super::restocked("cup-1", 1)).await;
    let later = shop.log.head();
    shop.projections.dashboard().wait_for(later, WAIT).await.expect("the others go on after the failure");
    let started = std::time::Instant::now();
    let waited = catalog.wait_for(later, WAIT).await.expect_err("the failed model stays behind");
    assert!(matches!(waited, ProjectionError::Stopped { .. }), "{waited:?}");
    assert!(started.elapsed() < WAIT, "the wait did not end at once");

    let generation = shop.projections.rebuild("catalog").expect("a rebuild starts");
    catalog.wait_for_generation(generation, WAIT).await.expect("the rebuilt catalog serves");
    assert_eq!(failure(&shop.projections), None, "a rebuild clears the failure");
    assert_eq!(shop.projections.refusing(), None, "the rebuilt catalog answers");
    shop.append(None, super::restocked("mug-1", 1)).await;
    shop.settle().await;
    let mug = catalog.get(&super::sku("mug-1")).expect("queries").value.expect("listed");
    assert_eq!(mug.on_hand, 5 + 2 + 1, "the rebuilt catalog has every restock, the last one applied live");
    assert_eq!(catalog.get(&super::sku("cup-1")).expect("queries").value.expect("listed").on_hand, 6);
    shop.projections.shutdown().await;
}

/// Read-your-writes across a switch: while a rebuilt generation catches up and
/// switches in, commands go on. After each one is acknowledged at position P, a
/// query that waited for P must see it, whichever generation answers: the
/// position a model publishes never runs ahead of the generation that serves.
/// (The window in which a switch could break this is narrow; the runtime's unit
/// test `a_rebuilt_generation_behind_the_published_position_does_not_switch_in`
/// builds it directly.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waited_for_is_seen_while_a_rebuilt_generation_switches_in() {
    let Paced { _dir, seed, log, projections, .. } =
        paced("projections read your writes across a switch", Duration::from_millis(1)).await;
    let service = CommandService::new(log.clone()).expect("builds");
    let context = commands::CommandContext::new("test");
    let catalog = projections.catalog();
    let sku = domain::Sku::parse("rw-1").expect("a sku");
    let name = domain::ProductName::parse("Read your writes").expect("a name");
    let price = domain::PriceCents::new(100).expect("a price");
    service.create_product(&context, sku.clone(), name.clone(), price, None, None).await.expect("creates");
    // Other writers keep the log moving, so that the serving generation goes
    // on past the rebuilt one's head while it switches in.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let other = domain::Sku::parse(&format!("bg-{writer}")).expect("a sku");
        service.create_product(&context, other.clone(), name.clone(), price, None, None).await.expect("creates");
        let (service, context, stop) = (service.clone(), context.clone(), std::sync::Arc::clone(&stop));
        writers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let quantity = domain::RestockQuantity::new(1).expect("a quantity");
                service.restock(&context, other.clone(), quantity, None).await.expect("restocks");
            }
        }));
    }
    let mut stock = 0;
    for round in 1..=3 {
        let generation = projections.rebuild("catalog").expect("a rebuild starts");
        let deadline = std::time::Instant::now() + WAIT * 6;
        // Restocks until a few after the switch.
        let mut after_switch = 0;
        while after_switch < 20 {
            assert!(std::time::Instant::now() < deadline, "seed {seed}, round {round}: the rebuild never switched");
            let quantity = domain::RestockQuantity::new(1).expect("a quantity");
            let restocked = service.restock(&context, sku.clone(), quantity, None).await.expect("restocks");
            stock += 1;
            let position = restocked.position();
            catalog.wait_for(position, WAIT).await.expect("the catalog reaches the write");
            let answer = catalog.get(&sku).expect("queries");
            let seen = answer.value.map(|product| product.available);
            assert_eq!(
                seen,
                Some(stock),
                "seed {seed}, round {round}: a query that waited for position {position} (generation {}, \
                 answering at {}) does not see the restock",
                catalog.generation(),
                answer.position
            );
            if catalog.generation() == generation {
                after_switch += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("a writer ends");
    }
    projections.shutdown().await;
}
