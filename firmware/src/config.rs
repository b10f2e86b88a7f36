//! `perchd`'s configuration: a TOML file, overridden by environment variables, overridden
//! by command-line flags.
//!
//! Every setting has a default, so `perchd` runs with no file at all: the device id is
//! the host name, the broker is the embedded one on 127.0.0.1:1883, the model is the
//! bundled reference model `models/kws-dscnn/model.onnx`, reports go out every 10 s and
//! the HTTP API listens on 127.0.0.1:8080. A file sets any of them:
//!
//! ```toml
//! device_id = "gw-kitchen"           # [A-Za-z0-9._-], at most 64 bytes; default: host name
//! report_interval = "10s"            # ms, s, m or h
//! http_listen = "127.0.0.1:8080"     # or "off"
//! max_payload_bytes = "1MiB"         # largest inference request, MQTT or HTTP
//!
//! [model]
//! path = "/var/lib/perch/kws-1.1.0.perch"   # a model file (ONNX, NNEF) or a signed bundle
//! trusted_keys = ["/etc/perch/fleet.pub"]    # bundles must be signed by one of these
//! # For plain model files only (a bundle carries its own):
//! # golden = "golden/"  variant = "w8"  name = "kws"  version = "1.1.0"
//! warmup_runs = 20
//!
//! [broker]
//! url = "mqtts://broker.example.com:8883"   # mqtt://, mqtts:// or "embedded"
//! ca_file = "/etc/perch/ca.pem"              # mqtts: the CA that signed the broker
//! client_cert = "/etc/perch/device.pem"      # mqtts: client certificate and key, optional
//! client_key = "/etc/perch/device.key"
//! username = "gw-kitchen"                    # optional, with password
//! password = "..."
//! embedded_port = 1883                       # the embedded broker's port on 127.0.0.1
//! keep_alive = "30s"
//! reconnect_base = "500ms"                   # first backoff window; doubles per attempt
//! reconnect_cap = "30s"                      # largest backoff window
//!
//! [slo]                                      # default: the bundle's SLOs, if any
//! p99_ms = 10.0                              # per report interval
//! max_error_rate = 0.01
//!
//! [spool]                                    # reports kept while the broker is away
//! dir = "/var/lib/perch/spool"
//! max_records = 10000
//! max_bytes = "4MiB"
//!
//! [sensor]                                   # an ADXL345 feeding the served model (R3)
//! source = "i2c"                             # or "simulated" (no hardware)
//! i2c_bus = "/dev/i2c-1"                     # i2c: the bus (feature linux-sensor)
//! address = 0x53                             # 0x53, or 0x1D with ALT ADDRESS high
//! rate_hz = 800                              # 25, 50, 100, 200, 400, 800, 1600, 3200
//! range_g = 2                                # 2, 4, 8 or 16
//! calibration_windows = 32                   # for the features, then for the threshold
//! threshold_sigmas = 6.0                     # threshold: mean + this × std of the errors
//! # simulated only: seed = 1, anomaly_after = "120s" (add a bearing fault)
//!
//! [ota]                                      # over-the-air model updates (docs/protocol.md)
//! enabled = true                             # default: on when model.trusted_keys are set
//! group = "kitchen"                          # follows perch/fleet/{group}/rollout; default "default"
//! dir = "/var/lib/perch/ota"                 # model slots, downloads; default: `ota` beside the spool
//! max_probation_boots = 3                    # starts on a new model before it is rolled back
//! chunk_timeout = "5s"                       # a chunk not received by then is requested again
//! ```
//!
//! Relative paths in the file are relative to the file's folder; relative paths given
//! as flags or in the environment are relative to the working directory. Errors in the
//! file name the file, the line and the key (`perchd.toml:7: broker.url: ...`); unknown
//! keys are errors, so a typo is not silently ignored.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use perch_runtime::wire::Version;
use serde::Deserialize;

/// The reference model `perchd` serves when none is configured (relative to the working
/// directory, so the README's command works from the repository root).
pub const DEFAULT_MODEL: &str = "models/kws-dscnn/model.onnx";
/// Where the embedded broker listens by default (127.0.0.1), MQTT's registered port.
pub const DEFAULT_EMBEDDED_PORT: u16 = 1883;
/// Where the HTTP API listens by default.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
/// Time between metrics reports by default.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// The largest inference request by default, in bytes.
pub const DEFAULT_MAX_PAYLOAD_BYTES: u64 = 1 << 20;
/// Reports kept in the spool by default (at 10 s intervals, a bit more than a day).
pub const DEFAULT_SPOOL_MAX_RECORDS: usize = 10_000;
/// Starts of the agent on a newly activated model, before it is confirmed, after which
/// the agent returns to the previous model (a crash loop).
pub const DEFAULT_MAX_PROBATION_BOOTS: u32 = 3;
/// How long a device waits for a requested bundle chunk before it asks again.
pub const DEFAULT_CHUNK_TIMEOUT: Duration = Duration::from_secs(5);
/// The device group of a device that names none.
pub const DEFAULT_GROUP: &str = "default";
/// Bytes kept in the spool by default.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 4 << 20;
/// The shortest report interval accepted.
pub const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(10);

/// Command-line flags, each also read from the environment variable it names.
///
/// A flag beats its environment variable, which beats the configuration file, which
/// beats the built-in default.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    /// TOML configuration file (see docs/protocol.md and the `config` module docs
    /// for its keys). Without it, every setting takes its default.
    #[arg(long, short = 'c', env = "PERCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This device's id, used in every MQTT topic (`perch/{device}/...`):
    /// letters, digits, `.`, `_` and `-`, at most 64 bytes. Default: the host name.
    #[arg(long, env = "PERCH_DEVICE_ID", value_name = "ID")]
    pub device_id: Option<DeviceId>,
    /// MQTT broker: `mqtt://host[:port]` (default port 1883), `mqtts://host[:port]`
    /// (TLS, default port 8883, with --mqtt-ca), or `embedded` to start a broker inside
    /// perchd on 127.0.0.1 (the default when none is configured).
    #[arg(long, env = "PERCH_BROKER", value_name = "URL")]
    pub broker: Option<BrokerUrl>,
    /// Port of the embedded broker on 127.0.0.1 (default 1883).
    #[arg(long, env = "PERCH_EMBEDDED_PORT", value_name = "PORT")]
    pub embedded_port: Option<u16>,
    /// mqtts: PEM file of the certificate authority that signed the broker's certificate.
    #[arg(long, env = "PERCH_MQTT_CA", value_name = "PEM")]
    pub mqtt_ca: Option<PathBuf>,
    /// mqtts: PEM client certificate (chain), for brokers that authenticate devices by
    /// certificate; needs --mqtt-client-key.
    #[arg(long, env = "PERCH_MQTT_CLIENT_CERT", value_name = "PEM")]
    pub mqtt_client_cert: Option<PathBuf>,
    /// mqtts: PEM private key of the client certificate.
    #[arg(long, env = "PERCH_MQTT_CLIENT_KEY", value_name = "PEM")]
    pub mqtt_client_key: Option<PathBuf>,
    /// MQTT user name.
    #[arg(long, env = "PERCH_MQTT_USERNAME", value_name = "NAME")]
    pub mqtt_username: Option<String>,
    /// MQTT password (prefer the environment variable or the file over the flag, which
    /// other users can see in the process list).
    #[arg(
        long,
        env = "PERCH_MQTT_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub mqtt_password: Option<String>,
    /// The model to serve: an ONNX or NNEF file, or a signed bundle (`.perch`) checked
    /// against --trusted-key. Default: models/kws-dscnn/model.onnx.
    #[arg(long, env = "PERCH_MODEL", value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Public key (`perch keygen`'s .pub file) a bundle must be signed with; repeat the
    /// flag, or separate paths with commas in the environment variable, for several.
    #[arg(
        long = "trusted-key",
        env = "PERCH_TRUSTED_KEYS",
        value_delimiter = ',',
        value_name = "PUB"
    )]
    pub trusted_keys: Vec<PathBuf>,
    /// Golden folder for the self-test of a plain model file (default: `golden/` beside
    /// the model).
    #[arg(long, value_name = "DIR")]
    pub golden: Option<PathBuf>,
    /// Golden output variant of a plain model file, e.g. `w8` (default: from
    /// `model.<variant>.onnx`).
    #[arg(long)]
    pub variant: Option<String>,
    /// Model name in reports and URLs, for a plain model file (default: the model's
    /// folder name; a bundle's name comes from its manifest).
    #[arg(long)]
    pub name: Option<String>,
    /// Model version in reports, MAJOR.MINOR.PATCH, for a plain model file (default
    /// 0.0.0; a bundle's version comes from its manifest).
    #[arg(long = "model-version", value_name = "X.Y.Z", value_parser = parse_version)]
    pub model_version: Option<Version>,
    /// Warm-up inferences after the self-test (default 20).
    #[arg(long, value_name = "N")]
    pub warmup: Option<u32>,
    /// Time between metrics reports, e.g. `10s`, `500ms`, `1m` (default 10s).
    #[arg(long, env = "PERCH_REPORT_INTERVAL", value_name = "DURATION")]
    pub report_interval: Option<HumanDuration>,
    /// Address of the HTTP API (Open Inference Protocol v2 and /metrics), or `off`
    /// (default 127.0.0.1:8080).
    #[arg(long, env = "PERCH_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<Listen>,
    /// Folder of the report spool, kept while the broker is unreachable (default: under
    /// $STATE_DIRECTORY, $XDG_STATE_HOME or ~/.local/state, per device).
    #[arg(long, env = "PERCH_SPOOL_DIR", value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Most reports the spool keeps; past it the oldest are dropped and counted
    /// (default 10000).
    #[arg(long, value_name = "N")]
    pub spool_max_records: Option<usize>,
    /// Largest inference request accepted, in bytes or with a unit (`64KiB`, `1MiB`;
    /// default 1MiB). Larger ones get an error response.
    #[arg(long, env = "PERCH_MAX_PAYLOAD", value_name = "BYTES")]
    pub max_payload: Option<ByteSize>,
    /// Accelerometer input for anomaly detection with the served model (which must take
    /// one FP32 input `[1,640]`, such as models/anomaly-ae/model.onnx): `simulated` (a
    /// simulated ADXL345, no hardware), an I2C bus such as `/dev/i2c-1` (a real ADXL345;
    /// needs the linux-sensor feature), or `off`. Results go to
    /// perch/{device}/sensor/anomaly. Default: the `[sensor]` section, else off.
    #[arg(long, env = "PERCH_SENSOR", value_name = "SOURCE")]
    pub sensor: Option<SensorFlag>,
    /// Sensor output data rate in Hz: 25, 50, 100, 200, 400, 800, 1600 or 3200
    /// (default 800).
    #[arg(long, value_name = "HZ")]
    pub sensor_rate: Option<u32>,
    /// Windows the sensor learns its feature statistics from, and as many again its
    /// anomaly threshold from; the machine must run normally meanwhile (default 32).
    #[arg(long, value_name = "N")]
    pub sensor_calibration_windows: Option<u32>,
    /// Simulated sensor: turn the signal anomalous (a bearing fault) after this
    /// much sampling time, e.g. `120s`, after the calibration (default: never).
    #[arg(long, value_name = "DURATION")]
    pub sensor_anomaly_after: Option<HumanDuration>,
    /// Over-the-air updates: `on` or `off` (default: on when trusted keys are given,
    /// since updates are signed bundles).
    #[arg(long, env = "PERCH_OTA", value_name = "on|off", value_parser = parse_on_off)]
    pub ota: Option<bool>,
    /// The fleet group whose rollouts this device follows
    /// (perch/fleet/{group}/rollout; default `default`).
    #[arg(long, env = "PERCH_GROUP", value_name = "GROUP")]
    pub group: Option<String>,
    /// Folder of the model slots and partial downloads of over-the-air updates
    /// (default: `ota` beside the spool folder).
    #[arg(long, env = "PERCH_OTA_DIR", value_name = "DIR")]
    pub ota_dir: Option<PathBuf>,
}

/// The configuration the agent runs with, every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// This device's id, the `{device}` of every topic.
    pub device_id: DeviceId,
    /// The broker to connect to.
    pub broker: Broker,
    /// The model to serve and how to check it.
    pub model: ModelConfig,
    /// Time between metrics reports.
    pub report_interval: Duration,
    /// The model's service-level objectives, checked per report interval.
    pub slo: Slo,
    /// Address of the HTTP API; `None` turns it off.
    pub http_listen: Option<SocketAddr>,
    /// Where reports wait while the broker is unreachable.
    pub spool: SpoolConfig,
    /// The largest inference request, in bytes.
    pub max_payload_bytes: usize,
    /// The accelerometer input; `None` when there is none.
    pub sensor: Option<SensorConfig>,
    /// Over-the-air updates; `None` when off.
    pub ota: Option<OtaSettings>,
}

/// Over-the-air model updates (`[ota]`, `--ota`, `--group`, `--ota-dir`).
#[derive(Debug, Clone, PartialEq)]
pub struct OtaSettings {
    /// The fleet group whose rollout document the device follows.
    pub group: String,
    /// Folder of the model slots, the slot state and partial downloads.
    pub dir: PathBuf,
    /// Starts on a new model before it is confirmed, after which the device rolls back.
    pub max_probation_boots: u32,
    /// A requested chunk not received within this is requested again.
    pub chunk_timeout: Duration,
}

/// The accelerometer input (`[sensor]`, `--sensor`): an ADXL345 whose vibration
/// windows go through the served model (see [`crate::sensor`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SensorConfig {
    /// Where the samples come from.
    pub source: SensorSource,
    /// The device's 7-bit I2C address.
    pub address: u8,
    /// Output data rate, one the ADXL345 has.
    pub rate: crate::sensor::adxl345::Rate,
    /// Measurement range.
    pub range: crate::sensor::adxl345::Range,
    /// Calibration of the detector.
    pub detector: crate::sensor::detector::DetectorConfig,
}

/// Where the sensor's samples come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SensorSource {
    /// The simulated ADXL345 ([`crate::sensor::sim`]), sampling in real time.
    Simulated {
        /// Seed of its noise.
        seed: u64,
        /// Sampling time after which the signal turns anomalous; never when `None`.
        anomaly_after: Option<Duration>,
    },
    /// A real ADXL345 on a Linux I2C bus (feature `linux-sensor`).
    I2c {
        /// The bus device, `/dev/i2c-1`.
        bus: PathBuf,
    },
}

/// The `--sensor` flag: `simulated`, `off`, or an I2C bus device path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SensorFlag {
    /// No sensor, whatever the file says.
    Off,
    /// The simulated sensor.
    Simulated,
    /// A real sensor on this bus.
    I2c(PathBuf),
}

impl FromStr for SensorFlag {
    type Err = String;

    fn from_str(text: &str) -> Result<SensorFlag, String> {
        match text {
            "off" => Ok(SensorFlag::Off),
            "simulated" => Ok(SensorFlag::Simulated),
            path if path.starts_with('/') => Ok(SensorFlag::I2c(PathBuf::from(path))),
            _ => Err(format!(
                "{text:?}: expected simulated, off, or an I2C bus device such as /dev/i2c-1"
            )),
        }
    }
}

/// The broker the agent connects to.
#[derive(Debug, Clone, PartialEq)]
pub enum Broker {
    /// A broker started inside the agent, on 127.0.0.1 at `port`.
    Embedded {
        /// The port it listens on.
        port: u16,
    },
    /// A broker elsewhere.
    External(BrokerConfig),
}

/// How to reach and authenticate to an external broker; also used for the embedded one.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS settings; `None` for plain `mqtt://`.
    pub tls: Option<TlsFiles>,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password, with the user name.
    pub password: Option<String>,
    /// Interval of MQTT keep-alive pings; the broker declares the device gone (and
    /// publishes its last will) after 1.5 of them without a word.
    pub keep_alive: Duration,
    /// First reconnect backoff window.
    pub reconnect_base: Duration,
    /// Largest reconnect backoff window.
    pub reconnect_cap: Duration,
}

impl BrokerConfig {
    /// A plain-TCP broker at `host:port`, without credentials, with default timings.
    pub fn plain(host: impl Into<String>, port: u16) -> BrokerConfig {
        BrokerConfig {
            host: host.into(),
            port,
            tls: None,
            username: None,
            password: None,
            keep_alive: Duration::from_secs(30),
            reconnect_base: Duration::from_millis(500),
            reconnect_cap: Duration::from_secs(30),
        }
    }
}

/// The files of an `mqtts://` connection.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    /// PEM certificate authority for the broker's certificate.
    pub ca: PathBuf,
    /// PEM client certificate and private key, for brokers that ask for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The model to serve.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// A model file (ONNX or NNEF) or a signed bundle.
    pub path: PathBuf,
    /// Public key files; a bundle must be signed by one of them.
    pub trusted_keys: Vec<PathBuf>,
    /// Golden folder of a plain model file (`golden/` beside it when `None`).
    pub golden: Option<PathBuf>,
    /// Golden output variant of a plain model file.
    pub variant: Option<String>,
    /// Name of a plain model file in reports (its folder name when `None`).
    pub name: Option<String>,
    /// Version of a plain model file in reports (0.0.0 when `None`).
    pub version: Option<Version>,
    /// Warm-up inferences after the self-test.
    pub warmup_runs: u32,
}

/// Service-level objectives; an unset field is not checked. A report interval that
/// misses one marks the device `Degraded` in its health message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// Largest acceptable p99 latency of an interval, in milliseconds.
    pub p99_ms: Option<f64>,
    /// Largest acceptable fraction of failed requests in an interval, in [0, 1].
    pub max_error_rate: Option<f64>,
}

/// The report spool.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolConfig {
    /// Its folder (created if missing).
    pub dir: PathBuf,
    /// Most reports kept.
    pub max_records: usize,
    /// Most bytes kept.
    pub max_bytes: u64,
}

impl Config {
    /// The defaults for `device_id` serving `model`: embedded broker on its default
    /// port, HTTP on 127.0.0.1:8080, 10 s reports, the default spool folder.
    pub fn new(device_id: DeviceId, model: impl Into<PathBuf>) -> Config {
        let spool_dir = default_spool_dir(&device_id);
        Config {
            device_id,
            broker: Broker::Embedded {
                port: DEFAULT_EMBEDDED_PORT,
            },
            model: ModelConfig {
                path: model.into(),
                trusted_keys: Vec::new(),
                golden: None,
                variant: None,
                name: None,
                version: None,
                warmup_runs: 20,
            },
            report_interval: DEFAULT_REPORT_INTERVAL,
            slo: Slo::default(),
            http_listen: DEFAULT_HTTP_LISTEN.parse().ok(),
            spool: SpoolConfig {
                dir: spool_dir,
                max_records: DEFAULT_SPOOL_MAX_RECORDS,
                max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            },
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES as usize,
            sensor: None,
            ota: None,
        }
    }

    /// Reads the file named by `args.config` (if any) and applies the environment and
    /// flags over it (clap has already merged those two into `args`).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the file, line and key of a bad setting, or the flag.
    pub fn load(args: &Args) -> Result<Config, ConfigError> {
        match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    file: Some(path.clone()),
                    line: None,
                    key: None,
                    message: format!("cannot read: {e}"),
                })?;
                Config::resolve(args, Some((path, &text)))
            }
            None => Config::resolve(args, None),
        }
    }

    /// Builds the configuration from a file's text (named `path` in errors, its folder
    /// the base of relative paths) and `args` over it.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the file, line and key of a bad setting, or the flag.
    pub fn from_toml(path: &Path, text: &str, args: &Args) -> Result<Config, ConfigError> {
        Config::resolve(args, Some((path, text)))
    }

    fn resolve(args: &Args, file: Option<(&Path, &str)>) -> Result<Config, ConfigError> {
        let parsed: FileConfig = match file {
            Some((path, text)) => toml::from_str(text).map_err(|e| {
                let (line, key) = match e.span() {
                    Some(span) => locate_offset(text, span.start),
                    None => (None, None),
                };
                ConfigError {
                    file: Some(path.to_path_buf()),
                    line,
                    key,
                    message: e.message().trim().to_string(),
                }
            })?,
            None => FileConfig::default(),
        };
        let base = file
            .and_then(|(path, _)| path.parent())
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let in_file = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        // An error about `key`: the file's line when the file set it, the flag otherwise.
        let err = |section: &str, key: &str, flag: &str, from_flag: bool, message: String| {
            let full_key = if section.is_empty() {
                key.to_string()
            } else {
                format!("{section}.{key}")
            };
            match file {
                Some((path, text)) if !from_flag => ConfigError {
                    file: Some(path.to_path_buf()),
                    line: locate_key(text, section, key),
                    key: Some(full_key),
                    message,
                },
                _ => ConfigError {
                    file: None,
                    line: None,
                    key: Some(flag.to_string()),
                    message,
                },
            }
        };

        let device_id = match args.device_id.clone().or(parsed.device_id) {
            Some(id) => id,
            None => DeviceId::from_hostname(),
        };
        let model_file = parsed.model.unwrap_or_default();
        let broker_file = parsed.broker.unwrap_or_default();
        let spool_file = parsed.spool.unwrap_or_default();
        let slo = parsed.slo.unwrap_or_default();
        if let Some(rate) = slo.max_error_rate {
            if !(0.0..=1.0).contains(&rate) {
                return Err(err(
                    "slo",
                    "max_error_rate",
                    "slo",
                    false,
                    format!("{rate} is not a fraction in [0, 1]"),
                ));
            }
        }

        let model = ModelConfig {
            path: match (&args.model, model_file.path) {
                (Some(p), _) => p.clone(),
                (None, Some(p)) => in_file(p),
                (None, None) => PathBuf::from(DEFAULT_MODEL),
            },
            trusted_keys: if args.trusted_keys.is_empty() {
                model_file
                    .trusted_keys
                    .unwrap_or_default()
                    .into_iter()
                    .map(in_file)
                    .collect()
            } else {
                args.trusted_keys.clone()
            },
            golden: args.golden.clone().or(model_file.golden.map(in_file)),
            variant: args.variant.clone().or(model_file.variant),
            name: args.name.clone().or(model_file.name),
            version: args.model_version.or(model_file.version.map(|v| v.0)),
            warmup_runs: args.warmup.or(model_file.warmup_runs).unwrap_or(20),
        };

        let url_from_flag = args.broker.is_some();
        let url = args.broker.clone().or(broker_file.url);
        let ca = (
            args.mqtt_ca.is_some(),
            args.mqtt_ca.clone().or(broker_file.ca_file.map(in_file)),
        );
        let cert = (
            args.mqtt_client_cert.is_some(),
            args.mqtt_client_cert
                .clone()
                .or(broker_file.client_cert.map(in_file)),
        );
        let key = (
            args.mqtt_client_key.is_some(),
            args.mqtt_client_key
                .clone()
                .or(broker_file.client_key.map(in_file)),
        );
        let username = args.mqtt_username.clone().or(broker_file.username);
        let password = args.mqtt_password.clone().or(broker_file.password);
        let keep_alive = broker_file
            .keep_alive
            .map_or(Duration::from_secs(30), |d| d.0);
        let reconnect_base = broker_file
            .reconnect_base
            .map_or(Duration::from_millis(500), |d| d.0);
        let reconnect_cap = broker_file
            .reconnect_cap
            .map_or(Duration::from_secs(30), |d| d.0);
        if keep_alive < Duration::from_secs(1) {
            return Err(err(
                "broker",
                "keep_alive",
                "keep_alive",
                false,
                "must be at least 1s".into(),
            ));
        }
        let broker = match url {
            None | Some(BrokerUrl::Embedded) => Broker::Embedded {
                port: args
                    .embedded_port
                    .or(broker_file.embedded_port)
                    .unwrap_or(DEFAULT_EMBEDDED_PORT),
            },
            Some(BrokerUrl::Mqtt { host, port, tls }) => {
                let tls = match (tls, ca.1) {
                    (false, None) => None,
                    (false, Some(_)) => {
                        return Err(err(
                            "broker",
                            "ca_file",
                            "--mqtt-ca",
                            ca.0,
                            "a CA file needs an mqtts:// broker URL".into(),
                        ))
                    }
                    (true, None) => {
                        return Err(err(
                            "broker",
                            "url",
                            "--broker",
                            url_from_flag,
                            "mqtts:// needs the broker's CA file (broker.ca_file, --mqtt-ca)"
                                .into(),
                        ))
                    }
                    (true, Some(ca)) => {
                        let client = match (cert.1, key.1) {
                            (Some(c), Some(k)) => Some((c, k)),
                            (None, None) => None,
                            (Some(_), None) => {
                                return Err(err(
                                    "broker",
                                    "client_cert",
                                    "--mqtt-client-cert",
                                    cert.0,
                                    "a client certificate needs its key (client_key)".into(),
                                ))
                            }
                            (None, Some(_)) => {
                                return Err(err(
                                    "broker",
                                    "client_key",
                                    "--mqtt-client-key",
                                    key.0,
                                    "a client key needs its certificate (client_cert)".into(),
                                ))
                            }
                        };
                        Some(TlsFiles { ca, client })
                    }
                };
                if password.is_some() && username.is_none() {
                    return Err(err(
                        "broker",
                        "password",
                        "--mqtt-password",
                        args.mqtt_password.is_some(),
                        "a password needs a user name (username)".into(),
                    ));
                }
                Broker::External(BrokerConfig {
                    host,
                    port,
                    tls,
                    username,
                    password,
                    keep_alive,
                    reconnect_base,
                    reconnect_cap,
                })
            }
        };

        let report_interval = match (&args.report_interval, parsed.report_interval) {
            (Some(d), _) => (true, d.0),
            (None, Some(d)) => (false, d.0),
            (None, None) => (false, DEFAULT_REPORT_INTERVAL),
        };
        if report_interval.1 < MIN_REPORT_INTERVAL {
            return Err(err(
                "",
                "report_interval",
                "--report-interval",
                report_interval.0,
                format!("must be at least {}ms", MIN_REPORT_INTERVAL.as_millis()),
            ));
        }
        let http_listen = args
            .http_listen
            .clone()
            .or(parsed.http_listen)
            .map_or_else(|| DEFAULT_HTTP_LISTEN.parse().ok(), |l| l.0);
        let max_payload = args
            .max_payload
            .or(parsed.max_payload_bytes)
            .map_or(DEFAULT_MAX_PAYLOAD_BYTES, |b| b.0);
        let spool = SpoolConfig {
            dir: match (&args.spool_dir, spool_file.dir) {
                (Some(d), _) => d.clone(),
                (None, Some(d)) => in_file(d),
                (None, None) => default_spool_dir(&device_id),
            },
            max_records: args
                .spool_max_records
                .or(spool_file.max_records)
                .unwrap_or(DEFAULT_SPOOL_MAX_RECORDS),
            max_bytes: spool_file
                .max_bytes
                .map_or(DEFAULT_SPOOL_MAX_BYTES, |b| b.0),
        };
        if spool.max_records == 0 {
            return Err(err(
                "spool",
                "max_records",
                "--spool-max-records",
                args.spool_max_records.is_some(),
                "must be at least 1".into(),
            ));
        }
        let sensor = resolve_sensor(args, parsed.sensor, &err)?;
        let ota_file = parsed.ota.unwrap_or_default();
        let ota_flag = args.ota.is_some();
        let ota_on = args
            .ota
            .or(ota_file.enabled)
            .unwrap_or(!model.trusted_keys.is_empty());
        let ota = if ota_on {
            if model.trusted_keys.is_empty() {
                return Err(err(
                    "ota",
                    "enabled",
                    "--ota",
                    ota_flag,
                    "over-the-air updates are signed bundles: give the keys that sign them \
                     (model.trusted_keys, --trusted-key)"
                        .into(),
                ));
            }
            let group_flag = args.group.is_some();
            let group = args
                .group
                .clone()
                .or(ota_file.group)
                .unwrap_or_else(|| DEFAULT_GROUP.to_string());
            if let Err(message) = perch_runtime::rollout::check_id("group", &group) {
                return Err(err("ota", "group", "--group", group_flag, message));
            }
            let max_probation_boots = ota_file
                .max_probation_boots
                .unwrap_or(DEFAULT_MAX_PROBATION_BOOTS);
            if max_probation_boots == 0 {
                return Err(err(
                    "ota",
                    "max_probation_boots",
                    "",
                    false,
                    "must be at least 1".into(),
                ));
            }
            Some(OtaSettings {
                group,
                dir: match (&args.ota_dir, ota_file.dir) {
                    (Some(d), _) => d.clone(),
                    (None, Some(d)) => in_file(d),
                    (None, None) => spool
                        .dir
                        .parent()
                        .map_or_else(|| PathBuf::from("ota"), |p| p.join("ota")),
                },
                max_probation_boots,
                chunk_timeout: ota_file
                    .chunk_timeout
                    .map_or(DEFAULT_CHUNK_TIMEOUT, |d| d.0),
            })
        } else {
            None
        };
        Ok(Config {
            device_id,
            broker,
            model,
            report_interval: report_interval.1,
            slo,
            http_listen,
            spool,
            max_payload_bytes: usize::try_from(max_payload).unwrap_or(usize::MAX),
            sensor,
            ota,
        })
    }
}

/// A bad setting, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file, when the setting came from one.
    pub file: Option<PathBuf>,
    /// The line in the file (1-based), when known.
    pub line: Option<usize>,
    /// The key (`broker.url`), or the flag when the setting came from one.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}", file.display())?;
            if let Some(line) = self.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The file's schema: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    device_id: Option<DeviceId>,
    report_interval: Option<HumanDuration>,
    http_listen: Option<Listen>,
    max_payload_bytes: Option<ByteSize>,
    model: Option<ModelFile>,
    broker: Option<BrokerFile>,
    slo: Option<Slo>,
    spool: Option<SpoolFile>,
    sensor: Option<SensorFile>,
    ota: Option<OtaFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OtaFile {
    enabled: Option<bool>,
    group: Option<String>,
    dir: Option<PathBuf>,
    max_probation_boots: Option<u32>,
    chunk_timeout: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SensorFile {
    source: Option<String>,
    i2c_bus: Option<PathBuf>,
    address: Option<u8>,
    rate_hz: Option<u32>,
    range_g: Option<u8>,
    calibration_windows: Option<u32>,
    threshold_sigmas: Option<f32>,
    seed: Option<u64>,
    anomaly_after: Option<HumanDuration>,
}

/// The sensor settings: flags over the `[sensor]` section; `None` when neither asks
/// for a sensor (or `--sensor off`). `err(section, key, flag, from_flag, message)`
/// locates an error.
fn resolve_sensor(
    args: &Args,
    file: Option<SensorFile>,
    err: &impl Fn(&str, &str, &str, bool, String) -> ConfigError,
) -> Result<Option<SensorConfig>, ConfigError> {
    use crate::sensor::adxl345::{Range, Rate, ADDRESS_ALT_LOW};
    use crate::sensor::detector::DetectorConfig;

    let in_file = file.is_some();
    let file = file.unwrap_or_default();
    let simulated = || SensorSource::Simulated {
        seed: file.seed.unwrap_or(1),
        anomaly_after: args
            .sensor_anomaly_after
            .or(file.anomaly_after)
            .map(|d| d.0),
    };
    let source = match &args.sensor {
        Some(SensorFlag::Off) => return Ok(None),
        Some(SensorFlag::Simulated) => simulated(),
        Some(SensorFlag::I2c(bus)) => SensorSource::I2c { bus: bus.clone() },
        None if !in_file => return Ok(None),
        None => match file.source.as_deref() {
            Some("simulated") => simulated(),
            Some("i2c") => SensorSource::I2c {
                bus: file
                    .i2c_bus
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/dev/i2c-1")),
            },
            Some(other) => {
                return Err(err(
                    "sensor",
                    "source",
                    "--sensor",
                    false,
                    format!("{other:?}: expected \"simulated\" or \"i2c\""),
                ))
            }
            None => {
                return Err(err(
                    "sensor",
                    "source",
                    "--sensor",
                    false,
                    "say where the samples come from: \"simulated\" or \"i2c\"".into(),
                ))
            }
        },
    };
    let rate_hz = args.sensor_rate.or(file.rate_hz).unwrap_or(800);
    let rate = Rate::from_hz(rate_hz).ok_or_else(|| {
        err(
            "sensor",
            "rate_hz",
            "--sensor-rate",
            args.sensor_rate.is_some(),
            format!(
                "{rate_hz} Hz is not an ADXL345 rate: 25, 50, 100, 200, 400, 800, 1600 or 3200"
            ),
        )
    })?;
    let range_g = file.range_g.unwrap_or(2);
    let range = Range::from_g(range_g).ok_or_else(|| {
        err(
            "sensor",
            "range_g",
            "range_g",
            false,
            format!("±{range_g} g is not an ADXL345 range: 2, 4, 8 or 16"),
        )
    })?;
    let address = file.address.unwrap_or(ADDRESS_ALT_LOW);
    if address > 0x7F {
        return Err(err(
            "sensor",
            "address",
            "address",
            false,
            format!("{address:#04x} is not a 7-bit I2C address"),
        ));
    }
    let calibration_windows = args
        .sensor_calibration_windows
        .or(file.calibration_windows)
        .unwrap_or(DetectorConfig::default().calibration_windows);
    if calibration_windows == 0 {
        return Err(err(
            "sensor",
            "calibration_windows",
            "--sensor-calibration-windows",
            args.sensor_calibration_windows.is_some(),
            "must be at least 1".into(),
        ));
    }
    let threshold_sigmas = file
        .threshold_sigmas
        .unwrap_or(DetectorConfig::default().threshold_sigmas);
    if !(threshold_sigmas.is_finite() && threshold_sigmas >= 0.0) {
        return Err(err(
            "sensor",
            "threshold_sigmas",
            "threshold_sigmas",
            false,
            format!("{threshold_sigmas} is not a number of standard deviations ≥ 0"),
        ));
    }
    Ok(Some(SensorConfig {
        source,
        address,
        rate,
        range,
        detector: DetectorConfig {
            calibration_windows,
            threshold_sigmas,
        },
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    path: Option<PathBuf>,
    trusted_keys: Option<Vec<PathBuf>>,
    golden: Option<PathBuf>,
    variant: Option<String>,
    name: Option<String>,
    version: Option<VersionSetting>,
    warmup_runs: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BrokerFile {
    url: Option<BrokerUrl>,
    embedded_port: Option<u16>,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    username: Option<String>,
    password: Option<String>,
    keep_alive: Option<HumanDuration>,
    reconnect_base: Option<HumanDuration>,
    reconnect_cap: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpoolFile {
    dir: Option<PathBuf>,
    max_records: Option<usize>,
    max_bytes: Option<ByteSize>,
}

/// A [`Version`] read from a `"X.Y.Z"` string.
#[derive(Debug, Clone, Copy)]
struct VersionSetting(Version);

impl<'de> Deserialize<'de> for VersionSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_version(&text)
            .map(VersionSetting)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses `on`/`off` (also `true`/`false`, `yes`/`no`, `1`/`0`).
///
/// # Errors
///
/// A message naming the text.
pub fn parse_on_off(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("{text:?} is not on or off")),
    }
}

/// Parses `MAJOR.MINOR.PATCH`, each part a `u16`.
///
/// # Errors
///
/// A message naming the text when it is not three `u16`s separated by dots.
pub fn parse_version(text: &str) -> Result<Version, String> {
    let parts: Vec<u16> = text
        .split('.')
        .map(|p| p.parse::<u16>().map_err(|e| format!("{text:?}: {e}")))
        .collect::<Result<_, _>>()?;
    match parts[..] {
        [major, minor, patch] => Ok(Version::new(major, minor, patch)),
        _ => Err(format!("{text:?}: expected MAJOR.MINOR.PATCH")),
    }
}

/// A device id: 1 to 64 bytes of ASCII letters, digits, `.`, `_` and `-`, so it is
/// one MQTT topic level and safe in file names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct DeviceId(String);

impl DeviceId {
    /// The longest id, in bytes.
    pub const MAX_LEN: usize = 64;

    /// This machine's host name, with characters an id cannot hold replaced by `-`;
    /// `perch` if the host name cannot be read.
    pub fn from_hostname() -> DeviceId {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .unwrap_or_default();
        let cleaned: String = name
            .trim()
            .chars()
            .map(|c| if valid_id_char(c) { c } else { '-' })
            .take(DeviceId::MAX_LEN)
            .collect();
        DeviceId::from_str(&cleaned).unwrap_or_else(|_| DeviceId("perch".into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl FromStr for DeviceId {
    type Err = String;

    fn from_str(text: &str) -> Result<DeviceId, String> {
        if text.is_empty() || text.len() > DeviceId::MAX_LEN {
            return Err(format!(
                "device id {text:?} must be 1 to {} bytes",
                DeviceId::MAX_LEN
            ));
        }
        if let Some(c) = text.chars().find(|&c| !valid_id_char(c)) {
            return Err(format!(
                "device id {text:?} holds {c:?}; use letters, digits, '.', '_' and '-'"
            ));
        }
        Ok(DeviceId(text.to_string()))
    }
}

impl TryFrom<String> for DeviceId {
    type Error = String;

    fn try_from(text: String) -> Result<DeviceId, String> {
        text.parse()
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A broker setting: `embedded`, `mqtt://host[:port]` or `mqtts://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum BrokerUrl {
    /// The broker inside the agent.
    Embedded,
    /// A broker at `host:port`, over TLS when `tls`.
    Mqtt {
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// TCP port (1883 for mqtt://, 8883 for mqtts:// when the URL has none).
        port: u16,
        /// Whether the URL was `mqtts://`.
        tls: bool,
    },
}

impl FromStr for BrokerUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<BrokerUrl, String> {
        if text == "embedded" {
            return Ok(BrokerUrl::Embedded);
        }
        let (tls, rest) = if let Some(rest) = text.strip_prefix("mqtt://") {
            (false, rest)
        } else if let Some(rest) = text.strip_prefix("mqtts://") {
            (true, rest)
        } else {
            return Err(format!(
                "{text:?}: expected mqtt://host[:port], mqtts://host[:port] or embedded"
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') {
            return Err(format!(
                "{text:?}: put credentials in username/password, not in the URL"
            ));
        }
        if rest.contains('/') || rest.contains('?') {
            return Err(format!("{text:?}: a broker URL has no path or query"));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{text:?}: unclosed '[' in the host"))?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(format!("{text:?}: unexpected {after:?} after the host")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{text:?}: no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("{text:?}: port {p:?} is not a number from 0 to 65535"))?,
            None => default_port,
        };
        Ok(BrokerUrl::Mqtt {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

impl TryFrom<String> for BrokerUrl {
    type Error = String;

    fn try_from(text: String) -> Result<BrokerUrl, String> {
        text.parse()
    }
}

/// A duration written with a unit: `250ms`, `10s`, `5m`, `1h` (decimals allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<HumanDuration, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let seconds = match unit.trim() {
            "ms" => 1e-3,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "{text:?}: expected a number with a unit: ms, s, m or h (e.g. 10s)"
                ))
            }
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?}: {number:?} is not a number"))?;
        Duration::try_from_secs_f64(value * seconds)
            .map(HumanDuration)
            .map_err(|_| format!("{text:?}: out of range"))
    }
}

impl TryFrom<String> for HumanDuration {
    type Error = String;

    fn try_from(text: String) -> Result<HumanDuration, String> {
        text.parse()
    }
}

/// A listening address, or `off`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Listen(pub Option<SocketAddr>);

impl FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Listen, String> {
        if text == "off" {
            return Ok(Listen(None));
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Listen(Some(addr)));
        }
        // `localhost:8080` and the like.
        text.to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .map(|addr| Listen(Some(addr)))
            .ok_or_else(|| format!("{text:?}: expected HOST:PORT (e.g. 127.0.0.1:8080) or off"))
    }
}

impl TryFrom<String> for Listen {
    type Error = String;

    fn try_from(text: String) -> Result<Listen, String> {
        text.parse()
    }
}

/// A size in bytes: an integer, or a number with `KiB`, `MiB` or `GiB` (`kB`, `MB`,
/// `GB` are powers of ten).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<ByteSize, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?}; use B, KiB, MiB, GiB, kB, MB or GB"
                ))
            }
        };
        number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?}: expected a whole number of bytes"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The default spool folder of a device: `$STATE_DIRECTORY/spool` under systemd,
/// otherwise `perch/{device}/spool` under `$XDG_STATE_HOME`, `~/.local/state` or the
/// temporary folder.
pub fn default_spool_dir(device: &DeviceId) -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("spool");
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|d| !d.is_empty())
                .map(|home| PathBuf::from(home).join(".local/state"))
        })
        .unwrap_or_else(std::env::temp_dir);
    state.join("perch").join(device.as_str()).join("spool")
}

/// The 1-based line of byte `offset` in `text`, and the dotted key written on that
/// line (or the nearest `key =` above it, for values spanning lines), with its section.
fn locate_offset(text: &str, offset: usize) -> (Option<usize>, Option<String>) {
    let offset = offset.min(text.len());
    let line = text[..offset].matches('\n').count() + 1;
    let mut section = String::new();
    let mut key = None;
    for (i, raw) in text.lines().enumerate().take(line) {
        let l = raw.trim();
        if let Some(header) = l.strip_prefix('[') {
            section = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            key = None;
        } else if let Some((k, _)) = l.split_once('=') {
            if !l.starts_with('#') {
                key = Some(k.trim().trim_matches('"').to_string());
            }
        }
        if i + 1 == line && key.is_none() && !section.is_empty() {
            // The error is on a section header (an unknown table, say).
            return (Some(line), Some(section));
        }
    }
    let full = key.map(|k| {
        if section.is_empty() {
            k
        } else {
            format!("{section}.{k}")
        }
    });
    (Some(line), full)
}

/// The 1-based line where `key` is set in `[section]` (`""` for the top level).
fn locate_key(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if let Some(header) = l.strip_prefix('[') {
            current = header.split(']').next().unwrap_or("").trim().to_string();
        } else if let Some((k, _)) = l.split_once('=') {
            if current == section && k.trim().trim_matches('"') == key {
                return Some(i + 1);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_file(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(Path::new("/etc/perch/perchd.toml"), text, &Args::default())
    }

    #[test]
    fn no_file_and_no_flags_give_the_embedded_defaults() {
        let config = Config::resolve(&Args::default(), None).unwrap();
        assert_eq!(config.broker, Broker::Embedded { port: 1883 });
        assert_eq!(config.model.path, Path::new(DEFAULT_MODEL));
        assert_eq!(config.http_listen, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(config.report_interval, Duration::from_secs(10));
        assert_eq!(config.max_payload_bytes, 1 << 20);
        assert!(!config.device_id.as_str().is_empty());
    }

    #[test]
    fn a_full_file_is_read_with_paths_relative_to_its_folder() {
        let config = from_file(
            r#"
device_id = "gw-1"
report_interval = "250ms"
http_listen = "off"
max_payload_bytes = "64KiB"

[model]
path = "kws.perch"
trusted_keys = ["keys/fleet.pub", "/abs/other.pub"]

[broker]
url = "mqtts://broker.example.com"
ca_file = "ca.pem"
client_cert = "dev.pem"
client_key = "dev.key"
username = "gw-1"
password = "secret"

[slo]
p99_ms = 12.5
max_error_rate = 0.02

[spool]
dir = "spool"
max_records = 50
max_bytes = 100000
"#,
        )
        .unwrap();
        assert_eq!(config.device_id.as_str(), "gw-1");
        assert_eq!(config.report_interval, Duration::from_millis(250));
        assert_eq!(config.http_listen, None);
        assert_eq!(config.max_payload_bytes, 64 * 1024);
        assert_eq!(config.model.path, Path::new("/etc/perch/kws.perch"));
        assert_eq!(
            config.model.trusted_keys,
            [
                PathBuf::from("/etc/perch/keys/fleet.pub"),
                PathBuf::from("/abs/other.pub")
            ]
        );
        let Broker::External(b) = &config.broker else {
            panic!("{:?}", config.broker)
        };
        assert_eq!((b.host.as_str(), b.port), ("broker.example.com", 8883));
        let tls = b.tls.as_ref().unwrap();
        assert_eq!(tls.ca, Path::new("/etc/perch/ca.pem"));
        assert_eq!(
            tls.client,
            Some(("/etc/perch/dev.pem".into(), "/etc/perch/dev.key".into()))
        );
        assert_eq!(b.username.as_deref(), Some("gw-1"));
        assert_eq!(config.slo.p99_ms, Some(12.5));
        assert_eq!(config.spool.dir, Path::new("/etc/perch/spool"));
        assert_eq!(
            (config.spool.max_records, config.spool.max_bytes),
            (50, 100_000)
        );
    }

    #[test]
    fn flags_override_the_file() {
        let args = Args {
            broker: Some("mqtt://10.0.0.5:1999".parse().unwrap()),
            device_id: Some("flagged".parse().unwrap()),
            report_interval: Some("1s".parse().unwrap()),
            ..Args::default()
        };
        let config = Config::from_toml(
            Path::new("p.toml"),
            "device_id = \"filed\"\nreport_interval = \"5s\"\n[broker]\nurl = \"embedded\"\n",
            &args,
        )
        .unwrap();
        assert_eq!(config.device_id.as_str(), "flagged");
        assert_eq!(config.report_interval, Duration::from_secs(1));
        assert_eq!(
            config.broker,
            Broker::External(BrokerConfig::plain("10.0.0.5", 1999))
        );
    }

    #[test]
    fn over_the_air_updates_follow_the_trusted_keys_unless_told_otherwise() {
        let plain = from_file("[spool]\ndir = \"/var/lib/perch/spool\"\n").unwrap();
        assert_eq!(plain.ota, None, "no keys, no signed updates");
        let keyed = from_file(
            "[model]\ntrusted_keys = [\"fleet.pub\"]\n[spool]\ndir = \"/var/lib/perch/spool\"\n",
        )
        .unwrap();
        let ota = keyed.ota.unwrap();
        assert_eq!(ota.group, DEFAULT_GROUP);
        assert_eq!(ota.dir, Path::new("/var/lib/perch/ota"));
        assert_eq!(ota.max_probation_boots, DEFAULT_MAX_PROBATION_BOOTS);
        let set = from_file(
            "[model]\ntrusted_keys = [\"k.pub\"]\n[ota]\ngroup = \"kitchen\"\ndir = \"ota\"\n\
             max_probation_boots = 5\nchunk_timeout = \"2s\"\n",
        )
        .unwrap()
        .ota
        .unwrap();
        assert_eq!(
            (
                set.group.as_str(),
                set.dir.as_path(),
                set.max_probation_boots
            ),
            ("kitchen", Path::new("/etc/perch/ota"), 5)
        );
        assert_eq!(set.chunk_timeout, Duration::from_secs(2));
        let off = Args {
            ota: Some(false),
            ..Args::default()
        };
        let text = "[model]\ntrusted_keys = [\"k.pub\"]\n";
        let config = Config::from_toml(Path::new("p.toml"), text, &off).unwrap();
        assert_eq!(config.ota, None);

        let err = from_file("[ota]\nenabled = true\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("ota.enabled"), "{err}");
        assert!(err.to_string().contains("trusted_keys"), "{err}");
        let err =
            from_file("[model]\ntrusted_keys = [\"k\"]\n[ota]\ngroup = \"a/b\"\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("ota.group"), "{err}");
        assert_eq!(err.line, Some(4), "{err}");
    }

    #[test]
    fn a_bad_value_names_the_file_line_and_key() {
        let err = from_file("device_id = \"ok\"\n\n[broker]\nurl = \"tcp://x\"\n").unwrap_err();
        assert_eq!(err.line, Some(4), "{err}");
        assert_eq!(err.key.as_deref(), Some("broker.url"), "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with("/etc/perch/perchd.toml:4: broker.url: "),
            "{text}"
        );
        assert!(text.contains("expected mqtt://"), "{text}");
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        let err = from_file("[spool]\nmax_recods = 3\n").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        assert_eq!(err.key.as_deref(), Some("spool.max_recods"), "{err}");
        assert!(err.message.contains("unknown field"), "{err}");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let err = from_file("report_interval = 10\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("report_interval"), "{err}");
        assert_eq!(err.line, Some(1));
    }

    #[test]
    fn mqtts_without_a_ca_file_is_an_error_on_the_url_line() {
        let err = from_file("[broker]\n\nurl = \"mqtts://b:8883\"\n").unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(3), Some("broker.url"))
        );
        assert!(err.message.contains("CA file"), "{err}");
    }

    #[test]
    fn a_client_certificate_without_its_key_is_an_error() {
        let err = from_file(
            "[broker]\nurl = \"mqtts://b\"\nca_file = \"ca.pem\"\nclient_cert = \"c.pem\"\n",
        )
        .unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(4), Some("broker.client_cert"))
        );
    }

    #[test]
    fn an_error_from_a_flag_names_the_flag() {
        let args = Args {
            report_interval: Some("1ms".parse().unwrap()),
            ..Args::default()
        };
        let err = Config::resolve(&args, None).unwrap_err();
        assert_eq!(err.to_string(), "--report-interval: must be at least 10ms");
    }

    #[test]
    fn broker_urls_parse_with_default_ports_and_ipv6() {
        let parse = |t: &str| t.parse::<BrokerUrl>();
        assert_eq!(
            parse("mqtt://localhost").unwrap(),
            BrokerUrl::Mqtt {
                host: "localhost".into(),
                port: 1883,
                tls: false
            }
        );
        assert_eq!(
            parse("mqtts://[::1]:9999").unwrap(),
            BrokerUrl::Mqtt {
                host: "::1".into(),
                port: 9999,
                tls: true
            }
        );
        assert_eq!(parse("embedded").unwrap(), BrokerUrl::Embedded);
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://u:p@h",
            "mqtt://h:99999",
            "mqtt://h/x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_and_sizes_take_units() {
        let d = |t: &str| t.parse::<HumanDuration>().map(|d| d.0);
        assert_eq!(d("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
        assert!(d("10").is_err());
        assert!(d("s").is_err());
        let b = |t: &str| t.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(b("1MiB"), Ok(1 << 20));
        assert_eq!(b("1500"), Ok(1500));
        assert!(b("1.5MiB").is_err());
        assert!(b("1 parsec").is_err());
    }

    #[test]
    fn device_ids_are_one_safe_topic_level() {
        assert!("gw-01.kitchen_2".parse::<DeviceId>().is_ok());
        for bad in ["", "a/b", "a+b", "a#", "é", &"x".repeat(65)] {
            assert!(bad.parse::<DeviceId>().is_err(), "{bad}");
        }
        let host = DeviceId::from_hostname();
        assert!(host.as_str().parse::<DeviceId>().is_ok());
    }

    #[test]
    fn a_sensor_section_configures_the_sensor_with_defaults_for_what_it_leaves_out() {
        let config = from_file(
            "[sensor]\nsource = \"simulated\"\nanomaly_after = \"30s\"\naddress = 0x1D\n",
        )
        .unwrap();
        let sensor = config.sensor.unwrap();
        assert_eq!(
            sensor.source,
            SensorSource::Simulated {
                seed: 1,
                anomaly_after: Some(Duration::from_secs(30))
            }
        );
        assert_eq!(sensor.address, 0x1D);
        assert_eq!(sensor.rate.hz(), 800);
        assert_eq!(sensor.range.g(), 2);
        assert_eq!(sensor.detector.calibration_windows, 32);
        let i2c = from_file("[sensor]\nsource = \"i2c\"\n")
            .unwrap()
            .sensor
            .unwrap();
        assert_eq!(
            i2c.source,
            SensorSource::I2c {
                bus: "/dev/i2c-1".into()
            }
        );
        assert_eq!(from_file("").unwrap().sensor, None);
    }

    #[test]
    fn sensor_flags_turn_it_on_and_off_over_the_file() {
        let args = Args {
            sensor: Some("simulated".parse().unwrap()),
            sensor_rate: Some(3200),
            sensor_calibration_windows: Some(4),
            sensor_anomaly_after: Some("2s".parse().unwrap()),
            ..Args::default()
        };
        let sensor = Config::resolve(&args, None).unwrap().sensor.unwrap();
        assert_eq!(sensor.rate.hz(), 3200);
        assert_eq!(sensor.detector.calibration_windows, 4);
        assert!(matches!(
            sensor.source,
            SensorSource::Simulated { anomaly_after: Some(d), .. } if d == Duration::from_secs(2)
        ));
        let off = Args {
            sensor: Some("off".parse().unwrap()),
            ..Args::default()
        };
        let text = "[sensor]\nsource = \"simulated\"\n";
        let config = Config::from_toml(Path::new("p.toml"), text, &off).unwrap();
        assert_eq!(config.sensor, None);
        assert!("i2c-1".parse::<SensorFlag>().is_err());
    }

    #[test]
    fn a_sensor_rate_the_device_lacks_is_an_error_on_its_line() {
        let err = from_file("[sensor]\nsource = \"simulated\"\nrate_hz = 1000\n").unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(3), Some("sensor.rate_hz"))
        );
        assert!(err.message.contains("not an ADXL345 rate"), "{err}");
        let err = from_file("[sensor]\nrate_hz = 800\n").unwrap_err();
        assert!(err.message.contains("\"simulated\" or \"i2c\""), "{err}");
    }
}
