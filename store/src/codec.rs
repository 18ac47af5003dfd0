//! Payload codec: bincode 2 (serde mode, standard config) for event payloads and
//! for the record header. One place decides the format, so the record's format byte
//! can move it later.

use serde::{Serialize, de::DeserializeOwned};

/// Encoding or decoding a payload failed; the message says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encode a value as a stored payload.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|error| CodecError(error.to_string()))
}

/// Encode a value at the end of `out`, in the same format as [`encode`].
pub(crate) fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(|_| ())
        .map_err(|error| CodecError(error.to_string()))
}

/// Decode a whole payload; trailing bytes are an error, so a payload is never read
/// as a different, shorter type by accident.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|error| CodecError(error.to_string()))?;
    check_consumed(used, bytes.len())?;
    Ok(value)
}

/// Decode a whole payload with a seed (for a type chosen at run time, such as an
/// event whose type name sits in the envelope).
pub fn decode_seed<'de, S: serde::de::DeserializeSeed<'de>>(seed: S, bytes: &'de [u8]) -> Result<S::Value, CodecError> {
    let (value, used) =
        bincode::serde::seed_decode_from_slice(seed, bytes, config()).map_err(|error| CodecError(error.to_string()))?;
    check_consumed(used, bytes.len())?;
    Ok(value)
}

/// Decode a prefix of `bytes`, returning the value and how many bytes it took.
/// Decoding borrows from `bytes` where the type lets it (a uuid reads its 16 bytes
/// in place instead of through a fresh buffer); the format is the same.
pub(crate) fn decode_prefix<'de, T: serde::Deserialize<'de>>(bytes: &'de [u8]) -> Result<(T, usize), CodecError> {
    bincode::serde::borrow_decode_from_slice(bytes, config()).map_err(|error| CodecError(error.to_string()))
}

fn check_consumed(used: usize, len: usize) -> Result<(), CodecError> {
    if used == len { Ok(()) } else { Err(CodecError(format!("{} trailing bytes after the value", len - used))) }
}
