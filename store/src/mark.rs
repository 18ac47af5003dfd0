//! The head the last checkpoint made durable in sled, in a file of its own
//! (`checkpointed`) beside sled's, so that a sled file that lost what a
//! checkpoint had made durable is told from one that never held it.
//!
//! sled recovers the longest prefix of its log that reads back whole: a byte
//! damaged in its file (without a snapshot to check it against) makes it
//! recover less, silently, and the log's stored head goes back with it (the
//! head is in sled too). The write-ahead log covers the positions after the last
//! checkpoint; this file covers those up to it. When the log is opened, a stored
//! head below this one is damage: the open fails, naming the first position
//! lost, before it writes anything of its own.
//!
//! It also says whether the log was closed cleanly. While it is open, batches
//! past the checkpoint may be held by the write-ahead log alone (sled has them
//! unflushed), so after a crash a WAL file that is gone (deleted, or never
//! copied with the rest) means acknowledged events may be lost: the open fails
//! rather than start from what sled holds. A clean close checkpoints everything
//! and empties the WAL, and says so here: then the WAL files hold nothing needed.
//!
//! And whether a sync of sled's file failed since the checkpoint it names.
//! After a failed `fsync` the kernel may have dropped the pages it could not
//! write, and a later sync (by the next process too) reports success: sled's
//! file then reads back whole from the page cache while its disk lacks them.
//! Such a log is refused by an open that would empty the write-ahead log (the
//! only sound copy of the batches after the checkpoint); an open to salvage
//! it (`Options::salvage`) reads it whole, for a backup to restore elsewhere.
//!
//! The file: `"SLC2"`, the head (u64 BE), the state (0 open, 1 closed cleanly,
//! 2 a sync failed), and the blake3 hash of the three (log format 8). `"SLC1"` files (format 7,
//! no state) read as open. It is written as a new file and renamed over the old
//! one, then the directory is synced: a crash leaves the old one or the new one,
//! both true.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub(crate) const FILE: &str = "checkpointed";
const MAGIC_V1: [u8; 4] = *b"SLC1";
const MAGIC: [u8; 4] = *b"SLC2";
const LEN_V1: usize = 4 + 8 + 32;
const LEN: usize = 4 + 8 + 1 + 32;

/// How the log was left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Open, or left by a crash: the WAL may hold batches sled lost.
    Open,
    /// Closed cleanly: sled holds every batch durably, the WAL nothing needed.
    Closed,
    /// A sync of sled's file failed after the checkpoint at the head: what
    /// sled's file holds past it cannot be trusted, and the WAL holds every
    /// batch after it.
    SyncFailed,
}

/// What the file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub head: u64,
    pub state: State,
}

fn hash(magic: &[u8; 4], head: u64, state: Option<State>) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(magic);
    hasher.update(&head.to_be_bytes());
    if let Some(state) = state {
        hasher.update(&[state_byte(state)]);
    }
    hasher.finalize()
}

fn state_byte(state: State) -> u8 {
    match state {
        State::Open => 0,
        State::Closed => 1,
        State::SyncFailed => 2,
    }
}

/// Record, durably, that sled holds every position up to `head` durably, and
/// how the log is left.
pub(crate) fn write(dir: &Path, head: u64, state: State) -> io::Result<()> {
    let bytes = encode(head, state);
    let path = dir.join(FILE);
    let fresh = dir.join(format!("{FILE}.new"));
    let failed = |what: &'static str| move |error: io::Error| io::Error::new(error.kind(), format!("{what}: {error}"));
    {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&fresh)
            .map_err(failed("creating it"))?;
        io::Write::write_all(&mut &file, &bytes).map_err(failed("writing it"))?;
        file.sync_data().map_err(failed("fdatasync"))?;
    }
    std::fs::rename(&fresh, &path).map_err(failed("renaming it into place"))?;
    std::fs::File::open(dir).and_then(|dir| dir.sync_all()).map_err(failed("fsync of the data directory"))
}

fn encode(head: u64, state: State) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(LEN);
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&head.to_be_bytes());
    bytes.push(state_byte(state));
    bytes.extend_from_slice(hash(&MAGIC, head, Some(state)).as_bytes());
    bytes
}

/// [`write`] where a new file cannot be made (a full or failing disk): the
/// file there now written over in place, its sync tried. Not atomic, but read
/// back whole or damaged (its hash), and a damaged mark refuses the open too;
/// while the machine runs, the next open reads it from the page cache, synced
/// or not, which is all a failure recorded this way must reach.
pub(crate) fn write_in_place(dir: &Path, head: u64, state: State) -> io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(dir.join(FILE))?;
    io::Write::write_all(&mut &file, &encode(head, state))?;
    file.set_len(LEN as u64)?;
    let _ = file.sync_data();
    Ok(())
}

/// What the last checkpoint recorded; `None` when none did (a log made by a
/// binary from before the file, or never checkpointed). A file that does not
/// read is an error, naming why.
pub(crate) fn read(dir: &Path) -> Result<Option<Mark>, String> {
    let bytes = match std::fs::read(dir.join(FILE)) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("cannot read the file {FILE}: {error}")),
    };
    let damaged = || {
        format!(
            "the file {FILE}, which says how far sled is durable, is damaged: remove it and the log opens \
             without that check (the log itself may be whole: `shoplog verify` walks it)"
        )
    };
    let head = || bytes.get(4..12).and_then(|head| head.try_into().ok()).map(u64::from_be_bytes).ok_or_else(damaged);
    let (state, stored_hash) = match (bytes.len(), bytes.get(..4)) {
        (LEN_V1, Some(magic)) if magic == MAGIC_V1 => (None, &bytes[12..]),
        (LEN, Some(magic)) if magic == MAGIC => match bytes[12] {
            0 => (Some(State::Open), &bytes[13..]),
            1 => (Some(State::Closed), &bytes[13..]),
            2 => (Some(State::SyncFailed), &bytes[13..]),
            _ => return Err(damaged()),
        },
        _ => return Err(damaged()),
    };
    let head = head()?;
    let magic = if state.is_some() { &MAGIC } else { &MAGIC_V1 };
    if hash(magic, head, state).as_bytes() != stored_hash {
        return Err(damaged());
    }
    Ok(Some(Mark { head, state: state.unwrap_or(State::Open) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_reads_back_and_a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(read(dir.path()), Ok(None));
        write(dir.path(), 41, State::Open).expect("writes");
        write(dir.path(), 42, State::Closed).expect("writes over");
        assert_eq!(read(dir.path()), Ok(Some(Mark { head: 42, state: State::Closed })));
        write(dir.path(), 42, State::Open).expect("writes over");
        assert_eq!(read(dir.path()), Ok(Some(Mark { head: 42, state: State::Open })));
        write(dir.path(), 42, State::SyncFailed).expect("writes over");
        assert_eq!(read(dir.path()), Ok(Some(Mark { head: 42, state: State::SyncFailed })));
        write(dir.path(), 43, State::Open).expect("writes over");
        write_in_place(dir.path(), 43, State::SyncFailed).expect("writes over in place");
        assert_eq!(read(dir.path()), Ok(Some(Mark { head: 43, state: State::SyncFailed })));
        assert!(!dir.path().join(format!("{FILE}.new")).exists());
        let mut bytes = std::fs::read(dir.path().join(FILE)).expect("reads");
        bytes[11] ^= 1;
        std::fs::write(dir.path().join(FILE), &bytes).expect("writes");
        assert!(read(dir.path()).is_err_and(|reason| reason.contains("is damaged")));
        bytes[11] ^= 1;
        bytes[12] = 1;
        std::fs::write(dir.path().join(FILE), &bytes).expect("writes");
        assert!(read(dir.path()).is_err_and(|reason| reason.contains("is damaged")), "a state its hash does not cover");
    }

    /// The file of log format 7 before the state: the head, read as open.
    #[test]
    fn a_file_without_the_state_reads_as_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut bytes = MAGIC_V1.to_vec();
        bytes.extend_from_slice(&42u64.to_be_bytes());
        bytes.extend_from_slice(hash(&MAGIC_V1, 42, None).as_bytes());
        std::fs::write(dir.path().join(FILE), &bytes).expect("writes");
        assert_eq!(read(dir.path()), Ok(Some(Mark { head: 42, state: State::Open })));
    }
}
