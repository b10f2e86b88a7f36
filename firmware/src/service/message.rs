//! What a request and its reply hold, whichever codec carried them, and why a request
//! fails.

use perch_runtime::engine::{DType, EngineError, TensorData};
use serde::{Deserialize, Serialize};

use super::features::FeatureError;

/// The elements of a tensor, row-major, in one of the element types the engine runs.
///
/// In the [`binary`] encoding this is a postcard enum: variant index 0 `F32` (each
/// element 4 bytes little-endian), 1 `I64` (zigzag varint), 2 `I32` (zigzag varint),
/// 3 `U8` (one byte), 4 `I8` (one byte), each after a varint element count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TensorValues {
    /// 32-bit floats (`FP32`).
    F32(Vec<f32>),
    /// 64-bit integers (`INT64`).
    I64(Vec<i64>),
    /// 32-bit integers (`INT32`).
    I32(Vec<i32>),
    /// Unsigned bytes (`UINT8`).
    U8(Vec<u8>),
    /// Signed bytes (`INT8`).
    I8(Vec<i8>),
}

impl TensorValues {
    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorValues::F32(v) => v.len(),
            TensorValues::I64(v) => v.len(),
            TensorValues::I32(v) => v.len(),
            TensorValues::U8(v) => v.len(),
            TensorValues::I8(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The engine's element type.
    pub fn dtype(&self) -> DType {
        match self {
            TensorValues::F32(_) => DType::F32,
            TensorValues::I64(_) => DType::I64,
            TensorValues::I32(_) => DType::I32,
            TensorValues::U8(_) => DType::U8,
            TensorValues::I8(_) => DType::I8,
        }
    }

    /// The Open Inference Protocol name of the element type (`FP32`, `INT64`, ...).
    pub fn datatype(&self) -> &'static str {
        datatype_name(self.dtype())
    }

    /// A borrowed view for the engine.
    pub fn as_data(&self) -> TensorData<'_> {
        match self {
            TensorValues::F32(v) => TensorData::F32(v),
            TensorValues::I64(v) => TensorData::I64(v),
            TensorValues::I32(v) => TensorData::I32(v),
            TensorValues::U8(v) => TensorData::U8(v),
            TensorValues::I8(v) => TensorData::I8(v),
        }
    }
}

/// One input tensor of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestTensor {
    /// The model input it is for; empty to go by position (then every input of the
    /// request must be unnamed).
    pub name: String,
    /// Its concrete shape; symbolic model dimensions (a batch `N`) take any size > 0.
    pub shape: Vec<usize>,
    /// Its elements, row-major; as many as the shape's product.
    pub data: TensorValues,
}

/// An inference request, decoded from either encoding.
///
/// Every output of the model is returned (an Open Inference Protocol `outputs` list
/// in a JSON request is accepted and ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    /// The client's request id, echoed in the response (the MQTT correlation id).
    pub id: Option<String>,
    /// One tensor per model input, in the model's order or named.
    pub inputs: Vec<RequestTensor>,
}

/// One output tensor of a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseTensor {
    /// The model's name for the output.
    pub name: String,
    /// Its concrete shape.
    pub shape: Vec<usize>,
    /// Its elements, row-major.
    pub data: TensorValues,
}

/// The answer to an [`InferRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    /// The request's id, if it had one.
    pub id: Option<String>,
    /// The served model's name.
    pub model_name: String,
    /// The served model's version, `major.minor.patch`.
    pub model_version: String,
    /// Every model output, in the model's order.
    pub outputs: Vec<ResponseTensor>,
}

/// Why a request was not answered with outputs. `Display` is the reason sent to the
/// client, one line; [`ServiceError::http_status`] is the status that goes with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The payload does not decode (bad JSON or postcard, wrong structure, unknown
    /// datatype, values that do not fit their datatype).
    #[error("{0}")]
    Malformed(String),
    /// The request decodes but does not fit the model (names, count, datatype, shape,
    /// element count, NaN or infinite values).
    #[error("{0}")]
    BadRequest(String),
    /// The request names a model this service does not serve.
    #[error("no model named {0:?} is served here")]
    UnknownModel(String),
    /// The request names a version of the model other than the one served.
    #[error("model {name:?} has no version {version}; version {served} is served")]
    UnknownVersion {
        /// The model's name.
        name: String,
        /// The version asked for.
        version: String,
        /// The version served.
        served: String,
    },
    /// The payload is over [`ServiceLimits::max_payload_bytes`].
    #[error("the request is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The payload's size in bytes (a lower bound when the transport stopped
        /// reading early).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The request holds more elements than [`ServiceLimits::max_batch_elements`].
    #[error("the request holds {got} tensor elements, over the limit of {limit}")]
    TooManyElements {
        /// Elements in the request, summed over its inputs.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// The request holds more tensors than [`ServiceLimits::max_tensors`].
    #[error("the request holds {got} tensors, over the limit of {limit}")]
    TooManyTensors {
        /// Tensors in the request.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// The request body did not arrive within the transport's body timeout.
    #[error("the request body did not arrive within {} ms", limit.as_millis())]
    BodyTimeout {
        /// The timeout.
        limit: std::time::Duration,
    },
    /// The inference ran past its deadline ([`ServiceLimits::deadline`]); the model is
    /// marked unhealthy while it runs on.
    #[error("the inference ran past its deadline of {} ms", limit.as_millis())]
    DeadlineExceeded {
        /// The deadline.
        limit: std::time::Duration,
    },
    /// The model produced NaN or infinite values, which its bundle does not allow.
    #[error("output {name:?} holds a non-finite value ({value}) at position {position}")]
    NonFiniteOutput {
        /// The output's name.
        name: String,
        /// The element's index, row-major.
        position: usize,
        /// The value.
        value: f32,
    },
    /// The encoded response is over what the transport can carry (MQTT's packet
    /// limit); the request ran but its outputs cannot be sent.
    #[error("the reply is {size} bytes, over the transport's limit of {limit} bytes")]
    ReplyTooLarge {
        /// The encoded response's size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The model is loaded but not (or no longer) marked ready.
    #[error("the model is not ready")]
    NotReady,
    /// The repository knows the model but does not serve it now (not loaded yet,
    /// unloaded, or its load failed).
    #[error("model {name:?} is not ready: {reason}")]
    Unavailable {
        /// The model's name.
        name: String,
        /// Why it is not served.
        reason: String,
    },
    /// The engine failed on a valid request.
    #[error(transparent)]
    Engine(EngineError),
    /// The model's feature schema does not fit it, or its output does not fit the
    /// schema (requests that do not fit the schema are [`ServiceError::BadRequest`]).
    #[error(transparent)]
    Features(FeatureError),
    /// `/predict` was asked of a model without a feature schema.
    #[error("model {0:?} has no feature schema, so it takes tensors, not named features: use /v2/models/{0}/infer")]
    NoSchema(String),
}

impl ServiceError {
    /// The HTTP status for this error: 400 malformed or bad request, 404 unknown model
    /// or version, or a model of the repository that is not loaded (400 `/predict` of a model without a feature schema), 408 a body that did not arrive in time, 413 over a request limit,
    /// 503 not ready, 504 past the inference deadline, 500 engine failure (NaN or
    /// infinite outputs included) or a reply too large for the transport.
    pub fn http_status(&self) -> u16 {
        match self {
            ServiceError::Malformed(_) | ServiceError::BadRequest(_) => 400,
            ServiceError::UnknownModel(_)
            | ServiceError::UnknownVersion { .. }
            | ServiceError::Unavailable { .. } => 404,
            ServiceError::BodyTimeout { .. } => 408,
            ServiceError::PayloadTooLarge { .. }
            | ServiceError::TooManyElements { .. }
            | ServiceError::TooManyTensors { .. } => 413,
            ServiceError::NotReady => 503,
            ServiceError::DeadlineExceeded { .. } => 504,
            ServiceError::NoSchema(_) => 400,
            ServiceError::Engine(_)
            | ServiceError::Features(_)
            | ServiceError::ReplyTooLarge { .. }
            | ServiceError::NonFiniteOutput { .. } => 500,
        }
    }
}

impl From<FeatureError> for ServiceError {
    /// Features that do not fit the schema are the client's mistake (400, the reason
    /// with its cause on one line); a schema or an output that does not fit the model
    /// is the server's (500).
    fn from(e: FeatureError) -> ServiceError {
        match e {
            FeatureError::Schema(_) | FeatureError::Output { .. } => ServiceError::Features(e),
            _ => ServiceError::BadRequest(perch_runtime::error::Chain(&e).to_string()),
        }
    }
}

impl From<EngineError> for ServiceError {
    /// Input-validation errors from the engine are the client's (400); the rest are
    /// engine failures (500).
    fn from(e: EngineError) -> ServiceError {
        match e {
            EngineError::InputCount { .. }
            | EngineError::InputDType { .. }
            | EngineError::InputShape { .. }
            | EngineError::InputLength { .. }
            | EngineError::NonFinite { .. }
            | EngineError::IndexOutOfRange { .. } => ServiceError::BadRequest(e.to_string()),
            e => ServiceError::Engine(e),
        }
    }
}

/// The Open Inference Protocol name of an engine element type (`BYTES` for types the
/// protocol has no name for).
pub fn datatype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "FP32",
        DType::F16 => "FP16",
        DType::F64 => "FP64",
        DType::I8 => "INT8",
        DType::U8 => "UINT8",
        DType::I16 => "INT16",
        DType::I32 => "INT32",
        DType::I64 => "INT64",
        DType::Bool => "BOOL",
        _ => "BYTES",
    }
}
