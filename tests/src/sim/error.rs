//! What went wrong in the simulator.

use std::time::Duration;

/// What went wrong in the simulator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A file or folder could not be read or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A setting is invalid.
    #[error("{0}")]
    Config(String),
    /// A model folder or bundle could not be packed or read.
    #[error("{0}")]
    Bundle(String),
    /// The broker did not start.
    #[error("MQTT broker: {0}")]
    Broker(String),
    /// `perchd` is not there and could not be built.
    #[error("no perchd for process devices: {0}")]
    NoPerchd(String),
    /// A `perchd` process could not be started.
    #[error("{0}")]
    Process(String),
    /// A device's agent stopped on its own.
    #[error("a device failed: {0}")]
    DeviceFailed(String),
    /// A condition did not hold in time.
    #[error("timed out after {}s waiting for {what}; seen: {seen}", timeout.as_secs())]
    Timeout {
        /// The condition.
        what: String,
        /// How long it waited.
        timeout: Duration,
        /// What the observer saw at the end.
        seen: String,
    },
}
