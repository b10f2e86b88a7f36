//! The repository commands over MQTT: `perch/{device}/repository/req` →
//! `perch/{device}/repository/res`, the same load, unload and index as the repository
//! extension over HTTP.
//!
//! Load and unload change what the device serves, so they must be signed by a trusted
//! key, name this device, and carry a revision above every one accepted before
//! ([`perch_runtime::repository_command`]). The highest accepted revision is kept in
//! [`REVISION_FILE`] in the spool folder (written atomically before the command is
//! carried out), so a command replayed after a restart is refused too. Every request
//! gets a reply with its id (when one can be read), a status as HTTP would give it,
//! the error if any, and the repository index after the command.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use perch_runtime::bundle::VerifyingKey;
use perch_runtime::error::Chain;
use perch_runtime::fsio;
use perch_runtime::repository_command::{Action, CommandError, RepositoryCommand, Request};
use serde_json::{json, Value};

use crate::repository::Repository;

/// The file in the spool folder holding the highest command revision accepted.
pub(super) const REVISION_FILE: &str = "repository-revision";

/// Checks and carries out repository commands for one device.
#[derive(Debug)]
pub(super) struct Commands {
    device: String,
    trusted: Vec<VerifyingKey>,
    revision_file: PathBuf,
    /// The highest revision accepted, or why it cannot be known (a damaged file:
    /// signed commands are refused until it is repaired or removed).
    highest: Mutex<Result<u64, String>>,
}

/// A reply: its HTTP-like status and JSON payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CommandReply {
    /// 200, or the status of the error.
    pub(super) status: u16,
    /// The JSON payload.
    pub(super) payload: Vec<u8>,
}

impl Commands {
    /// Commands for `device`, signed by one of `trusted`, their revision kept in `dir`.
    pub(super) fn open(device: &str, trusted: Vec<VerifyingKey>, dir: &Path) -> Commands {
        let revision_file = dir.join(REVISION_FILE);
        let highest = match std::fs::read_to_string(&revision_file) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| {
                format!(
                    "{} does not hold a revision: repair or remove it",
                    revision_file.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(format!("cannot read {}: {e}", revision_file.display())),
        };
        if let Err(reason) = &highest {
            log::error!("repository commands over MQTT are refused: {reason}");
        }
        Commands {
            device: device.to_string(),
            trusted,
            revision_file,
            highest: Mutex::new(highest),
        }
    }

    /// Answers one request. Blocks while a model loads, or while an unloaded model's
    /// requests in flight finish (at most their deadline): call it off the async
    /// workers.
    pub(super) fn answer(&self, repository: &Repository, payload: &[u8]) -> CommandReply {
        let request = match Request::read(payload, &self.trusted) {
            Ok(request) => request,
            Err(e) => {
                let status = match e {
                    CommandError::TooLarge(_) => 413,
                    CommandError::Malformed(_) | CommandError::Invalid(_) => 400,
                    _ => 403,
                };
                return reply(
                    repository,
                    Request::id_of(payload),
                    None,
                    status,
                    Some(&e.to_string()),
                );
            }
        };
        let command = match request {
            Request::Index { id } => return reply(repository, id, None, 200, None),
            Request::Signed(command) => command,
        };
        let id = command.id.clone();
        if let Err((status, reason)) = self.accept(&command) {
            return reply(repository, id, Some(&command), status, Some(&reason));
        }
        let model = command.model.as_deref().unwrap_or_default();
        let outcome = match command.action {
            Action::Load => repository
                .load(model, command.path.as_ref().map(PathBuf::from))
                .map(drop),
            Action::Unload => repository.unload(model).map(|unloaded| {
                if let Some(service) = unloaded {
                    // As over HTTP: answer once the requests on the model are done.
                    let until = Instant::now() + service.limits().deadline;
                    while service.handles() > 1 && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            }),
            Action::Index => Ok(()),
        };
        match outcome {
            Ok(()) => {
                log::info!("repository command over MQTT: {} {model}", command.action);
                reply(repository, id, Some(&command), 200, None)
            }
            Err(e) => {
                let reason = Chain(&e).to_string();
                log::warn!(
                    "repository command over MQTT: {} {model} failed: {reason}",
                    command.action
                );
                reply(
                    repository,
                    id,
                    Some(&command),
                    e.http_status(),
                    Some(&reason),
                )
            }
        }
    }

    /// Checks a verified command's device and revision, and records the revision
    /// before the command is carried out. `Err` with the status and the reason.
    fn accept(&self, command: &RepositoryCommand) -> Result<(), (u16, String)> {
        if command.device != self.device {
            return Err((
                403,
                format!(
                    "the command is for device {:?}, this is {:?}",
                    command.device, self.device
                ),
            ));
        }
        let mut highest = self.highest.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = match &*highest {
            Ok(seen) => *seen,
            Err(reason) => return Err((503, reason.clone())),
        };
        if command.revision <= seen {
            return Err((
                403,
                format!(
                    "replayed command: revision {} is not above {seen}, the highest accepted",
                    command.revision
                ),
            ));
        }
        let text = format!("{}\n", command.revision);
        fsio::write_atomic(&self.revision_file, text.as_bytes()).map_err(|e| {
            (
                500,
                format!(
                    "cannot record the revision in {}: {e}",
                    self.revision_file.display()
                ),
            )
        })?;
        *highest = Ok(command.revision);
        Ok(())
    }
}

/// The reply: `{"id", "status", "action", "model", "error", "models"}`, with the
/// repository index after the command.
fn reply(
    repository: &Repository,
    id: Option<String>,
    command: Option<&RepositoryCommand>,
    status: u16,
    error: Option<&str>,
) -> CommandReply {
    let index = crate::service::describe::repository_index(&repository.index()).body;
    let models: Value = serde_json::from_slice(&index).unwrap_or(Value::Null);
    let mut body = json!({ "status": status, "models": models });
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    if let Some(command) = command {
        body["action"] = json!(command.action.as_str());
        body["model"] = json!(command.model);
    }
    if let Some(error) = error {
        body["error"] = json!(error);
    }
    CommandReply {
        status,
        payload: body.to_string().into_bytes(),
    }
}
