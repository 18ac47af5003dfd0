//! The single writer: it owns every append. It drains the queue into one batch
//! (and what comes in while it stages), stages each request against the log and
//! the batch so far (expected versions, idempotency, sealing, positions, the
//! hash chain), hands the batch's frame to the syncer and writes the batch to
//! sled, unflushed. The syncer meanwhile writes the frame to the write-ahead log
//! and `fdatasync`s it (`wal`), and only once that is done and sled holds the
//! batch ([`Applied`]) answers the waiting appenders and moves the durable head
//! that readers see.
//!
//! A batch is written key by key, not in a sled transaction, in this order: a
//! marker naming the batch's first position and its idempotency keys, the subject
//! keys, the records, the idempotency entries, and last the stored tail, whose
//! head is the batch's commit mark. Its stream index groups go to
//! [`trees::RecentGroups`], and into sled at the next checkpoint (which the
//! syncer starts on a thread of its own when it switches the WAL's files, and
//! runs itself when the log closes). sled recovers a
//! prefix of its writes, so a crash part way leaves at most this one batch torn:
//! records past the stored head, with the marker saying a batch began right
//! after it. When the log is opened, [`drop_torn_batch`] removes what that batch
//! wrote, then [`replay`] writes again every batch the write-ahead log holds
//! past the stored head: those were synced, and acknowledged unless their sled
//! write failed. Why not a transaction: a sled
//! transaction takes sled's process-wide lock exclusively, so it waited for any
//! flush in progress (which holds that lock shared through the disk write) and
//! stopped every reader meanwhile; plain inserts take it shared.
//! A batch that forgets a subject still uses a transaction: deleting a key is not
//! something a later open could undo.
//!
//! A failed write or fsync is never retried into an acknowledgement: every appender
//! of the batch gets an error and the log refuses appends until it is reopened.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use sled::transaction::ConflictableTransactionError;
use sled::{IVec, Transactional};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::chunk;
use crate::error::StoreError;
use crate::record::{self, Header};
use crate::seal::{self, SubjectKey};
use crate::sled_file::SledFile;
use crate::trees::{self, Trees};
use crate::types::{
    AppendRequest, AppendResult, ExpectedVersion, STREAM_NAME_LEN_MAX, StreamVersion, is_event_type, is_stream_name,
};
use crate::wal::{WalFrames, Wals};
use crate::{RECORD_LEN_MAX, codec};

/// The writer's maps, looked up and filled for every append: foldhash (the
/// hasher of hashbrown's own maps), where SipHash was some 10 % of staging. Its
/// seeds are random per process, and its keys are stream names the command
/// side forms (`product-<sku>`, `cart-<uuid>`, ...) in maps bounded by
/// [`STREAM_HEADS_CACHED_MAX`] or by a batch.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One request for the writer.
pub(crate) struct Job {
    pub work: Work,
    pub reply: oneshot::Sender<Result<AppendResult, StoreError>>,
}

/// What a [`Job`] asks.
pub(crate) enum Work {
    Append {
        request: AppendRequest,
        /// Forget this subject (delete its key) in the same transaction as the append.
        forget: Option<Uuid>,
    },
    /// Records as another log stored them (see [`crate::EventLog::append_stored`]).
    Stored(Vec<Vec<u8>>),
}

/// Why the log stopped accepting appends, shared by the writer and the handles.
#[derive(Debug, Default)]
pub(crate) struct Health {
    failure: Mutex<Option<String>>,
    /// A write or sync failed (not only damage read back): sled's own close,
    /// which writes and syncs again, must not run (see `Inner`'s drop).
    written_wrong: AtomicBool,
}

impl Health {
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().map(|failure| failure.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// A write or a sync failed: the log takes no more appends.
    pub fn fail(&self, reason: String) {
        self.written_wrong.store(true, Ordering::Release);
        self.stop(reason);
    }

    /// Damage was read back, or a thread of the log panicked: the log takes
    /// no more appends, though what it wrote and synced is sound.
    pub fn stop(&self, reason: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        failure.get_or_insert(reason);
    }

    /// Whether a write or sync failed (see [`Self::fail`]).
    pub fn written_wrong(&self) -> bool {
        self.written_wrong.load(Ordering::Acquire)
    }
}

/// What the writer has committed since the log was opened, for metrics and for
/// showing that appends are grouped.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub batches: AtomicU64,
    pub appends: AtomicU64,
    pub events: AtomicU64,
    pub checkpoints: AtomicU64,
}

/// A stream's last version and the position of its last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamHead {
    pub version: u64,
    pub position: u64,
}

/// The durable head of streams appended since the log was opened, kept by the
/// syncer, so that `EventLog::stream_version` (every command asks it) does not
/// walk sled's index backwards. The syncer records a batch's streams before it
/// moves the durable head, in batch order, so an entry whose position is at or
/// below the head a reader saw is that stream's durable version at that head; an
/// entry past it, or none, sends the reader to the index. Emptied when it
/// reaches [`STREAM_HEADS_CACHED_MAX`] entries.
#[derive(Debug, Default)]
pub(crate) struct DurableHeads {
    heads: Mutex<FastMap<String, StreamHead>>,
}

impl DurableHeads {
    pub fn get(&self, stream: &str) -> Option<StreamHead> {
        self.heads.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(stream).copied()
    }

    fn record(&self, written: impl Iterator<Item = (String, StreamHead)>) {
        let mut heads = self.heads.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (stream, head) in written {
            if heads.len() >= STREAM_HEADS_CACHED_MAX && !heads.contains_key(&stream) {
                heads.clear();
            }
            heads.insert(stream, head);
        }
    }
}

/// The tail of the log as the writer knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tail {
    pub head: u64,
    pub last_hash: [u8; 32],
    pub last_recorded_micros: i64,
}

pub(crate) struct Writer {
    pub trees: Trees,
    pub jobs: mpsc::Receiver<Job>,
    pub health: Arc<Health>,
    pub tail: Tail,
    pub batch_len_max: usize,
    /// The last version of streams the writer wrote, so that a hot stream's
    /// head is not looked up in sled for every append. Only the writer
    /// writes streams, so an entry stays true; it is emptied when it reaches
    /// [`STREAM_HEADS_CACHED_MAX`].
    pub stream_heads: FastMap<String, u64>,
    /// sled's file and the checkpoint mark, to record a failed write (`sled_file`).
    pub sled_file: Arc<SledFile>,
    /// The second stage, handed to its own thread when the writer starts.
    pub syncer: Option<Syncer>,
    /// Shared with the syncer: how far sled holds the batches handed over.
    pub applied: Arc<Applied>,
}

/// A staged batch handed to the syncer: its frame to write and fsync, and the
/// answers to give once that is done and the writer has written it to sled.
struct Written {
    outcomes: Vec<(Reply, Result<AppendResult, StoreError>)>,
    head: u64,
    /// The streams the batch appended to, with their new heads.
    stream_heads: Vec<(String, StreamHead)>,
    appends: u64,
    events: u64,
    /// The payload of the batch's write-ahead log frame; `None` when nothing was written.
    frame: Option<Vec<u8>>,
    /// Whether the batch forgets a subject: its frame is not written, and a
    /// checkpoint makes it durable instead (see [`Syncer::sync`]).
    forgets: bool,
    /// The subjects it forgets, whose keys readers see until it is durable
    /// ([`trees::Forgetting`]).
    forgotten: Vec<Uuid>,
    /// The stream index groups the batch wrote, whole, for the next checkpoint.
    groups: Vec<(IVec, IVec)>,
}

type Reply = oneshot::Sender<Result<AppendResult, StoreError>>;

/// How far sled holds the batches the writer handed over. The writer hands a
/// batch's frame to the syncer before it writes the batch to sled, so that
/// the write and the batch's `fdatasync` take place at the same time; the
/// syncer answers a batch, moves the durable head and makes a checkpoint only
/// once sled holds what they cover (readers read sled up to the durable head).
#[derive(Debug)]
pub(crate) struct Applied {
    state: std::sync::Mutex<AppliedState>,
    changed: std::sync::Condvar,
}

#[derive(Debug)]
struct AppliedState {
    /// Sled holds every batch up to this position (its writes are in, not durable).
    head: u64,
    /// The writer's thread ended: nothing more will be written.
    writer_gone: bool,
}

impl Applied {
    pub(crate) fn new(head: u64) -> Self {
        Applied {
            state: std::sync::Mutex::new(AppliedState { head, writer_gone: false }),
            changed: std::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AppliedState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The writer is done with the batches up to `head` (written, or failed).
    fn advance(&self, head: u64) {
        let mut state = self.lock();
        state.head = state.head.max(head);
        drop(state);
        self.changed.notify_all();
    }

    /// Wait until the writer is done with the batches up to `head`; false if
    /// its thread ended first.
    fn wait_for(&self, head: u64) -> bool {
        let mut state = self.lock();
        while state.head < head && !state.writer_gone {
            state = self.changed.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        state.head >= head
    }
}

/// Fails the log when the thread it lives on panics: appends are refused from
/// then on, the server reports not ready, and the log's close makes no
/// checkpoint (a checkpoint thread that panicked took index groups with it,
/// which the next open indexes again from the records, unless a checkpoint
/// marked them indexed meanwhile).
struct FailOnPanic(Arc<Health>, &'static str);

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stop(format!("the log's {} thread panicked", self.1));
        }
    }
}

/// Marks the writer gone when its thread ends, however it ends, so that the
/// syncer never waits for a batch that will not be written.
struct WriterGone(Arc<Applied>);

impl Drop for WriterGone {
    fn drop(&mut self) {
        self.0.lock().writer_gone = true;
        self.0.changed.notify_all();
    }
}

/// How many written batches may wait for the syncer.
const WRITTEN_QUEUE_LEN_MAX: usize = 4;

/// The most stream heads the writer keeps in memory (about 100 bytes each).
const STREAM_HEADS_CACHED_MAX: usize = 100_000;

impl Writer {
    /// Two stages: this thread stages a batch (what is queued, and what comes
    /// while it stages), hands its frame to a syncer thread and then writes the
    /// batch to sled; the syncer writes the frames to the write-ahead log and
    /// fsyncs it meanwhile, and answers once sled holds the batch too (see
    /// [`Applied`]). Staging while appends come in makes the batch of a burst
    /// one batch (64 writers are answered together and come back together),
    /// and its fsync then covers them all. Frames are written in batch order,
    /// so a batch is never durable without the batches before it.
    pub fn run(mut self) {
        let (written, to_sync) = std::sync::mpsc::sync_channel(WRITTEN_QUEUE_LEN_MAX);
        let Some(syncer) = self.syncer.take() else {
            self.health.fail("the writer has no syncer".to_owned());
            return;
        };
        let syncer = std::thread::Builder::new().name("shoplog-syncer".to_owned()).spawn(move || syncer.run(to_sync));
        let syncer = match syncer {
            Ok(syncer) => syncer,
            Err(error) => {
                self.health.fail(format!("cannot start the syncer thread: {error}"));
                return;
            }
        };
        let _gone = WriterGone(Arc::clone(&self.applied));
        let _fail_on_panic = FailOnPanic(Arc::clone(&self.health), "writer");
        while let Some(first) = self.jobs.blocking_recv() {
            let (batch, writes) = self.stage(first);
            let head = batch.head;
            if written.send(batch).is_err() {
                break;
            }
            // Written to sled while the syncer writes and syncs the frame.
            if let Some(writes) = writes
                && let Err(reason) = hold_forgotten_keys(&self.trees, &writes).and_then(|()| {
                    apply(&self.trees, &writes).map_err(|failed| {
                        self.sled_file.write_failed(&failed.0);
                        failed.to_string()
                    })
                })
            {
                // The syncer answers none of this batch (nor any after it).
                self.health.fail(reason);
            }
            self.applied.advance(head);
        }
        drop(written);
        if syncer.join().is_err() {
            tracing::error!("the log syncer panicked");
        }
    }

    /// Stage `first` and the jobs queued behind it, and those that come while
    /// they are staged, up to a batch; returns the answers and the batch's
    /// write-ahead log frame for the syncer, and what the batch writes to sled.
    fn stage(&mut self, first: Job) -> (Written, Option<BatchWrites>) {
        let mut staged = Staged::new(self.tail);
        let failure = self.health.failure();
        let mut outcomes = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next {
            let outcome = match &failure {
                Some(reason) => Err(StoreError::Unavailable { reason: reason.clone() }),
                None => match job.work {
                    Work::Append { request, forget } => staged.stage(&self.trees, &self.stream_heads, &request, forget),
                    Work::Stored(records) => staged.stage_stored(&self.trees, &self.stream_heads, records),
                },
            };
            outcomes.push((job.reply, outcome));
            next = if outcomes.len() < self.batch_len_max { self.jobs.try_recv().ok() } else { None };
        }
        let mut frame = None;
        let mut groups = Vec::new();
        let mut to_write = None;
        if staged.written > 0 {
            let writes;
            (writes, groups) = staged.take_writes(self.tail.head + 1);
            // Readers find the groups from now on; the batch is not durable yet,
            // and they read no position past the durable head.
            self.trees.recent.put(&groups);
            frame = Some(writes.encode());
            self.tail = staged.tail;
            if self.stream_heads.len() + staged.stream_heads.len() > STREAM_HEADS_CACHED_MAX {
                self.stream_heads.clear();
            }
            for (stream, head) in &staged.stream_heads {
                match self.stream_heads.get_mut(stream.as_str()) {
                    Some(version) => *version = head.version,
                    None => {
                        self.stream_heads.insert(stream.clone(), head.version);
                    }
                }
            }
            to_write = Some(writes);
        }
        let written = Written {
            outcomes,
            head: self.tail.head,
            stream_heads: staged.stream_heads.into_iter().collect(),
            appends: staged.appends,
            events: staged.written as u64,
            forgets: to_write.as_ref().is_some_and(|writes| writes.forgets),
            forgotten: to_write.as_ref().filter(|writes| writes.forgets).map(forgotten_subjects).unwrap_or_default(),
            frame,
            groups,
        };
        (written, to_write)
    }
}

/// Everything one batch writes to sled: what the writer applies, and what the
/// write-ahead log keeps of the batch until sled is durable.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BatchWrites {
    /// The batch's first position: the stored head before it, plus one.
    pub first: u64,
    pub keys: Vec<([u8; 16], Vec<u8>)>,
    /// Records packed into chunks, keyed by their first position (`chunk`).
    pub chunks: Vec<([u8; 8], Vec<u8>)>,
    /// Stream index groups, whole (`trees`: `streams`). Empty since log format
    /// 5, which keeps them out of the frames (`trees::RecentGroups`); the frames
    /// of format 4 held them, and replaying such a frame writes them.
    pub streams: Vec<(Vec<u8>, Vec<u8>)>,
    pub idempotency: Vec<([u8; 32], Vec<u8>)>,
    /// The tail after the batch.
    pub tail: Tail,
    /// Whether the batch forgets a subject (and so is written in a transaction).
    pub forgets: bool,
}

impl BatchWrites {
    /// The payload of the batch's write-ahead log frame: the fields in order,
    /// numbers big-endian, every list and value led by its length (u32).
    pub fn encode(&self) -> Vec<u8> {
        fn pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(out: &mut Vec<u8>, pairs: &[(K, V)]) {
            out.extend_from_slice(&(pairs.len() as u32).to_be_bytes());
            for (key, value) in pairs {
                for bytes in [key.as_ref(), value.as_ref()] {
                    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                    out.extend_from_slice(bytes);
                }
            }
        }
        let values: usize = self.chunks.iter().map(|(_, bytes)| bytes.len() + 16).sum::<usize>()
            + self.streams.iter().map(|(key, group)| key.len() + group.len() + 8).sum::<usize>()
            + self.idempotency.iter().map(|(_, bytes)| bytes.len() + 40).sum::<usize>()
            + self.keys.len() * 56;
        let mut out = Vec::with_capacity(80 + values);
        out.extend_from_slice(&self.first.to_be_bytes());
        out.extend_from_slice(&self.tail.head.to_be_bytes());
        out.extend_from_slice(&self.tail.last_hash);
        out.extend_from_slice(&self.tail.last_recorded_micros.to_be_bytes());
        out.push(u8::from(self.forgets));
        pairs(&mut out, &self.keys);
        pairs(&mut out, &self.chunks);
        pairs(&mut out, &self.streams);
        pairs(&mut out, &self.idempotency);
        out
    }

    /// The inverse of [`BatchWrites::encode`]; an error names what does not parse.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        struct Reader<'a>(&'a [u8]);
        impl<'a> Reader<'a> {
            fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
                if self.0.len() < len {
                    return Err(format!("a batch frame ends {} bytes early", len - self.0.len()));
                }
                let (taken, rest) = self.0.split_at(len);
                self.0 = rest;
                Ok(taken)
            }
            fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
                let mut array = [0; N];
                array.copy_from_slice(self.take(N)?);
                Ok(array)
            }
            fn value(&mut self) -> Result<&'a [u8], String> {
                let len = u32::from_be_bytes(self.array()?);
                self.take(len as usize)
            }
            fn pairs<K, V>(
                &mut self,
                key: impl Fn(&'a [u8]) -> Option<K>,
                value: impl Fn(&'a [u8]) -> Option<V>,
            ) -> Result<Vec<(K, V)>, String> {
                let len = u32::from_be_bytes(self.array()?);
                let mut pairs = Vec::with_capacity((len as usize).min(self.0.len()));
                for _ in 0..len {
                    let (k, v) = (self.value()?, self.value()?);
                    let wrong = || {
                        format!("a batch frame holds a value of {} or {} bytes that has another size", k.len(), v.len())
                    };
                    pairs.push((key(k).ok_or_else(wrong)?, value(v).ok_or_else(wrong)?));
                }
                Ok(pairs)
            }
        }
        fn fixed<const N: usize>(bytes: &[u8]) -> Option<[u8; N]> {
            bytes.try_into().ok()
        }
        let owned = |bytes: &[u8]| Some(bytes.to_vec());
        let mut reader = Reader(bytes);
        let first = u64::from_be_bytes(reader.array()?);
        let head = u64::from_be_bytes(reader.array()?);
        let last_hash = reader.array()?;
        let last_recorded_micros = i64::from_be_bytes(reader.array()?);
        let forgets = match reader.array::<1>()? {
            [0] => false,
            [1] => true,
            [other] => return Err(format!("a batch frame's forget flag is {other}")),
        };
        let writes = BatchWrites {
            first,
            keys: reader.pairs(fixed, owned)?,
            chunks: reader.pairs(fixed, owned)?,
            streams: reader.pairs(owned, owned)?,
            idempotency: reader.pairs(fixed, owned)?,
            tail: Tail { head, last_hash, last_recorded_micros },
            forgets,
        };
        if !reader.0.is_empty() {
            return Err(format!("a batch frame has {} bytes past its end", reader.0.len()));
        }
        if first == 0 || first > head {
            return Err(format!("a batch frame runs from position {first} to {head}"));
        }
        Ok(writes)
    }
}

/// The subjects a batch forgets: those whose key it writes empty.
fn forgotten_subjects(writes: &BatchWrites) -> Vec<Uuid> {
    writes.keys.iter().filter(|(_, key)| key.is_empty()).map(|(subject, _)| Uuid::from_bytes(*subject)).collect()
}

/// Keep for readers the keys of the subjects `writes` forgets, before they are
/// deleted; the syncer lets go of them once the batch is durable.
fn hold_forgotten_keys(trees: &Trees, writes: &BatchWrites) -> Result<(), String> {
    if !writes.forgets {
        return Ok(());
    }
    for subject in forgotten_subjects(writes) {
        if let Some(Some(key)) = trees::read_subject_key(trees, subject).map_err(|error| error.to_string())? {
            trees.forgetting.hold(subject, key);
        }
    }
    Ok(())
}

/// Write a batch to sled: key by key with the stored head last (see the module's
/// doc), or in one transaction when it forgets a subject.
pub(crate) fn apply(trees: &Trees, writes: &BatchWrites) -> Result<(), WriteFailed> {
    if writes.forgets { transact(trees, writes) } else { insert_in_order(trees, writes) }
}

/// A batch's write to sled that failed, with sled's error.
#[derive(Debug)]
pub(crate) struct WriteFailed(pub sled::Error);

impl std::fmt::Display for WriteFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "writing the batch failed: {}", self.0)
    }
}

fn insert_in_order(trees: &Trees, writes: &BatchWrites) -> Result<(), WriteFailed> {
    let failed = WriteFailed;
    let mut marker = Vec::with_capacity(8 + 32 * writes.idempotency.len());
    marker.extend_from_slice(&writes.first.to_be_bytes());
    for (key, _) in &writes.idempotency {
        marker.extend_from_slice(key);
    }
    trees.meta.insert(trees::META_BATCH, marker).map_err(failed)?;
    for (subject, key) in &writes.keys {
        trees.keys.insert(subject, key.as_slice()).map_err(failed)?;
    }
    for (first, bytes) in &writes.chunks {
        trees.events.insert(first, bytes.as_slice()).map_err(failed)?;
    }
    for (key, group) in &writes.streams {
        trees.streams.insert(key.as_slice(), group.as_slice()).map_err(failed)?;
    }
    for (key, bytes) in &writes.idempotency {
        trees.idempotency.insert(key, bytes.as_slice()).map_err(failed)?;
    }
    write_tail(&trees.meta, &writes.tail).map_err(failed)
}

fn transact(trees: &Trees, writes: &BatchWrites) -> Result<(), WriteFailed> {
    let all = trees.all();
    let tail = writes.tail;
    let written: Result<(), sled::transaction::TransactionError<()>> = all.as_slice().transaction(|tx| {
        for (first, bytes) in &writes.chunks {
            tx[trees::EVENTS].insert(first, bytes.as_slice())?;
        }
        for (key, group) in &writes.streams {
            tx[trees::STREAMS].insert(key.as_slice(), group.as_slice())?;
        }
        for (key, bytes) in &writes.idempotency {
            tx[trees::IDEMPOTENCY].insert(key, bytes.as_slice())?;
        }
        for (subject, key) in &writes.keys {
            tx[trees::KEYS].insert(subject, key.as_slice())?;
        }
        tx[trees::META].insert(trees::META_HEAD, &tail.head.to_be_bytes())?;
        tx[trees::META].insert(trees::META_LAST_HASH, &tail.last_hash)?;
        tx[trees::META].insert(trees::META_LAST_RECORDED_AT, &tail.last_recorded_micros.to_be_bytes())?;
        Ok::<(), ConflictableTransactionError<()>>(())
    });
    written.map_err(|error| match error {
        sled::transaction::TransactionError::Storage(error) => WriteFailed(error),
        sled::transaction::TransactionError::Abort(()) => {
            WriteFailed(sled::Error::ReportableBug("the batch's transaction aborted".to_owned()))
        }
    })
}

/// The batches of the write-ahead log's frames that sled lost in a crash, to
/// write again (by [`replay`], after [`drop_torn_batch`]) before the log is
/// opened, in order of position (the frames come from both of the WAL's files,
/// frame by frame for each file); nothing is written here, so an open refused
/// for damage found here leaves sled as it was. A file's frames end at the
/// first one that does not follow the one before it: a file written again still
/// holds frames of an earlier turn after the new ones, and a power cut can leave
/// one of those between two new frames (the disk wrote the later one's sectors
/// and not the earlier one's, whose batch was then never acknowledged). A
/// frame of a batch sled has is skipped. A frame that does not begin right
/// after the stored head is damage: sled lost batches the WAL does not hold.
pub(crate) fn frames_to_replay(trees: &Trees, files: &[WalFrames]) -> Result<Vec<BatchWrites>, StoreError> {
    let mut head = trees::read_head(trees)?;
    let mut batches = Vec::new();
    for file in files {
        let mut file_head = None;
        for frame in &file.payloads {
            let writes = BatchWrites::decode(frame)
                .map_err(|reason| StoreError::corrupt(head + 1, format!("write-ahead log: {reason}")))?;
            if file_head.is_some_and(|file_head: u64| writes.first != file_head + 1) {
                break;
            }
            file_head = Some(writes.tail.head);
            batches.push(writes);
        }
    }
    batches.sort_by_key(|writes| writes.first);
    let mut to_apply = Vec::new();
    for writes in batches {
        if writes.tail.head <= head {
            continue;
        }
        if writes.first != head + 1 {
            return Err(StoreError::corrupt(
                head + 1,
                format!(
                    "the write-ahead log holds positions {} to {} but the log ends at {head}",
                    writes.first, writes.tail.head
                ),
            ));
        }
        head = writes.tail.head;
        to_apply.push(writes);
    }
    // Checked before anything is written: the open fails and changes nothing.
    if let Some(durable) = files.iter().filter_map(|file| file.durable_head).max()
        && durable > head
    {
        return Err(StoreError::corrupt(
            head + 1,
            format!(
                "the write-ahead log is damaged: a frame in it was written once positions up to {durable} \
                 were durable, but the log and the frames that read give back only up to {head} \
                 (restore the data directory from a backup)"
            ),
        ));
    }
    Ok(to_apply)
}

/// Write the batches [`frames_to_replay`] gave back; returns how many there were.
pub(crate) fn replay(trees: &Trees, sled_file: &SledFile, batches: Vec<BatchWrites>) -> Result<u64, StoreError> {
    let replayed = batches.len() as u64;
    for writes in batches {
        apply(trees, &writes).map_err(|failed| {
            sled_file.write_failed(&failed.0);
            StoreError::Storage(failed.to_string())
        })?;
    }
    Ok(replayed)
}

/// Store the tail, the head last: the head is the commit mark of a batch
/// written key by key.
fn write_tail(meta: &sled::Tree, tail: &Tail) -> Result<(), sled::Error> {
    meta.insert(trees::META_LAST_HASH, &tail.last_hash)?;
    meta.insert(trees::META_LAST_RECORDED_AT, &tail.last_recorded_micros.to_be_bytes())?;
    meta.insert(trees::META_HEAD, &tail.head.to_be_bytes())?;
    Ok(())
}

/// Remove what a batch torn by a crash wrote (see the module's doc), before the
/// log is opened; returns how many of its records there were, or `None` when no
/// batch was torn.
///
/// Only a batch the marker says began right after the stored head is taken for
/// torn. Records past the head with no such marker are left alone, and the
/// log's open then reports them as damage: a head that went back by itself
/// must not silently drop acknowledged events. A subject key the torn batch
/// made stays: unused, it holds nothing, and the request sent again seals with it.
pub(crate) fn drop_torn_batch(trees: &Trees) -> Result<Option<u64>, StoreError> {
    let head = trees::read_head(trees)?;
    let Some(marker) = trees.meta.get(trees::META_BATCH)? else {
        return Ok(None);
    };
    let damaged = || StoreError::corrupt(head, "the marker of the last batch is damaged");
    let first = marker.get(..8).and_then(trees::be_u64).ok_or_else(damaged)?;
    if first != head + 1 {
        return Ok(None);
    }
    let idempotency_keys = &marker[8..];
    if idempotency_keys.len() % 32 != 0 {
        return Err(damaged());
    }
    for key in idempotency_keys.chunks_exact(32) {
        trees.idempotency.remove(key)?;
    }
    // The writer makes a batch's chunks from its own records only, so every
    // chunk of the torn batch begins past the head. They are read as they
    // are, gaps and all: a crash during an earlier open's drop of this batch
    // can have left some of its chunks removed and some not.
    let mut dropped = 0;
    let mut chunks = Vec::new();
    for item in trees.events.range(first.to_be_bytes()..) {
        let (key, bytes) = item?;
        let start = trees::be_u64(&key).ok_or_else(|| StoreError::corrupt(first, "event key is not a position"))?;
        let records = chunk::Records::parse(&bytes).map_err(|reason| StoreError::corrupt(start, reason))?;
        for index in 0..records.len() {
            let position = start.checked_add(index as u64);
            let bytes = records.get(index);
            let (Some(position), Some(bytes)) = (position, bytes) else {
                return Err(StoreError::corrupt(start, "a chunk of the torn batch is cut short"));
            };
            let record = record::parse(bytes).map_err(|reason| StoreError::corrupt(position, reason))?;
            // Cut the stream's index group back to the versions before this one
            // (since format 5 a batch's groups reach sled only at a checkpoint,
            // after its tail; a log written before, or a head set back by hand,
            // can still have them).
            let version = record.header.version;
            let key = trees::group_key(&record.header.stream, version);
            let kept = trees::group_offset(version);
            if let Some(group) = trees.streams.get(&key)?
                && trees::group_position(&group, version) == Some(position)
            {
                match kept {
                    0 => trees.streams.remove(key)?,
                    _ => trees.streams.insert(key, &group[..kept])?,
                };
            }
            dropped += 1;
        }
        chunks.push(key);
    }
    // The last chunk first: what a crash part way leaves still begins right
    // after the head.
    for key in chunks.into_iter().rev() {
        trees.events.remove(key)?;
    }
    // The tail may hold the torn batch's hash and time: take them from the
    // record at the head again.
    let at_head = chunk::read(&trees.events, head, |bytes| {
        let record = record::parse(bytes).map_err(|reason| StoreError::corrupt(head, reason))?;
        Ok(Tail { head, last_hash: record.hash, last_recorded_micros: record.header.recorded_at_micros })
    })?;
    let tail = match at_head {
        None if head == 0 => Tail { head, last_hash: record::GENESIS_HASH, last_recorded_micros: 0 },
        None => return Err(StoreError::corrupt(head, "the stored head has no event")),
        Some(tail) => tail,
    };
    write_tail(&trees.meta, &tail)?;
    trees.meta.remove(trees::META_BATCH)?;
    Ok(Some(dropped))
}

/// The second stage: makes written batches durable, then answers their appenders
/// and moves the durable head, strictly in order.
pub(crate) struct Syncer {
    pub db: sled::Db,
    pub trees: Trees,
    /// sled's log file, to `fdatasync` it after sled's flush at a checkpoint,
    /// and the checkpoint mark (`sled_file`).
    pub sled_file: Arc<SledFile>,
    pub wal: Wals,
    /// The checkpoint running beside the appends, if one was started: it covers
    /// the file written before the current one.
    pub checkpointing: Option<std::thread::JoinHandle<Result<(), String>>>,
    pub durable: watch::Sender<u64>,
    pub durable_heads: Arc<DurableHeads>,
    pub health: Arc<Health>,
    pub counters: Arc<Counters>,
    /// The most appends one fsync covers.
    pub batch_len_max: u64,
    /// The stream index groups of the batches handed over since the last
    /// checkpoint began, the newest of each key: the next one inserts them into sled.
    pub unindexed: HashMap<IVec, IVec>,
    /// The head after the last batch handed over.
    pub received_head: u64,
    /// Shared with the writer: how far sled holds the batches handed over.
    pub applied: Arc<Applied>,
    /// Holds each checkpoint beside the appends back while set (a test's).
    #[cfg(test)]
    pub checkpoint_hold: Option<Arc<Hold>>,
}

/// A gate a test closes to hold checkpoints back, so that it can show what goes
/// on while one runs.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Hold {
    closed: Mutex<bool>,
    changed: std::sync::Condvar,
    panics: std::sync::atomic::AtomicBool,
}

#[cfg(test)]
impl Hold {
    /// The next checkpoint to pass panics there.
    pub(crate) fn panic_next(&self) {
        self.panics.store(true, Ordering::SeqCst);
    }

    pub(crate) fn set(&self, closed: bool) {
        *self.closed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = closed;
        self.changed.notify_all();
    }

    fn pass(&self) {
        if self.panics.swap(false, Ordering::SeqCst) {
            panic!("a test's checkpoint hold panics here");
        }
        let mut closed = self.closed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while *closed {
            closed = self.changed.wait(closed).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

/// The most stream index groups kept out of sled: reaching it makes a
/// checkpoint, which bounds their memory and the checkpoint's inserts.
const UNINDEXED_GROUPS_MAX: usize = 16_384;

impl Syncer {
    fn run(mut self, to_sync: std::sync::mpsc::Receiver<Written>) {
        let _fail_on_panic = FailOnPanic(Arc::clone(&self.health), "syncer");
        let mut carried = None;
        loop {
            let Some(first) = carried.take().or_else(|| to_sync.recv().ok().map(|written| self.receive(written)))
            else {
                break;
            };
            // Whatever else is written by now rides on the same fsync, up to a
            // batch's worth of appends.
            let mut appends = first.appends;
            let mut pending = vec![first];
            while appends < self.batch_len_max {
                let Ok(next) = to_sync.try_recv() else { break };
                let next = self.receive(next);
                if appends + next.appends > self.batch_len_max {
                    carried = Some(next);
                    break;
                }
                appends += next.appends;
                pending.push(next);
            }
            // A failure recorded before (a write or sync, or damage read back)
            // is this group's answer as it is; one of this group's own sync is
            // recorded as a failed write.
            let synced = match self.health.failure() {
                Some(reason) => Err(reason),
                None if appends == 0 => Ok(()),
                None => self.sync(&pending).inspect_err(|reason| {
                    tracing::error!(%reason, "append batch not durable; refusing appends from now on");
                    self.health.fail(reason.clone());
                }),
            };
            let synced = synced.and_then(|()| self.written_to_sled(pending.last().map_or(0, |last| last.head)));
            match synced {
                Ok(()) => {
                    if appends > 0 {
                        self.counters.batches.fetch_add(1, Ordering::Relaxed);
                        self.counters.appends.fetch_add(appends, Ordering::Relaxed);
                        let events = pending.iter().map(|written| written.events).sum();
                        self.counters.events.fetch_add(events, Ordering::Relaxed);
                    }
                    // Durable now: readers see the forgets.
                    for written in &pending {
                        self.trees.forgetting.release(&written.forgotten);
                    }
                    // Before the head moves: see `DurableHeads`.
                    self.durable_heads
                        .record(pending.iter_mut().flat_map(|written| std::mem::take(&mut written.stream_heads)));
                    if let Some(last) = pending.last() {
                        self.durable.send_if_modified(|head| std::mem::replace(head, last.head) != last.head);
                    }
                    for (reply, outcome) in pending.into_iter().flat_map(|written| written.outcomes) {
                        // An appender that gave up waiting is no reason to stop.
                        let _ = reply.send(outcome);
                    }
                }
                Err(reason) => {
                    for (reply, outcome) in pending.into_iter().flat_map(|written| written.outcomes) {
                        // What was written may reach the disk yet; what was refused
                        // (a version, a key reused, a record too long) was not
                        // written and keeps its own answer.
                        let error = match outcome {
                            Ok(_) => StoreError::Durability { reason: reason.clone() },
                            Err(refused) => refused,
                        };
                        let _ = reply.send(Err(error));
                    }
                }
            }
        }
        // Closed cleanly: sled holds everything, and the write-ahead log is empty.
        if let Err(reason) = self.finish_checkpoint() {
            tracing::error!(%reason, "a checkpoint failed; the write-ahead log keeps the batches");
        }
        if self.health.failure().is_none()
            && (self.wal.holds_frames() || !self.unindexed.is_empty())
            && let Err(reason) = self.checkpoint()
        {
            tracing::error!(%reason, "the checkpoint at close failed; the write-ahead log keeps the batches");
            self.health.fail(reason);
        }
        // Sled holds everything durably and the WAL nothing needed: say so, so
        // that a WAL file gone from here on is no loss (see `mark`).
        if self.health.failure().is_none()
            && !self.wal.holds_frames()
            && self.unindexed.is_empty()
            && self.checkpointing.is_none()
            && let Err(error) = self.sled_file.mark(self.received_head, crate::mark::State::Closed)
        {
            tracing::warn!(%error, "could not record the clean close in {}", crate::mark::FILE);
        }
    }

    /// A batch handed over: its index groups are the checkpoint's from now on.
    fn receive(&mut self, mut written: Written) -> Written {
        for (key, group) in written.groups.drain(..) {
            self.unindexed.insert(key, group);
        }
        self.received_head = written.head;
        written
    }

    /// The batches' frames written to the write-ahead log and one `fdatasync`.
    /// When they would pass the current file's size cap (or the index groups
    /// kept out of sled reach [`UNINDEXED_GROUPS_MAX`]), they go to the other
    /// file, and a checkpoint of all that came before starts beside them
    /// ([`Syncer::switch_files`]); frames too long for an empty file make a
    /// checkpoint here instead. Never retried: a failed fsync may have dropped
    /// dirty pages, so a second try could succeed without the data being there.
    ///
    /// A batch that forgets a subject is made durable by a checkpoint too,
    /// which empties both files: the frame of the batch that made the
    /// subject's key holds the key, and would keep it on disk after the forget.
    fn sync(&mut self, pending: &[Written]) -> Result<(), String> {
        if pending.iter().any(|written| written.forgets) {
            return self.checkpoint();
        }
        let frames = || pending.iter().filter_map(|written| written.frame.as_deref());
        if !self.wal.current().fits(frames().map(<[u8]>::len)) || self.unindexed.len() >= UNINDEXED_GROUPS_MAX {
            if !self.wal.fits_empty(frames().map(<[u8]>::len)) {
                return self.checkpoint();
            }
            self.switch_files()?;
        }
        // Every position up to it was made durable by an `fdatasync` before these frames.
        let durable_head = *self.durable.borrow();
        let wal = self.wal.current();
        for frame in frames() {
            wal.write(frame, durable_head).map_err(|error| format!("writing the write-ahead log failed: {error}"))?;
        }
        wal.sync().map_err(|error| format!("fdatasync of the write-ahead log failed: {error}"))
    }

    /// Start a checkpoint on a thread of its own, of every batch handed over
    /// (the pending ones too: their index groups are among those kept out of
    /// sled, which must not reach it before their records) and go on in the
    /// other file, once the checkpoint before (which covered that file) has
    /// finished.
    fn switch_files(&mut self) -> Result<(), String> {
        self.finish_checkpoint()?;
        let checkpoint = self.next_checkpoint();
        let head = checkpoint.head;
        let (applied, health) = (Arc::clone(&self.applied), Arc::clone(&self.health));
        #[cfg(test)]
        let hold = self.checkpoint_hold.clone();
        let started = std::thread::Builder::new().name("shoplog-checkpoint".to_owned()).spawn(move || {
            let _fail_on_panic = FailOnPanic(Arc::clone(&health), "checkpoint");
            #[cfg(test)]
            if let Some(hold) = hold {
                hold.pass();
            }
            // A batch the writer failed to write must not have its index groups in sled.
            written_to_sled(&applied, &health, head)?;
            checkpoint.run().inspect_err(|reason| {
                // The batches since are in the write-ahead log, durable; the
                // log refuses appends from now on.
                health.fail(format!("a checkpoint failed: {reason}"));
            })
        });
        self.checkpointing = Some(started.map_err(|error| format!("cannot start the checkpoint thread: {error}"))?);
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.wal.switch();
        Ok(())
    }

    /// A checkpoint of every batch handed over, which takes the index groups kept out of sled.
    fn next_checkpoint(&mut self) -> Checkpoint {
        Checkpoint {
            db: self.db.clone(),
            trees: self.trees.clone(),
            sled_file: Arc::clone(&self.sled_file),
            groups: std::mem::take(&mut self.unindexed),
            head: self.received_head,
        }
    }

    /// Wait for the checkpoint running beside the appends, if any.
    fn finish_checkpoint(&mut self) -> Result<(), String> {
        match self.checkpointing.take() {
            None => Ok(()),
            Some(running) => running.join().unwrap_or_else(|_| {
                // Its guard failed the log already; the close must not checkpoint
                // past the index groups it took with it.
                let reason = "the checkpoint thread panicked".to_owned();
                self.health.stop(reason.clone());
                Err(reason)
            }),
        }
    }

    /// See [`written_to_sled`].
    fn written_to_sled(&self, head: u64) -> Result<(), String> {
        written_to_sled(&self.applied, &self.health, head)
    }

    /// Make sled durable with every batch handed over (see [`Checkpoint`]),
    /// here and now, and empty the write-ahead log. sled then holds every batch
    /// the writer handed over, those pending here included (it waits for their
    /// writes), so their frames need not be written.
    fn checkpoint(&mut self) -> Result<(), String> {
        self.finish_checkpoint()?;
        self.written_to_sled(self.received_head)?;
        #[cfg(test)]
        if let Some(hold) = &self.checkpoint_hold {
            hold.pass();
        }
        let checkpoint = self.next_checkpoint();
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        checkpoint.run()?;
        self.wal.start_over().map_err(|error| format!("emptying the write-ahead log failed: {error}"))
    }
}

/// Wait until sled holds the batches up to `head` (the writer writes a batch to
/// sled while its frame is synced); an error if the writer failed to write one,
/// or stopped.
fn written_to_sled(applied: &Applied, health: &Health, head: u64) -> Result<(), String> {
    if !applied.wait_for(head) {
        return Err("the log writer stopped before writing a batch".to_owned());
    }
    health.failure().map_or(Ok(()), Err)
}

/// What a checkpoint makes durable in sled: every batch up to `head`, which
/// sled holds unflushed, and the stream index groups kept out of sled until then.
struct Checkpoint {
    db: sled::Db,
    trees: Trees,
    sled_file: Arc<SledFile>,
    groups: HashMap<IVec, IVec>,
    head: u64,
}

impl Checkpoint {
    /// Insert the index groups, then mark the index as reaching `head`, then
    /// make sled durable (its flush, then `fdatasync` of its log file). Only once
    /// sled holds the batches up to `head`. The groups then leave the recent
    /// ones, unless a later batch continued them.
    fn run(self) -> Result<(), String> {
        // A failed write or sync of sled's is recorded in the mark (`sled_file`):
        // its file may lack what it held unsynced, and the WAL holds every batch
        // after the last checkpoint.
        let sled_file = &self.sled_file;
        let failed = |what: &'static str| {
            move |error: sled::Error| {
                sled_file.write_failed(&error);
                format!("{what} failed: {error}")
            }
        };
        for (key, group) in &self.groups {
            self.trees.streams.insert(key, group.clone()).map_err(failed("writing the stream index"))?;
        }
        // After the groups: sled recovers a prefix of its writes.
        self.trees
            .meta
            .insert(trees::META_INDEXED, &self.head.to_be_bytes())
            .map_err(failed("writing the index mark"))?;
        crate::log::flush_sled(&self.db).map_err(failed("flush"))?;
        self.sled_file.sync(false)?;
        self.sled_file
            .mark(self.head, crate::mark::State::Open)
            .map_err(|error| format!("recording the checkpoint in {} failed: {error}", crate::mark::FILE))?;
        self.trees.recent.settle(&self.groups);
        Ok(())
    }
}

/// What a subject's key is, in the batch or on disk.
#[derive(Debug, Clone, Copy)]
enum KeyState {
    Active(SubjectKey),
    Forgotten,
}

/// The stored answer for an idempotency key.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredIdempotency {
    request_hash: [u8; 32],
    result: AppendResult,
}

/// The last position of the append an idempotency entry (as stored) answers
/// with; `None` when the entry does not read.
pub(crate) fn idempotency_last_position(bytes: &[u8]) -> Option<u64> {
    codec::decode::<StoredIdempotency>(bytes).ok().map(|stored| stored.result.last_position)
}

/// A batch being built: the writes for each tree, and overlays so that later
/// requests in the batch see what earlier ones staged.
struct Staged {
    tail: Tail,
    /// Each record with its position, packed into chunks when written.
    events: Vec<(u64, Vec<u8>)>,
    /// Stream index groups the batch writes, whole: key → positions.
    streams: FastMap<Vec<u8>, Vec<u8>>,
    idempotency: Vec<([u8; 32], Vec<u8>)>,
    keys: Vec<([u8; 16], Vec<u8>)>,
    /// Whether the batch forgets a subject (and so is written in a transaction).
    forgets: bool,
    stream_heads: FastMap<String, StreamHead>,
    subject_keys: FastMap<Uuid, KeyState>,
    idempotency_keys: FastMap<[u8; 32], ([u8; 32], AppendResult)>,
    /// Events and appends staged for writing (counted on after the writes are taken).
    written: usize,
    appends: u64,
}

impl Staged {
    fn new(tail: Tail) -> Self {
        Staged {
            tail,
            events: Vec::new(),
            streams: FastMap::default(),
            idempotency: Vec::new(),
            keys: Vec::new(),
            forgets: false,
            stream_heads: FastMap::default(),
            subject_keys: FastMap::default(),
            idempotency_keys: FastMap::default(),
            written: 0,
            appends: 0,
        }
    }

    /// The batch's writes to sled, with its records packed into chunks (`first`
    /// is its first position), and apart from them its stream index groups,
    /// which sled gets at the next checkpoint.
    fn take_writes(&mut self, first: u64) -> (BatchWrites, Vec<(IVec, IVec)>) {
        let events = std::mem::take(&mut self.events);
        let writes = BatchWrites {
            first,
            keys: std::mem::take(&mut self.keys),
            chunks: chunk::pack(events.iter().map(|(position, bytes)| (*position, bytes.as_slice()))),
            streams: Vec::new(),
            idempotency: std::mem::take(&mut self.idempotency),
            tail: self.tail,
            forgets: self.forgets,
        };
        let groups = std::mem::take(&mut self.streams).into_iter().map(|(key, group)| (key.into(), group.into()));
        (writes, groups.collect())
    }

    /// Stage one request, all or nothing: nothing is added to the batch unless
    /// every check passes.
    fn stage(
        &mut self,
        trees: &Trees,
        known_heads: &FastMap<String, u64>,
        request: &AppendRequest,
        forget: Option<Uuid>,
    ) -> Result<AppendResult, StoreError> {
        validate(request)?;

        let idempotency_key =
            request.idempotency.as_ref().map(|idempotency| *blake3::hash(idempotency.key.as_bytes()).as_bytes());
        if let (Some(key), Some(idempotency)) = (idempotency_key, &request.idempotency)
            && let Some((request_hash, result)) = self.idempotent_result(trees, &key)?
        {
            return if request_hash == idempotency.request_hash {
                Ok(AppendResult { duplicate: true, ..result })
            } else {
                Err(StoreError::IdempotencyKeyReused)
            };
        }

        let mut current_versions = Vec::with_capacity(request.streams.len());
        for stream in &request.streams {
            let actual = self.stream_head(trees, known_heads, &stream.stream)?;
            if !stream.expected.matches(actual) {
                return Err(StoreError::WrongExpectedVersion {
                    stream: stream.stream.clone(),
                    expected: stream.expected,
                    actual,
                });
            }
            current_versions.push(actual);
        }

        if let Some(subject) = forget
            && let Some(KeyState::Forgotten) = self.subject_key(trees, subject)?
        {
            return Err(StoreError::SubjectForgotten { subject });
        }

        let micros =
            request.recorded_at.unwrap_or_else(Utc::now).timestamp_micros().max(self.tail.last_recorded_micros);
        let mut new_keys: HashMap<Uuid, SubjectKey> = HashMap::new();
        let mut records = Vec::with_capacity(request.event_count());
        let mut tail = Tail { last_recorded_micros: micros, ..self.tail };
        let mut versions = Vec::with_capacity(request.streams.len());
        let mut heads: Vec<(&str, StreamHead)> = Vec::with_capacity(request.streams.len());
        for (stream, current) in request.streams.iter().zip(current_versions) {
            let mut version = current;
            for event in &stream.events {
                tail.head += 1;
                version += 1;
                let payload = match event.subject {
                    None => Cow::Borrowed(event.payload.as_slice()),
                    Some(subject) => {
                        if forget == Some(subject) {
                            return Err(StoreError::SubjectForgotten { subject });
                        }
                        let key = match new_keys.get(&subject) {
                            Some(key) => *key,
                            None => match self.subject_key(trees, subject)? {
                                Some(KeyState::Active(key)) => key,
                                Some(KeyState::Forgotten) => return Err(StoreError::SubjectForgotten { subject }),
                                None => *new_keys.entry(subject).or_insert_with(seal::new_key),
                            },
                        };
                        Cow::Owned(seal::seal(&key, event.event_id, &event.payload).map_err(StoreError::Storage)?)
                    }
                };
                let header = Header {
                    position: tail.head,
                    stream: Cow::Borrowed(&stream.stream),
                    version,
                    event_id: event.event_id,
                    event_type: Cow::Borrowed(&event.event_type),
                    schema_version: event.schema_version,
                    recorded_at_micros: micros,
                    actor: Cow::Borrowed(&request.metadata.actor),
                    correlation_id: request.metadata.correlation_id,
                    causation_id: request.metadata.causation_id,
                    subject: event.subject,
                };
                let (bytes, hash) = record::encode(&header, &payload, &tail.last_hash)
                    .map_err(|error| StoreError::Storage(format!("encoding a record: {error}")))?;
                if bytes.len() > RECORD_LEN_MAX {
                    return Err(StoreError::RecordTooLarge {
                        stream: stream.stream.clone(),
                        event_type: event.event_type.clone(),
                        len: bytes.len(),
                        max: RECORD_LEN_MAX,
                    });
                }
                tail.last_hash = hash;
                records.push((header.position, stream.stream.as_str(), version, bytes));
            }
            if version > current {
                heads.push((&stream.stream, StreamHead { version, position: tail.head }));
                versions.push(StreamVersion { stream: stream.stream.clone(), version });
            }
        }

        // Every check passed: add it all to the batch.
        self.add_records(trees, records)?;
        for (stream, head) in heads {
            self.stream_heads.insert(stream.to_owned(), head);
        }
        for (subject, key) in new_keys {
            self.keys.push((*subject.as_bytes(), key.to_vec()));
            self.subject_keys.insert(subject, KeyState::Active(key));
        }
        if let Some(subject) = forget {
            // An empty value is the tombstone: the subject's data cannot be read or sealed again.
            self.keys.push((*subject.as_bytes(), Vec::new()));
            self.subject_keys.insert(subject, KeyState::Forgotten);
            self.forgets = true;
        }
        let result = AppendResult {
            first_position: self.tail.head + 1,
            last_position: tail.head,
            streams: versions,
            duplicate: false,
        };
        if let (Some(key), Some(idempotency)) = (idempotency_key, &request.idempotency) {
            let stored = StoredIdempotency { request_hash: idempotency.request_hash, result: result.clone() };
            let bytes = codec::encode(&stored).map_err(|error| StoreError::Storage(error.to_string()))?;
            self.idempotency.push((key, bytes));
            self.idempotency_keys.insert(key, (idempotency.request_hash, result.clone()));
        }
        self.tail = tail;
        self.written += records_len(&result);
        self.appends += 1;
        Ok(result)
    }

    /// Add `records` (position, stream, version, bytes, in position order, each
    /// its stream's next version) to the batch with their stream index entries.
    /// Nothing is added unless each index group they continue is sound: those the
    /// batch has not touched yet are read before anything is added.
    fn add_records<S: AsRef<str>>(
        &mut self,
        trees: &Trees,
        records: Vec<(u64, S, u64, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let mut continued: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        // A record in the group of the record before it is looked at with that
        // one. (Not "of the stream before it": a stream's run that begins a
        // group and comes back later among the records, as in a replica's copy,
        // must find that group begun.)
        let mut previous: Option<(&str, u64)> = None;
        for (_, stream, version, _) in &records {
            let stream = stream.as_ref();
            let first = trees::group_first(*version);
            if previous.replace((stream, first)) == Some((stream, first)) {
                continue;
            }
            let key = trees::stream_key(stream, first);
            if self.streams.contains_key(&key) || continued.iter().any(|(begun, _)| *begun == key) {
                continue;
            }
            let group = if *version == first {
                Vec::new()
            } else {
                let group = trees.index_group(&key)?.map(|group| group.to_vec()).unwrap_or_default();
                if group.len() != trees::group_offset(*version) {
                    return Err(StoreError::corrupt(
                        0,
                        format!("index of stream {stream} is damaged at version {version}"),
                    ));
                }
                group
            };
            continued.push((key, group));
        }
        self.streams.extend(continued);
        for (position, stream, version, bytes) in records {
            self.events.push((position, bytes));
            let group = self.streams.entry(trees::group_key(stream.as_ref(), version)).or_default();
            group.extend_from_slice(&position.to_be_bytes());
        }
        Ok(())
    }

    /// Stage records another log stored, all or nothing: each must parse, be
    /// the log's next position, chain to its last hash, and be its stream's next
    /// version. Their bytes are kept as they are: a sealed payload stays sealed,
    /// and its subject gets the tombstone a forget leaves (this log never holds
    /// the key, so the data reads as forgotten, and `verify` finds each sealed
    /// record's subject accounted for).
    fn stage_stored(
        &mut self,
        trees: &Trees,
        known_heads: &FastMap<String, u64>,
        stored: Vec<Vec<u8>>,
    ) -> Result<AppendResult, StoreError> {
        if stored.is_empty() {
            return Err(StoreError::InvalidAppend { reason: "no records".to_owned() });
        }
        let refused = |position: u64, reason: String| StoreError::BadInput {
            reason: format!("the record for position {position} does not follow this log: {reason}"),
        };
        let mut tail = self.tail;
        let mut heads: FastMap<String, StreamHead> = FastMap::default();
        let mut tombstones: Vec<Uuid> = Vec::new();
        let mut records = Vec::with_capacity(stored.len());
        for bytes in stored {
            let next = tail.head + 1;
            let (stream, version) = {
                let record = record::parse(&bytes).map_err(|reason| refused(next, reason))?;
                let header = &record.header;
                if header.position != next {
                    return Err(refused(next, format!("it holds position {}", header.position)));
                }
                if record::chain_hash(&tail.last_hash, record.body) != record.hash {
                    return Err(refused(
                        next,
                        "its hash does not chain to the last record's (another log's record, or damaged)".to_owned(),
                    ));
                }
                if bytes.len() > RECORD_LEN_MAX {
                    return Err(StoreError::RecordTooLarge {
                        stream: header.stream.to_string(),
                        event_type: header.event_type.to_string(),
                        len: bytes.len(),
                        max: RECORD_LEN_MAX,
                    });
                }
                let current = match heads.get(header.stream.as_ref()) {
                    Some(head) => head.version,
                    None => self.stream_head(trees, known_heads, &header.stream)?,
                };
                if header.version != current + 1 {
                    return Err(refused(
                        next,
                        format!(
                            "it is version {} of stream {}, whose next is {}",
                            header.version,
                            header.stream,
                            current + 1
                        ),
                    ));
                }
                if let Some(subject) = header.subject
                    && !tombstones.contains(&subject)
                    && self.subject_key(trees, subject)?.is_none()
                {
                    tombstones.push(subject);
                }
                tail = Tail {
                    head: next,
                    last_hash: record.hash,
                    last_recorded_micros: tail.last_recorded_micros.max(header.recorded_at_micros),
                };
                (header.stream.to_string(), header.version)
            };
            heads.insert(stream.clone(), StreamHead { version, position: next });
            records.push((next, stream, version, bytes));
        }
        self.add_records(trees, records)?;
        for subject in tombstones {
            self.keys.push((*subject.as_bytes(), Vec::new()));
            self.subject_keys.insert(subject, KeyState::Forgotten);
        }
        let mut streams: Vec<StreamVersion> = heads
            .iter()
            .map(|(stream, head)| StreamVersion { stream: stream.clone(), version: head.version })
            .collect();
        streams.sort_by(|a, b| a.stream.cmp(&b.stream));
        let result =
            AppendResult { first_position: self.tail.head + 1, last_position: tail.head, streams, duplicate: false };
        self.stream_heads.extend(heads);
        self.tail = tail;
        self.written += records_len(&result);
        self.appends += 1;
        Ok(result)
    }

    fn stream_head(&self, trees: &Trees, known: &FastMap<String, u64>, stream: &str) -> Result<u64, StoreError> {
        if let Some(version) = self.stream_heads.get(stream).map(|head| &head.version).or_else(|| known.get(stream)) {
            return Ok(*version);
        }
        Ok(trees::read_stream_head(trees, stream)?.0)
    }

    fn subject_key(&self, trees: &Trees, subject: Uuid) -> Result<Option<KeyState>, StoreError> {
        if let Some(state) = self.subject_keys.get(&subject) {
            return Ok(Some(*state));
        }
        Ok(trees::read_subject_key(trees, subject)?.map(|key| match key {
            Some(key) => KeyState::Active(key),
            None => KeyState::Forgotten,
        }))
    }

    fn idempotent_result(&self, trees: &Trees, key: &[u8; 32]) -> Result<Option<([u8; 32], AppendResult)>, StoreError> {
        if let Some(stored) = self.idempotency_keys.get(key) {
            return Ok(Some(stored.clone()));
        }
        let Some(bytes) = trees.idempotency.get(key)? else {
            return Ok(None);
        };
        let stored: StoredIdempotency =
            codec::decode(&bytes).map_err(|error| StoreError::corrupt(0, format!("idempotency entry: {error}")))?;
        Ok(Some((stored.request_hash, stored.result)))
    }
}

fn records_len(result: &AppendResult) -> usize {
    // Positions are contiguous within one append.
    usize::try_from(result.last_position + 1 - result.first_position).unwrap_or(usize::MAX)
}

fn validate(request: &AppendRequest) -> Result<(), StoreError> {
    let invalid = |reason: String| Err(StoreError::InvalidAppend { reason });
    if request.event_count() == 0 {
        return invalid("no events".to_owned());
    }
    for (index, stream) in request.streams.iter().enumerate() {
        let name = &stream.stream;
        if !is_stream_name(name) {
            return invalid(format!(
                "stream name must be 1 to {STREAM_NAME_LEN_MAX} bytes without NUL, got {} bytes",
                name.len()
            ));
        }
        if stream.events.is_empty() && stream.expected == ExpectedVersion::Any {
            return invalid(format!("stream {name} has no events and expects any version: it checks nothing"));
        }
        if request.streams[..index].iter().any(|earlier| earlier.stream == *name) {
            return invalid(format!("stream {name} appears twice"));
        }
        if let Some(event) = stream.events.iter().find(|event| !is_event_type(&event.event_type)) {
            return invalid(format!(
                "event {} on stream {name} has the type {:?}: it must be non-empty, without control characters",
                event.event_id, event.event_type
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The syncer's wait for sled ends when the writer is done with the batch
    /// it waits for, not before, and with `false` when the writer's thread ends.
    #[test]
    fn the_wait_for_sled_ends_at_the_batch_or_when_the_writer_is_gone() {
        let applied = Arc::new(Applied::new(2));
        assert!(applied.wait_for(2), "what sled held at open needs no wait");
        let waiting = {
            let applied = Arc::clone(&applied);
            std::thread::spawn(move || applied.wait_for(5))
        };
        applied.advance(4);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiting.is_finished(), "batch 5 is not written yet");
        applied.advance(5);
        assert!(waiting.join().expect("the waiter ends"), "batch 5 is written");

        let waiting = {
            let applied = Arc::clone(&applied);
            std::thread::spawn(move || applied.wait_for(9))
        };
        drop(WriterGone(Arc::clone(&applied)));
        assert!(!waiting.join().expect("the waiter ends"), "the writer stopped before batch 9");
        assert!(applied.wait_for(5), "what was written stays written");
    }
}
