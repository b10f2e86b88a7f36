//! The rollout operator's error.

use std::path::PathBuf;

use perch_mqtt::{BrokerUrl, SetupError};

use super::plan::PlanError;

/// Why the operator loop or a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// The plan, the state or a flag is not usable.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A state or bundle file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A line of a journal is not a journal point.
    #[error("{} line {line} is not a journal point: {source}", path.display())]
    Journal {
        /// The journal.
        path: PathBuf,
        /// The line, 1-based.
        line: usize,
        /// Why it does not decode.
        #[source]
        source: serde_json::Error,
    },
    /// A state file is not a rollout state.
    #[error("{} is not a rollout state: {source}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// Why it does not decode.
        #[source]
        source: serde_json::Error,
    },
    /// The MQTT client could not be set up (its TLS files).
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The client refused a request (its connection task stopped).
    #[error("MQTT: {0}")]
    Client(#[from] rumqttc::ClientError),
    /// The broker could not be reached before the command's time-out.
    #[error("cannot reach {broker}: {reason}")]
    Unreachable {
        /// The broker's URL.
        broker: BrokerUrl,
        /// The last connection error.
        reason: String,
    },
    /// Nothing answered a command.
    #[error("no controller is running for group {group}: start it with `perch rollout run --group {group}`")]
    NoController {
        /// The group.
        group: String,
    },
    /// The async runtime or the random source is unavailable.
    #[error("{0}")]
    System(String),
}
