//! [`Updater`]: the executor of the rollout [`Machine`], the facade the agent drives
//! (see the [module docs](super)).

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use perch_mqtt::topics::{self, DeviceTopic};
use perch_runtime::bundle::VerifyingKey;
use perch_runtime::error::Chain;
use perch_runtime::fsio;
use perch_runtime::histogram::Histogram;
use perch_runtime::rollout::{self, ChunkRequest};
use perch_runtime::slo::Slo;

use super::download::Download;
use super::error::OtaError;
use super::install::{self, LoadSettings};
use super::machine::{self, Action, Machine, MachineConfig, State};
use crate::load::{LoadError, Loaded};
use crate::slots::Slots;

/// The machine's state file in [`OtaConfig::dir`].
pub const STATE_FILE: &str = "ota.json";
/// The marker file saying the configured model serves after a roll-back.
pub const SERVE_CONFIGURED_FILE: &str = "serve-configured";
/// The marker file saying the model before the active slot was the configured one (the
/// first activation, or one after a roll-back to the configured model).
pub const PREVIOUS_CONFIGURED_FILE: &str = "previous-configured";
/// The marker file present while a bundle is loaded and tested before its activation:
/// the bundle's SHA-256 and the number of attempts, `<sha256> <attempts>`.
pub const INSTALLING_FILE: &str = "installing";
/// How long a download may wait for a good copy of the chunk it needs before the rollout
/// fails, by default.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(600);
/// How long loading, self-testing and warming up a downloaded bundle may take by
/// default before the install fails.
pub const DEFAULT_INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Starts that found an install cut short (the agent stopped while loading and testing
/// the bundle) after which the rollout fails rather than trying again. Two, so a power
/// cut during an install does not fail a rollout, but an engine that crashes on the
/// bundle does.
pub const MAX_INSTALL_ATTEMPTS: u32 = 2;

/// Settings of the updater.
#[derive(Debug, Clone, PartialEq)]
pub struct OtaConfig {
    /// Its folder (created if missing): state, slots, partial download.
    pub dir: PathBuf,
    /// The device group whose rollout document it follows.
    pub group: String,
    /// How long a requested chunk may take before it is requested again.
    pub chunk_timeout: Duration,
    /// How long a download may wait for a good copy of the chunk it needs (copies that
    /// fail their hash are dropped and the chunk requested again with backoff); past it
    /// the rollout fails.
    pub stall_timeout: Duration,
    /// Starts on probation above which the agent is crash-looping and rolls back.
    pub max_probation_boots: u32,
    /// Warm-up inferences of a new bundle before it is activated.
    pub warmup_runs: u32,
    /// How long loading, self-testing and warming up a downloaded bundle may take;
    /// past it the install fails and the old model keeps serving.
    pub install_timeout: Duration,
    /// The model of the device's repository the updater keeps up to date, by name
    /// (`None`: the primary model). It follows that model's rollout document
    /// ([`topics::rollout_document_of`]) and refuses documents for any other.
    pub model: Option<String>,
    /// The configured SLOs, which win field by field over an activated bundle's in its
    /// warm-up check and its soak.
    pub slo: Slo,
}

/// An input to [`Updater::handle`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event<'a> {
    /// A message on the group's rollout document topic.
    Document(&'a [u8]),
    /// A message on the device's chunk topic.
    Chunk(&'a [u8]),
    /// Time passed (call about once a second).
    Tick,
    /// The device's wall clock, known synchronized ([`crate::clock`]), reads
    /// `unix_ms`: documents past their expiry freeze the device from now on. Send it
    /// with the ticks while the clock stays synchronized.
    WallClock {
        /// Milliseconds since the Unix epoch.
        unix_ms: u64,
    },
    /// A metrics report interval ended.
    Interval {
        /// Requests answered.
        ok: u64,
        /// Requests failed.
        errors: u64,
        /// The latency of the interval's successful requests.
        latency: &'a Histogram,
    },
}

/// What the agent must do for the updater, in order.
#[derive(Debug)]
pub enum Effect {
    /// Publish `payload` on `topic`, QoS 0, not retained (chunk requests).
    Publish {
        /// The topic.
        topic: String,
        /// The payload.
        payload: Vec<u8>,
    },
    /// Publish a rollout status on `topic` ([`DeviceTopic::Rollout`]), QoS 1, through
    /// the spool.
    Report {
        /// The topic.
        topic: String,
        /// The [`perch_runtime::rollout::DeviceStatus`] JSON.
        payload: Vec<u8>,
    },
    /// Serve this model from now on (requests in flight finish on the old one).
    Serve(Box<Loaded>),
    /// Serve the model of the configuration again (a roll-back with no previous slot).
    ServeConfigured,
    /// Something to log.
    Log {
        /// Its level.
        level: log::Level,
        /// The line.
        message: String,
    },
}

/// What [`Updater::boot`] decided.
#[derive(Debug)]
pub struct Boot {
    /// The slot file to serve (a signed bundle), or `None` for the configured model.
    pub serve: Option<PathBuf>,
    /// Effects to carry out once connected (reports of a roll-back, chunk requests of a
    /// resumed download).
    pub effects: Vec<Effect>,
}
/// The executor of the rollout machine (see the [module docs](super)).
#[derive(Debug)]
pub struct Updater {
    config: OtaConfig,
    device: String,
    settings: LoadSettings,
    machine: Machine,
    slots: Slots,
    download: Option<Download>,
    epoch: Instant,
    /// The configured bundle's sequence (0 for a plain model file).
    configured_sequence: u64,
    /// Crash-point tests: the actions that wrote to disk so far, and after how many
    /// the agent "stops" (nothing more is carried out).
    #[cfg(test)]
    pub(super) crash: CrashPoint,
}

impl Updater {
    /// Opens the updater's folder for `device`, following `config.group`, trusting
    /// `trusted` for documents and bundles. Restores the state a previous run left.
    ///
    /// # Errors
    ///
    /// No trusted key, an invalid group or device id, the folder or a file cannot be
    /// read or written, or the state or slots file is damaged.
    pub fn open(
        config: OtaConfig,
        device: &str,
        trusted: Vec<VerifyingKey>,
    ) -> Result<Updater, OtaError> {
        if trusted.is_empty() {
            return Err(OtaError::Config(
                "over-the-air updates need at least one trusted key".into(),
            ));
        }
        rollout::check_id("group", &config.group).map_err(OtaError::Config)?;
        rollout::check_id("device id", device).map_err(OtaError::Config)?;
        let slots = Slots::open(config.dir.join("slots"))?;
        let path = config.dir.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => {
                let state: State =
                    serde_json::from_slice(&bytes).map_err(|e| OtaError::Corrupt {
                        path: path.clone(),
                        reason: Chain(&e).to_string(),
                    })?;
                if state.format != machine::STATE_FORMAT {
                    return Err(OtaError::Corrupt {
                        path,
                        reason: format!(
                            "format {} (this agent reads {})",
                            state.format,
                            machine::STATE_FORMAT
                        ),
                    });
                }
                state
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(source) => return Err(OtaError::Io { path, source }),
        };
        let machine_config = MachineConfig {
            device: device.to_string(),
            group: config.group.clone(),
            chunk_timeout_ms: u64::try_from(config.chunk_timeout.as_millis()).unwrap_or(u64::MAX),
            stall_timeout_ms: u64::try_from(config.stall_timeout.as_millis()).unwrap_or(u64::MAX),
            max_probation_boots: config.max_probation_boots,
            model: config.model.clone(),
        };
        let settings = LoadSettings {
            keys: trusted.clone(),
            warmup_runs: config.warmup_runs,
            install_timeout: config.install_timeout,
            slo: config.slo,
        };
        Ok(Updater {
            machine: Machine::restore(machine_config, trusted, state),
            config,
            device: device.to_string(),
            settings,
            slots,
            download: None,
            epoch: Instant::now(),
            configured_sequence: 0,
            #[cfg(test)]
            crash: Default::default(),
        })
    }

    /// Counts this start of the agent and decides what serves: rolls back first when
    /// the agent crash-loops on probation; resumes a download in progress. Call once,
    /// before loading the model.
    ///
    /// # Errors
    ///
    /// The slot state cannot be written.
    pub fn boot(&mut self) -> Result<Boot, OtaError> {
        if self.marker(SERVE_CONFIGURED_FILE) {
            // A roll-back to the configured model stopped before it ended the
            // probation (or was made by an agent that did not end it).
            self.slots.leave()?;
        }
        let boots = self.slots.record_boot()?;
        let now = self.now_ms();
        let mut actions = self.machine.on_boot(boots);
        actions.extend(self.interrupted_install()?);
        actions.extend(self.machine.resume());
        let activated = self
            .machine
            .state()
            .document
            .as_ref()
            .map(|d| &d.bundle.sha256);
        let serving = self.slots.active().map(|(_, content, _)| &content.sha256);
        if activated.is_some() && (serving != activated || self.marker(SERVE_CONFIGURED_FILE)) {
            actions.extend(
                self.machine.on_reverted(
                    "the device returned to its previous model before a restart".into(),
                ),
            );
        }
        let mut effects = Vec::new();
        // The roll-back's model is loaded by the agent from `serve`, not here.
        let rolled_back = actions.iter().any(|a| matches!(a, Action::RollBack { .. }));
        if rolled_back {
            self.return_to_previous(false)?;
            actions.retain(|a| !matches!(a, Action::RollBack { .. }));
        }
        self.run(actions, now, &mut effects);
        // The model to serve is loaded by the agent from `serve`.
        effects.retain(|e| !matches!(e, Effect::Serve(_) | Effect::ServeConfigured));
        let serve = if self.marker(SERVE_CONFIGURED_FILE) {
            None
        } else {
            self.slots.active().map(|(_, _, path)| path)
        };
        Ok(Boot { serve, effects })
    }

    /// Records the release sequence of the configured bundle (when the configured model
    /// is a bundle): a rollout must carry a higher one, like one installed through the
    /// slots.
    pub fn set_configured_sequence(&mut self, sequence: u64) {
        self.configured_sequence = sequence;
    }

    /// Records the model serving now, `name version`, as reports state it. Call after
    /// loading the configured model.
    pub fn set_serving(&mut self, serving: &str) {
        self.machine.set_serving(serving);
    }

    /// The topics to subscribe to: the rollout document of the group's model (QoS 1)
    /// and the device's chunks (QoS 0).
    pub fn subscriptions(&self) -> [String; 2] {
        [
            topics::rollout_document_of(&self.config.group, self.config.model.as_deref()),
            DeviceTopic::Chunk.of(&self.device),
        ]
    }

    /// The machine's durable state.
    pub fn state(&self) -> &State {
        self.machine.state()
    }

    /// The slots.
    pub fn slots(&self) -> &Slots {
        &self.slots
    }

    /// Loads a slot file (the [`Boot::serve`] path) as the agent does: verified against
    /// the trusted keys, self-tested, warmed up. Blocks.
    ///
    /// # Errors
    ///
    /// The bundle does not load or verify.
    pub fn load_slot(&self, path: PathBuf) -> Result<Loaded, LoadError> {
        self.settings.load(path)
    }

    /// Handles `event` at the updater's own monotonic clock. Blocks (an install loads
    /// a model): call it from a blocking thread.
    pub fn handle(&mut self, event: Event<'_>) -> Vec<Effect> {
        let now = self.now_ms();
        self.handle_at(event, now)
    }

    /// Handles `event` at `now_ms` of a monotonic clock the caller owns (the same clock
    /// for every call).
    pub fn handle_at(&mut self, event: Event<'_>, now_ms: u64) -> Vec<Effect> {
        let actions = match event {
            Event::Document(payload) => self.machine.on_document(payload, now_ms),
            Event::Chunk(frame) => self.machine.on_chunk(frame, now_ms),
            Event::Tick => self.machine.on_tick(now_ms),
            Event::WallClock { unix_ms } => self.machine.on_wall_clock(unix_ms, now_ms),
            Event::Interval {
                ok,
                errors,
                latency,
            } => self.machine.on_interval(ok, errors, latency, now_ms),
        };
        let mut effects = Vec::new();
        self.run(actions, now_ms, &mut effects);
        effects
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Carries out `actions` and those they lead to, in order.
    fn run(&mut self, actions: Vec<Action>, now_ms: u64, effects: &mut Vec<Effect>) {
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            #[cfg(test)]
            if self.crash.stopped() {
                return;
            }
            #[cfg(test)]
            let writes = writes_to_disk(&action);
            let next = self.execute(action, now_ms, effects);
            #[cfg(test)]
            if writes {
                self.crash.wrote();
            }
            for (i, action) in next.into_iter().enumerate() {
                queue.insert(i, action);
            }
        }
    }

    fn execute(&mut self, action: Action, now_ms: u64, effects: &mut Vec<Effect>) -> Vec<Action> {
        let log = |level, message: String| Effect::Log { level, message };
        let rollout_id = self
            .machine
            .state()
            .document
            .as_ref()
            .map(|d| d.rollout_id.clone())
            .unwrap_or_default();
        match action {
            Action::PrepareDownload => {
                let Some(doc) = self.machine.state().document.clone() else {
                    return Vec::new();
                };
                match Download::open(&self.config.dir, &doc.rollout_id, &doc.bundle) {
                    Ok(download) => {
                        let have = download.have();
                        if have > 0 {
                            effects.push(log(
                                log::Level::Info,
                                format!(
                                    "rollout {}: resuming the download at chunk {have} of {}",
                                    doc.rollout_id,
                                    doc.bundle.chunk_count()
                                ),
                            ));
                        }
                        self.download = Some(download);
                        self.machine.on_resumed(have, now_ms)
                    }
                    Err(e) => self
                        .machine
                        .on_failed(format!("cannot store the download: {}", Chain(&e))),
                }
            }
            Action::RequestChunk { index } => {
                let request = ChunkRequest { rollout_id, index };
                effects.push(Effect::Publish {
                    topic: DeviceTopic::ChunkRequest.of(&self.device),
                    payload: serde_json::to_vec(&request).unwrap_or_default(),
                });
                Vec::new()
            }
            Action::WriteChunk { index, data } => {
                let written = match self.download.as_mut() {
                    Some(download) => download.write(index, &data),
                    None => Err(OtaError::Chunk("no download is open".into())),
                };
                match written {
                    Ok(()) => Vec::new(),
                    Err(e) => self
                        .machine
                        .on_failed(format!("cannot store chunk {index}: {}", Chain(&e))),
                }
            }
            Action::Install => {
                let result = self.install(effects);
                self.machine.on_installed(result, now_ms)
            }
            Action::Confirm => {
                if let Err(e) = self.slots.confirm() {
                    effects.push(log(
                        log::Level::Error,
                        format!("cannot confirm: {}", Chain(&e)),
                    ));
                }
                Vec::new()
            }
            Action::RollBack { reason } => {
                effects.push(log(
                    log::Level::Warn,
                    format!("rollout {rollout_id}: rolling back: {reason}"),
                ));
                match self.return_to_previous(true) {
                    Ok(Some(loaded)) => effects.push(Effect::Serve(Box::new(loaded))),
                    Ok(None) => effects.push(Effect::ServeConfigured),
                    Err(e) => effects.push(log(log::Level::Error, Chain(&e).to_string())),
                }
                Vec::new()
            }
            Action::DiscardDownload => {
                self.download = None;
                if let Err(e) = Download::discard(&self.config.dir) {
                    effects.push(log(log::Level::Warn, Chain(&e).to_string()));
                }
                Vec::new()
            }
            Action::Report(status) => {
                effects.push(Effect::Report {
                    topic: DeviceTopic::Rollout.of(&self.device),
                    payload: status.to_json(),
                });
                Vec::new()
            }
            Action::Persist => {
                if let Err(e) = self.persist() {
                    effects.push(log(log::Level::Error, Chain(&e).to_string()));
                }
                Vec::new()
            }
            Action::Refused { reason } => {
                effects.push(log(log::Level::Warn, format!("rollout: {reason}")));
                Vec::new()
            }
        }
    }

    /// Reads the finished download and installs it; the loaded model goes to `effects`.
    fn install(&mut self, effects: &mut Vec<Effect>) -> Result<Slo, String> {
        let doc = self
            .machine
            .state()
            .document
            .clone()
            .ok_or_else(|| "no rollout document".to_string())?;
        if let Some((_, content, path)) = self.slots.active() {
            if content.sha256 == doc.bundle.sha256
                && self.slots.state().probation
                && !self.marker(SERVE_CONFIGURED_FILE)
            {
                // Activated before a restart cut the run short of recording it.
                let loaded = self
                    .settings
                    .load(path)
                    .map_err(|e| format!("the activated bundle does not load: {}", Chain(&e)))?;
                let slo = self.settings.slo.or(&loaded.slo);
                effects.push(Effect::Serve(Box::new(loaded)));
                return Ok(slo);
            }
        }
        let download = match self.download.as_mut() {
            Some(download) => download,
            None => self.download.insert(
                Download::open(&self.config.dir, &doc.rollout_id, &doc.bundle)
                    .map_err(|e| Chain(&e).to_string())?,
            ),
        };
        let bytes = download.finish().map_err(|e| Chain(&e).to_string())?;
        let previous_is_configured =
            self.slots.active().is_none() || self.marker(SERVE_CONFIGURED_FILE);
        if previous_is_configured {
            // Before the activation, so that a crash right after it still rolls back to
            // the configured model.
            self.set_marker(PREVIOUS_CONFIGURED_FILE, true)
                .map_err(|e| Chain(&e).to_string())?;
        }
        let attempts = self.install_attempts(&doc.bundle.sha256) + 1;
        let marker = self.config.dir.join(INSTALLING_FILE);
        fsio::write_atomic(
            &marker,
            format!("{} {attempts}\n", doc.bundle.sha256).as_bytes(),
        )
        .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
        let installed = install::install(
            &mut self.slots,
            bytes,
            &doc.bundle,
            &self.settings.keys,
            &self.settings,
            self.configured_sequence,
        );
        if let Err(e) = self.set_marker(INSTALLING_FILE, false) {
            effects.push(Effect::Log {
                level: log::Level::Warn,
                message: Chain(&e).to_string(),
            });
        }
        let installed = installed?;
        self.set_marker(PREVIOUS_CONFIGURED_FILE, previous_is_configured)
            .and_then(|()| self.set_marker(SERVE_CONFIGURED_FILE, false))
            .map_err(|e| Chain(&e).to_string())?;
        effects.push(Effect::Log {
            level: log::Level::Info,
            message: format!(
                "rollout {}: activated {} in slot {:?}, on probation",
                doc.rollout_id, installed.loaded.source, installed.slot
            ),
        });
        let slo = installed.slo;
        effects.push(Effect::Serve(Box::new(installed.loaded)));
        Ok(slo)
    }

    fn persist(&self) -> Result<(), OtaError> {
        let path = self.config.dir.join(STATE_FILE);
        let mut bytes =
            serde_json::to_vec_pretty(self.machine.state()).map_err(|e| OtaError::Corrupt {
                path: path.clone(),
                reason: Chain(&e).to_string(),
            })?;
        bytes.push(b'\n');
        fsio::write_atomic(&path, &bytes).map_err(|source| OtaError::Io { path, source })
    }

    /// Leaves the active slot for the model that served before it: the other slot
    /// (loaded when `load`), or the configured model (`Ok(None)`).
    fn return_to_previous(&mut self, load: bool) -> Result<Option<Loaded>, OtaError> {
        if self.marker(PREVIOUS_CONFIGURED_FILE) || self.slots.inactive().is_none() {
            // The marker first: stopped in between, the next start serves the
            // configured model and `boot` ends the probation.
            self.set_marker(SERVE_CONFIGURED_FILE, true)?;
            self.slots.leave()?;
            return Ok(None);
        }
        let loaded = if load {
            install::roll_back(&mut self.slots, &self.settings).map_err(OtaError::RollBack)?
        } else {
            self.slots.roll_back()?;
            None
        };
        self.set_marker(SERVE_CONFIGURED_FILE, false)?;
        Ok(loaded)
    }

    /// How many times loading and testing the bundle `sha256` began without finishing
    /// (the `installing` marker); 0 without a marker or for another bundle.
    fn install_attempts(&self, sha256: &str) -> u32 {
        let text =
            std::fs::read_to_string(self.config.dir.join(INSTALLING_FILE)).unwrap_or_default();
        let mut words = text.split_whitespace();
        match (words.next(), words.next().map(str::parse::<u32>)) {
            (Some(marked), Some(Ok(attempts))) if marked == sha256 => attempts,
            _ => 0,
        }
    }

    /// At start-up: an `installing` marker means the agent stopped while it loaded and
    /// tested the rollout's bundle. After [`MAX_INSTALL_ATTEMPTS`] the rollout fails
    /// (the engine crashes on the bundle); before, the install runs again on resuming.
    /// A marker for another bundle, or for the bundle already activated (the stop came
    /// after the activation, which probation covers), is stale and goes.
    fn interrupted_install(&mut self) -> Result<Vec<Action>, OtaError> {
        let bundle = self
            .machine
            .state()
            .document
            .as_ref()
            .map(|d| d.bundle.sha256.clone());
        let attempts = bundle.as_deref().map_or(0, |b| self.install_attempts(b));
        let activated =
            bundle.is_some() && self.slots.active().map(|(_, c, _)| &c.sha256) == bundle.as_ref();
        if attempts > 0 && !activated && attempts < MAX_INSTALL_ATTEMPTS {
            // Resuming installs again, and counts one more attempt.
            return Ok(Vec::new());
        }
        self.set_marker(INSTALLING_FILE, false)?;
        if attempts == 0 || activated {
            return Ok(Vec::new());
        }
        Ok(self.machine.on_failed(format!(
            "perchd stopped {attempts} times while loading and testing this bundle (the \
             engine crashes on it, or the device lost power each time); not trying again"
        )))
    }

    fn marker(&self, name: &str) -> bool {
        self.config.dir.join(name).exists()
    }

    fn set_marker(&self, name: &str, on: bool) -> Result<(), OtaError> {
        let path = self.config.dir.join(name);
        let result = if on {
            fsio::write_atomic(&path, b"1\n")
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        };
        result.map_err(|source| OtaError::Io { path, source })
    }
}

/// How many disk-writing actions the updater carried out, and after how many it
/// stops (a crash).
/// For `ota::crash_points`.
#[cfg(test)]
#[derive(Debug, Default)]
pub(super) struct CrashPoint {
    /// Disk-writing actions carried out.
    pub(super) writes: usize,
    /// Stop after this many (`None`: never).
    pub(super) stop_after: Option<usize>,
}

#[cfg(test)]
impl CrashPoint {
    /// Counts one disk-writing action carried out.
    pub(super) fn wrote(&mut self) {
        self.writes += 1;
    }

    /// Whether the agent has stopped: no action is carried out any more.
    pub(super) fn stopped(&self) -> bool {
        self.stop_after.is_some_and(|n| self.writes >= n)
    }
}

/// Whether carrying out `action` writes to the updater's folder.
#[cfg(test)]
fn writes_to_disk(action: &Action) -> bool {
    matches!(
        action,
        Action::Persist
            | Action::PrepareDownload
            | Action::WriteChunk { .. }
            | Action::Install
            | Action::Confirm
            | Action::RollBack { .. }
            | Action::DiscardDownload
    )
}

#[cfg(test)]
mod tests {
    use perch_runtime::bundle::SigningKey;
    use perch_runtime::rollout::{encode_chunk, DeviceState, DeviceStatus, Phase, RolloutDocument};

    use super::super::download;
    use super::*;
    use crate::testing::kws_release as release;

    const DEVICE: &str = "pi-1";

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn config(dir: &std::path::Path) -> OtaConfig {
        OtaConfig {
            dir: dir.to_path_buf(),
            group: "kitchen".into(),
            chunk_timeout: Duration::from_secs(5),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            max_probation_boots: 2,
            warmup_runs: 3,
            install_timeout: Duration::from_secs(600),
            model: None,
            slo: Default::default(),
        }
    }

    fn open(dir: &std::path::Path) -> Updater {
        Updater::open(config(dir), DEVICE, vec![key().verifying_key()]).unwrap()
    }

    fn document(bundle: &[u8]) -> RolloutDocument {
        release("kws-1.3.0", "1.3.0", 2, bundle, 100)
    }

    fn reports(effects: &[Effect]) -> Vec<DeviceStatus> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Report { topic, payload } => {
                    assert_eq!(topic, "perch/pi-1/rollout");
                    Some(DeviceStatus::from_json(payload).unwrap())
                }
                _ => None,
            })
            .collect()
    }

    /// A signed kws bundle.
    fn kws(sequence: u64, version: &str) -> Vec<u8> {
        crate::testing::pack_kws(&key(), sequence, version)
            .as_bytes()
            .to_vec()
    }

    /// Hands `doc` to the updater at `now_ms` and serves the chunks it asks for (see
    /// [`serve_chunks`]); returns every effect seen.
    fn roll_out(
        updater: &mut Updater,
        doc: &RolloutDocument,
        bundle: &[u8],
        now_ms: u64,
        limit: usize,
    ) -> Vec<Effect> {
        let first = updater.handle_at(Event::Document(&doc.sign(&key())), now_ms);
        serve_chunks(updater, first, bundle, doc, limit)
    }

    /// Answers the chunk requests in `effects` like the operator, until none is left or
    /// `limit` chunks were sent; returns every effect seen.
    fn serve_chunks(
        updater: &mut Updater,
        mut effects: Vec<Effect>,
        bundle: &[u8],
        doc: &RolloutDocument,
        limit: usize,
    ) -> Vec<Effect> {
        let mut seen = Vec::new();
        let mut sent = 0;
        loop {
            let request = effects.iter().find_map(|e| match e {
                Effect::Publish { topic, payload } => {
                    assert_eq!(topic, "perch/pi-1/ota/req");
                    Some(serde_json::from_slice::<ChunkRequest>(payload).unwrap())
                }
                _ => None,
            });
            seen.append(&mut effects);
            let Some(request) = request else {
                return seen;
            };
            if sent == limit {
                return seen;
            }
            let range = doc.bundle.chunk_range(request.index).unwrap();
            let data = &bundle[range.start as usize..range.end as usize];
            let frame = encode_chunk(&request.rollout_id, request.index, data);
            effects = updater.handle_at(Event::Chunk(&frame), 1_000);
            sent += 1;
        }
    }

    #[test]
    fn configured_slos_win_over_the_bundles_in_the_warm_up_check_and_the_soak() {
        let bundle = kws(2, "1.3.0");
        let doc = document(&bundle);
        let install = |slo: Slo| {
            let dir = tempfile::tempdir().unwrap();
            let config = OtaConfig {
                slo,
                ..config(dir.path())
            };
            let mut updater = Updater::open(config, DEVICE, vec![key().verifying_key()]).unwrap();
            updater.boot().unwrap();
            updater.set_serving("kws 1.2.0");
            let effects = roll_out(&mut updater, &doc, &bundle, 0, usize::MAX);
            (updater.state().clone(), reports(&effects))
        };
        // Looser than the bundle's 25 ms, and an error-rate bound the bundle lacks.
        let loose = Slo {
            p99_ms: Some(1_000.0),
            max_error_rate: Some(0.5),
            ..Slo::default()
        };
        let (state, _) = install(loose);
        assert_eq!(state.state, Some(DeviceState::Active));
        assert_eq!(state.slo, loose, "the soak judges the configured SLOs");
        // A p99 no model meets: the warm-up check refuses the bundle.
        let strict = Slo {
            p99_ms: Some(1e-6),
            ..Slo::default()
        };
        let (state, reports) = install(strict);
        assert_eq!(state.state, Some(DeviceState::Failed));
        let reason = reports.last().unwrap().reason.clone().unwrap_or_default();
        assert!(reason.contains("warm-up p99"), "{reason}");
    }

    #[test]
    fn an_install_past_its_deadline_fails_cleanly_and_an_abort_is_processed_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = kws(2, "1.3.0");
        let doc = document(&bundle);
        // No load, self-test and warm-up finishes in no time: the deadline always
        // passes first, as it would for a self-test that hangs.
        let config = OtaConfig {
            install_timeout: Duration::ZERO,
            ..config(dir.path())
        };
        let mut updater = Updater::open(config, DEVICE, vec![key().verifying_key()]).unwrap();
        updater.boot().unwrap();
        updater.set_serving("kws 1.2.0");
        let effects = roll_out(&mut updater, &doc, &bundle, 0, usize::MAX);
        assert!(!effects.iter().any(|e| matches!(e, Effect::Serve(_))));
        let failed = reports(&effects);
        let last = failed.last().unwrap();
        assert_eq!(last.state, DeviceState::Failed);
        assert!(
            last.reason.as_deref().unwrap().contains("install_timeout"),
            "{last:?}"
        );
        assert_eq!(last.serving, "kws 1.2.0");
        assert!(updater.slots().active().is_none(), "nothing activated");
        assert!(!dir.path().join(INSTALLING_FILE).exists());
        // The updater goes on: the operator's abort is taken and changes nothing more.
        let mut aborted = doc.clone();
        aborted.revision += 1;
        aborted.phase = Phase::Aborted;
        let effects = updater.handle_at(Event::Document(&aborted.sign(&key())), 2_000);
        assert!(!effects.iter().any(|e| matches!(e, Effect::Serve(_))));
        assert_eq!(updater.state().highest_revision, aborted.revision);
        assert_eq!(updater.state().state, Some(DeviceState::Failed));
    }

    #[test]
    fn an_updater_downloads_installs_serves_and_after_a_restart_continues_its_soak() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = kws(2, "1.3.0");
        let doc = document(&bundle);
        let mut updater = open(dir.path());
        let boot = updater.boot().unwrap();
        assert!(
            boot.serve.is_none(),
            "nothing installed: the configured model serves"
        );
        updater.set_serving("kws 1.2.0");
        assert_eq!(
            updater.subscriptions(),
            ["perch/fleet/kitchen/rollout", "perch/pi-1/ota/chunk"]
        );

        let effects = roll_out(&mut updater, &doc, &bundle, 0, usize::MAX);
        let states: Vec<DeviceState> = reports(&effects).iter().map(|r| r.state).collect();
        assert_eq!(states.first(), Some(&DeviceState::Downloading));
        assert_eq!(
            &states[states.len() - 2..],
            [DeviceState::Verifying, DeviceState::Active]
        );
        let served = effects
            .iter()
            .find_map(|e| match e {
                Effect::Serve(loaded) => Some(loaded.id.to_string()),
                _ => None,
            })
            .unwrap();
        assert_eq!(served, "kws@1.3.0");
        assert!(!dir.path().join(download::PART_FILE).exists());
        assert_eq!(updater.slots().active().unwrap().1.sequence, 2);

        // A restart on probation: the slot serves again and the soak goes on.
        drop(updater);
        let mut updater = open(dir.path());
        let boot = updater.boot().unwrap();
        let path = boot.serve.unwrap();
        assert_eq!(updater.load_slot(path).unwrap().id.to_string(), "kws@1.3.0");
        assert_eq!(updater.state().state, Some(DeviceState::Active));
        let fast = latencies(100, 4.0);
        let interval = Event::Interval {
            ok: 100,
            errors: 0,
            latency: &fast,
        };
        assert!(reports(&updater.handle_at(interval, 5_000)).is_empty());
        let effects = updater.handle_at(interval, 66_000);
        let confirmed = reports(&effects);
        assert_eq!(confirmed[0].state, DeviceState::Confirmed);
        assert!(
            confirmed[0].update > 2,
            "the update counter survived the restart"
        );
        assert!(!updater.slots().state().probation);
    }

    #[test]
    fn a_killed_updater_resumes_its_download_from_the_next_chunk_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = kws(2, "1.3.0");
        let doc = document(&bundle);
        assert!(doc.bundle.chunk_count() > 4);
        let mut updater = open(dir.path());
        updater.boot().unwrap();
        roll_out(&mut updater, &doc, &bundle, 0, 3);
        drop(updater);

        let mut updater = open(dir.path());
        let boot = updater.boot().unwrap();
        assert!(boot.serve.is_none());
        let resumed: Vec<u32> = boot
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::Publish { payload, .. } => Some(
                    serde_json::from_slice::<ChunkRequest>(payload)
                        .unwrap()
                        .index,
                ),
                _ => None,
            })
            .collect();
        assert_eq!(resumed, [3]);
        // The retained document comes again after reconnecting: nothing new.
        assert!(updater
            .handle_at(Event::Document(&doc.sign(&key())), 10)
            .is_empty());
        let effects = serve_chunks(&mut updater, boot.effects, &bundle, &doc, usize::MAX);
        assert!(effects.iter().any(|e| matches!(e, Effect::Serve(_))));
        assert_eq!(updater.state().state, Some(DeviceState::Active));
    }

    /// Leaves `dir` as an agent that stopped while loading and testing the bundle leaves
    /// it: the whole bundle in the part file, the `installing` marker with `attempts`.
    fn stop_during_install(dir: &std::path::Path, bundle: &[u8], attempts: u32) {
        let doc = document(bundle);
        let mut updater = open(dir);
        updater.boot().unwrap();
        let count = doc.bundle.chunk_count() as usize;
        roll_out(&mut updater, &doc, bundle, 0, count - 1);
        drop(updater);
        std::fs::write(dir.join(download::PART_FILE), bundle).unwrap();
        std::fs::write(
            dir.join(INSTALLING_FILE),
            format!("{} {attempts}\n", doc.bundle.sha256),
        )
        .unwrap();
    }

    #[test]
    fn a_stop_while_installing_tries_again_once_then_fails_the_rollout() {
        let bundle = kws(2, "1.3.0");

        // First stop (a power cut, say): the install runs again and succeeds.
        let dir = tempfile::tempdir().unwrap();
        stop_during_install(dir.path(), &bundle, 1);
        let mut updater = open(dir.path());
        let boot = updater.boot().unwrap();
        assert!(boot.serve.is_some(), "the new slot serves");
        assert_eq!(updater.state().state, Some(DeviceState::Active));
        assert!(!dir.path().join(INSTALLING_FILE).exists());

        // The second stop on the same bundle (an engine that aborts on it): the rollout
        // fails with the reason, the configured model keeps serving, nothing is retried.
        let dir = tempfile::tempdir().unwrap();
        stop_during_install(dir.path(), &bundle, MAX_INSTALL_ATTEMPTS);
        let mut updater = open(dir.path());
        let boot = updater.boot().unwrap();
        assert!(boot.serve.is_none(), "the configured model serves");
        let failed = reports(&boot.effects);
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].state, DeviceState::Failed);
        let reason = failed[0].reason.as_deref().unwrap_or_default();
        assert!(reason.contains("stopped 2 times while loading"), "{reason}");
        assert_eq!(updater.state().state, Some(DeviceState::Failed));
        assert!(!dir.path().join(INSTALLING_FILE).exists());
        assert!(!dir.path().join(download::PART_FILE).exists());
        drop(updater);
        let mut updater = open(dir.path());
        assert!(updater.boot().unwrap().effects.is_empty());
        assert_eq!(updater.state().state, Some(DeviceState::Failed));
    }

    #[test]
    fn a_crash_loop_on_probation_returns_to_the_configured_model_at_boot() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = kws(2, "1.3.0");
        let doc = document(&bundle);
        let mut updater = open(dir.path());
        updater.boot().unwrap();
        updater.set_serving("kws 1.2.0");
        roll_out(&mut updater, &doc, &bundle, 0, usize::MAX);
        assert_eq!(updater.state().state, Some(DeviceState::Active));
        drop(updater);

        // Two starts on probation are tolerated; the third is a crash loop.
        for _ in 0..2 {
            let boot = open(dir.path()).boot().unwrap();
            assert!(boot.serve.is_some());
        }
        let mut updater = open(dir.path());
        let boot = updater.boot().unwrap();
        assert!(boot.serve.is_none(), "the configured model serves again");
        let sent = reports(&boot.effects);
        assert_eq!(sent[0].state, DeviceState::RolledBack);
        assert_eq!(
            sent[0].reason.as_deref(),
            Some("crash loop: 3 starts since activation")
        );
        assert_eq!(sent[0].serving, "kws 1.2.0");
        // And it stays so across starts.
        let mut updater = open(dir.path());
        assert!(updater.boot().unwrap().serve.is_none());

        // The next release's roll-back returns to the configured model too, not to the
        // release that crash-looped.
        let fixed = kws(3, "1.3.1");
        let doc = release("kws-1.3.1", "1.3.1", 3, &fixed, 200);
        roll_out(&mut updater, &doc, &fixed, 0, usize::MAX);
        assert_eq!(updater.state().state, Some(DeviceState::Active));
        let effects = updater.handle_at(breach(&latencies(100, 80.0)), 1_000);
        assert!(effects.iter().any(|e| matches!(e, Effect::ServeConfigured)));
        assert!(!effects.iter().any(|e| matches!(e, Effect::Serve(_))));
    }

    /// Issue 15: a roll-back to the configured model left the slot on probation, and a
    /// later rollout of the same bundle re-activated it without the sequence check.
    #[test]
    fn a_roll_back_to_the_configured_model_ends_probation_and_the_same_bundle_is_refused_later() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = kws(2, "1.3.0");
        let doc = document(&bundle);
        let mut updater = open(dir.path());
        updater.boot().unwrap();
        updater.set_serving("kws 1.2.0");
        roll_out(&mut updater, &doc, &bundle, 0, usize::MAX);
        assert!(updater.slots().state().probation);
        let effects = updater.handle_at(breach(&latencies(100, 80.0)), 1_000);
        assert!(effects.iter().any(|e| matches!(e, Effect::ServeConfigured)));
        assert!(
            !updater.slots().state().probation,
            "the slot no longer serves: no probation"
        );
        // Restarts are not counted as starts on probation either.
        drop(updater);
        let mut updater = open(dir.path());
        assert!(updater.boot().unwrap().serve.is_none());
        assert_eq!(updater.slots().state().boots_on_probation, 0);

        // The same bundle under another rollout id is not re-activated: like any
        // bundle, it needs a sequence above every one activated before.
        let again = release("kws-1.3.0-again", "1.3.0", 2, &bundle, 200);
        let effects = roll_out(&mut updater, &again, &bundle, 2_000, usize::MAX);
        assert!(served(&effects).is_empty(), "{effects:?}");
        let last = reports(&effects).pop().unwrap();
        assert_eq!(last.state, DeviceState::Failed);
        let reason = last.reason.unwrap_or_default();
        assert!(reason.contains("older sequence"), "{reason}");
        drop(updater);
        assert!(open(dir.path()).boot().unwrap().serve.is_none());
    }

    #[test]
    fn a_roll_back_to_the_configured_model_stopped_before_it_ended_probation_ends_it_at_boot() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = kws(2, "1.3.0");
        let mut updater = open(dir.path());
        updater.boot().unwrap();
        roll_out(&mut updater, &document(&bundle), &bundle, 0, usize::MAX);
        drop(updater);
        // Stopped right after writing the marker (or a state left by an older agent).
        std::fs::write(dir.path().join(SERVE_CONFIGURED_FILE), b"1\n").unwrap();
        let mut updater = open(dir.path());
        let boot = updater.boot().unwrap();
        assert!(boot.serve.is_none());
        assert_eq!(reports(&boot.effects)[0].state, DeviceState::RolledBack);
        assert!(!updater.slots().state().probation);
        assert_eq!(updater.slots().state().boots_on_probation, 0);
    }

    /// `n` requests of `ms` milliseconds each.
    fn latencies(n: u64, ms: f64) -> Histogram {
        let mut h = Histogram::new();
        for _ in 0..n {
            h.record(Duration::from_secs_f64(ms / 1e3));
        }
        h
    }

    /// An interval of 100 requests of 80 ms, over every test bundle's p99 SLO.
    fn breach(slow: &Histogram) -> Event<'_> {
        Event::Interval {
            ok: 100,
            errors: 0,
            latency: slow,
        }
    }

    fn served(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Serve(loaded) => Some(loaded.id.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_breach_or_an_abort_returns_to_the_release_in_the_other_slot() {
        let dir = tempfile::tempdir().unwrap();
        let mut updater = open(dir.path());
        updater.boot().unwrap();
        let fast = latencies(100, 3.0);
        let soak = Event::Interval {
            ok: 100,
            errors: 0,
            latency: &fast,
        };
        let good = kws(2, "1.3.0");
        let doc = release("a", "1.3.0", 2, &good, 100);
        roll_out(&mut updater, &doc, &good, 0, usize::MAX);
        updater.handle_at(soak, 1_000);
        updater.handle_at(soak, 70_000);
        assert_eq!(updater.state().state, Some(DeviceState::Confirmed));

        // A release breaching its p99 returns to 1.3.0.
        let bad = kws(3, "1.4.0");
        let doc = release("b", "1.4.0", 3, &bad, 101);
        let effects = roll_out(&mut updater, &doc, &bad, 80_000, usize::MAX);
        assert_eq!(served(&effects), ["kws@1.4.0"]);
        let effects = updater.handle_at(breach(&latencies(100, 80.0)), 90_000);
        assert_eq!(served(&effects), ["kws@1.3.0"]);
        let sent = reports(&effects);
        assert_eq!(sent[0].state, DeviceState::RolledBack);
        assert!(
            sent[0].reason.as_deref().unwrap().contains("p99"),
            "{sent:?}"
        );
        assert_eq!(updater.slots().active().unwrap().1.version, "1.3.0");

        // An aborted rollout does the same.
        let next = kws(4, "1.5.0");
        let mut doc = release("c", "1.5.0", 4, &next, 102);
        roll_out(&mut updater, &doc, &next, 100_000, usize::MAX);
        assert_eq!(updater.slots().active().unwrap().1.version, "1.5.0");
        doc.revision = 103;
        doc.phase = Phase::Aborted;
        let effects = updater.handle_at(Event::Document(&doc.sign(&key())), 110_000);
        assert_eq!(served(&effects), ["kws@1.3.0"]);
        assert_eq!(reports(&effects)[0].state, DeviceState::RolledBack);
    }
}
