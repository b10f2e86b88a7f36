//! Why the updater could not open or boot.

use std::io;
use std::path::PathBuf;

use crate::slots::SlotError;

/// Why the updater could not open or boot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtaError {
    /// A file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The state file exists but is not a state this agent reads.
    #[error("{} is not a valid OTA state: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The slots could not be opened or changed.
    #[error(transparent)]
    Slots(#[from] SlotError),
    /// A chunk was refused by the download.
    #[error("{0}")]
    Chunk(String),
    /// Returning to the previous model failed.
    #[error("cannot roll back: {0}")]
    RollBack(String),
    /// A setting is invalid.
    #[error("invalid OTA setting: {0}")]
    Config(String),
}
