//! Importing a log event by event (from `shoplog export --with-secrets`): each event
//! is written again at its position, stream and version, with its id, type, schema
//! version, time, actor, correlation and causation ids, sealed under a fresh key of
//! its subject, in a fresh hash chain (the hashes of the source are not kept: the
//! sealed bytes differ). Every event is checked as it comes: positions from 1
//! without a gap, versions per stream without a gap, time never going back, the
//! record cap, and a forgotten subject's events all forgotten.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::RECORD_LEN_MAX;
use crate::error::StoreError;
use crate::fill::Filler;
use crate::record::{self, Header};
use crate::seal::{self, SubjectKey};
use crate::types::{Payload, is_event_type, is_stream_name};

/// One event to import, with its whole envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportEvent {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u16,
    pub recorded_at: DateTime<Utc>,
    pub actor: String,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    pub subject: Option<Uuid>,
    /// The plain payload (sealed here when `subject` is set), or `Forgotten`
    /// (stored as an empty sealed payload under a forgotten subject).
    pub payload: Payload,
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub events: u64,
    pub streams: u64,
    pub subjects: u64,
    pub forgotten: u64,
    pub secrets: u64,
    pub last_hash: [u8; 32],
}

/// A new log being filled from imported events, in position order.
pub struct Importer {
    filler: Filler,
    /// Streams begun (a version 1 imported).
    streams: u64,
    /// `None` once forgotten.
    keys: HashMap<Uuid, Option<SubjectKey>>,
    secrets: u64,
}

impl std::fmt::Debug for Importer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Importer").field("head", &self.filler.head).finish_non_exhaustive()
    }
}

impl Importer {
    /// Start a log in `dir`, which must not exist or be empty. A failed import leaves
    /// `dir` half-filled: import into a staging directory and rename it into place.
    pub fn create(dir: &Path) -> Result<Self, StoreError> {
        Ok(Importer { filler: Filler::create(dir)?, streams: 0, keys: HashMap::new(), secrets: 0 })
    }

    /// The last position imported (0 before the first).
    pub fn head(&self) -> u64 {
        self.filler.head
    }

    /// Check and write the next event.
    pub fn push(&mut self, event: ImportEvent) -> Result<(), StoreError> {
        let position = event.position;
        let bad = |reason: String| StoreError::bad_input(format!("event at position {position}: {reason}"));
        if position != self.filler.head + 1 {
            return Err(StoreError::bad_input(format!(
                "expected position {} next, found {position}: the import must hold the whole log from position 1",
                self.filler.head + 1
            )));
        }
        if !is_stream_name(&event.stream) {
            return Err(bad(format!("{:?} is not a stream name", event.stream)));
        }
        if !is_event_type(&event.event_type) {
            return Err(bad(format!("{:?} is not an event type", event.event_type)));
        }
        // From the index being written, not a map of every stream.
        let current = self.filler.stream_version(&event.stream)?;
        if event.version != current + 1 {
            return Err(bad(format!(
                "stream {} is at version {current}, the event says {}",
                event.stream, event.version
            )));
        }
        let micros = event.recorded_at.timestamp_micros();
        if micros < self.filler.last_recorded_micros {
            return Err(bad("recorded before the event ahead of it".to_owned()));
        }
        let payload = match (&event.payload, event.subject) {
            (Payload::Plain(plain), None) => plain.clone(),
            (Payload::Plain(plain), Some(subject)) => {
                let key = match self.keys.entry(subject).or_insert_with(|| Some(seal::new_key())) {
                    Some(key) => *key,
                    None => return Err(bad(format!("it has data of subject {subject}, forgotten before"))),
                };
                seal::seal(&key, event.event_id, plain).map_err(StoreError::Storage)?
            }
            (Payload::Forgotten, None) => return Err(bad("its data is forgotten but it names no subject".to_owned())),
            (Payload::Forgotten, Some(subject)) => {
                if let Some(Some(_)) = self.keys.insert(subject, None) {
                    return Err(bad(format!("subject {subject} is forgotten here but not at an earlier position")));
                }
                Vec::new()
            }
        };
        let header = Header {
            position,
            stream: event.stream.into(),
            version: event.version,
            event_id: event.event_id,
            event_type: event.event_type.into(),
            schema_version: event.schema_version,
            recorded_at_micros: micros,
            actor: event.actor.into(),
            correlation_id: event.correlation_id,
            causation_id: event.causation_id,
            subject: event.subject,
        };
        let (bytes, hash) = record::encode(&header, &payload, &self.filler.last_hash)
            .map_err(|error| bad(format!("cannot encode it: {error}")))?;
        if bytes.len() > RECORD_LEN_MAX {
            return Err(bad(format!("{} bytes stored, over the cap of {RECORD_LEN_MAX}", bytes.len())));
        }
        self.filler.put(position, &header.stream, header.version, &bytes, hash, micros)?;
        self.streams += u64::from(header.version == 1);
        Ok(())
    }

    /// Keep a named secret of the source log (see [`crate::EventLog::secret`]).
    pub fn put_secret(&mut self, name: &str, value: &[u8; 32]) -> Result<(), StoreError> {
        self.filler.put_secret(name, value)?;
        self.secrets += 1;
        Ok(())
    }

    /// Write the subjects' keys and the tail, and make it all durable.
    pub fn finish(self) -> Result<(PathBuf, ImportSummary), StoreError> {
        let mut forgotten = 0;
        for (subject, key) in &self.keys {
            self.filler.put_key(*subject, key.as_ref())?;
            forgotten += u64::from(key.is_none());
        }
        let summary = ImportSummary {
            events: self.filler.head,
            streams: self.streams,
            subjects: self.keys.len() as u64,
            forgotten,
            secrets: self.secrets,
            last_hash: self.filler.last_hash,
        };
        Ok((self.filler.finish()?, summary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: u64, stream: &str, version: u64) -> ImportEvent {
        ImportEvent {
            position,
            stream: stream.to_owned(),
            version,
            event_id: Uuid::now_v7(),
            event_type: "E".to_owned(),
            schema_version: 1,
            recorded_at: DateTime::from_timestamp_micros(1_700_000_000_000_000 + position as i64).expect("a time"),
            actor: "import".to_owned(),
            correlation_id: Uuid::from_u128(1),
            causation_id: Uuid::from_u128(1),
            subject: None,
            payload: Payload::Plain(position.to_be_bytes().to_vec()),
        }
    }

    /// The version check reads each stream's last version from the index being
    /// written (no map of every stream): with partial groups written out all the
    /// time (room for two streams), versions across whole and written-out groups
    /// still follow, and a gap is still refused.
    #[test]
    fn versions_are_checked_against_the_index_being_written() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut importer = Importer::create(&dir.path().join("log")).expect("creates");
        importer.filler.buffer_streams_max(2);
        let mut position = 0;
        for version in 1..=20 {
            for stream in ["s0", "s1", "s2", "s3", "s4"] {
                position += 1;
                importer.push(event(position, stream, version)).expect("the next version");
            }
        }
        let gap = importer.push(event(position + 1, "s3", 22)).expect_err("a gap");
        assert!(gap.to_string().contains("stream s3 is at version 20, the event says 22"), "{gap}");
        let repeat = importer.push(event(position + 1, "s1", 20)).expect_err("a version again");
        assert!(repeat.to_string().contains("stream s1 is at version 20"), "{repeat}");
        importer.push(event(position + 1, "s5", 1)).expect("a new stream");
        let (path, summary) = importer.finish().expect("finishes");
        assert_eq!((summary.events, summary.streams), (101, 6));
        let log = crate::EventLog::open(&path).expect("opens");
        assert_eq!(log.verify().expect("verifies").events, 101);
        assert_eq!(log.read_stream("s3", 1, 100).expect("reads").len(), 20);
    }
}
