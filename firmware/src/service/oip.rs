//! The Open Inference Protocol v2 JSON encoding (as KServe and Triton speak it).
//!
//! A request:
//!
//! ```json
//! {"id": "42",
//!  "inputs": [{"name": "pixels", "shape": [2, 64], "datatype": "FP32",
//!              "data": [[0.0, 0.5, ...], [...]]}],
//!  "outputs": [{"name": "logits"}], "parameters": {}}
//! ```
//!
//! - `id` (optional, a string) is echoed in the response.
//! - `data` is row-major, flat or nested to any depth; its element count must be the
//!   product of `shape`. `datatype` is one of `FP32`, `INT64`, `INT32`, `UINT8`, `INT8`
//!   (the types the engine runs); integers must be whole and in range for it.
//! - JSON has no NaN or infinity: `FP32` data may hold the strings `"NaN"`,
//!   `"Infinity"` and `"-Infinity"` for them (models reject them by default, with a
//!   reason naming the element). A bare `NaN` token is malformed JSON, and the reason
//!   says so.
//! - A tensor may carry its elements in the binary tensor data extension instead of
//!   `data`: `"parameters": {"binary_data_size": <bytes>}`, the bytes following the
//!   JSON header in the body ([`super::oip_binary`]). [`decode_parts`] reads both.
//! - `outputs` (`[{"name": ..., "parameters": {"binary_data": true}}]`) picks the
//!   outputs returned, and which of them travel as binary data; without it every
//!   output is returned, as binary data when `parameters.binary_data_output` is true.
//!   [`decode_request`] (MQTT) ignores both and returns every output as JSON.
//!
//! A response:
//!
//! ```json
//! {"model_name": "digits-mlp", "model_version": "1.0.0", "id": "42",
//!  "outputs": [{"name": "logits", "shape": [2, 10], "datatype": "FP32", "data": [...]}]}
//! ```
//!
//! `id` is left out when the request had none; `data` is flat; non-finite `FP32`
//! outputs are written as the strings above. An output sent as binary data has
//! `"parameters": {"binary_data_size": <bytes>}` instead of `data`
//! ([`encode_response_parts`]). An error is `{"error": "<reason>"}`.

use std::fmt;

use perch_runtime::engine::{Dim, Metadata, TensorInfo};
use perch_runtime::wire::ModelId;
use serde::de::{self, DeserializeSeed, IgnoredAny, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::json;

pub use super::message::datatype_name;
use super::message::{InferRequest, InferResponse, RequestTensor, ServiceError, TensorValues};

/// The engine types a request may carry, as the protocol names them.
const SUPPORTED: &str = "FP32, INT64, INT32, UINT8 or INT8";

/// Decodes a JSON request body that carries every tensor in `data`. Malformed JSON, a
/// wrong structure, an unknown or unsupported datatype, and values that do not fit the
/// datatype are [`ServiceError::Malformed`] with the reason; whether the tensors fit
/// the model is checked later, by the service. The requested `outputs` are ignored.
pub fn decode_request(body: &[u8]) -> Result<InferRequest, ServiceError> {
    decode_parts(body, &[]).map(|r| r.request)
}

/// An inference request as the HTTP endpoint takes it: the tensors, and what the
/// client asked of the outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct OipRequest {
    /// The inputs and the request id.
    pub request: InferRequest,
    /// The outputs asked for, in the order asked; `None` for every output.
    pub outputs: Option<Vec<RequestedOutput>>,
    /// `parameters.binary_data_output`: whether outputs not listed in `outputs` (all of
    /// them when it is `None`) travel as binary data.
    pub binary_data_output: bool,
}

/// One entry of a request's `outputs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    /// The model output's name.
    pub name: String,
    /// Its `parameters.binary_data`, if given.
    pub binary_data: Option<bool>,
}

/// Decodes the JSON header of a request and the binary tensor data that followed it
/// (empty without the extension). A tensor with `parameters.binary_data_size` takes
/// its bytes from `binary`, in the order of the inputs; every byte of `binary` must be
/// claimed. Errors are [`ServiceError::Malformed`], naming the tensor and the sizes.
pub fn decode_parts(header: &[u8], binary: &[u8]) -> Result<OipRequest, ServiceError> {
    let request: JsonRequest =
        serde_json::from_slice(header).map_err(|e| json_error(header, &e))?;
    let mut cursor = super::oip_binary::Cursor::new(binary);
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for t in request.inputs {
        let parameters = t.parameters.unwrap_or_default();
        if parameters.shared_memory_region.is_some() {
            return Err(ServiceError::Malformed(format!(
                "input {:?} names a shared memory region; this server takes tensors in \
                 the body only",
                t.name
            )));
        }
        let data = match (t.data, parameters.binary_data_size) {
            (Some(data), None) => convert(&t.name, &t.datatype, data.0)?,
            (None, Some(size)) => {
                let bytes = cursor.take(&t.name, size)?;
                super::oip_binary::read_tensor(&t.name, &t.datatype, &t.shape, bytes)?
            }
            (Some(_), Some(_)) => {
                return Err(ServiceError::Malformed(format!(
                    "input {:?} has both data and parameters.binary_data_size; give one",
                    t.name
                )))
            }
            (None, None) => {
                return Err(ServiceError::Malformed(format!(
                    "input {:?} has neither data nor parameters.binary_data_size",
                    t.name
                )))
            }
        };
        inputs.push(RequestTensor {
            name: t.name,
            shape: t.shape,
            data,
        });
    }
    cursor.finish()?;
    let outputs = match request.outputs {
        None => None,
        Some(list) => Some(
            list.into_iter()
                .map(|o| {
                    let parameters = o.parameters.unwrap_or_default();
                    if parameters.shared_memory_region.is_some() {
                        return Err(ServiceError::Malformed(format!(
                            "output {:?} names a shared memory region; this server \
                             answers in the body only",
                            o.name
                        )));
                    }
                    if parameters.classification.is_some() {
                        return Err(ServiceError::Malformed(format!(
                            "output {:?} asks for classification, which this server \
                             does not do; ask for the output itself",
                            o.name
                        )));
                    }
                    Ok(RequestedOutput {
                        name: o.name,
                        binary_data: parameters.binary_data,
                    })
                })
                .collect::<Result<Vec<_>, ServiceError>>()?,
        ),
    };
    let binary_data_output = request
        .parameters
        .and_then(|p| p.binary_data_output)
        .unwrap_or(false);
    Ok(OipRequest {
        request: InferRequest {
            id: request.id,
            inputs,
        },
        outputs,
        binary_data_output,
    })
}

/// Encodes a response body with every output in JSON `data`.
pub fn encode_response(response: &InferResponse) -> Vec<u8> {
    encode_response_parts(response, &vec![false; response.outputs.len()]).0
}

/// Encodes a response, writing output `i` as binary data when `binary[i]` (missing
/// entries are JSON). Returns the body and, when any output is binary, the length of
/// its JSON header (the `Inference-Header-Content-Length`); the binary outputs follow
/// the header in order, little-endian, one byte per `UINT8`/`INT8` element.
pub fn encode_response_parts(
    response: &InferResponse,
    binary: &[bool],
) -> (Vec<u8>, Option<usize>) {
    let mut tail = Vec::new();
    let outputs: Vec<OutTensor<'_>> = response
        .outputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let as_binary = binary.get(i).copied().unwrap_or(false);
            let parameters = as_binary.then(|| {
                let before = tail.len();
                super::oip_binary::write_tensor(&t.data, &mut tail);
                OutParameters {
                    binary_data_size: tail.len() - before,
                }
            });
            OutTensor {
                name: &t.name,
                shape: &t.shape,
                datatype: t.data.datatype(),
                data: (!as_binary).then_some(&t.data),
                parameters,
            }
        })
        .collect();
    let body = OutResponse {
        model_name: &response.model_name,
        model_version: &response.model_version,
        id: response.id.as_deref(),
        outputs,
    };
    let mut encoded = to_vec(&body);
    if binary.iter().any(|b| *b) {
        let header = encoded.len();
        encoded.extend_from_slice(&tail);
        (encoded, Some(header))
    } else {
        (encoded, None)
    }
}

/// Encodes an error body, `{"error": "<reason>"}`.
pub fn encode_error(error: &ServiceError) -> Vec<u8> {
    to_vec(&json!({ "error": error.to_string() }))
}

/// A dimension as the protocols write it: its size, or `-1` when it is symbolic.
pub(crate) fn wire_dim(dim: &Dim) -> i64 {
    match dim {
        Dim::Fixed(n) => i64::try_from(*n).unwrap_or(i64::MAX),
        Dim::Symbolic(_) => -1,
    }
}

/// The model metadata document (`GET /v2/models/{name}`): name, versions, platform
/// `perch-tract`, and each input and output with its name, datatype and shape
/// (`-1` for a symbolic dimension).
pub fn encode_model_metadata(id: &ModelId, metadata: &Metadata) -> Vec<u8> {
    let tensors = |infos: &[TensorInfo]| -> Vec<serde_json::Value> {
        infos
            .iter()
            .map(|info| {
                let shape: Vec<i64> = info.shape.iter().map(wire_dim).collect();
                json!({
                    "name": info.name,
                    "datatype": datatype_name(info.dtype),
                    "shape": shape,
                })
            })
            .collect()
    };
    to_vec(&json!({
        "name": id.name.as_str(),
        "versions": [id.version.to_string()],
        "platform": "perch-tract",
        "inputs": tensors(&metadata.inputs),
        "outputs": tensors(&metadata.outputs),
    }))
}

/// The server metadata document (`GET /v2`): name, version and the protocol
/// extensions served (`binary_tensor_data`, `statistics`, `model_configuration`,
/// `model_repository` for the index only).
pub fn encode_server_metadata() -> Vec<u8> {
    to_vec(&json!({
        "name": "perchd",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "statistics", "model_configuration", "model_repository"],
    }))
}

/// Serializes a value made of strings, numbers and sequences, which cannot fail.
fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| {
        format!("{{\"error\":\"cannot encode the response: {e}\"}}").into_bytes()
    })
}

/// The reason for a body that serde_json refused, with a hint when the cause is a
/// bare NaN or Infinity (which Python's `json.dumps` writes).
fn json_error(body: &[u8], e: &serde_json::Error) -> ServiceError {
    if e.is_syntax() {
        if let Some(offset) = byte_offset(body, e.line(), e.column()) {
            let rest = &body[offset.min(body.len())..];
            let bare = ["NaN", "Infinity", "-Infinity"]
                .iter()
                .any(|t| rest.starts_with(t.as_bytes()));
            if bare {
                return ServiceError::Malformed(format!(
                    "malformed JSON: NaN and Infinity are not JSON numbers ({e}); send them as \
                     the strings \"NaN\", \"Infinity\" or \"-Infinity\" (the model may reject \
                     non-finite inputs)"
                ));
            }
        }
    }
    let what = if e.is_data() {
        "invalid request"
    } else {
        "malformed JSON"
    };
    ServiceError::Malformed(format!("{what}: {e}"))
}

/// The byte offset just before serde_json's 1-based (line, column) position, the
/// column counting bytes and pointing at the last byte read.
fn byte_offset(body: &[u8], line: usize, column: usize) -> Option<usize> {
    let mut start = 0;
    for _ in 1..line {
        start += body.get(start..)?.iter().position(|&b| b == b'\n')? + 1;
    }
    (start + column).checked_sub(1)
}

/// Converts the decoded numbers to the request's datatype.
fn convert(name: &str, datatype: &str, values: Vec<Scalar>) -> Result<TensorValues, ServiceError> {
    fn ints<T: TryFrom<i64> + TryFrom<u64>>(
        name: &str,
        datatype: &str,
        values: &[Scalar],
    ) -> Result<Vec<T>, ServiceError> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let converted = match v {
                    Scalar::I(n) => T::try_from(*n).ok(),
                    Scalar::U(n) => T::try_from(*n).ok(),
                    Scalar::F(_) | Scalar::NonFinite(_) => {
                        return Err(ServiceError::Malformed(format!(
                            "input {name:?} is {datatype} but element {i} ({v}) is not an integer"
                        )))
                    }
                };
                converted.ok_or_else(|| {
                    ServiceError::Malformed(format!(
                        "input {name:?} is {datatype} but element {i} ({v}) is out of range"
                    ))
                })
            })
            .collect()
    }
    Ok(match datatype {
        "FP32" => TensorValues::F32(
            values
                .iter()
                .map(|v| match v {
                    Scalar::I(n) => *n as f32,
                    Scalar::U(n) => *n as f32,
                    Scalar::F(x) => *x as f32,
                    Scalar::NonFinite(x) => *x,
                })
                .collect(),
        ),
        "INT64" => TensorValues::I64(ints(name, datatype, &values)?),
        "INT32" => TensorValues::I32(ints(name, datatype, &values)?),
        "UINT8" => TensorValues::U8(ints(name, datatype, &values)?),
        "INT8" => TensorValues::I8(ints(name, datatype, &values)?),
        "BOOL" | "UINT16" | "UINT32" | "UINT64" | "INT16" | "FP16" | "FP64" | "BYTES" => {
            return Err(ServiceError::Malformed(format!(
                "input {name:?} has datatype {datatype}, which this server does not take; \
                 use {SUPPORTED}"
            )))
        }
        other => {
            return Err(ServiceError::Malformed(format!(
                "input {name:?} has unknown datatype {other:?}; use {SUPPORTED}"
            )))
        }
    })
}

#[derive(Deserialize)]
struct JsonRequest {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<JsonTensor>,
    #[serde(default)]
    outputs: Option<Vec<JsonOutputRequest>>,
    #[serde(default)]
    parameters: Option<RequestParameters>,
}

/// The request-level `parameters` this server reads; others are ignored.
#[derive(Deserialize)]
struct RequestParameters {
    #[serde(default)]
    binary_data_output: Option<bool>,
}

#[derive(Deserialize)]
struct JsonOutputRequest {
    name: String,
    #[serde(default)]
    parameters: Option<OutputParameters>,
}

/// The output `parameters` this server reads; others are ignored.
#[derive(Deserialize, Default)]
struct OutputParameters {
    #[serde(default)]
    binary_data: Option<bool>,
    #[serde(default)]
    classification: Option<IgnoredAny>,
    #[serde(default)]
    shared_memory_region: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct JsonTensor {
    name: String,
    shape: Vec<usize>,
    datatype: String,
    #[serde(default)]
    data: Option<Flat>,
    #[serde(default)]
    parameters: Option<TensorParameters>,
}

/// The input `parameters` this server reads; others are ignored.
#[derive(Deserialize, Default)]
struct TensorParameters {
    #[serde(default)]
    binary_data_size: Option<u64>,
    #[serde(default)]
    shared_memory_region: Option<IgnoredAny>,
}

/// One JSON number (or non-finite string), kept as parsed until the datatype is known.
#[derive(Debug, Clone, Copy)]
enum Scalar {
    I(i64),
    U(u64),
    F(f64),
    NonFinite(f32),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::I(n) => write!(f, "{n}"),
            Scalar::U(n) => write!(f, "{n}"),
            Scalar::F(x) => write!(f, "{x}"),
            Scalar::NonFinite(x) => write!(f, "{x}"),
        }
    }
}

/// `data`, flattened row-major from any nesting depth (serde_json bounds the depth).
struct Flat(Vec<Scalar>);

impl<'de> Deserialize<'de> for Flat {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Flat, D::Error> {
        let mut values = Vec::new();
        FlatSeed(&mut values).deserialize(deserializer)?;
        Ok(Flat(values))
    }
}

struct FlatSeed<'a>(&'a mut Vec<Scalar>);

impl<'de> DeserializeSeed<'de> for FlatSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FlatSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of numbers, flat or nested")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(FlatSeed(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.push(Scalar::I(v));
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.0.push(Scalar::U(v));
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.push(Scalar::F(v));
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        let value = match v {
            "NaN" | "nan" => f32::NAN,
            "Infinity" | "inf" => f32::INFINITY,
            "-Infinity" | "-inf" => f32::NEG_INFINITY,
            _ => {
                return Err(E::custom(format_args!(
                    "data holds the string {v:?}; only numbers and \"NaN\", \"Infinity\", \
                     \"-Infinity\" are taken"
                )))
            }
        };
        self.0.push(Scalar::NonFinite(value));
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(
            "data holds a boolean; BOOL tensors are not taken",
        ))
    }
}

#[derive(Serialize)]
struct OutResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutTensor<'a>>,
}

#[derive(Serialize)]
struct OutTensor<'a> {
    name: &'a str,
    shape: &'a [usize],
    datatype: &'static str,
    #[serde(serialize_with = "flat_data", skip_serializing_if = "Option::is_none")]
    data: Option<&'a TensorValues>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<OutParameters>,
}

#[derive(Serialize)]
struct OutParameters {
    binary_data_size: usize,
}

fn flat_data<S: Serializer>(data: &Option<&TensorValues>, s: S) -> Result<S::Ok, S::Error> {
    let Some(data) = data else {
        return s.serialize_none();
    };
    match data {
        TensorValues::F32(v) => {
            let mut seq = s.serialize_seq(Some(v.len()))?;
            for x in v {
                if x.is_finite() {
                    seq.serialize_element(x)?;
                } else if x.is_nan() {
                    seq.serialize_element("NaN")?;
                } else if *x > 0.0 {
                    seq.serialize_element("Infinity")?;
                } else {
                    seq.serialize_element("-Infinity")?;
                }
            }
            seq.end()
        }
        TensorValues::I64(v) => v.serialize(s),
        TensorValues::I32(v) => v.serialize(s),
        TensorValues::U8(v) => v.serialize(s),
        TensorValues::I8(v) => v.serialize(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::ResponseTensor;

    fn decode(body: &str) -> Result<InferRequest, String> {
        decode_request(body.as_bytes()).map_err(|e| {
            assert!(matches!(e, ServiceError::Malformed(_)), "{e:?}");
            e.to_string()
        })
    }

    fn tensor(datatype: &str, data: &str) -> String {
        format!(
            r#"{{"inputs":[{{"name":"x","shape":[2,2],"datatype":"{datatype}","data":{data}}}]}}"#
        )
    }

    #[test]
    fn nested_data_flattens_row_major() {
        let flat = decode(&tensor("FP32", "[1, 2.5, -3, 4]")).unwrap();
        let nested = decode(&tensor("FP32", "[[1, 2.5], [-3, 4]]")).unwrap();
        assert_eq!(flat, nested);
        assert_eq!(
            flat.inputs[0].data,
            TensorValues::F32(vec![1.0, 2.5, -3.0, 4.0])
        );
        assert_eq!(flat.inputs[0].shape, [2, 2]);
        assert_eq!(flat.id, None);
    }

    #[test]
    fn every_supported_datatype_decodes_to_its_element_type() {
        let data = "[-1, 0, 1, 100]";
        let cases = [
            ("INT64", TensorValues::I64(vec![-1, 0, 1, 100])),
            ("INT32", TensorValues::I32(vec![-1, 0, 1, 100])),
            ("INT8", TensorValues::I8(vec![-1, 0, 1, 100])),
        ];
        for (datatype, want) in cases {
            assert_eq!(
                decode(&tensor(datatype, data)).unwrap().inputs[0].data,
                want
            );
        }
        assert_eq!(
            decode(&tensor("UINT8", "[0, 1, 2, 255]")).unwrap().inputs[0].data,
            TensorValues::U8(vec![0, 1, 2, 255])
        );
    }

    #[test]
    fn integers_that_do_not_fit_their_datatype_are_refused_by_position() {
        let err = decode(&tensor("INT8", "[1, 2, 128, 4]")).unwrap_err();
        assert_eq!(
            err,
            "input \"x\" is INT8 but element 2 (128) is out of range"
        );
        let err = decode(&tensor("UINT8", "[1, -1, 2, 4]")).unwrap_err();
        assert!(err.contains("element 1 (-1) is out of range"), "{err}");
        let err = decode(&tensor("INT64", "[1, 2, 3, 4.5]")).unwrap_err();
        assert!(err.contains("element 3 (4.5) is not an integer"), "{err}");
    }

    #[test]
    fn unknown_and_unsupported_datatypes_are_named() {
        let err = decode(&tensor("float", "[1,2,3,4]")).unwrap_err();
        assert!(
            err.starts_with("input \"x\" has unknown datatype \"float\""),
            "{err}"
        );
        let err = decode(&tensor("FP64", "[1,2,3,4]")).unwrap_err();
        assert!(
            err.contains("datatype FP64, which this server does not take"),
            "{err}"
        );
    }

    #[test]
    fn non_finite_values_decode_from_strings_and_bare_tokens_are_explained() {
        let request = decode(&tensor("FP32", r#"["NaN", "Infinity", "-Infinity", 1]"#)).unwrap();
        let TensorValues::F32(v) = &request.inputs[0].data else {
            panic!("not f32")
        };
        assert!(v[0].is_nan());
        assert_eq!(v[1..], [f32::INFINITY, f32::NEG_INFINITY, 1.0]);
        for bare in ["NaN", "Infinity", "-Infinity"] {
            let err = decode(&tensor("FP32", &format!("[1, {bare}, 2, 3]"))).unwrap_err();
            assert!(
                err.contains("NaN and Infinity are not JSON numbers"),
                "{err}"
            );
        }
        let err = decode("{\n\"inputs\":\n[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"FP32\",\n\"data\":[NaN]}]}").unwrap_err();
        assert!(
            err.contains("NaN and Infinity are not JSON numbers"),
            "{err}"
        );
    }

    #[test]
    fn malformed_json_and_wrong_structure_name_the_problem() {
        let cases = [
            ("", "malformed JSON: EOF while parsing"),
            ("{\"inputs\": [}", "malformed JSON: expected value"),
            (
                "{\"inputs\": 3}",
                "invalid request: invalid type: integer `3`, expected a sequence",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#,
                "invalid request: invalid value: integer `-1`, expected usize",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["one"]}]}"#,
                "data holds the string \"one\"",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[true]}]}"#,
                "data holds a boolean",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":{"a":1}}]}"#,
                "expected an array of numbers, flat or nested",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#,
                "input \"x\" has neither data nor parameters.binary_data_size",
            ),
            (
                r#"{"id": 5, "inputs": []}"#,
                "invalid type: integer `5`, expected a string",
            ),
        ];
        for (body, reason) in cases {
            let err = decode(body).unwrap_err();
            assert!(err.contains(reason), "{body}: {err}");
        }
    }

    #[test]
    fn the_optional_protocol_fields_are_accepted() {
        let body = r#"{"id":"a1","parameters":{"x":[1,{}]},"outputs":[{"name":"y","parameters":{}}],
            "inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"parameters":{"binary_data":false}}]}"#;
        let request = decode(body).unwrap();
        assert_eq!(request.id.as_deref(), Some("a1"));
    }

    #[test]
    fn a_response_is_the_protocol_json_with_non_finite_values_as_strings() {
        let mut response = InferResponse {
            id: None,
            model_name: "m".into(),
            model_version: "1.0.0".into(),
            outputs: vec![
                ResponseTensor {
                    name: "y".into(),
                    shape: vec![1, 4],
                    data: TensorValues::F32(vec![0.5, f32::NAN, f32::INFINITY, f32::NEG_INFINITY]),
                },
                ResponseTensor {
                    name: "label".into(),
                    shape: vec![1],
                    data: TensorValues::I64(vec![-7]),
                },
            ],
        };
        let body: serde_json::Value = serde_json::from_slice(&encode_response(&response)).unwrap();
        assert_eq!(
            body,
            json!({"model_name": "m", "model_version": "1.0.0", "outputs": [
                {"name": "y", "shape": [1, 4], "datatype": "FP32",
                 "data": [0.5, "NaN", "Infinity", "-Infinity"]},
                {"name": "label", "shape": [1], "datatype": "INT64", "data": [-7]}]})
        );
        response.id = Some("r".into());
        let body: serde_json::Value = serde_json::from_slice(&encode_response(&response)).unwrap();
        assert_eq!(body["id"], "r");
    }

    #[test]
    fn an_error_is_one_field_holding_the_reason() {
        let body = encode_error(&ServiceError::UnknownModel("kws".into()));
        assert_eq!(
            body,
            br#"{"error":"no model named \"kws\" is served here"}"#
        );
    }
}
