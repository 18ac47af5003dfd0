//! The projection runtime: the live worker tails the log from the lowest
//! checkpoint of the serving generations, applies each batch to every one of them
//! (each from its own checkpoint) and writes all their changes and checkpoints
//! atomically through a redo (see [`commit_live`] and `redo`); a rebuild builds a fresh generation
//! of trees with a worker of its own while the old one keeps serving (writing
//! without a transaction, see [`write_building`]), and hands it to the live worker
//! once it has caught up. Each generation reads its records through a bounded
//! cache (`records::Cache`) that
//! keeps them typed from one batch to the next, so a batch reads sled only for
//! records it did not see lately and encodes each record it changed once.
//!
//! Trees (through [`EventLog::open_tree`]): `<model>.g<n>` holds generation `n`
//! of a model; `checkpoints` maps `<model>.g<n>` to the last position applied
//! (u64 BE); `projections` maps `<model>` to the active generation and
//! `<model>.building` to a generation being rebuilt; `projections.redo` holds
//! the redo of a live batch while it is written.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use domain::Event;
use store::EventLog;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::carts::Carts;
use crate::catalog::Catalog;
use crate::dashboard::Dashboard;
use crate::error::ProjectionError;
use crate::orders::Orders;
use crate::records::{Cache, Changes, Decoded, Envelope, IndexFn, Records, Writes, be_u64};
use crate::redo::{REDO_TREE, Redo};
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

/// The format of what a model stores (its records and index entries). A serving
/// generation written in another format is emptied when the runtime opens (see
/// `open_slot`), and a rebuild starts at once: until the rebuilt generation has
/// caught up and serves, the model answers empty, at position 0. Raise a
/// model's number whenever what it stores changes. Every generation this binary
/// builds is of the current format, recorded when it starts to serve.
pub(crate) fn format_of(model: &str) -> u32 {
    match model {
        dashboard::NAME => dashboard::FORMAT,
        catalog::NAME => catalog::FORMAT,
        _ => 1,
    }
}

/// The key in the meta tree of the format the serving generation of `name` was
/// written in; absent, format 1 (written before formats were recorded).
pub(crate) fn format_key(name: &str) -> Vec<u8> {
    format!("{name}.format").into_bytes()
}

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
    /// Holds every rebuild after each batch while closed: for a test that must
    /// see a rebuild part way, whatever the machine's pace (`None`: no gate).
    pub rebuild_gate: Option<RebuildGate>,
}

impl Default for Options {
    fn default() -> Self {
        Options { batch_len_max: 4096, rebuild_batch_pause: None, rebuild_gate: None }
    }
}

/// A gate rebuilds wait at after each batch until it is opened (see
/// [`Options::rebuild_gate`]); a stopping runtime passes it.
#[derive(Debug, Clone)]
pub struct RebuildGate(Arc<watch::Sender<bool>>);

impl RebuildGate {
    pub fn closed() -> RebuildGate {
        RebuildGate(Arc::new(watch::Sender::new(false)))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    pub fn close(&self) {
        self.0.send_replace(false);
    }

    async fn pass(&self) {
        let mut open = self.0.subscribe();
        let _ = open.wait_for(|open| *open).await;
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
    /// The live batches' redos (see `redo`), and the sequence number of the next.
    redo: sled::Tree,
    redo_sequence: AtomicU64,
    /// Tests: fail live batches after their records, before their checkpoints,
    /// as a crash between the two would.
    #[cfg(test)]
    halt_before_checkpoints: AtomicBool,
    /// Tests: the next switch says it reached its first flush, then waits to be let go.
    #[cfg(test)]
    switch_flush_gate: Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>,
    /// Tests: the next live batch says its records are written (its locks let
    /// go, its checkpoints not yet recorded), then waits to be let go.
    #[cfg(test)]
    batch_written_gate: Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>,
    options: Options,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// The threads dropping retired generations: `shutdown` waits for them, so
    /// that the log they hold a handle of closes cleanly after it.
    droppers: Droppers,
    closed: AtomicBool,
    /// Stops the live worker.
    stop: watch::Sender<bool>,
}

/// One generation of one model: its tree and its checkpoint.
#[derive(Debug)]
pub(crate) struct Generation {
    number: u64,
    tree_name: String,
    tree: sled::Tree,
    checkpoints: sled::Tree,
    checkpoint: AtomicU64,
    /// The last position whose events the tree holds whole, set under
    /// `batch_lock` as the live worker writes a batch (its checkpoint is
    /// recorded after the lock is let go): with the checkpoint, the position a
    /// query's answer reflects (see [`Generation::answers_at`]).
    written: AtomicU64,
    /// Held by the live worker while it writes a batch to the tree, key by key,
    /// and by queries while they read: a query sees a batch whole or not at all.
    batch_lock: RwLock<()>,
    /// The generation's records as its worker last wrote or read them (only
    /// the worker's batches use it, one at a time).
    cache: Mutex<Cache>,
    stop: watch::Sender<bool>,
    retired: AtomicBool,
    /// A write of a batch to it failed part way: it may hold part of a batch
    /// under an older checkpoint, so it answers no query until a restart writes
    /// the batch again from its redo, or a rebuild replaces it.
    torn: AtomicBool,
    /// Why the live worker stopped applying events to it, once it has: it then
    /// stays behind the log for good, so it answers no query (rather than a
    /// state that grows older and older) until a rebuild replaces it or a
    /// restart opens it again. Set once; read without a lock (waiters read it
    /// inside a watch channel's lock, see [`Slot::wait_for`]).
    stopped: std::sync::OnceLock<String>,
    /// Emptied at start for being of another format: a rebuild is to fill it,
    /// and the live worker leaves it alone.
    awaits_rebuild: AtomicBool,
    /// To drop the tree once retired, on a thread `droppers` keeps.
    log: EventLog,
    droppers: Droppers,
}

/// Threads dropping retired generations' trees.
type Droppers = Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>;

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
            written: AtomicU64::new(checkpoint),
            batch_lock: RwLock::new(()),
            stop: watch::Sender::new(false),
            retired: AtomicBool::new(false),
            torn: AtomicBool::new(false),
            stopped: std::sync::OnceLock::new(),
            awaits_rebuild: AtomicBool::new(false),
            log: shared.log.clone(),
            droppers: Arc::clone(&shared.droppers),
        })
    }

    /// The position the tree's records reflect, read under `batch_lock`: the
    /// live worker's last batch written whole, or the checkpoint of a rebuild
    /// (which writes no batch under the lock). Never behind the slot's
    /// published position while the generation serves: both follow the checkpoint.
    fn answers_at(&self) -> u64 {
        self.written.load(Ordering::Acquire).max(self.checkpoint())
    }

    fn checkpoint(&self) -> u64 {
        self.checkpoint.load(Ordering::Acquire)
    }

    /// Why it answers no query, if it does not. `torn` is set while each batch
    /// is written, so it means a torn batch only under the batch lock (as in
    /// [`Slot::read`]); a batch that failed part way stops the generation too.
    fn refusal(&self) -> Option<String> {
        if self.torn.load(Ordering::Acquire) {
            return Some("a storage error cut a batch short; restart the server or rebuild the model".to_owned());
        }
        self.stopped_reason()
    }

    /// Why it answers no query for good, if it does not: the live worker
    /// stopped applying events to it, or it was emptied for a new format and
    /// the rebuild meant to fill it failed.
    fn stopped_reason(&self) -> Option<String> {
        let reason = self.stopped.get()?;
        Some(format!("{reason}; rebuild the model or restart the server"))
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
    /// its tree dropped from the database (sled frees its pages; no key is removed
    /// one by one). On a thread of its own: the last holder may be the live
    /// worker, which would stop every model meanwhile, or a switch holding the
    /// model's write lock, which would stop its queries. No later generation of
    /// the model reuses the number ([`Slot::next_number`]), so nothing opens the
    /// tree while it goes; a crash before it has gone leaves it to the next start.
    fn drop(&mut self) {
        if !self.retired.load(Ordering::Acquire) {
            return;
        }
        let (log, checkpoints, tree_name) = (self.log.clone(), self.checkpoints.clone(), self.tree_name.clone());
        let spawned = std::thread::Builder::new()
            .name("shoplog-drop-gen".to_owned())
            .spawn(move || drop_generation(&log, &checkpoints, &tree_name));
        match spawned {
            Ok(thread) => {
                let mut droppers = self.droppers.lock().unwrap_or_else(PoisonError::into_inner);
                droppers.retain(|thread| !thread.is_finished());
                droppers.push(thread);
            }
            // No thread to be had: here, then.
            Err(_) => drop_generation(&self.log, &self.checkpoints, &self.tree_name),
        }
    }
}

/// Tests: how long each drop of a retired generation waits first, in ms.
#[cfg(test)]
static DROP_DELAY_MS: AtomicU64 = AtomicU64::new(0);

/// Forget generation `tree_name`'s checkpoint and drop its tree.
fn drop_generation(log: &EventLog, checkpoints: &sled::Tree, tree_name: &str) {
    #[cfg(test)]
    std::thread::sleep(Duration::from_millis(DROP_DELAY_MS.load(Ordering::Relaxed)));
    let dropped = checkpoints
        .remove(tree_name.as_bytes())
        .map_err(ProjectionError::from)
        .and_then(|_| Ok(log.drop_tree(tree_name)?));
    if let Err(error) = dropped {
        tracing::warn!(tree = tree_name, %error, "could not drop a retired read-model tree");
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
    /// The number the next rebuild takes: past every generation this runtime
    /// opened, so a rebuild never opens the tree of one still being dropped (a
    /// failed rebuild's, say).
    next_number: AtomicU64,
}

impl Slot {
    fn active(&self) -> Arc<Generation> {
        Arc::clone(&self.active.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Run a query on the serving generation, with the position its answer
    /// reflects: read under the same lock as the records, so never one behind
    /// a batch the answer already shows (nor ahead of one it does not).
    pub(crate) fn read<T>(
        &self,
        query: impl FnOnce(&sled::Tree) -> Result<T, ProjectionError>,
    ) -> Result<Answer<T>, ProjectionError> {
        let generation = self.active();
        let _batch_whole = generation.batch_lock.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(reason) = generation.refusal() {
            return Err(ProjectionError::Stopped { model: self.name, reason });
        }
        let value = query(&generation.tree)?;
        Ok(Answer { position: generation.answers_at(), value })
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

    /// Why the serving generation stopped, if it did: it answers no query.
    pub(crate) fn stopped(&self) -> Option<String> {
        self.active().stopped_reason()
    }

    pub(crate) async fn wait_for(&self, position: u64, timeout: Duration) -> Result<u64, ProjectionError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut receiver = self.position.subscribe();
        loop {
            let serving = self.active();
            if let Some(reason) = serving.stopped_reason()
                && self.position() < position
            {
                // It will never get there.
                return Err(ProjectionError::Stopped { model: self.name, reason });
            }
            // `fail` wakes the waiters too: a model that stops meanwhile ends the
            // wait; so does a switch, after which the wait watches the generation
            // that serves then (a rebuilt one that stops ends it as well). The
            // check runs under the position channel's lock, so it takes no other
            // lock than the generation channel's, which a switch never holds
            // while it sends on the position channel.
            let done = |reached: &u64| {
                *reached >= position || serving.stopped.get().is_some() || *self.generation.borrow() != serving.number
            };
            let reached = tokio::time::timeout_at(deadline, receiver.wait_for(done)).await.ok().and_then(Result::ok);
            match reached.map(|reached| *reached) {
                Some(reached) if reached >= position => return Ok(reached),
                Some(_) if serving.stopped.get().is_none() => continue,
                Some(_) => {
                    return Err(ProjectionError::Stopped {
                        model: self.name,
                        reason: serving.stopped_reason().unwrap_or_else(|| "it stopped".to_owned()),
                    });
                }
                None => return Err(ProjectionError::Timeout { model: self.name, position, reached: self.position() }),
            }
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
    /// Returns false, and switches nothing, while the serving generation has
    /// published a position the rebuilt one has not reached: the log moved on
    /// after the rebuilt one caught up with its head, and switching then would
    /// let the position (which never goes back) claim events the new generation
    /// lacks, so a query that waited for one of them would not see it. The
    /// rebuild reads on and tries again. (Under the write lock, no publish of
    /// the serving generation can slip in between the check and the switch.)
    ///
    /// The rebuilt generation's records, written unflushed while it was built,
    /// are made durable before the lock is taken: that flush can take long,
    /// and the lock stops the model's queries. Under the lock only the switch's
    /// own record is flushed. If that fails, the record is put back as it was,
    /// so that no later flush makes durable a switch that did not happen.
    fn switch_to(&self, generation: &Arc<Generation>) -> Result<bool, ProjectionError> {
        #[cfg(test)]
        if let Some((reached, release)) =
            self.shared.switch_flush_gate.lock().unwrap_or_else(PoisonError::into_inner).take()
        {
            let _ = reached.send(());
            let _ = release.recv();
        }
        self.shared.log.make_durable()?;
        let mut active = self.active.write().unwrap_or_else(PoisonError::into_inner);
        if generation.checkpoint() < *self.position.borrow() {
            return Ok(false);
        }
        let meta = &self.shared.meta;
        let keys = [self.name.as_bytes().to_vec(), format_key(self.name), building_key(self.name)];
        let before = keys.iter().map(|key| meta.get(key)).collect::<Result<Vec<_>, _>>()?;
        let mut batch = sled::Batch::default();
        batch.insert(keys[0].as_slice(), &generation.number.to_be_bytes());
        batch.insert(keys[1].as_slice(), &format_of(self.name).to_be_bytes());
        batch.remove(keys[2].as_slice());
        meta.apply_batch(batch)?;
        if let Err(error) = self.shared.log.make_durable() {
            let mut undo = sled::Batch::default();
            for (key, value) in keys.iter().zip(before) {
                match value {
                    Some(value) => undo.insert(key.as_slice(), value),
                    None => undo.remove(key.as_slice()),
                }
            }
            if let Err(undo_error) = meta.apply_batch(undo) {
                tracing::error!(model = self.name, %undo_error, "could not put back the record of a failed switch");
            }
            return Err(error.into());
        }
        let old = std::mem::replace(&mut *active, Arc::clone(generation));
        old.retire();
        // The generation before the position: whoever waited for the position
        // sees the generation that reached it.
        self.generation.send_replace(generation.number);
        self.position.send_modify(|position| *position = (*position).max(generation.checkpoint()));
        *self.building.lock().unwrap_or_else(PoisonError::into_inner) = None;
        // What failed before (the generation this one replaces, or an earlier rebuild) is over.
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
        tracing::info!(model = self.name, generation = generation.number, "rebuilt read model now serving");
        Ok(true)
    }

    fn fail(&self, generation: &Arc<Generation>, error: &ProjectionError) {
        tracing::error!(model = self.name, generation = generation.number, %error, "projection stopped");
        // Before `building`: a switch takes `active`, then `building`.
        let serving = self.active();
        let mut building = self.building.lock().unwrap_or_else(PoisonError::into_inner);
        if building.as_ref().is_some_and(|building| Arc::ptr_eq(building, generation)) {
            // A failed rebuild is abandoned; the serving generation goes on.
            *building = None;
            generation.retire();
            if let Err(error) = self.shared.meta.remove(building_key(self.name)) {
                tracing::warn!(model = self.name, %error, "could not forget the abandoned rebuild");
            }
            // Unless it was emptied for this rebuild to fill: it would answer
            // empty for good.
            if serving.awaits_rebuild.load(Ordering::Acquire) {
                let _ = serving.stopped.set(format!("emptied for a new format, its rebuild failed ({error})"));
                self.position.send_modify(|_| {});
            }
        } else {
            // The first failure is the one that stopped it.
            let _ = generation.stopped.set(format!("it stopped at an event ({error})"));
            // Wake whoever waits for a position: it will not come (see `wait_for`).
            self.position.send_modify(|_| {});
        }
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
    }
}

/// The tree of generation `number` of `model`, and its key in the checkpoints tree.
pub(crate) fn tree_name(model: &str, number: u64) -> String {
    format!("{model}.g{number}")
}

/// The generation `tree` holds, when it is one of `model`'s ([`tree_name`]).
fn generation_number(model: &str, tree: &str) -> Option<u64> {
    tree.strip_prefix(model)?.strip_prefix(".g")?.parse().ok()
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

/// Write one batch of a generation being built (by a rebuild or a replay): its
/// changes key by key, then its checkpoint. Not atomic: a crash throws such a
/// generation away whole (see ARCHITECTURE.md, Invariants). A transaction would
/// take sled's process-wide lock and stop the log's readers (the rebuild's own
/// among them) while it writes.
pub(crate) fn write_building(
    tree: &sled::Tree,
    checkpoints: &sled::Tree,
    tree_name: &str,
    batch: Writes,
    position: u64,
) -> Result<(), ProjectionError> {
    batch.write_each(tree)?;
    checkpoints.insert(tree_name.as_bytes(), &position.to_be_bytes())?;
    Ok(())
}

/// Apply to the generation's cache the events of `events` past its checkpoint
/// (those at or below it are in it already). Returns the writes and the new
/// checkpoint, or `None` when no event was new to it.
fn apply_events(
    slot: &Slot,
    generation: &Generation,
    cache: &mut Cache,
    events: &[Decoded],
) -> Result<Option<(Writes, u64)>, ProjectionError> {
    let start = generation.checkpoint();
    let mut position = start;
    for decoded in events.iter().filter(|decoded| decoded.envelope.position > start) {
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
    if position == start {
        return Ok(None);
    }
    Ok(Some((cache.take_batch()?, position)))
}

/// Apply `events` to a generation being rebuilt and write its batch.
fn commit_building(slot: &Slot, generation: &Generation, events: &[Decoded]) -> Result<(), ProjectionError> {
    let mut cache = generation.cache.lock().unwrap_or_else(PoisonError::into_inner);
    let committed = apply_events(slot, generation, &mut cache, events).and_then(|applied| {
        if let Some((writes, position)) = applied {
            write_building(&generation.tree, &generation.checkpoints, &generation.tree_name, writes, position)?;
            cache.trim();
            generation.checkpoint.store(position, Ordering::Release);
        }
        Ok(())
    });
    if committed.is_err() {
        // What the cache holds may not be what the tree holds now.
        cache.reset(false);
    }
    committed
}

/// A serving generation the live worker applies events to.
struct Member {
    /// Its slot's place in `Work::Live::slots`.
    index: usize,
    slot: Arc<Slot>,
    generation: Arc<Generation>,
}

/// Apply `events` to every member, each from its own checkpoint, and write all
/// their changes and new checkpoints so that a crash keeps all of them or none,
/// and no model ever applies an event twice or skips one: first as one redo,
/// then key by key with plain inserts, then the redo goes (see `redo`; a sled
/// transaction takes sled's process-wide lock exclusively and seals its IO
/// buffer, which holds up every reader and appender and wakes sled's IO threads).
/// Returns what went wrong for each member (`None`: its events are written); a
/// model whose apply fails is left out of the write. When the write fails, every
/// model in it stops, and its redo stays to be written again at the next start.
fn commit_live(shared: &Shared, members: &[Member], events: &[Decoded]) -> Vec<Option<ProjectionError>> {
    let mut caches: Vec<_> =
        members.iter().map(|member| member.generation.cache.lock().unwrap_or_else(PoisonError::into_inner)).collect();
    let mut outcomes: Vec<Option<ProjectionError>> = members.iter().map(|_| None).collect();
    let mut applied = Vec::with_capacity(members.len());
    for (index, (member, cache)) in members.iter().zip(&mut caches).enumerate() {
        match apply_events(&member.slot, &member.generation, cache, events) {
            Ok(Some((writes, position))) => applied.push((index, writes, position)),
            Ok(None) => {}
            Err(error) => {
                cache.reset(false);
                outcomes[index] = Some(error);
            }
        }
    }
    if applied.is_empty() {
        return outcomes;
    }
    let mut redo = Redo::default();
    for (index, writes, position) in &applied {
        let generation = &members[*index].generation;
        writes.add_to(&mut redo, &generation.tree_name);
        redo.push(CHECKPOINTS_TREE, generation.tree_name.as_bytes(), Some(&position.to_be_bytes()));
    }
    let positions: Vec<(usize, u64)> = applied.iter().map(|(index, _, position)| (*index, *position)).collect();
    let sequence = shared.redo_sequence.fetch_add(1, Ordering::Relaxed);
    let written = redo.write(&shared.redo, sequence).and_then(|()| {
        for (index, writes, position) in applied {
            let generation = &members[index].generation;
            let _batch_whole = generation.batch_lock.write().unwrap_or_else(PoisonError::into_inner);
            // Torn until the batch is whole (a test halts after the first model's writes).
            generation.torn.store(true, Ordering::Release);
            writes.write_each(&generation.tree)?;
            #[cfg(test)]
            if shared.halt_before_checkpoints.load(Ordering::Acquire) {
                return Err(ProjectionError::Storage("halted part way through a batch (a test)".to_owned()));
            }
            generation.written.store(position, Ordering::Release);
            generation.torn.store(false, Ordering::Release);
        }
        #[cfg(test)]
        if let Some((reached, release)) =
            shared.batch_written_gate.lock().unwrap_or_else(PoisonError::into_inner).take()
        {
            let _ = reached.send(());
            let _ = release.recv();
        }
        for &(index, position) in &positions {
            let generation = &members[index].generation;
            generation.checkpoints.insert(generation.tree_name.as_bytes(), &position.to_be_bytes())?;
        }
        redo.remove(&shared.redo, sequence)
    });
    match written {
        Ok(()) => {
            for (index, position) in positions {
                caches[index].trim();
                members[index].generation.checkpoint.store(position, Ordering::Release);
            }
        }
        Err(error) => {
            let reason = format!("writing the read models: {error}");
            for (index, _) in positions {
                caches[index].reset(false);
                outcomes[index] = Some(ProjectionError::Storage(reason.clone()));
            }
        }
    }
    outcomes
}

/// What a worker projects.
enum Work {
    /// Every model's serving generation, all written together, one batch at a time.
    /// `failed` holds, per slot, the generation whose apply or write failed: it
    /// is left out until a rebuild replaces it.
    Live { slots: Vec<Arc<Slot>>, failed: Vec<Option<u64>> },
    /// One model's generation being rebuilt, until it has caught up and serves
    /// (from then on the live worker applies to it).
    Rebuild { slot: Arc<Slot>, generation: Arc<Generation> },
}

impl Work {
    /// The serving generations the live worker applies the next batch to.
    fn members(&self) -> Vec<Member> {
        let Work::Live { slots, failed } = self else {
            return Vec::new();
        };
        slots
            .iter()
            .enumerate()
            .map(|(index, slot)| Member { index, slot: Arc::clone(slot), generation: slot.active() })
            .filter(|member| failed[member.index] != Some(member.generation.number))
            .collect()
    }

    /// Whose work it is, for errors.
    fn name(&self) -> &'static str {
        match self {
            Work::Live { .. } => "read models",
            Work::Rebuild { slot, .. } => slot.name,
        }
    }

    /// The first position some generation still needs.
    fn next_position(&self, members: &[Member]) -> u64 {
        match self {
            Work::Live { .. } => members.iter().map(|member| member.generation.checkpoint()).min().unwrap_or(0) + 1,
            Work::Rebuild { generation, .. } => generation.checkpoint() + 1,
        }
    }
}

/// What a batch's task hands back: the events' buffer, emptied, and for the live
/// worker its members with what went wrong for each.
type Committed = (Vec<Decoded>, Option<(Vec<Member>, Vec<Option<ProjectionError>>)>);

async fn run_worker(shared: Arc<Shared>, mut work: Work) {
    loop {
        let Err(error) = project(&shared, &mut work).await else {
            return;
        };
        match &mut work {
            Work::Rebuild { slot, generation } => {
                slot.fail(generation, &error);
                return;
            }
            Work::Live { slots, failed } => {
                // Reading the log failed (or a batch's task panicked): every
                // serving model stops where it is. The live worker goes on, so
                // that a model rebuilt from now on serves live again.
                for (slot, failed) in slots.iter().zip(failed.iter_mut()) {
                    let generation = slot.active();
                    if *failed != Some(generation.number) {
                        slot.fail(&generation, &error);
                        *failed = Some(generation.number);
                    }
                }
                let mut stop = shared.stop.subscribe();
                if *stop.borrow_and_update() {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(ALL_FAILED_PAUSE) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

/// Events a worker reads and decodes in one go, between looks at its batch's
/// task; a rebuild reads larger chunks (each chunk starts a new sled iterator,
/// which copies the leaf it starts in).
const READ_CHUNK_LEN: usize = 512;
const REBUILD_READ_CHUNK_LEN: usize = 4096;

/// How long the live worker waits before it looks again when every model has
/// failed (a rebuild brings one back), or after reading the log failed.
const ALL_FAILED_PAUSE: Duration = Duration::from_millis(50);

fn decode_into(batch: &mut Vec<Decoded>, event: &store::EventRef<'_>) -> Result<(), ProjectionError> {
    batch.push(Decoded::of_ref(event)?);
    Ok(())
}

/// Where the last append of `batch` begins; the batch's length (nothing to carry)
/// when the whole batch is one append (an append longer than a batch is applied
/// in pieces: nothing else can be done).
fn last_append_start(batch: &[Decoded]) -> usize {
    let Some(last) = batch.last() else {
        return 0;
    };
    let start = batch.iter().rposition(|event| !event.same_append(last)).map_or(0, |before| before + 1);
    if start == 0 { batch.len() } else { start }
}

async fn project(shared: &Arc<Shared>, work: &mut Work) -> Result<(), ProjectionError> {
    let log = &shared.log;
    let options = &shared.options;
    let live = matches!(work, Work::Live { .. });
    // A rebuild writes larger batches unless told to go gently: its records
    // change again and again (a product's stock), and each batch writes each
    // changed record once.
    let batch_len_max = match (live, options.rebuild_batch_pause) {
        (false, None) => options.batch_len_max.max(REBUILD_BATCH_LEN_MAX),
        _ => options.batch_len_max.max(1),
    };
    let read_chunk_len = if live { READ_CHUNK_LEN } else { REBUILD_READ_CHUNK_LEN };
    let mut stop = match &*work {
        Work::Live { .. } => shared.stop.subscribe(),
        Work::Rebuild { generation, .. } => generation.stop.subscribe(),
    };
    let mut subscription = log.subscribe(work.next_position(&work.members()));
    // The events read and decoded for the next batch: decoding is done here,
    // beside the blocking task that applies and writes the batch before it. The
    // task hands its batch's buffer back, emptied, for the batch after: two
    // buffers in turn, allocated once at full size (a rebuild's are some MB;
    // growing and freeing them batch after batch cost a tenth of its time).
    let mut batch = Vec::with_capacity(batch_len_max);
    let mut spare: Option<Vec<Decoded>> = None;
    loop {
        if *stop.borrow_and_update() {
            return Ok(());
        }
        if let Work::Rebuild { slot, generation } = &*work
            && generation.checkpoint() >= log.head()
        {
            // Caught up: it serves from now on, and the live worker takes it on
            // (unless the serving generation got ahead meanwhile: read on).
            let (slot_name, slot, generation) = (slot.name, Arc::clone(slot), Arc::clone(generation));
            let switched = tokio::task::spawn_blocking(move || slot.switch_to(&generation))
                .await
                .map_err(|error| ProjectionError::Stopped { model: slot_name, reason: error.to_string() })??;
            if switched {
                return Ok(());
            }
        }
        let mut members = work.members();
        if live && members.is_empty() {
            tokio::select! {
                () = tokio::time::sleep(ALL_FAILED_PAUSE) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        // The generations may have changed since the last batch (a rebuilt one
        // serves now, a failed one is left out): read from where the one
        // furthest behind stands.
        let next = work.next_position(&members);
        if batch.first().is_some_and(|event: &Decoded| event.envelope.position > next)
            || (batch.is_empty() && subscription.next_position() != next)
        {
            batch.clear();
            subscription = log.subscribe(next);
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
        if live {
            // Waiting for the first event may have taken a while: a generation
            // that began to serve meanwhile is in this batch too.
            members = work.members();
            if members.is_empty()
                || batch.first().is_some_and(|event| event.envelope.position > work.next_position(&members))
            {
                continue;
            }
        }
        // A full live batch may end inside an append (a checkout's order, stock
        // reservations and cart): its last append goes to the next batch, so that
        // a query never sees part of one, nor a position no command answered.
        let carried = match live && batch.len() >= batch_len_max {
            true => batch.split_off(last_append_start(&batch)),
            false => Vec::new(),
        };
        let mut next = spare.take().unwrap_or_else(|| Vec::with_capacity(batch_len_max));
        next.extend(carried);
        let mut events = std::mem::replace(&mut batch, next);
        let mut task = match &*work {
            Work::Live { .. } => {
                let shared = Arc::clone(shared);
                tokio::task::spawn_blocking(move || {
                    let outcomes = commit_live(&shared, &members, &events);
                    // The events are dropped here, off the worker's thread.
                    events.clear();
                    Ok::<Committed, ProjectionError>((events, Some((members, outcomes))))
                })
            }
            Work::Rebuild { slot, generation } => {
                let (slot, generation) = (Arc::clone(slot), Arc::clone(generation));
                tokio::task::spawn_blocking(move || {
                    commit_building(&slot, &generation, &events)?;
                    events.clear();
                    Ok((events, None))
                })
            }
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
        let (emptied, live_outcomes) = joined.map_err(|error| ProjectionError::Stopped {
            model: work.name(),
            reason: format!("a batch task failed: {error}"),
        })??;
        spare = Some(emptied);
        if let (Some((members, outcomes)), Work::Live { failed, .. }) = (live_outcomes, &mut *work) {
            for (member, outcome) in members.iter().zip(outcomes) {
                match outcome {
                    None => member.slot.publish(&member.generation, member.generation.checkpoint()),
                    Some(error) => {
                        member.slot.fail(&member.generation, &error);
                        failed[member.index] = Some(member.generation.number);
                    }
                }
            }
        }
        if let Some(error) = read_error {
            return Err(error);
        }
        if !live && let Some(pause) = options.rebuild_batch_pause {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
        if !live && let Some(gate) = &options.rebuild_gate {
            // `wait_for`, not `changed`: a stop seen before (by the pause) still passes.
            tokio::select! {
                () = gate.pass() => {}
                _ = stop.wait_for(|stopped| *stopped) => {}
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
    /// Start the live worker on the current tokio runtime, every model from its
    /// checkpoint, with default options.
    pub fn start(log: EventLog) -> Result<Projections, ProjectionError> {
        Self::start_with(log, Options::default())
    }

    /// Start with `options`. A live batch a crash interrupted is written again
    /// whole from its redo; a rebuild a crash interrupted is abandoned (its trees
    /// emptied); the generation that served goes on serving.
    pub fn start_with(log: EventLog, options: Options) -> Result<Projections, ProjectionError> {
        let meta = log.open_tree(META_TREE)?;
        let recovered = crate::redo::recover(&log, &meta)?;
        if recovered.batches > 0 {
            tracing::info!(batches = recovered.batches, "read-model batches written again from their redo");
        }
        let shared = Arc::new(Shared {
            checkpoints: log.open_tree(CHECKPOINTS_TREE)?,
            redo: log.open_tree(REDO_TREE)?,
            redo_sequence: AtomicU64::new(0),
            #[cfg(test)]
            halt_before_checkpoints: AtomicBool::new(false),
            #[cfg(test)]
            switch_flush_gate: Mutex::new(None),
            #[cfg(test)]
            batch_written_gate: Mutex::new(None),
            meta,
            log,
            options,
            workers: Mutex::new(Vec::new()),
            droppers: Droppers::default(),
            closed: AtomicBool::new(false),
            stop: watch::Sender::new(false),
        });
        let mut slots = Vec::with_capacity(MODELS.len());
        let mut failed = Vec::with_capacity(MODELS.len());
        let mut emptied = Vec::new();
        for (name, apply) in MODELS {
            let (slot, of_another_format) = open_slot(&shared, name, *apply)?;
            // A generation emptied for its format is rebuilt by a worker of its
            // own (below), in large batches, while the live worker goes on
            // with the other models.
            failed.push(of_another_format.then(|| slot.active().number));
            if of_another_format {
                emptied.push(slot.name);
            }
            slots.push(slot);
        }
        spawn(&shared, Work::Live { failed, slots: slots.clone() });
        let mut slots = slots.into_iter();
        let mut next = || {
            slots
                .next()
                .ok_or_else(|| ProjectionError::Stopped { model: "runtime", reason: "a model is missing".into() })
        };
        let projections = Projections {
            catalog: Catalog { slot: next()? },
            carts: Carts { slot: next()? },
            orders: Orders { slot: next()? },
            dashboard: Dashboard { slot: next()? },
            shared,
        };
        for name in emptied {
            projections.rebuild(name)?;
        }
        Ok(projections)
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

    /// The first read model whose serving generation answers no query, and why.
    pub fn refusing(&self) -> Option<(&'static str, String)> {
        self.slots().iter().find_map(|slot| slot.stopped().map(|reason| (slot.name, reason)))
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
        let number = slot.next_number.fetch_add(1, Ordering::AcqRel);
        self.shared.meta.insert(building_key(slot.name), &number.to_be_bytes())?;
        let generation = Arc::new(Generation::open(&self.shared, slot.name, number)?);
        generation.clear()?;
        *building = Some(Arc::clone(&generation));
        *slot.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
        drop(building);
        spawn(&self.shared, Work::Rebuild { slot: Arc::clone(slot), generation });
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
        // The retired generations the workers let go of are being dropped, each
        // on a thread holding a handle of the log: the log closes after them.
        let droppers = std::mem::take(&mut *self.shared.droppers.lock().unwrap_or_else(PoisonError::into_inner));
        let joined = tokio::task::spawn_blocking(move || droppers.into_iter().all(|thread| thread.join().is_ok()));
        if !matches!(joined.await, Ok(true)) {
            tracing::error!("a thread dropping a retired read-model generation panicked");
        }
    }

    fn stop_all(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.stop.send_replace(true);
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

/// The slot of model `name`, and whether its serving generation was emptied for
/// being of another format than this binary's (then it is to be rebuilt).
fn open_slot(shared: &Arc<Shared>, name: &'static str, apply: ApplyFn) -> Result<(Arc<Slot>, bool), ProjectionError> {
    let bad = |what: &str| ProjectionError::Corrupt { model: "projections", reason: format!("{what} of {name}") };
    let format = format_of(name);
    let active_number = match shared.meta.get(name.as_bytes())? {
        Some(bytes) => be_u64(&bytes).ok_or_else(|| bad("the active generation"))?,
        None => {
            let mut first = sled::Batch::default();
            first.insert(name.as_bytes(), &1u64.to_be_bytes());
            first.insert(format_key(name), &format.to_be_bytes());
            shared.meta.apply_batch(first)?;
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
    // A generation retired by a switch is dropped once nothing holds it; a crash
    // in between leaves its tree behind. No other generation than the active
    // one is of any use now (the one being rebuilt was abandoned above).
    for leftover in shared.log.own_trees() {
        if generation_number(name, &leftover).is_some_and(|number| number != active_number) {
            tracing::info!(model = name, tree = leftover, "dropping a read-model generation left behind");
            shared.checkpoints.remove(leftover.as_bytes())?;
            shared.log.drop_tree(&leftover)?;
        }
    }
    let generation = Arc::new(Generation::open(shared, name, active_number)?);
    let stored_format = match shared.meta.get(format_key(name))? {
        Some(bytes) => <[u8; 4]>::try_from(&bytes[..]).map(u32::from_be_bytes).map_err(|_| bad("the format"))?,
        None => 1,
    };
    let of_another_format = stored_format != format;
    if of_another_format {
        // Emptied, so that no query reads records of the other format. The
        // format is recorded when the rebuilt generation switches in: a crash
        // before that empties and rebuilds again at the next open.
        tracing::warn!(
            model = name,
            stored_format,
            format,
            "read model stored in another format: emptied, and rebuilt from the log"
        );
        generation.clear()?;
        generation.awaits_rebuild.store(true, Ordering::Release);
    }
    let slot = Arc::new(Slot {
        name,
        apply,
        shared: Arc::clone(shared),
        position: watch::Sender::new(generation.checkpoint()),
        generation: watch::Sender::new(generation.number),
        active: RwLock::new(generation),
        building: Mutex::new(None),
        failure: Mutex::new(None),
        // Every other generation was dropped above.
        next_number: AtomicU64::new(active_number + 1),
    });
    Ok((slot, of_another_format))
}

fn spawn(shared: &Arc<Shared>, work: Work) {
    let worker = tokio::spawn(run_worker(Arc::clone(shared), work));
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

#[cfg(test)]
mod tests {
    use domain::{ProductCreated, ProductName, ProductRestocked, RestockQuantity, Sku, Stock};
    use store::{AppendRequest, ExpectedVersion, Metadata};

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// A log holding the mug (created with 5, restocked 3 times) and a runtime
    /// whose models have caught up with it.
    async fn a_mug_caught_up(dir: &std::path::Path) -> (EventLog, Projections) {
        let log = EventLog::open(dir).expect("a log");
        let projections = Projections::start(log.clone()).expect("starts");
        append(&log, mug_created()).await;
        restock_mug(&log, 3).await;
        projections.wait_for(log.head(), WAIT).await.expect("the models catch up");
        (log, projections)
    }

    /// `times` restocks of one unit of the mug, an append each.
    async fn restock_mug(log: &EventLog, times: usize) {
        for _ in 0..times {
            let mug = Sku::parse("mug").expect("a sku");
            append(log, ProductRestocked { sku: mug, quantity: RestockQuantity::new(1).expect("1") }.into()).await;
        }
    }

    async fn append(log: &EventLog, event: Event) {
        append_together(log, &[event]).await;
    }

    /// `events`, all of one stream, in one append (one command's).
    async fn append_together(log: &EventLog, events: &[Event]) {
        let metadata = Metadata {
            actor: "test".to_owned(),
            correlation_id: uuid::Uuid::now_v7(),
            causation_id: uuid::Uuid::now_v7(),
        };
        let stream = events.first().expect("an event").stream().to_string();
        let new_events = events.iter().map(|event| commands::codec::to_new_event(event).expect("encodes")).collect();
        log.append(AppendRequest::single(stream, ExpectedVersion::Any, new_events, metadata)).await.expect("appends");
    }

    /// A live batch that fills up never ends inside an append: a model only ever
    /// publishes the last position of an append, so no query sees part of one
    /// (a checkout's order without its reservations, say).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_live_batch_ends_where_an_append_ends() {
        const APPENDS: usize = 40;
        let dir = tempfile::tempdir().expect("a temp dir");
        let log = EventLog::open(dir.path()).expect("a log");
        append(&log, mug_created()).await;
        let mut ends = vec![log.head()];
        for _ in 0..APPENDS {
            let restock = Event::from(ProductRestocked {
                sku: Sku::parse("mug").expect("a sku"),
                quantity: RestockQuantity::new(1).expect("1"),
            });
            append_together(&log, &[restock.clone(), restock.clone(), restock]).await;
            ends.push(log.head());
        }

        let options = Options { batch_len_max: 4, ..Options::default() };
        let projections = Projections::start_with(log.clone(), options).expect("starts");
        let mut published = projections.catalog().slot.position.subscribe();
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while *published.borrow_and_update() < log.head() {
            seen.push(*published.borrow());
            tokio::time::timeout_at(deadline, published.changed()).await.expect("catches up").expect("runs");
        }
        seen.push(*published.borrow());
        seen.dedup();
        assert!(seen.len() > APPENDS / 4, "too few positions seen to tell: {seen:?}");
        for position in seen.into_iter().filter(|position| *position > 0) {
            assert!(ends.contains(&position), "published {position}, inside an append (ends: {ends:?})");
        }
        let mug = projections.catalog().get(&Sku::parse("mug").expect("a sku")).expect("reads").value.expect("a mug");
        assert_eq!(mug.on_hand, 5 + 3 * APPENDS as u32, "every restock counted once");
        projections.shutdown().await;
    }

    /// A mug with 5 units in stock.
    fn mug_created() -> Event {
        ProductCreated {
            sku: Sku::parse("mug").expect("a sku"),
            name: ProductName::parse("Mug").expect("a name"),
            price_cents: domain::PriceCents::new(500).expect("a price"),
            initial_stock: Stock::new(5).expect("a stock"),
        }
        .into()
    }

    /// What a failed write or a crash part way through a live batch leaves: the
    /// catalog's record counts the restock, its checkpoint does not. Until a
    /// restart the catalog answers no query (it could hold part of a batch). At
    /// the next start the redo writes the batch again whole, so the restock is
    /// counted once (applying it again from the old checkpoint would count it
    /// twice).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_cut_short_before_its_checkpoints_is_written_whole_at_the_next_start() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let log = EventLog::open(dir.path()).expect("a log");
        let mug = Sku::parse("mug").expect("a sku");
        let projections = Projections::start(log.clone()).expect("starts");
        append(&log, mug_created()).await;
        projections.wait_for(log.head(), WAIT).await.expect("the models catch up");

        projections.shared.halt_before_checkpoints.store(true, Ordering::Release);
        let restocked = ProductRestocked { sku: mug.clone(), quantity: RestockQuantity::new(3).expect("a quantity") };
        append(&log, restocked.into()).await;
        let deadline = std::time::Instant::now() + WAIT;
        while projections.status().iter().any(|status| status.failure.is_none()) {
            assert!(std::time::Instant::now() < deadline, "every model stops at the halted batch");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The catalog holds part of the batch under its old checkpoint: it
        // answers nothing rather than that.
        let refused = projections.catalog().get(&mug).expect_err("a torn model answers no query");
        assert!(matches!(refused, ProjectionError::Stopped { model: "catalog", .. }), "{refused:?}");
        projections.shutdown().await;
        let checkpoints = log.open_tree(CHECKPOINTS_TREE).expect("the checkpoints");
        assert_eq!(read_checkpoint(&checkpoints, "catalog.g1").expect("reads"), 1, "the checkpoint was not written");
        assert!(!log.open_tree(crate::redo::REDO_TREE).expect("the redo").is_empty(), "the redo stays");

        let projections = Projections::start(log.clone()).expect("restarts");
        assert_eq!(read_checkpoint(&checkpoints, "catalog.g1").expect("reads"), 2, "the redo wrote the checkpoint");
        projections.wait_for(log.head(), WAIT).await.expect("the models catch up");
        let view = projections.catalog().get(&mug).expect("reads").value.expect("the mug is in the catalog");
        assert_eq!(view.on_hand, 8, "5 created and 3 restocked, each counted once");
        projections.shutdown().await;
    }

    /// A rebuilt generation that caught up with the head while the serving one
    /// then went on (and published a later position) does not switch in: the
    /// position, which never goes back, would claim events it lacks. Once it has
    /// them, it switches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rebuilt_generation_behind_the_published_position_does_not_switch_in() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (_log, projections) = a_mug_caught_up(dir.path()).await;
        let slot = projections.slot("catalog").expect("a slot");
        let published = slot.position();
        assert_eq!(published, 4);

        let rebuilt = Arc::new(Generation::open(&projections.shared, "catalog", 2).expect("opens"));
        rebuilt.checkpoint.store(published - 1, Ordering::Release);
        assert!(!slot.switch_to(&rebuilt).expect("no error"), "switched in behind the published position");
        assert_eq!((slot.generation(), slot.position()), (1, published), "nothing changed");

        rebuilt.checkpoint.store(published, Ordering::Release);
        assert!(slot.switch_to(&rebuilt).expect("no error"), "caught up with the published position");
        assert_eq!((slot.generation(), slot.position()), (2, published));
        projections.shutdown().await;
    }

    /// A `?min_position` wait follows the generation that serves: when a
    /// rebuilt one switches in during the wait and then stops, the wait ends
    /// with the stop at once instead of running out its time on the generation
    /// it began on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wait_ends_when_the_generation_switched_in_meanwhile_stops() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (log, projections) = a_mug_caught_up(dir.path()).await;
        let slot = Arc::clone(projections.slot("catalog").expect("a slot"));
        let waiting = tokio::spawn({
            let slot = Arc::clone(&slot);
            let beyond = log.head() + 1;
            async move { slot.wait_for(beyond, WAIT).await }
        });
        let deadline = std::time::Instant::now() + WAIT;
        while slot.position.receiver_count() == 0 {
            assert!(std::time::Instant::now() < deadline, "the wait never began");
            tokio::task::yield_now().await;
        }

        let rebuilt = Arc::new(Generation::open(&projections.shared, "catalog", 2).expect("opens"));
        rebuilt.checkpoint.store(slot.position(), Ordering::Release);
        assert!(slot.switch_to(&rebuilt).expect("no error"), "switched");
        slot.fail(&rebuilt, &ProjectionError::Stopped { model: "catalog", reason: "a test's failure".into() });

        let ended = tokio::time::timeout(Duration::from_secs(3), waiting)
            .await
            .expect("the wait ends when the serving generation stops, not at its timeout")
            .expect("the wait's task ends");
        let stopped = ended.expect_err("the position never comes");
        assert!(matches!(stopped, ProjectionError::Stopped { model: "catalog", .. }), "{stopped:?}");
        projections.shutdown().await;
    }

    /// A model emptied at start for being of another format, whose rebuild then
    /// fails, answers nothing (503) rather than empty answers for good, and
    /// says so; a rebuild brings it back, and its failure is then over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_model_emptied_for_its_format_whose_rebuild_failed_answers_nothing_until_rebuilt() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (log, projections) = a_mug_caught_up(dir.path()).await;
        projections.shutdown().await;
        log.open_tree(META_TREE).expect("the meta tree").remove(format_key("dashboard")).expect("removes");

        let gate = RebuildGate::closed();
        let options = Options { rebuild_gate: Some(gate.clone()), ..Options::default() };
        let projections = Projections::start_with(log.clone(), options).expect("restarts");
        // The dashboard's format is 2: a log with none recorded is of format 1.
        let slot = projections.slot("dashboard").expect("a slot");
        let building = slot.building.lock().unwrap_or_else(PoisonError::into_inner).clone().expect("rebuilding");
        slot.fail(&building, &ProjectionError::Stopped { model: "dashboard", reason: "a test's failure".into() });
        drop(building);
        let refused = projections.dashboard().sales().expect_err("an emptied model whose rebuild failed");
        assert!(matches!(refused, ProjectionError::Stopped { model: "dashboard", .. }), "{refused:?}");
        assert_eq!(projections.refusing().map(|(model, _)| model), Some("dashboard"));

        let generation = projections.rebuild("dashboard").expect("a rebuild starts");
        // The serving generation fails meanwhile: what the status reports until the switch.
        slot.fail(&slot.active(), &ProjectionError::Stopped { model: "dashboard", reason: "serving".into() });
        assert!(projections.status().iter().any(|status| status.failure.is_some()));
        gate.open();
        projections.dashboard().wait_for_generation(generation, WAIT).await.expect("the rebuild serves");
        let sales = projections.dashboard().sales().expect("answers");
        assert_eq!(sales.position, log.head());
        assert_eq!(projections.refusing(), None);
        let status = projections.status().into_iter().find(|status| status.name == "dashboard").expect("listed");
        assert_eq!(status.failure, None, "the rebuilt generation serves; the failure is over");
        projections.shutdown().await;
    }

    /// A query's answer comes with the position it reflects, also when it runs
    /// after a batch's records are written and before the batch's checkpoint
    /// is recorded and published: a client that reads and then follows the live
    /// feed from the next position would otherwise apply an event twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_names_the_position_of_the_records_it_read() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (log, projections) = a_mug_caught_up(dir.path()).await;
        let (reached, written) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel();
        *projections.shared.batch_written_gate.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((reached, released));
        restock_mug(&log, 1).await;
        let read = tokio::task::spawn_blocking({
            let catalog = projections.catalog().clone();
            move || {
                written.recv_timeout(WAIT).expect("the batch was written");
                let answer = catalog.get(&Sku::parse("mug").expect("a sku"));
                let _ = release.send(());
                answer
            }
        });
        let answer = read.await.expect("the read ends").expect("reads");
        assert_eq!(answer.value.map(|mug| mug.on_hand), Some(5 + 3 + 1), "the batch's records");
        assert_eq!(answer.position, log.head(), "the position of the records read, not the last published");
        projections.shutdown().await;
    }

    /// A switch flushes the rebuilt generation (all it wrote, unflushed, while
    /// it was built) before it takes the lock that stops the model's queries:
    /// the model answers while that flush goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_switch_flushes_the_rebuilt_generation_before_it_stops_the_models_queries() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (_log, projections) = a_mug_caught_up(dir.path()).await;
        let slot = Arc::clone(projections.slot("catalog").expect("a slot"));
        let rebuilt = Arc::new(Generation::open(&projections.shared, "catalog", 2).expect("opens"));
        rebuilt.checkpoint.store(slot.position(), Ordering::Release);

        let (reached, at_flush) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel();
        *projections.shared.switch_flush_gate.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((reached, released));
        let switching = std::thread::spawn({
            let slot = Arc::clone(&slot);
            move || slot.switch_to(&rebuilt)
        });
        at_flush.recv_timeout(WAIT).expect("the switch reached its flush");
        let (answered, answer) = std::sync::mpsc::channel();
        let catalog = projections.catalog().clone();
        std::thread::spawn(move || {
            let mug = Sku::parse("mug").expect("a sku");
            let _ = answered.send(catalog.get(&mug).map(|view| view.value.map(|mug| mug.on_hand)));
        });
        let during_the_flush = answer.recv_timeout(Duration::from_secs(5));
        let _ = release.send(());
        assert!(switching.join().expect("the switch ends").expect("switches"), "switched");
        let on_hand = during_the_flush.expect("the catalog answered during the switch's flush").expect("reads");
        assert_eq!(on_hand, Some(5 + 3));
        assert_eq!(slot.generation(), 2);
        projections.shutdown().await;
    }

    /// A rebuild asked for right after one failed gets a number of its own: the
    /// failed generation's tree is dropped beside it, and reusing its number
    /// would have the drop remove what the new rebuild writes. The failed tree
    /// goes, and the new generation serves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rebuild_after_a_failed_one_never_reuses_its_generation() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let log = EventLog::open(dir.path()).expect("a log");
        // Slow rebuilds (a batch an event, 100 ms apart), so the first is still
        // building when it is failed.
        let options =
            Options { batch_len_max: 1, rebuild_batch_pause: Some(Duration::from_millis(100)), rebuild_gate: None };
        let projections = Projections::start_with(log.clone(), options).expect("starts");
        append(&log, mug_created()).await;
        let mug = Sku::parse("mug").expect("a sku");
        restock_mug(&log, 3).await;
        projections.wait_for(log.head(), WAIT).await.expect("the models catch up");
        let slot = projections.slot("catalog").expect("a slot");

        let failed = projections.rebuild("catalog").expect("a rebuild starts");
        let building = slot.building.lock().unwrap_or_else(PoisonError::into_inner).clone().expect("building");
        slot.fail(&building, &ProjectionError::Stopped { model: "catalog", reason: "a test's failure".into() });
        drop(building);
        let retried = projections.rebuild("catalog").expect("a rebuild starts again");
        assert_ne!(retried, failed, "the retry reused the failed generation's number");
        projections.catalog().wait_for_generation(retried, WAIT).await.expect("the retry serves");
        let deadline = std::time::Instant::now() + WAIT;
        while log.has_tree(&tree_name("catalog", failed)) {
            assert!(std::time::Instant::now() < deadline, "the failed generation was never dropped");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let view = projections.catalog().get(&mug).expect("reads").value.expect("the retry holds the mug");
        assert_eq!(view.on_hand, 5 + 3, "created with 5, restocked 3 times");
        projections.shutdown().await;
    }

    /// A crash between a switch made durable and the old generation's drop
    /// leaves the old tree behind; the next start drops it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_generation_a_crash_left_behind_is_dropped_at_the_next_start() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let log = EventLog::open(dir.path()).expect("a log");
        let projections = Projections::start(log.clone()).expect("starts");
        append(&log, mug_created()).await;
        projections.wait_for(log.head(), WAIT).await.expect("the models catch up");
        // Each drop takes a while: the shutdown must wait for it.
        DROP_DELAY_MS.store(300, Ordering::Relaxed);
        let generation = projections.rebuild("catalog").expect("a rebuild starts");
        projections.catalog().wait_for_generation(generation, WAIT).await.expect("switches");
        projections.shutdown().await;
        // The retired generation goes on a thread of its own, which the shutdown
        // waits for (the thread holds a handle of the log, which closes after it).
        assert!(!log.has_tree("catalog.g1"), "the shutdown left the retired generation being dropped");
        DROP_DELAY_MS.store(0, Ordering::Relaxed);
        // What the crash left: the old generation's tree and checkpoint.
        log.open_tree("catalog.g1").expect("a tree").insert(b"k", b"v".as_slice()).expect("writes");
        log.open_tree("checkpoints").expect("a tree").insert(b"catalog.g1", &1u64.to_be_bytes()).expect("writes");
        let leftover = |log: &EventLog| {
            log.own_trees().into_iter().filter(|name| name.starts_with("catalog.g")).collect::<Vec<_>>()
        };
        assert_eq!(leftover(&log), ["catalog.g1", "catalog.g2"]);

        let projections = Projections::start(log.clone()).expect("starts again");
        assert_eq!(leftover(&log), ["catalog.g2"], "the left-behind generation is dropped");
        assert!(log.open_tree("checkpoints").expect("a tree").get(b"catalog.g1").expect("reads").is_none());
        assert_eq!(projections.catalog().generation(), 2);
        assert!(log.has_tree("carts.g1"), "other models' serving generations stay");
        projections.wait_for(log.head(), WAIT).await.expect("the models serve");
        projections.shutdown().await;
    }
}
