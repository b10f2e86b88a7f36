//! `POST /predict` and KServe V1 instances of named features: the service runs rows
//! that [`features`](super::features) made from named features and answers with
//! labels.
//!
//! `/predict` answers `{"prediction": "<label>", "probability": p, "model_version":
//! "x.y.z", "latency_ms": t}`, where `latency_ms` is the service's time for the
//! request (decoding, the run, the prediction). A V1 body whose instances are objects,
//! sent to a model with a feature schema, is read as one set of named features per
//! instance and answered `{"predictions": [{"prediction", "probability"}, ...],
//! "model_version", "latency_ms"}`.

use std::time::Instant;

use serde_json::{json, Value};

use super::features::{FeatureError, Features, Prediction};
use super::{
    oip, InferRequest, InferenceService, Reply, RequestTensor, Served, ServiceError, TensorValues,
};

/// Milliseconds to the microsecond, as JSON answers carry them.
fn millis(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

impl InferenceService {
    /// Serves one `/predict` body of named features with the served model's feature
    /// schema; an error is `{"error": "<reason>"}` (400 for a body that does not fit
    /// the schema, naming the features at fault, or a model without a schema). Counts
    /// the request once, as ok or error.
    pub fn handle_predict(&self, body: &[u8]) -> Reply {
        let started = Instant::now();
        let result = self.predict_answer(body, started);
        self.count(&result, started.elapsed());
        match result {
            Ok(body) => Reply { status: 200, body },
            Err(e) => Reply {
                status: e.http_status(),
                body: oip::encode_error(&e),
            },
        }
    }

    fn predict_answer(&self, body: &[u8], started: Instant) -> Result<Vec<u8>, ServiceError> {
        let limit = self.limits().max_payload_bytes;
        if body.len() > limit {
            return Err(ServiceError::PayloadTooLarge {
                size: body.len(),
                limit,
            });
        }
        let served = self.served();
        let features = served
            .features()
            .ok_or_else(|| ServiceError::NoSchema(served.id().name.to_string()))?;
        let decoding = Instant::now();
        let row = features.decode_body(body);
        self.inner.stats.decoded(decoding.elapsed());
        let predictions = self.predict_rows(&served, features, row?)?;
        let Some(prediction) = predictions.first() else {
            return Err(ServiceError::Features(FeatureError::Output {
                output: features.output(),
                values: 0,
                labels: features.schema().labels.len(),
            }));
        };
        let mut answer = prediction.to_json();
        answer["model_version"] = json!(served.id().version.to_string());
        answer["latency_ms"] = json!(millis(started));
        Ok(serde_json::to_vec(&answer).unwrap_or_default())
    }

    /// Runs `rows` (whole rows of the schema's width) on `served` and names each row's
    /// class; records each run's engine time.
    fn predict_rows(
        &self,
        served: &Served,
        features: &Features,
        rows: Vec<f32>,
    ) -> Result<Vec<Prediction>, ServiceError> {
        let limit = self.limits().max_batch_elements;
        if rows.len() > limit {
            return Err(ServiceError::TooManyElements {
                got: rows.len(),
                limit,
            });
        }
        let mut predictions = Vec::new();
        for request in requests(features, rows) {
            let (response, took) = self.run_on(served, &request)?;
            self.record(took);
            let probabilities = match response.outputs.get(features.output()).map(|o| &o.data) {
                Some(TensorValues::F32(values)) => values.as_slice(),
                _ => &[],
            };
            predictions.extend(features.predictions(probabilities)?);
        }
        Ok(predictions)
    }

    /// A V1 body of named-feature instances, answered with predictions, when `served`
    /// has a feature schema and the body's instances are objects; `None` when the
    /// body is for the tensor path (rows of numbers, or no schema).
    pub(super) fn v1_features(
        &self,
        served: &Served,
        body: &[u8],
        started: Instant,
    ) -> Result<Option<Vec<u8>>, ServiceError> {
        let Some(features) = served.features() else {
            return Ok(None);
        };
        let decoding = Instant::now();
        let Ok(Value::Object(mut body)) = serde_json::from_slice::<Value>(body) else {
            return Ok(None);
        };
        let Some(Value::Array(instances)) = body.remove("instances") else {
            return Ok(None);
        };
        if !matches!(instances.first(), Some(Value::Object(_))) {
            return Ok(None);
        }
        let mut rows = Vec::with_capacity(features.schema().width());
        for (index, instance) in instances.iter().enumerate() {
            let Value::Object(named) = instance else {
                return Err(ServiceError::BadRequest(format!(
                    "instance {index} is not an object of named features, as instance 0 is"
                )));
            };
            features.row(named, &mut rows).map_err(|e| match e {
                e @ FeatureError::Schema(_) => ServiceError::Features(e),
                e => ServiceError::BadRequest(format!(
                    "instance {index}: {}",
                    perch_runtime::error::Chain(&e)
                )),
            })?;
        }
        self.inner.stats.decoded(decoding.elapsed());
        let predictions = self.predict_rows(served, features, rows)?;
        let answer = json!({
            "predictions": predictions.iter().map(Prediction::to_json).collect::<Vec<_>>(),
            "model_version": served.id().version.to_string(),
            "latency_ms": millis(started),
        });
        Ok(Some(serde_json::to_vec(&answer).unwrap_or_default()))
    }
}

/// The requests that run `rows` (whole rows, concatenated) through the schema's input:
/// one batch when the input has a symbolic first dimension, else one per row.
fn requests(features: &Features, rows: Vec<f32>) -> Vec<InferRequest> {
    let width = features.schema().width().max(1);
    let request = |shape: Vec<usize>, data: Vec<f32>| InferRequest {
        id: None,
        inputs: vec![RequestTensor {
            name: features.input().to_string(),
            shape,
            data: TensorValues::F32(data),
        }],
    };
    if features.batched() {
        vec![request(vec![rows.len() / width, width], rows)]
    } else {
        rows.chunks(width)
            .map(|row| request(vec![1, width], row.to_vec()))
            .collect()
    }
}
