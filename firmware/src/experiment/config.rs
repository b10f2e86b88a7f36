//! What an experiment is: its variants with their traffic shares, its default variant,
//! its shadows, where a request's entity id comes from, and how a shadow's answer is
//! compared with the served one. [`ExperimentSpec::validate`] is the one check, used
//! for the configuration file and for every other way an experiment arrives.

use std::fmt;

use perch_runtime::canary::{Percent, BUCKETS};

/// The header an entity id is read from unless the experiment says otherwise.
pub const DEFAULT_ENTITY_HEADER: &str = "x-perch-entity-id";

/// One experiment: requests addressed to `name` go to one of `variants`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExperimentSpec {
    /// The name clients address (`/v2/models/{name}/infer`); no model may have it.
    pub name: String,
    /// The routed variants, in the order their share ranges are laid out (see
    /// [`crate::experiment::router`]).
    pub variants: Vec<VariantSpec>,
    /// The name of the variant requests without an entity id go to.
    pub default: String,
    /// Models that see a copy of every request after the reply is sent, never answering.
    pub shadows: Vec<ShadowSpec>,
    /// Where a request's entity id comes from.
    pub entity: EntitySource,
    /// How a shadow's answer is compared with the served one.
    pub agreement: Agreement,
    /// Whether a bare `/predict` (no `?model=`) goes through this experiment.
    pub primary: bool,
}

/// A routed variant: a repository model and its share of the entities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantSpec {
    /// The variant's name (the `variant` label, `X-Perch-Variant`).
    pub name: String,
    /// The repository model that serves it.
    pub model: String,
    /// Its share of the entities (the shares of an experiment sum to 100 %).
    pub share: Percent,
}

/// A shadow: a repository model run on a copy of the traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowSpec {
    /// The shadow's name (its `variant` label).
    pub name: String,
    /// The repository model it runs.
    pub model: String,
}

/// Where a request's entity id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntitySource {
    /// An HTTP header (lower case): `header:X-Perch-Entity-Id`, the default.
    Header(String),
    /// A key of an OIP v2 request's `parameters`: `parameter:entity_id`.
    Parameter(String),
    /// A named feature of a `/predict` body (or a KServe V1 instance of named
    /// features): `feature:customer_id`.
    Feature(String),
}

impl Default for EntitySource {
    fn default() -> EntitySource {
        EntitySource::Header(DEFAULT_ENTITY_HEADER.into())
    }
}

impl std::str::FromStr for EntitySource {
    type Err = ExperimentError;

    /// `header:NAME`, `parameter:KEY` or `feature:NAME`.
    fn from_str(text: &str) -> Result<EntitySource, ExperimentError> {
        let bad = || ExperimentError::EntitySource(text.to_string());
        let (kind, key) = text.split_once(':').ok_or_else(bad)?;
        let key = key.trim();
        if key.is_empty() {
            return Err(bad());
        }
        match kind.trim() {
            "header" if key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
                Ok(EntitySource::Header(key.to_ascii_lowercase()))
            }
            "parameter" => Ok(EntitySource::Parameter(key.into())),
            "feature" => Ok(EntitySource::Feature(key.into())),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for EntitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntitySource::Header(h) => write!(f, "header:{h}"),
            EntitySource::Parameter(p) => write!(f, "parameter:{p}"),
            EntitySource::Feature(n) => write!(f, "feature:{n}"),
        }
    }
}

/// How a shadow's answer is compared with the served answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Agreement {
    /// Classifiers: the two agree when every row's argmax (or label) is the same.
    #[default]
    Argmax,
    /// Regressors: the largest difference relative to the served answer's largest
    /// magnitude, `max|shadow − served| / max|served|`.
    MaxRelativeDifference,
}

impl std::str::FromStr for Agreement {
    type Err = ExperimentError;

    fn from_str(text: &str) -> Result<Agreement, ExperimentError> {
        match text {
            "argmax" => Ok(Agreement::Argmax),
            "max_relative_difference" => Ok(Agreement::MaxRelativeDifference),
            other => Err(ExperimentError::Agreement(other.to_string())),
        }
    }
}

/// Why an experiment is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExperimentError {
    /// The name is empty or holds characters a URL path segment or label would mangle.
    #[error("experiment name {0:?} must be 1 to 64 characters of [A-Za-z0-9._-]")]
    BadName(String),
    /// Fewer than two routed variants.
    #[error("experiment {0:?} needs at least two variants")]
    TooFewVariants(String),
    /// The shares do not add up to 100 %.
    #[error(
        "the shares of experiment {experiment:?} sum to {} %, not 100 %",
        percent(*basis_points)
    )]
    SharesNotWhole {
        /// The experiment.
        experiment: String,
        /// What they sum to, in basis points.
        basis_points: u32,
    },
    /// A share above 100 %.
    #[error("variant {variant:?} of experiment {experiment:?}: share {} % is over 100 %", percent(*basis_points))]
    ShareOutOfRange {
        /// The experiment.
        experiment: String,
        /// The variant.
        variant: String,
        /// The share given, in basis points.
        basis_points: u32,
    },
    /// Two variants or shadows of an experiment share a name.
    #[error("experiment {experiment:?} has two variants named {variant:?}")]
    DuplicateVariant {
        /// The experiment.
        experiment: String,
        /// The name.
        variant: String,
    },
    /// The default names no routed variant.
    #[error("the default {default:?} of experiment {experiment:?} is not one of its variants")]
    UnknownDefault {
        /// The experiment.
        experiment: String,
        /// The default given.
        default: String,
    },
    /// A variant or shadow names a model the device does not have.
    #[error("variant {variant:?} of experiment {experiment:?} names model {model:?}, which is not in the repository")]
    UnknownModel {
        /// The experiment.
        experiment: String,
        /// The variant or shadow.
        variant: String,
        /// The model it names.
        model: String,
    },
    /// Two experiments, or an experiment and a model, share a name.
    #[error("the name {0:?} is taken (by a model or another experiment)")]
    DuplicateName(String),
    /// More than one experiment takes the bare `/predict`.
    #[error("experiments {0:?} and {1:?} both say primary = true; at most one may")]
    TwoPrimaries(String, String),
    /// An entity source that is not `header:`, `parameter:` or `feature:` with a name.
    #[error("entity_id {0:?} must be \"header:NAME\", \"parameter:KEY\" or \"feature:NAME\"")]
    EntitySource(String),
    /// An unknown comparison.
    #[error("agreement {0:?} must be \"argmax\" or \"max_relative_difference\"")]
    Agreement(String),
    /// The shadow worker thread could not start.
    #[error("cannot start the shadow worker: {0}")]
    Worker(String),
}

fn percent(basis_points: u32) -> String {
    let whole = basis_points / 100;
    match basis_points % 100 {
        0 => whole.to_string(),
        frac => format!("{whole}.{frac:02}"),
    }
}

/// Whether `name` can be an experiment's or variant's name: a URL path segment and a
/// Prometheus label value without surprises.
fn good_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl ExperimentSpec {
    /// Checks the experiment on its own: a good name, at least two variants, shares
    /// summing to exactly 100 %, variant and shadow names unique, the default one of
    /// the variants. Which models exist is [`check_models`](Self::check_models)'s.
    ///
    /// # Errors
    ///
    /// The first problem found, naming the experiment and the variant.
    pub fn validate(&self) -> Result<(), ExperimentError> {
        let experiment = || self.name.clone();
        if !good_name(&self.name) {
            return Err(ExperimentError::BadName(self.name.clone()));
        }
        if self.variants.len() < 2 {
            return Err(ExperimentError::TooFewVariants(experiment()));
        }
        let names = self
            .variants
            .iter()
            .map(|v| &v.name)
            .chain(self.shadows.iter().map(|s| &s.name));
        for (i, name) in names.clone().enumerate() {
            if !good_name(name) {
                return Err(ExperimentError::BadName(name.clone()));
            }
            if names.clone().take(i).any(|earlier| earlier == name) {
                return Err(ExperimentError::DuplicateVariant {
                    experiment: experiment(),
                    variant: name.clone(),
                });
            }
        }
        let sum: u32 = self
            .variants
            .iter()
            .map(|v| u32::from(v.share.basis_points()))
            .sum();
        if sum != u32::from(BUCKETS) {
            return Err(ExperimentError::SharesNotWhole {
                experiment: experiment(),
                basis_points: sum,
            });
        }
        if !self.variants.iter().any(|v| v.name == self.default) {
            return Err(ExperimentError::UnknownDefault {
                experiment: experiment(),
                default: self.default.clone(),
            });
        }
        Ok(())
    }

    /// Checks that every variant and shadow names a model `known` knows.
    ///
    /// # Errors
    ///
    /// [`ExperimentError::UnknownModel`] for the first that does not.
    pub fn check_models(&self, known: impl Fn(&str) -> bool) -> Result<(), ExperimentError> {
        let named = self
            .variants
            .iter()
            .map(|v| (&v.name, &v.model))
            .chain(self.shadows.iter().map(|s| (&s.name, &s.model)));
        for (variant, model) in named {
            if !known(model) {
                return Err(ExperimentError::UnknownModel {
                    experiment: self.name.clone(),
                    variant: variant.clone(),
                    model: model.clone(),
                });
            }
        }
        Ok(())
    }

    /// The default variant's index in [`variants`](Self::variants) (0 for an
    /// experiment that did not validate).
    pub fn default_index(&self) -> usize {
        self.variants
            .iter()
            .position(|v| v.name == self.default)
            .unwrap_or(0)
    }
}

/// Checks a set of experiments together: each one ([`ExperimentSpec::validate`] and
/// [`ExperimentSpec::check_models`]), names unique and different from every model's,
/// at most one `primary`.
///
/// # Errors
///
/// The first problem found.
pub fn validate_all(
    specs: &[ExperimentSpec],
    known: impl Fn(&str) -> bool,
) -> Result<(), ExperimentError> {
    for (i, spec) in specs.iter().enumerate() {
        spec.validate()?;
        spec.check_models(&known)?;
        if known(&spec.name) || specs[..i].iter().any(|s| s.name == spec.name) {
            return Err(ExperimentError::DuplicateName(spec.name.clone()));
        }
        if spec.primary {
            if let Some(other) = specs[..i].iter().find(|s| s.primary) {
                return Err(ExperimentError::TwoPrimaries(
                    other.name.clone(),
                    spec.name.clone(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shares: &[(&str, u16)]) -> ExperimentSpec {
        ExperimentSpec {
            name: "iris-ab".into(),
            variants: shares
                .iter()
                .map(|(name, bp)| VariantSpec {
                    name: (*name).into(),
                    model: format!("model-{name}"),
                    share: Percent::from_basis_points(*bp).unwrap(),
                })
                .collect(),
            default: shares[0].0.into(),
            shadows: Vec::new(),
            entity: EntitySource::default(),
            agreement: Agreement::Argmax,
            primary: false,
        }
    }

    #[test]
    fn shares_that_do_not_sum_to_100_percent_are_refused_with_the_sum() {
        assert_eq!(spec(&[("a", 5000), ("b", 5000)]).validate(), Ok(()));
        let err = spec(&[("a", 5000), ("b", 4950)]).validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "the shares of experiment \"iris-ab\" sum to 99.50 %, not 100 %"
        );
        let err = spec(&[("a", 9000), ("b", 9000)]).validate().unwrap_err();
        assert!(matches!(
            err,
            ExperimentError::SharesNotWhole {
                basis_points: 18_000,
                ..
            }
        ));
    }

    #[test]
    fn names_defaults_and_variant_counts_are_checked() {
        let one = spec(&[("a", 10_000)]);
        assert_eq!(
            one.validate(),
            Err(ExperimentError::TooFewVariants("iris-ab".into()))
        );
        let twice = spec(&[("a", 5000), ("a", 5000)]);
        assert!(matches!(
            twice.validate(),
            Err(ExperimentError::DuplicateVariant { .. })
        ));
        let mut shadowed = spec(&[("a", 5000), ("b", 5000)]);
        shadowed.shadows.push(ShadowSpec {
            name: "b".into(),
            model: "m".into(),
        });
        assert!(matches!(
            shadowed.validate(),
            Err(ExperimentError::DuplicateVariant { .. })
        ));
        let mut default = spec(&[("a", 5000), ("b", 5000)]);
        default.default = "c".into();
        assert_eq!(
            default.validate().unwrap_err().to_string(),
            "the default \"c\" of experiment \"iris-ab\" is not one of its variants"
        );
        let mut named = spec(&[("a", 5000), ("b", 5000)]);
        named.name = "a/b".into();
        assert!(matches!(named.validate(), Err(ExperimentError::BadName(_))));
    }

    #[test]
    fn a_variant_naming_a_model_the_device_lacks_is_refused_naming_both() {
        let s = spec(&[("a", 5000), ("b", 5000)]);
        let err = s.check_models(|m| m == "model-a").unwrap_err();
        assert_eq!(
            err.to_string(),
            "variant \"b\" of experiment \"iris-ab\" names model \"model-b\", which is not in \
             the repository"
        );
        let known = |m: &str| m.starts_with("model-");
        assert_eq!(validate_all(std::slice::from_ref(&s), known), Ok(()));
        assert_eq!(
            validate_all(&[s.clone(), s.clone()], known),
            Err(ExperimentError::DuplicateName("iris-ab".into()))
        );
        let mut clash = s.clone();
        clash.name = "model-a".into();
        assert_eq!(
            validate_all(&[clash], known),
            Err(ExperimentError::DuplicateName("model-a".into()))
        );
    }

    #[test]
    fn entity_sources_parse_and_print_back() {
        for text in [
            "header:x-perch-entity-id",
            "parameter:entity_id",
            "feature:customer",
        ] {
            assert_eq!(text.parse::<EntitySource>().unwrap().to_string(), text);
        }
        assert_eq!(
            "header:X-Customer".parse::<EntitySource>(),
            Ok(EntitySource::Header("x-customer".into()))
        );
        for bad in ["cookie:x", "header:", "header:a b", "entity_id"] {
            assert!(bad.parse::<EntitySource>().is_err(), "{bad}");
        }
    }
}
