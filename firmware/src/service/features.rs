//! Named features in, a class label and its probability out: the mapping behind
//! `/predict`, through the model's [`FeatureSchema`]. Pure: no I/O, no engine.
//!
//! A request is `{"features": {"name": value, ...}}`. Every feature of the schema must
//! be given, and nothing else: a numeric feature as a JSON number (standardized,
//! `(value - mean) / std`), a categorical one as one of its categories (one-hot). The
//! row fills the model's first input in the schema's order. The answer is the label
//! of the largest value of the model's probability output, and that value.
//!
//! ```
//! use perch_firmware::service::features::Features;
//! use perch_runtime::bundle::FeatureSchema;
//! use perch_runtime::engine::{DType, Dim, TensorInfo};
//!
//! let schema = FeatureSchema::from_json(br#"{"features": [
//!     {"name": "age", "type": "numeric", "mean": 40, "std": 10},
//!     {"name": "plan", "type": "categorical", "categories": ["free", "pro"]}],
//!     "labels": ["stays", "leaves"]}"#).unwrap();
//! let tensor = |name: &str, width| TensorInfo {
//!     name: name.into(),
//!     shape: vec![Dim::Symbolic("N".into()), Dim::Fixed(width)],
//!     dtype: DType::F32,
//! };
//! let features = Features::bind(schema, &[tensor("x", 3)], &[tensor("p", 2)]).unwrap();
//! let row = features.decode_body(br#"{"features": {"age": 55, "plan": "pro"}}"#).unwrap();
//! assert_eq!(row, [1.5, 0.0, 1.0]);
//! let err = features.decode_body(br#"{"features": {"age": "55", "plan": "pro"}}"#).unwrap_err();
//! assert_eq!(err.to_string(), "feature \"age\" must be a number, got a string (\"55\")");
//! ```

use perch_runtime::bundle::{
    self, BundleError, Feature, FeatureSchema, TensorSignature, TensorSpec,
};
use perch_runtime::engine::{Dim, TensorInfo};
use serde_json::{json, Map, Value};

/// At most this many names are listed in one error; the rest are counted.
const MAX_NAMED: usize = 8;

/// Why named features could not become an input row, or an output a prediction.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeatureError {
    /// The schema does not fit the model it is served with.
    #[error("the feature schema does not fit the model")]
    Schema(#[source] BundleError),
    /// The body is not JSON.
    #[error("malformed JSON")]
    Json(#[source] serde_json::Error),
    /// The body has no `"features"` object (or an instance is not an object).
    #[error("{0}")]
    Shape(&'static str),
    /// More features than the schema has were given (none of them is read).
    #[error("{given} features given; the model takes {expected}")]
    TooMany {
        /// Features in the request.
        given: usize,
        /// Features in the schema.
        expected: usize,
    },
    /// Features of the schema that the request lacks.
    #[error("missing feature{}: {}", plural(*count), names)]
    Missing {
        /// The first [`MAX_NAMED`] names, quoted, with a count of the rest.
        names: String,
        /// How many are missing.
        count: usize,
    },
    /// Features the schema does not have.
    #[error("unknown feature{}: {}; the model's features are {known}", plural(*count), names)]
    Unknown {
        /// The first [`MAX_NAMED`] names, quoted, with a count of the rest.
        names: String,
        /// How many are unknown.
        count: usize,
        /// The schema's features.
        known: String,
    },
    /// A numeric feature is not a JSON number.
    #[error("feature {name:?} must be a number, got {got}")]
    NotANumber {
        /// The feature.
        name: String,
        /// What was given, described.
        got: String,
    },
    /// A numeric feature standardizes to an infinite value.
    #[error("feature {name:?} is {value}, which standardizes to {standardized}")]
    NotFinite {
        /// The feature.
        name: String,
        /// The value given.
        value: f64,
        /// What it became.
        standardized: f32,
    },
    /// A categorical feature is not one of its categories.
    #[error("feature {name:?} must be one of {categories}, got {got}")]
    NotACategory {
        /// The feature.
        name: String,
        /// Its categories, quoted.
        categories: String,
        /// What was given, described.
        got: String,
    },
    /// The model's answer lacks the probability output, or it is not whole rows of
    /// one value per label (the engine's fault, not the client's).
    #[error(
        "the model's output {output} holds {values} values, not rows of {labels} (one per label)"
    )]
    Output {
        /// The output's index.
        output: usize,
        /// Values it holds.
        values: usize,
        /// Labels per row.
        labels: usize,
    },
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// One answer: the label with the highest probability, and that probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The class label.
    pub label: String,
    /// Its probability (the model's output value).
    pub probability: f32,
}

impl Prediction {
    /// `{"prediction": label, "probability": p}`.
    pub fn to_json(&self) -> Value {
        json!({"prediction": self.label, "probability": self.probability})
    }
}

/// A [`FeatureSchema`] bound to the model it describes: which input the rows fill and
/// which output holds the probabilities.
#[derive(Debug, Clone)]
pub struct Features {
    schema: FeatureSchema,
    input: String,
    batched: bool,
    output: usize,
}

impl Features {
    /// Binds `schema` to the model with these inputs and outputs
    /// ([`FeatureSchema::check_signature`]).
    ///
    /// # Errors
    ///
    /// [`FeatureError::Schema`] when the schema breaks a rule or does not fit.
    pub fn bind(
        schema: FeatureSchema,
        inputs: &[TensorInfo],
        outputs: &[TensorInfo],
    ) -> Result<Features, FeatureError> {
        schema.validate().map_err(FeatureError::Schema)?;
        let signature = TensorSignature {
            inputs: inputs.iter().map(TensorSpec::from).collect(),
            outputs: outputs.iter().map(TensorSpec::from).collect(),
        };
        schema
            .check_signature(&signature)
            .map_err(FeatureError::Schema)?;
        let output = bundle::probability_output(&signature, schema.labels.len());
        let (Some(first), Some(output)) = (inputs.first(), output) else {
            return Err(FeatureError::Schema(BundleError::BadSchema {
                reason: "the model has no input or no probability output".into(),
            }));
        };
        Ok(Features {
            input: first.name.clone(),
            batched: matches!(first.shape.first(), Some(Dim::Symbolic(_))),
            output,
            schema,
        })
    }

    /// The schema.
    pub fn schema(&self) -> &FeatureSchema {
        &self.schema
    }

    /// The input row of a `/predict` body, `{"features": {...}}`.
    ///
    /// # Errors
    ///
    /// The body is not JSON, has no `"features"` object, or the features do not fit
    /// the schema ([`Features::row`]).
    pub fn decode_body(&self, body: &[u8]) -> Result<Vec<f32>, FeatureError> {
        let body: Value = serde_json::from_slice(body).map_err(FeatureError::Json)?;
        let Some(features) = body.get("features").and_then(Value::as_object) else {
            return Err(FeatureError::Shape(
                "the body must be an object with a \"features\" object, {\"features\": \
                 {\"name\": value, ...}}",
            ));
        };
        let mut row = Vec::with_capacity(self.schema.width());
        self.row(features, &mut row)?;
        Ok(row)
    }

    /// Appends the input row of one set of named features to `row`. Every feature of
    /// the schema must be given, and no other; on an error `row` may hold part of it.
    ///
    /// # Errors
    ///
    /// Too many, missing or unknown features (all of them named, up to [`MAX_NAMED`]),
    /// a value of the wrong type, or a number that standardizes to infinity.
    pub fn row(&self, given: &Map<String, Value>, row: &mut Vec<f32>) -> Result<(), FeatureError> {
        let expected = self.schema.features.len();
        if given.len() > expected {
            return Err(FeatureError::TooMany {
                given: given.len(),
                expected,
            });
        }
        let unknown: Vec<&String> = given
            .keys()
            .filter(|k| self.schema.find(k).is_none())
            .collect();
        if !unknown.is_empty() {
            return Err(FeatureError::Unknown {
                names: listed(unknown.iter().map(|s| s.as_str()), unknown.len()),
                count: unknown.len(),
                known: listed(self.schema.features.iter().map(Feature::name), expected),
            });
        }
        let missing: Vec<&str> = self
            .schema
            .features
            .iter()
            .map(Feature::name)
            .filter(|n| !given.contains_key(*n))
            .collect();
        if !missing.is_empty() {
            return Err(FeatureError::Missing {
                names: listed(missing.iter().copied(), missing.len()),
                count: missing.len(),
            });
        }
        for feature in &self.schema.features {
            let value = given.get(feature.name()).unwrap_or(&Value::Null);
            match feature {
                Feature::Numeric { name, mean, std } => {
                    let Some(x) = value.as_f64() else {
                        return Err(FeatureError::NotANumber {
                            name: name.clone(),
                            got: describe(value),
                        });
                    };
                    let standardized = ((x - mean) / std) as f32;
                    if !standardized.is_finite() {
                        return Err(FeatureError::NotFinite {
                            name: name.clone(),
                            value: x,
                            standardized,
                        });
                    }
                    row.push(standardized);
                }
                Feature::Categorical { name, categories } => {
                    let position = value
                        .as_str()
                        .and_then(|v| categories.iter().position(|c| c == v));
                    let Some(position) = position else {
                        return Err(FeatureError::NotACategory {
                            name: name.clone(),
                            categories: listed(
                                categories.iter().map(String::as_str),
                                categories.len(),
                            ),
                            got: describe(value),
                        });
                    };
                    row.extend((0..categories.len()).map(|i| f32::from(u8::from(i == position))));
                }
            }
        }
        Ok(())
    }

    /// The model input the rows fill.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// Whether that input has a symbolic first dimension: rows run as one batch, or
    /// else one at a time.
    pub fn batched(&self) -> bool {
        self.batched
    }

    /// The index of the model output that holds the probabilities.
    pub fn output(&self) -> usize {
        self.output
    }

    /// One prediction per row of `probabilities` (the probability output's values,
    /// one per label and row).
    ///
    /// # Errors
    ///
    /// [`FeatureError::Output`] when they are not a whole number (≥ 1) of rows.
    pub fn predictions(&self, probabilities: &[f32]) -> Result<Vec<Prediction>, FeatureError> {
        let labels = &self.schema.labels;
        if probabilities.is_empty() || !probabilities.len().is_multiple_of(labels.len()) {
            return Err(FeatureError::Output {
                output: self.output,
                values: probabilities.len(),
                labels: labels.len(),
            });
        }
        Ok(probabilities
            .chunks(labels.len())
            .zip(std::iter::repeat(labels))
            .map(|(row, labels)| {
                let (best, probability) =
                    row.iter()
                        .enumerate()
                        .fold(
                            (0, row[0]),
                            |(bi, bp), (i, p)| if *p > bp { (i, *p) } else { (bi, bp) },
                        );
                Prediction {
                    label: labels[best].clone(),
                    probability,
                }
            })
            .collect())
    }
}

/// Up to [`MAX_NAMED`] names, quoted and comma-separated, then how many more.
fn listed<'a>(names: impl Iterator<Item = &'a str>, count: usize) -> String {
    let shown: Vec<String> = names.take(MAX_NAMED).map(|n| format!("{n:?}")).collect();
    match count.saturating_sub(shown.len()) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// A JSON value as an error names it: its type, and the value when it is short.
fn describe(value: &Value) -> String {
    let kind = match value {
        Value::Null => return "null".into(),
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => return "an array".into(),
        Value::Object(_) => return "an object".into(),
    };
    let text = value.to_string();
    if text.len() <= 40 {
        format!("{kind} ({text})")
    } else {
        kind.into()
    }
}

#[cfg(test)]
mod tests {
    use perch_runtime::engine::{DType, TensorInfo};

    use super::*;

    fn tensor(name: &str, shape: Vec<Dim>) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            shape,
            dtype: DType::F32,
        }
    }

    fn bind(batch: Dim) -> Result<Features, FeatureError> {
        Features::bind(
            schema(),
            &[tensor("x", vec![batch.clone(), Dim::Fixed(5)])],
            &[tensor("p", vec![batch, Dim::Fixed(3)])],
        )
    }

    fn schema() -> FeatureSchema {
        FeatureSchema::from_json(
            br#"{"features": [
                {"name": "age", "type": "numeric", "mean": 40, "std": 10},
                {"name": "income", "type": "numeric"},
                {"name": "colour", "type": "categorical", "categories": ["red", "green", "blue"]}],
                "labels": ["a", "b", "c"]}"#,
        )
        .unwrap()
    }

    fn features() -> Features {
        bind(Dim::Symbolic("N".into())).unwrap()
    }

    #[test]
    fn numbers_are_standardized_and_categories_one_hot_in_schema_order() {
        let row = features()
            .decode_body(br#"{"features": {"colour": "blue", "income": 3.5, "age": 20}}"#)
            .unwrap();
        assert_eq!(row, [-2.0, 3.5, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn every_bad_request_names_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (b"{", "malformed JSON"),
            (br#"{"age": 1}"#, "must be an object with a \"features\" object"),
            (br#"{"features": [1, 2]}"#, "must be an object with a \"features\" object"),
            (
                br#"{"features": {"age": 1, "colour": "red"}}"#,
                "missing feature: \"income\"",
            ),
            (br#"{"features": {}}"#, "missing features: \"age\", \"income\", \"colour\""),
            (
                br#"{"features": {"age": 1, "income": 2, "height": 3}}"#,
                "unknown feature: \"height\"; the model's features are \"age\", \"income\", \"colour\"",
            ),
            (
                br#"{"features": {"age": "1", "income": 2, "colour": "red"}}"#,
                "feature \"age\" must be a number, got a string (\"1\")",
            ),
            (
                br#"{"features": {"age": "NaN", "income": 2, "colour": "red"}}"#,
                "feature \"age\" must be a number, got a string (\"NaN\")",
            ),
            (
                br#"{"features": {"age": null, "income": 2, "colour": "red"}}"#,
                "feature \"age\" must be a number, got null",
            ),
            (
                br#"{"features": {"age": 1, "income": 2, "colour": "pink"}}"#,
                "feature \"colour\" must be one of \"red\", \"green\", \"blue\", got a string (\"pink\")",
            ),
            (
                br#"{"features": {"age": 1, "income": 2, "colour": 3}}"#,
                "got a number (3)",
            ),
            (
                br#"{"features": {"age": 1, "income": 1e308, "colour": "red"}}"#,
                "",
            ),
        ];
        for (body, says) in cases {
            let result = features().decode_body(body);
            if says.is_empty() {
                // 1e308 / 1 is finite in f64 but not in f32.
                let err = result.unwrap_err();
                assert!(matches!(err, FeatureError::NotFinite { .. }), "{err}");
                continue;
            }
            let err = result.unwrap_err();
            let text = perch_runtime::error::Chain(&err).to_string();
            assert!(
                text.contains(says),
                "{}: {text}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(crate::service::ServiceError::from(err).http_status(), 400);
        }
    }

    #[test]
    fn json_nan_is_malformed_json() {
        let err = features()
            .decode_body(br#"{"features": {"age": NaN, "income": 2, "colour": "red"}}"#)
            .unwrap_err();
        assert!(matches!(err, FeatureError::Json(_)), "{err}");
    }

    #[test]
    fn ten_thousand_features_are_refused_by_count_without_listing_them() {
        let many: Map<String, Value> = (0..10_000).map(|i| (format!("f{i}"), json!(1))).collect();
        let body = serde_json::to_vec(&json!({ "features": many })).unwrap();
        let err = features().decode_body(&body).unwrap_err();
        assert_eq!(err.to_string(), "10000 features given; the model takes 3");
    }

    #[test]
    fn long_lists_of_names_are_cut_and_counted() {
        let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
        let text = listed(names.iter().map(String::as_str), 20);
        assert!(text.ends_with("\"f7\" and 12 more"), "{text}");
    }

    #[test]
    fn a_batched_model_runs_rows_as_one_batch_and_an_unbatched_one_row_by_row() {
        assert!(features().batched());
        assert!(!bind(Dim::Fixed(1)).unwrap().batched());
        assert_eq!((features().input(), features().output()), ("x", 0));
    }

    #[test]
    fn the_prediction_is_the_label_of_the_largest_probability() {
        let predictions = features()
            .predictions(&[0.1, 0.7, 0.2, 0.5, 0.2, 0.3])
            .unwrap();
        assert_eq!(
            predictions,
            [
                Prediction {
                    label: "b".into(),
                    probability: 0.7
                },
                Prediction {
                    label: "a".into(),
                    probability: 0.5
                }
            ]
        );
        let err = features().predictions(&[0.1, 0.7]).unwrap_err();
        assert!(matches!(err, FeatureError::Output { .. }), "{err}");
        assert!(features().predictions(&[]).is_err());
    }

    #[test]
    fn a_schema_that_does_not_fit_the_model_does_not_bind() {
        let err = Features::bind(
            schema(),
            &[tensor("x", vec![Dim::Fixed(1), Dim::Fixed(4)])],
            &[tensor("p", vec![Dim::Fixed(1), Dim::Fixed(3)])],
        )
        .unwrap_err();
        let text = perch_runtime::error::Chain(&err).to_string();
        assert!(text.contains("a row of 5 f32 columns"), "{text}");
    }
}
