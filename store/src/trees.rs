//! The sled trees of the log and their key layouts.
//!
//! - `events`: position (u64 BE) → record
//! - `streams`: the stream index, in groups of [`STREAM_GROUP_LEN`] versions:
//!   stream ‖ 0x00 ‖ the group's first version (u64 BE) → the positions of the
//!   group's versions in order (u64 BE each, 1 to 16 of them). A stream's head is
//!   the last position of its last group, so no separate heads tree costs an
//!   insert per append; one entry per 16 events keeps sled's memory from growing
//!   with the log as one entry per event did (docs/BENCHMARKS.md). The groups
//!   written since the last checkpoint are in [`RecentGroups`], not yet in this
//!   tree: every read of the index goes through [`Trees::index_group`] or
//!   [`Trees::index_groups`], which look there first
//! - `idempotency`: blake3(key) → stored result
//! - `keys`: subject (16 bytes) → 32-byte key, or empty once forgotten
//! - `meta`: head position, last hash, last recorded time, format, how far the
//!   `streams` tree indexes the log, the marker of the batch being written, named
//!   secrets
//! - `x:<name>`: trees of the log's users (read models), see `EventLog::open_tree`

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, PoisonError, RwLock};

use sled::IVec;
use uuid::Uuid;

use crate::error::StoreError;
use crate::seal::SubjectKey;

pub(crate) const EVENTS: usize = 0;
pub(crate) const STREAMS: usize = 1;
pub(crate) const IDEMPOTENCY: usize = 2;
pub(crate) const KEYS: usize = 3;
pub(crate) const META: usize = 4;

pub(crate) const META_HEAD: &[u8] = b"head";
pub(crate) const META_LAST_HASH: &[u8] = b"last_hash";
pub(crate) const META_LAST_RECORDED_AT: &[u8] = b"last_recorded_at";
pub(crate) const META_FORMAT: &[u8] = b"format";

/// The log's format, stored under [`META_FORMAT`]. 2: records are packed in
/// chunks (`chunk`). 3: a write-ahead log (`wal`) may hold acknowledged batches
/// that sled does not hold yet. 4: the stream index is grouped (`streams`
/// above). 5: the `streams` tree may lag behind the records (it is written at
/// checkpoints, [`RecentGroups`]); [`META_INDEXED`] says how far it goes. 6:
/// the write-ahead log is two files written in turn (`wal`), so acknowledged
/// batches may be in the second one. 7: its frames name the durable head they
/// were written after (`"SLW2"`, `wal`), which an older binary would take for
/// the end of the file. 8: the checkpoint mark says whether the log was closed
/// cleanly (`"SLC2"`, `mark`), which a binary of format 7 would take for a
/// damaged mark (and, of a log a crash left open, one whose WAL file is gone
/// is refused). A log
/// of format 1 (every value one record, one index entry a version), 2 or 3 is
/// opened by rebuilding its stream index from the records
/// (`rebuild_stream_index`), a log of format 4 as indexed up to its head; all
/// are then marked 8, and a binary that knows only an older format refuses the
/// log instead of misreading it (one of format 5 would not read the second
/// file, one of format 6 no frame at all).
pub(crate) const LOG_FORMAT: u8 = 8;
pub(crate) const LOG_FORMATS_READ: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, LOG_FORMAT];
/// The last position whose stream index entry the `streams` tree holds (u64 BE):
/// written at each checkpoint after the groups. Opening the log indexes the
/// records past it again (`index_records`).
pub(crate) const META_INDEXED: &[u8] = b"indexed";
/// The batch being written: its first position, then the blake3 of each of its
/// idempotency keys (see `writer::drop_torn_batch`).
pub(crate) const META_BATCH: &[u8] = b"batch";
pub(crate) const META_SECRET_PREFIX: &[u8] = b"secret:";

#[derive(Debug, Clone)]
pub(crate) struct Trees {
    pub events: sled::Tree,
    pub streams: sled::Tree,
    pub idempotency: sled::Tree,
    pub keys: sled::Tree,
    pub meta: sled::Tree,
    /// The stream index groups not in `streams` yet.
    pub recent: Arc<RecentGroups>,
    /// The keys of subjects a batch not yet durable forgets (see [`Forgetting`]).
    pub forgetting: Arc<Forgetting>,
}

impl Trees {
    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(Trees {
            events: db.open_tree("events")?,
            streams: db.open_tree("streams")?,
            idempotency: db.open_tree("idempotency")?,
            keys: db.open_tree("keys")?,
            meta: db.open_tree("meta")?,
            recent: Arc::default(),
            forgetting: Arc::default(),
        })
    }

    /// All trees, in the order of the index constants, for one transaction.
    pub fn all(&self) -> [&sled::Tree; 5] {
        [&self.events, &self.streams, &self.idempotency, &self.keys, &self.meta]
    }

    /// The stream index group under `key`: the recent one, else the stored one.
    pub fn index_group(&self, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        match self.recent.get(key) {
            Some(group) => Ok(Some(group)),
            None => Ok(self.streams.get(key)?),
        }
    }

    /// The stream index groups with keys in `range`, in key order (or the
    /// reverse): the recent ones merged into the stored ones, and where both
    /// have a key, the recent group (the newer) in place of the stored one.
    pub fn index_groups(&self, range: impl RangeBounds<Vec<u8>>, reverse: bool) -> IndexGroups {
        // The recent groups are read first: a group taken out of them after this
        // is in `streams` before it is taken out, so the stored reads below find it.
        let bounds = (range.start_bound().map(Vec::as_slice), range.end_bound().map(Vec::as_slice));
        let mut recent = self.recent.range(bounds);
        if reverse {
            recent.reverse();
        }
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        IndexGroups {
            recent: recent.into_iter(),
            stored: self.streams.range(bounds),
            reverse,
            next_recent: None,
            next_stored: None,
            last: None,
        }
    }
}

/// The stream index groups written since the last checkpoint, which `streams`
/// does not hold yet.
///
/// A group is rewritten whole each time its stream gets an event, so inserting
/// it into sled at every append cost a sled insert (and a sled read to continue
/// it) per event. The writer puts each batch's groups here instead, and the
/// syncer inserts them into sled at the next checkpoint: once a group, however
/// many appends continued it. Until then the write-ahead log covers them: its
/// frames hold the records, and opening the log indexes again the records past
/// [`META_INDEXED`]. Like EventStoreDB's in-memory index table in front of its
/// index files on disk.
#[derive(Debug, Default)]
pub(crate) struct RecentGroups {
    groups: RwLock<BTreeMap<IVec, IVec>>,
}

impl RecentGroups {
    /// A batch's groups, whole, newer than any held for their keys.
    pub fn put(&self, groups: &[(IVec, IVec)]) {
        let mut recent = self.groups.write().unwrap_or_else(PoisonError::into_inner);
        for (key, group) in groups {
            recent.insert(key.clone(), group.clone());
        }
    }

    /// Take out the groups `streams` now holds durably, each unless a later
    /// batch has continued it since (a group only grows, so a longer one is newer).
    pub fn settle(&self, stored: &HashMap<IVec, IVec>) {
        let mut recent = self.groups.write().unwrap_or_else(PoisonError::into_inner);
        for (key, group) in stored {
            if recent.get(key).is_some_and(|held| held.len() == group.len()) {
                recent.remove(key);
            }
        }
    }

    /// How many groups are held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.groups.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn get(&self, key: &[u8]) -> Option<IVec> {
        self.groups.read().unwrap_or_else(PoisonError::into_inner).get(key).cloned()
    }

    fn range(&self, bounds: (Bound<&[u8]>, Bound<&[u8]>)) -> Vec<(IVec, IVec)> {
        let recent = self.groups.read().unwrap_or_else(PoisonError::into_inner);
        recent.range::<[u8], _>(bounds).map(|(key, group)| (key.clone(), group.clone())).collect()
    }
}

/// The merged stream index groups of [`Trees::index_groups`].
pub(crate) struct IndexGroups {
    recent: std::vec::IntoIter<(IVec, IVec)>,
    stored: sled::Iter,
    reverse: bool,
    next_recent: Option<(IVec, IVec)>,
    next_stored: Option<Result<(IVec, IVec), sled::Error>>,
    /// The key given last. A sled iterator reads the tree as it is at each step,
    /// so a checkpoint running meanwhile can put into `streams` a group this
    /// merge already gave from the recent ones: a stored key that does not come
    /// after this one is such a group, older, and is passed over.
    last: Option<IVec>,
}

impl IndexGroups {
    /// The next group of the two sources, in order, either source's duplicates included.
    fn merged(&mut self) -> Option<Result<(IVec, IVec), StoreError>> {
        if self.next_recent.is_none() {
            self.next_recent = self.recent.next();
        }
        if self.next_stored.is_none() {
            self.next_stored = if self.reverse { self.stored.next_back() } else { self.stored.next() };
        }
        let recent_first = match (&self.next_recent, &self.next_stored) {
            (None, None) => return None,
            (_, Some(Err(_))) | (None, Some(Ok(_))) => false,
            (Some(_), None) => true,
            (Some((recent, _)), Some(Ok((stored, _)))) => {
                let order = if self.reverse { stored.cmp(recent) } else { recent.cmp(stored) };
                if order == Ordering::Equal {
                    // The recent group is the newer one of the two.
                    self.next_stored = None;
                }
                order != Ordering::Greater
            }
        };
        match recent_first {
            true => self.next_recent.take().map(Ok),
            false => self.next_stored.take().map(|stored| stored.map_err(StoreError::from)),
        }
    }
}

impl Iterator for IndexGroups {
    type Item = Result<(IVec, IVec), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let item = self.merged()?;
            if let Ok((key, _)) = &item {
                let after_last = self.last.as_ref().is_none_or(|last| match self.reverse {
                    false => key > last,
                    true => key < last,
                });
                if !after_last {
                    continue;
                }
                self.last = Some(key.clone());
            }
            return Some(item);
        }
    }
}

/// How many versions of a stream one `streams` entry holds.
pub(crate) const STREAM_GROUP_LEN: u64 = 16;

/// The first version of the index group that holds `version` (versions start at 1).
pub(crate) fn group_first(version: u64) -> u64 {
    version.saturating_sub(1) / STREAM_GROUP_LEN * STREAM_GROUP_LEN + 1
}

/// The `streams` key of the group whose first version is `first`.
pub(crate) fn stream_key(stream: &str, first: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 9);
    key.extend_from_slice(stream.as_bytes());
    key.push(0);
    key.extend_from_slice(&first.to_be_bytes());
    key
}

/// Where `version` lies in its group's value, in bytes: its group holds the
/// versions before it in these bytes.
pub(crate) fn group_offset(version: u64) -> usize {
    8 * version.saturating_sub(group_first(version)) as usize
}

/// The position a group's value holds for `version`, if it holds one.
pub(crate) fn group_position(group: &[u8], version: u64) -> Option<u64> {
    let at = group_offset(version);
    group.get(at..at + 8).and_then(be_u64)
}

/// The error for an index entry of `stream` that does not have the index's shape.
pub(crate) fn index_damaged(stream: &str) -> StoreError {
    StoreError::corrupt(0, format!("index of stream {stream} is damaged"))
}

/// The `streams` key of the group that holds `version` of `stream`.
pub(crate) fn group_key(stream: &str, version: u64) -> Vec<u8> {
    stream_key(stream, group_first(version))
}

/// A `streams` entry read back: its first version and its positions; `None`
/// when its key or value does not have the index's shape.
pub(crate) fn parse_group<'v>(
    key: &[u8],
    value: &'v [u8],
) -> Option<(u64, impl DoubleEndedIterator<Item = u64> + ExactSizeIterator + 'v)> {
    let first = be_u64(key.get(key.len().checked_sub(8)?..)?)?;
    let len = value.len() as u64 / 8;
    // Versions counted on from `first` must not overflow (a damaged key could
    // name a first version near `u64::MAX`).
    let shaped = first == group_first(first)
        && value.len().is_multiple_of(8)
        && (1..=STREAM_GROUP_LEN).contains(&len)
        && first.checked_add(len).is_some_and(|end| end < u64::MAX);
    // Every piece is 8 bytes long (`chunks_exact`).
    let positions = value.chunks_exact(8).map(|bytes| u64::from_be_bytes(bytes.try_into().unwrap_or_default()));
    shaped.then_some((first, positions))
}

/// The index groups of a log being filled or rebuilt in position order, kept in
/// memory until full (at most [`GROUPS_BUFFERED_MAX`] streams at a time).
pub(crate) struct GroupBuffer {
    groups: std::collections::HashMap<String, (u64, Vec<u8>)>,
    streams_max: usize,
}

impl Default for GroupBuffer {
    fn default() -> Self {
        GroupBuffer { groups: std::collections::HashMap::new(), streams_max: GROUPS_BUFFERED_MAX }
    }
}

/// The most streams whose partial group a [`GroupBuffer`] keeps (about 200 bytes each).
const GROUPS_BUFFERED_MAX: usize = 65_536;

impl GroupBuffer {
    /// A buffer that writes out its partial groups once it holds `streams_max`
    /// streams (tests: a small one writes out often).
    #[cfg(test)]
    pub fn with_streams_max(streams_max: usize) -> Self {
        GroupBuffer { groups: std::collections::HashMap::new(), streams_max: streams_max.max(1) }
    }

    /// The last version of `stream` indexed here, if a partial group of it is
    /// held (a whole group, or one written out to make room, is in `streams`).
    pub fn last_version(&self, stream: &str) -> Option<u64> {
        self.groups.get(stream).map(|(first, positions)| (first + (positions.len() / 8) as u64).saturating_sub(1))
    }

    /// Index `version` of `stream` at `position`. Versions of a stream come in
    /// order, with none missing.
    pub fn put(&mut self, streams: &sled::Tree, stream: &str, version: u64, position: u64) -> Result<(), StoreError> {
        let first = group_first(version);
        if let Some((group, positions)) = self.groups.get_mut(stream)
            && *group == first
        {
            positions.extend_from_slice(&position.to_be_bytes());
            if positions.len() as u64 == 8 * STREAM_GROUP_LEN {
                streams.insert(stream_key(stream, first), positions.as_slice())?;
                self.groups.remove(stream);
            }
            return Ok(());
        }
        if self.groups.len() >= self.streams_max {
            self.write_all(streams)?;
        }
        // A group begun before this buffer last wrote out every partial group, or
        // before the records being indexed again: the versions before this one.
        let mut positions = match version == first {
            true => Vec::with_capacity(8 * STREAM_GROUP_LEN as usize),
            false => {
                let mut earlier =
                    streams.get(stream_key(stream, first))?.map(|value| value.to_vec()).unwrap_or_default();
                if earlier.len() < group_offset(version) {
                    return Err(StoreError::corrupt(
                        position,
                        format!("index of stream {stream} is damaged before version {version}"),
                    ));
                }
                earlier.truncate(group_offset(version));
                earlier
            }
        };
        positions.extend_from_slice(&position.to_be_bytes());
        if let Some((group, earlier)) = self.groups.insert(stream.to_owned(), (first, positions)) {
            streams.insert(stream_key(stream, group), earlier)?;
        }
        Ok(())
    }

    /// Write every partial group.
    pub fn write_all(&mut self, streams: &sled::Tree) -> Result<(), StoreError> {
        for (stream, (first, positions)) in self.groups.drain() {
            streams.insert(stream_key(&stream, first), positions)?;
        }
        Ok(())
    }
}

/// Build the stream index again from the records (for a log of a format before
/// the grouped index); the caller makes it durable before marking the format.
pub(crate) fn rebuild_stream_index(trees: &Trees) -> Result<(), StoreError> {
    trees.streams.clear()?;
    index_records(trees, 1, u64::MAX).map(drop)
}

/// Index the records from `from` to `to` (after a crash: the `streams` tree
/// holds the groups up to [`META_INDEXED`] only); the caller moves the mark and
/// makes it durable. Returns how many records it indexed.
pub(crate) fn index_records(trees: &Trees, from: u64, to: u64) -> Result<u64, StoreError> {
    let mut groups = GroupBuffer::default();
    let mut indexed = 0;
    crate::chunk::walk(&trees.events, from, to, |position, bytes| {
        let record = crate::record::parse(bytes).map_err(|reason| StoreError::corrupt(position, reason))?;
        groups.put(&trees.streams, &record.header.stream, record.header.version, position)?;
        indexed += 1;
        Ok::<bool, StoreError>(true)
    })?;
    groups.write_all(&trees.streams)?;
    Ok(indexed)
}

/// How far the `streams` tree indexes the log: [`META_INDEXED`], or for a log
/// of a format before 5 (whose index was always whole) its head.
pub(crate) fn read_indexed(trees: &Trees, format: Option<u8>) -> Result<u64, StoreError> {
    match trees.meta.get(META_INDEXED)? {
        Some(bytes) => be_u64(&bytes).ok_or_else(|| StoreError::corrupt(0, "stored index mark is not a u64")),
        None if format.is_some_and(|format| format < 5) => read_head(trees),
        None => Ok(0),
    }
}

/// Read a big-endian u64 stored by the log.
pub(crate) fn be_u64(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

/// The stored head: the last committed position (0 for an empty log).
pub(crate) fn read_head(trees: &Trees) -> Result<u64, StoreError> {
    match trees.meta.get(META_HEAD)? {
        None => Ok(0),
        Some(bytes) => be_u64(&bytes).ok_or_else(|| StoreError::corrupt(0, "stored head is not a u64")),
    }
}

/// The stream's last version as stored (0 when it has no events), with the
/// position of that version.
pub(crate) fn read_stream_head(trees: &Trees, stream: &str) -> Result<(u64, u64), StoreError> {
    let last = trees.index_groups(stream_key(stream, 1)..=stream_key(stream, u64::MAX), true).next();
    let Some(entry) = last else {
        return Ok((0, 0));
    };
    let (key, value) = entry?;
    let (first, positions) = parse_group(&key, &value).ok_or_else(|| index_damaged(stream))?;
    let len = positions.len() as u64;
    Ok((first + len - 1, positions.last().ok_or_else(|| index_damaged(stream))?))
}

/// The keys of the subjects that a batch forgets, from when the writer deletes
/// them in sled until the batch is durable: readers, who read no event past the
/// durable head, see no forget that is not durable either, so a forget that then
/// fails (and is never acknowledged) was never seen.
#[derive(Debug, Default)]
pub(crate) struct Forgetting(std::sync::Mutex<HashMap<Uuid, SubjectKey>>);

impl Forgetting {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, SubjectKey>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keep `subject`'s key for readers, before the writer deletes it.
    pub fn hold(&self, subject: Uuid, key: SubjectKey) {
        self.lock().insert(subject, key);
    }

    /// The forgets of `subjects` are durable: readers see them from now on.
    pub fn release(&self, subjects: &[Uuid]) {
        let mut held = self.lock();
        for subject in subjects {
            held.remove(subject);
        }
    }

    fn get(&self, subject: Uuid) -> Option<SubjectKey> {
        self.lock().get(&subject).copied()
    }
}

/// A subject's key as readers see it: as [`read_subject_key`], but a forget
/// that is not durable yet is not seen ([`Forgetting`]).
///
/// `keys` is read first and [`Forgetting`] only for a tombstone: the writer holds
/// a key before it deletes it, so a reader that sees the tombstone also sees the
/// hold until the forget is durable. The other order could miss the hold, then
/// see the tombstone the writer wrote meanwhile.
pub(crate) fn visible_subject_key(trees: &Trees, subject: Uuid) -> Result<Option<Option<SubjectKey>>, StoreError> {
    let stored = read_subject_key(trees, subject)?;
    #[cfg(test)]
    AFTER_FIRST_KEY_READ.with(|hook| {
        if let Some(hook) = hook.borrow().as_ref() {
            hook();
        }
    });
    match stored {
        Some(None) => Ok(Some(trees.forgetting.get(subject))),
        stored => Ok(stored),
    }
}

#[cfg(test)]
thread_local! {
    /// Runs on a reader's thread between the first and the second place
    /// [`visible_subject_key`] reads, so a test can let a forget run there.
    pub(crate) static AFTER_FIRST_KEY_READ: std::cell::RefCell<Option<Box<dyn Fn()>>> =
        const { std::cell::RefCell::new(None) };
}

/// The subject's key: `None` when it never had one, `Some(None)` once forgotten.
pub(crate) fn read_subject_key(trees: &Trees, subject: Uuid) -> Result<Option<Option<SubjectKey>>, StoreError> {
    let Some(bytes) = trees.keys.get(subject.as_bytes())? else {
        return Ok(None);
    };
    if bytes.is_empty() {
        return Ok(Some(None));
    }
    let key = SubjectKey::try_from(bytes.as_ref())
        .map_err(|_| StoreError::corrupt(0, format!("key of subject {subject} has {} bytes", bytes.len())))?;
    Ok(Some(Some(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_buffer_writes_whole_groups_also_when_it_fills_with_streams() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new().path(dir.path()).open().expect("opens");
        let streams = db.open_tree("streams").expect("tree");
        // Five streams in turn, two buffered at a time: partial groups are
        // written out and read back again all along.
        let mut buffer = GroupBuffer { streams_max: 2, ..GroupBuffer::default() };
        let mut position = 0;
        for version in 1..=40u64 {
            for stream in ["a", "b", "c", "d", "e"] {
                position += 1;
                buffer.put(&streams, stream, version, position).expect("puts");
            }
        }
        buffer.write_all(&streams).expect("writes");

        let mut found = Vec::new();
        for entry in streams.iter() {
            let (key, value) = entry.expect("reads");
            let (first, positions) = parse_group(&key, &value).expect("an index group");
            found.push((key[0], first, positions.collect::<Vec<_>>()));
        }
        let mut expected = Vec::new();
        for (index, stream) in (b'a'..=b'e').enumerate() {
            for first in [1u64, 17, 33] {
                let last = (first + STREAM_GROUP_LEN - 1).min(40);
                expected.push((
                    stream,
                    first,
                    (first..=last).map(|version| (version - 1) * 5 + index as u64 + 1).collect(),
                ));
            }
        }
        assert_eq!(found, expected);
        assert_eq!(read_stream_head(&Trees::open(&db).expect("trees"), "c").expect("reads"), (40, 39 * 5 + 3));
    }

    /// The trees of a fresh database in `dir` (they keep the database open).
    fn trees_in(dir: &std::path::Path) -> Trees {
        Trees::open(&sled::Config::new().path(dir).open().expect("opens")).expect("trees")
    }

    /// An index group of these positions.
    fn positions(range: std::ops::RangeInclusive<u64>) -> IVec {
        range.flat_map(u64::to_be_bytes).collect()
    }

    #[test]
    fn recent_groups_are_read_before_stored_ones_and_taken_out_only_as_stored() {
        let dir = tempfile::tempdir().expect("temp dir");
        let trees = trees_in(dir.path());
        trees.streams.insert(stream_key("a", 1), positions(1..=2)).expect("writes");
        trees.streams.insert(stream_key("b", 1), positions(3..=18)).expect("writes");
        trees.streams.insert(stream_key("b", 17), positions(19..=19)).expect("writes");
        // "a" continued since it was stored, "c" new.
        let recent =
            vec![(IVec::from(stream_key("a", 1)), positions(1..=3)), (stream_key("c", 1).into(), positions(20..=20))];
        trees.recent.put(&recent);

        let read = |reverse: bool| -> Vec<(Vec<u8>, IVec)> {
            trees
                .index_groups(.., reverse)
                .map(|entry| entry.map(|(key, group)| (key.to_vec(), group)))
                .collect::<Result<_, _>>()
                .expect("reads")
        };
        let expected = vec![
            (stream_key("a", 1), positions(1..=3)),
            (stream_key("b", 1), positions(3..=18)),
            (stream_key("b", 17), positions(19..=19)),
            (stream_key("c", 1), positions(20..=20)),
        ];
        assert_eq!(read(false), expected, "merged in key order, the recent group where both have one");
        assert_eq!(read(true), expected.iter().rev().cloned().collect::<Vec<_>>());
        let only_b: Vec<_> = trees
            .index_groups(stream_key("b", 17)..=stream_key("b", u64::MAX), false)
            .map(|entry| entry.expect("reads").0.to_vec())
            .collect();
        assert_eq!(only_b, vec![stream_key("b", 17)], "bounds hold for both sources");
        assert_eq!(trees.index_group(&stream_key("a", 1)).expect("reads"), Some(positions(1..=3)));
        assert_eq!(trees.index_group(&stream_key("b", 1)).expect("reads"), Some(positions(3..=18)));
        assert_eq!(read_stream_head(&trees, "c").expect("reads"), (1, 20));

        // A checkpoint stored "a" at 3 and "c" at 1; "c" was continued meanwhile.
        trees.recent.put(&[(stream_key("c", 1).into(), positions(20..=21))]);
        let stored: HashMap<IVec, IVec> =
            [(stream_key("a", 1).into(), positions(1..=3)), (stream_key("c", 1).into(), positions(20..=20))].into();
        trees.recent.settle(&stored);
        assert_eq!(trees.recent.len(), 1, "only the continued group stays");
        assert_eq!(trees.index_group(&stream_key("c", 1)).expect("reads"), Some(positions(20..=21)));
    }

    #[test]
    fn a_group_a_checkpoint_stores_while_a_read_goes_on_is_not_read_twice() {
        let dir = tempfile::tempdir().expect("temp dir");
        let trees = trees_in(dir.path());
        trees.streams.insert(stream_key("a", 1), positions(1..=16)).expect("writes");
        trees.recent.put(&[(stream_key("a", 17).into(), positions(17..=20))]);
        for reverse in [false, true] {
            let mut groups = trees.index_groups(stream_key("a", 1)..=stream_key("a", u64::MAX), reverse);
            let first = groups.next().expect("a group").expect("reads").0;
            // The checkpoint stores "a" at 17 as it was when it began (a later
            // batch continued it), after the read gave it, or the group before it.
            trees.streams.insert(stream_key("a", 17), positions(17..=18)).expect("writes");
            let rest: Vec<_> = groups.map(|entry| entry.expect("reads")).collect();
            let mut keys: Vec<Vec<u8>> =
                std::iter::once(first.to_vec()).chain(rest.iter().map(|(key, _)| key.to_vec())).collect();
            if reverse {
                keys.reverse();
            }
            assert_eq!(keys, vec![stream_key("a", 1), stream_key("a", 17)], "reverse {reverse}");
            trees.streams.remove(stream_key("a", 17)).expect("removes");
        }
    }

    #[test]
    fn only_entries_of_the_index_shape_parse() {
        let key = |first: u64| [&b"s\0"[..], &first.to_be_bytes()].concat();
        assert!(parse_group(&key(17), &[0; 16]).is_some());
        assert!(parse_group(&key(2), &[0; 8]).is_none(), "version 2 does not begin a group");
        assert!(parse_group(&key(1), &[0; 12]).is_none(), "not whole positions");
        assert!(parse_group(&key(1), &[]).is_none(), "empty");
        assert!(parse_group(&key(1), &[0; 8 * 17]).is_none(), "over 16 versions");
        assert!(parse_group(b"short", &[0; 8]).is_none());
    }
}
