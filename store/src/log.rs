//! [`EventLog`]: the handle to the log. Appends go to the single writer; reads go
//! straight to sled but never past the durable head, so a reader never sees an event
//! that was not acknowledged as durable.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use chrono::DateTime;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::chain;
use crate::chunk;
use crate::error::StoreError;
use crate::record::{self, GENESIS_HASH, StoredRecord};
use crate::seal;
use crate::sled_file::SledFile;
use crate::trees::{self, Trees, be_u64};
use crate::types::{
    AppendRequest, AppendResult, CommitStats, EventRef, ExpectedVersion, Idempotency, Metadata, NewEvent,
    RecordedEvent, Recovery, StoredEvent, StreamAppend, VerifyReport, is_stream_name,
};
use crate::upcast::Upcasters;
use crate::wal::{WAL_FILES, WAL_LEN_MAX, Wals};
use crate::writer::{
    Applied, Counters, DurableHeads, Health, Job, Syncer, Tail, Work, Writer, drop_torn_batch, frames_to_replay, replay,
};

/// sled's segment size for a new log. Its blob threshold is a quarter of it (2 MiB),
/// and sled never fsyncs blobs; with records capped at [`crate::RECORD_LEN_MAX`] and
/// chunks at `chunk::CHUNK_LEN_MAX` (64 KiB each), a full leaf node (at most 17
/// values before it splits) stays far below that threshold.
const SEGMENT_SIZE: usize = 8 * 1024 * 1024;

const LOCK_ATTEMPTS: u32 = 10;
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(30);

/// sled's page cache by default. Small, so that memory stays nearly flat as the
/// log grows (sled's nodes in memory cost about twice what it counts against
/// the cache); with records packed in chunks, a rebuild reading past the cache
/// still runs above 500,000 events/s (docs/BENCHMARKS.md, issue 5).
const CACHE_CAPACITY_BYTES: u64 = 32 * 1024 * 1024;

/// How the log is opened.
#[derive(Debug, Clone)]
pub struct Options {
    /// The most appends one batch (one write of the batch, one fsync) takes.
    pub batch_len_max: usize,
    /// The most appends waiting for the writer; appenders beyond it wait for room.
    pub queue_len_max: usize,
    /// sled's page cache, in bytes.
    pub cache_capacity_bytes: u64,
    /// The size cap of each of the write-ahead log's two files, in bytes: when
    /// the next batches would pass it, they go to the other file, and a
    /// checkpoint beside the appends makes sled durable (`wal`).
    pub wal_len_max: u64,
    pub upcasters: Upcasters,
    /// Open a log whose last run could not sync sled's file (see `mark`) to
    /// copy it: the write-ahead log's batches are read into sled, but nothing
    /// is made durable, the WAL and the checkpoint mark are left as they are,
    /// and the log takes no appends. A log in any other state opens as usual,
    /// taking no appends either.
    pub salvage: bool,
    /// Holds each checkpoint beside the appends back while set (a test's).
    #[cfg(test)]
    pub(crate) checkpoint_hold: Option<Arc<crate::writer::Hold>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            batch_len_max: 1024,
            queue_len_max: 4096,
            cache_capacity_bytes: CACHE_CAPACITY_BYTES,
            wal_len_max: WAL_LEN_MAX,
            upcasters: Upcasters::new(),
            salvage: false,
            #[cfg(test)]
            checkpoint_hold: None,
        }
    }
}

/// The event log. Cheap to clone; the writer stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    trees: Trees,
    jobs: Option<mpsc::Sender<Job>>,
    durable: watch::Receiver<u64>,
    durable_heads: Arc<DurableHeads>,
    health: Arc<Health>,
    counters: Arc<Counters>,
    upcasters: Upcasters,
    recovery: Recovery,
    writer: Option<JoinHandle<()>>,
    /// sled's file, open since the log was, and the checkpoint mark (`sled_file`).
    sled_file: Arc<SledFile>,
    /// Opened to be copied (`Options::salvage`): closed without a write.
    salvage: bool,
    // Dropped last, after the writer has stopped.
    db: sled::Db,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue stops the writer once it has answered what it holds;
        // joining it means the directory's lock is free when the last handle is gone.
        self.jobs.take();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("the log writer panicked");
        }
        // sled's own close flushes and syncs its file, and panics when the
        // sync fails. After a failed write or sync, or when a flush and a sync
        // through the log's handle fail here, or for a salvage (whose reads must
        // not be written), it is not run: sled writes
        // nothing more (a batch refused for it would reach the disk whole), the
        // write-ahead log and the checkpoint mark hold what is durable, and the
        // directory's lock goes with the process.
        let sound = if self.salvage {
            false
        } else if self.health.written_wrong() || self.sled_file.has_failed() {
            // A write of sled's may have failed in its background unseen: a
            // sync through the log's handle records it.
            let _ = self.sled_file.sync(true);
            false
        } else {
            flush_sled(&self.db).inspect_err(|error| self.sled_file.write_failed(error)).is_ok()
                && self.sled_file.sync(true).is_ok()
        };
        if !sound {
            tracing::debug!("the log closes without sled's own close, after a failed write or sync");
            std::mem::forget(self.db.clone());
        }
    }
}

/// The length of every file under `dir`, summed; a file that goes while it is
/// counted (sled removes blobs) counts for nothing.
fn files_len(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let len = match entry.file_type() {
            Ok(kind) if kind.is_dir() => files_len(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map(|metadata| metadata.len()),
            Ok(_) => Ok(0),
            Err(error) => Err(error),
        };
        match len {
            Ok(len) => total += len,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    Ok(total)
}

impl EventLog {
    /// Open (or create) the log in `dir` with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir, Options::default())
    }

    /// Open (or create) the log in `dir`.
    pub fn open_with(dir: impl AsRef<Path>, options: Options) -> Result<Self, StoreError> {
        let path = dir.as_ref().to_path_buf();
        crate::private::create_private_dir(&path)?;
        let db = open_sled(&path, options.cache_capacity_bytes)?;
        let salvage = options.salvage;
        let sled_file = SledFile::open(&path).map(Arc::new).inspect_err(|_| std::mem::forget(db.clone()))?;
        Self::open_on(path, db.clone(), Arc::clone(&sled_file), options).inspect_err(|error| {
            // sled's `Drop` flushes and then `fsync`s its file, and panics if that
            // fails: after a failed write or sync there it would (an EIO seen
            // once by each file handle), in place of this error. Left
            // undropped, sled writes nothing more; the write-ahead log and the
            // checkpoint mark hold what is durable. Its lock on the directory
            // goes with the process.
            // Nor after a salvage's: what it read into sled stays unwritten.
            let io = matches!(error, StoreError::Storage(_) | StoreError::Unavailable { .. });
            if io && !salvage {
                // A write of sled's that failed in its background shows as
                // such an error: a sync through the log's handle records it.
                let _ = sled_file.sync(true);
            }
            if salvage || io {
                std::mem::forget(db);
            }
        })
    }

    /// The open, on sled's database opened in `path`.
    fn open_on(path: PathBuf, db: sled::Db, sled_file: Arc<SledFile>, options: Options) -> Result<Self, StoreError> {
        crate::private::own_log_files(&path)?;
        // sled's log file and the directory entries it just created must survive a power cut too.
        if !options.salvage {
            sled_file.sync(true).map_err(StoreError::Storage)?;
            File::open(&path)?
                .sync_all()
                .map_err(|error| StoreError::Storage(format!("fsync of the data directory: {error}")))?;
        }

        let trees = Trees::open(&db)?;
        // Before anything is written: a log of an unknown format is refused as it is.
        let stored_format = read_format(&trees)?;
        // And one whose sled file lost what a checkpoint had made durable (`mark`).
        let checkpointed = crate::mark::read(&path).map_err(|reason| StoreError::corrupt(0, reason))?;
        let stored_head = trees::read_head(&trees)?;
        if let Some(crate::mark::Mark { head: checkpointed, .. }) = checkpointed
            && stored_head < checkpointed
        {
            return Err(StoreError::corrupt(
                stored_head + 1,
                format!(
                    "sled's file is damaged: it holds the log up to position {stored_head}, but a checkpoint had \
                     made it durable up to {checkpointed} (restore the data directory from a backup)"
                ),
            ));
        }
        if let Some(crate::mark::Mark { head, state: crate::mark::State::SyncFailed }) = checkpointed
            && !options.salvage
        {
            return Err(StoreError::SyncFailed { path, head });
        }
        // Left open (a crash), its WAL files may hold the only copy of batches
        // acknowledged after what sled holds: one that is gone is loss, not an
        // empty WAL (see `mark`).
        if let Some(crate::mark::Mark { state: crate::mark::State::Open | crate::mark::State::SyncFailed, .. }) =
            checkpointed
        {
            let gone: Vec<&str> = WAL_FILES.iter().copied().filter(|name| !path.join(name).exists()).collect();
            if !gone.is_empty() {
                return Err(StoreError::corrupt(
                    stored_head + 1,
                    format!(
                        "{} of the write-ahead log {} missing and the log was not closed cleanly, so \
                         acknowledged events after position {stored_head} (what sled holds) may be lost: \
                         restore the data directory from a backup, or put back what is missing (if nothing was appended \
                         after position {stored_head}, removing the file {} opens the log as it is)",
                        gone.join(" and "),
                        if gone.len() > 1 { "are" } else { "is" },
                        crate::mark::FILE
                    ),
                ));
            }
        }
        // What the write-ahead log gives back, checked before anything is
        // written: a refused open leaves sled's file as it found it.
        let (mut wal, frames) = Wals::open(&path, options.wal_len_max)?;
        let to_replay = frames_to_replay(&trees, &frames)?;
        let dropped = drop_torn_batch(&trees)?;
        if let Some(dropped @ 1..) = dropped {
            tracing::warn!(
                dropped,
                "dropped the records of a batch a crash left half-written in sled (the write-ahead log writes it \
                 back whole if it was acknowledged)"
            );
        }
        let replayed = replay(&trees, &sled_file, to_replay)?;
        if replayed > 0 {
            tracing::warn!(replayed, "wrote again the batches sled lost in a crash, from the write-ahead log");
        }
        let old_index = match stored_format {
            Some(format) => format < 4,
            None => !trees.streams.is_empty(),
        };
        if old_index {
            tracing::info!("building the stream index in groups (log format 4) from the records");
            trees::rebuild_stream_index(&trees)?;
        }
        // The index groups of the batches since the last checkpoint were only in
        // memory: index their records again. (A mark past the head is of a torn
        // batch, whose index entries were dropped with it.)
        let head = trees::read_head(&trees)?;
        let indexed = match old_index {
            true => head,
            false => trees::read_indexed(&trees, stored_format)?.min(head),
        };
        let reindexed = match indexed < head {
            true => trees::index_records(&trees, indexed + 1, head)?,
            false => 0,
        };
        if reindexed > 0 {
            tracing::info!(reindexed, "indexed again the records whose stream index was in memory at a crash");
        }
        trees.meta.insert(trees::META_INDEXED, &head.to_be_bytes())?;
        let marked = stored_format != Some(trees::LOG_FORMAT);
        if marked {
            trees.meta.insert(trees::META_FORMAT, &[trees::LOG_FORMAT])?;
        }
        if options.salvage {
            // Read to be copied elsewhere: nothing here is made durable or emptied.
        } else if dropped.is_some() || replayed > 0 || old_index || reindexed > 0 || marked {
            // Made durable before anything new is written at those positions,
            // and before the WAL that held them is emptied. A new format mark
            // too, before any batch is acknowledged from a WAL file that a
            // binary of the older format would not read (`wal.1` since format 6):
            // after a crash, that binary must find the new mark and refuse the log.
            flush_sled(&db).inspect_err(|error| sled_file.write_failed(error))?;
            sled_file.sync(false).map_err(StoreError::Storage)?;
        }
        // What sled holds now is durable: it was fsynced above, or when opened.
        let tail = read_tail(&trees)?;
        let open = crate::mark::Mark { head: tail.head, state: crate::mark::State::Open };
        if !options.salvage {
            if checkpointed != Some(open) {
                sled_file.mark(tail.head, crate::mark::State::Open)?;
            }
            wal.start_over()?;
        }

        let (jobs_sender, jobs) = mpsc::channel(options.queue_len_max.max(1));
        let (durable_sender, durable) = watch::channel(tail.head);
        let health = Arc::new(Health::default());
        if options.salvage {
            // Nor is anything written from now on (see `Inner`'s drop).
            health.fail("the log was opened to be copied (a salvage): it takes no appends".to_owned());
        }
        let durable_heads = Arc::new(DurableHeads::default());
        let counters = Arc::new(Counters::default());
        let applied = Arc::new(Applied::new(tail.head));
        let writer = Writer {
            trees: trees.clone(),
            jobs,
            health: Arc::clone(&health),
            tail,
            batch_len_max: options.batch_len_max.max(1),
            stream_heads: Default::default(),
            sled_file: Arc::clone(&sled_file),
            syncer: Some(Syncer {
                db: db.clone(),
                trees: trees.clone(),
                unindexed: HashMap::new(),
                received_head: tail.head,
                sled_file: Arc::clone(&sled_file),
                wal,
                checkpointing: None,
                durable: durable_sender,
                durable_heads: Arc::clone(&durable_heads),
                health: Arc::clone(&health),
                counters: Arc::clone(&counters),
                batch_len_max: options.batch_len_max.max(1) as u64,
                applied: Arc::clone(&applied),
                #[cfg(test)]
                checkpoint_hold: options.checkpoint_hold.clone(),
            }),
            applied,
        };
        let writer = std::thread::Builder::new().name("shoplog-writer".to_owned()).spawn(move || writer.run())?;
        Ok(EventLog {
            inner: Arc::new(Inner {
                path,
                trees,
                jobs: Some(jobs_sender),
                durable,
                durable_heads,
                health,
                counters,
                upcasters: options.upcasters,
                recovery: Recovery {
                    torn_records_dropped: dropped,
                    batches_replayed: replayed,
                    records_indexed: reindexed,
                },
                writer: Some(writer),
                sled_file,
                salvage: options.salvage,
                db,
            }),
        })
    }

    pub(crate) fn trees(&self) -> &Trees {
        &self.inner.trees
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Append atomically; returns once the events are durable.
    #[tracing::instrument(level = "debug", skip_all, fields(streams = request.streams.len()))]
    pub async fn append(&self, request: AppendRequest) -> Result<AppendResult, StoreError> {
        self.submit(request, None).await
    }

    /// The first result of the append made under `idempotency`, if the log holds
    /// one; writes nothing either way. The writer answers for a key only inside
    /// an append, and checks it before any version: so the question is an append
    /// that cannot be written (version `u64::MAX` of a stream, which no stream
    /// reaches). A key held with another request's hash is
    /// [`StoreError::IdempotencyKeyReused`], as an append would get.
    pub async fn repeated(
        &self,
        idempotency: Idempotency,
        metadata: Metadata,
    ) -> Result<Option<AppendResult>, StoreError> {
        let probe = AppendRequest {
            streams: vec![StreamAppend {
                stream: "idempotency-probe".to_owned(),
                expected: ExpectedVersion::Exact(u64::MAX),
                events: vec![NewEvent {
                    event_id: Uuid::now_v7(),
                    event_type: "IdempotencyProbe".to_owned(),
                    schema_version: 1,
                    subject: None,
                    payload: Vec::new(),
                }],
            }],
            metadata,
            idempotency: Some(idempotency),
            recorded_at: None,
        };
        match self.append(probe).await {
            Ok(result) => Ok(result.duplicate.then_some(result)),
            Err(StoreError::WrongExpectedVersion { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Crypto-shred `subject` (DESIGN §3.9): delete its key and append `request` (the
    /// event that records the forgetting) in one transaction. From then on every
    /// event sealed under `subject` reads as [`crate::Payload::Forgotten`], and appending a
    /// new one for it is refused.
    pub async fn forget(&self, subject: Uuid, request: AppendRequest) -> Result<AppendResult, StoreError> {
        self.submit(request, Some(subject)).await
    }

    /// Append records as another log stored them, bytes whole (a read replica
    /// copying its primary's log from NATS, DESIGN §4); returns once they are
    /// durable. All or nothing: each must be this log's next position, chain to
    /// its last record's hash (so the copy verifies as the primary does, and
    /// another log's records are refused), and be its stream's next version.
    /// A sealed payload stays sealed: this log holds no key for it, so it reads
    /// as [`crate::Payload::Forgotten`].
    pub async fn append_stored(&self, records: Vec<Vec<u8>>) -> Result<AppendResult, StoreError> {
        self.submit_work(Work::Stored(records)).await
    }

    async fn submit(&self, request: AppendRequest, forget: Option<Uuid>) -> Result<AppendResult, StoreError> {
        self.submit_work(Work::Append { request, forget }).await
    }

    async fn submit_work(&self, work: Work) -> Result<AppendResult, StoreError> {
        if let Some(reason) = self.inner.health.failure() {
            return Err(StoreError::Unavailable { reason });
        }
        let closed = || StoreError::Unavailable { reason: "the log is shut down".to_owned() };
        let jobs = self.inner.jobs.as_ref().ok_or_else(closed)?;
        let (reply, answer) = oneshot::channel();
        jobs.send(Job { work, reply }).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// The last durable position (0 for an empty log).
    pub fn head(&self) -> u64 {
        *self.inner.durable.borrow()
    }

    /// Why the log refuses appends, if it does (after a failed fsync).
    pub fn failure(&self) -> Option<String> {
        self.inner.health.failure()
    }

    /// Whether `subject`'s data is gone (forgotten, durably, or never restored
    /// with its key): for a reader that holds events read earlier, such as a
    /// live feed's buffer, to check again before it hands one on.
    pub fn is_forgotten(&self, subject: Uuid) -> Result<bool, StoreError> {
        Ok(!matches!(trees::visible_subject_key(&self.inner.trees, subject)?, Some(Some(_))))
    }

    /// A random 32-byte secret stored under `name` in the data dir, made (and made
    /// durable) on first use. The log uses none itself; the shell keys email hashes
    /// and signs tokens with them. Backups carry them with the log.
    pub fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let key = [trees::META_SECRET_PREFIX, name.as_bytes()].concat();
        let fresh = seal::new_key();
        let stored = match self.inner.trees.meta.compare_and_swap(&key, None as Option<&[u8]>, Some(&fresh[..]))? {
            Ok(()) => {
                self.make_durable()?;
                fresh
            }
            Err(existing) => existing
                .current
                .as_deref()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .ok_or_else(|| StoreError::corrupt(0, format!("secret {name} is not 32 bytes")))?,
        };
        Ok(stored)
    }

    /// Every named secret (see [`EventLog::secret`]), by name.
    pub fn secrets(&self) -> Result<Vec<(String, [u8; 32])>, StoreError> {
        let mut secrets = Vec::new();
        for item in self.inner.trees.meta.scan_prefix(trees::META_SECRET_PREFIX) {
            let (key, value) = item?;
            let name = String::from_utf8_lossy(&key[trees::META_SECRET_PREFIX.len()..]).into_owned();
            let value = <[u8; 32]>::try_from(value.as_ref())
                .map_err(|_| StoreError::corrupt(0, format!("secret {name} is not 32 bytes")))?;
            secrets.push((name, value));
        }
        Ok(secrets)
    }

    /// A tree of the caller's own in the log's database (read models, checkpoints),
    /// so that its writes can share one sled transaction. Names cannot collide with
    /// the log's trees.
    pub fn open_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.inner.db.open_tree(format!("x:{name}"))?)
    }

    /// Whether a tree made by [`EventLog::open_tree`] exists (without making it).
    pub fn has_tree(&self, name: &str) -> bool {
        let name = format!("x:{name}");
        self.inner.db.tree_names().iter().any(|existing| existing.as_ref() == name.as_bytes())
    }

    /// The names of the trees made by [`EventLog::open_tree`].
    pub fn own_trees(&self) -> Vec<String> {
        let names = self.inner.db.tree_names();
        names
            .iter()
            .filter_map(|name| name.strip_prefix(b"x:"))
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .collect()
    }

    /// Remove a tree made by [`EventLog::open_tree`] and everything in it (a retired
    /// read-model generation); `false` when there was none. No handle to it may be
    /// used afterwards.
    pub fn drop_tree(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.inner.db.drop_tree(format!("x:{name}"))?)
    }

    /// Flush everything written to the database so far, and fsync it, through
    /// the handle the log's checkpoints sync (a new one would not see an error
    /// an earlier sync was told of). A failure stops the log, and is never
    /// followed by a success: after a failed sync the kernel may have dropped
    /// the pages it could not write (see `mark`).
    pub fn make_durable(&self) -> Result<(), StoreError> {
        if let Some(reason) = self.inner.health.failure()
            && self.inner.health.written_wrong()
        {
            return Err(StoreError::Unavailable { reason });
        }
        let sled_file = &self.inner.sled_file;
        let flushed = flush_sled(&self.inner.db).map_err(|error| {
            sled_file.write_failed(&error);
            format!("flushing the log's database failed: {error}")
        });
        let synced = flushed.and_then(|()| sled_file.sync(false));
        synced.map_err(|reason| {
            tracing::error!(%reason, "making the log's database durable failed; refusing appends from now on");
            self.inner.health.fail(reason.clone());
            StoreError::Durability { reason }
        })
    }

    /// Whether a write or sync of sled's file failed since the log was
    /// opened: the next open refuses the log, which is then copied into a new
    /// data dir (see [`Options::salvage`]).
    pub fn must_be_copied(&self) -> bool {
        self.inner.sled_file.has_failed()
    }

    /// What opening the log repaired after a crash.
    pub fn recovery(&self) -> Recovery {
        self.inner.recovery
    }

    /// What the writer has committed since the log was opened.
    pub fn commit_stats(&self) -> CommitStats {
        let counters = &self.inner.counters;
        CommitStats {
            batches: counters.batches.load(Ordering::Relaxed),
            appends: counters.appends.load(Ordering::Relaxed),
            events: counters.events.load(Ordering::Relaxed),
            checkpoints: counters.checkpoints.load(Ordering::Relaxed),
        }
    }

    /// The bytes the data directory's files hold: sled's file and blobs, the
    /// write-ahead log's two files and the rest. (sled's own count,
    /// `Db::size_on_disk`, is of its own file only, about where its last
    /// segment ends: it leaves the write-ahead log out.)
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(files_len(&self.inner.path)?)
    }

    /// Up to `limit` events of the whole log from `from` on, in position order.
    pub fn read_all(&self, from: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.read_all_chained(from, None, limit)
    }

    /// `result`, and if it found the log damaged, the log then takes no more
    /// appends (as after a failed `fdatasync`): a command acknowledged now would be
    /// lost by the restore from a backup that the damage calls for, and a damaged
    /// history cannot be backed up whole. `/readyz` says so.
    pub(crate) fn noted<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(error) = &result {
            self.note(error);
        }
        result
    }

    /// See [`Self::noted`].
    fn note(&self, error: &StoreError) {
        if let StoreError::Corrupt { position, reason } = error {
            tracing::error!(position, %reason, "the log is damaged; it takes no more appends");
            self.inner.health.stop(format!(
                "log corrupt at position {position}: {reason} (restore the data directory from a backup)"
            ));
        }
    }

    /// [`Self::read_all`], given the hash of the record before `from` when the
    /// caller has it (see [`Self::scan_chained`]).
    fn read_all_chained(
        &self,
        from: u64,
        hash_before: Option<[u8; 32]>,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = Vec::with_capacity(limit.min(1024));
        self.scan_chained(from, hash_before, limit, |event| {
            events.push(event.into_owned());
            Ok::<(), StoreError>(())
        })?;
        Ok(events)
    }

    /// Lend up to `limit` events of the whole log from `from` on, in position
    /// order, to `visit`, and return how many it saw: what [`Self::read_all`]
    /// returns, with the same checks, but borrowed from the stored records, for a
    /// reader that decodes each event and keeps none (a replay). The first error,
    /// the log's or `visit`'s, stops the scan.
    pub fn scan<E: From<StoreError>>(
        &self,
        from: u64,
        limit: usize,
        visit: impl FnMut(EventRef<'_>) -> Result<(), E>,
    ) -> Result<usize, E> {
        self.scan_chained(from, None, limit, visit)
    }

    /// Up to `limit` records from `from` on, as stored (bytes whole, sealed
    /// payloads sealed), checked as [`Self::read_all`] checks them: what a
    /// replica copies with [`Self::append_stored`] (the primary's side of a gap
    /// it fills, DESIGN §4).
    pub fn read_stored(&self, from: u64, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut records = Vec::with_capacity(limit.min(1024));
        self.scan_stored(from.max(1), None, limit, |_, _, bytes| {
            records.push(bytes.to_vec());
            Ok::<(), ScanError<StoreError>>(())
        })?;
        Ok(records)
    }

    /// [`Self::scan`], given the hash of the record before `from` when the caller
    /// has it (a subscription: it read that record last), so that it is not read
    /// again from the log for every call.
    /// Every read of the whole log goes through it, so damage it finds is
    /// [`Self::noted`] whoever reads: a subscription, a read model's rebuild, a replay.
    fn scan_chained<E: From<StoreError>>(
        &self,
        from: u64,
        hash_before: Option<[u8; 32]>,
        limit: usize,
        mut visit: impl FnMut(EventRef<'_>) -> Result<(), E>,
    ) -> Result<usize, E> {
        self.scan_stored(from, hash_before, limit, |position, record, _| {
            visit(self.decode_record(position, record)?).map_err(ScanError::Visit)
        })
    }

    /// [`Self::scan_chained`], lending each record as stored (checked, not
    /// decoded); the visitor's own errors are `ScanError::Visit`, and damage it
    /// finds decoding a record (`ScanError::Log`) is noted like the scan's.
    fn scan_stored<E: From<StoreError>>(
        &self,
        from: u64,
        hash_before: Option<[u8; 32]>,
        limit: usize,
        visit: impl FnMut(u64, StoredRecord<'_>, &[u8]) -> Result<(), ScanError<E>>,
    ) -> Result<usize, E> {
        match self.scan_unnoted(from, hash_before, limit, visit) {
            Ok(seen) => Ok(seen),
            Err(ScanError::Log(error)) => {
                self.note(&error);
                Err(error.into())
            }
            Err(ScanError::Visit(error)) => Err(error),
        }
    }

    fn scan_unnoted<E>(
        &self,
        from: u64,
        hash_before: Option<[u8; 32]>,
        limit: usize,
        mut visit: impl FnMut(u64, StoredRecord<'_>, &[u8]) -> Result<(), ScanError<E>>,
    ) -> Result<usize, ScanError<E>> {
        let head = self.head();
        let from = from.max(1);
        if from > head || limit == 0 {
            return Ok(0);
        }
        // Reading the log in order checks the hash chain again on the way (paired
        // with the check on write), starting from the record before `from`.
        let mut previous_hash = match (from, hash_before) {
            (1, _) => GENESIS_HASH,
            (_, Some(hash)) => hash,
            (_, None) => self.stored_hash(from - 1)?,
        };
        let mut seen = 0;
        let last = head.min(from.saturating_add(limit as u64 - 1));
        chunk::walk::<ScanError<E>>(&self.inner.trees.events, from, last, |position, bytes| {
            let record = record::parse(bytes).map_err(|reason| StoreError::corrupt(position, reason))?;
            if record::chain_hash(&previous_hash, record.body) != record.hash {
                return Err(
                    StoreError::corrupt(position, "hash does not match the record and the previous hash").into()
                );
            }
            previous_hash = record.hash;
            visit(position, record, bytes)?;
            seen += 1;
            Ok(true)
        })?;
        if seen as u64 != last + 1 - from {
            return Err(StoreError::corrupt(from + seen as u64, "missing from the log").into());
        }
        Ok(seen)
    }

    /// Up to `limit` events of `stream` from `from_version` on (versions start at 1).
    /// A name no stream can have ([`is_stream_name`]) has none.
    pub fn read_stream(&self, stream: &str, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.noted(self.read_stream_unnoted(stream, from_version, limit))
    }

    fn read_stream_unnoted(
        &self,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if !is_stream_name(stream) {
            return Ok(Vec::new());
        }
        let head = self.head();
        let from = from_version.max(1);
        let mut events = Vec::new();
        let groups =
            self.inner.trees.index_groups(trees::group_key(stream, from)..=trees::stream_key(stream, u64::MAX), false);
        // The groups follow each other with no version left out: a missing or
        // shortened group would hand a command a history with a hole in it.
        let mut expected_first = trees::group_first(from);
        'groups: for item in groups {
            let (key, group) = item?;
            let (first, positions) = trees::parse_group(&key, &group).ok_or_else(|| trees::index_damaged(stream))?;
            if first != expected_first {
                // A group begun after this read started (a checkpoint may have
                // stored it beside an older copy of the one before): past the head.
                if group.get(..8).and_then(be_u64).is_none_or(|position| position > head) {
                    break;
                }
                return Err(StoreError::corrupt(
                    0,
                    format!(
                        "the index of stream {stream} goes on at version {first} where {expected_first} comes next"
                    ),
                ));
            }
            expected_first = first + positions.len() as u64;
            for (version, position) in (first..).zip(positions) {
                if version < from {
                    continue;
                }
                if position > head || events.len() >= limit {
                    break 'groups;
                }
                let event = self.read_position(position)?;
                if event.stream != stream || event.version != version {
                    let found = format!("{} v{}", event.stream, event.version);
                    return Err(StoreError::corrupt(
                        position,
                        format!("the index of stream {stream} names it as v{version}, the record is {found}"),
                    ));
                }
                events.push(event);
            }
        }
        Ok(events)
    }

    /// The stream's durable version (0 when it has no events). A stream appended
    /// to since the log was opened is answered from memory (the syncer's
    /// `DurableHeads`); any other from the end of its index.
    pub fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        if !is_stream_name(stream) {
            return Ok(0);
        }
        let head = self.head();
        if let Some(known) = self.inner.durable_heads.get(stream)
            && known.position <= head
        {
            return Ok(known.version);
        }
        let (version, position) = trees::read_stream_head(&self.inner.trees, stream)?;
        if position <= head {
            return Ok(version);
        }
        // The last entry is not durable yet: the durable version is the newest one
        // at or below the head.
        let groups =
            self.inner.trees.index_groups(trees::stream_key(stream, 1)..=trees::stream_key(stream, version), true);
        for item in groups {
            let (key, group) = item?;
            let (first, mut positions) =
                trees::parse_group(&key, &group).ok_or_else(|| trees::index_damaged(stream))?;
            if let Some(durable) = positions.rposition(|position| position <= head) {
                return Ok(first + durable as u64);
            }
        }
        Ok(0)
    }

    /// Whether the stream index names `position` as `version` of `stream`.
    pub(crate) fn check_indexed(&self, stream: &str, version: u64, position: u64) -> Result<(), StoreError> {
        let trees = &self.inner.trees;
        let indexed = trees.index_group(&trees::group_key(stream, version))?;
        if indexed.as_deref().and_then(|group| trees::group_position(group, version)) != Some(position) {
            return Err(StoreError::corrupt(
                position,
                format!("stream index of {stream} version {version} does not point here"),
            ));
        }
        Ok(())
    }

    fn stored_hash(&self, position: u64) -> Result<[u8; 32], StoreError> {
        chunk::read(&self.inner.trees.events, position, |bytes| {
            Ok(record::parse(bytes).map_err(|reason| StoreError::corrupt(position, reason))?.hash)
        })?
        .ok_or_else(|| StoreError::corrupt(position, "missing from the log"))
    }

    /// The event at `position`, checked against the hash chain as a read of the
    /// whole log checks it: its stored hash must be that of the record before it
    /// and its own bytes, so a changed byte in it is found by a stream's read too
    /// (a command deciding on a damaged history would write on it).
    fn read_position(&self, position: u64) -> Result<RecordedEvent, StoreError> {
        chunk::read_with_previous(&self.inner.trees.events, position, |before, bytes| {
            let record = record::parse(bytes).map_err(|reason| StoreError::corrupt(position, reason))?;
            let previous_hash = match before {
                None if position <= 1 => GENESIS_HASH,
                None => return Err(StoreError::corrupt(position - 1, "missing from the log")),
                Some(before) => record::parse(before).map_err(|reason| StoreError::corrupt(position - 1, reason))?.hash,
            };
            if record::chain_hash(&previous_hash, record.body) != record.hash {
                return Err(StoreError::corrupt(position, "hash does not match the record and the previous hash"));
            }
            Ok(self.decode_record(position, record)?.into_owned())
        })?
        .ok_or_else(|| StoreError::corrupt(position, "indexed event is missing"))
    }

    /// Check a parsed record's position, open its seal and upcast its payload.
    fn decode_record<'a>(&self, position: u64, record: StoredRecord<'a>) -> Result<EventRef<'a>, StoreError> {
        let header = record.header;
        if header.position != position {
            return Err(StoreError::corrupt(position, format!("record says position {}", header.position)));
        }
        let payload = match header.subject {
            None => Some(Cow::Borrowed(record.payload)),
            Some(subject) => match trees::visible_subject_key(&self.inner.trees, subject)? {
                Some(Some(key)) => Some(Cow::Owned(
                    seal::open(&key, header.event_id, record.payload)
                        .map_err(|reason| StoreError::corrupt(position, reason))?,
                )),
                // Forgotten, or restored without its key: either way the data is gone.
                Some(None) | None => None,
            },
        };
        let (schema_version, payload) = match payload {
            Some(bytes) => {
                let (version, bytes) = self
                    .inner
                    .upcasters
                    .apply(&header.event_type, header.schema_version, bytes)
                    .map_err(|reason| StoreError::corrupt(position, reason))?;
                (version, Some(bytes))
            }
            None => (header.schema_version, None),
        };
        let recorded_at = DateTime::from_timestamp_micros(header.recorded_at_micros)
            .ok_or_else(|| StoreError::corrupt(position, "recorded time out of range"))?;
        Ok(EventRef {
            position,
            stream: header.stream,
            version: header.version,
            event_id: header.event_id,
            event_type: header.event_type,
            schema_version,
            recorded_at,
            actor: header.actor,
            correlation_id: header.correlation_id,
            causation_id: header.causation_id,
            subject: header.subject,
            payload,
            hash: record.hash,
        })
    }

    /// Every event from `from` on: first those already in the log, then each new
    /// one as it becomes durable, in position order, with no gap and no repeat.
    ///
    /// A subscription is a handle of the log: the log stays open (and a wait in
    /// `next` goes on) while it lives, so its owner stops it on a signal of its
    /// own, as the read models and the live feed do.
    pub fn subscribe(&self, from: u64) -> Subscription {
        Subscription {
            log: self.clone(),
            next: from.max(1),
            hash_before_next: None,
            buffer: VecDeque::new(),
            durable: self.inner.durable.clone(),
        }
    }

    /// Walk the whole log: the hash chain, every record's position, the stream
    /// index (each event indexed at its version, nothing else in it) and the stored tail. The first problem found is an
    /// error naming its position.
    ///
    /// It checks a log at rest (`shoplog verify` opens the log offline): a batch
    /// appended while it walks can be reported as damage.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.verify_with(&mut |_| {})
    }

    /// [`EventLog::verify`], calling `progress` with the positions checked so far
    /// now and then.
    pub fn verify_with(&self, progress: &mut dyn FnMut(u64)) -> Result<VerifyReport, StoreError> {
        let trees = &self.inner.trees;
        let mut expected_position = 1;
        let mut stream_versions: HashMap<String, u64> = HashMap::new();
        let mut subjects_checked = std::collections::HashSet::new();
        let previous_hash = walk_chain(trees, |position, record| {
            // A sealed record's subject has a key, or the tombstone of a forget:
            // with neither, its data reads as forgotten though nothing forgot it.
            if let Some(subject) = record.header.subject
                && subjects_checked.insert(subject)
            {
                match trees::read_subject_key(trees, subject) {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return Err(StoreError::corrupt(
                            position,
                            format!("subject {subject} has neither a key nor the tombstone of a forget"),
                        ));
                    }
                    Err(_) => {
                        return Err(StoreError::corrupt(position, format!("the key of subject {subject} is damaged")));
                    }
                }
            }
            // One allocation per stream, not per event.
            let version = match stream_versions.get_mut(&*record.header.stream) {
                Some(version) => version,
                None => stream_versions.entry(record.header.stream.to_string()).or_insert(0),
            };
            *version += 1;
            if record.header.version != *version {
                return Err(StoreError::corrupt(
                    position,
                    format!(
                        "stream {} jumps to version {} after {}",
                        record.header.stream,
                        record.header.version,
                        *version - 1
                    ),
                ));
            }
            self.check_indexed(&record.header.stream, *version, position)?;
            expected_position += 1;
            if position.is_multiple_of(PROGRESS_EVERY) {
                progress(position);
            }
            Ok(())
        })?;
        let head = expected_position - 1;
        progress(head);
        let mut index_len = 0;
        for entry in trees.index_groups(.., false) {
            let (key, group) = entry?;
            let (_, positions) = trees::parse_group(&key, &group).ok_or_else(|| {
                let stream =
                    String::from_utf8_lossy(key.split(|byte| *byte == 0).next().unwrap_or_default()).into_owned();
                StoreError::corrupt(head, format!("an index entry of stream {stream} does not have the index's shape"))
            })?;
            index_len += positions.count() as u64;
        }
        if index_len != head {
            return Err(StoreError::corrupt(head, format!("stream index has {index_len} entries for {head} events")));
        }
        let tail = read_tail(trees)?;
        if tail.head != head || tail.last_hash != previous_hash {
            return Err(StoreError::corrupt(head, format!("stored tail says head {} and another hash", tail.head)));
        }
        Ok(VerifyReport { events: head, head, streams: stream_versions.len() as u64, last_hash: previous_hash })
    }
}

/// sled's database in `path`. sled's background IO threads may hold the
/// directory's lock for a moment after this process closed the log; a lock that
/// stays held is another process's.
fn open_sled(path: &Path, cache_capacity_bytes: u64) -> Result<sled::Db, StoreError> {
    if let Some(lost) = sled_file_lost(path) {
        return Err(StoreError::corrupt(1, lost));
    }
    if sled_settings_damaged(path) {
        return Err(StoreError::Storage(format!(
            "sled's settings file conf in {} is damaged: remove it and start again (sled writes it anew from the \
             settings shoplog always gives it; the log is in the file db beside it)",
            path.display()
        )));
    }
    let config = sled_config(path, cache_capacity_bytes);
    let (mut attempts, mut snapshots_removed) = (0, false);
    loop {
        match config.open().map_err(|error| open_error(path, error)) {
            Err(StoreError::Locked { .. }) if attempts < LOCK_ATTEMPTS => {
                attempts += 1;
                std::thread::sleep(LOCK_RETRY_PAUSE);
            }
            // After sled found its file damaged, not before: another process's
            // open may be writing a snapshot as this one begins.
            Err(StoreError::Corrupt { .. }) if !snapshots_removed && remove_unfinished_snapshots(path)? > 0 => {
                snapshots_removed = true;
            }
            opened => return opened,
        }
    }
}

/// Remove the snapshots of sled's page table that an open left unfinished
/// (`snap.<lsn>.generating`): sled writes one, syncs it and only then renames
/// it to `snap.<lsn>`, removing the older ones after that, so such a file is
/// never needed. But sled 0.34.7 reads the last of its `snap.*` files by name,
/// unfinished ones too, and an empty one (a full disk cut its write) made it
/// call its whole file damaged (a log that was whole read as one to restore
/// from a backup). Returns how many there were.
fn remove_unfinished_snapshots(path: &Path) -> Result<usize, StoreError> {
    let mut removed = 0;
    for entry in std::fs::read_dir(path)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(path.join(name.as_ref())) {
                Ok(()) => {
                    tracing::info!(file = %name, "removed a snapshot of sled's that an earlier open left unfinished");
                    removed += 1;
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(removed)
}

/// Why `path` holds what is left of a log whose sled file (`db`) is gone, if
/// it does: the checkpoint mark names a position past 0 (or is damaged, so it
/// cannot say), a write-ahead log file holds frames, or sled's snapshot of its
/// page table (`snap.*`) is there. sled would make a new, empty file there, and
/// the log would start again from position 1 over the lost one; this is said
/// before anything is written. (An empty log's `db` deleted after a clean stop
/// leaves none of them, and starts again empty: nothing was in it.)
pub fn sled_file_lost(path: &Path) -> Option<String> {
    // A `db` that is there, or that cannot be looked for (the open names why).
    match std::fs::metadata(path.join("db")) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        _ => return None,
    }
    let restore = "restore the data directory from a backup";
    let lost = |evidence: &str| format!("sled's file db is missing, though {evidence} ({restore})");
    match crate::mark::read(path) {
        Ok(Some(crate::mark::Mark { head: checkpointed @ 1.., .. })) => {
            return Some(format!(
                "sled's file db is missing, and with it the log a checkpoint had made durable up to position \
                 {checkpointed} ({restore})"
            ));
        }
        // Damaged, not unreadable.
        Err(_) if File::open(path.join(crate::mark::FILE)).is_ok() => {
            return Some(lost("the checkpoint mark beside it shows it held a log"));
        }
        Err(_) => {}
        Ok(_) => {}
    }
    let frames = WAL_FILES.iter().any(|name| std::fs::metadata(path.join(name)).is_ok_and(|file| file.len() > 0));
    if frames {
        return Some(lost("the write-ahead log beside it holds frames of the log"));
    }
    let snapshot =
        std::fs::read_dir(path).ok()?.flatten().any(|entry| entry.file_name().to_string_lossy().starts_with("snap."));
    snapshot.then(|| lost("sled's snapshot beside it shows it held a log"))
}

/// Whether `name` is one of the files a log keeps in its directory (sled's and
/// the store's), which a start that stopped before `db` was made leaves behind.
pub fn is_log_file(name: &str) -> bool {
    ["db", "conf", "blobs", crate::mark::FILE].contains(&name) || WAL_FILES.contains(&name) || name.starts_with("snap.")
}

/// Whether sled's settings file (`conf`: the segment size, compression and
/// sled's version, then a checksum) holds other settings than the ones every
/// shoplog opens sled with. sled refuses such a file with a line about sled
/// versions before 0.29, or takes a damaged checksum with a warning; a file of
/// up to 8 bytes it takes as none and writes again.
fn sled_settings_damaged(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path.join("conf")) else {
        return false;
    };
    let expected = format!("segment_size: {SEGMENT_SIZE}\nuse_compression: false\nversion: 0.34\n");
    bytes.len() > 8 && bytes.get(..bytes.len() - 4) != Some(expected.as_bytes())
}

/// Walk the hash chain from position 1: each record parsed, at its position,
/// its hash the chain's (checked on a second thread, see [`chain`]); `each`
/// sees every record that parsed, in order, maybe before its hash is checked.
/// Returns the last hash, or the first problem, naming its position.
fn walk_chain(
    trees: &Trees,
    mut each: impl FnMut(u64, &record::StoredRecord<'_>) -> Result<(), StoreError>,
) -> Result<[u8; 32], StoreError> {
    let broken = |position| StoreError::corrupt(position, "hash does not match the record and the previous hash");
    chain::checked(GENESIS_HASH, broken, |chain| {
        chunk::walk(&trees.events, 1, u64::MAX, |position, bytes| {
            let record = record::parse(bytes).map_err(|reason| StoreError::corrupt(position, reason))?;
            if record.header.position != position {
                return Err(StoreError::corrupt(position, format!("record says position {}", record.header.position)));
            }
            chain.link(position, record.body, record.hash)?;
            each(position, &record)?;
            Ok(true)
        })?;
        Ok(chain.last_hash())
    })
}

/// The first damaged record of the log in `dir` (its position and what is
/// wrong), walking the hash chain from the start without opening the log, which
/// writes (a crash's batches again) and checks the tail first: for `verify`
/// when the open itself fails on damage, so that it still names the first bad
/// position. `None` when the chain is sound.
/// `progress` is told the position reached now and then.
pub fn first_damaged_record(
    dir: impl AsRef<Path>,
    progress: &mut dyn FnMut(u64),
) -> Result<Option<(u64, String)>, StoreError> {
    let path = dir.as_ref();
    let db = match open_sled(path, Options::default().cache_capacity_bytes) {
        Ok(db) => db,
        Err(StoreError::Corrupt { position, reason }) => return Ok(Some((position, reason))),
        Err(other) => return Err(other),
    };
    let trees = Trees::open(&db)?;
    let walked = walk_chain(&trees, |position, _| {
        if position.is_multiple_of(PROGRESS_EVERY) {
            progress(position);
        }
        Ok(())
    });
    match walked {
        Ok(_) => Ok(None),
        Err(StoreError::Corrupt { position, reason }) => Ok(Some((position, reason))),
        Err(other) => Err(other),
    }
}

/// How often (in positions) a walk of the whole log tells its progress.
const PROGRESS_EVERY: u64 = 4096;

/// Events in position order from a starting position: catch-up, then live.
#[derive(Debug)]
pub struct Subscription {
    log: EventLog,
    /// The position of the next event to read from the log.
    next: u64,
    /// The hash of the event before `next`, once read: the hash chain is
    /// checked on from it, instead of from that record read again.
    hash_before_next: Option<[u8; 32]>,
    buffer: VecDeque<RecordedEvent>,
    durable: watch::Receiver<u64>,
}

/// What stopped a scan: the log (its damage, its storage), or the scan's visitor.
enum ScanError<E> {
    Log(StoreError),
    Visit(E),
}

impl<E> From<StoreError> for ScanError<E> {
    fn from(error: StoreError) -> Self {
        ScanError::Log(error)
    }
}

/// How many events a subscription reads from disk at a time.
const SUBSCRIPTION_CHUNK_LEN: usize = 512;

impl Subscription {
    /// The next event, waiting for it to be committed if need be.
    pub async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Ok(event);
            }
            if self.next <= *self.durable.borrow_and_update() {
                let events = self.log.read_all_chained(self.next, self.hash_before_next, SUBSCRIPTION_CHUNK_LEN)?;
                if let Some(last) = events.last() {
                    self.next = last.position + 1;
                    self.hash_before_next = Some(last.hash);
                }
                self.buffer.extend(events);
                continue;
            }
            self.durable
                .changed()
                .await
                .map_err(|_| StoreError::Unavailable { reason: "the log is shut down".to_owned() })?;
        }
    }

    /// Wait until the next event is committed, then lend it and those after it
    /// that are committed already, up to `limit`, to `visit`, borrowed from the
    /// stored records as [`EventLog::scan`] lends them; returns how many it lent.
    /// Events [`Self::next`] read ahead come first. Like `next`, it loses nothing
    /// when dropped while it waits, and after an error of `visit` the
    /// subscription goes on after the last event `visit` took.
    pub async fn next_scan<E: From<StoreError>>(
        &mut self,
        limit: usize,
        mut visit: impl FnMut(EventRef<'_>) -> Result<(), E>,
    ) -> Result<usize, E> {
        if limit == 0 {
            return Ok(0);
        }
        if !self.buffer.is_empty() {
            let mut lent = 0;
            while lent < limit
                && let Some(event) = self.buffer.front()
            {
                visit(event.lend())?;
                self.buffer.pop_front();
                lent += 1;
            }
            return Ok(lent);
        }
        // A handle of its own: the visitor decodes while the subscription moves on.
        let log = self.log.clone();
        self.next_scanned(limit, |position, record, _| {
            visit(log.decode_record(position, record)?).map_err(ScanError::Visit)
        })
        .await
    }

    /// [`Self::next_scan`], lending each record as the log stores it, bytes and
    /// all (a sealed payload stays sealed), with the envelope fields that route
    /// it: what a relay forwards. Events [`Self::next`] read ahead are read
    /// again from the log, as stored.
    pub async fn next_stored<E: From<StoreError>>(
        &mut self,
        limit: usize,
        mut visit: impl FnMut(StoredEvent<'_>) -> Result<(), E>,
    ) -> Result<usize, E> {
        if limit == 0 {
            return Ok(0);
        }
        if !self.buffer.is_empty() {
            self.next = self.next_position();
            self.hash_before_next = None;
            self.buffer.clear();
        }
        self.next_scanned(limit, |position, record, bytes| {
            let header = &record.header;
            visit(StoredEvent {
                position,
                stream: &header.stream,
                version: header.version,
                event_id: header.event_id,
                event_type: &header.event_type,
                schema_version: header.schema_version,
                bytes,
            })
            .map_err(ScanError::Visit)
        })
        .await
    }

    /// Wait until the next event is committed, then lend the committed records
    /// from it on, up to `limit`, to `visit`, as stored; the subscription goes
    /// on after the last record `visit` took.
    async fn next_scanned<E: From<StoreError>>(
        &mut self,
        limit: usize,
        mut visit: impl FnMut(u64, StoredRecord<'_>, &[u8]) -> Result<(), ScanError<E>>,
    ) -> Result<usize, E> {
        loop {
            if self.next <= *self.durable.borrow_and_update() {
                let (mut lent, mut last_hash) = (0, None);
                let scanned =
                    self.log.scan_stored(self.next, self.hash_before_next, limit, |position, record, bytes| {
                        let hash = record.hash;
                        visit(position, record, bytes)?;
                        lent += 1;
                        last_hash = Some(hash);
                        Ok(())
                    });
                self.next += lent as u64;
                if last_hash.is_some() {
                    self.hash_before_next = last_hash;
                }
                scanned?;
                if lent > 0 {
                    return Ok(lent);
                }
            }
            self.durable
                .changed()
                .await
                .map_err(|_| StoreError::Unavailable { reason: "the log is shut down".to_owned() })?;
        }
    }

    /// The position of the next event this subscription will deliver.
    pub fn next_position(&self) -> u64 {
        self.next - self.buffer.len() as u64
    }
}

/// sled's settings for a log in `path`: the segment size that keeps records out of
/// blobs, and no background flush (the log flushes and fsyncs sled itself, at
/// checkpoints; appends are durable through the write-ahead log).
pub(crate) fn sled_config(path: &Path, cache_capacity_bytes: u64) -> sled::Config {
    sled::Config::new()
        .path(path)
        .segment_size(SEGMENT_SIZE)
        .cache_capacity(cache_capacity_bytes)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
}

/// sled's flush, and then the memory it freed handed back at once.
///
/// sled frees through crossbeam-epoch: what a thread replaces is kept in that
/// thread's bag of deferred frees until the bag holds 64 of them. A flush seals
/// sled's write buffer and defers the old handle, which keeps the whole 8 MiB
/// segment buffer it shares alive. In a thread that defers little else (the
/// syncer, which flushes only at checkpoints) that held one segment buffer per
/// checkpoint: 15 buffers, 126 MiB, at 1M events (docs/BENCHMARKS.md). Flushing
/// the thread's bag after each flush frees them as soon as no reader can see
/// them. `sled::crossbeam_pin` is sled's own collector (sled is pinned to 0.34.7).
pub(crate) fn flush_sled(db: &sled::Db) -> sled::Result<()> {
    db.flush()?;
    sled::crossbeam_pin().flush();
    Ok(())
}

fn open_error(path: &Path, error: sled::Error) -> StoreError {
    match &error {
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("could not acquire lock") =>
        {
            StoreError::Locked { path: path.to_path_buf() }
        }
        // sled found its own file damaged: no record of the log can be named
        // (sled's recovery gives up before any), so the damage is at position 0.
        sled::Error::Corruption { .. } => StoreError::corrupt(
            0,
            format!(
                "sled's file in {} is damaged, sled cannot open it (restore the data directory from a backup)",
                path.display()
            ),
        ),
        // An open writes at least one segment of sled's (a checkpoint at the
        // open another): room for two is asked for.
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => StoreError::Storage(format!(
            "opening {}: the disk is full (opening writes: free at least {} MiB, then start again)",
            path.display(),
            2 * SEGMENT_SIZE / (1024 * 1024)
        )),
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => StoreError::Storage(format!(
            "opening {}: permission denied (run shoplog as the user that owns the data directory)",
            path.display()
        )),
        _ => StoreError::Storage(format!("opening {}: {error}", path.display())),
    }
}

/// The stored format mark (`None` for a log never opened), refused when unknown.
fn read_format(trees: &Trees) -> Result<Option<u8>, StoreError> {
    match trees.meta.get(trees::META_FORMAT)? {
        None => Ok(None),
        Some(format) => match format.as_ref() {
            [known] if trees::LOG_FORMATS_READ.contains(known) => Ok(Some(*known)),
            unknown => Err(StoreError::corrupt(0, format!("unknown log format {unknown:?}"))),
        },
    }
}

/// The stored tail, checked against the last record.
fn read_tail(trees: &Trees) -> Result<Tail, StoreError> {
    let meta = |key: &[u8]| trees.meta.get(key);
    let head = trees::read_head(trees)?;
    let last_hash = match meta(trees::META_LAST_HASH)? {
        None => GENESIS_HASH,
        Some(bytes) => <[u8; 32]>::try_from(bytes.as_ref())
            .map_err(|_| StoreError::corrupt(head, "stored last hash is not 32 bytes"))?,
    };
    let last_recorded_micros = match meta(trees::META_LAST_RECORDED_AT)? {
        None => 0,
        Some(bytes) => be_u64(&bytes)
            .map(|micros| micros as i64)
            .ok_or_else(|| StoreError::corrupt(head, "stored time is not 8 bytes"))?,
    };
    let last = chunk::last(&trees.events, |last, bytes| {
        // The first bad position: the first one missing, or the first past the head.
        if last < head {
            let missing = format!("positions {} to {head} are missing: the last event is at {last}", last + 1);
            return Err(StoreError::corrupt(last + 1, format!("{missing}, the stored head at {head}")));
        }
        if last > head {
            return Err(StoreError::corrupt(
                head + 1,
                format!("the stored head is {head} but the last event is {last}"),
            ));
        }
        Ok(record::parse(bytes).map_err(|reason| StoreError::corrupt(head, reason))?.hash)
    })?;
    match last {
        None if head != 0 => {
            return Err(StoreError::corrupt(1, format!("positions 1 to {head} are missing: the log holds no event")));
        }
        Some(hash) if hash != last_hash => {
            return Err(StoreError::corrupt(head, "the last event's hash is not the stored last hash"));
        }
        _ => {}
    }
    Ok(Tail { head, last_hash, last_recorded_micros })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_event(stream: &str) -> AppendRequest {
        let id = Uuid::now_v7();
        AppendRequest::single(
            stream,
            crate::ExpectedVersion::Any,
            vec![crate::NewEvent {
                event_id: id,
                event_type: "E".to_owned(),
                schema_version: 1,
                subject: None,
                payload: vec![7; 40],
            }],
            crate::Metadata { actor: "test".to_owned(), correlation_id: id, causation_id: id },
        )
    }

    /// When a WAL file is full, the checkpoint runs on a thread of its own: held
    /// back there, it stops no appender, whose batches go to the other file,
    /// until that one is full too and needs the first one back.
    #[tokio::test]
    async fn appends_are_acknowledged_while_a_checkpoint_is_held_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let hold = Arc::new(crate::writer::Hold::default());
        hold.set(true);
        let options = || Options { wal_len_max: 2048, ..Options::default() };
        let log = EventLog::open_with(dir.path(), Options { checkpoint_hold: Some(Arc::clone(&hold)), ..options() })
            .expect("opens");
        let indexed = || trees::read_indexed(&log.inner.trees, Some(trees::LOG_FORMAT)).expect("reads");
        let mut appended = 0u64;
        // Every append is answered soon: none waits for the held checkpoint.
        let append_soon = |stream: &'static str| {
            let acknowledged = tokio::time::timeout(std::time::Duration::from_secs(10), log.append(one_event(stream)));
            async move { acknowledged.await.expect("acknowledged while the checkpoint is held back").expect("appends") }
        };
        while log.commit_stats().checkpoints == 0 {
            append_soon("s").await;
            appended += 1;
            assert!(appended < 100, "no checkpoint began");
        }
        // More batches, acknowledged while the checkpoint waits (the frames of
        // 3 more fit in the second file).
        for _ in 0..3 {
            append_soon("t").await;
            appended += 1;
        }
        assert_eq!(log.head(), appended);
        assert_eq!(indexed(), 0, "the checkpoint has not run");
        assert_eq!(log.commit_stats().checkpoints, 1);

        // Let it run: it covers every batch up to the switch, and the appends go on.
        hold.set(false);
        for _ in 0..30 {
            log.append(one_event("u")).await.expect("appends");
            appended += 1;
        }
        assert!(log.commit_stats().checkpoints >= 2, "{:?}", log.commit_stats());
        assert!(indexed() > 0, "a checkpoint ran");
        drop(log);
        let log = EventLog::open_with(dir.path(), options()).expect("reopens");
        assert_eq!(log.verify().expect("verifies").events, appended);
        assert_eq!(log.stream_version("u").expect("reads"), 30);
    }

    /// A checkpoint thread that panicked took the index groups it was to
    /// insert with it: the log stops taking appends and says why, and its
    /// close makes no checkpoint that would mark those groups indexed, so the
    /// next open indexes them again from the records and no stream comes back shorter.
    #[tokio::test]
    async fn a_checkpoint_that_panicked_fails_the_log_and_loses_no_stream_version() {
        let dir = tempfile::tempdir().expect("temp dir");
        let hold = Arc::new(crate::writer::Hold::default());
        hold.panic_next();
        let options = || Options { wal_len_max: 2048, ..Options::default() };
        let log = EventLog::open_with(dir.path(), Options { checkpoint_hold: Some(Arc::clone(&hold)), ..options() })
            .expect("opens");
        for _ in 0..3 {
            log.append(one_event("s")).await.expect("appends");
        }
        let mut appended = 3;
        while log.commit_stats().checkpoints == 0 {
            log.append(one_event("t")).await.expect("appends");
            appended += 1;
            assert!(appended < 100, "no checkpoint began");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while log.failure().is_none() {
            assert!(std::time::Instant::now() < deadline, "a checkpoint that panicked left the log healthy");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(log.failure().is_some_and(|reason| reason.contains("checkpoint")), "{:?}", log.failure());
        assert!(log.append(one_event("s")).await.is_err(), "a failed log took an append");
        drop(log);

        let log = EventLog::open_with(dir.path(), options()).expect("reopens");
        assert_eq!(log.stream_version("s").expect("reads"), 3);
        assert_eq!(log.stream_version("t").expect("reads"), appended - 3);
        assert_eq!(log.verify().expect("verifies").events, appended);
    }

    /// After a failed write or sync, `make_durable` never answers that what
    /// sled holds is durable: a sync that follows a failed one succeeds though
    /// the kernel dropped what it could not write.
    #[tokio::test]
    async fn after_a_failed_sync_make_durable_never_says_durable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = EventLog::open(dir.path()).expect("opens");
        log.make_durable().expect("durable");
        log.inner.health.fail("fdatasync of sled's file: Input/output error (a test's)".to_owned());
        assert!(matches!(log.make_durable(), Err(StoreError::Unavailable { .. })), "{:?}", log.make_durable());
        // A damage read back stops appends but leaves what was synced sound.
        let other = tempfile::tempdir().expect("temp dir");
        let log = EventLog::open(other.path()).expect("opens");
        log.inner.health.stop("log corrupt at position 1 (a test's)".to_owned());
        log.make_durable().expect("durable");
    }

    /// The files under `dir` (and its subdirectories) that hold `needle`.
    fn files_hold(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(files_hold(&path, needle));
            } else if std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|window| window == needle))
            {
                found.push(path);
            }
        }
        found
    }

    /// A log whose checkpoints a test can hold, with one event sealed under a
    /// subject (at position 1): the log, its hold and the subject.
    async fn log_with_a_sealed_event(dir: &Path) -> (EventLog, Arc<crate::writer::Hold>, Uuid) {
        let hold = Arc::new(crate::writer::Hold::default());
        let log = EventLog::open_with(dir, Options { checkpoint_hold: Some(Arc::clone(&hold)), ..Options::default() })
            .expect("opens");
        let subject = Uuid::now_v7();
        let mut sealed = one_event("customer-1");
        sealed.streams[0].events[0].subject = Some(subject);
        log.append(sealed).await.expect("appends");
        (log, hold, subject)
    }

    /// Opens a held checkpoint again whatever happens, or a failing assertion
    /// would leave the syncer waiting and the test hanging in the log's drop.
    struct OpenOnDrop(Arc<crate::writer::Hold>);

    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            self.0.set(false);
        }
    }

    /// The writer deletes a forgotten subject's key in sled before the forget is
    /// durable (a checkpoint makes it so); until then readers still read the
    /// subject's events, as they read no event past the durable head: a forget
    /// whose checkpoint then failed was never seen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_see_a_forget_only_once_it_is_durable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, hold, subject) = log_with_a_sealed_event(dir.path()).await;
        let payload = |log: &EventLog| log.read_all(1, 1).expect("reads").remove(0).payload;
        assert!(matches!(payload(&log), crate::Payload::Plain(_)));

        hold.set(true);
        let _open_on_drop = OpenOnDrop(Arc::clone(&hold));
        let forgetting = {
            let log = log.clone();
            tokio::spawn(async move { log.forget(subject, one_event("customer-1")).await })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while log.inner.trees.keys.get(subject.as_bytes()).expect("reads").is_some_and(|key| !key.is_empty()) {
            assert!(std::time::Instant::now() < deadline, "the writer never deleted the key");
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert!(matches!(payload(&log), crate::Payload::Plain(_)), "a forget not yet durable was seen");
        assert!(!forgetting.is_finished(), "the forget was answered before its checkpoint");

        hold.set(false);
        forgetting.await.expect("the forget ends").expect("forgets");
        assert_eq!(payload(&log), crate::Payload::Forgotten, "a durable forget is seen");
    }

    /// A damaged stream index is reported as damage, never a panic or another
    /// stream's events: a group whose versions would run past `u64::MAX`, and a
    /// group that names a position holding another stream's event.
    #[tokio::test]
    async fn a_damaged_stream_index_is_damage_not_a_panic_or_another_streams_events() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = EventLog::open(dir.path()).expect("opens");
        log.append(one_event("b-1")).await.expect("appends");
        let streams = &log.inner.trees.streams;
        let first = u64::MAX - 14;
        assert_eq!(trees::group_first(first), first, "a group's first version");
        let positions: Vec<u8> = (0..15u64).flat_map(|_| 1u64.to_be_bytes()).collect();
        streams.insert(trees::stream_key("huge-1", first), positions).expect("writes");
        streams.insert(trees::stream_key("a-1", 1), &1u64.to_be_bytes()).expect("writes");

        let error = log.read_stream("huge-1", first, 100).expect_err("damage");
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
        let error = log.stream_version("huge-1").expect_err("damage");
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
        let error = log.read_stream("a-1", 1, 100).expect_err("another stream's event");
        assert!(matches!(error, StoreError::Corrupt { position: 1, .. }), "{error}");
        assert!(error.to_string().contains("b-1 v1"), "{error}");
        assert_eq!(log.read_stream("b-1", 1, 100).expect("reads").len(), 1, "the sound stream reads");
    }

    /// A reader that reads a subject's key while the writer forgets it: between
    /// the reader's first look and its second, the writer holds the key and
    /// deletes it, and the forget is not durable yet. The reader must still get
    /// the key (it read `keys` first, before the delete); looking in `Forgetting`
    /// first missed the hold and then found the tombstone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_racing_a_forget_does_not_see_it_before_it_is_durable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, hold, subject) = log_with_a_sealed_event(dir.path()).await;
        hold.set(true);
        let _open_on_drop = OpenOnDrop(Arc::clone(&hold));

        let (in_between, reader_waits) = std::sync::mpsc::channel();
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                let keys = log.inner.trees.keys.clone();
                crate::trees::AFTER_FIRST_KEY_READ.with(|hook| {
                    *hook.borrow_mut() = Some(Box::new(move || {
                        let _ = in_between.send(());
                        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                        while keys.get(subject.as_bytes()).ok().flatten().is_some_and(|key| !key.is_empty()) {
                            assert!(std::time::Instant::now() < deadline, "the writer never deleted the key");
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                    }));
                });
                log.is_forgotten(subject)
            })
        };
        reader_waits.recv_timeout(std::time::Duration::from_secs(10)).expect("the reader reads");
        let forgetting = {
            let log = log.clone();
            tokio::spawn(async move { log.forget(subject, one_event("customer-1")).await })
        };
        let seen = tokio::task::spawn_blocking(move || reader.join()).await.expect("joins").expect("reader ends");
        assert!(!seen.expect("reads"), "a forget not yet durable was seen");
        assert!(!forgetting.is_finished(), "the forget was answered before its checkpoint");
        hold.set(false);
        forgetting.await.expect("the forget ends").expect("forgets");
        assert!(log.is_forgotten(subject).expect("reads"), "a durable forget is seen");
    }

    /// Forgetting a subject deletes its key. The write-ahead log held the key in
    /// the frame of the batch that made it; a forget empties the log's files, so
    /// none of them keeps the key once the forget is answered. sled may keep the
    /// old bytes in its file until it reuses that segment; a backup made after
    /// the forget, restored into a new directory, holds the key nowhere.
    #[tokio::test]
    async fn a_forgotten_subjects_key_is_in_no_wal_file_once_forgotten_nor_anywhere_in_a_restore() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = EventLog::open(dir.path()).expect("opens");
        let subject = Uuid::now_v7();
        let mut sealed = one_event("customer-1");
        sealed.streams[0].events[0].subject = Some(subject);
        log.append(sealed).await.expect("appends");
        let key = log.inner.trees.keys.get(subject.as_bytes()).expect("reads").expect("a key was made").to_vec();
        assert_eq!(key.len(), 32);
        let wal_files = || {
            let wal = |path: &PathBuf| path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("wal"));
            files_hold(dir.path(), &key).into_iter().filter(wal).collect::<Vec<_>>()
        };
        assert!(!wal_files().is_empty(), "the WAL holds the new key before the forget");
        log.forget(subject, one_event("customer-1")).await.expect("forgets");
        assert_eq!(log.inner.trees.keys.get(subject.as_bytes()).expect("reads").map(|key| key.len()), Some(0));
        assert_eq!(wal_files(), Vec::<PathBuf>::new(), "a WAL file keeps the forgotten key");
        // The log goes on after the checkpoint the forget made.
        log.append(one_event("customer-2")).await.expect("appends after the forget");

        let mut backup = Vec::new();
        log.backup(&mut backup, &mut |_| {}).expect("backs up");
        drop(log);
        let restored = tempfile::tempdir().expect("temp dir");
        let target = restored.path().join("data");
        crate::restore_backup(backup.as_slice(), &target, crate::RestoreTo::End, &mut |_| {}).expect("restores");
        assert_eq!(files_hold(&target, &key), Vec::<PathBuf>::new(), "the restore holds the forgotten key");
        let log = EventLog::open(&target).expect("the restore opens");
        assert_eq!(log.head(), 3);
        log.verify().expect("the restore verifies");
    }
}
