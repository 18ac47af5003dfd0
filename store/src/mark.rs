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
//! The file: `"SLC1"`, the head (u64 BE), and the blake3 hash of the two. It is
//! written as a new file and renamed over the old one, then the directory is
//! synced: a crash leaves the old head or the new one, both true.

use std::io;
use std::path::Path;

pub(crate) const FILE: &str = "checkpointed";
const MAGIC: [u8; 4] = *b"SLC1";
const LEN: usize = 4 + 8 + 32;

fn hash(head: u64) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&MAGIC);
    hasher.update(&head.to_be_bytes());
    hasher.finalize()
}

/// Record, durably, that sled holds every position up to `head` durably.
pub(crate) fn write(dir: &Path, head: u64) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(LEN);
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&head.to_be_bytes());
    bytes.extend_from_slice(hash(head).as_bytes());
    let path = dir.join(FILE);
    let fresh = dir.join(format!("{FILE}.new"));
    let failed = |what: &'static str| move |error: io::Error| io::Error::new(error.kind(), format!("{what}: {error}"));
    {
        let file = std::fs::File::create(&fresh).map_err(failed("creating it"))?;
        io::Write::write_all(&mut &file, &bytes).map_err(failed("writing it"))?;
        file.sync_data().map_err(failed("fdatasync"))?;
    }
    std::fs::rename(&fresh, &path).map_err(failed("renaming it into place"))?;
    std::fs::File::open(dir).and_then(|dir| dir.sync_all()).map_err(failed("fsync of the data directory"))
}

/// The head the last checkpoint recorded; `None` when none did (a log made by
/// a binary from before the file, or never checkpointed). A file that does not
/// read is an error, naming why.
pub(crate) fn read(dir: &Path) -> Result<Option<u64>, String> {
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
    if bytes.len() != LEN || bytes[..4] != MAGIC {
        return Err(damaged());
    }
    let head = u64::from_be_bytes(bytes[4..12].try_into().map_err(|_| damaged())?);
    if hash(head).as_bytes() != &bytes[12..] {
        return Err(damaged());
    }
    Ok(Some(head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_reads_back_and_a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(read(dir.path()), Ok(None));
        write(dir.path(), 41).expect("writes");
        write(dir.path(), 42).expect("writes over");
        assert_eq!(read(dir.path()), Ok(Some(42)));
        assert!(!dir.path().join(format!("{FILE}.new")).exists());
        let mut bytes = std::fs::read(dir.path().join(FILE)).expect("reads");
        bytes[11] ^= 1;
        std::fs::write(dir.path().join(FILE), &bytes).expect("writes");
        assert!(read(dir.path()).is_err_and(|reason| reason.contains("is damaged")));
    }
}
