//! Shadow scoring: a copy of an experiment's request runs on each shadow model after
//! the reply has gone out, on one worker thread fed by a bounded queue. A full queue
//! drops the copy and counts it; a shadow that fails counts an error; one that hangs
//! holds the worker (and the queue fills and drops) but never the served request,
//! whose only cost is the enqueue. Shadow answers are never returned: they are
//! compared with the served answer ([`compare`]) and counted ([`ShadowStats`]).
//!
//! A shadow runs through its model's own [`InferenceService`] handler for the
//! request's protocol, so it decodes, checks and runs the copy as a served request
//! would be, and its runs count in that model's own counters too.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;

use super::config::Agreement;
use super::stats::{Comparison, ShadowStats};
use crate::service::{binary, Codec, InferenceService, TensorValues};

/// Copies queued at most by default; more are dropped and counted.
pub const DEFAULT_QUEUE: usize = 64;

/// How a request (and its reply) was encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// OIP v2 JSON, with the request's `Inference-Header-Content-Length` when it used
    /// the binary tensor data extension.
    Oip {
        /// The request's JSON header length, as the header gave it.
        header_length: Option<String>,
    },
    /// OIP v2 in postcard ([`crate::service::binary`]).
    Postcard,
    /// KServe V1 `instances`.
    V1,
    /// `/predict` named features.
    Predict,
}

/// The served side of one request: what came in and what went out.
#[derive(Debug)]
pub struct Served {
    /// How both are encoded.
    pub protocol: Protocol,
    /// The request body.
    pub request: Bytes,
    /// The reply body.
    pub reply: Bytes,
    /// The reply's JSON header length, for a reply with binary outputs.
    pub reply_header_length: Option<usize>,
}

/// One shadow run to do.
#[derive(Debug)]
pub struct ShadowJob {
    /// The shadow's model.
    pub service: InferenceService,
    /// Where its figures go.
    pub stats: Arc<ShadowStats>,
    /// How its answer is compared.
    pub agreement: Agreement,
    /// The request and the served reply, shared by the experiment's shadows.
    pub served: Arc<Served>,
}

impl ShadowJob {
    /// Runs the copy on the shadow and records the run and its comparison.
    pub fn run(self) {
        let served = &self.served;
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let body = &served.request[..];
            match &served.protocol {
                Protocol::Oip { header_length } => {
                    let r = self.service.handle_oip(body, header_length.as_deref());
                    (r.status, r.body, r.header_length)
                }
                Protocol::Postcard => {
                    let r = self.service.handle_request(body, Codec::Binary);
                    (r.status, r.body, None)
                }
                Protocol::V1 => {
                    let r = self.service.handle_v1(body);
                    (r.status, r.body, None)
                }
                Protocol::Predict => {
                    let r = self.service.handle_predict(body);
                    (r.status, r.body, None)
                }
            }
        }));
        let took = started.elapsed();
        let Ok((status, body, header_length)) = outcome else {
            self.stats.record(false, took, None);
            return;
        };
        let ok = status == 200;
        let comparison = ok.then(|| {
            let theirs = answer(&served.protocol, &served.reply, served.reply_header_length);
            let ours = answer(&served.protocol, &body, header_length);
            match (theirs, ours) {
                (Some(theirs), Some(ours)) => compare(&theirs, &ours, self.agreement),
                _ => Comparison::Incomparable,
            }
        });
        self.stats.record(ok, took, comparison);
    }
}

/// The bounded queue in front of the shadow worker.
#[derive(Debug)]
pub struct ShadowQueue {
    jobs: SyncSender<ShadowJob>,
}

impl ShadowQueue {
    /// Starts the worker thread behind a queue of `capacity` copies (at least 1). The
    /// worker ends when the queue is dropped.
    ///
    /// # Errors
    ///
    /// The thread could not be started.
    pub fn start(capacity: usize) -> std::io::Result<ShadowQueue> {
        let (jobs, queued) = mpsc::sync_channel::<ShadowJob>(capacity.max(1));
        std::thread::Builder::new()
            .name("perch-shadow".into())
            .spawn(move || {
                for job in queued {
                    job.run();
                }
            })?;
        Ok(ShadowQueue { jobs })
    }

    /// Queues `job` without waiting; a full queue drops it and counts the drop.
    pub fn offer(&self, job: ShadowJob) -> bool {
        match self.jobs.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                job.stats.dropped();
                false
            }
        }
    }
}

/// An answer reduced to what agreement looks at.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Each output's shape and values.
    Tensors(Vec<(Vec<usize>, Vec<f64>)>),
    /// Class labels, one per row (`/predict`, V1 named features).
    Labels(Vec<String>),
}

/// Reads an answer out of a successful reply body in `protocol`'s encoding; `None`
/// when it is not one.
pub fn answer(protocol: &Protocol, body: &[u8], header_length: Option<usize>) -> Option<Answer> {
    match protocol {
        Protocol::Oip { .. } => oip_answer(body, header_length),
        Protocol::Postcard => match binary::decode_reply(body).ok()? {
            binary::BinaryReply::Ok(response) => Some(Answer::Tensors(
                response
                    .outputs
                    .iter()
                    .map(|t| (t.shape.clone(), values(&t.data)))
                    .collect(),
            )),
            binary::BinaryReply::Error { .. } => None,
        },
        Protocol::V1 => {
            let body: Value = serde_json::from_slice(body).ok()?;
            let predictions = body.get("predictions")?.as_array()?;
            if predictions.iter().all(|p| p.get("prediction").is_some()) {
                let labels = predictions.iter().map(|p| p["prediction"].to_string());
                return Some(Answer::Labels(labels.collect()));
            }
            let rows: Vec<Vec<f64>> = predictions
                .iter()
                .map(|p| {
                    let mut row = Vec::new();
                    flatten(p, &mut row);
                    row
                })
                .collect();
            let width = rows.first().map_or(0, Vec::len);
            let shape = vec![rows.len(), width];
            Some(Answer::Tensors(vec![(shape, rows.concat())]))
        }
        Protocol::Predict => {
            let body: Value = serde_json::from_slice(body).ok()?;
            Some(Answer::Labels(vec![body.get("prediction")?.to_string()]))
        }
    }
}

fn values(data: &TensorValues) -> Vec<f64> {
    match data {
        TensorValues::F32(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorValues::I64(v) => v.iter().map(|x| *x as f64).collect(),
        TensorValues::I32(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorValues::U8(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorValues::I8(v) => v.iter().map(|x| f64::from(*x)).collect(),
    }
}

fn flatten(value: &Value, out: &mut Vec<f64>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        Value::Number(n) => out.push(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => out.push(s.parse().unwrap_or(f64::NAN)),
        _ => out.push(f64::NAN),
    }
}

/// An OIP v2 JSON reply's outputs, `data` or binary data after the JSON header.
fn oip_answer(body: &[u8], header_length: Option<usize>) -> Option<Answer> {
    let header_length = header_length.unwrap_or(body.len());
    let header: Value = serde_json::from_slice(body.get(..header_length)?).ok()?;
    let mut tail = body.get(header_length..)?;
    let mut outputs = Vec::new();
    for output in header.get("outputs")?.as_array()? {
        let shape: Vec<usize> = serde_json::from_value(output.get("shape")?.clone()).ok()?;
        let mut values = Vec::new();
        if let Some(data) = output.get("data") {
            flatten(data, &mut values);
        } else {
            let size = output.pointer("/parameters/binary_data_size")?.as_u64()?;
            let size = usize::try_from(size).ok()?;
            let bytes = tail.get(..size)?;
            tail = &tail[size..];
            values = binary_values(output.get("datatype")?.as_str()?, bytes)?;
        }
        outputs.push((shape, values));
    }
    Some(Answer::Tensors(outputs))
}

/// Little-endian binary tensor data as numbers.
fn binary_values(datatype: &str, bytes: &[u8]) -> Option<Vec<f64>> {
    fn read<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
        bytes
            .chunks_exact(N)
            .map(|c| f(c.try_into().unwrap_or([0; N])))
            .collect()
    }
    Some(match datatype {
        "FP32" => read::<4>(bytes, |b| f64::from(f32::from_le_bytes(b))),
        "INT32" => read::<4>(bytes, |b| f64::from(i32::from_le_bytes(b))),
        "INT64" => read::<8>(bytes, |b| i64::from_le_bytes(b) as f64),
        "UINT8" => bytes.iter().map(|b| f64::from(*b)).collect(),
        "INT8" => bytes.iter().map(|b| f64::from(*b as i8)).collect(),
        _ => return None,
    })
}

/// How the shadow's answer (`ours`) compares with the served one (`theirs`).
///
/// - Labels agree when every row's label is the same.
/// - [`Agreement::Argmax`]: each output's rows (along its last axis) agree when their
///   argmax is the same; the answers agree when every row of every output does.
/// - [`Agreement::MaxRelativeDifference`]: `max|ours − theirs| / max|theirs|` over all
///   outputs (0 when both are all zeros, infinite when only the served one is).
///
/// Answers of different kinds, output counts or shapes are incomparable.
pub fn compare(theirs: &Answer, ours: &Answer, agreement: Agreement) -> Comparison {
    match (theirs, ours) {
        (Answer::Labels(a), Answer::Labels(b)) => Comparison::Match(a == b),
        (Answer::Tensors(a), Answer::Tensors(b)) => {
            let same_shapes = a.len() == b.len()
                && !a.is_empty()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| x.0 == y.0 && x.1.len() == y.1.len());
            if !same_shapes {
                return Comparison::Incomparable;
            }
            match agreement {
                Agreement::Argmax => {
                    Comparison::Match(a.iter().zip(b).all(|((shape, x), (_, y))| {
                        let width = shape.last().copied().unwrap_or(1).max(1);
                        x.chunks(width)
                            .zip(y.chunks(width))
                            .all(|(r, s)| argmax(r) == argmax(s))
                    }))
                }
                Agreement::MaxRelativeDifference => {
                    let (mut diff, mut scale) = (0f64, 0f64);
                    for ((_, x), (_, y)) in a.iter().zip(b) {
                        for (t, o) in x.iter().zip(y) {
                            diff = diff.max((t - o).abs());
                            scale = scale.max(t.abs());
                        }
                    }
                    Comparison::Difference(if diff == 0.0 {
                        0.0
                    } else if scale == 0.0 {
                        f64::INFINITY
                    } else {
                        diff / scale
                    })
                }
            }
        }
        _ => Comparison::Incomparable,
    }
}

/// The index of the largest value (the first of equals; NaN never wins).
fn argmax(row: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, v) in row.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|(_, b)| *v > b) {
            best = Some((i, *v));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensors(outputs: &[(&[usize], &[f64])]) -> Answer {
        Answer::Tensors(
            outputs
                .iter()
                .map(|(s, v)| (s.to_vec(), v.to_vec()))
                .collect(),
        )
    }

    #[test]
    fn argmax_agreement_holds_only_when_every_row_picks_the_same_class() {
        let served = tensors(&[(&[2, 3], &[0.1, 0.7, 0.2, 0.5, 0.3, 0.2])]);
        let same = tensors(&[(&[2, 3], &[0.2, 0.6, 0.2, 0.9, 0.0, 0.1])]);
        let one_row_differs = tensors(&[(&[2, 3], &[0.2, 0.6, 0.2, 0.1, 0.0, 0.9])]);
        assert_eq!(
            compare(&served, &same, Agreement::Argmax),
            Comparison::Match(true)
        );
        assert_eq!(
            compare(&served, &one_row_differs, Agreement::Argmax),
            Comparison::Match(false)
        );
        let other_shape = tensors(&[(&[1, 6], &[0.1, 0.7, 0.2, 0.5, 0.3, 0.2])]);
        assert_eq!(
            compare(&served, &other_shape, Agreement::Argmax),
            Comparison::Incomparable
        );
        let labels = Answer::Labels(vec!["setosa".into()]);
        assert_eq!(
            compare(&labels, &labels, Agreement::Argmax),
            Comparison::Match(true)
        );
        assert_eq!(
            compare(&labels, &served, Agreement::Argmax),
            Comparison::Incomparable
        );
    }

    #[test]
    fn the_relative_difference_is_scaled_by_the_served_answers_largest_magnitude() {
        let served = tensors(&[(&[1, 2], &[2.0, -4.0])]);
        let shadow = tensors(&[(&[1, 2], &[2.2, -4.0])]);
        let Comparison::Difference(d) = compare(&served, &shadow, Agreement::MaxRelativeDifference)
        else {
            panic!()
        };
        assert!((d - 0.05).abs() < 1e-12, "{d}");
        let zeros = tensors(&[(&[1, 2], &[0.0, 0.0])]);
        assert_eq!(
            compare(&zeros, &zeros, Agreement::MaxRelativeDifference),
            Comparison::Difference(0.0)
        );
    }

    #[test]
    fn oip_replies_are_read_from_json_data_and_from_binary_data() {
        let json = br#"{"model_name":"m","model_version":"1","outputs":[{"name":"y","shape":[1,2],"datatype":"FP32","data":[0.25,0.75]}]}"#;
        let protocol = Protocol::Oip {
            header_length: None,
        };
        assert_eq!(
            answer(&protocol, json, None),
            Some(tensors(&[(&[1, 2], &[0.25, 0.75])]))
        );
        let header = br#"{"model_name":"m","model_version":"1","outputs":[{"name":"y","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let mut body = header.to_vec();
        body.extend(0.25f32.to_le_bytes());
        body.extend(0.75f32.to_le_bytes());
        assert_eq!(
            answer(&protocol, &body, Some(header.len())),
            Some(tensors(&[(&[1, 2], &[0.25, 0.75])]))
        );
        assert_eq!(
            answer(&protocol, &body[..body.len() - 1], Some(header.len())),
            None
        );
        let predict = br#"{"prediction":"setosa","probability":0.9}"#;
        assert_eq!(
            answer(&Protocol::Predict, predict, None),
            Some(Answer::Labels(vec!["\"setosa\"".into()]))
        );
    }
}
