//! How read models store their records: keys and bincode values in one sled tree
//! per model generation, read by `apply` through [`Records`] and changed only
//! through the [`Changes`] it returns.
//!
//! A record `apply` puts stays typed ([`Value::Typed`]) until its batch is
//! written: a batch that changes a record many times (a product's stock) encodes
//! it once, and the events after it read it back without decoding. [`Cache`]
//! keeps a generation's records so across batches, for the runtime and replay.

use std::any::Any;
use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::marker::PhantomData;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ProjectionError;

/// What `apply` knows of an event besides the event itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    pub position: u64,
    /// The event's version in its stream.
    pub version: u64,
    pub recorded_at: DateTime<Utc>,
}

/// One event as the read models apply it: decoded once, by whoever reads the
/// log (the runtime's worker while the previous batch is written, a replay's
/// readers), not by the thread that applies it.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub envelope: Envelope,
    /// `None`: a forgotten payload, which no read model uses.
    pub event: Option<domain::Event>,
    /// The command it came from: the events of one append share it and their
    /// time, which is how a batch is told not to end inside an append.
    pub correlation_id: uuid::Uuid,
}

impl Decoded {
    /// Whether `self` and `other` come from the same append.
    pub fn same_append(&self, other: &Decoded) -> bool {
        (self.correlation_id, self.envelope.recorded_at) == (other.correlation_id, other.envelope.recorded_at)
    }
}

impl Decoded {
    pub fn of_ref(event: &store::EventRef<'_>) -> Result<Decoded, ProjectionError> {
        let envelope = Envelope { position: event.position, version: event.version, recorded_at: event.recorded_at };
        Ok(Decoded { envelope, event: commands::codec::decode_ref(event)?, correlation_id: event.correlation_id })
    }
}

/// A typed record a model stores: encoded with the store's codec when its batch
/// is written.
pub trait Record: Any + Send + Sync + fmt::Debug {
    fn encode(&self) -> Result<Vec<u8>, ProjectionError>;
}

impl<T: Serialize + Any + Send + Sync + fmt::Debug> Record for T {
    fn encode(&self) -> Result<Vec<u8>, ProjectionError> {
        store::codec::encode(self)
            .map_err(|error| ProjectionError::Corrupt { model: "encode", reason: error.to_string() })
    }
}

/// A record's value: bytes as the tree holds them, or typed as `apply` put it.
#[derive(Debug)]
pub enum Value {
    Stored(sled::IVec),
    Typed(Box<dyn Record>),
}

impl Value {
    /// The bytes the tree holds (or will hold) for it.
    pub fn encode(&self) -> Result<sled::IVec, ProjectionError> {
        match self {
            Value::Stored(bytes) => Ok(bytes.clone()),
            Value::Typed(record) => record.encode().map(sled::IVec::from),
        }
    }

    pub(crate) fn typed<T: DeserializeOwned + Clone + 'static>(
        &self,
        model: &'static str,
    ) -> Result<T, ProjectionError> {
        match self {
            Value::Stored(bytes) => decode(model, bytes),
            Value::Typed(record) => {
                let record: &dyn Any = &**record;
                record.downcast_ref::<T>().cloned().ok_or_else(|| ProjectionError::Corrupt {
                    model,
                    reason: format!("a record is not a {}", std::any::type_name::<T>()),
                })
            }
        }
    }
}

/// A model's current records, as `apply` sees them: in the runtime and replay,
/// the batch so far over a cache of the model's tree; in tests, a map.
pub trait Records {
    /// Calls `read` with the record under `key` (borrowed: nothing is copied
    /// that `read` does not copy).
    fn read_value(&self, key: &[u8], read: &mut dyn FnMut(Option<&Value>)) -> Result<(), ProjectionError>;
}

/// Reads a typed record (a clone of it when it is still typed: models keep
/// their records cheap to clone).
pub(crate) fn get<T: DeserializeOwned + Clone + 'static>(
    records: &dyn Records,
    model: &'static str,
    key: &[u8],
) -> Result<Option<T>, ProjectionError> {
    let mut found = Ok(None);
    records.read_value(key, &mut |value| found = value.map(|value| value.typed(model)).transpose())?;
    found
}

pub(crate) fn decode<T: DeserializeOwned>(model: &'static str, bytes: &[u8]) -> Result<T, ProjectionError> {
    store::codec::decode(bytes).map_err(|error| ProjectionError::Corrupt { model, reason: error.to_string() })
}

/// The writes one event makes to a model, in order. `apply` returns them and
/// never writes itself.
#[derive(Debug, Default)]
pub struct Changes {
    writes: Vec<(Vec<u8>, Option<Value>)>,
}

impl Changes {
    /// Store `value` under `key` (encoded when the batch is written).
    pub fn put<T: Record>(&mut self, key: Vec<u8>, value: T) {
        self.writes.push((key, Some(Value::Typed(Box::new(value)))));
    }

    /// Store a key with no value (index entries).
    pub fn mark(&mut self, key: Vec<u8>) {
        self.writes.push((key, Some(Value::Stored(sled::IVec::default()))));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.push((key, None));
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Each key's write, in order (`None`: removed).
    pub fn writes(&self) -> &[(Vec<u8>, Option<Value>)] {
        &self.writes
    }
}

impl Records for sled::Tree {
    fn read_value(&self, key: &[u8], read: &mut dyn FnMut(Option<&Value>)) -> Result<(), ProjectionError> {
        read(self.get(key)?.map(Value::Stored).as_ref());
        Ok(())
    }
}

/// Records in memory: a model folded without sled (tests, comparisons).
pub type MemoryRecords = BTreeMap<Vec<u8>, Vec<u8>>;

impl Records for MemoryRecords {
    fn read_value(&self, key: &[u8], read: &mut dyn FnMut(Option<&Value>)) -> Result<(), ProjectionError> {
        read(self.get(key).map(|bytes| Value::Stored(sled::IVec::from(bytes.as_slice()))).as_ref());
        Ok(())
    }
}

/// FxHash over record keys, finished with murmur3's mixer: the caches hash a few
/// keys per event, and SipHash was a tenth of the dashboard's time. Keys are skus (chosen by the admin) and
/// ids the server generated, so flooding one bucket is not a client's to do.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct KeyHasher(u64);

impl KeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    fn finish(&self) -> u64 {
        // FxHash's last multiply leaves the low bits (hashbrown's bucket) poorly
        // mixed for keys that differ late; murmur3's finaliser spreads them.
        let mut hash = self.0;
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        hash ^ (hash >> 33)
    }
}

type KeyMap<V> = HashMap<Vec<u8>, V, BuildHasherDefault<KeyHasher>>;

/// A model's derived index: the keys (with empty values) that the record
/// `value` under `key` puts in the tree beside itself. The cache writes them when
/// it writes the record, so `apply` never does, and nothing reads them back
/// through [`Records`] (queries read them from the tree).
pub type IndexFn = fn(key: &[u8], value: &Value) -> Result<Vec<Vec<u8>>, ProjectionError>;

/// A batch of writes to one tree, in order: as in a `sled::Batch`, a later write
/// of a key wins.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    writes: Vec<(sled::IVec, Option<sled::IVec>)>,
}

impl Writes {
    fn insert(&mut self, key: &[u8], value: sled::IVec) {
        self.writes.push((key.into(), Some(value)));
    }

    fn remove(&mut self, key: &[u8]) {
        self.writes.push((key.into(), None));
    }

    /// Add them to `redo` as writes to the tree `tree_name`.
    pub(crate) fn add_to(&self, redo: &mut crate::redo::Redo, tree_name: &str) {
        for (key, value) in &self.writes {
            redo.push(tree_name, key, value.as_deref());
        }
    }

    /// Write them one by one: no transaction, so sled's readers (the log's
    /// included) are never held up. Not atomic: only for a generation that a
    /// crash throws away whole, or after a redo of them (see `redo`).
    pub(crate) fn write_each(self, tree: &sled::Tree) -> Result<(), ProjectionError> {
        for (key, value) in self.writes {
            match value {
                Some(value) => tree.insert(key, value)?,
                None => tree.remove(key)?,
            };
        }
        Ok(())
    }
}

/// Whether the tree holds a key, as far as the cache knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InTree {
    Yes,
    No,
    Unknown,
}

/// One key in the cache.
#[derive(Debug)]
struct Entry {
    /// Its current value (`None`: absent), this batch's changes included.
    value: Option<Value>,
    /// Changed since the last batch (and listed in `Cache::dirty`).
    dirty: bool,
    in_tree: InTree,
    /// Its index keys as the tree holds them, when known.
    index: Option<Vec<Vec<u8>>>,
}

/// A generation's records for `apply`: this batch's changes over the records as
/// written (or read) before, over the tree. Only the generation's one writer (a
/// runtime worker, a replay thread) holds it.
///
/// Without the cache every event would read and decode its records from sled;
/// with it, sled is read only for what the cache does not know, records stay
/// typed from one batch to the next, and an event's read and write of a record
/// are one hash lookup each. A batch writes each changed record once (with its
/// index entries, where they moved) and leaves out the removal of a record the
/// tree never held.
#[derive(Debug)]
pub(crate) struct Cache {
    tree: sled::Tree,
    index: Option<IndexFn>,
    entries: RefCell<KeyMap<Entry>>,
    /// The keys changed since the last batch, each once.
    dirty: Vec<Vec<u8>>,
    /// Whether `entries` holds every record of the tree, so that a key it lacks
    /// is absent: true from an empty tree until the cache is first emptied.
    complete: bool,
    len_max: usize,
}

impl Cache {
    /// A cache over `tree` of at most about `len_max` records; `empty` says the
    /// tree holds nothing yet.
    pub(crate) fn new(tree: sled::Tree, index: Option<IndexFn>, len_max: usize, empty: bool) -> Self {
        Cache { tree, index, entries: RefCell::new(KeyMap::default()), dirty: Vec::new(), complete: empty, len_max }
    }

    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Records changed since the last batch.
    pub(crate) fn dirty_len(&self) -> usize {
        self.dirty.len()
    }

    /// Forget everything; `empty` says the tree holds nothing now.
    pub(crate) fn reset(&mut self, empty: bool) {
        self.dirty.clear();
        self.entries.get_mut().clear();
        self.complete = empty;
    }

    /// Take one event's changes into the batch.
    pub(crate) fn absorb(&mut self, changes: Changes) {
        let entries = self.entries.get_mut();
        for (key, value) in changes.writes {
            match entries.get_mut(key.as_slice()) {
                Some(entry) => {
                    entry.value = value;
                    if !entry.dirty {
                        entry.dirty = true;
                        self.dirty.push(key);
                    }
                }
                None => {
                    let in_tree = if self.complete { InTree::No } else { InTree::Unknown };
                    if value.is_none() && in_tree == InTree::No {
                        // Removing what the tree does not hold: nothing to write.
                        continue;
                    }
                    let index = (in_tree == InTree::No).then(Vec::new);
                    entries.insert(key.clone(), Entry { value, dirty: true, in_tree, index });
                    self.dirty.push(key);
                }
            }
        }
    }

    /// This batch's writes, each changed record encoded once; the cache holds
    /// them as written from here on. Write them, or [`Cache::reset`] the cache.
    pub(crate) fn take_batch(&mut self) -> Result<Writes, ProjectionError> {
        let entries = self.entries.get_mut();
        let mut batch = Writes::default();
        for key in self.dirty.drain(..) {
            let Some(entry) = entries.get_mut(key.as_slice()) else { continue };
            entry.dirty = false;
            if let Some(index) = self.index {
                let before = match entry.index.take() {
                    Some(before) => before,
                    None => match self.tree.get(&key)? {
                        Some(bytes) => index(&key, &Value::Stored(bytes))?,
                        None => Vec::new(),
                    },
                };
                let after = match &entry.value {
                    Some(value) => index(&key, value)?,
                    None => Vec::new(),
                };
                for old in &before {
                    if !after.contains(old) {
                        batch.remove(old.as_slice());
                    }
                }
                for new in &after {
                    if !before.contains(new) {
                        batch.insert(new.as_slice(), sled::IVec::default());
                    }
                }
                entry.index = Some(after);
            }
            match &entry.value {
                Some(value) => {
                    batch.insert(key.as_slice(), value.encode()?);
                    entry.in_tree = InTree::Yes;
                }
                None => {
                    if entry.in_tree != InTree::No {
                        batch.remove(key.as_slice());
                    }
                    if self.complete {
                        entries.remove(key.as_slice());
                    } else {
                        entry.in_tree = InTree::No;
                    }
                }
            }
        }
        Ok(batch)
    }

    /// After a batch was written: empty the cache if it grew past its bound.
    pub(crate) fn trim(&mut self) {
        let entries = self.entries.get_mut();
        if entries.len() > self.len_max {
            entries.clear();
            self.complete = false;
        }
    }
}

impl Records for Cache {
    fn read_value(&self, key: &[u8], read: &mut dyn FnMut(Option<&Value>)) -> Result<(), ProjectionError> {
        if let Some(entry) = self.entries.borrow().get(key) {
            read(entry.value.as_ref());
            return Ok(());
        }
        if self.complete {
            read(None);
            return Ok(());
        }
        let value = self.tree.get(key)?.map(Value::Stored);
        read(value.as_ref());
        let (in_tree, index) = match (&value, self.index) {
            (None, _) => (InTree::No, Some(Vec::new())),
            (Some(value), Some(index)) => (InTree::Yes, Some(index(key, value)?)),
            (Some(_), None) => (InTree::Yes, None),
        };
        self.entries.borrow_mut().insert(key.to_vec(), Entry { value, dirty: false, in_tree, index });
        Ok(())
    }
}

/// Text kept in a model's records as a domain value `T` (a product's name, a
/// sku): stored exactly as `T` is (a string), and shared between the copies
/// `apply` makes instead of copied. A cart's 50 lines cloned for each item
/// added were a tenth of the read-model thread's time as `Sku`s.
pub(crate) struct Shared<T>(Arc<str>, PhantomData<fn() -> T>);

/// A product's name in a record.
pub(crate) type SharedName = Shared<domain::ProductName>;
/// A sku in a record.
pub(crate) type SharedSku = Shared<domain::Sku>;

/// A domain value that is text, read back from a record through its own check.
pub(crate) trait Text: Sized {
    fn as_text(&self) -> &str;
    fn parse_text(text: &str) -> Result<Self, domain::ValidationError>;
}

impl Text for domain::ProductName {
    fn as_text(&self) -> &str {
        self.as_str()
    }
    fn parse_text(text: &str) -> Result<Self, domain::ValidationError> {
        Self::parse(text)
    }
}

impl Text for domain::Sku {
    fn as_text(&self) -> &str {
        self.as_str()
    }
    fn parse_text(text: &str) -> Result<Self, domain::ValidationError> {
        Self::parse(text)
    }
}

impl<T: Text> Shared<T> {
    pub(crate) fn of(value: &T) -> Self {
        Shared(Arc::from(value.as_text()), PhantomData)
    }

    /// The value checked again, as reading a `T` checks it.
    pub(crate) fn to_domain(&self, model: &'static str) -> Result<T, ProjectionError> {
        T::parse_text(&self.0)
            .map_err(|error| ProjectionError::Corrupt { model, reason: format!("a stored value: {error}") })
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(Arc::clone(&self.0), PhantomData)
    }
}

impl<T> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<T> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<T> Eq for Shared<T> {}

impl<T> PartialOrd for Shared<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The order of the text, which is the order of `Sku`s (byte order).
impl<T> Ord for Shared<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// Looked up by `&str` in a map keyed by it.
impl<T> Borrow<str> for Shared<T> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<T> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de, T> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|text| Shared(Arc::from(text), PhantomData))
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
