//! `[[experiments]]`: A/B experiments over the repository's models
//! ([`crate::experiment`]).
//!
//! ```toml
//! [[experiments]]
//! name = "iris-ab"                     # what clients address; no model may have it
//! default = "a"                        # requests without an entity id; default: the first
//! entity_id = "header:X-Perch-Entity-Id"   # or "parameter:entity_id", "feature:NAME"
//! agreement = "argmax"                 # or "max_relative_difference" (regressors)
//! primary = false                      # true: a bare /predict goes through it
//! variants = [
//!     { name = "a", model = "iris", share = 90 },          # share: whole percent
//!     { name = "b", model = "iris-small", share_bp = 1000 }, # or basis points
//! ]
//! shadows = [{ name = "c", model = "iris-int8" }]           # name defaults to the model
//! ```
//!
//! Each experiment is checked on its own here ([`ExperimentSpec::validate`]: shares
//! summing to 100 %, names unique, the default a variant), the error placed on its
//! `name` line; that its models exist is checked when the agent starts, against the
//! repository.

use serde::Deserialize;
use toml::Spanned;

use super::origin::{ConfigError, Setting, Source};
use crate::experiment::{Agreement, EntitySource, ExperimentSpec, ShadowSpec, VariantSpec};
use perch_runtime::canary::Percent;

/// One `[[experiments]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExperimentEntry {
    name: Spanned<String>,
    default: Option<Spanned<String>>,
    entity_id: Option<Spanned<String>>,
    agreement: Option<Spanned<String>>,
    primary: Option<bool>,
    variants: Spanned<Vec<VariantEntry>>,
    #[serde(default)]
    shadows: Vec<ShadowEntry>,
}

/// One variant as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VariantEntry {
    name: Spanned<String>,
    model: String,
    share: Option<Spanned<u32>>,
    share_bp: Option<Spanned<u32>>,
}

/// One shadow as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShadowEntry {
    name: Option<String>,
    model: String,
}

/// The `[[experiments]]` entries, each validated on its own.
pub(super) fn resolve(
    entries: Vec<ExperimentEntry>,
    source: &Source<'_>,
) -> Result<Vec<ExperimentSpec>, ConfigError> {
    let mut specs: Vec<ExperimentSpec> = Vec::with_capacity(entries.len());
    for entry in entries {
        let name = Setting::from_file("experiments.name", entry.name);
        let mut variants = Vec::with_capacity(entry.variants.get_ref().len());
        for variant in entry.variants.into_inner() {
            let vname = Setting::from_file("experiments.variants.name", variant.name);
            let (key, share, factor) = match (variant.share, variant.share_bp) {
                (Some(s), None) => ("experiments.variants.share", s, 100),
                (None, Some(bp)) => ("experiments.variants.share_bp", bp, 1),
                _ => {
                    let message = "give the variant's share as share (percent) or share_bp \
                                   (basis points), one of them";
                    return Err(source.invalid(&vname, message));
                }
            };
            let share = Setting::from_file(key, share);
            let basis_points = share.value.saturating_mul(factor);
            let percent = u16::try_from(basis_points)
                .ok()
                .and_then(|bp| Percent::from_basis_points(bp).ok())
                .ok_or_else(|| {
                    let shown = f64::from(basis_points) / 100.0;
                    source.invalid(&share, format!("{shown} % is over 100 %"))
                })?;
            variants.push(VariantSpec {
                name: vname.value,
                model: variant.model,
                share: percent,
            });
        }
        let entity = match entry.entity_id {
            Some(text) => {
                let text = Setting::from_file("experiments.entity_id", text);
                text.value
                    .parse::<EntitySource>()
                    .map_err(|e| source.invalid(&text, e.to_string()))?
            }
            None => EntitySource::default(),
        };
        let agreement = match entry.agreement {
            Some(text) => {
                let text = Setting::from_file("experiments.agreement", text);
                text.value
                    .parse::<Agreement>()
                    .map_err(|e| source.invalid(&text, e.to_string()))?
            }
            None => Agreement::default(),
        };
        let spec = ExperimentSpec {
            default: entry
                .default
                .map(Spanned::into_inner)
                .or_else(|| variants.first().map(|v| v.name.clone()))
                .unwrap_or_default(),
            name: name.value.clone(),
            variants,
            shadows: entry
                .shadows
                .into_iter()
                .map(|s| ShadowSpec {
                    name: s.name.unwrap_or_else(|| s.model.clone()),
                    model: s.model,
                })
                .collect(),
            entity,
            agreement,
            primary: entry.primary.unwrap_or(false),
        };
        spec.validate()
            .map_err(|e| source.invalid(&name, e.to_string()))?;
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(source.invalid(&name, format!("two experiments are named {:?}", spec.name)));
        }
        specs.push(spec);
    }
    Ok(specs)
}
