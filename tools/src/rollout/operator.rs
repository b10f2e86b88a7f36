//! The operator's I/O around [`Controller`]: the state files, the MQTT loop that
//! publishes documents, serves chunks and feeds reports in, and the commands
//! `perch rollout promote|pause|resume|abort` send to a running loop.
//!
//! The connection goes through `perch_mqtt` like the devices': `mqtt://` or `mqtts://`
//! (with the broker's CA, and a client certificate if the broker asks for one), IPv6
//! hosts in brackets, credentials, reconnection with backoff. Anyone who can publish on
//! `perch/fleet/{group}/rollout/command` only reaches a running rollout with a command
//! signed by the fleet key for the rollout's latest document ([`CommandMessage`]);
//! anything else is logged and ignored. Device reports are checked, not authenticated
//! ([`Controller::on_status`]): the broker's ACLs must restrict each device to its own
//! topics.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use perch_mqtt::topics::{self, DeviceTopic};
use perch_mqtt::{pump, Backoff, BrokerUrl, ClientOptions, Endpoint, NetEvent, TlsFiles};
use perch_runtime::bundle::TextSignatureError;
use perch_runtime::repository_command::SignedCommand;
use perch_runtime::rollout::{
    self as wire, ChunkRequest, DeviceStatus, Phase, RolloutDocument, SignedDocument,
};
use perch_runtime::wire::MetricsReport;
use rumqttc::{AsyncClient, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::controller::{Clock, Command, Controller, Effect};
pub use super::error::OperatorError;
use super::plan::PlanError;
pub use super::store::Store;

/// How often the controller judges the rollout.
pub const TICK: Duration = Duration::from_millis(250);
/// The least time between two saves of the state while only reports change it.
const SAVE_EVERY: Duration = Duration::from_secs(5);
/// How long a finished rollout's operator waits for the devices to report where they
/// ended up (confirmed, rolled back) before it exits.
pub const SETTLE: Duration = Duration::from_secs(30);
/// The longest wait between two connection attempts (the backoff's cap; its windows
/// start at a tenth of it).
const RECONNECT_CAP: Duration = Duration::from_secs(1);

/// The broker from `--broker`, with `--mqtt-ca`, `--mqtt-client-cert`/
/// `--mqtt-client-key` and `--mqtt-username`/password: TLS files exactly with
/// `mqtts://` (a client certificate with its key), a password only with a user name.
///
/// # Errors
///
/// A [`PlanError`] naming the flag.
pub fn broker_endpoint(
    url: &str,
    ca: Option<PathBuf>,
    client: (Option<PathBuf>, Option<PathBuf>),
    username: Option<String>,
    password: Option<String>,
) -> Result<Endpoint, PlanError> {
    let parsed: BrokerUrl = url
        .parse()
        .map_err(|e: String| PlanError(format!("--broker {e}")))?;
    let client = match client {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(PlanError(
                "--mqtt-client-cert needs its key (--mqtt-client-key)".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(PlanError(
                "--mqtt-client-key needs its certificate (--mqtt-client-cert)".into(),
            ))
        }
    };
    let tls = match (parsed.tls, ca) {
        (true, Some(ca)) => Some(TlsFiles { ca, client }),
        (true, None) => {
            return Err(PlanError(format!(
                "--broker {url:?}: mqtts:// needs the broker's CA file (--mqtt-ca)"
            )))
        }
        (false, None) if client.is_none() => None,
        (false, _) => {
            return Err(PlanError(format!(
                "--broker {url:?}: TLS files need an mqtts:// broker URL"
            )))
        }
    };
    if password.is_some() && username.is_none() {
        return Err(PlanError(
            "a password needs a user name (--mqtt-username)".into(),
        ));
    }
    Ok(Endpoint {
        host: parsed.host,
        port: parsed.port,
        tls,
        username,
        password,
    })
}

/// The options of an operator client named `client_id`, with packets large enough for
/// the largest chunk.
fn client_options(broker: &Endpoint, client_id: String) -> ClientOptions {
    let mut options = ClientOptions::new(client_id, broker.clone());
    options.keep_alive = Duration::from_secs(10);
    let max = wire::MAX_CHUNK_SIZE as usize + 4096;
    options.max_incoming_packet = max;
    options.max_outgoing_packet = max;
    options.request_capacity = 256;
    options
}

/// A command as the operator signs it: what to do, and the document it answers (its
/// rollout id and revision), which makes it good for that document only.
///
/// The revision is the replay guard: the controller accepts a command only while the
/// document it names is the latest, and every document it publishes (a command that
/// took effect included) carries a higher revision, so a command recorded off the
/// broker and published again is stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandMessage {
    /// What to do.
    pub command: Command,
    /// Why (logged in the decision log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The rollout commanded.
    pub rollout_id: String,
    /// The revision of the document the operator saw when commanding.
    pub revision: u64,
}

/// The largest command payload read, bytes.
pub const MAX_COMMAND_BYTES: usize = 4096;

impl CommandMessage {
    /// The message signed with `key`, as published.
    pub fn sign(&self, key: &SigningKey) -> Vec<u8> {
        // A struct of strings and numbers always serializes.
        let command = serde_json::to_string(self).unwrap_or_default();
        let (key_id, signature) = perch_runtime::bundle::sign_text(key, &command);
        let signed = SignedCommand {
            key_id,
            signature,
            command,
        };
        serde_json::to_vec(&signed).unwrap_or_default()
    }

    /// Accepts `payload` as a command for the controller of `rollout_id` whose latest
    /// document has `revision`: signed by `trusted`, naming that rollout and that
    /// revision.
    ///
    /// # Errors
    ///
    /// Why the command is ignored, one line: too large, malformed, unsigned or signed
    /// by another key, a bad signature, another rollout, or a stale revision (replayed,
    /// or sent before the latest document).
    pub fn accept(
        payload: &[u8],
        trusted: &ed25519_dalek::VerifyingKey,
        rollout_id: &str,
        revision: u64,
    ) -> Result<CommandMessage, String> {
        if payload.len() > MAX_COMMAND_BYTES {
            return Err(format!(
                "a {}-byte command (at most {MAX_COMMAND_BYTES})",
                payload.len()
            ));
        }
        let signed: SignedCommand = serde_json::from_slice(payload)
            .map_err(|e| format!("an unsigned or malformed command: {e}"))?;
        let trusted = std::slice::from_ref(trusted);
        perch_runtime::bundle::verify_text(
            trusted,
            &signed.key_id,
            &signed.signature,
            &signed.command,
        )
        .map_err(|e| match e {
            TextSignatureError::UnknownKey => format!(
                "a command signed by key {} (this rollout's key is {})",
                signed.key_id,
                perch_runtime::bundle::key_id(&trusted[0])
            ),
            TextSignatureError::NotHex => {
                "a command whose signature is not 64 bytes of hex".to_string()
            }
            TextSignatureError::DoesNotVerify => {
                "a command whose signature does not verify".to_string()
            }
        })?;
        let message: CommandMessage = serde_json::from_str(&signed.command)
            .map_err(|e| format!("a signed but malformed command: {e}"))?;
        if message.rollout_id != rollout_id {
            return Err(format!(
                "a {} command for rollout {}, not {rollout_id}",
                message.command.as_str(),
                message.rollout_id
            ));
        }
        if message.revision != revision {
            return Err(format!(
                "a stale {} command (for revision {}, the latest is {revision}): replayed, \
                 or sent before the latest document",
                message.command.as_str(),
                message.revision
            ));
        }
        Ok(message)
    }
}

/// A client of `broker` named `client_id`, and the events of its connection, pumped
/// by a task of the current runtime (reconnecting with backoff).
pub(super) fn connect(
    broker: &Endpoint,
    client_id: String,
) -> Result<(AsyncClient, mpsc::Receiver<NetEvent>), OperatorError> {
    let (client, eventloop) = client_options(broker, client_id).connect()?;
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(pump(
        eventloop,
        Backoff::new(RECONNECT_CAP / 10, RECONNECT_CAP),
        tx,
    ));
    Ok((client, rx))
}

/// Runs `work` to completion on a runtime of its own on this thread.
pub(super) fn block_on<T>(
    work: impl std::future::Future<Output = Result<T, OperatorError>>,
) -> Result<T, OperatorError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| OperatorError::System(format!("cannot start the async runtime: {e}")))?
        .block_on(work)
}

/// The next event within `wait`: `Ok(None)` when none came.
pub(super) async fn next_event(
    events: &mut mpsc::Receiver<NetEvent>,
    wait: Duration,
) -> Result<Option<NetEvent>, OperatorError> {
    match tokio::time::timeout(wait, events.recv()).await {
        Ok(Some(event)) => Ok(Some(event)),
        Ok(None) => Err(OperatorError::System(
            "the MQTT connection task stopped".into(),
        )),
        Err(_) => Ok(None),
    }
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
/// [`TICK`] and saves the state to `store` after changes, recording each save in the
/// journal ([`Store::record`]). `report` sees every decision
/// and connection change; after each input it may also look at the controller.
///
/// Returns the final phase.
///
/// # Errors
///
/// The broker address is unusable or the state cannot be saved.
pub fn run(
    controller: Controller,
    bundle: &[u8],
    key: &SigningKey,
    broker: &Endpoint,
    store: &Store,
    report: &mut dyn FnMut(&Controller, Progress<'_>),
) -> Result<Phase, OperatorError> {
    block_on(operate(
        controller,
        Serving { bundle, key, store },
        broker,
        report,
    ))
}

/// What the operator serves from and saves to.
struct Serving<'a> {
    /// The bundle's bytes, for chunks.
    bundle: &'a [u8],
    /// The key that signs the documents.
    key: &'a SigningKey,
    /// Where the state is saved.
    store: &'a Store,
}

/// Publishes `doc` signed with `key`, retained, at QoS 1.
async fn publish_document(
    client: &AsyncClient,
    key: &SigningKey,
    doc: &RolloutDocument,
) -> Result<(), OperatorError> {
    let topic = topics::rollout_document_of(&doc.group, doc.model.as_deref());
    client
        .publish(topic, QoS::AtLeastOnce, true, doc.sign(key))
        .await?;
    Ok(())
}

/// Saves the state, then records it in the journal (and the metrics file).
fn keep(store: &Store, controller: &Controller, unix_ms: u64) -> Result<(), OperatorError> {
    store.save(controller.state())?;
    store.record(controller, unix_ms)
}

async fn operate(
    mut controller: Controller,
    serving: Serving<'_>,
    broker: &Endpoint,
    report: &mut dyn FnMut(&Controller, Progress<'_>),
) -> Result<Phase, OperatorError> {
    let Serving { bundle, key, store } = serving;
    let group = controller.state().plan.group.clone();
    let model = controller.state().plan.model.clone();
    let rollout_id = controller.state().plan.rollout_id.clone();
    let client_id = match &model {
        None => format!("perch-rollout-{group}"),
        Some(model) => format!("perch-rollout-{group}-model-{model}"),
    };
    let (client, mut events) = connect(broker, client_id)?;
    let base = controller.state().clock_ms;
    let started = Instant::now();
    let now = || Clock::new(base + started.elapsed().as_millis() as u64, unix_ms());
    keep(store, &controller, now().unix_ms)?;
    publish_document(&client, key, &controller.document()).await?;
    let mut dirty = false;
    let mut last_save = Instant::now();
    let mut last_tick = Instant::now();
    let command_topic = topics::rollout_command_of(&group, model.as_deref());
    let mut settle_by: Option<Instant> = None;
    loop {
        let wait = TICK.saturating_sub(last_tick.elapsed());
        let mut effects = Vec::new();
        match next_event(&mut events, wait).await? {
            Some(NetEvent::Connected) => {
                // Chunk requests at QoS 0, as devices send them (a lost one is asked
                // again); state reports, metrics and commands at QoS 1.
                let subscriptions = [
                    (DeviceTopic::ChunkRequest.filter(), QoS::AtMostOnce),
                    (DeviceTopic::Rollout.filter(), QoS::AtLeastOnce),
                    (DeviceTopic::Metrics.filter(), QoS::AtLeastOnce),
                    (command_topic.clone(), QoS::AtLeastOnce),
                ];
                for (topic, qos) in subscriptions {
                    client.subscribe(topic, qos).await?;
                }
                publish_document(&client, key, &controller.document()).await?;
                report(&controller, Progress::Connection(Ok(())));
            }
            Some(NetEvent::Disconnected(why)) => {
                report(&controller, Progress::Connection(Err(why)))
            }
            Some(NetEvent::Message(message)) => {
                let (topic, payload) = (message.topic.as_str(), &message.payload[..]);
                if topic == command_topic {
                    let revision = controller.state().revision;
                    let trusted = key.verifying_key();
                    match CommandMessage::accept(payload, &trusted, &rollout_id, revision) {
                        Ok(m) => {
                            effects = controller.command(m.command, m.reason.as_deref(), now())
                        }
                        Err(why) => report(
                            &controller,
                            Progress::Dropped(format!("ignored {why} on {topic}")),
                        ),
                    }
                } else if let Some(device) = topics::device_of(topic, DeviceTopic::ChunkRequest) {
                    match serde_json::from_slice::<ChunkRequest>(payload) {
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
                                    DeviceTopic::Chunk.of(device),
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
                } else if let Some(device) = topics::device_of(topic, DeviceTopic::Rollout) {
                    match DeviceStatus::from_json(payload) {
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
                } else if let Some(device) = topics::device_of(topic, DeviceTopic::Metrics) {
                    match MetricsReport::decode(payload) {
                        Ok(m) => dirty |= controller.on_metrics(device, &m, now()),
                        Err(e) => report(
                            &controller,
                            Progress::Dropped(format!("malformed metrics from {device}: {e}")),
                        ),
                    }
                }
            }
            Some(NetEvent::Subscribed | NetEvent::Sent(_) | NetEvent::PubAck(_)) | None => {}
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            effects.extend(controller.tick(now()));
            report(&controller, Progress::Tick);
        }
        let changed = !effects.is_empty();
        for effect in effects {
            match effect {
                Effect::PublishDocument(doc) => publish_document(&client, key, &doc).await?,
                Effect::Log(line) => report(&controller, Progress::Decision(&line)),
            }
        }
        if changed || (dirty && last_save.elapsed() >= SAVE_EVERY) {
            keep(store, &controller, now().unix_ms)?;
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
                    keep(store, &controller, now().unix_ms)?;
                }
                let _ = client.try_disconnect();
                return Ok(controller.state().phase);
            }
        }
    }
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

/// Sends `command`, signed with `key` (the fleet key the rollout's documents are
/// signed with) for the group's latest document, to the controller running for `group`
/// and waits up to `timeout` for the document it publishes in answer.
///
/// # Errors
///
/// [`OperatorError::NoController`] when no document for the group is retained or none
/// newer arrives in time; [`PlanError`] when the command does not apply in the
/// rollout's phase; [`OperatorError::Unreachable`] when the broker cannot be reached.
pub fn send_command(
    broker: &Endpoint,
    group: &str,
    model: Option<&str>,
    key: &SigningKey,
    command: Command,
    reason: Option<String>,
    timeout: Duration,
) -> Result<CommandOutcome, OperatorError> {
    wire::check_id("group", group).map_err(PlanError)?;
    let mut id = [0u8; 4];
    getrandom::fill(&mut id)
        .map_err(|e| OperatorError::System(format!("no random source: {e}")))?;
    block_on(async {
        let (client, mut events) =
            connect(broker, format!("perch-rollout-cli-{}", hex::encode(id)))?;
        let ask = Ask {
            broker,
            group,
            model,
            key,
            command,
            reason,
            timeout,
        };
        let outcome = command_outcome(&client, &mut events, ask).await;
        let _ = client.try_disconnect();
        outcome
    })
}

/// What [`send_command`] asks, of whom.
struct Ask<'a> {
    broker: &'a Endpoint,
    group: &'a str,
    /// The model whose rollout is commanded (`None`: the primary's).
    model: Option<&'a str>,
    key: &'a SigningKey,
    command: Command,
    reason: Option<String>,
    timeout: Duration,
}

/// The loop of [`send_command`].
async fn command_outcome(
    client: &AsyncClient,
    events: &mut mpsc::Receiver<NetEvent>,
    ask: Ask<'_>,
) -> Result<CommandOutcome, OperatorError> {
    let topic = topics::rollout_document_of(ask.group, ask.model);
    let deadline = Instant::now() + ask.timeout;
    let mut before: Option<RolloutDocument> = None;
    let mut sent = false;
    let mut last_error = None;
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return Err(match (last_error, sent) {
                (Some(reason), false) => OperatorError::Unreachable {
                    broker: ask.broker.url(),
                    reason,
                },
                _ => OperatorError::NoController {
                    group: ask.group.to_string(),
                },
            });
        };
        // The retained document arrives right after subscribing; without one within a
        // short while there is no rollout to command.
        let step = if sent || before.is_some() {
            left
        } else {
            left.min(Duration::from_millis(500))
        };
        match next_event(events, step).await? {
            Some(NetEvent::Connected) => {
                client.subscribe(topic.as_str(), QoS::AtLeastOnce).await?;
            }
            Some(NetEvent::Message(message)) if message.topic == topic => {
                let Some(doc) = peek_document(&message.payload) else {
                    continue;
                };
                match &before {
                    None => {
                        check_applies(ask.command, doc.phase, ask.group)?;
                        let body = CommandMessage {
                            command: ask.command,
                            reason: ask.reason.clone(),
                            rollout_id: doc.rollout_id.clone(),
                            revision: doc.revision,
                        }
                        .sign(ask.key);
                        let to = topics::rollout_command_of(ask.group, ask.model);
                        client.publish(to, QoS::AtLeastOnce, false, body).await?;
                        sent = true;
                        before = Some(doc);
                    }
                    Some(old) if doc.revision > old.revision => {
                        return Ok(CommandOutcome {
                            group: ask.group.to_string(),
                            command: ask.command,
                            rollout_id: doc.rollout_id.clone(),
                            revision: doc.revision,
                            phase: doc.phase,
                            percent: f64::from(doc.percent_bp) / 100.0,
                        });
                    }
                    Some(_) => {}
                }
            }
            Some(NetEvent::Disconnected(e)) => last_error = Some(e),
            // Connected but nothing retained yet: keep waiting until the deadline.
            Some(_) | None => {}
        }
    }
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

    fn access(url: &str) -> Result<Endpoint, PlanError> {
        broker_endpoint(url, None, (None, None), None, None)
    }

    #[test]
    fn broker_addresses_parse_and_mqtts_without_a_ca_is_refused_naming_the_flag() {
        assert_eq!(
            access("mqtt://127.0.0.1:1884").unwrap().url(),
            BrokerUrl::plain("127.0.0.1", 1884)
        );
        assert_eq!(
            access("mqtt://broker.local").unwrap().url(),
            BrokerUrl::plain("broker.local", 1883)
        );
        for bad in ["mqtts://h:8883", "h:1883", "mqtt://:1", "mqtt://h:x"] {
            assert!(access(bad).unwrap_err().0.contains("--broker"), "{bad}");
        }
    }

    #[test]
    fn an_ipv6_broker_over_tls_with_a_client_certificate_is_accepted() {
        let broker = broker_endpoint(
            "mqtts://[fd00::1]",
            Some("ca.pem".into()),
            (Some("op.pem".into()), Some("op.key".into())),
            Some("operator".into()),
            Some("secret".into()),
        )
        .unwrap();
        assert_eq!((broker.host.as_str(), broker.port), ("fd00::1", 8883));
        let tls = broker.tls.as_ref().unwrap();
        assert_eq!(tls.client, Some(("op.pem".into(), "op.key".into())));
        let options = client_options(&broker, "c".into());
        assert_eq!(options.endpoint.username.as_deref(), Some("operator"));
        let err = broker_endpoint("mqtt://h", Some("ca.pem".into()), (None, None), None, None)
            .unwrap_err();
        assert!(err.0.contains("mqtts://"), "{err}");
    }

    #[test]
    fn commands_that_do_not_apply_to_the_phase_are_refused_before_sending() {
        assert!(check_applies(Command::Pause, Phase::Running, "g").is_ok());
        assert!(check_applies(Command::Resume, Phase::Running, "g").is_err());
        let err = check_applies(Command::Abort, Phase::Completed, "g").unwrap_err();
        assert!(err.0.contains("completed"), "{err}");
    }
}
