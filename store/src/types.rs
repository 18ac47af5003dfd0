//! What goes into the log and what comes out of it.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The largest stream name the log takes, in bytes.
pub const STREAM_NAME_LEN_MAX: usize = 256;

/// Whether `name` can name a stream: 1 to [`STREAM_NAME_LEN_MAX`] bytes and no
/// NUL (the stream index separates a name from its versions with a NUL, so a
/// name holding one would read another stream's entries).
pub fn is_stream_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= STREAM_NAME_LEN_MAX && !name.contains('\0')
}

/// Whether `name` can be an event's type: not empty and no control characters
/// (it becomes, among others, the `event:` line of the live feed, where a line
/// break would end the field).
pub fn is_event_type(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(char::is_control)
}

/// What the appender expects a stream's current version to be. A mismatch fails
/// the whole append (every stream in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream has no events yet.
    NoStream,
    /// The stream has at least one event.
    StreamExists,
    /// The stream's last event has exactly this version (versions start at 1).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose current version is `actual` (0 = no stream) matches.
    pub fn matches(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::StreamExists => actual > 0,
            ExpectedVersion::Exact(version) => actual == version,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("stream exists"),
            ExpectedVersion::Exact(version) => write!(f, "{version}"),
        }
    }
}

/// One event to append. The payload is already encoded (see [`crate::codec`]); when
/// `subject` is set the store seals it with that subject's key before hashing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u16,
    /// The data subject whose personal data the payload holds (DESIGN §3.9).
    pub subject: Option<Uuid>,
    pub payload: Vec<u8>,
}

/// Events for one stream within an append. A stream with no events is only a
/// condition: its `expected` version must hold, like that of every stream the
/// append writes, or the whole append fails; nothing is written to it, and the
/// result does not list it. A decision that rests on a stream it does not write
/// uses one, so that a write to that stream racing it makes it decide again.
/// A condition must check something: `Any` with no events is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppend {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// Who and why: the same for every event of one append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub actor: String,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
}

/// A repeatable append: the same key with the same `request_hash` returns the first
/// result and writes nothing; the same key with another hash is refused. The store
/// keeps only a blake3 hash of the key, so a key may carry anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: [u8; 32],
}

/// One atomic append: all its streams and events are written, or none.
/// Positions are given in order: the first stream's events, then the next stream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendRequest {
    pub streams: Vec<StreamAppend>,
    pub metadata: Metadata,
    pub idempotency: Option<Idempotency>,
    /// When the events happened, for imports that keep their original times. `None`
    /// (the usual case) stamps the commit time. Either way `recorded_at` never goes
    /// back along the log: the writer takes the later of this and the previous event's.
    pub recorded_at: Option<DateTime<Utc>>,
}

impl AppendRequest {
    /// An append to one stream.
    pub fn single(
        stream: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        metadata: Metadata,
    ) -> Self {
        AppendRequest {
            streams: vec![StreamAppend { stream: stream.into(), expected, events }],
            metadata,
            idempotency: None,
            recorded_at: None,
        }
    }

    /// The same append, made repeatable under `key`.
    pub fn with_idempotency(mut self, key: impl Into<String>, request_hash: [u8; 32]) -> Self {
        self.idempotency = Some(Idempotency { key: key.into(), request_hash });
        self
    }

    pub(crate) fn event_count(&self) -> usize {
        self.streams.iter().map(|stream| stream.events.len()).sum()
    }
}

/// The version a stream reached in an append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamVersion {
    pub stream: String,
    pub version: u64,
}

/// What an acknowledged append wrote. Everything in it is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    pub first_position: u64,
    pub last_position: u64,
    /// Each stream the request wrote with its version after the append, in
    /// request order (a stream that was only a condition is not listed).
    pub streams: Vec<StreamVersion>,
    /// True when this is the stored result of an earlier append with the same
    /// idempotency key: nothing was written this time.
    pub duplicate: bool,
}

/// A payload as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// The encoded payload, unsealed and upcast to the newest schema version.
    Plain(Vec<u8>),
    /// The subject was forgotten: its key is gone, and so is the payload.
    Forgotten,
}

impl Payload {
    /// The bytes, unless forgotten.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Payload::Plain(bytes) => Some(bytes),
            Payload::Forgotten => None,
        }
    }
}

/// An event as stored in the log, with its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    pub event_id: Uuid,
    pub event_type: String,
    /// The schema version of `payload` as returned (after upcasting).
    pub schema_version: u16,
    pub recorded_at: DateTime<Utc>,
    pub actor: String,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    pub subject: Option<Uuid>,
    pub payload: Payload,
    /// blake3(previous hash ‖ this record's canonical bytes).
    pub hash: [u8; 32],
}

impl RecordedEvent {
    /// The event as [`crate::EventLog::scan`] would lend it, borrowed from this one.
    pub fn lend(&self) -> EventRef<'_> {
        EventRef {
            position: self.position,
            stream: Cow::Borrowed(&self.stream),
            version: self.version,
            event_id: self.event_id,
            event_type: Cow::Borrowed(&self.event_type),
            schema_version: self.schema_version,
            recorded_at: self.recorded_at,
            actor: Cow::Borrowed(&self.actor),
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            subject: self.subject,
            payload: self.payload.bytes().map(Cow::Borrowed),
            hash: self.hash,
        }
    }
}

/// An event of the log as [`crate::EventLog::scan`] lends it: its strings and its
/// payload borrow the stored record (a sealed or upcast payload is a buffer of its
/// own), so a reader that keeps nothing copies nothing. The fields are those of
/// [`RecordedEvent`], which [`EventRef::into_owned`] makes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub position: u64,
    pub stream: Cow<'a, str>,
    pub version: u64,
    pub event_id: Uuid,
    pub event_type: Cow<'a, str>,
    /// The schema version of `payload` as returned (after upcasting).
    pub schema_version: u16,
    pub recorded_at: DateTime<Utc>,
    pub actor: Cow<'a, str>,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    pub subject: Option<Uuid>,
    /// The payload, unsealed and upcast; `None` when its subject was forgotten.
    pub payload: Option<Cow<'a, [u8]>>,
    /// blake3(previous hash ‖ this record's canonical bytes).
    pub hash: [u8; 32],
}

impl EventRef<'_> {
    /// The owned event, copying what was borrowed.
    pub fn into_owned(self) -> RecordedEvent {
        RecordedEvent {
            position: self.position,
            stream: self.stream.into_owned(),
            version: self.version,
            event_id: self.event_id,
            event_type: self.event_type.into_owned(),
            schema_version: self.schema_version,
            recorded_at: self.recorded_at,
            actor: self.actor.into_owned(),
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            subject: self.subject,
            payload: self.payload.map_or(Payload::Forgotten, |bytes| Payload::Plain(bytes.into_owned())),
            hash: self.hash,
        }
    }
}

/// A record as the log stores it, lent by [`crate::Subscription::next_stored`]:
/// its bytes whole (the format byte, its hash in the chain, the envelope and the
/// payload, sealed if it was), and the envelope fields that route it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredEvent<'a> {
    pub position: u64,
    pub stream: &'a str,
    pub version: u64,
    pub event_id: Uuid,
    pub event_type: &'a str,
    /// The payload's schema version (see `upcast`).
    pub schema_version: u16,
    pub bytes: &'a [u8],
}

/// What a sound log holds, as found by [`crate::EventLog::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub head: u64,
    pub streams: u64,
    pub last_hash: [u8; 32],
}

/// What opening the log repaired after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Recovery {
    /// Records of a batch sled held only in part, dropped (the write-ahead log
    /// writes the batch back whole if it was acknowledged);
    /// `None` when no batch was torn.
    pub torn_records_dropped: Option<u64>,
    /// Batches sled lost and the write-ahead log held, written to sled again.
    pub batches_replayed: u64,
    /// Records sled held whose stream index entries were only in memory (written
    /// after the last checkpoint), indexed again.
    pub records_indexed: u64,
}

/// Counts of what the writer committed since the log was opened. `batches` counts
/// fsyncs, so `appends / batches` is how many appends one fsync covered, on average.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitStats {
    pub batches: u64,
    pub appends: u64,
    pub events: u64,
    /// Checkpoints begun (sled made durable with every batch before; most run
    /// beside the appends, see `wal`).
    pub checkpoints: u64,
}
