//! [`CommandError`]: why a command did not happen, with what the caller needs.

use domain::{DomainError, OrderId};
use store::StoreError;

use crate::codec::{DecodeError, EncodeError};

/// Why a command was not carried out. The HTTP status each should map to is in
/// its doc; [`CommandError::Domain`] defers to [`DomainError::kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The shop's rules refused the command (validation 422, conflict 409, not
    /// found 404: see [`domain::ErrorKind`]).
    #[error(transparent)]
    Domain(#[from] DomainError),

    /// The caller's expected version (HTTP `If-Match`) of the command's main
    /// stream is not the stream's version; nothing was written (412).
    #[error("stream {stream} is at version {actual}, not the expected {expected}")]
    PreconditionFailed { stream: String, expected: u64, actual: u64 },

    /// The order belongs to another customer (403).
    #[error("order {order_id} belongs to another customer")]
    NotYours { order_id: OrderId },

    /// Unknown email or wrong password; which of the two is never told (401).
    #[error("invalid email or password")]
    InvalidCredentials,

    /// The idempotency key was used before with a different request (409).
    #[error("idempotency key was already used for a different request")]
    IdempotencyKeyReused,

    /// Other writers kept changing the streams this command reads until its
    /// retries ran out; nothing was written and the client may try again (409, a
    /// concurrency conflict in DESIGN §6's terms).
    #[error("stream {stream} changed under the command {attempts} times; gave up")]
    Contention { stream: String, attempts: u32 },

    /// The log refuses appends (after a failed fsync, or shut down) (503).
    #[error("the event log is not accepting appends")]
    Unavailable(#[source] StoreError),

    /// Hashing or verifying a password failed (500).
    #[error("password hashing failed: {reason}")]
    Hasher { reason: String },

    /// An event could not be encoded (500).
    #[error(transparent)]
    Encode(#[from] EncodeError),

    /// A stored event could not be read back (500).
    #[error(transparent)]
    Decode(#[from] DecodeError),

    /// Any other error of the log (500).
    #[error("event log error")]
    Store(#[source] StoreError),
}

impl From<StoreError> for CommandError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::IdempotencyKeyReused => CommandError::IdempotencyKeyReused,
            StoreError::Unavailable { .. } | StoreError::Durability { .. } => CommandError::Unavailable(error),
            other => CommandError::Store(other),
        }
    }
}
