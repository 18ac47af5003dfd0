//! The stored record: `[format byte][hash: 32 bytes][header (bincode)][payload]`.
//!
//! The hash is `blake3(previous record's hash ‖ everything after the hash)`, so it
//! covers the position, the envelope and the (sealed) payload, and chains every
//! record to the one before it. The first record's previous hash is all zeros.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::{self, CodecError};
use crate::types::{is_event_type, is_stream_name};

/// The only record format so far. A reader refuses any other.
pub const FORMAT_V1: u8 = 1;

/// The previous hash of the first record.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

const HASH_START: usize = 1;
const BODY_START: usize = HASH_START + 32;

/// The envelope of one stored event, without the payload. Its strings borrow
/// from the record's bytes when it is read (`parse`) and from the append when it
/// is written, so neither copies them; the bytes are those of `String`s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Header<'a> {
    pub position: u64,
    #[serde(borrow)]
    pub stream: Cow<'a, str>,
    pub version: u64,
    pub event_id: Uuid,
    #[serde(borrow)]
    pub event_type: Cow<'a, str>,
    pub schema_version: u16,
    /// Microseconds since the Unix epoch, UTC.
    pub recorded_at_micros: i64,
    #[serde(borrow)]
    pub actor: Cow<'a, str>,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
    /// Set when the payload is sealed under this subject's key.
    pub subject: Option<Uuid>,
}

/// A record read from disk, borrowed from its bytes.
#[derive(Debug)]
pub(crate) struct StoredRecord<'a> {
    pub header: Header<'a>,
    pub hash: [u8; 32],
    /// The hashed bytes: header and payload.
    pub body: &'a [u8],
    pub payload: &'a [u8],
}

/// Encode a record chained to `previous_hash`; returns its bytes and its hash.
pub(crate) fn encode(
    header: &Header<'_>,
    payload: &[u8],
    previous_hash: &[u8; 32],
) -> Result<(Vec<u8>, [u8; 32]), CodecError> {
    // Besides its strings, the header takes at most 126 bytes (six varints of
    // up to 9, a u16's up to 3, three uuids of 17 and an optional fourth of 18);
    // it is encoded in place, with no buffer of its own to grow.
    let header_len_max = 126 + header.stream.len() + header.event_type.len() + header.actor.len();
    let mut bytes = Vec::with_capacity(BODY_START + header_len_max + payload.len());
    bytes.push(FORMAT_V1);
    bytes.extend_from_slice(&[0; 32]);
    codec::encode_into(header, &mut bytes)?;
    bytes.extend_from_slice(payload);
    let hash = chain_hash(previous_hash, &bytes[BODY_START..]);
    bytes[HASH_START..BODY_START].copy_from_slice(&hash);
    Ok((bytes, hash))
}

/// Parse a stored record. Never panics on bad bytes: it says what is wrong.
pub(crate) fn parse(bytes: &[u8]) -> Result<StoredRecord<'_>, String> {
    let Some(&format) = bytes.first() else {
        return Err("empty record".to_owned());
    };
    if format != FORMAT_V1 {
        return Err(format!("unknown record format {format}"));
    }
    if bytes.len() < BODY_START {
        return Err(format!("record of {} bytes is too short", bytes.len()));
    }
    let mut hash = [0; 32];
    hash.copy_from_slice(&bytes[HASH_START..BODY_START]);
    let body = &bytes[BODY_START..];
    let (header, header_len) = codec::decode_prefix::<Header>(body).map_err(|error| format!("bad header: {error}"))?;
    // What an append could never have written (`writer::validate`).
    if header.position == 0 || header.version == 0 {
        return Err(format!("position {} and version {}: both start at 1", header.position, header.version));
    }
    if !is_stream_name(&header.stream) {
        return Err(format!("{:?} is not a stream name", header.stream));
    }
    if !is_event_type(&header.event_type) {
        return Err(format!("{:?} is not an event type", header.event_type));
    }
    Ok(StoredRecord { header, hash, body, payload: &body[header_len..] })
}

/// The hash of a record whose body is `body`, following `previous_hash`.
pub(crate) fn chain_hash(previous_hash: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(previous_hash);
    hasher.update(body);
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header<'static> {
        Header {
            position: 7,
            stream: "order-1".into(),
            version: 2,
            event_id: Uuid::from_u128(1),
            event_type: "OrderPaid".into(),
            schema_version: 1,
            recorded_at_micros: 1_700_000_000_000_000,
            actor: "admin".into(),
            correlation_id: Uuid::from_u128(2),
            causation_id: Uuid::from_u128(3),
            subject: None,
        }
    }

    #[test]
    fn an_encoded_record_parses_back_with_its_hash() {
        let (bytes, hash) = encode(&header(), b"payload", &GENESIS_HASH).expect("encodes");
        let record = parse(&bytes).expect("parses");
        assert_eq!(record.header, header());
        assert_eq!(record.payload, b"payload");
        assert_eq!(record.hash, hash);
        assert_eq!(chain_hash(&GENESIS_HASH, record.body), hash);
        // Reading copies no string: each borrows the record's bytes.
        for text in [&record.header.stream, &record.header.event_type, &record.header.actor] {
            assert!(matches!(text, Cow::Borrowed(_)), "{text} was copied");
        }
    }

    #[test]
    fn a_header_is_encoded_in_place_as_on_its_own_within_the_room_it_is_given() {
        let widest = Header {
            position: u64::MAX,
            version: u64::MAX,
            schema_version: u16::MAX,
            recorded_at_micros: i64::MIN,
            subject: Some(Uuid::from_u128(4)),
            ..header()
        };
        for header in [header(), widest] {
            let (bytes, _) = encode(&header, b"payload", &GENESIS_HASH).expect("encodes");
            let alone = codec::encode(&header).expect("encodes");
            assert_eq!(&bytes[BODY_START..BODY_START + alone.len()], alone.as_slice());
            let strings = header.stream.len() + header.event_type.len() + header.actor.len();
            assert!(alone.len() - strings <= 126, "the header's fixed fields took {}", alone.len() - strings);
        }
    }

    #[test]
    fn the_hash_depends_on_the_previous_hash() {
        let (_, first) = encode(&header(), b"payload", &GENESIS_HASH).expect("encodes");
        let (_, second) = encode(&header(), b"payload", &[1; 32]).expect("encodes");
        assert_ne!(first, second);
    }

    /// The envelope is a contract with every stored log and backup, like the
    /// payloads: its frozen bytes must keep parsing to the same record.
    #[test]
    fn the_frozen_v1_record_still_parses_with_its_hash() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/records/v1.bin");
        let (encoded, hash) = encode(&header(), b"payload", &GENESIS_HASH).expect("encodes");
        if !path.exists() {
            assert!(
                std::env::var("SHOPLOG_WRITE_FIXTURES").is_ok_and(|value| value == "1"),
                "no frozen record at {}: run with SHOPLOG_WRITE_FIXTURES=1 once",
                path.display()
            );
            std::fs::write(&path, &encoded).expect("writes the fixture");
        }
        let frozen = std::fs::read(&path).expect("reads the fixture");
        let record = parse(&frozen).expect("the frozen record parses");
        assert_eq!(record.header, header());
        assert_eq!(record.payload, b"payload");
        assert_eq!(record.hash, hash);
        assert_eq!(chain_hash(&GENESIS_HASH, record.body), record.hash);
        assert_eq!(encoded, frozen, "records are now encoded differently from the frozen v1 bytes");
    }

    /// A header an append could never have written is damage: positions and
    /// versions start at 1, a stream name has no NUL, and an event type has no
    /// control character (it becomes the live feed's `event:` line).
    #[test]
    fn a_header_no_append_could_write_is_refused() {
        type Change = fn(&mut Header<'static>);
        let cases: [(&str, Change); 6] = [
            ("position 0", |header| header.position = 0),
            ("version 0", |header| header.version = 0),
            ("a NUL in the stream name", |header| header.stream = "order-1\0\0".into()),
            ("an empty stream name", |header| header.stream = "".into()),
            ("a line break in the type", |header| header.event_type = "Order\nPaid".into()),
            ("an empty type", |header| header.event_type = "".into()),
        ];
        for (what, change) in cases {
            let mut bad = header();
            change(&mut bad);
            let (bytes, _) = encode(&bad, b"payload", &GENESIS_HASH).expect("encodes");
            assert!(parse(&bytes).is_err(), "{what} parsed");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[9, 1, 2]).is_err());
        assert!(parse(&[FORMAT_V1; 10]).is_err());
        let mut bytes = vec![FORMAT_V1];
        bytes.extend_from_slice(&[0xff; 64]);
        assert!(parse(&bytes).is_err());
    }
}
