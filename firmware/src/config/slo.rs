//! The `[slo]` section and a `[[models]]` entry's `slo`, as written and as resolved.

use perch_runtime::slo::Slo;
use serde::Deserialize;
use toml::Spanned;

use super::origin::{ConfigError, Setting, Source};

/// The `[slo]` section (and a `[[models]]` entry's `slo`) as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SloFile {
    p99_ms: Option<Spanned<f64>>,
    max_error_rate: Option<Spanned<f64>>,
}

/// The `[slo]` section (it has no flags), or a `[[models]]` entry's `slo`.
pub(super) fn resolve_slo(file: SloFile, source: &Source<'_>) -> Result<Slo, ConfigError> {
    let max_error_rate = file
        .max_error_rate
        .map(|r| Setting::from_file("slo.max_error_rate", r));
    if let Some(rate) = &max_error_rate {
        if !(0.0..=1.0).contains(&rate.value) {
            return Err(source.invalid(rate, format!("{} is not a fraction in [0, 1]", rate.value)));
        }
    }
    Ok(Slo {
        p99_ms: file.p99_ms.map(Spanned::into_inner),
        max_error_rate: max_error_rate.map(|r| r.value),
        min_throughput: None,
    })
}
