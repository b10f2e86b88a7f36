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

mod event_loop;
mod ota_link;
mod sequence;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use perch_mqtt::Backoff;
use perch_runtime::error::Chain;
use perch_runtime::wire::ModelId;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::broker;
use crate::config::{Broker, BrokerConfig, Config, ModelConfig, OtaSettings};
use crate::device::DeviceId;
use crate::load::{self, LoadError, Loaded};
use crate::mqtt::{self, Outbox, Topics};
use crate::ota::{self, Effect, Updater};
use crate::service::{InferenceService, ServiceLimits};
use crate::spool::Spool;
use event_loop::Agent;
use ota_link::OtaLink;
use sequence::SeqState;

/// Reports kept in memory while the broker is connected, before they overflow to the
/// spool (a broker that stops acknowledging).
const MEMORY_REPORTS: usize = 16;

/// What stops the agent from starting, or from running on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The model or bundle could not be loaded (a model that loads but fails its
    /// self-test is not an error: it is reported and served as not ready).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The spool folder could not be opened.
    #[error("cannot open the report spool {}", dir.display())]
    Spool {
        /// Its folder.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The embedded broker did not start.
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// The MQTT connection could not be set up (TLS files).
    #[error(transparent)]
    Mqtt(#[from] mqtt::SetupError),
    /// The HTTP address could not be bound.
    #[error("cannot listen for HTTP on {addr} (set http_listen or --http-listen, or `off`)")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The configured sensor could not start.
    #[error(transparent)]
    Sensor(#[from] crate::sensor::SensorError),
    /// Over-the-air updates could not start (their folder, state or keys).
    #[error("over-the-air updates")]
    Ota(#[from] ota::OtaError),
    /// A task of the agent failed unexpectedly.
    #[error("internal error: {0}")]
    Internal(String),
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
    let slo = config.slo.or(&loaded.slo);
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
        let spool = spool.map_err(|source| AgentError::Spool {
            dir: dir.clone(),
            source,
        })?;
        let seq = SeqState::open(dir).map_err(|source| AgentError::Spool {
            dir: dir.clone(),
            source,
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
                .map_err(|source| AgentError::Http { addr, source })?;
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
        if broker_config.endpoint.tls.is_some() {
            "mqtts://"
        } else {
            "mqtt://"
        },
        broker_config.endpoint.host,
        broker_config.endpoint.port,
        if embedded { " (embedded broker)" } else { "" },
        config.report_interval,
        config.spool.dir.display(),
    );

    let (client, eventloop) = options.connect()?;
    let (net_tx, net_rx) = mpsc::channel(256);
    let backoff = Backoff::new(broker_config.reconnect_base, broker_config.reconnect_cap);
    let poller = tokio::spawn(perch_mqtt::pump(eventloop, backoff, net_tx));
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
            loaded.id, broker_config.endpoint.host, broker_config.endpoint.port
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
        Some(updater) => Some(
            OtaLink::start(updater, boot_effects, effects_tx.clone()).map_err(|e| {
                AgentError::Internal(format!("cannot start the update thread: {e}"))
            })?,
        ),
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
        broker_name: format!(
            "{}:{}",
            broker_config.endpoint.host, broker_config.endpoint.port
        ),
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
        return Ok((None, Vec::new(), load::load(model)?));
    };
    let keys = load::read_trusted_keys(&model.trusted_keys)?;
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
                    "the active model slot {} does not load ({}); serving the configured model",
                    path.display(),
                    Chain(&e)
                );
                load::load(model)?
            }
        },
        None => load::load(model)?,
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

/// Runs blocking work (model loading, disk I/O, waiting for the broker) off the async
/// workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AgentError::Internal(e.to_string()))
}
