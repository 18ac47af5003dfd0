//! Backups: the whole log in one file (DESIGN §3), and restoring one into a new
//! data directory, whole or up to a position or a time.
//!
//! The file is `"SHOPLOGB"`, a format version (u16 BE, now 1), then frames of
//! `kind (1 byte) ‖ length (u32 BE) ‖ body`, in this order:
//!
//! - `H` once: when the backup was taken (µs since the epoch, i64 BE) and the head
//!   position it ends at (u64 BE);
//! - `R` per event, in position order from 1: the stored record exactly as in the
//!   log (format byte, hash, header, sealed payload), so the hash chain carries over;
//! - `K` per data subject of those events: subject (16 bytes) ‖ key (32 bytes), or
//!   the subject alone once forgotten, so a forgotten subject stays forgotten;
//! - `S` per named secret (the email and token keys): name ‖ 32 bytes;
//! - `I` per idempotency key whose append is in the backup (since version 2): the
//!   key (32 bytes) ‖ its stored answer, as in the log;
//! - `T` once: event count (u64 BE) ‖ last position (u64 BE) ‖ last hash (32) ‖
//!   checksum (32): blake3 of every byte of the file before the checksum.
//!
//! Nothing may follow the trailer. Reading checks all of it: the magic, the version,
//! each frame's kind, order and size, every record's position and hash chain, the
//! trailer against what was read, and the checksum. A backup holds the subjects'
//! keys, so it must be kept like the data directory itself. It holds the
//! idempotency keys too: a command whose outcome a failure left unknown is sent
//! again with its key, and the log restored from a backup (the salvage of one
//! whose sync failed, or of a disaster) must answer it as the log would have, not
//! append it a second time. A restore up to a point keeps the keys of the appends
//! it keeps. Version 1 files (no `I` frames) still restore.

use std::collections::BTreeSet;
use std::io::{BufReader, Read, Write};
use std::path::Path;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::RECORD_LEN_MAX;
use crate::chain::{self, Chain};
use crate::chunk;
use crate::error::StoreError;
use crate::fill::Filler;
use crate::log::EventLog;
use crate::record::{self, GENESIS_HASH};
use crate::trees::{self, be_u64};

/// The first bytes of every backup file.
pub const BACKUP_MAGIC: &[u8; 8] = b"SHOPLOGB";
/// The backup format this build writes (it reads 1 too).
pub const BACKUP_VERSION: u16 = 2;

const HEADER: u8 = b'H';
const RECORD: u8 = b'R';
const KEY: u8 = b'K';
const SECRET: u8 = b'S';
const IDEMPOTENCY: u8 = b'I';
const TRAILER: u8 = b'T';

/// The largest frame body: a record at the cap, with room to spare.
const FRAME_LEN_MAX: usize = RECORD_LEN_MAX + 1024;
const TRAILER_LEN: usize = 8 + 8 + 32 + 32;

/// What a backup holds (or, after a restore, what was restored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// When the backup was taken.
    pub taken_at: DateTime<Utc>,
    pub events: u64,
    pub last_position: u64,
    pub last_hash: [u8; 32],
    /// When the first and the last event were recorded (`None` for an empty log).
    pub first_recorded_at: Option<DateTime<Utc>>,
    pub last_recorded_at: Option<DateTime<Utc>>,
    /// Subjects with a key, and subjects forgotten.
    pub keys: u64,
    pub forgotten: u64,
    pub secrets: u64,
    /// The backup file's length.
    pub bytes: u64,
}

/// Where a restore stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreTo {
    /// Every event in the backup.
    End,
    /// Events up to and including this position.
    Position(u64),
    /// Events recorded at or before this time.
    Time(DateTime<Utc>),
}

/// What a pass over a backup's records, keys and secrets has counted: the same
/// whether the backup is being written, read or restored.
#[derive(Debug)]
struct Tally {
    events: u64,
    /// The last record's hash (the genesis hash before the first).
    last_hash: [u8; 32],
    first_micros: Option<i64>,
    last_micros: Option<i64>,
    keys: u64,
    forgotten: u64,
    secrets: u64,
}

impl Tally {
    fn new() -> Self {
        Tally {
            events: 0,
            last_hash: GENESIS_HASH,
            first_micros: None,
            last_micros: None,
            keys: 0,
            forgotten: 0,
            secrets: 0,
        }
    }

    fn record(&mut self, hash: [u8; 32], micros: i64) {
        self.events += 1;
        self.last_hash = hash;
        self.first_micros.get_or_insert(micros);
        self.last_micros = Some(micros);
    }

    /// A subject's key, or its tombstone when `forgotten`.
    fn key(&mut self, forgotten: bool) {
        match forgotten {
            true => self.forgotten += 1,
            false => self.keys += 1,
        }
    }

    fn summary(self, taken_at: DateTime<Utc>, bytes: u64) -> BackupSummary {
        let time = |micros: Option<i64>| micros.and_then(DateTime::from_timestamp_micros);
        BackupSummary {
            taken_at,
            events: self.events,
            last_position: self.events,
            last_hash: self.last_hash,
            first_recorded_at: time(self.first_micros),
            last_recorded_at: time(self.last_micros),
            keys: self.keys,
            forgotten: self.forgotten,
            secrets: self.secrets,
            bytes,
        }
    }
}

/// How many bytes the whole file's checksum takes at a time, writing or reading
/// a backup: blake3 hashes a long input several 1 KiB chunks at once (SIMD), and
/// a frame's few hundred bytes one 64-byte block at a time, 3–4 times slower.
const CHECKSUM_PIECE: usize = 1 << 20;

/// Writes to `inner` through a buffer of its own, hashing every byte a buffer
/// at a time, and counting them.
struct Checksummed<W> {
    inner: W,
    buffer: Vec<u8>,
    hasher: blake3::Hasher,
    len: u64,
}

impl<W: Write> Checksummed<W> {
    fn new(inner: W) -> Self {
        Checksummed { inner, buffer: Vec::new(), hasher: blake3::Hasher::new(), len: 0 }
    }

    fn frame(&mut self, kind: u8, body: &[u8]) -> Result<(), StoreError> {
        let len = u32::try_from(body.len()).map_err(|_| StoreError::Storage("a backup frame over 4 GiB".into()))?;
        self.write(&[kind])?;
        self.write(&len.to_be_bytes())?;
        self.write(body)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.buffer.extend_from_slice(bytes);
        self.len += bytes.len() as u64;
        if self.buffer.len() >= CHECKSUM_PIECE {
            self.write_buffer()?;
        }
        Ok(())
    }

    fn write_buffer(&mut self) -> Result<(), StoreError> {
        self.hasher.update(&self.buffer);
        self.inner
            .write_all(&self.buffer)
            .map_err(|error| StoreError::Storage(format!("writing the backup: {error}")))?;
        self.buffer.clear();
        Ok(())
    }

    /// Write what is buffered and then the checksum of everything written (which
    /// it does not cover); returns the file's length.
    fn finish(mut self) -> Result<u64, StoreError> {
        self.write_buffer()?;
        let checksum = *self.hasher.finalize().as_bytes();
        self.inner
            .write_all(&checksum)
            .and_then(|()| self.inner.flush())
            .map_err(|error| StoreError::Storage(format!("writing the backup: {error}")))?;
        Ok(self.len + checksum.len() as u64)
    }
}

impl EventLog {
    /// Write a backup of the log as it is now, up to the current head, into `out`
    /// (appends may go on meanwhile; the backup ends at the head read first).
    /// The chain is checked on the way, so a damaged log is never backed up as
    /// whole. `progress` gets the count of events written so far.
    pub fn backup(&self, out: impl Write, progress: &mut dyn FnMut(u64)) -> Result<BackupSummary, StoreError> {
        self.backup_up_to(self.head(), out, progress)
    }

    /// [`EventLog::backup`] ending at `head`, which must not be past the log's head.
    pub fn backup_up_to(
        &self,
        head: u64,
        out: impl Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<BackupSummary, StoreError> {
        if head > self.head() {
            return Err(StoreError::bad_input(format!("position {head} is past the head {}", self.head())));
        }
        let trees = self.trees();
        let taken_at = Utc::now();
        let mut out = Checksummed::new(out);
        out.write(BACKUP_MAGIC)?;
        out.write(&BACKUP_VERSION.to_be_bytes())?;
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(&taken_at.timestamp_micros().to_be_bytes());
        header[8..].copy_from_slice(&head.to_be_bytes());
        out.frame(HEADER, &header)?;

        let mut tally = Tally::new();
        let mut subjects = BTreeSet::new();
        if head > 0 {
            let broken =
                |position| StoreError::corrupt(position, "hash does not match the record and the previous hash");
            chain::checked(GENESIS_HASH, broken, |chain| {
                chunk::walk(&trees.events, 1, head, |position, bytes| {
                    let record = record::parse(bytes).map_err(|reason| StoreError::corrupt(position, reason))?;
                    chain.link(position, record.body, record.hash)?;
                    tally.record(record.hash, record.header.recorded_at_micros);
                    subjects.extend(record.header.subject);
                    out.frame(RECORD, bytes)?;
                    if position.is_multiple_of(4096) {
                        progress(position);
                    }
                    Ok(true)
                })
            })?;
        }
        if tally.events != head {
            return Err(StoreError::corrupt(tally.events + 1, "missing from the log"));
        }
        progress(tally.events);

        for subject in subjects {
            let forgotten = match trees::visible_subject_key(trees, subject)? {
                Some(Some(key)) => {
                    out.frame(KEY, &[&subject.as_bytes()[..], &key[..]].concat())?;
                    false
                }
                Some(None) => {
                    out.frame(KEY, subject.as_bytes())?;
                    true
                }
                None => return Err(StoreError::corrupt(0, format!("subject {subject} has no key and no tombstone"))),
            };
            tally.key(forgotten);
        }
        for item in trees.meta.scan_prefix(trees::META_SECRET_PREFIX) {
            let (key, value) = item?;
            let name = &key[trees::META_SECRET_PREFIX.len()..];
            out.frame(SECRET, &[name, &value[..]].concat())?;
            tally.secrets += 1;
        }
        // Entries of appends past `head` (an online backup's) are left out.
        for item in trees.idempotency.iter() {
            let (key, value) = item?;
            let last = crate::writer::idempotency_last_position(&value)
                .ok_or_else(|| StoreError::corrupt(0, "an idempotency entry does not read"))?;
            if last <= head {
                out.frame(IDEMPOTENCY, &[&key[..], &value[..]].concat())?;
            }
        }

        let mut trailer = Vec::with_capacity(TRAILER_LEN);
        trailer.extend_from_slice(&tally.events.to_be_bytes());
        trailer.extend_from_slice(&head.to_be_bytes());
        trailer.extend_from_slice(&tally.last_hash);
        out.write(&[TRAILER])?;
        out.write(&(TRAILER_LEN as u32).to_be_bytes())?;
        out.write(&trailer)?;
        let len = out.finish()?;
        Ok(tally.summary(taken_at, len))
    }
}

/// One item of a backup, as [`read`] hands it over once it has been checked.
enum Item<'a> {
    Record {
        position: u64,
        stream: &'a str,
        version: u64,
        bytes: &'a [u8],
        hash: [u8; 32],
        micros: i64,
        subject: Option<Uuid>,
        /// The command that appended it: the events of one append share their
        /// correlation id and their time.
        correlation_id: Uuid,
    },
    Key {
        subject: Uuid,
        key: Option<[u8; 32]>,
    },
    Secret {
        name: &'a str,
        value: [u8; 32],
    },
    Idempotency {
        key: &'a [u8],
        value: &'a [u8],
        last_position: u64,
    },
}

/// Check a whole backup without writing anything: returns what it holds, or why it
/// is not sound (one line).
pub fn check_backup(input: impl Read, progress: &mut dyn FnMut(u64)) -> Result<BackupSummary, StoreError> {
    read(input, progress, &mut |_| Ok(()))
}

/// Fill the new or empty directory `dir` from a backup, up to `to`; returns what
/// was restored. The backup is read again and checked as it goes, so call
/// [`check_backup`] first to refuse a bad file before anything is written; a
/// restore that fails midway leaves `dir` half-filled, so restore into a
/// staging directory and rename it into place.
pub fn restore_backup(
    input: impl Read,
    dir: &Path,
    to: RestoreTo,
    progress: &mut dyn FnMut(u64),
) -> Result<BackupSummary, StoreError> {
    let mut filler = Filler::create(dir)?;
    let mut subjects = BTreeSet::new();
    let (mut restored, mut cut) = (Tally::new(), false);
    // The append the last record belongs to (its correlation id and time) and
    // where it began; and the append a position cut would split, if it does.
    let (mut append, mut append_start, mut split) = (None, 0, None);
    let whole = read(input, progress, &mut |item| {
        match item {
            Item::Record { position, stream, version, bytes, hash, micros, subject, correlation_id } => {
                if append != Some((correlation_id, micros)) {
                    (append, append_start) = (Some((correlation_id, micros)), position);
                }
                if let RestoreTo::Position(last) = to
                    && position > last
                    && append_start <= last
                {
                    split = Some((append_start, position));
                }
                cut = cut
                    || match to {
                        RestoreTo::End => false,
                        RestoreTo::Position(last) => position > last,
                        RestoreTo::Time(time) => micros > time.timestamp_micros(),
                    };
                if !cut {
                    filler.put(position, stream, version, bytes, hash, micros)?;
                    restored.record(hash, micros);
                    subjects.extend(subject);
                }
            }
            Item::Key { subject, key } if subjects.contains(&subject) => {
                filler.put_key(subject, key.as_ref())?;
                restored.key(key.is_none());
            }
            Item::Key { .. } => {}
            Item::Secret { name, value } => {
                filler.put_secret(name, &value)?;
                restored.secrets += 1;
            }
            // The records all came before: the restored head is known.
            Item::Idempotency { key, value, last_position } if last_position <= restored.events => {
                filler.put_idempotency(key, value)?;
            }
            Item::Idempotency { .. } => {}
        }
        Ok(())
    })?;
    if let (RestoreTo::Position(last), Some((start, end))) = (to, split) {
        let before = match start {
            1 => String::new(),
            _ => format!("{} or ", start - 1),
        };
        return Err(StoreError::bad_input(format!(
            "position {last} splits the events one command appended together (positions {start} to {end}): \
             restore to {before}{end}"
        )));
    }
    if restored.events == 0 && whole.events > 0 {
        return Err(StoreError::bad_input(match to {
            RestoreTo::Time(time) => format!("no event in the backup was recorded at or before {time}"),
            _ => "nothing to restore before that point".to_owned(),
        }));
    }
    filler.finish()?;
    Ok(restored.summary(whole.taken_at, whole.bytes))
}

/// Reads frames, checking every byte before handing items on.
struct Reader<R> {
    input: R,
    hasher: blake3::Hasher,
    /// Bytes read and not hashed yet: the checksum takes them a piece at a time.
    unhashed: Vec<u8>,
    offset: u64,
}

impl<R: Read> Reader<R> {
    fn new(input: R) -> Self {
        Reader { input, hasher: blake3::Hasher::new(), unhashed: Vec::new(), offset: 0 }
    }

    fn exact(&mut self, buffer: &mut [u8], hash: bool) -> Result<(), StoreError> {
        self.input.read_exact(buffer).map_err(|error| match error.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                StoreError::bad_input(format!("the backup is cut short at byte {}: it has no trailer", self.offset))
            }
            _ => StoreError::bad_input(format!("cannot read the backup: {error}")),
        })?;
        if hash {
            self.unhashed.extend_from_slice(buffer);
            if self.unhashed.len() >= CHECKSUM_PIECE {
                self.hasher.update(&self.unhashed);
                self.unhashed.clear();
            }
        }
        self.offset += buffer.len() as u64;
        Ok(())
    }

    /// The checksum of every byte read with `hash` so far.
    fn checksum(&mut self) -> [u8; 32] {
        self.hasher.update(&self.unhashed);
        self.unhashed.clear();
        *self.hasher.finalize().as_bytes()
    }
}

fn read(
    input: impl Read,
    progress: &mut dyn FnMut(u64),
    visit: &mut dyn FnMut(Item<'_>) -> Result<(), StoreError>,
) -> Result<BackupSummary, StoreError> {
    let broken =
        |position| StoreError::bad_input(format!("the hash chain breaks at position {position}: the file is damaged"));
    chain::checked(GENESIS_HASH, broken, |chain| read_linked(input, progress, visit, chain))
}

/// [`read`], each record linked into `chain`, which checks its hash.
fn read_linked(
    input: impl Read,
    progress: &mut dyn FnMut(u64),
    visit: &mut dyn FnMut(Item<'_>) -> Result<(), StoreError>,
    chain: &mut Chain,
) -> Result<BackupSummary, StoreError> {
    let bad = |reason: String| StoreError::bad_input(reason);
    let mut reader = Reader::new(BufReader::with_capacity(1 << 20, input));
    let mut magic = [0; 8];
    reader.exact(&mut magic, true).map_err(|_| bad("not a shoplog backup: the file is too short".into()))?;
    if &magic != BACKUP_MAGIC {
        return Err(bad("not a shoplog backup: it does not start with SHOPLOGB".into()));
    }
    let mut version = [0; 2];
    reader.exact(&mut version, true)?;
    let version = u16::from_be_bytes(version);
    if !(1..=BACKUP_VERSION).contains(&version) {
        return Err(bad(format!(
            "backup format version {version} is not supported (this build reads 1 to {BACKUP_VERSION})"
        )));
    }

    let mut stage = HEADER;
    let mut body = Vec::with_capacity(FRAME_LEN_MAX);
    let (mut taken_at, mut head) = (DateTime::<Utc>::UNIX_EPOCH, 0);
    let mut tally = Tally::new();
    loop {
        let frame_offset = reader.offset;
        let mut kind_len = [0; 5];
        reader.exact(&mut kind_len, true)?;
        let kind = kind_len[0];
        let len = u32::from_be_bytes([kind_len[1], kind_len[2], kind_len[3], kind_len[4]]) as usize;
        let order =
            |kind: u8| [HEADER, RECORD, KEY, SECRET, IDEMPOTENCY, TRAILER].iter().position(|known| *known == kind);
        let (Some(rank), Some(current)) = (order(kind), order(stage)) else {
            return Err(bad(format!("unknown frame kind 0x{kind:02x} at byte {frame_offset}: the file is damaged")));
        };
        if rank < current || (kind == HEADER && stage != HEADER) || (stage == HEADER && kind != HEADER) {
            return Err(bad(format!(
                "frame {} out of order at byte {frame_offset}: the file is damaged",
                kind as char
            )));
        }
        stage = kind;
        if len > FRAME_LEN_MAX {
            return Err(bad(format!("frame of {len} bytes at byte {frame_offset} is too large: the file is damaged")));
        }
        if kind == TRAILER {
            if len != TRAILER_LEN {
                return Err(bad(format!("the trailer at byte {frame_offset} has {len} bytes: the file is damaged")));
            }
            let mut fields = [0; TRAILER_LEN - 32];
            reader.exact(&mut fields, true)?;
            let expected_checksum = reader.checksum();
            let mut checksum = [0; 32];
            reader.exact(&mut checksum, false)?;
            let mut rest = [0; 1];
            match reader.input.read(&mut rest) {
                Ok(0) => {}
                Ok(_) => return Err(bad("bytes follow the trailer: the file is damaged".into())),
                Err(error) => return Err(bad(format!("cannot read the backup: {error}"))),
            }
            if checksum != expected_checksum {
                return Err(bad("the checksum does not match: the file is damaged".into()));
            }
            let count = be_u64(&fields[..8]).unwrap_or_default();
            let last_position = be_u64(&fields[8..16]).unwrap_or_default();
            let events = tally.events;
            if count != events || last_position != head || events != head || fields[16..48] != tally.last_hash {
                return Err(bad(format!(
                    "the trailer says {count} events up to {last_position}, the file holds {events} up to {head}"
                )));
            }
            progress(events);
            return Ok(tally.summary(taken_at, reader.offset));
        }
        body.resize(len, 0);
        reader.exact(&mut body, true)?;
        if matches!(kind, KEY | SECRET | IDEMPOTENCY) && tally.events != head {
            let events = tally.events;
            return Err(bad(format!("the backup ends at position {events}, its header says {head}")));
        }
        match kind {
            HEADER => {
                let (Some(micros), Some(position)) =
                    (be_u64(body.get(..8).unwrap_or_default()), be_u64(body.get(8..).unwrap_or_default()))
                else {
                    return Err(bad("the backup header is damaged".into()));
                };
                taken_at = DateTime::from_timestamp_micros(micros as i64)
                    .ok_or_else(|| bad("the backup header's time is out of range".into()))?;
                head = position;
                // The header alone is not enough: a record must follow unless the log was empty.
                stage = RECORD;
            }
            RECORD => {
                let position = tally.events + 1;
                let record = record::parse(&body)
                    .map_err(|reason| bad(format!("the record at position {position} is damaged: {reason}")))?;
                if record.header.position != position {
                    return Err(bad(format!("position {position} is missing (found {})", record.header.position)));
                }
                if position > head {
                    return Err(bad(format!("the backup holds more events than its header's head {head}")));
                }
                chain.link(position, record.body, record.hash)?;
                tally.record(record.hash, record.header.recorded_at_micros);
                visit(Item::Record {
                    position,
                    stream: &record.header.stream,
                    version: record.header.version,
                    bytes: &body,
                    hash: record.hash,
                    micros: record.header.recorded_at_micros,
                    subject: record.header.subject,
                    correlation_id: record.header.correlation_id,
                })?;
                if position.is_multiple_of(4096) {
                    progress(position);
                }
            }
            KEY => {
                let subject = Uuid::from_slice(body.get(..16).unwrap_or_default())
                    .map_err(|_| bad(format!("the key frame at byte {frame_offset} is damaged")))?;
                let key = match body.len() {
                    16 => None,
                    48 => Some(<[u8; 32]>::try_from(&body[16..]).map_err(|_| bad("a key is damaged".into()))?),
                    _ => return Err(bad(format!("the key frame at byte {frame_offset} is damaged"))),
                };
                tally.key(key.is_none());
                visit(Item::Key { subject, key })?;
            }
            SECRET => {
                let split = body.len().checked_sub(32).ok_or_else(|| bad("a secret is damaged".into()))?;
                let name = std::str::from_utf8(&body[..split]).map_err(|_| bad("a secret's name is damaged".into()))?;
                let value = <[u8; 32]>::try_from(&body[split..]).map_err(|_| bad("a secret is damaged".into()))?;
                tally.secrets += 1;
                visit(Item::Secret { name, value })?;
            }
            IDEMPOTENCY => {
                let damaged = || bad(format!("the idempotency frame at byte {frame_offset} is damaged"));
                let (key, value) = (body.get(..32).ok_or_else(damaged)?, &body[32..]);
                let last_position = crate::writer::idempotency_last_position(value).ok_or_else(damaged)?;
                if version < 2 || last_position > head {
                    return Err(damaged());
                }
                visit(Item::Idempotency { key, value, last_position })?;
            }
            _ => return Err(bad(format!("unknown frame kind 0x{kind:02x} at byte {frame_offset}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{AppendRequest, ExpectedVersion, Metadata, NewEvent};

    /// A backup of one append, made under an idempotency key when `keyed`.
    async fn backup_of_one_append(keyed: bool) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = EventLog::open(dir.path()).expect("opens");
        let id = Uuid::now_v7();
        let event = NewEvent {
            event_id: id,
            event_type: "E".to_owned(),
            schema_version: 1,
            subject: None,
            payload: b"x".to_vec(),
        };
        let metadata = Metadata { actor: "test".to_owned(), correlation_id: id, causation_id: id };
        let mut request = AppendRequest::single("s", ExpectedVersion::Any, vec![event], metadata);
        if keyed {
            request = request.with_idempotency("once", [7; 32]);
        }
        log.append(request).await.expect("appends");
        let mut bytes = Vec::new();
        log.backup(&mut bytes, &mut |_| {}).expect("backs up");
        bytes
    }

    /// `bytes` as a backup of format version `version`, its checksum made again.
    fn as_version(bytes: &[u8], version: u16) -> Vec<u8> {
        let mut bytes = bytes.to_vec();
        bytes[8..10].copy_from_slice(&version.to_be_bytes());
        let body = bytes.len() - 32;
        let checksum = *blake3::hash(&bytes[..body]).as_bytes();
        bytes[body..].copy_from_slice(&checksum);
        bytes
    }

    /// A file of version 1 (before idempotency keys were kept) still restores;
    /// one that says version 1 and holds an idempotency key is damaged.
    #[tokio::test]
    async fn a_version_1_backup_restores_and_holds_no_idempotency_key() {
        let unkeyed = backup_of_one_append(false).await;
        let summary = check_backup(as_version(&unkeyed, 1).as_slice(), &mut |_| {}).expect("version 1 reads");
        assert_eq!(summary.events, 1);
        let keyed = backup_of_one_append(true).await;
        assert!(keyed.len() > unkeyed.len(), "the key is in the backup");
        check_backup(keyed.as_slice(), &mut |_| {}).expect("version 2 reads");
        let refused = check_backup(as_version(&keyed, 1).as_slice(), &mut |_| {});
        assert!(
            matches!(&refused, Err(StoreError::BadInput { reason }) if reason.contains("idempotency")),
            "{refused:?}"
        );
        let refused = check_backup(as_version(&keyed, 3).as_slice(), &mut |_| {});
        assert!(
            matches!(&refused, Err(StoreError::BadInput { reason }) if reason.contains("version 3")),
            "{refused:?}"
        );
    }
}
