//! `[model]`: the model to serve and how to check it.

use std::path::PathBuf;

use perch_runtime::wire::Version;
use serde::Deserialize;
use toml::Spanned;

use super::args::Args;
use super::origin::Source;
use super::values::VersionSetting;

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
