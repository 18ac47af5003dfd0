//! How read models store their records: keys and bincode values in one sled tree
//! per model generation, read by `apply` through [`Records`] and changed only
//! through the [`Changes`] it returns.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ProjectionError;

/// What `apply` knows of an event besides the event itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    pub position: u64,
    pub recorded_at: DateTime<Utc>,
}

impl Envelope {
    pub fn of(recorded: &store::RecordedEvent) -> Envelope {
        Envelope { position: recorded.position, recorded_at: recorded.recorded_at }
    }
}

/// A model's current records, as `apply` sees them: in the runtime, the batch
/// so far over the model's tree; in tests, a map.
pub trait Records {
    /// The stored bytes under `key`.
    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ProjectionError>;
}

/// Reads a typed record.
pub(crate) fn get<T: DeserializeOwned>(
    records: &dyn Records,
    model: &'static str,
    key: &[u8],
) -> Result<Option<T>, ProjectionError> {
    records.get_raw(key)?.map(|bytes| decode(model, &bytes)).transpose()
}

pub(crate) fn decode<T: DeserializeOwned>(model: &'static str, bytes: &[u8]) -> Result<T, ProjectionError> {
    store::codec::decode(bytes).map_err(|error| ProjectionError::Corrupt { model, reason: error.to_string() })
}

/// The writes one event makes to a model, in order. `apply` returns them and
/// never writes itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Changes {
    /// Store `value` under `key`.
    pub fn put<T: Serialize>(&mut self, key: Vec<u8>, value: &T) -> Result<(), ProjectionError> {
        let bytes = store::codec::encode(value)
            .map_err(|error| ProjectionError::Corrupt { model: "encode", reason: error.to_string() })?;
        self.writes.push((key, Some(bytes)));
        Ok(())
    }

    /// Store a key with no value (index entries).
    pub fn mark(&mut self, key: Vec<u8>) {
        self.writes.push((key, Some(Vec::new())));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.push((key, None));
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    pub fn writes(&self) -> &[(Vec<u8>, Option<Vec<u8>>)] {
        &self.writes
    }
}

/// A batch's writes so far over a base (the model's tree): `apply` reads through
/// it, so each event sees the ones before it in the batch.
#[derive(Debug)]
pub(crate) struct Overlay<'a, B: Records> {
    base: &'a B,
    dirty: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a, B: Records> Overlay<'a, B> {
    pub fn new(base: &'a B) -> Self {
        Overlay { base, dirty: BTreeMap::new() }
    }

    pub fn absorb(&mut self, changes: Changes) {
        for (key, value) in changes.writes {
            self.dirty.insert(key, value);
        }
    }

    pub fn into_dirty(self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.dirty
    }
}

impl<B: Records> Records for Overlay<'_, B> {
    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ProjectionError> {
        match self.dirty.get(key) {
            Some(value) => Ok(value.clone()),
            None => self.base.get_raw(key),
        }
    }
}

impl Records for sled::Tree {
    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ProjectionError> {
        Ok(self.get(key)?.map(|bytes| bytes.to_vec()))
    }
}

/// Records in memory: a model folded without sled (tests, comparisons).
pub type MemoryRecords = BTreeMap<Vec<u8>, Vec<u8>>;

impl Records for MemoryRecords {
    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ProjectionError> {
        Ok(self.get(key).cloned())
    }
}

/// `prefix ‖ parts…` as one key.
pub(crate) fn key(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + parts.iter().map(|part| part.len()).sum::<usize>());
    key.extend_from_slice(prefix);
    for part in parts {
        key.extend_from_slice(part);
    }
    key
}

/// The smallest key greater than every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // Only a prefix of all 0xff bytes gets here; no key prefix of ours is one.
    vec![u8::MAX; prefix.len() + 1]
}

pub(crate) fn be_u64(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}
