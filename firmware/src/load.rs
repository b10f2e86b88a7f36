//! Loading a model to serve: a plain model file or a signed bundle, self-tested against
//! its golden outputs and warmed up.
//!
//! Both the agent (at start-up, and to serve the configured model again) and the
//! over-the-air updater (the bundles in its slots) load through here, so a model is
//! checked the same way whichever way it arrives. A model that loads but fails its
//! self-test is not an error: it comes back as [`Loaded`] in the
//! [`ModelState::SelfTestFailed`] state, with the reason, and is served as not ready.
//!
//! ```no_run
//! use perch_firmware::config::Config;
//! use perch_firmware::load;
//!
//! let config = Config::new("gw-1".parse().unwrap(), "models/kws-dscnn/model.onnx");
//! let loaded = load::load(&config.model)?;
//! assert!(loaded.boot.ready());
//! # Ok::<(), load::LoadError>(())
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use perch_runtime::bundle::{self, Bundle, BundleError, Limits, VerifyingKey};
use perch_runtime::engine::{EngineError, Golden, LoadOptions, Model, SelfTestReport, Tolerance};
use perch_runtime::histogram::Histogram;
use perch_runtime::wire::{self, Health, MetricsReport, ModelId, ModelState, Version};

use perch_runtime::model_files;
use perch_runtime::slo::Slo;

use crate::config::ModelConfig;
use crate::service::features::{FeatureError, Features};

/// Why a model could not be loaded (a failed self-test is not one of them).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The model file could not be loaded.
    #[error("cannot load {}", path.display())]
    Model {
        /// The model file.
        path: PathBuf,
        /// The engine's reason.
        #[source]
        source: EngineError,
    },
    /// The bundle, or a key to verify it, could not be read, verified or loaded.
    #[error("cannot load bundle {}", path.display())]
    Bundle {
        /// The bundle or key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: BundleError,
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
    #[error("the model's name or version does not fit a report")]
    Wire(#[source] perch_runtime::Error),
    /// The feature schema (the bundle's, or `schema.json` beside a model file) does not
    /// read, or does not fit the model.
    #[error("cannot use the feature schema of {}", path.display())]
    Schema {
        /// The bundle, or the schema file.
        path: PathBuf,
        /// Why (boxed: it is large, and rare).
        #[source]
        source: Box<FeatureError>,
    },
    /// `schema.json` beside a model file could not be read.
    #[error("cannot read {}", path.display())]
    SchemaFile {
        /// The schema file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The outcome of a boot.
#[derive(Debug, Clone)]
pub struct BootReport {
    /// The health message the device would publish.
    pub health: Health,
    /// Latencies of the warm-up runs as a metrics report (empty if the self-test failed).
    pub warmup: MetricsReport,
    /// Output comparison of a passing self-test.
    pub self_test: Option<SelfTestReport>,
    /// Why the self-test failed, when it did.
    pub failure: Option<String>,
    /// Load and optimize time.
    pub load_time: Duration,
}

impl BootReport {
    /// Whether the model passed its self-test and may serve.
    pub fn ready(&self) -> bool {
        self.health.state == ModelState::Ready
    }
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
    /// The file it was loaded from (a model file, a bundle, an update slot).
    pub path: PathBuf,
    /// The feature schema for `/predict`, bound to the model: the bundle's, or
    /// [`SCHEMA_FILE`] beside a plain model file (`None` when there is none).
    pub features: Option<Features>,
}

/// The file beside a plain model file that holds its feature schema (in a bundle the
/// schema is part of the signed manifest).
pub const SCHEMA_FILE: &str = "schema.json";

/// Binds `schema` to `model`, naming `path` (the bundle or the schema file) on failure.
fn bind(schema: bundle::FeatureSchema, model: &Model, path: &Path) -> Result<Features, LoadError> {
    let meta = model.metadata();
    Features::bind(schema, &meta.inputs, &meta.outputs).map_err(|source| LoadError::Schema {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// The schema in [`SCHEMA_FILE`] in `dir`, bound to `model`, if the file exists.
fn schema_beside(dir: &Path, model: &Model) -> Result<Option<Features>, LoadError> {
    let path = dir.join(SCHEMA_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LoadError::SchemaFile { path, source }),
    };
    let schema = bundle::FeatureSchema::from_json(&bytes).map_err(|e| LoadError::Schema {
        path: path.clone(),
        source: Box::new(FeatureError::Schema(e)),
    })?;
    bind(schema, model, &path).map(Some)
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
pub fn load(config: &ModelConfig) -> Result<Loaded, LoadError> {
    let started = Instant::now();
    let path = &config.path;
    if model_files::is_bundle_file(path) {
        if config.trusted_keys.is_empty() {
            return Err(LoadError::NoTrustedKeys { path: path.clone() });
        }
        let keys = config
            .trusted_keys
            .iter()
            .map(bundle::read_verifying_key)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| LoadError::Bundle {
                path: path.clone(),
                source,
            })?;
        return load_verified_bundle(path, &keys, config.warmup_runs, started);
    }
    let model = Model::load(path, &LoadOptions::new()).map_err(|source| LoadError::Model {
        path: path.clone(),
        source,
    })?;
    let load_time = started.elapsed();
    let name = config.name.clone().unwrap_or_else(|| {
        path.parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "model".into())
    });
    let id = ModelId::new(&name, config.version.unwrap_or(Version::new(0, 0, 0)))
        .map_err(LoadError::Wire)?;
    let golden_dir = config
        .golden
        .clone()
        .unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).join("golden"));
    let variant = config
        .variant
        .clone()
        .or_else(|| model_files::golden_variant(path));
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
    let warmup = Warmup {
        path,
        runs: config.warmup_runs,
        load_time,
    };
    let boot = warmup.finish(&model, &id, golden.as_ref(), self_test)?;
    let features = schema_beside(path.parent().unwrap_or(Path::new(".")), &model)?;
    Ok(Loaded {
        model,
        id,
        boot,
        slo: Slo::default(),
        source: format!("model file {}", path.display()),
        sequence: None,
        path: path.clone(),
        features,
    })
}

/// Loads the signed bundle at `path` as [`load`] does, verified against `keys` (already
/// read), warmed up with `warmup_runs` inferences: how over-the-air updates load the
/// bundles in their slots. Blocks.
///
/// # Errors
///
/// The bundle does not read, verify or load. A failed self-test is not an error.
pub fn load_bundle(
    path: &Path,
    keys: &[VerifyingKey],
    warmup_runs: u32,
) -> Result<Loaded, LoadError> {
    load_verified_bundle(path, keys, warmup_runs, Instant::now())
}

/// Reads the public key files a bundle may be signed with.
///
/// # Errors
///
/// [`LoadError::Bundle`] naming the first key file that does not read or parse.
pub fn read_trusted_keys(paths: &[PathBuf]) -> Result<Vec<VerifyingKey>, LoadError> {
    paths
        .iter()
        .map(|path| {
            bundle::read_verifying_key(path).map_err(|source| LoadError::Bundle {
                path: path.clone(),
                source,
            })
        })
        .collect()
}

fn load_verified_bundle(
    path: &Path,
    keys: &[VerifyingKey],
    warmup_runs: u32,
    started: Instant,
) -> Result<Loaded, LoadError> {
    let bundle_err = |source| LoadError::Bundle {
        path: path.to_path_buf(),
        source,
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
    let id = ModelId::new(&manifest.name, version).map_err(LoadError::Wire)?;
    let self_test = verified.self_test(&model).map_err(|e| e.to_string());
    let golden = self_test.is_ok().then(|| verified.golden());
    let warmup = Warmup {
        path,
        runs: warmup_runs,
        load_time,
    };
    let boot = warmup.finish(&model, &id, golden, self_test)?;
    let features = match &manifest.schema {
        Some(schema) => Some(bind(schema.clone(), &model, path)?),
        None => None,
    };
    Ok(Loaded {
        model,
        id,
        boot,
        slo: manifest.slo,
        source: format!(
            "bundle {} {} {} (sequence {}, signed by key {})",
            path.display(),
            manifest.name,
            manifest.version,
            manifest.sequence,
            verified.key_id()
        ),
        sequence: Some(manifest.sequence),
        path: path.to_path_buf(),
        features,
    })
}

/// The last step of a load: warming up a model that passed its self-test.
struct Warmup<'a> {
    /// The file the model came from, for errors.
    path: &'a Path,
    /// Warm-up inferences.
    runs: u32,
    /// How long loading took.
    load_time: Duration,
}

impl Warmup<'_> {
    /// Warms up a model that passed its self-test and describes the boot.
    fn finish(
        &self,
        model: &Model,
        id: &ModelId,
        golden: Option<&Golden>,
        self_test: Result<SelfTestReport, String>,
    ) -> Result<BootReport, LoadError> {
        let warm_started = Instant::now();
        let mut latency = Histogram::new();
        let model_err = |source| LoadError::Model {
            path: self.path.to_path_buf(),
            source,
        };
        if let (Some(golden), true) = (golden, self_test.is_ok()) {
            let inputs = golden.input_refs().map_err(model_err)?;
            let mut session = model.session().map_err(model_err)?;
            for _ in 0..self.runs {
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
            rss_kib: crate::process::rss_kib().unwrap_or(0),
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
            load_time: self.load_time,
        })
    }
}

#[cfg(test)]
mod tests {
    use perch_runtime::error::Chain;

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
        assert!(matches!(err, LoadError::Model { .. }), "{err}");
        let text = Chain(&err).to_string();
        assert!(text.contains("per-axis-dq-opset11.onnx"), "{text}");
        assert!(text.contains("DequantizeLinear"), "{text}");
    }

    #[test]
    fn a_name_over_32_bytes_is_refused() {
        let mut config = model_config(models().join("digits-mlp/model.onnx"));
        config.name = Some("x".repeat(33));
        assert!(matches!(load(&config), Err(LoadError::Wire(_))));
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
        assert!(matches!(err, LoadError::Bundle { .. }), "{err}");
        config.trusted_keys.clear();
        assert!(matches!(
            load(&config),
            Err(LoadError::NoTrustedKeys { .. })
        ));
    }
}
