//! The operator as a user runs it: `perch rollout …` processes against the fleet's
//! broker, with their state folder on disk.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::error::SimError;

/// The `perch` binary: `$PERCH_PERCH` if set, else the one in this build's target
/// folder, built first if it is missing or older than its sources
/// ([`perch_testkit::workspace_binary`]).
///
/// # Errors
///
/// [`SimError::Process`] with cargo's output when it could not be built.
pub fn perch_path() -> Result<PathBuf, SimError> {
    perch_testkit::workspace_binary(
        "perch-tools",
        "perch",
        &["tools", "mqtt", "runtime"],
        "PERCH_PERCH",
    )
    .map_err(|e| SimError::Process(format!("no perch binary: {e}")))
}

/// A rollout operator: `perch rollout start` (or `run`, after a restart) as a child
/// process, killed when dropped. Its output goes to `operator.log` in its state folder.
#[derive(Debug)]
pub struct Operator {
    perch: PathBuf,
    group: String,
    broker: String,
    key: PathBuf,
    state_dir: PathBuf,
    child: Option<Child>,
}

impl Operator {
    /// Runs `perch rollout start BUNDLE --group G --key KEY --broker URL --state-dir DIR
    /// --json EXTRA…`.
    ///
    /// # Errors
    ///
    /// `perch` is missing or cannot start.
    pub fn start(
        bundle: &Path,
        key: &Path,
        group: &str,
        broker: &str,
        state_dir: &Path,
        extra: &[&str],
    ) -> Result<Operator, SimError> {
        let mut operator = Operator {
            perch: perch_path()?,
            group: group.to_string(),
            broker: broker.to_string(),
            key: key.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            child: None,
        };
        std::fs::create_dir_all(state_dir).map_err(SimError::Io)?;
        let mut args: Vec<String> = vec!["rollout".into(), "start".into()];
        args.push(bundle.display().to_string());
        args.extend(operator.common());
        args.extend(extra.iter().map(|a| a.to_string()));
        operator.spawn(&args)?;
        Ok(operator)
    }

    fn common(&self) -> Vec<String> {
        vec![
            "--group".into(),
            self.group.clone(),
            "--key".into(),
            self.key.display().to_string(),
            "--broker".into(),
            self.broker.clone(),
            "--state-dir".into(),
            self.state_dir.display().to_string(),
            "--json".into(),
        ]
    }

    fn spawn(&mut self, args: &[String]) -> Result<(), SimError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(SimError::Io)?;
        let err = log.try_clone().map_err(SimError::Io)?;
        let child = Command::new(&self.perch)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                SimError::Process(format!("cannot start {}: {e}", self.perch.display()))
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// The operator's output so far.
    pub fn log_path(&self) -> PathBuf {
        self.state_dir.join("operator.log")
    }

    /// The operator's output so far, as text (empty if unreadable).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the operator process with SIGKILL, as a crash would.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Resumes a killed operator from its state folder: `perch rollout run`.
    ///
    /// # Errors
    ///
    /// It cannot start.
    pub fn resume(&mut self) -> Result<(), SimError> {
        self.kill_9();
        let mut args: Vec<String> = vec!["rollout".into(), "run".into()];
        args.extend(self.common());
        self.spawn(&args)
    }

    /// Whether the operator process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the operator to exit (a rollout completed or aborted and the devices
    /// settled).
    ///
    /// # Errors
    ///
    /// [`SimError::Timeout`] with the end of its log.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, SimError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Ok(status);
                }
            } else {
                return Err(SimError::Process("the operator is not running".into()));
            }
            if Instant::now() >= deadline {
                return Err(SimError::Timeout {
                    what: "the operator to exit".into(),
                    timeout,
                    seen: tail(&self.log(), 1500),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `perch rollout status --json`, parsed.
    ///
    /// # Errors
    ///
    /// The command failed or printed no JSON.
    pub fn status(&self) -> Result<Value, SimError> {
        let output = self.perch(&[
            "rollout",
            "status",
            "--group",
            &self.group,
            "--state-dir",
            &self.state_dir.display().to_string(),
            "--json",
        ])?;
        if !output.status.success() {
            return Err(SimError::Process(format!(
                "perch rollout status failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        serde_json::from_slice(&output.stdout)
            .map_err(|e| SimError::Process(format!("perch rollout status printed no JSON: {e}")))
    }

    /// `perch rollout COMMAND --group G --broker URL [--reason R] --json` (promote,
    /// pause, resume, abort), as a second process talking to the running operator.
    ///
    /// # Errors
    ///
    /// `perch` cannot start.
    pub fn command(&self, command: &str, reason: Option<&str>) -> Result<Output, SimError> {
        let key = self.key.display().to_string();
        let mut args = vec![
            "rollout",
            command,
            "--group",
            &self.group,
            "--broker",
            &self.broker,
            "--key",
            &key,
            "--json",
        ];
        if let Some(reason) = reason {
            args.extend(["--reason", reason]);
        }
        self.perch(&args)
    }

    fn perch(&self, args: &[&str]) -> Result<Output, SimError> {
        Command::new(&self.perch)
            .args(args)
            .output()
            .map_err(|e| SimError::Process(format!("cannot run {}: {e}", self.perch.display())))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill_9();
    }
}

fn tail(text: &str, bytes: usize) -> String {
    let start = text.len().saturating_sub(bytes);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].to_string()
}
