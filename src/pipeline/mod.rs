//! The pipeline core: bronze, silver, gold. Knows nothing of HTTP or of the Functions host; the same
//! code runs under the host, under `patientflow run`, and in tests. Each stage returns a metrics struct.

pub mod bronze;
pub mod gold;
pub mod job;
pub mod quarantine;
pub mod reconcile;
pub mod silver;

use crate::storage;

/// Pipeline errors, named by cause so the edge can choose the status and whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is not what the stage accepts (do not retry; fix the caller).
    #[error("{0}")]
    InvalidInput(String),
    /// A lake file exists but cannot be read (corrupt or not ours). Retrying will not help.
    #[error("{key} cannot be read: {detail}")]
    Corrupt {
        /// The file.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// Storage failed or is unreachable (retry).
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// Another writer committed first (retry or stop).
    #[error("{0}")]
    Conflict(String),
    /// A bug: an invariant did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias for pipeline stages.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<storage::parquet::ParquetError> for Error {
    fn from(e: storage::parquet::ParquetError) -> Self {
        Error::Internal(e.to_string())
    }
}

impl From<arrow_schema::ArrowError> for Error {
    fn from(e: arrow_schema::ArrowError) -> Self {
        Error::Internal(e.to_string())
    }
}
