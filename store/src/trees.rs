//! The sled trees of the log and their key layouts.
//!
//! - `events`: position (u64 BE) → record
//! - `streams`: stream ‖ 0x00 ‖ version (u64 BE) → position (u64 BE); a stream's
//!   head is its last entry, so no separate heads tree costs an insert per append
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

/// The log's format, stored under [`META_FORMAT`]: 3 since a write-ahead log
/// (`wal`) may hold acknowledged batches that sled does not hold yet, 2 since
/// records are packed in chunks (`chunk`). A log of format 1 (every value one
/// record) or 2 (no write-ahead log) is valid in format 3 as it is, so opening
/// it only moves the mark; a binary that knows only an older format then
/// refuses the log instead of missing the batches of its write-ahead log or
/// misreading its chunks.
pub(crate) const LOG_FORMAT: u8 = 3;
pub(crate) const LOG_FORMATS_READ: [u8; 3] = [1, 2, LOG_FORMAT];
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

/// The key of `version` of `stream` in the `streams` tree.
pub(crate) fn stream_key(stream: &str, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 9);
    key.extend_from_slice(stream.as_bytes());
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
    key
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
    let (key, position) = entry?;
    let damaged = || StoreError::corrupt(0, format!("index of stream {stream} is damaged"));
    let version = be_u64(&key[key.len().saturating_sub(8)..]).ok_or_else(damaged)?;
    Ok((version, be_u64(&position).ok_or_else(damaged)?))
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
