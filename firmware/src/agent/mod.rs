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

mod commands;
mod event_loop;
mod models;
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
use perch_runtime::slo::Slo;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::broker;
use crate::config::{Broker, BrokerConfig, Config, ModelConfig, OtaSettings};
use crate::device::DeviceId;
use crate::experiment::Experiments;
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
    /// A configured experiment was refused (a variant naming no model of the
    /// repository, a name taken by a model).
    #[error("experiments")]
    Experiment(#[from] crate::experiment::ExperimentError),
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
    let (updater, boot_effects, loaded, ota_off) = {
        let (model_config, ota, device, slo) = (
            config.model.clone(),
            config.ota.clone(),
            config.device_id.clone(),
            config.slo,
        );
        blocking(move || boot(&model_config, ota.as_ref(), slo, &device)).await??
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
            deadline: config.inference_timeout,
            ..ServiceLimits::DEFAULT
        },
    )
    .with_features(loaded.features);
    service.set_ready(ready);
    let (models, model_updaters) = {
        let (service, config) = (service.clone(), config.clone());
        blocking(move || models::repository(service, &config)).await?
    };
    let experiments = {
        let names: Vec<String> = models.index().into_iter().map(|e| e.name).collect();
        let known = |name: &str| names.iter().any(|n| n == name);
        let specs = config.experiments.clone();
        Experiments::new(specs, known, crate::experiment::shadow::DEFAULT_QUEUE)?
    };
    for e in experiments.list() {
        log::info!(
            "experiment {}: {} variants, {} shadows",
            e.spec().name,
            e.spec().variants.len(),
            e.spec().shadows.len()
        );
    }

    let spool_config = config.spool.clone();
    let (spool, seq) = blocking(move || {
        let dir = &spool_config.dir;
        let spool = Spool::open(dir, spool_config.max_records, spool_config.max_bytes);
        let spool = spool.map_err(|source| AgentError::Spool {
            dir: dir.clone(),
            source,
        })?;
        let seq = SeqState::open(dir);
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
            let limits = crate::http::HttpLimits::default();
            let serve = crate::http::serve_experiments(
                listener,
                models.clone(),
                experiments,
                limits,
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            );
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

    // Through the guard: a message over the limit (a retained one, say) is dropped and
    // counted instead of ending the connection at every reconnection.
    let (client, eventloop, guard) = options.connect_guarded(&tokio::runtime::Handle::current())?;
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
    let status = match &ota_off {
        Some(reason) => format!("{status}; {reason}"),
        None => status,
    };
    if let Err(e) = notifier.ready(&status) {
        log::warn!("{e}");
    }
    // The watchdog is fed only while inference works: nothing hung past its deadline,
    // and a probe inference returns in time.
    let probed = service.clone();
    notifier.spawn_watchdog(stop_rx.clone(), move || {
        let service = probed.clone();
        async move { service.probe().await }
    });
    let mut health = loaded.boot.health.clone();
    health.boot_count = seq.boot_count;
    let (effects_tx, effects_rx) = mpsc::unbounded_channel();
    let thread_error = |e| AgentError::Internal(format!("cannot start an update thread: {e}"));
    let mut ota = Vec::new();
    if let Some(updater) = updater {
        ota.push(
            OtaLink::start(updater, None, boot_effects, effects_tx.clone())
                .map_err(thread_error)?,
        );
    }
    for model in model_updaters {
        let link = OtaLink::start(
            model.updater,
            Some(model.name),
            model.effects,
            effects_tx.clone(),
        );
        ota.push(link.map_err(thread_error)?);
    }
    let configured = config
        .models
        .iter()
        .filter_map(|m| Some((m.config.name.clone()?, m.config.clone())))
        .collect();
    let trusted = {
        let keys = config.model.trusted_keys.clone();
        blocking(move || load::read_trusted_keys(&keys)).await??
    };
    let commands = Arc::new(commands::Commands::open(
        config.device_id.as_str(),
        trusted,
        &config.spool.dir,
    ));
    let agent = Agent {
        topics: Topics::new(&config.device_id),
        models,
        commands,
        device: config.device_id.clone(),
        service,
        client,
        guard,
        outbox: Outbox::new(spool, MEMORY_REPORTS),
        seq,
        started,
        slo,
        health,
        boot_failure: loaded.boot.failure.clone(),
        ota_off: ota_off.clone(),
        http_addr: http.as_ref().map(|(a, _)| *a),
        connected: false,
        ever_connected: false,
        disconnected_at: None,
        queued: Arc::new(AtomicUsize::new(0)),
        commands_queued: Arc::new(AtomicUsize::new(0)),
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
        configured,
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

/// What [`boot`] found: the updater (none when updates are off or their state is
/// damaged), its first effects, the model to serve, and why updates are off despite
/// the configuration, if they are.
type Booted = (Option<Updater>, Vec<Effect>, Loaded, Option<String>);

/// Opens the updater when over-the-air updates are on (counting this start, which may
/// roll back a model that crash-loops) and loads the model to serve: the active slot,
/// else the configured model. Blocks.
fn boot(
    model: &ModelConfig,
    ota: Option<&OtaSettings>,
    slo: Slo,
    device: &DeviceId,
) -> Result<Booted, AgentError> {
    let Some(settings) = ota else {
        return Ok((None, Vec::new(), load::load(model)?, None));
    };
    // The keys must read: they verify the configured bundle too.
    load::read_trusted_keys(&model.trusted_keys)?;
    // Damaged update state (a corrupt `ota.json` or `slots.json`, a slot that cannot
    // be read, a full disk) must not keep the device from serving: the configured
    // model serves with updates off, and the reason is reported until an operator
    // repairs or removes the state and restarts the agent.
    let (mut updater, boot) = match models::open_updater(settings, model, slo, device, None) {
        Ok(opened) => opened,
        Err(e) => {
            let reason = format!(
                "over-the-air updates are off: the update state in {} is damaged ({})",
                settings.dir.display(),
                Chain(&e)
            );
            log::error!("{reason}; serving the configured model");
            return Ok((None, Vec::new(), load::load(model)?, Some(reason)));
        }
    };
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
    updater.set_serving(&models::serving_name(&loaded.id));
    if let (false, Some(sequence)) = (from_slot, loaded.sequence) {
        // The configured bundle counts as installed: no rollout may go below it.
        updater.set_configured_sequence(sequence);
    }
    Ok((Some(updater), boot.effects, loaded, None))
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use perch_runtime::bundle::{verifying_key_file, SigningKey};

    use super::*;

    /// The reference keyword model (plain file, golden folder beside it), trusting one
    /// key, with updates in `dir/ota`.
    fn setup(dir: &Path) -> (ModelConfig, OtaSettings) {
        let key = SigningKey::from_bytes(&[7; 32]);
        let key_file = dir.join("fleet.pub");
        std::fs::write(&key_file, verifying_key_file(&key.verifying_key())).unwrap();
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let mut model = ModelConfig::new(models.join("kws-dscnn/model.onnx"));
        model.trusted_keys = vec![key_file];
        model.warmup_runs = 1;
        let ota = OtaSettings {
            group: "kitchen".into(),
            dir: dir.join("ota"),
            max_probation_boots: 3,
            chunk_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(600),
        };
        (model, ota)
    }

    fn device() -> DeviceId {
        "gw-1".parse().unwrap()
    }

    /// Issue 15: each of these made `perchd` exit at every start, until systemd gave up.
    #[test]
    fn damaged_update_state_serves_the_configured_model_with_updates_off_and_says_why() {
        let damage: [(&str, &[u8], &str); 3] = [
            ("ota.json", b"{\"format\": 1, \"docu", "ota.json"),
            ("slots/slots.json", b"\x00\x00garbage", "slots.json"),
            (
                "slots/slots.json",
                br#"{"format":1,"active":"a","slots":[{"name":"kws","version":"1.0.0","sequence":3,"sha256":"00","size":1},null],"highest_sequence":3,"probation":false,"boots_on_probation":0}"#,
                "is missing",
            ),
        ];
        for (file, bytes, named) in damage {
            let dir = tempfile::tempdir().unwrap();
            let (model, ota) = setup(dir.path());
            let path = ota.dir.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
            let (updater, effects, loaded, off) =
                boot(&model, Some(&ota), Slo::default(), &device())
                    .unwrap_or_else(|e| panic!("{file}: {}", Chain(&e)));
            assert!(updater.is_none() && effects.is_empty(), "{file}");
            assert!(loaded.boot.ready(), "{file}: the configured model serves");
            let off = off.unwrap_or_default();
            assert!(
                off.contains("over-the-air updates are off") && off.contains(named),
                "{file}: {off}"
            );
            // The damaged file is left for the operator to look at.
            assert_eq!(std::fs::read(&path).unwrap(), bytes);
        }
    }

    #[test]
    fn the_repository_loads_the_models_list_and_lists_the_ones_that_do_not_load() {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let text = format!(
            "[model]\npath = \"{m}/digits-mlp/model.onnx\"\nwarmup_runs = 1\n\
             [[models]]\nname = \"kws-dscnn\"\npath = \"{m}/kws-dscnn/model.onnx\"\n\
             [[models]]\nname = \"iris\"\npath = \"{m}/iris-mlp/model.onnx\"\nload = false\n\
             [[models]]\nname = \"gone\"\npath = \"{m}/nothing/model.onnx\"\n",
            m = models.display()
        );
        let config =
            Config::from_toml(Path::new("p.toml"), &text, &crate::config::Args::default()).unwrap();
        let loaded = load::load(&config.model).unwrap();
        let primary = InferenceService::new(loaded.model, loaded.id, ServiceLimits::DEFAULT);
        let (repository, _) = models::repository(primary, &config);
        let index: Vec<_> = repository
            .index()
            .into_iter()
            .map(|e| (e.name, e.reason.unwrap_or_default()))
            .collect();
        assert_eq!(index[0], ("digits-mlp".into(), String::new()));
        assert_eq!(index[1], ("kws-dscnn".into(), String::new()));
        assert_eq!(index[2], ("iris".into(), "not loaded".into()));
        assert_eq!(index[3].0, "gone");
        assert!(
            index[3].1.starts_with("load failed: cannot read"),
            "{index:?}"
        );
        assert_eq!(repository.loaded().len(), 2);
    }

    #[test]
    fn intact_update_state_opens_the_updater() {
        let dir = tempfile::tempdir().unwrap();
        let (model, ota) = setup(dir.path());
        let (updater, _, loaded, off) =
            boot(&model, Some(&ota), Slo::default(), &device()).unwrap();
        assert!(updater.is_some() && loaded.boot.ready() && off.is_none());
    }
}
