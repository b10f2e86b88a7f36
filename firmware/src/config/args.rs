//! `perchd`'s command-line flags, each also read from an environment variable.

use std::path::PathBuf;

use perch_runtime::wire::Version;

use super::values::{
    parse_on_off, parse_version, BrokerUrl, ByteSize, HumanDuration, Listen, SensorFlag,
};
use crate::device::DeviceId;

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
    /// How long one inference may run before its request is answered 504 and the model
    /// counts as hung (the systemd watchdog is then no longer fed), e.g. `2s`
    /// (default 10s).
    #[arg(long, env = "PERCH_INFERENCE_TIMEOUT", value_name = "DURATION")]
    pub inference_timeout: Option<HumanDuration>,
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
