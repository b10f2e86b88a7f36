//! What an experiment adds to a reply: which variant served it (the
//! [`VARIANT_HEADER`] header, and `parameters` in a JSON reply), and the shadow runs,
//! queued when the reply body is done with ([`AfterSend`]).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::set::{Experiment, Experiments};
use super::shadow::{Protocol, Served, ShadowJob};
use crate::service::InferenceService;

/// The response header naming the variant that served a request.
pub const VARIANT_HEADER: &str = "x-perch-variant";
/// The response header naming the experiment that routed a request.
pub const EXPERIMENT_HEADER: &str = "x-perch-experiment";

/// `body` (a JSON object, then any binary outputs after `header_length` bytes) with
/// `"parameters": {"experiment": .., "variant": ..}` as its first key, and the new
/// header length. OIP v2 responses may carry `parameters`, so the reply stays valid for
/// Triton's and KServe's clients. A body that is not a JSON object is returned as it is.
pub fn tag_json(
    body: Vec<u8>,
    header_length: Option<usize>,
    experiment: &str,
    variant: &str,
) -> (Vec<u8>, Option<usize>) {
    if body.first() != Some(&b'{') {
        return (body, header_length);
    }
    let tag = serde_json::json!({ "experiment": experiment, "variant": variant });
    let closed = body.get(1..).is_some_and(|rest| {
        rest.iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'}')
    });
    let insert = format!("\"parameters\":{tag}{}", if closed { "" } else { "," });
    let mut tagged = Vec::with_capacity(body.len() + insert.len());
    tagged.push(b'{');
    tagged.extend_from_slice(insert.as_bytes());
    tagged.extend_from_slice(&body[1..]);
    (tagged, header_length.map(|n| n + insert.len()))
}

/// The index of `experiment`'s variant for a request with `headers` and `body` (whose
/// JSON part is its first `header_length` bytes, as the request's
/// `Inference-Header-Content-Length` gives it).
pub fn choose(
    experiment: &Experiment,
    headers: &HeaderMap,
    body: &[u8],
    header_length: Option<&str>,
) -> usize {
    let json_part = header_length.and_then(|n| n.parse::<usize>().ok());
    let json_part = json_part.and_then(|n| body.get(..n)).unwrap_or(body);
    let header = |h: &str| Some(headers.get(h)?.to_str().ok()?.to_string());
    let entity = super::entity::entity_id(&experiment.spec().entity, header, json_part);
    experiment.route(entity.as_deref().map(str::as_bytes))
}

/// A routed request's reply, as the HTTP front end sends it.
pub struct Routed {
    /// The body: the reply, tagged when it is JSON, queueing the shadow runs once sent.
    pub body: axum::body::Body,
    /// The JSON header's length, for a reply with binary outputs.
    pub header_length: Option<usize>,
}

/// Finishes a request that `experiment` routed to its variant `index`: counts it in
/// the variant's figures (`took`: the variant's service time), tags a successful JSON
/// reply with the experiment and variant ([`tag_json`]), and for a successful reply
/// attaches one shadow run per shadow model `shadow_model` finds, queued on
/// `experiments` once the body has been sent. A shadow whose model is not loaded
/// counts an error.
#[allow(clippy::too_many_arguments)]
pub fn finish(
    experiments: &Experiments,
    experiment: &Experiment,
    index: usize,
    took: Duration,
    protocol: Protocol,
    request: Bytes,
    reply: (u16, Vec<u8>, Option<usize>),
    shadow_model: impl Fn(&str) -> Option<InferenceService>,
) -> Routed {
    let (status, body, header_length) = reply;
    let ok = status == 200;
    if let Some(stats) = experiment.variant_stats(index) {
        stats.record(ok, took);
    }
    let json = !matches!(protocol, Protocol::Postcard);
    let (body, header_length) = if ok && json {
        let name = &experiment.spec().name;
        tag_json(body, header_length, name, &experiment.variant(index).name)
    } else {
        (body, header_length)
    };
    let body = Bytes::from(body);
    let shadows: Vec<_> = experiment.shadows().collect();
    if !ok || shadows.is_empty() {
        return Routed {
            body: body.into(),
            header_length,
        };
    }
    let served = Arc::new(Served {
        protocol,
        request,
        reply: body.clone(),
        reply_header_length: header_length,
    });
    let mut jobs = Vec::with_capacity(shadows.len());
    for (spec, stats) in shadows {
        match shadow_model(&spec.model) {
            Some(service) => jobs.push(ShadowJob {
                service,
                stats: stats.clone(),
                agreement: experiment.spec().agreement,
                served: served.clone(),
            }),
            None => stats.record(false, Duration::ZERO, None),
        }
    }
    Routed {
        body: axum::body::Body::new(AfterSend::new(body, jobs, experiments.clone())),
        header_length,
    }
}

/// Names the experiment and the variant in a routed reply's headers.
pub fn label(headers: &mut HeaderMap, experiment: &Experiment, index: usize) {
    let pairs = [
        (EXPERIMENT_HEADER, experiment.spec().name.as_str()),
        (VARIANT_HEADER, experiment.variant(index).name.as_str()),
    ];
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
}

/// A reply body that queues its shadow runs when it is dropped: once the server has
/// written it, or given up on a client that went away.
pub struct AfterSend {
    data: Option<Bytes>,
    length: u64,
    jobs: Vec<ShadowJob>,
    experiments: Experiments,
}

impl AfterSend {
    /// `data`, then `jobs` offered to `experiments`' shadow queue.
    pub fn new(data: Bytes, jobs: Vec<ShadowJob>, experiments: Experiments) -> AfterSend {
        AfterSend {
            length: data.len() as u64,
            data: Some(data),
            jobs,
            experiments,
        }
    }
}

impl Body for AfterSend {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.length)
    }
}

impl Drop for AfterSend {
    fn drop(&mut self) {
        for job in self.jobs.drain(..) {
            self.experiments.offer(job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_is_the_first_key_and_the_header_length_follows_it() {
        let body = br#"{"model_name":"a","outputs":[]}"#.to_vec();
        let (tagged, length) = tag_json(body.clone(), None, "iris-ab", "b");
        let value: serde_json::Value = serde_json::from_slice(&tagged).unwrap();
        assert_eq!(value["parameters"]["variant"], "b");
        assert_eq!(value["parameters"]["experiment"], "iris-ab");
        assert_eq!(value["model_name"], "a");
        assert_eq!(length, None);

        let mut binary = body.clone();
        binary.extend([1, 2, 3, 4]);
        let (tagged, length) = tag_json(binary, Some(body.len()), "e", "v\"q");
        let length = length.unwrap();
        let header: serde_json::Value = serde_json::from_slice(&tagged[..length]).unwrap();
        assert_eq!(header["parameters"]["variant"], "v\"q");
        assert_eq!(&tagged[length..], [1, 2, 3, 4]);

        let (empty, _) = tag_json(b"{ }".to_vec(), None, "e", "v");
        assert!(serde_json::from_slice::<serde_json::Value>(&empty).is_ok());
        assert_eq!(tag_json(b"[1]".to_vec(), None, "e", "v").0, b"[1]");
    }
}
