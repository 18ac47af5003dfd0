//! The projections' errors.

use commands::codec::DecodeError;
use store::StoreError;

/// Everything that can go wrong while projecting or querying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    /// Reading the log failed.
    #[error("reading the log: {0}")]
    Log(#[from] StoreError),

    /// An event in the log is not a shop event this build can read; the
    /// projection stops there rather than skip it.
    #[error(transparent)]
    Decode(#[from] DecodeError),

    /// sled failed reading or writing a read model.
    #[error("read-model storage: {0}")]
    Storage(String),

    /// A stored read-model record does not decode.
    #[error("read model {model} holds a damaged record: {reason}")]
    Corrupt { model: &'static str, reason: String },

    /// The model did not reach `position` within the timeout.
    #[error("read model {model} reached position {reached}, not {position}, in time")]
    Timeout { model: &'static str, position: u64, reached: u64 },

    /// No read model has this name.
    #[error("no read model named {name}")]
    UnknownModel { name: String },

    /// A rebuild of this model is already under way.
    #[error("read model {model} is already being rebuilt")]
    RebuildRunning { model: &'static str },

    /// The runtime is shut down, or its worker stopped on an error.
    #[error("read model {model} is not running: {reason}")]
    Stopped { model: &'static str, reason: String },
}

impl From<sled::Error> for ProjectionError {
    fn from(error: sled::Error) -> Self {
        ProjectionError::Storage(error.to_string())
    }
}
