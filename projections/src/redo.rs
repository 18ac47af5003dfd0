//! The read models' redo log: how the live worker writes one batch to several
//! trees (every model's records and checkpoints) so that a crash keeps all of it
//! or none, without a sled transaction.
//!
//! A sled transaction, like `Tree::apply_batch`, takes sled's process-wide lock
//! exclusively (stopping the log's readers and writer meanwhile), reads every key
//! it writes, and seals sled's IO buffer, whose write then wakes every one of
//! sled's idle IO threads: under load that cost more CPU than the models' own
//! work (docs/BENCHMARKS.md, "The read models without a transaction").
//!
//! Instead the live worker
//! 1. writes the batch's writes, each key's final value, as one redo under a
//!    sequence number, in chunks kept below sled's blob threshold;
//! 2. writes the keys one by one, then the checkpoints;
//! 3. removes the redo.
//!
//! sled recovers a prefix of its log (in log order, cut at the first tear). So
//! after a crash either a redo is incomplete, and nothing after it (none of its
//! batch's writes) survived; or it is complete, and [`recover`] writes its batch
//! again whole before any model is opened. Each write is a key's final value, so
//! writing it twice is writing it once. A redo left by a write that failed (the
//! models it names stop) is written again the same way at the next start.

use std::collections::{BTreeMap, HashMap, HashSet};

use store::EventLog;

use crate::error::ProjectionError;
use crate::records::be_u64;
use crate::runtime::{CHECKPOINTS_TREE, MODELS, tree_name};

pub(crate) const REDO_TREE: &str = "projections.redo";

/// The first byte of every chunk.
const FORMAT: u8 = 1;
/// A chunk's header: the format byte, then how many chunks the redo has (u32 BE).
const HEADER_LEN: usize = 5;
/// Chunks stay near this size: far below sled's blob threshold (2 MiB), which
/// sled writes to files of their own and never fsyncs.
const CHUNK_LEN_TARGET: usize = 512 * 1024;

const INSERT: u8 = 1;
const REMOVE: u8 = 2;

/// One batch's writes to every tree, encoded: per write the tree's name, the key
/// and the value (none: a removal).
#[derive(Debug, Default)]
pub(crate) struct Redo {
    chunks: Vec<Vec<u8>>,
}

impl Redo {
    pub(crate) fn push(&mut self, tree: &str, key: &[u8], value: Option<&[u8]>) {
        let len = 1 + 2 + tree.len() + 4 + key.len() + value.map_or(0, |value| 4 + value.len());
        let full = |chunk: &Vec<u8>| chunk.len() > HEADER_LEN && chunk.len() + len > CHUNK_LEN_TARGET;
        if self.chunks.last().is_none_or(full) {
            let mut chunk = Vec::with_capacity(HEADER_LEN + len.max(4096));
            chunk.extend_from_slice(&[FORMAT, 0, 0, 0, 0]);
            self.chunks.push(chunk);
        }
        let Some(chunk) = self.chunks.last_mut() else { return };
        chunk.push(if value.is_some() { INSERT } else { REMOVE });
        put_bytes(chunk, tree.as_bytes(), true);
        put_bytes(chunk, key, false);
        if let Some(value) = value {
            put_bytes(chunk, value, false);
        }
    }

    /// Write it under `sequence`; nothing after it may be written before this returns.
    pub(crate) fn write(&mut self, redo: &sled::Tree, sequence: u64) -> Result<(), ProjectionError> {
        let count = u32::try_from(self.chunks.len()).unwrap_or(u32::MAX).to_be_bytes();
        for (index, chunk) in self.chunks.iter_mut().enumerate() {
            chunk[1..HEADER_LEN].copy_from_slice(&count);
            redo.insert(chunk_key(sequence, index), std::mem::take(chunk))?;
        }
        Ok(())
    }

    /// Remove what [`Redo::write`] wrote under `sequence`, once its batch is written.
    pub(crate) fn remove(&self, redo: &sled::Tree, sequence: u64) -> Result<(), ProjectionError> {
        for index in 0..self.chunks.len() {
            redo.remove(chunk_key(sequence, index))?;
        }
        Ok(())
    }
}

fn chunk_key(sequence: u64, index: usize) -> [u8; 12] {
    let mut key = [0; 12];
    key[..8].copy_from_slice(&sequence.to_be_bytes());
    key[8..].copy_from_slice(&u32::try_from(index).unwrap_or(u32::MAX).to_be_bytes());
    key
}

/// Tree names take a u16 length, keys and values a u32.
fn put_bytes(chunk: &mut Vec<u8>, bytes: &[u8], short: bool) {
    if short {
        chunk.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(u16::MAX).to_be_bytes());
    } else {
        chunk.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    }
    chunk.extend_from_slice(bytes);
}

/// One write read back from a chunk.
#[derive(Debug, PartialEq, Eq)]
struct Write<'a> {
    tree: &'a str,
    key: &'a [u8],
    value: Option<&'a [u8]>,
}

/// A chunk's chunk count and writes, or why it is not a chunk.
fn decode(chunk: &[u8]) -> Result<(u32, Vec<Write<'_>>), String> {
    let (header, mut rest) = chunk.split_at_checked(HEADER_LEN).ok_or("a chunk shorter than its header")?;
    if header[0] != FORMAT {
        return Err(format!("a chunk of format {}, not {FORMAT}", header[0]));
    }
    let count = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let mut take = |len: usize| -> Result<&[u8], String> {
        let (taken, left) = rest.split_at_checked(len).ok_or("a chunk cut short")?;
        rest = left;
        Ok(taken)
    };
    let mut writes = Vec::new();
    while let Ok(kind) = take(1) {
        let kind = kind[0];
        let tree_len = take(2)?;
        let tree = take(usize::from(u16::from_be_bytes([tree_len[0], tree_len[1]])))?;
        let tree = std::str::from_utf8(tree).map_err(|_| "a tree name that is not UTF-8")?;
        let mut long = || -> Result<&[u8], String> {
            let len = take(4)?;
            take(u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize)
        };
        let key = long()?;
        let value = match kind {
            INSERT => Some(long()?),
            REMOVE => None,
            other => return Err(format!("a write of kind {other}")),
        };
        writes.push(Write { tree, key, value });
    }
    Ok((count, writes))
}

/// What [`recover`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Batches written again.
    pub batches: usize,
    /// Serving generations emptied (to be built again from the log) because a
    /// redo did not decode.
    pub emptied: Vec<String>,
}

/// Write again, whole, every complete redo a crash (or a failed write) left, in
/// the order they were written, for the generations that serve; drop the rest.
/// A redo that does not decode empties every serving generation, which the live
/// worker then builds again from the log: without it, which keys its batch had
/// written is unknown. Must run before any generation is opened.
pub(crate) fn recover(log: &EventLog, meta: &sled::Tree) -> Result<Recovered, ProjectionError> {
    let redo = log.open_tree(REDO_TREE)?;
    let mut recovered = Recovered::default();
    if redo.is_empty() {
        return Ok(recovered);
    }
    let mut serving = HashSet::new();
    for (name, _) in MODELS {
        if let Some(number) = meta.get(name.as_bytes())?.as_deref().and_then(be_u64) {
            serving.insert(tree_name(name, number));
        }
    }
    let mut batches: BTreeMap<u64, Vec<sled::IVec>> = BTreeMap::new();
    let mut undecodable = None;
    for entry in redo.iter() {
        let (key, value) = entry?;
        match key.get(..8).and_then(be_u64) {
            Some(sequence) if key.len() == 12 => batches.entry(sequence).or_default().push(value),
            _ => undecodable = Some(format!("a redo key of {} bytes", key.len())),
        }
    }
    let mut trees: HashMap<String, sled::Tree> = HashMap::new();
    for chunks in batches.values() {
        if undecodable.is_some() {
            break;
        }
        let decoded: Result<Vec<_>, String> = chunks.iter().map(|chunk| decode(chunk)).collect();
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(reason) => {
                undecodable = Some(reason);
                break;
            }
        };
        // Keys sort by chunk index: a complete redo holds chunks 0..count, each
        // saying count. An incomplete one was cut short before its batch began.
        let complete = decoded.iter().all(|(count, _)| *count as usize == decoded.len());
        if !complete {
            continue;
        }
        for write in decoded.iter().flat_map(|(_, writes)| writes) {
            let generation = match write.tree {
                CHECKPOINTS_TREE => std::str::from_utf8(write.key).unwrap_or_default(),
                tree => tree,
            };
            if !serving.contains(generation) {
                continue;
            }
            if !trees.contains_key(write.tree) {
                trees.insert(write.tree.to_owned(), log.open_tree(write.tree)?);
            }
            let Some(tree) = trees.get(write.tree) else { continue };
            match write.value {
                Some(value) => tree.insert(write.key, value)?,
                None => tree.remove(write.key)?,
            };
        }
        recovered.batches += 1;
    }
    if let Some(reason) = undecodable {
        tracing::warn!(%reason, "a read-model redo does not decode: every read model is built again from the log");
        let checkpoints = log.open_tree(CHECKPOINTS_TREE)?;
        let mut emptied: Vec<String> = serving.into_iter().collect();
        emptied.sort();
        for name in &emptied {
            log.open_tree(name)?.clear()?;
            checkpoints.remove(name.as_bytes())?;
        }
        recovered.emptied = emptied;
    }
    redo.clear()?;
    Ok(recovered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, EventLog) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let log = EventLog::open(dir.path()).expect("a log");
        (dir, log)
    }

    /// The meta tree with generation 1 of every model serving.
    fn serving(log: &EventLog) -> sled::Tree {
        let meta = log.open_tree(crate::runtime::META_TREE).expect("meta");
        for (name, _) in MODELS {
            meta.insert(name.as_bytes(), &1u64.to_be_bytes()).expect("inserts");
        }
        meta
    }

    #[test]
    fn writes_read_back_as_written_across_chunks() {
        let mut redo = Redo::default();
        let big = vec![7u8; CHUNK_LEN_TARGET / 3];
        for index in 0..7u8 {
            redo.push("catalog.g1", &[index], Some(&big));
        }
        redo.push("carts.g1", b"gone", None);
        assert_eq!(redo.chunks.len(), 4, "7 values of a third of a chunk each, two to a chunk, and a removal");
        let (_dir, log) = open();
        let tree = log.open_tree(REDO_TREE).expect("tree");
        redo.write(&tree, 9).expect("writes");
        let chunks: Vec<_> = tree.iter().map(|entry| entry.expect("reads").1).collect();
        let writes: Vec<_> = chunks.iter().map(|chunk| decode(chunk).expect("decodes")).collect();
        assert!(writes.iter().all(|(count, _)| *count == 4));
        let writes: Vec<_> = writes.iter().flat_map(|(_, writes)| writes).collect();
        assert_eq!(writes.len(), 8);
        assert_eq!(writes[6], &Write { tree: "catalog.g1", key: &[6], value: Some(&big) });
        assert_eq!(writes[7], &Write { tree: "carts.g1", key: b"gone", value: None });
        redo.remove(&tree, 9).expect("removes");
        assert!(tree.is_empty());
    }

    #[test]
    fn bad_bytes_are_an_error_never_a_panic() {
        let mut redo = Redo::default();
        redo.push("catalog.g1", b"key", Some(b"value"));
        let chunk = redo.chunks[0].clone();
        for len in 0..chunk.len() {
            let cut = &chunk[..len];
            if let Ok((_, writes)) = decode(cut) {
                assert!(writes.is_empty(), "a chunk cut at {len} decodes to nothing or fails");
            }
        }
        let mut wrong_kind = chunk.clone();
        wrong_kind[HEADER_LEN] = 9;
        assert!(decode(&wrong_kind).is_err());
        let mut wrong_format = chunk;
        wrong_format[0] = 2;
        assert!(decode(&wrong_format).is_err());
    }

    #[test]
    fn recovery_writes_complete_redos_in_order_for_serving_generations_only() {
        let (_dir, log) = open();
        let meta = serving(&log);
        let catalog = log.open_tree("catalog.g1").expect("tree");
        let checkpoints = log.open_tree(CHECKPOINTS_TREE).expect("tree");
        catalog.insert(b"stale", b"old").expect("inserts");
        catalog.insert(b"removed", b"old").expect("inserts");
        checkpoints.insert(b"catalog.g1", &10u64.to_be_bytes()).expect("inserts");
        let tree = log.open_tree(REDO_TREE).expect("tree");

        // Sequence 1: a batch a crash cut short after its redo.
        let mut first = Redo::default();
        first.push("catalog.g1", b"stale", Some(b"first"));
        first.push("catalog.g1", b"removed", None);
        first.push("catalog.g0", b"retired", Some(b"x"));
        first.push(CHECKPOINTS_TREE, b"catalog.g1", Some(&20u64.to_be_bytes()));
        first.push(CHECKPOINTS_TREE, b"catalog.g0", Some(&20u64.to_be_bytes()));
        first.write(&tree, 1).expect("writes");
        // Sequence 2: a later batch, also whole.
        let mut second = Redo::default();
        second.push("catalog.g1", b"stale", Some(b"second"));
        second.push(CHECKPOINTS_TREE, b"catalog.g1", Some(&30u64.to_be_bytes()));
        second.write(&tree, 2).expect("writes");
        // Sequence 3: a redo of two chunks of which only the first was written.
        let mut third = Redo::default();
        let big = vec![1u8; CHUNK_LEN_TARGET - 100];
        third.push("catalog.g1", b"stale", Some(&big));
        third.push("catalog.g1", b"stale", Some(&big));
        third.push(CHECKPOINTS_TREE, b"catalog.g1", Some(&40u64.to_be_bytes()));
        assert_eq!(third.chunks.len(), 2);
        third.chunks[0][1..HEADER_LEN].copy_from_slice(&2u32.to_be_bytes());
        tree.insert(chunk_key(3, 0), third.chunks[0].clone()).expect("inserts");

        let recovered = recover(&log, &meta).expect("recovers");
        assert_eq!(recovered, Recovered { batches: 2, emptied: Vec::new() });
        assert_eq!(catalog.get(b"stale").expect("reads").as_deref(), Some(&b"second"[..]));
        assert_eq!(catalog.get(b"removed").expect("reads"), None);
        assert_eq!(checkpoints.get(b"catalog.g1").expect("reads").as_deref(), Some(&30u64.to_be_bytes()[..]));
        assert!(!log.has_tree("catalog.g0"), "a generation that no longer serves is not made again");
        assert_eq!(checkpoints.get(b"catalog.g0").expect("reads"), None);
        assert!(tree.is_empty(), "the redo is gone once written");
        assert_eq!(recover(&log, &meta).expect("recovers"), Recovered::default());
    }

    #[test]
    fn a_redo_that_does_not_decode_empties_the_serving_generations() {
        let (_dir, log) = open();
        let meta = serving(&log);
        let catalog = log.open_tree("catalog.g1").expect("tree");
        let checkpoints = log.open_tree(CHECKPOINTS_TREE).expect("tree");
        catalog.insert(b"record", b"value").expect("inserts");
        checkpoints.insert(b"catalog.g1", &10u64.to_be_bytes()).expect("inserts");
        let tree = log.open_tree(REDO_TREE).expect("tree");
        tree.insert(chunk_key(1, 0), &[FORMAT, 0, 0, 0, 1, 1, 0][..]).expect("inserts");

        let recovered = recover(&log, &meta).expect("recovers");
        assert_eq!(recovered.batches, 0);
        assert_eq!(recovered.emptied.len(), MODELS.len());
        assert!(recovered.emptied.contains(&"catalog.g1".to_owned()));
        assert!(catalog.is_empty());
        assert_eq!(checkpoints.get(b"catalog.g1").expect("reads"), None);
        assert!(tree.is_empty());
    }
}
