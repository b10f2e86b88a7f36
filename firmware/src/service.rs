//! The inference service behind every front end: HTTP ([`crate::http`]) and MQTT.
//!
//! An [`InferenceService`] owns one loaded model and serves requests for it from any
//! number of threads. It checks a request against the model's inputs before the
//! engine sees it, so every bad request is answered with a [`ServiceError`] whose
//! `Display` is the reason to send back, and it keeps the counters and latency
//! histograms the agent publishes (cumulative ones for `/metrics`, interval ones for
//! the MQTT metrics reports).
//!
//! Requests arrive in one of two encodings, each in its own module:
//! [`oip`] (the Open Inference Protocol v2 JSON body, as KServe and Triton take it) and
//! [`binary`] (postcard, for MQTT payloads). [`InferenceService::handle_request`] ties
//! decoding, inference and encoding together so both front ends answer alike.
//!
//! ```no_run
//! use perch_firmware::service::{oip, Codec, InferenceService, ServiceLimits};
//! use perch_runtime::engine::{LoadOptions, Model};
//! use perch_runtime::wire::{ModelId, Version};
//!
//! let model = Model::load("models/digits-mlp/model.onnx", &LoadOptions::new())?;
//! let id = ModelId::new("digits-mlp", Version::new(1, 0, 0)).expect("a short name");
//! let service = InferenceService::new(model, id, ServiceLimits::default());
//! let pixels = vec!["0"; 64].join(",");
//! let body = format!(
//!     r#"{{"inputs":[{{"name":"pixels","shape":[1,64],"datatype":"FP32","data":[{pixels}]}}]}}"#
//! );
//! let reply = service.handle_request(body.as_bytes(), Codec::Json);
//! assert_eq!(reply.status, 200);
//! assert_eq!(service.totals().ok, 1);
//! # Ok::<(), perch_runtime::engine::EngineError>(())
//! ```

pub mod binary;
mod deadline;
pub mod describe;
pub mod features;
pub mod kserve_v1;
mod message;
pub mod model_config;
pub mod oip;
pub mod oip_binary;
pub mod oip_serve;
mod predict;
pub mod stats;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use perch_runtime::engine::{
    DType, Dim, EngineError, Input, Metadata, Model, Outputs, Session, TensorData, TensorInfo,
};
use perch_runtime::histogram::{AtomicHistogram, Histogram};
use perch_runtime::wire::ModelId;

pub use features::Features;
pub use message::{
    InferRequest, InferResponse, RequestTensor, ResponseTensor, ServiceError, TensorValues,
};
pub use stats::Statistics;

/// Bounds on what one request may ask of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceLimits {
    /// The largest request body accepted, in bytes (JSON or postcard); larger ones
    /// are answered with [`ServiceError::PayloadTooLarge`] (HTTP 413).
    pub max_payload_bytes: usize,
    /// The most tensor elements one request may hold, summed over its inputs; more is
    /// [`ServiceError::TooManyElements`] (HTTP 413). It bounds the memory a request
    /// can make the engine use, batch dimension included.
    pub max_batch_elements: usize,
    /// The most tensors one request may hold; more is [`ServiceError::TooManyTensors`]
    /// (HTTP 413).
    pub max_tensors: usize,
    /// How long one inference may take through [`InferenceService::answer_within`]:
    /// past it the request is answered [`ServiceError::DeadlineExceeded`] (HTTP 504),
    /// and until the run ends the model counts as hung ([`InferenceService::hung`]).
    pub deadline: Duration,
}

impl ServiceLimits {
    /// 4 MiB of payload, 2^20 elements (4 MiB of `f32`), 64 tensors, a 10 s deadline.
    pub const DEFAULT: ServiceLimits = ServiceLimits {
        max_payload_bytes: 4 << 20,
        max_batch_elements: 1 << 20,
        max_tensors: 64,
        deadline: Duration::from_secs(10),
    };
}

impl Default for ServiceLimits {
    fn default() -> ServiceLimits {
        ServiceLimits::DEFAULT
    }
}

/// The cumulative counters, for `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct Totals {
    /// Requests answered with outputs since the service started.
    pub ok: u64,
    /// Requests answered with an error since the service started.
    pub errors: u64,
    /// Engine latency of every successful request.
    pub latency: Histogram,
}

/// The counters since the previous [`InferenceService::take_interval`], for MQTT
/// metrics reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    /// Requests answered with outputs in the interval.
    pub ok: u64,
    /// Requests answered with an error in the interval.
    pub errors: u64,
    /// Engine latency of the interval's successful requests.
    pub latency: Histogram,
    /// How long the interval lasted.
    pub elapsed: Duration,
}

/// The two encodings a request body can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Open Inference Protocol v2 JSON ([`oip`]).
    Json,
    /// Postcard ([`binary`]).
    Binary,
}

/// An encoded answer: the status (HTTP semantics; 200 on success) and the body in the
/// request's encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// 200, or [`ServiceError::http_status`] of the error.
    pub status: u16,
    /// The encoded [`InferResponse`], or the encoded error.
    pub body: Vec<u8>,
}

/// Idle sessions kept for reuse; more concurrent requests than this create sessions
/// that are dropped afterwards.
const MAX_IDLE_SESSIONS: usize = 16;

/// One loaded model served to many threads. Cheap to clone (an `Arc`); requests in
/// flight keep the model alive whatever happens to other clones.
///
/// The model can be replaced while serving ([`replace`](Self::replace), for
/// over-the-air updates): a request takes the model current when it starts and
/// finishes on it, so none is dropped or answered by a mix of the two.
#[derive(Debug, Clone)]
pub struct InferenceService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The model requests start on; replaced whole, never mutated.
    served: RwLock<Arc<Served>>,
    limits: ServiceLimits,
    ready: AtomicBool,
    ok: AtomicU64,
    errors: AtomicU64,
    latency: AtomicHistogram,
    interval_ok: AtomicU64,
    interval_errors: AtomicU64,
    interval_latency: AtomicHistogram,
    interval_start: Mutex<Instant>,
    started: Instant,
    stats: stats::Stats,
    /// Whether the model may answer with NaN or infinite values (its bundle says so).
    allow_non_finite: AtomicBool,
    /// Inferences past their deadline that have not returned yet.
    hung: AtomicUsize,
    /// Metrics reports waiting for the broker, as the agent last counted them.
    report_backlog: AtomicU64,
    /// Metrics reports dropped from the full spool, as the agent last counted them.
    reports_dropped: AtomicU64,
}

/// A model being served, with its identity, its feature schema and its idle sessions.
#[derive(Debug)]
pub struct Served {
    model: Model,
    id: ModelId,
    version: String,
    /// The feature schema `/predict` maps named features with, bound to the model.
    features: Option<Features>,
    /// Sessions not in use. The lock is held only to pop or push one, never while a
    /// session runs.
    sessions: Mutex<Vec<Session>>,
}

impl Served {
    fn new(model: Model, id: ModelId, features: Option<Features>) -> Served {
        Served {
            model,
            version: id.version.to_string(),
            id,
            features,
            sessions: Mutex::new(Vec::new()),
        }
    }

    /// The model's name and version.
    pub fn id(&self) -> &ModelId {
        &self.id
    }

    /// The model's inputs and outputs.
    pub fn metadata(&self) -> &Metadata {
        self.model.metadata()
    }

    /// The loaded model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The model's feature schema, bound to it (`None`: it takes tensors only).
    pub fn features(&self) -> Option<&Features> {
        self.features.as_ref()
    }
}

impl InferenceService {
    /// Serves `model` under `id`, ready at once (see [`set_ready`](Self::set_ready)).
    pub fn new(model: Model, id: ModelId, limits: ServiceLimits) -> InferenceService {
        InferenceService {
            inner: Arc::new(Inner {
                served: RwLock::new(Arc::new(Served::new(model, id, None))),
                limits,
                ready: AtomicBool::new(true),
                ok: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                latency: AtomicHistogram::new(),
                interval_ok: AtomicU64::new(0),
                interval_errors: AtomicU64::new(0),
                interval_latency: AtomicHistogram::new(),
                interval_start: Mutex::new(Instant::now()),
                started: Instant::now(),
                stats: stats::Stats::default(),
                allow_non_finite: AtomicBool::new(false),
                hung: AtomicUsize::new(0),
                report_backlog: AtomicU64::new(0),
                reports_dropped: AtomicU64::new(0),
            }),
        }
    }

    /// The model new requests run on (requests in flight may still run on the one it
    /// replaced).
    pub fn served(&self) -> Arc<Served> {
        self.inner
            .served
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The service with `features` (bound to the served model, [`Features::bind`]) as
    /// the served model's feature schema, for `/predict`. For a service being set up;
    /// [`replace`](Self::replace) swaps a model and its schema together.
    pub fn with_features(self, features: Option<Features>) -> InferenceService {
        let current = self.served();
        self.replace(current.model.clone(), current.id.clone(), features);
        self
    }

    /// Serves `model` under `id`, with its feature schema, from now on and returns the
    /// model it replaces. Requests already running finish on the old model; the
    /// counters and histograms carry on (close the interval first to report the two
    /// models apart).
    pub fn replace(&self, model: Model, id: ModelId, features: Option<Features>) -> Arc<Served> {
        let new = Arc::new(Served::new(model, id, features));
        let mut served = self
            .inner
            .served
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *served, new)
    }

    /// The served model's name and version.
    pub fn model_id(&self) -> ModelId {
        self.served().id.clone()
    }

    /// How many handles on this service exist, this one included: more than one
    /// after the repository let go of it means requests are still running on it.
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// How long ago the service was created.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// The limits requests are held to.
    pub fn limits(&self) -> &ServiceLimits {
        &self.inner.limits
    }

    /// Whether requests are served; while not, [`infer`](Self::infer) answers
    /// [`ServiceError::NotReady`].
    pub fn ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    /// Marks the model ready or not (for a failed self-test, or while a model is
    /// being replaced).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the served model may answer with NaN or infinite values; by default
    /// such outputs fail the request ([`ServiceError::NonFiniteOutput`]): a model that
    /// produces them is broken, and a NaN is not a prediction. Set it again after each
    /// [`replace`](Self::replace).
    pub fn set_allow_non_finite_outputs(&self, allow: bool) {
        self.inner.allow_non_finite.store(allow, Ordering::Relaxed);
    }

    /// Checks `request` against the model, runs it and returns every output.
    ///
    /// Counts the request as ok or error and, on success, records the engine's run
    /// time in the cumulative and interval latency histograms (lock-free).
    pub fn infer(&self, request: &InferRequest) -> Result<InferResponse, ServiceError> {
        let started = Instant::now();
        let result = self.run(request);
        self.count(&result, started.elapsed());
        result.map(|(response, took)| {
            self.record(took);
            response
        })
    }

    /// Counts one request that reached the service, as ok or error, with its time.
    fn count<T>(&self, result: &Result<T, ServiceError>, took: Duration) {
        match result {
            Ok(_) => {
                self.inner.ok.fetch_add(1, Ordering::Relaxed);
                self.inner.interval_ok.fetch_add(1, Ordering::Relaxed);
                self.inner.stats.succeeded(took);
            }
            Err(_) => self.count_failed(took),
        }
    }

    /// Counts one request that reached the service and failed, with its time.
    fn count_failed(&self, took: Duration) {
        self.count_error();
        self.inner.stats.failed(took);
    }

    /// The statistics extension's counts and times since the service started.
    pub fn statistics(&self) -> Statistics {
        self.inner.stats.snapshot(
            self.inner.ok.load(Ordering::Relaxed),
            self.inner.errors.load(Ordering::Relaxed),
        )
    }

    /// Records a request's wait for an inference slot (the HTTP front end's gate).
    pub fn record_queue(&self, waited: Duration) {
        self.inner.stats.queued(waited);
    }

    /// Records a successful run's engine time in both histograms (lock-free).
    fn record(&self, took: Duration) {
        self.inner.latency.record(took);
        self.inner.interval_latency.record(took);
    }

    /// Counts one request answered with an error that [`infer`](Self::infer) never saw
    /// (it did not decode, named another model, or was over a transport limit).
    pub fn count_error(&self) {
        self.inner.errors.fetch_add(1, Ordering::Relaxed);
        self.inner.interval_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Decodes `body` in `codec`, runs it and encodes the answer in the same codec;
    /// every failure, including an oversize or undecodable body, is counted once.
    pub fn handle_request(&self, body: &[u8], codec: Codec) -> Reply {
        match self.answer(body, codec, usize::MAX) {
            Ok(body) => Reply { status: 200, body },
            Err(e) => Reply {
                status: e.http_status(),
                body: match codec {
                    Codec::Json => oip::encode_error(&e),
                    Codec::Binary => binary::encode_error(&e),
                },
            },
        }
    }

    /// Decodes `body` in `codec`, runs it and returns the encoded response. Counts the
    /// request exactly once: as ok only when the encoded response is returned, as an
    /// error for an oversize or undecodable body, a refused request, an engine failure
    /// or a response over `max_reply` bytes (a transport's packet limit).
    pub fn answer(
        &self,
        body: &[u8],
        codec: Codec,
        max_reply: usize,
    ) -> Result<Vec<u8>, ServiceError> {
        let started = Instant::now();
        let result = self.decode_run_encode(body, codec, max_reply);
        self.count(&result, started.elapsed());
        result.map(|(bytes, took)| {
            if let Some(took) = took {
                self.record(took);
            }
            bytes
        })
    }

    /// The encoded response and the engine time of the run (`None` when it did not
    /// run), counting and recording nothing.
    fn decode_run_encode(
        &self,
        body: &[u8],
        codec: Codec,
        max_reply: usize,
    ) -> Result<(Vec<u8>, Option<Duration>), ServiceError> {
        let limit = self.inner.limits.max_payload_bytes;
        if body.len() > limit {
            return Err(ServiceError::PayloadTooLarge {
                size: body.len(),
                limit,
            });
        }
        let request = match codec {
            Codec::Json => oip::decode_request(body)?,
            Codec::Binary => binary::decode_request(body)?,
        };
        let (response, took) = self.run(&request)?;
        let encoded = match codec {
            Codec::Json => oip::encode_response(&response),
            Codec::Binary => binary::encode_response(&response),
        };
        if encoded.len() > max_reply {
            return Err(ServiceError::ReplyTooLarge {
                size: encoded.len(),
                limit: max_reply,
            });
        }
        Ok((encoded, Some(took)))
    }

    /// Records the agent's report queue for `/metrics`: reports waiting for the broker
    /// (`backlog`) and reports dropped from the full spool since its folder was created
    /// (`dropped`). Both stay 0 where no agent runs (a server alone).
    pub fn set_report_queue(&self, backlog: u64, dropped: u64) {
        self.inner.report_backlog.store(backlog, Ordering::Relaxed);
        self.inner.reports_dropped.store(dropped, Ordering::Relaxed);
    }

    /// `(backlog, dropped)` as last set by [`set_report_queue`](Self::set_report_queue).
    pub fn report_queue(&self) -> (u64, u64) {
        (
            self.inner.report_backlog.load(Ordering::Relaxed),
            self.inner.reports_dropped.load(Ordering::Relaxed),
        )
    }

    /// The cumulative counters and latency histogram.
    pub fn totals(&self) -> Totals {
        Totals {
            ok: self.inner.ok.load(Ordering::Relaxed),
            errors: self.inner.errors.load(Ordering::Relaxed),
            latency: self.inner.latency.snapshot(),
        }
    }

    /// The counters since the previous call (or since the service started), resetting
    /// them. A request finishing during the call is counted in this interval or the
    /// next, never both; its count and its latency may land in different intervals.
    pub fn take_interval(&self) -> Interval {
        let elapsed = {
            let mut start = self
                .inner
                .interval_start
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let elapsed = now.duration_since(*start);
            *start = now;
            elapsed
        };
        Interval {
            ok: self.inner.interval_ok.swap(0, Ordering::Relaxed),
            errors: self.inner.interval_errors.swap(0, Ordering::Relaxed),
            latency: self.inner.interval_latency.take(),
            elapsed,
        }
    }

    /// Checks and runs `request`, returning the response and the engine's run time;
    /// counts and records nothing.
    fn run(&self, request: &InferRequest) -> Result<(InferResponse, Duration), ServiceError> {
        self.run_on(&self.served(), request)
    }

    /// [`run`](Self::run) on `served`, the model the request started on.
    fn run_on(
        &self,
        served: &Served,
        request: &InferRequest,
    ) -> Result<(InferResponse, Duration), ServiceError> {
        let begun = Instant::now();
        if !self.ready() {
            return Err(ServiceError::NotReady);
        }
        let tensors = request.inputs.len();
        if tensors > self.inner.limits.max_tensors {
            return Err(ServiceError::TooManyTensors {
                got: tensors,
                limit: self.inner.limits.max_tensors,
            });
        }
        let elements = request
            .inputs
            .iter()
            .fold(0usize, |acc, t| acc.saturating_add(t.data.len()));
        let limit = self.inner.limits.max_batch_elements;
        if elements > limit {
            return Err(ServiceError::TooManyElements {
                got: elements,
                limit,
            });
        }
        let meta = served.metadata();
        let ordered = order_inputs(&meta.inputs, &request.inputs)?;
        for (info, tensor) in meta.inputs.iter().zip(&ordered) {
            check_input(info, tensor)?;
        }
        let inputs: Vec<Input<'_>> = ordered
            .iter()
            .map(|t| Input {
                shape: &t.shape,
                data: t.data.as_data(),
            })
            .collect();

        let mut session = checkout(served)?;
        let started = Instant::now();
        let outputs = session.run(&inputs);
        let took = started.elapsed();
        checkin(served, session);
        let outputs = outputs?;
        let outputs = read_outputs(&outputs)?;
        if !self.inner.allow_non_finite.load(Ordering::Relaxed) {
            check_finite(&outputs)?;
        }
        let batch = match (meta.inputs.first(), ordered.first()) {
            (Some(info), Some(t)) if matches!(info.shape.first(), Some(Dim::Symbolic(_))) => {
                t.shape.first().copied().unwrap_or(1)
            }
            _ => 1,
        };
        self.inner.stats.executed(
            u64::try_from(batch).unwrap_or(u64::MAX),
            started.saturating_duration_since(begun),
            took,
            started.elapsed().saturating_sub(took),
        );
        let response = InferResponse {
            id: request.id.clone(),
            model_name: served.id.name.to_string(),
            model_version: served.version.clone(),
            outputs,
        };
        Ok((response, took))
    }
}

/// An idle session of `served`, or a new one.
fn checkout(served: &Served) -> Result<Session, ServiceError> {
    let idle = served
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop();
    match idle {
        Some(session) => Ok(session),
        None => Ok(served.model.session()?),
    }
}

/// Keeps `session` for reuse unless enough are idle.
fn checkin(served: &Served, session: Session) {
    let mut idle = served
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if idle.len() < MAX_IDLE_SESSIONS {
        idle.push(session);
    }
}

/// Puts the request's tensors in the model's input order: by name when they are
/// named, by position when none is.
fn order_inputs<'a>(
    infos: &[TensorInfo],
    tensors: &'a [RequestTensor],
) -> Result<Vec<&'a RequestTensor>, ServiceError> {
    let expected = || {
        infos
            .iter()
            .map(|i| format!("{:?}", i.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let named = tensors.iter().filter(|t| !t.name.is_empty()).count();
    if named == 0 {
        if tensors.len() != infos.len() {
            return Err(ServiceError::BadRequest(format!(
                "the model takes {} input(s) ({}), {} given",
                infos.len(),
                expected(),
                tensors.len()
            )));
        }
        return Ok(tensors.iter().collect());
    }
    if named != tensors.len() {
        return Err(ServiceError::BadRequest(
            "name every input or none (unnamed inputs go by position)".into(),
        ));
    }
    let mut slots: Vec<Option<&RequestTensor>> = vec![None; infos.len()];
    for tensor in tensors {
        let Some(index) = infos.iter().position(|i| i.name == tensor.name) else {
            return Err(ServiceError::BadRequest(format!(
                "unknown input {:?}; the model's inputs are {}",
                tensor.name,
                expected()
            )));
        };
        if slots[index].replace(tensor).is_some() {
            return Err(ServiceError::BadRequest(format!(
                "input {:?} is given twice",
                tensor.name
            )));
        }
    }
    slots
        .into_iter()
        .zip(infos)
        .map(|(slot, info)| {
            slot.ok_or_else(|| {
                ServiceError::BadRequest(format!("input {:?} is missing", info.name))
            })
        })
        .collect()
}

/// Datatype, shape and element count of one input, with reasons a client can act on.
fn check_input(info: &TensorInfo, tensor: &RequestTensor) -> Result<(), ServiceError> {
    if tensor.data.dtype() != info.dtype {
        return Err(ServiceError::BadRequest(format!(
            "input {:?} must be {}, got {}",
            info.name,
            oip::datatype_name(info.dtype),
            tensor.data.datatype()
        )));
    }
    let shape_ok = tensor.shape.len() == info.shape.len()
        && tensor
            .shape
            .iter()
            .zip(&info.shape)
            .all(|(n, d)| *n > 0 && d.accepts(*n));
    if !shape_ok {
        return Err(ServiceError::BadRequest(format!(
            "input {:?} must have shape {}, got {:?}",
            info.name,
            info.shape_string(),
            tensor.shape
        )));
    }
    let elements = tensor
        .shape
        .iter()
        .try_fold(1usize, |acc, n| acc.checked_mul(*n));
    if elements != Some(tensor.data.len()) {
        let expected = elements.map_or_else(|| "too many".to_string(), |n| n.to_string());
        return Err(ServiceError::BadRequest(format!(
            "input {:?} has shape {:?} ({expected} elements) but {} values",
            info.name,
            tensor.shape,
            tensor.data.len()
        )));
    }
    Ok(())
}

/// Refuses outputs holding NaN or infinite floats.
fn check_finite(outputs: &[ResponseTensor]) -> Result<(), ServiceError> {
    for output in outputs {
        if let TensorValues::F32(values) = &output.data {
            if let Some(position) = values.iter().position(|v| !v.is_finite()) {
                return Err(ServiceError::NonFiniteOutput {
                    name: output.name.clone(),
                    position,
                    value: values[position],
                });
            }
        }
    }
    Ok(())
}

/// Copies every output out of the engine's tensors.
fn read_outputs(outputs: &Outputs) -> Result<Vec<ResponseTensor>, ServiceError> {
    (0..outputs.len())
        .map(|index| {
            let info = outputs.info(index);
            let name = info.map(|i| i.name.clone()).unwrap_or_default();
            let shape = outputs.shape(index)?.to_vec();
            let view = outputs.view(index).ok();
            let data = view.and_then(|v| match (info.map(|i| i.dtype), v.data()) {
                (Some(DType::F32), TensorData::F32(s)) => Some(TensorValues::F32(s.into())),
                (Some(DType::I64), TensorData::I64(s)) => Some(TensorValues::I64(s.into())),
                (Some(DType::I32), TensorData::I32(s)) => Some(TensorValues::I32(s.into())),
                (Some(DType::U8), TensorData::U8(s)) => Some(TensorValues::U8(s.into())),
                (Some(DType::I8), TensorData::I8(s)) => Some(TensorValues::I8(s.into())),
                _ => None,
            });
            let data = data.ok_or_else(|| {
                ServiceError::Engine(EngineError::Run {
                    reason: format!(
                        "output {index} ({name:?}) is {}, which this server does not encode",
                        info.map_or("of unknown type".to_string(), |i| i.dtype.to_string())
                    ),
                })
            })?;
            Ok(ResponseTensor { name, shape, data })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use perch_runtime::engine::{Golden, LoadOptions};
    use perch_runtime::wire::Version;
    use serde_json::{json, Value};

    use super::*;

    fn models() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
    }

    fn service(name: &str, limits: ServiceLimits) -> InferenceService {
        let model =
            Model::load(models().join(name).join("model.onnx"), &LoadOptions::new()).unwrap();
        let id = ModelId::new(name, Version::new(1, 2, 3)).unwrap();
        InferenceService::new(model, id, limits)
    }

    fn golden(name: &str) -> Golden {
        Golden::load(models().join(name).join("golden")).unwrap()
    }

    /// The golden input as a request tensor, named as the model names it.
    fn golden_tensor(name: &str, input: &str) -> RequestTensor {
        let golden = golden(name);
        let tensor = &golden.inputs[0];
        let data = match tensor.view().data() {
            TensorData::F32(d) => d.to_vec(),
            other => panic!("golden input is {}", other.dtype()),
        };
        RequestTensor {
            name: input.into(),
            shape: tensor.shape().to_vec(),
            data: TensorValues::F32(data),
        }
    }

    fn golden_output(name: &str) -> (Vec<usize>, Vec<f32>) {
        let golden = golden(name);
        let tensor = &golden.outputs[0];
        let data = match tensor.view().data() {
            TensorData::F32(d) => d.to_vec(),
            other => panic!("golden output is {}", other.dtype()),
        };
        (tensor.shape().to_vec(), data)
    }

    fn relative_error(got: &[f32], want: &[f32]) -> f32 {
        assert_eq!(got.len(), want.len());
        let diff = got
            .iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max);
        let scale = want.iter().map(|w| w.abs()).fold(0f32, f32::max);
        diff / scale
    }

    fn json_body(request: &InferRequest) -> Vec<u8> {
        let inputs: Vec<Value> = request
            .inputs
            .iter()
            .map(|t| {
                let data = match &t.data {
                    TensorValues::F32(v) => json!(v),
                    TensorValues::I64(v) => json!(v),
                    TensorValues::I32(v) => json!(v),
                    TensorValues::U8(v) => json!(v),
                    TensorValues::I8(v) => json!(v),
                };
                json!({"name": t.name, "shape": t.shape, "datatype": t.data.datatype(), "data": data})
            })
            .collect();
        let mut body = json!({ "inputs": inputs });
        if let Some(id) = &request.id {
            body["id"] = json!(id);
        }
        serde_json::to_vec(&body).unwrap()
    }

    fn error_of(reply: &Reply) -> String {
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        body["error"].as_str().unwrap().to_string()
    }

    #[test]
    fn the_golden_input_over_json_returns_the_golden_output() {
        let service = service("kws-dscnn", ServiceLimits::default());
        let request = InferRequest {
            id: Some("req-1".into()),
            inputs: vec![golden_tensor("kws-dscnn", "mfcc")],
        };
        let reply = service.handle_request(&json_body(&request), Codec::Json);
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["id"], "req-1");
        assert_eq!(body["model_name"], "kws-dscnn");
        assert_eq!(body["model_version"], "1.2.3");
        let output = &body["outputs"][0];
        assert_eq!(output["name"], "logits");
        assert_eq!(output["datatype"], "FP32");
        let (shape, want) = golden_output("kws-dscnn");
        assert_eq!(output["shape"], json!(shape));
        let got: Vec<f32> = serde_json::from_value(output["data"].clone()).unwrap();
        assert!(relative_error(&got, &want) <= 1e-4);
        let totals = service.totals();
        assert_eq!(
            (totals.ok, totals.errors, totals.latency.count()),
            (1, 0, 1)
        );
    }

    #[test]
    fn a_batch_fills_the_symbolic_dimension_and_returns_one_row_per_item() {
        let service = service("digits-mlp", ServiceLimits::default());
        let request = InferRequest {
            id: None,
            inputs: vec![golden_tensor("digits-mlp", "pixels")],
        };
        assert_eq!(request.inputs[0].shape, [8, 64]);
        let response = service.infer(&request).unwrap();
        let (shape, want) = golden_output("digits-mlp");
        assert_eq!(response.outputs[0].shape, shape);
        let TensorValues::F32(got) = &response.outputs[0].data else {
            panic!("not f32")
        };
        assert!(relative_error(got, &want) <= 1e-4);
    }

    #[test]
    fn the_binary_codec_returns_the_same_outputs_as_json() {
        let service = service("digits-mlp", ServiceLimits::default());
        let request = InferRequest {
            id: Some("7".into()),
            inputs: vec![golden_tensor("digits-mlp", "pixels")],
        };
        let reply = service.handle_request(&binary::encode_request(&request), Codec::Binary);
        assert_eq!(reply.status, 200);
        let binary::BinaryReply::Ok(response) = binary::decode_reply(&reply.body).unwrap() else {
            panic!("an error reply")
        };
        assert_eq!(response.id.as_deref(), Some("7"));
        assert_eq!(response, service.infer(&request).unwrap());
    }

    #[test]
    fn an_unnamed_input_goes_by_position() {
        let service = service("kws-dscnn", ServiceLimits::default());
        let request = InferRequest {
            id: None,
            inputs: vec![golden_tensor("kws-dscnn", "")],
        };
        assert!(service.infer(&request).is_ok());
    }

    /// Sends `body` as JSON and returns the status and reason of the error.
    fn reject(service: &InferenceService, body: &[u8]) -> (u16, String) {
        let reply = service.handle_request(body, Codec::Json);
        assert_ne!(reply.status, 200);
        (reply.status, error_of(&reply))
    }

    fn kws_body(datatype: &str, shape: &str, data: &str) -> Vec<u8> {
        format!(
            r#"{{"inputs":[{{"name":"mfcc","shape":{shape},"datatype":"{datatype}","data":{data}}}]}}"#
        )
        .into_bytes()
    }

    fn zeros(n: usize) -> String {
        format!("[{}]", vec!["0"; n].join(","))
    }

    #[test]
    fn each_bad_request_gets_its_status_and_reason_and_is_counted() {
        let limits = ServiceLimits {
            max_payload_bytes: 64 << 10,
            max_batch_elements: 1000,
            ..ServiceLimits::DEFAULT
        };
        let service = service("kws-dscnn", limits);
        let mut nan = vec!["0"; 490];
        nan[3] = "\"NaN\"";
        let nan = format!("[{}]", nan.join(","));
        let mut bare_nan = vec!["0"; 490];
        bare_nan[3] = "NaN";
        let bare_nan = format!("[{}]", bare_nan.join(","));
        let cases: Vec<(Vec<u8>, u16, &str)> = vec![
            (b"{\"inputs\": [".to_vec(), 400, "malformed JSON: EOF"),
            (b"[]".to_vec(), 400, "invalid request"),
            (b"{}".to_vec(), 400, "missing field `inputs`"),
            (
                kws_body("INT64", "[1,1,49,10]", &zeros(490)),
                400,
                "input \"mfcc\" must be FP32, got INT64",
            ),
            (
                kws_body("FP32", "[1,490]", &zeros(490)),
                400,
                "input \"mfcc\" must have shape [1,1,49,10], got [1, 490]",
            ),
            (
                kws_body("FP32", "[1,1,49,10]", &zeros(489)),
                400,
                "(490 elements) but 489 values",
            ),
            (
                kws_body("FP32", "[1,1,49,10]", &nan),
                400,
                "element 3 is NaN; non-finite inputs are rejected",
            ),
            (
                kws_body("FP32", "[1,1,49,10]", &bare_nan),
                400,
                "NaN and Infinity are not JSON numbers",
            ),
            (
                kws_body("FLOAT32", "[1,1,49,10]", &zeros(490)),
                400,
                "unknown datatype \"FLOAT32\"",
            ),
            (
                format!(r#"{{"inputs":[{{"name":"audio","shape":[1,1,49,10],"datatype":"FP32","data":{}}}]}}"#, zeros(490)).into_bytes(),
                400,
                "unknown input \"audio\"; the model's inputs are \"mfcc\"",
            ),
            (
                kws_body("FP32", "[1,1,49,10]", &zeros(1001)),
                413,
                "1001 tensor elements, over the limit of 1000",
            ),
            (
                kws_body("FP32", "[1,1,49,10]", &zeros(40_000)),
                413,
                "over the limit of 65536 bytes",
            ),
        ];
        for (i, (body, status, reason)) in cases.iter().enumerate() {
            let (got_status, got_reason) = reject(&service, body);
            assert_eq!(got_status, *status, "case {i}: {got_reason}");
            assert!(got_reason.contains(reason), "case {i}: {got_reason}");
            assert_eq!(service.totals().errors, i as u64 + 1);
        }
        let ok = InferRequest {
            id: None,
            inputs: vec![golden_tensor("kws-dscnn", "mfcc")],
        };
        assert!(service.infer(&ok).is_ok(), "still serving");
        let totals = service.totals();
        assert_eq!((totals.ok, totals.errors), (1, cases.len() as u64));
        assert_eq!(totals.latency.count(), 1, "only successes are timed");
    }

    #[test]
    fn a_reply_over_the_transport_limit_is_an_error_not_an_ok() {
        let service = service("digits-mlp", ServiceLimits::default());
        let request = InferRequest {
            id: Some("big".into()),
            inputs: vec![golden_tensor("digits-mlp", "pixels")],
        };
        let body = binary::encode_request(&request);
        let full = service.answer(&body, Codec::Binary, usize::MAX).unwrap();
        let err = service
            .answer(&body, Codec::Binary, full.len() - 1)
            .unwrap_err();
        assert!(matches!(err, ServiceError::ReplyTooLarge { .. }), "{err}");
        assert_eq!(err.http_status(), 500);
        assert!(
            err.to_string().contains("over the transport's limit"),
            "{err}"
        );
        assert_eq!((service.totals().ok, service.totals().errors), (1, 1));
    }

    #[test]
    fn a_service_marked_not_ready_answers_503_and_counts_it() {
        let service = service("digits-mlp", ServiceLimits::default());
        service.set_ready(false);
        let request = InferRequest {
            id: None,
            inputs: vec![golden_tensor("digits-mlp", "pixels")],
        };
        let err = service.infer(&request).unwrap_err();
        assert_eq!(
            (err.http_status(), err.to_string().as_str()),
            (503, "the model is not ready")
        );
        service.set_ready(true);
        assert!(service.infer(&request).is_ok());
        assert_eq!((service.totals().ok, service.totals().errors), (1, 1));
    }

    #[test]
    fn an_input_given_twice_or_half_named_is_refused() {
        let service = service("kws-dscnn", ServiceLimits::default());
        let twice = InferRequest {
            id: None,
            inputs: vec![
                golden_tensor("kws-dscnn", "mfcc"),
                golden_tensor("kws-dscnn", "mfcc"),
            ],
        };
        assert_eq!(
            service.infer(&twice).unwrap_err().to_string(),
            "input \"mfcc\" is given twice"
        );
        let half = InferRequest {
            id: None,
            inputs: vec![
                golden_tensor("kws-dscnn", "mfcc"),
                golden_tensor("kws-dscnn", ""),
            ],
        };
        assert!(service
            .infer(&half)
            .unwrap_err()
            .to_string()
            .starts_with("name every input or none"));
        let none = InferRequest {
            id: None,
            inputs: vec![],
        };
        assert_eq!(
            service.infer(&none).unwrap_err().to_string(),
            "the model takes 1 input(s) (\"mfcc\"), 0 given"
        );
    }

    #[test]
    fn an_interval_holds_what_happened_since_the_previous_one() {
        let service = service("digits-mlp", ServiceLimits::default());
        let request = InferRequest {
            id: None,
            inputs: vec![golden_tensor("digits-mlp", "pixels")],
        };
        service.infer(&request).unwrap();
        service.infer(&request).unwrap();
        service.handle_request(b"nonsense", Codec::Json);
        let first = service.take_interval();
        assert_eq!((first.ok, first.errors, first.latency.count()), (2, 1, 2));
        service.infer(&request).unwrap();
        let second = service.take_interval();
        assert_eq!(
            (second.ok, second.errors, second.latency.count()),
            (1, 0, 1)
        );
        let totals = service.totals();
        assert_eq!(
            (totals.ok, totals.errors, totals.latency.count()),
            (3, 1, 3)
        );
    }

    #[test]
    fn concurrent_requests_from_clones_all_succeed_and_add_up() {
        let service = service("digits-mlp", ServiceLimits::default());
        let request = InferRequest {
            id: None,
            inputs: vec![golden_tensor("digits-mlp", "pixels")],
        };
        let want = service.infer(&request).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (service, request, want) = (service.clone(), request.clone(), want.clone());
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        assert_eq!(service.infer(&request).unwrap(), want);
                    }
                })
            })
            .collect();
        drop(service.clone());
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(service.totals().ok, 101);
        assert!(service.served().sessions.lock().unwrap().len() <= 4);
    }

    #[test]
    fn replacing_the_model_while_serving_drops_no_request_and_never_goes_back() {
        let service = service("digits-mlp", ServiceLimits::default());
        let request = InferRequest {
            id: None,
            inputs: vec![golden_tensor("digits-mlp", "pixels")],
        };
        let replaced = std::sync::Barrier::new(5);
        let versions: Vec<Vec<String>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let (service, request, replaced) = (&service, &request, &replaced);
                    scope.spawn(move || {
                        let mut seen = Vec::new();
                        for i in 0..150 {
                            if i == 50 {
                                replaced.wait(); // the swap happens while others run
                            }
                            seen.push(service.infer(request).unwrap().model_version);
                        }
                        seen
                    })
                })
                .collect();
            let model =
                Model::load(models().join("digits-mlp/model.onnx"), &LoadOptions::new()).unwrap();
            let id = ModelId::new("digits-mlp", Version::new(2, 0, 0)).unwrap();
            let old = service.replace(model, id, None);
            assert_eq!(old.id().version.to_string(), "1.2.3");
            replaced.wait();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        for seen in &versions {
            let first_new = seen.iter().position(|v| v == "2.0.0").unwrap();
            assert!(first_new <= 50, "the new model served after the swap");
            assert!(seen[first_new..].iter().all(|v| v == "2.0.0"), "{seen:?}");
        }
        assert_eq!(service.totals().ok, 600);
        assert_eq!(service.totals().errors, 0);
        assert_eq!(service.model_id().version.to_string(), "2.0.0");
    }

    #[test]
    fn a_request_in_flight_outlives_every_other_handle() {
        let service = service("digits-mlp", ServiceLimits::default());
        let request = InferRequest {
            id: None,
            inputs: vec![golden_tensor("digits-mlp", "pixels")],
        };
        let handle = service.clone();
        drop(service);
        let worker = std::thread::spawn(move || handle.infer(&request).map(|r| r.outputs.len()));
        assert_eq!(worker.join().unwrap().unwrap(), 1);
    }

    /// A model that takes far longer than a few milliseconds
    /// (`perch_testkit::onnx::slow_matmul_chain`).
    fn slow_model() -> Model {
        let bytes = perch_testkit::onnx::slow_matmul_chain();
        Model::from_onnx_bytes(&bytes, &LoadOptions::new()).unwrap()
    }

    fn slow_request() -> Vec<u8> {
        binary::encode_request(&InferRequest {
            id: Some("slow".into()),
            inputs: vec![RequestTensor {
                name: "x".into(),
                shape: vec![512, 1024],
                data: TensorValues::F32(vec![0.5; 512 * 1024]),
            }],
        })
    }

    /// Issue 15: a hung inference kept its permit and serving stopped; now it is
    /// answered 504 at the deadline and the model counts as hung until the run returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_past_its_deadline_is_answered_504_and_counts_as_hung_until_it_returns() {
        let limits = ServiceLimits {
            deadline: Duration::from_millis(5),
            ..ServiceLimits::DEFAULT
        };
        let id = ModelId::new("slow", Version::new(1, 0, 0)).unwrap();
        let service = InferenceService::new(slow_model(), id, limits);
        let started = Instant::now();
        let Err(err) = service
            .answer_within(slow_request(), Codec::Binary, usize::MAX)
            .await
        else {
            panic!("the slow model answered within 5 ms");
        };
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "answered at the deadline"
        );
        assert_eq!(err.http_status(), 504, "{err}");
        assert_eq!(service.hung(), 1);
        let probe = service.probe().await.unwrap_err();
        assert!(probe.contains("past the deadline"), "{probe}");
        // The run returns in its own time; it is neither counted as ok nor recorded.
        let deadline = Instant::now() + Duration::from_secs(120);
        while service.hung() > 0 {
            assert!(Instant::now() < deadline, "the slow run never returned");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let totals = service.totals();
        assert_eq!(
            (totals.ok, totals.errors, totals.latency.count()),
            (0, 1, 0)
        );
        // A probe of a model slower than its deadline fails too: the watchdog starves.
        let probe = service.probe().await.unwrap_err();
        assert!(probe.contains("did not return within 5 ms"), "{probe}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_within_its_deadline_is_answered_counted_and_the_probe_passes() {
        let service = service("kws-dscnn", ServiceLimits::DEFAULT);
        let request = InferRequest {
            id: None,
            inputs: vec![golden_tensor("kws-dscnn", "mfcc")],
        };
        let body = binary::encode_request(&request);
        service
            .answer_within(body, Codec::Binary, usize::MAX)
            .await
            .unwrap();
        let totals = service.totals();
        assert_eq!(
            (totals.ok, totals.errors, totals.latency.count()),
            (1, 0, 1)
        );
        assert_eq!(service.hung(), 0);
        service.probe().await.unwrap();
        assert_eq!(service.totals().ok, 1, "the probe is not traffic");
    }

    /// `sqrt(x)`: NaN for a negative x.
    fn sqrt_service() -> InferenceService {
        use perch_testkit::onnx::{Dim, OnnxModel, FLOAT};
        let bytes = OnnxModel::new(13)
            .input("x", FLOAT, &[Dim::Value(2)])
            .node("Sqrt", &["x"], &["y"], &[])
            .output("y", FLOAT, &[Dim::Value(2)])
            .to_bytes();
        let model = Model::from_onnx_bytes(&bytes, &LoadOptions::new()).unwrap();
        let id = ModelId::new("sqrt", Version::new(1, 0, 0)).unwrap();
        InferenceService::new(model, id, ServiceLimits::DEFAULT)
    }

    fn sqrt_of(x: [f32; 2]) -> InferRequest {
        InferRequest {
            id: None,
            inputs: vec![RequestTensor {
                name: "x".into(),
                shape: vec![2],
                data: TensorValues::F32(x.to_vec()),
            }],
        }
    }

    /// Issue 15: NaN and infinite outputs counted as successes.
    #[test]
    fn non_finite_outputs_are_errors_unless_the_model_may_produce_them() {
        let service = sqrt_service();
        assert!(service.infer(&sqrt_of([4.0, 9.0])).is_ok());
        let err = service.infer(&sqrt_of([4.0, -1.0])).unwrap_err();
        assert_eq!(err.http_status(), 500);
        assert!(
            err.to_string()
                .contains("non-finite value (NaN) at position 1"),
            "{err}"
        );
        let totals = service.totals();
        assert_eq!((totals.ok, totals.errors), (1, 1));
        service.set_allow_non_finite_outputs(true);
        let response = service.infer(&sqrt_of([4.0, -1.0])).unwrap();
        let TensorValues::F32(y) = &response.outputs[0].data else {
            panic!("{response:?}");
        };
        assert!(y[1].is_nan());
    }

    #[test]
    fn a_request_with_more_tensors_than_the_limit_is_refused_413() {
        let service = service("kws-dscnn", ServiceLimits::DEFAULT);
        let request = InferRequest {
            id: None,
            inputs: vec![golden_tensor("kws-dscnn", "mfcc"); 65],
        };
        let err = service.infer(&request).unwrap_err();
        assert_eq!(err.http_status(), 413);
        assert!(err.to_string().contains("65 tensors"), "{err}");
    }
}

/// Issue 15: the request decoders take bytes from anyone who can publish on a device's
/// request topics or reach its HTTP port; random and JSON-shaped input must be answered
/// with an error, never a panic.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::{binary, oip};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn request_decoders_never_panic_on_random_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let _ = binary::decode_request(&bytes);
            let _ = oip::decode_request(&bytes);
        }

        #[test]
        fn the_json_decoder_never_panics_on_request_shaped_text(
            text in r#"\{"inputs": ?\[(\{"name": ?"[a-z]{0,4}", ?"shape": ?\[(-?[0-9]{1,20}, ?){0,4}\], ?"datatype": ?"(FP32|INT64|INT8|UINT8|BOOL|FP64|X)", ?"data": ?\[([-0-9.e]{0,8}, ?){0,6}\]\}, ?){0,3}\]\}"#,
        ) {
            let _ = oip::decode_request(text.as_bytes());
        }

        #[test]
        fn the_postcard_decoder_never_panics_on_mutated_requests(
            edits in proptest::collection::vec((0usize..64, any::<u8>()), 1..6),
        ) {
            let request = super::InferRequest {
                id: Some("r".into()),
                inputs: vec![super::RequestTensor {
                    name: "x".into(),
                    shape: vec![2, 3],
                    data: super::TensorValues::F32(vec![0.5; 6]),
                }],
            };
            let mut bytes = binary::encode_request(&request);
            for (at, b) in edits {
                let len = bytes.len();
                bytes[at % len] = b;
            }
            let _ = binary::decode_request(&bytes);
        }
    }
}
