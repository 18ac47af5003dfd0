//! The hash chain checked beside a walk of the whole log, on a second core.
//!
//! `verify`, `backup`, `check_backup` and `restore` walk every record in order
//! and check that its stored hash is the chain's: blake3 of the hash before it
//! and its body. On one thread that hash took a third of `verify`, a quarter of
//! `backup` and 40 % of checking a backup file (docs/BENCHMARKS.md, "The hash
//! chain on a second core"). Here the walk links each record it reads (position,
//! body, stored hash) and goes on reading, parsing and writing, while a thread of
//! its own takes the links in batches, checks each hash, and stops at the first
//! bad one. A walk shorter than one batch starts no thread: its links are
//! checked when it ends.
//!
//! Which error is reported: the walk links records in order, and only records
//! it has read whole, so a bad link is always earlier in the walk than anything
//! the walk itself fails on afterwards (a record that does not parse, an index
//! that does not match, a checksum at the end of a file, a write). The bad link
//! wins; the first damage is the one named, as with the check in line.

use std::sync::mpsc;

use crate::error::StoreError;
use crate::record;

/// Links a batch holds before it is handed over.
const BATCH_LEN: usize = 1024;

/// Body bytes a batch holds before it is handed over (records may be large).
const BATCH_BYTES: usize = 1 << 20;

/// Batches waiting for the checking thread at most: the walk waits past that,
/// so memory stays bounded (some 6 MiB with the batch being checked and the
/// one being filled) however long the log.
const BATCHES_QUEUED: usize = 4;

#[derive(Debug, Default)]
struct Batch {
    /// The hash before the batch's first record.
    previous: [u8; 32],
    links: Vec<Link>,
    /// Every record's body, one after the other.
    bodies: Vec<u8>,
}

#[derive(Debug)]
struct Link {
    position: u64,
    /// The hash stored with the record.
    hash: [u8; 32],
    /// Where the record's body ends in the batch's `bodies`.
    end: usize,
}

/// The chain as a walk links it: see [`checked`].
#[derive(Debug)]
pub(crate) struct Chain {
    last_hash: [u8; 32],
    batch: Batch,
    /// The checking thread, from the first batch handed over: a walk shorter
    /// than a batch is checked on its own thread at the end, with no thread started.
    checker: Option<Checker>,
    /// The first bad link, when it was found on this thread.
    broken_at: Option<u64>,
}

#[derive(Debug)]
struct Checker {
    batches: mpsc::SyncSender<Batch>,
    thread: std::thread::JoinHandle<Option<u64>>,
}

impl Chain {
    /// Link the record at `position`, the next one in the walk, whose body is
    /// `body` and whose stored hash is `hash`. An error means a bad link was
    /// found, which [`checked`] reports: the walk should end.
    pub(crate) fn link(&mut self, position: u64, body: &[u8], hash: [u8; 32]) -> Result<(), StoreError> {
        if self.batch.links.is_empty() {
            self.batch.previous = self.last_hash;
        }
        self.batch.bodies.extend_from_slice(body);
        self.batch.links.push(Link { position, hash, end: self.batch.bodies.len() });
        self.last_hash = hash;
        if self.batch.links.len() >= BATCH_LEN || self.batch.bodies.len() >= BATCH_BYTES {
            self.hand_over()?;
        }
        Ok(())
    }

    /// The stored hash of the last record linked (the start's, before any).
    pub(crate) fn last_hash(&self) -> [u8; 32] {
        self.last_hash
    }

    fn hand_over(&mut self) -> Result<(), StoreError> {
        let batch = std::mem::take(&mut self.batch);
        if self.checker.is_none() {
            // Without a thread (the system refused one), the batch is checked here.
            let (batches, queue) = mpsc::sync_channel(BATCHES_QUEUED);
            let thread =
                std::thread::Builder::new().name("shoplog-chain".to_owned()).spawn(move || first_broken(queue));
            self.checker = thread.ok().map(|thread| Checker { batches, thread });
        }
        let sent = match &self.checker {
            // The receiver is gone only once the checking thread found a bad link.
            Some(checker) => checker.batches.send(batch).is_ok(),
            None => {
                self.broken_at = first_broken([batch]);
                self.broken_at.is_none()
            }
        };
        match sent {
            true => Ok(()),
            false => Err(StoreError::corrupt(0, "the hash chain breaks")),
        }
    }

    /// Check what is linked and not checked yet, and wait for every check: the
    /// position of the first bad link, if any.
    fn finish(mut self) -> Result<Option<u64>, StoreError> {
        let batch = std::mem::take(&mut self.batch);
        match self.checker.take() {
            None => Ok(self.broken_at.or_else(|| first_broken([batch]))),
            Some(Checker { batches, thread }) => {
                if !batch.links.is_empty() {
                    // An error here is a bad link, which the join returns.
                    let _ = batches.send(batch);
                }
                drop(batches);
                thread
                    .join()
                    .map_err(|_| StoreError::Storage("the thread that checks the hash chain panicked".to_owned()))
            }
        }
    }
}

/// Run `walk`, which links every record it reads into the chain that starts
/// after `start_hash`, while another thread checks the links. Returns what
/// `walk` returns once every link is checked; or, when a stored hash is not the
/// chain's, `broken(position)` for the first such record, whatever `walk`
/// returned (see the module's doc).
pub(crate) fn checked<T>(
    start_hash: [u8; 32],
    broken: impl FnOnce(u64) -> StoreError,
    walk: impl FnOnce(&mut Chain) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut chain = Chain { last_hash: start_hash, batch: Batch::default(), checker: None, broken_at: None };
    // What was linked before the walk ended is checked too, whether or not it
    // failed: a bad link among it is the first damage.
    let walked = walk(&mut chain);
    match chain.finish()? {
        Some(position) => Err(broken(position)),
        None => walked,
    }
}

/// The position of the first record whose stored hash is not the chain's.
fn first_broken(batches: impl IntoIterator<Item = Batch>) -> Option<u64> {
    for batch in batches {
        let mut previous = batch.previous;
        let mut start = 0;
        for link in &batch.links {
            let Some(body) = batch.bodies.get(start..link.end) else {
                return Some(link.position);
            };
            if record::chain_hash(&previous, body) != link.hash {
                return Some(link.position);
            }
            previous = link.hash;
            start = link.end;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::GENESIS_HASH;

    /// A chain of `len` records with bodies of `body_len` bytes, from the genesis hash.
    fn chain(len: u64, body_len: usize) -> Vec<(Vec<u8>, [u8; 32])> {
        let mut previous = GENESIS_HASH;
        (1..=len)
            .map(|position| {
                let body = vec![(position % 251) as u8; body_len];
                previous = record::chain_hash(&previous, &body);
                (body, previous)
            })
            .collect()
    }

    fn broken(position: u64) -> StoreError {
        StoreError::corrupt(position, "broken")
    }

    /// Link every record of `records`, the one at `bad` with a wrong hash,
    /// failing the walk itself at `fail_at`.
    fn walk(records: &[(Vec<u8>, [u8; 32])], bad: Option<u64>, fail_at: Option<u64>) -> Result<u64, StoreError> {
        checked(GENESIS_HASH, broken, |chain| {
            let mut linked = 0;
            for (position, (body, hash)) in (1..).zip(records) {
                if Some(position) == fail_at {
                    return Err(StoreError::corrupt(position, "the walk's own"));
                }
                let hash = if Some(position) == bad { [0; 32] } else { *hash };
                chain.link(position, body, hash)?;
                assert_eq!(chain.last_hash(), hash, "the hash stored with the last record linked");
                linked += 1;
            }
            Ok(linked)
        })
    }

    fn position(result: Result<u64, StoreError>) -> (u64, String) {
        match result {
            Err(StoreError::Corrupt { position, reason }) => (position, reason),
            other => panic!("expected damage, got {other:?}"),
        }
    }

    #[test]
    fn a_sound_chain_passes_across_many_batches_and_an_empty_one_too() {
        let records = chain(3 * BATCH_LEN as u64 + 7, 40);
        assert_eq!(walk(&records, None, None).ok(), Some(3 * BATCH_LEN as u64 + 7));
        assert_eq!(walk(&[], None, None).ok(), Some(0));
        // Large bodies end batches by their bytes.
        let large = chain(40, 100_000);
        assert_eq!(walk(&large, None, None).ok(), Some(40));
    }

    #[test]
    fn the_first_bad_link_is_named_in_any_batch_and_ahead_of_the_walks_own_error() {
        let records = chain(5000, 40);
        for bad in [1, 2, BATCH_LEN as u64, BATCH_LEN as u64 + 1, 4999, 5000] {
            assert_eq!(position(walk(&records, Some(bad), None)), (bad, "broken".to_owned()), "bad link at {bad}");
        }
        // The walk failed after a bad link that it had not waited for: the link is named.
        assert_eq!(position(walk(&records, Some(3), Some(1500))).0, 3);
        assert_eq!(position(walk(&records, Some(1499), Some(1500))).0, 1499);
        // So in a walk shorter than a batch, checked at its end with no thread.
        assert_eq!(position(walk(&records, Some(3), Some(500))).0, 3);
        assert_eq!(position(walk(&records[..700], Some(700), None)).0, 700);
        assert_eq!(walk(&records[..700], None, None).ok(), Some(700));
        // The walk's own error when every link before it is sound.
        assert_eq!(position(walk(&records, Some(1501), Some(1500))), (1500, "the walk's own".to_owned()));
        assert_eq!(position(walk(&records, None, Some(2))), (2, "the walk's own".to_owned()));
    }

    #[test]
    fn a_bad_link_ends_a_long_walk_early() {
        let records = chain(200_000, 8);
        let mut linked = 0;
        let result = checked(GENESIS_HASH, broken, |chain| {
            for (position, (body, hash)) in (1..).zip(&records) {
                let hash = if position == 10 { [0; 32] } else { *hash };
                chain.link(position, body, hash)?;
                linked += 1;
            }
            Ok(())
        });
        assert!(matches!(result, Err(StoreError::Corrupt { position: 10, .. })), "{result:?}");
        // The walk goes on only while the queue has room: some batches, not the whole log.
        assert!(linked < ((BATCHES_QUEUED + 3) * BATCH_LEN) as u64, "linked {linked} of 200,000");
    }
}
