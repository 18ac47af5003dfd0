//! sled's file `db` as the log syncs it, and the checkpoint mark beside it
//! (`mark`).
//!
//! After a failed `fsync` the kernel may drop the pages it could not write
//! while the file still reads them back from its cache, and tells the failure
//! to each open handle once: a later sync, here or in the next process,
//! reports success over the lost pages. So every sync of sled's file goes
//! through the one handle opened with the log, and a failure is recorded in
//! the mark (`SyncFailed`) before anyone is answered; from then on no sync
//! reports success and no mark is written over it. The same holds when sled's
//! own writes fail (it writes through a handle of its own, where a write-back
//! error shows first), unless the disk is full, which loses nothing written.
//! One lock is held over every sync and every write of the mark, so that a
//! checkpoint that synced after another sync failed cannot mark the log sound.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::mark::{self, State};

#[derive(Debug)]
pub(crate) struct SledFile {
    dir: PathBuf,
    file: File,
    lock: Mutex<()>,
    failed: AtomicBool,
}

/// What a sync that may not report success says.
const FAILED_BEFORE: &str = "an earlier sync of sled's file failed: the log must be copied (`shoplog verify` says how)";

impl SledFile {
    /// sled's file in `dir`, opened as the log opens.
    pub fn open(dir: &Path) -> io::Result<SledFile> {
        Ok(SledFile {
            dir: dir.to_path_buf(),
            file: File::open(dir.join("db"))?,
            lock: Mutex::new(()),
            failed: AtomicBool::new(false),
        })
    }

    fn locked(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `fdatasync` (`fsync` with `all`) of sled's file; a failure is recorded
    /// in the mark first, and every sync after it fails too.
    pub fn sync(&self, all: bool) -> Result<(), String> {
        let _held = self.locked();
        if self.failed.load(Ordering::Acquire) {
            return Err(FAILED_BEFORE.to_owned());
        }
        let (call, synced) = match all {
            true => ("fsync", self.file.sync_all()),
            false => ("fdatasync", self.file.sync_data()),
        };
        synced.map_err(|error| {
            self.record_failure();
            format!("{call} of sled's file db: {error}")
        })
    }

    /// A write of sled's failed with `error`: unless the disk is full (sled's
    /// write was refused whole, and what it wrote before is in the file), what
    /// its file holds past the last checkpoint cannot be trusted.
    pub fn write_failed(&self, error: &sled::Error) {
        if matches!(error, sled::Error::Io(io) if io.kind() == io::ErrorKind::StorageFull) {
            // Refused whole, unless the kernel's write-back ran out of room:
            // a sync through the log's handle tells.
            let _ = self.sync(true);
            return;
        }
        let _held = self.locked();
        self.record_failure();
    }

    /// Whether a sync or a write of sled's file failed (see [`Self::write_failed`]).
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Write the mark, unless a failure was recorded.
    pub fn mark(&self, head: u64, state: State) -> io::Result<()> {
        let _held = self.locked();
        if self.failed.load(Ordering::Acquire) {
            return Err(io::Error::other(FAILED_BEFORE));
        }
        mark::write(&self.dir, head, state)
    }

    /// Record the failure in the mark (the lock held). Best effort: the disk
    /// that failed may fail this too, which is logged.
    fn record_failure(&self) {
        if self.failed.swap(true, Ordering::AcqRel) {
            return;
        }
        let head = match mark::read(&self.dir) {
            Ok(mark) => mark.map_or(0, |mark| mark.head),
            Err(reason) => {
                tracing::error!(%reason, "a sync of sled's file failed, and the checkpoint mark does not read");
                return;
            }
        };
        let recorded = mark::write(&self.dir, head, State::SyncFailed)
            .or_else(|_| mark::write_in_place(&self.dir, head, State::SyncFailed));
        match recorded {
            Ok(()) => {
                tracing::error!(head, "a sync of sled's file failed: the log must be copied (see `shoplog verify`)")
            }
            Err(error) => tracing::error!(%error, "a sync of sled's file failed, and so did recording it in the mark"),
        }
    }
}
