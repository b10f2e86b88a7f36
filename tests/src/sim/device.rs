//! One simulated device: the real agent, either as a task on the fleet's runtime
//! ([`agent::run`]) or as a `perchd` process, with its own folder for the report spool
//! and the over-the-air slots, kept across restarts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use perch_firmware::agent;
use perch_firmware::config::{Broker, BrokerConfig, Config, DeviceId, OtaSettings};
use perch_runtime::error::Chain;
use serde_json::json;
use tokio::sync::oneshot;

use super::config::FleetConfig;
use super::error::SimError;

/// How a device runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceMode {
    /// [`agent::run`] as a task on the fleet's tokio runtime.
    InProcess,
    /// A `perchd` process ([`perchd_path`]), which can be killed with SIGKILL.
    Process,
}

/// How long a clean stop may take before the device is dropped (in-process) or killed
/// (process).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What runs now.
#[derive(Debug)]
enum Running {
    Stopped,
    Task {
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    },
    Process(Child),
}

/// One device of the fleet.
#[derive(Debug)]
pub struct Device {
    id: String,
    index: usize,
    mode: DeviceMode,
    dir: PathBuf,
    running: Running,
    /// Why an in-process agent ended with an error, if it did.
    failure: Arc<Mutex<Option<String>>>,
}

impl Device {
    pub(crate) fn new(index: usize, id: String, mode: DeviceMode, dir: PathBuf) -> Device {
        Device {
            id,
            index,
            mode,
            dir,
            running: Running::Stopped,
            failure: Arc::new(Mutex::new(None)),
        }
    }

    /// Its id, `{prefix}-{index:04}`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its position in the fleet, from 0.
    pub fn index(&self) -> usize {
        self.index
    }

    /// How it runs.
    pub fn mode(&self) -> DeviceMode {
        self.mode
    }

    /// Its folder (the spool, the OTA folder and, for a process, its configuration
    /// file and log are inside).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its report spool folder.
    pub fn spool_dir(&self) -> PathBuf {
        self.dir.join("spool")
    }

    /// Its over-the-air folder (model slots, downloads).
    pub fn ota_dir(&self) -> PathBuf {
        self.dir.join("ota")
    }

    /// The log of a process device (every run appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("perchd.log")
    }

    /// Whether the agent runs (a process that has not exited, a task that has not
    /// ended).
    pub fn is_running(&mut self) -> bool {
        match &mut self.running {
            Running::Stopped => false,
            Running::Task { task, .. } => !task.is_finished(),
            Running::Process(child) => matches!(child.try_wait(), Ok(None)),
        }
    }

    /// Why the agent stopped on its own, if it did: an in-process agent's error, or a
    /// process's exit status and the end of its log.
    pub fn failure(&mut self) -> Option<String> {
        if let Some(reason) = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Some(format!("{}: {reason}", self.id));
        }
        if let Running::Process(child) = &mut self.running {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Some(format!(
                    "{}: perchd exited ({status}); end of its log:\n{}",
                    self.id,
                    tail.join("\n")
                ));
            }
        }
        None
    }

    /// Starts the agent (again), reusing the device's folder.
    pub(crate) fn start(
        &mut self,
        config: &FleetConfig,
        broker: (&str, u16),
        runtime: &tokio::runtime::Handle,
    ) -> Result<(), SimError> {
        if self.is_running() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(SimError::Io)?;
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.running = match self.mode {
            DeviceMode::InProcess => {
                let agent_config = self.agent_config(config, broker)?;
                let (stop, stopped) = oneshot::channel::<()>();
                let failure = self.failure.clone();
                let task = runtime.spawn(async move {
                    let shutdown = async move {
                        let _ = stopped.await;
                    };
                    if let Err(e) = agent::run(agent_config, shutdown).await {
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(Chain(&e).to_string());
                    }
                });
                Running::Task {
                    stop: Some(stop),
                    task,
                }
            }
            DeviceMode::Process => Running::Process(self.spawn_process(config, broker)?),
        };
        Ok(())
    }

    /// The agent's configuration: no HTTP, the fleet's broker, bundle and key, this
    /// device's folders.
    fn agent_config(&self, config: &FleetConfig, broker: (&str, u16)) -> Result<Config, SimError> {
        let device_id: DeviceId = self
            .id
            .parse()
            .map_err(|e| SimError::Config(format!("device id {:?}: {e}", self.id)))?;
        let mut c = Config::new(device_id, &config.bundle);
        c.http_listen = None;
        c.broker = Broker::External(BrokerConfig::plain(broker.0, broker.1));
        c.report_interval = config.report_interval;
        c.spool.dir = self.spool_dir();
        c.model.trusted_keys = vec![config.trusted_key.clone()];
        c.model.warmup_runs = config.warmup_runs;
        c.ota = config.ota.then(|| OtaSettings {
            group: config.group.clone(),
            dir: self.ota_dir(),
            max_probation_boots: config.max_probation_boots,
            chunk_timeout: config.chunk_timeout,
            stall_timeout: config.stall_timeout,
        });
        Ok(c)
    }

    /// Writes the device's `perchd.toml` (the same settings as
    /// [`agent_config`](Device::agent_config)) and starts `perchd` with it.
    fn spawn_process(&self, config: &FleetConfig, broker: (&str, u16)) -> Result<Child, SimError> {
        let perchd = perchd_path()?;
        let s = |p: &Path| json!(p.to_string_lossy()).to_string();
        let mut toml = format!(
            "device_id = {}\nreport_interval = \"{}ms\"\nhttp_listen = \"off\"\n\n\
             [model]\npath = {}\ntrusted_keys = [{}]\nwarmup_runs = {}\n\n\
             [broker]\nurl = \"mqtt://{}:{}\"\n\n[spool]\ndir = {}\n",
            json!(self.id),
            config.report_interval.as_millis().max(1),
            s(&absolute(&config.bundle)?),
            s(&absolute(&config.trusted_key)?),
            config.warmup_runs,
            broker.0,
            broker.1,
            s(&self.spool_dir()),
        );
        if config.ota {
            toml.push_str(&format!(
                "\n[ota]\nenabled = true\ngroup = {}\ndir = {}\nmax_probation_boots = {}\n\
                 chunk_timeout = \"{}ms\"\nstall_timeout = \"{}ms\"\n",
                json!(config.group),
                s(&self.ota_dir()),
                config.max_probation_boots,
                config.chunk_timeout.as_millis().max(1),
                config.stall_timeout.as_millis().max(1),
            ));
        } else {
            toml.push_str("\n[ota]\nenabled = false\n");
        }
        let file = self.dir.join("perchd.toml");
        perch_runtime::fsio::write_atomic(&file, toml.as_bytes()).map_err(SimError::Io)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(SimError::Io)?;
        let mut command = Command::new(&perchd);
        command
            .arg("--config")
            .arg(&file)
            .env_remove("PERCH_CONFIG")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(SimError::Io)?)
            .stderr(log);
        // Settings from the environment would override the file.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PERCH_") {
                command.env_remove(key);
            }
        }
        command
            .spawn()
            .map_err(|e| SimError::Process(format!("cannot start {}: {e}", perchd.display())))
    }

    /// SIGKILL: the process ends at once, without its goodbye or its last reports
    /// moved to the spool. Only for process devices.
    pub(crate) fn kill_9(&mut self) -> Result<(), SimError> {
        match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::Process(mut child) => {
                // std's Child::kill sends SIGKILL on Unix.
                let _ = child.kill();
                let _ = child.wait();
                Ok(())
            }
            other => {
                self.running = other;
                Err(SimError::Config(format!(
                    "{} runs in-process: only process devices can be killed with SIGKILL",
                    self.id
                )))
            }
        }
    }

    /// A clean stop: the agent says offline, spools what is undelivered, disconnects.
    pub(crate) fn stop(&mut self, runtime: &tokio::runtime::Handle) {
        match std::mem::replace(&mut self.running, Running::Stopped) {
            Running::Stopped => {}
            Running::Task { stop, task } => {
                if let Some(stop) = stop {
                    let _ = stop.send(());
                }
                let waited =
                    runtime.block_on(async move { tokio::time::timeout(STOP_TIMEOUT, task).await });
                if waited.is_err() {
                    log::warn!("{} did not stop within {STOP_TIMEOUT:?}", self.id);
                }
            }
            Running::Process(mut child) => {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let deadline = Instant::now() + STOP_TIMEOUT;
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Asks the agent to stop without waiting ([`stop`](Device::stop) waits).
    pub(crate) fn signal_stop(&mut self) {
        match &mut self.running {
            Running::Stopped => {}
            Running::Task { stop, .. } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
            }
            Running::Process(child) => {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
            }
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Running::Process(child) = &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn absolute(path: &Path) -> Result<PathBuf, SimError> {
    std::path::absolute(path).map_err(SimError::Io)
}

/// The `perchd` binary process devices run: `$PERCH_PERCHD` if set, else the one in
/// this build's target folder, built first if it is missing or older than its sources
/// ([`perch_testkit::workspace_binary`]).
///
/// # Errors
///
/// [`SimError::NoPerchd`] with cargo's output when it could not be built.
pub fn perchd_path() -> Result<PathBuf, SimError> {
    perch_testkit::workspace_binary(
        "perch-firmware",
        "perchd",
        &["firmware", "mqtt", "runtime"],
        "PERCH_PERCHD",
    )
    .map_err(SimError::NoPerchd)
}
