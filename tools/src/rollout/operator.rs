//! The operator's I/O around [`Controller`]: the state files, the MQTT loop that
//! publishes documents, serves chunks and feeds reports in, and the commands
//! `perch rollout promote|pause|resume|abort` send to a running loop.
//!
//! Only plain `mqtt://` is supported for now (no TLS). Anyone who can publish on
//! `perch/fleet/{group}/rollout/command` can steer a running rollout, and anyone who
//! can publish on `perch/+/rollout` or `perch/+/metrics` feeds its gates: the broker's
//! ACLs must restrict `perch/fleet/#` to operators and each device to its own topics.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use perch_runtime::rollout::{
    self as wire, ChunkRequest, DeviceStatus, Phase, RolloutDocument, SignedDocument,
};
use perch_runtime::wire::MetricsReport;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};

use super::{Clock, Command, Controller, Effect, PlanError, RolloutState};

/// How often the controller judges the rollout.
pub const TICK: Duration = Duration::from_millis(250);
/// The least time between two saves of the state while only reports change it.
const SAVE_EVERY: Duration = Duration::from_secs(5);
/// How long a finished rollout's operator waits for the devices to report where they
/// ended up (confirmed, rolled back) before it exits.
pub const SETTLE: Duration = Duration::from_secs(30);

/// Why the operator loop or a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// The plan, the state or a flag is not usable.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A state or bundle file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// The broker refused a request or could not be reached.
    #[error("MQTT: {0}")]
    Mqtt(String),
    /// Nothing answered a command.
    #[error("no controller is running for group {group}: start it with `perch rollout run --group {group}`")]
    NoController {
        /// The group.
        group: String,
    },
}

/// Where a group's rollout is kept: `{dir}/{group}.json` (the state) and
/// `{dir}/{group}.perch` (the bundle it serves).
#[derive(Debug, Clone)]
pub struct Store {
    /// The state folder.
    pub dir: PathBuf,
    /// The group.
    pub group: String,
}

impl Store {
    /// The store of `group` in `dir`.
    ///
    /// # Errors
    ///
    /// The group is not a valid topic segment (it names files too).
    pub fn new(dir: impl Into<PathBuf>, group: &str) -> Result<Store, PlanError> {
        wire::check_id("group", group).map_err(PlanError)?;
        Ok(Store {
            dir: dir.into(),
            group: group.to_string(),
        })
    }

    /// The state file.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.group))
    }

    /// The bundle copy.
    pub fn bundle_path(&self) -> PathBuf {
        self.dir.join(format!("{}.perch", self.group))
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
            Err(error) => return Err(OperatorError::Io { path, error }),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            OperatorError::Plan(PlanError(format!(
                "{} is not a rollout state: {e}",
                path.display()
            )))
        })
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
        let bytes = serde_json::to_vec(state).map_err(|e| OperatorError::Io {
            path: path.clone(),
            error: std::io::Error::other(e),
        })?;
        self.write(&path, &bytes)
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
        std::fs::read(&path).map_err(|error| OperatorError::Io { path, error })
    }

    fn write(&self, path: &Path, bytes: &[u8]) -> Result<(), OperatorError> {
        std::fs::create_dir_all(&self.dir).map_err(|error| OperatorError::Io {
            path: self.dir.clone(),
            error,
        })?;
        perch_runtime::fsio::write_atomic(path, bytes).map_err(|error| OperatorError::Io {
            path: path.to_path_buf(),
            error,
        })
    }
}

/// The broker's host and port from `mqtt://host[:port]` (port 1883 by default).
///
/// # Errors
///
/// Another scheme (`mqtts://` is not supported yet) or a malformed address.
pub fn parse_broker(url: &str) -> Result<(String, u16), PlanError> {
    let rest = url.strip_prefix("mqtt://").ok_or_else(|| {
        PlanError(format!(
            "--broker {url:?}: expected mqtt://HOST[:PORT] (TLS is not supported by perch rollout yet)"
        ))
    })?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| PlanError(format!("--broker {url:?}: {p:?} is not a port")))?,
        ),
        None => (rest, 1883),
    };
    if host.is_empty() {
        return Err(PlanError(format!("--broker {url:?}: no host")));
    }
    Ok((host.to_string(), port))
}

/// The topic commands for `group` travel on.
pub fn command_topic(group: &str) -> String {
    format!("perch/fleet/{group}/rollout/command")
}

/// A command on the wire: `{"command":"pause","reason":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandMessage {
    /// What to do.
    pub command: Command,
    /// Why (logged in the decision log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What the network thread hands the loop.
enum Net {
    Connected,
    Message(String, Vec<u8>),
    PubAck,
    Down(String),
}

/// A client and a thread driving its connection (reconnecting after a pause on errors).
fn connect(
    broker: &str,
    client_id: String,
) -> Result<(Client, mpsc::Receiver<Net>), OperatorError> {
    let (host, port) = parse_broker(broker)?;
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(10));
    let max = wire::MAX_CHUNK_SIZE as usize + 4096;
    options.set_max_packet_size(max, max);
    let (client, mut connection) = Client::new(options, 256);
    // Chunk requests and chunks are small writes answered by small writes: without
    // TCP_NODELAY, Nagle's algorithm meets the broker's delayed ACK and each chunk
    // round trip waits ~40 ms.
    let mut network = connection.eventloop.network_options();
    network.set_tcp_nodelay(true);
    connection.eventloop.set_network_options(network);
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("perch-rollout-mqtt".into())
        .spawn(move || {
            for event in connection.iter() {
                let net = match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Net::Connected,
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        Net::Message(p.topic, p.payload.to_vec())
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => Net::PubAck,
                    Ok(_) => continue,
                    Err(e) => {
                        if tx.send(Net::Down(e.to_string())).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                };
                if tx.send(net).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| OperatorError::Mqtt(format!("cannot start the network thread: {e}")))?;
    Ok((client, rx))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the loop tells its caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress<'a> {
    /// A decision or an ignored command (the controller's log line).
    Decision(&'a str),
    /// The broker connection came up or went down (with why).
    Connection(Result<(), String>),
    /// Something arrived that could not be used (a malformed request or report).
    Dropped(String),
    /// The controller was judged (every [`TICK`]).
    Tick,
}

/// Runs `controller` over MQTT until the rollout completes or aborts: publishes its
/// documents (signed with `key`, retained, QoS 1), answers chunk requests from
/// `bundle`, feeds device states and metrics in, applies commands, ticks every
/// [`TICK`] and saves the state to `store` after changes. `report` sees every decision
/// and connection change; after each input it may also look at the controller.
///
/// Returns the final phase.
///
/// # Errors
///
/// The broker address is unusable or the state cannot be saved.
pub fn run(
    mut controller: Controller,
    bundle: &[u8],
    key: &SigningKey,
    broker: &str,
    store: &Store,
    report: &mut dyn FnMut(&Controller, Progress<'_>),
) -> Result<Phase, OperatorError> {
    let group = controller.state().plan.group.clone();
    let rollout_id = controller.state().plan.rollout_id.clone();
    let (client, events) = connect(broker, format!("perch-rollout-{group}"))?;
    let base = controller.state().clock_ms;
    let started = Instant::now();
    let now = || Clock::new(base + started.elapsed().as_millis() as u64, unix_ms());
    let publish_document = |doc: &RolloutDocument| {
        let payload = doc.sign(key);
        client
            .publish(
                wire::document_topic(&doc.group),
                QoS::AtLeastOnce,
                true,
                payload,
            )
            .map_err(|e| OperatorError::Mqtt(e.to_string()))
    };
    store.save(controller.state())?;
    publish_document(&controller.document())?;
    let mut dirty = false;
    let mut last_save = Instant::now();
    let mut last_tick = Instant::now();
    let command_topic = command_topic(&group);
    let mut settle_by: Option<Instant> = None;
    loop {
        let wait = TICK.saturating_sub(last_tick.elapsed());
        let mut effects = Vec::new();
        match events.recv_timeout(wait) {
            Ok(Net::Connected) => {
                // Chunk requests at QoS 0, as devices send them (a lost one is asked
                // again); state reports and metrics at QoS 1.
                let topics = [
                    ("perch/+/ota/req", QoS::AtMostOnce),
                    ("perch/+/rollout", QoS::AtLeastOnce),
                    ("perch/+/metrics", QoS::AtLeastOnce),
                ];
                for (topic, qos) in topics {
                    client
                        .subscribe(topic, qos)
                        .map_err(|e| OperatorError::Mqtt(e.to_string()))?;
                }
                client
                    .subscribe(command_topic.as_str(), QoS::AtLeastOnce)
                    .map_err(|e| OperatorError::Mqtt(e.to_string()))?;
                publish_document(&controller.document())?;
                report(&controller, Progress::Connection(Ok(())));
            }
            Ok(Net::Down(why)) => report(&controller, Progress::Connection(Err(why))),
            Ok(Net::PubAck) => {}
            Ok(Net::Message(topic, payload)) => {
                if topic == command_topic {
                    match serde_json::from_slice::<CommandMessage>(&payload) {
                        Ok(m) => {
                            effects = controller.command(m.command, m.reason.as_deref(), now())
                        }
                        Err(e) => report(
                            &controller,
                            Progress::Dropped(format!("malformed command on {topic}: {e}")),
                        ),
                    }
                } else if let Some(device) = device_of(&topic, "ota/req") {
                    match serde_json::from_slice::<ChunkRequest>(&payload) {
                        Ok(req) if req.rollout_id == rollout_id => {
                            let doc_allows = controller.state().phase != Phase::Aborted
                                && controller.in_cohort(device);
                            let range = controller.state().plan.bundle.chunk_range(req.index);
                            if let (true, Some(range)) = (doc_allows, range) {
                                let data = bundle
                                    .get(range.start as usize..range.end as usize)
                                    .unwrap_or_default();
                                let frame = wire::encode_chunk(&rollout_id, req.index, data);
                                // QoS 0 and dropped when the queue is full: the
                                // device asks again.
                                let _ = client.try_publish(
                                    wire::chunk_topic(device),
                                    QoS::AtMostOnce,
                                    false,
                                    frame,
                                );
                            }
                        }
                        Ok(_) => {}
                        Err(e) => report(
                            &controller,
                            Progress::Dropped(format!(
                                "malformed chunk request from {device}: {e}"
                            )),
                        ),
                    }
                } else if let Some(device) = device_of(&topic, "rollout") {
                    match DeviceStatus::from_json(&payload) {
                        Ok(status) if status.device == device => {
                            dirty |= controller.on_status(status, now());
                        }
                        Ok(status) => report(
                            &controller,
                            Progress::Dropped(format!(
                                "status naming device {} on {topic}",
                                status.device
                            )),
                        ),
                        Err(e) => report(&controller, Progress::Dropped(format!("{device}: {e}"))),
                    }
                } else if let Some(device) = device_of(&topic, "metrics") {
                    match MetricsReport::decode(&payload) {
                        Ok(m) => dirty |= controller.on_metrics(device, &m, now()),
                        Err(e) => report(
                            &controller,
                            Progress::Dropped(format!("malformed metrics from {device}: {e}")),
                        ),
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(OperatorError::Mqtt("the network thread stopped".into()))
            }
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            effects.extend(controller.tick(now()));
            report(&controller, Progress::Tick);
        }
        let changed = !effects.is_empty();
        for effect in effects {
            match effect {
                Effect::PublishDocument(doc) => publish_document(&doc)?,
                Effect::Log(line) => report(&controller, Progress::Decision(&line)),
            }
        }
        if changed || (dirty && last_save.elapsed() >= SAVE_EVERY) {
            store.save(controller.state())?;
            dirty = false;
            last_save = Instant::now();
        }
        if controller.is_finished() {
            // Keep listening until every device reported where it ended up (confirmed,
            // rolled back...), for a bounded time; the final document is retained, so
            // devices that are away now still follow it later.
            let deadline = *settle_by.get_or_insert_with(|| Instant::now() + SETTLE);
            if controller.is_settled() || Instant::now() >= deadline {
                if dirty {
                    store.save(controller.state())?;
                }
                let _ = client.disconnect();
                return Ok(controller.state().phase);
            }
        }
    }
}

/// The device id of `perch/{device}/{suffix}`.
fn device_of<'t>(topic: &'t str, suffix: &str) -> Option<&'t str> {
    let device = topic
        .strip_prefix("perch/")?
        .strip_suffix(suffix)?
        .strip_suffix('/')?;
    (!device.is_empty() && !device.contains('/')).then_some(device)
}

/// The document a running controller published after a command.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandOutcome {
    /// The group.
    pub group: String,
    /// The command sent.
    pub command: Command,
    /// The rollout id.
    pub rollout_id: String,
    /// The new revision.
    pub revision: u64,
    /// The new phase.
    pub phase: Phase,
    /// The cohort share now, percent.
    pub percent: f64,
}

impl std::fmt::Display for CommandOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: rollout {} of group {} is {} at {} % (revision {})",
            self.command.as_str(),
            self.rollout_id,
            self.group,
            self.phase,
            self.percent,
            self.revision
        )
    }
}

/// Reads a document from its signed envelope without checking the signature (the
/// command only displays it; devices verify it).
fn peek_document(payload: &[u8]) -> Option<RolloutDocument> {
    let signed: SignedDocument = serde_json::from_slice(payload).ok()?;
    serde_json::from_str(&signed.document).ok()
}

/// Sends `command` to the controller running for `group` and waits up to `timeout`
/// for the document it publishes in answer.
///
/// # Errors
///
/// [`OperatorError::NoController`] when no document for the group is retained or none
/// newer arrives in time; [`PlanError`] when the command does not apply in the
/// rollout's phase; [`OperatorError::Mqtt`] when the broker cannot be used.
pub fn send_command(
    broker: &str,
    group: &str,
    command: Command,
    reason: Option<String>,
    timeout: Duration,
) -> Result<CommandOutcome, OperatorError> {
    wire::check_id("group", group).map_err(PlanError)?;
    let mut id = [0u8; 4];
    getrandom::fill(&mut id).map_err(|e| OperatorError::Mqtt(format!("no random source: {e}")))?;
    let (client, events) = connect(broker, format!("perch-rollout-cli-{}", hex::encode(id)))?;
    let topic = wire::document_topic(group);
    let deadline = Instant::now() + timeout;
    let no_controller = || OperatorError::NoController {
        group: group.to_string(),
    };
    let mut before: Option<RolloutDocument> = None;
    let mut sent = false;
    let mut last_error = None;
    let outcome = loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break Err(match (last_error, sent) {
                (Some(e), false) => OperatorError::Mqtt(format!("cannot reach {broker}: {e}")),
                _ => no_controller(),
            });
        };
        // The retained document arrives right after subscribing; without one within a
        // short while there is no rollout to command.
        let step = if sent || before.is_some() {
            left
        } else {
            left.min(Duration::from_millis(500))
        };
        match events.recv_timeout(step) {
            Ok(Net::Connected) => {
                client
                    .subscribe(topic.as_str(), QoS::AtLeastOnce)
                    .map_err(|e| OperatorError::Mqtt(e.to_string()))?;
            }
            Ok(Net::Message(t, payload)) if t == topic => {
                let Some(doc) = peek_document(&payload) else {
                    continue;
                };
                match &before {
                    None => {
                        check_applies(command, doc.phase, group)?;
                        let message = CommandMessage {
                            command,
                            reason: reason.clone(),
                        };
                        let body = serde_json::to_vec(&message)
                            .map_err(|e| OperatorError::Mqtt(e.to_string()))?;
                        client
                            .publish(command_topic(group), QoS::AtLeastOnce, false, body)
                            .map_err(|e| OperatorError::Mqtt(e.to_string()))?;
                        sent = true;
                        before = Some(doc);
                    }
                    Some(old) if doc.revision > old.revision => {
                        break Ok(CommandOutcome {
                            group: group.to_string(),
                            command,
                            rollout_id: doc.rollout_id.clone(),
                            revision: doc.revision,
                            phase: doc.phase,
                            percent: f64::from(doc.percent_bp) / 100.0,
                        });
                    }
                    Some(_) => {}
                }
            }
            Ok(Net::Down(e)) => last_error = Some(e),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) if !sent && before.is_none() => {
                // Connected but nothing retained yet: keep waiting until the deadline.
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                break Err(OperatorError::Mqtt("the network thread stopped".into()))
            }
        }
    };
    let _ = client.disconnect();
    outcome
}

/// Refuses a command the rollout's phase makes pointless, before sending it.
fn check_applies(command: Command, phase: Phase, group: &str) -> Result<(), PlanError> {
    let ok = match command {
        Command::Promote | Command::Abort => matches!(phase, Phase::Running | Phase::Paused),
        Command::Pause => phase == Phase::Running,
        Command::Resume => phase == Phase::Paused,
    };
    if ok {
        Ok(())
    } else {
        Err(PlanError(format!(
            "cannot {} the rollout of group {group}: it is {phase}",
            command.as_str()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses_parse_and_tls_is_refused_naming_the_flag() {
        assert_eq!(
            parse_broker("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".to_string(), 1884)
        );
        assert_eq!(
            parse_broker("mqtt://broker.local").unwrap(),
            ("broker.local".to_string(), 1883)
        );
        for bad in ["mqtts://h:8883", "h:1883", "mqtt://:1", "mqtt://h:x"] {
            assert!(
                parse_broker(bad).unwrap_err().0.contains("--broker"),
                "{bad}"
            );
        }
    }

    #[test]
    fn device_topics_yield_the_device_id_only_for_one_segment() {
        assert_eq!(device_of("perch/pi-1/ota/req", "ota/req"), Some("pi-1"));
        assert_eq!(device_of("perch/pi-1/metrics", "metrics"), Some("pi-1"));
        assert_eq!(device_of("perch/pi-1/metrics/json", "metrics"), None);
        assert_eq!(device_of("perch/a/b/rollout", "rollout"), None);
        assert_eq!(device_of("perch//rollout", "rollout"), None);
    }

    #[test]
    fn commands_that_do_not_apply_to_the_phase_are_refused_before_sending() {
        assert!(check_applies(Command::Pause, Phase::Running, "g").is_ok());
        assert!(check_applies(Command::Resume, Phase::Running, "g").is_err());
        let err = check_applies(Command::Abort, Phase::Completed, "g").unwrap_err();
        assert!(err.0.contains("completed"), "{err}");
    }
}
