//! One Open Inference Protocol v2 request as the HTTP endpoint serves it, with the
//! extensions Triton's and KServe's clients use by default: binary tensor data in and
//! out ([`super::oip_binary`]) and the requested `outputs`.

use std::time::Instant;

use super::oip::{self, OipRequest};
use super::{InferResponse, InferenceService, ServiceError};

/// The answer to [`InferenceService::handle_oip`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OipReply {
    /// 200, or the error's [`ServiceError::http_status`].
    pub status: u16,
    /// The JSON response (then any binary outputs), or `{"error": "<reason>"}`.
    pub body: Vec<u8>,
    /// The length of the JSON header when binary outputs follow it: the response's
    /// `Inference-Header-Content-Length`.
    pub header_length: Option<usize>,
}

impl InferenceService {
    /// Serves one OIP v2 request body: `header_length` is the request's
    /// `Inference-Header-Content-Length` (absent for a JSON-only body). Only the
    /// outputs the request names are returned (all of them when it names none), each
    /// as binary data or JSON as it asks. Counts the request once, as ok or error,
    /// with its time in the statistics.
    pub fn handle_oip(&self, body: &[u8], header_length: Option<&str>) -> OipReply {
        let started = Instant::now();
        let result = self.oip_answer(body, header_length);
        self.count(&result, started.elapsed());
        match result {
            Ok((body, header_length)) => OipReply {
                status: 200,
                body,
                header_length,
            },
            Err(e) => OipReply {
                status: e.http_status(),
                body: oip::encode_error(&e),
                header_length: None,
            },
        }
    }

    fn oip_answer(
        &self,
        body: &[u8],
        header_length: Option<&str>,
    ) -> Result<(Vec<u8>, Option<usize>), ServiceError> {
        let limit = self.inner.limits.max_payload_bytes;
        if body.len() > limit {
            return Err(ServiceError::PayloadTooLarge {
                size: body.len(),
                limit,
            });
        }
        let decoding = Instant::now();
        let decoded = super::oip_binary::split(body, header_length)
            .and_then(|(header, binary)| oip::decode_parts(header, binary))
            .and_then(|request| Ok((self.wanted_outputs(&request)?, request)));
        self.inner.stats.decoded(decoding.elapsed());
        let (wanted, request) = decoded?;
        let (response, took) = self.run(&request.request)?;
        self.record(took);
        let encoding = Instant::now();
        let (response, binary) = select(response, &wanted);
        let encoded = oip::encode_response_parts(&response, &binary);
        self.inner.stats.encoded(encoding.elapsed());
        Ok(encoded)
    }

    /// The model's outputs to return, by position, each with whether it goes as binary
    /// data; an output name the model does not have is refused before anything runs.
    fn wanted_outputs(&self, request: &OipRequest) -> Result<Vec<(usize, bool)>, ServiceError> {
        let served = self.served();
        let infos = &served.metadata().outputs;
        let Some(asked) = &request.outputs else {
            return Ok((0..infos.len())
                .map(|i| (i, request.binary_data_output))
                .collect());
        };
        asked
            .iter()
            .map(|o| {
                let index = infos.iter().position(|i| i.name == o.name).ok_or_else(|| {
                    let names: Vec<String> =
                        infos.iter().map(|i| format!("{:?}", i.name)).collect();
                    ServiceError::BadRequest(format!(
                        "unknown output {:?}; the model's outputs are {}",
                        o.name,
                        names.join(", ")
                    ))
                })?;
                Ok((index, o.binary_data.unwrap_or(request.binary_data_output)))
            })
            .collect()
    }
}

/// Keeps the outputs `wanted` names, in its order, and says which go as binary data.
fn select(mut response: InferResponse, wanted: &[(usize, bool)]) -> (InferResponse, Vec<bool>) {
    let all = std::mem::take(&mut response.outputs);
    let mut slots: Vec<_> = all.into_iter().map(Some).collect();
    let mut binary = Vec::with_capacity(wanted.len());
    for &(index, as_binary) in wanted {
        if let Some(tensor) = slots.get_mut(index).and_then(Option::take) {
            response.outputs.push(tensor);
            binary.push(as_binary);
        }
    }
    (response, binary)
}
