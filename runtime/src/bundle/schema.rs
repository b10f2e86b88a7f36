//! The feature schema of a tabular model: which named features a request gives, how
//! each becomes columns of the model's input row, and what the classes are called.
//!
//! It travels in the manifest (`"schema"`), so it is signed with the model it
//! describes. In JSON (and field for field in TOML, which `perch pack --schema` also
//! reads):
//!
//! ```json
//! {
//!   "features": [
//!     {"name": "age", "type": "numeric", "mean": 41.5, "std": 12.25},
//!     {"name": "colour", "type": "categorical", "categories": ["red", "green", "blue"]}
//!   ],
//!   "labels": ["no", "yes"]
//! }
//! ```
//!
//! The row is the features in this order: a numeric feature is one column,
//! `(value - mean) / std`; a categorical one is one column per category, 1 for the
//! value given and 0 for the others (one-hot). The row's width is the model's first
//! input's last dimension. `labels` name the classes in the order of the model's
//! probability output (the first `f32` output whose last dimension has one entry per
//! label).
//!
//! ```
//! use perch_runtime::bundle::FeatureSchema;
//!
//! let schema = FeatureSchema::from_json(br#"{
//!     "features": [{"name": "x", "type": "numeric", "mean": 1, "std": 2},
//!                  {"name": "c", "type": "categorical", "categories": ["a", "b"]}],
//!     "labels": ["neg", "pos"]}"#).unwrap();
//! assert_eq!(schema.width(), 3);
//! let err = FeatureSchema::from_json(br#"{"features": [], "labels": ["a", "b"]}"#).unwrap_err();
//! assert_eq!(err.to_string(), "the feature schema is invalid: no features (1 to 1024 are allowed)");
//! ```

use serde::{Deserialize, Serialize};

use super::error::BundleError;
use super::signature::{ShapeDim, TensorSignature};

/// The most features a schema may list.
pub const MAX_FEATURES: usize = 1024;
/// The most categories one categorical feature may have.
pub const MAX_CATEGORIES: usize = 256;
/// The widest input row a schema may describe (columns after one-hot).
pub const MAX_WIDTH: usize = 4096;
/// The most class labels.
pub const MAX_LABELS: usize = 1024;
/// The longest feature name, category or label, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// Named features in input order, their preprocessing, and the class labels. See the
/// [module docs](self) for the format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSchema {
    /// The features, in the order their columns fill the input row.
    pub features: Vec<Feature>,
    /// The class names, in the order of the model's probability output (2 or more).
    pub labels: Vec<String>,
}

/// One named feature and how it becomes columns of the input row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Feature {
    /// A number, standardized: one column, `(value - mean) / std`.
    Numeric {
        /// The feature's name in requests.
        name: String,
        /// Subtracted from the value (0 when not given).
        #[serde(default)]
        mean: f64,
        /// The value is divided by it after the mean is subtracted: finite and > 0
        /// (1 when not given).
        #[serde(default = "one")]
        std: f64,
    },
    /// One of a fixed list of strings, one-hot: one column per category.
    Categorical {
        /// The feature's name in requests.
        name: String,
        /// The accepted values, in column order (1 to [`MAX_CATEGORIES`], distinct).
        categories: Vec<String>,
    },
}

fn one() -> f64 {
    1.0
}

impl Feature {
    /// The feature's name in requests.
    pub fn name(&self) -> &str {
        match self {
            Feature::Numeric { name, .. } | Feature::Categorical { name, .. } => name,
        }
    }

    /// How many columns of the input row it fills.
    pub fn width(&self) -> usize {
        match self {
            Feature::Numeric { .. } => 1,
            Feature::Categorical { categories, .. } => categories.len(),
        }
    }
}

impl FeatureSchema {
    /// Parses and validates a schema in JSON ([`FeatureSchema::validate`]).
    ///
    /// # Errors
    ///
    /// [`BundleError::BadSchema`] with the JSON error or the broken rule.
    pub fn from_json(bytes: &[u8]) -> Result<FeatureSchema, BundleError> {
        let schema: FeatureSchema =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("{e}")))?;
        schema.validate()?;
        Ok(schema)
    }

    /// The input row's width: one column per numeric feature, one per category.
    pub fn width(&self) -> usize {
        self.features.iter().map(Feature::width).sum()
    }

    /// The feature named `name`, with its first column in the row.
    pub fn find(&self, name: &str) -> Option<(&Feature, usize)> {
        let mut column = 0;
        for feature in &self.features {
            if feature.name() == name {
                return Some((feature, column));
            }
            column += feature.width();
        }
        None
    }

    /// Checks the rules: 1 to [`MAX_FEATURES`] features with distinct names, each
    /// numeric one with a finite mean and a finite std > 0, each categorical one with
    /// 1 to [`MAX_CATEGORIES`] distinct categories, a row of at most [`MAX_WIDTH`]
    /// columns, 2 to [`MAX_LABELS`] distinct labels, and every name, category and label
    /// 1 to [`MAX_NAME_BYTES`] bytes without control characters.
    ///
    /// # Errors
    ///
    /// [`BundleError::BadSchema`] naming the feature and the rule.
    pub fn validate(&self) -> Result<(), BundleError> {
        if self.features.is_empty() || self.features.len() > MAX_FEATURES {
            let count = match self.features.len() {
                0 => "no".to_string(),
                n => n.to_string(),
            };
            return Err(bad(format!(
                "{count} features (1 to {MAX_FEATURES} are allowed)"
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        for feature in &self.features {
            let name = feature.name();
            check_text("feature name", name)?;
            if !names.insert(name) {
                return Err(bad(format!("feature {name:?} is listed twice")));
            }
            match feature {
                Feature::Numeric { mean, std, .. } => {
                    if !(mean.is_finite() && std.is_finite() && *std > 0.0) {
                        return Err(bad(format!(
                            "feature {name:?} needs a finite mean and a finite std > 0 \
                             (mean {mean}, std {std})"
                        )));
                    }
                }
                Feature::Categorical { categories, .. } => {
                    if categories.is_empty() || categories.len() > MAX_CATEGORIES {
                        return Err(bad(format!(
                            "feature {name:?} has {} categories (1 to {MAX_CATEGORIES} \
                             are allowed)",
                            categories.len()
                        )));
                    }
                    let mut seen = std::collections::BTreeSet::new();
                    for category in categories {
                        check_text("category", category)?;
                        if !seen.insert(category) {
                            return Err(bad(format!(
                                "feature {name:?} lists category {category:?} twice"
                            )));
                        }
                    }
                }
            }
        }
        let width = self.width();
        if width > MAX_WIDTH {
            return Err(bad(format!(
                "the features fill {width} columns, over the limit of {MAX_WIDTH}"
            )));
        }
        if self.labels.len() < 2 || self.labels.len() > MAX_LABELS {
            return Err(bad(format!(
                "{} labels (2 to {MAX_LABELS} are allowed)",
                self.labels.len()
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for label in &self.labels {
            check_text("label", label)?;
            if !seen.insert(label) {
                return Err(bad(format!("label {label:?} is listed twice")));
            }
        }
        Ok(())
    }

    /// Checks the schema against the model's signature wherever the signature allows:
    /// the first input is `f32` of rank 2 (`[N, width]` or `[1, width]`) whose last
    /// dimension, when fixed, is the row's width; some `f32` output has a fixed last
    /// dimension equal to the number of labels.
    ///
    /// # Errors
    ///
    /// [`BundleError::BadSchema`] saying what does not match.
    pub fn check_signature(&self, signature: &TensorSignature) -> Result<(), BundleError> {
        let Some(input) = signature.inputs.first() else {
            return Err(bad("the model has no input to fill".into()));
        };
        let shape_ok = match input.shape.as_slice() {
            [first, last] => {
                matches!(first, ShapeDim::Symbolic(_) | ShapeDim::Fixed(1))
                    && match last {
                        ShapeDim::Fixed(n) => *n == self.width() as u64,
                        ShapeDim::Symbolic(_) => true,
                    }
            }
            _ => false,
        };
        if input.dtype != "f32" || !shape_ok {
            return Err(bad(format!(
                "the features fill a row of {} f32 columns, but the model's input \
                 {:?} is {} {}",
                self.width(),
                input.name,
                input.dtype,
                shape_text(&input.shape)
            )));
        }
        if probability_output(signature, self.labels.len()).is_none() {
            return Err(bad(format!(
                "{} labels, but no f32 output of the model has {} values per row",
                self.labels.len(),
                self.labels.len()
            )));
        }
        Ok(())
    }
}

/// The index of the first `f32` output whose last dimension is fixed at `classes`.
pub fn probability_output(signature: &TensorSignature, classes: usize) -> Option<usize> {
    signature.outputs.iter().position(|o| {
        o.dtype == "f32"
            && matches!(o.shape.last(), Some(ShapeDim::Fixed(n)) if *n == classes as u64)
    })
}

fn shape_text(shape: &[ShapeDim]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|d| match d {
            ShapeDim::Fixed(n) => n.to_string(),
            ShapeDim::Symbolic(s) => s.clone(),
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

fn check_text(what: &str, text: &str) -> Result<(), BundleError> {
    if text.is_empty() || text.len() > MAX_NAME_BYTES || text.chars().any(char::is_control) {
        return Err(bad(format!(
            "{what} {text:?} must be 1 to {MAX_NAME_BYTES} bytes without control \
             characters"
        )));
    }
    Ok(())
}

fn bad(reason: String) -> BundleError {
    BundleError::BadSchema { reason }
}
