//! KServe's V1 prediction protocol: `{"instances": [...]}` in, `{"predictions": [...]}`
//! out.
//!
//! An instance is one item of a batch: an array of numbers (flat or nested) when the
//! model has one input, or an object keyed by input name. (For a model with a feature
//! schema, objects are named features, answered with labels: see `service::predict`.) Each input of an instance
//! must hold exactly the elements of one item: the input's shape without its batch
//! dimension when the model is batched (every input and output starts with a symbolic
//! dimension; the instances then run as one batch), its whole shape otherwise (one
//! run per instance). A prediction is the output's item, nested by its shape, or an
//! object keyed by output name when the model has several outputs.
//!
//! ```
//! use perch_firmware::service::kserve_v1::decode_instances;
//! use perch_runtime::engine::{DType, Dim, TensorInfo};
//!
//! let inputs = [TensorInfo {
//!     name: "x".into(),
//!     shape: vec![Dim::Symbolic("N".into()), Dim::Fixed(2)],
//!     dtype: DType::F32,
//! }];
//! let requests = decode_instances(br#"{"instances": [[1, 2], [3, 4]]}"#, &inputs, true).unwrap();
//! assert_eq!(requests.len(), 1);
//! assert_eq!(requests[0].inputs[0].shape, [2, 2]);
//! let err = decode_instances(br#"{"instances": [[1, 2], [3]]}"#, &inputs, true).unwrap_err();
//! assert_eq!(err.to_string(), "instance 1 has 1 values for input \"x\", which takes 2 per instance");
//! ```

use perch_runtime::engine::{DType, Dim, Metadata, TensorInfo};
use serde_json::{json, Map, Value};

use super::message::{datatype_name, InferRequest, RequestTensor, ServiceError, TensorValues};
use super::InferResponse;

/// Whether the model takes a batch: every input and output starts with a symbolic
/// dimension.
pub fn is_batched(metadata: &Metadata) -> bool {
    metadata
        .inputs
        .iter()
        .chain(&metadata.outputs)
        .all(|t| matches!(t.shape.first(), Some(Dim::Symbolic(_))))
}

/// The fixed shape of one item of `info`, or why there is none.
fn item_shape(info: &TensorInfo, batched: bool) -> Result<Vec<usize>, ServiceError> {
    info.shape
        .iter()
        .skip(usize::from(batched))
        .map(|d| match d {
            Dim::Fixed(n) => Ok(*n),
            Dim::Symbolic(_) => Err(ServiceError::BadRequest(format!(
                "input {:?} has shape {}, whose item size V1 instances cannot give; use \
                 the V2 protocol",
                info.name,
                info.shape_string()
            ))),
        })
        .collect()
}

/// Decodes a V1 body into the requests to run: one batch when `batched`, else one per
/// instance. Instances of the wrong size, unknown or missing input names, and values
/// that are not numbers of the input's type are refused with their position.
pub fn decode_instances(
    body: &[u8],
    inputs: &[TensorInfo],
    batched: bool,
) -> Result<Vec<InferRequest>, ServiceError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| ServiceError::Malformed(format!("malformed JSON: {e}")))?;
    let Some(instances) = body.get("instances").and_then(Value::as_array) else {
        return Err(ServiceError::Malformed(
            "the body must be an object with an \"instances\" array".into(),
        ));
    };
    if instances.is_empty() {
        return Err(ServiceError::BadRequest("\"instances\" is empty".into()));
    }
    let shapes = inputs
        .iter()
        .map(|i| item_shape(i, batched))
        .collect::<Result<Vec<_>, _>>()?;
    // Per input, the values of every instance, in order.
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); inputs.len()];
    let mut requests = Vec::new();
    for (index, instance) in instances.iter().enumerate() {
        for (slot, (info, shape)) in inputs.iter().zip(&shapes).enumerate() {
            let value = match instance {
                Value::Object(fields) => {
                    if let Some(unknown) = fields
                        .keys()
                        .find(|k| !inputs.iter().any(|i| i.name == **k))
                    {
                        return Err(ServiceError::BadRequest(format!(
                            "instance {index} has unknown input {unknown:?}; the model's \
                             inputs are {}",
                            names(inputs)
                        )));
                    }
                    fields.get(&info.name).ok_or_else(|| {
                        ServiceError::BadRequest(format!(
                            "instance {index} lacks input {:?}",
                            info.name
                        ))
                    })?
                }
                _ if inputs.len() == 1 => instance,
                _ => {
                    return Err(ServiceError::BadRequest(format!(
                        "instance {index} is not an object; the model takes {} inputs ({}), \
                         so each instance names them",
                        inputs.len(),
                        names(inputs)
                    )))
                }
            };
            let before = columns[slot].len();
            flatten(value, &mut columns[slot]).map_err(|what| {
                ServiceError::BadRequest(format!("instance {index}, input {:?}: {what}", info.name))
            })?;
            let got = columns[slot].len() - before;
            let want: usize = shape.iter().product();
            if got != want {
                return Err(ServiceError::BadRequest(format!(
                    "instance {index} has {got} values for input {:?}, which takes {want} per \
                     instance",
                    info.name
                )));
            }
        }
        if !batched {
            requests.push(request(inputs, &shapes, None, &mut columns)?);
        }
    }
    if batched {
        requests.push(request(
            inputs,
            &shapes,
            Some(instances.len()),
            &mut columns,
        )?);
    }
    Ok(requests)
}

fn names(inputs: &[TensorInfo]) -> String {
    let names: Vec<String> = inputs.iter().map(|i| format!("{:?}", i.name)).collect();
    names.join(", ")
}

/// Appends the numbers of `value`, flat or nested, to `out`.
fn flatten(value: &Value, out: &mut Vec<f64>) -> Result<(), String> {
    match value {
        Value::Number(n) => {
            out.push(n.as_f64().unwrap_or(f64::NAN));
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|v| flatten(v, out)),
        other => Err(format!("element {} is {other}, not a number", out.len())),
    }
}

/// One request of the columns' values (taken), with `batch` items or one whole tensor.
fn request(
    inputs: &[TensorInfo],
    shapes: &[Vec<usize>],
    batch: Option<usize>,
    columns: &mut [Vec<f64>],
) -> Result<InferRequest, ServiceError> {
    let tensors = inputs
        .iter()
        .zip(shapes)
        .zip(columns.iter_mut())
        .map(|((info, item), column)| {
            let values = std::mem::take(column);
            let shape: Vec<usize> = batch.into_iter().chain(item.iter().copied()).collect();
            Ok(RequestTensor {
                name: info.name.clone(),
                shape,
                data: typed(info, &values)?,
            })
        })
        .collect::<Result<Vec<_>, ServiceError>>()?;
    Ok(InferRequest {
        id: None,
        inputs: tensors,
    })
}

/// The values as the input's element type; integers must be whole and in range.
fn typed(info: &TensorInfo, values: &[f64]) -> Result<TensorValues, ServiceError> {
    fn ints<T: TryFrom<i64>>(info: &TensorInfo, values: &[f64]) -> Result<Vec<T>, ServiceError> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let whole = (v.fract() == 0.0 && v.abs() < 9.2e18).then_some(*v as i64);
                whole.and_then(|n| T::try_from(n).ok()).ok_or_else(|| {
                    ServiceError::BadRequest(format!(
                        "input {:?} is {} but value {i} ({v}) does not fit",
                        info.name,
                        datatype_name(info.dtype)
                    ))
                })
            })
            .collect()
    }
    Ok(match info.dtype {
        DType::F32 => TensorValues::F32(values.iter().map(|v| *v as f32).collect()),
        DType::I64 => TensorValues::I64(ints(info, values)?),
        DType::I32 => TensorValues::I32(ints(info, values)?),
        DType::U8 => TensorValues::U8(ints(info, values)?),
        DType::I8 => TensorValues::I8(ints(info, values)?),
        other => {
            return Err(ServiceError::BadRequest(format!(
                "input {:?} is {}, which V1 instances cannot carry",
                info.name,
                datatype_name(other)
            )))
        }
    })
}

/// The predictions of the responses, one per instance: each output's item nested by
/// its shape (a leading 1 dropped for an unbatched model), keyed by output name when
/// there are several outputs.
pub fn encode_predictions(responses: &[InferResponse], batched: bool) -> Vec<u8> {
    let mut predictions = Vec::new();
    for response in responses {
        let per_output: Vec<(String, Vec<Value>)> = response
            .outputs
            .iter()
            .map(|t| {
                let values = json_values(&t.data);
                let items = match (batched, t.shape.split_first()) {
                    (true, Some((&n, item))) => split_items(values, n, item),
                    (false, Some((1, item))) => vec![nest(&values, item)],
                    _ => vec![nest(&values, &t.shape)],
                };
                (t.name.clone(), items)
            })
            .collect();
        let count = per_output.first().map_or(0, |(_, items)| items.len());
        for i in 0..count {
            if let [(_, items)] = per_output.as_slice() {
                predictions.push(items.get(i).cloned().unwrap_or(Value::Null));
            } else {
                let object: Map<String, Value> = per_output
                    .iter()
                    .map(|(name, items)| {
                        (name.clone(), items.get(i).cloned().unwrap_or(Value::Null))
                    })
                    .collect();
                predictions.push(Value::Object(object));
            }
        }
    }
    serde_json::to_vec(&json!({ "predictions": predictions })).unwrap_or_default()
}

fn json_values(data: &TensorValues) -> Vec<Value> {
    match data {
        TensorValues::F32(v) => v
            .iter()
            .map(|x| match serde_json::Number::from_f64(f64::from(*x)) {
                Some(n) => Value::Number(n),
                None if x.is_nan() => json!("NaN"),
                None if *x > 0.0 => json!("Infinity"),
                None => json!("-Infinity"),
            })
            .collect(),
        TensorValues::I64(v) => v.iter().map(|x| json!(x)).collect(),
        TensorValues::I32(v) => v.iter().map(|x| json!(x)).collect(),
        TensorValues::U8(v) => v.iter().map(|x| json!(x)).collect(),
        TensorValues::I8(v) => v.iter().map(|x| json!(x)).collect(),
    }
}

/// `n` items of shape `item` from the flat values.
fn split_items(values: Vec<Value>, n: usize, item: &[usize]) -> Vec<Value> {
    let size = item.iter().product::<usize>().max(1);
    values
        .chunks(size)
        .take(n)
        .map(|chunk| nest(chunk, item))
        .collect()
}

/// The flat values nested by `shape` (a scalar for an empty shape).
fn nest(values: &[Value], shape: &[usize]) -> Value {
    match shape.split_first() {
        None => values.first().cloned().unwrap_or(Value::Null),
        Some((_, [])) => Value::Array(values.to_vec()),
        Some((_, rest)) => {
            let size = rest.iter().product::<usize>().max(1);
            Value::Array(values.chunks(size).map(|c| nest(c, rest)).collect())
        }
    }
}

impl super::InferenceService {
    /// Serves one V1 `:predict` body: decodes the instances against the served model,
    /// runs them (one batch, or one run per instance for an unbatched model) and
    /// encodes the predictions; an error is `{"error": "<reason>"}`. Instances that are
    /// objects, for a model with a feature schema, are named features instead
    /// ([`super::predict`]). Counts the request once, as ok or error.
    pub fn handle_v1(&self, body: &[u8]) -> super::Reply {
        let started = std::time::Instant::now();
        let result = self.v1_answer(body, started);
        self.count(&result, started.elapsed());
        match result {
            Ok(body) => super::Reply { status: 200, body },
            Err(e) => super::Reply {
                status: e.http_status(),
                body: super::oip::encode_error(&e),
            },
        }
    }

    fn v1_answer(&self, body: &[u8], started: std::time::Instant) -> Result<Vec<u8>, ServiceError> {
        let limits = *self.limits();
        if body.len() > limits.max_payload_bytes {
            return Err(ServiceError::PayloadTooLarge {
                size: body.len(),
                limit: limits.max_payload_bytes,
            });
        }
        let served = self.served();
        if let Some(answer) = self.v1_features(&served, body, started)? {
            return Ok(answer);
        }
        let batched = is_batched(served.metadata());
        let decoding = std::time::Instant::now();
        let requests = decode_instances(body, &served.metadata().inputs, batched);
        self.inner.stats.decoded(decoding.elapsed());
        let requests = requests?;
        let elements = requests
            .iter()
            .flat_map(|r| &r.inputs)
            .fold(0usize, |acc, t| acc.saturating_add(t.data.len()));
        if elements > limits.max_batch_elements {
            return Err(ServiceError::TooManyElements {
                got: elements,
                limit: limits.max_batch_elements,
            });
        }
        let responses = requests
            .iter()
            .map(|r| {
                let (response, took) = self.run(r)?;
                self.record(took);
                Ok(response)
            })
            .collect::<Result<Vec<_>, ServiceError>>()?;
        Ok(encode_predictions(&responses, batched))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ResponseTensor;

    fn info(name: &str, shape: Vec<Dim>, dtype: DType) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            shape,
            dtype,
        }
    }

    fn batch() -> Dim {
        Dim::Symbolic("N".into())
    }

    #[test]
    fn named_objects_fill_each_input_by_name() {
        let inputs = [
            info("a", vec![batch(), Dim::Fixed(2)], DType::F32),
            info("b", vec![batch()], DType::I64),
        ];
        let body = br#"{"instances": [{"b": 7, "a": [1, 2]}, {"a": [[3], [4]], "b": 8}]}"#;
        let requests = decode_instances(body, &inputs, true).unwrap();
        assert_eq!(requests.len(), 1);
        let tensors = &requests[0].inputs;
        assert_eq!(tensors[0].shape, [2, 2]);
        assert_eq!(tensors[0].data, TensorValues::F32(vec![1.0, 2.0, 3.0, 4.0]));
        assert_eq!(tensors[1].shape, [2]);
        assert_eq!(tensors[1].data, TensorValues::I64(vec![7, 8]));
    }

    #[test]
    fn an_unbatched_model_runs_once_per_instance() {
        let inputs = [info("x", vec![Dim::Fixed(1), Dim::Fixed(3)], DType::F32)];
        let requests =
            decode_instances(br#"{"instances": [[1,2,3],[[4,5,6]]]}"#, &inputs, false).unwrap();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[1].inputs[0].shape, [1, 3]);
        assert_eq!(
            requests[1].inputs[0].data,
            TensorValues::F32(vec![4.0, 5.0, 6.0])
        );
    }

    #[test]
    fn bad_instances_are_refused_with_their_position() {
        let one = [info("x", vec![batch(), Dim::Fixed(2)], DType::F32)];
        let two = [
            info("a", vec![batch(), Dim::Fixed(1)], DType::F32),
            info("b", vec![batch(), Dim::Fixed(1)], DType::U8),
        ];
        let cases: [(&[TensorInfo], &str, &str); 8] = [
            (&one, "[1,2]", "an object with an \"instances\" array"),
            (&one, r#"{"instances": []}"#, "\"instances\" is empty"),
            (
                &one,
                r#"{"instances": [[1, 2], [1, 2, 3]]}"#,
                "instance 1 has 3 values for input \"x\", which takes 2 per instance",
            ),
            (
                &one,
                r#"{"instances": [[1, "two"]]}"#,
                "instance 0, input \"x\": element 1 is \"two\", not a number",
            ),
            (
                &two,
                r#"{"instances": [[1, 2]]}"#,
                "instance 0 is not an object; the model takes 2 inputs",
            ),
            (
                &two,
                r#"{"instances": [{"a": 1}]}"#,
                "instance 0 lacks input \"b\"",
            ),
            (
                &two,
                r#"{"instances": [{"a": 1, "b": 2, "c": 3}]}"#,
                "instance 0 has unknown input \"c\"",
            ),
            (
                &two,
                r#"{"instances": [{"a": 1, "b": 256}]}"#,
                "input \"b\" is UINT8 but value 0 (256) does not fit",
            ),
        ];
        for (inputs, body, reason) in cases {
            let err = decode_instances(body.as_bytes(), inputs, true).unwrap_err();
            assert!(err.to_string().contains(reason), "{body}: {err}");
            assert_eq!(err.http_status(), 400);
        }
    }

    #[test]
    fn predictions_are_one_item_per_instance_keyed_when_there_are_several_outputs() {
        let response = |outputs| InferResponse {
            id: None,
            model_name: "m".into(),
            model_version: "1.0.0".into(),
            outputs,
        };
        let probs = ResponseTensor {
            name: "p".into(),
            shape: vec![2, 2],
            data: TensorValues::F32(vec![0.25, 0.75, 1.0, f32::NAN]),
        };
        let label = ResponseTensor {
            name: "label".into(),
            shape: vec![2],
            data: TensorValues::I64(vec![1, 0]),
        };
        let one: Value =
            serde_json::from_slice(&encode_predictions(&[response(vec![probs.clone()])], true))
                .unwrap();
        assert_eq!(one, json!({"predictions": [[0.25, 0.75], [1.0, "NaN"]]}));
        let two: Value =
            serde_json::from_slice(&encode_predictions(&[response(vec![probs, label])], true))
                .unwrap();
        assert_eq!(
            two,
            json!({"predictions": [{"p": [0.25, 0.75], "label": 1}, {"p": [1.0, "NaN"], "label": 0}]})
        );
    }
}
