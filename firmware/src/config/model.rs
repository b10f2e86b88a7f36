//! `[model]`: the model to serve and how to check it.

use std::path::PathBuf;

use perch_runtime::wire::Version;
use serde::Deserialize;
use toml::Spanned;

use super::args::Args;
use super::origin::{ConfigError, Setting, Source};
use super::slo::{resolve_slo, SloFile};
use super::values::VersionSetting;
use perch_runtime::slo::Slo;

/// The reference model `perchd` serves when none is configured (relative to the working
/// directory, so the README's command works from the repository root).
pub const DEFAULT_MODEL: &str = "models/kws-dscnn/model.onnx";
/// Warm-up inferences after the self-test, by default.
pub const DEFAULT_WARMUP_RUNS: u32 = 20;

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

impl ModelConfig {
    /// The model file or bundle at `path`, every other setting at its default.
    pub fn new(path: impl Into<PathBuf>) -> ModelConfig {
        ModelConfig {
            path: path.into(),
            trusted_keys: Vec::new(),
            golden: None,
            variant: None,
            name: None,
            version: None,
            warmup_runs: DEFAULT_WARMUP_RUNS,
        }
    }
}

/// The `[model]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ModelFile {
    path: Option<Spanned<PathBuf>>,
    trusted_keys: Option<Spanned<Vec<PathBuf>>>,
    golden: Option<Spanned<PathBuf>>,
    variant: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    version: Option<Spanned<VersionSetting>>,
    warmup_runs: Option<Spanned<u32>>,
}

/// The flags over the `[model]` section. Nothing here can be invalid: a model that
/// does not load is the loader's error.
pub(super) fn resolve(args: &Args, file: ModelFile, source: &Source<'_>) -> ModelConfig {
    let in_file = |p: Option<Spanned<PathBuf>>| p.map(|p| source.path(p.into_inner()));
    let trusted_keys = if args.trusted_keys.is_empty() {
        file.trusted_keys
            .map(Spanned::into_inner)
            .unwrap_or_default()
            .into_iter()
            .map(|p| source.path(p))
            .collect()
    } else {
        args.trusted_keys.clone()
    };
    ModelConfig {
        path: args
            .model
            .clone()
            .or_else(|| in_file(file.path))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL)),
        trusted_keys,
        golden: args.golden.clone().or_else(|| in_file(file.golden)),
        variant: args
            .variant
            .clone()
            .or(file.variant.map(Spanned::into_inner)),
        name: args.name.clone().or(file.name.map(Spanned::into_inner)),
        version: args
            .model_version
            .or(file.version.map(|v| v.into_inner().0)),
        warmup_runs: args
            .warmup
            .or(file.warmup_runs.map(Spanned::into_inner))
            .unwrap_or(DEFAULT_WARMUP_RUNS),
    }
}

/// A model of the repository besides the primary one (a `[[models]]` entry). The
/// primary model's trusted keys verify its bundles too.
#[derive(Debug, Clone, PartialEq)]
pub struct RepositoryModel {
    /// Where it comes from and how it is checked; `name` is always set.
    pub config: ModelConfig,
    /// Whether it is loaded at start; one that is not is listed `UNAVAILABLE` until a
    /// `POST /v2/repository/models/{name}/load`.
    pub load: bool,
    /// Its own SLOs (`slo = { p99_ms = ..., max_error_rate = ... }`), field by field
    /// over the configuration's `[slo]` and then its bundle's: what its over-the-air
    /// soak judges. Empty: `[slo]`'s.
    pub slo: Slo,
}

/// One `[[models]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ModelsEntry {
    name: Spanned<String>,
    path: Spanned<PathBuf>,
    golden: Option<Spanned<PathBuf>>,
    variant: Option<Spanned<String>>,
    version: Option<Spanned<VersionSetting>>,
    warmup_runs: Option<Spanned<u32>>,
    load: Option<Spanned<bool>>,
    slo: Option<SloFile>,
}

/// The name a model is served under when it can be told without loading it: the
/// configured name, or the folder of a plain model file (a bundle names itself).
fn known_name(config: &ModelConfig) -> Option<String> {
    if config.name.is_some() {
        return config.name.clone();
    }
    let is_bundle = config.path.extension().is_some_and(|e| e == "perch");
    let folder = config.path.parent().and_then(std::path::Path::file_name);
    folder
        .filter(|_| !is_bundle)
        .map(|n| n.to_string_lossy().into_owned())
}

/// The `[[models]]` entries, each with the primary model's trusted keys. Names must
/// differ from each other and from the primary model's.
pub(super) fn resolve_models(
    entries: Vec<ModelsEntry>,
    primary: &ModelConfig,
    source: &Source<'_>,
) -> Result<Vec<RepositoryModel>, ConfigError> {
    let mut models: Vec<(RepositoryModel, usize)> = Vec::with_capacity(entries.len());
    let primary_name = known_name(primary);
    for entry in entries {
        let name = Setting::from_file("models.name", entry.name);
        let line = source.line(&name.origin);
        if let Some((_, earlier)) = models
            .iter()
            .find(|(m, _)| m.config.name.as_deref() == Some(name.value.as_str()))
        {
            let message = format!(
                "{:?} is also the name of the [[models]] entry on line {earlier}",
                name.value
            );
            return Err(source.error(&name.origin, message));
        }
        if primary_name.as_deref() == Some(name.value.as_str()) {
            let message = format!(
                "{:?} is also the name of the primary model ([model], {})",
                name.value,
                primary.path.display()
            );
            return Err(source.error(&name.origin, message));
        }
        let in_file = |p: Option<Spanned<PathBuf>>| p.map(|p| source.path(p.into_inner()));
        let config = ModelConfig {
            path: source.path(entry.path.into_inner()),
            trusted_keys: primary.trusted_keys.clone(),
            golden: in_file(entry.golden),
            variant: entry.variant.map(Spanned::into_inner),
            name: Some(name.value),
            version: entry.version.map(|v| v.into_inner().0),
            warmup_runs: entry
                .warmup_runs
                .map_or(primary.warmup_runs, Spanned::into_inner),
        };
        let load = entry.load.is_none_or(Spanned::into_inner);
        let slo = resolve_slo(entry.slo.unwrap_or_default(), source)?;
        models.push((RepositoryModel { config, load, slo }, line.unwrap_or(0)));
    }
    Ok(models.into_iter().map(|(m, _)| m).collect())
}
