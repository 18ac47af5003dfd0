//! Offline rebuilds (`shoplog replay`) and the read-model checks of `shoplog verify`.
//!
//! [`replay`] builds the chosen read models from position 1 into a fresh
//! generation each (the active one + 1, emptied first), reading the log once:
//! two readers (the calling thread and a helper) read and decode pages of events
//! in turn, each event once, and one thread per model applies every page in
//! order and writes its batches, each followed by the model's checkpoint, key by
//! key like a rebuild in the runtime (no transaction: until the switch the
//! generation is `<model>.building`, which a crash throws away whole). Once
//! every model reached the target position
//! the new generations become the active ones, durably, and the old
//! generations' trees and checkpoints are emptied.
//!
//! It runs with the log opened by this process alone (the server stopped): it
//! must never run beside a [`crate::Projections`] runtime on the same log. A
//! replay that stops part way (an error, a crash) leaves the active generations
//! as they were; what it built is marked `<model>.building` and emptied by the
//! next replay or the next start of the runtime. A replay that stops before the
//! head (`to_position`) leaves checkpoints there, and the runtime catches up from
//! them when the server starts.
//!
//! A model's records are read through a cache of what this replay wrote and read
//! (`records::Cache`: bounded, emptied when full), kept typed as `apply`
//! put them, so the batch's reads mostly never reach sled nor decode anything,
//! and a batch encodes and writes each changed record once, skipping removals of
//! records that were never stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use store::EventLog;

use crate::error::ProjectionError;
use crate::records::{Cache, Decoded, be_u64};
use crate::runtime::{
    ApplyFn, CHECKPOINTS_TREE, META_TREE, MODELS, building_key, format_key, format_of, index_of, read_checkpoint,
    tree_name, write_building,
};

/// Pages each reader reads ahead of the slowest model.
const PAGES_AHEAD: usize = 2;

/// Threads reading and decoding the log, the calling one included.
const READERS: usize = 2;

/// How [`replay_with`] runs. The defaults are what `shoplog replay` uses; tests
/// make the pages, batches and caches tiny to go through every path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayOptions {
    /// The model to rebuild; every model when `None`.
    pub model: Option<String>,
    /// The last position to apply; the head when `None`.
    pub to_position: Option<u64>,
    /// Events read and decoded as one page, shared by every model.
    pub page_len: usize,
    /// A model writes its batch once this many of its records changed, or once
    /// `batch_events_max` events were applied since the last one. Each record a
    /// batch changes costs a sled write (several µs) and the same records change
    /// again and again (a product's stock), so a large batch writes far less than
    /// one record per event.
    pub batch_records_max: usize,
    pub batch_events_max: u64,
    /// The most records a model's cache holds; past it, it is emptied after a batch.
    pub cache_len_max: usize,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            model: None,
            to_position: None,
            page_len: 4096,
            batch_records_max: 50_000,
            batch_events_max: 262_144,
            cache_len_max: 100_000,
        }
    }
}

/// What [`replay`] refuses, or what went wrong while it ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// No read model has this name.
    #[error("no read model named {name} (there are {known})")]
    UnknownModel { name: String, known: String },

    /// The position to stop at is past the log's head.
    #[error("position {to_position} is past the log's head {head}")]
    PastHead { to_position: u64, head: u64 },

    /// The position to stop at is inside one append: the models would hold
    /// part of one command's events (an order without its reservations).
    #[error(
        "position {to_position} splits the events one command appended together (positions {first} to {last}): \
         replay to {}", append_ends(*first, *last)
    )]
    SplitsAnAppend { to_position: u64, first: u64, last: u64 },

    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

/// The positions that end an append on either side of the one from `first` to `last`.
fn append_ends(first: u64, last: u64) -> String {
    match first {
        1 => last.to_string(),
        _ => format!("{} or {last}", first - 1),
    }
}

/// The first and last positions of the append that `position` cuts in two (its
/// event and the next one are of the same append), if it does. The events of one
/// append share their correlation id and their time.
fn append_split_at(log: &EventLog, position: u64) -> Result<Option<(u64, u64)>, ProjectionError> {
    const PAGE: usize = 256;
    let same = |a: &store::RecordedEvent, b: &store::RecordedEvent| {
        (a.correlation_id, a.recorded_at) == (b.correlation_id, b.recorded_at)
    };
    let around = log.read_all(position.max(1), 2)?;
    let [at, next] = around.as_slice() else { return Ok(None) };
    if position == 0 || !same(at, next) {
        return Ok(None);
    }
    let mut last = next.position;
    'forward: loop {
        let page = log.read_all(last + 1, PAGE)?;
        for event in &page {
            if !same(event, at) {
                break 'forward;
            }
            last = event.position;
        }
        if page.len() < PAGE {
            break;
        }
    }
    let mut first = at.position;
    'back: while first > 1 {
        let from = first.saturating_sub(PAGE as u64).max(1);
        let page = log.read_all(from, (first - from) as usize)?;
        if page.is_empty() {
            break;
        }
        for event in page.iter().rev() {
            if !same(event, at) {
                break 'back;
            }
            first = event.position;
        }
    }
    Ok(Some((first, last)))
}

impl From<sled::Error> for ReplayError {
    fn from(error: sled::Error) -> Self {
        ReplayError::Projection(error.into())
    }
}

impl From<store::StoreError> for ReplayError {
    fn from(error: store::StoreError) -> Self {
        ReplayError::Projection(error.into())
    }
}

/// A model [`replay`] built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayedModel {
    pub name: &'static str,
    /// The generation that serves now.
    pub generation: u64,
    /// The generation that served before, now emptied.
    pub previous_generation: u64,
    /// Where its thread spent its time.
    pub times: Times,
}

/// What [`replay`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub models: Vec<ReplayedModel>,
    /// Events read and applied (each to every model).
    pub events: u64,
    /// Every model's checkpoint now.
    pub position: u64,
    /// The log's head; a server started on this log applies `position + 1..=head`.
    pub head: u64,
    /// From the start to the new generations being durable and the old ones emptied.
    pub elapsed: Duration,
}

/// Where one read model stands on disk, for `shoplog verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointStatus {
    pub name: &'static str,
    /// The active generation; `None` when no runtime or replay ever built the model.
    pub generation: Option<u64>,
    /// The last position the active generation applied (0 when none, or unreadable).
    pub checkpoint: u64,
    /// What is wrong, if anything: an entry that does not decode, or a checkpoint
    /// past the log's head.
    pub problem: Option<String>,
}

/// Every read model's active generation and checkpoint, each checked against the
/// log's head. Writes nothing (opening the runtime's trees makes them, empty, if
/// they are missing).
pub fn checkpoints(log: &EventLog) -> Result<Vec<CheckpointStatus>, ProjectionError> {
    let meta = log.open_tree(META_TREE)?;
    let checkpoints = log.open_tree(CHECKPOINTS_TREE)?;
    let head = log.head();
    let mut statuses = Vec::with_capacity(MODELS.len());
    for (name, _) in MODELS {
        let mut status = CheckpointStatus { name, generation: None, checkpoint: 0, problem: None };
        match meta.get(name.as_bytes())? {
            None => {}
            Some(bytes) => match be_u64(&bytes) {
                None => status.problem = Some("its active generation is not a u64".to_owned()),
                Some(generation) => {
                    status.generation = Some(generation);
                    match read_checkpoint(&checkpoints, &tree_name(name, generation)) {
                        Ok(checkpoint) if checkpoint > head => {
                            status.checkpoint = checkpoint;
                            status.problem = Some(format!("checkpoint {checkpoint} is past the log's head {head}"));
                        }
                        Ok(checkpoint) => status.checkpoint = checkpoint,
                        Err(ProjectionError::Corrupt { reason, .. }) => status.problem = Some(reason),
                        Err(other) => return Err(other),
                    }
                }
            },
        }
        statuses.push(status);
    }
    Ok(statuses)
}

/// Rebuild the read model `model` (every model when `None`) from the log, up to
/// `to_position` (the head when `None`), into a fresh generation that serves once
/// done. `progress` is told how many events every model has applied so far.
///
/// Refused before anything is written: an unknown model, a position past the
/// head. See the module docs for what a replay that stops part way leaves.
pub fn replay(
    log: &EventLog,
    model: Option<&str>,
    to_position: Option<u64>,
    progress: &mut dyn FnMut(u64),
) -> Result<ReplayReport, ReplayError> {
    let options = ReplayOptions { model: model.map(str::to_owned), to_position, ..ReplayOptions::default() };
    replay_with(log, &options, progress)
}

/// [`replay`] with every option.
pub fn replay_with(
    log: &EventLog,
    options: &ReplayOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    let selected: Vec<(&'static str, ApplyFn)> = match &options.model {
        None => MODELS.to_vec(),
        Some(name) => {
            let found = MODELS.iter().find(|(known, _)| known == name).ok_or_else(|| ReplayError::UnknownModel {
                name: name.clone(),
                known: MODELS.iter().map(|(known, _)| *known).collect::<Vec<_>>().join(", "),
            })?;
            vec![*found]
        }
    };
    let head = log.head();
    let target = options.to_position.unwrap_or(head);
    if target > head {
        return Err(ReplayError::PastHead { to_position: target, head });
    }
    if let Some((first, last)) = append_split_at(log, target)? {
        return Err(ReplayError::SplitsAnAppend { to_position: target, first, last });
    }
    let meta = log.open_tree(META_TREE)?;
    let checkpoints = log.open_tree(CHECKPOINTS_TREE)?;
    // A live batch a crash cut short is written whole first, so that the models
    // this replay leaves alone are sound too.
    crate::redo::recover(log, &meta)?;

    let mut builds = Vec::with_capacity(selected.len());
    for (name, apply) in selected {
        match Build::prepare(log, &meta, &checkpoints, name, apply, options) {
            Ok(build) => builds.push(build),
            Err(error) => {
                abandon(&meta, &builds);
                return Err(error.into());
            }
        }
    }
    let events = match run(log, &mut builds, target, options.page_len.clamp(1, 1 << 20), progress) {
        Ok(events) => events,
        Err(error) => {
            abandon(&meta, &builds);
            return Err(error.into());
        }
    };

    // The new generations serve from here on, durably, before the old ones go.
    let mut switch = sled::Batch::default();
    for build in &builds {
        switch.insert(build.name.as_bytes(), &build.generation.to_be_bytes());
        switch.insert(format_key(build.name), &format_of(build.name).to_be_bytes());
        switch.remove(building_key(build.name));
    }
    meta.apply_batch(switch)?;
    log.make_durable()?;
    for build in &builds {
        let old = tree_name(build.name, build.previous_generation);
        log.drop_tree(&old)?;
        checkpoints.remove(old.as_bytes())?;
    }
    log.make_durable()?;
    progress(events);
    Ok(ReplayReport {
        models: builds
            .iter()
            .map(|build| ReplayedModel {
                name: build.name,
                generation: build.generation,
                previous_generation: build.previous_generation,
                times: build.times,
            })
            .collect(),
        events,
        position: target,
        head,
        elapsed: started.elapsed(),
    })
}

/// Forget what a failed replay built, as far as possible; the active generations
/// never changed.
fn abandon(meta: &sled::Tree, builds: &[Build]) {
    for build in builds {
        let cleared = build
            .records
            .tree()
            .clear()
            .and_then(|()| build.checkpoints.remove(build.tree_name.as_bytes()).map(drop))
            .and_then(|()| meta.remove(building_key(build.name)).map(drop));
        if let Err(error) = cleared {
            tracing::warn!(model = build.name, %error, "could not empty an abandoned replay; the next start does");
        }
    }
}

type Page = Arc<Vec<Decoded>>;

/// Read and decode the log up to `target` while one thread per model applies the
/// pages; returns the number of events applied.
///
/// `READERS` readers (this thread and helpers) take pages in turn (reader `r`
/// reads pages `r`, `r + READERS`, …) and every model takes them in the same
/// turn, so each model sees the log in order while reading and decoding, the
/// largest cost after the dashboard's, use more than one core.
fn run(
    log: &EventLog,
    builds: &mut [Build],
    target: u64,
    page_len: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, ProjectionError> {
    let applied: Vec<AtomicU64> = builds.iter().map(|_| AtomicU64::new(0)).collect();
    let names: Vec<&'static str> = builds.iter().map(|build| build.name).collect();
    let spawn_failed = |error: std::io::Error| ProjectionError::Stopped {
        model: "replay",
        reason: format!("cannot start a thread: {error}"),
    };
    std::thread::scope(|scope| {
        let mut senders: Vec<Vec<mpsc::SyncSender<Page>>> = (0..READERS).map(|_| Vec::new()).collect();
        let mut workers = Vec::with_capacity(builds.len());
        for (build, applied) in builds.iter_mut().zip(&applied) {
            let mut receivers = Vec::with_capacity(READERS);
            for reader in &mut senders {
                let (sender, receiver) = mpsc::sync_channel::<Page>(PAGES_AHEAD);
                reader.push(sender);
                receivers.push(receiver);
            }
            let worker = std::thread::Builder::new()
                .name(format!("replay-{}", build.name))
                .spawn_scoped(scope, move || build.apply_pages(&receivers, applied))
                .map_err(spawn_failed)?;
            workers.push(worker);
        }
        let mut senders = senders.into_iter();
        let own = senders.next().unwrap_or_default();
        let mut helpers = Vec::with_capacity(READERS - 1);
        for (index, senders) in senders.enumerate() {
            let helper = std::thread::Builder::new()
                .name(format!("replay-read-{}", index + 1))
                .spawn_scoped(scope, move || read_pages(log, target, page_len, index + 1, &senders, &[], &mut |_| {}))
                .map_err(spawn_failed)?;
            helpers.push(helper);
        }
        let read = read_pages(log, target, page_len, 0, &own, &applied, progress);
        drop(own);
        let panicked = || ProjectionError::Stopped { model: "replay", reason: "a thread panicked".into() };
        let helpers: Vec<_> =
            helpers.into_iter().map(|helper| helper.join().unwrap_or_else(|_| Err(panicked()))).collect();
        let reached: Vec<_> =
            workers.into_iter().map(|worker| worker.join().unwrap_or_else(|_| Err(panicked()))).collect();
        // A model's own error explains a reader's failed send better than the
        // send does, and a reader's error explains a model that stopped short.
        let reached = reached.into_iter().collect::<Result<Vec<u64>, _>>()?;
        read?;
        helpers.into_iter().collect::<Result<Vec<()>, _>>()?;
        if let Some((name, reached)) = names.into_iter().zip(reached).find(|(_, reached)| *reached != target) {
            return Err(ProjectionError::Stopped {
                model: name,
                reason: format!("the replay stopped at position {reached}, not {target}"),
            });
        }
        Ok(target)
    })
}

/// Read and decode every `READERS`th page from page `first` on, and hand each to
/// every model; `progress` is told the least position all models applied.
fn read_pages(
    log: &EventLog,
    target: u64,
    page_len: usize,
    first: usize,
    senders: &[mpsc::SyncSender<Page>],
    applied: &[AtomicU64],
    progress: &mut dyn FnMut(u64),
) -> Result<(), ProjectionError> {
    let mut next = 1 + (first * page_len) as u64;
    while next <= target {
        let limit = usize::try_from(target - next + 1).unwrap_or(usize::MAX).min(page_len);
        // Each event is decoded straight from the stored record: nothing of the
        // envelope is copied but its position and time.
        let mut page = Vec::with_capacity(limit);
        let read = log.scan(next, limit, |event| {
            page.push(Decoded::of_ref(&event)?);
            Ok::<(), ProjectionError>(())
        })?;
        if read != limit {
            return Err(store::StoreError::Corrupt {
                position: next + read as u64,
                reason: "missing from the log".to_owned(),
            }
            .into());
        }
        let page = Arc::new(page);
        for sender in senders {
            if sender.send(Arc::clone(&page)).is_err() {
                // That model stopped; its thread's error says why, and comes first.
                return Err(ProjectionError::Stopped { model: "replay", reason: "a model stopped".into() });
            }
        }
        next += (READERS * page_len) as u64;
        if let Some(least) = applied.iter().map(|applied| applied.load(Ordering::Acquire)).min() {
            progress(least);
        }
    }
    Ok(())
}

/// One model being built into its next generation.
#[derive(Debug)]
struct Build {
    name: &'static str,
    apply: ApplyFn,
    generation: u64,
    previous_generation: u64,
    batch_records_max: usize,
    batch_events_max: u64,
    times: Times,
    tree_name: String,
    checkpoints: sled::Tree,
    records: Cache,
}

impl Build {
    /// Mark the next generation as being built and empty it (and any generation a
    /// crash left half built).
    fn prepare(
        log: &EventLog,
        meta: &sled::Tree,
        checkpoints: &sled::Tree,
        name: &'static str,
        apply: ApplyFn,
        options: &ReplayOptions,
    ) -> Result<Build, ProjectionError> {
        let bad = |what: &str| ProjectionError::Corrupt { model: "projections", reason: format!("{what} of {name}") };
        let active = match meta.get(name.as_bytes())? {
            Some(bytes) => be_u64(&bytes).ok_or_else(|| bad("the active generation"))?,
            // The runtime never ran: its first generation is empty.
            None => 1,
        };
        if let Some(bytes) = meta.get(building_key(name))? {
            let abandoned = be_u64(&bytes).ok_or_else(|| bad("the generation being rebuilt"))?;
            if abandoned != active {
                let abandoned = tree_name(name, abandoned);
                log.open_tree(&abandoned)?.clear()?;
                checkpoints.remove(abandoned.as_bytes())?;
            }
        }
        let generation = active + 1;
        meta.insert(building_key(name), &generation.to_be_bytes())?;
        let tree_name = tree_name(name, generation);
        let tree = log.open_tree(&tree_name)?;
        tree.clear()?;
        checkpoints.remove(tree_name.as_bytes())?;
        Ok(Build {
            name,
            apply,
            generation,
            previous_generation: active,
            batch_records_max: options.batch_records_max.max(1),
            batch_events_max: options.batch_events_max.max(1),
            times: Times::default(),
            tree_name,
            checkpoints: checkpoints.clone(),
            records: Cache::new(tree, index_of(name), options.cache_len_max, true),
        })
    }

    /// Apply the pages as the readers hand them out, in turn, writing a batch
    /// whenever it grew large enough; returns the position reached.
    fn apply_pages(&mut self, pages: &[mpsc::Receiver<Page>], applied: &AtomicU64) -> Result<u64, ProjectionError> {
        let (mut committed, mut position) = (0, 0);
        let mut clock = Instant::now();
        let mut lap = |total: &mut Duration| {
            let now = Instant::now();
            *total += now - clock;
            clock = now;
        };
        for reader in (0..pages.len()).cycle() {
            let Ok(page) = pages[reader].recv() else { break };
            lap(&mut self.times.waiting);
            for decoded in page.iter() {
                if decoded.envelope.position != position + 1 {
                    return Err(ProjectionError::Corrupt {
                        model: self.name,
                        reason: format!("expected position {} next, got {}", position + 1, decoded.envelope.position),
                    });
                }
                if let Some(event) = &decoded.event {
                    let changes = (self.apply)(&self.records, &decoded.envelope, event)?;
                    self.records.absorb(changes);
                }
                position = decoded.envelope.position;
            }
            drop(page);
            lap(&mut self.times.applying);
            if self.records.dirty_len() >= self.batch_records_max || position - committed >= self.batch_events_max {
                self.commit(position)?;
                committed = position;
                lap(&mut self.times.writing);
            }
            applied.store(position, Ordering::Release);
        }
        if position > committed {
            self.commit(position)?;
            lap(&mut self.times.writing);
        }
        Ok(position)
    }

    /// Write the batch so far with the checkpoint `position`.
    fn commit(&mut self, position: u64) -> Result<(), ProjectionError> {
        let batch = self.records.take_batch()?;
        // What a replay builds is `<model>.building` until the switch.
        write_building(self.records.tree(), &self.checkpoints, &self.tree_name, batch, position)?;
        self.records.trim();
        Ok(())
    }
}

/// Where a model's thread spent its time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Times {
    /// Waiting for the next page (the readers are behind).
    pub waiting: Duration,
    /// Applying events to the batch (the model's `apply` and the cache).
    pub applying: Duration,
    /// Writing batches to sled.
    pub writing: Duration,
}
