//! How to run a fleet: its size, bundle, key, broker and timings.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use perch_mqtt::BrokerUrl;

/// The broker the fleet uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerSpec {
    /// The agent's embedded rumqttd, started in this process on 127.0.0.1:`port`
    /// (0: a free port).
    Embedded {
        /// Its port; 0 picks a free one.
        port: u16,
    },
    /// A broker already running.
    External {
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
    },
}

impl FromStr for BrokerSpec {
    type Err = String;

    /// `embedded`, `embedded:PORT` or `mqtt://host[:port]` (default port 1883; an IPv6
    /// host in brackets).
    fn from_str(text: &str) -> Result<BrokerSpec, String> {
        if text == "embedded" {
            return Ok(BrokerSpec::Embedded { port: 0 });
        }
        if let Some(port) = text.strip_prefix("embedded:") {
            let port = port
                .parse()
                .map_err(|_| format!("{text:?}: the port after embedded: is not a number"))?;
            return Ok(BrokerSpec::Embedded { port });
        }
        if !text.starts_with("mqtt://") {
            return Err(format!(
                "{text:?}: expected embedded, embedded:PORT or mqtt://host[:port]"
            ));
        }
        let BrokerUrl { host, port, .. } = text.parse()?;
        Ok(BrokerSpec::External { host, port })
    }
}

/// How to run a fleet. [`FleetConfig::new`] fills in defaults for a quick in-process
/// fleet.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Number of devices.
    pub devices: usize,
    /// How many of them (the first ones) run as `perchd` processes; the rest run
    /// in-process.
    pub processes: usize,
    /// Device id prefix: ids are `{prefix}-{i:04}`.
    pub prefix: String,
    /// The OTA group every device follows.
    pub group: String,
    /// The signed bundle every device starts on.
    pub bundle: PathBuf,
    /// The public key file (`fleet.pub`) every device trusts.
    pub trusted_key: PathBuf,
    /// The broker.
    pub broker: BrokerSpec,
    /// Time between the devices' metrics reports.
    pub report_interval: Duration,
    /// Warm-up inferences of each device at start.
    pub warmup_runs: u32,
    /// Inference requests per device per second from the traffic driver.
    pub rate: f64,
    /// The folder holding one folder per device (`{work_dir}/devices/{id}`).
    pub work_dir: PathBuf,
    /// Whether over-the-air updates are on.
    pub ota: bool,
    /// OTA: starts on a new model before it is confirmed.
    pub max_probation_boots: u32,
    /// OTA: a chunk not received within this is requested again.
    pub chunk_timeout: Duration,
    /// OTA: a download without a good copy of its chunk within this fails.
    pub stall_timeout: Duration,
    /// Worker threads of the fleet's runtime (default: one per core).
    pub worker_threads: Option<usize>,
}

impl FleetConfig {
    /// `devices` in-process devices serving `bundle` signed by `trusted_key`, with
    /// their folders under `work_dir`: prefix `sim`, group `default`, the embedded
    /// broker on a free port, reports every second, 2 warm-up runs, no traffic, OTA on
    /// with the agent's defaults.
    pub fn new(
        devices: usize,
        bundle: impl Into<PathBuf>,
        trusted_key: impl Into<PathBuf>,
        work_dir: impl Into<PathBuf>,
    ) -> FleetConfig {
        FleetConfig {
            devices,
            processes: 0,
            prefix: "sim".into(),
            group: perch_firmware::config::DEFAULT_GROUP.into(),
            bundle: bundle.into(),
            trusted_key: trusted_key.into(),
            broker: BrokerSpec::Embedded { port: 0 },
            report_interval: Duration::from_secs(1),
            warmup_runs: 2,
            rate: 0.0,
            work_dir: work_dir.into(),
            ota: true,
            max_probation_boots: perch_firmware::config::DEFAULT_MAX_PROBATION_BOOTS,
            chunk_timeout: perch_firmware::config::DEFAULT_CHUNK_TIMEOUT,
            stall_timeout: perch_firmware::config::DEFAULT_STALL_TIMEOUT,
            worker_threads: None,
        }
    }
}
