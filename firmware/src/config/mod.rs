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
//! inference_timeout = "10s"          # past it: 504, and the model counts as hung
//! memory_budget = "64 MiB"           # all loaded models together; default: no bound
//!
//! [model]
//! path = "/var/lib/perch/kws-1.1.0.perch"   # a model file (ONNX, NNEF) or a signed bundle
//! trusted_keys = ["/etc/perch/fleet.pub"]    # bundles must be signed by one of these
//! # For plain model files only (a bundle carries its own):
//! # golden = "golden/"  variant = "w8"  name = "kws"  version = "1.1.0"
//! warmup_runs = 20
//!
//! [[models]]                                 # more models, served over HTTP by name
//! name = "iris"                              # unique; the URL's {name}
//! path = "/var/lib/perch/iris.perch"         # verified with model.trusted_keys
//! load = false                               # default true; false: load on request
//! # golden, variant, version, warmup_runs as in [model]
//! slo = { p99_ms = 5.0 }                     # its update soak's SLOs; default [slo]
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
//! stall_timeout = "10m"                      # no good copy of a chunk by then: the rollout fails
//! ```
//!
//! Without a `[model]` section (and `--model`), the first `[[models]]` entry is the
//! primary model: the one MQTT, the sensor and over-the-air updates use.
//!
//! Relative paths in the file are relative to the file's folder; relative paths given
//! as flags or in the environment are relative to the working directory. Errors in the
//! file name the file, the line and the key (`perchd.toml:7: broker.url: ...`); unknown
//! keys are errors, so a typo is not silently ignored.
//!
//! Each section has its module and one function resolving it (flags over the file over
//! the defaults): [`model`], [`broker`], [`spool`], [`sensor`], [`ota`]; the top-level
//! keys and `[slo]` are resolved here. [`origin`] keeps where each value came from.

mod args;
pub mod broker;
mod experiment;
pub mod model;
mod origin;
pub mod ota;
pub mod sensor;
mod slo;
pub mod spool;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use perch_runtime::slo::Slo;
use serde::Deserialize;
use toml::Spanned;

pub use crate::device::DeviceId;
use crate::sensor::SensorConfig;
pub use args::Args;
pub use broker::{Broker, BrokerConfig, TlsFiles, DEFAULT_EMBEDDED_PORT};
pub use model::{ModelConfig, RepositoryModel, DEFAULT_MODEL};
pub use origin::ConfigError;
use origin::{Setting, Source};
pub use ota::{
    OtaSettings, DEFAULT_CHUNK_TIMEOUT, DEFAULT_GROUP, DEFAULT_MAX_PROBATION_BOOTS,
    DEFAULT_STALL_TIMEOUT,
};
use slo::{resolve_slo, SloFile};
pub use spool::{
    default_spool_dir, SpoolConfig, DEFAULT_SPOOL_MAX_BYTES, DEFAULT_SPOOL_MAX_RECORDS,
};
pub use values::{
    parse_on_off, parse_version, BrokerUrl, ByteSize, HumanDuration, Listen, SensorFlag,
};

/// Where the HTTP API listens by default.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
/// Time between metrics reports by default.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// The largest inference request by default, in bytes.
pub const DEFAULT_MAX_PAYLOAD_BYTES: u64 = 1 << 20;
/// How long one inference may run by default.
pub const DEFAULT_INFERENCE_TIMEOUT: Duration = Duration::from_secs(10);
/// Room for the topic and headers on top of the payload limit when sizing the MQTT
/// client's incoming packet limit, so a request just over the payload limit still
/// arrives and is answered with a reason (`crate::mqtt` sizes the client with it).
pub const INCOMING_HEADROOM: usize = 64 << 10;
/// The smallest `max_payload_bytes` with over-the-air updates on: bundle chunks come in
/// MQTT messages of up to [`perch_runtime::rollout::MAX_CHUNK_SIZE`] bytes plus the
/// frame, which must fit the client's packet limit (`max_payload_bytes` plus
/// [`INCOMING_HEADROOM`]).
pub const MIN_PAYLOAD_WITH_OTA: u64 =
    perch_runtime::rollout::MAX_CHUNK_SIZE as u64 + 1024 - INCOMING_HEADROOM as u64;
/// The shortest report interval accepted.
pub const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(10);

/// The configuration the agent runs with, every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// This device's id, the `{device}` of every topic.
    pub device_id: DeviceId,
    /// The broker to connect to.
    pub broker: Broker,
    /// The primary model: the one MQTT requests, the sensor, over-the-air updates and
    /// `/predict` without a model name go to.
    pub model: ModelConfig,
    /// The other models of the repository (`[[models]]`), served over HTTP by name.
    pub models: Vec<RepositoryModel>,
    /// The memory the loaded models may take together, in bytes (`None`: no bound);
    /// see [`crate::repository`] for how a model's memory is estimated.
    pub memory_budget: Option<u64>,
    /// Time between metrics reports.
    pub report_interval: Duration,
    /// The model's service-level objectives, checked per report interval (each one set
    /// wins over the bundle's; a report interval that misses one marks the device
    /// `Degraded` in its health message).
    pub slo: Slo,
    /// Address of the HTTP API; `None` turns it off.
    pub http_listen: Option<SocketAddr>,
    /// Where reports wait while the broker is unreachable.
    pub spool: SpoolConfig,
    /// The largest inference request, in bytes.
    pub max_payload_bytes: usize,
    /// How long one inference may run.
    pub inference_timeout: Duration,
    /// The accelerometer input; `None` when there is none.
    pub sensor: Option<SensorConfig>,
    /// Over-the-air updates; `None` when off.
    pub ota: Option<OtaSettings>,
    /// A/B experiments over the repository's models (`[[experiments]]`), each valid on
    /// its own; the agent checks their models against the repository.
    pub experiments: Vec<crate::experiment::ExperimentSpec>,
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
            model: ModelConfig::new(model),
            models: Vec::new(),
            memory_budget: None,
            report_interval: DEFAULT_REPORT_INTERVAL,
            slo: Slo::default(),
            http_listen: DEFAULT_HTTP_LISTEN.parse().ok(),
            spool: SpoolConfig {
                dir: spool_dir,
                max_records: DEFAULT_SPOOL_MAX_RECORDS,
                max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            },
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES as usize,
            inference_timeout: DEFAULT_INFERENCE_TIMEOUT,
            sensor: None,
            ota: None,
            experiments: Vec::new(),
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
        let source = Source::new(file);
        let parsed: FileConfig = source.parse()?;
        let device_id = args
            .device_id
            .clone()
            .or(parsed.device_id.map(Spanned::into_inner))
            .unwrap_or_else(DeviceId::from_hostname);
        let slo = resolve_slo(parsed.slo.unwrap_or_default(), &source)?;
        let entries = parsed.models.unwrap_or_default();
        // Without `[model]` or `--model`, the first `[[models]]` entry is the primary.
        let first_is_primary =
            parsed.model.is_none() && args.model.is_none() && !entries.is_empty();
        let mut model = model::resolve(args, parsed.model.unwrap_or_default(), &source);
        let models = if first_is_primary {
            let unnamed = ModelConfig {
                path: PathBuf::new(),
                name: None,
                ..model.clone()
            };
            let mut all = model::resolve_models(entries, &unnamed, &source)?;
            model = all.remove(0).config;
            all
        } else {
            model::resolve_models(entries, &model, &source)?
        };
        let memory_budget = match parsed.memory_budget {
            Some(budget) => {
                let budget = Setting::from_file("memory_budget", budget);
                if budget.value.0 == 0 {
                    return Err(source.invalid(&budget, "must be more than zero"));
                }
                Some(budget.value.0)
            }
            None => None,
        };
        let broker = broker::resolve(args, parsed.broker.unwrap_or_default(), &source)?;
        let report_interval = Setting::pick_or(
            ("--report-interval", args.report_interval),
            ("report_interval", parsed.report_interval),
            HumanDuration(DEFAULT_REPORT_INTERVAL),
        );
        if report_interval.value.0 < MIN_REPORT_INTERVAL {
            return Err(source.invalid(
                &report_interval,
                format!("must be at least {}ms", MIN_REPORT_INTERVAL.as_millis()),
            ));
        }
        let http_listen = args
            .http_listen
            .clone()
            .or(parsed.http_listen.map(Spanned::into_inner))
            .map_or_else(|| DEFAULT_HTTP_LISTEN.parse().ok(), |l| l.0);
        let max_payload = Setting::pick_or(
            ("--max-payload", args.max_payload),
            ("max_payload_bytes", parsed.max_payload_bytes),
            ByteSize(DEFAULT_MAX_PAYLOAD_BYTES),
        );
        let inference_timeout = Setting::pick_or(
            ("--inference-timeout", args.inference_timeout),
            ("inference_timeout", parsed.inference_timeout),
            HumanDuration(DEFAULT_INFERENCE_TIMEOUT),
        );
        if inference_timeout.value.0.is_zero() {
            return Err(source.invalid(&inference_timeout, "must be more than zero"));
        }
        let spool = spool::resolve(args, parsed.spool.unwrap_or_default(), &device_id, &source)?;
        let sensor = sensor::resolve(args, parsed.sensor, &source)?;
        let ota = ota::resolve(
            args,
            parsed.ota.unwrap_or_default(),
            &model,
            &spool,
            &source,
        )?;
        if ota.is_some() && max_payload.value.0 < MIN_PAYLOAD_WITH_OTA {
            return Err(source.invalid(
                &max_payload,
                format!(
                    "{} bytes is too small with over-the-air updates on: bundle chunks of up \
                     to {} bytes must fit (at least {MIN_PAYLOAD_WITH_OTA} bytes; or turn \
                     updates off with ota.enabled = false)",
                    max_payload.value.0,
                    perch_runtime::rollout::MAX_CHUNK_SIZE
                ),
            ));
        }
        let experiments = experiment::resolve(parsed.experiments.unwrap_or_default(), &source)?;
        Ok(Config {
            experiments,
            device_id,
            broker,
            model,
            models,
            memory_budget,
            report_interval: report_interval.value.0,
            slo,
            http_listen,
            spool,
            max_payload_bytes: usize::try_from(max_payload.value.0).unwrap_or(usize::MAX),
            inference_timeout: inference_timeout.value.0,
            sensor,
            ota,
        })
    }
}

/// The file's schema: every key optional; each section's is in its module.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    device_id: Option<Spanned<DeviceId>>,
    report_interval: Option<Spanned<HumanDuration>>,
    http_listen: Option<Spanned<Listen>>,
    max_payload_bytes: Option<Spanned<ByteSize>>,
    inference_timeout: Option<Spanned<HumanDuration>>,
    memory_budget: Option<Spanned<ByteSize>>,
    model: Option<model::ModelFile>,
    models: Option<Vec<model::ModelsEntry>>,
    broker: Option<broker::BrokerFile>,
    slo: Option<SloFile>,
    spool: Option<spool::SpoolFile>,
    sensor: Option<sensor::SensorFile>,
    ota: Option<ota::OtaFile>,
    experiments: Option<Vec<experiment::ExperimentEntry>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::SensorSource;

    fn from_file(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(Path::new("/etc/perch/perchd.toml"), text, &Args::default())
    }

    #[test]
    fn a_models_entry_has_its_own_slo_and_an_empty_one_without() {
        let text = "[model]\npath = \"a.onnx\"\n[slo]\np99_ms = 10.0\n\
                    [[models]]\nname = \"b\"\npath = \"b.onnx\"\n\
                    slo = { p99_ms = 2.5, max_error_rate = 0.5 }\n\
                    [[models]]\nname = \"c\"\npath = \"c.onnx\"\n";
        let config = from_file(text).unwrap();
        assert_eq!(
            (
                config.models[0].slo.p99_ms,
                config.models[0].slo.max_error_rate
            ),
            (Some(2.5), Some(0.5))
        );
        assert_eq!(
            config.models[1].slo,
            Slo::default(),
            "[slo] applies where it is used"
        );
        let err = from_file(&text.replace("0.5 }", "1.5 }")).unwrap_err();
        assert!(
            err.to_string().contains("1.5 is not a fraction in [0, 1]"),
            "{err}"
        );
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
inference_timeout = "2s"

[model]
path = "kws.perch"
trusted_keys = ["keys/fleet.pub", "/abs/other.pub"]

[ota]
enabled = false

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
        assert_eq!(config.inference_timeout, Duration::from_secs(2));
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
        let e = &b.endpoint;
        assert_eq!((e.host.as_str(), e.port), ("broker.example.com", 8883));
        let tls = e.tls.as_ref().unwrap();
        assert_eq!(tls.ca, Path::new("/etc/perch/ca.pem"));
        assert_eq!(
            tls.client,
            Some(("/etc/perch/dev.pem".into(), "/etc/perch/dev.key".into()))
        );
        assert_eq!(e.username.as_deref(), Some("gw-1"));
        assert_eq!(config.slo.p99_ms, Some(12.5));
        assert_eq!(config.spool.dir, Path::new("/etc/perch/spool"));
        assert_eq!(
            (config.spool.max_records, config.spool.max_bytes),
            (50, 100_000)
        );
    }

    /// Issue 15: a limit below the chunk size made every chunk message end the
    /// connection, at every reconnection.
    #[test]
    fn a_payload_limit_too_small_for_bundle_chunks_is_refused_while_updates_are_on() {
        let text = "max_payload_bytes = \"64KiB\"\n[model]\ntrusted_keys = [\"k.pub\"]\n";
        let err = from_file(text).unwrap_err().to_string();
        assert!(
            err.contains("perchd.toml:1: max_payload_bytes") && err.contains("bundle chunks"),
            "{err}"
        );
        let off = format!("{text}[ota]\nenabled = false\n");
        assert_eq!(from_file(&off).unwrap().max_payload_bytes, 64 << 10);
        let enough = text.replace("64KiB", "1MiB");
        assert!(from_file(&enough).unwrap().ota.is_some());
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
    fn a_models_list_adds_named_models_beside_the_primary_with_its_keys() {
        let config = from_file(
            "memory_budget = \"64 MiB\"\n[model]\npath = \"kws.perch\"\n\
             trusted_keys = [\"fleet.pub\"]\n[ota]\nenabled = false\n\
             [[models]]\nname = \"digits\"\npath = \"digits/model.onnx\"\n\
             [[models]]\nname = \"iris\"\npath = \"iris.perch\"\nload = false\n",
        )
        .unwrap();
        assert_eq!(config.memory_budget, Some(64 << 20));
        assert_eq!(config.model.path, Path::new("/etc/perch/kws.perch"));
        let names: Vec<_> = config
            .models
            .iter()
            .map(|m| (m.config.name.as_deref().unwrap(), m.load))
            .collect();
        assert_eq!(names, [("digits", true), ("iris", false)]);
        let digits = &config.models[0].config;
        assert_eq!(digits.path, Path::new("/etc/perch/digits/model.onnx"));
        assert_eq!(digits.trusted_keys, [PathBuf::from("/etc/perch/fleet.pub")]);
        assert_eq!(
            config.models[1].config.warmup_runs,
            config.model.warmup_runs
        );
    }

    #[test]
    fn without_a_model_section_the_first_of_the_models_list_is_the_primary() {
        let config = from_file(
            "[[models]]\nname = \"digits\"\npath = \"d/model.onnx\"\nwarmup_runs = 2\n\
             [[models]]\nname = \"kws-dscnn\"\npath = \"k/model.onnx\"\n",
        )
        .unwrap();
        assert_eq!(config.model.name.as_deref(), Some("digits"));
        assert_eq!(config.model.warmup_runs, 2);
        assert_eq!(config.models.len(), 1);
        assert_eq!(config.models[0].config.name.as_deref(), Some("kws-dscnn"));
        assert_eq!(from_file("").unwrap().models, []);
    }

    #[test]
    fn a_model_name_given_twice_is_an_error_naming_both_entries() {
        let err = from_file(
            "[[models]]\nname = \"a\"\npath = \"a.onnx\"\n\
             [[models]]\nname = \"b\"\npath = \"b.onnx\"\n\
             [[models]]\nname = \"a\"\npath = \"c.onnx\"\n",
        )
        .unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(8), Some("models.name"))
        );
        assert!(
            err.message
                .contains("\"a\" is also the name of the [[models]] entry on line 2"),
            "{err}"
        );
        // The primary model's name counts too (here its folder's name).
        let err = from_file(
            "[model]\npath = \"models/kws/model.onnx\"\n\
             [[models]]\nname = \"kws\"\npath = \"other.onnx\"\n",
        )
        .unwrap_err();
        assert!(err.message.contains("primary model"), "{err}");
        let err = from_file("memory_budget = \"0 MiB\"\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("memory_budget"), "{err}");
        let err = from_file("[[models]]\nname = \"a\"\n").unwrap_err();
        assert!(err.message.contains("path"), "{err}");
    }

    #[test]
    fn experiments_are_read_with_their_variants_and_shadows() {
        let config = from_file(
            r#"
[[experiments]]
name = "iris-ab"
entity_id = "parameter:entity_id"
agreement = "max_relative_difference"
default = "b"
variants = [
    { name = "a", model = "iris", share = 90 },
    { name = "b", model = "iris-small", share_bp = 1000 },
]
shadows = [{ model = "iris-int8" }]
"#,
        )
        .unwrap();
        let [e] = &config.experiments[..] else {
            panic!("{:?}", config.experiments)
        };
        assert_eq!((e.name.as_str(), e.default.as_str()), ("iris-ab", "b"));
        let shares: Vec<_> = e.variants.iter().map(|v| v.share.basis_points()).collect();
        assert_eq!(shares, [9000, 1000]);
        assert_eq!(
            (e.shadows[0].name.as_str(), e.shadows[0].model.as_str()),
            ("iris-int8", "iris-int8")
        );
        assert_eq!(
            e.entity,
            crate::experiment::EntitySource::Parameter("entity_id".into())
        );
        assert_eq!(
            e.agreement,
            crate::experiment::Agreement::MaxRelativeDifference
        );
        assert!(!e.primary);
    }

    #[test]
    fn an_experiment_whose_shares_do_not_sum_to_100_percent_is_refused_on_its_name_line() {
        let err = from_file(
            "device_id = \"gw\"\n[[experiments]]\nname = \"x\"\nvariants = [\n\
             { name = \"a\", model = \"m\", share = 60 },\n\
             { name = \"b\", model = \"n\", share = 30 }]\n",
        )
        .unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(3), Some("experiments.name"))
        );
        assert!(err.message.contains("sum to 90 %, not 100 %"), "{err}");
        let err = from_file(
            "[[experiments]]\nname = \"x\"\nvariants = [{ name = \"a\", model = \"m\", share = 101 }, \
             { name = \"b\", model = \"n\", share = 0 }]\n",
        )
        .unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("experiments.variants.share"),
            "{err}"
        );
        let err = from_file(
            "[[experiments]]\nname = \"x\"\nentity_id = \"cookie:id\"\n\
             variants = [{ name = \"a\", model = \"m\", share = 50 }, { name = \"b\", model = \"n\", share = 50 }]\n",
        )
        .unwrap_err();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(3), Some("experiments.entity_id"))
        );
        let err = from_file(
            "[[experiments]]\nname = \"x\"\n\
             variants = [{ name = \"a\", model = \"m\" }, { name = \"b\", model = \"n\", share = 50 }]\n",
        )
        .unwrap_err();
        assert!(err.message.contains("share"), "{err}");
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
