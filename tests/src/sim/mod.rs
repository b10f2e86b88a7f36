//! The host-side fleet simulator: N devices running the real agent code against one
//! broker, with one client driving inference traffic and one observing what the
//! devices report.
//!
//! - Devices ([`FleetConfig::devices`]) are `{prefix}-{i:04}`, all in one OTA group,
//!   all starting on the same signed bundle checked against one trusted key. Each runs
//!   [`perch_firmware::agent::run`] as a task on the fleet's multi-thread tokio
//!   runtime, or (the first [`FleetConfig::processes`] of them) as a `perchd` process
//!   that can be killed with SIGKILL ([`Fleet::kill_9`]) and restarted with the same
//!   folders ([`Fleet::restart`]).
//! - The broker is the agent's embedded rumqttd, started in this process and sized for
//!   the fleet, or an external one such as a [`Mosquitto`] the caller started.
//! - The [`Traffic`] driver sends the bundle's golden input to every device at a rate;
//!   the [`Observer`] keeps per device the last status, metrics and rollout state, and
//!   [`Fleet::wait_until`] blocks until a condition over them holds (failing at once if
//!   a device's agent dies).
//!
//! ```no_run
//! use std::time::Duration;
//! use perch_tests::sim::{Fleet, FleetConfig, FleetFixture};
//!
//! let dir = tempfile::tempdir()?;
//! let fixture = FleetFixture::digits(dir.path())?; // digits-mlp 1.0.0, a fresh key
//! let mut config = FleetConfig::new(20, &fixture.bundle, &fixture.key.public_path, dir.path());
//! config.rate = 5.0;
//! let fleet = Fleet::start(config)?;
//! let ids = fleet.device_ids();
//! fleet.wait_until("every device serves 1.0.0", Duration::from_secs(60), |view| {
//!     view.all_serving(ids.iter().map(String::as_str), "1.0.0")
//! })?;
//! println!("{}", fleet.summary());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod broker;
mod config;
mod device;
mod error;
mod observer;
mod operator;
mod traffic;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use perch_mqtt::Endpoint;
use perch_runtime::bundle::{self, BundleContents, ModelKind, SigningKey, TensorSignature};
use perch_runtime::engine::{LoadOptions, Model};
use perch_testkit::Port;
use serde::Serialize;

pub use broker::start_embedded;
pub use config::{BrokerSpec, FleetConfig};
pub use device::{perchd_path, DeviceMode};
pub use error::SimError;
pub use observer::{DeviceView, FleetView, Observer, SeqSet};
pub use operator::{perch_path, Operator};
pub use traffic::{Faults, Request, Traffic, TrafficCounts};

use device::Device;

/// Where a device is, for tests and tools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    /// Its id.
    pub id: String,
    /// Its position in the fleet, from 0.
    pub index: usize,
    /// Whether it is a process (`true`) or runs in-process.
    pub process: bool,
    /// Its folder.
    pub dir: PathBuf,
    /// Its report spool folder.
    pub spool_dir: PathBuf,
    /// Its over-the-air folder.
    pub ota_dir: PathBuf,
}

/// A running fleet: devices, broker, traffic driver and observer. Dropping it stops
/// every device (cleanly, then by force).
#[derive(Debug)]
pub struct Fleet {
    config: FleetConfig,
    host: String,
    port: u16,
    devices: Mutex<Vec<Device>>,
    observer: Observer,
    traffic: Traffic,
    runtime: Option<tokio::runtime::Runtime>,
    started: Instant,
    rss_baseline_kib: Option<u32>,
    /// The embedded broker's reserved port, held while the fleet lives.
    _embedded_port: Option<Port>,
}

impl Fleet {
    /// Starts the broker (if embedded), the observer and the traffic driver, waits
    /// until both are subscribed, then starts every device and returns without waiting
    /// for them to connect (use [`wait_until`](Fleet::wait_until) or
    /// [`wait_all_reporting`](Fleet::wait_all_reporting)).
    ///
    /// # Errors
    ///
    /// A folder cannot be created, the bundle does not read, the broker does not start
    /// or the clients cannot subscribe within 30 s, `perchd` is missing (process
    /// devices), a process does not start.
    pub fn start(config: FleetConfig) -> Result<Fleet, SimError> {
        if config.processes > config.devices {
            return Err(SimError::Config(format!(
                "{} process devices in a fleet of {}",
                config.processes, config.devices
            )));
        }
        if config.processes > 0 {
            perchd_path()?;
        }
        // In-process devices and an embedded broker hold both ends of every connection,
        // plus spool files: about four descriptors per device. The soft limit is raised
        // to the hard one first; only a hard limit that is too low stops the fleet.
        let needed = 4 * config.devices as u64 + 256;
        if let Some(limit) = perch_testkit::raise_open_files().filter(|&limit| limit < needed) {
            return Err(SimError::Config(format!(
                "{} devices need about {needed} open files; this process may open {limit} \
                 (raise its hard limit: `ulimit -Hn {needed}` as root, or LimitNOFILE)",
                config.devices
            )));
        }
        std::fs::create_dir_all(config.work_dir.join("devices"))?;
        let request = Request::from_bundle(&config.bundle)?;
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder
            .enable_all()
            .thread_name("perch-sim")
            .max_blocking_threads(64);
        if let Some(n) = config.worker_threads {
            builder.worker_threads(n.max(1));
        }
        let runtime = builder.build()?;
        let mut embedded_port = None;
        let (host, port) = match &config.broker {
            BrokerSpec::Embedded { port: 0 } => {
                // rumqttd binds the port it is given and cannot report one it chose.
                let reserved = Port::reserve();
                let port = reserved.get();
                embedded_port = Some(reserved);
                start_embedded(port, config.devices + 64)?;
                ("127.0.0.1".to_string(), port)
            }
            BrokerSpec::Embedded { port } => {
                start_embedded(*port, config.devices + 64)?;
                ("127.0.0.1".to_string(), *port)
            }
            BrokerSpec::External { host, port } => (host.clone(), *port),
        };
        let ids: Vec<String> = (0..config.devices)
            .map(|i| format!("{}-{i:04}", config.prefix))
            .collect();
        let broker = Endpoint::plain(&host, port);
        let observer = Observer::start(runtime.handle(), &broker)?;
        let traffic = Traffic::start(
            runtime.handle(),
            &broker,
            request,
            observer.clone(),
            ids.clone(),
            config.rate,
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(observer.is_subscribed() && traffic.is_subscribed()) {
            if Instant::now() > deadline {
                return Err(SimError::Broker(format!(
                    "the simulator's clients could not subscribe at {host}:{port} within 30s"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let rss_baseline_kib = perch_firmware::rss_kib();
        let mut devices = Vec::with_capacity(config.devices);
        for (i, id) in ids.into_iter().enumerate() {
            let mode = if i < config.processes {
                DeviceMode::Process
            } else {
                DeviceMode::InProcess
            };
            let dir = config.work_dir.join("devices").join(&id);
            let mut device = Device::new(i, id, mode, dir);
            device.start(&config, (&host, port), runtime.handle())?;
            devices.push(device);
        }
        Ok(Fleet {
            config,
            host,
            port,
            devices: Mutex::new(devices),
            observer,
            traffic,
            runtime: Some(runtime),
            started: Instant::now(),
            rss_baseline_kib,
            _embedded_port: embedded_port,
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// The broker's URL, `mqtt://host:port` (for `perch rollout --broker`).
    pub fn broker_url(&self) -> String {
        Endpoint::plain(&self.host, self.port).url().to_string()
    }

    /// The broker's host and port.
    pub fn broker(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// Starts `perch rollout start BUNDLE` for the fleet's group on its broker, signing
    /// with `key`, its state in `{work_dir}/rollouts`; `extra` are further flags.
    ///
    /// # Errors
    ///
    /// As [`Operator::start`].
    pub fn operator(
        &self,
        bundle: &Path,
        key: &Path,
        extra: &[&str],
    ) -> Result<Operator, SimError> {
        Operator::start(
            bundle,
            key,
            &self.config.group,
            &self.broker_url(),
            &self.config.work_dir.join("rollouts"),
            extra,
        )
    }

    /// Every device's id, in order.
    pub fn device_ids(&self) -> Vec<String> {
        self.lock().iter().map(|d| d.id().to_string()).collect()
    }

    /// Every device, in order.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.lock()
            .iter()
            .map(|d| DeviceInfo {
                id: d.id().to_string(),
                index: d.index(),
                process: d.mode() == DeviceMode::Process,
                dir: d.dir().to_path_buf(),
                spool_dir: d.spool_dir(),
                ota_dir: d.ota_dir(),
            })
            .collect()
    }

    /// The observer.
    pub fn observer(&self) -> &Observer {
        &self.observer
    }

    /// The traffic driver.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// The fleet's tokio runtime, for tasks of the caller (an operator in-process).
    pub fn handle(&self) -> tokio::runtime::Handle {
        match &self.runtime {
            Some(runtime) => runtime.handle().clone(),
            None => unreachable!("the runtime lives until the fleet is dropped"),
        }
    }

    /// The observer's view restricted to this fleet's devices.
    pub fn view(&self) -> FleetView {
        let ids = self.device_ids();
        self.observer.with(|view| restrict(view, &ids))
    }

    /// Blocks until `done` holds for the observer's view ([`Observer::wait_until`]),
    /// failing as soon as a device's agent stops on its own.
    ///
    /// # Errors
    ///
    /// [`SimError::Timeout`] (with what was seen), or [`SimError::DeviceFailed`] with
    /// the device's error or the end of its log.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl FnMut(&FleetView) -> bool,
    ) -> Result<(), SimError> {
        self.observer
            .wait_until_or(what, timeout, done, || self.failures().into_iter().next())
    }

    /// Waits until every running device is online and has delivered a metrics report
    /// naming the version of its current model in the latest one: `version`.
    ///
    /// # Errors
    ///
    /// As [`wait_until`](Fleet::wait_until).
    pub fn wait_all_reporting(&self, version: &str, timeout: Duration) -> Result<(), SimError> {
        let ids = self.device_ids();
        self.wait_until(
            &format!("all {} devices online and reporting {version}", ids.len()),
            timeout,
            |view| view.all_serving(ids.iter().map(String::as_str), version),
        )
    }

    /// Devices whose agent stopped on its own, each with why.
    pub fn failures(&self) -> Vec<String> {
        self.lock().iter_mut().filter_map(Device::failure).collect()
    }

    /// Kills the process device at `index` with SIGKILL (no goodbye, nothing moved to
    /// the spool); [`restart`](Fleet::restart) brings it back with the same folders.
    ///
    /// # Errors
    ///
    /// No such device, or it runs in-process.
    pub fn kill_9(&self, index: usize) -> Result<(), SimError> {
        self.with_device(index, |d, _| d.kill_9())
    }

    /// Stops the device at `index` cleanly (it says offline and spools what is
    /// undelivered), waiting up to 10 s.
    ///
    /// # Errors
    ///
    /// No such device.
    pub fn stop(&self, index: usize) -> Result<(), SimError> {
        self.with_device(index, |d, fleet| {
            d.stop(&fleet.handle());
            Ok(())
        })
    }

    /// Starts the device at `index` again (a no-op if it runs) with the same id and
    /// folders, so its spool, sequence numbers, boot count and model slots carry over.
    ///
    /// # Errors
    ///
    /// No such device, or its process does not start.
    pub fn restart(&self, index: usize) -> Result<(), SimError> {
        self.with_device(index, |d, fleet| {
            d.start(&fleet.config, (&fleet.host, fleet.port), &fleet.handle())
        })
    }

    /// Whether the device at `index` runs.
    pub fn is_running(&self, index: usize) -> bool {
        self.lock().get_mut(index).is_some_and(Device::is_running)
    }

    /// Resident memory of this process (the in-process devices, the broker if
    /// embedded, the clients) now and before any device started, in KiB.
    pub fn rss_kib(&self) -> (Option<u32>, Option<u32>) {
        (perch_firmware::rss_kib(), self.rss_baseline_kib)
    }

    /// One line's worth of numbers about the fleet now.
    pub fn summary(&self) -> Summary {
        let view = self.view();
        let (rss_kib, _) = self.rss_kib();
        let traffic = self.traffic.total();
        let failed = self.failures().len();
        let running = {
            let mut devices = self.lock();
            devices
                .iter_mut()
                .filter_map(|d| d.is_running().then_some(()))
                .count()
        };
        Summary {
            elapsed_s: self.started.elapsed().as_secs_f64(),
            devices: self.config.devices,
            running,
            online: view.online(),
            reports: view.devices.values().map(|d| d.reports).sum(),
            states: view
                .states()
                .into_iter()
                .map(|(s, n)| (s.to_string(), n))
                .collect(),
            versions: view.versions(),
            traffic,
            failed,
            rss_kib,
        }
    }

    /// Stops everything: traffic, then every device cleanly (processes by force after
    /// 10 s), then the clients and the runtime. Dropping the fleet does the same.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        self.traffic.stop();
        let mut devices = self
            .devices
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for device in devices.iter_mut() {
            device.signal_stop();
        }
        for device in devices.iter_mut() {
            device.stop(runtime.handle());
        }
        drop(devices);
        self.observer.stop();
        runtime.shutdown_timeout(Duration::from_secs(5));
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Device>> {
        self.devices
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn with_device(
        &self,
        index: usize,
        f: impl FnOnce(&mut Device, &Fleet) -> Result<(), SimError>,
    ) -> Result<(), SimError> {
        let mut devices = self.lock();
        let count = devices.len();
        let device = devices
            .get_mut(index)
            .ok_or_else(|| SimError::Config(format!("no device {index} in a fleet of {count}")))?;
        f(device, self)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn restrict(view: &FleetView, ids: &[String]) -> FleetView {
    FleetView {
        devices: ids
            .iter()
            .filter_map(|id| view.devices.get(id).map(|d| (id.clone(), d.clone())))
            .collect(),
        malformed: view.malformed.clone(),
    }
}

/// The fleet at one moment: what `perch-sim` prints every second.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Seconds since the fleet started.
    pub elapsed_s: f64,
    /// Devices in the fleet.
    pub devices: usize,
    /// Devices whose agent runs.
    pub running: usize,
    /// Devices whose latest status says online.
    pub online: usize,
    /// Metrics reports received from the fleet.
    pub reports: u64,
    /// Latest rollout state → devices in it.
    pub states: BTreeMap<String, usize>,
    /// Version in the latest metrics report → devices serving it.
    pub versions: BTreeMap<String, usize>,
    /// Requests and replies of the traffic driver.
    pub traffic: TrafficCounts,
    /// Devices whose agent stopped on its own.
    pub failed: usize,
    /// Resident memory of the simulator process, KiB.
    pub rss_kib: Option<u32>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |m: &BTreeMap<String, usize>| {
            if m.is_empty() {
                "-".to_string()
            } else {
                m.iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        write!(
            f,
            "{:>6.1}s  online {}/{}  reports {}  versions: {}  rollout: {}  traffic: {} sent, {} ok, {} errors",
            self.elapsed_s,
            self.online,
            self.devices,
            self.reports,
            join(&self.versions),
            join(&self.states),
            self.traffic.sent,
            self.traffic.ok,
            self.traffic.errors,
        )?;
        if self.traffic.wrong > 0 {
            write!(f, " ({} wrong outputs)", self.traffic.wrong)?;
        }
        if self.failed > 0 {
            write!(f, "  FAILED {}", self.failed)?;
        }
        if let Some(rss) = self.rss_kib {
            write!(f, "  rss {:.0} MiB", f64::from(rss) / 1024.0)?;
        }
        Ok(())
    }
}

/// The fleet's signing key and where its files are.
#[derive(Debug, Clone)]
pub struct FleetKey {
    /// The private key.
    pub signing: SigningKey,
    /// Its file (`perch keygen` format), for `perch bundle`/`perch rollout`.
    pub secret_path: PathBuf,
    /// The public key file every device trusts.
    pub public_path: PathBuf,
}

impl FleetKey {
    /// A fresh random key written to `dir/fleet.key` and `dir/fleet.pub`.
    ///
    /// # Errors
    ///
    /// No randomness, or the files cannot be written.
    pub fn generate(dir: &Path) -> Result<FleetKey, SimError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| SimError::Config(format!("no randomness for a key: {e}")))?;
        let signing = SigningKey::from_bytes(&seed);
        std::fs::create_dir_all(dir)?;
        let key = FleetKey {
            secret_path: dir.join("fleet.key"),
            public_path: dir.join("fleet.pub"),
            signing,
        };
        write_file(
            &key.secret_path,
            bundle::signing_key_file(&key.signing).as_bytes(),
        )?;
        write_file(
            &key.public_path,
            bundle::verifying_key_file(&key.signing.verifying_key()).as_bytes(),
        )?;
        Ok(key)
    }
}

/// A fleet's starting point: a key and the first bundle signed with it.
#[derive(Debug, Clone)]
pub struct FleetFixture {
    /// The key.
    pub key: FleetKey,
    /// The bundle file.
    pub bundle: PathBuf,
}

impl FleetFixture {
    /// A fresh key in `dir` and `dir/digits-1.0.0.perch`: R1 (models/digits-mlp, the
    /// smallest reference model) named `digits`, version 1.0.0, sequence 1, SLO p99
    /// 10 ms and error rate 1 %.
    ///
    /// # Errors
    ///
    /// As [`FleetKey::generate`] and [`pack_bundle`].
    pub fn digits(dir: &Path) -> Result<FleetFixture, SimError> {
        let key = FleetKey::generate(dir)?;
        let bytes = pack_bundle(
            &crate::models_dir().join("digits-mlp"),
            "digits",
            "1.0.0",
            1,
            &digits_slo(),
            &key.signing,
        )?;
        let bundle = dir.join("digits-1.0.0.perch");
        write_file(&bundle, &bytes)?;
        Ok(FleetFixture { key, bundle })
    }
}

/// The SLO of [`FleetFixture::digits`]: p99 10 ms, at most 1 % errors.
pub fn digits_slo() -> bundle::Slo {
    bundle::Slo {
        p99_ms: Some(10.0),
        max_error_rate: Some(0.01),
        ..Default::default()
    }
}

/// Packs the reference model folder `model_dir` (`model.onnx` with `golden/input_N.npy`
/// and `golden/output_N.npy`, as under models/) into a bundle named `name`, signed with
/// `key`, and returns its bytes. The model is loaded first, for its signature.
///
/// # Errors
///
/// The folder lacks the model or golden files, the model does not load, `version` is
/// not a semantic version, or the bundle breaks a rule of the format (its name).
pub fn pack_bundle(
    model_dir: &Path,
    name: &str,
    version: &str,
    sequence: u64,
    slo: &bundle::Slo,
    key: &SigningKey,
) -> Result<Vec<u8>, SimError> {
    let model_path = model_dir.join("model.onnx");
    let model = Model::load(&model_path, &LoadOptions::new())
        .map_err(|e| SimError::Bundle(format!("{}: {e}", model_path.display())))?;
    let read = |path: PathBuf| {
        std::fs::read(&path).map_err(|e| SimError::Bundle(format!("{}: {e}", path.display())))
    };
    let golden = model_dir.join("golden");
    let mut golden_inputs = Vec::new();
    while golden
        .join(format!("input_{}.npy", golden_inputs.len()))
        .is_file()
    {
        golden_inputs.push(read(
            golden.join(format!("input_{}.npy", golden_inputs.len())),
        )?);
    }
    let mut golden_outputs = Vec::new();
    while golden
        .join(format!("output_{}.npy", golden_outputs.len()))
        .is_file()
    {
        golden_outputs.push(read(
            golden.join(format!("output_{}.npy", golden_outputs.len())),
        )?);
    }
    if golden_inputs.is_empty() || golden_outputs.is_empty() {
        return Err(SimError::Bundle(format!(
            "{}: needs input_0.npy and output_0.npy",
            golden.display()
        )));
    }
    let contents = BundleContents {
        name: name.to_string(),
        version: version
            .parse()
            .map_err(|e| SimError::Bundle(format!("version {version:?}: {e}")))?,
        sequence,
        created_unix: 0,
        model_format: ModelKind::Onnx,
        model: read(model_path)?,
        signature: TensorSignature::from_metadata(model.metadata()),
        golden_inputs,
        golden_outputs,
        tolerance: 1e-4,
        slo: *slo,
        schema: None,
    };
    let packed = bundle::pack(&contents, key)
        .map_err(|e| SimError::Bundle(format!("cannot pack {}: {e}", model_dir.display())))?;
    Ok(packed.as_bytes().to_vec())
}

/// Writes `bytes` to `path` atomically ([`perch_runtime::fsio::write_atomic`]).
///
/// # Errors
///
/// The file cannot be written; the message names it.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SimError> {
    perch_runtime::fsio::write_atomic(path, bytes).map_err(|e| {
        SimError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot write {}: {e}", path.display()),
        ))
    })
}

/// CPU time (user + system) this process has used, from `/proc/self/stat` (Linux),
/// assuming the usual 100 clock ticks per second.
pub fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after its ')' are fixed.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}
