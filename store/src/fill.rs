//! Filling a new data directory with a whole log at once, for restore and import:
//! records go straight into sled (no writer, no transaction, no flush per append),
//! and the directory is made durable once at the end. Only ever
//! used on a directory nobody else has open, and it must be new or empty.

use std::fs::File;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::chunk::{self, CHUNK_LEN_MAX, CHUNK_RECORDS_MAX};
use crate::error::StoreError;
use crate::log::sled_config;
use crate::record::GENESIS_HASH;
use crate::seal::SubjectKey;
use crate::trees::{self, Trees};

/// A new log being filled in position order.
pub(crate) struct Filler {
    path: PathBuf,
    db: sled::Db,
    trees: Trees,
    pub head: u64,
    pub last_hash: [u8; 32],
    pub last_recorded_micros: i64,
    /// Records not yet written, packed into a chunk when there are enough.
    pending: Vec<(u64, Vec<u8>)>,
    pending_len: usize,
    groups: trees::GroupBuffer,
}

impl Filler {
    /// Create the log in `dir`, which must not exist or be empty.
    pub fn create(dir: &Path) -> Result<Self, StoreError> {
        ensure_new_or_empty(dir)?;
        crate::private::create_private_dir(dir)?;
        let db = sled_config(dir, 64 * 1024 * 1024).open()?;
        let trees = Trees::open(&db)?;
        Ok(Filler {
            path: dir.to_path_buf(),
            db,
            trees,
            head: 0,
            last_hash: GENESIS_HASH,
            last_recorded_micros: 0,
            pending: Vec::with_capacity(CHUNK_RECORDS_MAX),
            pending_len: 0,
            groups: trees::GroupBuffer::default(),
        })
    }

    /// Tests: write out partial index groups once `streams_max` streams have one.
    #[cfg(test)]
    pub(crate) fn buffer_streams_max(&mut self, streams_max: usize) {
        self.groups = trees::GroupBuffer::with_streams_max(streams_max);
    }

    /// The last version of `stream` put so far (0: none), from the index being
    /// written: memory does not grow with the number of streams.
    pub fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        match self.groups.last_version(stream) {
            Some(version) => Ok(version),
            None => Ok(trees::read_stream_head(&self.trees, stream)?.0),
        }
    }

    /// Add the next record: it must be at `head + 1` and chained to `last_hash`
    /// (the callers check that; this only writes).
    pub fn put(
        &mut self,
        position: u64,
        stream: &str,
        version: u64,
        bytes: &[u8],
        hash: [u8; 32],
        recorded_micros: i64,
    ) -> Result<(), StoreError> {
        self.pending.push((position, bytes.to_vec()));
        self.pending_len += bytes.len();
        if self.pending.len() == CHUNK_RECORDS_MAX || self.pending_len >= CHUNK_LEN_MAX {
            self.write_pending()?;
        }
        self.groups.put(&self.trees.streams, stream, version, position)?;
        self.head = position;
        self.last_hash = hash;
        self.last_recorded_micros = self.last_recorded_micros.max(recorded_micros);
        Ok(())
    }

    fn write_pending(&mut self) -> Result<(), StoreError> {
        for (first, bytes) in chunk::pack(self.pending.iter().map(|(position, bytes)| (*position, bytes.as_slice()))) {
            self.trees.events.insert(first, bytes)?;
        }
        self.pending.clear();
        self.pending_len = 0;
        Ok(())
    }

    /// A subject's key, or its tombstone (`None`: forgotten).
    pub fn put_key(&self, subject: Uuid, key: Option<&SubjectKey>) -> Result<(), StoreError> {
        let value: &[u8] = key.map_or(&[], |key| &key[..]);
        self.trees.keys.insert(subject.as_bytes(), value)?;
        Ok(())
    }

    /// A named secret (see [`crate::EventLog::secret`]).
    pub fn put_idempotency(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.trees.idempotency.insert(key, value)?;
        Ok(())
    }

    pub fn put_secret(&self, name: &str, value: &[u8; 32]) -> Result<(), StoreError> {
        self.trees.meta.insert([trees::META_SECRET_PREFIX, name.as_bytes()].concat(), &value[..])?;
        Ok(())
    }

    /// Write the tail and make everything durable: sled's flush, `fdatasync` of its
    /// log file, and the directory. Returns the directory.
    pub fn finish(mut self) -> Result<PathBuf, StoreError> {
        self.write_pending()?;
        self.groups.write_all(&self.trees.streams)?;
        let meta = &self.trees.meta;
        meta.insert(trees::META_FORMAT, &[trees::LOG_FORMAT])?;
        meta.insert(trees::META_HEAD, &self.head.to_be_bytes())?;
        meta.insert(trees::META_INDEXED, &self.head.to_be_bytes())?;
        meta.insert(trees::META_LAST_HASH, &self.last_hash)?;
        meta.insert(trees::META_LAST_RECORDED_AT, &self.last_recorded_micros.to_be_bytes())?;
        crate::log::flush_sled(&self.db)?;
        File::open(self.path.join("db"))?.sync_all()?;
        File::open(&self.path)?.sync_all()?;
        Ok(self.path)
    }
}

/// Refuse a directory that holds anything (restore and import never write over a
/// log); a directory that does not exist is fine.
pub fn ensure_new_or_empty(dir: &Path) -> Result<(), StoreError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(StoreError::NotEmpty { path: dir.to_path_buf() }),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotADirectory => {
            Err(StoreError::NotADirectory { path: dir.to_path_buf() })
        }
        Err(error) => Err(error.into()),
    }
}
