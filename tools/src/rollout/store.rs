//! Where a group's rollout is kept on the operator's machine.

use std::path::{Path, PathBuf};

use super::controller::{Controller, RolloutState};
use super::error::OperatorError;
use super::exposition;
use super::journal::{self, JournalPoint};
use super::plan::PlanError;
use perch_runtime::rollout as wire;

/// Where a group's rollout is kept: `{dir}/{group}.json` (the state),
/// `{dir}/{group}.perch` (the bundle it serves) and `{dir}/{group}.journal` (what the
/// operator saw over time, one [`JournalPoint`] per line, for `perch rollout report`),
/// or `{group}+{model}.*` for the rollouts of one model of the group's devices;
/// and, when asked for, a Prometheus text file of the rollout for node_exporter's
/// textfile collector.
#[derive(Debug, Clone)]
pub struct Store {
    /// The state folder.
    pub dir: PathBuf,
    /// The group.
    pub group: String,
    /// The model whose rollouts it keeps (`None`: the primary model's).
    pub model: Option<String>,
    /// Where [`record`](Store::record) writes the rollout's metrics, if anywhere.
    pub metrics_file: Option<PathBuf>,
}

impl Store {
    /// The store of `group` in `dir`.
    ///
    /// # Errors
    ///
    /// The group is not a valid topic segment (it names files too).
    pub fn new(dir: impl Into<PathBuf>, group: &str) -> Result<Store, PlanError> {
        Store::of_model(dir, group, None)
    }

    /// The store of the rollouts of `model` (`None`: the primary model) in `group`.
    ///
    /// # Errors
    ///
    /// The group or the model is not a valid topic segment (they name files too).
    pub fn of_model(
        dir: impl Into<PathBuf>,
        group: &str,
        model: Option<&str>,
    ) -> Result<Store, PlanError> {
        wire::check_id("group", group).map_err(PlanError)?;
        if let Some(model) = model {
            wire::check_id("--model", model).map_err(PlanError)?;
        }
        Ok(Store {
            dir: dir.into(),
            group: group.to_string(),
            model: model.map(str::to_string),
            metrics_file: None,
        })
    }

    /// What the files are named: the group, or `{group}+{model}` (`+` is in no id).
    fn stem(&self) -> String {
        match &self.model {
            None => self.group.clone(),
            Some(model) => format!("{}+{model}", self.group),
        }
    }

    /// The state file.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.stem()))
    }

    /// The journal.
    pub fn journal_path(&self) -> PathBuf {
        self.dir.join(format!("{}.journal", self.stem()))
    }

    /// The bundle copy.
    pub fn bundle_path(&self) -> PathBuf {
        self.dir.join(format!("{}.perch", self.stem()))
    }

    /// The saved state, `None` when there is no state file.
    ///
    /// # Errors
    ///
    /// The file cannot be read or is not a rollout state.
    pub fn load(&self) -> Result<Option<RolloutState>, OperatorError> {
        let path = self.state_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(OperatorError::Io { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| OperatorError::State { path, source })
    }

    /// The saved state.
    ///
    /// # Errors
    ///
    /// As [`Store::load`], and when there is no state file.
    pub fn load_existing(&self) -> Result<RolloutState, OperatorError> {
        self.load()?.ok_or_else(|| {
            OperatorError::Plan(PlanError(format!(
                "no rollout for group {} in {} (start one with `perch rollout start`)",
                self.group,
                self.dir.display()
            )))
        })
    }

    /// Saves the state atomically.
    ///
    /// # Errors
    ///
    /// The file cannot be written.
    pub fn save(&self, state: &RolloutState) -> Result<(), OperatorError> {
        let path = self.state_path();
        let bytes = serde_json::to_vec(state).map_err(|source| OperatorError::State {
            path: path.clone(),
            source,
        })?;
        self.write(&path, &bytes)
    }

    /// Records what `controller` shows at wall-clock time `unix_ms`: one line appended
    /// to the journal and, with a [`metrics_file`](Store::metrics_file), the file
    /// rewritten atomically. The operator calls it after each save of the state.
    ///
    /// # Errors
    ///
    /// A file cannot be written.
    pub fn record(&self, controller: &Controller, unix_ms: u64) -> Result<(), OperatorError> {
        let status = controller.status();
        let point = JournalPoint::of(&status, controller.state().clock_ms, unix_ms);
        std::fs::create_dir_all(&self.dir).map_err(|source| OperatorError::Io {
            path: self.dir.clone(),
            source,
        })?;
        journal::append(&self.journal_path(), &point)?;
        if let Some(path) = &self.metrics_file {
            let text = exposition::render(&status, unix_ms);
            perch_runtime::fsio::write_atomic(path, text.as_bytes()).map_err(|source| {
                OperatorError::Io {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// The journal's points of the rollout `rollout_id`, oldest first (a group's
    /// journal holds every rollout it had); none when there is no journal.
    ///
    /// # Errors
    ///
    /// The journal cannot be read, or a line is not a point (the error names it).
    pub fn journal(&self, rollout_id: &str) -> Result<Vec<JournalPoint>, OperatorError> {
        journal::read(&self.journal_path(), rollout_id)
    }

    /// Saves the bundle copy atomically.
    ///
    /// # Errors
    ///
    /// The file cannot be written.
    pub fn save_bundle(&self, bytes: &[u8]) -> Result<(), OperatorError> {
        self.write(&self.bundle_path(), bytes)
    }

    /// The bundle copy.
    ///
    /// # Errors
    ///
    /// The file cannot be read.
    pub fn load_bundle(&self) -> Result<Vec<u8>, OperatorError> {
        let path = self.bundle_path();
        std::fs::read(&path).map_err(|source| OperatorError::Io { path, source })
    }

    fn write(&self, path: &Path, bytes: &[u8]) -> Result<(), OperatorError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| OperatorError::Io {
            path: self.dir.clone(),
            source,
        })?;
        perch_runtime::fsio::write_atomic(path, bytes).map_err(|source| OperatorError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
