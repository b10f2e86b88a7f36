//! The agent: loads the model, serves it over MQTT and HTTP, and publishes its metrics.
//!
//! [`run`] is all of `perchd` but argument parsing. It
//!
//! 1. loads the model (a plain file, or a signed bundle verified against the trusted
//!    keys), self-tests it against its golden outputs and warms it up ([`load`]); a model
//!    that fails its self-test is served as not ready, with the reason in its health;
//! 2. starts the embedded broker when no broker is configured ([`crate::broker`]);
//! 3. serves the Open Inference Protocol over HTTP ([`crate::http`]);
//! 4. connects to the broker, answers inference requests, and every report interval
//!    publishes a metrics report, its JSON twin and the health message
//!    ([`crate::mqtt`]), reconnecting with capped exponential backoff and jitter while
//!    reports wait in the on-disk spool;
//! 5. with a sensor configured, samples the accelerometer on a thread of its own and
//!    publishes the served model's verdict on each vibration window ([`crate::sensor`]).
//!
//! It runs until `shutdown` completes, then says `offline`, moves undelivered reports
//! to the spool and disconnects.
//!
//! ```no_run
//! use perch_firmware::agent;
//! use perch_firmware::config::Config;
//!
//! # async fn example() -> Result<(), agent::AgentError> {
//! let config = Config::new("gw-1".parse().unwrap(), "models/kws-dscnn/model.onnx");
//! agent::run(config, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use perch_runtime::bundle::{self, Bundle, BundleError, Limits};
use perch_runtime::engine::{EngineError, Golden, LoadOptions, Model, SelfTestReport, Tolerance};
use perch_runtime::histogram::Histogram;
use perch_runtime::wire::{self, Health, MetricsReport, ModelId, ModelState, Version};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Outgoing, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::backoff::Backoff;
use crate::config::{Broker, BrokerConfig, Config, DeviceId, ModelConfig, OtaSettings, Slo};
use crate::mqtt::{self, Outbox, Topics, TwinContext};
use crate::ota::{self, Effect, Updater};
use crate::service::{InferenceService, ServiceLimits};
use crate::spool::Spool;
use crate::{broker, BootReport};

/// Reports kept in memory while the broker is connected, before they overflow to the
/// spool (a broker that stops acknowledging).
const MEMORY_REPORTS: usize = 16;
/// Inference requests queued or running at once; more are answered "busy" at once.
const MAX_QUEUED_REQUESTS: usize = 64;
/// The shortest wait before the next connection attempt, so a zero jitter draw does not
/// spin.
const MIN_RECONNECT_DELAY: Duration = Duration::from_millis(20);
/// How long a clean shutdown waits for the broker to take the goodbye.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Sequence numbers reserved on disk at a time (see [`SeqState`]).
const SEQ_LEASE: u32 = 1024;
/// The agent's own state file in the spool folder.
const STATE_FILE: &str = "agent.state";

/// What stops the agent from starting, or from running on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The model file could not be loaded (a model that loads but fails its self-test
    /// is not an error: it is reported and served as not ready).
    #[error("cannot load {}: {reason}", path.display())]
    Model {
        /// The model file.
        path: PathBuf,
        /// The engine's reason.
        reason: EngineError,
    },
    /// The bundle could not be read, verified or loaded.
    #[error("cannot load bundle {}: {reason}", path.display())]
    Bundle {
        /// The bundle file.
        path: PathBuf,
        /// Why.
        reason: BundleError,
    },
    /// A bundle is configured but no key to verify it.
    #[error(
        "{} is a signed bundle: give the public keys it may be signed with \
         (model.trusted_keys, --trusted-key)",
        path.display()
    )]
    NoTrustedKeys {
        /// The bundle file.
        path: PathBuf,
    },
    /// The model's name or version does not fit a report.
    #[error("the model's name or version does not fit a report: {0}")]
    Wire(perch_runtime::Error),
    /// The spool folder could not be opened.
    #[error("cannot open the report spool {}: {reason}", dir.display())]
    Spool {
        /// Its folder.
        dir: PathBuf,
        /// Why.
        reason: io::Error,
    },
    /// The embedded broker did not start.
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// The MQTT connection could not be set up (TLS files).
    #[error(transparent)]
    Mqtt(#[from] mqtt::SetupError),
    /// The HTTP address could not be bound.
    #[error(
        "cannot listen for HTTP on {addr}: {reason} (set http_listen or --http-listen, or `off`)"
    )]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: io::Error,
    },
    /// The configured sensor could not start.
    #[error(transparent)]
    Sensor(#[from] crate::sensor::SensorError),
    /// Over-the-air updates could not start (their folder, state or keys).
    #[error("over-the-air updates: {0}")]
    Ota(#[from] ota::OtaError),
    /// A task of the agent failed unexpectedly.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A model ready to serve, with the outcome of its start-up checks.
#[derive(Debug)]
pub struct Loaded {
    /// The loaded model.
    pub model: Model,
    /// Its name and version in reports.
    pub id: ModelId,
    /// Self-test, warm-up latencies and the first health message.
    pub boot: BootReport,
    /// The bundle's SLOs (empty for a plain model file).
    pub slo: Slo,
    /// Where it came from, for the log: the file, or the bundle's name, version,
    /// sequence and signing key.
    pub source: String,
    /// The bundle's release sequence (`None` for a plain model file).
    pub sequence: Option<u64>,
}

/// Loads the configured model and checks it as the agent does at start-up: a bundle
/// (detected by its content) is parsed, its signature verified against the trusted
/// keys, its model loaded and self-tested against its own golden files; a plain model
/// file is loaded and self-tested against the golden folder beside it. A model that
/// passes is warmed up with `warmup_runs` inferences. Blocks: call it from a blocking
/// context.
///
/// # Errors
///
/// The model or bundle does not load or verify. A failed self-test is not an error:
/// the report says [`ModelState::SelfTestFailed`] and why.
pub fn load(config: &ModelConfig) -> Result<Loaded, AgentError> {
    let started = Instant::now();
    let path = &config.path;
    if looks_like_bundle(path) {
        return load_bundle(config, started);
    }
    let model = Model::load(path, &LoadOptions::new()).map_err(|reason| AgentError::Model {
        path: path.clone(),
        reason,
    })?;
    let load_time = started.elapsed();
    let name = config.name.clone().unwrap_or_else(|| {
        path.parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "model".into())
    });
    let id = ModelId::new(&name, config.version.unwrap_or(Version::new(0, 0, 0)))
        .map_err(AgentError::Wire)?;
    let golden_dir = config
        .golden
        .clone()
        .unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).join("golden"));
    let variant = config.variant.clone().or_else(|| {
        let file = path.file_name()?.to_str()?;
        let stem = file
            .strip_suffix(".onnx")
            .or_else(|| file.strip_suffix(".nnef.tgz"))?;
        stem.split_once('.').map(|(_, v)| v.to_string())
    });
    let checked = Golden::load_variant(&golden_dir, variant.as_deref()).and_then(|golden| {
        let mut session = model.session()?;
        let report = session.self_test(&golden, Tolerance::default());
        Ok((golden, report))
    });
    let (golden, self_test) = match checked {
        Ok((golden, Ok(report))) => (Some(golden), Ok(report)),
        Ok((_, Err(e))) => (None, Err(e.to_string())),
        Err(e) => (None, Err(format!("golden data: {e}"))),
    };
    let boot = finish_boot(&model, &id, golden.as_ref(), self_test, config, load_time)?;
    Ok(Loaded {
        model,
        id,
        boot,
        slo: Slo::default(),
        source: format!("model file {}", path.display()),
        sequence: None,
    })
}

/// Whether `path` holds a bundle: its extension, or its first bytes.
fn looks_like_bundle(path: &Path) -> bool {
    if path.extension().is_some_and(|e| e == bundle::EXTENSION) {
        return true;
    }
    let mut head = [0u8; 512];
    let read = std::fs::File::open(path).and_then(|mut f| {
        use std::io::Read;
        f.read(&mut head)
    });
    read.is_ok_and(|n| bundle::is_bundle(&head[..n]))
}

fn load_bundle(config: &ModelConfig, started: Instant) -> Result<Loaded, AgentError> {
    let path = &config.path;
    let bundle_err = |reason| AgentError::Bundle {
        path: path.clone(),
        reason,
    };
    if config.trusted_keys.is_empty() {
        return Err(AgentError::NoTrustedKeys { path: path.clone() });
    }
    let keys = config
        .trusted_keys
        .iter()
        .map(bundle::read_verifying_key)
        .collect::<Result<Vec<_>, _>>()
        .map_err(bundle_err)?;
    load_verified_bundle(config, &keys, started)
}

/// Loads the signed bundle at `config.path` as [`load`] does, verified against `keys`
/// (already read) instead of `config.trusted_keys`: how over-the-air updates load the
/// bundles in their slots. Blocks.
///
/// # Errors
///
/// The bundle does not read, verify or load. A failed self-test is not an error.
pub fn load_bundle_with_keys(
    config: &ModelConfig,
    keys: &[bundle::VerifyingKey],
) -> Result<Loaded, AgentError> {
    load_verified_bundle(config, keys, Instant::now())
}

fn load_verified_bundle(
    config: &ModelConfig,
    keys: &[bundle::VerifyingKey],
    started: Instant,
) -> Result<Loaded, AgentError> {
    let path = &config.path;
    let bundle_err = |reason| AgentError::Bundle {
        path: path.clone(),
        reason,
    };
    let verified = Bundle::read_file(path, &Limits::default())
        .and_then(|b| b.verify(keys))
        .map_err(bundle_err)?;
    let model = verified
        .load_model(&LoadOptions::new())
        .map_err(bundle_err)?;
    let load_time = started.elapsed();
    let manifest = verified.manifest();
    let part = |n: u64| u16::try_from(n).unwrap_or(u16::MAX);
    let version = Version::new(
        part(manifest.version.major),
        part(manifest.version.minor),
        part(manifest.version.patch),
    );
    let id = ModelId::new(&manifest.name, version).map_err(AgentError::Wire)?;
    let self_test = verified.self_test(&model).map_err(|e| e.to_string());
    let golden = self_test.is_ok().then(|| verified.golden());
    let boot = finish_boot(&model, &id, golden, self_test, config, load_time)?;
    Ok(Loaded {
        model,
        id,
        boot,
        slo: Slo {
            p99_ms: manifest.slo.p99_ms,
            max_error_rate: manifest.slo.max_error_rate,
        },
        source: format!(
            "bundle {} {} {} (sequence {}, signed by key {})",
            path.display(),
            manifest.name,
            manifest.version,
            manifest.sequence,
            verified.key_id()
        ),
        sequence: Some(manifest.sequence),
    })
}

/// Warms up a model that passed its self-test and describes the boot.
fn finish_boot(
    model: &Model,
    id: &ModelId,
    golden: Option<&Golden>,
    self_test: Result<SelfTestReport, String>,
    config: &ModelConfig,
    load_time: Duration,
) -> Result<BootReport, AgentError> {
    let warm_started = Instant::now();
    let mut latency = Histogram::new();
    let model_err = |reason| AgentError::Model {
        path: config.path.clone(),
        reason,
    };
    if let (Some(golden), true) = (golden, self_test.is_ok()) {
        let inputs = golden.input_refs().map_err(model_err)?;
        let mut session = model.session().map_err(model_err)?;
        for _ in 0..config.warmup_runs {
            let t = Instant::now();
            drop(session.run(&inputs).map_err(model_err)?);
            latency.record(t.elapsed());
        }
    }
    let (state, self_test, failure) = match self_test {
        Ok(report) => (ModelState::Ready, Some(report), None),
        Err(reason) => (ModelState::SelfTestFailed, None, Some(reason)),
    };
    let health = Health {
        format: wire::FORMAT_VERSION,
        uptime_s: 0,
        model: Some(id.clone()),
        state,
        boot_count: 1,
        rss_kib: crate::rss_kib().unwrap_or(0),
        last_error: failure.as_deref().map(wire::truncated),
    };
    let warmup = MetricsReport {
        format: wire::FORMAT_VERSION,
        seq: 0,
        uptime_s: 0,
        interval_ms: u32::try_from(warm_started.elapsed().as_millis()).unwrap_or(u32::MAX),
        model: id.clone(),
        ok: u32::try_from(latency.count()).unwrap_or(u32::MAX),
        errors: 0,
        latency,
    };
    Ok(BootReport {
        health,
        warmup,
        self_test,
        failure,
        load_time,
    })
}

/// Runs the agent until `shutdown` completes (see the [module docs](self)).
///
/// # Errors
///
/// Start-up failed: the model does not load, the spool folder cannot be opened, the
/// embedded broker's port or the HTTP address is taken, a TLS file is unreadable. Once
/// running, the agent does not stop on its own: a lost broker is retried, bad requests
/// are answered with errors.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let started = Instant::now();
    let notifier = crate::systemd::Notifier::from_env();
    let (updater, boot_effects, loaded) = {
        let (model_config, ota, device) = (
            config.model.clone(),
            config.ota.clone(),
            config.device_id.clone(),
        );
        blocking(move || boot(&model_config, ota.as_ref(), &device)).await??
    };
    let ready = loaded.boot.ready();
    match &loaded.boot.failure {
        None => log::info!(
            "model {} from {}: self-test passed, loaded in {:.0} ms, warm-up p50 {}",
            loaded.id,
            loaded.source,
            loaded.boot.load_time.as_secs_f64() * 1e3,
            loaded
                .boot
                .warmup
                .latency
                .quantile(0.5)
                .map_or("-".into(), |d| format!("{:.3} ms", d.as_secs_f64() * 1e3)),
        ),
        Some(reason) => log::error!(
            "model {} from {} FAILED its self-test and will not serve: {reason}",
            loaded.id,
            loaded.source
        ),
    }
    let slo = effective_slo(&config.slo, &loaded.slo);
    let service = InferenceService::new(
        loaded.model,
        loaded.id.clone(),
        ServiceLimits {
            max_payload_bytes: config.max_payload_bytes,
            ..ServiceLimits::DEFAULT
        },
    );
    service.set_ready(ready);

    let spool_config = config.spool.clone();
    let (spool, seq) = blocking(move || {
        let dir = &spool_config.dir;
        let spool = Spool::open(dir, spool_config.max_records, spool_config.max_bytes);
        let spool = spool.map_err(|reason| AgentError::Spool {
            dir: dir.clone(),
            reason,
        })?;
        let seq = SeqState::open(dir).map_err(|reason| AgentError::Spool {
            dir: dir.clone(),
            reason,
        })?;
        Ok::<_, AgentError>((spool, seq))
    })
    .await??;
    if !spool.is_empty() {
        log::info!(
            "{} reports from an earlier run wait in the spool {}",
            spool.len(),
            spool.dir().display()
        );
    }

    let (broker_config, embedded) = match &config.broker {
        Broker::Embedded { port } => {
            let (port, payload) = (*port, config.max_payload_bytes + mqtt::INCOMING_HEADROOM);
            blocking(move || broker::start(port, payload)).await??;
            (BrokerConfig::plain("127.0.0.1", port), true)
        }
        Broker::External(b) => (b.clone(), false),
    };
    let options = mqtt::options(&config.device_id, &broker_config, config.max_payload_bytes)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopping = notifier.clone();
    tokio::spawn(async move {
        shutdown.await;
        if let Err(e) = stopping.stopping() {
            log::warn!("{e}");
        }
        let _ = stop_tx.send(true);
    });

    let http = match config.http_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|reason| AgentError::Http { addr, reason })?;
            let bound = listener.local_addr().unwrap_or(addr);
            log::info!("HTTP (Open Inference Protocol v2, /metrics) on http://{bound}");
            let mut stop = stop_rx.clone();
            let serve = crate::http::serve(listener, service.clone(), async move {
                let _ = stop.wait_for(|s| *s).await;
            });
            Some((bound, tokio::spawn(serve)))
        }
        None => None,
    };
    log::info!(
        "device {}: MQTT {}{}:{}{}, reports every {:?}, spool {}",
        config.device_id,
        if broker_config.tls.is_some() {
            "mqtts://"
        } else {
            "mqtt://"
        },
        broker_config.host,
        broker_config.port,
        if embedded { " (embedded broker)" } else { "" },
        config.report_interval,
        config.spool.dir.display(),
    );

    let (client, mut eventloop) = AsyncClient::new(options, 64);
    // Replies are small writes answered by small writes: without TCP_NODELAY, Nagle's
    // algorithm meets the peer's delayed ACK and adds up to 40 ms to a round trip.
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let (net_tx, net_rx) = mpsc::channel(256);
    let backoff = Backoff::new(broker_config.reconnect_base, broker_config.reconnect_cap);
    let poller = tokio::spawn(poll(eventloop, net_tx, backoff));
    let sensor = match config.sensor.clone() {
        Some(sensor) => {
            let (device, service, client) =
                (config.device_id.clone(), service.clone(), client.clone());
            Some(blocking(move || crate::sensor::start(&sensor, &device, service, client)).await??)
        }
        None => None,
    };
    // Serving: HTTP is bound, the MQTT connection task runs (a broker that is away is
    // retried while reports spool), the sensor samples. Tell systemd (Type=notify).
    let status = match &loaded.boot.failure {
        None => format!(
            "serving {} (MQTT {}:{})",
            loaded.id, broker_config.host, broker_config.port
        ),
        Some(reason) => format!(
            "model {} failed its self-test, not serving: {reason}",
            loaded.id
        ),
    };
    if let Err(e) = notifier.ready(&status) {
        log::warn!("{e}");
    }
    notifier.spawn_watchdog(stop_rx.clone());
    let mut health = loaded.boot.health.clone();
    health.boot_count = seq.boot_count;
    let (effects_tx, effects_rx) = mpsc::unbounded_channel();
    let ota = match updater {
        Some(updater) => Some(OtaLink::start(updater, boot_effects, effects_tx.clone())?),
        None => None,
    };
    let agent = Agent {
        topics: Topics::new(&config.device_id),
        device: config.device_id.clone(),
        service,
        client,
        outbox: Outbox::new(spool, MEMORY_REPORTS),
        seq,
        started,
        slo,
        health,
        boot_failure: loaded.boot.failure.clone(),
        http_addr: http.as_ref().map(|(a, _)| *a),
        connected: false,
        ever_connected: false,
        disconnected_at: None,
        queued: Arc::new(AtomicUsize::new(0)),
        permits: Arc::new(Semaphore::new(
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        )),
        broker_name: format!("{}:{}", broker_config.host, broker_config.port),
        ota,
        effects_tx,
        model_config: config.model.clone(),
        slo_override: config.slo,
    };
    agent
        .run(net_rx, effects_rx, stop_rx, config.report_interval, poller)
        .await;
    if let Some(sensor) = sensor {
        blocking(move || sensor.stop()).await?;
    }
    if let Some((_, task)) = http {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::error!("HTTP server: {e}"),
            Err(e) => log::error!("HTTP server task: {e}"),
        }
    }
    Ok(())
}

/// Opens the updater when over-the-air updates are on (counting this start, which may
/// roll back a model that crash-loops) and loads the model to serve: the active slot,
/// else the configured model. Blocks.
fn boot(
    model: &ModelConfig,
    ota: Option<&OtaSettings>,
    device: &DeviceId,
) -> Result<(Option<Updater>, Vec<Effect>, Loaded), AgentError> {
    let Some(settings) = ota else {
        return Ok((None, Vec::new(), load(model)?));
    };
    let keys = model
        .trusted_keys
        .iter()
        .map(|path| {
            bundle::read_verifying_key(path).map_err(|reason| AgentError::Bundle {
                path: path.clone(),
                reason,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let config = ota::OtaConfig {
        dir: settings.dir.clone(),
        group: settings.group.clone(),
        chunk_timeout: settings.chunk_timeout,
        max_probation_boots: settings.max_probation_boots,
        warmup_runs: model.warmup_runs,
    };
    let mut updater = Updater::open(config, device.as_str(), keys)?;
    let boot = updater.boot()?;
    let from_slot = boot.serve.is_some();
    let loaded = match boot.serve {
        Some(path) => match updater.load_slot(path.clone()) {
            Ok(loaded) => loaded,
            Err(e) => {
                log::error!(
                    "the active model slot {} does not load ({e}); serving the configured model",
                    path.display()
                );
                load(model)?
            }
        },
        None => load(model)?,
    };
    updater.set_serving(&serving_name(&loaded.id));
    if let (false, Some(sequence)) = (from_slot, loaded.sequence) {
        // The configured bundle counts as installed: no rollout may go below it.
        updater.set_configured_sequence(sequence);
    }
    Ok((Some(updater), boot.effects, loaded))
}

/// A model as rollout reports name it: `name version`.
fn serving_name(id: &ModelId) -> String {
    format!("{} {}", id.name, id.version)
}

/// The SLOs in force: the configuration's, else the bundle's.
fn effective_slo(configured: &Slo, bundle: &Slo) -> Slo {
    Slo {
        p99_ms: configured.p99_ms.or(bundle.p99_ms),
        max_error_rate: configured.max_error_rate.or(bundle.max_error_rate),
    }
}

/// How often the updater is told that time passed (chunk time-outs, soak).
const OTA_TICK: Duration = Duration::from_millis(500);

/// What the agent hands the updater's thread.
#[derive(Debug)]
enum OtaInput {
    Document(Vec<u8>),
    Chunk(Vec<u8>),
    Interval {
        ok: u64,
        errors: u64,
        p99_ms: Option<f64>,
    },
}

/// The updater, running on a thread of its own (an install loads and self-tests a
/// model, which blocks), fed by the agent and answering with [`Effect`]s.
#[derive(Debug)]
struct OtaLink {
    /// The group's document topic, then the device's chunk topic.
    topics: Vec<String>,
    tx: std::sync::mpsc::Sender<OtaInput>,
}

impl OtaLink {
    fn start(
        mut updater: Updater,
        boot_effects: Vec<Effect>,
        effects: mpsc::UnboundedSender<Effect>,
    ) -> Result<OtaLink, AgentError> {
        let topics = updater.subscriptions();
        for effect in boot_effects {
            let _ = effects.send(effect);
        }
        let (tx, rx) = std::sync::mpsc::channel::<OtaInput>();
        std::thread::Builder::new()
            .name("perch-ota".into())
            .spawn(move || {
                use std::sync::mpsc::RecvTimeoutError;
                let mut last_tick = Instant::now();
                loop {
                    let input = match rx.recv_timeout(OTA_TICK) {
                        Ok(input) => Some(input),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => return,
                    };
                    let mut out = match &input {
                        Some(OtaInput::Document(payload)) => {
                            updater.handle(ota::Event::Document(payload))
                        }
                        Some(OtaInput::Chunk(frame)) => updater.handle(ota::Event::Chunk(frame)),
                        Some(OtaInput::Interval { ok, errors, p99_ms }) => {
                            updater.handle(ota::Event::Interval {
                                ok: *ok,
                                errors: *errors,
                                p99_ms: *p99_ms,
                            })
                        }
                        None => Vec::new(),
                    };
                    if last_tick.elapsed() >= OTA_TICK {
                        last_tick = Instant::now();
                        out.extend(updater.handle(ota::Event::Tick));
                    }
                    for effect in out {
                        if effects.send(effect).is_err() {
                            return;
                        }
                    }
                }
            })
            .map_err(|e| AgentError::Internal(format!("cannot start the update thread: {e}")))?;
        Ok(OtaLink { topics, tx })
    }

    /// Hands a message on one of [`topics`](Self::topics) to the updater.
    fn deliver(&self, publish: Publish) {
        let payload = publish.payload.to_vec();
        self.send(if publish.topic == self.topics[0] {
            OtaInput::Document(payload)
        } else {
            OtaInput::Chunk(payload)
        });
    }

    fn send(&self, input: OtaInput) {
        if self.tx.send(input).is_err() {
            log::error!("the update thread has stopped; over-the-air updates are off");
        }
    }
}

/// Runs blocking work (model loading, disk I/O, waiting for the broker) off the async
/// workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AgentError::Internal(e.to_string()))
}

/// What the connection task tells the agent.
#[derive(Debug)]
enum Net {
    /// Connected (again): subscribe, say online, deliver.
    Connected,
    /// A connection attempt failed or the connection dropped.
    Disconnected(String),
    /// A message on a subscribed topic.
    Message(Publish),
    /// A publish went out with this packet id (0 for QoS 0).
    Sent(u16),
    /// The broker acknowledged this packet id.
    PubAck(u16),
}

/// Drives rumqttc's event loop, which reconnects on the next poll after an error; this
/// sleeps a backoff delay first (rumqttc itself would retry at once).
async fn poll(mut eventloop: EventLoop, tx: mpsc::Sender<Net>, mut backoff: Backoff) {
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                Net::Connected
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => Net::Message(publish),
            Ok(Event::Incoming(Packet::PubAck(ack))) => Net::PubAck(ack.pkid),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Net::Sent(pkid),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(ConnectionError::RequestsDone) => return,
            Err(e) => {
                if tx.send(Net::Disconnected(e.to_string())).await.is_err() {
                    return;
                }
                let random = getrandom::u64().unwrap_or_else(|_| {
                    u64::from(
                        std::time::SystemTime::now()
                            .elapsed()
                            .map_or(7, |d| d.subsec_nanos()),
                    )
                });
                let delay = backoff.next_delay(random).max(MIN_RECONNECT_DELAY);
                log::debug!("next connection attempt in {delay:?}");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

/// The agent's running state, owned by its one task.
struct Agent {
    device: DeviceId,
    topics: Topics,
    service: InferenceService,
    client: AsyncClient,
    outbox: Outbox,
    seq: SeqState,
    started: Instant,
    slo: Slo,
    /// The latest health message.
    health: Health,
    boot_failure: Option<String>,
    http_addr: Option<SocketAddr>,
    connected: bool,
    ever_connected: bool,
    disconnected_at: Option<Instant>,
    /// Inference requests queued or running.
    queued: Arc<AtomicUsize>,
    /// One per inference allowed to run at once.
    permits: Arc<Semaphore>,
    broker_name: String,
    /// Over-the-air updates, when on.
    ota: Option<OtaLink>,
    /// Where the updater's effects (and models loaded for it) come back.
    effects_tx: mpsc::UnboundedSender<Effect>,
    /// The configured model, served again after a roll-back with no previous slot.
    model_config: ModelConfig,
    /// SLOs of the configuration, which win over a bundle's.
    slo_override: Slo,
}

impl Agent {
    async fn run(
        mut self,
        mut net: mpsc::Receiver<Net>,
        mut effects: mpsc::UnboundedReceiver<Effect>,
        mut stop: watch::Receiver<bool>,
        report_interval: Duration,
        poller: tokio::task::JoinHandle<()>,
    ) {
        let mut ticker = tokio::time::interval(report_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate
        let _ = self.service.take_interval(); // warm-up and start-up are not traffic
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                event = net.recv() => match event {
                    Some(event) => self.on_net(event),
                    None => {
                        log::error!("the MQTT connection task ended; stopping");
                        break;
                    }
                },
                Some(effect) = effects.recv() => self.on_effect(effect),
                _ = ticker.tick() => self.report(),
            }
        }
        self.shutdown(net, poller).await;
    }

    fn on_net(&mut self, event: Net) {
        match event {
            Net::Connected => {
                self.connected = true;
                match self.disconnected_at.take() {
                    Some(at) if self.ever_connected => log::info!(
                        "reconnected to the MQTT broker {} after {:.1} s; {} reports to deliver",
                        self.broker_name,
                        at.elapsed().as_secs_f64(),
                        self.outbox.pending()
                    ),
                    _ => log::info!("connected to the MQTT broker {}", self.broker_name),
                }
                self.ever_connected = true;
                self.outbox.on_connected();
                // Requests and rollout documents at QoS 1; bundle chunks at QoS 0 (as
                // the operator sends them: a lost chunk is asked for again).
                let requests = [&self.topics.infer_req, &self.topics.infer_req_bin]
                    .into_iter()
                    .map(|t| (t, QoS::AtLeastOnce));
                let ota = self.ota.iter().flat_map(|o| {
                    o.topics.iter().enumerate().map(|(i, t)| {
                        (
                            t,
                            if i == 0 {
                                QoS::AtLeastOnce
                            } else {
                                QoS::AtMostOnce
                            },
                        )
                    })
                });
                for (topic, qos) in requests.chain(ota) {
                    if let Err(e) = self.client.try_subscribe(topic.as_str(), qos) {
                        log::error!("cannot subscribe to {topic}: {e}");
                    }
                }
                let status = mqtt::online_status(&self.device, &self.health, self.http_addr);
                self.publish(&self.topics.status, true, status);
                self.publish_health();
                self.pump();
            }
            Net::Disconnected(reason) => {
                if self.connected {
                    log::warn!(
                        "lost the MQTT broker {}: {reason}; reports go to the spool until it is back",
                        self.broker_name
                    );
                    self.disconnected_at = Some(Instant::now());
                } else if !self.ever_connected && self.disconnected_at.is_none() {
                    log::warn!(
                        "cannot reach the MQTT broker {}: {reason}; retrying with backoff",
                        self.broker_name
                    );
                    self.disconnected_at = Some(Instant::now());
                } else {
                    log::debug!(
                        "MQTT broker {} still unreachable: {reason}",
                        self.broker_name
                    );
                }
                self.connected = false;
                if let Err(e) = self.outbox.on_disconnected() {
                    log::error!("cannot spool reports: {e}");
                }
            }
            Net::Message(publish) => match &self.ota {
                Some(ota) if ota.topics.contains(&publish.topic) => ota.deliver(publish),
                _ => self.on_request(publish),
            },
            Net::Sent(pkid) => self.outbox.on_sent(pkid),
            Net::PubAck(pkid) => match self.outbox.on_puback(pkid) {
                Ok(true) => self.pump(),
                Ok(false) => {}
                Err(e) => log::error!("cannot remove a delivered report from the spool: {e}"),
            },
        }
    }

    /// Answers an inference request on a blocking thread; the reply is published by
    /// the task that ran it.
    fn on_request(&mut self, publish: Publish) {
        let Some((codec, reply_topic)) = self.topics.route(&publish.topic) else {
            return;
        };
        let reply_topic = reply_topic.to_string();
        let queued = self.queued.fetch_add(1, Ordering::Relaxed);
        if queued >= MAX_QUEUED_REQUESTS {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.service.count_error();
            let reply = mqtt::busy_reply(codec, &publish.payload, queued);
            self.publish(&reply_topic, false, reply);
            return;
        }
        let (service, client, queued, permits) = (
            self.service.clone(),
            self.client.clone(),
            self.queued.clone(),
            self.permits.clone(),
        );
        tokio::spawn(async move {
            let permit = permits.acquire_owned().await;
            let payload = publish.payload.clone();
            let work_service = service.clone();
            let reply =
                tokio::task::spawn_blocking(move || mqtt::answer(&work_service, codec, &payload))
                    .await;
            drop(permit);
            let payload = match reply {
                Ok(reply) => reply.payload,
                Err(e) => {
                    log::error!("an inference failed: {e}");
                    service.count_error();
                    let id = mqtt::request_id(codec, &publish.payload);
                    mqtt::error_reply(codec, id, 500, "the inference failed inside the agent")
                }
            };
            if let Err(e) = client
                .publish(reply_topic, QoS::AtMostOnce, false, payload)
                .await
            {
                log::warn!("cannot publish an inference reply: {e}");
            }
            queued.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Carries out what the updater asks.
    fn on_effect(&mut self, effect: Effect) {
        match effect {
            Effect::Publish { topic, payload } => self.publish(&topic, false, payload),
            Effect::Report { payload, .. } => {
                if let Err(e) = self.outbox.push(payload) {
                    log::error!("a rollout report is lost: cannot spool it: {e}");
                }
                self.pump();
            }
            Effect::Serve(loaded) => self.serve(*loaded),
            Effect::ServeConfigured => {
                let (config, tx) = (self.model_config.clone(), self.effects_tx.clone());
                tokio::task::spawn_blocking(move || {
                    match load(&config) {
                    Ok(loaded) => {
                        let _ = tx.send(Effect::Serve(Box::new(loaded)));
                    }
                    Err(e) => log::error!(
                        "cannot load the configured model again: {e}; the current model keeps serving"
                    ),
                }
                });
            }
            Effect::Log { level, message } => log::log!(level, "{message}"),
        }
    }

    /// Serves `loaded` from now on. The interval so far is reported first, under the
    /// model that served it; requests in flight finish on the old model.
    fn serve(&mut self, loaded: Loaded) {
        self.report();
        let ready = loaded.boot.ready();
        let old = self.service.replace(loaded.model, loaded.id.clone());
        self.service.set_ready(ready);
        self.slo = effective_slo(&self.slo_override, &loaded.slo);
        self.boot_failure = loaded.boot.failure.clone();
        self.health.model = Some(loaded.id.clone());
        self.health.state = if ready {
            ModelState::Ready
        } else {
            ModelState::SelfTestFailed
        };
        log::info!(
            "now serving {} from {} (was {})",
            loaded.id,
            loaded.source,
            old.id()
        );
        if self.connected {
            let status = mqtt::online_status(&self.device, &self.health, self.http_addr);
            self.publish(&self.topics.status, true, status);
            self.publish_health();
        }
    }

    /// Closes the interval: its reports go to the outbox, its JSON twin and the health
    /// message out at once when connected.
    fn report(&mut self) {
        let interval = self.service.take_interval();
        let uptime_s = u32::try_from(self.started.elapsed().as_secs()).unwrap_or(u32::MAX);
        let interval_ms = u32::try_from(interval.elapsed.as_millis()).unwrap_or(u32::MAX);
        let mut pending = interval.latency.clone();
        let mut reports = Vec::new();
        loop {
            let first = reports.is_empty();
            let report = MetricsReport {
                format: wire::FORMAT_VERSION,
                seq: self.seq.next(),
                uptime_s,
                interval_ms: if first { interval_ms } else { 0 },
                model: self.service.model_id().clone(),
                ok: if first { saturate(interval.ok) } else { 0 },
                errors: if first { saturate(interval.errors) } else { 0 },
                latency: pending.take_report_chunk(),
            };
            reports.push(report);
            if pending.is_empty() {
                break;
            }
        }
        for report in &reports {
            let mut buf = [0u8; MetricsReport::MAX_ENCODED_LEN];
            match report.encode(&mut buf) {
                Ok(bytes) => {
                    if let Err(e) = self.outbox.push(bytes.to_vec()) {
                        log::error!("report {} lost: cannot spool it: {e}", report.seq);
                    }
                }
                Err(e) => log::error!("report {} lost: cannot encode it: {e}", report.seq),
            }
        }

        if let Some(ota) = &self.ota {
            ota.send(OtaInput::Interval {
                ok: interval.ok,
                errors: interval.errors,
                p99_ms: interval
                    .latency
                    .quantile(0.99)
                    .map(|d| d.as_secs_f64() * 1e3),
            });
        }
        let violations = self.slo_violations(&interval.latency, interval.ok, interval.errors);
        self.health.uptime_s = uptime_s;
        self.health.rss_kib = crate::rss_kib().unwrap_or(0);
        self.health.state = if !self.service.ready() {
            ModelState::SelfTestFailed
        } else if violations.is_empty() {
            ModelState::Ready
        } else {
            ModelState::Degraded
        };
        self.health.last_error = violations
            .first()
            .or(self.boot_failure.as_ref())
            .map(|e| wire::truncated(e));
        if self.connected {
            let seqs: Vec<u32> = reports.iter().map(|r| r.seq).collect();
            let twin = mqtt::metrics_twin(
                &reports[0],
                &seqs,
                &interval.latency,
                &TwinContext {
                    device: &self.device,
                    health: &self.health,
                    backlog: self.outbox.pending().saturating_sub(reports.len()),
                    dropped: self.outbox.dropped(),
                    violations: &violations,
                },
            );
            self.publish(&self.topics.metrics_json, false, twin);
            self.publish_health();
        }
        self.pump();
    }

    fn slo_violations(&self, latency: &Histogram, ok: u64, errors: u64) -> Vec<String> {
        let mut violations = Vec::new();
        if let (Some(limit), Some(p99)) = (self.slo.p99_ms, latency.quantile(0.99)) {
            let p99_ms = p99.as_secs_f64() * 1e3;
            if p99_ms > limit {
                violations.push(format!("p99 {p99_ms:.2} ms over the SLO of {limit} ms"));
            }
        }
        let total = ok + errors;
        if let (Some(limit), true) = (self.slo.max_error_rate, total > 0) {
            let rate = errors as f64 / total as f64;
            if rate > limit {
                violations.push(format!(
                    "error rate {:.2}% over the SLO of {:.2}%",
                    rate * 100.0,
                    limit * 100.0
                ));
            }
        }
        violations
    }

    fn publish_health(&self) {
        let mut buf = [0u8; Health::MAX_ENCODED_LEN];
        match self.health.encode(&mut buf) {
            Ok(bytes) => self.publish(&self.topics.health, true, bytes.to_vec()),
            Err(e) => log::error!("cannot encode the health message: {e}"),
        }
        self.publish(
            &self.topics.health_json,
            true,
            mqtt::health_twin(&self.device, &self.health),
        );
    }

    /// Publishes at QoS 0 if the client's queue has room (only reports use QoS 1, see
    /// [`Outbox`]).
    fn publish(&self, topic: &str, retain: bool, payload: Vec<u8>) {
        if let Err(e) = self
            .client
            .try_publish(topic, QoS::AtMostOnce, retain, payload)
        {
            log::debug!("dropped a message to {topic}: {e}");
        }
    }

    /// Publishes the next report if one is waiting and none is in flight.
    fn pump(&mut self) {
        match self.outbox.next_publish() {
            Ok(Some(report)) => {
                let topic = self.topics.record_topic(&report).to_string();
                if let Err(e) = self
                    .client
                    .try_publish(topic, QoS::AtLeastOnce, false, report)
                {
                    log::debug!("report publish deferred: {e}");
                    self.outbox.publish_failed();
                }
            }
            Ok(None) => {}
            Err(e) => log::error!("cannot read the report spool: {e}"),
        }
    }

    async fn shutdown(mut self, mut net: mpsc::Receiver<Net>, poller: tokio::task::JoinHandle<()>) {
        log::info!("shutting down");
        self.report();
        if let Err(e) = self.outbox.flush() {
            log::error!("cannot spool the last reports: {e}");
        }
        if let Err(e) = self.seq.save() {
            log::warn!("cannot save the report sequence number: {e}");
        }
        if self.outbox.pending() > 0 {
            log::info!(
                "{} reports wait in the spool for the next start",
                self.outbox.pending()
            );
        }
        if self.connected {
            self.publish(
                &self.topics.status,
                true,
                mqtt::offline_status(&self.device),
            );
        }
        if !self.connected {
            poller.abort();
            return;
        }
        let _ = self.client.try_disconnect();
        let drain = async { while net.recv().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            poller.abort();
        }
    }
}

fn saturate(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The boot count and the next report sequence number, kept in `agent.state` in the
/// spool folder so that sequence numbers keep increasing across restarts.
///
/// Writing the file for every report would wear a device's flash for nothing, so the
/// file reserves [`SEQ_LEASE`] numbers ahead: after a crash the sequence jumps to the
/// end of the lease (a gap receivers see, but never a repeated number); a clean
/// shutdown saves the exact next number.
#[derive(Debug)]
struct SeqState {
    path: PathBuf,
    boot_count: u32,
    next: u32,
    leased_to: u32,
}

impl SeqState {
    fn open(dir: &Path) -> io::Result<SeqState> {
        let path = dir.join(STATE_FILE);
        let (mut boot_count, mut next) = (0u32, 0u32);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines() {
                    match line.split_once('=') {
                        Some(("boot_count", v)) => boot_count = v.trim().parse().unwrap_or(0),
                        Some(("next_seq", v)) => next = v.trim().parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot read {}: {e}; starting over", path.display()),
        }
        let mut state = SeqState {
            path,
            boot_count: boot_count.saturating_add(1),
            next,
            leased_to: next,
        };
        state.lease()?;
        Ok(state)
    }

    fn next(&mut self) -> u32 {
        if self.next == self.leased_to {
            if let Err(e) = self.lease() {
                log::warn!("cannot save the report sequence number: {e}");
            }
        }
        let seq = self.next;
        self.next = self.next.wrapping_add(1);
        seq
    }

    fn lease(&mut self) -> io::Result<()> {
        self.leased_to = self.next.wrapping_add(SEQ_LEASE);
        self.write(self.leased_to)
    }

    fn save(&mut self) -> io::Result<()> {
        self.leased_to = self.next;
        self.write(self.next)
    }

    fn write(&self, next: u32) -> io::Result<()> {
        let text = format!("boot_count={}\nnext_seq={next}\n", self.boot_count);
        perch_runtime::fsio::write_atomic(&self.path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
    }

    fn model_config(path: PathBuf) -> ModelConfig {
        crate::config::Config::new("t".parse().unwrap(), path).model
    }

    #[test]
    fn a_plain_model_loads_self_tested_and_warmed_up() {
        let loaded = load(&model_config(models().join("kws-dscnn/model.onnx"))).unwrap();
        assert!(loaded.boot.ready(), "{:?}", loaded.boot.failure);
        assert_eq!(loaded.id.name.as_str(), "kws-dscnn");
        assert_eq!(loaded.boot.warmup.latency.count(), 20);
    }

    #[test]
    fn a_model_failing_its_self_test_loads_in_the_failed_state() {
        let mut config = model_config(models().join("anomaly-ae/model.onnx"));
        config.variant = Some("w8".into());
        let loaded = load(&config).unwrap();
        assert_eq!(loaded.boot.health.state, ModelState::SelfTestFailed);
        assert_eq!(loaded.boot.warmup.latency.count(), 0);
    }

    #[test]
    fn a_model_that_does_not_load_is_an_error_naming_the_file_and_the_node() {
        let path = models().join("fixtures/per-axis-dq-opset11.onnx");
        let err = load(&model_config(path.clone())).unwrap_err();
        assert!(matches!(err, AgentError::Model { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("per-axis-dq-opset11.onnx"), "{text}");
        assert!(text.contains("DequantizeLinear"), "{text}");
    }

    #[test]
    fn a_name_over_32_bytes_is_refused() {
        let mut config = model_config(models().join("digits-mlp/model.onnx"));
        config.name = Some("x".repeat(33));
        assert!(matches!(load(&config), Err(AgentError::Wire(_))));
    }

    #[test]
    fn a_signed_bundle_loads_with_its_name_version_and_slo() {
        let dir = tempfile::tempdir().unwrap();
        let key = bundle::SigningKey::from_bytes(&[7; 32]);
        let public = dir.path().join("fleet.pub");
        std::fs::write(&public, bundle::verifying_key_file(&key.verifying_key())).unwrap();
        let bundle_path = dir.path().join("kws.perch");
        let packed = crate::testing::pack_kws(&key, 1, "1.2.3");
        std::fs::write(&bundle_path, packed.as_bytes()).unwrap();
        let mut config = model_config(bundle_path.clone());
        config.trusted_keys = vec![public];
        let loaded = load(&config).unwrap();
        assert!(loaded.boot.ready(), "{:?}", loaded.boot.failure);
        assert_eq!(
            loaded.id.to_string(),
            ModelId::new("kws", Version::new(1, 2, 3))
                .unwrap()
                .to_string()
        );
        assert_eq!(loaded.slo.p99_ms, Some(25.0));

        // Another key: refused, naming the bundle.
        let other = bundle::SigningKey::from_bytes(&[8; 32]);
        std::fs::write(
            &config.trusted_keys[0],
            bundle::verifying_key_file(&other.verifying_key()),
        )
        .unwrap();
        let err = load(&config).unwrap_err();
        assert!(matches!(err, AgentError::Bundle { .. }), "{err}");
        config.trusted_keys.clear();
        assert!(matches!(
            load(&config),
            Err(AgentError::NoTrustedKeys { .. })
        ));
    }

    #[test]
    fn sequence_numbers_continue_across_restarts_and_never_repeat_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = SeqState::open(dir.path()).unwrap();
        assert_eq!(state.boot_count, 1);
        assert_eq!((state.next(), state.next()), (0, 1));
        state.save().unwrap();
        let mut state = SeqState::open(dir.path()).unwrap();
        assert_eq!(state.boot_count, 2);
        assert_eq!(state.next(), 2);
        drop(state); // a crash: nothing saved
        let mut state = SeqState::open(dir.path()).unwrap();
        assert_eq!(state.boot_count, 3);
        assert!(state.next() > 2);
    }
}
