//! How records lie in the `events` tree: several consecutive records to one sled
//! key, so that the log costs sled one entry (and one insert) per chunk of
//! records rather than per event. sled keeps state in memory for every page it
//! ever wrote and splits a leaf at 16 entries, whatever their size; one record
//! a key made that state grow by a leaf for every 16 events (issue 5).
//!
//! The key is the position of the chunk's first record (u64 BE). The value is
//! either one record as it is (format byte 1, see `record`), or a chunk of two
//! or more:
//!
//! `[2][count: u16 BE][end of each record in the records area: u32 BE × count][records]`
//!
//! Every record keeps its own bytes, hash and position, so the hash chain, the
//! backup file and the frozen record format do not change; a log written before
//! chunks (every value a single record) reads the same. The writer makes the
//! chunks of a batch from that batch's records only and never rewrites a chunk,
//! so a chunk is either entirely at or below the durable head or entirely past it.

use sled::IVec;

use crate::error::StoreError;
use crate::record::FORMAT_V1;
use crate::trees::be_u64;

/// The format byte of a chunk of two or more records.
pub const FORMAT_CHUNK: u8 = 2;

/// The most records in one chunk.
pub(crate) const CHUNK_RECORDS_MAX: usize = 64;

/// The most bytes in a chunk of two or more records. One record alone is at
/// most [`crate::RECORD_LEN_MAX`] (64 KiB too), so a full leaf of 17 values
/// stays far below sled's 2 MiB blob threshold.
pub(crate) const CHUNK_LEN_MAX: usize = 64 * 1024;

const COUNT_END: usize = 3;

/// The records of one stored value, borrowed from its bytes.
#[derive(Debug)]
pub(crate) enum Records<'a> {
    One(&'a [u8]),
    Chunk { ends: &'a [u8], records: &'a [u8] },
}

impl<'a> Records<'a> {
    /// Split a stored value into its records. Never panics on bad bytes.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        match bytes.first() {
            None => Err("empty value".to_owned()),
            Some(&FORMAT_V1) => Ok(Records::One(bytes)),
            Some(&FORMAT_CHUNK) => {
                let count = bytes.get(1..COUNT_END).map(|count| u16::from_be_bytes([count[0], count[1]]) as usize);
                let Some(count) = count.filter(|count| *count >= 2) else {
                    return Err("chunk with a bad count".to_owned());
                };
                let records_start = COUNT_END + 4 * count;
                if bytes.len() < records_start {
                    return Err(format!("chunk of {count} records is cut short"));
                }
                let chunk = Records::Chunk { ends: &bytes[COUNT_END..records_start], records: &bytes[records_start..] };
                // Every end within the chunk and in order, so `get` cannot fail.
                let mut start = 0;
                for index in 0..count {
                    let end = chunk.end(index);
                    if end <= start || end > chunk.records_len() {
                        return Err(format!(
                            "chunk's record {index} ends at {end}, outside {start}..{}",
                            chunk.records_len()
                        ));
                    }
                    start = end;
                }
                if start != chunk.records_len() {
                    return Err("chunk has bytes after its last record".to_owned());
                }
                Ok(chunk)
            }
            Some(format) => Err(format!("unknown record format {format}")),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Records::One(_) => 1,
            Records::Chunk { ends, .. } => ends.len() / 4,
        }
    }

    /// The bytes of record `index` (0 is the chunk's first), if it has one.
    pub fn get(&self, index: usize) -> Option<&'a [u8]> {
        match self {
            Records::One(bytes) => (index == 0).then_some(*bytes),
            Records::Chunk { records, .. } => {
                if index >= self.len() {
                    return None;
                }
                let start = if index == 0 { 0 } else { self.end(index - 1) };
                records.get(start..self.end(index))
            }
        }
    }

    fn end(&self, index: usize) -> usize {
        match self {
            Records::One(bytes) => bytes.len(),
            Records::Chunk { ends, .. } => {
                let at = 4 * index;
                u32::from_be_bytes([ends[at], ends[at + 1], ends[at + 2], ends[at + 3]]) as usize
            }
        }
    }

    fn records_len(&self) -> usize {
        match self {
            Records::One(bytes) => bytes.len(),
            Records::Chunk { records, .. } => records.len(),
        }
    }
}

/// Pack records in position order (each `(position, bytes)`, consecutive) into
/// the values to store, each with its key.
pub(crate) fn pack<'r>(records: impl IntoIterator<Item = (u64, &'r [u8])>) -> Vec<([u8; 8], Vec<u8>)> {
    let mut packed = Vec::new();
    let mut pending: Vec<(u64, &[u8])> = Vec::with_capacity(CHUNK_RECORDS_MAX);
    let mut pending_len = 0;
    for (position, bytes) in records {
        let grown_len = COUNT_END + 4 * (pending.len() + 1) + pending_len + bytes.len();
        if !pending.is_empty() && (pending.len() == CHUNK_RECORDS_MAX || grown_len > CHUNK_LEN_MAX) {
            packed.push(seal_chunk(&pending, pending_len));
            pending.clear();
            pending_len = 0;
        }
        pending_len += bytes.len();
        pending.push((position, bytes));
    }
    if !pending.is_empty() {
        packed.push(seal_chunk(&pending, pending_len));
    }
    packed
}

fn seal_chunk(records: &[(u64, &[u8])], records_len: usize) -> ([u8; 8], Vec<u8>) {
    let first = records[0].0.to_be_bytes();
    if let [(_, only)] = records {
        return (first, only.to_vec());
    }
    let mut bytes = Vec::with_capacity(COUNT_END + 4 * records.len() + records_len);
    bytes.push(FORMAT_CHUNK);
    bytes.extend_from_slice(&(records.len() as u16).to_be_bytes());
    let mut end = 0u32;
    for (_, record) in records {
        end += record.len() as u32;
        bytes.extend_from_slice(&end.to_be_bytes());
    }
    for (_, record) in records {
        bytes.extend_from_slice(record);
    }
    (first, bytes)
}

/// The last stored value that begins at or before `position`, with its first
/// position: the one that holds `position`, if any does.
fn at_or_before(events: &sled::Tree, position: u64) -> Result<Option<(u64, IVec)>, StoreError> {
    let Some(item) = events.range(..=position.to_be_bytes()).next_back() else {
        return Ok(None);
    };
    let (key, bytes) = item?;
    let first = be_u64(&key).ok_or_else(|| StoreError::corrupt(position, "event key is not a position"))?;
    Ok(Some((first, bytes)))
}

/// The bytes of the record at `position`, if the log holds it, handed to `read`.
pub(crate) fn read<T>(
    events: &sled::Tree,
    position: u64,
    read: impl FnOnce(&[u8]) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    in_chunk(events, position, |records, index| records.get(index).map(read).transpose())
}

/// The bytes of the record at `position` and of the one before it (`None` at
/// position 1, or when the log holds no record there), handed to `read`: one
/// lookup when both lie in one chunk, as all but a chunk's first record do.
pub(crate) fn read_with_previous<T>(
    events: &sled::Tree,
    position: u64,
    read: impl FnOnce(Option<&[u8]>, &[u8]) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    in_chunk(events, position, |records, index| {
        let Some(record) = records.get(index) else {
            return Ok(None);
        };
        match index.checked_sub(1) {
            Some(before) => read(records.get(before), record),
            None if position <= 1 => read(None, record),
            None => match in_chunk(events, position - 1, |before, index| Ok(before.get(index).map(<[u8]>::to_vec)))? {
                Some(before) => read(Some(&before), record),
                None => read(None, record),
            },
        }
        .map(Some)
    })
}

/// The records of the value that would hold `position`, and its index among
/// them, handed to `read` (which finds no record there if the log has none).
fn in_chunk<T>(
    events: &sled::Tree,
    position: u64,
    read: impl FnOnce(&Records<'_>, usize) -> Result<Option<T>, StoreError>,
) -> Result<Option<T>, StoreError> {
    let Some((first, bytes)) = at_or_before(events, position)? else {
        return Ok(None);
    };
    let records = Records::parse(&bytes).map_err(|reason| StoreError::corrupt(first, reason))?;
    read(&records, usize::try_from(position - first).unwrap_or(usize::MAX))
}

/// Lend the records from `from` to `to` (both included), in position order, to
/// `visit` with their positions, until it returns `false`. A position missing
/// on the way, or a value that is not a chunk, is an error naming the position.
/// Records past `to` in the last chunk are not lent.
pub(crate) fn walk<E: From<StoreError>>(
    events: &sled::Tree,
    from: u64,
    to: u64,
    mut visit: impl FnMut(u64, &[u8]) -> Result<bool, E>,
) -> Result<(), E> {
    if from > to {
        return Ok(());
    }
    // Start at the chunk that holds `from`, if one does; if the value before
    // `from` does not hold it, its records are skipped and the next value's
    // first position shows the gap. A reader that goes on where it stopped
    // mostly starts a chunk (a batch's first record begins one): then the
    // first value of the range is it, and the walk back is saved.
    let mut items = events.range(from.to_be_bytes()..=to.to_be_bytes()).peekable();
    let starts_a_chunk = matches!(items.peek(), Some(Ok((key, _))) if be_u64(key) == Some(from));
    let start = if starts_a_chunk {
        from
    } else {
        let start = at_or_before(events, from)?.map_or(from, |(first, _)| first);
        if start != from {
            items = events.range(start.to_be_bytes()..=to.to_be_bytes()).peekable();
        }
        start
    };
    let mut next = from;
    for item in items {
        let (key, bytes) = item.map_err(StoreError::from)?;
        let first = be_u64(&key).ok_or_else(|| StoreError::corrupt(next, "event key is not a position"))?;
        if first > next {
            return Err(StoreError::corrupt(next, format!("missing: the next stored position is {first}")).into());
        }
        let records = Records::parse(&bytes).map_err(|reason| StoreError::corrupt(first, reason))?;
        if first < next && first != start {
            return Err(StoreError::corrupt(first, "stored twice: an earlier chunk holds it").into());
        }
        for index in 0..records.len() {
            let position = first + index as u64;
            if position < next {
                continue;
            }
            if position > to {
                return Ok(());
            }
            let Some(record) = records.get(index) else {
                return Err(StoreError::corrupt(position, "chunk is cut short").into());
            };
            next = position + 1;
            if !visit(position, record)? {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The last stored value's last record and its position, if the log holds any.
pub(crate) fn last<T>(
    events: &sled::Tree,
    read: impl FnOnce(u64, &[u8]) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let Some((key, bytes)) = events.last()? else {
        return Ok(None);
    };
    let first = be_u64(&key).ok_or_else(|| StoreError::corrupt(0, "event key is not a position"))?;
    let records = Records::parse(&bytes).map_err(|reason| StoreError::corrupt(first, reason))?;
    let index = records.len() - 1;
    let record = records.get(index).ok_or_else(|| StoreError::corrupt(first, "chunk is cut short"))?;
    read(first + index as u64, record).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fill: u8, len: usize) -> Vec<u8> {
        let mut bytes = vec![fill; len];
        bytes[0] = FORMAT_V1;
        bytes
    }

    #[test]
    fn a_packed_chunk_gives_back_each_record() {
        let records: Vec<Vec<u8>> = (0..5).map(|index| record(index as u8 + 10, 40 + index)).collect();
        let packed = pack(records.iter().enumerate().map(|(index, bytes)| (7 + index as u64, bytes.as_slice())));
        assert_eq!(packed.len(), 1);
        assert_eq!(packed[0].0, 7u64.to_be_bytes());
        let parsed = Records::parse(&packed[0].1).expect("parses");
        assert_eq!(parsed.len(), 5);
        for (index, bytes) in records.iter().enumerate() {
            assert_eq!(parsed.get(index), Some(bytes.as_slice()));
        }
        assert_eq!(parsed.get(5), None);
    }

    #[test]
    fn one_record_is_stored_as_it_is_and_chunks_end_at_their_limits() {
        let one = record(3, 30);
        assert_eq!(pack([(1, one.as_slice())]), vec![(1u64.to_be_bytes(), one.clone())]);

        let many: Vec<Vec<u8>> = (0..CHUNK_RECORDS_MAX + 1).map(|_| record(4, 20)).collect();
        let packed = pack(many.iter().enumerate().map(|(index, bytes)| (1 + index as u64, bytes.as_slice())));
        assert_eq!(packed.len(), 2);
        assert_eq!(Records::parse(&packed[0].1).expect("parses").len(), CHUNK_RECORDS_MAX);
        assert_eq!(packed[1], ((CHUNK_RECORDS_MAX as u64 + 1).to_be_bytes(), many[0].clone()));

        let big: Vec<Vec<u8>> = (0..4).map(|_| record(5, CHUNK_LEN_MAX / 3 - 100)).collect();
        let packed = pack(big.iter().enumerate().map(|(index, bytes)| (1 + index as u64, bytes.as_slice())));
        let lens: Vec<usize> = packed.iter().map(|(_, bytes)| Records::parse(bytes).expect("parses").len()).collect();
        assert_eq!(lens, vec![3, 1]);
        assert!(packed.iter().all(|(_, bytes)| bytes.len() <= CHUNK_LEN_MAX));
        let halves: Vec<Vec<u8>> = (0..2).map(|_| record(6, CHUNK_LEN_MAX / 2)).collect();
        let packed = pack(halves.iter().enumerate().map(|(index, bytes)| (1 + index as u64, bytes.as_slice())));
        assert_eq!(packed.len(), 2, "two halves and the chunk's table do not fit in one");
    }

    /// The chunk layout is a contract with every stored log: its frozen bytes
    /// must keep parsing to the same records.
    #[test]
    fn the_frozen_chunk_still_parses() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/records/chunk-v2.bin");
        let records = [record(0x21, 5), record(0x42, 9), record(0x63, 3)];
        let packed = pack(records.iter().enumerate().map(|(index, bytes)| (9 + index as u64, bytes.as_slice())));
        if !path.exists() {
            assert!(
                std::env::var("SHOPLOG_WRITE_FIXTURES").is_ok_and(|value| value == "1"),
                "no frozen chunk at {}: run with SHOPLOG_WRITE_FIXTURES=1 once",
                path.display()
            );
            std::fs::write(&path, &packed[0].1).expect("writes the fixture");
        }
        let frozen = std::fs::read(&path).expect("reads the fixture");
        let parsed = Records::parse(&frozen).expect("the frozen chunk parses");
        assert_eq!(parsed.len(), 3);
        for (index, bytes) in records.iter().enumerate() {
            assert_eq!(parsed.get(index), Some(bytes.as_slice()));
        }
        assert_eq!(packed[0].1, frozen, "chunks are now packed differently from the frozen bytes");
    }

    #[test]
    fn a_bad_chunk_is_an_error_not_a_panic() {
        let records = [record(1, 10), record(1, 10)];
        let (_, good) = pack(records.iter().map(|bytes| (1, bytes.as_slice()))).remove(0);
        assert!(Records::parse(&good).is_ok());
        assert!(Records::parse(&[]).is_err());
        assert!(Records::parse(&[9]).is_err());
        assert!(Records::parse(&[FORMAT_CHUNK]).is_err());
        assert!(Records::parse(&[FORMAT_CHUNK, 0, 1, 0, 0, 0, 1, FORMAT_V1]).is_err(), "a chunk of one");
        for cut in 1..good.len() {
            assert!(Records::parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        for at in 1..good.len().min(16) {
            let mut bad = good.clone();
            bad[at] ^= 0x80;
            if let Ok(parsed) = Records::parse(&bad) {
                // A flip in a record's own bytes is for the hash chain to find.
                assert_eq!(parsed.len(), 2, "flip at {at}");
            }
        }
    }
}
