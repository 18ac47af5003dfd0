//! The sled trees of the log and their key layouts.
//!
//! - `events`: position (u64 BE) → record
//! - `streams`: the stream index, in groups of [`STREAM_GROUP_LEN`] versions:
//!   stream ‖ 0x00 ‖ the group's first version (u64 BE) → the positions of the
//!   group's versions in order (u64 BE each, 1 to 16 of them). A stream's head is
//!   the last position of its last group, so no separate heads tree costs an
//!   insert per append; one entry per 16 events keeps sled's memory from growing
//!   with the log as one entry per event did (docs/BENCHMARKS.md)
//! - `idempotency`: blake3(key) → stored result
//! - `keys`: subject (16 bytes) → 32-byte key, or empty once forgotten
//! - `meta`: head position, last hash, last recorded time, format, the marker of
//!   the batch being written, named secrets
//! - `x:<name>`: trees of the log's users (read models), see `EventLog::open_tree`

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
/// above). A log of format 1 (every value one record, one index entry a
/// version), 2 or 3 is opened by rebuilding its stream index from the records
/// (`rebuild_stream_index`) and marking it 4; a binary that knows only an older
/// format then refuses the log instead of misreading it.
pub(crate) const LOG_FORMAT: u8 = 4;
pub(crate) const LOG_FORMATS_READ: [u8; 4] = [1, 2, 3, LOG_FORMAT];
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
}

impl Trees {
    pub fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(Trees {
            events: db.open_tree("events")?,
            streams: db.open_tree("streams")?,
            idempotency: db.open_tree("idempotency")?,
            keys: db.open_tree("keys")?,
            meta: db.open_tree("meta")?,
        })
    }

    /// All trees, in the order of the index constants, for one transaction.
    pub fn all(&self) -> [&sled::Tree; 5] {
        [&self.events, &self.streams, &self.idempotency, &self.keys, &self.meta]
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
    8 * (version - group_first(version)) as usize
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
    let shaped = first == group_first(first) && value.len().is_multiple_of(8) && (1..=STREAM_GROUP_LEN).contains(&len);
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
        // A group begun before this buffer last wrote out every partial group.
        let mut positions = match version == first {
            true => Vec::with_capacity(8 * STREAM_GROUP_LEN as usize),
            false => streams.get(stream_key(stream, first))?.map(|value| value.to_vec()).unwrap_or_default(),
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
    let mut groups = GroupBuffer::default();
    crate::chunk::walk(&trees.events, 1, u64::MAX, |position, bytes| {
        let record = crate::record::parse(bytes).map_err(|reason| StoreError::corrupt(position, reason))?;
        groups.put(&trees.streams, &record.header.stream, record.header.version, position)?;
        Ok::<bool, StoreError>(true)
    })?;
    groups.write_all(&trees.streams)
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
    let last = trees.streams.range(stream_key(stream, 1)..=stream_key(stream, u64::MAX)).next_back();
    let Some(entry) = last else {
        return Ok((0, 0));
    };
    let (key, value) = entry?;
    let (first, positions) = parse_group(&key, &value).ok_or_else(|| index_damaged(stream))?;
    let len = positions.len() as u64;
    Ok((first + len - 1, positions.last().ok_or_else(|| index_damaged(stream))?))
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
