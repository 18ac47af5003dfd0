//! The projection runtime: one worker task per read model that tails the log from
//! the model's checkpoint, applies events in batches and writes each batch's
//! changes and the new checkpoint in one sled transaction; rebuilds into a fresh
//! generation of trees while the old one keeps serving (a generation being built
//! writes without a transaction, see [`Durability`]). Each generation's worker
//! reads its records through a bounded cache (`records::Cache`) that
//! keeps them typed from one batch to the next, so a batch reads sled only for
//! records it did not see lately and encodes each record it changed once.
//!
//! Trees (through [`EventLog::open_tree`]): `<model>.g<n>` holds generation `n`
//! of a model; `checkpoints` maps `<model>.g<n>` to the last position applied
//! (u64 BE); `projections` maps `<model>` to the active generation and
//! `<model>.building` to a generation being rebuilt.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use domain::Event;
use sled::Transactional;
use store::EventLog;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::carts::Carts;
use crate::catalog::Catalog;
use crate::dashboard::Dashboard;
use crate::error::ProjectionError;
use crate::orders::Orders;
use crate::records::{Cache, Changes, Decoded, Envelope, IndexFn, Records, Writes, be_u64};
use crate::{carts, catalog, dashboard, orders};

/// The most items one page holds, whatever the caller asks.
pub const PAGE_LEN_MAX: usize = 1000;

/// The most records a generation's cache holds between batches; past it, it is
/// emptied after a batch (and read back from sled as events need them).
const CACHE_LEN_MAX: usize = 50_000;

/// The most events a rebuild with no pause applies in one batch. Each batch
/// writes every record it changed (the dashboard: each product and its index
/// entries), so fewer batches write far less; the worker holds this batch and
/// the next one, read ahead, some 10 MB each at most.
const REBUILD_BATCH_LEN_MAX: usize = 65_536;

pub(crate) const CHECKPOINTS_TREE: &str = "checkpoints";
pub(crate) const META_TREE: &str = "projections";

/// A pure read model: its changes for one event, given its current records.
pub type ApplyFn = fn(&dyn Records, &Envelope, &Event) -> Result<Changes, ProjectionError>;

/// Every read model, by name.
pub const MODELS: &[(&str, ApplyFn)] = &[
    (catalog::NAME, catalog::apply),
    (carts::NAME, carts::apply),
    (orders::NAME, orders::apply),
    (dashboard::NAME, dashboard::apply),
];

/// The index a model derives from its records, if any (see [`IndexFn`]).
pub(crate) fn index_of(model: &str) -> Option<IndexFn> {
    (model == dashboard::NAME).then_some(dashboard::index as IndexFn)
}

/// A query's answer with the position the model had reached when it was asked
/// (a lower bound: the answer reflects at least every event up to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<T> {
    pub position: u64,
    pub value: T,
}

/// A model's records in key order: (key, value) pairs, for comparing models.
pub type Dump = Vec<(Vec<u8>, Vec<u8>)>;

/// One page of a listing; `next` is the cursor of the following page, `None` on the last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, C> {
    pub items: Vec<T>,
    pub next: Option<C>,
}

pub(crate) fn clamp_limit(limit: usize) -> usize {
    limit.min(PAGE_LEN_MAX)
}

/// How the runtime runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The most events applied in one batch. A rebuild with no
    /// `rebuild_batch_pause` applies up to 65,536 (or this, if more).
    pub batch_len_max: usize,
    /// A pause between a rebuild's batches, so a rebuild leaves room to the live
    /// workers and the writer on a small machine (`None`: as fast as it goes).
    pub rebuild_batch_pause: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options { batch_len_max: 4096, rebuild_batch_pause: None }
    }
}

/// Where one read model stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    pub name: &'static str,
    /// The generation queries read.
    pub generation: u64,
    /// The last position the serving generation applied.
    pub checkpoint: u64,
    pub head: u64,
    /// `head - checkpoint`.
    pub lag: u64,
    pub rebuild: Option<RebuildStatus>,
    /// Why the worker stopped, if it did.
    pub failure: Option<String>,
}

/// A rebuild under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildStatus {
    pub generation: u64,
    pub checkpoint: u64,
}

#[derive(Debug)]
struct Shared {
    log: EventLog,
    checkpoints: sled::Tree,
    meta: sled::Tree,
    options: Options,
    workers: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

/// One generation of one model: its tree and its checkpoint.
#[derive(Debug)]
pub(crate) struct Generation {
    number: u64,
    tree_name: String,
    tree: sled::Tree,
    checkpoints: sled::Tree,
    checkpoint: AtomicU64,
    /// The generation's records as its worker last wrote or read them (only
    /// the worker's batches use it, one at a time).
    cache: Mutex<Cache>,
    stop: watch::Sender<bool>,
    retired: AtomicBool,
    /// To drop the tree once retired.
    log: EventLog,
}

impl Generation {
    fn open(shared: &Shared, model: &str, number: u64) -> Result<Generation, ProjectionError> {
        let tree_name = tree_name(model, number);
        let tree = shared.log.open_tree(&tree_name)?;
        let checkpoint = read_checkpoint(&shared.checkpoints, &tree_name)?;
        let empty = checkpoint == 0 && tree.is_empty();
        Ok(Generation {
            number,
            tree_name,
            cache: Mutex::new(Cache::new(tree.clone(), index_of(model), CACHE_LEN_MAX, empty)),
            tree,
            checkpoints: shared.checkpoints.clone(),
            checkpoint: AtomicU64::new(checkpoint),
            stop: watch::Sender::new(false),
            retired: AtomicBool::new(false),
            log: shared.log.clone(),
        })
    }

    fn checkpoint(&self) -> u64 {
        self.checkpoint.load(Ordering::Acquire)
    }

    /// Empty the tree and forget the checkpoint.
    fn clear(&self) -> Result<(), ProjectionError> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.reset(false);
        self.tree.clear()?;
        self.checkpoints.remove(self.tree_name.as_bytes())?;
        self.checkpoint.store(0, Ordering::Release);
        cache.reset(true);
        Ok(())
    }

    /// Stop its worker; the trees are emptied once the last holder (a query in
    /// flight, the worker) lets go.
    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.stop.send_replace(true);
    }
}

impl Drop for Generation {
    /// A retired generation leaves nothing behind: its checkpoint is forgotten and
    /// its tree emptied and dropped from the database.
    fn drop(&mut self) {
        if !self.retired.load(Ordering::Acquire) {
            return;
        }
        let dropped = self.clear().and_then(|()| Ok(self.log.drop_tree(&self.tree_name)?));
        if let Err(error) = dropped {
            tracing::warn!(tree = self.tree_name, %error, "could not drop a retired read-model tree");
        }
    }
}

/// One read model: the generation that serves, the one being rebuilt, and the
/// position queries can rely on.
#[derive(Debug)]
pub(crate) struct Slot {
    name: &'static str,
    apply: ApplyFn,
    shared: Arc<Shared>,
    active: RwLock<Arc<Generation>>,
    /// The serving generation's checkpoint; never goes back, not even across a switch.
    position: watch::Sender<u64>,
    /// The serving generation's number.
    generation: watch::Sender<u64>,
    building: Mutex<Option<Arc<Generation>>>,
    failure: Mutex<Option<String>>,
}

impl Slot {
    fn active(&self) -> Arc<Generation> {
        Arc::clone(&self.active.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Run a query on the serving generation, with the position it had reached.
    pub(crate) fn read<T>(
        &self,
        query: impl FnOnce(&sled::Tree) -> Result<T, ProjectionError>,
    ) -> Result<Answer<T>, ProjectionError> {
        let (generation, position) = {
            let active = self.active.read().unwrap_or_else(PoisonError::into_inner);
            (Arc::clone(&active), *self.position.borrow())
        };
        let value = query(&generation.tree)?;
        Ok(Answer { position, value })
    }

    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    pub(crate) fn position(&self) -> u64 {
        *self.position.borrow()
    }

    pub(crate) fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    pub(crate) async fn wait_for(&self, position: u64, timeout: Duration) -> Result<u64, ProjectionError> {
        let mut receiver = self.position.subscribe();
        let reached = tokio::time::timeout(timeout, receiver.wait_for(|reached| *reached >= position)).await;
        match reached {
            Ok(Ok(reached)) => Ok(*reached),
            _ => Err(ProjectionError::Timeout { model: self.name, position, reached: self.position() }),
        }
    }

    pub(crate) async fn wait_for_generation(&self, generation: u64, timeout: Duration) -> Result<(), ProjectionError> {
        let mut receiver = self.generation.subscribe();
        match tokio::time::timeout(timeout, receiver.wait_for(|active| *active >= generation)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ProjectionError::Stopped {
                model: self.name,
                reason: format!("generation {generation} is not serving in time (still {})", self.generation()),
            }),
        }
    }

    /// Everything in the serving generation, key by key: for comparing models in
    /// tests and tools. It holds the whole model in memory.
    pub(crate) fn dump(&self) -> Result<Answer<Dump>, ProjectionError> {
        self.read(|tree| {
            tree.iter()
                .map(|entry| entry.map(|(key, value)| (key.to_vec(), value.to_vec())).map_err(ProjectionError::from))
                .collect()
        })
    }

    fn status(&self) -> ProjectionStatus {
        let head = self.shared.log.head();
        let checkpoint = self.position();
        let rebuild = self
            .building
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|building| RebuildStatus { generation: building.number, checkpoint: building.checkpoint() });
        ProjectionStatus {
            name: self.name,
            generation: self.generation(),
            checkpoint,
            head,
            lag: head.saturating_sub(checkpoint),
            rebuild,
            failure: self.failure.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }

    /// The serving generation reached `checkpoint`.
    fn publish(&self, generation: &Arc<Generation>, checkpoint: u64) {
        let active = self.active.read().unwrap_or_else(PoisonError::into_inner);
        if Arc::ptr_eq(&active, generation) {
            self.position.send_modify(|position| *position = (*position).max(checkpoint));
        }
    }

    /// Make the rebuilt `generation` the serving one: recorded durably first, so
    /// the old trees are emptied only once no restart can go back to them.
    fn switch_to(&self, generation: &Arc<Generation>) -> Result<(), ProjectionError> {
        let mut active = self.active.write().unwrap_or_else(PoisonError::into_inner);
        let mut batch = sled::Batch::default();
        batch.insert(self.name.as_bytes(), &generation.number.to_be_bytes());
        batch.remove(building_key(self.name));
        self.shared.meta.apply_batch(batch)?;
        self.shared.log.make_durable()?;
        let old = std::mem::replace(&mut *active, Arc::clone(generation));
        old.retire();
        self.position.send_modify(|position| *position = (*position).max(generation.checkpoint()));
        self.generation.send_replace(generation.number);
        *self.building.lock().unwrap_or_else(PoisonError::into_inner) = None;
        tracing::info!(model = self.name, generation = generation.number, "rebuilt read model now serving");
        Ok(())
    }

    fn fail(&self, generation: &Arc<Generation>, error: &ProjectionError) {
        tracing::error!(model = self.name, generation = generation.number, %error, "projection stopped");
        let mut building = self.building.lock().unwrap_or_else(PoisonError::into_inner);
        if building.as_ref().is_some_and(|building| Arc::ptr_eq(building, generation)) {
            // A failed rebuild is abandoned; the serving generation goes on.
            *building = None;
            generation.retire();
            if let Err(error) = self.shared.meta.remove(building_key(self.name)) {
                tracing::warn!(model = self.name, %error, "could not forget the abandoned rebuild");
            }
        }
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
    }
}

/// The tree of generation `number` of `model`, and its key in the checkpoints tree.
pub(crate) fn tree_name(model: &str, number: u64) -> String {
    format!("{model}.g{number}")
}

/// The key in the meta tree of the generation being rebuilt.
pub(crate) fn building_key(name: &str) -> Vec<u8> {
    format!("{name}.building").into_bytes()
}

/// The last position applied to the generation `tree_name` (0: none yet).
pub(crate) fn read_checkpoint(checkpoints: &sled::Tree, tree_name: &str) -> Result<u64, ProjectionError> {
    match checkpoints.get(tree_name.as_bytes())? {
        None => Ok(0),
        Some(bytes) => be_u64(&bytes).ok_or_else(|| ProjectionError::Corrupt {
            model: "checkpoints",
            reason: format!("checkpoint of {tree_name} is not a u64"),
        }),
    }
}

/// How a generation's batch is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// The generation serves: its batch and checkpoint in one sled transaction,
    /// so a crash never applies an event twice or skips one.
    Atomic,
    /// The generation is being built (`<model>.building`): a crash throws it
    /// away whole, so its batches are written key by key and then the
    /// checkpoint. A transaction would take sled's process-wide lock and stop
    /// the log's readers (the rebuild's own among them) while it writes.
    Building,
}

/// Write one batch of a generation's changes and its new checkpoint: in one
/// transaction (a crash keeps both or neither) when the generation serves.
pub(crate) fn write_batch(
    tree: &sled::Tree,
    checkpoints: &sled::Tree,
    tree_name: &str,
    batch: Writes,
    position: u64,
    durability: Durability,
) -> Result<(), ProjectionError> {
    if durability == Durability::Building {
        batch.write_each(tree)?;
        checkpoints.insert(tree_name.as_bytes(), &position.to_be_bytes())?;
        return Ok(());
    }
    let batch = batch.into_batch();
    let written: Result<(), sled::transaction::TransactionError<()>> =
        (tree, checkpoints).transaction(|(tree, checkpoints)| {
            tree.apply_batch(&batch)?;
            checkpoints.insert(tree_name.as_bytes(), &position.to_be_bytes())?;
            Ok(())
        });
    written.map_err(|error| ProjectionError::Storage(format!("writing {tree_name}: {error:?}")))
}

/// Apply `events` (the next ones after the generation's checkpoint) and write the
/// changes with the new checkpoint (in one transaction once the generation serves).
fn commit(slot: &Slot, generation: &Generation, events: &[Decoded], serving: bool) -> Result<u64, ProjectionError> {
    let mut cache = generation.cache.lock().unwrap_or_else(PoisonError::into_inner);
    let durability = if serving { Durability::Atomic } else { Durability::Building };
    let committed = apply_and_write(slot, generation, &mut cache, events, durability);
    if committed.is_err() {
        // What the cache holds may not be what the tree holds now.
        cache.reset(false);
    }
    committed
}

fn apply_and_write(
    slot: &Slot,
    generation: &Generation,
    cache: &mut Cache,
    events: &[Decoded],
    durability: Durability,
) -> Result<u64, ProjectionError> {
    let mut position = generation.checkpoint();
    for decoded in events {
        if decoded.envelope.position != position + 1 {
            return Err(ProjectionError::Corrupt {
                model: slot.name,
                reason: format!("expected position {} next, got {}", position + 1, decoded.envelope.position),
            });
        }
        // A forgotten payload (`None`) holds nothing any read model uses.
        if let Some(event) = &decoded.event {
            let changes = (slot.apply)(&*cache, &decoded.envelope, event)?;
            cache.absorb(changes);
        }
        position = decoded.envelope.position;
    }
    let batch = cache.take_batch()?;
    write_batch(&generation.tree, &generation.checkpoints, &generation.tree_name, batch, position, durability)?;
    cache.trim();
    generation.checkpoint.store(position, Ordering::Release);
    Ok(position)
}

/// After a batch: publish it, or, for a rebuild that reached the head, switch.
/// Returns whether the generation serves now.
fn settle(slot: &Slot, generation: &Arc<Generation>, serving: bool) -> Result<bool, ProjectionError> {
    let checkpoint = generation.checkpoint();
    if serving {
        slot.publish(generation, checkpoint);
        return Ok(true);
    }
    if checkpoint >= slot.shared.log.head() {
        slot.switch_to(generation)?;
        return Ok(true);
    }
    Ok(false)
}

fn join_error(slot: &Slot, error: tokio::task::JoinError) -> ProjectionError {
    ProjectionError::Stopped { model: slot.name, reason: format!("a batch task failed: {error}") }
}

async fn run_worker(slot: Arc<Slot>, generation: Arc<Generation>, serving: bool) {
    if let Err(error) = project(&slot, &generation, serving).await {
        slot.fail(&generation, &error);
    }
}

/// Events a worker reads and decodes in one go, between looks at its batch's
/// task; a rebuild reads larger chunks (each chunk starts a new sled iterator,
/// which copies the leaf it starts in).
const READ_CHUNK_LEN: usize = 512;
const REBUILD_READ_CHUNK_LEN: usize = 4096;

fn decode_into(batch: &mut Vec<Decoded>, event: &store::EventRef<'_>) -> Result<(), ProjectionError> {
    batch.push(Decoded::of_ref(event)?);
    Ok(())
}

async fn project(slot: &Arc<Slot>, generation: &Arc<Generation>, mut serving: bool) -> Result<(), ProjectionError> {
    let log = &slot.shared.log;
    let options = &slot.shared.options;
    // A rebuild writes larger batches unless told to go gently: its records
    // change again and again (a product's stock), and each batch writes each
    // changed record once.
    let batch_len_max = |serving: bool| match (serving, options.rebuild_batch_pause) {
        (false, None) => options.batch_len_max.max(REBUILD_BATCH_LEN_MAX),
        _ => options.batch_len_max.max(1),
    };
    let read_chunk_len = |serving: bool| if serving { READ_CHUNK_LEN } else { REBUILD_READ_CHUNK_LEN };
    let mut subscription = log.subscribe(generation.checkpoint() + 1);
    let mut stop = generation.stop.subscribe();
    // The events read and decoded for the next batch: decoding is done here,
    // beside the blocking task that applies and writes the batch before it. The
    // task hands its batch's buffer back, emptied, for the batch after: two
    // buffers in turn, allocated once at full size (a rebuild's are some MB;
    // growing and freeing them batch after batch cost a tenth of its time).
    let mut batch = Vec::with_capacity(batch_len_max(serving));
    let mut spare: Option<Vec<Decoded>> = None;
    loop {
        if *stop.borrow_and_update() {
            return Ok(());
        }
        if !serving && generation.checkpoint() >= log.head() {
            let (slot, generation) = (Arc::clone(slot), Arc::clone(generation));
            serving = tokio::task::spawn_blocking(move || settle(&slot, &generation, false))
                .await
                .map_err(|error| ProjectionError::Stopped { model: "rebuild", reason: error.to_string() })??;
            continue;
        }
        let batch_len_max = batch_len_max(serving);
        let read_chunk_len = read_chunk_len(serving);
        if serving && batch.capacity() > batch_len_max {
            // A catch-up or rebuild is over: give its large buffers back.
            batch.shrink_to(batch_len_max);
            spare = None;
        }
        // Wait for the next committed event, then take what is committed after it
        // (up to a chunk at a time), decoding each straight from the stored record.
        if batch.is_empty() {
            let limit = read_chunk_len.min(batch_len_max);
            let read = tokio::select! {
                read = subscription.next_scan(limit, |event| decode_into(&mut batch, &event)) => read,
                _ = stop.changed() => continue,
            };
            read?;
        }
        while batch.len() < batch_len_max && subscription.next_position() <= log.head() {
            let limit = read_chunk_len.min(batch_len_max - batch.len());
            subscription.next_scan(limit, |event| decode_into(&mut batch, &event)).await?;
        }
        let next = spare.take().unwrap_or_else(|| Vec::with_capacity(batch_len_max));
        let mut events = std::mem::replace(&mut batch, next);
        let mut task = {
            let (slot, generation) = (Arc::clone(slot), Arc::clone(generation));
            tokio::task::spawn_blocking(move || {
                commit(&slot, &generation, &events, serving)?;
                // The events are dropped here, off the worker's thread.
                events.clear();
                Ok::<_, ProjectionError>((settle(&slot, &generation, serving)?, events))
            })
        };
        // Read and decode the next batch while this one is applied and written:
        // that is the other half of a catch-up's or rebuild's work.
        // (`Subscription::next_scan` may be dropped while it waits: it loses nothing.)
        let mut read_error = None;
        let joined = loop {
            let limit = read_chunk_len.min(batch_len_max.saturating_sub(batch.len()));
            tokio::select! {
                biased;
                joined = &mut task => break joined,
                read = subscription.next_scan(limit, |event| decode_into(&mut batch, &event)),
                    if limit > 0 && read_error.is_none() => {
                    if let Err(error) = read {
                        read_error = Some(error);
                    }
                }
            }
        };
        let emptied;
        (serving, emptied) = joined.map_err(|error| join_error(slot, error))??;
        spare = Some(emptied);
        if let Some(error) = read_error {
            return Err(error);
        }
        if !serving && let Some(pause) = options.rebuild_batch_pause {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// The projection runtime and the handle to every read model's queries.
#[derive(Debug)]
pub struct Projections {
    shared: Arc<Shared>,
    catalog: Catalog,
    carts: Carts,
    orders: Orders,
    dashboard: Dashboard,
}

impl Projections {
    /// Start a worker per read model on the current tokio runtime, each from its
    /// checkpoint, with default options.
    pub fn start(log: EventLog) -> Result<Projections, ProjectionError> {
        Self::start_with(log, Options::default())
    }

    /// Start with `options`. A rebuild a crash interrupted is abandoned (its trees
    /// emptied); the generation that served goes on serving.
    pub fn start_with(log: EventLog, options: Options) -> Result<Projections, ProjectionError> {
        let shared = Arc::new(Shared {
            checkpoints: log.open_tree(CHECKPOINTS_TREE)?,
            meta: log.open_tree(META_TREE)?,
            log,
            options,
            workers: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        });
        let mut slots = Vec::with_capacity(MODELS.len());
        for (name, apply) in MODELS {
            slots.push(open_slot(&shared, name, *apply)?);
        }
        for slot in &slots {
            let generation = slot.active();
            spawn(&shared, Arc::clone(slot), generation, true);
        }
        let mut slots = slots.into_iter();
        let mut next = || {
            slots
                .next()
                .ok_or_else(|| ProjectionError::Stopped { model: "runtime", reason: "a model is missing".into() })
        };
        Ok(Projections {
            catalog: Catalog { slot: next()? },
            carts: Carts { slot: next()? },
            orders: Orders { slot: next()? },
            dashboard: Dashboard { slot: next()? },
            shared,
        })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn carts(&self) -> &Carts {
        &self.carts
    }

    pub fn orders(&self) -> &Orders {
        &self.orders
    }

    pub fn dashboard(&self) -> &Dashboard {
        &self.dashboard
    }

    fn slots(&self) -> [&Arc<Slot>; 4] {
        [&self.catalog.slot, &self.carts.slot, &self.orders.slot, &self.dashboard.slot]
    }

    fn slot(&self, name: &str) -> Result<&Arc<Slot>, ProjectionError> {
        self.slots()
            .into_iter()
            .find(|slot| slot.name == name)
            .ok_or_else(|| ProjectionError::UnknownModel { name: name.to_owned() })
    }

    /// The read models' names.
    pub fn names(&self) -> [&'static str; 4] {
        self.slots().map(|slot| slot.name)
    }

    /// Where every read model stands.
    pub fn status(&self) -> Vec<ProjectionStatus> {
        self.slots().iter().map(|slot| slot.status()).collect()
    }

    /// Wait until every read model reached `position`, within `timeout` in all.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<(), ProjectionError> {
        let deadline = tokio::time::Instant::now() + timeout;
        for slot in self.slots() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            slot.wait_for(position, left).await?;
        }
        Ok(())
    }

    /// Rebuild the model `name` from position 0 into a fresh generation while the
    /// current one keeps serving; once the new one has caught up with the head it
    /// serves instead and the old trees are emptied. Returns the new generation's
    /// number (see `wait_for_generation` on the model's handle).
    pub fn rebuild(&self, name: &str) -> Result<u64, ProjectionError> {
        let slot = self.slot(name)?;
        let mut building = slot.building.lock().unwrap_or_else(PoisonError::into_inner);
        if building.is_some() {
            return Err(ProjectionError::RebuildRunning { model: slot.name });
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(ProjectionError::Stopped { model: slot.name, reason: "the runtime is shut down".into() });
        }
        let number = slot.active().number + 1;
        self.shared.meta.insert(building_key(slot.name), &number.to_be_bytes())?;
        let generation = Arc::new(Generation::open(&self.shared, slot.name, number)?);
        generation.clear()?;
        *building = Some(Arc::clone(&generation));
        *slot.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
        drop(building);
        spawn(&self.shared, Arc::clone(slot), generation, false);
        Ok(number)
    }

    /// Stop every worker and wait for them: after this the log may be closed.
    pub async fn shutdown(self) {
        self.stop_all();
        loop {
            let workers = std::mem::take(&mut *self.shared.workers.lock().unwrap_or_else(PoisonError::into_inner));
            if workers.is_empty() {
                break;
            }
            for worker in workers {
                if let Err(error) = worker.await {
                    tracing::error!(%error, "a projection worker panicked");
                }
            }
        }
    }

    fn stop_all(&self) {
        self.shared.closed.store(true, Ordering::Release);
        for slot in self.slots() {
            slot.active().stop.send_replace(true);
            if let Some(building) = slot.building.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
                building.stop.send_replace(true);
            }
        }
    }
}

impl Drop for Projections {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn open_slot(shared: &Arc<Shared>, name: &'static str, apply: ApplyFn) -> Result<Arc<Slot>, ProjectionError> {
    let bad = |what: &str| ProjectionError::Corrupt { model: "projections", reason: format!("{what} of {name}") };
    let active_number = match shared.meta.get(name.as_bytes())? {
        Some(bytes) => be_u64(&bytes).ok_or_else(|| bad("the active generation"))?,
        None => {
            shared.meta.insert(name.as_bytes(), &1u64.to_be_bytes())?;
            1
        }
    };
    if let Some(bytes) = shared.meta.get(building_key(name))? {
        let abandoned = be_u64(&bytes).ok_or_else(|| bad("the generation being rebuilt"))?;
        if abandoned != active_number {
            Generation::open(shared, name, abandoned)?.clear()?;
        }
        shared.meta.remove(building_key(name))?;
    }
    let generation = Arc::new(Generation::open(shared, name, active_number)?);
    Ok(Arc::new(Slot {
        name,
        apply,
        shared: Arc::clone(shared),
        position: watch::Sender::new(generation.checkpoint()),
        generation: watch::Sender::new(generation.number),
        active: RwLock::new(generation),
        building: Mutex::new(None),
        failure: Mutex::new(None),
    }))
}

fn spawn(shared: &Shared, slot: Arc<Slot>, generation: Arc<Generation>, serving: bool) {
    let worker = tokio::spawn(run_worker(slot, generation, serving));
    let mut workers = shared.workers.lock().unwrap_or_else(PoisonError::into_inner);
    workers.retain(|worker| !worker.is_finished());
    workers.push(worker);
}

/// The queries every model's handle has: its name, position, generation, waiting
/// and a dump.
macro_rules! common_queries {
    ($handle:ty) => {
        impl $handle {
            /// The model's name (`catalog`, `carts`, `orders`, `dashboard`).
            pub fn name(&self) -> &'static str {
                self.slot.name()
            }

            /// The last position the serving generation applied.
            pub fn position(&self) -> u64 {
                self.slot.position()
            }

            /// The serving generation's number.
            pub fn generation(&self) -> u64 {
                self.slot.generation()
            }

            /// Wait until the model reached `position` (read-your-writes); returns the
            /// position reached, or [`crate::ProjectionError::Timeout`].
            pub async fn wait_for(
                &self,
                position: u64,
                timeout: std::time::Duration,
            ) -> Result<u64, crate::ProjectionError> {
                self.slot.wait_for(position, timeout).await
            }

            /// Wait until generation `generation` (or a later one) serves.
            pub async fn wait_for_generation(
                &self,
                generation: u64,
                timeout: std::time::Duration,
            ) -> Result<(), crate::ProjectionError> {
                self.slot.wait_for_generation(generation, timeout).await
            }

            /// Every record of the serving generation, in key order (for comparing
            /// models; holds the whole model in memory).
            pub fn dump(&self) -> Result<crate::Answer<crate::Dump>, crate::ProjectionError> {
                self.slot.dump()
            }
        }
    };
}
pub(crate) use common_queries;
