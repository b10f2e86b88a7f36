//! Latency of one inference of the R2 keyword spotter (kws-dscnn), from the engine alone
//! to a full HTTP round trip on loopback, as p50/p90/p99.
//!
//! ```sh
//! cargo bench -p perch-firmware --bench http            # release profile (LTO)
//! cargo bench -p perch-firmware --bench http -- 5000    # samples per stage and round
//! ```
//!
//! Stages, each measured after a warm-up, in rounds that rotate through the stages so
//! a noisy neighbour hits them alike:
//!
//! - **engine**: `Session::run` on the golden input, outputs dropped;
//! - **service**: `InferenceService::infer` (request checks, pooled session, run, output
//!   copy, counters and histograms);
//! - **service + JSON**: `handle_request` on the JSON body (decode, infer, encode);
//! - **HTTP JSON** / **HTTP postcard**: a keep-alive ureq client posting to the
//!   in-process server on 127.0.0.1 and reading the whole answer.
//!
//! A plain `main` (no criterion): criterion reports means and medians, and the question
//! here is the tail.

mod common;
#[path = "../tests/common/http.rs"]
mod http_server;

use http_server::HttpServer;
use perch_firmware::http::{HttpLimits, POSTCARD_CONTENT_TYPE};
use perch_firmware::service::{
    binary, Codec, InferRequest, InferenceService, RequestTensor, ServiceLimits, TensorValues,
};
use perch_runtime::engine::TensorData;
use perch_runtime::wire::{ModelId, Version};

fn main() {
    let samples = common::samples();
    let (model, golden) = common::kws();
    let inputs = golden.input_refs().unwrap();
    let TensorData::F32(mfcc) = golden.inputs[0].input().unwrap().data else {
        panic!("the golden input is not f32")
    };
    let request = InferRequest {
        id: Some("bench".into()),
        inputs: vec![RequestTensor {
            name: "mfcc".into(),
            shape: golden.inputs[0].shape().to_vec(),
            data: TensorValues::F32(mfcc.to_vec()),
        }],
    };
    let json = serde_json::to_vec(&serde_json::json!({
        "id": "bench",
        "inputs": [{"name": "mfcc", "shape": [1, 1, 49, 10], "datatype": "FP32", "data": mfcc}]
    }))
    .unwrap();
    let postcard = binary::encode_request(&request);

    let id = ModelId::new("kws-dscnn", Version::new(1, 0, 0)).unwrap();
    let service = InferenceService::new(model.clone(), id, ServiceLimits::default());
    let server = HttpServer::serve_on(1, service.clone(), HttpLimits::default());
    let url = format!("{}/v2/models/kws-dscnn/infer", server.base);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(true)
        .build()
        .into();
    let post = |content_type: &str, body: &[u8]| {
        let mut response = agent
            .post(&url)
            .header("Content-Type", content_type)
            .send(body)
            .unwrap();
        drop(response.body_mut().read_to_vec().unwrap());
    };

    let mut session = model.session().unwrap();
    let mut stages: Vec<common::Stage<'_>> = vec![
        (
            "engine: Session::run",
            Box::new(|| drop(session.run(&inputs).unwrap())),
            vec![],
        ),
        (
            "service: infer",
            Box::new(|| drop(service.infer(&request).unwrap())),
            vec![],
        ),
        (
            "service: JSON decode + infer + encode",
            Box::new(|| assert_eq!(service.handle_request(&json, Codec::Json).status, 200)),
            vec![],
        ),
        (
            "HTTP JSON, loopback",
            Box::new(|| post("application/json", &json)),
            vec![],
        ),
        (
            "HTTP postcard, loopback",
            Box::new(|| post(POSTCARD_CONTENT_TYPE, &postcard)),
            vec![],
        ),
    ];
    common::measure(&mut stages, samples);
    server.shutdown().unwrap();
    common::report(&mut stages, samples);
}
