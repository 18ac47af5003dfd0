//! The store's errors. Each variant carries what the caller needs to act on it.

use std::path::PathBuf;

use uuid::Uuid;

use crate::types::ExpectedVersion;

/// Everything that can go wrong in the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// An expected version did not match; nothing of the append was written.
    #[error("wrong expected version on stream {stream}: expected {expected}, actual {actual}")]
    WrongExpectedVersion { stream: String, expected: ExpectedVersion, actual: u64 },

    /// The idempotency key was used before for a different request.
    #[error("idempotency key was already used for a different request")]
    IdempotencyKeyReused,

    /// One encoded record is over the cap (see [`crate::RECORD_LEN_MAX`]).
    #[error("event {event_type} on stream {stream} is {len} bytes stored, over the cap of {max}")]
    RecordTooLarge { stream: String, event_type: String, len: usize, max: usize },

    /// The append is malformed (no events, a bad stream name, a stream twice…).
    #[error("invalid append: {reason}")]
    InvalidAppend { reason: String },

    /// An event names a data subject that was forgotten; its data cannot be sealed again.
    #[error("subject {subject} was forgotten")]
    SubjectForgotten { subject: Uuid },

    /// Another process holds the data directory.
    #[error("data directory {} is in use by another process (a running server?)", path.display())]
    Locked { path: PathBuf },

    /// Making this batch durable failed, so it was not acknowledged; the store
    /// accepts no more appends until it is reopened.
    #[error("the log could not make the append durable: {reason}")]
    Durability { reason: String },

    /// The store refuses appends since an earlier durability failure, or is shut down.
    #[error("the log is not accepting appends: {reason}")]
    Unavailable { reason: String },

    /// Restore and import only fill a new or empty directory.
    #[error("{} is not empty: restore and import only fill a new or empty data directory", path.display())]
    NotEmpty { path: PathBuf },
    #[error("{} is a file, not a directory: restore and import fill a new or empty data directory", path.display())]
    NotADirectory { path: PathBuf },

    /// A backup file or an import is not sound; nothing was written from it.
    #[error("{reason}")]
    BadInput { reason: String },

    /// The stored data is damaged at `position` (0 when not tied to one event).
    #[error("log corrupt{}: {reason}", at_position(*position))]
    Corrupt { position: u64, reason: String },

    /// A sync of sled's file failed when the log was last open (see
    /// `Options::salvage`): the log is copied elsewhere, not used again.
    #[error(
        "a sync of sled's file failed when the log in {} was last open: the disk may lack writes the kernel \
         dropped, though the file reads back whole for now, and the write-ahead log holds every batch after \
         position {head}. Copy the log into a new data dir and serve that one: `shoplog backup --data {} --out \
         FILE && shoplog restore --in FILE --data NEW_DIR` (the backup reads the log and its write-ahead log as \
         they are, and leaves them so)",
        path.display(),
        path.display()
    )]
    SyncFailed { path: PathBuf, head: u64 },

    /// An error from sled or the file system.
    #[error("storage error: {0}")]
    Storage(String),
}

impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        match &error {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => disk_full(io),
            // sled found a page of its file damaged as it read it: no position
            // can be named (the page may hold any records), so the damage is at 0.
            sled::Error::Corruption { .. } => StoreError::corrupt(
                0,
                "sled's file is damaged (a page of it read back wrong): restore the data directory from a backup",
            ),
            _ => StoreError::Storage(error.to_string()),
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(error: std::io::Error) -> Self {
        match error.kind() {
            std::io::ErrorKind::StorageFull => disk_full(&error),
            _ => StoreError::Storage(error.to_string()),
        }
    }
}

/// A full disk is not the store's fault nor the caller's: the log takes nothing
/// until there is room (sled may need to write even to read), which a client
/// hears as "not accepting writes" (503), not as an internal error.
/// " at position N", or nothing for damage tied to no event (position 0).
fn at_position(position: u64) -> String {
    match position {
        0 => String::new(),
        position => format!(" at position {position}"),
    }
}

fn disk_full(error: &std::io::Error) -> StoreError {
    StoreError::Unavailable { reason: format!("the disk holding the log is full ({error})") }
}

impl StoreError {
    pub(crate) fn bad_input(reason: impl Into<String>) -> Self {
        StoreError::BadInput { reason: reason.into() }
    }

    pub(crate) fn corrupt(position: u64, reason: impl Into<String>) -> Self {
        StoreError::Corrupt { position, reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk (`ENOSPC`), from sled or from the store's own files, is the
    /// log not taking writes (a 503 over HTTP), not a storage error (a 500).
    #[test]
    fn a_full_disk_is_the_log_not_taking_writes_a_damaged_page_corruption_and_other_io_errors_storage_errors() {
        let full = || std::io::Error::from_raw_os_error(28);
        for error in [StoreError::from(full()), StoreError::from(sled::Error::Io(full()))] {
            assert!(
                matches!(&error, StoreError::Unavailable { reason } if reason.starts_with("the disk holding the log is full")),
                "{error:?}"
            );
        }
        let damaged = StoreError::from(sled::Error::Corruption { at: None, bt: () });
        assert!(
            matches!(&damaged, StoreError::Corrupt { position: 0, reason } if reason.contains("restore")),
            "{damaged:?}"
        );
        // Damage tied to no event names no position; a record's names its own.
        assert!(damaged.to_string().starts_with("log corrupt: sled's file is damaged"), "{damaged}");
        assert!(StoreError::corrupt(7, "bad").to_string() == "log corrupt at position 7: bad");
        let denied = || std::io::Error::from_raw_os_error(13);
        for error in [StoreError::from(denied()), StoreError::from(sled::Error::Io(denied()))] {
            assert!(matches!(error, StoreError::Storage(_)), "{error:?}");
        }
    }
}
