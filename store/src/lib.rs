//! The event log: the only source of truth of shoplog.
//!
//! [`EventLog`] appends events to streams in one global, gap-free order and
//! acknowledges an append only once it is durable (its batch's frame in the
//! write-ahead log, `fdatasync`ed; sled itself is flushed and fsynced at
//! checkpoints, which run beside the appends). One writer thread owns all appends and commits whatever is
//! queued as one batch (group commit). Each record carries a blake3 hash chained to
//! the one before it; [`EventLog::verify`] walks the chain and the indexes. Payloads
//! that hold personal data are sealed under their subject's key, and
//! [`EventLog::forget`] deletes that key (crypto-shredding) without rewriting the log.
//!
//! The store knows nothing of the shop: it deals in streams, positions, envelopes
//! and bytes. It never acknowledges an append before the fsync, never retries a
//! failed fsync into an acknowledgement, and never shows a reader an event that is
//! not yet durable.

mod backup;
mod chain;
mod chunk;
pub mod codec;
mod error;
mod fill;
mod import;
mod log;
mod mark;
mod private;
mod read_back;
mod record;
mod seal;
mod sled_file;
mod trees;
mod types;
mod upcast;
mod wal;
mod writer;

pub use backup::{BACKUP_MAGIC, BACKUP_VERSION, BackupSummary, RestoreTo, check_backup, restore_backup};
pub use error::StoreError;
pub use fill::ensure_new_or_empty;
pub use import::{ImportEvent, ImportSummary, Importer};
pub use log::{EventLog, Options, Subscription, first_damaged_record, is_log_file, sled_file_lost};
pub use private::{beside, create_private_dir, create_private_file, link_into_place, sync_parent};
pub use read_back::ReadBack;
pub use types::{
    AppendRequest, AppendResult, CommitStats, EventRef, ExpectedVersion, Idempotency, Metadata, NewEvent, Payload,
    RecordedEvent, Recovery, STREAM_NAME_LEN_MAX, StoredEvent, StreamAppend, StreamVersion, VerifyReport,
    is_event_type, is_stream_name,
};
pub use upcast::{UpcastFn, Upcasters};

/// The largest stored record, in bytes (envelope, sealing and payload). It keeps
/// sled from ever writing a record as a blob, which sled does not fsync.
pub const RECORD_LEN_MAX: usize = 64 * 1024;
